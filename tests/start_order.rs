//! The start order, black-box: no peer hears that this host restarted before nsmd is
//! registered with rpcbind and answering. A notified client reclaims its locks at once, and the
//! server's lockd then asks rpcbind for statd to monitor it: a dead statd's registration there
//! makes that SM_MON fail (ECONNREFUSED), lockd refuses the reclaim, and the client's
//! application keeps believing it holds a lock the server does not have.
//!
//! The client side here does what that chain does, without a kernel: on SM_NOTIFY it asks the
//! server's rpcbind for statd over TCP, as lockd would, and calls what it finds.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Answer, NSMD, answer, call, tcp_exchange, udp_exchange};
use nsm_testhost::{Host, Lab, Proc, Signal, require};

const SERVER: &str = "198.51.100.40";
const CLIENT: &str = "198.51.100.41";
const STATE_DIR: &str = "/var/lib/nfs/s";

/// What the client saw when a notification arrived: the mon_name and state it carried, and
/// the statd port the server's rpcbind gave at that moment (0: none) and whether it answered.
#[derive(Debug, Clone)]
struct Seen {
    mon_name: Vec<u8>,
    state: u32,
    statd_port: u32,
    statd_answered: bool,
}

/// A client's statd stand-in: registered as 100024 with the client's rpcbind, it checks the
/// server's statd on every SM_NOTIFY before replying.
struct Client {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Client {
    fn start(host: &Host, server: SocketAddr) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let ns = File::open(host.netns_path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (s2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let port = sock.local_addr().unwrap().port();
            pmap_set(
                "127.0.0.1:111".parse().unwrap(),
                100_024,
                1,
                17,
                port.into(),
            );
            tx.send(()).unwrap();
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let m = &buf[..n];
                // SM_NOTIFY with AUTH_NONE or AUTH_SYS: skip credential and verifier.
                if n < 40 || word(m, 1) != 0 || word(m, 3) != 100_024 || word(m, 5) != 6 {
                    continue;
                }
                let verf_at = 32 + (word(m, 7) as usize).div_ceil(4) * 4;
                let args_at = verf_at + 8 + (word(m, verf_at / 4 + 1) as usize).div_ceil(4) * 4;
                let args = &m[args_at..];
                let len = word(args, 0) as usize;
                let mon_name = args[4..4 + len].to_vec();
                let state = word(args, (4 + len.div_ceil(4) * 4) / 4);
                // What the server's lockd does when this client reclaims: GETPORT over TCP.
                let statd_port = getport(server, 100_024, 1, 6);
                let statd_answered = statd_port != 0
                    && tcp_exchange(
                        SocketAddr::new(server.ip(), statd_port as u16),
                        &call(0x77, 100_024, 1, 0, &[]),
                    )
                    .is_some_and(|r| answer(0x77, &r) == Answer::Accepted(0, vec![]));
                s2.lock().unwrap().push(Seen {
                    mon_name,
                    state,
                    statd_port,
                    statd_answered,
                });
                let mut reply = Vec::new();
                for w in [word(m, 0), 1, 0, 0, 0, 0] {
                    reply.extend_from_slice(&w.to_be_bytes());
                }
                let _ = sock.send_to(&reply, from);
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the client's statd stand-in registered");
        Self { seen, stop }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn wait_for_notification(&self, what: &str) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.seen().first() {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no SM_NOTIFY reached the client within 30 s ({what})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
}

/// PMAP SET (rpcbind v2), by hand.
fn pmap_set(rpcbind: SocketAddr, prog: u32, vers: u32, prot: u32, port: u32) {
    let mut args = Vec::new();
    for w in [prog, vers, prot, port] {
        args.extend_from_slice(&w.to_be_bytes());
    }
    let r = udp_exchange(rpcbind, &call(0x5e7, 100_000, 2, 1, &args)).expect("rpcbind answers");
    assert_eq!(answer(0x5e7, &r), Answer::Accepted(0, vec![1]), "PMAP SET");
}

/// PMAP GETPORT (rpcbind v2), by hand: the port, 0 when nothing is registered or rpcbind
/// does not answer.
fn getport(rpcbind: SocketAddr, prog: u32, vers: u32, prot: u32) -> u32 {
    let mut args = Vec::new();
    for w in [prog, vers, prot, 0] {
        args.extend_from_slice(&w.to_be_bytes());
    }
    match udp_exchange(rpcbind, &call(0x9e7, 100_000, 2, 3, &args)) {
        Some(r) => match answer(0x9e7, &r) {
            Answer::Accepted(0, w) => w[0],
            other => panic!("GETPORT: {other:?}"),
        },
        None => 0,
    }
}

/// A server whose `sm/` monitors the client (as lockd left it before the restart).
fn lab(tag: &str) -> (Lab, Host, Host) {
    let lab = Lab::new(tag).unwrap();
    let server = lab.host("server", &[&format!("{SERVER}/24")]).unwrap();
    let client = lab.host("client", &[&format!("{CLIENT}/24")]).unwrap();
    let line = format!(
        "0100007f 000186b5 00000003 00000010 {} {CLIENT} server\n",
        "07".repeat(16)
    );
    server
        .write_file(&format!("{STATE_DIR}/sm/{CLIENT}"), line)
        .unwrap();
    (lab, server, client)
}

/// nsmd as it starts at boot: notifying the previous boot's peers (no -L).
fn start_nsmd(server: &Host) -> Proc {
    let p = server
        .spawn("nsmd", &[NSMD, "-F", "-d", "-P", STATE_DIR])
        .unwrap();
    p.wait_for_log_line(
        "serving program 100024 version 1 on",
        Duration::from_secs(10),
    )
    .unwrap();
    p
}

fn rpcbind_addr() -> SocketAddr {
    format!("{SERVER}:111").parse().unwrap()
}

#[test]
fn a_dead_statds_registration_is_gone_before_any_peer_is_notified() {
    if !require(
        "a_dead_statds_registration_is_gone_before_any_peer_is_notified",
        &["rpcbind"],
    ) {
        return;
    }
    dead_registration_case("startorder", false);
}

/// The same with Debian's layout (`sm/` belongs to the statd user): nsmd and nsm-notify drop
/// root, and nsm-notify still waits for nsmd's registration, then notifies.
#[test]
fn a_dead_statds_registration_is_gone_first_also_after_dropping_root() {
    if !require(
        "a_dead_statds_registration_is_gone_first_also_after_dropping_root",
        &["rpcbind"],
    ) {
        return;
    }
    dead_registration_case("startorderu", true);
}

fn dead_registration_case(tag: &str, debian_layout: bool) {
    let (_lab, server, client) = lab(tag);
    if debian_layout {
        server
            .sh(
                &format!(
                    "mkdir -p {STATE_DIR}/sm.bak && chown statd {STATE_DIR}/sm {STATE_DIR}/sm.bak"
                ),
                Duration::from_secs(10),
            )
            .unwrap();
    }
    let _rpcbind_s = server.start_rpcbind().unwrap();
    let _rpcbind_c = client.start_rpcbind().unwrap();
    // A statd that died: registered on a port nobody listens on.
    server
        .in_netns(|| {
            for prot in [17, 6] {
                pmap_set("127.0.0.1:111".parse().unwrap(), 100_024, 1, prot, 1);
            }
        })
        .unwrap();
    let peer = Client::start(&client, rpcbind_addr());
    let nsmd = start_nsmd(&server);
    if debian_layout {
        nsmd.wait_for_log_line("dropped privileges", Duration::from_secs(10))
            .unwrap();
    }
    let seen = peer.wait_for_notification("nsmd started over a dead statd's registration");
    assert_eq!(seen.mon_name, b"server");
    assert!(
        seen.statd_port != 1 && seen.statd_answered,
        "when the client was notified, the server's rpcbind pointed lockd at port {} \
         (answering: {}): a reclaim would have failed. nsmd's log:\n{}",
        seen.statd_port,
        seen.statd_answered,
        nsmd.log()
    );
    nsmd.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn without_rpcbind_nothing_is_notified_until_nsmd_registered() {
    if !require(
        "without_rpcbind_nothing_is_notified_until_nsmd_registered",
        &["rpcbind"],
    ) {
        return;
    }
    let (_lab, server, client) = lab("startorder-norpcb");
    let _rpcbind_c = client.start_rpcbind().unwrap();
    let peer = Client::start(&client, rpcbind_addr());

    // rpcbind is not up: the state is bumped and sm/ retired, but nobody is told, and a
    // shutdown before registering leaves the peer in sm.bak/ for the next start.
    let nsmd = start_nsmd(&server);
    nsmd.wait_for_log_line(
        "No peer is notified until nsmd is registered",
        Duration::from_secs(10),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    nsmd.signal(Signal::Term).unwrap();
    nsmd.wait(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        peer.seen().is_empty(),
        "a peer was notified while nsmd was not registered: {:?}",
        peer.seen()
    );
    let bak = server
        .read_file(&format!("{STATE_DIR}/sm.bak/{CLIENT}"))
        .expect("the unnotified peer stays in sm.bak/");
    assert!(!bak.is_empty());
    let state = std::fs::read(server.outside_path(&format!("{STATE_DIR}/state")).unwrap()).unwrap();
    let state = i32::from_ne_bytes(state[..4].try_into().unwrap());

    // rpcbind comes up while the next nsmd is already retrying: the notification goes out
    // once it registered, with the state announced for this boot (no second bump).
    let nsmd = start_nsmd(&server);
    nsmd.wait_for_log_line(
        "No peer is notified until nsmd is registered",
        Duration::from_secs(10),
    )
    .unwrap();
    let _rpcbind_s = server.start_rpcbind().unwrap();
    let seen = peer.wait_for_notification("rpcbind came up after nsmd");
    assert!(
        seen.statd_answered,
        "notified before nsmd was registered (GETPORT gave {}). nsmd's log:\n{}",
        seen.statd_port,
        nsmd.log()
    );
    assert_eq!(seen.state, state as u32, "the state of this boot's bump");
    nsmd.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_restarted_rpcbind_gets_the_registration_back() {
    if !require(
        "a_restarted_rpcbind_gets_the_registration_back",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let (_lab, server, _client) = lab("startorder-rpcbrestart");
    let rpcbind = server.start_rpcbind().unwrap();
    let nsmd = server
        .spawn("nsmd", &[NSMD, "-F", "-d", "-L", "-P", STATE_DIR])
        .unwrap();
    nsmd.wait_for_log_line("registered program 100024", Duration::from_secs(10))
        .unwrap();
    let port = server
        .wait_registered(100_024, Duration::from_secs(10))
        .unwrap()[0]
        .port;
    // A crash (or an upgrade that kills it): no warm-start file, every registration gone.
    rpcbind.signal(Signal::Kill).unwrap();
    rpcbind.wait(Duration::from_secs(10)).unwrap();
    let mark = nsmd.log_mark();
    let restarted = Instant::now();
    let _rpcbind = server.start_rpcbind().unwrap();
    let regs = server
        .wait_registered(100_024, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("nsmd did not register again: {e}\n{}", nsmd.log_tail(20)));
    eprintln!(
        "registered again {:.1?} after rpcbind restarted",
        restarted.elapsed()
    );
    assert!(regs.iter().all(|r| r.port == port), "{regs:?}");
    let line = nsmd
        .wait_for_log_line_after(
            mark,
            "registration with rpcbind lost",
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(line.contains("registering again"), "{line}");
    // The kernel's view: GETPORT over TCP at 127.0.0.1 gives nsmd's port, and it answers.
    let tcp = server
        .in_netns(|| getport("127.0.0.1:111".parse().unwrap(), 100_024, 1, 6))
        .unwrap();
    assert_eq!(tcp as u16, port);
    nsmd.stop(Duration::from_secs(5)).unwrap();
}

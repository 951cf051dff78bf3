//! Issue 3, black-box: nsmd as rpc.statd, driven by hand-built RPC bytes and by Debian's own
//! sm-notify and rpc.statd, with a lockd stand-in that records callbacks, in network
//! namespaces (root only).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Answer, LockdStandIn, answer, call, in_netns, mon_args, parse_status, spawn_nsmd, tcp_exchange,
    udp_exchange, xdr_string,
};
use nsm_testhost::{Host, Lab, require};

const T: Duration = Duration::from_secs(10);
const SM: u32 = 100_024;
const C1: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
const C2: [u8; 16] = [0xc2; 16];

fn mon(to: SocketAddr, xid: u32, name: &[u8], cookie: [u8; 16]) -> Answer {
    let m = call(xid, SM, 1, 2, &mon_args(name, b"server1", cookie));
    answer(xid, &udp_exchange(to, &m).unwrap())
}

fn stat_state(to: SocketAddr) -> i32 {
    let m = call(77, SM, 1, 1, &xdr_string(b"localhost"));
    match answer(77, &udp_exchange(to, &m).unwrap()) {
        Answer::Accepted(0, w) => w[1] as i32,
        other => panic!("{other:?}"),
    }
}

fn succ(state: i32) -> Answer {
    Answer::Accepted(0, vec![0, state as u32])
}

fn fail() -> Answer {
    Answer::Accepted(0, vec![1, u32::MAX])
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (up to `T`) until `dir` holds no record file; whether it got there.
fn wait_empty(dir: &Path) -> bool {
    let deadline = Instant::now() + T;
    while !files(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    files(dir).is_empty()
}

/// SM_SIMU_CRASH to `to` from the privileged loopback port `port`; asserts the void reply.
fn simu_crash(to: SocketAddr, port: u16, xid: u32) {
    let sock = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    sock.send_to(&call(xid, SM, 1, 5, &[]), to).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(answer(xid, &buf[..n]), Answer::Accepted(0, vec![]));
}

fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn line(name: &str, cookie: [u8; 16]) -> String {
    let hex: String = cookie.iter().map(|b| format!("{b:02x}")).collect();
    let addr = format!("{:08x}", u32::from_ne_bytes([127, 0, 0, 1]));
    format!("{addr} 000186b5 00000003 00000010 {hex} {name} server1\n")
}

/// A server host running rpcbind, a lockd stand-in and nsmd on `/var/lib/nfs/nsmd`.
struct Server {
    host: Host,
    lockd: LockdStandIn,
    nsmd: nsm_testhost::Proc,
    port: u16,
    _rpcbind: nsm_testhost::Proc,
}

fn server(lab: &Lab, name: &str, addr: &str, answer_callbacks: bool) -> Server {
    let host = lab.host(name, &[addr]).unwrap();
    let rpcbind = host.start_rpcbind().unwrap();
    let lockd = LockdStandIn::start(&host, answer_callbacks);
    host.write_file("/run/proc/sys/fs/nfs/nsm_local_state", "0")
        .unwrap();
    let (nsmd, port) = spawn_nsmd(
        &host,
        "nsmd",
        &["-P", "/var/lib/nfs/nsmd", "--proc-root", "/run/proc"],
    );
    nsmd.wait_for_log_line("registered program 100024", T)
        .unwrap();
    Server {
        host,
        lockd,
        nsmd,
        port,
        _rpcbind: rpcbind,
    }
}

#[test]
fn every_procedure_and_its_effect() {
    if !require("every_procedure_and_its_effect", &["rpcbind", "rpcinfo"]) {
        return;
    }
    let lab = Lab::new("statd").unwrap();
    let s = server(&lab, "srv", "198.51.100.30/24", true);
    let cli = lab.host("cli", &["198.51.100.31/24"]).unwrap();
    let sm = s.host.nfs_dir().join("nsmd/sm");
    let local: SocketAddr = format!("127.0.0.1:{}", s.port).parse().unwrap();
    let state = in_netns(&s.host, || stat_state(local));
    assert_eq!(state % 2, 1, "the state number is odd while running");
    assert_eq!(
        String::from_utf8(
            s.host
                .read_file("/run/proc/sys/fs/nfs/nsm_local_state")
                .unwrap()
        )
        .unwrap(),
        state.to_string(),
        "nsm_local_state written"
    );

    in_netns(&s.host, || {
        // SM_MON: durable record in the nfs-utils format, then success with the state.
        assert_eq!(mon(local, 1, b"client1.example.test", C1), succ(state));
        let f = sm.join("client1.example.test");
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            line("client1.example.test", C1)
        );
        // Same cookie again: success, nothing rewritten.
        let before = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(mon(local, 2, b"client1.example.test", C1), succ(state));
        assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), before);
        // New cookie: rewritten.
        assert_eq!(mon(local, 3, b"client1.example.test", C2), succ(state));
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            line("client1.example.test", C2)
        );
        // Over TCP, as the kernel sends it.
        let m = call(4, SM, 1, 2, &mon_args(b"client2", b"server1", C1));
        assert_eq!(answer(4, &tcp_exchange(local, &m).unwrap()), succ(state));
        assert_eq!(files(&sm), ["client1.example.test", "client2"]);

        // SM_STAT.
        let m = call(5, SM, 1, 1, &xdr_string(b"anyhost.example.test"));
        assert_eq!(answer(5, &udp_exchange(local, &m).unwrap()), succ(state));
        let m = call(6, SM, 1, 1, &xdr_string(b"a/b"));
        assert_eq!(
            answer(6, &udp_exchange(local, &m).unwrap()),
            Answer::Accepted(0, vec![1, state as u32])
        );

        // Refused names write nothing anywhere.
        let before = tree(&s.host.nfs_dir());
        let long = vec![b'a'; 1025];
        for (i, bad) in [&b"../../etc/x"[..], b"a/b", b".x", b"..", &long]
            .into_iter()
            .enumerate()
        {
            let m = call(10 + i as u32, SM, 1, 2, &mon_args(bad, b"server1", C1));
            let r = udp_exchange(local, &m).unwrap();
            let want = if bad.len() > 1024 {
                Answer::Accepted(4, vec![])
            } else {
                fail()
            };
            assert_eq!(
                answer(10 + i as u32, &r),
                want,
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
        // A callback program other than lockd's is refused.
        let mut a = mon_args(b"client3", b"server1", C1);
        let at = a.len() - 16 - 12;
        a[at..at + 4].copy_from_slice(&100_005u32.to_be_bytes());
        assert_eq!(
            answer(20, &udp_exchange(local, &call(20, SM, 1, 2, &a)).unwrap()),
            fail()
        );
        assert_eq!(
            tree(&s.host.nfs_dir()),
            before,
            "nothing written by refused SM_MONs"
        );
        assert!(!Path::new("/etc/x").exists());

        // SM_SIMU_CRASH from an unprivileged port: refused, nothing changes.
        let r = udp_exchange(local, &call(21, SM, 1, 5, &[])).unwrap();
        assert_eq!(answer(21, &r), Answer::Accepted(0, vec![]));
        assert_eq!(stat_state(local), state);
        assert_eq!(files(&sm).len(), 2);
    });

    // SM_MON from another host: refused, nothing written.
    in_netns(&cli, || {
        let remote: SocketAddr = format!("198.51.100.30:{}", s.port).parse().unwrap();
        assert_eq!(mon(remote, 30, b"client9", C1), fail());
    });
    assert_eq!(files(&sm), ["client1.example.test", "client2"]);

    // SM_NOTIFY from the client's host: lockd is called back with the SM_MON's mon_name, the
    // new state and the exact cookie, from a privileged loopback port.
    in_netns(&cli, || {
        let remote: SocketAddr = format!("198.51.100.30:{}", s.port).parse().unwrap();
        let mut a = xdr_string(b"client1.example.test");
        a.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            answer(31, &udp_exchange(remote, &call(31, SM, 1, 6, &a)).unwrap()),
            Answer::Accepted(0, vec![])
        );
    });
    let got = s.lockd.wait_for(1, T);
    assert_eq!(got.len(), 1, "{}", s.nsmd.log_tail(30));
    let (from, vers, proc_, args) = &got[0];
    assert!(
        from.ip().is_loopback() && from.port() < 1024,
        "callback from {from}"
    );
    assert_eq!((*vers, *proc_), (3, 16));
    assert_eq!(
        parse_status(args),
        (b"client1.example.test".to_vec(), 7, C2)
    );
    // The same state again: no second callback. A new state: one more.
    in_netns(&cli, || {
        let remote: SocketAddr = format!("198.51.100.30:{}", s.port).parse().unwrap();
        for (xid, st) in [(32u32, 7u32), (33, 9)] {
            let mut a = xdr_string(b"CLIENT1");
            a.extend_from_slice(&st.to_be_bytes());
            udp_exchange(remote, &call(xid, SM, 1, 6, &a)).unwrap();
        }
    });
    let got = s.lockd.wait_for(3, Duration::from_secs(2));
    assert_eq!(got.len(), 2, "one callback per new state: {got:?}");
    assert_eq!(
        parse_status(&got[1].3),
        (b"client1.example.test".to_vec(), 9, C2)
    );

    // A host that announces itself under another name than the one monitored is matched by
    // its address: nsmd looks the monitored names up only now (not at SM_MON), in the
    // background, and then calls lockd back for the record whose name has the sender's
    // address (client5, the client host's second name), and for no other.
    lab.add_name("198.51.100.31", &["client5.example.test"])
        .unwrap();
    in_netns(&s.host, || {
        assert_eq!(mon(local, 34, b"client5.example.test", C1), succ(state));
    });
    in_netns(&cli, || {
        let remote: SocketAddr = format!("198.51.100.30:{}", s.port).parse().unwrap();
        let mut a = xdr_string(b"renamed-client");
        a.extend_from_slice(&13u32.to_be_bytes());
        udp_exchange(remote, &call(35, SM, 1, 6, &a)).unwrap();
    });
    let got = s.lockd.wait_for(3, T);
    assert_eq!(got.len(), 3, "{}", s.nsmd.log_tail(30));
    assert_eq!(
        parse_status(&got[2].3),
        (b"client5.example.test".to_vec(), 13, C1)
    );
    let got = s.lockd.wait_for(4, Duration::from_secs(2));
    assert_eq!(got.len(), 3, "only client5 has that address: {got:?}");
    in_netns(&s.host, || {
        let mut a = xdr_string(b"client5.example.test");
        a.extend(xdr_string(b"server1"));
        for w in [100_021u32, 3, 16] {
            a.extend_from_slice(&w.to_be_bytes());
        }
        let r = udp_exchange(local, &call(36, SM, 1, 3, &a)).unwrap();
        assert_eq!(answer(36, &r), Answer::Accepted(0, vec![state as u32]));
    });

    // Two hosts with one short name: "hostb" sent from the client's address is
    // hostb.example.test (which has that address), never hostb.other.test (another host).
    lab.add_name("198.51.100.31", &["hostb.example.test"])
        .unwrap();
    lab.add_name("198.51.100.77", &["hostb.other.test"])
        .unwrap();
    in_netns(&s.host, || {
        assert_eq!(mon(local, 37, b"hostb.example.test", C1), succ(state));
        assert_eq!(mon(local, 38, b"hostb.other.test", C1), succ(state));
    });
    in_netns(&cli, || {
        let remote: SocketAddr = format!("198.51.100.30:{}", s.port).parse().unwrap();
        let mut a = xdr_string(b"hostb");
        a.extend_from_slice(&15u32.to_be_bytes());
        udp_exchange(remote, &call(39, SM, 1, 6, &a)).unwrap();
    });
    let got = s.lockd.wait_for(4, T);
    assert_eq!(got.len(), 4, "{}", s.nsmd.log_tail(30));
    assert_eq!(
        parse_status(&got[3].3),
        (b"hostb.example.test".to_vec(), 15, C1)
    );
    let got = s.lockd.wait_for(5, Duration::from_secs(2));
    assert_eq!(got.len(), 4, "hostb.other.test is another host: {got:?}");

    // SM_UNMON removes one registration, as rpc.statd: the record with that very name, never
    // another host's that shares its short name.
    in_netns(&s.host, || {
        assert_eq!(mon(local, 40, b"hostb", C1), succ(state));
        let unmon = |xid: u32, name: &[u8]| {
            let mut a = xdr_string(name);
            a.extend(xdr_string(b"server1"));
            for w in [100_021u32, 3, 16] {
                a.extend_from_slice(&w.to_be_bytes());
            }
            let r = udp_exchange(local, &call(xid, SM, 1, 3, &a)).unwrap();
            assert_eq!(answer(xid, &r), Answer::Accepted(0, vec![state as u32]));
        };
        let hostb = |f: &Vec<String>| -> Vec<String> {
            f.iter()
                .filter(|n| n.starts_with("hostb"))
                .cloned()
                .collect()
        };
        unmon(41, b"hostb.example.test");
        assert_eq!(hostb(&files(&sm)), ["hostb", "hostb.other.test"]);
        unmon(42, b"hostb");
        assert_eq!(hostb(&files(&sm)), ["hostb.other.test"]);
        unmon(43, b"hostb.other.test");
        assert!(hostb(&files(&sm)).is_empty());
    });

    in_netns(&s.host, || {
        // SM_UNMON and SM_UNMON_ALL remove durably and answer the state.
        let mut a = xdr_string(b"client2");
        a.extend(xdr_string(b"server1"));
        for w in [100_021u32, 3, 16] {
            a.extend_from_slice(&w.to_be_bytes());
        }
        let r = udp_exchange(local, &call(40, SM, 1, 3, &a)).unwrap();
        assert_eq!(answer(40, &r), Answer::Accepted(0, vec![state as u32]));
        assert_eq!(files(&sm), ["client1.example.test"]);
        let mut a = xdr_string(b"server1");
        for w in [100_021u32, 3, 16] {
            a.extend_from_slice(&w.to_be_bytes());
        }
        let r = udp_exchange(local, &call(41, SM, 1, 4, &a)).unwrap();
        assert_eq!(answer(41, &r), Answer::Accepted(0, vec![state as u32]));
        assert!(files(&sm).is_empty());

        // SM_SIMU_CRASH from a privileged loopback port: state + 2, records to sm.bak/.
        assert_eq!(mon(local, 42, b"client4", C1), succ(state));
        simu_crash(local, 888, 43);
        assert_eq!(stat_state(local), state + 2);
        assert!(files(&sm).is_empty());
        assert_eq!(files(&sm.with_file_name("sm.bak")), ["client4"]);
    });
    assert!(s.nsmd.is_running());
}

#[test]
fn debian_sm_notify_reaches_lockd_through_nsmd_and_a_hung_lockd_blocks_nothing() {
    if !require(
        "debian_sm_notify_reaches_lockd_through_nsmd_and_a_hung_lockd_blocks_nothing",
        &["rpcbind", "sm-notify"],
    ) {
        return;
    }
    let lab = Lab::new("smnotify").unwrap();
    let s = server(&lab, "srv", "198.51.100.40/24", false);
    let cli = lab.host("cli", &["198.51.100.41/24"]).unwrap();
    let _rpcbind_cli = cli.start_rpcbind().unwrap();
    let local: SocketAddr = format!("127.0.0.1:{}", s.port).parse().unwrap();
    let state = in_netns(&s.host, || {
        let st = stat_state(local);
        // lockd on the server monitors the client host "cli".
        assert_eq!(mon(local, 1, b"cli", C1), succ(st));
        st
    });
    // The client's statd directory says it monitors "srv"; its sm-notify announces a reboot.
    let hex: String = C2.iter().map(|b| format!("{b:02x}")).collect();
    cli.write_file(
        "/var/lib/nfs/sm/srv",
        format!("0100007f 000186b5 00000003 00000010 {hex} srv cli\n"),
    )
    .unwrap();
    let out = cli
        .run(
            &["/usr/sbin/sm-notify", "-d", "-f", "-P", "/var/lib/nfs"],
            Duration::from_secs(30),
        )
        .unwrap();
    let smlog = String::from_utf8_lossy(&out.stderr);
    let cli_state = i32::from_ne_bytes(
        cli.read_file("/var/lib/nfs/state").unwrap()[..4]
            .try_into()
            .unwrap(),
    );
    let got = s.lockd.wait_for(1, T);
    assert_eq!(
        got.len(),
        1,
        "sm-notify: {smlog}\nnsmd: {}",
        s.nsmd.log_tail(30)
    );
    assert_eq!(parse_status(&got[0].3), (b"cli".to_vec(), cli_state, C1));

    // This lockd never answers: the callback is retried in the background while NULL and
    // SM_MON are answered at once.
    in_netns(&s.host, || {
        for i in 0..20u32 {
            let started = Instant::now();
            let r = udp_exchange(local, &call(100 + i, SM, 1, 0, &[])).unwrap();
            assert_eq!(answer(100 + i, &r), Answer::Accepted(0, vec![]));
            let name = format!("peer{i}");
            assert_eq!(mon(local, 200 + i, name.as_bytes(), C1), succ(state));
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "blocked behind the hung lockd"
            );
        }
    });
}

#[test]
fn callbacks_never_leave_loopback() {
    if !require("callbacks_never_leave_loopback", &["rpcbind", "tshark"]) {
        return;
    }
    let lab = Lab::new("loopcb").unwrap();
    let s = server(&lab, "srv", "198.51.100.45/24", true);
    let cli = lab.host("cli", &["198.51.100.46/24"]).unwrap();
    let iface = s.host.iface().to_owned();
    let cap = s
        .host
        .spawn(
            "tshark",
            &[
                "/usr/bin/tshark",
                "-i",
                &iface,
                "-f",
                "udp or tcp",
                "-w",
                "/run/eth.pcap",
            ],
        )
        .unwrap();
    cap.wait_for_log_line("Capturing on", T).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let local: SocketAddr = format!("127.0.0.1:{}", s.port).parse().unwrap();
    // Records whose names point at the client's address, by name and as an address literal.
    in_netns(&s.host, || {
        assert!(matches!(mon(local, 1, b"cli", C1), Answer::Accepted(0, w) if w[0] == 0));
        assert!(matches!(mon(local, 2, b"198.51.100.46", C2), Answer::Accepted(0, w) if w[0] == 0));
    });
    in_netns(&cli, || {
        let remote: SocketAddr = format!("198.51.100.45:{}", s.port).parse().unwrap();
        for (xid, name) in [(3u32, &b"cli"[..]), (4, b"198.51.100.46")] {
            let mut a = xdr_string(name);
            a.extend_from_slice(&11u32.to_be_bytes());
            udp_exchange(remote, &call(xid, SM, 1, 6, &a)).unwrap();
        }
    });
    assert_eq!(
        s.lockd.wait_for(2, T).len(),
        2,
        "both records called back on loopback"
    );
    std::thread::sleep(Duration::from_millis(500));
    cap.signal(nsm_testhost::Signal::Int).unwrap();
    cap.wait(T).unwrap();
    let count = |filter: &str| {
        s.host
            .run_ok(
                &[
                    "/usr/bin/tshark",
                    "-r",
                    "/run/eth.pcap",
                    "-d",
                    &format!("udp.port=={},rpc", s.port),
                    "-Y",
                    filter,
                ],
                T,
            )
            .unwrap()
            .lines()
            .count()
    };
    assert!(
        count("rpc.program == 100024") >= 4,
        "the notifications are on the wire"
    );
    assert_eq!(
        count("rpc.program == 100021 || nlm"),
        0,
        "no NLM packet outside loopback"
    );
}

#[test]
fn notifies_the_previous_boots_peers_at_start_like_rpc_statd() {
    if !require(
        "notifies_the_previous_boots_peers_at_start_like_rpc_statd",
        &["rpcbind", "rpc.statd"],
    ) {
        return;
    }
    let lab = Lab::new("atstart").unwrap();
    let srv = lab.host("srv", &["198.51.100.60/24"]).unwrap();
    let cli = lab.host("cli", &["198.51.100.61/24"]).unwrap();
    let _rpcbind_srv = srv.start_rpcbind().unwrap();
    let _rpcbind_cli = cli.start_rpcbind().unwrap();
    // The client: Debian's rpc.statd monitors the server "srv" for its lockd (the stand-in).
    let lockd = LockdStandIn::start(&cli, true);
    let statd = cli
        .spawn(
            "rpc.statd",
            &[
                "/usr/sbin/rpc.statd",
                "-F",
                "-d",
                "-L",
                "-p",
                "32765",
                "-P",
                "/var/lib/nfs",
            ],
        )
        .unwrap();
    cli.wait_registered(SM, T).unwrap();
    in_netns(&cli, || {
        let r = udp_exchange(
            "127.0.0.1:32765".parse().unwrap(),
            &call(1, SM, 1, 2, &mon_args(b"srv", b"cli", C1)),
        )
        .unwrap();
        assert!(
            matches!(answer(1, &r), Answer::Accepted(0, w) if w[0] == 0),
            "client statd monitors srv"
        );
    });
    // The server's previous boot monitored the client (lockd's record: mon_name cli, my_name srv).
    let hex: String = C2.iter().map(|b| format!("{b:02x}")).collect();
    let addr = format!("{:08x}", u32::from_ne_bytes([127, 0, 0, 1]));
    srv.write_file(
        "/var/lib/nfs/nsmd/sm/cli",
        format!("{addr} 000186b5 00000003 00000010 {hex} cli srv\n"),
    )
    .unwrap();
    let state_before: i32 = 3;
    srv.write_file("/var/lib/nfs/nsmd/state", state_before.to_ne_bytes())
        .unwrap();
    // nsmd without -L: notifies, then serves with the bumped state and nothing loaded.
    let nsmd = srv
        .spawn(
            "nsmd",
            &[
                common::NSMD,
                "-F",
                "-d",
                "-p",
                "32766",
                "-P",
                "/var/lib/nfs/nsmd",
                "--proc-root",
                "/run/proc",
            ],
        )
        .unwrap();
    nsmd.wait_for_log_line("registered program 100024", T)
        .unwrap();
    assert!(
        nsmd.log().contains("records=0"),
        "sm/ was retired before loading: {}",
        nsmd.log_tail(20)
    );
    // The client's lockd hears of srv's reboot: the `n`th callback, with `state`.
    let callback = |n: usize, state: i32| {
        let got = lockd.wait_for(n, T);
        assert_eq!(
            got.len(),
            n,
            "nsmd: {}\nclient statd: {}",
            nsmd.log_tail(30),
            statd.log_tail(10)
        );
        assert_eq!(parse_status(&got[n - 1].3), (b"srv".to_vec(), state, C1));
    };
    callback(1, state_before + 2);
    let state_file = srv.read_file("/var/lib/nfs/nsmd/state").unwrap();
    assert_eq!(
        i32::from_ne_bytes(state_file[..4].try_into().unwrap()),
        state_before + 2
    );
    let bak = srv.nfs_dir().join("nsmd/sm.bak");
    assert!(wait_empty(&bak), "the acknowledged peer left sm.bak/");

    // SM_SIMU_CRASH behaves like a restart: lockd monitors the client again, then the
    // simulated crash bumps the state once more, retires the record and notifies the client,
    // whose rpc.statd calls its lockd with the new state.
    let local: SocketAddr = "127.0.0.1:32766".parse().unwrap();
    in_netns(&srv, || {
        assert_eq!(mon(local, 50, b"cli", C2), succ(state_before + 2));
        simu_crash(local, 889, 51);
        assert_eq!(stat_state(local), state_before + 4);
    });
    callback(2, state_before + 4);
    assert!(
        wait_empty(&bak),
        "the peer acknowledged the crash's notification and left sm.bak/"
    );

    // SIGUSR1: the peers still in sm.bak/ are notified again with the current state; what is
    // monitored now stays in sm/ and the state does not move (rpc.statd with -P would re-run
    // sm-notify, retire the live records and bump the state behind its own back).
    in_netns(&srv, || {
        assert_eq!(mon(local, 60, b"cli", C2), succ(state_before + 4));
    });
    let hex: String = C2.iter().map(|b| format!("{b:02x}")).collect();
    srv.write_file(
        "/var/lib/nfs/nsmd/sm.bak/cli",
        format!("{addr} 000186b5 00000003 00000010 {hex} cli srv\n"),
    )
    .unwrap();
    nsmd.signal(nsm_testhost::Signal::Usr1).unwrap();
    assert!(
        wait_empty(&bak),
        "the peer acknowledged again and left sm.bak/: {}",
        nsmd.log_tail(20)
    );
    assert_eq!(files(&srv.nfs_dir().join("nsmd/sm")), ["cli"]);
    in_netns(&srv, || assert_eq!(stat_state(local), state_before + 4));
}

//! The notifier, black-box: `nsm-notify` on a server host that carries a service address
//! tells Debian's rpc.statd on a client host that the service restarted; the client's
//! rpc.statd calls its lockd (a stand-in) with the service name, the new state and its
//! cookie. Network namespaces, root only.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{Answer, LockdStandIn, answer, call, in_netns, mon_args, parse_status, udp_exchange};
use nsm_testhost::{Host, Lab, require};

/// The binary under test.
const NSM_NOTIFY: &str = env!("CARGO_BIN_EXE_nsm-notify");
const T: Duration = Duration::from_secs(10);
const COOKIE: [u8; 16] = [0xc0, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
const SERVICE: &str = "nfs-svc.example.test";
const SERVICE_ADDR: &str = "198.51.100.100";

fn line(mon_name: &str, my_name: &str) -> String {
    let addr = format!("{:08x}", u32::from_ne_bytes([127, 0, 0, 1]));
    format!(
        "{addr} 000186b5 00000003 00000010 {} {mon_name} {my_name}\n",
        "00".repeat(16)
    )
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn state_of(host: &Host, path: &str) -> i32 {
    i32::from_ne_bytes(host.read_file(path).unwrap()[..4].try_into().unwrap())
}

#[test]
fn debian_statd_accepts_the_service_notify_and_a_dead_peer_stays() {
    if !require(
        "debian_statd_accepts_the_service_notify_and_a_dead_peer_stays",
        &["rpcbind", "rpcinfo", "rpc.statd", "tshark"],
    ) {
        return;
    }
    let lab = Lab::new("notify").unwrap();
    lab.add_name(SERVICE_ADDR, &[SERVICE]).unwrap();
    // A peer whose address nobody has.
    lab.add_name("198.51.100.99", &["ghost.example.test"])
        .unwrap();
    let srv = lab.host("srv", &["198.51.100.50/24"]).unwrap();
    srv.add_addr(&format!("{SERVICE_ADDR}/24")).unwrap();
    let cli = lab.host("cli", &["198.51.100.51/24"]).unwrap();

    // The client: rpcbind, a lockd stand-in, Debian's rpc.statd monitoring the service.
    let _rpcbind = cli.start_rpcbind().unwrap();
    let lockd = LockdStandIn::start(&cli, true);
    let (statd, statd_port) = common::debian_statd(&cli, None);
    let local: SocketAddr = format!("127.0.0.1:{statd_port}").parse().unwrap();
    in_netns(&cli, || {
        let m = call(
            1,
            100_024,
            1,
            2,
            &mon_args(SERVICE.as_bytes(), b"cli", COOKIE),
        );
        let r = answer(1, &udp_exchange(local, &m).unwrap());
        assert!(
            matches!(&r, Answer::Accepted(0, w) if w[0] == 0),
            "SM_MON accepted: {r:?}\n{}",
            statd.log_tail(20)
        );
    });
    assert_eq!(
        files(&cli.nfs_dir().join("c/sm")),
        [".keep", SERVICE],
        "the client's statd monitors the service"
    );

    // The server: records for the client and the dead peer, state 7.
    srv.write_file("/var/lib/nfs/s/sm/cli", line("cli", "srv"))
        .unwrap();
    srv.write_file(
        "/var/lib/nfs/s/sm/ghost.example.test",
        line("ghost.example.test", "srv"),
    )
    .unwrap();
    srv.write_file("/var/lib/nfs/s/state", 7i32.to_ne_bytes())
        .unwrap();
    srv.write_file("/run/proc/sys/fs/nfs/nsm_local_state", "0")
        .unwrap();
    let iface = srv.iface().to_owned();
    let cap = srv
        .spawn(
            "tshark",
            &[
                "/usr/bin/tshark",
                "-i",
                &iface,
                "-f",
                "udp",
                "-w",
                "/run/notify.pcap",
            ],
        )
        .unwrap();
    cap.wait_for_log_line("Capturing on", T).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let args = [
        NSM_NOTIFY,
        "-d",
        "-v",
        SERVICE,
        "-P",
        "/var/lib/nfs/s",
        "--proc-root",
        "/run/proc",
        "--pid-file",
        "/run/sm-notify.pid",
        "--retry-seconds",
        "15",
        "--json",
    ];
    let notify = srv.spawn("nsm-notify", &args).unwrap();

    // The live client is called back at once, while the dead peer is still being retried.
    let got = lockd.wait_for(1, T);
    assert!(
        !got.is_empty(),
        "no callback\nnsm-notify: {}\nrpc.statd: {}",
        notify.log_tail(40),
        statd.log_tail(40)
    );
    assert!(notify.is_running(), "the dead peer is still being tried");
    assert_eq!(
        parse_status(&got[0].3),
        (SERVICE.as_bytes().to_vec(), 9, COOKIE),
        "lockd hears of the service's new state with its cookie"
    );
    notify
        .wait_for_log_line("cli removed from sm.bak", T)
        .unwrap();
    let bak = srv.nfs_dir().join("s/sm.bak");
    assert_eq!(
        files(&bak),
        ["ghost.example.test"],
        "acknowledged peer gone"
    );

    let status = notify.wait(Duration::from_secs(40)).unwrap();
    let log = notify.log();
    assert_eq!(status.code(), Some(1), "a peer was given up: {log}");
    assert!(
        log.contains("Unable to notify ghost.example.test, giving up"),
        "{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("ghost.example.test") && l.contains("will retry"))
            .count()
            >= 2,
        "retries of the dead peer are logged: {log}"
    );
    assert!(
        log.contains("\"acked\":1,\"gave_up\":1"),
        "JSON summary: {log}"
    );
    assert_eq!(files(&bak), ["ghost.example.test"], "the dead peer stays");
    assert!(files(&srv.nfs_dir().join("s/sm")).is_empty());
    assert_eq!(state_of(&srv, "/var/lib/nfs/s/state"), 9, "state + 2");
    assert_eq!(
        srv.read_file("/run/proc/sys/fs/nfs/nsm_local_state")
            .unwrap(),
        b"9"
    );
    assert!(
        statd
            .log()
            .contains("Received SM_NOTIFY from nfs-svc.example.test"),
        "{}",
        statd.log_tail(30)
    );

    // Every SM_NOTIFY on the wire left from the service address.
    std::thread::sleep(Duration::from_millis(300));
    cap.signal(nsm_testhost::Signal::Int).unwrap();
    cap.wait(T).unwrap();
    let out = srv
        .run_ok(
            &[
                "/usr/bin/tshark",
                "-r",
                "/run/notify.pcap",
                "-d",
                &format!("udp.port=={statd_port},rpc"),
                "-Y",
                "rpc.msgtyp == 0 && rpc.program == 100024 && rpc.procedure == 6",
                "-T",
                "fields",
                "-e",
                "ip.src",
                "-e",
                "udp.srcport",
            ],
            T,
        )
        .unwrap();
    let sources: Vec<&str> = out.lines().collect();
    assert!(!sources.is_empty(), "SM_NOTIFYs captured");
    for s in &sources {
        let mut f = s.split_whitespace();
        assert_eq!(f.next(), Some(SERVICE_ADDR), "{out}");
        let port: u16 = f.next().unwrap().parse().unwrap();
        assert!((600..1024).contains(&port), "privileged source port: {out}");
    }

    // Again without -f: the run-once lock stops it, nothing changes.
    let out = srv.run(&args, T).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Already notifying clients"));
    assert_eq!(state_of(&srv, "/var/lib/nfs/s/state"), 9);

    // With -f in the same boot: the remaining peer is tried again, without a second bump.
    let mut forced = args.to_vec();
    let at = forced.iter().position(|a| *a == "--retry-seconds").unwrap();
    forced[at + 1] = "3";
    forced.push("-f");
    let out = srv.run(&forced, Duration::from_secs(30)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("resuming without a bump"), "{err}");
    assert_eq!(state_of(&srv, "/var/lib/nfs/s/state"), 9, "no second bump");
    assert_eq!(files(&bak), ["ghost.example.test"]);
}

#[test]
fn nobody_to_notify_lifts_grace_and_keeps_the_state() {
    if !require("nobody_to_notify_lifts_grace_and_keeps_the_state", &[]) {
        return;
    }
    let lab = Lab::new("notify0").unwrap();
    let srv = lab.isolated_host("srv").unwrap();
    srv.write_file("/run/proc/fs/lockd/nlm_end_grace", "")
        .unwrap();
    let out = srv
        .run(
            &[
                NSM_NOTIFY,
                "-d",
                "-P",
                "/var/lib/nfs/e",
                "--proc-root",
                "/run/proc",
            ],
            T,
        )
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        srv.read_file("/run/proc/fs/lockd/nlm_end_grace").unwrap(),
        b"Y"
    );
    assert!(
        srv.read_file("/var/lib/nfs/e/state").is_err(),
        "no state file written when nobody is notified"
    );
}

/// A dual-stack service name reaches an IPv4-only and an IPv6-only client in one run, each
/// from the service's address of that family.
#[test]
fn a_dual_stack_service_reaches_ipv4_and_ipv6_clients_in_one_run() {
    if !require(
        "a_dual_stack_service_reaches_ipv4_and_ipv6_clients_in_one_run",
        &["rpcbind", "rpc.statd"],
    ) {
        return;
    }
    const V6: &str = "2001:db8::100";
    let lab = Lab::new("dualstack").unwrap();
    lab.add_name(SERVICE_ADDR, &[SERVICE]).unwrap();
    lab.add_name(V6, &[SERVICE]).unwrap();
    let srv = lab
        .host("srv", &["198.51.100.60/24", "2001:db8::60/64"])
        .unwrap();
    srv.add_addr(&format!("{SERVICE_ADDR}/24")).unwrap();
    srv.add_addr(&format!("{V6}/64")).unwrap();
    let mut clients = Vec::new();
    for (name, addr) in [("cli4", "198.51.100.61/24"), ("cli6", "2001:db8::61/64")] {
        let h = lab.host(name, &[addr]).unwrap();
        let rpcbind = h.start_rpcbind().unwrap();
        let lockd = LockdStandIn::start(&h, true);
        let (statd, _) = common::debian_statd(&h, Some(32765));
        in_netns(&h, || {
            let m = call(
                1,
                100_024,
                1,
                2,
                &mon_args(SERVICE.as_bytes(), name.as_bytes(), COOKIE),
            );
            let r = answer(
                1,
                &udp_exchange("127.0.0.1:32765".parse().unwrap(), &m).unwrap(),
            );
            assert!(
                matches!(&r, Answer::Accepted(0, w) if w[0] == 0),
                "{name}: {r:?}"
            );
        });
        let iface = h.iface().to_owned();
        let cap = h
            .spawn(
                "tshark",
                &[
                    "/usr/bin/tshark",
                    "-i",
                    &iface,
                    "-f",
                    "udp dst port 32765",
                    "-w",
                    "/run/in.pcap",
                ],
            )
            .unwrap();
        cap.wait_for_log_line("Capturing on", T).unwrap();
        srv.write_file(&format!("/var/lib/nfs/s/sm/{name}"), line(name, "srv"))
            .unwrap();
        clients.push((h, rpcbind, lockd, statd));
    }
    std::thread::sleep(Duration::from_millis(300));
    srv.write_file("/var/lib/nfs/s/state", 7i32.to_ne_bytes())
        .unwrap();
    let out = srv
        .run(
            &[
                NSM_NOTIFY,
                "-d",
                "-v",
                SERVICE,
                "-P",
                "/var/lib/nfs/s",
                "--proc-root",
                "/run/proc",
                "--pid-file",
                "/run/nsm-notify.pid",
                "--no-short-name",
                "--retry-seconds",
                "20",
            ],
            Duration::from_secs(30),
        )
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(state_of(&srv, "/var/lib/nfs/s/state"), 9);
    assert!(files(&srv.nfs_dir().join("s/sm.bak")).is_empty(), "{log}");
    for ((h, _rpcbind, lockd, statd), want_src) in clients.iter().zip([SERVICE_ADDR, V6]) {
        let got = lockd.wait_for(1, T);
        assert_eq!(got.len(), 1, "{}: {}\n{log}", h.name(), statd.log_tail(10));
        assert_eq!(
            parse_status(&got[0].3),
            (SERVICE.as_bytes().to_vec(), 9, COOKIE),
            "{}",
            h.name()
        );
        // rpc.statd logs the sender of every SM_NOTIFY ("check_default: access by ADDR").
        let senders: Vec<String> = statd
            .log()
            .lines()
            .filter_map(|l| l.split("access by ").nth(1))
            .filter_map(|r| r.split_whitespace().next())
            .map(str::to_owned)
            .filter(|a| !a.starts_with("127.") && a != "::1")
            .collect();
        assert!(
            !senders.is_empty() && senders.iter().all(|a| a == want_src),
            "{}: SM_NOTIFY from {senders:?}",
            h.name()
        );
    }
}

//! Issue 2, black-box: the real nsmd binary against Debian's rpcbind, rpcinfo and tshark, in
//! network namespaces (root only; see `nsm_testhost::require`).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{
    Answer, XorShift, answer, call, in_netns, rss_kib, spawn_nsmd, tcp_exchange, udp_exchange,
    xdr_string,
};
use nsm_testhost::{Lab, Signal, require};

const T: Duration = Duration::from_secs(10);
const SM_PROG: u32 = 100_024;

fn rpcinfo(host: &nsm_testhost::Host, args: &[&str]) -> String {
    let mut argv = vec!["/usr/sbin/rpcinfo"];
    argv.extend_from_slice(args);
    let out = host.run(&argv, T).unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn rpcinfo_rpcbind_and_rpc_layer_answers() {
    if !require(
        "rpcinfo_rpcbind_and_rpc_layer_answers",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("found").unwrap();
    let srv = lab
        .host("srv", &["198.51.100.10/24", "2001:db8::10/64"])
        .unwrap();
    let cli = lab
        .host("cli", &["198.51.100.11/24", "2001:db8::11/64"])
        .unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    let (nsmd, port) = spawn_nsmd(&srv, "nsmd", &["-P", "/var/lib/nfs/nsmd-state"]);
    nsmd.wait_for_log_line("registered program 100024 version 1 with rpcbind", T)
        .unwrap();

    // rpcinfo -p lists 100024 v1 on udp and tcp, at nsmd's port.
    let regs = srv.wait_registered(SM_PROG, T).unwrap();
    let mut protos: Vec<_> = regs
        .iter()
        .filter(|r| r.version == 1 && r.port == port)
        .map(|r| r.protocol.as_str())
        .collect();
    protos.sort_unstable();
    assert_eq!(protos, ["tcp", "udp"], "{regs:?}");
    // The IPv6 registrations are there too (rpcinfo's rpcbind v3 dump).
    let all = rpcinfo(&srv, &["127.0.0.1"]);
    assert!(all.contains("udp6") && all.contains("tcp6"), "{all}");

    // NULL over both transports, locally and from another test host, over IPv4 and IPv6.
    for (h, target) in [(&srv, "127.0.0.1"), (&cli, "198.51.100.10")] {
        for t in ["-u", "-t"] {
            let out = rpcinfo(h, &[t, target, "100024", "1"]);
            assert!(
                out.contains("program 100024 version 1 ready and waiting"),
                "{t} {target}: {out}"
            );
        }
    }
    for t in ["udp6", "tcp6"] {
        let out = rpcinfo(&cli, &["-T", t, "2001:db8::10", "100024", "1"]);
        assert!(out.contains("ready and waiting"), "{t}: {out}");
    }

    // Version 2: program/version mismatch, low 1 high 1.
    let out = rpcinfo(&srv, &["-u", "127.0.0.1", "100024", "2"]);
    assert!(out.contains("low version = 1, high version = 1"), "{out}");
    let out = rpcinfo(&cli, &["-t", "198.51.100.10", "100024", "2"]);
    assert!(out.contains("low version = 1, high version = 1"), "{out}");

    // The rest with hand-built bytes, from inside the server's namespace.
    in_netns(&srv, || {
        let udp: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let tcp = udp;
        let udp6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
        let cases: Vec<(&str, Vec<u8>, Answer)> = vec![
            (
                "NULL",
                call(1, SM_PROG, 1, 0, &[]),
                Answer::Accepted(0, vec![]),
            ),
            (
                "unknown program",
                call(2, 100_099, 1, 0, &[]),
                Answer::Accepted(1, vec![]),
            ),
            (
                "version 2",
                call(3, SM_PROG, 2, 0, &[]),
                Answer::Accepted(2, vec![1, 1]),
            ),
            (
                "unknown procedure 7",
                call(4, SM_PROG, 1, 7, &[]),
                Answer::Accepted(3, vec![]),
            ),
            (
                "truncated SM_STAT",
                call(5, SM_PROG, 1, 1, &[0, 0, 0, 9, b'a']),
                Answer::Accepted(4, vec![]),
            ),
            (
                "SM_STAT without arguments",
                call(6, SM_PROG, 1, 1, &[]),
                Answer::Accepted(4, vec![]),
            ),
            (
                "SM_STAT name of 1025 bytes",
                call(7, SM_PROG, 1, 1, &xdr_string(&[b'a'; 1025])),
                Answer::Accepted(4, vec![]),
            ),
            (
                "NULL with trailing bytes",
                call(8, SM_PROG, 1, 0, &[0, 0, 0, 0]),
                Answer::Accepted(4, vec![]),
            ),
            (
                "truncated SM_MON",
                call(9, SM_PROG, 1, 2, &xdr_string(b"client")),
                Answer::Accepted(4, vec![]),
            ),
            (
                "truncated SM_NOTIFY",
                call(10, SM_PROG, 1, 6, &xdr_string(b"peer")),
                Answer::Accepted(4, vec![]),
            ),
        ];
        for (what, msg, want) in &cases {
            let xid = u32::from_be_bytes(msg[..4].try_into().unwrap());
            for (t, to) in [("udp", udp), ("tcp", tcp), ("udp6", udp6)] {
                let reply = if t == "tcp" {
                    tcp_exchange(to, msg)
                } else {
                    udp_exchange(to, msg)
                }
                .unwrap_or_else(|| panic!("{what} over {t}: no reply"));
                assert_eq!(&answer(xid, &reply), want, "{what} over {t}");
            }
        }
        // RPC version 3: MSG_DENIED, RPC_MISMATCH, low 2 high 2.
        let mut m = call(11, SM_PROG, 1, 0, &[]);
        m[11] = 3;
        assert_eq!(
            answer(11, &udp_exchange(udp, &m).unwrap()),
            Answer::Denied(0, vec![2, 2])
        );
        // AUTH_DH (flavor 3) is not served: AUTH_ERROR, AUTH_REJECTEDCRED.
        let mut m = call(12, SM_PROG, 1, 0, &[]);
        m[27] = 3;
        assert_eq!(
            answer(12, &udp_exchange(udp, &m).unwrap()),
            Answer::Denied(1, vec![2])
        );
    });

    // SIGTERM: exits 0 and nothing stays registered.
    nsmd.signal(Signal::Term).unwrap();
    let status = nsmd.wait(T).unwrap();
    assert!(status.success(), "{status:?}\n{}", nsmd.log_tail(20));
    assert!(
        nsmd.log().contains("unregistered from rpcbind"),
        "{}",
        nsmd.log_tail(20)
    );
    let left: Vec<_> = srv
        .rpc_programs()
        .unwrap()
        .into_iter()
        .filter(|r| r.program == SM_PROG)
        .collect();
    assert!(left.is_empty(), "still registered after SIGTERM: {left:?}");
    assert!(
        !rpcinfo(&srv, &["127.0.0.1"]).contains("status"),
        "rpcbind v3 dump still lists status"
    );
}

#[test]
fn keeps_serving_without_rpcbind() {
    if !require("keeps_serving_without_rpcbind", &["rpcinfo"]) {
        return;
    }
    let lab = Lab::new("norpcb").unwrap();
    let h = lab.isolated_host("lonely").unwrap();
    let (nsmd, port) = spawn_nsmd(
        &h,
        "nsmd",
        &["-p", "4711", "-P", "/var/lib/nfs/fresh/state"],
    );
    assert_eq!(port, 4711);
    nsmd.wait_for_log_line("is NOT registered", T).unwrap();
    // rpcinfo asks rpcbind even with -n, so NULL is sent by hand here.
    in_netns(&h, || {
        let to: SocketAddr = "127.0.0.1:4711".parse().unwrap();
        let m = call(42, SM_PROG, 1, 0, &[]);
        assert_eq!(
            answer(42, &udp_exchange(to, &m).unwrap()),
            Answer::Accepted(0, vec![])
        );
        assert_eq!(
            answer(42, &tcp_exchange(to, &m).unwrap()),
            Answer::Accepted(0, vec![])
        );
    });
    assert!(
        h.nfs_dir().join("fresh/state").is_dir(),
        "-P directory created"
    );
    nsmd.signal(Signal::Int).unwrap();
    assert!(nsmd.wait(T).unwrap().success());
}

#[test]
fn hostile_input_leaves_nsmd_serving_with_bounded_memory() {
    if !require(
        "hostile_input_leaves_nsmd_serving_with_bounded_memory",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("hostile").unwrap();
    let srv = lab.isolated_host("target").unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    let (nsmd, port) = spawn_nsmd(&srv, "nsmd", &["-P", "/var/lib/nfs/st"]);
    nsmd.wait_for_log_line("registered program 100024", T)
        .unwrap();
    let before = rss_kib(nsmd.pid());
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    in_netns(&srv, || {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..20_000u32 {
            let len = (rng.next() % 1500) as usize;
            let mut d = rng.bytes(len);
            if i % 2 == 0 && d.len() >= 40 {
                // Shaped like a call to nsmd so it reaches the procedure decoders.
                let proc_ = (rng.next() % 8) as u32;
                d[..40].copy_from_slice(&call(i, SM_PROG, 1, proc_, &[]));
            }
            let _ = s.send_to(&d, to);
            if i % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for i in 0..500u32 {
            let Ok(mut c) = TcpStream::connect(to) else {
                continue;
            };
            let len = (rng.next() % 4096) as usize;
            let mut d = rng.bytes(len);
            if i % 3 == 0 && d.len() >= 44 {
                let body = call(i, SM_PROG, 1, (rng.next() % 8) as u32, &[]);
                d[..4].copy_from_slice(&(0x8000_0000u32 | (len as u32 - 4)).to_be_bytes());
                d[4..44].copy_from_slice(&body);
            }
            let _ = c.write_all(&d);
        }
        // A record mark claiming ~2 GiB: the connection is closed, nothing is allocated.
        let mut c = TcpStream::connect(to).unwrap();
        c.write_all(&[0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 1]).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(c.read(&mut b).unwrap_or(0), 0, "closed without reply");
    });
    for t in ["-u", "-t"] {
        let out = rpcinfo(&srv, &[t, "127.0.0.1", "100024", "1"]);
        assert!(out.contains("ready and waiting"), "{t}: {out}");
    }
    let after = rss_kib(nsmd.pid());
    eprintln!(
        "nsmd RSS: {before} KiB before, {after} KiB after 20,000 hostile datagrams, 500 hostile streams and a 2 GiB record mark"
    );
    assert!(after < 64 * 1024, "RSS grew to {after} KiB");
    assert!(nsmd.is_running());
}

#[test]
fn tshark_decodes_every_reply() {
    if !require(
        "tshark_decodes_every_reply",
        &["rpcbind", "rpcinfo", "tshark"],
    ) {
        return;
    }
    let lab = Lab::new("tshark").unwrap();
    let srv = lab.isolated_host("wire").unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    let (nsmd, port) = spawn_nsmd(&srv, "nsmd", &["-P", "/var/lib/nfs/st"]);
    nsmd.wait_for_log_line("registered program 100024", T)
        .unwrap();
    let filter = format!("port {port}");
    let cap = srv
        .spawn(
            "tshark",
            &[
                "/usr/bin/tshark",
                "-i",
                "lo",
                "-f",
                &filter,
                "-w",
                "/run/nsmd.pcap",
            ],
        )
        .unwrap();
    cap.wait_for_log_line("Capturing on", T).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for args in [
        ["-u", "127.0.0.1", "100024", "1"],
        ["-t", "127.0.0.1", "100024", "1"],
        ["-u", "127.0.0.1", "100024", "2"],
        ["-t", "127.0.0.1", "100024", "2"],
    ] {
        rpcinfo(&srv, &args);
    }
    in_netns(&srv, || {
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for (i, (p, v, pr, a)) in [
            // NFS v3 NULL: a program tshark knows (so it decodes the reply) that nsmd does
            // not serve, hence PROG_UNAVAIL.
            (100_003, 3, 0, vec![]),
            (SM_PROG, 1, 7, vec![]),
            (SM_PROG, 1, 1, vec![0, 0, 0, 9]),
            (SM_PROG, 1, 2, xdr_string(b"x")),
        ]
        .into_iter()
        .enumerate()
        {
            let m = call(100 + i as u32, p, v, pr, &a);
            udp_exchange(to, &m).unwrap();
            tcp_exchange(to, &m).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    cap.signal(Signal::Int).unwrap();
    cap.wait(T).unwrap();
    let decode = |filter: &str| {
        srv.run_ok(
            &[
                "/usr/bin/tshark",
                "-r",
                "/run/nsmd.pcap",
                "-d",
                &format!("udp.port=={port},rpc"),
                "-d",
                &format!("tcp.port=={port},rpc"),
                "-Y",
                filter,
                "-T",
                "fields",
                "-e",
                "frame.number",
            ],
            T,
        )
        .unwrap()
    };
    let replies = decode("rpc.msgtyp == 1").lines().count();
    let summary = srv
        .run_ok(
            &[
                "/usr/bin/tshark",
                "-r",
                "/run/nsmd.pcap",
                "-d",
                &format!("udp.port=={port},rpc"),
                "-d",
                &format!("tcp.port=={port},rpc"),
            ],
            T,
        )
        .unwrap();
    assert!(
        replies >= 12,
        "tshark decoded only {replies} RPC replies:\n{summary}"
    );
    // The deliberately truncated calls are malformed; nsmd's replies must not be.
    let malformed =
        decode("rpc.msgtyp == 1 && (_ws.malformed || _ws.expert.severity == \"error\")");
    assert!(
        malformed.trim().is_empty(),
        "malformed replies: {malformed}\n{summary}"
    );
    let bad_calls = decode("rpc.msgtyp == 0 && _ws.malformed").lines().count();
    assert!(
        bad_calls >= 2,
        "the truncated calls should be flagged, proving the check works:\n{summary}"
    );
}

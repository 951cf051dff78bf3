//! The daemon around the protocol, black-box: the HA callout, dropping privileges,
//! systemd readiness, SIGHUP, nfs.conf, and going into the background without -F.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{
    Answer, LockdStandIn, NSMD, answer, call, in_netns, mon_args, parse_status, spawn_nsmd,
    udp_exchange, xdr_string,
};
use nsm_testhost::{Host, Lab, Signal, require};

const T: Duration = Duration::from_secs(10);
const COOKIE: [u8; 16] = [7; 16];

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn notify(host: &Host, to: SocketAddr, name: &[u8], state: u32) {
    in_netns(host, || {
        let mut a = xdr_string(name);
        a.extend_from_slice(&state.to_be_bytes());
        let r = udp_exchange(to, &call(state, 100_024, 1, 6, &a)).unwrap();
        assert_eq!(answer(state, &r), Answer::Accepted(0, vec![]));
    });
}

#[test]
fn ha_callout_gets_nfs_utils_events() {
    if !require("ha_callout_gets_nfs_utils_events", &["rpcbind"]) {
        return;
    }
    let lab = Lab::new("callout").unwrap();
    let h = lab.host("srv", &["198.51.100.50/24"]).unwrap();
    let _rpcbind = h.start_rpcbind().unwrap();
    let script = h
        .write_file(
            "/run/callout.sh",
            "#!/bin/sh\necho \"$@\" >> /run/callout.log\n",
        )
        .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (nsmd, port) = spawn_nsmd(
        &h,
        "nsmd",
        &["-P", "/var/lib/nfs/n", "-H", "/run/callout.sh"],
    );
    nsmd.wait_for_log_line("registered program", T).unwrap();
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    in_netns(&h, || {
        let r = udp_exchange(
            local,
            &call(1, 100_024, 1, 2, &mon_args(b"client1", b"srv", COOKIE)),
        )
        .unwrap();
        assert!(matches!(answer(1, &r), Answer::Accepted(0, w) if w[0] == 0));
    });
    notify(&h, local, b"client1", 5);
    in_netns(&h, || {
        let mut a = xdr_string(b"client1");
        a.extend(xdr_string(b"srv"));
        for w in [100_021u32, 3, 16] {
            a.extend_from_slice(&w.to_be_bytes());
        }
        udp_exchange(local, &call(2, 100_024, 1, 3, &a)).unwrap();
    });
    let log = || String::from_utf8(h.read_file("/run/callout.log").unwrap_or_default()).unwrap();
    wait_until("three callout events", || log().lines().count() >= 3);
    assert_eq!(
        log(),
        "add-client client1 srv\nsm-notify client1 127.0.0.1 5\ndel-client client1 srv\n"
    );
}

#[test]
fn drops_to_the_owner_of_sm_and_still_calls_lockd_from_a_privileged_port() {
    if !require(
        "drops_to_the_owner_of_sm_and_still_calls_lockd_from_a_privileged_port",
        &["rpcbind"],
    ) {
        return;
    }
    let lab = Lab::new("privs").unwrap();
    let h = lab.host("srv", &["198.51.100.51/24"]).unwrap();
    let _rpcbind = h.start_rpcbind().unwrap();
    let lockd = LockdStandIn::start(&h, true);
    // Debian's layout: sm/ and sm.bak/ belong to statd, the directory and `state` to root.
    let base = h.nfs_dir().join("dropped");
    let statd = nix::unistd::User::from_name("statd")
        .unwrap()
        .expect("Debian's statd user");
    for d in ["sm", "sm.bak"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
        chown(
            base.join(d),
            Some(statd.uid.as_raw()),
            Some(statd.gid.as_raw()),
        )
        .unwrap();
    }
    let (nsmd, port) = spawn_nsmd(&h, "nsmd", &["-P", "/var/lib/nfs/dropped"]);
    nsmd.wait_for_log_line("registered program", T).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", nsmd.pid())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let uid = statd.uid.as_raw().to_string();
    assert_eq!(field("Uid:"), [uid.as_str(); 4], "{status}");
    assert_eq!(
        field("CapEff:"),
        ["0000000000000400"],
        "only CAP_NET_BIND_SERVICE"
    );
    assert_eq!(field("CapPrm:"), ["0000000000000400"]);
    assert_eq!(field("CapBnd:"), ["0000000000000000"], "empty bounding set");
    assert_eq!(field("Groups:"), Vec::<String>::new());

    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    in_netns(&h, || {
        let r = udp_exchange(
            local,
            &call(1, 100_024, 1, 2, &mon_args(b"client1", b"srv", COOKIE)),
        )
        .unwrap();
        assert!(
            matches!(answer(1, &r), Answer::Accepted(0, w) if w[0] == 0),
            "SM_MON as statd"
        );
    });
    let meta = std::fs::metadata(base.join("sm/client1")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        statd.uid.as_raw()
    );
    notify(&h, local, b"client1", 9);
    let got = lockd.wait_for(1, T);
    assert_eq!(got.len(), 1, "{}", nsmd.log_tail(20));
    assert!(
        got[0].0.port() < 1024,
        "callback from a privileged port: {}",
        got[0].0
    );
    assert_eq!(parse_status(&got[0].3), (b"client1".to_vec(), 9, COOKIE));
}

#[test]
fn systemd_readiness_sighup_and_nfs_conf() {
    if !require(
        "systemd_readiness_sighup_and_nfs_conf",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("sysd").unwrap();
    let h = lab.host("srv", &["198.51.100.52/24"]).unwrap();
    let _rpcbind = h.start_rpcbind().unwrap();
    h.write_file(
        "/run/nfs.conf",
        "[statd]\n  port = 4712\n  state-directory-path = /var/lib/nfs/fromconf\n",
    )
    .unwrap();
    let sock_path = h.run_dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let nsmd = h
        .spawn_env(
            "nsmd",
            &[NSMD, "-F", "-d", "--config", "/run/nfs.conf"],
            &[("NOTIFY_SOCKET", "/run/notify.sock")],
        )
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 from nsmd");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // nfs.conf applied: port and state directory.
    let regs = h.wait_registered(100_024, T).unwrap();
    assert!(regs.iter().all(|r| r.port == 4712), "{regs:?}");
    assert!(h.nfs_dir().join("fromconf/sm").is_dir());
    // SIGHUP: reloads (and warns about what needs a restart) instead of exiting.
    h.write_file(
        "/run/nfs.conf",
        "[statd]\n  port = 4713\n  state-directory-path = /var/lib/nfs/fromconf\n",
    )
    .unwrap();
    nsmd.signal(Signal::Hup).unwrap();
    nsmd.wait_for_log_line("SIGHUP: configuration reloaded", T)
        .unwrap();
    assert!(
        nsmd.log().contains("take effect when nsmd restarts"),
        "{}",
        nsmd.log_tail(10)
    );
    assert_statd_answers(&h);
    assert!(nsmd.is_running());
    nsmd.signal(Signal::Term).unwrap();
    assert!(nsmd.wait(T).unwrap().success());
    let n = sock.recv(&mut buf).expect("STOPPING=1 from nsmd");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

#[test]
fn without_dash_f_it_goes_into_the_background() {
    if !require(
        "without_dash_f_it_goes_into_the_background",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("bg").unwrap();
    let h = lab.host("srv", &["198.51.100.53/24"]).unwrap();
    let _rpcbind = h.start_rpcbind().unwrap();
    // A syslog socket (where /dev/log would be): once in the background, nsmd logs there.
    let syslog_path = h.outside_path("/run/syslog").unwrap();
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    syslog.set_read_timeout(Some(T)).unwrap();
    // The command returns while the daemon keeps serving (the host kills it on drop).
    let out = h
        .command(&[NSMD, "-p", "4714", "-P", "/var/lib/nfs/bg"])
        .env("NSMD_SYSLOG_SOCKET", "/run/syslog")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "nothing on stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.wait_registered(100_024, T).unwrap();
    let out = h
        .run_ok(&["/usr/sbin/rpcinfo", "-t", "127.0.0.1", "100024", "1"], T)
        .unwrap();
    assert!(out.contains("ready and waiting"));
    // Each event one datagram: <daemon.info>nsmd[PID]: message.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let registered = loop {
        let n = syslog
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no 'registered' line in syslog ({e}): {seen:#?}"));
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        if line.contains("registered program 100024") {
            break line;
        }
        seen.push(line);
    };
    assert!(registered.starts_with("<30>nsmd["), "{registered}");
    let pid: u32 = registered["<30>nsmd[".len()..]
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        h.pids().contains(&pid),
        "the PID in the line is the daemon's: {registered}"
    );
}

/// RHEL's layout: the state directory itself belongs to the statd user, as sm/ and sm.bak/
/// do. nsmd (as statd) writes `state` itself, so it is statd's, as with nfs-utils; root's
/// helper (no CAP_DAC_OVERRIDE) could not create a file there. The kernel's root-owned
/// nsm_local_state is still written, through the helper.
#[test]
fn simu_crash_bumps_the_state_in_a_state_directory_owned_by_statd() {
    if !require(
        "simu_crash_bumps_the_state_in_a_state_directory_owned_by_statd",
        &["rpcbind"],
    ) {
        return;
    }
    let lab = Lab::new("rhel").unwrap();
    let h = lab.host("srv", &["198.51.100.53/24"]).unwrap();
    let _rpcbind = h.start_rpcbind().unwrap();
    let base = h.nfs_dir().join("statd");
    let statd = nix::unistd::User::from_name("statd")
        .unwrap()
        .expect("Debian's statd user");
    for d in ["", "sm", "sm.bak"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
        chown(
            base.join(d),
            Some(statd.uid.as_raw()),
            Some(statd.gid.as_raw()),
        )
        .unwrap();
    }
    h.write_file("/run/proc/sys/fs/nfs/nsm_local_state", "0")
        .unwrap();
    let (nsmd, port) = spawn_nsmd(
        &h,
        "nsmd",
        &["-P", "/var/lib/nfs/statd", "--proc-root", "/run/proc"],
    );
    nsmd.wait_for_log_line("registered program", T).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", nsmd.pid())).unwrap();
    let uid = statd.uid.as_raw().to_string();
    assert!(
        status.lines().any(|l| l
            .strip_prefix("Uid:")
            .is_some_and(|v| v.split_whitespace().all(|u| u == uid))),
        "runs as statd: {status}"
    );
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let stat = |xid: u32| {
        in_netns(&h, || {
            let m = call(xid, 100_024, 1, 1, &xdr_string(b"localhost"));
            match answer(xid, &udp_exchange(local, &m).unwrap()) {
                Answer::Accepted(0, w) => w[1] as i32,
                other => panic!("{other:?}"),
            }
        })
    };
    let file_state = || {
        let b = std::fs::read(base.join("state")).unwrap();
        i32::from_ne_bytes(b.try_into().unwrap())
    };
    let kernel =
        || String::from_utf8(h.read_file("/run/proc/sys/fs/nfs/nsm_local_state").unwrap()).unwrap();
    let before = stat(1);
    assert_eq!(before % 2, 1);
    assert_eq!(file_state(), before);
    assert_eq!(kernel(), before.to_string());

    // SM_SIMU_CRASH, from a privileged port on the loopback.
    in_netns(&h, || {
        let sock = (600..1024)
            .find_map(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).ok())
            .expect("a free privileged port");
        sock.set_read_timeout(Some(T)).unwrap();
        sock.send_to(&call(2, 100_024, 1, 5, &[]), local).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(answer(2, &buf[..n]), Answer::Accepted(0, vec![]));
    });
    let after = stat(3);
    assert_eq!(after, before + 2, "{}", nsmd.log_tail(20));
    assert_eq!(file_state(), after);
    assert_eq!(
        kernel(),
        after.to_string(),
        "nsm_local_state, through the helper"
    );
    let meta = std::fs::metadata(base.join("state")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        statd.uid.as_raw(),
        "state belongs to statd, as with nfs-utils"
    );
    assert!(
        !nsmd.log_tail(50).contains("SM_SIMU_CRASH failed"),
        "{}",
        nsmd.log_tail(50)
    );
}

/// Starts an nsmd on `state_dir` that must refuse to start: waits for it to exit 1 and returns
/// its log.
fn refused_nsmd(h: &Host, name: &str, state_dir: &str) -> String {
    let p = h
        .spawn(name, &[NSMD, "-F", "-d", "-L", "-P", state_dir])
        .unwrap();
    let status = p.wait(T).unwrap();
    assert_eq!(status.code(), Some(1), "{}", p.log());
    p.log()
}

/// Asserts that the statd registered with `h`'s rpcbind answers NULL over UDP.
fn assert_statd_answers(h: &Host) {
    let out = h
        .run_ok(&["/usr/sbin/rpcinfo", "-u", "127.0.0.1", "100024", "1"], T)
        .unwrap();
    assert!(out.contains("ready and waiting"), "{out}");
}

#[test]
fn a_second_nsmd_refuses_to_start_and_leaves_the_first_registered() {
    if !require(
        "a_second_nsmd_refuses_to_start_and_leaves_the_first_registered",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("second").unwrap();
    let h = lab.host("srv", &["198.51.100.54/24"]).unwrap();
    let _rpcbind = h.start_rpcbind().unwrap();
    let (first, port) = spawn_nsmd(&h, "nsmd1", &["-P", "/var/lib/nfs/a"]);
    first.wait_for_log_line("registered program", T).unwrap();
    let log = refused_nsmd(&h, "nsmd2", "/var/lib/nfs/b");
    assert!(
        log.contains(&format!(
            "another statd (nsmd, pid {}) is running on port {port}",
            first.pid()
        )) && log.contains("systemctl stop nsmd"),
        "{log}"
    );
    let refused_dir = h.outside_path("/var/lib/nfs/b").unwrap();
    assert!(
        !refused_dir.join("sm").exists() && !refused_dir.join("sm.bak").exists(),
        "a refused nsmd leaves no sm/ or sm.bak/ behind"
    );
    // The first keeps its registration (the second never registered nor unregistered).
    assert!(first.is_running());
    let regs = h.wait_registered(100_024, T).unwrap();
    assert!(regs.iter().all(|r| r.port == port), "{regs:?}");
    assert_statd_answers(&h);
    // A killed daemon's registration is a leftover: the next nsmd replaces it.
    first.signal(Signal::Kill).unwrap();
    first.wait(T).unwrap();
    let (third, port3) = spawn_nsmd(&h, "nsmd3", &["-P", "/var/lib/nfs/a"]);
    third.wait_for_log_line("registered program", T).unwrap();
    assert!(third.log().contains("nothing answers"), "{}", third.log());
    let regs = h.wait_registered(100_024, T).unwrap();
    assert!(regs.iter().all(|r| r.port == port3), "{regs:?}");
}

#[test]
fn nsmd_refuses_to_start_beside_debian_rpc_statd() {
    if !require(
        "nsmd_refuses_to_start_beside_debian_rpc_statd",
        &["rpcbind", "rpcinfo", "rpc.statd"],
    ) {
        return;
    }
    let lab = Lab::new("besidestatd").unwrap();
    let h = lab.host("srv", &["198.51.100.55/24"]).unwrap();
    let _rpcbind = h.start_rpcbind().unwrap();
    let (statd, port) = common::debian_statd(&h, None);
    let log = refused_nsmd(&h, "nsmd", "/var/lib/nfs/n");
    assert!(
        log.contains(&format!(
            "another statd (rpc.statd, pid {}) is running on port {port}",
            statd.pid()
        )) && log.contains("systemctl stop rpc-statd"),
        "{log}"
    );
    assert!(statd.is_running());
    assert_statd_answers(&h);
}

#[test]
fn two_nsmds_on_one_state_directory_are_refused() {
    if !require("two_nsmds_on_one_state_directory_are_refused", &[]) {
        return;
    }
    // No rpcbind: the state directory's lock alone refuses the second.
    let lab = Lab::new("samedir").unwrap();
    let h = lab.host("srv", &["198.51.100.56/24"]).unwrap();
    let (first, _) = spawn_nsmd(&h, "nsmd1", &["-P", "/var/lib/nfs/s"]);
    let log = refused_nsmd(&h, "nsmd2", "/var/lib/nfs/s");
    assert!(
        log.contains(&format!(
            "state directory /var/lib/nfs/s is in use by another nsmd (pid {})",
            first.pid()
        )),
        "{log}"
    );
    assert!(first.is_running());
    // Once the first is gone (even killed), the directory is free again.
    first.signal(Signal::Kill).unwrap();
    first.wait(T).unwrap();
    let (third, _) = spawn_nsmd(&h, "nsmd3", &["-P", "/var/lib/nfs/s"]);
    assert!(third.is_running());
}

#[test]
fn a_bad_instance_file_moves_bumps_and_sends_nothing() {
    if !require("a_bad_instance_file_moves_bumps_and_sends_nothing", &[]) {
        return;
    }
    let lab = Lab::new("badinst").unwrap();
    let h = lab.host("srv", &["198.51.100.57/24"]).unwrap();
    let line = format!(
        "0100007f 000186b5 00000003 00000010 {} 198.51.100.58 srv\n",
        "07".repeat(16)
    );
    h.write_file("/var/lib/nfs/s/sm/198.51.100.58", &line)
        .unwrap();
    h.write_file(
        "/var/lib/nfs/instances/svc1.toml",
        "hostname = \"svc1.example.test\"\nadresses = [\"198.51.100.59\"]\n",
    )
    .unwrap();
    let dir = h.outside_path("/var/lib/nfs/s").unwrap();
    // Without -L: the notification at start would run if nsmd got that far.
    let p = h
        .spawn(
            "nsmd",
            &[
                NSMD,
                "-F",
                "-d",
                "-P",
                "/var/lib/nfs/s",
                "--instances",
                "/var/lib/nfs/instances",
                "--control-socket",
                "/run/nsmd-test/ctl.sock",
            ],
        )
        .unwrap();
    let status = p.wait(T).unwrap();
    assert_eq!(status.code(), Some(1), "{}", p.log());
    assert!(
        p.log().contains("adresses"),
        "the error names the key: {}",
        p.log()
    );
    assert!(
        dir.join("sm/198.51.100.58").exists() && !dir.join("sm.bak/198.51.100.58").exists(),
        "the record stays in sm/"
    );
    assert!(!dir.join("state").exists(), "the state was not bumped");
    assert!(
        !p.log().contains("nsm-notify") && !p.log().contains("notifying"),
        "nothing was notified: {}",
        p.log()
    );
}

#[test]
fn the_control_socket_shows_the_node_and_goes_at_exit() {
    if !require("the_control_socket_shows_the_node_and_goes_at_exit", &[]) {
        return;
    }
    let lab = Lab::new("ctlsock").unwrap();
    let h = lab.host("srv", &["198.51.100.63/24"]).unwrap();
    // No --instances, no --control-socket: the default socket all the same.
    let (p, _) = spawn_nsmd(&h, "nsmd", &["-P", "/var/lib/nfs/s"]);
    let ctl = env!("CARGO_BIN_EXE_nsmctl");
    let out = h.run_ok(&[ctl, "--json", "status"], T).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["instances"][0]["name"], "node", "{out}");
    assert_eq!(v["instances"][0]["state_dir"], "/var/lib/nfs/s", "{out}");
    // What is not a request of this protocol gets an error reply with its kind, and nsmd
    // goes on serving.
    let sock = h.outside_path("/run/nsmd/nsmctl.sock").unwrap();
    let ask = |line: &[u8]| -> serde_json::Value {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(line).unwrap();
        let mut reply = String::new();
        std::io::BufReader::new(s).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
    };
    let hostile: [(&[u8], &str, &str); 7] = [
        (b"garbage\n", "request", "not a control request"),
        // An nsmctl from before the JSON protocol.
        (
            b"takeover svc1\n",
            "version",
            "use the nsmctl installed with this nsmd",
        ),
        (
            b"{\"version\":1,\"request\":\"reboot\"}\n",
            "request",
            "unknown variant",
        ),
        (
            b"{\"version\":2,\"request\":\"status\"}\n",
            "version",
            "restart nsmd",
        ),
        (
            b"{\"version\":1,\"request\":{\"peers\":{\"name\":\"svc9\"}}}\n",
            "no-such-instance",
            "svc9",
        ),
        (b"\xff\xfe\n", "request", "not UTF-8"),
        (&[b'x'; 10_000], "request", "longer than 4096 bytes"),
    ];
    for (line, kind, says) in hostile {
        let v = ask(line);
        assert!(
            v["ok"] == false && v["kind"] == kind && v["error"].as_str().unwrap().contains(says),
            "{:?}: {v}",
            String::from_utf8_lossy(&line[..line.len().min(40)])
        );
    }
    let out = h.run_ok(&[ctl, "--json", "status"], T).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["instances"][0]["name"], "node", "still serving: {out}");
    p.signal(Signal::Term).unwrap();
    p.wait(T).unwrap();
    assert!(
        !h.outside_path("/run/nsmd/nsmctl.sock").unwrap().exists(),
        "the socket is removed at a clean exit"
    );
}

#[test]
fn files_in_the_instances_directory_that_are_not_read_are_named() {
    if !require(
        "files_in_the_instances_directory_that_are_not_read_are_named",
        &[],
    ) {
        return;
    }
    let lab = Lab::new("instnames").unwrap();
    let h = lab.host("srv", &["198.51.100.64/24"]).unwrap();
    h.write_file(
        "/var/lib/nfs/instances/svc1.conf",
        "hostname = \"svc1.example.test\"\n",
    )
    .unwrap();
    let (p, _) = spawn_nsmd(
        &h,
        "nsmd",
        &[
            "-P",
            "/var/lib/nfs/s",
            "--instances",
            "/var/lib/nfs/instances",
        ],
    );
    let log = p.log();
    assert!(
        log.contains("not an instance file (only NAME.toml files are read): ignored")
            && log.contains("/var/lib/nfs/instances/svc1.conf"),
        "{log}"
    );
    assert!(
        log.contains("no instance file (NAME.toml) in /var/lib/nfs/instances"),
        "{log}"
    );
}

/// `nsmctl metrics` is OpenMetrics text that an independent parser (Python's
/// prometheus_client, Debian's python3-prometheus-client) reads, with the numbers of what
/// happened: one SM_MON recorded, one garbage call, one SM_NOTIFY over the rate limit.
#[test]
fn metrics_are_openmetrics_with_what_happened() {
    if !require(
        "metrics_are_openmetrics_with_what_happened",
        &["rpcbind", "python3"],
    ) {
        return;
    }
    let have_parser = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_parser,
        "the OpenMetrics parser is missing: apt-get install python3-prometheus-client"
    );
    let lab = Lab::new("metrics").unwrap();
    let h = lab.host("srv", &["198.51.100.65/24"]).unwrap();
    let c = lab.host("cli", &["198.51.100.66/24"]).unwrap();
    let _rpcbind = h.start_rpcbind().unwrap();
    h.write_file(
        "/var/lib/nfs/instances/svc1.toml",
        "hostname = \"svc1.example.test\"\naddresses = [\"198.51.100.67\"]\n\
         state_dir = \"/var/lib/nfs/svc1\"\n",
    )
    .unwrap();
    let (_p, port) = spawn_nsmd(
        &h,
        "nsmd",
        &[
            "-P",
            "/var/lib/nfs/s",
            "--instances",
            "/var/lib/nfs/instances",
        ],
    );
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    in_netns(&h, || {
        let r = udp_exchange(
            local,
            &call(1, 100_024, 1, 2, &mon_args(b"cli", b"srv", COOKIE)),
        );
        assert!(matches!(answer(1, &r.unwrap()), Answer::Accepted(0, w) if w[0] == 0));
        let r = udp_exchange(local, &call(2, 100_024, 1, 2, &[1, 2, 3, 4])).unwrap();
        assert_eq!(answer(2, &r), Answer::Accepted(4, vec![]), "GARBAGE_ARGS");
    });
    // 25 notifications at once from one address: the burst is 20.
    let remote: SocketAddr = format!("198.51.100.65:{port}").parse().unwrap();
    for i in 0..25 {
        notify(&c, remote, b"nobody", 100 + i);
    }
    let ctl = env!("CARGO_BIN_EXE_nsmctl");
    let text = h.run_ok(&[ctl, "metrics"], T).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let parser = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       labels = ','.join(k + '=' + v for k, v in sorted(s.labels.items()))\n\
        \x20       print(s.name, labels, s.value)\n";
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let parsed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the parser refused it: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "nsmd_records instance=node 1",
        "nsmd_active instance=svc1 0",
        "nsmd_calls_total instance=node,outcome=success,procedure=mon 1",
        "nsmd_calls_total instance=node,outcome=garbage_args,procedure=mon 1",
        "nsmd_notifications_refused_total instance=node,reason=rate_limited 5",
        "nsmd_mon_disk_wait_seconds_count instance=node 1",
        "nsmd_mon_disk_wait_seconds_bucket instance=node,le=5.0 1",
    ] {
        assert!(
            parsed.lines().any(|l| l == want),
            "no {want:?} in\n{parsed}"
        );
    }
}

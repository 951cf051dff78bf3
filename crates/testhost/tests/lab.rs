//! Black-box tests of the harness itself. They need root and the tools below; without them
//! they print SKIPPED (or fail when NSMD_REQUIRE_NETNS=1).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nsm_testhost::{
    BASE_DIR, Error, Host, Lab, Signal, cleanup_stale, prerequisites, require, tool_path,
};

const T: Duration = Duration::from_secs(10);

fn tool(name: &str) -> String {
    tool_path(name).unwrap().display().to_string()
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Polls `cond` for up to 5 s.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Everything a host leaves on the system, to check it is gone after drop.
#[derive(Debug, Clone)]
struct Traces {
    netns_path: PathBuf,
    mnt: PathBuf,
    uts: PathBuf,
    dir: PathBuf,
    pids: Vec<u32>,
}

impl Traces {
    fn of(host: &Host) -> Self {
        Self {
            netns_path: host.netns_path().to_owned(),
            mnt: host.mntns_path().to_owned(),
            uts: host.utsns_path().to_owned(),
            dir: host.dir().to_owned(),
            pids: host.pids(),
        }
    }

    fn assert_present(&self) {
        for p in [&self.netns_path, &self.mnt, &self.uts, &self.dir] {
            assert!(p.exists(), "{} should exist", p.display());
        }
        assert!(!self.pids.is_empty());
        for &pid in &self.pids {
            assert!(alive(pid), "pid {pid} should run");
        }
    }

    fn assert_gone(&self) {
        for p in [&self.netns_path, &self.mnt, &self.uts, &self.dir] {
            assert!(!p.exists(), "{} should be gone", p.display());
        }
        for &pid in &self.pids {
            assert!(eventually(|| !alive(pid)), "pid {pid} still runs");
        }
    }
}

fn switch_has_link(lab_id: &str, link: &str) -> bool {
    std::process::Command::new(tool("ip"))
        .args(["-n", lab_id, "link", "show", link])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn prerequisites_name_missing_tools() {
    let err = prerequisites(&["nsm-testhost-no-such-tool"]).unwrap_err();
    assert!(err.contains("nsm-testhost-no-such-tool"), "{err}");
}

#[test]
fn two_hosts_each_with_private_rpcbind() {
    if !require(
        "two_hosts_each_with_private_rpcbind",
        &["rpcbind", "rpcinfo", "rpc.statd"],
    ) {
        return;
    }
    let lab = Lab::new("private-rpcbind").unwrap();
    let a = lab.host("a", &["198.51.100.10/24"]).unwrap();
    let b = lab.host("b", &["198.51.100.11/24"]).unwrap();
    let _rpcbind_a = a.start_rpcbind().unwrap();
    let _rpcbind_b = b.start_rpcbind().unwrap();

    // Each /run is its own.
    assert!(a.run_dir().join("rpcbind.sock").exists());
    assert!(b.run_dir().join("rpcbind.sock").exists());
    a.write_file("/run/only-in-a", "a").unwrap();
    a.run_ok(&["/bin/cat", "/run/only-in-a"], T).unwrap();
    assert!(
        !b.run(&["/bin/cat", "/run/only-in-a"], T)
            .unwrap()
            .status
            .success()
    );

    // A registration with a's rpcbind shows only there.
    let statd = a
        .spawn("statd", &[&tool("rpc.statd"), "-F", "-L", "-d"])
        .unwrap();
    let regs = a.wait_registered(100_024, T).unwrap();
    assert!(regs.iter().any(|r| r.protocol == "udp"), "{regs:?}");
    assert!(
        b.rpc_programs()
            .unwrap()
            .iter()
            .all(|r| r.program != 100_024)
    );
    assert!(
        b.rpc_programs()
            .unwrap()
            .iter()
            .any(|r| r.program == 100_000)
    );
    // b asks a's rpcbind over the lab network.
    let remote = b
        .run_ok(&[&tool("rpcinfo"), "-p", "198.51.100.10"], T)
        .unwrap();
    assert!(remote.contains("100024"), "{remote}");
    statd
        .wait_for_log_line("Waiting for client connections", T)
        .unwrap();
    // statd wrote its state into a's private /var/lib/nfs.
    assert!(a.nfs_dir().join("state").exists());
    assert!(!b.nfs_dir().join("state").exists());
}

#[test]
fn hosts_reach_each_other_over_ipv4_ipv6_and_names() {
    if !require(
        "hosts_reach_each_other_over_ipv4_ipv6_and_names",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("reach").unwrap();
    let a = lab
        .host("a", &["198.51.100.10/24", "2001:db8::10/64"])
        .unwrap();
    let b = lab
        .host("b", &["198.51.100.11/24", "2001:db8::11/64"])
        .unwrap();
    let _rpcbind_b = b.start_rpcbind().unwrap();
    let rpcinfo = tool("rpcinfo");
    for target in ["198.51.100.11", "2001:db8::11", "b"] {
        let out = a.run_ok(&[&rpcinfo, "-p", target], T).unwrap();
        assert!(out.contains("portmapper"), "{target}: {out}");
    }
    // Explicit transports, both ways of naming the v6 server.
    let out = a
        .run_ok(&[&rpcinfo, "-T", "udp6", "2001:db8::11", "100000", "4"], T)
        .unwrap();
    assert!(out.contains("ready and waiting"), "{out}");
    let out = a
        .run_ok(&[&rpcinfo, "-T", "tcp", "198.51.100.11", "100000", "2"], T)
        .unwrap();
    assert!(out.contains("ready and waiting"), "{out}");
    // a runs no rpcbind: nothing answers on its own loopback.
    assert!(a.rpc_programs().is_err());
    assert_eq!(a.ipv4(), Some("198.51.100.10".parse().unwrap()));
    assert_eq!(a.ipv6(), Some("2001:db8::10".parse().unwrap()));
    assert_eq!(a.iface(), "eth0");
}

#[test]
fn names_resolve_inside_hosts() {
    if !require("names_resolve_inside_hosts", &["getent"]) {
        return;
    }
    let lab = Lab::new("names").unwrap();
    lab.add_name("198.51.100.50", &["early", "early.example"])
        .unwrap();
    let a = lab.host("a", &["198.51.100.10/24"]).unwrap();
    lab.add_name("198.51.100.51", &["late"]).unwrap();
    let c = lab.host("c", &["198.51.100.12/24"]).unwrap();
    let getent = tool("getent");
    for host in [&a, &c] {
        let early = host
            .run_ok(&[&getent, "hosts", "early.example"], T)
            .unwrap();
        assert!(early.starts_with("198.51.100.50"), "{early}");
        let late = host.run_ok(&[&getent, "hosts", "late"], T).unwrap();
        assert!(late.starts_with("198.51.100.51"), "{late}");
        // Hosts' own names are in the hosts file.
        let other = host.run_ok(&[&getent, "hosts", "c"], T).unwrap();
        assert!(other.starts_with("198.51.100.12"), "{other}");
        // Unknown names fail at once (no DNS).
        let started = Instant::now();
        assert!(
            !host
                .run(&[&getent, "hosts", "nowhere.example"], T)
                .unwrap()
                .status
                .success()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // The hostname is the host's name.
        let hostname = host
            .run_ok(&["/bin/cat", "/proc/sys/kernel/hostname"], T)
            .unwrap();
        assert_eq!(hostname.trim(), host.name());
    }
    assert!(lab.add_name("not-an-address", &["x"]).is_err());
    assert!(lab.host("a", &[]).is_err(), "duplicate host name");
    assert!(lab.host("Bad_Name", &[]).is_err());
}

#[test]
fn drop_removes_namespaces_files_and_processes() {
    if !require(
        "drop_removes_namespaces_files_and_processes",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("drop").unwrap();
    let lab_id = lab.id().to_owned();
    let lab_dir = Path::new(BASE_DIR).join(&lab_id);
    let a = lab
        .host("a", &["198.51.100.10/24", "2001:db8::10/64"])
        .unwrap();
    let b = lab.host("b", &["198.51.100.11/24"]).unwrap();
    let rpcbind = a.start_rpcbind().unwrap();
    let _rpcbind_b = b.start_rpcbind().unwrap();
    // A daemon that escapes its parent: only the namespace sweep can find it.
    let orphan: u32 = a
        .sh("/bin/sleep 1000 >/dev/null 2>&1 & echo $!", T)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let traces = Traces::of(&a);
    traces.assert_present();
    assert!(traces.pids.contains(&rpcbind.pid()) && traces.pids.contains(&orphan));
    assert!(switch_has_link(&lab_id, "p0"));

    // a goes first while b (created later, whose mount namespace copied a's /run/netns entry
    // before the harness dropped it) lives on: a's network namespace must really die, which
    // takes its veth end in the switch with it.
    drop(rpcbind);
    drop(a);
    traces.assert_gone();
    assert!(
        eventually(|| !switch_has_link(&lab_id, "p0")),
        "a's netns is still alive"
    );
    assert!(b.rpc_programs().is_ok(), "b is unaffected");

    let traces_b = Traces::of(&b);
    drop(_rpcbind_b);
    drop(b);
    traces_b.assert_gone();
    assert!(lab_dir.exists(), "the lab lives while the Lab does");
    drop(lab);
    assert!(!lab_dir.exists());
    assert!(!Path::new("/run/netns").join(&lab_id).exists());
}

#[test]
fn hosts_outlive_lab_handle_and_procs_outlive_host_handle() {
    if !require(
        "hosts_outlive_lab_handle_and_procs_outlive_host_handle",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("order").unwrap();
    let lab_id = lab.id().to_owned();
    let a = lab.host("a", &["198.51.100.10/24"]).unwrap();
    drop(lab);
    assert!(Path::new("/run/netns").join(&lab_id).exists());
    let rpcbind = a.start_rpcbind().unwrap();
    let traces = Traces::of(&a);
    drop(a);
    assert!(rpcbind.is_running());
    traces.assert_present();
    drop(rpcbind);
    traces.assert_gone();
    assert!(!Path::new("/run/netns").join(&lab_id).exists());
    assert!(!Path::new(BASE_DIR).join(&lab_id).exists());
}

#[test]
fn panic_inside_a_test_still_cleans_up() {
    if !require(
        "panic_inside_a_test_still_cleans_up",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let seen: Mutex<Option<(String, Traces)>> = Mutex::new(None);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::new("panic").unwrap();
        let a = lab.host("a", &["198.51.100.10/24"]).unwrap();
        let _rpcbind = a.start_rpcbind().unwrap();
        let traces = Traces::of(&a);
        traces.assert_present();
        *seen.lock().unwrap() = Some((lab.id().to_owned(), traces));
        panic!("deliberate panic to test cleanup (expected in this test's output)");
    }));
    assert!(result.is_err());
    let (lab_id, traces) = seen.lock().unwrap().take().unwrap();
    traces.assert_gone();
    assert!(!Path::new("/run/netns").join(&lab_id).exists());
    assert!(!Path::new(BASE_DIR).join(&lab_id).exists());
}

#[test]
fn isolated_hosts_each_run_rpcbind_on_loopback() {
    if !require(
        "isolated_hosts_each_run_rpcbind_on_loopback",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("isolated").unwrap();
    let x = lab.isolated_host("x").unwrap();
    let y = lab.isolated_host("y").unwrap();
    let _rx = x.start_rpcbind().unwrap();
    let _ry = y.start_rpcbind().unwrap();
    let links = x.run_ok(&[&tool("ip"), "-o", "link", "show"], T).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains(": lo:"), "{links}");
    assert_eq!(x.iface(), "lo");
    assert!(x.addrs().is_empty());
    // A loopback service address works on an isolated host.
    x.add_addr("127.0.0.42/8").unwrap();
    x.run_ok(&[&tool("rpcinfo"), "-p", "127.0.0.42"], T)
        .unwrap();
    assert!(x.rpc_programs().is_ok() && y.rpc_programs().is_ok());
}

#[test]
fn service_address_moves_between_hosts() {
    if !require(
        "service_address_moves_between_hosts",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("move").unwrap();
    lab.add_name("198.51.100.100", &["svc"]).unwrap();
    let client = lab.host("client", &["198.51.100.10/24"]).unwrap();
    let n1 = lab.host("n1", &["198.51.100.11/24"]).unwrap();
    let n2 = lab.host("n2", &["198.51.100.12/24"]).unwrap();
    let _r1 = n1.start_rpcbind().unwrap();
    let _r2 = n2.start_rpcbind().unwrap();
    let rpcinfo = tool("rpcinfo");
    let owners_of_svc = || {
        // rpcbind's answer does not say which host it runs on: ask which host has the address.
        [&n1, &n2]
            .iter()
            .filter(|h| {
                h.run_ok(&[&tool("ip"), "-o", "addr", "show"], T)
                    .unwrap()
                    .contains("198.51.100.100/")
            })
            .map(|h| h.name().to_owned())
            .collect::<Vec<_>>()
    };
    n1.add_addr("198.51.100.100/24").unwrap();
    client.run_ok(&[&rpcinfo, "-p", "svc"], T).unwrap();
    assert_eq!(owners_of_svc(), ["n1"]);

    n1.del_addr("198.51.100.100/24").unwrap();
    n2.add_addr("198.51.100.100/24").unwrap();
    client.flush_neigh().unwrap();
    client.run_ok(&[&rpcinfo, "-p", "svc"], T).unwrap();
    assert_eq!(owners_of_svc(), ["n2"]);
    assert!(n1.add_addr("not/an/addr").is_err());
}

#[test]
fn files_and_paths_of_a_host() {
    if !require("files_and_paths_of_a_host", &[]) {
        return;
    }
    let lab = Lab::new("files").unwrap();
    let a = lab.isolated_host("a").unwrap();
    let out = a.write_file("/run/nsmd/conf.d/x.conf", "hello\n").unwrap();
    assert_eq!(out, a.run_dir().join("nsmd/conf.d/x.conf"));
    assert_eq!(
        a.run_ok(&["/bin/cat", "/run/nsmd/conf.d/x.conf"], T)
            .unwrap(),
        "hello\n"
    );
    a.sh("echo 1 > /var/lib/nfs/sm/peer", T).unwrap();
    assert_eq!(a.read_file("/var/lib/nfs/sm/peer").unwrap(), b"1\n");
    assert!(a.nfs_dir().join("sm.bak").is_dir());
    assert!(a.outside_path("/etc/passwd").is_err());
    assert!(a.outside_path("/run/../etc/passwd").is_err());
    assert!(a.outside_path("run/x").is_err());
    // /etc/hosts and nsswitch.conf are the lab's.
    let nss = a.run_ok(&["/bin/cat", "/etc/nsswitch.conf"], T).unwrap();
    assert!(
        nss.lines()
            .any(|l| l.split_whitespace().eq(["hosts:", "files"])),
        "{nss}"
    );
    assert_eq!(
        a.run_ok(&["/bin/cat", "/etc/hosts"], T).unwrap(),
        fs::read_to_string(lab.hosts_file()).unwrap()
    );
    // Commands start in /.
    assert_eq!(a.run_ok(&["/bin/pwd"], T).unwrap().trim(), "/");
}

#[test]
fn proc_logs_signals_and_timeouts() {
    if !require("proc_logs_signals_and_timeouts", &[]) {
        return;
    }
    let lab = Lab::new("proc").unwrap();
    let a = lab.isolated_host("a").unwrap();
    let script = "trap 'echo got-hup' HUP; trap 'echo got-term; exit 7' TERM; \
                  echo to-stderr >&2; echo ready; while :; do /bin/sleep 0.05; done";
    // A shell cannot trap a signal that was ignored when it started (POSIX), and the test
    // may inherit SIGHUP ignored (e.g. under nohup): restore the default first.
    let p = a
        .spawn(
            "loop",
            &[
                "/usr/bin/env",
                "--default-signal=HUP,TERM",
                "/bin/sh",
                "-c",
                script,
            ],
        )
        .unwrap();
    assert_eq!(p.wait_for_log_line("ready", T).unwrap(), "ready");
    p.wait_for_log_line("to-stderr", T).unwrap();
    assert!(p.is_running());
    assert!(a.pids().contains(&p.pid()));
    let mark = p.log_mark();
    p.signal(Signal::Hup).unwrap();
    p.wait_for_log_line_after(mark, "got-hup", T).unwrap();
    assert!(matches!(
        p.wait_for_log_line_after(p.log_mark(), "got-hup", Duration::from_millis(100)),
        Err(Error::Timeout { .. })
    ));
    p.signal(Signal::Term).unwrap();
    let status = p.wait(T).unwrap();
    assert_eq!(status.code(), Some(7));
    assert!(!p.is_running());
    assert!(p.log().contains("got-term"));
    p.signal(Signal::Term).unwrap(); // harmless once it exited
    assert!(matches!(
        p.wait_for_log_line("never", T),
        Err(Error::Exited { .. })
    ));

    // Two procs with the same name get distinct logs.
    let q1 = a.spawn("same", &["/bin/echo", "one"]).unwrap();
    let q2 = a.spawn("same", &["/bin/echo", "two"]).unwrap();
    q1.wait(T).unwrap();
    q2.wait(T).unwrap();
    assert_ne!(q1.log_path(), q2.log_path());
    assert_eq!(
        (q1.log(), q2.log()),
        ("one\n".to_owned(), "two\n".to_owned())
    );

    // stop() escalates to SIGKILL.
    let stubborn = a
        .spawn(
            "stubborn",
            &[
                "/bin/sh",
                "-c",
                "trap '' TERM; echo ready; while :; do /bin/sleep 0.05; done",
            ],
        )
        .unwrap();
    stubborn.wait_for_log_line("ready", T).unwrap();
    let status = stubborn.stop(Duration::from_millis(200)).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    // run() kills commands that overrun their timeout.
    let started = Instant::now();
    let err = a
        .run(&["/bin/sleep", "30"], Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let out = a
        .run(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], T)
        .unwrap();
    assert_eq!(
        (out.status.code(), &out.stdout[..], &out.stderr[..]),
        (Some(3), &b"out\n"[..], &b"err\n"[..])
    );
    assert!(matches!(
        a.run_ok(&["/bin/false"], T),
        Err(Error::Command { .. })
    ));
}

/// Set in the child process of `leftovers_of_a_killed_process_are_reaped`.
const CHILD_ENV: &str = "NSM_TESTHOST_TEST_CHILD";

/// Not a test of its own: the child process of `leftovers_of_a_killed_process_are_reaped`.
#[test]
#[ignore = "helper: runs only as the child of leftovers_of_a_killed_process_are_reaped"]
fn child_that_gets_killed() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let lab = Lab::new("killed").unwrap();
    let a = lab.host("a", &["198.51.100.10/24"]).unwrap();
    let rpcbind = a.start_rpcbind().unwrap();
    println!("READY {} {}", lab.id(), rpcbind.pid());
    thread::sleep(Duration::from_secs(60));
}

#[test]
fn leftovers_of_a_killed_process_are_reaped() {
    if !require(
        "leftovers_of_a_killed_process_are_reaped",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_that_gets_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .map(Result::unwrap)
        .find(|l| l.starts_with("READY "))
        .expect("child did not get ready");
    let mut words = ready.split_whitespace().skip(1);
    let lab_id = words.next().unwrap().to_owned();
    let rpcbind: u32 = words.next().unwrap().parse().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let lab_dir = Path::new(BASE_DIR).join(&lab_id);
    let host_netns = Path::new("/run/netns").join(format!("{lab_id}-a"));
    assert!(lab_dir.join("a.mnt").exists() && host_netns.exists() && alive(rpcbind));
    cleanup_stale().unwrap();
    assert!(!lab_dir.exists());
    assert!(!host_netns.exists());
    assert!(!Path::new("/run/netns").join(&lab_id).exists());
    assert!(eventually(|| !alive(rpcbind)));
}

//! Service instances, black-box failover drills: nsmd on nodes A and B (test hosts) shares
//! a service instance's state directory (a directory both see, as shared storage); the
//! service address moves between them; clients run Debian's rpc.statd with a lockd
//! stand-in and must hear of every takeover with a larger state. Network namespaces, root only.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{
    Answer, LockdStandIn, answer, call, in_netns, parse_status, spawn_nsmd, udp_exchange,
    xdr_string,
};
use nsm_testhost::{Host, Lab, Proc, Signal, require};

const NSMCTL: &str = env!("CARGO_BIN_EXE_nsmctl");
const T: Duration = Duration::from_secs(15);
const COOKIE: [u8; 16] = [0xc0, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

/// A directory outside `/run` and `/var/lib/nfs`: every test host sees the same one.
fn shared_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn instance_file(dir: &Path, name: &str, host: &str, addr: &str, state_dir: &Path, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::create_dir_all(state_dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "hostname = \"{host}\"\naddresses = [\"{addr}\"]\nstate_dir = \"{}\"\n{extra}\n\
             [notify]\nretry_seconds = 30\n\
             [readiness]\nrpcbind = [100021]\ntimeout_seconds = 10\n\
             [release]\nexports = [\"/export/{name}\"]\n",
            state_dir.display()
        ),
    )
    .unwrap();
}

/// A server node: rpcbind, a lockd stand-in (so 100021 is registered: the readiness gate),
/// the kernel files nsmd writes (under /run/proc), nsmd with `--instances`.
struct Node {
    host: Host,
    nsmd: Option<Proc>,
    port: u16,
    lockd: LockdStandIn,
    _rpcbind: Proc,
}

impl Node {
    fn new(lab: &Lab, name: &str, addr: &str) -> Self {
        let host = lab.host(name, &[addr]).unwrap();
        let rpcbind = host.start_rpcbind().unwrap();
        let lockd = LockdStandIn::start(&host, true);
        for f in [
            "sys/fs/nfs/nsm_local_state",
            "fs/nfsd/unlock_ip",
            "fs/nfsd/unlock_filesystem",
        ] {
            host.write_file(&format!("/run/proc/{f}"), "").unwrap();
        }
        // The HA callout (-H): logs its arguments, one event per line.
        let script = host
            .write_file(
                "/run/callout.sh",
                "#!/bin/sh\necho \"$@\" >> /run/callout.log\n",
            )
            .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            host,
            nsmd: None,
            port: 0,
            lockd,
            _rpcbind: rpcbind,
        }
    }

    fn start(&mut self, instances: &Path) {
        let (p, port) = spawn_nsmd(
            &self.host,
            "nsmd",
            &[
                "-P",
                "/var/lib/nfs/node",
                "--proc-root",
                "/run/proc",
                "-H",
                "/run/callout.sh",
                "--instances",
                instances.to_str().unwrap(),
            ],
        );
        self.nsmd = Some(p);
        self.port = port;
    }

    fn nsmd(&self) -> &Proc {
        self.nsmd.as_ref().unwrap()
    }

    fn kill9(&mut self) {
        let p = self.nsmd.take().unwrap();
        p.signal(Signal::Kill).unwrap();
        p.wait(T).unwrap();
    }

    /// `nsmctl ARGS`: (success, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let mut argv = vec![NSMCTL];
        argv.extend_from_slice(args);
        let out = self.host.run(&argv, Duration::from_secs(60)).unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn takeover(&self, name: &str) -> i32 {
        let (ok, out, err) = self.ctl(&["--json", "takeover", name]);
        assert!(
            ok,
            "takeover {name}: {out}{err}\n{}",
            self.nsmd().log_tail(30)
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["state"].as_i64().unwrap() as i32
    }

    /// lockd's SM_MON of `client` (mon_name), on loopback.
    fn mon(&self, client: &str) {
        common::sm_mon(&self.host, self.port, client, "server", COOKIE);
    }
}

/// A client: rpcbind, a lockd stand-in, Debian's rpc.statd monitoring `service`.
struct Client {
    host: Host,
    lockd: LockdStandIn,
    statd: Proc,
    _rpcbind: Proc,
}

impl Client {
    fn new(lab: &Lab, name: &str, addr: &str, service: &str) -> Self {
        Self::on(lab.host(name, &[addr]).unwrap(), name, service)
    }

    /// A client on a host made earlier (that was down until now).
    fn on(host: Host, name: &str, service: &str) -> Self {
        let rpcbind = host.start_rpcbind().unwrap();
        let lockd = LockdStandIn::start(&host, true);
        let (statd, port) = common::debian_statd(&host, None);
        common::sm_mon(&host, port, service, name, COOKIE);
        Self {
            host,
            lockd,
            statd,
            _rpcbind: rpcbind,
        }
    }

    /// Waits for the `n`th callback; returns (mon_name, state) of each.
    fn callbacks(&self, n: usize) -> Vec<(String, i32)> {
        let got = self.lockd.wait_for(n, Duration::from_secs(30));
        common::callback_states(&got, COOKIE)
    }

    /// The non-loopback senders of the SM_NOTIFYs rpc.statd received.
    fn senders(&self) -> Vec<String> {
        common::notify_senders(&self.statd.log())
    }
}

fn read_state(dir: &Path) -> i32 {
    i32::from_ne_bytes(
        std::fs::read(dir.join("state")).unwrap()[..4]
            .try_into()
            .unwrap(),
    )
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

fn move_addr(from: &Node, to: &Node, cidr: &str, clients: &[&Client]) {
    from.host.del_addr(cidr).unwrap();
    to.host.add_addr(cidr).unwrap();
    for c in clients {
        c.host.flush_neigh().unwrap();
    }
}

const SVC: &str = "nfs-svc.example.test";
const SVC_ADDR: &str = "198.51.100.100";

/// Active/passive A→B→A→B: the client's statd calls its lockd with the service name and a
/// state larger each time; an SM_MON acknowledged on A just before `kill -9` is notified
/// after the takeover on B; release writes unlock_ip and unlock_filesystem before dropping
/// ownership; A restarted with a stale view neither writes to the directory nor notifies.
#[test]
fn active_passive_failover_drill() {
    if !require(
        "active_passive_failover_drill",
        &["rpcbind", "rpcinfo", "rpc.statd"],
    ) {
        return;
    }
    let shared = shared_dir();
    let state_dir = shared.path().join("svc");
    let inst = shared.path().join("instances");
    instance_file(&inst, "svc", SVC, SVC_ADDR, &state_dir, "");
    let lab = Lab::new("instap").unwrap();
    lab.add_name(SVC_ADDR, &[SVC]).unwrap();
    let mut a = Node::new(&lab, "a", "198.51.100.60/24");
    let mut b = Node::new(&lab, "b", "198.51.100.61/24");
    let cli = Client::new(&lab, "cli", "198.51.100.70/24", SVC);
    let cidr = format!("{SVC_ADDR}/24");

    // A takes the service: no one to notify yet.
    a.start(&inst);
    b.start(&inst);
    a.host.add_addr(&cidr).unwrap();
    let s1 = a.takeover("svc");
    assert_eq!(s1 % 2, 1);
    let (ok, out, _) = a.ctl(&["status"]);
    assert!(ok && out.contains("svc") && out.contains("yes"), "{out}");
    // B cannot take it while A owns it.
    let (ok, _, err) = b.ctl(&["takeover", "svc"]);
    assert!(!ok && err.contains("locked"), "{err}");

    // lockd on A monitors the client (the fallback path: into every active instance), and
    // A dies right after the reply.
    a.mon("cli");
    assert_eq!(
        files(&state_dir.join("sm")),
        ["cli"],
        "recorded in the service's directory"
    );
    a.kill9();

    // B takes over: the client hears the service's new state.
    move_addr(&a, &b, &cidr, &[&cli]);
    let s2 = b.takeover("svc");
    assert!(s2 > s1, "{s2} > {s1}");
    let got = cli.callbacks(1);
    assert_eq!(got, [(SVC.to_owned(), s2)], "{}", cli.statd.log_tail(20));
    b.nsmd()
        .wait_for_log_line("cli removed from sm.bak", T)
        .unwrap();

    // Release on B: kernel lock release before ownership is dropped.
    b.mon("cli");
    let (ok, out, err) = b.ctl(&["release", "svc"]);
    assert!(ok, "{out}{err}");
    // One newline-terminated word each: the kernel refuses anything else.
    assert_eq!(
        b.host.read_file("/run/proc/fs/nfsd/unlock_ip").unwrap(),
        format!("{SVC_ADDR}\n").as_bytes()
    );
    assert_eq!(
        b.host
            .read_file("/run/proc/fs/nfsd/unlock_filesystem")
            .unwrap(),
        b"/export/svc\n"
    );
    let log = b.nsmd().log();
    let unlock = log.find("written to /run/proc/fs/nfsd/unlock_ip").unwrap();
    let released = log.rfind("released").unwrap();
    assert!(unlock < released, "unlock_ip before the release: {log}");

    // B→A, then A→B: strictly larger each time.
    a.start(&inst);
    move_addr(&b, &a, &cidr, &[&cli]);
    let s3 = a.takeover("svc");
    assert!(s3 > s2);
    assert_eq!(cli.callbacks(2)[1], (SVC.to_owned(), s3));
    a.nsmd()
        .wait_for_log_line("cli removed from sm.bak", T)
        .unwrap();
    a.mon("cli");
    a.kill9();
    move_addr(&a, &b, &cidr, &[&cli]);
    let s4 = b.takeover("svc");
    assert!(s4 > s3);
    assert_eq!(cli.callbacks(3)[2], (SVC.to_owned(), s4));
    assert!(
        cli.senders().iter().all(|s| s == SVC_ADDR),
        "every SM_NOTIFY came from the service address: {:?}",
        cli.senders()
    );

    // Fencing: A restarts believing it should own the service (takeover at start).
    let stale = shared.path().join("instances-a");
    instance_file(
        &stale,
        "svc",
        SVC,
        SVC_ADDR,
        &state_dir,
        "takeover_at_start = true",
    );
    b.nsmd()
        .wait_for_log_line("cli removed from sm.bak", T)
        .unwrap();
    b.mon("cli");
    let before = (
        read_state(&state_dir),
        std::fs::read(state_dir.join(".nsmd-owner")).unwrap(),
        files(&state_dir.join("sm")),
        files(&state_dir.join("sm.bak")),
    );
    a.start(&stale);
    a.nsmd()
        .wait_for_log_line("not taken over at start", T)
        .unwrap();
    let (ok, _, _) = a.ctl(&["takeover", "svc"]);
    assert!(!ok, "A cannot take over while B owns the service");
    std::thread::sleep(Duration::from_secs(2));
    let after = (
        read_state(&state_dir),
        std::fs::read(state_dir.join(".nsmd-owner")).unwrap(),
        files(&state_dir.join("sm")),
        files(&state_dir.join("sm.bak")),
    );
    assert_eq!(before, after, "A wrote nothing to the service's directory");
    assert_eq!(
        cli.lockd.wait_for(4, Duration::from_secs(1)).len(),
        3,
        "and notified no one"
    );
}

const SVC1: &str = "nfs-svc1.example.test";
const SVC1_ADDR: &str = "198.51.100.101";
const SVC2: &str = "nfs-svc2.example.test";
const SVC2_ADDR: &str = "198.51.100.102";

/// Active/active: svc1 and svc2 on A; svc2 moves to B: only svc2's state changes, only
/// svc2's client is notified, from svc2's address.
#[test]
fn active_active_one_service_moves() {
    if !require(
        "active_active_one_service_moves",
        &["rpcbind", "rpcinfo", "rpc.statd"],
    ) {
        return;
    }
    let shared = shared_dir();
    let inst = shared.path().join("instances");
    let (d1, d2) = (shared.path().join("svc1"), shared.path().join("svc2"));
    instance_file(&inst, "svc1", SVC1, SVC1_ADDR, &d1, "");
    instance_file(&inst, "svc2", SVC2, SVC2_ADDR, &d2, "");
    let lab = Lab::new("instaa").unwrap();
    lab.add_name(SVC1_ADDR, &[SVC1]).unwrap();
    lab.add_name(SVC2_ADDR, &[SVC2]).unwrap();
    let mut a = Node::new(&lab, "a", "198.51.100.60/24");
    let mut b = Node::new(&lab, "b", "198.51.100.61/24");
    let c1 = Client::new(&lab, "cli1", "198.51.100.71/24", SVC1);
    let c2 = Client::new(&lab, "cli2", "198.51.100.72/24", SVC2);
    let (cidr1, cidr2) = (format!("{SVC1_ADDR}/24"), format!("{SVC2_ADDR}/24"));
    a.start(&inst);
    b.start(&inst);
    a.host.add_addr(&cidr1).unwrap();
    a.host.add_addr(&cidr2).unwrap();

    // A peer monitored before any service instance is active: the node instance's only.
    a.mon("early");

    // svc1 first, its client monitored; then svc2 and its client (recorded in both
    // instances: lockd's SM_MON does not say which address the client used).
    let s1 = a.takeover("svc1");
    a.mon("cli1");
    let s2 = a.takeover("svc2");
    a.mon("cli2");
    assert_eq!(files(&d1.join("sm")), ["cli1", "cli2"]);
    assert_eq!(files(&d2.join("sm")), ["cli2"]);

    // Exact attribution: the kernel shows cli1's TCP connection to svc1's NFS port (a
    // stand-in /proc/net/tcp under --proc-root), so lockd's SM_MON of cli1 by address goes
    // to svc1 only.
    let hex = |ip: &str| {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    };
    a.host
        .write_file(
            "/run/proc/net/tcp",
            format!(
                "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                 0: {}:0801 {}:03FF 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0\n",
                hex(SVC1_ADDR),
                hex("198.51.100.71")
            ),
        )
        .unwrap();
    a.mon("198.51.100.71");
    assert_eq!(files(&d1.join("sm")), ["198.51.100.71", "cli1", "cli2"]);
    assert_eq!(files(&d2.join("sm")), ["cli2"], "not recorded for svc2");
    let (ok, out, _) = a.ctl(&["peers", "svc2"]);
    assert!(ok && out.contains("cli2") && !out.contains("cli1"), "{out}");
    // The HA callout heard of each record: the node instance's with nfs-utils' two
    // arguments, a service instance's with its service address as a third.
    let want = [
        "add-client early server".to_owned(),
        "add-client cli1 server".to_owned(),
        format!("add-client cli1 server {SVC1_ADDR}"),
        format!("add-client cli2 server {SVC1_ADDR}"),
        format!("add-client cli2 server {SVC2_ADDR}"),
        format!("add-client 198.51.100.71 server {SVC1_ADDR}"),
    ];
    let deadline = std::time::Instant::now() + T;
    let callouts = loop {
        let log =
            String::from_utf8(a.host.read_file("/run/callout.log").unwrap_or_default()).unwrap();
        if want.iter().all(|w| log.lines().any(|l| l == w)) || std::time::Instant::now() > deadline
        {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for w in &want {
        assert!(callouts.lines().any(|l| l == w), "{w:?} in {callouts}");
    }

    // An SM_NOTIFY (from a host nobody monitors) sent to svc1's address goes to svc1 only,
    // which does not monitor "early"; the same sent to the node's address reaches the node
    // instance.
    let notify = |to: &str, xid: u32| {
        let to: SocketAddr = format!("{to}:{}", a.port).parse().unwrap();
        in_netns(&b.host, || {
            let mut args = xdr_string(b"early");
            args.extend_from_slice(&5u32.to_be_bytes());
            let m = call(xid, 100_024, 1, 6, &args);
            answer(xid, &udp_exchange(to, &m).expect("SM_NOTIFY answered"))
        })
    };
    assert_eq!(notify(SVC1_ADDR, 61), Answer::Accepted(0, vec![]));
    assert!(
        a.lockd.wait_for(1, Duration::from_secs(1)).is_empty(),
        "svc1 does not monitor it"
    );
    assert_eq!(notify("198.51.100.60", 62), Answer::Accepted(0, vec![]));
    let got = a.lockd.wait_for(1, T);
    assert_eq!(got.len(), 1);
    assert_eq!(parse_status(&got[0].3).0, b"early");

    // svc2 moves to B.
    let (ok, out, err) = a.ctl(&["release", "svc2"]);
    assert!(ok, "{out}{err}");
    move_addr(&a, &b, &cidr2, &[&c1, &c2]);
    let s2b = b.takeover("svc2");
    assert!(s2b > s2);
    assert_eq!(
        c2.callbacks(1),
        [(SVC2.to_owned(), s2b)],
        "{}",
        c2.statd.log_tail(20)
    );
    assert!(
        c2.senders().iter().all(|s| s == SVC2_ADDR),
        "{:?}",
        c2.senders()
    );
    assert!(!c2.senders().is_empty());
    assert_eq!(read_state(&d1), s1, "svc1's state did not change");
    assert!(
        c1.lockd.wait_for(1, Duration::from_secs(2)).is_empty(),
        "svc1's client not notified"
    );

    // svc1 stays served on A; svc2's address is silent on A and answered on B.
    let (ok, out, _) = a.ctl(&["--json", "status"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let by = |n: &str| {
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by("svc1")["active"], true);
    assert_eq!(by("svc2")["active"], false);
    assert_eq!(by("svc1")["state"], s1);

    // Fencing while running: another node took svc1 over behind A's back (shared storage
    // whose locks A cannot see: the epoch moved on). A neither records nor notifies for it.
    let owner = std::fs::read_to_string(d1.join(".nsmd-owner")).unwrap();
    assert!(owner.starts_with("epoch 1 "), "{owner}");
    std::fs::write(d1.join(".nsmd-owner"), "epoch 99 owner elsewhere pid 1\n").unwrap();
    a.mon("late");
    assert!(
        !files(&d1.join("sm")).contains(&"late".to_owned()),
        "fenced: not written"
    );
    let (ok, _, err) = a.ctl(&["notify", "svc1"]);
    assert!(ok, "{err}");
    a.nsmd()
        .wait_for_log_line("notification: fenced", T)
        .unwrap();
    // Within a second or two, A notices by itself and stops answering on svc1's address
    // (its node address still answers); status says so; release still works.
    a.nsmd()
        .wait_for_log_line("no longer answering on", T)
        .unwrap();
    let null = |to: &str, xid: u32| {
        let to: SocketAddr = format!("{to}:{}", a.port).parse().unwrap();
        in_netns(&b.host, || {
            udp_exchange(to, &call(xid, 100_024, 1, 0, &[])).is_some()
        })
    };
    assert!(!null(SVC1_ADDR, 70), "a fenced service address is silent");
    assert!(null("198.51.100.60", 71), "the node instance still answers");
    let (ok, out, _) = a.ctl(&["--json", "status"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let svc1 = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "svc1")
        .unwrap()
        .clone();
    assert_eq!(svc1["fenced"], true, "{svc1}");
    let (ok, out, err) = a.ctl(&["release", "svc1"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(d1.join(".nsmd-owner")).unwrap(),
        "epoch 99 owner elsewhere pid 1\n",
        "releasing a fenced instance leaves the new owner's file alone"
    );
    a.kill9();
}

/// `/proc/PID/status` fields of a process: `key` → its words.
fn proc_status(pid: u32, key: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Debian's layout: the directory (and so `state` and `.nsmd-owner`) root's, `sm/` and
/// `sm.bak/` the statd user's, as the README tells an operator to prepare a service's
/// state directory.
fn debian_layout(dir: &Path, statd: &nix::unistd::User) {
    std::fs::create_dir_all(dir).unwrap();
    for d in ["sm", "sm.bak"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        std::os::unix::fs::chown(
            dir.join(d),
            Some(statd.uid.as_raw()),
            Some(statd.gid.as_raw()),
        )
        .unwrap();
    }
}

/// nsmd drops root to the owner of the node's `sm/` (Debian's `statd`, CAP_NET_BIND_SERVICE
/// only) and still runs a service instance whose state directory has Debian's layout:
/// takeover (the root helper bumps the root-owned `state` and opens the root-owned
/// ownership file), SM_MON recorded as statd, SM_NOTIFY from the service address on a
/// privileged port heard by the client's rpc.statd, release writing the root-owned
/// `unlock_ip`. A directory prepared wrongly is refused with a message that says what to do.
#[test]
fn service_instance_with_dropped_privileges() {
    if !require(
        "service_instance_with_dropped_privileges",
        &["rpcbind", "rpcinfo", "rpc.statd"],
    ) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let statd = nix::unistd::User::from_name("statd")
        .unwrap()
        .expect("Debian's statd user (nfs-common)");
    let shared = shared_dir();
    // statd must reach the directories (a temporary directory is 0700).
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state_dir = shared.path().join("svc");
    let bad_dir = shared.path().join("bad");
    let inst = shared.path().join("instances");
    instance_file(&inst, "svc", SVC, SVC_ADDR, &state_dir, "");
    debian_layout(&state_dir, &statd);
    // The other layout that works: the whole directory statd's (nsmd writes `state` and the
    // ownership file itself; root never writes there).
    let own_dir = shared.path().join("own");
    instance_file(
        &inst,
        "own",
        "nfs-own.example.test",
        "198.51.100.104",
        &own_dir,
        "",
    );
    std::os::unix::fs::chown(&own_dir, Some(statd.uid.as_raw()), Some(statd.gid.as_raw())).unwrap();
    // Left as root made it: sm/ is root's, so statd cannot record there.
    instance_file(
        &inst,
        "bad",
        "nfs-bad.example.test",
        "198.51.100.103",
        &bad_dir,
        "",
    );
    std::fs::create_dir_all(bad_dir.join("sm")).unwrap();
    std::fs::create_dir_all(bad_dir.join("sm.bak")).unwrap();
    let lab = Lab::new("instpriv").unwrap();
    lab.add_name(SVC_ADDR, &[SVC]).unwrap();
    let mut a = Node::new(&lab, "a", "198.51.100.60/24");
    debian_layout(&a.host.nfs_dir().join("node"), &statd);
    let cli = Client::new(&lab, "cli", "198.51.100.70/24", SVC);
    a.start(&inst);
    a.host.add_addr(&format!("{SVC_ADDR}/24")).unwrap();

    let pid = a.nsmd().pid();
    let uid = statd.uid.as_raw().to_string();
    assert_eq!(proc_status(pid, "Uid:"), [uid.as_str(); 4]);
    assert_eq!(
        proc_status(pid, "CapEff:"),
        ["0000000000000400"],
        "only CAP_NET_BIND_SERVICE"
    );

    // Takeover, then lockd's SM_MON recorded in the service's sm/ as statd.
    let s1 = a.takeover("svc");
    assert_eq!(s1 % 2, 1);
    a.mon("cli");
    assert_eq!(files(&state_dir.join("sm")), ["cli"]);
    let owner = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
    assert_eq!(owner(&state_dir.join("sm/cli")), statd.uid.as_raw());
    assert_eq!(owner(&state_dir.join("state")), 0, "state stays root's");
    assert_eq!(owner(&state_dir.join(".nsmd-owner")), 0);

    // Release: unlock_ip (root's, as on a real system) written by the root helper, with the
    // newline the kernel requires.
    let (ok, out, err) = a.ctl(&["release", "svc"]);
    assert!(ok, "{out}{err}\n{}", a.nsmd().log_tail(30));
    assert_eq!(
        a.host.read_file("/run/proc/fs/nfsd/unlock_ip").unwrap(),
        format!("{SVC_ADDR}\n").as_bytes(),
        "{}",
        a.nsmd().log_tail(30)
    );
    assert_eq!(
        a.host
            .read_file("/run/proc/fs/nfsd/unlock_filesystem")
            .unwrap(),
        b"/export/svc\n"
    );

    // Taken over again: the client's rpc.statd hears the new state from the service
    // address, and calls its lockd with the service hostname.
    let s2 = a.takeover("svc");
    assert!(s2 > s1, "{s2} > {s1}");
    let got = cli.callbacks(1);
    assert_eq!(
        got,
        [(SVC.to_owned(), s2)],
        "{}\n{}",
        cli.statd.log_tail(20),
        a.nsmd().log_tail(30)
    );
    assert!(
        !cli.senders().is_empty() && cli.senders().iter().all(|s| s == SVC_ADDR),
        "{:?}",
        cli.senders()
    );
    a.nsmd()
        .wait_for_log_line("cli removed from sm.bak", T)
        .unwrap();
    assert_eq!(read_state(&state_dir), s2);
    assert_eq!(proc_status(pid, "CapEff:"), ["0000000000000400"]);

    // Running as statd, nsmd recorded that it holds svc: a restart resumes it.
    assert!(
        !a.nsmd()
            .log()
            .contains("if nsmd restarts, this instance will not resume"),
        "{}",
        a.nsmd().log()
    );
    a.kill9();
    a.start(&inst);
    a.nsmd().wait_for_log_line("resumed", T).unwrap();
    assert_eq!(read_state(&state_dir), s2, "resumed without a bump");

    // A directory statd cannot write is refused, saying what to change.
    let (ok, out, err) = a.ctl(&["takeover", "bad"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&bad_dir.join("sm").display().to_string()) && err.contains("chown"),
        "{err}"
    );
    let (ok, out, err) = a.ctl(&["release", "svc"]);
    assert!(ok, "{out}{err}");

    a.host.add_addr("198.51.100.104/24").unwrap();
    let (ok, out, err) = a.ctl(&["--json", "takeover", "own"]);
    assert!(ok, "{out}{err}\n{}", a.nsmd().log_tail(20));
    assert_eq!(read_state(&own_dir), 3);
    assert_eq!(owner(&own_dir.join("state")), statd.uid.as_raw());
    let (ok, out, err) = a.ctl(&["release", "own"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        a.host.read_file("/run/proc/fs/nfsd/unlock_ip").unwrap(),
        b"198.51.100.104\n",
        "written by the root helper, with the newline the kernel requires"
    );
}

#[test]
fn sighup_adds_changes_and_removes_instances() {
    if !require(
        "sighup_adds_changes_and_removes_instances",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let shared = shared_dir();
    let inst = shared.path().join("instances");
    let (d1, d2) = (shared.path().join("svc1"), shared.path().join("svc2"));
    instance_file(&inst, "svc1", SVC1, SVC1_ADDR, &d1, "");
    let lab = Lab::new("insthup").unwrap();
    let mut a = Node::new(&lab, "a", "198.51.100.60/24");
    a.start(&inst);
    a.host.add_addr(&format!("{SVC1_ADDR}/24")).unwrap();
    a.host.add_addr(&format!("{SVC2_ADDR}/24")).unwrap();
    a.takeover("svc1");
    let names = |a: &Node| {
        let (ok, out, err) = a.ctl(&["--json", "status"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["name"].as_str().unwrap().to_owned(), i["active"] == true))
            .collect::<Vec<_>>()
    };
    let hup = |a: &Node| {
        let mark = a.nsmd().log_mark();
        a.nsmd().signal(Signal::Hup).unwrap();
        let deadline = std::time::Instant::now() + T;
        while !a.nsmd().log()[mark..].contains("instance files reloaded") {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                a.nsmd().log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        a.nsmd().log()[mark..].to_owned()
    };

    // A new instance, and a change to the active one: svc2 appears (inactive, its address
    // silent until taken over), svc1 keeps running with the settings it was taken over with.
    instance_file(&inst, "svc2", SVC2, SVC2_ADDR, &d2, "");
    instance_file(
        &inst,
        "svc1",
        SVC1,
        SVC1_ADDR,
        &d1,
        "aliases = [\"nfs-svc1\"]",
    );
    let log = hup(&a);
    assert!(log.contains("added=[\"svc2\"]"), "{log}");
    assert!(
        log.contains("instance=svc1") && log.contains("unchanged until released"),
        "{log}"
    );
    assert_eq!(
        names(&a),
        [
            ("node".to_owned(), true),
            ("svc1".to_owned(), true),
            ("svc2".to_owned(), false)
        ]
    );
    let null = |to: &str, xid: u32| {
        let to: SocketAddr = format!("{to}:{}", a.port).parse().unwrap();
        in_netns(&a.host, || {
            udp_exchange(to, &call(xid, 100_024, 1, 0, &[])).is_some()
        })
    };
    assert!(
        !null(SVC2_ADDR, 1),
        "svc2's address is silent while inactive"
    );
    let s2 = a.takeover("svc2");
    assert_eq!(s2 % 2, 1);
    assert!(null(SVC2_ADDR, 2), "svc2 answers once taken over");
    assert!(null(SVC1_ADDR, 3), "svc1 kept answering through the reload");

    // Removed while active: kept until released; removed by the next reload after that.
    std::fs::remove_file(inst.join("svc2.toml")).unwrap();
    let log = hup(&a);
    assert!(log.contains("instance=svc2"), "{log}");
    let (ok, out, err) = a.ctl(&["release", "svc2"]);
    assert!(ok, "{out}{err}");
    let log = hup(&a);
    assert!(log.contains("removed=[\"svc2\"]"), "{log}");
    assert_eq!(
        names(&a),
        [("node".to_owned(), true), ("svc1".to_owned(), true)]
    );
    assert!(
        null(SVC2_ADDR, 4),
        "svc2's address belongs to the node instance again"
    );
    // A broken file keeps what runs.
    std::fs::write(inst.join("bad.toml"), "hostname = 3\n").unwrap();
    a.nsmd().signal(Signal::Hup).unwrap();
    a.nsmd()
        .wait_for_log_line("instance files not reloaded", T)
        .unwrap();
    assert_eq!(names(&a).len(), 2);
}

/// SM_STAT to `to` from `host`: the state, or `None` without an answer.
fn sm_stat(host: &Host, to: SocketAddr) -> Option<i32> {
    in_netns(host, || {
        let m = call(9, 100_024, 1, 1, &xdr_string(b"probe"));
        let r = udp_exchange(to, &m)?;
        match answer(9, &r) {
            Answer::Accepted(0, w) => Some(w[1] as i32),
            other => panic!("SM_STAT: {other:?}"),
        }
    })
}

/// A restart of nsmd (kill -9, then SIGTERM) with an active instance whose notification is
/// still running: the instance resumes at once with the same epoch and state, answers on
/// its address again, and the peer not yet notified hears that same state once it is up;
/// the peer that acknowledged before the restart is not notified again.
#[test]
fn an_active_instance_survives_restarts_of_nsmd() {
    if !require(
        "an_active_instance_survives_restarts_of_nsmd",
        &["rpcbind", "rpcinfo", "rpc.statd"],
    ) {
        return;
    }
    let shared = shared_dir();
    let state_dir = shared.path().join("svc");
    let inst = shared.path().join("instances");
    instance_file(&inst, "svc", SVC, SVC_ADDR, &state_dir, "");
    let lab = Lab::new("instresume").unwrap();
    lab.add_name(SVC_ADDR, &[SVC]).unwrap();
    let mut a = Node::new(&lab, "a", "198.51.100.62/24");
    let up = Client::new(&lab, "up", "198.51.100.73/24", SVC);
    // A client whose host is down while the service is taken over.
    let down = lab.host("down", &["198.51.100.74/24"]).unwrap();
    let cidr = format!("{SVC_ADDR}/24");
    a.start(&inst);
    a.host.add_addr(&cidr).unwrap();
    let s0 = a.takeover("svc");
    a.mon("up");
    a.mon("down");
    let (ok, out, err) = a.ctl(&["release", "svc"]);
    assert!(ok, "{out}{err}");
    // The takeover whose notification the restarts cut into.
    let s1 = a.takeover("svc");
    assert!(s1 > s0);
    // Asking again is success with nothing done (scripts ensure a state); --json may follow
    // the subcommand, and errors are JSON then too.
    let (ok, out, _) = a.ctl(&["takeover", "svc", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && v["already"] == true && v["state"] == s1, "{out}");
    let (ok, out, err) = a.ctl(&["takeover", "nosuch", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        !ok && v["ok"] == false
            && v["error"] == "no instance named \"nosuch\""
            && v["kind"] == "no-such-instance",
        "{out}{err}"
    );
    assert_eq!(up.callbacks(1), [(SVC.to_owned(), s1)]);
    a.nsmd()
        .wait_for_log_line("up removed from sm.bak", T)
        .unwrap();
    assert_eq!(
        files(&state_dir.join("sm.bak")),
        ["down"],
        "still being notified"
    );
    let owner = std::fs::read(state_dir.join(".nsmd-owner")).unwrap();

    let service: SocketAddr = format!("{SVC_ADDR}:{}", a.port).parse().unwrap();
    for how in ["kill -9", "SIGTERM"] {
        let stopped = std::time::Instant::now();
        if how == "kill -9" {
            a.kill9();
        } else {
            let p = a.nsmd.take().unwrap();
            p.signal(Signal::Term).unwrap();
            p.wait(T).unwrap();
            assert!(
                p.log().contains("stays active on this node"),
                "SIGTERM says what it leaves: {}",
                p.log_tail(10)
            );
        }
        a.start(&inst);
        a.nsmd().wait_for_log_line("resumed", T).unwrap();
        let service = SocketAddr::new(service.ip(), a.port);
        let deadline = std::time::Instant::now() + T;
        let state = loop {
            if let Some(st) = sm_stat(&up.host, service) {
                break st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the service address does not answer after the restart: {}",
                a.nsmd().log_tail(20)
            );
        };
        eprintln!(
            "{how}: answering on the service address again {:.0?} after the stop",
            stopped.elapsed()
        );
        assert_eq!(state, s1, "same state after {how}");
        assert_eq!(read_state(&state_dir), s1, "no bump after {how}");
        assert_eq!(
            std::fs::read(state_dir.join(".nsmd-owner")).unwrap(),
            owner,
            "same epoch after {how}"
        );
        let (ok, out, _) = a.ctl(&["--json", "status"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let svc = &v["instances"][1];
        assert!(
            ok && svc["active"] == true && svc["fenced"] == false,
            "{out}"
        );
    }

    // The client that was down comes up: it hears the same state, once; the other is not
    // notified again.
    let down = Client::on(down, "down", SVC);
    assert_eq!(down.callbacks(1), [(SVC.to_owned(), s1)]);
    a.nsmd()
        .wait_for_log_line("down removed from sm.bak", Duration::from_secs(60))
        .unwrap();
    assert_eq!(up.lockd.wait_for(2, Duration::from_secs(1)).len(), 1);

    // Released, then restarted: nothing resumes.
    let (ok, out, err) = a.ctl(&["release", "svc"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = a.ctl(&["release", "svc"]);
    assert!(
        ok && out.contains("not held here (nothing done)"),
        "{out}{err}"
    );
    a.kill9();
    a.start(&inst);
    let (ok, out, _) = a.ctl(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && v["instances"][1]["active"] == false, "{out}");
    assert!(!a.nsmd().log().contains("resumed"), "{}", a.nsmd().log());
}

/// The readiness gate holds the notifications until the service's lock manager is
/// registered, and lets them out within a poll of it: lockd's registration is withdrawn,
/// the takeover waits; it is registered again (PMAP SET, made here, so its instant is
/// known), and the first SM_NOTIFY reaches a peer's statd (a UDP socket here, timestamping
/// what arrives). Prints the time from the registration to the arrival.
#[test]
fn readiness_gate_to_first_notification() {
    if !require(
        "readiness_gate_to_first_notification",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    let shared = shared_dir();
    let state_dir = shared.path().join("svc");
    let inst = shared.path().join("instances");
    instance_file(&inst, "svc", SVC, SVC_ADDR, &state_dir, "");
    let lab = Lab::new("instgate").unwrap();
    lab.add_name(SVC_ADDR, &[SVC]).unwrap();
    let mut a = Node::new(&lab, "a", "198.51.100.60/24");
    let peer = lab.host("peer", &["198.51.100.75/24"]).unwrap();
    let _peer_rpcbind = peer.start_rpcbind().unwrap();

    // The peer's statd: SM_NOTIFYs timestamped on arrival, and acknowledged.
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = std::fs::File::open(peer.netns_path()).unwrap();
    let (got, done) = (arrivals.clone(), stop.clone());
    let statd = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        pmap(
            "127.0.0.1:111",
            1,
            100_024,
            1,
            sock.local_addr().unwrap().port(),
        );
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let w = |i: usize| u32::from_be_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap());
            if n >= 24 && w(3) == 100_024 && w(5) == 6 {
                got.lock().unwrap().push(Instant::now());
                let mut reply = Vec::new();
                for v in [w(0), 1, 0, 0, 0, 0] {
                    reply.extend_from_slice(&v.to_be_bytes());
                }
                let _ = sock.send_to(&reply, from);
            }
        }
    });
    rx.recv_timeout(T).unwrap();

    // A first takeover records the peer; released, the peer is in the service's sm/.
    let cidr = format!("{SVC_ADDR}/24");
    a.start(&inst);
    a.host.add_addr(&cidr).unwrap();
    a.takeover("svc");
    a.mon("peer");
    let (ok, out, err) = a.ctl(&["release", "svc"]);
    assert!(ok, "{out}{err}");

    // lockd's registration withdrawn: the next takeover waits at the gate.
    let lockd_port = a.lockd.port;
    let host = &a.host;
    for vers in [1, 3, 4] {
        in_netns(host, || pmap("127.0.0.1:111", 2, 100_021, vers, 0));
    }
    let registered = std::thread::scope(|s| {
        let t = s.spawn(|| a.takeover("svc"));
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            arrivals.lock().unwrap().is_empty(),
            "no SM_NOTIFY before the lock manager is registered"
        );
        let at = Instant::now();
        in_netns(host, || pmap("127.0.0.1:111", 1, 100_021, 4, lockd_port));
        t.join().unwrap();
        at
    });
    let deadline = Instant::now() + T;
    let first = loop {
        if let Some(t) = arrivals.lock().unwrap().first() {
            break *t;
        }
        assert!(
            Instant::now() < deadline,
            "no SM_NOTIFY {T:?} after the gate opened"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    eprintln!(
        "readiness gate: lock manager registered -> first SM_NOTIFY at the peer: {:?}",
        first - registered
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    statd.join().unwrap();
}

/// PMAP SET (`proc_` 1) or UNSET (2) of `prog`/`vers` on UDP `port`, at `rpcbind`.
fn pmap(rpcbind: &str, proc_: u32, prog: u32, vers: u32, port: u16) {
    let mut args = Vec::new();
    for w in [prog, vers, 17, u32::from(port)] {
        args.extend_from_slice(&w.to_be_bytes());
    }
    let r = udp_exchange(
        rpcbind.parse().unwrap(),
        &call(0x9a7e, 100_000, 2, proc_, &args),
    )
    .expect("rpcbind answers");
    assert_eq!(
        answer(0x9a7e, &r),
        Answer::Accepted(0, vec![1]),
        "PMAP {proc_}"
    );
}

/// An nsmctl that gives up waiting leaves a state anyone can see: it says nsmd goes on, the
/// status shows the step under way, and a readiness gate that never opens ends in a failed,
/// undone takeover whose reason the status carries.
#[test]
fn an_interrupted_nsmctl_leaves_a_visible_state() {
    if !require(
        "an_interrupted_nsmctl_leaves_a_visible_state",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let shared = shared_dir();
    let inst = shared.path().join("instances");
    let state_dir = shared.path().join("svc");
    std::fs::create_dir_all(&inst).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    // nfsd (100003) is never registered here: the gate cannot open.
    std::fs::write(
        inst.join("svc.toml"),
        format!(
            "hostname = \"{SVC}\"\naddresses = [\"{SVC_ADDR}\"]\nstate_dir = \"{}\"\n\
             [readiness]\nrpcbind = [100003]\ntimeout_seconds = 4\n",
            state_dir.display()
        ),
    )
    .unwrap();
    let lab = Lab::new("instwait").unwrap();
    lab.add_name(SVC_ADDR, &[SVC]).unwrap();
    let mut a = Node::new(&lab, "a", "198.51.100.63/24");
    a.start(&inst);
    a.host.add_addr(&format!("{SVC_ADDR}/24")).unwrap();
    let (ok, out, err) = a.ctl(&["--timeout", "1", "takeover", "svc"]);
    assert!(!ok, "{out}");
    assert!(err.contains("nsmd goes on with `takeover svc`"), "{err}");
    let status = |a: &Node| -> serde_json::Value {
        let (ok, out, err) = a.ctl(&["status", "--json"]);
        assert!(ok, "{out}{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["instances"][1].clone()
    };
    let s = status(&a);
    assert_eq!(s["step"], "waiting for readiness", "{s}");
    assert_eq!(s["active"], false, "{s}");
    let (_, table, _) = a.ctl(&["status"]);
    assert!(table.contains("waiting for readiness"), "{table}");
    // The gate's timeout: the takeover fails and is undone, and says why.
    a.nsmd()
        .wait_for_log_line("not taken over: the readiness gate did not open", T)
        .unwrap();
    let s = status(&a);
    assert!(s["step"].is_null() && s["active"] == false, "undone: {s}");
    assert!(
        s["notify"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("program 100003")),
        "{s}"
    );
    let out = a
        .host
        .run(
            &[
                NSMCTL,
                "state",
                "svc",
                "--instances",
                inst.to_str().unwrap(),
            ],
            T,
        )
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "nothing held after the undone takeover"
    );
}

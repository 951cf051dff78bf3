//! CTDB drills against a real ctdbd (Debian's `ctdb`): two nodes, each a test host with its own
//! `/run`, `/etc/ctdb`, `/var/lib/ctdb`, `/var/log/ctdb` and CTDB's legacy event scripts
//! (`00.ctdb`, `06.nfs`, `10.interface`, `60.nfs` and nsmd's `62.nsmd`, enabled with `ctdb
//! event script enable`), the cluster lock on a directory both see, two public addresses on
//! the lab bridge, one nsmd instance per public address. 60.nfs runs as the README configures
//! it: `CTDB_NFS_CALLOUT` is nsmd's wrapper (`ctdb/nsmd-nfs-callout`) in front of Debian's
//! `nfs-linux-kernel-callout`, which starts and stops rpc-statd (nsmd) through service(8).
//! The test hosts have no init system and no kernel nfsd: their service(8) starts and stops
//! nsmd and does nothing for nfs-kernel-server, and the nfs, nlockmgr, mountd and rquotad
//! checks of nfs-checks.d are left out (portmapper and status run). Each service has a
//! client running Debian's rpc.statd with a lockd stand-in; svc1 also has 1,000 clients
//! played by the peer farm. After every move CTDB makes of svc1, each of its clients must be
//! called back with the service's name and a state above every earlier one, the SM_NOTIFY
//! coming from the public address; svc2's client hears nothing of svc1's moves, no client
//! hears anything from a node's own address, and statd-callout's notify never restarts
//! rpc-statd. Drills: `ctdb moveip` both ways, kill -9 of nsmd on the holder (it resumes),
//! `ctdb disable`/`enable`, `ctdb shutdown` of the holder (60.nfs stops nsmd) and its restart,
//! kill -9 of the holder's ctdbd (the survivor takes over by force, the old nsmd is fenced).
//! The times are printed (BENCHMARKS.md), never asserted. Root only.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::LockdStandIn;
use common::farm::Farm;
use nsm_testhost::{Host, Lab, Proc, Signal, require};

const NSMD: &str = env!("CARGO_BIN_EXE_nsmd");
const NSMCTL: &str = env!("CARGO_BIN_EXE_nsmctl");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ctdb/62.nsmd.script");
const CALLOUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ctdb/nsmd-nfs-callout");
/// Where the package installs the NFS callout wrapper.
const CALLOUT_AT: &str = "/usr/share/ctdb/nsmd-nfs-callout";
/// The nodes' statd name (`[statd] name`, statd-callout's `NFS_HOSTNAME`).
const STATD_NAME: &str = "ctdb-cluster.example.test";
/// The test hosts' service(8) (they have no init system), first on ctdbd's `PATH`.
const SERVICE: &str = "/run/nsmd-test/bin/service";
/// The nfs-checks.d files the test hosts can pass: there is no kernel nfsd (so no nfs,
/// mountd or rquotad), and the lockd stand-in answers only NLM callbacks (no NULL call
/// for rpcinfo).
const NFS_CHECKS_SKIPPED: [&str; 4] = [
    "20.nfs.check",
    "30.nlockmgr.check",
    "40.mountd.check",
    "50.rquotad.check",
];
const COOKIE: [u8; 16] = [0xc7, 0xdb, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
/// How long CTDB may take to become healthy or to move an address (generous: ~22 s to start).
const CLUSTER: Duration = Duration::from_secs(120);

const NODES: [&str; 2] = ["198.51.100.81", "198.51.100.82"];
/// (instance, service hostname, public address, client, client address)
const SVCS: [(&str, &str, &str, &str, &str); 2] = [
    (
        "svc1",
        "nfs1.example.test",
        "198.51.100.201",
        "cli1",
        "198.51.100.91",
    ),
    (
        "svc2",
        "nfs2.example.test",
        "198.51.100.202",
        "cli2",
        "198.51.100.92",
    ),
];

/// `/proc/net/tcp` as the kernel lists the clients' NFS connections (client → public
/// address, port 2049, ESTABLISHED): nsmd records a client's SM_MON in the instance whose
/// address the client is connected to.
fn proc_net_tcp() -> String {
    let hex = |ip: &str| {
        let o: std::net::Ipv4Addr = ip.parse().unwrap();
        format!("{:08X}", u32::from_ne_bytes(o.octets()))
    };
    let mut t = String::from("  sl  local_address rem_address   st\n");
    for (i, (_, _, vip, _, cip)) in SVCS.iter().enumerate() {
        t.push_str(&format!(
            "{i}: {}:0801 {}:03FF 01 00000000:00000000\n",
            hex(vip),
            hex(cip)
        ));
    }
    t
}

/// `dir` made private to `host`, with a copy of the machine's files; returns it outside.
fn private_copy(host: &Host, dir: &str) -> PathBuf {
    let out = host.mount_private(dir).unwrap();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{dir}/."))
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {dir}/. {}", out.display());
    out
}

/// How nsmd runs beside CTDB.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One service instance per public address, 62.nsmd, 60.nfs through nsmd-nfs-callout.
    Instances,
    /// In rpc.statd's place under CTDB's own NFS path: statd-callout as its HA callout.
    DropIn,
}

struct Node {
    host: Host,
    pnn: usize,
    ctdbd: Option<Proc>,
    _lockd: LockdStandIn,
    _rpcbind: Proc,
}

/// service(8) for a test host: `rpc-statd` is nsmd (started detached, its output appended to
/// `/run/nsmd-test/nsmd.log`, ready once nsmctl answers, as systemd's `Type=notify` waits;
/// stopped with SIGTERM), `nfs-kernel-server` does nothing (no kernel nfsd here). Every call
/// is logged in `/run/nsmd-test/service.log` with the command lines of its callers up to
/// ctdbd's event daemon.
fn service_script(nsmd_args: &str) -> String {
    format!(
        r#"#!/bin/sh
d=/run/nsmd-test
callers=""
p=$PPID
while [ "$p" -gt 1 ] && [ -r "/proc/$p/cmdline" ]; do
	c=$(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-100)
	case "$c" in *ctdb-eventd*) break ;; esac
	callers="$callers <- $c"
	p=$(sed 's/.*) //' "/proc/$p/stat" | cut -d' ' -f2)
done
echo "$(date -u +%H:%M:%S.%N) $*$callers" >>"$d/service.log"
running () {{
	[ -s "$d/nsmd.pid" ] && ps -o stat= -p "$(cat "$d/nsmd.pid")" | grep -qv Z
}}
case "$1 $2" in
"rpc-statd stop")
	running || exit 0
	pid=$(cat "$d/nsmd.pid")
	kill -TERM "$pid"
	i=0
	while ps -o stat= -p "$pid" | grep -qv Z; do
		i=$((i + 1))
		[ "$i" -lt 400 ] || {{ echo "nsmd $pid did not stop in 20 s" >&2; exit 1; }}
		sleep 0.05
	done
	rm -f "$d/nsmd.pid"
	;;
"rpc-statd start")
	running && exit 0
	NFS_HOSTNAME={STATD_NAME} setsid {NSMD} -F -d -L {nsmd_args} </dev/null >>"$d/nsmd.log" 2>&1 &
	echo $! >"$d/nsmd.pid"
	i=0
	until {NSMCTL} --timeout 1 status >/dev/null 2>&1; do
		i=$((i + 1))
		[ "$i" -lt 400 ] || {{ echo "nsmd did not answer in 20 s" >&2; exit 1; }}
		sleep 0.05
	done
	;;
"nfs-kernel-server start" | "nfs-kernel-server stop") ;;
*)
	echo "service $*: not on this test host" >&2
	exit 1
	;;
esac
"#
    )
}

impl Node {
    fn new(lab: &Lab, pnn: usize, shared: &Path, mode: Mode) -> Self {
        let host = lab
            .host(&format!("n{pnn}"), &[&format!("{}/24", NODES[pnn])])
            .unwrap();
        let rpcbind = host.start_rpcbind().unwrap();
        let lockd = LockdStandIn::start(&host, true);
        for f in ["fs/nfsd/unlock_ip", "fs/nfsd/unlock_filesystem"] {
            host.write_file(&format!("/run/proc/{f}"), "").unwrap();
        }
        host.write_file("/run/proc/net/tcp", proc_net_tcp())
            .unwrap();
        host.write_file("/run/ctdb/.keep", "").unwrap();
        let etc = private_copy(&host, "/etc/ctdb");
        let var = host.mount_private("/var/lib/ctdb").unwrap();
        for d in ["volatile", "persistent", "state", "scripts"] {
            std::fs::create_dir_all(var.join(d)).unwrap();
        }
        host.mount_private("/var/log/ctdb").unwrap();
        // Where Debian's package puts legacy event scripts, and where nsmd's package puts
        // 62.nsmd and the NFS callout wrapper.
        let share = private_copy(&host, "/usr/share/ctdb");
        for (from, to) in [
            (SCRIPT, share.join("events/legacy/62.nsmd.script")),
            (CALLOUT, share.join("nsmd-nfs-callout")),
        ] {
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for f in NFS_CHECKS_SKIPPED {
            std::fs::remove_file(etc.join("nfs-checks.d").join(f)).unwrap();
        }
        // The configurations the README gives. Instances: 60.nfs's callout is the wrapper in
        // front of Debian's kernel callout (its default next callout). Drop-in: Debian's
        // kernel callout, and nsmd in rpc.statd's place with statd-callout as its HA callout.
        // No exports to check (no nfsd).
        let mut options = std::fs::read_to_string(etc.join("script.options")).unwrap();
        if mode == Mode::Instances {
            options.push_str(&format!("CTDB_NFS_CALLOUT={CALLOUT_AT}\n"));
        }
        options.push_str("CTDB_NFS_SKIP_SHARE_CHECK=yes\n");
        std::fs::write(etc.join("script.options"), options).unwrap();
        let args = match mode {
            Mode::Instances => format!(
                "-P /var/lib/nfs/node --proc-root /run/proc --instances {}",
                shared.join("instances").display()
            ),
            Mode::DropIn => {
                format!("-n {STATD_NAME} -H /etc/ctdb/statd-callout --proc-root /run/proc")
            }
        };
        host.write_file(SERVICE, service_script(&args)).unwrap();
        std::fs::set_permissions(
            host.outside_path(SERVICE).unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(
            etc.join("ctdb.conf"),
            format!(
                "[logging]\n\tlocation = file:/var/log/ctdb/log.ctdb\n\tlog level = NOTICE\n\
                 [cluster]\n\trecovery lock = {}\n\
                 [legacy]\n\trealtime scheduling = false\n",
                shared.join("reclock").display()
            ),
        )
        .unwrap();
        std::fs::write(etc.join("nodes"), format!("{}\n", NODES.join("\n"))).unwrap();
        let public: String = SVCS.iter().map(|s| format!("{}/24 eth0\n", s.2)).collect();
        std::fs::write(etc.join("public_addresses"), public).unwrap();
        if mode == Mode::DropIn {
            // statd-callout must run as root (ctdb's socket): as the owner of sm/ (statd in
            // Debian's layout) nsmd would run it without a capability bounding set, as
            // rpc.statd does, and its sudo fails ("unable to change to root gid"). With sm/
            // owned by root nsmd stays root.
            for d in ["/var/lib/nfs/sm", "/var/lib/nfs/sm.bak"] {
                let out = host.outside_path(d).unwrap();
                std::fs::create_dir_all(&out).unwrap();
                std::os::unix::fs::chown(&out, Some(0), Some(0)).unwrap();
            }
        }
        let scripts: &[&str] = match mode {
            Mode::Instances => &["00.ctdb", "06.nfs", "10.interface", "60.nfs", "62.nsmd"],
            Mode::DropIn => &["00.ctdb", "06.nfs", "10.interface", "60.nfs"],
        };
        for s in scripts {
            host.run_ok(
                &["ctdb", "event", "script", "enable", "legacy", s],
                Duration::from_secs(10),
            )
            .unwrap();
        }
        Self {
            host,
            pnn,
            ctdbd: None,
            _lockd: lockd,
            _rpcbind: rpcbind,
        }
    }

    /// `service rpc-statd ARG` as an administrator (or systemd) would run it.
    fn service(&self, arg: &str) {
        self.host
            .run_ok(&[SERVICE, "rpc-statd", arg], Duration::from_secs(60))
            .unwrap();
    }

    /// The pid of the running nsmd, if one runs.
    fn nsmd_pid(&self) -> Option<i32> {
        let pid: i32 = self
            .host
            .read_file("/run/nsmd-test/nsmd.pid")
            .ok()
            .and_then(|b| String::from_utf8(b).ok()?.trim().parse().ok())?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (!stat.rsplit(')').next()?.trim_start().starts_with('Z')).then_some(pid)
    }

    /// Everything every nsmd of this node wrote (each start appends).
    fn nsmd_log(&self) -> String {
        self.host
            .read_file("/run/nsmd-test/nsmd.log")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn nsmd_log_tail(&self, n: usize) -> String {
        let log = self.nsmd_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The calls of service(8) so far.
    fn service_log(&self) -> String {
        self.host
            .read_file("/run/nsmd-test/service.log")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The UDP port of the running nsmd's status program (its last start's log line).
    fn port(&self) -> u16 {
        let log = self.nsmd_log();
        let line = log
            .lines()
            .rfind(|l| l.contains("serving program 100024 version 1 on"))
            .expect("nsmd logged its status program's ports");
        line.split("udp 0.0.0.0:")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"))
    }

    fn start_ctdbd(&mut self) {
        let bin = Path::new(NSMCTL).parent().unwrap().to_str().unwrap();
        let path = format!("/run/nsmd-test/bin:{bin}:/usr/sbin:/usr/bin:/sbin:/bin");
        let p = self
            .host
            .spawn_env(
                "ctdbd",
                &["/usr/sbin/ctdbd", "--interactive"],
                // statd-callout (60.nfs's notify) stops early without a statd name.
                &[("PATH", &path), ("NFS_HOSTNAME", STATD_NAME)],
            )
            .unwrap();
        self.ctdbd = Some(p);
    }

    fn ctdb(&self, args: &[&str]) -> String {
        let mut argv = vec!["ctdb"];
        argv.extend_from_slice(args);
        self.host.run_ok(&argv, Duration::from_secs(60)).unwrap()
    }

    /// The last lines ctdbd (interactive: its log on stdout) wrote, and the event script's
    /// lines (in CTDB's log file).
    fn ctdb_log(&self) -> String {
        format!(
            "{}\n--- n{} /var/log/ctdb/log.ctdb:\n{}",
            self.ctdbd
                .as_ref()
                .map(|p| p.log_tail(40))
                .unwrap_or_default(),
            self.pnn,
            self.script_log()
        )
    }

    fn script_log(&self) -> String {
        std::fs::read_to_string(self.host.run_dir().join(".private/var_log_ctdb/log.ctdb"))
            .unwrap_or_default()
    }

    /// `nsmctl --json status`: (name, active, fenced, state) of each service instance.
    fn status(&self) -> Vec<(String, bool, bool, Option<i64>)> {
        let out = self
            .host
            .run_ok(&[NSMCTL, "--json", "status"], Duration::from_secs(30))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["role"] == "service")
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_owned(),
                    i["active"] == true,
                    i["fenced"] == true,
                    i["state"].as_i64(),
                )
            })
            .collect()
    }

    fn active(&self, name: &str) -> bool {
        self.status()
            .iter()
            .any(|(n, a, f, _)| n == name && *a && !*f)
    }

    /// lockd's SM_MON of `client` (mon_name), on loopback.
    fn mon(&self, client: &str) {
        common::sm_mon(&self.host, self.port(), client, "server", COOKIE);
    }
}

/// A client: rpcbind, a lockd stand-in, Debian's rpc.statd monitoring `service`.
struct Client {
    host: Host,
    lockd: LockdStandIn,
    statd: Proc,
    service: &'static str,
    _rpcbind: Proc,
}

impl Client {
    fn new(lab: &Lab, name: &str, addr: &str, service: &'static str) -> Self {
        let host = lab.host(name, &[&format!("{addr}/24")]).unwrap();
        let rpcbind = host.start_rpcbind().unwrap();
        let lockd = LockdStandIn::start(&host, true);
        let (statd, port) = common::debian_statd(&host, None);
        common::sm_mon(&host, port, service, name, COOKIE);
        Self {
            host,
            lockd,
            statd,
            service,
            _rpcbind: rpcbind,
        }
    }

    /// (mon_name, state) of every callback so far.
    fn callbacks(&self) -> Vec<(String, i32)> {
        common::callback_states(&self.lockd.calls.lock().unwrap(), COOKIE)
    }

    /// The senders of every SM_NOTIFY rpc.statd received.
    fn all_senders(&self) -> Vec<String> {
        let log = self.statd.log();
        let mut from = None;
        let mut out = Vec::new();
        for l in log.lines() {
            if let Some(r) = l.split("access by ").nth(1) {
                from = r.split_whitespace().next().map(str::to_owned);
            } else if l.contains("Received SM_NOTIFY from ") {
                out.push(from.clone().unwrap_or_default());
            }
        }
        out
    }

    /// The senders of the SM_NOTIFYs rpc.statd received with one of `names` as mon_name
    /// (its log: "access by ADDR" then "Received SM_NOTIFY from NAME").
    fn senders(&self, names: &[&str]) -> Vec<String> {
        let log = self.statd.log();
        let mut from = None;
        let mut out = Vec::new();
        for l in log.lines() {
            if let Some(r) = l.split("access by ").nth(1) {
                from = r.split_whitespace().next().map(str::to_owned);
            } else if let Some(r) = l.split("Received SM_NOTIFY from ").nth(1) {
                let name = r.split(',').next().unwrap_or_default();
                if names.contains(&name) {
                    out.push(from.clone().unwrap_or_default());
                }
            }
        }
        out
    }
}

/// Which node CTDB says holds `vip` (`ctdb -X ip`), if any.
fn holder(n: &Node, vip: &str) -> Option<usize> {
    n.ctdb(&["-X", "ip"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.get(1) == Some(&vip)).then(|| f.get(2)?.parse::<i64>().ok())?
        })
        .next()
        .and_then(|p| usize::try_from(p).ok())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool, nodes: &[Node]) {
    let deadline = Instant::now() + CLUSTER;
    while !f() {
        check(what, deadline, nodes);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails the test with both nodes' logs when `deadline` passed or a ctdbd died unasked.
fn check(what: &str, deadline: Instant, nodes: &[Node]) {
    let dead = nodes
        .iter()
        .find(|n| n.ctdbd.as_ref().is_some_and(|p| !p.is_running()));
    if Instant::now() < deadline && dead.is_none() {
        return;
    }
    let logs: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "--- n{} ctdbd:\n{}\n--- nsmd:\n{}",
                n.pnn,
                n.ctdb_log(),
                n.nsmd_log_tail(30)
            )
        })
        .collect();
    panic!(
        "waited {CLUSTER:?} for {what} ({}):\n{}",
        if dead.is_some() {
            "a ctdbd died"
        } else {
            "timed out"
        },
        logs.join("\n")
    );
}

/// Seconds since midnight UTC of a log line's RFC 3339 timestamp (`...T19:09:56.956405Z`).
fn secs_of_day(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?;
    let mut f = t.trim_end_matches('Z').split(':');
    let (h, m, s): (f64, f64, f64) = (
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// When the last `nsmctl takeover --force INSTANCE` reached an nsmd (seconds since midnight
/// UTC): CTDB's takeip on the new holder.
fn last_takeip(nodes: &[Node], instance: &str) -> Option<f64> {
    let pat = format!("command=takeover --force {instance}");
    nodes
        .iter()
        .flat_map(|n| {
            n.nsmd_log()
                .lines()
                .filter(|l| l.contains(&pat))
                .filter_map(secs_of_day)
                .collect::<Vec<_>>()
        })
        .reduce(f64::max)
}

fn now_secs_of_day() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 86_400.0
}

/// One drill's figures: (drill, clients, to the first callback, to the last, from takeip's
/// `nsmctl takeover` reaching nsmd to the first callback).
type Timing = (String, usize, Duration, Duration, Option<Duration>);

/// The clients of svc1 the peer farm plays.
const FARM_PEERS: usize = 1000;
/// The farm's address on the lab bridge (the nodes route 10.77.0.0/16 to it).
const FARM_ADDR: &str = "198.51.100.95";

/// svc1's clients: the rpc.statd client and the farm's peers.
struct Svc1<'a> {
    client: &'a Client,
    farm: &'a Farm,
    sm: PathBuf,
}

impl Svc1<'_> {
    /// Records the farm's peers in svc1's `sm/`, as lockd's SM_MONs would have (written
    /// directly: a thousand SM_MONs would only slow the test down), so that the next move
    /// notifies them.
    fn seed_farm(&self) {
        for p in 1..=self.farm.len() {
            let ip = common::farm::peer_addr(p).to_string();
            let r = nsm_store::Record {
                mon_name: ip.clone().into_bytes(),
                my_name: b"server".to_vec(),
                my_prog: 100_021,
                my_vers: 4,
                my_proc: 16,
                priv_: [0; 16],
            };
            std::fs::write(self.sm.join(&ip), r.to_line()).unwrap();
        }
    }
}

fn wall_of(t: Instant) -> f64 {
    now_secs_of_day() - Instant::now().saturating_duration_since(t).as_secs_f64()
}

/// Seeds the farm, runs `act` (a CTDB command), then waits until svc1's rpc.statd client was
/// called back once more and every farm peer notified once more: with the service's name, a
/// state above every earlier one, from its public address. Records the times from the command.
fn drill(
    name: &str,
    svc1: &Svc1<'_>,
    nodes: &[Node],
    timings: &mut Vec<Timing>,
    act: impl FnOnce(),
) {
    let (c, farm) = (svc1.client, svc1.farm);
    let (host, vip) = (SVCS[0].1, SVCS[0].2);
    svc1.seed_farm();
    let old = c.callbacks();
    let farm_before = farm.counts();
    let t0 = Instant::now();
    act();
    let deadline = Instant::now() + CLUSTER;
    // Polled every 2 ms: the client's time is that precise (the farm stamps each packet).
    while c.callbacks().len() <= old.len() {
        check(
            &format!("{name}: a callback at {}", c.host.name()),
            deadline,
            nodes,
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let client_at = Instant::now();
    let got = c.callbacks();
    let (mon_name, state) = got[old.len()].clone();
    assert_eq!(
        mon_name, c.service,
        "{name}: called back with the service name"
    );
    assert!(
        old.iter().all(|(_, s)| state > *s),
        "{name}: state {state} above all before {old:?}"
    );
    let senders = c.senders(&[c.service, vip]);
    assert!(
        !senders.is_empty() && senders.iter().all(|s| s == vip),
        "{name}: every SM_NOTIFY of {} from {vip}: {senders:?}",
        c.service
    );
    while farm.counts().iter().zip(&farm_before).any(|(n, b)| n <= b) {
        check(
            &format!("{name}: the farm's {} peers", farm.len()),
            deadline,
            nodes,
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut first, mut last) = (client_at, client_at);
    {
        let seen = farm.seen.lock().unwrap();
        for (p, b) in (1..).zip(&farm_before) {
            let n = &seen[p][*b];
            assert_eq!(
                (n.mon_name.as_str(), n.state, n.from.ip().to_string()),
                (host, state, vip.to_owned()),
                "{name}: farm peer {p}"
            );
            first = first.min(n.at);
            last = last.max(n.at);
        }
    }
    let takeip = last_takeip(nodes, SVCS[0].0)
        .map(|t| wall_of(first) - t)
        .filter(|d| *d >= 0.0)
        .map(Duration::from_secs_f64);
    timings.push((
        name.to_owned(),
        1 + farm.len(),
        first.saturating_duration_since(t0),
        last.saturating_duration_since(t0),
        takeip,
    ));
}

/// The event script and the NFS callout wrapper are shellcheck-clean (CTDB's functions file
/// followed when installed).
#[test]
fn event_script_shellcheck() {
    if !require("event_script_shellcheck", &["shellcheck"]) {
        return;
    }
    let out = std::process::Command::new("shellcheck")
        .args([
            "-s",
            "sh",
            "-x",
            "-P",
            "/etc/ctdb",
            "-e",
            "SC1091",
            SCRIPT,
            CALLOUT,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ctdb_drills() {
    if !require(
        "ctdb_drills",
        &[
            "ctdbd",
            "ctdb",
            "rpcbind",
            "rpcinfo",
            "rpc.statd",
            "jq",
            "iptables",
            "ethtool",
        ],
    ) {
        return;
    }
    let shared = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let inst = shared.path().join("instances");
    std::fs::create_dir_all(&inst).unwrap();
    for (name, host, vip, _, _) in SVCS {
        let dir = shared.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            inst.join(format!("{name}.toml")),
            format!(
                "hostname = \"{host}\"\naddresses = [\"{vip}\"]\nstate_dir = \"{}\"\n\
                 [notify]\nretry_seconds = 30\n\
                 [readiness]\nrpcbind = [100021]\ntimeout_seconds = 10\n\
                 [release]\nexports = [\"/export/{name}\"]\n",
                dir.display()
            ),
        )
        .unwrap();
    }
    let lab = Lab::new("ctdb").unwrap();
    for (_, host, vip, _, _) in SVCS {
        lab.add_name(vip, &[host]).unwrap();
    }
    let mut ns = vec![
        Node::new(&lab, 0, shared.path(), Mode::Instances),
        Node::new(&lab, 1, shared.path(), Mode::Instances),
    ];
    let clients: Vec<Client> = SVCS
        .iter()
        .map(|(_, host, _, cli, cip)| Client::new(&lab, cli, cip, host))
        .collect();
    let (c1, c2) = (&clients[0], &clients[1]);
    let farm_host = lab.host("farm", &[&format!("{FARM_ADDR}/24")]).unwrap();
    let farm = Farm::start(&farm_host, FARM_PEERS);
    for n in &ns {
        n.host
            .sh(
                &format!("ip route add 10.77.0.0/16 via {FARM_ADDR}"),
                Duration::from_secs(10),
            )
            .unwrap();
    }
    let svc1 = Svc1 {
        client: c1,
        farm: &farm,
        sm: shared.path().join("svc1/sm"),
    };
    let (vip1, vip2) = (SVCS[0].2, SVCS[1].2);
    let healthy = |ns: &[Node], on: usize| {
        ns[on]
            .host
            .run(&["ctdb", "status"], Duration::from_secs(10))
            .map(|o| String::from_utf8_lossy(&o.stdout).matches(" OK").count() == 2)
            .unwrap_or(false)
    };

    let t_start = Instant::now();
    for n in &mut ns {
        n.service("start");
        n.start_ctdbd();
    }
    wait_until(
        "both nodes OK and both public addresses hosted",
        || healthy(&ns, 0) && holder(&ns[0], vip1).is_some() && holder(&ns[0], vip2).is_some(),
        &ns,
    );
    eprintln!("ctdb: cluster healthy after {:?}", t_start.elapsed());
    // svc1 on n0, svc2 on n1.
    for (i, want) in [(0usize, 0usize), (1, 1)] {
        let vip = SVCS[i].2;
        if holder(&ns[0], vip) != Some(want) {
            ns[0].ctdb(&["moveip", vip, &want.to_string()]);
        }
        wait_until(
            &format!("{} active on n{want}", SVCS[i].0),
            || ns[want].active(SVCS[i].0),
            &ns,
        );
    }
    // The servers' lockd monitors each client (through the instance of its public address).
    ns[0].mon("cli1");
    ns[1].mon("cli2");
    let mut timings: Vec<Timing> = Vec::new();

    // moveip both ways; the other service's client hears nothing.
    drill("moveip svc1 n0->n1", &svc1, &ns, &mut timings, || {
        ns[0].ctdb(&["moveip", vip1, "1"]);
    });
    wait_until("svc1 released on n0", || !ns[0].active("svc1"), &ns);
    ns[1].mon("cli1");
    drill("moveip svc1 n1->n0", &svc1, &ns, &mut timings, || {
        ns[0].ctdb(&["moveip", vip1, "0"]);
    });
    ns[0].mon("cli1");
    assert!(
        c2.callbacks().is_empty(),
        "moving svc1 never touches svc2's clients: {:?}",
        c2.callbacks()
    );
    for n in &ns {
        let ev = n.ctdb(&["event", "status", "legacy", "monitor"]);
        for s in ["06.nfs", "60.nfs", "62.nsmd"] {
            assert!(
                ev.lines().any(|l| l.starts_with(s) && l.contains(" OK ")),
                "n{}: {s}'s monitor OK:\n{ev}",
                n.pnn
            );
        }
        let st = n.ctdb(&["status"]);
        assert!(
            st.matches(" OK").count() == 2 && !st.contains("BANNED"),
            "n{}: ctdb status:\n{st}",
            n.pnn
        );
    }

    // kill -9 of nsmd on the holder and a restart: the instance resumes, same state.
    let before = ns[0].status();
    let pid = ns[0].nsmd_pid().expect("nsmd runs on n0");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("nsmd killed on n0", || ns[0].nsmd_pid().is_none(), &ns);
    ns[0].service("start");
    assert_eq!(
        ns[0].status(),
        before,
        "resumed: active, same state\n{}\n{}",
        ns[0].nsmd_log_tail(40),
        ns[0].ctdb_log()
    );
    ns[0].mon("cli1");

    // disable the holder: CTDB moves its address away; enable again.
    drill("disable n0", &svc1, &ns, &mut timings, || {
        ns[0].ctdb(&["disable"]);
    });
    wait_until("svc1 released on n0", || !ns[0].active("svc1"), &ns);
    ns[1].mon("cli1");
    let seen = c1.callbacks().len();
    ns[0].ctdb(&["enable"]);
    wait_until("n0 healthy again", || healthy(&ns, 0), &ns);
    let h = holder(&ns[0], vip1).unwrap();
    wait_until(
        "svc1 active where CTDB put it",
        || ns[h].active("svc1"),
        &ns,
    );
    if h == 0 {
        // CTDB moved it back at enable: a takeover the client hears of too.
        wait_until(
            "svc1's client hears of the move back",
            || c1.callbacks().len() > seen,
            &ns,
        );
    }
    ns[h].mon("cli1");

    // ctdb shutdown of the holder, then its restart.
    let p = ns[h].ctdbd.take().unwrap();
    drill(
        &format!("ctdb shutdown n{h}"),
        &svc1,
        &ns,
        &mut timings,
        || {
            ns[h].ctdb(&["shutdown"]);
        },
    );
    ns[1 - h].mon("cli1");
    p.wait(CLUSTER).unwrap();
    // 60.nfs's shutdown stopped the NFS server and rpc-statd, i.e. nsmd (SIGTERM: its
    // instance left resumable, and fenced once the survivor took it over).
    assert!(
        ns[h].nsmd_pid().is_none(),
        "60.nfs stopped nsmd at shutdown: {}",
        ns[h].service_log()
    );
    ns[h].start_ctdbd();
    wait_until("both nodes OK after the restart", || healthy(&ns, 0), &ns);
    let h = holder(&ns[0], vip1).unwrap();
    wait_until(
        "svc1 active where CTDB put it",
        || ns[h].active("svc1"),
        &ns,
    );
    ns[h].mon("cli1");

    // kill -9 of ctdbd on the holder: the survivor takes the address over by force; the old
    // holder's nsmd, which still holds the lock, is fenced.
    let o = 1 - h;
    // A takeover run finished first (`ipreallocate` waits for one): the leader disables
    // takeover runs on the other nodes for 60 s during each run, so killing it mid-run (the
    // rebalancing after the restart above) leaves the survivor waiting those 60 s.
    ns[o].ctdb(&["ipreallocate"]);
    let p = ns[h].ctdbd.take().unwrap();
    drill(
        &format!("kill -9 ctdbd n{h}"),
        &svc1,
        &ns,
        &mut timings,
        || {
            p.signal(Signal::Kill).unwrap();
            p.wait(CLUSTER).unwrap();
        },
    );
    assert!(ns[o].active("svc1"), "the survivor n{o} serves svc1");
    let log = ns[o].script_log();
    assert!(
        log.contains(&format!("takeip {vip1}: svc1 active here")),
        "the event script says what it did in CTDB's log:\n{log}"
    );
    wait_until(
        "the old holder fenced",
        || ns[h].status().iter().any(|(n, _, f, _)| n == "svc1" && *f),
        &ns,
    );
    // A monitor event in flight when ctdbd died cannot list the node's public IPs: it fails
    // and releases nothing (an empty list would release every instance held here).
    let bin = Path::new(NSMCTL).parent().unwrap().to_str().unwrap();
    let out = ns[h]
        .host
        .run(
            &[
                "env",
                &format!("PATH={bin}:/usr/sbin:/usr/bin:/sbin:/bin"),
                "CTDB_BASE=/etc/ctdb",
                "/etc/ctdb/events/legacy/62.nsmd.script",
                "monitor",
            ],
            Duration::from_secs(60),
        )
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("cannot list this node's public IPs"),
        "62.nsmd's monitor without ctdbd: {:?} {said} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        ns[h].status().iter().any(|(n, _, f, _)| n == "svc1" && *f),
        "the monitor without ctdbd left svc1 as it was (fenced): {:?}",
        ns[h].status()
    );

    for n in &ns {
        for l in n
            .nsmd_log()
            .lines()
            .filter(|l| l.contains("every active service instance"))
        {
            eprintln!("n{}: {l}", n.pnn);
        }
    }
    // 60.nfs's takeover runs ran statd-callout's notify (the wrapper logged the restart it
    // did not run) and never restarted rpc-statd through it; CTDB's own path sent nothing:
    // no statd-state@ record in ctdb.tdb, and every SM_NOTIFY the clients' rpc.statd
    // received came from a public address, none from a node's.
    for n in &ns {
        let log = n.script_log();
        assert!(
            log.contains("nsmd-nfs-callout: \"stop nlockmgr\" not run")
                && log.contains("nsmd-nfs-callout: \"start nlockmgr\" not run"),
            "n{}: statd-callout's notify reached the wrapper:\n{log}",
            n.pnn
        );
        let calls = n.service_log();
        assert!(
            !calls.contains("statd-callout"),
            "n{}: statd-callout restarted a service:\n{calls}",
            n.pnn
        );
        eprintln!("n{}: service(8) calls:\n{calls}", n.pnn);
        let db = n
            .host
            .run(&["ctdb", "catdb", "ctdb.tdb"], Duration::from_secs(30))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert!(
            !db.contains("statd-state@"),
            "n{}: ctdb.tdb has statd-callout records:\n{db}",
            n.pnn
        );
    }
    for c in &clients {
        let from = c.all_senders();
        assert!(
            from.iter().all(|a| SVCS.iter().any(|s| s.2 == a)),
            "{}: SM_NOTIFY from a node's own address: {from:?}",
            c.host.name()
        );
    }
    let total = t_start.elapsed();
    eprintln!(
        "ctdb drills: svc1's clients (rpc.statd + farm) called back, from the CTDB command; \
         from takeip's nsmctl takeover reaching nsmd to the first:"
    );
    for (d, n, first, last, takeip) in &timings {
        let takeip = takeip.map_or_else(|| "-".to_owned(), |t| format!("{t:.3?}"));
        eprintln!(
            "  {d:<24} {n:>5} clients  first {first:>10.3?}  last {last:>10.3?}  takeip->first {takeip:>10}"
        );
    }
    eprintln!("ctdb drills took {total:?}");
    drop(clients);
}

/// nsmd as a drop-in under CTDB's own NFS path, as users moving from rpc.statd have it: no
/// instances, statd-callout as its HA callout, 06.nfs and 60.nfs with Debian's kernel
/// callout. 60.nfs's monitor is OK, lockd's SM_MON reaches ctdb.tdb through statd-callout's
/// add-client, and after a takeover run (whose statd-callout notify restarts rpc-statd, i.e.
/// nsmd, on both nodes) nsmd serves and is registered again. What CTDB's smnotify delivered
/// to the client is printed, not asserted (CTDB's behaviour, not nsmd's).
#[test]
fn ctdb_drop_in() {
    if !require(
        "ctdb_drop_in",
        &["ctdbd", "ctdb", "rpcbind", "rpcinfo", "rpc.statd", "ps"],
    ) {
        return;
    }
    let shared = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let lab = Lab::new("ctdbdi").unwrap();
    let vip = SVCS[0].2;
    lab.add_name(vip, &[STATD_NAME]).unwrap();
    let mut ns = vec![
        Node::new(&lab, 0, shared.path(), Mode::DropIn),
        Node::new(&lab, 1, shared.path(), Mode::DropIn),
    ];
    let c = Client::new(&lab, "cli1", SVCS[0].4, STATD_NAME);
    let t_start = Instant::now();
    for n in &mut ns {
        n.service("start");
        n.start_ctdbd();
    }
    let healthy = |ns: &[Node]| {
        ns[0]
            .host
            .run(&["ctdb", "status"], Duration::from_secs(10))
            .map(|o| String::from_utf8_lossy(&o.stdout).matches(" OK").count() == 2)
            .unwrap_or(false)
    };
    wait_until(
        "both nodes OK and the public addresses hosted",
        || healthy(&ns) && holder(&ns[0], vip).is_some(),
        &ns,
    );
    eprintln!(
        "ctdb drop-in: cluster healthy after {:?}",
        t_start.elapsed()
    );
    // The first takeover run's statd-callout notify restarts rpc-statd ("stop; sleep 2;
    // start"): nsmd does not answer in between (lockd's SM_MONs would fail then).
    let settled = |n: &Node| {
        let calls = n.service_log();
        calls.matches("stop nlockmgr").count() == calls.matches("start nlockmgr").count()
            && n.nsmd_pid().is_some()
            && n.host
                .rpc_programs()
                .is_ok_and(|r| r.iter().any(|r| r.program == 100_024))
    };
    let h = holder(&ns[0], vip).unwrap();
    wait_until(
        "the first takeover run's statd-callout notify restarted nsmd on the holder",
        || ns[h].service_log().contains("start nlockmgr") && ns.iter().all(settled),
        &ns,
    );
    let monitor_ok = |n: &Node| {
        let ev = n.ctdb(&["event", "status", "legacy", "monitor"]);
        assert!(
            ev.lines()
                .any(|l| l.starts_with("60.nfs") && l.contains(" OK ")),
            "n{}: 60.nfs's monitor OK:\n{ev}",
            n.pnn
        );
    };
    ns.iter().for_each(monitor_ok);

    // lockd on the holder monitors the client: statd-callout's add-client queues it, the
    // next monitor event's update puts it into ctdb.tdb.
    ns[h].mon("cli1");
    let key = format!("statd-state@{vip}@cli1");
    wait_until(
        &format!("{key} in ctdb.tdb"),
        || ns[h].ctdb(&["catdb", "ctdb.tdb"]).contains(&key),
        &ns,
    );

    // A takeover run: moveip, then ipreallocate (its ipreallocated event runs 60.nfs's
    // statd-callout notify on both nodes, which restarts rpc-statd).
    let pids: Vec<i32> = ns.iter().map(|n| n.nsmd_pid().unwrap()).collect();
    let seen = c.callbacks().len();
    let t0 = Instant::now();
    ns[0].ctdb(&["moveip", vip, &(1 - h).to_string()]);
    ns[0].ctdb(&["ipreallocate"]);
    for (n, pid) in ns.iter().zip(&pids) {
        wait_until(
            &format!(
                "n{}: nsmd restarted by statd-callout's notify and registered",
                n.pnn
            ),
            || n.nsmd_pid().is_some_and(|p| p != *pid) && settled(n),
            &ns,
        );
    }
    eprintln!(
        "ctdb drop-in: nsmd restarted and registered on both nodes {:?} after the moveip",
        t0.elapsed()
    );
    // It serves again (lockd's SM_MON answered), the old node's record is gone from
    // ctdb.tdb (notify deleted it after sending), and 60.nfs's monitor stays OK.
    for n in &ns {
        n.mon("cli9");
    }
    wait_until(
        "statd-callout notify deleted the sent record",
        || !ns[0].ctdb(&["catdb", "ctdb.tdb"]).contains(&key),
        &ns,
    );
    let runs = ns[0].ctdb(&["event", "status", "legacy", "monitor"]);
    let before = runs.clone();
    wait_until(
        "a monitor event after the restart",
        || ns[0].ctdb(&["event", "status", "legacy", "monitor"]) != before,
        &ns,
    );
    ns.iter().for_each(monitor_ok);
    let st = ns[0].ctdb(&["status"]);
    assert!(
        st.matches(" OK").count() == 2 && !st.contains("BANNED"),
        "ctdb status:\n{st}"
    );
    eprintln!(
        "ctdb drop-in: the client's rpc.statd got {} SM_NOTIFY ({:?}) from CTDB's smnotify, \
         {} callback(s) to its lockd",
        c.all_senders().len(),
        c.all_senders(),
        c.callbacks().len() - seen
    );
    for n in &ns {
        eprintln!("n{}: service(8) calls:\n{}", n.pnn, n.service_log());
    }
    eprintln!("ctdb drop-in took {:?}", t_start.elapsed());
}

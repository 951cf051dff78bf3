//! NFS-Ganesha as the lock manager: Debian's `ganesha.nfsd` (FSAL VFS, NFSv3, NLM) in a test
//! host with its own rpcbind and nsmd as its statd; clients are test hosts with Debian's
//! rpc.statd, a lockd stand-in and a small NLM4 client (tests/common/nlm.rs). Each case
//! also runs with Debian's rpc.statd as Ganesha's statd, for the timings beside nsmd's.
//! Network namespaces, root only.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::nlm::{Nlm4Stat, NlmClient};
use common::{Answer, LockdStandIn, answer, call, in_netns, udp_exchange, xdr_string};
use nsm_testhost::{Host, Lab, Proc, Signal, require};

const T: Duration = Duration::from_secs(30);
const TOOLS: &[&str] = &[
    "rpcbind",
    "rpcinfo",
    "rpc.statd",
    "sm-notify",
    "ganesha.nfsd",
];
/// Ganesha's grace period after a restart (seconds): long enough for the reclaim, short
/// enough for CI.
const GRACE: u32 = 10;

/// Which statd Ganesha talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Statd {
    Nsmd,
    Debian,
}

/// A whole-second idle limit for nsmd's TCP connections, shorter than the quiet period the
/// tests leave (nsmd's default is 120 s; the local lock manager's connection has none).
const IDLE_LIMIT: &str = "2";
const QUIET: Duration = Duration::from_secs(4);

/// `ganesha.conf` for one export of `dir` as `/export`.
fn ganesha_conf(dir: &Path, graceless: bool) -> String {
    format!(
        "NFS_CORE_PARAM {{\n  Protocols = 3;\n  Enable_NLM = true;\n  Enable_RQUOTA = false;\n  \
         NSM_Use_Caller_Name = false;\n  Mount_Path_Pseudo = true;\n}}\n\
         NFSV4 {{\n  Graceless = {graceless};\n  Grace_Period = {GRACE};\n  Lease_Lifetime = 5;\n  \
         RecoveryBackend = fs;\n}}\n\
         NFS_KRB5 {{ Active_krb5 = false; }}\n\
         EXPORT {{\n  Export_Id = 1;\n  Path = {};\n  Pseudo = /export;\n  Protocols = 3;\n  \
         Access_Type = RW;\n  Squash = No_Root_Squash;\n  SecType = none, sys;\n  \
         FSAL {{ Name = VFS; }}\n}}\n\
         LOG {{\n  Default_Log_Level = EVENT;\n  Components {{ NLM = DEBUG; }}\n}}\n",
        dir.display()
    )
}

/// A server host: rpcbind, a statd, Ganesha.
struct Server {
    host: Host,
    kind: Statd,
    statd: Option<Proc>,
    statd_port: u16,
    /// Debian's sm-notify, when it runs.
    notifier: Option<Proc>,
    ganesha: Option<Proc>,
    starts: usize,
    export: PathBuf,
    _rpcbind: Proc,
}

/// nsmd's state directory on a server (rpc.statd's is `/var/lib/nfs/c`, see
/// `common::debian_statd`).
const NSMD_DIR: &str = "/var/lib/nfs/s";

impl Server {
    fn new(lab: &Lab, name: &str, addr: &str, kind: Statd, export: &Path) -> Self {
        let host = lab.host(name, &[addr]).unwrap();
        let rpcbind = host.start_rpcbind().unwrap();
        host.write_file("/run/proc/sys/fs/nfs/nsm_local_state", "")
            .unwrap();
        Self {
            host,
            kind,
            statd: None,
            statd_port: 0,
            notifier: None,
            ganesha: None,
            starts: 0,
            export: export.to_owned(),
            _rpcbind: rpcbind,
        }
    }

    fn sm_dir(&self) -> &'static str {
        match self.kind {
            Statd::Nsmd => "/var/lib/nfs/s/sm",
            Statd::Debian => "/var/lib/nfs/c/sm",
        }
    }

    /// Starts the statd; `notify`: notify the peers of the previous boot (nsmd's own
    /// notifier; rpc.statd runs sm-notify).
    fn start_statd(&mut self, notify: bool) {
        self.starts += 1;
        let name = format!("statd-{}", self.starts);
        let (p, port) = match self.kind {
            Statd::Nsmd => {
                let mut argv = vec![common::NSMD, "-F", "-d"];
                if !notify {
                    argv.push("-L");
                }
                argv.extend([
                    "-P",
                    NSMD_DIR,
                    "--proc-root",
                    "/run/proc",
                    "--tcp-idle-timeout",
                    IDLE_LIMIT,
                ]);
                let p = self.host.spawn(&name, &argv).unwrap();
                let line = p
                    .wait_for_log_line("serving program 100024 version 1 on", T)
                    .unwrap();
                // Its own port (rpcbind may still list the one of the statd killed before).
                let port = line
                    .split("udp 0.0.0.0:")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in {line:?}"));
                (p, port)
            }
            Statd::Debian => {
                self.host
                    .write_file("/var/lib/nfs/c/sm.bak/.keep", "")
                    .unwrap();
                self.host.write_file("/var/lib/nfs/c/sm/.keep", "").unwrap();
                if notify {
                    // As rpc-statd-notify.service does: rpc.statd would run sm-notify on
                    // the default directory, not on -P's.
                    let bin = nsm_testhost::tool_path("sm-notify").unwrap();
                    let argv = [bin.to_str().unwrap(), "-f", "-d", "-P", "/var/lib/nfs/c"];
                    self.notifier = Some(
                        self.host
                            .spawn(&format!("sm-notify-{}", self.starts), &argv)
                            .unwrap(),
                    );
                }
                let bin = nsm_testhost::tool_path("rpc.statd").unwrap();
                let argv = [
                    bin.to_str().unwrap(),
                    "-F",
                    "-d",
                    "-L",
                    "-P",
                    "/var/lib/nfs/c",
                ];
                let p = self.host.spawn(&name, &argv).unwrap();
                let regs = self.host.wait_registered(100_024, T).unwrap();
                (p, regs[0].port)
            }
        };
        self.statd = Some(p);
        self.statd_port = port;
    }

    /// Starts Ganesha in the foreground and waits until NLM is registered.
    fn start_ganesha(&mut self, graceless: bool) {
        self.starts += 1;
        self.host
            .write_file(
                "/run/ganesha/ganesha.conf",
                ganesha_conf(&self.export, graceless),
            )
            .unwrap();
        self.host
            .write_file("/var/lib/nfs/ganesha/.keep", "")
            .unwrap();
        let p = self
            .host
            .spawn(
                &format!("ganesha-{}", self.starts),
                &[
                    "/usr/bin/ganesha.nfsd",
                    "-F",
                    "-L",
                    "STDERR",
                    "-f",
                    "/run/ganesha/ganesha.conf",
                    "-p",
                    "/run/ganesha/ganesha.pid",
                    "-N",
                    "NIV_EVENT",
                ],
            )
            .unwrap();
        self.host.wait_registered(100_021, T).unwrap_or_else(|e| {
            panic!("{e}\n{}", p.log_tail(40));
        });
        self.ganesha = Some(p);
    }

    fn ganesha(&self) -> &Proc {
        self.ganesha.as_ref().unwrap()
    }

    /// The node goes down: Ganesha and the statd die, and rpcbind forgets them (as a reboot
    /// would), so a new registration means the new process is up.
    fn stop_all(&mut self) {
        for p in [self.ganesha.take(), self.statd.take()]
            .into_iter()
            .flatten()
        {
            p.signal(Signal::Kill).unwrap();
            p.wait(T).unwrap();
        }
        let mut regs: Vec<(u32, u32)> = self
            .host
            .rpc_programs()
            .unwrap()
            .iter()
            .filter(|r| r.program != 100_000)
            .map(|r| (r.program, r.version))
            .collect();
        regs.sort_unstable();
        regs.dedup();
        for (prog, vers) in regs {
            self.host
                .run_ok(&["rpcinfo", "-d", &prog.to_string(), &vers.to_string()], T)
                .unwrap();
        }
    }

    /// The mon_names recorded in the statd's `sm/`.
    fn records(&self) -> Vec<String> {
        let dir = self.host.outside_path(self.sm_dir()).unwrap();
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// Waits until `sm/` holds exactly `want`.
    fn wait_records(&self, want: &[&str], what: &str) {
        let deadline = Instant::now() + T;
        loop {
            let got = self.records();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: sm/ holds {got:?}, not {want:?} after {T:?}\n{}",
                self.ganesha
                    .as_ref()
                    .map(|g| g.log_tail(30))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An SM_MON as Ganesha would send it (NLM 4, procedure 16), from loopback.
    fn mon(&self, mon_name: &str, my_name: &str) {
        let to: SocketAddr = format!("127.0.0.1:{}", self.statd_port).parse().unwrap();
        let mut args = xdr_string(mon_name.as_bytes());
        args.extend(xdr_string(my_name.as_bytes()));
        for w in [100_021u32, 4, 16] {
            args.extend_from_slice(&w.to_be_bytes());
        }
        args.extend_from_slice(&[0u8; 16]);
        let r = in_netns(&self.host, || {
            answer(
                9,
                &udp_exchange(to, &call(9, 100_024, 1, 2, &args)).unwrap(),
            )
        });
        assert!(matches!(&r, Answer::Accepted(0, w) if w[0] == 0), "{r:?}");
    }

    /// The lines of Ganesha's log that say a call to statd failed.
    fn statd_failures(&self) -> Vec<String> {
        self.ganesha()
            .log()
            .lines()
            .filter(|l| l.contains("SM_MON failed") || l.contains("SM_UNMON failed"))
            .map(str::to_owned)
            .collect()
    }
}

/// A client host: rpcbind, Debian's rpc.statd monitoring the server (as the kernel's lockd
/// has it do before its first lock), a lockd stand-in, and an NLM4 client of `/export/f`
/// that locks one byte of it (its own: clients' locks do not conflict; TEST asks for the
/// whole file, which conflicts with another client's lock).
struct Client {
    host: Host,
    byte: u64,
    lockd: LockdStandIn,
    statd: Option<Proc>,
    nlm: Option<NlmClient>,
    _rpcbind: Proc,
}

impl Client {
    fn new(lab: &Lab, name: &str, addr: &str, byte: u64) -> Self {
        let host = lab.host(name, &[addr]).unwrap();
        let rpcbind = host.start_rpcbind().unwrap();
        let lockd = LockdStandIn::start(&host, true);
        let (statd, _) = common::debian_statd(&host, None);
        Self {
            host,
            byte,
            lockd,
            statd: Some(statd),
            nlm: None,
            _rpcbind: rpcbind,
        }
    }

    /// SM_MON of `server` at the client's own statd (what lockd does on its first lock).
    fn monitor(&self, server: &str) {
        let port = self.host.wait_registered(100_024, T).unwrap()[0].port;
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let args = common::mon_args(server.as_bytes(), self.host.name().as_bytes(), [7; 16]);
        let r = in_netns(&self.host, || {
            answer(
                3,
                &udp_exchange(to, &call(3, 100_024, 1, 2, &args)).unwrap(),
            )
        });
        assert!(matches!(&r, Answer::Accepted(0, w) if w[0] == 0), "{r:?}");
    }

    /// Mounts the export at `server` and looks the file up.
    fn connect(&mut self, server: IpAddr) {
        let name = self.host.name().to_owned();
        let nlm = self
            .run(move || async move { NlmClient::new(server, "/export", "f", &name, 42).await });
        self.nlm = Some(nlm.unwrap());
    }

    /// Runs `f` in the client's network namespace, in a Tokio runtime of its own.
    fn run<F, Fut, R>(&self, f: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        in_netns(&self.host, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
    }

    /// What lockd does when its statd calls it back: find the server's NLM again (it may
    /// still be starting) and reclaim the lock, retrying until granted.
    fn reclaim(&mut self, server: IpAddr) {
        let deadline = Instant::now() + T;
        let name = self.host.name().to_owned();
        loop {
            let name = name.clone();
            let got = self.run(move || async move {
                let nlm = NlmClient::new(server, "/export", "f", &name, 42).await?;
                let r = nlm.lock_byte(0, true, 1).await?;
                Ok::<_, String>((nlm, r))
            });
            match got {
                Ok((nlm, Nlm4Stat::Granted)) => {
                    self.nlm = Some(nlm);
                    return;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "reclaim at {server}: {:?}",
                    other.map(|o| o.1)
                ),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A new lock, retried while the server is in the grace period of its start.
    fn lock_after_grace(&self) {
        let deadline = Instant::now() + T;
        loop {
            match self.lock(false).0 {
                Nlm4Stat::Granted => return,
                Nlm4Stat::DeniedGracePeriod if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => panic!("{}'s lock: {other:?}", self.host.name()),
            }
        }
    }

    fn nlm(&self) -> &NlmClient {
        self.nlm.as_ref().unwrap()
    }

    /// NLM4 LOCK of this client's byte of the file; how long it took.
    fn lock(&self, reclaim: bool) -> (Nlm4Stat, Duration) {
        let (nlm, at) = (self.nlm(), self.byte);
        self.run(|| async move {
            let t = Instant::now();
            let r = nlm.lock_byte(at, reclaim, 1).await.unwrap();
            (r, t.elapsed())
        })
    }

    fn unlock(&self) -> (Nlm4Stat, Duration) {
        let (nlm, at) = (self.nlm(), self.byte);
        self.run(|| async move {
            let t = Instant::now();
            let r = nlm.unlock_byte(at).await.unwrap();
            (r, t.elapsed())
        })
    }

    fn test(&self) -> Nlm4Stat {
        let nlm = self.nlm();
        self.run(|| async move { nlm.test().await.unwrap() })
    }

    /// Polls NLM4 TEST until it says `want`; when it did.
    fn wait_test(&self, want: Nlm4Stat, what: &str) -> Instant {
        let deadline = Instant::now() + T;
        loop {
            let got = self.test();
            if got == want {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: TEST still says {got:?} after {T:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The client reboots: its statd stops, Debian's sm-notify tells the server. Returns
    /// when sm-notify started.
    fn reboot(&mut self) -> Instant {
        let statd = self.statd.take().unwrap();
        statd.stop(T).unwrap();
        let bin = nsm_testhost::tool_path("sm-notify").unwrap();
        let started = Instant::now();
        let out = self
            .host
            .run(
                &[bin.to_str().unwrap(), "-f", "-d", "-P", "/var/lib/nfs/c"],
                T,
            )
            .unwrap();
        assert!(out.status.success(), "sm-notify: {out:?}");
        started
    }
}

/// Figures of one run, printed for the report.
#[derive(Debug, Default)]
struct Timings {
    lock_with_mon: Duration,
    lock_again: Duration,
    unlock_with_unmon: Duration,
    after_quiet_lock: Duration,
    after_quiet_unlock: Duration,
    reboot_to_release: Duration,
    restart_to_callback: Duration,
    ganesha_start: Duration,
    ganesha_up_to_reclaim: Duration,
}

/// Every single-node case against one statd kind.
fn single_node(kind: Statd, tag: &str) -> Timings {
    let mut t = Timings::default();
    let export = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::write(export.path().join("f"), b"").unwrap();
    let lab = Lab::new(tag).unwrap();
    // rpc.statd monitors only names it can resolve.
    lab.add_name("198.51.100.200", &["stale-client"]).unwrap();
    lab.add_name("198.51.100.201", &["other-client"]).unwrap();
    let mut srv = Server::new(&lab, "gsrv", "198.51.100.10/24", kind, export.path());
    let server: IpAddr = "198.51.100.10".parse().unwrap();
    let (ip1, ip2) = ("198.51.100.21", "198.51.100.22");
    // Ganesha monitors a client by its address (NSM_Use_Caller_Name = false); rpc.statd
    // names the record by the name it resolves the address to, nsmd by the address as given.
    let (rec1, rec2) = match kind {
        Statd::Nsmd => (ip1, ip2),
        Statd::Debian => ("gcl1", "gcl2"),
    };
    let mut c1 = Client::new(&lab, "gcl1", &format!("{ip1}/24"), 0);
    let mut c2 = Client::new(&lab, "gcl2", &format!("{ip2}/24"), 1);
    c1.monitor("gsrv");
    c2.monitor("gsrv");

    // A record of Ganesha's previous run: its SM_UNMON_ALL at start removes it, another
    // lock manager's stays.
    srv.start_statd(false);
    srv.mon("stale-client", "gsrv");
    srv.mon("other-client", "not-ganesha");
    srv.start_ganesha(true);
    srv.wait_records(&["other-client"], "Ganesha's SM_UNMON_ALL at start");
    srv.mon("other-client", "not-ganesha");

    // A granted lock: SM_MON of the client (by address, NSM_Use_Caller_Name = false); the
    // unlock: SM_UNMON.
    c1.connect(server);
    c2.connect(server);
    let (r, d) = c1.lock(false);
    assert_eq!(r, Nlm4Stat::Granted);
    t.lock_with_mon = d;
    srv.wait_records(&[rec1, "other-client"], "SM_MON on a granted lock");
    assert_eq!(c2.test(), Nlm4Stat::Denied, "c1 holds the lock");
    let (r, d) = c1.unlock();
    assert_eq!(r, Nlm4Stat::Granted);
    t.unlock_with_unmon = d;
    srv.wait_records(&["other-client"], "SM_UNMON on unlock");
    let (r, d) = c1.lock(false);
    assert_eq!(r, Nlm4Stat::Granted);
    t.lock_again = d;

    // Quiet for longer than any idle limit nsmd has (its remote limit is 2 s here) while
    // Ganesha's connection is open (a client is monitored; Ganesha closes it itself when
    // none is): the next SM_MON and SM_UNMON still answer at once.
    std::thread::sleep(QUIET);
    let (r, d) = c2.lock(false);
    assert_eq!(r, Nlm4Stat::Granted, "another byte");
    t.after_quiet_lock = d;
    srv.wait_records(
        &[rec1, rec2, "other-client"],
        "SM_MON after the quiet period",
    );
    std::thread::sleep(QUIET);
    let (r, d) = c1.unlock();
    assert_eq!(r, Nlm4Stat::Granted);
    t.after_quiet_unlock = d;
    srv.wait_records(&[rec2, "other-client"], "SM_UNMON after the quiet period");
    let (r, _) = c2.unlock();
    assert_eq!(r, Nlm4Stat::Granted);
    srv.wait_records(&["other-client"], "SM_UNMON of the last client");
    if kind == Statd::Nsmd {
        // What makes nsmd keep this connection: Ganesha (libntirpc's clnt_ncreate, as root)
        // calls from a privileged port on loopback, over TCP.
        let log = srv.statd.as_ref().unwrap().log();
        let ports: Vec<u16> = log
            .lines()
            .filter(|l| l.contains("prog=100024") && l.contains("transport=\"tcp\""))
            .filter_map(|l| l.split("peer=127.0.0.1:").nth(1))
            .filter_map(|r| r.split(' ').next()?.parse().ok())
            .collect();
        assert!(!ports.is_empty(), "Ganesha's calls in nsmd's log:\n{log}");
        assert!(
            ports.iter().all(|p| *p < 1024),
            "Ganesha's ports: {ports:?}"
        );
        eprintln!("Ganesha called nsmd from 127.0.0.1 ports {ports:?}");
    }
    assert_eq!(
        srv.statd_failures(),
        Vec::<String>::new(),
        "Ganesha's calls to statd after quiet periods"
    );

    // c1 locks, then reboots: the server's statd calls Ganesha back, Ganesha releases c1's
    // lock, and c2's TEST sees the file free.
    let (r, _) = c1.lock(false);
    assert_eq!(r, Nlm4Stat::Granted);
    srv.wait_records(&[rec1, "other-client"], "SM_MON before the reboot");
    assert_eq!(c2.test(), Nlm4Stat::Denied);
    let rebooted = c1.reboot();
    let free = c2.wait_test(Nlm4Stat::Granted, "c1's lock released after its reboot");
    t.reboot_to_release = free - rebooted;
    let (statd, _) = common::debian_statd(&c1.host, None);
    c1.statd = Some(statd);
    c1.monitor("gsrv");

    // The server restarts (statd, then Ganesha, as systemd orders them): the statd notifies
    // c1, c1 reclaims in Ganesha's grace; c2's new lock is refused until grace ends.
    let (r, _) = c1.lock(false);
    assert_eq!(r, Nlm4Stat::Granted);
    srv.wait_records(&[rec1, "other-client"], "SM_MON before the restart");
    let before = c1.lockd.calls.lock().unwrap().len();
    srv.stop_all();
    let restarted = Instant::now();
    srv.start_statd(true);
    // The notification does not wait for Ganesha (neither sm-notify nor nsmd's node
    // instance has a readiness gate): the callback is measured before Ganesha starts, the
    // reclaim once it is up, from the statd's start.
    let calls = c1.lockd.wait_for(before + 1, T);
    assert!(calls.len() > before, "c1's lockd is told of the restart");
    let (name, _, _) = common::parse_status(&calls[before].3);
    assert_eq!(name, b"gsrv");
    t.restart_to_callback = c1.lockd.arrivals.lock().unwrap()[before] - restarted;
    let ganesha_start = Instant::now();
    srv.start_ganesha(false);
    t.ganesha_start = ganesha_start.elapsed();
    let reclaim = Instant::now();
    c1.reclaim(server);
    t.ganesha_up_to_reclaim = reclaim.elapsed();
    c2.connect(server);
    let (r, _) = c2.lock(false);
    assert_eq!(r, Nlm4Stat::DeniedGracePeriod, "a new lock in grace");
    drop(srv);
    t
}

#[test]
fn ganesha_with_nsmd_and_with_rpc_statd() {
    if !require("ganesha_with_nsmd_and_with_rpc_statd", TOOLS) {
        return;
    }
    let nsmd = single_node(Statd::Nsmd, "gansn");
    let debian = single_node(Statd::Debian, "gansd");
    eprintln!("Ganesha single node, nsmd:       {nsmd:?}");
    eprintln!("Ganesha single node, rpc.statd:  {debian:?}");
}

const SVC: &str = "nfs-gsvc.example.test";
const SVC_ADDR: &str = "198.51.100.100";
const NSMCTL: &str = env!("CARGO_BIN_EXE_nsmctl");

/// A server node for the failover: rpcbind, a system bus, nsmd with the service instance
/// configured, Ganesha exporting the shared directory.
struct Node {
    srv: Server,
    _bus: Proc,
}

impl Node {
    fn new(lab: &Lab, name: &str, addr: &str, export: &Path, instances: &Path) -> Self {
        let mut srv = Server::new(lab, name, addr, Statd::Nsmd, export);
        for f in ["fs/nfsd/unlock_ip", "fs/nfsd/unlock_filesystem"] {
            srv.host.write_file(&format!("/run/proc/{f}"), "").unwrap();
        }
        // Ganesha's DBus admin interface lives on the system bus (in the host's own /run).
        srv.host.write_file("/run/dbus/.keep", "").unwrap();
        let bus = srv
            .host
            .spawn(
                "dbus-daemon",
                &[
                    "/usr/bin/dbus-daemon",
                    "--system",
                    "--nofork",
                    "--nopidfile",
                    "--nosyslog",
                ],
            )
            .unwrap();
        let sock = srv
            .host
            .outside_path("/run/dbus/system_bus_socket")
            .unwrap();
        let deadline = Instant::now() + T;
        while !sock.exists() {
            assert!(Instant::now() < deadline, "no system bus\n{}", bus.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        srv.starts += 1;
        let p = srv
            .host
            .spawn(
                "nsmd",
                &[
                    common::NSMD,
                    "-F",
                    "-d",
                    "-L",
                    "-P",
                    NSMD_DIR,
                    "--proc-root",
                    "/run/proc",
                    "--instances",
                    instances.to_str().unwrap(),
                ],
            )
            .unwrap();
        srv.statd_port = srv.host.wait_registered(100_024, T).unwrap()[0].port;
        srv.statd = Some(p);
        // With grace (Graceless would make the DBus grace a no-op too): the tests wait for
        // the start's grace to end before the failover.
        srv.start_ganesha(false);
        Self { srv, _bus: bus }
    }

    fn nsmctl(&self, args: &[&str]) -> (bool, String) {
        let mut argv = vec![NSMCTL];
        argv.extend_from_slice(args);
        let out = self.srv.host.run(&argv, Duration::from_secs(60)).unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// Failover of a service between two Ganesha nodes exporting the same directory: node A
/// dies with a client's lock; the service address moves to B, `nsmctl takeover` bumps the
/// service's state, puts B's Ganesha into grace for the address (the instance's takeover
/// command: DBus `grace "5:ADDR"`), then notifies: the client's lockd is called back with
/// the service hostname and reclaims on B in grace. Ganesha's grace is the whole server's:
/// B's own clients' new locks are refused until it ends too.
#[test]
fn ganesha_failover_with_a_service_instance() {
    if !require(
        "ganesha_failover_with_a_service_instance",
        &[TOOLS, &["dbus-daemon", "dbus-send"]].concat(),
    ) {
        return;
    }
    let shared = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let export = shared.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::write(export.join("f"), b"").unwrap();
    let (inst, state_dir) = (shared.path().join("instances"), shared.path().join("svc"));
    std::fs::create_dir_all(&inst).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(
        inst.join("svc.toml"),
        format!(
            "hostname = \"{SVC}\"\naddresses = [\"{SVC_ADDR}\"]\nstate_dir = \"{}\"\n\
             [takeover]\ncommand = [\"/usr/bin/dbus-send\", \"--system\", \"--print-reply\", \
             \"--dest=org.ganesha.nfsd\", \"/org/ganesha/nfsd/admin\", \
             \"org.ganesha.nfsd.admin.grace\", \"string:5:{SVC_ADDR}\"]\ntimeout_seconds = 20\n\
             [readiness]\nrpcbind = [100021, 100003]\ntimeout_seconds = 20\n\
             [release]\nunlock_ip = false\n",
            state_dir.display()
        ),
    )
    .unwrap();
    let lab = Lab::new("ganfo").unwrap();
    lab.add_name(SVC_ADDR, &[SVC]).unwrap();
    let mut a = Node::new(&lab, "gna", "198.51.100.60/24", &export, &inst);
    let b = Node::new(&lab, "gnb", "198.51.100.61/24", &export, &inst);
    let mut c1 = Client::new(&lab, "gfc1", "198.51.100.70/24", 0);
    let mut c2 = Client::new(&lab, "gfc2", "198.51.100.71/24", 1);
    let svc: IpAddr = SVC_ADDR.parse().unwrap();
    let cidr = format!("{SVC_ADDR}/24");

    // The service on A; c1 mounted it by its name (so its statd monitors the name) and
    // holds a lock there; c2 is a client of B's own address.
    a.srv.host.add_addr(&cidr).unwrap();
    let (ok, out) = a.nsmctl(&["takeover", "svc"]);
    assert!(ok, "takeover on A: {out}");
    c1.monitor(SVC);
    c1.connect(svc);
    c1.lock_after_grace();

    let record = "198.51.100.70";
    let sm = state_dir.join("sm");
    let deadline = Instant::now() + T;
    while !sm.join(record).exists() {
        assert!(
            Instant::now() < deadline,
            "c1 not recorded in the service's sm/"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    c2.connect("198.51.100.61".parse().unwrap());
    // B's grace after its start has ended too: c2's new lock is granted.
    c2.lock_after_grace();
    assert_eq!(c2.unlock().0, Nlm4Stat::Granted);
    assert_eq!(
        c2.lock(true).0,
        Nlm4Stat::DeniedGracePeriod,
        "outside grace, Ganesha refuses reclaims: B must enter grace for c1 to reclaim there"
    );

    // A dies (its Ganesha's locks go with it); the address moves to B, which takes over.
    a.srv.stop_all();
    a.srv.host.del_addr(&cidr).unwrap();
    b.srv.host.add_addr(&cidr).unwrap();
    for h in [&c1.host, &c2.host] {
        h.flush_neigh().unwrap();
    }
    let before = c1.lockd.calls.lock().unwrap().len();
    let moved = Instant::now();
    let (ok, out) = b.nsmctl(&["takeover", "svc"]);
    assert!(
        ok,
        "takeover on B: {out}\n{}",
        b.srv.statd.as_ref().unwrap().log_tail(30)
    );
    let took_over = moved.elapsed();
    // c1's lockd is called back with the service's name and reclaims on B, in grace.
    let calls = c1.lockd.wait_for(before + 1, T);
    assert!(calls.len() > before, "c1's lockd is told of the takeover");
    let called_back = c1.lockd.arrivals.lock().unwrap()[before] - moved;
    let (name, _, _) = common::parse_status(&calls[before].3);
    assert_eq!(name, SVC.as_bytes());
    c1.reclaim(svc);
    let reclaimed = moved.elapsed();
    b.srv
        .statd
        .as_ref()
        .unwrap()
        .wait_for_log_line("takeover command succeeded", T)
        .unwrap();
    // Ganesha took the event: grace, and the address's clients (EVENT_TAKE_IP).
    b.srv
        .ganesha()
        .wait_for_log_line(&format!("recovery event 5 nodeid -1 ip {SVC_ADDR}"), T)
        .unwrap();
    assert_eq!(
        c2.lock(false).0,
        Nlm4Stat::DeniedGracePeriod,
        "B's Ganesha is in grace (all of it: Ganesha's grace is per server)"
    );
    eprintln!(
        "Ganesha failover: takeover returned {took_over:?}, c1 called back {called_back:?}, \
         reclaimed {reclaimed:?} after the takeover began"
    );
    drop(b);
}

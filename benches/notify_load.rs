//! Load benchmark: `nsm-notify` against Debian's `sm-notify`, side by side in the same run.
//!
//! Run as root: `cargo bench --bench notify_load`. Results and the machine they came from are
//! in BENCHMARKS.md. Without root, `sm-notify` or working network namespaces it prints why and
//! exits 0 (it is run on demand, not in CI); run by `cargo test` (no `--bench` argument) it
//! does nothing.
//!
//! Layout: one lab with one isolated test host (its own network namespace, so all of
//! 127.0.0.0/8 is local there, and its own `/run` and `/var/lib/nfs`). Peer number `i`
//! (1..=N) is the host name `pNNNNNN` on the address 127.b.c.(i % 200 + 10), where
//! `(b - 1) * 256 + c = i / 200` (127.1.0.x up to peer 51,199, then 127.2.0.x, ...), listed
//! in the lab's hosts file. One responder (two threads in the host's network namespace) plays
//! rpcbind (UDP 0.0.0.0:111, PMAP v2 GETPORT answers port 32765) and statd (UDP
//! 0.0.0.0:32765, SM_NOTIFY answered with success) for every peer at once, replying from the
//! address that was asked (`IP_PKTINFO`). Every peer whose number is a multiple of 10 is dead:
//! the responder never answers anything sent to its address.
//!
//! Each trial writes N record files (nfs-utils format, one line each, my_name `server`) into
//! a fresh state directory's `sm/`, starts one tool on it and measures, from the responder's
//! records, the time from starting the tool until the last live peer's first SM_NOTIFY was
//! answered (the tools' exits are not waited for: both keep retrying the dead peers until
//! their budget). The tool's peak RSS (`VmHWM`) is polled while it runs; memory per queued
//! peer is (peak RSS with N peers − peak RSS with one dead peer) / N. A tool is stopped once
//! every live peer acknowledged, or at its time cap. The table also gives the CPU per peer
//! (the tool's user + system time ÷ N) and when the first port lookup reached the responder
//! (by then the tool had moved `sm/` to `sm.bak/` and read it: what precedes notifying).
//!
//! Environment (all optional):
//! - `NSMD_BENCH_LEVELS`: comma-separated peer counts (default `1000,10000`; 100000 works,
//!   on demand: about 2 GB of record files are written and removed per trial, and sm-notify
//!   does not finish);
//! - `NSMD_BENCH_WINDOWS`: comma-separated `--window` values for nsm-notify (default
//!   `nsm_notify::DEFAULT_WINDOW`, the flag's default; the first is also used for the
//!   baseline);
//! - `NSMD_BENCH_ROUNDS`: how often each nsm-notify trial is repeated (default 3; sm-notify
//!   runs once per level, it takes minutes);
//! - `NSMD_BENCH_SMNOTIFY_CAP`: sm-notify's time cap in seconds (default 120);
//! - `NSMD_BENCH_NSMNOTIFY_CAP`: nsm-notify's time cap in seconds (default 60);
//! - `NSMD_BENCH_HARD_NOFILE`: also run nsm-notify under this hard (and soft) limit of open
//!   files (`prlimit --nofile=L:L`), once per level and round (default 1024; 0: not).

use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, IoSliceMut, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use nsm_testhost::{Host, Lab, Proc, prerequisites, tool_path};

mod common;
use common::{cpu_time, env_list, env_or, secs};

/// The nsm-notify under test: `cargo bench` builds it with the release profile.
const NSM_NOTIFY: &str = env!("CARGO_BIN_EXE_nsm-notify");
/// The statd port the fake rpcbind hands out.
const STATD_PORT: u16 = 32765;
const PMAP_PROG: u32 = 100_000;
const SM_PROG: u32 = 100_024;
const SM_NOTIFY: u32 = 6;
/// Every tenth peer is dead.
const DEAD_EVERY: usize = 10;
/// nsm-notify's retry budget (dead peers are retried this long).
const RETRY_SECONDS: &str = "30";

/// The most peers the address plan holds (127.1.0.0 to 127.254.255.255, 200 per /24).
const MAX_PEERS: usize = 254 * 256 * 200 - 1;

/// Peer number `i` → its address.
fn peer_addr(i: usize) -> Ipv4Addr {
    assert!((1..=MAX_PEERS).contains(&i));
    let net = i / 200;
    Ipv4Addr::new(
        127,
        (1 + net / 256) as u8,
        (net % 256) as u8,
        (i % 200 + 10) as u8,
    )
}

/// An address → its peer number, if it is one.
fn peer_of(a: Ipv4Addr) -> Option<usize> {
    let o = a.octets();
    (o[0] == 127 && (1..255).contains(&o[1]) && (10..210).contains(&o[3]))
        .then(|| (usize::from(o[1] - 1) * 256 + usize::from(o[2])) * 200 + usize::from(o[3]) - 10)
        .filter(|&i| i >= 1)
}

fn peer_name(i: usize) -> String {
    format!("p{i:06}")
}

fn is_dead(i: usize) -> bool {
    i % DEAD_EVERY == 0
}

fn live_count(n: usize) -> usize {
    (1..=n).filter(|&i| !is_dead(i)).count()
}

/// What the responder saw. `acked[i]`: when peer `i`'s first SM_NOTIFY was answered;
/// `first_lookup`: when the first port lookup came (the tool had moved `sm/` to `sm.bak/`
/// and read it by then).
#[derive(Debug, Default)]
struct Seen {
    acked: Vec<Option<Instant>>,
    first_lookup: Option<Instant>,
}

#[derive(Debug)]
struct Responder {
    seen: Arc<Mutex<Seen>>,
    /// Live peers acknowledged since the last reset.
    live_acked: Arc<AtomicUsize>,
    getports: Arc<AtomicUsize>,
    notifies: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn word(m: &[u8], i: usize) -> u32 {
    m.get(i * 4..i * 4 + 4)
        .map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl Responder {
    fn start(host: &Host, max_peers: usize) -> Self {
        let seen = Arc::new(Mutex::new(Seen {
            acked: vec![None; max_peers + 1],
            first_lookup: None,
        }));
        let live_acked = Arc::new(AtomicUsize::new(0));
        let getports = Arc::new(AtomicUsize::new(0));
        let notifies = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for port in [111u16, STATD_PORT] {
            let ns = File::open(host.netns_path()).expect("open the host's netns");
            let (seen, live_acked, stop, tx) =
                (seen.clone(), live_acked.clone(), stop.clone(), tx.clone());
            let counter = if port == 111 {
                getports.clone()
            } else {
                notifies.clone()
            };
            threads.push(std::thread::spawn(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the test host");
                let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind responder");
                setsockopt(&sock, sockopt::Ipv4PacketInfo, &true).expect("IP_PKTINFO");
                setsockopt(&sock, sockopt::RcvBuf, &(8 << 20)).expect("SO_RCVBUF");
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("read timeout");
                tx.send(()).expect("started");
                serve(&sock, port, &seen, &live_acked, &counter, &stop);
            }));
        }
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the responder starts");
        }
        Self {
            seen,
            live_acked,
            getports,
            notifies,
            stop,
            threads,
        }
    }

    fn reset(&self) {
        let mut s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.acked.iter_mut().for_each(|a| *a = None);
        s.first_lookup = None;
        self.live_acked.store(0, Ordering::SeqCst);
        self.getports.store(0, Ordering::SeqCst);
        self.notifies.store(0, Ordering::SeqCst);
    }

    /// The time of the last first-acknowledgement, relative to `t0`.
    fn last_ack_after(&self, t0: Instant) -> Option<Duration> {
        let s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.acked.iter().flatten().max().map(|t| *t - t0)
    }

    /// When the first port lookup came, relative to `t0`.
    fn first_lookup_after(&self, t0: Instant) -> Option<Duration> {
        let s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.first_lookup.map(|t| t.saturating_duration_since(t0))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Answers PMAP GETPORT (port 111) or SM_NOTIFY (port 32765) for every live peer address,
/// replying from the address asked.
fn serve(
    sock: &UdpSocket,
    port: u16,
    seen: &Mutex<Seen>,
    live_acked: &AtomicUsize,
    counter: &AtomicUsize,
    stop: &AtomicBool,
) {
    let fd = sock.as_raw_fd();
    let mut buf = vec![0u8; 9000];
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    while !stop.load(Ordering::Relaxed) {
        let (n, from, dst) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let Ok(msg) = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
            else {
                continue;
            };
            let mut dst = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::Ipv4PacketInfo(pi) = c {
                        dst = Some(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)));
                    }
                }
            }
            (msg.bytes, msg.address, dst)
        };
        let (Some(from), Some(dst)) = (from, dst) else {
            continue;
        };
        let m = &buf[..n];
        // A call: xid, CALL, rpcvers 2, prog, vers, proc.
        if n < 40 || word(m, 1) != 0 || word(m, 2) != 2 {
            continue;
        }
        let Some(peer) = peer_of(dst) else {
            continue;
        };
        if is_dead(peer) {
            continue;
        }
        let (prog, proc_) = (word(m, 3), word(m, 5));
        let mut reply = Vec::with_capacity(28);
        for w in [word(m, 0), 1, 0, 0, 0, 0] {
            reply.extend_from_slice(&w.to_be_bytes());
        }
        if port == 111 {
            if prog != PMAP_PROG {
                continue;
            }
            if proc_ == 3 {
                reply.extend_from_slice(&u32::from(STATD_PORT).to_be_bytes());
            }
        } else if prog != SM_PROG {
            continue;
        }
        let pi = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let sent = sendmsg(
            fd,
            &[IoSlice::new(&reply)],
            &[ControlMessage::Ipv4PacketInfo(&pi)],
            MsgFlags::empty(),
            Some(&from),
        );
        if sent.is_err() {
            continue;
        }
        if counter.fetch_add(1, Ordering::Relaxed) == 0 && port == 111 {
            let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
            s.first_lookup.get_or_insert_with(Instant::now);
        }
        if port == STATD_PORT && proc_ == SM_NOTIFY {
            let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = s.acked.get_mut(peer)
                && slot.is_none()
            {
                *slot = Some(Instant::now());
                live_acked.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    SmNotify,
    NsmNotify {
        window: usize,
        /// Run under this hard (and soft) limit of open files.
        nofile: Option<u64>,
    },
}

impl Tool {
    fn label(self) -> String {
        match self {
            Self::SmNotify => "sm-notify (Debian)".to_owned(),
            Self::NsmNotify { window, nofile } => {
                let mut s = format!("nsm-notify --window {window}");
                if let Some(l) = nofile {
                    s.push_str(&format!(", hard nofile {l}"));
                }
                s
            }
        }
    }
}

/// One trial's outcome.
#[derive(Debug, Clone)]
struct Trial {
    tool: Tool,
    n: usize,
    live: usize,
    live_acked: usize,
    /// Until the last live peer acknowledged (or the last one that did, if not all).
    last_ack: Option<Duration>,
    /// Until the first port lookup (the files moved to `sm.bak/` and read).
    first_lookup: Option<Duration>,
    all_acked: bool,
    stopped_at: Duration,
    peak_rss_kb: u64,
    /// The most descriptors it had open at once (sampled with the RSS).
    max_fds: usize,
    /// The tool's user + system CPU time when it was stopped.
    cpu: Option<Duration>,
    getports: usize,
    notifies: usize,
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The record line nfs-utils writes for an SM_MON of `name` (my_name `server`).
fn record(name: &str) -> String {
    let addr = format!("{:08x}", u32::from_ne_bytes([127, 0, 0, 1]));
    format!(
        "{addr} 000186b5 00000003 00000010 {} {name} server\n",
        "00".repeat(16)
    )
}

struct Bench {
    host: Host,
    responder: Responder,
    sm_notify: String,
    seq: usize,
}

impl Bench {
    /// A fresh state directory (inside path) holding records for `peers`.
    fn state_dir(&mut self, peers: &[usize]) -> String {
        self.seq += 1;
        let inside = format!("/var/lib/nfs/t{}", self.seq);
        let outside = self.host.nfs_dir().join(format!("t{}", self.seq));
        let sm = outside.join("sm");
        fs::create_dir_all(&sm).expect("create sm/");
        fs::create_dir_all(outside.join("sm.bak")).expect("create sm.bak/");
        for &i in peers {
            let name = peer_name(i);
            fs::write(sm.join(&name), record(&name)).expect("write a record");
        }
        inside
    }

    fn spawn(&mut self, tool: Tool, dir: &str) -> Proc {
        let s = self.seq;
        match tool {
            Tool::SmNotify => self
                .host
                .spawn(
                    &format!("sm-notify-{s}"),
                    &[self.sm_notify.as_str(), "-d", "-f", "-P", dir],
                )
                .expect("start sm-notify"),
            Tool::NsmNotify { window, nofile } => {
                let proc_root = format!("/run/proc-{s}");
                self.host
                    .write_file(&format!("{proc_root}/sys/fs/nfs/nsm_local_state"), "0")
                    .expect("proc root");
                let pid_file = format!("/run/nsm-notify-{s}.pid");
                let window = window.to_string();
                let limit = nofile.map(|l| format!("--nofile={l}:{l}"));
                let mut argv: Vec<&str> = Vec::new();
                if let Some(l) = &limit {
                    argv.extend(["/usr/bin/prlimit", l.as_str(), "--"]);
                }
                argv.extend([
                    NSM_NOTIFY,
                    "-d",
                    "-f",
                    "-P",
                    dir,
                    "--proc-root",
                    &proc_root,
                    "--pid-file",
                    &pid_file,
                    "--retry-seconds",
                    RETRY_SECONDS,
                    "--window",
                    &window,
                ]);
                self.host
                    .spawn(&format!("nsm-notify-{s}"), &argv)
                    .expect("start nsm-notify")
            }
        }
    }

    /// Peak RSS in kB of `tool` with one dead peer queued, after it has run for a while.
    fn baseline(&mut self, tool: Tool) -> u64 {
        let dir = self.state_dir(&[DEAD_EVERY]);
        let p = self.spawn(tool, &dir);
        let until = Instant::now() + Duration::from_millis(1500);
        let mut peak = 0;
        while Instant::now() < until && p.is_running() {
            peak = peak.max(vm_hwm_kb(p.pid()).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(50));
        }
        if !p.is_running() {
            eprintln!(
                "notify_load: {} exited early in the baseline:\n{}",
                tool.label(),
                p.log_tail(20)
            );
        }
        let _ = p.stop(Duration::from_secs(2));
        peak
    }

    fn trial(&mut self, tool: Tool, n: usize, cap: Duration) -> Trial {
        let peers: Vec<usize> = (1..=n).collect();
        let dir = self.state_dir(&peers);
        let live = live_count(n);
        self.responder.reset();
        let t0 = Instant::now();
        let p = self.spawn(tool, &dir);
        let mut peak = 0;
        let mut max_fds = 0;
        let mut last_rss = Instant::now() - Duration::from_secs(1);
        let all_acked = loop {
            if self.responder.live_acked.load(Ordering::SeqCst) >= live {
                break true;
            }
            if last_rss.elapsed() >= Duration::from_millis(100) {
                peak = peak.max(vm_hwm_kb(p.pid()).unwrap_or(0));
                max_fds = max_fds.max(open_fds(p.pid()));
                last_rss = Instant::now();
            }
            if t0.elapsed() >= cap || !p.is_running() {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stopped_at = t0.elapsed();
        peak = peak.max(vm_hwm_kb(p.pid()).unwrap_or(0));
        let cpu = cpu_time(p.pid());
        if !all_acked && !p.is_running() {
            eprintln!(
                "notify_load: {} exited before every live peer acknowledged:\n{}",
                tool.label(),
                p.log_tail(20)
            );
        }
        let _ = p.stop(Duration::from_secs(2));
        let trial = Trial {
            tool,
            n,
            live,
            live_acked: self.responder.live_acked.load(Ordering::SeqCst),
            last_ack: self.responder.last_ack_after(t0),
            first_lookup: self.responder.first_lookup_after(t0),
            all_acked,
            stopped_at,
            peak_rss_kb: peak,
            max_fds,
            cpu,
            getports: self.responder.getports.load(Ordering::SeqCst),
            notifies: self.responder.notifies.load(Ordering::SeqCst),
        };
        // The state directory is not needed any more (10,000 files per trial).
        let _ = fs::remove_dir_all(self.host.nfs_dir().join(format!("t{}", self.seq)));
        trial
    }
}

fn write_hosts(hosts: &Path, max: usize) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(hosts)
        .expect("open the lab's hosts file");
    let mut s = String::new();
    for i in 1..=max {
        s.push_str(&format!("{} {}\n", peer_addr(i), peer_name(i)));
    }
    f.write_all(s.as_bytes()).expect("write the hosts file");
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("notify_load: a load benchmark; run it with `cargo bench --bench notify_load`");
        return;
    }
    let sm_notify = match prerequisites(&["sm-notify"])
        .and_then(|()| tool_path("sm-notify").ok_or_else(|| "sm-notify not found".to_owned()))
    {
        Ok(p) => p,
        Err(why) => {
            println!("notify_load: skipped: {why}");
            return;
        }
    };
    if cfg!(debug_assertions) || !NSM_NOTIFY.contains("/release/") {
        eprintln!(
            "notify_load: WARNING: not an optimised build ({NSM_NOTIFY}); figures are \
             meaningless. Use `cargo bench`."
        );
    }
    let levels = env_list("NSMD_BENCH_LEVELS", "1000,10000");
    let windows = env_list(
        "NSMD_BENCH_WINDOWS",
        &nsm_notify::DEFAULT_WINDOW.to_string(),
    );
    let rounds: usize = env_or("NSMD_BENCH_ROUNDS", 3);
    let sm_cap = Duration::from_secs_f64(env_or("NSMD_BENCH_SMNOTIFY_CAP", 120.0));
    let nsm_cap = Duration::from_secs_f64(env_or("NSMD_BENCH_NSMNOTIFY_CAP", 60.0));
    let hard_nofile: u64 = env_or("NSMD_BENCH_HARD_NOFILE", 1024);
    let max = levels.iter().copied().max().unwrap_or(0);
    assert!(max <= MAX_PEERS, "at most {MAX_PEERS} peers");

    let lab = Lab::new("notify_load").expect("create the lab");
    write_hosts(lab.hosts_file(), max);
    let host = lab.isolated_host("nl").expect("create the test host");
    let responder = Responder::start(&host, max);
    let mut bench = Bench {
        host,
        responder,
        sm_notify: sm_notify.to_string_lossy().into_owned(),
        seq: 0,
    };
    eprintln!("notify_load: nsm-notify {NSM_NOTIFY}");
    eprintln!("notify_load: sm-notify {}", bench.sm_notify);
    eprintln!(
        "notify_load: levels {levels:?}, windows {windows:?}, {rounds} nsm-notify rounds, caps: \
         sm-notify {} s, nsm-notify {} s",
        sm_cap.as_secs_f64(),
        nsm_cap.as_secs_f64()
    );
    let started = Instant::now();

    let w0 = windows
        .first()
        .copied()
        .unwrap_or(nsm_notify::DEFAULT_WINDOW);
    let base_sm = bench.baseline(Tool::SmNotify);
    let base_nsm = bench.baseline(Tool::NsmNotify {
        window: w0,
        nofile: None,
    });
    eprintln!("notify_load: baseline peak RSS: sm-notify {base_sm} kB, nsm-notify {base_nsm} kB");

    let mut trials = Vec::new();
    for &n in &levels {
        for round in 1..=rounds {
            let mut tools: Vec<Tool> = windows
                .iter()
                .map(|&window| Tool::NsmNotify {
                    window,
                    nofile: None,
                })
                .collect();
            if hard_nofile > 0 {
                tools.push(Tool::NsmNotify {
                    window: w0,
                    nofile: Some(hard_nofile),
                });
            }
            for &tool in &tools {
                let t = bench.trial(tool, n, nsm_cap);
                eprintln!(
                    "notify_load: N={n} round {round} {}: {}/{} live acked, last at {} s, \
                     peak {} kB, at most {} open files, CPU {} s, {} GETPORT and {} SM_NOTIFY \
                     answered ({:.0} s so far)",
                    t.tool.label(),
                    t.live_acked,
                    t.live,
                    secs(t.last_ack),
                    t.peak_rss_kb,
                    t.max_fds,
                    secs(t.cpu),
                    t.getports,
                    t.notifies,
                    started.elapsed().as_secs_f64()
                );
                trials.push(t);
            }
        }
        let t = bench.trial(Tool::SmNotify, n, sm_cap);
        eprintln!(
            "notify_load: N={n} sm-notify: {}/{} live acked, last at {} s, peak {} kB, {} \
             GETPORT and {} SM_NOTIFY answered ({:.0} s so far)",
            t.live_acked,
            t.live,
            secs(t.last_ack),
            t.peak_rss_kb,
            t.getports,
            t.notifies,
            started.elapsed().as_secs_f64()
        );
        trials.push(t);
    }

    println!();
    println!(
        "| N | tool | time to all live acked (s) | live acked | peak RSS (kB) | memory per \
         queued peer (B) | open files (max) | CPU (s) | CPU per peer (µs) | first port lookup \
         (s) | sm-notify ÷ this |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &levels {
        let sm = trials.iter().find(|t| t.n == n && t.tool == Tool::SmNotify);
        // sm-notify's time: to all live acked, or at least its cap when it did not get there.
        let sm_time = sm.map(|t| {
            if t.all_acked {
                (t.last_ack.unwrap_or(t.stopped_at), false)
            } else {
                (t.stopped_at, true)
            }
        });
        for t in trials.iter().filter(|t| t.n == n) {
            let base = if t.tool == Tool::SmNotify {
                base_sm
            } else {
                base_nsm
            };
            let per_peer = (t.peak_rss_kb.saturating_sub(base) * 1024) as f64 / n as f64;
            let time = if t.all_acked {
                secs(t.last_ack)
            } else {
                format!(
                    "not reached at {:.0} (last ack {})",
                    t.stopped_at.as_secs_f64(),
                    secs(t.last_ack)
                )
            };
            let ratio = match (sm_time, t.all_acked, t.last_ack) {
                (_, _, _) if t.tool == Tool::SmNotify => "1".to_owned(),
                (Some((s, capped)), true, Some(mine)) => format!(
                    "{}{:.1}",
                    if capped { "> " } else { "" },
                    s.as_secs_f64() / mine.as_secs_f64()
                ),
                _ => "-".to_owned(),
            };
            let cpu_per_peer = t.cpu.map_or_else(
                || "-".to_owned(),
                |c| format!("{:.0}", c.as_secs_f64() * 1e6 / n as f64),
            );
            println!(
                "| {n} | {} | {time} | {}/{} | {} | {per_peer:.0} | {} | {} | {cpu_per_peer} | \
                 {} | {ratio} |",
                t.tool.label(),
                t.live_acked,
                t.live,
                t.peak_rss_kb,
                t.max_fds,
                secs(t.cpu),
                secs(t.first_lookup)
            );
        }
    }
    println!(
        "\nbaseline peak RSS with one dead peer: sm-notify {base_sm} kB, nsm-notify {base_nsm} kB"
    );
    eprintln!(
        "notify_load: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

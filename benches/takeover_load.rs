//! Load benchmark: a service instance's takeover (`nsmctl takeover`) with N clients in its
//! `sm/`, and, in the same run, Debian's `sm-notify -v HOSTNAME` on a copy of the same `sm/`
//! (how HA setups notify with nfs-utils).
//!
//! Run as root: `cargo bench --bench takeover_load`. Results and the machine they came from
//! are in BENCHMARKS.md. Without root, `sm-notify`, `rpcbind` or working network namespaces it
//! prints why and exits 0 (it is run on demand, not in CI); run by `cargo test` (no `--bench`
//! argument) it does nothing.
//!
//! Layout: one lab, two hosts on its bridge; the peers are IPv6 (the service address too).
//! - `srv` (198.51.100.10/24 and 2001:db8::10/64, and the service address 2001:db8::50/64,
//!   named `nfs-svc.example.test` in the lab's hosts file) runs Debian's rpcbind and the real
//!   nsmd (`nsmd -F -L --instances DIR`, the release build), whose instance `svc`
//!   (`addresses = ["2001:db8::50"]`) has its state directory on the disk
//!   (`CARGO_TARGET_TMPDIR`). The service's lock manager and NFS server (100021, 100003) are
//!   registered with rpcbind before the takeover (PMAP SET from this process; the readiness
//!   gate only asks rpcbind), as when the cluster manager starts the NFS server before the
//!   takeover. Its `/proc/sys/fs/nfs/nsm_local_state` is a private file (bind mount in the
//!   host's mount namespace), so sm-notify's write never reaches the kernel.
//! - `farm` (2001:db8::20/64) holds the block 2001:db8::1:0:0/96 of the documentation prefix
//!   as a local route on `lo`, and `srv` routes that block via 2001:db8::20, so srv's
//!   neighbour table holds one entry for all peers and no peer address needs DAD. Peer number
//!   `i` (1..=N) is the host name `pNNNNNN` on 2001:db8::1:0:0 + `i` (2001:db8::1:1:86a0 for
//!   100,000), listed in the lab's hosts file (as peers' names are in HA setups; both tools
//!   read it). One responder (two threads in the farm's network namespace, UDP sockets on
//!   `[::]`) plays rpcbind (port 111: portmapper v2 GETPORT and rpcbind v3/v4 GETADDR → port
//!   32765 / the universal address of `[peer]:32765`; nsmd asks v4, Debian's sm-notify v3)
//!   and statd (port 32765, SM_NOTIFY → success) for every peer, replying from the address
//!   asked (`IPV6_RECVPKTINFO` in, `IPV6_PKTINFO` out; the socket has `IP_FREEBIND`, without
//!   which the kernel refuses a source that only a local route holds). Every peer whose
//!   number is a multiple of 10 is dead: nothing sent to its address is answered. For each
//!   peer the responder keeps the instant of its first acknowledged SM_NOTIFY and that
//!   SM_NOTIFY's mon_name and state, and it counts SM_NOTIFYs that did not come from the
//!   service address.
//!
//! One nsmd trial: write N record files (nfs-utils format) into a fresh `sm/` and the state
//! `41` into `state`, start nsmd (idle: the instance is not taken over at start), then run
//! `nsmctl --json takeover svc` and stop when every live peer acknowledged (or at the cap).
//! - takeover command: from starting `nsmctl` (through `nsenter`) until it returned. nsmd
//!   answers it once the instance is claimed, its state bumped, `sm/` retired to `sm.bak/`, its
//!   records opened, its addresses answered and the readiness gate open: the instance is
//!   active, and its notification starts then.
//! - ready → last ack: from `nsmctl takeover` returning until the responder answered the last
//!   live peer's first SM_NOTIFY. command → last ack: the sum, what an operator waits.
//! - checked at the responder: the distinct live peers acknowledged (must be every live peer),
//!   each with mon_name = the service hostname and the state nsmctl reported, odd and larger
//!   than the state before, and sent from the service address; dead peers must have been
//!   tried (an rpcbind lookup reached their address).
//!   A failed check makes the benchmark fail (after it printed its table).
//! - nsmd's `VmRSS` and `VmHWM` (`/proc/PID/status`) are sampled every 50 ms: RSS before the
//!   takeover (idle, after start-up), the peak (largest VmRSS sample, and VmHWM, which also
//!   holds start-up's peak) until the last ack, and RSS 1 s after it (nsmd still retries the
//!   dead peers then). CPU: nsmd's user + system time from the command until the last ack.
//! - `sm.bak/` down to the dead: from the command until `sm.bak/` holds only the dead peers'
//!   files (a peer's file leaves it once the peer acknowledged), watched (every 250 ms) up to
//!   `NSMD_BENCH_BAK_WAIT` after the last ack.
//!
//! The sm-notify trial: a fresh copy of the same N records and state, then
//! `sm-notify -d -f -v nfs-svc.example.test -P DIR` on `srv` (it retires `sm/` itself, bumps
//! the state and binds to the service address); from its start until the last live peer's
//! acknowledgement, with the same checks (the state: the one it wrote to `state`); stopped
//! then or at its cap.
//!
//! Environment (all optional):
//! - `NSMD_BENCH_LEVELS`: comma-separated client counts (default `1000,10000`; `100000` on
//!   demand: 100,000 record files are written per tool, and sm-notify does not finish);
//! - `NSMD_BENCH_ROUNDS`: nsmd trials per level (default 1);
//! - `NSMD_BENCH_SMNOTIFY_CAP`: sm-notify's cap in seconds (default 60; 0: sm-notify is not
//!   run);
//! - `NSMD_BENCH_NSMD_CAP`: the cap of an nsmd takeover in seconds (default 120);
//! - `NSMD_BENCH_BAK_WAIT`: how long `sm.bak/` is watched after the last ack, in seconds
//!   (default 30);
//! - `NSMD_BENCH_STATE_BASE`: where the state directories are made (default
//!   `CARGO_TARGET_TMPDIR`, i.e. `target/tmp`). The file system and its mount options are
//!   printed: with `discard`, every removal from `sm.bak/` waits for the device.

use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, IoSliceMut, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use nsm_testhost::{Host, Lab, Proc, prerequisites, tool_path};

mod common;
use common::{cpu_time, env_list, env_or, secs};
use nsm_xdr::rpcbind::uaddr;

/// The nsmd and nsmctl under test: `cargo bench` builds them with the release profile.
const NSMD: &str = env!("CARGO_BIN_EXE_nsmd");
const NSMCTL: &str = env!("CARGO_BIN_EXE_nsmctl");
/// Where the service's state directories go (on the disk, as shared storage would be).
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

const SRV_ADDR4: &str = "198.51.100.10";
const SRV_ADDR: &str = "2001:db8::10";
const FARM_ADDR: &str = "2001:db8::20";
const SVC_ADDR: &str = "2001:db8::50";
const SVC_HOSTNAME: &str = "nfs-svc.example.test";
/// The peers' block: a /96 of the documentation prefix's 2001:db8::/64.
const PEER_NET: &str = "2001:db8::1:0:0/96";
/// The peers' block's first address (peer `i` is this + `i`).
const PEER_BASE: u128 = 0x2001_0db8_0000_0000_0000_0001_0000_0000;
/// The state in the service's `state` file before each trial (odd: it ran before).
const STATE_BEFORE: i32 = 41;

/// The statd port the responder's rpcbind hands out.
const STATD_PORT: u16 = 32765;
const PMAP_PROG: u32 = 100_000;
/// rpcbind's GETADDR (v3, v4) and portmapper's GETPORT (v2) share procedure number 3.
const RPCB_LOOKUP: u32 = 3;
const SM_PROG: u32 = 100_024;
const SM_NOTIFY: u32 = 6;
/// Every tenth peer is dead.
const DEAD_EVERY: usize = 10;
/// The most peers the names hold (`p000001` … `p999999`; the /96 holds many more).
const MAX_PEERS: usize = 999_999;

/// Peer number `i` → its address.
fn peer_addr(i: usize) -> Ipv6Addr {
    assert!((1..=MAX_PEERS).contains(&i));
    Ipv6Addr::from(PEER_BASE + i as u128)
}

/// An address → its peer number, if it is one.
fn peer_of(a: Ipv6Addr) -> Option<usize> {
    u128::from(a)
        .checked_sub(PEER_BASE)
        .and_then(|i| usize::try_from(i).ok())
        .filter(|i| (1..=MAX_PEERS).contains(i))
}

fn peer_name(i: usize) -> String {
    format!("p{i:06}")
}

fn is_dead(i: usize) -> bool {
    i % DEAD_EVERY == 0
}

fn live_count(n: usize) -> usize {
    n - n / DEAD_EVERY
}

/// A peer's first acknowledged SM_NOTIFY.
#[derive(Debug, Clone)]
struct Ack {
    at: Instant,
    mon_name: Vec<u8>,
    state: i32,
}

/// What the responder saw since its last reset.
#[derive(Debug, Default)]
struct Seen {
    /// By peer number.
    acked: Vec<Option<Ack>>,
    /// By peer number: any call (an rpcbind lookup or SM_NOTIFY) reached its address.
    asked: Vec<bool>,
}

/// Calls the responder answered since its last reset.
#[derive(Debug, Default)]
struct Answered {
    /// rpcbind lookups by version: portmapper v2 GETPORT, rpcbind v3 and v4 GETADDR.
    lookups: [AtomicUsize; 3],
    notifies: AtomicUsize,
    /// SM_NOTIFYs that did not come from the service address.
    foreign_source: AtomicUsize,
}

impl Answered {
    fn lookups(&self) -> [usize; 3] {
        [0, 1, 2].map(|v| self.lookups[v].load(Ordering::SeqCst))
    }

    fn reset(&self) {
        for c in self
            .lookups
            .iter()
            .chain([&self.notifies, &self.foreign_source])
        {
            c.store(0, Ordering::SeqCst);
        }
    }
}

#[derive(Debug)]
struct Responder {
    seen: Arc<Mutex<Seen>>,
    /// Live peers acknowledged since the last reset.
    live_acked: Arc<AtomicUsize>,
    answered: Arc<Answered>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn word(m: &[u8], i: usize) -> u32 {
    m.get(i * 4..i * 4 + 4)
        .map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// An XDR opaque (length, bytes, padding) at byte `at`: (bytes, the offset after it).
fn opaque(m: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = usize::try_from(u32::from_be_bytes(m.get(at..at + 4)?.try_into().ok()?)).ok()?;
    let body = m.get(at + 4..at + 4 + len)?;
    Some((body, at + 4 + len.div_ceil(4) * 4))
}

/// SM_NOTIFY's arguments (`stat_chge`: mon_name, state) after the call header.
fn notify_args(m: &[u8]) -> Option<(Vec<u8>, i32)> {
    // xid, CALL, rpcvers, prog, vers, proc, then the credential and the verifier (flavour
    // and opaque body each).
    let (_, at) = opaque(m, 28)?;
    let (_, at) = opaque(m, at + 4)?;
    let (name, at) = opaque(m, at)?;
    let state = i32::from_be_bytes(m.get(at..at + 4)?.try_into().ok()?);
    Some((name.to_vec(), state))
}

impl Responder {
    fn start(host: &Host, max_peers: usize) -> Self {
        let seen = Arc::new(Mutex::new(Seen {
            acked: vec![None; max_peers + 1],
            asked: vec![false; max_peers + 1],
        }));
        let live_acked = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(Answered::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for port in [111u16, STATD_PORT] {
            let ns = File::open(host.netns_path()).expect("open the farm's netns");
            let (seen, live_acked, answered, stop, tx) = (
                seen.clone(),
                live_acked.clone(),
                answered.clone(),
                stop.clone(),
                tx.clone(),
            );
            threads.push(std::thread::spawn(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the farm");
                let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).expect("bind responder");
                setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true).expect("IPV6_RECVPKTINFO");
                // The `local` route delivers the peers' block to this socket, but a reply's
                // IPV6_PKTINFO source must be an address of an interface (EINVAL) unless the
                // socket may use nonlocal addresses: IP_FREEBIND (IPV6_FREEBIND's flag too).
                setsockopt(&sock, sockopt::IpFreebind, &true).expect("IP_FREEBIND");
                setsockopt(&sock, sockopt::RcvBufForce, &(8 << 20)).expect("SO_RCVBUFFORCE");
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("read timeout");
                tx.send(()).expect("started");
                serve(&sock, port, &seen, &live_acked, &answered, &stop);
            }));
        }
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the responder starts");
        }
        Self {
            seen,
            live_acked,
            answered,
            stop,
            threads,
        }
    }

    fn reset(&self) {
        let mut s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.acked.iter_mut().for_each(|a| *a = None);
        s.asked.iter_mut().for_each(|a| *a = false);
        self.live_acked.store(0, Ordering::SeqCst);
        self.answered.reset();
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

/// Answers rpcbind lookups (port 111: portmapper v2 GETPORT, rpcbind v3/v4 GETADDR) or
/// SM_NOTIFY (port 32765) for every live peer address, replying from the address asked.
fn serve(
    sock: &UdpSocket,
    port: u16,
    seen: &Mutex<Seen>,
    live_acked: &AtomicUsize,
    answered: &Answered,
    stop: &AtomicBool,
) {
    let fd = sock.as_raw_fd();
    let mut buf = vec![0u8; 9000];
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let mut warned = false;
    let svc_addr: Ipv6Addr = SVC_ADDR.parse().expect("the service address");
    while !stop.load(Ordering::Relaxed) {
        let (n, from, dst) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let Ok(msg) = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
            else {
                continue;
            };
            let mut dst = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::Ipv6PacketInfo(pi) = c {
                        dst = Some(Ipv6Addr::from(pi.ipi6_addr.s6_addr));
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
        if let Some(a) = seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .asked
            .get_mut(peer)
        {
            *a = true;
        }
        if is_dead(peer) {
            continue;
        }
        let (prog, vers, proc_) = (word(m, 3), word(m, 4), word(m, 5));
        let mut reply = Vec::with_capacity(64);
        for w in [word(m, 0), 1, 0, 0, 0, 0] {
            reply.extend_from_slice(&w.to_be_bytes());
        }
        let mut notified = None;
        let counter = if port == 111 {
            if prog != PMAP_PROG {
                continue;
            }
            let Some(slot) = vers
                .checked_sub(2)
                .and_then(|v| answered.lookups.get(v as usize))
            else {
                continue;
            };
            if proc_ == RPCB_LOOKUP {
                if vers == 2 {
                    reply.extend_from_slice(&u32::from(STATD_PORT).to_be_bytes());
                } else {
                    // The universal address of the peer's statd: a string.
                    let ua = uaddr(SocketAddr::new(IpAddr::V6(dst), STATD_PORT));
                    reply.extend_from_slice(&(ua.len() as u32).to_be_bytes());
                    reply.extend_from_slice(ua.as_bytes());
                    reply.resize(reply.len() + ua.len().next_multiple_of(4) - ua.len(), 0);
                }
            }
            slot
        } else if prog != SM_PROG {
            continue;
        } else {
            if proc_ == SM_NOTIFY {
                let Some(args) = notify_args(m) else {
                    continue;
                };
                notified = Some(args);
            }
            &answered.notifies
        };
        let pi = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: dst.octets(),
            },
            ipi6_ifindex: 0,
        };
        let sent = sendmsg(
            fd,
            &[IoSlice::new(&reply)],
            &[ControlMessage::Ipv6PacketInfo(&pi)],
            MsgFlags::empty(),
            Some(&from),
        );
        if let Err(e) = sent {
            if !warned {
                eprintln!("takeover_load: the farm could not answer {from} from {dst}: {e}");
                warned = true;
            }
            continue;
        }
        counter.fetch_add(1, Ordering::Relaxed);
        if notified.is_some() && from.ip() != svc_addr {
            answered.foreign_source.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((mon_name, state)) = notified {
            let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = s.acked.get_mut(peer)
                && slot.is_none()
            {
                *slot = Some(Ack {
                    at: Instant::now(),
                    mon_name,
                    state,
                });
                live_acked.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// `VmRSS` and `VmHWM` of `pid` in kB.
fn rss_hwm_kb(pid: u32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples a process's VmRSS every 50 ms on a thread of its own until dropped.
struct Sampler {
    max_rss: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let max_rss = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max_rss.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some((rss, _)) = rss_hwm_kb(pid) {
                    m.fetch_max(rss as usize, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            max_rss,
            stop,
            thread: Some(thread),
        }
    }

    /// The largest VmRSS sampled so far, in kB.
    fn max_rss_kb(&self) -> u64 {
        self.max_rss.load(Ordering::Relaxed) as u64
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The record line nfs-utils writes for an SM_MON of `name` (my_name: the service's name).
fn record(name: &str, i: usize) -> String {
    let addr = format!("{:08x}", u32::from_ne_bytes([127, 0, 0, 1]));
    let cookie: String = (i as u128)
        .to_be_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{addr} 000186b5 00000003 00000010 {cookie} {name} {SVC_HOSTNAME}\n")
}

/// The state number in `DIR/state` (nfs-utils' format: a native-endian 32-bit integer).
fn read_state(dir: &Path) -> i32 {
    fs::read(dir.join("state"))
        .ok()
        .and_then(|b| Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?)))
        .unwrap_or(0)
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, Iterator::count)
}

/// Waits (at most `wait`) until `DIR/sm.bak/` holds at most `dead` files; the time from `t0`
/// when it did.
fn bak_settled(dir: &Path, dead: usize, t0: Instant, wait: Duration) -> Option<Duration> {
    let until = Instant::now() + wait;
    loop {
        if count_files(&dir.join("sm.bak")) <= dead {
            return Some(t0.elapsed());
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Nsmd,
    SmNotify,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Self::Nsmd => "nsmd (nsmctl takeover)",
            Self::SmNotify => "sm-notify -v (Debian)",
        }
    }
}

/// One trial's outcome.
#[derive(Debug, Clone)]
struct Trial {
    tool: Tool,
    n: usize,
    live: usize,
    /// Distinct live peers acknowledged.
    live_acked: usize,
    /// Dead peers whose address was tried at all.
    dead_tried: usize,
    /// Acknowledged SM_NOTIFYs whose mon_name or state was not the expected one.
    wrong: usize,
    all_acked: bool,
    /// nsmd: until `nsmctl takeover` returned.
    command: Option<Duration>,
    /// From the start of the command (nsmctl or sm-notify) to the last live peer's first ack
    /// (or the last ack there was).
    to_last_ack: Option<Duration>,
    /// When the trial was stopped (all live acked, or the cap), from the same start.
    stopped_at: Duration,
    state: i32,
    rss_before_kb: u64,
    max_rss_kb: u64,
    hwm_kb: u64,
    rss_after_kb: u64,
    cpu: Option<Duration>,
    /// rpcbind lookups answered: v2 GETPORT, v3 GETADDR, v4 GETADDR.
    lookups: [usize; 3],
    notifies: usize,
    /// SM_NOTIFYs from another address than the service's.
    foreign_source: usize,
    /// From the start of the command until `sm.bak/` held only the dead peers' files (the
    /// acknowledged ones removed), if it got there within `NSMD_BENCH_BAK_WAIT` after the last ack.
    bak_settled: Option<Duration>,
}

impl Trial {
    fn ready_to_last(&self) -> Option<Duration> {
        Some(self.to_last_ack?.saturating_sub(self.command?))
    }
}

struct Bench {
    srv: Host,
    farm_responder: Responder,
    sm_notify: String,
    seq: usize,
    /// How long `sm.bak/` is watched after the last ack.
    bak_wait: Duration,
    /// Where the state directories are made.
    base: PathBuf,
    /// Directories of finished trials, removed at the end: removing 100,000 files takes
    /// minutes on a file system mounted with `discard`, and would disturb the next trial.
    used: Vec<PathBuf>,
    /// Kept alive for the hosts and rpcbind.
    _farm: Host,
    _rpcbind: Proc,
    _lab: Lab,
}

/// PMAP SET of `prog`/`vers` on UDP `port` at the rpcbind on 127.0.0.1 (inside a netns).
fn pmap_set(prog: u32, vers: u32, port: u16) -> Result<(), String> {
    let mut msg = Vec::new();
    for w in [0x7a6b_0001, 0, 2, PMAP_PROG, 2, 1, 0, 0, 0, 0] {
        msg.extend_from_slice(&u32::to_be_bytes(w));
    }
    for w in [prog, vers, 17, u32::from(port)] {
        msg.extend_from_slice(&w.to_be_bytes());
    }
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let to: SocketAddr = "127.0.0.1:111".parse().map_err(|e| format!("{e}"))?;
    s.send_to(&msg, to).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
    // xid, REPLY, MSG_ACCEPTED, verf (0, 0), SUCCESS, bool.
    if n >= 28 && word(&buf, 5) == 0 && word(&buf, 6) == 1 {
        Ok(())
    } else {
        Err(format!("PMAP SET {prog}/{vers} refused"))
    }
}

impl Bench {
    fn new(sm_notify: String, max: usize, bak_wait: Duration, base: PathBuf) -> Self {
        let lab = Lab::new("takeover_load").expect("create the lab");
        let mut hosts = String::new();
        for i in 1..=max {
            hosts.push_str(&format!("{} {}\n", peer_addr(i), peer_name(i)));
        }
        OpenOptions::new()
            .append(true)
            .open(lab.hosts_file())
            .and_then(|mut f| f.write_all(hosts.as_bytes()))
            .expect("write the lab's hosts file");
        lab.add_name(SVC_ADDR, &[SVC_HOSTNAME])
            .expect("name the service address");
        let srv = lab
            .host(
                "srv",
                &[&format!("{SRV_ADDR4}/24"), &format!("{SRV_ADDR}/64")],
            )
            .expect("create host srv");
        let farm = lab
            .host("farm", &[&format!("{FARM_ADDR}/64")])
            .expect("create host farm");
        srv.add_addr(&format!("{SVC_ADDR}/64"))
            .expect("add the service address");
        let t = Duration::from_secs(10);
        farm.run_ok(
            &["ip", "-6", "route", "add", "local", PEER_NET, "dev", "lo"],
            t,
        )
        .expect("the farm takes the peers' block");
        // One neighbour entry on srv (the farm's) instead of one per peer.
        srv.run_ok(&["ip", "-6", "route", "add", PEER_NET, "via", FARM_ADDR], t)
            .expect("route the peers' block to the farm");
        let rpcbind = srv.start_rpcbind().expect("start rpcbind on srv");
        // The service's lock manager and NFS server, as the readiness gate sees them.
        srv.in_netns(|| {
            for (prog, vers, port) in [(100_021, 4, 4045), (100_021, 1, 4045), (100_003, 3, 2049)] {
                pmap_set(prog, vers, port)?;
            }
            Ok::<(), String>(())
        })
        .expect("enter srv")
        .expect("register 100021 and 100003 with srv's rpcbind");
        // nsmd's kernel files, and a private nsm_local_state for sm-notify.
        for f in [
            "sys/fs/nfs/nsm_local_state",
            "fs/nfsd/unlock_ip",
            "fs/nfsd/unlock_filesystem",
        ] {
            srv.write_file(&format!("/run/proc/{f}"), "")
                .expect("write srv's kernel files");
        }
        if Path::new("/proc/sys/fs/nfs/nsm_local_state").exists() {
            srv.run_ok(
                &[
                    "mount",
                    "--bind",
                    "/run/proc/sys/fs/nfs/nsm_local_state",
                    "/proc/sys/fs/nfs/nsm_local_state",
                ],
                t,
            )
            .expect("give srv a private nsm_local_state");
        }
        let farm_responder = Responder::start(&farm, max);
        Self {
            srv,
            farm_responder,
            sm_notify,
            seq: 0,
            bak_wait,
            base,
            used: Vec::new(),
            _farm: farm,
            _rpcbind: rpcbind,
            _lab: lab,
        }
    }

    /// A fresh state directory holding `n` records and the state [`STATE_BEFORE`].
    fn state_dir(&mut self, n: usize) -> PathBuf {
        self.seq += 1;
        let dir = self
            .base
            .join(format!("takeover_load-{}-{}", std::process::id(), self.seq));
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove an old state directory");
        }
        let sm = dir.join("sm");
        fs::create_dir_all(&sm).expect("create sm/");
        fs::create_dir_all(dir.join("sm.bak")).expect("create sm.bak/");
        for i in 1..=n {
            let name = peer_name(i);
            fs::write(sm.join(&name), record(&name, i)).expect("write a record");
        }
        fs::write(dir.join("state"), STATE_BEFORE.to_ne_bytes()).expect("write the state");
        let d = File::open(&dir).expect("open the state directory");
        nix::unistd::syncfs(&d).expect("syncfs");
        dir
    }

    /// Checks the responder's records against `n` peers and the expected `state`: (live
    /// acked, dead tried, acks with another mon_name or state, last ack).
    fn check(&self, n: usize, state: i32) -> (usize, usize, usize, Option<Instant>) {
        let s = self
            .farm_responder
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let acks: Vec<&Ack> = s.acked[1..=n].iter().flatten().collect();
        let wrong = acks
            .iter()
            .filter(|a| a.mon_name != SVC_HOSTNAME.as_bytes() || a.state != state)
            .count();
        let dead_tried = (1..=n).filter(|&i| is_dead(i) && s.asked[i]).count();
        let last = acks.iter().map(|a| a.at).max();
        (acks.len(), dead_tried, wrong, last)
    }

    fn nsmd_trial(&mut self, n: usize, cap: Duration) -> Trial {
        let dir = self.state_dir(n);
        let inst = dir.with_extension("instances");
        fs::create_dir_all(&inst).expect("create the instances directory");
        fs::write(
            inst.join("svc.toml"),
            format!(
                "hostname = \"{SVC_HOSTNAME}\"\naddresses = [\"{SVC_ADDR}\"]\n\
                 state_dir = \"{}\"\n\
                 [notify]\nnames = [\"{SVC_HOSTNAME}\"]\nretry_seconds = 30\n\
                 [readiness]\nrpcbind = [100021, 100003]\ntimeout_seconds = 60\n",
                dir.display()
            ),
        )
        .expect("write the instance file");
        let live = live_count(n);
        let inst_s = inst.to_string_lossy().into_owned();
        let p = self
            .srv
            .spawn(
                &format!("nsmd-{}", self.seq),
                &[
                    NSMD,
                    "-F",
                    "-L",
                    "-P",
                    "/var/lib/nfs/node",
                    "--proc-root",
                    "/run/proc",
                    "--instances",
                    &inst_s,
                ],
            )
            .expect("start nsmd");
        p.wait_for_log_line(
            "serving program 100024 version 1 on",
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("nsmd did not start: {e}\n{}", p.log_tail(20)));
        self.srv
            .wait_registered(SM_PROG, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("nsmd did not register: {e}\n{}", p.log_tail(20)));
        std::thread::sleep(Duration::from_millis(500));
        let pid = p.pid();
        let (rss_before_kb, _) = rss_hwm_kb(pid).expect("nsmd's /proc/PID/status");
        self.farm_responder.reset();
        let sampler = Sampler::start(pid);
        let cpu0 = cpu_time(pid);
        let t0 = Instant::now();
        let out = self
            .srv
            .run(
                &[NSMCTL, "--json", "--timeout", "600", "takeover", "svc"],
                Duration::from_secs(660),
            )
            .expect("run nsmctl takeover");
        let command = t0.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "nsmctl takeover svc failed: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            p.log_tail(20)
        );
        let reply: serde_json::Value = serde_json::from_str(&stdout).expect("nsmctl's JSON answer");
        let state = reply["state"]
            .as_i64()
            .and_then(|s| i32::try_from(s).ok())
            .unwrap_or_else(|| panic!("no state in nsmctl's answer: {stdout}"));
        assert_eq!(
            read_state(&dir),
            state,
            "the state nsmctl reported is not the one in {}/state",
            dir.display()
        );
        let all_acked = self.wait_acked(live, t0, cap, &p);
        let stopped_at = t0.elapsed();
        let cpu = cpu_time(pid).zip(cpu0).map(|(b, a)| b.saturating_sub(a));
        let (_, hwm_kb) = rss_hwm_kb(pid).unwrap_or_default();
        let max_rss_kb = sampler.max_rss_kb();
        drop(sampler);
        std::thread::sleep(Duration::from_secs(1));
        let (rss_after_kb, _) = rss_hwm_kb(pid).unwrap_or_default();
        let bak_settled = all_acked
            .then(|| bak_settled(&dir, n - live, t0, self.bak_wait))
            .flatten();
        let (live_acked, dead_tried, wrong, last) = self.check(n, state);
        let t = Trial {
            tool: Tool::Nsmd,
            n,
            live,
            live_acked,
            dead_tried,
            wrong,
            all_acked,
            command: Some(command),
            to_last_ack: last.map(|l| l - t0),
            stopped_at,
            state,
            rss_before_kb,
            max_rss_kb,
            hwm_kb,
            rss_after_kb,
            cpu,
            lookups: self.farm_responder.answered.lookups(),
            notifies: self.farm_responder.answered.notifies.load(Ordering::SeqCst),
            foreign_source: self
                .farm_responder
                .answered
                .foreign_source
                .load(Ordering::SeqCst),
            bak_settled,
        };
        let rel = self
            .srv
            .run(&[NSMCTL, "release", "svc"], Duration::from_secs(60))
            .expect("run nsmctl release");
        if !rel.status.success() {
            eprintln!(
                "takeover_load: nsmctl release svc failed: {}",
                String::from_utf8_lossy(&rel.stderr)
            );
        }
        p.stop(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("stopping nsmd: {e}"));
        self.used.extend([dir, inst]);
        t
    }

    fn sm_notify_trial(&mut self, n: usize, cap: Duration) -> Trial {
        let dir = self.state_dir(n);
        let live = live_count(n);
        self.farm_responder.reset();
        let dir_s = dir.to_string_lossy().into_owned();
        let t0 = Instant::now();
        let p = self
            .srv
            .spawn(
                &format!("sm-notify-{}", self.seq),
                &[
                    self.sm_notify.as_str(),
                    "-d",
                    "-f",
                    "-v",
                    SVC_HOSTNAME,
                    "-P",
                    &dir_s,
                ],
            )
            .expect("start sm-notify");
        let pid = p.pid();
        let sampler = Sampler::start(pid);
        let all_acked = self.wait_acked(live, t0, cap, &p);
        let stopped_at = t0.elapsed();
        let cpu = cpu_time(pid);
        let (_, hwm_kb) = rss_hwm_kb(pid).unwrap_or_default();
        let max_rss_kb = sampler.max_rss_kb();
        drop(sampler);
        let bak_settled = all_acked
            .then(|| bak_settled(&dir, n - live, t0, self.bak_wait))
            .flatten();
        let _ = p.stop(Duration::from_secs(2));
        // The state sm-notify wrote: what every SM_NOTIFY must carry.
        let state = read_state(&dir);
        let (live_acked, dead_tried, wrong, last) = self.check(n, state);
        self.used.push(dir);
        Trial {
            tool: Tool::SmNotify,
            n,
            live,
            live_acked,
            dead_tried,
            wrong,
            all_acked,
            command: None,
            to_last_ack: last.map(|l| l - t0),
            stopped_at,
            state,
            rss_before_kb: 0,
            max_rss_kb,
            hwm_kb,
            rss_after_kb: 0,
            cpu,
            lookups: self.farm_responder.answered.lookups(),
            notifies: self.farm_responder.answered.notifies.load(Ordering::SeqCst),
            foreign_source: self
                .farm_responder
                .answered
                .foreign_source
                .load(Ordering::SeqCst),
            bak_settled,
        }
    }

    /// Waits until `live` peers acknowledged: true, or false at `cap` after `t0` or when `p`
    /// exited.
    fn wait_acked(&self, live: usize, t0: Instant, cap: Duration, p: &Proc) -> bool {
        loop {
            if self.farm_responder.live_acked.load(Ordering::SeqCst) >= live {
                return true;
            }
            if t0.elapsed() >= cap {
                return false;
            }
            if !p.is_running() {
                eprintln!(
                    "takeover_load: {} exited before every live peer acknowledged:\n{}",
                    p.name(),
                    p.log_tail(20)
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The file system holding `path` and its mount options (`/proc/self/mounts`, longest
/// matching mount point): a `discard` mount makes every unlink wait for the device.
fn mount_of(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (point, fstype, options) = (*f.get(1)?, f.get(2)?, f.get(3)?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{fstype} on {point}, {options}")))
        })
        .max()
        .map_or_else(|| "file system unknown".to_owned(), |(_, s)| s)
}

fn kb(v: u64) -> String {
    if v == 0 {
        "-".to_owned()
    } else {
        v.to_string()
    }
}

fn print_trial(t: &Trial, started: Instant) {
    eprintln!(
        "takeover_load: N={} {}: command {} s, last live ack at {} s after it started \
         ({} s after the command returned), {}/{} live acked, {} of {} dead tried, {} wrong \
         name/state, state {}, RSS before {} kB, max {} kB, VmHWM {} kB, after {} kB, CPU {} s, \
         rpcbind lookups answered: {} GETPORT v2, {} GETADDR v3, {} GETADDR v4; {} SM_NOTIFY \
         answered ({} not from the service address), sm.bak/ down to the dead peers at {} s ({:.0} s \
         so far)",
        t.n,
        t.tool.label(),
        secs(t.command),
        secs(t.to_last_ack),
        secs(t.ready_to_last()),
        t.live_acked,
        t.live,
        t.dead_tried,
        t.n - t.live,
        t.wrong,
        t.state,
        t.rss_before_kb,
        t.max_rss_kb,
        t.hwm_kb,
        t.rss_after_kb,
        secs(t.cpu),
        t.lookups[0],
        t.lookups[1],
        t.lookups[2],
        t.notifies,
        t.foreign_source,
        secs(t.bak_settled),
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "takeover_load: a load benchmark; run it with `cargo bench --bench takeover_load`"
        );
        return;
    }
    let sm_notify = match prerequisites(&["sm-notify", "rpcbind", "rpcinfo"])
        .and_then(|()| tool_path("sm-notify").ok_or_else(|| "sm-notify not found".to_owned()))
    {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(why) => {
            println!("takeover_load: skipped: {why}");
            return;
        }
    };
    if cfg!(debug_assertions) || !NSMD.contains("/release/") {
        eprintln!(
            "takeover_load: WARNING: not an optimised build ({NSMD}); figures are meaningless. \
             Use `cargo bench`."
        );
    }
    let levels = env_list("NSMD_BENCH_LEVELS", "1000,10000");
    let rounds: usize = env_or("NSMD_BENCH_ROUNDS", 1);
    let sm_cap = Duration::from_secs_f64(env_or("NSMD_BENCH_SMNOTIFY_CAP", 60.0));
    let nsmd_cap = Duration::from_secs_f64(env_or("NSMD_BENCH_NSMD_CAP", 120.0));
    let bak_wait = Duration::from_secs_f64(env_or("NSMD_BENCH_BAK_WAIT", 30.0));
    let base = PathBuf::from(env_or("NSMD_BENCH_STATE_BASE", TARGET_TMP.to_owned()));
    let max = levels.iter().copied().max().unwrap_or(0);
    assert!(
        max <= MAX_PEERS,
        "at most {MAX_PEERS} clients (the address plan)"
    );
    let started = Instant::now();
    let mut bench = Bench::new(sm_notify, max, bak_wait, base.clone());
    eprintln!("takeover_load: nsmd {NSMD}, nsmctl {NSMCTL}");
    eprintln!("takeover_load: sm-notify {}", bench.sm_notify);
    eprintln!(
        "takeover_load: levels {levels:?}, {rounds} nsmd round(s), caps: nsmd {} s, sm-notify {} \
         s, state directories in {} ({})",
        nsmd_cap.as_secs_f64(),
        sm_cap.as_secs_f64(),
        base.display(),
        mount_of(&base)
    );

    let mut trials = Vec::new();
    let mut failed = Vec::new();
    for &n in &levels {
        for _ in 0..rounds {
            let t = bench.nsmd_trial(n, nsmd_cap);
            print_trial(&t, started);
            // What a takeover must do: every live peer told, with the service's name and a
            // state it has not seen.
            if !t.all_acked || t.live_acked != t.live {
                failed.push(format!(
                    "N={n}: {}/{} live peers acknowledged",
                    t.live_acked, t.live
                ));
            }
            if t.wrong > 0 {
                failed.push(format!(
                    "N={n}: {} SM_NOTIFYs with another mon_name or state",
                    t.wrong
                ));
            }
            if t.foreign_source > 0 {
                failed.push(format!(
                    "N={n}: {} SM_NOTIFYs not sent from the service address {SVC_ADDR}",
                    t.foreign_source
                ));
            }
            if t.dead_tried != t.n - t.live {
                failed.push(format!(
                    "N={n}: {} of {} dead peers tried",
                    t.dead_tried,
                    t.n - t.live
                ));
            }
            if t.state % 2 == 0 || t.state <= STATE_BEFORE {
                failed.push(format!("N={n}: state {} after {STATE_BEFORE}", t.state));
            }
            trials.push(t);
        }
        if !sm_cap.is_zero() {
            let t = bench.sm_notify_trial(n, sm_cap);
            print_trial(&t, started);
            trials.push(t);
        }
    }

    println!();
    println!(
        "| N | tool | takeover command (s) | ready → last live ack (s) | command → last live ack \
         (s) | live acked | dead tried | wrong name/state | state | RSS before (kB) | max RSS \
         (kB) | VmHWM (kB) | RSS 1 s after (kB) | (max − before) / N (B) | CPU (s) | sm.bak/ \
         down to the dead (s) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in &trials {
        let last = if t.all_acked {
            secs(t.to_last_ack)
        } else {
            format!(
                "not reached in {:.0} (last ack {})",
                t.stopped_at.as_secs_f64(),
                secs(t.to_last_ack)
            )
        };
        let per = if t.rss_before_kb > 0 {
            format!(
                "{:.0}",
                (t.max_rss_kb.saturating_sub(t.rss_before_kb) * 1024) as f64 / t.n as f64
            )
        } else {
            "-".to_owned()
        };
        println!(
            "| {} | {} | {} | {} | {last} | {}/{} | {}/{} | {} | {}→{} | {} | {} | {} | {} | {per} \
             | {} | {} |",
            t.n,
            t.tool.label(),
            secs(t.command),
            if t.all_acked {
                secs(t.ready_to_last())
            } else {
                "-".to_owned()
            },
            t.live_acked,
            t.live,
            t.dead_tried,
            t.n - t.live,
            t.wrong,
            STATE_BEFORE,
            t.state,
            kb(t.rss_before_kb),
            t.max_rss_kb,
            t.hwm_kb,
            kb(t.rss_after_kb),
            secs(t.cpu),
            secs(t.bak_settled)
        );
    }
    println!(
        "\nnsmd: \"takeover command\" = `nsmctl takeover svc` started → returned (claimed, state \
         bumped, sm/ retired, records opened, readiness gate open); \"ready\" = that return. \
         sm-notify: from its start. CPU: nsmd's from the command to the last live ack; \
         sm-notify's until it was stopped. \
         \"sm.bak/ down to the dead\": from the start until only the dead peers' files were left \
         in sm.bak/ (watched up to NSMD_BENCH_BAK_WAIT after the last ack)."
    );
    eprintln!(
        "takeover_load: measured in {:.0} s; removing the state directories",
        started.elapsed().as_secs_f64()
    );
    for d in bench.used.drain(..) {
        let _ = fs::remove_dir_all(d);
    }
    eprintln!(
        "takeover_load: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "takeover_load: the takeover did not do its work:\n{}",
        failed.join("\n")
    );
}

//! Load benchmark: nsmd against Debian's rpc.statd, side by side in the same run, driven by the
//! same load generator (RPC calls built byte by byte, sent over 127.0.0.1 as lockd sends them).
//!
//! Run as root: `cargo bench --bench statd_load`. Results and the machine they came from are in
//! BENCHMARKS.md. Without root, rpcbind or rpc.statd it prints why and exits 0 (it is run on
//! demand, not in CI); run by `cargo test` (no `--bench` argument) it does nothing.
//!
//! Layout: one lab with two isolated test hosts, `nsmd` and `statd` (each its own network
//! namespace, rpcbind, `/run` and `/var/lib/nfs`; both see the lab's hosts file). Each trial
//! starts one daemon on a fresh state directory that already holds N record files (nfs-utils
//! format, the same bytes for both), waits until the daemon is idle, measures one thing from a
//! generator in the same network namespace, stops the daemon and checks that `sm/` holds N
//! files plus one per SM_MON counted. Every SM_MON counted was answered `stat_succ`, or the
//! benchmark panics. Rounds alternate which implementation goes first.
//!
//! Both daemons run as `-F -L -p PORT -P DIR` (no `-d`: per-request debug logging would be
//! measured too; `-L`: no SM_NOTIFY at start). Measurements, each at N = 0, 1,000 and 10,000
//! pre-populated records where it applies:
//! - `disk-floor`: the disk alone, from the generator, with each implementation's write pattern;
//! - `null-*`, `stat-*`: SM_NULL and SM_STAT from one caller (UDP, or one TCP connection kept
//!   open) and from 8 concurrent callers (`-x8`), each waiting for its reply before the next
//!   call: on a small machine these callers cost about as much CPU per call as the daemon;
//! - `null-*-w64/8`, `stat-*-w64/8` (the saturating generator): one generator thread keeps 64
//!   calls outstanding over 8 UDP sockets or TCP connections and sends a new call for each
//!   reply, the calls of one wake-up in one system call per socket, so the daemon's own cost
//!   per call bounds the rate (after 0.3 s of warm-up, not counted); then the same generator
//!   against a bare UDP responder (the floor: the kernel's cost of a UDP call, nothing else);
//! - `mon-percall-N`: serial SM_MON, a new TCP connection per call (lockd's pattern: the kernel
//!   makes a fresh rpc_clnt per upcall); `mon-persistent-N`: serial SM_MON on one connection
//!   (at N = 10,000 in the first round only: rpc.statd needs ~15 s per call there);
//! - `mon-x64-percall-N` (N = 0 and 1,000): 64 concurrent callers, a connection per call;
//! - `unmon-percall-N` (N > 0): serial SM_UNMON of pre-populated records spread over the N, a
//!   connection per call;
//! - `start-N`: the daemon on N records named by address literals (`10.64.0.42`, as the
//!   kernel's lockd names peers by default): the time from its spawn until rpcbind answers
//!   GETPORT for program 100024 (polled every 2 ms), and its RSS once idle; the table gives the
//!   bytes of RSS per record added between two levels.
//!
//! Each reports calls/s, p50 and p99 latency (client side, connect included for `percall`) and the
//! daemon's CPU time per call (all its threads, sampled from /proc before and after).
//!
//! The hosts file of a trial holds exactly the names that trial uses (the N pre-populated names
//! and the names it may send, each on its own address, since rpc.statd refuses names it cannot
//! resolve and treats two names with one address as the same host).
//!
//! Environment (all optional):
//! - `NSMD_BENCH_ROUNDS`: rounds (default 3);
//! - `NSMD_BENCH_SECS`: time cap of each SM_MON measurement in seconds (default 8); SM_NULL and
//!   SM_STAT run for a quarter of it;
//! - `NSMD_BENCH_SERIAL_MAX`: calls per serial SM_MON measurement (default 300);
//! - `NSMD_BENCH_ONLY`: comma-separated groups to run: `floor` (the disk alone), `null`
//!   (SM_NULL and SM_STAT, callers waiting for replies), `window` (SM_NULL and SM_STAT, the
//!   saturating generator, and the bare UDP responder), `start`, `serial`, `unmon`,
//!   `concurrent` (default all);
//! - `NSMD_BENCH_LEVELS`: comma-separated pre-populated record counts (default `0,1000,10000`;
//!   up to 100,000 on demand, e.g. `1000,10000,100000`);
//! - `NSMD_BENCH_STATD_MON_MAX`: rpc.statd's SM_MON and SM_UNMON measurements run only at levels
//!   up to this (default 10,000: one SM_MON takes it 15–30 s there, and its cost grows with N);
//! - `NSMD_BENCH_HOSTS=measured`: leave the pre-populated names out of the hosts file. A
//!   diagnostic: every name lookup then reads a short file (rpc.statd's duplicate check, where
//!   the lookups of pre-populated names now fail; nsmd looks nothing up for SM_MON).
//! - `NSMD_BENCH_PIN=1`: run the generator on CPU 0 and the daemon (all its threads) on CPU 1,
//!   so that they do not compete for one CPU and the daemon's cost per call bounds the rate;
//! - `NSMD_BENCH_CALLERS`: concurrent SM_NULL / SM_STAT callers, and the saturating
//!   generator's sockets (default 8);
//! - `NSMD_BENCH_WINDOW`: calls the saturating generator keeps outstanding (default 64).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, CpuSet, sched_setaffinity, setns};
use nix::unistd::Pid;
use nsm_testhost::{Host, Lab, Proc, prerequisites, tool_path};

/// The nsmd under test: `cargo bench` builds it with the release profile.
const NSMD: &str = env!("CARGO_BIN_EXE_nsmd");
/// Cargo's scratch directory for benches, on the target directory's file system.
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

const SM_PROG: u32 = 100_024;
const SM_NULL: u32 = 0;
const SM_STAT: u32 = 1;
const SM_MON: u32 = 2;
const SM_UNMON: u32 = 3;
const MY_NAME: &[u8] = b"nfs-server-a";
/// The name SM_STAT asks about (in every trial's hosts file).
const STAT_NAME: &str = "stat-target.bench.test";
/// How long one reply may take before the benchmark fails (rpc.statd needs seconds per SM_MON
/// with 10,000 records, and a queue of 64 callers waits for all of them).
const IO_TIMEOUT: Duration = Duration::from_secs(300);
/// Serial SM_MON: at most this many calls per measurement (default).
const SERIAL_MAX: usize = 300;
/// Concurrent SM_MON: this many callers, at most this many calls in all.
const CONC_WORKERS: usize = 64;
const CONC_MAX: usize = 64 * 24;
/// Concurrent SM_NULL / SM_STAT callers (default).
const SIMPLE_WORKERS: usize = 8;
/// Calls the saturating generator keeps outstanding (default).
const WINDOW: usize = 64;
/// With `NSMD_BENCH_PIN=1`: the CPU of the generator's callers and the CPU of the daemon.
const GENERATOR_CPU: usize = 0;
const DAEMON_CPU: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Impl {
    Nsmd,
    Statd,
    /// The bare UDP responder ([`udp_echo`]): the floor, not an NSM.
    Echo,
}

impl Impl {
    fn label(self) -> &'static str {
        match self {
            Self::Nsmd => "nsmd",
            Self::Statd => "rpc.statd",
            Self::Echo => "bare echo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    /// One TCP connection per caller, kept open.
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// A new TCP connection for every call, as the kernel's fresh rpc_clnt per upcall.
    PerCall,
    /// One TCP connection per caller, kept open.
    Persistent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Mon(Conn),
    Null(Transport),
    Stat(Transport),
    /// SM_UNMON of a pre-populated record, a new TCP connection per call (as lockd).
    Unmon,
}

impl Op {
    fn what(self) -> &'static str {
        match self {
            Self::Mon(_) => "SM_MON",
            Self::Unmon => "SM_UNMON",
            Self::Null(_) => "SM_NULL",
            Self::Stat(_) => "SM_STAT",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RPC, by hand (RFC 5531, AUTH_NONE, as lockd's nsm_create sends it).

fn call_msg(xid: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + args.len());
    for w in [xid, 0, 2, SM_PROG, 1, proc_, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(args);
    v
}

fn xdr_string(v: &mut Vec<u8>, s: &[u8]) {
    let len = u32::try_from(s.len()).expect("string length fits in u32");
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(s);
    v.resize(v.len() + (4 - s.len() % 4) % 4, 0);
}

/// A distinct 16-byte cookie per call.
fn cookie(i: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&(i as u64).to_be_bytes());
    c[8..].copy_from_slice(b"nsmdload");
    c
}

/// SM_MON arguments: mon_name, my_name, NLM 100021/3/16, cookie.
fn mon_args(mon_name: &[u8], priv_: [u8; 16]) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + mon_name.len());
    xdr_string(&mut v, mon_name);
    xdr_string(&mut v, MY_NAME);
    for w in [100_021u32, 3, 16] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(&priv_);
    v
}

/// SM_UNMON arguments: mon_name, my_name, NLM 100021/3/16.
fn unmon_args(mon_name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(48 + mon_name.len());
    xdr_string(&mut v, mon_name);
    xdr_string(&mut v, MY_NAME);
    for w in [100_021u32, 3, 16] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

/// Checks that `reply` is an accepted, successful reply to `xid`; returns the result words.
fn result_words(xid: u32, reply: &[u8]) -> Result<Vec<u32>, String> {
    if reply.len() % 4 != 0 {
        return Err(format!("reply of {} bytes is not whole words", reply.len()));
    }
    let w: Vec<u32> = reply
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if w.len() < 6 || w[0] != xid || w[1] != 1 {
        return Err(format!("not a reply to xid {xid:#x}: {w:x?}"));
    }
    if w[2] != 0 {
        return Err(format!("call denied: {w:x?}"));
    }
    let verf_words = (w[4] as usize).div_ceil(4);
    let at = 5 + verf_words;
    match w.get(at) {
        Some(0) => Ok(w[at + 1..].to_vec()),
        Some(stat) => Err(format!("accept_stat {stat}")),
        None => Err(format!("truncated reply {w:x?}")),
    }
}

struct TcpClient {
    s: TcpStream,
}

impl TcpClient {
    fn connect(addr: SocketAddr) -> io::Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(Self { s })
    }

    /// Sends one record and reads the reply record (any number of fragments).
    fn exchange(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        let mark = 0x8000_0000u32 | u32::try_from(msg.len()).expect("small message");
        let mut rec = Vec::with_capacity(4 + msg.len());
        rec.extend_from_slice(&mark.to_be_bytes());
        rec.extend_from_slice(msg);
        self.s.write_all(&rec)?;
        let mut out = Vec::new();
        loop {
            let mut hdr = [0u8; 4];
            self.s.read_exact(&mut hdr)?;
            let mark = u32::from_be_bytes(hdr);
            let len = (mark & 0x7fff_ffff) as usize;
            if out.len() + len > 1 << 20 {
                return Err(io::Error::other("reply record larger than 1 MiB"));
            }
            let start = out.len();
            out.resize(start + len, 0);
            self.s.read_exact(&mut out[start..])?;
            if mark & 0x8000_0000 != 0 {
                return Ok(out);
            }
        }
    }
}

struct UdpClient {
    s: UdpSocket,
    buf: Vec<u8>,
}

impl UdpClient {
    fn connect(addr: SocketAddr) -> io::Result<Self> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            s,
            buf: vec![0; 65536],
        })
    }

    /// Sends one datagram and waits for the reply to `xid` (no retransmission: on loopback a
    /// lost datagram is a failure worth seeing).
    fn exchange(&mut self, xid: u32, msg: &[u8]) -> io::Result<Vec<u8>> {
        self.s.send(msg)?;
        loop {
            let n = self.s.recv(&mut self.buf)?;
            if n >= 4 && self.buf[..4] == xid.to_be_bytes() {
                return Ok(self.buf[..n].to_vec());
            }
        }
    }
}

/// One caller of the generator.
struct Caller<'a> {
    addr: SocketAddr,
    op: Op,
    names: &'a [String],
    tcp: Option<TcpClient>,
    udp: Option<UdpClient>,
    xid: u32,
    stat_args: Vec<u8>,
    /// The state number of the first successful SM_MON; every later one must carry it too.
    state: Option<u32>,
}

impl<'a> Caller<'a> {
    fn new(addr: SocketAddr, op: Op, names: &'a [String], worker: usize) -> io::Result<Self> {
        let (tcp, udp) = match op {
            Op::Mon(Conn::PerCall) | Op::Unmon => (None, None),
            Op::Mon(Conn::Persistent) | Op::Null(Transport::Tcp) | Op::Stat(Transport::Tcp) => {
                (Some(TcpClient::connect(addr)?), None)
            }
            Op::Null(Transport::Udp) | Op::Stat(Transport::Udp) => {
                (None, Some(UdpClient::connect(addr)?))
            }
        };
        let mut stat_args = Vec::new();
        xdr_string(&mut stat_args, STAT_NAME.as_bytes());
        Ok(Self {
            addr,
            op,
            names,
            tcp,
            udp,
            xid: u32::try_from(worker).expect("few workers") << 24,
            stat_args,
            state: None,
        })
    }

    /// Makes call number `i` (of the measurement); returns its latency. Panics on any failure.
    fn call(&mut self, i: usize) -> Duration {
        self.xid = self.xid.wrapping_add(1);
        let xid = self.xid;
        let msg = match self.op {
            Op::Mon(_) => call_msg(xid, SM_MON, &mon_args(self.names[i].as_bytes(), cookie(i))),
            Op::Unmon => call_msg(xid, SM_UNMON, &unmon_args(self.names[i].as_bytes())),
            Op::Null(_) => call_msg(xid, SM_NULL, &[]),
            Op::Stat(_) => call_msg(xid, SM_STAT, &self.stat_args),
        };
        let start = Instant::now();
        let reply = match (self.op, &mut self.tcp, &mut self.udp) {
            (Op::Mon(Conn::PerCall) | Op::Unmon, _, _) => {
                TcpClient::connect(self.addr).and_then(|mut c| c.exchange(&msg))
            }
            (_, Some(tcp), _) => tcp.exchange(&msg),
            (_, _, Some(udp)) => udp.exchange(xid, &msg),
            _ => unreachable!("a caller has the connection its operation needs"),
        };
        let took = start.elapsed();
        let what = self.op.what();
        let name = match self.op {
            Op::Mon(_) | Op::Unmon => self.names[i].as_str(),
            Op::Stat(_) => STAT_NAME,
            Op::Null(_) => "",
        };
        let reply = reply.unwrap_or_else(|e| panic!("{what} {name} (call #{i}): {e}"));
        let words =
            result_words(xid, &reply).unwrap_or_else(|e| panic!("{what} {name} (call #{i}): {e}"));
        match self.op {
            Op::Null(_) => assert!(words.is_empty(), "SM_NULL answered {words:?}"),
            Op::Unmon => {
                assert!(
                    words.len() == 1 && words[0] != u32::MAX,
                    "{what} {name} (call #{i}) was not answered with a state: {words:?}"
                );
                let first = *self.state.get_or_insert(words[0]);
                assert_eq!(words[0], first, "{what} {name}: the state number changed");
            }
            Op::Mon(_) | Op::Stat(_) => {
                assert!(
                    words.len() == 2 && words[0] == 0 && words[1] != u32::MAX,
                    "{what} {name} (call #{i}) was not answered stat_succ: {words:?}"
                );
                if matches!(self.op, Op::Mon(_)) {
                    let first = *self.state.get_or_insert(words[1]);
                    assert_eq!(words[1], first, "{what} {name}: the state number changed");
                }
            }
        }
        took
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// The outcome of one measurement.
#[derive(Debug, Clone)]
struct Run {
    /// Calls answered.
    n: usize,
    /// From the moment every caller was ready until the last reply.
    elapsed: Duration,
    /// Sorted latencies.
    lat: Vec<Duration>,
    /// CPU time the daemon used meanwhile (all its threads, user and system).
    server_cpu: Option<Duration>,
}

impl Run {
    /// The run of the calls whose latencies are `lat` (in any order), over `elapsed`, with the
    /// CPU time the daemon `pid` used since `cpu_before`.
    fn new(
        elapsed: Duration,
        mut lat: Vec<Duration>,
        pid: u32,
        cpu_before: Option<CpuSample>,
    ) -> Self {
        let server_cpu = cpu_before
            .zip(CpuSample::take(pid))
            .map(|(a, b)| b.since(&a));
        lat.sort_unstable();
        Self {
            n: lat.len(),
            elapsed,
            lat,
            server_cpu,
        }
    }

    fn ops(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile, in milliseconds.
    fn pct_ms(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * self.lat.len() as f64).ceil() as usize).clamp(1, self.lat.len());
        self.lat[rank - 1].as_secs_f64() * 1e3
    }

    /// The daemon's CPU time per call, in microseconds.
    fn cpu_us(&self) -> f64 {
        self.server_cpu
            .map_or(f64::NAN, |c| c.as_secs_f64() * 1e6 / self.n as f64)
    }
}

/// A running daemon under test.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    /// The host it runs in (the generator joins its network namespace).
    host: &'a Host,
    pid: u32,
    /// Where it listens: 127.0.0.1 and its port.
    addr: SocketAddr,
    /// From the daemon's spawn until rpcbind answered GETPORT for SM_PROG (the start-up time).
    registered_after: Duration,
}

/// Runs `op` from `workers` callers inside `host`'s network namespace, until `max_ops` calls
/// were started or `cap` passed (each caller finishes its call in flight; at least one call).
fn drive(
    target: &Target<'_>,
    op: Op,
    names: &[String],
    workers: usize,
    max_ops: usize,
    cap: Duration,
) -> Run {
    assert!(!matches!(op, Op::Mon(_) | Op::Unmon) || max_ops <= names.len());
    let Target {
        host, pid, addr, ..
    } = *target;
    let ns_path = host.netns_path().to_owned();
    let pin = pinned();
    if pin {
        pin_process(pid, DAEMON_CPU);
    }
    let next = AtomicUsize::new(0);
    let barrier = Barrier::new(workers + 1);
    let lats = Mutex::new(Vec::new());
    let mut start = Instant::now();
    let cpu_before = CpuSample::take(pid);
    std::thread::scope(|s| {
        for w in 0..workers {
            let (ns_path, next, barrier, lats) = (&ns_path, &next, &barrier, &lats);
            s.spawn(move || {
                // Never panic before the barrier: the others would wait for us forever.
                let joined = File::open(ns_path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()));
                let joined = joined.and_then(|()| {
                    if pin {
                        pin_thread(Pid::from_raw(0), GENERATOR_CPU)
                            .map_err(|e| format!("pinning to CPU {GENERATOR_CPU}: {e}"))
                    } else {
                        Ok(())
                    }
                });
                let caller = joined.and_then(|()| {
                    Caller::new(addr, op, names, w).map_err(|e| format!("connecting: {e}"))
                });
                barrier.wait();
                let mut caller = caller.unwrap_or_else(|e| panic!("caller {w}: {e}"));
                let deadline = Instant::now() + cap;
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max_ops || (i > 0 && Instant::now() >= deadline) {
                        break;
                    }
                    mine.push(caller.call(i));
                }
                lats.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(mine);
            });
        }
        barrier.wait();
        start = Instant::now();
    });
    let lat = lats.into_inner().unwrap_or_else(PoisonError::into_inner);
    Run::new(start.elapsed(), lat, pid, cpu_before)
}

// ---------------------------------------------------------------------------------------------
// The saturating generator.

/// The saturating generator's warm-up before each measurement.
const WINDOW_WARMUP: Duration = Duration::from_millis(300);

/// Replies read per `recvmmsg` by the saturating generator.
const WINDOW_RECV_BATCH: usize = 64;

/// Outstanding calls of a [`Flow`]: xid -> when it was sent.
type Sent = std::collections::HashMap<u32, Instant>;

/// One socket of the saturating generator, with the calls it has outstanding.
struct Flow {
    sock: FlowSock,
    sent: Sent,
    xid: u32,
}

enum FlowSock {
    Udp(UdpSocket),
    /// The connection, and the bytes read that do not make a whole record yet.
    Tcp(TcpStream, Vec<u8>),
}

impl Flow {
    fn new(addr: SocketAddr, transport: Transport, index: usize) -> io::Result<Self> {
        let sock = match transport {
            Transport::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0")?;
                s.connect(addr)?;
                FlowSock::Udp(s)
            }
            Transport::Tcp => FlowSock::Tcp(TcpClient::connect(addr)?.s, Vec::new()),
        };
        Ok(Self {
            sock,
            sent: Sent::new(),
            xid: u32::try_from(index).expect("few flows") << 24,
        })
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match &self.sock {
            FlowSock::Udp(s) => s.as_fd(),
            FlowSock::Tcp(s, _) => s.as_fd(),
        }
    }

    /// Sends `n` new calls of `proc_` with `args`, in one system call (UDP: `sendmmsg`; TCP:
    /// one write of `n` records).
    fn send(&mut self, n: usize, proc_: u32, args: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let msgs: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                self.xid = self.xid.wrapping_add(1);
                self.sent.insert(self.xid, now);
                call_msg(self.xid, proc_, args)
            })
            .collect();
        match &mut self.sock {
            FlowSock::Udp(s) => {
                let mut at = 0;
                while at < n {
                    let iovs: Vec<[io::IoSlice<'_>; 1]> =
                        msgs[at..].iter().map(|m| [io::IoSlice::new(m)]).collect();
                    let to: Vec<Option<SockaddrStorage>> = vec![None; iovs.len()];
                    let mut headers =
                        MultiHeaders::<SockaddrStorage>::preallocate(iovs.len(), None);
                    let sent = sendmmsg(
                        s.as_raw_fd(),
                        &mut headers,
                        &iovs,
                        &to,
                        [],
                        MsgFlags::empty(),
                    )?;
                    at += sent.count().max(1);
                }
            }
            FlowSock::Tcp(s, _) => {
                let mut out = Vec::with_capacity(n * 48);
                for m in &msgs {
                    let mark = 0x8000_0000u32 | u32::try_from(m.len()).expect("small message");
                    out.extend_from_slice(&mark.to_be_bytes());
                    out.extend_from_slice(m);
                }
                s.write_all(&out)?;
            }
        }
        Ok(())
    }

    /// Reads every reply queued now (without waiting) and passes each to `f`.
    fn drain(&mut self, buf: &mut [u8], f: &mut dyn FnMut(&mut Sent, &[u8])) -> io::Result<()> {
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recv, recvmmsg};
        let Self { sock, sent, .. } = self;
        match sock {
            FlowSock::Udp(s) => {
                let slot = buf.len() / WINDOW_RECV_BATCH;
                loop {
                    let fd = s.as_raw_fd();
                    let mut iovs: Vec<[io::IoSliceMut<'_>; 1]> = buf
                        .chunks_mut(slot)
                        .map(|b| [io::IoSliceMut::new(b)])
                        .collect();
                    let mut headers =
                        MultiHeaders::<SockaddrStorage>::preallocate(iovs.len(), None);
                    let lens: Vec<usize> = match recvmmsg(
                        fd,
                        &mut headers,
                        iovs.iter_mut(),
                        MsgFlags::MSG_DONTWAIT,
                        None,
                    ) {
                        Ok(r) => r.map(|m| m.bytes).collect(),
                        Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                        Err(e) => return Err(e.into()),
                    };
                    for (len, b) in lens.iter().zip(buf.chunks(slot)) {
                        f(sent, &b[..*len]);
                    }
                    if lens.len() < WINDOW_RECV_BATCH {
                        return Ok(());
                    }
                }
            }
            FlowSock::Tcp(s, pending) => {
                match recv(s.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(0) => return Err(io::Error::other("the daemon closed the connection")),
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                // Whole single-fragment records (both daemons send each reply as one).
                let mut at = 0;
                let mut records = Vec::new();
                while pending.len() - at >= 4 {
                    let mark = u32::from_be_bytes(pending[at..at + 4].try_into().expect("4 bytes"));
                    assert!(mark & 0x8000_0000 != 0, "a reply in several fragments");
                    let len = (mark & 0x7fff_ffff) as usize;
                    if pending.len() - at - 4 < len {
                        break;
                    }
                    records.push(pending[at + 4..at + 4 + len].to_vec());
                    at += 4 + len;
                }
                pending.drain(..at);
                for r in records {
                    f(sent, &r);
                }
                Ok(())
            }
        }
    }
}

/// Runs `op` (SM_NULL or SM_STAT) from one generator thread that keeps `window` calls
/// outstanding, spread over `flows` sockets (UDP) or connections (TCP), until `cap` passed:
/// each reply is checked and answered with a new call at once, the calls of one wake-up in one
/// system call per socket. Unlike [`drive`], whose callers wait for each reply, this keeps the
/// daemon busy without costing a wake-up per call in the generator, so the daemon's own cost
/// per call bounds the rate. A warm-up of [`WINDOW_WARMUP`] comes first, not counted.
fn drive_window(target: &Target<'_>, op: Op, flows: usize, window: usize, cap: Duration) -> Run {
    let Target {
        host, pid, addr, ..
    } = *target;
    let (transport, proc_, args) = match op {
        Op::Null(t) => (t, SM_NULL, Vec::new()),
        Op::Stat(t) => {
            let mut a = Vec::new();
            xdr_string(&mut a, STAT_NAME.as_bytes());
            (t, SM_STAT, a)
        }
        Op::Mon(_) | Op::Unmon => {
            panic!("the saturating generator sends SM_NULL and SM_STAT only")
        }
    };
    let pin = pinned();
    if pin {
        pin_process(pid, DAEMON_CPU);
    }
    let ns_path = host.netns_path().to_owned();
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = File::open(&ns_path).unwrap_or_else(|e| panic!("{}: {e}", ns_path.display()));
            setns(&f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns: {e}"));
            if pin {
                pin_thread(Pid::from_raw(0), GENERATOR_CPU)
                    .unwrap_or_else(|e| panic!("pinning to CPU {GENERATOR_CPU}: {e}"));
            }
            let mut socks: Vec<Flow> = (0..flows)
                .map(|i| {
                    Flow::new(addr, transport, i).unwrap_or_else(|e| panic!("connecting: {e}"))
                })
                .collect();
            let mut buf = vec![0u8; WINDOW_RECV_BATCH * 2048];
            // One phase: the window filled, kept full until `cap`, then drained. Returns how
            // long it took; the latencies go to `lat`.
            let mut phase = |cap: Duration, lat: &mut Vec<Duration>| -> Duration {
            let start = Instant::now();
            let deadline = start + cap;
            for (i, flow) in socks.iter_mut().enumerate() {
                // The window spread as evenly as it goes.
                let n = window / flows + usize::from(i < window % flows);
                flow.send(n, proc_, &args)
                    .unwrap_or_else(|e| panic!("{} to {addr}: {e}", op.what()));
            }
            let mut stopping = false;
            loop {
                let outstanding: usize = socks.iter().map(|f| f.sent.len()).sum();
                if outstanding == 0 {
                    break;
                }
                let ready: Vec<bool> = {
                    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                    let mut fds: Vec<PollFd<'_>> = socks
                        .iter()
                        .map(|f| PollFd::new(f.fd(), PollFlags::POLLIN))
                        .collect();
                    let n = poll(&mut fds, PollTimeout::from(10_000u16))
                        .unwrap_or_else(|e| panic!("poll: {e}"));
                    assert!(
                        n > 0,
                        "{} to {addr}: {outstanding} calls unanswered for 10 s (lost datagrams?)",
                        op.what()
                    );
                    fds.iter()
                        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                        .collect()
                };
                stopping = stopping || Instant::now() >= deadline;
                for (flow, ready) in socks.iter_mut().zip(ready) {
                    if !ready {
                        continue;
                    }
                    let mut answered = 0;
                    let mut check = |sent: &mut Sent, reply: &[u8]| {
                        let xid = reply
                            .get(..4)
                            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
                        let sent = sent.remove(&xid).unwrap_or_else(|| {
                            panic!(
                                "{} to {addr}: a reply to no outstanding call: {reply:x?}",
                                op.what()
                            )
                        });
                        lat.push(sent.elapsed());
                        let words = result_words(xid, reply)
                            .unwrap_or_else(|e| panic!("{} to {addr}: {e}", op.what()));
                        match op {
                            Op::Null(_) => assert!(words.is_empty(), "SM_NULL answered {words:?}"),
                            _ => assert!(
                                words.len() == 2 && words[0] == 0,
                                "SM_STAT was not answered stat_succ: {words:?}"
                            ),
                        }
                        answered += 1;
                    };
                    flow.drain(&mut buf, &mut check)
                        .unwrap_or_else(|e| panic!("{} from {addr}: {e}", op.what()));
                    if !stopping {
                        flow.send(answered, proc_, &args)
                            .unwrap_or_else(|e| panic!("{} to {addr}: {e}", op.what()));
                    }
                }
            }
            start.elapsed()
            };
            // A warm-up phase first, not counted: the first calls after a daemon starts are
            // slower (caches, buffers, the scheduler), and would weigh on the first
            // measurement of each trial only.
            phase(WINDOW_WARMUP.min(cap), &mut Vec::new());
            let mut lat = Vec::new();
            let cpu_before = CpuSample::take(pid);
            let elapsed = phase(cap, &mut lat);
            Run::new(elapsed, lat, pid, cpu_before)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

// ---------------------------------------------------------------------------------------------
// The floor: a bare UDP responder.

/// The argument that makes this binary the bare UDP responder (`--udp-echo PORT`), started by
/// the benchmark inside a test host.
const ECHO_ARG: &str = "--udp-echo";

/// The cheapest UDP server that answers an ONC RPC call on this machine: bound to 127.0.0.1
/// (no packet-info control messages), it takes up to 16 datagrams per `recvmmsg` and answers
/// each with the 24 bytes of an accepted, successful, empty reply to its xid in one `sendmmsg`,
/// without decoding anything else. It is the floor of any RPC server's cost per UDP call: what
/// the kernel's receive and send paths cost, with nothing of a server's own work. Runs until
/// killed.
fn udp_echo(port: u16) -> ! {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
    const BATCH: usize = 16;
    let sock = UdpSocket::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("udp echo: binding 127.0.0.1:{port}: {e}"));
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; 512]; BATCH];
    let mut replies = vec![[0u8; 24]; BATCH];
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    loop {
        let mut iovs: Vec<[io::IoSliceMut<'_>; 1]> =
            bufs.iter_mut().map(|b| [io::IoSliceMut::new(b)]).collect();
        let got: Vec<(usize, Option<SockaddrStorage>)> = match recvmmsg(
            fd,
            &mut recv_headers,
            iovs.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        ) {
            Ok(r) => r.map(|m| (m.bytes, m.address)).collect(),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("udp echo: recvmmsg: {e}"),
        };
        let mut to = Vec::with_capacity(got.len());
        for (i, (len, from)) in got.iter().enumerate() {
            if *len < 4 || from.is_none() {
                continue;
            }
            replies[to.len()][..4].copy_from_slice(&bufs[i][..4]);
            replies[to.len()][4..8].copy_from_slice(&1u32.to_be_bytes());
            to.push(*from);
        }
        let iovs: Vec<[io::IoSlice<'_>; 1]> = replies[..to.len()]
            .iter()
            .map(|r| [io::IoSlice::new(r)])
            .collect();
        if let Err(e) = sendmmsg(fd, &mut send_headers, &iovs, &to, [], MsgFlags::empty()) {
            eprintln!("udp echo: sendmmsg: {e}");
        }
    }
}

/// Whether `NSMD_BENCH_PIN=1` asks for the generator and the daemon on separate CPUs.
fn pinned() -> bool {
    std::env::var("NSMD_BENCH_PIN").as_deref() == Ok("1")
}

fn pin_thread(tid: Pid, cpu: usize) -> nix::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(tid, &set)
}

/// Pins every thread of `pid` to `cpu` (threads it starts later inherit it).
fn pin_process(pid: u32, cpu: usize) {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("listing the threads of {pid}: {e}"));
    for t in tasks.filter_map(Result::ok) {
        if let Some(tid) = t.file_name().to_str().and_then(|t| t.parse().ok()) {
            pin_thread(Pid::from_raw(tid), cpu)
                .unwrap_or_else(|e| panic!("pinning thread {tid} to CPU {cpu}: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hosts, state directories, daemons.

/// Where the state directories live.
#[derive(Debug, Clone)]
enum StateBase {
    /// Under the host's private `/var/lib/nfs` (a real disk on this machine).
    HostNfs,
    /// Under this directory, seen at the same path inside and outside the hosts (used when the
    /// hosts' `/var/lib/nfs` is a tmpfs, where fsync costs nothing).
    Shared(PathBuf),
}

fn fs_type_name(path: &Path) -> String {
    match nix::sys::statfs::statfs(path) {
        Ok(s) => {
            let t = s.filesystem_type().0 as u64;
            let name = match t {
                0xef53 => "ext2/3/4",
                0x0102_1994 => "tmpfs",
                0x8584_58f6 => "ramfs",
                0x5846_5342 => "xfs",
                0x9123_683e => "btrfs",
                0x794c_7630 => "overlayfs",
                0x2fc1_2fc1 => "zfs",
                _ => "other",
            };
            format!("{name} (f_type {t:#x})")
        }
        Err(e) => format!("unknown ({e})"),
    }
}

fn is_ram_fs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| matches!(s.filesystem_type().0 as u64, 0x0102_1994 | 0x8584_58f6))
        .unwrap_or(true)
}

/// The pre-populated names: `pre-00042.bench.test` on 10.1.0.42, or (`literal`) the address
/// literal `10.64.0.42` itself (as the kernel's lockd sends mon_names by default).
fn pre_name(i: usize, literal: bool) -> String {
    if literal {
        format!("10.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255)
    } else {
        format!("pre-{i:05}.bench.test")
    }
}

/// The address of `pre_name(i, false)` in the hosts file: 10.1.x.y for the first 65,536, then
/// 10.5.x.y, 10.6.x.y (10.2 and 10.3 hold the measured names and the SM_STAT target).
fn pre_addr(i: usize) -> String {
    let second = if i < 1 << 16 { 1 } else { 4 + (i >> 16) };
    format!("10.{second}.{}.{}", (i >> 8) & 255, i & 255)
}

/// The resident set size of `pid` in bytes (`VmRSS`).
fn rss_bytes(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Polls the host's rpcbind (PMAP_GETPORT over UDP, every 2 ms) until SM_PROG version 1 is
/// registered for UDP; returns how long after `since` that was first seen.
fn wait_rpcbind(host: &Host, since: Instant) -> Duration {
    in_netns(host, || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket");
        s.connect("127.0.0.1:111").expect("connecting to rpcbind");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("setting a timeout");
        let deadline = since + Duration::from_secs(300);
        let mut buf = [0u8; 512];
        for xid in 1u32.. {
            let mut msg = Vec::with_capacity(56);
            for w in [xid, 0, 2, 100_000, 2, 3, 0, 0, 0, 0, SM_PROG, 1, 17, 0] {
                msg.extend_from_slice(&w.to_be_bytes());
            }
            s.send(&msg).expect("sending PMAP_GETPORT");
            let port = loop {
                match s.recv(&mut buf) {
                    Ok(n) if n >= 4 && buf[..4] == xid.to_be_bytes() => {
                        break result_words(xid, &buf[..n])
                            .ok()
                            .and_then(|w| w.first().copied());
                    }
                    Ok(_) => {}
                    Err(_) => break None,
                }
            };
            if port.is_some_and(|p| p != 0) {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "SM_PROG not registered with rpcbind after 300 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        unreachable!("2^32 polls")
    })
}

/// A record line exactly as rpc.statd 2.6.2 writes it (address field host-endian 127.0.0.1).
fn record_line(mon_name: &str, priv_: [u8; 16]) -> String {
    let hex: String = priv_.iter().map(|b| format!("{b:02x}")).collect();
    let addr = u32::from_ne_bytes([127, 0, 0, 1]);
    let my = String::from_utf8_lossy(MY_NAME);
    format!("{addr:08x} 000186b5 00000003 00000010 {hex} {mon_name} {my}\n")
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| {
            !e.file_name().to_string_lossy().starts_with('.')
                && e.file_type().is_ok_and(|t| t.is_file())
        })
        .count()
}

/// The disk alone, from this process, in a directory on the state directories' file system:
/// `n` times the durable write each implementation makes for a new record. nsmd's (one commit
/// of one file): write a temporary file, fsync it, rename it into place, fsync the directory.
/// rpc.statd's (`nsm_insert_monitored_host`): `open(O_CREAT|O_EXCL|O_SYNC)`, one `write`.
fn disk_floor(dir: &Path, n: usize) -> (Run, Run) {
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(dir).expect("creating the disk floor directory");
    let d = File::open(dir).expect("opening the disk floor directory");
    let line = record_line("floor-00000.bench.test", cookie(0));
    let time = |f: &mut dyn FnMut(usize)| {
        let start = Instant::now();
        let mut lat: Vec<Duration> = (0..n)
            .map(|i| {
                let t = Instant::now();
                f(i);
                t.elapsed()
            })
            .collect();
        let elapsed = start.elapsed();
        lat.sort_unstable();
        Run {
            n,
            elapsed,
            lat,
            server_cpu: None,
        }
    };
    let fsync_style = time(&mut |i| {
        let tmp = dir.join(format!(".f{i}.new"));
        let mut f = File::create(&tmp).expect("creating a temporary file");
        f.write_all(line.as_bytes()).expect("writing");
        f.sync_all().expect("fsync");
        fs::rename(&tmp, dir.join(format!("f{i}"))).expect("rename");
        d.sync_all().expect("fsync of the directory");
    });
    let osync_style = time(&mut |i| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_SYNC)
            .open(dir.join(format!("s{i}")))
            .expect("creating an O_SYNC file");
        f.write_all(line.as_bytes()).expect("writing");
    });
    (fsync_style, osync_style)
}

/// Load average and pressure stall figures, to show how busy the machine was.
fn machine_load() -> String {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let some = |p: &str| {
        read(p)
            .lines()
            .next()
            .map(|l| l.replace("some ", ""))
            .unwrap_or_default()
    };
    format!(
        "loadavg {}; cpu pressure {}; io pressure {}",
        read("/proc/loadavg").trim(),
        some("/proc/pressure/cpu"),
        some("/proc/pressure/io")
    )
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of a process: the sum of its threads' `schedstat` run times (nanoseconds, but
/// threads that exit take theirs with them) and its `stat` user + system ticks (1/100 s, but
/// counting exited threads too).
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    sched_ns: u64,
    ticks: u64,
}

impl CpuSample {
    fn take(pid: u32) -> Option<Self> {
        let ticks = cpu_ticks(pid)?;
        let mut sched_ns = 0;
        for t in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let s = fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            sched_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Some(Self { sched_ns, ticks })
    }

    /// The larger of the two estimates of the CPU time used since `before`.
    fn since(&self, before: &Self) -> Duration {
        let sched = Duration::from_nanos(self.sched_ns.saturating_sub(before.sched_ns));
        let ticks = Duration::from_millis(self.ticks.saturating_sub(before.ticks) * 10);
        sched.max(ticks)
    }
}

/// Waits until the process used no CPU for two 300 ms periods in a row (nsmd resolves every
/// loaded name in the background after start); returns the CPU time it used while waiting.
fn wait_idle(p: &Proc) -> Duration {
    let Some(first) = cpu_ticks(p.pid()) else {
        return Duration::ZERO;
    };
    let (mut prev, mut quiet) = (first, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while quiet < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let Some(now) = cpu_ticks(p.pid()) else { break };
        quiet = if now - prev <= 1 { quiet + 1 } else { 0 };
        prev = now;
    }
    // Clock ticks are 1/100 s on Linux.
    Duration::from_millis((prev - first) * 10)
}

/// Waits until the daemon answers SM_NULL on UDP.
fn wait_answers(host: &Host, addr: SocketAddr, p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = in_netns(host, || {
            UdpClient::connect(addr)
                .and_then(|mut c| {
                    c.s.set_read_timeout(Some(Duration::from_millis(200)))?;
                    c.exchange(7, &call_msg(7, SM_NULL, &[]))
                })
                .is_ok()
        });
        if ok {
            return;
        }
        if let Err(e) = p.check_running() {
            panic!("{} did not start: {e}", p.name());
        }
        assert!(
            Instant::now() < deadline,
            "{} does not answer SM_NULL on {addr}:\n{}",
            p.name(),
            p.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn in_netns<T: Send>(host: &Host, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(host.netns_path()).expect("opening the host's netns file");
    std::thread::scope(|s| {
        match s
            .spawn(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the host");
                f()
            })
            .join()
        {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e),
        }
    })
}

struct Bench {
    lab: Lab,
    hosts: Vec<Host>,
    _rpcbinds: Vec<Proc>,
    base: StateBase,
    statd: PathBuf,
    hosts_header: String,
    /// Whether the hosts file lists the pre-populated names too (`NSMD_BENCH_HOSTS`).
    hosts_pre: bool,
    sm_owner: Option<(u32, u32)>,
    trials: u32,
    /// Directories of finished trials, removed only at the end: ext4 without a journal (this
    /// machine's) checks every recently deleted inode (30 s) when it allocates a new one, so
    /// deleting 10,000 record files would slow down the file creations of the next trials.
    used_dirs: Vec<PathBuf>,
}

/// What a trial needs: records already there, and the names it will send.
struct TrialSpec<'a> {
    records: usize,
    /// The pre-populated records are named by address literals (`10.64.0.42`).
    literal: bool,
    names: &'a [String],
}

impl Bench {
    fn new(statd: PathBuf) -> Self {
        let lab = Lab::new("statd_load").expect("creating the lab");
        let hosts = vec![
            lab.isolated_host("nsmd").expect("creating host nsmd"),
            lab.isolated_host("statd").expect("creating host statd"),
        ];
        let rpcbinds = hosts
            .iter()
            .map(|h| h.start_rpcbind().expect("starting rpcbind"))
            .collect();
        let base = if is_ram_fs(&hosts[0].nfs_dir()) {
            let dir = Path::new(TARGET_TMP).join(format!("statd_load-{}", std::process::id()));
            fs::create_dir_all(&dir).expect("creating the state base directory");
            StateBase::Shared(dir)
        } else {
            StateBase::HostNfs
        };
        let hosts_header =
            fs::read_to_string(lab.hosts_file()).expect("reading the lab's hosts file");
        let sm_owner = fs::metadata("/var/lib/nfs/sm")
            .ok()
            .map(|m| (m.uid(), m.gid()));
        Self {
            lab,
            hosts,
            _rpcbinds: rpcbinds,
            base,
            statd,
            hosts_header,
            hosts_pre: std::env::var("NSMD_BENCH_HOSTS").as_deref() != Ok("measured"),
            sm_owner,
            trials: 0,
            used_dirs: Vec::new(),
        }
    }

    fn host(&self, imp: Impl) -> &Host {
        &self.hosts[match imp {
            Impl::Nsmd | Impl::Echo => 0,
            Impl::Statd => 1,
        }]
    }

    /// (path inside the host, path outside) of a state directory.
    fn state_dir(&self, imp: Impl, trial: u32) -> (PathBuf, PathBuf) {
        let leaf = format!("bench-{trial:03}");
        match &self.base {
            StateBase::HostNfs => (
                Path::new("/var/lib/nfs").join(&leaf),
                self.host(imp).nfs_dir().join(&leaf),
            ),
            StateBase::Shared(d) => {
                let p = d.join(format!("{}-{leaf}", imp.label()));
                (p.clone(), p)
            }
        }
    }

    fn describe_base(&self) -> String {
        let probe = match &self.base {
            StateBase::HostNfs => self.hosts[0].nfs_dir(),
            StateBase::Shared(d) => d.clone(),
        };
        let place = match &self.base {
            StateBase::HostNfs => format!(
                "each host's private /var/lib/nfs (outside: {})",
                self.hosts[0].nfs_dir().display()
            ),
            StateBase::Shared(d) => {
                format!("{} (the hosts' /var/lib/nfs is a RAM fs)", d.display())
            }
        };
        format!("{place}: {}", fs_type_name(&probe))
    }

    fn write_hosts(&self, spec: &TrialSpec<'_>) {
        let mut text = self.hosts_header.clone();
        text.push_str(&format!("10.3.0.1\t{STAT_NAME}\n"));
        if self.hosts_pre && !spec.literal {
            for i in 0..spec.records {
                text.push_str(&format!("{}\t{}\n", pre_addr(i), pre_name(i, false)));
            }
        }
        for (i, n) in spec.names.iter().enumerate() {
            text.push_str(&format!("10.2.{}.{}\t{n}\n", (i >> 8) & 255, i & 255));
        }
        // Truncate and rewrite in place: the hosts' bind mounts follow the inode.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.lab.hosts_file())
            .expect("opening the lab's hosts file");
        f.write_all(text.as_bytes())
            .expect("writing the hosts file");
    }

    fn prepare_dir(&self, outside: &Path, records: usize, literal: bool) {
        if outside.exists() {
            fs::remove_dir_all(outside).expect("removing an old state directory");
        }
        for sub in ["sm", "sm.bak"] {
            let d = outside.join(sub);
            fs::create_dir_all(&d).expect("creating sm/ and sm.bak/");
            // rpc.statd runs as the owner of sm/: the system's (statd:nogroup on Debian).
            if let Some((u, g)) = self.sm_owner {
                std::os::unix::fs::chown(&d, Some(u), Some(g)).expect("chown sm/");
            }
        }
        let sm = outside.join("sm");
        for i in 0..records {
            let name = pre_name(i, literal);
            let p = sm.join(&name);
            fs::write(&p, record_line(&name, cookie(1_000_000 + i))).expect("writing a record");
            if let Some((u, g)) = self.sm_owner {
                std::os::unix::fs::chown(&p, Some(u), Some(g)).expect("chown a record");
            }
        }
        // Nothing of the preparation may still be on its way to the disk when we measure.
        let d = File::open(outside).expect("opening the state directory");
        nix::unistd::syncfs(&d).expect("syncfs");
    }

    /// Starts `imp` on a fresh state directory holding `spec.records` records, waits until it
    /// answers and is idle, runs `f` (which returns the number of SM_MONs it counted), stops the
    /// daemon and checks the records on disk.
    fn trial<T>(
        &mut self,
        imp: Impl,
        spec: &TrialSpec<'_>,
        f: impl FnOnce(&Target<'_>) -> (T, isize),
    ) -> T {
        self.trials += 1;
        let trial = self.trials;
        let port = 20_000 + u16::try_from(trial).expect("fewer than 45000 trials");
        let (inside, outside) = self.state_dir(imp, trial);
        self.prepare_dir(&outside, spec.records, spec.literal);
        self.write_hosts(spec);
        let host = self.host(imp);
        let port_s = port.to_string();
        let inside_s = inside.to_string_lossy().into_owned();
        let statd = self.statd.to_string_lossy().into_owned();
        let argv: Vec<&str> = match imp {
            Impl::Nsmd => vec![
                NSMD,
                "-F",
                "-L",
                "-p",
                &port_s,
                "-P",
                &inside_s,
                "--proc-root",
                "/run/proc",
            ],
            Impl::Statd => vec![&statd, "-F", "-L", "-p", &port_s, "-P", &inside_s],
            Impl::Echo => panic!("the bare responder runs through echo_trial"),
        };
        let spawned = Instant::now();
        let p = host
            .spawn(imp.label(), &argv)
            .unwrap_or_else(|e| panic!("starting {}: {e}", imp.label()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let registered_after = wait_rpcbind(host, spawned);
        wait_answers(host, addr, &p);
        if imp == Impl::Nsmd {
            let want = format!("records={}", spec.records);
            let line = p
                .wait_for_log_line("instance ready", Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("nsmd: {e}"));
            assert!(
                line.split_whitespace().any(|w| w == want),
                "nsmd did not load every record: {line}"
            );
        }
        let busy = wait_idle(&p);
        if busy > Duration::from_millis(200) {
            eprintln!(
                "    ({} used {:.1} s of CPU after start, before it was idle)",
                imp.label(),
                busy.as_secs_f64()
            );
        }
        let (out, delta) = f(&Target {
            host,
            pid: p.pid(),
            addr,
            registered_after,
        });
        if let Err(e) = p.check_running() {
            panic!("{} died during the measurement: {e}", imp.label());
        }
        p.stop(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("stopping {}: {e}", imp.label()));
        let on_disk = count_files(&outside.join("sm"));
        let want = spec
            .records
            .checked_add_signed(delta)
            .expect("no more records removed than there were");
        assert_eq!(
            on_disk,
            want,
            "{}: sm/ holds {on_disk} records, expected {} pre-populated {delta:+} (monitored or \
             unmonitored)",
            imp.label(),
            spec.records
        );
        self.used_dirs.push(outside);
        out
    }
}

impl Bench {
    /// Starts the bare UDP responder ([`udp_echo`]) in the nsmd host, runs `f` against it,
    /// stops it.
    fn echo_trial<T>(&mut self, f: impl FnOnce(&Target<'_>) -> T) -> T {
        self.trials += 1;
        let port = 20_000 + u16::try_from(self.trials).expect("fewer than 45000 trials");
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let exe = exe.to_string_lossy().into_owned();
        let port_s = port.to_string();
        let host = self.host(Impl::Nsmd);
        let p = host
            .spawn("udp-echo", &[exe.as_str(), ECHO_ARG, &port_s])
            .unwrap_or_else(|e| panic!("starting the bare UDP responder: {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        wait_answers(host, addr, &p);
        let out = f(&Target {
            host,
            pid: p.pid(),
            addr,
            registered_after: Duration::ZERO,
        });
        if let Err(e) = p.check_running() {
            panic!("the bare UDP responder died during the measurement: {e}");
        }
        drop(p);
        out
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for d in &self.used_dirs {
            let _ = fs::remove_dir_all(d);
        }
        if let StateBase::Shared(d) = &self.base {
            let _ = fs::remove_dir_all(d);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

#[derive(Debug, Default)]
struct Results {
    /// Measurement ids in the order they first ran.
    order: Vec<String>,
    runs: BTreeMap<(String, Impl), Vec<Run>>,
}

impl Results {
    fn add(&mut self, id: &str, imp: Impl, round: usize, run: Run, note: &str) {
        eprintln!(
            "  [round {round}] {id:<22} {:<9} n={:<6} {:>9.1} ops/s  p50 {:>9.3} ms  p99 {:>9.3} ms  \
             cpu {:>8.1} us/call{note}",
            imp.label(),
            run.n,
            run.ops(),
            run.pct_ms(0.50),
            run.pct_ms(0.99),
            run.cpu_us(),
        );
        if !self.order.iter().any(|o| o == id) {
            self.order.push(id.to_owned());
        }
        self.runs.entry((id.to_owned(), imp)).or_default().push(run);
    }

    fn print(&self) {
        println!();
        println!(
            "Medians over rounds, [min-max] of the per-round values; ratio = nsmd / rpc.statd \
             of the medians."
        );
        println!();
        println!(
            "| measurement | nsmd ops/s | rpc.statd ops/s | ratio | nsmd p50 ms | rpc.statd p50 ms \
             | nsmd p99 ms | rpc.statd p99 ms | nsmd CPU us/call | rpc.statd CPU us/call \
             | calls per round (nsmd / rpc.statd) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for id in &self.order {
            let get = |imp| {
                self.runs
                    .get(&(id.clone(), imp))
                    .cloned()
                    .unwrap_or_default()
            };
            let (a, b) = (get(Impl::Nsmd), get(Impl::Statd));
            let cell = |(m, lo, hi): (f64, f64, f64)| {
                if m.is_nan() {
                    return "-".to_owned();
                }
                let prec = if m >= 100.0 {
                    0
                } else if m >= 1.0 {
                    1
                } else {
                    3
                };
                format!("{m:.prec$} [{lo:.prec$}-{hi:.prec$}]")
            };
            let ops = |r: &Run| r.ops();
            let p50 = |r: &Run| r.pct_ms(0.50);
            let p99 = |r: &Run| r.pct_ms(0.99);
            let cpu = |r: &Run| r.cpu_us();
            let (oa, ob) = (stat(&a, &ops), stat(&b, &ops));
            let ns = |runs: &[Run]| {
                let v: Vec<String> = runs.iter().map(|r| r.n.to_string()).collect();
                v.join(",")
            };
            println!(
                "| {id} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} / {} |",
                cell(oa),
                cell(ob),
                oa.0 / ob.0,
                cell(stat(&a, &p50)),
                cell(stat(&b, &p50)),
                cell(stat(&a, &p99)),
                cell(stat(&b, &p99)),
                cell(stat(&a, &cpu)),
                cell(stat(&b, &cpu)),
                ns(&a),
                ns(&b),
            );
        }
        let floors: Vec<&String> = self
            .order
            .iter()
            .filter(|id| self.runs.contains_key(&((*id).clone(), Impl::Echo)))
            .collect();
        if floors.is_empty() {
            return;
        }
        println!();
        println!(
            "The floor: the bare UDP responder (recvmmsg/sendmmsg, no decoding, bound to \
             127.0.0.1) under the same generator, same rounds."
        );
        println!();
        println!(
            "| measurement | bare echo ops/s | nsmd / echo | rpc.statd / echo | echo CPU us/call |"
        );
        println!("|---|---:|---:|---:|---:|");
        for id in floors {
            let med = |imp, f: &dyn Fn(&Run) -> f64| {
                stat(
                    self.runs.get(&(id.clone(), imp)).map_or(&[], Vec::as_slice),
                    f,
                )
                .0
            };
            let echo = med(Impl::Echo, &|r| r.ops());
            println!(
                "| {id} | {echo:.0} | {:.2} | {:.2} | {:.1} |",
                med(Impl::Nsmd, &|r| r.ops()) / echo,
                med(Impl::Statd, &|r| r.ops()) / echo,
                med(Impl::Echo, &|r| r.cpu_us()),
            );
        }
    }
}

/// The median, lowest and highest of `f` over `runs` (NaN when there are none).
fn stat(runs: &[Run], f: &dyn Fn(&Run) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (med, v[0], v[v.len() - 1])
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn measured_names(trial_tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{trial_tag}-{i:05}.bench.test"))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == ECHO_ARG) {
        let port = args
            .get(at + 1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{ECHO_ARG} needs a port"));
        udp_echo(port);
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("statd_load: a load benchmark; run it with `cargo bench --bench statd_load`");
        return;
    }
    let statd = match prerequisites(&["rpcbind", "rpcinfo", "rpc.statd"])
        .and_then(|()| tool_path("rpc.statd").ok_or_else(|| "rpc.statd not found".to_owned()))
    {
        Ok(p) => p,
        Err(why) => {
            println!("statd_load: skipped: {why}");
            return;
        }
    };
    if cfg!(debug_assertions) || !NSMD.contains("/release/") {
        eprintln!(
            "statd_load: WARNING: not an optimised build ({NSMD}); figures are meaningless. \
             Use `cargo bench`."
        );
    }
    let rounds: usize = env_or("NSMD_BENCH_ROUNDS", 3);
    let secs: f64 = env_or("NSMD_BENCH_SECS", 8.0);
    let cap = Duration::from_secs_f64(secs);
    let serial_max: usize = env_or("NSMD_BENCH_SERIAL_MAX", SERIAL_MAX);
    let simple_cap = cap / 4;
    let callers: usize = env_or("NSMD_BENCH_CALLERS", SIMPLE_WORKERS);
    let window: usize = env_or("NSMD_BENCH_WINDOW", WINDOW);
    let only = std::env::var("NSMD_BENCH_ONLY")
        .unwrap_or_else(|_| "floor,null,window,start,serial,unmon,concurrent".into());
    let runs_group = |g: &str| only.split(',').any(|x| x.trim() == g);
    let statd_mon_max: usize = env_or("NSMD_BENCH_STATD_MON_MAX", 10_000);
    let levels: Vec<usize> = std::env::var("NSMD_BENCH_LEVELS")
        .unwrap_or_else(|_| "0,1000,10000".into())
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();

    let mut bench = Bench::new(statd.clone());
    eprintln!("statd_load: nsmd {NSMD}");
    eprintln!("statd_load: rpc.statd {}", statd.display());
    eprintln!("statd_load: state directories on {}", bench.describe_base());
    eprintln!(
        "statd_load: {rounds} rounds, SM_MON measurements capped at {secs} s, serial at \
         {serial_max} calls, {CONC_WORKERS} concurrent callers at {CONC_MAX} calls"
    );
    eprintln!("statd_load: machine at start: {}", machine_load());
    if pinned() {
        eprintln!(
            "statd_load: NSMD_BENCH_PIN=1: generator on CPU {GENERATOR_CPU}, daemon on CPU \
             {DAEMON_CPU}"
        );
    }
    let started = Instant::now();
    let mut results = Results::default();
    let mut starts = Starts::default();

    for round in 1..=rounds {
        eprintln!(
            "statd_load: round {round} ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        let order = if round % 2 == 1 {
            [Impl::Nsmd, Impl::Statd]
        } else {
            [Impl::Statd, Impl::Nsmd]
        };
        if runs_group("floor") {
            let dir = bench
                .state_dir(Impl::Nsmd, 0)
                .1
                .with_file_name(format!("disk-floor-{round}"));
            let (fsync_style, osync_style) = disk_floor(&dir, serial_max);
            bench.used_dirs.push(dir);
            results.add(
                "disk-floor",
                Impl::Nsmd,
                round,
                fsync_style,
                "  (fsync+rename+dir fsync)",
            );
            results.add(
                "disk-floor",
                Impl::Statd,
                round,
                osync_style,
                "  (O_SYNC create)",
            );
        }
        // SM_NULL and SM_STAT: callers that wait for each reply (`null`), then the saturating
        // generator and the bare responder (`window`).
        for (group, windowed) in [("null", false), ("window", true)] {
            if !runs_group(group) {
                continue;
            }
            for imp in order {
                let spec = TrialSpec {
                    records: 0,
                    literal: false,
                    names: &[],
                };
                let runs = bench.trial(imp, &spec, |t| {
                    let mut v = Vec::new();
                    for (id, op) in [
                        ("null-udp", Op::Null(Transport::Udp)),
                        ("null-tcp", Op::Null(Transport::Tcp)),
                        ("stat-udp", Op::Stat(Transport::Udp)),
                        ("stat-tcp", Op::Stat(Transport::Tcp)),
                    ] {
                        if windowed {
                            v.push((
                                format!("{id}-w{window}/{callers}"),
                                drive_window(t, op, callers, window, simple_cap),
                            ));
                        } else {
                            v.push((id.to_owned(), drive(t, op, &[], 1, usize::MAX, simple_cap)));
                            v.push((
                                format!("{id}-x{callers}"),
                                drive(t, op, &[], callers, usize::MAX, simple_cap),
                            ));
                        }
                    }
                    (v, 0)
                });
                for (id, run) in runs {
                    results.add(&id, imp, round, run, "");
                }
            }
            if windowed {
                let run = bench.echo_trial(|t| {
                    drive_window(t, Op::Null(Transport::Udp), callers, window, simple_cap)
                });
                results.add(
                    &format!("null-udp-w{window}/{callers}"),
                    Impl::Echo,
                    round,
                    run,
                    "",
                );
            }
        }
        if runs_group("start") {
            for &level in &levels {
                for imp in order {
                    let spec = TrialSpec {
                        records: level,
                        literal: true,
                        names: &[],
                    };
                    let (after, rss) = bench.trial(imp, &spec, |t| {
                        let rss = rss_bytes(t.pid).expect("reading the daemon's VmRSS");
                        ((t.registered_after, rss), 0)
                    });
                    eprintln!(
                        "  [round {round}] start-{level:<16} {:<9} registered after {:>8.1} ms, \
                         RSS {:>7.1} MB",
                        imp.label(),
                        after.as_secs_f64() * 1e3,
                        rss as f64 / 1e6
                    );
                    starts.0.entry((level, imp)).or_default().push((after, rss));
                }
            }
        }
        for &level in &levels {
            let mut kinds = Vec::new();
            if runs_group("serial") {
                kinds.push(("percall", Op::Mon(Conn::PerCall), 1, serial_max));
                // rpc.statd needs ~15 s per SM_MON with 10,000 records: this variant runs there
                // in the first round only, to keep the whole run near 10 minutes.
                if level <= 1000 || round == 1 {
                    kinds.push(("persistent", Op::Mon(Conn::Persistent), 1, serial_max));
                }
            }
            if runs_group("concurrent") && level <= 1000 {
                kinds.push((
                    "x64-percall",
                    Op::Mon(Conn::PerCall),
                    CONC_WORKERS,
                    CONC_MAX,
                ));
            }
            // rpc.statd's SM_MON and SM_UNMON slow down with the records: capped.
            let statd_capped = |imp: Impl, id: &str| {
                let capped = imp == Impl::Statd && level > statd_mon_max;
                if capped {
                    eprintln!(
                        "  [round {round}] {id:<22} rpc.statd not run: {level} records is over \
                         NSMD_BENCH_STATD_MON_MAX={statd_mon_max}"
                    );
                }
                capped
            };
            for (kind, op, workers, max) in kinds {
                let id = format!("mon-{kind}-{level}");
                for imp in order {
                    if statd_capped(imp, &id) {
                        continue;
                    }
                    let names = measured_names(&format!("r{round}-{kind}"), max);
                    let spec = TrialSpec {
                        records: level,
                        literal: false,
                        names: &names,
                    };
                    let run = bench.trial(imp, &spec, |t| {
                        let run = drive(t, op, &names, workers, max, cap);
                        let n = run.n;
                        (run, isize::try_from(n).expect("few calls"))
                    });
                    let note = format!("  (records {level} -> {})", level + run.n);
                    results.add(&id, imp, round, run, &note);
                }
            }
            if runs_group("unmon") && level > 0 {
                let id = format!("unmon-percall-{level}");
                // Pre-populated records spread over the whole set, each unmonitored once.
                let max = serial_max.min(level);
                let names: Vec<String> =
                    (0..max).map(|k| pre_name(k * level / max, false)).collect();
                for imp in order {
                    if statd_capped(imp, &id) {
                        continue;
                    }
                    let spec = TrialSpec {
                        records: level,
                        literal: false,
                        names: &[],
                    };
                    let run = bench.trial(imp, &spec, |t| {
                        let run = drive(t, Op::Unmon, &names, 1, max, cap);
                        let n = isize::try_from(run.n).expect("few calls");
                        (run, -n)
                    });
                    let note = format!("  (records {level} -> {})", level - run.n);
                    results.add(&id, imp, round, run, &note);
                }
            }
        }
    }
    eprintln!(
        "statd_load: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    results.print();
    starts.print();
}

/// Start-up figures: (time to registration, RSS when idle) per (records, implementation).
#[derive(Debug, Default)]
struct Starts(BTreeMap<(usize, Impl), Vec<(Duration, u64)>>);

impl Starts {
    fn print(&self) {
        if self.0.is_empty() {
            return;
        }
        println!();
        println!(
            "Start-up with N records named by address literals (`-L`): from the spawn until \
             rpcbind answers GETPORT for 100024, and VmRSS once idle. Medians over rounds \
             [min-max]; bytes per record: RSS growth from the previous level, of the medians."
        );
        println!();
        println!(
            "| records | nsmd ms | rpc.statd ms | rpc.statd / nsmd | nsmd RSS MB | rpc.statd RSS MB \
             | nsmd B/record | rpc.statd B/record |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        let med = |level: usize, imp: Impl, f: &dyn Fn(&(Duration, u64)) -> f64| {
            let mut v: Vec<f64> = self
                .0
                .get(&(level, imp))
                .map_or(Vec::new(), |r| r.iter().map(f).collect());
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => (f64::NAN, f64::NAN, f64::NAN),
                n if n % 2 == 1 => (v[n / 2], v[0], v[n - 1]),
                n => ((v[n / 2 - 1] + v[n / 2]) / 2.0, v[0], v[n - 1]),
            }
        };
        let ms = |r: &(Duration, u64)| r.0.as_secs_f64() * 1e3;
        let mb = |r: &(Duration, u64)| r.1 as f64 / 1e6;
        let levels: Vec<usize> = {
            let mut l: Vec<usize> = self.0.keys().map(|(n, _)| *n).collect();
            l.dedup();
            l
        };
        let cell = |(m, lo, hi): (f64, f64, f64)| format!("{m:.1} [{lo:.1}-{hi:.1}]");
        let mut prev: Option<usize> = None;
        for &n in &levels {
            let per_record = |imp: Impl| match prev {
                Some(p) if n > p => format!(
                    "{:.0}",
                    (med(n, imp, &mb).0 - med(p, imp, &mb).0) * 1e6 / (n - p) as f64
                ),
                _ => "-".to_owned(),
            };
            println!(
                "| {n} | {} | {} | {:.2} | {} | {} | {} | {} |",
                cell(med(n, Impl::Nsmd, &ms)),
                cell(med(n, Impl::Statd, &ms)),
                med(n, Impl::Statd, &ms).0 / med(n, Impl::Nsmd, &ms).0,
                cell(med(n, Impl::Nsmd, &mb)),
                cell(med(n, Impl::Statd, &mb)),
                per_record(Impl::Nsmd),
                per_record(Impl::Statd),
            );
            prev = Some(n);
        }
    }
}

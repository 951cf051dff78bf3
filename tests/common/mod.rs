//! Shared pieces of the black-box tests: starting nsmd in a test host, running code inside a
//! host's network namespace, and a raw RPC client written byte by byte (independent of
//! nsmd's own RPC code, so it checks nsmd rather than agreeing with it).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod farm;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

pub mod nlm;

use nsm_testhost::{Host, Proc};

/// The nsmd binary under test.
pub const NSMD: &str = env!("CARGO_BIN_EXE_nsmd");

/// Starts `nsmd -F -d -L ARGS` in `host` (no notification at start) and waits until it
/// serves; returns it and its port.
pub fn spawn_nsmd(host: &Host, name: &str, args: &[&str]) -> (Proc, u16) {
    let mut argv = vec![NSMD, "-F", "-d", "-L"];
    argv.extend_from_slice(args);
    let p = host.spawn(name, &argv).unwrap();
    let line = p
        .wait_for_log_line(
            "serving program 100024 version 1 on",
            Duration::from_secs(10),
        )
        .unwrap();
    let port = line
        .split("udp 0.0.0.0:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (p, port)
}

/// Runs `f` on a thread that joined `host`'s network namespace (sockets it opens live there).
pub fn in_netns<T: Send>(host: &Host, f: impl FnOnce() -> T + Send) -> T {
    host.in_netns(f).unwrap()
}

/// An RPC CALL with AUTH_NONE, built word by word (RFC 5531 §9).
pub fn call(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [xid, 0, 2, prog, vers, proc_, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(args);
    v
}

/// XDR string.
pub fn xdr_string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v.resize(v.len() + (4 - s.len() % 4) % 4, 0);
    v
}

/// Sends one datagram and returns the reply received within 2 s.
pub fn udp_exchange(to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .unwrap();
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(msg, to).unwrap();
    let mut buf = vec![0; 65536];
    let n = s.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Sends one record over a new TCP connection and returns the reply record.
pub fn tcp_exchange(to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut rec = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(msg);
    s.write_all(&rec).ok()?;
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).ok()?;
    let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
}

/// What a reply says, read by offsets: (xid, reply_stat, accept_stat or reject_stat, rest).
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// MSG_ACCEPTED with accept_stat and the words after it.
    Accepted(u32, Vec<u32>),
    /// MSG_DENIED with reject_stat and the words after it.
    Denied(u32, Vec<u32>),
}

/// Parses a reply to `xid`.
pub fn answer(xid: u32, reply: &[u8]) -> Answer {
    assert_eq!(reply.len() % 4, 0, "reply is whole words");
    assert_eq!(word(reply, 0), xid, "xid echoed");
    assert_eq!(word(reply, 1), 1, "a REPLY");
    let words: Vec<u32> = (0..reply.len() / 4).map(|i| word(reply, i)).collect();
    match words[2] {
        0 => {
            assert_eq!(words[3], 0, "verifier AUTH_NONE");
            assert_eq!(words[4], 0, "empty verifier");
            Answer::Accepted(words[5], words[6..].to_vec())
        }
        1 => Answer::Denied(words[3], words[4..].to_vec()),
        other => panic!("bad reply_stat {other}"),
    }
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A small deterministic generator for hostile inputs.
pub struct XorShift(pub u64);

impl XorShift {
    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One callback a [`LockdStandIn`] received: source address, version, procedure, arguments.
pub type Received = (SocketAddr, u32, u32, Vec<u8>);

/// A lockd stand-in: receives NLM callbacks (any version, procedure 16) on 127.0.0.1 in a
/// test host and records them; registered with the host's rpcbind as 100021 versions 1, 3 and
/// 4 on UDP (PMAP SET, hand-built bytes). With `replies` false it never replies (a hung lockd).
pub struct LockdStandIn {
    /// Callbacks received.
    pub calls: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    /// When each of [`LockdStandIn::calls`] arrived.
    pub arrivals: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    /// The UDP port it listens on.
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LockdStandIn {
    /// Starts it inside `host` (which must run rpcbind).
    pub fn start(host: &Host, replies: bool) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let calls = Arc::new(Mutex::new(Vec::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let ns = File::open(host.netns_path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (c, s, at) = (calls.clone(), stop.clone(), arrivals.clone());
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let port = sock.local_addr().unwrap().port();
            for vers in [1u32, 3, 4] {
                let mut args = Vec::new();
                for w in [100_021u32, vers, 17, u32::from(port)] {
                    args.extend_from_slice(&w.to_be_bytes());
                }
                let set = call(0x5e7 + vers, 100_000, 2, 1, &args);
                let r = udp_exchange("127.0.0.1:111".parse().unwrap(), &set)
                    .expect("rpcbind answers PMAP SET");
                assert_eq!(
                    answer(0x5e7 + vers, &r),
                    Answer::Accepted(0, vec![1]),
                    "PMAP SET"
                );
            }
            tx.send(port).unwrap();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let m = &buf[..n];
                if n < 40 || word(m, 1) != 0 || word(m, 3) != 100_021 {
                    continue;
                }
                let (vers, proc_) = (word(m, 4), word(m, 5));
                // Skip credential and verifier (AUTH_NONE or AUTH_SYS with any body).
                let cred_len = word(m, 7) as usize;
                let verf_at = 32 + cred_len.div_ceil(4) * 4;
                if m.len() < verf_at + 8 {
                    continue;
                }
                let verf_len =
                    u32::from_be_bytes(m[verf_at + 4..verf_at + 8].try_into().unwrap()) as usize;
                let args_at = verf_at + 8 + verf_len.div_ceil(4) * 4;
                at.lock().unwrap().push(std::time::Instant::now());
                c.lock().unwrap().push((
                    from,
                    vers,
                    proc_,
                    m.get(args_at..).unwrap_or_default().to_vec(),
                ));
                if replies {
                    let mut reply = Vec::new();
                    for w in [word(m, 0), 1, 0, 0, 0, 0] {
                        reply.extend_from_slice(&w.to_be_bytes());
                    }
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("lockd stand-in started");
        Self {
            calls,
            arrivals,
            port,
            stop,
        }
    }

    /// Waits until `n` callbacks arrived; returns all of them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let got = self.calls.lock().unwrap().clone();
            if got.len() >= n || std::time::Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LockdStandIn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The arguments of SM_MON, built by hand: mon_name, my_name, 100021/3/16, cookie.
pub fn mon_args(mon_name: &[u8], my_name: &[u8], cookie: [u8; 16]) -> Vec<u8> {
    let mut v = xdr_string(mon_name);
    v.extend(xdr_string(my_name));
    for w in [100_021u32, 3, 16] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(&cookie);
    v
}

/// `struct status` as lockd receives it: (mon_name, state, cookie), parsed by offsets.
pub fn parse_status(args: &[u8]) -> (Vec<u8>, i32, [u8; 16]) {
    let len = u32::from_be_bytes(args[..4].try_into().unwrap()) as usize;
    let name = args[4..4 + len].to_vec();
    let at = 4 + len.div_ceil(4) * 4;
    let state = i32::from_be_bytes(args[at..at + 4].try_into().unwrap());
    let cookie = args[at + 4..at + 20].try_into().unwrap();
    (name, state, cookie)
}

/// Debian's rpc.statd in `host` (which must run rpcbind), `-F -d -L` on `/var/lib/nfs/c` (its
/// `sm/` and `sm.bak/` created first, as it needs them), on `port` if given. Waits until it is
/// registered; returns it and its UDP port.
pub fn debian_statd(host: &Host, port: Option<u16>) -> (Proc, u16) {
    host.write_file("/var/lib/nfs/c/sm.bak/.keep", "").unwrap();
    host.write_file("/var/lib/nfs/c/sm/.keep", "").unwrap();
    let bin = nsm_testhost::tool_path("rpc.statd").expect("Debian's rpc.statd (nfs-common)");
    let bin = bin.to_str().unwrap().to_owned();
    let port_arg = port.map(|p| p.to_string());
    let mut argv = vec![bin.as_str(), "-F", "-d", "-L", "-P", "/var/lib/nfs/c"];
    if let Some(p) = &port_arg {
        argv.extend(["-p", p.as_str()]);
    }
    let statd = host.spawn("rpc.statd", &argv).unwrap();
    let regs = host
        .wait_registered(100_024, Duration::from_secs(10))
        .unwrap();
    let udp = regs.iter().find(|r| r.protocol == "udp").unwrap().port;
    (statd, udp)
}

/// lockd's SM_MON of `mon_name` as `my_name` with `cookie`, to the statd on loopback port
/// `port` inside `host`; asserts it answered stat_succ.
pub fn sm_mon(host: &Host, port: u16, mon_name: &str, my_name: &str, cookie: [u8; 16]) {
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = in_netns(host, || {
        let m = call(
            7,
            100_024,
            1,
            2,
            &mon_args(mon_name.as_bytes(), my_name.as_bytes(), cookie),
        );
        answer(7, &udp_exchange(local, &m).unwrap())
    });
    assert!(matches!(&r, Answer::Accepted(0, w) if w[0] == 0), "{r:?}");
}

/// (mon_name, state) of each lockd callback, each checked to carry `cookie`.
pub fn callback_states(calls: &[Received], cookie: [u8; 16]) -> Vec<(String, i32)> {
    calls
        .iter()
        .map(|c| {
            let (name, state, got) = parse_status(&c.3);
            assert_eq!(got, cookie);
            (String::from_utf8(name).unwrap(), state)
        })
        .collect()
}

/// The non-loopback senders of the SM_NOTIFYs in Debian rpc.statd's log ("access by ADDR").
pub fn notify_senders(statd_log: &str) -> Vec<String> {
    statd_log
        .lines()
        .filter_map(|l| l.split("access by ").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_owned)
        .filter(|a| !a.starts_with("127.") && a != "::1")
        .collect()
}

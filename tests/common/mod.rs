//! Shared pieces of the black-box tests: starting nsmd in a test host, running code inside a
//! host's network namespace, and a raw RPC client written byte by byte (independent of
//! nsmd's own RPC code, so it checks nsmd rather than agreeing with it).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use nsm_testhost::{Host, Proc};

/// The nsmd binary under test.
pub const NSMD: &str = env!("CARGO_BIN_EXE_nsmd");

/// Starts `nsmd -F -d ARGS` in `host` and waits until it serves; returns it and its port.
pub fn spawn_nsmd(host: &Host, name: &str, args: &[&str]) -> (Proc, u16) {
    let mut argv = vec![NSMD, "-F", "-d"];
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
    let ns = File::open(host.netns_path()).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
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

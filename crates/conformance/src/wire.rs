//! ONC RPC on the wire, written byte by byte from RFC 5531 (messages, record marking),
//! RFC 4506 (XDR) and RFC 1833 (rpcbind). Deliberately independent of nsmd's own RPC code
//! (nsm-rpc, nsm-xdr), so the suite checks an implementation rather than agreeing with it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// NSM program number (X/Open XNFS, sm_inter.x).
pub(crate) const SM_PROG: u32 = 100_024;
/// NLM program number (lockd).
pub(crate) const NLM_PROG: u32 = 100_021;
/// How long to wait for one reply.
pub(crate) const REPLY_WAIT: Duration = Duration::from_secs(3);

static XID: AtomicU32 = AtomicU32::new(0x6e73_0000);

/// A fresh transaction id.
pub(crate) fn xid() -> u32 {
    XID.fetch_add(1, Ordering::Relaxed)
}

/// Appends big-endian words.
pub(crate) fn words(v: &mut Vec<u8>, ws: &[u32]) {
    for w in ws {
        v.extend_from_slice(&w.to_be_bytes());
    }
}

/// An RPC CALL (RFC 5531 §9) with the given credential flavor and body, AUTH_NONE verifier.
pub(crate) fn call_auth(
    xid: u32,
    rpcvers: u32,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: (u32, &[u8]),
    args: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    words(&mut v, &[xid, 0, rpcvers, prog, vers, proc_, cred.0]);
    v.extend(opaque(cred.1));
    words(&mut v, &[0, 0]);
    v.extend_from_slice(args);
    v
}

/// An RPC CALL with AUTH_NONE.
pub(crate) fn call(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    call_auth(xid, 2, prog, vers, proc_, (0, &[]), args)
}

/// XDR variable-length opaque / string (RFC 4506 §4.10, §4.11).
pub(crate) fn opaque(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v.resize(v.len() + (4 - s.len() % 4) % 4, 0);
    v
}

/// An AUTH_SYS credential body (RFC 5531 appendix A).
pub(crate) fn authsys_body() -> Vec<u8> {
    let mut v = Vec::new();
    words(&mut v, &[0x1234_5678]);
    v.extend(opaque(b"conformance"));
    words(&mut v, &[0, 0, 2, 0, 100]);
    v
}

/// `mon` (sm_inter.x): mon_name, my_name, my_prog, my_vers, my_proc, priv.
pub(crate) fn mon_args(
    mon_name: &[u8],
    my_name: &[u8],
    prog_vers_proc: [u32; 3],
    cookie: [u8; 16],
) -> Vec<u8> {
    let mut v = opaque(mon_name);
    v.extend(opaque(my_name));
    words(&mut v, &prog_vers_proc);
    v.extend_from_slice(&cookie);
    v
}

/// `mon_id` (sm_inter.x), the argument of SM_UNMON.
pub(crate) fn mon_id_args(mon_name: &[u8], my_name: &[u8], pvp: [u32; 3]) -> Vec<u8> {
    let mut v = opaque(mon_name);
    v.extend(opaque(my_name));
    words(&mut v, &pvp);
    v
}

/// `my_id` (sm_inter.x), the argument of SM_UNMON_ALL.
pub(crate) fn my_id_args(my_name: &[u8], pvp: [u32; 3]) -> Vec<u8> {
    let mut v = opaque(my_name);
    words(&mut v, &pvp);
    v
}

/// `stat_chge` (sm_inter.x), the argument of SM_NOTIFY.
pub(crate) fn stat_chge(mon_name: &[u8], state: i32) -> Vec<u8> {
    let mut v = opaque(mon_name);
    v.extend_from_slice(&state.to_be_bytes());
    v
}

/// A UDP socket bound to the wildcard of `to`'s family (or to `from`).
fn udp_socket(to: SocketAddr, from: Option<SocketAddr>) -> Result<UdpSocket, String> {
    let bind = from.unwrap_or_else(|| {
        if to.is_ipv6() {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    });
    let s = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    s.set_read_timeout(Some(REPLY_WAIT))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Sends one datagram (optionally from `from`) and returns the reply to `xid`, or None when
/// none came within [`REPLY_WAIT`].
pub(crate) fn udp_from(
    to: SocketAddr,
    from: Option<SocketAddr>,
    msg: &[u8],
) -> Result<Option<Vec<u8>>, String> {
    let s = udp_socket(to, from)?;
    s.send_to(msg, to)
        .map_err(|e| format!("send to {to}: {e}"))?;
    let want = msg.get(..4).map(<[u8]>::to_vec).unwrap_or_default();
    let deadline = Instant::now() + REPLY_WAIT;
    let mut buf = vec![0; 65536];
    while Instant::now() < deadline {
        match s.recv(&mut buf) {
            Ok(n) if buf[..n].starts_with(&want) => return Ok(Some(buf[..n].to_vec())),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
    Ok(None)
}

/// Sends one datagram on a connected socket (so an ICMP "port unreachable" ends the wait at
/// once) and waits `wait` for the reply.
pub(crate) fn udp_wait(
    to: SocketAddr,
    msg: &[u8],
    wait: Duration,
) -> Result<Option<Vec<u8>>, String> {
    let s = udp_socket(to, None)?;
    s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    s.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    s.send(msg).map_err(|e| format!("send to {to}: {e}"))?;
    let mut buf = vec![0; 65536];
    Ok(s.recv(&mut buf).ok().map(|n| buf[..n].to_vec()))
}

/// Sends one datagram and returns the reply.
pub(crate) fn udp(to: SocketAddr, msg: &[u8]) -> Result<Option<Vec<u8>>, String> {
    udp_from(to, None, msg)
}

/// Connects over TCP.
pub(crate) fn tcp_connect(to: SocketAddr) -> Result<TcpStream, String> {
    let s =
        TcpStream::connect_timeout(&to, REPLY_WAIT).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(REPLY_WAIT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(REPLY_WAIT))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// One record in one fragment (RFC 5531 §11).
pub(crate) fn record(msg: &[u8]) -> Vec<u8> {
    let mut rec = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(msg);
    rec
}

/// Reads one reply record (all its fragments); None on timeout or close.
pub(crate) fn read_record(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut hdr = [0u8; 4];
        s.read_exact(&mut hdr).ok()?;
        let mark = u32::from_be_bytes(hdr);
        let len = (mark & 0x7fff_ffff) as usize;
        if body.len() + len > 1 << 20 {
            return None;
        }
        let at = body.len();
        body.resize(at + len, 0);
        s.read_exact(&mut body[at..]).ok()?;
        if mark & 0x8000_0000 != 0 {
            return Some(body);
        }
    }
}

/// Sends one record over a new TCP connection and returns the reply record.
pub(crate) fn tcp(to: SocketAddr, msg: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut s = tcp_connect(to)?;
    s.write_all(&record(msg))
        .map_err(|e| format!("write to {to}: {e}"))?;
    Ok(read_record(&mut s))
}

/// A reply, read by offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// MSG_ACCEPTED: verifier flavor, accept_stat, the words after it.
    Accepted(u32, u32, Vec<u32>),
    /// MSG_DENIED: reject_stat and the words after it.
    Denied(u32, Vec<u32>),
}

/// Parses a reply to `xid`.
pub(crate) fn parse_reply(xid: u32, r: &[u8]) -> Result<Reply, String> {
    if r.len() % 4 != 0 || r.len() < 12 {
        return Err(format!("reply of {} bytes is not whole XDR words", r.len()));
    }
    let w: Vec<u32> = r
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if w[0] != xid {
        return Err(format!("reply xid {:#x}, call xid {xid:#x}", w[0]));
    }
    if w[1] != 1 {
        return Err(format!("msg_type {} is not REPLY", w[1]));
    }
    match w[2] {
        0 => {
            let vlen = *w.get(4).ok_or("short reply")? as usize;
            let at = 5 + vlen.div_ceil(4);
            let stat = *w.get(at).ok_or("reply ends before accept_stat")?;
            Ok(Reply::Accepted(w[3], stat, w[at + 1..].to_vec()))
        }
        1 => Ok(Reply::Denied(w[3], w[4..].to_vec())),
        o => Err(format!("reply_stat {o}")),
    }
}

/// The results of a successful reply (accept_stat SUCCESS), as words.
pub(crate) fn success(xid: u32, r: Option<Vec<u8>>) -> Result<Vec<u32>, String> {
    let r = r.ok_or("no reply")?;
    match parse_reply(xid, &r)? {
        Reply::Accepted(0, 0, w) => Ok(w),
        other => Err(format!("want MSG_ACCEPTED/SUCCESS, got {other:?}")),
    }
}

/// Expects MSG_ACCEPTED with `stat` (e.g. 4 = GARBAGE_ARGS).
pub(crate) fn expect_accept_stat(xid: u32, r: Option<Vec<u8>>, stat: u32) -> Result<(), String> {
    let r = r.ok_or("no reply")?;
    match parse_reply(xid, &r)? {
        Reply::Accepted(_, s, _) if s == stat => Ok(()),
        other => Err(format!(
            "want MSG_ACCEPTED accept_stat {stat}, got {other:?}"
        )),
    }
}

/// `sm_stat_res` {res_stat, state}.
pub(crate) fn sm_stat_res(w: &[u32]) -> Result<(u32, i32), String> {
    match w {
        [res, state] => Ok((*res, *state as i32)),
        _ => Err(format!("want sm_stat_res (2 words), got {w:?}")),
    }
}

/// PMAP_GETPORT (RFC 1833 §3.2) for (prog, vers, prot) at `rpcbind`.
pub(crate) fn pmap_getport(
    rpcbind: SocketAddr,
    prog: u32,
    vers: u32,
    prot: u32,
) -> Result<u16, String> {
    let x = xid();
    let mut a = Vec::new();
    words(&mut a, &[prog, vers, prot, 0]);
    let w = success(x, udp(rpcbind, &call(x, 100_000, 2, 3, &a))?)?;
    match w.as_slice() {
        [p] => u16::try_from(*p).map_err(|_| format!("port {p}")),
        _ => Err(format!("bad GETPORT result {w:?}")),
    }
}

/// RPCB_GETADDR version 3 (RFC 1833 §2.2.2) for (prog, vers, netid): the port of the uaddr,
/// or None for an empty one.
pub(crate) fn rpcb_getaddr(
    rpcbind: SocketAddr,
    prog: u32,
    vers: u32,
    netid: &str,
) -> Result<Option<u16>, String> {
    let x = xid();
    let mut a = Vec::new();
    words(&mut a, &[prog, vers]);
    a.extend(opaque(netid.as_bytes()));
    a.extend(opaque(b""));
    a.extend(opaque(b""));
    let r = udp(rpcbind, &call(x, 100_000, 3, 3, &a))?.ok_or("no reply from rpcbind")?;
    match parse_reply(x, &r)? {
        Reply::Accepted(_, 0, _) => {}
        other => return Err(format!("GETADDR: {other:?}")),
    }
    // Results: a string after the 24-byte reply header (AUTH_NONE verifier).
    let body = r.get(24..).ok_or("short GETADDR reply")?;
    let len =
        u32::from_be_bytes(body.get(..4).ok_or("short")?.try_into().map_err(|_| "x")?) as usize;
    let s = body.get(4..4 + len).ok_or("short uaddr")?;
    if s.is_empty() {
        return Ok(None);
    }
    let s = String::from_utf8_lossy(s);
    let parts: Vec<&str> = s.rsplitn(3, '.').collect();
    match parts.as_slice() {
        [lo, hi, _] => {
            let (hi, lo): (u16, u16) = (
                hi.parse().map_err(|_| format!("uaddr {s}"))?,
                lo.parse().map_err(|_| format!("uaddr {s}"))?,
            );
            Ok(Some(hi * 256 + lo))
        }
        _ => Err(format!("uaddr {s}")),
    }
}

/// One callback a [`LockdStandIn`] received.
#[derive(Debug, Clone)]
pub(crate) struct Callback {
    /// Where it came from.
    pub(crate) from: SocketAddr,
    /// NLM version and procedure called.
    pub(crate) vers: u32,
    pub(crate) proc_: u32,
    /// `status`: mon_name, state, priv (None when the arguments do not parse).
    pub(crate) status: Option<(Vec<u8>, i32, [u8; 16])>,
}

/// `struct status` as lockd receives it, parsed by offsets.
fn parse_status(a: &[u8]) -> Option<(Vec<u8>, i32, [u8; 16])> {
    let len = u32::from_be_bytes(a.get(..4)?.try_into().ok()?) as usize;
    let name = a.get(4..4 + len)?.to_vec();
    let at = 4 + len.div_ceil(4) * 4;
    let state = i32::from_be_bytes(a.get(at..at + 4)?.try_into().ok()?);
    let cookie = a.get(at + 4..at + 20)?.try_into().ok()?;
    if a.len() != at + 20 {
        return None;
    }
    Some((name, state, cookie))
}

/// A lockd stand-in: a UDP socket on 127.0.0.1 that records NLM callbacks and answers them,
/// registered with the local rpcbind as 100021 versions 1, 3 and 4 (PMAP SET).
#[derive(Debug)]
pub(crate) struct LockdStandIn {
    calls: Arc<Mutex<Vec<Callback>>>,
    stop: Arc<AtomicBool>,
}

impl LockdStandIn {
    /// Starts it on `sock` (bound to 127.0.0.1, in the target's network) and registers it
    /// with the rpcbind at 127.0.0.1:111 from the calling thread's network: call
    /// [`LockdStandIn::register`] from there.
    pub(crate) fn start(sock: UdpSocket) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (calls.clone(), stop.clone());
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let m = &buf[..n];
                let w = |i: usize| -> u32 {
                    m.get(i * 4..i * 4 + 4)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u32::from_be_bytes)
                };
                if n < 40 || w(1) != 0 || w(3) != NLM_PROG {
                    continue;
                }
                let cred_len = w(7) as usize;
                let verf_at = 32 + cred_len.div_ceil(4) * 4;
                let verf_len = w(verf_at / 4 + 1) as usize;
                let args_at = verf_at + 8 + verf_len.div_ceil(4) * 4;
                let status = m.get(args_at..).and_then(parse_status);
                if let Ok(mut v) = c.lock() {
                    v.push(Callback {
                        from,
                        vers: w(4),
                        proc_: w(5),
                        status,
                    });
                }
                let mut reply = Vec::new();
                words(&mut reply, &[w(0), 1, 0, 0, 0, 0]);
                let _ = sock.send_to(&reply, from);
            }
        });
        Self { calls, stop }
    }

    /// Registers `port` for NLM versions 1, 3 and 4 over UDP with the rpcbind at 127.0.0.1.
    pub(crate) fn register(port: u16) -> Result<(), String> {
        for vers in [1u32, 3, 4] {
            let x = xid();
            let mut a = Vec::new();
            words(&mut a, &[NLM_PROG, vers, 17, u32::from(port)]);
            let w = success(
                x,
                udp(
                    "127.0.0.1:111".parse().map_err(|_| "addr")?,
                    &call(x, 100_000, 2, 1, &a),
                )?,
            )?;
            if w != [1] {
                return Err(format!("PMAP SET of lockd stand-in answered {w:?}"));
            }
        }
        Ok(())
    }

    /// Callbacks received so far whose mon_name is `name`.
    pub(crate) fn for_name(&self, name: &[u8]) -> Vec<Callback> {
        self.calls
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|c| {
                        c.status
                            .as_ref()
                            .is_some_and(|s| s.0.eq_ignore_ascii_case(name))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every callback received so far.
    pub(crate) fn all(&self) -> Vec<Callback> {
        self.calls.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` callbacks for `name` arrived (or `timeout`); returns them.
    pub(crate) fn wait_for(&self, name: &[u8], n: usize, timeout: Duration) -> Vec<Callback> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.for_name(name);
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LockdStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Is `a` a loopback address?
pub(crate) fn is_loopback(a: IpAddr) -> bool {
    a.is_loopback()
}

//! Port lookups multiplexed over one socket per address family, sans-IO.
//!
//! A peer's statd port is asked of its rpcbind: portmapper v2 GETPORT for IPv4, rpcbind v4
//! GETADDR for IPv6 (v3 when rpcbind answers v4 with PROG_MISMATCH). Each lookup used to have
//! a socket of its own, kept for the whole RPC timeout when the peer was dead: open files
//! grew with the number of peers, and a hard open-files limit of 1,024 slowed a large
//! notification down several times. [`PortLookups`] instead only keeps a small record per
//! lookup in flight, keyed by xid: the driver sends its datagrams on the SM_NOTIFY socket of
//! the family (so lookups leave from the service's address, as sm-notify's do) and hands it
//! every datagram that arrives there; replies are matched by xid *and* by the rpcbind address
//! asked, and anything else (another xid, another sender, garbage) is ignored.
//!
//! Retransmissions follow the RPC client's rules ([`LookupPolicy`], the same as before): the
//! first after [`LookupPolicy::retransmit`], then doubling up to
//! [`LookupPolicy::max_retransmit`], the same xid each time, until
//! [`LookupPolicy::timeout`] has passed since the first send. Timers live in one binary heap
//! with lazy deletion; there is no task per lookup. No clock, no socket: every method takes
//! `now`, [`PortLookups::next_wake`] says when to call [`PortLookups::poll`] again.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nsm_rpc::msg::{self, AcceptStat, CallHeader, OpaqueAuth, ReplyBody};
use nsm_xdr::from_bytes;
use nsm_xdr::nsm::{SM_PROG, SM_VERS};
use nsm_xdr::rpcbind::{
    IPPROTO_UDP, Mapping, PMAP_PROG, PMAP_VERS, PMAPPROC_GETPORT, RPCB_VERS, RPCB_VERS4,
    RPCBPROC_GETADDR, Rpcb, RpcbString, parse_uaddr, uaddr,
};

use crate::scheduler::PeerId;

/// How a port lookup retransmits and when it gives up (the RPC client's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupPolicy {
    /// The lookup, retransmissions included, gives up after this long (per rpcbind version
    /// tried).
    pub timeout: Duration,
    /// The first retransmission comes after this long.
    pub retransmit: Duration,
    /// The interval doubles after each retransmission up to this.
    pub max_retransmit: Duration,
}

impl Default for LookupPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            retransmit: Duration::from_millis(500),
            max_retransmit: Duration::from_secs(2),
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The rpcbind it goes to (port 111).
    pub dest: SocketAddr,
    /// Its xid (for [`PortLookups::on_send_error`]).
    pub xid: u32,
    /// The RPC call.
    pub bytes: BytesMut,
}

/// A finished lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupDone {
    /// The peer it was for.
    pub peer: PeerId,
    /// The rpcbind asked.
    pub rpcbind: SocketAddr,
    /// statd's UDP port, `None` when statd is not registered, or why there is no answer.
    pub result: Result<Option<u16>, String>,
}

/// What [`PortLookups::poll`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupEvent {
    /// Send (a retransmission).
    Send(Datagram),
    /// A lookup timed out.
    Done(LookupDone),
}

/// What [`PortLookups::on_datagram`] made of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Not a reply, or a reply to no lookup in flight: maybe an SM_NOTIFY reply.
    NotALookup,
    /// The xid of a lookup in flight, but from another address than the rpcbind asked:
    /// ignored (the lookup goes on).
    WrongSender {
        /// The rpcbind asked.
        expected: SocketAddr,
    },
    /// The lookup finished.
    Done(LookupDone),
    /// rpcbind does not speak GETADDR v4: the same lookup again with v3 (a new xid).
    Send(Datagram),
}

#[derive(Debug)]
struct Lookup {
    peer: PeerId,
    rpcbind: SocketAddr,
    /// 2 (GETPORT), 4 or 3 (GETADDR).
    vers: u32,
    /// When the next retransmission (or the timeout) is due.
    next: Instant,
    deadline: Instant,
    rto: Duration,
    sends: u32,
}

/// The port lookups in flight. See the module documentation.
pub struct PortLookups {
    policy: LookupPolicy,
    pending: HashMap<u32, Lookup>,
    /// `(due, xid)`, earliest first; an entry is stale when its lookup is gone or its due is
    /// not the lookup's `next`. After every `&mut self` method the top entry is a live one.
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    xids: Box<dyn FnMut() -> u32 + Send>,
}

impl fmt::Debug for PortLookups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortLookups")
            .field("policy", &self.policy)
            .field("in_flight", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl PortLookups {
    /// No lookups yet; `xids` hands out transaction ids (unique among the calls in flight on
    /// the socket, SM_NOTIFYs included: the driver gives both the same source).
    pub fn new(policy: LookupPolicy, xids: impl FnMut() -> u32 + Send + 'static) -> Self {
        Self {
            policy,
            pending: HashMap::new(),
            timers: BinaryHeap::new(),
            xids: Box::new(xids),
        }
    }

    /// How many lookups are in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Starts looking up statd's port for `peer` at `rpcbind` (port 111): the first datagram
    /// to send.
    pub fn start(&mut self, peer: PeerId, rpcbind: SocketAddr, now: Instant) -> Datagram {
        let vers = if rpcbind.is_ipv6() {
            RPCB_VERS4
        } else {
            PMAP_VERS
        };
        self.begin(peer, rpcbind, vers, now)
    }

    fn begin(&mut self, peer: PeerId, rpcbind: SocketAddr, vers: u32, now: Instant) -> Datagram {
        let mut xid = (self.xids)();
        while xid == 0 || self.pending.contains_key(&xid) {
            xid = (self.xids)();
        }
        let rto = self.policy.retransmit;
        let deadline = now + self.policy.timeout;
        let next = (now + rto).min(deadline);
        self.pending.insert(
            xid,
            Lookup {
                peer,
                rpcbind,
                vers,
                next,
                deadline,
                rto,
                sends: 1,
            },
        );
        self.timers.push(Reverse((next, xid)));
        Datagram {
            dest: rpcbind,
            xid,
            bytes: encode_lookup(xid, rpcbind, vers),
        }
    }

    /// Retransmissions and timeouts due at `now`, appended to `out`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<LookupEvent>) {
        while let Some(&Reverse((t, xid))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(l) = self.pending.get_mut(&xid) else {
                continue;
            };
            if l.next != t {
                continue;
            }
            if t >= l.deadline {
                let l = self.pending.remove(&xid).map(|l| LookupDone {
                    peer: l.peer,
                    rpcbind: l.rpcbind,
                    result: Err(format!(
                        "no reply from rpcbind at {} within {:?} ({} transmissions)",
                        l.rpcbind, self.policy.timeout, l.sends
                    )),
                });
                out.extend(l.map(LookupEvent::Done));
                continue;
            }
            l.rto = (l.rto * 2).min(self.policy.max_retransmit);
            l.next = (now + l.rto).min(l.deadline);
            l.sends += 1;
            self.timers.push(Reverse((l.next, xid)));
            out.push(LookupEvent::Send(Datagram {
                dest: l.rpcbind,
                xid,
                bytes: encode_lookup(xid, l.rpcbind, l.vers),
            }));
        }
        self.prune();
    }

    /// When [`PortLookups::poll`] has something to do next.
    pub fn next_wake(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Drops stale entries from the top of the timer heap.
    fn prune(&mut self) {
        while let Some(&Reverse((t, xid))) = self.timers.peek() {
            if self.pending.get(&xid).is_some_and(|l| l.next == t) {
                break;
            }
            self.timers.pop();
        }
    }

    /// Sending the datagram `xid` failed: the lookup fails at once (as the RPC client's
    /// did). `None` when no such lookup is in flight.
    pub fn on_send_error(&mut self, xid: u32, error: &str) -> Option<LookupDone> {
        let l = self.pending.remove(&xid)?;
        self.prune();
        Some(LookupDone {
            peer: l.peer,
            rpcbind: l.rpcbind,
            result: Err(format!("send to rpcbind at {}: {error}", l.rpcbind)),
        })
    }

    /// The kernel reported an error for a datagram sent to `dest` (an ICMP port or host
    /// unreachable, read from the socket's error queue): every lookup in flight at that
    /// rpcbind fails at once, as it did when each lookup had a connected socket of its own.
    /// (A scan of the lookups in flight: they are bounded by the window and the dead peers'
    /// RPC timeout, not by the number of peers.)
    pub fn on_unreachable(&mut self, dest: SocketAddr, error: &str) -> Vec<LookupDone> {
        let xids: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, l)| same_addr(dest, l.rpcbind))
            .map(|(x, _)| *x)
            .collect();
        let mut out = Vec::with_capacity(xids.len());
        for xid in xids {
            if let Some(l) = self.pending.remove(&xid) {
                out.push(LookupDone {
                    peer: l.peer,
                    rpcbind: l.rpcbind,
                    result: Err(format!("rpcbind at {}: {error}", l.rpcbind)),
                });
            }
        }
        self.prune();
        out
    }

    /// A datagram `bytes` arrived from `from` on the socket.
    pub fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Received {
        let Ok(reply) = msg::parse_reply(bytes) else {
            return Received::NotALookup;
        };
        let Some(l) = self.pending.get(&reply.xid) else {
            return Received::NotALookup;
        };
        if !same_addr(from, l.rpcbind) {
            return Received::WrongSender {
                expected: l.rpcbind,
            };
        }
        let Some(l) = self.pending.remove(&reply.xid) else {
            return Received::NotALookup;
        };
        self.prune();
        let rpcbind = l.rpcbind;
        let result = match reply.body {
            ReplyBody::Accepted(AcceptStat::Success(res)) => decode_result(rpcbind, l.vers, res),
            ReplyBody::Accepted(AcceptStat::ProgMismatch { .. }) if l.vers == RPCB_VERS4 => {
                return Received::Send(self.begin(l.peer, rpcbind, RPCB_VERS, now));
            }
            ReplyBody::Accepted(stat) => Err(format!(
                "rpcbind at {rpcbind} answered {:?}",
                stat.map(|_| ())
            )),
            ReplyBody::Denied(r) => Err(format!("rpcbind at {rpcbind} denied the call: {r:?}")),
        };
        Received::Done(LookupDone {
            peer: l.peer,
            rpcbind,
            result,
        })
    }
}

/// Whether a reply from `from` comes from `asked`: address and port (the sockets are
/// `IPV6_V6ONLY`, so no IPv4-mapped form to unwrap; an IPv6 scope id is not compared).
fn same_addr(from: SocketAddr, asked: SocketAddr) -> bool {
    from.ip() == asked.ip() && from.port() == asked.port()
}

/// The call: GETPORT(100024, 1, udp) for `vers` 2, GETADDR(100024, 1, "udp6", uaddr of
/// `rpcbind`, "") for 3 and 4, with AUTH_NONE.
fn encode_lookup(xid: u32, rpcbind: SocketAddr, vers: u32) -> BytesMut {
    let mut h = CallHeader {
        xid,
        prog: PMAP_PROG,
        vers,
        proc_: PMAPPROC_GETPORT,
        cred: OpaqueAuth::NONE,
        verf: OpaqueAuth::NONE,
    };
    let mut out = BytesMut::with_capacity(96);
    if vers == PMAP_VERS {
        let m = Mapping {
            prog: SM_PROG,
            vers: SM_VERS,
            prot: IPPROTO_UDP,
            port: 0,
        };
        msg::encode_call(&h, &m, &mut out);
        return out;
    }
    h.proc_ = RPCBPROC_GETADDR;
    let ua = uaddr(rpcbind);
    let s = |v: &'static [u8]| RpcbString::new(v).unwrap_or_default();
    let args = Rpcb {
        r_prog: SM_PROG,
        r_vers: SM_VERS,
        r_netid: s(b"udp6"),
        r_addr: RpcbString::new(ua.as_bytes()).unwrap_or_default(),
        r_owner: s(b""),
    };
    msg::encode_call(&h, &args, &mut out);
    out
}

/// The port in a successful reply's results.
fn decode_result(rpcbind: SocketAddr, vers: u32, res: &[u8]) -> Result<Option<u16>, String> {
    let bad =
        |what: &dyn fmt::Display| format!("malformed reply from rpcbind at {rpcbind}: {what}");
    if vers == PMAP_VERS {
        let port = from_bytes::<u32>(res).map_err(|e| bad(&e))?;
        return match u16::try_from(port) {
            Ok(0) => Ok(None),
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(bad(&format_args!("port {port} out of range"))),
        };
    }
    let s = from_bytes::<RpcbString<'_>>(res).map_err(|e| bad(&e))?;
    if s.is_empty() {
        return Ok(None);
    }
    let a = parse_uaddr(s.as_bytes())
        .ok_or_else(|| bad(&format_args!("universal address {s} does not parse")))?;
    Ok(Some(a.port()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v4(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, last], 111))
    }

    fn v6() -> SocketAddr {
        "[2001:db8::7]:111".parse().unwrap()
    }

    /// xids 0x100, 0x101, ... (0 and taken xids are skipped by the multiplexer).
    fn lookups(policy: LookupPolicy) -> PortLookups {
        let mut next = 0x100u32;
        PortLookups::new(policy, move || {
            next += 1;
            next - 1
        })
    }

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// An accepted, successful reply to `xid` with `results`.
    fn reply(xid: u32, results: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [xid, 1, 0, 0, 0, 0] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(results);
        v
    }

    #[test]
    fn getport_call_bytes() {
        let mut l = lookups(LookupPolicy::default());
        let d = l.start(3, v4(9), Instant::now());
        assert_eq!(d.dest, v4(9));
        assert_eq!(d.xid, 0x100);
        // xid, CALL, rpcvers 2, PMAP 100000/2/3, AUTH_NONE x2, mapping {100024, 1, 17, 0}.
        assert_eq!(
            words(&d.bytes),
            [0x100, 0, 2, 100_000, 2, 3, 0, 0, 0, 0, 100_024, 1, 17, 0]
        );
    }

    #[test]
    fn getaddr_call_bytes_and_v3_fallback() {
        let t0 = Instant::now();
        let mut l = lookups(LookupPolicy::default());
        let d = l.start(1, v6(), t0);
        let mut want: Vec<u8> = Vec::new();
        for w in [0x100u32, 0, 2, 100_000, 4, 3, 0, 0, 0, 0, 100_024, 1, 4] {
            want.extend_from_slice(&w.to_be_bytes());
        }
        want.extend_from_slice(b"udp6");
        // uaddr "2001:db8::7.0.111" (17 bytes and 3 of padding), owner "".
        want.extend_from_slice(&17u32.to_be_bytes());
        want.extend_from_slice(b"2001:db8::7.0.111\0\0\0");
        want.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(&d.bytes[..], &want[..]);
        // PROG_MISMATCH {3, 3}: again with v3 and a new xid.
        let mut mismatch = Vec::new();
        for w in [0x100u32, 1, 0, 0, 0, 2, 3, 3] {
            mismatch.extend_from_slice(&w.to_be_bytes());
        }
        let Received::Send(d3) = l.on_datagram(v6(), &mismatch, t0) else {
            panic!("v3 retry expected");
        };
        assert_eq!(d3.xid, 0x101);
        assert_eq!(words(&d3.bytes[..24]), [0x101, 0, 2, 100_000, 3, 3]);
        assert_eq!(d3.bytes[24..], d.bytes[24..]);
        // The v3 answer: "2001:db8::7.3.32" → port 800.
        let ua = b"2001:db8::7.3.32";
        let mut res = (ua.len() as u32).to_be_bytes().to_vec();
        res.extend_from_slice(ua);
        assert_eq!(
            l.on_datagram(v6(), &reply(0x101, &res), t0),
            Received::Done(LookupDone {
                peer: 1,
                rpcbind: v6(),
                result: Ok(Some(800))
            })
        );
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn replies_matched_by_xid_and_sender() {
        let t0 = Instant::now();
        let mut l = lookups(LookupPolicy::default());
        let a = l.start(0, v4(1), t0);
        let b = l.start(1, v4(2), t0);
        // b's answer first, then a's "not registered".
        assert_eq!(
            l.on_datagram(v4(2), &reply(b.xid, &[0, 0, 0x03, 0x20]), t0),
            Received::Done(LookupDone {
                peer: 1,
                rpcbind: v4(2),
                result: Ok(Some(800))
            })
        );
        assert_eq!(
            l.on_datagram(v4(1), &reply(a.xid, &[0, 0, 0, 0]), t0),
            Received::Done(LookupDone {
                peer: 0,
                rpcbind: v4(1),
                result: Ok(None)
            })
        );
        // A duplicate of an answered lookup is not a lookup any more.
        assert_eq!(
            l.on_datagram(v4(1), &reply(a.xid, &[0, 0, 0, 0]), t0),
            Received::NotALookup
        );
        assert_eq!(l.next_wake(), None, "no timers left");
    }

    #[test]
    fn hostile_datagrams_are_ignored() {
        let t0 = Instant::now();
        let mut l = lookups(LookupPolicy::default());
        let d = l.start(0, v4(1), t0);
        let good = reply(d.xid, &[0, 0, 0x03, 0x20]);
        // Another address, or rpcbind's address from another port: ignored.
        for from in [v4(2), SocketAddr::from(([198, 51, 100, 1], 112))] {
            assert_eq!(
                l.on_datagram(from, &good, t0),
                Received::WrongSender { expected: v4(1) }
            );
        }
        // Another xid; a CALL with the lookup's xid; truncated replies; empty; random bytes.
        let mut call = good.clone();
        call[7] = 0;
        let hostile: Vec<Vec<u8>> = vec![
            reply(d.xid + 1, &[0, 0, 0x03, 0x20]),
            call,
            good[..3].to_vec(),
            good[..12].to_vec(),
            Vec::new(),
            vec![0xff; 64],
        ];
        for h in &hostile {
            assert_eq!(l.on_datagram(v4(1), h, t0), Received::NotALookup, "{h:?}");
        }
        assert_eq!(l.in_flight(), 1, "the lookup goes on");
        // A garbage result from the right sender fails the lookup (as the RPC client did).
        let Received::Done(done) = l.on_datagram(v4(1), &reply(d.xid, &[1, 2]), t0) else {
            panic!("done expected");
        };
        assert!(done.result.unwrap_err().contains("malformed reply"));
        // A port beyond 65535 too.
        let d = l.start(0, v4(1), t0);
        let Received::Done(done) = l.on_datagram(v4(1), &reply(d.xid, &[0, 1, 0, 0]), t0) else {
            panic!("done expected");
        };
        assert!(done.result.unwrap_err().contains("out of range"));
        // A denied call, and an accepted error.
        let d = l.start(0, v4(1), t0);
        let mut denied = Vec::new();
        for w in [d.xid, 1, 1, 1, 1] {
            denied.extend_from_slice(&w.to_be_bytes());
        }
        let Received::Done(done) = l.on_datagram(v4(1), &denied, t0) else {
            panic!("done expected");
        };
        assert!(done.result.unwrap_err().contains("denied"));
        let d = l.start(0, v4(1), t0);
        let mut unavail = Vec::new();
        for w in [d.xid, 1, 0, 0, 0, 1] {
            unavail.extend_from_slice(&w.to_be_bytes());
        }
        let Received::Done(done) = l.on_datagram(v4(1), &unavail, t0) else {
            panic!("done expected");
        };
        assert!(done.result.unwrap_err().contains("ProgUnavail"));
    }

    /// Runs one unanswered lookup with `policy`; returns the send times (ms) and when it
    /// timed out.
    fn schedule(policy: LookupPolicy) -> (Vec<u128>, u128, String) {
        let t0 = Instant::now();
        let mut l = lookups(policy);
        let first = l.start(7, v4(1), t0);
        let mut sends = vec![0];
        loop {
            let now = l.next_wake().unwrap();
            let mut out = Vec::new();
            l.poll(now, &mut out);
            for e in out {
                match e {
                    LookupEvent::Send(d) => {
                        assert_eq!(d.xid, first.xid, "a retransmission keeps its xid");
                        assert_eq!(d.bytes, first.bytes);
                        sends.push((now - t0).as_millis());
                    }
                    LookupEvent::Done(d) => {
                        assert_eq!(d.peer, 7);
                        assert_eq!(l.next_wake(), None);
                        return (sends, (now - t0).as_millis(), d.result.unwrap_err());
                    }
                }
            }
        }
    }

    #[test]
    fn retransmits_double_then_time_out() {
        let (sends, done, e) = schedule(LookupPolicy::default());
        assert_eq!(sends, [0, 500, 1_500, 3_500]);
        assert_eq!(done, 5_000);
        assert_eq!(
            e,
            "no reply from rpcbind at 198.51.100.1:111 within 5s (4 transmissions)"
        );
        // After a takeover: the first retransmission at 100 ms, then the backoff.
        let (sends, done, _) = schedule(LookupPolicy {
            retransmit: Duration::from_millis(100),
            ..LookupPolicy::default()
        });
        assert_eq!(sends, [0, 100, 300, 700, 1_500, 3_100]);
        assert_eq!(done, 5_000);
    }

    #[test]
    fn a_dead_rpcbind_does_not_delay_live_ones() {
        let t0 = Instant::now();
        let mut l = lookups(LookupPolicy::default());
        let dead = l.start(0, v4(1), t0);
        let mut out = Vec::new();
        // Live lookups start over the dead one's retransmissions and are answered at once.
        for i in 1..=1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            l.poll(now, &mut out);
            let d = l.start(i as PeerId, v4(2), now);
            assert_eq!(
                l.on_datagram(v4(2), &reply(d.xid, &[0, 0, 3, 0x20]), now),
                Received::Done(LookupDone {
                    peer: i as PeerId,
                    rpcbind: v4(2),
                    result: Ok(Some(800))
                })
            );
            assert_eq!(l.in_flight(), 1, "only the dead lookup stays");
        }
        assert_eq!(
            out,
            [LookupEvent::Send(Datagram {
                dest: v4(1),
                xid: dead.xid,
                bytes: dead.bytes.clone()
            })],
            "the dead lookup retransmitted once (at 500 ms)"
        );
    }

    #[test]
    fn an_unreachable_rpcbind_fails_its_lookups_only() {
        let t0 = Instant::now();
        let mut l = lookups(LookupPolicy::default());
        let a = l.start(1, v4(1), t0);
        l.start(2, v4(2), t0);
        let a2 = l.start(3, v4(1), t0);
        let mut done = l.on_unreachable(v4(1), "Connection refused");
        done.sort_by_key(|d| d.peer);
        assert_eq!(done.len(), 2);
        assert_eq!((done[0].peer, done[1].peer), (1, 3));
        assert_eq!(
            done[0].result,
            Err("rpcbind at 198.51.100.1:111: Connection refused".to_owned())
        );
        assert_eq!(l.in_flight(), 1, "the other rpcbind's lookup goes on");
        // Their late replies are not lookups any more.
        for x in [a.xid, a2.xid] {
            assert_eq!(
                l.on_datagram(v4(1), &reply(x, &[0, 0, 3, 0x20]), t0),
                Received::NotALookup
            );
        }
        assert!(l.on_unreachable(v4(9), "x").is_empty());
    }

    #[test]
    fn send_error_fails_the_lookup_at_once() {
        let t0 = Instant::now();
        let mut l = lookups(LookupPolicy::default());
        let d = l.start(4, v4(1), t0);
        let done = l.on_send_error(d.xid, "Network is unreachable").unwrap();
        assert_eq!(done.peer, 4);
        assert!(done.result.unwrap_err().contains("unreachable"));
        assert_eq!(l.next_wake(), None);
        assert_eq!(l.on_send_error(d.xid, "again"), None);
    }

    #[test]
    fn xids_skip_zero_and_those_in_flight() {
        let mut seq = vec![0u32, 5, 5, 6].into_iter();
        let mut l = PortLookups::new(LookupPolicy::default(), move || seq.next().unwrap_or(9));
        let t0 = Instant::now();
        assert_eq!(l.start(0, v4(1), t0).xid, 5);
        assert_eq!(l.start(1, v4(1), t0).xid, 6);
    }
}

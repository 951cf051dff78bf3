//! The UDP side of the server: each socket is served by a thread of its own (blocking
//! `recvmmsg`, up to [`UDP_BATCH`] datagrams per call; replies leave together by `sendmmsg`),
//! and a socket bound to a wildcard address learns each call's destination address
//! (`IP_PKTINFO` / `IPV6_RECVPKTINFO`) and replies from it.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, warn};

use super::dispatch::dispatch_here;
use super::{Ctx, Service, Transport};

/// Asks the kernel for the destination address of each datagram (`IP_PKTINFO` /
/// `IPV6_RECVPKTINFO`), so a socket bound to a wildcard address can tell which local address
/// a call was sent to and reply from it. `false` when the option cannot be set.
fn enable_pktinfo(sock: &std::net::UdpSocket, v6: bool) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    let r = if v6 {
        setsockopt(sock, sockopt::Ipv6RecvPacketInfo, &true)
    } else {
        setsockopt(sock, sockopt::Ipv4PacketInfo, &true)
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "cannot enable IP_PKTINFO: calls are attributed to the wildcard address");
            false
        }
    }
}

/// Datagrams taken from a UDP socket per system call (`recvmmsg`) when several are queued;
/// the replies that are ready at once leave together (`sendmmsg`).
const UDP_BATCH: usize = 16;

/// A received datagram: the index of the buffer slot it is in, its length, sender, and the
/// local address it was sent to.
#[derive(Debug, Clone, Copy)]
struct Datagram {
    index: usize,
    len: usize,
    peer: SocketAddr,
    dst: SocketAddr,
}

/// A reply ready to go.
#[derive(Debug)]
struct ReadyReply {
    reply: Bytes,
    peer: SocketAddr,
    dst: SocketAddr,
}

fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    a.as_sockaddr_in()
        .map(|a| SocketAddr::V4((*a).into()))
        .or_else(|| a.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into())))
}

/// Waits for datagrams on `sock` (a blocking socket), then takes every one queued, up to one
/// per slot of `bufs` (each slot `slot` bytes), into `out`: their lengths (the real length,
/// `MSG_TRUNC`), senders and destination addresses (from the packet-info control message when
/// `pktinfo`; else `fallback`).
fn recv_batch(
    sock: &std::net::UdpSocket,
    bufs: &mut [u8],
    slot: usize,
    pktinfo: bool,
    fallback: SocketAddr,
    out: &mut Vec<Datagram>,
) -> std::io::Result<()> {
    use nix::sys::socket::{
        ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    };
    out.clear();
    let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = bufs
        .chunks_mut(slot)
        .map(|b| [std::io::IoSliceMut::new(b)])
        .collect();
    // Fresh headers per call: the kernel shrinks each header's control length to what it
    // used, and nix does not restore it.
    let cmsg = pktinfo.then(|| nix::cmsg_space!(nix::libc::in_pktinfo, nix::libc::in6_pktinfo));
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(iovs.len(), cmsg);
    // MSG_WAITFORONE: wait for the first datagram only, then take what is queued.
    let received = recvmmsg(
        sock.as_raw_fd(),
        &mut headers,
        iovs.iter_mut(),
        MsgFlags::MSG_TRUNC | MsgFlags::MSG_WAITFORONE,
        None,
    )?;
    // A datagram dropped here leaves its slot unused: each kept one says which slot it is in.
    for (index, m) in received.enumerate() {
        let Some(peer) = m.address.as_ref().and_then(socket_addr) else {
            debug!(local = %fallback, "dropped a datagram without a sender address");
            continue;
        };
        let mut dst = fallback;
        if let Ok(cmsgs) = m.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(pi) => {
                        let ip = std::net::Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr));
                        dst = SocketAddr::new(ip.into(), fallback.port());
                    }
                    ControlMessageOwned::Ipv6PacketInfo(pi) => {
                        let ip = std::net::Ipv6Addr::from(pi.ipi6_addr.s6_addr);
                        dst = SocketAddr::new(ip.into(), fallback.port());
                    }
                    _ => {}
                }
            }
        }
        out.push(Datagram {
            index,
            len: m.bytes,
            peer,
            dst,
        });
    }
    Ok(())
}

/// The source address to set on a reply to a call sent to `dst`: `None` when the socket does
/// not learn destinations (it is bound to one address) or did not learn this one.
fn reply_source(dst: SocketAddr, pktinfo: bool) -> Option<std::net::IpAddr> {
    (pktinfo && !dst.ip().is_unspecified()).then(|| dst.ip())
}

/// Sends `replies` (which all leave from `from`, see [`reply_source`]) in one system call;
/// returns how many were sent, from the first. A packet-info control message sets the source
/// address, so the reply leaves from the address the call was sent to even on a wildcard socket.
fn send_batch(
    sock: &std::net::UdpSocket,
    replies: &[ReadyReply],
    from: Option<std::net::IpAddr>,
    flags: nix::sys::socket::MsgFlags,
) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MultiHeaders, SockaddrStorage, sendmmsg};
    let iovs: Vec<[std::io::IoSlice<'_>; 1]> = replies
        .iter()
        .map(|r| [std::io::IoSlice::new(&r.reply)])
        .collect();
    let to: Vec<Option<SockaddrStorage>> = replies
        .iter()
        .map(|r| Some(SockaddrStorage::from(r.peer)))
        .collect();
    let v4;
    let v6;
    // The control buffer must hold exactly the message sent: the kernel rejects a zeroed
    // trailing header.
    let (cmsg, space) = match from {
        None => (None, None),
        Some(std::net::IpAddr::V4(ip)) => {
            v4 = nix::libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: nix::libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: nix::libc::in_addr { s_addr: 0 },
            };
            (
                Some(ControlMessage::Ipv4PacketInfo(&v4)),
                Some(nix::cmsg_space!(nix::libc::in_pktinfo)),
            )
        }
        Some(std::net::IpAddr::V6(ip)) => {
            v6 = nix::libc::in6_pktinfo {
                ipi6_addr: nix::libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            (
                Some(ControlMessage::Ipv6PacketInfo(&v6)),
                Some(nix::cmsg_space!(nix::libc::in6_pktinfo)),
            )
        }
    };
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), space);
    let cmsgs: &[ControlMessage<'_>] = match &cmsg {
        Some(c) => std::slice::from_ref(c),
        None => &[],
    };
    let sent = sendmmsg(sock.as_raw_fd(), &mut headers, &iovs, &to, cmsgs, flags)?;
    Ok(sent.count())
}

/// Sends `replies` from the UDP thread (a blocking socket: a full send buffer waits): each
/// run of replies from one source address in one system call.
fn send_ready(sock: &std::net::UdpSocket, replies: &mut Vec<ReadyReply>, pktinfo: bool) {
    let mut at = 0;
    while at < replies.len() {
        let from = reply_source(replies[at].dst, pktinfo);
        let run = replies[at..]
            .iter()
            .take_while(|r| reply_source(r.dst, pktinfo) == from)
            .count();
        match send_batch(
            sock,
            &replies[at..at + run],
            from,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(n) => at += n.max(1).min(run),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // The first of the run could not be sent; the others still can.
                debug!(peer = %replies[at].peer, error = %e, "could not send a UDP reply");
                at += 1;
            }
        }
    }
    replies.clear();
}

/// Sends the reply of a call that waited, from its task: without blocking the runtime's
/// thread, so a full send buffer is retried for up to about a second, then the reply is
/// dropped (the client retransmits).
async fn send_later(sock: &std::net::UdpSocket, r: ReadyReply, pktinfo: bool) {
    let from = reply_source(r.dst, pktinfo);
    let r = [r];
    for _ in 0..1000 {
        match send_batch(sock, &r, from, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
            Ok(1) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!(peer = %r[0].peer, error = %e, "could not send a UDP reply");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    debug!(peer = %r[0].peer, "UDP send buffer full for a second; dropped a reply");
}

/// One call of a UDP socket still in progress in a task; the count is bounded by
/// [`Limits::max_udp_in_flight`](super::Limits::max_udp_in_flight).
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves one UDP socket (blocking) until shutdown: waits for datagrams, takes up to
/// [`UDP_BATCH`] per system call, answers each call that needs no waiting at once (NULL,
/// STAT, NOTIFY, every rejection: most of them), and sends the replies of a batch together.
/// A call that must wait (SM_MON on the disk) continues in a task of the runtime, which sends
/// its reply. Run on a thread of its own, inside the runtime's context: the socket is not in
/// the runtime's epoll set, so no readiness event or task wake-up is paid per datagram, and a
/// busy socket does not hold up the runtime.
pub(super) fn udp_thread<S: Service>(
    ctx: &Ctx<S>,
    sock: &Arc<std::net::UdpSocket>,
    local: SocketAddr,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A wildcard socket learns each call's destination address (design.md, data flow 2).
    let pktinfo = local.ip().is_unspecified() && enable_pktinfo(sock, local.is_ipv6());
    let waiting = Arc::new(AtomicUsize::new(0));
    // One byte more than the cap per slot, so an oversized datagram is seen as such.
    let slot = ctx.limits.max_record + 1;
    let mut bufs = vec![0u8; slot * UDP_BATCH];
    let mut got = Vec::with_capacity(UDP_BATCH);
    let mut ready = Vec::with_capacity(UDP_BATCH);
    while !ctx.shutdown.is_cancelled() {
        if let Err(e) = recv_batch(sock, &mut bufs, slot, pktinfo, local, &mut got) {
            match e.raw_os_error() {
                Some(nix::libc::EINTR) => {}
                // ICMP errors from earlier sends surface here; keep going.
                Some(
                    nix::libc::ECONNREFUSED | nix::libc::EHOSTUNREACH | nix::libc::ENETUNREACH,
                ) => {
                    debug!(%local, error = %e, "UDP receive error");
                }
                _ => {
                    // Not expected: say so, and do not spin on it.
                    warn!(%local, error = %e, "UDP receive failed; retrying in 100 ms");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            continue;
        }
        if ctx.shutdown.is_cancelled() {
            break;
        }
        for &Datagram {
            index,
            len,
            peer,
            dst,
        } in &got
        {
            let buf = &bufs[index * slot..(index + 1) * slot];
            if len > ctx.limits.max_record {
                debug!(%peer, %local, "dropped an oversized UDP datagram");
                continue;
            }
            if waiting.load(Ordering::Relaxed) >= ctx.limits.max_udp_in_flight {
                debug!(%peer, %local, "UDP requests in flight at the limit; dropped one");
                continue;
            }
            let message = Bytes::copy_from_slice(&buf[..len]);
            match dispatch_here(&ctx.service, message, peer, dst, Transport::Udp) {
                Ok(None) => {}
                Ok(Some(reply)) => ready.push(ReadyReply { reply, peer, dst }),
                Err(reply) => {
                    waiting.fetch_add(1, Ordering::Relaxed);
                    let held = Waiting(waiting.clone());
                    let sock = sock.clone();
                    ctx.tasks.spawn(async move {
                        if let Some(reply) = reply.await {
                            send_later(&sock, ReadyReply { reply, peer, dst }, pktinfo).await;
                        }
                        drop(held);
                    });
                }
            }
        }
        send_ready(sock, &mut ready, pktinfo);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::tests::{Where, call_of};
    use super::super::{Limits, Outcome, Request, Server, Service};
    use bytes::Bytes;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::UdpSocket;
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn a_wildcard_udp_socket_sees_and_replies_from_the_destination_address() {
        let server = Server::new(Arc::new(Where), Limits::default());
        let sock = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        server.serve_udp(sock);
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for dst in ["127.0.0.1", "127.0.0.3"] {
            let call = call_of(9, 0);
            let to: SocketAddr = format!("{dst}:{port}").parse().unwrap();
            client.send_to(&call, to).await.unwrap();
            let mut buf = [0u8; 128];
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(from, to, "the reply leaves from the address called");
            let ip: std::net::Ipv4Addr = dst.parse().unwrap();
            assert_eq!(
                &buf[n - 4..n],
                &ip.octets(),
                "Request.local is the destination"
            );
        }
        assert!(server.shutdown(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn queued_datagrams_are_answered_each_from_its_destination() {
        let limits = Limits {
            max_record: 200,
            ..Limits::default()
        };
        let server = Server::new(Arc::new(Where), limits);
        let sock = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Queued before the server reads: they arrive as one batch, an oversized datagram
        // (dropped) among them, and the destinations alternate.
        let dsts = [
            "127.0.0.1",
            "127.0.0.3",
            "127.0.0.3",
            "127.0.0.1",
            "127.0.0.4",
        ];
        for (i, dst) in dsts.iter().enumerate() {
            let to: SocketAddr = format!("{dst}:{port}").parse().unwrap();
            if i == 2 {
                client.send_to(&[0u8; 201], to).await.unwrap();
            }
            client.send_to(&call_of(i as u32, 0), to).await.unwrap();
        }
        server.serve_udp(sock);
        let mut buf = [0u8; 128];
        for _ in &dsts {
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
            let xid = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            let dst: std::net::Ipv4Addr = dsts[xid].parse().unwrap();
            assert_eq!(from, SocketAddr::new(dst.into(), port), "reply {xid}");
            assert_eq!(&buf[n - 4..n], &dst.octets(), "Request.local of {xid}");
        }
        assert!(server.shutdown(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn a_wildcard_ipv6_socket_replies_from_the_destination_address() {
        let Ok(sock) = UdpSocket::bind("[::]:0").await else {
            return; // no IPv6 here
        };
        let Ok(client) = UdpSocket::bind("[::1]:0").await else {
            return;
        };
        let server = Server::new(Arc::new(Where), Limits::default());
        let to: SocketAddr = format!("[::1]:{}", sock.local_addr().unwrap().port())
            .parse()
            .unwrap();
        server.serve_udp(sock);
        client.send_to(&call_of(7, 0), to).await.unwrap();
        let mut buf = [0u8; 128];
        let (_, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, to, "the reply leaves from the address called");
        assert_eq!(buf[..4], 7u32.to_be_bytes());
        assert!(server.shutdown(Duration::from_secs(1)).await);
    }

    /// Panics on procedure 9, answers every other call with nothing.
    struct Fragile;

    impl Service for Fragile {
        fn versions(&self, _prog: u32) -> Option<(u32, u32)> {
            Some((1, 1))
        }

        async fn call(&self, req: Request) -> Outcome {
            assert!(req.proc_ != 9, "procedure 9 panics on purpose");
            Outcome::Success(Bytes::new())
        }
    }
    #[tokio::test]
    async fn a_udp_call_that_panics_loses_its_reply_not_the_socket() {
        let server = Server::new(Arc::new(Fragile), Limits::default());
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = sock.local_addr().unwrap();
        server.serve_udp(sock);
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&call_of(1, 9), to).await.unwrap();
        let mut buf = [0u8; 128];
        let quiet =
            tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await;
        assert!(quiet.is_err(), "the call that panicked has no reply");
        client.send_to(&call_of(2, 0), to).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("the socket is still served after a panic")
            .unwrap();
        assert_eq!(buf[..4], 2u32.to_be_bytes());
        assert_eq!(n, 24, "an accepted, empty reply");
        assert!(server.shutdown(Duration::from_secs(1)).await);
    }

    /// Procedure 5 waits until released; every other call is answered at once.
    struct Gate(Semaphore);

    impl Service for Gate {
        fn versions(&self, _prog: u32) -> Option<(u32, u32)> {
            Some((1, 1))
        }

        async fn call(&self, req: Request) -> Outcome {
            if req.proc_ == 5 {
                drop(self.0.acquire().await);
            }
            Outcome::Success(Bytes::new())
        }
    }

    #[tokio::test]
    async fn at_the_limit_of_waiting_udp_calls_new_calls_are_dropped_until_one_ends() {
        let gate = Arc::new(Gate(Semaphore::new(0)));
        let limits = Limits {
            max_udp_in_flight: 1,
            ..Limits::default()
        };
        let server = Server::new(gate.clone(), limits);
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = sock.local_addr().unwrap();
        server.serve_udp(sock);
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 128];
        // The first waiting call takes the one slot. Until it ends, nothing new starts: a
        // call cannot be known to need no wait before it runs.
        client.send_to(&call_of(1, 5), to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.send_to(&call_of(2, 5), to).await.unwrap();
        client.send_to(&call_of(3, 0), to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Released, the first waiting call is answered; the two dropped ones never are.
        gate.0.add_permits(10);
        let (_, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("the waiting call answered once released")
            .unwrap();
        assert_eq!(buf[..4], 1u32.to_be_bytes());
        let late =
            tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await;
        assert!(
            late.is_err(),
            "calls over the limit were dropped, not queued"
        );
        // The slot is free again.
        for xid in [4, 5] {
            client.send_to(&call_of(xid, xid), to).await.unwrap();
            let (_, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .expect("answered after the slot was freed")
                .unwrap();
            assert_eq!(buf[..4], xid.to_be_bytes());
        }
        assert!(server.shutdown(Duration::from_secs(1)).await);
    }
}

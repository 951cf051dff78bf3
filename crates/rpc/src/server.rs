//! An async ONC RPC server over UDP and TCP.
//!
//! The server owns the RPC layer: it parses calls, checks the credential, answers
//! PROG_UNAVAIL / PROG_MISMATCH itself, and hands every other call to a [`Service`] as a
//! [`Request`]. What the service answers ([`Outcome`]) becomes the reply. Every request runs in
//! its own task, so a slow procedure never holds up another request, on UDP or on the same TCP
//! connection; the number of requests in flight is bounded ([`Limits`]).
//!
//! Sockets are bound by the caller (tests bind port 0; the daemon binds its configured
//! addresses), then passed to [`Server::serve_udp`] / [`Server::serve_tcp`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use crate::msg::{self, AcceptStat, Auth, AuthStat, RawXdr, RejectReply, ReplyBody};
use crate::record::RecordCodec;

/// How a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A datagram.
    Udp,
    /// A record on a TCP connection.
    Tcp,
}

impl Transport {
    /// `udp` or `tcp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// A call that passed the RPC layer's checks, for the [`Service`] to answer.
#[derive(Debug, Clone)]
pub struct Request {
    /// Transaction id.
    pub xid: u32,
    /// Program (one the service serves).
    pub prog: u32,
    /// Version (within the range the service serves).
    pub vers: u32,
    /// Procedure.
    pub proc_: u32,
    /// The credential.
    pub auth: Auth,
    /// The caller's address and port.
    pub peer: SocketAddr,
    /// The local address the call was sent to: on TCP the connection's local address; on
    /// UDP the datagram's destination address (`IP_PKTINFO` / `IPV6_RECVPKTINFO`) when the
    /// socket is bound to a wildcard address, else the socket's address.
    pub local: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// The XDR-encoded procedure arguments.
    pub args: Bytes,
}

/// What a [`Service`] answers to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `SUCCESS` with these XDR-encoded results.
    Success(Bytes),
    /// `PROC_UNAVAIL`: no such procedure.
    ProcUnavail,
    /// `GARBAGE_ARGS`: the arguments did not decode.
    GarbageArgs,
    /// `SYSTEM_ERR`: the procedure could not run (e.g. a disk error).
    SystemErr,
    /// `AUTH_ERROR` with this status.
    AuthError(AuthStat),
    /// No reply at all.
    Drop,
}

/// An RPC program: the procedures behind one or more (program, version) pairs.
pub trait Service: Send + Sync + 'static {
    /// The lowest and highest version of `prog` served, or `None` if `prog` is not served.
    fn versions(&self, prog: u32) -> Option<(u32, u32)>;

    /// Answers one call. Runs in its own task; may take as long as it needs.
    fn call(&self, req: Request) -> impl Future<Output = Outcome> + Send;
}

/// Bounds on what peers can make the server hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request accepted, UDP or TCP (bytes).
    pub max_record: usize,
    /// Most fragments in one TCP record.
    pub max_fragments: usize,
    /// Most TCP connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// Most UDP requests in progress at once per socket; more are dropped (clients retransmit).
    pub max_udp_in_flight: usize,
    /// Most requests in progress at once on one TCP connection; more wait (backpressure).
    pub max_tcp_in_flight: usize,
    /// A TCP connection that completes no request for this long is closed, and so is one
    /// that does not take its replies for this long.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record: crate::record::DEFAULT_MAX_RECORD,
            max_fragments: crate::record::DEFAULT_MAX_FRAGMENTS,
            max_connections: 512,
            max_udp_in_flight: 1024,
            max_tcp_in_flight: 32,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// A running server: the tasks of its listeners and requests, and their shutdown signal.
#[derive(Debug)]
pub struct Server<S> {
    service: Arc<S>,
    limits: Arc<Limits>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    connections: Arc<Semaphore>,
}

impl<S: Service> Server<S> {
    /// A server for `service` with these limits; it serves nothing until given sockets.
    pub fn new(service: Arc<S>, limits: Limits) -> Self {
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        Self {
            service,
            limits: Arc::new(limits),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            connections,
        }
    }

    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves calls arriving on `sock` until shutdown.
    pub fn serve_udp(&self, sock: UdpSocket) {
        let ctx = self.ctx();
        self.tasks.spawn(udp_loop(ctx, Arc::new(sock)));
    }

    /// Accepts connections on `listener` and serves them until shutdown.
    pub fn serve_tcp(&self, listener: TcpListener) {
        let ctx = self.ctx();
        self.tasks.spawn(tcp_accept_loop(ctx, listener));
    }

    /// Stops accepting, lets calls in progress finish for at most `grace`, then returns.
    /// Returns false if some task was still running when the grace period ended.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    fn ctx(&self) -> Ctx<S> {
        Ctx {
            service: self.service.clone(),
            limits: self.limits.clone(),
            tasks: self.tasks.clone(),
            shutdown: self.shutdown.clone(),
            connections: self.connections.clone(),
        }
    }
}

struct Ctx<S> {
    service: Arc<S>,
    limits: Arc<Limits>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    connections: Arc<Semaphore>,
}

impl<S> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            limits: self.limits.clone(),
            tasks: self.tasks.clone(),
            shutdown: self.shutdown.clone(),
            connections: self.connections.clone(),
        }
    }
}

/// Turns one request message into its reply message (without record mark), or `None` when
/// nothing is to be sent. This is the one place where RPC-level failures become replies.
pub async fn dispatch<S: Service>(
    service: &S,
    message: Bytes,
    peer: SocketAddr,
    local: SocketAddr,
    transport: Transport,
) -> Option<Bytes> {
    let call = match msg::parse_call(&message) {
        Ok(c) => c,
        Err(e) => {
            debug!(%peer, transport = transport.as_str(), error = %e, "rejected RPC message");
            let (xid, body) = e.reply()?;
            return Some(encode(xid, &body.map(|()| RawXdr(&[]))));
        }
    };
    let h = call.header;
    let span = debug_span!("rpc", xid = h.xid, prog = h.prog, vers = h.vers, proc = h.proc_, %peer, transport = transport.as_str());
    let auth = match msg::check_auth(&h.cred) {
        Ok(a) => a,
        Err(stat) => {
            span.in_scope(|| debug!(flavor = h.cred.flavor, "credential refused"));
            return Some(encode_denied(h.xid, RejectReply::AuthError(stat)));
        }
    };
    let Some((low, high)) = service.versions(h.prog) else {
        return Some(encode_accepted(h.xid, AcceptStat::ProgUnavail));
    };
    if !(low..=high).contains(&h.vers) {
        return Some(encode_accepted(
            h.xid,
            AcceptStat::ProgMismatch { low, high },
        ));
    }
    let args_at = message.len() - call.args.len();
    let req = Request {
        xid: h.xid,
        prog: h.prog,
        vers: h.vers,
        proc_: h.proc_,
        auth,
        peer,
        local,
        transport,
        args: message.slice(args_at..),
    };
    let xid = h.xid;
    let outcome = service.call(req).instrument(span).await;
    Some(match outcome {
        Outcome::Success(results) => encode(
            xid,
            &ReplyBody::Accepted(AcceptStat::Success(RawXdr(&results))),
        ),
        Outcome::ProcUnavail => encode_accepted(xid, AcceptStat::ProcUnavail),
        Outcome::GarbageArgs => encode_accepted(xid, AcceptStat::GarbageArgs),
        Outcome::SystemErr => encode_accepted(xid, AcceptStat::SystemErr),
        Outcome::AuthError(stat) => encode_denied(xid, RejectReply::AuthError(stat)),
        Outcome::Drop => return None,
    })
}

fn encode(xid: u32, body: &ReplyBody<RawXdr<'_>>) -> Bytes {
    let mut out = BytesMut::with_capacity(msg::reply_len(body));
    msg::encode_reply(xid, body, &mut out);
    out.freeze()
}

fn encode_accepted(xid: u32, stat: AcceptStat<()>) -> Bytes {
    encode(xid, &ReplyBody::Accepted(stat.map(|()| RawXdr(&[]))))
}

fn encode_denied(xid: u32, r: RejectReply) -> Bytes {
    encode(xid, &ReplyBody::Denied(r))
}

/// Asks the kernel for the destination address of each datagram (`IP_PKTINFO` /
/// `IPV6_RECVPKTINFO`), so a socket bound to a wildcard address can tell which local address
/// a call was sent to and reply from it. `false` when the option cannot be set.
fn enable_pktinfo(sock: &UdpSocket, v6: bool) -> bool {
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

/// One datagram: its length, sender, and the local address it was sent to (from the
/// packet-info control message; `fallback` when there is none).
fn recv_with_dst(
    sock: &UdpSocket,
    buf: &mut [u8],
    fallback: SocketAddr,
) -> std::io::Result<(usize, SocketAddr, SocketAddr)> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo, nix::libc::in6_pktinfo);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let m = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_TRUNC,
    )?;
    let peer = m
        .address
        .as_ref()
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|a| SocketAddr::V4((*a).into()))
                .or_else(|| a.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into())))
        })
        .ok_or_else(|| std::io::Error::other("datagram without a sender address"))?;
    let mut local = fallback;
    if let Ok(cmsgs) = m.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(pi) => {
                    let ip = std::net::Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr));
                    local = SocketAddr::new(ip.into(), fallback.port());
                }
                ControlMessageOwned::Ipv6PacketInfo(pi) => {
                    let ip = std::net::Ipv6Addr::from(pi.ipi6_addr.s6_addr);
                    local = SocketAddr::new(ip.into(), fallback.port());
                }
                _ => {}
            }
        }
    }
    Ok((m.bytes, peer, local))
}

/// Sends `reply` to `peer` from `local`'s address (a packet-info control message), so the
/// reply leaves from the address the call was sent to even on a wildcard socket.
fn send_from(
    sock: &UdpSocket,
    reply: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
    let iov = [std::io::IoSlice::new(reply)];
    let to = SockaddrStorage::from(peer);
    let r = match local.ip() {
        std::net::IpAddr::V4(ip) => {
            let pi = nix::libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: nix::libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: nix::libc::in_addr { s_addr: 0 },
            };
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv4PacketInfo(&pi)],
                MsgFlags::empty(),
                Some(&to),
            )
        }
        std::net::IpAddr::V6(ip) => {
            let pi = nix::libc::in6_pktinfo {
                ipi6_addr: nix::libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv6PacketInfo(&pi)],
                MsgFlags::empty(),
                Some(&to),
            )
        }
    };
    r.map_err(std::io::Error::from)
}

async fn udp_loop<S: Service>(ctx: Ctx<S>, sock: Arc<UdpSocket>) {
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "UDP socket has no local address; not serving it");
            return;
        }
    };
    // A wildcard socket learns each call's destination address (design.md, data flow 2).
    let pktinfo = local.ip().is_unspecified() && enable_pktinfo(&sock, local.is_ipv6());
    let in_flight = Arc::new(Semaphore::new(ctx.limits.max_udp_in_flight));
    // One byte more than the cap, so an oversized datagram is seen as such.
    let mut buf = vec![0u8; ctx.limits.max_record + 1];
    loop {
        let (n, peer, dst) = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            r = async {
                if pktinfo {
                    sock.async_io(tokio::io::Interest::READABLE, || recv_with_dst(&sock, &mut buf, local)).await
                } else {
                    sock.recv_from(&mut buf).await.map(|(n, p)| (n, p, local))
                }
            } => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here (ECONNREFUSED); keep going.
                    debug!(%local, error = %e, "UDP receive error");
                    continue;
                }
            },
        };
        if n > ctx.limits.max_record {
            debug!(%peer, %local, "dropped an oversized UDP datagram");
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            debug!(%peer, %local, "UDP requests in flight at the limit; dropped one");
            continue;
        };
        let message = Bytes::copy_from_slice(&buf[..n]);
        let svc = ctx.service.clone();
        let mut reply =
            Box::pin(async move { dispatch(&*svc, message, peer, dst, Transport::Udp).await });
        // Most calls (NULL, STAT, NOTIFY, every rejection) are answered without waiting:
        // poll once here and reply inline, which saves a task and a thread hand-off per
        // datagram. A call that must wait (SM_MON on the disk) moves into its own task, whose
        // first poll registers the real waker.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match reply.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(None) => drop(permit),
            std::task::Poll::Ready(Some(r)) => {
                match try_send_reply(&sock, &r, peer, dst, pktinfo) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let sock = sock.clone();
                        ctx.tasks.spawn(async move {
                            send_reply(&sock, &r, peer, dst, pktinfo).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        debug!(%peer, error = %e, "could not send a UDP reply");
                        drop(permit);
                    }
                    Ok(_) => drop(permit),
                }
            }
            std::task::Poll::Pending => {
                let sock = sock.clone();
                ctx.tasks.spawn(async move {
                    if let Some(r) = reply.await {
                        send_reply(&sock, &r, peer, dst, pktinfo).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Sends a UDP reply without waiting (from `dst` when the socket learns destinations).
fn try_send_reply(
    sock: &UdpSocket,
    reply: &[u8],
    peer: SocketAddr,
    dst: SocketAddr,
    pktinfo: bool,
) -> std::io::Result<usize> {
    if pktinfo && !dst.ip().is_unspecified() {
        sock.try_io(tokio::io::Interest::WRITABLE, || {
            send_from(sock, reply, peer, dst)
        })
    } else {
        sock.try_send_to(reply, peer)
    }
}

/// Sends a UDP reply, waiting for the socket if needed.
async fn send_reply(
    sock: &UdpSocket,
    reply: &[u8],
    peer: SocketAddr,
    dst: SocketAddr,
    pktinfo: bool,
) {
    let sent = if pktinfo && !dst.ip().is_unspecified() {
        sock.async_io(tokio::io::Interest::WRITABLE, || {
            send_from(sock, reply, peer, dst)
        })
        .await
    } else {
        sock.send_to(reply, peer).await
    };
    if let Err(e) = sent {
        debug!(%peer, error = %e, "could not send a UDP reply");
    }
}

async fn tcp_accept_loop<S: Service>(ctx: Ctx<S>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accepting a TCP connection failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            debug!(%peer, "too many TCP connections; closed a new one");
            continue;
        };
        let c = ctx.clone();
        ctx.tasks.spawn(async move {
            connection(c, stream, peer).await;
            drop(permit);
        });
    }
}

async fn connection<S: Service>(ctx: Ctx<S>, stream: TcpStream, peer: SocketAddr) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let limits = &ctx.limits;
    let mut records = FramedRead::new(
        rd,
        RecordCodec::new(limits.max_record, limits.max_fragments),
    );
    let (tx, mut rx) = mpsc::channel::<Bytes>(limits.max_tcp_in_flight);
    let idle = limits.idle_timeout;
    let writer = ctx.tasks.spawn(async move {
        let mut out = FramedWrite::new(wr, RecordCodec::default());
        while let Some(reply) = rx.recv().await {
            match tokio::time::timeout(idle, out.send(reply)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TCP write failed; closing");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TCP peer does not read its replies; closing");
                    return;
                }
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(limits.max_tcp_in_flight));
    loop {
        let next = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            n = tokio::time::timeout(idle, records.next()) => n,
        };
        let message = match next {
            Err(_) => {
                debug!(%peer, "TCP connection idle; closing");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                debug!(%peer, error = %e, "closing TCP connection");
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        let permit = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (svc, tx) = (ctx.service.clone(), tx.clone());
        ctx.tasks.spawn(async move {
            if let Some(reply) = dispatch(&*svc, message, peer, local, Transport::Tcp).await {
                // The writer may be gone (peer closed); nothing to do then.
                let _ = tx.send(reply).await;
            }
            drop(permit);
        });
    }
    // Replies of requests still in progress go out before the connection closes.
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Answers every call with the local address it saw (IPv4 octets).
    struct Where;

    impl Service for Where {
        fn versions(&self, _prog: u32) -> Option<(u32, u32)> {
            Some((1, 1))
        }

        async fn call(&self, req: Request) -> Outcome {
            match req.local.ip() {
                std::net::IpAddr::V4(a) => Outcome::Success(Bytes::copy_from_slice(&a.octets())),
                std::net::IpAddr::V6(_) => Outcome::SystemErr,
            }
        }
    }

    #[tokio::test]
    async fn a_wildcard_udp_socket_sees_and_replies_from_the_destination_address() {
        let server = Server::new(Arc::new(Where), Limits::default());
        let sock = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        server.serve_udp(sock);
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for dst in ["127.0.0.1", "127.0.0.3"] {
            let mut call = Vec::new();
            for w in [9u32, 0, 2, 100_024, 1, 0, 0, 0, 0, 0] {
                call.extend_from_slice(&w.to_be_bytes());
            }
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
}

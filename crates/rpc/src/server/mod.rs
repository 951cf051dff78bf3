//! An async ONC RPC server over UDP and TCP.
//!
//! The server owns the RPC layer: it parses calls, checks the credential, answers
//! PROG_UNAVAIL / PROG_MISMATCH itself, and hands every other call to a [`Service`] as a
//! [`Request`]. What the service answers ([`Outcome`]) becomes the reply. A call answered
//! without waiting is answered where it was read; one that must wait continues in its own task,
//! so a slow procedure never holds up another request, on UDP or on the same TCP connection;
//! the number of requests in flight is bounded ([`Limits`]).
//!
//! Each UDP socket is served by a thread of its own (blocking `recvmmsg`, up to 16 datagrams
//! per call); TCP connections are tasks of the Tokio runtime.
//!
//! Sockets are bound by the caller (tests bind port 0; the daemon binds its configured
//! addresses), then passed to [`Server::serve_udp`] / [`Server::serve_tcp`].

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
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

    /// Answers one call; may take as long as it needs. The future is first polled where the
    /// call was read (a UDP socket's thread, inside the runtime's context, or a TCP
    /// connection's task); if it must wait, it continues in a task of its own.
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
    /// that does not take its replies for this long; connections [`Limits::trusted`] accepts
    /// are never closed for a quiet period (their replies are still bounded).
    pub idle_timeout: Duration,
    /// Whether a connection from this peer belongs to the local lock manager: it is never
    /// closed for being quiet, and it counts against [`Limits::max_trusted_connections`],
    /// not [`Limits::max_connections`], so remote peers cannot crowd it out. Default:
    /// [`local_privileged`].
    pub trusted: fn(SocketAddr) -> bool,
    /// Most [`Limits::trusted`] TCP connections open at once; more are closed on accept.
    pub max_trusted_connections: usize,
}

/// A peer on a loopback address and a privileged port (below 1024): the kernel's lockd
/// and NFS-Ganesha, which open one TCP connection to statd and keep it for their lifetime
/// (both bind a reserved port, as only root can). Unprivileged local processes and remote
/// peers are not.
pub fn local_privileged(peer: SocketAddr) -> bool {
    let loopback = match peer.ip() {
        std::net::IpAddr::V4(a) => a.is_loopback(),
        std::net::IpAddr::V6(a) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    loopback && peer.port() < 1024
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
            trusted: local_privileged,
            max_trusted_connections: 64,
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
    trusted_connections: Arc<Semaphore>,
    /// The UDP sockets served, each by a thread of its own: shut for reading at shutdown,
    /// which wakes that thread.
    udp: std::sync::Mutex<Vec<Arc<std::net::UdpSocket>>>,
}

impl<S: Service> Server<S> {
    /// A server for `service` with these limits; it serves nothing until given sockets.
    pub fn new(service: Arc<S>, limits: Limits) -> Self {
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let trusted_connections = Arc::new(Semaphore::new(limits.max_trusted_connections));
        Self {
            service,
            limits: Arc::new(limits),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            connections,
            trusted_connections,
            udp: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves calls arriving on `sock` until shutdown, from a thread of its own that answers
    /// the calls that need no waiting. Must be called within a Tokio runtime: calls that wait
    /// continue there.
    pub fn serve_udp(&self, sock: UdpSocket) {
        let sock = match sock.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            Ok(s)
        }) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                warn!(error = %e, "cannot take over a UDP socket; not serving it");
                return;
            }
        };
        let local = match sock.local_addr() {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "UDP socket has no local address; not serving it");
                return;
            }
        };
        // Recorded before the thread starts, so a shutdown from now on reaches it.
        self.udp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sock.clone());
        let (ctx, runtime) = (self.ctx(), tokio::runtime::Handle::current());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let started = std::thread::Builder::new()
            .name(format!("udp-{}", local.port()))
            .spawn(move || {
                let _runtime = runtime.enter();
                // A call that panics (a bug) loses its batch, not the socket.
                while std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    udp_thread(&ctx, &sock, local);
                }))
                .is_err()
                    && !ctx.shutdown.is_cancelled()
                {
                    tracing::error!(%local, "a UDP call panicked (a bug; please report it); serving on");
                }
                drop(done);
            });
        match started {
            // Server::shutdown waits for the thread through this task.
            Ok(_) => {
                self.tasks.spawn(async move {
                    let _ = finished.await;
                });
            }
            Err(e) => {
                warn!(%local, error = %e, "cannot start the thread of a UDP socket; not serving it")
            }
        }
    }

    /// Accepts connections on `listener` and serves them until shutdown.
    pub fn serve_tcp(&self, listener: TcpListener) {
        let ctx = self.ctx();
        self.tasks.spawn(tcp_accept_loop(ctx, listener));
    }

    /// Stops accepting, lets calls in progress finish for at most `grace`, then returns.
    /// Returns false if some task was still running when the grace period ended.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.stop();
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
            trusted_connections: self.trusted_connections.clone(),
        }
    }
}

impl<S> Server<S> {
    /// Cancels the shutdown token and wakes the UDP threads, which then exit.
    fn stop(&self) {
        self.shutdown.cancel();
        for s in self
            .udp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            // Wakes a thread blocked in recvmmsg: it then sees the cancelled token. (Linux
            // shuts an unconnected UDP socket and says ENOTCONN.)
            let _ = nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
    }
}

impl<S> Drop for Server<S> {
    /// A server dropped without [`Server::shutdown`] stops too, its UDP threads included.
    fn drop(&mut self) {
        self.stop();
    }
}

struct Ctx<S> {
    service: Arc<S>,
    limits: Arc<Limits>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    connections: Arc<Semaphore>,
    trusted_connections: Arc<Semaphore>,
}

impl<S> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            limits: self.limits.clone(),
            tasks: self.tasks.clone(),
            shutdown: self.shutdown.clone(),
            connections: self.connections.clone(),
            trusted_connections: self.trusted_connections.clone(),
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
    // A disabled span costs an enter and an exit per poll: leave it out then.
    let outcome = if span.is_disabled() {
        service.call(req).await
    } else {
        service.call(req).instrument(span).await
    };
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

/// [`dispatch`] where the call was read, for the calls that need no wait (most of them):
/// polls it once, saving a task and a thread hand-off per call. `Ok` with the reply (`None`:
/// nothing to send) when it finished; `Err` with the rest when it must wait, to be run in a
/// task, whose first poll registers the real waker.
fn dispatch_here<S: Service>(
    service: &Arc<S>,
    message: Bytes,
    peer: SocketAddr,
    local: SocketAddr,
    transport: Transport,
) -> Result<Option<Bytes>, std::pin::Pin<Box<impl Future<Output = Option<Bytes>> + Send + 'static>>>
{
    let svc = service.clone();
    let mut reply = Box::pin(async move { dispatch(&*svc, message, peer, local, transport).await });
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match reply.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => Err(reply),
    }
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
/// [`Limits::max_udp_in_flight`].
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
fn udp_thread<S: Service>(ctx: &Ctx<S>, sock: &Arc<std::net::UdpSocket>, local: SocketAddr) {
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
        let trusted = (ctx.limits.trusted)(peer);
        let permit = if trusted {
            let Ok(p) = ctx.trusted_connections.clone().try_acquire_owned() else {
                warn!(%peer, limit = ctx.limits.max_trusted_connections, "too many TCP connections from privileged loopback ports (the local lock manager's); closed a new one");
                continue;
            };
            p
        } else {
            let Ok(p) = ctx.connections.clone().try_acquire_owned() else {
                debug!(%peer, "too many TCP connections; closed a new one");
                continue;
            };
            p
        };
        let c = ctx.clone();
        ctx.tasks.spawn(async move {
            connection(c, stream, peer, trusted).await;
            drop(permit);
        });
    }
}

/// `f`'s output, or `Err` when `limit` passes first; no limit when `None`.
async fn within<F: Future>(
    limit: Option<Duration>,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match limit {
        Some(d) => tokio::time::timeout(d, f).await,
        None => Ok(f.await),
    }
}

/// Most replies gathered into one write on a TCP connection.
const TCP_WRITE_BATCH: usize = 64;

/// Serves one TCP connection. A `trusted` one (the local lock manager's) may stay quiet for
/// as long as it likes: lockd and Ganesha open it once and do not reconnect cheaply.
async fn connection<S: Service>(ctx: Ctx<S>, stream: TcpStream, peer: SocketAddr, trusted: bool) {
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
            // Replies that are already waiting go out in the same write.
            let write = async {
                out.feed(reply).await?;
                for _ in 1..TCP_WRITE_BATCH {
                    let Ok(r) = rx.try_recv() else { break };
                    out.feed(r).await?;
                }
                out.flush().await
            };
            match tokio::time::timeout(idle, write).await {
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
    let quiet_limit = (!trusted).then_some(idle);
    loop {
        let next = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            n = within(quiet_limit, records.next()) => n,
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
        match dispatch_here(&ctx.service, message, peer, local, Transport::Tcp) {
            Ok(None) => {}
            Ok(Some(r)) => {
                // The writer may be gone (peer closed); nothing to do then. When it is behind,
                // the reply waits in a task, holding its permit, as a slow call's does.
                if let Err(mpsc::error::TrySendError::Full(r)) = tx.try_send(r) {
                    let tx = tx.clone();
                    ctx.tasks.spawn(async move {
                        let _ = tx.send(r).await;
                        drop(permit);
                    });
                }
            }
            Err(reply) => {
                let tx = tx.clone();
                ctx.tasks.spawn(async move {
                    if let Some(r) = reply.await {
                        let _ = tx.send(r).await;
                    }
                    drop(permit);
                });
            }
        }
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

    #[test]
    fn the_local_lock_manager_is_a_privileged_loopback_port() {
        let cases = [
            ("127.0.0.1:600", true),
            ("127.0.0.1:1023", true),
            ("127.9.9.9:800", true),
            ("[::1]:700", true),
            ("[::ffff:127.0.0.1]:700", true),
            ("127.0.0.1:1024", false),
            ("127.0.0.1:40000", false),
            ("198.51.100.7:700", false),
            ("[::ffff:198.51.100.7]:700", false),
            ("[2001:db8::1]:700", false),
        ];
        for (peer, want) in cases {
            assert_eq!(local_privileged(peer.parse().unwrap()), want, "{peer}");
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

    fn call_of(xid: u32, proc_: u32) -> Vec<u8> {
        let mut call = Vec::new();
        for w in [xid, 0, 2, 100_024, 1, proc_, 0, 0, 0, 0] {
            call.extend_from_slice(&w.to_be_bytes());
        }
        call
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

    #[tokio::test]
    async fn a_dropped_server_closes_its_udp_sockets() {
        let server = Server::new(Arc::new(Where), Limits::default());
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        server.serve_udp(sock);
        drop(server);
        // The thread wakes, exits and closes the socket: the port can be bound again.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} still bound 5 s after the server was dropped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn pipelined_tcp_calls_are_all_answered_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = Server::new(Arc::new(Where), Limits::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        server.serve_tcp(listener);
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut records = Vec::new();
        for xid in 0..100u32 {
            let call = call_of(xid, 0);
            records.extend_from_slice(&(0x8000_0000 | call.len() as u32).to_be_bytes());
            records.extend_from_slice(&call);
        }
        s.write_all(&records).await.unwrap();
        for xid in 0..100u32 {
            let mut mark = [0u8; 4];
            s.read_exact(&mut mark).await.unwrap();
            let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
            let mut reply = vec![0u8; len];
            s.read_exact(&mut reply).await.unwrap();
            assert_eq!(reply[..4], xid.to_be_bytes());
            assert_eq!(reply[len - 4..], [127, 0, 0, 1]);
        }
        drop(s);
        assert!(server.shutdown(Duration::from_secs(1)).await);
    }
}

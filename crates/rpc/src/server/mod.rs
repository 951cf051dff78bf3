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
//!
//! This file holds the public API: the [`Service`] trait, [`Request`], [`Outcome`],
//! [`Limits`] and the [`Server`] with its entry points. `dispatch.rs` turns a message into
//! its reply, the one place where RPC-level failures become replies; `udp.rs` serves the UDP
//! sockets (a thread each, batched `recvmmsg`/`sendmmsg`, packet info); `tcp.rs` the TCP
//! connections (record marking, idle limits, the local lock manager's pool of connections).

mod dispatch;
mod tcp;
mod udp;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::msg::{Auth, AuthStat};

pub use dispatch::dispatch;

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
                    udp::udp_thread(&ctx, &sock, local);
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
        self.tasks.spawn(tcp::tcp_accept_loop(ctx, listener));
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Answers every call with the local address it saw (IPv4 octets).
    pub(super) struct Where;

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

    /// A CALL of program 100024 (status) version 1 with AUTH_NONE and no arguments.
    pub(super) fn call_of(xid: u32, proc_: u32) -> Vec<u8> {
        let mut call = Vec::new();
        for w in [xid, 0, 2, 100_024, 1, proc_, 0, 0, 0, 0] {
            call.extend_from_slice(&w.to_be_bytes());
        }
        call
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
}

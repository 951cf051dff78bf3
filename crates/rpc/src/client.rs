//! An async ONC RPC client: one call at a time over UDP (with retransmission and exponential
//! backoff), TCP or a Unix stream socket (`/run/rpcbind.sock`), with a total timeout, an
//! optional source address and, on request, a privileged source port (what lockd demands of
//! callbacks and what `bindresvport` gives C programs).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use nsm_xdr::{Encode, XdrError};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, UdpSocket, UnixStream};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::msg::{self, AcceptStat, CallHeader, OpaqueAuth, RejectReply, ReplyBody};
use crate::record::{RecordCodec, RecordError};

/// How one call is made.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// The whole call, retransmissions included, gives up after this long.
    pub timeout: Duration,
    /// UDP: first retransmission after this long; the interval doubles after each one.
    pub retransmit: Duration,
    /// UDP: the interval never grows beyond this.
    pub max_retransmit: Duration,
    /// Bind the socket to this address first (port 0: any port).
    pub source: Option<IpAddr>,
    /// Bind a privileged source port (600–1023, as libtirpc's `bindresvport`); needs root or
    /// CAP_NET_BIND_SERVICE.
    pub privileged_port: bool,
    /// The largest reply accepted (bytes).
    pub max_reply: usize,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retransmit: Duration::from_millis(500),
            max_retransmit: Duration::from_secs(4),
            source: None,
            privileged_port: false,
            max_reply: 64 * 1024,
        }
    }
}

/// Why a call failed. Each variant names the peer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A socket operation failed.
    #[error("{op} {peer}: {source}")]
    Io {
        /// What was being done ("connect to", "send to", "bind for").
        op: &'static str,
        /// The peer (address or socket path).
        peer: String,
        /// The error.
        source: io::Error,
    },
    /// No privileged port could be bound.
    #[error(
        "cannot bind a privileged source port (600-1023) for {peer}: {source} (needs root or CAP_NET_BIND_SERVICE)"
    )]
    NoPrivilegedPort {
        /// The peer.
        peer: String,
        /// The last error.
        source: io::Error,
    },
    /// No reply came in time.
    #[error("no reply from {peer} within {after:?} ({sends} transmissions)")]
    Timeout {
        /// The peer.
        peer: String,
        /// The timeout.
        after: Duration,
        /// Transmissions made.
        sends: u32,
    },
    /// The reply could not be decoded.
    #[error("malformed reply from {peer}: {source}")]
    BadReply {
        /// The peer.
        peer: String,
        /// What was wrong.
        source: XdrError,
    },
    /// The stream broke inside a reply.
    #[error("stream from {peer} failed: {source}")]
    Stream {
        /// The peer.
        peer: String,
        /// What was wrong.
        source: RecordError,
    },
    /// The call was accepted but did not succeed.
    #[error("{peer} answered {stat:?}")]
    NotAccepted {
        /// The peer.
        peer: String,
        /// The status (never `Success`).
        stat: AcceptStat<()>,
    },
    /// The call was denied.
    #[error("{peer} denied the call: {reply:?}")]
    Denied {
        /// The peer.
        peer: String,
        /// Why.
        reply: RejectReply,
    },
}

/// A fresh transaction id: random start, then sequential (never 0).
pub fn next_xid() -> u32 {
    static XID: OnceLock<AtomicU32> = OnceLock::new();
    let x = XID
        .get_or_init(|| AtomicU32::new(rand::random()))
        .fetch_add(1, Ordering::Relaxed);
    if x == 0 { next_xid() } else { x }
}

/// The procedure to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    /// Program.
    pub prog: u32,
    /// Version.
    pub vers: u32,
    /// Procedure.
    pub proc_: u32,
}

fn build_call<A: Encode>(xid: u32, p: Proc, args: &A) -> BytesMut {
    let h = CallHeader {
        xid,
        prog: p.prog,
        vers: p.vers,
        proc_: p.proc_,
        cred: OpaqueAuth::NONE,
        verf: OpaqueAuth::NONE,
    };
    let mut out = BytesMut::with_capacity(40 + args.encoded_len());
    msg::encode_call(&h, args, &mut out);
    out
}

/// Interprets a reply to `xid`: `Ok(None)` if it answers another xid (stale), the result
/// bytes on SUCCESS, an error otherwise.
fn results(peer: &str, xid: u32, reply: &Bytes) -> Result<Option<Bytes>, ClientError> {
    let r = msg::parse_reply(reply).map_err(|source| ClientError::BadReply {
        peer: peer.to_owned(),
        source,
    })?;
    if r.xid != xid {
        return Ok(None);
    }
    match r.body {
        ReplyBody::Accepted(AcceptStat::Success(res)) => {
            Ok(Some(reply.slice(reply.len() - res.len()..)))
        }
        ReplyBody::Accepted(stat) => Err(ClientError::NotAccepted {
            peer: peer.to_owned(),
            stat: stat.map(|_| ()),
        }),
        ReplyBody::Denied(reply) => Err(ClientError::Denied {
            peer: peer.to_owned(),
            reply,
        }),
    }
}

/// Creates a socket bound to `source` (or the wildcard of `dest`'s family), on a privileged
/// port if asked.
fn bound_socket(dest: SocketAddr, tcp: bool, opts: &CallOptions) -> Result<Socket, ClientError> {
    let peer = dest.to_string();
    let io_err = |op, source| ClientError::Io {
        op,
        peer: peer.clone(),
        source,
    };
    let ip = opts.source.unwrap_or(match dest {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let (ty, proto) = if tcp {
        (Type::STREAM, Protocol::TCP)
    } else {
        (Type::DGRAM, Protocol::UDP)
    };
    let s = Socket::new(
        Domain::for_address(dest),
        ty.nonblocking().cloexec(),
        Some(proto),
    )
    .map_err(|e| io_err("create a socket for", e))?;
    if ip.is_ipv6() {
        s.set_only_v6(true)
            .map_err(|e| io_err("set IPV6_V6ONLY for", e))?;
    }
    if opts.source.is_some() {
        // An explicit source may be a floating address that is not up yet (as for the
        // SM_NOTIFY sockets): bind it anyway; packets flow once the address is configured.
        let r = if ip.is_ipv6() {
            s.set_freebind_v6(true)
        } else {
            s.set_freebind_v4(true)
        };
        r.map_err(|e| io_err("set IP_FREEBIND for", e))?;
    }
    if !opts.privileged_port {
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(|e| io_err("bind a source address for", e))?;
        return Ok(s);
    }
    bind_privileged(&s, ip).map_err(|source| ClientError::NoPrivilegedPort { peer, source })?;
    Ok(s)
}

/// Binds `s` to a free port in 600–1023 at `ip`, starting at a random port.
pub fn bind_privileged(s: &Socket, ip: IpAddr) -> io::Result<u16> {
    const LOW: u16 = 600;
    const HIGH: u16 = 1023;
    let span = HIGH - LOW + 1;
    let start = rand::random::<u16>() % span;
    let mut last = io::Error::from(io::ErrorKind::AddrInUse);
    for i in 0..span {
        let port = LOW + (start + i) % span;
        match s.bind(&SockAddr::from(SocketAddr::new(ip, port))) {
            Ok(()) => return Ok(port),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Calls `p` at `dest` over UDP, retransmitting with exponential backoff until a reply with
/// the same xid arrives from `dest` or `opts.timeout` passes. The socket is connected, so an
/// ICMP "port unreachable" (nothing listening) ends the call at once with `ConnectionRefused`.
pub async fn call_udp<A: Encode>(
    dest: SocketAddr,
    p: Proc,
    args: &A,
    opts: &CallOptions,
) -> Result<Bytes, ClientError> {
    let peer = dest.to_string();
    let io_err = |op, source| ClientError::Io {
        op,
        peer: dest.to_string(),
        source,
    };
    let sock = UdpSocket::from_std(bound_socket(dest, false, opts)?.into())
        .map_err(|e| io_err("register a socket for", e))?;
    sock.connect(dest)
        .await
        .map_err(|e| io_err("connect to", e))?;
    let xid = next_xid();
    let call = build_call(xid, p, args);
    let deadline = Instant::now() + opts.timeout;
    let mut rto = opts.retransmit;
    let mut sends = 0u32;
    let mut buf = vec![0u8; opts.max_reply];
    loop {
        sock.send(&call).await.map_err(|e| io_err("send to", e))?;
        sends += 1;
        let wake = (Instant::now() + rto).min(deadline);
        while let Ok(got) = tokio::time::timeout_at(wake, sock.recv(&mut buf)).await {
            let n = got.map_err(|e| io_err("call", e))?;
            let reply = Bytes::copy_from_slice(&buf[..n]);
            match results(&peer, xid, &reply) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) | Err(ClientError::BadReply { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Timeout {
                peer,
                after: opts.timeout,
                sends,
            });
        }
        rto = (rto * 2).min(opts.max_retransmit);
    }
}

/// Calls `p` at `dest` over TCP (one connection per call).
pub async fn call_tcp<A: Encode>(
    dest: SocketAddr,
    p: Proc,
    args: &A,
    opts: &CallOptions,
) -> Result<Bytes, ClientError> {
    let peer = dest.to_string();
    let deadline = Instant::now() + opts.timeout;
    let s = TcpSocket::from_std_stream(bound_socket(dest, true, opts)?.into());
    let stream = connect_by(&peer, deadline, opts, s.connect(dest)).await?;
    call_stream(stream, &peer, p, args, opts, deadline).await
}

/// Calls `p` over a Unix stream socket (rpcbind's `/run/rpcbind.sock`).
pub async fn call_unix<A: Encode>(
    path: &Path,
    p: Proc,
    args: &A,
    opts: &CallOptions,
) -> Result<Bytes, ClientError> {
    let peer = path.display().to_string();
    let deadline = Instant::now() + opts.timeout;
    let stream = connect_by(&peer, deadline, opts, UnixStream::connect(path)).await?;
    call_stream(stream, &peer, p, args, opts, deadline).await
}

/// Awaits a stream connection until `deadline`.
async fn connect_by<T>(
    peer: &str,
    deadline: Instant,
    opts: &CallOptions,
    connect: impl Future<Output = io::Result<T>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout_at(deadline, connect).await {
        Err(_) => Err(ClientError::Timeout {
            peer: peer.to_owned(),
            after: opts.timeout,
            sends: 0,
        }),
        Ok(r) => r.map_err(|source| ClientError::Io {
            op: "connect to",
            peer: peer.to_owned(),
            source,
        }),
    }
}

async fn call_stream<T: AsyncRead + AsyncWrite + Unpin, A: Encode>(
    stream: T,
    peer: &str,
    p: Proc,
    args: &A,
    opts: &CallOptions,
    deadline: Instant,
) -> Result<Bytes, ClientError> {
    let xid = next_xid();
    let call = build_call(xid, p, args).freeze();
    let mut framed = Framed::new(stream, RecordCodec::new(opts.max_reply, 64));
    let timeout = || ClientError::Timeout {
        peer: peer.to_owned(),
        after: opts.timeout,
        sends: 1,
    };
    let stream_err = |source| ClientError::Stream {
        peer: peer.to_owned(),
        source,
    };
    tokio::time::timeout_at(deadline, framed.send(call))
        .await
        .map_err(|_| timeout())?
        .map_err(stream_err)?;
    loop {
        let reply = tokio::time::timeout_at(deadline, framed.next())
            .await
            .map_err(|_| timeout())?
            .ok_or_else(|| ClientError::Io {
                op: "read a reply from",
                peer: peer.to_owned(),
                source: io::ErrorKind::UnexpectedEof.into(),
            })?
            .map_err(stream_err)?;
        if let Some(r) = results(peer, xid, &reply)? {
            return Ok(r);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A client bound to an explicit source that is not (yet) on the host still binds:
    /// IP_FREEBIND, as for the SM_NOTIFY sockets (a floating address not up yet).
    #[test]
    fn explicit_source_binds_a_non_local_address() {
        let dest = SocketAddr::from(([127, 0, 0, 1], 111));
        let src: IpAddr = "198.51.100.77".parse().unwrap();
        let opts = CallOptions {
            source: Some(src),
            ..CallOptions::default()
        };
        for tcp in [false, true] {
            let s = bound_socket(dest, tcp, &opts).expect("freebind bind");
            let local = s.local_addr().unwrap().as_socket().unwrap();
            assert_eq!(local.ip(), src);
            assert!(s.freebind_v4().unwrap());
        }
        // Without an explicit source nothing changes.
        let s = bound_socket(dest, false, &CallOptions::default()).unwrap();
        assert!(!s.freebind_v4().unwrap());
    }
}

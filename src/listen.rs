//! Binding the NSM listeners: UDP and TCP on the IPv4 and IPv6 wildcard addresses, all on one
//! port (as `rpc.statd -p` does; without `-p`, one free port is chosen for all four).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tracing::warn;

/// The bound sockets.
#[derive(Debug)]
pub struct Listeners {
    /// UDP sockets (IPv4, then IPv6 when available).
    pub udp: Vec<UdpSocket>,
    /// TCP listeners (IPv4, then IPv6 when available).
    pub tcp: Vec<TcpListener>,
}

fn socket(addr: SocketAddr, tcp: bool) -> io::Result<Socket> {
    let (ty, proto) = if tcp {
        (Type::STREAM, Protocol::TCP)
    } else {
        (Type::DGRAM, Protocol::UDP)
    };
    let s = Socket::new(
        Domain::for_address(addr),
        ty.nonblocking().cloexec(),
        Some(proto),
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if tcp {
        s.set_reuse_address(true)?;
    }
    s.bind(&SockAddr::from(addr))?;
    if tcp {
        s.listen(128)?;
    }
    Ok(s)
}

fn bind_all(port: u16) -> io::Result<Listeners> {
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let udp4 = socket(v4, false)?;
    let port = udp4.local_addr()?.as_socket().map_or(port, |a| a.port());
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let tcp4 = socket(v4, true)?;
    let mut l = Listeners {
        udp: vec![UdpSocket::from_std(udp4.into())?],
        tcp: vec![TcpListener::from_std(tcp4.into())?],
    };
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match (socket(v6, false), socket(v6, true)) {
        (Ok(u), Ok(t)) => {
            l.udp.push(UdpSocket::from_std(u.into())?);
            l.tcp.push(TcpListener::from_std(t.into())?);
        }
        (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "IPv6 is not available; serving IPv4 only");
        }
    }
    Ok(l)
}

/// Binds UDP and TCP listeners on `port` (or one free port) for IPv4, and IPv6 when the host
/// has it.
pub fn bind_listeners(port: Option<u16>) -> Result<Listeners> {
    if let Some(p) = port {
        return bind_all(p).with_context(|| {
            format!("cannot listen on port {p} (is another statd running? is the port privileged and nsmd not root?)")
        });
    }
    // A free UDP port may be taken on TCP or IPv6: try a few.
    let mut last = None;
    for _ in 0..16 {
        match bind_all(0) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e).context("cannot create the NSM listeners"),
        }
    }
    match last {
        Some(e) => Err(e).context("no port was free on UDP and TCP, IPv4 and IPv6 alike"),
        None => bail!("no port was free"),
    }
}

//! The rpcbind client: registering and unregistering a program, and finding a peer's port.
//!
//! Registration is what libtirpc does: rpcbind version 4 SET/UNSET over the AF_LOCAL socket
//! `/run/rpcbind.sock` when it exists (rpcbind then records the real owner from the socket
//! credentials, and only that owner may UNSET), otherwise version 4 over UDP to 127.0.0.1:111,
//! falling back to portmapper version 2 when rpcbind is an old portmap.
//!
//! Lookups: portmapper v2 GETPORT for IPv4 peers, rpcbind v3/v4 GETADDR (needed for IPv6).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use nsm_xdr::rpcbind::{
    IPPROTO_TCP, IPPROTO_UDP, Mapping, PMAP_PROG, PMAP_VERS, PMAPPROC_DUMP, PMAPPROC_GETPORT,
    PMAPPROC_SET, PMAPPROC_UNSET, PmapList, RPCB_VERS4, RPCBPROC_GETADDR, RPCBPROC_SET,
    RPCBPROC_UNSET, Rpcb, RpcbString, parse_uaddr, uaddr,
};
use nsm_xdr::{Encode, from_bytes};

use crate::client::{CallOptions, ClientError, Proc, call_tcp, call_udp, call_unix};
use crate::msg::AcceptStat;

/// The default path of rpcbind's AF_LOCAL socket.
pub const RPCBIND_SOCKET: &str = "/run/rpcbind.sock";

/// Where and how to reach the local rpcbind for registration.
#[derive(Debug, Clone)]
pub struct Rpcbind {
    /// rpcbind's AF_LOCAL socket; used when it exists.
    pub socket: PathBuf,
    /// rpcbind's loopback address, used when the socket does not exist.
    pub addr: SocketAddr,
    /// Timeouts for each call.
    pub opts: CallOptions,
}

impl Default for Rpcbind {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(RPCBIND_SOCKET),
            addr: SocketAddr::from(([127, 0, 0, 1], nsm_xdr::rpcbind::PMAP_PORT)),
            opts: CallOptions {
                timeout: Duration::from_secs(5),
                ..CallOptions::default()
            },
        }
    }
}

/// The owner string libtirpc sends: `superuser` for root, else the decimal uid. (rpcbind
/// takes the owner from the credentials of an AF_LOCAL peer anyway.)
fn owner() -> String {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        "superuser".to_owned()
    } else {
        uid.to_string()
    }
}

fn decode_bool(peer: &str, r: &Bytes) -> Result<bool, ClientError> {
    from_bytes::<bool>(r).map_err(|source| ClientError::BadReply {
        peer: peer.to_owned(),
        source,
    })
}

impl Rpcbind {
    /// Where calls go, for messages.
    pub fn describe(&self) -> String {
        if self.socket.exists() {
            self.socket.display().to_string()
        } else {
            self.addr.to_string()
        }
    }

    async fn call4<A: Encode>(&self, proc_: u32, args: &A) -> Result<Bytes, ClientError> {
        let p = Proc {
            prog: PMAP_PROG,
            vers: RPCB_VERS4,
            proc_,
        };
        if self.socket.exists() {
            call_unix(&self.socket, p, args, &self.opts).await
        } else {
            call_udp(self.addr, p, args, &self.opts).await
        }
    }

    async fn call2(&self, proc_: u32, m: &Mapping) -> Result<bool, ClientError> {
        let p = Proc {
            prog: PMAP_PROG,
            vers: PMAP_VERS,
            proc_,
        };
        let r = call_udp(self.addr, p, m, &self.opts).await?;
        decode_bool(&self.addr.to_string(), &r)
    }

    /// Registers `prog`/`vers` on `netid` (`udp`, `tcp`, `udp6`, `tcp6`) at `addr`. `Ok(false)`
    /// means rpcbind refused (usually: already registered by another owner).
    pub async fn set(
        &self,
        prog: u32,
        vers: u32,
        netid: &str,
        addr: SocketAddr,
    ) -> Result<bool, ClientError> {
        let (ua, own) = (uaddr(addr), owner());
        let args = rpcb(prog, vers, netid, &ua, &own)?;
        match self.call4(RPCBPROC_SET, &args).await {
            Err(ClientError::NotAccepted {
                stat: AcceptStat::ProgMismatch { .. },
                ..
            }) if !addr.is_ipv6() => {
                let prot = if netid.starts_with("tcp") {
                    IPPROTO_TCP
                } else {
                    IPPROTO_UDP
                };
                let m = Mapping {
                    prog,
                    vers,
                    prot,
                    port: u32::from(addr.port()),
                };
                self.call2(PMAPPROC_SET, &m).await
            }
            r => decode_bool(&self.describe(), &r?),
        }
    }

    /// Removes every registration of `prog`/`vers`, on every netid.
    pub async fn unset(&self, prog: u32, vers: u32) -> Result<bool, ClientError> {
        let own = owner();
        let args = rpcb(prog, vers, "", "", &own)?;
        match self.call4(RPCBPROC_UNSET, &args).await {
            Err(ClientError::NotAccepted {
                stat: AcceptStat::ProgMismatch { .. },
                ..
            }) => {
                let mut any = false;
                for prot in [IPPROTO_UDP, IPPROTO_TCP] {
                    let m = Mapping {
                        prog,
                        vers,
                        prot,
                        port: 0,
                    };
                    any |= self.call2(PMAPPROC_UNSET, &m).await?;
                }
                Ok(any)
            }
            r => decode_bool(&self.describe(), &r?),
        }
    }
}

fn rpcb<'a>(
    prog: u32,
    vers: u32,
    netid: &'a str,
    addr: &'a str,
    owner: &'a str,
) -> Result<Rpcb<'a>, ClientError> {
    let s = |v: &'a str| {
        RpcbString::new(v.as_bytes()).map_err(|source| ClientError::BadReply {
            peer: "(local argument)".to_owned(),
            source,
        })
    };
    Ok(Rpcb {
        r_prog: prog,
        r_vers: vers,
        r_netid: s(netid)?,
        r_addr: s(addr)?,
        r_owner: s(owner)?,
    })
}

/// Portmapper v2 GETPORT at `rpcbind` (a peer's address, port 111) over UDP: the port of
/// `prog`/`vers` on `prot` ([`IPPROTO_UDP`] or [`IPPROTO_TCP`]); `None` when not registered.
pub async fn getport(
    rpcbind: SocketAddr,
    prog: u32,
    vers: u32,
    prot: u32,
    opts: &CallOptions,
) -> Result<Option<u16>, ClientError> {
    let p = Proc {
        prog: PMAP_PROG,
        vers: PMAP_VERS,
        proc_: PMAPPROC_GETPORT,
    };
    let m = Mapping {
        prog,
        vers,
        prot,
        port: 0,
    };
    let r = call_udp(rpcbind, p, &m, opts).await?;
    let port = from_bytes::<u32>(&r).map_err(|source| ClientError::BadReply {
        peer: rpcbind.to_string(),
        source,
    })?;
    match u16::try_from(port) {
        Ok(0) => Ok(None),
        Ok(p) => Ok(Some(p)),
        Err(_) => Err(ClientError::BadReply {
            peer: rpcbind.to_string(),
            source: nsm_xdr::XdrError::BadDiscriminant {
                what: "port",
                value: port,
            },
        }),
    }
}

/// rpcbind GETADDR (version `rpcb_vers`, 3 or 4) at `rpcbind` over UDP: the address of
/// `prog`/`vers` on `netid`, with the host part replaced by `rpcbind`'s address when rpcbind
/// answers a wildcard; `None` when not registered.
pub async fn getaddr(
    rpcbind: SocketAddr,
    rpcb_vers: u32,
    prog: u32,
    vers: u32,
    netid: &str,
    opts: &CallOptions,
) -> Result<Option<SocketAddr>, ClientError> {
    let p = Proc {
        prog: PMAP_PROG,
        vers: rpcb_vers,
        proc_: RPCBPROC_GETADDR,
    };
    let ua = uaddr(rpcbind);
    let args = rpcb(prog, vers, netid, &ua, "")?;
    let r = call_udp(rpcbind, p, &args, opts).await?;
    let s = from_bytes::<RpcbString<'_>>(&r).map_err(|source| ClientError::BadReply {
        peer: rpcbind.to_string(),
        source,
    })?;
    if s.is_empty() {
        return Ok(None);
    }
    let a = parse_uaddr(s.as_bytes()).ok_or_else(|| ClientError::BadReply {
        peer: rpcbind.to_string(),
        source: nsm_xdr::XdrError::BadDiscriminant {
            what: "universal address",
            value: 0,
        },
    })?;
    Ok(Some(if a.ip().is_unspecified() {
        SocketAddr::new(rpcbind.ip(), a.port())
    } else {
        a
    }))
}

/// Portmapper v2 DUMP at `rpcbind` over TCP: every registration (what `rpcinfo -p` lists).
pub async fn dump(rpcbind: SocketAddr, opts: &CallOptions) -> Result<Vec<Mapping>, ClientError> {
    dump_list(rpcbind, opts, false).await
}

/// [`dump`] over UDP: for asking often (no connection, no TIME_WAIT), when the list fits in
/// [`CallOptions::max_reply`] (20 bytes a registration).
pub async fn dump_udp(
    rpcbind: SocketAddr,
    opts: &CallOptions,
) -> Result<Vec<Mapping>, ClientError> {
    dump_list(rpcbind, opts, true).await
}

async fn dump_list(
    rpcbind: SocketAddr,
    opts: &CallOptions,
    udp: bool,
) -> Result<Vec<Mapping>, ClientError> {
    let p = Proc {
        prog: PMAP_PROG,
        vers: PMAP_VERS,
        proc_: PMAPPROC_DUMP,
    };
    let r = if udp {
        call_udp(rpcbind, p, &(), opts).await?
    } else {
        call_tcp(rpcbind, p, &(), opts).await?
    };
    from_bytes::<PmapList>(&r)
        .map(|l| l.0)
        .map_err(|source| ClientError::BadReply {
            peer: rpcbind.to_string(),
            source,
        })
}

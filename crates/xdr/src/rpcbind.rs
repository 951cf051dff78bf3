//! The rpcbind subsets nsmd uses (`proto/rpcbind.x`, RFC 1833): portmapper version 2
//! (`mapping`, GETPORT, SET, UNSET, DUMP) and rpcbind versions 3 and 4 (`rpcb`, SET, UNSET,
//! GETADDR), plus universal addresses.

use std::net::{IpAddr, SocketAddr};

use crate::codec::xdr_struct;
use crate::{Decode, Decoder, Opaque, XdrError};

/// The portmapper / rpcbind program.
pub const PMAP_PROG: u32 = 100_000;
/// Portmapper version 2.
pub const PMAP_VERS: u32 = 2;
/// rpcbind version 3.
pub const RPCB_VERS: u32 = 3;
/// rpcbind version 4.
pub const RPCB_VERS4: u32 = 4;
/// The well-known port of rpcbind.
pub const PMAP_PORT: u16 = 111;

/// `PMAPPROC_NULL`.
pub const PMAPPROC_NULL: u32 = 0;
/// `bool PMAPPROC_SET(mapping)`.
pub const PMAPPROC_SET: u32 = 1;
/// `bool PMAPPROC_UNSET(mapping)`.
pub const PMAPPROC_UNSET: u32 = 2;
/// `unsigned int PMAPPROC_GETPORT(mapping)`.
pub const PMAPPROC_GETPORT: u32 = 3;
/// `pmaplist PMAPPROC_DUMP(void)`.
pub const PMAPPROC_DUMP: u32 = 4;

/// `bool RPCBPROC_SET(rpcb)` (versions 3 and 4).
pub const RPCBPROC_SET: u32 = 1;
/// `bool RPCBPROC_UNSET(rpcb)` (versions 3 and 4).
pub const RPCBPROC_UNSET: u32 = 2;
/// `string RPCBPROC_GETADDR(rpcb)` (versions 3 and 4).
pub const RPCBPROC_GETADDR: u32 = 3;

/// `IPPROTO_TCP` in a `mapping`.
pub const IPPROTO_TCP: u32 = 6;
/// `IPPROTO_UDP` in a `mapping`.
pub const IPPROTO_UDP: u32 = 17;

/// The bound nsmd puts on rpcbind strings (netid, universal address, owner). RFC 1833
/// declares them unbounded; real values are a few dozen bytes.
pub const RPCB_MAXSTRLEN: usize = 1024;
/// The most entries nsmd reads from a PMAPPROC_DUMP reply.
pub const PMAP_DUMP_MAX: usize = 4096;

/// An rpcbind `string<>`, bounded by [`RPCB_MAXSTRLEN`].
pub type RpcbString<'a> = Opaque<'a, RPCB_MAXSTRLEN>;

/// `struct mapping { unsigned int prog; unsigned int vers; unsigned int prot; unsigned int
/// port; }` (portmapper version 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// Program number.
    pub prog: u32,
    /// Version number.
    pub vers: u32,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub prot: u32,
    /// Port (0 in a GETPORT query, and in GETPORT's answer when nothing is registered).
    pub port: u32,
}
xdr_struct!([] Mapping { prog, vers, prot, port });

/// `struct rpcb { unsigned long r_prog; unsigned long r_vers; string r_netid<>; string
/// r_addr<>; string r_owner<>; }` (rpcbind versions 3 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rpcb<'a> {
    /// Program number.
    pub r_prog: u32,
    /// Version number.
    pub r_vers: u32,
    /// Network id: `udp`, `tcp`, `udp6`, `tcp6`, `local`.
    pub r_netid: RpcbString<'a>,
    /// Universal address (see [`uaddr`]).
    pub r_addr: RpcbString<'a>,
    /// Owner; rpcbind takes the real owner from the socket credentials on AF_LOCAL.
    pub r_owner: RpcbString<'a>,
}
xdr_struct!([<'a>] Rpcb<'a> { r_prog, r_vers, r_netid, r_addr, r_owner });

/// A PMAPPROC_DUMP reply: `pmaplist *` as XDR optional data (a `bool` before each entry).
/// At most [`PMAP_DUMP_MAX`] entries are read; nothing is pre-allocated from the input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PmapList(pub Vec<Mapping>);

impl Decode<'_> for PmapList {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        let mut out = Vec::new();
        while d.bool()? {
            if out.len() == PMAP_DUMP_MAX {
                return Err(XdrError::TooLong {
                    len: out.len() as u64 + 1,
                    max: PMAP_DUMP_MAX,
                });
            }
            out.push(Mapping::decode(d)?);
        }
        Ok(Self(out))
    }
}

impl crate::Encode for PmapList {
    fn encoded_len(&self) -> usize {
        4 + self.0.len() * 20
    }

    fn encode<B: bytes::BufMut>(&self, out: &mut B) {
        for m in &self.0 {
            true.encode(out);
            m.encode(out);
        }
        false.encode(out);
    }
}

/// The universal address of `addr` (RFC 1833 §2.2, RFC 5665 §5.2.3): the IP address in its
/// textual form followed by `.p1.p2`, the port's high and low bytes in decimal
/// (`0.0.0.0:1662` is `0.0.0.0.6.126`).
pub fn uaddr(addr: SocketAddr) -> String {
    let port = addr.port();
    format!("{}.{}.{}", addr.ip(), port >> 8, port & 0xff)
}

/// Parses a universal address; `None` when it is not one (an empty GETADDR answer means
/// "not registered").
pub fn parse_uaddr(s: &[u8]) -> Option<SocketAddr> {
    let s = std::str::from_utf8(s).ok()?;
    let (rest, lo) = s.rsplit_once('.')?;
    let (ip, hi) = rest.rsplit_once('.')?;
    // Plain decimal only: Rust's parser would also take "+6".
    let octet = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u8>().ok())
            .flatten()
    };
    let (hi, lo) = (octet(hi)?, octet(lo)?);
    let ip: IpAddr = ip.parse().ok()?;
    Some(SocketAddr::new(ip, u16::from_be_bytes([hi, lo])))
}

/// The rpcbind network id for a transport and address family: `udp`, `tcp`, `udp6`, `tcp6`.
pub const fn netid(tcp: bool, ipv6: bool) -> &'static str {
    match (tcp, ipv6) {
        (false, false) => "udp",
        (true, false) => "tcp",
        (false, true) => "udp6",
        (true, true) => "tcp6",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Encode, from_bytes};

    #[test]
    fn uaddr_round_trip() {
        let a: SocketAddr = "0.0.0.0:1662".parse().unwrap();
        assert_eq!(uaddr(a), "0.0.0.0.6.126");
        assert_eq!(parse_uaddr(b"0.0.0.0.6.126"), Some(a));
        let b: SocketAddr = "[::1]:111".parse().unwrap();
        assert_eq!(uaddr(b), "::1.0.111");
        assert_eq!(parse_uaddr(b"::1.0.111"), Some(b));
        assert_eq!(parse_uaddr(b""), None);
        assert_eq!(parse_uaddr(b"1.2.3.4.+0.111"), None, "no sign");
        assert_eq!(parse_uaddr(b"1.2.3.4.256.1"), None);
        assert_eq!(
            parse_uaddr(b"1.2.3.4"),
            None,
            "too few parts for an IPv4 uaddr"
        );
    }

    #[test]
    fn mapping_vector() {
        let m = Mapping {
            prog: 100_024,
            vers: 1,
            prot: IPPROTO_UDP,
            port: 0,
        };
        let b = [0, 1, 0x86, 0xb8, 0, 0, 0, 1, 0, 0, 0, 17, 0, 0, 0, 0];
        assert_eq!(m.to_xdr(), b);
        assert_eq!(from_bytes::<Mapping>(&b).unwrap(), m);
    }

    #[test]
    fn rpcb_vector() {
        let r = Rpcb {
            r_prog: 100_024,
            r_vers: 1,
            r_netid: RpcbString::new(b"udp").unwrap(),
            r_addr: RpcbString::new(b"0.0.0.0.6.126").unwrap(),
            r_owner: RpcbString::new(b"").unwrap(),
        };
        let mut b = vec![
            0, 1, 0x86, 0xb8, 0, 0, 0, 1, 0, 0, 0, 3, b'u', b'd', b'p', 0,
        ];
        b.extend_from_slice(&[0, 0, 0, 13]);
        b.extend_from_slice(b"0.0.0.0.6.126\0\0\0");
        b.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(r.to_xdr(), b);
        assert_eq!(from_bytes::<Rpcb<'_>>(&b).unwrap(), r);
        for n in 0..b.len() {
            assert!(from_bytes::<Rpcb<'_>>(&b[..n]).is_err());
        }
    }

    #[test]
    fn dump_list() {
        let l = PmapList(vec![
            Mapping {
                prog: 100_000,
                vers: 2,
                prot: IPPROTO_TCP,
                port: 111,
            },
            Mapping {
                prog: 100_024,
                vers: 1,
                prot: IPPROTO_UDP,
                port: 1662,
            },
        ]);
        let b = l.to_xdr();
        assert_eq!(b.len(), l.encoded_len());
        assert_eq!(from_bytes::<PmapList>(&b).unwrap(), l);
        // An endless list of "true" markers stops at the bound instead of growing forever.
        let mut evil = Vec::new();
        for _ in 0..=PMAP_DUMP_MAX {
            evil.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 6, 0, 0, 0, 1]);
        }
        assert!(matches!(
            from_bytes::<PmapList>(&evil),
            Err(XdrError::TooLong { .. })
        ));
    }
}

//! RPC messages (RFC 5531 §9, `proto/rpc_msg.x`).
//!
//! A CALL is parsed by [`parse_call`] into its header and a borrowed slice of procedure
//! arguments; a REPLY is built with [`encode_reply`]. Clients use [`encode_call`] and
//! [`parse_reply`]. Parse errors say what the server should answer ([`CallError::reply`]),
//! which is the one place where decode failures map onto RPC rejections.

use bytes::BufMut;
use nsm_xdr::{Decode, Decoder, Encode, Opaque, XdrError};
use thiserror::Error;

/// The RPC protocol version (`rpcvers`) this crate speaks.
pub const RPC_VERSION: u32 = 2;
/// `msg_type CALL`.
pub const CALL: u32 = 0;
/// `msg_type REPLY`.
pub const REPLY: u32 = 1;
/// `reply_stat MSG_ACCEPTED`.
pub const MSG_ACCEPTED: u32 = 0;
/// `reply_stat MSG_DENIED`.
pub const MSG_DENIED: u32 = 1;

/// `AUTH_NONE` (also called AUTH_NULL).
pub const AUTH_NONE: u32 = 0;
/// `AUTH_SYS` (also called AUTH_UNIX).
pub const AUTH_SYS: u32 = 1;
/// The bound of an `opaque_auth` body.
pub const MAX_AUTH_BYTES: usize = 400;
/// The bound of `authsys_parms.machinename`.
pub const AUTHSYS_MAX_MACHINENAME: usize = 255;
/// The bound of `authsys_parms.gids`.
pub const AUTHSYS_MAX_GIDS: usize = 16;

/// `struct opaque_auth { auth_flavor flavor; opaque body<400>; }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpaqueAuth<'a> {
    /// The flavor number (open number space: unknown values survive decoding).
    pub flavor: u32,
    /// The flavor-specific body.
    pub body: Opaque<'a, MAX_AUTH_BYTES>,
}

impl<'a> Decode<'a> for OpaqueAuth<'a> {
    fn decode(d: &mut Decoder<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            flavor: d.u32()?,
            body: Opaque::decode(d)?,
        })
    }
}

impl Encode for OpaqueAuth<'_> {
    fn encoded_len(&self) -> usize {
        4 + self.body.encoded_len()
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u32(self.flavor);
        self.body.encode(out);
    }
}

impl OpaqueAuth<'_> {
    /// AUTH_NONE with an empty body.
    pub const NONE: OpaqueAuth<'static> = OpaqueAuth {
        flavor: AUTH_NONE,
        body: match Opaque::new(&[]) {
            Ok(o) => o,
            Err(_) => unreachable!(),
        },
    };
}

/// `struct authsys_parms` (RFC 5531 §14): the AUTH_SYS credential body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSysParms<'a> {
    /// Arbitrary id the caller generated.
    pub stamp: u32,
    /// The caller's host name (bytes, not necessarily UTF-8).
    pub machinename: Opaque<'a, AUTHSYS_MAX_MACHINENAME>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    gids: [u32; AUTHSYS_MAX_GIDS],
    ngids: u8,
}

impl<'a> AuthSysParms<'a> {
    /// A credential; `None` when there are more than 16 supplementary groups.
    pub fn new(
        stamp: u32,
        machinename: Opaque<'a, AUTHSYS_MAX_MACHINENAME>,
        uid: u32,
        gid: u32,
        groups: &[u32],
    ) -> Option<Self> {
        let mut gids = [0; AUTHSYS_MAX_GIDS];
        gids.get_mut(..groups.len())?.copy_from_slice(groups);
        Some(Self {
            stamp,
            machinename,
            uid,
            gid,
            gids,
            ngids: groups.len() as u8,
        })
    }

    /// The supplementary groups.
    pub fn gids(&self) -> &[u32] {
        &self.gids[..usize::from(self.ngids)]
    }
}

impl<'a> Decode<'a> for AuthSysParms<'a> {
    fn decode(d: &mut Decoder<'a>) -> Result<Self, XdrError> {
        let stamp = d.u32()?;
        let machinename = Opaque::decode(d)?;
        let uid = d.u32()?;
        let gid = d.u32()?;
        let n = d.array_len(AUTHSYS_MAX_GIDS)?;
        let mut gids = [0; AUTHSYS_MAX_GIDS];
        for g in &mut gids[..n] {
            *g = d.u32()?;
        }
        Ok(Self {
            stamp,
            machinename,
            uid,
            gid,
            gids,
            ngids: n as u8,
        })
    }
}

impl Encode for AuthSysParms<'_> {
    fn encoded_len(&self) -> usize {
        16 + self.machinename.encoded_len() + 4 * self.gids().len()
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u32(self.stamp);
        self.machinename.encode(out);
        out.put_u32(self.uid);
        out.put_u32(self.gid);
        out.put_u32(self.gids().len() as u32);
        for g in self.gids() {
            out.put_u32(*g);
        }
    }
}

/// The caller's credential after the server checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// AUTH_NONE.
    None,
    /// AUTH_SYS with the ids the caller claims (unauthenticated, as always with AUTH_SYS).
    Sys {
        /// Claimed uid.
        uid: u32,
        /// Claimed gid.
        gid: u32,
        /// Claimed host name, escaped for display.
        machinename: String,
    },
}

/// `enum accept_stat` plus the data its arms carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptStat<T> {
    /// `SUCCESS`: the procedure's results follow.
    Success(T),
    /// `PROG_UNAVAIL`.
    ProgUnavail,
    /// `PROG_MISMATCH` with the lowest and highest versions supported.
    ProgMismatch {
        /// Lowest version supported.
        low: u32,
        /// Highest version supported.
        high: u32,
    },
    /// `PROC_UNAVAIL`.
    ProcUnavail,
    /// `GARBAGE_ARGS`.
    GarbageArgs,
    /// `SYSTEM_ERR`.
    SystemErr,
}

impl<T> AcceptStat<T> {
    /// The same status with the success value transformed.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> AcceptStat<U> {
        match self {
            Self::Success(t) => AcceptStat::Success(f(t)),
            Self::ProgUnavail => AcceptStat::ProgUnavail,
            Self::ProgMismatch { low, high } => AcceptStat::ProgMismatch { low, high },
            Self::ProcUnavail => AcceptStat::ProcUnavail,
            Self::GarbageArgs => AcceptStat::GarbageArgs,
            Self::SystemErr => AcceptStat::SystemErr,
        }
    }
}

/// `enum auth_stat` (RFC 5531 §9 and the RPCSEC_GSS values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthStat(pub u32);

impl AuthStat {
    /// `AUTH_OK`.
    pub const OK: Self = Self(0);
    /// `AUTH_BADCRED`: bad credential (seal broken).
    pub const BADCRED: Self = Self(1);
    /// `AUTH_REJECTEDCRED`: client must begin a new session.
    pub const REJECTEDCRED: Self = Self(2);
    /// `AUTH_BADVERF`.
    pub const BADVERF: Self = Self(3);
    /// `AUTH_REJECTEDVERF`.
    pub const REJECTEDVERF: Self = Self(4);
    /// `AUTH_TOOWEAK`: rejected for security reasons.
    pub const TOOWEAK: Self = Self(5);
    /// `AUTH_INVALIDRESP`.
    pub const INVALIDRESP: Self = Self(6);
    /// `AUTH_FAILED`: reason unknown.
    pub const FAILED: Self = Self(7);
}

/// `rejected_reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReply {
    /// `RPC_MISMATCH` with the RPC versions supported.
    RpcMismatch {
        /// Lowest RPC version supported.
        low: u32,
        /// Highest RPC version supported.
        high: u32,
    },
    /// `AUTH_ERROR`.
    AuthError(AuthStat),
}

/// `reply_body`: accepted (with a status) or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody<T> {
    /// `MSG_ACCEPTED` (the verifier is always AUTH_NONE from this crate's servers).
    Accepted(AcceptStat<T>),
    /// `MSG_DENIED`.
    Denied(RejectReply),
}

impl<T> ReplyBody<T> {
    /// The same reply with the success value transformed.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> ReplyBody<U> {
        match self {
            Self::Accepted(s) => ReplyBody::Accepted(s.map(f)),
            Self::Denied(r) => ReplyBody::Denied(r),
        }
    }
}

/// The header of a CALL: everything before the procedure arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallHeader<'a> {
    /// Transaction id.
    pub xid: u32,
    /// Program number.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure number.
    pub proc_: u32,
    /// Credential.
    pub cred: OpaqueAuth<'a>,
    /// Verifier.
    pub verf: OpaqueAuth<'a>,
}

/// A parsed CALL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call<'a> {
    /// The header.
    pub header: CallHeader<'a>,
    /// The procedure arguments, borrowed from the message.
    pub args: &'a [u8],
}

/// Why a message could not be accepted as a CALL.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CallError {
    /// Too short to hold an xid and a message type; there is nobody to answer.
    #[error("message too short for an RPC header ({len} bytes)")]
    TooShort {
        /// Message length.
        len: usize,
    },
    /// A REPLY (or another message type) sent to a server; ignored.
    #[error("not an RPC call (message type {msg_type})")]
    NotACall {
        /// The message type found.
        msg_type: u32,
    },
    /// The caller speaks another RPC version: answered with RPC_MISMATCH.
    #[error("RPC version {rpcvers} is not 2")]
    RpcVersion {
        /// Transaction id.
        xid: u32,
        /// Version sent.
        rpcvers: u32,
    },
    /// The header ends early: answered with GARBAGE_ARGS (nfs-utils' libtirpc drops it).
    #[error("truncated RPC call header: {source}")]
    Header {
        /// Transaction id.
        xid: u32,
        /// What was wrong.
        source: XdrError,
    },
    /// The credential is malformed: answered with AUTH_ERROR / AUTH_BADCRED.
    #[error("malformed RPC credential: {source}")]
    BadCred {
        /// Transaction id.
        xid: u32,
        /// What was wrong.
        source: XdrError,
    },
    /// The verifier is malformed: answered with AUTH_ERROR / AUTH_BADVERF.
    #[error("malformed RPC verifier: {source}")]
    BadVerf {
        /// Transaction id.
        xid: u32,
        /// What was wrong.
        source: XdrError,
    },
}

impl CallError {
    /// The reply the server sends (with the xid), or `None` when the message is dropped.
    pub const fn reply(&self) -> Option<(u32, ReplyBody<()>)> {
        match *self {
            Self::TooShort { .. } | Self::NotACall { .. } => None,
            Self::RpcVersion { xid, .. } => Some((
                xid,
                ReplyBody::Denied(RejectReply::RpcMismatch {
                    low: RPC_VERSION,
                    high: RPC_VERSION,
                }),
            )),
            Self::Header { xid, .. } => Some((xid, ReplyBody::Accepted(AcceptStat::GarbageArgs))),
            Self::BadCred { xid, .. } => Some((
                xid,
                ReplyBody::Denied(RejectReply::AuthError(AuthStat::BADCRED)),
            )),
            Self::BadVerf { xid, .. } => Some((
                xid,
                ReplyBody::Denied(RejectReply::AuthError(AuthStat::BADVERF)),
            )),
        }
    }
}

/// Parses an RPC CALL message (one whole record or datagram, without record mark).
pub fn parse_call(msg: &[u8]) -> Result<Call<'_>, CallError> {
    let mut d = Decoder::new(msg);
    let (Ok(xid), Ok(msg_type)) = (d.u32(), d.u32()) else {
        return Err(CallError::TooShort { len: msg.len() });
    };
    if msg_type != CALL {
        return Err(CallError::NotACall { msg_type });
    }
    let header = |d: &mut Decoder<'_>| -> Result<[u32; 4], XdrError> {
        Ok([d.u32()?, d.u32()?, d.u32()?, d.u32()?])
    };
    let [rpcvers, prog, vers, proc_] =
        header(&mut d).map_err(|source| CallError::Header { xid, source })?;
    if rpcvers != RPC_VERSION {
        return Err(CallError::RpcVersion { xid, rpcvers });
    }
    let cred = OpaqueAuth::decode(&mut d).map_err(|source| CallError::BadCred { xid, source })?;
    let verf = OpaqueAuth::decode(&mut d).map_err(|source| CallError::BadVerf { xid, source })?;
    Ok(Call {
        header: CallHeader {
            xid,
            prog,
            vers,
            proc_,
            cred,
            verf,
        },
        args: d.rest(),
    })
}

/// Checks a credential the way a server must before dispatch: AUTH_NONE, or AUTH_SYS whose
/// body is exactly one well-formed `authsys_parms`. An AUTH_NONE body is not inspected
/// (RFC 5531 says it is empty; libtirpc accepts any, and so does nsmd). Other flavors get AUTH_REJECTEDCRED (as
/// libtirpc answers for a flavor it does not serve), a malformed AUTH_SYS body AUTH_BADCRED.
pub fn check_auth(cred: &OpaqueAuth<'_>) -> Result<Auth, AuthStat> {
    match cred.flavor {
        AUTH_NONE => Ok(Auth::None),
        AUTH_SYS => {
            let p = nsm_xdr::from_bytes::<AuthSysParms<'_>>(cred.body.as_bytes())
                .map_err(|_| AuthStat::BADCRED)?;
            Ok(Auth::Sys {
                uid: p.uid,
                gid: p.gid,
                machinename: p.machinename.to_string(),
            })
        }
        _ => Err(AuthStat::REJECTEDCRED),
    }
}

impl<T: Encode> Encode for ReplyBody<T> {
    fn encoded_len(&self) -> usize {
        match self {
            Self::Accepted(s) => {
                4 + OpaqueAuth::NONE.encoded_len()
                    + 4
                    + match s {
                        AcceptStat::Success(r) => r.encoded_len(),
                        AcceptStat::ProgMismatch { .. } => 8,
                        _ => 0,
                    }
            }
            Self::Denied(RejectReply::RpcMismatch { .. }) => 16,
            Self::Denied(RejectReply::AuthError(_)) => 12,
        }
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        match self {
            Self::Accepted(s) => {
                out.put_u32(MSG_ACCEPTED);
                OpaqueAuth::NONE.encode(out);
                match s {
                    AcceptStat::Success(r) => {
                        out.put_u32(0);
                        r.encode(out);
                    }
                    AcceptStat::ProgUnavail => out.put_u32(1),
                    AcceptStat::ProgMismatch { low, high } => {
                        out.put_u32(2);
                        out.put_u32(*low);
                        out.put_u32(*high);
                    }
                    AcceptStat::ProcUnavail => out.put_u32(3),
                    AcceptStat::GarbageArgs => out.put_u32(4),
                    AcceptStat::SystemErr => out.put_u32(5),
                }
            }
            Self::Denied(r) => {
                out.put_u32(MSG_DENIED);
                match r {
                    RejectReply::RpcMismatch { low, high } => {
                        out.put_u32(0);
                        out.put_u32(*low);
                        out.put_u32(*high);
                    }
                    RejectReply::AuthError(s) => {
                        out.put_u32(1);
                        out.put_u32(s.0);
                    }
                }
            }
        }
    }
}

/// Raw result bytes that are already XDR-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawXdr<'a>(pub &'a [u8]);

impl Encode for RawXdr<'_> {
    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_slice(self.0);
    }
}

/// Length of a REPLY with this body.
pub fn reply_len<T: Encode>(body: &ReplyBody<T>) -> usize {
    8 + body.encoded_len()
}

/// Appends a REPLY message (xid, REPLY, body) to `out`.
pub fn encode_reply<T: Encode, B: BufMut>(xid: u32, body: &ReplyBody<T>, out: &mut B) {
    out.put_u32(xid);
    out.put_u32(REPLY);
    body.encode(out);
}

/// Appends a CALL message with these arguments to `out`.
pub fn encode_call<A: Encode, B: BufMut>(header: &CallHeader<'_>, args: &A, out: &mut B) {
    out.put_u32(header.xid);
    out.put_u32(CALL);
    out.put_u32(RPC_VERSION);
    out.put_u32(header.prog);
    out.put_u32(header.vers);
    out.put_u32(header.proc_);
    header.cred.encode(out);
    header.verf.encode(out);
    args.encode(out);
}

/// A parsed REPLY: the xid and the body, whose success arm borrows the result bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    /// Transaction id.
    pub xid: u32,
    /// What the server answered.
    pub body: ReplyBody<&'a [u8]>,
}

/// Parses an RPC REPLY message (without record mark).
pub fn parse_reply(msg: &[u8]) -> Result<Reply<'_>, XdrError> {
    let mut d = Decoder::new(msg);
    let xid = d.u32()?;
    let msg_type = d.u32()?;
    if msg_type != REPLY {
        return Err(XdrError::BadDiscriminant {
            what: "msg_type (expected REPLY)",
            value: msg_type,
        });
    }
    let body = match d.u32()? {
        MSG_ACCEPTED => {
            let _verf = OpaqueAuth::decode(&mut d)?;
            let stat = match d.u32()? {
                0 => AcceptStat::Success(d.rest()),
                1 => AcceptStat::ProgUnavail,
                2 => AcceptStat::ProgMismatch {
                    low: d.u32()?,
                    high: d.u32()?,
                },
                3 => AcceptStat::ProcUnavail,
                4 => AcceptStat::GarbageArgs,
                5 => AcceptStat::SystemErr,
                value => {
                    return Err(XdrError::BadDiscriminant {
                        what: "accept_stat",
                        value,
                    });
                }
            };
            if !matches!(stat, AcceptStat::Success(_)) {
                d.finish()?;
            }
            ReplyBody::Accepted(stat)
        }
        MSG_DENIED => {
            let r = match d.u32()? {
                0 => RejectReply::RpcMismatch {
                    low: d.u32()?,
                    high: d.u32()?,
                },
                1 => RejectReply::AuthError(AuthStat(d.u32()?)),
                value => {
                    return Err(XdrError::BadDiscriminant {
                        what: "reject_stat",
                        value,
                    });
                }
            };
            d.finish()?;
            ReplyBody::Denied(r)
        }
        value => {
            return Err(XdrError::BadDiscriminant {
                what: "reply_stat",
                value,
            });
        }
    };
    Ok(Reply { xid, body })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `rpcinfo -u HOST 100024 1`: a NULL call with AUTH_NONE (libtirpc's clnt_call).
    const NULL_CALL: [u8; 40] = [
        0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0x86, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn parse_null_call() {
        let c = parse_call(&NULL_CALL).unwrap();
        assert_eq!(c.header.xid, 0x1234_5678);
        assert_eq!(
            (c.header.prog, c.header.vers, c.header.proc_),
            (100_024, 1, 0)
        );
        assert_eq!(c.header.cred, OpaqueAuth::NONE);
        assert!(c.args.is_empty());
        let mut again = Vec::new();
        encode_call(&c.header, &RawXdr(&[]), &mut again);
        assert_eq!(again, NULL_CALL);
    }

    #[test]
    fn every_prefix_of_a_call_is_handled() {
        for n in 0..NULL_CALL.len() {
            let e = parse_call(&NULL_CALL[..n]).unwrap_err();
            match n {
                0..8 => assert!(matches!(e, CallError::TooShort { .. })),
                8..24 => assert!(matches!(e, CallError::Header { .. })),
                24..32 => assert!(matches!(e, CallError::BadCred { .. })),
                _ => assert!(matches!(e, CallError::BadVerf { .. })),
            }
        }
    }

    #[test]
    fn replies_are_byte_exact() {
        let xid = 0xa0b0_c0d0u32;
        let cases: [(ReplyBody<RawXdr<'_>>, &[u8]); 8] = [
            (
                ReplyBody::Accepted(AcceptStat::Success(RawXdr(&[0, 0, 0, 0, 0, 0, 0, 3]))),
                &[
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3,
                ],
            ),
            (
                ReplyBody::Accepted(AcceptStat::ProgUnavail),
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ),
            (
                ReplyBody::Accepted(AcceptStat::ProgMismatch { low: 1, high: 1 }),
                &[
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1,
                ],
            ),
            (
                ReplyBody::Accepted(AcceptStat::ProcUnavail),
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
            ),
            (
                ReplyBody::Accepted(AcceptStat::GarbageArgs),
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4],
            ),
            (
                ReplyBody::Accepted(AcceptStat::SystemErr),
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            ),
            (
                ReplyBody::Denied(RejectReply::RpcMismatch { low: 2, high: 2 }),
                &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2],
            ),
            (
                ReplyBody::Denied(RejectReply::AuthError(AuthStat::TOOWEAK)),
                &[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 5],
            ),
        ];
        for (body, tail) in cases {
            let mut out = Vec::new();
            encode_reply(xid, &body, &mut out);
            assert_eq!(out.len(), reply_len(&body));
            assert_eq!(&out[..8], &[0xa0, 0xb0, 0xc0, 0xd0, 0, 0, 0, 1]);
            assert_eq!(&out[8..], tail, "{body:?}");
            let parsed = parse_reply(&out).unwrap();
            assert_eq!(parsed.xid, xid);
            let expect = body.map(|RawXdr(r)| r);
            assert_eq!(parsed.body, expect);
        }
    }

    fn auth_sys_body(name: &[u8], ngids: usize) -> Vec<u8> {
        let groups: Vec<u32> = (0..ngids as u32).collect();
        AuthSysParms::new(7, Opaque::new(name).unwrap(), 0, 0, &groups)
            .unwrap()
            .to_xdr()
    }

    #[test]
    fn largest_valid_auth_sys_is_accepted() {
        // 255-byte machine name and 16 gids: 340 bytes, over onc-rpc's 200-byte cap, within
        // RFC 5531's 400.
        let body = auth_sys_body(&[b'm'; 255], 16);
        assert_eq!(body.len(), 340);
        let cred = OpaqueAuth {
            flavor: AUTH_SYS,
            body: Opaque::new(&body).unwrap(),
        };
        let hdr = CallHeader {
            xid: 1,
            prog: 100_024,
            vers: 1,
            proc_: 0,
            cred,
            verf: OpaqueAuth::NONE,
        };
        let mut msg = Vec::new();
        encode_call(&hdr, &(), &mut msg);
        let c = parse_call(&msg).unwrap();
        assert!(matches!(
            check_auth(&c.header.cred),
            Ok(Auth::Sys { uid: 0, .. })
        ));
    }

    #[test]
    fn bad_credentials() {
        // 17 gids: over the bound.
        let mut body = auth_sys_body(b"h", 16);
        body[23] = 17; // ngids: after stamp, name (4 + 4), uid and gid
        let body = &body;
        let cred = OpaqueAuth {
            flavor: AUTH_SYS,
            body: Opaque::new(body).unwrap(),
        };
        assert_eq!(check_auth(&cred), Err(AuthStat::BADCRED));
        // Trailing bytes inside the AUTH_SYS body.
        let mut body2 = auth_sys_body(b"h", 0);
        body2.extend_from_slice(&[0; 4]);
        let cred = OpaqueAuth {
            flavor: AUTH_SYS,
            body: Opaque::new(&body2).unwrap(),
        };
        assert_eq!(check_auth(&cred), Err(AuthStat::BADCRED));
        // RPCSEC_GSS is not served.
        let cred = OpaqueAuth {
            flavor: 6,
            body: Opaque::default(),
        };
        assert_eq!(check_auth(&cred), Err(AuthStat::REJECTEDCRED));
        // An auth body over 400 bytes is a malformed call header.
        let mut msg = NULL_CALL[..24].to_vec();
        msg.extend_from_slice(&[0, 0, 0, 1, 0, 0, 1, 0x91]); // AUTH_SYS, length 401
        msg.extend(std::iter::repeat_n(0u8, 404));
        assert!(matches!(
            parse_call(&msg),
            Err(CallError::BadCred {
                source: XdrError::TooLong { len: 401, .. },
                ..
            })
        ));
    }

    #[test]
    fn rpc_version_and_reply_mapping() {
        let mut msg = NULL_CALL;
        msg[11] = 3;
        let e = parse_call(&msg).unwrap_err();
        assert_eq!(
            e.reply(),
            Some((
                0x1234_5678,
                ReplyBody::Denied(RejectReply::RpcMismatch { low: 2, high: 2 })
            ))
        );
        let mut msg = NULL_CALL;
        msg[7] = 1; // a REPLY sent to a server
        assert_eq!(parse_call(&msg).unwrap_err().reply(), None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Ok(c) = parse_call(&data) {
                let _ = check_auth(&c.header.cred);
            }
            let _ = parse_reply(&data);
        }
    }
}

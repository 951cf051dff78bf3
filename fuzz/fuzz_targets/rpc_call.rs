//! RPC CALL and REPLY parsing (`proto/rpc_msg.x`, RFC 5531). Properties:
//!
//! - `parse_call` never panics. On success, `encode_call` of the header and the borrowed
//!   arguments gives back the input, byte for byte except the padding of the two auth bodies
//!   (the parser accepts any padding, the encoder writes zeros), and parsing that gives the same
//!   call; `check_auth` agrees with the flavor and with `AuthSysParms` decoding.
//! - On error, the error matches the input's shape (`TooShort` exactly when fewer than 8
//!   bytes, `NotACall` exactly when the message type is not 0, ...) and `reply()` carries the
//!   input's xid.
//! - `parse_reply` never panics; a parsed reply re-encodes into a message that parses to the
//!   same reply, and to the same bytes when the input's verifier was an empty AUTH_NONE.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsm_rpc::msg::{
    AUTH_NONE, AUTH_SYS, AcceptStat, Auth, AuthStat, AuthSysParms, CallError, RawXdr, RejectReply,
    ReplyBody, check_auth, encode_call, encode_reply, parse_call, parse_reply, reply_len,
};
use nsm_xdr::{Encode, from_bytes, padding};

fn word(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

fn check_call(data: &[u8]) {
    match parse_call(data) {
        Ok(call) => {
            let h = call.header;
            assert_eq!(word(data, 0), Some(h.xid));
            assert_eq!(word(data, 4), Some(0), "msg_type CALL");
            assert_eq!(word(data, 8), Some(2), "rpcvers 2");
            let mut v = Vec::new();
            encode_call(&h, &RawXdr(call.args), &mut v);
            assert_eq!(
                v.len(),
                data.len(),
                "re-encoded call has the input's length"
            );
            // Padding positions of the credential and verifier bodies.
            let cred_at = 28;
            let cred_len = h.cred.body.len();
            let verf_at = cred_at + 4 + cred_len + padding(cred_len) + 4;
            let verf_len = h.verf.body.len();
            let pads = [
                cred_at + 4 + cred_len..cred_at + 4 + cred_len + padding(cred_len),
                verf_at + 4 + verf_len..verf_at + 4 + verf_len + padding(verf_len),
            ];
            for (i, (a, b)) in data.iter().zip(&v).enumerate() {
                if pads.iter().any(|p| p.contains(&i)) {
                    assert_eq!(*b, 0, "padding byte {i} is written as zero");
                } else {
                    assert_eq!(a, b, "byte {i} differs after re-encoding");
                }
            }
            let again = parse_call(&v).expect("a re-encoded call parses");
            assert_eq!(again.header, h);
            assert_eq!(again.args, call.args);

            match check_auth(&h.cred) {
                Ok(Auth::None) => assert_eq!(h.cred.flavor, AUTH_NONE),
                Ok(Auth::Sys {
                    uid,
                    gid,
                    machinename,
                }) => {
                    assert_eq!(h.cred.flavor, AUTH_SYS);
                    let p = from_bytes::<AuthSysParms<'_>>(h.cred.body.as_bytes())
                        .expect("check_auth accepted it");
                    assert_eq!((p.uid, p.gid), (uid, gid));
                    assert_eq!(machinename, p.machinename.to_string());
                    assert!(p.gids().len() <= 16);
                    let enc = p.to_xdr();
                    assert_eq!(enc.len(), p.encoded_len());
                    assert_eq!(enc.len(), cred_len, "authsys_parms fills the body");
                    assert_eq!(from_bytes::<AuthSysParms<'_>>(&enc), Ok(p));
                }
                Err(AuthStat::REJECTEDCRED) => {
                    assert!(h.cred.flavor != AUTH_NONE && h.cred.flavor != AUTH_SYS);
                }
                Err(AuthStat::BADCRED) => {
                    assert_eq!(h.cred.flavor, AUTH_SYS);
                    assert!(from_bytes::<AuthSysParms<'_>>(h.cred.body.as_bytes()).is_err());
                }
                Err(s) => panic!("unexpected auth status {s:?}"),
            }
        }
        Err(e) => {
            let xid = word(data, 0);
            let msg_type = word(data, 4);
            match e {
                CallError::TooShort { len } => {
                    assert_eq!(len, data.len());
                    assert!(data.len() < 8);
                }
                CallError::NotACall { msg_type: m } => {
                    assert_eq!(msg_type, Some(m));
                    assert_ne!(m, 0);
                }
                CallError::RpcVersion { xid: x, rpcvers } => {
                    assert_eq!(Some(x), xid);
                    assert_eq!(msg_type, Some(0));
                    assert_eq!(word(data, 8), Some(rpcvers));
                    assert_ne!(rpcvers, 2);
                    assert!(data.len() >= 24);
                }
                CallError::Header { xid: x, .. } => {
                    assert_eq!(Some(x), xid);
                    assert_eq!(msg_type, Some(0));
                    assert!(data.len() < 24, "header error with {} bytes", data.len());
                }
                CallError::BadCred { xid: x, .. } | CallError::BadVerf { xid: x, .. } => {
                    assert_eq!(Some(x), xid);
                    assert_eq!(msg_type, Some(0));
                    assert_eq!(word(data, 8), Some(2));
                }
                ref other => panic!("unexpected error variant {other:?}"),
            }
            match e.reply() {
                None => assert!(data.len() < 8 || msg_type != Some(0)),
                Some((x, body)) => {
                    assert_eq!(Some(x), xid, "a rejection carries the input's xid");
                    let mut out = Vec::new();
                    encode_reply(x, &body, &mut out);
                    assert_eq!(out.len(), reply_len(&body));
                    let r = parse_reply(&out).expect("our own rejection parses");
                    assert_eq!(r.xid, x);
                    assert!(!matches!(
                        r.body,
                        ReplyBody::Accepted(AcceptStat::Success(_))
                    ));
                }
            }
        }
    }
}

fn check_reply(data: &[u8]) {
    let Ok(r) = parse_reply(data) else {
        return;
    };
    assert_eq!(word(data, 0), Some(r.xid));
    assert_eq!(word(data, 4), Some(1), "msg_type REPLY");
    let body = r.body.clone().map(RawXdr);
    let mut out = Vec::new();
    encode_reply(r.xid, &body, &mut out);
    assert_eq!(out.len(), reply_len(&body));
    let again = parse_reply(&out).expect("a re-encoded reply parses");
    assert_eq!(again, r);
    let empty_none_verf = data.get(12..20) == Some(&[0; 8][..]);
    match r.body {
        ReplyBody::Denied(RejectReply::RpcMismatch { .. } | RejectReply::AuthError(_)) => {
            assert_eq!(out, data, "a denied reply has one encoding");
        }
        ReplyBody::Accepted(_) if empty_none_verf => {
            assert_eq!(
                out, data,
                "an accepted reply with an empty AUTH_NONE verifier"
            );
        }
        ReplyBody::Accepted(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    check_call(data);
    check_reply(data);
});

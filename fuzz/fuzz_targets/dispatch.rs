//! `nsm_rpc::server::dispatch` over arbitrary messages, with a small test service behind it.
//! Properties:
//!
//! - it never panics;
//! - every reply parses with `parse_reply` and carries the xid of the input's first 4 bytes;
//! - the reply is byte for byte the one RFC 5531 asks for, computed independently here: the
//!   rejection `parse_call`'s error names, AUTH_ERROR for a refused credential, PROG_UNAVAIL,
//!   PROG_MISMATCH, or what the service answered (nothing for `Outcome::Drop`);
//! - the service sees exactly the header fields and argument bytes of the call.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use nsm_rpc::msg::{
    AcceptStat, AuthStat, RawXdr, RejectReply, ReplyBody, check_auth, encode_reply, parse_call,
    parse_reply,
};
use nsm_rpc::server::{Outcome, Request, Service, Transport, dispatch};
use nsm_xdr::nsm::{Mon, Res, SM_PROG, SmStatRes};
use nsm_xdr::{Encode, from_bytes};

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 700);
const LOCAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1662);

/// What the test service answers, by procedure.
fn answer(proc_: u32, args: &[u8]) -> Outcome {
    match proc_ {
        0 => Outcome::Success(Bytes::new()),
        1 => Outcome::Success(Bytes::copy_from_slice(args)),
        2 => match from_bytes::<Mon<'_>>(args) {
            Ok(_) => Outcome::Success(Bytes::from(
                SmStatRes {
                    res_stat: Res::StatSucc,
                    state: 3,
                }
                .to_xdr(),
            )),
            Err(_) => Outcome::GarbageArgs,
        },
        3 => Outcome::SystemErr,
        4 => Outcome::AuthError(AuthStat::TOOWEAK),
        5 => Outcome::Drop,
        _ => Outcome::ProcUnavail,
    }
}

#[derive(Debug)]
struct TestService;

impl Service for TestService {
    fn versions(&self, prog: u32) -> Option<(u32, u32)> {
        match prog {
            SM_PROG => Some((1, 1)),
            100_000 => Some((2, 4)),
            _ => None,
        }
    }

    async fn call(&self, req: Request) -> Outcome {
        assert_eq!(
            (req.peer, req.local, req.transport),
            (PEER, LOCAL, Transport::Tcp)
        );
        let (low, high) = self
            .versions(req.prog)
            .expect("only served programs reach the service");
        assert!((low..=high).contains(&req.vers));
        answer(req.proc_, &req.args)
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fn reply(xid: u32, body: ReplyBody<RawXdr<'_>>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    encode_reply(xid, &body, &mut out);
    Some(out)
}

/// The reply RFC 5531 (and the test service) call for, computed without `dispatch`.
fn expected(data: &[u8]) -> Option<Vec<u8>> {
    let call = match parse_call(data) {
        Ok(c) => c,
        Err(e) => {
            let (xid, body) = e.reply()?;
            assert!(
                !matches!(body, ReplyBody::Accepted(AcceptStat::Success(()))),
                "a rejection is never SUCCESS"
            );
            let body = body.map(|()| RawXdr(&[]));
            return reply(xid, body);
        }
    };
    let h = call.header;
    if let Err(stat) = check_auth(&h.cred) {
        return reply(h.xid, ReplyBody::Denied(RejectReply::AuthError(stat)));
    }
    let Some((low, high)) = TestService.versions(h.prog) else {
        return reply(h.xid, ReplyBody::Accepted(AcceptStat::ProgUnavail));
    };
    if !(low..=high).contains(&h.vers) {
        return reply(
            h.xid,
            ReplyBody::Accepted(AcceptStat::ProgMismatch { low, high }),
        );
    }
    let stat = match answer(h.proc_, call.args) {
        Outcome::Success(r) => {
            return reply(h.xid, ReplyBody::Accepted(AcceptStat::Success(RawXdr(&r))));
        }
        Outcome::ProcUnavail => AcceptStat::ProcUnavail,
        Outcome::GarbageArgs => AcceptStat::GarbageArgs,
        Outcome::SystemErr => AcceptStat::SystemErr,
        Outcome::AuthError(s) => return reply(h.xid, ReplyBody::Denied(RejectReply::AuthError(s))),
        Outcome::Drop => return None,
    };
    reply(h.xid, ReplyBody::Accepted(stat))
}

fuzz_target!(|data: &[u8]| {
    let message = Bytes::copy_from_slice(data);
    let got = runtime().block_on(dispatch(&TestService, message, PEER, LOCAL, Transport::Tcp));
    if let Some(r) = &got {
        let parsed = parse_reply(r).expect("every reply parses");
        let xid = data
            .get(..4)
            .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        assert_eq!(Some(parsed.xid), xid, "a reply carries the call's xid");
    }
    assert_eq!(
        got.as_deref(),
        expected(data).as_deref(),
        "dispatch answered something else"
    );
});

//! One call message in, its reply message out: parsing the call, checking the credential,
//! the program and version, running the [`Service`], and encoding what it answered
//! ([`Outcome`]) or what the RPC layer refused (RPC_MISMATCH, AUTH_ERROR, PROG_UNAVAIL,
//! PROG_MISMATCH, GARBAGE_ARGS, SYSTEM_ERR…) as the reply.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tracing::{Instrument, debug, debug_span};

use super::{Outcome, Request, Service, Transport};
use crate::msg::{self, AcceptStat, RawXdr, RejectReply, ReplyBody};

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
pub(super) fn dispatch_here<S: Service>(
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

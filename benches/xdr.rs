//! Micro benchmarks of the XDR and RPC codecs on the messages statd handles most: lockd's
//! SM_MON call, its reply, and the TCP record around it.
//!
//! Run with `cargo bench --bench xdr`; results and the machine they came from are in
//! BENCHMARKS.md. Sizes are realistic: mon_name "client-0042.example.test", my_name
//! "nfs-server-a", a 16-byte cookie. The Linux kernel calls statd with AUTH_NONE (lockd's
//! `nsm_create` uses RPC_AUTH_NULL); the AUTH_SYS variant is what a userspace client may send.

use bytes::BytesMut;
use divan::{Bencher, black_box};
use nsm_rpc::msg::{
    AUTH_SYS, AcceptStat, AuthSysParms, CallHeader, OpaqueAuth, ReplyBody, check_auth, encode_call,
    encode_reply, parse_call, parse_reply, reply_len,
};
use nsm_rpc::record::{RecordCodec, put_record_mark};
use nsm_xdr::nsm::{
    Mon, MonId, MyId, NLM_PROG, NLMPROC_NSM_NOTIFY, Res, SM_MON, SM_PROG, SM_VERS, SmStatRes,
    SmString,
};
use nsm_xdr::{Encode, Opaque, from_bytes};
use tokio_util::codec::Decoder;

const MON_NAME: &[u8] = b"client-0042.example.test";
const MY_NAME: &[u8] = b"nfs-server-a";
const PRIV: [u8; 16] = *b"\x00\x00\x00\x2a\x51\x0e\x33\x91\xc4\x7a\x00\x00\x00\x00\x00\x01";
const XID: u32 = 0x6d2f_41a7;

/// Credential flavors benchmarked.
const AUTHS: [&str; 2] = ["auth_none", "auth_sys"];

fn mon() -> Mon<'static> {
    Mon {
        mon_id: MonId {
            mon_name: SmString::new(MON_NAME).expect("fits SM_MAXSTRLEN"),
            my_id: MyId {
                my_name: SmString::new(MY_NAME).expect("fits SM_MAXSTRLEN"),
                my_prog: NLM_PROG,
                my_vers: 3,
                my_proc: NLMPROC_NSM_NOTIFY,
            },
        },
        priv_: PRIV,
    }
}

/// An AUTH_SYS body as a userspace client on the server would send it: root, one group.
fn auth_sys_body() -> Vec<u8> {
    let machinename = Opaque::new(MY_NAME).expect("fits 255 bytes");
    AuthSysParms::new(0x6550_0f3a, machinename, 0, 0, &[0])
        .expect("one group")
        .to_xdr()
}

/// The SM_MON call message (no record mark) with the given credential flavor.
fn sm_mon_call(auth: &str) -> Vec<u8> {
    let body = auth_sys_body();
    let cred = match auth {
        "auth_none" => OpaqueAuth::NONE,
        "auth_sys" => OpaqueAuth {
            flavor: AUTH_SYS,
            body: Opaque::new(&body).expect("fits 400 bytes"),
        },
        other => panic!("unknown flavor {other}"),
    };
    let header = CallHeader {
        xid: XID,
        prog: SM_PROG,
        vers: SM_VERS,
        proc_: SM_MON,
        cred,
        verf: OpaqueAuth::NONE,
    };
    let mut v = Vec::new();
    encode_call(&header, &mon(), &mut v);
    v
}

const RESULT: SmStatRes = SmStatRes {
    res_stat: Res::StatSucc,
    state: 3,
};

fn sm_mon_reply() -> Vec<u8> {
    let mut v = Vec::new();
    encode_reply(
        XID,
        &ReplyBody::Accepted(AcceptStat::Success(RESULT)),
        &mut v,
    );
    v
}

/// What a server does with an SM_MON call: parse the header, check the credential, decode
/// the arguments.
#[divan::bench(args = AUTHS)]
fn decode_sm_mon_call(bencher: Bencher<'_, '_>, auth: &str) {
    let msg = sm_mon_call(auth);
    bencher.bench(|| {
        let call = parse_call(black_box(&msg)).expect("a valid call");
        let who = check_auth(&call.header.cred).expect("an accepted credential");
        let mon = from_bytes::<Mon<'_>>(call.args).expect("valid arguments");
        black_box((call.header.xid, who, mon));
    });
}

/// What a client (lockd, or a test client) does: encode the header and the arguments into a
/// buffer of the right size.
#[divan::bench(args = AUTHS)]
fn encode_sm_mon_call(bencher: Bencher<'_, '_>, auth: &str) {
    let msg = sm_mon_call(auth);
    let call = parse_call(&msg).expect("a valid call");
    let header = call.header;
    let mon = mon();
    bencher.bench(|| {
        let header = black_box(&header);
        let mon = black_box(&mon);
        let mut out = Vec::with_capacity(msg.len());
        encode_call(header, mon, &mut out);
        out
    });
}

/// The server's SM_MON reply: `sm_stat_res` inside an accepted reply.
#[divan::bench]
fn encode_sm_mon_reply() -> Vec<u8> {
    let body = ReplyBody::Accepted(AcceptStat::Success(black_box(RESULT)));
    let mut out = Vec::with_capacity(reply_len(&body));
    encode_reply(black_box(XID), &body, &mut out);
    out
}

/// The client side of the reply: parse it and decode `sm_stat_res`.
#[divan::bench]
fn decode_sm_mon_reply(bencher: Bencher<'_, '_>) {
    let msg = sm_mon_reply();
    bencher.bench(|| {
        let reply = parse_reply(black_box(&msg)).expect("a valid reply");
        let ReplyBody::Accepted(AcceptStat::Success(results)) = reply.body else {
            panic!("not a success");
        };
        black_box((
            reply.xid,
            from_bytes::<SmStatRes>(results).expect("sm_stat_res"),
        ));
    });
}

/// The `mon` argument alone.
#[divan::bench]
fn decode_mon(bencher: Bencher<'_, '_>) {
    let args = mon().to_xdr();
    bencher.bench(|| from_bytes::<Mon<'_>>(black_box(&args)).expect("valid mon"));
}

/// The `mon` argument alone, into a buffer of the right size.
#[divan::bench]
fn encode_mon(bencher: Bencher<'_, '_>) {
    let mon = mon();
    bencher.bench(|| black_box(&mon).to_xdr());
}

/// One single-fragment TCP record holding the AUTH_NONE SM_MON call, as the server's
/// connection reads it (a fresh read buffer per iteration, not timed).
#[divan::bench]
fn record_decode_single_fragment(bencher: Bencher<'_, '_>) {
    let msg = sm_mon_call("auth_none");
    let mut wire = BytesMut::new();
    put_record_mark(&mut wire, msg.len());
    wire.extend_from_slice(&msg);
    bencher
        .with_inputs(|| (RecordCodec::default(), wire.clone()))
        .bench_local_refs(|(codec, src)| codec.decode(src).expect("a valid record"));
}

fn main() {
    // The benchmarks measure the success paths: check the fixtures once.
    for auth in AUTHS {
        let msg = sm_mon_call(auth);
        let call = parse_call(&msg).expect("a valid call");
        assert!(check_auth(&call.header.cred).is_ok());
        assert_eq!(from_bytes::<Mon<'_>>(call.args), Ok(mon()));
    }
    divan::main();
}

//! Every vector in `proto/vectors/` (real messages captured from Debian's rpcinfo, rpc.statd,
//! sm-notify and rpcbind; see `proto/README.md`): each CALL parses, re-encodes byte for byte,
//! and its arguments decode as the `.x` type of its procedure (or fail, for the deliberately
//! malformed ones); each REPLY parses, re-encodes byte for byte, and its results decode as the
//! type the matching call (same xid) expects.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use nsm_rpc::msg::{self, AcceptStat, AuthStat, CallError, RawXdr, ReplyBody};
use nsm_xdr::nsm::{SmStatRes, Status};
use nsm_xdr::rpcbind::{Mapping, PmapList, Rpcb, RpcbString};
use nsm_xdr::{Decode, Encode, XdrError, from_bytes};

struct Vector {
    name: String,
    call: bool,
    tcp_mark: Option<u32>,
    bytes: Vec<u8>,
}

fn load() -> Vec<Vector> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto/vectors");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "hex") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut call = None;
        let mut tcp_mark = None;
        let mut hex = String::new();
        for line in text.lines() {
            if let Some(c) = line.strip_prefix('#') {
                let c = c.trim();
                if let Some(m) = c.strip_prefix("message:") {
                    call = Some(m.trim() == "rpc call");
                } else if let Some(m) = c.strip_prefix("record-mark:") {
                    let m = m.split_whitespace().next().unwrap();
                    tcp_mark = Some(u32::from_str_radix(m, 16).unwrap());
                }
            } else {
                hex.extend(line.chars().filter(|c| !c.is_whitespace()));
            }
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        out.push(Vector {
            call: call.unwrap_or_else(|| panic!("{name}: no `# message:` line")),
            name,
            tcp_mark,
            bytes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(out.len() >= 80, "only {} vectors", out.len());
    out
}

/// Decodes `bytes` as a whole `T` and checks that re-encoding gives the same bytes.
fn exact<'a, T: Decode<'a> + Encode + std::fmt::Debug>(
    what: &str,
    bytes: &'a [u8],
) -> Result<T, XdrError> {
    let v = from_bytes::<T>(bytes)?;
    assert_eq!(v.to_xdr(), bytes, "{what}: {v:?} re-encodes differently");
    Ok(v)
}

/// What the arguments of a call decode as: Ok(type name) or the decode error.
fn decode_args(
    name: &str,
    prog: u32,
    vers: u32,
    proc_: u32,
    args: &[u8],
) -> Result<&'static str, XdrError> {
    use nsm_xdr::nsm::*;
    Ok(match (prog, vers, proc_) {
        (SM_PROG, 1, SM_NULL | SM_SIMU_CRASH) => exact::<()>(name, args).map(|()| "void")?,
        (SM_PROG, 1, SM_STAT) => exact::<SmName<'_>>(name, args).map(|_| "sm_name")?,
        (SM_PROG, 1, SM_MON) => exact::<Mon<'_>>(name, args).map(|_| "mon")?,
        (SM_PROG, 1, SM_UNMON) => exact::<MonId<'_>>(name, args).map(|_| "mon_id")?,
        (SM_PROG, 1, SM_UNMON_ALL) => exact::<MyId<'_>>(name, args).map(|_| "my_id")?,
        (SM_PROG, 1, SM_NOTIFY) => exact::<StatChge<'_>>(name, args).map(|_| "stat_chge")?,
        (SM_PROG, _, _) => "unserved",
        (NLM_PROG, _, NLMPROC_NSM_NOTIFY) => exact::<Status<'_>>(name, args).map(|_| "status")?,
        (100_000, 2, 1..=3) => exact::<Mapping>(name, args).map(|_| "mapping")?,
        (100_000, 2, 4) => exact::<()>(name, args).map(|()| "void")?,
        (100_000, 3 | 4, 1..=3) => exact::<Rpcb<'_>>(name, args).map(|_| "rpcb")?,
        _ => "unserved",
    })
}

/// Decodes the results of a reply to `call` (prog, vers, proc).
fn decode_results(name: &str, call: (u32, u32, u32), res: &[u8]) -> Result<String, XdrError> {
    use nsm_xdr::nsm::*;
    Ok(match call {
        (SM_PROG, 1, SM_STAT | SM_MON) => format!("{:?}", exact::<SmStatRes>(name, res)?),
        (SM_PROG, 1, SM_UNMON | SM_UNMON_ALL) => format!("{:?}", exact::<SmStat>(name, res)?),
        (SM_PROG, _, _) | (NLM_PROG, _, _) | (100_000, _, 0) => {
            exact::<()>(name, res)?;
            "void".into()
        }
        (100_000, 2, 1 | 2) | (100_000, 3 | 4, 1 | 2) => format!("{}", exact::<bool>(name, res)?),
        (100_000, 2, 3) => format!("port {}", exact::<u32>(name, res)?),
        (100_000, 2, 4) => format!("{} mappings", exact::<PmapList>(name, res)?.0.len()),
        (100_000, 3 | 4, 3) => format!("{}", exact::<RpcbString<'_>>(name, res)?),
        other => panic!("{name}: no result type for {other:?}"),
    })
}

/// Calls whose arguments are malformed on purpose.
fn malformed_args(name: &str) -> bool {
    ["truncated", "noargs", "-long-"]
        .iter()
        .any(|k| name.contains(k))
}

#[test]
fn every_captured_vector_decodes_and_reencodes_exactly() {
    let vectors = load();
    let mut calls: HashMap<u32, (u32, u32, u32)> = HashMap::new();
    let mut report = Vec::new();
    for v in vectors.iter().filter(|v| v.call) {
        let b = &v.bytes;
        if let Some(mark) = v.tcp_mark {
            assert_eq!(
                mark,
                0x8000_0000 | b.len() as u32,
                "{}: record mark",
                v.name
            );
        }
        match msg::parse_call(b) {
            Ok(c) => {
                let h = c.header;
                let mut again = Vec::new();
                msg::encode_call(&h, &RawXdr(c.args), &mut again);
                assert_eq!(&again, b, "{}: call re-encodes differently", v.name);
                calls.insert(h.xid, (h.prog, h.vers, h.proc_));
                let auth = msg::check_auth(&h.cred);
                if v.name.contains("auth-dh") {
                    assert_eq!(auth, Err(AuthStat::REJECTEDCRED), "{}", v.name);
                    continue;
                }
                assert!(auth.is_ok(), "{}: {auth:?}", v.name);
                let args = decode_args(&v.name, h.prog, h.vers, h.proc_, c.args);
                assert_eq!(
                    args.is_err(),
                    malformed_args(&v.name),
                    "{}: {args:?}",
                    v.name
                );
                report.push(format!(
                    "{:50} {}/{}/{} {:?}",
                    v.name, h.prog, h.vers, h.proc_, args
                ));
            }
            Err(e) => {
                // Only the RPC-version-3 call is not a valid call header.
                assert!(v.name.contains("rpcvers3"), "{}: {e}", v.name);
                assert!(
                    matches!(e, CallError::RpcVersion { rpcvers: 3, .. }),
                    "{}: {e}",
                    v.name
                );
            }
        }
    }
    let mut replies = 0;
    for v in vectors.iter().filter(|v| !v.call) {
        let r = msg::parse_reply(&v.bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let mut again = Vec::new();
        msg::encode_reply(r.xid, &r.body.clone().map(RawXdr), &mut again);
        assert_eq!(again, v.bytes, "{}: reply re-encodes differently", v.name);
        let call = *calls
            .get(&r.xid)
            .unwrap_or_else(|| panic!("{}: no call vector with xid {:#x}", v.name, r.xid));
        let what = match r.body {
            ReplyBody::Accepted(AcceptStat::Success(res)) => decode_results(&v.name, call, res)
                .unwrap_or_else(|e| panic!("{}: results of {call:?}: {e}", v.name)),
            other => format!("{other:?}"),
        };
        report.push(format!("{:50} -> {what}", v.name));
        replies += 1;
    }
    assert!(replies >= 40, "only {replies} replies");
    println!("{}", report.join("\n"));
}

/// Facts the vectors record about Debian's tools, checked so that they stay true of the files.
#[test]
fn debian_behaviour_recorded_in_the_vectors() {
    let vectors = load();
    let get = |n: &str| {
        &vectors
            .iter()
            .find(|v| v.name == n)
            .unwrap_or_else(|| panic!("{n}"))
            .bytes
    };
    // rpc.statd 2.6.2 answers a truncated SM_STAT over UDP with SUCCESS (stale buffer bytes).
    let r = msg::parse_reply(get("rpc.statd-sm-stat-truncated-reply")).unwrap();
    assert!(matches!(
        r.body,
        ReplyBody::Accepted(AcceptStat::Success(_))
    ));
    // Over TCP it answers GARBAGE_ARGS.
    let r = msg::parse_reply(get("rpc.statd-sm-stat-truncated-tcp-reply")).unwrap();
    assert_eq!(r.body, ReplyBody::Accepted(AcceptStat::GarbageArgs));
    // A non-local SM_MON gets {stat_fail, -1}.
    let r = msg::parse_reply(get("rpc.statd-sm-mon-nonlocal-reply")).unwrap();
    let ReplyBody::Accepted(AcceptStat::Success(res)) = r.body else {
        panic!()
    };
    assert_eq!(
        from_bytes::<SmStatRes>(res).unwrap(),
        SmStatRes {
            res_stat: nsm_xdr::nsm::Res::StatFail,
            state: -1
        }
    );
    // The lockd callback carries the SM_MON's mon_name, the notified state and the cookie.
    let c = msg::parse_call(get("rpc.statd-nlm-sm-notify-call")).unwrap();
    let st = from_bytes::<Status<'_>>(c.args).unwrap();
    assert_eq!(st.mon_name.as_bytes(), b"client1.example.test");
    assert_eq!(st.priv_, core::array::from_fn(|i| i as u8));
}

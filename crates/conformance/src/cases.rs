//! The cases: data (name, description, citation, needs) plus a check function each.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::target::{SEEDED_STATE, Target};
use crate::wire::{
    self, Callback, Reply, SM_PROG, call, call_auth, expect_accept_stat, mon_args, mon_id_args,
    my_id_args, opaque, parse_reply, record, sm_stat_res, stat_chge, success, tcp, tcp_connect,
    udp, xid,
};

/// What a case needs from the way the target is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Calls from the target's own host, to 127.0.0.1 (`--spawn` or `--local`).
    Local,
    /// Calls from another host (`--spawn`, or `--target` with a non-loopback address).
    Remote,
    /// The suite started the target: lockd stand-in, state directory, restarts (`--spawn`).
    Spawn,
}

/// One conformance case.
#[derive(Debug)]
pub(crate) struct Case {
    /// Dotted name, e.g. `rpc.null.udp`.
    pub(crate) name: &'static str,
    /// What is checked.
    pub(crate) desc: &'static str,
    /// The statement checked.
    pub(crate) cite: &'static str,
    /// What it needs; a case with unmet needs is skipped.
    pub(crate) needs: &'static [Need],
    /// With `--spawn`, restart the target after this case.
    pub(crate) disruptive: bool,
    /// The check.
    pub(crate) run: fn(&Target) -> Result<(), String>,
}

type R = Result<(), String>;

macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

const RFC5531_MSG: &str = "RFC 5531 §9 (rpc_msg, accepted_reply)";
const RFC5531_REC: &str = "RFC 5531 §11 (record marking)";
const RFC5531_AUTH: &str = "RFC 5531 §8.2, §9 (auth_stat), appendix A (AUTH_SYS)";
const RFC4506_STR: &str = "RFC 4506 §4.11 (string<max>) with sm_inter.x SM_MAXSTRLEN=1024";
const RFC1833: &str = "RFC 1833 §3.2 (PMAPPROC_GETPORT), §2.2.2 (RPCBPROC_GETADDR)";
const XNFS_MON: &str = "X/Open XNFS (C702) NSM: SM_MON";
const XNFS_UNMON: &str = "X/Open XNFS (C702) NSM: SM_UNMON, SM_UNMON_ALL";
const XNFS_NOTIFY: &str = "X/Open XNFS (C702) NSM: SM_NOTIFY; nfs-utils utils/statd/callback.c";
const NFSU_RESTRICT: &str =
    "nfs-utils RESTRICTED_STATD (CERT CA-99.05): MON/UNMON/UNMON_ALL only from 127.0.0.1";
const NFSU_CALLBACK: &str =
    "nfs-utils utils/statd/rmtcall.c: NLM callback status{mon_name, state, priv} to 127.0.0.1";
const NFSU_PATH: &str = "nfs-utils utils/statd/monitor.c (CERT CA-96.09): no '/' or leading '.'";

/// The lockd callback (program, version, procedure) the kernel registers.
const LOCKD: [u32; 3] = [wire::NLM_PROG, 3, 16];
const MY_NAME: &[u8] = b"nsm-conformance";
/// Every my_name the cases use (records are removed with SM_UNMON_ALL at the end).
const MY_NAMES: [&[u8]; 4] = [
    MY_NAME,
    b"nsm-conformance-ua",
    b"nsm-conformance-a",
    b"nsm-conformance-b",
];
const COOKIE: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
const NO_CALLBACK_WAIT: Duration = Duration::from_millis(1500);
const CALLBACK_WAIT: Duration = Duration::from_secs(5);

fn cookie(n: u8) -> [u8; 16] {
    let mut c = COOKIE;
    c[0] = n;
    c[15] = 0xa5 ^ n;
    c
}

/// Runs `f` against the target from wherever is available (another host first).
fn any<T: Send>(
    t: &Target,
    f: impl FnOnce(SocketAddr) -> Result<T, String> + Send,
) -> Result<T, String> {
    if t.has_remote() {
        t.remote_side(f)
    } else {
        t.local(f)
    }
}

fn send(to: SocketAddr, msg: &[u8], over_tcp: bool) -> Result<Option<Vec<u8>>, String> {
    if over_tcp { tcp(to, msg) } else { udp(to, msg) }
}

/// An NSM call that must succeed; returns the result words.
fn sm(to: SocketAddr, proc_: u32, args: &[u8], over_tcp: bool) -> Result<Vec<u32>, String> {
    let x = xid();
    success(x, send(to, &call(x, SM_PROG, 1, proc_, args), over_tcp)?)
}

fn stat(to: SocketAddr, name: &[u8]) -> Result<(u32, i32), String> {
    sm_stat_res(&sm(to, 1, &opaque(name), false)?)
}

fn mon_pvp(
    to: SocketAddr,
    name: &[u8],
    pvp: [u32; 3],
    c: [u8; 16],
    over_tcp: bool,
) -> Result<(u32, i32), String> {
    sm_stat_res(&sm(to, 2, &mon_args(name, MY_NAME, pvp, c), over_tcp)?)
}

fn mon(to: SocketAddr, name: &[u8], c: [u8; 16]) -> Result<(u32, i32), String> {
    mon_pvp(to, name, LOCKD, c, true)
}

fn one_word(w: &[u32], what: &str) -> Result<i32, String> {
    match w {
        [s] => Ok(*s as i32),
        _ => Err(format!("{what}: want sm_stat (1 word), got {w:?}")),
    }
}

fn notify(to: SocketAddr, name: &[u8], state: i32, over_tcp: bool) -> R {
    let w = sm(to, 6, &stat_chge(name, state), over_tcp)?;
    check!(w.is_empty(), "SM_NOTIFY: want a void result, got {w:?}");
    Ok(())
}

fn local_state(t: &Target) -> Result<i32, String> {
    let (_, s) = if t.has_local() {
        t.local(|a| stat(a, b"localhost"))?
    } else {
        any(t, |a| stat(a, b"localhost"))?
    };
    Ok(s)
}

/// A peer monitored from loopback with `c`; returns its name.
fn monitored(t: &Target, tag: &str, c: [u8; 16], pvp: [u32; 3]) -> Result<String, String> {
    let name = t.peer(tag)?;
    let state = local_state(t)?;
    let r = t.local(|a| mon_pvp(a, name.as_bytes(), pvp, c, true))?;
    check!(
        r == (0, state),
        "SM_MON {name}: want {{stat_succ, {state}}}, got {r:?}"
    );
    Ok(name)
}

/// Sends SM_NOTIFY for `name` with `state` from another host.
fn remote_notify(t: &Target, name: &str, state: i32) -> R {
    t.remote_side(|a| notify(a, name.as_bytes(), state, false))
}

fn one_callback(t: &Target, name: &str) -> Result<Callback, String> {
    let got = t.lockd()?.wait_for(name.as_bytes(), 1, CALLBACK_WAIT);
    match got.as_slice() {
        [c] => Ok(c.clone()),
        [] => Err(format!(
            "no lockd callback for {name} within {CALLBACK_WAIT:?} (callbacks seen: {:?})",
            t.lockd()?.all()
        )),
        more => Err(format!(
            "{} callbacks for {name}, want 1: {more:?}",
            more.len()
        )),
    }
}

fn no_callback(t: &Target, name: &str) -> R {
    std::thread::sleep(NO_CALLBACK_WAIT);
    let got = t.lockd()?.for_name(name.as_bytes());
    check!(
        got.is_empty(),
        "unexpected lockd callback(s) for {name}: {got:?}"
    );
    Ok(())
}

/// Monitors a new peer, notifies it from another host with `state`, returns the callback.
fn callback_scenario(
    t: &Target,
    tag: &str,
    c: [u8; 16],
    state: i32,
) -> Result<(String, Callback), String> {
    let name = monitored(t, tag, c, LOCKD)?;
    remote_notify(t, &name, state)?;
    Ok((name.clone(), one_callback(t, &name)?))
}

/// Every regular file of `sm/` in the spawned target's state directory, with contents.
fn sm_files(t: &Target) -> Result<Vec<(String, String)>, String> {
    let dir = t.state_dir()?.join("sm");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        let body = std::fs::read(e.path()).unwrap_or_default();
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    Ok(out)
}

/// A snapshot of every path under the state directory (spawned) to show nothing was written.
fn tree(t: &Target) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut stack = vec![t.state_dir()?];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| e.to_string())?.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// SM_MON of a refused name: stat_fail, state -1, and (spawned) nothing written.
fn mon_refused(t: &Target, names: &[&[u8]]) -> R {
    let before = if t.is_spawned() { Some(tree(t)?) } else { None };
    for n in names {
        let r = t.local(|a| mon(a, n, COOKIE))?;
        check!(
            r == (1, -1),
            "SM_MON {:?}: want {{stat_fail, -1}}, got {r:?}",
            n.escape_ascii().to_string()
        );
    }
    if let Some(b) = before {
        check!(
            tree(t)? == b,
            "a refused SM_MON changed the state directory"
        );
    }
    check!(
        !std::path::Path::new("/etc/conformance").exists(),
        "/etc/conformance was created"
    );
    Ok(())
}

fn null_ok(to: SocketAddr, over_tcp: bool) -> R {
    let w = sm(to, 0, &[], over_tcp)?;
    check!(w.is_empty(), "NULL: want a void result, got {w:?}");
    Ok(())
}

fn still_serves(t: &Target) -> R {
    any(t, |a| {
        null_ok(a, false).map_err(|e| format!("afterwards, NULL over UDP: {e}"))?;
        null_ok(a, true).map_err(|e| format!("afterwards, NULL over TCP: {e}"))
    })
}

/// A UDP socket on 127.0.0.1 with a privileged port (root in the target's network).
fn privileged_udp() -> Result<UdpSocket, String> {
    for p in (600..1000).rev() {
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p)) {
            return Ok(s);
        }
    }
    Err("no free privileged port on 127.0.0.1 (not root?)".into())
}

// ------------------------------------------------------------------------------------------
// RPC layer
// ------------------------------------------------------------------------------------------

fn rpc_null_udp(t: &Target) -> R {
    any(t, |a| null_ok(a, false))
}

fn rpc_null_tcp(t: &Target) -> R {
    any(t, |a| null_ok(a, true))
}

fn rpc_null_udp6(t: &Target) -> R {
    t.local6(|a| null_ok(a, false))
}

fn rpc_xid_echo(t: &Target) -> R {
    any(t, |a| {
        for x in [0u32, 0xffff_ffff, 0x8000_0001] {
            let r = udp(a, &call(x, SM_PROG, 1, 0, &[]))?.ok_or("no reply")?;
            check!(
                r.get(..4) == Some(&x.to_be_bytes()[..]),
                "xid {x:#x} not echoed: {r:02x?}"
            );
            parse_reply(x, &r)?;
        }
        Ok(())
    })
}

fn prog_mismatch(t: &Target, vers: u32) -> R {
    any(t, |a| {
        let x = xid();
        let r = udp(a, &call(x, SM_PROG, vers, 0, &[]))?.ok_or("no reply")?;
        let got = parse_reply(x, &r)?;
        check!(
            matches!(&got, Reply::Accepted(_, 2, w) if w.as_slice() == [1, 1]),
            "version {vers}: want PROG_MISMATCH {{low 1, high 1}}, got {got:?}"
        );
        Ok(())
    })
}

fn rpc_prog_mismatch(t: &Target) -> R {
    prog_mismatch(t, 2)
}

fn rpc_prog_mismatch_vers0(t: &Target) -> R {
    prog_mismatch(t, 0)
}

fn rpc_prog_unavail(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        expect_accept_stat(x, udp(a, &call(x, 100_025, 1, 0, &[]))?, 1)
    })
}

fn proc_unavail(t: &Target, p: u32) -> R {
    any(t, |a| {
        let x = xid();
        expect_accept_stat(x, udp(a, &call(x, SM_PROG, 1, p, &[]))?, 3)
    })
}

fn rpc_proc_unavail(t: &Target) -> R {
    proc_unavail(t, 7)
}

fn rpc_proc_unavail_max(t: &Target) -> R {
    proc_unavail(t, u32::MAX)
}

fn rpc_rpcvers_mismatch(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        let r = udp(a, &call_auth(x, 3, SM_PROG, 1, 0, (0, &[]), &[]))?
            .ok_or("no reply to an RPC version 3 call")?;
        let got = parse_reply(x, &r)?;
        check!(
            got == Reply::Denied(0, vec![2, 2]),
            "want MSG_DENIED RPC_MISMATCH {{low 2, high 2}}, got {got:?}"
        );
        Ok(())
    })
}

fn rpc_truncated_udp(t: &Target) -> R {
    any(t, |a| {
        // A valid call first, so an implementation decoding past the datagram sees its bytes.
        stat(a, b"localhost")?;
        let x = xid();
        let mut m = call(x, SM_PROG, 1, 1, &[]);
        wire::words(&mut m, &[9]);
        expect_accept_stat(x, udp(a, &m)?, 4)
    })
}

fn rpc_truncated_tcp(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        let mut m = call(x, SM_PROG, 1, 1, &[]);
        wire::words(&mut m, &[9]);
        expect_accept_stat(x, tcp(a, &m)?, 4)
    })
}

fn rpc_empty_tcp(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        expect_accept_stat(x, tcp(a, &call(x, SM_PROG, 1, 2, &[]))?, 4)
    })
}

fn rpc_oversized_string(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        expect_accept_stat(
            x,
            udp(a, &call(x, SM_PROG, 1, 1, &opaque(&[b'a'; 2000])))?,
            4,
        )
    })
}

fn rpc_multi_fragment(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        let m = call(x, SM_PROG, 1, 1, &opaque(b"localhost"));
        let mut s = tcp_connect(a)?;
        let cuts = [0, 10, 40, m.len()];
        for (i, w) in cuts.windows(2).enumerate() {
            let last = if i == cuts.len() - 2 { 0x8000_0000 } else { 0 };
            let mut frag = (last | (w[1] - w[0]) as u32).to_be_bytes().to_vec();
            frag.extend_from_slice(&m[w[0]..w[1]]);
            s.write_all(&frag).map_err(|e| e.to_string())?;
            s.flush().map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(50));
        }
        let w = success(x, wire::read_record(&mut s))?;
        sm_stat_res(&w).map(drop)
    })
}

fn rpc_connection_reuse(t: &Target) -> R {
    any(t, |a| {
        let mut s = tcp_connect(a)?;
        for i in 0..3 {
            let x = xid();
            s.write_all(&record(&call(x, SM_PROG, 1, 0, &[])))
                .map_err(|e| e.to_string())?;
            success(x, wire::read_record(&mut s)).map_err(|e| format!("call {i}: {e}"))?;
        }
        Ok(())
    })
}

fn rpc_auth_sys(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        let body = wire::authsys_body();
        let r = udp(
            a,
            &call_auth(x, 2, SM_PROG, 1, 1, (1, &body), &opaque(b"localhost")),
        )?
        .ok_or("no reply")?;
        match parse_reply(x, &r)? {
            Reply::Accepted(v, 0, w) if v == 0 || v == 2 => sm_stat_res(&w).map(drop),
            other => Err(format!(
                "AUTH_SYS call: want SUCCESS with AUTH_NONE/SHORT verifier, got {other:?}"
            )),
        }
    })
}

fn rpc_auth_unknown(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        let r = udp(a, &call_auth(x, 2, SM_PROG, 1, 0, (3, &[0; 8]), &[]))?
            .ok_or("no reply to a call with credential flavor 3")?;
        let got = parse_reply(x, &r)?;
        check!(
            matches!(&got, Reply::Denied(1, w) if w.len() == 1 && (1..=7).contains(&w[0])),
            "want MSG_DENIED AUTH_ERROR, got {got:?}"
        );
        Ok(())
    })
}

fn rpc_reply_ignored(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        let mut m = Vec::new();
        wire::words(&mut m, &[x, 1, 0, 0, 0, 0]);
        let r = wire::udp_wait(a, &m, Duration::from_millis(1500))?;
        check!(r.is_none(), "a REPLY message was answered: {r:02x?}");
        null_ok(a, false)
    })
}

// ------------------------------------------------------------------------------------------
// rpcbind
// ------------------------------------------------------------------------------------------

fn rpcbind_pmap(t: &Target, prot: u32) -> R {
    let port = t.port;
    t.rpcbind(|rb| {
        let p = wire::pmap_getport(rb, SM_PROG, 1, prot)?;
        check!(
            p == port,
            "GETPORT(100024, 1, {prot}) = {p}, the target serves on {port}"
        );
        Ok(())
    })
}

fn rpcbind_pmap_udp(t: &Target) -> R {
    rpcbind_pmap(t, 17)
}

fn rpcbind_pmap_tcp(t: &Target) -> R {
    rpcbind_pmap(t, 6)
}

fn rpcbind_getaddr(t: &Target) -> R {
    let port = t.port;
    t.rpcbind(|rb| {
        let p = wire::rpcb_getaddr(rb, SM_PROG, 1, "udp")?;
        check!(
            p == Some(port),
            "RPCB GETADDR(100024, 1, udp): port {p:?}, want {port}"
        );
        Ok(())
    })
}

fn rpcbind_unset_on_exit(t: &Target) -> R {
    t.stop()?;
    t.rpcbind(|rb| {
        let p = wire::pmap_getport(rb, SM_PROG, 1, 17)?;
        check!(
            p == 0,
            "after SIGTERM, 100024 is still registered (port {p})"
        );
        Ok(())
    })
}

// ------------------------------------------------------------------------------------------
// SM_STAT
// ------------------------------------------------------------------------------------------

fn stat_localhost(t: &Target) -> R {
    let f = |a| {
        let (res, state) = stat(a, b"localhost")?;
        check!(
            res == 0,
            "SM_STAT localhost: res_stat {res}, want stat_succ"
        );
        check!(state % 2 == 1, "state {state} is even while the NSM is up");
        Ok(())
    };
    if t.has_local() { t.local(f) } else { any(t, f) }
}

fn stat_remote(t: &Target) -> R {
    t.remote_side(|a| stat(a, b"localhost").map(drop))
}

fn stat_state_consistent(t: &Target) -> R {
    let s = local_state(t)?;
    let name = t.peer("stat-consistent")?;
    t.local(|a| {
        let (_, bad) = stat(a, b"no-such-host.invalid")?;
        check!(
            bad == s,
            "SM_STAT of an unknown name: state {bad}, want the local state {s}"
        );
        let m = mon(a, name.as_bytes(), COOKIE)?;
        check!(m == (0, s), "SM_MON: {m:?}, want {{stat_succ, {s}}}");
        let u = one_word(
            &sm(a, 3, &mon_id_args(name.as_bytes(), MY_NAME, LOCKD), true)?,
            "SM_UNMON",
        )?;
        check!(u == s, "SM_UNMON: state {u}, want {s}");
        Ok(())
    })
}

fn persist_state_from_dir(t: &Target) -> R {
    let s = local_state(t)?;
    check!(
        s == SEEDED_STATE,
        "state {s}; the state file of the state directory holds {SEEDED_STATE}"
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// SM_MON
// ------------------------------------------------------------------------------------------

fn mon_udp(t: &Target) -> R {
    let s = local_state(t)?;
    let name = t.peer("mon-udp")?;
    let r = t.local(|a| mon_pvp(a, name.as_bytes(), LOCKD, COOKIE, false))?;
    check!(
        r == (0, s),
        "SM_MON over UDP: {r:?}, want {{stat_succ, {s}}}"
    );
    Ok(())
}

fn mon_tcp(t: &Target) -> R {
    monitored(t, "mon-tcp", COOKIE, LOCKD).map(drop)
}

fn mon_remote_refused(t: &Target) -> R {
    let name = t.peer("mon-remote")?;
    let r = t.remote_side(|a| mon(a, name.as_bytes(), COOKIE))?;
    check!(
        r == (1, -1),
        "SM_MON from another host: {r:?}, want {{stat_fail, -1}}"
    );
    if t.is_spawned() {
        remote_notify(t, &name, 41)?;
        no_callback(t, &name)?;
    }
    Ok(())
}

fn mon_duplicate(t: &Target) -> R {
    let name = monitored(t, "mon-dup", COOKIE, LOCKD)?;
    let s = local_state(t)?;
    let r = t.local(|a| mon(a, name.as_bytes(), COOKIE))?;
    check!(
        r == (0, s),
        "repeated SM_MON: {r:?}, want {{stat_succ, {s}}}"
    );
    if t.is_spawned() {
        remote_notify(t, &name, 43)?;
        one_callback(t, &name)?;
    }
    Ok(())
}

fn mon_bad_prog(t: &Target) -> R {
    let name = t.peer("mon-prog")?;
    let r = t.local(|a| mon_pvp(a, name.as_bytes(), [100_005, 3, 16], COOKIE, true))?;
    check!(
        r == (1, -1),
        "SM_MON with callback program 100005: {r:?}, want {{stat_fail, -1}}"
    );
    Ok(())
}

fn mon_bad_proc(t: &Target) -> R {
    let name = t.peer("mon-proc")?;
    let r = t.local(|a| mon_pvp(a, name.as_bytes(), [wire::NLM_PROG, 3, 1], COOKIE, true))?;
    check!(
        r == (1, -1),
        "SM_MON with callback procedure 1: {r:?}, want {{stat_fail, -1}}"
    );
    Ok(())
}

fn mon_slash(t: &Target) -> R {
    mon_refused(t, &[b"a/b", b"conformance/x"])
}

fn mon_dot(t: &Target) -> R {
    mon_refused(t, &[b".hidden", b"..", b"."])
}

fn mon_traversal(t: &Target) -> R {
    mon_refused(t, &[b"../../../../etc/conformance", b"../sm.bak"])
}

fn mon_record_on_disk(t: &Target) -> R {
    let c = cookie(0x3d);
    let name = monitored(t, "mon-disk", c, LOCKD)?;
    let hex: String = c.iter().map(|b| format!("{b:02x}")).collect();
    let files = sm_files(t)?;
    let hit = files.iter().any(|(_, body)| {
        body.lines()
            .any(|l| l.contains(&hex) && l.contains(name.as_str()))
    });
    check!(
        hit,
        "after SM_MON {name}, no line in sm/ holds its cookie {hex}: {files:?}"
    );
    Ok(())
}

fn mon_oversized(t: &Target, mon_name: &[u8], my_name: &[u8]) -> R {
    let f = |a| {
        let x = xid();
        let m = call(
            x,
            SM_PROG,
            1,
            2,
            &mon_args(mon_name, my_name, LOCKD, COOKIE),
        );
        expect_accept_stat(x, tcp(a, &m)?, 4)
    };
    if t.has_local() { t.local(f) } else { any(t, f) }
}

fn mon_oversized_name(t: &Target) -> R {
    mon_oversized(t, &[b'a'; 1025], MY_NAME)
}

fn mon_oversized_my_name(t: &Target) -> R {
    mon_oversized(t, b"peer", &[b'a'; 1025])
}

// ------------------------------------------------------------------------------------------
// SM_UNMON, SM_UNMON_ALL
// ------------------------------------------------------------------------------------------

fn unmon_state(t: &Target) -> R {
    let s = local_state(t)?;
    let name = t.peer("unmon-none")?;
    let u = t.local(|a| sm(a, 3, &mon_id_args(name.as_bytes(), MY_NAME, LOCKD), true))?;
    let u = one_word(&u, "SM_UNMON")?;
    check!(
        u == s,
        "SM_UNMON of an unmonitored host: state {u}, want {s}"
    );
    Ok(())
}

fn unmon_stops(t: &Target) -> R {
    let name = monitored(t, "unmon", COOKIE, LOCKD)?;
    t.local(|a| sm(a, 3, &mon_id_args(name.as_bytes(), MY_NAME, LOCKD), true))?;
    remote_notify(t, &name, 45)?;
    no_callback(t, &name)
}

fn unmon_remote_ignored(t: &Target) -> R {
    let name = monitored(t, "unmon-remote", cookie(0x47), LOCKD)?;
    t.remote_side(|a| sm(a, 3, &mon_id_args(name.as_bytes(), MY_NAME, LOCKD), false))?;
    remote_notify(t, &name, 47)?;
    let cb = one_callback(t, &name)?;
    check!(
        cb.status.is_some_and(|s| s.2 == cookie(0x47)),
        "callback with a wrong cookie"
    );
    Ok(())
}

fn unmon_all_stops(t: &Target) -> R {
    let my = MY_NAMES[1];
    let (a, b) = (t.peer("unmon-all-a")?, t.peer("unmon-all-b")?);
    let s = local_state(t)?;
    t.local(|to| {
        for n in [&a, &b] {
            let r = sm_stat_res(&sm(
                to,
                2,
                &mon_args(n.as_bytes(), my, LOCKD, COOKIE),
                true,
            )?)?;
            check!(r == (0, s), "SM_MON {n}: {r:?}");
        }
        let u = one_word(&sm(to, 4, &my_id_args(my, LOCKD), true)?, "SM_UNMON_ALL")?;
        check!(u == s, "SM_UNMON_ALL: state {u}, want {s}");
        Ok(())
    })?;
    remote_notify(t, &a, 49)?;
    remote_notify(t, &b, 49)?;
    no_callback(t, &a)?;
    no_callback(t, &b)
}

fn unmon_all_remote_ignored(t: &Target) -> R {
    let name = monitored(t, "unmon-all-remote", COOKIE, LOCKD)?;
    t.remote_side(|a| sm(a, 4, &my_id_args(MY_NAME, LOCKD), false))?;
    remote_notify(t, &name, 51)?;
    one_callback(t, &name).map(drop)
}

// ------------------------------------------------------------------------------------------
// SM_NOTIFY and the lockd callback
// ------------------------------------------------------------------------------------------

fn notify_void(t: &Target) -> R {
    let name = t.peer("notify-unknown")?;
    any(t, |a| notify(a, name.as_bytes(), 3, false))
}

fn notify_tcp(t: &Target) -> R {
    let name = t.peer("notify-tcp")?;
    any(t, |a| notify(a, name.as_bytes(), 3, true))
}

fn notify_oversized(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        expect_accept_stat(
            x,
            udp(a, &call(x, SM_PROG, 1, 6, &stat_chge(&[b'n'; 1100], 3)))?,
            4,
        )
    })
}

fn notify_callback(t: &Target) -> R {
    let (_, cb) = callback_scenario(t, "cb", COOKIE, 53)?;
    check!(
        cb.proc_ == 16 && cb.vers == 3,
        "callback to NLM version {} procedure {}, want 3/16",
        cb.vers,
        cb.proc_
    );
    Ok(())
}

fn notify_callback_mon_name(t: &Target) -> R {
    let (name, cb) = callback_scenario(t, "cb-name", COOKIE, 55)?;
    let got = cb.status.map(|s| s.0).unwrap_or_default();
    check!(
        got == name.as_bytes(),
        "callback mon_name {:?}, want {name:?}",
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

fn notify_callback_state(t: &Target) -> R {
    let (_, cb) = callback_scenario(t, "cb-state", COOKIE, 57)?;
    let got = cb
        .status
        .ok_or("callback arguments are not a struct status")?
        .1;
    check!(
        got == 57,
        "callback state {got}, want 57 (the state the SM_NOTIFY announced)"
    );
    Ok(())
}

fn notify_callback_cookie(t: &Target) -> R {
    let c = cookie(0xc0);
    let (_, cb) = callback_scenario(t, "cb-cookie", c, 59)?;
    let got = cb
        .status
        .ok_or("callback arguments are not a struct status")?
        .2;
    check!(
        got == c,
        "callback priv {got:02x?}, want the SM_MON's {c:02x?}"
    );
    Ok(())
}

fn notify_callback_source(t: &Target) -> R {
    let (_, cb) = callback_scenario(t, "cb-source", COOKIE, 61)?;
    check!(
        cb.from.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) && cb.from.port() < 1024,
        "callback from {}, want 127.0.0.1 and a privileged port (lockd refuses others)",
        cb.from
    );
    Ok(())
}

fn notify_callback_no_duplicate(t: &Target) -> R {
    let (name, _) = callback_scenario(t, "cb-dup", COOKIE, 63)?;
    remote_notify(t, &name, 63)?;
    no_callback_beyond(t, &name, 1)?;
    remote_notify(t, &name, 65)?;
    let got = t.lockd()?.wait_for(name.as_bytes(), 2, CALLBACK_WAIT);
    check!(
        got.len() == 2,
        "after a new state 65: {} callbacks, want 2: {got:?}",
        got.len()
    );
    check!(
        got[1].status.as_ref().is_some_and(|s| s.1 == 65),
        "second callback: {:?}",
        got[1]
    );
    Ok(())
}

fn no_callback_beyond(t: &Target, name: &str, n: usize) -> R {
    std::thread::sleep(NO_CALLBACK_WAIT);
    let got = t.lockd()?.for_name(name.as_bytes());
    check!(
        got.len() == n,
        "repeated state: {} callbacks for {name}, want {n}: {got:?}",
        got.len()
    );
    Ok(())
}

fn notify_callback_version(t: &Target) -> R {
    let name = monitored(t, "cb-v4", COOKIE, [wire::NLM_PROG, 4, 16])?;
    remote_notify(t, &name, 67)?;
    let cb = one_callback(t, &name)?;
    check!(
        cb.vers == 4 && cb.proc_ == 16,
        "callback to NLM {}/{}, want the record's 4/16",
        cb.vers,
        cb.proc_
    );
    Ok(())
}

fn notify_callback_two_records(t: &Target) -> R {
    let name = t.peer("cb-two")?;
    let s = local_state(t)?;
    let (c1, c2) = (cookie(0x71), cookie(0x72));
    t.local(|a| {
        for (my, c) in [(MY_NAMES[2], c1), (MY_NAMES[3], c2)] {
            let r = sm_stat_res(&sm(a, 2, &mon_args(name.as_bytes(), my, LOCKD, c), true)?)?;
            check!(r == (0, s), "SM_MON: {r:?}");
        }
        Ok(())
    })?;
    remote_notify(t, &name, 69)?;
    let got = t.lockd()?.wait_for(name.as_bytes(), 2, CALLBACK_WAIT);
    let mut cookies: Vec<[u8; 16]> = got
        .iter()
        .filter_map(|c| c.status.as_ref().map(|s| s.2))
        .collect();
    cookies.sort();
    check!(
        cookies == [c1, c2],
        "want one callback per record with its cookie, got {got:?}"
    );
    Ok(())
}

fn notify_unmonitored(t: &Target) -> R {
    let name = t.peer("cb-unknown")?;
    remote_notify(t, &name, 71)?;
    no_callback(t, &name)
}

fn notify_case_insensitive(t: &Target) -> R {
    let name = monitored(t, "cb-case", COOKIE, LOCKD)?;
    remote_notify(t, &name.to_ascii_uppercase(), 73)?;
    one_callback(t, &name).map(drop)
}

// ------------------------------------------------------------------------------------------
// SM_SIMU_CRASH
// ------------------------------------------------------------------------------------------

fn simu_crash_unprivileged(t: &Target) -> R {
    let s = local_state(t)?;
    let name = if t.is_spawned() {
        Some(monitored(t, "simu-unpriv", COOKIE, LOCKD)?)
    } else {
        None
    };
    t.local(|a| {
        let w = sm(a, 5, &[], false)?;
        check!(w.is_empty(), "SM_SIMU_CRASH: want void, got {w:?}");
        Ok(())
    })?;
    let s2 = local_state(t)?;
    check!(
        s2 == s,
        "SM_SIMU_CRASH from an unprivileged port changed the state {s} -> {s2}"
    );
    if let Some(name) = name {
        remote_notify(t, &name, 75)?;
        one_callback(t, &name)?;
    }
    Ok(())
}

fn simu_crash_with_records(t: &Target) -> R {
    monitored(t, "simu", COOKIE, LOCKD)?;
    t.local(|a| {
        let sock = privileged_udp()?;
        sock.set_read_timeout(Some(wire::REPLY_WAIT))
            .map_err(|e| e.to_string())?;
        let x = xid();
        sock.send_to(&call(x, SM_PROG, 1, 5, &[]), a)
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1024];
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("no reply to SM_SIMU_CRASH: {e}"))?;
        let w = success(x, Some(buf[..n].to_vec()))?;
        check!(w.is_empty(), "SM_SIMU_CRASH: want void, got {w:?}");
        Ok(())
    })?;
    check!(t.alive(), "the target exited:\n{}", t.log_tail());
    still_serves(t)
}

// ------------------------------------------------------------------------------------------
// Robustness
// ------------------------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn robust_garbage_udp(t: &Target) -> R {
    any(t, |a| {
        let s = UdpSocket::bind(SocketAddr::new(
            if a.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            },
            0,
        ))
        .map_err(|e| e.to_string())?;
        let mut g = XorShift(0x9e37_79b9_7f4a_7c15);
        for i in 0..300 {
            let n = (g.next() % 200) as usize;
            let mut m = g.bytes(n);
            // Half of them look like NSM calls with random bodies.
            if i % 2 == 0 && n >= 24 {
                let hdr = call(g.next() as u32, SM_PROG, 1, (g.next() % 8) as u32, &[]);
                m[..24].copy_from_slice(&hdr[..24]);
            }
            let _ = s.send_to(&m, a);
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(300));
    still_serves(t)
}

fn robust_garbage_tcp(t: &Target) -> R {
    any(t, |a| {
        let mut g = XorShift(0x1234_5678_9abc_def1);
        for _ in 0..20 {
            if let Ok(mut s) = tcp_connect(a) {
                let _ = s.write_all(&g.bytes(300));
            }
        }
        Ok(())
    })?;
    still_serves(t)
}

fn robust_slow_client(t: &Target) -> R {
    any(t, |a| {
        let mut slow = tcp_connect(a)?;
        let m = record(&call(xid(), SM_PROG, 1, 0, &[]));
        slow.write_all(&m[..10]).map_err(|e| e.to_string())?;
        let started = Instant::now();
        null_ok(a, true).map_err(|e| format!("while a TCP client stalls mid-record: {e}"))?;
        null_ok(a, false).map_err(|e| format!("while a TCP client stalls mid-record: {e}"))?;
        check!(
            started.elapsed() < Duration::from_secs(2),
            "answers took {:?}",
            started.elapsed()
        );
        drop(slow);
        Ok(())
    })
}

fn robust_many_connections(t: &Target) -> R {
    any(t, |a| {
        let mut conns = Vec::new();
        for _ in 0..100 {
            conns.push(tcp_connect(a)?);
        }
        null_ok(a, true).map_err(|e| format!("with 100 idle connections open: {e}"))?;
        null_ok(a, false)?;
        // The oldest connection still works.
        let x = xid();
        let s = conns.first_mut().ok_or("no connection")?;
        s.write_all(&record(&call(x, SM_PROG, 1, 0, &[])))
            .map_err(|e| e.to_string())?;
        success(x, wire::read_record(s)).map_err(|e| format!("first of 100 connections: {e}"))?;
        Ok(())
    })
}

fn robust_huge_fragment(t: &Target) -> R {
    any(t, |a| {
        let mut s = tcp_connect(a)?;
        let mut m = 0xffff_fff0u32.to_be_bytes().to_vec();
        m.extend_from_slice(&call(xid(), SM_PROG, 1, 0, &[]));
        s.write_all(&m).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        Ok(())
    })?;
    still_serves(t)
}

fn robust_big_datagram(t: &Target) -> R {
    any(t, |a| {
        let x = xid();
        let mut m = call(x, SM_PROG, 1, 1, &opaque(b"localhost"));
        m.resize(60_000, 0x41);
        let _ = udp(a, &m)?;
        Ok(())
    })?;
    still_serves(t)
}

// ------------------------------------------------------------------------------------------
// Persistence
// ------------------------------------------------------------------------------------------

fn persist_records(t: &Target) -> R {
    let c = cookie(0x99);
    let name = monitored(t, "persist", c, LOCKD)?;
    t.restart()?;
    remote_notify(t, &name, 77)?;
    let cb = one_callback(t, &name)?;
    check!(
        cb.status.is_some_and(|s| s.2 == c),
        "callback after restart with a wrong cookie"
    );
    Ok(())
}

fn persist_state(t: &Target) -> R {
    let before = local_state(t)?;
    t.restart()?;
    let after = local_state(t)?;
    check!(
        after >= before,
        "state went back from {before} to {after} across a restart"
    );
    check!(after % 2 == 1, "state {after} is even after a restart");
    Ok(())
}

/// Against a running statd with loopback access, removes every record the cases made
/// (SM_UNMON_ALL for the suite's my_names), so a production statd keeps none of them.
pub(crate) fn cleanup(t: &Target) -> R {
    if t.is_spawned() || !t.has_local() {
        return Ok(());
    }
    t.local(|a| {
        for my in MY_NAMES {
            for vers in [3, 4] {
                sm(a, 4, &my_id_args(my, [wire::NLM_PROG, vers, 16]), true)?;
            }
        }
        Ok(())
    })
}

use Need::{Local, Remote, Spawn};

macro_rules! case {
    ($name:literal, $run:ident, $needs:expr, $cite:expr, $desc:literal) => {
        Case {
            name: $name,
            desc: $desc,
            cite: $cite,
            needs: $needs,
            disruptive: false,
            run: $run,
        }
    };
    ($name:literal, $run:ident, $needs:expr, $cite:expr, $desc:literal, disruptive) => {
        Case {
            name: $name,
            desc: $desc,
            cite: $cite,
            needs: $needs,
            disruptive: true,
            run: $run,
        }
    };
}

/// Every case, in the order they run.
pub(crate) fn all() -> Vec<Case> {
    vec![
        case!(
            "state.from-state-directory",
            persist_state_from_dir,
            &[Spawn],
            "nfs-utils support/nsm/file.c (nsm_get_state): the state file, a native int",
            "the state number comes from the state directory's `state` file"
        ),
        case!(
            "rpc.null.udp",
            rpc_null_udp,
            &[],
            RFC5531_MSG,
            "NULL over UDP answers SUCCESS, void"
        ),
        case!(
            "rpc.null.tcp",
            rpc_null_tcp,
            &[],
            RFC5531_REC,
            "NULL over TCP answers SUCCESS, void"
        ),
        case!(
            "rpc.null.udp6",
            rpc_null_udp6,
            &[Local],
            "nfs-utils support/nfs/svc_create.c: udp6 listener",
            "NULL over UDP to ::1"
        ),
        case!(
            "rpc.xid-echo",
            rpc_xid_echo,
            &[],
            "RFC 5531 §9: the reply carries the call's xid",
            "replies echo xids 0, 0xffffffff, 0x80000001"
        ),
        case!(
            "rpc.prog-mismatch",
            rpc_prog_mismatch,
            &[],
            RFC5531_MSG,
            "version 2 of 100024 gets PROG_MISMATCH {low 1, high 1}"
        ),
        case!(
            "rpc.prog-mismatch.vers0",
            rpc_prog_mismatch_vers0,
            &[],
            RFC5531_MSG,
            "version 0 of 100024 gets PROG_MISMATCH {low 1, high 1}"
        ),
        case!(
            "rpc.prog-unavail",
            rpc_prog_unavail,
            &[],
            RFC5531_MSG,
            "program 100025 gets PROG_UNAVAIL"
        ),
        case!(
            "rpc.proc-unavail",
            rpc_proc_unavail,
            &[],
            RFC5531_MSG,
            "procedure 7 gets PROC_UNAVAIL"
        ),
        case!(
            "rpc.proc-unavail.max",
            rpc_proc_unavail_max,
            &[],
            RFC5531_MSG,
            "procedure 0xffffffff gets PROC_UNAVAIL"
        ),
        case!(
            "rpc.rpcvers-mismatch",
            rpc_rpcvers_mismatch,
            &[],
            "RFC 5531 §9 (rejected_reply RPC_MISMATCH)",
            "RPC version 3 gets MSG_DENIED RPC_MISMATCH {low 2, high 2}"
        ),
        case!(
            "rpc.garbage-args.truncated.udp",
            rpc_truncated_udp,
            &[],
            RFC5531_MSG,
            "SM_STAT whose string stops after its length word (UDP) gets GARBAGE_ARGS"
        ),
        case!(
            "rpc.garbage-args.truncated.tcp",
            rpc_truncated_tcp,
            &[],
            RFC5531_MSG,
            "SM_STAT whose string stops after its length word (TCP) gets GARBAGE_ARGS"
        ),
        case!(
            "rpc.garbage-args.empty.tcp",
            rpc_empty_tcp,
            &[],
            RFC5531_MSG,
            "SM_MON without arguments (TCP) gets GARBAGE_ARGS"
        ),
        case!(
            "rpc.garbage-args.oversized-string",
            rpc_oversized_string,
            &[],
            RFC4506_STR,
            "SM_STAT with a 2000-byte name gets GARBAGE_ARGS"
        ),
        case!(
            "rpc.tcp.multi-fragment",
            rpc_multi_fragment,
            &[],
            RFC5531_REC,
            "a call in three record fragments, sent apart, is answered"
        ),
        case!(
            "rpc.tcp.connection-reuse",
            rpc_connection_reuse,
            &[],
            RFC5531_REC,
            "three calls in turn on one TCP connection are answered"
        ),
        case!(
            "rpc.auth.sys",
            rpc_auth_sys,
            &[],
            RFC5531_AUTH,
            "an AUTH_SYS call is served; the verifier is AUTH_NONE or AUTH_SHORT"
        ),
        case!(
            "rpc.auth.unknown-flavor",
            rpc_auth_unknown,
            &[],
            RFC5531_AUTH,
            "credential flavor 3 (AUTH_DH) gets MSG_DENIED AUTH_ERROR"
        ),
        case!(
            "rpc.reply-ignored",
            rpc_reply_ignored,
            &[],
            "RFC 5531 §9 (msg_type): a server answers CALLs only",
            "a REPLY message sent to the server is not answered"
        ),
        case!(
            "rpcbind.pmap.udp",
            rpcbind_pmap_udp,
            &[],
            RFC1833,
            "rpcbind maps (100024, 1, UDP) to the target's port"
        ),
        case!(
            "rpcbind.pmap.tcp",
            rpcbind_pmap_tcp,
            &[],
            RFC1833,
            "rpcbind maps (100024, 1, TCP) to the target's port"
        ),
        case!(
            "rpcbind.getaddr",
            rpcbind_getaddr,
            &[],
            RFC1833,
            "RPCB v3 GETADDR (100024, 1, udp) gives the target's port"
        ),
        case!(
            "stat.localhost",
            stat_localhost,
            &[],
            "X/Open XNFS NSM: SM_STAT; state odd while up",
            "SM_STAT localhost answers stat_succ and an odd state"
        ),
        case!(
            "stat.remote-allowed",
            stat_remote,
            &[Remote],
            "nfs-utils utils/statd/stat.c: any caller",
            "SM_STAT from another host is answered"
        ),
        case!(
            "stat.state-consistent",
            stat_state_consistent,
            &[Local],
            "nfs-utils stat.c, monitor.c: replies carry the local state",
            "SM_STAT (also for an unknown name), SM_MON and SM_UNMON return the same local state"
        ),
        case!(
            "mon.loopback.udp",
            mon_udp,
            &[Local],
            XNFS_MON,
            "SM_MON from 127.0.0.1 over UDP succeeds"
        ),
        case!(
            "mon.loopback.tcp",
            mon_tcp,
            &[Local],
            "Linux fs/lockd/mon.c: lockd's SM_MON is TCP to 127.0.0.1",
            "SM_MON from 127.0.0.1 over TCP succeeds with the local state"
        ),
        case!(
            "mon.remote-refused",
            mon_remote_refused,
            &[Remote],
            NFSU_RESTRICT,
            "SM_MON from another host gets {stat_fail, -1} and is not recorded"
        ),
        case!(
            "mon.duplicate",
            mon_duplicate,
            &[Local],
            "nfs-utils monitor.c: duplicate SM_MON succeeds",
            "a repeated SM_MON succeeds and leaves one record"
        ),
        case!(
            "mon.callback-prog",
            mon_bad_prog,
            &[Local],
            NFSU_RESTRICT,
            "SM_MON with callback program 100005 (not lockd) is refused"
        ),
        case!(
            "mon.callback-proc",
            mon_bad_proc,
            &[Local],
            NFSU_RESTRICT,
            "SM_MON with callback procedure 1 (not 16/24) is refused"
        ),
        case!(
            "mon.name.slash",
            mon_slash,
            &[Local],
            NFSU_PATH,
            "mon_name with '/' is refused, nothing written"
        ),
        case!(
            "mon.name.dot",
            mon_dot,
            &[Local],
            NFSU_PATH,
            "mon_name '.hidden', '..', '.' are refused"
        ),
        case!(
            "mon.name.traversal",
            mon_traversal,
            &[Local],
            NFSU_PATH,
            "mon_name '../../../../etc/conformance' is refused, nothing written"
        ),
        case!(
            "mon.record-on-disk",
            mon_record_on_disk,
            &[Spawn],
            "nfs-utils support/nsm/file.c: a record line in sm/ with the cookie",
            "after SM_MON, sm/ holds a line with the mon_name and the cookie"
        ),
        case!(
            "mon.oversized-name",
            mon_oversized_name,
            &[],
            RFC4506_STR,
            "SM_MON with a 1025-byte mon_name gets GARBAGE_ARGS"
        ),
        case!(
            "mon.oversized-my-name",
            mon_oversized_my_name,
            &[],
            RFC4506_STR,
            "SM_MON with a 1025-byte my_name gets GARBAGE_ARGS"
        ),
        case!(
            "unmon.state",
            unmon_state,
            &[Local],
            XNFS_UNMON,
            "SM_UNMON of an unmonitored host answers the local state"
        ),
        case!(
            "unmon.stops-callbacks",
            unmon_stops,
            &[Spawn],
            XNFS_UNMON,
            "after SM_UNMON, an SM_NOTIFY for the host calls lockd no more"
        ),
        case!(
            "unmon.remote-ignored",
            unmon_remote_ignored,
            &[Spawn],
            NFSU_RESTRICT,
            "SM_UNMON from another host leaves the record: the callback still comes"
        ),
        case!(
            "unmon-all.stops-callbacks",
            unmon_all_stops,
            &[Spawn],
            XNFS_UNMON,
            "SM_UNMON_ALL removes every record of my_name: no callbacks"
        ),
        case!(
            "unmon-all.remote-ignored",
            unmon_all_remote_ignored,
            &[Spawn],
            NFSU_RESTRICT,
            "SM_UNMON_ALL from another host removes nothing"
        ),
        case!(
            "notify.void",
            notify_void,
            &[],
            XNFS_NOTIFY,
            "SM_NOTIFY for an unknown host answers void"
        ),
        case!(
            "notify.tcp",
            notify_tcp,
            &[],
            XNFS_NOTIFY,
            "SM_NOTIFY over TCP answers void"
        ),
        case!(
            "notify.oversized-name",
            notify_oversized,
            &[],
            RFC4506_STR,
            "SM_NOTIFY with a 1100-byte mon_name gets GARBAGE_ARGS"
        ),
        case!(
            "notify.callback",
            notify_callback,
            &[Spawn],
            NFSU_CALLBACK,
            "SM_NOTIFY for a monitored host calls lockd (100021 v3 proc 16)"
        ),
        case!(
            "notify.callback.mon-name",
            notify_callback_mon_name,
            &[Spawn],
            NFSU_CALLBACK,
            "the callback carries the SM_MON's mon_name"
        ),
        case!(
            "notify.callback.state",
            notify_callback_state,
            &[Spawn],
            NFSU_CALLBACK,
            "the callback carries the notified state"
        ),
        case!(
            "notify.callback.cookie",
            notify_callback_cookie,
            &[Spawn],
            NFSU_CALLBACK,
            "the callback carries the SM_MON's 16-byte cookie exactly"
        ),
        case!(
            "notify.callback.loopback-privileged",
            notify_callback_source,
            &[Spawn],
            "nfs-utils rmtcall.c; Linux lockd nlm_privileged_requester",
            "the callback comes from 127.0.0.1 and a port below 1024"
        ),
        case!(
            "notify.callback.no-duplicate",
            notify_callback_no_duplicate,
            &[Spawn],
            "nfs-utils callback.c: an entry's last-seen state is skipped",
            "a repeated state calls lockd once; a new state calls it again"
        ),
        case!(
            "notify.callback.version",
            notify_callback_version,
            &[Spawn],
            NFSU_CALLBACK,
            "the callback uses the record's my_vers (4)"
        ),
        case!(
            "notify.callback.per-record",
            notify_callback_two_records,
            &[Spawn],
            NFSU_CALLBACK,
            "two records (two my_names) for one host: two callbacks, each with its cookie"
        ),
        case!(
            "notify.unmonitored",
            notify_unmonitored,
            &[Spawn],
            XNFS_NOTIFY,
            "SM_NOTIFY for an unmonitored host calls nobody"
        ),
        case!(
            "notify.case-insensitive",
            notify_case_insensitive,
            &[Spawn],
            "nfs-utils hostname.c statd_matchhostname: strcasecmp",
            "SM_NOTIFY with the name in upper case matches the record"
        ),
        case!(
            "simu-crash.unprivileged",
            simu_crash_unprivileged,
            &[Local],
            "nfs-utils utils/statd/simu.c: 127.0.0.1 and a privileged port only",
            "SM_SIMU_CRASH from an unprivileged port is answered void and changes nothing"
        ),
        case!(
            "robust.garbage.udp",
            robust_garbage_udp,
            &[],
            "design: bytes from the network never crash",
            "300 random datagrams, then NULL still answered"
        ),
        case!(
            "robust.garbage.tcp",
            robust_garbage_tcp,
            &[],
            "design: bytes from the network never crash",
            "20 connections of random bytes, then NULL still answered"
        ),
        case!(
            "robust.slow-tcp-client",
            robust_slow_client,
            &[],
            "nfs-utils svc_create.c: non-blocking TCP records",
            "a client stalled mid-record does not block others"
        ),
        case!(
            "robust.many-connections",
            robust_many_connections,
            &[],
            "nfs-utils svc_create.c: RPC_SVC_CONNMAXREC",
            "100 idle TCP connections; new and old ones are still served"
        ),
        case!(
            "robust.huge-fragment",
            robust_huge_fragment,
            &[],
            RFC5531_REC,
            "a record mark announcing 4 GiB does not take the server down"
        ),
        case!(
            "robust.big-datagram",
            robust_big_datagram,
            &[],
            "design: bounded allocation",
            "a 60000-byte datagram does not take the server down"
        ),
        case!(
            "rpcbind.unset-on-exit",
            rpcbind_unset_on_exit,
            &[Spawn],
            "nfs-utils statd.c: SIGTERM unregisters from rpcbind",
            "after SIGTERM the target is no longer registered",
            disruptive
        ),
        case!(
            "persist.records",
            persist_records,
            &[Spawn],
            "X/Open XNFS NSM: monitoring survives a restart",
            "a record survives a restart: the callback comes with its cookie",
            disruptive
        ),
        case!(
            "persist.state",
            persist_state,
            &[Spawn],
            "X/Open XNFS NSM: the state number never decreases",
            "the state number is kept (or grows) and is odd after a restart",
            disruptive
        ),
        case!(
            "simu-crash.with-records",
            simu_crash_with_records,
            &[Spawn],
            "nfs-utils utils/statd/simu.c (intended: clear memory, re-run sm-notify)",
            "SM_SIMU_CRASH from a privileged loopback port with records is answered; the target survives",
            disruptive
        ),
    ]
}

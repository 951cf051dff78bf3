//! Soak: the real nsmd and nsmctl under mixed traffic for `NSMD_SOAK_SECS` seconds (default
//! 60, the CI smoke; the hour of issue 17 is `NSMD_SOAK_SECS=3600`), sampled every minute.
//! Network namespaces, root only.
//!
//! Hosts (198.51.100.0/24 on the lab bridge):
//! - `srv` runs rpcbind, a lockd stand-in and nsmd with one service instance (`svc`, its
//!   floating address on `srv` for the whole run);
//! - `cli` runs Debian's rpc.statd monitoring the service, with its own lockd stand-in;
//! - `peer` records `srv` in Debian's rpc.statd, then reboots with Debian's sm-notify (state
//!   up by two each time);
//! - `forger` sends SM_NOTIFYs for names nobody monitors and replays of the peer's last state;
//! - `farm` plays the clients that lockd's SM_MONs name (10.77.0.0/16), so the instance's
//!   notifications after each takeover reach someone.
//!
//! Traffic, all at once: lockd-style SM_MON/SM_UNMON over TCP on loopback (a new connection
//! per call, as the kernel's upcalls), a set of monitored peers that grows and shrinks;
//! connection churn (one call per connection, half-open and half-closed connections); hostile
//! datagrams and streams; forged notifications; a real reboot notification every 20 s; a
//! takeover and release of the instance every minute, each takeover checked at the client.
//!
//! At the end: nsmd alive, every SM_MON answered stat_succ and not undone is in `sm/`, nothing
//! else is, each real notification called lockd back exactly once with its state (forged ones
//! never), no ERROR line in nsmd's log and only the expected warnings. Growth of RSS, open
//! files and threads is printed (minute 1 against the last sample), not asserted: it is a
//! figure for RELIABILITY.md, and timing on a shared machine is no test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::farm::{Farm, peer_addr};
use common::{
    Answer, LockdStandIn, XorShift, answer, call, in_netns, mon_args, spawn_nsmd, tcp_exchange,
    udp_exchange, xdr_string,
};
use nsm_testhost::{Host, Lab, require};

const NSMCTL: &str = env!("CARGO_BIN_EXE_nsmctl");
const SM_PROG: u32 = 100_024;
const SVC: &str = "nfs-soak-svc.example.test";
const SVC_ADDR: &str = "198.51.100.145";
const FARM_ADDR: &str = "198.51.100.144";
/// The farm peers lockd's SM_MONs pick from.
const PEERS: usize = 200;
const LOCKD_COOKIE: [u8; 16] = *b"soak-lockd-churn";
const PEER_COOKIE: [u8; 16] = *b"soak-real-peer!!";
const CLI_COOKIE: [u8; 16] = *b"soak-the-client!";
/// Generous: what a loaded 2-core machine may need for one step that fails the test.
const T: Duration = Duration::from_secs(60);

/// What the load threads did, counted.
#[derive(Default)]
struct Counts {
    mon_ok: AtomicU64,
    unmon_ok: AtomicU64,
    /// SM_MON/SM_UNMON without a reply within 2 s, or refused (the peer is left out of the
    /// check: its state is unknown).
    uncertain: AtomicU64,
    churn_calls: AtomicU64,
    churn_unanswered: AtomicU64,
    half_open: AtomicU64,
    hostile_datagrams: AtomicU64,
    hostile_streams: AtomicU64,
    hostile_replies: AtomicU64,
    forged: AtomicU64,
    /// Forged SM_NOTIFYs without a reply within 2 s (counted, not failed: a loaded machine).
    forged_unanswered: AtomicU64,
    real_notifies: AtomicU64,
    takeovers: AtomicU64,
    releases: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Stops every load thread when one of them panics, so the failure shows at once.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Runs `f` on a thread of `s` that stops the others (`stop`) if it panics.
fn guarded<'scope, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    stop: &'scope AtomicBool,
    f: impl FnOnce() -> T + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    s.spawn(move || {
        let _g = StopOnPanic(stop);
        f()
    })
}

/// Sleeps `d` in short steps; false when the run is over.
fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    !stop.load(Ordering::Relaxed)
}

/// lockd's monitored peers as the harness knows them: acknowledged, and left uncertain.
#[derive(Default)]
struct Monitored {
    acked: BTreeSet<String>,
    uncertain: BTreeSet<String>,
}

/// SM_MON and SM_UNMON of farm peers over TCP on loopback, 10 a second: a peer not monitored
/// is monitored, a monitored one is unmonitored (2 in 3) or monitored again with a new cookie.
fn lockd_churn(port: u16, stop: &AtomicBool, n: &Counts, mon: &Mutex<Monitored>) {
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut rng = XorShift(0x50a4_c0de_1234_5677);
    let mut xid = 0x1000_0000u32;
    while pause(stop, Duration::from_millis(100)) {
        xid += 1;
        let name = peer_addr(1 + (rng.next() % PEERS as u64) as usize).to_string();
        let known = mon.lock().unwrap().acked.contains(&name);
        let unmon = known && rng.next() % 3 != 0;
        let msg = if unmon {
            let mut a = xdr_string(name.as_bytes());
            a.extend(xdr_string(b"srv"));
            for w in [100_021u32, 3, 16] {
                a.extend_from_slice(&w.to_be_bytes());
            }
            call(xid, SM_PROG, 1, 3, &a)
        } else {
            let mut cookie = LOCKD_COOKIE;
            cookie[12..].copy_from_slice(&xid.to_be_bytes());
            call(
                xid,
                SM_PROG,
                1,
                2,
                &mon_args(name.as_bytes(), b"srv", cookie),
            )
        };
        let ok = tcp_exchange(to, &msg).map(|r| answer(xid, &r));
        let mut m = mon.lock().unwrap();
        match ok {
            // SM_MON: stat_succ, then the state; SM_UNMON: the state.
            Some(Answer::Accepted(0, w)) if !unmon && w.first() == Some(&0) => {
                inc(&n.mon_ok);
                m.uncertain.remove(&name);
                m.acked.insert(name);
            }
            Some(Answer::Accepted(0, _)) if unmon => {
                inc(&n.unmon_ok);
                m.uncertain.remove(&name);
                m.acked.remove(&name);
            }
            _ => {
                inc(&n.uncertain);
                m.acked.remove(&name);
                m.uncertain.insert(name);
            }
        }
    }
}

/// Connection churn: a connection per SM_NULL or SM_STAT, half-closed connections (the call,
/// then shutdown of the sending side) and half-open ones (a partial record, then silence; up
/// to 32 kept, the oldest dropped).
fn connection_churn(port: u16, stop: &AtomicBool, n: &Counts) {
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut rng = XorShift(0x0c4a_77e1_9bad_f00d);
    let mut held = VecDeque::new();
    let mut xid = 0x2000_0000u32;
    while pause(stop, Duration::from_millis(50)) {
        xid += 1;
        let msg = if xid % 2 == 0 {
            call(xid, SM_PROG, 1, 0, &[])
        } else {
            call(xid, SM_PROG, 1, 1, &xdr_string(b"churn.example.test"))
        };
        inc(&n.churn_calls);
        match tcp_exchange(to, &msg) {
            Some(r) => assert!(
                matches!(answer(xid, &r), Answer::Accepted(0, _)),
                "SM_NULL/SM_STAT answered {:?}",
                answer(xid, &r)
            ),
            None => inc(&n.churn_unanswered),
        }
        if xid % 10 == 0 {
            // Half-closed: the whole call, then FIN; the reply still comes.
            if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                let mut rec = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
                rec.extend_from_slice(&msg);
                let _ = s.write_all(&rec);
                let _ = s.shutdown(Shutdown::Write);
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut b = Vec::new();
                let _ = s.read_to_end(&mut b);
            }
            // Half-open: a record mark and part of the call, then nothing.
            if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                let cut = 1 + (rng.next() % 40) as usize;
                let mut rec = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
                rec.extend_from_slice(&msg);
                let _ = s.write_all(&rec[..cut]);
                inc(&n.half_open);
                held.push_back(s);
                if held.len() > 32 {
                    held.pop_front();
                }
            }
        }
    }
}

/// The reply a hostile datagram must get.
type Want = fn(&Answer) -> bool;

/// A hostile datagram and the reply it must get: `None` when it may be dropped or answered.
fn hostile_datagram(rng: &mut XorShift, xid: u32) -> (Vec<u8>, Option<Want>) {
    let word = |v: u32| v.to_be_bytes();
    match rng.next() % 8 {
        // Random bytes.
        0 => {
            let len = (rng.next() % 1500) as usize;
            (rng.bytes(len), None)
        }
        // A call cut short.
        1 => {
            let m = call(xid, SM_PROG, 1, 1, &xdr_string(b"x"));
            let cut = (rng.next() % m.len() as u64) as usize;
            (m[..cut].to_vec(), None)
        }
        // Another program.
        2 => (
            call(xid, 100_099, 1, 0, &[]),
            Some(|a: &Answer| matches!(a, Answer::Accepted(1, _))),
        ),
        // Another version.
        3 => (
            call(xid, SM_PROG, 7, 0, &[]),
            Some(|a: &Answer| matches!(a, Answer::Accepted(2, _))),
        ),
        // RPC version 3.
        4 => {
            let mut m = call(xid, SM_PROG, 1, 0, &[]);
            m[8..12].copy_from_slice(&word(3));
            (m, Some(|a: &Answer| matches!(a, Answer::Denied(0, _))))
        }
        // Credentials: garbage AUTH_SYS, an unknown flavor, or a length past the datagram.
        5 => {
            let mut m = call(xid, SM_PROG, 1, 0, &[]);
            let (flavor, len) = match rng.next() % 3 {
                0 => (1, 20),
                1 => (6, 40),
                _ => (1, 0xffff_fff0),
            };
            m[24..28].copy_from_slice(&word(flavor));
            m[28..32].copy_from_slice(&word(len));
            let body = rng.bytes(if len > 400 { 16 } else { len as usize });
            m.splice(32..32, body);
            (m, None)
        }
        // Garbage arguments to SM_NULL, SM_STAT, SM_MON, SM_UNMON or SM_NOTIFY (never
        // SM_UNMON_ALL or SM_SIMU_CRASH: a lucky decode must not touch the monitored set).
        _ => {
            let proc_ = [0u32, 1, 2, 3, 6][(rng.next() % 5) as usize];
            let len = (rng.next() % 64) as usize;
            (call(xid, SM_PROG, 1, proc_, &rng.bytes(len)), None)
        }
    }
}

/// A hostile stream: a record mark claiming ~2 GiB, a long run of non-last fragments, a
/// record cut short, or a record of garbage, wrong program or bad credentials.
fn hostile_stream(to: SocketAddr, rng: &mut XorShift, xid: u32, n: &Counts) {
    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
        return;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    inc(&n.hostile_streams);
    let _ = match rng.next() % 4 {
        0 => s.write_all(&[0x7f, 0xff, 0xff, 0xf0, 0, 0, 0, 1]),
        1 => {
            let frag = [0u8, 0, 0x04, 0].into_iter().chain(rng.bytes(1024));
            let one: Vec<u8> = frag.collect();
            (0..64).try_for_each(|_| s.write_all(&one))
        }
        2 => {
            let m = call(xid, SM_PROG, 1, 1, &xdr_string(b"cut.example.test"));
            let mut rec = (0x8000_0000u32 | m.len() as u32).to_be_bytes().to_vec();
            rec.extend_from_slice(&m[..m.len() / 2]);
            s.write_all(&rec)
        }
        _ => {
            let (m, _) = hostile_datagram(rng, xid);
            let mut rec = (0x8000_0000u32 | m.len() as u32).to_be_bytes().to_vec();
            rec.extend_from_slice(&m);
            s.write_all(&rec)
        }
    };
    let mut b = [0u8; 256];
    if s.read(&mut b).is_ok_and(|r| r > 0) {
        inc(&n.hostile_replies);
    }
}

/// Hostile datagrams to nsmd on loopback, up to 20 a second: a wrong program, version or RPC
/// version must be answered (PROG_UNAVAIL, PROG_MISMATCH, RPC_MISMATCH), the rest may be
/// answered or dropped.
fn hostile(port: u16, stop: &AtomicBool, n: &Counts) {
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut rng = XorShift(0x4057_11e5_eed5_0001);
    let mut xid = 0x3000_0000u32;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    while pause(stop, Duration::from_millis(50)) {
        xid += 1;
        let (m, want) = hostile_datagram(&mut rng, xid);
        inc(&n.hostile_datagrams);
        let _ = sock.send_to(&m, to);
        if let Some(want) = want {
            // These must be answered. Replies to earlier datagrams may come first.
            let t0 = Instant::now();
            loop {
                assert!(t0.elapsed() < T, "no reply in {T:?} to {m:02x?}");
                let Ok(len) = sock.recv(&mut buf) else {
                    continue;
                };
                inc(&n.hostile_replies);
                if len >= 4 && buf[..4] == xid.to_be_bytes() {
                    let a = answer(xid, &buf[..len]);
                    assert!(want(&a), "hostile datagram {m:02x?} answered {a:?}");
                    break;
                }
            }
        }
    }
}

/// Hostile streams, one every 200 ms (each may wait 2 s for a reply that never comes).
fn hostile_streams(port: u16, stop: &AtomicBool, n: &Counts) {
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut rng = XorShift(0x57ea_4057_11e5_0002);
    let mut xid = 0x3800_0000u32;
    while pause(stop, Duration::from_millis(200)) {
        xid += 1;
        hostile_stream(to, &mut rng, xid, n);
    }
}

/// SM_NOTIFY `(mon_name, state)` from `forger` over UDP; true when answered.
fn forge(to: SocketAddr, xid: u32, mon_name: &[u8], state: i32) -> bool {
    let mut a = xdr_string(mon_name);
    a.extend_from_slice(&state.to_be_bytes());
    udp_exchange(to, &call(xid, SM_PROG, 1, 6, &a))
        .is_some_and(|r| answer(xid, &r) == Answer::Accepted(0, vec![]))
}

/// Names nobody monitors, 4 a second (under nsmd's per-address rate limit of 10).
fn forged_names(to: SocketAddr, stop: &AtomicBool, n: &Counts) {
    let mut xid = 0x4000_0000u32;
    while pause(stop, Duration::from_millis(250)) {
        xid += 1;
        let name = format!("ghost-{}.example.test", xid % 97);
        if !forge(to, xid, name.as_bytes(), xid as i32) {
            inc(&n.forged_unanswered);
        }
        inc(&n.forged);
    }
}

/// The peer reboots every 20 s: Debian's rpc.statd records `srv` (lockd's SM_MON), stops,
/// and Debian's sm-notify runs as at boot (the state up by two). Each run must call srv's
/// lockd back once, with that state; then the forger replays that state (to be ignored).
/// Returns the states sent.
fn real_notifies(
    peer: &Host,
    forger: &Host,
    srv_addr: SocketAddr,
    srv_lockd: &LockdStandIn,
    stop: &AtomicBool,
    n: &Counts,
) -> Vec<i32> {
    let sm_notify = nsm_testhost::tool_path("sm-notify").expect("Debian's sm-notify (nfs-common)");
    let mut sent = Vec::new();
    let mut xid = 0x5000_0000u32;
    loop {
        let (statd, port) = common::debian_statd(peer, None);
        sm_mon(peer, port, "srv", "peer", [7; 16]);
        statd.stop(Duration::from_secs(10)).unwrap();
        let out = peer
            .run(
                &[
                    sm_notify.to_str().unwrap(),
                    "-d",
                    "-f",
                    "-P",
                    "/var/lib/nfs/c",
                ],
                T,
            )
            .unwrap();
        assert!(out.status.success(), "sm-notify: {out:?}");
        let state = state_of(&peer.nfs_dir().join("c"));
        sent.push(state);
        inc(&n.real_notifies);
        let got = srv_lockd.wait_for(sent.len(), T);
        assert_eq!(
            common::callback_states(&got, PEER_COOKIE).last(),
            Some(&("peer".to_owned(), state)),
            "sm-notify's state {state} reached lockd: {got:?}"
        );
        for _ in 0..3 {
            xid += 1;
            if !in_netns(forger, || forge(srv_addr, xid, b"peer", state)) {
                inc(&n.forged_unanswered);
            }
            inc(&n.forged);
        }
        if !pause(stop, Duration::from_secs(20)) {
            return sent;
        }
    }
}

/// lockd's SM_MON on loopback UDP, retransmitted (same xid) every 2 s for up to a minute, as
/// an RPC client does: over an hour on a loaded machine one reply may take longer than 2 s.
/// Asserts stat_succ.
fn sm_mon(host: &Host, port: u16, mon_name: &str, my_name: &str, cookie: [u8; 16]) {
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let m = call(
        7,
        SM_PROG,
        1,
        2,
        &mon_args(mon_name.as_bytes(), my_name.as_bytes(), cookie),
    );
    let r = in_netns(host, || (0..30).find_map(|_| udp_exchange(to, &m)))
        .unwrap_or_else(|| panic!("no reply to SM_MON {mon_name} in a minute"));
    let a = answer(7, &r);
    assert!(
        matches!(&a, Answer::Accepted(0, w) if w[0] == 0),
        "SM_MON {mon_name}: {a:?}"
    );
}

fn state_of(dir: &Path) -> i32 {
    i32::from_ne_bytes(
        std::fs::read(dir.join("state")).unwrap()[..4]
            .try_into()
            .unwrap(),
    )
}

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `nsmctl ARGS` on `srv`; its stdout, or a panic with what it said.
fn nsmctl(srv: &Host, args: &[&str]) -> String {
    let mut argv = vec![NSMCTL];
    argv.extend_from_slice(args);
    let out = srv.run(&argv, T).unwrap();
    assert!(out.status.success(), "nsmctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The service instance taken over and released every `period` (released after half of it):
/// each takeover must reach the client's lockd with the new state; lockd then monitors the
/// client again (on the server, the client's SM_MON after its reclaim), for the next one.
fn takeovers(
    srv: &Host,
    port: u16,
    svc_dir: &Path,
    cli_lockd: &LockdStandIn,
    period: Duration,
    stop: &AtomicBool,
    n: &Counts,
) {
    let mut states = Vec::new();
    loop {
        let out = nsmctl(srv, &["--json", "takeover", "svc"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let state = v["state"].as_i64().unwrap() as i32;
        states.push(state);
        inc(&n.takeovers);
        let got = cli_lockd.wait_for(states.len(), T);
        assert_eq!(
            common::callback_states(&got, CLI_COOKIE),
            states
                .iter()
                .map(|s| (SVC.to_owned(), *s))
                .collect::<Vec<_>>(),
            "the client heard of every takeover, once, with its state"
        );
        // The instance keeps cli in sm.bak/ until it acknowledged; then lockd monitors it
        // again.
        let t0 = Instant::now();
        while svc_dir.join("sm.bak/cli").exists() {
            assert!(
                t0.elapsed() < T,
                "cli still in {svc_dir:?}/sm.bak after {T:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sm_mon(srv, port, "cli", "srv", [9; 16]);
        assert!(
            svc_dir.join("sm/cli").exists(),
            "cli recorded in the instance"
        );
        if !pause(stop, period / 2) {
            return;
        }
        nsmctl(srv, &["release", "svc"]);
        inc(&n.releases);
        if !pause(stop, period - period / 2) {
            return;
        }
    }
}

/// One row of the table.
struct Sample {
    secs: u64,
    rss_kib: u64,
    fds: usize,
    threads: u64,
    node_sm: usize,
    svc_sm: usize,
    svc_bak: usize,
    calls: u64,
    monitored: usize,
    mon_ok: u64,
    hostile: u64,
    churn: u64,
}

fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The sum of `nsmd_calls_total` in `nsmctl metrics`.
fn calls_total(srv: &Host) -> u64 {
    nsmctl(srv, &["metrics"])
        .lines()
        .filter(|l| l.starts_with("nsmd_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn env_secs(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{key}={v:?}: seconds")))
        .unwrap_or(default)
}

#[test]
fn soak_of_mixed_traffic() {
    if !require(
        "soak_of_mixed_traffic",
        &["rpcbind", "rpc.statd", "sm-notify"],
    ) {
        return;
    }
    let secs = env_secs("NSMD_SOAK_SECS", 60);
    let sample_every =
        Duration::from_secs(env_secs("NSMD_SOAK_SAMPLE_SECS", 60.min(secs / 4).max(1)));
    // Every minute; at least twice in a short run.
    let takeover_period = Duration::from_secs(60.min(secs / 2).max(10));

    let lab = Lab::new("soak").unwrap();
    lab.add_name(SVC_ADDR, &[SVC]).unwrap();
    let srv = lab.host("srv", &["198.51.100.140/24"]).unwrap();
    let cli = lab.host("cli", &["198.51.100.141/24"]).unwrap();
    let peer = lab.host("peer", &["198.51.100.142/24"]).unwrap();
    let forger = lab.host("forger", &["198.51.100.143/24"]).unwrap();
    let farm_host = lab.host("farm", &[&format!("{FARM_ADDR}/24")]).unwrap();
    let farm = Farm::start(&farm_host, PEERS);
    srv.sh(
        &format!("ip route add 10.77.0.0/16 via {FARM_ADDR}"),
        Duration::from_secs(10),
    )
    .unwrap();

    // The server: rpcbind, lockd (registered: the instance's readiness gate), the kernel
    // files a release writes, the instance, nsmd.
    let _srv_rpcbind = srv.start_rpcbind().unwrap();
    let srv_lockd = LockdStandIn::start(&srv, true);
    for f in [
        "sys/fs/nfs/nsm_local_state",
        "fs/nfsd/unlock_ip",
        "fs/nfsd/unlock_filesystem",
    ] {
        srv.write_file(&format!("/run/proc/{f}"), "").unwrap();
    }
    srv.write_file(
        "/var/lib/nfs/instances/svc.toml",
        format!(
            "hostname = \"{SVC}\"\naddresses = [\"{SVC_ADDR}\"]\n\
             state_dir = \"/var/lib/nfs/svc\"\n\
             [notify]\nretry_seconds = 30\n\
             [readiness]\nrpcbind = [100021]\ntimeout_seconds = 30\n\
             [release]\nexports = [\"/export/svc\"]\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(srv.nfs_dir().join("svc")).unwrap();
    srv.add_addr(&format!("{SVC_ADDR}/24")).unwrap();
    let (nsmd, port) = spawn_nsmd(
        &srv,
        "nsmd",
        &[
            "-P",
            "/var/lib/nfs/node",
            "--proc-root",
            "/run/proc",
            "--instances",
            "/var/lib/nfs/instances",
        ],
    );
    let pid = nsmd.pid();
    let node_dir = srv.outside_path("/var/lib/nfs/node").unwrap();
    let svc_dir = srv.outside_path("/var/lib/nfs/svc").unwrap();
    let srv_addr: SocketAddr = format!("198.51.100.140:{port}").parse().unwrap();

    // The client: Debian's rpc.statd monitoring the service, its lockd.
    let _cli_rpcbind = cli.start_rpcbind().unwrap();
    let cli_lockd = LockdStandIn::start(&cli, true);
    let (cli_statd, cli_port) = common::debian_statd(&cli, None);
    sm_mon(&cli, cli_port, SVC, "cli", CLI_COOKIE);
    // The server's lockd monitors the peer (the real notifications) and the client (in the
    // instance too: monitored while it is active).
    let _peer_rpcbind = peer.start_rpcbind().unwrap();
    sm_mon(&srv, port, "peer", "srv", PEER_COOKIE);
    nsmctl(&srv, &["takeover", "svc"]);
    sm_mon(&srv, port, "cli", "srv", [9; 16]);
    nsmctl(&srv, &["release", "svc"]);

    let n = Counts::default();
    let mon = Mutex::new(Monitored::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut rows: Vec<Sample> = Vec::new();
    let started = Instant::now();
    eprintln!(
        "soak: {secs} s, a sample every {sample_every:?}, a takeover every {takeover_period:?}; \
         nsmd pid {pid}"
    );
    println!(
        "{:>6} {:>8} {:>5} {:>7} {:>7} {:>6} {:>7} {:>8} {:>9} {:>7} {:>8} {:>7}",
        "t (s)",
        "RSS KiB",
        "fds",
        "threads",
        "node sm",
        "svc sm",
        "svc bak",
        "calls",
        "monitored",
        "SM_MON",
        "hostile",
        "churn"
    );
    let sent = std::thread::scope(|s| {
        let stop = &*stop;
        let (n, mon) = (&n, &mon);
        let (srv, forger, peer) = (&srv, &forger, &peer);
        let (svc_dir, cli_lockd, srv_lockd) = (&svc_dir, &cli_lockd, &srv_lockd);
        let workers = [
            guarded(s, stop, move || {
                in_netns(srv, || lockd_churn(port, stop, n, mon));
            }),
            guarded(s, stop, move || {
                in_netns(srv, || connection_churn(port, stop, n))
            }),
            guarded(s, stop, move || in_netns(srv, || hostile(port, stop, n))),
            guarded(s, stop, move || {
                in_netns(srv, || hostile_streams(port, stop, n))
            }),
            guarded(s, stop, move || {
                in_netns(forger, || forged_names(srv_addr, stop, n));
            }),
            guarded(s, stop, move || {
                takeovers(srv, port, svc_dir, cli_lockd, takeover_period, stop, n);
            }),
        ];
        let real = guarded(s, stop, move || {
            real_notifies(peer, forger, srv_addr, srv_lockd, stop, n)
        });

        let mut next = Duration::ZERO;
        loop {
            let now = started.elapsed();
            let last = now.as_secs() >= secs || stop.load(Ordering::SeqCst);
            if now >= next || last {
                if !nsmd.is_running() {
                    stop.store(true, Ordering::SeqCst);
                    panic!("nsmd died: {}", nsmd.log_tail(40));
                }
                let row = Sample {
                    secs: now.as_secs(),
                    rss_kib: status_field(pid, "VmRSS:"),
                    fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
                        .unwrap()
                        .count(),
                    threads: status_field(pid, "Threads:"),
                    node_sm: files(&node_dir.join("sm")).len(),
                    svc_sm: files(&svc_dir.join("sm")).len(),
                    svc_bak: files(&svc_dir.join("sm.bak")).len(),
                    calls: calls_total(srv),
                    monitored: mon.lock().unwrap().acked.len(),
                    mon_ok: get(&n.mon_ok),
                    hostile: get(&n.hostile_datagrams) + get(&n.hostile_streams),
                    churn: get(&n.churn_calls),
                };
                println!(
                    "{:>6} {:>8} {:>5} {:>7} {:>7} {:>6} {:>7} {:>8} {:>9} {:>7} {:>8} {:>7}",
                    row.secs,
                    row.rss_kib,
                    row.fds,
                    row.threads,
                    row.node_sm,
                    row.svc_sm,
                    row.svc_bak,
                    row.calls,
                    row.monitored,
                    row.mon_ok,
                    row.hostile,
                    row.churn
                );
                rows.push(row);
                next += sample_every;
            }
            if last {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        real.join().unwrap()
    });

    // Settle: late callbacks (there must be none) and the last SM_MONs' files.
    std::thread::sleep(Duration::from_secs(2));
    assert!(nsmd.is_running(), "nsmd alive: {}", nsmd.log_tail(40));

    // Each real notification called lockd back once with its state; nothing else did.
    let got = common::callback_states(&srv_lockd.calls.lock().unwrap(), PEER_COOKIE);
    let want: Vec<(String, i32)> = sent.iter().map(|s| ("peer".to_owned(), *s)).collect();

    // Every SM_MON acknowledged and not undone is on disk, and nothing that was unmonitored.
    let m = mon.lock().unwrap();
    let on_disk = files(&node_dir.join("sm"));
    let mut expected = m.acked.clone();
    expected.extend(["peer".to_owned(), "cli".to_owned()]);
    let missing: Vec<_> = expected.difference(&on_disk).collect();
    let extra: Vec<_> = on_disk
        .difference(&expected)
        .filter(|f| !m.uncertain.contains(*f))
        .collect();

    // The log: no ERROR, warnings only of the kinds this traffic causes.
    let log = nsmd.log();
    let mut warnings: BTreeMap<String, usize> = BTreeMap::new();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    for l in log.lines() {
        if let Some(w) = l.split(" WARN ").nth(1) {
            let kind: String = w.chars().take(60).collect();
            *warnings.entry(kind).or_default() += 1;
        }
    }

    let farm_notified: usize = farm.counts().iter().sum();
    eprintln!(
        "soak: {secs} s: SM_MON {} acknowledged, SM_UNMON {}, {} uncertain; {} monitored at \
         the end; connection churn {} calls ({} unanswered within 2 s), {} half-open; hostile \
         {} datagrams, {} streams ({} replies); forged SM_NOTIFY {} ({} unanswered within \
         2 s); real SM_NOTIFY runs {} (states {:?}); takeovers {}, releases {}; farm peers notified {} times; nsmd log {} \
         bytes; rpc.statd on cli alive: {}",
        get(&n.mon_ok),
        get(&n.unmon_ok),
        get(&n.uncertain),
        m.acked.len(),
        get(&n.churn_calls),
        get(&n.churn_unanswered),
        get(&n.half_open),
        get(&n.hostile_datagrams),
        get(&n.hostile_streams),
        get(&n.hostile_replies),
        get(&n.forged),
        get(&n.forged_unanswered),
        get(&n.real_notifies),
        sent,
        get(&n.takeovers),
        get(&n.releases),
        farm_notified,
        log.len(),
        cli_statd.is_running(),
    );
    for (w, c) in &warnings {
        eprintln!("soak: warning x{c}: {w}");
    }
    // Growth: the first sample after a minute (or the first after the start) against the
    // last.
    let last = rows.last().unwrap();
    let first = rows
        .iter()
        .find(|r| r.secs >= 60.min(last.secs / 4))
        .unwrap_or(last);
    let max = |f: fn(&Sample) -> u64| rows.iter().map(f).max().unwrap();
    eprintln!(
        "soak: growth from t={} s to t={} s: RSS {} -> {} KiB (max {}), open files {} -> {} \
         (max {}), threads {} -> {} (max {})",
        first.secs,
        last.secs,
        first.rss_kib,
        last.rss_kib,
        max(|r| r.rss_kib),
        first.fds,
        last.fds,
        max(|r| r.fds as u64),
        first.threads,
        last.threads,
        max(|r| r.threads),
    );
    // The verdicts, after the figures (printed also when one fails).
    assert_eq!(got, want, "lockd's callbacks on srv: one per sm-notify run");
    assert!(missing.is_empty(), "acknowledged SM_MONs lost: {missing:?}");
    assert!(
        extra.is_empty(),
        "unmonitored peers still on disk: {extra:?}"
    );
    assert!(state_of(&svc_dir) > 1, "the instance's state went up");
    assert!(errors.is_empty(), "errors in nsmd's log: {errors:#?}");
    let unexpected: Vec<_> = warnings
        .keys()
        .filter(|w| !EXPECTED_WARNINGS.iter().any(|e| w.starts_with(e)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected warnings: {unexpected:#?}"
    );
    assert!(get(&n.mon_ok) > 0 && get(&n.takeovers) > 0 && !sent.is_empty());
}

/// The only warnings this traffic may cause: nsmd runs as root here (`sm/` is root's).
const EXPECTED_WARNINGS: &[&str] = &["running as root: "];

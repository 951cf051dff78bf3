//! The core driven directly: every procedure, the matching rules, callbacks, the rate limit
//! and the name cache on a clock the tests move (hours at a time where it matters).

#![allow(clippy::unwrap_used)]

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use nsm_xdr::Opaque;

use super::*;

const LOCAL: &str = "127.0.0.1:700";
const STATE: i32 = 3;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg() -> CoreConfig {
    CoreConfig {
        name: "test".into(),
        notify_rate: 10,
        service_address: None,
    }
}

/// A core in state 3 with the records `loaded`, its first effect (publish) checked.
fn core_with(loaded: Vec<(String, Record)>) -> Core {
    let mut c = Core::new(cfg(), STATE, loaded);
    assert_eq!(effects(&mut c), [Effect::PublishState(STATE)]);
    c
}

fn core() -> Core {
    core_with(Vec::new())
}

fn effects(c: &mut Core) -> Vec<Effect> {
    std::iter::from_fn(|| c.poll_effect()).collect()
}

fn my_id(my: &'static str, proc_: u32) -> MyId<'static> {
    MyId {
        my_name: Opaque::new(my.as_bytes()).unwrap(),
        my_prog: NLM_PROG,
        my_vers: 3,
        my_proc: proc_,
    }
}

fn mon(name: &'static str, my: &'static str, cookie: u8) -> Mon<'static> {
    Mon {
        mon_id: MonId {
            mon_name: Opaque::new(name.as_bytes()).unwrap(),
            my_id: my_id(my, 16),
        },
        priv_: [cookie; 16],
    }
}

fn rec(name: &str, my: &str, cookie: u8) -> Record {
    Record {
        mon_name: name.into(),
        my_name: my.into(),
        my_prog: NLM_PROG,
        my_vers: 3,
        my_proc: 16,
        priv_: [cookie; 16],
    }
}

fn loaded(names: &[&str]) -> Vec<(String, Record)> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| ((*n).to_owned(), rec(n, "srv", i as u8)))
        .collect()
}

/// `stat_succ` after a durable write.
fn written(state: i32) -> Reply {
    mon_reply(succ(state), true)
}

/// `stat_succ` at once (the registration was durable already).
fn at_once(state: i32) -> Reply {
    mon_reply(succ(state), false)
}

/// `stat_fail` after a write that failed.
fn write_failed() -> Reply {
    mon_reply(fail(), true)
}

/// `stat_fail` without a write.
fn refused() -> Reply {
    mon_reply(fail(), false)
}

fn reply(request: u64, reply: Reply) -> Effect {
    Effect::Reply {
        request: RequestId(request),
        reply,
    }
}

fn eio() -> StoreError {
    StoreError::Io {
        op: "fsync",
        path: PathBuf::from("/state/sm"),
        source: Arc::new(io::Error::from_raw_os_error(5)),
    }
}

/// The one commit among `effs`, as (id, file, records).
fn the_commit(effs: &[Effect]) -> (CommitId, String, Vec<Record>) {
    let commits: Vec<_> = effs
        .iter()
        .filter_map(|e| match e {
            Effect::Commit { id, file, records } => Some((*id, file.clone(), records.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(commits.len(), 1, "one commit expected in {effs:?}");
    commits.into_iter().next().unwrap()
}

fn callbacks(effs: &[Effect]) -> Vec<(String, i32, u8)> {
    effs.iter()
        .filter_map(|e| match e {
            Effect::CallBack(cb) => Some((
                String::from_utf8_lossy(&cb.mon_name).into_owned(),
                cb.state,
                cb.priv_[0],
            )),
            _ => None,
        })
        .collect()
}

fn lookups(effs: &[Effect]) -> Vec<String> {
    let mut v: Vec<String> = effs
        .iter()
        .filter_map(|e| match e {
            Effect::LookUp(n) => Some(String::from_utf8_lossy(n).into_owned()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn notify(c: &mut Core, now: Instant, from: &str, name: &'static str, state: i32) -> NotifyOutcome {
    let sc = StatChge {
        mon_name: Opaque::new(name.as_bytes()).unwrap(),
        state,
    };
    c.handle_notify(now, SocketAddr::new(ip(from), 1021), &sc)
}

/// Monitors `name` for `srv` with `cookie`, durably.
fn monitored(c: &mut Core, request: u64, name: &'static str, cookie: u8) {
    c.handle_mon(RequestId(request), addr(LOCAL), &mon(name, "srv", cookie));
    let (id, _, _) = the_commit(&effects(c));
    c.handle_committed(id, Ok(()));
    assert!(effects(c).contains(&reply(request, written(c.state()))));
}

#[test]
fn sm_stat_says_whether_a_name_could_be_monitored_and_the_state() {
    let c = core();
    let r = c.handle_stat(b"client.example.test");
    assert_eq!((r.res_stat, r.state), (Res::StatSucc, STATE));
    for bad in [&b"../etc"[..], b"a/b", b".hidden", b"x.new", b""] {
        assert_eq!(c.handle_stat(bad).res_stat, Res::StatFail, "{bad:?}");
    }
}

#[test]
fn sm_mon_is_answered_only_once_its_record_is_durable() {
    let mut c = core();
    c.handle_mon(RequestId(1), addr(LOCAL), &mon("client1", "srv", 7));
    let effs = effects(&mut c);
    let (id, file, records) = the_commit(&effs);
    assert_eq!(
        effs.len(),
        1,
        "nothing but the write before it is durable: {effs:?}"
    );
    assert_eq!(
        (file.as_str(), records),
        ("client1", vec![rec("client1", "srv", 7)])
    );
    assert_eq!(c.peers(), [("client1".to_owned(), "srv".to_owned())]);
    c.handle_committed(id, Ok(()));
    assert_eq!(
        effects(&mut c),
        [
            Effect::Callout {
                kind: CalloutKind::AddClient,
                args: vec![b"client1".to_vec(), b"srv".to_vec()],
            },
            reply(1, written(STATE)),
        ]
    );
}

#[test]
fn a_failed_commit_answers_stat_fail_and_keeps_nothing_in_memory() {
    let mut c = core();
    c.handle_mon(RequestId(1), addr(LOCAL), &mon("client1", "srv", 7));
    let (id, _, _) = the_commit(&effects(&mut c));
    c.handle_committed(id, Err(eio()));
    assert_eq!(
        effects(&mut c),
        [reply(1, write_failed())],
        "no add-client either"
    );
    assert!(c.is_empty() && c.peers().is_empty());

    // A new cookie for a registration that failed to be written: the old one is kept.
    monitored(&mut c, 2, "client1", 7);
    c.handle_mon(RequestId(3), addr(LOCAL), &mon("client1", "srv", 8));
    let (id, _, records) = the_commit(&effects(&mut c));
    assert_eq!(records, [rec("client1", "srv", 8)], "replaced, not added");
    c.handle_committed(id, Err(eio()));
    assert_eq!(effects(&mut c), [reply(3, write_failed())]);
    // Matched by name: the callback carries the cookie memory kept (the old one).
    notify(&mut c, Instant::now(), "198.51.100.1", "client1", 5);
    assert_eq!(callbacks(&effects(&mut c)), [("client1".to_owned(), 5, 7)]);
}

#[test]
fn sm_mon_refusals_write_nothing() {
    let mut c = core();
    let mut bad_prog = mon("client1", "srv", 1);
    bad_prog.mon_id.my_id.my_prog = 100_003;
    let mut bad_proc = mon("client1", "srv", 1);
    bad_proc.mon_id.my_id.my_proc = 17;
    let long: &'static str = Box::leak("x".repeat(900).into_boxed_str());
    let cases: Vec<(&str, Mon<'static>, SocketAddr)> = vec![
        (
            "remote caller",
            mon("client1", "srv", 1),
            addr("198.51.100.1:700"),
        ),
        ("not lockd", bad_prog, addr(LOCAL)),
        ("not procedure 16 or 24", bad_proc, addr(LOCAL)),
        (
            "mon_name unsafe as a file",
            mon("../x", "srv", 1),
            addr(LOCAL),
        ),
        (
            "my_name with a control char",
            mon("client1", "s\x01rv", 1),
            addr(LOCAL),
        ),
        (
            "record longer than 1024",
            mon(&long[..200], long, 1),
            addr(LOCAL),
        ),
    ];
    for (i, (why, m, peer)) in cases.into_iter().enumerate() {
        c.handle_mon(RequestId(i as u64), peer, &m);
        assert_eq!(effects(&mut c), [reply(i as u64, refused())], "{why}");
    }
    assert!(c.is_empty());
    // Procedure 24 (NLM4 v4's SM_NOTIFY callback) and IPv4-mapped loopback are fine.
    let mut p24 = mon("client1", "srv", 1);
    p24.mon_id.my_id.my_proc = 24;
    c.handle_mon(RequestId(9), addr("[::ffff:127.0.0.1]:700"), &p24);
    the_commit(&effects(&mut c));
}

#[test]
fn a_repeated_sm_mon_waits_for_the_write_in_flight() {
    let mut c = core();
    c.handle_mon(RequestId(1), addr(LOCAL), &mon("client1", "srv", 7));
    let (id, _, _) = the_commit(&effects(&mut c));
    // The same registration again before the first is durable: no answer yet.
    c.handle_mon(RequestId(2), addr(LOCAL), &mon("client1", "srv", 7));
    assert_eq!(effects(&mut c), []);
    c.handle_committed(id, Ok(()));
    let effs = effects(&mut c);
    assert!(effs.contains(&reply(1, written(STATE))) && effs.contains(&reply(2, written(STATE))));
    // Once durable, a repeat is answered at once, without a write.
    c.handle_mon(RequestId(3), addr(LOCAL), &mon("client1", "srv", 7));
    assert_eq!(effects(&mut c), [reply(3, at_once(STATE))]);
    assert_eq!(c.len(), 1);

    // A repeat of a registration whose write then fails fails too.
    c.handle_mon(RequestId(4), addr(LOCAL), &mon("client2", "srv", 7));
    let (id, _, _) = the_commit(&effects(&mut c));
    c.handle_mon(RequestId(5), addr(LOCAL), &mon("client2", "srv", 7));
    c.handle_committed(id, Err(eio()));
    let effs = effects(&mut c);
    assert!(effs.contains(&reply(4, write_failed())) && effs.contains(&reply(5, write_failed())));
}

#[test]
fn writes_of_one_file_carry_the_contents_in_the_order_computed() {
    let mut c = core();
    c.handle_mon(RequestId(1), addr(LOCAL), &mon("client1", "srv1", 1));
    c.handle_mon(RequestId(2), addr(LOCAL), &mon("client1", "srv2", 2));
    let effs = effects(&mut c);
    let contents: Vec<Vec<Record>> = effs
        .iter()
        .filter_map(|e| match e {
            Effect::Commit { records, .. } => Some(records.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        contents,
        [
            vec![rec("client1", "srv1", 1)],
            vec![rec("client1", "srv1", 1), rec("client1", "srv2", 2)]
        ]
    );
}

#[test]
fn a_mon_name_loaded_from_another_file_is_rewritten_there() {
    // As rpc.statd left it: the kernel's address, in a file named by its reverse name.
    let mut c = core_with(vec![(
        "client1.example.test".into(),
        rec("198.51.100.20", "srv", 1),
    )]);
    c.handle_mon(RequestId(1), addr(LOCAL), &mon("198.51.100.20", "srv", 2));
    let (_, file, records) = the_commit(&effects(&mut c));
    assert_eq!(file, "client1.example.test");
    assert_eq!(records, [rec("198.51.100.20", "srv", 2)]);
}

fn mon_id(name: &'static str, my: &'static str) -> MonId<'static> {
    MonId {
        mon_name: Opaque::new(name.as_bytes()).unwrap(),
        my_id: my_id(my, 16),
    }
}

/// SM_UNMON of `name`: the files written and their new contents.
fn unmon(c: &mut Core, name: &'static str) -> Vec<(String, Vec<Record>)> {
    c.handle_unmon(RequestId(100), addr(LOCAL), &mon_id(name, "srv"));
    let effs = effects(c);
    let written: Vec<_> = effs
        .iter()
        .filter_map(|e| match e {
            Effect::Commit { id, file, records } => Some((*id, file.clone(), records.clone())),
            _ => None,
        })
        .collect();
    if written.is_empty() {
        assert_eq!(effs, [reply(100, Reply::Unmon(SmStat { state: STATE }))]);
    }
    for (id, _, _) in &written {
        c.handle_committed(*id, Ok(()));
    }
    effects(c);
    written.into_iter().map(|(_, f, r)| (f, r)).collect()
}

#[test]
fn sm_unmon_removes_one_registration_chosen_as_rpc_statd_does() {
    let mut c = core_with(loaded(&[
        "web1.example.test",
        "Client2",
        "nfs1.a.example",
        "nfs1.b.example",
    ]));
    // The exact name.
    assert_eq!(
        unmon(&mut c, "web1.example.test"),
        [("web1.example.test".to_owned(), vec![])]
    );
    // Another case.
    assert_eq!(unmon(&mut c, "client2"), [("Client2".to_owned(), vec![])]);
    // The short name of two hosts: neither.
    assert_eq!(unmon(&mut c, "nfs1"), []);
    assert_eq!(c.len(), 2);
    // Another my_name or callback: no.
    c.handle_unmon(
        RequestId(1),
        addr(LOCAL),
        &mon_id("nfs1.a.example", "other"),
    );
    assert_eq!(
        effects(&mut c),
        [reply(1, Reply::Unmon(SmStat { state: STATE }))]
    );
    // The only host by that short name.
    assert_eq!(
        unmon(&mut c, "nfs1.b.example"),
        [("nfs1.b.example".to_owned(), vec![])]
    );
    c.handle_unmon(RequestId(2), addr(LOCAL), &mon_id("nfs1", "srv"));
    let (id, file, records) = the_commit(&effects(&mut c));
    assert_eq!((file.as_str(), records.len()), ("nfs1.a.example", 0));
    c.handle_committed(id, Ok(()));
    assert_eq!(
        effects(&mut c),
        [
            Effect::Callout {
                kind: CalloutKind::DelClient,
                args: vec![b"nfs1.a.example".to_vec(), b"srv".to_vec()],
            },
            reply(2, Reply::Unmon(SmStat { state: STATE })),
        ]
    );
    assert!(c.is_empty());
}

#[test]
fn sm_unmon_all_removes_every_registration_of_that_caller() {
    let mut recs = loaded(&["a", "b"]);
    recs.push(("a".into(), rec("a", "other", 9)));
    let mut c = core_with(recs);
    c.handle_unmon_all(RequestId(1), addr(LOCAL), &my_id("srv", 16));
    let effs = effects(&mut c);
    let mut files: Vec<(CommitId, String, Vec<Record>)> = effs
        .iter()
        .filter_map(|e| match e {
            Effect::Commit { id, file, records } => Some((*id, file.clone(), records.clone())),
            _ => None,
        })
        .collect();
    files.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(files.len(), 2);
    assert_eq!(
        files[0].2,
        [rec("a", "other", 9)],
        "another caller's record stays"
    );
    assert!(files[1].2.is_empty());
    // Answered once every file is durable.
    c.handle_committed(files[0].0, Ok(()));
    assert!(
        !effects(&mut c)
            .iter()
            .any(|e| matches!(e, Effect::Reply { .. }))
    );
    c.handle_committed(files[1].0, Ok(()));
    let effs = effects(&mut c);
    assert_eq!(
        effs.last(),
        Some(&reply(1, Reply::Unmon(SmStat { state: STATE })))
    );
    assert_eq!(c.peers(), [("a".to_owned(), "other".to_owned())]);
    // Nothing (left) registered: answered at once.
    c.handle_unmon_all(RequestId(2), addr(LOCAL), &my_id("srv", 16));
    assert_eq!(
        effects(&mut c),
        [reply(2, Reply::Unmon(SmStat { state: STATE }))]
    );
}

#[test]
fn unmon_from_a_remote_caller_changes_nothing() {
    let mut c = core_with(loaded(&["a"]));
    c.handle_unmon(RequestId(1), addr("198.51.100.1:700"), &mon_id("a", "srv"));
    c.handle_unmon_all(RequestId(2), addr("198.51.100.1:700"), &my_id("srv", 16));
    let r = |n| reply(n, Reply::Unmon(SmStat { state: STATE }));
    assert_eq!(effects(&mut c), [r(1), r(2)]);
    assert_eq!(c.len(), 1);
}

#[test]
fn a_fenced_instance_writes_and_sends_nothing() {
    let mut c = core_with(loaded(&["a"]));
    c.set_fenced(Some("epoch 4 in .nsmd-owner, this node holds 3".into()));
    c.handle_mon(RequestId(1), addr(LOCAL), &mon("b", "srv", 1));
    c.handle_unmon(RequestId(2), addr(LOCAL), &mon_id("a", "srv"));
    c.handle_unmon_all(RequestId(3), addr(LOCAL), &my_id("srv", 16));
    c.handle_simu_crash(RequestId(4), addr(LOCAL));
    let r = |n| reply(n, Reply::Unmon(SmStat { state: STATE }));
    assert_eq!(
        effects(&mut c),
        [reply(1, refused()), r(2), r(3), reply(4, Reply::Crash)]
    );
    assert_eq!(c.peers(), [("a".to_owned(), "srv".to_owned())]);
    // Owned again: served again.
    c.set_fenced(None);
    c.handle_mon(RequestId(5), addr(LOCAL), &mon("b", "srv", 1));
    the_commit(&effects(&mut c));
}

#[test]
fn sm_simu_crash_only_from_a_privileged_local_port() {
    let mut c = core_with(loaded(&["a"]));
    for peer in ["127.0.0.1:1024", "198.51.100.1:700"] {
        c.handle_simu_crash(RequestId(1), addr(peer));
        assert_eq!(effects(&mut c), [reply(1, Reply::Crash)], "{peer}");
    }
    assert_eq!((c.state(), c.len()), (STATE, 1));
}

#[test]
fn sm_simu_crash_waits_for_writes_in_flight_and_holds_later_requests_back() {
    let mut c = core_with(loaded(&["before"]));
    c.handle_mon(RequestId(1), addr(LOCAL), &mon("inflight", "srv", 1));
    let (id, _, _) = the_commit(&effects(&mut c));
    c.handle_simu_crash(RequestId(2), addr(LOCAL));
    assert_eq!(effects(&mut c), [], "no restart while a write is in flight");
    c.handle_committed(id, Ok(()));
    let effs = effects(&mut c);
    assert!(effs.contains(&reply(1, written(STATE))));
    assert_eq!(
        effs.last(),
        Some(&Effect::Restart {
            request: RequestId(2)
        })
    );
    // Requests during the restart wait for it.
    c.handle_mon(RequestId(3), addr(LOCAL), &mon("during", "srv", 1));
    c.handle_unmon(RequestId(4), addr(LOCAL), &mon_id("before", "srv"));
    assert_eq!(effects(&mut c), []);
    c.handle_restarted(RequestId(2), Restarted::Done(STATE + 2));
    let effs = effects(&mut c);
    assert_eq!(
        effs[..2],
        [
            Effect::Announce { state: STATE + 2 },
            reply(2, Reply::Crash)
        ]
    );
    // The SM_MON is recorded after it (in the emptied sm/); the SM_UNMON finds nothing.
    let (id, file, records) = the_commit(&effs);
    assert_eq!(
        (file.as_str(), records),
        ("during", vec![rec("during", "srv", 1)])
    );
    assert!(effs.contains(&reply(4, Reply::Unmon(SmStat { state: STATE + 2 }))));
    c.handle_committed(id, Ok(()));
    assert!(effects(&mut c).contains(&reply(3, written(STATE + 2))));
    assert_eq!(c.peers(), [("during".to_owned(), "srv".to_owned())]);
}

#[test]
fn a_restart_that_fails_keeps_the_records_and_the_state_on_disk() {
    let mut c = core_with(loaded(&["a"]));
    c.handle_simu_crash(RequestId(1), addr(LOCAL));
    assert_eq!(
        effects(&mut c),
        [Effect::Restart {
            request: RequestId(1)
        }]
    );
    c.handle_restarted(RequestId(1), Restarted::NotBumped("helper: EIO".into()));
    assert_eq!(effects(&mut c), [reply(1, Reply::Crash)], "no announce");
    assert_eq!((c.state(), c.len()), (STATE, 1));

    // Bumped but not retired: the new state is answered, the records stay, nobody is told.
    c.handle_simu_crash(RequestId(2), addr(LOCAL));
    effects(&mut c);
    c.handle_restarted(
        RequestId(2),
        Restarted::NotRetired {
            state: STATE + 2,
            error: "rename sm/: EIO".into(),
        },
    );
    assert_eq!(effects(&mut c), [reply(2, Reply::Crash)], "no announce");
    assert_eq!((c.state(), c.len()), (STATE + 2, 1));
    assert_eq!(c.handle_stat(b"a").state, STATE + 2);
}

#[test]
fn took_over_forgets_the_records_and_takes_the_new_state() {
    let mut c = core_with(loaded(&["a", "b"]));
    c.took_over(11);
    assert_eq!((c.state(), c.len()), (11, 0));
    assert_eq!(c.handle_stat(b"x").state, 11);
}

#[test]
fn sm_notify_by_name_calls_lockd_back_once_per_state() {
    let mut recs = loaded(&["client1", "other"]);
    recs.push(("client1".into(), rec("client1", "srv2", 9)));
    let mut c = core_with(recs);
    let t = Instant::now();
    assert_eq!(
        notify(&mut c, t, "198.51.100.1", "CLIENT1", 5),
        NotifyOutcome::Accepted
    );
    let effs = effects(&mut c);
    assert_eq!(
        effs[0],
        Effect::Callout {
            kind: CalloutKind::SmNotify,
            args: vec![b"CLIENT1".to_vec(), b"198.51.100.1".to_vec(), b"5".to_vec()],
        }
    );
    let mut cbs = callbacks(&effs);
    cbs.sort();
    assert_eq!(
        cbs,
        [("client1".to_owned(), 5, 0), ("client1".to_owned(), 5, 9)]
    );
    let Some(Effect::CallBack(cb)) = effs.iter().find(|e| matches!(e, Effect::CallBack(_))) else {
        panic!("no callback")
    };
    assert_eq!((cb.prog, cb.vers, cb.proc_), (NLM_PROG, 3, 16));
    assert_eq!(
        lookups(&effs),
        ["other"],
        "only the record of another name needs its addresses"
    );
    c.handle_resolved(t, b"other", vec![ip("198.51.100.50")]);
    assert_eq!(callbacks(&effects(&mut c)), []);
    // The same state again (a retransmission): nothing. A new one: again.
    notify(&mut c, t, "198.51.100.1", "client1", 5);
    assert_eq!(callbacks(&effects(&mut c)), []);
    notify(&mut c, t, "198.51.100.1", "client1", 7);
    assert_eq!(callbacks(&effects(&mut c)).len(), 2);
}

#[test]
fn sm_notify_under_another_name_is_matched_by_address_after_a_lookup() {
    let mut c = core_with(loaded(&[
        "client5.example.test",
        "198.51.100.9",
        "elsewhere.test",
    ]));
    let t = Instant::now();
    // From an address literal that is monitored: at once; the names need a lookup.
    notify(&mut c, t, "198.51.100.9", "renamed", 5);
    let effs = effects(&mut c);
    assert_eq!(callbacks(&effs), [("198.51.100.9".to_owned(), 5, 1)]);
    assert_eq!(lookups(&effs), ["client5.example.test", "elsewhere.test"]);
    // A later SM_NOTIFY (another peer, matched by name) waits behind it, so lockd hears of
    // states in order.
    notify(&mut c, t, "198.51.100.30", "elsewhere.test", 8);
    assert_eq!(callbacks(&effects(&mut c)), []);
    c.handle_resolved(t, b"client5.example.test", vec![ip("::ffff:198.51.100.9")]);
    assert_eq!(callbacks(&effects(&mut c)), [], "waits for every lookup");
    c.handle_resolved(t, b"Elsewhere.Test", vec![ip("198.51.100.30")]);
    assert_eq!(
        callbacks(&effects(&mut c)),
        [
            ("client5.example.test".to_owned(), 5, 0),
            ("elsewhere.test".to_owned(), 8, 2)
        ]
    );
    assert_eq!(
        c.addresses_of(b"CLIENT5.example.test"),
        [ip("198.51.100.9")]
    );
    assert_eq!(c.addresses_of(b"203.0.113.4"), [ip("203.0.113.4")]);
}

#[test]
fn looked_up_addresses_are_used_for_five_minutes() {
    let mut c = core_with(loaded(&["client5.example.test"]));
    let t0 = Instant::now();
    notify(&mut c, t0, "198.51.100.9", "renamed", 5);
    assert_eq!(lookups(&effects(&mut c)), ["client5.example.test"]);
    c.handle_resolved(t0, b"client5.example.test", vec![ip("198.51.100.9")]);
    assert_eq!(callbacks(&effects(&mut c)).len(), 1);
    // Within the cache's time: matched at once, no lookup.
    let t1 = t0 + RESOLVED_FOR - Duration::from_secs(1);
    notify(&mut c, t1, "198.51.100.9", "renamed", 7);
    let effs = effects(&mut c);
    assert_eq!((callbacks(&effs).len(), lookups(&effs).len()), (1, 0));
    // Hours later: looked up again (the host may have moved).
    let t2 = t0 + Duration::from_secs(3 * 3600);
    notify(&mut c, t2, "198.51.100.9", "renamed", 9);
    let effs = effects(&mut c);
    assert_eq!((callbacks(&effs).len(), lookups(&effs).len()), (0, 1));
    c.handle_resolved(t2, b"client5.example.test", vec![ip("198.51.100.77")]);
    assert_eq!(
        callbacks(&effects(&mut c)),
        [],
        "moved: no longer that sender"
    );
    // A lookup for SM_MON routing is skipped while fresh.
    c.look_up(t2, b"client5.example.test");
    assert_eq!(effects(&mut c), []);
    c.look_up(t2 + RESOLVED_FOR, b"client5.example.test");
    assert_eq!(lookups(&effects(&mut c)), ["client5.example.test"]);
    c.look_up(t2 + RESOLVED_FOR, b"client5.example.test");
    assert_eq!(effects(&mut c), [], "one lookup in flight per name");
}

#[test]
fn a_lookup_that_takes_too_long_counts_as_unresolvable() {
    let mut c = core_with(loaded(&["nfs1.a.example"]));
    let t0 = Instant::now();
    notify(&mut c, t0, "198.51.100.9", "nfs1", 5);
    assert_eq!(lookups(&effects(&mut c)), ["nfs1.a.example"]);
    assert_eq!(c.poll_timeout(), Some(t0 + LOOKUP_TIMEOUT));
    c.handle_timeout(t0 + LOOKUP_TIMEOUT - Duration::from_millis(1));
    assert_eq!(callbacks(&effects(&mut c)), []);
    c.handle_timeout(t0 + LOOKUP_TIMEOUT);
    // Unresolvable, and the only host by that short name: the name decides.
    assert_eq!(
        callbacks(&effects(&mut c)),
        [("nfs1.a.example".to_owned(), 5, 0)]
    );
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn an_ambiguous_short_name_of_unresolvable_hosts_matches_neither() {
    let mut c = core_with(loaded(&["nfs1.a.example", "nfs1.b.example"]));
    let t0 = Instant::now();
    notify(&mut c, t0, "198.51.100.9", "nfs1", 5);
    effects(&mut c);
    c.handle_resolved(t0, b"nfs1.a.example", vec![]);
    c.handle_resolved(t0, b"nfs1.b.example", vec![]);
    assert_eq!(callbacks(&effects(&mut c)), []);
    // Different FQDNs of one short name with known addresses: by address only.
    notify(&mut c, t0, "198.51.100.9", "nfs1.c.example", 6);
    assert_eq!(callbacks(&effects(&mut c)), []);
}

#[test]
fn sm_notify_is_rate_limited_per_sender() {
    let mut c = core_with(loaded(&["client1"]));
    let t0 = Instant::now();
    let accepted = (0..100)
        .filter(|i| notify(&mut c, t0, "198.51.100.1", "client1", *i) == NotifyOutcome::Accepted)
        .count();
    assert_eq!(accepted, 20, "a burst of twice the rate");
    assert_eq!(
        notify(&mut c, t0, "198.51.100.2", "x", 1),
        NotifyOutcome::Accepted,
        "another sender has its own budget"
    );
    let t1 = t0 + Duration::from_secs(3600);
    assert_eq!(
        notify(&mut c, t1, "198.51.100.1", "client1", 500),
        NotifyOutcome::Accepted
    );
}

#[test]
fn sm_notifies_waiting_for_lookups_are_bounded() {
    let mut c = core_with(loaded(&["client5.example.test"]));
    let t0 = Instant::now();
    for i in 0..MAX_PENDING_MATCHES {
        let from = format!("10.0.{}.{}", i / 256, i % 256);
        assert_eq!(
            notify(&mut c, t0, &from, "renamed", 5),
            NotifyOutcome::Accepted
        );
    }
    assert_eq!(
        lookups(&effects(&mut c)).len(),
        1,
        "one lookup for all of them"
    );
    assert_eq!(
        notify(&mut c, t0, "10.99.0.1", "renamed", 5),
        NotifyOutcome::QueueFull
    );
    c.handle_resolved(t0, b"client5.example.test", vec![ip("10.0.3.4")]);
    assert_eq!(
        callbacks(&effects(&mut c)),
        [("client5.example.test".to_owned(), 5, 0)]
    );
    assert_eq!(
        notify(&mut c, t0, "10.99.0.1", "renamed", 6),
        NotifyOutcome::Accepted
    );
}

#[test]
fn a_service_instance_passes_its_address_to_the_callout() {
    let mut c = Core::new(
        CoreConfig {
            service_address: Some("192.0.2.10".into()),
            ..cfg()
        },
        STATE,
        Vec::new(),
    );
    effects(&mut c);
    c.handle_mon(RequestId(1), addr(LOCAL), &mon("client1", "srv", 7));
    let (id, _, _) = the_commit(&effects(&mut c));
    c.handle_committed(id, Ok(()));
    assert_eq!(
        effects(&mut c)[0],
        Effect::Callout {
            kind: CalloutKind::AddClient,
            args: vec![b"client1".to_vec(), b"srv".to_vec(), b"192.0.2.10".to_vec()],
        }
    );
    notify(&mut c, Instant::now(), "198.51.100.1", "x", 1);
    assert_eq!(
        effects(&mut c)[0],
        Effect::Callout {
            kind: CalloutKind::SmNotify,
            args: vec![b"x".to_vec(), b"198.51.100.1".to_vec(), b"1".to_vec()],
        },
        "sm-notify has no service address"
    );
}

#[test]
fn local_callers() {
    assert!(is_local(addr("127.0.0.1:40000")));
    assert!(is_local(addr("[::1]:40000")));
    assert!(is_local(addr("[::ffff:127.0.0.1]:9")));
    assert!(!is_local(addr("198.51.100.1:700")));
    assert!(!is_local(addr("[::ffff:198.51.100.1]:700")));
}

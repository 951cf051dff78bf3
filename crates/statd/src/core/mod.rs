//! The NSM core of one instance, as a sans-IO state machine (in the shape of quinn-proto).
//!
//! [`Core`] owns every rule of the NSM procedures and the instance's memory: the records by
//! file and the last state each was told of, the instance's state number, the addresses
//! looked up for monitored names and when, the per-address SM_NOTIFY rate limit, the
//! SM_NOTIFYs waiting for name lookups, the requests waiting for a durable write, and a
//! restart (SM_SIMU_CRASH) in progress.
//!
//! Events go in as `handle_*` calls with the time passed as an argument (`now`), and effects
//! come out of [`Core::poll_effect`] in the order they were decided: write a record file
//! durably ([`Effect::Commit`]), answer a request ([`Effect::Reply`]), call lockd back, look
//! a name up, run the HA callout, restart (bump the state and retire `sm/`), notify the peers
//! in `sm.bak/`, tell the kernel the state. The caller (the driver, [`crate::Instance`])
//! carries each effect out and reports how it went with another event
//! ([`Core::handle_committed`], [`Core::handle_resolved`], [`Core::handle_restarted`]);
//! [`Core::poll_timeout`] says when [`Core::handle_timeout`] is due (a name lookup that takes
//! too long counts as one that found nothing).
//!
//! The core never reads the clock, touches a file or a socket, spawns or blocks: the same
//! events at the same times give the same effects, so the tests drive it directly and jump
//! hours ahead. The driver reads the fence (the ownership file) before each request that
//! writes, and tells the core with [`Core::set_fenced`].
//!
//! Rules the core keeps:
//! - an SM_MON is answered `stat_succ` only after the commit carrying it is reported
//!   durable; when that commit fails, the SM_MON is answered `stat_fail` and the record is
//!   undone in memory too;
//! - commits of a file are issued in the order their contents were computed (the driver
//!   must hand them to the store in the order they come out);
//! - no request waits for a name lookup, a callout or a callback;
//! - a fenced instance answers requests without writing or recording anything;
//! - an SM_SIMU_CRASH restarts only once no write is in flight, and requests arriving
//!   meanwhile are handled after it: a registration is either retired with the others or
//!   recorded after the restart, never on disk but forgotten in memory;
//! - SM_NOTIFYs are matched in arrival order (one waiting for lookups holds the later ones
//!   back), so lockd never hears of an older state after a newer one, and a record is called
//!   back once per state.

mod matching;
mod records;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use nsm_store::{Record, StoreError};
use nsm_xdr::nsm::{Mon, MonId, MyId, NLM_PROG, Res, SmStat, SmStatRes, StatChge};
use tracing::{debug, info, warn};

use crate::callback::Callback;
use crate::names::{canonical, check_my_name, ip_literal, same_host, sanitize_my_name};
use matching::{NameCache, NotifyMatch, RateLimiter, notify_match, short_name_is_ambiguous};
use records::Records;

pub use matching::RESOLVED_FOR;

/// SM_NOTIFYs waiting to be matched at most (behind name lookups); more are dropped with a
/// warning, so a flood of forged SM_NOTIFYs cannot queue unbounded work.
pub const MAX_PENDING_MATCHES: usize = 4096;
/// How long a name lookup may take; after that it counts as one that found nothing.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a caller may use the local-only procedures (MON, UNMON, UNMON_ALL, SIMU_CRASH).
pub fn is_local(peer: SocketAddr) -> bool {
    canonical(peer.ip()).is_loopback()
}

/// A request the driver waits on, numbered by the driver; its answer comes out as an
/// [`Effect::Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// A durable write the core asked for ([`Effect::Commit`]), reported back with
/// [`Core::handle_committed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommitId(u64);

/// The answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// SM_MON's result.
    Mon {
        /// The result.
        result: SmStatRes,
        /// Whether the answer waited for a durable write (for the disk-wait histogram):
        /// false for a refusal and a repeat of a registration already on disk.
        written: bool,
    },
    /// SM_UNMON's and SM_UNMON_ALL's result.
    Unmon(SmStat),
    /// SM_SIMU_CRASH is done (void result).
    Crash,
}

/// The HA callout events (nfs-utils' `ha-callout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutKind {
    /// A record was added: `add-client mon_name my_name [service address]`.
    AddClient,
    /// A record was removed: `del-client mon_name my_name [service address]`.
    DelClient,
    /// An SM_NOTIFY arrived: `sm-notify mon_name address state`.
    SmNotify,
}

impl CalloutKind {
    /// The event's name, the callout's first argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddClient => "add-client",
            Self::DelClient => "del-client",
            Self::SmNotify => "sm-notify",
        }
    }
}

/// Something the core decided, for the driver to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write `sm/<file>` with exactly `records` (none: remove it) durably (file and directory
    /// fsynced), then report with [`Core::handle_committed`].
    Commit {
        /// Reported back.
        id: CommitId,
        /// The record file's name.
        file: String,
        /// Its whole new content.
        records: Vec<Record>,
    },
    /// Answer request `request`.
    Reply {
        /// The request.
        request: RequestId,
        /// Its answer.
        reply: Reply,
    },
    /// Call lockd back (in the background; never waited for).
    CallBack(Callback),
    /// Look the addresses of `name` (lower case) up, then report with
    /// [`Core::handle_resolved`] (or not at all: [`LOOKUP_TIMEOUT`] covers it).
    LookUp(Vec<u8>),
    /// Run the HA callout (in the background).
    Callout {
        /// The event.
        kind: CalloutKind,
        /// Its arguments after the event's name.
        args: Vec<Vec<u8>>,
    },
    /// Restart (SM_SIMU_CRASH): bump the state by two durably and tell the kernel, move
    /// `sm/` to `sm.bak/`, then report with [`Core::handle_restarted`]. No write is in flight.
    Restart {
        /// The SM_SIMU_CRASH.
        request: RequestId,
    },
    /// Notify the peers in `sm.bak/` of `state` in the background (after a restart).
    Announce {
        /// The new state.
        state: i32,
    },
    /// Tell the kernel the state number.
    PublishState(i32),
}

/// How the restart of an [`Effect::Restart`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restarted {
    /// The state is bumped to this, and `sm/` moved to `sm.bak/`.
    Done(i32),
    /// The state could not be bumped (nothing changed); why.
    NotBumped(String),
    /// The state is bumped, but `sm/` could not be moved.
    NotRetired {
        /// The new state.
        state: i32,
        /// Why `sm/` stayed.
        error: String,
    },
}

/// What became of an SM_NOTIFY (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOutcome {
    /// Matched, or queued behind name lookups.
    Accepted,
    /// Over the sender's rate limit: ignored.
    RateLimited,
    /// [`MAX_PENDING_MATCHES`] already wait for name lookups: dropped.
    QueueFull,
}

/// How a core is set up.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// A name for logs (`node` for the node instance).
    pub name: String,
    /// SM_NOTIFYs accepted per second from one address (burst: twice that).
    pub notify_rate: u32,
    /// For a service instance: its service address, the HA callout's third argument of
    /// `add-client` and `del-client`.
    pub service_address: Option<String>,
}

/// An SM_NOTIFY to match, in arrival order.
#[derive(Debug)]
struct MatchJob {
    peer: SocketAddr,
    from: IpAddr,
    name: Vec<u8>,
    state: i32,
    /// `None`: match it entirely; `Some`: the records with these (lower-case) names are
    /// left, to match once their addresses are looked up.
    remainder: Option<HashSet<Vec<u8>>>,
    /// The lookups asked for it; it waits while any of them is in flight.
    waiting: Option<HashSet<Vec<u8>>>,
    /// Queued behind another (for the log).
    queued: bool,
}

/// What to do once every commit of a request is durable (or one failed).
#[derive(Debug)]
enum Then {
    /// An SM_MON: on success add-client and `stat_succ`; on failure undo and `stat_fail`.
    Mon {
        file: String,
        record: Record,
        /// The record it replaced (same registration, another cookie).
        previous: Option<Record>,
    },
    /// An SM_UNMON or SM_UNMON_ALL: on success del-client for each (mon_name, my_name).
    Unmon {
        what: &'static str,
        del_clients: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

#[derive(Debug)]
struct Waiting {
    commits_left: usize,
    error: Option<StoreError>,
    then: Then,
}

#[derive(Debug)]
struct InFlight {
    /// The request whose change it carries.
    request: RequestId,
    /// SM_MONs repeated while it was in flight: the same answer once it is durable.
    followers: Vec<RequestId>,
    file: String,
}

/// A request held back while a restart runs.
#[derive(Debug)]
enum Deferred {
    Mon {
        request: RequestId,
        file: String,
        record: Record,
    },
    Unmon {
        request: RequestId,
        mon_name: Vec<u8>,
        my_name: Vec<u8>,
        callback: (u32, u32, u32),
    },
    UnmonAll {
        request: RequestId,
        my_name: Vec<u8>,
        raw_my_name: Vec<u8>,
        callback: (u32, u32, u32),
    },
    Crash {
        request: RequestId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// Waiting for the writes in flight.
    Waiting(RequestId),
    /// [`Effect::Restart`] given out.
    Running(RequestId),
}

/// The NSM state machine of one instance (see the module documentation).
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    state: i32,
    records: Records,
    names: NameCache,
    /// Lookups in flight, with their deadlines.
    resolving: HashMap<Vec<u8>, Instant>,
    limiter: RateLimiter,
    matches: VecDeque<MatchJob>,
    next_commit: u64,
    commits: HashMap<CommitId, InFlight>,
    /// The newest commit in flight of each file.
    file_commits: HashMap<String, CommitId>,
    waiting: HashMap<RequestId, Waiting>,
    crash: Option<Crash>,
    deferred: VecDeque<Deferred>,
    fenced: Option<String>,
    effects: VecDeque<Effect>,
}

fn succ(state: i32) -> SmStatRes {
    SmStatRes {
        res_stat: Res::StatSucc,
        state,
    }
}

fn mon_reply(result: SmStatRes, written: bool) -> Reply {
    Reply::Mon { result, written }
}

fn fail() -> SmStatRes {
    SmStatRes {
        res_stat: Res::StatFail,
        state: -1,
    }
}

impl Core {
    /// A core in state `state` with the records `loaded` from `sm/` (file, record); its first
    /// effect tells the kernel the state.
    pub fn new(cfg: CoreConfig, state: i32, loaded: Vec<(String, Record)>) -> Self {
        let mut records = Records::with_capacity(loaded.len());
        for (file, record) in loaded {
            records.push(file, record);
        }
        let limiter = RateLimiter::new(cfg.notify_rate);
        Self {
            cfg,
            state,
            records,
            names: NameCache::default(),
            resolving: HashMap::new(),
            limiter,
            matches: VecDeque::new(),
            next_commit: 0,
            commits: HashMap::new(),
            file_commits: HashMap::new(),
            waiting: HashMap::new(),
            crash: None,
            deferred: VecDeque::new(),
            fenced: None,
            effects: VecDeque::from([Effect::PublishState(state)]),
        }
    }

    /// The next effect to carry out, in the order decided.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Core::handle_timeout`] is due next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.resolving.values().min().copied()
    }

    /// The time passed: lookups past [`LOOKUP_TIMEOUT`] count as having found nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<Vec<u8>> = self
            .resolving
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in late {
            debug!(host = %String::from_utf8_lossy(&name), "resolving a monitored name timed out after {LOOKUP_TIMEOUT:?}");
            self.handle_resolved(now, &name, Vec::new());
        }
    }

    /// What the driver read of the fence before a request that writes: `Some(why)` when this
    /// node no longer owns the instance (requests are then answered without any change).
    pub fn set_fenced(&mut self, why: Option<String>) {
        self.fenced = why;
    }

    /// The instance's state number.
    pub fn state(&self) -> i32 {
        self.state
    }

    /// Number of records monitored.
    pub fn len(&self) -> usize {
        self.records.len
    }

    /// True when nothing is monitored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The monitored peers: (mon_name, my_name) of every record, in the order added.
    pub fn peers(&self) -> Vec<(String, String)> {
        self.records
            .in_order()
            .into_iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(e.mon_name()).into_owned(),
                    String::from_utf8_lossy(e.my_name()).into_owned(),
                )
            })
            .collect()
    }

    /// The addresses known for `mon_name`: the name itself when it is an address literal,
    /// else what a lookup found, if any.
    pub fn addresses_of(&self, mon_name: &[u8]) -> Vec<IpAddr> {
        if let Some(ip) = ip_literal(mon_name) {
            return vec![canonical(ip)];
        }
        self.names
            .get(&mon_name.to_ascii_lowercase())
            .map(<[IpAddr]>::to_vec)
            .unwrap_or_default()
    }

    /// Asks for a lookup of `name` unless it is an address, known and fresh, or in flight.
    pub fn look_up(&mut self, now: Instant, name: &[u8]) {
        let key = name.to_ascii_lowercase();
        if ip_literal(name).is_some() || self.names.fresh(&key, now).is_some() {
            return;
        }
        self.start_lookup(now, key);
    }

    fn start_lookup(&mut self, now: Instant, key: Vec<u8>) {
        if self.resolving.contains_key(&key) {
            return;
        }
        self.resolving.insert(key.clone(), now + LOOKUP_TIMEOUT);
        self.effects.push_back(Effect::LookUp(key));
    }

    /// A lookup of `name` found `addrs` (none: it does not resolve); matchings waiting for
    /// it go on.
    pub fn handle_resolved(&mut self, now: Instant, name: &[u8], addrs: Vec<IpAddr>) {
        let key = name.to_ascii_lowercase();
        self.resolving.remove(&key);
        let mut addrs: Vec<IpAddr> = addrs.into_iter().map(canonical).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let limit = 2 * self.records.len + 1024;
        self.names.insert(key, addrs, now, limit);
        self.advance_matches(now);
    }

    /// Sets the state number after a takeover bumped it on disk, and forgets every record
    /// (they moved to `sm.bak/`).
    pub fn took_over(&mut self, state: i32) {
        self.records.clear();
        self.state = state;
    }

    /// SM_STAT: whether nsmd could monitor `mon_name`, and the local state. Never asks DNS:
    /// nsmd monitors any well-formed name.
    pub fn handle_stat(&self, mon_name: &[u8]) -> SmStatRes {
        SmStatRes {
            res_stat: if nsm_store::file_name(mon_name).is_ok() {
                Res::StatSucc
            } else {
                Res::StatFail
            },
            state: self.state,
        }
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        self.effects.push_back(Effect::Reply { request, reply });
    }

    fn refused_when_fenced(&self, what: &str) -> bool {
        match &self.fenced {
            Some(why) => {
                warn!(instance = %self.cfg.name, "{what} refused: {why}");
                true
            }
            None => false,
        }
    }

    /// SM_MON from `peer`: records the registration durably, then answers {stat_succ, state}.
    pub fn handle_mon(&mut self, request: RequestId, peer: SocketAddr, m: &Mon<'_>) {
        let mon_name = m.mon_id.mon_name.as_bytes();
        let id = &m.mon_id.my_id;
        if !is_local(peer) {
            warn!(%peer, "SM_MON from a non-loopback address refused");
            return self.reply(request, mon_reply(fail(), false));
        }
        if id.my_prog != NLM_PROG || !matches!(id.my_proc, 16 | 24) {
            warn!(%peer, prog = id.my_prog, proc = id.my_proc, "SM_MON with a callback other than lockd (100021, procedure 16 or 24) refused");
            return self.reply(request, mon_reply(fail(), false));
        }
        let file = match nsm_store::file_name(mon_name) {
            Ok(f) => f.to_owned(),
            Err(e) => {
                warn!(%peer, mon_name = %m.mon_id.mon_name, "SM_MON refused: mon_name: {e}");
                return self.reply(request, mon_reply(fail(), false));
            }
        };
        let my_name = sanitize_my_name(id.my_name.as_bytes());
        if let Err(e) = check_my_name(&my_name) {
            warn!(%peer, "SM_MON refused: my_name: {e}");
            return self.reply(request, mon_reply(fail(), false));
        }
        if mon_name.len() + my_name.len() > 1024 {
            warn!(%peer, "SM_MON refused: mon_name and my_name together exceed 1024 bytes (nfs-utils could not read the record)");
            return self.reply(request, mon_reply(fail(), false));
        }
        if self.refused_when_fenced("SM_MON") {
            return self.reply(request, mon_reply(fail(), false));
        }
        let record = Record {
            mon_name: mon_name.to_vec(),
            my_name,
            my_prog: id.my_prog,
            my_vers: id.my_vers,
            my_proc: id.my_proc,
            priv_: m.priv_,
        };
        if self.crash.is_some() {
            return self.deferred.push_back(Deferred::Mon {
                request,
                file,
                record,
            });
        }
        self.mon(request, file, record);
    }

    fn mon(&mut self, request: RequestId, file: String, record: Record) {
        let file = self.records.file_for(&record.mon_name, file);
        let found = self
            .records
            .in_file(file.as_bytes())
            .into_iter()
            .find(|&i| self.records.get(i).same_registration(&record));
        let previous = match found.map(|i| self.records.get_mut(i)) {
            Some(e) if e.priv_() == record.priv_ => {
                debug!(mon_name = %String::from_utf8_lossy(&record.mon_name), "SM_MON repeated with the same cookie");
                // Durable once the file's newest write is: answered with it.
                match self.file_commits.get(&file) {
                    Some(id) => {
                        if let Some(c) = self.commits.get_mut(id) {
                            c.followers.push(request);
                        }
                    }
                    None => {
                        let ok = succ(self.state);
                        self.reply(request, mon_reply(ok, false));
                    }
                }
                return;
            }
            Some(e) => {
                let old = e.record();
                e.set_priv(record.priv_);
                Some(old)
            }
            None => {
                self.records.push(file.clone(), record.clone());
                None
            }
        };
        self.commit(
            request,
            vec![file.clone()],
            Then::Mon {
                file,
                record,
                previous,
            },
        );
    }

    /// Asks for a durable write of each of `files` as memory holds it now, for `request`.
    fn commit(&mut self, request: RequestId, files: Vec<String>, then: Then) {
        self.waiting.insert(
            request,
            Waiting {
                commits_left: files.len(),
                error: None,
                then,
            },
        );
        for file in files {
            let id = CommitId(self.next_commit);
            self.next_commit += 1;
            let records = self.records.content(&file);
            self.file_commits.insert(file.clone(), id);
            self.commits.insert(
                id,
                InFlight {
                    request,
                    followers: Vec::new(),
                    file: file.clone(),
                },
            );
            self.effects.push_back(Effect::Commit { id, file, records });
        }
    }

    /// The durable write `id` finished (`Err`: it did not happen, or not durably).
    pub fn handle_committed(&mut self, id: CommitId, result: Result<(), StoreError>) {
        let Some(c) = self.commits.remove(&id) else {
            return;
        };
        if self.file_commits.get(&c.file) == Some(&id) {
            self.file_commits.remove(&c.file);
        }
        let res = if result.is_ok() {
            succ(self.state)
        } else {
            fail()
        };
        for f in c.followers {
            self.reply(f, mon_reply(res, true));
        }
        if let Some(w) = self.waiting.get_mut(&c.request) {
            w.commits_left -= 1;
            if let Err(e) = result
                && w.error.is_none()
            {
                w.error = Some(e);
            }
            if w.commits_left == 0
                && let Some(w) = self.waiting.remove(&c.request)
            {
                self.finish(c.request, w);
            }
        }
        self.start_crash_if_idle();
    }

    fn finish(&mut self, request: RequestId, w: Waiting) {
        match (w.then, w.error) {
            (Then::Mon { record, .. }, None) => {
                self.callout(
                    CalloutKind::AddClient,
                    vec![record.mon_name, record.my_name],
                );
                let ok = succ(self.state);
                self.reply(request, mon_reply(ok, true));
            }
            (
                Then::Mon {
                    file,
                    record,
                    previous,
                },
                Some(e),
            ) => {
                warn!(mon_name = %String::from_utf8_lossy(&record.mon_name), "SM_MON failed: cannot record it durably: {e}");
                match previous {
                    Some(old) => {
                        if let Some(i) = self
                            .records
                            .in_file(file.as_bytes())
                            .into_iter()
                            .find(|&i| self.records.get(i).is(&record))
                        {
                            self.records.get_mut(i).set_priv(old.priv_);
                        }
                    }
                    None => self.records.remove_one(&file, &record),
                }
                self.reply(request, mon_reply(fail(), true));
            }
            (Then::Unmon { what, del_clients }, error) => {
                match error {
                    None => {
                        debug!(count = del_clients.len(), "{what}: removed");
                        for (mon, my) in del_clients {
                            self.callout(CalloutKind::DelClient, vec![mon, my]);
                        }
                    }
                    Some(e) => warn!("{what}: cannot update a record file: {e}"),
                }
                let state = self.state;
                self.reply(request, Reply::Unmon(SmStat { state }));
            }
        }
    }

    fn callout(&mut self, kind: CalloutKind, mut args: Vec<Vec<u8>>) {
        if kind != CalloutKind::SmNotify
            && let Some(a) = &self.cfg.service_address
        {
            args.push(a.clone().into_bytes());
        }
        self.effects.push_back(Effect::Callout { kind, args });
    }

    /// SM_UNMON: stops monitoring one (mon_name, my_name, callback) registration; answered
    /// once the change is durable (or failed: then the file keeps it).
    pub fn handle_unmon(&mut self, request: RequestId, peer: SocketAddr, id: &MonId<'_>) {
        if !is_local(peer) {
            warn!(%peer, "SM_UNMON from a non-loopback address ignored");
            return self.reply_state(request);
        }
        if self.refused_when_fenced("SM_UNMON") {
            return self.reply_state(request);
        }
        let my = &id.my_id;
        let d = Deferred::Unmon {
            request,
            mon_name: id.mon_name.as_bytes().to_vec(),
            my_name: sanitize_my_name(my.my_name.as_bytes()),
            callback: (my.my_prog, my.my_vers, my.my_proc),
        };
        self.run_or_defer(d);
    }

    fn reply_state(&mut self, request: RequestId) {
        let state = self.state;
        self.reply(request, Reply::Unmon(SmStat { state }));
    }

    fn unmon(&mut self, request: RequestId, mon_name: &[u8], my_name: &[u8], cb: (u32, u32, u32)) {
        // One registration, as rpc.statd removes one: the record with this very mon_name (lockd
        // unmonitors with the name it monitored), else the same name in another case, else the
        // only record of the same host by short name. Never several hosts' records.
        // The records of that host only (the by-host index): the cost does not grow with the
        // number of records.
        let records = &self.records;
        let candidates: Vec<u32> = records
            .same_host_as(mon_name)
            .into_iter()
            .filter(|&i| {
                let e = records.get(i);
                e.my_name() == my_name && e.callback() == cb
            })
            .collect();
        let exact = candidates
            .iter()
            .find(|&&i| records.get(i).mon_name() == mon_name);
        let folded = candidates
            .iter()
            .find(|&&i| records.get(i).mon_name().eq_ignore_ascii_case(mon_name));
        let chosen = exact.or(folded).or(match candidates.as_slice() {
            [only] => Some(only),
            _ => None,
        });
        let Some(chosen) = chosen.map(|&i| records.get(i).record()) else {
            debug!(mon_name = %String::from_utf8_lossy(mon_name), "SM_UNMON: no such registration");
            return self.reply_state(request);
        };
        // Every record equal to it (the same line in two files), as before.
        let equal: Vec<u32> = candidates
            .into_iter()
            .filter(|&i| records.get(i).is(&chosen))
            .collect();
        let (removed, files) = self.records.remove(&equal);
        let del_clients = removed
            .into_iter()
            .map(|r| (r.mon_name, my_name.to_vec()))
            .collect();
        self.commit(
            request,
            files,
            Then::Unmon {
                what: "SM_UNMON",
                del_clients,
            },
        );
    }

    /// SM_UNMON_ALL: stops monitoring everything registered by this my_name and callback.
    pub fn handle_unmon_all(&mut self, request: RequestId, peer: SocketAddr, my: &MyId<'_>) {
        if !is_local(peer) {
            warn!(%peer, "SM_UNMON_ALL from a non-loopback address ignored");
            return self.reply_state(request);
        }
        if self.refused_when_fenced("SM_UNMON_ALL") {
            return self.reply_state(request);
        }
        let d = Deferred::UnmonAll {
            request,
            my_name: sanitize_my_name(my.my_name.as_bytes()),
            raw_my_name: my.my_name.as_bytes().to_vec(),
            callback: (my.my_prog, my.my_vers, my.my_proc),
        };
        self.run_or_defer(d);
    }

    fn unmon_all(
        &mut self,
        request: RequestId,
        my_name: &[u8],
        raw_my_name: &[u8],
        cb: (u32, u32, u32),
    ) {
        let (removed, files) = self
            .records
            .remove_where(|e| same_host(e.my_name(), my_name) && e.callback() == cb);
        if files.is_empty() {
            debug!("SM_UNMON_ALL: nothing registered");
            return self.reply_state(request);
        }
        let del_clients = removed
            .into_iter()
            .map(|r| (r.mon_name, raw_my_name.to_vec()))
            .collect();
        self.commit(
            request,
            files,
            Then::Unmon {
                what: "SM_UNMON_ALL",
                del_clients,
            },
        );
    }

    /// SM_SIMU_CRASH: behaves like a restart of this host once no write is in flight
    /// ([`Effect::Restart`], then [`Effect::Announce`]). Only from loopback and a
    /// privileged port.
    pub fn handle_simu_crash(&mut self, request: RequestId, peer: SocketAddr) {
        if !is_local(peer) || peer.port() >= 1024 {
            warn!(%peer, "SM_SIMU_CRASH refused: only from loopback and a privileged port");
            return self.reply(request, Reply::Crash);
        }
        if self.refused_when_fenced("SM_SIMU_CRASH") {
            return self.reply(request, Reply::Crash);
        }
        self.run_or_defer(Deferred::Crash { request });
    }

    /// Runs `d` now, or after the restart in progress.
    fn run_or_defer(&mut self, d: Deferred) {
        if self.crash.is_some() {
            return self.deferred.push_back(d);
        }
        match d {
            Deferred::Mon {
                request,
                file,
                record,
            } => self.mon(request, file, record),
            Deferred::Unmon {
                request,
                mon_name,
                my_name,
                callback,
            } => self.unmon(request, &mon_name, &my_name, callback),
            Deferred::UnmonAll {
                request,
                my_name,
                raw_my_name,
                callback,
            } => self.unmon_all(request, &my_name, &raw_my_name, callback),
            Deferred::Crash { request } => {
                self.crash = Some(Crash::Waiting(request));
                self.start_crash_if_idle();
            }
        }
    }

    fn start_crash_if_idle(&mut self) {
        if let Some(Crash::Waiting(request)) = self.crash
            && self.commits.is_empty()
        {
            self.crash = Some(Crash::Running(request));
            self.effects.push_back(Effect::Restart { request });
        }
    }

    /// The restart asked by [`Effect::Restart`] finished (or stopped half-way). Then the
    /// requests held back run.
    pub fn handle_restarted(&mut self, request: RequestId, result: Restarted) {
        if self.crash != Some(Crash::Running(request)) {
            return;
        }
        let name = &self.cfg.name;
        match result {
            Restarted::Done(state) => {
                self.records.clear();
                self.state = state;
                info!(instance = %name, state, "SM_SIMU_CRASH: state bumped, records moved to sm.bak/");
                self.effects.push_back(Effect::Announce { state });
            }
            Restarted::NotBumped(e) => warn!(instance = %name, "SM_SIMU_CRASH failed: {e}"),
            Restarted::NotRetired { state, error } => {
                // The new state is on disk and told to the kernel: answers carry it. The
                // records stay in sm/, monitored; nobody is notified.
                self.state = state;
                warn!(instance = %name, state, "SM_SIMU_CRASH: state bumped, but sm/ was not moved to sm.bak/ (its records stay monitored, no peer is notified): {error}");
            }
        }
        self.crash = None;
        self.reply(request, Reply::Crash);
        while self.crash.is_none()
            && let Some(d) = self.deferred.pop_front()
        {
            self.run_or_defer(d);
        }
    }

    /// SM_NOTIFY from `peer`: calls lockd back for every record that matches the sender by
    /// name or address and has not seen this state yet. Records whose name differs from the
    /// sender's and whose addresses are not known yet are looked up ([`Effect::LookUp`]) and
    /// matched by the sender's address then; later SM_NOTIFYs wait behind.
    pub fn handle_notify(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        sc: &StatChge<'_>,
    ) -> NotifyOutcome {
        let from = canonical(peer.ip());
        if !self.limiter.allow(from, now) {
            debug!(%peer, "SM_NOTIFY over the rate limit for this address; ignored");
            return NotifyOutcome::RateLimited;
        }
        let name = sc.mon_name.as_bytes();
        self.callout(
            CalloutKind::SmNotify,
            vec![
                name.to_vec(),
                from.to_string().into_bytes(),
                sc.state.to_string().into_bytes(),
            ],
        );
        if self.matches.len() >= MAX_PENDING_MATCHES {
            warn!(%peer, mon_name = %sc.mon_name, "SM_NOTIFY dropped: {MAX_PENDING_MATCHES} notifications already wait for name lookups");
            return NotifyOutcome::QueueFull;
        }
        let queued = !self.matches.is_empty();
        self.matches.push_back(MatchJob {
            peer,
            from,
            name: name.to_vec(),
            state: sc.state,
            remainder: None,
            waiting: None,
            queued,
        });
        self.advance_matches(now);
        NotifyOutcome::Accepted
    }

    /// Matches the queued SM_NOTIFYs in order, as far as the lookups done allow.
    fn advance_matches(&mut self, now: Instant) {
        while let Some(mut job) = self.matches.pop_front() {
            let names = match job.remainder.take() {
                Some(n) => n,
                None => {
                    let (matched, unknown) = self.match_now(now, &job);
                    let (peer, state) = (job.peer, job.state);
                    let mon_name = String::from_utf8_lossy(&job.name);
                    if job.queued {
                        info!(%peer, %mon_name, state, matched, "SM_NOTIFY (queued behind name lookups)");
                    } else {
                        info!(%peer, %mon_name, state, matched, "SM_NOTIFY");
                    }
                    if !unknown.is_empty() {
                        debug!(%peer, names = unknown.len(), "SM_NOTIFY: looking up monitored names to match the sender's address");
                    }
                    unknown
                }
            };
            if names.is_empty() {
                continue;
            }
            let mut waiting = match job.waiting.take() {
                Some(w) => w,
                None => {
                    let stale: HashSet<Vec<u8>> = names
                        .iter()
                        .filter(|n| self.names.fresh(n, now).is_none())
                        .cloned()
                        .collect();
                    for n in &stale {
                        self.start_lookup(now, n.clone());
                    }
                    stale
                }
            };
            waiting.retain(|n| self.resolving.contains_key(n));
            if !waiting.is_empty() {
                job.remainder = Some(names);
                job.waiting = Some(waiting);
                self.matches.push_front(job);
                return;
            }
            self.match_by_address(&job, &names);
        }
    }

    /// Matches an SM_NOTIFY against every record with what is known now: calls back the
    /// records it concerns; returns how many, and the (lower-case) names of the records whose
    /// addresses must be looked up first.
    ///
    /// Only the records that can match are looked at (the indexes of [`Records`]): those of
    /// the sender's host by name, those named by the sender's address, and the records whose
    /// name is not an address literal, by their addresses looked up (once per name, not per
    /// record). With address-literal names (the kernel's default) the cost does not grow with
    /// the number of records; with host names it grows with the number of names, for which
    /// the rule needs addresses that are fresh.
    fn match_now(&mut self, now: Instant, job: &MatchJob) -> (usize, HashSet<Vec<u8>>) {
        let records = &self.records;
        let same_host = records.same_host_as(&job.name);
        let ambiguous = short_name_is_ambiguous(
            &job.name,
            same_host.iter().map(|&i| records.get(i).mon_name()),
        );
        let mut candidates = same_host;
        candidates.extend(records.with_address(job.from));
        let mut unknown = HashSet::new();
        for name in records.hostnames() {
            if name.eq_ignore_ascii_case(&job.name) {
                // Matched by name, whatever its addresses.
                continue;
            }
            match self.names.fresh(name, now) {
                None => {
                    unknown.insert(name.to_vec());
                }
                Some(a) if a.contains(&job.from) => candidates.extend(records.named(name)),
                Some(_) => {}
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut matched = 0;
        let (records, names, effects) = (&mut self.records, &self.names, &mut self.effects);
        for i in candidates {
            let e = records.get_mut(i);
            let mon = e.mon_name();
            let literal = ip_literal(mon).map(|ip| vec![canonical(ip)]);
            let key = mon.to_ascii_lowercase();
            let known = literal.as_deref().or_else(|| names.fresh(&key, now));
            match notify_match(&job.name, mon, known, job.from, ambiguous) {
                NotifyMatch::Yes(how) => {
                    if how == NotifyMatch::NAME && known.is_some_and(|a| !a.contains(&job.from)) {
                        info!(peer = %job.peer, mon_name = %String::from_utf8_lossy(&job.name), "SM_NOTIFY matched by name from an address not known for that host");
                    }
                    matched += call_back(effects, e, job.state);
                }
                NotifyMatch::No => {}
                NotifyMatch::LookUp => {
                    unknown.insert(key);
                }
            }
        }
        (matched, unknown)
    }

    /// The second half of a matching: calls lockd back for the records of `names` whose host
    /// has the sender's address (as looked up; a name that did not resolve has none).
    fn match_by_address(&mut self, job: &MatchJob, names: &HashSet<Vec<u8>>) {
        let mon_name = String::from_utf8_lossy(&job.name);
        let records = &self.records;
        let ambiguous = short_name_is_ambiguous(
            &job.name,
            records
                .same_host_as(&job.name)
                .into_iter()
                .map(|i| records.get(i).mon_name()),
        );
        let mut chosen: Vec<u32> = names.iter().flat_map(|n| records.named(n)).collect();
        chosen.sort_unstable();
        let (records, cache, effects) = (&mut self.records, &self.names, &mut self.effects);
        let mut matched = 0;
        for i in chosen {
            let e = records.get_mut(i);
            let key = e.mon_name().to_ascii_lowercase();
            let known = cache.get(&key).unwrap_or(&[]);
            if let NotifyMatch::Yes(how) =
                notify_match(&job.name, e.mon_name(), Some(known), job.from, ambiguous)
            {
                debug!(peer = %job.peer, %mon_name, record = %String::from_utf8_lossy(e.mon_name()), "SM_NOTIFY matched by {how}");
                matched += call_back(effects, e, job.state);
            }
        }
        let (peer, state) = (job.peer, job.state);
        if matched > 0 {
            info!(%peer, %mon_name, state, matched, "SM_NOTIFY matched after looking up monitored names");
        } else {
            debug!(%peer, %mon_name, state, "SM_NOTIFY: no more records match the sender's address");
        }
    }
}

/// Calls lockd back for a record unless it has seen `state` already; 1 if called.
fn call_back(effects: &mut VecDeque<Effect>, e: &mut records::Entry, state: i32) -> usize {
    if e.last_state == Some(state) {
        return 0;
    }
    e.last_state = Some(state);
    let (prog, vers, proc_) = e.callback();
    effects.push_back(Effect::CallBack(Callback {
        mon_name: e.mon_name().to_vec(),
        state,
        priv_: e.priv_(),
        prog,
        vers,
        proc_,
    }));
    1
}

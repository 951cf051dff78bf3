//! Deterministic simulation of a small HA cluster (test tier 2): two or three nodes sharing one
//! service instance's state directory, the real NSM [`Core`] on each, the real store
//! ([`StateDir`], [`Committer::manual`]) over one [`SimDisk`], the real SM_NOTIFY
//! [`Scheduler`] for takeover announcements, many clients, and faults drawn from one `u64`
//! seed. Everything runs on one thread over a simulated clock; nothing reads the wall clock to
//! decide, maps are ordered, so a seed replays exactly.
//!
//! **What is real**: the core (every rule of SM_MON, SM_UNMON, SM_NOTIFY matching, callbacks,
//! SM_SIMU_CRASH, the fence refusal); the store (record writes through group commit, state
//! bumps, `retire`, loads, the removal of acknowledged peers from `sm.bak/`); the simulated disk
//! (power cuts that keep only fsynced data and entries of fsynced directories, injected `EIO`
//! and `ENOSPC`, a machine that stops in the middle of a store call); the notify scheduler
//! (window, backoff, budget).
//!
//! **What is modelled** (the sim's own driver, written after `instance.rs`, `service.rs` and
//! `nsm_notify::announce`, whose tokio and socket code cannot run here): carrying the core's effects out;
//! the takeover and resume steps (claim, `state(true)`, `retire`, load `sm/` and `sm.bak/`,
//! readiness, notify); the ownership epoch (a number in the sim standing for
//! `ownership.rs`'s file and lock, which need real files and `flock`): the driver reads it
//! before each request that writes and before removing a peer from `sm.bak/`, as the real
//! driver does; lockd's callback retries (`callback.rs`: five attempts); the network
//! (datagrams lost, duplicated, delayed and so reordered; partitions between the cluster and
//! a client); clients (lockd's SM_MON/SM_UNMON per client, one request at a time over
//! loopback, to the node serving the service; each client's statd rebooting and sending
//! SM_NOTIFY with a growing state until acknowledged; each client's statd and rpcbind answering
//! the service's SM_NOTIFYs). Node instances (each node's own directory) are not simulated:
//! only the service instance moves. One disk holds everything, so a power cut (or a machine
//! stop inside a store call) takes the whole cluster down; a process crash takes one node's
//! memory (its core, its queued commits, its notifier) and leaves the disk as it is.
//!
//! Invariants, checked after every step (and after every power cut, on what survived):
//! - an SM_MON answered `stat_succ` is on disk (`sm/<client>`) until the client unmonitors it
//!   or a takeover moves it; then the client is owed an SM_NOTIFY of the takeover's state and
//!   its `sm.bak/<client>` stays until the notifier removed it, which it does only after the
//!   client acknowledged or the budget ran out;
//! - every state number handed out (published, answered, sent) is odd; a bump is larger than
//!   every number handed out before; after a power cut the state file holds at least every
//!   number handed out before (so a takeover's bump is durable before its first SM_NOTIFY);
//! - no SM_NOTIFY leaves before the instance is ready; a fenced node sends no SM_NOTIFY, and
//!   its core asks for no write after it saw the fence;
//! - liveness, at the end with faults off: every client still owed a notification gets it (or
//!   the budget gave it up), and every client that reboots then is called back by lockd on the
//!   serving node for its registration.
//!
//! The core broke none of them. Three rules of the driver come from seeds that failed
//! without them; the daemon has all three now, and the driver does what the daemon does.
//! `NSMD_SIM_AS_TODAY=1`, `2`, `3` (or `all`) leaves that rule out, which reproduces the
//! daemon before that fix, kept so the findings stay visible (rule 1: seeds 190, 335; rule
//! 2: 222, 227, and 297 where a fenced node answers an SM_MON `stat_succ` after losing the
//! service; rule 3: 46, 263, 265):
//! 1. an announcement removes a peer from `sm.bak/` only if `sm/` was not retired since it
//!    loaded `sm.bak/` (`Committer::commit_unless_retired` with `StateDir::retires`, as
//!    `nsm_notify::announce` does); otherwise a peer that acknowledged the old state, was
//!    monitored again and moved to `sm.bak/` by a restart (SM_SIMU_CRASH) loses its new
//!    `sm.bak/` file to the removal the old announcement queued, and is never told of the new
//!    state. (A restart pauses the announcement while it runs; one that did nothing lets it go
//!    on; one that bumped without retiring announces the new state: the sim's own.)
//! 2. the committer reads the fence before each batch (and the fenced instance stops):
//!    otherwise a write queued before a forced takeover lands after the new owner's retire
//!    and deletes an `sm.bak/` file the new owner has to notify from. The daemon does this
//!    now (`Committer::checked` in `Instance::open` for a service instance and in the
//!    announce path's removals): a refused batch fails with `StoreError::Fenced`, so its
//!    SM_MONs answer `stat_fail` where the driver here drops the process (no answer); both
//!    write nothing and answer no `stat_succ`, and the fence watch silences the instance;
//! 3. a record file that cannot be read (`SkipReason::Unreadable`, a transient `EIO`) fails
//!    the load, and the start or the announcement is tried again, as the daemon does
//!    (`LoadReport::unreadable`); without it the instance serves without that client (no
//!    callback when it reboots) or announces without that peer (left in `sm.bak/` until the
//!    next restart).
//!
//! `NSMD_SIM_SEED=<n>` replays one seed; `NSMD_SIM_SEEDS=<count>` runs seeds 0..count
//! (default [`DEFAULT_SEEDS`]); `NSMD_SIM_TRACE=<lines>` prints more of a failing seed's trace.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nsm_notify::{AckResult, Action, Policy, Scheduler};
use nsm_statd::core::{Core, CoreConfig, Effect, Reply, RequestId, Restarted};
use nsm_store::{
    Committer, Dir, Disk, ManualBatches, Record, Rng, SimDisk, SkipReason, StateDir, StoreError,
    SyncMode,
};
use nsm_xdr::Opaque;
use nsm_xdr::nsm::{Mon, MonId, MyId, NLM_PROG, Res, StatChge};

/// Seeds run by default (see the README for the measured rate).
const DEFAULT_SEEDS: u64 = 10_000;
/// Steps per seed before the quiet phase.
const STEPS: usize = 120;
const SVC_DIR: &str = "/srv/nfs/svc-a/statd";
const SVC_NAME: &str = "svc-a.example";
const LOCAL: &str = "127.0.0.1:700";
/// The notify budget of an announcement (the real default is 15 minutes; shorter here so
/// that seeds see it run out).
const BUDGET: Duration = Duration::from_secs(40);

fn client_name(c: usize) -> String {
    format!("c{c}.example")
}

fn client_ip(c: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, 0, c as u8 + 1))
}

/// A datagram (or a loopback request) in flight.
#[derive(Debug, Clone)]
enum Msg {
    /// lockd on `node` asks its statd (loopback TCP: never lost, but late).
    Lockd {
        node: usize,
        client: usize,
        seq: u64,
        op: Op,
    },
    /// A client's statd rebooted: SM_NOTIFY to the service address.
    ClientNotify { client: usize, state: i32 },
    /// The reply to it.
    ClientNotifyAck { client: usize, state: i32 },
    /// The notifier asks the client's rpcbind for statd's port.
    PortQuery {
        node: usize,
        run: u64,
        peer: usize,
        client: usize,
    },
    PortReply {
        node: usize,
        run: u64,
        peer: usize,
        client: usize,
    },
    /// The driver's RPC timeout (5 s) for that port lookup.
    PortTimeout {
        node: usize,
        run: u64,
        peer: usize,
        client: usize,
    },
    /// The service's SM_NOTIFY to a client's statd.
    SvcNotify {
        node: usize,
        run: u64,
        peer: usize,
        client: usize,
        name_index: usize,
        state: i32,
    },
    SvcNotifyAck {
        node: usize,
        run: u64,
        peer: usize,
        name_index: usize,
    },
    /// A name lookup the core asked for finishes.
    Resolved {
        node: usize,
        life: u64,
        name: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Mon(u8),
    Unmon,
}

type CommitFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

enum Pending {
    Sm(nsm_statd::core::CommitId, CommitFuture),
    /// A peer's removal from sm.bak/ after it finished.
    Bak(CommitFuture),
}

/// An announcement in progress: the real scheduler, driven by the sim.
struct Notifier {
    run: u64,
    sched: Scheduler,
    state: i32,
    /// peer id -> (file in sm.bak/, client).
    peers: Vec<(String, Option<usize>)>,
    /// `StateDir::retires` before `sm.bak/` was loaded: a removal is made only if `sm/` was
    /// not retired since (the daemon's rule, `nsm_notify::announce`).
    retires: u64,
}

/// One nsmd process serving the service instance.
struct Active {
    core: Core,
    dir: Arc<StateDir<SimDisk>>,
    committer: Committer<SimDisk>,
    batches: ManualBatches<SimDisk>,
    pending: Vec<Pending>,
    /// request id -> (client, seq, op)
    requests: BTreeMap<u64, (usize, u64, Op)>,
    next_request: u64,
    epoch: u64,
    ready: bool,
    notifier: Option<Notifier>,
    /// An announcement of this state is to start (retried while `sm.bak/` cannot be read).
    announce: Option<i32>,
    /// The core saw the fence: it must ask for no write from then on.
    saw_fence: bool,
}

struct Node {
    /// Bumped at each process start: late events of an earlier life are dropped.
    life: u64,
    active: Option<Active>,
    lockd_alive: bool,
    /// Callbacks waiting for lockd: (callback, attempts left).
    callbacks: Vec<(nsm_statd::callback::Callback, u32)>,
    /// What lockd here was told: client -> states.
    called_back: BTreeMap<Vec<u8>, BTreeSet<i32>>,
}

#[derive(Default)]
struct Client {
    /// lockd's request in flight: (seq, op, node, sent at).
    outstanding: Option<(u64, Op, usize, Duration)>,
    /// The registration acknowledged `stat_succ` (cookie, state answered) and not
    /// unmonitored nor moved since.
    acked: Option<(u8, i32)>,
    /// A takeover moved an acknowledged registration: the client is owed an SM_NOTIFY of at
    /// least this state.
    owed: Option<i32>,
    /// The client's statd: its state, and whether its SM_NOTIFY was acknowledged.
    state: i32,
    notify_acked: bool,
    last_notify: Duration,
    /// The highest state of the service it was told.
    svc_seen: i32,
    /// Cut from the cluster.
    partitioned: bool,
}

impl Client {
    /// lockd gives up on its request without an answer: an SM_UNMON may still have
    /// happened, so the registration is no longer required on disk.
    fn abandon(&mut self) {
        if let Some((_, Op::Unmon, _, _)) = self.outstanding.take() {
            self.acked = None;
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    mons_acked: u64,
    mons_failed: u64,
    takeovers: u64,
    forced: u64,
    resumes: u64,
    crashes: u64,
    power_cuts: u64,
    simu_crashes: u64,
    notifies_acked: u64,
    gave_up: u64,
    callbacks: u64,
    lookups: u64,
    lost: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    disk: SimDisk,
    mode: SyncMode,
    rate: u64,
    base: Instant,
    now: Duration,
    seq: u64,
    net: BTreeMap<(Duration, u64), Msg>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    /// The owner epoch in the (modelled) ownership file, and the node that holds it.
    epoch: u64,
    owner: Option<usize>,
    /// The owner's takeover finished (the real nsmd writes its resume marker in /run then):
    /// a process restart there resumes; after a failed takeover or a reboot, nothing does.
    resumable: bool,
    /// The largest state number handed out.
    handed_out: i32,
    next_run: u64,
    /// Network faults on.
    loss: u64,
    dup: u64,
    faults: bool,
    /// `NSMD_SIM_AS_TODAY`: which of the driver's three rules to leave out (the daemon
    /// before that fix; see the module documentation).
    as_today: [bool; 3],
    trace: Vec<String>,
    counts: Counts,
}

fn svc() -> PathBuf {
    PathBuf::from(SVC_DIR)
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed ^ 0x0057_A7D5_11CE_0001);
        let disk = SimDisk::new(rng.next_u64());
        for p in ["/srv", "/srv/nfs", "/srv/nfs/svc-a"] {
            disk.mkdir(Path::new(p), 0o755).unwrap();
        }
        disk.syncfs(&disk.open_dir(Path::new("/")).unwrap())
            .unwrap();
        let mode = [
            SyncMode::FsyncEach,
            SyncMode::FsyncParallel,
            SyncMode::SyncFs,
        ][rng.below(3) as usize];
        let rate = [0, 0, 5_000, 30_000][rng.below(4) as usize];
        let n_nodes = 2 + rng.below(2) as usize;
        let n_clients = 3 + rng.below(6) as usize;
        let nodes = (0..n_nodes)
            .map(|_| Node {
                life: 0,
                active: None,
                lockd_alive: true,
                callbacks: Vec::new(),
                called_back: BTreeMap::new(),
            })
            .collect();
        let clients = (0..n_clients)
            .map(|_| Client {
                state: 1,
                notify_acked: true,
                ..Client::default()
            })
            .collect();
        let loss = [0, 50, 200][rng.below(3) as usize];
        let dup = [0, 50][rng.below(2) as usize];
        Self {
            seed,
            rng,
            disk,
            mode,
            rate,
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            net: BTreeMap::new(),
            nodes,
            clients,
            epoch: 0,
            owner: None,
            resumable: false,
            handed_out: 0,
            next_run: 0,
            loss,
            dup,
            faults: true,
            as_today: as_today(),
            trace: Vec::new(),
            counts: Counts::default(),
        }
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    fn log(&mut self, line: String) {
        let ms = self.now.as_millis();
        self.trace.push(format!("[{ms:>7} ms] {line}"));
    }

    fn fail(&self, why: String) -> String {
        let start = self
            .trace
            .len()
            .saturating_sub(env_u64("NSMD_SIM_TRACE").unwrap_or(50) as usize);
        let mut out = format!(
            "seed {}: {why}\n({} nodes, {} clients, sync mode {:?}, disk fault rate {}/1e6, loss {}/1000, dup {}/1000)\nlast steps:\n",
            self.seed,
            self.nodes.len(),
            self.clients.len(),
            self.mode,
            self.rate,
            self.loss,
            self.dup
        );
        for l in &self.trace[start..] {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&format!(
            "replay: NSMD_SIM_SEED={} cargo test --release -p nsm-statd --test sim",
            self.seed
        ));
        out
    }

    /// Sends `msg` to arrive after `delay`; over UDP (`lossy`) it may be lost or duplicated.
    fn send(&mut self, msg: Msg, lossy: bool) {
        let copies = if lossy && self.faults {
            if self.rng.per_mille(self.loss) {
                self.counts.lost += 1;
                0
            } else if self.rng.per_mille(self.dup) {
                2
            } else {
                1
            }
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if lossy && self.faults {
                Duration::from_millis(1 + self.rng.below(3000))
            } else {
                Duration::from_millis(1 + self.rng.below(20))
            };
            self.seq += 1;
            self.net.insert((self.now + delay, self.seq), msg.clone());
        }
    }

    // ---- the service on a node -------------------------------------------------------------

    fn fence_of(&self, node: usize) -> Option<String> {
        let a = self.nodes[node].active.as_ref()?;
        (a.epoch != self.epoch).then(|| {
            format!(
                "epoch {} is no longer this node's ({} now)",
                a.epoch, self.epoch
            )
        })
    }

    /// Opens the service directory for `node` and starts its core: a takeover (`bump`: claim
    /// a new epoch, bump, retire) or a resume (same epoch and state, after a process restart).
    fn start(&mut self, node: usize, bump: bool) -> Result<bool, String> {
        self.nodes[node].life += 1;
        self.nodes[node].active = None;
        self.nodes[node].callbacks.clear();
        let what = if bump { "takeover" } else { "resume" };
        let dir = match StateDir::open_on(self.disk.clone(), &svc()) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                self.log(format!("node {node}: {what}: open failed: {e}"));
                return Ok(false);
            }
        };
        let epoch = if bump {
            self.epoch += 1;
            self.owner = Some(node);
            self.resumable = false;
            self.epoch
        } else {
            self.epoch
        };
        let state = match dir.state(bump) {
            Ok(s) => s,
            Err(e) => {
                self.log(format!("node {node}: {what}: state({bump}) failed: {e}"));
                return Ok(false);
            }
        };
        if state % 2 == 0 {
            return Err(self.fail(format!("node {node}: {what}: even state {state}")));
        }
        if bump && state <= self.handed_out {
            return Err(self.fail(format!(
                "node {node}: takeover bumped to {state}, not above {} handed out before",
                self.handed_out
            )));
        }
        if bump {
            if let Err(e) = dir.retire() {
                self.log(format!(
                    "node {node}: takeover: state {state}, retire failed: {e}"
                ));
                // The state is bumped (and may be handed out by the next takeover's floor).
                self.handed_out = self.handed_out.max(state);
                return Ok(false);
            }
            // Every acknowledged registration moved to sm.bak/: owed a notification.
            for c in &mut self.clients {
                if c.acked.take().is_some() {
                    c.owed = Some(c.owed.map_or(state, |o| o.max(state)));
                }
            }
        }
        let Some(loaded) = self.load(node, what, &dir, Dir::Sm) else {
            return Ok(false);
        };
        let retires = dir.retires();
        let Some(bak) = self.load(node, what, &dir, Dir::Bak) else {
            return Ok(false);
        };
        let core = Core::new(
            CoreConfig {
                name: "svc-a".into(),
                notify_rate: 10,
                service_address: Some("192.0.2.10".into()),
            },
            state,
            loaded.clone(),
        );
        let (committer, batches) = Committer::manual(Arc::clone(&dir), self.mode);
        self.log(format!(
            "node {node}: {what} (epoch {epoch}, state {state}, {} in sm/, {} in sm.bak/)",
            loaded.len(),
            bak.len()
        ));
        let notifier = self.notifier(state, bak, retires);
        self.nodes[node].active = Some(Active {
            core,
            dir,
            committer,
            batches,
            pending: Vec::new(),
            requests: BTreeMap::new(),
            next_request: 0,
            epoch,
            ready: false,
            notifier: Some(notifier),
            announce: None,
            saw_fence: false,
        });
        self.resumable = true;
        if bump {
            self.counts.takeovers += 1;
        } else {
            self.counts.resumes += 1;
        }
        self.effects(node)?;
        Ok(true)
    }

    /// Loads `sm/` or `sm.bak/`; `None` when it failed, or when a file could not be read
    /// (a record skipped for a transient read error would be neither monitored nor notified).
    fn load(
        &mut self,
        node: usize,
        what: &str,
        dir: &StateDir<SimDisk>,
        d: Dir,
    ) -> Option<Vec<(String, Record)>> {
        match dir.load(d) {
            Ok((r, report)) => {
                let unreadable = report
                    .skipped
                    .iter()
                    .find(|s| matches!(s.reason, SkipReason::Unreadable(_)));
                match unreadable {
                    Some(s) if !self.as_today[2] => {
                        let line = format!(
                            "node {node}: {what}: {} unreadable: {}",
                            s.path.display(),
                            s.reason
                        );
                        self.log(line);
                        None
                    }
                    Some(s) => {
                        let line = format!(
                            "node {node}: {what}: {} unreadable, skipped (as the daemon does today): {}",
                            s.path.display(),
                            s.reason
                        );
                        self.log(line);
                        Some(r)
                    }
                    None => Some(r),
                }
            }
            Err(e) => {
                self.log(format!(
                    "node {node}: {what}: load {} failed: {e}",
                    d.name()
                ));
                None
            }
        }
    }

    fn notifier(&mut self, state: i32, bak: Vec<(String, Record)>, retires: u64) -> Notifier {
        let mut files: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for (f, r) in bak {
            files.entry(f).or_default().push(r);
        }
        let mut sched = Scheduler::new(Policy {
            budget: Some(BUDGET),
            window: 4,
            ..Policy::default()
        });
        let mut peers = Vec::new();
        for f in files.keys() {
            sched.add_peer(vec![SVC_NAME.to_owned()]);
            let client = (0..self.clients.len()).find(|&c| client_name(c) == *f);
            peers.push((f.clone(), client));
        }
        self.next_run += 1;
        Notifier {
            run: self.next_run,
            sched,
            state,
            peers,
            retires,
        }
    }

    /// Carries out what the core of `node` decided (after `instance.rs`).
    fn effects(&mut self, node: usize) -> Result<(), String> {
        // The core asks for the lookups of one matching in its hash order: sent sorted, so
        // that the seed's draws for them do not depend on it.
        let mut lookups = Vec::new();
        let r = self.carry_out(node, &mut lookups);
        lookups.sort();
        lookups.dedup();
        let life = self.nodes[node].life;
        for name in lookups {
            self.counts.lookups += 1;
            self.send(Msg::Resolved { node, life, name }, true);
        }
        r
    }

    fn carry_out(&mut self, node: usize, lookups: &mut Vec<Vec<u8>>) -> Result<(), String> {
        loop {
            let Some(a) = self.nodes[node].active.as_mut() else {
                return Ok(());
            };
            let Some(e) = a.core.poll_effect() else {
                return Ok(());
            };
            match e {
                Effect::Commit { id, file, records } => {
                    if a.saw_fence {
                        return Err(self.fail(format!(
                            "node {node}: a fenced core asked to write sm/{file}"
                        )));
                    }
                    let line = format!("node {node}: commit sm/{file} ({} records)", records.len());
                    let f = Box::pin(a.committer.commit(Dir::Sm, file, records));
                    a.pending.push(Pending::Sm(id, f));
                    self.log(line);
                }
                Effect::Reply { request, reply } => {
                    let Some((client, seq, op)) = a.requests.remove(&request.0) else {
                        continue;
                    };
                    self.reply(node, client, seq, op, reply)?;
                }
                Effect::CallBack(cb) => self.nodes[node].callbacks.push((cb, 5)),
                Effect::LookUp(name) => lookups.push(name),
                Effect::Callout { .. } => {}
                Effect::Restart { request } => {
                    // The announcement in progress pauses while the restart runs (it is
                    // synchronous here); the removals from sm.bak/ it queued stay queued and
                    // are made only if nothing was retired since its load (`peer_done`).
                    let stopped = a.notifier.take();
                    let dir = Arc::clone(&a.dir);
                    let result = match dir.state(true) {
                        Err(e) => Restarted::NotBumped(e.to_string()),
                        Ok(state) => match dir.retire() {
                            Ok(_) => Restarted::Done(state),
                            Err(e) => Restarted::NotRetired {
                                state,
                                error: e.to_string(),
                            },
                        },
                    };
                    self.log(format!("node {node}: SM_SIMU_CRASH restart: {result:?}"));
                    match &result {
                        Restarted::Done(s) | Restarted::NotRetired { state: s, .. } => {
                            self.handed(*s, "SM_SIMU_CRASH bump")?;
                        }
                        Restarted::NotBumped(_) => {}
                    }
                    if let Restarted::Done(s) = result {
                        for c in &mut self.clients {
                            if c.acked.take().is_some() {
                                c.owed = Some(c.owed.map_or(s, |o| o.max(s)));
                            }
                        }
                    }
                    let done = matches!(result, Restarted::Done(_));
                    if let Some(a) = self.nodes[node].active.as_mut() {
                        a.core.handle_restarted(request, result);
                    }
                    if let Some(a) = self.nodes[node].active.as_mut()
                        && let Some(old) = stopped
                    {
                        match a.core.state() {
                            // Nothing changed: the stopped announcement goes on.
                            s if s == old.state => a.notifier = Some(old),
                            // Bumped but sm/ not moved: no Announce follows; the peers in
                            // sm.bak/ are told the state now in force.
                            s if !done => a.announce = Some(s),
                            _ => {}
                        }
                    }
                    self.try_announce(node);
                }
                Effect::Announce { state } => {
                    a.notifier = None;
                    a.announce = Some(state);
                    self.try_announce(node);
                }
                Effect::PublishState(s) => self.handed(s, "published")?,
            }
        }
    }

    /// Starts the announcement due on `node`, if `sm.bak/` can be read now.
    fn try_announce(&mut self, node: usize) {
        let Some(a) = self.nodes[node].active.as_ref() else {
            return;
        };
        let (Some(state), None) = (a.announce, a.notifier.as_ref()) else {
            return;
        };
        let dir = Arc::clone(&a.dir);
        let retires = dir.retires();
        if let Some(bak) = self.load(node, "announce", &dir, Dir::Bak) {
            let n = self.notifier(state, bak, retires);
            if let Some(a) = self.nodes[node].active.as_mut() {
                a.notifier = Some(n);
                a.announce = None;
            }
        }
    }

    /// A state number handed out: odd, and counted for the durability check.
    fn handed(&mut self, s: i32, what: &str) -> Result<(), String> {
        if s % 2 == 0 || s < 1 {
            return Err(self.fail(format!("{what}: state {s} is not odd")));
        }
        self.handed_out = self.handed_out.max(s);
        Ok(())
    }

    fn reply(
        &mut self,
        node: usize,
        client: usize,
        seq: u64,
        op: Op,
        reply: Reply,
    ) -> Result<(), String> {
        let c = &self.clients[client];
        if c.outstanding.map(|o| o.0) != Some(seq) {
            return Ok(()); // lockd gave up on it
        }
        match (op, reply) {
            (Op::Mon(cookie), Reply::Mon { result, .. }) => {
                if result.res_stat == Res::StatSucc {
                    self.handed(result.state, "SM_MON reply")?;
                    self.counts.mons_acked += 1;
                    self.clients[client].acked = Some((cookie, result.state));
                    self.log(format!(
                        "node {node}: SM_MON c{client} cookie {cookie} -> stat_succ {}",
                        result.state
                    ));
                } else {
                    self.counts.mons_failed += 1;
                    self.log(format!("node {node}: SM_MON c{client} -> stat_fail"));
                }
            }
            (Op::Unmon, Reply::Unmon(st)) => {
                self.handed(st.state, "SM_UNMON reply")?;
                self.clients[client].acked = None;
                self.log(format!("node {node}: SM_UNMON c{client} -> {}", st.state));
            }
            (op, r) => return Err(self.fail(format!("{op:?} answered with {r:?}"))),
        }
        self.clients[client].outstanding = None;
        Ok(())
    }

    /// A process of `node` dies: its memory is gone, the disk stays.
    fn crash(&mut self, node: usize) {
        if self.nodes[node].active.is_some() {
            self.log(format!("node {node}: process crash"));
            self.counts.crashes += 1;
        }
        self.drop_process(node);
    }

    /// The instance on `node` stops (crash, release, fence): what it held in memory is gone.
    fn drop_process(&mut self, node: usize) {
        self.nodes[node].active = None;
        self.nodes[node].callbacks.clear();
        self.nodes[node].life += 1;
        for c in &mut self.clients {
            if c.outstanding.is_some_and(|o| o.2 == node) {
                c.abandon(); // lockd's connection reset: it will ask again
            }
        }
    }

    /// Runs a batch of `node`'s queued commits and reports the finished ones to the core.
    fn disk_step(&mut self, node: usize) -> Result<(), String> {
        let max = 1 + self.rng.below(4) as usize;
        let fenced = self.fence_of(node).is_some();
        if fenced && !self.as_today[1] && self.nodes[node].active.is_some() {
            // The committer reads the fence before each batch: a node that lost the service
            // writes nothing more, and its fence watch stops the instance.
            self.log(format!(
                "node {node}: fenced before a batch: the instance stops"
            ));
            self.drop_process(node);
            return Ok(());
        }
        let Some(a) = self.nodes[node].active.as_mut() else {
            return Ok(());
        };
        let n = a.batches.run(max);
        if n == 0 {
            return Ok(());
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut done = Vec::new();
        a.pending.retain_mut(|p| {
            let f = match p {
                Pending::Sm(_, f) | Pending::Bak(f) => f,
            };
            match f.as_mut().poll(&mut cx) {
                Poll::Ready(r) => {
                    if let Pending::Sm(id, _) = p {
                        done.push((*id, r));
                    }
                    false
                }
                Poll::Pending => true,
            }
        });
        self.log(format!(
            "node {node}: batch of {n}{}",
            if fenced { " (fenced)" } else { "" }
        ));
        for (id, r) in done {
            if let Some(a) = self.nodes[node].active.as_mut() {
                a.core.handle_committed(id, r);
            }
            self.effects(node)?;
        }
        Ok(())
    }

    /// lockd's request reaches statd on `node`.
    fn lockd_request(
        &mut self,
        node: usize,
        client: usize,
        seq: u64,
        op: Op,
    ) -> Result<(), String> {
        let fence = self.fence_of(node);
        let Some(a) = self.nodes[node].active.as_mut() else {
            return Ok(()); // nobody listens: lockd times out
        };
        a.saw_fence |= fence.is_some();
        a.core.set_fenced(fence);
        let id = a.next_request;
        a.next_request += 1;
        a.requests.insert(id, (client, seq, op));
        let peer: SocketAddr = LOCAL.parse().unwrap();
        let name = client_name(client);
        let my = MyId {
            my_name: Opaque::new(SVC_NAME.as_bytes()).unwrap(),
            my_prog: NLM_PROG,
            my_vers: 4,
            my_proc: 16,
        };
        let mon_id = MonId {
            mon_name: Opaque::new(name.as_bytes()).unwrap(),
            my_id: my,
        };
        match op {
            Op::Mon(cookie) => a.core.handle_mon(
                RequestId(id),
                peer,
                &Mon {
                    mon_id,
                    priv_: [cookie; 16],
                },
            ),
            Op::Unmon => a.core.handle_unmon(RequestId(id), peer, &mon_id),
        }
        self.effects(node)
    }

    fn simu_crash(&mut self, node: usize) -> Result<(), String> {
        let fence = self.fence_of(node);
        let Some(a) = self.nodes[node].active.as_mut() else {
            return Ok(());
        };
        a.saw_fence |= fence.is_some();
        a.core.set_fenced(fence);
        let id = a.next_request;
        a.next_request += 1;
        a.core
            .handle_simu_crash(RequestId(id), "127.0.0.1:800".parse().unwrap());
        self.log(format!("node {node}: SM_SIMU_CRASH"));
        self.counts.simu_crashes += 1;
        self.effects(node)
    }

    // ---- the network -------------------------------------------------------------------------

    fn deliver(&mut self, msg: Msg) -> Result<(), String> {
        match msg {
            Msg::Lockd {
                node,
                client,
                seq,
                op,
            } => self.lockd_request(node, client, seq, op)?,
            Msg::ClientNotify { client, state } => {
                if self.clients[client].partitioned {
                    return Ok(());
                }
                // The service address leads to the node that serves it.
                let Some(node) = self.serving() else {
                    return Ok(());
                };
                let now = self.at();
                let Some(a) = self.nodes[node].active.as_mut() else {
                    return Ok(());
                };
                let name = client_name(client);
                let sc = StatChge {
                    mon_name: Opaque::new(name.as_bytes()).unwrap(),
                    state,
                };
                a.core
                    .handle_notify(now, SocketAddr::new(client_ip(client), 920), &sc);
                self.effects(node)?;
                self.send(Msg::ClientNotifyAck { client, state }, true);
            }
            Msg::ClientNotifyAck { client, state } => {
                let c = &mut self.clients[client];
                if !c.partitioned && c.state == state {
                    c.notify_acked = true;
                }
            }
            Msg::PortQuery {
                node,
                run,
                peer,
                client,
            } => {
                if !self.clients[client].partitioned {
                    self.send(
                        Msg::PortReply {
                            node,
                            run,
                            peer,
                            client,
                        },
                        true,
                    );
                }
            }
            Msg::PortReply {
                node,
                run,
                peer,
                client,
            } => {
                if self.clients[client].partitioned {
                    return Ok(());
                }
                let now = self.at();
                if let Some(n) = self.notifier_of(node, run) {
                    let addr = SocketAddr::new(client_ip(client), 111);
                    n.sched.on_port(peer, addr, Ok(Some(920)), now);
                }
            }
            Msg::PortTimeout {
                node,
                run,
                peer,
                client,
            } => {
                // Ignored unless that lookup is still outstanding.
                let now = self.at();
                if let Some(n) = self.notifier_of(node, run) {
                    let addr = SocketAddr::new(client_ip(client), 111);
                    let e = format!("rpcbind on {addr} did not answer within 5 s");
                    n.sched.on_port(peer, addr, Err(e), now);
                }
            }
            Msg::SvcNotify {
                node,
                run,
                peer,
                client,
                name_index,
                state,
            } => {
                let c = &mut self.clients[client];
                if c.partitioned {
                    return Ok(());
                }
                c.svc_seen = c.svc_seen.max(state);
                self.send(
                    Msg::SvcNotifyAck {
                        node,
                        run,
                        peer,
                        name_index,
                    },
                    true,
                );
            }
            Msg::SvcNotifyAck {
                node,
                run,
                peer,
                name_index,
            } => {
                let now = self.at();
                let Some(n) = self.notifier_of(node, run) else {
                    return Ok(());
                };
                if n.sched.on_ack(peer, name_index, now) == AckResult::Done {
                    self.counts.notifies_acked += 1;
                    self.peer_done(node, peer, "acknowledged")?;
                }
            }
            Msg::Resolved { node, life, name } => {
                if self.nodes[node].life != life {
                    return Ok(());
                }
                let now = self.at();
                let Some(a) = self.nodes[node].active.as_mut() else {
                    return Ok(());
                };
                let addrs: Vec<IpAddr> = (0..self.clients.len())
                    .filter(|&c| client_name(c).as_bytes().eq_ignore_ascii_case(&name))
                    .map(client_ip)
                    .collect();
                a.core.handle_resolved(now, &name, addrs);
                self.effects(node)?;
            }
        }
        Ok(())
    }

    fn serving(&self) -> Option<usize> {
        // The node that holds the service address: the owner, if its process runs.
        let o = self.owner?;
        self.nodes[o].active.as_ref().map(|_| o)
    }

    fn notifier_of(&mut self, node: usize, run: u64) -> Option<&mut Notifier> {
        let a = self.nodes[node].active.as_mut()?;
        a.notifier.as_mut().filter(|n| n.run == run)
    }

    /// A peer finished (acknowledged or given up): removed from sm.bak/ (as `nsm_notify::announce`), unless
    /// the node is fenced.
    fn peer_done(&mut self, node: usize, peer: usize, how: &str) -> Result<(), String> {
        let fence = self.fence_of(node);
        let Some(a) = self.nodes[node].active.as_mut() else {
            return Ok(());
        };
        let Some(n) = a.notifier.as_ref() else {
            return Ok(());
        };
        let (file, client) = n.peers[peer].clone();
        let state = n.state;
        if fence.is_some() {
            self.log(format!("node {node}: {file} {how}, not removed (fenced)"));
            return Ok(());
        }
        let f = if self.as_today[0] {
            Box::pin(a.committer.commit(Dir::Bak, file.clone(), Vec::new())) as _
        } else {
            Box::pin(a.committer.commit_unless_retired(
                Dir::Bak,
                file.clone(),
                Vec::new(),
                n.retires,
            )) as _
        };
        a.pending.push(Pending::Bak(f));
        self.log(format!(
            "node {node}: sm.bak/{file} {how} (state {state}): removing"
        ));
        if let Some(c) = client {
            let seen = self.clients[c].svc_seen;
            if how == "acknowledged" && seen < state {
                return Err(self.fail(format!(
                    "sm.bak/{file} removed as acknowledged, but c{c} saw state {seen} < {state}"
                )));
            }
            let cl = &mut self.clients[c];
            // Out of budget or acknowledged: no longer owed by this announcement.
            if cl.owed.is_some_and(|o| o <= state) {
                cl.owed = None;
            }
            // A registration a half-done retire moved to sm.bak/ is told of a later state:
            // the client reclaims and lockd monitors it again.
            if how == "acknowledged" && cl.acked.is_some_and(|(_, s)| s < state) && !self.in_sm(c) {
                self.clients[c].acked = None;
            }
        }
        Ok(())
    }

    /// Timers: notifiers, the cores' lookups, lockd's callbacks, clients' retransmissions.
    fn timers(&mut self) -> Result<(), String> {
        let now = self.at();
        for node in 0..self.nodes.len() {
            if let Some(a) = self.nodes[node].active.as_mut()
                && a.core.poll_timeout().is_some_and(|t| t <= now)
            {
                a.core.handle_timeout(now);
                self.effects(node)?;
            }
            self.try_announce(node);
            self.poll_notifier(node)?;
            self.callbacks(node);
        }
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if !cl.notify_acked && self.now >= cl.last_notify + Duration::from_secs(2) {
                let state = cl.state;
                self.clients[c].last_notify = self.now;
                self.send(Msg::ClientNotify { client: c, state }, true);
            }
            if let Some((_, _, _, sent)) = self.clients[c].outstanding
                && self.now >= sent + Duration::from_secs(60)
            {
                self.clients[c].abandon(); // lockd's RPC timed out
            }
        }
        Ok(())
    }

    fn poll_notifier(&mut self, node: usize) -> Result<(), String> {
        let now = self.at();
        let fence = self.fence_of(node);
        let Some(a) = self.nodes[node].active.as_mut() else {
            return Ok(());
        };
        if !a.ready {
            return Ok(());
        }
        let Some(n) = a.notifier.as_mut() else {
            return Ok(());
        };
        if fence.is_some() {
            // The real notifier stops sending once the fence check fails.
            return Ok(());
        }
        if n.sched.next_wake().is_some_and(|w| w > now) {
            return Ok(());
        }
        let (run, state) = (n.run, n.state);
        let actions = n.sched.poll(now);
        let peers = n.peers.clone();
        for act in actions {
            match act {
                Action::Resolve(p) => {
                    let r = match peers[p].1 {
                        Some(c) => Ok(vec![SocketAddr::new(client_ip(c), 111)]),
                        None => Err("no such host".to_owned()),
                    };
                    if let Some(n) = self.notifier_of(node, run) {
                        n.sched.on_resolved(p, r, now);
                    }
                }
                Action::GetPort(p, _) => {
                    if let Some(c) = peers[p].1 {
                        self.seq += 1;
                        let due = self.now + Duration::from_secs(5);
                        let t = Msg::PortTimeout {
                            node,
                            run,
                            peer: p,
                            client: c,
                        };
                        self.net.insert((due, self.seq), t);
                        self.send(
                            Msg::PortQuery {
                                node,
                                run,
                                peer: p,
                                client: c,
                            },
                            true,
                        );
                    }
                }
                Action::SendNotify {
                    peer, name_index, ..
                } => {
                    // A takeover's bump is durable before its first SM_NOTIFY: checked at
                    // every power cut against the largest number handed out.
                    self.handed(state, "SM_NOTIFY")?;
                    if let Some(c) = peers[peer].1 {
                        self.send(
                            Msg::SvcNotify {
                                node,
                                run,
                                peer,
                                client: c,
                                name_index,
                                state,
                            },
                            true,
                        );
                    }
                }
                Action::GiveUp(p) => {
                    self.counts.gave_up += 1;
                    self.peer_done(node, p, "given up (budget)")?;
                }
            }
        }
        Ok(())
    }

    /// lockd's callback worker on `node` (after `callback.rs`: a few attempts, then given up).
    fn callbacks(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        if n.callbacks.is_empty() {
            return;
        }
        if n.lockd_alive {
            for (cb, _) in n.callbacks.drain(..) {
                n.called_back
                    .entry(cb.mon_name.clone())
                    .or_default()
                    .insert(cb.state);
                self.counts.callbacks += 1;
            }
        } else {
            for cb in &mut n.callbacks {
                cb.1 -= 1;
            }
            n.callbacks.retain(|c| c.1 > 0);
        }
    }

    // ---- invariants --------------------------------------------------------------------------

    /// The service directory as the disk holds it now: (dir, file) -> records' lines.
    fn on_disk(&self) -> (BTreeMap<(String, String), String>, Option<i32>) {
        let mut files = BTreeMap::new();
        let mut state = None;
        let Ok(tree) = self.disk.tree(&svc()) else {
            return (files, None);
        };
        for (p, data) in tree {
            let Some(data) = data else { continue };
            let rel = p.strip_prefix(SVC_DIR).unwrap();
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            match parts.as_slice() {
                [f] if f == "state" => {
                    state = data
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()));
                }
                [d, f] if !f.starts_with('.') => {
                    files.insert(
                        (d.clone(), f.clone()),
                        String::from_utf8_lossy(&data).into(),
                    );
                }
                _ => {}
            }
        }
        (files, state)
    }

    /// Whether `sm/` holds client `c`'s registration now.
    fn in_sm(&self, c: usize) -> bool {
        let (files, _) = self.on_disk();
        files
            .get(&("sm".into(), client_name(c)))
            .is_some_and(|l| has_registration(l, c))
    }

    fn check(&mut self, after_cut: bool) -> Result<(), String> {
        let (files, state) = self.on_disk();
        let reg = has_registration;
        for c in 0..self.clients.len() {
            let name = client_name(c);
            let cl = &self.clients[c];
            if let Some((cookie, _)) = cl.acked {
                // In sm/, or in sm.bak/ after a retire that failed half-way (the next
                // takeover or restart notifies it).
                let sm = files.get(&("sm".into(), name.clone()));
                let bak = files.get(&("sm.bak".into(), name.clone()));
                if !sm.is_some_and(|l| reg(l, c)) && !bak.is_some_and(|l| reg(l, c)) {
                    return Err(self.fail(format!(
                        "c{c}'s SM_MON (cookie {cookie}) was answered stat_succ, but neither sm/{name} nor sm.bak/ holds it{}",
                        if after_cut { " after a power cut" } else { "" }
                    )));
                }
            }
            if let Some(owed) = cl.owed
                && cl.svc_seen < owed
            {
                let bak = files.get(&("sm.bak".into(), name.clone()));
                if !bak.is_some_and(|l| reg(l, c)) {
                    return Err(self.fail(format!(
                        "c{c} is owed an SM_NOTIFY of state {owed} (saw {}), but sm.bak/{name} lacks it{}",
                        cl.svc_seen,
                        if after_cut { " after a power cut" } else { "" }
                    )));
                }
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(a) = &n.active
                && a.core.state() % 2 == 0
            {
                return Err(self.fail(format!(
                    "node {i}: serving with even state {}",
                    a.core.state()
                )));
            }
        }
        if after_cut && state.unwrap_or(0) < self.handed_out {
            return Err(self.fail(format!(
                "after a power cut the state file holds {state:?}, below {} handed out before",
                self.handed_out
            )));
        }
        Ok(())
    }

    // ---- the run -----------------------------------------------------------------------------

    fn power_cut(&mut self) -> Result<(), String> {
        for n in 0..self.nodes.len() {
            self.crash(n);
        }
        self.disk.power_cut();
        self.counts.power_cuts += 1;
        self.resumable = false; // after a reboot nothing resumes: the cluster takes over again
        self.log("power cut (the whole cluster)".into());
        self.check(true)
    }

    fn lockd_send(&mut self, client: usize) {
        let Some(node) = self.serving() else { return };
        if self.clients[client].outstanding.is_some() {
            return;
        }
        let op = if self.clients[client].acked.is_some() && self.rng.per_mille(400) {
            Op::Unmon
        } else {
            Op::Mon(self.rng.below(256) as u8)
        };
        self.seq += 1;
        let seq = self.seq;
        self.clients[client].outstanding = Some((seq, op, node, self.now));
        self.send(
            Msg::Lockd {
                node,
                client,
                seq,
                op,
            },
            false,
        );
    }

    fn takeover(&mut self, forced: bool) -> Result<(), String> {
        let n = self.nodes.len();
        let to = self.rng.below(n as u64) as usize;
        let from = self.owner;
        if forced {
            // The holder is hung or cut off: it keeps running, unaware, until its fence check.
            self.counts.forced += 1;
            self.log(format!(
                "forced takeover by node {to} (holder {from:?} still runs)"
            ));
            if from == Some(to) {
                self.crash(to);
            }
        } else {
            if let Some(f) = from
                && self.nodes[f].active.is_some()
            {
                // Release: stop answering, flush what is queued, give ownership up.
                while self.nodes[f]
                    .active
                    .as_ref()
                    .is_some_and(|a| !a.pending.is_empty())
                {
                    let before = self.nodes[f].active.as_ref().map(|a| a.pending.len());
                    self.disk_step(f)?;
                    if self.disk.is_dead() {
                        return Ok(());
                    }
                    if self.nodes[f].active.as_ref().map(|a| a.pending.len()) == before {
                        break;
                    }
                }
                self.log(format!("node {f}: release"));
                self.drop_process(f);
            }
            self.crash(to);
        }
        self.start(to, true)?;
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += Duration::from_millis(self.rng.below(1500));
        while let Some((&(t, s), _)) = self.net.first_key_value() {
            if t > self.now {
                break;
            }
            let msg = self.net.remove(&(t, s)).unwrap();
            self.deliver(msg)?;
        }
        self.timers()?;
        let n_nodes = self.nodes.len() as u64;
        let node = self.rng.below(n_nodes) as usize;
        let client = self.rng.below(self.clients.len() as u64) as usize;
        let die = self.faults && self.rng.per_mille(30);
        if die {
            let at = self.disk.ops() + self.rng.below(40);
            self.disk.die_at(at);
        }
        match self.rng.below(1000) {
            0..=349 => self.lockd_send(client),
            350..=599 => self.disk_step(node)?,
            600..=679 => {
                // A client's statd reboots.
                let c = &mut self.clients[client];
                c.state += 2;
                c.notify_acked = false;
                c.last_notify = Duration::ZERO;
                let s = c.state;
                self.log(format!("c{client} reboots: state {s}"));
            }
            680..=759 => {
                if let Some(a) = self.nodes[node].active.as_mut()
                    && !a.ready
                {
                    a.ready = true;
                    self.log(format!("node {node}: ready (registered, answering)"));
                }
            }
            // The cluster manager starts the service again: on the same node after a process
            // crash (resume), else a takeover.
            760..=789 if self.serving().is_none() => match self.owner {
                Some(o)
                    if self.resumable
                        && self.nodes[o].active.is_none()
                        && self.rng.per_mille(600) =>
                {
                    self.start(o, false)?;
                }
                _ => self.takeover(false)?,
            },
            790..=809 => self.takeover(false)?,
            810..=819 if self.faults => self.takeover(true)?,
            820..=839 if self.faults => self.crash(node),
            840..=849 if self.faults => self.power_cut()?,
            850..=869 if self.faults => {
                let c = &mut self.clients[client];
                c.partitioned = !c.partitioned;
                let p = c.partitioned;
                self.log(format!("c{client} partitioned: {p}"));
            }
            870..=889 if self.faults => {
                let n = &mut self.nodes[node];
                n.lockd_alive = !n.lockd_alive;
                let alive = n.lockd_alive;
                self.log(format!("node {node}: lockd alive: {alive}"));
            }
            890..=899 if self.faults => {
                let full = self.rng.per_mille(500);
                self.disk.set_full(full);
                self.log(format!("disk full: {full}"));
            }
            900..=904 => self.simu_crash(node)?,
            905..=909 if self.faults => {
                let at = self.disk.ops() + 1 + self.rng.below(20);
                let e = if self.rng.per_mille(500) {
                    Errno::EIO
                } else {
                    Errno::ENOSPC
                };
                self.disk.fail_at(at, e);
            }
            _ => {}
        }
        if self.disk.is_dead() {
            self.log("the machine stopped inside a store call".into());
            self.power_cut()?;
        } else if die {
            self.disk.cancel_die();
        }
        self.check(false)
    }

    /// Faults off, everything healed, run until the announcements are over; then each client
    /// reboots once more and must be called back.
    fn quiet(&mut self) -> Result<(), String> {
        self.faults = false;
        self.disk.clear_faults();
        self.disk.cancel_die();
        for c in &mut self.clients {
            c.partitioned = false;
        }
        for n in &mut self.nodes {
            n.lockd_alive = true;
        }
        self.log("quiet: faults off".into());
        if self.serving().is_none() {
            match self.owner {
                Some(o) if self.resumable => {
                    self.start(o, false)?;
                }
                _ => {
                    self.takeover(false)?;
                }
            }
        }
        let node = self
            .serving()
            .ok_or_else(|| self.fail("no node serves after a takeover without faults".into()))?;
        self.nodes[node].active.as_mut().unwrap().ready = true;
        // A fenced node left over from a forced takeover is stopped by its fence watch.
        for n in 0..self.nodes.len() {
            if n != node {
                self.crash(n);
            }
        }
        let end = self.now + BUDGET + Duration::from_secs(60);
        while self.now < end {
            self.now += Duration::from_millis(250);
            self.flush(node)?;
            let done = self.nodes[node]
                .active
                .as_ref()
                .and_then(|a| a.notifier.as_ref())
                .is_none_or(|n| n.sched.is_finished());
            if done
                && self.net.is_empty()
                && self
                    .clients
                    .iter()
                    .all(|c| c.outstanding.is_none() && c.notify_acked)
            {
                break;
            }
        }
        if let Some(n) = self.nodes[node]
            .active
            .as_ref()
            .and_then(|a| a.notifier.as_ref())
        {
            let r = format!("{:?} {:?}", n.sched.report(), n.sched.next_wake());
            self.log(r);
        }
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if let Some(owed) = cl.owed
                && cl.svc_seen < owed
            {
                return Err(self.fail(format!(
                    "liveness: c{c} is still owed an SM_NOTIFY of state {owed} at quiescence (saw {})",
                    cl.svc_seen
                )));
            }
        }
        // Every client monitored now reboots: lockd here must hear of it.
        let monitored: Vec<usize> = (0..self.clients.len())
            .filter(|&c| self.clients[c].acked.is_some())
            .collect();
        for &c in &monitored {
            let cl = &mut self.clients[c];
            cl.state += 2;
            cl.notify_acked = false;
            cl.last_notify = Duration::ZERO;
        }
        let end = self.now + Duration::from_secs(60);
        while self.now < end && !self.clients.iter().all(|c| c.notify_acked) {
            self.now += Duration::from_millis(250);
            self.flush(node)?;
        }
        // Lookups and callbacks in flight finish.
        for _ in 0..200 {
            self.now += Duration::from_millis(250);
            self.flush(node)?;
        }
        for &c in &monitored {
            let state = self.clients[c].state;
            let told = self.nodes[node]
                .called_back
                .get(client_name(c).as_bytes())
                .is_some_and(|s| s.contains(&state));
            if !told {
                return Err(self.fail(format!(
                    "liveness: c{c} is monitored and rebooted to state {state}, but lockd on node {node} was not called back"
                )));
            }
        }
        self.check(false)?;
        // What is on disk is durable.
        self.power_cut()
    }

    fn flush(&mut self, node: usize) -> Result<(), String> {
        while let Some((&(t, s), _)) = self.net.first_key_value() {
            if t > self.now {
                break;
            }
            let msg = self.net.remove(&(t, s)).unwrap();
            self.deliver(msg)?;
        }
        self.timers()?;
        self.disk_step(node)?;
        self.check(false)
    }

    fn run(&mut self) -> Result<Counts, String> {
        self.disk.set_fault_rate(self.rate);
        self.takeover(false)?;
        for _ in 0..STEPS {
            self.step()?;
        }
        self.quiet()?;
        Ok(self.counts)
    }
}

/// Whether the record lines `lines` hold client `c`'s registration by the service.
fn has_registration(lines: &str, c: usize) -> bool {
    lines.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() == 7 && f[5] == client_name(c) && f[6] == SVC_NAME
    })
}

fn run_seed(seed: u64) -> Result<Counts, String> {
    let mut sim = Sim::new(seed);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run())) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(sim.fail(format!("panicked: {msg}")))
        }
    }
}

/// `NSMD_SIM_AS_TODAY`: `all`, or the numbers (1, 2, 3) of the rules to leave out.
fn as_today() -> [bool; 3] {
    let v = std::env::var("NSMD_SIM_AS_TODAY").unwrap_or_default();
    let all = v == "all";
    [
        all || v.contains('1'),
        all || v.contains('2'),
        all || v.contains('3'),
    ]
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

#[test]
fn cluster_keeps_the_nsm_invariants_under_faults() {
    let seeds: Vec<u64> = match env_u64("NSMD_SIM_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("NSMD_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let started = Instant::now();
    let mut t = Counts::default();
    for &seed in &seeds {
        match run_seed(seed) {
            Ok(c) => {
                t.mons_acked += c.mons_acked;
                t.mons_failed += c.mons_failed;
                t.takeovers += c.takeovers;
                t.forced += c.forced;
                t.resumes += c.resumes;
                t.crashes += c.crashes;
                t.power_cuts += c.power_cuts;
                t.simu_crashes += c.simu_crashes;
                t.notifies_acked += c.notifies_acked;
                t.gave_up += c.gave_up;
                t.callbacks += c.callbacks;
                t.lookups += c.lookups;
                t.lost += c.lost;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} seeds in {secs:.1} s ({:.0} seeds/min): {t:?}",
        seeds.len(),
        seeds.len() as f64 * 60.0 / secs
    );
    if seeds.len() >= 100 {
        assert!(
            t.mons_acked > 0
                && t.mons_failed > 0
                && t.forced > 0
                && t.resumes > 0
                && t.power_cuts > 0
                && t.simu_crashes > 0
                && t.notifies_acked > 0
                && t.gave_up > 0
                && t.callbacks > 0,
            "the run did not exercise everything it checks: {t:?}"
        );
    }
}

/// A seed replays exactly.
#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 7, 42] {
        let runs: Vec<(Result<Counts, String>, Vec<String>)> = (0..2)
            .map(|_| {
                let mut sim = Sim::new(seed);
                let r = sim.run();
                (
                    r.map_err(|e| e.lines().next().unwrap_or("").to_owned()),
                    std::mem::take(&mut sim.trace),
                )
            })
            .collect();
        assert!(runs[0].1.len() > 20, "seed {seed}: a short trace");
        assert_eq!(runs[0].1, runs[1].1, "seed {seed} ran differently twice");
    }
}

//! Announcing a restart: the one path every caller takes (nsm-notify at boot, nsmd's
//! takeover, resume and `nsmctl notify`, SM_SIMU_CRASH, SIGUSR1).
//!
//! Two steps, so a caller can do what it must in between (nsm-notify goes into the
//! background, binds privileged ports and drops root; a takeover runs its command and waits
//! for readiness):
//!
//! 1. [`Retired::new`] then [`Retired::bump`] (blocking, on the store): `sm/` retired to
//!    `sm.bak/`, `sm.bak/` loaded, then the state bumped durably by the caller's `bump`
//!    (nsm-notify bumps only when [`Retired::is_empty`] is false);
//!    [`Announcement::again`]: what is left in `sm.bak/`, with a state already on disk. An
//!    [`Announcement`] exists only once its state is durable, and only an [`Announcement`]
//!    sends: nothing reaches a peer before the state it carries is on disk.
//! 2. [`Announcement::send`]: waits for the gate (statd registered with rpcbind, the
//!    service ready), binds the source addresses, notifies one target per peer
//!    (`Peers::from_records`: the `sm.bak/` files of one peer under two names are one
//!    target) with the names the caller gives for its records' `my_name`s (kept once each:
//!    an announcement keeps a file name per peer, not its records), and removes what a peer
//!    acknowledged from
//!    `sm.bak/` as soon as it finished. A peer given up (out of budget) stays in `sm.bak/`
//!    for the next announcement (logged, counted in the [`Summary`]). With a [`Fence`],
//!    nothing is written once it refuses (checked before a removal is queued and again
//!    right before its batch reaches the disk), and the run stops as soon as its verdict
//!    says another node took over: the peers not acknowledged yet stay in `sm.bak/`.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use nsm_store::{Committer, Dir, Disk, Record, StateDir, StoreError};
use thiserror::Error;
use tracing::{error, info, warn};

use crate::driver::{
    Notifier, NotifierConfig, NotifyError, SourceSpec, Sources, Summary, Target, bind_sources,
};
use crate::scheduler::Outcome;

/// Why an announcement failed. Each message names the directory and says what happens to
/// the peers.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AnnounceError {
    /// `sm/` could not be moved to `sm.bak/`.
    #[error("cannot move {dir}/sm to sm.bak: {source}", dir = .dir.display())]
    Retire {
        /// The state directory.
        dir: PathBuf,
        /// The store's error.
        source: StoreError,
    },
    /// `sm.bak/`, or one of its files, could not be read: nothing was sent.
    #[error("cannot read {dir}/sm.bak: {source}", dir = .dir.display())]
    Load {
        /// The state directory.
        dir: PathBuf,
        /// The store's error.
        source: StoreError,
    },
    /// The notifier could not start (sockets, names).
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// The gate closed for good before it opened (the daemon stops before it was
    /// registered): nothing was sent.
    #[error("the gate did not open: nothing sent, the peers stay in sm.bak/")]
    GateClosed,
    /// The fence's verdict: another node took the directory over (checked after the gate
    /// and before every write, watched while notifying).
    #[error("{0}: the peers not acknowledged stay in sm.bak/")]
    Fenced(String),
}

/// What stops an announcement of a directory another node may take over: checked before
/// every write to `sm.bak/`, and watched while notifying.
pub trait Fence: Send + Sync {
    /// `Ok` while this node may still write to the directory and notify.
    fn check(&self) -> Result<(), String>;
    /// Resolves, with the reason, once the fence's verdict is that this node no longer
    /// owns the directory.
    fn fenced(&self) -> Pin<Box<dyn Future<Output = String> + Send + '_>>;
}

/// Where the SM_NOTIFYs leave from.
#[derive(Debug)]
pub enum Source {
    /// Sockets bound already (nsm-notify binds as root, before dropping privileges).
    Bound(Sources),
    /// Bound once the gate opened (a service address may come up while waiting).
    Bind(SourceSpec),
}

/// The gate [`Announcement::send`] waits for: `true` once it opened, `false` when it closed
/// for good.
pub type Gate<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// How [`Announcement::send`] notifies.
pub struct Delivery<'a> {
    /// The mon_names to send for the records of this `my_name` (one peer is sent the union
    /// over its records, in order). Called once per distinct `my_name`, not per peer.
    pub names: &'a (dyn Fn(&[u8]) -> Vec<String> + Sync),
    /// Where the SM_NOTIFYs leave from.
    pub source: Source,
    /// Retries, window, timeouts (its `state` is replaced by the announcement's).
    pub config: NotifierConfig,
    /// Nothing is sent before this opens.
    pub gate: Option<Gate<'a>>,
    /// Nothing is written once this refuses (checked before a removal is queued, and again
    /// on the store's commit thread right before each batch of removals reaches the disk);
    /// the run stops once it says fenced.
    pub fence: Option<Arc<dyn Fence>>,
}

impl std::fmt::Debug for Delivery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("source", &self.source)
            .field("config", &self.config)
            .field("gate", &self.gate.is_some())
            .field("fence", &self.fence.is_some())
            .finish_non_exhaustive()
    }
}

/// The first half of a restart: `sm/` moved to `sm.bak/`, the peers of `sm.bak/` loaded,
/// the state not bumped yet ([`Retired::bump`]).
#[derive(Debug, Clone)]
pub struct Retired {
    moved: usize,
    peers: Peers,
    retires: u64,
}

impl Retired {
    /// `sm/` moved to `sm.bak/`, then `sm.bak/` loaded; `allowed` (the fence) is checked
    /// before.
    pub fn new<E>(dir: &StateDir, allowed: impl Fn() -> Result<(), E>) -> Result<Self, E>
    where
        E: From<AnnounceError>,
    {
        allowed()?;
        let moved = dir.retire().map_err(|source| AnnounceError::Retire {
            dir: dir.path().to_owned(),
            source,
        })?;
        let retires = dir.retires();
        Ok(Self {
            moved,
            peers: load_bak(dir)?,
            retires,
        })
    }

    /// The files moved from `sm/` to `sm.bak/`.
    pub fn moved(&self) -> usize {
        self.moved
    }

    /// The peers to notify (one per group of `sm.bak/` files, see the module documentation).
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Whether nobody is to be notified (sm-notify then leaves the state alone).
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The restart's new state: `bump` must return it only once it is durable
    /// (`StateDir::state(true)`, the root helper, an instance's state authority); `allowed`
    /// (the fence) is checked before.
    pub fn bump<E>(
        self,
        bump: impl FnOnce() -> Result<i32, E>,
        allowed: impl Fn() -> Result<(), E>,
    ) -> Result<Announcement, E> {
        allowed()?;
        let state = bump()?;
        Ok(Announcement {
            state,
            moved: self.moved,
            peers: self.peers,
            retires: self.retires,
        })
    }
}

/// A restart to announce: a durable state and the peers of `sm.bak/`. Made only by
/// [`Retired::bump`] (a new state) or [`Announcement::again`] (a state on disk already).
#[derive(Debug, Clone)]
pub struct Announcement {
    state: i32,
    moved: usize,
    peers: Peers,
    /// [`StateDir::retires`] before `sm.bak/` was loaded: a file is removed only if nothing
    /// was moved into `sm.bak/` since.
    retires: u64,
}

impl Announcement {
    /// The peers still in `sm.bak/`, announced again with `state`, which is on disk already
    /// (a resumed instance, `nsmctl notify`, SIGUSR1). Nothing moves.
    pub fn again(dir: &StateDir, state: i32) -> Result<Self, AnnounceError> {
        let retires = dir.retires();
        Ok(Self {
            state,
            moved: 0,
            peers: load_bak(dir)?,
            retires,
        })
    }

    /// The state announced.
    pub fn state(&self) -> i32 {
        self.state
    }

    /// The files moved from `sm/` to `sm.bak/` (0 for [`Announcement::again`]).
    pub fn moved(&self) -> usize {
        self.moved
    }

    /// The peers to notify (one per group of `sm.bak/` files, see the module documentation).
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Whether nobody is to be notified.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Notifies the peers (see the module documentation); returns when each was
    /// acknowledged or given up. `dir` is the directory the announcement was made from.
    pub async fn send(
        self,
        dir: Arc<StateDir>,
        how: Delivery<'_>,
    ) -> Result<Summary, AnnounceError> {
        let Delivery {
            names,
            source,
            mut config,
            gate,
            fence,
        } = how;
        config.state = self.state;
        if let Some(gate) = gate
            && !gate.await
        {
            return Err(AnnounceError::GateClosed);
        }
        if let Some(f) = &fence {
            f.check().map_err(AnnounceError::Fenced)?;
        }
        if self.peers.is_empty() {
            return Ok(Summary {
                state: self.state,
                elapsed: std::time::Duration::ZERO,
                peers: Vec::new(),
            });
        }
        let sources = match source {
            Source::Bound(s) => s,
            Source::Bind(spec) => bind_sources(&spec)?,
        };
        let run = notify_groups(
            dir,
            (self.peers, self.retires),
            names,
            config,
            sources,
            fence.clone(),
        );
        match fence {
            None => run.await,
            Some(f) => tokio::select! {
                r = run => r,
                why = f.fenced() => Err(AnnounceError::Fenced(why)),
            },
        }
    }
}

/// One file of `sm.bak/` as an announcement keeps it: its name, and what its names to send
/// are made of. Not its records (about 100 bytes each), unless a partial acknowledgement
/// needs them.
#[derive(Debug, Clone)]
struct BakFile {
    /// The file name (also the target's label and host when it leads its peer's files).
    name: Arc<str>,
    my_names: MyNames,
}

/// The `my_name`s of a file's records.
#[derive(Debug, Clone)]
enum MyNames {
    /// Every record has this `my_name` (an index into [`Peers::my_names`]): the file's
    /// records are acknowledged all at once, and the file is removed whole or left as it is.
    One(u32),
    /// Records of different `my_name`s: kept, so that a peer that acknowledged only some of
    /// its names keeps the records of the names it did not (the file is rewritten).
    Many(Box<[Record]>),
}

/// The peers of `sm.bak/`: its files, grouped by peer (see [`Peers::from_records`]).
#[derive(Debug, Clone, Default)]
struct Peers {
    /// Every file, the files of one peer next to each other, the one its target is named by
    /// first.
    files: Vec<BakFile>,
    /// Where each peer's files start in `files` (ascending).
    starts: Vec<u32>,
    /// The distinct `my_name`s of the records (most directories have one).
    my_names: Vec<Box<[u8]>>,
}

impl Peers {
    /// The files of `sm.bak/` grouped by peer: files whose lines share a mon_name hold the
    /// same peer under two names (rpc.statd names a file by the mon_name's canonical DNS
    /// name, nsmd by the mon_name itself; a peer left over from one and monitored again
    /// under the other has both). Each group is notified once, at the file named by its
    /// mon_name when there is one (the name lockd gave), else at its first file. Peers come
    /// in the order of their first file's name; `records` are consumed as they are sorted
    /// into files, so the loaded list and the kept one are not both held whole.
    fn from_records(mut records: Vec<(String, Record)>) -> Self {
        /// A file while the groups are made.
        struct Loaded {
            file: BakFile,
            /// Its records' distinct mon_names.
            mon_names: Vec<Vec<u8>>,
            /// Whether one of them is the file's name.
            own: bool,
        }
        if !records.is_sorted_by(|a, b| a.0 <= b.0) {
            records.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let mut my_names: Vec<Box<[u8]>> = Vec::new();
        let mut interned: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut intern = |n: Vec<u8>| -> u32 {
            if let Some(&i) = interned.get(&n) {
                return i;
            }
            let i = u32::try_from(my_names.len()).unwrap_or(u32::MAX);
            my_names.push(n.clone().into_boxed_slice());
            interned.insert(n, i);
            i
        };
        let mut loaded: Vec<Loaded> = Vec::new();
        let mut rest = records.into_iter().peekable();
        while let Some((name, first)) = rest.next() {
            let mut recs = vec![first];
            while let Some((_, r)) = rest.next_if(|(f, _)| *f == name) {
                recs.push(r);
            }
            let own = recs.iter().any(|r| r.mon_name == name.as_bytes());
            let mut mon_names: Vec<Vec<u8>> = Vec::with_capacity(1);
            for r in &recs {
                if !mon_names.contains(&r.mon_name) {
                    mon_names.push(r.mon_name.clone());
                }
            }
            let one = recs.iter().all(|r| r.my_name == recs[0].my_name);
            let my_names = if one {
                let r = recs.swap_remove(0);
                MyNames::One(intern(r.my_name))
            } else {
                MyNames::Many(recs.into_boxed_slice())
            };
            loaded.push(Loaded {
                file: BakFile {
                    name: name.into(),
                    my_names,
                },
                mon_names,
                own,
            });
        }
        // Each file's peer: the first earlier file sharing one of its mon_names, else a new one.
        let mut peer_of: Vec<u32> = Vec::with_capacity(loaded.len());
        let mut peers = 0u32;
        {
            let mut by_mon_name: HashMap<&[u8], u32> = HashMap::with_capacity(loaded.len());
            for l in &loaded {
                let found = l
                    .mon_names
                    .iter()
                    .find_map(|m| by_mon_name.get(m.as_slice()).copied());
                let p = found.unwrap_or_else(|| {
                    peers += 1;
                    peers - 1
                });
                for m in &l.mon_names {
                    by_mon_name.entry(m.as_slice()).or_insert(p);
                }
                peer_of.push(p);
            }
        }
        // Files in peer order (stable: a peer's files in name order), then its own file first.
        let mut order: Vec<u32> = (0..u32::try_from(loaded.len()).unwrap_or(u32::MAX)).collect();
        order.sort_by_key(|&i| peer_of[i as usize]);
        let mut slots: Vec<Option<Loaded>> = loaded.into_iter().map(Some).collect();
        let mut out = Self {
            files: Vec::with_capacity(slots.len()),
            starts: Vec::with_capacity(peers as usize),
            my_names: Vec::new(),
        };
        let mut at = 0;
        while at < order.len() {
            let p = peer_of[order[at] as usize];
            let mut end = at;
            while end < order.len() && peer_of[order[end] as usize] == p {
                end += 1;
            }
            let start = out.files.len();
            out.starts.push(u32::try_from(start).unwrap_or(u32::MAX));
            let mut own = None;
            for &i in &order[at..end] {
                if let Some(l) = slots[i as usize].take() {
                    if own.is_none() && l.own {
                        own = Some(out.files.len());
                    }
                    out.files.push(l.file);
                }
            }
            if let Some(own) = own {
                out.files.swap(start, own);
            }
            at = end;
        }
        out.my_names = my_names;
        out
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The files of peer `i`.
    fn files(&self, i: usize) -> &[BakFile] {
        let start = self.starts[i] as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.files.len(), |&e| e as usize);
        &self.files[start..end]
    }
}

/// The peers of `sm.bak/`.
fn load_bak<D: Disk>(dir: &StateDir<D>) -> Result<Peers, AnnounceError> {
    let load = || {
        let (records, report) = dir.load(Dir::Bak)?;
        // A peer whose file cannot be read now (a transient EIO) is not dropped from the
        // announcement: it fails, to be tried again (tests/sim.rs, seeds 263 and 265).
        report.unreadable()?;
        for s in &report.skipped {
            warn!(path = %s.path.display(), "record file skipped and left in place: {}", s.reason);
        }
        Ok(records)
    };
    let records = load().map_err(|source| AnnounceError::Load {
        dir: dir.path().to_owned(),
        source,
    })?;
    Ok(Peers::from_records(records))
}

/// The names to send for each `my_name` of an announcement, each list made once and shared
/// by the targets.
struct NameLists<'a> {
    names: &'a (dyn Fn(&[u8]) -> Vec<String> + Sync),
    /// By index of [`Peers::my_names`].
    lists: Vec<Option<Arc<[String]>>>,
}

impl NameLists<'_> {
    fn of(&mut self, my_names: &[Box<[u8]>], i: u32) -> Arc<[String]> {
        let i = i as usize;
        if self.lists.len() <= i {
            self.lists.resize(i + 1, None);
        }
        self.lists[i]
            .get_or_insert_with(|| (self.names)(&my_names[i]).into())
            .clone()
    }
}

/// Notifies every peer with the names `names` gives for each of its records; removes what
/// a peer acknowledged from `sm.bak/` as soon as it finished. Removals go through the
/// store's group commit: the fsyncs of many acknowledgements share batches, off the event
/// loop, so a large peer list never waits on the disk between replies. The fence is checked
/// before a removal is queued and again right before its batch reaches the disk, so a
/// removal queued before a takeover does not land after the new owner's retire (which
/// would delete a file the new owner must still notify from).
/// A removal is made only if `sm/` was not retired to `sm.bak/` since `retires` (the count
/// read before `sm.bak/` was loaded): otherwise the file may hold the peer monitored again
/// and moved there by a restart (SM_SIMU_CRASH) while this announcement ran, owed the newer
/// state by the announcement that restart starts; aborting this one does not take back a
/// removal it queued (tests/sim.rs, seeds 190 and 335).
async fn notify_groups(
    dir: Arc<StateDir>,
    (peers, retires): (Peers, u64),
    names: &(dyn Fn(&[u8]) -> Vec<String> + Sync),
    cfg: NotifierConfig,
    sources: Sources,
    fence: Option<Arc<dyn Fence>>,
) -> Result<Summary, AnnounceError> {
    let mut lists = NameLists {
        names,
        lists: Vec::new(),
    };
    let mut targets = Vec::with_capacity(peers.len());
    for i in 0..peers.len() {
        let files = peers.files(i);
        let names: Arc<[String]> = match files {
            [
                BakFile {
                    my_names: MyNames::One(m),
                    ..
                },
            ] => lists.of(&peers.my_names, *m),
            _ => {
                let mut all: Vec<String> = Vec::new();
                for f in files {
                    let each: Vec<Arc<[String]>> = match &f.my_names {
                        MyNames::One(m) => vec![lists.of(&peers.my_names, *m)],
                        MyNames::Many(rs) => rs.iter().map(|r| names(&r.my_name).into()).collect(),
                    };
                    for n in each.iter().flat_map(|l| l.iter()) {
                        if !all.contains(n) {
                            all.push(n.clone());
                        }
                    }
                }
                all.into()
            }
        };
        targets.push(Target::new(files[0].name.clone(), names));
    }
    let notifier = Notifier::new(cfg, sources, targets)?;
    let committer = match fence.clone() {
        Some(f) => Committer::checked(dir, Box::new(move || f.check())),
        None => Committer::spawn(dir),
    };
    let removals = Removals::default();
    let run = async {
        let summary = notifier
            .run(|i, t, outcome, acked| {
                if i >= peers.len() {
                    return;
                }
                if outcome == Outcome::GaveUp {
                    warn!(
                        peer = %t.label,
                        "given up (out of the retry budget): kept in sm.bak/ for the next announcement"
                    );
                }
                let done = &t.names[..acked.min(t.names.len())];
                let all_acked = |my_name: &[u8], lists: &mut NameLists<'_>, m: Option<u32>| {
                    let l = match m {
                        Some(m) => lists.of(&peers.my_names, m),
                        None => names(my_name).into(),
                    };
                    l.iter().all(|n| done.contains(n))
                };
                for file in peers.files(i) {
                    // None: the file stays as it is; Some(records): what is left of it.
                    let remaining: Option<Vec<Record>> = match (outcome, &file.my_names) {
                        (Outcome::Acked, _) => Some(Vec::new()),
                        (Outcome::GaveUp, _) if acked == 0 => return,
                        (Outcome::GaveUp, MyNames::One(m)) => {
                            all_acked(&[], &mut lists, Some(*m)).then(Vec::new)
                        }
                        (Outcome::GaveUp, MyNames::Many(recs)) => {
                            let left: Vec<Record> = recs
                                .iter()
                                .filter(|r| !all_acked(&r.my_name, &mut lists, None))
                                .cloned()
                                .collect();
                            (left.len() < recs.len()).then_some(left)
                        }
                    };
                    let Some(remaining) = remaining else {
                        continue;
                    };
                    if let Some(Err(e)) = fence.as_deref().map(Fence::check) {
                        warn!("{} not updated: {e}", file.name);
                        return;
                    }
                    removals.push(file.name.clone(), remaining);
                }
            })
            .await;
        removals.close();
        summary
    };
    let (summary, ()) = tokio::join!(run, removals.commit(&committer, retires));
    Ok(summary?)
}

/// The `sm.bak/` updates of the peers that finished, waiting for the store. A peer's update
/// waits here as its file name (shared with the announcement's list) until it is handed to
/// the store's group commit, at most [`Removals::IN_FLIGHT`] at a time: when the disk is
/// slower than the acknowledgements come (100,000 peers, an unlink each), what waits costs
/// 16 bytes per peer, not a queued request and a task each.
#[derive(Default)]
struct Removals {
    queue: std::sync::Mutex<RemovalQueue>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct RemovalQueue {
    /// The file and what is left of it (empty: removed).
    files: std::collections::VecDeque<(Arc<str>, Vec<Record>)>,
    /// No more updates come (the run finished).
    closed: bool,
}

impl Removals {
    /// How many updates are handed to the store at once (its batches group their fsyncs).
    const IN_FLIGHT: usize = 256;

    fn lock(&self) -> std::sync::MutexGuard<'_, RemovalQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, file: Arc<str>, remaining: Vec<Record>) {
        self.lock().files.push_back((file, remaining));
        self.wake.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Hands the updates to `committer` as they come, until closed and done; logs each.
    async fn commit(&self, committer: &Committer, retires: u64) {
        loop {
            let batch: Vec<(Arc<str>, Vec<Record>)> = {
                let mut q = self.lock();
                if q.files.is_empty() && q.closed {
                    return;
                }
                let n = q.files.len().min(Self::IN_FLIGHT);
                q.files.drain(..n).collect()
            };
            if batch.is_empty() {
                // notify_one keeps a permit: a push between the check and here is not missed.
                self.wake.notified().await;
                continue;
            }
            let commits: Vec<_> = batch
                .into_iter()
                .map(|(file, remaining)| {
                    let gone = remaining.is_empty();
                    let commit = committer.commit_unless_retired(
                        Dir::Bak,
                        file.to_string(),
                        remaining,
                        retires,
                    );
                    (file, gone, commit)
                })
                .collect();
            for (file, gone, commit) in commits {
                match commit.await {
                    Ok(()) if gone => info!("{file} removed from sm.bak"),
                    Ok(()) => info!("acknowledged records of {file} removed from sm.bak"),
                    Err(e @ StoreError::Retired { .. }) => info!("{e}"),
                    Err(e) => error!(
                        "cannot update {}: {e}; the peer will be notified again next time",
                        committer.state_dir().file_path(Dir::Bak, &file).display()
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::net::UdpSocket;
    use tokio::sync::watch;

    use super::*;
    use crate::driver::SourceSpec;
    use crate::scheduler::Policy;

    fn rec(mon: &str, my: &str) -> Record {
        Record {
            mon_name: mon.into(),
            my_name: my.into(),
            my_prog: 100_021,
            my_vers: 3,
            my_proc: 16,
            priv_: [7; 16],
        }
    }

    /// What a test peer received: each SM_NOTIFY's mon_name and state, and what its
    /// `on_notify` hook noted.
    #[derive(Debug, Default)]
    struct Seen {
        notifies: Vec<(String, i32)>,
        noted: Vec<String>,
    }

    /// A peer on a loopback address: its rpcbind (PMAPPROC_GETPORT v2) and its statd
    /// (SM_NOTIFY) on one UDP socket at `ip:port` (0: any; the first peer of a test picks the
    /// port every other peer and the notifier's `rpcbind_port` use). It acknowledges the
    /// SM_NOTIFYs whose mon_name `answer` accepts; `on_notify` runs first, on every one.
    struct Peer {
        port: u16,
        seen: Arc<Mutex<Seen>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    type Hook = Box<dyn FnMut(&str, i32) -> Option<String> + Send>;

    async fn peer(
        ip: &str,
        port: u16,
        answer: impl Fn(&str) -> bool + Send + 'static,
        mut on_notify: Hook,
    ) -> Peer {
        let sock = UdpSocket::bind((ip, port)).await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                let Ok(call) = nsm_rpc::msg::parse_call(&buf[..n]) else {
                    continue;
                };
                let h = call.header;
                let mut reply: Vec<u8> = [h.xid, 1, 0, 0, 0, 0]
                    .iter()
                    .flat_map(|w| w.to_be_bytes())
                    .collect();
                match (h.prog, h.proc_) {
                    // PMAPPROC_GETPORT: this socket's port.
                    (100_000, 3) => reply.extend_from_slice(&u32::from(port).to_be_bytes()),
                    // SM_NOTIFY: mon_name (string) and state.
                    (100_024, 6) => {
                        let a = call.args;
                        let len = u32::from_be_bytes(a[..4].try_into().unwrap()) as usize;
                        let name = String::from_utf8_lossy(&a[4..4 + len]).into_owned();
                        let at = 4 + len.div_ceil(4) * 4;
                        let state = i32::from_be_bytes(a[at..at + 4].try_into().unwrap());
                        let note = on_notify(&name, state);
                        let mut seen = s.lock().unwrap();
                        seen.notifies.push((name.clone(), state));
                        seen.noted.extend(note);
                        if !answer(&name) {
                            continue;
                        }
                    }
                    _ => continue,
                }
                sock.send_to(&reply, from).await.unwrap();
            }
        });
        Peer { port, seen, task }
    }

    fn nothing() -> Hook {
        Box::new(|_, _| None)
    }

    /// A state directory with `files` in `sm/`, at state 3.
    fn state_dir(files: &[(&str, Vec<Record>)]) -> (tempfile::TempDir, Arc<StateDir>) {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path()).unwrap();
        assert_eq!(dir.state(false).unwrap(), 3);
        for (f, rs) in files {
            dir.write(Dir::Sm, f, rs).unwrap();
        }
        (t, Arc::new(dir))
    }

    fn bak_files(dir: &StateDir) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.path().join("sm.bak"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A restart of `dir`: retired, bumped durably.
    fn restart(dir: &StateDir) -> Announcement {
        Retired::new(dir, || Ok::<(), AnnounceError>(()))
            .unwrap()
            .bump(
                || {
                    dir.state(true).map_err(|source| AnnounceError::Load {
                        dir: dir.path().to_owned(),
                        source,
                    })
                },
                || Ok(()),
            )
            .unwrap()
    }

    fn my_name(my_name: &[u8]) -> Vec<String> {
        vec![String::from_utf8_lossy(my_name).into_owned()]
    }

    fn delivery<'a>(rpcbind_port: u16, budget: Option<Duration>) -> Delivery<'a> {
        Delivery {
            names: &my_name,
            source: Source::Bind(SourceSpec {
                addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                port: Some(0),
                device: None,
            }),
            config: NotifierConfig {
                policy: Policy {
                    budget,
                    ..Policy::default()
                },
                rpc_timeout: Duration::from_millis(500),
                rpcbind_port,
                ..NotifierConfig::default()
            },
            gate: None,
            fence: None,
        }
    }

    /// Fails the test when `f` does not finish in 30 s (what it waited for in `what`).
    async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within 30 s"))
    }

    #[test]
    fn files_of_one_peer_under_two_names_are_one_target() {
        // rpc.statd's leftover (named by the reverse name) and nsmd's file (by the mon_name).
        let records = vec![
            ("198.51.100.20".to_owned(), rec("198.51.100.20", "srv2")),
            ("198.51.100.21".to_owned(), rec("198.51.100.21", "srv")),
            ("a.example.test".to_owned(), rec("198.51.100.20", "srv")),
        ];
        let peers = Peers::from_records(records);
        let shape: Vec<Vec<&str>> = (0..peers.len())
            .map(|i| peers.files(i).iter().map(|f| &*f.name).collect())
            .collect();
        assert_eq!(
            shape,
            [
                vec!["198.51.100.20", "a.example.test"],
                vec!["198.51.100.21"]
            ],
            "one target per peer, at the file named by its mon_name"
        );
    }

    /// The announcement keeps a file name and a shared my_name per peer, not its records:
    /// the records are kept only for a file whose records have different my_names (a partial
    /// acknowledgement rewrites it), and the loaded list is not sorted again when the store
    /// gave it in file order.
    #[test]
    fn peers_keep_no_records_unless_a_file_has_several_my_names() {
        let mut records: Vec<(String, Record)> = (0..100)
            .map(|i| {
                let ip = format!("198.51.100.{i}");
                (ip.clone(), rec(&ip, "srv"))
            })
            .collect();
        records.push(("z.example.test".into(), rec("z.example.test", "srv")));
        records.push(("z.example.test".into(), rec("z.example.test", "other")));
        records.sort_by(|a, b| a.0.cmp(&b.0));
        let peers = Peers::from_records(records);
        assert_eq!(peers.len(), 101);
        assert_eq!(
            *peers.my_names,
            [b"srv".to_vec().into_boxed_slice()],
            "one my_name kept for the 100 files"
        );
        let many: Vec<&str> = peers
            .files
            .iter()
            .filter(|f| matches!(f.my_names, MyNames::Many(_)))
            .map(|f| &*f.name)
            .collect();
        assert_eq!(many, ["z.example.test"]);
        // Files given out of order (another store) are grouped all the same.
        let peers = Peers::from_records(vec![
            ("b".into(), rec("b", "srv")),
            ("a".into(), rec("a", "srv")),
            ("b".into(), rec("b", "other")),
        ]);
        let shape: Vec<Vec<&str>> = (0..peers.len())
            .map(|i| peers.files(i).iter().map(|f| &*f.name).collect())
            .collect();
        assert_eq!(shape, [vec!["a"], vec!["b"]]);
        assert!(matches!(&peers.files[1].my_names, MyNames::Many(r) if r.len() == 2));
    }

    /// Finished peers' updates wait as file names and are handed to the store at most
    /// `Removals::IN_FLIGHT` at a time (the next ones once those are on disk), not one queued
    /// request each as they come: a disk slower than the acknowledgements does not make
    /// memory grow by a request and a task per peer. Every update is made in the end.
    #[tokio::test]
    async fn removals_are_handed_to_the_store_a_bounded_number_at_a_time() {
        let (_t, dir) = state_dir(&[]);
        let files: Vec<String> = (0..600).map(|i| format!("h{i}")).collect();
        for f in &files {
            dir.write(Dir::Bak, f, &[rec(f, "srv")]).unwrap();
        }
        let removals = Removals::default();
        for f in &files {
            removals.push(f.as_str().into(), Vec::new());
        }
        removals.close();
        let (committer, batches) = Committer::manual(dir.clone(), nsm_store::SyncMode::FsyncEach);
        let run = removals.commit(&committer, dir.retires());
        tokio::pin!(run);
        let mut handed = Vec::new();
        loop {
            // Lets the run hand what it may to the store and wait for it (nothing is written
            // until the batch below runs, whatever the time).
            if tokio::time::timeout(Duration::from_millis(20), &mut run)
                .await
                .is_ok()
            {
                break;
            }
            handed.push(batches.run(usize::MAX));
        }
        assert_eq!(handed.iter().sum::<usize>(), 600);
        assert!(
            handed.iter().filter(|&&n| n > 0).count() >= 2,
            "handed to the store in one go: {handed:?}"
        );
        assert!(
            handed.iter().all(|&n| n <= Removals::IN_FLIGHT),
            "handed to the store at once: {handed:?}"
        );
        assert!(bak_files(&dir).is_empty());
    }

    /// The peer reads the state file when the first SM_NOTIFY arrives: the state it carries
    /// is already on disk. An acknowledged peer leaves sm.bak/.
    #[tokio::test]
    async fn the_state_is_on_disk_before_the_first_sm_notify_and_acked_peers_leave() {
        let (_t, dir) = state_dir(&[("127.0.0.11", vec![rec("127.0.0.11", "srv")])]);
        let state_file = dir.path().join("state");
        let p = peer(
            "127.0.0.11",
            0,
            |_| true,
            Box::new(move |_, _| {
                let b = std::fs::read(&state_file).unwrap();
                Some(i32::from_ne_bytes(b[..4].try_into().unwrap()).to_string())
            }),
        )
        .await;
        let a = restart(&dir);
        assert_eq!((a.state(), a.moved(), a.peers()), (5, 1, 1));
        let summary = within(
            "the announcement",
            a.send(dir.clone(), delivery(p.port, None)),
        )
        .await
        .unwrap();
        assert_eq!(summary.acked(), 1);
        let seen = p.seen.lock().unwrap();
        assert_eq!(seen.notifies, [("srv".to_owned(), 5)]);
        assert_eq!(
            seen.noted,
            ["5"],
            "the state file said 5 at the first SM_NOTIFY"
        );
        assert!(
            bak_files(&dir).is_empty(),
            "acknowledged: removed from sm.bak/"
        );
    }

    /// SM_SIMU_CRASH while an announcement runs: the peer, monitored again, is moved into
    /// sm.bak/ by the restart's retire after this announcement loaded sm.bak/. Its
    /// acknowledgement of the older state must not remove the new file, which the restart's
    /// own announcement has to notify of the newer state (tests/sim.rs, seeds 190 and 335).
    #[tokio::test]
    async fn a_removal_does_not_take_a_file_a_later_retire_moved_into_sm_bak() {
        let (_t, dir) = state_dir(&[("127.0.0.20", vec![rec("127.0.0.20", "srv")])]);
        let p = peer("127.0.0.20", 0, |_| true, nothing()).await;
        let old = restart(&dir);
        // Monitored again (the same record: lockd's cookie does not change), then retired.
        dir.write(Dir::Sm, "127.0.0.20", &[rec("127.0.0.20", "srv")])
            .unwrap();
        assert_eq!(dir.retire().unwrap(), 1);
        let summary = within(
            "the older announcement",
            old.send(dir.clone(), delivery(p.port, None)),
        )
        .await
        .unwrap();
        assert_eq!(summary.acked(), 1);
        assert_eq!(
            bak_files(&dir),
            ["127.0.0.20"],
            "the file moved by the later retire stays for the newer announcement"
        );
        // The newer announcement (loaded after that retire) removes it once acknowledged.
        let newer = Announcement::again(&dir, 7).unwrap();
        within(
            "the newer announcement",
            newer.send(dir.clone(), delivery(p.port, None)),
        )
        .await
        .unwrap();
        assert!(bak_files(&dir).is_empty());
        assert_eq!(
            p.seen.lock().unwrap().notifies,
            [("srv".to_owned(), 5), ("srv".to_owned(), 7)]
        );
    }

    /// A file of sm.bak/ that cannot be read now (a transient EIO) fails the load: the
    /// announcement is not made without that peer (tests/sim.rs, seeds 263 and 265).
    #[test]
    fn an_unreadable_sm_bak_file_fails_the_announcement() {
        use nsm_store::SimDisk;
        let disk = SimDisk::new(1);
        let dir = StateDir::open_on(disk.clone(), std::path::Path::new("/srv/statd")).unwrap();
        dir.write(Dir::Bak, "127.0.0.21", &[rec("127.0.0.21", "srv")])
            .unwrap();
        assert_eq!(load_bak(&dir).unwrap().len(), 1);
        // Each operation of the load in turn fails with EIO, until it is the file's read.
        let mut failed = None;
        for k in 0..16 {
            disk.fail_at(disk.ops() + k, nix::errno::Errno::EIO);
            let r = load_bak(&dir);
            disk.clear_faults();
            match r {
                Err(AnnounceError::Load {
                    source: e @ StoreError::RecordUnreadable { .. },
                    ..
                }) => {
                    failed = Some(e.to_string());
                    break;
                }
                // The directory itself, or the file's lstat: an error as before.
                Err(AnnounceError::Load { .. }) => {}
                Ok(files) => assert_eq!(files.len(), 1, "a peer dropped from the announcement"),
                Err(e) => panic!("{e}"),
            }
        }
        let e = failed.expect("no EIO on the record file's read");
        assert!(e.contains("sm.bak/127.0.0.21"), "{e}");
    }

    /// A gate that closes without opening: nothing is sent, sm.bak/ stays.
    #[tokio::test]
    async fn a_closed_gate_sends_nothing() {
        let (_t, dir) = state_dir(&[("127.0.0.12", vec![rec("127.0.0.12", "srv")])]);
        let p = peer("127.0.0.12", 0, |_| true, nothing()).await;
        let mut how = delivery(p.port, None);
        how.gate = Some(Box::pin(async { false }));
        let r = within("the announcement", restart(&dir).send(dir.clone(), how)).await;
        assert!(matches!(r, Err(AnnounceError::GateClosed)), "{r:?}");
        // Anything sent would have been answered by now: the announcement has returned.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(p.seen.lock().unwrap().notifies.is_empty());
        assert_eq!(bak_files(&dir), ["127.0.0.12"]);
    }

    /// A gate that opens late: the first SM_NOTIFY leaves only after it opened.
    #[tokio::test]
    async fn nothing_leaves_before_the_gate_opens() {
        let (_t, dir) = state_dir(&[("127.0.0.13", vec![rec("127.0.0.13", "srv")])]);
        let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let o = opened.clone();
        let p = peer(
            "127.0.0.13",
            0,
            |_| true,
            Box::new(move |_, _| {
                Some(format!(
                    "gate open: {}",
                    o.load(std::sync::atomic::Ordering::SeqCst)
                ))
            }),
        )
        .await;
        let (open, mut gate) = watch::channel(false);
        let mut how = delivery(p.port, None);
        how.gate = Some(Box::pin(async move { gate.wait_for(|o| *o).await.is_ok() }));
        let run = tokio::spawn(restart(&dir).send(dir.clone(), how));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            p.seen.lock().unwrap().notifies.is_empty(),
            "sent before the gate"
        );
        opened.store(true, std::sync::atomic::Ordering::SeqCst);
        open.send_replace(true);
        let summary = within("the announcement", run).await.unwrap().unwrap();
        assert_eq!(summary.acked(), 1);
        assert_eq!(p.seen.lock().unwrap().noted, ["gate open: true"]);
    }

    /// A fence that says "fenced" while a peer does not answer: the run stops, the peer
    /// stays in sm.bak/; the one acknowledged before is gone.
    #[tokio::test]
    async fn a_fenced_run_stops_and_leaves_the_rest_in_sm_bak() {
        let (_t, dir) = state_dir(&[
            ("127.0.0.14", vec![rec("127.0.0.14", "srv")]),
            ("127.0.0.15", vec![rec("127.0.0.15", "srv")]),
        ]);
        let answering = peer("127.0.0.14", 0, |_| true, nothing()).await;
        let silent = peer("127.0.0.15", answering.port, |_| false, nothing()).await;
        let fence = Arc::new(TestFence::default());
        let mut how = delivery(answering.port, None);
        how.fence = Some(fence.clone());
        let a = restart(&dir);
        let run = a.send(dir.clone(), how);
        tokio::pin!(run);
        // Until the answering peer left sm.bak/.
        within("the acknowledged peer's removal", async {
            loop {
                tokio::select! {
                    r = &mut run => panic!("finished while a peer does not answer: {r:?}"),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                if bak_files(&dir) == ["127.0.0.15"] {
                    break;
                }
            }
        })
        .await;
        fence.verdict.send_replace(Some("taken over".into()));
        let r = within("the fenced announcement", run).await;
        assert!(
            matches!(&r, Err(AnnounceError::Fenced(why)) if why == "taken over"),
            "{r:?}"
        );
        assert_eq!(bak_files(&dir), ["127.0.0.15"], "the silent peer stays");
        assert!(!silent.seen.lock().unwrap().notifies.is_empty());
    }

    /// A fence that refuses writes (the ownership on disk moved on) before an
    /// acknowledgement arrives, its verdict not published yet: the acknowledged peer is not
    /// removed (a fenced node writes nothing).
    #[tokio::test]
    async fn a_fenced_node_removes_nothing() {
        let (_t, dir) = state_dir(&[("127.0.0.16", vec![rec("127.0.0.16", "srv")])]);
        let fence = Arc::new(TestFence::default());
        let refuse = fence.refuse.clone();
        let p = peer(
            "127.0.0.16",
            0,
            |_| true,
            Box::new(move |_, _| {
                refuse.store(true, std::sync::atomic::Ordering::SeqCst);
                None
            }),
        )
        .await;
        let mut how = delivery(p.port, None);
        how.fence = Some(fence);
        let summary = within("the announcement", restart(&dir).send(dir.clone(), how))
            .await
            .unwrap();
        assert_eq!(summary.acked(), 1);
        assert_eq!(bak_files(&dir), ["127.0.0.16"], "acknowledged, but fenced");
    }

    /// A takeover after the acknowledged peer's removal was queued, before its batch reached
    /// the disk: the store's check refuses the batch, the file stays in sm.bak/ for the new
    /// owner to notify from.
    #[tokio::test]
    async fn a_removal_queued_before_a_takeover_does_not_land() {
        let (_t, dir) = state_dir(&[("127.0.0.17", vec![rec("127.0.0.17", "srv")])]);
        // checks: 1 before sending, 2 before queueing the removal, 3 its batch
        let fence = Arc::new(TestFence {
            refuse_from: 3,
            ..TestFence::default()
        });
        let p = peer("127.0.0.17", 0, |_| true, nothing()).await;
        let mut how = delivery(p.port, None);
        how.fence = Some(fence.clone());
        let summary = within("the announcement", restart(&dir).send(dir.clone(), how))
            .await
            .unwrap();
        assert_eq!(summary.acked(), 1);
        assert_eq!(bak_files(&dir), ["127.0.0.17"], "the removal landed");
        assert_eq!(fence.checks.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// Out of budget: a peer that acknowledged none of its names stays whole in sm.bak/; one
    /// that acknowledged some keeps only the records of the names it did not.
    #[tokio::test]
    async fn out_of_budget_peers_stay_in_sm_bak() {
        let (_t, dir) = state_dir(&[
            ("127.0.0.17", vec![rec("127.0.0.17", "srv")]),
            (
                "127.0.0.18",
                vec![rec("127.0.0.18", "srv"), rec("127.0.0.18", "other")],
            ),
        ]);
        let silent = peer("127.0.0.17", 0, |_| false, nothing()).await;
        let half = peer("127.0.0.18", silent.port, |n| n == "srv", nothing()).await;
        let summary = within(
            "the announcement",
            restart(&dir).send(
                dir.clone(),
                delivery(silent.port, Some(Duration::from_secs(1))),
            ),
        )
        .await
        .unwrap();
        assert_eq!((summary.acked(), summary.gave_up()), (0, 2));
        assert_eq!(bak_files(&dir), ["127.0.0.17", "127.0.0.18"]);
        let (left, _) = dir.load(Dir::Bak).unwrap();
        let mut left: Vec<(String, Vec<u8>)> =
            left.into_iter().map(|(f, r)| (f, r.my_name)).collect();
        left.sort();
        assert_eq!(
            left,
            [
                ("127.0.0.17".to_owned(), b"srv".to_vec()),
                ("127.0.0.18".to_owned(), b"other".to_vec())
            ]
        );
        assert!(
            half.seen
                .lock()
                .unwrap()
                .notifies
                .iter()
                .any(|(n, _)| n == "other")
        );
    }

    /// Two sm.bak/ files of one peer (rpc.statd's by reverse name, nsmd's by mon_name): one
    /// target at the mon_name, sent the names of both, and both files removed.
    #[tokio::test]
    async fn one_peer_under_two_files_is_notified_once_and_both_leave() {
        let (_t, dir) = state_dir(&[
            ("peer19.invalid", vec![rec("127.0.0.19", "srv")]),
            ("127.0.0.19", vec![rec("127.0.0.19", "srv2")]),
        ]);
        let p = peer("127.0.0.19", 0, |_| true, nothing()).await;
        let a = restart(&dir);
        assert_eq!(a.peers(), 1);
        let summary = within(
            "the announcement",
            a.send(dir.clone(), delivery(p.port, None)),
        )
        .await
        .unwrap();
        assert_eq!(summary.acked(), 1);
        let mut names: Vec<String> = p
            .seen
            .lock()
            .unwrap()
            .notifies
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        names.dedup();
        assert_eq!(names, ["srv2", "srv"]);
        assert!(bak_files(&dir).is_empty());
    }

    /// A fence whose verdict the test sets, and whose check (the ownership on disk) it
    /// can make refuse alone (at once, or from its `refuse_from`-th check on).
    #[derive(Debug)]
    struct TestFence {
        verdict: Arc<watch::Sender<Option<String>>>,
        refuse: Arc<std::sync::atomic::AtomicBool>,
        checks: std::sync::atomic::AtomicUsize,
        refuse_from: usize,
    }

    impl Default for TestFence {
        fn default() -> Self {
            Self {
                verdict: Arc::new(watch::Sender::new(None)),
                refuse: Arc::default(),
                checks: Default::default(),
                refuse_from: usize::MAX,
            }
        }
    }

    impl Fence for TestFence {
        fn check(&self) -> Result<(), String> {
            let n = self
                .checks
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            if n >= self.refuse_from || self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("the ownership moved on".into());
            }
            self.verdict.borrow().clone().map_or(Ok(()), Err)
        }

        fn fenced(&self) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
            let mut rx = self.verdict.subscribe();
            Box::pin(async move {
                let why = rx.wait_for(Option::is_some).await.unwrap().clone();
                why.unwrap_or_default()
            })
        }
    }
}

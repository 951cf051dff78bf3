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
//!    ([`same_peer`]: the `sm.bak/` files of one peer under two names are one target) with
//!    the names the caller gives for each record, and removes what a peer acknowledged from
//!    `sm.bak/` as soon as it finished. A peer given up (out of budget) stays in `sm.bak/`
//!    for the next announcement (logged, counted in the [`Summary`]). With a [`Fence`],
//!    nothing is written once it refuses, and the run stops as soon as its verdict says
//!    another node took over: the peers not acknowledged yet stay in `sm.bak/`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use nsm_store::{Committer, Dir, Record, StateDir, StoreError};
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
    /// `sm.bak/` could not be read.
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
    /// The fence's verdict: another node took the directory over.
    #[error("stopped: {0}; the peers not acknowledged stay in sm.bak/")]
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
    /// The mon_names to send for one record (one peer is sent the union, in order).
    pub names: &'a (dyn Fn(&Record) -> Vec<String> + Sync),
    /// Where the SM_NOTIFYs leave from.
    pub source: Source,
    /// Retries, window, timeouts (its `state` is replaced by the announcement's).
    pub config: NotifierConfig,
    /// Nothing is sent before this opens.
    pub gate: Option<Gate<'a>>,
    /// Nothing is written once this refuses; the run stops once it says fenced.
    pub fence: Option<&'a dyn Fence>,
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

/// The `sm.bak/` files of one peer (see [`same_peer`]).
type Group = Vec<(String, Vec<Record>)>;

/// The first half of a restart: `sm/` moved to `sm.bak/`, the peers of `sm.bak/` loaded,
/// the state not bumped yet ([`Retired::bump`]).
#[derive(Debug, Clone)]
pub struct Retired {
    moved: usize,
    groups: Vec<Group>,
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
        Ok(Self {
            moved,
            groups: same_peer(load_bak(dir)?),
        })
    }

    /// The files moved from `sm/` to `sm.bak/`.
    pub fn moved(&self) -> usize {
        self.moved
    }

    /// The peers to notify (one per group of `sm.bak/` files, see [`same_peer`]).
    pub fn peers(&self) -> usize {
        self.groups.len()
    }

    /// Whether nobody is to be notified (sm-notify then leaves the state alone).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
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
            groups: self.groups,
        })
    }
}

/// A restart to announce: a durable state and the peers of `sm.bak/`. Made only by
/// [`Retired::bump`] (a new state) or [`Announcement::again`] (a state on disk already).
#[derive(Debug, Clone)]
pub struct Announcement {
    state: i32,
    moved: usize,
    groups: Vec<Group>,
}

impl Announcement {
    /// The peers still in `sm.bak/`, announced again with `state`, which is on disk already
    /// (a resumed instance, `nsmctl notify`, SIGUSR1). Nothing moves.
    pub fn again(dir: &StateDir, state: i32) -> Result<Self, AnnounceError> {
        Ok(Self {
            state,
            moved: 0,
            groups: same_peer(load_bak(dir)?),
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

    /// The peers to notify (one per group of `sm.bak/` files, see [`same_peer`]).
    pub fn peers(&self) -> usize {
        self.groups.len()
    }

    /// Whether nobody is to be notified.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
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
        if self.groups.is_empty() {
            return Ok(Summary {
                state: self.state,
                elapsed: std::time::Duration::ZERO,
                peers: Vec::new(),
            });
        }
        if let Some(gate) = gate
            && !gate.await
        {
            return Err(AnnounceError::GateClosed);
        }
        if let Some(f) = fence {
            f.check().map_err(AnnounceError::Fenced)?;
        }
        let sources = match source {
            Source::Bound(s) => s,
            Source::Bind(spec) => bind_sources(&spec)?,
        };
        let run = notify_groups(dir, self.groups, names, config, sources, fence);
        match fence {
            None => run.await,
            Some(f) => tokio::select! {
                r = run => r,
                why = f.fenced() => Err(AnnounceError::Fenced(why)),
            },
        }
    }
}

/// The records of `sm.bak/`, by file (one file per peer name).
fn load_bak(dir: &StateDir) -> Result<BTreeMap<String, Vec<Record>>, AnnounceError> {
    let (records, _report) = dir.load(Dir::Bak).map_err(|source| AnnounceError::Load {
        dir: dir.path().to_owned(),
        source,
    })?;
    let mut files: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for (file, r) in records {
        files.entry(file).or_default().push(r);
    }
    Ok(files)
}

/// The files of `sm.bak/` grouped by peer: files whose lines share a mon_name hold the same
/// peer under two names (rpc.statd names a file by the mon_name's canonical DNS name, nsmd by
/// the mon_name itself; a peer left over from one and monitored again under the other has
/// both). Each group is notified once, at the file named by its mon_name when there is one
/// (the name lockd gave), else at its first file.
fn same_peer(files: BTreeMap<String, Vec<Record>>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut by_mon_name: HashMap<Vec<u8>, usize> = HashMap::new();
    for (file, rs) in files {
        let found = rs
            .iter()
            .find_map(|r| by_mon_name.get(&r.mon_name).copied());
        let i = found.unwrap_or_else(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        for r in &rs {
            by_mon_name.entry(r.mon_name.clone()).or_insert(i);
        }
        groups[i].push((file, rs));
    }
    for g in &mut groups {
        if let Some(own) = g
            .iter()
            .position(|(f, rs)| rs.iter().any(|r| r.mon_name == f.as_bytes()))
        {
            g.swap(0, own);
        }
    }
    groups
}

/// Notifies every group with the names `names` gives for each of its records; removes what
/// a peer acknowledged from `sm.bak/` as soon as it finished. Removals go through the
/// store's group commit: the fsyncs of many acknowledgements share batches, off the event
/// loop, so a large peer list never waits on the disk between replies.
async fn notify_groups(
    dir: Arc<StateDir>,
    groups: Vec<Group>,
    names: &(dyn Fn(&Record) -> Vec<String> + Sync),
    cfg: NotifierConfig,
    sources: Sources,
    fence: Option<&dyn Fence>,
) -> Result<Summary, AnnounceError> {
    let mut targets = Vec::new();
    let mut index = HashMap::new();
    for (i, group) in groups.iter().enumerate() {
        let mut all: Vec<String> = Vec::new();
        for r in group.iter().flat_map(|(_, rs)| rs) {
            for n in names(r) {
                if !all.contains(&n) {
                    all.push(n);
                }
            }
        }
        let host = group[0].0.clone();
        index.insert(host.clone(), i);
        targets.push(Target {
            label: host.clone(),
            host,
            names: all,
        });
    }
    let notifier = Notifier::new(cfg, sources, targets)?;
    let committer = Committer::spawn(dir);
    let mut pending = Vec::new();
    let summary = notifier
        .run(|t, outcome, acked| {
            let Some(i) = index.get(&t.label).copied() else {
                return;
            };
            if outcome == Outcome::GaveUp {
                warn!(
                    peer = %t.label,
                    "given up (out of the retry budget): kept in sm.bak/ for the next announcement"
                );
            }
            for (file, recs) in &groups[i] {
                let remaining: Vec<Record> = match outcome {
                    Outcome::Acked => Vec::new(),
                    Outcome::GaveUp if acked == 0 => return,
                    Outcome::GaveUp => {
                        let done = &t.names[..acked];
                        recs.iter()
                            .filter(|r| !names(r).iter().all(|n| done.contains(n)))
                            .cloned()
                            .collect()
                    }
                };
                if remaining.len() == recs.len() {
                    continue;
                }
                if let Some(Err(e)) = fence.map(Fence::check) {
                    warn!("{file} not updated: {e}");
                    return;
                }
                let label = file.clone();
                let path = committer.state_dir().file_path(Dir::Bak, &label);
                let gone = remaining.is_empty();
                let commit = committer.commit(Dir::Bak, label.clone(), remaining);
                pending.push(tokio::spawn(async move {
                    match commit.await {
                        Ok(()) if gone => info!("{label} removed from sm.bak"),
                        Ok(()) => info!("acknowledged records of {label} removed from sm.bak"),
                        Err(e) => error!(
                            "cannot update {}: {e}; the peer will be notified again next time",
                            path.display()
                        ),
                    }
                }));
            }
        })
        .await;
    for p in pending {
        let _ = p.await;
    }
    Ok(summary?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

    #[test]
    fn files_of_one_peer_under_two_names_are_one_target() {
        let mut files = BTreeMap::new();
        // rpc.statd's leftover (named by the reverse name) and nsmd's file (by the mon_name).
        files.insert(
            "a.example.test".to_owned(),
            vec![rec("198.51.100.20", "srv")],
        );
        files.insert(
            "198.51.100.20".to_owned(),
            vec![rec("198.51.100.20", "srv2")],
        );
        files.insert(
            "198.51.100.21".to_owned(),
            vec![rec("198.51.100.21", "srv")],
        );
        let groups = same_peer(files);
        let shape: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|(f, _)| f.as_str()).collect())
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
}

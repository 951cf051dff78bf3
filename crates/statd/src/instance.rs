//! An instance: one NSM identity (design.md "Words"): its state directory, its state number,
//! the records it monitors, and what happens on each NSM procedure. The node instance is what
//! rpc.statd is; service instances (one per NFS service) reuse this type with other settings.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nsm_notify::{NotifierConfig, Policy, SourceSpec, bind_sources, default_names};
use nsm_store::{Committer, Dir, LoadReport, Record, StateDir, StoreError};
use nsm_xdr::nsm::{Mon, MonId, MyId, NLM_PROG, Res, SmStat, SmStatRes, StatChge};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::callback::{Callback, CallbackPolicy, Callbacks};
use crate::callout::Callouts;
use crate::names::{canonical, check_my_name, ip_literal, same_host, sanitize_my_name};
use crate::ownership::Fence;

/// Who may change the state number and tell the kernel about it. Both need root on a
/// Debian-style directory (the base directory and `state` stay root's, CVE-2019-3689; the
/// kernel's `nsm_local_state` is root's), while nsmd itself runs as the owner of `sm/`: the
/// binary then passes a privileged helper here.
pub trait StateAuthority: Send + Sync + std::fmt::Debug {
    /// Bumps the state by two (nfs-utils' rules), durably, tells the kernel, returns it.
    fn bump(&self) -> Result<i32, crate::Error>;
    /// Tells the kernel the state (skipped when its file does not exist).
    fn publish(&self, state: i32) -> Result<(), crate::Error>;
}

/// The state directory and the kernel file written directly, by this process.
#[derive(Debug)]
pub struct DirectAuthority {
    /// The state directory.
    pub dir: Arc<StateDir>,
    /// `/proc/sys/fs/nfs/nsm_local_state` (or a stand-in).
    pub nsm_local_state: Option<PathBuf>,
}

impl StateAuthority for DirectAuthority {
    fn bump(&self) -> Result<i32, crate::Error> {
        let state = self.dir.state(true)?;
        self.publish(state)?;
        Ok(state)
    }

    fn publish(&self, state: i32) -> Result<(), crate::Error> {
        match &self.nsm_local_state {
            Some(path) if path.exists() => {
                std::fs::write(path, state.to_string()).map_err(|source| crate::Error::Write {
                    path: path.clone(),
                    source,
                })
            }
            _ => Ok(()),
        }
    }
}

/// How an instance is set up.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// A name for logs (`node` for the node instance).
    pub name: String,
    /// The state directory (`sm/`, `sm.bak/`, `state`).
    pub state_dir: PathBuf,
    /// Where to write the state number for the kernel (`/proc/sys/fs/nfs/nsm_local_state`);
    /// skipped when the file does not exist.
    pub nsm_local_state: Option<PathBuf>,
    /// How lockd is called back.
    pub callback: CallbackPolicy,
    /// The HA callout program, if any.
    pub ha_callout: Option<PathBuf>,
    /// SM_NOTIFYs accepted per second from one address (burst: twice that).
    pub notify_rate: u32,
    /// Who bumps and publishes the state; `None`: this process, directly.
    pub authority: Option<Arc<dyn StateAuthority>>,
    /// For a service instance: the ownership every write is checked against (fencing).
    pub fence: Option<Arc<dyn Fence>>,
    /// For a service instance: its service address, passed to the HA callout's
    /// `add-client` and `del-client` as a third argument.
    pub service_address: Option<String>,
    /// How the peers are notified after an SM_SIMU_CRASH; `None`: they are not.
    pub crash_notify: Option<CrashNotify>,
}

/// How an instance notifies its peers after SM_SIMU_CRASH, as a restart would (rpc.statd
/// re-runs sm-notify).
#[derive(Debug, Clone)]
pub struct CrashNotify {
    /// Where the SM_NOTIFYs leave from.
    pub sources: SourceSpec,
    /// The mon_names sent, in order; empty: each record's my_name, then its short name (as
    /// sm-notify without `-v`).
    pub names: Vec<String>,
    /// Retries and window.
    pub policy: Policy,
    /// Nothing is sent before this gate opens (nsmd registered with rpcbind).
    pub registered: crate::registered::Registered,
}

impl InstanceConfig {
    /// Defaults for an instance in `state_dir`.
    pub fn new(name: &str, state_dir: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            state_dir,
            nsm_local_state: None,
            callback: CallbackPolicy::default(),
            ha_callout: None,
            notify_rate: 10,
            authority: None,
            fence: None,
            service_address: None,
            crash_notify: None,
        }
    }
}

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    /// The state directory could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
struct Entry {
    /// Order of addition (for [`Instance::peers`]).
    seq: u64,
    record: Record,
    /// The last state a notification carried for this record (in memory only, as nfs-utils).
    last_state: Option<i32>,
}

/// The monitored records, by file (one file per mon_name, as nfs-utils), so SM_MON finds and
/// rewrites a record's file without walking the others: its cost does not grow with the
/// number of records.
#[derive(Debug, Default)]
struct Records {
    /// Each file's records, in the order they were added (the file's line order).
    files: HashMap<String, Vec<Entry>>,
    /// mon_names whose records were loaded from a file named otherwise (rpc.statd names a
    /// file by the mon_name's canonical DNS name, e.g. `client1.example.com` for a kernel's
    /// `198.51.100.20`): that file, so a later SM_MON of the same mon_name rewrites it
    /// instead of adding a second file, and the peer is notified once.
    adopted: HashMap<Vec<u8>, String>,
    next_seq: u64,
    len: usize,
}

impl Records {
    fn push(&mut self, file: String, record: Record) {
        if file.as_bytes() != record.mon_name.as_slice() {
            self.adopted.insert(record.mon_name.clone(), file.clone());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.len += 1;
        self.files.entry(file).or_default().push(Entry {
            seq,
            record,
            last_state: None,
        });
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.files.values().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.files.values_mut().flatten()
    }

    /// The file the records of `mon_name` go to: the one they were loaded from if it was
    /// named otherwise and still holds records, else `own` (the mon_name's own file name).
    fn file_for(&self, mon_name: &[u8], own: String) -> String {
        match self.adopted.get(mon_name) {
            Some(f) if self.files.contains_key(f) => f.clone(),
            _ => own,
        }
    }

    /// Every record stored in `file`, in the order they were added.
    fn content(&self, file: &str) -> Vec<Record> {
        self.files
            .get(file)
            .map(|v| v.iter().map(|e| e.record.clone()).collect())
            .unwrap_or_default()
    }

    /// Removes the records `pred` selects; returns them and the files they were in.
    fn remove_where(&mut self, pred: impl Fn(&Record) -> bool) -> (Vec<Record>, Vec<String>) {
        let (mut removed, mut files) = (Vec::new(), Vec::new());
        for (file, list) in &mut self.files {
            let before = removed.len();
            list.retain(|e| {
                if pred(&e.record) {
                    removed.push(e.record.clone());
                    false
                } else {
                    true
                }
            });
            if removed.len() > before {
                files.push(file.clone());
            }
        }
        self.files.retain(|_, list| !list.is_empty());
        let files_left = &self.files;
        self.adopted.retain(|_, f| files_left.contains_key(f));
        self.len -= removed.len();
        (removed, files)
    }

    /// Removes one record equal to `record` from `file` (undoing an SM_MON).
    fn remove_one(&mut self, file: &str, record: &Record) {
        if let Some(list) = self.files.get_mut(file)
            && let Some(i) = list.iter().position(|e| e.record == *record)
        {
            list.remove(i);
            self.len -= 1;
            if list.is_empty() {
                self.files.remove(file);
            }
        }
    }

    fn clear(&mut self) {
        self.files.clear();
        self.adopted.clear();
        self.len = 0;
    }
}

/// Addresses of monitored names, looked up only when an SM_NOTIFY needs them (never on a
/// request path, never for every record at start), kept for [`RESOLVED_FOR`].
#[derive(Debug, Clone)]
struct Resolved {
    addrs: Vec<IpAddr>,
    at: Instant,
}

/// How long looked-up addresses of a monitored name are used before they are looked up again.
const RESOLVED_FOR: Duration = Duration::from_secs(300);
/// SM_NOTIFYs waiting to be matched at most (behind name lookups); more are dropped with a
/// warning, so a flood of forged SM_NOTIFYs cannot queue unbounded work.
const MAX_PENDING_MATCHES: usize = 4096;

/// An SM_NOTIFY to match in the background.
#[derive(Debug)]
struct MatchJob {
    peer: SocketAddr,
    from: IpAddr,
    name: Vec<u8>,
    state: i32,
    /// `None`: match it entirely; `Some`: the records with these (lower-case) names are
    /// left, to match once their addresses are looked up.
    remainder: Option<HashSet<Vec<u8>>>,
}

/// A simple token bucket per sender address, to bound how much work forged or runaway
/// SM_NOTIFYs can cause.
#[derive(Debug)]
struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() > 4096 {
            let horizon = Duration::from_secs(60);
            self.buckets
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < horizon);
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.per_sec;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One NSM identity.
#[derive(Debug)]
pub struct Instance {
    name: String,
    dir: Arc<StateDir>,
    committer: Committer,
    state: AtomicI32,
    entries: Mutex<Records>,
    /// Addresses of monitored names (lower case), looked up when an SM_NOTIFY needs them.
    addrs: Mutex<HashMap<Vec<u8>, Resolved>>,
    /// Lookups at once.
    resolving: Arc<Semaphore>,
    /// The matchings that wait for name lookups, done one after the other in arrival order
    /// (so lockd never hears of an older state after a newer one, and a second SM_NOTIFY
    /// uses what the first looked up).
    matcher: tokio::sync::mpsc::UnboundedSender<MatchJob>,
    /// Matchings queued or running; while there are any, new SM_NOTIFYs queue behind them.
    pending_matches: AtomicUsize,
    callbacks: Callbacks,
    metrics: crate::metrics::Metrics,
    callouts: Mutex<Callouts>,
    limiter: Mutex<RateLimiter>,
    authority: Arc<dyn StateAuthority>,
    fence: Option<Arc<dyn Fence>>,
    service_address: Option<String>,
    crash_notify: Option<CrashNotify>,
    /// The notification started by the last SM_SIMU_CRASH, if it still runs.
    notifying: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held shared by every SM_MON and SM_UNMON(_ALL) from its change in memory until its
    /// file is durable, and exclusively by SM_SIMU_CRASH while it moves `sm/` to `sm.bak/`
    /// and forgets the records: a registration acknowledged during a crash is then either
    /// moved with the others (and forgotten) or recorded after it (and kept, in memory and in
    /// `sm/`), never kept on disk but forgotten in memory.
    crash: tokio::sync::RwLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the list half-updated in a way that matters
    // more than stopping: keep serving with what is there.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a caller may use the local-only procedures (MON, UNMON, UNMON_ALL, SIMU_CRASH).
pub fn is_local(peer: SocketAddr) -> bool {
    canonical(peer.ip()).is_loopback()
}

impl Instance {
    /// Opens the state directory, reads the state number (without bumping it, as rpc.statd
    /// does), tells the kernel, loads every record in `sm/`, and starts the callback and
    /// callout workers. Must run inside a tokio runtime.
    pub fn open(cfg: InstanceConfig) -> Result<(Arc<Self>, LoadReport), InstanceError> {
        let dir = Arc::new(StateDir::open(&cfg.state_dir)?);
        let state = dir.state(false)?;
        let (loaded, report) = dir.load(Dir::Sm)?;
        let committer = Committer::spawn(dir.clone());
        let callouts = Mutex::new(callouts_for(cfg.ha_callout.clone()));
        let rate = f64::from(cfg.notify_rate.max(1));
        let authority = cfg.authority.unwrap_or_else(|| {
            Arc::new(DirectAuthority {
                dir: dir.clone(),
                nsm_local_state: cfg.nsm_local_state.clone(),
            })
        });
        let (matcher, mut jobs) = tokio::sync::mpsc::unbounded_channel::<MatchJob>();
        let inst = Arc::new(Self {
            name: cfg.name,
            dir,
            committer,
            state: AtomicI32::new(state),
            entries: Mutex::new({
                let mut r = Records::default();
                for (file, record) in loaded {
                    r.push(file, record);
                }
                r
            }),
            addrs: Mutex::default(),
            resolving: Arc::new(Semaphore::new(16)),
            matcher,
            pending_matches: AtomicUsize::new(0),
            callbacks: Callbacks::spawn(cfg.callback),
            metrics: crate::metrics::Metrics::default(),
            callouts,
            limiter: Mutex::new(RateLimiter {
                per_sec: rate,
                burst: 2.0 * rate,
                buckets: HashMap::new(),
            }),
            authority,
            fence: cfg.fence,
            service_address: cfg.service_address,
            crash_notify: cfg.crash_notify,
            notifying: Mutex::new(None),
            crash: tokio::sync::RwLock::new(()),
        });
        let weak = Arc::downgrade(&inst);
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let Some(this) = weak.upgrade() else { break };
                this.run_match(job).await;
                this.pending_matches.fetch_sub(1, Ordering::Relaxed);
            }
        });
        inst.publish_state();
        info!(
            instance = %inst.name,
            state,
            records = inst.len(),
            dir = %inst.dir.path().display(),
            "instance ready"
        );
        Ok((inst, report))
    }

    /// The name given in its configuration (`node` for the node instance).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Arc<StateDir> {
        &self.dir
    }

    /// The addresses known for `mon_name`: the name itself when it is an address literal,
    /// else what an earlier lookup found ([`Instance::look_up_later`]), if any. Never asks DNS.
    pub fn addresses_of(&self, mon_name: &[u8]) -> Vec<IpAddr> {
        if let Some(ip) = ip_literal(mon_name) {
            return vec![canonical(ip)];
        }
        lock(&self.addrs)
            .get(&mon_name.to_ascii_lowercase())
            .map(|r| r.addrs.clone())
            .unwrap_or_default()
    }

    /// The monitored peers: (mon_name, my_name) of every record, in the order added.
    pub fn peers(&self) -> Vec<(String, String)> {
        let entries = lock(&self.entries);
        let mut all: Vec<&Entry> = entries.iter().collect();
        all.sort_unstable_by_key(|e| e.seq);
        all.into_iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.record.mon_name).into_owned(),
                    String::from_utf8_lossy(&e.record.my_name).into_owned(),
                )
            })
            .collect()
    }

    /// `Err` (logged) when this node was fenced off this instance: it must not write.
    fn check_fence(&self, what: &str) -> Result<(), ()> {
        match self.fence.as_ref().map(|f| f.check()) {
            Some(Err(e)) => {
                warn!(instance = %self.name, "{what} refused: {e}");
                Err(())
            }
            _ => Ok(()),
        }
    }

    /// Sets the state number after a takeover bumped it on disk (and forgets every record:
    /// they moved to `sm.bak/`).
    pub fn took_over(&self, state: i32) {
        lock(&self.entries).clear();
        self.state.store(state, Ordering::Relaxed);
    }

    /// The current state number.
    pub fn state(&self) -> i32 {
        self.state.load(Ordering::Relaxed)
    }

    /// Number of records monitored.
    pub fn len(&self) -> usize {
        lock(&self.entries).len
    }

    /// True when nothing is monitored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Uses another HA callout program (or none) for events from now on; events already
    /// queued still go to the previous one.
    pub fn set_ha_callout(&self, program: Option<PathBuf>) {
        *lock(&self.callouts) = callouts_for(program);
    }

    fn callout(&self, kind: &'static str, mut args: Vec<Vec<u8>>) {
        if kind != "sm-notify"
            && let Some(a) = &self.service_address
        {
            args.push(a.clone().into_bytes());
        }
        lock(&self.callouts).send(kind, args);
    }

    /// The callback queue (for counters).
    pub fn callbacks(&self) -> &Callbacks {
        &self.callbacks
    }

    /// The instance's counters.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    fn publish_state(&self) {
        if let Err(e) = self.authority.publish(self.state()) {
            warn!("cannot tell the kernel the NSM state: {e}");
        }
    }

    /// Looks `name` up in the background (unless its addresses are known and fresh), so a later
    /// [`Instance::addresses_of`] knows them. For callers that want addresses of a name soon
    /// but must not wait for them.
    pub fn look_up_later(self: &Arc<Self>, name: &[u8]) {
        if ip_literal(name).is_some() || self.fresh(name, Instant::now()) {
            return;
        }
        let (this, name) = (self.clone(), name.to_vec());
        tokio::spawn(async move { this.look_up(vec![name]).await });
    }

    /// Whether the addresses of `name` were looked up less than [`RESOLVED_FOR`] ago.
    fn fresh(&self, name: &[u8], now: Instant) -> bool {
        lock(&self.addrs)
            .get(&name.to_ascii_lowercase())
            .is_some_and(|r| now.saturating_duration_since(r.at) < RESOLVED_FOR)
    }

    /// Looks up the addresses of `names` (at most 16 at once, 10 s each) and keeps them; a
    /// name that does not resolve is kept with no address, so it is not asked again at once.
    async fn look_up(&self, names: impl IntoIterator<Item = Vec<u8>>) {
        let lookups = names.into_iter().map(|name| {
            let sem = self.resolving.clone();
            async move {
                let _permit = sem.acquire().await.ok()?;
                let host = std::str::from_utf8(&name).ok()?.to_owned();
                let found = tokio::time::timeout(
                    Duration::from_secs(10),
                    nsm_notify::resolve::lookup(&host),
                )
                .await;
                let addrs = match found {
                    Ok(Ok(it)) => {
                        let mut v: Vec<IpAddr> = it.into_iter().map(canonical).collect();
                        v.sort_unstable();
                        v.dedup();
                        v
                    }
                    Ok(Err(e)) => {
                        debug!(host = %host, "cannot resolve a monitored name: {e}");
                        Vec::new()
                    }
                    Err(_) => {
                        debug!(host = %host, "resolving a monitored name timed out after 10 s");
                        Vec::new()
                    }
                };
                Some((name.to_ascii_lowercase(), addrs))
            }
        });
        let done = futures_util::future::join_all(lookups).await;
        let now = Instant::now();
        let mut addrs = lock(&self.addrs);
        for (key, v) in done.into_iter().flatten() {
            addrs.insert(key, Resolved { addrs: v, at: now });
        }
        if addrs.len() > 2 * lock(&self.entries).len + 1024 {
            addrs.retain(|_, r| now.saturating_duration_since(r.at) < RESOLVED_FOR);
        }
    }

    /// SM_STAT: whether nsmd could monitor `mon_name`, and the local state. Never asks DNS:
    /// nsmd monitors any well-formed name.
    pub fn stat(&self, mon_name: &[u8]) -> SmStatRes {
        SmStatRes {
            res_stat: if nsm_store::file_name(mon_name).is_ok() {
                Res::StatSucc
            } else {
                Res::StatFail
            },
            state: self.state(),
        }
    }

    fn fail() -> SmStatRes {
        SmStatRes {
            res_stat: Res::StatFail,
            state: -1,
        }
    }

    /// SM_MON: records the registration durably, then answers {stat_succ, state}.
    pub async fn mon(&self, peer: SocketAddr, m: &Mon<'_>) -> SmStatRes {
        let mon_name = m.mon_id.mon_name.as_bytes();
        let id = &m.mon_id.my_id;
        if !is_local(peer) {
            warn!(%peer, "SM_MON from a non-loopback address refused");
            return Self::fail();
        }
        if id.my_prog != NLM_PROG || !matches!(id.my_proc, 16 | 24) {
            warn!(%peer, prog = id.my_prog, proc = id.my_proc, "SM_MON with a callback other than lockd (100021, procedure 16 or 24) refused");
            return Self::fail();
        }
        let file = match nsm_store::file_name(mon_name) {
            Ok(f) => f.to_owned(),
            Err(e) => {
                warn!(%peer, mon_name = %m.mon_id.mon_name, "SM_MON refused: mon_name: {e}");
                return Self::fail();
            }
        };
        let my_name = sanitize_my_name(id.my_name.as_bytes());
        if let Err(e) = check_my_name(&my_name) {
            warn!(%peer, "SM_MON refused: my_name: {e}");
            return Self::fail();
        }
        if mon_name.len() + my_name.len() > 1024 {
            warn!(%peer, "SM_MON refused: mon_name and my_name together exceed 1024 bytes (nfs-utils could not read the record)");
            return Self::fail();
        }
        if self.check_fence("SM_MON").is_err() {
            return Self::fail();
        }
        let record = Record {
            mon_name: mon_name.to_vec(),
            my_name,
            my_prog: id.my_prog,
            my_vers: id.my_vers,
            my_proc: id.my_proc,
            priv_: m.priv_,
        };
        let _no_crash = self.crash.read().await;
        // Update memory and queue the file's new contents under the lock, so commits of the
        // same file are queued in the order their contents were computed.
        let (commit, previous, file) = {
            let mut entries = lock(&self.entries);
            let file = entries.file_for(mon_name, file);
            let list = entries.files.get_mut(&file);
            let same = |e: &Entry| {
                e.record.mon_name == record.mon_name
                    && e.record.my_name == record.my_name
                    && e.record.my_prog == record.my_prog
                    && e.record.my_vers == record.my_vers
                    && e.record.my_proc == record.my_proc
            };
            let previous = match list.and_then(|l| l.iter_mut().find(|e| same(e))) {
                Some(e) if e.record.priv_ == record.priv_ => {
                    debug!(mon_name = %m.mon_id.mon_name, "SM_MON repeated with the same cookie");
                    return SmStatRes {
                        res_stat: Res::StatSucc,
                        state: self.state(),
                    };
                }
                Some(e) => Some(std::mem::replace(&mut e.record, record.clone())),
                None => {
                    entries.push(file.clone(), record.clone());
                    None
                }
            };
            let content = entries.content(&file);
            (
                self.committer.commit(Dir::Sm, file.clone(), content),
                previous,
                file,
            )
        };
        let waited = Instant::now();
        let committed = commit.await;
        self.metrics.mon_waited(waited.elapsed());
        if let Err(e) = committed {
            warn!(mon_name = %m.mon_id.mon_name, "SM_MON failed: cannot record it durably: {e}");
            let mut entries = lock(&self.entries);
            match previous {
                Some(old) => {
                    if let Some(e) = entries
                        .files
                        .get_mut(&file)
                        .and_then(|l| l.iter_mut().find(|e| e.record == record))
                    {
                        e.record = old;
                    }
                }
                None => entries.remove_one(&file, &record),
            }
            return Self::fail();
        }
        self.callout(
            "add-client",
            vec![record.mon_name.clone(), record.my_name.clone()],
        );
        SmStatRes {
            res_stat: Res::StatSucc,
            state: self.state(),
        }
    }

    /// Removes the records `pred` selects, durably; returns how many.
    async fn remove(
        &self,
        what: &str,
        pred: impl Fn(&Record) -> bool,
    ) -> Result<Vec<Record>, StoreError> {
        let _no_crash = self.crash.read().await;
        let (commits, removed) = {
            let mut entries = lock(&self.entries);
            let (removed, files) = entries.remove_where(pred);
            let commits: Vec<_> = files
                .into_iter()
                .map(|f| {
                    let content = entries.content(&f);
                    self.committer.commit(Dir::Sm, f, content)
                })
                .collect();
            (commits, removed)
        };
        for c in commits {
            c.await?;
        }
        debug!(count = removed.len(), "{what}: removed");
        Ok(removed)
    }

    /// SM_UNMON: stops monitoring one (mon_name, my_name, callback) registration.
    pub async fn unmon(&self, peer: SocketAddr, id: &MonId<'_>) -> SmStat {
        let reply = SmStat {
            state: self.state(),
        };
        if !is_local(peer) {
            warn!(%peer, "SM_UNMON from a non-loopback address ignored");
            return reply;
        }
        if self.check_fence("SM_UNMON").is_err() {
            return reply;
        }
        let mon_name = id.mon_name.as_bytes();
        let my_name = sanitize_my_name(id.my_id.my_name.as_bytes());
        let my = &id.my_id;
        // One registration, as rpc.statd removes one: the record with this very mon_name (lockd
        // unmonitors with the name it monitored), else the same name in another case, else the
        // only record of the same host by short name. Never several hosts' records.
        let chosen = {
            let entries = lock(&self.entries);
            let candidates: Vec<&Record> = entries
                .iter()
                .map(|e| &e.record)
                .filter(|r| {
                    r.my_name == my_name
                        && (r.my_prog, r.my_vers, r.my_proc) == (my.my_prog, my.my_vers, my.my_proc)
                        && same_host(&r.mon_name, mon_name)
                })
                .collect();
            let exact = candidates.iter().find(|r| r.mon_name == mon_name);
            let folded = candidates
                .iter()
                .find(|r| r.mon_name.eq_ignore_ascii_case(mon_name));
            exact
                .or(folded)
                .or(match candidates.as_slice() {
                    [only] => Some(only),
                    _ => None,
                })
                .map(|r| (*r).clone())
        };
        let Some(chosen) = chosen else {
            debug!(mon_name = %id.mon_name, "SM_UNMON: no such registration");
            return reply;
        };
        let r = self.remove("SM_UNMON", |r| *r == chosen).await;
        match r {
            Ok(removed) => {
                for rec in removed {
                    self.callout("del-client", vec![rec.mon_name, my_name.clone()]);
                }
            }
            Err(e) => {
                warn!(mon_name = %id.mon_name, "SM_UNMON: cannot update the record file: {e}")
            }
        }
        reply
    }

    /// SM_UNMON_ALL: stops monitoring everything registered by this my_name and callback.
    pub async fn unmon_all(&self, peer: SocketAddr, my: &MyId<'_>) -> SmStat {
        let reply = SmStat {
            state: self.state(),
        };
        if !is_local(peer) {
            warn!(%peer, "SM_UNMON_ALL from a non-loopback address ignored");
            return reply;
        }
        if self.check_fence("SM_UNMON_ALL").is_err() {
            return reply;
        }
        let my_name = sanitize_my_name(my.my_name.as_bytes());
        let r = self
            .remove("SM_UNMON_ALL", |r| {
                same_host(&r.my_name, &my_name)
                    && (r.my_prog, r.my_vers, r.my_proc) == (my.my_prog, my.my_vers, my.my_proc)
            })
            .await;
        match r {
            Ok(removed) => {
                for rec in removed {
                    self.callout(
                        "del-client",
                        vec![rec.mon_name, my.my_name.as_bytes().to_vec()],
                    );
                }
            }
            Err(e) => warn!("SM_UNMON_ALL: cannot update a record file: {e}"),
        }
        reply
    }

    /// SM_SIMU_CRASH: behaves like a restart of this host: the state number goes up by two
    /// (durably), the records move to `sm.bak/`, nothing is monitored, and the peers in
    /// `sm.bak/` are notified in the background (with [`InstanceConfig::crash_notify`]).
    /// Only from loopback and a privileged port.
    pub async fn simu_crash(&self, peer: SocketAddr) {
        if !is_local(peer) || peer.port() >= 1024 {
            warn!(%peer, "SM_SIMU_CRASH refused: only from loopback and a privileged port");
            return;
        }
        // No SM_MON or SM_UNMON between the move and the forgetting (see `crash`).
        let _crash = self.crash.write().await;
        let (dir, authority) = (self.dir.clone(), self.authority.clone());
        let done = tokio::task::spawn_blocking(move || -> Result<(i32, usize), String> {
            let state = authority.bump().map_err(|e| e.to_string())?;
            let moved = dir.retire().map_err(|e| e.to_string())?;
            Ok((state, moved))
        })
        .await;
        match done {
            Ok(Ok((state, moved))) => {
                lock(&self.entries).clear();
                self.state.store(state, Ordering::Relaxed);
                info!(
                    instance = %self.name,
                    state,
                    moved,
                    "SM_SIMU_CRASH: state bumped, records moved to sm.bak/"
                );
                self.notify_peers(state);
            }
            Ok(Err(e)) => warn!("SM_SIMU_CRASH failed: {e}"),
            Err(e) => warn!("SM_SIMU_CRASH failed: {e}"),
        }
    }

    /// Notifies the peers still in `sm.bak/` again, with the current state, in the background
    /// (SIGUSR1). Nothing moves and the state stays: the records monitored now stay in `sm/`.
    pub fn renotify(&self) {
        self.notify_peers(self.state());
    }

    /// Notifies the peers in `sm.bak/` of `state` in the background (after SM_SIMU_CRASH),
    /// instead of a notification still running for an older state.
    fn notify_peers(&self, state: i32) {
        let Some(cn) = self.crash_notify.clone() else {
            info!(instance = %self.name, "peers not notified: no notifier configured for this instance");
            return;
        };
        let (dir, fence, name) = (self.dir.clone(), self.fence.clone(), self.name.clone());
        let task = tokio::spawn(async move {
            if !cn.registered.is_open() {
                info!(instance = %name, state, "notification waits until nsmd is registered with rpcbind");
            }
            if !cn.registered.wait().await {
                info!(instance = %name, state, "not notified: nsmd stops before it was registered; the peers stay in sm.bak/");
                return;
            }
            match notify_bak_now(dir, &cn, state, fence.as_deref()).await {
                Ok(msg) => info!(instance = %name, state, "notification: {msg}"),
                Err(e) => warn!(instance = %name, state, "peers in sm.bak/ not notified: {e}"),
            }
        });
        if let Some(old) = lock(&self.notifying).replace(task) {
            old.abort();
        }
    }

    /// SM_NOTIFY from a peer: calls lockd back for every record that matches the sender by
    /// name or address and has not seen this state yet. Never waits for lockd or DNS: records
    /// whose name differs from the sender's and whose addresses are not known yet are looked
    /// up in the background, and matched by the sender's address then.
    pub fn notify(self: &Arc<Self>, peer: SocketAddr, sc: &StatChge<'_>) {
        let from = canonical(peer.ip());
        if !lock(&self.limiter).allow(from, Instant::now()) {
            self.metrics
                .notify_rate_limited
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "SM_NOTIFY over the rate limit for this address; ignored");
            return;
        }
        let name = sc.mon_name.as_bytes();
        self.callout(
            "sm-notify",
            vec![
                name.to_vec(),
                from.to_string().into_bytes(),
                sc.state.to_string().into_bytes(),
            ],
        );
        let addrs = lock(&self.addrs);
        let mut entries = lock(&self.entries);
        // Behind matchings still waiting for lookups, so the order of states is kept.
        if self.pending_matches.load(Ordering::Relaxed) > 0 {
            self.enqueue(MatchJob {
                peer,
                from,
                name: name.to_vec(),
                state: sc.state,
                remainder: None,
            });
            return;
        }
        let (matched, unknown) = self.match_now(&addrs, &mut entries, peer, from, name, sc.state);
        info!(%peer, mon_name = %sc.mon_name, state = sc.state, matched, "SM_NOTIFY");
        if !unknown.is_empty() {
            debug!(%peer, names = unknown.len(), "SM_NOTIFY: looking up monitored names to match the sender's address");
            self.enqueue(MatchJob {
                peer,
                from,
                name: name.to_vec(),
                state: sc.state,
                remainder: Some(unknown),
            });
        }
    }

    /// Queues `job` for the matcher (within [`MAX_PENDING_MATCHES`]).
    fn enqueue(&self, job: MatchJob) {
        if self.pending_matches.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_MATCHES {
            self.pending_matches.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .notify_queue_full
                .fetch_add(1, Ordering::Relaxed);
            warn!(peer = %job.peer, mon_name = %String::from_utf8_lossy(&job.name), "SM_NOTIFY dropped: {MAX_PENDING_MATCHES} notifications already wait for name lookups");
            return;
        }
        if self.matcher.send(job).is_err() {
            self.pending_matches.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Matches an SM_NOTIFY against every record with what is known now: queues the callbacks
    /// of the records it concerns; returns how many, and the (lower-case) names of the records
    /// whose addresses must be looked up first.
    fn match_now(
        &self,
        addrs: &HashMap<Vec<u8>, Resolved>,
        entries: &mut Records,
        peer: SocketAddr,
        from: IpAddr,
        name: &[u8],
        state: i32,
    ) -> (usize, HashSet<Vec<u8>>) {
        let now = Instant::now();
        let ambiguous = short_name_is_ambiguous(name, entries.iter());
        let (mut matched, mut unknown) = (0, HashSet::new());
        for e in entries.iter_mut() {
            let mon = &e.record.mon_name;
            let literal = ip_literal(mon).map(|ip| vec![canonical(ip)]);
            let known = literal.as_deref().or_else(|| {
                addrs
                    .get(&mon.to_ascii_lowercase())
                    .filter(|r| now.saturating_duration_since(r.at) < RESOLVED_FOR)
                    .map(|r| r.addrs.as_slice())
            });
            match notify_match(name, mon, known, from, ambiguous) {
                NotifyMatch::Yes(how) => {
                    if how == NotifyMatch::NAME && known.is_some_and(|a| !a.contains(&from)) {
                        info!(%peer, mon_name = %String::from_utf8_lossy(name), "SM_NOTIFY matched by name from an address not known for that host");
                    }
                    matched += self.call_back(e, state);
                }
                NotifyMatch::No => {}
                NotifyMatch::LookUp => {
                    unknown.insert(mon.to_ascii_lowercase());
                }
            }
        }
        (matched, unknown)
    }

    /// One queued matching: what can be matched now (a whole queued SM_NOTIFY), then the
    /// records whose addresses had to be looked up.
    async fn run_match(&self, job: MatchJob) {
        let MatchJob {
            peer,
            from,
            name,
            state,
            remainder,
        } = job;
        let mon_name = String::from_utf8_lossy(&name).into_owned();
        let names = match remainder {
            Some(n) => n,
            None => {
                let addrs = lock(&self.addrs);
                let mut entries = lock(&self.entries);
                let (matched, unknown) =
                    self.match_now(&addrs, &mut entries, peer, from, &name, state);
                info!(%peer, %mon_name, state, matched, "SM_NOTIFY (queued behind name lookups)");
                unknown
            }
        };
        if !names.is_empty() {
            self.match_by_address(peer, from, &mon_name, state, names)
                .await;
        }
    }

    /// The second half of [`Instance::notify`]: looks up the names not known yet, then calls
    /// lockd back for those records whose host has the sender's address.
    async fn match_by_address(
        &self,
        peer: SocketAddr,
        from: IpAddr,
        mon_name: &str,
        state: i32,
        names: HashSet<Vec<u8>>,
    ) {
        let now = Instant::now();
        let stale: Vec<Vec<u8>> = names
            .iter()
            .filter(|n| !self.fresh(n, now))
            .cloned()
            .collect();
        if !stale.is_empty() {
            self.look_up(stale).await;
        }
        let addrs = lock(&self.addrs);
        let mut entries = lock(&self.entries);
        let ambiguous = short_name_is_ambiguous(mon_name.as_bytes(), entries.iter());
        let mut matched = 0;
        for e in entries.iter_mut() {
            let key = e.record.mon_name.to_ascii_lowercase();
            if !names.contains(&key) {
                continue;
            }
            // Looked up just now: a name that did not resolve has no address.
            let known = addrs.get(&key).map_or(&[][..], |r| r.addrs.as_slice());
            if let NotifyMatch::Yes(how) = notify_match(
                mon_name.as_bytes(),
                &e.record.mon_name,
                Some(known),
                from,
                ambiguous,
            ) {
                debug!(%peer, %mon_name, record = %String::from_utf8_lossy(&e.record.mon_name), "SM_NOTIFY matched by {how}");
                matched += self.call_back(e, state);
            }
        }
        if matched > 0 {
            info!(%peer, %mon_name, state, matched, "SM_NOTIFY matched after looking up monitored names");
        } else {
            debug!(%peer, %mon_name, state, "SM_NOTIFY: no more records match the sender's address");
        }
    }

    /// Queues the lockd callback of a record unless it has seen `state` already; 1 if queued.
    fn call_back(&self, e: &mut Entry, state: i32) -> usize {
        if e.last_state == Some(state) {
            return 0;
        }
        e.last_state = Some(state);
        self.callbacks.queue(Callback {
            mon_name: e.record.mon_name.clone(),
            state,
            priv_: e.record.priv_,
            prog: e.record.my_prog,
            vers: e.record.my_vers,
            proc_: e.record.my_proc,
        });
        1
    }
}

/// Whether an SM_NOTIFY concerns a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotifyMatch {
    /// It does, and how (for the log).
    Yes(&'static str),
    /// It does not.
    No,
    /// The record's addresses are needed to tell.
    LookUp,
}

impl NotifyMatch {
    const NAME: &'static str = "name";
}

/// Whether an SM_NOTIFY naming `name`, sent from `from`, concerns the record of `mon`, whose
/// addresses are `known` (`None`: not looked up yet; empty: it does not resolve):
/// - the same name (ASCII case aside): yes;
/// - `from` among the record's addresses: yes;
/// - a short name and its FQDN (`web1`, `web1.prod.example`) are the same host only when the
///   addresses agree, since `web1.staging.example` is another host; only when the record's
///   name does not resolve at all, and no other record has that short name, the names alone
///   decide (the "FQDN or short name"; rpc.statd would not match then at all).
fn notify_match(
    name: &[u8],
    mon: &[u8],
    known: Option<&[IpAddr]>,
    from: IpAddr,
    ambiguous_short: bool,
) -> NotifyMatch {
    if name.eq_ignore_ascii_case(mon) {
        return NotifyMatch::Yes(NotifyMatch::NAME);
    }
    match known {
        None => NotifyMatch::LookUp,
        Some(a) if a.contains(&from) => NotifyMatch::Yes("address"),
        Some([]) if !ambiguous_short && same_host(name, mon) => {
            NotifyMatch::Yes("short name (the monitored name does not resolve)")
        }
        Some(_) => NotifyMatch::No,
    }
}

/// Whether more than one monitored host answers to the short form of `name` (`web1` for
/// `web1.prod.example` and `web1.staging.example`).
fn short_name_is_ambiguous<'a>(name: &[u8], entries: impl Iterator<Item = &'a Entry>) -> bool {
    let mut seen: Option<Vec<u8>> = None;
    for e in entries {
        let mon = &e.record.mon_name;
        if name.eq_ignore_ascii_case(mon) || !same_host(name, mon) {
            continue;
        }
        let key = mon.to_ascii_lowercase();
        match &seen {
            None => seen = Some(key),
            Some(k) if *k == key => {}
            Some(_) => return true,
        }
    }
    false
}

/// Notifies every peer in `sm.bak/` of `state` as `cn` says; a summary for the log.
async fn notify_bak_now(
    dir: Arc<StateDir>,
    cn: &CrashNotify,
    state: i32,
    fence: Option<&dyn Fence>,
) -> Result<String, String> {
    let files = crate::bak::load_bak(&dir)
        .map_err(|e| format!("cannot read {}/sm.bak: {e}", dir.path().display()))?;
    if files.is_empty() {
        return Ok("no one to notify".into());
    }
    let socks = bind_sources(&cn.sources).map_err(|e| e.to_string())?;
    let cfg = NotifierConfig {
        state,
        policy: cn.policy.clone(),
        ..NotifierConfig::default()
    };
    let names = |r: &Record| {
        if cn.names.is_empty() {
            default_names(&String::from_utf8_lossy(&r.my_name))
        } else {
            cn.names.clone()
        }
    };
    let summary = crate::bak::notify_bak(dir, files, names, cfg, socks, fence)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{} of {} peer(s) acknowledged, {} given up",
        summary.acked(),
        summary.peers.len(),
        summary.gave_up()
    ))
}

fn callouts_for(program: Option<PathBuf>) -> Callouts {
    match program {
        Some(p) => Callouts::spawn(p, 1024, Duration::from_secs(60)),
        None => Callouts::none(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_bounds_a_burst_and_refills() {
        let mut r = RateLimiter {
            per_sec: 10.0,
            burst: 20.0,
            buckets: HashMap::new(),
        };
        let ip = IpAddr::from([198, 51, 100, 9]);
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| r.allow(ip, t0)).count();
        assert_eq!(allowed, 20);
        assert!(r.allow(ip, t0 + Duration::from_millis(150)));
        assert!(r.allow(IpAddr::from([198, 51, 100, 10]), t0), "per address");
    }

    fn rec(mon: &str, my: &str) -> Record {
        Record {
            mon_name: mon.into(),
            my_name: my.into(),
            my_prog: NLM_PROG,
            my_vers: 3,
            my_proc: 16,
            priv_: [7; 16],
        }
    }

    /// Bumps only once the test lets it, after saying it was entered.
    #[derive(Debug)]
    struct GatedBump {
        dir: Arc<StateDir>,
        entered: std::sync::mpsc::SyncSender<()>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl StateAuthority for GatedBump {
        fn bump(&self) -> Result<i32, crate::Error> {
            let _ = self.entered.send(());
            let _ = lock(&self.go).recv();
            Ok(self.dir.state(true)?)
        }
        fn publish(&self, _state: i32) -> Result<(), crate::Error> {
            Ok(())
        }
    }

    fn lockd_mon(name: &'static [u8]) -> Mon<'static> {
        Mon {
            mon_id: MonId {
                mon_name: nsm_xdr::Opaque::new(name).unwrap(),
                my_id: MyId {
                    my_name: nsm_xdr::Opaque::new(b"srv").unwrap(),
                    my_prog: NLM_PROG,
                    my_vers: 3,
                    my_proc: 16,
                },
            },
            priv_: [9; 16],
        }
    }

    /// An SM_MON that arrives while SM_SIMU_CRASH moves `sm/` to `sm.bak/` is recorded after
    /// the crash: monitored and in `sm/`. (Before, it could be written to `sm/` after the move
    /// and then forgotten in memory by the crash: on disk, not monitored.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_sm_mon_during_sm_simu_crash_is_recorded_after_it() {
        let d = tempfile::tempdir().unwrap();
        let (entered_tx, entered_rx) = std::sync::mpsc::sync_channel(1);
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let mut cfg = InstanceConfig::new("node", d.path().to_owned());
        cfg.authority = Some(Arc::new(GatedBump {
            dir: Arc::new(StateDir::open(d.path()).unwrap()),
            entered: entered_tx,
            go: Mutex::new(go_rx),
        }));
        let (inst, _) = Instance::open(cfg).unwrap();
        let local: SocketAddr = "127.0.0.1:700".parse().unwrap();
        let ok = |r: SmStatRes| assert_eq!(r.res_stat, Res::StatSucc);
        ok(inst.mon(local, &lockd_mon(b"before")).await);

        let crash = tokio::spawn({
            let i = inst.clone();
            async move { i.simu_crash(local).await }
        });
        tokio::task::spawn_blocking(move || entered_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let during = tokio::spawn({
            let i = inst.clone();
            async move { i.mon(local, &lockd_mon(b"during")).await }
        });
        // Give the SM_MON every chance to run before the crash goes on (not an assertion).
        tokio::time::sleep(Duration::from_millis(100)).await;
        go_tx.send(()).unwrap();
        crash.await.unwrap();
        ok(during.await.unwrap());

        assert_eq!(inst.peers(), [("during".to_owned(), "srv".to_owned())]);
        let names = |dir| -> Vec<String> {
            let (r, _) = inst.state_dir().load(dir).unwrap();
            r.into_iter().map(|(f, _)| f).collect()
        };
        assert_eq!(names(Dir::Sm), ["during"]);
        assert_eq!(names(Dir::Bak), ["before"]);
    }

    #[test]
    fn a_mon_name_loaded_from_a_file_named_otherwise_stays_in_that_file() {
        let mut r = Records::default();
        // As rpc.statd left it: the kernel's address, in a file named by its reverse name.
        r.push("client1.example.test".into(), rec("198.51.100.20", "srv"));
        r.push("198.51.100.21".into(), rec("198.51.100.21", "srv"));
        let own = |m: &str| m.to_owned();
        assert_eq!(
            r.file_for(b"198.51.100.20", own("198.51.100.20")),
            "client1.example.test"
        );
        assert_eq!(
            r.file_for(b"198.51.100.21", own("198.51.100.21")),
            "198.51.100.21"
        );
        assert_eq!(r.file_for(b"new", own("new")), "new");
        // Once that file is empty, the mon_name's own file name is used again.
        r.remove_where(|x| x.mon_name == b"198.51.100.20");
        assert!(r.adopted.is_empty());
        assert_eq!(
            r.file_for(b"198.51.100.20", own("198.51.100.20")),
            "198.51.100.20"
        );
    }

    #[test]
    fn records_by_file_keep_order_and_count() {
        let mut r = Records::default();
        r.push("a".into(), rec("a", "s1"));
        r.push("b".into(), rec("b", "s1"));
        r.push("a".into(), rec("a", "s2"));
        assert_eq!(r.len, 3);
        assert_eq!(r.content("a"), [rec("a", "s1"), rec("a", "s2")]);
        assert!(r.content("zz").is_empty());
        let (removed, files) = r.remove_where(|x| x.my_name == b"s1");
        assert_eq!(removed.len(), 2);
        let mut files = files;
        files.sort();
        assert_eq!(files, ["a", "b"]);
        assert_eq!(r.len, 1);
        assert!(!r.files.contains_key("b"), "an emptied file is forgotten");
        r.remove_one("a", &rec("a", "s2"));
        assert_eq!((r.len, r.files.len()), (0, 0));
        r.remove_one("a", &rec("a", "s2"));
        assert_eq!(r.len, 0, "removing what is not there changes nothing");
        r.push("c".into(), rec("c", "s1"));
        r.clear();
        assert_eq!((r.len, r.iter().count()), (0, 0));
    }

    #[test]
    fn notify_matching_rules() {
        let from = IpAddr::from([198, 51, 100, 2]);
        let other = IpAddr::from([198, 51, 100, 60]);
        let m = |name: &[u8], mon: &[u8], known: Option<&[IpAddr]>, amb: bool| {
            notify_match(name, mon, known, from, amb)
        };
        // Same name: always.
        assert_eq!(
            m(b"HostB.Example.Test", b"hostb.example.test", None, false),
            NotifyMatch::Yes("name")
        );
        // Short name vs FQDN: only when the addresses agree.
        assert_eq!(
            m(b"hostB", b"hostB.example.test", None, false),
            NotifyMatch::LookUp
        );
        assert_eq!(
            m(b"hostB", b"hostB.example.test", Some(&[from]), false),
            NotifyMatch::Yes("address")
        );
        assert_eq!(
            m(b"hostB", b"hostB.other.test", Some(&[other]), false),
            NotifyMatch::No
        );
        // Unresolvable: the short name decides, unless two hosts share it.
        assert!(matches!(
            m(b"nfs1", b"nfs1.a.example", Some(&[]), false),
            NotifyMatch::Yes(_)
        ));
        assert_eq!(
            m(b"nfs1", b"nfs1.a.example", Some(&[]), true),
            NotifyMatch::No
        );
        // Another name entirely: by address only.
        assert_eq!(
            m(b"renamed", b"client5.example.test", Some(&[from]), false),
            NotifyMatch::Yes("address")
        );
        assert_eq!(
            m(b"renamed", b"client5.example.test", Some(&[]), false),
            NotifyMatch::No
        );
        assert_eq!(
            m(b"renamed", b"198.51.100.2", Some(&[from]), false),
            NotifyMatch::Yes("address")
        );
    }

    #[test]
    fn ambiguous_short_names() {
        let entry = |mon: &str| Entry {
            seq: 0,
            record: rec(mon, "me"),
            last_state: None,
        };
        let one = [
            entry("nfs1.a.example"),
            entry("NFS1.a.example"),
            entry("other"),
        ];
        assert!(!short_name_is_ambiguous(b"nfs1", one.iter()));
        let two = [entry("nfs1.a.example"), entry("nfs1.b.example")];
        assert!(short_name_is_ambiguous(b"nfs1", two.iter()));
        assert!(!short_name_is_ambiguous(b"nfs1.a.example", two.iter()));
    }

    #[test]
    fn local_callers() {
        let p = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(is_local(p("127.0.0.1:40000")));
        assert!(is_local(p("[::1]:40000")));
        assert!(is_local(p("[::ffff:127.0.0.1]:9")));
        assert!(!is_local(p("198.51.100.1:700")));
        assert!(!is_local(p("[::ffff:198.51.100.1]:700")));
    }
}

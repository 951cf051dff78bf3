//! An instance: one NSM identity (design.md "Words"): its state directory, its state number,
//! the records it monitors, and what happens on each NSM procedure. The node instance is what
//! rpc.statd is; service instances (one per NFS service) reuse this type with other settings.
//!
//! [`Instance`] is the tokio driver of the instance's [`Core`] (the sans-IO state machine in
//! [`crate::core`], where every rule is): each procedure becomes an event, and the effects
//! the core gives back are carried out here (record files through the [`Committer`], lockd
//! callbacks, HA callouts, name lookups, the restart of SM_SIMU_CRASH through the
//! [`StateAuthority`], the notification of `sm.bak/`), their results fed back as events.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use nsm_notify::{NotifierConfig, Policy, SourceSpec, default_names};
use nsm_store::{Committer, Dir, LoadReport, StateDir, StoreError};
use nsm_xdr::nsm::{Mon, MonId, MyId, Res, SmStat, SmStatRes, StatChge};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, Span, debug, info, warn};

use crate::callback::{CallbackPolicy, Callbacks};
use crate::callout::Callouts;
use crate::core::{Core, CoreConfig, Effect, NotifyOutcome, Reply, RequestId, Restarted};
use crate::ownership::Fence;

pub use crate::core::is_local;

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
    /// `state_dir` opened already: a service instance's, the one its takeover retired and
    /// announces from, so that a removal that announcement queued is never made over a file
    /// this instance's SM_SIMU_CRASH moved into `sm.bak/` ([`StateDir::retires`] counts per
    /// `StateDir`). `None`: opened here.
    pub dir: Option<Arc<StateDir>>,
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
            dir: None,
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

/// One NSM identity: the driver of its [`Core`]. It hands every request to the core and
/// carries the core's effects out with the real pieces: the [`Committer`] (group commit of
/// record files), the lockd [`Callbacks`], the HA [`Callouts`], the resolver, the state
/// authority, the fence and the notifier. Every I/O is here; every rule is in the core.
#[derive(Debug)]
pub struct Instance {
    name: String,
    dir: Arc<StateDir>,
    committer: Committer,
    /// The state machine. Effects are carried out while it is held (none of them blocks), so
    /// record writes reach the committer in the order the core decided them.
    core: Mutex<Core>,
    /// Requests waiting for their [`Effect::Reply`].
    replies: Mutex<HashMap<RequestId, oneshot::Sender<Reply>>>,
    next_request: AtomicU64,
    /// Wakes the timer task when the core's next timeout may have moved.
    wake: Arc<Notify>,
    /// Lookups at once.
    resolving: Arc<Semaphore>,
    callbacks: Callbacks,
    metrics: crate::metrics::Metrics,
    callouts: Mutex<Callouts>,
    authority: Arc<dyn StateAuthority>,
    fence: Option<Arc<dyn Fence>>,
    crash_notify: Option<CrashNotify>,
    /// The notification started by the last SM_SIMU_CRASH, if it still runs.
    notifying: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Itself, for the tasks that report back to the core.
    me: Weak<Self>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the list half-updated in a way that matters
    // more than stopping: keep serving with what is there.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The time as the core takes it (tokio's, so a paused test clock applies).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Lets the timer task see that the instance is gone.
        self.wake.notify_one();
    }
}

impl Instance {
    /// Opens the state directory, reads the state number (without bumping it, as rpc.statd
    /// does), tells the kernel, loads every record in `sm/`, and starts the callback and
    /// callout workers. Must run inside a tokio runtime.
    pub fn open(cfg: InstanceConfig) -> Result<(Arc<Self>, LoadReport), InstanceError> {
        let dir = match cfg.dir.clone() {
            Some(dir) => dir,
            None => Arc::new(StateDir::open(&cfg.state_dir)?),
        };
        let state = dir.state(false)?;
        let (loaded, report) = dir.load(Dir::Sm)?;
        // A service instance's fence is checked again right before each batch reaches the
        // disk (a write queued before a forced takeover must not land after the new owner's
        // retire); the node instance has none and pays nothing.
        let committer = match cfg.fence.clone() {
            Some(fence) => Committer::checked(
                dir.clone(),
                Box::new(move || fence.check().map_err(|e| e.to_string())),
            ),
            None => Committer::spawn(dir.clone()),
        };
        let callouts = Mutex::new(callouts_for(cfg.ha_callout.clone()));
        let authority = cfg.authority.unwrap_or_else(|| {
            Arc::new(DirectAuthority {
                dir: dir.clone(),
                nsm_local_state: cfg.nsm_local_state.clone(),
            })
        });
        let core = Core::new(
            CoreConfig {
                name: cfg.name.clone(),
                notify_rate: cfg.notify_rate,
                service_address: cfg.service_address,
            },
            state,
            loaded,
        );
        let inst = Arc::new_cyclic(|me| Self {
            name: cfg.name,
            dir,
            committer,
            core: Mutex::new(core),
            replies: Mutex::default(),
            next_request: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            resolving: Arc::new(Semaphore::new(16)),
            callbacks: Callbacks::spawn(cfg.callback),
            metrics: crate::metrics::Metrics::default(),
            callouts,
            authority,
            fence: cfg.fence,
            crash_notify: cfg.crash_notify,
            notifying: Mutex::new(None),
            me: me.clone(),
        });
        tokio::spawn(timer(Arc::downgrade(&inst), inst.wake.clone()));
        inst.with_core(|_| ());
        info!(
            instance = %inst.name,
            state,
            records = inst.len(),
            dir = %inst.dir.path().display(),
            "instance ready"
        );
        Ok((inst, report))
    }

    /// Runs `f` on the core, then carries out what it decided.
    fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let mut core = lock(&self.core);
        let due = core.poll_timeout();
        let r = f(&mut core);
        while let Some(effect) = core.poll_effect() {
            self.carry_out(effect);
        }
        if core.poll_timeout() != due {
            self.wake.notify_one();
        }
        r
    }

    /// Hands a request to the core and waits for its answer.
    async fn request(&self, f: impl FnOnce(&mut Core, RequestId)) -> Option<Reply> {
        let id = RequestId(self.next_request.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        lock(&self.replies).insert(id, tx);
        self.with_core(|c| f(c, id));
        rx.await.ok()
    }

    fn carry_out(&self, effect: Effect) {
        match effect {
            Effect::Commit { id, file, records } => {
                // Queued now, in the order decided; the wait is another task's.
                let done = self.committer.commit(Dir::Sm, file, records);
                let me = self.me.clone();
                // In the span of the request that caused it (xid, procedure, peer), so what
                // the core logs when the write is done names that request.
                tokio::spawn(
                    async move {
                        let result = done.await;
                        if let Some(this) = me.upgrade() {
                            this.with_core(|c| c.handle_committed(id, result));
                        }
                    }
                    .instrument(Span::current()),
                );
            }
            Effect::Reply { request, reply } => {
                if let Some(tx) = lock(&self.replies).remove(&request) {
                    let _ = tx.send(reply);
                }
            }
            Effect::CallBack(cb) => self.callbacks.queue(cb),
            Effect::LookUp(name) => {
                let (me, sem) = (self.me.clone(), self.resolving.clone());
                tokio::spawn(
                    async move {
                        let Ok(_permit) = sem.acquire().await else {
                            return;
                        };
                        let addrs = resolve(&name).await;
                        if let Some(this) = me.upgrade() {
                            this.with_core(|c| c.handle_resolved(now(), &name, addrs));
                        }
                    }
                    .instrument(Span::current()),
                );
            }
            Effect::Callout { kind, args } => lock(&self.callouts).send(kind.as_str(), args),
            Effect::Restart { request } => {
                let (dir, authority, me) =
                    (self.dir.clone(), self.authority.clone(), self.me.clone());
                tokio::spawn(
                    async move {
                        let done = tokio::task::spawn_blocking(move || {
                            let state = match authority.bump() {
                                Ok(s) => s,
                                Err(e) => return Restarted::NotBumped(e.to_string()),
                            };
                            match dir.retire() {
                                Ok(moved) => {
                                    debug!(state, moved, "SM_SIMU_CRASH: retired sm/");
                                    Restarted::Done(state)
                                }
                                Err(e) => Restarted::NotRetired {
                                    state,
                                    error: e.to_string(),
                                },
                            }
                        })
                        .await
                        .unwrap_or_else(|e| Restarted::NotBumped(e.to_string()));
                        if let Some(this) = me.upgrade() {
                            this.with_core(|c| c.handle_restarted(request, done));
                        }
                    }
                    .instrument(Span::current()),
                );
            }
            Effect::Announce { state } => self.notify_peers(state),
            Effect::PublishState(state) => {
                if let Err(e) = self.authority.publish(state) {
                    warn!("cannot tell the kernel the NSM state: {e}");
                }
            }
        }
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
        lock(&self.core).addresses_of(mon_name)
    }

    /// The monitored peers: (mon_name, my_name) of every record, in the order added.
    pub fn peers(&self) -> Vec<(String, String)> {
        lock(&self.core).peers()
    }

    /// Tells the core whether this node still owns the instance (read before each request
    /// that writes).
    fn check_fence(&self, core: &mut Core) {
        let why = match self.fence.as_ref().map(|f| f.check()) {
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        };
        core.set_fenced(why);
    }

    /// Sets the state number after a takeover bumped it on disk (and forgets every record:
    /// they moved to `sm.bak/`).
    pub fn took_over(&self, state: i32) {
        self.with_core(|c| c.took_over(state));
    }

    /// The current state number.
    pub fn state(&self) -> i32 {
        lock(&self.core).state()
    }

    /// Number of records monitored.
    pub fn len(&self) -> usize {
        lock(&self.core).len()
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

    /// The callback queue (for counters).
    pub fn callbacks(&self) -> &Callbacks {
        &self.callbacks
    }

    /// The instance's counters.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Looks `name` up in the background (unless its addresses are known and fresh), so a later
    /// [`Instance::addresses_of`] knows them. For callers that want addresses of a name soon
    /// but must not wait for them.
    pub fn look_up_later(&self, name: &[u8]) {
        self.with_core(|c| c.look_up(now(), name));
    }

    /// SM_STAT: whether nsmd could monitor `mon_name`, and the local state. Never asks DNS:
    /// nsmd monitors any well-formed name.
    pub fn stat(&self, mon_name: &[u8]) -> SmStatRes {
        lock(&self.core).handle_stat(mon_name)
    }

    /// SM_MON: records the registration durably, then answers {stat_succ, state}.
    pub async fn mon(&self, peer: SocketAddr, m: &Mon<'_>) -> SmStatRes {
        let waited = Instant::now();
        let reply = self
            .request(|c, id| {
                self.check_fence(c);
                c.handle_mon(id, peer, m);
            })
            .await;
        match reply {
            Some(Reply::Mon { result, written }) => {
                if written {
                    self.metrics.mon_waited(waited.elapsed());
                }
                result
            }
            _ => SmStatRes {
                res_stat: Res::StatFail,
                state: -1,
            },
        }
    }

    /// SM_UNMON: stops monitoring one (mon_name, my_name, callback) registration.
    pub async fn unmon(&self, peer: SocketAddr, id: &MonId<'_>) -> SmStat {
        let reply = self
            .request(|c, req| {
                self.check_fence(c);
                c.handle_unmon(req, peer, id);
            })
            .await;
        self.unmon_reply(reply)
    }

    fn unmon_reply(&self, reply: Option<Reply>) -> SmStat {
        match reply {
            Some(Reply::Unmon(r)) => r,
            _ => SmStat {
                state: self.state(),
            },
        }
    }

    /// SM_UNMON_ALL: stops monitoring everything registered by this my_name and callback.
    pub async fn unmon_all(&self, peer: SocketAddr, my: &MyId<'_>) -> SmStat {
        let reply = self
            .request(|c, req| {
                self.check_fence(c);
                c.handle_unmon_all(req, peer, my);
            })
            .await;
        self.unmon_reply(reply)
    }

    /// SM_SIMU_CRASH: behaves like a restart of this host: the state number goes up by two
    /// (durably), the records move to `sm.bak/`, nothing is monitored, and the peers in
    /// `sm.bak/` are notified in the background (with [`InstanceConfig::crash_notify`]).
    /// Only from loopback and a privileged port.
    pub async fn simu_crash(&self, peer: SocketAddr) {
        self.request(|c, req| {
            self.check_fence(c);
            c.handle_simu_crash(req, peer);
        })
        .await;
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
            // sm.bak/ or one of its files that cannot be read now (a transient EIO) is tried
            // again (1 s, 2 s, ... 64 s): the peers are not announced to without it.
            let mut wait = Duration::from_secs(1);
            loop {
                match notify_bak_now(dir.clone(), &cn, state, fence.clone()).await {
                    Ok(msg) => info!(instance = %name, state, "notification: {msg}"),
                    Err(e @ nsm_notify::AnnounceError::Load { .. })
                        if wait <= Duration::from_secs(64) =>
                    {
                        warn!(instance = %name, state, "peers in sm.bak/ not notified yet: {e}; trying again in {wait:?}");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                        continue;
                    }
                    Err(e) => warn!(instance = %name, state, "peers in sm.bak/ not notified: {e}"),
                }
                break;
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
    pub fn notify(&self, peer: SocketAddr, sc: &StatChge<'_>) {
        let counter = match self.with_core(|c| c.handle_notify(now(), peer, sc)) {
            NotifyOutcome::Accepted => return,
            NotifyOutcome::RateLimited => &self.metrics.notify_rate_limited,
            NotifyOutcome::QueueFull => &self.metrics.notify_queue_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the core's timeouts until the instance is dropped.
async fn timer(me: Weak<Instance>, wake: Arc<Notify>) {
    loop {
        let deadline = match me.upgrade() {
            Some(this) => lock(&this.core).poll_timeout(),
            None => return,
        };
        match deadline {
            Some(d) => {
                let _ = tokio::time::timeout_at(Instant::from_std(d), wake.notified()).await;
            }
            None => wake.notified().await,
        }
        let Some(this) = me.upgrade() else { return };
        let now = now();
        if lock(&this.core).poll_timeout().is_some_and(|d| d <= now) {
            this.with_core(|c| c.handle_timeout(now));
        }
    }
}

/// The addresses of `name` (none when it does not resolve); the core bounds the wait.
async fn resolve(name: &[u8]) -> Vec<IpAddr> {
    let Ok(host) = std::str::from_utf8(name) else {
        return Vec::new();
    };
    match nsm_notify::resolve::lookup(host).await {
        Ok(it) => it.into_iter().collect(),
        Err(e) => {
            debug!(host = %host, "cannot resolve a monitored name: {e}");
            Vec::new()
        }
    }
}

/// Notifies every peer in `sm.bak/` of `state` (durable already) as `cn` says, over the one
/// announce path ([`nsm_notify::Announcement::again`]); a summary for the log.
async fn notify_bak_now(
    dir: Arc<StateDir>,
    cn: &CrashNotify,
    state: i32,
    fence: Option<Arc<dyn Fence>>,
) -> Result<String, nsm_notify::AnnounceError> {
    let announcement = nsm_notify::Announcement::again(&dir, state)?;
    if announcement.is_empty() {
        return Ok("no one to notify".into());
    }
    let names = |my_name: &[u8]| {
        if cn.names.is_empty() {
            default_names(&String::from_utf8_lossy(my_name))
        } else {
            cn.names.clone()
        }
    };
    let summary = announcement
        .send(
            dir,
            nsm_notify::Delivery {
                names: &names,
                source: nsm_notify::Source::Bind(cn.sources.clone()),
                config: NotifierConfig {
                    policy: cn.policy.clone(),
                    ..NotifierConfig::default()
                },
                gate: None,
                fence: fence
                    .map(|f| Arc::new(crate::ownership::Checked(f)) as Arc<dyn nsm_notify::Fence>),
            },
        )
        .await?;
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
    use nsm_xdr::nsm::NLM_PROG;

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

    /// A service instance opened on its takeover's `StateDir` retires through it at
    /// SM_SIMU_CRASH: the takeover announcement's removals, queued against that directory's
    /// retire count, then leave what the restart moved into sm.bak/ alone.
    #[tokio::test(start_paused = true)]
    async fn sm_simu_crash_retires_through_the_state_dir_given() {
        let d = tempfile::tempdir().unwrap();
        let dir = Arc::new(StateDir::open(d.path()).unwrap());
        let since = dir.retires();
        let mut cfg = InstanceConfig::new("svc", d.path().to_owned());
        cfg.dir = Some(dir.clone());
        let (inst, _) = Instance::open(cfg).unwrap();
        ok(inst.mon(local(), &lockd_mon(b"client1")).await);
        inst.simu_crash(local()).await;
        assert_eq!(dir.retires(), since + 1, "retired through another StateDir");
        assert_eq!(files(&inst, Dir::Bak).len(), 1);
    }

    const LOCAL: &str = "127.0.0.1:700";

    fn local() -> SocketAddr {
        LOCAL.parse().unwrap()
    }

    fn ok(r: SmStatRes) -> i32 {
        assert_eq!(r.res_stat, Res::StatSucc);
        r.state
    }

    fn files(inst: &Instance, dir: Dir) -> Vec<(String, nsm_store::Record)> {
        let (mut r, _) = inst.state_dir().load(dir).unwrap();
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    }

    fn unmon_id(name: &'static [u8]) -> MonId<'static> {
        lockd_mon(name).mon_id
    }

    /// Every procedure through the driver, on tokio's paused clock, against a real state
    /// directory: what is answered is on disk, and a new instance reads it back.
    #[tokio::test(start_paused = true)]
    async fn the_driver_answers_from_a_real_state_directory() {
        let d = tempfile::tempdir().unwrap();
        let kernel = d.path().join("nsm_local_state");
        std::fs::write(&kernel, "").unwrap();
        let open = || {
            let mut cfg = InstanceConfig::new("node", d.path().to_owned());
            cfg.nsm_local_state = Some(kernel.clone());
            Instance::open(cfg).unwrap().0
        };
        let inst = open();
        let state = inst.state();
        assert_eq!(std::fs::read_to_string(&kernel).unwrap(), state.to_string());
        assert_eq!(inst.stat(b"client1").state, state);

        assert_eq!(ok(inst.mon(local(), &lockd_mon(b"client1")).await), state);
        let on_disk = files(&inst, Dir::Sm);
        assert_eq!(on_disk.len(), 1);
        assert_eq!(
            (on_disk[0].0.as_str(), on_disk[0].1.priv_),
            ("client1", [9; 16])
        );
        ok(inst.mon(local(), &lockd_mon(b"client2")).await);
        ok(inst.mon(local(), &lockd_mon(b"client3")).await);

        assert_eq!(
            inst.unmon(local(), &unmon_id(b"client1")).await.state,
            state
        );
        let names = |i: &Instance| -> Vec<String> {
            files(i, Dir::Sm).into_iter().map(|(f, _)| f).collect()
        };
        assert_eq!(names(&inst), ["client2", "client3"]);

        // What is on disk is what a restart reads back.
        drop(inst);
        let inst = open();
        assert_eq!(inst.len(), 2);
        inst.unmon_all(local(), &unmon_id(b"x").my_id).await;
        assert!(inst.is_empty() && names(&inst).is_empty());

        // SM_SIMU_CRASH: the state goes up by two, on disk and for the kernel.
        ok(inst.mon(local(), &lockd_mon(b"client4")).await);
        inst.simu_crash(local()).await;
        assert_eq!(inst.state(), state + 2);
        assert_eq!(inst.state_dir().state(false).unwrap(), state + 2);
        assert_eq!(
            std::fs::read_to_string(&kernel).unwrap(),
            (state + 2).to_string()
        );
        assert!(inst.is_empty());
        assert_eq!(files(&inst, Dir::Bak)[0].0, "client4");
        // From an unprivileged port: nothing.
        inst.simu_crash("127.0.0.1:40000".parse().unwrap()).await;
        assert_eq!(inst.state(), state + 2);

        // SM_NOTIFY over the rate limit is counted (the clock does not move here).
        let sc = StatChge {
            mon_name: nsm_xdr::Opaque::new(b"nobody").unwrap(),
            state: 5,
        };
        for _ in 0..25 {
            inst.notify("198.51.100.7:1021".parse().unwrap(), &sc);
        }
        assert_eq!(
            inst.metrics().notify_rate_limited.load(Ordering::Relaxed),
            5
        );
    }

    /// A write that fails answers stat_fail and leaves nothing monitored; the next works.
    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_not_monitored() {
        let d = tempfile::tempdir().unwrap();
        let (inst, _) = Instance::open(InstanceConfig::new("node", d.path().to_owned())).unwrap();
        let sm = d.path().join("sm");
        std::fs::remove_dir_all(&sm).unwrap();
        std::fs::write(&sm, "not a directory").unwrap();
        let r = inst.mon(local(), &lockd_mon(b"client1")).await;
        assert_eq!(r.res_stat, Res::StatFail);
        assert!(inst.is_empty());
        std::fs::remove_file(&sm).unwrap();
        std::fs::create_dir(&sm).unwrap();
        ok(inst.mon(local(), &lockd_mon(b"client1")).await);
        assert_eq!(inst.len(), 1);
    }

    /// A service instance whose ownership is gone writes nothing, whatever is asked.
    #[tokio::test(start_paused = true)]
    async fn a_fenced_instance_changes_nothing_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let own = Arc::new(crate::ownership::Ownership::claim(d.path(), "node-a").unwrap());
        let mut cfg = InstanceConfig::new("svc", d.path().to_owned());
        cfg.fence = Some(own.clone() as Arc<dyn Fence>);
        let (inst, _) = Instance::open(cfg).unwrap();
        let state = ok(inst.mon(local(), &lockd_mon(b"client1")).await);
        own.release();
        let r = inst.mon(local(), &lockd_mon(b"client2")).await;
        assert_eq!(r.res_stat, Res::StatFail);
        inst.unmon(local(), &unmon_id(b"client1")).await;
        inst.unmon_all(local(), &unmon_id(b"client1").my_id).await;
        inst.simu_crash(local()).await;
        assert_eq!(files(&inst, Dir::Sm).len(), 1);
        assert!(files(&inst, Dir::Bak).is_empty());
        assert_eq!(inst.state_dir().state(false).unwrap(), state);
        assert_eq!(inst.peers(), [("client1".to_owned(), "srv".to_owned())]);
    }

    /// The real ownership, taken over by force by another node at its `at`-th check: the
    /// request's check passes, the takeover happens while the write is queued.
    #[derive(Debug)]
    struct TakenOverAt {
        own: crate::ownership::Ownership,
        dir: PathBuf,
        checks: std::sync::atomic::AtomicUsize,
        at: usize,
    }

    impl TakenOverAt {
        fn claimed(dir: &std::path::Path, at: usize) -> Arc<dyn Fence> {
            Arc::new(Self {
                own: crate::ownership::Ownership::claim(dir, "node-a").unwrap(),
                dir: dir.to_owned(),
                checks: Default::default(),
                at,
            })
        }
    }

    impl Fence for TakenOverAt {
        fn check(&self) -> Result<(), crate::ownership::OwnershipError> {
            if self.checks.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
                crate::ownership::Ownership::claim_over(&self.dir, "node-b").unwrap();
            }
            self.own.check()
        }
    }

    /// A forced takeover between the request's fence check and the batch that carries its
    /// write: the write is refused right before it reaches the disk (the new owner's
    /// directory stays as it was), SM_MON answers stat_fail and nothing is monitored in
    /// memory; an SM_UNMON's removal is refused the same way.
    #[tokio::test(start_paused = true)]
    async fn a_write_queued_before_a_takeover_does_not_land() {
        let d = tempfile::tempdir().unwrap();
        // checks: 1 the SM_MON's request, 2 its batch (taken over there)
        let mut cfg = InstanceConfig::new("svc", d.path().to_owned());
        cfg.fence = Some(TakenOverAt::claimed(d.path(), 2));
        let (inst, _) = Instance::open(cfg).unwrap();
        let r = inst.mon(local(), &lockd_mon(b"client1")).await;
        assert_eq!(
            r.res_stat,
            Res::StatFail,
            "answered after losing the service"
        );
        assert!(inst.is_empty());
        assert!(files(&inst, Dir::Sm).is_empty(), "the write landed");
        drop(inst);

        // checks: 1 and 2 the SM_MON, 3 the SM_UNMON's request, 4 its batch (taken over)
        let d = tempfile::tempdir().unwrap();
        let mut cfg = InstanceConfig::new("svc", d.path().to_owned());
        cfg.fence = Some(TakenOverAt::claimed(d.path(), 4));
        let (inst, _) = Instance::open(cfg).unwrap();
        ok(inst.mon(local(), &lockd_mon(b"client1")).await);
        inst.unmon(local(), &unmon_id(b"client1")).await;
        assert_eq!(files(&inst, Dir::Sm).len(), 1, "the removal landed");
    }

    /// lockd as a test peer on loopback: rpcbind's GETPORT and NLM's SM_NOTIFY callback
    /// (procedure 16) on one UDP socket; each callback heard is sent on.
    #[derive(Debug)]
    struct Lockd {
        port: u16,
        heard: tokio::sync::mpsc::UnboundedSender<(Vec<u8>, i32, [u8; 16], SocketAddr)>,
    }

    impl nsm_rpc::Service for Lockd {
        fn versions(&self, prog: u32) -> Option<(u32, u32)> {
            use nsm_xdr::rpcbind::{PMAP_PROG, PMAP_VERS};
            match prog {
                PMAP_PROG => Some((PMAP_VERS, PMAP_VERS)),
                NLM_PROG => Some((1, 4)),
                _ => None,
            }
        }

        async fn call(&self, req: nsm_rpc::Request) -> nsm_rpc::Outcome {
            use nsm_rpc::Outcome;
            use nsm_xdr::Encode;
            use nsm_xdr::rpcbind::{IPPROTO_UDP, Mapping, PMAP_PROG, PMAPPROC_GETPORT};
            match (req.prog, req.proc_) {
                (PMAP_PROG, PMAPPROC_GETPORT) => {
                    let Ok(m) = nsm_xdr::from_bytes::<Mapping>(&req.args) else {
                        return Outcome::GarbageArgs;
                    };
                    let port = if m.prog == NLM_PROG && m.prot == IPPROTO_UDP {
                        u32::from(self.port)
                    } else {
                        0
                    };
                    Outcome::Success(port.to_xdr().into())
                }
                (NLM_PROG, 16) => {
                    let Ok(s) = nsm_xdr::from_bytes::<nsm_xdr::nsm::Status<'_>>(&req.args) else {
                        return Outcome::GarbageArgs;
                    };
                    let _ = self.heard.send((
                        s.mon_name.as_bytes().to_vec(),
                        s.state,
                        s.priv_,
                        req.peer,
                    ));
                    Outcome::Success(bytes::Bytes::new())
                }
                _ => Outcome::ProcUnavail,
            }
        }
    }

    fn running_as_root() -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    /// SM_NOTIFY from a peer reaches lockd on loopback with the record's cookie and the new
    /// state, from a privileged port when the test may bind one (root), as lockd demands.
    /// The real clock: the callback crosses real sockets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sm_notify_calls_lockd_back_on_loopback() {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let server = nsm_rpc::server::Server::new(
            Arc::new(Lockd { port, heard: tx }),
            nsm_rpc::server::Limits::default(),
        );
        server.serve_udp(sock);

        let d = tempfile::tempdir().unwrap();
        let mut cfg = InstanceConfig::new("node", d.path().to_owned());
        let privileged = running_as_root();
        cfg.callback = CallbackPolicy {
            rpcbind_port: port,
            privileged_port: privileged,
            ..CallbackPolicy::default()
        };
        let (inst, _) = Instance::open(cfg).unwrap();
        ok(inst.mon(local(), &lockd_mon(b"client1")).await);
        let sc = StatChge {
            mon_name: nsm_xdr::Opaque::new(b"CLIENT1").unwrap(),
            state: 7,
        };
        inst.notify("198.51.100.7:1021".parse().unwrap(), &sc);
        let (name, state, cookie, from) =
            tokio::time::timeout(Duration::from_secs(60), heard.recv())
                .await
                .expect("lockd was not called back within 60 s")
                .unwrap();
        assert_eq!(
            (name.as_slice(), state, cookie),
            (&b"client1"[..], 7, [9; 16])
        );
        assert!(from.ip().is_loopback());
        if privileged {
            assert!(from.port() < 1024, "from {from}");
        }

        // Under another name: matched by address once the record's name is looked up
        // (`localhost`, from /etc/hosts: no DNS server involved).
        inst.unmon(local(), &unmon_id(b"client1")).await;
        ok(inst.mon(local(), &lockd_mon(b"localhost")).await);
        let sc = StatChge {
            mon_name: nsm_xdr::Opaque::new(b"renamed").unwrap(),
            state: 9,
        };
        inst.notify("127.0.0.1:1021".parse().unwrap(), &sc);
        let (name, state, _, _) = tokio::time::timeout(Duration::from_secs(60), heard.recv())
            .await
            .expect("lockd was not called back within 60 s after the lookup")
            .unwrap();
        assert_eq!((name.as_slice(), state), (&b"localhost"[..], 9));
        assert_eq!(
            inst.addresses_of(b"LOCALHOST"),
            ["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        server.shutdown(Duration::from_secs(5)).await;
    }
}

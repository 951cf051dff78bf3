//! Service instances (design.md "Words", data flow 3–4): NSM identities of NFS services that
//! move between nodes, each with its state directory on shared storage, served by the same
//! daemon as the node instance and picked by the local address a call was sent to.
//!
//! [`Services::takeover`]: ownership (lock + epoch), state += 2 durably, `sm/` to `sm.bak/`,
//! start answering on the service addresses, the readiness gate, then the notifier from the
//! service address with the service's names. [`Services::release`]: stop answering, kernel
//! lock release (`unlock_ip`, `unlock_filesystem`), flush, drop ownership. A service instance
//! never writes the kernel's `nsm_local_state` and never lifts lockd's host-wide grace.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use nsm_notify::{Announcement, Delivery, NotifierConfig, Policy, Retired, Source, SourceSpec};
use nsm_rpc::client::CallOptions;
use nsm_store::StateDir;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::callback::CallbackPolicy;
use crate::error::{CommandFailure, Error, LayoutError};
use crate::instance::{DirectAuthority, Instance, InstanceConfig};
use crate::names::canonical;
use crate::ownership::{Fence, Ownership};

/// How one service instance is set up (from its instance file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The instance's name (`nsmctl takeover NAME`).
    pub name: String,
    /// The service hostname (the first mon_name sent).
    pub hostname: String,
    /// More names of the service.
    pub aliases: Vec<String>,
    /// Its addresses (floating IPs).
    pub addresses: Vec<IpAddr>,
    /// Send notifications only through this interface.
    pub interface: Option<String>,
    /// Its state directory, on shared storage.
    pub state_dir: PathBuf,
    /// The mon_names to send, in order (empty: the hostname, then the aliases).
    pub notify_names: Vec<String>,
    /// The source port of notifications (`None`: a privileged port).
    pub notify_port: Option<u16>,
    /// How long a peer is retried (`None`: forever).
    pub retry: Option<Duration>,
    /// How many peers are tried for the first time at once.
    pub window: usize,
    /// Takeover: a command run after the state bump, before the notifications (argv, no
    /// shell): e.g. putting the lock manager into grace for this address. Its failure fails
    /// the takeover.
    pub takeover_command: Vec<String>,
    /// Takeover: how long the command may take.
    pub takeover_timeout: Duration,
    /// Readiness: programs that must be registered with rpcbind on the service address.
    pub ready_programs: Vec<u32>,
    /// Readiness: a command that must succeed (argv).
    pub ready_command: Vec<String>,
    /// Readiness: how long to wait; a takeover whose gate does not open in time fails.
    pub ready_timeout: Duration,
    /// Release: write the service addresses to `unlock_ip`.
    pub unlock_ip: bool,
    /// Release: the exports written to `unlock_filesystem`.
    pub exports: Vec<PathBuf>,
    /// Take the instance over when the daemon starts.
    pub takeover_at_start: bool,
}

/// How soon a service's first SM_NOTIFY (and port lookup) to a peer is sent again when
/// unanswered ([`Policy::quick_retransmit`]): right after a takeover the peer's neighbour
/// entry may still name the old node's MAC until the gratuitous ARP, and its answer is lost.
pub const QUICK_RETRANSMIT: Duration = Duration::from_millis(100);

impl ServiceSpec {
    /// The mon_names notifications carry: the hostname, the aliases, then each address
    /// literal (a client that mounted by address monitors the service under it, as CTDB
    /// sends it), each once; or `notify_names` when set.
    pub fn names(&self) -> Vec<String> {
        if !self.notify_names.is_empty() {
            return self.notify_names.clone();
        }
        let mut v = vec![self.hostname.clone()];
        let more = self
            .aliases
            .iter()
            .cloned()
            .chain(self.addresses.iter().map(|a| canonical(*a).to_string()));
        for n in more {
            if !v.contains(&n) {
                v.push(n);
            }
        }
        v
    }

    /// Where this service's SM_NOTIFYs leave from: its addresses, its port, its interface.
    pub fn sources(&self) -> SourceSpec {
        SourceSpec {
            addrs: self.addresses.clone(),
            port: self.notify_port,
            device: self.interface.clone(),
        }
    }

    /// The notifier's policy for this service.
    pub fn policy(&self) -> Policy {
        Policy {
            budget: self.retry,
            window: self.window,
            quick_retransmit: Some(QUICK_RETRANSMIT),
            ..Policy::default()
        }
    }
}

/// Settings every service instance shares.
#[derive(Debug, Clone)]
pub struct ServicesConfig {
    /// Who this node is (written to the ownership file).
    pub owner: String,
    /// The root of `/proc` (`fs/nfsd/unlock_ip`, `fs/nfsd/unlock_filesystem`).
    pub proc_root: PathBuf,
    /// The HA callout program, if any.
    pub ha_callout: Option<PathBuf>,
    /// How lockd is called back.
    pub callback: CallbackPolicy,
    /// rpcbind's port (the readiness gate asks it on the service address).
    pub rpcbind_port: u16,
    /// After nsmd dropped root: the root helper that does what needs root (see
    /// [`ServicePrivileges`]). `None`: this process does everything itself.
    pub privileged: Option<Arc<dyn ServicePrivileges>>,
    /// No instance notifies before this gate opens (nsmd registered with rpcbind): a client
    /// that reclaims at once must find this statd, not nothing or a dead one's port.
    pub registered: crate::registered::Registered,
    /// Where this node records which instances it holds (`NAME.active`, with the epoch), so a
    /// restarted nsmd resumes them. Must not survive a reboot (a tmpfs such as `/run`): after
    /// a reboot the kernel holds no lock of any instance. `None`: nothing resumes.
    pub run_dir: Option<PathBuf>,
}

/// The file in `run_dir` ([`ServicesConfig::run_dir`]) that says this node holds instance
/// `name`: written at the takeover (with the epoch), removed once a release dropped its kernel
/// locks. `nsmctl state` reads it when nsmd does not answer, and `nsmctl release --offline`
/// removes it.
pub fn marker_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.active"))
}

/// Releases the kernel's locks of `spec` on this node, as a release does: each service
/// address to `<proc_root>/fs/nfsd/unlock_ip` (when `unlock_ip`), each export to
/// `unlock_filesystem`; through `privileged` when given (nsmd without root). A missing file
/// (nfsd not loaded: it holds no locks) is skipped. Returns what could not be written,
/// each saying which file and text.
pub fn release_kernel_locks(
    proc_root: &Path,
    spec: &ServiceSpec,
    privileged: Option<&dyn ServicePrivileges>,
) -> Vec<String> {
    let mut failed = Vec::new();
    let ips: Vec<String> = if spec.unlock_ip {
        spec.addresses.iter().map(ToString::to_string).collect()
    } else {
        Vec::new()
    };
    let exports = spec
        .exports
        .iter()
        .map(|e| e.to_string_lossy().into_owned());
    let writes = ips
        .into_iter()
        .map(|t| ("unlock_ip", t))
        .chain(exports.map(|t| ("unlock_filesystem", t)));
    for (file, text) in writes {
        let path = proc_root.join("fs/nfsd").join(file);
        if !path.exists() {
            info!("{} does not exist: {text} not written", path.display());
            continue;
        }
        let r = match privileged {
            Some(h) => h.unlock(&spec.name, file, &text).map_err(|e| e.to_string()),
            // One newline-terminated word: the kernel refuses anything else with EINVAL
            // (`fs/nfsd/nfsctl.c`), and the locks would stay.
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes()))
                .map_err(|e| e.to_string()),
        };
        match r {
            Ok(()) => info!("{text} written to {}", path.display()),
            Err(e) => failed.push(format!("cannot write {text:?} to {}: {e}", path.display())),
        }
    }
    failed
}

/// What a service instance needs root for once nsmd runs as the owner of `sm/`: the
/// root-owned `state` and ownership file of a Debian-style state directory (the directory
/// root's, `sm/` and `sm.bak/` the daemon's user's, as nfs-utils lays out `/var/lib/nfs`),
/// and the kernel's root-owned `unlock_ip` and `unlock_filesystem`. Implemented by a root
/// helper that knows the configured instances by name and refuses anything else: the
/// daemon names an instance, never a path.
pub trait ServicePrivileges: Send + Sync + std::fmt::Debug {
    /// Creates instance `name`'s (empty) ownership file `<state_dir>/.nsmd-owner` when it
    /// is missing.
    fn create_owner(&self, name: &str) -> Result<(), Error>;
    /// Writes the next epoch to instance `name`'s ownership file, durably, with `owner` and
    /// nsmd's pid ([`crate::ownership::write_next_epoch`]); returns it. The caller holds the
    /// lock.
    fn next_epoch(&self, name: &str, owner: &str) -> Result<u64, Error>;
    /// Bumps instance `name`'s state by two, durably (nfs-utils' rules); returns it.
    fn bump(&self, name: &str) -> Result<i32, Error>;
    /// Writes `text`, one of instance `name`'s addresses (`unlock_ip`) or exports
    /// (`unlock_filesystem`), to `<proc_root>/fs/nfsd/<file>`.
    fn unlock(&self, name: &str, file: &str, text: &str) -> Result<(), Error>;
}

/// A service instance's state bumps (SM_SIMU_CRASH) through the root helper; never the
/// kernel's `nsm_local_state`.
#[derive(Debug)]
struct HelperAuthority {
    helper: Arc<dyn ServicePrivileges>,
    name: String,
}

impl crate::StateAuthority for HelperAuthority {
    fn bump(&self) -> Result<i32, Error> {
        self.helper.bump(&self.name)
    }

    fn publish(&self, _state: i32) -> Result<(), Error> {
        Ok(())
    }
}

/// Whether the state directory of `spec` needs the root helper (`Ok(true)`: Debian's layout
/// while nsmd runs unprivileged), can be used directly (`Ok(false)`), or cannot work: then
/// the error says what the operator must change.
fn check_layout(spec: &ServiceSpec, helper: bool) -> Result<bool, LayoutError> {
    use nix::unistd::{AccessFlags, access, geteuid};
    use std::os::unix::fs::MetadataExt;
    let uid = geteuid();
    if uid.is_root() {
        return Ok(false);
    }
    // For messages: the user's name, as the operator types it in `chown`.
    let me = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    let dir = &spec.state_dir;
    let rw = AccessFlags::W_OK | AccessFlags::X_OK;
    let meta = std::fs::metadata(dir).map_err(|source| LayoutError::Missing {
        dir: dir.clone(),
        source,
        user: me.clone(),
    })?;
    let via_helper = if access(dir, rw).is_ok() {
        false
    } else if meta.uid() == 0 && helper {
        true
    } else if !helper {
        return Err(LayoutError::NotWritable {
            dir: dir.clone(),
            user: me,
        });
    } else {
        return Err(LayoutError::WrongOwner {
            dir: dir.clone(),
            uid: meta.uid(),
            user: me,
        });
    };
    for d in ["sm", "sm.bak"] {
        let p = dir.join(d);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !via_helper => {}
            Ok(m) if m.is_dir() && access(&p, rw).is_ok() => {}
            _ => {
                return Err(LayoutError::Subdirectory {
                    path: p,
                    dir: dir.clone(),
                    user: me,
                });
            }
        }
    }
    Ok(via_helper)
}

/// What [`Services::reconfigure`] did, by instance name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// New instances (inactive).
    pub added: Vec<String>,
    /// Inactive instances whose settings changed.
    pub changed: Vec<String>,
    /// Inactive instances no longer configured.
    pub removed: Vec<String>,
    /// Active instances changed or removed in the files: unchanged until released.
    pub kept_active: Vec<String>,
}

/// The progress of the last notification run of an instance.
#[derive(Debug, Clone, Default)]
pub struct NotifyProgress {
    /// Peers to notify.
    pub peers: usize,
    /// Peers that acknowledged (when finished).
    pub acked: usize,
    /// Peers given up (when finished).
    pub gave_up: usize,
    /// Whether the run finished.
    pub finished: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

#[derive(Debug)]
struct Active {
    instance: Arc<Instance>,
    /// The state directory, opened once at the claim.
    dir: Arc<StateDir>,
    /// The ownership, and the verdict of the instance's one fence watch.
    fence: Watched,
    notifying: Option<tokio::task::JoinHandle<()>>,
    /// The fence watch: checks the ownership every [`FENCE_CHECK`]; once fenced, silences the
    /// addresses and publishes the verdict (the announce path stops on it).
    watch: tokio::task::JoinHandle<()>,
}

/// The fence verdict of an active instance: `None` while it owns its state directory; why
/// not, once its fence watch (or a release the kernel refused) says so.
type Verdict = Option<String>;

/// An active instance's fence: its ownership (read before every write) and the verdict of
/// its fence watch, which the announce path observes ([`nsm_notify::Fence`]) and
/// [`Services::notify`] and the status read.
#[derive(Debug, Clone)]
struct Watched {
    ownership: Arc<Ownership>,
    verdict: Arc<watch::Sender<Verdict>>,
}

impl Watched {
    fn new(ownership: Arc<Ownership>) -> Self {
        Self {
            ownership,
            verdict: Arc::new(watch::Sender::new(None)),
        }
    }

    fn is_fenced(&self) -> bool {
        self.verdict.borrow().is_some()
    }

    fn fence(&self, why: String) {
        self.verdict.send_replace(Some(why));
    }
}

impl nsm_notify::Fence for Watched {
    fn check(&self) -> Result<(), String> {
        if let Some(why) = self.verdict.borrow().clone() {
            return Err(why);
        }
        self.ownership.check().map_err(|e| e.to_string())
    }

    fn fenced(&self) -> std::pin::Pin<Box<dyn Future<Output = String> + Send + '_>> {
        let mut rx = self.verdict.subscribe();
        Box::pin(async move {
            let verdict = rx
                .wait_for(Option::is_some)
                .await
                .map(|why| why.clone().unwrap_or_default());
            match verdict {
                Ok(why) => why,
                // The watch is gone (released): only a release stops the run then.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

/// Why an instance starts serving here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// `nsmctl takeover` (or at start): a new state, the peers to notify.
    Takeover,
    /// It was served here when nsmd stopped: same state, what was left to notify.
    Resume,
}

/// How often an active instance checks that it still owns its state directory.
const FENCE_CHECK: Duration = Duration::from_secs(1);

/// The address → instance table (`None`: silent), shared with the fence watches.
type Routes = Arc<RwLock<HashMap<IpAddr, Option<Arc<Instance>>>>>;

/// One service instance and what it is doing on this node.
#[derive(Debug)]
pub struct Service {
    spec: ServiceSpec,
    active: Mutex<Option<Active>>,
    /// The epoch this node held before nsmd restarted, when the instance could not resume
    /// (its address gone, or another node took it over): its kernel locks may still be held
    /// here until it is released.
    leftover: Mutex<Option<u64>>,
    /// The takeover, resume or release step under way (for `nsmctl status`).
    step: Mutex<Option<Step>>,
    progress: Arc<Mutex<NotifyProgress>>,
}

/// The steps of the takeover, resume and release state machines, each a function: a
/// takeover is [`Step::Claiming`] ([`claim`]: ownership, `sm/` retired, state bumped),
/// [`Step::TakeoverCommand`] ([`takeover_command`]), then [`Services::activate`]:
/// [`Services::open_instance`] (answering), [`Step::WaitingForReadiness`]
/// ([`Services::await_readiness`]), [`Services::serve`] (the fence watch and the
/// announcement); a resume is [`Step::Resuming`] ([`reclaim`]) then the same activation; a
/// release is [`Step::Releasing`] ([`Services::release`]). A step that fails undoes what the
/// earlier ones did (the ownership released, the marker removed, the addresses silent) and
/// returns the [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Claiming,
    TakeoverCommand,
    WaitingForReadiness,
    Resuming,
    Releasing,
}

impl Step {
    /// As `nsmctl status` shows it.
    fn as_str(self) -> &'static str {
        match self {
            Self::Claiming => "claiming",
            Self::TakeoverCommand => "running the takeover command",
            Self::WaitingForReadiness => "waiting for readiness",
            Self::Resuming => "resuming",
            Self::Releasing => "releasing",
        }
    }
}

/// Shows the step under way in the status of a service until dropped.
struct Stepping<'a>(&'a Service);

impl<'a> Stepping<'a> {
    fn start(service: &'a Service, step: Step) -> Self {
        *lock(&service.step) = Some(step);
        Self(service)
    }

    fn next(&self, step: Step) {
        *lock(&self.0.step) = Some(step);
    }
}

impl Drop for Stepping<'_> {
    fn drop(&mut self) {
        *lock(&self.0.step) = None;
    }
}

/// What the claim (or, at start, the reclaim) of an instance gives the steps after it.
struct Claimed {
    ownership: Arc<Ownership>,
    /// The state directory, opened once for the whole takeover.
    dir: Arc<StateDir>,
    /// The new state, durable, and the peers of `sm.bak/` to tell.
    announcement: Announcement,
    /// The root helper, when the layout needs it.
    helper: Option<Arc<dyn ServicePrivileges>>,
}

impl Service {
    fn new(spec: ServiceSpec) -> Arc<Self> {
        Arc::new(Self {
            spec,
            active: Mutex::new(None),
            leftover: Mutex::new(None),
            step: Mutex::new(None),
            progress: Arc::default(),
        })
    }
}

/// What `nsmctl status` shows of an instance.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    /// The name.
    pub name: String,
    /// The service hostname.
    pub hostname: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Active on this node.
    pub active: bool,
    /// The state number (while active).
    pub state: Option<i32>,
    /// The ownership epoch held (while active).
    pub epoch: Option<u64>,
    /// Records monitored (while active).
    pub peers: usize,
    /// Another node took the instance over: this node silenced its addresses and waits to
    /// be released. Also an instance this node held before nsmd restarted that could not
    /// resume (its address gone, or taken over elsewhere): its kernel locks may be held here
    /// until it is released.
    pub fenced: bool,
    /// The last notification run.
    pub notify: NotifyProgress,
    /// The step under way, if any: `claiming`, `resuming`, `waiting for readiness`,
    /// `releasing` (nsmctl waits for it; the instance shows active only once it is done).
    pub step: Option<&'static str>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a call sent to a local address goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// The node instance.
    Node,
    /// An active service instance.
    Service(Arc<Instance>),
    /// A service address of an instance not active here: no answer.
    Silent,
}

/// Every service instance of the daemon, and the address → instance table the NSM service
/// dispatches with.
#[derive(Debug)]
pub struct Services {
    cfg: ServicesConfig,
    list: RwLock<Vec<Arc<Service>>>,
    routes: Routes,
    /// One takeover or release at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Services {
    /// The instances of `specs`, none active yet (their addresses are silent).
    pub fn new(cfg: ServicesConfig, specs: Vec<ServiceSpec>) -> Self {
        let list: Vec<Arc<Service>> = specs.into_iter().map(Service::new).collect();
        let routes = route_table(&list, &HashMap::new());
        Self {
            cfg,
            list: RwLock::new(list),
            routes: Arc::new(RwLock::new(routes)),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// The specs, in configuration order.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        self.list().iter().map(|s| s.spec.clone()).collect()
    }

    fn list(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Service>>> {
        self.list
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Uses `specs` (the instance files read again, on SIGHUP) from now on: new instances
    /// are added (inactive, their addresses silent), inactive ones changed or removed. An
    /// active instance keeps its settings until it is released; the differences are
    /// reported (it is removed or changed at the next reload after its release).
    pub async fn reconfigure(&self, specs: Vec<ServiceSpec>) -> Reconfigured {
        let _busy = self.busy.lock().await;
        let mut out = Reconfigured::default();
        let mut list = self
            .list
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next: Vec<Arc<Service>> = Vec::new();
        for spec in specs {
            match list.iter().find(|s| s.spec.name == spec.name) {
                None => {
                    out.added.push(spec.name.clone());
                    next.push(Service::new(spec));
                }
                Some(old) if old.spec == spec => next.push(old.clone()),
                Some(old) if lock(&old.active).is_some() => {
                    out.kept_active.push(spec.name.clone());
                    next.push(old.clone());
                }
                Some(_) => {
                    out.changed.push(spec.name.clone());
                    next.push(Service::new(spec));
                }
            }
        }
        for old in list.iter() {
            if next.iter().any(|n| n.spec.name == old.spec.name) {
                continue;
            }
            if lock(&old.active).is_some() {
                out.kept_active.push(old.spec.name.clone());
                next.push(old.clone());
            } else {
                out.removed.push(old.spec.name.clone());
            }
        }
        let mut routes = self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *routes = route_table(&next, &routes);
        *list = next;
        out
    }

    /// Where a call sent to `local` goes.
    pub fn route(&self, local: IpAddr) -> Route {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match routes.get(&canonical(local)) {
            None => Route::Node,
            Some(Some(i)) => Route::Service(i.clone()),
            Some(None) => Route::Silent,
        }
    }

    /// The service instances active on this node.
    pub fn active(&self) -> Vec<Arc<Instance>> {
        self.list()
            .iter()
            .filter_map(|s| lock(&s.active).as_ref().map(|a| a.instance.clone()))
            .collect()
    }

    fn find(&self, name: &str) -> Result<Arc<Service>, Error> {
        self.list()
            .iter()
            .find(|s| s.spec.name == name)
            .cloned()
            .ok_or_else(|| Error::NoSuchInstance {
                name: name.to_owned(),
            })
    }

    fn set_routes(&self, addrs: &[IpAddr], to: Option<Arc<Instance>>) {
        set_routes(&self.routes, addrs, to);
    }

    /// The active instances a client with these addresses is known to use: those whose
    /// service address has an established TCP connection (NFS, NLM) from one of `client`
    /// in `<proc_root>/net/tcp{,6}`. Empty when the kernel cannot tell.
    pub fn attribute(&self, client: &[IpAddr]) -> Vec<Arc<Instance>> {
        if client.is_empty() {
            return Vec::new();
        }
        let locals = tcp_local_addrs(&self.cfg.proc_root, client);
        let routes = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<Arc<Instance>> = Vec::new();
        for l in locals {
            if let Some(Some(i)) = routes.get(&l)
                && !out.iter().any(|o| Arc::ptr_eq(o, i))
            {
                out.push(i.clone());
            }
        }
        out
    }

    /// The status of every service instance.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.list()
            .iter()
            .map(|s| {
                let a = lock(&s.active);
                let leftover = *lock(&s.leftover);
                ServiceStatus {
                    name: s.spec.name.clone(),
                    hostname: s.spec.hostname.clone(),
                    addresses: s.spec.addresses.clone(),
                    state_dir: s.spec.state_dir.clone(),
                    active: a.is_some(),
                    state: a.as_ref().map(|a| a.instance.state()),
                    epoch: a.as_ref().map(|a| a.fence.ownership.epoch()).or(leftover),
                    peers: a.as_ref().map_or(0, |a| a.instance.len()),
                    fenced: a.as_ref().is_some_and(|a| a.fence.is_fenced()) || leftover.is_some(),
                    notify: lock(&s.progress).clone(),
                    step: lock(&s.step).map(Step::as_str),
                }
            })
            .collect()
    }

    /// The OpenMetrics text of the node instance `node` and every service instance.
    pub fn metrics(&self, node: &Instance) -> String {
        let list = self.list().clone();
        let held: Vec<(Option<Arc<Instance>>, NotifyProgress)> = list
            .iter()
            .map(|s| {
                let a = lock(&s.active);
                (
                    a.as_ref().map(|a| a.instance.clone()),
                    lock(&s.progress).clone(),
                )
            })
            .collect();
        let mut samples = vec![crate::metrics::Sample {
            name: "node",
            instance: Some(node),
            notify: None,
        }];
        for (s, (i, p)) in list.iter().zip(&held) {
            samples.push(crate::metrics::Sample {
                name: &s.spec.name,
                instance: i.as_deref(),
                notify: Some(p),
            });
        }
        crate::metrics::render(&samples)
    }

    /// The state of `name` when it is active here and not fenced (`None`: not active, or
    /// fenced).
    pub fn active_state(&self, name: &str) -> Result<Option<i32>, Error> {
        let s = self.find(name)?;
        let a = lock(&s.active);
        Ok(a.as_ref()
            .filter(|a| !a.fence.is_fenced())
            .map(|a| a.instance.state()))
    }

    /// Whether this node holds anything of `name`: active (fenced or not), or held before
    /// nsmd restarted and not released since.
    pub fn holds(&self, name: &str) -> Result<bool, Error> {
        let s = self.find(name)?;
        let active = lock(&s.active).is_some();
        Ok(active || lock(&s.leftover).is_some())
    }

    /// The monitored peers (mon_name, my_name) of an active instance.
    pub fn peers(&self, name: &str) -> Result<Vec<(String, String)>, Error> {
        let s = self.find(name)?;
        let a = lock(&s.active);
        a.as_ref()
            .map(|a| a.instance.peers())
            .ok_or_else(|| Error::NotActive {
                name: name.to_owned(),
            })
    }

    /// Takes `name` over (see the module documentation); returns once the readiness gate
    /// passed (or timed out) and the notifier started. Returns the new state number. Refused
    /// while another process (this node's or another's nsmd) holds the ownership lock.
    pub async fn takeover(&self, name: &str) -> Result<i32, Error> {
        self.takeover_as(name, false).await
    }

    /// [`Services::takeover`] as the cluster manager's decision (`nsmctl takeover --force`,
    /// CTDB's takeip): when another nsmd still holds the ownership lock (its node lost the
    /// cluster, its ctdbd was killed, a partition), the next epoch is claimed without the
    /// lock. The old holder's fence watch sees the epoch move on within a second and
    /// stops answering on the addresses and notifying; its kernel locks stay until it is
    /// released there. This node takes the lock once the old holder lets it go.
    pub async fn takeover_forced(&self, name: &str) -> Result<i32, Error> {
        self.takeover_as(name, true).await
    }

    async fn takeover_as(&self, name: &str, force: bool) -> Result<i32, Error> {
        let _busy = self.busy.lock().await;
        let s = self.find(name)?;
        if lock(&s.active).is_some() {
            return Err(Error::AlreadyActive {
                name: name.to_owned(),
            });
        }
        let leftover = *lock(&s.leftover);
        if let Some(epoch) = leftover {
            // Whatever the kernel still holds from then belongs to an older epoch: the clients
            // reclaim it after this takeover's notification.
            info!(instance = %name, epoch, "dropping the kernel locks held here since before nsmd restarted");
            self.unlock_kernel(&s.spec)
                .map_err(|failed| Error::OldLocksKept {
                    name: name.to_owned(),
                    failed,
                })?;
            *lock(&s.leftover) = None;
            self.remove_marker(name);
        }
        let step = Stepping::start(&s, Step::Claiming);
        let (spec, owner) = (s.spec.clone(), self.cfg.owner.clone());
        let privileged = self.cfg.privileged.clone();
        let claimed =
            tokio::task::spawn_blocking(move || claim(&spec, &owner, privileged, force)).await??;
        // A takeover's own step (not a resume's: no new state, clients already told).
        if !s.spec.takeover_command.is_empty() {
            step.next(Step::TakeoverCommand);
        }
        if let Err(e) = takeover_command(&s.spec, claimed.announcement.state()).await {
            claimed.ownership.release();
            return Err(e);
        }
        self.write_marker(&s.spec.name, claimed.ownership.epoch());
        self.activate(&s, claimed, Activation::Takeover, &step)
            .await
    }

    /// At start: every instance this node held before nsmd stopped (its marker in the run
    /// directory, so never after a reboot, nor after a release) resumes if its address is
    /// still here and nobody took it over: the same epoch and state, its records, answering on
    /// its addresses, and the peers still in `sm.bak/` notified (no new bump: a notification
    /// cut short by the restart is finished). One whose address is gone or whose epoch moved
    /// on is not served but stays marked (`fenced` in the status) until `nsmctl release`
    /// drops its kernel locks here. Returns the names resumed.
    pub async fn resume_all(&self) -> Vec<String> {
        let mut resumed = Vec::new();
        let list: Vec<Arc<Service>> = self.list().clone();
        for s in list {
            let Some(epoch) = self.read_marker(&s.spec.name) else {
                continue;
            };
            match self.resume(&s, epoch).await {
                Ok(state) => {
                    info!(instance = %s.spec.name, epoch, state, "resumed: it was active on this node when nsmd stopped");
                    resumed.push(s.spec.name.clone());
                }
                Err(e) => {
                    *lock(&s.leftover) = Some(epoch);
                    tracing::error!(
                        instance = %s.spec.name,
                        epoch,
                        "was active on this node when nsmd stopped, not resumed: {e}; its kernel \
                         locks may still be held here: release it (nsmctl release {})",
                        s.spec.name
                    );
                }
            }
        }
        resumed
    }

    async fn resume(&self, s: &Arc<Service>, epoch: u64) -> Result<i32, Error> {
        let _busy = self.busy.lock().await;
        if let Some(a) = lock(&s.active).as_ref() {
            // Taken over by a command that came first.
            return Ok(a.instance.state());
        }
        let step = Stepping::start(s, Step::Resuming);
        let spec = s.spec.clone();
        if let Some(a) = spec.addresses.iter().find(|a| !is_local_address(**a)) {
            return Err(Error::AddressGone { address: *a });
        }
        let privileged = self.cfg.privileged.clone();
        let claimed =
            tokio::task::spawn_blocking(move || reclaim(&spec, privileged, epoch)).await??;
        self.activate(s, claimed, Activation::Resume, &step).await
    }

    /// The second half of a takeover (and all of a resume): [`Services::open_instance`]
    /// (answering on the addresses), [`Step::WaitingForReadiness`]
    /// ([`Services::await_readiness`]), then [`Services::serve`] (the fence watch and the
    /// announcement of `sm.bak/`).
    async fn activate(
        &self,
        s: &Arc<Service>,
        claimed: Claimed,
        how: Activation,
        step: &Stepping<'_>,
    ) -> Result<i32, Error> {
        let state = claimed.announcement.state();
        let instance = self.open_instance(s, &claimed)?;
        step.next(Step::WaitingForReadiness);
        let ready = self.await_readiness(s, &claimed, how).await?;
        self.serve(s, claimed, instance, ready);
        Ok(state)
    }

    /// The instance opened on its state directory and answering on its addresses; undone
    /// (ownership released, marker removed) when it cannot open.
    fn open_instance(&self, s: &Service, claimed: &Claimed) -> Result<Arc<Instance>, Error> {
        let state = claimed.announcement.state();
        let spec = &s.spec;
        let mut icfg = InstanceConfig::new(&spec.name, spec.state_dir.clone());
        icfg.dir = Some(claimed.dir.clone());
        icfg.ha_callout = self.cfg.ha_callout.clone();
        icfg.callback = self.cfg.callback.clone();
        icfg.fence = Some(claimed.ownership.clone() as Arc<dyn Fence>);
        icfg.service_address = spec.addresses.first().map(ToString::to_string);
        icfg.crash_notify = Some(crate::instance::CrashNotify {
            sources: spec.sources(),
            names: spec.names(),
            policy: spec.policy(),
            registered: self.cfg.registered.clone(),
        });
        // Never the kernel's nsm_local_state: that is the node's.
        icfg.authority = Some(match claimed.helper.clone() {
            Some(helper) => Arc::new(HelperAuthority {
                helper,
                name: spec.name.clone(),
            }),
            None => Arc::new(DirectAuthority {
                dir: claimed.dir.clone(),
                nsm_local_state: None,
            }),
        });
        // A record file that cannot be read now fails the takeover (the cluster manager
        // tries again): serving without it, that client would not be called back when it
        // reboots (tests/sim.rs, seeds 46 and 263). Damaged files are logged and skipped, as
        // for the node.
        let opened = Instance::open(icfg).map_err(Error::from).and_then(|(i, report)| {
            report.unreadable()?;
            for sk in &report.skipped {
                warn!(instance = %spec.name, path = %sk.path.display(), "record file skipped and left in place: {}", sk.reason);
            }
            for p in &report.leftovers {
                warn!(instance = %spec.name, path = %p.display(), "temporary file of an interrupted write ignored");
            }
            Ok(i)
        });
        let instance = match opened {
            Ok(i) => i,
            Err(e) => {
                claimed.ownership.release();
                self.remove_marker(&spec.name);
                return Err(e);
            }
        };
        if instance.state() != state {
            warn!(instance = %spec.name, "state changed under the takeover: {} then {}", state, instance.state());
        }
        self.set_routes(&spec.addresses, Some(instance.clone()));
        *lock(&s.progress) = NotifyProgress::default();
        info!(instance = %spec.name, state, "answering on {:?}", spec.addresses);
        for a in &spec.addresses {
            if !is_local_address(*a) {
                warn!(
                    instance = %spec.name,
                    "service address {a} is not on any interface of this node: clients cannot \
                     reach this instance, and notifications wait for the readiness gate (bring \
                     the address up before the takeover, e.g. order IPaddr2 first)"
                );
            }
        }
        Ok(instance)
    }

    /// The readiness gate ([`Step::WaitingForReadiness`]): `Ok(true)` once it opened.
    /// Clients told to reclaim from a server whose lock manager is not there lose their
    /// locks: a gate that does not open fails a takeover, which is undone (silent again,
    /// ownership released, marker removed; nothing was notified: the peers stay in sm.bak/
    /// for the next takeover, the bumped state stays). A resumed instance was serving before
    /// nsmd restarted: it stays, unnotified (`Ok(false)`).
    async fn await_readiness(
        &self,
        s: &Service,
        claimed: &Claimed,
        how: Activation,
    ) -> Result<bool, Error> {
        let spec = &s.spec;
        match readiness(spec, self.cfg.rpcbind_port).await {
            Ok(()) => Ok(true),
            Err(e) if how == Activation::Takeover => {
                self.set_routes(&spec.addresses, None);
                claimed.ownership.release();
                self.remove_marker(&spec.name);
                let e = Error::NotReady {
                    name: spec.name.clone(),
                    why: e,
                    state: claimed.announcement.state(),
                };
                lock(&s.progress).error = Some(e.to_string());
                tracing::error!(instance = %spec.name, "{e}");
                Err(e)
            }
            Err(e) => {
                let e = format!(
                    "the readiness gate did not open ({e}): the peers still in sm.bak/ are not \
                     notified; `nsmctl notify {}` once the lock manager is up",
                    spec.name
                );
                tracing::error!(instance = %spec.name, "resumed, but {e}");
                let mut p = lock(&s.progress);
                p.error = Some(e);
                p.finished = true;
                Ok(false)
            }
        }
    }

    /// Active: the instance's one fence watch, and (when `announce`) the announcement of
    /// `sm.bak/` that observes its verdict.
    fn serve(&self, s: &Service, claimed: Claimed, instance: Arc<Instance>, announce: bool) {
        let Claimed {
            ownership,
            dir,
            announcement,
            helper: _,
        } = claimed;
        let fence = Watched::new(ownership);
        let watch = tokio::spawn(fence_watch(
            s.spec.clone(),
            fence.clone(),
            self.routes.clone(),
        ));
        let notifying =
            announce.then(|| self.announce(s, announcement, dir.clone(), fence.clone()));
        *lock(&s.active) = Some(Active {
            instance,
            dir,
            fence,
            notifying,
            watch,
        });
    }

    /// Announces `announcement` in the background, through the registration gate, stopped
    /// by the fence's verdict; its progress in the status.
    fn announce(
        &self,
        s: &Service,
        announcement: Announcement,
        dir: Arc<StateDir>,
        fence: Watched,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(notify_task(
            s.spec.clone(),
            announcement,
            dir,
            fence,
            s.progress.clone(),
            self.cfg.registered.clone(),
        ))
    }

    /// Where this node records that it holds `name` (see [`ServicesConfig::run_dir`]).
    fn marker(&self, name: &str) -> Option<PathBuf> {
        self.cfg.run_dir.as_ref().map(|d| marker_path(d, name))
    }

    fn write_marker(&self, name: &str, epoch: u64) {
        let Some(path) = self.marker(name) else {
            return;
        };
        let tmp = path.with_extension("active.new");
        let r = std::fs::write(&tmp, format!("epoch {epoch}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            warn!(
                instance = %name,
                "cannot write {}: {e}; if nsmd restarts, this instance will not resume",
                path.display()
            );
        }
    }

    fn read_marker(&self, name: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.marker(name)?).ok()?;
        text.strip_prefix("epoch ")?.trim().parse().ok()
    }

    fn remove_marker(&self, name: &str) {
        let Some(path) = self.marker(name) else {
            return;
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                instance = %name,
                "cannot remove {}: {e}; remove it by hand, or the next nsmd tries to resume it",
                path.display()
            ),
        }
    }

    /// What stays on this node when nsmd stops now (for the log at SIGTERM): the active
    /// instances, which keep their kernel locks and resume at the next start.
    pub fn left_active(&self) -> Vec<String> {
        self.list()
            .iter()
            .filter(|s| lock(&s.active).is_some())
            .map(|s| s.spec.name.clone())
            .collect()
    }

    /// Sends the notifications of `name` again from its `sm.bak/` (after a failed run).
    pub async fn notify(&self, name: &str) -> Result<usize, Error> {
        let _busy = self.busy.lock().await;
        let s = self.find(name)?;
        let mut a = lock(&s.active);
        let Some(active) = a.as_mut() else {
            return Err(Error::NotActive {
                name: name.to_owned(),
            });
        };
        if active.fence.is_fenced() {
            return Err(Error::Fenced {
                name: name.to_owned(),
            });
        }
        if let Some(t) = active.notifying.take() {
            t.abort();
        }
        let announcement = Announcement::again(&active.dir, active.instance.state())?;
        let peers = announcement.peers();
        active.notifying =
            Some(self.announce(&s, announcement, active.dir.clone(), active.fence.clone()));
        Ok(peers)
    }

    /// Releases `name` (see the module documentation).
    pub async fn release(&self, name: &str) -> Result<(), Error> {
        let _busy = self.busy.lock().await;
        let s = self.find(name)?;
        let spec = &s.spec;
        let _step = Stepping::start(&s, Step::Releasing);
        let Some(active) = lock(&s.active).take() else {
            // Held here before nsmd restarted and not resumed: only the kernel's locks are
            // left to release.
            if lock(&s.leftover).is_some() {
                self.unlock_kernel(spec)
                    .map_err(|failed| Error::KernelRelease {
                        name: name.to_owned(),
                        failed,
                        held: false,
                    })?;
                *lock(&s.leftover) = None;
                self.remove_marker(&spec.name);
                info!(instance = %spec.name, "released (its kernel locks, held since before nsmd restarted)");
                return Ok(());
            }
            return Err(Error::NotActive {
                name: name.to_owned(),
            });
        };
        self.set_routes(&spec.addresses, None);
        active.watch.abort();
        if let Some(t) = &active.notifying {
            t.abort();
        }
        if let Err(failed) = self.unlock_kernel(spec) {
            // The kernel may still hold the service's locks: this node keeps the instance
            // (silent, shown fenced) and its ownership, so no other node takes it over
            // without --force, and a cluster manager sees the stop fail.
            active
                .fence
                .fence(format!("the kernel refused the release of {name}"));
            *lock(&s.active) = Some(active);
            let e = Error::KernelRelease {
                name: name.to_owned(),
                failed,
                held: true,
            };
            tracing::error!(instance = %spec.name, "{e}");
            return Err(e);
        }
        // Flush: every acknowledged change is already durable; make the directories so too.
        for d in ["sm", "sm.bak", ""] {
            let p = spec.state_dir.join(d);
            if let Err(e) = std::fs::File::open(&p).and_then(|f| f.sync_all()) {
                warn!(path = %p.display(), "cannot flush: {e}");
            }
        }
        self.remove_marker(&spec.name);
        active.fence.ownership.release();
        info!(instance = %spec.name, "released");
        Ok(())
    }

    /// Drops the kernel's NLM locks of `spec`: its addresses to `unlock_ip` (if set), its
    /// exports to `unlock_filesystem` ([`release_kernel_locks`]).
    fn unlock_kernel(&self, spec: &ServiceSpec) -> Result<(), String> {
        let failed =
            release_kernel_locks(&self.cfg.proc_root, spec, self.cfg.privileged.as_deref());
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// The local addresses of the established TCP connections from any of `peers`, read from
/// `<proc_root>/net/tcp` and `tcp6` (the format of `linux: net/ipv4/tcp_ipv4.c`: addresses in
/// hex, each 32-bit word in host byte order; state `01` is ESTABLISHED).
pub fn tcp_local_addrs(proc_root: &Path, peers: &[IpAddr]) -> Vec<IpAddr> {
    let peers: Vec<IpAddr> = peers.iter().map(|p| canonical(*p)).collect();
    let mut out = Vec::new();
    for file in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(proc_root.join(file)) else {
            continue;
        };
        for s in proc_net_sockets(&text) {
            let l = canonical(s.local.ip());
            if s.state == 0x01 && peers.contains(&canonical(s.remote.ip())) && !out.contains(&l) {
                out.push(l);
            }
        }
    }
    out
}

/// One socket of `/proc/net/{tcp,udp}{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcNetSocket {
    /// The local address and port.
    pub local: SocketAddr,
    /// The remote address and port.
    pub remote: SocketAddr,
    /// The state (TCP: `0x01` is ESTABLISHED, `0x0A` LISTEN).
    pub state: u8,
    /// The socket's inode (`socket:[N]` among a process's descriptors); 0 when the line has
    /// none.
    pub inode: u64,
}

/// The sockets listed in the text of `/proc/net/{tcp,udp}{,6}` (the format of
/// `linux: net/ipv4/tcp_ipv4.c`: addresses in hex, each 32-bit word in host byte order, then
/// the port); lines that do not parse are skipped.
pub fn proc_net_sockets(text: &str) -> impl Iterator<Item = ProcNetSocket> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().take(10).collect();
        Some(ProcNetSocket {
            local: parse_proc_addr(f.get(1)?)?,
            remote: parse_proc_addr(f.get(2)?)?,
            state: u8::from_str_radix(f.get(3)?, 16).ok()?,
            inode: f.get(9).and_then(|i| i.parse().ok()).unwrap_or(0),
        })
    })
}

/// `0100007F:0801` (IPv4) or 32 hex digits (IPv6), then the port in hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (hex, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match hex.len() {
        8 => IpAddr::from(word(hex)?),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::from(b)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Runs the instance's takeover command, if it has one: argv without a shell, stdin from
/// /dev/null, `NSMD_INSTANCE` and `NSMD_STATE` in its environment, killed after
/// `takeover_timeout`. Its output is logged; an error names the command and says what
/// happened (exit status and the end of its stderr, or the timeout).
async fn takeover_command(spec: &ServiceSpec, state: i32) -> Result<(), Error> {
    let Some((prog, args)) = spec.takeover_command.split_first() else {
        return Ok(());
    };
    let shown = spec.takeover_command.join(" ");
    let failed = |failure| Error::TakeoverCommand {
        name: spec.name.clone(),
        failure,
    };
    let child = tokio::process::Command::new(prog)
        .args(args)
        .env("NSMD_INSTANCE", &spec.name)
        .env("NSMD_STATE", state.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| {
            failed(CommandFailure::Spawn {
                command: shown.clone(),
                source,
            })
        })?;
    let out = match tokio::time::timeout(spec.takeover_timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => {
            return Err(failed(CommandFailure::Wait {
                command: shown,
                source,
            }));
        }
        Err(_) => {
            return Err(failed(CommandFailure::Timeout {
                command: shown,
                timeout: spec.takeover_timeout,
            }));
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        info!(instance = %spec.name, command = %shown, stdout = %stdout.trim_end(), "takeover command succeeded");
        return Ok(());
    }
    let tail: String = stderr
        .trim_end()
        .chars()
        .rev()
        .take(500)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(failed(CommandFailure::Exit {
        command: shown,
        status: out.status,
        stderr: tail,
    }))
}

/// Waits until every program is registered on the service address and the command succeeds.
async fn readiness(spec: &ServiceSpec, rpcbind_port: u16) -> Result<(), String> {
    let deadline = Instant::now() + spec.ready_timeout;
    let Some(addr) = spec.addresses.first().copied() else {
        return Ok(());
    };
    let rpcbind = SocketAddr::new(addr, rpcbind_port);
    let opts = CallOptions {
        timeout: Duration::from_secs(2),
        ..CallOptions::default()
    };
    let mut last;
    loop {
        // One DUMP per poll (UDP: no connection to set up or leave in TIME_WAIT): every
        // program, version and transport in one answer.
        last = if spec.ready_programs.is_empty() {
            None
        } else {
            match nsm_rpc::rpcbind::dump_udp(rpcbind, &opts).await {
                Ok(regs) => spec
                    .ready_programs
                    .iter()
                    .find(|p| !regs.iter().any(|r| r.prog == **p))
                    .map(|p| format!("program {p} is not registered at {rpcbind}")),
                Err(e) => Some(format!("cannot list the registrations at {rpcbind}: {e}")),
            }
        };
        let mut ran_command = false;
        if last.is_none()
            && let Some((prog, args)) = spec.ready_command.split_first()
        {
            ran_command = true;
            let st = tokio::process::Command::new(prog)
                .args(args)
                .stdin(std::process::Stdio::null())
                .status()
                .await;
            match st {
                Ok(s) if s.success() => {}
                Ok(s) => last = Some(format!("{prog}: {s}")),
                Err(e) => last = Some(format!("{prog}: {e}")),
            }
        }
        match last {
            None => return Ok(()),
            Some(e) if Instant::now() >= deadline => {
                return Err(format!("not ready after {:?}: {e}", spec.ready_timeout));
            }
            // rpcbind is asked again soon, so the first notification leaves within a poll
            // of the service registering; a failing ready command is not run that often.
            Some(_) if ran_command => tokio::time::sleep(READY_COMMAND_POLL).await,
            Some(_) => tokio::time::sleep(READY_RPCBIND_POLL).await,
        }
    }
}

/// How often the readiness gate asks rpcbind while a program is missing.
const READY_RPCBIND_POLL: Duration = Duration::from_millis(5);
/// How often the readiness gate runs a ready command that failed.
const READY_COMMAND_POLL: Duration = Duration::from_millis(250);

/// Whether `ip` is an address of this node (binding to it succeeds without IP_FREEBIND).
fn is_local_address(ip: IpAddr) -> bool {
    !matches!(
        std::net::UdpSocket::bind(SocketAddr::new(ip, 0)),
        Err(e) if e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL)
    )
}

/// The address table for `list`: silent for every instance not active here, its instance
/// for each active one (as `current` routes it: a fenced one stays silent); addresses no
/// instance has go back to the node instance (absent).
fn route_table(
    list: &[Arc<Service>],
    current: &HashMap<IpAddr, Option<Arc<Instance>>>,
) -> HashMap<IpAddr, Option<Arc<Instance>>> {
    let mut table: HashMap<IpAddr, Option<Arc<Instance>>> = HashMap::new();
    for s in list {
        let active = lock(&s.active);
        for a in &s.spec.addresses {
            let a = canonical(*a);
            let to = active.as_ref().and_then(|act| {
                current
                    .get(&a)
                    .cloned()
                    .flatten()
                    .filter(|i| Arc::ptr_eq(i, &act.instance))
            });
            // An address two instances share: the active one answers on it.
            if !matches!(table.get(&a), Some(Some(_))) {
                table.insert(a, to);
            }
        }
    }
    table
}

fn set_routes(routes: &Routes, addrs: &[IpAddr], to: Option<Arc<Instance>>) {
    let mut routes = routes
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for a in addrs {
        routes.insert(canonical(*a), to.clone());
    }
}

/// Claims instance `spec` for `owner` (blocking; [`Step::Claiming`]): the ownership (by
/// force when `force`: see [`Services::takeover_forced`]), the state directory opened once,
/// then the restart ([`Retired`]): `sm/` to `sm.bak/` and the state bumped durably, the
/// ownership checked before each write.
fn claim(
    spec: &ServiceSpec,
    owner: &str,
    privileged: Option<Arc<dyn ServicePrivileges>>,
    force: bool,
) -> Result<Claimed, Error> {
    let dir_path = &spec.state_dir;
    // A root-owned directory while nsmd runs unprivileged: the root helper creates the
    // ownership file, writes its epoch and bumps `state`; the lock is taken and sm/ and
    // sm.bak/ are written here.
    let helper = check_layout(spec, privileged.is_some())?
        .then_some(privileged)
        .flatten();
    let own = match &helper {
        Some(h) => {
            // Locked here, written by the helper.
            let path = dir_path.join(crate::ownership::OWNER_FILE);
            if !path.exists() {
                h.create_owner(&spec.name)?;
            }
            let file = std::fs::File::open(&path).map_err(|source| Error::Open { path, source })?;
            Ownership::claim_with(dir_path, file, force, || {
                h.next_epoch(&spec.name, owner).map_err(|e| e.to_string())
            })
        }
        None if force => Ownership::claim_over(dir_path, owner),
        None => Ownership::claim(dir_path, owner),
    }?;
    if !own.locked() {
        warn!(
            instance = %spec.name,
            epoch = own.epoch(),
            "taken over by force while another nsmd holds {}: that holder is fenced by \
             the epoch (it stops answering and notifying within {FENCE_CHECK:?}); its \
             kernel locks stay until the instance is released there",
            dir_path.join(crate::ownership::OWNER_FILE).display()
        );
    }
    let dir = Arc::new(StateDir::open(dir_path)?);
    let allowed = || own.check().map_err(Error::from);
    let announcement = Retired::new(&dir, allowed)?.bump(
        || match &helper {
            Some(h) => h.bump(&spec.name),
            None => Ok(dir.state(true)?),
        },
        allowed,
    )?;
    info!(
        instance = %dir_path.display(),
        epoch = own.epoch(),
        state = announcement.state(),
        moved = announcement.moved(),
        "ownership claimed, sm/ moved to sm.bak/, state bumped"
    );
    Ok(Claimed {
        ownership: Arc::new(own),
        dir,
        announcement,
        helper,
    })
}

/// Claims instance `spec` again at `epoch` after nsmd restarted (blocking;
/// [`Step::Resuming`]): the same state, what is left in `sm.bak/`.
fn reclaim(
    spec: &ServiceSpec,
    privileged: Option<Arc<dyn ServicePrivileges>>,
    epoch: u64,
) -> Result<Claimed, Error> {
    let helper = check_layout(spec, privileged.is_some())?
        .then_some(privileged)
        .flatten();
    let own = Ownership::resume(&spec.state_dir, epoch)?;
    let dir = Arc::new(StateDir::open(&spec.state_dir)?);
    let announcement = Announcement::again(&dir, dir.state(false)?)?;
    Ok(Claimed {
        ownership: Arc::new(own),
        dir,
        announcement,
        helper,
    })
}

/// The one fence watch of an active instance: checks every [`FENCE_CHECK`] that this node
/// still owns the state directory. Once another node took it over (a newer epoch), calls to
/// the service addresses go unanswered, so clients stop talking to the stale owner, until
/// `nsmctl release` (which also releases the kernel's locks), and the verdict stops the
/// announcement under way. A failing read (shared storage away) is logged, not acted on:
/// writes are refused by the fence anyway.
async fn fence_watch(spec: ServiceSpec, fence: Watched, routes: Routes) {
    let mut warned = false;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + FENCE_CHECK, FENCE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let own = fence.ownership.clone();
        let checked = tokio::task::spawn_blocking(move || {
            // Taken over by force: the lock, once the old holder lets it go.
            if !own.locked() && own.relock() {
                info!(path = %own.path().display(), "the previous holder let the lock go: held here now");
            }
            own.check()
        })
        .await;
        match checked {
            Ok(Ok(())) => warned = false,
            Ok(Err(e @ crate::ownership::OwnershipError::Fenced { .. })) => {
                set_routes(&routes, &spec.addresses, None);
                tracing::error!(
                    instance = %spec.name,
                    "{e}: no longer answering on {:?}; release it here (nsmctl release {}) to drop its kernel locks",
                    spec.addresses,
                    spec.name
                );
                fence.fence(e.to_string());
                return;
            }
            Ok(Err(crate::ownership::OwnershipError::Released { .. })) => return,
            Ok(Err(e)) if !warned => {
                warned = true;
                warn!(instance = %spec.name, "cannot check the ownership: {e}");
            }
            Ok(Err(_)) => {}
            Err(_) => return,
        }
    }
}

/// An instance's announcement ([`nsm_notify::Announcement::send`]): nothing sent before nsmd
/// is registered with rpcbind, from the service's addresses with its names, stopped by the
/// fence's verdict; the outcome in `progress`.
async fn notify_task(
    spec: ServiceSpec,
    announcement: Announcement,
    dir: Arc<StateDir>,
    fence: Watched,
    progress: Arc<Mutex<NotifyProgress>>,
    registered: crate::registered::Registered,
) {
    let (state, peers) = (announcement.state(), announcement.peers());
    if !registered.is_open() && peers > 0 {
        info!(instance = %spec.name, state, "notification waits until nsmd is registered with rpcbind");
    }
    let names = spec.names();
    if peers > 0 {
        info!(instance = %spec.name, state, peers, "notifying as {names:?}");
    }
    let r = announcement
        .send(
            dir,
            Delivery {
                names: &|_| names.clone(),
                source: Source::Bind(spec.sources()),
                config: NotifierConfig {
                    policy: spec.policy(),
                    ..NotifierConfig::default()
                },
                // The status shows the peers once the notification started.
                gate: Some(Box::pin(async {
                    let open = registered.wait().await;
                    if open {
                        lock(&progress).peers = peers;
                    }
                    open
                })),
                fence: Some(Arc::new(fence.clone())),
            },
        )
        .await;
    let mut p = lock(&progress);
    p.finished = true;
    match r {
        Ok(summary) => {
            p.acked = summary.acked();
            p.gave_up = summary.gave_up();
            if peers == 0 {
                info!(instance = %spec.name, "no one to notify");
            } else {
                info!(instance = %spec.name, "notification done: {} of {} acknowledged", p.acked, p.peers);
            }
        }
        Err(e) => {
            let e = match e {
                nsm_notify::AnnounceError::GateClosed => Error::Unregistered,
                e => Error::Announce(e),
            };
            warn!(instance = %spec.name, "notification: {e}");
            p.error = Some(e.to_string());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A service instance's spec for in-process tests (also used by `lib.rs`'s tests).
    pub(crate) fn spec(name: &str, addr: &str, dir: &Path) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            hostname: format!("{name}.example.test"),
            aliases: vec![],
            addresses: vec![addr.parse().unwrap()],
            interface: None,
            state_dir: dir.to_owned(),
            notify_names: vec![],
            notify_port: Some(0),
            retry: Some(Duration::from_secs(1)),
            window: 4,
            ready_programs: vec![],
            ready_command: vec![],
            ready_timeout: Duration::from_secs(1),
            takeover_command: vec![],
            takeover_timeout: Duration::from_secs(1),
            unlock_ip: true,
            exports: vec![PathBuf::from("/export/a")],
            takeover_at_start: false,
        }
    }

    #[test]
    fn names_are_the_hostname_the_aliases_then_the_addresses() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec("a", "198.51.100.50", d.path());
        s.aliases = vec!["a".into(), "198.51.100.50".into()];
        s.addresses.push("::ffff:198.51.100.51".parse().unwrap());
        assert_eq!(
            s.names(),
            ["a.example.test", "a", "198.51.100.50", "198.51.100.51"]
        );
        s.notify_names = vec!["only".into()];
        assert_eq!(s.names(), ["only"]);
    }

    #[test]
    fn local_addresses() {
        assert!(is_local_address(IpAddr::from([127, 0, 0, 1])));
        if std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind")
            .is_ok_and(|v| v.trim() == "0")
        {
            assert!(!is_local_address(IpAddr::from([192, 0, 2, 99])));
        }
    }

    #[test]
    fn proc_net_tcp_lines() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("net")).unwrap();
        let v4 = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        std::fs::write(
            d.path().join("net/tcp"),
            format!(
                "  sl  local_address rem_address   st tx_queue rx_queue\n\
                 0: {}:0801 {}:03FF 01 00000000:00000000\n\
                 1: {}:0801 {}:03FE 0A 00000000:00000000\n\
                 2: {}:0801 {}:03FD 01 00000000:00000000\n",
                v4([198, 51, 100, 101]),
                v4([198, 51, 100, 71]),
                v4([198, 51, 100, 102]),
                v4([198, 51, 100, 71]),
                v4([198, 51, 100, 103]),
                v4([198, 51, 100, 72]),
            ),
        )
        .unwrap();
        let mapped: [u8; 16] = "::ffff:198.51.100.104"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let client: [u8; 16] = "::ffff:198.51.100.71"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let hex6 = |b: [u8; 16]| {
            b.chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes(c.try_into().unwrap())))
                .collect::<String>()
        };
        std::fs::write(
            d.path().join("net/tcp6"),
            format!(
                "  sl  local_address rem_address st\n 0: {}:0801 {}:0300 01 0\n",
                hex6(mapped),
                hex6(client)
            ),
        )
        .unwrap();
        let got = tcp_local_addrs(d.path(), &["198.51.100.71".parse().unwrap()]);
        assert_eq!(
            got,
            [
                "198.51.100.101".parse::<IpAddr>().unwrap(),
                "198.51.100.104".parse().unwrap()
            ],
            "established only, IPv4-mapped as IPv4"
        );
    }

    #[tokio::test]
    async fn the_takeover_command_runs_after_the_bump_and_its_failure_fails_the_takeover() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("svc");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = || ServicesConfig {
            owner: "test".into(),
            proc_root: d.path().join("proc"),
            ha_callout: None,
            callback: CallbackPolicy::default(),
            rpcbind_port: 111,
            privileged: None,
            registered: crate::registered::Registered::open(),
            run_dir: None,
        };
        let seen = d.path().join("seen");
        let sh = |script: String| vec!["/bin/sh".to_owned(), "-c".to_owned(), script];
        // Fails, saying why on stderr: the takeover fails with it, ownership is free again,
        // and the instance is not answering.
        let mut failing = spec("a", "127.0.0.9", &dir);
        failing.takeover_command = sh(format!(
            "cat {}/state | od -An -tu4 > {}; echo 'no grace for you' >&2; exit 3",
            dir.display(),
            seen.display()
        ));
        let s = Services::new(cfg(), vec![failing]);
        let e = s.takeover("a").await.unwrap_err();
        assert_eq!(e.kind(), "takeover-command", "{e}");
        let e = e.to_string();
        assert!(
            e.contains("takeover command") && e.contains("no grace for you") && e.contains('3'),
            "{e}"
        );
        assert!(s.active().is_empty());
        assert!(matches!(
            s.route("127.0.0.9".parse().unwrap()),
            Route::Silent
        ));
        // It ran after the state was bumped (odd, durable).
        let bumped: i32 = std::fs::read_to_string(&seen)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(bumped % 2, 1, "the state the command saw: {bumped}");
        drop(Ownership::claim(&dir, "other").expect("ownership released"));

        // Too slow: killed at the timeout, the takeover fails.
        let mut slow = spec("a", "127.0.0.9", &dir);
        slow.takeover_command = sh("sleep 30".into());
        slow.takeover_timeout = Duration::from_millis(200);
        let s = Services::new(cfg(), vec![slow]);
        let e = s.takeover("a").await.unwrap_err();
        assert_eq!(e.kind(), "takeover-command", "{e}");
        let e = e.to_string();
        assert!(e.contains("did not finish within"), "{e}");

        // Succeeds: the takeover goes on; the command saw the instance and its new state.
        let mut ok = spec("a", "127.0.0.9", &dir);
        ok.takeover_command = sh(format!(
            "echo \"$NSMD_INSTANCE $NSMD_STATE\" > {}",
            seen.display()
        ));
        let s = Services::new(cfg(), vec![ok]);
        let state = s.takeover("a").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap().trim(),
            format!("a {state}")
        );
        assert_eq!(s.active().len(), 1);
        s.release("a").await.unwrap();
    }

    #[tokio::test]
    async fn takeover_routes_and_release_writes_the_kernel_files_then_unlocks() {
        let d = tempfile::tempdir().unwrap();
        let (dir, proc_root) = (d.path().join("svc"), d.path().join("proc"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(proc_root.join("fs/nfsd")).unwrap();
        for f in ["unlock_ip", "unlock_filesystem"] {
            std::fs::write(proc_root.join("fs/nfsd").join(f), "").unwrap();
        }
        let cfg = ServicesConfig {
            owner: "test".into(),
            proc_root: proc_root.clone(),
            ha_callout: None,
            callback: CallbackPolicy::default(),
            rpcbind_port: 111,
            privileged: None,
            registered: crate::registered::Registered::open(),
            run_dir: None,
        };
        let s = Services::new(cfg, vec![spec("a", "127.0.0.9", &dir)]);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(
            matches!(s.route(ip), Route::Silent),
            "configured, not active"
        );
        assert!(matches!(s.route("127.0.0.1".parse().unwrap()), Route::Node));
        let s1 = s.takeover("a").await.unwrap();
        assert!(matches!(s.route(ip), Route::Service(_)));
        assert_eq!(s.active().len(), 1);
        assert!(s.takeover("a").await.is_err(), "already active");
        assert!(
            Ownership::claim(&dir, "other").is_err(),
            "locked while active"
        );
        s.release("a").await.unwrap();
        assert!(matches!(s.route(ip), Route::Silent));
        // One newline-terminated word: the kernel refuses anything else (EINVAL).
        assert_eq!(
            std::fs::read_to_string(proc_root.join("fs/nfsd/unlock_ip")).unwrap(),
            "127.0.0.9\n"
        );
        assert_eq!(
            std::fs::read_to_string(proc_root.join("fs/nfsd/unlock_filesystem")).unwrap(),
            "/export/a\n"
        );
        let other = Ownership::claim(&dir, "other").unwrap();
        assert_eq!(other.epoch(), 2);
        drop(other);
        let s2 = s.takeover("a").await.unwrap();
        assert!(s2 > s1);
        s.release("a").await.unwrap();
    }

    /// The cluster's decision wins over a lock the old holder's nsmd still holds: a forced
    /// takeover claims the next epoch, and the old holder's fence watch silences it.
    #[tokio::test]
    async fn a_forced_takeover_fences_the_holder_a_plain_one_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("svc");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = |owner: &str| ServicesConfig {
            owner: owner.into(),
            proc_root: d.path().join(format!("proc-{owner}")),
            ha_callout: None,
            callback: CallbackPolicy::default(),
            rpcbind_port: 111,
            privileged: None,
            registered: crate::registered::Registered::open(),
            run_dir: None,
        };
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let old = Services::new(cfg("old"), vec![spec("a", "127.0.0.9", &dir)]);
        let new = Services::new(cfg("new"), vec![spec("a", "127.0.0.9", &dir)]);
        let s1 = old.takeover("a").await.unwrap();
        let e = new.takeover("a").await.unwrap_err();
        assert_eq!(e.kind(), "busy", "{e}");
        let e = e.to_string();
        assert!(e.contains("held by another owner"), "{e}");
        assert!(!new.status()[0].active, "a refused takeover leaves nothing");
        let s2 = new.takeover_forced("a").await.unwrap();
        assert!(s2 > s1, "the state moves on: {s1} then {s2}");
        assert_eq!(new.status()[0].epoch, Some(2));
        assert!(matches!(new.route(ip), Route::Service(_)));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !old.status()[0].fenced {
            assert!(
                Instant::now() < deadline,
                "the old holder was not fenced within 20 s of the forced takeover"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            matches!(old.route(ip), Route::Silent),
            "the fenced holder no longer answers"
        );
        old.release("a").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Whether the lock is free, without writing an epoch.
        let free = || {
            let f = std::fs::File::open(dir.join(crate::ownership::OWNER_FILE)).unwrap();
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
        };
        while free() {
            assert!(
                Instant::now() < deadline,
                "the new holder did not take the lock within 20 s of the old one's release"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!new.status()[0].fenced, "the new holder keeps serving");
        new.release("a").await.unwrap();
    }

    /// A service's state directory (in a temporary directory) whose `sm/` monitors one peer,
    /// 127.0.0.10.
    fn monitoring_one_peer() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("svc");
        std::fs::create_dir_all(&dir).unwrap();
        let record = nsm_store::Record {
            mon_name: b"127.0.0.10".to_vec(),
            my_name: b"a.example.test".to_vec(),
            my_prog: 100_021,
            my_vers: 3,
            my_proc: 16,
            priv_: [7; 16],
        };
        StateDir::open(&dir)
            .unwrap()
            .write(nsm_store::Dir::Sm, "127.0.0.10", &[record])
            .unwrap();
        (d, dir)
    }

    /// Settings for tests under `base`, with `registered` as the registration gate.
    fn config(base: &Path, registered: crate::registered::Registered) -> ServicesConfig {
        ServicesConfig {
            owner: "test".into(),
            proc_root: base.join("proc"),
            ha_callout: None,
            callback: CallbackPolicy::default(),
            rpcbind_port: 111,
            privileged: None,
            registered,
            run_dir: None,
        }
    }

    /// A takeover before nsmd is registered with rpcbind claims, bumps and answers, but its
    /// peers are not notified until the gate opens.
    #[tokio::test]
    async fn takeover_notifies_only_once_nsmd_is_registered() {
        let (d, dir) = monitoring_one_peer();
        let (opener, registered) = crate::registered::Registered::channel();
        let cfg = config(d.path(), registered);
        let s = Services::new(cfg, vec![spec("a", "127.0.0.9", &dir)]);
        s.takeover("a").await.unwrap();
        assert!(matches!(
            s.route("127.0.0.9".parse().unwrap()),
            Route::Service(_)
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let p = s.status()[0].notify.clone();
        assert_eq!(
            (p.peers, p.finished),
            (0, false),
            "no notification has started before the gate opened"
        );
        assert!(dir.join("sm.bak/127.0.0.10").exists());
        opener.open();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.status()[0].notify.finished {
            assert!(
                Instant::now() < deadline,
                "the notification did not finish within 20 s of the gate opening"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            s.status()[0].notify.peers,
            1,
            "the peer was notified once the gate opened"
        );
        s.release("a").await.unwrap();
    }

    /// The one fence watch of an active instance: once the epoch moved on (another node took
    /// the instance over), the addresses go silent, the notification under way stops with
    /// "fenced", the peer not acknowledged stays in sm.bak/, `nsmctl notify` is refused,
    /// and the release still works.
    #[tokio::test]
    async fn the_fence_watch_stops_the_notification_and_silences_the_instance() {
        let (d, dir) = monitoring_one_peer();
        let cfg = config(d.path(), crate::registered::Registered::open());
        let mut sp = spec("a", "127.0.0.9", &dir);
        // Retried forever: only the fence ends this notification (nothing answers at
        // 127.0.0.10).
        sp.retry = None;
        let s = Services::new(cfg, vec![sp]);
        s.takeover("a").await.unwrap();
        // Once the notification is under way (past its gate and its first check: this
        // runtime has one thread), only the watch's verdict can stop it.
        while s.status()[0].notify.peers == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let owner = std::fs::read_to_string(dir.join(crate::ownership::OWNER_FILE)).unwrap();
        assert!(owner.starts_with("epoch 1 "), "{owner}");
        std::fs::write(
            dir.join(crate::ownership::OWNER_FILE),
            "epoch 2 owner elsewhere pid 1\n",
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.status()[0].notify.finished {
            assert!(
                Instant::now() < deadline,
                "the notification did not stop within 20 s of the epoch moving on"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st = &s.status()[0];
        let error = st.notify.error.clone().unwrap_or_default();
        assert!(error.contains("fenced"), "{error}");
        assert!(st.fenced && st.active, "{st:?}");
        assert!(matches!(
            s.route("127.0.0.9".parse().unwrap()),
            Route::Silent
        ));
        assert!(dir.join("sm.bak/127.0.0.10").exists(), "kept in sm.bak/");
        assert!(matches!(s.notify("a").await, Err(Error::Fenced { .. })));
        s.release("a").await.unwrap();
    }

    /// A readiness gate that never opens fails the takeover and undoes it: silent again,
    /// ownership free, nothing notified (the peer stays in sm.bak/), the bumped state kept.
    #[tokio::test]
    async fn a_takeover_whose_gate_does_not_open_fails_and_is_undone() {
        let (d, dir) = monitoring_one_peer();
        let run = d.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let cfg = ServicesConfig {
            // Nothing answers there: the lock manager is never registered.
            rpcbind_port: 9,
            run_dir: Some(run.clone()),
            ..config(d.path(), crate::registered::Registered::open())
        };
        let mut sp = spec("a", "127.0.0.9", &dir);
        sp.ready_programs = vec![100_021];
        sp.ready_timeout = Duration::from_millis(300);
        let s = Arc::new(Services::new(cfg, vec![sp]));
        let t = tokio::spawn({
            let s = s.clone();
            async move { s.takeover("a").await }
        });
        // While it waits, the status says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.status()[0].step != Some("waiting for readiness") {
            assert!(Instant::now() < deadline, "no step shown: {:?}", s.status());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!s.status()[0].active);
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), "readiness", "{e}");
        let e = e.to_string();
        assert_eq!(s.status()[0].step, None);
        assert!(e.contains("readiness gate did not open"), "{e}");
        assert!(matches!(
            s.route("127.0.0.9".parse().unwrap()),
            Route::Silent
        ));
        let st = &s.status()[0];
        assert!(!st.active && st.notify.peers == 0, "{st:?}");
        assert!(
            st.notify
                .error
                .as_deref()
                .is_some_and(|m| m.contains("not taken over"))
        );
        assert!(
            dir.join("sm.bak/127.0.0.10").exists(),
            "the peer waits in sm.bak/"
        );
        assert!(!run.join("a.active").exists(), "not held");
        let state = StateDir::open(&dir).unwrap().state(false).unwrap();
        assert_eq!(state, 3, "the bump stays");
        drop(Ownership::claim(&dir, "other").expect("ownership is free again"));
    }

    /// A release the kernel refuses is not a release: the instance stays held here, silent
    /// and shown fenced, with its ownership, until a release succeeds.
    #[tokio::test]
    async fn a_release_the_kernel_refuses_keeps_the_instance_held() {
        let (d, dir) = monitoring_one_peer();
        let proc_root = d.path().join("proc");
        let nfsd = proc_root.join("fs/nfsd");
        std::fs::create_dir_all(nfsd.join("unlock_ip")).unwrap(); // cannot be written
        std::fs::write(nfsd.join("unlock_filesystem"), "").unwrap();
        let s = Services::new(
            config(d.path(), crate::registered::Registered::open()),
            vec![spec("a", "127.0.0.9", &dir)],
        );
        s.takeover("a").await.unwrap();
        let e = s.release("a").await.unwrap_err();
        assert_eq!(e.kind(), "kernel-release", "{e}");
        let e = e.to_string();
        assert!(e.contains("not released") && e.contains("unlock_ip"), "{e}");
        let st = &s.status()[0];
        assert!(st.active && st.fenced, "held, shown fenced: {st:?}");
        assert!(matches!(
            s.route("127.0.0.9".parse().unwrap()),
            Route::Silent
        ));
        assert!(
            matches!(
                Ownership::claim(&dir, "other"),
                Err(crate::ownership::OwnershipError::Busy { .. })
            ),
            "the ownership is kept"
        );
        std::fs::remove_dir(nfsd.join("unlock_ip")).unwrap();
        std::fs::write(nfsd.join("unlock_ip"), "").unwrap();
        s.release("a").await.unwrap();
        assert!(!s.status()[0].active);
        drop(Ownership::claim(&dir, "other").expect("free once released"));
    }
}

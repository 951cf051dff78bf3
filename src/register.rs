//! Registration with the local rpcbind, and what to tell the operator when it fails; and
//! the start-up checks that keep a second statd from taking over: the probe for a statd
//! already registered (as rpc.statd's `nfs_probe_statd`) and the lock on the state directory.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nsm_rpc::client::{CallOptions, Proc, call_tcp, call_udp};
use nsm_rpc::rpcbind::{Rpcbind, getport};
use nsm_xdr::rpcbind::{IPPROTO_TCP, IPPROTO_UDP, netid};
use tracing::{debug, info, warn};

/// The longest wait between two attempts to register with rpcbind.
pub const REGISTER_RETRY_MAX: Duration = Duration::from_secs(10);

/// How often [`Registration::keep`] checks that rpcbind still has the registration.
pub const REGISTRATION_CHECK: Duration = Duration::from_secs(2);

/// The program's registrations: one per listener.
#[derive(Debug)]
pub struct Registration {
    rpcbind: Rpcbind,
    prog: u32,
    vers: u32,
    endpoints: Vec<(bool, SocketAddr)>,
}

impl Registration {
    /// Registrations of `prog`/`vers` for each `(is_tcp, address)`.
    pub fn new(prog: u32, vers: u32, endpoints: Vec<(bool, SocketAddr)>) -> Self {
        Self {
            rpcbind: Rpcbind::default(),
            prog,
            vers,
            endpoints,
        }
    }

    /// Uses this rpcbind (e.g. another AF_LOCAL socket path).
    pub fn with_rpcbind(mut self, rpcbind: Rpcbind) -> Self {
        self.rpcbind = rpcbind;
        self
    }

    /// Clears stale registrations, then registers every listener. `Err` says what failed
    /// and what to do; the caller logs it (and retries: serving goes on either way).
    pub async fn register(&self) -> Result<(), String> {
        let via = self.rpcbind.describe();
        if let Err(e) = self.rpcbind.unset(self.prog, self.vers).await {
            return Err(format!(
                "rpcbind at {via} is not reachable ({e}): program {} version {} is NOT \
                 registered. nsmd keeps serving, but lockd and remote peers find statd through \
                 rpcbind: start rpcbind (e.g. `systemctl start rpcbind`)",
                self.prog, self.vers
            ));
        }
        let mut failed = Vec::new();
        for &(tcp, addr) in &self.endpoints {
            let id = netid(tcp, addr.is_ipv6());
            match self.rpcbind.set(self.prog, self.vers, id, addr).await {
                Ok(true) => {}
                Ok(false) => failed.push(format!(
                    "rpcbind at {via} refused to register program {} version {} on {id} port \
                     {}: another owner holds it (another statd?); stop it",
                    self.prog,
                    self.vers,
                    addr.port()
                )),
                Err(e) => failed.push(format!(
                    "registering {id} port {} with rpcbind at {via} failed: {e}",
                    addr.port()
                )),
            }
        }
        if !failed.is_empty() {
            return Err(failed.join("; "));
        }
        info!(via = %via, "registered program {} version {} with rpcbind", self.prog, self.vers);
        Ok(())
    }

    /// Registers, retrying (1 s, doubling up to [`REGISTER_RETRY_MAX`]) until it succeeds.
    /// The first failure is logged as a warning and `on_first_failure` runs; later ones are
    /// debug lines.
    pub async fn register_retrying(&self, mut on_first_failure: impl FnMut()) {
        let mut first = true;
        let mut wait = Duration::from_secs(1);
        while let Err(e) = self.register().await {
            if first {
                first = false;
                on_first_failure();
                warn!(
                    "{e}. No peer is notified until nsmd is registered: retrying every {}s at \
                     most",
                    REGISTER_RETRY_MAX.as_secs()
                );
            } else {
                debug!("registration with rpcbind failed again: {e}");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(REGISTER_RETRY_MAX);
        }
    }

    /// Keeps the registration for as long as it runs: every [`REGISTRATION_CHECK`] it asks
    /// rpcbind for the program as the kernel's lockd does (portmapper v2 GETPORT, TCP, at
    /// 127.0.0.1), and registers again when the answer is not this daemon's port (rpcbind
    /// restarted without its warm-start file, or someone unset it).
    pub async fn keep(&self) {
        let Some(port) = self
            .endpoints
            .iter()
            .find(|(tcp, a)| *tcp && a.is_ipv4())
            .map(|(_, a)| a.port())
        else {
            return;
        };
        let opts = CallOptions {
            timeout: Duration::from_secs(1),
            ..CallOptions::default()
        };
        loop {
            tokio::time::sleep(REGISTRATION_CHECK).await;
            let found = getport(self.rpcbind.addr, self.prog, self.vers, IPPROTO_TCP, &opts).await;
            if matches!(found, Ok(Some(p)) if p == port) {
                continue;
            }
            let what = match found {
                Ok(Some(p)) => format!("it gives port {p}, not {port}"),
                Ok(None) => "the program is no longer registered".to_owned(),
                Err(e) => format!("rpcbind does not answer ({e})"),
            };
            warn!("registration with rpcbind lost ({what}; rpcbind restarted?): registering again");
            self.register_retrying(|| {}).await;
        }
    }

    /// Removes the registrations (on shutdown).
    pub async fn unregister(&self) {
        match self.rpcbind.unset(self.prog, self.vers).await {
            Ok(_) => info!("unregistered from rpcbind"),
            Err(e) => warn!("could not unregister from rpcbind: {e}"),
        }
    }
}

/// What the start-up probe found registered for the program with the local rpcbind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// Nothing registered (or rpcbind not reachable: registration will say so).
    None,
    /// Registered and answering NULL: another statd is running.
    Running {
        /// Its port.
        port: u16,
        /// `name, pid N` of the process holding that port, when it can be found.
        owner: Option<String>,
    },
    /// Registered but not answering (a killed daemon's leftover): registration replaces it.
    Stale {
        /// The registered port.
        port: u16,
    },
}

/// As rpc.statd at start (`nfs_probe_statd`): asks the rpcbind at `rpcbind` (127.0.0.1:111)
/// for `prog`/`vers` over UDP (then TCP), and pings the port it gives with NULL, `timeout`
/// for each step.
pub async fn probe_existing(
    rpcbind: SocketAddr,
    prog: u32,
    vers: u32,
    timeout: Duration,
) -> Existing {
    let opts = CallOptions {
        timeout,
        ..CallOptions::default()
    };
    let null = Proc {
        prog,
        vers,
        proc_: 0,
    };
    for (tcp, prot) in [(false, IPPROTO_UDP), (true, IPPROTO_TCP)] {
        let port = match getport(rpcbind, prog, vers, prot, &opts).await {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                debug!("probe for a running statd: rpcbind at {rpcbind} did not answer: {e}");
                return Existing::None;
            }
        };
        let at = SocketAddr::new(rpcbind.ip(), port);
        let answered = if tcp {
            call_tcp(at, null, &(), &opts).await
        } else {
            call_udp(at, null, &(), &opts).await
        };
        return match answered {
            Ok(_) => Existing::Running {
                port,
                owner: port_owner(port, tcp),
            },
            Err(e) => {
                debug!("probe for a running statd: port {port}: {e}");
                Existing::Stale { port }
            }
        };
    }
    Existing::None
}

/// `name, pid N` of the local process with a socket on `port` (from /proc, as root).
fn port_owner(port: u16, tcp: bool) -> Option<String> {
    let proto = if tcp { "tcp" } else { "udp" };
    let mut inodes = Vec::new();
    for file in [format!("/proc/net/{proto}"), format!("/proc/net/{proto}6")] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        inodes.extend(
            nsm_statd::service::proc_net_sockets(&text)
                .filter(|s| s.local.port() == port && s.inode != 0)
                .map(|s| format!("socket:[{}]", s.inode)),
        );
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_ in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = proc_.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                let comm = std::fs::read_to_string(proc_.path().join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_else(|_| "?".to_owned());
                return Some(format!("{comm}, pid {pid}"));
            }
        }
    }
    None
}

/// The lock that keeps a second nsmd off a state directory: an exclusive `flock` on the
/// directory itself, held for the process's lifetime. The descriptor is close-on-exec, so
/// nsm-notify and the state helper neither hold nor wait for it.
#[derive(Debug)]
pub struct StateDirLock {
    _lock: nix::fcntl::Flock<File>,
}

impl StateDirLock {
    /// Locks `dir` (which must exist), or says who holds it.
    pub fn take(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY)
            .open(dir)
            .map_err(|e| {
                anyhow::anyhow!("cannot open the state directory {}: {e}", dir.display())
            })?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Self { _lock: l }),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = lock_holder(&file)
                    .map(|p| format!("pid {p}"))
                    .unwrap_or_else(|| "pid unknown".to_owned());
                Err(anyhow::anyhow!(
                    "state directory {} is in use by another nsmd ({holder}); stop it first, \
                     or pass another directory with -P",
                    dir.display()
                ))
            }
            Err((_, e)) => Err(anyhow::anyhow!(
                "cannot lock the state directory {}: {e}",
                dir.display()
            )),
        }
    }
}

/// The pid that holds a `flock` on `file`, from /proc/locks, if that process still exists
/// (the pid is the locker's: after nsmd goes into the background it is the exited parent's).
fn lock_holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().ok()?;
    let dev = m.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        m.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let i = f.iter().position(|w| *w == "FLOCK")?;
        let (pid, id) = (f.get(i + 3)?, f.get(i + 4)?);
        let pid: u32 = pid.parse().ok()?;
        (*id == want && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
    })
}

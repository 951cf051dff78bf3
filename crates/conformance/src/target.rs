//! The implementation under test: how to reach it from loopback and from another host, its
//! lockd stand-in, and (when the suite spawned it) how to stop, restart and inspect it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nsm_testhost::{Host, Lab, Proc};

use crate::wire::{self, LockdStandIn, SM_PROG};

/// The port the spawned target listens on (`{port}`).
const SPAWN_PORT: u16 = 32_765;
/// The state directory of the spawned target (`{state_dir}`), inside its host.
const SPAWN_STATE_DIR: &str = "/var/lib/nfs/conformance";
/// The state number the spawned target's directory starts with.
pub(crate) const SEEDED_STATE: i32 = 7;
const SRV_ADDR: &str = "198.51.100.1";
const CLI_ADDR: &str = "198.51.100.2";

/// One vantage point: where the target is seen from, and in which network namespace.
struct Side {
    addr: IpAddr,
    host: Option<usize>,
}

/// What only a spawned target has.
struct Spawned {
    _lab: Lab,
    hosts: Vec<Host>,
    _rpcbind: Proc,
    statd: Mutex<Option<Proc>>,
    command: String,
    starts: AtomicU32,
    next_peer: AtomicU32,
}

/// The implementation under test.
pub(crate) struct Target {
    /// Its NSM port.
    pub(crate) port: u16,
    local: Option<Side>,
    remote: Option<Side>,
    spawned: Option<Spawned>,
    lockd: Option<LockdStandIn>,
    rpcbind_remote: Option<SocketAddr>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("port", &self.port).finish()
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Target {
    /// A running statd at `host` (port from its rpcbind when not given): remote-visible
    /// behaviour from here, and loopback behaviour with `local`.
    pub(crate) fn remote(host: IpAddr, port: Option<u16>, local: bool) -> Result<Self, String> {
        let rpcbind = SocketAddr::new(host, 111);
        let port = match port {
            Some(p) => p,
            None => wire::pmap_getport(rpcbind, SM_PROG, 1, 17)
                .map_err(|e| format!("asking {rpcbind} for the statd port: {e}"))?,
        };
        if port == 0 {
            return Err(format!("no statd (100024 v1 udp) registered at {rpcbind}"));
        }
        Ok(Self {
            port,
            local: (local || wire::is_loopback(host)).then_some(Side {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                host: None,
            }),
            remote: (!wire::is_loopback(host)).then_some(Side {
                addr: host,
                host: None,
            }),
            spawned: None,
            lockd: None,
            rpcbind_remote: Some(rpcbind),
        })
    }

    /// Starts `command` (with `{port}` and `{state_dir}` substituted) in a fresh test host
    /// with its own rpcbind and a lockd stand-in, plus a second host for remote callers.
    pub(crate) fn spawn(command: &str) -> Result<Self, String> {
        let lab = Lab::new("conformance").map_err(err)?;
        let srv = lab.host("srv", &[&format!("{SRV_ADDR}/24")]).map_err(err)?;
        let cli = lab.host("cli", &[&format!("{CLI_ADDR}/24")]).map_err(err)?;
        let rpcbind = srv.start_rpcbind().map_err(err)?;
        let sock = srv
            .in_netns(|| {
                let s = UdpSocket::bind("127.0.0.1:0").map_err(err)?;
                let port = s.local_addr().map_err(err)?.port();
                LockdStandIn::register(port)?;
                Ok::<_, String>(s)
            })
            .map_err(err)??;
        let lockd = LockdStandIn::start(sock);
        let dir = srv.outside_path(SPAWN_STATE_DIR).map_err(err)?;
        for sub in ["sm", "sm.bak"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(err)?;
        }
        std::fs::write(dir.join("state"), SEEDED_STATE.to_ne_bytes()).map_err(err)?;
        let command = command
            .replace("{port}", &SPAWN_PORT.to_string())
            .replace("{state_dir}", SPAWN_STATE_DIR);
        let t = Self {
            port: SPAWN_PORT,
            local: Some(Side {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                host: Some(0),
            }),
            remote: Some(Side {
                addr: SRV_ADDR.parse().map_err(err)?,
                host: Some(1),
            }),
            spawned: Some(Spawned {
                _lab: lab,
                hosts: vec![srv, cli],
                _rpcbind: rpcbind,
                statd: Mutex::new(None),
                command,
                starts: AtomicU32::new(0),
                next_peer: AtomicU32::new(0),
            }),
            lockd: Some(lockd),
            rpcbind_remote: Some(SocketAddr::new(SRV_ADDR.parse().map_err(err)?, 111)),
        };
        t.start()?;
        Ok(t)
    }

    /// Whether the suite spawned the target (restart, state directory, lockd stand-in).
    pub(crate) fn is_spawned(&self) -> bool {
        self.spawned.is_some()
    }

    /// Whether loopback calls are possible.
    pub(crate) fn has_local(&self) -> bool {
        self.local.is_some()
    }

    /// Whether calls from another host are possible.
    pub(crate) fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    fn run_on<T: Send>(
        &self,
        side: &Side,
        f: impl FnOnce(IpAddr) -> Result<T, String> + Send,
    ) -> Result<T, String> {
        match (side.host, &self.spawned) {
            (Some(i), Some(s)) => s.hosts[i].in_netns(|| f(side.addr)).map_err(err)?,
            _ => f(side.addr),
        }
    }

    /// Runs `f` on the target's host, with the target's loopback address.
    pub(crate) fn local<T: Send>(
        &self,
        f: impl FnOnce(SocketAddr) -> Result<T, String> + Send,
    ) -> Result<T, String> {
        let side = self
            .local
            .as_ref()
            .ok_or("no loopback access (use --spawn or --local)")?;
        let port = self.port;
        self.run_on(side, |a| f(SocketAddr::new(a, port)))
    }

    /// Like [`local`](Self::local) with the target's IPv6 loopback address.
    pub(crate) fn local6<T: Send>(
        &self,
        f: impl FnOnce(SocketAddr) -> Result<T, String> + Send,
    ) -> Result<T, String> {
        let side = self
            .local
            .as_ref()
            .ok_or("no loopback access (use --spawn or --local)")?;
        let port = self.port;
        self.run_on(side, |_| {
            f(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port))
        })
    }

    /// Runs `f` on another host, with the target's address as seen from there.
    pub(crate) fn remote_side<T: Send>(
        &self,
        f: impl FnOnce(SocketAddr) -> Result<T, String> + Send,
    ) -> Result<T, String> {
        let side = self
            .remote
            .as_ref()
            .ok_or("no remote access (use --spawn or --target)")?;
        let port = self.port;
        self.run_on(side, |a| f(SocketAddr::new(a, port)))
    }

    /// Runs `f` where the target's rpcbind is reachable; passes rpcbind's address.
    pub(crate) fn rpcbind<T: Send>(
        &self,
        f: impl FnOnce(SocketAddr) -> Result<T, String> + Send,
    ) -> Result<T, String> {
        if let Some(side) = &self.local {
            return self.run_on(side, |a| f(SocketAddr::new(a, 111)));
        }
        let side = self.remote.as_ref().ok_or("no access to rpcbind")?;
        let rb = self.rpcbind_remote.ok_or("no rpcbind address")?;
        self.run_on(side, |_| f(rb))
    }

    /// The lockd stand-in (spawned targets only).
    pub(crate) fn lockd(&self) -> Result<&LockdStandIn, String> {
        self.lockd
            .as_ref()
            .ok_or_else(|| "no lockd stand-in (use --spawn)".to_owned())
    }

    /// A host name for a case, unique per call; with `--spawn` it is added to the hosts file
    /// with an address of its own (implementations that resolve names need that). Against a
    /// running statd it is `localhost`, which every host resolves.
    pub(crate) fn peer(&self, tag: &str) -> Result<String, String> {
        let Some(s) = &self.spawned else {
            let _ = tag;
            return Ok("localhost".to_owned());
        };
        let n = s.next_peer.fetch_add(1, Ordering::Relaxed);
        let name = format!("{tag}-{n}.conformance.test");
        let addr = format!("198.51.{}.{}", 101 + n / 250, 1 + n % 250);
        s._lab.add_name(&addr, &[&name]).map_err(err)?;
        Ok(name)
    }

    /// The target's state directory, as seen from the suite (spawned targets only).
    pub(crate) fn state_dir(&self) -> Result<PathBuf, String> {
        let s = self
            .spawned
            .as_ref()
            .ok_or("no state directory (use --spawn)")?;
        s.hosts[0].outside_path(SPAWN_STATE_DIR).map_err(err)
    }

    /// Whether the spawned target is still running (always true when not spawned).
    pub(crate) fn alive(&self) -> bool {
        let Some(s) = &self.spawned else { return true };
        s.statd
            .lock()
            .map(|p| p.as_ref().is_some_and(Proc::is_running))
            .unwrap_or(false)
    }

    /// The last lines of the spawned target's log.
    pub(crate) fn log_tail(&self) -> String {
        let Some(s) = &self.spawned else {
            return String::new();
        };
        s.statd
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.log_tail(15)))
            .unwrap_or_default()
    }

    /// Starts the spawned target and waits until it answers NULL on 127.0.0.1 and is
    /// registered with rpcbind.
    pub(crate) fn start(&self) -> Result<(), String> {
        let s = self.spawned.as_ref().ok_or("not spawned")?;
        let n = s.starts.fetch_add(1, Ordering::Relaxed);
        let exec = format!("exec {}", s.command);
        let p = s.hosts[0]
            .spawn(&format!("target-{n}"), &["/bin/sh", "-c", exec.as_str()])
            .map_err(err)?;
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = s.hosts[0]
                .in_netns(|| {
                    let x = wire::xid();
                    let null = wire::call(x, SM_PROG, 1, 0, &[]);
                    let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
                    if wire::success(
                        x,
                        wire::udp_wait(to, &null, Duration::from_millis(300))
                            .ok()
                            .flatten(),
                    )
                    .is_err()
                    {
                        return false;
                    }
                    let rb = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 111);
                    wire::pmap_getport(rb, SM_PROG, 1, 17).ok() == Some(port)
                })
                .map_err(err)?;
            if up {
                break;
            }
            if !p.is_running() {
                let tail = p.log_tail(20);
                return Err(format!(
                    "the target exited at start: {}\n{tail}",
                    last_line(&tail)
                ));
            }
            if Instant::now() >= deadline {
                let tail = p.log_tail(20);
                return Err(format!(
                    "the target does not answer NULL on 127.0.0.1:{port} and register with \
                     rpcbind after 20 s (its last words: {})\n{tail}",
                    last_line(&tail)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *s.statd.lock().map_err(err)? = Some(p);
        Ok(())
    }

    /// Stops the spawned target (SIGTERM, SIGKILL after 5 s).
    pub(crate) fn stop(&self) -> Result<(), String> {
        let s = self.spawned.as_ref().ok_or("not spawned")?;
        let p = s.statd.lock().map_err(err)?.take();
        if let Some(p) = p {
            if p.is_running() {
                p.stop(Duration::from_secs(5)).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Stops and starts the spawned target.
    pub(crate) fn restart(&self) -> Result<(), String> {
        self.stop()?;
        self.start()
    }
}

/// The last non-empty line of a log, for the one-line summary of a failure.
fn last_line(log: &str) -> &str {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no output")
}

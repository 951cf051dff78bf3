//! A test host: network, mount and UTS namespaces that persist until the host is dropped.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;
use crate::exec::{self, argv_tool, check_output, ip, plumb, run_argv};
use crate::lab::{BASE_DIR, LabShared, unmount_and_remove};
use crate::process::Proc;

/// The host's interface on the lab bridge.
const LAB_IFACE: &str = "eth0";

/// How long host teardown waits for killed processes to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-namespace sysctls set before the lab interface exists (so `default` applies to it):
/// no duplicate address detection, no router solicitations cluttering captures.
const SYSCTLS: &str = r#"
for f in /proc/sys/net/ipv6/conf/all/accept_dad /proc/sys/net/ipv6/conf/default/accept_dad \
         /proc/sys/net/ipv6/conf/default/router_solicitations; do
    [ -w "$f" ] && echo 0 > "$f"
done
exit 0
"#;

/// Runs inside the new mount and UTS namespaces. $1 hosts, $2 nsswitch.conf, $3 the host's
/// /var/lib/nfs, $4 the host's /run, $5 hostname, $6 BASE_DIR.
const MOUNT_SETUP: &str = r#"set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
# Drop this namespace's copies of other namespaces' files (/run/netns/*, the UTS files under
# BASE_DIR): they would keep those namespaces alive after their owners deleted them. BASE_DIR is a
# bind of itself, so the paths below still resolve to the same files afterwards.
for m in /run/netns "$6"; do
    while mountpoint -q "$m"; do umount -l "$m"; done
done
mount --bind "$1" /etc/hosts
mount --bind "$2" /etc/nsswitch.conf
if [ -d /var/lib/nfs ]; then mount --bind "$3" /var/lib/nfs; fi
mount --bind "$4" /run
echo "$5" > /proc/sys/kernel/hostname
"#;

/// Which kind of host to build.
#[derive(Debug)]
pub(crate) enum HostKind<'a> {
    /// Plugged into the lab bridge with these addresses.
    Bridged(&'a [&'a str]),
    /// Loopback only.
    Isolated,
}

/// Owner of a host's resources; torn down when the [`Host`] and all its [`Proc`]s are gone.
#[derive(Debug)]
pub(crate) struct HostShared {
    lab: Arc<LabShared>,
    pub(crate) name: String,
    netns: String,
    netns_path: PathBuf,
    mnt_path: PathBuf,
    uts_path: PathBuf,
    pub(crate) dir: PathBuf,
    iface: &'static str,
    addrs: Vec<IpAddr>,
    nsenter: PathBuf,
    log_names: Mutex<Vec<String>>,
    netns_created: bool,
    ns_files_created: bool,
}

impl HostShared {
    /// The argv prefix that enters the host's namespaces.
    fn enter_argv(&self) -> Vec<OsString> {
        let arg = |flag: &str, p: &Path| {
            let mut s = OsString::from(flag);
            s.push(p.as_os_str());
            s
        };
        vec![
            self.nsenter.clone().into_os_string(),
            arg("--net=", &self.netns_path),
            arg("--mount=", &self.mnt_path),
            arg("--uts=", &self.uts_path),
            "--".into(),
        ]
    }

    pub(crate) fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Vec<OsString> {
        let mut v = self.enter_argv();
        v.extend(argv.iter().map(|a| a.as_ref().to_os_string()));
        v
    }

    /// Reserves a unique log file name under `logs/`.
    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        let mut used = self
            .log_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let base: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut candidate = base.clone();
        let mut n = 1;
        while used.contains(&candidate) {
            n += 1;
            candidate = format!("{base}.{n}");
        }
        used.push(candidate.clone());
        self.dir.join("logs").join(format!("{candidate}.log"))
    }

    fn setup(&mut self, kind: &HostKind<'_>, port: &str) -> Result<(), Error> {
        for sub in ["run", "nfs/sm", "nfs/sm.bak", "logs"] {
            let p = self.dir.join(sub);
            fs::create_dir_all(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        // rpc.statd runs as the owner of its sm directory: copy the system's ownership.
        for sub in ["sm", "sm.bak"] {
            if let Ok(m) = fs::metadata(Path::new("/var/lib/nfs").join(sub)) {
                let p = self.dir.join("nfs").join(sub);
                std::os::unix::fs::chown(&p, Some(m.uid()), Some(m.gid()))
                    .map_err(|e| Error::io(format!("chown {}", p.display()), e))?;
            }
        }

        ip(&["netns", "add", &self.netns])?;
        self.netns_created = true;
        ip(&["-n", &self.netns, "link", "set", "lo", "up"])?;
        let mut net_arg = OsString::from("--net=");
        net_arg.push(&self.netns_path);
        plumb(&argv_tool(
            "nsenter",
            &[
                &net_arg,
                "--".as_ref(),
                exec::tool("sh")?.as_os_str(),
                "-c".as_ref(),
                SYSCTLS.as_ref(),
            ],
        )?)?;

        if let HostKind::Bridged(addrs) = kind {
            self.lab.plug(port, &self.netns, LAB_IFACE)?;
            for cidr in *addrs {
                self.addr_cmd("add", cidr)?;
                self.addrs.push(parse_cidr(cidr)?);
            }
            ip(&["-n", &self.netns, "link", "set", LAB_IFACE, "up"])?;
        }

        for p in [&self.mnt_path, &self.uts_path] {
            fs::write(p, b"").map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        self.ns_files_created = true;
        let mut mount_arg = OsString::from("--mount=");
        mount_arg.push(&self.mnt_path);
        let mut uts_arg = OsString::from("--uts=");
        uts_arg.push(&self.uts_path);
        let unshare = exec::tool("unshare")?;
        let sh = exec::tool("sh")?;
        let hosts = self.lab.hosts_file.clone();
        let nsswitch = self.lab.nsswitch_file.clone();
        let nfs = self.dir.join("nfs");
        let run = self.dir.join("run");
        plumb(&argv_tool(
            "nsenter",
            &[
                &net_arg,
                "--".as_ref(),
                unshare.as_os_str(),
                &mount_arg,
                &uts_arg,
                "--propagation".as_ref(),
                "private".as_ref(),
                sh.as_os_str(),
                "-c".as_ref(),
                MOUNT_SETUP.as_ref(),
                "sh".as_ref(),
                hosts.as_os_str(),
                nsswitch.as_os_str(),
                nfs.as_os_str(),
                run.as_os_str(),
                self.name.as_ref(),
                BASE_DIR.as_ref(),
            ],
        )?)?;

        if matches!(kind, HostKind::Bridged(_)) {
            for addr in &self.addrs {
                self.lab.add_name(&addr.to_string(), &[&self.name])?;
            }
        }
        Ok(())
    }

    fn addr_cmd(&self, verb: &str, cidr: &str) -> Result<(), Error> {
        let addr = parse_cidr(cidr)?;
        let mut args = vec!["-n", &self.netns, "addr", verb, cidr, "dev", self.iface];
        if verb == "add" && addr.is_ipv6() {
            args.push("nodad");
        }
        ip(&args).map(drop)
    }
}

impl Drop for HostShared {
    fn drop(&mut self) {
        let mut targets = Vec::new();
        if self.netns_created {
            targets.extend(exec::ns_id(&self.netns_path).map(|id| ("net", id)));
        }
        if self.ns_files_created {
            // Only if mounted (an nsfs file, not the empty placeholder on BASE_DIR's device).
            let base_dev = fs::metadata(&self.lab.dir).map(|m| m.dev()).ok();
            for (kind, p) in [("mnt", &self.mnt_path), ("uts", &self.uts_path)] {
                if let Some(id) = exec::ns_id(p).filter(|(dev, _)| Some(*dev) != base_dev) {
                    targets.push((kind, id));
                }
            }
        }
        if !targets.is_empty() {
            let survivors = exec::kill_namespace_members(&targets, KILL_TIMEOUT);
            if !survivors.is_empty() {
                note!(
                    "warning: host `{}`: processes survived SIGKILL: {survivors:?}",
                    self.name
                );
            }
        }
        if self.ns_files_created {
            unmount_and_remove(&self.mnt_path);
            unmount_and_remove(&self.uts_path);
        }
        if self.netns_created {
            if let Err(e) = ip(&["netns", "del", &self.netns]) {
                note!("warning: {e}");
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                note!("warning: removing {}: {e}", self.dir.display());
            }
        }
        self.lab.release(&self.name);
    }
}

fn parse_cidr(cidr: &str) -> Result<IpAddr, Error> {
    let (addr, prefix) = cidr.split_once('/').unwrap_or((cidr, ""));
    let ok_prefix = prefix.is_empty() || prefix.parse::<u8>().is_ok();
    match addr.parse::<IpAddr>() {
        Ok(a) if ok_prefix => Ok(a),
        _ => Err(Error::Invalid(format!(
            "bad address `{cidr}` (want ADDR/PREFIX)"
        ))),
    }
}

fn valid_host_name(name: &str) -> bool {
    (1..=24).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// One test host: its own network namespace, a persistent private mount namespace (own `/run`,
/// `/var/lib/nfs`, the lab's `/etc/hosts` and `/etc/nsswitch.conf`) and a UTS namespace whose
/// hostname is the host's name.
///
/// Inside, `/run` and `/var/lib/nfs` are bind mounts of directories outside
/// ([`run_dir`](Self::run_dir), [`nfs_dir`](Self::nfs_dir)), so tests can read and write
/// them directly (see [`outside_path`](Self::outside_path)).
///
/// Dropping the `Host` (and every [`Proc`] started in it, which keep it alive) kills every
/// process left in its namespaces, unmounts and deletes its namespace files, deletes its network
/// namespace and removes its directory.
pub struct Host {
    shared: Arc<HostShared>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.shared.name)
            .field("netns", &self.shared.netns)
            .field("addrs", &self.shared.addrs)
            .finish()
    }
}

impl Host {
    pub(crate) fn create(
        lab: Arc<LabShared>,
        name: &str,
        kind: HostKind<'_>,
    ) -> Result<Self, Error> {
        if !valid_host_name(name) {
            return Err(Error::Invalid(format!(
                "bad host name `{name}`: 1-24 characters of a-z, 0-9, '-'"
            )));
        }
        let nsenter = exec::tool("nsenter")?;
        let port = lab.claim(name)?;
        let netns = format!("{}-{name}", lab.id);
        let dir = lab.dir.join(name);
        let mut shared = HostShared {
            name: name.to_owned(),
            netns_path: Path::new("/run/netns").join(&netns),
            mnt_path: lab.dir.join(format!("{name}.mnt")),
            uts_path: lab.dir.join(format!("{name}.uts")),
            netns,
            dir,
            iface: if matches!(kind, HostKind::Bridged(_)) {
                LAB_IFACE
            } else {
                "lo"
            },
            addrs: Vec::new(),
            nsenter,
            log_names: Mutex::new(Vec::new()),
            lab,
            netns_created: false,
            ns_files_created: false,
        };
        // On error, dropping `shared` removes whatever was created so far.
        shared.setup(&kind, &port)?;
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// The host's name (also its hostname inside, and its name in the lab's hosts file).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The name of its network namespace (`ip -n NAME ...`, `ip netns exec NAME ...`).
    pub fn netns(&self) -> &str {
        &self.shared.netns
    }

    /// `/run/netns/<netns>`.
    pub fn netns_path(&self) -> &Path {
        &self.shared.netns_path
    }

    /// The bind-mounted mount namespace file (`nsenter --mount=...`).
    pub fn mntns_path(&self) -> &Path {
        &self.shared.mnt_path
    }

    /// The bind-mounted UTS namespace file (`nsenter --uts=...`).
    pub fn utsns_path(&self) -> &Path {
        &self.shared.uts_path
    }

    /// The interface on the lab bridge (`eth0`), or `lo` for an isolated host.
    pub fn iface(&self) -> &str {
        self.shared.iface
    }

    /// The addresses given at creation (not those added later with [`add_addr`](Self::add_addr)).
    pub fn addrs(&self) -> &[IpAddr] {
        &self.shared.addrs
    }

    /// The first IPv4 address given at creation.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.shared.addrs.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The first IPv6 address given at creation.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.shared.addrs.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }

    /// The host's directory outside (holds `run/`, `nfs/`, `logs/`).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Outside path of the host's `/run`.
    pub fn run_dir(&self) -> PathBuf {
        self.shared.dir.join("run")
    }

    /// Outside path of the host's `/var/lib/nfs` (starts with empty `sm/` and `sm.bak/`
    /// owned like the system's).
    pub fn nfs_dir(&self) -> PathBuf {
        self.shared.dir.join("nfs")
    }

    /// Outside path of the directory holding the logs of [`spawn`](Self::spawn)ed processes.
    pub fn log_dir(&self) -> PathBuf {
        self.shared.dir.join("logs")
    }

    /// Maps an absolute path inside the host under `/run` or `/var/lib/nfs` to the path of the
    /// same file outside; other paths are shared with the root namespace and are an error.
    pub fn outside_path(&self, inside: &str) -> Result<PathBuf, Error> {
        let p = Path::new(inside);
        if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(Error::Invalid(format!(
                "`{inside}`: want an absolute path without `..`"
            )));
        }
        for (prefix, sub) in [("/run", "run"), ("/var/lib/nfs", "nfs")] {
            if let Ok(rest) = p.strip_prefix(prefix) {
                return Ok(self.shared.dir.join(sub).join(rest));
            }
        }
        Err(Error::Invalid(format!(
            "`{inside}` is not private to the host (only /run and /var/lib/nfs are)"
        )))
    }

    /// Writes a file visible inside this host only, at `inside` (under `/run` or
    /// `/var/lib/nfs`), creating parent directories; returns its outside path.
    pub fn write_file(&self, inside: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf, Error> {
        let out = self.outside_path(inside)?;
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        fs::write(&out, contents)
            .map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
        Ok(out)
    }

    /// Reads a file of the host (under `/run` or `/var/lib/nfs`) from outside.
    pub fn read_file(&self, inside: &str) -> Result<Vec<u8>, Error> {
        let out = self.outside_path(inside)?;
        fs::read(&out).map_err(|e| Error::io(format!("reading {}", out.display()), e))
    }

    /// The full command line that runs `argv` inside the host (`nsenter --net=.. --mount=..
    /// --uts=.. -- argv...`), for callers that need their own `Command` setup.
    pub fn command_line<S: AsRef<OsStr>>(&self, argv: &[S]) -> Vec<OsString> {
        self.shared.command(argv)
    }

    /// A `Command` that runs `argv` inside the host (stdio inherited unless changed).
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let full = self.shared.command(argv);
        let mut cmd = Command::new(&full[0]);
        cmd.args(&full[1..]);
        cmd
    }

    /// Runs `argv` inside the host (network, mount and UTS namespaces) to completion, with
    /// empty stdin, and returns its output whatever its exit status. It is killed (and
    /// `Error::Timeout` returned) after `timeout`. The command starts in `/`: use absolute paths.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Result<Output, Error> {
        if argv.is_empty() {
            return Err(Error::Invalid("empty command line".into()));
        }
        run_argv(&self.shared.command(argv), timeout)
    }

    /// Like [`run`](Self::run), but a non-zero exit is an `Error::Command`; returns stdout.
    pub fn run_ok<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Result<String, Error> {
        let out = self.run(argv, timeout)?;
        let out = check_output(argv, out).map_err(|e| self.annotate(e))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `/bin/sh -c script` inside the host, like [`run_ok`](Self::run_ok).
    pub fn sh(&self, script: &str, timeout: Duration) -> Result<String, Error> {
        let sh = exec::tool("sh")?;
        self.run_ok(&[sh.as_os_str(), "-c".as_ref(), script.as_ref()], timeout)
    }

    fn annotate(&self, e: Error) -> Error {
        match e {
            Error::Command {
                command,
                status,
                stdout,
                stderr,
            } => Error::Command {
                command: format!("[{}] {command}", self.shared.name),
                status,
                stdout,
                stderr,
            },
            other => other,
        }
    }

    /// Starts a long-running process inside the host. Its stdout and stderr both go to
    /// `logs/<name>.log` in the host's directory (see [`Proc::log`]). It is stopped (SIGTERM,
    /// then SIGKILL after a grace period) when the `Proc` is dropped; when that happens during a
    /// panic, the last lines of its log are printed to stderr.
    pub fn spawn<S: AsRef<OsStr>>(&self, name: &str, argv: &[S]) -> Result<Proc, Error> {
        self.spawn_env(name, argv, &[])
    }

    /// Like [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_env<S: AsRef<OsStr>>(
        &self,
        name: &str,
        argv: &[S],
        env: &[(&str, &str)],
    ) -> Result<Proc, Error> {
        if argv.is_empty() {
            return Err(Error::Invalid("empty command line".into()));
        }
        let log_path = self.shared.log_path(name);
        let log = fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", log_path.display()), e))?;
        let mut cmd = self.command(argv);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("spawning `{}`", exec::display_argv(argv)), e))?;
        Ok(Proc::new(
            name.to_owned(),
            exec::display_argv(argv),
            Arc::clone(&self.shared),
            child,
            log_path,
        ))
    }

    /// Starts `rpcbind -f -w` inside the host and waits until `rpcinfo -p 127.0.0.1` answers.
    pub fn start_rpcbind(&self) -> Result<Proc, Error> {
        let rpcbind = exec::tool("rpcbind")?;
        let proc = self.spawn(
            "rpcbind",
            &[rpcbind.as_os_str(), "-f".as_ref(), "-w".as_ref()],
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.rpc_programs().is_ok() {
                return Ok(proc);
            }
            proc.check_running()?;
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("rpcbind on host `{}`", self.name()),
                    after: Duration::from_secs(10),
                    detail: proc.log_tail(20),
                });
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The host's rpcbind registrations (`rpcinfo -p 127.0.0.1`): (program, version,
    /// protocol, port) per line.
    pub fn rpc_programs(&self) -> Result<Vec<RpcRegistration>, Error> {
        let rpcinfo = exec::tool("rpcinfo")?;
        let out = self.run_ok(
            &[rpcinfo.as_os_str(), "-p".as_ref(), "127.0.0.1".as_ref()],
            Duration::from_secs(5),
        )?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(RpcRegistration {
                    program: f.next()?.parse().ok()?,
                    version: f.next()?.parse().ok()?,
                    protocol: f.next()?.to_owned(),
                    port: f.next()?.parse().ok()?,
                })
            })
            .collect())
    }

    /// Waits until `program` is registered with the host's rpcbind; returns its registrations.
    pub fn wait_registered(
        &self,
        program: u32,
        timeout: Duration,
    ) -> Result<Vec<RpcRegistration>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let regs: Vec<_> = self
                .rpc_programs()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.program == program)
                .collect();
            if !regs.is_empty() {
                return Ok(regs);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("program {program} to register on host `{}`", self.name()),
                    after: timeout,
                    detail: String::new(),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `f` on a new thread that joined this host's network namespace (only its network
    /// namespace: the file system is the caller's), and returns its result. Sockets `f` opens
    /// live in the host's network; a panic in `f` is propagated.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let ns = fs::File::open(self.netns_path()).map_err(|source| Error::Io {
            context: format!("open {}", self.netns_path().display()),
            source,
        })?;
        thread::scope(|s| {
            let t = s.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map(|()| f())
                    .map_err(|e| Error::Io {
                        context: "setns(CLONE_NEWNET)".to_owned(),
                        source: e.into(),
                    })
            });
            match t.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Gives the host its own empty directory at `inside` (an existing directory of the
    /// machine, e.g. `/var/lib/pacemaker`): `/run/.private/<inside, '/' as '_'>`, in the
    /// host's own `/run`, is bind-mounted there in the host's mount namespace only. Returns
    /// its outside path. A second call with the same `inside` fails.
    pub fn mount_private(&self, inside: &str) -> Result<PathBuf, Error> {
        if !inside.starts_with('/') || inside.split('/').any(|c| c == "..") {
            return Err(Error::Invalid(format!(
                "mount_private: `{inside}` is not an absolute path"
            )));
        }
        let name: String = inside
            .trim_matches('/')
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        let source = format!("/run/.private/{name}");
        let out = self.outside_path(&source)?;
        fs::create_dir_all(out.parent().unwrap_or(&out))
            .and_then(|()| fs::create_dir(&out))
            .map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
        let mount = exec::tool("mount")?;
        self.run_ok(
            &[
                mount.as_os_str(),
                "--bind".as_ref(),
                source.as_ref(),
                inside.as_ref(),
            ],
            Duration::from_secs(10),
        )?;
        Ok(out)
    }

    /// Adds a (secondary, e.g. service) address to the host's lab interface; IPv6 without DAD.
    pub fn add_addr(&self, cidr: &str) -> Result<(), Error> {
        self.shared.addr_cmd("add", cidr)
    }

    /// Removes an address from the host's lab interface.
    pub fn del_addr(&self, cidr: &str) -> Result<(), Error> {
        self.shared.addr_cmd("del", cidr)
    }

    /// Forgets the host's neighbour (ARP/ND) cache on its lab interface, as needed after a
    /// service address moved to another host.
    pub fn flush_neigh(&self) -> Result<(), Error> {
        ip(&[
            "-n",
            &self.shared.netns,
            "neigh",
            "flush",
            "dev",
            self.shared.iface,
        ])
        .map(drop)
    }

    /// The pids of every process currently in the host's network namespace.
    pub fn pids(&self) -> Vec<u32> {
        exec::ns_id(&self.shared.netns_path)
            .map(|id| exec::pids_in_namespaces(&[("net", id)]))
            .unwrap_or_default()
    }
}

/// One line of `rpcinfo -p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcRegistration {
    /// RPC program number.
    pub program: u32,
    /// Program version.
    pub version: u32,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Port.
    pub port: u16,
}

//! A lab: one isolated network (a bridge in its own "switch" namespace) and the files every host
//! of it shares (hosts file, nsswitch.conf).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::Error;
use crate::exec::{self, NsId, argv_tool, ip, plumb};
use crate::host::{Host, HostKind};

/// Where the harness keeps its files: lab directories, host directories, namespace files.
///
/// It is bind-mounted on itself and made private once (so that `unshare --mount=FILE` can
/// bind namespace files in it); after a clean run it is empty.
pub const BASE_DIR: &str = "/run/nsmd-testhost";

/// Prefix of every namespace and directory name the harness creates.
pub(crate) const PREFIX: &str = "nsth-";

/// The bridge inside a lab's switch namespace.
const BRIDGE: &str = "br0";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

const NSSWITCH: &str = "\
# nsm-testhost: local files only, so no lookup waits on an unreachable server
passwd:     files
group:      files
shadow:     files
gshadow:    files
hosts:      files
networks:   files
protocols:  files
services:   files
ethers:     files
rpc:        files
netgroup:   files
";

const HOSTS_HEADER: &str = "\
# nsm-testhost lab hosts file (shared by every host of the lab)
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
";

/// Prepares [`BASE_DIR`] once per process (under a lock shared with other processes) and removes
/// what dead test processes left behind.
pub(crate) fn ensure_base() -> Result<(), Error> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| setup_base().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Error::Invalid(format!("preparing {BASE_DIR}: {e}")))
}

fn setup_base() -> Result<(), Error> {
    fs::create_dir_all(BASE_DIR).map_err(|e| Error::io(format!("creating {BASE_DIR}"), e))?;
    // `ip netns add` creates and shares the /run/netns mount the first time; doing that first
    // under the lock keeps concurrent first uses from stacking mounts.
    let script = r#"set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
mountpoint -q "$1" || mount --bind "$1" "$1"
mount --make-private "$1"
if ! mountpoint -q /run/netns; then
    "$3" netns add "$2"
    "$3" netns del "$2"
fi
"#;
    let probe = format!("{PREFIX}{}-init", std::process::id());
    let ip_path = exec::tool("ip")?;
    let argv = argv_tool(
        "flock",
        &[
            BASE_DIR.as_ref(),
            exec::tool("sh")?.as_os_str(),
            "-c".as_ref(),
            script.as_ref(),
            "sh".as_ref(),
            BASE_DIR.as_ref(),
            probe.as_ref(),
            ip_path.as_os_str(),
        ],
    )?;
    plumb(&argv)?;
    reap_stale(true);
    Ok(())
}

/// The pid encoded in a harness name `nsth-<pid>-...`.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Removes the namespaces, mounts, processes and directories that harness users which died
/// without cleaning up (killed, aborted) left behind, recognised by the pid in their names.
///
/// The harness does this by itself once per process, before it creates its first lab; a
/// long-running program (a conformance suite) may call it again. Leftovers of live processes,
/// including this one, are never touched.
pub fn cleanup_stale() -> Result<(), Error> {
    ensure_base()?;
    reap_stale(false);
    Ok(())
}

/// `include_self`: our own pid counts as dead (only true before we created anything: a
/// previous process with the same pid left these).
fn reap_stale(include_self: bool) {
    let me = std::process::id();
    let is_stale = |name: &str| {
        owner_pid(name).is_some_and(|pid| (include_self && pid == me) || !exec::pid_exists(pid))
    };
    let list = |dir: &str| -> Vec<String> {
        fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| is_stale(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    let netns = list("/run/netns");
    let labs = list(BASE_DIR);
    if netns.is_empty() && labs.is_empty() {
        return;
    }
    note!("removing leftovers of dead test processes: {netns:?} {labs:?}");
    let mut targets: Vec<(&str, NsId)> = netns
        .iter()
        .filter_map(|n| Some(("net", exec::ns_id(&Path::new("/run/netns").join(n))?)))
        .collect();
    let mut ns_files = Vec::new();
    for lab in &labs {
        let Ok(rd) = fs::read_dir(Path::new(BASE_DIR).join(lab)) else {
            continue;
        };
        for entry in rd.filter_map(Result::ok) {
            let path = entry.path();
            let kind = match path.extension().and_then(OsStr::to_str) {
                Some("mnt") => "mnt",
                Some("uts") => "uts",
                _ => continue,
            };
            if let Some(id) = exec::ns_id(&path) {
                targets.push((kind, id));
            }
            ns_files.push(path);
        }
    }
    let survivors = exec::kill_namespace_members(&targets, Duration::from_secs(5));
    if !survivors.is_empty() {
        note!("warning: stale processes survived SIGKILL: {survivors:?}");
    }
    for f in &ns_files {
        unmount_and_remove(f);
    }
    for lab in &labs {
        let _ = fs::remove_dir_all(Path::new(BASE_DIR).join(lab));
    }
    for n in &netns {
        if let Err(e) = ip(&["netns", "del", n]) {
            note!("warning: {e}");
        }
    }
}

/// Unmounts a bind-mounted namespace file (if it is mounted) and removes it.
pub(crate) fn unmount_and_remove(path: &Path) {
    if !path.exists() {
        return;
    }
    let is_mounted = exec::ns_id(path).is_some_and(|(dev, _)| {
        path.parent()
            .and_then(|p| fs::metadata(p).ok())
            .is_some_and(|m| std::os::unix::fs::MetadataExt::dev(&m) != dev)
    });
    if is_mounted {
        if let Err(e) = argv_tool("umount", &[path.as_os_str()]).and_then(|a| plumb(&a)) {
            note!("warning: {e}");
        }
    }
    if let Err(e) = fs::remove_file(path) {
        note!("warning: removing {}: {e}", path.display());
    }
}

/// Mutable bookkeeping of a lab.
#[derive(Debug, Default)]
pub(crate) struct LabState {
    /// Host names in use.
    names: BTreeSet<String>,
    /// Next switch port number.
    next_port: u32,
}

/// What a lab's hosts share; dropped (switch namespace and lab directory removed) when the lab
/// and all its hosts are gone.
#[derive(Debug)]
pub(crate) struct LabShared {
    /// `nsth-<pid>-<n>`: the switch namespace's name, and the prefix of every host namespace.
    pub(crate) id: String,
    pub(crate) tag: String,
    pub(crate) dir: PathBuf,
    pub(crate) hosts_file: PathBuf,
    pub(crate) nsswitch_file: PathBuf,
    state: Mutex<LabState>,
    switch_created: bool,
}

impl LabShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, LabState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves a host name and, for a networked host, a switch port; returns the port name.
    pub(crate) fn claim(&self, name: &str) -> Result<String, Error> {
        let mut st = self.lock();
        if !st.names.insert(name.to_owned()) {
            return Err(Error::Invalid(format!(
                "lab `{}` already has a host named `{name}`",
                self.tag
            )));
        }
        let port = format!("p{}", st.next_port);
        st.next_port += 1;
        Ok(port)
    }

    pub(crate) fn release(&self, name: &str) {
        self.lock().names.remove(name);
    }

    /// Plugs the other end of a veth pair into the bridge: creates `port` in the switch
    /// namespace and its peer `iface` directly in `host_netns`.
    pub(crate) fn plug(&self, port: &str, host_netns: &str, iface: &str) -> Result<(), Error> {
        ip(&[
            "-n", &self.id, "link", "add", port, "type", "veth", "peer", "name", iface, "netns",
            host_netns,
        ])?;
        ip(&["-n", &self.id, "link", "set", port, "master", BRIDGE, "up"])?;
        Ok(())
    }

    pub(crate) fn add_name(&self, addr: &str, names: &[&str]) -> Result<(), Error> {
        let ip_ok = addr.parse::<std::net::IpAddr>().is_ok();
        let names_ok = !names.is_empty()
            && names
                .iter()
                .all(|n| !n.is_empty() && !n.chars().any(|c| c.is_whitespace() || c == '#'));
        if !ip_ok || !names_ok {
            return Err(Error::Invalid(format!(
                "bad hosts entry: address `{addr}`, names {names:?}"
            )));
        }
        let line = format!("{addr}\t{}\n", names.join(" "));
        // Appending in place keeps the inode, so every host's bind mount sees the new line.
        let _guard = self.lock();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&self.hosts_file)
            .map_err(|e| Error::io(format!("opening {}", self.hosts_file.display()), e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", self.hosts_file.display()), e))
    }
}

impl Drop for LabShared {
    fn drop(&mut self) {
        if self.switch_created {
            // Its veth ports disappeared with their hosts' namespaces already.
            if let Err(e) = ip(&["netns", "del", &self.id]) {
                note!("warning: {e}");
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                note!("warning: removing {}: {e}", self.dir.display());
            }
        }
    }
}

/// One isolated network: a bridge inside its own "switch" network namespace (the root
/// namespace is never touched), plus a hosts file and an `nsswitch.conf` (`hosts: files`)
/// shared by all hosts of the lab.
///
/// Hosts keep the lab's shared parts alive: the switch namespace and the lab directory are
/// removed when the `Lab` and every [`Host`] made from it have been dropped.
pub struct Lab {
    shared: Arc<LabShared>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.shared.id)
            .field("tag", &self.shared.tag)
            .finish()
    }
}

impl Lab {
    /// Creates a lab. `tag` is for humans (error messages); names are made unique with the pid
    /// and a counter.
    pub fn new(tag: &str) -> Result<Self, Error> {
        ensure_base()?;
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}-{n}", std::process::id());
        let dir = Path::new(BASE_DIR).join(&id);
        let mut shared = LabShared {
            tag: tag.to_owned(),
            hosts_file: dir.join("hosts"),
            nsswitch_file: dir.join("nsswitch.conf"),
            dir,
            id,
            state: Mutex::new(LabState::default()),
            switch_created: false,
        };
        fs::create_dir(&shared.dir)
            .map_err(|e| Error::io(format!("creating {}", shared.dir.display()), e))?;
        fs::write(&shared.hosts_file, HOSTS_HEADER)
            .map_err(|e| Error::io(format!("writing {}", shared.hosts_file.display()), e))?;
        fs::write(&shared.nsswitch_file, NSSWITCH)
            .map_err(|e| Error::io(format!("writing {}", shared.nsswitch_file.display()), e))?;
        ip(&["netns", "add", &shared.id])?;
        shared.switch_created = true;
        let sw = shared.id.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// The lab's unique id (`nsth-<pid>-<n>`), also the name of its switch network namespace
    /// and the prefix of its hosts' namespace names.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The name of the network namespace holding the lab's bridge (`br0`).
    pub fn switch_netns(&self) -> &str {
        &self.shared.id
    }

    /// The lab's hosts file (outside path); every host sees it as `/etc/hosts`.
    pub fn hosts_file(&self) -> &Path {
        &self.shared.hosts_file
    }

    /// Creates a host plugged into the lab's bridge.
    ///
    /// The host gets its own network namespace (`lo` up, interface `eth0` with `addrs`, e.g.
    /// `"198.51.100.10/24"`, `"2001:db8::10/64"`; IPv6 addresses without duplicate address
    /// detection, so they are usable at once), a persistent private mount namespace (its own
    /// `/run` and `/var/lib/nfs`, the lab's `/etc/hosts` and `/etc/nsswitch.conf`) and a UTS
    /// namespace whose hostname is `name`. Each address is added to the lab's hosts file
    /// under `name`.
    ///
    /// `name`: 1 to 24 characters of `a-z`, `0-9`, `-`, unique within the lab.
    pub fn host(&self, name: &str, addrs: &[&str]) -> Result<Host, Error> {
        Host::create(Arc::clone(&self.shared), name, HostKind::Bridged(addrs))
    }

    /// Creates a host with loopback only (no interface on the bridge, nothing added to the
    /// hosts file), for tests that only need an isolated rpcbind and `/run`.
    pub fn isolated_host(&self, name: &str) -> Result<Host, Error> {
        Host::create(Arc::clone(&self.shared), name, HostKind::Isolated)
    }

    /// Adds `ADDR NAME [ALIASES...]` to the hosts file seen by every host of this lab (existing
    /// and future ones).
    pub fn add_name(&self, addr: &str, names: &[&str]) -> Result<(), Error> {
        self.shared.add_name(addr, names)
    }
}

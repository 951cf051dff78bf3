//! Dropping root, as nfs-utils' `nsm_drop_privileges` does (`support/nsm/file.c`): become the
//! owner of the state directory's `sm/` (not of the directory itself: CVE-2019-3689), keep
//! only CAP_NET_BIND_SERVICE (for the privileged source port of lockd callbacks), and empty
//! the capability bounding set. When `sm/` is owned by root, nsmd stays root and says how to
//! choose another user.
//!
//! Must run before any thread is started: capability sets are per thread, and the runtime's
//! threads inherit what the main thread has when they are created.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, getuid, setgroups, setresgid, setresuid};
use tracing::{info, warn};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not root to begin with: nothing to drop.
    NotRoot,
    /// `sm/` belongs to root: still root.
    StayedRoot,
    /// Now running as this user and group, with CAP_NET_BIND_SERVICE only.
    To(u32, u32),
}

/// Drops to the owner of `state_dir/sm`.
pub fn drop_to_owner_of_sm(state_dir: &Path) -> Result<Dropped> {
    if !getuid().is_root() {
        return Ok(Dropped::NotRoot);
    }
    let sm = state_dir.join("sm");
    let meta = std::fs::symlink_metadata(&sm).with_context(|| {
        format!(
            "cannot inspect {} to choose the user to run as",
            sm.display()
        )
    })?;
    let (uid, gid) = (meta.uid(), meta.gid());
    if uid == 0 {
        warn!(
            "running as root: {} is owned by root; `chown statd {}` (and sm.bak) to run as another user",
            sm.display(),
            sm.display()
        );
        return Ok(Dropped::StayedRoot);
    }
    let keep: CapsHashSet = [Capability::CAP_NET_BIND_SERVICE].into_iter().collect();
    // Empty the bounding set first, while CAP_SETPCAP is still held (as nfs-utils does): no
    // program nsmd runs (the HA callout) can gain a capability back.
    for c in caps::all() {
        caps::drop(None, CapSet::Bounding, c)
            .with_context(|| format!("cannot drop {c} from the capability bounding set"))?;
    }
    nix::sys::prctl::set_keepcaps(true).context("prctl(PR_SET_KEEPCAPS)")?;
    setgroups(&[]).context("cannot clear the supplementary groups")?;
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setresgid(g, g, g).with_context(|| format!("cannot switch to group {gid}"))?;
    setresuid(u, u, u).with_context(|| format!("cannot switch to user {uid}"))?;
    caps::set(None, CapSet::Permitted, &keep).context("cannot keep CAP_NET_BIND_SERVICE")?;
    caps::set(None, CapSet::Effective, &keep).context("cannot keep CAP_NET_BIND_SERVICE")?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .context("cannot clear inheritable capabilities")?;
    nix::sys::prctl::set_keepcaps(false).context("prctl(PR_SET_KEEPCAPS)")?;
    info!(
        uid,
        gid,
        "dropped privileges to the owner of {}; kept CAP_NET_BIND_SERVICE",
        sm.display()
    );
    Ok(Dropped::To(uid, gid))
}

/// Whether [`drop_to_owner_of_sm`] will give up root for this state directory.
pub fn will_drop(state_dir: &Path) -> bool {
    getuid().is_root()
        && std::fs::symlink_metadata(state_dir.join("sm")).is_ok_and(|m| m.uid() != 0)
}

/// Whether the state directory itself belongs to the user nsmd drops to (the owner of `sm/`),
/// as in RHEL's layout (`/var/lib/nfs/statd` owned by rpcuser) rather than Debian's (the
/// directory is root's). nsmd then writes `state` itself, as that user, like nfs-utils
/// (sm-notify bumps it after dropping privileges there, so the file is that user's): root
/// (the capability-less helper) could not create a file in that directory, and should not
/// write where the unprivileged user decides what the names are. Only the kernel's
/// root-owned `nsm_local_state` still goes through the helper.
pub fn owns_state_dir_after_drop(state_dir: &Path) -> bool {
    getuid().is_root()
        && match (
            std::fs::metadata(state_dir),
            std::fs::symlink_metadata(state_dir.join("sm")),
        ) {
            (Ok(base), Ok(sm)) => sm.uid() != 0 && base.uid() == sm.uid(),
            _ => false,
        }
}

/// The environment variable that turns an nsmd process into the state helper.
pub const HELPER_ENV: &str = "NSMD_STATE_HELPER";
const HELPER_KERNEL_ENV: &str = "NSMD_STATE_HELPER_KERNEL";
const HELPER_INSTANCES_ENV: &str = "NSMD_STATE_HELPER_INSTANCES";
const HELPER_PROC_ENV: &str = "NSMD_STATE_HELPER_PROC";

/// A root helper process that does the few things nsmd needs root for after it dropped
/// privileges: bumping the state number in the node's root-owned `state` file, writing the
/// kernel's root-owned `nsm_local_state`, and for service instances
/// ([`nsm_statd::ServicePrivileges`]): bumping a service's root-owned `state`, creating its
/// root-owned ownership file and writing the next epoch to it (nsmd opens it for reading and
/// holds the lock), and writing a service's configured addresses and exports to the
/// kernel's root-owned `unlock_ip` and `unlock_filesystem`. It is nsmd itself, re-executed before the drop with every
/// capability removed (uid 0 alone may write root's own files), and it answers one line per
/// request on a socket pair until nsmd exits.
///
/// nsmd names a service instance, never a path: the helper reads the instance files itself
/// (from the directory root gave nsmd) and writes only in a state directory that root owns
/// and that nothing above it lets another user replace.
///
/// When the node's state directory belongs to nsmd's user ([`owns_state_dir_after_drop`],
/// decided when the helper starts), nsmd bumps the node's `state` itself and asks the
/// helper only to tell the kernel; the helper then refuses to bump there.
#[derive(Debug)]
pub struct StateHelper {
    conn: std::sync::Mutex<(std::io::BufReader<UnixStream>, UnixStream)>,
    _child: std::process::Child,
    /// The node's state directory, bumped by nsmd itself (no kernel file: the helper
    /// writes that).
    direct: Option<nsm_statd::DirectAuthority>,
}

use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

impl StateHelper {
    /// Starts the helper for `state_dir` and the kernel file `nsm_local_state`, and for the
    /// service instances configured in `instances` (`--instances`), whose kernel files are
    /// under `proc_root`.
    pub fn spawn(
        state_dir: &Path,
        nsm_local_state: &Path,
        instances: Option<&Path>,
        proc_root: &Path,
    ) -> Result<Self> {
        let (ours, theirs) = UnixStream::pair().context("socketpair for the state helper")?;
        let exe = std::env::current_exe().context("cannot find nsmd's own executable")?;
        let mut cmd = Command::new(&exe);
        if let Some(dir) = instances {
            cmd.env(HELPER_INSTANCES_ENV, dir);
        }
        let child = cmd
            .env(HELPER_ENV, state_dir)
            .env(HELPER_KERNEL_ENV, nsm_local_state)
            .env(HELPER_PROC_ENV, proc_root)
            .stdin(Stdio::from(OwnedFd::from(theirs.try_clone()?)))
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .with_context(|| format!("cannot start the state helper {}", exe.display()))?;
        let reader = std::io::BufReader::new(ours.try_clone()?);
        let direct = if owns_state_dir_after_drop(state_dir) {
            info!(
                "{} belongs to the owner of its sm/: nsmd writes its state file itself",
                state_dir.display()
            );
            Some(nsm_statd::DirectAuthority {
                dir: std::sync::Arc::new(nsm_store::StateDir::open(state_dir).with_context(
                    || format!("cannot use the state directory {}", state_dir.display()),
                )?),
                nsm_local_state: None,
            })
        } else {
            None
        };
        Ok(Self {
            conn: std::sync::Mutex::new((reader, ours)),
            _child: child,
            direct,
        })
    }

    fn request(&self, line: &str) -> std::result::Result<i32, nsm_statd::Error> {
        self.request_text(line)
            .map_err(|message| nsm_statd::Error::Helper { message })
    }

    fn request_text(&self, line: &str) -> std::result::Result<i32, String> {
        let mut c = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        writeln!(c.1, "{line}").map_err(|e| format!("state helper gone: {e}"))?;
        let mut reply = String::new();
        c.0.read_line(&mut reply)
            .map_err(|e| format!("state helper gone: {e}"))?;
        match reply.trim_end().split_once(' ') {
            Some(("ok", n)) => n
                .parse()
                .map_err(|_| format!("state helper said {reply:?}")),
            Some(("err", msg)) => Err(msg.to_owned()),
            _ => Err(format!("state helper exited or said {reply:?}")),
        }
    }
}

impl nsm_statd::ServicePrivileges for StateHelper {
    fn create_owner(&self, name: &str) -> std::result::Result<(), nsm_statd::Error> {
        self.request(&format!("create-owner {name}")).map(drop)
    }

    fn next_epoch(&self, name: &str, owner: &str) -> std::result::Result<u64, nsm_statd::Error> {
        let owner: String = owner
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        // The reply's number is an i32 on the wire of this protocol; epochs stay far below.
        self.request(&format!("next-epoch {name} {owner}"))
            .and_then(|e| {
                u64::try_from(e).map_err(|_| nsm_statd::Error::Helper {
                    message: format!("the state helper answered a bad epoch {e}"),
                })
            })
    }

    fn bump(&self, name: &str) -> std::result::Result<i32, nsm_statd::Error> {
        self.request(&format!("bump-instance {name}"))
    }

    fn unlock(
        &self,
        name: &str,
        file: &str,
        text: &str,
    ) -> std::result::Result<(), nsm_statd::Error> {
        if text.contains('\n') {
            return Err(nsm_statd::Error::Helper {
                message: "a line break cannot be sent to the kernel file".to_owned(),
            });
        }
        self.request(&format!("unlock {name} {file} {text}"))
            .map(drop)
    }
}

impl nsm_statd::StateAuthority for StateHelper {
    fn bump(&self) -> std::result::Result<i32, nsm_statd::Error> {
        match &self.direct {
            Some(d) => {
                let state = d.bump()?;
                self.publish(state)?;
                Ok(state)
            }
            None => self.request("bump"),
        }
    }

    fn publish(&self, state: i32) -> std::result::Result<(), nsm_statd::Error> {
        self.request(&format!("publish {state}")).map(drop)
    }
}

/// The helper's main loop (nsmd started with [`HELPER_ENV`] set): one request per line on
/// stdin, one answer per line on stdout, until end of input.
pub fn helper_main() -> std::process::ExitCode {
    use nsm_statd::StateAuthority;
    let (Some(dir), Some(kernel)) = (
        std::env::var_os(HELPER_ENV),
        std::env::var_os(HELPER_KERNEL_ENV),
    ) else {
        return std::process::ExitCode::FAILURE;
    };
    // Nothing but uid 0: enough for root's own files, nothing else.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let _ = caps::clear(None, set);
    }
    let authority = match nsm_store::StateDir::open(Path::new(&dir)) {
        Ok(d) => nsm_statd::DirectAuthority {
            dir: std::sync::Arc::new(d),
            nsm_local_state: Some(kernel.into()),
        },
        Err(e) => {
            eprintln!("nsmd state helper: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let instances = std::env::var_os(HELPER_INSTANCES_ENV).map(std::path::PathBuf::from);
    let mut services = Services {
        specs: instances
            .as_deref()
            .map(|d| nsmd_instances(d).unwrap_or_default())
            .unwrap_or_default(),
        proc_root: std::env::var_os(HELPER_PROC_ENV)
            .map_or_else(|| "/proc".into(), std::path::PathBuf::from),
    };
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        // The instance files as they are now (nsmd re-reads them on SIGHUP); a file that does
        // not parse keeps what was read before.
        if let Some(d) = &instances
            && line != "bump"
            && !line.starts_with("publish ")
            && let Some(specs) = nsmd_instances(d)
        {
            services.specs = specs;
        }
        let r = match line.split_once(' ') {
            None if line == "bump" => root_owned(Path::new(&dir))
                .and_then(|()| authority.bump().map_err(|e| e.to_string())),
            Some(("publish", n)) => match n.parse::<i32>() {
                Ok(n) => authority.publish(n).map(|()| n).map_err(|e| e.to_string()),
                Err(_) => Err("bad state number".to_owned()),
            },
            Some(("bump-instance", name)) => services.bump(name),
            Some(("create-owner", name)) => services.open_owner(name).map(|_| 0),
            Some(("next-epoch", rest)) => match rest.split_once(' ') {
                Some((name, owner)) => services.next_epoch(name, owner),
                None => Err("bad next-epoch request".to_owned()),
            },
            Some(("unlock", rest)) => {
                let mut w = rest.splitn(3, ' ');
                match (w.next(), w.next(), w.next()) {
                    (Some(name), Some(file), Some(text)) => {
                        services.unlock(name, file, text).map(|()| 0)
                    }
                    _ => Err("bad unlock request".to_owned()),
                }
            }
            _ => Err("unknown request".to_owned()),
        };
        let reply = match r {
            Ok(n) => format!("ok {n}\n"),
            Err(e) => format!("err {}\n", e.replace('\n', " ")),
        };
        if out
            .write_all(reply.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Ok when `dir` belongs to root: the helper writes the node's `state` only there (in a
/// directory of nsmd's user, nsmd writes it itself).
fn root_owned(dir: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.uid() == 0 => Ok(()),
        Ok(m) => Err(format!(
            "{} belongs to uid {}, not root: nsmd writes its state itself",
            dir.display(),
            m.uid()
        )),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// The service instances, as the helper (root) read them from the instance files.
struct Services {
    specs: Vec<nsm_statd::ServiceSpec>,
    proc_root: std::path::PathBuf,
}

fn nsmd_instances(dir: &Path) -> Option<Vec<nsm_statd::ServiceSpec>> {
    match crate::config::instances::load_dir(dir) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("nsmd state helper: {e}");
            None
        }
    }
}

impl Services {
    fn find(&self, name: &str) -> std::result::Result<&nsm_statd::ServiceSpec, String> {
        self.specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no instance named {name:?}"))
    }

    /// The instance's state directory, resolved, once it is safe for root to write in.
    fn dir(&self, name: &str) -> std::result::Result<std::path::PathBuf, String> {
        trusted_dir(&self.find(name)?.state_dir)
    }

    fn bump(&self, name: &str) -> std::result::Result<i32, String> {
        let dir = self.dir(name)?;
        let d = nsm_store::StateDir::open(&dir).map_err(|e| e.to_string())?;
        d.state(true).map_err(|e| e.to_string())
    }

    /// The next epoch in the instance's ownership file (nsmd holds its lock).
    fn next_epoch(&self, name: &str, owner: &str) -> std::result::Result<i32, String> {
        let dir = self.dir(name)?;
        let mut file = self.open_owner(name)?;
        let epoch = nsm_statd::ownership::write_next_epoch(
            &dir,
            &mut file,
            owner,
            std::os::unix::process::parent_id(),
        )
        .map_err(|e| e.to_string())?;
        i32::try_from(epoch).map_err(|_| format!("epoch {epoch} is too large"))
    }

    fn open_owner(&self, name: &str) -> std::result::Result<std::fs::File, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir(name)?.join(nsm_statd::ownership::OWNER_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match file.metadata() {
            Ok(m) if m.is_file() => Ok(file),
            _ => Err(format!("{} is not a regular file", path.display())),
        }
    }

    /// Writes `text` to `<proc_root>/fs/nfsd/<file>` when it is one of the instance's
    /// configured addresses (`unlock_ip`) or exports (`unlock_filesystem`). The kernel takes
    /// one newline-terminated word (`write_unlock_ip`, `write_unlock_fs` in
    /// `fs/nfsd/nfsctl.c`) and answers EINVAL to anything else, so the newline is added here.
    fn unlock(&self, name: &str, file: &str, text: &str) -> std::result::Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let spec = self.find(name)?;
        let allowed = match file {
            "unlock_ip" => spec.unlock_ip && spec.addresses.iter().any(|a| a.to_string() == text),
            "unlock_filesystem" => spec.exports.iter().any(|e| e.as_os_str() == text),
            _ => return Err(format!("{file:?} is not a kernel file the helper writes")),
        };
        if !allowed {
            return Err(format!(
                "{text:?} is not in instance {name}'s [release] {file}"
            ));
        }
        let path = self.proc_root.join("fs/nfsd").join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// `dir`, resolved, when root may write in it on behalf of the unprivileged daemon: the
/// directory belongs to root and only root can write it, and so does every directory above
/// it (sticky ones like `/tmp` excepted), so the daemon can neither plant a link in it nor
/// replace it. Otherwise an error that says what to change.
fn trusted_dir(dir: &Path) -> std::result::Result<std::path::PathBuf, String> {
    let real = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (i, d) in real.ancestors().enumerate() {
        let m = std::fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let sticky = i > 0 && m.mode() & 0o1000 != 0;
        if m.uid() != 0 || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{} belongs to uid {} with mode {:o}: a service's state directory, and every \
                 directory above it, must belong to root and be writable by root only \
                 (`chown root: {}; chmod 755 {}`), with sm/ and sm.bak/ owned by nsmd's user",
                d.display(),
                m.uid(),
                m.mode() & 0o7777,
                d.display(),
                d.display()
            ));
        }
    }
    Ok(real)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn services(proc_root: &Path, state_dir: &Path) -> Services {
        let text = format!(
            "hostname = \"svc.example.test\"\naddresses = [\"127.0.0.9\"]\nstate_dir = \"{}\"\n\
             [release]\nexports = [\"/export/a\"]\n",
            state_dir.display()
        );
        Services {
            specs: vec![
                crate::config::instances::parse(Path::new("svc.toml"), "svc", &text).unwrap(),
            ],
            proc_root: proc_root.to_owned(),
        }
    }

    #[test]
    fn the_helper_writes_only_the_configured_addresses_and_exports() {
        let d = tempfile::tempdir().unwrap();
        let nfsd = d.path().join("fs/nfsd");
        std::fs::create_dir_all(&nfsd).unwrap();
        std::fs::write(nfsd.join("unlock_ip"), "").unwrap();
        std::fs::write(nfsd.join("unlock_filesystem"), "").unwrap();
        let s = services(d.path(), &d.path().join("svc"));
        assert!(s.unlock("svc", "unlock_ip", "127.0.0.8").is_err());
        assert!(s.unlock("other", "unlock_ip", "127.0.0.9").is_err());
        assert!(s.unlock("svc", "../../etc/passwd", "127.0.0.9").is_err());
        assert!(s.unlock("svc", "unlock_filesystem", "/export/b").is_err());
        assert!(s.bump("other").is_err());
        s.unlock("svc", "unlock_ip", "127.0.0.9").unwrap();
        s.unlock("svc", "unlock_filesystem", "/export/a").unwrap();
        assert_eq!(
            std::fs::read_to_string(nfsd.join("unlock_ip")).unwrap(),
            "127.0.0.9\n"
        );
        assert_eq!(
            std::fs::read_to_string(nfsd.join("unlock_filesystem")).unwrap(),
            "/export/a\n"
        );
        // Never created: only kernel files that exist are written.
        std::fs::remove_file(nfsd.join("unlock_ip")).unwrap();
        assert!(s.unlock("svc", "unlock_ip", "127.0.0.9").is_err());
        assert!(!nfsd.join("unlock_ip").exists());
    }

    #[test]
    fn the_helper_writes_only_in_directories_only_root_can_change() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("svc");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let s = services(d.path(), &dir);
        let e = s.bump("svc").unwrap_err();
        assert!(e.contains("must belong to root"), "{e}");
        assert!(s.open_owner("svc").is_err());
        assert!(!dir.join("state").exists() && !dir.join(".nsmd-owner").exists());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if getuid().is_root() && trusted_dir(d.path()).is_ok() {
            assert_eq!(s.bump("svc").unwrap(), 3);
            assert_eq!(s.next_epoch("svc", "me").unwrap(), 1);
            assert_eq!(s.next_epoch("svc", "me").unwrap(), 2);
        }
    }
}

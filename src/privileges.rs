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

/// The environment variable that turns an nsmd process into the state helper.
pub const HELPER_ENV: &str = "NSMD_STATE_HELPER";
const HELPER_KERNEL_ENV: &str = "NSMD_STATE_HELPER_KERNEL";

/// A root helper process that does the only two things nsmd needs root for after it dropped
/// privileges: bumping the state number in the root-owned `state` file, and writing the
/// kernel's root-owned `nsm_local_state`. It is nsmd itself, re-executed before the drop with
/// every capability removed (uid 0 alone may write root's own files), and it answers one line
/// per request on a socket pair until nsmd exits.
#[derive(Debug)]
pub struct StateHelper {
    conn: std::sync::Mutex<(std::io::BufReader<UnixStream>, UnixStream)>,
    _child: std::process::Child,
}

use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

impl StateHelper {
    /// Starts the helper for `state_dir` and the kernel file `nsm_local_state`.
    pub fn spawn(state_dir: &Path, nsm_local_state: &Path) -> Result<Self> {
        let (ours, theirs) = UnixStream::pair().context("socketpair for the state helper")?;
        let exe = std::env::current_exe().context("cannot find nsmd's own executable")?;
        let child = Command::new(&exe)
            .env(HELPER_ENV, state_dir)
            .env(HELPER_KERNEL_ENV, nsm_local_state)
            .stdin(Stdio::from(OwnedFd::from(theirs.try_clone()?)))
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .with_context(|| format!("cannot start the state helper {}", exe.display()))?;
        let reader = std::io::BufReader::new(ours.try_clone()?);
        Ok(Self {
            conn: std::sync::Mutex::new((reader, ours)),
            _child: child,
        })
    }

    fn request(&self, line: &str) -> std::result::Result<i32, String> {
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

impl nsm_statd::StateAuthority for StateHelper {
    fn bump(&self) -> std::result::Result<i32, String> {
        self.request("bump")
    }

    fn publish(&self, state: i32) -> std::result::Result<(), String> {
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
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        let r = match line.split_once(' ') {
            None if line == "bump" => authority.bump(),
            Some(("publish", n)) => match n.parse::<i32>() {
                Ok(n) => authority.publish(n).map(|()| n),
                Err(_) => Err("bad state number".to_owned()),
            },
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

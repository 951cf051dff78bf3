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

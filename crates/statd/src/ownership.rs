//! Ownership of a service instance's state directory (design.md, data flow 3): an exclusive
//! `flock` on `<state_dir>/.nsmd-owner` plus an epoch number in that file, incremented
//! durably on each takeover. A node whose epoch is no longer the file's has been fenced: it
//! must neither write to the directory nor notify for the instance.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The ownership file, in the instance's state directory (a dot name: neither nsmd nor
/// nfs-utils loads it as a record).
pub const OWNER_FILE: &str = ".nsmd-owner";

/// The ownership file's line is padded with spaces to at least this many bytes (one line,
/// within one disk sector), so that a rewrite overwrites it whole without a truncation.
const OWNER_LINE: usize = 128;

/// Why ownership could not be claimed, or was lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnershipError {
    /// The ownership file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another process (on this node or another) holds the lock.
    #[error(
        "held by another owner ({holder}): {path} is locked; is the instance active on another node? release it there first"
    )]
    Busy {
        /// The file.
        path: PathBuf,
        /// Who holds it, as the file says (`epoch N owner NODE pid PID`).
        holder: String,
    },
    /// The root helper could not write the ownership file.
    #[error("{path}: {message}")]
    Helper {
        /// The file.
        path: PathBuf,
        /// What the helper said.
        message: String,
    },
    /// This node released the instance.
    #[error("{path}: ownership was released on this node")]
    Released {
        /// The file.
        path: PathBuf,
    },
    /// The file's epoch is not the one this owner claimed: another node took over.
    #[error("fenced: {path} has epoch {found}, this node owns epoch {held}")]
    Fenced {
        /// The file.
        path: PathBuf,
        /// The epoch claimed here.
        held: u64,
        /// The epoch in the file.
        found: u64,
    },
}

/// Checks whether this node may still write and notify for an instance.
pub trait Fence: Send + Sync + std::fmt::Debug {
    /// `Ok` while this node owns the instance.
    fn check(&self) -> Result<(), OwnershipError>;
}

/// A [`Fence`] as the announce path's ([`nsm_notify::Fence`]): checked before every write to
/// `sm.bak/`; it has no verdict to watch, so only a refused write stops the run (an active
/// service instance's announcements also stop on its fence watch's verdict).
#[derive(Debug, Clone)]
pub struct Checked(pub std::sync::Arc<dyn Fence>);

impl nsm_notify::Fence for Checked {
    fn check(&self) -> Result<(), String> {
        self.0.check().map_err(|e| e.to_string())
    }

    fn fenced(&self) -> std::pin::Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

/// A claimed ownership: the lock stays held until this is dropped.
#[derive(Debug)]
pub struct Ownership {
    path: PathBuf,
    epoch: u64,
    lock: std::sync::Mutex<Hold>,
}

/// What an [`Ownership`] holds of the ownership file.
#[derive(Debug)]
enum Hold {
    /// The lock.
    Locked(Flock<File>),
    /// Claimed over a lock another process still held ([`Ownership::claim_over`]): the
    /// epoch is this node's, the lock is taken as soon as the old holder lets it go
    /// ([`Ownership::relock`]).
    Unlocked(File),
    /// Released on this node.
    Released,
}

fn parse_epoch(text: &str) -> u64 {
    text.split_whitespace()
        .skip_while(|w| *w != "epoch")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

/// Who the ownership file at `path` names (its line, `epoch N owner NODE pid PID`), for
/// messages.
fn holder(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        Ok(_) => "no owner written yet".to_owned(),
        Err(e) => format!("unreadable: {e}"),
    }
}

/// What `state_dir`'s ownership file says: (epoch, owner node, pid); `None` when there is
/// no file or it names no owner.
pub fn read_owner(state_dir: &Path) -> Result<Option<(u64, String, u32)>, OwnershipError> {
    let path = state_dir.join(OWNER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(OwnershipError::Io { path, source }),
    };
    let field = |key: &str| {
        text.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .map(str::to_owned)
    };
    Ok(field("owner").map(|owner| {
        (
            parse_epoch(&text),
            owner,
            field("pid").and_then(|p| p.parse().ok()).unwrap_or(0),
        )
    }))
}

/// The epoch recorded in `state_dir`'s ownership file (0 when there is none).
pub fn read_epoch(state_dir: &Path) -> Result<u64, OwnershipError> {
    let path = state_dir.join(OWNER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(parse_epoch(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(OwnershipError::Io { path, source }),
    }
}

/// Reads the epoch of the ownership file `file` of `state_dir` (opened for reading and
/// writing), writes epoch + 1 with `owner` and `pid` (for people) in place, fsyncs it and the
/// directory, and returns the new epoch. The caller holds the lock.
pub fn write_next_epoch(
    state_dir: &Path,
    file: &mut File,
    owner: &str,
    pid: u32,
) -> Result<u64, OwnershipError> {
    let io = |source| OwnershipError::Io {
        path: state_dir.join(OWNER_FILE),
        source,
    };
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.read_to_string(&mut text).map_err(io)?;
    let epoch = parse_epoch(&text) + 1;
    // Overwritten in place, never truncated: a truncation reaches the disk as metadata before
    // the data written after it, so a power cut in between left an empty file (epoch 0, and
    // the next claim wrote epoch 1: the epoch went back). The line is padded with spaces to
    // the old length (at least OWNER_LINE), so the file never shrinks and the new line
    // covers the old one whole.
    let mut line = format!("epoch {epoch} owner {owner} pid {pid}");
    let width = text.len().max(OWNER_LINE).saturating_sub(1);
    if line.len() < width {
        line.extend(std::iter::repeat_n(' ', width - line.len()));
    }
    line.push('\n');
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(epoch)
}

impl Ownership {
    /// Takes the lock without waiting, then writes epoch + 1 (and `owner`, for people) in
    /// place and fsyncs it and the directory.
    pub fn claim(state_dir: &Path, owner: &str) -> Result<Self, OwnershipError> {
        Self::claim_as(state_dir, owner, false)
    }

    /// [`Ownership::claim`] that does not stop at a lock another process holds: the cluster
    /// manager decided that this node serves the instance now (CTDB's takeip after the old
    /// holder's ctdbd died, or a partition). Epoch + 1 is written without the lock, so the
    /// old holder's fence check fails (it stops answering and notifying) and the lock is
    /// taken later, once the old holder lets it go ([`Ownership::relock`]).
    /// [`Ownership::locked`] tells whether the lock was free.
    pub fn claim_over(state_dir: &Path, owner: &str) -> Result<Self, OwnershipError> {
        Self::claim_as(state_dir, owner, true)
    }

    fn claim_as(state_dir: &Path, owner: &str, force: bool) -> Result<Self, OwnershipError> {
        let path = state_dir.join(OWNER_FILE);
        let io = |source| OwnershipError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut hold = Self::lock(&path, file, force)?;
        let pid = std::process::id();
        let epoch = match &mut hold {
            Hold::Locked(l) => write_next_epoch(state_dir, l, owner, pid),
            Hold::Unlocked(f) => write_next_epoch(state_dir, f, owner, pid),
            Hold::Released => Err(OwnershipError::Released { path: path.clone() }),
        }?;
        Ok(Self {
            path,
            epoch,
            lock: std::sync::Mutex::new(hold),
        })
    }

    /// [`Ownership::claim`] when this process may not write the ownership file (root's, in a
    /// Debian-style directory, while nsmd runs unprivileged): `file` is the ownership file
    /// opened for reading, which this process locks; `next_epoch` then writes epoch + 1
    /// (a root helper doing [`write_next_epoch`]) and returns it. With `force`, as
    /// [`Ownership::claim_over`].
    pub fn claim_with(
        state_dir: &Path,
        file: File,
        force: bool,
        next_epoch: impl FnOnce() -> Result<u64, String>,
    ) -> Result<Self, OwnershipError> {
        let path = state_dir.join(OWNER_FILE);
        let lock = Self::lock(&path, file, force)?;
        let epoch = next_epoch().map_err(|message| OwnershipError::Helper {
            path: path.clone(),
            message,
        })?;
        Ok(Self {
            path,
            epoch,
            lock: std::sync::Mutex::new(lock),
        })
    }

    /// Takes the ownership this node held at `epoch` before nsmd restarted (the epoch it
    /// recorded at the takeover): the lock without waiting, and no write. Fails with
    /// [`OwnershipError::Fenced`] when the file's epoch moved on (another node took over in
    /// between) and [`OwnershipError::Busy`] when another process holds the lock.
    pub fn resume(state_dir: &Path, epoch: u64) -> Result<Self, OwnershipError> {
        let path = state_dir.join(OWNER_FILE);
        let file = File::open(&path).map_err(|source| OwnershipError::Io {
            path: path.clone(),
            source,
        })?;
        let lock = Self::lock(&path, file, false)?;
        let own = Self {
            path,
            epoch,
            lock: std::sync::Mutex::new(lock),
        };
        own.check()?;
        Ok(own)
    }

    /// The lock; with `force`, the file unlocked when another process holds the lock.
    fn lock(path: &Path, file: File, force: bool) -> Result<Hold, OwnershipError> {
        match Self::flock(path, file) {
            Ok(l) => Ok(Hold::Locked(l)),
            Err((Some(file), _)) if force => Ok(Hold::Unlocked(file)),
            Err((_, e)) => Err(e),
        }
    }

    /// The lock, or the error (with the file when another process holds the lock).
    fn flock(path: &Path, file: File) -> Result<Flock<File>, (Option<File>, OwnershipError)> {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(l),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => Err((
                Some(file),
                OwnershipError::Busy {
                    path: path.to_owned(),
                    holder: holder(path),
                },
            )),
            Err((_, e)) => Err((
                None,
                OwnershipError::Io {
                    path: path.to_owned(),
                    source: e.into(),
                },
            )),
        }
    }

    /// Takes `state_dir`'s ownership lock without waiting and without writing a new epoch,
    /// for `nsmctl release --offline`: `Ok(None)` when there is no ownership file, `Busy`
    /// (naming the holder) while a live process holds it. Dropping the lock unlocks it.
    pub fn lock_existing(state_dir: &Path) -> Result<Option<Flock<File>>, OwnershipError> {
        let path = state_dir.join(OWNER_FILE);
        match File::open(&path) {
            Ok(f) => Self::flock(&path, f).map(Some).map_err(|(_, e)| e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(OwnershipError::Io { path, source }),
        }
    }

    /// The epoch claimed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The ownership file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this node holds the lock (not after [`Ownership::claim_over`] while the old
    /// holder keeps it, nor after a release).
    pub fn locked(&self) -> bool {
        matches!(*self.hold(), Hold::Locked(_))
    }

    /// After [`Ownership::claim_over`]: takes the lock if the old holder let it go (its nsmd
    /// released the instance or stopped), so that a later claim without force is refused
    /// again. Returns whether this node holds the lock now.
    pub fn relock(&self) -> bool {
        let mut hold = self.hold();
        match std::mem::replace(&mut *hold, Hold::Released) {
            Hold::Unlocked(file) => {
                *hold = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(l) => Hold::Locked(l),
                    Err((file, _)) => Hold::Unlocked(file),
                };
            }
            other => *hold = other,
        }
        matches!(*hold, Hold::Locked(_))
    }

    fn hold(&self) -> std::sync::MutexGuard<'_, Hold> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives up ownership: unlocks the file (the epoch stays, for the next owner to
    /// increment). Every [`Fence::check`] fails from now on.
    pub fn release(&self) {
        let hold = std::mem::replace(&mut *self.hold(), Hold::Released);
        if let Hold::Locked(l) = hold
            && let Err((_, e)) = l.unlock()
        {
            tracing::warn!(path = %self.path.display(), "cannot unlock: {e}");
        }
    }
}

impl Fence for Ownership {
    fn check(&self) -> Result<(), OwnershipError> {
        if matches!(*self.hold(), Hold::Released) {
            return Err(OwnershipError::Released {
                path: self.path.clone(),
            });
        }
        let found = match std::fs::read_to_string(&self.path) {
            Ok(t) => parse_epoch(&t),
            Err(source) => {
                return Err(OwnershipError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        if found == self.epoch {
            Ok(())
        } else {
            Err(OwnershipError::Fenced {
                path: self.path.clone(),
                held: self.epoch,
                found,
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn epochs_grow_and_the_lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let a = Ownership::claim(d.path(), "a").unwrap();
        assert_eq!(a.epoch(), 1);
        assert!(matches!(
            Ownership::claim(d.path(), "b"),
            Err(OwnershipError::Busy { .. })
        ));
        a.check().unwrap();
        drop(a);
        let b = Ownership::claim(d.path(), "b").unwrap();
        assert_eq!(b.epoch(), 2);
        assert_eq!(read_epoch(d.path()).unwrap(), 2);
        match Ownership::lock_existing(d.path()) {
            Err(e @ OwnershipError::Busy { .. }) => {
                let pid = std::process::id();
                assert!(
                    e.to_string()
                        .contains(&format!("(epoch 2 owner b pid {pid})")),
                    "names the holder: {e}"
                );
            }
            other => panic!("held by b: {other:?}"),
        }
        assert_eq!(
            read_owner(d.path()).unwrap(),
            Some((2, "b".to_owned(), std::process::id()))
        );
        drop(b);
        let l = Ownership::lock_existing(d.path()).unwrap();
        assert!(l.is_some(), "free once b is gone");
        assert!(Ownership::claim(d.path(), "c").is_err(), "locked meanwhile");
        drop(l);
        assert_eq!(Ownership::claim(d.path(), "c").unwrap().epoch(), 3);
        let empty = tempfile::tempdir().unwrap();
        assert!(Ownership::lock_existing(empty.path()).unwrap().is_none());
        assert_eq!(read_owner(empty.path()).unwrap(), None);
    }

    #[test]
    fn resuming_keeps_the_epoch_unless_another_node_took_over() {
        let d = tempfile::tempdir().unwrap();
        let a = Ownership::claim(d.path(), "a").unwrap();
        assert!(
            matches!(
                Ownership::resume(d.path(), 1),
                Err(OwnershipError::Busy { .. })
            ),
            "not while the claim is held"
        );
        drop(a);
        let r = Ownership::resume(d.path(), 1).unwrap();
        assert_eq!(
            (r.epoch(), read_epoch(d.path()).unwrap()),
            (1, 1),
            "nothing written"
        );
        r.check().unwrap();
        drop(r);
        let b = Ownership::claim(d.path(), "b").unwrap();
        drop(b);
        assert!(matches!(
            Ownership::resume(d.path(), 1),
            Err(OwnershipError::Fenced {
                held: 1,
                found: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_forced_claim_fences_the_holder_and_takes_the_lock_once_it_is_free() {
        let d = tempfile::tempdir().unwrap();
        let a = Ownership::claim(d.path(), "a").unwrap();
        assert!(
            matches!(
                Ownership::claim(d.path(), "b"),
                Err(OwnershipError::Busy { .. })
            ),
            "without force a held lock refuses"
        );
        let b = Ownership::claim_over(d.path(), "b").unwrap();
        assert_eq!(b.epoch(), 2, "the next epoch, over the held lock");
        assert!(!b.locked(), "the old holder still has the lock");
        b.check().unwrap();
        assert!(
            matches!(
                a.check(),
                Err(OwnershipError::Fenced {
                    held: 1,
                    found: 2,
                    ..
                })
            ),
            "the old holder is fenced by the epoch"
        );
        assert!(!b.relock(), "not while the old holder keeps the lock");
        a.release();
        assert!(b.relock(), "taken once the old holder let it go");
        assert!(b.locked());
        assert!(
            matches!(
                Ownership::claim(d.path(), "c"),
                Err(OwnershipError::Busy { .. })
            ),
            "the new holder's lock refuses a claim without force"
        );
        b.release();
        assert!(matches!(b.check(), Err(OwnershipError::Released { .. })));
        assert!(!b.relock(), "nothing to take after a release");
        let c = Ownership::claim_over(d.path(), "c").unwrap();
        assert!(c.locked(), "a free lock is taken by a forced claim too");
        assert_eq!(c.epoch(), 3);
    }

    #[test]
    fn the_ownership_file_is_overwritten_whole_and_never_shrinks() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(OWNER_FILE);
        // Written by an older nsmd: short, unpadded.
        std::fs::write(&path, "epoch 3 owner a pid 1\n").unwrap();
        drop(Ownership::claim(d.path(), "b").unwrap());
        let t = std::fs::read_to_string(&path).unwrap();
        assert_eq!(t.len(), OWNER_LINE);
        assert!(
            t.starts_with("epoch 4 owner b pid ") && t.ends_with(" \n"),
            "{t:?}"
        );
        // A longer line than the padding (a long owner name), then a short one: the file
        // keeps its length and nothing of the long name is left.
        let long = "x".repeat(200);
        drop(Ownership::claim(d.path(), &long).unwrap());
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > OWNER_LINE as u64);
        drop(Ownership::claim(d.path(), "c").unwrap());
        let t = std::fs::read_to_string(&path).unwrap();
        assert_eq!(t.len() as u64, len, "never shrinks (no truncation)");
        assert_eq!(t.lines().count(), 1);
        assert!(!t.contains('x'), "the old line is covered whole: {t:?}");
        assert_eq!(read_epoch(d.path()).unwrap(), 6);
    }

    #[test]
    fn a_stale_owner_is_fenced() {
        let d = tempfile::tempdir().unwrap();
        let a = Ownership::claim(d.path(), "a").unwrap();
        // Another node took over behind a lock this node could not see (shared storage
        // without working locks): the epoch moved on.
        std::fs::write(d.path().join(OWNER_FILE), "epoch 7 owner b pid 1\n").unwrap();
        assert!(matches!(
            a.check(),
            Err(OwnershipError::Fenced {
                held: 1,
                found: 7,
                ..
            })
        ));
    }
}

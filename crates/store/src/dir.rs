//! The state directory: `sm/`, `sm.bak/`, `state`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;

use crate::disk::{Disk, FileKind, Opened, RealDisk};
use crate::error::{SkipReason, StoreError};
use crate::name::{self, file_name, is_temp};
use crate::record::Record;
use crate::sync::{Counters, SyncMode};

/// The most bytes read from one record file. nsmd writes one line per `my_name` into a file
/// (a line is at most 1095 bytes, typically under 100); a bigger file is reported and skipped.
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// The most temp files written before they are made durable (bounds open descriptors).
const SYNC_CHUNK: usize = 64;

/// `NAME_MAX`: names found by a scan may be this long (nfs-utils may have written them).
const NAME_MAX: usize = 255;

/// Mode of directories nsmd creates (as nfs-utils' `make install` does).
const DIR_MODE: u32 = 0o755;
/// Mode of record files (nfs-utils creates them 0600).
const RECORD_MODE: u32 = 0o600;
/// Mode of the state file (nfs-utils: 0644).
const STATE_MODE: u32 = 0o644;

const STATE_FILE: &str = "state";

/// Which record directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// `sm/`: the hosts being monitored.
    Sm,
    /// `sm.bak/`: the hosts still to be notified of our restart.
    Bak,
}

impl Dir {
    /// The directory's name under the base directory.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sm => "sm",
            Self::Bak => "sm.bak",
        }
    }
}

/// What [`StateDir::load`] did not load, and the temporary files it removed. Nothing in
/// `skipped` or `leftovers` was changed or deleted.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Files that were skipped, with the reason.
    pub skipped: Vec<Skipped>,
    /// Temporary files left by an interrupted write and left in place: nfs-utils 2.6's
    /// `X.new`, and `.X.new` names that are not regular files or could not be removed. Never
    /// loaded as hosts.
    pub leftovers: Vec<PathBuf>,
    /// Temporary files of interrupted writes (`.X.new`, nsmd's and nfs-utils 2.8's scheme, `X`
    /// a valid record file name) that were removed: regular files only, never followed.
    pub removed: Vec<PathBuf>,
}

impl LoadReport {
    /// Whether nothing was skipped and no leftover was found or removed.
    pub fn is_clean(&self) -> bool {
        self.skipped.is_empty() && self.leftovers.is_empty() && self.removed.is_empty()
    }

    /// The first file skipped because it could not be read ([`SkipReason::Unreadable`], a
    /// transient `EIO` as much as a permission), as an error; damaged files (unparsable,
    /// empty, too large, badly named, not regular) are not errors. For callers that must not
    /// go on without a record: a takeover would serve without that client, an announcement
    /// would leave that peer unnotified.
    pub fn unreadable(&self) -> Result<(), StoreError> {
        match self.skipped.iter().find_map(|s| match &s.reason {
            SkipReason::Unreadable(e) => Some((&s.path, e)),
            _ => None,
        }) {
            Some((path, source)) => Err(StoreError::RecordUnreadable {
                path: path.clone(),
                source: Arc::clone(source),
            }),
            None => Ok(()),
        }
    }
}

/// One skipped file.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// A state directory: `base/sm`, `base/sm.bak`, `base/state`.
///
/// Every operation opens the directories afresh (nothing is cached), so replacing or
/// remounting the directory between calls is seen. Writes through one `StateDir` are
/// serialised by an internal lock; two `StateDir`s (or two processes) on the same directory
/// must not write the same file concurrently.
///
/// The file system is reached through a [`Disk`]: [`RealDisk`] (the system calls) unless a
/// directory is opened on another one with [`StateDir::open_on`] (a simulated disk in tests).
#[derive(Debug)]
pub struct StateDir<D: Disk = RealDisk> {
    disk: D,
    base: PathBuf,
    lock: Mutex<Pending>,
}

/// What the writes of this `StateDir` still owe the disk (under its lock).
#[derive(Debug, Default)]
struct Pending {
    /// A [`StateDir::retire`] moved files but could not fsync `sm.bak/`: `sm/` must not be
    /// fsynced before `sm.bak/` is, or the removals from `sm/` could reach the disk without
    /// the files' new names in `sm.bak/`, and a power cut would lose those peers.
    bak_unsynced: bool,
    /// A write of the state file failed at or after its rename: the number in the file may
    /// not be durable, and must be before it is handed out.
    state_unsynced: bool,
    /// How many times [`StateDir::retire`] ran (see [`StateDir::retires`]).
    retires: u64,
}

/// One file to write in a batch.
pub(crate) struct Item<'a> {
    pub(crate) dir: Dir,
    pub(crate) file: &'a str,
    pub(crate) records: &'a [Record],
    /// Written only if [`StateDir::retires`] still gives this (otherwise
    /// [`StoreError::Retired`]).
    pub(crate) unless_retired_since: Option<u64>,
}

/// A directory opened for one operation.
struct OpenDir<D: Disk> {
    fd: D::Dir,
    path: PathBuf,
    /// Owner to give new files: the directory's, when we are root and it is not.
    chown: Option<(u32, u32)>,
}

impl StateDir {
    /// Opens (creating `base`, `sm/` and `sm.bak/` if missing, mode 0755 like nfs-utils'
    /// install) without touching existing files' ownership or modes. Every directory it
    /// creates is made durable (its parent is fsynced); and at every open `sm.bak/`, `base`
    /// and its parent are fsynced, so that what an earlier attempt or process left half done
    /// is durable before anything is written (three directory fsyncs; an unreadable parent,
    /// `EACCES`, is only logged).
    pub fn open(base: &Path) -> Result<Self, StoreError> {
        Self::open_on(RealDisk, base)
    }
}

impl<D: Disk> StateDir<D> {
    /// [`StateDir::open`] on another [`Disk`] than the real one.
    pub fn open_on(disk: D, base: &Path) -> Result<Self, StoreError> {
        let base = std::path::absolute(base).map_err(|e| StoreError::io("resolve", base, e))?;
        mkdir(&disk, &base, true)?;
        for d in [Dir::Sm, Dir::Bak] {
            mkdir(&disk, &base.join(d.name()), false)?;
        }
        // Made durable at every open, whether created now or not (tests/sim.rs):
        // - `sm.bak/` first: a retire cut short by a crash of the process may have moved files
        //   that the next fsync of `sm/` would make half durable (see `bak_before_sm`);
        // - `base` and its parent: a directory made by an attempt that failed or crashed before
        //   its parent was fsynced exists without being durable, and nothing tells it from one
        //   that is; a power cut could take it with every record acknowledged in it since
        //   (seeds 167 and 824).
        let fd = open_dir_fd(&disk, None, &base)?;
        let bak = base.join(Dir::Bak.name());
        let bak_fd = open_dir_fd(&disk, Some((&fd, Dir::Bak.name())), &bak)?;
        disk.sync_dir(&bak_fd)
            .map_err(|e| StoreError::io("fsync", &bak, e))?;
        disk.sync_dir(&fd)
            .map_err(|e| StoreError::io("fsync", &base, e))?;
        if let Some(parent) = base.parent() {
            // The parent may be one nsmd cannot read (a service instance's directory under a
            // 0711 mount point): then only warn. An I/O error fails.
            match disk.open_dir(parent) {
                Ok(fd) => disk
                    .sync_dir(&fd)
                    .map_err(|e| StoreError::io("fsync", parent, e))?,
                Err(e) if is_errno(&e, Errno::EACCES) || is_errno(&e, Errno::EPERM) => {
                    tracing::warn!(
                        "cannot open {} to make {} durable: {e}; if it was created just now, a power cut may take it",
                        parent.display(),
                        base.display()
                    );
                }
                Err(e) => return Err(StoreError::io("open directory", parent, e)),
            }
        }
        Ok(Self {
            disk,
            base,
            lock: Mutex::new(Pending::default()),
        })
    }

    /// The disk it is on.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// The base directory (absolute).
    pub fn path(&self) -> &Path {
        &self.base
    }

    /// The path of a record file.
    pub fn file_path(&self, dir: Dir, file: &str) -> PathBuf {
        self.base.join(dir.name()).join(file)
    }

    fn guard(&self) -> MutexGuard<'_, Pending> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Before an fsync of `sm/`: fsyncs `sm.bak/` if a failed [`retire`](Self::retire) left
    /// moves in it that are not durable (tests/sim.rs, seed 109: otherwise the next record
    /// written in `sm/` made the move's removal durable without its arrival, and a power cut
    /// lost an acknowledged peer).
    fn bak_before_sm(&self, g: &mut Pending, base: &D::Dir) -> Result<(), StoreError> {
        if !g.bak_unsynced {
            return Ok(());
        }
        let bak = self.open_dir(base, Dir::Bak)?;
        self.disk
            .sync_dir(&bak.fd)
            .map_err(|e| StoreError::io("fsync", &bak.path, e))?;
        g.bak_unsynced = false;
        Ok(())
    }

    fn open_base(&self) -> Result<D::Dir, StoreError> {
        open_dir_fd(&self.disk, None, &self.base)
    }

    fn open_dir(&self, base: &D::Dir, dir: Dir) -> Result<OpenDir<D>, StoreError> {
        let path = self.base.join(dir.name());
        let fd = open_dir_fd(&self.disk, Some((base, dir.name())), &path)?;
        let (uid, gid) = self
            .disk
            .owner(&fd)
            .map_err(|e| StoreError::io("stat", &path, e))?;
        let chown = (self.disk.is_root() && uid != 0).then_some((uid, gid));
        Ok(OpenDir { fd, path, chown })
    }

    /// Loads every record in `sm/` (or `sm.bak/` with [`Dir::Bak`]).
    ///
    /// Scans regular files only (`lstat`; symlinks, subdirectories, FIFOs and names starting
    /// with `.` are skipped, as nfs-utils does), one [`Record`] per line, sorted by file name
    /// and then in file order. A file with an unparsable line, an unusable name, more than
    /// [`MAX_FILE_BYTES`], no content, or that cannot be read is reported in the
    /// [`LoadReport`] and skipped as a whole; it is never deleted or modified. Temporary files
    /// are never loaded as hosts: `.X.new` (nsmd's and nfs-utils 2.8's temp of the record file
    /// `X`), when it is a regular file (`lstat`), is an interrupted write's and is removed
    /// (`unlinkat`, which never follows a symlink; then one `fsync` of the directory) and
    /// listed in [`LoadReport::removed`]; anything else that looks like a temp (nfs-utils 2.6's
    /// `X.new`, a `.X.new` that is not a regular file or cannot be removed) is left in place
    /// and listed in [`LoadReport::leftovers`].
    ///
    /// Removing is safe only when no other process writes this directory: nsmd loads `sm/`
    /// under its state directory lock, `nsm-notify` loads `sm.bak/` under its run-once lock.
    ///
    /// File names must pass the rules of [`file_name`], except that they may be up to 255
    /// bytes long (nfs-utils may have written such a name; nsmd cannot rewrite it, since its
    /// temporary name would not fit). Other names are reported (`SkipReason::BadName`).
    ///
    /// Errors only when the directory itself cannot be opened or listed.
    #[allow(clippy::type_complexity)]
    pub fn load(&self, dir: Dir) -> Result<(Vec<(String, Record)>, LoadReport), StoreError> {
        // Not while this process writes: its own temp files would look like leftovers.
        let mut g = self.guard();
        let base = self.open_base()?;
        let d = self.open_dir(&base, dir)?;
        let mut names = list(&self.disk, &d)?;
        // In file name order: the order of the records loaded, whatever the threads.
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let threads = self
            .disk
            .parallel_reads()
            .clamp(1, names.len().div_ceil(1024).max(1));
        let chunk = names.len().div_ceil(threads).max(1);
        let parts: Vec<(Vec<(String, Record)>, LoadReport)> = if threads == 1 {
            vec![load_files(&self.disk, &d, &names)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = names
                    .chunks(chunk)
                    .map(|part| s.spawn(|| load_files(&self.disk, &d, part)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            })
        };
        drop(names);
        let mut report = LoadReport::default();
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
        for (records, r) in parts {
            out.extend(records);
            report.skipped.extend(r.skipped);
            report.removed.extend(r.removed);
            report.leftovers.extend(r.leftovers);
        }
        for s in &report.skipped {
            tracing::debug!(path = %s.path.display(), reason = %s.reason, "record file skipped (left as it is)");
        }
        for l in &report.leftovers {
            tracing::debug!(path = %l.display(), "temporary file left by an interrupted write (ignored)");
        }
        for r in &report.removed {
            tracing::info!(path = %r.display(), "temporary file of an interrupted write removed");
        }
        if !report.removed.is_empty() {
            // Made durable, so that a power cut does not bring them back to be reported again.
            let synced = match dir {
                Dir::Sm => self.bak_before_sm(&mut g, &base),
                Dir::Bak => Ok(()),
            }
            .and_then(|()| {
                self.disk
                    .sync_dir(&d.fd)
                    .map_err(|e| StoreError::io("fsync", &d.path, e))
            });
            if let Err(e) = synced {
                tracing::warn!("cannot make the removal of temporary files durable: {e}");
            }
        }
        Ok((out, report))
    }

    /// The state number per nfs-utils' `nsm_get_state` rules: a missing file or one shorter
    /// than 4 bytes gives 1 and forces a write (so the result is 3); an even value is made odd
    /// (+1); with `update`, the number is increased by 2. Whenever it is written, the write
    /// is atomic and durable (see [`StateDir::write`]; mode 0644). Without `update` and with a
    /// valid file nothing is written: an even value is made odd in memory only, as
    /// rpc.statd does.
    ///
    /// The file is exactly 4 bytes, the native-endian `int`. Like nfs-utils, only the first
    /// 4 bytes of a longer file are read. Unlike nfs-utils, a read error other than "missing"
    /// is an error rather than a reset to 1 (a reset would make the number go down), and so
    /// is an overflow past `i32::MAX`.
    pub fn state(&self, update: bool) -> Result<i32, StoreError> {
        let mut g = self.guard();
        let base = self.open_base()?;
        let path = self.base.join(STATE_FILE);
        let (state, write) = match read_state(&self.disk, &base, &path)? {
            None => (1, true),
            Some(s) => (if s & 1 == 0 { s.wrapping_add(1) } else { s }, update),
        };
        if !write {
            if g.state_unsynced {
                // The number read may be one whose write failed after its rename: handed out
                // now, it could go back at a power cut (tests/sim.rs, seed 566).
                self.disk
                    .sync_dir(&base)
                    .map_err(|e| StoreError::io("fsync", &self.base, e))?;
                g.state_unsynced = false;
            }
            return Ok(state);
        }
        let Some(state) = state.checked_add(2) else {
            return Err(StoreError::StateOverflow { path, state });
        };
        let tmp = temp_name(STATE_FILE);
        let open = OpenDir {
            fd: base,
            path: self.base.clone(),
            chown: None,
        };
        let disk = &self.disk;
        write_temp(disk, &open, &tmp, &state.to_ne_bytes(), STATE_MODE)?;
        // From the rename on, the file may hold a number that is not durable.
        g.state_unsynced = true;
        rename_temp(disk, &open, &tmp, STATE_FILE)?;
        disk.sync_dir(&open.fd)
            .map_err(|e| StoreError::io("fsync", &self.base, e))?;
        g.state_unsynced = false;
        tracing::debug!(state, path = %path.display(), "state number written");
        Ok(state)
    }

    /// Moves every regular, non-dot file of `sm/` to `sm.bak/` (rename, overwriting a file of
    /// the same name like nfs-utils; a name left in `sm/` because it was a second link to the
    /// file in `sm.bak/` is removed), then fsyncs `sm.bak/` and `sm/`. A file that cannot be
    /// looked at or moved stops the move with an error (`sm.bak/` and `sm/` are still fsynced). Temporary-file
    /// leftovers (`X.new`) stay in `sm/`. Returns how many files moved.
    pub fn retire(&self) -> Result<usize, StoreError> {
        let mut g = self.guard();
        g.retires += 1;
        let base = self.open_base()?;
        let sm = self.open_dir(&base, Dir::Sm)?;
        let bak = self.open_dir(&base, Dir::Bak)?;
        let mut moved = 0;
        // Whether a rename was made (even one whose file is not counted in `moved`).
        let mut renamed = false;
        let mut result = Ok(());
        let disk = &self.disk;
        for entry in list(disk, &sm)? {
            let bytes = entry.0.as_slice();
            if bytes.first() == Some(&b'.') || is_temp(bytes) {
                continue;
            }
            match disk.lstat(&sm.fd, bytes) {
                Ok(FileKind::Regular) => {}
                Ok(_) => continue,
                Err(e) if is_errno(&e, Errno::ENOENT) => continue,
                // A record that cannot be looked at is not "not a record": reporting success
                // would leave a monitored peer in sm/, never notified (tests/sim.rs, seed 28).
                Err(e) => {
                    result = Err(StoreError::io(
                        "stat",
                        sm.path.join(OsStr::from_bytes(bytes)),
                        e,
                    ));
                    break;
                }
            }
            if let Err(e) = disk.rename(&sm.fd, bytes, &bak.fd, bytes) {
                result = Err(StoreError::io(
                    "rename to sm.bak",
                    sm.path.join(OsStr::from_bytes(bytes)),
                    e,
                ));
                break;
            }
            renamed = true;
            // rename() does nothing when both names are links to one file, which a power cut
            // between the two fsyncs below leaves on a file system that makes each
            // directory durable on its own (tests/sim.rs, seed 42): the name in sm/ is then
            // removed, or the peer would stay monitored in sm/ as well as in sm.bak/.
            let still = match disk.lstat(&sm.fd, bytes) {
                Err(e) if is_errno(&e, Errno::ENOENT) => Ok(()),
                Err(e) => Err(StoreError::io(
                    "stat",
                    sm.path.join(OsStr::from_bytes(bytes)),
                    e,
                )),
                Ok(_) => disk.unlink(&sm.fd, bytes).map_err(|e| {
                    StoreError::io("unlink", sm.path.join(OsStr::from_bytes(bytes)), e)
                }),
            };
            if let Err(e) = still {
                result = Err(e);
                break;
            }
            moved += 1;
        }
        if let Err(e) = disk.sync_dir(&bak.fd) {
            // Until sm.bak/ is durable, nothing may make the removals from sm/ durable.
            // (tests/sim.rs, seed 21009: counting only `moved` missed a rename whose check
            // below failed.)
            g.bak_unsynced |= renamed;
            return Err(StoreError::io("fsync", &bak.path, e));
        }
        g.bak_unsynced = false;
        disk.sync_dir(&sm.fd)
            .map_err(|e| StoreError::io("fsync", &sm.path, e))?;
        result.map(|()| moved)
    }

    /// How many times [`retire`](Self::retire) was called on this `StateDir` (failed calls
    /// too). Read before loading `sm.bak/`, it lets a later write of what was loaded be made
    /// only if nothing was moved into `sm.bak/` since ([`Committer::commit_unless_retired`]):
    /// a peer monitored again and moved there by a restart is not removed by the removal an
    /// older announcement queued when that peer acknowledged the older state.
    ///
    /// [`Committer::commit_unless_retired`]: crate::Committer::commit_unless_retired
    pub fn retires(&self) -> u64 {
        self.guard().retires
    }

    /// Rewrites `sm/<file>` (or `sm.bak/<file>`) durably with exactly these records, one line
    /// each, in order; an empty slice removes the file. Returns once the change is on stable
    /// storage.
    ///
    /// `file` must pass [`file_name`] and every record [`Record::check`]; otherwise nothing
    /// is written. The system calls, in order:
    ///
    /// 1. `openat(base)`, `openat(dir)` (`O_DIRECTORY`), `fstat(dir)`;
    /// 2. `unlinkat(".<file>.new")`, a leftover of an interrupted write, if any;
    /// 3. `openat(".<file>.new", O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600)`,
    ///    `fchmod(0600)` (whatever the umask), `fchown(uid, gid of the directory)` when
    ///    running as root and the directory is not root's (the owner nfs-utils' files get
    ///    after its privilege drop, so rpc.statd and sm-notify can rewrite them);
    /// 4. `write` until everything is written; `fsync(temp)`; `close`;
    /// 5. `renameat(".<file>.new", "<file>")`;
    /// 6. `fsync(dir)`.
    ///
    /// Removing is `unlinkat(<file>)` (a missing file is fine) and `fsync(dir)`. The temp
    /// name starts with a dot, so neither nsmd nor nfs-utils (2.6 or later) loads it.
    pub fn write(&self, dir: Dir, file: &str, records: &[Record]) -> Result<(), StoreError> {
        let item = Item {
            dir,
            file,
            records,
            unless_retired_since: None,
        };
        let mut results = self.write_batch(&[item], SyncMode::FsyncEach, &Counters::default());
        results.pop().unwrap_or(Ok(()))
    }

    /// Writes several files with one directory fsync per directory: every temp file is
    /// written (and fsynced, or one `syncfs` for all with [`SyncMode::SyncFs`]), then all are
    /// renamed, then each directory is fsynced once. Returns one result per item, in order.
    /// The items must name distinct files.
    pub(crate) fn write_batch(
        &self,
        items: &[Item<'_>],
        mode: SyncMode,
        counters: &Counters,
    ) -> Vec<Result<(), StoreError>> {
        let mut g = self.guard();
        let mut results: Vec<Result<(), StoreError>> = vec![Ok(()); items.len()];
        let base = match self.open_base() {
            Ok(b) => b,
            Err(e) => return vec![Err(e); items.len()],
        };
        let disk = &self.disk;
        let mut dirs: Vec<(Dir, Result<OpenDir<D>, StoreError>, bool)> = Vec::new();
        for d in [Dir::Sm, Dir::Bak] {
            if items.iter().any(|i| i.dir == d) {
                dirs.push((d, self.open_dir(&base, d), false));
            }
        }
        // Phase 1: temps (or removals); phase 2: make the temps durable. In chunks, so that
        // a huge batch does not hold too many descriptors open.
        let mut renames = Vec::new();
        for chunk in (0..items.len()).collect::<Vec<_>>().chunks(SYNC_CHUNK) {
            let mut unsynced = Vec::new();
            for &i in chunk {
                let item = &items[i];
                let Some((_, opened, dirty)) = dirs.iter_mut().find(|(d, _, _)| *d == item.dir)
                else {
                    continue;
                };
                let d = match opened {
                    Ok(d) => d,
                    Err(e) => {
                        results[i] = Err(e.clone());
                        continue;
                    }
                };
                if item.unless_retired_since.is_some_and(|n| n != g.retires) {
                    results[i] = Err(StoreError::Retired {
                        path: d.path.join(item.file),
                    });
                    continue;
                }
                match prepare(disk, d, item) {
                    Ok(Some((tmp, file))) => unsynced.push(Unsynced {
                        index: i,
                        path: d.path.join(&tmp),
                        tmp,
                        file,
                    }),
                    Ok(None) => *dirty = true,
                    Err(e) => results[i] = Err(e),
                }
            }
            if unsynced.is_empty() {
                continue;
            }
            for (i, tmp, r) in sync_temps(disk, &base, &self.base, unsynced, mode, counters) {
                match r {
                    Ok(()) => renames.push((i, tmp)),
                    Err(e) => {
                        let dir = items[i].dir;
                        if let Some((_, Ok(d), _)) = dirs.iter().find(|(d, _, _)| *d == dir) {
                            let _ = disk.unlink(&d.fd, tmp.as_bytes());
                        }
                        results[i] = Err(e);
                    }
                }
            }
        }
        // Phase 3: renames.
        for (i, tmp) in renames {
            let item = &items[i];
            if let Some((_, Ok(d), dirty)) = dirs.iter_mut().find(|(d, _, _)| *d == item.dir) {
                match rename_temp(disk, d, &tmp, item.file) {
                    Ok(()) => *dirty = true,
                    Err(e) => results[i] = Err(e),
                }
            }
        }
        // Phase 4: one fsync per directory that changed.
        for (which, d, dirty) in &dirs {
            let (Ok(d), true) = (d, *dirty) else { continue };
            let before = match which {
                Dir::Sm => self.bak_before_sm(&mut g, &base),
                Dir::Bak => Ok(()),
            };
            counters.dir_fsync();
            let synced = before.and_then(|()| {
                disk.sync_dir(&d.fd)
                    .map_err(|e| StoreError::io("fsync", &d.path, e))
            });
            if let Err(e) = synced {
                for (i, item) in items.iter().enumerate() {
                    if item.dir == *which && results[i].is_ok() {
                        results[i] = Err(e.clone());
                    }
                }
            }
        }
        results
    }
}

/// Validates an item and writes its temp (returning the temp name), or removes the file
/// (returning `None`).
#[allow(clippy::type_complexity)]
fn prepare<D: Disk>(
    disk: &D,
    d: &OpenDir<D>,
    item: &Item<'_>,
) -> Result<Option<(String, D::File)>, StoreError> {
    let name = file_name(item.file.as_bytes()).map_err(|source| StoreError::Name {
        name: item.file.to_owned(),
        dir: d.path.clone(),
        source,
    })?;
    let tmp = temp_name(name);
    if item.records.is_empty() {
        remove(disk, d, &tmp)?;
        remove(disk, d, name)?;
        return Ok(None);
    }
    let mut content = Vec::new();
    for (index, r) in item.records.iter().enumerate() {
        r.check().map_err(|source| StoreError::Record {
            path: d.path.join(name),
            index,
            source,
        })?;
        content.extend_from_slice(&r.to_line());
    }
    let file = write_temp_unsynced(disk, d, &tmp, &content, RECORD_MODE)?;
    Ok(Some((tmp, file)))
}

/// A temp file written but not yet durable.
struct Unsynced<D: Disk> {
    /// Index of its item.
    index: usize,
    /// Its name in the directory.
    tmp: String,
    /// Its full path, for errors.
    path: PathBuf,
    file: D::File,
}

/// Makes written temp files durable according to `mode`; returns each with its result. On
/// failure the temp file is left for the next write of that file to replace.
fn sync_temps<D: Disk>(
    disk: &D,
    base: &D::Dir,
    base_path: &Path,
    files: Vec<Unsynced<D>>,
    mode: SyncMode,
    counters: &Counters,
) -> Vec<(usize, String, Result<(), StoreError>)> {
    let fsync_one = |u: Unsynced<D>| {
        counters.file_fsync();
        let r = disk
            .sync_file(&u.file)
            .map_err(|e| StoreError::io("fsync", u.path, e));
        (u.index, u.tmp, r)
    };
    match mode {
        SyncMode::FsyncEach => files.into_iter().map(fsync_one).collect(),
        SyncMode::FsyncParallel => {
            let threads = files.len().min(disk.parallel_fsyncs()).max(1);
            let mut lanes: Vec<Vec<Unsynced<D>>> = (0..threads).map(|_| Vec::new()).collect();
            for (n, f) in files.into_iter().enumerate() {
                lanes[n % threads].push(f);
            }
            let mut lanes = lanes.into_iter();
            let own = lanes.next().unwrap_or_default();
            std::thread::scope(|s| {
                let helpers: Vec<_> = lanes
                    .map(|lane| s.spawn(|| lane.into_iter().map(fsync_one).collect::<Vec<_>>()))
                    .collect();
                let mut out: Vec<_> = own.into_iter().map(fsync_one).collect();
                for h in helpers {
                    match h.join() {
                        Ok(v) => out.extend(v),
                        Err(p) => std::panic::resume_unwind(p),
                    }
                }
                out
            })
        }
        SyncMode::SyncFs => {
            counters.syncfs();
            let r = disk
                .syncfs(base)
                .map_err(|e| StoreError::io("syncfs", base_path, e));
            files
                .into_iter()
                .map(|u| (u.index, u.tmp, r.clone()))
                .collect()
        }
    }
}

/// `.<name>.new`.
fn temp_name(name: &str) -> String {
    format!(".{name}{}", name::TEMP_SUFFIX)
}

fn remove<D: Disk>(disk: &D, d: &OpenDir<D>, name: &str) -> Result<(), StoreError> {
    match disk.unlink(&d.fd, name.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, Errno::ENOENT) => Ok(()),
        Err(e) => Err(StoreError::io("unlink", d.path.join(name), e)),
    }
}

fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno as i32)
}

/// Creates the temp file exclusively, sets mode and owner, writes `content`; no fsync.
fn write_temp_unsynced<D: Disk>(
    disk: &D,
    d: &OpenDir<D>,
    tmp: &str,
    content: &[u8],
    mode: u32,
) -> Result<D::File, StoreError> {
    let path = || d.path.join(tmp);
    remove(disk, d, tmp)?;
    let mut file = disk
        .create(&d.fd, tmp.as_bytes(), mode)
        .map_err(|e| StoreError::io("create", path(), e))?;
    let result = (|| {
        disk.chmod(&file, mode)
            .map_err(|e| StoreError::io("chmod", path(), e))?;
        if let Some((uid, gid)) = d.chown {
            disk.chown(&file, uid, gid)
                .map_err(|e| StoreError::io("chown", path(), e))?;
        }
        disk.write_all(&mut file, content)
            .map_err(|e| StoreError::io("write", path(), e))
    })();
    match result {
        Ok(()) => Ok(file),
        Err(e) => {
            drop(file);
            let _ = disk.unlink(&d.fd, tmp.as_bytes());
            Err(e)
        }
    }
}

fn write_temp<D: Disk>(
    disk: &D,
    d: &OpenDir<D>,
    tmp: &str,
    content: &[u8],
    mode: u32,
) -> Result<(), StoreError> {
    let file = write_temp_unsynced(disk, d, tmp, content, mode)?;
    disk.sync_file(&file)
        .map_err(|e| StoreError::io("fsync", d.path.join(tmp), e))
}

fn rename_temp<D: Disk>(disk: &D, d: &OpenDir<D>, tmp: &str, name: &str) -> Result<(), StoreError> {
    disk.rename(&d.fd, tmp.as_bytes(), &d.fd, name.as_bytes())
        .map_err(|e| {
            let _ = disk.unlink(&d.fd, tmp.as_bytes());
            StoreError::io("rename", d.path.join(name), e)
        })
}

/// Reads the state file: `None` when missing or shorter than 4 bytes.
fn read_state<D: Disk>(disk: &D, base: &D::Dir, path: &Path) -> Result<Option<i32>, StoreError> {
    let buf = match disk.read_head(base, STATE_FILE.as_bytes(), 4) {
        Ok(buf) => buf,
        Err(e) if is_errno(&e, Errno::ENOENT) => {
            tracing::info!(path = %path.display(), "initializing NSM state");
            return Ok(None);
        }
        Err(e) => {
            return Err(StoreError::StateUnreadable {
                path: path.to_owned(),
                source: Arc::new(e),
            });
        }
    };
    match <[u8; 4]>::try_from(buf.as_slice()) {
        Ok(b) => Ok(Some(i32::from_ne_bytes(b))),
        Err(_) => {
            tracing::warn!(path = %path.display(), len = buf.len(), "state file shorter than 4 bytes; initializing NSM state");
            Ok(None)
        }
    }
}

/// Creates `path` and its missing parents (mode exactly 0755) and makes each new directory
/// durable (its parent is fsynced), so that a power cut cannot take the state directory with
/// the records written in it. An existing directory is left as it is; anything else at `path`
/// is an error.
pub fn create_dir_durably(path: &Path) -> Result<(), StoreError> {
    mkdir(&RealDisk, path, true)
}

/// Creates a directory (mode exactly 0755) if it is missing; checks it is a directory. A
/// directory it creates is made durable (its parent is fsynced): otherwise a power cut could
/// take `sm/`, or the whole state directory, with every record written in it since.
fn mkdir<D: Disk>(disk: &D, path: &Path, recursive: bool) -> Result<(), StoreError> {
    match disk.stat_path(path) {
        Ok(FileKind::Directory) => return Ok(()),
        Ok(_) => {
            return Err(StoreError::NotADirectory {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("stat", path, e)),
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let (true, Some(parent)) = (recursive, parent) {
        mkdir(disk, parent, true)?;
    }
    match disk.mkdir(path, DIR_MODE) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return mkdir(disk, path, false),
        Err(e) => return Err(StoreError::io("create directory", path, e)),
    }
    disk.chmod_path(path, DIR_MODE)
        .map_err(|e| StoreError::io("chmod", path, e))?;
    if let Some(parent) = parent {
        let fd = open_dir_fd(disk, None, parent)?;
        disk.sync_dir(&fd)
            .map_err(|e| StoreError::io("fsync", parent, e))?;
    }
    Ok(())
}

fn open_dir_fd<D: Disk>(
    disk: &D,
    at: Option<(&D::Dir, &str)>,
    path: &Path,
) -> Result<D::Dir, StoreError> {
    let r = match at {
        Some((base, name)) => disk.open_dir_at(base, name.as_bytes()),
        None => disk.open_dir(path),
    };
    r.map_err(|e| {
        if is_errno(&e, Errno::ENOTDIR) {
            StoreError::NotADirectory {
                path: path.to_owned(),
            }
        } else {
            StoreError::io("open directory", path, e)
        }
    })
}

/// The names in a directory (without `.` and `..`).
#[allow(clippy::type_complexity)]
fn list<D: Disk>(disk: &D, d: &OpenDir<D>) -> Result<Vec<(Vec<u8>, Option<FileKind>)>, StoreError> {
    disk.list(&d.fd)
        .map_err(|e| StoreError::io("list directory", &d.path, e))
}

/// Removes `name` if it is `.X.new` for a valid record file name `X` and a regular file (not
/// followed); whether it did.
fn interrupted_write<D: Disk>(disk: &D, d: &OpenDir<D>, name: &[u8]) -> bool {
    let Some(file) = name
        .strip_prefix(b".")
        .and_then(|n| n.strip_suffix(name::TEMP_SUFFIX.as_bytes()))
    else {
        return false;
    };
    if file_name(file).is_err() {
        return false;
    }
    match disk.lstat(&d.fd, name) {
        Ok(FileKind::Regular) => {}
        _ => return false,
    }
    // unlinkat removes the name, whatever it points to now: never follows a symlink.
    match disk.unlink(&d.fd, name) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(path = %d.path.join(OsStr::from_bytes(name)).display(), "cannot remove a temporary file of an interrupted write: {e}");
            false
        }
    }
}

/// Loads the entries `names` of `d` (in that order) as [`StateDir::load`] describes.
fn load_files<D: Disk>(
    disk: &D,
    d: &OpenDir<D>,
    names: &[(Vec<u8>, Option<FileKind>)],
) -> (Vec<(String, Record)>, LoadReport) {
    let mut report = LoadReport::default();
    let mut out = Vec::with_capacity(names.len());
    for (bytes, kind) in names {
        let path = || d.path.join(OsStr::from_bytes(bytes));
        if is_temp(bytes) {
            if interrupted_write(disk, d, bytes) {
                report.removed.push(path());
            } else {
                report.leftovers.push(path());
            }
            continue;
        }
        if bytes.first() == Some(&b'.') {
            continue;
        }
        match load_file(disk, d, bytes, *kind) {
            Ok((name, records)) => {
                let others = records.len().saturating_sub(1);
                let mut records = records.into_iter();
                out.extend(records.by_ref().take(others).map(|r| (name.clone(), r)));
                if let Some(r) = records.next() {
                    out.push((name, r));
                }
            }
            Err(reason) => report.skipped.push(Skipped {
                path: path(),
                reason,
            }),
        }
    }
    (out, report)
}

/// Reads and parses one record file (never modifies it). `kind`: what the directory entry
/// said it is, if it did (else it is looked at first: a device is never opened).
fn load_file<D: Disk>(
    disk: &D,
    d: &OpenDir<D>,
    bytes: &[u8],
    kind: Option<FileKind>,
) -> Result<(String, Vec<Record>), SkipReason> {
    let name = name::checked(bytes, NAME_MAX)
        .map_err(SkipReason::BadName)?
        .to_owned();
    let unreadable = |e: io::Error| SkipReason::Unreadable(Arc::new(e));
    let kind = match kind {
        Some(k) => k,
        None => disk.lstat(&d.fd, bytes).map_err(unreadable)?,
    };
    if kind != FileKind::Regular {
        return Err(SkipReason::NotRegular {
            kind: kind.describe(),
        });
    }
    let (size, content) = match disk
        .read_file(&d.fd, bytes, MAX_FILE_BYTES as u64 + 1)
        .map_err(unreadable)?
    {
        Opened::Regular { size, content } => (size, content),
        Opened::Other(kind) => {
            return Err(SkipReason::NotRegular {
                kind: kind.describe(),
            });
        }
    };
    if content.len() > MAX_FILE_BYTES {
        return Err(SkipReason::TooLarge {
            size: size.max(content.len() as u64),
            max: MAX_FILE_BYTES,
        });
    }
    if content.is_empty() {
        return Err(SkipReason::Empty);
    }
    let records = content
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            Record::parse_line(line).map_err(|error| SkipReason::BadLine { line: i + 1, error })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name, records))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs::File;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use nix::sys::stat::Mode;
    use nix::unistd::{Gid, Uid, geteuid};

    use super::*;
    use crate::{NameError, ParseError};

    fn rec(mon: &str, my: &str, cookie: u8) -> Record {
        Record {
            mon_name: mon.as_bytes().to_vec(),
            my_name: my.as_bytes().to_vec(),
            my_prog: 100_021,
            my_vers: 4,
            my_proc: 16,
            priv_: [cookie; 16],
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// Every entry of a tree with its bytes (or its kind), to prove nothing changed.
    fn snapshot(p: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let content = if ft.is_file() {
                std::fs::read(e.path()).unwrap()
            } else if ft.is_symlink() {
                std::fs::read_link(e.path())
                    .unwrap()
                    .into_os_string()
                    .into_vec()
            } else {
                format!("{ft:?}").into_bytes()
            };
            out.push((e.path(), content));
        }
        out.sort();
        out
    }

    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn open_creates_layout_0755_and_keeps_existing() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("a/b/nfs");
        let s = StateDir::open(&base).unwrap();
        assert_eq!(s.path(), base);
        for d in ["", "sm", "sm.bak"] {
            assert_eq!(mode(&base.join(d)), 0o755, "{d}");
        }
        std::fs::set_permissions(base.join("sm"), std::fs::Permissions::from_mode(0o700)).unwrap();
        StateDir::open(&base).unwrap();
        assert_eq!(mode(&base.join("sm")), 0o700, "existing modes are kept");
        std::fs::write(t.path().join("file"), b"").unwrap();
        assert!(matches!(
            StateDir::open(&t.path().join("file")),
            Err(StoreError::NotADirectory { .. })
        ));
    }

    #[test]
    fn write_load_remove() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        let a = [rec("client1", "server1", 1), rec("client1", "server2", 2)];
        s.write(Dir::Sm, "client1", &a).unwrap();
        s.write(Dir::Bak, "client2", &[rec("client2", "server1", 3)])
            .unwrap();
        let path = t.path().join("sm/client1");
        assert_eq!(mode(&path), 0o600);
        let mut expected = a[0].to_line();
        expected.extend(a[1].to_line());
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        let (loaded, report) = s.load(Dir::Sm).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            loaded,
            vec![
                ("client1".into(), a[0].clone()),
                ("client1".into(), a[1].clone())
            ]
        );
        let (bak, _) = s.load(Dir::Bak).unwrap();
        assert_eq!(bak.len(), 1);
        // rewrite with fewer lines, then remove
        s.write(Dir::Sm, "client1", &a[1..]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), a[1].to_line());
        s.write(Dir::Sm, "client1", &[]).unwrap();
        assert!(!path.exists());
        s.write(Dir::Sm, "client1", &[]).unwrap();
        // no temp left anywhere
        assert_eq!(std::fs::read_dir(t.path().join("sm")).unwrap().count(), 0);
    }

    #[test]
    fn invalid_input_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        for bad in ["../x", "a/b", ".hidden", "", "x.new", "a b"] {
            let e = s.write(Dir::Sm, bad, &[rec("x", "y", 0)]).unwrap_err();
            assert!(matches!(e, StoreError::Name { .. }), "{bad}: {e}");
        }
        let e = s
            .write(Dir::Sm, "ok", &[rec("ok", "y", 0), rec("o k", "y", 0)])
            .unwrap_err();
        assert!(
            matches!(
                &e,
                StoreError::Record {
                    index: 1,
                    source: ParseError::BadNameByte { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("sm/ok"), "{e}");
        assert_eq!(std::fs::read_dir(t.path().join("sm")).unwrap().count(), 0);
    }

    #[test]
    fn state_follows_nfs_utils_rules() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        let f = t.path().join("state");
        let disk = || std::fs::read(&f).unwrap();
        // missing -> 1 -> forced write of 3, with or without update
        assert_eq!(s.state(false).unwrap(), 3);
        assert_eq!(disk(), 3i32.to_ne_bytes());
        assert_eq!(mode(&f), 0o644);
        assert_eq!(s.state(false).unwrap(), 3);
        assert_eq!(s.state(true).unwrap(), 5);
        assert_eq!(s.state(true).unwrap(), 7);
        assert_eq!(disk(), 7i32.to_ne_bytes());
        // even: odd in memory only without update; 4 -> 7 with update (as sm-notify)
        std::fs::write(&f, 8i32.to_ne_bytes()).unwrap();
        assert_eq!(s.state(false).unwrap(), 9);
        assert_eq!(disk(), 8i32.to_ne_bytes());
        std::fs::write(&f, 4i32.to_ne_bytes()).unwrap();
        assert_eq!(s.state(true).unwrap(), 7);
        // short files (Debian ships an empty one) start again
        for short in [&b""[..], b"\x09", b"\x09\x00\x00"] {
            std::fs::write(&f, short).unwrap();
            assert_eq!(s.state(false).unwrap(), 3);
            assert_eq!(disk(), 3i32.to_ne_bytes());
        }
        // a longer file: the first 4 bytes count, nothing written without update
        std::fs::write(&f, b"\x0b\x00\x00\x00\x99").unwrap();
        assert_eq!(s.state(false).unwrap(), 11);
        assert_eq!(disk().len(), 5);
        assert_eq!(s.state(true).unwrap(), 13);
        assert_eq!(disk(), 13i32.to_ne_bytes());
        // cannot grow any more
        std::fs::write(&f, i32::MAX.to_ne_bytes()).unwrap();
        assert_eq!(s.state(false).unwrap(), i32::MAX);
        assert!(matches!(
            s.state(true),
            Err(StoreError::StateOverflow {
                state: i32::MAX,
                ..
            })
        ));
        assert_eq!(disk(), i32::MAX.to_ne_bytes());
        // unreadable is an error, not a reset
        std::fs::remove_file(&f).unwrap();
        std::fs::create_dir(&f).unwrap();
        let e = s.state(true).unwrap_err();
        assert!(matches!(e, StoreError::StateUnreadable { .. }), "{e}");
        assert!(f.is_dir());
        // no temp left behind
        assert!(!t.path().join(".state.new").exists());
    }

    #[test]
    fn hostile_files_are_reported_skipped_and_untouched() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        let sm = t.path().join("sm");
        let good = rec("good", "server1", 7);
        s.write(Dir::Sm, "good", std::slice::from_ref(&good))
            .unwrap();
        let line = good.to_line();
        let w = |name: &str, content: &[u8]| std::fs::write(sm.join(name), content).unwrap();
        let mut long = line.clone();
        long.splice(75..75, vec![b'x'; 2000]);
        w("long-line", &long);
        w("missing-fields", b"0100007f 000186b5 00000003\n");
        w("non-hex", &[&b"zz"[..], &line[2..]].concat());
        let mut nul = line.clone();
        nul[71] = 0;
        w("nul", &nul);
        w("one-bad-line", &[&line[..], b"garbage\n"].concat());
        w("empty", b"");
        w("blank-line", &[&line[..], b"\n"].concat());
        File::create(sm.join("huge"))
            .unwrap()
            .set_len(10 << 20)
            .unwrap();
        symlink("/etc/passwd", sm.join("passwd-link")).unwrap();
        std::fs::create_dir(sm.join("subdir")).unwrap();
        std::fs::write(sm.join("subdir/inner"), &line).unwrap();
        nix::unistd::mkfifo(&sm.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        w("hôte-ünïcode", &line);
        w("bad-unicode-content-ü", b"\xff\xfe\n");
        std::fs::write(sm.join(OsStr::from_bytes(b"not-utf8-\xff")), &line).unwrap();
        std::fs::write(sm.join(OsStr::from_bytes(b"ctl\x1bname")), &line).unwrap();
        w("nbsp\u{a0}name", &line);
        w(".hidden", &line);
        w("client1.new", &line);
        // A temp name that is not a regular file: left alone, never followed.
        symlink("/etc/passwd", sm.join(".client1.new")).unwrap();
        let before = snapshot(&sm);

        let (loaded, report) = s.load(Dir::Sm).unwrap();
        assert_eq!(
            loaded,
            vec![
                ("good".to_owned(), good.clone()),
                ("hôte-ünïcode".to_owned(), good.clone())
            ]
        );
        // Damage and unusable files are skipped, never an error (only an unreadable file is).
        report.unreadable().unwrap();
        let reason = |name: &[u8]| {
            let p = sm.join(OsStr::from_bytes(name));
            report
                .skipped
                .iter()
                .find(|s| s.path == p)
                .map(|s| s.reason.clone())
                .unwrap_or_else(|| panic!("{} not reported: {report:#?}", p.display()))
        };
        assert!(matches!(
            reason(b"long-line"),
            SkipReason::BadLine {
                line: 1,
                error: ParseError::LineTooLong { .. }
            }
        ));
        assert!(matches!(
            reason(b"missing-fields"),
            SkipReason::BadLine { .. }
        ));
        assert!(matches!(
            reason(b"non-hex"),
            SkipReason::BadLine {
                error: ParseError::BadHex { .. },
                ..
            }
        ));
        assert!(matches!(
            reason(b"nul"),
            SkipReason::BadLine {
                error: ParseError::BadNameByte { byte: 0, .. },
                ..
            }
        ));
        assert!(matches!(
            reason(b"one-bad-line"),
            SkipReason::BadLine { line: 2, .. }
        ));
        assert!(matches!(
            reason(b"blank-line"),
            SkipReason::BadLine { line: 2, .. }
        ));
        assert!(matches!(reason(b"empty"), SkipReason::Empty));
        assert!(matches!(
            reason(b"huge"),
            SkipReason::TooLarge { size, .. } if size == 10 << 20
        ));
        assert!(matches!(
            reason(b"passwd-link"),
            SkipReason::NotRegular {
                kind: "symbolic link"
            }
        ));
        assert!(matches!(
            reason(b"subdir"),
            SkipReason::NotRegular { kind: "directory" }
        ));
        assert!(matches!(
            reason(b"fifo"),
            SkipReason::NotRegular { kind: "FIFO" }
        ));
        assert!(matches!(
            reason(b"bad-unicode-content-\xc3\xbc"),
            SkipReason::BadLine { .. }
        ));
        assert!(matches!(
            reason(b"not-utf8-\xff"),
            SkipReason::BadName(NameError::NotUtf8 { .. })
        ));
        assert!(matches!(
            reason(b"ctl\x1bname"),
            SkipReason::BadName(NameError::Control { offset: 3 })
        ));
        assert!(matches!(
            reason("nbsp\u{a0}name".as_bytes()),
            SkipReason::BadName(NameError::Control { offset: 4 })
        ));
        assert_eq!(report.skipped.len(), 15, "{report:#?}");
        let mut leftovers = report.leftovers.clone();
        leftovers.sort();
        assert_eq!(
            leftovers,
            vec![sm.join(".client1.new"), sm.join("client1.new")]
        );
        // every message names the problem
        for s in &report.skipped {
            assert!(!s.reason.to_string().is_empty());
        }
        assert_eq!(snapshot(&sm), before, "load changed the directory");
    }

    #[test]
    fn interrupted_write_leaves_old_file_and_is_not_a_host() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        let old = rec("client1", "server1", 1);
        s.write(Dir::Sm, "client1", std::slice::from_ref(&old))
            .unwrap();
        // A crash after the temp file was written, before the rename: a complete temp, and
        // a torn one for another host that was never renamed either.
        let new = rec("client1", "server1", 2);
        std::fs::write(t.path().join("sm/.client1.new"), new.to_line()).unwrap();
        std::fs::write(t.path().join("sm/.client2.new"), &new.to_line()[..40]).unwrap();
        // and nfs-utils 2.6's naming
        std::fs::write(t.path().join("sm/client3.new"), new.to_line()).unwrap();
        let (loaded, report) = s.load(Dir::Sm).unwrap();
        assert_eq!(loaded, vec![("client1".to_owned(), old.clone())]);
        // nsmd's temps are removed (once: the next load finds none); 2.6's is left.
        let mut removed = report.removed.clone();
        removed.sort();
        assert_eq!(
            removed,
            vec![
                t.path().join("sm/.client1.new"),
                t.path().join("sm/.client2.new")
            ]
        );
        assert_eq!(report.leftovers, vec![t.path().join("sm/client3.new")]);
        assert!(report.skipped.is_empty());
        assert!(!t.path().join("sm/.client1.new").exists());
        assert!(!t.path().join("sm/.client2.new").exists());
        assert!(s.load(Dir::Sm).unwrap().1.removed.is_empty());
        // The next write replaces the stale temp.
        s.write(Dir::Sm, "client1", std::slice::from_ref(&new))
            .unwrap();
        assert_eq!(
            s.load(Dir::Sm).unwrap().0,
            vec![("client1".to_owned(), new)]
        );
        assert!(!t.path().join("sm/.client1.new").exists());
        // retire leaves the leftovers where they are
        assert_eq!(s.retire().unwrap(), 1);
        assert!(t.path().join("sm/client3.new").exists());
        assert!(!t.path().join("sm.bak/client3.new").exists());
    }

    #[test]
    fn only_regular_temps_of_record_names_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        let sm = t.path().join("sm");
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"keep me").unwrap();
        // Symlinks (to a file, dangling), a directory, a FIFO: never removed, never followed.
        symlink(&outside, sm.join(".link.new")).unwrap();
        symlink("/nonexistent", sm.join(".dangling.new")).unwrap();
        std::fs::create_dir(sm.join(".dir.new")).unwrap();
        nix::unistd::mkfifo(&sm.join(".fifo.new"), Mode::from_bits_truncate(0o600)).unwrap();
        // Names that are no temp of a record name.
        for name in ["..dot.new", ".bad name.new", ".x.new.new", ".new", "..new"] {
            std::fs::write(sm.join(name), b"x").unwrap();
        }
        // The one that goes.
        std::fs::write(sm.join(".host.example.new"), b"").unwrap();
        let before = {
            let mut v = snapshot(&sm);
            v.retain(|(p, _)| !p.ends_with(".host.example.new"));
            v
        };
        let (_, report) = s.load(Dir::Sm).unwrap();
        assert_eq!(report.removed, vec![sm.join(".host.example.new")]);
        assert_eq!(snapshot(&sm), before, "only .host.example.new was removed");
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
        assert!(sm.join(".dir.new").is_dir());
        assert!(std::fs::symlink_metadata(sm.join(".link.new")).is_ok());
        assert!(std::fs::symlink_metadata(sm.join(".dangling.new")).is_ok());
    }

    #[test]
    fn retire_moves_regular_files_and_overwrites() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        s.write(Dir::Sm, "a", &[rec("a", "me", 1)]).unwrap();
        s.write(Dir::Sm, "b", &[rec("b", "me", 2)]).unwrap();
        s.write(Dir::Bak, "b", &[rec("b", "old", 3)]).unwrap();
        s.write(Dir::Bak, "c", &[rec("c", "me", 4)]).unwrap();
        std::fs::create_dir(t.path().join("sm/dir")).unwrap();
        symlink("a", t.path().join("sm/link")).unwrap();
        std::fs::write(t.path().join("sm/.dot"), b"x").unwrap();
        assert_eq!(s.retire().unwrap(), 2);
        let (bak, report) = s.load(Dir::Bak).unwrap();
        assert!(report.is_clean());
        assert_eq!(
            bak,
            vec![
                ("a".to_owned(), rec("a", "me", 1)),
                ("b".to_owned(), rec("b", "me", 2)),
                ("c".to_owned(), rec("c", "me", 4)),
            ]
        );
        let mut left: Vec<_> = std::fs::read_dir(t.path().join("sm"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, [".dot", "dir", "link"]);
        assert_eq!(s.retire().unwrap(), 0);
    }

    #[test]
    fn batch_failures_stay_with_their_items() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        std::fs::remove_dir(t.path().join("sm.bak")).unwrap();
        let recs: Vec<Vec<Record>> = (0..150u8)
            .map(|i| vec![rec(&format!("h{i}"), "me", i)])
            .collect();
        let names: Vec<String> = (0..150).map(|i| format!("h{i}")).collect();
        let mut items: Vec<Item<'_>> = (0..150)
            .map(|i| Item {
                dir: Dir::Sm,
                file: &names[i],
                records: &recs[i],
                unless_retired_since: None,
            })
            .collect();
        // The last item's directory is missing: the chunk before it must still be synced.
        items.push(Item {
            dir: Dir::Sm,
            file: "bad/name",
            records: &recs[0],
            unless_retired_since: None,
        });
        items.push(Item {
            dir: Dir::Bak,
            file: "gone",
            records: &recs[0],
            unless_retired_since: None,
        });
        for mode in [
            SyncMode::FsyncEach,
            SyncMode::FsyncParallel,
            SyncMode::SyncFs,
        ] {
            let counters = Counters::default();
            let results = s.write_batch(&items, mode, &counters);
            assert_eq!(results.len(), 152);
            assert!(results[..150].iter().all(Result::is_ok), "{mode:?}");
            assert!(matches!(&results[150], Err(StoreError::Name { .. })));
            assert!(
                matches!(&results[151], Err(StoreError::Io { path, .. }) if path.ends_with("sm.bak")),
                "{:?}",
                results[151]
            );
            let (loaded, report) = s.load(Dir::Sm).unwrap();
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(loaded.len(), 150);
            let st = counters.snapshot();
            assert_eq!(st.dir_fsyncs, 1, "{mode:?}");
        }
    }

    #[test]
    fn new_files_get_the_directory_owner_when_root() {
        if !geteuid().is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        nix::unistd::chown(
            &t.path().join("sm"),
            Some(Uid::from_raw(4242)),
            Some(Gid::from_raw(4343)),
        )
        .unwrap();
        s.write(Dir::Sm, "h", &[rec("h", "me", 1)]).unwrap();
        s.write(Dir::Bak, "h", &[rec("h", "me", 1)]).unwrap();
        let m = std::fs::metadata(t.path().join("sm/h")).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4343));
        let m = std::fs::metadata(t.path().join("sm.bak/h")).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0));
        // the state file stays ours (nfs-utils: root)
        s.state(true).unwrap();
        let m = std::fs::metadata(t.path().join("state")).unwrap();
        assert_eq!(m.uid(), 0);
    }
}

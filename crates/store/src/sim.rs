//! [`SimDisk`]: a file system in memory for deterministic simulations (feature `sim`; never
//! in what ships). The store runs over it unchanged ([`StateDir::open_on`](crate::StateDir)).
//!
//! What survives a power cut follows the same strict reading of POSIX as the project's FUSE
//! test file system (`crates/faultfs`), which does it on a real mount:
//!
//! - a file's **data** is durable once [`Disk::sync_file`] of that file returned `Ok`;
//! - a **directory entry** (create, the new and the old name of a rename, unlink, mkdir) is
//!   durable once [`Disk::sync_dir`] of *that directory* returned `Ok`; a rename between two
//!   directories needs both;
//! - [`Disk::syncfs`] makes everything durable.
//!
//! Three ways for the machine to stop ([`SimDisk::die_at`] stops it in the middle of an
//! operation of the store: that call and every later one fail with `EIO` and change nothing):
//!
//! - [`SimDisk::power_cut`]: every directory goes back to the entries it had at its last
//!   fsync, every file to the data it had at its last fsync, and what no durable entry
//!   reaches is gone;
//! - [`SimDisk::power_cut_keeping_entries`]: file data not fsynced is lost, every directory
//!   entry stays (a journal that committed the metadata but not the data, as Jepsen's LazyFS);
//! - [`SimDisk::restart`]: the process died, the kernel did not: everything stays, durable or
//!   not (a later power cut can still take what was not durable).
//!
//! Each of them invalidates the handles opened before (they fail with `EIO`).
//!
//! InjectedError errors, each answered with nothing changed (a `write` may first write a part of
//! its data, as a short write followed by a failure does): from a seeded generator at a rate
//! ([`SimDisk::set_fault_rate`]; each operation draws from the errors it can really return:
//! `EIO` on reads, writes, fsyncs, renames and unlinks; `ENOSPC` on creates, writes, mkdirs and
//! renames; `EROFS` on every change), at a given operation number ([`SimDisk::fail_at`]), or
//! for a while ([`SimDisk::set_read_only`]: `EROFS` on every change; [`SimDisk::set_full`]:
//! `ENOSPC` where space is allocated).
//!
//! Deterministic: the same calls in the same order give the same results; maps are ordered,
//! nothing reads a clock, and [`Disk::parallel_fsyncs`] is 1 so that the store never calls it
//! from several threads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;

use crate::disk::{Disk, FileKind, Opened};

const ROOT: u64 = 1;

/// The operations of [`Disk`], to say which one an injected error hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimOp {
    /// [`Disk::stat_path`].
    StatPath,
    /// [`Disk::mkdir`].
    Mkdir,
    /// [`Disk::chmod_path`].
    ChmodPath,
    /// [`Disk::open_dir`] and [`Disk::open_dir_at`].
    OpenDir,
    /// [`Disk::owner`].
    Owner,
    /// [`Disk::list`].
    List,
    /// [`Disk::lstat`].
    Lstat,
    /// [`Disk::read_file`] and [`Disk::read_head`].
    Read,
    /// [`Disk::create`].
    Create,
    /// [`Disk::chmod`].
    Chmod,
    /// [`Disk::chown`].
    Chown,
    /// [`Disk::write_all`].
    Write,
    /// [`Disk::sync_file`].
    SyncFile,
    /// [`Disk::sync_dir`].
    SyncDir,
    /// [`Disk::syncfs`].
    Syncfs,
    /// [`Disk::rename`].
    Rename,
    /// [`Disk::unlink`].
    Unlink,
}

impl SimOp {
    /// The errors this operation can return on a real file system, for random injection.
    fn errors(self) -> &'static [Errno] {
        use Errno::{EIO, ENOSPC, EROFS};
        match self {
            Self::StatPath | Self::OpenDir | Self::Owner | Self::List | Self::Lstat => &[EIO],
            Self::Read => &[EIO],
            Self::Mkdir | Self::Create => &[EIO, ENOSPC, EROFS],
            Self::ChmodPath | Self::Chmod | Self::Chown => &[EIO, EROFS],
            Self::Write => &[EIO, ENOSPC, EROFS],
            Self::SyncFile | Self::SyncDir | Self::Syncfs => &[EIO],
            Self::Rename => &[EIO, ENOSPC, EROFS],
            Self::Unlink => &[EIO, EROFS],
        }
    }

    /// Whether it changes the file system (`EROFS` when read-only).
    fn changes(self) -> bool {
        matches!(
            self,
            Self::Mkdir
                | Self::ChmodPath
                | Self::Create
                | Self::Chmod
                | Self::Chown
                | Self::Write
                | Self::Rename
                | Self::Unlink
        )
    }

    /// Whether it needs free space (`ENOSPC` when full).
    fn allocates(self) -> bool {
        matches!(
            self,
            Self::Mkdir | Self::Create | Self::Write | Self::Rename
        )
    }
}

/// One error the disk injected: the operation's number, what it was, the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedError {
    /// The operation's number ([`SimDisk::ops`] before it).
    pub op: u64,
    /// Which operation.
    pub kind: SimOp,
    /// The error returned.
    pub errno: Errno,
}

#[derive(Debug, Clone)]
enum Kind {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<Vec<u8>, u64>,
        durable: BTreeMap<Vec<u8>, u64>,
    },
}

#[derive(Debug, Clone)]
struct Inode {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// splitmix64: small, fast, and the same on every platform. The one generator of every
/// simulation (this disk's faults, the store's and the cluster's seeded tests), so a seed means
/// the same draws everywhere.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True `percent` times in 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// True `per_mille` times in 1000.
    pub fn per_mille(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// One element of `v`, which must not be empty.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

#[derive(Debug)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Bumped at every cut or restart: handles opened before fail with `EIO`.
    generation: u64,
    /// Operations so far.
    ops: u64,
    /// The machine stops at this operation.
    die_at: Option<u64>,
    /// Stopped: every operation fails until a cut or a restart.
    dead: bool,
    rng: Rng,
    /// InjectedError errors per million operations.
    rate: u64,
    schedule: BTreeMap<u64, Errno>,
    read_only: bool,
    full: bool,
    injected: Vec<InjectedError>,
    cuts: u64,
}

fn err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl State {
    /// Counts the operation and decides whether it fails.
    fn enter(&mut self, kind: SimOp) -> io::Result<()> {
        let op = self.ops;
        self.ops += 1;
        if self.die_at == Some(op) {
            self.dead = true;
            self.die_at = None;
        }
        if self.dead {
            return Err(err(Errno::EIO));
        }
        let errno = if let Some(e) = self.schedule.remove(&op) {
            Some(e)
        } else if self.read_only && kind.changes() {
            Some(Errno::EROFS)
        } else if self.full && kind.allocates() {
            Some(Errno::ENOSPC)
        } else if self.rate > 0 && self.rng.below(1_000_000) < self.rate {
            let choices = kind.errors();
            Some(choices[self.rng.below(choices.len() as u64) as usize])
        } else {
            None
        };
        match errno {
            None => Ok(()),
            Some(errno) => {
                self.injected.push(InjectedError { op, kind, errno });
                Err(err(errno))
            }
        }
    }

    fn check(&self, handle_generation: u64) -> io::Result<()> {
        if handle_generation == self.generation {
            Ok(())
        } else {
            Err(err(Errno::EIO))
        }
    }

    fn entries(&self, ino: u64) -> io::Result<&BTreeMap<Vec<u8>, u64>> {
        match self.inodes.get(&ino).map(|i| &i.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(Kind::File { .. }) => Err(err(Errno::ENOTDIR)),
            None => Err(err(Errno::ENOENT)),
        }
    }

    fn entries_mut(&mut self, ino: u64) -> io::Result<&mut BTreeMap<Vec<u8>, u64>> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(Kind::File { .. }) => Err(err(Errno::ENOTDIR)),
            None => Err(err(Errno::ENOENT)),
        }
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<u64> {
        self.entries(dir)?
            .get(name)
            .copied()
            .ok_or_else(|| err(Errno::ENOENT))
    }

    fn kind(&self, ino: u64) -> FileKind {
        match self.inodes.get(&ino).map(|i| &i.kind) {
            Some(Kind::File { .. }) => FileKind::Regular,
            Some(Kind::Dir { .. }) => FileKind::Directory,
            None => FileKind::Unknown,
        }
    }

    /// The inode at an absolute path, and the path's last component with its parent.
    fn walk(&self, path: &Path) -> io::Result<u64> {
        let mut ino = ROOT;
        for c in components(path)? {
            ino = self.lookup(ino, &c)?;
        }
        Ok(ino)
    }

    fn new_inode(&mut self, kind: Kind, mode: u32) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                kind,
                mode: mode & 0o7777,
                uid: 0,
                gid: 0,
            },
        );
        ino
    }

    fn make_durable(&mut self, ino: u64) {
        match self.inodes.get_mut(&ino).map(|i| &mut i.kind) {
            Some(Kind::File { data, durable }) => durable.clone_from(data),
            Some(Kind::Dir { entries, durable }) => durable.clone_from(entries),
            None => {}
        }
    }

    fn stop(&mut self) {
        self.generation += 1;
        self.dead = false;
        self.die_at = None;
    }

    fn cut(&mut self, keep_entries: bool) {
        for i in self.inodes.values_mut() {
            match &mut i.kind {
                Kind::File { data, durable } => data.clone_from(durable),
                Kind::Dir { entries, durable } if keep_entries => durable.clone_from(entries),
                Kind::Dir { entries, durable } => entries.clone_from(durable),
            }
        }
        let mut reached = vec![ROOT];
        let mut keep = BTreeSet::new();
        while let Some(ino) = reached.pop() {
            if !keep.insert(ino) {
                continue;
            }
            if let Some(Kind::Dir { entries, .. }) = self.inodes.get(&ino).map(|i| &i.kind) {
                reached.extend(entries.values().copied());
            }
        }
        self.inodes.retain(|ino, _| keep.contains(ino));
        self.cuts += 1;
        self.stop();
    }
}

fn components(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
            // The store gives absolute, normalised paths.
            _ => return Err(err(Errno::EINVAL)),
        }
    }
    Ok(out)
}

/// A simulated disk. Cloning gives another handle to the same disk (the test keeps one to cut
/// the power under the store).
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("SimDisk")
            .field("inodes", &s.inodes.len())
            .field("ops", &s.ops)
            .field("generation", &s.generation)
            .finish_non_exhaustive()
    }
}

/// An open directory of a [`SimDisk`].
#[derive(Debug, Clone, Copy)]
pub struct SimDir {
    ino: u64,
    generation: u64,
}

/// A file of a [`SimDisk`] created for writing.
#[derive(Debug)]
pub struct SimFile {
    ino: u64,
    generation: u64,
    pos: usize,
}

impl SimDisk {
    /// An empty disk (only `/`), no faults; `seed` drives the injected errors.
    pub fn new(seed: u64) -> Self {
        let mut inodes = BTreeMap::new();
        inodes.insert(
            ROOT,
            Inode {
                kind: Kind::Dir {
                    entries: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        );
        Self {
            state: Arc::new(Mutex::new(State {
                inodes,
                next_ino: ROOT + 1,
                generation: 1,
                ops: 0,
                die_at: None,
                dead: false,
                rng: Rng(seed),
                rate: 0,
                schedule: BTreeMap::new(),
                read_only: false,
                full: false,
                injected: Vec::new(),
                cuts: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Operations so far (every [`Disk`] call counts one).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Stops the machine at operation number `op` (counted as [`ops`](Self::ops) counts): that
    /// call and all later ones fail with `EIO` and change nothing, until
    /// [`power_cut`](Self::power_cut), [`power_cut_keeping_entries`](Self::power_cut_keeping_entries)
    /// or [`restart`](Self::restart).
    pub fn die_at(&self, op: u64) {
        self.lock().die_at = Some(op);
    }

    /// Forgets a [`die_at`](Self::die_at) not reached yet.
    pub fn cancel_die(&self) {
        self.lock().die_at = None;
    }

    /// Whether the machine has stopped ([`die_at`](Self::die_at) was reached).
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Injects random errors into `per_million` operations out of a million.
    pub fn set_fault_rate(&self, per_million: u64) {
        self.lock().rate = per_million;
    }

    /// Makes operation number `op` fail with `errno`, whatever it is.
    pub fn fail_at(&self, op: u64, errno: Errno) {
        self.lock().schedule.insert(op, errno);
    }

    /// `EROFS` on every change while on, as after a remount read-only.
    pub fn set_read_only(&self, on: bool) {
        self.lock().read_only = on;
    }

    /// `ENOSPC` on every create, write, mkdir and rename while on.
    pub fn set_full(&self, on: bool) {
        self.lock().full = on;
    }

    /// Switches every injected error off (rate, schedule, read-only, full).
    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.rate = 0;
        s.schedule.clear();
        s.read_only = false;
        s.full = false;
    }

    /// The errors injected so far.
    pub fn injected(&self) -> Vec<InjectedError> {
        self.lock().injected.clone()
    }

    /// Power cut: only what was durable stays (see the module's documentation). Also ends a
    /// stop from [`die_at`](Self::die_at).
    pub fn power_cut(&self) {
        self.lock().cut(false);
    }

    /// Power cut that keeps every directory entry but loses file data not fsynced.
    pub fn power_cut_keeping_entries(&self) {
        self.lock().cut(true);
    }

    /// The process died but the machine did not: everything stays; handles opened before fail.
    pub fn restart(&self) {
        self.lock().stop();
    }

    /// How many power cuts so far.
    pub fn cuts(&self) -> u64 {
        self.lock().cuts
    }

    /// Every file and directory under `path` as it is now (durable or not): its path and, for
    /// a file, its data; in path order. For checks; counts as no operation.
    pub fn tree(&self, path: &Path) -> io::Result<Vec<(PathBuf, Option<Vec<u8>>)>> {
        let s = self.lock();
        let start = s.walk(path)?;
        let mut out = Vec::new();
        let mut todo = vec![(path.to_owned(), start)];
        while let Some((p, ino)) = todo.pop() {
            match s.inodes.get(&ino).map(|i| &i.kind) {
                Some(Kind::File { data, .. }) => out.push((p, Some(data.clone()))),
                Some(Kind::Dir { entries, .. }) => {
                    use std::os::unix::ffi::OsStrExt;
                    for (name, &child) in entries {
                        todo.push((p.join(std::ffi::OsStr::from_bytes(name)), child));
                    }
                    out.push((p, None));
                }
                None => {}
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Disk for SimDisk {
    type Dir = SimDir;
    type File = SimFile;

    fn stat_path(&self, path: &Path) -> io::Result<FileKind> {
        let mut s = self.lock();
        s.enter(SimOp::StatPath)?;
        let ino = s.walk(path)?;
        Ok(s.kind(ino))
    }

    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        let mut s = self.lock();
        s.enter(SimOp::Mkdir)?;
        let mut comps = components(path)?;
        let name = comps.pop().ok_or_else(|| err(Errno::EEXIST))?;
        let mut parent = ROOT;
        for c in comps {
            parent = s.lookup(parent, &c)?;
        }
        if s.entries(parent)?.contains_key(&name) {
            return Err(err(Errno::EEXIST));
        }
        let ino = s.new_inode(
            Kind::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
            mode,
        );
        s.entries_mut(parent)?.insert(name, ino);
        Ok(())
    }

    fn chmod_path(&self, path: &Path, mode: u32) -> io::Result<()> {
        let mut s = self.lock();
        s.enter(SimOp::ChmodPath)?;
        let ino = s.walk(path)?;
        if let Some(i) = s.inodes.get_mut(&ino) {
            i.mode = mode & 0o7777;
        }
        Ok(())
    }

    fn open_dir(&self, path: &Path) -> io::Result<SimDir> {
        let mut s = self.lock();
        s.enter(SimOp::OpenDir)?;
        let ino = s.walk(path)?;
        s.entries(ino)?;
        Ok(SimDir {
            ino,
            generation: s.generation,
        })
    }

    fn open_dir_at(&self, dir: &SimDir, name: &[u8]) -> io::Result<SimDir> {
        let mut s = self.lock();
        s.enter(SimOp::OpenDir)?;
        s.check(dir.generation)?;
        let ino = s.lookup(dir.ino, name)?;
        s.entries(ino)?;
        Ok(SimDir {
            ino,
            generation: s.generation,
        })
    }

    fn owner(&self, dir: &SimDir) -> io::Result<(u32, u32)> {
        let mut s = self.lock();
        s.enter(SimOp::Owner)?;
        s.check(dir.generation)?;
        let i = s.inodes.get(&dir.ino).ok_or_else(|| err(Errno::EIO))?;
        Ok((i.uid, i.gid))
    }

    fn is_root(&self) -> bool {
        false
    }

    fn list(&self, dir: &SimDir) -> io::Result<Vec<(Vec<u8>, Option<FileKind>)>> {
        let mut s = self.lock();
        s.enter(SimOp::List)?;
        s.check(dir.generation)?;
        // No kinds: every file is looked at with `lstat`, where faults are drawn.
        Ok(s.entries(dir.ino)?
            .keys()
            .map(|k| (k.clone(), None))
            .collect())
    }

    fn lstat(&self, dir: &SimDir, name: &[u8]) -> io::Result<FileKind> {
        let mut s = self.lock();
        s.enter(SimOp::Lstat)?;
        s.check(dir.generation)?;
        let ino = s.lookup(dir.ino, name)?;
        Ok(s.kind(ino))
    }

    fn read_file(&self, dir: &SimDir, name: &[u8], limit: u64) -> io::Result<Opened> {
        let mut s = self.lock();
        s.enter(SimOp::Read)?;
        s.check(dir.generation)?;
        let ino = s.lookup(dir.ino, name)?;
        match s.inodes.get(&ino).map(|i| &i.kind) {
            Some(Kind::File { data, .. }) => {
                let n = data.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
                Ok(Opened::Regular {
                    size: data.len() as u64,
                    content: data[..n].to_vec(),
                })
            }
            _ => Ok(Opened::Other(s.kind(ino))),
        }
    }

    fn read_head(&self, dir: &SimDir, name: &[u8], limit: u64) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        s.enter(SimOp::Read)?;
        s.check(dir.generation)?;
        let ino = s.lookup(dir.ino, name)?;
        match s.inodes.get(&ino).map(|i| &i.kind) {
            Some(Kind::File { data, .. }) => {
                let n = data.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
                Ok(data[..n].to_vec())
            }
            _ => Err(err(Errno::EISDIR)),
        }
    }

    fn create(&self, dir: &SimDir, name: &[u8], mode: u32) -> io::Result<SimFile> {
        let mut s = self.lock();
        s.enter(SimOp::Create)?;
        s.check(dir.generation)?;
        if s.entries(dir.ino)?.contains_key(name) {
            return Err(err(Errno::EEXIST));
        }
        let ino = s.new_inode(
            Kind::File {
                data: Vec::new(),
                durable: Vec::new(),
            },
            mode,
        );
        s.entries_mut(dir.ino)?.insert(name.to_vec(), ino);
        Ok(SimFile {
            ino,
            generation: s.generation,
            pos: 0,
        })
    }

    fn chmod(&self, file: &SimFile, mode: u32) -> io::Result<()> {
        let mut s = self.lock();
        s.enter(SimOp::Chmod)?;
        s.check(file.generation)?;
        if let Some(i) = s.inodes.get_mut(&file.ino) {
            i.mode = mode & 0o7777;
        }
        Ok(())
    }

    fn chown(&self, file: &SimFile, uid: u32, gid: u32) -> io::Result<()> {
        let mut s = self.lock();
        s.enter(SimOp::Chown)?;
        s.check(file.generation)?;
        if let Some(i) = s.inodes.get_mut(&file.ino) {
            (i.uid, i.gid) = (uid, gid);
        }
        Ok(())
    }

    fn write_all(&self, file: &mut SimFile, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        let failed = s.enter(SimOp::Write).err();
        s.check(file.generation)?;
        // A failed write may have written a part first (a short write, then the error);
        // never on a stopped machine.
        let n = match &failed {
            Some(_) if s.dead => return Err(err(Errno::EIO)),
            Some(e) if e.raw_os_error() == Some(Errno::EROFS as i32) => 0,
            Some(_) => s.rng.below(bytes.len() as u64 + 1) as usize,
            None => bytes.len(),
        };
        let pos = file.pos;
        if let Some(Kind::File { data, .. }) = s.inodes.get_mut(&file.ino).map(|i| &mut i.kind) {
            if data.len() < pos + n {
                data.resize(pos + n, 0);
            }
            data[pos..pos + n].copy_from_slice(&bytes[..n]);
        }
        file.pos += n;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn sync_file(&self, file: &SimFile) -> io::Result<()> {
        let mut s = self.lock();
        s.enter(SimOp::SyncFile)?;
        s.check(file.generation)?;
        s.make_durable(file.ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &SimDir) -> io::Result<()> {
        let mut s = self.lock();
        s.enter(SimOp::SyncDir)?;
        s.check(dir.generation)?;
        s.make_durable(dir.ino);
        Ok(())
    }

    fn syncfs(&self, dir: &SimDir) -> io::Result<()> {
        let mut s = self.lock();
        s.enter(SimOp::Syncfs)?;
        s.check(dir.generation)?;
        let all: Vec<u64> = s.inodes.keys().copied().collect();
        for ino in all {
            s.make_durable(ino);
        }
        Ok(())
    }

    fn rename(&self, from_dir: &SimDir, from: &[u8], to_dir: &SimDir, to: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        s.enter(SimOp::Rename)?;
        s.check(from_dir.generation)?;
        s.check(to_dir.generation)?;
        let ino = s.lookup(from_dir.ino, from)?;
        match s.lookup(to_dir.ino, to) {
            Ok(old) if old == ino => return Ok(()),
            Ok(old) => {
                let (old_dir, is_dir) = (
                    s.kind(old) == FileKind::Directory,
                    s.kind(ino) == FileKind::Directory,
                );
                if old_dir && !is_dir {
                    return Err(err(Errno::EISDIR));
                }
                if is_dir && (!old_dir || !s.entries(old)?.is_empty()) {
                    return Err(err(if old_dir {
                        Errno::ENOTEMPTY
                    } else {
                        Errno::ENOTDIR
                    }));
                }
            }
            Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => {}
            Err(e) => return Err(e),
        }
        s.entries_mut(from_dir.ino)?.remove(from);
        s.entries_mut(to_dir.ino)?.insert(to.to_vec(), ino);
        Ok(())
    }

    fn unlink(&self, dir: &SimDir, name: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        s.enter(SimOp::Unlink)?;
        s.check(dir.generation)?;
        let ino = s.lookup(dir.ino, name)?;
        if s.kind(ino) == FileKind::Directory {
            return Err(err(Errno::EISDIR));
        }
        s.entries_mut(dir.ino)?.remove(name);
        Ok(())
    }

    fn parallel_fsyncs(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn setup() -> (SimDisk, SimDir, SimDir, SimDir) {
        let d = SimDisk::new(7);
        for p in ["/s", "/s/a", "/s/b"] {
            d.mkdir(Path::new(p), 0o755).unwrap();
        }
        let root = d.open_dir(Path::new("/")).unwrap();
        d.syncfs(&root).unwrap();
        let s = d.open_dir(Path::new("/s")).unwrap();
        let a = d.open_dir_at(&s, b"a").unwrap();
        let b = d.open_dir_at(&s, b"b").unwrap();
        (d, s, a, b)
    }

    fn file(d: &SimDisk, dir: &SimDir, name: &[u8], data: &[u8], sync: bool) {
        let mut f = d.create(dir, name, 0o600).unwrap();
        d.write_all(&mut f, data).unwrap();
        if sync {
            d.sync_file(&f).unwrap();
        }
    }

    fn names(d: &SimDisk, path: &str) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        d.tree(Path::new(path))
            .unwrap()
            .into_iter()
            .skip(1)
            .collect()
    }

    #[test]
    fn a_cut_keeps_fsynced_data_and_entries_of_fsynced_directories_only() {
        let (d, _, a, b) = setup();
        file(&d, &a, b"x", b"xx", true);
        file(&d, &a, b"y", b"yy", false);
        d.sync_dir(&a).unwrap();
        file(&d, &a, b"z", b"zz", true); // entry never made durable
        // x moves to b/: only b/ is fsynced, so after a cut x is in both (two links).
        d.rename(&a, b"x", &b, b"x").unwrap();
        d.sync_dir(&b).unwrap();
        d.power_cut();
        assert_eq!(
            names(&d, "/s/a"),
            vec![
                (PathBuf::from("/s/a/x"), Some(b"xx".to_vec())),
                (PathBuf::from("/s/a/y"), Some(Vec::new())),
            ]
        );
        assert_eq!(
            names(&d, "/s/b"),
            vec![(PathBuf::from("/s/b/x"), Some(b"xx".to_vec()))]
        );
        // Handles from before the cut are dead.
        assert_eq!(
            d.list(&a).unwrap_err().raw_os_error(),
            Some(Errno::EIO as i32)
        );
    }

    #[test]
    fn a_cut_keeping_entries_loses_only_data() {
        let (d, _, a, _) = setup();
        file(&d, &a, b"x", b"xx", false);
        file(&d, &a, b"y", b"yy", true);
        d.power_cut_keeping_entries();
        assert_eq!(
            names(&d, "/s/a"),
            vec![
                (PathBuf::from("/s/a/x"), Some(Vec::new())),
                (PathBuf::from("/s/a/y"), Some(b"yy".to_vec())),
            ]
        );
    }

    #[test]
    fn a_crash_keeps_everything_and_a_later_cut_still_loses_it() {
        let (d, _, a, _) = setup();
        file(&d, &a, b"x", b"xx", false);
        d.restart();
        assert_eq!(names(&d, "/s/a").len(), 1);
        d.power_cut();
        assert!(names(&d, "/s/a").is_empty());
    }

    #[test]
    fn a_stopped_machine_changes_nothing() {
        let (d, _, a, _) = setup();
        d.die_at(d.ops() + 1);
        let mut f = d.create(&a, b"x", 0o600).unwrap();
        assert!(d.write_all(&mut f, b"data").is_err());
        assert!(d.is_dead());
        assert!(d.sync_dir(&a).is_err());
        d.restart();
        assert_eq!(
            names(&d, "/s/a"),
            vec![(PathBuf::from("/s/a/x"), Some(Vec::new()))]
        );
    }

    #[test]
    fn errors_are_injected_as_scheduled_or_for_a_while() {
        let (d, _, a, b) = setup();
        let at = d.ops();
        d.fail_at(at + 1, Errno::ENOSPC);
        let mut f = d.create(&a, b"x", 0o600).unwrap();
        let e = d.write_all(&mut f, b"0123456789").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::ENOSPC as i32));
        assert_eq!(
            d.injected(),
            vec![InjectedError {
                op: at + 1,
                kind: SimOp::Write,
                errno: Errno::ENOSPC
            }]
        );
        // A failed write may leave a part of its data (never more).
        let (_, data) = names(&d, "/s/a").pop().unwrap();
        assert!(b"0123456789".starts_with(&data.unwrap()));
        d.set_read_only(true);
        assert!(d.rename(&a, b"x", &b, b"x").is_err());
        assert!(
            d.sync_dir(&a).is_ok(),
            "fsync still works on a read-only disk"
        );
        d.set_read_only(false);
        d.set_full(true);
        assert!(d.create(&a, b"y", 0o600).is_err());
        assert!(d.unlink(&a, b"x").is_ok());
        d.clear_faults();
        assert!(d.create(&a, b"y", 0o600).is_ok());
    }
}

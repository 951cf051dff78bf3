//! A FUSE file system for tests that loses, at a simulated power cut, everything that was not
//! made durable, and injects disk faults on demand. Test-only: never a dependency of what
//! ships.
//!
//! What is durable follows the strictest reading of POSIX, stricter than Jepsen's LazyFS (which
//! only loses file data):
//!
//! - a file's **data** is durable once `fsync` or `fdatasync` of that file returned;
//! - a **directory entry** (a create, a rename's new and old name, an unlink, a mkdir) is durable
//!   once `fsync` of *that directory* returned. A rename between two directories needs both.
//!
//! [`FaultFs::cut_power`] throws everything else away: each directory goes back to the entries
//! it had at its last fsync, each file to the data it had at its last fsync, and files no
//! durable entry reaches are gone. [`FaultFs::cut_power_keeping_entries`] loses file data
//! only, as LazyFS does (a journal that committed the metadata). The durable image is kept in memory next to the live one
//! (nothing of the test is written to the host's disks); [`FaultFs::sync_all`] makes
//! everything durable, for preparing a directory tree.
//!
//! Faults ([`Fault`]) are switched on and off from the test with [`FaultFs::set`]; each makes
//! the matching operations fail with EIO, ENOSPC or EROFS, or makes `fsync` take a while.
//!
//! The file system is served by a thread of the test process (`fuser`, its own mount code: the
//! `mount` system call as root, `/dev/fuse`, no libfuse). Attributes and names are never cached
//! by the kernel (TTL 0) and files are opened with direct I/O, so what the test changes (a cut,
//! a fault) is seen at the next system call.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const ROOT: u64 = fuser::FUSE_ROOT_ID;
const TTL: Duration = Duration::ZERO;
const BLOCK: u64 = 4096;

/// A fault to inject. Each stays on until it is switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// `write` fails with EIO.
    WriteEio,
    /// `fsync`/`fdatasync` of files and directories fail with EIO (nothing is made durable).
    FsyncEio,
    /// `rename` fails with EIO.
    RenameEio,
    /// `fsync` of files and directories takes this long before it succeeds.
    SlowFsync(Duration),
    /// `write`, `create` and `mkdir` fail with ENOSPC; `statfs` reports no free block.
    Enospc,
    /// Every change (create, write, truncate, chmod, chown, rename, unlink, mkdir, rmdir) fails
    /// with EROFS, as after a remount read-only.
    Erofs,
}

/// How many operations of each kind the file system refused or delayed because of a fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// Operations answered with an error.
    pub errors: u64,
    /// `fsync`s made slow.
    pub slow_fsyncs: u64,
}

#[derive(Debug, Clone)]
enum Kind {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
        /// The shortest the file was made (truncate) since its last fsync: a journal commits
        /// a truncation as metadata, before the data written after it.
        shortest: usize,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

#[derive(Debug, Clone)]
struct Inode {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

#[derive(Debug, Default)]
struct Faults {
    write_eio: bool,
    fsync_eio: bool,
    rename_eio: bool,
    slow_fsync: Option<Duration>,
    enospc: bool,
    erofs: bool,
}

#[derive(Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Bumped at every cut: handles opened before it fail with EIO.
    generation: u64,
    faults: Faults,
    injected: Injected,
    cuts: u64,
}

impl State {
    fn new() -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode {
                kind: Kind::Dir {
                    entries: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: SystemTime::now(),
            },
        );
        Self {
            inodes,
            next_ino: ROOT + 1,
            generation: 1,
            faults: Faults::default(),
            injected: Injected::default(),
            cuts: 0,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let i = self.inodes.get(&ino)?;
        let (kind, size, nlink) = match &i.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
            Kind::Dir { entries, .. } => (FileType::Directory, 0, 2 + entries.len() as u32),
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: i.mtime,
            mtime: i.mtime,
            ctime: i.mtime,
            crtime: i.mtime,
            kind,
            perm: i.perm,
            nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    fn entries(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, i32> {
        match self.inodes.get(&ino).map(|i| &i.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(Kind::File { .. }) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn entries_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, i32> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(Kind::File { .. }) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, i32> {
        self.entries(parent)?.get(name).copied().ok_or(libc::ENOENT)
    }

    /// Fails a change when the file system is "read-only".
    fn change(&mut self) -> Result<(), i32> {
        self.refuse(self.faults.erofs, libc::EROFS)
    }

    /// Fails an allocation when the disk is "full" (or read-only).
    fn allocate(&mut self) -> Result<(), i32> {
        self.change()?;
        self.refuse(self.faults.enospc, libc::ENOSPC)
    }

    fn refuse(&mut self, on: bool, errno: i32) -> Result<(), i32> {
        if on {
            self.injected.errors += 1;
            Err(errno)
        } else {
            Ok(())
        }
    }

    fn new_inode(&mut self, kind: Kind, mode: u32, req: &Request<'_>) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                kind,
                perm: (mode & 0o7777) as u16,
                uid: req.uid(),
                gid: req.gid(),
                mtime: SystemTime::now(),
            },
        );
        ino
    }

    fn make(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        req: &Request<'_>,
    ) -> Result<u64, i32> {
        self.allocate()?;
        if self.entries(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.new_inode(kind, mode, req);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn check_handle(&self, fh: u64) -> Result<(), i32> {
        if fh == self.generation {
            Ok(())
        } else {
            Err(libc::EIO)
        }
    }

    /// Makes what `ino` holds durable: a file's data, or a directory's entries.
    fn make_durable(&mut self, ino: u64) {
        match self.inodes.get_mut(&ino).map(|i| &mut i.kind) {
            Some(Kind::File {
                data,
                durable,
                shortest,
            }) => {
                durable.clone_from(data);
                *shortest = data.len();
            }
            Some(Kind::Dir { entries, durable }) => durable.clone_from(entries),
            None => {}
        }
    }

    fn cut(&mut self, keep_entries: bool) {
        for i in self.inodes.values_mut() {
            match &mut i.kind {
                Kind::File {
                    data,
                    durable,
                    shortest,
                } => {
                    if keep_entries {
                        // The truncations reached the disk, the data written since did not.
                        durable.truncate(*shortest);
                    }
                    data.clone_from(durable);
                    *shortest = data.len();
                }
                Kind::Dir { entries, durable } if keep_entries => durable.clone_from(entries),
                Kind::Dir { entries, durable } => entries.clone_from(durable),
            }
        }
        // Keep what the durable tree reaches.
        let mut reached = vec![ROOT];
        let mut keep = std::collections::HashSet::new();
        while let Some(ino) = reached.pop() {
            if !keep.insert(ino) {
                continue;
            }
            if let Some(Kind::Dir { entries, .. }) = self.inodes.get(&ino).map(|i| &i.kind) {
                reached.extend(entries.values().copied());
            }
        }
        self.inodes.retain(|ino, _| keep.contains(ino));
        self.generation += 1;
        self.cuts += 1;
    }
}

/// The mounted file system. Unmounts (lazily) when dropped.
#[derive(Debug)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FaultFs {
    /// Mounts an empty file system on `mountpoint` (an existing directory) and serves it from a
    /// thread of this process. Needs root and `/dev/fuse`.
    pub fn mount(mountpoint: &Path) -> io::Result<Self> {
        let state = Arc::new(Mutex::new(State::new()));
        let fs = Server {
            state: Arc::clone(&state),
        };
        let options = [
            MountOption::FSName("nsm-faultfs".to_owned()),
            MountOption::Subtype("nsm-faultfs".to_owned()),
            MountOption::AllowOther,
            MountOption::RW,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        let session = fuser::spawn_mount2(fs, mountpoint, &options).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot mount the FUSE test file system on {} (needs root and /dev/fuse; \
                     Debian package fuse3): {e}",
                    mountpoint.display()
                ),
            )
        })?;
        Ok(Self {
            state,
            mountpoint: mountpoint.to_owned(),
            session: Some(session),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Switches a fault on. [`Fault::SlowFsync`] replaces an earlier delay.
    pub fn set(&self, fault: Fault) {
        self.switch(fault, true);
    }

    /// Switches a fault off (for [`Fault::SlowFsync`], any delay).
    pub fn clear(&self, fault: Fault) {
        self.switch(fault, false);
    }

    /// Switches every fault off.
    pub fn clear_all(&self) {
        lock(&self.state).faults = Faults::default();
    }

    fn switch(&self, fault: Fault, on: bool) {
        let mut s = lock(&self.state);
        let f = &mut s.faults;
        match fault {
            Fault::WriteEio => f.write_eio = on,
            Fault::FsyncEio => f.fsync_eio = on,
            Fault::RenameEio => f.rename_eio = on,
            Fault::SlowFsync(d) => f.slow_fsync = on.then_some(d),
            Fault::Enospc => f.enospc = on,
            Fault::Erofs => f.erofs = on,
        }
    }

    /// What the faults did so far.
    pub fn injected(&self) -> Injected {
        lock(&self.state).injected
    }

    /// Cuts the power: everything not durable is lost (see the crate's documentation), and
    /// files opened before fail with EIO. Stop the programs using the file system first (a
    /// process killed with SIGKILL has finished its system calls once it is reaped).
    pub fn cut_power(&self) {
        lock(&self.state).cut(false);
    }

    /// Cuts the power as when a journal committed the metadata but not the data: file data
    /// not fsynced is lost (as with LazyFS), but every directory entry stays as it is, and a
    /// file truncated since its last fsync keeps only what the truncation left of its durable
    /// data. What a strict cut ([`FaultFs::cut_power`]) cannot show: the temporary files an
    /// interrupted write leaves, and files rewritten in place found empty.
    pub fn cut_power_keeping_entries(&self) {
        lock(&self.state).cut(true);
    }

    /// How many cuts so far.
    pub fn cuts(&self) -> u64 {
        lock(&self.state).cuts
    }

    /// Makes everything durable, as a `sync` that cannot fail.
    pub fn sync_all(&self) {
        let mut s = lock(&self.state);
        let all: Vec<u64> = s.inodes.keys().copied().collect();
        for ino in all {
            s.make_durable(ino);
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        // Dropping the session unmounts (umount2, MNT_DETACH if busy) and joins the thread.
        drop(self.session.take());
    }
}

struct Server {
    state: Arc<Mutex<State>>,
}

impl Server {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// fsync of a file or a directory: faults, then durability, possibly after a delay on
    /// another thread (the file system keeps serving other requests meanwhile).
    fn sync(&self, ino: u64, fh: Option<u64>, reply: ReplyEmpty) {
        let mut s = self.lock();
        if let Some(fh) = fh {
            if let Err(e) = s.check_handle(fh) {
                return reply.error(e);
            }
        }
        if s.faults.fsync_eio {
            s.injected.errors += 1;
            return reply.error(libc::EIO);
        }
        let Some(delay) = s.faults.slow_fsync else {
            s.make_durable(ino);
            return reply.ok();
        };
        s.injected.slow_fsyncs += 1;
        let generation = s.generation;
        drop(s);
        let state = Arc::clone(&self.state);
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let mut s = lock(&state);
            if s.generation != generation {
                return reply.error(libc::EIO);
            }
            s.make_durable(ino);
            reply.ok();
        });
    }
}

fn unix(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for Server {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let s = self.lock();
        match s
            .lookup(parent, name)
            .and_then(|i| s.attr(i).ok_or(libc::ENOENT))
        {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.lock().attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut s = self.lock();
        if let Err(e) = s.change() {
            return reply.error(e);
        }
        let Some(i) = s.inodes.get_mut(&ino) else {
            return reply.error(libc::ENOENT);
        };
        if let Some(m) = mode {
            i.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            i.uid = u;
        }
        if let Some(g) = gid {
            i.gid = g;
        }
        if let Some(t) = mtime {
            i.mtime = unix(t);
        }
        if let Some(size) = size {
            match &mut i.kind {
                Kind::File { data, shortest, .. } => {
                    data.resize(size as usize, 0);
                    *shortest = (*shortest).min(data.len());
                }
                Kind::Dir { .. } => return reply.error(libc::EISDIR),
            }
            i.mtime = SystemTime::now();
        }
        match s.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let kind = Kind::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        match s
            .make(parent, name, kind, mode & !umask, req)
            .and_then(|i| s.attr(i).ok_or(libc::ENOENT))
        {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.lock();
        let kind = Kind::File {
            data: Vec::new(),
            durable: Vec::new(),
            shortest: 0,
        };
        match s
            .make(parent, name, kind, mode & !umask, req)
            .and_then(|i| s.attr(i).ok_or(libc::ENOENT))
        {
            Ok(a) => reply.created(&TTL, &a, 0, s.generation, fuser::consts::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = s.change().and_then(|()| {
            let ino = s.lookup(parent, name)?;
            if matches!(s.inodes.get(&ino).map(|i| &i.kind), Some(Kind::Dir { .. })) {
                return Err(libc::EISDIR);
            }
            s.entries_mut(parent)?.remove(name);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = s.change().and_then(|()| {
            let ino = s.lookup(parent, name)?;
            if !s.entries(ino)?.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
            s.entries_mut(parent)?.remove(name);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let r = s.change().and_then(|()| {
            let (eio, on) = (libc::EIO, s.faults.rename_eio);
            s.refuse(on, eio)?;
            if flags & !libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EINVAL);
            }
            let ino = s.lookup(parent, name)?;
            match s.lookup(newparent, newname) {
                Ok(old) if old == ino => return Ok(()),
                Ok(_) if flags & libc::RENAME_NOREPLACE != 0 => return Err(libc::EEXIST),
                Ok(old) => {
                    let old_is_dir = matches!(s.inodes[&old].kind, Kind::Dir { .. });
                    let is_dir = matches!(s.inodes[&ino].kind, Kind::Dir { .. });
                    if old_is_dir && !s.entries(old)?.is_empty() {
                        return Err(libc::ENOTEMPTY);
                    }
                    if old_is_dir != is_dir {
                        return Err(if old_is_dir {
                            libc::EISDIR
                        } else {
                            libc::ENOTDIR
                        });
                    }
                }
                Err(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            s.entries_mut(parent)?.remove(name);
            s.entries_mut(newparent)?.insert(newname.to_owned(), ino);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut s = self.lock();
        let Some(i) = s.inodes.get(&ino) else {
            return reply.error(libc::ENOENT);
        };
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if matches!(i.kind, Kind::Dir { .. }) && writing {
            return reply.error(libc::EISDIR);
        }
        if writing {
            if let Err(e) = s.change() {
                return reply.error(e);
            }
        }
        // With FUSE_ATOMIC_O_TRUNC the kernel passes O_TRUNC here instead of a setattr.
        if flags & libc::O_TRUNC != 0 {
            if let Some(Inode {
                kind: Kind::File { data, shortest, .. },
                ..
            }) = s.inodes.get_mut(&ino)
            {
                data.clear();
                *shortest = 0;
            }
        }
        reply.opened(s.generation, fuser::consts::FOPEN_DIRECT_IO);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let s = self.lock();
        if let Err(e) = s.check_handle(fh) {
            return reply.error(e);
        }
        match s.inodes.get(&ino).map(|i| &i.kind) {
            Some(Kind::File { data, .. }) => {
                let start = (offset.max(0) as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Some(Kind::Dir { .. }) => reply.error(libc::EISDIR),
            None => reply.error(libc::ENOENT),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        bytes: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut s = self.lock();
        let r = s.check_handle(fh).and_then(|()| {
            s.allocate()?;
            let (eio, on) = (libc::EIO, s.faults.write_eio);
            s.refuse(on, eio)?;
            match s.inodes.get_mut(&ino) {
                Some(Inode {
                    kind: Kind::File { data, .. },
                    mtime,
                    ..
                }) => {
                    let start = offset.max(0) as usize;
                    let end = start + bytes.len();
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[start..end].copy_from_slice(bytes);
                    *mtime = SystemTime::now();
                    Ok(bytes.len() as u32)
                }
                Some(_) => Err(libc::EISDIR),
                None => Err(libc::ENOENT),
            }
        });
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        self.sync(ino, Some(fh), reply);
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let s = self.lock();
        match s.entries(ino) {
            Ok(_) => reply.opened(s.generation, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.lock();
        let entries = match s.entries(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let all = [
            (ino, FileType::Directory, OsStr::new(".")),
            (ino, FileType::Directory, OsStr::new("..")),
        ]
        .into_iter()
        .chain(entries.iter().map(|(name, &i)| {
            let kind = match s.inodes.get(&i).map(|i| &i.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            (i, kind, name.as_os_str())
        }));
        for (n, (i, kind, name)) in all.enumerate().skip(offset.max(0) as usize) {
            if reply.add(i, n as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, None, reply);
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let s = self.lock();
        let free = if s.faults.enospc { 0 } else { 1 << 20 };
        reply.statfs(
            1 << 20,
            free,
            free,
            1 << 20,
            free,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }
}

/// What the tests need for this file system: root, `/dev/fuse` and the kernel's `fuse` file
/// system type. `Err` names what is missing.
pub fn prerequisites() -> Result<(), String> {
    let mut missing = Vec::new();
    if !nix_is_root() {
        missing.push("root privileges".to_owned());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push(
            "/dev/fuse (load the fuse module: modprobe fuse; Debian package fuse3)".to_owned(),
        );
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("fuse"))
    {
        missing.push("the kernel's fuse file system (modprobe fuse)".to_owned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// The test policy of the project for FUSE tests: `true` when [`prerequisites`] are met;
/// otherwise a panic when `NSMD_REQUIRE_NETNS=1` is set (as in CI), or `SKIPPED` on stderr and
/// `false`.
pub fn require(test_name: &str) -> bool {
    let Err(reason) = prerequisites() else {
        return true;
    };
    if std::env::var("NSMD_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
        panic!(
            "\n\n*** {test_name}: FUSE test prerequisites missing: {reason}\n\
             *** NSMD_REQUIRE_NETNS=1 is set, so this is a failure, not a skip.\n"
        );
    }
    let msg = format!(
        "\n*** SKIPPED {test_name}: {reason} (set NSMD_REQUIRE_NETNS=1 to make this a failure)\n"
    );
    let _ = io::Write::write_all(&mut io::stderr(), msg.as_bytes());
    false
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

//! The file system calls the store makes, behind one narrow trait: [`Disk`].
//!
//! [`RealDisk`] makes them with `nix` (the production path; a zero-sized type, so a
//! [`StateDir`](crate::StateDir) over it compiles to the same calls as before the trait
//! existed). With the `sim` feature, [`SimDisk`](crate::SimDisk) keeps a file system in memory
//! that loses, at a simulated power cut, what was not made durable, and injects errors: the
//! same store code runs over it in a deterministic simulation.
//!
//! The trait has exactly the operations the store performs, and the store decides everything
//! else (names, modes, owners, the order of writes and fsyncs): a disk only carries them out.
//! Names are the bytes of one path component. Errors are [`io::Error`]s with the OS error
//! number, so the store tells `ENOENT`, `EEXIST` and `ENOTDIR` apart the same way on both.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::dir::Dir as NixDir;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, geteuid, syncfs, unlinkat};

/// What a directory entry is (`lstat`, or `stat` where said).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else.
    Unknown,
}

impl FileKind {
    /// How error reports name it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Regular => "regular file",
            Self::Directory => "directory",
            Self::Symlink => "symbolic link",
            Self::Fifo => "FIFO",
            Self::Socket => "socket",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
            Self::Unknown => "unknown file type",
        }
    }

    fn of(st: &FileStat) -> Self {
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => Self::Regular,
            SFlag::S_IFDIR => Self::Directory,
            SFlag::S_IFLNK => Self::Symlink,
            SFlag::S_IFIFO => Self::Fifo,
            SFlag::S_IFSOCK => Self::Socket,
            SFlag::S_IFCHR => Self::CharDevice,
            SFlag::S_IFBLK => Self::BlockDevice,
            _ => Self::Unknown,
        }
    }
}

/// What [`Disk::read_file`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// A regular file: its size and its first bytes (up to the limit asked for).
    Regular {
        /// Its size (`fstat`).
        size: u64,
        /// What was read.
        content: Vec<u8>,
    },
    /// Something else, not read.
    Other(FileKind),
}

/// The file system operations of the store. Implemented by [`RealDisk`] (system calls) and,
/// with the `sim` feature, by `SimDisk` (in memory, with power cuts and injected errors).
///
/// Durability is what the store asks for, nothing more: a file's data is durable once
/// [`sync_file`](Self::sync_file) returned `Ok`, a directory entry (create, rename, unlink)
/// once [`sync_dir`](Self::sync_dir) of its directory returned `Ok` (or
/// [`syncfs`](Self::syncfs), for everything).
pub trait Disk: fmt::Debug + Send + Sync + 'static {
    /// An open directory.
    type Dir: Send + Sync;
    /// A file created for writing.
    type File: Send;

    /// What `path` is, following symbolic links (`stat`).
    fn stat_path(&self, path: &Path) -> io::Result<FileKind>;
    /// Creates the directory `path` with `mode` (masked by the umask).
    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Sets the mode of `path` (`chmod`).
    fn chmod_path(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Opens the directory `path` (`O_RDONLY|O_DIRECTORY|O_CLOEXEC`).
    fn open_dir(&self, path: &Path) -> io::Result<Self::Dir>;
    /// Opens the directory `name` of `dir` (`openat`, same flags).
    fn open_dir_at(&self, dir: &Self::Dir, name: &[u8]) -> io::Result<Self::Dir>;
    /// The owner and group of an open directory (`fstat`).
    fn owner(&self, dir: &Self::Dir) -> io::Result<(u32, u32)>;
    /// Whether this process runs as root (effective user id 0): new record files then get the
    /// owner of their directory.
    fn is_root(&self) -> bool;
    /// The names in `dir`, without `.` and `..`, in the order the file system gives them, each
    /// with its kind when the directory entry tells it (`d_type`; `None`: ask [`Disk::lstat`]).
    fn list(&self, dir: &Self::Dir) -> io::Result<Vec<(Vec<u8>, Option<FileKind>)>>;
    /// What the entry `name` is, without following a symbolic link (`fstatat`,
    /// `AT_SYMLINK_NOFOLLOW`).
    fn lstat(&self, dir: &Self::Dir, name: &[u8]) -> io::Result<FileKind>;
    /// Opens `name` without following a symbolic link or blocking on a FIFO
    /// (`O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY|O_CLOEXEC`), checks with `fstat` that it is a
    /// regular file, and reads at most `limit` bytes.
    fn read_file(&self, dir: &Self::Dir, name: &[u8], limit: u64) -> io::Result<Opened>;
    /// Opens `name`, following symbolic links (`O_RDONLY|O_NONBLOCK|O_CLOEXEC`), and reads at
    /// most `limit` bytes.
    fn read_head(&self, dir: &Self::Dir, name: &[u8], limit: u64) -> io::Result<Vec<u8>>;
    /// Creates `name` exclusively, never through a symbolic link
    /// (`O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`, `mode`).
    fn create(&self, dir: &Self::Dir, name: &[u8], mode: u32) -> io::Result<Self::File>;
    /// Sets a created file's mode, whatever the umask (`fchmod`).
    fn chmod(&self, file: &Self::File, mode: u32) -> io::Result<()>;
    /// Sets a created file's owner and group (`fchown`).
    fn chown(&self, file: &Self::File, uid: u32, gid: u32) -> io::Result<()>;
    /// Writes all of `data` at the file's position (`write` until done).
    fn write_all(&self, file: &mut Self::File, data: &[u8]) -> io::Result<()>;
    /// Makes the file's data durable (`fsync`).
    fn sync_file(&self, file: &Self::File) -> io::Result<()>;
    /// Makes the directory's entries durable (`fsync` of the directory).
    fn sync_dir(&self, dir: &Self::Dir) -> io::Result<()>;
    /// Makes everything on the directory's file system durable (`syncfs`).
    fn syncfs(&self, dir: &Self::Dir) -> io::Result<()>;
    /// Renames `from` in `from_dir` to `to` in `to_dir`, replacing a file there (`renameat`).
    fn rename(
        &self,
        from_dir: &Self::Dir,
        from: &[u8],
        to_dir: &Self::Dir,
        to: &[u8],
    ) -> io::Result<()>;
    /// Removes the non-directory entry `name` (`unlinkat`; never follows a symbolic link).
    fn unlink(&self, dir: &Self::Dir, name: &[u8]) -> io::Result<()>;
    /// How many `sync_file` calls [`SyncMode::FsyncParallel`](crate::SyncMode) may run at
    /// once, from as many threads. The real disk: 8. A simulated disk answers 1, so that the
    /// order of its operations, and so the faults drawn for them, do not depend on threads.
    fn parallel_fsyncs(&self) -> usize {
        8
    }
    /// How many threads may read the files of one directory at once
    /// ([`StateDir::load`](crate::StateDir::load)). 1 unless a disk says otherwise, so that a
    /// simulated disk sees its operations in one order.
    fn parallel_reads(&self) -> usize {
        1
    }
}

/// The real file system, through `nix` system calls on directory descriptors.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealDisk;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

impl Disk for RealDisk {
    type Dir = OwnedFd;
    type File = File;

    fn stat_path(&self, path: &Path) -> io::Result<FileKind> {
        let m = std::fs::metadata(path)?;
        Ok(if m.is_dir() {
            FileKind::Directory
        } else if m.is_file() {
            FileKind::Regular
        } else {
            FileKind::Unknown
        })
    }

    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::DirBuilder::new().mode(mode).create(path)
    }

    fn chmod_path(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    fn open_dir(&self, path: &Path) -> io::Result<OwnedFd> {
        Ok(nix::fcntl::open(path, DIR_FLAGS, Mode::empty())?)
    }

    fn open_dir_at(&self, dir: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
        Ok(openat(dir, name, DIR_FLAGS, Mode::empty())?)
    }

    fn owner(&self, dir: &OwnedFd) -> io::Result<(u32, u32)> {
        let st = fstat(dir)?;
        Ok((st.st_uid, st.st_gid))
    }

    fn is_root(&self) -> bool {
        geteuid().is_root()
    }

    fn list(&self, dir: &OwnedFd) -> io::Result<Vec<(Vec<u8>, Option<FileKind>)>> {
        use nix::dir::Type;
        let mut d = NixDir::openat(dir, ".", DIR_FLAGS, Mode::empty())?;
        let mut names = Vec::new();
        for entry in d.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                let kind = entry.file_type().map(|t| match t {
                    Type::File => FileKind::Regular,
                    Type::Directory => FileKind::Directory,
                    Type::Symlink => FileKind::Symlink,
                    Type::Fifo => FileKind::Fifo,
                    Type::Socket => FileKind::Socket,
                    Type::CharacterDevice => FileKind::CharDevice,
                    Type::BlockDevice => FileKind::BlockDevice,
                });
                names.push((name.to_vec(), kind));
            }
        }
        Ok(names)
    }

    fn lstat(&self, dir: &OwnedFd, name: &[u8]) -> io::Result<FileKind> {
        Ok(FileKind::of(&fstatat(
            dir,
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?))
    }

    fn read_file(&self, dir: &OwnedFd, name: &[u8], limit: u64) -> io::Result<Opened> {
        // O_NOFOLLOW + O_NONBLOCK + fstat: the file cannot be swapped for a symlink or a FIFO
        // between the caller's lstat and the read.
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = fstat(&fd)?;
        let kind = FileKind::of(&st);
        if kind != FileKind::Regular {
            return Ok(Opened::Other(kind));
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        // Sized by fstat: one read takes a record file whole, and a read that stops short at
        // that size is the end of the file (a regular file's read is short only there), so
        // no second read is needed to see it. A file that grew meanwhile is read on to `limit`.
        let cap = usize::try_from(size.saturating_add(1).min(limit)).unwrap_or(usize::MAX);
        let mut content = vec![0u8; cap];
        let mut file = File::from(fd);
        let mut filled = 0;
        while filled < cap {
            let n = match file.read(&mut content[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            filled += n;
            if n == 0 || filled as u64 == size {
                break;
            }
        }
        content.truncate(filled);
        if filled == cap && (cap as u64) < limit {
            // Longer than fstat said: read the rest, up to `limit`.
            file.take(limit - cap as u64).read_to_end(&mut content)?;
        }
        Ok(Opened::Regular { size, content })
    }

    fn read_head(&self, dir: &OwnedFd, name: &[u8], limit: u64) -> io::Result<Vec<u8>> {
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )?;
        let mut buf = Vec::new();
        File::from(fd).take(limit).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn create(&self, dir: &OwnedFd, name: &[u8], mode: u32) -> io::Result<File> {
        let fd = openat(
            dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        Ok(File::from(fd))
    }

    fn chmod(&self, file: &File, mode: u32) -> io::Result<()> {
        Ok(fchmod(file, Mode::from_bits_truncate(mode))?)
    }

    fn chown(&self, file: &File, uid: u32, gid: u32) -> io::Result<()> {
        Ok(fchown(
            file,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )?)
    }

    fn write_all(&self, file: &mut File, data: &[u8]) -> io::Result<()> {
        file.write_all(data)
    }

    fn sync_file(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    fn sync_dir(&self, dir: &OwnedFd) -> io::Result<()> {
        Ok(nix::unistd::fsync(dir)?)
    }

    fn syncfs(&self, dir: &OwnedFd) -> io::Result<()> {
        Ok(syncfs(dir)?)
    }

    fn rename(
        &self,
        from_dir: &OwnedFd,
        from: &[u8],
        to_dir: &OwnedFd,
        to: &[u8],
    ) -> io::Result<()> {
        Ok(renameat(from_dir, from, to_dir, to)?)
    }

    fn parallel_reads(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    }

    fn unlink(&self, dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
        Ok(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?)
    }
}

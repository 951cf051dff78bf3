//! Errors of the store.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A field of a record line, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The callback address (first field; ignored on read).
    Address,
    /// `my_prog`.
    Prog,
    /// `my_vers`.
    Vers,
    /// `my_proc`.
    Proc,
    /// The 16-byte cookie as 32 hex digits.
    Priv,
    /// `mon_name`.
    MonName,
    /// `my_name`.
    MyName,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Address => "address",
            Self::Prog => "my_prog",
            Self::Vers => "my_vers",
            Self::Proc => "my_proc",
            Self::Priv => "priv",
            Self::MonName => "mon_name",
            Self::MyName => "my_name",
        })
    }
}

/// A record line that cannot be parsed, or a record that cannot be written as a line nfs-utils
/// and nsmd read back unchanged. Offsets count bytes from the start of the line, except in
/// [`ParseError::BadNameByte`] (from the start of the name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line is longer than nfs-utils' reader takes in one piece.
    #[error("line is {len} bytes, longer than the {max} bytes nfs-utils can read")]
    LineTooLong {
        /// Its length, newline included.
        len: usize,
        /// [`MAX_LINE_LEN`](crate::MAX_LINE_LEN).
        max: usize,
    },
    /// The line ends before or inside a field.
    #[error("line ends at byte {offset}, before the end of the {field} field")]
    Truncated {
        /// The field that is incomplete.
        field: Field,
        /// Where the line ended.
        offset: usize,
    },
    /// A byte that is not a hex digit where one is required.
    #[error("{field} field: byte {offset} is {byte:#04x}, not a hex digit")]
    BadHex {
        /// The numeric field.
        field: Field,
        /// Offset in the line.
        offset: usize,
        /// The byte found.
        byte: u8,
    },
    /// Something other than the single space that follows a fixed-width field.
    #[error("byte {offset} after the {field} field is {byte:#04x}, not a space")]
    MissingSeparator {
        /// The field before the separator.
        field: Field,
        /// Offset in the line.
        offset: usize,
        /// The byte found.
        byte: u8,
    },
    /// The line ends after `mon_name`: no space and no `my_name` field.
    #[error("no my_name field after mon_name")]
    MissingMyName,
    /// `mon_name` is empty.
    #[error("mon_name is empty")]
    EmptyMonName,
    /// A name holds NUL, an ASCII control character or whitespace, which the line format cannot
    /// carry.
    #[error(
        "{field} has byte {byte:#04x} at offset {offset} (NUL, control character or whitespace)"
    )]
    BadNameByte {
        /// The name.
        field: Field,
        /// Offset in the name.
        offset: usize,
        /// The byte found.
        byte: u8,
    },
    /// One name is longer than `SM_MAXSTRLEN`.
    #[error("{field} is {len} bytes, more than {max}")]
    NameTooLong {
        /// The name.
        field: Field,
        /// Its length.
        len: usize,
        /// [`SM_MAXSTRLEN`](crate::SM_MAXSTRLEN).
        max: usize,
    },
    /// Both names together do not fit in one nfs-utils record line.
    #[error(
        "mon_name and my_name are {len} bytes together, more than the {max} one nfs-utils record line holds"
    )]
    NamesTooLong {
        /// Their combined length.
        len: usize,
        /// [`MAX_NAMES_LEN`](crate::MAX_NAMES_LEN).
        max: usize,
    },
}

/// A `mon_name` (or a file found in `sm/`) that cannot be a record file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// Too long for a file name (the temporary `.<name>.new` must fit `NAME_MAX`).
    #[error("the name is {len} bytes, more than the {max} a record file name may have")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Starts with `.` (hidden, `.`, `..`; scans skip such names).
    #[error("the name starts with '.'")]
    LeadingDot,
    /// Contains `/`.
    #[error("the name contains '/' at offset {offset}")]
    Slash {
        /// Where.
        offset: usize,
    },
    /// Contains NUL.
    #[error("the name contains NUL at offset {offset}")]
    Nul {
        /// Where.
        offset: usize,
    },
    /// Contains whitespace (nfs-utils rejects `isspace`) or a control character.
    #[error("the name contains whitespace or a control character at offset {offset}")]
    Control {
        /// Where (bytes).
        offset: usize,
    },
    /// Not UTF-8.
    #[error("the name is not UTF-8 (from offset {offset})")]
    NotUtf8 {
        /// Length of the valid prefix.
        offset: usize,
    },
    /// Ends in `.new`, the temporary-file suffix of nfs-utils 2.6, which scans skip.
    #[error("the name ends in '.new', which is reserved for temporary files")]
    TempSuffix,
}

/// Why a file in `sm/` or `sm.bak/` was not loaded. The file is left as it is.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SkipReason {
    /// Not a regular file (symlink, directory, FIFO, socket, device).
    #[error("not a regular file ({kind}); nfs-utils skips it too")]
    NotRegular {
        /// What it is.
        kind: &'static str,
    },
    /// Its name cannot be a record file name.
    #[error("unusable file name: {0}")]
    BadName(#[source] NameError),
    /// It could not be opened or read.
    #[error("cannot read it: {0}")]
    Unreadable(#[source] Arc<io::Error>),
    /// Bigger than [`MAX_FILE_BYTES`](crate::MAX_FILE_BYTES).
    #[error("it is {size} bytes, more than the {max} a record file may have")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// Empty: no record.
    #[error("it is empty (no record)")]
    Empty,
    /// A line does not parse; the whole file is skipped.
    #[error("line {line}: {error}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        #[source]
        error: ParseError,
    },
}

/// An error of the state directory. Cloneable, so that a group commit can hand the same error
/// to every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A system call on a file of the state directory failed.
    #[error(
        "{op} {path}: {source} (check that the state directory exists, is writable by nsmd, and that its file system is mounted read-write and not full)",
        path = .path.display()
    )]
    Io {
        /// The operation (`open`, `fsync`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A path of the state directory is not a directory.
    #[error("{path} is not a directory (move it away so nsmd can create the state directory layout)", path = .path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The record file name is not acceptable.
    #[error("record file name {name:?} in {dir}: {source}", dir = .dir.display())]
    Name {
        /// The name (lossy UTF-8, escaped when printed).
        name: String,
        /// The directory it was meant for.
        dir: PathBuf,
        /// Why.
        #[source]
        source: NameError,
    },
    /// A record cannot be written as an nfs-utils line (nothing was written).
    #[error("record {index} for {path} cannot be stored: {source}", path = .path.display())]
    Record {
        /// The file it was meant for.
        path: PathBuf,
        /// Its index in the slice given.
        index: usize,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// The committer's check refused the batch right before it reached the disk: another
    /// node took the instance over (its ownership epoch moved on). Nothing of the batch was
    /// written; the new owner's files must not be touched from here.
    #[error(
        "nothing written to {path}: {reason}; the instance was taken over elsewhere and this node must not write to its state directory any more",
        path = .path.display()
    )]
    Fenced {
        /// The state directory.
        path: PathBuf,
        /// What the check said.
        reason: String,
    },
    /// The state number cannot grow any more.
    #[error("the NSM state number in {path} is {state} and cannot be increased; stop nsmd and reset it by removing the file (it starts again at 3)", path = .path.display())]
    StateOverflow {
        /// The state file.
        path: PathBuf,
        /// The value read.
        state: i32,
    },
    /// The state file could not be read although it exists.
    #[error("cannot read the NSM state from {path}: {source} (fix or remove the file; a missing file starts again at 3)", path = .path.display())]
    StateUnreadable {
        /// The state file.
        path: PathBuf,
        /// The error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A record file could not be read (not a damaged one: `EIO`, `EACCES`, ...). A
    /// takeover or an announcement that would go on without it would leave that peer
    /// unmonitored or unnotified: it fails instead (see `LoadReport::unreadable`).
    #[error("cannot read the record file {path}: {source} (it was neither loaded nor changed; check the disk and the file's permissions, then try again: the cluster manager retries a takeover, `nsmctl notify` announces again)", path = .path.display())]
    RecordUnreadable {
        /// The record file.
        path: PathBuf,
        /// The error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A write made only if `sm/` was not retired since (see `StateDir::retires`) was not
    /// made: the file may hold a record moved there since, which must stay.
    #[error("{path} left as it is: sm/ was moved to sm.bak/ since it was loaded, and the file may hold a peer to notify of the newer state", path = .path.display())]
    Retired {
        /// The file not written.
        path: PathBuf,
    },
    /// The group-commit thread is gone (it could not be started, or it panicked).
    #[error("the record writer thread for {path} is not running; restart nsmd", path = .path.display())]
    CommitterGone {
        /// The state directory.
        path: PathBuf,
    },
}

impl StoreError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        err: impl Into<io::Error>,
    ) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source: Arc::new(err.into()),
        }
    }
}

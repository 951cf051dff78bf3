//! The state directory of an NSM instance: monitor records in nfs-utils' format, the NSM
//! state number, durable writes, and group commit.
//!
//! ```text
//! base/
//!   sm/<name>        hosts being monitored: one file per host, one line per registration
//!   sm.bak/<name>    hosts still to notify of our restart (same format)
//!   state            the NSM state number: 4 bytes, native-endian int
//! ```
//!
//! An operator can switch between rpc.statd/sm-notify (nfs-utils) and nsmd in both
//! directions on the same directory without losing a record.
//!
//! ```
//! use std::sync::Arc;
//! use nsm_store::{Committer, Dir, Record, StateDir, file_name};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! let dir = Arc::new(StateDir::open(tmp.path())?);
//! let state = dir.state(false)?; // 3 on a new directory, as rpc.statd
//! let (records, report) = dir.load(Dir::Sm)?; // report: what was skipped, and why
//! # assert!(records.is_empty() && report.is_clean());
//! let committer = Committer::spawn(Arc::clone(&dir));
//! let r = Record {
//!     mon_name: b"client1".to_vec(),
//!     my_name: b"server1".to_vec(),
//!     my_prog: 100_021,
//!     my_vers: 4,
//!     my_proc: 16,
//!     priv_: [0; 16],
//! };
//! let file = file_name(&r.mon_name)?.to_owned();
//! committer.commit(Dir::Sm, file, vec![r]).await?; // durable when this returns
//! # assert_eq!(state, 3);
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! # Byte-compatible with nfs-utils 2.6 (Debian 12's rpc.statd and sm-notify)
//!
//! - **Record lines** ([`Record::to_line`]): `%08x %08x %08x %08x <32 hex> <mon_name>
//!   <my_name>\n`, the first field being 127.0.0.1 printed as a native-endian `u32`
//!   (`0100007f` on x86). nsmd writes exactly the bytes rpc.statd writes for the same
//!   registration, and reads what rpc.statd writes (tests check both against the captured
//!   files in `proto/vectors/` and against the real rpc.statd).
//! - **Length limits**: `mon_name` + `my_name` ≤ 1024 bytes, lines ≤ 1095 bytes (nfs-utils'
//!   read buffer). nsmd refuses to write what nfs-utils could not read back.
//! - **The state file** ([`StateDir::state`]): the same 4 bytes, the same rules (missing or
//!   short → 3, even → odd, `update` → +2), mode 0644.
//! - **Scans** skip dot names and everything that is not a regular file (`lstat`).
//! - **Retiring** ([`StateDir::retire`]) renames `sm/X` to `sm.bak/X`, overwriting.
//! - **Modes and owners**: record files are created 0600; when nsmd runs as root, new record
//!   files get the owner of their directory (`statd:nogroup` on Debian), which is what
//!   nfs-utils' files get after its privilege drop, so rpc.statd and sm-notify (running as
//!   that user) can still rewrite and remove files nsmd wrote.
//!
//! # Where nsmd differs
//!
//! - **Durability**: nfs-utils relies on `O_SYNC` and `rename` and never fsyncs a
//!   directory, so a crash can lose a record it had acknowledged. nsmd writes a temporary file,
//!   fsyncs it, renames it over the target and fsyncs the directory before it returns
//!   ([`StateDir::write`] lists the system calls). The first record for a host is written the
//!   same way (nfs-utils writes it in place with `O_EXCL|O_SYNC`).
//!   [`StateDir::open`] fsyncs `sm.bak/`, the state directory and its parent each time, so
//!   that directories an interrupted earlier start created are durable before records are
//!   written in them.
//! - **Temporary names**: `.<name>.new` (nfs-utils 2.8's scheme, skipped by every scan) rather
//!   than 2.6's `<name>.new`, which a 2.6 scan would load as a host. Temps of both schemes
//!   are never loaded; [`StateDir::load`] removes those of an interrupted write in nsmd's
//!   scheme (regular files only, logged once) and reports 2.6's; `retire` leaves them in `sm/`.
//! - **File names**: nsmd names a record file by the `mon_name` as lockd sent it
//!   ([`file_name`]), never by a DNS lookup; nfs-utils uses the DNS canonical name. Files
//!   written by nfs-utils are read whatever their name, as long as it is UTF-8 without
//!   whitespace or control characters (the file name and the lines' `mon_name`s are returned
//!   separately). Names ending in `.new` are refused, since scans
//!   treat them as temporary files.
//! - **Modes after a rewrite** stay 0600 (nfs-utils' rewrites give 0640 through its umask).
//!   The state file is owned by whoever runs nsmd (nfs-utils: root, written before its
//!   privilege drop).
//! - **Rewrites are whole files**: [`StateDir::write`] writes exactly the records given, one
//!   line each, so the caller decides about duplicates; nfs-utils appends a line per SM_MON
//!   and can leave two lines for one registration.
//! - **Strict reading**: a file with one malformed line is reported and skipped as a whole
//!   (nfs-utils loads the lines it can parse, and misparses lines over 1095 bytes); a read
//!   error on the state file is an error, not a reset to 1 (which would make the number go
//!   down). Files over [`MAX_FILE_BYTES`] are skipped.
//! - nsmd does not write `/proc/sys/fs/nfs/nsm_local_state`; that is the caller's business.
//!
//! # The disk, and a simulated one
//!
//! Every file system call goes through the [`Disk`] trait; [`StateDir`] and [`Committer`] use
//! [`RealDisk`] unless opened on another one ([`StateDir::open_on`]). The `sim` feature (tests
//! only) adds `SimDisk`, an in-memory disk that loses at a simulated power cut what was not
//! made durable and injects disk errors from a seed, and `Committer::manual`, whose batches the
//! caller runs: `tests/sim.rs` runs the store over them, deterministically.
#![warn(missing_docs)]

mod commit;
mod dir;
mod disk;
mod error;
mod name;
mod record;
#[cfg(feature = "sim")]
mod sim;
mod sync;

#[cfg(feature = "sim")]
pub use commit::ManualBatches;
pub use commit::{BatchCheck, Committer};
pub use dir::{Dir, LoadReport, MAX_FILE_BYTES, Skipped, StateDir, create_dir_durably};
pub use disk::{Disk, FileKind, Opened, RealDisk};
pub use error::{Field, NameError, ParseError, SkipReason, StoreError};
pub use name::{MAX_FILE_NAME, file_name};
pub use record::{MAX_LINE_LEN, MAX_NAMES_LEN, PRIV_SIZE, Record, SM_MAXSTRLEN};
#[cfg(feature = "sim")]
pub use sim::{InjectedError, Rng, SimDir, SimDisk, SimFile, SimOp};
pub use sync::{CommitStats, SyncMode};

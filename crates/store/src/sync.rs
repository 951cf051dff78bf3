//! What the store's write path and the group commit share: how temporary files are made
//! durable ([`SyncMode`]) and the counters of what it cost ([`CommitStats`]). Below both
//! `dir.rs` and `commit.rs`, so that the dependencies inside the crate point one way:
//! `commit` → `dir` → `sync`.

use std::sync::atomic::{AtomicU64, Ordering};

/// How a batch makes its temporary files durable before it renames them into place.
///
/// Measured on this project's test machine (ext4 on a virtio disk, 2 CPUs; `cargo run
/// --release -p nsm-store --example group_commit`), 64 concurrent commits of one file each,
/// median of 9 rounds on a quiet disk: one `StateDir::write` after another 22.7 ms;
/// `FsyncEach` 12.6 ms; `FsyncParallel` 7.1 ms; `SyncFs` 4.3 ms. Every mode needed 1 to 2
/// directory fsyncs for the 64 commits. With other programs writing to the same disk at the
/// same time (I/O pressure 15-20 %), the same run gave 72-87 ms, 75-80 ms, 62-66 ms and
/// 55-58 ms: `SyncFs` loses most of its lead, since it flushes their data too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `fsync` each temporary file in turn. One journal commit per file.
    FsyncEach,
    /// `fsync` the temporary files of a batch from up to 8 threads at once (the batch's own
    /// thread and short-lived helpers), so that the file system commits them together. The
    /// default: cost grows with the batch, but only with the batch's own files.
    #[default]
    FsyncParallel,
    /// Write every temporary file, then one `syncfs` on the state directory's file system.
    /// The cheapest on a quiet file system, but `syncfs` also writes back every other dirty
    /// page of that file system: next to busy NFS exports (a service instance's directory on
    /// shared storage, or `/var/lib/nfs` on an exported `/`), one SM_MON could wait for
    /// gigabytes of someone else's data. Not the default for that reason.
    SyncFs,
}

/// Counters of a [`Committer`](crate::Committer), for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Commit requests received.
    pub commits: u64,
    /// Batches processed.
    pub batches: u64,
    /// Files written or removed (after coalescing commits to the same file in one batch).
    pub files: u64,
    /// `fsync` calls on temporary files.
    pub file_fsyncs: u64,
    /// `syncfs` calls.
    pub syncfs: u64,
    /// `fsync` calls on `sm/` or `sm.bak/`.
    pub dir_fsyncs: u64,
    /// The largest batch, in requests.
    pub max_batch: u64,
}

/// Shared counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    batches: AtomicU64,
    files: AtomicU64,
    file_fsyncs: AtomicU64,
    syncfs: AtomicU64,
    dir_fsyncs: AtomicU64,
    max_batch: AtomicU64,
}

impl Counters {
    pub(crate) fn batch(&self, commits: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commits.fetch_add(commits, Ordering::Relaxed);
        self.max_batch.fetch_max(commits, Ordering::Relaxed);
    }

    pub(crate) fn files(&self, files: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
    }

    pub(crate) fn file_fsync(&self) {
        self.file_fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn syncfs(&self) {
        self.syncfs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dir_fsync(&self) {
        self.dir_fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CommitStats {
        CommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
            file_fsyncs: self.file_fsyncs.load(Ordering::Relaxed),
            syncfs: self.syncfs.load(Ordering::Relaxed),
            dir_fsyncs: self.dir_fsyncs.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
        }
    }
}

//! Group commit: many concurrent record writes share the expensive directory fsync.
//!
//! A committer may carry a [`BatchCheck`] (a service instance's fence: "does this node still
//! own the directory?"), run on the commit thread once per batch right before the batch
//! touches the disk; when it refuses, the whole batch fails with [`StoreError::Fenced`] and
//! nothing is written. This narrows the window in which a node that lost an instance to a
//! forced takeover still writes to its state directory (a write queued before the takeover
//! no longer lands after the new owner retired `sm/`), but does not close it: a check then
//! a write is not atomic across nodes, so a batch checked just before the takeover still
//! lands. Only the cluster manager's fencing (STONITH, or cutting the old node off the
//! storage) closes it. The node instance has no check and pays nothing for it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::dir::{Dir, Item, StateDir};
use crate::disk::{Disk, RealDisk};
use crate::error::StoreError;
use crate::record::Record;
use crate::sync::{CommitStats, Counters, SyncMode};

struct Request {
    dir: Dir,
    file: String,
    records: Vec<Record>,
    unless_retired_since: Option<u64>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Checked once per batch, on the commit thread, right before the batch touches the disk:
/// `Err(reason)` fails every commit of the batch with [`StoreError::Fenced`] and writes
/// nothing. It must not block for long (every waiter of the batch waits for it).
pub type BatchCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Shared<D: Disk> {
    state_dir: Arc<StateDir<D>>,
    counters: Counters,
    check: Option<BatchCheck>,
}

impl<D: Disk> std::fmt::Debug for Shared<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state_dir", &self.state_dir)
            .field("counters", &self.counters)
            .field("check", &self.check.is_some())
            .finish()
    }
}

/// Durable record writes with group commit.
///
/// A dedicated thread (`nsm-store-commit`; disk I/O never runs on tokio's worker threads)
/// takes every request queued so far as one batch and hands it to the same code as
/// [`StateDir::write`]: each file's temporary copy is written and made durable
/// ([`SyncMode`]), all are renamed into place, each directory touched is fsynced **once**,
/// and then every waiter is answered. While one batch is on its way to the disk, new requests
/// queue up and form the next batch, so the number of directory fsyncs grows with the number
/// of disk round trips, not with the number of commits.
///
/// Guarantees:
/// - a commit whose future resolves `Ok` is on stable storage;
/// - requests are queued when [`commit`](Self::commit) is called (not when the future is
///   first polled), and handled in that order: a later commit to a file is never overtaken
///   by an earlier one. Several commits to the same file in one batch write only the newest
///   content, and every one of them is answered after it is durable;
/// - an error is handed to every waiter it concerns (all commits to that file; for a
///   failed directory fsync, all commits to that directory in the batch), naming the path.
///
/// Cloning gives another handle to the same thread. The thread ends when every handle is
/// dropped and the queue is empty.
#[derive(Debug)]
pub struct Committer<D: Disk = RealDisk> {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared<D>>,
}

impl<D: Disk> Clone for Committer<D> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<D: Disk> Committer<D> {
    /// Starts the commit thread with the default [`SyncMode`]. Needs no tokio runtime.
    pub fn spawn(state_dir: Arc<StateDir<D>>) -> Self {
        Self::with_mode(state_dir, SyncMode::default())
    }

    /// Starts the commit thread with the given [`SyncMode`].
    ///
    /// If the thread cannot be created, the error is logged and every commit fails with
    /// [`StoreError::CommitterGone`].
    pub fn with_mode(state_dir: Arc<StateDir<D>>, mode: SyncMode) -> Self {
        Self::start(state_dir, mode, None)
    }

    /// Starts the commit thread with the default [`SyncMode`] and a [`BatchCheck`], run
    /// before every batch (a service instance's fence).
    pub fn checked(state_dir: Arc<StateDir<D>>, check: BatchCheck) -> Self {
        Self::start(state_dir, SyncMode::default(), Some(check))
    }

    fn start(state_dir: Arc<StateDir<D>>, mode: SyncMode, check: Option<BatchCheck>) -> Self {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            state_dir,
            counters: Counters::default(),
            check,
        });
        let thread_shared = Arc::clone(&shared);
        if let Err(e) = std::thread::Builder::new()
            .name("nsm-store-commit".into())
            .spawn(move || run(&rx, &thread_shared, mode))
        {
            tracing::error!(error = %e, "cannot start the record writer thread");
        }
        Self { tx, shared }
    }

    /// Writes `dir/<file>` with exactly `records` (an empty vector removes the file), like
    /// [`StateDir::write`], in the next batch. The future resolves once the change is durable.
    pub fn commit(
        &self,
        dir: Dir,
        file: impl Into<String>,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.queue(dir, file.into(), records, None)
    }

    /// Like [`commit`](Self::commit), but the write is made only if
    /// [`StateDir::retires`] still gives `since` when its batch runs (checked under the
    /// directory's lock, so no retire falls between the check and the write); otherwise the
    /// file is left as it is and the future resolves to [`StoreError::Retired`].
    pub fn commit_unless_retired(
        &self,
        dir: Dir,
        file: impl Into<String>,
        records: Vec<Record>,
        since: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.queue(dir, file.into(), records, Some(since))
    }

    fn queue(
        &self,
        dir: Dir,
        file: String,
        records: Vec<Record>,
        unless_retired_since: Option<u64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(Request {
                dir,
                file,
                records,
                unless_retired_since,
                done,
            })
            .is_ok();
        let path = self.shared.state_dir.path().to_owned();
        async move {
            if !sent {
                return Err(StoreError::CommitterGone { path });
            }
            match rx.await {
                Ok(result) => result,
                Err(_) => Err(StoreError::CommitterGone { path }),
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> CommitStats {
        self.shared.counters.snapshot()
    }

    /// The state directory written to.
    pub fn state_dir(&self) -> &Arc<StateDir<D>> {
        &self.shared.state_dir
    }
}

/// The batches of a [`Committer::manual`]: the caller decides when a batch runs, and which
/// commits it holds, so that a simulation is deterministic. Feature `sim`.
#[cfg(feature = "sim")]
#[derive(Debug)]
pub struct ManualBatches<D: Disk> {
    rx: mpsc::Receiver<Request>,
    shared: Arc<Shared<D>>,
    mode: SyncMode,
}

#[cfg(feature = "sim")]
impl<D: Disk> Committer<D> {
    /// A committer without its thread: commits queue up until [`ManualBatches::run`] handles
    /// them, on the caller's thread, with the same code the thread runs.
    pub fn manual(state_dir: Arc<StateDir<D>>, mode: SyncMode) -> (Self, ManualBatches<D>) {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            state_dir,
            counters: Counters::default(),
            check: None,
        });
        let batches = ManualBatches {
            rx,
            shared: Arc::clone(&shared),
            mode,
        };
        (Self { tx, shared }, batches)
    }
}

#[cfg(feature = "sim")]
impl<D: Disk> ManualBatches<D> {
    /// Handles the oldest `max` queued commits (at most) as one batch, as the commit thread
    /// does with everything queued; returns how many it handled. Their futures are ready when
    /// it returns.
    pub fn run(&self, max: usize) -> usize {
        let batch: Vec<Request> = self.rx.try_iter().take(max).collect();
        let n = batch.len();
        if n > 0 {
            process(&self.shared, self.mode, batch);
        }
        n
    }
}

fn run<D: Disk>(rx: &mpsc::Receiver<Request>, shared: &Shared<D>, mode: SyncMode) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        process(shared, mode, batch);
    }
}

/// The commits to one file in a batch.
struct Pending {
    dir: Dir,
    file: String,
    records: Vec<Record>,
    unless_retired_since: Option<u64>,
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

fn process<D: Disk>(shared: &Shared<D>, mode: SyncMode, batch: Vec<Request>) {
    let started = Instant::now();
    let c = &shared.counters;
    let n = batch.len() as u64;
    c.batch(n);
    if let Some(Err(reason)) = shared.check.as_ref().map(|check| check()) {
        let e = StoreError::Fenced {
            path: shared.state_dir.path().to_owned(),
            reason,
        };
        tracing::error!(error = %e, commits = n, "record batch refused");
        for r in batch {
            let _ = r.done.send(Err(e.clone()));
        }
        return;
    }
    let mut pending: Vec<Pending> = Vec::new();
    let mut index: HashMap<(Dir, String), usize> = HashMap::new();
    for r in batch {
        match index.get(&(r.dir, r.file.clone())) {
            Some(&i) => {
                // Newer content replaces older; the older waiter is answered with it.
                pending[i].records = r.records;
                pending[i].unless_retired_since = r.unless_retired_since;
                pending[i].waiters.push(r.done);
            }
            None => {
                index.insert((r.dir, r.file.clone()), pending.len());
                pending.push(Pending {
                    dir: r.dir,
                    file: r.file,
                    records: r.records,
                    unless_retired_since: r.unless_retired_since,
                    waiters: vec![r.done],
                });
            }
        }
    }
    c.files(pending.len() as u64);
    let items: Vec<Item<'_>> = pending
        .iter()
        .map(|p| Item {
            dir: p.dir,
            file: &p.file,
            records: &p.records,
            unless_retired_since: p.unless_retired_since,
        })
        .collect();
    let results = shared.state_dir.write_batch(&items, mode, c);
    drop(items);
    let mut failed = 0;
    for (p, r) in pending.into_iter().zip(results) {
        if let Err(e) = &r {
            failed += 1;
            tracing::error!(error = %e, "record write failed");
        }
        for w in p.waiters {
            let _ = w.send(r.clone());
        }
    }
    tracing::debug!(
        commits = n,
        failed,
        elapsed_us = started.elapsed().as_micros() as u64,
        "record batch durable"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use super::*;

    fn rec(mon: &str, cookie: u8) -> Record {
        Record {
            mon_name: mon.as_bytes().to_vec(),
            my_name: b"server1".to_vec(),
            my_prog: 100_021,
            my_vers: 4,
            my_proc: 16,
            priv_: [cookie; 16],
        }
    }

    fn setup() -> (tempfile::TempDir, Committer) {
        let t = tempfile::tempdir().unwrap();
        let s = Arc::new(StateDir::open(t.path()).unwrap());
        (t, Committer::spawn(s))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_directory_fsyncs() {
        let (t, c) = setup();
        let start = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let name = format!("client{i}");
                    c.commit(Dir::Sm, name.clone(), vec![rec(&name, i as u8)])
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let elapsed = start.elapsed();
        let st = c.stats();
        println!("64 concurrent commits: {st:?} in {elapsed:?}");
        assert_eq!(st.commits, 64);
        assert_eq!(st.files, 64);
        assert_eq!(st.file_fsyncs, 64);
        // far fewer directory fsyncs than commits
        assert!(st.dir_fsyncs <= 16, "{st:?}");
        assert_eq!(st.dir_fsyncs, st.batches);
        let (loaded, report) = c.state_dir().load(Dir::Sm).unwrap();
        assert!(report.is_clean());
        assert_eq!(loaded.len(), 64);
        for (file, r) in loaded {
            let i: u8 = file.strip_prefix("client").unwrap().parse().unwrap();
            assert_eq!(r, rec(&file, i));
        }
        drop(t);
    }

    #[tokio::test]
    async fn later_commits_to_a_file_win_and_everyone_is_answered() {
        let (t, c) = setup();
        // queued in call order, awaited in reverse
        let futures: Vec<_> = (0..20u8)
            .map(|i| c.commit(Dir::Sm, "h", vec![rec("h", i)]))
            .collect();
        let last = c.commit(Dir::Sm, "other", vec![]);
        for f in futures.into_iter().rev() {
            f.await.unwrap();
        }
        last.await.unwrap();
        assert_eq!(
            std::fs::read(t.path().join("sm/h")).unwrap(),
            rec("h", 19).to_line()
        );
        let st = c.stats();
        assert_eq!(st.commits, 21);
        assert!(st.files < st.commits || st.batches == 21, "{st:?}");
        // then a removal, then a re-add: order holds across batches
        let a = c.commit(Dir::Sm, "h", vec![]);
        let b = c.commit(Dir::Sm, "h", vec![rec("h", 99)]);
        b.await.unwrap();
        a.await.unwrap();
        assert_eq!(
            std::fs::read(t.path().join("sm/h")).unwrap(),
            rec("h", 99).to_line()
        );
    }

    #[tokio::test]
    async fn errors_reach_every_waiter_and_name_the_path() {
        let (t, c) = setup();
        let bad1 = c.commit(Dir::Sm, "../escape", vec![rec("x", 1)]);
        let bad2 = c.commit(Dir::Sm, "../escape", vec![rec("x", 2)]);
        let good = c.commit(Dir::Bak, "fine", vec![rec("fine", 3)]);
        for f in [bad1, bad2] {
            let e = f.await.unwrap_err();
            assert!(matches!(e, StoreError::Name { .. }), "{e}");
            assert!(e.to_string().contains("../escape"), "{e}");
        }
        good.await.unwrap();
        // the directory disappears under us: every commit to it fails, naming it
        std::fs::remove_dir(t.path().join("sm")).unwrap();
        let fs: Vec<_> = (0..5)
            .map(|i| c.commit(Dir::Sm, format!("h{i}"), vec![rec("h", i)]))
            .collect();
        for f in fs {
            let e = f.await.unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("{}/sm", t.path().display())),
                "{e}"
            );
        }
        assert!(t.path().join("sm.bak/fine").exists());
    }

    #[tokio::test]
    async fn syncfs_mode_writes_the_same() {
        let t = tempfile::tempdir().unwrap();
        let s = Arc::new(StateDir::open(t.path()).unwrap());
        let c = Committer::with_mode(s, SyncMode::SyncFs);
        let fs: Vec<_> = (0..8)
            .map(|i| c.commit(Dir::Bak, format!("h{i}"), vec![rec("h", i)]))
            .collect();
        for f in fs {
            f.await.unwrap();
        }
        let st = c.stats();
        assert_eq!(st.file_fsyncs, 0);
        assert_eq!(st.syncfs, st.batches);
        assert_eq!(c.state_dir().load(Dir::Bak).unwrap().0.len(), 8);
    }

    /// The check runs right before each batch: while it passes, commits are written as
    /// without one; once it refuses, every commit of the batch fails with the reason and
    /// the state directory, and nothing of it reaches the disk.
    #[tokio::test]
    async fn a_refusing_check_fails_the_whole_batch_and_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let s = Arc::new(StateDir::open(t.path()).unwrap());
        let fenced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = fenced.clone();
        let c = Committer::checked(
            s,
            Box::new(move || {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    Err("epoch 3 claimed by node-b".into())
                } else {
                    Ok(())
                }
            }),
        );
        c.commit(Dir::Sm, "kept", vec![rec("kept", 1)])
            .await
            .unwrap();
        c.commit(Dir::Bak, "old", vec![rec("old", 2)])
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(t.path().join("sm/kept")).unwrap(),
            rec("kept", 1).to_line()
        );
        fenced.store(true, std::sync::atomic::Ordering::SeqCst);
        let fs = vec![
            c.commit(Dir::Sm, "new", vec![rec("new", 3)]),
            c.commit(Dir::Sm, "kept", vec![]),
            c.commit(Dir::Bak, "old", vec![]),
            c.commit(Dir::Sm, "new", vec![rec("new", 4)]),
        ];
        for f in fs {
            let e = f.await.unwrap_err();
            assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&t.path().display().to_string()), "{msg}");
            assert!(msg.contains("epoch 3 claimed by node-b"), "{msg}");
            assert!(msg.contains("taken over elsewhere"), "{msg}");
        }
        assert!(!t.path().join("sm/new").exists());
        assert!(t.path().join("sm/kept").exists());
        assert!(t.path().join("sm.bak/old").exists());
        let mut left: Vec<_> = std::fs::read_dir(t.path().join("sm"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["kept"], "no temporary file either");
    }

    #[tokio::test]
    async fn committer_outlives_nothing_it_needs() {
        let (t, c) = setup();
        let f = c.commit(Dir::Sm, "h", vec![rec("h", 1)]);
        drop(c); // the thread finishes the queue before it ends
        f.await.unwrap();
        assert!(t.path().join("sm/h").exists());
    }
}

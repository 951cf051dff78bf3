//! Measures group commit on this machine's file system:
//! `cargo run --release -p nsm-store --example group_commit [DIR]` (DIR defaults to a
//! temporary directory under /var/tmp). For each batch size and [`SyncMode`], N tasks commit
//! one file each at the same time; the baseline writes the same files one after another with
//! [`StateDir::write`].
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use nsm_store::{Committer, Dir, Record, StateDir, SyncMode};

fn rec(mon: &str) -> Record {
    Record {
        mon_name: mon.as_bytes().to_vec(),
        my_name: b"server1.example.test".to_vec(),
        my_prog: 100_021,
        my_vers: 4,
        my_proc: 16,
        priv_: [7; 16],
    }
}

async fn round(c: &Committer, n: usize, tag: &str) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let c = c.clone();
            let name = format!("{tag}-client{i}.example.test");
            tokio::spawn(async move { c.commit(Dir::Sm, name.clone(), vec![rec(&name)]).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arg = std::env::args().nth(1);
    let tmp = tempfile::Builder::new()
        .prefix("nsm-store-bench")
        .tempdir_in(arg.as_deref().unwrap_or("/var/tmp"))
        .unwrap();
    let dir = Arc::new(StateDir::open(tmp.path()).unwrap());
    println!("state directory: {}", dir.path().display());
    const REPS: usize = 9;
    for n in [1usize, 8, 64, 256] {
        // baseline: one durable write after another
        let mut best = Duration::MAX;
        for rep in 0..REPS {
            let start = Instant::now();
            for i in 0..n {
                let name = format!("seq{rep}-client{i}.example.test");
                dir.write(Dir::Sm, &name, &[rec(&name)]).unwrap();
            }
            best = best.min(start.elapsed());
        }
        println!(
            "n={n:4} sequential StateDir::write: {:8.2} ms ({} file fsyncs + {} dir fsyncs)",
            best.as_secs_f64() * 1e3,
            n,
            n
        );
        for mode in [
            SyncMode::FsyncEach,
            SyncMode::FsyncParallel,
            SyncMode::SyncFs,
        ] {
            let c = Committer::with_mode(Arc::clone(&dir), mode);
            let mut times = Vec::new();
            for rep in 0..REPS {
                times.push(round(&c, n, &format!("{mode:?}{rep}")).await);
            }
            times.sort();
            let st = c.stats();
            println!(
                "n={n:4} {mode:?}: median {:8.2} ms, min {:8.2} ms; per round: {:.1} batches, {:.1} dir fsyncs, {:.1} file fsyncs, {:.1} syncfs",
                times[REPS / 2].as_secs_f64() * 1e3,
                times[0].as_secs_f64() * 1e3,
                st.batches as f64 / REPS as f64,
                st.dir_fsyncs as f64 / REPS as f64,
                st.file_fsyncs as f64 / REPS as f64,
                st.syncfs as f64 / REPS as f64,
            );
        }
        // clean up so each size starts from a similar directory
        for d in [Dir::Sm] {
            for (f, _) in dir.load(d).unwrap().0 {
                dir.write(d, &f, &[]).unwrap();
            }
        }
    }
}

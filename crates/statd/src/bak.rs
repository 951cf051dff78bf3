//! Notifying the peers listed in `sm.bak/` (shared by `nsm-notify` and nsmd's takeover): one
//! [`Target`] per `sm.bak/` file, the [`Notifier`] over the given sockets, and each peer's
//! acknowledged records removed from `sm.bak/` as soon as it finished.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nsm_notify::{Notifier, NotifierConfig, NotifyError, Outcome, Sources, Summary, Target};
use nsm_store::{Committer, Dir, Record, StateDir, StoreError};
use tracing::{error, info, warn};

use crate::ownership::Fence;

/// The records of `sm.bak/`, grouped by file (one file per peer).
pub fn load_bak(dir: &StateDir) -> Result<BTreeMap<String, Vec<Record>>, StoreError> {
    let (records, _report) = dir.load(Dir::Bak)?;
    let mut files: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for (file, r) in records {
        files.entry(file).or_default().push(r);
    }
    Ok(files)
}

/// Notifies every peer of `files` (from [`load_bak`]) with the names `names` gives for each
/// of its records; removes what a peer acknowledged from `sm.bak/` as soon as it finished.
/// Removals go through the store's group commit: the fsyncs of many acknowledgements share
/// batches, off the event loop, so a large peer list never waits on the disk between
/// replies. With a `fence`, nothing is written once it fails (another node owns the
/// directory).
pub async fn notify_bak(
    dir: Arc<StateDir>,
    files: BTreeMap<String, Vec<Record>>,
    names: impl Fn(&Record) -> Vec<String>,
    cfg: NotifierConfig,
    sources: Sources,
    fence: Option<&dyn Fence>,
) -> Result<Summary, NotifyError> {
    let mut targets = Vec::new();
    let mut recs = Vec::new();
    let mut index = HashMap::new();
    for (file, rs) in files {
        index.insert(file.clone(), recs.len());
        let mut all: Vec<String> = Vec::new();
        for r in &rs {
            for n in names(r) {
                if !all.contains(&n) {
                    all.push(n);
                }
            }
        }
        targets.push(Target {
            label: file.clone(),
            host: file,
            names: all,
        });
        recs.push(rs);
    }
    let notifier = Notifier::new(cfg, sources, targets)?;
    let committer = Committer::spawn(dir);
    let mut pending = Vec::new();
    let summary = notifier
        .run(|t, outcome, acked| {
            let Some(i) = index.get(&t.label).copied() else {
                return;
            };
            let remaining: Vec<Record> = match outcome {
                Outcome::Acked => Vec::new(),
                Outcome::GaveUp if acked == 0 => return,
                Outcome::GaveUp => {
                    let done = &t.names[..acked];
                    recs[i]
                        .iter()
                        .filter(|r| !names(r).iter().all(|n| done.contains(n)))
                        .cloned()
                        .collect()
                }
            };
            if remaining.len() == recs[i].len() {
                return;
            }
            if let Some(Err(e)) = fence.map(Fence::check) {
                warn!("{} not updated: {e}", t.label);
                return;
            }
            let label = t.label.clone();
            let path = committer.state_dir().file_path(Dir::Bak, &label);
            let gone = remaining.is_empty();
            let commit = committer.commit(Dir::Bak, label.clone(), remaining);
            pending.push(tokio::spawn(async move {
                match commit.await {
                    Ok(()) if gone => info!("{label} removed from sm.bak"),
                    Ok(()) => info!("acknowledged records of {label} removed from sm.bak"),
                    Err(e) => error!(
                        "cannot update {}: {e}; the peer will be notified again next time",
                        path.display()
                    ),
                }
            }));
        })
        .await;
    for p in pending {
        let _ = p.await;
    }
    summary
}

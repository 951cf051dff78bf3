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

/// The files of `sm.bak/` grouped by peer: files whose lines share a mon_name hold the same
/// peer under two names (rpc.statd names a file by the mon_name's canonical DNS name, nsmd by
/// the mon_name itself; a peer left over from one and monitored again under the other has
/// both). Each group is notified once, at the file named by its mon_name when there is one
/// (the name lockd gave), else at its first file.
fn same_peer(files: BTreeMap<String, Vec<Record>>) -> Vec<Vec<(String, Vec<Record>)>> {
    let mut groups: Vec<Vec<(String, Vec<Record>)>> = Vec::new();
    let mut by_mon_name: HashMap<Vec<u8>, usize> = HashMap::new();
    for (file, rs) in files {
        let found = rs
            .iter()
            .find_map(|r| by_mon_name.get(&r.mon_name).copied());
        let i = found.unwrap_or_else(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        for r in &rs {
            by_mon_name.entry(r.mon_name.clone()).or_insert(i);
        }
        groups[i].push((file, rs));
    }
    for g in &mut groups {
        if let Some(own) = g
            .iter()
            .position(|(f, rs)| rs.iter().any(|r| r.mon_name == f.as_bytes()))
        {
            g.swap(0, own);
        }
    }
    groups
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
    let groups = same_peer(files);
    let mut targets = Vec::new();
    let mut index = HashMap::new();
    for (i, group) in groups.iter().enumerate() {
        let mut all: Vec<String> = Vec::new();
        for r in group.iter().flat_map(|(_, rs)| rs) {
            for n in names(r) {
                if !all.contains(&n) {
                    all.push(n);
                }
            }
        }
        let host = group[0].0.clone();
        index.insert(host.clone(), i);
        targets.push(Target {
            label: host.clone(),
            host,
            names: all,
        });
    }
    let notifier = Notifier::new(cfg, sources, targets)?;
    let committer = Committer::spawn(dir);
    let mut pending = Vec::new();
    let summary = notifier
        .run(|t, outcome, acked| {
            let Some(i) = index.get(&t.label).copied() else {
                return;
            };
            for (file, recs) in &groups[i] {
                let remaining: Vec<Record> = match outcome {
                    Outcome::Acked => Vec::new(),
                    Outcome::GaveUp if acked == 0 => return,
                    Outcome::GaveUp => {
                        let done = &t.names[..acked];
                        recs.iter()
                            .filter(|r| !names(r).iter().all(|n| done.contains(n)))
                            .cloned()
                            .collect()
                    }
                };
                if remaining.len() == recs.len() {
                    continue;
                }
                if let Some(Err(e)) = fence.map(Fence::check) {
                    warn!("{file} not updated: {e}");
                    return;
                }
                let label = file.clone();
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
            }
        })
        .await;
    for p in pending {
        let _ = p.await;
    }
    summary
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(mon: &str, my: &str) -> Record {
        Record {
            mon_name: mon.into(),
            my_name: my.into(),
            my_prog: 100_021,
            my_vers: 3,
            my_proc: 16,
            priv_: [7; 16],
        }
    }

    #[test]
    fn files_of_one_peer_under_two_names_are_one_target() {
        let mut files = BTreeMap::new();
        // rpc.statd's leftover (named by the reverse name) and nsmd's file (by the mon_name).
        files.insert(
            "a.example.test".to_owned(),
            vec![rec("198.51.100.20", "srv")],
        );
        files.insert(
            "198.51.100.20".to_owned(),
            vec![rec("198.51.100.20", "srv2")],
        );
        files.insert(
            "198.51.100.21".to_owned(),
            vec![rec("198.51.100.21", "srv")],
        );
        let groups = same_peer(files);
        let shape: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|(f, _)| f.as_str()).collect())
            .collect();
        assert_eq!(
            shape,
            [
                vec!["198.51.100.20", "a.example.test"],
                vec!["198.51.100.21"]
            ],
            "one target per peer, at the file named by its mon_name"
        );
    }
}

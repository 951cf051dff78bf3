//! What SM_SIMU_CRASH and SIGUSR1 in `instance.rs` still call, over the one announce path
//! ([`nsm_notify::announce`]); goes once the instance calls [`Announcement::again`] itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use nsm_notify::{AnnounceError, Announcement, Delivery, NotifierConfig, Source, Sources, Summary};
use nsm_store::{Dir, Record, StateDir, StoreError};

use crate::ownership::{Checked, Fence};

/// The records of `sm.bak/`, grouped by file (one file per peer).
pub fn load_bak(dir: &StateDir) -> Result<BTreeMap<String, Vec<Record>>, StoreError> {
    let (records, _report) = dir.load(Dir::Bak)?;
    let mut files: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for (file, r) in records {
        files.entry(file).or_default().push(r);
    }
    Ok(files)
}

/// Announces `cfg.state` (on disk already) to the peers in `sm.bak/` of `dir` (read again:
/// `_files` is what the caller loaded before) with [`Announcement::again`].
pub async fn notify_bak(
    dir: Arc<StateDir>,
    _files: BTreeMap<String, Vec<Record>>,
    names: impl Fn(&Record) -> Vec<String> + Sync,
    cfg: NotifierConfig,
    sources: Sources,
    fence: Option<&dyn Fence>,
) -> Result<Summary, AnnounceError> {
    let fence = fence.map(Checked);
    Announcement::again(&dir, cfg.state)?
        .send(
            dir.clone(),
            Delivery {
                names: &names,
                source: Source::Bound(sources),
                config: cfg,
                gate: None,
                fence: fence.as_ref().map(|f| f as &dyn nsm_notify::Fence),
            },
        )
        .await
}

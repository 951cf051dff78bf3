//! The HA callout (`-H PROGRAM`), as nfs-utils runs it (`support/include/ha-callout.h`):
//! `PROGRAM add-client <mon_name> <my_name>`, `PROGRAM del-client <mon_name> <my_name>`,
//! `PROGRAM sm-notify <mon_name> <sender address> <state>`. Unlike nfs-utils, it never runs
//! on the request path: events go through a bounded queue to one worker that runs them in
//! order, without a shell, with a time limit; exit codes are logged.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// One event for the callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `add-client`, `del-client` or `sm-notify`.
    pub kind: &'static str,
    /// The arguments after the event name (untrusted bytes from the network).
    pub args: Vec<Vec<u8>>,
}

/// Counters.
#[derive(Debug, Default)]
pub struct CalloutStats {
    /// Runs that exited 0.
    pub ok: AtomicU64,
    /// Runs that failed, timed out or could not start.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// The callout queue; cloning shares it.
#[derive(Debug, Clone)]
pub struct Callouts {
    tx: Option<mpsc::Sender<Event>>,
    stats: Arc<CalloutStats>,
}

impl Callouts {
    /// No callout configured: events are discarded.
    pub fn none() -> Self {
        Self {
            tx: None,
            stats: Arc::default(),
        }
    }

    /// Runs `program` for each event, at most `timeout` each, with `queue` events waiting at most.
    pub fn spawn(program: PathBuf, queue: usize, timeout: Duration) -> Self {
        let (tx, mut rx) = mpsc::channel::<Event>(queue);
        let stats = Arc::new(CalloutStats::default());
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let mut cmd = Command::new(&program);
                cmd.arg(ev.kind)
                    .args(ev.args.iter().map(|a| OsStr::from_bytes(a)))
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true);
                let ok = match cmd.spawn() {
                    Err(e) => {
                        warn!(program = %program.display(), "cannot run the HA callout: {e}");
                        false
                    }
                    Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
                        Ok(Ok(status)) if status.success() => {
                            debug!(event = ev.kind, "HA callout done");
                            true
                        }
                        Ok(Ok(status)) => {
                            warn!(program = %program.display(), event = ev.kind, "HA callout failed: {status}");
                            false
                        }
                        Ok(Err(e)) => {
                            warn!(program = %program.display(), "waiting for the HA callout: {e}");
                            false
                        }
                        Err(_) => {
                            let _ = child.kill().await;
                            warn!(program = %program.display(), event = ev.kind, "HA callout killed after {timeout:?}");
                            false
                        }
                    },
                };
                let c = if ok { &st.ok } else { &st.failed };
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self {
            tx: Some(tx),
            stats,
        }
    }

    /// Queues an event without waiting.
    pub fn send(&self, kind: &'static str, args: Vec<Vec<u8>>) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(Event { kind, args }).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(event = kind, "HA callout queue full: event dropped");
        }
    }

    /// The counters.
    pub fn stats(&self) -> &CalloutStats {
        &self.stats
    }
}

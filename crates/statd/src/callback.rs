//! The callback into lockd when a monitored peer reboots: NLM program `my_prog`, version
//! `my_vers`, procedure `my_proc` (100021/3/16 from the kernel) with `struct status` (the
//! SM_MON's mon_name, the peer's new state, the cookie), sent over UDP to 127.0.0.1 from a
//! privileged port, because lockd accepts it only from loopback with a source port below 1024.
//!
//! As nfs-utils, the port is looked up with rpcbind (PMAP GETPORT, UDP) on every attempt, so a
//! restarted lockd is found; unlike nfs-utils, callbacks run concurrently in their own tasks, so
//! a slow or absent lockd never delays a request or another callback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nsm_rpc::client::{CallOptions, ClientError, Proc, call_udp};
use nsm_rpc::rpcbind::getport;
use nsm_xdr::nsm::{SmString, Status};
use nsm_xdr::rpcbind::{IPPROTO_UDP, PMAP_PORT};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

/// One callback to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    /// The record's mon_name, exactly as given in SM_MON.
    pub mon_name: Vec<u8>,
    /// The peer's new state.
    pub state: i32,
    /// The record's cookie.
    pub priv_: [u8; 16],
    /// Callback program.
    pub prog: u32,
    /// Callback version.
    pub vers: u32,
    /// Callback procedure.
    pub proc_: u32,
}

/// How callbacks are made; the addresses are fixed to loopback (they are settable for tests
/// only through the port of rpcbind, never the host).
#[derive(Debug, Clone)]
pub struct CallbackPolicy {
    /// rpcbind's port on 127.0.0.1.
    pub rpcbind_port: u16,
    /// Attempts (each: GETPORT, then the call).
    pub attempts: u32,
    /// Time allowed to each attempt; the next one starts after it.
    pub attempt_timeout: Duration,
    /// Send from a privileged port (lockd requires it; tests without root may turn it off).
    pub privileged_port: bool,
    /// Most callbacks in progress at once.
    pub concurrency: usize,
    /// Most callbacks waiting; more are dropped and logged.
    pub queue: usize,
}

impl Default for CallbackPolicy {
    fn default() -> Self {
        Self {
            rpcbind_port: PMAP_PORT,
            attempts: 5,
            attempt_timeout: Duration::from_secs(5),
            privileged_port: true,
            concurrency: 64,
            queue: 4096,
        }
    }
}

/// Counters, for status and tests.
#[derive(Debug, Default)]
pub struct CallbackStats {
    /// Callbacks lockd acknowledged.
    pub delivered: AtomicU64,
    /// Callbacks given up after every attempt.
    pub failed: AtomicU64,
    /// Callbacks dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Attempts after a first one failed.
    pub retried: AtomicU64,
}

/// The queue of callbacks and the tasks that make them.
#[derive(Debug, Clone)]
pub struct Callbacks {
    tx: mpsc::Sender<Callback>,
    stats: Arc<CallbackStats>,
}

impl Callbacks {
    /// Starts the worker on the current tokio runtime.
    pub fn spawn(policy: CallbackPolicy) -> Self {
        let (tx, mut rx) = mpsc::channel::<Callback>(policy.queue);
        let stats = Arc::new(CallbackStats::default());
        let st = stats.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(policy.concurrency));
            let policy = Arc::new(policy);
            while let Some(cb) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (policy, st) = (policy.clone(), st.clone());
                tokio::spawn(async move {
                    let counter = if deliver(&policy, &cb, &st).await {
                        &st.delivered
                    } else {
                        &st.failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
        });
        Self { tx, stats }
    }

    /// Queues a callback without waiting.
    pub fn queue(&self, cb: Callback) {
        if self.tx.try_send(cb).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            warn!("lockd callback queue full: a reboot notification was dropped");
        }
    }

    /// The counters.
    pub fn stats(&self) -> &CallbackStats {
        &self.stats
    }
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn deliver(policy: &CallbackPolicy, cb: &Callback, stats: &CallbackStats) -> bool {
    let Ok(mon_name) = SmString::new(&cb.mon_name) else {
        return false;
    };
    let args = Status {
        mon_name,
        state: cb.state,
        priv_: cb.priv_,
    };
    let opts = CallOptions {
        timeout: policy.attempt_timeout,
        retransmit: Duration::from_secs(1),
        max_retransmit: Duration::from_secs(2),
        source: Some(LOOPBACK),
        privileged_port: policy.privileged_port,
        ..CallOptions::default()
    };
    let rpcbind = SocketAddr::new(LOOPBACK, policy.rpcbind_port);
    let name = mon_name.to_string();
    for attempt in 1..=policy.attempts {
        if attempt > 1 {
            stats.retried.fetch_add(1, Ordering::Relaxed);
        }
        let started = tokio::time::Instant::now();
        let result: Result<(), ClientError> = async {
            let lookup = CallOptions {
                privileged_port: false,
                ..opts.clone()
            };
            let Some(port) = getport(rpcbind, cb.prog, cb.vers, IPPROTO_UDP, &lookup).await? else {
                return Err(ClientError::NotAccepted {
                    peer: format!(
                        "rpcbind at {rpcbind} (program {} version {} not registered)",
                        cb.prog, cb.vers
                    ),
                    stat: nsm_rpc::AcceptStat::ProgUnavail,
                });
            };
            let p = Proc {
                prog: cb.prog,
                vers: cb.vers,
                proc_: cb.proc_,
            };
            call_udp(SocketAddr::new(LOOPBACK, port), p, &args, &opts).await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                info!(mon_name = %name, state = cb.state, "lockd notified of the reboot");
                return true;
            }
            Err(e) => {
                debug!(mon_name = %name, attempt, error = %e, "lockd callback failed");
                if attempt == policy.attempts {
                    warn!(mon_name = %name, state = cb.state, "giving up notifying lockd after {attempt} attempts: {e}");
                    return false;
                }
                tokio::time::sleep_until(started + policy.attempt_timeout).await;
            }
        }
    }
    false
}

//! The gate every notification of this host's restart waits at: no SM_NOTIFY leaves before
//! nsmd is registered with rpcbind and answering.
//!
//! A peer told that this host restarted reclaims its locks at once; the local lock manager
//! then asks rpcbind for statd to monitor that peer. Until nsmd's own registration is in place,
//! rpcbind answers with nothing (the kernel retries) or, worse, with the port of a statd that
//! died (the kernel's SM_MON fails with ECONNREFUSED, lockd refuses the reclaim with
//! `NLM_DENIED_NOLOCKS`, and the client's application still believes it holds the lock). So
//! nsmd clears a stale registration before anything else, and every announce path (the node's
//! `nsm-notify` at start, SIGUSR1, SM_SIMU_CRASH, a service instance's takeover) waits here.

use tokio::sync::watch;

/// Whether this nsmd is registered with rpcbind and answering. Cheap to clone; every clone
/// sees the same gate.
#[derive(Debug, Clone)]
pub struct Registered(watch::Receiver<bool>);

/// Opens the gate of its [`Registered`] (nsmd, once its registration succeeded).
#[derive(Debug)]
pub struct OpenRegistered(watch::Sender<bool>);

impl Registered {
    /// A closed gate and the handle that opens it.
    pub fn channel() -> (OpenRegistered, Self) {
        let (tx, rx) = watch::channel(false);
        (OpenRegistered(tx), Self(rx))
    }

    /// A gate that is open from the start: for a process that is not the statd lockd calls
    /// (tests, tools), where there is no registration to wait for.
    pub fn open() -> Self {
        let (tx, rx) = watch::channel(true);
        // The value stays readable after the sender is gone.
        drop(tx);
        Self(rx)
    }

    /// Whether the gate is open now.
    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the gate opens: `true`, or `false` when it never will (nsmd is shutting
    /// down before it registered: nothing may be sent, what is in `sm.bak/` stays there).
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        rx.wait_for(|open| *open).await.is_ok()
    }
}

impl OpenRegistered {
    /// Opens the gate: every waiting notification goes ahead.
    pub fn open(&self) {
        self.0.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_go_ahead_only_once_opened() {
        let (opener, gate) = Registered::channel();
        assert!(!gate.is_open());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a closed gate holds its waiters");
        opener.open();
        assert!(waiter.await.unwrap_or(false));
        assert!(gate.is_open());
        assert!(
            gate.wait().await,
            "an open gate lets later waiters through at once"
        );
    }

    #[tokio::test]
    async fn a_gate_that_can_no_longer_open_says_so() {
        let (opener, gate) = Registered::channel();
        drop(opener);
        assert!(!gate.wait().await);
        assert!(Registered::open().wait().await);
    }
}

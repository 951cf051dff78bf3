//! The SM_NOTIFY engine of nsmd: tells every peer in a notify list that this host (or NFS
//! service) restarted, with a new state number, from the right source address and under the
//! right name(s).
//!
//! Two layers:
//! - [`Scheduler`] ([`scheduler`]), a sans-IO core: it takes `now`, says what to send and
//!   when to wake, and is fed the results. Per-peer exponential backoff (2 s doubling to
//!   120 s), a bounded window of peers in their first try (a peer gives its slot up once a
//!   request of its first try has gone unanswered for 500 ms, so dead peers do not hold the
//!   slots live peers need), an overall budget, one name after the other; O(log N) per event.
//! - [`Notifier`] ([`driver`]), its tokio driver: one UDP socket per address family bound
//!   to the source address (optionally to a device, on a privileged port unless told
//!   otherwise: [`bind_sources`]), name lookups in spawned tasks, statd's port through the
//!   peer's rpcbind (portmapper v2 GETPORT for IPv4, rpcbind v4 GETADDR for IPv6) on the same
//!   sockets ([`portmap`]: no socket or task per lookup), SM_NOTIFY
//!   calls matched to their replies by xid only (as sm-notify does), a [`Summary`] at the
//!   end (also as JSON).
//! - [`announce`]: announcing a restart on top of the store (`sm/` retired to `sm.bak/`,
//!   the state bumped durably, the gate, the peers of `sm.bak/` notified, acknowledged ones
//!   removed), the one path of nsm-notify, takeovers and SM_SIMU_CRASH.
//! - [`resolve`]: getaddrinfo's answers without re-parsing the hosts file per lookup (a
//!   table parsed once, re-read when the file changes), for the driver and for nsmd.
//!
//! Where it differs from nfs-utils' sm-notify (which sends one SM_NOTIFY per record line,
//! one socket for all, strictly one peer after another per loop turn, with a backoff that
//! never exceeds 16 s because each port re-query resets it): the engine notifies once per
//! *peer* (a peer is what the caller calls a target: nsm-notify makes one per `sm.bak/`
//! file, whose lines all share one destination) with each of its names, keeps doubling the
//! wait up to the cap across port re-queries, and works on many peers at once.
#![warn(missing_docs)]

pub mod announce;
pub mod driver;
pub mod portmap;
pub mod resolve;
pub mod scheduler;

pub use announce::{AnnounceError, Announcement, Delivery, Fence, Gate, Retired, Source};
pub use driver::{
    Notifier, NotifierConfig, NotifyError, PeerSummary, SourceSpec, Sources, Summary, Target,
    bind_sources, raise_open_files_limit,
};
pub use scheduler::{
    AckResult, Action, DEFAULT_WINDOW, Outcome, PeerId, PeerReport, PeerStats, Policy, Scheduler,
};

/// sm-notify's names for one mon_name: the name, then, if it is a host name with a dot, the
/// part before the first dot (sm-notify sends the short name once the full one was
/// acknowledged). An address literal is sent as it is.
pub fn default_names(name: &str) -> Vec<String> {
    let mut v = vec![name.to_owned()];
    if name.parse::<std::net::IpAddr>().is_ok() {
        return v;
    }
    match name.split_once('.') {
        Some((short, _)) if !short.is_empty() => v.push(short.to_owned()),
        _ => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use super::default_names;

    #[test]
    fn names_as_sm_notify() {
        assert_eq!(
            default_names("nfs-svc.example.test"),
            ["nfs-svc.example.test", "nfs-svc"]
        );
        assert_eq!(default_names("srv"), ["srv"]);
        assert_eq!(default_names("198.51.100.1"), ["198.51.100.1"]);
        assert_eq!(default_names(".x"), [".x"]);
    }
}

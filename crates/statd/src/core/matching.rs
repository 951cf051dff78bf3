//! What decides whether an SM_NOTIFY concerns a record, the addresses known for monitored
//! names, and the per-address rate limit of SM_NOTIFY. Pure functions and plain data: the
//! time is always passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::names::same_host;

/// How long looked-up addresses of a monitored name are used before they are looked up again.
pub const RESOLVED_FOR: Duration = Duration::from_secs(300);

/// Addresses of monitored names (lower case), looked up only when an SM_NOTIFY needs them
/// (never on a request path, never for every record at start), kept for [`RESOLVED_FOR`].
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    names: HashMap<Vec<u8>, (Vec<IpAddr>, Instant)>,
}

impl NameCache {
    /// What was found for `key` (lower case), fresh or not.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&[IpAddr]> {
        self.names.get(key).map(|(a, _)| a.as_slice())
    }

    /// What was found for `key` (lower case) less than [`RESOLVED_FOR`] before `now`.
    pub(crate) fn fresh(&self, key: &[u8], now: Instant) -> Option<&[IpAddr]> {
        self.names
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < RESOLVED_FOR)
            .map(|(a, _)| a.as_slice())
    }

    /// Keeps what a lookup of `key` (lower case) found at `now`; past `limit` names, drops
    /// those no longer fresh.
    pub(crate) fn insert(&mut self, key: Vec<u8>, addrs: Vec<IpAddr>, now: Instant, limit: usize) {
        self.names.insert(key, (addrs, now));
        if self.names.len() > limit {
            self.names
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < RESOLVED_FOR);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

/// A simple token bucket per sender address, to bound how much work forged or runaway
/// SM_NOTIFYs can cause.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// `per_sec` per address, bursts of twice that.
    pub(crate) fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self {
            per_sec: rate,
            burst: 2.0 * rate,
            buckets: HashMap::new(),
        }
    }

    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() > 4096 {
            let horizon = Duration::from_secs(60);
            self.buckets
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < horizon);
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.per_sec;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether an SM_NOTIFY concerns a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotifyMatch {
    /// It does, and how (for the log).
    Yes(&'static str),
    /// It does not.
    No,
    /// The record's addresses are needed to tell.
    LookUp,
}

impl NotifyMatch {
    pub(crate) const NAME: &'static str = "name";
}

/// Whether an SM_NOTIFY naming `name`, sent from `from`, concerns the record of `mon`, whose
/// addresses are `known` (`None`: not looked up yet; empty: it does not resolve):
/// - the same name (ASCII case aside): yes;
/// - `from` among the record's addresses: yes;
/// - a short name and its FQDN (`web1`, `web1.prod.example`) are the same host only when the
///   addresses agree, since `web1.staging.example` is another host; only when the record's
///   name does not resolve at all, and no other record has that short name, the names alone
///   decide (the "FQDN or short name"; rpc.statd would not match then at all).
pub(crate) fn notify_match(
    name: &[u8],
    mon: &[u8],
    known: Option<&[IpAddr]>,
    from: IpAddr,
    ambiguous_short: bool,
) -> NotifyMatch {
    if name.eq_ignore_ascii_case(mon) {
        return NotifyMatch::Yes(NotifyMatch::NAME);
    }
    match known {
        None => NotifyMatch::LookUp,
        Some(a) if a.contains(&from) => NotifyMatch::Yes("address"),
        Some([]) if !ambiguous_short && same_host(name, mon) => {
            NotifyMatch::Yes("short name (the monitored name does not resolve)")
        }
        Some(_) => NotifyMatch::No,
    }
}

/// Whether more than one monitored host answers to the short form of `name` (`web1` for
/// `web1.prod.example` and `web1.staging.example`).
pub(crate) fn short_name_is_ambiguous<'a>(
    name: &[u8],
    mon_names: impl Iterator<Item = &'a [u8]>,
) -> bool {
    let mut seen: Option<Vec<u8>> = None;
    for mon in mon_names {
        if name.eq_ignore_ascii_case(mon) || !same_host(name, mon) {
            continue;
        }
        let key = mon.to_ascii_lowercase();
        match &seen {
            None => seen = Some(key),
            Some(k) if *k == key => {}
            Some(_) => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_bounds_a_burst_and_refills() {
        let mut r = RateLimiter::new(10);
        let ip = IpAddr::from([198, 51, 100, 9]);
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| r.allow(ip, t0)).count();
        assert_eq!(allowed, 20);
        assert!(r.allow(ip, t0 + Duration::from_millis(150)));
        assert!(r.allow(IpAddr::from([198, 51, 100, 10]), t0), "per address");
    }

    #[test]
    fn name_cache_expires_and_prunes() {
        let mut c = NameCache::default();
        let t0 = Instant::now();
        let a = vec![IpAddr::from([198, 51, 100, 1])];
        c.insert(b"h".to_vec(), a.clone(), t0, 10);
        assert_eq!(c.fresh(b"h", t0 + RESOLVED_FOR / 2), Some(&a[..]));
        assert_eq!(c.fresh(b"h", t0 + RESOLVED_FOR), None);
        assert_eq!(c.get(b"h"), Some(&a[..]), "stale but still known");
        c.insert(b"i".to_vec(), a, t0 + RESOLVED_FOR, 1);
        assert_eq!(
            (c.len(), c.get(b"h")),
            (1, None),
            "stale names pruned past the limit"
        );
    }

    #[test]
    fn notify_matching_rules() {
        let from = IpAddr::from([198, 51, 100, 2]);
        let other = IpAddr::from([198, 51, 100, 60]);
        let m = |name: &[u8], mon: &[u8], known: Option<&[IpAddr]>, amb: bool| {
            notify_match(name, mon, known, from, amb)
        };
        // Same name: always.
        assert_eq!(
            m(b"HostB.Example.Test", b"hostb.example.test", None, false),
            NotifyMatch::Yes("name")
        );
        // Short name vs FQDN: only when the addresses agree.
        assert_eq!(
            m(b"hostB", b"hostB.example.test", None, false),
            NotifyMatch::LookUp
        );
        assert_eq!(
            m(b"hostB", b"hostB.example.test", Some(&[from]), false),
            NotifyMatch::Yes("address")
        );
        assert_eq!(
            m(b"hostB", b"hostB.other.test", Some(&[other]), false),
            NotifyMatch::No
        );
        // Unresolvable: the short name decides, unless two hosts share it.
        assert!(matches!(
            m(b"nfs1", b"nfs1.a.example", Some(&[]), false),
            NotifyMatch::Yes(_)
        ));
        assert_eq!(
            m(b"nfs1", b"nfs1.a.example", Some(&[]), true),
            NotifyMatch::No
        );
        // Another name entirely: by address only.
        assert_eq!(
            m(b"renamed", b"client5.example.test", Some(&[from]), false),
            NotifyMatch::Yes("address")
        );
        assert_eq!(
            m(b"renamed", b"client5.example.test", Some(&[]), false),
            NotifyMatch::No
        );
        assert_eq!(
            m(b"renamed", b"198.51.100.2", Some(&[from]), false),
            NotifyMatch::Yes("address")
        );
    }

    #[test]
    fn ambiguous_short_names() {
        let entry = |mon: &'static str| mon.as_bytes();
        let one = [
            entry("nfs1.a.example"),
            entry("NFS1.a.example"),
            entry("other"),
        ];
        assert!(!short_name_is_ambiguous(b"nfs1", one.into_iter()));
        let two = [entry("nfs1.a.example"), entry("nfs1.b.example")];
        assert!(short_name_is_ambiguous(b"nfs1", two.into_iter()));
        assert!(!short_name_is_ambiguous(b"nfs1.a.example", two.into_iter()));
    }
}

//! What an instance counts, and the OpenMetrics text of every instance (`nsmctl metrics`).
//!
//! Counters are plain atomics bumped where things happen (the dispatch, the rate limiter,
//! the callback workers, the SM_MON commit); the text is made only when asked for.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::instance::Instance;
use crate::service::NotifyProgress;

/// The procedures, by number (7: any other).
const PROCEDURES: [&str; 8] = [
    "null",
    "stat",
    "mon",
    "unmon",
    "unmon_all",
    "simu_crash",
    "notify",
    "other",
];

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered: `stat_succ`, a state, or void.
    Success,
    /// Answered `stat_fail` (SM_MON refused or not recorded).
    Fail,
    /// The arguments did not decode: GARBAGE_ARGS.
    GarbageArgs,
    /// No such procedure: PROC_UNAVAIL.
    ProcUnavail,
}

impl CallOutcome {
    const ALL: [Self; 4] = [
        Self::Success,
        Self::Fail,
        Self::GarbageArgs,
        Self::ProcUnavail,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Fail => "fail",
            Self::GarbageArgs => "garbage_args",
            Self::ProcUnavail => "proc_unavail",
        }
    }
}

/// Upper bounds of the SM_MON disk-wait buckets, in seconds.
const WAIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The counters of one instance.
#[derive(Debug, Default)]
pub struct Metrics {
    calls: [[AtomicU64; 4]; 8],
    /// SM_NOTIFYs ignored: over the per-address rate limit.
    pub notify_rate_limited: AtomicU64,
    /// SM_NOTIFYs dropped: too many already waited for name lookups.
    pub notify_queue_full: AtomicU64,
    /// SM_MON's wait for the disk, by bucket (not cumulative), the last one +Inf.
    mon_wait: [AtomicU64; 13],
    /// The waits' sum, in microseconds.
    mon_wait_us: AtomicU64,
}

impl Metrics {
    /// Counts a call of procedure `proc_` that ended as `outcome`.
    pub fn call(&self, proc_: u32, outcome: CallOutcome) {
        let p = usize::try_from(proc_).unwrap_or(7).min(7);
        let o = CallOutcome::ALL
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(0);
        self.calls[p][o].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an SM_MON's wait for its record to be on disk.
    pub fn mon_waited(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = WAIT_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(WAIT_BUCKETS.len());
        self.mon_wait[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.mon_wait_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// One instance, as the metrics show it.
#[derive(Debug)]
pub struct Sample<'a> {
    /// The instance's name (`node` for the node).
    pub name: &'a str,
    /// The instance, when it is active here.
    pub instance: Option<&'a Instance>,
    /// A service instance's last notification run.
    pub notify: Option<&'a NotifyProgress>,
}

/// The OpenMetrics text of `samples` (ends with `# EOF`).
pub fn render(samples: &[Sample<'_>]) -> String {
    let mut out = String::new();
    let active: Vec<(&str, &Instance)> = samples
        .iter()
        .filter_map(|s| s.instance.map(|i| (s.name, i)))
        .collect();
    family(
        &mut out,
        "nsmd_active",
        "gauge",
        "1 when the instance is served here.",
    );
    for s in samples {
        let _ = writeln!(
            out,
            "nsmd_active{{instance=\"{}\"}} {}",
            s.name,
            u8::from(s.instance.is_some())
        );
    }
    family(&mut out, "nsmd_records", "gauge", "Monitor records (sm/).");
    for (n, i) in &active {
        let _ = writeln!(out, "nsmd_records{{instance=\"{n}\"}} {}", i.len());
    }
    family(&mut out, "nsmd_state", "gauge", "The NSM state number.");
    for (n, i) in &active {
        let _ = writeln!(out, "nsmd_state{{instance=\"{n}\"}} {}", i.state());
    }
    family(
        &mut out,
        "nsmd_notify_queue",
        "gauge",
        "Peers of the last notification run, by status.",
    );
    for s in samples {
        let Some(p) = s.notify else { continue };
        let pending = if p.finished {
            0
        } else {
            p.peers.saturating_sub(p.acked + p.gave_up)
        };
        for (status, v) in [
            ("pending", pending),
            ("acknowledged", p.acked),
            ("given_up", p.gave_up),
        ] {
            let _ = writeln!(
                out,
                "nsmd_notify_queue{{instance=\"{}\",status=\"{status}\"}} {v}",
                s.name
            );
        }
    }
    family(
        &mut out,
        "nsmd_calls",
        "counter",
        "NSM calls, by procedure and outcome.",
    );
    for (n, i) in &active {
        for (p, name) in PROCEDURES.iter().enumerate() {
            for (o, outcome) in CallOutcome::ALL.iter().enumerate() {
                let v = i.metrics().calls[p][o].load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "nsmd_calls_total{{instance=\"{n}\",procedure=\"{name}\",outcome=\"{}\"}} {v}",
                        outcome.label()
                    );
                }
            }
        }
    }
    family(
        &mut out,
        "nsmd_lockd_callbacks",
        "counter",
        "Callbacks to lockd after a peer rebooted, by result.",
    );
    for (n, i) in &active {
        let st = i.callbacks().stats();
        for (result, c) in [
            ("delivered", &st.delivered),
            ("failed", &st.failed),
            ("dropped", &st.dropped),
        ] {
            let _ = writeln!(
                out,
                "nsmd_lockd_callbacks_total{{instance=\"{n}\",result=\"{result}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
    }
    family(
        &mut out,
        "nsmd_lockd_callback_retries",
        "counter",
        "Callback attempts after a first one failed.",
    );
    for (n, i) in &active {
        let _ = writeln!(
            out,
            "nsmd_lockd_callback_retries_total{{instance=\"{n}\"}} {}",
            i.callbacks().stats().retried.load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "nsmd_notifications_refused",
        "counter",
        "SM_NOTIFYs from peers not acted on, by reason.",
    );
    for (n, i) in &active {
        let m = i.metrics();
        for (reason, c) in [
            ("rate_limited", &m.notify_rate_limited),
            ("queue_full", &m.notify_queue_full),
        ] {
            let _ = writeln!(
                out,
                "nsmd_notifications_refused_total{{instance=\"{n}\",reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
    }
    family(
        &mut out,
        "nsmd_mon_disk_wait_seconds",
        "histogram",
        "How long an SM_MON waited for its record to be on stable storage.",
    );
    for (n, i) in &active {
        let m = i.metrics();
        let mut cumulative = 0;
        for (b, bound) in WAIT_BUCKETS.iter().enumerate() {
            cumulative += m.mon_wait[b].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "nsmd_mon_disk_wait_seconds_bucket{{instance=\"{n}\",le=\"{bound:?}\"}} {cumulative}"
            );
        }
        cumulative += m.mon_wait[WAIT_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "nsmd_mon_disk_wait_seconds_bucket{{instance=\"{n}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "nsmd_mon_disk_wait_seconds_count{{instance=\"{n}\"}} {cumulative}"
        );
        #[allow(clippy::cast_precision_loss)]
        let sum = m.mon_wait_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "nsmd_mon_disk_wait_seconds_sum{{instance=\"{n}\"}} {sum}"
        );
    }
    out.push_str("# EOF\n");
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "# HELP {name} {help}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_counted_where_the_wait_falls() {
        let m = Metrics::default();
        m.mon_waited(Duration::from_micros(300));
        m.mon_waited(Duration::from_millis(3));
        m.mon_waited(Duration::from_secs(9));
        let counts: Vec<u64> = m
            .mon_wait
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(m.mon_wait_us.load(Ordering::Relaxed), 9_003_300);
        m.call(2, CallOutcome::Fail);
        m.call(99, CallOutcome::ProcUnavail);
        assert_eq!(m.calls[2][1].load(Ordering::Relaxed), 1);
        assert_eq!(m.calls[7][3].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_inactive_instance_shows_only_that_it_is_inactive() {
        let text = render(&[Sample {
            name: "svc1",
            instance: None,
            notify: None,
        }]);
        assert!(
            text.contains("nsmd_active{instance=\"svc1\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("nsmd_records{"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}

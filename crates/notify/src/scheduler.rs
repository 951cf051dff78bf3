//! The sans-IO core: which peer gets which packet when. No sockets, no clock: every method
//! takes `now`, [`Scheduler::poll`] says what to do, [`Scheduler::next_wake`] says when to
//! call it again, and the `on_*` methods feed back what happened.
//!
//! Each peer walks through three steps: resolve its name (DNS), ask its rpcbind for the
//! statd port, send SM_NOTIFY until it is acknowledged, once per name of its names list, in
//! order. A failure (no address, no port, no acknowledgement in time) backs off: the wait
//! starts at [`Policy::initial_timeout`] and doubles after each failure up to
//! [`Policy::max_timeout`] (2, 4, 8, ... 120 s with the defaults). After
//! [`Policy::requery_after`] unacknowledged SM_NOTIFYs the port is looked up again, on the
//! next address of the peer (its statd may have restarted on another port, or that address
//! may be dead). A new name in the list starts again at the initial timeout, as sm-notify
//! does.
//!
//! **Window.** At most [`Policy::window`] peers are in their *first try* at once; the others
//! wait in order. A peer leaves the window when it finishes or when its first try fails (its
//! first timeout or failed lookup): from then on it retries on its own timer, outside the
//! window. So dead peers never hold the slots that live peers need, and new peers still start
//! at a bounded rate.
//!
//! **Budget.** When [`Policy::budget`] has passed since the first [`Scheduler::poll`], every
//! unfinished peer is given up ([`Action::GiveUp`]).

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A peer, as numbered by [`Scheduler::add_peer`] (0, 1, 2, ...).
pub type PeerId = usize;

/// How hard and how wide to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The first wait after a send or a failure (sm-notify: 2 s).
    pub initial_timeout: Duration,
    /// The wait never grows beyond this (sm-notify: 120 s).
    pub max_timeout: Duration,
    /// Give up on every unfinished peer after this long; `None`: never (sm-notify `-m 0`).
    pub budget: Option<Duration>,
    /// How many peers may be in their first try at once (at least 1).
    pub window: usize,
    /// Look the port up again (on the next address) after this many unacknowledged
    /// SM_NOTIFYs (sm-notify: 4).
    pub requery_after: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            initial_timeout: Duration::from_secs(2),
            max_timeout: Duration::from_secs(120),
            budget: Some(Duration::from_secs(15 * 60)),
            window: 64,
            requery_after: 4,
        }
    }
}

/// What the driver must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Resolve the peer's host name to all its addresses, then call
    /// [`Scheduler::on_resolved`].
    Resolve(PeerId),
    /// Ask rpcbind at this address (port 111) for statd's UDP port, then call
    /// [`Scheduler::on_port`].
    GetPort(PeerId, SocketAddr),
    /// Send one SM_NOTIFY; an acknowledgement is reported with [`Scheduler::on_ack`] and
    /// `name_index`.
    SendNotify {
        /// The peer.
        peer: PeerId,
        /// Its address.
        addr: SocketAddr,
        /// Its statd's UDP port.
        port: u16,
        /// The mon_name to send.
        name: String,
        /// Which of the peer's names this is.
        name_index: usize,
        /// The how-manieth SM_NOTIFY to this peer this is (1-based).
        attempt: u32,
    },
    /// The budget ran out before this peer acknowledged.
    GiveUp(PeerId),
}

/// How a peer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every name was acknowledged.
    Acked,
    /// The budget ran out first.
    GaveUp,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Acked => "acked",
            Self::GaveUp => "gave-up",
        })
    }
}

/// What [`Scheduler::on_ack`] made of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckResult {
    /// Not for the name being sent (a late duplicate, or the peer is finished): ignored.
    Ignored,
    /// The next name is due now.
    NextName,
    /// The peer acknowledged its last name: it is done.
    Done,
}

/// Counters of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// SM_NOTIFYs sent.
    pub notifies: u32,
    /// Name lookups started.
    pub lookups: u32,
    /// Name lookups that gave no address.
    pub dns_failures: u32,
    /// Port lookups started.
    pub port_lookups: u32,
    /// Port lookups that gave no port.
    pub port_failures: u32,
    /// SM_NOTIFYs that were not acknowledged in time.
    pub timeouts: u32,
    /// The last failure, for the report.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Resolve,
    GetPort,
    Notify(u16),
}

#[derive(Debug)]
struct Peer {
    names: Vec<String>,
    acked: usize,
    addrs: Vec<SocketAddr>,
    addr_idx: usize,
    step: Step,
    /// When the next action is due; `None` while waiting for the driver's answer (or not
    /// admitted yet).
    due: Option<Instant>,
    timeout: Duration,
    unanswered: u32,
    admitted: bool,
    first_try: bool,
    outcome: Option<Outcome>,
    finished_at: Option<Instant>,
    stats: PeerStats,
}

impl Peer {
    fn active(&self) -> bool {
        self.admitted && self.outcome.is_none()
    }

    fn addr(&self) -> Option<SocketAddr> {
        self.addrs.get(self.addr_idx).copied()
    }

    fn rotate(&mut self) {
        if !self.addrs.is_empty() {
            self.addr_idx = (self.addr_idx + 1) % self.addrs.len();
        }
    }
}

/// A peer's state, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    /// The peer.
    pub peer: PeerId,
    /// How it ended; `None` while it is still being tried.
    pub outcome: Option<Outcome>,
    /// How many of its names (from the front of the list) were acknowledged.
    pub acked_names: usize,
    /// How long after the start it finished.
    pub finished_after: Option<Duration>,
    /// Its counters.
    pub stats: PeerStats,
}

/// The retry scheduler. See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    policy: Policy,
    peers: Vec<Peer>,
    start: Option<Instant>,
    unfinished: usize,
}

impl Scheduler {
    /// A scheduler with no peers. A window of 0 is taken as 1.
    pub fn new(mut policy: Policy) -> Self {
        policy.window = policy.window.max(1);
        policy.requery_after = policy.requery_after.max(1);
        Self {
            policy,
            peers: Vec::new(),
            start: None,
            unfinished: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Adds a peer to notify with `names`, in order (a peer without names is done at once).
    pub fn add_peer(&mut self, names: Vec<String>) -> PeerId {
        let done = names.is_empty();
        self.peers.push(Peer {
            names,
            acked: 0,
            addrs: Vec::new(),
            addr_idx: 0,
            step: Step::Resolve,
            due: None,
            timeout: self.policy.initial_timeout,
            unanswered: 0,
            admitted: false,
            first_try: true,
            outcome: done.then_some(Outcome::Acked),
            finished_at: None,
            stats: PeerStats::default(),
        });
        if !done {
            self.unfinished += 1;
        }
        self.peers.len() - 1
    }

    /// Whether every peer acknowledged or was given up.
    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// When the budget runs out, once started.
    pub fn deadline(&self) -> Option<Instant> {
        Some(self.start? + self.policy.budget?)
    }

    fn in_window(&self) -> usize {
        self.peers
            .iter()
            .filter(|p| p.active() && p.first_try)
            .count()
    }

    /// Admits waiting peers while the window has room; true if any was admitted.
    fn admit(&mut self, now: Instant) -> bool {
        let mut room = self.policy.window.saturating_sub(self.in_window());
        let mut any = false;
        for p in &mut self.peers {
            if room == 0 {
                break;
            }
            if !p.admitted && p.outcome.is_none() {
                p.admitted = true;
                p.due = Some(now);
                room -= 1;
                any = true;
            }
        }
        any
    }

    fn finish(&mut self, id: PeerId, outcome: Outcome, now: Instant) {
        let p = &mut self.peers[id];
        if p.outcome.is_none() {
            p.outcome = Some(outcome);
            p.finished_at = Some(now);
            p.due = None;
            self.unfinished -= 1;
        }
    }

    /// A failed step: wait, then grow the wait; the peer leaves the window.
    fn fail(&mut self, id: PeerId, now: Instant, error: String) {
        let max = self.policy.max_timeout;
        let p = &mut self.peers[id];
        p.first_try = false;
        p.due = Some(now + p.timeout);
        p.timeout = (p.timeout * 2).min(max);
        p.stats.last_error = Some(error);
    }

    /// What to do at `now`. Call it first to start the clock (the budget counts from the
    /// first call), then whenever [`Scheduler::next_wake`] has come or an `on_*` method was
    /// called.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let start = *self.start.get_or_insert(now);
        let mut out = Vec::new();
        if self.policy.budget.is_some_and(|b| now >= start + b) {
            for id in 0..self.peers.len() {
                if self.peers[id].outcome.is_none() {
                    self.finish(id, Outcome::GaveUp, now);
                    out.push(Action::GiveUp(id));
                }
            }
            return out;
        }
        loop {
            self.admit(now);
            for id in 0..self.peers.len() {
                self.step(id, now, &mut out);
            }
            // A retransmission above may have freed a slot.
            if !self.admit(now) {
                break;
            }
        }
        out
    }

    fn step(&mut self, id: PeerId, now: Instant, out: &mut Vec<Action>) {
        let policy = &self.policy;
        let p = &mut self.peers[id];
        if !p.active() || p.due.is_none_or(|d| d > now) {
            return;
        }
        match p.step {
            Step::Resolve => {
                p.due = None;
                p.stats.lookups += 1;
                out.push(Action::Resolve(id));
            }
            Step::GetPort => match p.addr() {
                Some(addr) => {
                    p.due = None;
                    p.stats.port_lookups += 1;
                    out.push(Action::GetPort(id, addr));
                }
                None => {
                    p.step = Step::Resolve;
                    p.due = None;
                    p.stats.lookups += 1;
                    out.push(Action::Resolve(id));
                }
            },
            Step::Notify(port) => {
                if p.unanswered > 0 {
                    // The last SM_NOTIFY was not acknowledged in time.
                    p.first_try = false;
                    p.stats.timeouts += 1;
                    p.timeout = (p.timeout * 2).min(policy.max_timeout);
                    p.stats.last_error = Some(format!(
                        "no answer to {} SM_NOTIFY(s) on port {port}",
                        p.unanswered
                    ));
                }
                if p.unanswered >= policy.requery_after {
                    p.rotate();
                    p.unanswered = 0;
                    p.step = Step::GetPort;
                    match p.addr() {
                        Some(addr) => {
                            p.due = None;
                            p.stats.port_lookups += 1;
                            out.push(Action::GetPort(id, addr));
                        }
                        None => p.due = Some(now),
                    }
                    return;
                }
                let Some(addr) = p.addr() else {
                    p.step = Step::Resolve;
                    p.due = Some(now);
                    return;
                };
                p.unanswered += 1;
                p.stats.notifies += 1;
                p.due = Some(now + p.timeout);
                out.push(Action::SendNotify {
                    peer: id,
                    addr,
                    port,
                    name: p.names[p.acked].clone(),
                    name_index: p.acked,
                    attempt: p.stats.notifies,
                });
            }
        }
    }

    /// The name lookup of `peer` finished: its addresses (in the order to try), or why there
    /// are none. Ignored unless a lookup of `peer` is outstanding.
    pub fn on_resolved(
        &mut self,
        peer: PeerId,
        addrs: Result<Vec<SocketAddr>, String>,
        now: Instant,
    ) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if !p.active() || p.step != Step::Resolve || p.due.is_some() {
            return;
        }
        match addrs {
            Ok(a) if !a.is_empty() => {
                p.addrs = a;
                p.addr_idx = 0;
                p.step = Step::GetPort;
                p.due = Some(now);
            }
            Ok(_) => {
                p.stats.dns_failures += 1;
                self.fail(
                    peer,
                    now,
                    "the name resolves to no usable address".to_owned(),
                );
            }
            Err(e) => {
                p.stats.dns_failures += 1;
                self.fail(peer, now, e);
            }
        }
    }

    /// The port lookup of `peer` at `addr` finished: statd's UDP port, `Ok(None)` when statd
    /// is not registered, or why rpcbind did not answer. Ignored unless that lookup is
    /// outstanding.
    pub fn on_port(
        &mut self,
        peer: PeerId,
        addr: SocketAddr,
        port: Result<Option<u16>, String>,
        now: Instant,
    ) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if !p.active() || p.step != Step::GetPort || p.due.is_some() || p.addr() != Some(addr) {
            return;
        }
        match port {
            Ok(Some(port)) => {
                p.step = Step::Notify(port);
                p.unanswered = 0;
                p.due = Some(now);
            }
            other => {
                p.stats.port_failures += 1;
                p.rotate();
                let e = match other {
                    Err(e) => e,
                    _ => format!("statd (100024/1/udp) is not registered with rpcbind on {addr}"),
                };
                self.fail(peer, now, e);
            }
        }
    }

    /// `peer` acknowledged its name number `name_index`.
    pub fn on_ack(&mut self, peer: PeerId, name_index: usize, now: Instant) -> AckResult {
        let initial = self.policy.initial_timeout;
        let Some(p) = self.peers.get_mut(peer) else {
            return AckResult::Ignored;
        };
        if !p.active() || name_index != p.acked || !matches!(p.step, Step::Notify(_)) {
            return AckResult::Ignored;
        }
        p.acked += 1;
        if p.acked == p.names.len() {
            self.finish(peer, Outcome::Acked, now);
            return AckResult::Done;
        }
        p.unanswered = 0;
        p.timeout = initial;
        p.due = Some(now);
        AckResult::NextName
    }

    /// When [`Scheduler::poll`] has something to do next (the earliest due peer, or the end
    /// of the budget); `None` when nothing is due until an `on_*` call (or everything is
    /// finished).
    pub fn next_wake(&self) -> Option<Instant> {
        if self.is_finished() {
            return None;
        }
        let due = self
            .peers
            .iter()
            .filter(|p| p.active())
            .filter_map(|p| p.due)
            .min();
        match (due, self.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The names of `peer`.
    pub fn names(&self, peer: PeerId) -> &[String] {
        self.peers.get(peer).map_or(&[], |p| &p.names)
    }

    /// Every peer's state, in [`PeerId`] order.
    pub fn report(&self) -> Vec<PeerReport> {
        self.peers
            .iter()
            .enumerate()
            .map(|(id, p)| PeerReport {
                peer: id,
                outcome: p.outcome,
                acked_names: p.acked,
                finished_after: p.finished_at.zip(self.start).map(|(f, s)| f - s),
                stats: p.stats.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, last], 111))
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Drives a peer whose rpcbind answers (port 4000) and whose statd never acknowledges;
    /// returns the times (s after start) of every SendNotify and GetPort.
    fn silent_peer_times(policy: Policy, until: u64) -> (Vec<u64>, Vec<u64>) {
        let t0 = Instant::now();
        let mut s = Scheduler::new(policy);
        let p = s.add_peer(names(&["srv"]));
        let (mut sends, mut ports) = (Vec::new(), Vec::new());
        let mut now = t0;
        loop {
            let mut actions = s.poll(now);
            while let Some(a) = actions.pop() {
                let secs = (now - t0).as_secs();
                match a {
                    Action::Resolve(id) => s.on_resolved(id, Ok(vec![addr(1), addr(2)]), now),
                    Action::GetPort(id, a) => {
                        ports.push(secs);
                        s.on_port(id, a, Ok(Some(4000)), now);
                    }
                    Action::SendNotify { peer, .. } => {
                        assert_eq!(peer, p);
                        sends.push(secs);
                    }
                    Action::GiveUp(_) => return (sends, ports),
                }
                actions.extend(s.poll(now));
            }
            match s.next_wake() {
                Some(w) if w - t0 <= Duration::from_secs(until) => now = w,
                _ => return (sends, ports),
            }
        }
    }

    #[test]
    fn backoff_doubles_from_2_to_120_seconds() {
        let policy = Policy {
            budget: None,
            ..Policy::default()
        };
        let (sends, ports) = silent_peer_times(policy, 1000);
        let gaps: Vec<u64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps[..9], [2, 4, 8, 16, 32, 64, 120, 120, 120]);
        assert!(gaps.iter().all(|&g| g <= 120));
        // The port is looked up first, then again after every 4 unanswered SM_NOTIFYs.
        assert_eq!(ports[..3], [0, 30, 366]);
    }

    #[test]
    fn budget_gives_up_and_counts() {
        let policy = Policy {
            budget: Some(Duration::from_secs(60)),
            ..Policy::default()
        };
        let (sends, _) = silent_peer_times(policy.clone(), 10_000);
        assert_eq!(sends, [0, 2, 6, 14, 30]);
        let t0 = Instant::now();
        let mut s = Scheduler::new(policy);
        let p = s.add_peer(names(&["srv"]));
        assert_eq!(s.poll(t0), [Action::Resolve(p)]);
        s.on_resolved(p, Err("no such host".into()), t0);
        assert_eq!(s.next_wake(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(s.poll(t0 + Duration::from_secs(60)), [Action::GiveUp(p)]);
        assert!(s.is_finished());
        assert_eq!(s.next_wake(), None);
        let r = &s.report()[0];
        assert_eq!(r.outcome, Some(Outcome::GaveUp));
        assert_eq!(r.stats.dns_failures, 1);
        assert_eq!(r.stats.last_error.as_deref(), Some("no such host"));
    }

    #[test]
    fn names_in_order_then_done() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Policy::default());
        let p = s.add_peer(names(&["svc.example.test", "svc"]));
        assert_eq!(s.poll(t0), [Action::Resolve(p)]);
        s.on_resolved(p, Ok(vec![addr(1)]), t0);
        assert_eq!(s.poll(t0), [Action::GetPort(p, addr(1))]);
        s.on_port(p, addr(1), Ok(Some(700)), t0);
        let a = s.poll(t0);
        assert!(
            matches!(&a[..], [Action::SendNotify { name, name_index: 0, port: 700, .. }] if name == "svc.example.test")
        );
        assert_eq!(s.on_ack(p, 1, t0), AckResult::Ignored);
        assert_eq!(s.on_ack(p, 0, t0), AckResult::NextName);
        let a = s.poll(t0);
        assert!(
            matches!(&a[..], [Action::SendNotify { name, name_index: 1, port: 700, .. }] if name == "svc")
        );
        assert_eq!(s.on_ack(p, 0, t0), AckResult::Ignored, "late duplicate");
        assert_eq!(s.on_ack(p, 1, t0), AckResult::Done);
        assert!(s.is_finished());
        assert_eq!(s.report()[0].outcome, Some(Outcome::Acked));
        assert_eq!(s.report()[0].acked_names, 2);
    }

    #[test]
    fn dead_peers_do_not_delay_live_ones() {
        // Window 2; peers 0 and 1 are dead (rpcbind never answers in time), peers 2..6 live.
        let t0 = Instant::now();
        let mut s = Scheduler::new(Policy {
            window: 2,
            ..Policy::default()
        });
        for i in 0..6 {
            s.add_peer(vec![format!("p{i}")]);
        }
        let mut now = t0;
        let mut acked_at = [None; 6];
        let mut in_flight_max = 0;
        while !s.is_finished() && now - t0 < Duration::from_secs(100) {
            let mut actions = s.poll(now);
            while let Some(a) = actions.pop() {
                match a {
                    Action::Resolve(id) => {
                        s.on_resolved(id, Ok(vec![addr(u8::try_from(id).unwrap())]), now);
                    }
                    Action::GetPort(id, a) if id < 2 => {
                        // A dead peer: the lookup fails after its own timeout.
                        s.on_port(id, a, Err("timeout".into()), now + Duration::from_secs(5));
                    }
                    Action::GetPort(id, a) => s.on_port(id, a, Ok(Some(700)), now),
                    Action::SendNotify {
                        peer, name_index, ..
                    } => {
                        if s.on_ack(peer, name_index, now) == AckResult::Done {
                            acked_at[peer] = Some(now - t0);
                        }
                    }
                    Action::GiveUp(_) => {}
                }
                in_flight_max = in_flight_max.max(s.in_window());
                actions.extend(s.poll(now));
            }
            match s.next_wake() {
                Some(w) => now = w,
                None => break,
            }
        }
        assert!(in_flight_max <= 2, "window respected: {in_flight_max}");
        for (i, t) in acked_at.iter().enumerate().skip(2) {
            assert_eq!(*t, Some(Duration::ZERO), "live peer {i} acked at once");
        }
        assert_eq!(acked_at[0], None);
        assert_eq!(acked_at[1], None);
        let r = s.report();
        assert!(r[0].stats.port_failures >= 1);
        assert_eq!(r[0].outcome, None, "still being retried");
    }

    #[test]
    fn window_bounds_first_tries() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Policy {
            window: 3,
            ..Policy::default()
        });
        for i in 0..10 {
            s.add_peer(vec![format!("p{i}")]);
        }
        let a = s.poll(t0);
        assert_eq!(
            a,
            [Action::Resolve(0), Action::Resolve(1), Action::Resolve(2)]
        );
        // One finishes its lookup and fails: it leaves the window, the next one starts.
        s.on_resolved(1, Err("nxdomain".into()), t0);
        assert_eq!(s.poll(t0), [Action::Resolve(3)]);
        assert_eq!(s.next_wake(), Some(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn port_failure_rotates_addresses_and_backs_off() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Policy::default());
        let p = s.add_peer(names(&["x"]));
        s.poll(t0);
        s.on_resolved(p, Ok(vec![addr(1), addr(2)]), t0);
        assert_eq!(s.poll(t0), [Action::GetPort(p, addr(1))]);
        s.on_port(p, addr(1), Ok(None), t0);
        assert!(s.poll(t0).is_empty());
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(s.next_wake(), Some(t2));
        assert_eq!(s.poll(t2), [Action::GetPort(p, addr(2))]);
        s.on_port(p, addr(2), Err("refused".into()), t2);
        assert_eq!(s.next_wake(), Some(t2 + Duration::from_secs(4)));
        // An answer for an address not asked is ignored.
        s.on_port(p, addr(9), Ok(Some(1)), t2);
        assert_eq!(s.report()[0].stats.port_failures, 2);
    }
}

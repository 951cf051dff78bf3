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
//! wait in order (a FIFO queue). A peer holds its slot only while its first try has a fair
//! chance: it leaves the window when it finishes, when a step fails (a failed lookup), or
//! when a request of its first try (name lookup, port lookup or SM_NOTIFY) has gone
//! unanswered for [`Policy::slot_hold`] (500 ms), whichever comes first. The request may
//! still be answered later; the peer then goes on, on its own timers, outside the window. So
//! a dead peer holds a slot for at most one slot hold, never for the driver's whole RPC
//! timeout, live peers are not kept waiting behind dead ones, and new peers still start at a
//! bounded rate (at most `window` per slot hold when none answers).
//!
//! **Budget.** When [`Policy::budget`] has passed since the first [`Scheduler::poll`], every
//! unfinished peer is given up ([`Action::GiveUp`]).
//!
//! **Cost.** Per-peer state lives in a `Vec` indexed by [`PeerId`]; wake-ups are kept in a
//! binary heap of `(due, peer, generation)` with lazy deletion (a peer's newer timer makes
//! its older entries stale); the window is a counter and the waiting peers a queue. Every
//! operation is O(log N) or amortised O(1): [`Scheduler::poll`] only touches the peers that
//! are due. Only [`Scheduler::report`] and the end of the budget walk all peers, once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A peer, as numbered by [`Scheduler::add_peer`] (0, 1, 2, ...).
pub type PeerId = usize;

/// How hard and how wide to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The first wait after a send or a failure (sm-notify: 2 s).
    pub initial_timeout: Duration,
    /// How long a request of a peer's first try (name lookup, port lookup, SM_NOTIFY) may go
    /// unanswered before the peer gives its slot of the window up (default 500 ms, the
    /// driver's first RPC retransmission: a live peer on any network statd serves answers
    /// well within it). The request goes on; only the slot is freed.
    pub slot_hold: Duration,
    /// The wait never grows beyond this (sm-notify: 120 s).
    pub max_timeout: Duration,
    /// Give up on every unfinished peer after this long; `None`: never (sm-notify `-m 0`).
    pub budget: Option<Duration>,
    /// How many peers may be in their first try at once (at least 1).
    pub window: usize,
    /// Look the port up again (on the next address) after this many unacknowledged
    /// SM_NOTIFYs (sm-notify: 4).
    pub requery_after: u32,
    /// After a takeover: each name's first SM_NOTIFY (to a port just looked up) is sent again
    /// after this long when unacknowledged, before the backoff from
    /// [`Policy::initial_timeout`] starts, and the driver's port lookup retransmits after
    /// it too (else 500 ms). A service address that just moved can lose the first answer to
    /// a neighbour entry still naming the old node's MAC, until the gratuitous ARP; a quick
    /// second try costs this long, not a whole backoff step. `None` (sm-notify): no quick
    /// retry.
    pub quick_retransmit: Option<Duration>,
}

/// The default [`Policy::window`]. A dead peer holds its slot for one slot hold (500 ms), so
/// with 10% dead peers the window lets about 40,000 peers start per second (100,000 peers
/// need 2.5 s by construction; 512 made it 10 s), while no more than 2,048 first tries are
/// in flight at once: about 200 KB of small datagrams, and replies that fit in the sockets'
/// 4 MiB receive buffer (each costs about 1 KiB of it), so a burst loses none.
pub const DEFAULT_WINDOW: usize = 2048;

impl Default for Policy {
    fn default() -> Self {
        Self {
            initial_timeout: Duration::from_secs(2),
            slot_hold: Duration::from_millis(500),
            max_timeout: Duration::from_secs(120),
            budget: Some(Duration::from_secs(15 * 60)),
            window: DEFAULT_WINDOW,
            requery_after: 4,
            quick_retransmit: None,
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

/// One peer's state. Kept small (there may be 100,000): its names are an index into the
/// scheduler's shared name lists, its addresses a boxed slice.
#[derive(Debug)]
struct Peer {
    /// Index into [`Scheduler::lists`].
    names: u32,
    /// How many of its names were acknowledged.
    acked: u16,
    addr_idx: u16,
    addrs: Box<[SocketAddr]>,
    step: Step,
    /// When the next action is due; `None` while waiting for the driver's answer (or not
    /// admitted yet).
    due: Option<Instant>,
    /// While waiting for the driver's answer in the first try: when the peer leaves the
    /// window if there is still no answer.
    hold: Option<Instant>,
    /// The generation of the peer's timer: heap entries of older generations are stale.
    generation: u32,
    timeout: Duration,
    unanswered: u32,
    admitted: bool,
    /// Whether the peer holds a slot of the window (its first try is under way).
    slot: bool,
    outcome: Option<Outcome>,
    finished_at: Option<Instant>,
    stats: PeerStats,
}

impl Peer {
    fn active(&self) -> bool {
        self.admitted && self.outcome.is_none()
    }

    fn addr(&self) -> Option<SocketAddr> {
        self.addrs.get(usize::from(self.addr_idx)).copied()
    }

    fn rotate(&mut self) {
        if !self.addrs.is_empty() {
            self.addr_idx =
                u16::try_from((usize::from(self.addr_idx) + 1) % self.addrs.len()).unwrap_or(0);
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
    /// The peers' name lists; peers added one after the other with the same names share
    /// one (usually all of them do: a host or service has one or two names).
    lists: Vec<Arc<[String]>>,
    start: Option<Instant>,
    unfinished: usize,
    /// Wake-ups: `(when, peer, generation)`, earliest first; an entry whose generation is
    /// not the peer's current one is stale and skipped. After every public `&mut self`
    /// method the top entry (if any) is a live one, so [`Scheduler::next_wake`] can peek.
    timers: BinaryHeap<Reverse<(Instant, PeerId, u32)>>,
    /// Peers not admitted yet, in order.
    waiting: VecDeque<PeerId>,
    /// How many peers hold a slot of the window.
    in_window: usize,
    /// The latest `now` given to any method.
    latest: Option<Instant>,
    /// Heap and queue operations so far (tests check that a run costs O(N log N)).
    work: u64,
}

impl Scheduler {
    /// A scheduler with no peers. A window of 0 is taken as 1.
    pub fn new(mut policy: Policy) -> Self {
        policy.window = policy.window.max(1);
        policy.requery_after = policy.requery_after.max(1);
        Self {
            policy,
            peers: Vec::new(),
            lists: Vec::new(),
            start: None,
            unfinished: 0,
            timers: BinaryHeap::new(),
            waiting: VecDeque::new(),
            in_window: 0,
            latest: None,
            work: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Makes room for `additional` more peers (so a large list is allocated once, not
    /// grown by doubling).
    pub fn reserve(&mut self, additional: usize) {
        self.peers.reserve_exact(additional);
        self.waiting.reserve_exact(additional);
    }

    /// Adds a peer to notify with `names`, in order (a peer without names is done at once).
    /// At most 65,535 names are used.
    pub fn add_peer(&mut self, mut names: Vec<String>) -> PeerId {
        names.truncate(usize::from(u16::MAX));
        self.add_peer_shared(names.into())
    }

    /// [`Scheduler::add_peer`] with a names list the caller shares among its peers (kept
    /// once, not copied per peer). At most 65,535 names are used.
    pub fn add_peer_shared(&mut self, mut names: Arc<[String]>) -> PeerId {
        if names.len() > usize::from(u16::MAX) {
            names = names[..usize::from(u16::MAX)].into();
        }
        let done = names.is_empty();
        let id = self.peers.len();
        if self
            .lists
            .last()
            .is_none_or(|l| !Arc::ptr_eq(l, &names) && **l != *names)
        {
            self.lists.push(names);
        }
        let list = u32::try_from(self.lists.len() - 1).unwrap_or(u32::MAX);
        self.peers.push(Peer {
            names: list,
            acked: 0,
            addrs: Box::default(),
            addr_idx: 0,
            step: Step::Resolve,
            due: None,
            hold: None,
            generation: 0,
            timeout: self.policy.initial_timeout,
            unanswered: 0,
            admitted: false,
            slot: false,
            outcome: done.then_some(Outcome::Acked),
            finished_at: None,
            stats: PeerStats::default(),
        });
        if !done {
            self.unfinished += 1;
            self.waiting.push_back(id);
        }
        id
    }

    /// Whether every peer acknowledged or was given up.
    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// When the budget runs out, once started.
    pub fn deadline(&self) -> Option<Instant> {
        Some(self.start? + self.policy.budget?)
    }

    /// How many peers are in their first try (hold a slot of the window) now.
    pub fn in_window(&self) -> usize {
        self.in_window
    }

    /// How many peers wait to be admitted to the window.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sets the timers of `id`: `due` (the next action) and `hold` (the end of its slot while
    /// an answer is awaited), either or both or neither. Older heap entries of the peer
    /// become stale.
    fn arm(&mut self, id: PeerId, due: Option<Instant>, hold: Option<Instant>) {
        let p = &mut self.peers[id];
        p.generation = p.generation.wrapping_add(1);
        p.due = due;
        // A hold that ends after the next action is moot: the action decides.
        p.hold = hold.filter(|h| due.is_none_or(|d| *h < d));
        let generation = p.generation;
        for t in [p.due, p.hold].into_iter().flatten() {
            if self.timers.len() == self.timers.capacity() {
                self.compact_timers();
            }
            self.timers.push(Reverse((t, id, generation)));
            self.work += 1;
        }
    }

    /// Drops the stale entries of the timer heap, instead of letting it grow: a peer's
    /// entries go stale as soon as it moves on (its slot-hold timer once it was answered,
    /// its retransmission timer once it acknowledged), and would otherwise stay until their
    /// time comes (2 s for an acknowledged SM_NOTIFY), a few per peer, 32 bytes each, in a
    /// heap that doubles. Called when the heap is full; when most entries are live, the heap
    /// is given room for as many again, so the scans cost O(1) per entry pushed.
    fn compact_timers(&mut self) {
        const MIN: usize = 1024;
        if self.timers.len() < MIN {
            return;
        }
        let peers = &self.peers;
        self.work += self.timers.len() as u64;
        self.timers.retain(|&Reverse((t, id, generation))| {
            let p = &peers[id];
            p.generation == generation && p.active() && (p.due == Some(t) || p.hold == Some(t))
        });
        if self.timers.len() > self.timers.capacity() / 2 {
            self.timers.reserve(self.timers.len());
        }
    }

    /// The slot's end while `id` waits for an answer: `now` + the slot hold, if it holds one.
    fn hold_until(&self, id: PeerId, now: Instant) -> Option<Instant> {
        self.peers[id].slot.then(|| now + self.policy.slot_hold)
    }

    /// Sets the next action of `id` to `due`.
    fn set_due(&mut self, id: PeerId, due: Instant) {
        self.arm(id, Some(due), None);
    }

    /// `id` now waits for the driver's answer; while it holds a slot, it gives the slot up
    /// if the answer takes longer than the slot hold.
    fn await_answer(&mut self, id: PeerId, now: Instant) {
        let hold = self.hold_until(id, now);
        self.arm(id, None, hold);
    }

    /// `id` leaves the window (if it was in it).
    fn release(&mut self, id: PeerId) {
        let p = &mut self.peers[id];
        if p.slot {
            p.slot = false;
            self.in_window -= 1;
        }
    }

    /// Notes the latest time seen.
    fn saw(&mut self, now: Instant) {
        self.latest = Some(self.latest.map_or(now, |l| l.max(now)));
    }

    /// Drops stale entries from the top of the timer heap. Every public `&mut self` method
    /// ends with it, so the top entry is a live one.
    fn prune(&mut self) {
        while let Some(&Reverse((_, id, generation))) = self.timers.peek() {
            let p = &self.peers[id];
            if p.generation == generation && p.active() {
                break;
            }
            self.timers.pop();
            self.work += 1;
        }
    }

    /// Admits waiting peers while the window has room; they are due at `now`.
    fn admit(&mut self, now: Instant) {
        while self.in_window < self.policy.window {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            self.work += 1;
            let p = &mut self.peers[id];
            if p.admitted || p.outcome.is_some() {
                continue;
            }
            p.admitted = true;
            p.slot = true;
            self.in_window += 1;
            self.set_due(id, now);
        }
    }

    fn finish(&mut self, id: PeerId, outcome: Outcome, now: Instant) {
        if self.peers[id].outcome.is_some() {
            return;
        }
        self.release(id);
        self.arm(id, None, None);
        let p = &mut self.peers[id];
        p.outcome = Some(outcome);
        p.finished_at = Some(now);
        self.unfinished -= 1;
    }

    /// A failed step: wait, then grow the wait; the peer leaves the window.
    fn fail(&mut self, id: PeerId, now: Instant, error: String) {
        let max = self.policy.max_timeout;
        self.release(id);
        let p = &mut self.peers[id];
        let due = now + p.timeout;
        p.timeout = (p.timeout * 2).min(max);
        p.stats.last_error = Some(error);
        self.set_due(id, due);
    }

    /// What to do at `now`. Call it first to start the clock (the budget counts from the
    /// first call), then whenever [`Scheduler::next_wake`] has come or an `on_*` method was
    /// called. Only the peers that are due are looked at.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let start = *self.start.get_or_insert(now);
        self.saw(now);
        let mut out = Vec::new();
        if self.policy.budget.is_some_and(|b| now >= start + b) {
            if self.unfinished > 0 {
                for id in 0..self.peers.len() {
                    if self.peers[id].outcome.is_none() {
                        self.finish(id, Outcome::GaveUp, now);
                        out.push(Action::GiveUp(id));
                    }
                }
            }
            self.timers.clear();
            self.waiting.clear();
            return out;
        }
        self.admit(now);
        while let Some(&Reverse((t, id, generation))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            self.work += 1;
            let p = &self.peers[id];
            if p.generation != generation || !p.active() {
                continue;
            }
            if p.due.is_some_and(|d| d <= now) {
                self.step(id, now, &mut out);
            } else if p.hold.is_some_and(|h| h <= now) {
                // The first try's request went unanswered for the slot hold: the slot goes
                // to the next waiting peer; this one waits for its answer outside (its
                // `due`, if any, stays armed).
                self.peers[id].hold = None;
                self.release(id);
            }
            // A retransmission or a released slot may have made room.
            self.admit(now);
        }
        self.prune();
        out
    }

    /// Takes the due action of the active peer `id`.
    fn step(&mut self, id: PeerId, now: Instant, out: &mut Vec<Action>) {
        let p = &mut self.peers[id];
        match p.step {
            Step::Resolve => {
                p.stats.lookups += 1;
                out.push(Action::Resolve(id));
                self.await_answer(id, now);
            }
            Step::GetPort => match p.addr() {
                Some(addr) => {
                    p.stats.port_lookups += 1;
                    out.push(Action::GetPort(id, addr));
                    self.await_answer(id, now);
                }
                None => {
                    p.step = Step::Resolve;
                    p.stats.lookups += 1;
                    out.push(Action::Resolve(id));
                    self.await_answer(id, now);
                }
            },
            Step::Notify(port) => {
                let quick = self.policy.quick_retransmit.filter(|q| *q < p.timeout);
                if p.unanswered > 0 {
                    // The last SM_NOTIFY was not acknowledged in time. After the quick
                    // retry's short wait the backoff starts where it would have.
                    p.stats.timeouts += 1;
                    if p.unanswered > 1 || quick.is_none() {
                        p.timeout = (p.timeout * 2).min(self.policy.max_timeout);
                    }
                    p.stats.last_error = Some(format!(
                        "no answer to {} SM_NOTIFY(s) on port {port}",
                        p.unanswered
                    ));
                    self.release(id);
                }
                let p = &mut self.peers[id];
                if p.unanswered >= self.policy.requery_after {
                    p.rotate();
                    p.unanswered = 0;
                    p.step = Step::GetPort;
                    match p.addr() {
                        Some(addr) => {
                            p.stats.port_lookups += 1;
                            out.push(Action::GetPort(id, addr));
                            self.await_answer(id, now);
                        }
                        None => self.set_due(id, now),
                    }
                    return;
                }
                let Some(addr) = p.addr() else {
                    p.step = Step::Resolve;
                    self.set_due(id, now);
                    return;
                };
                p.unanswered += 1;
                p.stats.notifies += 1;
                let due = now
                    + match quick {
                        Some(q) if p.unanswered == 1 => q,
                        _ => p.timeout,
                    };
                out.push(Action::SendNotify {
                    peer: id,
                    addr,
                    port,
                    name: self.lists[p.names as usize][usize::from(p.acked)].clone(),
                    name_index: usize::from(p.acked),
                    attempt: p.stats.notifies,
                });
                let hold = self.hold_until(id, now);
                self.arm(id, Some(due), hold);
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
                p.addrs = a.into_boxed_slice();
                p.addr_idx = 0;
                p.step = Step::GetPort;
                self.set_due(peer, now);
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
        self.saw(now);
        self.prune();
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
                self.set_due(peer, now);
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
        self.saw(now);
        self.prune();
    }

    /// `peer` acknowledged its name number `name_index`.
    pub fn on_ack(&mut self, peer: PeerId, name_index: usize, now: Instant) -> AckResult {
        let initial = self.policy.initial_timeout;
        let Some(p) = self.peers.get_mut(peer) else {
            return AckResult::Ignored;
        };
        if !p.active() || name_index != usize::from(p.acked) || !matches!(p.step, Step::Notify(_)) {
            return AckResult::Ignored;
        }
        p.acked += 1;
        let r = if usize::from(p.acked) == self.lists[p.names as usize].len() {
            self.finish(peer, Outcome::Acked, now);
            AckResult::Done
        } else {
            p.unanswered = 0;
            p.timeout = initial;
            self.set_due(peer, now);
            AckResult::NextName
        };
        self.saw(now);
        self.prune();
        r
    }

    /// When [`Scheduler::poll`] has something to do next (the earliest due peer, the end of
    /// a first-try slot, a free slot for a waiting peer, or the end of the budget); `None` when nothing is due until an
    /// `on_*` call (or everything is finished).
    pub fn next_wake(&self) -> Option<Instant> {
        if self.is_finished() {
            return None;
        }
        // An `on_*` call freed a slot: the next waiting peer is due at once.
        let admit = (self.start.is_some()
            && !self.waiting.is_empty()
            && self.in_window < self.policy.window)
            .then_some(self.latest)
            .flatten();
        let due = self.timers.peek().map(|Reverse((t, _, _))| *t);
        [due, admit, self.deadline()].into_iter().flatten().min()
    }

    /// The names of `peer`.
    pub fn names(&self, peer: PeerId) -> &[String] {
        self.peers
            .get(peer)
            .map_or(&[], |p| &self.lists[p.names as usize])
    }

    /// The state of one peer (`None` for an unknown id).
    pub fn peer_report(&self, peer: PeerId) -> Option<PeerReport> {
        let p = self.peers.get(peer)?;
        Some(PeerReport {
            peer,
            outcome: p.outcome,
            acked_names: usize::from(p.acked),
            finished_after: p.finished_at.zip(self.start).map(|(f, s)| f - s),
            stats: p.stats.clone(),
        })
    }

    /// Every peer's state, in [`PeerId`] order.
    pub fn report(&self) -> Vec<PeerReport> {
        (0..self.peers.len())
            .filter_map(|id| self.peer_report(id))
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
        let (sends, ports) = silent_peer_times_ms(policy, until);
        let s = |v: Vec<u64>| v.into_iter().map(|ms| ms / 1000).collect();
        (s(sends), s(ports))
    }

    /// [`silent_peer_times`] in milliseconds.
    fn silent_peer_times_ms(policy: Policy, until: u64) -> (Vec<u64>, Vec<u64>) {
        let t0 = Instant::now();
        let mut s = Scheduler::new(policy);
        let p = s.add_peer(names(&["srv"]));
        let (mut sends, mut ports) = (Vec::new(), Vec::new());
        let mut now = t0;
        loop {
            let mut actions = s.poll(now);
            while let Some(a) = actions.pop() {
                let secs = u64::try_from((now - t0).as_millis()).unwrap();
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
    fn a_quick_retransmit_then_the_usual_backoff() {
        let policy = Policy {
            budget: None,
            quick_retransmit: Some(Duration::from_millis(100)),
            ..Policy::default()
        };
        let (sends, ports) = silent_peer_times_ms(policy, 60);
        assert_eq!(
            sends,
            [0, 100, 2_100, 6_100, 14_100, 14_200, 30_200],
            "100 ms after the first SM_NOTIFY to a port just looked up, then the backoff \
             (2, 4, 8 s; 16 s after the quick retry on the port looked up again)"
        );
        assert_eq!(
            ports,
            [0, 14_100],
            "the port is looked up again after 4 sends"
        );
        let (plain, _) = silent_peer_times_ms(Policy::default(), 60);
        assert_eq!(
            plain,
            [0, 2_000, 6_000, 14_000, 30_000],
            "no quick retry by default"
        );
    }

    #[test]
    fn peers_with_the_same_names_share_one_list() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Policy {
            window: 1000,
            ..Policy::default()
        });
        s.reserve(1000);
        for _ in 0..999 {
            s.add_peer(names(&["srv.example.test", "srv"]));
        }
        let odd = s.add_peer(names(&["other"]));
        assert_eq!(s.lists.len(), 2, "one list per run of equal lists");
        assert_eq!(s.names(0), ["srv.example.test", "srv"]);
        assert_eq!(s.names(998), ["srv.example.test", "srv"]);
        assert_eq!(s.names(odd), ["other"]);
        assert_eq!(s.names(5000), [] as [String; 0]);
        // Each peer still sends its own names, in order.
        s.poll(t0);
        s.on_resolved(odd, Ok(vec![addr(1)]), t0);
        s.poll(t0);
        s.on_port(odd, addr(1), Ok(Some(700)), t0);
        assert!(s.poll(t0).iter().any(|a| matches!(
            a,
            Action::SendNotify { peer, name, name_index: 0, .. } if *peer == odd && name == "other"
        )));
        assert_eq!(s.on_ack(odd, 0, t0), AckResult::Done);
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
        // Next: the slot hold of the lookups under way ends.
        let hold = t0 + Policy::default().slot_hold;
        assert_eq!(s.next_wake(), Some(hold));
        // The unanswered lookups give their slots up to the next three.
        assert_eq!(
            s.poll(hold),
            [Action::Resolve(4), Action::Resolve(5), Action::Resolve(6)]
        );
        assert_eq!(s.in_window(), 3);
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

    /// Drives `n` peers (every tenth one, 0, 10, 20, ..., dead: its rpcbind never answers
    /// and the port lookup fails after 5 s, as the driver's RPC timeout) with a fake clock;
    /// live peers answer everything at once. Checks after every call that the window bound
    /// holds. Stops when every live peer acknowledged (or after `limit`).
    struct Sim {
        s: Scheduler,
        acked_at: Vec<Option<Duration>>,
        max_window: usize,
        /// The timer heap's largest capacity.
        max_timers: usize,
        events: u64,
        polls: u64,
    }

    fn is_dead(id: PeerId) -> bool {
        id % 10 == 0
    }

    fn peer_addr(id: PeerId) -> SocketAddr {
        let id = u32::try_from(id).unwrap();
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + id), 111))
    }

    fn simulate(n: usize, policy: Policy, limit: Duration) -> Sim {
        let window = policy.window;
        let t0 = Instant::now();
        let mut s = Scheduler::new(policy);
        for i in 0..n {
            s.add_peer(vec![format!("p{i}")]);
        }
        let live = (0..n).filter(|&i| !is_dead(i)).count();
        let mut sim = Sim {
            s,
            acked_at: vec![None; n],
            max_window: 0,
            max_timers: 0,
            events: 0,
            polls: 0,
        };
        // Port lookups of dead peers, failing at their time.
        let mut pending: BinaryHeap<Reverse<(Instant, PeerId, SocketAddr)>> = BinaryHeap::new();
        let mut acked = 0;
        let mut now = t0;
        while acked < live && now - t0 <= limit {
            while let Some(&Reverse((t, id, a))) = pending.peek() {
                if t > now {
                    break;
                }
                pending.pop();
                sim.s.on_port(id, a, Err("timeout".into()), now);
                sim.events += 1;
            }
            let mut actions = sim.s.poll(now);
            sim.polls += 1;
            while let Some(a) = actions.pop() {
                sim.events += 1;
                match a {
                    Action::Resolve(id) => sim.s.on_resolved(id, Ok(vec![peer_addr(id)]), now),
                    Action::GetPort(id, a) if is_dead(id) => {
                        pending.push(Reverse((now + Duration::from_secs(5), id, a)));
                    }
                    Action::GetPort(id, a) => sim.s.on_port(id, a, Ok(Some(700)), now),
                    Action::SendNotify {
                        peer, name_index, ..
                    } => {
                        assert!(!is_dead(peer));
                        if sim.s.on_ack(peer, name_index, now) == AckResult::Done {
                            sim.acked_at[peer] = Some(now - t0);
                            acked += 1;
                        }
                    }
                    Action::GiveUp(_) => {}
                }
                let w = sim.s.in_window();
                assert!(w <= window, "window {w} > {window}");
                sim.max_window = sim.max_window.max(w);
                sim.max_timers = sim.max_timers.max(sim.s.timers.capacity());
                actions.extend(sim.s.poll(now));
                sim.polls += 1;
            }
            let next = [
                sim.s.next_wake(),
                pending.peek().map(|Reverse((t, _, _))| *t),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(w) => {
                    assert!(w >= now, "time goes forward");
                    now = w;
                }
                None => break,
            }
        }
        sim
    }

    #[test]
    fn ten_thousand_peers_ten_percent_dead_all_live_acked_within_2s() {
        let policy = Policy {
            window: 512,
            ..Policy::default()
        };
        let sim = simulate(10_000, policy, Duration::from_secs(60));
        let mut last = Duration::ZERO;
        for (id, t) in sim.acked_at.iter().enumerate() {
            if is_dead(id) {
                assert_eq!(*t, None);
            } else {
                let t = t.unwrap_or_else(|| panic!("live peer {id} not acked"));
                last = last.max(t);
            }
        }
        // The window filled up with 512 dead peers (5,120 peers) at once; they left it after
        // the slot hold and the rest started.
        assert!(
            last <= Duration::from_millis(500),
            "last live ack at {last:?}"
        );
        assert_eq!(sim.max_window, 512);
        // No live peer was sent more than one SM_NOTIFY.
        let r = sim.s.report();
        assert!(r.iter().all(|p| p.stats.notifies <= 1));
        // The dead peers left the window after the slot hold, not after their 5 s port
        // lookups.
        assert!(r.iter().all(|p| p.stats.port_failures == 0));
    }

    #[test]
    fn window_is_never_exceeded_and_dead_peers_free_their_slot_after_the_slot_hold() {
        // Window 8, peers 0, 10, 20, ... dead; the window check runs after every call.
        let policy = Policy {
            window: 8,
            ..Policy::default()
        };
        let sim = simulate(200, policy, Duration::from_secs(600));
        assert_eq!(sim.max_window, 8);
        // Each dead peer holds its slot for 500 ms: 8 dead peers per 500 ms, 20 dead peers in
        // all, so the last live peers start at 1 s, not at 10 s (5 s port lookups).
        let last = sim.acked_at.iter().flatten().max().copied().unwrap();
        assert_eq!(last, Duration::from_secs(1));
        assert_eq!(sim.acked_at.iter().flatten().count(), 180);
    }

    #[test]
    fn hundred_thousand_peers_cost_n_log_n() {
        let sim = simulate(100_000, Policy::default(), Duration::from_secs(600));
        assert_eq!(sim.acked_at.iter().flatten().count(), 90_000);
        // Heap and queue operations per event stay small (a quadratic scheduler would do
        // about N of them per event).
        let per_event = sim.s.work as f64 / sim.events as f64;
        assert!(
            per_event < 8.0,
            "{} operations for {} events",
            sim.s.work,
            sim.events
        );
        assert!(sim.polls <= 2 * sim.events + 1000);
        // The timer heap holds about the peers under way, not the timers every acknowledged
        // peer left behind (its retransmission 2 s on: 20,000 peers, 40,000 entries, here).
        assert!(
            sim.max_timers <= 8192,
            "timer heap grew to {} entries",
            sim.max_timers
        );
        // Slots of dead peers are freed after 500 ms: 2,048 per 500 ms, 10,000 dead peers.
        let last = sim.acked_at.iter().flatten().max().copied().unwrap();
        assert!(
            last <= Duration::from_millis(2500),
            "last live ack at {last:?}"
        );
    }

    #[test]
    fn slot_released_after_unanswered_first_notify_and_late_answer_still_counts() {
        let t0 = Instant::now();
        let t2 = t0 + Policy::default().slot_hold;
        let mut s = Scheduler::new(Policy {
            window: 1,
            ..Policy::default()
        });
        let a = s.add_peer(names(&["a"]));
        let b = s.add_peer(names(&["b"]));
        assert_eq!(s.poll(t0), [Action::Resolve(a)]);
        // A slow name lookup: after the slot hold (500 ms) the slot goes to b.
        assert_eq!(s.next_wake(), Some(t2));
        assert_eq!(s.poll(t2), [Action::Resolve(b)]);
        assert_eq!(s.in_window(), 1);
        // a's lookup still counts when it comes.
        s.on_resolved(a, Ok(vec![addr(1)]), t2);
        assert_eq!(s.poll(t2), [Action::GetPort(a, addr(1))]);
        assert_eq!(s.in_window(), 1, "a runs outside the window");
        s.on_port(a, addr(1), Ok(Some(700)), t2);
        assert!(matches!(&s.poll(t2)[..], [Action::SendNotify { peer, .. }] if *peer == a));
        assert_eq!(s.on_ack(a, 0, t2), AckResult::Done);
        // b's first SM_NOTIFY goes unanswered: it gives its slot up after the slot hold and
        // is sent again at its retransmission (2 s), outside the window.
        s.on_resolved(b, Ok(vec![addr(2)]), t2);
        s.poll(t2);
        s.on_port(b, addr(2), Ok(Some(700)), t2);
        assert!(matches!(
            &s.poll(t2)[..],
            [Action::SendNotify { attempt: 1, .. }]
        ));
        assert_eq!(s.in_window(), 1);
        let t3 = t2 + Policy::default().slot_hold;
        assert_eq!(s.next_wake(), Some(t3));
        assert!(s.poll(t3).is_empty());
        assert_eq!(s.in_window(), 0);
        let t4 = t2 + Duration::from_secs(2);
        assert_eq!(s.next_wake(), Some(t4));
        assert!(matches!(
            &s.poll(t4)[..],
            [Action::SendNotify { attempt: 2, .. }]
        ));
        assert_eq!(s.in_window(), 0);
        // ... and its late answer still counts.
        assert_eq!(s.on_ack(b, 0, t4), AckResult::Done);
        assert!(s.is_finished());
    }
}

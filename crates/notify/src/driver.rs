//! The tokio driver of the [`Scheduler`]: sockets, DNS, rpcbind and SM_NOTIFY on the wire.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use nsm_rpc::client::{bind_privileged, next_xid};
use nsm_rpc::msg::{self, AcceptStat, CallHeader, OpaqueAuth, ReplyBody};
use nsm_xdr::nsm::{SM_MAXSTRLEN, SM_NOTIFY, SM_PROG, SM_VERS, SmString, StatChge};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::portmap::{Datagram, LookupDone, LookupEvent, LookupPolicy, PortLookups, Received};
use crate::scheduler::{AckResult, Action, Outcome, PeerId, PeerReport, Policy, Scheduler};

/// rpcbind's port.
const RPCBIND_PORT: u16 = 111;

/// Why the notifier cannot start. Each message says what to check.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// A UDP socket could not be created.
    #[error("cannot create a UDP socket for {family} SM_NOTIFYs: {source}")]
    Socket {
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A socket option failed.
    #[error("cannot set {option} on the {family} SM_NOTIFY socket: {source}")]
    SocketOption {
        /// The option.
        option: &'static str,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The error.
        source: io::Error,
    },
    /// `SO_BINDTODEVICE` failed.
    #[error(
        "cannot bind the SM_NOTIFY socket to device {device}: {source} (does the interface \
         exist? binding to a device needs CAP_NET_RAW)"
    )]
    Device {
        /// The interface name.
        device: String,
        /// The error.
        source: io::Error,
    },
    /// The source address (and port) could not be bound.
    #[error(
        "cannot bind the SM_NOTIFY source address {addr}: {source} (is the port free? is the \
         address one of this host's?)"
    )]
    Bind {
        /// What was bound.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// No privileged port was free, or there is no right to bind one.
    #[error(
        "cannot bind a privileged source port (600-1023) at {ip}: {source} (run as root or \
         with CAP_NET_BIND_SERVICE, or choose an unprivileged port with -p)"
    )]
    Privileged {
        /// The source address.
        ip: IpAddr,
        /// The last error.
        source: io::Error,
    },
    /// A name to send does not fit in `mon_name<1024>`.
    #[error(
        "mon_name {name:?} for peer {peer} is longer than {SM_MAXSTRLEN} bytes: choose a \
         shorter name"
    )]
    NameTooLong {
        /// The peer's label.
        peer: String,
        /// The name.
        name: String,
    },
    /// The source addresses given contain none to send from.
    #[error("no socket to send SM_NOTIFYs from (no IPv4 or IPv6 source could be set up)")]
    NoSocket,
    /// A socket could not be handed to the runtime.
    #[error("cannot register the SM_NOTIFY socket with the async runtime: {0}")]
    Runtime(io::Error),
}

/// Where SM_NOTIFYs leave from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSpec {
    /// The source addresses: the first IPv4 and the first IPv6 one are used, one socket
    /// each (with `IP_FREEBIND`, so an address that is not up yet can be bound). Empty: the
    /// IPv4 and IPv6 wildcards (IPv6 only if the host has it).
    pub addrs: Vec<IpAddr>,
    /// The source port; `None`: a privileged port (600–1023), as sm-notify without `-p`.
    pub port: Option<u16>,
    /// `SO_BINDTODEVICE`: send only through this interface.
    pub device: Option<String>,
}

/// The bound sockets, made by [`bind_sources`] (as root, before dropping privileges).
#[derive(Debug)]
pub struct Sources {
    /// The IPv4 socket.
    pub v4: Option<std::net::UdpSocket>,
    /// The IPv6 socket (`IPV6_V6ONLY`).
    pub v6: Option<std::net::UdpSocket>,
}

fn family_name(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

fn bind_one(ip: IpAddr, spec: &SourceSpec, explicit: bool) -> Result<Socket, NotifyError> {
    let family = family_name(ip.is_ipv6());
    let domain = if ip.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )
    .map_err(|source| NotifyError::Socket { family, source })?;
    let opt = |option, r: io::Result<()>| {
        r.map_err(|source| NotifyError::SocketOption {
            option,
            family,
            source,
        })
    };
    if ip.is_ipv6() {
        opt("IPV6_V6ONLY", s.set_only_v6(true))?;
    }
    if explicit {
        if ip.is_ipv6() {
            opt("IPV6_FREEBIND", s.set_freebind_v6(true))?;
        } else {
            opt("IP_FREEBIND", s.set_freebind_v4(true))?;
        }
    }
    grow_receive_buffer(&s);
    // ICMP errors (port or host unreachable) of unconnected sockets are only reported with
    // IP_RECVERR: a port lookup to a host whose rpcbind is not running then fails at once
    // (the error queue names the destination), as it did on a connected socket of its own,
    // instead of after the whole RPC timeout.
    let recverr = if ip.is_ipv6() {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6RecvErr, &true)
    } else {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4RecvErr, &true)
    };
    if let Err(e) = recverr {
        debug!("cannot ask for ICMP errors on the {family} SM_NOTIFY socket: {e}");
    }
    if let Some(dev) = &spec.device {
        s.bind_device(Some(dev.as_bytes()))
            .map_err(|source| NotifyError::Device {
                device: dev.clone(),
                source,
            })?;
    }
    match spec.port {
        Some(port) => {
            let addr = SocketAddr::new(ip, port);
            s.bind(&SockAddr::from(addr))
                .map_err(|source| NotifyError::Bind { addr, source })?;
        }
        None => {
            bind_privileged(&s, ip).map_err(|source| NotifyError::Privileged { ip, source })?;
        }
    }
    Ok(s)
}

/// The receive buffer asked for the SM_NOTIFY sockets. All replies arrive on one socket, in
/// bursts as large as the window; the default (208 KiB, about 200 small datagrams) drops
/// some, and each drop costs that peer a 2 s retransmission.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Sets [`RECEIVE_BUFFER`], beyond `net.core.rmem_max` where allowed (`SO_RCVBUFFORCE`
/// needs CAP_NET_ADMIN), else as far as the limit goes. Best effort: a failure is logged.
fn grow_receive_buffer(s: &Socket) {
    if nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::RcvBufForce, &RECEIVE_BUFFER)
        .is_ok()
    {
        return;
    }
    if let Err(e) = s.set_recv_buffer_size(RECEIVE_BUFFER) {
        debug!("cannot grow the SM_NOTIFY socket's receive buffer: {e}");
    }
}

/// Raises the soft limit of open files (`RLIMIT_NOFILE`) to the hard limit, and returns the
/// new soft limit. The notifier itself needs a constant few (port lookups share the SM_NOTIFY
/// socket of their family); the raise is for what else the process opens (the `sm.bak/`
/// files it rewrites, name lookups that fall back to getaddrinfo).
pub fn raise_open_files_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(soft.max(hard))
}

/// Creates and binds the sockets SM_NOTIFYs leave from (see [`SourceSpec`]).
pub fn bind_sources(spec: &SourceSpec) -> Result<Sources, NotifyError> {
    let mut out = Sources { v4: None, v6: None };
    if spec.addrs.is_empty() {
        out.v4 = Some(bind_one(IpAddr::V4(Ipv4Addr::UNSPECIFIED), spec, false)?.into());
        match bind_one(IpAddr::V6(Ipv6Addr::UNSPECIFIED), spec, false) {
            Ok(s) => out.v6 = Some(s.into()),
            Err(e) => debug!("no IPv6 socket, IPv6 peers will not be notified: {e}"),
        }
        return Ok(out);
    }
    if let Some(ip) = spec.addrs.iter().find(|a| a.is_ipv4()) {
        out.v4 = Some(bind_one(*ip, spec, true)?.into());
    }
    if let Some(ip) = spec.addrs.iter().find(|a| a.is_ipv6()) {
        out.v6 = Some(bind_one(*ip, spec, true)?.into());
    }
    Ok(out)
}

/// One peer to notify. Its strings are shared (there may be 100,000 targets): the label and
/// the host are usually one string (the `sm.bak/` file name), and most peers share one names
/// list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// How logs and the summary call it (nsm-notify: the `sm.bak/` file name).
    pub label: Arc<str>,
    /// The host name (or address literal) to resolve to the peer's addresses.
    pub host: Arc<str>,
    /// The mon_names to send, in order; each must be acknowledged.
    pub names: Arc<[String]>,
}

impl Target {
    /// A target whose label is its host name.
    pub fn new(host: impl Into<Arc<str>>, names: impl Into<Arc<[String]>>) -> Self {
        let host = host.into();
        Self {
            label: host.clone(),
            host,
            names: names.into(),
        }
    }
}

/// How the notifier runs.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// The state number to announce.
    pub state: i32,
    /// Retry policy.
    pub policy: Policy,
    /// Each port lookup (GETPORT / GETADDR) gives up after this long (retransmitted after
    /// [`Policy::quick_retransmit`], else 500 ms, then doubling up to 2 s).
    pub rpc_timeout: Duration,
    /// Each name lookup gives up after this long.
    pub dns_timeout: Duration,
    /// Log a progress line this often (nsm-notify: with `-d`).
    pub progress_every: Option<Duration>,
    /// The peers' rpcbind port (111; another only in tests without root).
    pub rpcbind_port: u16,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            state: 0,
            policy: Policy::default(),
            rpc_timeout: Duration::from_secs(5),
            dns_timeout: Duration::from_secs(10),
            progress_every: None,
            rpcbind_port: RPCBIND_PORT,
        }
    }
}

/// One peer in the [`Summary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSummary {
    /// The peer.
    pub target: Target,
    /// What happened.
    pub report: PeerReport,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The state number announced.
    pub state: i32,
    /// How long the run took.
    pub elapsed: Duration,
    /// Every peer, in the order given.
    pub peers: Vec<PeerSummary>,
}

impl Summary {
    fn count(&self, o: Option<Outcome>) -> usize {
        self.peers.iter().filter(|p| p.report.outcome == o).count()
    }

    /// Peers that acknowledged every name.
    pub fn acked(&self) -> usize {
        self.count(Some(Outcome::Acked))
    }

    /// Peers given up when the budget ran out.
    pub fn gave_up(&self) -> usize {
        self.count(Some(Outcome::GaveUp))
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> String {
        let mut s = format!(
            "{{\"state\":{},\"elapsed_ms\":{},\"acked\":{},\"gave_up\":{},\"peers\":[",
            self.state,
            self.elapsed.as_millis(),
            self.acked(),
            self.gave_up()
        );
        for (i, p) in self.peers.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let r = &p.report;
            let names: Vec<String> = p.target.names.iter().map(|n| json_str(n)).collect();
            s.push_str(&format!(
                "{{\"peer\":{},\"host\":{},\"names\":[{}],\"outcome\":{},\"acked_names\":{},\
                 \"finished_ms\":{},\"notifies\":{},\"timeouts\":{},\"lookups\":{},\
                 \"dns_failures\":{},\"port_lookups\":{},\"port_failures\":{},\"last_error\":{}}}",
                json_str(&p.target.label),
                json_str(&p.target.host),
                names.join(","),
                r.outcome
                    .map_or_else(|| "null".to_owned(), |o| json_str(&o.to_string())),
                r.acked_names,
                r.finished_after
                    .map_or_else(|| "null".to_owned(), |d| d.as_millis().to_string()),
                r.stats.notifies,
                r.stats.timeouts,
                r.stats.lookups,
                r.stats.dns_failures,
                r.stats.port_lookups,
                r.stats.port_failures,
                r.stats
                    .last_error
                    .as_deref()
                    .map_or_else(|| "null".to_owned(), json_str),
            ));
        }
        s.push_str("]}");
        s
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if u32::from(c) < 0x20 => o.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

enum Event {
    Resolved(PeerId, Result<Vec<SocketAddr>, String>),
}

/// The notifier: a [`Scheduler`] driven over real sockets.
#[derive(Debug)]
pub struct Notifier {
    cfg: NotifierConfig,
    sources: Sources,
    targets: Vec<Target>,
}

impl Notifier {
    /// Checks the names and keeps everything for [`Notifier::run`].
    pub fn new(
        cfg: NotifierConfig,
        sources: Sources,
        targets: Vec<Target>,
    ) -> Result<Self, NotifyError> {
        if sources.v4.is_none() && sources.v6.is_none() {
            return Err(NotifyError::NoSocket);
        }
        for t in &targets {
            if let Some(n) = t.names.iter().find(|n| n.len() > SM_MAXSTRLEN) {
                return Err(NotifyError::NameTooLong {
                    peer: t.label.to_string(),
                    name: n.clone(),
                });
            }
        }
        Ok(Self {
            cfg,
            sources,
            targets,
        })
    }

    /// Notifies every target; calls `on_finished(index, target, outcome, acked_names)` (`index`:
    /// the target's place in the list given to [`Notifier::new`]) as soon as a
    /// target acknowledged its last name or was given up (nsm-notify removes the peer's
    /// `sm.bak/` file there). Returns when every target finished.
    pub async fn run<F>(self, mut on_finished: F) -> Result<Summary, NotifyError>
    where
        F: FnMut(PeerId, &Target, Outcome, usize),
    {
        let started = std::time::Instant::now();
        let Self {
            cfg,
            sources,
            targets,
        } = self;
        let to_tokio = |s: Option<std::net::UdpSocket>| s.map(UdpSocket::from_std).transpose();
        let sock4 = to_tokio(sources.v4).map_err(NotifyError::Runtime)?;
        let sock6 = to_tokio(sources.v6).map_err(NotifyError::Runtime)?;
        let (has4, has6) = (sock4.is_some(), sock6.is_some());
        for (s, fam) in [(&sock4, "IPv4"), (&sock6, "IPv6")] {
            if let Some(a) = s.as_ref().and_then(|s| s.local_addr().ok()) {
                info!("sending {fam} SM_NOTIFYs from {a}, state {}", cfg.state);
            }
        }

        let mut sched = Scheduler::new(cfg.policy.clone());
        sched.reserve(targets.len());
        for t in &targets {
            sched.add_peer_shared(t.names.clone());
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let mut xids = Xids::default();
        // Port lookups go out on the SM_NOTIFY socket of their family, with the same xid
        // source, and their replies come back there.
        let mut lookups = PortLookups::new(
            LookupPolicy {
                timeout: cfg.rpc_timeout,
                retransmit: cfg
                    .policy
                    .quick_retransmit
                    .unwrap_or(Duration::from_millis(500)),
                max_retransmit: Duration::from_secs(2),
            },
            next_xid,
        );
        let mut outbox: Vec<Datagram> = Vec::new();
        let mut lookup_events = Vec::new();
        let mut buf4 = vec![0u8; 4096];
        let mut buf6 = vec![0u8; 4096];
        let mut progress = cfg.progress_every.map(|d| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            let now = std::time::Instant::now();
            lookups.poll(now, &mut lookup_events);
            for e in lookup_events.drain(..) {
                match e {
                    LookupEvent::Send(d) => outbox.push(d),
                    LookupEvent::Done(d) => port_done(&mut sched, &targets, d, now),
                }
            }
            send_lookups(
                &mut outbox,
                &sock4,
                &sock6,
                &mut lookups,
                &mut sched,
                &targets,
            )
            .await;
            for action in sched.poll(now) {
                match action {
                    Action::Resolve(id) => {
                        let t = &targets[id];
                        // An address literal or a name of the hosts table: answered here,
                        // without a task (most peers of a large list).
                        if let Some(ips) = crate::resolve::Resolver::system().lookup_local(&t.host)
                        {
                            let found = ips
                                .into_iter()
                                .map(|ip| SocketAddr::new(ip, cfg.rpcbind_port));
                            // Logged only when it fails: the port lookup's line names the
                            // address (a line less per peer of a large list).
                            let r = usable(&t.host, found, has4, has6);
                            if let Err(e) = &r {
                                info!(peer = %t.label, "{e}; will retry");
                            }
                            sched.on_resolved(id, r, now);
                            continue;
                        }
                        debug!(peer = %t.label, "looking up {}", t.host);
                        let (host, tx, timeout) = (t.host.clone(), tx.clone(), cfg.dns_timeout);
                        let port = cfg.rpcbind_port;
                        tokio::spawn(async move {
                            let r = resolve(&host, port, has4, has6, timeout).await;
                            let _ = tx.send(Event::Resolved(id, r));
                        });
                    }
                    Action::GetPort(id, addr) => {
                        // Its answer is logged (port, or why not), naming the address.
                        outbox.push(lookups.start(id, addr, now));
                    }
                    Action::SendNotify {
                        peer,
                        addr,
                        port,
                        name,
                        name_index,
                        attempt,
                    } => {
                        let t = &targets[peer];
                        let dest = SocketAddr::new(addr.ip(), port);
                        let xid = next_xid();
                        let call = encode_notify(xid, &name, cfg.state);
                        xids.insert(xid, peer, name_index);
                        let sock = if dest.is_ipv6() { &sock6 } else { &sock4 };
                        debug!(
                            peer = %t.label,
                            "SM_NOTIFY #{attempt} to {dest}: mon_name {name}, state {}, xid {xid:#010x}",
                            cfg.state
                        );
                        if attempt > 1 && name_index == 0 {
                            info!(peer = %t.label, "retrying SM_NOTIFY to {dest} (attempt {attempt})");
                        }
                        match sock {
                            Some(s) => {
                                if let Err(e) = s.send_to(&call, dest).await {
                                    info!(peer = %t.label, "cannot send SM_NOTIFY to {dest}: {e}; will retry");
                                }
                            }
                            None => warn!(peer = %t.label, "no socket for {dest}"),
                        }
                    }
                    Action::GiveUp(id) => {
                        let t = &targets[id];
                        let Some(r) = sched.peer_report(id) else {
                            continue;
                        };
                        warn!(
                            peer = %t.label,
                            "Unable to notify {}, giving up: {} (after {} SM_NOTIFYs, {} port \
                             lookups, {} name lookups; the entry stays in the notify list)",
                            t.label,
                            r.stats.last_error.as_deref().unwrap_or("no answer"),
                            r.stats.notifies,
                            r.stats.port_lookups,
                            r.stats.lookups
                        );
                        on_finished(id, t, Outcome::GaveUp, r.acked_names);
                    }
                }
            }
            send_lookups(
                &mut outbox,
                &sock4,
                &sock6,
                &mut lookups,
                &mut sched,
                &targets,
            )
            .await;
            if sched.is_finished() {
                break;
            }
            let wake = [sched.next_wake(), lookups.next_wake()]
                .into_iter()
                .flatten()
                .min()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                ev = rx.recv() => {
                    let now = std::time::Instant::now();
                    match ev {
                        Some(Event::Resolved(id, r)) => {
                            match &r {
                                Ok(a) => debug!(peer = %targets[id].label, "addresses: {a:?}"),
                                Err(e) => info!(peer = %targets[id].label, "{e}; will retry"),
                            }
                            sched.on_resolved(id, r, now);
                        }
                        None => {}
                    }
                }
                r = recv(sock4.as_ref(), &mut buf4) => {
                    let mut st = Replies { xids: &mut xids, lookups: &mut lookups, outbox: &mut outbox, sched: &mut sched, targets: &targets };
                    st.on_replies(sock4.as_ref(), r, &mut buf4, &mut on_finished);
                }
                r = recv(sock6.as_ref(), &mut buf6) => {
                    let mut st = Replies { xids: &mut xids, lookups: &mut lookups, outbox: &mut outbox, sched: &mut sched, targets: &targets };
                    st.on_replies(sock6.as_ref(), r, &mut buf6, &mut on_finished);
                }
                () = sleep_until(wake) => {}
                () = tick(progress.as_mut()) => {
                    let r = sched.report();
                    let done = r.iter().filter(|p| p.outcome == Some(Outcome::Acked)).count();
                    info!(
                        "progress: {done} of {} peers acknowledged, {} still being tried",
                        r.len(),
                        r.iter().filter(|p| p.outcome.is_none()).count()
                    );
                }
            }
        }

        let report = sched.report();
        let peers = targets
            .into_iter()
            .zip(report)
            .map(|(target, report)| PeerSummary { target, report })
            .collect();
        Ok(Summary {
            state: cfg.state,
            elapsed: started.elapsed(),
            peers,
        })
    }
}

/// The SM_NOTIFYs in flight: xid → (peer, name index). An entry goes when its reply comes;
/// those of retransmissions that were never answered stay until the run ends (a few per
/// dead peer), and a late reply to them is ignored by the scheduler.
#[derive(Default)]
struct Xids {
    by_xid: HashMap<u32, (PeerId, usize)>,
}

impl Xids {
    fn insert(&mut self, xid: u32, peer: PeerId, name_index: usize) {
        self.by_xid.insert(xid, (peer, name_index));
    }

    fn take(&mut self, xid: u32) -> Option<(PeerId, usize)> {
        self.by_xid.remove(&xid)
    }
}

/// A port lookup finished: log it and tell the scheduler.
fn port_done(sched: &mut Scheduler, targets: &[Target], d: LookupDone, now: std::time::Instant) {
    let LookupDone {
        peer,
        rpcbind,
        result,
    } = d;
    let Some(t) = targets.get(peer) else {
        return;
    };
    match &result {
        Ok(Some(p)) => debug!(peer = %t.label, "statd at {rpcbind} is on port {p}"),
        Ok(None) => info!(
            peer = %t.label,
            "statd is not registered with rpcbind at {rpcbind}; will retry"
        ),
        Err(e) => info!(peer = %t.label, "port lookup failed: {e}; will retry"),
    }
    sched.on_port(peer, rpcbind, result, now);
}

/// Sends the port lookups' datagrams on the socket of their family; a lookup whose datagram
/// cannot be sent fails at once (its peer backs off), as when each lookup had its own socket.
async fn send_lookups(
    outbox: &mut Vec<Datagram>,
    sock4: &Option<UdpSocket>,
    sock6: &Option<UdpSocket>,
    lookups: &mut PortLookups,
    sched: &mut Scheduler,
    targets: &[Target],
) {
    for d in outbox.drain(..) {
        let sock = if d.dest.is_ipv6() { sock6 } else { sock4 };
        let r = match sock {
            Some(s) => s.send_to(&d.bytes, d.dest).await.map(|_| ()),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no socket of this address family",
            )),
        };
        if let Err(e) = r
            && let Some(done) = lookups.on_send_error(d.xid, &e.to_string())
        {
            port_done(sched, targets, done, std::time::Instant::now());
        }
    }
}

/// How many queued replies one wake-up of the receive branch handles at most.
const MAX_DRAIN: usize = 256;

/// What a datagram on an SM_NOTIFY socket may be for.
struct Replies<'a> {
    xids: &'a mut Xids,
    lookups: &'a mut PortLookups,
    /// Datagrams the replies call for (GETADDR v3 after a v4 PROG_MISMATCH).
    outbox: &'a mut Vec<Datagram>,
    sched: &'a mut Scheduler,
    targets: &'a [Target],
}

impl Replies<'_> {
    /// [`Replies::on_reply`] for `first`, then for the replies already queued on `sock` (at
    /// most [`MAX_DRAIN`]), so a burst of replies costs one turn of the loop, not one each.
    fn on_replies<F: FnMut(PeerId, &Target, Outcome, usize)>(
        &mut self,
        sock: Option<&UdpSocket>,
        first: io::Result<(usize, SocketAddr)>,
        buf: &mut [u8],
        on_finished: &mut F,
    ) {
        let Some(sock) = sock else {
            return;
        };
        let mut r = first;
        for handled in 1..=MAX_DRAIN {
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // An ICMP error of an earlier send: the error queue says to whom.
                    debug!("receive on the SM_NOTIFY socket: {e}");
                    self.on_errors(sock, buf);
                }
                Ok(got) => self.on_reply(got, buf, on_finished),
            }
            // Nothing is taken from the socket that is not handled: the rest waits for the
            // next turn of the loop (a datagram received after the last one handled here
            // was lost, costing its peer a retransmission).
            if handled == MAX_DRAIN {
                break;
            }
            r = sock.try_recv_from(buf);
        }
    }

    /// Reads the socket's error queue (IP_RECVERR): each entry names the destination of a
    /// datagram the network refused; the port lookups in flight there fail at once. Errors
    /// of SM_NOTIFYs are left to the retry timers.
    fn on_errors(&mut self, sock: &UdpSocket, buf: &mut [u8]) {
        use nix::sys::socket::{MsgFlags, SockaddrStorage, recvmsg};
        use std::os::fd::AsRawFd;
        let now = std::time::Instant::now();
        for _ in 0..MAX_DRAIN {
            let mut iov = [io::IoSliceMut::new(buf)];
            let r = recvmsg::<SockaddrStorage>(
                sock.as_raw_fd(),
                &mut iov,
                None,
                MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
            );
            let Ok(msg) = r else {
                return;
            };
            let dest = msg.address.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
                    .or_else(|| {
                        a.as_sockaddr_in6()
                            .map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
                    })
            });
            let Some(dest) = dest else {
                continue;
            };
            for d in self
                .lookups
                .on_unreachable(dest, "unreachable (ICMP error)")
            {
                port_done(self.sched, self.targets, d, now);
            }
        }
    }

    fn on_reply<F: FnMut(PeerId, &Target, Outcome, usize)>(
        &mut self,
        (n, from): (usize, SocketAddr),
        buf: &[u8],
        on_finished: &mut F,
    ) {
        let now = std::time::Instant::now();
        let datagram = &buf[..n];
        match self.lookups.on_datagram(from, datagram, now) {
            Received::NotALookup => {}
            Received::WrongSender { expected } => {
                debug!("ignoring a reply from {from} to the port lookup sent to {expected}");
                return;
            }
            Received::Done(d) => {
                port_done(self.sched, self.targets, d, now);
                return;
            }
            Received::Send(d) => {
                debug!("rpcbind at {from} does not speak GETADDR v4: asking with v3");
                self.outbox.push(d);
                return;
            }
        }
        let Ok(reply) = msg::parse_reply(datagram) else {
            debug!("ignoring a malformed datagram from {from}");
            return;
        };
        let Some((peer, name_index)) = self.xids.take(reply.xid) else {
            debug!(
                "ignoring a reply from {from} with unknown xid {:#010x}",
                reply.xid
            );
            return;
        };
        let t = &self.targets[peer];
        if !matches!(reply.body, ReplyBody::Accepted(AcceptStat::Success(_))) {
            info!(peer = %t.label, "SM_NOTIFY refused by {from}: {:?}; will retry", reply.body.map(|_| ()));
            return;
        }
        match self.sched.on_ack(peer, name_index, now) {
            AckResult::Ignored => {}
            AckResult::NextName => debug!(
                peer = %t.label,
                "{from} acknowledged mon_name {}", t.names[name_index]
            ),
            AckResult::Done => {
                info!(
                    peer = %t.label,
                    "{} acknowledged (from {from}, mon_name {})",
                    t.label,
                    t.names.join(", then ")
                );
                on_finished(peer, t, Outcome::Acked, t.names.len());
            }
        }
    }
}

async fn recv(s: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match s {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn tick(i: Option<&mut tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The SM_NOTIFY call: 100024/1/6 with AUTH_NONE and `stat_chge { name, state }`.
fn encode_notify(xid: u32, name: &str, state: i32) -> BytesMut {
    let h = CallHeader {
        xid,
        prog: SM_PROG,
        vers: SM_VERS,
        proc_: SM_NOTIFY,
        cred: OpaqueAuth::NONE,
        verf: OpaqueAuth::NONE,
    };
    let mut out = BytesMut::with_capacity(48 + name.len());
    // Lengths were checked in Notifier::new; an over-long name would be sent empty.
    let mon_name = SmString::new(name.as_bytes()).unwrap_or_else(|_| SmString::default());
    msg::encode_call(&h, &StatChge { mon_name, state }, &mut out);
    out
}

/// Every address of `host` of a family there is a socket for, as rpcbind addresses.
async fn resolve(
    host: &str,
    rpcbind_port: u16,
    v4: bool,
    v6: bool,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, String> {
    // The hosts table answers most names at once; others go to getaddrinfo.
    let found = tokio::time::timeout(
        timeout,
        crate::resolve::Resolver::system().lookup_host(host, rpcbind_port),
    )
    .await
    .map_err(|_| format!("looking up {host} took longer than {timeout:?}"))?
    .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    usable(host, found, v4, v6)
}

/// The addresses `found` for `host` of a family there is a socket for.
fn usable(
    host: &str,
    found: impl IntoIterator<Item = SocketAddr>,
    v4: bool,
    v6: bool,
) -> Result<Vec<SocketAddr>, String> {
    let out: Vec<SocketAddr> = found
        .into_iter()
        .filter(|a| (a.is_ipv4() && v4) || (a.is_ipv6() && v6))
        .collect();
    if out.is_empty() {
        return Err(format!(
            "{host} has no address of a family SM_NOTIFYs can be sent from ({})",
            match (v4, v6) {
                (true, false) => "IPv4 only",
                (false, true) => "IPv6 only",
                _ => "IPv4 or IPv6",
            }
        ));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn notify_bytes() {
        let b = encode_notify(0x0102_0304, "svc", 7);
        let w = |i: usize| u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(
            (0..10).map(w).collect::<Vec<_>>(),
            [0x0102_0304, 0, 2, 100_024, 1, 6, 0, 0, 0, 0]
        );
        assert_eq!(&b[40..], &[0, 0, 0, 3, b's', b'v', b'c', 0, 0, 0, 0, 7]);
    }

    /// A fake peer at `sock`: answers GETPORT with its own port and SM_NOTIFY with success,
    /// unless `dead`; records the source of every datagram.
    async fn fake_peer(sock: UdpSocket, dead: bool, seen: Arc<std::sync::Mutex<Vec<SocketAddr>>>) {
        let port = sock.local_addr().unwrap().port();
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            seen.lock().unwrap().push(from);
            if dead || n < 24 {
                continue;
            }
            let w = |i: usize| u32::from_be_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap());
            let mut reply = Vec::new();
            for x in [w(0), 1, 0, 0, 0, 0] {
                reply.extend_from_slice(&x.to_be_bytes());
            }
            if w(3) == 100_000 {
                reply.extend_from_slice(&u32::from(port).to_be_bytes());
            }
            sock.send_to(&reply, from).await.unwrap();
        }
    }

    /// UDP sockets bound to `ip` (from /proc/net/udp).
    fn udp_sockets_on(ip: Ipv4Addr) -> usize {
        let hex = format!("{:08X}:", u32::from_ne_bytes(ip.octets()));
        std::fs::read_to_string("/proc/net/udp")
            .unwrap()
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| a.starts_with(&hex))
            })
            .count()
    }

    /// Port lookups share the SM_NOTIFY socket: while dead peers' lookups are retransmitted,
    /// the notifier has exactly one socket on its source address, every lookup and every
    /// SM_NOTIFY leaves from it, and the live peers are all acknowledged.
    #[tokio::test]
    async fn lookups_and_notifies_share_one_socket_per_family() {
        let src = Ipv4Addr::new(127, 0, 0, 213);
        let first = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut socks = vec![first];
        for k in 3..=21u8 {
            socks.push(
                UdpSocket::bind((Ipv4Addr::new(127, 0, 0, k), port))
                    .await
                    .unwrap(),
            );
        }
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut targets = Vec::new();
        for (i, s) in socks.into_iter().enumerate() {
            let ip = s.local_addr().unwrap().ip();
            // The first three are dead: their lookups are retransmitted until the timeout,
            // while the others are answered.
            tokio::spawn(fake_peer(s, i < 3, seen.clone()));
            targets.push(Target {
                label: format!("peer{i}").into(),
                host: ip.to_string().into(),
                names: vec!["srv".to_owned()].into(),
            });
        }
        // A host whose rpcbind is not running (nothing bound there): the ICMP port
        // unreachable fails its lookups at once, not after the RPC timeout.
        targets.push(Target {
            label: "closed".into(),
            host: "127.0.0.22".into(),
            names: vec!["srv".to_owned()].into(),
        });
        let sources = bind_sources(&SourceSpec {
            addrs: vec![IpAddr::V4(src)],
            port: Some(0),
            device: None,
        })
        .unwrap();
        let source = sources.v4.as_ref().unwrap().local_addr().unwrap();
        let cfg = NotifierConfig {
            state: 3,
            policy: Policy {
                window: 4,
                budget: Some(Duration::from_secs(3)),
                ..Policy::default()
            },
            rpc_timeout: Duration::from_secs(2),
            rpcbind_port: port,
            ..NotifierConfig::default()
        };
        let mut most = 0;
        let summary = Notifier::new(cfg, sources, targets)
            .unwrap()
            .run(|_, _, _, _| most = most.max(udp_sockets_on(src)))
            .await
            .unwrap();
        assert_eq!(summary.acked(), 17);
        assert_eq!(summary.gave_up(), 4);
        let closed = &summary.peers[20].report.stats;
        assert_eq!(
            closed.last_error.as_deref(),
            Some("rpcbind at 127.0.0.22:PORT: unreachable (ICMP error)")
                .map(|e| e.replace("PORT", &port.to_string()))
                .as_deref(),
            "{closed:?}"
        );
        let dead = &summary.peers[0].report.stats;
        assert!(
            dead.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no reply")),
            "{dead:?}"
        );
        assert_eq!(
            most, 1,
            "one socket on the source address, lookups included"
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.len() >= 17 * 2 + 3 * 2,
            "lookups and SM_NOTIFYs: {seen:?}"
        );
        assert!(
            seen.iter().all(|a| *a == source),
            "all from {source}: {seen:?}"
        );
    }

    /// A burst of replies larger than one turn's drain: every one is handled (the turn that
    /// stops at the drain's limit takes nothing more from the socket).
    #[tokio::test]
    async fn a_burst_of_replies_loses_none() {
        let rx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        rx.set_recv_buffer_size(1 << 20).unwrap();
        rx.set_nonblocking(true).unwrap();
        rx.bind(&SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 0))))
            .unwrap();
        let rx = UdpSocket::from_std(rx.into()).unwrap();
        let to = rx.local_addr().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let n = 2 * MAX_DRAIN + 7;
        let mut sched = Scheduler::new(Policy::default());
        let mut targets = Vec::new();
        let mut xids = Xids::default();
        for i in 0..n {
            sched.add_peer(vec!["srv".to_owned()]);
            targets.push(Target::new(format!("p{i}"), vec!["srv".to_owned()]));
            let xid = 0x1000 + u32::try_from(i).unwrap();
            xids.insert(xid, i, 0);
            let reply: Vec<u8> = [xid, 1, 0, 0, 0, 0]
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .collect();
            tx.send_to(&reply, to).unwrap();
        }
        let mut lookups = PortLookups::new(
            LookupPolicy {
                timeout: Duration::from_secs(5),
                retransmit: Duration::from_millis(500),
                max_retransmit: Duration::from_secs(2),
            },
            next_xid,
        );
        let mut outbox = Vec::new();
        let mut buf = vec![0u8; 4096];
        // Turns of the loop while datagrams are queued (loopback delivered them all already;
        // the wait only lets the runtime see the socket readable).
        while tokio::time::timeout(Duration::from_secs(1), rx.readable())
            .await
            .is_ok()
        {
            let first = rx.try_recv_from(&mut buf);
            if matches!(&first, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                break;
            }
            Replies {
                xids: &mut xids,
                lookups: &mut lookups,
                outbox: &mut outbox,
                sched: &mut sched,
                targets: &targets,
            }
            .on_replies(Some(&rx), first, &mut buf, &mut |_, _, _, _| {});
        }
        assert_eq!(
            xids.by_xid.len(),
            0,
            "replies taken from the socket and never handled"
        );
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    /// An SM_NOTIFY sent on a socket from `bind_sources` leaves from the bound address, and
    /// a statd's reply to it parses as success.
    #[tokio::test]
    async fn notify_leaves_from_the_bound_source_and_reply_parses() {
        let statd = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let statd_port = statd.local_addr().unwrap().port();
        let sources = bind_sources(&SourceSpec {
            addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            port: Some(0),
            device: None,
        })
        .unwrap();
        let sock = UdpSocket::from_std(sources.v4.unwrap()).unwrap();
        let xid = next_xid();
        sock.send_to(&encode_notify(xid, "svc", 5), ("127.0.0.1", statd_port))
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = statd.recv_from(&mut buf).await.unwrap();
        assert_eq!(from.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(n, 52);
        let mut reply = Vec::new();
        for w in [xid, 1, 0, 0, 0, 0] {
            reply.extend_from_slice(&w.to_be_bytes());
        }
        statd.send_to(&reply, from).await.unwrap();
        let (n, _) = sock.recv_from(&mut buf).await.unwrap();
        let r = msg::parse_reply(&buf[..n]).unwrap();
        assert_eq!(r.xid, xid);
        assert!(matches!(
            r.body,
            ReplyBody::Accepted(AcceptStat::Success(_))
        ));
    }
}

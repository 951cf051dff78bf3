//! `nsmd`: the NSM daemon, a drop-in for rpc.statd (see `nsmd --help` and the README).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use nsm_rpc::rpcbind::Rpcbind;
use nsm_rpc::server::{Limits, Server};
use nsm_statd::{Instance, InstanceConfig, NsmService, ServiceSpec, Services, ServicesConfig};
use nsmd::config::{StatdArgs, StatdConfig};
use nsmd::control::{ErrorReply, Request, Response};
use nsmd::listen::{Listeners, bind_listeners};
use nsmd::logging::LogLevel;
use nsmd::privileges::drop_to_owner_of_sm;
use nsmd::register::Registration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

fn main() -> std::process::ExitCode {
    if std::env::var_os(nsmd::privileges::HELPER_ENV).is_some() {
        return nsmd::privileges::helper_main();
    }
    let args = StatdArgs::parse();
    let cfg = match nsmd::config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nsmd: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let log = nsmd::logging::init("nsmd", cfg.debug.any(), !cfg.foreground);
    for w in &cfg.warnings {
        warn!("{w}");
    }
    // Service instances notify thousands of peers at once, a socket per port lookup.
    if let Err(e) = nsm_notify::raise_open_files_limit() {
        warn!("cannot raise the open files limit (notifying many peers may be slow): {e}");
    }
    let to_syslog = log.to_syslog();
    match run(&args, cfg, log) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let e = nsmd::logging::error_chain(&e);
            error!("{e}");
            // The log went to syslog: say it on the terminal too.
            if to_syslog {
                eprintln!("nsmd: {e}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Everything before the runtime starts runs on the only thread: daemonising and dropping
/// privileges must happen before any other thread exists.
fn run(args: &StatdArgs, cfg: StatdConfig, log: LogLevel) -> Result<()> {
    // Before anything touches the directory or rpcbind (and before going into the
    // background, so the operator sees why): one nsmd per state directory, one statd per host.
    // Every setting is read and checked before anything is locked, moved, bumped or sent: a
    // typo in an instance file must not cost the clients a notification.
    let specs = match &args.instances {
        Some(dir) => {
            let specs = nsmd::config::instances::load_dir(dir)?;
            log_instance_files(dir, &specs);
            specs
        }
        None => Vec::new(),
    };
    let _state_dir_lock = lock_state_dir(&cfg)?;
    refuse_if_statd_running(&cfg)?;
    if !cfg.foreground {
        // Keep stdout and stderr when there is no syslog socket: nsmd logs there then.
        nix::unistd::daemon(true, !log.to_syslog())
            .context("cannot go into the background (use -F)")?;
    }
    let notifier = if cfg.no_notify {
        None
    } else {
        notify_at_start(&cfg)
    };
    // As root, before dropping privileges (as nfs-utils): create the directories and the
    // `state` file, which stay root's (only sm/ and sm.bak/ belong to the statd user,
    // CVE-2019-3689). In a state directory of that user (RHEL's layout) root writes nothing:
    // `state` is that user's, written once nsmd runs as it (as nfs-utils' sm-notify does).
    let own_dir = nsmd::privileges::owns_state_dir_after_drop(&cfg.state_dir);
    nsm_store::StateDir::open(&cfg.state_dir)
        .and_then(|d| if own_dir { Ok(0) } else { d.state(false) })
        .with_context(|| {
            format!(
                "cannot use the state directory {} (pass another with -P)",
                cfg.state_dir.display()
            )
        })?;
    // The control socket is bound as root, before the drop.
    // Always a control socket (`nsmctl status` shows the node's NSM too); only an explicit
    // one, or one service instances need, is a reason not to start.
    let control_path = args
        .control_socket
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(DEFAULT_CONTROL_SOCKET));
    let control = match bind_control(&control_path) {
        Ok(l) => Some((l, control_path.clone())),
        Err(e) if args.control_socket.is_some() || args.instances.is_some() => return Err(e),
        Err(e) => {
            info!(
                "no control socket, nsmctl cannot reach this nsmd: {} (choose a path with \
                 --control-socket)",
                nsmd::logging::error_chain(&e)
            );
            None
        }
    };
    let control_path = control.as_ref().map(|(_, p)| p.clone());
    // Beside the control socket: which instances this node holds, for a restarted nsmd to
    // resume them (a tmpfs: gone after a reboot, when the kernel holds no lock any more).
    let run_dir = match (&args.instances, &control_path) {
        (Some(_), Some(p)) => Some(instances_run_dir(p, &cfg.state_dir)?),
        _ => None,
    };
    apply_nlm_ports(&cfg);
    // After the drop, bumping `state` and writing the kernel's nsm_local_state need root, and
    // so do a service instance's root-owned files and the kernel's unlock_ip and
    // unlock_filesystem: a helper that can do only that keeps it.
    let helper = if nsmd::privileges::will_drop(&cfg.state_dir) {
        Some(Arc::new(nsmd::privileges::StateHelper::spawn(
            &cfg.state_dir,
            &cfg.proc_root.nsm_local_state(),
            args.instances.as_deref(),
            &cfg.proc_root.0,
        )?))
    } else {
        None
    };
    drop_to_owner_of_sm(&cfg.state_dir)?;
    // One worker: the work per call is tiny and two workers spent more on handing wake-ups
    // to each other than they gained (0.32 context switches per SM_NULL under load,
    // measured). Each UDP socket has a thread of its own that answers the calls needing no
    // wait (nsm_rpc::server); disk commits, name lookups and the state helper run on threads
    // of their own too.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let prepared = Prepared {
        helper,
        specs,
        control,
        notifier,
        run_dir,
    };
    rt.block_on(serve(args, cfg, log, prepared))
}

/// What `run` prepared as root, before the privilege drop, for `serve`.
struct Prepared {
    /// The root helper, when nsmd dropped root.
    helper: Option<Arc<nsmd::privileges::StateHelper>>,
    /// The service instances.
    specs: Vec<ServiceSpec>,
    /// The control socket, bound, and its path (removed at exit).
    control: Option<(std::os::unix::net::UnixListener, std::path::PathBuf)>,
    /// The write end of nsm-notify's go-ahead pipe.
    notifier: Option<std::os::fd::OwnedFd>,
    /// Where the instances' resume markers live.
    run_dir: Option<std::path::PathBuf>,
}

/// Says what in the instances directory is not read, and when nothing is.
fn log_instance_files(dir: &Path, specs: &[ServiceSpec]) {
    for p in nsmd::config::instances::ignored_files(dir) {
        warn!(path = %p.display(), "not an instance file (only NAME.toml files are read): ignored");
    }
    if specs.is_empty() {
        warn!(
            "no instance file (NAME.toml) in {}: no service instance is configured",
            dir.display()
        );
    }
}

/// The state directory's lock, held until nsmd exits. A missing directory is created first
/// (as root, 0755, durably: its parent is fsynced, or a power cut could take it with every
/// record), but nothing in it: a refused nsmd leaves no `sm/` or `sm.bak/` behind.
fn lock_state_dir(cfg: &StatdConfig) -> Result<nsmd::register::StateDirLock> {
    if !cfg.state_dir.exists() {
        nsm_store::create_dir_durably(&cfg.state_dir).with_context(|| {
            format!(
                "cannot create the state directory {} (pass another with -P)",
                cfg.state_dir.display()
            )
        })?;
    }
    nsmd::register::StateDirLock::take(&cfg.state_dir)
}

/// As rpc.statd at start: a statd registered with the local rpcbind that answers NULL means
/// another one is running (registering would take its registration over, and unregistering
/// at exit would leave it unregistered). A registration nobody answers is a leftover: it is
/// removed here, as root and before anything is notified, because lockd would send its
/// SM_MONs to that dead port (and refuse the reclaims of the clients nsmd is about to notify)
/// until nsmd's own registration replaces it.
fn refuse_if_statd_running(cfg: &StatdConfig) -> Result<()> {
    use nsmd::register::{Existing, probe_existing};
    // A runtime of one thread that ends here: no thread survives into daemon() and the drop.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let found = rt.block_on(probe_existing(
        Rpcbind::default().addr,
        nsm_xdr::nsm::SM_PROG,
        nsm_xdr::nsm::SM_VERS,
        Duration::from_secs(1),
    ));
    match found {
        Existing::None => Ok(()),
        Existing::Stale { port } => {
            info!(
                "program 100024 is registered with rpcbind on port {port} but nothing answers \
                 there (a statd that died?): removing that registration before notifying anyone"
            );
            let rpcbind = rpcbind(cfg);
            match rt.block_on(rpcbind.unset(nsm_xdr::nsm::SM_PROG, nsm_xdr::nsm::SM_VERS)) {
                Ok(true) => Ok(()),
                Ok(false) => anyhow::bail!(
                    "rpcbind at {} refused to remove the stale registration of program 100024 \
                     on port {port}; remove it (rpcinfo -d 100024 1) and start nsmd again",
                    rpcbind.describe()
                ),
                Err(e) => anyhow::bail!(
                    "cannot remove the stale registration of program 100024 on port {port} \
                     from rpcbind at {}: {e}; remove it (rpcinfo -d 100024 1) and start nsmd again",
                    rpcbind.describe()
                ),
            }
        }
        Existing::Running { port, owner } => {
            // The unit that runs it: nsmd's own, or nfs-utils'.
            let unit = match &owner {
                Some(o) if o.starts_with("nsmd,") => "nsmd",
                _ => "rpc-statd",
            };
            let who = owner.map(|o| format!(" ({o})")).unwrap_or_default();
            anyhow::bail!(
                "another statd{who} is running on port {port}; stop it first \
                 (systemctl stop {unit})"
            )
        }
    }
}

/// The local rpcbind nsmd registers with.
fn rpcbind(cfg: &StatdConfig) -> Rpcbind {
    Rpcbind {
        socket: cfg.rpcbind_socket.clone(),
        ..Rpcbind::default()
    }
}

/// Where nsmctl finds nsmd unless told otherwise.
const DEFAULT_CONTROL_SOCKET: &str = "/run/nsmd/nsmctl.sock";

/// `<control socket's directory>/instances`, created 0700 as root and given to the user
/// nsmd becomes (the owner of `sm/`), who writes the markers there.
fn instances_run_dir(control: &Path, state_dir: &Path) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = nsmd::held::run_dir(control);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    if nsmd::privileges::will_drop(state_dir) {
        let owner = std::fs::metadata(state_dir.join("sm"))
            .with_context(|| format!("cannot read {}/sm", state_dir.display()))?;
        std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid()))
            .with_context(|| format!("cannot give {} to uid {}", dir.display(), owner.uid()))?;
    }
    Ok(dir)
}

/// Binds the control socket: its directory is created 0711 (nsmd, once it dropped root,
/// must reach its `instances/` markers there; the socket itself is 0600), and only root (or
/// nsmd's own user) is served.
fn bind_control(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)))
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    let l = std::os::unix::net::UnixListener::bind(path).with_context(|| {
        format!(
            "cannot listen on {} (choose another with --control-socket)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    l.set_nonblocking(true)
        .with_context(|| format!("cannot use {}", path.display()))?;
    Ok(l)
}

/// Serves nsmctl: one request line, one JSON reply line, per connection (the protocol:
/// [`nsmd::control`]). A line that is not a request of this version gets an error reply.
async fn serve_control(
    listener: tokio::net::UnixListener,
    node: Arc<Instance>,
    services: Arc<Services>,
) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == 0 || c.uid() == me => {}
            Ok(c) => {
                warn!(uid = c.uid(), "control connection refused: not root");
                continue;
            }
            Err(e) => {
                warn!("control connection refused: {e}");
                continue;
            }
        }
        let (node, services) = (node.clone(), services.clone());
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
            let (rd, mut wr) = stream.into_split();
            let mut line = Vec::new();
            let limit = nsmd::control::MAX_REQUEST;
            let mut rd = BufReader::new(rd.take(limit as u64));
            if rd.read_until(b'\n', &mut line).await.is_err() {
                return;
            }
            let reply = if line.last() != Some(&b'\n') && line.len() >= limit {
                let e = format!(
                    "control request longer than {limit} bytes: not read (nsmctl sends one \
                     JSON object per line)"
                );
                warn!("nsmctl: {e}");
                Response::Error(ErrorReply::new(e, nsmd::control::KIND_REQUEST))
            } else {
                match nsmd::control::decode_request(&line) {
                    Ok(request) => control_request(request, &node, &services).await,
                    Err(e) => {
                        warn!("nsmctl: {}", e.error);
                        Response::Error(e)
                    }
                }
            };
            let _ = wr.write_all(format!("{}\n", reply.line()).as_bytes()).await;
        });
    }
}

/// Carries out one nsmctl request.
async fn control_request(request: Request, node: &Instance, services: &Services) -> Response {
    use nsmd::control::{
        InstanceStatus, NodeStatus, NotifyReply, NotifyStatus, Peer, PeersReply, ReleaseReply,
        ServiceStatus, StatusReply, TakeoverReply,
    };
    let shown = request.shown();
    info!(command = %shown, "nsmctl");
    let r: Result<Response, nsm_statd::Error> = match request {
        Request::Status => {
            let mut v = vec![InstanceStatus::Node(NodeStatus {
                name: "node".to_owned(),
                active: true,
                state: node.state(),
                peers: node.len(),
                state_dir: node.state_dir().path().display().to_string(),
                addresses: Vec::new(),
            })];
            for s in services.status() {
                v.push(InstanceStatus::Service(ServiceStatus {
                    name: s.name,
                    hostname: s.hostname,
                    active: s.active,
                    state: s.state,
                    epoch: s.epoch,
                    fenced: s.fenced,
                    step: s.step.map(str::to_owned),
                    peers: s.peers,
                    state_dir: s.state_dir.display().to_string(),
                    addresses: s.addresses,
                    notify: NotifyStatus {
                        peers: s.notify.peers,
                        acked: s.notify.acked,
                        gave_up: s.notify.gave_up,
                        finished: s.notify.finished,
                        error: s.notify.error,
                    },
                }));
            }
            Ok(Response::Status(StatusReply { instances: v }))
        }
        // Already in the state asked for: success, nothing done, said as `already`.
        Request::Takeover { name, force } => match services.active_state(&name) {
            Ok(Some(state)) => Ok(TakeoverReply {
                instance: name,
                state,
                already: true,
            }),
            Ok(None) if force => services
                .takeover_forced(&name)
                .await
                .map(|state| TakeoverReply {
                    instance: name,
                    state,
                    already: false,
                }),
            Ok(None) => services.takeover(&name).await.map(|state| TakeoverReply {
                instance: name,
                state,
                already: false,
            }),
            Err(e) => Err(e),
        }
        .map(Response::Takeover),
        Request::Release { name } => match services.holds(&name) {
            Ok(false) => Ok(ReleaseReply {
                instance: name,
                already: true,
            }),
            Ok(true) => services.release(&name).await.map(|()| ReleaseReply {
                instance: name,
                already: false,
            }),
            Err(e) => Err(e),
        }
        .map(Response::Release),
        Request::Metrics => Ok(Response::Metrics(nsmd::control::MetricsReply {
            metrics: services.metrics(node),
        })),
        Request::Notify { name } => services.notify(&name).await.map(|peers| {
            Response::Notify(NotifyReply {
                instance: name,
                peers,
            })
        }),
        Request::Peers { name } => {
            let list = if name == "node" {
                Ok(node.peers())
            } else {
                services.peers(&name)
            };
            list.map(|p| {
                Response::Peers(PeersReply {
                    instance: name,
                    peers: p
                        .into_iter()
                        .map(|(mon_name, my_name)| Peer { mon_name, my_name })
                        .collect(),
                })
            })
        }
    };
    r.unwrap_or_else(|e| {
        warn!(command = %shown, "nsmctl: {e}");
        Response::Error(ErrorReply::from(&e))
    })
}

/// Notifies the peers of the previous boot, as rpc.statd runs sm-notify: `nsm-notify` (next to
/// `nsmd`) moves `sm/` to `sm.bak/`, bumps the state and goes into the background; nsmd waits
/// only for that first part (so it loads the records and the state afterwards, as rpc.statd
/// does), never for the peers. Unlike rpc.statd, nothing is sent before nsmd is registered
/// with rpcbind and answering: `nsm-notify` waits on a pipe (`--wait-fd`) whose write end is
/// returned here; a byte written to it lets the notifications go, and closing it unwritten
/// (nsmd exits first) leaves the peers in `sm.bak/` for the next start.
fn notify_at_start(cfg: &StatdConfig) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("nsm-notify")));
    let Some(exe) = exe.filter(|p| p.exists()) else {
        warn!(
            "nsm-notify was not found next to nsmd: peers are not notified of this restart (install it, or pass -L)"
        );
        return None;
    };
    // Both ends close on exec; the read end is made inheritable for nsm-notify alone (nsmd
    // has no other thread yet, so no other child can inherit it).
    let (go_rd, go_wr) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).and_then(
        |(rd, wr)| {
            nix::fcntl::fcntl(
                &rd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map(|_| (rd, wr))
        },
    ) {
        Ok(p) => p,
        Err(e) => {
            warn!(
                "cannot create a pipe for nsm-notify: {e}: peers are not notified of this restart"
            );
            return None;
        }
    };
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("-P")
        .arg(&cfg.state_dir)
        .arg("--proc-root")
        .arg(&cfg.proc_root.0)
        .arg("--config")
        .arg(&cfg.config_file)
        .arg("--wait-fd")
        .arg(go_rd.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null());
    if let Some(name) = &cfg.name {
        cmd.arg("-v").arg(name);
    }
    if let Some(port) = cfg.outgoing_port {
        cmd.arg("-p").arg(port.to_string());
    }
    info!(program = %exe.display(), "notifying the peers of the previous boot once nsmd is registered");
    let status = cmd.status();
    drop(go_rd);
    match status {
        Ok(s) if s.success() => return Some(go_wr),
        Ok(s) => {
            warn!(program = %exe.display(), "nsm-notify failed ({s}): peers may not be notified of this restart")
        }
        Err(e) => warn!(program = %exe.display(), "cannot run nsm-notify: {e}"),
    }
    None
}

/// How the node instance notifies its peers after SM_SIMU_CRASH: as `nsm-notify` at start
/// would (`-n NAME`: that name and its short name, from NAME's addresses; else each record's
/// my_name from any address), from a privileged port unless `-o` says otherwise.
async fn crash_notify(
    cfg: &StatdConfig,
    registered: nsm_statd::Registered,
) -> nsm_statd::CrashNotify {
    let mut addrs = Vec::new();
    if let Some(name) = &cfg.name {
        match nsm_notify::resolve::lookup(name).await {
            Ok(found) => addrs = found,
            Err(e) => warn!(
                "-n {name} does not resolve ({e}): after SM_SIMU_CRASH, notifications leave from any address"
            ),
        }
    }
    nsm_statd::CrashNotify {
        sources: nsm_notify::SourceSpec {
            addrs,
            port: cfg.outgoing_port,
            device: None,
        },
        names: cfg
            .name
            .as_deref()
            .map(nsm_notify::default_names)
            .unwrap_or_default(),
        policy: nsm_notify::Policy::default(),
        registered,
    }
}

/// `-T` / `-U` / `[lockd]`: tell the kernel lockd's ports, if lockd is loaded.
fn apply_nlm_ports(cfg: &StatdConfig) {
    for (path, port) in cfg.nlm_port_writes() {
        if !path.exists() {
            warn!(
                path = %path.display(),
                "lockd port {port} not set: the file does not exist (is the lockd module loaded?)"
            );
            continue;
        }
        match std::fs::write(&path, port.to_string()) {
            Ok(()) => info!(path = %path.display(), port, "lockd port set"),
            Err(e) => warn!(path = %path.display(), "cannot set lockd's port {port}: {e}"),
        }
    }
}

async fn serve(
    args: &StatdArgs,
    cfg: StatdConfig,
    log: LogLevel,
    prepared: Prepared,
) -> Result<()> {
    let Prepared {
        helper,
        specs,
        control,
        notifier,
        run_dir,
    } = prepared;
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot catch SIGUSR1")?;

    let mut icfg = InstanceConfig::new("node", cfg.state_dir.clone());
    icfg.nsm_local_state = Some(cfg.proc_root.nsm_local_state());
    icfg.ha_callout = cfg.ha_callout.clone();
    icfg.authority = helper
        .clone()
        .map(|h| h as Arc<dyn nsm_statd::StateAuthority>);
    // Nothing is notified before nsmd is registered with rpcbind and answering.
    let (open_registered, registered) = nsm_statd::Registered::channel();
    icfg.crash_notify = Some(crash_notify(&cfg, registered.clone()).await);
    let (instance, report) = Instance::open(icfg).with_context(|| {
        format!(
            "cannot use the state directory {} (pass another with -P)",
            cfg.state_dir.display()
        )
    })?;
    for s in &report.skipped {
        warn!(path = %s.path.display(), "record file skipped and left in place: {}", s.reason);
    }
    for p in &report.leftovers {
        warn!(path = %p.display(), "temporary file of an interrupted write ignored");
    }

    let Listeners { udp, tcp } = bind_listeners(cfg.port)?;
    let endpoints: Vec<_> = udp
        .iter()
        .map(|s| (false, s.local_addr()))
        .chain(tcp.iter().map(|s| (true, s.local_addr())))
        .map(|(tcp, a)| a.map(|a| (tcp, a)))
        .collect::<std::io::Result<_>>()
        .context("cannot read the address of a listener")?;
    let at_start: Vec<String> = specs
        .iter()
        .filter(|s| s.takeover_at_start)
        .map(|s| s.name.clone())
        .collect();
    let services = Arc::new(Services::new(
        ServicesConfig {
            owner: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            proc_root: cfg.proc_root.0.clone(),
            ha_callout: cfg.ha_callout.clone(),
            callback: nsm_statd::callback::CallbackPolicy::default(),
            rpcbind_port: 111,
            privileged: helper.map(|h| h as Arc<dyn nsm_statd::ServicePrivileges>),
            registered,
            run_dir,
        },
        specs,
    ));
    for s in services.specs() {
        info!(instance = %s.name, hostname = %s.hostname, state_dir = %s.state_dir.display(), "service instance configured on {:?} (inactive until taken over)", s.addresses);
    }
    let server = Server::new(
        Arc::new(NsmService::with_services(
            instance.clone(),
            services.clone(),
        )),
        Limits {
            idle_timeout: cfg.tcp_idle_timeout,
            ..Limits::default()
        },
    );
    let control_path = control.as_ref().map(|(_, p)| p.clone());
    if let Some((l, _)) = control {
        let l = tokio::net::UnixListener::from_std(l).context("cannot use the control socket")?;
        tokio::spawn(serve_control(l, instance.clone(), services.clone()));
    }
    // First what this node held when nsmd stopped (a restart must not change what the
    // cluster sees), then the instances to take over at start that did not resume.
    tokio::spawn({
        let services = services.clone();
        async move {
            let resumed = services.resume_all().await;
            for name in at_start.into_iter().filter(|n| !resumed.contains(n)) {
                match services.takeover(&name).await {
                    Ok(state) => info!(instance = %name, state, "taken over at start"),
                    Err(e) => error!(instance = %name, "not taken over at start: {e}"),
                }
            }
        }
    });
    for s in udp {
        server.serve_udp(s);
    }
    for l in tcp {
        server.serve_tcp(l);
    }
    let shown: Vec<String> = endpoints
        .iter()
        .map(|(tcp, a)| format!("{} {a}", nsm_xdr::rpcbind::netid(*tcp, a.is_ipv6())))
        .collect();
    info!(
        state_dir = %cfg.state_dir.display(),
        "serving program 100024 version 1 on {}",
        shown.join(", ")
    );

    let reg = Arc::new(
        Registration::new(nsm_xdr::nsm::SM_PROG, nsm_xdr::nsm::SM_VERS, endpoints)
            .with_rpcbind(rpcbind(&cfg)),
    );
    // Registration runs beside the signal handlers: a slow rpcbind never delays a shutdown.
    // The listeners serve already, so once registered nsmd answers lockd: only then do the
    // notifications go (the peers reclaim at once, and their reclaims make lockd monitor them).
    let registering = tokio::spawn({
        let reg = reg.clone();
        async move {
            let mut late = false;
            reg.register_retrying(|| {
                late = true;
                ready_for_systemd();
            })
            .await;
            open_registered.open();
            if let Some(go) = notifier {
                use std::io::Write;
                // nsm-notify may have nobody to notify and be gone already: nothing to do then.
                let _ = std::fs::File::from(go).write_all(b"go");
            }
            if !late {
                ready_for_systemd();
            }
            reg.keep().await;
        }
    });

    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                reload(args, &cfg, &instance, &log);
                if let Some(dir) = &args.instances {
                    tokio::spawn(reload_instances(dir.clone(), services.clone()));
                }
            }
            _ = usr1.recv() => {
                // rpc.statd re-runs sm-notify, which stops at its run-once lock, or (with -P)
                // moves the live records to sm.bak/ and bumps the state behind the daemon's
                // back. nsmd sends the peers still in sm.bak/ their notification again.
                info!("SIGUSR1: notifying the peers still in sm.bak/ again, state {}", instance.state());
                instance.renotify();
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    for name in services.left_active() {
        info!(
            instance = %name,
            "stays active on this node: its kernel locks and ownership are kept, and the next \
             nsmd resumes it (nsmctl release {name} gives it up)"
        );
    }
    registering.abort();
    reg.unregister().await;
    if !server.shutdown(Duration::from_secs(5)).await {
        warn!("some requests were still in progress after 5 s; exiting anyway");
    }
    // After the privilege drop the socket's directory is root's: then the socket stays, and
    // the next nsmd replaces it (nsmctl says nsmd is not running when nothing answers there).
    if let Some(p) = control_path
        && let Err(e) = std::fs::remove_file(&p)
        && !matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
        )
    {
        warn!(path = %p.display(), "cannot remove the control socket: {e}");
    }
    info!("stopped");
    Ok(())
}

/// Tells systemd nsmd is up (`Type=notify`).
fn ready_for_systemd() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        warn!("cannot tell systemd nsmd is ready: {e}");
    }
}

/// SIGHUP with `--instances`: reads the instance files again and applies them (new
/// instances added, inactive ones changed or removed; active ones keep their settings until
/// released).
async fn reload_instances(dir: std::path::PathBuf, services: Arc<Services>) {
    let specs = match tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || nsmd::config::instances::load_dir(&dir)
    })
    .await
    {
        Ok(Ok(specs)) => {
            log_instance_files(&dir, &specs);
            specs
        }
        Ok(Err(e)) => {
            warn!("SIGHUP: instance files not reloaded, keeping the current ones: {e}");
            return;
        }
        Err(e) => {
            warn!("SIGHUP: instance files not reloaded: {e}");
            return;
        }
    };
    let r = services.reconfigure(specs).await;
    for name in &r.kept_active {
        warn!(instance = %name, "SIGHUP: changed or removed in {} but active here: unchanged until released, then reload again", dir.display());
    }
    info!(
        added = ?r.added,
        changed = ?r.changed,
        removed = ?r.removed,
        "SIGHUP: instance files reloaded from {}",
        dir.display()
    );
}

/// SIGHUP: re-reads nfs.conf (rpc.statd exits on SIGHUP). The log level and the HA callout
/// change at once; settings that need new sockets or another directory need a restart.
fn reload(args: &StatdArgs, running: &StatdConfig, instance: &Instance, log: &LogLevel) {
    let new = match nsmd::config::load(args) {
        Ok(c) => c,
        Err(e) => {
            warn!("SIGHUP: configuration not reloaded, keeping the current one: {e}");
            return;
        }
    };
    for w in &new.warnings {
        warn!("{w}");
    }
    log.set_debug(new.debug.any());
    instance.set_ha_callout(new.ha_callout.clone());
    let mut restart = Vec::new();
    if new.port != running.port {
        restart.push("port");
    }
    if new.state_dir != running.state_dir {
        restart.push("state-directory-path");
    }
    if (new.nlm_tcp_port, new.nlm_udp_port) != (running.nlm_tcp_port, running.nlm_udp_port) {
        restart.push("lockd ports");
    }
    if restart.is_empty() {
        info!(file = %new.config_file.display(), "SIGHUP: configuration reloaded");
    } else {
        warn!(
            file = %new.config_file.display(),
            "SIGHUP: configuration reloaded; changes to {} take effect when nsmd restarts",
            restart.join(", ")
        );
    }
}

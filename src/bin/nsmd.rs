//! `nsmd`: the NSM daemon, a drop-in for rpc.statd (see `nsmd --help` and the README).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use nsm_rpc::rpcbind::Rpcbind;
use nsm_rpc::server::{Limits, Server};
use nsm_statd::{Instance, InstanceConfig, NsmService};
use nsmd::config::{StatdArgs, StatdConfig};
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
    let log = nsmd::logging::init(cfg.debug.any());
    for w in &cfg.warnings {
        warn!("{w}");
    }
    match run(&args, cfg, log) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("nsmd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Everything before the runtime starts runs on the only thread: daemonising and dropping
/// privileges must happen before any other thread exists.
fn run(args: &StatdArgs, cfg: StatdConfig, log: LogLevel) -> Result<()> {
    if !cfg.foreground {
        // Keep stderr: nsmd logs there (no syslog yet).
        nix::unistd::daemon(true, true).context("cannot go into the background (use -F)")?;
    }
    if !cfg.no_notify {
        notify_at_start(&cfg);
    }
    // As root, before dropping privileges (as nfs-utils): create the directories and the
    // `state` file, which stay root's (only sm/ and sm.bak/ belong to the statd user,
    // CVE-2019-3689).
    nsm_store::StateDir::open(&cfg.state_dir)
        .and_then(|d| d.state(false))
        .with_context(|| {
            format!(
                "cannot use the state directory {} (pass another with -P)",
                cfg.state_dir.display()
            )
        })?;
    apply_nlm_ports(&cfg);
    // After the drop, bumping `state` and writing the kernel's nsm_local_state need root:
    // a helper that can do only that keeps it.
    let authority: Option<Arc<dyn nsm_statd::StateAuthority>> =
        if nsmd::privileges::will_drop(&cfg.state_dir) {
            Some(Arc::new(nsmd::privileges::StateHelper::spawn(
                &cfg.state_dir,
                &cfg.proc_root.nsm_local_state(),
            )?))
        } else {
            None
        };
    drop_to_owner_of_sm(&cfg.state_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(args, cfg, log, authority))
}

/// Notifies the peers of the previous boot, as rpc.statd runs sm-notify: `nsm-notify` (next to
/// `nsmd`) moves `sm/` to `sm.bak/`, bumps the state and goes into the background to notify;
/// nsmd waits only for that first part (so it loads the records and the state afterwards, as
/// rpc.statd does), never for the peers.
fn notify_at_start(cfg: &StatdConfig) {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("nsm-notify")));
    let Some(exe) = exe.filter(|p| p.exists()) else {
        warn!(
            "nsm-notify was not found next to nsmd: peers are not notified of this restart (install it, or pass -L)"
        );
        return;
    };
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("-P")
        .arg(&cfg.state_dir)
        .arg("--proc-root")
        .arg(&cfg.proc_root.0)
        .arg("--config")
        .arg(&cfg.config_file)
        .stdin(std::process::Stdio::null());
    if let Some(name) = &cfg.name {
        cmd.arg("-v").arg(name);
    }
    if let Some(port) = cfg.outgoing_port {
        cmd.arg("-p").arg(port.to_string());
    }
    info!(program = %exe.display(), "notifying the peers of the previous boot");
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            warn!(program = %exe.display(), "nsm-notify failed ({s}): peers may not be notified of this restart")
        }
        Err(e) => warn!(program = %exe.display(), "cannot run nsm-notify: {e}"),
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
    authority: Option<Arc<dyn nsm_statd::StateAuthority>>,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot catch SIGUSR1")?;

    let mut icfg = InstanceConfig::new("node", cfg.state_dir.clone());
    icfg.nsm_local_state = Some(cfg.proc_root.nsm_local_state());
    icfg.ha_callout = cfg.ha_callout.clone();
    icfg.authority = authority;
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
    let server = Server::new(
        Arc::new(NsmService::new(instance.clone())),
        Limits::default(),
    );
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
        Registration::new(nsm_xdr::nsm::SM_PROG, nsm_xdr::nsm::SM_VERS, endpoints).with_rpcbind(
            Rpcbind {
                socket: cfg.rpcbind_socket.clone(),
                ..Rpcbind::default()
            },
        ),
    );
    // Registration runs beside the signal handlers: a slow rpcbind never delays a shutdown.
    let registering = tokio::spawn({
        let reg = reg.clone();
        async move {
            reg.register().await;
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                warn!("cannot tell systemd nsmd is ready: {e}");
            }
        }
    });

    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => reload(args, &cfg, &instance, &log),
            _ = usr1.recv() => {
                // As rpc.statd re-runs sm-notify (which usually stops at its run-once lock).
                info!("SIGUSR1: running nsm-notify again");
                let c = cfg.clone();
                tokio::task::spawn_blocking(move || notify_at_start(&c));
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    registering.abort();
    reg.unregister().await;
    if !server.shutdown(Duration::from_secs(5)).await {
        warn!("some requests were still in progress after 5 s; exiting anyway");
    }
    info!("stopped");
    Ok(())
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

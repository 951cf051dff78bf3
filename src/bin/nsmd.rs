//! `nsmd`: the NSM daemon (a drop-in for rpc.statd, under construction).
//!
//! Today: serves SM_NULL on UDP and TCP, IPv4 and IPv6, registers program 100024 version 1
//! with rpcbind, and unregisters on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgAction, Parser};
use nsm_rpc::server::{Limits, Server};
use nsm_statd::{Instance, InstanceConfig, NsmService};
use nsmd::listen::{Listeners, bind_listeners};
use nsmd::register::Registration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

/// nsmd: a userspace NSM (rpc.statd) for Linux NFS.
///
/// Serves the NSM program (100024, version 1) on UDP and TCP, IPv4 and IPv6, and registers it
/// with the local rpcbind: monitors hosts for lockd (SM_MON, SM_UNMON, SM_UNMON_ALL) in
/// nfs-utils-compatible record files, answers SM_STAT, and calls lockd back when a monitored
/// host reports a reboot (SM_NOTIFY). Options take rpc.statd's letters.
#[derive(Debug, Parser)]
#[command(
    name = "nsmd",
    version,
    disable_version_flag = true,
    disable_help_flag = true
)]
struct Args {
    /// Stay in the foreground. Accepted for rpc.statd compatibility: nsmd always runs in the
    /// foreground today (run it under systemd, or background it yourself).
    #[arg(short = 'F', long = "foreground")]
    foreground: bool,

    /// Log to stderr with debug detail (the default logs at info level to stderr).
    #[arg(short = 'd', long = "no-syslog")]
    debug: bool,

    /// Listen on this port (UDP and TCP, IPv4 and IPv6); default: one free port for all four.
    #[arg(short = 'p', long = "port", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,

    /// State directory; created if missing.
    #[arg(
        short = 'P',
        long = "state-directory-path",
        value_name = "DIR",
        default_value = "/var/lib/nfs"
    )]
    state_dir: PathBuf,

    /// nsmd only: prefix of the /proc paths nsmd writes (nsm_local_state), so tests can point
    /// them at plain files.
    #[arg(long = "proc-root", value_name = "DIR", default_value = "/proc")]
    proc_root: PathBuf,

    /// Print the version and exit.
    #[arg(short = 'v', short_alias = 'V', long = "version", action = ArgAction::Version)]
    version: Option<bool>,

    /// Print this help and exit.
    #[arg(short = 'h', short_alias = '?', long = "help", action = ArgAction::Help)]
    help: Option<bool>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    nsmd::logging::init(args.debug);
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("nsmd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;

    let Listeners { udp, tcp } = bind_listeners(args.port)?;
    let endpoints: Vec<_> = udp
        .iter()
        .map(|s| (false, s.local_addr()))
        .chain(tcp.iter().map(|s| (true, s.local_addr())))
        .map(|(tcp, a)| a.map(|a| (tcp, a)))
        .collect::<std::io::Result<_>>()
        .context("cannot read the address of a listener")?;

    let mut cfg = InstanceConfig::new("node", args.state_dir.clone());
    cfg.nsm_local_state = Some(args.proc_root.join("sys/fs/nfs/nsm_local_state"));
    let (instance, report) = Instance::open(cfg).with_context(|| {
        format!(
            "cannot use the state directory {} (pass another with -P)",
            args.state_dir.display()
        )
    })?;
    for s in &report.skipped {
        warn!(path = %s.path.display(), "record file skipped and left in place: {}", s.reason);
    }
    for p in &report.leftovers {
        warn!(path = %p.display(), "temporary file of an interrupted write ignored");
    }
    let server = Server::new(Arc::new(NsmService::new(instance)), Limits::default());
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
        state_dir = %args.state_dir.display(),
        "serving program 100024 version 1 on {}",
        shown.join(", ")
    );

    let reg = Arc::new(Registration::new(
        nsm_xdr::nsm::SM_PROG,
        nsm_xdr::nsm::SM_VERS,
        endpoints,
    ));
    // Registration runs beside the signal handlers: a slow rpcbind never delays a shutdown.
    let registering = tokio::spawn({
        let reg = reg.clone();
        async move { reg.register().await }
    });

    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                // rpc.statd exits on SIGHUP; nsmd keeps serving (nothing to reload yet).
                info!("SIGHUP: nothing to reload; still serving");
            }
        }
    }
    registering.abort();
    reg.unregister().await;
    if !server.shutdown(Duration::from_secs(5)).await {
        warn!("some requests were still in progress after 5 s; exiting anyway");
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Args::command().debug_assert();
    }
}

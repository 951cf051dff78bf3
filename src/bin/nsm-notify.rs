//! `nsm-notify`: a drop-in for nfs-utils' `sm-notify`, built on the `nsm-notify` engine.
//!
//! Takes every sm-notify option (`-d -f -m -n -p -v -P`) and the `[sm-notify]` keys of
//! nfs.conf, with sm-notify's semantics (see reference/nfs-utils-statd.md §5 in the design notes):
//! run-once lock, `sm/` retired to `sm.bak/`, the state bumped by 2 only when there is
//! someone to notify, `nsm_local_state` written, lockd's grace lifted when there is nobody.
//! Differences: peers are notified in parallel, with a backoff that doubles up to 120 s; a
//! numeric `-v` is sent as given (no reverse lookup); a peer is notified once per `sm.bak/`
//! file (all its lines share the destination) with each of its names; a restart in the same
//! boot resumes the remaining peers without bumping the state again.

use std::io::Write;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use nsm_notify::{
    Delivery, NotifierConfig, Policy, Retired, Source, SourceSpec, bind_sources, default_names,
};
use nsm_store::StateDir;
use nsmd::cli::NotifyArgs;
use nsmd::config::{
    DEFAULT_STATE_DIR, NfsConf, SmNotifyConfig, SmNotifyOverrides, nfsconf, resolve_sm_notify,
};
use nsmd::privileges::drop_to_owner_of_sm;
use tracing::{debug, error, info, warn};

/// The run-once lock of sm-notify.
const DEFAULT_PID_FILE: &str = "/run/sm-notify.pid";
/// In the state directory: the boot and state number of the last bump (a dot name: neither
/// nsmd nor nfs-utils loads it).
const BOOT_MARKER: &str = ".nsm-notify-boot";

fn main() -> ExitCode {
    let args = NotifyArgs::parse();
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(nfsconf::DEFAULT_PATH));
    let conf = match NfsConf::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nsm-notify: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let flags = SmNotifyOverrides {
        debug: args.debug,
        force: args.force,
        retry_minutes: args.retry_minutes,
        no_update_state: args.no_update,
        outgoing_port: args.port,
        outgoing_addr: args.name.clone(),
        state_dir: args.state_dir.clone(),
        proc_root: args.proc_root.clone(),
    };
    let cfg = resolve_sm_notify(&flags, &conf);
    let log = nsmd::logging::init("nsm-notify", cfg.debug.any(), !cfg.foreground);
    for w in &cfg.warnings {
        warn!("{w}");
    }
    match nsm_notify::raise_open_files_limit() {
        Ok(n) => debug!("open files limit: {n}"),
        Err(e) => warn!("cannot raise the open files limit (many peers may be slow): {e}"),
    }
    let to_syslog = log.to_syslog();
    match run(&args, &cfg, to_syslog) {
        Ok(code) => code,
        Err(e) => {
            let e = nsmd::logging::error_chain(&e);
            error!("{e}");
            if to_syslog {
                eprintln!("nsm-notify: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The run-once lock: `false` when another run already holds it (exit 0, as sm-notify).
fn run_once(args: &NotifyArgs, cfg: &SmNotifyConfig) -> Result<bool> {
    let applies = args.pid_file.is_some() || cfg.state_dir == Path::new(DEFAULT_STATE_DIR);
    if !applies {
        return Ok(true);
    }
    let path = args
        .pid_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PID_FILE));
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if cfg.force || !cfg.update_state {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    match o.open(&path) {
        Ok(mut f) => {
            writeln!(f, "{}", std::process::id())
                .with_context(|| format!("cannot write the lock file {}", path.display()))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            info!(
                "Already notifying clients; Exiting! ({} exists; -f runs anyway)",
                path.display()
            );
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot create the lock file {} (choose another with --pid-file)",
                path.display()
            )
        }),
    }
}

/// The source addresses of `-v`: the address itself, or what the name resolves to.
fn source_addrs(name: &str) -> Result<Vec<IpAddr>> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let addrs: Vec<IpAddr> = (name, 0)
        .to_socket_addrs()
        .with_context(|| {
            format!("my_name {name} is unusable: it does not resolve (check -v / outgoing-addr)")
        })?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        bail!("my_name {name} is unusable: it resolves to no address");
    }
    Ok(addrs)
}

/// This boot's id, from `<proc-root>/sys/kernel/random/boot_id`, else from /proc.
fn boot_id(proc_root: &Path) -> Option<String> {
    [proc_root, Path::new("/proc")]
        .iter()
        .find_map(|r| std::fs::read_to_string(r.join("sys/kernel/random/boot_id")).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The state to announce: bumped by 2, unless this boot already bumped it to the value on
/// disk (a restart resumes the remaining peers with the same number).
fn announce_state(dir: &StateDir, cfg: &SmNotifyConfig) -> Result<i32> {
    let ctx = || {
        format!(
            "cannot read or update the state number in {} (pass another directory with -P)",
            dir.path().display()
        )
    };
    if !cfg.update_state {
        return dir.state(false).with_context(ctx);
    }
    let marker = dir.path().join(BOOT_MARKER);
    let boot = boot_id(&cfg.proc_root.0);
    if let (Some(boot), Ok(m)) = (&boot, std::fs::read_to_string(&marker)) {
        let current = dir.state(false).with_context(ctx)?;
        if m.trim() == format!("{boot} {current}") {
            info!("state {current} was already announced in this boot: resuming without a bump");
            return Ok(current);
        }
    }
    let state = dir.state(true).with_context(ctx)?;
    if let Some(boot) = boot {
        let tmp = dir.path().join(format!("{BOOT_MARKER}.new"));
        let r = std::fs::write(&tmp, format!("{boot} {state}\n"))
            .and_then(|()| std::fs::rename(&tmp, &marker));
        if let Err(e) = r {
            warn!(
                "cannot write {}: {e}; a restart in this boot would bump the state again",
                marker.display()
            );
        }
    }
    Ok(state)
}

/// Writes `text` to a /proc file if it exists (as nfs-utils: silently skipped otherwise).
fn write_proc(path: &Path, text: &str) {
    if !path.exists() {
        info!("{} does not exist: not written", path.display());
        return;
    }
    if let Err(e) = std::fs::write(path, text) {
        warn!("cannot write {text:?} to {}: {e}", path.display());
    }
}

/// `--wait-fd`: the descriptor, opened again through /proc, so no descriptor number is
/// trusted blindly. Called before privileges are dropped: a process that changed its uid is
/// not dumpable, and its /proc/self/fd then belongs to root.
fn open_wait_fd(fd: u32) -> Result<std::fs::File> {
    let path = format!("/proc/self/fd/{fd}");
    std::fs::File::open(&path).with_context(|| format!("--wait-fd {fd}: cannot open {path}"))
}

/// `--wait-fd`: blocks until a byte arrives on `f` (`true`) or its end of file (`false`).
fn wait_for_go(fd: u32, mut f: std::fs::File) -> Result<bool> {
    use std::io::Read;
    info!("waiting until statd is registered with rpcbind before notifying");
    let mut b = [0u8; 1];
    loop {
        match f.read(&mut b) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("--wait-fd {fd}: cannot read")),
        }
    }
}

/// The mon_names for the records registered under `my_name`.
fn record_names(args: &NotifyArgs, cfg: &SmNotifyConfig, my_name: &[u8]) -> Vec<String> {
    if !args.mon_names.is_empty() {
        return args.mon_names.clone();
    }
    let base = cfg
        .outgoing_addr
        .clone()
        .unwrap_or_else(|| String::from_utf8_lossy(my_name).into_owned());
    if args.no_short_name {
        vec![base]
    } else {
        default_names(&base)
    }
}

fn run(args: &NotifyArgs, cfg: &SmNotifyConfig, to_syslog: bool) -> Result<ExitCode> {
    if !run_once(args, cfg)? {
        return Ok(ExitCode::SUCCESS);
    }
    let sources = match &cfg.outgoing_addr {
        Some(name) => source_addrs(name)?,
        None => Vec::new(),
    };
    let dir = StateDir::open(&cfg.state_dir).with_context(|| {
        format!(
            "cannot use the state directory {} (pass another with -P)",
            cfg.state_dir.display()
        )
    })?;
    let retired = Retired::new(&dir, || Ok::<(), anyhow::Error>(()))?;
    info!("{} file(s) moved from sm/ to sm.bak/", retired.moved());
    if retired.is_empty() {
        info!("no one to notify; the state number stays as it is");
        if cfg.lift_grace {
            write_proc(&cfg.proc_root.nlm_end_grace(), "Y");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let announcement = retired.bump(|| announce_state(&dir, cfg), || Ok(()))?;
    let state = announcement.state();
    write_proc(&cfg.proc_root.nsm_local_state(), &state.to_string());
    info!(
        "notifying {} peer(s) of state {state}",
        announcement.peers()
    );

    if !cfg.foreground {
        // Keep stdout and stderr when there is no syslog socket: nsm-notify logs there then.
        nix::unistd::daemon(false, !to_syslog).context("cannot go into the background (use -d)")?;
    }
    // Sockets as root, then drop privileges, before any thread exists.
    let socks = bind_sources(&SourceSpec {
        addrs: sources,
        port: cfg.outgoing_port,
        device: args.bind_device.clone(),
    })?;
    let go = args
        .wait_fd
        .map(|fd| open_wait_fd(fd).map(|f| (fd, f)))
        .transpose()?;
    drop_to_owner_of_sm(dir.path())?;
    if let Some((fd, f)) = go
        && !wait_for_go(fd, f)?
    {
        info!(
            "statd stopped before it was registered with rpcbind: {} peer(s) not notified, \
             kept in sm.bak/ for its next start",
            announcement.peers()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let budget = match args.retry_seconds {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => cfg.retry_time,
    };
    let ncfg = NotifierConfig {
        policy: Policy {
            budget,
            window: args.window,
            ..Policy::default()
        },
        progress_every: cfg.foreground.then_some(Duration::from_secs(5)),
        ..NotifierConfig::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let dir = std::sync::Arc::new(dir);
    let summary = rt.block_on(announcement.send(
        dir,
        Delivery {
            names: &|r| record_names(args, cfg, r),
            source: Source::Bound(socks),
            config: ncfg,
            gate: None,
            fence: None,
        },
    ))?;
    if args.json {
        println!("{}", summary.to_json());
    }
    info!(
        "done: {} of {} peer(s) acknowledged, {} given up, in {:.1?}",
        summary.acked(),
        summary.peers.len(),
        summary.gave_up(),
        summary.elapsed
    );
    Ok(if summary.acked() == summary.peers.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

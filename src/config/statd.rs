//! nsmd's settings: rpc.statd's flags over `[statd]` and `[lockd]` of nfs.conf over the
//! defaults (`read_statd_conf()` then `getopt_long()` in `utils/statd/statd.c`).

use std::path::PathBuf;
use std::time::Duration;

use super::nfsconf::{self, NfsConf};
use super::smnotify::SmNotifyOverrides;
use super::{
    ConfigError, DEFAULT_RPCBIND_SOCKET, DEFAULT_STATE_DIR, DebugFacilities, Env, ProcRoot, Reader,
    StatdArgs, atoi, default_path, pick,
};

/// The keys of `[statd]` rpc.statd reads.
const STATD_KEYS: &[&str] = &[
    "port",
    "outgoing-port",
    "name",
    "state-directory-path",
    "ha-callout",
    "no-notify",
    "debug",
];
/// The keys of `[lockd]` rpc.statd reads.
const LOCKD_KEYS: &[&str] = &["port", "udp-port"];

/// The environment variable that acts like `-L` when it holds a positive integer.
pub const NO_NOTIFY_ENV: &str = "RPC_STATD_NO_NOTIFY";

/// Everything nsmd needs to know from its flags, nfs.conf and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatdConfig {
    /// `-F`: stay in the foreground (without it nsmd forks into the background). Unlike
    /// rpc.statd, `-F` does not make the start wait for the notification of every peer.
    pub foreground: bool,
    /// `-d`: log to stderr with every debug facility.
    pub no_syslog: bool,
    /// Debug facilities: all with `-d`, else `[statd] debug`.
    pub debug: DebugFacilities,
    /// `-p` / `[statd] port`: the listening port; `None`: a free port.
    pub port: Option<u16>,
    /// `-o` / `[statd] outgoing-port`: the source port of SM_NOTIFY at startup.
    pub outgoing_port: Option<u16>,
    /// `-n` / `[statd] name`: the name (and source address) of SM_NOTIFY at startup.
    pub name: Option<String>,
    /// `-P` / `[statd] state-directory-path`, default `/var/lib/nfs`.
    pub state_dir: PathBuf,
    /// `-H` / `[statd] ha-callout`.
    pub ha_callout: Option<PathBuf>,
    /// `-L`, `RPC_STATD_NO_NOTIFY` > 0, or `[statd] no-notify`.
    pub no_notify: bool,
    /// `-T` / `[lockd] port`: written to `nlm_tcpport`.
    pub nlm_tcp_port: Option<u16>,
    /// `-U` / `[lockd] udp-port` / else the TCP port: written to `nlm_udpport`.
    pub nlm_udp_port: Option<u16>,
    /// `--config`, default `/etc/nfs.conf`.
    pub config_file: PathBuf,
    /// `--proc-root`, default `/proc`.
    pub proc_root: ProcRoot,
    /// `--rpcbind-socket`, default `/run/rpcbind.sock`.
    pub rpcbind_socket: PathBuf,
    /// `--tcp-idle-timeout`: how long a quiet TCP connection stays open (not the local lock
    /// manager's, which always does).
    pub tcp_idle_timeout: Duration,
    /// Problems in nfs.conf and the environment that did not stop nsmd; log each one.
    pub warnings: Vec<String>,
}

/// How long a quiet TCP connection from a remote peer stays open, without
/// `--tcp-idle-timeout`.
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl StatdConfig {
    /// The /proc writes `-T`/`-U` ask for, in rpc.statd's order (TCP, then UDP).
    pub fn nlm_port_writes(&self) -> Vec<(PathBuf, u16)> {
        let mut w = Vec::new();
        if let Some(p) = self.nlm_tcp_port {
            w.push((self.proc_root.nlm_tcpport(), p));
        }
        if let Some(p) = self.nlm_udp_port {
            w.push((self.proc_root.nlm_udpport(), p));
        }
        w
    }

    /// What rpc.statd hands to sm-notify (`-d` with `-F`, `-p` from `-o`, `-v` from `-n`),
    /// plus the state directory and /proc root, which rpc.statd does not pass (sm-notify then
    /// reads `[statd] state-directory-path` itself, so `rpc.statd -P DIR` notifies from the
    /// wrong directory; nsmd's notifier uses nsmd's).
    pub fn sm_notify_overrides(&self) -> SmNotifyOverrides {
        SmNotifyOverrides {
            debug: self.foreground,
            outgoing_port: self.outgoing_port,
            outgoing_addr: self.name.clone(),
            state_dir: Some(self.state_dir.clone()),
            proc_root: Some(self.proc_root.0.clone()),
            ..SmNotifyOverrides::default()
        }
    }
}

/// Reads nfs.conf (`--config`, default `/etc/nfs.conf`, and its drop-ins) and resolves.
pub fn load(args: &StatdArgs) -> Result<StatdConfig, ConfigError> {
    let path = default_path(args.config.as_deref(), nfsconf::DEFAULT_PATH);
    let conf = NfsConf::load(&path)?;
    resolve(args, &conf)
}

/// Applies the flags over `conf` over the defaults, with the process environment.
/// The result's warnings start with `conf`'s own.
pub fn resolve(args: &StatdArgs, conf: &NfsConf) -> Result<StatdConfig, ConfigError> {
    resolve_with_env(args, conf, &|name| std::env::var(name).ok())
}

/// [`resolve`] with `env` in place of the process environment.
pub fn resolve_with_env(
    args: &StatdArgs,
    conf: &NfsConf,
    env: Env<'_>,
) -> Result<StatdConfig, ConfigError> {
    if args.notify_mode {
        return Err(ConfigError::NotifyMode);
    }
    let mut r = Reader::new(conf);
    let config_file = default_path(args.config.as_deref(), nfsconf::DEFAULT_PATH);
    if args.config.is_some() && !conf.files().iter().any(|f| f == &config_file) {
        r.warnings.push(format!(
            "{}: does not exist: no settings from it",
            config_file.display()
        ));
    }

    // Every key is read (and checked) even when a flag overrides it.
    let file_debug = r.debug("statd");
    let debug = if args.no_syslog {
        DebugFacilities::ALL
    } else {
        file_debug
    };

    let some = |f: Option<(u16, nfsconf::Origin)>| f.map(|(v, o)| (Some(v), o));
    let (port, port_from) = pick(
        args.port.map(Some),
        "-p/--port",
        some(r.port("statd", "port")),
        None,
    );
    let (outgoing_port, outgoing_from) = pick(
        args.outgoing_port.map(Some),
        "-o/--outgoing-port",
        some(r.port("statd", "outgoing-port")),
        None,
    );
    if let Some(p) = port.filter(|&p| Some(p) == outgoing_port) {
        return Err(ConfigError::SamePorts {
            port: p,
            listen_from: port_from.to_string(),
            outgoing_from: outgoing_from.to_string(),
        });
    }

    let (name, _) = pick(
        args.name.clone().map(Some),
        "-n/--name",
        r.str("statd", "name").map(|(v, o)| (Some(v), o)),
        None,
    );
    let (state_dir, _) = pick(
        args.state_dir.clone(),
        "-P/--state-directory-path",
        r.path("statd", "state-directory-path"),
        PathBuf::from(DEFAULT_STATE_DIR),
    );
    let (ha_callout, _) = pick(
        args.ha_callout.clone().map(Some),
        "-H/--ha-callout",
        r.path("statd", "ha-callout").map(|(v, o)| (Some(v), o)),
        None,
    );

    // rpc.statd ORs the three: the environment, nfs.conf, then -L can only turn it on.
    let env_no_notify = match env(NO_NOTIFY_ENV) {
        None => false,
        Some(v) => {
            let (n, clean) = atoi(&v);
            if !clean {
                r.warnings.push(format!(
                    "{NO_NOTIFY_ENV}={v:?} is not an integer: read as {n} (as rpc.statd reads \
                     it); a positive integer acts like -L"
                ));
            }
            n > 0
        }
    };
    let file_no_notify = r.bool("statd", "no-notify", false).is_some_and(|(b, _)| b);
    let no_notify = args.no_notify || env_no_notify || file_no_notify;

    // lockd's ports. rpc.statd lets -T set the UDP port only when nothing set it yet, and
    // `[lockd] port` has already set it then; nsmd makes UDP follow the *resolved* TCP port:
    // -U, else [lockd] udp-port, else the TCP port (-T, else [lockd] port).
    let (nlm_tcp_port, _) = pick(
        args.nlm_port.map(Some),
        "-T/--nlm-port",
        some(r.port("lockd", "port")),
        None,
    );
    let (nlm_udp_port, _) = pick(
        args.nlm_udp_port.map(Some),
        "-U/--nlm-udp-port",
        some(r.port("lockd", "udp-port")),
        nlm_tcp_port,
    );

    r.unknown_keys("statd", STATD_KEYS, "rpc.statd and nsmd read");
    r.unknown_keys("lockd", LOCKD_KEYS, "rpc.statd and nsmd read");

    Ok(StatdConfig {
        foreground: args.foreground,
        no_syslog: args.no_syslog,
        debug,
        port,
        outgoing_port,
        name,
        state_dir,
        ha_callout,
        no_notify,
        nlm_tcp_port,
        nlm_udp_port,
        config_file,
        proc_root: ProcRoot(
            args.proc_root
                .clone()
                .unwrap_or_else(|| ProcRoot::default().0),
        ),
        rpcbind_socket: default_path(args.rpcbind_socket.as_deref(), DEFAULT_RPCBIND_SOCKET),
        tcp_idle_timeout: args.tcp_idle_timeout.unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT),
        warnings: r.warnings,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn conf(text: &str) -> NfsConf {
        NfsConf::parse_str(text, Path::new("/etc/nfs.conf"), &|_| None).unwrap()
    }

    #[test]
    fn defaults() {
        let c = resolve_with_env(&StatdArgs::default(), &NfsConf::empty(), &|_| None).unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/nfs"));
        assert_eq!(c.config_file, Path::new("/etc/nfs.conf"));
        assert_eq!(c.proc_root.0, Path::new("/proc"));
        assert_eq!(c.rpcbind_socket, Path::new("/run/rpcbind.sock"));
        assert_eq!(c.port, None);
        assert!(!c.no_notify && !c.foreground && !c.debug.any());
        assert!(c.warnings.is_empty());
        assert!(c.nlm_port_writes().is_empty());
    }

    #[test]
    fn nlm_writes_and_notify_overrides() {
        let args = StatdArgs {
            nlm_port: Some(4001),
            foreground: true,
            outgoing_port: Some(999),
            name: Some("svc".into()),
            proc_root: Some("/tmp/p".into()),
            ..StatdArgs::default()
        };
        let c = resolve_with_env(&args, &NfsConf::empty(), &|_| None).unwrap();
        assert_eq!(
            c.nlm_port_writes(),
            [
                (PathBuf::from("/tmp/p/sys/fs/nfs/nlm_tcpport"), 4001),
                (PathBuf::from("/tmp/p/sys/fs/nfs/nlm_udpport"), 4001)
            ]
        );
        let o = c.sm_notify_overrides();
        assert!(o.debug);
        assert_eq!(o.outgoing_port, Some(999));
        assert_eq!(o.outgoing_addr.as_deref(), Some("svc"));
        assert_eq!(o.state_dir.as_deref(), Some(Path::new("/var/lib/nfs")));
    }

    #[test]
    fn unknown_keys_warn_once() {
        let c = resolve_with_env(
            &StatdArgs::default(),
            &conf("[statd]\nprot = 1\nPROT = 2\n[lockd]\ngrace = 3\n[statd \"x\"]\nodd = 1\n"),
            &|_| None,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("/etc/nfs.conf:3: [statd] PROT: unknown key"));
        assert!(c.warnings[1].starts_with("/etc/nfs.conf:5: [lockd] grace: unknown key"));
    }
}

//! The `nsmd` command line: every option of rpc.statd 2.6.2 (`utils/statd/statd.c`, short
//! options `h?vVFNH:dn:p:o:P:LT:U:` and its long names), plus a few nsmd-only long options.
//!
//! Flags are kept as given (`None`/`false` when absent) so that [`super::resolve`] can apply
//! "flag beats nfs.conf beats default".

// The doc comments of `StatdArgs` are its --help text, where `[statd]` is a section name, not
// a link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;

use clap::{ArgAction, Parser};

/// Parses a port for `-p`, `-o`, `-T` and `-U`: 1..=65535, as rpc.statd accepts (which reads
/// it with `atoi`, so nsmd is stricter about trailing garbage).
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u64>() {
        Ok(n @ 1..=65535) => Ok(u16::try_from(n).map_err(|e| e.to_string())?),
        Ok(_) => Err("port out of range: expected 1..=65535".to_owned()),
        Err(_) => Err("not a port number: expected an integer in 1..=65535".to_owned()),
    }
}

/// Parses `--tcp-idle-timeout`: whole seconds in 1..=86400.
pub fn parse_idle_timeout(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<u64>() {
        Ok(n @ 1..=86_400) => Ok(std::time::Duration::from_secs(n)),
        _ => Err("expected a whole number of seconds in 1..=86400".to_owned()),
    }
}

/// A userspace NSM (rpc.statd) for Linux NFS.
///
/// Takes rpc.statd's options. Settings come from the flags, then from nfs.conf (sections
/// [statd] and [lockd], as rpc.statd reads them), then from the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Parser)]
#[command(
    name = "nsmd",
    version,
    disable_version_flag = true,
    disable_help_flag = true,
    after_help = "nfs.conf: [statd] port, outgoing-port, name, state-directory-path, \
                  ha-callout, no-notify, debug; [lockd] port, udp-port. The environment \
                  variable RPC_STATD_NO_NOTIFY=1 (a positive integer) acts like -L."
)]
pub struct StatdArgs {
    /// Stay in the foreground and log to stderr. Without -F nsmd forks into the background at
    /// start and logs to syslog (/dev/log, facility daemon; stderr if there is no syslog).
    #[arg(short = 'F', long = "foreground")]
    pub foreground: bool,

    /// Log with debug detail. Logs go to stderr with -F, to syslog without; at info level
    /// unless -d or [statd] debug asks for more. (--no-syslog is rpc.statd's long name for -d,
    /// kept so its command lines work: there it sends logs to stderr, which -F does here.)
    #[arg(short = 'd', long = "no-syslog")]
    pub no_syslog: bool,

    /// Listen on PORT (UDP and TCP, IPv4 and IPv6) instead of a free port chosen at start.
    /// [nfs.conf: statd.port]
    #[arg(short = 'p', long = "port", value_name = "PORT", value_parser = parse_port)]
    pub port: Option<u16>,

    /// Source port of the SM_NOTIFY messages sent at startup (rpc.statd passes it to
    /// sm-notify); must differ from -p. nsmd passes it to nsm-notify as -p.
    /// [nfs.conf: statd.outgoing-port]
    #[arg(
        short = 'o',
        long = "outgoing-port",
        value_name = "PORT",
        value_parser = parse_port
    )]
    pub outgoing_port: Option<u16>,

    /// The host name the SM_NOTIFY messages sent at startup carry, and the address they are
    /// sent from (rpc.statd passes it to sm-notify as -v); nsmd passes it to nsm-notify as -v.
    /// [nfs.conf: statd.name]
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,

    /// State directory (monitor records in sm/ and sm.bak/, the state number in state);
    /// created if missing. [default: /var/lib/nfs] [nfs.conf: statd.state-directory-path]
    #[arg(short = 'P', long = "state-directory-path", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Refused. rpc.statd treats -N as a deprecated way to run sm-notify (it prints a warning
    /// and executes sm-notify instead of starting); run nsm-notify (or sm-notify) instead.
    #[arg(short = 'N', long = "notify-mode")]
    pub notify_mode: bool,

    /// High-availability callout: run PROG add-client|del-client|sm-notify ... as monitored
    /// peers come and go and SM_NOTIFY arrives; run without a shell, off the request path,
    /// one event at a time. [nfs.conf: statd.ha-callout]
    #[arg(short = 'H', long = "ha-callout", value_name = "PROG")]
    pub ha_callout: Option<PathBuf>,

    /// Do not notify peers at startup. Without -L, nsmd runs nsm-notify (next to nsmd) first,
    /// as rpc.statd runs sm-notify: it moves sm/ to sm.bak/, bumps the state, and notifies in
    /// the background. [nfs.conf: statd.no-notify; environment: RPC_STATD_NO_NOTIFY]
    #[arg(short = 'L', long = "no-notify")]
    pub no_notify: bool,

    /// lockd's TCP port, to be written to /proc/sys/fs/nfs/nlm_tcpport (and nlm_udpport unless
    /// -U or [lockd] udp-port is set) at start, if lockd is loaded. [nfs.conf: lockd.port]
    #[arg(short = 'T', long = "nlm-port", value_name = "PORT", value_parser = parse_port)]
    pub nlm_port: Option<u16>,

    /// lockd's UDP port, written to /proc/sys/fs/nfs/nlm_udpport at start, if lockd is loaded.
    /// [nfs.conf: lockd.udp-port]
    #[arg(
        short = 'U',
        long = "nlm-udp-port",
        value_name = "PORT",
        value_parser = parse_port
    )]
    pub nlm_udp_port: Option<u16>,

    /// Read this nfs.conf, then the drop-ins FILE.d/*.conf. A missing file means no
    /// configuration. [default: /etc/nfs.conf]
    #[arg(
        long = "config",
        value_name = "FILE",
        help_heading = "nsmd-only options"
    )]
    pub config: Option<PathBuf>,

    /// Prefix of every /proc path nsmd reads or writes (nsm_local_state, nlm_tcpport,
    /// nlm_udpport, nlm_end_grace, nfsd's unlock_ip and unlock_filesystem); for tests.
    /// [default: /proc]
    #[arg(
        long = "proc-root",
        value_name = "DIR",
        help_heading = "nsmd-only options"
    )]
    pub proc_root: Option<PathBuf>,

    /// The local rpcbind's AF_LOCAL socket, used to register and unregister when it exists
    /// (otherwise rpcbind at 127.0.0.1 port 111). [default: /run/rpcbind.sock]
    #[arg(
        long = "rpcbind-socket",
        value_name = "PATH",
        help_heading = "nsmd-only options"
    )]
    pub rpcbind_socket: Option<PathBuf>,

    /// Serve the service instances described by DIR/*.toml (one file per instance; see
    /// the README), beside the node instance.
    #[arg(
        long = "instances",
        value_name = "DIR",
        help_heading = "nsmd-only options"
    )]
    pub instances: Option<PathBuf>,

    /// The nsmctl control socket (root only), removed at exit. Without this option and
    /// without --instances, a default socket that cannot be made (not root) is only logged.
    /// [default: /run/nsmd/nsmctl.sock]
    #[arg(
        long = "control-socket",
        value_name = "PATH",
        help_heading = "nsmd-only options"
    )]
    pub control_socket: Option<PathBuf>,

    /// Print the version and exit.
    /// Close a TCP connection after SECONDS without a request (default 120). The local
    /// lock manager's connection (lockd, NFS-Ganesha: loopback, privileged port) is never
    /// closed for being quiet.
    #[arg(
        long = "tcp-idle-timeout",
        value_name = "SECONDS",
        value_parser = parse_idle_timeout,
        help_heading = "nsmd-only options"
    )]
    pub tcp_idle_timeout: Option<std::time::Duration>,

    #[arg(short = 'v', short_alias = 'V', long = "version", action = ArgAction::Version)]
    pub version: Option<bool>,

    /// Print this help and exit.
    #[arg(short = 'h', short_alias = '?', long = "help", action = ArgAction::HelpLong)]
    pub help: Option<bool>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::StatdArgs::command().debug_assert();
    }
}

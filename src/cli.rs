//! The command lines of `nsm-notify` and `nsmctl` (nsmd's own is [`crate::config::cli`]). They
//! live in the library so that the man page and shell completion generator (`crates/xtask`)
//! reads the same clap definitions the binaries parse.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::cli::parse_port;

/// Tell every host in the notify list (sm.bak/) that this host restarted.
///
/// Settings come from the flags, then from nfs.conf ([sm-notify] retry-time, outgoing-port,
/// outgoing-addr, lift-grace, update-state, force, debug; `[statd]` state-directory-path),
/// then from sm-notify's defaults.
#[derive(Debug, Parser)]
#[command(name = "nsm-notify", version, disable_version_flag = true)]
pub struct NotifyArgs {
    /// Stay in the foreground and log with debug detail (and progress) to stderr. Without -d,
    /// nsm-notify goes into the background once the state is bumped and logs to syslog
    /// (/dev/log; stderr if there is no syslog).
    #[arg(short = 'd')]
    pub debug: bool,
    /// Run even if the run-once lock (/run/sm-notify.pid) exists.
    #[arg(short = 'f')]
    pub force: bool,
    /// Keep retrying for MINUTES (default 15); 0 retries forever. [sm-notify.retry-time]
    #[arg(short = 'm', value_name = "MINUTES")]
    pub retry_minutes: Option<u32>,
    /// Do not bump the state number (also skips the run-once check). [sm-notify.update-state]
    #[arg(short = 'n')]
    pub no_update: bool,
    /// Send from this port instead of a privileged one. [sm-notify.outgoing-port]
    #[arg(short = 'p', value_name = "PORT", value_parser = parse_port)]
    pub port: Option<u16>,
    /// Send from the address(es) NAME resolves to, with NAME as mon_name (sent as given,
    /// also when it is an address). [sm-notify.outgoing-addr]
    #[arg(short = 'v', value_name = "NAME")]
    pub name: Option<String>,
    /// The state directory (default /var/lib/nfs). [statd.state-directory-path]
    #[arg(short = 'P', value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Print the version (sm-notify has no version option; -v is its outgoing name).
    #[arg(long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,

    /// Read this nfs.conf (and its .d directory) instead of /etc/nfs.conf.
    #[arg(
        help_heading = "Options sm-notify does not have",
        long = "config",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// The root of the /proc files written (nsm_local_state, nlm_end_grace).
    #[arg(
        help_heading = "Options sm-notify does not have",
        long = "proc-root",
        value_name = "DIR"
    )]
    pub proc_root: Option<PathBuf>,
    /// The run-once lock file. sm-notify checks /run/sm-notify.pid only with the
    /// default state directory; a lock file given here is checked whatever the directory.
    #[arg(
        help_heading = "Options sm-notify does not have",
        long = "pid-file",
        value_name = "FILE"
    )]
    pub pid_file: Option<PathBuf>,
    /// The mon_names to send, in order (repeat the option); replaces the default
    /// (the -v name or each record's my_name, then its short name).
    #[arg(
        help_heading = "Options sm-notify does not have",
        long = "mon-name",
        value_name = "NAME"
    )]
    pub mon_names: Vec<String>,
    /// Do not send the short name after a name with a dot.
    #[arg(
        help_heading = "Options sm-notify does not have",
        long = "no-short-name"
    )]
    pub no_short_name: bool,
    /// Send only through this interface (SO_BINDTODEVICE).
    #[arg(
        help_heading = "Options sm-notify does not have",
        long = "bind-device",
        value_name = "IFACE"
    )]
    pub bind_device: Option<String>,
    /// How many peers are tried for the first time at once.
    #[arg(help_heading = "Options sm-notify does not have", long = "window", value_name = "N", default_value_t = nsm_notify::DEFAULT_WINDOW)]
    pub window: usize,
    /// Print a JSON summary of every peer's outcome to stdout at the end.
    #[arg(help_heading = "Options sm-notify does not have", long = "json")]
    pub json: bool,
    /// Before the first SM_NOTIFY (after the state bump), wait until a byte can be read from
    /// file descriptor FD; if FD reaches end of file first, send nothing and leave the peers
    /// in sm.bak/. nsmd passes a pipe here and writes to it once it is registered with
    /// rpcbind and answering, so that no peer reclaims before lockd can find statd.
    #[arg(
        help_heading = "Options sm-notify does not have",
        long = "wait-fd",
        value_name = "FD"
    )]
    pub wait_fd: Option<u32>,
    /// For tests: the retry budget in seconds (overrides -m; 0 retries forever).
    #[arg(
        help_heading = "Options sm-notify does not have",
        long = "retry-seconds",
        value_name = "SECONDS",
        hide = true
    )]
    pub retry_seconds: Option<u64>,
}

/// The exit statuses of `nsmctl state NAME`, for scripts (the Pacemaker agent branches on
/// them).
pub const STATE_HELP: &str = "\
Exit status of `nsmctl state NAME`:
  0  active: nsmd serves NAME on this node
  1  error: no such instance, unreadable instance file, unexpected reply
  2  usage error
  3  inactive: NAME is not served here and this node holds nothing of it
  4  fenced: NAME was served here until another node took it over (a newer
     epoch), or nsmd restarted and could not resume it; nothing is answered or
     sent for it, its kernel locks may be held here: `nsmctl release NAME`
  5  half taken over: nsmd runs but does not serve NAME, and this node took NAME
     over without releasing it (a takeover under way or cut short):
     `nsmctl release --offline NAME`
  6  unreachable, held: nsmd does not answer on the control socket and this
     node took NAME over without releasing it (nsmd died while serving it):
     its kernel locks may still be held here: `nsmctl release --offline NAME`
  7  unreachable: nsmd does not answer and this node holds nothing of NAME

A node holds NAME from its takeover until a release wrote NAME's kernel lock
release (unlock_ip, unlock_filesystem): nsmd keeps instances/NAME.active beside
the control socket (/run: a reboot forgets it, as the kernel its locks).";

/// Control a running nsmd (its service instances: takeover, release, notify). Needs root
/// (or nsmd's own user): the control socket is theirs only.
#[derive(Debug, Parser)]
#[command(name = "nsmctl", version, after_help = STATE_HELP)]
pub struct CtlArgs {
    /// nsmd's control socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/nsmd/nsmctl.sock",
        global = true
    )]
    pub control_socket: PathBuf,
    /// Print nsmd's JSON reply instead of a table; errors too, as
    /// {"ok":false,"error":...,"kind":...} (kind: a word for scripts, e.g. fenced, busy,
    /// not-active, no-such-instance, readiness, kernel-release, nsmctl).
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for nsmd, in seconds (a takeover waits for the readiness gate). When
    /// it runs out, nsmd goes on with the command: `nsmctl status` shows where it is.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, global = true)]
    pub timeout: u64,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

/// The `nsmctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCmd {
    /// Every instance and its state.
    Status,
    /// Take NAME over on this node.
    Takeover {
        /// The instance.
        name: String,
        /// The cluster manager decided (CTDB's takeip): take NAME over even while another
        /// node's nsmd holds its ownership lock. That node is fenced by the epoch: it stops
        /// answering and notifying for NAME within a second.
        #[arg(long)]
        force: bool,
    },
    /// Release NAME from this node.
    Release {
        /// Without nsmd (it died, or does not serve NAME): write NAME's kernel lock release
        /// (unlock_ip, unlock_filesystem) from its instance file and forget that this node
        /// holds it. Refused while a process on this node holds NAME's ownership lock.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        files: CtlFiles,
        /// The instance.
        name: String,
    },
    /// NAME on this node, as the exit status (see below); one line for people.
    State {
        #[command(flatten)]
        files: CtlFiles,
        /// The instance.
        name: String,
    },
    /// Notify NAME's peers (sm.bak/) again.
    Notify {
        /// The instance.
        name: String,
    },
    /// Counters and gauges of every instance, as OpenMetrics text (for node_exporter's
    /// textfile collector or any OpenMetrics scraper).
    Metrics,
    /// The peers NAME monitors.
    Peers {
        /// The instance ("node" for the node instance).
        name: String,
    },
}

/// Where `state` and `release --offline` find what nsmd is not there to say.
#[derive(Debug, clap::Args)]
pub struct CtlFiles {
    /// nsmd's instance directory (its --instances).
    #[arg(long, value_name = "DIR", default_value = "/etc/nsmd/instances.d")]
    pub instances: PathBuf,
    /// Prefix of the kernel's files (fs/nfsd/unlock_ip, fs/nfsd/unlock_filesystem), as
    /// nsmd's --proc-root; for tests.
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_lines_are_well_formed() {
        super::NotifyArgs::command().debug_assert();
        super::CtlArgs::command().debug_assert();
    }
}

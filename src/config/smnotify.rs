//! The notifier's settings: sm-notify's flags (or what nsmd hands over, see
//! [`super::StatdConfig::sm_notify_overrides`]) over `[sm-notify]` (and `[statd]
//! state-directory-path`) of nfs.conf over the defaults (`utils/statd/sm-notify.c`).

use std::path::PathBuf;
use std::time::Duration;

use super::{DEFAULT_STATE_DIR, DebugFacilities, NfsConf, ProcRoot, Reader, pick};

/// The keys of `[sm-notify]` sm-notify reads (`update-state` and `force` are undocumented).
const SM_NOTIFY_KEYS: &[&str] = &[
    "retry-time",
    "outgoing-port",
    "outgoing-addr",
    "lift-grace",
    "update-state",
    "force",
    "debug",
];

/// sm-notify's default retry budget, in minutes.
pub const DEFAULT_RETRY_MINUTES: u32 = 15;

/// The notifier's flags, as sm-notify takes them (`getopt("dm:np:v:P:f")`, no long options);
/// `None`/`false` when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmNotifyOverrides {
    /// `-d`: stay in the foreground and log every debug facility to stderr.
    pub debug: bool,
    /// `-f`: run even if the run-once lock exists.
    pub force: bool,
    /// `-m MINUTES`: retry budget; 0 retries forever.
    pub retry_minutes: Option<u32>,
    /// `-n`: do not bump the state number.
    pub no_update_state: bool,
    /// `-p PORT`: source port.
    pub outgoing_port: Option<u16>,
    /// `-v NAME`: source address and mon_name.
    pub outgoing_addr: Option<String>,
    /// `-P DIR`: state directory.
    pub state_dir: Option<PathBuf>,
    /// nsmd-only: the /proc root.
    pub proc_root: Option<PathBuf>,
}

/// Everything the notifier needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmNotifyConfig {
    /// `-d`: foreground, stderr.
    pub foreground: bool,
    /// All with `-d`, else `[sm-notify] debug`.
    pub debug: DebugFacilities,
    /// `-f` or `[sm-notify] force` (default no).
    pub force: bool,
    /// `-m` / `[sm-notify] retry-time` (minutes, default 15); `None`: retry forever (0).
    pub retry_time: Option<Duration>,
    /// Not `-n`, else `[sm-notify] update-state` (default yes).
    pub update_state: bool,
    /// `[sm-notify] lift-grace` (default yes): write `nlm_end_grace` when there is no one to
    /// notify.
    pub lift_grace: bool,
    /// `-p` / `[sm-notify] outgoing-port`; `None`: a privileged port.
    pub outgoing_port: Option<u16>,
    /// `-v` / `[sm-notify] outgoing-addr`.
    pub outgoing_addr: Option<String>,
    /// `-P` / `[statd] state-directory-path`, default `/var/lib/nfs`.
    pub state_dir: PathBuf,
    /// The /proc root.
    pub proc_root: ProcRoot,
    /// Problems in nfs.conf that did not stop the notifier; log each one.
    pub warnings: Vec<String>,
}

/// Applies `flags` over `conf` over sm-notify's defaults. The result's warnings start with
/// `conf`'s own.
pub fn resolve_sm_notify(flags: &SmNotifyOverrides, conf: &NfsConf) -> SmNotifyConfig {
    let mut r = Reader::new(conf);

    let file_debug = r.debug("sm-notify");
    let debug = if flags.debug {
        DebugFacilities::ALL
    } else {
        file_debug
    };

    let file_retry = r
        .int("sm-notify", "retry-time")
        .and_then(|(n, o)| match u32::try_from(n) {
            Ok(m) => Some((m, o)),
            Err(_) => {
                r.warnings.push(format!(
                    "{o}: [sm-notify] retry-time = {n} is not a number of minutes (0 retries \
                     forever): using the default ({DEFAULT_RETRY_MINUTES})"
                ));
                None
            }
        });
    let (minutes, _) = pick(flags.retry_minutes, "-m", file_retry, DEFAULT_RETRY_MINUTES);
    let retry_time = (minutes > 0).then(|| Duration::from_secs(u64::from(minutes) * 60));

    let file_force = r.bool("sm-notify", "force", false).is_some_and(|(b, _)| b);
    let (update_state, _) = pick(
        flags.no_update_state.then_some(false),
        "-n",
        r.bool("sm-notify", "update-state", true),
        true,
    );
    let (lift_grace, _) = pick(None, "", r.bool("sm-notify", "lift-grace", true), true);

    let some = |f: Option<(u16, super::nfsconf::Origin)>| f.map(|(v, o)| (Some(v), o));
    let (outgoing_port, _) = pick(
        flags.outgoing_port.map(Some),
        "-p",
        some(r.port("sm-notify", "outgoing-port")),
        None,
    );
    let (outgoing_addr, _) = pick(
        flags.outgoing_addr.clone().map(Some),
        "-v",
        r.str("sm-notify", "outgoing-addr")
            .map(|(v, o)| (Some(v), o)),
        None,
    );
    let (state_dir, _) = pick(
        flags.state_dir.clone(),
        "-P",
        r.path("statd", "state-directory-path"),
        PathBuf::from(DEFAULT_STATE_DIR),
    );

    r.unknown_keys("sm-notify", SM_NOTIFY_KEYS, "sm-notify reads");

    SmNotifyConfig {
        foreground: flags.debug,
        debug,
        force: flags.force || file_force,
        retry_time,
        update_state,
        lift_grace,
        outgoing_port,
        outgoing_addr,
        state_dir,
        proc_root: flags
            .proc_root
            .clone()
            .map_or_else(ProcRoot::default, ProcRoot),
        warnings: r.warnings,
    }
}

//! Configuration: rpc.statd's command line ([`cli::StatdArgs`]), nfs.conf ([`nfsconf`]), and
//! the settings that result ([`StatdConfig`] for nsmd, [`SmNotifyConfig`] for the notifier).
//!
//! Precedence, as in nfs-utils: a flag beats nfs.conf, which beats the default. nfs.conf
//! values are read as nfs-utils reads them (numbers with `atoi`, booleans as
//! `conf_get_bool`), but where nfs-utils silently falls back to the default (a boolean that
//! is not one, a port that is not a number, a `$NAME` that names nothing), nsmd also records a
//! warning naming the file, line, section and key. Unknown keys in the sections nsmd reads are
//! warnings too, never fatal. The binary logs [`StatdConfig::warnings`].

pub mod cli;
pub mod instances;
pub mod nfsconf;
mod smnotify;
mod statd;
mod versionsort;

use std::fmt;
use std::path::{Path, PathBuf};

pub use cli::StatdArgs;
pub use nfsconf::{NfsConf, NfsConfError};
pub use smnotify::{DEFAULT_RETRY_MINUTES, SmNotifyConfig, SmNotifyOverrides, resolve_sm_notify};
pub use statd::{NO_NOTIFY_ENV, StatdConfig, load, resolve, resolve_with_env};

use nfsconf::Origin;

/// The default state directory (nfs-utils' `NSM_DEFAULT_STATEDIR` on Debian).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/nfs";
/// The default root of the /proc paths.
pub const DEFAULT_PROC_ROOT: &str = "/proc";
/// The default rpcbind AF_LOCAL socket.
pub const DEFAULT_RPCBIND_SOCKET: &str = "/run/rpcbind.sock";

/// Why nsmd cannot start with this configuration.
#[derive(Debug)]
pub enum ConfigError {
    /// nfs.conf (or an include or drop-in) cannot be read.
    NfsConf(NfsConfError),
    /// `-N` was given: rpc.statd's deprecated notify-only mode, which nsmd does not offer.
    NotifyMode,
    /// The listening port and the outgoing (notify) port are the same (rpc.statd refuses
    /// this too).
    SamePorts {
        /// The port.
        port: u16,
        /// Where the listening port came from.
        listen_from: String,
        /// Where the outgoing port came from.
        outgoing_from: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NfsConf(e) => write!(f, "nfs.conf: {e}"),
            Self::NotifyMode => f.write_str(
                "-N (--notify-mode) is not supported: rpc.statd treats it as a deprecated way \
                 to run sm-notify. Run nsm-notify (or sm-notify) directly",
            ),
            Self::SamePorts {
                port,
                listen_from,
                outgoing_from,
            } => write!(
                f,
                "listening and outgoing ports cannot be the same: port {port} (listening port \
                 from {listen_from}, outgoing port from {outgoing_from})"
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NfsConf(e) => Some(e),
            _ => None,
        }
    }
}

impl From<NfsConfError> for ConfigError {
    fn from(e: NfsConfError) -> Self {
        Self::NfsConf(e)
    }
}

/// The debug facilities of nfs-utils' `xlog` (`[statd] debug = general,call`, `-d` = all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebugFacilities {
    /// `general`.
    pub general: bool,
    /// `call`.
    pub call: bool,
    /// `auth`.
    pub auth: bool,
    /// `parse`.
    pub parse: bool,
}

impl DebugFacilities {
    /// Every facility (`all`, `1`, or `-d`).
    pub const ALL: Self = Self {
        general: true,
        call: true,
        auth: true,
        parse: true,
    };

    /// Whether any facility is on.
    pub fn any(self) -> bool {
        self.general || self.call || self.auth || self.parse
    }

    /// Parses a comma-separated list as `xlog_set_debug()` does: blanks around items and
    /// empty items are ignored, names compare case-insensitively, `0` adds nothing, `1` and
    /// `all` add everything. Returns the facilities and the items that are not facilities.
    pub fn parse_list(list: &str) -> (Self, Vec<String>) {
        let mut d = Self::default();
        let mut bad = Vec::new();
        for item in list.split(',') {
            let item = item.trim_matches(|c: char| c.is_ascii_whitespace());
            match item.to_ascii_lowercase().as_str() {
                "" | "0" => {}
                "general" => d.general = true,
                "call" => d.call = true,
                "auth" => d.auth = true,
                "parse" => d.parse = true,
                "all" | "1" => d = Self::ALL,
                _ => bad.push(item.to_owned()),
            }
        }
        (d, bad)
    }
}

/// The /proc files nsmd and its notifier touch, under a root that tests can move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRoot(pub PathBuf);

impl Default for ProcRoot {
    fn default() -> Self {
        Self(PathBuf::from(DEFAULT_PROC_ROOT))
    }
}

impl ProcRoot {
    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    /// `sys/fs/nfs/nsm_local_state`: the local state number, for lockd.
    pub fn nsm_local_state(&self) -> PathBuf {
        self.join("sys/fs/nfs/nsm_local_state")
    }
    /// `sys/fs/nfs/nlm_tcpport`: lockd's TCP port (`-T`).
    pub fn nlm_tcpport(&self) -> PathBuf {
        self.join("sys/fs/nfs/nlm_tcpport")
    }
    /// `sys/fs/nfs/nlm_udpport`: lockd's UDP port (`-U`).
    pub fn nlm_udpport(&self) -> PathBuf {
        self.join("sys/fs/nfs/nlm_udpport")
    }
    /// `fs/lockd/nlm_end_grace`: ends lockd's grace period (the notifier's lift-grace).
    pub fn nlm_end_grace(&self) -> PathBuf {
        self.join("fs/lockd/nlm_end_grace")
    }
    /// `fs/nfsd/unlock_ip`: releases the locks held through one server address.
    pub fn nfsd_unlock_ip(&self) -> PathBuf {
        self.join("fs/nfsd/unlock_ip")
    }
    /// `fs/nfsd/unlock_filesystem`: releases the locks held on one file system.
    pub fn nfsd_unlock_filesystem(&self) -> PathBuf {
        self.join("fs/nfsd/unlock_filesystem")
    }
}

/// `conf_get_bool()`'s words: case-insensitive 1/t/true/y/yes/on and 0/f/false/n/no/off.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "y" | "yes" | "on" => Some(true),
        "0" | "f" | "false" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// C's `atoi` (saturating instead of undefined on overflow): leading white space, an
/// optional sign, then digits up to the first non-digit; 0 when there are none. Also says
/// whether the whole string was that number (ignoring surrounding white space).
pub fn atoi(s: &str) -> (i64, bool) {
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let len = digits.bytes().take_while(u8::is_ascii_digit).count();
    let mut n: i64 = 0;
    for b in digits.bytes().take(len) {
        n = n.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    let clean = len > 0 && digits[len..].trim().is_empty();
    (if neg { -n } else { n }, clean)
}

/// Where a setting came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Flag(&'static str),
    File(Origin),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(flag) => write!(f, "{flag}"),
            Self::File(o) => write!(f, "{o}"),
            Self::Default => f.write_str("the default"),
        }
    }
}

/// The precedence rule: the flag if given, else the file's value if set, else the default.
fn pick<T>(
    flag: Option<T>,
    flag_name: &'static str,
    file: Option<(T, Origin)>,
    default: T,
) -> (T, Source) {
    match (flag, file) {
        (Some(v), _) => (v, Source::Flag(flag_name)),
        (None, Some((v, o))) => (v, Source::File(o)),
        (None, None) => (default, Source::Default),
    }
}

/// Reads typed values out of nfs.conf, collecting warnings.
struct Reader<'a> {
    conf: &'a NfsConf,
    warnings: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(conf: &'a NfsConf) -> Self {
        Self {
            conf,
            warnings: conf.warnings().iter().map(ToString::to_string).collect(),
        }
    }

    /// The expanded string, or `None` (with a warning when a `$NAME` names nothing).
    fn str(&mut self, section: &str, key: &str) -> Option<(String, Origin)> {
        let s = self.conf.get(section, key)?;
        match &s.value {
            Ok(v) => Some((v.clone(), s.origin.clone())),
            Err(e) => {
                self.warnings.push(format!(
                    "{}: [{section}] {key} = {}: {e}; treated as unset (as nfs-utils does)",
                    s.origin, s.raw
                ));
                None
            }
        }
    }

    fn path(&mut self, section: &str, key: &str) -> Option<(PathBuf, Origin)> {
        self.str(section, key).map(|(v, o)| (PathBuf::from(v), o))
    }

    fn bool(&mut self, section: &str, key: &str, default: bool) -> Option<(bool, Origin)> {
        let (v, o) = self.str(section, key)?;
        match parse_bool(&v) {
            Some(b) => Some((b, o)),
            None => {
                self.warnings.push(format!(
                    "{o}: [{section}] {key} = {v:?} is not a boolean (1/t/true/y/yes/on or \
                     0/f/false/n/no/off, any case): using the default ({})",
                    if default { "yes" } else { "no" }
                ));
                None
            }
        }
    }

    /// An integer read with `atoi`, as nfs-utils does; warns when the text is not exactly a
    /// number.
    fn int(&mut self, section: &str, key: &str) -> Option<(i64, Origin)> {
        let (v, o) = self.str(section, key)?;
        let (n, clean) = atoi(&v);
        if !clean {
            self.warnings.push(format!(
                "{o}: [{section}] {key} = {v:?} is not a number: read as {n} (as nfs-utils \
                 reads it)"
            ));
        }
        Some((n, o))
    }

    /// A port: 0 means unset (as in nfs-utils); outside 1..=65535 warns and means unset.
    fn port(&mut self, section: &str, key: &str) -> Option<(u16, Origin)> {
        let (n, o) = self.int(section, key)?;
        if n == 0 {
            return None;
        }
        match u16::try_from(n) {
            Ok(p) => Some((p, o)),
            Err(_) => {
                self.warnings.push(format!(
                    "{o}: [{section}] {key} = {n} is not a port (1..=65535): ignored"
                ));
                None
            }
        }
    }

    fn debug(&mut self, section: &str) -> DebugFacilities {
        let Some((v, o)) = self.str(section, "debug") else {
            return DebugFacilities::default();
        };
        let (d, bad) = DebugFacilities::parse_list(&v);
        for b in bad {
            self.warnings.push(format!(
                "{o}: [{section}] debug: {b:?} is not a debug facility (general, call, auth, \
                 parse, all, 0, 1): ignored"
            ));
        }
        d
    }

    /// Warns once per key of `[section]` (without subsection) that is not in `known`.
    /// `readers` says who reads the known keys ("sm-notify reads").
    fn unknown_keys(&mut self, section: &str, known: &[&str], readers: &str) {
        let mut seen: Vec<String> = Vec::new();
        for s in self.conf.settings().iter().rev() {
            if s.section != section || s.subsection.is_some() {
                continue;
            }
            let lower = s.key.to_ascii_lowercase();
            if known.contains(&lower.as_str()) || seen.contains(&lower) {
                continue;
            }
            self.warnings.push(format!(
                "{}: [{section}] {}: unknown key, ignored ({readers} only {})",
                s.origin,
                s.key,
                known.join(", ")
            ));
            seen.push(lower);
        }
    }
}

/// The value of an environment variable through `env`.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn default_path(p: Option<&Path>, default: &str) -> PathBuf {
    p.map_or_else(|| PathBuf::from(default), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_as_c() {
        assert_eq!(atoi("662"), (662, true));
        assert_eq!(atoi("  -5 "), (-5, true));
        assert_eq!(atoi("+7"), (7, true));
        assert_eq!(atoi("12abc"), (12, false));
        assert_eq!(atoi("abc"), (0, false));
        assert_eq!(atoi(""), (0, false));
        assert_eq!(atoi("-"), (0, false));
        assert_eq!(atoi("99999999999999999999999").0, i64::MAX);
    }

    #[test]
    fn bools_as_nfs_utils() {
        for t in ["1", "t", "TRUE", "y", "Yes", "ON"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "F", "false", "N", "no", "Off"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for x in ["", "2", "enable", "yes please", "tru"] {
            assert_eq!(parse_bool(x), None, "{x}");
        }
    }

    #[test]
    fn debug_lists() {
        let (d, bad) = DebugFacilities::parse_list(" General , CALL,,bogus");
        assert_eq!(
            d,
            DebugFacilities {
                general: true,
                call: true,
                ..Default::default()
            }
        );
        assert_eq!(bad, ["bogus"]);
        assert_eq!(DebugFacilities::parse_list("all").0, DebugFacilities::ALL);
        assert_eq!(DebugFacilities::parse_list("1").0, DebugFacilities::ALL);
        assert!(!DebugFacilities::parse_list("0").0.any());
    }

    #[test]
    fn proc_paths() {
        let p = ProcRoot(PathBuf::from("/tmp/x"));
        assert_eq!(
            p.nsm_local_state(),
            Path::new("/tmp/x/sys/fs/nfs/nsm_local_state")
        );
        assert_eq!(p.nlm_tcpport(), Path::new("/tmp/x/sys/fs/nfs/nlm_tcpport"));
        assert_eq!(p.nlm_udpport(), Path::new("/tmp/x/sys/fs/nfs/nlm_udpport"));
        assert_eq!(
            p.nlm_end_grace(),
            Path::new("/tmp/x/fs/lockd/nlm_end_grace")
        );
        assert_eq!(p.nfsd_unlock_ip(), Path::new("/tmp/x/fs/nfsd/unlock_ip"));
        assert_eq!(
            p.nfsd_unlock_filesystem(),
            Path::new("/tmp/x/fs/nfsd/unlock_filesystem")
        );
        assert_eq!(ProcRoot::default().0, Path::new("/proc"));
    }
}

//! Service instance files (`nsmd --instances DIR`): one TOML file per service instance,
//! `DIR/NAME.toml`, the instance named after the file. Unknown keys are errors; every error
//! names the file and the key.
//!
//! ```toml
//! hostname = "nfs-svc1.example.com"      # the first mon_name sent
//! aliases = ["nfs-svc1"]                 # more names, sent after it
//! addresses = ["198.51.100.50", "2001:db8::50"]
//! interface = "eth0"                     # optional: notify only through it
//! state_dir = "/shared/svc1/nfs"         # on shared storage
//! takeover_at_start = false              # else: `nsmctl takeover svc1`
//!
//! [notify]
//! names = []                             # default: hostname, aliases, addresses
//! retry_seconds = 900                    # 0: forever
//! window = 2048
//! # port = 2050                          # default: a privileged port
//!
//! [takeover]                             # after the state bump, before notifying
//! command = ["/usr/bin/dbus-send", "--system", "--print-reply",
//!            "--dest=org.ganesha.nfsd", "/org/ganesha/nfsd/admin",
//!            "org.ganesha.nfsd.admin.grace", "string:5:198.51.100.50"]
//! timeout_seconds = 30                   # the takeover fails when it fails or takes longer
//!
//! [readiness]
//! rpcbind = [100021, 100003]             # registered on the service address
//! command = ["/usr/local/sbin/exports-ready", "svc1"]
//! timeout_seconds = 60
//!
//! [release]
//! unlock_ip = true
//! exports = ["/export/svc1"]
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nsm_statd::ServiceSpec;
use serde::Deserialize;

/// One instance file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFile {
    /// The service hostname.
    pub hostname: String,
    /// More names of the service.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The service addresses.
    pub addresses: Vec<IpAddr>,
    /// Send notifications only through this interface.
    #[serde(default)]
    pub interface: Option<String>,
    /// The state directory (on shared storage).
    pub state_dir: PathBuf,
    /// Take the instance over when nsmd starts.
    #[serde(default)]
    pub takeover_at_start: bool,
    /// `[notify]`.
    #[serde(default)]
    pub notify: NotifySection,
    /// `[takeover]`.
    #[serde(default)]
    pub takeover: TakeoverSection,
    /// `[readiness]`.
    #[serde(default)]
    pub readiness: ReadinessSection,
    /// `[release]`.
    #[serde(default)]
    pub release: ReleaseSection,
}

/// `[notify]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// The mon_names sent, in order (default: hostname, aliases, then the address literals).
    #[serde(default)]
    pub names: Vec<String>,
    /// Retry budget per peer in seconds (0: forever).
    #[serde(default = "default_retry")]
    pub retry_seconds: u64,
    /// Peers tried for the first time at once.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Source port (default: a privileged one).
    #[serde(default)]
    pub port: Option<u16>,
}

fn default_retry() -> u64 {
    900
}
fn default_window() -> usize {
    nsm_notify::DEFAULT_WINDOW
}
fn default_programs() -> Vec<u32> {
    vec![100_021, 100_003]
}
fn default_timeout() -> u64 {
    60
}
fn yes() -> bool {
    true
}

impl Default for NotifySection {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            retry_seconds: default_retry(),
            window: default_window(),
            port: None,
        }
    }
}

/// `[takeover]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeoverSection {
    /// A command run after the state bump and before the notifications (argv, no shell).
    #[serde(default)]
    pub command: Vec<String>,
    /// How long it may take, in seconds.
    #[serde(default = "default_takeover_timeout")]
    pub timeout_seconds: u64,
}

fn default_takeover_timeout() -> u64 {
    30
}

impl Default for TakeoverSection {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            timeout_seconds: default_takeover_timeout(),
        }
    }
}

/// `[readiness]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessSection {
    /// Programs that must be registered with rpcbind on the service address.
    #[serde(default = "default_programs")]
    pub rpcbind: Vec<u32>,
    /// A command that must succeed (argv).
    #[serde(default)]
    pub command: Vec<String>,
    /// How long to wait, in seconds; a takeover whose gate does not open in time fails.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

impl Default for ReadinessSection {
    fn default() -> Self {
        Self {
            rpcbind: default_programs(),
            command: Vec::new(),
            timeout_seconds: default_timeout(),
        }
    }
}

/// `[release]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSection {
    /// Write each service address to `/proc/fs/nfsd/unlock_ip`.
    #[serde(default = "yes")]
    pub unlock_ip: bool,
    /// Exports written to `/proc/fs/nfsd/unlock_filesystem`.
    #[serde(default)]
    pub exports: Vec<PathBuf>,
}

impl Default for ReleaseSection {
    fn default() -> Self {
        Self {
            unlock_ip: true,
            exports: Vec::new(),
        }
    }
}

/// Why the instance files cannot be used.
#[derive(Debug)]
pub struct InstancesError {
    /// The file (or directory).
    pub file: PathBuf,
    /// What is wrong (naming the key).
    pub message: String,
}

impl fmt::Display for InstancesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for InstancesError {}

fn err(file: &Path, message: impl Into<String>) -> InstancesError {
    InstancesError {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// Parses one instance file's text; `name` is the instance's name.
pub fn parse(file: &Path, name: &str, text: &str) -> Result<ServiceSpec, InstancesError> {
    let f: InstanceFile = toml::from_str(text).map_err(|e| err(file, e.to_string().trim_end()))?;
    if f.hostname.is_empty() {
        return Err(err(file, "key `hostname`: must not be empty"));
    }
    if f.addresses.is_empty() {
        return Err(err(file, "key `addresses`: give at least one address"));
    }
    if !f.state_dir.is_absolute() {
        return Err(err(file, "key `state_dir`: must be an absolute path"));
    }
    if f.takeover
        .command
        .first()
        .is_some_and(|p| !Path::new(p).is_absolute())
    {
        return Err(err(
            file,
            "key `takeover.command`: the program must be an absolute path (it runs without a \
             shell or PATH search)",
        ));
    }
    if f.takeover.timeout_seconds == 0 {
        return Err(err(
            file,
            "key `takeover.timeout_seconds`: must be at least 1",
        ));
    }
    if let Some(e) = f.release.exports.iter().find(|e| !e.is_absolute()) {
        return Err(err(
            file,
            format!(
                "key `release.exports`: {} is not an absolute path",
                e.display()
            ),
        ));
    }
    Ok(ServiceSpec {
        name: name.to_owned(),
        hostname: f.hostname,
        aliases: f.aliases,
        addresses: f.addresses,
        interface: f.interface,
        state_dir: f.state_dir,
        notify_names: f.notify.names,
        notify_port: f.notify.port,
        retry: (f.notify.retry_seconds > 0).then(|| Duration::from_secs(f.notify.retry_seconds)),
        window: f.notify.window.max(1),
        takeover_command: f.takeover.command,
        takeover_timeout: Duration::from_secs(f.takeover.timeout_seconds),
        ready_programs: f.readiness.rpcbind,
        ready_command: f.readiness.command,
        ready_timeout: Duration::from_secs(f.readiness.timeout_seconds),
        unlock_ip: f.release.unlock_ip,
        exports: f.release.exports,
        takeover_at_start: f.takeover_at_start,
    })
}

/// The files of `dir` that [`load_dir`] does not read (not named `*.toml`), for the log: an
/// instance file saved under another name would otherwise be ignored without a word.
pub fn ignored_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_none_or(|x| x != "toml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Reads every `*.toml` file of `dir`, in name order; checks that names, addresses and
/// state directories are not shared between instances.
pub fn load_dir(dir: &Path) -> Result<Vec<ServiceSpec>, InstancesError> {
    let rd = std::fs::read_dir(dir).map_err(|e| err(dir, format!("cannot read: {e}")))?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut out: Vec<ServiceSpec> = Vec::new();
    let mut addrs = HashSet::new();
    for p in paths {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.is_empty() || name == "node" || name.contains(char::is_whitespace) {
            return Err(err(&p, format!("{name:?} cannot be an instance name")));
        }
        let text = std::fs::read_to_string(&p).map_err(|e| err(&p, format!("cannot read: {e}")))?;
        let spec = parse(&p, &name, &text)?;
        if let Some(a) = spec.addresses.iter().find(|a| !addrs.insert(**a)) {
            return Err(err(
                &p,
                format!("key `addresses`: {a} is already an address of another instance"),
            ));
        }
        if let Some(o) = out.iter().find(|o| o.state_dir == spec.state_dir) {
            return Err(err(
                &p,
                format!(
                    "key `state_dir`: {} is already the state directory of instance {}",
                    spec.state_dir.display(),
                    o.name
                ),
            ));
        }
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FULL: &str = r#"
hostname = "nfs-svc1.example.com"
aliases = ["nfs-svc1"]
addresses = ["198.51.100.50", "2001:db8::50"]
interface = "eth0"
state_dir = "/shared/svc1/nfs"

[notify]
retry_seconds = 0
window = 8

[takeover]
command = ["/usr/bin/dbus-send", "string:5:198.51.100.50"]
timeout_seconds = 7

[readiness]
rpcbind = [100021]
command = ["/bin/true"]
timeout_seconds = 5

[release]
exports = ["/export/svc1"]
"#;

    #[test]
    fn a_full_file() {
        let s = parse(Path::new("svc1.toml"), "svc1", FULL).unwrap();
        assert_eq!(
            s.names(),
            [
                "nfs-svc1.example.com",
                "nfs-svc1",
                "198.51.100.50",
                "2001:db8::50"
            ]
        );
        assert_eq!(s.addresses.len(), 2);
        assert_eq!(s.retry, None);
        assert_eq!(s.ready_programs, [100_021]);
        assert_eq!(
            s.takeover_command,
            ["/usr/bin/dbus-send", "string:5:198.51.100.50"]
        );
        assert_eq!(s.takeover_timeout, Duration::from_secs(7));
        assert!(s.unlock_ip);
        assert_eq!(s.exports, [PathBuf::from("/export/svc1")]);
    }

    #[test]
    fn defaults() {
        let s = parse(
            Path::new("a.toml"),
            "a",
            "hostname = \"a\"\naddresses = [\"198.51.100.1\"]\nstate_dir = \"/s\"\n",
        )
        .unwrap();
        assert_eq!(s.ready_programs, [100_021, 100_003]);
        assert_eq!(s.retry, Some(Duration::from_secs(900)));
        assert!(!s.takeover_at_start);
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let e = parse(
            Path::new("/etc/nsmd/instances.d/a.toml"),
            "a",
            "hostname = \"a\"\naddresses = [\"198.51.100.1\"]\nstate_dir = \"/s\"\n[notify]\nretries = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/etc/nsmd/instances.d/a.toml: "), "{e}");
        assert!(e.contains("retries"), "{e}");
        let e = parse(
            Path::new("b.toml"),
            "b",
            "hostname = \"b\"\naddresses = [\"not-an-ip\"]\nstate_dir = \"/s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("addresses"), "{e}");
        let e = parse(
            Path::new("c.toml"),
            "c",
            "hostname = \"c\"\naddresses = [\"198.51.100.1\"]\nstate_dir = \"rel\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("state_dir"), "{e}");
    }

    #[test]
    fn shared_addresses_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for (n, dir) in [("a", "/s/a"), ("b", "/s/b")] {
            std::fs::write(
                d.path().join(format!("{n}.toml")),
                format!(
                    "hostname = \"{n}\"\naddresses = [\"198.51.100.1\"]\nstate_dir = \"{dir}\"\n"
                ),
            )
            .unwrap();
        }
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("b.toml") && e.contains("addresses"), "{e}");
    }
}

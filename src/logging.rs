//! Logging: `tracing` to stderr in the foreground; to syslog (`/dev/log`) once in the
//! background, as rpc.statd and sm-notify log when they run as daemons. The level is info, or
//! debug with `-d` / `[statd] debug`; `RUST_LOG` overrides both. The level can change at run
//! time (SIGHUP re-reads nfs.conf).

use std::io::{IsTerminal, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

/// The registry under the reloadable filter (what the output layer sits on).
type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// The syslog socket; the environment variable `NSMD_SYSLOG_SOCKET` names another.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// Changes the log level after start.
#[derive(Debug, Clone)]
pub struct LogLevel {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    syslog: bool,
}

impl LogLevel {
    /// Switches between info and debug (no effect when `RUST_LOG` set the filter).
    pub fn set_debug(&self, debug: bool) {
        if let Some(h) = &self.handle {
            let _ = h.reload(EnvFilter::new(if debug { "debug" } else { "info" }));
        }
    }

    /// Whether logs go to syslog (then a daemon may close its stdout and stderr).
    pub fn to_syslog(&self) -> bool {
        self.syslog
    }
}

/// Installs the global subscriber for `ident` (`nsmd`, `nsm-notify`). With `background`, log
/// to syslog when its socket exists (stderr is lost once a daemon detached), else to stderr.
pub fn init(ident: &'static str, debug: bool, background: bool) -> LogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(if debug { "debug" } else { "info" }));
    let (filter, handle) = reload::Layer::new(filter);
    let socket = std::env::var_os("NSMD_SYSLOG_SOCKET")
        .map_or_else(|| PathBuf::from(SYSLOG_SOCKET), PathBuf::from);
    let syslog = background.then(|| Syslog::new(ident, &socket)).flatten();
    let missing = background && syslog.is_none();
    let to_syslog = syslog.is_some();
    let sink: Box<dyn Layer<Filtered> + Send + Sync> = match syslog {
        Some(s) => Box::new(
            fmt::layer()
                .with_writer(s)
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_target(false),
        ),
        None => Box::new(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        ),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(sink)
        .try_init();
    if missing {
        tracing::warn!(
            "no syslog socket at {}: logging to stderr",
            socket.display()
        );
    }
    LogLevel {
        handle: (!fixed).then_some(handle),
        syslog: to_syslog,
    }
}

/// An error and its causes, `outer: cause: cause…`, leaving out a cause whose text the
/// message already carries (many of our errors print their source themselves), so the operator
/// reads each reason once.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Writes each event as one datagram `<PRI>IDENT[PID]: MESSAGE` (facility daemon) to the
/// syslog socket, as glibc's `syslog()` does.
#[derive(Debug)]
struct Syslog {
    ident: &'static str,
    path: PathBuf,
    sock: UnixDatagram,
}

impl Syslog {
    fn new(ident: &'static str, path: &Path) -> Option<Self> {
        if !path.exists() {
            return None;
        }
        let sock = UnixDatagram::unbound().ok()?;
        Some(Self {
            ident,
            path: path.to_owned(),
            sock,
        })
    }
}

/// One event being formatted; sent when dropped.
#[derive(Debug)]
struct SyslogLine<'a> {
    to: &'a Syslog,
    severity: u8,
    buf: Vec<u8>,
}

/// LOG_DAEMON.
const FACILITY_DAEMON: u8 = 3;

fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            to: self,
            severity: 6,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogLine {
            to: self,
            severity: severity(meta.level()),
            buf: Vec::new(),
        }
    }
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        let msg = self.buf.trim_ascii_end();
        if msg.is_empty() {
            return;
        }
        let mut line = format!(
            "<{}>{}[{}]: ",
            FACILITY_DAEMON * 8 + self.severity,
            self.to.ident,
            std::process::id()
        )
        .into_bytes();
        line.extend_from_slice(msg);
        // Nowhere to report a failure to log; a full or restarted syslog loses the line.
        let _ = self.to.sock.send_to(&line, &self.to.path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_once() {
        let io = std::io::Error::from_raw_os_error(13);
        let inner =
            anyhow::Error::new(io).context("bind 0.0.0.0:700: Permission denied (os error 13)");
        let e = inner.context("cannot notify");
        assert_eq!(
            error_chain(&e),
            "cannot notify: bind 0.0.0.0:700: Permission denied (os error 13)"
        );
        let plain = anyhow::anyhow!("a").context("b");
        assert_eq!(error_chain(&plain), "b: a");
    }

    #[test]
    fn one_datagram_per_event_with_priority_ident_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let rx = UnixDatagram::bind(&path).unwrap();
        let s = Syslog::new("nsmd", &path).unwrap();
        {
            let mut w = SyslogLine {
                to: &s,
                severity: severity(&Level::WARN),
                buf: Vec::new(),
            };
            w.write_all(b"state directory ").unwrap();
            w.write_all(b"skipped\n").unwrap();
        }
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!("<28>nsmd[{}]: state directory skipped", std::process::id())
        );
        assert!(Syslog::new("nsmd", &dir.path().join("none")).is_none());
    }
}

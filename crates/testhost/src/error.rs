//! The error type of the harness.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while building or driving a test host.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation (file, spawn, wait) failed.
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A setup or helper command exited unsuccessfully.
    Command {
        /// The command line, for humans.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// Its standard output (lossy UTF-8).
        stdout: String,
        /// Its standard error (lossy UTF-8).
        stderr: String,
    },
    /// Something did not happen in time (the command, if any, was killed).
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        after: Duration,
        /// Extra context: output so far, or the tail of a log.
        detail: String,
    },
    /// A spawned process exited while the harness waited for it to do something.
    Exited {
        /// The process' name given to `Host::spawn`.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// An argument was rejected (bad host name, duplicate name, path outside the host, ...).
    Invalid(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { context, source } => write!(f, "{context}: {source}"),
            Self::Command {
                command,
                status,
                stdout,
                stderr,
            } => {
                write!(f, "`{command}` failed ({status})")?;
                if !stderr.trim().is_empty() {
                    write!(f, "; stderr: {}", stderr.trim())?;
                }
                if !stdout.trim().is_empty() {
                    write!(f, "; stdout: {}", stdout.trim())?;
                }
                Ok(())
            }
            Self::Timeout {
                what,
                after,
                detail,
            } => {
                write!(f, "timed out after {after:?} waiting for {what}")?;
                if !detail.trim().is_empty() {
                    write!(f, "\n{}", detail.trim_end())?;
                }
                Ok(())
            }
            Self::Exited {
                name,
                status,
                log_tail,
            } => {
                write!(f, "process `{name}` exited ({status})")?;
                if !log_tail.trim().is_empty() {
                    write!(f, "; last log lines:\n{}", log_tail.trim_end())?;
                }
                Ok(())
            }
            Self::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

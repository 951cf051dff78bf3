//! Long-running processes inside a host.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;
use crate::exec::{self, Signal};
use crate::host::HostShared;

/// Grace period between SIGTERM and SIGKILL when a `Proc` is dropped.
const DROP_GRACE: Duration = Duration::from_secs(3);

/// Lines of log printed when a `Proc` is dropped during a panic.
const PANIC_TAIL_LINES: usize = 40;

/// A process started with [`Host::spawn`](crate::Host::spawn).
///
/// `nsenter` execs the command directly, so [`pid`](Self::pid) is the command's own pid.
/// Dropping it stops the process (SIGTERM, SIGKILL after 3 s); the host stays alive at least
/// as long as its `Proc`s.
pub struct Proc {
    name: String,
    command: String,
    pid: u32,
    child: Mutex<Child>,
    log_path: PathBuf,
    // Keeps the host (namespaces, log directory) alive while the process may run.
    host: Arc<HostShared>,
}

impl fmt::Debug for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("host", &self.host.name)
            .field("pid", &self.pid)
            .field("command", &self.command)
            .finish()
    }
}

impl Proc {
    pub(crate) fn new(
        name: String,
        command: String,
        host: Arc<HostShared>,
        child: Child,
        log_path: PathBuf,
    ) -> Self {
        Self {
            name,
            command,
            pid: child.id(),
            child: Mutex::new(child),
            log_path,
            host,
        }
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The name given to `spawn`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (in the root pid namespace; the harness makes no pid namespaces).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Path (outside) of the log file holding its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its stdout and stderr so far (lossy UTF-8).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The current length of the log in bytes: pass it to
    /// [`wait_for_log_line_after`](Self::wait_for_log_line_after) to only look at what comes
    /// later.
    pub fn log_mark(&self) -> usize {
        fs::metadata(&self.log_path).map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX))
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a complete log line contains `pattern` (plain substring) and returns that
    /// line. Fails if the process exits first or `timeout` passes.
    pub fn wait_for_log_line(&self, pattern: &str, timeout: Duration) -> Result<String, Error> {
        self.wait_for_log_line_after(0, pattern, timeout)
    }

    /// Like [`wait_for_log_line`](Self::wait_for_log_line), looking only at the log after
    /// byte offset `mark` (from [`log_mark`](Self::log_mark)).
    pub fn wait_for_log_line_after(
        &self,
        mark: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        let find = || {
            let bytes = fs::read(&self.log_path).unwrap_or_default();
            let tail = bytes.get(mark..).unwrap_or_default();
            let text = String::from_utf8_lossy(tail);
            // Only complete lines: a line being written may not show the pattern yet.
            let complete = text.rfind('\n').map_or("", |i| &text[..i]);
            complete
                .lines()
                .find(|l| l.contains(pattern))
                .map(str::to_owned)
        };
        loop {
            if let Some(line) = find() {
                return Ok(line);
            }
            if let Some(status) = self.exit_status() {
                // It may have written the line just before exiting.
                return find().ok_or_else(|| Error::Exited {
                    name: self.name.clone(),
                    status,
                    log_tail: self.log_tail(20),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("`{pattern}` in the log of `{}`", self.name),
                    after: timeout,
                    detail: format!("last log lines:\n{}", self.log_tail(20)),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its exit status if it has exited (it is reaped then).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// `Ok` while it runs; `Error::Exited` with its log tail once it has exited.
    pub fn check_running(&self) -> Result<(), Error> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(Error::Exited {
                name: self.name.clone(),
                status,
                log_tail: self.log_tail(20),
            }),
        }
    }

    /// Sends `sig` to it. Does nothing if it has already exited (its pid is never reused
    /// while we hold it unreaped, so this cannot hit another process).
    pub fn signal(&self, sig: Signal) -> Result<(), Error> {
        let mut child = self.child();
        if child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        // The child stays unreaped while we hold the lock, so the pid is still ours.
        exec::kill_pids(&[self.pid], sig)?;
        drop(child);
        Ok(())
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait(&self, timeout: Duration) -> Result<ExitStatus, Error> {
        let mut child = self.child();
        exec::wait_deadline(&mut child, Instant::now() + timeout)?.ok_or_else(|| Error::Timeout {
            what: format!("`{}` to exit", self.name),
            after: timeout,
            detail: String::new(),
        })
    }

    /// Stops it: SIGTERM, then SIGKILL if it is still running after `grace`. Returns its exit
    /// status.
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus, Error> {
        self.signal(Signal::Term)?;
        if let Ok(status) = self.wait(grace) {
            return Ok(status);
        }
        let mut child = self.child();
        child
            .kill()
            .map_err(|e| Error::io(format!("killing `{}`", self.name), e))?;
        child
            .wait()
            .map_err(|e| Error::io(format!("waiting for `{}`", self.name), e))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            if let Err(e) = self.stop(DROP_GRACE) {
                note!("warning: stopping `{}`: {e}", self.name);
            }
        }
        if thread::panicking() {
            eprintln!(
                "----- nsm-testhost: last {PANIC_TAIL_LINES} log lines of `{}` on host `{}` \
                 ({}) -----\n{}\n----- end of `{}` -----",
                self.name,
                self.host.name,
                self.command,
                self.log_tail(PANIC_TAIL_LINES),
                self.name
            );
        }
    }
}

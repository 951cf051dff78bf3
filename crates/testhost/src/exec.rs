//! Running helper commands with a timeout, finding tools, signalling and finding processes.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;

/// Timeout for the harness' own `ip`/`mount`/`nsenter` plumbing commands.
pub(crate) const PLUMBING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait for a command's pipes to close once it exited (a daemon it started may hold
/// them open).
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// Directories searched for tools besides `$PATH` (root's tools live in sbin).
const EXTRA_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The absolute path of an executable named `name`, searched in `$PATH` and then in the usual
/// `sbin`/`bin` directories (tests usually need absolute paths: `nsenter` starts in `/`).
///
/// A `name` containing a `/` is returned as is if it is an executable file.
pub fn tool_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// Like [`tool_path`] but an error naming the tool when it is missing.
pub(crate) fn tool(name: &str) -> Result<PathBuf, Error> {
    tool_path(name).ok_or_else(|| Error::Invalid(format!("required tool `{name}` not found")))
}

/// A command line for error messages.
pub(crate) fn display_argv<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn reader<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Polls `child` until it exits or `deadline` passes; `None` on timeout.
pub(crate) fn wait_deadline(
    child: &mut Child,
    deadline: Instant,
) -> Result<Option<ExitStatus>, Error> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("waiting for a child", e))?
        {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Runs `argv` to completion (stdin empty), killing it after `timeout`.
///
/// Returns the output whatever the exit status; `Error::Timeout` if it had to be killed.
pub(crate) fn run_argv<S: AsRef<OsStr>>(argv: &[S], timeout: Duration) -> Result<Output, Error> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(Error::Invalid("empty command line".into()));
    };
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("spawning `{}`", display_argv(argv)), e))?;
    let out_rx = child.stdout.take().map(reader);
    let err_rx = child.stderr.take().map(reader);
    let start = Instant::now();
    let status = wait_deadline(&mut child, start + timeout)?;
    let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| {
        rx.and_then(|rx| rx.recv_timeout(PIPE_GRACE).ok())
            .unwrap_or_default()
    };
    match status {
        Some(status) => Ok(Output {
            status,
            stdout: collect(out_rx),
            stderr: collect(err_rx),
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = collect(out_rx);
            let stderr = collect(err_rx);
            Err(Error::Timeout {
                what: format!("`{}`", display_argv(argv)),
                after: timeout,
                detail: format!(
                    "stdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&stdout).trim_end(),
                    String::from_utf8_lossy(&stderr).trim_end()
                ),
            })
        }
    }
}

/// Turns an unsuccessful `Output` into `Error::Command`.
pub(crate) fn check_output<S: AsRef<OsStr>>(argv: &[S], out: Output) -> Result<Output, Error> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            command: display_argv(argv),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Runs a plumbing command and requires success.
pub(crate) fn plumb<S: AsRef<OsStr>>(argv: &[S]) -> Result<Output, Error> {
    let out = run_argv(argv, PLUMBING_TIMEOUT)?;
    check_output(argv, out)
}

/// Builds an argv whose first element is the absolute path of tool `name`.
pub(crate) fn argv_tool(name: &str, rest: &[&OsStr]) -> Result<Vec<OsString>, Error> {
    let mut v = vec![tool(name)?.into_os_string()];
    v.extend(rest.iter().map(|s| s.to_os_string()));
    Ok(v)
}

/// `ip ARGS...`, requiring success.
pub(crate) fn ip(args: &[&str]) -> Result<Output, Error> {
    let rest: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    plumb(&argv_tool("ip", &rest)?)
}

/// A signal to send with [`Proc::signal`](crate::Proc::signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// SIGTERM
    Term,
    /// SIGKILL
    Kill,
    /// SIGHUP
    Hup,
    /// SIGINT
    Int,
    /// SIGUSR1
    Usr1,
    /// SIGUSR2
    Usr2,
    /// SIGSTOP
    Stop,
    /// SIGCONT
    Cont,
}

impl Signal {
    /// The name `kill -s` understands.
    pub fn name(self) -> &'static str {
        match self {
            Self::Term => "TERM",
            Self::Kill => "KILL",
            Self::Hup => "HUP",
            Self::Int => "INT",
            Self::Usr1 => "USR1",
            Self::Usr2 => "USR2",
            Self::Stop => "STOP",
            Self::Cont => "CONT",
        }
    }
}

/// Sends `sig` to `pids` with kill(1); pids that are already gone are ignored.
pub(crate) fn kill_pids(pids: &[u32], sig: Signal) -> Result<(), Error> {
    if pids.is_empty() {
        return Ok(());
    }
    let mut argv = vec![
        tool("kill")?.into_os_string(),
        "-s".into(),
        sig.name().into(),
    ];
    argv.extend(pids.iter().map(|p| OsString::from(p.to_string())));
    // Exit status 1 just means some pid had already exited.
    run_argv(&argv, PLUMBING_TIMEOUT).map(drop)
}

/// Identity (device, inode) of the namespace a namespace file (`/run/netns/X`, a bind-mounted ns
/// file, `/proc/PID/ns/net`) refers to.
pub(crate) type NsId = (u64, u64);

/// The namespace a namespace file refers to (`None` if it cannot be read).
pub(crate) fn ns_id(path: &Path) -> Option<NsId> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Every live (non-zombie) process that is in one of `targets` (namespace kind as in
/// `/proc/PID/ns/<kind>`, e.g. `net`, `mnt`, `uts`, and the namespace's identity).
pub(crate) fn pids_in_namespaces(targets: &[(&str, NsId)]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let ns_dir = Path::new("/proc").join(pid.to_string()).join("ns");
            // A zombie's ns links cannot be read: it holds no namespace any more.
            targets
                .iter()
                .any(|(kind, id)| ns_id(&ns_dir.join(kind)) == Some(*id))
        })
        .collect()
}

/// Kills every process in `targets` with SIGKILL and waits (up to `timeout`) until none is
/// left. Returns the pids that survived (empty on success).
pub(crate) fn kill_namespace_members(targets: &[(&str, NsId)], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = pids_in_namespaces(targets);
        if pids.is_empty() || Instant::now() >= deadline {
            return pids;
        }
        let _ = kill_pids(&pids, Signal::Kill);
        thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process with this pid exists (zombies included).
pub(crate) fn pid_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// See the `note!` macro.
pub(crate) fn note_line(msg: &str) {
    let _ = writeln!(std::io::stderr(), "nsm-testhost: {msg}");
}

//! `nsmctl`: controls a running nsmd over its root-only Unix socket.
//!
//! ```text
//! nsmctl status                 every instance: role, active here, state, epoch, peers
//! nsmctl takeover NAME          claim NAME, bump its state, wait for readiness, notify
//! nsmctl takeover --force NAME  the same over another node's lock (it is fenced)
//! nsmctl release NAME           stop serving NAME, release its kernel locks, drop ownership
//! nsmctl release --offline NAME the same without nsmd (it died): kernel locks, marker
//! nsmctl state NAME             NAME on this node, as an exit status (see nsmd::cli::STATE_HELP)
//! nsmctl notify NAME            notify NAME's sm.bak/ again
//! nsmctl peers NAME             the peers NAME monitors ("node": the node instance)
//! ```
//!
//! Tables for people; `--json` prints nsmd's reply as it is, for scripts. The exit status is
//! 0 when nsmd did what was asked, 1 otherwise; `state` has the statuses of nsmd::cli::STATE_HELP.
//! The protocol, and what happens when nsmctl and nsmd are of different versions:
//! [`nsmd::control`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nsm_statd::ServiceSpec;
use nsmd::cli::{CtlArgs, CtlCmd, CtlFiles};
use nsmd::control::{ErrorReply, InstanceStatus, Request, Response, ServiceStatus, StatusReply};

/// What `nsmctl state` found; the discriminant is the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active = 0,
    Inactive = 3,
    Fenced = 4,
    Half = 5,
    UnreachableHeld = 6,
    Unreachable = 7,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Fenced => "fenced",
            Self::Half => "half taken over",
            Self::UnreachableHeld => "nsmd unreachable, held here",
            Self::Unreachable => "nsmd unreachable",
        }
    }
}

/// What `cmd` asks nsmd (`state` and `release --offline` ask for the status).
fn request_of(cmd: &CtlCmd) -> Request {
    match cmd {
        CtlCmd::Status | CtlCmd::State { .. } | CtlCmd::Release { offline: true, .. } => {
            Request::Status
        }
        CtlCmd::Metrics => Request::Metrics,
        CtlCmd::Takeover { name, force } => Request::Takeover {
            name: name.clone(),
            force: *force,
        },
        CtlCmd::Release { name, .. } => Request::Release { name: name.clone() },
        CtlCmd::Notify { name } => Request::Notify { name: name.clone() },
        CtlCmd::Peers { name } => Request::Peers { name: name.clone() },
    }
}

/// One line to nsmd and its reply line.
fn exchange(args: &CtlArgs, request: &Request, line: &str) -> Result<String, String> {
    let path = &args.control_socket;
    let mut s = UnixStream::connect(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "nsmd is not running, or it was started with another --control-socket"
            }
            std::io::ErrorKind::ConnectionRefused => "nsmd is not running (a stale socket)",
            std::io::ErrorKind::PermissionDenied => "only root (or nsmd's user) may use it",
            _ => "is nsmd running?",
        };
        format!("cannot connect to nsmd at {}: {e}: {why}", path.display())
    })?;
    let t = Some(Duration::from_secs(args.timeout.max(1)));
    s.set_read_timeout(t)
        .map_err(|e| format!("cannot use the connection to nsmd: {e}"))?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("cannot send to nsmd: {e}"))?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!(
                "no reply from nsmd within {} s (--timeout): nsmd goes on with `{}`; \
                 `nsmctl status` shows where it is",
                args.timeout.max(1),
                request.shown()
            )
        } else {
            format!("no reply from nsmd: {e}")
        }
    })?;
    Ok(reply.trim_end().to_owned())
}

/// Asks nsmd; returns its reply, typed and as the line it sent. An nsmd from before the
/// JSON protocol (still running after a package upgrade installed this nsmctl) is asked
/// again in its text form (see [`nsmd::control`]).
fn request(args: &CtlArgs) -> Result<(Response, String), String> {
    let request = request_of(&args.cmd);
    let decode = |line: &str| {
        Response::decode(&request, line).map_err(|e| {
            format!(
                "unreadable reply from nsmd at {}: {e}: {line:?} (nsmctl speaks control \
                 protocol version {}; is the nsmd running the one installed with it? restart \
                 nsmd)",
                args.control_socket.display(),
                nsmd::control::VERSION
            )
        })
    };
    let line = exchange(args, &request, &request.line())?;
    match decode(&line)? {
        Response::Error(e) if e.is_from_text_protocol_nsmd() => {
            if !args.json {
                eprintln!(
                    "nsmctl: nsmd at {} is older than this nsmctl (it speaks the text control \
                     protocol, not version {}): asked in its form; restart nsmd (systemctl \
                     restart nsmd) to run the installed version",
                    args.control_socket.display(),
                    nsmd::control::VERSION
                );
            }
            let line = exchange(args, &request, &request.text_line())?;
            Ok((decode(&line)?, line))
        }
        r => Ok((r, line)),
    }
}

/// The status of every instance, or why nsmd could not say.
fn status(args: &CtlArgs) -> Result<StatusReply, String> {
    match request(args)? {
        (Response::Status(s), _) => Ok(s),
        (Response::Error(e), _) => Err(e.error),
        (other, _) => Err(format!("nsmd answered {other:?} to a status request")),
    }
}

/// The service instance `name` in `status`.
fn service<'a>(status: &'a StatusReply, name: &str) -> Option<&'a ServiceStatus> {
    status.instances.iter().find_map(|i| match i {
        InstanceStatus::Service(s) if s.name == name => Some(s),
        _ => None,
    })
}

fn cell<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(head.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn addresses(a: &[std::net::IpAddr]) -> String {
    if a.is_empty() {
        return String::new();
    }
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn show(cmd: &CtlCmd, r: &Response) {
    match (cmd, r) {
        (CtlCmd::Status, Response::Status(s)) => {
            let rows: Vec<Vec<String>> = s
                .instances
                .iter()
                .map(|i| match i {
                    InstanceStatus::Node(n) => vec![
                        n.name.clone(),
                        "node".to_owned(),
                        if n.active { "yes" } else { "no" }.to_owned(),
                        n.state.to_string(),
                        "-".to_owned(),
                        n.peers.to_string(),
                        addresses(&n.addresses),
                        "-".to_owned(),
                    ],
                    InstanceStatus::Service(s) => {
                        let n = &s.notify;
                        let notify = if n.peers > 0 {
                            format!(
                                "{}/{} acked{}",
                                n.acked,
                                n.peers,
                                if n.finished { "" } else { " (running)" }
                            )
                        } else {
                            "-".to_owned()
                        };
                        vec![
                            s.name.clone(),
                            "service".to_owned(),
                            if let Some(step) = &s.step {
                                step.as_str()
                            } else if s.fenced {
                                "fenced"
                            } else if s.active {
                                "yes"
                            } else {
                                "no"
                            }
                            .to_owned(),
                            cell(s.state),
                            cell(s.epoch),
                            s.peers.to_string(),
                            addresses(&s.addresses),
                            notify,
                        ]
                    }
                })
                .collect();
            table(
                &[
                    "NAME",
                    "ROLE",
                    "ACTIVE",
                    "STATE",
                    "EPOCH",
                    "PEERS",
                    "ADDRESSES",
                    "NOTIFY",
                ],
                &rows,
            );
        }
        (CtlCmd::Peers { .. }, Response::Peers(p)) => {
            let rows: Vec<Vec<String>> = p
                .peers
                .iter()
                .map(|p| vec![p.mon_name.clone(), p.my_name.clone()])
                .collect();
            table(&["MON_NAME", "MY_NAME"], &rows);
        }
        (CtlCmd::Takeover { name, .. }, Response::Takeover(t)) if t.already => println!(
            "{name}: already active here, state {} (nothing done)",
            t.state
        ),
        (CtlCmd::Takeover { name, .. }, Response::Takeover(t)) => {
            println!("{name}: taken over, state {}", t.state)
        }
        (CtlCmd::Release { name, .. }, Response::Release(r)) if r.already => {
            println!("{name}: not held here (nothing done)");
        }
        (CtlCmd::Release { name, .. }, Response::Release(_)) => println!("{name}: released"),
        (CtlCmd::Metrics, Response::Metrics(m)) => print!("{}", m.metrics),
        (CtlCmd::Notify { name }, Response::Notify(n)) => {
            println!("{name}: notifying {} peer(s)", n.peers)
        }
        _ => {}
    }
}

/// The instance file of `name`, as nsmd reads it.
fn spec(files: &CtlFiles, name: &str) -> Result<ServiceSpec, String> {
    let file = files.instances.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "{}: {e} (no instance {name:?} in {}? pass nsmd's directory with --instances)",
            file.display(),
            files.instances.display()
        )
    })?;
    nsmd::config::instances::parse(&file, name, &text).map_err(|e| e.to_string())
}

/// Whether this node holds `name` (nsmd's marker beside the control socket).
fn held(args: &CtlArgs, name: &str) -> Result<bool, String> {
    let f = nsm_statd::service::marker_path(&nsmd::held::run_dir(&args.control_socket), name);
    match std::fs::symlink_metadata(&f) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("{}: {e}", f.display())),
    }
}

/// `nsmctl state NAME`.
/// nsmd's errors keep their kind (`--json`).
fn state(args: &CtlArgs, files: &CtlFiles, name: &str) -> Result<State, ErrorReply> {
    let status = match request(args) {
        Err(e) => {
            // Unreachable: only the files can say whether NAME was left held here.
            spec(files, name).map_err(mine)?;
            eprintln!("nsmctl: {e}");
            return Ok(if held(args, name).map_err(mine)? {
                State::UnreachableHeld
            } else {
                State::Unreachable
            });
        }
        Ok((Response::Status(s), _)) => s,
        Ok((Response::Error(e), _)) => return Err(e),
        Ok((other, _)) => {
            return Err(mine(format!("nsmd answered {other:?} to a status request")));
        }
    };
    let s = service(&status, name)
        .ok_or_else(|| mine(format!("nsmd has no service instance named {name:?}")))?;
    Ok(if s.fenced {
        State::Fenced
    } else if s.active {
        State::Active
    } else if held(args, name).map_err(mine)? {
        State::Half
    } else {
        State::Inactive
    })
}

/// This node's name, as nsmd writes it in the ownership file.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `nsmctl release --offline NAME`: what nsmd's release does, without nsmd.
fn release_offline(args: &CtlArgs, files: &CtlFiles, name: &str) -> Result<(), String> {
    let spec = spec(files, name)?;
    let serving = status(args)
        .ok()
        .and_then(|s| service(&s, name).map(|i| i.active || i.fenced));
    if serving == Some(true) {
        return Err(format!(
            "nsmd holds {name} on this node (active or fenced): release it with \
             `nsmctl release {name}`"
        ));
    }
    // Who holds the ownership now: a live process on this node (an nsmd that does not
    // answer) would still serve the addresses; another node's is not this node's business.
    let lock = match nsm_statd::ownership::Ownership::lock_existing(&spec.state_dir) {
        Ok(l) => l,
        Err(e @ nsm_statd::ownership::OwnershipError::Busy { .. }) => {
            let owner =
                nsm_statd::ownership::read_owner(&spec.state_dir).map_err(|e| e.to_string())?;
            match owner {
                Some((_, node, pid)) if node == node_name() => {
                    return Err(format!(
                        "{e}: pid {pid} on this node still holds {name} and may answer on {:?};                          stop it first (kill {pid}) or release through it (nsmctl release {name})",
                        spec.addresses
                    ));
                }
                _ => None,
            }
        }
        Err(e) => return Err(e.to_string()),
    };
    let failed = nsm_statd::service::release_kernel_locks(&files.proc_root, &spec, None);
    if !failed.is_empty() {
        return Err(format!(
            "{name}: kernel lock release incomplete: {}",
            failed.join("; ")
        ));
    }
    let f = nsm_statd::service::marker_path(&nsmd::held::run_dir(&args.control_socket), name);
    match std::fs::remove_file(&f) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", f.display())),
    }
    drop(lock);
    Ok(())
}

/// An error of nsmctl itself (kind `nsmctl`).
fn mine(e: String) -> ErrorReply {
    ErrorReply::new(e, "nsmctl")
}

/// An error: on stderr for people, as nsmd's own error replies with `--json`; exit 1.
fn fail(args: &CtlArgs, e: ErrorReply) -> ExitCode {
    if args.json {
        println!("{}", Response::Error(e).line());
    } else {
        eprintln!("nsmctl: {}", e.error);
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args = CtlArgs::parse();
    match &args.cmd {
        CtlCmd::State { files, name } => {
            return match state(&args, files, name) {
                Ok(s) => {
                    if args.json {
                        println!(
                            "{}",
                            serde_json::json!({ "instance": name, "state": s.word(), "code": s as u8 })
                        );
                    } else {
                        println!("{name}: {}", s.word());
                    }
                    ExitCode::from(s as u8)
                }
                Err(e) => fail(&args, e),
            };
        }
        CtlCmd::Release {
            offline: true,
            files,
            name,
        } => {
            return match release_offline(&args, files, name) {
                Ok(()) => {
                    if args.json {
                        println!("{}", serde_json::json!({ "ok": true, "instance": name }));
                    } else {
                        println!("{name}: released offline (kernel lock release written)");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&args, mine(e)),
            };
        }
        _ => {}
    }
    let (r, line) = match request(&args) {
        Ok(r) => r,
        Err(e) => return fail(&args, mine(e)),
    };
    let ok = !matches!(r, Response::Error(_));
    if args.json {
        println!("{line}");
    } else if let Response::Error(e) = &r {
        eprintln!("nsmctl: {}", e.error);
    } else {
        show(&args.cmd, &r);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

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

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nsm_statd::ServiceSpec;
use nsmd::cli::{CtlArgs, CtlCmd, CtlFiles};
use serde_json::Value;

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

fn request(args: &CtlArgs) -> Result<Value, String> {
    let line = match &args.cmd {
        CtlCmd::Status | CtlCmd::State { .. } => "status".to_owned(),
        CtlCmd::Metrics => "metrics".to_owned(),
        CtlCmd::Takeover { name, force: false } => format!("takeover {name}"),
        CtlCmd::Takeover { name, force: true } => format!("takeover {name} force"),
        CtlCmd::Release { name, .. } => format!("release {name}"),
        CtlCmd::Notify { name } => format!("notify {name}"),
        CtlCmd::Peers { name } => format!("peers {name}"),
    };
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
    s.set_read_timeout(t).map_err(|e| e.to_string())?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("cannot send to nsmd: {e}"))?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!(
                "no reply from nsmd within {} s (--timeout): nsmd goes on with `{line}`; \
                 `nsmctl status` shows where it is",
                args.timeout.max(1)
            )
        } else {
            format!("no reply from nsmd: {e}")
        }
    })?;
    serde_json::from_str(&reply).map_err(|e| format!("unreadable reply from nsmd: {e}"))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
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

fn show(cmd: &CtlCmd, v: &Value) {
    match cmd {
        CtlCmd::Status => {
            let rows: Vec<Vec<String>> = v["instances"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| {
                            let n = &i["notify"];
                            let notify = if n.is_object() && n["peers"].as_u64().unwrap_or(0) > 0 {
                                format!(
                                    "{}/{} acked{}",
                                    cell(&n["acked"]),
                                    cell(&n["peers"]),
                                    if n["finished"] == Value::Bool(true) {
                                        ""
                                    } else {
                                        " (running)"
                                    }
                                )
                            } else {
                                "-".to_owned()
                            };
                            vec![
                                cell(&i["name"]),
                                cell(&i["role"]),
                                if let Some(step) = i["step"].as_str() {
                                    step
                                } else if i["fenced"] == Value::Bool(true) {
                                    "fenced"
                                } else if i["active"] == Value::Bool(true) {
                                    "yes"
                                } else {
                                    "no"
                                }
                                .to_owned(),
                                cell(&i["state"]),
                                cell(&i["epoch"]),
                                cell(&i["peers"]),
                                cell(&i["addresses"]),
                                notify,
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
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
        CtlCmd::Peers { .. } => {
            let rows: Vec<Vec<String>> = v["peers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| vec![cell(&p["mon_name"]), cell(&p["my_name"])])
                        .collect()
                })
                .unwrap_or_default();
            table(&["MON_NAME", "MY_NAME"], &rows);
        }
        CtlCmd::Takeover { name, .. } if v["already"] == Value::Bool(true) => println!(
            "{name}: already active here, state {} (nothing done)",
            cell(&v["state"])
        ),
        CtlCmd::Takeover { name, .. } => {
            println!("{name}: taken over, state {}", cell(&v["state"]))
        }
        CtlCmd::Release { name, .. } if v["already"] == Value::Bool(true) => {
            println!("{name}: not held here (nothing done)");
        }
        CtlCmd::Release { name, .. } => println!("{name}: released"),
        CtlCmd::State { .. } => {}
        CtlCmd::Metrics => print!("{}", v["metrics"].as_str().unwrap_or_default()),
        CtlCmd::Notify { name } => println!("{name}: notifying {} peer(s)", cell(&v["peers"])),
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
fn state(args: &CtlArgs, files: &CtlFiles, name: &str) -> Result<State, String> {
    let s = match request(args) {
        Err(e) => {
            // Unreachable: only the files can say whether NAME was left held here.
            spec(files, name)?;
            eprintln!("nsmctl: {e}");
            return Ok(if held(args, name)? {
                State::UnreachableHeld
            } else {
                State::Unreachable
            });
        }
        Ok(v) => v["instances"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|i| i["name"] == name && i["role"] == "service")
            })
            .cloned()
            .ok_or_else(|| format!("nsmd has no service instance named {name:?}"))?,
    };
    Ok(if s["fenced"] == Value::Bool(true) {
        State::Fenced
    } else if s["active"] == Value::Bool(true) {
        State::Active
    } else if held(args, name)? {
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
    let serving = request(args).ok().and_then(|v| {
        v["instances"].as_array().and_then(|a| {
            a.iter()
                .find(|i| i["name"] == name && i["role"] == "service")
                .map(|i| i["active"] == Value::Bool(true) || i["fenced"] == Value::Bool(true))
        })
    });
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

/// An error: on stderr for people, as nsmd's own error replies with `--json`; exit 1.
fn fail(args: &CtlArgs, e: &str) -> ExitCode {
    if args.json {
        println!("{}", serde_json::json!({ "ok": false, "error": e }));
    } else {
        eprintln!("nsmctl: {e}");
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
                Err(e) => fail(&args, &e),
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
                Err(e) => fail(&args, &e),
            };
        }
        _ => {}
    }
    let v = match request(&args) {
        Ok(v) => v,
        Err(e) => return fail(&args, &e),
    };
    let ok = v["ok"] == Value::Bool(true);
    if args.json {
        println!("{v}");
    } else if ok {
        show(&args.cmd, &v);
    } else {
        eprintln!("nsmctl: {}", cell(&v["error"]));
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

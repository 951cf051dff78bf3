//! `nsmctl`: controls a running nsmd over its root-only Unix socket.
//!
//! ```text
//! nsmctl status                 every instance: role, active here, state, epoch, peers
//! nsmctl takeover NAME          claim NAME, bump its state, wait for readiness, notify
//! nsmctl release NAME           stop serving NAME, release its kernel locks, drop ownership
//! nsmctl notify NAME            notify NAME's sm.bak/ again
//! nsmctl peers NAME             the peers NAME monitors ("node": the node instance)
//! ```
//!
//! Tables for people; `--json` prints nsmd's reply as it is, for scripts. The exit status is
//! 0 when nsmd did what was asked, 1 otherwise.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

/// Control a running nsmd (its service instances: takeover, release, notify).
#[derive(Debug, Parser)]
#[command(name = "nsmctl", version)]
struct Args {
    /// nsmd's control socket.
    #[arg(long, value_name = "PATH", default_value = "/run/nsmd/nsmctl.sock")]
    control_socket: PathBuf,
    /// Print nsmd's JSON reply instead of a table.
    #[arg(long)]
    json: bool,
    /// How long to wait for nsmd, in seconds (a takeover waits for the readiness gate).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every instance and its state.
    Status,
    /// Take NAME over on this node.
    Takeover {
        /// The instance.
        name: String,
    },
    /// Release NAME from this node.
    Release {
        /// The instance.
        name: String,
    },
    /// Notify NAME's peers (sm.bak/) again.
    Notify {
        /// The instance.
        name: String,
    },
    /// The peers NAME monitors.
    Peers {
        /// The instance ("node" for the node instance).
        name: String,
    },
}

fn request(args: &Args) -> Result<Value, String> {
    let line = match &args.cmd {
        Cmd::Status => "status".to_owned(),
        Cmd::Takeover { name } => format!("takeover {name}"),
        Cmd::Release { name } => format!("release {name}"),
        Cmd::Notify { name } => format!("notify {name}"),
        Cmd::Peers { name } => format!("peers {name}"),
    };
    let path = &args.control_socket;
    let mut s = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot connect to nsmd at {}: {e} (is nsmd running with --instances? are you root?)",
            path.display()
        )
    })?;
    let t = Some(Duration::from_secs(args.timeout.max(1)));
    s.set_read_timeout(t).map_err(|e| e.to_string())?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("cannot send to nsmd: {e}"))?;
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .map_err(|e| format!("no reply from nsmd: {e}"))?;
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

fn show(cmd: &Cmd, v: &Value) {
    match cmd {
        Cmd::Status => {
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
                                if i["fenced"] == Value::Bool(true) {
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
        Cmd::Peers { .. } => {
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
        Cmd::Takeover { name } => println!("{name}: taken over, state {}", cell(&v["state"])),
        Cmd::Release { name } => println!("{name}: released"),
        Cmd::Notify { name } => println!("{name}: notifying {} peer(s)", cell(&v["peers"])),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let v = match request(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("nsmctl: {e}");
            return ExitCode::FAILURE;
        }
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

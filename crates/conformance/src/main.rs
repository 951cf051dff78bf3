//! nsm-conformance: an NSM (rpc.statd) protocol conformance suite that runs against any statd.
//!
//! ```text
//! nsm-conformance --spawn '/usr/sbin/rpc.statd -F -d -L -p {port} -P {state_dir}' \
//!     --xfail tests/conformance/rpc.statd-2.6.2.xfail
//! nsm-conformance --spawn 'nsmd -F -d -L -p {port} -P {state_dir}'
//! nsm-conformance --target 198.51.100.7          # remote-visible behaviour only
//! nsm-conformance --target 127.0.0.1 --local      # on the statd's host
//! ```
//!
//! TAP version 13 on stdout (a summary table as TAP comments at the end), JUnit XML with
//! `--junit FILE`. The exit status is 1 when a case failed that the `--xfail` file does not
//! declare, 2 on a usage or setup error.

mod cases;
mod target;
mod wire;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::cases::{Case, Need};
use crate::target::Target;

/// How long one case may take; a case that takes longer fails.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// NSM (rpc.statd) protocol conformance suite.
#[derive(Debug, Parser)]
#[command(name = "nsm-conformance", version)]
struct Args {
    /// Start the statd under test in a fresh network namespace (with its own rpcbind and a
    /// lockd stand-in); `{port}` and `{state_dir}` are substituted. Runs every case.
    #[arg(long, value_name = "COMMAND", conflicts_with = "target")]
    spawn: Option<String>,
    /// Check a running statd from here: HOST or HOST:PORT (the port from HOST's rpcbind when
    /// not given).
    #[arg(long, value_name = "HOST[:PORT]")]
    target: Option<String>,
    /// With --target: this is the target's host, so run the loopback-only cases too.
    #[arg(long, requires = "target")]
    local: bool,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// Run only cases matching PATTERN (substring, or a glob with `*`; comma-separated).
    #[arg(long, value_name = "PATTERN")]
    only: Vec<String>,
    /// Skip cases matching PATTERN.
    #[arg(long, value_name = "PATTERN")]
    skip: Vec<String>,
    /// Expected failures: one `CASE-NAME REASON` per line, `#` comments.
    #[arg(long, value_name = "FILE")]
    xfail: Option<std::path::PathBuf>,
    /// Also write JUnit XML to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<std::path::PathBuf>,
}

fn glob(pat: &str, s: &str) -> bool {
    if !pat.contains('*') {
        return s.contains(pat);
    }
    let parts: Vec<&str> = pat.split('*').collect();
    let mut rest = s;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else { return false };
            rest = &rest[at + p.len()..];
        }
    }
    true
}

fn matches_any(pats: &[String], name: &str) -> bool {
    pats.iter()
        .flat_map(|p| p.split(','))
        .filter(|p| !p.is_empty())
        .any(|p| glob(p.trim(), name))
}

fn read_xfail(path: &std::path::Path, cases: &[Case]) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        if !cases.iter().any(|c| c.name == name) {
            return Err(format!(
                "{}:{}: no case named {name:?}",
                path.display(),
                i + 1
            ));
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(format!(
                "{}:{}: {name}: a reason is required",
                path.display(),
                i + 1
            ));
        }
        out.insert(name.to_owned(), reason.to_owned());
    }
    Ok(out)
}

fn needs_text(n: &[Need]) -> String {
    if n.is_empty() {
        return "any".into();
    }
    n.iter()
        .map(|n| match n {
            Need::Local => "local",
            Need::Remote => "remote",
            Need::Spawn => "spawn",
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    XFail,
    XPass,
    Skip,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::XFail => "xfail",
            Self::XPass => "xpass",
            Self::Skip => "skip",
        }
    }
}

#[derive(Debug)]
struct Result1 {
    name: &'static str,
    cite: &'static str,
    outcome: Outcome,
    detail: String,
    took: Duration,
}

fn unmet(t: &Target, needs: &[Need]) -> Option<&'static str> {
    needs.iter().find_map(|n| match n {
        Need::Spawn if !t.is_spawned() => Some("needs --spawn"),
        Need::Local if !t.has_local() => Some("needs loopback access (--spawn or --local)"),
        Need::Remote if !t.has_remote() => {
            Some("needs another host (--spawn, or --target with a non-loopback address)")
        }
        _ => None,
    })
}

fn run_one(t: &Arc<Target>, case: &Case) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (t2, f) = (Arc::clone(t), case.run);
    let h = std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&t2)))
            .unwrap_or_else(|_| Err("the case panicked".into()));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(CASE_TIMEOUT) {
        Ok(r) => {
            let _ = h.join();
            r
        }
        Err(_) => Err(format!("timed out after {CASE_TIMEOUT:?}")),
    }
}

fn yaml_block(out: &mut String, key: &str, text: &str) {
    let _ = writeln!(out, "  {key}: |");
    for l in text.lines() {
        let _ = writeln!(out, "    {l}");
    }
}

fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '&' => "&amp;".into(),
            '"' => "&quot;".into(),
            c if c.is_control() && c != '\n' && c != '\t' => "?".into(),
            c => c.to_string(),
        })
        .collect()
}

fn junit(results: &[Result1], xfail: &BTreeMap<String, String>) -> String {
    let fails = results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .count();
    let skips = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skip | Outcome::XFail))
        .count();
    let total: f64 = results.iter().map(|r| r.took.as_secs_f64()).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuite name=\"nsm-conformance\" tests=\"{}\" failures=\"{fails}\" errors=\"0\" \
         skipped=\"{skips}\" time=\"{total:.3}\">",
        results.len()
    );
    for r in results {
        let _ = write!(
            x,
            "  <testcase classname=\"nsm-conformance\" name=\"{}\" time=\"{:.3}\">",
            xml(r.name),
            r.took.as_secs_f64()
        );
        match r.outcome {
            Outcome::Fail => {
                let _ = write!(
                    x,
                    "<failure message=\"{}\">{}\n({})</failure>",
                    xml(r.detail.lines().next().unwrap_or_default()),
                    xml(&r.detail),
                    xml(r.cite)
                );
            }
            Outcome::XFail => {
                let reason = xfail.get(r.name).map_or("", String::as_str);
                let _ = write!(
                    x,
                    "<skipped message=\"expected failure: {}\"/><system-out>{}</system-out>",
                    xml(reason),
                    xml(&r.detail)
                );
            }
            Outcome::Skip => {
                let _ = write!(x, "<skipped message=\"{}\"/>", xml(&r.detail));
            }
            Outcome::Pass | Outcome::XPass => {}
        }
        x.push_str("</testcase>\n");
    }
    x.push_str("</testsuite>\n");
    x
}

/// `println!` that ends the program quietly (exit 0) when stdout is a closed pipe
/// (`nsm-conformance --list | head`), where `println!` panics.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("nsm-conformance: cannot write to stdout: {e}");
            std::process::exit(2);
        }
    }};
}

fn main() -> ExitCode {
    let args = Args::parse();
    let all = cases::all();
    if args.list {
        for c in &all {
            out!(
                "{:<40} {:<12} {}\n{:<53} [{}]",
                c.name,
                needs_text(c.needs),
                c.desc,
                "",
                c.cite
            );
        }
        out!("{} cases", all.len());
        return ExitCode::SUCCESS;
    }
    let xfail = match &args.xfail {
        Some(p) => match read_xfail(p, &all) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("nsm-conformance: {e}");
                return ExitCode::from(2);
            }
        },
        None => BTreeMap::new(),
    };
    let selected: Vec<&Case> = all
        .iter()
        .filter(|c| args.only.is_empty() || matches_any(&args.only, c.name))
        .filter(|c| !matches_any(&args.skip, c.name))
        .collect();

    out!("TAP version 13");
    let target = match (&args.spawn, &args.target) {
        (Some(cmd), _) => Target::spawn(cmd),
        (None, Some(t)) => parse_target(t).and_then(|(h, p)| Target::remote(h, p, args.local)),
        (None, None) => Err("give --spawn COMMAND or --target HOST[:PORT] (see --help)".into()),
    };
    let t = match target {
        Ok(t) => Arc::new(t),
        Err(e) => {
            out!("Bail out! {}", e.lines().next().unwrap_or_default());
            eprintln!("nsm-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    out!("1..{}", selected.len());

    let mut results = Vec::new();
    for (i, case) in selected.iter().enumerate() {
        let n = i + 1;
        let started = Instant::now();
        let (outcome, detail) = if let Some(why) = unmet(&t, case.needs) {
            (Outcome::Skip, why.to_owned())
        } else {
            let mut r = run_one(&t, case);
            if t.is_spawned() && !t.alive() {
                let log = t.log_tail();
                if case.disruptive && r.is_ok() {
                    // Stopped on purpose by the case.
                } else {
                    r = Err(format!(
                        "{}\nthe target is no longer running; its last log lines:\n{log}",
                        r.err().unwrap_or_default()
                    ));
                }
                if let Err(e) = t.restart() {
                    out!(
                        "Bail out! cannot restart the target: {}",
                        e.lines().next().unwrap_or_default()
                    );
                    eprintln!("nsm-conformance: restarting the target: {e}");
                    return ExitCode::from(2);
                }
            }
            match (r, xfail.contains_key(case.name)) {
                (Ok(()), false) => (Outcome::Pass, String::new()),
                (Ok(()), true) => (Outcome::XPass, String::new()),
                (Err(e), false) => (Outcome::Fail, e),
                (Err(e), true) => (Outcome::XFail, e),
            }
        };
        let took = started.elapsed();
        let mut line = String::new();
        let ok = if matches!(outcome, Outcome::Fail | Outcome::XFail) {
            "not ok"
        } else {
            "ok"
        };
        let _ = write!(line, "{ok} {n} - {}", case.name);
        match outcome {
            Outcome::Skip => {
                let _ = write!(line, " # SKIP {detail}");
            }
            Outcome::XFail | Outcome::XPass => {
                let _ = write!(
                    line,
                    " # TODO {}",
                    xfail.get(case.name).map_or("", String::as_str)
                );
            }
            _ => {}
        }
        out!("{line}");
        if matches!(outcome, Outcome::Fail | Outcome::XFail) {
            let mut y = String::from("  ---\n");
            yaml_block(&mut y, "message", &detail);
            let _ = writeln!(y, "  description: {:?}", case.desc);
            let _ = writeln!(y, "  cites: {:?}", case.cite);
            y.push_str("  ...");
            out!("{y}");
        }
        results.push(Result1 {
            name: case.name,
            cite: case.cite,
            outcome,
            detail,
            took,
        });
    }
    if let Err(e) = cases::cleanup(&t) {
        out!("# cleanup (SM_UNMON_ALL of the suite's records) failed: {e}");
    }
    let _ = t.stop();

    // The summary, as TAP comments.
    out!("#");
    out!("# {:<40} {:<6} {:>8}", "case", "result", "time");
    for r in &results {
        out!(
            "# {:<40} {:<6} {:>7.2}s",
            r.name,
            r.outcome.label(),
            r.took.as_secs_f64()
        );
    }
    let count = |o| results.iter().filter(|r| r.outcome == o).count();
    out!(
        "# {} cases: {} passed, {} failed, {} expected failures, {} unexpectedly passed, {} skipped",
        results.len(),
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::XFail),
        count(Outcome::XPass),
        count(Outcome::Skip)
    );
    if let Some(p) = &args.junit {
        if let Err(e) = std::fs::write(p, junit(&results, &xfail)) {
            eprintln!("nsm-conformance: writing {}: {e}", p.display());
            return ExitCode::from(2);
        }
    }
    if count(Outcome::Fail) > 0 {
        let failed: Vec<&str> = results
            .iter()
            .filter(|r| r.outcome == Outcome::Fail)
            .map(|r| r.name)
            .collect();
        out!("# FAILED: {}", failed.join(" "));
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn parse_target(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok((a, None));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h,
            Some(p.parse::<u16>().map_err(|_| format!("bad port in {s:?}"))?),
        ),
        _ => (s, None),
    };
    use std::net::ToSocketAddrs;
    let ip = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?
        .ip();
    Ok((ip, port))
}

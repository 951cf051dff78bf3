//! Tests of the conformance suite itself (`nsm-conformance`, root only): it passes nsmd with
//! no expected failures, passes Debian's rpc.statd except its declared expected failures, and
//! fails two deliberately broken statds (tests/conformance/fake_statd.py), naming the cases.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use nsm_testhost::require;

const NSMD: &str = env!("CARGO_BIN_EXE_nsmd");
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance");

/// The suite's binary. It is another package's (`crates/conformance`, so that nsmd's own
/// dependencies have no test hosts), and `cargo test` builds only this package's binaries:
/// the first test to need it has cargo build it, with this test's profile and into the same
/// target directory, so it lands beside `nsmd` and is never a stale copy.
fn suite() -> &'static str {
    static SUITE: OnceLock<String> = OnceLock::new();
    SUITE.get_or_init(|| {
        let profile_dir = Path::new(NSMD).parent().unwrap();
        let target_dir = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => "dev",
            p => p,
        };
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--locked", "--quiet", "-p", "nsm-conformance"])
            .args(["--bin", "nsm-conformance"])
            .args(["--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let status = build.status().unwrap();
        assert!(status.success(), "{build:?} failed: {status}");
        let bin = profile_dir.join("nsm-conformance");
        assert!(bin.is_file(), "{build:?} did not make {}", bin.display());
        bin.into_os_string().into_string().unwrap()
    })
}

/// Runs the suite; returns (exit code, TAP output, names of `not ok` cases, names of `ok` cases).
fn run(args: &[&str]) -> (i32, String, BTreeSet<String>, BTreeSet<String>) {
    let mut cmd = Command::new(suite());
    cmd.args(args);
    run_command(cmd)
}

/// The README's conformance example commands, as written (continuation lines joined).
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in readme.lines().map(str::trim) {
        if let Some(c) = cur.as_mut() {
            c.push(' ');
            c.push_str(line.trim_end_matches('\\').trim());
        } else if line.starts_with("./target/release/nsm-conformance --spawn") {
            cur = Some(line.trim_end_matches('\\').trim().to_owned());
        } else {
            continue;
        }
        if !line.ends_with('\\') {
            out.extend(cur.take());
        }
    }
    assert_eq!(
        out.len(),
        2,
        "the README's two conformance examples: {out:?}"
    );
    out
}

/// Runs a README command as written, with `sh`, in a directory laid out as the README's
/// (the binaries under test in `target/release/`, `tests/conformance/` beside them).
fn run_readme(line: &str) -> (i32, String, BTreeSet<String>, BTreeSet<String>) {
    let top = tempfile::tempdir().unwrap();
    let rel = top.path().join("target/release");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::create_dir_all(top.path().join("tests")).unwrap();
    for bin in [suite(), NSMD, env!("CARGO_BIN_EXE_nsm-notify")] {
        let name = Path::new(bin).file_name().unwrap();
        std::os::unix::fs::symlink(bin, rel.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(DIR, top.path().join("tests/conformance")).unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(line)
        .current_dir(top.path())
        .env("PWD", top.path());
    run_command(cmd)
}

fn run_command(mut cmd: Command) -> (i32, String, BTreeSet<String>, BTreeSet<String>) {
    let out = cmd.output().unwrap();
    let tap = String::from_utf8_lossy(&out.stdout).into_owned();
    let name = |l: &str| {
        l.split(" - ")
            .nth(1)
            .and_then(|r| r.split(" #").next())
            .unwrap_or_default()
            .to_owned()
    };
    let failed = tap
        .lines()
        .filter(|l| l.starts_with("not ok "))
        .map(name)
        .collect();
    let passed = tap
        .lines()
        .filter(|l| l.starts_with("ok "))
        .map(name)
        .collect();
    eprintln!(
        "{tap}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), tap, failed, passed)
}

fn xfail_names() -> BTreeSet<String> {
    std::fs::read_to_string(format!("{DIR}/rpc.statd-2.6.2.xfail"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

fn fake(mode: &str) -> String {
    format!("/usr/bin/python3 {DIR}/fake_statd.py --mode {mode} -p {{port}} -P {{state_dir}}")
}

#[test]
fn lists_at_least_40_cases_and_the_xfail_file_names_real_cases() {
    let out = Command::new(suite()).arg("--list").output().unwrap();
    assert!(out.status.success());
    let list = String::from_utf8(out.stdout).unwrap();
    let n: usize = list
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(n >= 40, "{n} cases");
    for x in xfail_names() {
        assert!(
            list.lines().any(|l| l.starts_with(&format!("{x} "))),
            "{x} is not a case"
        );
    }
}

#[test]
fn nsmd_passes_every_case() {
    if !require("nsmd_passes_every_case", &["rpcbind", "rpcinfo"]) {
        return;
    }
    // The README's example, as written.
    let (code, tap, failed, passed) = run_readme(&readme_commands()[0]);
    assert_eq!(code, 0, "{tap}");
    assert!(failed.is_empty(), "{failed:?}");
    assert!(!tap.contains("# TODO") && !tap.contains("# SKIP"), "{tap}");
    assert!(passed.len() >= 40, "{} cases passed", passed.len());
}

#[test]
fn debian_rpc_statd_passes_all_but_its_declared_expected_failures() {
    if !require(
        "debian_rpc_statd_passes_all_but_its_declared_expected_failures",
        &["rpcbind", "rpcinfo", "rpc.statd"],
    ) {
        return;
    }
    // The README's example, as written.
    let (code, tap, failed, passed) = run_readme(&readme_commands()[1]);
    assert_eq!(code, 0, "{tap}");
    // Every failure is a declared one and shows as TODO.
    assert!(failed.is_subset(&xfail_names()), "{failed:?}");
    for l in tap.lines().filter(|l| l.starts_with("not ok ")) {
        assert!(l.contains(" # TODO "), "{l}");
    }
    assert!(
        failed.contains("simu-crash.with-records"),
        "the crash is seen"
    );
    assert!(passed.len() >= 40, "{} cases passed", passed.len());
}

#[test]
fn a_statd_that_stores_nothing_and_never_calls_lockd_fails() {
    if !require(
        "a_statd_that_stores_nothing_and_never_calls_lockd_fails",
        &["rpcbind", "rpcinfo", "python3"],
    ) {
        return;
    }
    // A subset: each missing callback costs the suite its wait.
    let only = "mon.*,notify.callback.state,notify.callback.cookie,persist.records";
    let (code, tap, failed, _) = run(&["--spawn", &fake("lazy"), "--only", only]);
    assert_eq!(code, 1, "{tap}");
    for case in [
        "mon.record-on-disk",
        "mon.remote-refused",
        "mon.name.traversal",
        "notify.callback.state",
        "notify.callback.cookie",
        "persist.records",
    ] {
        assert!(failed.contains(case), "{case} not failed: {failed:?}");
    }
    assert!(tap.contains("# FAILED: "), "{tap}");
}

#[test]
fn a_statd_that_calls_lockd_with_a_wrong_cookie_fails() {
    if !require(
        "a_statd_that_calls_lockd_with_a_wrong_cookie_fails",
        &["rpcbind", "rpcinfo", "python3"],
    ) {
        return;
    }
    let (code, tap, failed, passed) = run(&["--spawn", &fake("bad-cookie")]);
    assert_eq!(code, 1, "{tap}");
    assert!(failed.contains("notify.callback.cookie"), "{failed:?}");
    // It is otherwise careful: the cases that do not look at the cookie pass.
    for case in [
        "mon.record-on-disk",
        "mon.remote-refused",
        "notify.callback",
        "notify.callback.mon-name",
        "notify.callback.state",
        "notify.callback.no-duplicate",
    ] {
        assert!(passed.contains(case), "{case} not passed: {failed:?}");
    }
}

#[test]
fn a_closed_pipe_ends_the_listing_quietly() {
    // `| head`, deterministically: the reading end is closed before anything is written.
    let (rd, wr) = nix::unistd::pipe().unwrap();
    drop(rd);
    let out = Command::new(suite())
        .arg("--list")
        .stdout(std::process::Stdio::from(wr))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

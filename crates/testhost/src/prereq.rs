//! Prerequisite checks and the skip-or-fail policy of netns tests.

use std::fs;
use std::io::Write;
use std::sync::OnceLock;

use crate::exec::{run_argv, tool_path};

/// Environment variable that turns a missing prerequisite into a test failure.
pub const REQUIRE_ENV: &str = "NSMD_REQUIRE_NETNS";

/// Tools the harness itself always needs.
pub const HARNESS_TOOLS: &[&str] = &[
    "ip",
    "nsenter",
    "unshare",
    "mount",
    "umount",
    "mountpoint",
    "flock",
    "kill",
    "sh",
];

/// The Debian package that ships a tool, for the hint in failure messages.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "ip" | "bridge" => "iproute2",
        "nsenter" | "unshare" | "flock" | "mountpoint" => "util-linux",
        "mount" | "umount" => "mount",
        "kill" | "sysctl" | "pgrep" | "ps" => "procps",
        "rpcbind" | "rpcinfo" => "rpcbind",
        "rpc.statd" | "sm-notify" | "showmount" => "nfs-common",
        "tshark" => "tshark",
        "tcpdump" => "tcpdump",
        "getent" => "libc-bin",
        "sh" => "dash",
        "hostname" => "hostname",
        "ocf-tester" => "resource-agents",
        "xmllint" => "libxml2-utils",
        "shellcheck" => "shellcheck",
        "corosync" | "corosync-cfgtool" => "corosync",
        "pacemakerd" => "pacemaker",
        "crm_resource" | "crm_attribute" | "cibadmin" | "crm_mon" => "pacemaker-cli-utils",
        "crm" => "crmsh",
        _ => "(unknown package)",
    }
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether this process may create network and mount namespaces (probed once).
fn namespaces_work() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let unshare = tool_path("unshare").ok_or("`unshare` not found")?;
            let t = tool_path("true").ok_or("`true` not found")?;
            let argv = [
                unshare.as_os_str(),
                "--net".as_ref(),
                "--mount".as_ref(),
                "--uts".as_ref(),
                t.as_os_str(),
            ];
            match run_argv(&argv, std::time::Duration::from_secs(10)) {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(format!(
                    "cannot create namespaces (`unshare --net --mount --uts true` failed: {})",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Err(format!("cannot create namespaces: {e}")),
            }
        })
        .clone()
}

/// Checks that this process can run the harness: root, namespaces that can be created, the
/// harness' own tools ([`HARNESS_TOOLS`]) and every tool in `tools` (names, looked up like
/// [`tool_path`]).
///
/// Returns `Err` with a human-readable list of what is missing and which Debian packages
/// provide it.
pub fn prerequisites(tools: &[&str]) -> Result<(), String> {
    let mut missing = Vec::new();
    if effective_uid() != Some(0) {
        missing.push("root privileges (run the tests as root)".to_owned());
    }
    let mut tools_missing: Vec<&str> = HARNESS_TOOLS.iter().chain(tools).copied().collect();
    tools_missing.sort_unstable();
    tools_missing.dedup();
    tools_missing.retain(|t| tool_path(t).is_none());
    if !tools_missing.is_empty() {
        let mut pkgs: Vec<&str> = tools_missing.iter().map(|t| package_of(t)).collect();
        pkgs.sort_unstable();
        pkgs.dedup();
        missing.push(format!(
            "tools {} (install: apt-get install {})",
            tools_missing.join(", "),
            pkgs.join(" ")
        ));
    }
    if missing.is_empty() {
        return namespaces_work();
    }
    Err(missing.join("; "))
}

/// The policy every netns test applies first: `if !nsm_testhost::require("name", &[..]) { return; }`.
///
/// Returns `true` when the prerequisites ([`prerequisites`]) are met. Otherwise, if the
/// environment variable `NSMD_REQUIRE_NETNS=1` is set (the test command sets it when it runs as
/// root, and CI always does), it panics with a message naming what is missing and how to install
/// it; without the variable it prints `SKIPPED <test>: <reason>` to stderr and returns `false`.
pub fn require(test_name: &str, tools: &[&str]) -> bool {
    match prerequisites(tools) {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!(
                    "\n\n*** {test_name}: network-namespace test prerequisites missing: {reason}\n\
                     *** {REQUIRE_ENV}=1 is set, so this is a failure, not a skip.\n\
                     *** Needed: root, iproute2, util-linux, mount, procps, and the tools named above.\n"
                );
            }
            // Straight to the stderr handle: libtest captures `eprintln!` of passing tests,
            // and a skip must be seen.
            let msg = format!(
                "\n*** SKIPPED {test_name}: {reason} (set {REQUIRE_ENV}=1 to make this a failure)\n"
            );
            let _ = std::io::stderr().write_all(msg.as_bytes());
            false
        }
    }
}

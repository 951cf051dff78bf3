//! The Pacemaker agent `ocf:nsmd:nsmd-instance` (systemd/pacemaker/nsmd-instance) against a
//! real nsmd in a test host: resource-agents' `ocf-tester`, the meta-data against
//! `ra-api-1.dtd`, `shellcheck`, and the states Pacemaker must tell apart: nsmd killed while
//! serving (monitor fails, stop releases the kernel's locks without nsmd), fenced by another
//! node's takeover, held by another node (start fails naming the holder), nsmctl missing.
//! Network namespaces, root only.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{LockdStandIn, spawn_nsmd};
use nsm_testhost::{Host, Lab, Signal, require};

const NSMCTL: &str = env!("CARGO_BIN_EXE_nsmctl");
const AGENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/pacemaker/nsmd-instance"
);
const DTD: &str = "/usr/share/resource-agents/ra-api-1.dtd";
const T: Duration = Duration::from_secs(60);
const SOCKET: &str = "/run/nsmd-t/ctl.sock";
const PROC: &str = "/run/proc";

struct Setup {
    host: Host,
    instances: tempfile::TempDir,
    state_dir: std::path::PathBuf,
}

impl Setup {
    fn params(&self) -> Vec<(String, String)> {
        vec![
            ("instance".into(), "svc1".into()),
            ("nsmctl".into(), NSMCTL.into()),
            ("control_socket".into(), SOCKET.into()),
            (
                "instances_dir".into(),
                self.instances.path().display().to_string(),
            ),
            ("proc_root".into(), PROC.into()),
        ]
    }

    /// Runs the agent's `action` inside the host as Pacemaker would (a 20 s operation).
    fn agent(&self, action: &str, interval_ms: u32, over: &[(&str, &str)]) -> Output {
        let mut argv: Vec<String> = vec![
            "/usr/bin/env".into(),
            "OCF_ROOT=/usr/lib/ocf".into(),
            "OCF_RESOURCE_INSTANCE=svc1-nsm".into(),
            "OCF_RESKEY_CRM_meta_timeout=20000".into(),
            format!("OCF_RESKEY_CRM_meta_interval={interval_ms}"),
        ];
        for (k, v) in self.params() {
            let v = over
                .iter()
                .find(|(o, _)| *o == k)
                .map_or(v, |(_, o)| (*o).to_owned());
            argv.push(format!("OCF_RESKEY_{k}={v}"));
        }
        argv.push(AGENT.into());
        argv.push(action.into());
        self.host.run(&argv, T).unwrap()
    }

    fn rc(&self, action: &str) -> (i32, String) {
        let out = self.agent(action, 10_000, &[]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn nsmctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut argv = vec![NSMCTL, "--control-socket", SOCKET];
        argv.extend_from_slice(args);
        let out = self.host.run(&argv, T).unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn state(&self) -> i32 {
        let dir = self.instances.path().to_str().unwrap().to_owned();
        self.nsmctl(&["state", "--instances", &dir, "--proc-root", PROC, "svc1"])
            .0
    }

    fn kernel(&self, file: &str) -> String {
        String::from_utf8(
            self.host
                .read_file(&format!("{PROC}/fs/nfsd/{file}"))
                .unwrap(),
        )
        .unwrap()
    }

    fn clear_kernel(&self) {
        for f in ["unlock_ip", "unlock_filesystem"] {
            self.host
                .write_file(&format!("{PROC}/fs/nfsd/{f}"), "")
                .unwrap();
        }
    }
}

fn setup(lab: &Lab) -> Setup {
    let host = lab.host("n1", &["198.51.100.10/24"]).unwrap();
    for f in [
        "sys/fs/nfs/nsm_local_state",
        "fs/nfsd/unlock_ip",
        "fs/nfsd/unlock_filesystem",
    ] {
        host.write_file(&format!("{PROC}/{f}"), "").unwrap();
    }
    let instances = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state_dir = instances.path().join("shared-svc1");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(
        instances.path().join("svc1.toml"),
        format!(
            "hostname = \"svc1.example.test\"\naddresses = [\"198.51.100.10\"]\n\
             state_dir = \"{}\"\n[readiness]\nrpcbind = [100021]\ntimeout_seconds = 10\n\
             [release]\nexports = [\"/export/svc1\"]\n",
            state_dir.display()
        ),
    )
    .unwrap();
    Setup {
        host,
        instances,
        state_dir,
    }
}

fn start_nsmd(s: &Setup) -> nsm_testhost::Proc {
    spawn_nsmd(
        &s.host,
        "nsmd",
        &[
            "-P",
            "/var/lib/nfs/node",
            "--proc-root",
            PROC,
            "--control-socket",
            SOCKET,
            "--instances",
            s.instances.path().to_str().unwrap(),
        ],
    )
    .0
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "waited {T:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The meta-data validates against resource-agents' DTD and the agent is shellcheck-clean.
#[test]
fn agent_metadata_and_shellcheck() {
    if !require(
        "agent_metadata_and_shellcheck",
        &["xmllint", "shellcheck", "ocf-tester"],
    ) {
        return;
    }
    assert!(Path::new(DTD).exists(), "{DTD} (Debian's resource-agents)");
    let meta = std::process::Command::new(AGENT)
        .arg("meta-data")
        .env("OCF_ROOT", "/usr/lib/ocf")
        .output()
        .unwrap();
    assert!(meta.status.success());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &meta.stdout).unwrap();
    let x = std::process::Command::new("xmllint")
        .args(["--noout", "--dtdvalid", DTD])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        x.status.success(),
        "meta-data against {DTD}: {}",
        String::from_utf8_lossy(&x.stderr)
    );
    let sc = std::process::Command::new("shellcheck")
        .args(["--shell=sh", AGENT])
        .output()
        .unwrap();
    assert!(
        sc.status.success(),
        "shellcheck {AGENT}:\n{}",
        String::from_utf8_lossy(&sc.stdout)
    );
}

/// ocf-tester passes against a real nsmd; then the failure states: kill -9 while serving,
/// fenced by a newer epoch, held by another node, nsmctl missing.
#[test]
fn agent_against_a_real_nsmd() {
    if !require("agent_against_a_real_nsmd", &["rpcbind", "ocf-tester"]) {
        return;
    }
    let lab = Lab::new("pcmk-agent").unwrap();
    let s = setup(&lab);
    let _rpcbind = s.host.start_rpcbind().unwrap();
    let _lockd = LockdStandIn::start(&s.host, true);

    // nsmd down, nothing held: a probe says stopped, a start says why it cannot.
    assert_eq!(s.state(), 7, "unreachable, nothing held");
    let probe = s.agent("monitor", 0, &[]);
    assert_eq!(probe.status.code(), Some(7));
    let (rc, err) = s.rc("start");
    assert_eq!(rc, 1);
    assert!(
        err.contains("ocf-exit-reason:nsmd does not answer on /run/nsmd-t/ctl.sock"),
        "{err}"
    );

    let nsmd = start_nsmd(&s);
    let mut argv: Vec<String> = vec![
        "/usr/bin/env".into(),
        "OCF_ROOT=/usr/lib/ocf".into(),
        "/usr/sbin/ocf-tester".into(),
        "-n".into(),
        "svc1-nsm".into(),
    ];
    for (k, v) in s.params() {
        argv.push("-o".into());
        argv.push(format!("{k}={v}"));
    }
    argv.push(AGENT.into());
    let out = s.host.run(&argv, Duration::from_secs(300)).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("passed all tests"),
        "ocf-tester:\n{text}\n{}",
        nsmd.log_tail(40)
    );
    assert_eq!(s.kernel("unlock_ip"), "198.51.100.10\n", "stop released");

    // kill -9 while serving: the monitor fails (never "stopped": Pacemaker would not stop
    // it), stop releases the kernel's locks without nsmd, then the node holds nothing.
    s.clear_kernel();
    assert_eq!(s.rc("start").0, 0);
    assert_eq!(s.state(), 0);
    nsmd.signal(Signal::Kill).unwrap();
    nsmd.wait(T).unwrap();
    assert_eq!(s.state(), 6, "unreachable, held here");
    let (rc, err) = s.rc("monitor");
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains("ocf-exit-reason:nsmd does not answer"),
        "{err}"
    );
    assert_eq!(s.agent("monitor", 0, &[]).status.code(), Some(1), "probe");
    assert_eq!(s.kernel("unlock_ip"), "");
    let (rc, err) = s.rc("stop");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(s.kernel("unlock_ip"), "198.51.100.10\n");
    assert_eq!(s.kernel("unlock_filesystem"), "/export/svc1\n");
    assert_eq!(s.state(), 7);
    assert_eq!(s.rc("monitor").0, 7);
    assert_eq!(s.rc("stop").0, 0, "stopping a stopped resource");

    // Fenced: another node's takeover wrote a newer epoch. Monitor fails, notify sends
    // nothing and says so, stop releases.
    let nsmd = start_nsmd(&s);
    s.clear_kernel();
    assert_eq!(s.rc("start").0, 0);
    let owner = s.state_dir.join(".nsmd-owner");
    let line = std::fs::read_to_string(&owner).unwrap();
    let epoch: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    std::fs::write(&owner, format!("epoch {} owner n2 pid 1\n", epoch + 1)).unwrap();
    wait_until("the fence watch", || s.state() == 4);
    let (rc, err) = s.rc("monitor");
    assert_eq!(rc, 1);
    assert!(err.contains("is fenced on this node"), "{err}");
    let (rc, out, err) = s.nsmctl(&["notify", "svc1"]);
    assert_eq!(rc, 1, "{out}{err}");
    assert!(!out.contains("notifying"), "{out}");
    assert!(err.contains("fenced"), "{err}");
    // For scripts, the same as a word.
    let (rc, out, err) = s.nsmctl(&["--json", "notify", "svc1"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(rc == 1 && v["kind"] == "fenced", "{out}{err}");
    assert_eq!(s.rc("stop").0, 0);
    assert_eq!(s.kernel("unlock_ip"), "198.51.100.10\n");
    assert_eq!(s.state(), 3);

    // Held by a live process elsewhere (another node's nsmd that was lost without fencing):
    // start fails naming the holder; once the holder is gone, start succeeds.
    let holder = s
        .host
        .spawn(
            "holder",
            &[
                "/usr/bin/flock",
                "-x",
                "-o",
                owner.to_str().unwrap(),
                "/bin/sleep",
                "600",
            ],
        )
        .unwrap();
    std::fs::write(&owner, format!("epoch {} owner n2 pid 4242\n", epoch + 1)).unwrap();
    wait_until("flock to hold the owner file", || {
        nsm_statd::ownership::Ownership::lock_existing(&s.state_dir).is_err()
    });
    let (rc, err) = s.rc("start");
    assert_eq!(rc, 1);
    assert!(
        err.contains("ocf-exit-reason:takeover of svc1 failed")
            && err.contains("owner n2 pid 4242"),
        "names the holder: {err}"
    );
    assert_eq!(s.state(), 3, "a failed claim holds nothing");
    holder.signal(Signal::Kill).unwrap();
    holder.wait(T).unwrap();
    let (rc, err) = s.rc("start");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(s.rc("stop").0, 0);

    // nsmctl missing: this node only (5), and a probe says stopped.
    let missing = [("nsmctl", "/nonexistent/nsmctl")];
    assert_eq!(s.agent("validate-all", 0, &missing).status.code(), Some(5));
    assert_eq!(s.agent("start", 0, &missing).status.code(), Some(5));
    assert_eq!(s.agent("monitor", 0, &missing).status.code(), Some(7));
    // An instance not in the instance files.
    let other = [("instance", "nosuch")];
    let out = s.agent("validate-all", 0, &other);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no instance file"));
    drop(nsmd);
}

//! Byte compatibility of the store with Debian's nfs-utils 2.6.2, both directions:
//!
//! - the files rpc.statd wrote in the captures (`proto/vectors/`) parse into the expected
//!   records and are reproduced byte for byte;
//! - the real rpc.statd loads, rewrites and removes record files nsmd wrote, and reads nsmd's
//!   state file;
//! - nsmd loads exactly what the real rpc.statd wrote for SM_MON calls, and computes the
//!   state number the way rpc.statd does from the same files;
//! - the real sm-notify retires and notifies from files nsmd wrote.
//!
//! The tests that run real daemons use test hosts (network namespaces with their own rpcbind,
//! `/var/lib/nfs` and hosts file) and skip when the machine cannot make them (see
//! `nsm_testhost::require`).
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nsm_store::{Dir, Record, StateDir};
use nsm_testhost::{Host, Lab, Proc, require, tool_path};

const T: Duration = Duration::from_secs(10);
/// The port rpc.statd listens on inside a test host.
const STATD_PORT: u16 = 32765;

// ---------------------------------------------------------------------------------------
// The captured vectors
// ---------------------------------------------------------------------------------------

/// The disk bytes (`#=` lines after `# disk-bytes:`) and the `# file:` of a vector.
fn disk_bytes(vector: &str) -> (String, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../proto/vectors")
        .join(format!("{vector}.hex"));
    let text = std::fs::read_to_string(&path).unwrap();
    let file = text
        .lines()
        .find_map(|l| l.strip_prefix("# file: "))
        .unwrap()
        .trim()
        .to_owned();
    let mut in_disk = false;
    let mut bytes = Vec::new();
    for line in text.lines() {
        if line.starts_with("# disk-bytes:") {
            in_disk = true;
        } else if let Some(hex) = line.strip_prefix("#=") {
            assert!(in_disk, "{vector}: #= before # disk-bytes:");
            for h in hex.split_whitespace() {
                bytes.push(u8::from_str_radix(h, 16).unwrap());
            }
        } else if in_disk && !bytes.is_empty() {
            break;
        }
    }
    assert!(!bytes.is_empty(), "{vector}: no disk bytes");
    (file, bytes)
}

fn rec(mon: &str, my: &str, vers: u32, priv_: [u8; 16]) -> Record {
    Record {
        mon_name: mon.as_bytes().to_vec(),
        my_name: my.as_bytes().to_vec(),
        my_prog: 100_021,
        my_vers: vers,
        my_proc: 16,
        priv_,
    }
}

fn cookie(first: u8) -> [u8; 16] {
    std::array::from_fn(|i| first + i as u8)
}

/// The two registrations of the captures: `rpcdrv.py call --mon-name client1.example.test
/// --my-name server1 --priv 000102..0f`, then `--mon-name client1 --my-name
/// server1.example.test --priv 202122..2f`.
fn captured_records() -> [Record; 2] {
    [
        rec("client1.example.test", "server1", 3, cookie(0x00)),
        rec("client1", "server1.example.test", 3, cookie(0x20)),
    ]
}

fn parse_file(bytes: &[u8]) -> Vec<Record> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(|l| Record::parse_line(l).unwrap())
        .collect()
}

fn lines_of(records: &[Record]) -> Vec<u8> {
    records.iter().flat_map(Record::to_line).collect()
}

#[test]
fn captured_record_files_parse_and_are_reproduced() {
    let [first, alias] = captured_records();
    let (file, bytes) = disk_bytes("rpc.statd-sm-mon-reply");
    assert_eq!(file, "sm/client1.example.test");
    assert_eq!(parse_file(&bytes), std::slice::from_ref(&first));
    let (file, alias_bytes) = disk_bytes("rpc.statd-sm-mon-alias-reply");
    assert_eq!(file, "sm/client1.example.test");
    assert_eq!(parse_file(&alias_bytes), [first.clone(), alias.clone()]);
    // The address field is the host-endian s_addr: these captures come from x86.
    if cfg!(target_endian = "little") {
        assert_eq!(first.to_line(), bytes);
        assert_eq!(lines_of(&[first.clone(), alias.clone()]), alias_bytes);
        // ...and the store writes exactly those bytes.
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        s.write(Dir::Sm, "client1.example.test", &[first, alias])
            .unwrap();
        assert_eq!(
            std::fs::read(t.path().join("sm/client1.example.test")).unwrap(),
            alias_bytes
        );
        let (loaded, report) = s.load(Dir::Sm).unwrap();
        assert!(report.is_clean());
        assert_eq!(
            loaded
                .into_iter()
                .map(|(f, r)| (f, r.to_line()))
                .collect::<Vec<_>>(),
            parse_file(&alias_bytes)
                .iter()
                .map(|r| ("client1.example.test".to_owned(), r.to_line()))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn captured_state_file_is_what_nsmd_writes() {
    // The capture: rpc.statd created the state file (3), sm-notify bumped it to 5.
    let (file, bytes) = disk_bytes("sm-notify-notify-call");
    assert_eq!(file, "state");
    let t = tempfile::tempdir().unwrap();
    let s = StateDir::open(t.path()).unwrap();
    assert_eq!(s.state(false).unwrap(), 3);
    assert_eq!(s.state(true).unwrap(), 5);
    let state = t.path().join("state");
    if cfg!(target_endian = "little") {
        assert_eq!(std::fs::read(&state).unwrap(), bytes);
    }
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o644);
}

// ---------------------------------------------------------------------------------------
// A raw NSM client (independent of nsmd's RPC code) and helpers for the real daemons
// ---------------------------------------------------------------------------------------

/// Runs `f` on a thread that joined `host`'s network namespace.
fn in_netns<R: Send>(host: &Host, f: impl FnOnce() -> R + Send) -> R {
    host.in_netns(f).unwrap()
}

fn xdr_string(v: &mut Vec<u8>, s: &[u8]) {
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s);
    v.resize(v.len() + (4 - s.len() % 4) % 4, 0);
}

fn xdr_u32(v: &mut Vec<u8>, w: u32) {
    v.extend_from_slice(&w.to_be_bytes());
}

/// `mon_id` (also the start of `mon`).
fn mon_id(r: &Record) -> Vec<u8> {
    let mut v = Vec::new();
    xdr_string(&mut v, &r.mon_name);
    xdr_string(&mut v, &r.my_name);
    for w in [r.my_prog, r.my_vers, r.my_proc] {
        xdr_u32(&mut v, w);
    }
    v
}

/// Calls NSM procedure `proc_` on 127.0.0.1:STATD_PORT over UDP from inside `host`; returns
/// the result words after `accept_stat` SUCCESS.
fn nsm_call(host: &Host, xid: u32, proc_: u32, args: &[u8]) -> Vec<u32> {
    let mut msg = Vec::new();
    for w in [xid, 0, 2, 100_024, 1, proc_, 0, 0, 0, 0] {
        xdr_u32(&mut msg, w);
    }
    msg.extend_from_slice(args);
    let reply = in_netns(host, move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let to: SocketAddr = ([127, 0, 0, 1], STATD_PORT).into();
        s.send_to(&msg, to).unwrap();
        let mut buf = vec![0; 65536];
        let n = s.recv(&mut buf).unwrap();
        buf.truncate(n);
        buf
    });
    let words: Vec<u32> = reply
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        &words[..6],
        &[xid, 1, 0, 0, 0, 0],
        "an accepted SUCCESS reply"
    );
    words[6..].to_vec()
}

/// SM_MON; returns `(res_stat, state)`.
fn sm_mon(host: &Host, xid: u32, r: &Record) -> (u32, u32) {
    let mut args = mon_id(r);
    args.extend_from_slice(&r.priv_);
    let w = nsm_call(host, xid, 2, &args);
    (w[0], w[1])
}

/// SM_UNMON; returns the state.
fn sm_unmon(host: &Host, xid: u32, r: &Record) -> u32 {
    nsm_call(host, xid, 3, &mon_id(r))[0]
}

fn tool(name: &str) -> String {
    tool_path(name).unwrap().display().to_string()
}

/// Starts `rpc.statd -F -d -L -p STATD_PORT` (foreground, debug log, no sm-notify) and waits
/// until it serves.
fn start_statd(host: &Host, name: &str) -> Proc {
    let p = host
        .spawn(
            name,
            &[
                &tool("rpc.statd"),
                "-F",
                "-d",
                "-L",
                "-p",
                &STATD_PORT.to_string(),
            ],
        )
        .unwrap();
    p.wait_for_log_line("Waiting for client connections", T)
        .unwrap();
    p
}

fn log_lines(p: &Proc, pattern: &str) -> Vec<String> {
    p.log()
        .lines()
        .filter(|l| l.contains(pattern))
        .map(str::to_owned)
        .collect()
}

/// `(mode, uid, gid)` of a file.
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn sm_owner(nfs: &Path) -> (u32, u32) {
    let m = std::fs::metadata(nfs.join("sm")).unwrap();
    (m.uid(), m.gid())
}

fn files_in(dir: PathBuf) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Against the real daemons
// ---------------------------------------------------------------------------------------

/// nsmd → rpc.statd: rpc.statd loads every record nsmd wrote (it logs one "Adding record"
/// per line), reads nsmd's state file, and (after dropping privileges to the owner of `sm/`)
/// can still rewrite and remove nsmd's files on SM_UNMON.
#[test]
fn rpc_statd_loads_and_rewrites_what_nsmd_wrote() {
    if !require(
        "rpc_statd_loads_and_rewrites_what_nsmd_wrote",
        &["rpcbind", "rpc.statd"],
    ) {
        return;
    }
    let lab = Lab::new("store-to-statd").unwrap();
    lab.add_name("198.51.100.7", &["client1.example.test", "client1"])
        .unwrap();
    let a = lab.isolated_host("a").unwrap();
    let nfs = a.nfs_dir();
    let s = StateDir::open(&nfs).unwrap();
    let [first, alias] = captured_records();
    let numeric = rec("10.9.9.9", "server1", 4, [0xff; 16]);
    s.write(
        Dir::Sm,
        "client1.example.test",
        &[first.clone(), alias.clone()],
    )
    .unwrap();
    s.write(Dir::Sm, "10.9.9.9", std::slice::from_ref(&numeric))
        .unwrap();
    s.write(
        Dir::Bak,
        "not-loaded",
        &[rec("not-loaded", "server1", 3, [1; 16])],
    )
    .unwrap();
    // Control: the same kind of file, but owned by root (what nsmd would leave without its
    // fchown when it runs as root).
    let control = rec("10.9.9.10", "server1", 4, [0xee; 16]);
    let control_path = nfs.join("sm/10.9.9.10");
    std::fs::write(&control_path, control.to_line()).unwrap();
    std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(s.state(false).unwrap(), 3);
    assert_eq!(s.state(true).unwrap(), 5);
    // nsmd's files carry the owner nfs-utils' files get (the owner of sm/).
    let (uid, gid) = sm_owner(&nfs);
    assert_eq!(
        owner_mode(&nfs.join("sm/client1.example.test")),
        (0o600, uid, gid)
    );

    let _rpcbind = a.start_rpcbind().unwrap();
    let statd = start_statd(&a, "statd");
    let mut added = log_lines(&statd, "Adding record for");
    added.sort();
    assert_eq!(
        added,
        [
            "rpc.statd: Adding record for 10.9.9.10 to the monitor list...",
            "rpc.statd: Adding record for 10.9.9.9 to the monitor list...",
            "rpc.statd: Adding record for client1.example.test to the monitor list...",
            "rpc.statd: Adding record for client1.example.test to the monitor list...",
        ],
        "{}",
        statd.log()
    );
    assert_eq!(
        log_lines(&statd, "Loaded"),
        ["rpc.statd: Loaded 4 previously monitored hosts"]
    );
    assert_eq!(
        log_lines(&statd, "Local NSM state number"),
        ["rpc.statd: Local NSM state number: 5"]
    );
    assert!(log_lines(&statd, "Initializing").is_empty());
    assert_eq!(
        std::fs::read(nfs.join("state")).unwrap(),
        5i32.to_ne_bytes()
    );

    // SM_UNMON of the alias line: rpc.statd (now uid of sm/) rewrites nsmd's file.
    assert_eq!(sm_unmon(&a, 0x5354_0001, &alias), 5);
    assert_eq!(
        std::fs::read(nfs.join("sm/client1.example.test")).unwrap(),
        first.to_line()
    );
    assert_eq!(
        owner_mode(&nfs.join("sm/client1.example.test")),
        (0o640, uid, gid),
        "rpc.statd's rewrite: 0644 & ~umask 007"
    );
    // SM_UNMON of the only line: rpc.statd removes nsmd's file.
    assert_eq!(sm_unmon(&a, 0x5354_0002, &numeric), 5);
    assert!(!nfs.join("sm/10.9.9.9").exists());
    // The root-owned control file cannot be read back by rpc.statd after its privilege drop:
    // the record stays on disk although the UNMON succeeded.
    assert_eq!(sm_unmon(&a, 0x5354_0003, &control), 5);
    statd
        .wait_for_log_line("Failed to delete: could not open original file", T)
        .unwrap();
    assert_eq!(std::fs::read(&control_path).unwrap(), control.to_line());
    std::fs::remove_file(&control_path).unwrap();
    // ...and nsmd reads rpc.statd's rewrite.
    let (loaded, report) = s.load(Dir::Sm).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(loaded, [("client1.example.test".to_owned(), first)]);
    assert!(statd.is_running());
}

/// rpc.statd → nsmd: the files the real rpc.statd writes for SM_MON load into exactly the
/// registrations sent; its state file is what nsmd computes; and nsmd's rewrite of the same
/// records is byte-identical to rpc.statd's file.
#[test]
fn nsmd_loads_what_rpc_statd_wrote() {
    if !require("nsmd_loads_what_rpc_statd_wrote", &["rpcbind", "rpc.statd"]) {
        return;
    }
    let lab = Lab::new("statd-to-store").unwrap();
    lab.add_name("198.51.100.7", &["client1.example.test", "client1"])
        .unwrap();
    let a = lab.isolated_host("a").unwrap();
    let nfs = a.nfs_dir();
    assert!(!nfs.join("state").exists());
    let _rpcbind = a.start_rpcbind().unwrap();
    let statd = start_statd(&a, "statd");

    // rpc.statd creates the state file on an empty directory: 3, 4 bytes, 0644, root.
    assert_eq!(
        log_lines(&statd, "NSM state"),
        [
            "rpc.statd: Initializing NSM state",
            "rpc.statd: Local NSM state number: 3"
        ]
    );
    let state = nfs.join("state");
    assert_eq!(std::fs::read(&state).unwrap(), 3i32.to_ne_bytes());
    assert_eq!(owner_mode(&state), (0o644, 0, 0));
    let before = std::fs::metadata(&state).unwrap().modified().unwrap();
    let s = StateDir::open(&nfs).unwrap();
    assert_eq!(s.state(false).unwrap(), 3);
    assert_eq!(
        std::fs::metadata(&state).unwrap().modified().unwrap(),
        before
    );

    let [first, alias] = captured_records();
    let numeric = rec("10.9.9.9", "server1", 4, [0xff; 16]);
    for (xid, r) in [
        (0x6e73_6d10, &first),
        (0x6e73_6d51, &alias),
        (0x6e73_6d52, &numeric),
    ] {
        assert_eq!(sm_mon(&a, xid, r), (0, 3), "stat_succ, state 3");
    }

    // The capture, reproduced in this lab: the alias went to the canonical name's file.
    let (_, alias_bytes) = disk_bytes("rpc.statd-sm-mon-alias-reply");
    let statd_file = std::fs::read(nfs.join("sm/client1.example.test")).unwrap();
    if cfg!(target_endian = "little") {
        assert_eq!(statd_file, alias_bytes);
    }
    let (uid, gid) = sm_owner(&nfs);
    assert_eq!(
        owner_mode(&nfs.join("sm/client1.example.test")),
        (0o640, uid, gid),
        "appended: rewritten by atomic replace"
    );
    assert_eq!(owner_mode(&nfs.join("sm/10.9.9.9")), (0o600, uid, gid));
    assert_eq!(
        files_in(nfs.join("sm")),
        ["10.9.9.9", "client1.example.test"]
    );

    let (loaded, report) = s.load(Dir::Sm).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        loaded,
        [
            ("10.9.9.9".to_owned(), numeric),
            ("client1.example.test".to_owned(), first.clone()),
            ("client1.example.test".to_owned(), alias.clone()),
        ]
    );
    // nsmd's rewrite of the same records is byte-identical (mode back to 0600).
    s.write(Dir::Sm, "client1.example.test", &[first, alias])
        .unwrap();
    assert_eq!(
        std::fs::read(nfs.join("sm/client1.example.test")).unwrap(),
        statd_file
    );
    assert_eq!(
        owner_mode(&nfs.join("sm/client1.example.test")),
        (0o600, uid, gid)
    );
}

/// The state number: for each starting file, nsmd's `state(false)` returns what rpc.statd
/// reports and leaves the file as rpc.statd leaves it.
#[test]
fn state_number_matches_rpc_statd() {
    if !require("state_number_matches_rpc_statd", &["rpcbind", "rpc.statd"]) {
        return;
    }
    let lab = Lab::new("state-rules").unwrap();
    let a = lab.isolated_host("a").unwrap();
    let _rpcbind = a.start_rpcbind().unwrap();
    let state = a.nfs_dir().join("state");
    let cases: [(&str, &[u8]); 6] = [
        ("even", &8i32.to_ne_bytes()),
        ("odd", &9i32.to_ne_bytes()),
        ("empty (as Debian ships it)", b""),
        ("short", b"\x07\x00"),
        ("long", b"\x0b\x00\x00\x00\x99"),
        ("negative even", &(-4i32).to_ne_bytes()),
    ];
    for (i, (what, content)) in cases.into_iter().enumerate() {
        // nsmd on a copy
        let t = tempfile::tempdir().unwrap();
        let ours = StateDir::open(t.path()).unwrap();
        std::fs::write(t.path().join("state"), content).unwrap();
        let our_state = ours.state(false).unwrap();
        let our_disk = std::fs::read(t.path().join("state")).unwrap();
        // rpc.statd on the original
        std::fs::write(&state, content).unwrap();
        let statd = start_statd(&a, &format!("statd-{i}"));
        let line = format!("rpc.statd: Local NSM state number: {our_state}");
        assert_eq!(
            log_lines(&statd, "Local NSM state number"),
            [line],
            "{what}: {}",
            statd.log()
        );
        assert_eq!(std::fs::read(&state).unwrap(), our_disk, "{what}");
        statd.stop(T).unwrap();
    }
}

/// nsmd → sm-notify: the real sm-notify retires nsmd's `sm/` files, bumps nsmd's state file,
/// notifies the peer they name, and removes them from `sm.bak/`.
#[test]
fn sm_notify_notifies_from_what_nsmd_wrote() {
    if !require(
        "sm_notify_notifies_from_what_nsmd_wrote",
        &["rpcbind", "rpc.statd", "sm-notify"],
    ) {
        return;
    }
    let lab = Lab::new("store-to-sm-notify").unwrap();
    let a = lab.host("a", &["198.51.100.10/24"]).unwrap();
    let b = lab.host("b", &["198.51.100.11/24"]).unwrap();
    let _rpcbind_b = b.start_rpcbind().unwrap();
    let statd_b = start_statd(&b, "statd-b");

    let nfs = a.nfs_dir();
    let s = StateDir::open(&nfs).unwrap();
    s.write(Dir::Sm, "b", &[rec("b", "a", 4, [9; 16])]).unwrap();
    assert_eq!(s.state(false).unwrap(), 3);

    let out = a
        .run(&[&tool("sm-notify"), "-d", "-f"], Duration::from_secs(20))
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    for line in [
        "Retired record for mon_name b",
        "Added host b to notify list",
        "Host b notified successfully",
        "Removing b (b, a) from notify list",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }
    assert!(files_in(nfs.join("sm")).is_empty(), "{log}");
    assert!(files_in(nfs.join("sm.bak")).is_empty(), "notified: {log}");
    assert_eq!(
        std::fs::read(nfs.join("state")).unwrap(),
        5i32.to_ne_bytes()
    );
    assert_eq!(s.state(false).unwrap(), 5);
    statd_b
        .wait_for_log_line("Received SM_NOTIFY from a, state: 5", T)
        .unwrap_or_else(|e| panic!("{e}: sm-notify: {log}\nstatd b: {}", statd_b.log()));
}

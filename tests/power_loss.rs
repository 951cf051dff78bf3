//! Power loss, black-box: nsmd and nsm-notify on `nsm-faultfs`, a FUSE file system that loses,
//! at a cut, every file's data not fsynced and every directory entry (create, rename, unlink)
//! whose directory was not fsynced. Lockd-style callers send SM_MON, SM_UNMON, SM_NOTIFY,
//! SM_STAT and now and then SM_SIMU_CRASH (a notify run) over TCP on loopback; the power is
//! cut at a random point; nsmd restarts (running nsm-notify, as at boot) on what survived.
//! After each cut the disk is checked with the test's own parser:
//!
//! - every SM_MON acknowledged before the cut is in `sm/` (or in `sm.bak/`, moved there by a
//!   notify run);
//! - no SM_UNMON acknowledged before the cut comes back in `sm/`;
//! - the state number is at least every number a reply carried, and never goes back;
//! - every record file parses (none empty, torn or half-written);
//! - `sm.bak/` keeps every peer it held (none of these peers can acknowledge: their names do
//!   not resolve);
//! - after the restart no temporary file of an interrupted write is left in `sm/`.
//!
//! Random but replayable: the seed is printed; `NSMD_POWER_SEED=N` replays its choices (which
//! operations, when the cut comes; the interleaving of threads still varies), and
//! `NSMD_POWER_CUTS=N` sets the number of cuts (200 by default).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Answer, LockdStandIn, NSMD, XorShift, answer, call, mon_args, xdr_string};
use nsm_faultfs::FaultFs;
use nsm_testhost::{Host, Lab, Proc, require};

const SM: u32 = 100_024;
const NSMCTL: &str = env!("CARGO_BIN_EXE_nsmctl");
/// The service instance's address (on the host's loopback).
const SVC_ADDR: &str = "192.0.2.77";
const T: Duration = Duration::from_secs(20);
const CALLERS: u32 = 6;
const KEYS_PER_CALLER: u32 = 6;

/// One record line as nfs-utils reads it: (mon_name, my_name, cookie).
type Line = (String, String, [u8; 16]);

/// Parses a record file: every line `%08x %08x %08x %08x <32 hex> <mon_name> <my_name>\n`.
fn parse_file(bytes: &[u8]) -> Result<Vec<Line>, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let mut out = Vec::new();
    for l in bytes.split_inclusive(|&b| b == b'\n') {
        let bad = |why: &str| format!("{why}: {:?}", String::from_utf8_lossy(l));
        let l = l.strip_suffix(b"\n").ok_or_else(|| bad("no newline"))?;
        let s = std::str::from_utf8(l).map_err(|_| bad("not UTF-8"))?;
        let f: Vec<&str> = s.split(' ').filter(|f| !f.is_empty()).collect();
        if f.len() != 7 || f[..4].iter().any(|w| w.len() != 8) || f[4].len() != 32 {
            return Err(bad("malformed"));
        }
        for w in &f[..5] {
            if !w.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("not hex"));
            }
        }
        if f[1] != "000186b5" || f[2] != "00000003" || f[3] != "00000010" {
            return Err(bad("not lockd's program, version, procedure"));
        }
        let mut c = [0u8; 16];
        for (i, b) in c.iter_mut().enumerate() {
            *b = u8::from_str_radix(&f[4][i * 2..i * 2 + 2], 16).unwrap();
        }
        out.push((f[5].to_owned(), f[6].to_owned(), c));
    }
    Ok(out)
}

/// What one record directory holds: the lines of its record files, its dot names, and the
/// files that do not parse.
#[derive(Debug, Default)]
struct Listing {
    lines: BTreeSet<Line>,
    dot: Vec<String>,
    bad: Vec<(String, String)>,
}

impl Listing {
    /// The peers (mon_names) it lists.
    fn peers(&self) -> BTreeSet<String> {
        self.lines.iter().map(|l| l.0.clone()).collect()
    }
}

fn list(dir: &Path) -> Listing {
    let mut l = Listing::default();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return l;
    };
    for e in rd {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.starts_with('.') {
            l.dot.push(name);
            continue;
        }
        let mut bytes = Vec::new();
        File::open(e.path())
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        match parse_file(&bytes) {
            Ok(lines) => {
                for line in lines {
                    if line.0 != name {
                        l.bad.push((name.clone(), format!("line for {}", line.0)));
                    }
                    l.lines.insert(line);
                }
            }
            Err(e) => l.bad.push((name, e)),
        }
    }
    l.dot.sort();
    l
}

/// nsmd's log lines that name `name` and the notify runs, for failure messages.
fn mentions(p: &Proc, name: &str) -> String {
    p.log()
        .lines()
        .filter(|l| {
            l.contains(name)
                || l.contains("SIMU")
                || l.contains("notify")
                || l.contains("retire")
                || l.contains("sm.bak")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path under `dir`, for failure messages.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
        }
    }
    out.sort();
    out
}

fn read_state(dir: &Path) -> Option<i32> {
    let b = std::fs::read(dir.join("state")).ok()?;
    Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

/// What the test knows of one mon_name (each is used by one caller only, so its operations
/// are in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// The last acknowledged operation was SM_MON with this cookie, and none is in flight.
    Monitored([u8; 16]),
    /// The last acknowledged operation was SM_UNMON, and none is in flight.
    Unmonitored,
    /// Never used, or an operation was in flight at the cut.
    Unknown,
}

fn unmon_args(mon_name: &str) -> Vec<u8> {
    let mut v = xdr_string(mon_name.as_bytes());
    v.extend(xdr_string(b"srv"));
    for w in [100_021u32, 3, 16] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

fn tcp_call(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut rec = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(msg);
    s.write_all(&rec)?;
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr)?;
    let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
    let mut body = vec![0; len];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// One caller: random operations on its own mon_names until `stop` or an error (the cut).
fn caller(
    to: SocketAddr,
    t: u32,
    seed: u64,
    stop: &AtomicBool,
    keys: &Mutex<BTreeMap<String, Key>>,
    max_state: &AtomicI32,
) -> u64 {
    let mut rng = XorShift(seed | 1);
    let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
        return 0;
    };
    c.set_read_timeout(Some(T)).unwrap();
    c.set_nodelay(true).unwrap();
    let mut done = 0;
    let mut xid = t << 24;
    while !stop.load(Ordering::Relaxed) {
        xid += 1;
        let k = rng.next() % u64::from(KEYS_PER_CALLER);
        let name = format!("c{t}-{k}");
        let roll = rng.next() % 100;
        let (msg, after) = if roll < 55 {
            let mut ck = [0u8; 16];
            ck[..8].copy_from_slice(&rng.next().to_be_bytes());
            ck[8..12].copy_from_slice(&xid.to_be_bytes());
            let m = call(xid, SM, 1, 2, &mon_args(name.as_bytes(), b"srv", ck));
            (m, Some(Key::Monitored(ck)))
        } else if roll < 85 {
            (
                call(xid, SM, 1, 3, &unmon_args(&name)),
                Some(Key::Unmonitored),
            )
        } else if roll < 95 {
            // SM_NOTIFY from this peer: nsmd calls lockd back if it is monitored.
            let mut a = xdr_string(name.as_bytes());
            a.extend_from_slice(&(rng.next() as i32 | 1).to_be_bytes());
            (call(xid, SM, 1, 6, &a), None)
        } else {
            (call(xid, SM, 1, 1, &xdr_string(b"localhost")), None)
        };
        if after.is_some() {
            keys.lock().unwrap().insert(name.clone(), Key::Unknown);
        }
        let Ok(r) = tcp_call(&mut c, &msg) else {
            break;
        };
        let words = match answer(xid, &r) {
            Answer::Accepted(0, w) => w,
            other => panic!("{name}: not accepted: {other:?}"),
        };
        match after {
            Some(Key::Monitored(_)) => {
                assert_eq!(words.first(), Some(&0), "SM_MON {name} refused: {words:?}");
                max_state.fetch_max(words[1] as i32, Ordering::SeqCst);
            }
            Some(_) => {
                max_state.fetch_max(words[0] as i32, Ordering::SeqCst);
            }
            None => {}
        }
        if let Some(k) = after {
            keys.lock().unwrap().insert(name, k);
        }
        done += 1;
    }
    done
}

/// SM_SIMU_CRASH from a privileged loopback port (the node's notify run); whether it was
/// acknowledged.
fn simu_crash(to: SocketAddr, port: u16) -> bool {
    let Ok(s) = UdpSocket::bind(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&call(0x5c, SM, 1, 5, &[]), to).unwrap();
    let mut buf = [0u8; 512];
    s.recv(&mut buf)
        .is_ok_and(|n| answer(0x5c, &buf[..n]) == Answer::Accepted(0, vec![]))
}

/// Starts nsmd with its notification at start (nsm-notify: `sm/` to `sm.bak/`, state + 2),
/// as after a boot; returns it and its port.
fn start(host: &Host, dir: &Path, instances: &Path, n: u64) -> (Proc, u16) {
    let (d, i) = (dir.to_str().unwrap(), instances.to_str().unwrap());
    let p = host
        .spawn(
            &format!("nsmd-{n}"),
            &[
                NSMD,
                "-F",
                "-d",
                "-P",
                d,
                "--proc-root",
                "/run/proc",
                "--instances",
                i,
            ],
        )
        .unwrap();
    let line = p
        .wait_for_log_line("serving program 100024 version 1 on", T)
        .unwrap_or_else(|e| panic!("nsmd does not start after cut {n}: {e}\n{}", p.log_tail(30)));
    let port = line
        .split("udp 0.0.0.0:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (p, port)
}

/// `nsmctl --json ARGS` in the host: the JSON answer, or `None` when it failed (cut off).
fn ctl(host: &Host, args: &[&str]) -> Option<serde_json::Value> {
    let mut argv = vec![NSMCTL, "--json"];
    argv.extend_from_slice(args);
    let out = host.run(&argv, T).ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// A takeover of the service instance and, if `release`, its release; records the state and
/// epoch each acknowledged takeover announced. Returns how many were acknowledged.
fn takeover_release(
    host: &Host,
    release: bool,
    svc_state: &AtomicI32,
    svc_epoch: &AtomicU64,
) -> u64 {
    let Some(v) = ctl(host, &["takeover", "svc"]) else {
        return 0;
    };
    let state = v["state"].as_i64().unwrap() as i32;
    svc_state.fetch_max(state, Ordering::SeqCst);
    if let Some(st) = ctl(host, &["status"]) {
        if let Some(e) = st["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == "svc"))
            .and_then(|i| i["epoch"].as_u64())
        {
            svc_epoch.fetch_max(e, Ordering::SeqCst);
        }
    }
    if release {
        let _ = ctl(host, &["release", "svc"]);
    }
    1
}

/// The epoch of a service instance's ownership file (`epoch N owner ...`), `None` without one.
fn read_epoch(dir: &Path) -> Option<u64> {
    let t = std::fs::read_to_string(dir.join(".nsmd-owner")).ok()?;
    Some(
        t.split_whitespace()
            .skip_while(|w| *w != "epoch")
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or(0),
    )
}

/// Kills every process of the host but rpcbind (nsmd and its nsm-notify) and waits until each
/// is gone or a zombie (its system calls finished).
fn kill_all(host: &Host, keep: u32) {
    let pids: Vec<u32> = host.pids().into_iter().filter(|&p| p != keep).collect();
    for &p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + T;
    for p in pids {
        loop {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let alive = status
                .lines()
                .find(|l| l.starts_with("State:"))
                .is_some_and(|l| !l.contains('Z'));
            if !alive {
                break;
            }
            assert!(Instant::now() < deadline, "process {p} survives SIGKILL");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn power_cuts_lose_nothing_acknowledged() {
    let name = "power_cuts_lose_nothing_acknowledged";
    if !require(name, &["rpcbind"]) || !nsm_faultfs::require(name) {
        return;
    }
    let cuts: u64 = std::env::var("NSMD_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("NSMD_POWER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("power cuts: {cuts} cuts, seed {seed} (replay with NSMD_POWER_SEED={seed})");
    let started = Instant::now();

    let tmp = tempfile::Builder::new()
        .prefix("nsm-power-")
        .tempdir()
        .unwrap();
    let mnt = tmp.path().join("disk");
    std::fs::create_dir(&mnt).unwrap();
    // Mounted before the host is made: the host's mount namespace gets a copy of the mount.
    let fs = FaultFs::mount(&mnt).unwrap();
    let lab = Lab::new("power").unwrap();
    let srv = lab.isolated_host("srv").unwrap();
    let rpcbind = srv.start_rpcbind().unwrap();
    let _lockd = LockdStandIn::start(&srv, true);
    srv.write_file("/run/proc/sys/fs/nfs/nsm_local_state", "0")
        .unwrap();
    // The service instance: its state directory on the same disk (made by the operator,
    // durable), its address on the host's loopback.
    let svc = mnt.join("svc");
    std::fs::create_dir(&svc).unwrap();
    fs.sync_all();
    let instances = tmp.path().join("instances");
    std::fs::create_dir(&instances).unwrap();
    std::fs::write(
        instances.join("svc.toml"),
        format!(
            "hostname = \"svc.power.test\"\naddresses = [\"{SVC_ADDR}\"]\nstate_dir = \"{}\"\n\
             [notify]\nretry_seconds = 30\n[readiness]\nrpcbind = [100021]\ntimeout_seconds = 10\n\
             [release]\nexports = [\"/export/svc\"]\n",
            svc.display()
        ),
    )
    .unwrap();
    srv.run_ok(
        &["ip", "addr", "add", &format!("{SVC_ADDR}/32"), "dev", "lo"],
        T,
    )
    .unwrap();
    for f in ["fs/nfsd/unlock_ip", "fs/nfsd/unlock_filesystem"] {
        srv.write_file(&format!("/run/proc/{f}"), "").unwrap();
    }
    let markers = srv.outside_path("/run/nsmd/instances").unwrap();
    let dir = mnt.join("nfs");
    let (sm, bak) = (dir.join("sm"), dir.join("sm.bak"));

    // What was acknowledged before the cut, and the highest state number a reply carried.
    let keys: Mutex<BTreeMap<String, Key>> = Mutex::new(BTreeMap::new());
    let max_state = AtomicI32::new(0);
    let (svc_state, svc_epoch) = (AtomicI32::new(0), AtomicU64::new(0));
    let (mut last_svc_state, mut last_svc_epoch) = (0, 0);
    let mut takeovers = 0u64;
    let mut last_state = 0;
    let mut ops = 0u64;
    let mut crashes = 0u64;
    let mut removed_logged = 0usize;
    let mut temps_after_cut = 0usize;
    let mut monitored_at_cut = 0usize;
    for n in 0..cuts {
        let mut rng = XorShift((seed ^ (n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        // A new boot: a new boot id (nsm-notify bumps the state once per boot), /run empty.
        srv.write_file(
            "/run/proc/sys/kernel/random/boot_id",
            format!("{:016x}{:016x}\n", rng.next(), rng.next()),
        )
        .unwrap();
        // A reboot empties /run: no instance resumes.
        let _ = std::fs::remove_dir_all(&markers);
        let bak_before = list(&bak);
        let (nsmd, port) = start(&srv, &dir, &instances, n);
        let to: SocketAddr = ([127, 0, 0, 1], port).into();

        // After the restart: the interrupted writes' temps are gone from sm/, nothing skipped.
        let after = list(&sm);
        let temps: Vec<_> = after.dot.iter().filter(|d| d.ends_with(".new")).collect();
        assert!(
            temps.is_empty(),
            "seed {seed} cut {n}: temporary files left in sm/ after the restart: {temps:?}\n{}",
            nsmd.log_tail(30)
        );
        let log = nsmd.log();
        assert!(
            !log.contains("skipped"),
            "seed {seed} cut {n}: a record file was skipped at start:\n{}",
            nsmd.log_tail(30)
        );
        removed_logged += log
            .matches("temporary file of an interrupted write removed")
            .count();
        // sm.bak/ keeps every peer it had (none of them can acknowledge).
        let bak_now = list(&bak);
        let lost: Vec<_> = bak_before
            .peers()
            .difference(&bak_now.peers())
            .cloned()
            .collect();
        assert!(
            lost.is_empty(),
            "seed {seed} cut {n}: sm.bak/ lost peers at the restart: {lost:?}"
        );

        // The workload, cut at a random point.
        let stop = AtomicBool::new(false);
        let delay = Duration::from_millis(rng.next() % 120);
        let crash_at = (rng.next() % 4 == 0).then(|| Duration::from_millis(rng.next() % 100));
        let crash_port = 600 + (rng.next() % 400) as u16;
        // Half the cuts lose the directory entries not fsynced too, half only file data.
        let strict = rng.next() % 2 == 0;
        // Half the runs take the service instance over (and half of those release it).
        let svc_run = (rng.next() % 2 == 0)
            .then(|| (rng.next() % 2 == 0, Duration::from_millis(rng.next() % 80)));
        let seeds: Vec<u64> = (0..CALLERS).map(|_| rng.next()).collect();
        let ns = File::open(srv.netns_path()).unwrap();
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            for t in 0..CALLERS {
                let (stop, keys, max_state, ns, seed) =
                    (&stop, &keys, &max_state, &ns, seeds[t as usize]);
                handles.push(s.spawn(move || {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    caller(to, t, seed, stop, keys, max_state)
                }));
            }
            let (srv, svc_state, svc_epoch) = (&srv, &svc_state, &svc_epoch);
            let svc_thread = svc_run.map(|(release, at)| {
                s.spawn(move || {
                    std::thread::sleep(at);
                    takeover_release(srv, release, svc_state, svc_epoch)
                })
            });
            let crash = crash_at.map(|at| {
                let ns = &ns;
                s.spawn(move || {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    std::thread::sleep(at);
                    simu_crash(to, crash_port)
                })
            });
            std::thread::sleep(delay);
            kill_all(srv, rpcbind.pid());
            if strict {
                fs.cut_power();
            } else {
                fs.cut_power_keeping_entries();
            }
            stop.store(true, Ordering::Relaxed);
            for h in handles {
                ops += h.join().unwrap();
            }
            if let Some(t) = svc_thread {
                takeovers += t.join().unwrap();
            }
            if let Some(c) = crash {
                crashes += u64::from(c.join().unwrap());
            }
        });
        let _ = nsmd.wait(T);

        // What survived.
        let (sm_now, bak_now) = (list(&sm), list(&bak));
        temps_after_cut += sm_now.dot.iter().filter(|d| d.ends_with(".new")).count();
        for (l, what) in [(&sm_now, "sm/"), (&bak_now, "sm.bak/")] {
            assert!(
                l.bad.is_empty(),
                "seed {seed} cut {n}: corrupt record files in {what}: {:?}",
                l.bad
            );
        }
        let keys_now = keys.lock().unwrap().clone();
        for (name, k) in &keys_now {
            match k {
                Key::Monitored(c) => {
                    monitored_at_cut += 1;
                    let line = (name.clone(), "srv".to_owned(), *c);
                    assert!(
                        sm_now.lines.contains(&line) || bak_now.lines.contains(&line),
                        "seed {seed} cut {n}: acknowledged SM_MON of {name} lost; sm/ has {:?}; \
                         on disk: {:?}\n{}",
                        sm_now
                            .lines
                            .iter()
                            .filter(|l| &l.0 == name)
                            .collect::<Vec<_>>(),
                        tree(&mnt),
                        mentions(&nsmd, name)
                    );
                }
                Key::Unmonitored => {
                    let back: Vec<_> = sm_now.lines.iter().filter(|l| &l.0 == name).collect();
                    assert!(
                        back.is_empty(),
                        "seed {seed} cut {n}: acknowledged SM_UNMON of {name} came back: {back:?}\n{}",
                        mentions(&nsmd, name)
                    );
                }
                Key::Unknown => {}
            }
        }
        // The service instance's state and epoch never go back.
        let (seen_state, seen_epoch) = (
            svc_state.load(Ordering::SeqCst),
            svc_epoch.load(Ordering::SeqCst),
        );
        if seen_state > 0 || last_svc_state > 0 {
            let st = read_state(&svc).unwrap_or(0);
            assert!(
                st >= seen_state && st >= last_svc_state,
                "seed {seed} cut {n}: the service instance's state went back to {st} (takeovers \
                 announced {seen_state}, the file held {last_svc_state})"
            );
            last_svc_state = st;
        }
        if seen_epoch > 0 || last_svc_epoch > 0 {
            let e = read_epoch(&svc).unwrap_or(0);
            assert!(
                e >= seen_epoch && e >= last_svc_epoch,
                "seed {seed} cut {n}: the owner epoch went back to {e} (acknowledged {seen_epoch}, \
                 the file held {last_svc_epoch}): {:?}",
                std::fs::read(svc.join(".nsmd-owner"))
            );
            last_svc_epoch = e;
        }
        let svc_files = (list(&svc.join("sm")), list(&svc.join("sm.bak")));
        assert!(
            svc_files.0.bad.is_empty() && svc_files.1.bad.is_empty(),
            "seed {seed} cut {n}: corrupt record files in the service instance: {svc_files:?}"
        );
        let state = read_state(&dir);
        let seen = max_state.load(Ordering::SeqCst);
        if seen > 0 || last_state > 0 {
            let state = state.unwrap_or_else(|| {
                panic!("seed {seed} cut {n}: the state file is gone (it was {last_state})")
            });
            assert!(
                state >= seen && state >= last_state,
                "seed {seed} cut {n}: the state went back to {state} (replies carried {seen}, \
                 the file held {last_state})"
            );
            last_state = state;
        }
        // A peer in sm.bak/ stays there until it acknowledges: none of these can.
        let lost: Vec<_> = bak_before
            .peers()
            .difference(&bak_now.peers())
            .cloned()
            .collect();
        assert!(
            lost.is_empty(),
            "seed {seed} cut {n}: sm.bak/ lost peers: {lost:?}"
        );
    }
    drop(srv);
    drop(lab);
    drop(fs);
    eprintln!(
        "power cuts: {cuts} cuts (seed {seed}), {ops} operations acknowledged, {crashes} \
         SM_SIMU_CRASH notify runs, {takeovers} takeovers (last state {last_svc_state}, epoch \
         {last_svc_epoch}), {monitored_at_cut} monitored peers checked at cuts, \
         {temps_after_cut} temporary files found after cuts and {removed_logged} removed at \
         start, final state {last_state}; {:.1?}",
        started.elapsed()
    );
}

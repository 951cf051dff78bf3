//! Persistence, black-box: what nsmd keeps on disk survives switching to and from Debian's
//! rpc.statd, `kill -9` under load, a hundred restarts, and hostile files in `sm/`. Every
//! test runs the real binaries in test hosts (network namespaces, root only) and reads the
//! record files with its own parser (the nfs-utils line format by offsets), so it checks
//! nsmd rather than agreeing with it.
//!
//! Also here: the state number with Debian's default ownership (`/var/lib/nfs` root's, `sm/`
//! statd's, so nsmd drops privileges). Not here yet: the HA callout (`-H`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Answer, LockdStandIn, answer, call, in_netns, mon_args, parse_status, spawn_nsmd, tcp_exchange,
    udp_exchange, xdr_string,
};
use nsm_testhost::{Host, Lab, Proc, Signal, require, tool_path};

const T: Duration = Duration::from_secs(10);
const SM: u32 = 100_024;
/// The port Debian's rpc.statd listens on inside a test host.
const STATD_PORT: u16 = 32765;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A cookie nobody else uses: `tag`, then `a` and `b` big-endian, then a pattern.
fn cookie(tag: u8, a: u32, b: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = tag;
    c[1..5].copy_from_slice(&a.to_be_bytes());
    c[5..9].copy_from_slice(&b.to_be_bytes());
    for (i, x) in c[9..].iter_mut().enumerate() {
        *x = (a as u8) ^ (b as u8).rotate_left(3) ^ (0x5a + i as u8);
    }
    c
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// One record line, read the way nfs-utils' `nsm_parse_line` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    prog: u32,
    vers: u32,
    proc_: u32,
    cookie: [u8; 16],
    mon_name: String,
    my_name: String,
}

/// Parses one line: four `%08x ` words, 32 hex digits of cookie at column 36, a space,
/// mon_name up to the next space, spaces, my_name to the end of the line; `\n` at the end.
fn parse_line(l: &[u8]) -> Result<Line, String> {
    let bad = |why: &str| format!("{why}: {:?}", String::from_utf8_lossy(l));
    let l = l.strip_suffix(b"\n").ok_or_else(|| bad("no newline"))?;
    if l.len() < 71 {
        return Err(bad("too short"));
    }
    let word = |i: usize| -> Result<u32, String> {
        if l[i * 9 + 8] != b' ' {
            return Err(bad("no space after a word"));
        }
        let s = std::str::from_utf8(&l[i * 9..i * 9 + 8]).map_err(|_| bad("word"))?;
        u32::from_str_radix(s, 16).map_err(|_| bad("word"))
    };
    let (_addr, prog, vers, proc_) = (word(0)?, word(1)?, word(2)?, word(3)?);
    let mut c = [0u8; 16];
    for (i, x) in c.iter_mut().enumerate() {
        let s = std::str::from_utf8(&l[36 + 2 * i..38 + 2 * i]).map_err(|_| bad("cookie"))?;
        *x = u8::from_str_radix(s, 16).map_err(|_| bad("cookie"))?;
    }
    if l[68] != b' ' {
        return Err(bad("no space after the cookie"));
    }
    let rest = std::str::from_utf8(&l[69..]).map_err(|_| bad("names"))?;
    let (mon, my) = rest.split_once(' ').ok_or_else(|| bad("no my_name"))?;
    Ok(Line {
        prog,
        vers,
        proc_,
        cookie: c,
        mon_name: mon.to_owned(),
        my_name: my.trim_start_matches(' ').to_owned(),
    })
}

/// The lines of a record file (every line must parse).
fn parse_file(bytes: &[u8]) -> Result<Vec<Line>, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(parse_line)
        .collect()
}

/// Every record file of `sm/` as nfs-utils would load it: regular files whose name does not
/// start with a dot, one entry per file. Returns (records by file, names of dot files).
#[allow(clippy::type_complexity)]
fn read_sm(sm: &Path) -> (BTreeMap<String, Result<Vec<Line>, String>>, Vec<String>) {
    let mut files = BTreeMap::new();
    let mut dot = Vec::new();
    for e in std::fs::read_dir(sm).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.starts_with('.') {
            dot.push(name);
            continue;
        }
        if !e.file_type().unwrap().is_file() {
            continue;
        }
        files.insert(name, parse_file(&std::fs::read(e.path()).unwrap()));
    }
    dot.sort();
    (files, dot)
}

/// The line SM_MON from lockd (100021/3/16) should leave.
fn lockd_line(mon_name: &str, my_name: &str, c: [u8; 16]) -> Line {
    Line {
        prog: 100_021,
        vers: 3,
        proc_: 16,
        cookie: c,
        mon_name: mon_name.to_owned(),
        my_name: my_name.to_owned(),
    }
}

fn succ(state: i32) -> Answer {
    Answer::Accepted(0, vec![0, state as u32])
}

/// SM_STAT over UDP: the state number.
fn stat_state(to: SocketAddr) -> i32 {
    let m = call(77, SM, 1, 1, &xdr_string(b"localhost"));
    match answer(77, &udp_exchange(to, &m).expect("SM_STAT answered")) {
        Answer::Accepted(0, w) if w.len() == 2 => w[1] as i32,
        other => panic!("SM_STAT: {other:?}"),
    }
}

/// SM_MON (callback 100021/3/16) over UDP or TCP.
fn mon(to: SocketAddr, tcp: bool, xid: u32, name: &str, my: &str, c: [u8; 16]) -> Answer {
    let m = call(xid, SM, 1, 2, &mon_args(name.as_bytes(), my.as_bytes(), c));
    let r = if tcp {
        tcp_exchange(to, &m)
    } else {
        udp_exchange(to, &m)
    };
    answer(xid, &r.expect("SM_MON answered"))
}

/// SM_NOTIFY over UDP; the reply must be void.
fn notify(to: SocketAddr, xid: u32, name: &str, state: i32) {
    let mut a = xdr_string(name.as_bytes());
    a.extend_from_slice(&state.to_be_bytes());
    let r = udp_exchange(to, &call(xid, SM, 1, 6, &a)).expect("SM_NOTIFY answered");
    assert_eq!(
        answer(xid, &r),
        Answer::Accepted(0, vec![]),
        "SM_NOTIFY {name}"
    );
}

/// The callbacks received as (mon_name, state, cookie), sorted; each must come from a
/// privileged loopback port and be NLM version 3, procedure 16.
fn callbacks(lockd: &LockdStandIn, n: usize, wait: Duration) -> Vec<(String, i32, [u8; 16])> {
    let got = lockd.wait_for(n, wait);
    let mut v: Vec<_> = got
        .iter()
        .map(|(from, vers, proc_, args)| {
            assert!(
                from.ip().is_loopback() && from.port() < 1024,
                "callback from {from}"
            );
            assert_eq!((*vers, *proc_), (3, 16), "NLM version and procedure");
            let (name, state, c) = parse_status(args);
            (String::from_utf8(name).unwrap(), state, c)
        })
        .collect();
    v.sort();
    v
}

/// `records=N` of nsmd's "instance ready" log line.
fn records_loaded(p: &Proc) -> usize {
    let line = p.wait_for_log_line("instance ready", T).unwrap();
    line.split("records")
        .nth(1)
        .map(|r| r.trim_start_matches([' ', '=']))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {line:?}"))
}

/// Starts nsmd on `dir` (inside the host) with its kernel files under `/run/proc`.
fn start_nsmd(host: &Host, name: &str, dir: &str) -> (Proc, u16) {
    host.write_file("/run/proc/sys/fs/nfs/nsm_local_state", "0")
        .unwrap();
    spawn_nsmd(host, name, &["-P", dir, "--proc-root", "/run/proc"])
}

/// Starts Debian's `rpc.statd -F -d -L -p STATD_PORT -P dir` and waits until it serves.
fn start_statd(host: &Host, name: &str, dir: &str) -> Proc {
    let statd = tool_path("rpc.statd").unwrap().display().to_string();
    let port = STATD_PORT.to_string();
    let p = host
        .spawn(
            name,
            &[statd.as_str(), "-F", "-d", "-L", "-p", &port, "-P", dir],
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

/// Stops a daemon with SIGTERM and asserts a clean exit.
fn stop_clean(p: &Proc) {
    let st = p.stop(T).unwrap();
    assert!(
        st.success(),
        "{} exited {st:?}: {}",
        p.name(),
        p.log_tail(20)
    );
}

// ---------------------------------------------------------------------------------------
// 1. rpc.statd <-> nsmd on one state directory
// ---------------------------------------------------------------------------------------

/// Switching between Debian's rpc.statd and nsmd on the same state directory, in both
/// directions, loses no record: what rpc.statd recorded, nsmd loads and calls lockd back
/// with (exact cookies); what nsmd recorded, rpc.statd loads and calls lockd back with; at
/// the end all four records are in `sm/` and parse.
#[test]
fn state_directory_interop_with_rpc_statd_both_ways() {
    if !require(
        "state_directory_interop_with_rpc_statd_both_ways",
        &["rpcbind", "rpcinfo", "rpc.statd"],
    ) {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new("interop").unwrap();
    let peers = [
        "peer1.example.test",
        "peer2.example.test",
        "peer3.example.test",
        "peer4.example.test",
    ];
    for (i, p) in peers.iter().enumerate() {
        lab.add_name(&format!("198.51.100.{}", 91 + i), &[p])
            .unwrap();
    }
    let srv = lab.host("srv", &["198.51.100.80/24"]).unwrap();
    let cli = lab.host("cli", &["198.51.100.81/24"]).unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    let lockd = LockdStandIn::start(&srv, true);

    // The shared directory, owned like the system's sm/ (rpc.statd drops to its owner).
    let dir = "/var/lib/nfs/shared";
    let base = srv.outside_path(dir).unwrap();
    let sys_sm = std::fs::metadata(srv.nfs_dir().join("sm")).unwrap();
    for d in ["sm", "sm.bak"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
        chown(base.join(d), Some(sys_sm.uid()), Some(sys_sm.gid())).unwrap();
    }
    let sm = base.join("sm");
    let cookies: Vec<[u8; 16]> = (0..4).map(|i| cookie(0xa0 + i as u8, i, 7)).collect();
    let local: SocketAddr = ([127, 0, 0, 1], STATD_PORT).into();

    // a. rpc.statd records peer1 and peer2.
    let statd = start_statd(&srv, "statd-1", dir);
    let state = in_netns(&srv, || {
        let state = stat_state(local);
        for i in 0..2 {
            let r = mon(local, false, 0x100 + i as u32, peers[i], "srv", cookies[i]);
            assert_eq!(
                r,
                succ(state),
                "rpc.statd SM_MON {}: {}",
                peers[i],
                statd.log_tail(20)
            );
        }
        state
    });
    stop_clean(&statd);
    let (files, _) = read_sm(&sm);
    for i in 0..2 {
        assert_eq!(
            files.get(peers[i]),
            Some(&Ok(vec![lockd_line(peers[i], "srv", cookies[i])])),
            "what rpc.statd wrote for {}",
            peers[i]
        );
    }

    // nsmd on the same directory: loads both, and an SM_NOTIFY from the client's host for
    // each calls lockd back with rpc.statd's cookies.
    let (nsmd, port) = start_nsmd(&srv, "nsmd-1", dir);
    assert_eq!(records_loaded(&nsmd), 2, "{}", nsmd.log());
    assert!(log_lines(&nsmd, "skipped").is_empty(), "{}", nsmd.log());
    assert!(
        log_lines(&nsmd, "interrupted write").is_empty(),
        "{}",
        nsmd.log()
    );
    nsmd.wait_for_log_line("registered program 100024", T)
        .unwrap();
    let nsmd_local: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(
        in_netns(&srv, || stat_state(nsmd_local)),
        state,
        "same state number"
    );
    let remote: SocketAddr = format!("198.51.100.80:{port}").parse().unwrap();
    in_netns(&cli, || {
        notify(remote, 0x200, peers[0], 11);
        notify(remote, 0x201, peers[1], 13);
    });
    assert_eq!(
        callbacks(&lockd, 2, T),
        [
            (peers[0].to_owned(), 11, cookies[0]),
            (peers[1].to_owned(), 13, cookies[1]),
        ],
        "nsmd calls lockd back with rpc.statd's records: {}",
        nsmd.log_tail(30)
    );

    // b. nsmd records peer3 and peer4 (TCP, as the kernel sends them), then rpc.statd takes
    // the directory back.
    in_netns(&srv, || {
        for i in 2..4 {
            let r = mon(
                nsmd_local,
                true,
                0x300 + i as u32,
                peers[i],
                "srv",
                cookies[i],
            );
            assert_eq!(r, succ(state), "nsmd SM_MON {}", peers[i]);
        }
    });
    stop_clean(&nsmd);
    let statd = start_statd(&srv, "statd-2", dir);
    let mut added = log_lines(&statd, "Adding record for");
    added.sort();
    let want: Vec<String> = peers
        .iter()
        .map(|p| format!("rpc.statd: Adding record for {p} to the monitor list..."))
        .collect();
    assert_eq!(added, want, "{}", statd.log());
    assert_eq!(
        log_lines(&statd, "Loaded"),
        ["rpc.statd: Loaded 4 previously monitored hosts"],
        "{}",
        statd.log()
    );
    in_netns(&cli, || {
        let remote: SocketAddr = ([198, 51, 100, 80], STATD_PORT).into();
        notify(remote, 0x400, peers[2], 21);
        notify(remote, 0x401, peers[3], 23);
    });
    let got = callbacks(&lockd, 4, T);
    assert_eq!(got.len(), 4, "rpc.statd: {}", statd.log_tail(30));
    assert_eq!(
        got[2..],
        [
            (peers[2].to_owned(), 21, cookies[2]),
            (peers[3].to_owned(), 23, cookies[3]),
        ],
        "rpc.statd calls lockd back with nsmd's records"
    );
    assert_eq!(
        in_netns(&srv, || stat_state(local)),
        state,
        "same state number"
    );
    stop_clean(&statd);

    // c. All four records are on disk and parse; nothing else is there.
    let (files, dot) = read_sm(&sm);
    let want: BTreeMap<String, Result<Vec<Line>, String>> = peers
        .iter()
        .zip(&cookies)
        .map(|(p, c)| ((*p).to_owned(), Ok(vec![lockd_line(p, "srv", *c)])))
        .collect();
    assert_eq!(files, want);
    assert!(dot.is_empty(), "leftovers: {dot:?}");
    // ...and nsmd loads all four again.
    let (nsmd, _) = start_nsmd(&srv, "nsmd-2", dir);
    assert_eq!(records_loaded(&nsmd), 4, "{}", nsmd.log());
    stop_clean(&nsmd);

    // d. The kernel sends an address as mon_name: rpc.statd names the file by the address's
    // reverse name. nsmd, monitoring the same mon_name again (a new cookie), rewrites that
    // file rather than adding a second file for the same peer (which would be notified twice).
    let addr_peer = "198.51.100.95";
    let reverse = "peer5.example.test";
    lab.add_name(addr_peer, &[reverse]).unwrap();
    let (old, new) = (cookie(0xb0, 5, 7), cookie(0xb1, 5, 8));
    let statd = start_statd(&srv, "statd-3", dir);
    in_netns(&srv, || {
        assert_eq!(mon(local, false, 0x500, addr_peer, "srv", old), succ(state));
    });
    stop_clean(&statd);
    assert_eq!(
        read_sm(&sm).0.get(reverse),
        Some(&Ok(vec![lockd_line(addr_peer, "srv", old)])),
        "rpc.statd names the file by the reverse name"
    );
    let (nsmd, port) = start_nsmd(&srv, "nsmd-3", dir);
    assert_eq!(records_loaded(&nsmd), 5, "{}", nsmd.log());
    let nsmd_local: SocketAddr = ([127, 0, 0, 1], port).into();
    in_netns(&srv, || {
        assert_eq!(
            mon(nsmd_local, true, 0x501, addr_peer, "srv", new),
            succ(state)
        );
    });
    stop_clean(&nsmd);
    let (files, _) = read_sm(&sm);
    assert_eq!(
        files.get(reverse),
        Some(&Ok(vec![lockd_line(addr_peer, "srv", new)])),
        "nsmd rewrote rpc.statd's file for that mon_name"
    );
    assert!(
        !files.contains_key(addr_peer),
        "no second file for the same peer: {:?}",
        files.keys().collect::<Vec<_>>()
    );
    eprintln!("interop: {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 2. kill -9 under load
// ---------------------------------------------------------------------------------------

/// Sends one record-marked call on `s` and reads one reply record.
fn tcp_call(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut rec = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(msg);
    s.write_all(&rec)?;
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr)?;
    assert_ne!(hdr[0] & 0x80, 0, "a reply in one fragment");
    let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
    let mut body = vec![0; len];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// Every SM_MON answered stat_succ is on disk with its exact cookie after nsmd was killed
/// with SIGKILL while 64 callers were sending SM_MON over TCP.
#[test]
fn kill_9_during_64_concurrent_sm_mons_loses_no_acknowledged_record() {
    if !require(
        "kill_9_during_64_concurrent_sm_mons_loses_no_acknowledged_record",
        &["rpcbind"],
    ) {
        return;
    }
    const CALLERS: u32 = 64;
    let started = Instant::now();
    let lab = Lab::new("kill9").unwrap();
    let srv = lab.isolated_host("srv").unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    let dir = "/var/lib/nfs/nsmd";
    let sm = srv.outside_path(dir).unwrap().join("sm");
    let (nsmd, port) = start_nsmd(&srv, "nsmd-1", dir);
    let to: SocketAddr = ([127, 0, 0, 1], port).into();

    let acked: Mutex<Vec<(String, [u8; 16])>> = Mutex::new(Vec::new());
    let refused: Mutex<Vec<(String, Answer)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let sent = std::sync::atomic::AtomicU64::new(0);
    let killing = AtomicBool::new(false);
    // Connection errors seen before the kill (nsmd dropping callers under load).
    let early: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let ns = File::open(srv.netns_path()).unwrap();
    let killed_after = std::thread::scope(|s| {
        for t in 0..CALLERS {
            let (acked, refused, stop, sent, ns) = (&acked, &refused, &stop, &sent, &ns);
            let (killing, early) = (&killing, &early);
            s.spawn(move || {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let mut n = 0u32;
                'connect: while !stop.load(Ordering::Relaxed) {
                    let mut c = match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                        Ok(c) => c,
                        Err(e) => {
                            if !killing.load(Ordering::SeqCst) {
                                early.lock().unwrap().push(format!("connect: {e}"));
                            }
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    c.set_nodelay(true).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("client-{t}-{n}");
                        let ck = cookie(0x4b, t, n);
                        let xid = (t << 24) | n;
                        let m = call(xid, SM, 1, 2, &mon_args(name.as_bytes(), b"srv", ck));
                        n += 1;
                        sent.fetch_add(1, Ordering::Relaxed);
                        // An error: the outcome of this one is unknown; it is not counted.
                        let r = match tcp_call(&mut c, &m) {
                            Ok(r) => r,
                            Err(e) => {
                                if !killing.load(Ordering::SeqCst) {
                                    early.lock().unwrap().push(format!("{name}: {e}"));
                                }
                                continue 'connect;
                            }
                        };
                        match answer(xid, &r) {
                            Answer::Accepted(0, w) if w.first() == Some(&0) => {
                                acked.lock().unwrap().push((name, ck));
                            }
                            other => refused.lock().unwrap().push((name, other)),
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(1));
        killing.store(true, Ordering::SeqCst);
        let killed_after = acked.lock().unwrap().len();
        nsmd.signal(Signal::Kill).unwrap();
        let st = nsmd.wait(T).unwrap();
        assert_eq!(st.code(), None, "killed by a signal: {st:?}");
        // Let the callers see the dead connections, then stop them.
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        killed_after
    });
    let acked = acked.into_inner().unwrap();
    let refused = refused.into_inner().unwrap();
    let early = early.into_inner().unwrap();
    assert!(
        early.is_empty(),
        "callers cut off before the kill: {early:?}"
    );
    assert!(
        refused.is_empty(),
        "SM_MON not answered stat_succ: {:?}",
        &refused[..refused.len().min(5)]
    );
    assert!(
        acked.len() >= killed_after && !acked.is_empty(),
        "nothing acknowledged"
    );

    // Restart on the same directory: every acknowledged record is loaded and on disk.
    let (nsmd2, _) = start_nsmd(&srv, "nsmd-2", dir);
    let loaded = records_loaded(&nsmd2);
    let skipped = log_lines(&nsmd2, "skipped");
    assert!(
        skipped.is_empty(),
        "files skipped after kill -9: {skipped:?}"
    );
    let (files, dot) = read_sm(&sm);
    let bad: Vec<_> = files.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(bad.is_empty(), "unparsable record files: {bad:?}");
    let on_disk: usize = files.values().map(|r| r.as_ref().unwrap().len()).sum();
    assert_eq!(loaded, on_disk, "nsmd loads every line on disk");
    let mut missing = Vec::new();
    for (name, ck) in &acked {
        let want = lockd_line(name, "srv", *ck);
        if files.get(name) != Some(&Ok(vec![want])) {
            missing.push((name, files.get(name)));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged SM_MONs lost or wrong after kill -9, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(loaded >= acked.len());
    eprintln!(
        "kill -9: {} SM_MONs sent by {CALLERS} callers, {} acknowledged ({killed_after} when the \
         kill was sent), {on_disk} records on disk and loaded after restart (all acknowledged \
         found), leftovers {dot:?}; {:.1?}",
        sent.into_inner(),
        acked.len(),
        started.elapsed()
    );
    stop_clean(&nsmd2);
}

// ---------------------------------------------------------------------------------------
// 3. The state number over 100 restarts
// ---------------------------------------------------------------------------------------

/// SM_SIMU_CRASH from 127.0.0.1 and a privileged port; the void reply is awaited.
fn simu_crash(to: SocketAddr, xid: u32) {
    let s = UdpSocket::bind("127.0.0.1:888").unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.send_to(&call(xid, SM, 1, 5, &[]), to).unwrap();
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).expect("SM_SIMU_CRASH answered");
    assert_eq!(answer(xid, &buf[..n]), Answer::Accepted(0, vec![]));
}

/// The state number never goes down over 100 starts of nsmd stopped alternately with
/// SIGTERM and SIGKILL; a start does not bump it (like `rpc.statd -L`), each SM_SIMU_CRASH
/// bumps it by exactly 2 (durably: half of them are followed by SIGKILL); it is odd while
/// nsmd runs and is what the kernel is told.
#[test]
fn state_number_never_decreases_over_100_restarts() {
    if !require(
        "state_number_never_decreases_over_100_restarts",
        &["rpcbind"],
    ) {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new("restarts").unwrap();
    let srv = lab.isolated_host("srv").unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    let dir = "/var/lib/nfs/nsmd";
    let state_file = srv.outside_path(dir).unwrap().join("state");
    let mut seen: Vec<i32> = Vec::new();
    let mut crashes = 0;
    for i in 0..100u32 {
        let (nsmd, port) = start_nsmd(&srv, &format!("nsmd-{i}"), dir);
        let to: SocketAddr = ([127, 0, 0, 1], port).into();
        let state = in_netns(&srv, || stat_state(to));
        assert_eq!(state % 2, 1, "odd while running (start {i})");
        let kernel = srv
            .read_file("/run/proc/sys/fs/nfs/nsm_local_state")
            .unwrap();
        assert_eq!(
            String::from_utf8(kernel).unwrap(),
            state.to_string(),
            "start {i}"
        );
        if let Some(&last) = seen.last() {
            assert!(
                state >= last,
                "start {i}: state went down {last} -> {state}: {seen:?}"
            );
            assert_eq!(state, last, "start {i}: a start does not bump the state");
        }
        seen.push(state);
        // One SM_SIMU_CRASH per ten starts: 0, 11, 20, 31, ... so that half of them are
        // followed by SIGTERM and half by SIGKILL.
        if i % 10 == (i / 10) % 2 {
            let after = in_netns(&srv, || {
                simu_crash(to, 0x5c00 + i);
                stat_state(to)
            });
            assert_eq!(
                after,
                state + 2,
                "SM_SIMU_CRASH at start {i}: {}",
                nsmd.log_tail(10)
            );
            seen.push(after);
            crashes += 1;
        }
        if i % 2 == 0 {
            stop_clean(&nsmd);
        } else {
            nsmd.signal(Signal::Kill).unwrap();
            nsmd.wait(T).unwrap();
        }
    }
    assert_eq!(crashes, 10);
    let (first, last) = (seen[0], *seen.last().unwrap());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(last, first + 20, "{seen:?}");
    assert_eq!(
        std::fs::read(&state_file).unwrap(),
        last.to_ne_bytes(),
        "state file"
    );
    eprintln!(
        "100 restarts: state {first} -> {last} ({crashes} SM_SIMU_CRASH); {:.1?}",
        started.elapsed()
    );
}

/// Debian's own layout: `/var/lib/nfs` owned by root (0755), `sm/` and `sm.bak/` owned by
/// `statd` (so nsmd drops to that user, as rpc.statd does), the `state` file as the package
/// ships it (empty, statd:root, 0644), and the kernel's `nsm_local_state` writable by root
/// only. rpc.statd reads (and, for an empty file, creates) the state and tells the kernel
/// while still root; nsmd must keep and bump the state and tell the kernel there too: it
/// starts with state 3, SM_SIMU_CRASH makes it 5 on disk and in the kernel, and a restart
/// reads 5.
#[test]
fn state_number_is_kept_with_debian_ownership() {
    if !require("state_number_is_kept_with_debian_ownership", &["rpcbind"]) {
        return;
    }
    let lab = Lab::new("ownership").unwrap();
    let srv = lab.isolated_host("srv").unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    let nfs = srv.nfs_dir();
    let sm = std::fs::metadata(nfs.join("sm")).unwrap();
    assert_ne!(sm.uid(), 0, "the system's sm/ belongs to statd");
    chown(&nfs, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&nfs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state_file = nfs.join("state");
    File::create(&state_file).unwrap();
    chown(&state_file, Some(sm.uid()), Some(0)).unwrap();
    std::fs::set_permissions(&state_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let kernel = srv
        .write_file("/run/proc/sys/fs/nfs/nsm_local_state", "0")
        .unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    let start = |name: &str| {
        let argv = [
            common::NSMD,
            "-F",
            "-d",
            "-P",
            "/var/lib/nfs",
            "--proc-root",
            "/run/proc",
        ];
        let argv = [&argv[..], &["-p", "32766"]].concat();
        let p = srv.spawn(name, &argv).unwrap();
        if let Err(e) = p.wait_for_log_line("serving program 100024 version 1 on", T) {
            panic!("nsmd does not start on Debian's default layout: {e}");
        }
        p
    };
    let to: SocketAddr = ([127, 0, 0, 1], 32766).into();
    let kernel_state = || String::from_utf8(std::fs::read(&kernel).unwrap()).unwrap();

    // Every deviation is collected, so one run shows them all.
    let mut wrong: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            wrong.push(what);
        }
    };
    let read_state = || std::fs::read(&state_file).unwrap();
    let nsmd = start("nsmd-1");
    assert_eq!(
        log_lines(&nsmd, "dropped privileges").len(),
        1,
        "{}",
        nsmd.log()
    );
    let st = in_netns(&srv, || stat_state(to));
    check(
        st == 3,
        format!("SM_STAT after the first start: {st}, want 3"),
    );
    let f = read_state();
    check(
        f == 3i32.to_ne_bytes(),
        format!("state file after the first start: {f:?}, want 3"),
    );
    let k = kernel_state();
    check(
        k == "3",
        format!("nsm_local_state after the first start: {k:?}, want \"3\""),
    );
    let after = in_netns(&srv, || {
        simu_crash(to, 0x5d01);
        stat_state(to)
    });
    check(
        after == 5,
        format!("SM_STAT after SM_SIMU_CRASH: {after}, want 5"),
    );
    let f = read_state();
    check(
        f == 5i32.to_ne_bytes(),
        format!("state file after SM_SIMU_CRASH: {f:?}, want 5"),
    );
    let k = kernel_state();
    check(
        k == "5",
        format!("nsm_local_state after SM_SIMU_CRASH: {k:?}, want \"5\""),
    );
    stop_clean(&nsmd);
    let log1 = nsmd.log();
    let nsmd = start("nsmd-2");
    let st = in_netns(&srv, || stat_state(to));
    check(
        st == after.max(5),
        format!("SM_STAT after a restart: {st}, want {}", after.max(5)),
    );
    stop_clean(&nsmd);
    assert!(
        wrong.is_empty(),
        "{}\n\nnsmd's log:\n{log1}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 4. Corrupt and foreign files in sm/
// ---------------------------------------------------------------------------------------

/// What a directory entry is and holds, to compare before and after.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File(Vec<u8>, u32, (i64, i64)),
    Link(std::path::PathBuf),
    Dir(Vec<(String, Self)>),
}

fn snapshot(p: &Path) -> Entry {
    let m = std::fs::symlink_metadata(p).unwrap();
    if m.file_type().is_symlink() {
        Entry::Link(std::fs::read_link(p).unwrap())
    } else if m.is_dir() {
        let mut v: Vec<(String, Entry)> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().into_string().unwrap(), snapshot(&e.path()))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Entry::Dir(v)
    } else {
        Entry::File(
            std::fs::read(p).unwrap(),
            m.mode(),
            (m.mtime(), m.mtime_nsec()),
        )
    }
}

/// A garbage file, a symlink to /etc/passwd, a subdirectory, and the temporary files of an
/// interrupted write (`X.new` of nfs-utils 2.6, `.X.new` of 2.8 and nsmd, and a `.X.new`
/// symlink to /etc/passwd) in `sm/`: nsmd starts, logs each with its path, loads none of them
/// (SM_NOTIFY for their names calls nobody back), serves the one valid record, removes its own
/// scheme's temp (a regular file; logged once) and leaves every other file exactly as it was.
#[test]
fn corrupt_and_foreign_files_in_sm_are_reported_skipped_and_kept() {
    if !require(
        "corrupt_and_foreign_files_in_sm_are_reported_skipped_and_kept",
        &["rpcbind"],
    ) {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new("hostile").unwrap();
    let srv = lab.host("srv", &["198.51.100.84/24"]).unwrap();
    let cli = lab.host("cli", &["198.51.100.85/24"]).unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    let lockd = LockdStandIn::start(&srv, true);
    let dir = "/var/lib/nfs/nsmd";
    let sm = srv.outside_path(dir).unwrap().join("sm");
    std::fs::create_dir_all(sm.join("subdir")).unwrap();
    let valid_cookie = cookie(0x11, 1, 2);
    let line = |name: &str, c: [u8; 16]| {
        let addr = format!("{:08x}", u32::from_ne_bytes([127, 0, 0, 1]));
        format!("{addr} 000186b5 00000003 00000010 {} {name} srv\n", hex(&c))
    };
    std::fs::write(
        sm.join("valid.example.test"),
        line("valid.example.test", valid_cookie),
    )
    .unwrap();
    std::fs::write(
        sm.join("garbage.example.test"),
        b"\x00\xff\xfe garbage\nnot a record at all\n\x7fELF",
    )
    .unwrap();
    symlink("/etc/passwd", sm.join("passwd-link")).unwrap();
    std::fs::write(
        sm.join("subdir/inner.example.test"),
        line("inner.example.test", [3; 16]),
    )
    .unwrap();
    std::fs::write(
        sm.join("left.example.test.new"),
        line("left.example.test", [4; 16]),
    )
    .unwrap();
    std::fs::write(
        sm.join(".left.example.test.new"),
        line("left.example.test", [5; 16]),
    )
    .unwrap();
    // A temp name that is a symlink: reported, never followed, never removed.
    symlink("/etc/passwd", sm.join(".passwd.new")).unwrap();
    // What sm/ must hold afterwards: everything but nsmd's own temp, which is removed.
    let before = match snapshot(&sm) {
        Entry::Dir(mut v) => {
            v.retain(|(name, _)| name != ".left.example.test.new");
            Entry::Dir(v)
        }
        other => panic!("sm/ is not a directory: {other:?}"),
    };
    let passwd = std::fs::read("/etc/passwd").unwrap();

    let (nsmd, port) = start_nsmd(&srv, "nsmd", dir);
    assert_eq!(records_loaded(&nsmd), 1, "{}", nsmd.log());
    let log = nsmd.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    for f in [
        "garbage.example.test",
        "passwd-link",
        "subdir",
        "left.example.test.new",
        ".passwd.new",
    ] {
        let path = format!("{dir}/sm/{f}");
        let hits: Vec<&&str> = warnings
            .iter()
            .filter(|l| l.split([' ', '"', '=']).any(|w| w == path))
            .collect();
        assert_eq!(hits.len(), 1, "one warning naming {path}:\n{log}");
    }
    assert!(
        warnings.iter().all(|l| !l.contains("valid.example.test")),
        "the valid record is not reported: {log}"
    );
    // nsmd's own temp of an interrupted write is removed, and that is logged once.
    let removed = format!("{dir}/sm/.left.example.test.new");
    let hits = log
        .lines()
        .filter(|l| l.contains("temporary file of an interrupted write removed"))
        .filter(|l| l.split([' ', '"', '=']).any(|w| w == removed))
        .count();
    assert_eq!(hits, 1, "one line for the removal of {removed}:\n{log}");
    assert!(!sm.join(".left.example.test.new").exists());
    nsmd.wait_for_log_line("registered program 100024", T)
        .unwrap();

    // The valid record is served; nothing is called back for the skipped files' names.
    let remote: SocketAddr = format!("198.51.100.84:{port}").parse().unwrap();
    in_netns(&cli, || {
        for (i, n) in [
            "garbage.example.test",
            "passwd-link",
            "root",
            "subdir",
            "inner.example.test",
            "left.example.test",
            "left.example.test.new",
            "valid.example.test",
        ]
        .into_iter()
        .enumerate()
        {
            notify(remote, 0x600 + i as u32, n, 9);
        }
    });
    let got = callbacks(&lockd, 2, Duration::from_secs(2));
    assert_eq!(
        got,
        [("valid.example.test".to_owned(), 9, valid_cookie)],
        "{}",
        nsmd.log_tail(30)
    );
    assert!(nsmd.is_running());
    stop_clean(&nsmd);
    assert_eq!(
        snapshot(&sm),
        before,
        "sm/ unchanged but for the removed temp"
    );
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    eprintln!("hostile sm/: {:.1?}", started.elapsed());
}

//! Disk faults, black-box: nsmd on `nsm-faultfs`, one nsmd through every fault and back.
//! For EIO on write, on fsync and on rename, ENOSPC and EROFS: SM_MON answers stat_fail (never
//! stat_succ without its record on disk) and the log names the file; SM_NULL, SM_STAT and
//! SM_NOTIFY keep answering; the records written before are still there; once the fault is
//! lifted SM_MON succeeds again without a restart. An fsync that takes 5 s: SM_NULL, SM_STAT
//! and SM_NOTIFY are answered while one SM_MON waits on it, and that SM_MON then succeeds.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{Answer, answer, call, in_netns, mon_args, spawn_nsmd, udp_exchange, xdr_string};
use nsm_faultfs::{Fault, FaultFs};
use nsm_testhost::{Host, Lab, Proc, require};

const SM: u32 = 100_024;

fn cookie(n: u8) -> [u8; 16] {
    [0xd1, n, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, n]
}

/// One call over a new TCP connection; the reply may take as long as a slow disk makes it.
fn tcp_call(to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rec = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(msg);
    s.write_all(&rec).unwrap();
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).expect("SM_MON answered within 60 s");
    let mut body = vec![0; (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

/// SM_MON over TCP: (res_stat, state).
fn mon(host: &Host, to: SocketAddr, xid: u32, name: &str, n: u8) -> (u32, u32) {
    in_netns(host, || {
        let m = call(xid, SM, 1, 2, &mon_args(name.as_bytes(), b"srv", cookie(n)));
        match answer(xid, &tcp_call(to, &m)) {
            Answer::Accepted(0, w) if w.len() == 2 => (w[0], w[1]),
            other => panic!("SM_MON {name}: {other:?}"),
        }
    })
}

/// SM_NULL, SM_STAT and SM_NOTIFY over UDP, each answered.
fn others_answer(host: &Host, to: SocketAddr, xid: u32) {
    in_netns(host, || {
        let r = udp_exchange(to, &call(xid, SM, 1, 0, &[])).expect("SM_NULL answered");
        assert_eq!(answer(xid, &r), Answer::Accepted(0, vec![]), "SM_NULL");
        let r = udp_exchange(to, &call(xid + 1, SM, 1, 1, &xdr_string(b"localhost")))
            .expect("SM_STAT answered");
        assert!(
            matches!(answer(xid + 1, &r), Answer::Accepted(0, w) if w.len() == 2 && w[0] == 0),
            "SM_STAT"
        );
        let mut a = xdr_string(b"peer.example");
        a.extend_from_slice(&7i32.to_be_bytes());
        let r = udp_exchange(to, &call(xid + 2, SM, 1, 6, &a)).expect("SM_NOTIFY answered");
        assert_eq!(
            answer(xid + 2, &r),
            Answer::Accepted(0, vec![]),
            "SM_NOTIFY"
        );
    });
}

/// The record files of `sm/`: name → content.
fn records(sm: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(sm)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn log_since(p: &Proc, mark: usize) -> String {
    p.log()[mark..].to_owned()
}

#[test]
fn disk_faults_fail_sm_mon_loudly_and_service_resumes() {
    let name = "disk_faults_fail_sm_mon_loudly_and_service_resumes";
    if !require(name, &["rpcbind"]) || !nsm_faultfs::require(name) {
        return;
    }
    let started = std::time::Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("nsm-diskfaults-")
        .tempdir()
        .unwrap();
    let mnt = tmp.path().join("disk");
    std::fs::create_dir(&mnt).unwrap();
    // Mounted before the host is made: the host's mount namespace gets a copy of the mount.
    let fs = FaultFs::mount(&mnt).unwrap();
    let lab = Lab::new("diskflt").unwrap();
    let srv = lab.isolated_host("srv").unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    srv.write_file("/run/proc/sys/fs/nfs/nsm_local_state", "0")
        .unwrap();
    let dir = mnt.join("nfs");
    let sm = dir.join("sm");
    let d = dir.to_str().unwrap();
    let (nsmd, port) = spawn_nsmd(&srv, "nsmd", &["-P", d, "--proc-root", "/run/proc"]);
    let to: SocketAddr = ([127, 0, 0, 1], port).into();

    let (ok, state) = mon(&srv, to, 1, "before", 1);
    assert_eq!(ok, 0, "SM_MON on a healthy disk");
    let mut expected = records(&sm);
    assert_eq!(expected.keys().collect::<Vec<_>>(), ["before"]);

    let faults = [
        ("EIO on write", Fault::WriteEio, "Input/output error"),
        ("EIO on fsync", Fault::FsyncEio, "Input/output error"),
        ("EIO on rename", Fault::RenameEio, "Input/output error"),
        ("ENOSPC", Fault::Enospc, "No space left on device"),
        ("EROFS", Fault::Erofs, "Read-only file system"),
    ];
    let mut xid = 100;
    for (n, (what, fault, text)) in faults.into_iter().enumerate() {
        let n = n as u8 + 10;
        let mark = nsmd.log().len();
        let injected = fs.injected().errors;
        fs.set(fault);
        let during = format!("during-{n}");
        xid += 10;
        let (res, _) = mon(&srv, to, xid, &during, n);
        assert_eq!(res, 1, "{what}: SM_MON answers stat_fail");
        assert!(fs.injected().errors > injected, "{what}: the fault was met");
        others_answer(&srv, to, xid + 1);
        // A second SM_MON of a peer already recorded fails too, and its record stays.
        xid += 10;
        let (res, _) = mon(&srv, to, xid, "before", n);
        assert_eq!(
            res, 1,
            "{what}: SM_MON of a recorded peer answers stat_fail"
        );
        let log = log_since(&nsmd, mark);
        let line = log
            .lines()
            .find(|l| l.contains("SM_MON failed") && l.contains(&during))
            .unwrap_or_else(|| panic!("{what}: no SM_MON failure logged:\n{log}"));
        assert!(
            line.contains(sm.to_str().unwrap()) && line.contains(text),
            "{what}: the message names the file and the error: {line}"
        );
        fs.clear(fault);
        // Nothing recorded is lost, nothing failed was recorded.
        let now = records(&sm);
        assert_eq!(now.get("before"), expected.get("before"), "{what}");
        assert!(
            !now.contains_key(&during),
            "{what}: a failed SM_MON left {during}"
        );
        // Service resumes without a restart.
        let after = format!("after-{n}");
        xid += 10;
        let (res, st) = mon(&srv, to, xid, &after, n);
        assert_eq!(res, 0, "{what}: SM_MON succeeds once the fault is lifted");
        assert_eq!(st, state, "{what}: same state");
        let now = records(&sm);
        assert!(now.contains_key(&after), "{what}: {after} recorded");
        for (k, v) in &expected {
            assert_eq!(now.get(k), Some(v), "{what}: {k} kept");
        }
        expected.insert(after.clone(), now[&after].clone());
        eprintln!("{what}: stat_fail, then service resumed; logged: {line}");
    }

    // A 5 s fsync: the other procedures answer while one SM_MON waits on it.
    fs.set(Fault::SlowFsync(Duration::from_secs(5)));
    let slow = std::thread::scope(|s| {
        let waiting = s.spawn(|| mon(&srv, to, 900, "slow", 90));
        while fs.injected().slow_fsyncs == 0 {
            assert!(!waiting.is_finished(), "SM_MON answered before its fsync");
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 0..5 {
            others_answer(&srv, to, 910 + i * 3);
        }
        assert!(
            !waiting.is_finished(),
            "the SM_MON waits on its 5 s fsync while the others were answered"
        );
        waiting.join().unwrap()
    });
    fs.clear_all();
    assert_eq!(slow.0, 0, "the SM_MON on the slow disk succeeds");
    assert!(records(&sm).contains_key("slow"));
    // And the disk made durable what was acknowledged: a cut keeps it all.
    nsmd.signal(nsm_testhost::Signal::Kill).unwrap();
    let _ = nsmd.wait(Duration::from_secs(10));
    fs.cut_power();
    let survived = records(&sm);
    for k in expected.keys().chain(["slow".to_owned()].iter()) {
        assert!(
            survived.contains_key(k),
            "{k} lost at a cut after the faults"
        );
    }
    drop(srv);
    drop(lab);
    drop(fs);
    eprintln!("disk faults: {:.1?}", started.elapsed());
}

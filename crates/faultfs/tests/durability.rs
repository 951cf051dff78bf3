//! The file system's own rules, on a real mount (root, /dev/fuse): what survives a cut, and
//! what each fault does to the system calls.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use nsm_faultfs::{Fault, FaultFs};

fn mounted(name: &str) -> Option<(tempfile::TempDir, FaultFs)> {
    if !nsm_faultfs::require(name) {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("nsm-faultfs-")
        .tempdir()
        .unwrap();
    let fs = FaultFs::mount(dir.path()).unwrap();
    Some((dir, fs))
}

fn fsync_dir(p: &Path) -> std::io::Result<()> {
    File::open(p)?.sync_all()
}

fn write(p: &Path, data: &[u8], sync: bool) {
    let mut f = File::create(p).unwrap();
    f.write_all(data).unwrap();
    if sync {
        f.sync_all().unwrap();
    }
}

#[test]
fn a_cut_keeps_only_what_was_fsynced() {
    let Some((_d, fs)) = mounted("a_cut_keeps_only_what_was_fsynced") else {
        return;
    };
    let root = fs.path().to_owned();
    fs::create_dir(root.join("sm")).unwrap();
    fsync_dir(&root).unwrap();
    let sm = root.join("sm");
    // Data fsynced, entry durable.
    write(&sm.join("a"), b"a1\n", true);
    fsync_dir(&sm).unwrap();
    // Entry durable, data never fsynced: an empty file.
    write(&sm.join("c"), b"c1\n", false);
    fsync_dir(&sm).unwrap();
    write(&sm.join("d"), b"d1\n", true);
    fsync_dir(&sm).unwrap();
    // A rewrite by rename whose directory was not fsynced: the old content comes back, and so
    // does the temp file (its entry was made durable before the rename) with its fsynced data.
    let mut t = File::create(sm.join(".a.new")).unwrap();
    fsync_dir(&sm).unwrap();
    t.write_all(b"a2\n").unwrap();
    t.sync_all().unwrap();
    fs::rename(sm.join(".a.new"), sm.join("a")).unwrap();
    // A subdirectory whose parent was not fsynced is lost with what it holds.
    fs::create_dir(root.join("lost")).unwrap();
    write(&root.join("lost/x"), b"x\n", true);
    fsync_dir(&root.join("lost")).unwrap();
    // An unlink not made durable comes back.
    fs::remove_file(sm.join("d")).unwrap();
    // Data fsynced, directory not fsynced: the entry is lost.
    write(&sm.join("b"), b"b1\n", true);
    assert_eq!(fs::read(sm.join("a")).unwrap(), b"a2\n");

    fs.cut_power();

    assert_eq!(fs::read(sm.join("a")).unwrap(), b"a1\n");
    assert_eq!(fs::read(sm.join(".a.new")).unwrap(), b"a2\n");
    assert!(!sm.join("b").exists());
    assert_eq!(fs::read(sm.join("c")).unwrap(), b"");
    assert_eq!(fs::read(sm.join("d")).unwrap(), b"d1\n");
    assert!(!root.join("lost").exists());
    assert_eq!(fs.cuts(), 1);

    // After fsyncs of everything, a cut loses nothing.
    write(&sm.join("e"), b"e1\n", true);
    fsync_dir(&sm).unwrap();
    fs.cut_power();
    assert_eq!(fs::read(sm.join("e")).unwrap(), b"e1\n");
}

#[test]
fn files_opened_before_a_cut_fail() {
    let Some((_d, fs)) = mounted("files_opened_before_a_cut_fail") else {
        return;
    };
    let p = fs.path().join("f");
    let mut f = File::create(&p).unwrap();
    fsync_dir(fs.path()).unwrap();
    fs.cut_power();
    assert_eq!(
        f.write_all(b"late").unwrap_err().raw_os_error(),
        Some(libc_eio())
    );
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn faults_fail_their_system_calls_until_cleared() {
    let Some((_d, fs)) = mounted("faults_fail_their_system_calls_until_cleared") else {
        return;
    };
    let root = fs.path().to_owned();
    let errno = |e: std::io::Error| e.raw_os_error();

    fs.set(Fault::WriteEio);
    let mut f = File::create(root.join("w")).unwrap();
    assert_eq!(f.write_all(b"x").map_err(errno), Err(Some(5)));
    fs.clear(Fault::WriteEio);
    f.write_all(b"x").unwrap();

    fs.set(Fault::FsyncEio);
    assert_eq!(f.sync_all().map_err(errno), Err(Some(5)));
    assert_eq!(fsync_dir(&root).map_err(errno), Err(Some(5)));
    fs.clear(Fault::FsyncEio);
    f.sync_all().unwrap();

    fs.set(Fault::RenameEio);
    assert_eq!(
        fs::rename(root.join("w"), root.join("v")).map_err(errno),
        Err(Some(5))
    );
    fs.clear(Fault::RenameEio);
    fs::rename(root.join("w"), root.join("v")).unwrap();

    fs.set(Fault::Enospc);
    assert_eq!(
        File::create(root.join("n")).map_err(errno).err(),
        Some(Some(28))
    );
    assert_eq!(f.write_all(b"y").map_err(errno), Err(Some(28)));
    fs.clear(Fault::Enospc);

    fs.set(Fault::Erofs);
    assert_eq!(
        File::create(root.join("r")).map_err(errno).err(),
        Some(Some(30))
    );
    assert_eq!(
        fs::remove_file(root.join("v")).map_err(errno),
        Err(Some(30))
    );
    assert_eq!(
        OpenOptions::new()
            .write(true)
            .open(root.join("v"))
            .map_err(errno)
            .err(),
        Some(Some(30))
    );
    fs.clear(Fault::Erofs);
    fs::remove_file(root.join("v")).unwrap();
    assert!(fs.injected().errors >= 9);

    // A slow fsync holds only its caller: the file system answers others meanwhile.
    fs.set(Fault::SlowFsync(Duration::from_secs(2)));
    let g = File::create(root.join("s")).unwrap();
    let t = std::thread::spawn(move || g.sync_all());
    while fs.injected().slow_fsyncs == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!t.is_finished(), "the fsync waits");
    write(&root.join("other"), b"o", false);
    assert_eq!(fs::read(root.join("other")).unwrap(), b"o");
    t.join().unwrap().unwrap();
    assert_eq!(fs.injected().slow_fsyncs, 1);
}

#[test]
fn a_cut_keeping_entries_loses_only_data() {
    let Some((_d, fs)) = mounted("a_cut_keeping_entries_loses_only_data") else {
        return;
    };
    let root = fs.path().to_owned();
    write(&root.join("synced"), b"s\n", true);
    write(&root.join(".tmp.new"), b"t\n", false);
    // Rewritten in place (truncate, write) without an fsync: found empty.
    write(&root.join("in-place"), b"old\n", true);
    let mut f = OpenOptions::new()
        .write(true)
        .open(root.join("in-place"))
        .unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"new\n").unwrap();
    drop(f);
    fs.cut_power_keeping_entries();
    assert_eq!(fs::read(root.join("synced")).unwrap(), b"s\n");
    assert_eq!(fs::read(root.join(".tmp.new")).unwrap(), b"");
    assert_eq!(fs::read(root.join("in-place")).unwrap(), b"");
    // The entries are durable now: a strict cut keeps them.
    fs.cut_power();
    assert!(root.join(".tmp.new").exists());
}

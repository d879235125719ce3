//! A real full disk: a small tmpfs mounted for the test (as root; where
//! mounting is not allowed the tests say so and skip). The injected
//! `Fault::Full` of `PowerLossFs` covers the same paths in every run; this
//! checks that the kernel's `ENOSPC` takes them too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use ft_core::{Lsn, StorageError};
use ft_storage::testdir::TestDir;
use ft_storage::{FileLog, FileLogOptions, MirroredStore};

/// The tests of this file run one at a time. A `mount` or `umount` one test
/// spawns is a fork of this process, and until it execs it holds a copy of
/// every open file description, the other test's directory lock included:
/// a log dropped and reopened at that moment would find its directory still
/// locked (by a child that is about to exec).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A tmpfs of `kib` KiB, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: TestDir,
}

impl Tmpfs {
    fn mount(tag: &str, kib: u64) -> Option<Tmpfs> {
        let dir = TestDir::new(tag);
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { path, _dir: dir }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs here ({})",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: no mount command ({e})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Fills the disk with a file, leaving less than `leave` bytes; returns
/// the file (remove it to free the space).
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let filler = dir.join("filler");
    let f = std::fs::File::create(&filler).unwrap();
    let mut data = vec![0xaau8; 4096];
    let mut written = 0u64;
    use std::io::Write;
    let mut w = std::io::BufWriter::new(f);
    while w.write_all(&data).is_ok() && w.flush().is_ok() {
        written += data.len() as u64;
    }
    drop(w);
    // Give a little back, to the limit asked for.
    let keep = written.saturating_sub(leave);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(keep)
        .unwrap();
    data.clear();
    filler
}

#[test]
fn a_full_mirror_disk_fails_the_put_keeps_the_value_readable_and_leaves_no_temporary() {
    let _serial = one_at_a_time();
    let Some(disk) = Tmpfs::mount("full-mirror", 256) else {
        return;
    };
    let main = TestDir::new("full-main");
    let mirror = disk.path().join("stable");
    let store = MirroredStore::open(main.path(), &mirror).unwrap();
    store.put_sync(b"k", b"old").unwrap();
    let filler = fill(disk.path(), 0);
    match store.put_sync(b"k", &[7u8; 20_000]) {
        Err(StorageError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::StorageFull),
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    let left: Vec<String> = std::fs::read_dir(&mirror)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
    assert_eq!(store.get_sync(b"k").unwrap().unwrap().len(), 20_000);
    assert_eq!(store.repairs().failed_repairs, 1);
    std::fs::remove_file(filler).unwrap();
    assert_eq!(store.get_sync(b"k").unwrap().unwrap().len(), 20_000);
    assert_eq!(store.repairs().repaired_from_main, 1);
}

#[test]
fn a_full_disk_poisons_the_log_and_loses_no_acknowledged_record() {
    let _serial = one_at_a_time();
    let Some(disk) = Tmpfs::mount("full-log", 1024) else {
        return;
    };
    let dir = disk.path().join("wal");
    let opts = || FileLogOptions {
        segment_size: 64 << 10,
        ..FileLogOptions::default()
    };
    let log = FileLog::open(&dir, opts()).unwrap();
    let filler = fill(disk.path(), 100 << 10);
    let mut acked = Vec::new();
    let err = loop {
        let r = Bytes::from(vec![acked.len() as u8; 3000]);
        match log.append_blocking(std::slice::from_ref(&r)) {
            Ok(lsn) => acked.push((lsn, r)),
            Err(e) => break e,
        }
        assert!(acked.len() < 10_000, "the disk never filled");
    };
    assert!(
        matches!(&err, StorageError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull),
        "{err:?}"
    );
    assert!(matches!(
        log.append_blocking(&[Bytes::from("after")]),
        Err(StorageError::Poisoned)
    ));
    drop(log);
    std::fs::remove_file(filler).unwrap();
    let log = FileLog::open(&dir, opts()).unwrap();
    let got: Vec<(Lsn, Bytes)> = log
        .iter_from(Lsn(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        acked.len() > 10,
        "{} appends before the disk filled",
        acked.len()
    );
    assert_eq!(&got[..acked.len()], &acked[..]);
    assert!(got.len() <= acked.len() + 1);
}

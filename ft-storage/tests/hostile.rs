//! Hostile and damaged files: what the log and the stores do with files
//! they could not have written, with crafted garbage, with damage where
//! nothing was written, and with disks that fail. Bounded memory and work,
//! typed errors, and never a hang or a panic.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use ft_core::{Lsn, StorageError};
use ft_storage::power_loss::Fault;
use ft_storage::testdir::TestDir;
use ft_storage::{FileLog, FileLogOptions, FileStore, MirroredStore, PowerLossFs};

mod common;
use common::all;

const HEADER: usize = 32;

fn opts(segment_size: u64) -> FileLogOptions {
    FileLogOptions {
        segment_size,
        ..FileLogOptions::default()
    }
}

/// Runs `f` on a thread and fails the test if it takes more than 20 s,
/// rather than hanging the whole run (a FIFO that is opened blocks).
fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("still running after 20 s: it hangs")
}

fn is_foreign(r: &Result<FileLog, StorageError>, name: &str) -> bool {
    matches!(r, Err(StorageError::Foreign { location, .. }) if location.ends_with(name))
}

/// A log with one record, closed; the name of a second segment.
fn one_record_log(tag: &str) -> (TestDir, &'static str) {
    let dir = TestDir::new(tag);
    let log = FileLog::open(dir.path(), opts(1 << 20)).unwrap();
    log.append_blocking(&[Bytes::from("r")]).unwrap();
    drop(log);
    (dir, "00000000000000000001.log")
}

#[test]
fn a_huge_file_named_like_a_segment_is_refused_without_reading_it() {
    let (dir, name) = one_record_log("huge");
    let f = fs::File::create(dir.path().join(name)).unwrap();
    // Sparse: 600 MiB that take no disk.
    f.set_len(600 << 20).unwrap();
    let r = FileLog::open(dir.path(), opts(1 << 20));
    assert!(is_foreign(&r, name), "{r:?}");
    // Refused means untouched.
    assert_eq!(
        fs::metadata(dir.path().join(name)).unwrap().len(),
        600 << 20
    );
}

/// Makes a FIFO at `path` (with coreutils' mkfifo: no `unsafe` here).
fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo (coreutils) runs");
    assert!(made.success());
}

#[test]
fn a_link_or_a_fifo_named_like_a_segment_is_refused_without_blocking() {
    for tag in ["zero-link", "fifo"] {
        let (dir, name) = one_record_log(tag);
        let path = dir.path().join(name);
        if tag == "fifo" {
            mkfifo(&path);
        } else {
            std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        }
        let d = dir.path().to_path_buf();
        let r = within_20s(move || FileLog::open(d, opts(1 << 20)));
        assert!(is_foreign(&r, name), "{tag}: {r:?}");
    }
}

#[test]
fn log_files_without_a_meta_are_refused() {
    let (dir, _) = one_record_log("no-meta");
    fs::remove_file(dir.path().join("META")).unwrap();
    let r = FileLog::open(dir.path(), opts(1 << 20));
    assert!(matches!(r, Err(StorageError::Foreign { .. })), "{r:?}");
}

/// Memory at open is bounded by the scan's chunk, not by the segment or a
/// record: a 3 MiB record in a 4 MiB segment is checked without reading
/// more than 1 MiB at once.
#[test]
fn recovery_reads_in_bounded_chunks() {
    let fs = PowerLossFs::new();
    let o = || FileLogOptions {
        segment_size: 4 << 20,
        fs: Arc::new(fs.clone()),
        ..FileLogOptions::default()
    };
    let big = Bytes::from(vec![7u8; 3 << 20]);
    let log = FileLog::open("/wal", o()).unwrap();
    log.append_blocking(&[Bytes::from("small"), big.clone()])
        .unwrap();
    drop(log);
    let before = fs.stats().max_read;
    let log = FileLog::open("/wal", o()).unwrap();
    let max = fs.stats().max_read;
    assert!(max <= (1 << 20) + HEADER, "a read of {max} bytes at open");
    assert!(before <= max, "{before} {max}");
    assert!(log.recovery().bytes_read >= 3 << 20, "the record was read");
    assert_eq!(all(&log)[1].1, big);
}

/// A header of the record format, checksummed (as an attacker who knows
/// the format would write it).
fn header(payload_crc: u32, len: u32, lsn: u64, batch_first: u64) -> Vec<u8> {
    let mut h = vec![0; 4];
    h.extend_from_slice(&payload_crc.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&lsn.to_le_bytes());
    h.extend_from_slice(&batch_first.to_le_bytes());
    let crc = crc32fast::hash(&h[4..]);
    h[..4].copy_from_slice(&crc.to_le_bytes());
    h
}

/// An 8 MiB segment whose last record is torn, followed by `fakes` fake
/// headers with LSNs in range, each claiming a multi-megabyte payload.
/// `valid` chooses whether their header checksums hold; `later` whether
/// they claim a later write-and-sync cycle.
fn crafted(tag: &str, fakes: usize, valid: bool, later: bool) -> (TestDir, FileLogOptions) {
    let dir = TestDir::new(tag);
    let o = opts(8 << 20);
    let log = FileLog::open(dir.path(), o.clone()).unwrap();
    for i in 0..10u64 {
        log.append_blocking(&[Bytes::from(vec![i as u8; 100])])
            .unwrap();
    }
    drop(log);
    let seg = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join("00000000000000000000.log"))
        .unwrap();
    let rec = (HEADER + 100) as u64;
    // Tear record 9 (the last cycle): its payload half gone.
    seg.write_all_at(&[0u8; 50], 9 * rec + HEADER as u64 + 50)
        .unwrap();
    let mut at = 10 * rec + 17;
    let stride = ((8 << 20) - at) / fakes as u64;
    for k in 0..fakes as u64 {
        let lsn = 10 + k % 64;
        let batch = if later { lsn } else { 9 };
        let mut h = header(0xdead_beef, 6 << 20, lsn, batch);
        if !valid {
            h[0] ^= 1;
        }
        seg.write_all_at(&h, at).unwrap();
        at += stride;
    }
    (dir, o)
}

/// Crafted garbage after a torn record cannot make recovery quadratic:
/// the work is bounded by a small multiple of the segment's size, whatever
/// the fake headers claim (the test counts bytes checksummed, not time).
#[test]
fn crafted_garbage_after_a_torn_record_costs_linear_work() {
    let segment = 8u64 << 20;
    for (tag, valid) in [("fake-headers", false), ("fake-valid-headers", true)] {
        let (dir, o) = crafted(tag, 2048, valid, false);
        let log = FileLog::open(dir.path(), o).unwrap();
        let r = log.recovery();
        assert_eq!(r.torn_tail.as_ref().map(|t| t.lsn), Some(Lsn(9)), "{tag}");
        assert!(
            r.bytes_checksummed <= 2 * segment,
            "{tag}: {} bytes checksummed for an {segment}-byte segment",
            r.bytes_checksummed
        );
        assert!(r.bytes_read <= 3 * segment, "{tag}: read {}", r.bytes_read);
        assert_eq!(all(&log).len(), 9, "{tag}");
        // The garbage was erased with the torn record.
        drop(log);
        let data = fs::read(dir.path().join("00000000000000000000.log")).unwrap();
        assert!(data[9 * (HEADER + 100)..].iter().all(|&b| b == 0), "{tag}");
    }
}

/// A valid header of a later cycle after the bad record is proof that the
/// bad record was durable: corruption, refused, nothing erased.
#[test]
fn a_later_cycle_after_a_bad_record_is_corruption_and_nothing_is_erased() {
    let (dir, o) = crafted("fake-later", 16, true, true);
    let path = dir.path().join("00000000000000000000.log");
    let before = fs::read(&path).unwrap();
    match FileLog::open(dir.path(), o) {
        Err(StorageError::Corrupt { offset, .. }) => assert_eq!(offset, 9 * (HEADER as u64 + 100)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), before);
}

/// A bit flipped in the never-written tail of a sealed segment (one the
/// next segment continues) hides no record: reported, and the log opens.
#[test]
fn a_flip_in_the_unused_tail_of_a_sealed_segment_is_reported_and_opens() {
    let dir = TestDir::new("unused-tail");
    let o = opts(4096);
    let log = FileLog::open(dir.path(), o.clone()).unwrap();
    let body = |i: u64| Bytes::from(vec![i as u8 + 1; 700]);
    for i in 0..12 {
        log.append_blocking(&[body(i)]).unwrap();
    }
    drop(log);
    // 5 records of 732 bytes fill 3660 of the first segment's 4096.
    let first = dir.path().join("00000000000000000000.log");
    assert!(dir.path().join("00000000000000000005.log").exists());
    let f = OpenOptions::new().write(true).open(&first).unwrap();
    f.write_all_at(&[0x40], 4000).unwrap();
    let log = FileLog::open(dir.path(), o.clone()).unwrap();
    let damage = &log.recovery().unused_space_damage;
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0].offset, 5 * 732);
    let got = all(&log);
    assert_eq!(got.len(), 12);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (l, b))| *l == Lsn(i as u64) && *b == body(i as u64))
    );
    // Where a record might be hidden it is still refused: the same flip
    // with the next segment not continuing the sequence.
    drop(log);
    fs::remove_file(dir.path().join("00000000000000000005.log")).unwrap();
    assert!(matches!(
        FileLog::open(dir.path(), o),
        Err(StorageError::Corrupt { .. })
    ));
}

// ------------------------------------------------------------ the stores

fn mirrored(fs: &PowerLossFs) -> MirroredStore {
    MirroredStore::open_in(Arc::new(fs.clone()), "/main", "/mirror").unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn a_damaged_copy_on_a_read_only_disk_is_served_from_the_good_one() {
    let fs = PowerLossFs::new();
    let store = mirrored(&fs);
    store.put_sync(b"k", b"value").unwrap();
    fs.decay(&store.main_path(b"k").unwrap(), |d| d[20] ^= 1)
        .unwrap();
    fs.set_fault(Path::new("/main"), Some(Fault::ReadOnly));
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("value")));
    assert_eq!(store.repairs().failed_repairs, 1);
    let report = store.scrub().unwrap();
    assert_eq!(report.repair_failed, vec![b("k")]);
    assert_eq!(store.repairs().failed_repairs, 2);
    // Once the disk takes writes again, the next read repairs it.
    fs.set_fault(Path::new("/main"), None);
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("value")));
    assert_eq!(store.repairs().repaired_from_mirror, 1);
    assert_eq!(
        fs.contents(&store.main_path(b"k").unwrap()),
        fs.contents(&store.mirror_path(b"k").unwrap())
    );
}

#[test]
fn a_put_that_fails_on_a_full_mirror_leaves_the_key_readable_and_no_temporary() {
    let fs = PowerLossFs::new();
    let store = mirrored(&fs);
    store.put_sync(b"k", b"old").unwrap();
    fs.set_fault(Path::new("/mirror"), Some(Fault::Full));
    match store.put_sync(b"k", b"new") {
        Err(StorageError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::StorageFull),
        other => panic!("expected the full disk's error, got {other:?}"),
    }
    let temporaries: Vec<_> = fs
        .files()
        .into_keys()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(temporaries.is_empty(), "{temporaries:?}");
    // Main holds the newer generation: it is the value, while the mirror
    // cannot be repaired.
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("new")));
    assert_eq!(store.repairs().failed_repairs, 1);
    fs.set_fault(Path::new("/mirror"), None);
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("new")));
    assert_eq!(store.repairs().repaired_from_main, 1);
    assert_eq!(store.repairs().stale_replaced, 1);
}

#[test]
fn an_unreadable_main_disk_is_served_from_the_mirror() {
    let fs = PowerLossFs::new();
    let store = mirrored(&fs);
    store.put_sync(b"k", b"value").unwrap();
    fs.set_fault(Path::new("/main"), Some(Fault::Unreadable));
    assert_eq!(store.get_sync(b"k").unwrap(), Some(b("value")));
    assert_eq!(store.keys_sync().unwrap(), vec![b("k")]);
    assert!(store.repairs().unreadable >= 1);
    // Both unreadable: an error, not a guess.
    fs.set_fault(Path::new("/mirror"), Some(Fault::Unreadable));
    assert!(matches!(store.get_sync(b"k"), Err(StorageError::Io(_))));
}

/// A disk that lost a write holds an older, valid copy: the newer one on
/// the other disk wins and the stale one is repaired, whichever disk it is.
#[test]
fn a_stale_copy_never_wins_on_either_disk() {
    for stale_main in [true, false] {
        let fs = PowerLossFs::new();
        let store = mirrored(&fs);
        store.put_sync(b"k", b"v1").unwrap();
        let stale = if stale_main {
            store.main_path(b"k").unwrap()
        } else {
            store.mirror_path(b"k").unwrap()
        };
        let old = fs.contents(&stale).unwrap();
        store.put_sync(b"k", b"v2").unwrap();
        // The disk "loses" the second put: its old copy is back.
        fs.decay(&stale, |d| *d = old.clone()).unwrap();
        assert_eq!(
            store.get_sync(b"k").unwrap(),
            Some(b("v2")),
            "stale main: {stale_main}"
        );
        let r = store.repairs();
        assert_eq!(r.stale_replaced, 1);
        assert_eq!(
            (r.repaired_from_mirror, r.repaired_from_main),
            if stale_main { (1, 0) } else { (0, 1) }
        );
        assert_eq!(
            fs.contents(&store.main_path(b"k").unwrap()),
            fs.contents(&store.mirror_path(b"k").unwrap())
        );
        // A later put goes above both.
        store.put_sync(b"k", b"v3").unwrap();
        assert_eq!(store.get_sync(b"k").unwrap(), Some(b("v3")));
    }
}

/// A file named like a key but larger than any copy is refused unread.
#[test]
fn a_store_file_larger_than_any_copy_is_not_read() {
    let fs = PowerLossFs::new();
    let store = FileStore::open_in(Arc::new(fs.clone()), "/store").unwrap();
    store.put_sync(b"k", b"v").unwrap();
    let path = store.path_of(b"k").unwrap();
    fs.decay(&path, |d| d.resize(65 << 20, 0)).unwrap();
    let before = fs.stats().max_read;
    assert!(matches!(
        store.get_sync(b"k"),
        Err(StorageError::Corrupt { .. })
    ));
    assert_eq!(fs.stats().max_read, before, "the file was read");
}

#[test]
fn a_fifo_or_a_huge_file_named_like_a_key_is_a_bad_copy_never_read() {
    let dir = TestDir::new("store-hostile");
    let store = FileStore::open(dir.path()).unwrap();
    mkfifo(&store.path_of(b"fifo").unwrap());
    let huge = store.path_of(b"huge").unwrap();
    fs::File::create(&huge).unwrap().set_len(1 << 30).unwrap();
    let r = within_20s(move || (store.get_sync(b"fifo"), store.get_sync(b"huge"), store));
    assert!(
        matches!(r.0, Err(StorageError::Corrupt { .. })),
        "{:?}",
        r.0
    );
    assert!(
        matches!(r.1, Err(StorageError::Corrupt { .. })),
        "{:?}",
        r.1
    );
    // On a mirrored store, the other disk's copy wins and replaces it.
    drop(r.2);
    let (main, mirror) = (dir.path().join("m1"), dir.path().join("m2"));
    let pair = MirroredStore::open(&main, &mirror).unwrap();
    pair.put_sync(b"k", b"value").unwrap();
    let path = pair.main_path(b"k").unwrap();
    fs::remove_file(&path).unwrap();
    mkfifo(&path);
    let r = within_20s(move || (pair.get_sync(b"k"), pair));
    assert_eq!(r.0.unwrap(), Some(b("value")));
    assert!(
        fs::metadata(&path).unwrap().is_file(),
        "the FIFO was replaced"
    );
}

// ------------------------------------------ many segments, few descriptors

const MANY_ENV: &str = "FT_MANY_SEGMENTS_DIR";

/// The child: opens the log in `$FT_MANY_SEGMENTS_DIR` and counts its
/// records. A no-op in a normal test run.
#[test]
#[ignore = "runs only as the child process of the descriptor test"]
fn many_segments_child_entry() {
    let Some(dir) = std::env::var_os(MANY_ENV) else {
        return;
    };
    let log = FileLog::open(&dir, opts(4096)).unwrap();
    println!("FTM records {}", all(&log).len());
}

/// Recovery opens one segment at a time: a log of 300 segments opens in a
/// process limited to 64 file descriptors.
#[test]
fn a_log_of_many_segments_opens_with_few_file_descriptors() {
    let dir = TestDir::new("many-segments");
    let log = FileLog::open(dir.path(), opts(4096)).unwrap();
    for i in 0..1200u64 {
        log.append_blocking(&[Bytes::from(vec![i as u8; 900])])
            .unwrap();
    }
    drop(log);
    let segments = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count();
    assert!(segments >= 300, "{segments} segments");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "many_segments_child_entry",
            "--ignored",
            "--nocapture",
        ])
        .env(MANY_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FTM records 1200"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Damaged logs: every kind of damage gives its documented outcome — a
//! truncated tail, or a typed error naming the segment and offset — and
//! never a panic or a wrong record.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ft_core::{Lsn, StorageError};
use ft_storage::testdir::TestDir;
use ft_storage::{FileLog, FileLogOptions};

mod common;

fn flip(path: &Path, at: u64) {
    common::flip(path, at, 0x04);
}

const N: u64 = 10;
/// The record header: header CRC, payload CRC, length, reserved, LSN,
/// batch start.
const HEADER: u64 = 32;
/// Where the length field sits in a header.
const LEN_AT: usize = 8;

fn opts() -> FileLogOptions {
    FileLogOptions {
        segment_size: 8192,
        ..FileLogOptions::default()
    }
}

fn rec(i: u64) -> Bytes {
    Bytes::from(format!("payload of record {i}"))
}

/// A log of `N` records, each appended (and synced) on its own; returns the
/// segment path and each record's (offset, length).
fn fresh(tag: &str) -> (TestDir, PathBuf, Vec<(u64, u64)>) {
    let dir = TestDir::new(tag);
    let log = FileLog::open(dir.path(), opts()).unwrap();
    for i in 0..N {
        log.append_blocking(&[rec(i)]).unwrap();
    }
    drop(log);
    let seg = dir.path().join("00000000000000000000.log");
    let data = fs::read(&seg).unwrap();
    let mut offs = Vec::new();
    let mut off = 0u64;
    for _ in 0..N {
        let at = off as usize + LEN_AT;
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as u64;
        offs.push((off, HEADER + len));
        off += HEADER + len;
    }
    (dir, seg, offs)
}

fn contents(dir: &Path) -> Vec<(Lsn, Bytes)> {
    let log = FileLog::open(dir, opts()).unwrap();
    log.iter_from(Lsn(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn first(n: u64) -> Vec<(Lsn, Bytes)> {
    (0..n).map(|i| (Lsn(i), rec(i))).collect()
}

/// Header fields, payload, by offset within a record.
const PLACES: [(&str, u64); 7] = [
    ("header crc", 1),
    ("payload crc", 5),
    ("len", 9),
    ("reserved", 13),
    ("lsn", 17),
    ("batch", 25),
    ("payload", HEADER + 3),
];

#[test]
fn damage_to_a_durable_middle_record_is_an_error_naming_segment_and_offset() {
    for (what, within) in PLACES {
        let (dir, seg, offs) = fresh("middle");
        let (off, _) = offs[4];
        flip(&seg, off + within);
        match FileLog::open(dir.path(), opts()) {
            Err(StorageError::Corrupt {
                location,
                offset,
                reason,
            }) => {
                assert!(
                    location.ends_with("00000000000000000000.log"),
                    "{what}: {location}"
                );
                assert_eq!(offset, off, "{what}: the bad record's offset ({reason})");
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
        // The error is stable: opening again says the same, nothing was "repaired".
        assert!(matches!(
            FileLog::open(dir.path(), opts()),
            Err(StorageError::Corrupt { .. })
        ));
    }
}

#[test]
fn damage_to_the_tail_record_truncates_it_and_the_log_goes_on() {
    for (what, within) in PLACES {
        let (dir, seg, offs) = fresh("tail");
        let (off, len) = offs[N as usize - 1];
        flip(&seg, off + within);
        assert_eq!(contents(dir.path()), first(N - 1), "{what}");
        // The torn bytes were erased, so nothing stale can come back.
        let data = fs::read(&seg).unwrap();
        assert!(
            data[off as usize..(off + len) as usize]
                .iter()
                .all(|&b| b == 0),
            "{what}"
        );
        let log = FileLog::open(dir.path(), opts()).unwrap();
        assert_eq!(
            log.append_blocking(&[rec(100)]).unwrap(),
            Lsn(N - 1),
            "{what}"
        );
        drop(log);
        let mut want = first(N - 1);
        want.push((Lsn(N - 1), rec(100)));
        assert_eq!(contents(dir.path()), want, "{what}");
    }
}

#[test]
fn a_last_record_cut_at_every_byte_is_a_torn_tail() {
    let (dir, seg, offs) = fresh("cut");
    let pristine = fs::read(&seg).unwrap();
    let (off, len) = offs[N as usize - 1];
    for k in 0..=len {
        // The crash let only the first k bytes of the record reach the disk:
        // once as zeros after them (preallocated space), once as a shorter file.
        for shorten in [false, true] {
            let mut data = pristine.clone();
            if shorten {
                data.truncate((off + k) as usize);
            } else {
                data[(off + k) as usize..(off + len) as usize].fill(0);
            }
            fs::write(&seg, &data).unwrap();
            let want = if k == len { first(N) } else { first(N - 1) };
            assert_eq!(
                contents(dir.path()),
                want,
                "cut at {k} of {len}, shortened file: {shorten}"
            );
        }
    }
}

#[test]
fn garbage_or_zeros_after_the_last_record_are_a_torn_tail() {
    let (dir, seg, offs) = fresh("garbage");
    let end = offs.last().map(|(o, l)| o + l).unwrap();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0u8; 100], end).unwrap();
    assert_eq!(contents(dir.path()), first(N));
    let garbage: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1)
        .collect();
    f.write_all_at(&garbage, end).unwrap();
    assert_eq!(contents(dir.path()), first(N));
    let data = fs::read(&seg).unwrap();
    assert!(
        data[end as usize..].iter().all(|&b| b == 0),
        "garbage erased"
    );
    // A garbage-looking header with a huge length field, too.
    f.write_all_at(&[0xff; HEADER as usize], end).unwrap();
    assert_eq!(contents(dir.path()), first(N));
}

fn tiny() -> FileLogOptions {
    FileLogOptions {
        segment_size: 512,
        ..opts()
    }
}

/// A log of 60 records over several 512-byte segments; returns the segment
/// paths in order.
fn multi_segment(tag: &str) -> (TestDir, Vec<PathBuf>) {
    let dir = TestDir::new(tag);
    let log = FileLog::open(dir.path(), tiny()).unwrap();
    for i in 0..60 {
        log.append_blocking(&[rec(i)]).unwrap();
    }
    drop(log);
    let mut segs: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3);
    (dir, segs)
}

#[test]
fn damage_in_an_earlier_segment_is_an_error_even_at_its_end() {
    let (dir, segs) = multi_segment("segments");
    // The last record of the first segment: damage there is not a tail,
    // since the next segment holds later records.
    let data = fs::read(&segs[0]).unwrap();
    let mut off = 0usize;
    let mut last = 0usize;
    let header = HEADER as usize;
    while off + header <= data.len() && data[off..off + header].iter().any(|&b| b != 0) {
        last = off;
        let at = off + LEN_AT;
        off += header + u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
    }
    flip(&segs[0], last as u64 + 30);
    match FileLog::open(dir.path(), tiny()) {
        Err(StorageError::Corrupt {
            location, offset, ..
        }) => {
            assert_eq!(location, segs[0].display().to_string());
            assert_eq!(offset, last as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_missing_middle_segment_is_an_error_never_a_silent_gap() {
    let (dir, segs) = multi_segment("gap");
    fs::remove_file(&segs[1]).unwrap();
    assert!(matches!(
        FileLog::open(dir.path(), tiny()),
        Err(StorageError::Corrupt { .. })
    ));
}

/// The first segment gone (and no `START` saying its records were
/// discarded): the records it held are missing, not skipped.
#[test]
fn a_missing_first_segment_is_an_error_never_a_later_start() {
    let (dir, segs) = multi_segment("gap-first");
    fs::remove_file(&segs[0]).unwrap();
    match FileLog::open(dir.path(), tiny()) {
        Err(StorageError::Corrupt { reason, .. }) => {
            assert!(reason.contains("missing"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_zeroed_header_cannot_hide_the_records_after_it() {
    let (dir, seg, offs) = fresh("hide");
    let (off, _) = offs[3];
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0u8; HEADER as usize], off).unwrap();
    assert!(
        matches!(FileLog::open(dir.path(), opts()), Err(StorageError::Corrupt { offset, .. }) if offset == off)
    );
}

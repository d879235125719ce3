//! Segment reuse: a segment freed by `truncate_prefix` is renamed into
//! place as a later segment and overwritten, so it holds, behind the new
//! records, valid records of its previous use. Recovery must end the log at
//! the new records' end: never read an old record, never call one
//! corruption, never lose an acknowledged record, after a power cut at any
//! point (on the [`PowerLossFs`], which drops, keeps or tears unsynced
//! writes and directory changes).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ft_core::Lsn;
use ft_storage::{FileLog, FileLogOptions, PowerLossFs};

const SEGMENT: u64 = 8 << 10;

fn options(fs: &PowerLossFs, segment_size: u64) -> FileLogOptions {
    FileLogOptions {
        segment_size,
        fs: Arc::new(fs.clone()),
        ..FileLogOptions::default()
    }
}

/// A payload naming its phase and number, `len` bytes long (at least 9).
fn rec(phase: u8, n: u32, len: usize) -> Bytes {
    let mut p = vec![phase];
    p.extend_from_slice(&n.to_le_bytes());
    p.extend_from_slice(&(len as u32).to_le_bytes());
    p.resize(len.max(9), phase);
    Bytes::from(p)
}

fn read_all(log: &FileLog) -> Vec<(Lsn, Bytes)> {
    log.iter_from(Lsn(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn files(fs: &PowerLossFs, dir: &Path, suffix: &str) -> Vec<(String, usize)> {
    fs.files()
        .into_iter()
        // The simulator keeps paths without the root.
        .filter(|(p, _)| p.parent().map(|d| Path::new("/").join(d)).as_deref() == Some(dir))
        .filter_map(|(p, d)| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            name.ends_with(suffix).then_some((name, d.len()))
        })
        .collect()
}

/// Appends one record at a time until a segment was recycled, truncating
/// behind the writer; returns what was appended (LSN → payload).
fn until_recycled(log: &FileLog, phase: u8, len: impl Fn(u32) -> usize) -> BTreeMap<u64, Bytes> {
    let mut acked = BTreeMap::new();
    let mut n = 0;
    while log.stats().segments_recycled == 0 {
        let r = rec(phase, n, len(n));
        let Lsn(l) = log.append_blocking(std::slice::from_ref(&r)).unwrap();
        acked.insert(l, r);
        if n % 8 == 7 {
            log.truncate_prefix_blocking(Lsn(l.saturating_sub(4)))
                .unwrap();
        }
        n += 1;
        assert!(n < 10_000, "no segment was ever recycled");
    }
    acked
}

/// The case: a recycled segment full of valid old records, a power
/// cut in the middle of writing new ones into it. The reopened log holds
/// exactly the acknowledged records (and possibly the one being appended),
/// never an old record, and opens without a `Corrupt` error: the records
/// of the previous use have LSNs below the log's start, which the scan
/// takes for the end of the log. Old and new records have the same sizes
/// in half the runs, so the old ones line up exactly where the scan looks
/// next, and different sizes in the other half, so the new records end in
/// the middle of an old one.
#[test]
fn a_recycled_segment_of_valid_old_records_and_a_power_cut_keep_exactly_the_acknowledged() {
    let mut cut_in_recycled = 0;
    for seed in 0..160u64 {
        let fs = PowerLossFs::new();
        let dir = Path::new("/wal");
        let log = FileLog::open(dir, options(&fs, SEGMENT)).unwrap();
        let same = seed % 2 == 0;
        let old_len = move |n: u32| {
            if same {
                200
            } else {
                100 + (n as usize * 37) % 300
            }
        };
        let mut acked = until_recycled(&log, b'o', old_len);
        // The segment now written was freed full of valid 'o' records.
        // A few acknowledged records into it, then the power fails at the
        // n-th mutating operation of the appends after.
        for n in 0..3 {
            let r = rec(b'n', n, old_len(n + 1));
            let Lsn(l) = log.append_blocking(std::slice::from_ref(&r)).unwrap();
            acked.insert(l, r);
        }
        // No truncation now: its directory sync would make the segment's
        // new name durable, which the roll itself must do.
        let start = log.iter_from(Lsn(0)).unwrap().next().unwrap().unwrap().0.0;
        fs.fail_after(seed % 7);
        let mut in_flight = Vec::new();
        for n in 3..40 {
            let r = rec(b'n', n, old_len(n + 1));
            in_flight.push(r.clone());
            match log.append_blocking(std::slice::from_ref(&r)) {
                Ok(Lsn(l)) => {
                    acked.insert(l, r);
                }
                Err(_) => break,
            }
        }
        assert!(fs.is_off(), "seed {seed}: the power never failed");
        drop(log);
        fs.power_cut(seed);
        fs.fail_after(u64::MAX);
        let log = FileLog::open(dir, options(&fs, SEGMENT))
            .unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
        assert_eq!(log.recovery().start, Lsn(start), "seed {seed}");
        let got = read_all(&log);
        let mut expect = start;
        for (Lsn(l), p) in &got {
            assert_eq!(*l, expect, "seed {seed}: LSNs not contiguous");
            expect += 1;
            match acked.get(l) {
                Some(a) => assert_eq!(a, p, "seed {seed}: LSN {l} changed"),
                None => assert!(
                    in_flight.contains(p),
                    "seed {seed}: LSN {l} holds {:?}, never acknowledged nor in flight",
                    &p[..5]
                ),
            }
        }
        for l in acked.range(start..).map(|(l, _)| l) {
            assert!(*l < expect, "seed {seed}: acknowledged LSN {l} lost");
        }
        if let Some(t) = &log.recovery().torn_tail {
            cut_in_recycled += 1;
            // Only the log's own torn record goes, not the old records
            // behind it (zeroing those would rewrite the segment).
            assert!(t.erased <= 600, "seed {seed}: {t:?}");
        }
        // The log goes on where it ended, and reads back again.
        let r = rec(b'z', 0, 50);
        assert_eq!(
            log.append_blocking(std::slice::from_ref(&r)).unwrap(),
            Lsn(expect)
        );
        drop(log);
        let log = FileLog::open(dir, options(&fs, SEGMENT)).unwrap();
        assert_eq!(read_all(&log).last(), Some(&(Lsn(expect), r)));
    }
    assert!(cut_in_recycled > 0, "no cut ever tore a write");
}

/// Steady state: append, truncate behind, append … across many segments.
/// Segments are reused (the counter says so, and the number of segment
/// files stays bounded), and after a clean close every record still in the
/// log reads back, with neither a torn tail nor damage reported: the end
/// marker after the last write keeps the old records behind it out.
#[test]
fn steady_state_logging_reuses_segments_and_reopens_clean() {
    let fs = PowerLossFs::new();
    let dir = Path::new("/wal");
    let log = FileLog::open(dir, options(&fs, SEGMENT)).unwrap();
    let mut all = BTreeMap::new();
    let mut most_files = 0;
    for n in 0..3000u32 {
        let r = rec(b'a', n, 60 + (n as usize * 53) % 400);
        let Lsn(l) = log.append_blocking(std::slice::from_ref(&r)).unwrap();
        all.insert(l, r);
        if n % 10 == 9 {
            log.truncate_prefix_blocking(Lsn(l.saturating_sub(20)))
                .unwrap();
        }
        let count = files(&fs, dir, ".log").len() + files(&fs, dir, ".free").len();
        most_files = most_files.max(count);
    }
    let stats = log.stats();
    assert!(stats.segments_recycled >= 50, "{stats:?}");
    // The first segment and the few made before truncation freed any:
    // after that, every new segment is a reused one.
    assert!(stats.segments_created <= 4, "{stats:?}");
    assert!(most_files <= 5, "up to {most_files} segment files");
    for (_, len) in files(&fs, dir, ".free") {
        assert_eq!(len as u64, SEGMENT);
    }
    let start = log.recovery().start;
    drop(log);
    for _ in 0..2 {
        let log = FileLog::open(dir, options(&fs, SEGMENT)).unwrap();
        let rep = log.recovery().clone();
        assert_eq!(rep.torn_tail, None);
        assert!(rep.unused_space_damage.is_empty(), "{rep:?}");
        assert!(rep.start > start);
        let got = read_all(&log);
        let want: Vec<(Lsn, Bytes)> = all
            .range(rep.start.0..)
            .map(|(l, p)| (Lsn(*l), p.clone()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(rep.recyclable, files(&fs, dir, ".free").len());
    }
}

/// Freed segments of another size than today's are deleted at open, never
/// used: a reopen with a larger segment size would otherwise write past
/// the end of a smaller file (growing it at every sync), a smaller one
/// leave a segment larger than the writer thinks.
#[test]
fn a_reopen_with_another_segment_size_deletes_the_freed_segments() {
    let fs = PowerLossFs::new();
    let dir = Path::new("/wal");
    let log = FileLog::open(dir, options(&fs, SEGMENT)).unwrap();
    let mut all = BTreeMap::new();
    for n in 0..400u32 {
        let r = rec(b'a', n, 300);
        let Lsn(l) = log.append_blocking(std::slice::from_ref(&r)).unwrap();
        all.insert(l, r);
    }
    let upto = log.append_blocking(&[]).unwrap().0 - 5;
    log.truncate_prefix_blocking(Lsn(upto)).unwrap();
    assert_eq!(log.stats().segments_kept, 2, "{:?}", log.stats());
    drop(log);
    assert_eq!(files(&fs, dir, ".free").len(), 2);

    for size in [2 * SEGMENT, SEGMENT / 2] {
        let free = files(&fs, dir, ".free");
        assert!(!free.is_empty());
        let log = FileLog::open(dir, options(&fs, size)).unwrap();
        let rep = log.recovery();
        assert_eq!(rep.recyclable, 0);
        for (name, _) in &free {
            assert!(rep.removed.contains(name), "{name} not removed: {rep:?}");
        }
        assert!(files(&fs, dir, ".free").is_empty());
        // Appends roll into new segments of the new size.
        for n in 0..200u32 {
            let r = rec(b'b', n, 300);
            let Lsn(l) = log.append_blocking(std::slice::from_ref(&r)).unwrap();
            all.insert(l, r);
        }
        assert_eq!(log.stats().segments_recycled, 0);
        let got = read_all(&log);
        let start = log.recovery().start.0;
        assert_eq!(got.first().map(|r| r.0), Some(Lsn(start)));
        for (l, p) in &got {
            assert_eq!(all.get(&l.0), Some(p));
        }
        let upto = log.append_blocking(&[]).unwrap().0 - 5;
        log.truncate_prefix_blocking(Lsn(upto)).unwrap();
        drop(log);
        // Only files of this size were kept.
        for (name, len) in files(&fs, dir, ".free") {
            assert_eq!(len as u64, size, "{name}");
        }
        for (name, len) in files(&fs, dir, ".log") {
            assert!(len as u64 <= 2 * SEGMENT, "{name}: {len}");
        }
    }
}

/// With `recycle_segments: 0`, freed segments are deleted as before, and
/// freed ones a previous open kept are removed.
#[test]
fn recycling_can_be_turned_off() {
    let fs = PowerLossFs::new();
    let dir = Path::new("/wal");
    let log = FileLog::open(dir, options(&fs, SEGMENT)).unwrap();
    until_recycled(&log, b'a', |_| 300);
    let upto = log.append_blocking(&[]).unwrap().0 - 1;
    log.truncate_prefix_blocking(Lsn(upto)).unwrap();
    drop(log);
    assert!(!files(&fs, dir, ".free").is_empty());
    let off = || FileLogOptions {
        recycle_segments: 0,
        ..options(&fs, SEGMENT)
    };
    let log = FileLog::open(dir, off()).unwrap();
    assert!(files(&fs, dir, ".free").is_empty());
    for n in 0..300u32 {
        let Lsn(l) = log.append_blocking(&[rec(b'b', n, 300)]).unwrap();
        if n % 10 == 9 {
            log.truncate_prefix_blocking(Lsn(l - 2)).unwrap();
        }
    }
    let s = log.stats();
    assert_eq!((s.segments_recycled, s.segments_kept), (0, 0), "{s:?}");
    assert!(s.segments_deleted > 0 && s.segments_created > 0, "{s:?}");
    assert!(files(&fs, dir, ".free").is_empty());
}

/// An iterator that began before a truncation freed the segment it reads,
/// and the log reused that segment, never returns a wrong record and
/// never fails: the discarded records are skipped, as when a freed segment
/// is deleted under an iterator. (The segment is larger than what the
/// iterator reads ahead, so it does read the overwritten bytes.)
#[test]
fn an_iterator_skips_a_segment_recycled_under_it() {
    let fs = PowerLossFs::new();
    let dir = Path::new("/wal");
    let log = FileLog::open(dir, options(&fs, 256 << 10)).unwrap();
    let mut all = BTreeMap::new();
    // Segment 0 holds about 250 of these; 300 start segment 1.
    for n in 0..300u32 {
        let r = rec(b'a', n, 1000);
        let Lsn(l) = log.append_blocking(std::slice::from_ref(&r)).unwrap();
        all.insert(l, r);
    }
    let mut it = log.iter_from(Lsn(0)).unwrap();
    let (Lsn(l0), p0) = it.next().unwrap().unwrap();
    assert_eq!(all.get(&l0), Some(&p0));
    // Free segment 0 only, and make the log reuse it and overwrite more
    // than the iterator has read ahead.
    log.truncate_prefix_blocking(Lsn(280)).unwrap();
    assert_eq!(log.stats().segments_kept, 1);
    let mut n = 0;
    while log.stats().segments_recycled == 0 || n < 600 {
        let r = rec(b'b', n, 1000);
        let Lsn(l) = log.append_blocking(std::slice::from_ref(&r)).unwrap();
        all.insert(l, r);
        n += 1;
    }
    let mut last = l0;
    let mut read = 0;
    for item in it {
        let (Lsn(l), p) = item.unwrap();
        assert!(l > last);
        assert_eq!(all.get(&l), Some(&p), "LSN {l}");
        last = l;
        read += 1;
    }
    assert!(read > 0);
}

/// A torn cycle in a recycled segment: its first record damaged, the rest
/// intact, old records behind. Recovery must erase the intact rest too,
/// or a new record of the same size written over the damaged one would
/// bring them back as part of the log (phantoms), and must not call the
/// old records behind them anything but the end.
#[test]
fn an_erased_torn_tail_in_a_recycled_segment_never_comes_back() {
    let r100 = |tag: u8| Bytes::from(vec![tag; 100]);
    // Records 'b'... and 'x' end on a sector boundary (512), so a torn
    // write can keep 'x' and lose the end marker written after it.
    let r216 = |tag: u8| Bytes::from(vec![tag; 216]);
    for seed in 0..64 {
        let fs = PowerLossFs::new();
        let dir = Path::new("/wal");
        let log = FileLog::open(dir, options(&fs, SEGMENT)).unwrap();
        until_recycled(&log, b'o', |_| 100);
        let first = log.append_blocking(&[]).unwrap().0 - 1;
        // The segment being written starts at `first`: one more record, then
        // a cycle of five.
        log.append_blocking(&[r100(b'a')]).unwrap();
        log.append_blocking(&[r216(b'b'), r216(b'c'), r216(b'd'), r216(b'e'), r216(b'f')])
            .unwrap();
        drop(log);
        let seg = dir.join(format!("{first:020}.log"));
        // Record 'b' is the third in the segment.
        fs.decay(&seg, |d| d[2 * 132 + 32 + 50] ^= 1).unwrap();
        let log = FileLog::open(dir, options(&fs, SEGMENT)).unwrap();
        let torn = log.recovery().torn_tail.clone().expect("a torn tail");
        assert_eq!((torn.lsn, torn.offset), (Lsn(first + 2), 2 * 132));
        fs.fail_after(1);
        assert!(log.append_blocking(&[r216(b'x')]).is_err());
        drop(log);
        fs.power_cut(seed);
        fs.fail_after(u64::MAX);
        let log = FileLog::open(dir, options(&fs, SEGMENT)).unwrap();
        let got: Vec<u8> = log
            .iter_from(Lsn(first))
            .unwrap()
            .map(|r| r.unwrap().1[0])
            .collect();
        assert!(
            got == b"oa" || got == b"oax",
            "seed {seed}: the log reads {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

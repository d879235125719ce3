//! Segment files: naming, preallocation, and the recovery scan.
//!
//! A segment is named after the LSN of its first record
//! (`00000000000000000042.log`) and is created at its full size, filled with
//! zeros, before its name appears: later syncs then never change the file's
//! size, so `fdatasync` has no size change to journal, and a header of zeros
//! marks where the written part ends.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::record::{self, Parse};

/// Suffix of segment files.
pub(crate) const SUFFIX: &str = ".log";
/// The next segment, prepared ahead of need.
pub(crate) const SPARE: &str = "spare.prealloc";

/// The file name of the segment starting at `first`.
pub(crate) fn name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// The first LSN a segment file name stands for.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Every segment in `dir`, by first LSN.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_name) {
            segs.push((first, entry.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// Writes zeros over `[from, to)` of `file`.
pub(crate) fn zero(file: &File, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(ZEROS.len());
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Creates the spare segment: `size` bytes of zeros, synced with its size.
pub(crate) fn prepare_spare(dir: &Path, size: u64) -> io::Result<PathBuf> {
    let path = dir.join(SPARE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let mut left = size;
    while left > 0 {
        let n = (left as usize).min(ZEROS.len());
        f.write_all(&ZEROS[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(path)
}

/// How a segment's scan ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Valid records up to `offset`, zeros after (or the file ends).
    Clean,
    /// An invalid record at `offset`.
    Invalid(&'static str),
}

/// The result of scanning one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    /// LSN after the last valid record.
    pub(crate) next_lsn: u64,
    /// Offset after the last valid record.
    pub(crate) offset: usize,
    /// Whether the scan met zeros or an invalid record.
    pub(crate) end: End,
}

/// Reads the records of `data`, a segment whose first record should be
/// `first`, verifying every CRC and that LSNs follow one another.
pub(crate) fn scan(data: &[u8], first: u64, max: usize) -> Scan {
    let mut off = 0;
    let mut lsn = first;
    loop {
        match record::parse(data, off, max) {
            Parse::Record(f) if f.lsn == lsn => {
                off = f.end;
                lsn += 1;
            }
            Parse::Record(_) => {
                return Scan {
                    next_lsn: lsn,
                    offset: off,
                    end: End::Invalid("record out of LSN sequence"),
                };
            }
            Parse::Zeros => {
                // A zeroed header only ends the segment if everything after
                // it is zero too: otherwise records would be skipped.
                let end = if data[off.min(data.len())..].iter().all(|&b| b == 0) {
                    End::Clean
                } else {
                    End::Invalid("zeroed header before written data")
                };
                return Scan {
                    next_lsn: lsn,
                    offset: off,
                    end,
                };
            }
            Parse::Invalid(why) => {
                return Scan {
                    next_lsn: lsn,
                    offset: off,
                    end: End::Invalid(why),
                };
            }
        }
    }
}

/// Whether `data` holds, after `from`, a valid record written by a later
/// write-and-sync cycle than the one that should have written LSN `lsn`.
///
/// Cycles are written strictly one after another, each only after the sync
/// of the one before returned; so such a record proves that the cycle of
/// `lsn` was durable, and that what is wrong at `from` is corruption, not a
/// torn write.
pub(crate) fn later_cycle_after(data: &[u8], from: usize, lsn: u64, max: usize) -> bool {
    // LSNs further ahead than this cannot follow within one segment.
    let horizon = lsn.saturating_add(data.len() as u64);
    (from + 1..data.len().saturating_sub(record::HEADER - 1)).any(|o| {
        record::lsn_at(data, o).is_some_and(|l| l > lsn && l <= horizon)
            && matches!(record::parse(data, o, max), Parse::Record(f) if f.batch_first > lsn)
    })
}

/// Whether `data` starts with a valid record.
pub(crate) fn starts_with_record(data: &[u8], max: usize) -> bool {
    matches!(record::parse(data, 0, max), Parse::Record(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode;

    #[test]
    fn names_round_trip_and_foreign_names_are_ignored() {
        assert_eq!(parse_name(&name(42)), Some(42));
        assert_eq!(name(42), "00000000000000000042.log");
        assert_eq!(parse_name("42.log"), None);
        assert_eq!(parse_name(SPARE), None);
        assert_eq!(parse_name("0000000000000000004x.log"), None);
    }

    fn segment(cycles: &[&[u64]]) -> Vec<u8> {
        let mut data = Vec::new();
        for cycle in cycles {
            for &lsn in *cycle {
                encode(&mut data, lsn, cycle[0], format!("r{lsn}").as_bytes());
            }
        }
        data.resize(data.len() + 100, 0);
        data
    }

    #[test]
    fn scan_stops_cleanly_at_zeros_and_flags_what_follows() {
        let data = segment(&[&[5, 6], &[7]]);
        let s = scan(&data, 5, 1000);
        assert_eq!((s.next_lsn, s.end), (8, End::Clean));
        let mut hidden = data.clone();
        let at = s.offset + 50;
        hidden[at] = 1;
        assert_eq!(
            scan(&hidden, 5, 1000).end,
            End::Invalid("zeroed header before written data")
        );
        assert!(
            matches!(scan(&data, 4, 1000).end, End::Invalid(_)),
            "first LSN must match the name"
        );
    }

    #[test]
    fn a_later_cycle_after_a_bad_record_proves_corruption() {
        let data = segment(&[&[0, 1], &[2, 3]]);
        let second = match record::parse(&data, 0, 100) {
            Parse::Record(f) => f.end,
            other => panic!("{other:?}"),
        };
        // LSN 1 is bad: LSN 2 and 3 come from a later cycle.
        assert!(later_cycle_after(&data, second, 1, 100));
        // LSN 2 is bad: LSN 3 is of the same cycle, nothing later.
        let third = match record::parse(&data, second, 100) {
            Parse::Record(f) => f.end,
            other => panic!("{other:?}"),
        };
        assert!(!later_cycle_after(&data, third, 2, 100));
    }
}

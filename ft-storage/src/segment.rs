//! Segment files: naming, preallocation, and the recovery scan.
//!
//! A segment is named after the LSN of its first record
//! (`00000000000000000042.log`) and is created at its full size, filled with
//! zeros, before its name appears: later syncs then never change the file's
//! size, so `fdatasync` has no size change to journal, and a header of zeros
//! marks where the written part ends.
//!
//! A segment freed by `truncate_prefix` may be kept, renamed
//! `recycle-<first>.free`, and later renamed into place as a new segment
//! and overwritten (see the `file_log` module docs): it then holds, after
//! what was written since, records of its previous use. Those all have
//! LSNs below the log's start, so below every LSN the segment can hold now:
//! a valid header whose LSN is *below* the one expected is the end of the
//! segment's records ([`End::Stale`]), never one of them and never proof of
//! anything.
//!
//! The scan reads a segment in chunks of at most [`CHUNK`] bytes, whatever
//! the file's size: memory at recovery is bounded by the chunk, not by the
//! segment, and every byte is read and checksummed a bounded number of
//! times (see [`Work`]).

use std::io;
use std::path::{Path, PathBuf};

use crate::fs::{self, Fs, FsFile, Kind, Mode};
use crate::record::{self, HEADER, HEADER_CHECKED, Parse};

/// Suffix of segment files.
pub(crate) const SUFFIX: &str = ".log";
/// The next segment, prepared ahead of need.
pub(crate) const SPARE: &str = "spare.prealloc";
/// Prefix and suffix of a freed segment kept for reuse.
pub(crate) const FREE_PREFIX: &str = "recycle-";
pub(crate) const FREE_SUFFIX: &str = ".free";
/// The most a scan reads at once.
pub(crate) const CHUNK: usize = 1 << 20;

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

/// The name a freed segment starting at `first` is kept under for reuse.
pub(crate) fn free_name(first: u64) -> String {
    format!("{FREE_PREFIX}{first:020}{FREE_SUFFIX}")
}

/// Whether `name` is one [`free_name`] makes.
pub(crate) fn is_free_name(name: &str) -> bool {
    name.strip_prefix(FREE_PREFIX)
        .and_then(|n| n.strip_suffix(FREE_SUFFIX))
        .is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Appends the end marker written after the records of a recycled segment
/// whose first LSN is `first` (at least 1): an empty record with LSN
/// `first - 1`. Its header is valid, and its LSN below any the segment can
/// hold, so a scan ends there ([`End::Stale`]), and a search for proof of
/// durability ([`after_bad_record`]) never counts it: it looks only at LSNs
/// above the bad record's, which are at least `first`.
pub(crate) fn encode_end_marker(out: &mut Vec<u8>, first: u64) {
    debug_assert!(first >= 1, "a recycled segment never starts at LSN 0");
    let lsn = first.saturating_sub(1);
    record::encode(out, lsn, lsn, &[]);
}

/// Every entry of `dir` named like a segment, by first LSN, with its kind
/// (not followed: a link or a FIFO named like a segment is reported as
/// such).
pub(crate) fn list(fs: &dyn Fs, dir: &Path) -> io::Result<Vec<(u64, PathBuf, Kind)>> {
    let mut segs: Vec<_> = fs
        .read_dir(dir)?
        .into_iter()
        .filter_map(|e| parse_name(&e.name).map(|first| (first, dir.join(&e.name), e.kind)))
        .collect();
    segs.sort_by_key(|s| s.0);
    Ok(segs)
}

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// Writes zeros over `[from, to)` of `file`.
pub(crate) fn zero(file: &dyn FsFile, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(ZEROS.len());
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Creates the spare segment: `size` bytes of zeros, synced with its size.
///
/// The sync is what lets every later `fdatasync` of the segment carry data
/// only: its size and blocks are durable before its first record is
/// written.
pub(crate) fn prepare_spare(fs: &dyn Fs, dir: &Path, size: u64) -> io::Result<PathBuf> {
    let path = dir.join(SPARE);
    let f = fs.open(&path, Mode::Create)?;
    zero(&*f, 0, size)?;
    f.sync_all()?;
    Ok(path)
}

/// Work a scan did: bounded by a small multiple of the bytes scanned, which
/// tests assert.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Work {
    /// Bytes read from the file.
    pub(crate) read: u64,
    /// Bytes fed to CRC-32.
    pub(crate) checksummed: u64,
}

/// A window of at most [`CHUNK`] (+ a header) bytes over a file.
struct Window<'a> {
    file: &'a dyn FsFile,
    len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    at: u64,
    work: &'a mut Work,
}

impl<'a> Window<'a> {
    fn new(file: &'a dyn FsFile, len: u64, work: &'a mut Work) -> Self {
        Window {
            file,
            len,
            buf: Vec::new(),
            at: 0,
            work,
        }
    }

    /// The bytes `[off, off + n)` (fewer at the end of the file), for
    /// `n <= CHUNK + HEADER`.
    fn get(&mut self, off: u64, n: usize) -> io::Result<&[u8]> {
        let want_end = (off + n as u64).min(self.len);
        if off < self.at || want_end > self.at + self.buf.len() as u64 {
            let size = ((self.len - off.min(self.len)) as usize).min(CHUNK + HEADER);
            self.buf.resize(size, 0);
            let got = fs::read_up_to(self.file, &mut self.buf, off)?;
            self.buf.truncate(got);
            self.at = off;
            self.work.read += got as u64;
        }
        let from = (off - self.at) as usize;
        let to = ((want_end - self.at) as usize).min(self.buf.len());
        Ok(&self.buf[from.min(to)..to])
    }

    /// Whether `[from, to)` holds only zeros (what the file lacks counts as
    /// zeros: a short file ends where its zeros would have).
    fn all_zero(&mut self, from: u64, to: u64) -> io::Result<bool> {
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(CHUNK);
            let chunk = self.get(at, n)?;
            if chunk.is_empty() {
                return Ok(true);
            }
            if chunk.iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += chunk.len() as u64;
        }
        Ok(true)
    }

    /// CRC-32 of `[from, from + len)`, read in chunks.
    fn crc(&mut self, from: u64, len: u64) -> io::Result<Option<u32>> {
        let mut h = crc32fast::Hasher::new();
        let mut at = from;
        let end = from + len;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            let chunk = self.get(at, n)?;
            if chunk.is_empty() {
                return Ok(None);
            }
            h.update(chunk);
            at += chunk.len() as u64;
        }
        self.work.checksummed += len;
        Ok(Some(h.finalize()))
    }
}

/// How a segment's scan ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Valid records up to `offset`, zeros after (or the file ends).
    Clean,
    /// An invalid record at `offset`.
    Invalid(&'static str),
    /// A valid header at `offset` whose LSN is below the one expected: left
    /// from a previous use of a recycled segment (or an end marker). The
    /// segment's records end there; what follows is not the log's.
    Stale,
}

/// The result of scanning one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    /// LSN after the last valid record.
    pub(crate) next_lsn: u64,
    /// Offset after the last valid record.
    pub(crate) offset: u64,
    /// Whether the scan met zeros or an invalid record.
    pub(crate) end: End,
}

/// Reads the records of `file` (`len` bytes), a segment whose first record
/// should be `first`, verifying every checksum and that LSNs follow one
/// another. A record may be as long as the segment holds: the limit is the
/// on-disk format's, never today's write limit, so a reopen with smaller
/// options cannot mistake a long record for a torn one.
pub(crate) fn scan(file: &dyn FsFile, len: u64, first: u64, work: &mut Work) -> io::Result<Scan> {
    let mut w = Window::new(file, len, work);
    let mut off = 0u64;
    let mut lsn = first;
    let end = loop {
        if off + HEADER as u64 > len {
            break if w.all_zero(off, len)? {
                End::Clean
            } else {
                End::Invalid("header cut short")
            };
        }
        let h = w.get(off, HEADER)?;
        if h.len() < HEADER {
            // The file shrank under the scan.
            break End::Invalid("header cut short");
        }
        let parsed = record::parse(h);
        if !matches!(parsed, Parse::Zeros) {
            w.work.checksummed += HEADER_CHECKED as u64;
        }
        match parsed {
            Parse::Zeros => {
                // A zeroed header only ends the segment if everything after
                // it is zero too: otherwise records would be skipped.
                break if w.all_zero(off + HEADER as u64, len)? {
                    End::Clean
                } else {
                    End::Invalid("zeroed header before written data")
                };
            }
            Parse::Invalid(why) => break End::Invalid(why),
            Parse::Header(hd) if hd.lsn < lsn => break End::Stale,
            Parse::Header(hd) => {
                if hd.lsn != lsn {
                    break End::Invalid("record out of LSN sequence");
                }
                let payload_end = off + HEADER as u64 + u64::from(hd.len);
                if payload_end > len {
                    break End::Invalid("record runs past the end of the segment");
                }
                if w.crc(off + HEADER as u64, u64::from(hd.len))? != Some(hd.payload_crc) {
                    break End::Invalid("payload checksum mismatch");
                }
                off = payload_end;
                lsn += 1;
            }
        }
    };
    Ok(Scan {
        next_lsn: lsn,
        offset: off,
        end,
    })
}

/// What lies after a bad record: see [`after_bad_record`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct After {
    /// The offset of a valid header that proves the bad record was durable.
    pub(crate) evidence: Option<u64>,
    /// Offset just past the last non-zero byte of the file.
    pub(crate) written_end: u64,
    /// Offset just past the last record (header and claimed payload, within
    /// the file) with a valid header and an LSN above the bad record's, or
    /// `from` if there is none: what a torn cycle left that a later scan
    /// could take for the log's.
    pub(crate) ours_end: u64,
}

/// Looks at everything after the bad record at `from`, where LSN `lsn`
/// should have been, for proof that it hides a record that matters.
///
/// Without `below_start`: a valid header written by a *later*
/// write-and-sync cycle (LSN and batch start both above `lsn`) proves that
/// the bad record was durable. With `below_start = Some(start)` (the bad
/// record is below the log's start, so it and every record up to the start
/// are discarded anyway): only a valid header at or above `start` matters,
/// one of a kept record the damage would hide.
///
/// It also finds where the log's own records behind `from` end
/// ([`After::ours_end`]): what erasing a torn tail must cover.
///
/// Cycles are written strictly one after another, each only after the sync
/// of the one before returned; so such a header proves that the cycle of
/// `lsn` was durable, and that what is wrong at `from` is corruption, not a
/// torn write. Only headers are checked (28 bytes each, and only at offsets
/// whose LSN fields are in range), so the work is linear in the bytes after
/// `from` whatever they hold.
pub(crate) fn after_bad_record(
    file: &dyn FsFile,
    len: u64,
    from: u64,
    lsn: u64,
    below_start: Option<u64>,
    work: &mut Work,
) -> io::Result<After> {
    let mut w = Window::new(file, len, work);
    // A record takes at least a header, so no valid LSN after `from` can
    // lie further ahead than this.
    let horizon = lsn.saturating_add((len - from.min(len)) / HEADER as u64 + 1);
    let mut after = After {
        evidence: None,
        written_end: from,
        ours_end: from,
    };
    let mut at = from;
    while at < len {
        let n = ((len - at) as usize).min(CHUNK);
        let mut checked = 0;
        let chunk = w.get(at, n + HEADER - 1)?;
        if chunk.is_empty() {
            break;
        }
        let own = n.min(chunk.len());
        if let Some(last) = chunk[..own].iter().rposition(|&b| b != 0) {
            after.written_end = at + last as u64 + 1;
        }
        // The bad record's own offset is not after it.
        let first = usize::from(at == from);
        for i in first..own {
            let Some(h) = chunk.get(i..i + HEADER) else {
                break;
            };
            let l = record::lsn_of(h);
            if l <= lsn || l > horizon {
                continue;
            }
            let matters = match below_start {
                None => record::batch_first_of(h) > lsn,
                Some(start) => l >= start,
            };
            checked += HEADER_CHECKED as u64;
            if let Parse::Header(hd) = record::parse(h) {
                let off = at + i as u64;
                let end = (off + HEADER as u64 + u64::from(hd.len)).min(len);
                after.ours_end = after.ours_end.max(end);
                if matters {
                    after.evidence = Some(off);
                    break;
                }
            }
        }
        w.work.checksummed += checked;
        if after.evidence.is_some() {
            // Proof found: where the written bytes end no longer matters.
            break;
        }
        at += own as u64;
    }
    Ok(after)
}

/// A segment's bytes in memory, read-only: for scanning bytes that are not
/// in a file (the fuzz target, unit tests).
#[derive(Debug)]
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl FsFile for Bytes<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode;

    fn run(data: &[u8], first: u64) -> Scan {
        let f = Bytes(data);
        scan(&f, data.len() as u64, first, &mut Work::default()).unwrap()
    }

    fn later(data: &[u8], from: u64, lsn: u64) -> Option<u64> {
        let f = Bytes(data);
        after_bad_record(&f, data.len() as u64, from, lsn, None, &mut Work::default())
            .unwrap()
            .evidence
    }

    #[test]
    fn names_round_trip_and_foreign_names_are_ignored() {
        assert_eq!(parse_name(&name(42)), Some(42));
        assert_eq!(name(42), "00000000000000000042.log");
        assert_eq!(parse_name("42.log"), None);
        assert_eq!(parse_name(SPARE), None);
        assert_eq!(parse_name(&free_name(42)), None);
        assert!(is_free_name(&free_name(42)));
        assert!(!is_free_name("recycle-42.free"));
        assert!(!is_free_name(&name(42)));
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
        let s = run(&data, 5);
        assert_eq!((s.next_lsn, s.end), (8, End::Clean));
        let mut hidden = data.clone();
        hidden[s.offset as usize + 50] = 1;
        assert_eq!(
            run(&hidden, 5).end,
            End::Invalid("zeroed header before written data")
        );
        assert!(
            matches!(run(&data, 4).end, End::Invalid(_)),
            "first LSN must match the name"
        );
    }

    #[test]
    fn a_later_cycle_after_a_bad_record_proves_corruption() {
        let data = segment(&[&[0, 1], &[2, 3]]);
        let rec = |i: u64| (HEADER as u64 + 2) * i;
        // LSN 1 is bad: LSN 2 and 3 come from a later cycle.
        assert_eq!(later(&data, rec(1), 1), Some(rec(2)));
        // LSN 2 is bad: LSN 3 is of the same cycle, nothing later.
        assert_eq!(later(&data, rec(2), 2), None);
    }

    #[test]
    fn a_record_may_be_as_long_as_its_segment_holds() {
        let mut data = Vec::new();
        encode(&mut data, 0, 0, &vec![9; 3 * CHUNK]);
        let s = run(&data, 0);
        assert_eq!((s.next_lsn, s.end), (1, End::Clean));
    }
}

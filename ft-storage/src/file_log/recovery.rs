//! What [`FileLog::open`](super::FileLog::open) does before the log is
//! used: find the segments, verify every record, and decide what a bad
//! record is.
//!
//! # The rules
//!
//! 1. Leftovers of interrupted work are removed: a spare segment being
//!    prepared, temporaries of the markers. Freed segments kept for reuse
//!    (`recycle-*.free`) stay if they have today's segment size, up to the
//!    configured number, and are removed otherwise.
//! 2. Every file named like a segment must be a regular file no larger than
//!    the largest segment the log ever used (from `META`): anything else is
//!    [`StorageError::Foreign`], refused before a byte of it is read.
//! 3. The first segment must hold the persisted start: if it begins above
//!    it, records are missing ([`StorageError::Corrupt`]). Segments holding
//!    only records before the start are what an interrupted
//!    `truncate_prefix` left, and are removed.
//! 4. Segments must continue one another: each begins with the LSN after
//!    the last valid record of the one before.
//! 5. A valid header whose LSN is *below* the expected one is left from a
//!    reused segment's previous use (or is an end marker): the segment's
//!    records end there, cleanly, and nothing behind it is looked at
//!    unless the segment is the last, where records of the log's own behind
//!    it (a torn cycle whose first sector was lost) make it a torn tail as
//!    below. Such a header is never proof of anything: its LSN is below the
//!    log's start.
//!
//!    A bad record (checksum, LSN above the expected one, zeros before
//!    written data) is judged by what proves it was durable:
//!    * in a segment that another segment follows: that segment was only
//!      created after this one's records were synced. If the next segment
//!      begins right after the last valid record, the damage is in space
//!      nothing was ever written to: reported, and the log opens.
//!      Otherwise it is corruption.
//!    * in the last segment: a valid header of a *later* write-and-sync
//!      cycle anywhere after it is proof (cycles are written one after
//!      another, each after the previous sync returned): corruption. So is
//!      a valid header at or above the persisted start, when the bad record
//!      is below it (the start is only ever moved over durable records).
//!      Without proof, the bad bytes are a torn tail: erased (zeroed and
//!      synced) before the log is used, so no stale record can ever be read
//!      as part of the log. In a reused segment, where a previous use's
//!      bytes follow, only up to the end of the log's last record behind
//!      it, and an end marker is written at the tail.
//! 6. If what survived ends below the persisted start (the damage was all
//!    in discarded records), the log goes on at the start, in a new
//!    segment: no LSN is handed out twice.
//!
//! The one case that cannot be told apart is damage inside the very last
//! cycle, all of which may have been unsynced: it is truncated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ft_core::{Lsn, StorageError};

use super::marker::{self, Meta};
use crate::fs::{Fs, Kind, Mode};
use crate::fsutil;
use crate::record::HEADER;
use crate::segment::{self, End, Work};

/// What [`FileLog::open`](super::FileLog::open) found and did; see
/// [`FileLog::recovery`](super::FileLog::recovery).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// The first LSN in the log.
    pub start: Lsn,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
    /// Segment files in use.
    pub segments: usize,
    /// The torn tail that was erased, if a crash cut the last cycle.
    pub torn_tail: Option<TornTail>,
    /// Damage where nothing was ever written: after the last record of a
    /// segment that the next segment continues. No record can be hidden
    /// there, so the log opened; the bytes are left as they were found.
    pub unused_space_damage: Vec<Damage>,
    /// Where the surviving records ended, when that was below the persisted
    /// start (every damaged or missing record had been discarded by
    /// `truncate_prefix`): the log went on at the start, in a new segment.
    pub ended_below_start: Option<Lsn>,
    /// Files removed: leftovers of interrupted work, segments holding
    /// only discarded records, and freed segments not kept for reuse (of
    /// another size than today's, or beyond
    /// [`recycle_segments`](super::FileLogOptions::recycle_segments)).
    pub removed: Vec<String>,
    /// Freed segments (`recycle-*.free`) found and kept for reuse.
    pub recyclable: usize,
    /// Bytes the scan read.
    pub bytes_read: u64,
    /// Bytes the scan fed to CRC-32: the records' bytes once, plus 28 bytes
    /// per candidate header looked at after a bad record, so at most a
    /// small multiple of the segments' size whatever the files hold.
    pub bytes_checksummed: u64,
}

/// A torn tail found and erased at recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub segment: String,
    /// Where the first bad record began.
    pub offset: u64,
    /// The LSN it would have had: the log goes on from here.
    pub lsn: Lsn,
    /// How many bytes were zeroed.
    pub erased: u64,
    /// What was wrong with the record.
    pub reason: String,
}

/// Damage found where nothing was written (see
/// [`RecoveryReport::unused_space_damage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: String,
    /// Where the unused space (and the damage after it) begins.
    pub offset: u64,
    /// What the scan found there.
    pub reason: String,
}

/// Where recovery leaves the writer.
pub(crate) struct Recovered {
    /// Freed segments kept for reuse (`recycle-*.free`, of today's
    /// segment size).
    pub(crate) free: Vec<PathBuf>,
    pub(crate) start: u64,
    pub(crate) next_lsn: u64,
    pub(crate) segments: BTreeMap<u64, PathBuf>,
    /// The segment to write next.
    pub(crate) current: Option<Current>,
    /// Segments that become garbage once a new segment at `next_lsn` is
    /// installed (see rule 6).
    pub(crate) obsolete: Vec<PathBuf>,
}

/// The segment the writer goes on with.
pub(crate) struct Current {
    /// Its first LSN.
    pub(crate) first: u64,
    /// Where the next record goes.
    pub(crate) offset: u64,
    /// Its length now.
    pub(crate) len: u64,
    /// Whether bytes of a previous use follow `offset` (a recycled
    /// segment): the writer then ends what it writes with an end marker.
    pub(crate) recycled: bool,
}

struct Seg {
    first: u64,
    path: PathBuf,
    len: u64,
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        location: path.display().to_string(),
        offset,
        reason: reason.into(),
    }
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Recovers the log in `dir`, to be written with segments of
/// `segment_size` bytes, keeping up to `keep_free` freed segments for
/// reuse: see the [module docs](self).
pub(crate) fn recover(
    fs: &dyn Fs,
    dir: &Path,
    segment_size: u64,
    keep_free: usize,
) -> Result<(Recovered, RecoveryReport), StorageError> {
    let mut report = RecoveryReport::default();
    let mut work = Work::default();

    // Rule 1. Not removed durably: if one comes back after a crash, the
    // next open removes it again.
    for leftover in [
        dir.join(segment::SPARE),
        fsutil::temporary_of(&dir.join(marker::START))?,
        fsutil::temporary_of(&dir.join(marker::META))?,
    ] {
        if fsutil::remove_if_present(fs, &leftover)? {
            report.removed.push(name_of(&leftover));
        }
    }

    // Rule 1, freed segments: kept if they can serve as a segment of
    // today's size, removed otherwise (not durably: one that comes back is
    // judged again at the next open).
    let mut free = Vec::new();
    let mut names: Vec<_> = fs
        .read_dir(dir)?
        .into_iter()
        .filter(|e| segment::is_free_name(&e.name))
        .collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    for e in names {
        let path = dir.join(&e.name);
        if e.kind != Kind::File {
            return Err(StorageError::Foreign {
                location: path.display().to_string(),
                reason: format!("named like a freed segment, but a {:?}", e.kind),
            });
        }
        let len = fs.open(&path, Mode::Read)?.len()?;
        if len == segment_size && free.len() < keep_free {
            free.push(path);
        } else {
            fsutil::remove_if_present(fs, &path)?;
            report.removed.push(e.name);
        }
    }
    report.recyclable = free.len();

    // Rule 2.
    let listed = segment::list(fs, dir)?;
    let start_exists = fs.kind(&dir.join(marker::START))?.is_some();
    let recorded = match marker::read_meta(fs, dir)? {
        Some(meta) => meta.max_segment,
        None if listed.is_empty() && !start_exists => 0,
        None => {
            return Err(StorageError::Foreign {
                location: dir.display().to_string(),
                reason: "log files but no META: not a log this version of ft-storage wrote".into(),
            });
        }
    };
    if recorded < segment_size {
        // Before any segment of the new size exists, so that one can never
        // be judged against a smaller limit.
        marker::write_meta(
            fs,
            dir,
            Meta {
                max_segment: segment_size,
            },
        )?;
    }
    let limit = recorded.max(segment_size);
    let mut segs = Vec::with_capacity(listed.len());
    for (first, path, kind) in listed {
        if kind != Kind::File {
            return Err(StorageError::Foreign {
                location: path.display().to_string(),
                reason: format!("named like a segment, but a {kind:?}, not a regular file"),
            });
        }
        // Opened for its length only: a log of thousands of segments must
        // not hold thousands of files open at once.
        let len = fs.open(&path, Mode::Read)?.len()?;
        if len > limit {
            return Err(StorageError::Foreign {
                location: path.display().to_string(),
                reason: format!(
                    "named like a segment, but {len} bytes: this log's segments are at most {limit}"
                ),
            });
        }
        segs.push(Seg { first, path, len });
    }

    // Rule 3.
    let start = marker::read_start(fs, dir)?;
    if let Some(s) = segs.first()
        && s.first > start
    {
        return Err(corrupt(
            &s.path,
            0,
            format!(
                "the log starts at LSN {start} but its first segment at {}: records {start}..{} are missing",
                s.first, s.first
            ),
        ));
    }
    while segs.len() >= 2 && segs[1].first <= start {
        let gone = segs.remove(0);
        fsutil::remove_if_present(fs, &gone.path)?;
        report.removed.push(name_of(&gone.path));
    }

    // Rules 4 and 5.
    let mut next = segs.first().map_or(start, |s| s.first);
    let mut current = None;
    let mut segments = BTreeMap::new();
    for (i, seg) in segs.iter().enumerate() {
        if seg.first != next {
            return Err(corrupt(
                &seg.path,
                0,
                format!(
                    "the segment starts at LSN {}, but LSN {next} is next: the segments do not continue one another",
                    seg.first
                ),
            ));
        }
        let file = fs.open(&seg.path, Mode::Read)?;
        let scan = segment::scan(&*file, seg.len, seg.first, &mut work)?;
        segments.insert(seg.first, seg.path.clone());
        next = scan.next_lsn;
        let mut cur = Current {
            first: seg.first,
            offset: scan.offset,
            len: seg.len,
            recycled: false,
        };
        let following = segs.get(i + 1);
        let why = match scan.end {
            End::Clean => {
                current = Some(cur);
                continue;
            }
            // What follows is a previous use's: not the log's, and no proof
            // of anything. A sealed segment ends here (rule 4 checks that
            // the next one continues it); the last one is checked below for
            // a torn cycle of the log's own behind it.
            End::Stale if following.is_some() => continue,
            End::Stale => "a record of the segment's previous use",
            End::Invalid(why) => why,
        };
        if let Some(following) = following {
            if following.first != scan.next_lsn {
                return Err(corrupt(
                    &seg.path,
                    scan.offset,
                    format!(
                        "{why}; the next segment starts at LSN {}, so LSN {} was durable",
                        following.first, scan.next_lsn
                    ),
                ));
            }
            tracing::warn!(
                segment = %seg.path.display(),
                offset = scan.offset,
                reason = why,
                "damage in the unused space of a sealed segment; no record is there"
            );
            report.unused_space_damage.push(Damage {
                segment: seg.path.display().to_string(),
                offset: scan.offset,
                reason: why.into(),
            });
            continue;
        }
        let below_start = (scan.next_lsn < start).then_some(start);
        let after = segment::after_bad_record(
            &*file,
            seg.len,
            scan.offset,
            scan.next_lsn,
            below_start,
            &mut work,
        )?;
        if let Some(at) = after.evidence {
            return Err(corrupt(
                &seg.path,
                scan.offset,
                format!(
                    "{why}; a valid record written after it (at offset {at}) proves it was durable"
                ),
            ));
        }
        let x = scan.offset;
        if scan.next_lsn >= start && scan.end == End::Stale && after.ours_end <= x {
            // A recycled segment's records end at an end marker or a record
            // of its previous use, and nothing of the log's lies behind:
            // the clean end of the log.
            cur.recycled = true;
        } else if scan.next_lsn >= start {
            // A torn tail. What must go is every record of the log's behind
            // it (a valid header above the expected LSN), which a later scan
            // could otherwise take for the log's. In a fresh segment that is
            // everything written after it; in a recycled one, where a
            // previous use's bytes follow, only up to the log's last record
            // there, and an end marker then keeps the end clean.
            let ours = after.ours_end.max(x + HEADER as u64).min(seg.len);
            let marker = after.written_end > ours && seg.first >= 1;
            let erase_to = if marker { ours } else { after.written_end };
            let erased = erase_to.saturating_sub(x);
            if erased > 0 {
                let w = fs.open(&seg.path, Mode::Write)?;
                segment::zero(&*w, x, erase_to)?;
                if marker {
                    let mut m = Vec::with_capacity(HEADER);
                    segment::encode_end_marker(&mut m, seg.first);
                    w.write_all_at(&m, x)?;
                }
                // Durable before anything new is written here: otherwise a
                // power cut could drop the zeros but keep a later record,
                // and the stale records of the torn cycle would come back
                // behind it as part of the log.
                w.sync_data()?;
            }
            cur.recycled = marker;
            tracing::warn!(
                segment = %seg.path.display(),
                offset = scan.offset,
                erased,
                reason = why,
                "torn tail truncated"
            );
            report.torn_tail = Some(TornTail {
                segment: seg.path.display().to_string(),
                offset: scan.offset,
                lsn: Lsn(scan.next_lsn),
                erased,
                reason: why.into(),
            });
        }
        current = Some(cur);
    }

    // Rule 6.
    let mut obsolete = Vec::new();
    if next < start {
        tracing::warn!(
            ended = next,
            start,
            "the surviving records end below the log's start; going on at the start"
        );
        report.ended_below_start = Some(Lsn(next));
        obsolete = std::mem::take(&mut segments).into_values().collect();
        current = None;
        next = start;
    }

    // Rule 3 put the start at or after the first segment's first LSN, and
    // rule 6 the end at or after the start.
    debug_assert!(start <= next);
    report.start = Lsn(start);
    report.next_lsn = Lsn(next);
    report.segments = segments.len();
    report.bytes_read = work.read;
    report.bytes_checksummed = work.checksummed;
    Ok((
        Recovered {
            free,
            start,
            next_lsn: next,
            segments,
            current,
            obsolete,
        },
        report,
    ))
}

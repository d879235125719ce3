//! [`LogIter`]: durable records read back one at a time.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ft_core::{Lsn, StorageError};

use super::{View, lock_view};
use crate::fs::{self, Fs, FsFile, Mode};
use crate::record::{self, HEADER, Parse};

/// Bytes read ahead for small records.
const READ_AHEAD: usize = 1 << 16;

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        location: path.display().to_string(),
        offset,
        reason: reason.into(),
    }
}

/// The segment being read.
struct Open {
    idx: usize,
    /// The first LSN *not* in this segment: the next segment's first, or the
    /// durable end. Nothing past it is read, so damage in a segment's unused
    /// space (which recovery reported) is never read as a record.
    bound: u64,
    file: Box<dyn FsFile>,
    len: u64,
    path: PathBuf,
    offset: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

impl Open {
    /// The bytes `[off, off + n)`, all of them or an error.
    fn bytes(&mut self, off: u64, n: usize) -> Result<Bytes, StorageError> {
        if off + n as u64 > self.len {
            return Err(corrupt(
                &self.path,
                self.offset,
                "record runs past the end of the segment",
            ));
        }
        if n > READ_AHEAD {
            let mut out = vec![0; n];
            let got = fs::read_up_to(&*self.file, &mut out, off)?;
            if got < n {
                return Err(corrupt(
                    &self.path,
                    self.offset,
                    "segment shrank while read",
                ));
            }
            return Ok(Bytes::from(out));
        }
        let end = off + n as u64;
        if off < self.buf_at || end > self.buf_at + self.buf.len() as u64 {
            let size = ((self.len - off) as usize).min(READ_AHEAD);
            self.buf.resize(size, 0);
            let got = fs::read_up_to(&*self.file, &mut self.buf, off)?;
            self.buf.truncate(got);
            self.buf_at = off;
            if got < n {
                return Err(corrupt(
                    &self.path,
                    self.offset,
                    "segment shrank while read",
                ));
            }
        }
        let from = (off - self.buf_at) as usize;
        Ok(Bytes::copy_from_slice(&self.buf[from..from + n]))
    }

    /// The record at the current offset, checked, and the offset moved past
    /// it.
    fn read_one(&mut self) -> Result<(u64, Bytes), StorageError> {
        let h = self.bytes(self.offset, HEADER)?;
        let hd = match record::parse(&h) {
            Parse::Header(hd) => hd,
            Parse::Zeros => {
                return Err(corrupt(
                    &self.path,
                    self.offset,
                    "zeros where a durable record should be",
                ));
            }
            Parse::Invalid(why) => return Err(corrupt(&self.path, self.offset, why)),
        };
        let payload = self.bytes(self.offset + HEADER as u64, hd.len as usize)?;
        if crc32fast::hash(&payload) != hd.payload_crc {
            return Err(corrupt(
                &self.path,
                self.offset,
                "payload checksum mismatch",
            ));
        }
        self.offset += (HEADER + payload.len()) as u64;
        Ok((hd.lsn, payload))
    }
}

/// Reads durable records in LSN order, one segment file at a time (memory
/// stays bounded by one record, and a record by its segment's size). Every
/// record's checksums are verified again as it is read: damage since the
/// log was opened is an error, never a wrong record.
pub struct LogIter {
    pub(super) fs: Arc<dyn Fs>,
    view: Arc<Mutex<View>>,
    pub(super) segments: Vec<(u64, PathBuf)>,
    pub(super) next: u64,
    pub(super) end: u64,
    seg: Option<Open>,
}

impl fmt::Debug for LogIter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogIter")
            .field("next", &self.next)
            .field("end", &self.end)
            .finish()
    }
}

impl LogIter {
    pub(super) fn new(
        fs: Arc<dyn Fs>,
        view: Arc<Mutex<View>>,
        segments: Vec<(u64, PathBuf)>,
        next: u64,
        end: u64,
    ) -> Self {
        LogIter {
            fs,
            view,
            segments,
            next,
            end,
            seg: None,
        }
    }

    /// Opens the segment holding `self.next`; `Ok(false)` if it was deleted
    /// by a truncation since this iterator began (then `next` moved on).
    fn open(&mut self) -> Result<bool, StorageError> {
        let Some(idx) = self.segments.iter().rposition(|(f, _)| *f <= self.next) else {
            return Err(StorageError::Corrupt {
                location: "log".into(),
                offset: 0,
                reason: format!("no segment holds LSN {}", self.next),
            });
        };
        let (_, path) = &self.segments[idx];
        let bound = self
            .segments
            .get(idx + 1)
            .map_or(self.end, |s| s.0)
            .min(self.end);
        match self.fs.open(path, Mode::Read) {
            Ok(file) => {
                let len = file.len()?;
                self.seg = Some(Open {
                    idx,
                    bound,
                    file,
                    len,
                    path: path.clone(),
                    offset: 0,
                    buf: Vec::new(),
                    buf_at: 0,
                });
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.next = self.segments.get(idx + 1).map_or(self.end, |s| s.0);
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Iterator for LogIter {
    type Item = Result<(Lsn, Bytes), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.end {
            if self.seg.is_none() {
                match self.open() {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        self.next = self.end;
                        return Some(Err(e));
                    }
                }
            }
            let seg = self.seg.as_mut()?;
            if self.next >= seg.bound {
                let idx = seg.idx;
                self.seg = None;
                // The next segment begins at `bound`: on to it.
                self.next = self
                    .next
                    .max(self.segments.get(idx + 1).map_or(self.end, |s| s.0));
                continue;
            }
            let e = match seg.read_one() {
                // Before `from`: skipped.
                Ok((lsn, _)) if lsn < self.next => continue,
                Ok((lsn, payload)) if lsn == self.next => {
                    self.next += 1;
                    return Some(Ok((Lsn(lsn), payload)));
                }
                Ok(_) => corrupt(&seg.path, seg.offset, "record out of LSN sequence"),
                Err(e) => e,
            };
            // A truncation since this iterator began may have freed this
            // segment and the log reused it: what it holds now is newer
            // records (never one with the LSN wanted: theirs are above
            // every LSN this segment held). Its records are discarded: on
            // to the next segment, as when a freed segment is deleted.
            let (idx, bound) = (seg.idx, seg.bound);
            if lock_view(&self.view).start >= bound {
                self.seg = None;
                self.next = self
                    .next
                    .max(self.segments.get(idx + 1).map_or(self.end, |s| s.0));
                continue;
            }
            self.next = self.end;
            return Some(Err(e));
        }
        None
    }
}

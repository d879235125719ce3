//! The log's two small files beside its segments, each written with
//! `fsutil::write_atomic` and checksummed:
//!
//! * `META`: what the segments were written with — the format version and
//!   the largest segment size this log ever used. Recovery judges segment
//!   files by it, not by today's options, so a reopen with other options
//!   cannot mistake a real segment for garbage; and a file larger than any
//!   segment is refused without being read.
//! * `START`: the first LSN still in the log, moved by `truncate_prefix`.

use std::io;
use std::path::Path;

use ft_core::StorageError;

use crate::fs::{Fs, Kind, Mode};
use crate::fsutil;

/// File holding the log's format and largest segment size.
pub(crate) const META: &str = "META";
/// File holding the logical start of the log (after `truncate_prefix`).
pub(crate) const START: &str = "START";

const META_MAGIC: [u8; 4] = *b"FTWL";
/// The on-disk format this code writes and reads: version 1 is the record
/// format with a header checksum (see `record`).
pub(crate) const FORMAT: u32 = 1;

/// What `META` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The largest segment size this log was ever opened with.
    pub(crate) max_segment: u64,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        location: path.display().to_string(),
        offset: 0,
        reason: reason.into(),
    }
}

/// Reads a small marker file whole, refusing anything but a regular file
/// of at most `max` bytes; `None` if it is missing.
fn read_small(fs: &dyn Fs, path: &Path, max: usize) -> Result<Option<Vec<u8>>, StorageError> {
    match fs.kind(path)? {
        None => return Ok(None),
        Some(Kind::File) => {}
        Some(kind) => {
            return Err(StorageError::Foreign {
                location: path.display().to_string(),
                reason: format!("a {kind:?}, not a regular file"),
            });
        }
    }
    let f = fs.open(path, Mode::Read)?;
    let len = f.len()?;
    if len > max as u64 {
        return Err(corrupt(path, format!("{len} bytes, a marker has {max}")));
    }
    let mut buf = vec![0; len as usize];
    let n = crate::fs::read_up_to(&*f, &mut buf, 0)?;
    buf.truncate(n);
    Ok(Some(buf))
}

fn sealed(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

fn unsealed<'a>(path: &Path, b: &'a [u8], len: usize) -> Result<&'a [u8], StorageError> {
    if b.len() != len + 4 || crc32fast::hash(&b[..len]).to_le_bytes() != b[len..] {
        return Err(corrupt(path, "marker fails its checksum"));
    }
    Ok(&b[..len])
}

/// The log's `META`, if it has one.
pub(crate) fn read_meta(fs: &dyn Fs, dir: &Path) -> Result<Option<Meta>, StorageError> {
    let path = dir.join(META);
    let Some(b) = read_small(fs, &path, 20)? else {
        return Ok(None);
    };
    let body = unsealed(&path, &b, 16)?;
    if body[..4] != META_MAGIC {
        return Err(corrupt(&path, "not a log's META (bad magic)"));
    }
    let format = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    if format != FORMAT {
        return Err(StorageError::Foreign {
            location: path.display().to_string(),
            reason: format!("log format {format}; this version reads format {FORMAT}"),
        });
    }
    let mut max = [0; 8];
    max.copy_from_slice(&body[8..16]);
    Ok(Some(Meta {
        max_segment: u64::from_le_bytes(max),
    }))
}

/// Writes `META` atomically and durably.
pub(crate) fn write_meta(fs: &dyn Fs, dir: &Path, meta: Meta) -> io::Result<()> {
    let mut b = META_MAGIC.to_vec();
    b.extend_from_slice(&FORMAT.to_le_bytes());
    b.extend_from_slice(&meta.max_segment.to_le_bytes());
    fsutil::write_atomic(fs, &dir.join(META), &sealed(b))
}

/// The log's persisted start (0 if it was never truncated).
pub(crate) fn read_start(fs: &dyn Fs, dir: &Path) -> Result<u64, StorageError> {
    let path = dir.join(START);
    let Some(b) = read_small(fs, &path, 12)? else {
        return Ok(0);
    };
    let body = unsealed(&path, &b, 8)?;
    let mut a = [0; 8];
    a.copy_from_slice(body);
    Ok(u64::from_le_bytes(a))
}

/// Writes `START` atomically and durably.
pub(crate) fn write_start(fs: &dyn Fs, dir: &Path, start: u64) -> io::Result<()> {
    fsutil::write_atomic(fs, &dir.join(START), &sealed(start.to_le_bytes().to_vec()))
}

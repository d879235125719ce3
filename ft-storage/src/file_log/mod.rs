//! [`FileLog`]: a segmented write-ahead log on the file system, with group
//! commit and torn-tail recovery.
//!
//! # Layout
//!
//! ```text
//! dir/
//!   LOCK                        held (flock) while a handle has the log open
//!   META                        format version, largest segment size used
//!   START                       first LSN still in the log (after truncate_prefix)
//!   00000000000000000000.log    segments, named by the LSN of their first record
//!   00000000000000004096.log
//!   spare.prealloc              the next segment, being zero-filled
//!   recycle-00000000000000001024.free
//!                               a segment freed by truncate_prefix, kept
//!                               for reuse (named by its old first LSN)
//! ```
//!
//! # Durability
//!
//! An append returns only after its records were written and `fdatasync`ed.
//! Segments are created at full size (zeros) under a temporary name, synced,
//! renamed into place and the directory synced, so a segment's name never
//! appears before its space does, and later syncs change no file size.
//!
//! # Segment reuse
//!
//! A segment that `truncate_prefix` frees is renamed
//! `recycle-<first>.free` (up to [`FileLogOptions::recycle_segments`] of
//! them, of today's segment size; others are deleted). When the writer
//! needs a new segment it takes one of these before the zero-filled spare:
//! renames it into place, syncs the directory (before any record in it is
//! acknowledged), and overwrites it from the start. It is already at full
//! size, so no sync changes its size, and steady-state logging writes each
//! byte once. A spare being zero-filled in the background is left for when
//! no freed segment is waiting, and only started then.
//!
//! Behind the new records, a reused segment still holds valid records of
//! its previous use. They can never be taken for the log's:
//!
//! * every one of them has an LSN below the log's start (the start moved,
//!   durably, past the whole segment before it was freed), so below any LSN
//!   the segment can now hold, while the scan wants each record's LSN to be
//!   exactly the next one: a valid header with a *lower* LSN ends the
//!   segment's records (see [`recovery`], rule 5);
//! * the search for proof of durability after a bad record looks only at
//!   LSNs *above* the bad record's, so old records are never taken as proof
//!   that a torn tail was durable (never reported as corruption);
//! * each write into a reused segment ends with an *end marker*, an empty
//!   record whose LSN is the segment's first minus one (so, like an old
//!   record, below every LSN the segment holds), which the next write
//!   overwrites: a clean reopen finds the end there, not in the middle of an
//!   old record; a sealed segment ends with one too (or zeros, when no
//!   header fits), so it is not reported as damaged;
//! * a torn tail in a reused segment is erased up to the last record of
//!   the log's own behind it (a valid header above the expected LSN), not to
//!   the end of the old bytes, and an end marker written in its place.
//!
//! After a crash a `recycle-*.free` file may survive, or the rename may be
//! lost and the segment come back under its old name: the next open keeps
//! the former for reuse (or deletes it, if its size is not today's or the
//! bound is reached) and removes the latter as a segment wholly below the
//! start. [`FileLog::stats`] counts segments reused and created.
//!
//! # One handle per directory
//!
//! [`FileLog::open`] takes an exclusive lock on `dir/LOCK` (`flock`) and
//! holds it until the last clone is dropped or [`close`](FileLog::close)d.
//! A second open of the same directory, from this process or another, fails
//! with [`StorageError::Locked`] before reading or changing anything: two
//! writers would write records at the same offsets. The kernel releases the
//! lock when the holder dies, so a restarted process opens at once.
//!
//! # Group commit
//!
//! Appenders hand their records to one syncer thread through the
//! group-commit queue; the syncer takes *everything* pending, writes it
//! with one `pwrite` per segment, syncs once, and completes every appender
//! of the batch in LSN order. An appender that arrives while a sync is in
//! flight rides the next one, so it never waits for more than one sync cycle
//! after its own is under way.
//!
//! A blocking append that finds the log idle (nothing pending, nothing being
//! written, and recent batches of one appender each) writes and syncs its
//! records on its own thread instead: the hand-over to the syncer and back
//! would cost two thread wake-ups per append. While appenders come in
//! groups they are left to the syncer, which gathers them.
//!
//! # Recovery
//!
//! [`FileLog::open`] scans every segment in bounded chunks and verifies
//! every checksum and that LSNs follow one another; a bad record is
//! corruption ([`StorageError::Corrupt`], naming segment and offset) when
//! anything proves it was durable, and otherwise a torn tail, which is
//! erased before the log is used. [`recovery`] states the rules;
//! [`FileLog::recovery`] says what the last open found. Nothing is ever
//! skipped. Records are judged by the on-disk format (`META` and each
//! segment's size), never by today's [`FileLogOptions`]: a reopen with a
//! smaller `max_record` or `segment_size` reads every record the log holds.
//!
//! # Failure
//!
//! A failed write or `fdatasync` *poisons* the log: that append and every
//! later call fail; nothing is retried (after a failed `fsync` the kernel
//! may have dropped the dirty pages, so a retry could "succeed" with data
//! lost).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{Lsn, StableLog, StorageError};

use crate::fs::{Fs, FsLock, Mode, OsFs};
use crate::fsutil;
use crate::queue::{Failed, Lead, Queue, TicketFuture};
use crate::record::HEADER;
use crate::segment;

mod iter;
mod marker;
pub mod recovery;
mod writer;

pub use iter::LogIter;
pub use recovery::{Damage, RecoveryReport, TornTail};

use writer::{Writer, install};

/// Called before every `fdatasync`; an error it returns is treated exactly
/// as a failed `fdatasync` (for fault-injection tests).
pub type SyncHook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// How a [`FileLog`] is laid out.
#[derive(Clone)]
pub struct FileLogOptions {
    /// Bytes per new segment file (default 64 MiB). A record must fit in
    /// one. Changing it between opens is safe: segments already written keep
    /// their size and are read by it.
    pub segment_size: u64,
    /// Largest payload an append accepts (default 16 MiB, capped by the
    /// segment size). A limit on writes only: recovery and reads accept any
    /// record the segment holds, so lowering it never hides a record.
    pub max_record: usize,
    /// How many freed segments to keep for reuse (default 2; 0 deletes
    /// them as before). A segment that [`FileLog::truncate_prefix_blocking`]
    /// frees is then renamed `recycle-<first>.free` instead of deleted, and
    /// the next segment the log needs is that file renamed into place and
    /// overwritten: steady-state logging writes each byte once, with no
    /// zero-filling. Costs up to this many segments of disk space. Only
    /// segments of today's `segment_size` are kept.
    pub recycle_segments: usize,
    /// Fault injection before each `fdatasync` (default none).
    pub sync_hook: Option<SyncHook>,
    /// The file system the log lives on (default [`OsFs`]; tests use
    /// [`PowerLossFs`](crate::power_loss::PowerLossFs)).
    pub fs: Arc<dyn Fs>,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        FileLogOptions {
            segment_size: 64 << 20,
            max_record: 16 << 20,
            recycle_segments: 2,
            sync_hook: None,
            fs: Arc::new(OsFs),
        }
    }
}

impl fmt::Debug for FileLogOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLogOptions")
            .field("segment_size", &self.segment_size)
            .field("max_record", &self.max_record)
            .field("recycle_segments", &self.recycle_segments)
            .field("sync_hook", &self.sync_hook.is_some())
            .field("fs", &self.fs)
            .finish()
    }
}

/// What readers see: which segments exist and what is durable.
#[derive(Debug)]
pub(crate) struct View {
    /// Records before this LSN were discarded by `truncate_prefix`.
    start: u64,
    /// Records before this LSN are durable.
    durable_end: u64,
    segments: BTreeMap<u64, PathBuf>,
    poisoned: bool,
    /// Freed segments kept for reuse, of today's segment size.
    free: Vec<PathBuf>,
    stats: FileLogStats,
}

/// What a [`FileLog`] handle did since it was opened: see
/// [`FileLog::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileLogStats {
    /// Segments started by reusing a freed one (renamed into place and
    /// overwritten).
    pub segments_recycled: u64,
    /// Segments started from a new zero-filled file.
    pub segments_created: u64,
    /// Segments `truncate_prefix` freed and kept for reuse.
    pub segments_kept: u64,
    /// Segments `truncate_prefix` freed and deleted.
    pub segments_deleted: u64,
}

pub(crate) fn lock_view(m: &Mutex<View>) -> MutexGuard<'_, View> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    max_record: usize,
    queue: Arc<Queue>,
    /// Written by the syncer thread, or by a lone blocking appender
    /// ([`Queue::lead`]); the queue's `busy` flag keeps them apart.
    writer: Arc<Mutex<Writer>>,
    view: Arc<Mutex<View>>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    /// The directory's lock, released once the syncer has stopped.
    dir_lock: Mutex<Option<FsLock>>,
    recovery: RecoveryReport,
    segment_size: u64,
    recycle: usize,
}

impl Inner {
    fn stop(&self) {
        self.queue.close();
        let handle = self
            .syncer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // If the syncer died, nobody else will complete these.
        self.queue.fail_pending(Failed::Closed);
        // Only now may another handle write here.
        self.dir_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A segmented, group-committed, crash-recovering write-ahead log.
///
/// Cheap to clone: clones share the log. The log stops when the last clone
/// is dropped or [`close`](FileLog::close) is called; appends still queued
/// then are written and synced first.
///
/// The async methods do their file reads on the calling task (appends wait
/// for the syncer thread without blocking); call reads from a blocking
/// context in latency-sensitive executors.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use ft_core::Lsn;
/// use ft_storage::{FileLog, FileLogOptions};
///
/// # let dir = std::env::temp_dir().join(format!("ft-file-log-doc-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let log = FileLog::open(&dir, FileLogOptions::default())?;
/// // Durable when it returns: the LSN of the first record appended.
/// assert_eq!(log.append_blocking(&[Bytes::from("a"), Bytes::from("b")])?, Lsn(0));
/// assert_eq!(log.append_blocking(&[Bytes::from("c")])?, Lsn(2));
/// drop(log); // a stop or a crash: the directory is unlocked
///
/// // Reopening recovers the log and verifies every record.
/// let log = FileLog::open(&dir, FileLogOptions::default())?;
/// let tail: Vec<(Lsn, Bytes)> = log.iter_from(Lsn(1))?.collect::<Result<_, _>>()?;
/// assert_eq!(tail, [(Lsn(1), Bytes::from("b")), (Lsn(2), Bytes::from("c"))]);
/// assert_eq!(log.append_blocking(&[Bytes::from("d")])?, Lsn(3), "appends go on");
/// # drop(log);
/// # let _ = std::fs::remove_dir_all(&dir);
/// # Ok::<(), ft_core::StorageError>(())
/// ```
#[derive(Clone)]
pub struct FileLog {
    inner: Arc<Inner>,
}

impl fmt::Debug for FileLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLog")
            .field("dir", &self.inner.dir)
            .field("view", &*lock_view(&self.inner.view))
            .finish()
    }
}

fn failed(f: Failed) -> StorageError {
    match f {
        Failed::Io(kind, msg) => StorageError::Io(io::Error::new(kind, msg)),
        Failed::Poisoned => StorageError::Poisoned,
        Failed::Closed => StorageError::Closed,
    }
}

impl FileLog {
    /// Opens (creating if needed) the log in `dir`, recovering it: see the
    /// [module docs](self).
    ///
    /// # Errors
    /// * [`StorageError::Locked`] if another handle has `dir` open;
    /// * [`StorageError::Corrupt`] if a record that was durable is damaged
    ///   or missing (nothing is changed then);
    /// * [`StorageError::Foreign`] if a file named like the log's own is not
    ///   one it could have written (a link, a FIFO, a file larger than any
    ///   segment), or `dir` holds log files of another format;
    /// * [`StorageError::Rejected`] for a segment size too small to hold a
    ///   record.
    pub fn open(dir: impl AsRef<Path>, options: FileLogOptions) -> Result<FileLog, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        if options.segment_size < (HEADER as u64) * 2 {
            return Err(StorageError::Rejected(format!(
                "segment size {} is too small",
                options.segment_size
            )));
        }
        let fs = options.fs.clone();
        let max_record = options
            .max_record
            .min((options.segment_size as usize).saturating_sub(HEADER));
        fsutil::create_dir_durably(&*fs, &dir)?;
        let dir_lock = fsutil::lock_dir(&*fs, &dir)?;
        let (rec, report) =
            recovery::recover(&*fs, &dir, options.segment_size, options.recycle_segments)?;
        let view = Arc::new(Mutex::new(View {
            start: rec.start,
            durable_end: rec.next_lsn,
            segments: rec.segments,
            poisoned: false,
            free: rec.free,
            stats: FileLogStats::default(),
        }));
        let (file, first, offset, capacity, recycled) = match rec.current {
            // A segment keeps the size it was made with, whatever the
            // options say now: it is never grown.
            Some(c) => (
                fs.open(&dir.join(segment::name(c.first)), Mode::Write)?,
                c.first,
                c.offset,
                c.len,
                c.recycled,
            ),
            None => {
                let spare = segment::prepare_spare(&*fs, &dir, options.segment_size)?;
                let file = install(&*fs, &dir, &spare, rec.next_lsn, &view)?;
                lock_view(&view).stats.segments_created += 1;
                // The new segment is durable: the old ones hold only
                // records below the start, and go (a crash before this
                // leaves them to the next open, which removes them).
                for old in &rec.obsolete {
                    fsutil::remove_if_present(&*fs, old)?;
                }
                (file, rec.next_lsn, 0, options.segment_size, false)
            }
        };
        let writer = Writer {
            fs: fs.clone(),
            dir: dir.clone(),
            segment_size: options.segment_size,
            sync_hook: options.sync_hook.clone(),
            file,
            offset,
            capacity,
            buf: Vec::with_capacity(1 << 20),
            skip: 0,
            spare: None,
            view: view.clone(),
            first,
            recycled,
            recycling: options.recycle_segments > 0,
        };
        let writer = Arc::new(Mutex::new(writer));
        let queue = Arc::new(Queue::new(rec.next_lsn));
        let (q, w) = (queue.clone(), writer.clone());
        let syncer = std::thread::Builder::new()
            .name("ft-log-syncer".into())
            .spawn(move || Writer::run(w, q))?;
        Ok(FileLog {
            inner: Arc::new(Inner {
                fs,
                dir,
                max_record,
                queue,
                writer,
                view,
                syncer: Mutex::new(Some(syncer)),
                dir_lock: Mutex::new(Some(dir_lock)),
                recovery: report,
                segment_size: options.segment_size,
                recycle: options.recycle_segments,
            }),
        })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Largest payload an append accepts.
    pub fn max_record(&self) -> usize {
        self.inner.max_record
    }

    /// What recovery found and did when this log was opened: torn tail
    /// erased, damage in unused space, leftovers removed, work done.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// What this handle did since it was opened: segments recycled,
    /// created, kept and deleted.
    pub fn stats(&self) -> FileLogStats {
        lock_view(&self.inner.view).stats
    }

    fn check_sizes(&self, records: &[Bytes]) -> Result<(), StorageError> {
        match records.iter().find(|r| r.len() > self.inner.max_record) {
            Some(r) => Err(StorageError::Rejected(format!(
                "record of {} bytes exceeds the limit of {}",
                r.len(),
                self.inner.max_record
            ))),
            None => Ok(()),
        }
    }

    fn submit(&self, records: &[Bytes]) -> Result<(u64, TicketFuture), StorageError> {
        self.check_sizes(records)?;
        let (first, ticket) = self.inner.queue.submit(records.to_vec()).map_err(failed)?;
        Ok((first, TicketFuture(ticket)))
    }

    /// Appends `records` and blocks the calling thread until they are
    /// durable; returns the LSN of the first.
    pub fn append_blocking(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
        if records.is_empty() {
            return self.next_lsn_now();
        }
        self.check_sizes(records)?;
        let ticket = match self.inner.queue.lead(records.to_vec()).map_err(failed)? {
            Lead::Queued(ticket) => ticket,
            // The log is idle: write and sync on this thread.
            Lead::Now(batch) => {
                let ticket = batch.ticket.clone();
                Writer::commit(&self.inner.writer, &self.inner.queue, vec![batch]);
                ticket
            }
        };
        ticket.wait().map(Lsn).map_err(failed)
    }

    fn next_lsn_now(&self) -> Result<Lsn, StorageError> {
        self.check()?;
        Ok(Lsn(self.inner.queue.next_lsn()))
    }

    fn check(&self) -> Result<(), StorageError> {
        if lock_view(&self.inner.view).poisoned || self.inner.queue.is_poisoned() {
            Err(StorageError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// The durable records from `from` on, read one at a time.
    ///
    /// # Errors
    /// [`StorageError::Poisoned`] after a failed sync,
    /// [`StorageError::Closed`] after [`close`](Self::close).
    pub fn iter_from(&self, from: Lsn) -> Result<LogIter, StorageError> {
        self.check()?;
        drop(self.held()?);
        let v = lock_view(&self.inner.view);
        Ok(LogIter::new(
            self.inner.fs.clone(),
            self.inner.view.clone(),
            v.segments.iter().map(|(f, p)| (*f, p.clone())).collect(),
            from.0.max(v.start),
            v.durable_end,
        ))
    }

    /// Discards the records before `upto` and returns the log's start
    /// afterwards; see [`StableLog::truncate_prefix`] for the contract.
    ///
    /// The start moves durably (`START` is rewritten atomically) before
    /// any file goes; then every segment holding only discarded records is
    /// kept for reuse (renamed `recycle-<first>.free`, up to
    /// [`FileLogOptions::recycle_segments`] of today's segment size) or
    /// deleted. Neither needs a sync: a segment that comes back under its
    /// old name after a crash lies wholly below the start, and the next
    /// open removes it again; a free name that survives is reused or
    /// removed by the next open.
    ///
    /// # Errors
    /// [`StorageError::Rejected`] if `upto` is past the next LSN to be
    /// appended; I/O errors of writing `START` (the start is then unchanged
    /// in this handle, and may or may not have moved on disk).
    pub fn truncate_prefix_blocking(&self, upto: Lsn) -> Result<Lsn, StorageError> {
        self.check()?;
        // Held throughout, so a concurrent `close` cannot hand the directory
        // to another handle while this one rewrites `START`.
        let held = self.held()?;
        let next = self.inner.queue.next_lsn();
        if upto.0 > next {
            return Err(StorageError::Rejected(format!(
                "cannot discard records before {}: the log ends at {next}",
                upto.0
            )));
        }
        let mut v = lock_view(&self.inner.view);
        let upto = upto.0.min(v.durable_end);
        if upto <= v.start {
            return Ok(Lsn(v.start));
        }
        marker::write_start(&*self.inner.fs, &self.inner.dir, upto)?;
        v.start = upto;
        let firsts: Vec<u64> = v.segments.keys().copied().collect();
        for w in firsts.windows(2) {
            if w[1] <= upto
                && let Some(p) = v.segments.remove(&w[0])
            {
                if v.free.len() < self.inner.recycle && self.reusable(&p)? {
                    let to = self.inner.dir.join(segment::free_name(w[0]));
                    self.inner.fs.rename(&p, &to)?;
                    v.free.push(to);
                    v.stats.segments_kept += 1;
                } else {
                    fsutil::remove_if_present(&*self.inner.fs, &p)?;
                    v.stats.segments_deleted += 1;
                }
            }
        }
        drop(held);
        Ok(Lsn(upto))
    }

    /// Whether the segment file at `p` can serve as a new segment: of
    /// today's size (one made before a reopen with another size is not).
    fn reusable(&self, p: &Path) -> Result<bool, StorageError> {
        match self.inner.fs.open(p, Mode::Read) {
            Ok(f) => Ok(f.len()? == self.inner.segment_size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The directory lock, or [`StorageError::Closed`] once it was released.
    fn held(&self) -> Result<MutexGuard<'_, Option<FsLock>>, StorageError> {
        let held = self
            .inner
            .dir_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.is_none() {
            return Err(StorageError::Closed);
        }
        Ok(held)
    }

    /// Stops the log: appends already queued are written and synced, later
    /// calls fail with [`StorageError::Closed`], and the directory's lock is
    /// released (another handle may open it now).
    pub fn close(&self) {
        self.inner.stop();
    }
}

#[async_trait]
impl StableLog for FileLog {
    async fn append(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
        if records.is_empty() {
            return self.next_lsn_now();
        }
        let (_, ticket) = self.submit(records)?;
        ticket.await.map(Lsn).map_err(failed)
    }

    async fn read_from(&self, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, StorageError> {
        self.iter_from(from)?.collect()
    }

    async fn truncate_prefix(&self, upto: Lsn) -> Result<Lsn, StorageError> {
        self.truncate_prefix_blocking(upto)
    }

    async fn next_lsn(&self) -> Result<Lsn, StorageError> {
        self.next_lsn_now()
    }
}

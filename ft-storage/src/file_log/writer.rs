//! The syncer: the one thread that writes the log, a batch of appends at a
//! time, and syncs once per batch (group commit).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{SyncHook, View, lock_view};
use crate::fs::{Fs, FsFile, Mode};
use crate::queue::{Failed, Pending, Queue};
use crate::record::{self, HEADER};
use crate::segment;

/// Renames a prepared spare, or a freed segment kept for reuse, into place
/// as the segment starting at `first`, makes the name durable, and opens it
/// for writing.
pub(super) fn install(
    fs: &dyn Fs,
    dir: &Path,
    spare: &Path,
    first: u64,
    view: &Mutex<View>,
) -> io::Result<Box<dyn FsFile>> {
    let path = dir.join(segment::name(first));
    fs.rename(spare, &path)?;
    // Without this sync the new name may be lost in a power cut, and with
    // it every record synced into the segment afterwards (a recycled one
    // would come back under its free name, or its old one, and be
    // discarded).
    fs.sync_dir(dir)?;
    let file = fs.open(&path, Mode::Write)?;
    lock_view(view).segments.insert(first, path);
    Ok(file)
}

/// The syncer's side: the segment being written and the write buffer.
pub(super) struct Writer {
    pub(super) fs: Arc<dyn Fs>,
    pub(super) dir: PathBuf,
    pub(super) segment_size: u64,
    pub(super) sync_hook: Option<SyncHook>,
    pub(super) file: Box<dyn FsFile>,
    /// Where the next record goes in `file`.
    pub(super) offset: u64,
    /// How many bytes `file` may hold: its length (a segment keeps the size
    /// it was made with, even when a reopen changed the option).
    pub(super) capacity: u64,
    /// Encoded records; the bytes to write start at `skip`, chosen so that
    /// they sit at the same offset within a memory page as within a file
    /// page (the kernel copies aligned pages several times faster).
    pub(super) buf: Vec<u8>,
    pub(super) skip: usize,
    pub(super) spare: Option<JoinHandle<io::Result<PathBuf>>>,
    pub(super) view: Arc<Mutex<View>>,
    /// The first LSN of `file`.
    pub(super) first: u64,
    /// Whether `file` holds a previous use's bytes after `offset` (it was
    /// recycled): each write then ends with an end marker, so that a scan
    /// finds the records' end there rather than in the old bytes.
    pub(super) recycled: bool,
    /// Whether freed segments are reused (`recycle_segments > 0`).
    pub(super) recycling: bool,
}

const PAGE: usize = 4096;
/// Bounds on how long the syncer waits to gather appenders into one batch.
const MIN_GATHER: Duration = Duration::from_micros(20);
const MAX_GATHER: Duration = Duration::from_millis(2);

impl Writer {
    fn begin(&mut self) {
        self.buf.clear();
        let to_page = self.buf.as_ptr().align_offset(PAGE);
        self.skip = (to_page + self.offset as usize % PAGE) % PAGE;
        self.buf.resize(self.skip, 0);
    }

    fn sync(&self) -> io::Result<()> {
        if let Some(hook) = &self.sync_hook {
            hook()?;
        }
        // What makes an append durable: nothing is acknowledged before it.
        self.file.sync_data()
    }

    /// Writes and syncs what is buffered. In a recycled segment the write
    /// ends with an end marker (or, if no header fits, zeros up to the
    /// end), which the next write overwrites: the offset moves past the
    /// records only.
    fn flush(&mut self) -> io::Result<()> {
        let records = (self.buf.len() - self.skip) as u64;
        if records == 0 {
            return Ok(());
        }
        if self.recycled {
            let end = self.offset + records;
            if end + HEADER as u64 <= self.capacity {
                segment::encode_end_marker(&mut self.buf, self.first);
            } else {
                let n = self.buf.len() + (self.capacity - end) as usize;
                self.buf.resize(n, 0);
            }
        }
        self.file
            .write_all_at(&self.buf[self.skip..], self.offset)?;
        self.sync()?;
        self.offset += records;
        Ok(())
    }

    /// Starts a new segment whose first record is `first`.
    ///
    /// A freed segment kept for reuse is taken first: it is already at full
    /// size, so rolling writes nothing but the records. Only without one is
    /// the spare (zero-filled ahead) used, or made now.
    fn roll(&mut self, first: u64) -> io::Result<()> {
        let free = lock_view(&self.view).free.pop();
        let (from, recycled) = match free {
            Some(path) => (path, true),
            None => {
                let spare = match self.spare.take() {
                    Some(h) => h.join().unwrap_or_else(|_| {
                        Err(io::Error::other("segment preparation panicked"))
                    })?,
                    None => segment::prepare_spare(&*self.fs, &self.dir, self.segment_size)?,
                };
                (spare, false)
            }
        };
        self.file = install(&*self.fs, &self.dir, &from, first, &self.view)?;
        {
            let mut v = lock_view(&self.view);
            if recycled {
                v.stats.segments_recycled += 1;
            } else {
                v.stats.segments_created += 1;
            }
        }
        self.first = first;
        self.recycled = recycled;
        self.offset = 0;
        self.capacity = self.segment_size;
        // Without reuse the next spare is started at once; with it, only
        // if no freed segment is waiting by the time this one is half full.
        self.prepare_next(!self.recycling);
        Ok(())
    }

    /// Zero-fills the next segment on a thread of its own, so that rolling
    /// over costs a rename rather than a write of a whole segment while
    /// appenders wait. At most one spare exists (a second preparation would
    /// truncate and rewrite the file the first one may already have handed
    /// over). Right after a roll it starts at once; after an open, only once
    /// the segment is half full, so opening a small log writes nothing.
    pub(super) fn prepare_next(&mut self, now: bool) {
        if self.spare.is_some() || !(now || self.offset >= self.capacity / 2) {
            return;
        }
        if !lock_view(&self.view).free.is_empty() {
            return;
        }
        let (fs, dir, size) = (self.fs.clone(), self.dir.clone(), self.segment_size);
        self.spare = Some(std::thread::spawn(move || {
            segment::prepare_spare(&*fs, &dir, size)
        }));
    }

    /// Writes one batch: every record, rolling segments as they fill, and
    /// one sync per segment touched.
    fn write(&mut self, batch: &[Pending]) -> io::Result<()> {
        self.begin();
        let mut cycle_first = None;
        for p in batch {
            for (i, r) in p.records.iter().enumerate() {
                let lsn = p.first + i as u64;
                let len = (HEADER + r.len()) as u64;
                let buffered = (self.buf.len() - self.skip) as u64;
                if self.offset + buffered + len > self.capacity {
                    self.flush()?;
                    self.roll(lsn)?;
                    self.begin();
                    cycle_first = None;
                }
                let first = *cycle_first.get_or_insert(lsn);
                record::encode(&mut self.buf, lsn, first, r);
            }
        }
        self.flush()?;
        self.prepare_next(false);
        Ok(())
    }

    /// Writes and syncs one batch taken from `queue` (by the syncer, or by
    /// a leading appender), publishes it to readers, completes its tickets
    /// and ends the batch ([`Queue::done`]). On failure the log is poisoned
    /// and `false` returned. Returns how long the write and sync took.
    pub(super) fn commit(
        writer: &Mutex<Writer>,
        queue: &Queue,
        batch: Vec<Pending>,
    ) -> (bool, Duration) {
        let last = batch.last().map_or(0, |p| p.first + p.records.len() as u64);
        let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let written = w.write(&batch);
        let took = started.elapsed();
        let ok = match written {
            Ok(()) => {
                // Visible to readers before anyone is told it is durable.
                lock_view(&w.view).durable_end = last;
                drop(w);
                for p in batch {
                    p.ticket.complete_quietly(Ok(p.first));
                }
                queue.bell.ring();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "log write or sync failed; log poisoned");
                lock_view(&w.view).poisoned = true;
                drop(w);
                for p in batch {
                    p.ticket
                        .complete_quietly(Err(Failed::Io(e.kind(), e.to_string())));
                }
                queue.bell.ring();
                queue.poison();
                false
            }
        };
        queue.done();
        (ok, took)
    }

    /// The syncer thread's loop.
    pub(super) fn run(writer: Arc<Mutex<Writer>>, queue: Arc<Queue>) {
        // How many appenders to wait for, and how long: as many as recent
        // batches carried (decaying slowly when fewer come back), for at most
        // half a sync. One appender alone is never kept waiting.
        let mut want = 1usize;
        let mut max_wait = Duration::ZERO;
        while let Some(batch) = queue.take_gathering(want, max_wait) {
            want = batch.len().max(want.saturating_sub(1)).max(1);
            let (ok, took) = Writer::commit(&writer, &queue, batch);
            max_wait = (took / 2).clamp(MIN_GATHER, MAX_GATHER);
            if !ok {
                break;
            }
        }
        // Taking the writer waits for a leading appender's write to end:
        // the log releases its directory only after this thread stops.
        let spare = writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spare
            .take();
        if let Some(h) = spare {
            let _ = h.join();
        }
    }
}

//! [`FileLog`]: a segmented write-ahead log on the file system, with group
//! commit and torn-tail recovery.
//!
//! # Durability
//!
//! An append returns only after its records were written and `fdatasync`ed.
//! Segments are created at full size (zeros) under a temporary name, synced,
//! renamed into place and the directory synced, so a segment's name never
//! appears before its space does, and later syncs change no file size.
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
//! # Recovery
//!
//! [`FileLog::open`] scans every segment and verifies every CRC and that
//! LSNs follow one another. The first bad record is judged by what follows
//! it: a valid record of a *later* write-and-sync cycle proves the bad one
//! was durable, so it is corruption and opening fails with
//! [`StorageError::Corrupt`] naming the segment and offset; otherwise it is a
//! torn tail (a cycle cut by a crash, zeros, or garbage), which is erased
//! with zeros and synced before the log is used. Nothing is ever skipped.
//! One limit follows: damage inside the very last cycle (all of it
//! possibly unsynced) is indistinguishable from a torn write and is
//! truncated.
//!
//! # Failure
//!
//! A failed write or `fdatasync` *poisons* the log: that append and every
//! later call fail; nothing is retried (after a failed `fsync` the kernel
//! may have dropped the dirty pages, so a retry could "succeed" with data
//! lost).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{Lsn, StableLog, StorageError};

use crate::fsutil;
use crate::queue::{Failed, Pending, Queue, TicketFuture};
use crate::record::{self, HEADER};
use crate::segment::{self, End};

/// Called before every `fdatasync`; an error it returns is treated exactly
/// as a failed `fdatasync` (for fault-injection tests).
pub type SyncHook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// How a [`FileLog`] is laid out.
#[derive(Clone)]
pub struct FileLogOptions {
    /// Bytes per segment file (default 64 MiB). A record must fit in one.
    pub segment_size: u64,
    /// Largest payload accepted (default 16 MiB, capped by the segment size).
    pub max_record: usize,
    /// Fault injection before each `fdatasync` (default none).
    pub sync_hook: Option<SyncHook>,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        FileLogOptions {
            segment_size: 64 << 20,
            max_record: 16 << 20,
            sync_hook: None,
        }
    }
}

impl fmt::Debug for FileLogOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLogOptions")
            .field("segment_size", &self.segment_size)
            .field("max_record", &self.max_record)
            .field("sync_hook", &self.sync_hook.is_some())
            .finish()
    }
}

/// File holding the logical start of the log (after `truncate_prefix`).
const START: &str = "START";

/// What readers see: which segments exist and what is durable.
#[derive(Debug)]
struct View {
    /// Records before this LSN were discarded by `truncate_prefix`.
    start: u64,
    /// Records before this LSN are durable.
    durable_end: u64,
    segments: BTreeMap<u64, PathBuf>,
    poisoned: bool,
}

fn lock(m: &Mutex<View>) -> MutexGuard<'_, View> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    dir: PathBuf,
    max_record: usize,
    queue: Arc<Queue>,
    view: Arc<Mutex<View>>,
    syncer: std::sync::Mutex<Option<JoinHandle<()>>>,
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
#[derive(Clone)]
pub struct FileLog {
    inner: Arc<Inner>,
}

impl fmt::Debug for FileLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLog")
            .field("dir", &self.inner.dir)
            .field("view", &*lock(&self.inner.view))
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

fn corrupt(path: &Path, offset: usize, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        location: path.display().to_string(),
        offset: offset as u64,
        reason: reason.into(),
    }
}

fn read_start(dir: &Path) -> Result<u64, StorageError> {
    let path = dir.join(START);
    match fs::read(&path) {
        Ok(b) if b.len() == 12 && crc32fast::hash(&b[..8]).to_le_bytes() == b[8..12] => {
            let mut a = [0; 8];
            a.copy_from_slice(&b[..8]);
            Ok(u64::from_le_bytes(a))
        }
        Ok(_) => Err(corrupt(&path, 0, "start marker fails its checksum")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn write_start(dir: &Path, start: u64) -> io::Result<()> {
    let mut b = start.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
    fsutil::write_atomic(&dir.join(START), &b)
}

/// Where recovery leaves the writer.
struct Recovered {
    start: u64,
    next_lsn: u64,
    segments: BTreeMap<u64, PathBuf>,
    /// The segment to write next, and the offset in it.
    current: Option<(u64, usize)>,
}

fn recover(dir: &Path, max: usize) -> Result<Recovered, StorageError> {
    for leftover in [
        dir.join(segment::SPARE),
        fsutil::temporary_of(&dir.join(START))?,
    ] {
        fsutil::remove_durably(&leftover)?;
    }
    let start = read_start(dir)?;
    let mut segs = segment::list(dir)?;
    // Finish an interrupted truncate_prefix: whole segments below the start.
    while segs.len() >= 2 && segs[1].0 <= start {
        fsutil::remove_durably(&segs[0].1)?;
        segs.remove(0);
    }
    let mut segments = BTreeMap::new();
    let mut next_lsn = segs.first().map_or(start, |s| s.0);
    let mut current = None;
    let mut data = Vec::new();
    for i in 0..segs.len() {
        let (first, path) = &segs[i];
        data.clear();
        File::open(path)?.read_to_end(&mut data)?;
        let later_has_records = || -> Result<bool, StorageError> {
            for (_, p) in &segs[i + 1..] {
                let mut head = vec![0; HEADER + max.min(1 << 20)];
                let n = read_up_to(p, &mut head)?;
                if segment::starts_with_record(&head[..n], max) {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        if *first != next_lsn {
            if segment::starts_with_record(&data, max) || later_has_records()? {
                return Err(corrupt(
                    path,
                    0,
                    format!("segment starts at LSN {first}, but LSN {next_lsn} is next"),
                ));
            }
            // An empty segment out of sequence: garbage of a crash.
            remove_tail(&segs[i..])?;
            break;
        }
        let scan = segment::scan(&data, *first, max);
        segments.insert(*first, path.clone());
        next_lsn = scan.next_lsn;
        current = Some((*first, scan.offset));
        if let End::Invalid(why) = scan.end {
            if segment::later_cycle_after(&data, scan.offset, scan.next_lsn, max)
                || later_has_records()?
            {
                return Err(corrupt(path, scan.offset, why));
            }
            // A torn tail: erase it, so no stale record can ever be read as
            // part of the log, and drop what came after.
            let last = data.iter().rposition(|&b| b != 0).unwrap_or(0);
            let f = OpenOptions::new().write(true).open(path)?;
            segment::zero(&f, scan.offset as u64, last as u64 + 1)?;
            f.sync_data()?;
            tracing::warn!(
                segment = %path.display(),
                offset = scan.offset,
                reason = why,
                "torn tail truncated"
            );
            remove_tail(&segs[i + 1..])?;
            break;
        }
    }
    Ok(Recovered {
        start: start.max(segs.first().map_or(start, |s| s.0)).min(next_lsn),
        next_lsn,
        segments,
        current,
    })
}

fn read_up_to(path: &Path, buf: &mut [u8]) -> io::Result<usize> {
    let f = File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn remove_tail(segs: &[(u64, PathBuf)]) -> io::Result<()> {
    for (_, p) in segs {
        fsutil::remove_durably(p)?;
    }
    Ok(())
}

/// Renames a prepared spare into place as the segment starting at `first`,
/// makes the name durable, and opens it for writing.
fn install(dir: &Path, spare: &Path, first: u64, view: &Mutex<View>) -> io::Result<File> {
    let path = dir.join(segment::name(first));
    fs::rename(spare, &path)?;
    fsutil::sync_dir(dir)?;
    let file = OpenOptions::new().write(true).open(&path)?;
    lock(view).segments.insert(first, path);
    Ok(file)
}

/// The syncer's side: the segment being written and the write buffer.
struct Writer {
    dir: PathBuf,
    segment_size: u64,
    sync_hook: Option<SyncHook>,
    file: File,
    offset: u64,
    /// Encoded records; the bytes to write start at `skip`, chosen so that
    /// they sit at the same offset within a memory page as within a file
    /// page (the kernel copies aligned pages several times faster).
    buf: Vec<u8>,
    skip: usize,
    spare: Option<JoinHandle<io::Result<PathBuf>>>,
    view: Arc<Mutex<View>>,
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
        self.file.sync_data()
    }

    /// Writes and syncs what is buffered.
    fn flush(&mut self) -> io::Result<()> {
        let bytes = &self.buf[self.skip..];
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(bytes, self.offset)?;
        self.sync()?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Starts a new segment whose first record is `first`.
    fn roll(&mut self, first: u64) -> io::Result<()> {
        let spare = match self.spare.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("segment preparation panicked")))?,
            None => segment::prepare_spare(&self.dir, self.segment_size)?,
        };
        self.file = install(&self.dir, &spare, first, &self.view)?;
        self.offset = 0;
        self.prepare_next(true);
        Ok(())
    }

    /// Zero-fills the next segment on a thread of its own, so that rolling
    /// over costs a rename rather than a write of a whole segment while
    /// appenders wait. At most one spare exists (a second preparation would
    /// truncate and rewrite the file the first one may already have handed
    /// over). Right after a roll it starts at once; after an open, only once
    /// the segment is half full, so opening a small log writes nothing.
    fn prepare_next(&mut self, now: bool) {
        if self.spare.is_some() || !(now || self.offset >= self.segment_size / 2) {
            return;
        }
        let (dir, size) = (self.dir.clone(), self.segment_size);
        self.spare = Some(std::thread::spawn(move || {
            segment::prepare_spare(&dir, size)
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
                if self.offset + buffered + len > self.segment_size {
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

    fn run(mut self, queue: Arc<Queue>) {
        // How many appenders to wait for, and how long: as many as recent
        // batches carried (decaying slowly when fewer come back), for at most
        // half a sync. One appender alone is never kept waiting.
        let mut want = 1usize;
        let mut max_wait = Duration::ZERO;
        while let Some(batch) = queue.take_gathering(want, max_wait) {
            let last = batch.last().map_or(0, |p| p.first + p.records.len() as u64);
            want = batch.len().max(want.saturating_sub(1)).max(1);
            let started = Instant::now();
            let written = self.write(&batch);
            max_wait = (started.elapsed() / 2).clamp(MIN_GATHER, MAX_GATHER);
            match written {
                Ok(()) => {
                    // Visible to readers before anyone is told it is durable.
                    lock(&self.view).durable_end = last;
                    for p in batch {
                        p.ticket.complete(Ok(p.first));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "log write or sync failed; log poisoned");
                    lock(&self.view).poisoned = true;
                    for p in batch {
                        p.ticket.complete(Err(Failed::Io(e.kind(), e.to_string())));
                    }
                    queue.poison();
                    return;
                }
            }
        }
        if let Some(h) = self.spare.take() {
            let _ = h.join();
        }
    }
}

impl FileLog {
    /// Opens (creating if needed) the log in `dir`, recovering it: see the
    /// [module docs](self).
    pub fn open(dir: impl AsRef<Path>, options: FileLogOptions) -> Result<FileLog, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        if options.segment_size < (HEADER as u64) * 2 {
            return Err(StorageError::Rejected(format!(
                "segment size {} is too small",
                options.segment_size
            )));
        }
        let max_record = options
            .max_record
            .min((options.segment_size as usize).saturating_sub(HEADER));
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            if let Some(parent) = dir.parent() {
                fsutil::sync_dir(parent)?;
            }
        }
        let rec = recover(&dir, max_record)?;
        let view = Arc::new(Mutex::new(View {
            start: rec.start,
            durable_end: rec.next_lsn,
            segments: rec.segments,
            poisoned: false,
        }));
        let (file, offset) = match rec.current {
            Some((first, offset)) => (
                OpenOptions::new()
                    .write(true)
                    .open(dir.join(segment::name(first)))?,
                offset as u64,
            ),
            None => {
                let spare = segment::prepare_spare(&dir, options.segment_size)?;
                (install(&dir, &spare, rec.next_lsn, &view)?, 0)
            }
        };
        let writer = Writer {
            dir: dir.clone(),
            segment_size: options.segment_size,
            sync_hook: options.sync_hook.clone(),
            file,
            offset,
            buf: Vec::with_capacity(1 << 20),
            skip: 0,
            spare: None,
            view: view.clone(),
        };
        let queue = Arc::new(Queue::new(rec.next_lsn));
        let q = queue.clone();
        let syncer = std::thread::Builder::new()
            .name("ft-log-syncer".into())
            .spawn(move || writer.run(q))?;
        Ok(FileLog {
            inner: Arc::new(Inner {
                dir,
                max_record,
                queue,
                view,
                syncer: std::sync::Mutex::new(Some(syncer)),
            }),
        })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Largest payload accepted.
    pub fn max_record(&self) -> usize {
        self.inner.max_record
    }

    fn submit(&self, records: &[Bytes]) -> Result<(u64, TicketFuture), StorageError> {
        if let Some(r) = records.iter().find(|r| r.len() > self.inner.max_record) {
            return Err(StorageError::Rejected(format!(
                "record of {} bytes exceeds the limit of {}",
                r.len(),
                self.inner.max_record
            )));
        }
        let (first, ticket) = self.inner.queue.submit(records.to_vec()).map_err(failed)?;
        Ok((first, TicketFuture(ticket)))
    }

    /// Appends `records` and blocks the calling thread until they are
    /// durable; returns the LSN of the first.
    pub fn append_blocking(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
        if records.is_empty() {
            return self.next_lsn_now();
        }
        let (_, t) = self.submit(records)?;
        t.0.wait().map(Lsn).map_err(failed)
    }

    fn next_lsn_now(&self) -> Result<Lsn, StorageError> {
        self.check()?;
        Ok(Lsn(self.inner.queue.next_lsn()))
    }

    fn check(&self) -> Result<(), StorageError> {
        if lock(&self.inner.view).poisoned || self.inner.queue.is_poisoned() {
            Err(StorageError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// The durable records from `from` on, read one at a time.
    pub fn iter_from(&self, from: Lsn) -> Result<LogIter, StorageError> {
        self.check()?;
        let v = lock(&self.inner.view);
        Ok(LogIter {
            segments: v.segments.iter().map(|(f, p)| (*f, p.clone())).collect(),
            next: from.0.max(v.start),
            end: v.durable_end,
            seg: None,
            max: self.inner.max_record,
        })
    }

    /// Discards the records before `upto`: the start moves (durably) and
    /// every segment that holds only discarded records is deleted.
    pub fn truncate_prefix_blocking(&self, upto: Lsn) -> Result<(), StorageError> {
        self.check()?;
        let mut v = lock(&self.inner.view);
        let upto = upto.0.min(v.durable_end);
        if upto <= v.start {
            return Ok(());
        }
        write_start(&self.inner.dir, upto)?;
        v.start = upto;
        let firsts: Vec<u64> = v.segments.keys().copied().collect();
        for w in firsts.windows(2) {
            if w[1] <= upto
                && let Some(p) = v.segments.remove(&w[0])
            {
                fs::remove_file(&p)?;
            }
        }
        fsutil::sync_dir(&self.inner.dir)?;
        Ok(())
    }

    /// Stops the log: appends already queued are written and synced, later
    /// calls fail with [`StorageError::Closed`].
    pub fn close(&self) {
        self.inner.stop();
    }
}

/// Reads durable records in LSN order, one segment file at a time (memory
/// stays bounded by one record).
pub struct LogIter {
    segments: Vec<(u64, PathBuf)>,
    next: u64,
    end: u64,
    seg: Option<(usize, u64, BufReader<File>, PathBuf)>,
    max: usize,
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
    /// Reads the next record of the open segment: (LSN, payload).
    fn read_one(&mut self) -> Result<Option<(u64, Bytes)>, StorageError> {
        let Some((_, offset, reader, path)) = &mut self.seg else {
            return Ok(None);
        };
        let mut h = [0u8; HEADER];
        if let Err(e) = reader.read_exact(&mut h) {
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(None)
            } else {
                Err(e.into())
            };
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        if len > self.max {
            return Err(corrupt(
                path,
                *offset as usize,
                "length over the record limit",
            ));
        }
        let mut rec = vec![0u8; HEADER + len];
        rec[..HEADER].copy_from_slice(&h);
        reader.read_exact(&mut rec[HEADER..])?;
        match record::parse(&rec, 0, self.max) {
            record::Parse::Record(f) => {
                *offset += f.end as u64;
                let payload = Bytes::from(rec).slice(f.payload);
                Ok(Some((f.lsn, payload)))
            }
            record::Parse::Zeros => Ok(None),
            record::Parse::Invalid(why) => Err(corrupt(path, *offset as usize, why)),
        }
    }
}

impl Iterator for LogIter {
    type Item = Result<(Lsn, Bytes), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.end {
            if self.seg.is_none() {
                // The segment holding `next`: the last one starting at or before it.
                let idx = self.segments.iter().rposition(|(f, _)| *f <= self.next)?;
                let (_, path) = &self.segments[idx];
                match File::open(path) {
                    Ok(f) => {
                        self.seg =
                            Some((idx, 0, BufReader::with_capacity(1 << 16, f), path.clone()))
                    }
                    // Deleted by a truncation since this iterator began.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.next = self.segments.get(idx + 1).map_or(self.end, |s| s.0);
                        continue;
                    }
                    Err(e) => return Some(Err(e.into())),
                }
            }
            match self.read_one() {
                Ok(Some((lsn, payload))) => {
                    if lsn < self.next {
                        continue;
                    }
                    if lsn != self.next {
                        let (_, off, _, path) = self.seg.as_ref()?;
                        let e = corrupt(path, *off as usize, "record out of LSN sequence");
                        self.next = self.end;
                        return Some(Err(e));
                    }
                    self.next += 1;
                    return Some(Ok((Lsn(lsn), payload)));
                }
                Ok(None) => {
                    // End of this segment: on to the next one.
                    let idx = self.seg.take().map_or(0, |s| s.0);
                    match self.segments.get(idx + 1) {
                        Some((f, _)) if *f <= self.end => self.next = self.next.max(*f),
                        _ => {
                            let e = StorageError::Corrupt {
                                location: "log".into(),
                                offset: 0,
                                reason: format!("records {}..{} missing", self.next, self.end),
                            };
                            self.next = self.end;
                            return Some(Err(e));
                        }
                    }
                }
                Err(e) => {
                    self.next = self.end;
                    return Some(Err(e));
                }
            }
        }
        None
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

    async fn truncate_prefix(&self, upto: Lsn) -> Result<(), StorageError> {
        self.truncate_prefix_blocking(upto)
    }

    async fn next_lsn(&self) -> Result<Lsn, StorageError> {
        self.next_lsn_now()
    }
}

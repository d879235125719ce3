//! Durable-append throughput of [`FileLog`], measured in one run on one disk
//! against the physical limit (a plain `write` + `fdatasync` loop) and
//! against okaywal, a durable write-ahead-log crate that also group-commits
//! and really calls `fdatasync`. Stores whose sync is not a real
//! `fdatasync` are deliberately left out: they would measure the page cache.
//!
//! Run with `cargo bench -p ft-storage --bench log`. Without `--bench` (as
//! `cargo test --benches` runs it) it does a tiny smoke run whose numbers
//! mean nothing.
//!
//! Cases, each timed for a fixed duration, repeated, median reported:
//!
//! * raw baseline: `write` + `fdatasync` of one record at a time into a file
//!   preallocated (zeros written and synced once) to one FileLog segment's
//!   size, wrapping to its start when full, so that, like FileLog's, no
//!   sync changes the file size. Each write is the record plus FileLog's
//!   32-byte header, from a page-aligned buffer, so both write the same
//!   bytes (the same loop on a growing file, which an earlier version
//!   showed, is left out to keep the run short);
//! * FileLog and okaywal, 1 writer, 128 B / 4 KiB / 64 KiB records;
//! * FileLog in the steady state, 1 writer: segments small enough (about
//!   2000 records each, see [`recycling_segment`]) that the writer wraps
//!   several within each repetition, truncating behind itself, so every new
//!   segment is a freed one renamed into place and overwritten (the
//!   project's target is on this case);
//! * FileLog and okaywal, 8 and 64 writer threads (group commit), 128 B and
//!   4 KiB records;
//! * recovery: 1 GiB of 4 KiB records written with FileLog, then the time of
//!   `FileLog::open`, which reads every segment and checks every CRC.
//!
//! MB and GB are 10^6 and 10^9 bytes of payload (recovery: of segment
//! files). The last table checks the project's performance targets.

use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::Lsn;
use ft_storage::{FileLog, FileLogOptions};
// okaywal's no-op log manager: nothing to recover into, nothing to
// checkpoint to (okaywal then recycles the segment files).
use okaywal::LogVoid;

/// FileLog's per-record header (header CRC, payload CRC, length, reserved,
/// LSN, batch start); the raw loop writes it too so that both put the same
/// bytes on disk.
const HEADER: usize = 32;
const PAGE: usize = 4096;
/// FileLog's default segment size, also the raw loop's file size.
const SEGMENT: u64 = 64 << 20;
const SIZES: [usize; 3] = [128, 4 << 10, 64 << 10];
const MULTI_SIZES: [usize; 2] = [128, 4 << 10];
const WRITERS: [usize; 2] = [8, 64];

/// How long and how often to measure.
struct Plan {
    full: bool,
    /// Timed length of one repetition.
    duration: Duration,
    reps: usize,
    /// Untimed appends before the first repetition of a log: lets the
    /// background preparation of the next segment, which FileLog starts
    /// with the first appends, finish, so that it is not billed to the
    /// first repetition alone.
    warmup: Duration,
    /// Segment size given to FileLog (the default in a full run).
    segment: u64,
    /// Bytes of records written for the recovery case.
    recovery_bytes: u64,
}

impl Plan {
    fn new(full: bool) -> Plan {
        if full {
            Plan {
                full,
                duration: Duration::from_millis(1000),
                reps: 3,
                warmup: Duration::from_millis(300),
                segment: SEGMENT,
                recovery_bytes: 1 << 30,
            }
        } else {
            Plan {
                full,
                duration: Duration::from_millis(20),
                reps: 1,
                warmup: Duration::ZERO,
                segment: 1 << 20,
                recovery_bytes: 4 << 20,
            }
        }
    }

    fn options(&self) -> FileLogOptions {
        FileLogOptions {
            segment_size: self.segment,
            ..FileLogOptions::default()
        }
    }
}

/// A directory removed with its contents when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(root: &Path, name: &str) -> io::Result<Scratch> {
        Scratch::at(root.join(name))
    }

    fn at(p: PathBuf) -> io::Result<Scratch> {
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p)?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Where to put the data: the system temporary directory if it is on the
/// same file system as this workspace, otherwise cargo's target tmpdir
/// (which is inside the workspace's target, so on its disk).
fn data_root() -> io::Result<PathBuf> {
    let work = fs::metadata(env!("CARGO_MANIFEST_DIR"))?.dev();
    let tmp = std::env::temp_dir();
    let base = if fs::metadata(&tmp).map(|m| m.dev()).ok() == Some(work) {
        tmp
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    };
    Ok(base.join(format!("ft-storage-bench-{}", std::process::id())))
}

/// `len` bytes of a fixed pattern starting on a page boundary: the kernel
/// copies from page-aligned memory several times faster on this machine
/// kind, and FileLog aligns its own buffer, so the baseline gets the same.
fn aligned(store: &mut Vec<u8>, len: usize) -> &[u8] {
    store.clear();
    store.resize(len + PAGE, 0xA5);
    let at = store.as_ptr().align_offset(PAGE);
    &store[at..at + len]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `body` (which returns records done and time taken) `reps` times and
/// returns the median rate.
fn repeat(plan: &Plan, mut body: impl FnMut() -> io::Result<(u64, Duration)>) -> io::Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..plan.reps {
        let (n, t) = body()?;
        rates.push(n as f64 / t.as_secs_f64());
    }
    Ok(median(rates))
}

/// The raw baseline: one `write` + `fdatasync` per record.
fn raw(root: &Path, plan: &Plan, size: usize, preallocate: bool) -> io::Result<f64> {
    let dir = Scratch::new(root, "raw")?;
    let path = dir.0.join("raw");
    let mut store = Vec::new();
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    if preallocate {
        let zeros = vec![0; 1 << 20];
        for _ in 0..(plan.segment >> 20).max(1) {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
    }
    let limit = if preallocate {
        plan.segment.max(1 << 20)
    } else {
        u64::MAX
    };
    let record = aligned(&mut store, size + HEADER);
    repeat(plan, || {
        if !preallocate {
            file.set_len(0)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(0))?;
        let mut at = 0u64;
        let mut n = 0u64;
        let start = Instant::now();
        while start.elapsed() < plan.duration {
            if at + record.len() as u64 > limit {
                file.seek(SeekFrom::Start(0))?;
                at = 0;
            }
            file.write_all(record)?;
            file.sync_data()?;
            at += record.len() as u64;
            n += 1;
        }
        Ok((n, start.elapsed()))
    })
}

/// Runs `writers` threads calling `append` (one durable record each) for
/// `duration`; returns records done and the time until the last returned.
fn run_writers<F>(writers: usize, duration: Duration, append: &F) -> io::Result<(u64, Duration)>
where
    F: Fn() -> io::Result<()> + Sync,
{
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let failure = std::sync::Mutex::new(None);
    let ready = Barrier::new(writers + 1);
    let elapsed = thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                ready.wait();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = append() {
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        break;
                    }
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        ready.wait();
        let start = Instant::now();
        thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        // The scope joins every writer before returning; each finishes the
        // append it is in, which is counted, so time runs until then.
        start
    })
    .elapsed();
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok((done.load(Ordering::Relaxed), elapsed))
}

fn storage(e: ft_core::StorageError) -> io::Error {
    io::Error::other(e.to_string())
}

/// FileLog, `writers` threads appending one `size`-byte record at a time.
/// Returns the rate and the mean records per `fdatasync` (group commit at
/// work), counted with the sync hook over the timed repetitions.
fn filelog(
    root: &Path,
    plan: &Plan,
    size: usize,
    writers: usize,
    recycling: bool,
) -> io::Result<(f64, Option<f64>)> {
    let dir = Scratch::new(root, "filelog")?;
    let syncs = Arc::new(AtomicU64::new(0));
    let counter = syncs.clone();
    let segment = if recycling {
        recycling_segment(plan, size)
    } else {
        plan.segment
    };
    let options = FileLogOptions {
        segment_size: segment,
        sync_hook: Some(Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })),
        ..plan.options()
    };
    let log = FileLog::open(&dir.0, options).map_err(storage)?;
    let record = Bytes::from(vec![0x5A; size]);
    // In the steady state the writer truncates behind itself, a segment's
    // worth of records at a time, so freed segments are there to reuse.
    let every = (segment / (size + HEADER) as u64).max(1);
    let append = || {
        let Lsn(l) = log
            .append_blocking(std::slice::from_ref(&record))
            .map_err(storage)?;
        if recycling && l % every == 0 {
            log.truncate_prefix_blocking(Lsn(l.saturating_sub(every)))
                .map_err(storage)?;
        }
        Ok(())
    };
    run_writers(writers, plan.warmup, &append)?;
    // The steady state begins once segments are being reused.
    for _ in 0..10 {
        if !recycling || !plan.full || log.stats().segments_recycled > 0 {
            break;
        }
        run_writers(writers, plan.warmup, &append)?;
    }
    let recycled_before = log.stats().segments_recycled;
    let before = syncs.load(Ordering::Relaxed);
    let mut records = 0;
    let rate = repeat(plan, || {
        let (n, t) = run_writers(writers, plan.duration, &append)?;
        records += n;
        Ok((n, t))
    })?;
    let synced = syncs.load(Ordering::Relaxed) - before;
    if recycling {
        let st = log.stats();
        println!(
            "  FileLog steady state {}: {} KiB segments, {} recycled while timed, {} created \
             in all",
            human(size),
            segment >> 10,
            st.segments_recycled - recycled_before,
            st.segments_created
        );
        if st.segments_recycled == recycled_before && plan.full {
            return Err(io::Error::other("no segment was recycled"));
        }
    }
    log.close();
    Ok((rate, (synced > 0).then(|| records as f64 / synced as f64)))
}

/// The segment size of the steady-state case: about 2000 records of `size`
/// (a power of two, at least 64 KiB, at most the plan's), so the writer
/// wraps several segments within each repetition.
fn recycling_segment(plan: &Plan, size: usize) -> u64 {
    (((size + HEADER) as u64) * 2000)
        .next_power_of_two()
        .clamp(32 << 10, plan.segment.max(32 << 10))
}

/// okaywal, `writers` threads each committing one entry of one chunk of
/// `size` bytes (`commit` returns after okaywal's group `fdatasync`).
///
/// okaywal's default configuration: 1 MiB preallocated segment files,
/// recycled after each checkpoint (a no-op here). Segments as large as
/// FileLog's (64 MiB) measured no faster on this machine, and at 4 KiB with
/// 8 writers about 10% slower, so the default is the fairer opponent.
fn okaywal(root: &Path, plan: &Plan, size: usize, writers: usize) -> io::Result<f64> {
    let dir = Scratch::new(root, "okaywal")?;
    let wal = okaywal::WriteAheadLog::recover(&dir.0, LogVoid)?;
    let record = vec![0x5A; size];
    let append = || {
        let mut entry = wal.begin_entry()?;
        entry.write_chunk(&record)?;
        entry.commit().map(drop)
    };
    run_writers(writers, plan.warmup, &append)?;
    let rate = repeat(plan, || run_writers(writers, plan.duration, &append))?;
    wal.shutdown()?;
    Ok(rate)
}

/// Recovery: fills a log with `plan.recovery_bytes` of 4 KiB records, then
/// times `FileLog::open`. Returns (segment bytes, first open, warm opens'
/// median).
fn recovery(root: &Path, plan: &Plan) -> io::Result<(u64, Duration, Duration)> {
    let dir = Scratch::new(root, "recovery")?;
    let size = 4 << 10;
    let records = plan.recovery_bytes / (size + HEADER) as u64;
    {
        let log = FileLog::open(&dir.0, plan.options()).map_err(storage)?;
        // Large batches: one sync per 1 MiB, so filling takes seconds.
        let batch = vec![Bytes::from(vec![0x3C; size]); 256];
        let mut left = records;
        while left > 0 {
            let n = left.min(batch.len() as u64) as usize;
            log.append_blocking(&batch[..n]).map_err(storage)?;
            left -= n as u64;
        }
        log.close();
    }
    let bytes: u64 = fs::read_dir(&dir.0)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    let mut times = Vec::new();
    for _ in 0..plan.reps + 1 {
        let start = Instant::now();
        let log = FileLog::open(&dir.0, plan.options()).map_err(storage)?;
        let took = start.elapsed();
        let next = log.append_blocking(&[]).map_err(storage)?;
        if next != Lsn(records) {
            return Err(io::Error::other(format!(
                "recovered {next:?}, wrote {records} records"
            )));
        }
        // Untimed, like the check above: only opening is measured.
        log.close();
        times.push(took);
    }
    let first = times.remove(0);
    times.sort();
    Ok((bytes, first, times[times.len() / 2]))
}

/// What is measured: the raw loop, FileLog or okaywal.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Subject {
    /// Preallocated file, no size change per sync.
    Raw,
    FileLog,
    /// FileLog in the steady state: segments reused.
    FileLogRecycling,
    Okaywal,
}

/// One measured case: subject, writers, record size, and the rate with the
/// records per sync where known (or the error).
type Case = (Subject, usize, usize, Result<(f64, Option<f64>), String>);

/// The measured rates, by (subject, writers, record size); a case that
/// failed keeps its error, so one failure does not hide the other numbers.
#[derive(Default)]
struct Results {
    cases: Vec<Case>,
    /// Threads still running when a case ended, that the next case waited
    /// for: reported because they distort whatever runs beside them.
    notes: Vec<String>,
}

impl Results {
    fn get(&self, subject: Subject, writers: usize, size: usize) -> Option<f64> {
        self.cases
            .iter()
            .find(|c| c.0 == subject && c.1 == writers && c.2 == size)
            .and_then(|c| c.3.as_ref().ok().map(|r| r.0))
    }

    /// Runs one case, then waits for the background threads it left.
    fn run(
        &mut self,
        subject: Subject,
        writers: usize,
        size: usize,
        case: impl FnOnce() -> io::Result<(f64, Option<f64>)>,
    ) {
        let r = case().map_err(|e| e.to_string());
        if let Err(e) = &r {
            println!(
                "  {subject:?}, {writers} writers, {}: FAILED: {e}",
                human(size)
            );
        }
        self.cases.push((subject, writers, size, r));
        self.notes.extend(quiesce_note(&format!(
            "{subject:?} {writers}w {}",
            human(size)
        )));
    }
}

/// Threads of this process, from `/proc/self/status` (`None` off Linux).
fn threads() -> Option<usize> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits (up to two minutes) until only the main thread is left, so that a
/// case's leftover background threads (FileLog's spare-segment preparation,
/// okaywal's checkpointer) do not run during the next case; says so if
/// there were any.
fn quiesce_note(case: &str) -> Option<String> {
    let left = threads()?;
    if left <= 1 {
        return None;
    }
    let start = Instant::now();
    while threads().is_some_and(|n| n > 1) && start.elapsed() < Duration::from_secs(120) {
        thread::sleep(Duration::from_millis(20));
    }
    let note = format!(
        "after {case}: {} background threads were still running; waited {:.2} s{}",
        left - 1,
        start.elapsed().as_secs_f64(),
        match threads() {
            Some(n) if n > 1 => format!(", gave up with {} left", n - 1),
            _ => String::new(),
        }
    );
    println!("  {note}");
    Some(note)
}

fn ratio(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2}x"))
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

fn main() -> io::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = Plan::new(full);
    let root = data_root()?;
    // Removes everything the cases leave, also when one fails.
    let _cleanup = Scratch::at(root.clone())?;
    println!(
        "ft-storage log bench ({}): data in {}, {} ms per repetition, median of {}",
        if plan.full {
            "full run"
        } else {
            "smoke run, numbers are meaningless"
        },
        root.display(),
        plan.duration.as_millis(),
        plan.reps
    );
    let t0 = Instant::now();
    let mut res = Results::default();
    for size in SIZES {
        res.run(Subject::Raw, 1, size, || {
            raw(&root, &plan, size, true).map(|r| (r, None))
        });
    }
    for size in SIZES {
        res.run(Subject::FileLogRecycling, 1, size, || {
            filelog(&root, &plan, size, 1, true)
        });
    }
    for size in SIZES {
        res.run(Subject::FileLog, 1, size, || {
            filelog(&root, &plan, size, 1, false)
        });
        res.run(Subject::Okaywal, 1, size, || {
            okaywal(&root, &plan, size, 1).map(|r| (r, None))
        });
    }
    // The disk's sync rate just before the group-commit cases (it drifts
    // on a shared machine): what bounds them.
    let sync_rate = raw(&root, &plan, 128, true).ok();
    // And the disk's rate at 4 KiB with one record per sync and with eight
    // records' bytes per sync (what a full 8-writer group writes): what
    // bounds "8 writers / 1 writer" when a larger write syncs slower.
    let eight = 8 * (4096 + HEADER) - HEADER;
    let sync_4k = (
        raw(&root, &plan, 4096, true).ok(),
        raw(&root, &plan, eight, true).ok(),
    );
    for writers in WRITERS {
        for size in MULTI_SIZES {
            res.run(Subject::FileLog, writers, size, || {
                filelog(&root, &plan, size, writers, false)
            });
            res.run(Subject::Okaywal, writers, size, || {
                okaywal(&root, &plan, size, writers).map(|r| (r, None))
            });
        }
    }
    let recovered = recovery(&root, &plan).map_err(|e| e.to_string());
    res.notes.extend(quiesce_note("recovery"));
    let gbps = recovered
        .as_ref()
        .ok()
        .map(|(bytes, _, warm)| *bytes as f64 / 1e9 / warm.as_secs_f64());

    println!();
    println!(
        "{:<44} {:>11} {:>9} {:>8} {:>10} {:>8}",
        "case", "records/s", "MB/s", "vs raw", "vs okaywal", "rec/sync"
    );
    for (subject, writers, size, r) in &res.cases {
        let name = match subject {
            Subject::Raw => format!("raw write+fdatasync, preallocated, {}", human(*size)),
            Subject::FileLog => format!(
                "FileLog {writers} writer{}, {}",
                plural(*writers),
                human(*size)
            ),
            Subject::FileLogRecycling => {
                format!("FileLog {writers} writer, steady state, {}", human(*size))
            }
            Subject::Okaywal => format!(
                "okaywal {writers} writer{}, {}",
                plural(*writers),
                human(*size)
            ),
        };
        let Ok((rate, per_sync)) = r else {
            println!(
                "{name:<44} FAILED: {}",
                r.as_ref().err().map_or("", |e| e.as_str())
            );
            continue;
        };
        let vs_raw = match subject {
            Subject::Raw => None,
            _ => res.get(Subject::Raw, 1, *size).map(|b| rate / b),
        };
        let vs_okaywal = match subject {
            Subject::FileLog => res.get(Subject::Okaywal, *writers, *size).map(|o| rate / o),
            _ => None,
        };
        println!(
            "{:<44} {:>11.0} {:>9.1} {:>8} {:>10} {:>8}",
            name,
            rate,
            rate * *size as f64 / 1e6,
            ratio(vs_raw),
            ratio(vs_okaywal),
            per_sync.map_or("-".into(), |p| format!("{p:.1}"))
        );
    }
    match &recovered {
        Ok((bytes, first, warm)) => println!(
            "{:<44} {:>11} {:>9.0}   ({:.2} GiB of segments in {:.0} ms warm; first open after \
             writing {:.0} ms)",
            "FileLog recovery scan (open), warm cache",
            "-",
            *bytes as f64 / 1e6 / warm.as_secs_f64(),
            *bytes as f64 / (1u64 << 30) as f64,
            warm.as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e3,
        ),
        Err(e) => println!("{:<44} FAILED: {e}", "FileLog recovery scan (open)"),
    }

    // The project's performance targets.
    let mut targets: Vec<(String, Option<f64>, f64, &str)> = Vec::new();
    for size in SIZES {
        targets.push((
            format!("FileLog 1 writer steady {} / raw loop", human(size)),
            div(
                res.get(Subject::FileLogRecycling, 1, size),
                res.get(Subject::Raw, 1, size),
            ),
            0.9,
            "x",
        ));
    }
    for size in MULTI_SIZES {
        let eight = res.get(Subject::FileLog, 8, size);
        targets.push((
            format!("FileLog 8 writers {} / okaywal 8 writers", human(size)),
            div(eight, res.get(Subject::Okaywal, 8, size)),
            1.5,
            "x",
        ));
        targets.push((
            format!("FileLog 8 writers {} / FileLog 1 writer", human(size)),
            div(eight, res.get(Subject::FileLog, 1, size)),
            5.0,
            "x",
        ));
    }
    targets.push((
        "FileLog recovery scan, warm cache".into(),
        gbps,
        1.0,
        " GB/s",
    ));
    println!();
    println!(
        "{:<48} {:>10} {:>10}  result",
        "target", "measured", "required"
    );
    for (what, got, need, unit) in &targets {
        let (shown, verdict) = match got {
            Some(g) => (
                format!("{g:.2}{unit}"),
                if *g >= *need { "met" } else { "MISSED" },
            ),
            None => ("-".into(), "MISSED (case failed)"),
        };
        println!(
            "{what:<48} {shown:>10} {:>10}  {verdict}",
            format!(">= {need}{unit}")
        );
    }
    bounds(&res, sync_rate);
    bound_4k(sync_4k);
    println!();
    for line in [
        "steady state: FileLog with segments of about 2000 records (128 B: 512 KiB, 4 KiB:",
        "  8 MiB, 64 KiB: 64 MiB: smaller than the default 64 MiB so that segments are reused",
        "  within the timed second), the writer truncating behind itself once a segment (the",
        "  truncation's syncs are in the time), timed once reuse has begun: freed segments are",
        "  renamed into place and overwritten instead of new ones zero-filled. The plain",
        "  FileLog rows use 64 MiB segments and never truncate.",
        "raw loop: each write is the record plus FileLog's 32-byte header, from a page-aligned",
        "  buffer, into a file preallocated (zeros written and synced once) and rewritten from",
        "  its start when full, so no fdatasync changes the file size, as none of FileLog's do.",
        "okaywal: its default configuration, no-op log manager.",
        "MB = 10^6 B of payload; rec/sync = FileLog records per fdatasync (its sync hook).",
        "recovery: time of FileLog::open (reads every segment, checks every CRC), median of the",
        "  opens after a first one (page cache warm); GB = 10^9 B of segment files.",
    ] {
        println!("{line}");
    }
    for n in &res.notes {
        println!("note: {n}");
    }
    println!("total bench time {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// What bounds the group-commit rates: a durable append costs at least one
/// `fdatasync`, so a log's rate is its syncs per second times its records
/// per sync. `sync_rate` is the raw loop at 128 B (one sync per record)
/// measured just before the 8-writer cases. Printed for each of them.
fn bounds(res: &Results, sync_rate: Option<f64>) {
    let Some(sync_rate) = sync_rate else {
        return;
    };
    println!();
    println!(
        "bound: fdatasync rate of this disk just before the 8-writer cases (raw loop, 128 B) \
         = {sync_rate:.0}/s"
    );
    for size in MULTI_SIZES {
        let case = res
            .cases
            .iter()
            .find(|c| c.0 == Subject::FileLog && c.1 == 8 && c.2 == size);
        let Some((_, _, _, Ok((rate, Some(per_sync))))) = case else {
            continue;
        };
        let okay = res.get(Subject::Okaywal, 8, size);
        println!(
            "bound: FileLog 8 writers {}: {rate:.0} rec/s = {:.0} syncs/s ({:.2}x the raw sync \
             rate) x {per_sync:.2} rec/sync; 8 writers can put at most 8 records in a sync, \
             so at most {:.0} rec/s at this sync rate ({} okaywal: 1.5x needs {})",
            human(size),
            rate / per_sync,
            rate / per_sync / sync_rate,
            sync_rate * 8.0,
            okay.map_or("-".into(), |o| format!("{o:.0} rec/s for")),
            okay.map_or("-".into(), |o| format!("{:.0} rec/s", 1.5 * o)),
        );
    }
}

/// Printed after [`bounds`]' lines: the raw loop at 4 KiB with one record
/// per sync and with eight records' bytes per sync, measured just before
/// the 8-writer cases. Eight writers gain at most 8 x (the second rate) over
/// one writer syncing at (the first rate).
fn bound_4k(sync_4k: (Option<f64>, Option<f64>)) {
    if let (Some(one), Some(eight)) = sync_4k {
        println!(
            "bound: raw loop at 4 KiB just before the 8-writer cases: {one:.0} syncs/s with one \
             record per sync, {eight:.0} syncs/s with 8 records' bytes per sync: 8 writers can \
             reach at most 8 x {eight:.0} / {one:.0} = {:.2}x one writer syncing at the raw rate",
            8.0 * eight / one
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn human(size: usize) -> String {
    if size >= 1 << 10 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

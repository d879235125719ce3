//! Power cuts, not only process deaths: the log and both stores run on a
//! [`PowerLossFs`], which keeps every write and directory change not yet
//! covered by a completed sync apart, and on a cut drops, keeps or tears
//! each at random (sector by sector). Power fails at a random mutating
//! operation — in the middle of recovery, of an append, of a segment roll,
//! of a truncation, of a put — and the store is opened again on what
//! survived, round after round on the same file system.
//!
//! After every cut:
//! * the log opens, and every acknowledged record is there, at its LSN,
//!   byte for byte; every other record is one that was being appended when
//!   the power failed (never a record erased earlier, never a duplicate),
//!   each writer's records are in order, the LSNs are contiguous, and the
//!   start is never below an acknowledged truncation;
//! * each store key holds its last acknowledged value, or the value of the
//!   one put or delete that was in flight; after the mirrored store's
//!   recovery both copies are byte-identical.
//!
//! The tests print how many writes and directory operations the cuts
//! dropped, kept and tore, so it shows the faults really happened. A
//! failure names the seed and round (`FT_POWER_SEED` replays a seed; the
//! order of the log's threads still varies) and copies the surviving files
//! to a temporary directory.
//!
//! The `#[ignore]`d sweeps run thousands of cuts in release mode in CI.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ft_core::rng::Rng;
use ft_core::{Lsn, StableStore};
use ft_storage::power_loss::PowerLossStats;
use ft_storage::{FileLog, FileLogOptions, FileStore, MirroredStore, PowerLossFs};
use futures::executor::block_on;

fn seed() -> u64 {
    std::env::var("FT_POWER_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x005e_ed0f_ca11)
}

/// Copies what survived to a real directory for a post-mortem and panics.
fn fail(fs: &PowerLossFs, seed: u64, round: u32, what: String) -> ! {
    let to = std::env::temp_dir().join(format!(
        "ft-power-failure-{}-{seed:x}-{round}",
        std::process::id()
    ));
    let _ = fs.dump(&to);
    panic!(
        "seed {seed:#x} round {round}: {what}\n(the files that survived are in {})",
        to.display()
    );
}

fn report(what: &str, cuts: u32, extra: &str, s: &PowerLossStats) {
    eprintln!(
        "{what}: {cuts} power cuts; unsynced writes dropped {}, kept {}, torn {}; \
         directory operations dropped {}, kept {}; {extra}",
        s.writes_dropped, s.writes_kept, s.writes_torn, s.dir_ops_dropped, s.dir_ops_kept
    );
}

/// Shows that the cuts did what the test claims: every kind of loss
/// happened, many times.
fn assert_faults_happened(s: &PowerLossStats, cuts: u32) {
    let min = u64::from(cuts / 100).max(1);
    for (what, n) in [
        ("writes dropped", s.writes_dropped),
        ("writes torn", s.writes_torn),
        ("writes kept", s.writes_kept),
        ("directory operations dropped", s.dir_ops_dropped),
        ("directory operations kept", s.dir_ops_kept),
    ] {
        assert!(n >= min, "only {n} {what} in {cuts} cuts");
    }
}

// ----------------------------------------------------------------- the log

const WRITERS: u32 = 2;

fn log_options(fs: &PowerLossFs) -> FileLogOptions {
    FileLogOptions {
        // Small, so that segments roll (and spares are prepared) every
        // round, and records end near segment boundaries.
        segment_size: 8 << 10,
        fs: Arc::new(fs.clone()),
        ..FileLogOptions::default()
    }
}

/// A record's payload: who wrote it and when, then filler derived from
/// that; a few span several sectors.
fn payload(round: u32, writer: u32, counter: u32) -> Bytes {
    let mut rng = Rng::new(u64::from(round) << 40 | u64::from(writer) << 32 | u64::from(counter));
    let len = if rng.below(8) == 0 {
        1000 + rng.below(2500)
    } else {
        rng.below(300)
    } as usize;
    let mut p = Vec::with_capacity(12 + len);
    p.extend_from_slice(&round.to_le_bytes());
    p.extend_from_slice(&writer.to_le_bytes());
    p.extend_from_slice(&counter.to_le_bytes());
    p.extend((0..len).map(|_| rng.below(256) as u8));
    Bytes::from(p)
}

fn id_of(p: &[u8]) -> (u32, u32, u32) {
    let n = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().unwrap());
    (n(0), n(4), n(8))
}

/// What one round of appends did.
#[derive(Default)]
struct Round {
    /// Records acknowledged: LSN → payload.
    acked: BTreeMap<u64, Bytes>,
    /// Every payload submitted (acknowledged or not).
    started: BTreeSet<Bytes>,
    /// The highest start a `truncate_prefix` was asked for, and the highest
    /// one acknowledged.
    truncate_asked: u64,
    truncate_acked: u64,
}

/// Runs appenders (and truncations) against `log` until the power fails
/// (or, as a safety net, each writer has appended `per_writer` times).
fn appends(log: &FileLog, round: u32, per_writer: u32, rng: &mut Rng) -> Round {
    let done = Arc::new(Mutex::new(Round::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let batches: Vec<Vec<u32>> = (0..WRITERS)
        .map(|_| (0..per_writer).map(|_| 1 + rng.below(3) as u32).collect())
        .collect();
    let writers: Vec<_> = batches
        .into_iter()
        .enumerate()
        .map(|(w, sizes)| {
            let (log, done, stop) = (log.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut counter = 0;
                for n in sizes {
                    let recs: Vec<Bytes> = (0..n)
                        .map(|i| payload(round, w as u32, counter + i))
                        .collect();
                    counter += n;
                    done.lock().unwrap().started.extend(recs.iter().cloned());
                    match log.append_blocking(&recs) {
                        Ok(Lsn(first)) => {
                            let mut d = done.lock().unwrap();
                            for (i, r) in recs.into_iter().enumerate() {
                                d.acked.insert(first + i as u64, r);
                            }
                        }
                        Err(_) => break,
                    }
                }
                stop.store(true, Ordering::Relaxed);
            })
        })
        .collect();
    // Truncations race the appends: up to a record acknowledged a while ago.
    while !stop.load(Ordering::Relaxed) {
        std::thread::yield_now();
        let upto = {
            let d = done.lock().unwrap();
            match d.acked.keys().next_back() {
                Some(&last) if d.acked.len() % 17 == 5 => last.saturating_sub(10),
                _ => continue,
            }
        };
        {
            let mut d = done.lock().unwrap();
            d.truncate_asked = d.truncate_asked.max(upto);
        }
        match log.truncate_prefix_blocking(Lsn(upto)) {
            Ok(Lsn(start)) => {
                let mut d = done.lock().unwrap();
                d.truncate_acked = d.truncate_acked.max(start);
            }
            Err(_) => break,
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    Arc::try_unwrap(done)
        .ok()
        .expect("writers joined")
        .into_inner()
        .unwrap()
}

/// What the verified log held after the last open.
#[derive(Default)]
struct Known {
    start: u64,
    records: BTreeMap<u64, Bytes>,
    /// The highest start acknowledged by a truncation, and asked for.
    truncated: u64,
    truncate_asked: u64,
}

fn verify_log(log: &FileLog, known: &Known, round: &Round) -> Result<Known, String> {
    let got: Vec<(Lsn, Bytes)> = log
        .iter_from(Lsn(0))
        .map_err(|e| format!("iter_from: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading back: {e}"))?;
    let start = log.recovery().start.0;
    let next = log.recovery().next_lsn.0;
    if start < known.truncated {
        return Err(format!(
            "the start {start} is below the acknowledged truncation to {}",
            known.truncated
        ));
    }
    if start > known.truncate_asked.max(known.start) {
        return Err(format!(
            "the start {start} is past every truncation asked for ({})",
            known.truncate_asked
        ));
    }
    let mut expect = start;
    for (Lsn(lsn), _) in &got {
        if *lsn != expect {
            return Err(format!("LSN {lsn} where {expect} was next"));
        }
        expect += 1;
    }
    if next != expect {
        return Err(format!("next LSN {next}, records end at {expect}"));
    }
    let by_lsn: BTreeMap<u64, Bytes> = got.into_iter().map(|(l, p)| (l.0, p)).collect();
    for (lsn, p) in known
        .records
        .range(start..)
        .chain(round.acked.range(start..))
    {
        match by_lsn.get(lsn) {
            Some(q) if q == p => {}
            Some(q) => {
                return Err(format!(
                    "LSN {lsn} holds {:?}, acknowledged or verified as {:?}",
                    id_of(q),
                    id_of(p)
                ));
            }
            None => return Err(format!("acknowledged LSN {lsn} ({:?}) is gone", id_of(p))),
        }
    }
    let mut last_counter: BTreeMap<u32, u32> = BTreeMap::new();
    for (lsn, p) in by_lsn.range(known.records.keys().next_back().map_or(0, |l| l + 1)..) {
        if !round.started.contains(p) {
            return Err(format!(
                "LSN {lsn} holds {:?}, which was not being appended",
                id_of(p)
            ));
        }
        let (_, writer, counter) = id_of(p);
        if let Some(prev) = last_counter.insert(writer, counter)
            && prev >= counter
        {
            return Err(format!(
                "writer {writer}'s records out of order at LSN {lsn}"
            ));
        }
    }
    Ok(Known {
        start,
        records: by_lsn,
        truncated: known.truncated,
        truncate_asked: known.truncate_asked,
    })
}

fn log_cuts(seed: u64, cuts: u32) {
    let fs = PowerLossFs::new();
    let dir = Path::new("/data/wal");
    let mut rng = Rng::new(seed);
    let mut known = Known::default();
    let mut round = Round::default();
    let (mut torn_tails, mut cut_in_open, mut acked_total) = (0u64, 0u32, 0usize);
    // Segments freed by the truncations are reused (the default), so cuts
    // also land in recycled segments full of older records.
    let mut recycled = 0u64;
    for r in 0..cuts {
        // A small budget cuts the power during recovery itself.
        let budget = if rng.below(5) == 0 {
            rng.below(12)
        } else {
            rng.below(300)
        };
        fs.fail_after(budget);
        let log = match FileLog::open(dir, log_options(&fs)) {
            Ok(log) => log,
            Err(e) if fs.is_off() => {
                let _ = e;
                cut_in_open += 1;
                fs.power_cut(rng.next_u64());
                continue;
            }
            Err(e) => fail(&fs, seed, r, format!("open failed with the power on: {e}")),
        };
        torn_tails += u64::from(log.recovery().torn_tail.is_some());
        known = match verify_log(&log, &known, &round) {
            Ok(k) => k,
            Err(e) => fail(&fs, seed, r, e),
        };
        round = appends(&log, r, 1000, &mut rng);
        if !fs.is_off() {
            fail(
                &fs,
                seed,
                r,
                "the appenders stopped with the power on".into(),
            );
        }
        acked_total += round.acked.len();
        recycled += log.stats().segments_recycled;
        known.truncated = known.truncated.max(round.truncate_acked);
        known.truncate_asked = known.truncate_asked.max(round.truncate_asked);
        drop(log);
        fs.power_cut(rng.next_u64());
    }
    // The last round's acknowledgements are checked too.
    fs.fail_after(u64::MAX);
    let log = FileLog::open(dir, log_options(&fs))
        .unwrap_or_else(|e| fail(&fs, seed, cuts, format!("final open: {e}")));
    if let Err(e) = verify_log(&log, &known, &round) {
        fail(&fs, seed, cuts, e);
    }
    let stats = fs.stats();
    report(
        "log",
        cuts,
        &format!(
            "{acked_total} acknowledged records checked, {torn_tails} torn tails erased, \
             {cut_in_open} cuts during recovery, {recycled} segments recycled"
        ),
        &stats,
    );
    assert_faults_happened(&stats, cuts);
    assert!(torn_tails > 0 && cut_in_open > 0 && recycled > 0);
    // Segments are made at full size and synced before they are used, so
    // no sync of a segment ever has a new size to make durable (it writes
    // data only: the point of preallocation).
    for (name, syncs) in &stats.syncs {
        if name.ends_with(".log") {
            assert_eq!(syncs.size_changes, 0, "{name}: {syncs:?}");
        }
    }
}

#[test]
fn log_power_cuts_lose_no_acknowledged_record() {
    log_cuts(seed(), 150);
}

/// How many seeds the sweeps run (`FT_POWER_SEEDS`, default 10): more for a
/// soak.
fn seeds() -> u64 {
    std::env::var("FT_POWER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

#[test]
#[ignore = "long: thousands of power cuts, run in release by CI"]
fn log_power_cuts_sweep() {
    for s in 0..seeds() {
        log_cuts(seed() ^ s, 1000);
    }
}

// ---------------------------------------------------------------- the stores

/// Opens a store on `fs`, runs what its recovery is, and checks what that
/// promises.
type Open = fn(&PowerLossFs) -> Result<Box<dyn StableStore>, String>;

/// A `FileStore`: its open removes the temporaries of interrupted puts.
fn open_file_store(fs: &PowerLossFs) -> Result<Box<dyn StableStore>, String> {
    let store =
        FileStore::open_in(Arc::new(fs.clone()), "/data/store").map_err(|e| e.to_string())?;
    let leftovers: Vec<_> = fs
        .files()
        .into_keys()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    if !leftovers.is_empty() {
        return Err(format!("temporaries left after open: {leftovers:?}"));
    }
    Ok(Box::new(store))
}

/// A `MirroredStore` on two "disks": its `recover` leaves every key with two
/// byte-identical copies.
fn open_mirrored_store(fs: &PowerLossFs) -> Result<Box<dyn StableStore>, String> {
    let store = MirroredStore::open_in(Arc::new(fs.clone()), "/disk1/stable", "/disk2/stable")
        .map_err(|e| e.to_string())?;
    let report = store.recover().map_err(|e| format!("recover: {e}"))?;
    if !report.both_bad.is_empty()
        || !report.repair_failed.is_empty()
        || !report.unreadable.is_empty()
    {
        return Err(format!("recovery left bad copies: {report:?}"));
    }
    for key in store.keys_sync().map_err(|e| e.to_string())? {
        let main = fs.contents(&store.main_path(&key).unwrap());
        let mirror = fs.contents(&store.mirror_path(&key).unwrap());
        if main.is_none() || main != mirror {
            return Err(format!("after recovery, key {key:?}'s copies differ"));
        }
    }
    Ok(Box::new(store))
}

/// The value of put number `n` of key `k`: distinct for every put, and of
/// varying length (some span sectors).
fn value(k: u8, n: u32) -> Vec<u8> {
    let len = 1 + (u64::from(n) * 37 + u64::from(k) * 11) % 1400;
    let mut v = format!("k{k}-put{n}-").into_bytes();
    v.resize(len as usize + v.len(), k ^ (n as u8));
    v
}

fn store_cuts(what: &str, open: Open, seed: u64, cuts: u32) {
    let fs = PowerLossFs::new();
    let mut rng = Rng::new(seed);
    // Each key's acknowledged value, and the change in flight when the
    // power failed (which may or may not have happened).
    let mut acked: BTreeMap<u8, Option<Vec<u8>>> = BTreeMap::new();
    let mut in_flight: Option<(u8, Option<Vec<u8>>)> = None;
    let (mut puts, mut deletes, mut cut_in_open) = (0u64, 0u64, 0u32);
    let mut n = 0u32;
    for r in 0..=cuts {
        // Sometimes the power fails during the open and its recovery.
        fs.fail_after(if rng.below(4) == 0 {
            rng.below(8)
        } else {
            u64::MAX
        });
        let store = match open(&fs) {
            Ok(s) => s,
            Err(e) if fs.is_off() => {
                let _ = e;
                cut_in_open += 1;
                fs.power_cut(rng.next_u64());
                continue;
            }
            Err(e) => fail(
                &fs,
                seed,
                r,
                format!("{what}: open failed with the power on: {e}"),
            ),
        };
        fs.fail_after(u64::MAX);
        // Every key holds its acknowledged value or the one in flight.
        for k in 0u8..6 {
            let got = match block_on(store.get(&[k])) {
                Ok(v) => v.map(|v| v.to_vec()),
                Err(e) => fail(&fs, seed, r, format!("{what}: get {k}: {e}")),
            };
            let want = acked.get(&k).cloned().flatten();
            let flying = in_flight.as_ref().filter(|f| f.0 == k).map(|f| f.1.clone());
            if got == want {
                acked.insert(k, got);
            } else if flying.as_ref() == Some(&got) {
                // The change in flight took effect: it is the value now.
                acked.insert(k, got);
            } else {
                // A value is named by its first bytes ("k3-put58-").
                let name = |v: &Option<Vec<u8>>| {
                    v.as_ref()
                        .map(|v| String::from_utf8_lossy(&v[..v.len().min(10)]).into_owned())
                };
                fail(
                    &fs,
                    seed,
                    r,
                    format!(
                        "{what}: key {k} holds {:?}, acknowledged {:?}, in flight {:?}",
                        name(&got),
                        name(&want),
                        flying.as_ref().map(name)
                    ),
                );
            }
        }
        let keys: Vec<Bytes> = acked
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| Bytes::copy_from_slice(&[*k]))
            .collect();
        match block_on(store.keys()) {
            Ok(got) if got == keys => {}
            other => fail(
                &fs,
                seed,
                r,
                format!("{what}: keys {other:?}, expected {keys:?}"),
            ),
        }
        if r == cuts {
            break;
        }
        // Changes until the power fails (the loop ends only with the change
        // in flight then, which replaces the one verified above).
        fs.fail_after(rng.below(60));
        loop {
            let k = rng.below(6) as u8;
            let change = if rng.below(4) == 0 {
                None
            } else {
                n += 1;
                Some(value(k, n))
            };
            let done = match &change {
                Some(v) => block_on(store.put(&[k], Bytes::copy_from_slice(v))),
                None => block_on(store.delete(&[k])),
            };
            match done {
                Ok(()) => {
                    if change.is_some() {
                        puts += 1;
                    } else {
                        deletes += 1;
                    }
                    acked.insert(k, change);
                }
                Err(_) => {
                    assert!(fs.is_off(), "{what}: a change failed with the power on");
                    in_flight = Some((k, change));
                    break;
                }
            }
        }
        drop(store);
        fs.power_cut(rng.next_u64());
    }
    let stats = fs.stats();
    report(
        what,
        cuts,
        &format!("{puts} puts and {deletes} deletes acknowledged, {cut_in_open} cuts during open"),
        &stats,
    );
    assert_faults_happened(&stats, cuts);
}

#[test]
fn file_store_power_cuts_lose_no_acknowledged_value() {
    store_cuts("file store", open_file_store, seed(), 300);
}

#[test]
fn mirrored_store_power_cuts_lose_no_acknowledged_value() {
    store_cuts("mirrored store", open_mirrored_store, seed(), 300);
}

#[test]
#[ignore = "long: thousands of power cuts, run in release by CI"]
fn store_power_cuts_sweep() {
    for s in 0..seeds().div_ceil(2) {
        store_cuts("file store", open_file_store, seed() ^ s, 2000);
        store_cuts("mirrored store", open_mirrored_store, seed() ^ s, 2000);
    }
}

/// The erasure of a torn tail is durable before anything new is written
/// after it. Otherwise a power cut that keeps a new record but drops the
/// zeros brings the torn cycle's intact records back, behind the new one,
/// as part of the log. Same-size records make the stale ones line up
/// exactly where the scan looks next.
#[test]
fn an_erased_torn_tail_never_comes_back_behind_a_new_record() {
    let rec = |tag: u8| Bytes::from(vec![tag; 100]);
    let mut phantoms_possible = 0;
    for seed in 0..64 {
        let fs = PowerLossFs::new();
        let dir = Path::new("/wal");
        let opts = || FileLogOptions {
            segment_size: 64 << 10,
            fs: Arc::new(fs.clone()),
            ..FileLogOptions::default()
        };
        let log = FileLog::open(dir, opts()).unwrap();
        log.append_blocking(&[rec(b'a')]).unwrap();
        // One cycle of five records, then "torn": its first record damaged,
        // the four after it intact.
        log.append_blocking(&[rec(b'b'), rec(b'c'), rec(b'd'), rec(b'e'), rec(b'f')])
            .unwrap();
        drop(log);
        fs.decay(&dir.join("00000000000000000000.log"), |d| {
            d[32 + 132 + 50] ^= 1
        })
        .unwrap();
        let log = FileLog::open(dir, opts()).unwrap();
        let torn = log.recovery().torn_tail.clone().expect("a torn tail");
        assert_eq!((torn.lsn, torn.offset), (Lsn(1), 132));
        // The power fails between the next append's write and its sync.
        fs.fail_after(1);
        assert!(log.append_blocking(&[rec(b'x')]).is_err());
        drop(log);
        let stats = fs.power_cut(seed);
        phantoms_possible += u64::from(stats.writes_kept > 0);
        fs.fail_after(u64::MAX);
        let log = FileLog::open(dir, opts()).unwrap();
        let got: Vec<u8> = log
            .iter_from(Lsn(0))
            .unwrap()
            .map(|r| r.unwrap().1[0])
            .collect();
        assert!(
            got == b"a" || got == b"ax",
            "seed {seed}: the log reads {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert!(phantoms_possible > 0, "no cut kept the new record");
}

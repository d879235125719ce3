//! One bit flipped anywhere in a multi-segment log — record headers,
//! payloads, the never-written space of segments, `START`, `META` — over
//! many trials, each outcome classified:
//!
//! * **error**: opening refuses the log with a typed error (`Corrupt` or
//!   `Foreign`);
//! * **intact**: every record reads back as written (a flip in unused space
//!   is reported or erased, and hides nothing);
//! * **truncated in the last cycle**: the records read back are the ones
//!   written, up to a point inside the last write-and-sync cycle (damage
//!   there cannot be told from a torn write);
//! * anything else — a wrong record, a record missing before the last
//!   cycle, an error at read time after a successful open, a panic — fails
//!   the test.
//!
//! The log lives on a [`PowerLossFs`], forked from one pristine state per
//! trial. The `#[ignore]`d sweep runs thousands of trials in release mode
//! in CI and prints the counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ft_core::rng::Rng;
use ft_core::{Lsn, StorageError};
use ft_storage::{FileLog, FileLogOptions, PowerLossFs};

const DIR: &str = "/wal";

fn options(fs: &PowerLossFs) -> FileLogOptions {
    FileLogOptions {
        segment_size: 4096,
        fs: Arc::new(fs.clone()),
        ..FileLogOptions::default()
    }
}

/// The pristine log: what each LSN holds, the LSNs of the last cycle, and
/// the first LSN readable.
struct Pristine {
    fs: PowerLossFs,
    records: BTreeMap<u64, Bytes>,
    last_cycle: u64,
    start: u64,
}

fn build(seed: u64) -> Pristine {
    let fs = PowerLossFs::new();
    let mut rng = Rng::new(seed);
    let log = FileLog::open(DIR, options(&fs)).unwrap();
    let mut records = BTreeMap::new();
    let mut last_cycle = 0;
    for a in 0..40u64 {
        let n = 1 + rng.below(4);
        let batch: Vec<Bytes> = (0..n)
            .map(|i| {
                let len = 20 + rng.below(600) as usize;
                Bytes::from(vec![(a * 7 + i) as u8 | 1; len])
            })
            .collect();
        let Lsn(first) = log.append_blocking(&batch).unwrap();
        for (i, r) in batch.into_iter().enumerate() {
            records.insert(first + i as u64, r);
        }
        last_cycle = first;
    }
    let start = log.truncate_prefix_blocking(Lsn(12)).unwrap().0;
    drop(log);
    // A cycle that spans two segments is two cycles: the last one begins in
    // the last segment.
    let last_segment = fs
        .files()
        .keys()
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    Pristine {
        fs,
        records,
        last_cycle: last_cycle.max(last_segment),
        start,
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    error: u64,
    intact: u64,
    truncated_in_last_cycle: u64,
    /// Of the intact ones, those where recovery reported or erased damage.
    intact_with_damage_reported: u64,
    /// Flips by where they landed.
    by_file: BTreeMap<String, u64>,
}

/// Flips one random bit and classifies what opening and reading the log
/// gives; `Err` is a failure of the log.
fn trial(p: &Pristine, rng: &mut Rng, out: &mut Outcomes) -> Result<(), String> {
    let fs = p.fs.fork();
    let files: Vec<(PathBuf, usize)> = fs
        .files()
        .into_iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(path, d)| (path, d.len()))
        .collect();
    // Half the flips land anywhere (weighted by size), half in a file
    // chosen at random, so the small markers get their share.
    let (path, len) = if rng.below(2) == 0 {
        let total: usize = files.iter().map(|f| f.1).sum();
        let mut at = rng.below(total as u64) as usize;
        files
            .iter()
            .find(|f| {
                if at < f.1 {
                    true
                } else {
                    at -= f.1;
                    false
                }
            })
            .cloned()
            .unwrap()
    } else {
        files[rng.below(files.len() as u64) as usize].clone()
    };
    let bit = rng.below(len as u64 * 8) as usize;
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let kind = if name.ends_with(".log") {
        "segment".to_string()
    } else {
        name.clone()
    };
    *out.by_file.entry(kind).or_default() += 1;
    fs.decay(Path::new("/").join(&path).as_path(), |d| {
        d[bit / 8] ^= 1 << (bit % 8)
    })
    .unwrap();
    let what = format!("bit {bit} of {name}");
    let log = match FileLog::open(DIR, options(&fs)) {
        Ok(log) => log,
        Err(StorageError::Corrupt { .. } | StorageError::Foreign { .. }) => {
            out.error += 1;
            return Ok(());
        }
        Err(e) => return Err(format!("{what}: opening failed with {e}")),
    };
    let got: Vec<(Lsn, Bytes)> = log
        .iter_from(Lsn(0))
        .map_err(|e| format!("{what}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: opened, then reading failed: {e}"))?;
    let want: Vec<(Lsn, Bytes)> = p
        .records
        .range(p.start..)
        .map(|(l, r)| (Lsn(*l), r.clone()))
        .collect();
    let damage =
        log.recovery().torn_tail.is_some() || !log.recovery().unused_space_damage.is_empty();
    if got == want {
        out.intact += 1;
        out.intact_with_damage_reported += u64::from(damage);
        return Ok(());
    }
    let cut = got.len();
    let prefix = want.starts_with(&got);
    let cut_lsn = p.start + cut as u64;
    if prefix && cut_lsn >= p.last_cycle {
        out.truncated_in_last_cycle += 1;
        return Ok(());
    }
    Err(format!(
        "{what}: {} records read back of {}; prefix: {prefix}; the last cycle begins at LSN {}",
        got.len(),
        want.len(),
        p.last_cycle
    ))
}

fn sweep(seed: u64, trials: u64) -> Outcomes {
    let p = build(seed);
    let mut rng = Rng::new(seed ^ 0xb17);
    let mut out = Outcomes::default();
    for t in 0..trials {
        if let Err(e) = trial(&p, &mut rng, &mut out) {
            panic!("seed {seed:#x} trial {t}: {e}");
        }
    }
    out
}

fn check(out: &Outcomes, trials: u64) {
    eprintln!("bit flips: {trials} trials: {out:?}");
    assert_eq!(out.error + out.intact + out.truncated_in_last_cycle, trials);
    // Every outcome happened, and flips reached every kind of file.
    assert!(
        out.error > 0 && out.intact > 0 && out.truncated_in_last_cycle > 0,
        "{out:?}"
    );
    assert!(out.intact_with_damage_reported > 0, "{out:?}");
    for kind in ["segment", "START", "META"] {
        assert!(
            out.by_file.get(kind).copied().unwrap_or(0) > 0,
            "no flip in {kind}"
        );
    }
}

#[test]
fn a_flipped_bit_anywhere_is_an_error_intact_or_a_truncated_last_cycle() {
    let out = sweep(1, 300);
    check(&out, 300);
}

#[test]
#[ignore = "long: thousands of trials, run in release by CI"]
fn bit_flip_sweep() {
    let mut total = Outcomes::default();
    let per_seed = 5000;
    for seed in 0..4 {
        let out = sweep(seed, per_seed);
        total.error += out.error;
        total.intact += out.intact;
        total.truncated_in_last_cycle += out.truncated_in_last_cycle;
        total.intact_with_damage_reported += out.intact_with_damage_reported;
        for (k, v) in out.by_file {
            *total.by_file.entry(k).or_default() += v;
        }
    }
    check(&total, 4 * per_seed);
}

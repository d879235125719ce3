//! [`MirroredStore`]: the subject's two-disk stable storage.
//!
//! Every value is kept on two disks, a *main* and a *mirror*, each a
//! [`FileStore`] whose files carry a checksum and a *generation* that grows
//! with every put of the key. A put writes the main copy completely
//! (atomically, durably) and only then the mirror copy. After a crash, and
//! on every read, the two copies are compared by the subject's rules:
//!
//! * both identical: in good shape, use either;
//! * one bad (fails its checksum), missing or unreadable, the other good:
//!   choose the good one, and repair the other from it;
//! * both good but different: choose the newer generation, and repair the
//!   older; of two good copies of the *same* generation, choose the main
//!   disk (the subject's rule), and repair the mirror;
//! * neither good: not in good shape; report it, never guess.
//!
//! Because the main copy is always written first, a crash between the two
//! writes leaves main = new and mirror = old, which the rules resolve to the
//! new value; a crash before the main write's rename leaves both old. A
//! reader therefore sees the old or the new value, never a mix. The
//! generation is what keeps a disk that *lost* a write (it still holds an
//! older valid copy, as after a firmware bug or a restored backup) from
//! winning silently: the other disk's newer copy wins, and the stale one is
//! repaired.
//!
//! # A value survives the loss of either disk
//!
//! A read returns the good copy whatever happens to the other one: if the
//! other copy cannot be read, or its repair cannot be written (the disk is
//! full or read-only), the read still answers from the good copy, and the
//! failure is counted ([`RepairCounts::failed_repairs`],
//! [`ScrubReport::repair_failed`]) and logged; the next read or
//! [`scrub`](MirroredStore::scrub) tries the repair again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{StableStore, StorageError};

use crate::file_store::{CopyState, FileStore};
use crate::fs::{Fs, OsFs};

/// What recovery found for the keys it walked (see
/// [`MirroredStore::recover`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Keys whose two copies were good and identical.
    pub ok: u64,
    /// Keys whose mirror copy was bad, missing or older and was rewritten
    /// from the main copy.
    pub repaired_from_main: u64,
    /// Keys whose main copy was bad, missing or older and was rewritten
    /// from the mirror copy.
    pub repaired_from_mirror: u64,
    /// Of the repairs above, those that replaced a good copy of an older
    /// generation: a disk that had lost a write.
    pub stale_replaced: u64,
    /// Keys whose two copies were both good, of the same generation, but
    /// different: the main copy won and the mirror was rewritten from it.
    pub main_won_disagreement: u64,
    /// Keys with no good copy (both bad, or one bad and the other missing);
    /// their [`get`](MirroredStore::get_sync) reports
    /// [`StorageError::Corrupt`]. They are left untouched for an operator.
    pub both_bad: Vec<Bytes>,
    /// Keys whose repair could not be written (the disk refused it): their
    /// value was served from the good copy, and the bad one remains.
    pub repair_failed: Vec<Bytes>,
    /// Keys with a copy that could not be read (an I/O error); those with no
    /// other good copy could not be checked at all.
    pub unreadable: Vec<Bytes>,
}

impl ScrubReport {
    /// Keys that needed a repair of any kind.
    pub fn repaired(&self) -> u64 {
        self.repaired_from_main + self.repaired_from_mirror + self.main_won_disagreement
    }
}

/// Repairs made since the store was opened, by reads and recoveries alike
/// (see [`MirroredStore::repairs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairCounts {
    /// Mirror copies rewritten from a good main copy because they were bad,
    /// missing or older.
    pub repaired_from_main: u64,
    /// Main copies rewritten from a good mirror copy because they were bad,
    /// missing or older.
    pub repaired_from_mirror: u64,
    /// Of the repairs above, those that replaced an older valid copy.
    pub stale_replaced: u64,
    /// Mirror copies rewritten because both copies were good, of one
    /// generation, but different, and the main one wins.
    pub main_won_disagreement: u64,
    /// Repairs that could not be written; the good copy was served anyway.
    pub failed_repairs: u64,
    /// Copies that could not be read (I/O errors).
    pub unreadable: u64,
}

#[derive(Debug, Default)]
struct Counters {
    from_main: AtomicU64,
    from_mirror: AtomicU64,
    stale: AtomicU64,
    main_won: AtomicU64,
    failed: AtomicU64,
    unreadable: AtomicU64,
}

/// What the rules decided for one key.
#[derive(Debug)]
enum Decision {
    /// No copy on either disk.
    Absent,
    /// Both copies good and identical.
    Agreed(Bytes),
    /// The value, and the copy that was rewritten to match it.
    Repaired {
        value: Bytes,
        /// Which disk was rewritten.
        mirror: bool,
        /// Whether it held an older good copy.
        stale: bool,
        /// Both good, same generation, different: main won.
        main_won: bool,
        /// The rewrite failed (the value is still the good copy's).
        failed: bool,
    },
    /// Neither copy is good.
    BothBad(StorageError),
}

/// One key's reconciliation: the decision, and whether a copy was
/// unreadable.
#[derive(Debug)]
struct Outcome {
    decision: Decision,
    unreadable: bool,
}

/// Two [`FileStore`]s on two disks, a main and a mirror, kept as one
/// [`StableStore`] by the subject's stable-storage rules on every read and
/// by [`recover`](MirroredStore::recover).
///
/// Like [`FileStore`], the [`StableStore`] methods do blocking file I/O
/// inside their `async fn`s and so block the calling task until the data is
/// durable; the synchronous `*_sync` methods are the same operations without
/// an executor. Both directories are locked while the store is open.
#[derive(Debug)]
pub struct MirroredStore {
    main: FileStore,
    mirror: FileStore,
    /// Serializes every operation on the pair. A read may repair, and a
    /// repair racing a delete could otherwise copy a value back onto a disk
    /// the delete had just cleared, resurrecting the key.
    pair: Mutex<()>,
    counters: Counters,
}

impl MirroredStore {
    /// Opens the store on a main and a mirror directory of the real file
    /// system: see [`open_in`](Self::open_in).
    pub fn open(
        main_dir: impl AsRef<Path>,
        mirror_dir: impl AsRef<Path>,
    ) -> Result<MirroredStore, StorageError> {
        MirroredStore::open_in(Arc::new(OsFs), main_dir, mirror_dir)
    }

    /// Opens the store on a main and a mirror directory of `fs`, creating
    /// them if needed, locking both, and removing temporaries of
    /// interrupted writes in each (see [`FileStore::open_in`]).
    ///
    /// For the mirror to survive what the main copy does not, the two
    /// directories belong on different disks; the store can only check that
    /// they are not the same directory. Opening does not reconcile the
    /// copies: reads do so key by key, and [`recover`](Self::recover) does so
    /// for every key.
    ///
    /// # Errors
    /// [`StorageError::Locked`] if another store has either directory open
    /// (which is also what opening one directory as both disks gives).
    pub fn open_in(
        fs: Arc<dyn Fs>,
        main_dir: impl AsRef<Path>,
        mirror_dir: impl AsRef<Path>,
    ) -> Result<MirroredStore, StorageError> {
        let main = FileStore::open_in(fs.clone(), main_dir)?;
        let mirror = match FileStore::open_in(fs, mirror_dir) {
            // The lock main took is what refuses the mirror.
            Err(StorageError::Locked { location }) if Path::new(&location) == main.dir() => {
                return Err(StorageError::Rejected(format!(
                    "main and mirror are the same directory {location}"
                )));
            }
            other => other?,
        };
        Ok(MirroredStore {
            main,
            mirror,
            pair: Mutex::new(()),
            counters: Counters::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, only the order of file operations.
        self.pair.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The main disk's directory.
    pub fn main_dir(&self) -> &Path {
        self.main.dir()
    }

    /// The mirror disk's directory.
    pub fn mirror_dir(&self) -> &Path {
        self.mirror.dir()
    }

    /// The file holding `key`'s main copy (whether or not it exists).
    pub fn main_path(&self, key: &[u8]) -> Result<PathBuf, StorageError> {
        self.main.path_of(key)
    }

    /// The file holding `key`'s mirror copy (whether or not it exists).
    pub fn mirror_path(&self, key: &[u8]) -> Result<PathBuf, StorageError> {
        self.mirror.path_of(key)
    }

    /// Repairs made since the store was opened, by reads and recoveries.
    pub fn repairs(&self) -> RepairCounts {
        let c = &self.counters;
        RepairCounts {
            repaired_from_main: c.from_main.load(Ordering::Relaxed),
            repaired_from_mirror: c.from_mirror.load(Ordering::Relaxed),
            stale_replaced: c.stale.load(Ordering::Relaxed),
            main_won_disagreement: c.main_won.load(Ordering::Relaxed),
            failed_repairs: c.failed.load(Ordering::Relaxed),
            unreadable: c.unreadable.load(Ordering::Relaxed),
        }
    }

    /// The generation the next put of `key` gets: one past the newest good
    /// copy on either disk (a stale copy, even of a deleted key, is thereby
    /// always outvoted by later puts).
    fn next_generation(&self, key: &[u8]) -> u64 {
        let generation = |store: &FileStore| match store.read_copy(key) {
            Ok((_, CopyState::Good { generation, .. })) => generation,
            _ => 0,
        };
        generation(&self.main)
            .max(generation(&self.mirror))
            .saturating_add(1)
    }

    /// Stores `value` under `key`: the main copy, then the mirror copy, each
    /// atomically and durably (the synchronous form of [`StableStore::put`]).
    ///
    /// If this returns an error the outcome is unknown, as for any failed
    /// write: if the main copy was written, later reads return the new value
    /// (it is the newer generation), otherwise the old one.
    pub fn put_sync(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let _pair = self.lock();
        let generation = self.next_generation(key);
        // The order is the whole point: the mirror holds the old value until
        // the main copy is durable, so at every instant one disk has a
        // complete value that recovery will pick.
        self.main.put_generation(key, value, generation)?;
        self.mirror.put_generation(key, value, generation)
    }

    /// Writes only the main copy, as a put does before a crash stops it from
    /// writing the mirror: for tests of recovery.
    #[doc(hidden)]
    pub fn put_main_only(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let _pair = self.lock();
        let generation = self.next_generation(key);
        self.main.put_generation(key, value, generation)
    }

    /// Writes only the mirror copy, as a put does when the main disk lost
    /// its write: for tests of recovery.
    #[doc(hidden)]
    pub fn put_mirror_only(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let _pair = self.lock();
        let generation = self.next_generation(key);
        self.mirror.put_generation(key, value, generation)
    }

    /// Removes only the mirror copy, as a delete does before a crash stops it
    /// from removing the main copy: for tests of recovery.
    #[doc(hidden)]
    pub fn delete_mirror_only(&self, key: &[u8]) -> Result<(), StorageError> {
        let _pair = self.lock();
        self.mirror.delete_sync(key)
    }

    /// The value under `key`, reconciling (and repairing) its two copies by
    /// the subject's rules (the synchronous form of [`StableStore::get`]).
    ///
    /// A repair that cannot be written does not fail the read: the good
    /// copy's value is returned and the failure counted (see
    /// [`repairs`](Self::repairs)).
    ///
    /// # Errors
    /// [`StorageError::Corrupt`], naming both copies, if neither copy is
    /// good; the I/O error if no copy could be read and none was good.
    pub fn get_sync(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        match self.reconcile(key)?.decision {
            Decision::Absent => Ok(None),
            Decision::Agreed(v) | Decision::Repaired { value: v, .. } => Ok(Some(v)),
            Decision::BothBad(err) => Err(err),
        }
    }

    /// Removes `key` from both disks: the mirror copy first, then the main
    /// copy (the synchronous form of [`StableStore::delete`]).
    ///
    /// The order keeps the invariant a put keeps: at every instant between
    /// operations and crashes, the main disk holds a complete copy of the
    /// value recovery will choose. A crash between the two removals leaves
    /// only the main copy, with the old value; the rules copy it back to the
    /// mirror, so the key keeps its old, complete value and the interrupted
    /// delete simply did not happen (it was never acknowledged). Never a
    /// mix.
    pub fn delete_sync(&self, key: &[u8]) -> Result<(), StorageError> {
        let _pair = self.lock();
        self.mirror.delete_sync(key)?;
        self.main.delete_sync(key)
    }

    /// Every key with a copy on either disk, in ascending byte order (the
    /// synchronous form of [`StableStore::keys`]).
    ///
    /// A key appears if either disk has a file for it, good or not, matching
    /// [`get_sync`](Self::get_sync): a key with one good copy has a value,
    /// and one with no good copy reports corruption rather than vanishing.
    /// A disk whose directory cannot be listed is left out (its keys are
    /// those of the other disk); only if neither can be listed is it an
    /// error.
    pub fn keys_sync(&self) -> Result<Vec<Bytes>, StorageError> {
        let (main, mirror) = (self.main.keys_sync(), self.mirror.keys_sync());
        let mut keys = BTreeSet::new();
        match (main, mirror) {
            (Err(e), Err(_)) => return Err(e),
            (a, b) => {
                for listed in [a, b].into_iter().flatten() {
                    keys.extend(listed);
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Recovery after a crash: applies the rules to every key present on
    /// either disk, repairing what they say to repair, so that afterwards
    /// every key with a good copy has two byte-identical copies (unless a
    /// disk refuses the repair: see [`ScrubReport::repair_failed`]).
    ///
    /// Keys with no good copy are listed in [`ScrubReport::both_bad`] rather
    /// than failing the whole recovery: one lost key must not stop the rest
    /// from being repaired. Likewise keys that could not be read at all.
    pub fn recover(&self) -> Result<ScrubReport, StorageError> {
        let mut report = ScrubReport::default();
        for key in self.keys_sync()? {
            // Each key is reconciled under the lock on its own, so a long
            // scrub does not stall puts and gets of other keys for its whole
            // duration.
            let outcome = match self.reconcile(&key) {
                Ok(o) => o,
                Err(_) => {
                    // Neither copy could be read.
                    report.unreadable.push(key);
                    continue;
                }
            };
            if outcome.unreadable {
                report.unreadable.push(key.clone());
            }
            match outcome.decision {
                // Deleted since the listing.
                Decision::Absent => {}
                Decision::Agreed(_) => report.ok += 1,
                Decision::Repaired { failed: true, .. } => report.repair_failed.push(key),
                Decision::Repaired {
                    mirror,
                    stale,
                    main_won,
                    ..
                } => {
                    if main_won {
                        report.main_won_disagreement += 1;
                    } else if mirror {
                        report.repaired_from_main += 1;
                    } else {
                        report.repaired_from_mirror += 1;
                    }
                    report.stale_replaced += u64::from(stale);
                }
                Decision::BothBad(_) => report.both_bad.push(key),
            }
        }
        if report.repaired() > 0
            || !report.both_bad.is_empty()
            || !report.repair_failed.is_empty()
            || !report.unreadable.is_empty()
        {
            tracing::warn!(
                ?report,
                "stable storage recovery repaired or found bad copies"
            );
        }
        Ok(report)
    }

    /// A periodic check of both disks while running: the same walk as
    /// [`recover`](Self::recover), catching a copy that decayed on disk
    /// before its other copy decays too.
    pub fn scrub(&self) -> Result<ScrubReport, StorageError> {
        self.recover()
    }

    /// Rewrites `key`'s copy on one disk with `raw` (the other's exact
    /// bytes); returns whether it failed (a failure is logged, not
    /// returned: the good copy is still the value).
    fn repair(&self, key: &[u8], onto_mirror: bool, raw: &[u8]) -> bool {
        let disk = if onto_mirror {
            &self.mirror
        } else {
            &self.main
        };
        match disk.write_raw(key, raw) {
            Ok(()) => false,
            Err(e) => {
                tracing::error!(
                    ?key,
                    disk = %disk.dir().display(),
                    error = %e,
                    "could not repair a copy; serving the good one"
                );
                true
            }
        }
    }

    /// Counts what `decision` did in [`repairs`](Self::repairs).
    fn count(&self, decision: &Decision) {
        let Decision::Repaired {
            mirror,
            stale,
            main_won,
            failed,
            ..
        } = *decision
        else {
            return;
        };
        let c = &self.counters;
        let counter = if failed {
            &c.failed
        } else if main_won {
            &c.main_won
        } else if mirror {
            &c.from_main
        } else {
            &c.from_mirror
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if stale && !failed {
            c.stale.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads both copies of `key` and applies the rules, repairing a bad,
    /// missing, unreadable or outvoted copy from the good one with the good
    /// one's exact bytes.
    fn reconcile(&self, key: &[u8]) -> Result<Outcome, StorageError> {
        let _pair = self.lock();
        let main_path = self.main.path_of(key)?;
        let mirror_path = self.mirror.path_of(key)?;
        let read = |store: &FileStore| {
            store.read_copy(key).map(|(_, state)| state).inspect_err(|e| {
                tracing::error!(?key, disk = %store.dir().display(), error = %e, "copy unreadable");
                self.counters.unreadable.fetch_add(1, Ordering::Relaxed);
            })
        };
        let (main, mirror) = (read(&self.main), read(&self.mirror));
        let unreadable = main.is_err() || mirror.is_err();
        let good = |s: &Result<CopyState, StorageError>| match s {
            Ok(CopyState::Good {
                value,
                generation,
                raw,
            }) => Some((value.clone(), *generation, raw.clone())),
            _ => None,
        };
        let (gm, gr) = (good(&main), good(&mirror));
        let decision = match (gm, gr) {
            (Some((m, mg, _)), Some((r, rg, _))) if mg == rg && m == r => Decision::Agreed(m),
            (Some((m, mg, raw)), Some((_, rg, _))) if mg >= rg => {
                // Newer main, or the same generation with another value (the
                // subject's rule: main wins).
                let main_won = mg == rg;
                tracing::warn!(?key, main_won, "main and mirror copies differ; main wins");
                Decision::Repaired {
                    value: m,
                    mirror: true,
                    stale: !main_won,
                    main_won,
                    failed: self.repair(key, true, &raw),
                }
            }
            (Some(_), Some((r, _, raw))) => {
                tracing::warn!(
                    ?key,
                    "the main copy is older than the mirror's; mirror wins"
                );
                Decision::Repaired {
                    value: r,
                    mirror: false,
                    stale: true,
                    main_won: false,
                    failed: self.repair(key, false, &raw),
                }
            }
            (Some((m, _, raw)), None) => {
                tracing::warn!(?key, mirror = ?mirror, "repairing mirror copy from main");
                Decision::Repaired {
                    value: m,
                    mirror: true,
                    stale: false,
                    main_won: false,
                    failed: self.repair(key, true, &raw),
                }
            }
            (None, Some((r, _, raw))) => {
                tracing::warn!(?key, main = ?main, "repairing main copy from mirror");
                Decision::Repaired {
                    value: r,
                    mirror: false,
                    stale: false,
                    main_won: false,
                    failed: self.repair(key, false, &raw),
                }
            }
            (None, None) => match (main, mirror) {
                (Ok(CopyState::Missing), Ok(CopyState::Missing)) => Decision::Absent,
                (Err(e), _) | (_, Err(e)) => return Err(e),
                (main, mirror) => {
                    let describe = |state: &Result<CopyState, StorageError>| match state {
                        Ok(CopyState::Missing) => "missing".to_string(),
                        Ok(CopyState::Bad(why)) => why.clone(),
                        // Unreachable in this arm; named for completeness.
                        Ok(CopyState::Good { .. }) => "good".to_string(),
                        Err(e) => e.to_string(),
                    };
                    tracing::error!(?key, "no good copy of a stored value on either disk");
                    Decision::BothBad(StorageError::Corrupt {
                        location: format!(
                            "main {} and mirror {}",
                            main_path.display(),
                            mirror_path.display()
                        ),
                        offset: 0,
                        reason: format!(
                            "both copies bad (main: {}; mirror: {})",
                            describe(&main),
                            describe(&mirror)
                        ),
                    })
                }
            },
        };
        self.count(&decision);
        Ok(Outcome {
            decision,
            unreadable,
        })
    }
}

/// The trait methods run the synchronous ones inline: each blocks the
/// calling task until both disks have made the change durable.
#[async_trait]
impl StableStore for MirroredStore {
    async fn put(&self, key: &[u8], value: Bytes) -> Result<(), StorageError> {
        self.put_sync(key, &value)
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        self.get_sync(key)
    }

    async fn delete(&self, key: &[u8]) -> Result<(), StorageError> {
        self.delete_sync(key)
    }

    async fn keys(&self) -> Result<Vec<Bytes>, StorageError> {
        self.keys_sync()
    }
}

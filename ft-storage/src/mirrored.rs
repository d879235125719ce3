//! [`MirroredStore`]: the subject's two-disk stable storage.
//!
//! Every value is kept on two disks, a *main* and a *mirror*, each a
//! [`FileStore`] whose files carry a checksum. A put writes the main copy
//! completely (atomically, durably) and only then the mirror copy. After a
//! crash, and on every read, the two copies are compared by the subject's
//! rules:
//!
//! * both identical: in good shape, use either;
//! * one bad (fails its checksum) or missing, the other good: choose the good
//!   one, and repair the other from it;
//! * both good but different: choose the main disk, and repair the mirror;
//! * neither good: not in good shape; report it, never guess.
//!
//! Because the main copy is always written first, a crash between the two
//! writes leaves main = new and mirror = old (both good, different), which
//! the rules resolve to the new value; a crash before the main write's
//! rename leaves both old. A reader therefore sees the old or the new value,
//! never a mix.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{StableStore, StorageError};

use crate::file_store::{CopyState, FileStore};

/// What recovery found for the keys it walked (see
/// [`MirroredStore::recover`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Keys whose two copies were good and identical.
    pub ok: u64,
    /// Keys whose mirror copy was bad or missing and was rewritten from the
    /// main copy.
    pub repaired_from_main: u64,
    /// Keys whose main copy was bad or missing and was rewritten from the
    /// mirror copy.
    pub repaired_from_mirror: u64,
    /// Keys whose two copies were both good but different: the main copy won
    /// and the mirror was rewritten from it (what a crash between the main
    /// and mirror writes of a put leaves).
    pub main_won_disagreement: u64,
    /// Keys with no good copy (both bad, or one bad and the other missing);
    /// their [`get`](MirroredStore::get_sync) reports
    /// [`StorageError::Corrupt`]. They are left untouched for an operator.
    pub both_bad: Vec<Bytes>,
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
    /// Mirror copies rewritten from a good main copy because they were bad or
    /// missing.
    pub repaired_from_main: u64,
    /// Main copies rewritten from a good mirror copy because they were bad or
    /// missing.
    pub repaired_from_mirror: u64,
    /// Mirror copies rewritten because both copies were good but different
    /// and the main one wins.
    pub main_won_disagreement: u64,
}

#[derive(Debug, Default)]
struct Counters {
    from_main: AtomicU64,
    from_mirror: AtomicU64,
    main_won: AtomicU64,
}

/// How the rules resolved one key.
enum Outcome {
    /// No copy on either disk.
    Absent,
    /// Both copies good and identical.
    Agreed(Bytes),
    /// The mirror was bad or missing; rewritten from main.
    RepairedFromMain(Bytes),
    /// The main copy was bad or missing; rewritten from the mirror.
    RepairedFromMirror(Bytes),
    /// Both good, different; the mirror was rewritten from main.
    MainWon(Bytes),
    /// No good copy; the error to report.
    BothBad(StorageError),
}

/// Two-disk stable storage: every value on a main and a mirror
/// [`FileStore`], reconciled by the subject's rules on every read and by
/// [`recover`](MirroredStore::recover).
///
/// Like [`FileStore`], the [`StableStore`] methods do blocking file I/O
/// inside their `async fn`s and so block the calling task until the data is
/// durable; the synchronous `*_sync` methods are the same operations without
/// an executor.
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
    /// Opens the store on a main and a mirror directory, creating them if
    /// needed and removing temporaries of interrupted writes in each (see
    /// [`FileStore::open`]).
    ///
    /// For the mirror to survive what the main copy does not, the two
    /// directories belong on different disks; the store can only check that
    /// they are not the same directory. Opening does not reconcile the
    /// copies: reads do so key by key, and [`recover`](Self::recover) does so
    /// for every key.
    ///
    /// # Errors
    /// [`StorageError::Rejected`] if both paths name the same directory.
    pub fn open(
        main_dir: impl AsRef<Path>,
        mirror_dir: impl AsRef<Path>,
    ) -> Result<MirroredStore, StorageError> {
        let main = FileStore::open(main_dir)?;
        let mirror = FileStore::open(mirror_dir)?;
        if main.dir().canonicalize()? == mirror.dir().canonicalize()? {
            return Err(StorageError::Rejected(format!(
                "main and mirror are the same directory {}",
                main.dir().display()
            )));
        }
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
        RepairCounts {
            repaired_from_main: self.counters.from_main.load(Ordering::Relaxed),
            repaired_from_mirror: self.counters.from_mirror.load(Ordering::Relaxed),
            main_won_disagreement: self.counters.main_won.load(Ordering::Relaxed),
        }
    }

    /// Stores `value` under `key`: the main copy, then the mirror copy, each
    /// atomically and durably (the synchronous form of [`StableStore::put`]).
    ///
    /// If this returns an error the outcome is unknown, as for any failed
    /// write: if the main copy was written, later reads return the new value
    /// (main wins), otherwise the old one.
    pub fn put_sync(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let _pair = self.lock();
        // The order is the whole point: the mirror holds the old value until
        // the main copy is durable, so at every instant one disk has a
        // complete value that recovery will pick.
        self.main.put_sync(key, value)?;
        self.mirror.put_sync(key, value)
    }

    /// Writes only the main copy, as a put does before a crash stops it from
    /// writing the mirror: for tests of recovery.
    #[doc(hidden)]
    pub fn put_main_only(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let _pair = self.lock();
        self.main.put_sync(key, value)
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
    /// # Errors
    /// [`StorageError::Corrupt`], naming both copies, if neither copy is good.
    pub fn get_sync(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        match self.reconcile(key)? {
            Outcome::Absent => Ok(None),
            Outcome::Agreed(v)
            | Outcome::RepairedFromMain(v)
            | Outcome::RepairedFromMirror(v)
            | Outcome::MainWon(v) => Ok(Some(v)),
            Outcome::BothBad(err) => Err(err),
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
    /// mix. Removing main first would also recover the old value, but from
    /// the mirror, and "main missing" would then be ambiguous between an
    /// interrupted delete and a damaged main disk.
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
    pub fn keys_sync(&self) -> Result<Vec<Bytes>, StorageError> {
        let mut keys: BTreeSet<Bytes> = self.main.keys_sync()?.into_iter().collect();
        keys.extend(self.mirror.keys_sync()?);
        Ok(keys.into_iter().collect())
    }

    /// Recovery after a crash: applies the rules to every key present on
    /// either disk, repairing what they say to repair, so that afterwards
    /// every key with a good copy has two byte-identical copies.
    ///
    /// Keys with no good copy are listed in [`ScrubReport::both_bad`] rather
    /// than failing the whole recovery: one lost key must not stop the rest
    /// from being repaired. Only I/O errors abort.
    pub fn recover(&self) -> Result<ScrubReport, StorageError> {
        let mut report = ScrubReport::default();
        for key in self.keys_sync()? {
            // Each key is reconciled under the lock on its own, so a long
            // scrub does not stall puts and gets of other keys for its whole
            // duration.
            match self.reconcile(&key)? {
                // Deleted since the listing.
                Outcome::Absent => {}
                Outcome::Agreed(_) => report.ok += 1,
                Outcome::RepairedFromMain(_) => report.repaired_from_main += 1,
                Outcome::RepairedFromMirror(_) => report.repaired_from_mirror += 1,
                Outcome::MainWon(_) => report.main_won_disagreement += 1,
                Outcome::BothBad(_) => report.both_bad.push(key),
            }
        }
        if report.repaired() > 0 || !report.both_bad.is_empty() {
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

    /// Reads both copies of `key` and applies the rules, repairing a bad,
    /// missing or outvoted copy from the good one with the good one's exact
    /// bytes.
    fn reconcile(&self, key: &[u8]) -> Result<Outcome, StorageError> {
        let _pair = self.lock();
        let (main_path, main) = self.main.read_copy(key)?;
        let (mirror_path, mirror) = self.mirror.read_copy(key)?;
        let outcome = match (main, mirror) {
            (CopyState::Missing, CopyState::Missing) => Outcome::Absent,
            (CopyState::Good { value: m, raw }, CopyState::Good { value: r, .. }) => {
                if m == r {
                    Outcome::Agreed(m)
                } else {
                    tracing::warn!(?key, "main and mirror copies differ; main wins");
                    self.mirror.write_raw(key, &raw)?;
                    self.counters.main_won.fetch_add(1, Ordering::Relaxed);
                    Outcome::MainWon(m)
                }
            }
            (CopyState::Good { value, raw }, other) => {
                tracing::warn!(?key, mirror = ?other, "repairing mirror copy from main");
                self.mirror.write_raw(key, &raw)?;
                self.counters.from_main.fetch_add(1, Ordering::Relaxed);
                Outcome::RepairedFromMain(value)
            }
            (other, CopyState::Good { value, raw }) => {
                tracing::warn!(?key, main = ?other, "repairing main copy from mirror");
                self.main.write_raw(key, &raw)?;
                self.counters.from_mirror.fetch_add(1, Ordering::Relaxed);
                Outcome::RepairedFromMirror(value)
            }
            (main, mirror) => {
                let describe = |state: &CopyState| match state {
                    CopyState::Missing => "missing".to_string(),
                    CopyState::Bad(err) => err.to_string(),
                    // Unreachable in this arm; named for completeness.
                    CopyState::Good { .. } => "good".to_string(),
                };
                tracing::error!(?key, "no good copy of a stored value on either disk");
                Outcome::BothBad(StorageError::Corrupt {
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
        };
        Ok(outcome)
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

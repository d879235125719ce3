//! In-memory stable storage that can be *crashed*: [`MemLog`] and [`MemStore`].
//!
//! Both keep two layers, as a real disk does: what was written, and what was
//! synced. The async trait methods ([`StableLog::append`],
//! [`StableStore::put`]…) write *and* sync, so they are durable on return as
//! the traits demand; the synchronous `write`/`stage` + `sync` methods let a
//! simulator (`ft-sim`) model the time between a write and its sync, and
//! [`MemLog::crash`] / [`MemStore::crash`] cut storage back to what was
//! synced. Clones share the same storage, like two handles on one disk.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{Lsn, StableLog, StableStore, StorageError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct LogState {
    /// LSN of `records[0]`.
    start: u64,
    records: Vec<Bytes>,
    /// Records `records[..synced]` are durable.
    synced: usize,
}

impl LogState {
    fn next_lsn(&self) -> Lsn {
        Lsn(self.start + self.records.len() as u64)
    }
}

/// An in-memory [`StableLog`] with a volatile tail that [`crash`](MemLog::crash)
/// drops.
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    state: Arc<Mutex<LogState>>,
}

impl MemLog {
    /// An empty log.
    pub fn new() -> Self {
        MemLog::default()
    }

    /// Writes `record` after every earlier one, *not yet durable*; returns
    /// its LSN.
    pub fn write(&self, record: Bytes) -> Lsn {
        let mut s = lock(&self.state);
        let lsn = s.next_lsn();
        s.records.push(record);
        lsn
    }

    /// Makes every record up to and including `lsn` durable; returns how many
    /// became durable by this call (zero if they already were, or if `lsn`
    /// was lost in a crash).
    pub fn sync_through(&self, lsn: Lsn) -> usize {
        let mut s = lock(&self.state);
        let upto = lsn.0.saturating_sub(s.start).saturating_add(1);
        let target = (upto.min(s.records.len() as u64)) as usize;
        let newly = target.saturating_sub(s.synced);
        s.synced = s.synced.max(target);
        newly
    }

    /// Makes everything written durable.
    pub fn sync(&self) -> usize {
        let mut s = lock(&self.state);
        let newly = s.records.len() - s.synced;
        s.synced = s.records.len();
        newly
    }

    /// The machine crashed: everything not synced is gone. Returns how many
    /// records were lost.
    pub fn crash(&self) -> usize {
        let mut s = lock(&self.state);
        let lost = s.records.len() - s.synced;
        let synced = s.synced;
        s.records.truncate(synced);
        lost
    }

    /// The durable records, oldest first (what a restart recovers from).
    pub fn durable(&self) -> Vec<Bytes> {
        let s = lock(&self.state);
        s.records[..s.synced].to_vec()
    }

    /// Records written but not yet synced.
    pub fn unsynced(&self) -> usize {
        let s = lock(&self.state);
        s.records.len() - s.synced
    }

    /// The LSN the next written record gets.
    pub fn next(&self) -> Lsn {
        lock(&self.state).next_lsn()
    }

    /// The LSN of the first record kept (records before it were dropped).
    pub fn start(&self) -> Lsn {
        Lsn(lock(&self.state).start)
    }

    /// [`StableLog::truncate_prefix`], without the `async`: discards the
    /// synced records before `upto` and returns the log's start afterwards.
    ///
    /// # Errors
    /// [`StorageError::Rejected`] if `upto` is past every written record.
    pub fn drop_before(&self, upto: Lsn) -> Result<Lsn, StorageError> {
        let mut s = lock(&self.state);
        if upto > s.next_lsn() {
            return Err(StorageError::Rejected(format!(
                "cannot discard records before {}: the log ends at {}",
                upto.0,
                s.next_lsn().0
            )));
        }
        let drop = (upto.0.saturating_sub(s.start) as usize).min(s.synced);
        s.records.drain(..drop);
        s.synced -= drop;
        s.start += drop as u64;
        Ok(Lsn(s.start))
    }
}

#[async_trait]
impl StableLog for MemLog {
    async fn append(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
        let mut s = lock(&self.state);
        let first = s.next_lsn();
        s.records.extend_from_slice(records);
        s.synced = s.records.len();
        Ok(first)
    }

    async fn read_from(&self, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, StorageError> {
        let s = lock(&self.state);
        let skip = from.0.saturating_sub(s.start) as usize;
        Ok(s.records[..s.synced]
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, r)| (Lsn(s.start + i as u64), r.clone()))
            .collect())
    }

    /// Only synced records are discarded; an `upto` past every written
    /// record is rejected.
    async fn truncate_prefix(&self, upto: Lsn) -> Result<Lsn, StorageError> {
        self.drop_before(upto)
    }

    async fn next_lsn(&self) -> Result<Lsn, StorageError> {
        let s = lock(&self.state);
        Ok(Lsn(s.start + s.synced as u64))
    }
}

#[derive(Debug, Default)]
struct StoreState {
    durable: BTreeMap<Bytes, Bytes>,
    /// Staged changes not yet synced: `None` is a staged delete.
    staged: BTreeMap<Bytes, Option<Bytes>>,
}

/// An in-memory [`StableStore`] with staged changes that
/// [`crash`](MemStore::crash) drops.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    state: Arc<Mutex<StoreState>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        MemStore::default()
    }

    /// Stages `value` under `key`, not yet durable (`None` stages a delete).
    pub fn stage(&self, key: &[u8], value: Option<Bytes>) {
        lock(&self.state)
            .staged
            .insert(Bytes::copy_from_slice(key), value);
    }

    /// Makes every staged change durable; returns how many there were.
    pub fn sync(&self) -> usize {
        let mut s = lock(&self.state);
        let staged = std::mem::take(&mut s.staged);
        let n = staged.len();
        for (k, v) in staged {
            match v {
                Some(v) => s.durable.insert(k, v),
                None => s.durable.remove(&k),
            };
        }
        n
    }

    /// The machine crashed: staged changes are gone. Returns how many.
    pub fn crash(&self) -> usize {
        let mut s = lock(&self.state);
        let n = s.staged.len();
        s.staged.clear();
        n
    }

    /// The durable contents.
    pub fn durable(&self) -> BTreeMap<Bytes, Bytes> {
        lock(&self.state).durable.clone()
    }
}

#[async_trait]
impl StableStore for MemStore {
    async fn put(&self, key: &[u8], value: Bytes) -> Result<(), StorageError> {
        let mut s = lock(&self.state);
        s.staged.remove(key);
        s.durable.insert(Bytes::copy_from_slice(key), value);
        Ok(())
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(lock(&self.state).durable.get(key).cloned())
    }

    async fn delete(&self, key: &[u8]) -> Result<(), StorageError> {
        let mut s = lock(&self.state);
        s.staged.remove(key);
        s.durable.remove(key);
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<Bytes>, StorageError> {
        Ok(lock(&self.state).durable.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn crash_keeps_exactly_the_synced_prefix() {
        let log = MemLog::new();
        let a = log.write(b("a"));
        let b_ = log.write(b("b"));
        log.write(b("c"));
        assert!(log.durable().is_empty());
        assert_eq!(log.sync_through(a), 1);
        assert_eq!(
            log.sync_through(a),
            0,
            "syncing twice makes nothing new durable"
        );
        assert_eq!(log.unsynced(), 2);
        assert_eq!(log.crash(), 2);
        assert_eq!(log.durable(), vec![b("a")]);
        assert_eq!(
            log.sync_through(b_),
            0,
            "a write lost in the crash cannot be synced later"
        );
        let d = log.write(b("d"));
        assert_eq!(d, Lsn(1), "LSNs of lost writes are given out again");
        assert_eq!(log.sync_through(d), 1);
        assert_eq!(log.durable(), vec![b("a"), b("d")]);
        assert_eq!(log.crash(), 0);
    }

    #[test]
    fn trait_appends_are_durable_and_truncation_keeps_lsns() {
        let log = MemLog::new();
        block_on(async {
            assert_eq!(log.append(&[b("a"), b("b")]).await.unwrap(), Lsn(0));
            assert_eq!(log.append(&[b("c")]).await.unwrap(), Lsn(2));
            assert_eq!(log.crash(), 0);
            log.truncate_prefix(Lsn(2)).await.unwrap();
            assert_eq!(log.read_from(Lsn(0)).await.unwrap(), vec![(Lsn(2), b("c"))]);
            assert_eq!(log.next_lsn().await.unwrap(), Lsn(3));
        });
    }

    #[test]
    fn store_crash_drops_staged_changes_only() {
        let store = MemStore::new();
        block_on(async {
            store.put(b"k", b("durable")).await.unwrap();
            store.stage(b"k", Some(b("staged")));
            store.stage(b"j", Some(b("staged")));
            assert_eq!(store.crash(), 2);
            assert_eq!(store.get(b"k").await.unwrap(), Some(b("durable")));
            store.stage(b"k", None);
            assert_eq!(store.sync(), 1);
            assert_eq!(store.get(b"k").await.unwrap(), None);
            assert!(store.keys().await.unwrap().is_empty());
        });
    }
}

//! Conformance suites for [`StableLog`] and [`StableStore`] implementations,
//! in the spirit of openraft's exported storage suite: one set of checks
//! that every implementation (in memory, file, mirrored, or your own) must
//! pass. Each check panics with its own name when it fails.
//!
//! ```
//! use ft_storage::MemLog;
//! use ft_storage::testing::{LogFactory, log_conformance};
//!
//! struct Mem;
//! #[async_trait::async_trait]
//! impl LogFactory for Mem {
//!     type Log = MemLog;
//!     async fn create(&mut self) -> MemLog { MemLog::new() }
//!     async fn restart(&mut self, log: MemLog) -> MemLog { log.crash(); log }
//! }
//! futures::executor::block_on(log_conformance(Mem));
//! ```

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{Lsn, StableLog, StableStore};

/// Makes logs for the log suite.
#[async_trait]
pub trait LogFactory: Send {
    /// The implementation under test.
    type Log: StableLog;
    /// A fresh, empty log.
    async fn create(&mut self) -> Self::Log;
    /// The same log after its process crashed and restarted: everything
    /// acknowledged must still be there.
    async fn restart(&mut self, log: Self::Log) -> Self::Log;
}

/// Makes stores for the store suite.
#[async_trait]
pub trait StoreFactory: Send {
    /// The implementation under test.
    type Store: StableStore;
    /// A fresh, empty store.
    async fn create(&mut self) -> Self::Store;
    /// The same store after its process crashed and restarted.
    async fn restart(&mut self, store: Self::Store) -> Self::Store;
}

fn rec(i: u64, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|j| (i as usize * 7 + j) as u8)
            .collect::<Vec<_>>(),
    )
}

async fn all<L: StableLog>(log: &L) -> Vec<(Lsn, Bytes)> {
    log.read_from(Lsn(0)).await.expect("read_from")
}

/// Runs every log check.
pub async fn log_conformance<F: LogFactory>(mut f: F) {
    lsns_are_consecutive(&mut f).await;
    read_from_returns_the_suffix(&mut f).await;
    acknowledged_records_survive_restart(&mut f).await;
    truncate_prefix_hides_and_survives_restart(&mut f).await;
    concurrent_appends_get_distinct_lsns(&mut f).await;
    odd_sizes_round_trip(&mut f).await;
}

/// Appends get consecutive LSNs from 0; a batch gets the LSN of its first;
/// an empty append returns the next LSN and changes nothing.
pub async fn lsns_are_consecutive<F: LogFactory>(f: &mut F) {
    let log = f.create().await;
    assert_eq!(
        log.next_lsn().await.unwrap(),
        Lsn(0),
        "lsns_are_consecutive: empty log"
    );
    assert_eq!(
        log.append(&[rec(0, 10)]).await.unwrap(),
        Lsn(0),
        "lsns_are_consecutive"
    );
    assert_eq!(
        log.append(&[rec(1, 10), rec(2, 10)]).await.unwrap(),
        Lsn(1),
        "lsns_are_consecutive: batch"
    );
    assert_eq!(
        log.append(&[]).await.unwrap(),
        Lsn(3),
        "lsns_are_consecutive: empty append"
    );
    assert_eq!(
        log.next_lsn().await.unwrap(),
        Lsn(3),
        "lsns_are_consecutive: next"
    );
}

/// `read_from` returns exactly the records at and after its LSN.
pub async fn read_from_returns_the_suffix<F: LogFactory>(f: &mut F) {
    let log = f.create().await;
    let recs: Vec<Bytes> = (0..20).map(|i| rec(i, 50)).collect();
    log.append(&recs).await.unwrap();
    let got = log.read_from(Lsn(15)).await.unwrap();
    let want: Vec<_> = (15..20)
        .map(|i| (Lsn(i), recs[i as usize].clone()))
        .collect();
    assert_eq!(got, want, "read_from_returns_the_suffix");
    assert!(
        log.read_from(Lsn(20)).await.unwrap().is_empty(),
        "read_from_returns_the_suffix: past the end"
    );
}

/// Everything acknowledged is there, intact and in order, after a restart,
/// and appends go on from where they were.
pub async fn acknowledged_records_survive_restart<F: LogFactory>(f: &mut F) {
    let log = f.create().await;
    for i in 0..50 {
        log.append(&[rec(i, (i * 13 % 200) as usize)])
            .await
            .unwrap();
    }
    let before = all(&log).await;
    let log = f.restart(log).await;
    assert_eq!(
        all(&log).await,
        before,
        "acknowledged_records_survive_restart"
    );
    assert_eq!(
        log.append(&[rec(50, 5)]).await.unwrap(),
        Lsn(50),
        "acknowledged_records_survive_restart: next LSN"
    );
}

/// `truncate_prefix` hides earlier records, keeps LSNs, says where the log
/// starts now, never moves back, refuses to go past the end, and its effect
/// survives a restart.
pub async fn truncate_prefix_hides_and_survives_restart<F: LogFactory>(f: &mut F) {
    let log = f.create().await;
    let recs: Vec<Bytes> = (0..30).map(|i| rec(i, 40)).collect();
    log.append(&recs).await.unwrap();
    assert_eq!(
        log.truncate_prefix(Lsn(10)).await.unwrap(),
        Lsn(10),
        "truncate_prefix: returns the new start"
    );
    let got = all(&log).await;
    assert_eq!(
        got.first().map(|r| r.0),
        Some(Lsn(10)),
        "truncate_prefix: start"
    );
    assert_eq!(got.len(), 20, "truncate_prefix: count");
    assert_eq!(
        log.truncate_prefix(Lsn(5)).await.unwrap(),
        Lsn(10),
        "truncate_prefix: never moves back, and says so"
    );
    assert_eq!(
        all(&log).await.len(),
        20,
        "truncate_prefix: never moves back"
    );
    let log = f.restart(log).await;
    assert_eq!(all(&log).await, got, "truncate_prefix: after restart");
    match log.truncate_prefix(Lsn(1000)).await {
        Err(ft_core::StorageError::Rejected(_)) => {}
        other => panic!("truncate_prefix: past the end must be rejected, got {other:?}"),
    }
    assert_eq!(
        all(&log).await,
        got,
        "truncate_prefix: a rejected call changes nothing"
    );
    assert_eq!(
        log.truncate_prefix(Lsn(30)).await.unwrap(),
        Lsn(30),
        "truncate_prefix: up to the end"
    );
    assert!(
        all(&log).await.is_empty(),
        "truncate_prefix: up to the end empties"
    );
    assert_eq!(
        log.append(&[rec(30, 1)]).await.unwrap(),
        Lsn(30),
        "truncate_prefix: LSNs go on"
    );
    let log = f.restart(log).await;
    assert_eq!(
        all(&log).await,
        vec![(Lsn(30), rec(30, 1))],
        "truncate_prefix: an emptied log after restart"
    );
}

/// Appends in flight together get distinct LSNs and all read back.
pub async fn concurrent_appends_get_distinct_lsns<F: LogFactory>(f: &mut F) {
    let log = f.create().await;
    let appends = (0..32).map(|i| {
        let log = &log;
        async move { (log.append(&[rec(i, 20)]).await.unwrap(), rec(i, 20)) }
    });
    let mut got = futures::future::join_all(appends).await;
    got.sort();
    let lsns: Vec<Lsn> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        lsns,
        (0..32).map(Lsn).collect::<Vec<_>>(),
        "concurrent_appends_get_distinct_lsns"
    );
    assert_eq!(
        all(&log).await,
        got,
        "concurrent_appends_get_distinct_lsns: contents"
    );
}

/// Empty and large records round-trip.
pub async fn odd_sizes_round_trip<F: LogFactory>(f: &mut F) {
    let log = f.create().await;
    let recs = vec![
        Bytes::new(),
        rec(1, 100_000),
        Bytes::from_static(&[0]),
        rec(3, 4096),
    ];
    log.append(&recs).await.unwrap();
    let log = f.restart(log).await;
    let got: Vec<Bytes> = all(&log).await.into_iter().map(|r| r.1).collect();
    assert_eq!(got, recs, "odd_sizes_round_trip");
}

/// Runs every store check.
pub async fn store_conformance<F: StoreFactory>(mut f: F) {
    put_get_overwrite_delete(&mut f).await;
    keys_are_sorted(&mut f).await;
    values_survive_restart(&mut f).await;
}

/// The basic contract: put, get, overwrite, delete, delete of a missing key.
pub async fn put_get_overwrite_delete<F: StoreFactory>(f: &mut F) {
    let s = f.create().await;
    assert_eq!(
        s.get(b"k").await.unwrap(),
        None,
        "put_get_overwrite_delete: empty"
    );
    s.put(b"k", Bytes::from_static(b"one")).await.unwrap();
    assert_eq!(
        s.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"one")),
        "put_get_overwrite_delete: put"
    );
    s.put(b"k", Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(
        s.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"two")),
        "put_get_overwrite_delete: overwrite"
    );
    s.put(b"empty", Bytes::new()).await.unwrap();
    assert_eq!(
        s.get(b"empty").await.unwrap(),
        Some(Bytes::new()),
        "put_get_overwrite_delete: empty value"
    );
    s.delete(b"k").await.unwrap();
    assert_eq!(
        s.get(b"k").await.unwrap(),
        None,
        "put_get_overwrite_delete: delete"
    );
    s.delete(b"never").await.unwrap();
}

/// `keys` lists every key once, in ascending byte order, binary keys included.
pub async fn keys_are_sorted<F: StoreFactory>(f: &mut F) {
    let s = f.create().await;
    let keys: [&[u8]; 5] = [b"b", b"a", &[0, 255, 7], b"ab", &[200]];
    for k in keys {
        s.put(k, Bytes::copy_from_slice(k)).await.unwrap();
    }
    let mut want: Vec<Bytes> = keys.iter().map(|k| Bytes::copy_from_slice(k)).collect();
    want.sort();
    assert_eq!(s.keys().await.unwrap(), want, "keys_are_sorted");
}

/// Every acknowledged put and delete survives a restart.
pub async fn values_survive_restart<F: StoreFactory>(f: &mut F) {
    let s = f.create().await;
    for i in 0..20u64 {
        s.put(&i.to_be_bytes(), rec(i, (i * 100) as usize))
            .await
            .unwrap();
    }
    s.delete(&3u64.to_be_bytes()).await.unwrap();
    let s = f.restart(s).await;
    for i in 0..20u64 {
        let want = (i != 3).then(|| rec(i, (i * 100) as usize));
        assert_eq!(
            s.get(&i.to_be_bytes()).await.unwrap(),
            want,
            "values_survive_restart: key {i}"
        );
    }
    assert_eq!(
        s.keys().await.unwrap().len(),
        19,
        "values_survive_restart: keys"
    );
}

#[cfg(test)]
mod tests {
    //! The suites against every implementation in this crate.

    use super::*;
    use crate::testdir::TestDir;
    use crate::{FileLog, FileLogOptions, FileStore, MemLog, MemStore, MirroredStore};
    use futures::executor::block_on;

    struct Mem;
    #[async_trait]
    impl LogFactory for Mem {
        type Log = MemLog;
        async fn create(&mut self) -> MemLog {
            MemLog::new()
        }
        async fn restart(&mut self, log: MemLog) -> MemLog {
            log.crash();
            log
        }
    }

    #[async_trait]
    impl StoreFactory for Mem {
        type Store = MemStore;
        async fn create(&mut self) -> MemStore {
            MemStore::new()
        }
        async fn restart(&mut self, s: MemStore) -> MemStore {
            s.crash();
            s
        }
    }

    /// Fresh directories for each check, kept until the factory drops.
    #[derive(Default)]
    struct Files {
        dirs: Vec<TestDir>,
    }

    impl Files {
        fn fresh(&mut self) -> std::path::PathBuf {
            self.dirs.push(TestDir::new("conformance"));
            self.dirs
                .last()
                .map(|d| d.path().to_path_buf())
                .unwrap_or_default()
        }
    }

    fn small() -> FileLogOptions {
        FileLogOptions {
            segment_size: 256 << 10,
            ..FileLogOptions::default()
        }
    }

    #[async_trait]
    impl LogFactory for Files {
        type Log = FileLog;
        async fn create(&mut self) -> FileLog {
            FileLog::open(self.fresh(), small()).unwrap()
        }
        async fn restart(&mut self, log: FileLog) -> FileLog {
            let dir = log.dir().to_path_buf();
            drop(log);
            FileLog::open(dir, small()).unwrap()
        }
    }

    #[async_trait]
    impl StoreFactory for Files {
        type Store = FileStore;
        async fn create(&mut self) -> FileStore {
            FileStore::open(self.fresh()).unwrap()
        }
        async fn restart(&mut self, s: FileStore) -> FileStore {
            let dir = s.dir().to_path_buf();
            drop(s);
            FileStore::open(dir).unwrap()
        }
    }

    #[derive(Default)]
    struct Mirrored(Files);

    #[async_trait]
    impl StoreFactory for Mirrored {
        type Store = MirroredStore;
        async fn create(&mut self) -> MirroredStore {
            let (main, mirror) = (self.0.fresh(), self.0.fresh());
            MirroredStore::open(main, mirror).unwrap()
        }
        async fn restart(&mut self, s: MirroredStore) -> MirroredStore {
            let (main, mirror) = (s.main_dir().to_path_buf(), s.mirror_dir().to_path_buf());
            drop(s);
            MirroredStore::open(main, mirror).unwrap()
        }
    }

    #[test]
    fn mem_log_conforms() {
        block_on(log_conformance(Mem));
    }

    #[test]
    fn file_log_conforms() {
        block_on(log_conformance(Files::default()));
    }

    #[test]
    fn mem_store_conforms() {
        block_on(store_conformance(Mem));
    }

    #[test]
    fn file_store_conforms() {
        block_on(store_conformance(Files::default()));
    }

    #[test]
    fn mirrored_store_conforms() {
        block_on(store_conformance(Mirrored::default()));
    }

    /// Boxed and shared handles forward to the log they hold.
    #[test]
    fn boxed_and_shared_logs_conform() {
        #[derive(Default)]
        struct Boxed(Option<MemLog>);
        #[async_trait]
        impl LogFactory for Boxed {
            type Log = Box<dyn StableLog>;
            async fn create(&mut self) -> Box<dyn StableLog> {
                let log = MemLog::new();
                self.0 = Some(log.clone());
                Box::new(std::sync::Arc::new(log))
            }
            async fn restart(&mut self, log: Box<dyn StableLog>) -> Box<dyn StableLog> {
                if let Some(inner) = &self.0 {
                    inner.crash();
                }
                log
            }
        }
        block_on(log_conformance(Boxed::default()));
    }

    /// The suite is not a rubber stamp: a log that forgets on restart fails.
    #[test]
    #[should_panic(expected = "acknowledged_records_survive_restart")]
    fn a_forgetful_log_fails_the_suite() {
        struct Forgetful;
        #[async_trait]
        impl LogFactory for Forgetful {
            type Log = MemLog;
            async fn create(&mut self) -> MemLog {
                MemLog::new()
            }
            async fn restart(&mut self, log: MemLog) -> MemLog {
                let fresh = MemLog::new();
                for r in log.durable().into_iter().skip(1) {
                    fresh.write(r);
                }
                fresh.sync();
                fresh
            }
        }
        block_on(log_conformance(Forgetful));
    }
}

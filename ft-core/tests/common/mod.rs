//! What the driver tests share: a clock with no timers and a log in memory.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{Clock, Lsn, StableLog, StorageError};

/// A clock whose timers never fire.
pub struct NoTimers;
#[async_trait]
impl Clock for NoTimers {
    fn now(&self) -> Instant {
        Instant::now()
    }
    async fn sleep_until(&self, _: Instant) {
        futures::future::pending::<()>().await
    }
}

/// A log in memory that keeps its start, as a real one does.
#[derive(Clone, Default)]
pub struct Log(pub Arc<Mutex<(u64, Vec<Bytes>)>>);

#[async_trait]
impl StableLog for Log {
    async fn append(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
        let mut l = self.0.lock().unwrap();
        let first = l.0 + l.1.len() as u64;
        l.1.extend_from_slice(records);
        Ok(Lsn(first))
    }
    async fn read_from(&self, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, StorageError> {
        let l = self.0.lock().unwrap();
        Ok(l.1
            .iter()
            .enumerate()
            .map(|(i, r)| (Lsn(l.0 + i as u64), r.clone()))
            .filter(|(lsn, _)| *lsn >= from)
            .collect())
    }
    async fn truncate_prefix(&self, upto: Lsn) -> Result<Lsn, StorageError> {
        let mut l = self.0.lock().unwrap();
        let drop = (upto.0.saturating_sub(l.0) as usize).min(l.1.len());
        l.1.drain(..drop);
        l.0 += drop as u64;
        Ok(Lsn(l.0))
    }
    async fn next_lsn(&self) -> Result<Lsn, StorageError> {
        let l = self.0.lock().unwrap();
        Ok(Lsn(l.0 + l.1.len() as u64))
    }
}

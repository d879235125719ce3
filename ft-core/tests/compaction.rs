//! The driver carries out a core's compaction: the log's prefix before the
//! named record is dropped, and the core's counters are readable through
//! the handle while it runs.
#![cfg(not(ft_loom))]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::driver::driver;
use ft_core::{
    Clock, Counters, DecodeError, DriverConfig, Lsn, MemNetwork, NodeId, Outbox, Output,
    PersistToken, Protocol, Record, StableLog, StorageError, Wire, wire,
};

struct NoTimers;
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
struct Log(Arc<Mutex<(u64, Vec<Bytes>)>>);

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

#[derive(Debug, PartialEq)]
struct Entry(u64);
impl Wire for Entry {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.0);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        wire::need(buf, 8)?;
        Ok(Entry(buf.get_u64_le()))
    }
}
impl Record for Entry {
    const VERSION: u8 = 1;
}

/// Persists every input n > 0 and reports it once durable; input 0 compacts
/// before the last durable record.
struct Journal {
    out: Outbox<Journal>,
    written: Vec<(PersistToken, u64)>,
    last_durable: Option<PersistToken>,
}

impl Protocol for Journal {
    type Message = u64;
    type Input = u64;
    type Event = u64;
    type Timer = ();
    fn handle_message(&mut self, _: Instant, _: NodeId, _: u64) {}
    fn handle_input(&mut self, _: Instant, n: u64) {
        if n == 0 {
            if let Some(t) = self.last_durable {
                self.out.compact(t);
            }
        } else {
            let t = self.out.persist(&Entry(n));
            self.written.push((t, n));
        }
    }
    fn handle_timer(&mut self, _: Instant, _: ()) {}
    fn handle_persisted(&mut self, _: Instant, token: PersistToken) {
        self.last_durable = Some(token);
        if let Some(&(_, n)) = self.written.iter().find(|(t, _)| *t == token) {
            self.out.event(n);
        }
    }
    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }
    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

#[tokio::test]
async fn a_compaction_drops_the_logs_prefix_and_counters_are_readable() {
    let net = MemNetwork::new(8);
    let log = Log::default();
    let core = Journal {
        out: Outbox::new(),
        written: Vec::new(),
        last_durable: None,
    };
    let (mut handle, run) = driver(
        core,
        net.join(NodeId(1)),
        NoTimers,
        log.clone(),
        DriverConfig::default(),
    );
    let app = async {
        for n in 1..=3 {
            handle.input(n).unwrap();
            assert_eq!(handle.next_event().await, Some(n));
        }
        assert_eq!(handle.counters().persists, 3);
        handle.input(0).unwrap();
        // The truncation runs when the log is idle: wait for it.
        for _ in 0..10_000 {
            if handle.stats().compactions > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(handle.stats().compactions, 1, "the log was never truncated");
        assert_eq!(handle.counters().compactions, 1);
        handle.shutdown();
    };
    let (result, ()) = futures::join!(run, app);
    result.unwrap();
    let kept = log.read_from(Lsn(0)).await.unwrap();
    assert_eq!(kept.len(), 1, "only the last record is still needed");
    assert_eq!(kept[0].0, Lsn(2));
    assert_eq!(
        ft_core::record::decode::<Entry>(kept[0].1.clone()).unwrap(),
        Entry(3)
    );
}

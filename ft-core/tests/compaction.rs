//! The driver carries out a core's compaction: the log's prefix before the
//! named record is dropped, and the core's counters are readable through
//! the handle while it runs.
#![cfg(not(ft_loom))]

mod common;

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::driver::driver;
use ft_core::{
    Counters, DecodeError, DriverConfig, Lsn, MemNetwork, NodeId, Outbox, Output, PersistToken,
    Protocol, Record, StableLog, Wire, wire,
};

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
    let log = common::Log::default();
    let core = Journal {
        out: Outbox::new(),
        written: Vec::new(),
        last_durable: None,
    };
    let (mut handle, run) = driver(
        core,
        net.join(NodeId(1)),
        common::NoTimers,
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

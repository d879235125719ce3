//! With the `metrics` feature, a driver named in its config exports the
//! core's counters to the installed recorder.
#![cfg(not(ft_loom))]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ft_core::driver::driver;
use ft_core::{Counters, DriverConfig, MemNetwork, NodeId, Outbox, Output, PersistToken, Protocol};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// Remembers the last absolute value of every counter, by name and labels.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<BTreeMap<String, Arc<AtomicU64>>>>);

struct Cell(Arc<AtomicU64>);
impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl Recorder for Seen {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let cell = self.0.lock().unwrap().entry(name).or_default().clone();
        Counter::from_arc(Arc::new(Cell(cell)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Sends one message to n2 per input, and reports the input.
struct Sender(Outbox<Sender>);
impl Protocol for Sender {
    type Message = u64;
    type Input = u64;
    type Event = u64;
    type Timer = ();
    fn handle_message(&mut self, _: Instant, _: NodeId, _: u64) {}
    fn handle_input(&mut self, _: Instant, n: u64) {
        self.0.send(NodeId(2), n);
        self.0.event(n);
    }
    fn handle_timer(&mut self, _: Instant, _: ()) {}
    fn handle_persisted(&mut self, _: Instant, _: PersistToken) {}
    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.0.pop()
    }
    fn counters(&self) -> Counters {
        self.0.counters()
    }
}

#[test]
fn a_named_driver_exports_its_cores_counters() {
    let seen = Seen::default();
    metrics::with_local_recorder(&seen, || {
        let net = MemNetwork::new(8);
        let _peer = net.join(NodeId(2));
        let config = DriverConfig::default().with_metrics("sender");
        let (mut handle, run) = driver(
            Sender(Outbox::new()),
            net.join(NodeId(1)),
            common::NoTimers,
            common::Log::default(),
            config,
        );
        futures::executor::block_on(async {
            let app = async {
                for n in 0..3 {
                    handle.input(n).unwrap();
                    assert_eq!(handle.next_event().await, Some(n));
                }
                handle.shutdown();
            };
            let (result, ()) = futures::join!(run, app);
            result.unwrap();
        });
    });
    let seen = seen.0.lock().unwrap();
    let get = |name: &str| seen.get(name).map(|c| c.load(Ordering::Relaxed));
    assert_eq!(get("ft_messages_sent{core=sender}"), Some(3));
    assert_eq!(get("ft_driver_datagrams_out{core=sender}"), Some(3));
    assert_eq!(get("ft_driver_events{core=sender}"), Some(3));
}

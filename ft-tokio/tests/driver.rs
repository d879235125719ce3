//! Drivers spawned on tokio over real channels: a tiny probe protocol's
//! messages, timers and persists.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ft_core::wire::{DecodeError, Wire};
use ft_core::{
    Channel, Clock, Counters, DriverConfig, DriverError, NodeId, Outbox, Output, PersistToken,
    Protocol, Record,
};
use ft_tokio::{NoLog, TokioClock, spawn, spawn_volatile};

use common::{guarded, tcp_mesh, udp_mesh};

#[derive(Debug)]
enum Cmd {
    /// Send `2n` to the peer, which answers `2n + 1`.
    Ping(u64),
    /// Fire a timer after this long.
    After(Duration),
    /// Ask to persist a record.
    Persist,
}

#[derive(Debug, PartialEq)]
enum Ev {
    Pong { from: NodeId, n: u64 },
    Fired,
    Persisted,
}

/// The one record a probe persists.
struct Note;

impl Wire for Note {
    fn encode(&self, _: &mut BytesMut) {}
    fn decode(_: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Note)
    }
}

impl Record for Note {
    const VERSION: u8 = 1;
}

/// Answers even numbers, reports odd ones, and does timers and persists on
/// request.
struct Probe {
    peer: NodeId,
    out: Outbox<Probe>,
}

impl Probe {
    fn new(peer: NodeId) -> Self {
        Probe {
            peer,
            out: Outbox::new(),
        }
    }
}

impl Protocol for Probe {
    type Message = u64;
    type Input = Cmd;
    type Event = Ev;
    type Timer = ();

    fn handle_message(&mut self, _: Instant, from: NodeId, n: u64) {
        self.out.received();
        if n.is_multiple_of(2) {
            self.out.send(from, n + 1);
        } else {
            self.out.event(Ev::Pong { from, n });
        }
    }
    fn handle_input(&mut self, now: Instant, cmd: Cmd) {
        match cmd {
            Cmd::Ping(n) => self.out.send(self.peer, 2 * n),
            Cmd::After(d) => self.out.set_timer_after((), now, d),
            Cmd::Persist => {
                self.out.persist(&Note);
            }
        }
    }
    fn handle_timer(&mut self, _: Instant, (): ()) {
        self.out.timer_fired();
        self.out.event(Ev::Fired);
    }
    fn handle_persisted(&mut self, _: Instant, _: PersistToken) {
        self.out.event(Ev::Persisted);
    }
    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }
    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

/// Two probes over `a` and `b`: a ping from the first comes back as a pong.
async fn ping_pong<C: Channel + 'static>(a: C, b: C) {
    let (pa, pb) = (a.local(), b.local());
    let (mut ha, ta) = spawn_volatile(Probe::new(pb), a, DriverConfig::default());
    let (hb, tb) = spawn_volatile(Probe::new(pa), b, DriverConfig::default());
    for n in 1..=3 {
        ha.input(Cmd::Ping(n)).unwrap();
        let got = guarded("the pong", ha.next_event()).await;
        assert_eq!(
            got,
            Some(Ev::Pong {
                from: pb,
                n: 2 * n + 1
            })
        );
    }
    assert_eq!(ha.stats().datagrams_out, 3);
    assert_eq!(hb.stats().datagrams_in, 3);
    ha.shutdown();
    hb.shutdown();
    guarded("the first driver to stop", ta)
        .await
        .unwrap()
        .unwrap();
    guarded("the second driver to stop", tb)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn drivers_exchange_messages_over_udp() {
    let mut nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    ping_pong(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_exchange_messages_over_tcp() {
    let mut nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    ping_pong(a, b).await;
}

#[tokio::test]
async fn boxed_channels_work_too() {
    let mut nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let b: Box<dyn Channel> = Box::new(nodes.pop().unwrap());
    let a: Box<dyn Channel> = Box::new(nodes.pop().unwrap());
    ping_pong(a, b).await;
}

#[tokio::test]
async fn timers_run_on_the_tokio_clock() {
    let nodes = udp_mesh(&[NodeId(1)]).await;
    let channel = nodes.into_iter().next().unwrap();
    let (mut h, task) = spawn_volatile(Probe::new(NodeId(1)), channel, DriverConfig::default());
    h.input(Cmd::After(Duration::from_millis(5))).unwrap();
    assert_eq!(guarded("the timer", h.next_event()).await, Some(Ev::Fired));
    assert_eq!(h.stats().timers_fired, 1);
    h.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_tokio_clock_follows_paused_time() {
    let start = TokioClock.now();
    let deadline = start + Duration::from_secs(3600);
    // An hour passes at once: the runtime's clock is paused and skips ahead.
    TokioClock.sleep_until(deadline).await;
    assert!(TokioClock.now() >= deadline);
}

#[tokio::test]
async fn a_protocol_that_persists_stops_on_no_log() {
    let nodes = udp_mesh(&[NodeId(1)]).await;
    let channel = nodes.into_iter().next().unwrap();
    let (mut h, task) = spawn(
        Probe::new(NodeId(1)),
        channel,
        TokioClock,
        NoLog,
        DriverConfig::default(),
    );
    h.input(Cmd::Persist).unwrap();
    let result = guarded("the driver to stop", task).await.unwrap();
    assert!(matches!(result, Err(DriverError::Storage(_))), "{result:?}");
    // It never claimed the record durable.
    assert_eq!(h.next_event().await, None);
}

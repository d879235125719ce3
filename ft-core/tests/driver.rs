//! The driver against a small probe protocol, over `MemNetwork`, on tokio's
//! paused clock so that every timing is exact and every run the same.
// Under `--cfg ft_loom` the crate runs on loom primitives, usable only
// inside `loom::model`: only tests/loom_mem.rs runs then.
#![cfg(not(ft_loom))]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use ft_core::driver::driver;
use ft_core::{
    Channel, ChannelError, Clock, Counters, DecodeError, DriverConfig, DriverError, FrameCodec,
    Handle, Lsn, MemChannel, MemNetwork, NodeId, Output, PersistToken, Protocol, StableLog,
    StorageError, Wire, wire,
};
use futures::FutureExt;

/// Tokio's clock as the driver's, so paused time drives the timers.
struct TokioClock;

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
    async fn sleep_until(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// A log in memory whose appends take `delay` and may be made to fail.
#[derive(Clone, Default)]
struct MemLog {
    records: Arc<Mutex<Vec<Bytes>>>,
    delay: Duration,
    fail: bool,
}

impl MemLog {
    fn slow(delay: Duration) -> Self {
        MemLog {
            delay,
            ..MemLog::default()
        }
    }
    fn failing() -> Self {
        MemLog {
            fail: true,
            ..MemLog::default()
        }
    }
    fn records(&self) -> Vec<Bytes> {
        self.records.lock().unwrap().clone()
    }
}

#[async_trait]
impl StableLog for MemLog {
    async fn append(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail {
            return Err(StorageError::Io(std::io::Error::other("disk on fire")));
        }
        let mut log = self.records.lock().unwrap();
        let first = log.len() as u64;
        log.extend_from_slice(records);
        Ok(Lsn(first))
    }
    async fn read_from(&self, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, StorageError> {
        let log = self.records.lock().unwrap();
        Ok((from.0..log.len() as u64)
            .map(|i| (Lsn(i), log[i as usize].clone()))
            .collect())
    }
    async fn truncate_prefix(&self, _upto: Lsn) -> Result<Lsn, StorageError> {
        Ok(Lsn(0))
    }
    async fn next_lsn(&self) -> Result<Lsn, StorageError> {
        Ok(Lsn(self.records.lock().unwrap().len() as u64))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Msg {
    Ping(u64),
    Pong(u64),
    /// Sent right after asking for a persist: does not depend on it.
    Intent(u64),
    /// Sent only once the record of `n` is durable.
    Commit(u64),
}

impl Wire for Msg {
    fn encode(&self, buf: &mut BytesMut) {
        let (tag, n) = match *self {
            Msg::Ping(n) => (0, n),
            Msg::Pong(n) => (1, n),
            Msg::Intent(n) => (2, n),
            Msg::Commit(n) => (3, n),
        };
        buf.put_u8(tag);
        buf.put_u64_le(n);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        let n = wire::get_u64(buf)?;
        match tag {
            0 => Ok(Msg::Ping(n)),
            1 => Ok(Msg::Pong(n)),
            2 => Ok(Msg::Intent(n)),
            3 => Ok(Msg::Commit(n)),
            tag => Err(DecodeError::UnknownTag { what: "Msg", tag }),
        }
    }
}

#[derive(Debug)]
enum In {
    Ping {
        to: NodeId,
        n: u64,
    },
    SetTimer {
        id: u32,
        after: Duration,
    },
    CancelTimer(u32),
    /// Persist `n`, say `Intent(n)` at once and `Commit(n)` once durable.
    Commit {
        to: NodeId,
        n: u64,
    },
    /// Emit `n` events at once.
    Burst(u64),
    /// Send `Ping(0..n)` to `to`, all in one step.
    PingMany {
        to: NodeId,
        n: u64,
    },
    /// Carry out these sends and multicasts of `Intent(n)`, in one step.
    Script(Vec<Step>),
}

/// One output of [`In::Script`].
#[derive(Debug, Clone)]
enum Step {
    /// `Output::Send` of `Intent(n)`.
    Send(NodeId, u64),
    /// `Output::Multicast` of `Intent(n)`.
    Multicast(Vec<NodeId>, u64),
}

#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Got {
        from: NodeId,
        msg: Msg,
    },
    /// A timer fired; `on_time` says `now` was at or after its deadline.
    Fired {
        id: u32,
        on_time: bool,
    },
    Durable(u64),
    Burst(u64),
}

/// A protocol that does what its inputs say, to exercise each kind of output.
#[derive(Default)]
struct Probe {
    out: VecDeque<Output<Probe>>,
    deadlines: BTreeMap<u32, Instant>,
    /// Commits waiting for their record: token → (to, n).
    waiting: BTreeMap<u64, (NodeId, u64)>,
    next_token: u64,
}

impl Protocol for Probe {
    type Message = Msg;
    type Input = In;
    type Event = Ev;
    type Timer = u32;

    fn handle_message(&mut self, _now: Instant, from: NodeId, msg: Msg) {
        if let Msg::Ping(n) = msg {
            self.out.push_back(Output::Send {
                to: from,
                msg: Msg::Pong(n),
            });
        }
        self.out.push_back(Output::Event(Ev::Got { from, msg }));
    }

    fn handle_input(&mut self, now: Instant, input: In) {
        match input {
            In::Ping { to, n } => self.out.push_back(Output::Send {
                to,
                msg: Msg::Ping(n),
            }),
            In::SetTimer { id, after } => {
                self.deadlines.insert(id, now + after);
                self.out.push_back(Output::SetTimer {
                    timer: id,
                    at: now + after,
                });
            }
            In::CancelTimer(id) => self.out.push_back(Output::CancelTimer { timer: id }),
            In::Commit { to, n } => {
                let token = self.next_token;
                self.next_token += 1;
                self.waiting.insert(token, (to, n));
                self.out.push_back(Output::Persist {
                    record: Bytes::from(n.to_le_bytes().to_vec()),
                    token: PersistToken(token),
                });
                self.out.push_back(Output::Send {
                    to,
                    msg: Msg::Intent(n),
                });
            }
            In::Burst(n) => {
                for i in 0..n {
                    self.out.push_back(Output::Event(Ev::Burst(i)));
                }
            }
            In::PingMany { to, n } => {
                for i in 0..n {
                    self.out.push_back(Output::Send {
                        to,
                        msg: Msg::Ping(i),
                    });
                }
            }
            In::Script(steps) => {
                for step in steps {
                    self.out.push_back(match step {
                        Step::Send(to, n) => Output::Send {
                            to,
                            msg: Msg::Intent(n),
                        },
                        Step::Multicast(to, n) => Output::Multicast {
                            to,
                            msg: Msg::Intent(n),
                        },
                    });
                }
            }
        }
    }

    fn handle_timer(&mut self, now: Instant, id: u32) {
        let on_time = self.deadlines.get(&id).is_some_and(|&at| now >= at);
        self.out.push_back(Output::Event(Ev::Fired { id, on_time }));
    }

    fn handle_persisted(&mut self, _now: Instant, token: PersistToken) {
        let (to, n) = self.waiting.remove(&token.0).expect("unknown token");
        self.out.push_back(Output::Send {
            to,
            msg: Msg::Commit(n),
        });
        self.out.push_back(Output::Event(Ev::Durable(n)));
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop_front()
    }

    fn counters(&self) -> Counters {
        Counters::default()
    }
}

type Running = tokio::task::JoinHandle<Result<(), DriverError>>;

/// Spawns a probe driver on `channel` (any channel, boxed or not).
fn spawn<C: Channel + 'static>(
    channel: C,
    log: MemLog,
    config: DriverConfig,
) -> (Handle<Probe>, Running) {
    let (handle, run) = driver(Probe::default(), channel, TokioClock, log, config);
    (handle, tokio::spawn(run))
}

/// Waits for a spawned driver to stop.
async fn stopped(run: Running) -> Result<(), DriverError> {
    run.await.expect("the driver task panicked")
}

/// Runs a test body under a deadline. With paused time, a test that would
/// wait forever (an event that never comes, a driver that never stops) lets
/// the clock jump straight to the deadline, so a bug fails the test at once
/// instead of hanging it.
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(24 * 3600), body)
        .await
        .expect("the test waited for something that never happened");
}

/// Receives one datagram on a raw channel and decodes it as a probe frame.
async fn recv_msg(ch: &MemChannel) -> (NodeId, Msg) {
    let (from, frame) = ch.recv().await.expect("recv");
    (
        from,
        FrameCodec::default().decode(frame).expect("a valid frame"),
    )
}

async fn send_msg(ch: &MemChannel, to: NodeId, msg: &Msg) {
    let frame = FrameCodec::default().encode_to_bytes(msg).unwrap();
    ch.send(to, frame).await.expect("send");
}

#[tokio::test(start_paused = true)]
async fn two_drivers_exchange_messages_and_events_reach_the_handles() {
    bounded(async {
        let net = MemNetwork::new(16);
        let (mut a, run_a) = spawn(
            net.join(NodeId(1)),
            MemLog::default(),
            DriverConfig::default(),
        );
        // The other end is a trait object, as a service with a runtime-chosen
        // transport would pass it.
        let boxed: Box<dyn Channel> = Box::new(net.join(NodeId(2)));
        let (mut b, run_b) = spawn(boxed, MemLog::default(), DriverConfig::default());

        a.input(In::Ping {
            to: NodeId(2),
            n: 7,
        })
        .unwrap();
        assert_eq!(
            b.next_event().await,
            Some(Ev::Got {
                from: NodeId(1),
                msg: Msg::Ping(7)
            })
        );
        assert_eq!(
            a.next_event().await,
            Some(Ev::Got {
                from: NodeId(2),
                msg: Msg::Pong(7)
            })
        );

        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(
            (sa.inputs, sa.datagrams_out, sa.datagrams_in, sa.events),
            (1, 1, 1, 1)
        );
        assert_eq!(
            (sb.inputs, sb.datagrams_out, sb.datagrams_in, sb.events),
            (0, 1, 1, 1)
        );
        assert_eq!(net.delivered(), 2);

        a.shutdown();
        b.shutdown();
        stopped(run_a).await.unwrap();
        stopped(run_b).await.unwrap();
        assert_eq!(
            a.next_event().await,
            None,
            "no events after the driver stopped"
        );
        assert!(matches!(a.input(In::Burst(1)), Err(DriverError::Closed)));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn timers_fire_on_time_and_cancelled_ones_never_fire() {
    bounded(async {
        let net = MemNetwork::new(16);
        let (mut h, run) = spawn(
            net.join(NodeId(1)),
            MemLog::default(),
            DriverConfig::default(),
        );
        let start = tokio::time::Instant::now();
        let ms = Duration::from_millis;

        h.input(In::SetTimer {
            id: 1,
            after: ms(100),
        })
        .unwrap();
        h.input(In::SetTimer {
            id: 2,
            after: ms(200),
        })
        .unwrap();
        h.input(In::SetTimer {
            id: 3,
            after: ms(300),
        })
        .unwrap();
        // 1 is cancelled while it is the earliest (the armed sleep is for it);
        // 3 is moved ahead of everything.
        h.input(In::CancelTimer(1)).unwrap();
        h.input(In::SetTimer {
            id: 3,
            after: ms(50),
        })
        .unwrap();

        assert_eq!(
            h.next_event().await,
            Some(Ev::Fired {
                id: 3,
                on_time: true
            })
        );
        assert_eq!(start.elapsed(), ms(50));
        assert_eq!(
            h.next_event().await,
            Some(Ev::Fired {
                id: 2,
                on_time: true
            })
        );
        assert_eq!(start.elapsed(), ms(200));

        // A timer cancelled after some time has passed, but before its deadline.
        h.input(In::SetTimer {
            id: 4,
            after: ms(100),
        })
        .unwrap();
        tokio::time::sleep(ms(60)).await;
        h.input(In::CancelTimer(4)).unwrap();

        // Nothing else ever fires: not 1, not 3's old deadline, not 4.
        let rest = tokio::time::timeout(Duration::from_secs(10), h.next_event()).await;
        assert!(rest.is_err(), "unexpected event {rest:?}");
        assert_eq!(h.stats().timers_fired, 2);

        h.shutdown();
        stopped(run).await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn persist_before_speak_holds_and_the_loop_runs_while_persisting() {
    bounded(async {
        let net = MemNetwork::new(16);
        let log = MemLog::slow(Duration::from_millis(50));
        let (mut h, run) = spawn(net.join(NodeId(1)), log.clone(), DriverConfig::default());
        let peer = net.join(NodeId(9));
        let start = tokio::time::Instant::now();

        h.input(In::Commit {
            to: NodeId(9),
            n: 1,
        })
        .unwrap();
        // The intent does not depend on the record, so it comes at once.
        assert_eq!(recv_msg(&peer).await, (NodeId(1), Msg::Intent(1)));
        assert!(log.records().is_empty());

        // While the append is in flight the driver still answers messages.
        send_msg(&peer, NodeId(1), &Msg::Ping(99)).await;
        assert_eq!(recv_msg(&peer).await, (NodeId(1), Msg::Pong(99)));
        assert!(start.elapsed() < Duration::from_millis(50));

        // The commit is seen only once the log holds the record.
        assert_eq!(recv_msg(&peer).await, (NodeId(1), Msg::Commit(1)));
        assert_eq!(
            log.records(),
            vec![Bytes::from(1u64.to_le_bytes().to_vec())]
        );
        assert!(start.elapsed() >= Duration::from_millis(50));

        // Several commits asked for back to back reach the log, and become
        // durable, in the order asked for.
        for n in 2..=5 {
            h.input(In::Commit { to: NodeId(9), n }).unwrap();
        }
        let mut durable = Vec::new();
        while durable.len() < 5 {
            match h.next_event().await.unwrap() {
                Ev::Durable(n) => durable.push(n),
                Ev::Got { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(durable, vec![1, 2, 3, 4, 5]);
        let logged: Vec<u64> = log
            .records()
            .iter()
            .map(|r| u64::from_le_bytes(r[..].try_into().unwrap()))
            .collect();
        assert_eq!(logged, vec![1, 2, 3, 4, 5]);
        assert_eq!(h.stats().persists, 5);
        // Every commit the peer saw was durable when it was sent.
        let mut commits = 0;
        while let Ok(Some((_, frame))) = peer.try_recv() {
            if let Msg::Commit(n) = FrameCodec::default().decode::<Msg>(frame).unwrap() {
                assert!(logged.contains(&n));
                commits += 1;
            }
        }
        assert_eq!(commits, 4);

        h.shutdown();
        stopped(run).await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn corrupt_datagrams_are_dropped_and_counted_never_delivered() {
    bounded(async {
        let net = MemNetwork::new(16);
        let (mut h, run) = spawn(
            net.join(NodeId(1)),
            MemLog::default(),
            DriverConfig::default(),
        );
        let attacker = net.join(NodeId(9));
        let codec = FrameCodec::default();

        let mut flipped = codec.encode_to_bytes(&Msg::Ping(1)).unwrap().to_vec();
        flipped[8] ^= 0x10;
        // A frame with a good CRC whose payload is not a `Msg`.
        let mut not_a_msg = BytesMut::new();
        codec.encode_payload(&[7, 1, 2, 3], &mut not_a_msg).unwrap();
        for bad in [
            Bytes::from_static(b"garbage"),
            flipped.into(),
            not_a_msg.freeze(),
        ] {
            attacker.send(NodeId(1), bad).await.unwrap();
        }
        send_msg(&attacker, NodeId(1), &Msg::Ping(5)).await;

        // The first (and only) message the core saw is the good one.
        assert_eq!(
            h.next_event().await,
            Some(Ev::Got {
                from: NodeId(9),
                msg: Msg::Ping(5)
            })
        );
        assert_eq!(recv_msg(&attacker).await, (NodeId(1), Msg::Pong(5)));
        let stats = h.stats();
        assert_eq!(stats.datagrams_in, 4);
        assert_eq!(stats.decode_failures, 3);
        assert_eq!(h.try_next_event(), None);

        h.shutdown();
        stopped(run).await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_log_stops_the_driver_before_it_speaks() {
    bounded(async {
        let net = MemNetwork::new(16);
        let (mut h, run) = spawn(
            net.join(NodeId(1)),
            MemLog::failing(),
            DriverConfig::default(),
        );
        let peer = net.join(NodeId(9));

        h.input(In::Commit {
            to: NodeId(9),
            n: 1,
        })
        .unwrap();
        let result = stopped(run).await;
        assert!(
            matches!(result, Err(DriverError::Storage(StorageError::Io(_)))),
            "{result:?}"
        );

        // The intent went out; the commit, which needed the record, never did.
        assert_eq!(recv_msg(&peer).await, (NodeId(1), Msg::Intent(1)));
        assert_eq!(peer.try_recv(), Ok(None));
        assert_eq!(h.next_event().await, None, "no Durable event");
        assert!(matches!(h.input(In::Burst(1)), Err(DriverError::Closed)));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_channel_ends_the_driver_and_unreachable_peers_do_not() {
    bounded(async {
        let net = MemNetwork::new(16);
        let (h, run) = spawn(
            net.join(NodeId(1)),
            MemLog::default(),
            DriverConfig::default(),
        );

        // Nobody is node 5: the send is refused, counted, and the driver goes on.
        h.input(In::Ping {
            to: NodeId(5),
            n: 1,
        })
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.stats().send_failures, 1);
        assert!(!run.is_finished());

        // Node 1 restarts elsewhere: the driver's channel is closed under it.
        let _new_life = net.join(NodeId(1));
        let result = stopped(run).await;
        assert!(
            matches!(result, Err(DriverError::Channel(ChannelError::Closed))),
            "{result:?}"
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_full_event_queue_holds_the_driver_back_without_losing_events() {
    bounded(async {
        let net = MemNetwork::new(16);
        let config = DriverConfig::default().with_event_capacity(2);
        let (mut h, run) = spawn(net.join(NodeId(1)), MemLog::default(), config);

        h.input(In::Burst(100)).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let emitted = h.stats().events;
        assert!(
            emitted < 10,
            "the driver ran ahead of the application: {emitted} events emitted"
        );

        for i in 0..100 {
            assert_eq!(h.next_event().await, Some(Ev::Burst(i)));
        }
        assert_eq!(h.stats().events, 100);

        // Shutdown comes after the inputs sent before it.
        h.input(In::Burst(2)).unwrap();
        h.shutdown();
        stopped(run).await.unwrap();
        let rest: Vec<_> = std::iter::from_fn(|| h.try_next_event()).collect();
        assert_eq!(rest, vec![Ev::Burst(0), Ev::Burst(1)]);
    })
    .await;
}

/// A channel that breaks the contract: a send to `stuck` never returns.
/// Everything else goes to the `MemChannel` underneath. Counts the
/// datagrams it was handed over the limit it reports.
struct Stuck {
    inner: MemChannel,
    stuck: NodeId,
    limit: usize,
    oversized: Arc<Mutex<usize>>,
    /// Every send yields to the executor once before it completes.
    slow: bool,
}

#[async_trait]
impl Channel for Stuck {
    fn local(&self) -> NodeId {
        self.inner.local()
    }
    fn max_datagram(&self) -> usize {
        self.limit
    }
    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        if datagram.len() > self.limit {
            *self.oversized.lock().unwrap() += 1;
            return Err(ChannelError::TooLarge {
                len: datagram.len(),
                max: self.limit,
            });
        }
        if to == self.stuck {
            futures::future::pending::<()>().await;
        }
        if self.slow {
            tokio::task::yield_now().await;
        }
        self.inner.send(to, datagram).await
    }
    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        self.inner.recv().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_send_that_never_returns_costs_datagrams_never_timers_inputs_or_persists() {
    bounded(async {
        let net = MemNetwork::new(16);
        let peer = net.join(NodeId(2));
        let channel = Stuck {
            inner: net.join(NodeId(1)),
            stuck: NodeId(9),
            limit: 1000,
            oversized: Arc::default(),
            slow: false,
        };
        // Room for 10 frames of `Msg` (9 bytes + the frame's 11) behind the
        // stuck batch.
        let frame = 9 + ft_core::frame::OVERHEAD;
        let config = DriverConfig::default().with_send_queue_bytes(10 * frame);
        let log = MemLog::default();
        let (mut h, run) = spawn(channel, log.clone(), config);

        h.input(In::Ping {
            to: NodeId(9),
            n: 0,
        })
        .unwrap();
        // Its batch reaches the channel, and sticks there.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.stats().batches, 1);
        // Behind it: a timer, a persist, and 30 pings to a healthy peer.
        h.input(In::SetTimer {
            id: 1,
            after: Duration::from_secs(1),
        })
        .unwrap();
        h.input(In::Commit {
            to: NodeId(2),
            n: 7,
        })
        .unwrap();
        for n in 1..=30 {
            h.input(In::Ping { to: NodeId(2), n }).unwrap();
        }
        assert_eq!(h.next_event().await, Some(Ev::Durable(7)));
        assert_eq!(
            h.next_event().await,
            Some(Ev::Fired {
                id: 1,
                on_time: true
            })
        );
        assert_eq!(log.records().len(), 1);
        let stats = h.stats();
        assert_eq!(stats.inputs, 33);
        assert_eq!(stats.batches, 1, "only the stuck batch reached the channel");
        assert_eq!(stats.datagrams_out, 0);
        // Intent(7), Commit(7) and 30 pings queued behind the stuck batch:
        // 10 fit, the other 22 were dropped and counted.
        assert_eq!(stats.datagrams_dropped, 22);
        assert!(peer.recv().now_or_never().is_none());

        // The driver still shuts down, abandoning the stuck send after the
        // grace period.
        h.shutdown();
        stopped(run).await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_driver_fits_its_frames_to_the_channel_it_is_given() {
    bounded(async {
        let net = MemNetwork::new(16);
        let oversized = Arc::new(Mutex::new(0));
        // Room for a frame of at most 12 bytes: a `Msg` frame is 20.
        let channel = Stuck {
            inner: net.join(NodeId(1)),
            stuck: NodeId(9),
            limit: 12,
            oversized: Arc::clone(&oversized),
            slow: false,
        };
        let (h, run) = spawn(channel, MemLog::default(), DriverConfig::default());
        h.input(In::Ping {
            to: NodeId(2),
            n: 1,
        })
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Refused by the driver's own (fitted) codec, never handed over.
        assert_eq!(h.stats().send_failures, 1);
        assert_eq!(h.stats().batches, 0);
        assert_eq!(*oversized.lock().unwrap(), 0);
        h.shutdown();
        stopped(run).await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_step_s_datagrams_reach_the_channel_in_one_batch_in_order() {
    bounded(async {
        let net = MemNetwork::new(64);
        let peer = net.join(NodeId(2));
        let (h, run) = spawn(
            net.join(NodeId(1)),
            MemLog::default(),
            DriverConfig::default(),
        );
        h.input(In::PingMany {
            to: NodeId(2),
            n: 40,
        })
        .unwrap();
        h.input(In::Ping {
            to: NodeId(2),
            n: 99,
        })
        .unwrap();
        h.shutdown();
        stopped(run).await.unwrap();
        let stats = h.stats();
        assert_eq!(stats.datagrams_out, 41, "{stats:?}");
        // Both inputs were queued before the driver ran: the first step's
        // 40 pings left at once, in one batch, the second step's next.
        assert_eq!(stats.batches, 2, "{stats:?}");
        assert_eq!(stats.datagrams_dropped, 0);
        let mut got = Vec::new();
        while let Some(Ok((_, frame))) = peer.recv().now_or_never() {
            got.push(FrameCodec::default().decode::<Msg>(frame).unwrap());
        }
        let mut want: Vec<Msg> = (0..40).map(Msg::Ping).collect();
        want.push(Msg::Ping(99));
        assert_eq!(got, want, "in the order the core asked");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_send_in_progress_finish() {
    bounded(async {
        let net = MemNetwork::new(64);
        let peer = net.join(NodeId(2));
        let channel = Stuck {
            inner: net.join(NodeId(1)),
            stuck: NodeId(9),
            limit: 1000,
            oversized: Arc::default(),
            slow: true,
        };
        let (h, run) = spawn(channel, MemLog::default(), DriverConfig::default());
        h.input(In::PingMany {
            to: NodeId(2),
            n: 5,
        })
        .unwrap();
        h.shutdown();
        stopped(run).await.unwrap();
        assert_eq!(h.stats().datagrams_out, 5);
        let mut got = 0;
        while let Some(Ok(_)) = peer.recv().now_or_never() {
            got += 1;
        }
        assert_eq!(
            got, 5,
            "the datagrams asked for before the shutdown went out"
        );
    })
    .await;
}

/// A channel closed for sending whose `recv` never says so.
struct ClosedForSending(NodeId);

#[async_trait]
impl Channel for ClosedForSending {
    fn local(&self) -> NodeId {
        self.0
    }
    fn max_datagram(&self) -> usize {
        1000
    }
    async fn send(&self, _: NodeId, _: Bytes) -> Result<(), ChannelError> {
        Err(ChannelError::Closed)
    }
    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        futures::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_refused_as_closed_ends_the_driver() {
    bounded(async {
        let (h, run) = spawn(
            ClosedForSending(NodeId(1)),
            MemLog::default(),
            DriverConfig::default(),
        );
        h.input(In::PingMany {
            to: NodeId(2),
            n: 3,
        })
        .unwrap();
        let result = stopped(run).await;
        assert!(
            matches!(result, Err(DriverError::Channel(ChannelError::Closed))),
            "{result:?}"
        );
        assert_eq!(h.stats().datagrams_out, 0);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_step_alone_is_sent_at_once_and_a_long_burst_is_cut_into_batches() {
    bounded(async {
        let net = MemNetwork::new(1024);
        let peer = net.join(NodeId(2));
        let (h, run) = spawn(
            net.join(NodeId(1)),
            MemLog::default(),
            DriverConfig::default(),
        );
        // One input, nothing else ready: its ping goes out without waiting
        // for anything (paused time does not move).
        h.input(In::Ping {
            to: NodeId(2),
            n: 1,
        })
        .unwrap();
        let before = tokio::time::Instant::now();
        assert_eq!(recv_msg(&peer).await, (NodeId(1), Msg::Ping(1)));
        assert_eq!(tokio::time::Instant::now(), before);
        assert_eq!(h.stats().batches, 1);

        // 200 inputs ready at once: taken 127 (STEPS_PER_BATCH) then 73
        // at a time, each burst sent in batches of 1, 2, 4, … steps: after
        // steps 1, 3, 7, 15, 31, 63 and 127, then 1, 3, 7, 15, 31, 63, 73.
        assert_eq!(ft_core::driver::STEPS_PER_BATCH, 127);
        for n in 0..200 {
            h.input(In::Ping { to: NodeId(2), n }).unwrap();
        }
        for n in 0..200 {
            assert_eq!(recv_msg(&peer).await, (NodeId(1), Msg::Ping(n)));
        }
        let batches = h.stats().batches - 1;
        assert_eq!(batches, 14, "{:?}", h.stats());
        h.shutdown();
        stopped(run).await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_driver_held_back_by_a_full_event_queue_has_sent_what_came_before() {
    bounded(async {
        let net = MemNetwork::new(64);
        let peer = net.join(NodeId(2));
        let config = DriverConfig::default().with_event_capacity(1);
        // The application never reads its events.
        let (h, run) = spawn(net.join(NodeId(1)), MemLog::default(), config);
        for n in 0..8 {
            send_msg(&peer, NodeId(1), &Msg::Ping(n)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let handled = h.stats().datagrams_in;
        assert!(
            handled < 8,
            "the driver was never held back: {:?}",
            h.stats()
        );
        // Every ping handled was answered, the one whose event waits too.
        let mut pongs = 0;
        while let Ok(Some(_)) = peer.try_recv() {
            pongs += 1;
        }
        assert_eq!(pongs, handled, "{:?}", h.stats());
        run.abort();
    })
    .await;
}

/// What a [`Recording`] channel was asked to do, frames decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    One(NodeId, Msg),
    Batch(Vec<(NodeId, Msg)>),
    Many(Vec<NodeId>, Msg),
}

/// A `MemChannel` that records every send call it gets, then passes it on
/// (`send_to_many` to the `MemChannel`'s own, the trait's default, which
/// fans out over `send`). Once `closed`, it refuses every send as closed
/// instead (and its `recv` never says so).
struct Recording {
    inner: MemChannel,
    calls: Arc<Mutex<Vec<Sent>>>,
    closed: bool,
}

impl Recording {
    fn new(inner: MemChannel) -> (Self, Arc<Mutex<Vec<Sent>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let me = Recording {
            inner,
            calls: Arc::clone(&calls),
            closed: false,
        };
        (me, calls)
    }

    /// Refuses `len` datagrams as closed, if the channel is.
    fn refuse(&self, len: usize) -> Option<Result<(), ft_core::BatchError>> {
        self.closed.then(|| {
            ft_core::BatchError::result((0..len).map(|i| (i, ChannelError::Closed)).collect())
        })
    }

    fn decode(frame: &Bytes) -> Msg {
        FrameCodec::default().decode(frame.clone()).unwrap()
    }
}

#[async_trait]
impl Channel for Recording {
    fn local(&self) -> NodeId {
        self.inner.local()
    }
    fn max_datagram(&self) -> usize {
        self.inner.max_datagram()
    }
    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        let msg = Self::decode(&datagram);
        self.calls.lock().unwrap().push(Sent::One(to, msg));
        if self.closed {
            return Err(ChannelError::Closed);
        }
        self.inner.send(to, datagram).await
    }
    async fn send_batch(&self, batch: &[(NodeId, Bytes)]) -> Result<(), ft_core::BatchError> {
        let decoded = batch.iter().map(|(to, d)| (*to, Self::decode(d))).collect();
        self.calls.lock().unwrap().push(Sent::Batch(decoded));
        if let Some(refused) = self.refuse(batch.len()) {
            return refused;
        }
        self.inner.send_batch(batch).await
    }
    async fn send_to_many(
        &self,
        to: &[NodeId],
        datagram: Bytes,
    ) -> Result<(), ft_core::BatchError> {
        let msg = Self::decode(&datagram);
        self.calls
            .lock()
            .unwrap()
            .push(Sent::Many(to.to_vec(), msg));
        if let Some(refused) = self.refuse(to.len()) {
            return refused;
        }
        self.inner.send_to_many(to, datagram).await
    }
    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        if self.closed {
            return futures::future::pending().await;
        }
        self.inner.recv().await
    }
}

/// Everything waiting for `ch`, decoded.
fn received(ch: &MemChannel) -> Vec<(NodeId, Msg)> {
    let mut got = Vec::new();
    while let Ok(Some((from, frame))) = ch.try_recv() {
        got.push((from, FrameCodec::default().decode(frame).unwrap()));
    }
    got
}

#[tokio::test(start_paused = true)]
async fn a_multicast_is_one_send_to_many_call_in_its_place_among_the_sends() {
    bounded(async {
        let net = MemNetwork::new(64);
        let (two, three) = (net.join(NodeId(2)), net.join(NodeId(3)));
        let (channel, calls) = Recording::new(net.join(NodeId(1)));
        let (mut h, run) = spawn(channel, MemLog::default(), DriverConfig::default());
        let (one, two_id, three_id) = (NodeId(1), NodeId(2), NodeId(3));
        h.input(In::Script(vec![
            Step::Send(two_id, 1),
            // Out of order, 3 twice, and the sender itself.
            Step::Multicast(vec![three_id, two_id, three_id, one], 2),
            Step::Send(two_id, 3),
            Step::Send(three_id, 4),
        ]))
        .unwrap();
        // The sender gets its own copy, once.
        assert_eq!(
            h.next_event().await,
            Some(Ev::Got {
                from: one,
                msg: Msg::Intent(2)
            })
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        h.shutdown();
        stopped(run).await.unwrap();
        assert_eq!(h.try_next_event(), None, "the sender got its copy once");

        // One call for the multicast, deduplicated and sorted, between the
        // sends asked for before it and those asked for after.
        assert_eq!(
            *calls.lock().unwrap(),
            vec![
                Sent::Batch(vec![(two_id, Msg::Intent(1))]),
                Sent::Many(vec![one, two_id, three_id], Msg::Intent(2)),
                Sent::Batch(vec![(two_id, Msg::Intent(3)), (three_id, Msg::Intent(4))]),
            ]
        );
        // Each destination got it once, in its place among its datagrams.
        assert_eq!(
            received(&two),
            vec![
                (one, Msg::Intent(1)),
                (one, Msg::Intent(2)),
                (one, Msg::Intent(3))
            ]
        );
        assert_eq!(
            received(&three),
            vec![(one, Msg::Intent(2)), (one, Msg::Intent(4))]
        );
        let stats = h.stats();
        assert_eq!(
            (stats.datagrams_out, stats.batches, stats.multicasts),
            (6, 2, 1),
            "{stats:?}"
        );
        assert_eq!(stats.datagrams_in, 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_multicast_over_mem_network_reaches_each_listed_node_once() {
    bounded(async {
        let net = MemNetwork::new(64);
        let peers: Vec<MemChannel> = (2..=4).map(|i| net.join(NodeId(i))).collect();
        let (mut h, run) = spawn(
            net.join(NodeId(1)),
            MemLog::default(),
            DriverConfig::default(),
        );
        let ids = |v: &[u64]| v.iter().copied().map(NodeId).collect::<Vec<_>>();
        // Node 4 is left out; node 9 is nobody (refused as unreachable, and
        // the others still get it); an empty list sends nothing.
        h.input(In::Script(vec![
            Step::Multicast(ids(&[2, 9, 3, 1, 2, 3]), 7),
            Step::Multicast(Vec::new(), 8),
        ]))
        .unwrap();
        assert_eq!(
            h.next_event().await,
            Some(Ev::Got {
                from: NodeId(1),
                msg: Msg::Intent(7)
            })
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        h.shutdown();
        stopped(run).await.unwrap();
        assert_eq!(h.try_next_event(), None);
        assert_eq!(received(&peers[0]), vec![(NodeId(1), Msg::Intent(7))]);
        assert_eq!(received(&peers[1]), vec![(NodeId(1), Msg::Intent(7))]);
        assert_eq!(received(&peers[2]), vec![], "node 4 was not listed");
        let stats = h.stats();
        assert_eq!(
            (
                stats.datagrams_out,
                stats.send_failures,
                stats.multicasts,
                stats.batches
            ),
            (3, 1, 1, 0),
            "{stats:?}"
        );
        assert_eq!(net.delivered(), 3);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_multicast_refused_as_closed_ends_the_driver_and_nothing_after_it_is_sent() {
    bounded(async {
        let net = MemNetwork::new(16);
        let _peer = net.join(NodeId(2));
        let (mut channel, calls) = Recording::new(net.join(NodeId(1)));
        channel.closed = true;
        let (h, run) = spawn(channel, MemLog::default(), DriverConfig::default());
        h.input(In::Script(vec![
            Step::Multicast(vec![NodeId(2), NodeId(3)], 1),
            Step::Send(NodeId(2), 2),
        ]))
        .unwrap();
        let result = stopped(run).await;
        assert!(
            matches!(result, Err(DriverError::Channel(ChannelError::Closed))),
            "{result:?}"
        );
        assert_eq!(
            *calls.lock().unwrap(),
            vec![Sent::Many(vec![NodeId(2), NodeId(3)], Msg::Intent(1))]
        );
        let stats = h.stats();
        assert_eq!((stats.datagrams_out, stats.send_failures), (0, 0));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_queued_multicast_takes_the_room_of_one_frame_and_counts_a_datagram_per_destination() {
    bounded(async {
        let net = MemNetwork::new(16);
        let channel = Stuck {
            inner: net.join(NodeId(1)),
            stuck: NodeId(9),
            limit: 1000,
            oversized: Arc::default(),
            slow: false,
        };
        // Room for 3 frames behind the stuck batch.
        let frame = 9 + ft_core::frame::OVERHEAD;
        let config = DriverConfig::default().with_send_queue_bytes(3 * frame);
        let (h, run) = spawn(channel, MemLog::default(), config);
        h.input(In::Ping {
            to: NodeId(9),
            n: 0,
        })
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.stats().batches, 1);
        let ids = |v: &[u64]| v.iter().copied().map(NodeId).collect::<Vec<_>>();
        h.input(In::Script(vec![
            Step::Send(NodeId(2), 1),
            // One frame for four peers: the queue holds 2 frames after it.
            Step::Multicast(ids(&[2, 3, 4, 5]), 2),
            Step::Send(NodeId(2), 3),
            // The queue is full: dropped, one datagram per destination.
            Step::Multicast(ids(&[2, 3, 3]), 4),
        ]))
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let stats = h.stats();
        assert_eq!(stats.datagrams_dropped, 2, "{stats:?}");
        assert_eq!(stats.inputs, 2);
        h.shutdown();
        stopped(run).await.unwrap();
    })
    .await;
}

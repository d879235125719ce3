//! The runtime-agnostic driver: one future that runs one [`Protocol`] against
//! the edge traits.
//!
//! [`driver`] takes a core and its environment (a [`Channel`], a [`Clock`], a
//! [`StableLog`]) and returns a [`Handle`] for the application and a future
//! that does all the work. The caller chooses the executor: `tokio::spawn`
//! it, `block_on` it, or poll it from a hand-written event loop; the driver
//! itself uses nothing but `futures` and the edge traits.
//!
//! # What the future does
//!
//! It owns the core and everything the core asked for, and waits on four
//! sources at once, serving them in turn so a flood on one cannot starve the
//! others:
//!
//! - **persists**: records from [`Output::Persist`] are appended to the log
//!   in the order they were asked for. One append is in flight at a time;
//!   records asked for meanwhile are batched into the next `append` call,
//!   which keeps them in order in the log. When an append returns (the
//!   records are durable), [`Protocol::handle_persisted`] is called for each
//!   token, in order. Messages keep flowing while an append is in flight;
//!   a core that must *persist before it speaks* simply waits for the token,
//!   and the driver never calls `handle_persisted` before the log returned;
//! - **timers**: named timers from [`Output::SetTimer`], kept by deadline
//!   with one [`Clock::sleep_until`] for the earliest. Setting a timer again
//!   replaces it; [`Output::CancelTimer`] removes it, and a removed timer
//!   never fires;
//! - **inputs** from the [`Handle`] (and its [`InputSender`] clones);
//! - **sends**: the datagrams of a step, and of the steps taken right
//!   after it while more work was ready, go to the channel together, in
//!   one [`Channel::send_batch`] (a multicast among them in its own
//!   [`Channel::send_to_many`]; see below);
//! - **datagrams**: one `recv` future stays alive across iterations (a
//!   [`Channel`]'s `recv` is cancel safe, but re-creating it for every
//!   wake-up would waste work). Each datagram is a frame checked by the
//!   [`FrameCodec`]; one that fails the CRC or does not decode as the core's
//!   message is dropped and counted in [`DriverStats::decode_failures`],
//!   never delivered.
//!
//! After every `handle_*` call (and once at start, for what the core queued
//! when it was built) the driver drains [`Protocol::poll_output`] until it
//! returns `None`, carrying out each output in the order returned, before it
//! feeds the core anything else: the poll order of [`Protocol`].
//!
//! # Sending
//!
//! Each [`Output::Send`] is framed by the codec (fitted to the channel's
//! [`max_datagram`](Channel::max_datagram) by [`driver`] itself, so a custom
//! channel needs no setup) and queued, then handed to the channel in one
//! [`Channel::send_batch`], in the order the core asked, so a transport can
//! write each peer's datagrams at once. The first step's datagrams go as
//! soon as the step is done; if more work is ready at once (datagrams a
//! transport read in one go, inputs queued meanwhile), the driver takes it
//! back to back, up to [`STEPS_PER_BATCH`] steps, and sends batches of
//! doubling size: the datagrams of 2 more steps, then 4, 8… So a burst of
//! n requests is answered in about log2(n) writes per peer, while the
//! first answers leave at once and the peer is never idle waiting for the
//! whole burst. An event that must wait for a full event queue sends the
//! datagrams queued before it first. The
//! batch is polled at once, so a channel whose sends complete immediately
//! (as the contract asks) costs no extra wake-up; one that is not done yet
//! is polled beside the other sources, and the datagrams of later steps
//! wait for it in a queue bounded by [`DriverConfig::send_queue_bytes`].
//! When that is full, a new datagram is dropped and counted in
//! [`DriverStats::datagrams_dropped`], as a full network queue would drop
//! it: a `send` that never returns (a broken transport) costs datagrams,
//! never the core's timers, inputs or persists.
//!
//! An [`Output::Multicast`] is framed **once** and queued in its place
//! among the one-to-one datagrams, with its destinations sorted and each
//! kept once (an empty list sends nothing). The queue is then handed over
//! in order, one call after the other: each run of one-to-one datagrams in
//! one [`Channel::send_batch`], each multicast in one
//! [`Channel::send_to_many`] (which a transport with IP multicast may send
//! as one datagram). So a destination gets its datagrams in the order the
//! core asked for them, multicasts included. In the send queue a multicast
//! takes the room of its one frame; in [`DriverStats::datagrams_out`],
//! [`datagrams_dropped`](DriverStats::datagrams_dropped) and
//! [`send_failures`](DriverStats::send_failures) it counts once for each
//! destination, as that many `Send`s would; [`DriverStats::multicasts`]
//! counts the `send_to_many` calls.
//!
//! # When it stops
//!
//! | cause | the future returns |
//! |---|---|
//! | [`Handle::shutdown`] | `Ok(())`, once the inputs sent before it were handled and their datagrams handed to the channel (waiting at most [`SHUTDOWN_GRACE`] of the clock's time for a send still in progress) |
//! | the log fails an append | `Err(DriverError::Storage)`: fatal, since *persist before you speak* can no longer be honoured |
//! | the channel is closed (`recv`, or a send of a batch or multicast, says [`ChannelError::Closed`]; the calls after it are not made) | `Err(DriverError::Channel(ChannelError::Closed))` |
//!
//! Anything else a channel reports is counted and logged, and the driver
//! goes on, because a datagram channel is allowed to lose datagrams anyway:
//! a `send` refused as [`ChannelError::Unreachable`] or
//! [`ChannelError::TooLarge`] (or a message too large for the codec) is
//! counted in [`DriverStats::send_failures`] (a multicast refused for some
//! destinations is counted for each of them, and still goes to the
//! others); a [`ChannelError::Transport`]
//! error from `recv` is counted in [`DriverStats::recv_failures`] and the
//! driver receives again (a transport whose `recv` fails forever should
//! close instead, or the driver will keep retrying it).
//!
//! Stopping is a crash as far as the core is concerned: persists still in
//! flight are abandoned, and the core is rebuilt from what the log holds
//! ([`Recover`](crate::Recover)).
//!
//! # Example
//!
//! ```
//! # use std::time::Instant;
//! # use async_trait::async_trait;
//! # use bytes::Bytes;
//! # use ft_core::{Clock, Counters, Lsn, NodeId, Output, PersistToken, Protocol, StableLog, StorageError};
//! use ft_core::driver::{driver, DriverConfig};
//! use ft_core::MemNetwork;
//!
//! /// Tells the application about every input, and nothing else.
//! struct Echo(Vec<u64>);
//! impl Protocol for Echo {
//!     type Message = u64;
//!     type Input = u64;
//!     type Event = u64;
//!     type Timer = ();
//!     fn handle_message(&mut self, _: Instant, _: NodeId, _: u64) {}
//!     fn handle_input(&mut self, _: Instant, n: u64) { self.0.push(n) }
//!     fn handle_timer(&mut self, _: Instant, _: ()) {}
//!     fn handle_persisted(&mut self, _: Instant, _: PersistToken) {}
//!     fn poll_output(&mut self) -> Option<Output<Self>> { self.0.pop().map(Output::Event) }
//!     fn counters(&self) -> Counters { Counters::default() }
//! }
//! # struct SystemClock;
//! # #[async_trait]
//! # impl Clock for SystemClock {
//! #     fn now(&self) -> Instant { Instant::now() }
//! #     async fn sleep_until(&self, _: Instant) { futures::future::pending::<()>().await }
//! # }
//! # struct NoLog;
//! # #[async_trait]
//! # impl StableLog for NoLog {
//! #     async fn append(&self, _: &[Bytes]) -> Result<Lsn, StorageError> { Ok(Lsn(0)) }
//! #     async fn read_from(&self, _: Lsn) -> Result<Vec<(Lsn, Bytes)>, StorageError> { Ok(vec![]) }
//! #     async fn truncate_prefix(&self, _: Lsn) -> Result<Lsn, StorageError> { Ok(Lsn(0)) }
//! #     async fn next_lsn(&self) -> Result<Lsn, StorageError> { Ok(Lsn(0)) }
//! # }
//!
//! let net = MemNetwork::new(64);
//! let (mut handle, run) = driver(
//!     Echo(Vec::new()),
//!     net.join(NodeId(1)),
//!     SystemClock,
//!     NoLog,
//!     DriverConfig::default(),
//! );
//! futures::executor::block_on(async {
//!     let app = async {
//!         handle.input(7).unwrap();
//!         assert_eq!(handle.next_event().await, Some(7));
//!         assert_eq!(handle.stats().inputs, 1);
//!         handle.shutdown();
//!     };
//!     let (result, ()) = futures::join!(run, app);
//!     result.unwrap();
//! });
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::future::{BoxFuture, poll_fn};
use futures::{FutureExt, SinkExt, StreamExt};
use tracing::{Instrument, debug, trace, warn};

use crate::channel::{BatchError, Channel, ChannelError};
use crate::clock::Clock;
use crate::frame::FrameCodec;
use crate::id::NodeId;
use crate::protocol::{Counters, Output, PersistToken, Protocol};
use crate::storage::{Lsn, StableLog, StorageError};
use crate::sync::{Arc, AtomicU64, Ordering};

/// How long a shutdown waits for a send still in progress, on the driver's
/// clock, before it abandons the datagrams (a crash would lose them too).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How a driver is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverConfig {
    /// Frames outgoing messages and checks incoming ones. [`driver`] lowers
    /// its payload limit, if need be, so that frames fit the channel's
    /// [`max_datagram`](Channel::max_datagram) ([`FrameCodec::fitted`]).
    pub codec: FrameCodec,
    /// How many events may wait for [`Handle::next_event`] before the driver
    /// waits for the application (see [`Handle`] on back-pressure).
    pub event_capacity: usize,
    /// With the `metrics` feature, the name the core's counters are
    /// exported under after every step (see `ft_core::metrics`); `None`
    /// (the default) exports nothing. Without the feature it is ignored.
    pub metrics: Option<&'static str>,
    /// How many bytes of datagrams may wait for the channel while a batch
    /// is still being sent; beyond it new datagrams are dropped and counted
    /// ([`DriverStats::datagrams_dropped`]). A multicast takes the room of
    /// its one frame, whatever the number of its destinations. One datagram
    /// (or multicast) is always let in, whatever its size. 4 MiB by
    /// default.
    pub send_queue_bytes: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            codec: FrameCodec::default(),
            event_capacity: 64,
            metrics: None,
            send_queue_bytes: 4 << 20,
        }
    }
}

impl DriverConfig {
    /// The same configuration with `codec`.
    #[must_use]
    pub fn with_codec(mut self, codec: FrameCodec) -> Self {
        self.codec = codec;
        self
    }

    /// The same configuration, exporting the core's counters under `name`
    /// (feature `metrics`).
    #[must_use]
    pub fn with_metrics(mut self, name: &'static str) -> Self {
        self.metrics = Some(name);
        self
    }

    /// The same configuration with room for `bytes` of datagrams waiting
    /// for the channel.
    #[must_use]
    pub fn with_send_queue_bytes(mut self, bytes: usize) -> Self {
        self.send_queue_bytes = bytes;
        self
    }

    /// The same configuration with room for `capacity` waiting events.
    #[must_use]
    pub fn with_event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }
}

/// Why a driver stopped, or why a [`Handle`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The channel failed in a way the driver cannot go on from: it was
    /// closed.
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    /// An append to the stable log failed. Fatal: the driver can no longer
    /// tell the core its records are durable, so it stops rather than let
    /// the core speak on records that may be lost.
    #[error("stable storage: {0}")]
    Storage(#[from] StorageError),
    /// The driver is no longer running (returned by [`Handle::input`] and
    /// [`InputSender::input`]).
    #[error("the driver has stopped")]
    Closed,
}

/// What a driver has done so far, read with [`Handle::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Inputs handed to the core.
    pub inputs: u64,
    /// Events the core emitted.
    pub events: u64,
    /// Datagrams received, good or bad.
    pub datagrams_in: u64,
    /// Datagrams the channel accepted for sending: a multicast counts one
    /// for each of its (distinct) destinations the channel accepted, even
    /// when the transport sends it as one IP multicast datagram.
    pub datagrams_out: u64,
    /// Datagrams dropped before reaching the channel: its sends were still
    /// busy with earlier ones and the send queue was full
    /// ([`DriverConfig::send_queue_bytes`]). A multicast dropped counts one
    /// for each of its distinct destinations.
    pub datagrams_dropped: u64,
    /// Batches handed to the channel ([`Channel::send_batch`] calls, one
    /// for each run of one-to-one datagrams between multicasts).
    pub batches: u64,
    /// Multicasts handed to the channel ([`Channel::send_to_many`] calls,
    /// one for each [`Output::Multicast`] with a destination).
    pub multicasts: u64,
    /// Received datagrams dropped because they failed the frame check or did
    /// not decode as a message.
    pub decode_failures: u64,
    /// Messages not sent: too large to frame, or refused by the channel (a
    /// multicast counts one for each destination not sent to).
    pub send_failures: u64,
    /// Transport errors from `recv`, after each of which the driver received
    /// again.
    pub recv_failures: u64,
    /// Records the log made durable (and reported to the core).
    pub persists: u64,
    /// Timers that fired.
    pub timers_fired: u64,
    /// Log prefixes dropped at the core's request ([`Output::Compact`]).
    pub compactions: u64,
}

/// The counters behind [`DriverStats`], shared by the driver future (which
/// writes) and every [`Handle`] (which reads).
#[derive(Default)]
struct StatCells {
    inputs: AtomicU64,
    events: AtomicU64,
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    datagrams_dropped: AtomicU64,
    batches: AtomicU64,
    multicasts: AtomicU64,
    decode_failures: AtomicU64,
    send_failures: AtomicU64,
    recv_failures: AtomicU64,
    persists: AtomicU64,
    timers_fired: AtomicU64,
    compactions: AtomicU64,
    /// The core's own [`Counters`], copied after every step.
    core: [AtomicU64; 7],
}

impl StatCells {
    /// Counts one. Relaxed: each counter is read on its own, and nothing else
    /// is synchronized through them.
    fn bump(cell: &AtomicU64) {
        cell.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DriverStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DriverStats {
            inputs: get(&self.inputs),
            events: get(&self.events),
            datagrams_in: get(&self.datagrams_in),
            datagrams_out: get(&self.datagrams_out),
            datagrams_dropped: get(&self.datagrams_dropped),
            batches: get(&self.batches),
            multicasts: get(&self.multicasts),
            decode_failures: get(&self.decode_failures),
            send_failures: get(&self.send_failures),
            recv_failures: get(&self.recv_failures),
            persists: get(&self.persists),
            timers_fired: get(&self.timers_fired),
            compactions: get(&self.compactions),
        }
    }

    /// Publishes the core's counters (relaxed: a reader sees each counter
    /// at some recent value, never a torn one).
    fn publish(&self, c: Counters) {
        let values = [
            c.messages_sent,
            c.messages_received,
            c.messages_dropped,
            c.retransmissions,
            c.timers_fired,
            c.persists,
            c.compactions,
        ];
        for (cell, v) in self.core.iter().zip(values) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    fn core_counters(&self) -> Counters {
        let get = |i: usize| self.core[i].load(Ordering::Relaxed);
        Counters {
            messages_sent: get(0),
            messages_received: get(1),
            messages_dropped: get(2),
            retransmissions: get(3),
            timers_fired: get(4),
            persists: get(5),
            compactions: get(6),
        }
    }
}

/// What the application sends the driver. Shutdown travels in the same
/// queue as inputs so that it is handled after every input sent before it.
enum Command<P: Protocol> {
    Input(P::Input),
    Shutdown,
}

/// A cloneable sender of inputs to one driver.
///
/// The queue is unbounded, so `input` never waits: an application that can
/// produce inputs faster than the core handles them should bound itself,
/// for example by waiting for the events its inputs lead to.
pub struct InputSender<P: Protocol> {
    tx: mpsc::UnboundedSender<Command<P>>,
}

impl<P: Protocol> Clone for InputSender<P> {
    fn clone(&self) -> Self {
        InputSender {
            tx: self.tx.clone(),
        }
    }
}

impl<P: Protocol> InputSender<P> {
    /// Queues `input` for the core.
    ///
    /// # Errors
    /// [`DriverError::Closed`] if the driver has stopped.
    pub fn input(&self, input: P::Input) -> Result<(), DriverError> {
        self.tx
            .unbounded_send(Command::Input(input))
            .map_err(|_| DriverError::Closed)
    }

    /// Whether the driver has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl<P: Protocol> fmt::Debug for InputSender<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputSender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The application's side of a driver: inputs in, events out, counters.
///
/// # Back-pressure
///
/// Events wait in a queue of [`DriverConfig::event_capacity`]. When it is
/// full the driver waits for the application to take one with
/// [`next_event`](Handle::next_event), and meanwhile handles nothing else:
/// no inputs, timers or datagrams (datagrams that arrive meanwhile queue in,
/// and may be dropped by, the channel, as on any overloaded host). So memory
/// stays bounded, and an application that stops reading events stops its
/// node. Dropping the `Handle` discards further events instead.
pub struct Handle<P: Protocol> {
    inputs: InputSender<P>,
    events: mpsc::Receiver<P::Event>,
    stats: Arc<StatCells>,
}

impl<P: Protocol> Handle<P> {
    /// Queues `input` for the core; see [`InputSender`].
    ///
    /// # Errors
    /// [`DriverError::Closed`] if the driver has stopped.
    pub fn input(&self, input: P::Input) -> Result<(), DriverError> {
        self.inputs.input(input)
    }

    /// A cloneable sender of inputs, for other tasks.
    pub fn input_sender(&self) -> InputSender<P> {
        self.inputs.clone()
    }

    /// The next event from the core, waiting for one; `None` once the driver
    /// has stopped and every event it emitted has been taken.
    pub async fn next_event(&mut self) -> Option<P::Event> {
        self.events.next().await
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_next_event(&mut self) -> Option<P::Event> {
        self.events.try_recv().ok()
    }

    /// Asks the driver to stop once it has handled the inputs sent before
    /// this call; its future then returns `Ok(())`. Does nothing if it has
    /// already stopped.
    pub fn shutdown(&self) {
        // An error only means the driver is gone already, which is the goal.
        let _ = self.inputs.tx.unbounded_send(Command::Shutdown);
    }

    /// The driver's counters so far (they stay readable after it stops).
    pub fn stats(&self) -> DriverStats {
        self.stats.snapshot()
    }

    /// The core's own [`Counters`] (messages, retransmissions, persists,
    /// compactions…), as of its last step: readable while it runs.
    pub fn counters(&self) -> Counters {
        self.stats.core_counters()
    }

    /// A reader of the driver's counters that can be kept and cloned apart
    /// from the `Handle` (which a dispatcher may own).
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(self.stats.clone())
    }
}

/// Reads a driver's counters ([`Handle::stats_reader`]).
#[derive(Clone)]
pub struct StatsReader(Arc<StatCells>);

impl StatsReader {
    /// The driver's counters so far.
    pub fn stats(&self) -> DriverStats {
        self.0.snapshot()
    }

    /// The core's own counters, as of its last step.
    pub fn counters(&self) -> Counters {
        self.0.core_counters()
    }
}

impl fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StatsReader").field(&self.stats()).finish()
    }
}

impl<P: Protocol> fmt::Debug for Handle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("closed", &self.inputs.is_closed())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Runs `protocol` over `channel`, `clock` and `log`.
///
/// Returns the application's [`Handle`] and the future that does the work;
/// nothing happens until that future is polled. The future is `Send` when
/// the core and its associated types are, so it can be spawned on a
/// multi-threaded executor. See the [module docs](self) for what it does and
/// when it stops.
///
/// The edge values are taken by value and shared internally. A `Box` or an
/// `Arc` of a channel, clock or log is one too, so `Box<dyn Channel>` works
/// and a log the application also uses is passed as an `Arc` of it.
pub fn driver<P, C, K, L>(
    protocol: P,
    channel: C,
    clock: K,
    log: L,
    config: DriverConfig,
) -> (Handle<P>, impl Future<Output = Result<(), DriverError>>)
where
    P: Protocol,
    C: Channel + 'static,
    K: Clock + 'static,
    L: StableLog + 'static,
{
    let (input_tx, input_rx) = mpsc::unbounded();
    let (event_tx, event_rx) = mpsc::channel(config.event_capacity);
    let stats = Arc::new(StatCells::default());
    let span = tracing::debug_span!("ft_driver", node = %channel.local());
    let codec = config.codec.fitted(channel.max_datagram());
    // `std`'s Arc, not the loom shim's: these are shared only so that the
    // boxed `'static` futures below can hold them, not to synchronize state.
    let channel = std::sync::Arc::new(channel);
    let clock = std::sync::Arc::new(clock);
    let last_now = clock.now();
    let state = Driver {
        protocol,
        recv: recv_future(&channel),
        channel,
        clock,
        log: std::sync::Arc::new(log),
        codec,
        stats: Arc::clone(&stats),
        metrics: config.metrics,
        commands: input_rx,
        commands_open: true,
        events: event_tx,
        timers: Timers::new(),
        sleep: None,
        persist_records: Vec::new(),
        persist_tokens: Vec::new(),
        persisting: None,
        lsns: std::collections::VecDeque::new(),
        truncate: None,
        last_now,
        turn: 0,
        frame_buf: BytesMut::new(),
        outbox: Outgoing::default(),
        outbox_bytes: 0,
        send_queue_bytes: config.send_queue_bytes,
        sending: None,
        spare: Outgoing::default(),
    };
    let handle = Handle {
        inputs: InputSender { tx: input_tx },
        events: event_rx,
        stats,
    };
    (handle, state.run().instrument(span))
}

type RecvFuture = BoxFuture<'static, Result<(NodeId, Bytes), ChannelError>>;
/// Datagrams being sent: what the channel did with them, and them back
/// (their allocations are reused).
type SendFuture = BoxFuture<'static, Sent>;
type AppendFuture = BoxFuture<'static, LogDone>;

/// What a log operation of the driver's came back with.
enum LogDone {
    /// An append of the records of these tokens.
    Appended(Result<Lsn, StorageError>, Vec<PersistToken>),
    /// A prefix truncation asked for by the core.
    Truncated(Result<Lsn, StorageError>),
}

/// How many durable records' LSNs the driver remembers, to turn a core's
/// [`Output::Compact`] into a log position. A core compacts right after its
/// snapshot is durable, so this is plenty; an older token is ignored.
const REMEMBERED_LSNS: usize = 1 << 16;

fn recv_future<C: Channel + 'static>(channel: &std::sync::Arc<C>) -> RecvFuture {
    let channel = std::sync::Arc::clone(channel);
    async move { channel.recv().await }.boxed()
}

/// Named timers, indexed both ways: by name to replace or cancel, by
/// deadline to find the next one due.
struct Timers<T> {
    by_timer: BTreeMap<T, Instant>,
    by_deadline: BTreeSet<(Instant, T)>,
}

impl<T: Ord + Clone> Timers<T> {
    fn new() -> Self {
        Timers {
            by_timer: BTreeMap::new(),
            by_deadline: BTreeSet::new(),
        }
    }

    fn set(&mut self, timer: T, at: Instant) {
        if let Some(old) = self.by_timer.insert(timer.clone(), at) {
            self.by_deadline.remove(&(old, timer.clone()));
        }
        self.by_deadline.insert((at, timer));
    }

    fn cancel(&mut self, timer: &T) {
        if let Some(at) = self.by_timer.remove(timer) {
            self.by_deadline.remove(&(at, timer.clone()));
        }
    }

    fn earliest(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// The timers due at `now`, earliest first.
    fn due(&self, now: Instant) -> Vec<(Instant, T)> {
        self.by_deadline
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect()
    }

    /// Removes `timer` if it is still set for `at`, and says whether it was.
    /// A timer that an earlier firing's outputs cancelled or moved must not
    /// fire from a stale list of due timers.
    fn take(&mut self, at: Instant, timer: &T) -> bool {
        if self.by_timer.get(timer) != Some(&at) {
            return false;
        }
        self.by_timer.remove(timer);
        self.by_deadline.remove(&(at, timer.clone()));
        true
    }
}

/// What woke the driver.
enum Wake<P: Protocol> {
    Persisted(LogDone),
    Timer(Instant),
    Command(Option<Command<P>>),
    Datagram(Result<(NodeId, Bytes), ChannelError>),
    Sent(Sent),
}

/// Datagrams on their way to the channel, in the order the core asked for
/// them: one-to-one datagrams, each run of them for one
/// [`Channel::send_batch`], and multicasts in their places between them,
/// each for one [`Channel::send_to_many`].
#[derive(Default)]
struct Outgoing {
    /// The one-to-one datagrams, in order.
    datagrams: Vec<(NodeId, Bytes)>,
    /// The multicasts, in order.
    multicasts: Vec<Multicast>,
}

/// One frame for several nodes ([`Output::Multicast`]).
struct Multicast {
    /// How many of the one-to-one datagrams were asked for before it.
    after: usize,
    /// The destinations, sorted, each once; never empty.
    to: Vec<NodeId>,
    frame: Bytes,
}

/// One call to the channel for part of an [`Outgoing`].
#[derive(Clone, Copy, Debug)]
enum Call {
    /// `send_batch` of the one-to-one datagrams from this position on.
    Batch(usize),
    /// `send_to_many` of the multicast at this position.
    Multicast(usize),
}

/// A call of which the channel refused some datagrams.
struct Refused {
    call: Call,
    /// How many datagrams the call handed over.
    len: usize,
    error: BatchError,
}

/// What the channel did with an [`Outgoing`].
struct Sent {
    /// The datagrams, back, for their vectors.
    outgoing: Outgoing,
    /// How many datagrams (a multicast's copies each) were handed over:
    /// all of them, unless the channel said it was closed part way and the
    /// calls after were not made.
    handed: usize,
    refused: Vec<Refused>,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.datagrams.is_empty() && self.multicasts.is_empty()
    }

    fn clear(&mut self) {
        self.datagrams.clear();
        self.multicasts.clear();
    }

    /// The destination of datagram `i` of `call`, if the channel named one
    /// that exists.
    fn destination(&self, call: Call, i: usize) -> Option<NodeId> {
        match call {
            Call::Batch(start) => self.datagrams.get(start + i).map(|(to, _)| *to),
            Call::Multicast(m) => self.multicasts.get(m).and_then(|m| m.to.get(i)).copied(),
        }
    }

    /// Hands everything to `channel` in the order asked, one call after
    /// the other, so each destination's datagrams keep their order: each
    /// run of one-to-one datagrams in one `send_batch`, each multicast in
    /// one `send_to_many`. Stops after a call the channel answers with
    /// [`ChannelError::Closed`]. Counts each call as it starts.
    async fn send<C: Channel>(self, channel: std::sync::Arc<C>, stats: Arc<StatCells>) -> Sent {
        let mut handed = 0;
        let mut refused = Vec::new();
        // Records a call's outcome; says whether to go on.
        let mut outcome = |call, len, result: Result<(), BatchError>| match result {
            Ok(()) => true,
            Err(error) => {
                let closed = error.is_closed();
                refused.push(Refused { call, len, error });
                !closed
            }
        };
        let mut start = 0;
        for m in 0..=self.multicasts.len() {
            let end = self
                .multicasts
                .get(m)
                .map_or(self.datagrams.len(), |m| m.after);
            if end > start {
                let run = &self.datagrams[start..end];
                StatCells::bump(&stats.batches);
                let result = channel.send_batch(run).await;
                handed += run.len();
                if !outcome(Call::Batch(start), run.len(), result) {
                    break;
                }
                start = end;
            }
            if let Some(multicast) = self.multicasts.get(m) {
                StatCells::bump(&stats.multicasts);
                let result = channel
                    .send_to_many(&multicast.to, multicast.frame.clone())
                    .await;
                handed += multicast.to.len();
                if !outcome(Call::Multicast(m), multicast.to.len(), result) {
                    break;
                }
            }
        }
        Sent {
            outgoing: self,
            handed,
            refused,
        }
    }
}

/// How many sources [`Driver::poll_wake`] serves in turn.
const SOURCES: usize = 4;

/// How many steps the driver takes back to back, at most, while more work
/// is ready at once: batches of 1, 2, 4, … 64 steps' datagrams (see the
/// module docs, "Sending"), before it serves its other sources again.
pub const STEPS_PER_BATCH: usize = 127;

/// Whether the driver goes on after a wake.
enum Flow {
    Go,
    Stop,
}

/// The state the driver future owns.
struct Driver<P: Protocol, C, K, L> {
    protocol: P,
    channel: std::sync::Arc<C>,
    clock: std::sync::Arc<K>,
    log: std::sync::Arc<L>,
    codec: FrameCodec,
    stats: Arc<StatCells>,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    metrics: Option<&'static str>,
    commands: mpsc::UnboundedReceiver<Command<P>>,
    /// False once every input sender is gone: a finished stream must not be
    /// polled again (it would be ready with `None` forever).
    commands_open: bool,
    events: mpsc::Sender<P::Event>,
    /// The one pending `recv`, kept across iterations.
    recv: RecvFuture,
    timers: Timers<P::Timer>,
    /// The sleep for the earliest deadline, and that deadline.
    sleep: Option<(Instant, BoxFuture<'static, ()>)>,
    /// Records asked for but not yet handed to the log, in order.
    persist_records: Vec<Bytes>,
    persist_tokens: Vec<PersistToken>,
    /// The append in flight, with the tokens of its records.
    persisting: Option<AppendFuture>,
    /// Durable records' LSNs, oldest first.
    lsns: std::collections::VecDeque<(PersistToken, Lsn)>,
    /// A prefix truncation the core asked for, not yet started.
    truncate: Option<Lsn>,
    /// The latest `now` handed to the core, so it never goes backwards.
    last_now: Instant,
    /// Which source `poll_wake` looks at first.
    turn: usize,
    /// Reused for encoding frames.
    frame_buf: BytesMut,
    /// Framed datagrams not yet handed to the channel, in the order asked.
    outbox: Outgoing,
    /// Their total size (a multicast's frame counted once), held within
    /// `send_queue_bytes`.
    outbox_bytes: usize,
    send_queue_bytes: usize,
    /// The datagrams the channel is sending.
    sending: Option<SendFuture>,
    /// The last datagrams' vectors, emptied, for the next ones.
    spare: Outgoing,
}

impl<P, C, K, L> Driver<P, C, K, L>
where
    P: Protocol,
    C: Channel + 'static,
    K: Clock + 'static,
    L: StableLog + 'static,
{
    async fn run(mut self) -> Result<(), DriverError> {
        debug!("driver started");
        let result = self.serve().await;
        match &result {
            Ok(()) => debug!("driver stopped: shutdown"),
            Err(e) => warn!(error = %e, "driver stopped"),
        }
        result
    }

    async fn serve(&mut self) -> Result<(), DriverError> {
        // The core may have queued outputs when it was built (timers to set,
        // a first record to persist).
        self.drain().await?;
        self.flush().await?;
        loop {
            self.prepare();
            let wake = poll_fn(|cx| self.poll_wake(cx)).await;
            if let Flow::Stop = self.step(wake).await? {
                return self.flush_for_shutdown().await;
            }
            // Whatever else is ready at once (a burst of datagrams read in
            // one go, inputs queued meanwhile) is handled back to back, and
            // its datagrams leave in batches that double: the first step's
            // at once (the peer starts on them while the rest are made),
            // then 2 steps', 4, 8… So a burst of n steps costs about
            // log2(n) writes per peer, and nothing waits when nothing else
            // is ready. (One batch for the whole burst was measured to put
            // client and server in lockstep at 16 calls in flight, each
            // idle while the other works: 0.7x the throughput.)
            let mut flush_at = 1;
            for taken in 1..STEPS_PER_BATCH {
                if taken == flush_at {
                    self.flush().await?;
                    flush_at = 2 * taken + 1;
                }
                self.prepare();
                let ready = {
                    let mut wake = poll_fn(|cx| self.poll_wake(cx));
                    futures::poll!(&mut wake)
                };
                let Poll::Ready(wake) = ready else { break };
                if let Flow::Stop = self.step(wake).await? {
                    return self.flush_for_shutdown().await;
                }
            }
            self.flush().await?;
        }
    }

    /// [`on_wake`](Self::on_wake); when the log failed, the datagrams the
    /// core asked for before are still sent (none of them can depend on
    /// the failed records, whose tokens the core never gets) and the
    /// driver stops.
    async fn step(&mut self, wake: Wake<P>) -> Result<Flow, DriverError> {
        match self.on_wake(wake).await {
            Err(e @ DriverError::Storage(_)) => {
                self.flush().await?;
                Err(e)
            }
            other => other,
        }
    }

    /// Handles what woke the driver: one step of the core (or a few, for a
    /// completed append of several records or timers due together).
    async fn on_wake(&mut self, wake: Wake<P>) -> Result<Flow, DriverError> {
        match wake {
            Wake::Persisted(LogDone::Appended(Ok(first), tokens)) => {
                for (i, &token) in tokens.iter().enumerate() {
                    if self.lsns.len() >= REMEMBERED_LSNS {
                        self.lsns.pop_front();
                    }
                    self.lsns.push_back((token, Lsn(first.0 + i as u64)));
                }
                for token in tokens {
                    StatCells::bump(&self.stats.persists);
                    debug!(?token, "persist durable");
                    let now = self.now();
                    self.protocol.handle_persisted(now, token);
                    self.drain().await?;
                }
            }
            Wake::Persisted(LogDone::Truncated(Ok(start))) => {
                StatCells::bump(&self.stats.compactions);
                debug!(start = start.0, "log prefix dropped");
            }
            Wake::Persisted(LogDone::Truncated(Err(e))) => {
                // Nothing is lost: the records stay, and the core
                // recovers from them as well as without.
                warn!(error = %e, "truncating the log's prefix failed; keeping it");
            }
            Wake::Persisted(LogDone::Appended(Err(e), tokens)) => {
                warn!(error = %e, records = tokens.len(), "append to the stable log failed");
                return Err(DriverError::Storage(e));
            }
            Wake::Timer(deadline) => self.fire_timers(deadline).await?,
            Wake::Command(Some(Command::Input(input))) => {
                StatCells::bump(&self.stats.inputs);
                trace!("input");
                let now = self.now();
                self.protocol.handle_input(now, input);
                self.drain().await?;
            }
            Wake::Command(Some(Command::Shutdown)) => return Ok(Flow::Stop),
            Wake::Command(None) => {
                debug!("every input sender is gone; serving the network only");
                self.commands_open = false;
            }
            Wake::Datagram(Ok((from, datagram))) => self.on_datagram(from, datagram).await?,
            Wake::Datagram(Err(ChannelError::Closed)) => {
                return Err(DriverError::Channel(ChannelError::Closed));
            }
            Wake::Datagram(Err(e)) => {
                StatCells::bump(&self.stats.recv_failures);
                warn!(error = %e, "recv failed; receiving again");
            }
            Wake::Sent(sent) => self.sent(sent)?,
        }
        Ok(Flow::Go)
    }

    /// Starts what the last outputs asked for: the next batch of records, if
    /// no append is in flight, and a sleep for the earliest deadline, if it
    /// changed.
    fn prepare(&mut self) {
        if self.persisting.is_none() && !self.persist_records.is_empty() {
            let records = std::mem::take(&mut self.persist_records);
            let tokens = std::mem::take(&mut self.persist_tokens);
            trace!(records = records.len(), "appending to the stable log");
            let log = std::sync::Arc::clone(&self.log);
            self.persisting = Some(
                async move {
                    let result = log.append(&records).await;
                    LogDone::Appended(result, tokens)
                }
                .boxed(),
            );
        } else if self.persisting.is_none()
            && let Some(upto) = self.truncate.take()
        {
            trace!(upto = upto.0, "truncating the stable log");
            let log = std::sync::Arc::clone(&self.log);
            self.persisting =
                Some(async move { LogDone::Truncated(log.truncate_prefix(upto).await) }.boxed());
        }
        let earliest = self.timers.earliest();
        if self.sleep.as_ref().map(|(at, _)| *at) != earliest {
            self.sleep = earliest.map(|at| {
                let clock = std::sync::Arc::clone(&self.clock);
                (at, async move { clock.sleep_until(at).await }.boxed())
            });
        }
    }

    /// Polls the sources, starting after the one served last, and returns
    /// the first that is ready. Each source not ready has registered its
    /// waker, so the driver is woken when any of them is.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake<P>> {
        // A batch in progress first: finishing it consumes nothing, and the
        // datagrams queued behind it go sooner.
        if let Some(sending) = &mut self.sending
            && let Poll::Ready(sent) = sending.poll_unpin(cx)
        {
            self.sending = None;
            return Poll::Ready(Wake::Sent(sent));
        }
        for i in 0..SOURCES {
            let source = (self.turn + i) % SOURCES;
            let ready = match source {
                0 => self.poll_persisted(cx),
                1 => self.poll_timer(cx),
                2 => self.poll_command(cx),
                _ => self.poll_datagram(cx),
            };
            if ready.is_ready() {
                self.turn = (source + 1) % SOURCES;
                return ready;
            }
        }
        Poll::Pending
    }

    fn poll_persisted(&mut self, cx: &mut Context<'_>) -> Poll<Wake<P>> {
        let Some(append) = &mut self.persisting else {
            return Poll::Pending;
        };
        let done = std::task::ready!(append.poll_unpin(cx));
        self.persisting = None;
        Poll::Ready(Wake::Persisted(done))
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Wake<P>> {
        let Some((at, sleep)) = &mut self.sleep else {
            return Poll::Pending;
        };
        std::task::ready!(sleep.poll_unpin(cx));
        let at = *at;
        self.sleep = None;
        Poll::Ready(Wake::Timer(at))
    }

    fn poll_command(&mut self, cx: &mut Context<'_>) -> Poll<Wake<P>> {
        if !self.commands_open {
            return Poll::Pending;
        }
        self.commands.poll_next_unpin(cx).map(Wake::Command)
    }

    fn poll_datagram(&mut self, cx: &mut Context<'_>) -> Poll<Wake<P>> {
        let result = std::task::ready!(self.recv.poll_unpin(cx));
        // The next receive starts now but is first polled on the next turn.
        self.recv = recv_future(&self.channel);
        Poll::Ready(Wake::Datagram(result))
    }

    /// The time to hand the core: the clock's, but never earlier than what
    /// the core was told before.
    fn now(&mut self) -> Instant {
        let now = self.clock.now().max(self.last_now);
        self.last_now = now;
        now
    }

    /// Fires every timer due now that the sleep for `deadline` completed.
    async fn fire_timers(&mut self, deadline: Instant) -> Result<(), DriverError> {
        // The clock completed the sleep, so `deadline` has been reached even
        // if `now()` is coarser than the deadline: a core is never told a
        // timer fired at a time before the one it was set for.
        self.last_now = self.last_now.max(deadline);
        let now = self.now();
        for (at, timer) in self.timers.due(now) {
            if !self.timers.take(at, &timer) {
                continue;
            }
            StatCells::bump(&self.stats.timers_fired);
            trace!(?timer, "timer fired");
            let now = self.now();
            self.protocol.handle_timer(now, timer);
            self.drain().await?;
        }
        Ok(())
    }

    async fn on_datagram(&mut self, from: NodeId, datagram: Bytes) -> Result<(), DriverError> {
        StatCells::bump(&self.stats.datagrams_in);
        let len = datagram.len();
        match self.codec.decode::<P::Message>(datagram) {
            Ok(msg) => {
                trace!(%from, ?msg, "message in");
                let now = self.now();
                self.protocol.handle_message(now, from, msg);
                self.drain().await
            }
            Err(error) => {
                StatCells::bump(&self.stats.decode_failures);
                debug!(%from, len, %error, "dropped a datagram that is not a valid frame");
                Ok(())
            }
        }
    }

    /// Carries out the core's outputs until it has none, in order.
    async fn drain(&mut self) -> Result<(), DriverError> {
        self.drain_outputs().await?;
        let counters = self.protocol.counters();
        self.stats.publish(counters);
        self.export(&counters);
        Ok(())
    }

    /// Exports the core's and the driver's counters (feature `metrics`,
    /// with a name configured): after each step, and after each batch the
    /// channel took, since the datagrams of a step are counted only then.
    fn export(&self, counters: &Counters) {
        #[cfg(feature = "metrics")]
        if let Some(name) = self.metrics {
            crate::metrics::export(name, counters, &self.stats.snapshot());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = counters;
    }

    async fn drain_outputs(&mut self) -> Result<(), DriverError> {
        while let Some(output) = self.protocol.poll_output() {
            match output {
                Output::Send { to, msg } => self.send(to, msg),
                Output::Multicast { to, msg } => self.multicast(to, msg),
                Output::SetTimer { timer, at } => {
                    trace!(?timer, "timer set");
                    self.timers.set(timer, at);
                }
                Output::CancelTimer { timer } => {
                    trace!(?timer, "timer cancelled");
                    self.timers.cancel(&timer);
                }
                Output::Persist { record, token } => {
                    trace!(?token, len = record.len(), "persist asked");
                    self.persist_records.push(record);
                    self.persist_tokens.push(token);
                }
                Output::Compact { before } => {
                    match self.lsns.iter().position(|(t, _)| *t == before) {
                        Some(i) => {
                            let upto = self.lsns[i].1;
                            self.lsns.drain(..i);
                            self.truncate = Some(self.truncate.map_or(upto, |u| u.max(upto)));
                        }
                        None => {
                            debug!(?before, "compaction names a token no longer known; ignored")
                        }
                    }
                }
                Output::Event(event) => {
                    StatCells::bump(&self.stats.events);
                    // Events may hold the application's payloads: not logged.
                    trace!("event");
                    // Waits while the queue is full: back-pressure. The
                    // datagrams asked for so far go first, so a slow reader
                    // of events delays none of them. An error only means
                    // the handle is gone, and nobody is listening.
                    match self.events.try_send(event) {
                        Ok(()) => {}
                        Err(e) if e.is_full() => {
                            self.flush().await?;
                            let _ = self.events.send(e.into_inner()).await;
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Frames `msg` for `to` and queues it for the next batch.
    fn send(&mut self, to: NodeId, msg: P::Message) {
        // The message itself may hold the application's payload: not logged.
        trace!(%to, "message out");
        let to = std::slice::from_ref(&to);
        let Some(frame) = self.frame(&msg, to) else {
            return;
        };
        if self.admit(&frame, to) {
            self.outbox.datagrams.push((to[0], frame));
        }
    }

    /// Frames `msg` once for every node of `to` (sorted, each once) and
    /// queues it, in its place among the one-to-one datagrams, for one
    /// [`Channel::send_to_many`]. Counted as one datagram per destination.
    fn multicast(&mut self, mut to: Vec<NodeId>, msg: P::Message) {
        to.sort_unstable();
        to.dedup();
        if to.is_empty() {
            trace!("multicast to nobody; nothing sent");
            return;
        }
        trace!(destinations = to.len(), "multicast out");
        let Some(frame) = self.frame(&msg, &to) else {
            return;
        };
        if self.admit(&frame, &to) {
            let after = self.outbox.datagrams.len();
            self.outbox.multicasts.push(Multicast { after, to, frame });
        }
    }

    /// Frames `msg`, or counts it as a failed send to each node of `to` if
    /// it is too large for the codec.
    fn frame(&mut self, msg: &P::Message, to: &[NodeId]) -> Option<Bytes> {
        if let Err(error) = self.codec.encode(msg, &mut self.frame_buf) {
            self.stats
                .send_failures
                .fetch_add(to.len() as u64, Ordering::Relaxed);
            match to {
                [to] => warn!(%to, %error, "message too large to frame; not sent"),
                to => warn!(?to, %error, "multicast too large to frame; not sent"),
            }
            return None;
        }
        Some(self.frame_buf.split().freeze())
    }

    /// Whether `frame` (for the nodes of `to`) fits the send queue; if not,
    /// it is counted as a datagram dropped for each of them. The queue
    /// always takes one frame, whatever its size.
    fn admit(&mut self, frame: &Bytes, to: &[NodeId]) -> bool {
        if !self.outbox.is_empty() && self.outbox_bytes + frame.len() > self.send_queue_bytes {
            self.stats
                .datagrams_dropped
                .fetch_add(to.len() as u64, Ordering::Relaxed);
            match to {
                [to] => debug!(
                    %to,
                    "send queue full (the channel is still sending); datagram dropped"
                ),
                to => debug!(
                    ?to,
                    "send queue full (the channel is still sending); multicast dropped"
                ),
            }
            return false;
        }
        self.outbox_bytes += frame.len();
        true
    }

    /// Hands the queued datagrams to the channel, unless some are still
    /// being sent, and polls the sending once: a channel that sends at once
    /// is done before the driver waits again.
    async fn flush(&mut self) -> Result<(), DriverError> {
        if self.sending.is_some() || self.outbox.is_empty() {
            return Ok(());
        }
        let outgoing = std::mem::replace(&mut self.outbox, std::mem::take(&mut self.spare));
        self.outbox_bytes = 0;
        let channel = std::sync::Arc::clone(&self.channel);
        let stats = Arc::clone(&self.stats);
        let mut sending: SendFuture = outgoing.send(channel, stats).boxed();
        match futures::poll!(&mut sending) {
            Poll::Ready(sent) => self.sent(sent),
            Poll::Pending => {
                self.sending = Some(sending);
                Ok(())
            }
        }
    }

    /// Counts what the channel did with the datagrams, and keeps their
    /// vectors.
    fn sent(&mut self, sent: Sent) -> Result<(), DriverError> {
        let Sent {
            mut outgoing,
            handed,
            refused,
        } = sent;
        let refusals: usize = refused
            .iter()
            .map(|r| r.error.failed.len().min(r.len))
            .sum();
        self.stats
            .datagrams_out
            .fetch_add((handed - refusals.min(handed)) as u64, Ordering::Relaxed);
        let mut closed = false;
        for refusal in refused {
            for (i, error) in refusal.error.failed {
                let to = outgoing.destination(refusal.call, i);
                match error {
                    ChannelError::Closed => closed = true,
                    // An unknown or departed peer is an everyday event for a
                    // fault-tolerant protocol: the core's timeouts deal with it.
                    ChannelError::Unreachable(_) => {
                        StatCells::bump(&self.stats.send_failures);
                        debug!(?to, %error, "send refused; message lost");
                    }
                    error => {
                        StatCells::bump(&self.stats.send_failures);
                        warn!(?to, %error, "send failed; message lost");
                    }
                }
            }
        }
        outgoing.clear();
        self.spare = outgoing;
        #[cfg(feature = "metrics")]
        if self.metrics.is_some() {
            self.export(&self.stats.core_counters());
        }
        if closed {
            return Err(DriverError::Channel(ChannelError::Closed));
        }
        Ok(())
    }

    /// Before a shutdown returns: lets the batch in progress and the
    /// datagrams queued behind it reach the channel, for at most
    /// [`SHUTDOWN_GRACE`] of the clock's time.
    async fn flush_for_shutdown(&mut self) -> Result<(), DriverError> {
        if self.sending.is_none() && self.outbox.is_empty() {
            return Ok(());
        }
        let deadline = self.clock.now() + SHUTDOWN_GRACE;
        let clock = std::sync::Arc::clone(&self.clock);
        let mut grace = async move { clock.sleep_until(deadline).await }.boxed();
        loop {
            self.flush().await?;
            let Some(sending) = &mut self.sending else {
                return Ok(());
            };
            match futures::future::select(sending, &mut grace).await {
                futures::future::Either::Left((sent, _)) => {
                    self.sending = None;
                    self.sent(sent)?;
                }
                futures::future::Either::Right(((), _)) => {
                    debug!("shutdown: a send still in progress was abandoned");
                    return Ok(());
                }
            }
        }
    }
}

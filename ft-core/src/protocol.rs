//! The contract every protocol core follows.
//!
//! A core is a deterministic state machine: no sockets, no threads, no reads
//! of the system clock, no global randomness. Time comes in as an argument;
//! randomness comes from a seed the caller hands to [`Recover::recover`]. The
//! same inputs give the same outputs, always, which is what lets one
//! simulator ([`ft-sim`]) and one [driver](crate::driver) run every protocol.
//!
//! [`ft-sim`]: https://docs.rs/ft-sim

use std::fmt::Debug;
use std::time::Instant;

use bytes::Bytes;

use crate::id::{Incarnation, NodeId};
use crate::record::RecoveryError;
use crate::wire::Wire;

/// Names a record handed out in [`Output::Persist`]; the environment returns
/// it through [`Protocol::handle_persisted`] once the record is durable.
///
/// Tokens are chosen by the core; they need only be unique among the core's
/// outstanding persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistToken(pub u64);

/// What a core asks of its environment.
#[derive(Debug)]
pub enum Output<P: Protocol + ?Sized> {
    /// Send `msg` to `to` over an unreliable channel (it may be lost,
    /// duplicated, reordered or delayed).
    Send {
        /// The destination.
        to: NodeId,
        /// The message.
        msg: P::Message,
    },
    /// Send `msg` to every node of `to` over an unreliable channel: each
    /// copy may be lost, duplicated, reordered or delayed, independently of
    /// the others.
    ///
    /// The environment may carry it as one datagram (IP multicast, where the
    /// transport has it) or as one per destination; either way it is framed
    /// once. A node listed more than once gets it as if listed once: the
    /// environment removes duplicates (a copy may still arrive twice, as a
    /// `Send` may). `to` may include the sending node itself, which then
    /// receives it as it would a `Send` to itself. An empty `to` sends
    /// nothing.
    ///
    /// Copies to one destination keep their place among the core's other
    /// outputs to that destination, as if the multicast were a `Send` to
    /// each node of `to` at that point.
    Multicast {
        /// The destinations.
        to: Vec<NodeId>,
        /// The message.
        msg: P::Message,
    },
    /// Call [`Protocol::handle_timer`] with `timer` at `at`, replacing any
    /// earlier setting of the same timer.
    SetTimer {
        /// Which timer.
        timer: P::Timer,
        /// When it fires.
        at: Instant,
    },
    /// Forget `timer`; it must not fire.
    CancelTimer {
        /// Which timer.
        timer: P::Timer,
    },
    /// Append `record` to stable storage, then call
    /// [`Protocol::handle_persisted`] with `token`.
    ///
    /// **Persist before you speak:** a core does not emit a message whose
    /// meaning depends on `record` being durable until the token comes back.
    /// Environments complete persists in the order they were asked for.
    Persist {
        /// The record to append.
        record: Bytes,
        /// Returned when the record is durable.
        token: PersistToken,
    },
    /// Tell the application something.
    Event(P::Event),
    /// The records persisted before the one of `before` are no longer
    /// needed: the core has persisted (and seen durable) everything it still
    /// needs from them, from `before` on. The environment may drop them from
    /// stable storage, at once or later, or not at all: a core recovers from
    /// either. `before` is a token this core persisted and saw durable in
    /// this life; a token the environment no longer knows is ignored.
    ///
    /// This is how logs stay bounded: the driver truncates its log's prefix
    /// ([`StableLog::truncate_prefix`](crate::StableLog::truncate_prefix)),
    /// the simulator drops the node's records.
    Compact {
        /// The first record still needed.
        before: PersistToken,
    },
}

/// Counters every core keeps, read through [`Protocol::counters`].
///
/// They are plain numbers since the core started (a restart starts again from
/// zero): cheap to keep, and what tests use to show a fault really happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages the core emitted: one for each [`Output::Send`], and one
    /// for each [`Output::Multicast`] whatever the number of its
    /// destinations (the environment counts the copies: the driver's
    /// [`DriverStats::datagrams_out`](crate::DriverStats::datagrams_out),
    /// the simulator's per-message counters).
    pub messages_sent: u64,
    /// Messages handed to [`Protocol::handle_message`].
    pub messages_received: u64,
    /// Received messages the core discarded (duplicates, stale incarnations,
    /// messages it could not use).
    pub messages_dropped: u64,
    /// Messages sent again because an earlier copy may have been lost.
    pub retransmissions: u64,
    /// Timers that fired.
    pub timers_fired: u64,
    /// Records the core asked to persist.
    pub persists: u64,
    /// Times the core asked for its log to be compacted.
    pub compactions: u64,
}

/// A sans-IO protocol state machine.
///
/// # Method groups
///
/// Following quinn-proto, the methods come in four groups:
///
/// - **getters** ([`counters`](Protocol::counters), and whatever state a core
///   exposes) never change the core;
/// - **`handle_*`** feed it something that happened: a message arrived, the
///   application asked for something, a timer fired, a record became durable;
/// - **mutators** are the core's own inherent methods that act on behalf of
///   the application (most cores route them through
///   [`handle_input`](Protocol::handle_input));
/// - **`poll_*`** drain what the core wants done.
///
/// # Poll order
///
/// After every `handle_*` call (and after construction), the environment calls
/// [`poll_output`](Protocol::poll_output) until it returns `None`, and carries
/// out each [`Output`] in the order returned, before feeding the core anything
/// else. In particular a `Send` (or `Multicast`) that follows a `Persist` is
/// never sent before that persist completes unless the core emitted it
/// deliberately; cores that need the record durable first wait for
/// `handle_persisted`.
///
/// Time never goes backwards between calls: `now` is monotonic.
pub trait Protocol {
    /// What crosses the network.
    type Message: Wire + Clone + Debug;
    /// Requests from the application.
    type Input: Debug;
    /// What the application is told.
    type Event: Debug;
    /// Named timers, never anonymous sleeps.
    type Timer: Ord + Clone + Debug;

    /// A message `msg` arrived from `from`.
    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Self::Message);
    /// The application asks for something.
    fn handle_input(&mut self, now: Instant, input: Self::Input);
    /// `timer` fired.
    fn handle_timer(&mut self, now: Instant, timer: Self::Timer);
    /// The record persisted under `token` is now durable.
    fn handle_persisted(&mut self, now: Instant, token: PersistToken);
    /// The next thing the core wants done, if any.
    fn poll_output(&mut self) -> Option<Output<Self>>;
    /// The core's counters.
    fn counters(&self) -> Counters;
}

/// What a core is rebuilt from after a crash (or built from at first start).
#[derive(Clone, Debug)]
pub struct RecoveryContext {
    /// Who this process is.
    pub node: NodeId,
    /// This life of the process: [`Incarnation::FIRST`] on first start, one
    /// more after each restart. The environment keeps it in stable storage.
    pub incarnation: Incarnation,
    /// Every record the core persisted in earlier lives that became durable
    /// and was not compacted away, in the order they were persisted, as
    /// stored: read them with [`read`](Self::read) (and hand embedded cores
    /// their own with [`component`](Self::component)); the format is in
    /// [`record`](crate::record).
    pub records: Vec<Bytes>,
    /// The seed of the core's own random number generator.
    pub seed: u64,
    /// The time of the (re)start.
    pub now: Instant,
}

/// **Recovery is a constructor**: a core is built from what stable storage
/// holds. Volatile state is gone; the incarnation has gone up by one.
pub trait Recover: Protocol + Sized {
    /// Static configuration (peers, timeouts…), the same in every life.
    type Config: Clone;

    /// Builds the core from its configuration and what survived.
    ///
    /// # Errors
    /// [`RecoveryError`] when a record does not read or the records
    /// contradict each other: the core is not built, and the environment
    /// says why (a record is never skipped silently).
    fn recover(config: &Self::Config, ctx: RecoveryContext) -> Result<Self, RecoveryError>;
}

//! Composition: the [`Outbox`] every core pushes into, and embedding one
//! core in another.
//!
//! # The outbox
//!
//! A core keeps one [`Outbox`] and does everything through it: sends and
//! multicasts, timers, persists of its typed [`Record`]s, events,
//! compaction. The
//! outbox keeps the output queue that [`Protocol::poll_output`] drains, the
//! [`Counters`], the persist tokens, and the protocol-level trace events
//! ([`Outbox::note`]), so no core writes that plumbing again:
//!
//! ```
//! # use std::time::{Duration, Instant};
//! # use ft_core::{Counters, NodeId, Output, PersistToken, Protocol};
//! use ft_core::Outbox;
//!
//! /// Pings a peer once a second.
//! struct Pinger { peer: NodeId, out: Outbox<Pinger> }
//!
//! impl Protocol for Pinger {
//!     type Message = u64;
//!     type Input = ();
//!     type Event = u64;
//!     type Timer = ();
//!     fn handle_message(&mut self, _: Instant, _: NodeId, n: u64) {
//!         self.out.received();
//!         self.out.event(n);
//!     }
//!     fn handle_input(&mut self, _: Instant, _: ()) {}
//!     fn handle_timer(&mut self, now: Instant, _: ()) {
//!         self.out.timer_fired();
//!         self.out.send(self.peer, 1);
//!         self.out.set_timer_after((), now, Duration::from_secs(1));
//!     }
//!     fn handle_persisted(&mut self, _: Instant, _: PersistToken) {}
//!     fn poll_output(&mut self) -> Option<Output<Self>> { self.out.pop() }
//!     fn counters(&self) -> Counters { self.out.counters() }
//! }
//!
//! let mut p = Pinger { peer: NodeId(2), out: Outbox::new() };
//! p.handle_timer(Instant::now(), ());
//! assert!(matches!(p.poll_output(), Some(Output::Send { to: NodeId(2), msg: 1 })));
//! assert!(matches!(p.poll_output(), Some(Output::SetTimer { .. })));
//! assert_eq!(p.counters().messages_sent, 1);
//! ```
//!
//! # Embedding a core
//!
//! An outer core that embeds an inner one (multicast over membership,
//! message logging around any core) forwards the inner core's `handle_*`
//! calls and, after each, moves the inner core's outputs into its own
//! outbox in one line with [`Outbox::lift`], naming the inner core's
//! [`Component`] and how its message, timer and event types become the
//! outer core's. What `lift` does with each output:
//!
//! | inner output | becomes |
//! |---|---|
//! | `Send`, `Multicast`, `SetTimer`, `CancelTimer` | the same, message or timer mapped (destinations unchanged) |
//! | `Event(e)` | whatever the outer core's closure returns for `e`: an outer event, or nothing (the outer core acted on it) |
//! | `Persist { record, token }` | a persist of the outer core, under a token of its own, with the record **tagged** with the component (see [`record`] for the format); when [`Outbox::persisted`] later names that token, it says which component's token it was, and the outer core hands it down |
//! | `Compact { before }` | a note of how far that component's records are needed; the outer core's outbox asks for compaction of the shared log only up to the oldest record *any* component still needs |
//!
//! At recovery the outer core hands each inner core its own records with
//! [`RecoveryContext::component`](crate::RecoveryContext::component) and
//! starts its outbox with [`Outbox::recovered`], which remembers which
//! components have records from earlier lives: none of those is compacted
//! away until that component has compacted itself. Any number of cores can
//! so persist, recover and compact side by side in one log.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::id::{Incarnation, NodeId};
use crate::protocol::{Counters, Output, PersistToken, Protocol, RecoveryContext};
use crate::record::{self, Component, Record};

/// How many completed persists of one embedded component are remembered to
/// translate a later compaction request that names one of them. A core
/// compacts soon after its snapshot is durable, so far fewer are needed; a
/// request naming a forgotten token is ignored (compaction is only ever an
/// optimisation).
const REMEMBERED_PER_COMPONENT: usize = 4096;

/// From where a component's records are still needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// It has records from earlier lives and has not compacted in this one:
    /// all of them are needed.
    Start,
    /// From the record of this (outer) token on.
    From(PersistToken),
}

/// What a completed persist token belonged to: see [`Outbox::persisted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persisted {
    /// One of this core's own persists.
    Own(PersistToken),
    /// A persist of the embedded core `component`, under its own `token`:
    /// hand it to that core's `handle_persisted`.
    Inner {
        /// The embedded core.
        component: Component,
        /// The token it chose.
        token: PersistToken,
    },
}

/// A core's outputs, counters, persist tokens and compaction marks. See the
/// [module docs](self).
///
/// [`Counters::messages_sent`] counts what the core asked for, not the
/// copies on the wire: one for each [`send`](Self::send) (and
/// [`retransmit`](Self::retransmit)), and one for each
/// [`multicast`](Self::multicast) whatever the number of its destinations.
#[derive(Debug)]
pub struct Outbox<P: Protocol + ?Sized> {
    queue: VecDeque<Output<P>>,
    counters: Counters,
    next_token: u64,
    /// Embedded cores' persists in flight: our token → theirs.
    routes: BTreeMap<PersistToken, (Component, PersistToken)>,
    /// Embedded cores' completed persists: theirs → ours, oldest first.
    done: BTreeMap<Component, VecDeque<(PersistToken, PersistToken)>>,
    marks: BTreeMap<Component, Mark>,
    compacted: Option<PersistToken>,
}

impl<P: Protocol + ?Sized> Default for Outbox<P> {
    fn default() -> Self {
        Outbox {
            queue: VecDeque::new(),
            counters: Counters::default(),
            next_token: 0,
            routes: BTreeMap::new(),
            done: BTreeMap::new(),
            marks: BTreeMap::new(),
            compacted: None,
        }
    }
}

impl<P: Protocol + ?Sized> Outbox<P> {
    // ---- construction ----

    /// An empty outbox, for a core with no records from earlier lives.
    pub fn new() -> Self {
        Outbox::default()
    }

    /// An empty outbox for a core rebuilt from `ctx`: every component with
    /// records there (this core's own included) keeps all of them until it
    /// compacts in this life.
    pub fn recovered(ctx: &RecoveryContext) -> Self {
        let mut out = Outbox::default();
        for c in ctx.components() {
            out.marks.insert(c, Mark::Start);
        }
        out
    }

    // ---- getters ----

    /// The counters, as [`Protocol::counters`] returns them.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Outputs waiting to be polled.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits to be polled.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The outputs waiting, oldest first (for tests).
    pub fn pending(&self) -> impl Iterator<Item = &Output<P>> {
        self.queue.iter()
    }

    // ---- outputs ----

    /// Sends `msg` to `to`.
    pub fn send(&mut self, to: NodeId, msg: P::Message) {
        self.counters.messages_sent += 1;
        self.queue.push_back(Output::Send { to, msg });
    }

    /// Sends `msg` to every node of `to` ([`Output::Multicast`]: the
    /// environment frames it once, removes duplicate destinations, and may
    /// carry it as one IP multicast datagram). Counted as **one** message
    /// sent, whatever the number of destinations; an empty `to` is still
    /// pushed (and sends nothing).
    pub fn multicast(&mut self, to: Vec<NodeId>, msg: P::Message) {
        self.counters.messages_sent += 1;
        self.queue.push_back(Output::Multicast { to, msg });
    }

    /// Sends `msg` to `to` again, because an earlier copy (number `seq` in
    /// the core's own numbering) may have been lost: counted as a send and
    /// a retransmission, and traced once.
    pub fn retransmit(&mut self, to: NodeId, seq: u64, msg: P::Message) {
        self.counters.retransmissions += 1;
        tracing::debug!(target: "ft::protocol", peer = to.0, seq, "retransmission");
        self.send(to, msg);
    }

    /// Sets `timer` to fire at `at`, replacing any earlier setting.
    pub fn set_timer(&mut self, timer: P::Timer, at: Instant) {
        self.queue.push_back(Output::SetTimer { timer, at });
    }

    /// Sets `timer` to fire `after` from `now`. A deadline beyond what an
    /// `Instant` can hold (an absurd configuration) is never reached, so the
    /// timer is then not set, rather than panicking.
    pub fn set_timer_after(&mut self, timer: P::Timer, now: Instant, after: Duration) {
        if let Some(at) = now.checked_add(after) {
            self.set_timer(timer, at);
        }
    }

    /// Cancels `timer`.
    pub fn cancel_timer(&mut self, timer: P::Timer) {
        self.queue.push_back(Output::CancelTimer { timer });
    }

    /// Tells the application `event`.
    pub fn event(&mut self, event: P::Event) {
        self.queue.push_back(Output::Event(event));
    }

    /// Asks for `record` to be made durable; the returned token comes back
    /// through [`Protocol::handle_persisted`] (route it with
    /// [`persisted`](Self::persisted)).
    pub fn persist<R: Record>(&mut self, record: &R) -> PersistToken {
        let token = self.token();
        self.counters.persists += 1;
        self.marks
            .entry(Component::SELF)
            .or_insert(Mark::From(token));
        self.queue.push_back(Output::Persist {
            record: record::encode(record),
            token,
        });
        token
    }

    /// Says that this core's records before the one of `before` (a token
    /// from [`persist`](Self::persist), already durable) are no longer
    /// needed. The log is compacted up to the oldest record any component
    /// of this core still needs.
    pub fn compact(&mut self, before: PersistToken) {
        self.counters.compactions += 1;
        self.marks.insert(Component::SELF, Mark::From(before));
        self.emit_compaction();
    }

    /// Takes back a token named in [`Protocol::handle_persisted`]: this
    /// core's own, or an embedded core's (then hand it down).
    pub fn persisted(&mut self, token: PersistToken) -> Persisted {
        match self.routes.remove(&token) {
            None => Persisted::Own(token),
            Some((component, theirs)) => {
                let done = self.done.entry(component).or_default();
                if done.len() >= REMEMBERED_PER_COMPONENT {
                    done.pop_front();
                }
                done.push_back((theirs, token));
                Persisted::Inner {
                    component,
                    token: theirs,
                }
            }
        }
    }

    // ---- counters ----

    /// Counts a message handed to [`Protocol::handle_message`].
    pub fn received(&mut self) {
        self.counters.messages_received += 1;
    }

    /// Counts a received message the core discarded.
    pub fn dropped(&mut self) {
        self.counters.messages_dropped += 1;
    }

    /// Counts a timer that fired.
    pub fn timer_fired(&mut self) {
        self.counters.timers_fired += 1;
    }

    /// Counts `n` messages sent as retransmissions without going through
    /// [`retransmit`](Self::retransmit) (a core that re-sends a batch it
    /// built itself).
    pub fn count_retransmissions(&mut self, n: u64) {
        self.counters.retransmissions += n;
    }

    // ---- observability ----

    /// A protocol-level trace event (target `ft::protocol`, level debug):
    /// `what` happened, about `peer`, at `incarnation`, for number `seq`.
    /// Fields that do not apply are `None` and left out. Never pass payload
    /// bytes: they are the application's, not ours to log.
    pub fn note(
        &self,
        what: &'static str,
        peer: Option<NodeId>,
        incarnation: Option<Incarnation>,
        seq: Option<u64>,
    ) {
        tracing::debug!(
            target: "ft::protocol",
            peer = peer.map(|p| p.0),
            incarnation = incarnation.map(|i| i.0),
            seq,
            "{what}"
        );
    }

    // ---- poll ----

    /// The next output, for [`Protocol::poll_output`].
    pub fn pop(&mut self) -> Option<Output<P>> {
        self.queue.pop_front()
    }

    // ---- embedding ----

    /// Moves every output of the embedded core `inner` (numbered
    /// `component`) into this outbox: messages through `message`, timers
    /// through `timer`, events through `event` (which may act on an event
    /// and return `None`); persists tagged and routed, compactions merged
    /// (see the [module docs](self)).
    pub fn lift<I: Protocol>(
        &mut self,
        component: Component,
        inner: &mut I,
        message: impl Fn(I::Message) -> P::Message,
        timer: impl Fn(I::Timer) -> P::Timer,
        mut event: impl FnMut(I::Event) -> Option<P::Event>,
    ) {
        assert_ne!(
            component,
            Component::SELF,
            "an embedded core needs a component number of its own"
        );
        while let Some(out) = inner.poll_output() {
            match out {
                Output::Send { to, msg } => self.queue.push_back(Output::Send {
                    to,
                    msg: message(msg),
                }),
                Output::Multicast { to, msg } => self.queue.push_back(Output::Multicast {
                    to,
                    msg: message(msg),
                }),
                Output::SetTimer { timer: t, at } => self.set_timer(timer(t), at),
                Output::CancelTimer { timer: t } => self.cancel_timer(timer(t)),
                Output::Event(e) => {
                    if let Some(e) = event(e) {
                        self.event(e);
                    }
                }
                Output::Persist { record, token } => self.persist_for(component, &record, token),
                Output::Compact { before } => {
                    let ours = self
                        .done
                        .get(&component)
                        .and_then(|d| d.iter().find(|(theirs, _)| *theirs == before))
                        .map(|&(_, ours)| ours);
                    if let Some(ours) = ours {
                        if let Some(d) = self.done.get_mut(&component) {
                            d.retain(|&(_, o)| o >= ours);
                        }
                        self.marks.insert(component, Mark::From(ours));
                        self.emit_compaction();
                    }
                }
            }
        }
    }

    fn persist_for(&mut self, component: Component, record: &Bytes, theirs: PersistToken) {
        let token = self.token();
        self.routes.insert(token, (component, theirs));
        self.marks.entry(component).or_insert(Mark::From(token));
        self.queue.push_back(Output::Persist {
            record: record::tag(component, record),
            token,
        });
    }

    fn token(&mut self) -> PersistToken {
        self.next_token += 1;
        PersistToken(self.next_token)
    }

    /// Asks the environment to drop what no component needs any more.
    fn emit_compaction(&mut self) {
        let mut oldest = None;
        for mark in self.marks.values() {
            match *mark {
                Mark::Start => return,
                Mark::From(t) => oldest = Some(oldest.map_or(t, |o: PersistToken| o.min(t))),
            }
        }
        let Some(before) = oldest else { return };
        if self.compacted.is_some_and(|c| c >= before) {
            return;
        }
        self.compacted = Some(before);
        tracing::debug!(target: "ft::protocol", before = before.0, "log compacted");
        self.queue.push_back(Output::Compact { before });
    }
}

impl std::ops::AddAssign for Counters {
    /// Adds an embedded core's counters to the outer core's.
    fn add_assign(&mut self, other: Counters) {
        self.messages_sent += other.messages_sent;
        self.messages_received += other.messages_received;
        self.messages_dropped += other.messages_dropped;
        self.retransmissions += other.retransmissions;
        self.timers_fired += other.timers_fired;
        self.persists += other.persists;
        self.compactions += other.compactions;
    }
}

#[cfg(test)]
mod tests;

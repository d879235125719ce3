//! A harness for a core's unit tests (feature `testing`): feed it messages,
//! inputs, timers and completed persists by hand, and look at what it asked
//! for, grouped by kind.
//!
//! ```
//! # use std::time::{Duration, Instant};
//! # use ft_core::{Counters, NodeId, Outbox, Output, PersistToken, Protocol, Recover, RecoveryContext, RecoveryError};
//! use ft_core::harness::Harness;
//!
//! /// Answers every message with its double.
//! #[derive(Debug)]
//! struct Doubler(Outbox<Doubler>);
//! impl Protocol for Doubler {
//!     type Message = u64; type Input = (); type Event = u64; type Timer = ();
//!     fn handle_message(&mut self, _: Instant, from: NodeId, n: u64) {
//!         self.0.received();
//!         self.0.send(from, 2 * n);
//!         self.0.event(n);
//!     }
//!     fn handle_input(&mut self, _: Instant, _: ()) {}
//!     fn handle_timer(&mut self, _: Instant, _: ()) {}
//!     fn handle_persisted(&mut self, _: Instant, _: PersistToken) {}
//!     fn poll_output(&mut self) -> Option<Output<Self>> { self.0.pop() }
//!     fn counters(&self) -> Counters { self.0.counters() }
//! }
//! impl Recover for Doubler {
//!     type Config = ();
//!     fn recover(_: &(), ctx: RecoveryContext) -> Result<Self, RecoveryError> {
//!         Ok(Doubler(ft_core::Outbox::recovered(&ctx)))
//!     }
//! }
//!
//! let mut h = Harness::<Doubler>::new(&(), NodeId(1));
//! let out = h.message(NodeId(2), 21).drain();
//! assert_eq!(out.sends, vec![(NodeId(2), 42)]);
//! assert_eq!(out.events, vec![21]);
//! assert_eq!(h.core.counters().messages_sent, 1);
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::id::{Incarnation, NodeId};
use crate::protocol::{Output, PersistToken, Protocol, Recover, RecoveryContext};
use crate::record::{self, Record, RecordError, RecoveryError};

/// The seed [`context`] gives a core: fixed, so unit tests are reproducible.
pub const SEED: u64 = 7;

/// A first life of `node`: [`Incarnation::FIRST`], no records, seed
/// [`SEED`], now.
pub fn context(node: NodeId) -> RecoveryContext {
    RecoveryContext {
        node,
        incarnation: Incarnation::FIRST,
        records: Vec::new(),
        seed: SEED,
        now: Instant::now(),
    }
}

/// What a core asked for, grouped by kind, in the order asked within each.
#[derive(Debug)]
pub struct Drained<P: Protocol> {
    /// Messages sent with [`Output::Send`], with their destinations.
    pub sends: Vec<(NodeId, P::Message)>,
    /// Messages sent with [`Output::Multicast`], with their destinations as
    /// the core listed them (duplicates and the core's own node included:
    /// removing duplicates is the environment's job, not the core's).
    pub multicasts: Vec<(Vec<NodeId>, P::Message)>,
    /// Timers set, with their deadlines.
    pub timers_set: Vec<(P::Timer, Instant)>,
    /// Timers cancelled.
    pub timers_cancelled: Vec<P::Timer>,
    /// Records to persist, with their tokens.
    pub persists: Vec<(PersistToken, Bytes)>,
    /// Compactions asked for.
    pub compactions: Vec<PersistToken>,
    /// Events for the application.
    pub events: Vec<P::Event>,
}

impl<P: Protocol> Default for Drained<P> {
    fn default() -> Self {
        Drained {
            sends: Vec::new(),
            multicasts: Vec::new(),
            timers_set: Vec::new(),
            timers_cancelled: Vec::new(),
            persists: Vec::new(),
            compactions: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<P: Protocol> Drained<P> {
    /// The messages sent to `to` with [`Output::Send`] (multicasts are in
    /// [`multicasts`](Self::multicasts)).
    pub fn sent_to(&self, to: NodeId) -> Vec<&P::Message> {
        self.sends
            .iter()
            .filter(|(t, _)| *t == to)
            .map(|(_, m)| m)
            .collect()
    }

    /// The records persisted, decoded as `R` (a test of what a core writes).
    ///
    /// # Errors
    /// The first record that does not decode.
    pub fn records<R: Record>(&self) -> Result<Vec<R>, RecordError> {
        self.persists
            .iter()
            .map(|(_, r)| record::decode(r.clone()))
            .collect()
    }

    /// Whether nothing at all was asked for.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
            && self.multicasts.is_empty()
            && self.timers_set.is_empty()
            && self.timers_cancelled.is_empty()
            && self.persists.is_empty()
            && self.compactions.is_empty()
            && self.events.is_empty()
    }
}

/// One core under test, with its clock and what it asked for since the
/// last [`drain`](Harness::drain). Every `handle_*` call is followed by
/// polling the core dry, as an environment must.
#[derive(Debug)]
pub struct Harness<P: Protocol> {
    /// The core, for its getters (and anything the harness does not do).
    pub core: P,
    /// The time handed to the core's next call.
    pub now: Instant,
    outputs: Vec<Output<P>>,
}

impl<P: Recover> Harness<P> {
    /// A first life of `node` ([`context`]).
    ///
    /// # Panics
    /// If the core refuses to start with no records.
    pub fn new(config: &P::Config, node: NodeId) -> Self {
        Harness::recover(config, context(node)).expect("a first life recovers from nothing")
    }

    /// The core rebuilt from `ctx`.
    ///
    /// # Errors
    /// What the core's recovery fails with.
    pub fn recover(config: &P::Config, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let now = ctx.now;
        let core = P::recover(config, ctx)?;
        Ok(Harness::with_core(core, now))
    }
}

impl<P: Protocol> Harness<P> {
    /// A harness around a core built by hand, at `now`.
    pub fn with_core(core: P, now: Instant) -> Self {
        let mut h = Harness {
            core,
            now,
            outputs: Vec::new(),
        };
        h.poll();
        h
    }

    fn poll(&mut self) {
        while let Some(o) = self.core.poll_output() {
            self.outputs.push(o);
        }
    }

    /// Moves the clock on by `d`.
    pub fn advance(&mut self, d: Duration) -> &mut Self {
        self.now += d;
        self
    }

    /// Hands the core `msg` from `from`.
    pub fn message(&mut self, from: NodeId, msg: P::Message) -> &mut Self {
        self.core.handle_message(self.now, from, msg);
        self.poll();
        self
    }

    /// Hands the core `input`.
    pub fn input(&mut self, input: P::Input) -> &mut Self {
        self.core.handle_input(self.now, input);
        self.poll();
        self
    }

    /// Fires `timer`.
    pub fn timer(&mut self, timer: P::Timer) -> &mut Self {
        self.core.handle_timer(self.now, timer);
        self.poll();
        self
    }

    /// Tells the core the record of `token` is durable.
    pub fn persisted(&mut self, token: PersistToken) -> &mut Self {
        self.core.handle_persisted(self.now, token);
        self.poll();
        self
    }

    /// Makes every record asked for so far durable, in order (the records
    /// stay in what the next [`drain`](Self::drain) returns); returns how
    /// many. Persists asked for meanwhile are completed too.
    pub fn complete_persists(&mut self) -> usize {
        let mut done = 0;
        let mut seen = 0;
        loop {
            let tokens: Vec<PersistToken> = self.outputs[seen..]
                .iter()
                .filter_map(|o| match o {
                    Output::Persist { token, .. } => Some(*token),
                    _ => None,
                })
                .collect();
            seen = self.outputs.len();
            if tokens.is_empty() {
                return done;
            }
            for t in tokens {
                done += 1;
                self.persisted(t);
            }
        }
    }

    /// Everything asked for since the last drain, as it came.
    pub fn take(&mut self) -> Vec<Output<P>> {
        std::mem::take(&mut self.outputs)
    }

    /// Everything asked for since the last drain, grouped by kind.
    pub fn drain(&mut self) -> Drained<P> {
        let mut d = Drained::default();
        for o in self.take() {
            match o {
                Output::Send { to, msg } => d.sends.push((to, msg)),
                Output::Multicast { to, msg } => d.multicasts.push((to, msg)),
                Output::SetTimer { timer, at } => d.timers_set.push((timer, at)),
                Output::CancelTimer { timer } => d.timers_cancelled.push(timer),
                Output::Persist { record, token } => d.persists.push((token, record)),
                Output::Compact { before } => d.compactions.push(before),
                Output::Event(e) => d.events.push(e),
            }
        }
        d
    }
}

//! What invariants see: the nodes, their storage, the events, the counters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Protocol};
use ft_storage::MemLog;

use crate::adversary::Adversary;

use crate::plan::{NodeFaults, nanos};
use crate::stats::Stats;

/// An event a core emitted, with when and where.
#[derive(Clone, Debug)]
pub struct Observed<E> {
    /// Virtual (true) time since the start of the run; the emitting node's
    /// own clock read [`World::local_instant_at`] then.
    pub at: Duration,
    /// The node whose core emitted it.
    pub node: NodeId,
    /// The node's incarnation at the time.
    pub incarnation: Incarnation,
    /// The event.
    pub event: E,
}

pub(crate) struct Node<P: Protocol> {
    pub(crate) core: Option<P>,
    pub(crate) incarnation: Incarnation,
    /// What stable storage holds: only records whose persist completed.
    /// The node's stable storage: written records become durable when
    /// their sync completes; a crash keeps only those.
    pub(crate) disk: MemLog,
    pub(crate) timers: BTreeMap<P::Timer, u64>,
    /// This life's persists and where they went, oldest first, to carry
    /// out the core's compactions.
    pub(crate) lsns: std::collections::VecDeque<(ft_core::PersistToken, ft_core::Lsn)>,
    pub(crate) last_persist_at: Duration,
    pub(crate) faults: NodeFaults,
    pub(crate) adversary: Option<Box<dyn Adversary<P::Message>>>,
}

/// Everything invariants may look at: the nodes, their storage, the events
/// emitted so far, the counters.
pub struct World<P: Protocol> {
    pub(crate) base: Instant,
    pub(crate) now: Duration,
    pub(crate) ids: Vec<NodeId>,
    pub(crate) nodes: Vec<Node<P>>,
    pub(crate) events: Vec<Observed<P::Event>>,
    pub(crate) stats: Stats,
}

impl<P: Protocol> World<P> {
    /// Virtual time since the start of the run.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// True time as an `Instant`: what the cores of every node without a
    /// [clock fault](crate::plan::ClockFault) are handed now.
    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// What `node`'s own clock reads now: the `now` its cores are handed.
    pub fn local_instant(&self, node: NodeId) -> Instant {
        self.local_instant_at(node, self.now)
    }

    /// What `node`'s own clock read (or will read) at virtual time `at`
    /// since the start of the run, e.g. at an [`Observed::at`]. Equal to
    /// `instant() - now() + at` for a node without a clock fault.
    pub fn local_instant_at(&self, node: NodeId, at: Duration) -> Instant {
        self.clock_at(node.0 as usize, at)
    }

    /// Node `i`'s clock at true time `at` (true time if it has no clock, or
    /// `i` is out of range).
    pub(crate) fn clock_at(&self, i: usize, at: Duration) -> Instant {
        match self.nodes.get(i).and_then(|n| n.faults.clock) {
            None => self.base + at,
            Some(clock) => {
                let local = clock.local_nanos(at);
                // `base` lies beyond the furthest offset behind (see
                // `Sim::new`), so a negative reading stays representable.
                let magnitude = nanos(local.unsigned_abs());
                if local < 0 {
                    self.base - magnitude
                } else {
                    self.base + magnitude
                }
            }
        }
    }

    /// The true time at which node `i`'s timer for local instant `at` fires:
    /// when the node's clock first reads `at`, but never in the past.
    pub(crate) fn timer_due(&self, i: usize, at: Instant) -> Duration {
        let due = match self.nodes[i].faults.clock {
            None => at.saturating_duration_since(self.base),
            Some(clock) => {
                let local = match at.checked_duration_since(self.base) {
                    Some(d) => d.as_nanos() as i128,
                    None => -((self.base - at).as_nanos() as i128),
                };
                clock.true_time(local)
            }
        };
        due.max(self.now)
    }

    /// Every node of the run.
    pub fn node_ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// The core of `node`, or `None` while it is down.
    pub fn core(&self, node: NodeId) -> Option<&P> {
        self.nodes.get(node.0 as usize)?.core.as_ref()
    }

    /// The cores of every node that is up.
    pub fn cores(&self) -> impl Iterator<Item = (NodeId, &P)> {
        self.ids
            .iter()
            .zip(&self.nodes)
            .filter_map(|(id, n)| n.core.as_ref().map(|c| (*id, c)))
    }

    /// Whether `node` is up.
    pub fn is_up(&self, node: NodeId) -> bool {
        self.core(node).is_some()
    }

    /// The current incarnation of `node`.
    pub fn incarnation(&self, node: NodeId) -> Incarnation {
        self.nodes
            .get(node.0 as usize)
            .map_or(Incarnation::FIRST, |n| n.incarnation)
    }

    /// The records `node`'s stable storage holds (what a restart recovers from).
    pub fn durable_records(&self, node: NodeId) -> Vec<Bytes> {
        self.nodes
            .get(node.0 as usize)
            .map_or(Vec::new(), |n| n.disk.durable())
    }

    /// Every event emitted so far (if [`SimConfig::record_events`](crate::SimConfig::record_events)).
    pub fn events(&self) -> &[Observed<P::Event>] {
        &self.events
    }

    /// The counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

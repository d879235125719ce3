//! What invariants see: the nodes, their storage, the events, the counters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Protocol};
use ft_storage::MemLog;

use crate::adversary::Adversary;

use crate::plan::NodeFaults;
use crate::stats::Stats;

/// An event a core emitted, with when and where.
#[derive(Clone, Debug)]
pub struct Observed<E> {
    /// Virtual time since the start of the run.
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

    /// The `Instant` the cores were last handed.
    pub fn instant(&self) -> Instant {
        self.base + self.now
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

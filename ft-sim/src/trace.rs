//! The run's trace: a digest of every step, and the last steps in full.
//!
//! Every step folds into a 64-bit digest (FNV-1a), so two runs can be
//! compared for determinism without storing them. The last few steps are kept
//! as structured entries and only formatted when a run fails, which keeps
//! tracing off the hot path.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use ft_core::{Incarnation, NodeId};

/// One step of a run, as kept for reports.
#[derive(Clone, Debug)]
pub(crate) struct TraceEntry<T> {
    /// Virtual time of the step.
    pub at: Duration,
    /// What happened.
    pub kind: TraceKind<T>,
}

/// What happened in a step.
#[derive(Clone, Debug)]
pub(crate) enum TraceKind<T> {
    /// A frame was handed to the network.
    Send {
        /// Sender.
        from: NodeId,
        /// Destination.
        to: NodeId,
        /// The frame.
        frame: Bytes,
    },
    /// A frame reached a core.
    Deliver {
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
        /// The frame.
        frame: Bytes,
    },
    /// A message was dropped, and why.
    Drop {
        /// Sender.
        from: NodeId,
        /// Destination.
        to: NodeId,
        /// The fault that dropped it.
        why: &'static str,
    },
    /// A timer fired.
    Timer {
        /// The node.
        node: NodeId,
        /// Which timer.
        timer: T,
    },
    /// A record became durable.
    Persisted {
        /// The node.
        node: NodeId,
    },
    /// An application input was handed to a core.
    Input {
        /// The node.
        node: NodeId,
    },
    /// A core emitted an event (its index in the world's event list, when
    /// events are recorded).
    Event {
        /// The node.
        node: NodeId,
        /// Index into [`World::events`](crate::World::events).
        index: Option<usize>,
    },
    /// A node crashed.
    Crash(NodeId),
    /// A node restarted.
    Restart(NodeId, Incarnation),
    /// The network partitioned.
    Partition,
    /// A one-way partition started.
    OneWay,
    /// The network healed.
    Heal,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The digest and the kept entries.
pub(crate) struct Trace<T> {
    digest: u64,
    tail: VecDeque<TraceEntry<T>>,
    tail_len: usize,
    full: Option<Vec<TraceEntry<T>>>,
}

impl<T: Clone> Trace<T> {
    pub(crate) fn new(tail_len: usize, full: bool) -> Self {
        Trace {
            digest: FNV_OFFSET,
            tail: VecDeque::with_capacity(tail_len),
            tail_len,
            full: full.then(Vec::new),
        }
    }

    fn mix(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.digest ^= u64::from(b);
            self.digest = self.digest.wrapping_mul(FNV_PRIME);
        }
    }

    pub(crate) fn record(&mut self, at: Duration, kind: TraceKind<T>) {
        let (tag, a, b, c) = match &kind {
            TraceKind::Send { from, to, frame } => (1, from.0, to.0, frame_check(frame)),
            TraceKind::Deliver { from, to, frame } => (2, from.0, to.0, frame_check(frame)),
            TraceKind::Drop { from, to, why } => (3, from.0, to.0, why.len() as u64),
            TraceKind::Timer { node, .. } => (4, node.0, 0, 0),
            TraceKind::Persisted { node } => (5, node.0, 0, 0),
            TraceKind::Input { node } => (6, node.0, 0, 0),
            TraceKind::Event { node, .. } => (7, node.0, 0, 0),
            TraceKind::Crash(n) => (8, n.0, 0, 0),
            TraceKind::Restart(n, i) => (9, n.0, i.0, 0),
            TraceKind::Partition => (10, 0, 0, 0),
            TraceKind::Heal => (11, 0, 0, 0),
            TraceKind::OneWay => (12, 0, 0, 0),
        };
        self.mix(at.as_nanos() as u64);
        self.mix(tag);
        self.mix(a);
        self.mix(b);
        self.mix(c);
        if let Some(full) = &mut self.full {
            full.push(TraceEntry {
                at,
                kind: kind.clone(),
            });
        }
        if self.tail_len > 0 {
            if self.tail.len() == self.tail_len {
                self.tail.pop_front();
            }
            self.tail.push_back(TraceEntry { at, kind });
        }
    }

    pub(crate) fn digest(&self) -> u64 {
        self.digest
    }

    pub(crate) fn tail(&self) -> impl Iterator<Item = &TraceEntry<T>> {
        self.tail.iter()
    }

    pub(crate) fn full(&self) -> Option<&[TraceEntry<T>]> {
        self.full.as_deref()
    }
}

/// A frame's own CRC (its last four bytes) stands for its contents in the
/// digest, so hashing a delivery costs nothing extra.
fn frame_check(frame: &Bytes) -> u64 {
    let n = frame.len();
    let mut h = n as u64;
    if n >= 4 {
        h = (h << 32)
            | u64::from(u32::from_le_bytes([
                frame[n - 4],
                frame[n - 3],
                frame[n - 2],
                frame[n - 1],
            ]));
    }
    h
}

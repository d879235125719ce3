//! The [`FailureDetector`] edge trait.

use std::time::Instant;

use crate::id::NodeId;

/// What a failure detector believes about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suspicion {
    /// Heard from recently enough.
    Alive,
    /// Suspected to have failed: it may only be slow, or its messages lost.
    Suspected,
    /// Never heard from: nothing is known yet.
    Unknown,
}

/// A failure detector: decides from the arrival times of signs of life
/// (heartbeats, replies) whether a process is suspected to have failed.
///
/// Synchronous, with `now` passed in, so that a sans-IO core can embed one.
/// A detector can only *suspect*: in an asynchronous system a crashed process
/// cannot be told from a slow one.
pub trait FailureDetector {
    /// `node` showed a sign of life at `now`.
    fn heartbeat(&mut self, node: NodeId, now: Instant);

    /// What the detector believes about `node` at `now`.
    fn suspicion(&self, node: NodeId, now: Instant) -> Suspicion;

    /// Stops tracking `node` (it left the group).
    fn remove(&mut self, node: NodeId);

    /// Whether `node` is suspected at `now`.
    fn is_suspected(&self, node: NodeId, now: Instant) -> bool {
        self.suspicion(node, now) == Suspicion::Suspected
    }
}

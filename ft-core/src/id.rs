//! Identities: which process, and which life of that process.

use std::fmt;

/// The identity of a process (a node) in a group.
///
/// A `NodeId` names a process across its restarts; which *life* of the
/// process sent a message is told apart by its [`Incarnation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl From<u64> for NodeId {
    fn from(v: u64) -> Self {
        NodeId(v)
    }
}

/// The epoch of a process: bumped by one at every restart.
///
/// The incarnation is kept in stable storage, so it survives crashes. Peers
/// compare incarnations to tell a restarted process (whose volatile state,
/// pending calls and sequence numbers are gone) from the one they knew, and
/// to recognise *orphans*: work done on behalf of an older incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// The incarnation of a process that has never restarted.
    pub const FIRST: Incarnation = Incarnation(0);

    /// The incarnation after one more restart.
    ///
    /// Saturates rather than wrapping: a wrapped incarnation would make a new
    /// life look older than the previous one.
    #[must_use]
    pub const fn next(self) -> Incarnation {
        Incarnation(self.0.saturating_add(1))
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_grows_and_never_wraps() {
        assert_eq!(Incarnation::FIRST.next(), Incarnation(1));
        assert!(Incarnation(1) > Incarnation::FIRST);
        assert_eq!(Incarnation(u64::MAX).next(), Incarnation(u64::MAX));
    }

    #[test]
    fn display_is_short() {
        assert_eq!(NodeId(3).to_string(), "n3");
        assert_eq!(Incarnation(2).to_string(), "#2");
    }
}

//! Errors that say what happened to a peer, kept apart because a caller
//! handles each differently.

use std::time::Duration;

use crate::id::{Incarnation, NodeId};

/// What went wrong talking to a peer.
///
/// The variants are the distinctions the subject draws between RPC failures:
/// a server that cannot be located is not one that did not answer in time,
/// and neither is one that answered from a new life.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The peer cannot be located: no route or address is known.
    #[error("{node} is unreachable")]
    Unreachable {
        /// The peer.
        node: NodeId,
    },
    /// No answer came before the deadline; the peer may be slow, its messages
    /// lost, or it may have crashed.
    #[error("{node} did not answer within {after:?}")]
    TimedOut {
        /// The peer.
        node: NodeId,
        /// How long was waited.
        after: Duration,
    },
    /// The peer restarted: its incarnation changed, so state it held for us
    /// is gone.
    #[error("{node} crashed: incarnation {was} is now {now}")]
    Crashed {
        /// The peer.
        node: NodeId,
        /// The incarnation we were talking to.
        was: Incarnation,
        /// The incarnation it has now.
        now: Incarnation,
    },
    /// The peer refused the request as invalid; retrying it will not help.
    #[error("{node} rejected the request: {reason}")]
    Rejected {
        /// The peer.
        node: NodeId,
        /// Why.
        reason: String,
    },
}

impl PeerError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, PeerError::Rejected { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rejection_is_final() {
        let n = NodeId(1);
        assert!(PeerError::Unreachable { node: n }.is_retryable());
        assert!(
            PeerError::TimedOut {
                node: n,
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(
            PeerError::Crashed {
                node: n,
                was: Incarnation(0),
                now: Incarnation(1)
            }
            .is_retryable()
        );
        assert!(
            !PeerError::Rejected {
                node: n,
                reason: "bad".into()
            }
            .is_retryable()
        );
    }
}

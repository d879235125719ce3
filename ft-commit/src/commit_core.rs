//! What every commit core offers a driver: [`CommitCore`].
//!
//! A driver (ft-tokio's `CommitNode`, the benches, the CLI) runs any commit
//! protocol the same way: it feeds [`Input`]s, reads [`Event`]s, and builds
//! the core from its log with [`Recover`]. Beyond that it needs only to
//! know what the log held when the core was rebuilt ([`CommitCore::logged`]),
//! to report the outcomes reached in earlier lives. Adding a protocol to
//! such a driver is implementing this trait.

use ft_core::{Protocol, Recover};

use crate::paxos_commit::{PaxosCommit, RmState};
use crate::three_phase::{CoordState3, PartState3, ThreePhase};
use crate::two_phase::{CoordState, Event, Input, PartState, TwoPhase};
use crate::wire::{TxId, Vote};

/// The role a node plays in a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// It began the transaction.
    Coordinator,
    /// It was asked to vote.
    Participant,
}

/// One transaction as a node's log left it: what a recovered node knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The transaction.
    pub tx: TxId,
    /// This node's role in it (a node that is both has two entries).
    pub role: Role,
    /// The outcome, if the log holds one: for a coordinator its logged
    /// decision, for a participant its COMMIT or ABORT record. `None`: a
    /// coordinator that had not decided (2PC and 3PC abort it now) or a
    /// participant in doubt (READY, or 3PC's PRECOMMIT: it asks the others
    /// now).
    pub outcome: Option<Vote>,
}

/// A commit protocol's core, as a driver runs it: the shared [`Input`] and
/// [`Event`], recovery from the log, and what that log held.
pub trait CommitCore: Protocol<Input = Input, Event = Event> + Recover {
    /// A short name for transcripts ("2PC", "3PC").
    const NAME: &'static str;

    /// Every transaction the core knows, with its role and logged outcome;
    /// right after [`Recover::recover`], what the log held.
    fn logged(&self) -> Vec<Logged>;
}

impl CommitCore for TwoPhase {
    const NAME: &'static str = "2PC";

    fn logged(&self) -> Vec<Logged> {
        let coords = self.coordinated().map(|(tx, state, _)| Logged {
            tx: tx.clone(),
            role: Role::Coordinator,
            outcome: match state {
                CoordState::Commit => Some(Vote::Commit),
                CoordState::Abort => Some(Vote::Abort),
                CoordState::Init | CoordState::Wait => None,
            },
        });
        let parts = self.participating().map(|(tx, state)| Logged {
            tx: tx.clone(),
            role: Role::Participant,
            outcome: match state {
                PartState::Commit => Some(Vote::Commit),
                PartState::Abort => Some(Vote::Abort),
                PartState::Init | PartState::Ready => None,
            },
        });
        coords.chain(parts).collect()
    }
}

impl CommitCore for ThreePhase {
    const NAME: &'static str = "3PC";

    fn logged(&self) -> Vec<Logged> {
        let coords = self.coordinated().map(|(tx, state)| Logged {
            tx: tx.clone(),
            role: Role::Coordinator,
            outcome: match state {
                CoordState3::Commit => Some(Vote::Commit),
                CoordState3::Abort => Some(Vote::Abort),
                CoordState3::Init | CoordState3::Wait | CoordState3::PreCommit => None,
            },
        });
        let parts = self.participating().map(|(tx, state)| Logged {
            tx: tx.clone(),
            role: Role::Participant,
            outcome: match state {
                PartState3::Commit => Some(Vote::Commit),
                PartState3::Abort => Some(Vote::Abort),
                PartState3::Init | PartState3::Ready | PartState3::PreCommit => None,
            },
        });
        coords.chain(parts).collect()
    }
}

impl CommitCore for PaxosCommit {
    const NAME: &'static str = "Paxos Commit";

    fn logged(&self) -> Vec<Logged> {
        // A coordinator that had not learned the outcome runs a ballot of
        // its own on recovery; a Prepared participant waits for the outcome
        // or takes over: both `None` here.
        let coords = self.coordinated().map(|(tx, outcome)| Logged {
            tx: tx.clone(),
            role: Role::Coordinator,
            outcome,
        });
        let parts = self.participating().map(|(tx, state)| Logged {
            tx: tx.clone(),
            role: Role::Participant,
            outcome: match state {
                RmState::Committed => Some(Vote::Commit),
                RmState::Aborted => Some(Vote::Abort),
                RmState::Init | RmState::Prepared => None,
            },
        });
        coords.chain(parts).collect()
    }
}

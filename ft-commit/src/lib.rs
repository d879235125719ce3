#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod commit_core;
pub mod paxos_commit;
pub mod paxos_snapshot;
pub mod paxos_wire;
pub mod resource;
pub mod snapshot;
pub mod three_phase;
pub mod two_phase;
pub mod wire;

pub use commit_core::{CommitCore, Logged, Role};
pub use paxos_commit::{PaxosCommit, PaxosConfig, PaxosTimer, RmState};
pub use paxos_snapshot::{PaxosSnapshot, SnapBegun, SnapInstance, SnapRm};
pub use paxos_wire::{Ballot, PaxosMessage, PaxosRecord, Report, Value};
pub use resource::{Applied, Resource};
pub use three_phase::{
    CoordState3, MAX_SNAPSHOT3_ENTRIES, Message3, PartState3, Record3, Snap3Coord, Snap3Part,
    Snapshot3, ThreePhase, ThreePhaseConfig, ThreePhaseConfigError, Timer3,
};
pub use two_phase::{
    CommitStats, CoordState, Event, Input, PartState, Timer, TwoPhase, TwoPhaseConfig,
};
pub use wire::{
    DecisionEntry, LogRecord, MAX_BATCH, MAX_PARTICIPANTS, MAX_TX_ID, Message, PeerState, TxId,
    TxIdTooLong, Vote,
};

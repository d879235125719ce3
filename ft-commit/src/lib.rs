#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod paxos_commit;
pub mod paxos_wire;
pub mod three_phase;
pub mod two_phase;
pub mod wire;

pub use paxos_commit::{PaxosCommit, PaxosConfig, PaxosTimer, RmState};
pub use paxos_wire::{Ballot, PaxosMessage, PaxosRecord, Report, Value};
pub use three_phase::{
    CoordState3, Message3, PartState3, Record3, ThreePhase, ThreePhaseConfig, Timer3,
};
pub use two_phase::{
    CommitStats, CoordState, Event, Input, PartState, Timer, TwoPhase, TwoPhaseConfig,
};
pub use wire::{
    LogRecord, MAX_PARTICIPANTS, MAX_TX_ID, Message, PeerState, TxId, TxIdTooLong, Vote,
};

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod two_phase;
pub mod wire;

pub use two_phase::{
    CommitStats, CoordState, Event, Input, PartState, Timer, TwoPhase, TwoPhaseConfig,
};
pub use wire::{
    LogRecord, MAX_PARTICIPANTS, MAX_TX_ID, Message, PeerState, TxId, TxIdTooLong, Vote,
};

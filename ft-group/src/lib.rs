#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod agreement;
pub mod detector;
pub mod group;
pub mod heartbeat;
pub mod membership;
mod recovery;
#[cfg(feature = "scenarios")]
pub mod side_by_side;
pub mod sizing;
pub mod swim;
pub mod voting;

pub use agreement::{OmConfig, OmEvent, OmGeneral, OmInput, OmMessage};
pub use detector::{FixedTimeout, PhiAccrual, PhiConfig};
pub use group::{Group, GroupConfig, GroupEvent, Structure};
pub use heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent, Heartbeating};
pub use membership::{Change, Member, MemberState, Membership, Rumor};
pub use sizing::{Masking, SizingError};
pub use swim::{OnDeclaredFailed, Swim, SwimConfig, SwimEvent, SwimInput, SwimMessage};
pub use voting::{Majority, NoMajority, majority, tmr};

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod causal;
pub mod core;
pub mod fec;
pub mod group;
pub mod header;
mod history;
pub mod message;
mod receive;
mod srm;
pub mod total;
pub mod tree;

pub use crate::core::{
    Held, McastConfig, McastEvent, McastInput, McastStats, McastTimer, Multicast, Refusal,
};
pub use causal::{Order, Ordered, OrderedEvent, OrderedInput, OrderedStats};
pub use fec::{Fec, FecMode};
pub use group::{Feedback, GroupConfig, GroupId, Spread, Srm};
pub use message::McastMessage;
pub use tree::{Tree, TreeStats};

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod heartbeat;

pub use heartbeat::{
    Beat, Heartbeat, HeartbeatConfig, HeartbeatEvent, HeartbeatInput, HeartbeatRecord,
};

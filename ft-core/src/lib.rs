#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod channel;
pub mod clock;
pub mod completion;
pub mod compose;
pub mod detector;
pub mod driver;
pub mod failure;
pub mod frame;
pub mod guide;
#[cfg(any(test, feature = "testing"))]
pub mod harness;
pub mod id;
pub mod life;
pub mod mem;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod protocol;
pub mod record;
pub mod rng;
pub mod storage;
mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wire;

pub use channel::{BatchError, Channel, ChannelError};
pub use clock::Clock;
pub use completion::{Completion, CompletionTable};
pub use compose::{Outbox, Persisted};
pub use detector::{FailureDetector, Suspicion};
pub use driver::{DriverConfig, DriverError, DriverStats, Handle, InputSender, StatsReader};
pub use failure::{FailureModel, FailureSemantics, Omission, Response};
pub use frame::FrameCodec;
pub use id::{Incarnation, NodeId};
pub use mem::{MemChannel, MemNetwork, MemStats};
pub use protocol::{Counters, Output, PersistToken, Protocol, Recover, RecoveryContext};
pub use record::{Component, Record, RecordError, RecoveryError};
pub use storage::{Lsn, StableLog, StableStore, StorageError};
pub use wire::{DecodeError, Wire};

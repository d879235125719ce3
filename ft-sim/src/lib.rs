#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod adversary;
pub mod plan;
pub mod report;
pub mod rng;
pub mod sim;
pub mod stats;
pub mod trace;
pub mod world;

pub use adversary::{Adversary, AdversaryCtx, Forged};
pub use plan::{
    Byzantine, ClockFault, Delay, FaultEvent, FaultPlan, LinkFaults, NetworkFaults, NodeFaults,
    OmissionWindow, RandomCrashes,
};
pub use report::{Failure, RunReport, SelfCheckError, self_check};
pub use rng::SimRng;
pub use sim::{Sim, SimConfig};
pub use stats::Stats;
pub use world::{Observed, World};

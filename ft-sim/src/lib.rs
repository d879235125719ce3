#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod adversary;
mod plan;
mod report;
mod rng;
mod sim;
mod stats;
mod trace;
mod world;

pub use adversary::{Adversary, AdversaryCtx, Forged};
pub use plan::{
    Byzantine, ClockFault, Delay, FaultEvent, FaultPlan, LinkFaults, NetworkFaults, NodeFaults,
    OmissionWindow, RandomCrashes,
};
pub use report::{Failure, RunReport, SelfCheckError, self_check};
pub use rng::SimRng;
pub use sim::{LinkModel, Sim, SimConfig};
pub use stats::Stats;
pub use world::{Observed, World};

//! Shared helpers: the heartbeat protocol under a plan, with its invariants.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use ft_core::NodeId;
use ft_demo::heartbeat::{self, Heartbeat, HeartbeatConfig, HeartbeatEvent};
use ft_sim::{FaultPlan, Sim, SimConfig, World};

pub const MS: Duration = Duration::from_millis(1);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A heartbeat run with the sequence-reuse invariant installed.
pub fn sim(seed: u64, nodes: usize, plan: FaultPlan) -> Sim<Heartbeat> {
    sim_with(
        SimConfig::new(seed, nodes),
        HeartbeatConfig::new(nodes),
        plan,
    )
}

pub fn sim_with(config: SimConfig, hb: HeartbeatConfig, plan: FaultPlan) -> Sim<Heartbeat> {
    heartbeat::sim(config, hb, plan)
}

/// Whether `observer` ever suspected `target` (in any life).
pub fn suspected(w: &World<Heartbeat>, observer: u64, target: u64) -> bool {
    w.events()
        .iter()
        .any(|o| o.node == NodeId(observer) && o.event == HeartbeatEvent::Suspected(NodeId(target)))
}

/// Whether `observer` suspected `target` within `[from, until)`.
pub fn suspected_between(
    w: &World<Heartbeat>,
    observer: u64,
    target: u64,
    from: Duration,
    until: Duration,
) -> bool {
    w.events().iter().any(|o| {
        o.node == NodeId(observer)
            && o.event == HeartbeatEvent::Suspected(NodeId(target))
            && o.at >= from
            && o.at < until
    })
}

/// Whether `observer` currently suspects `target`.
pub fn suspects_now(w: &World<Heartbeat>, observer: u64, target: u64) -> bool {
    w.core(NodeId(observer))
        .is_some_and(|c| c.suspects().contains(&NodeId(target)))
}

pub fn any_suspicion(w: &World<Heartbeat>) -> bool {
    w.events()
        .iter()
        .any(|o| matches!(o.event, HeartbeatEvent::Suspected(_)))
}

pub fn sum(w: &World<Heartbeat>, f: impl Fn(&Heartbeat) -> u64) -> u64 {
    w.cores().map(|(_, c)| f(c)).sum()
}

//! Shared helpers: the heartbeat protocol under a plan, with its invariants.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use ft_core::NodeId;
use ft_sim::heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent};
use ft_sim::{FaultPlan, Sim, SimConfig, World};

pub const MS: Duration = Duration::from_millis(1);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A heartbeat run with the sequence-reuse invariant installed.
pub fn sim(seed: u64, nodes: usize, plan: FaultPlan) -> Sim<Heartbeat> {
    sim_with(SimConfig::new(seed, nodes), HeartbeatConfig::new(nodes), plan)
}

///
/// Senders with value or arbitrary failures are exempt: a wrong value is
/// exactly what such a sender is allowed to produce.
pub fn sim_with(config: SimConfig, hb: HeartbeatConfig, plan: FaultPlan) -> Sim<Heartbeat> {
    let honest: Vec<NodeId> = (0..config.nodes as u64)
        .map(NodeId)
        .filter(|n| {
            plan.nodes
                .get(n)
                .is_none_or(|f| f.value_corruption == 0.0 && f.byzantine.is_none())
        })
        .collect();
    let mut s = Sim::new(config, hb, plan);
    s.invariant("sequence numbers are never reused across crashes", move |w| no_reuse(w, &honest));
    s
}

pub fn no_reuse(w: &World<Heartbeat>, senders: &[NodeId]) -> Result<(), String> {
    for (id, core) in w.cores() {
        for &from in senders {
            let n = core.reuse_violations_from(from);
            if n > 0 {
                return Err(format!(
                    "{id} received {n} pings from {from} whose sequence number an earlier life of {from} had used"
                ));
            }
        }
    }
    Ok(())
}

/// Whether `observer` ever suspected `target` (in any life).
pub fn suspected(w: &World<Heartbeat>, observer: u64, target: u64) -> bool {
    w.events()
        .iter()
        .any(|o| o.node == NodeId(observer) && o.event == HeartbeatEvent::Suspected(NodeId(target)))
}

/// Whether `observer` suspected `target` within `[from, until)`.
pub fn suspected_between(w: &World<Heartbeat>, observer: u64, target: u64, from: Duration, until: Duration) -> bool {
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

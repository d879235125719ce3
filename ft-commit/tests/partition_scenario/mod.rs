//! The partition scenario of the honest-limits demonstration, reusable by
//! every commit protocol that speaks [`Input`] / [`Event`] (2PC and 3PC in
//! `tests/partition.rs`; a Paxos Commit test can run the very same
//! scenario with `mod partition_scenario;`).
//!
//! Coordinator n0, participants n1..n3, one transaction, every participant
//! votes commit. The links n0 → n2 and n0 → n3 are slow ([`SLOW`] more than
//! n0 → n1), so each phase of the coordinator reaches n1 first. A first,
//! fault-free run finds the moment n1 has moved one step further than n2
//! and n3 (the caller's `ahead`, e.g. n1 has PRECOMMIT durable); the real
//! run, identical up to then (same seed, same plan before it), splits the
//! network {n0, n1} | {n2, n3} [`SPLIT_AFTER`] later, while the slow
//! messages to n2 and n3 are still in flight (a partition drops them on
//! delivery), and heals it [`PARTITION`] later (minutes of simulated time).
//! It then runs [`AFTER_HEAL`] more.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ft_commit::{Event, Input, TxId, Vote};
use ft_core::{NodeId, Protocol, Recover};
use ft_sim::{Delay, FaultPlan, LinkFaults, Sim, SimConfig, Stats, World};

/// The coordinator.
pub(crate) const COORDINATOR: NodeId = NodeId(0);
/// The participant that gets each phase first, on the coordinator's side.
pub(crate) const AHEAD: NodeId = NodeId(1);
/// The participants cut off with each other.
pub(crate) const BEHIND: [NodeId; 2] = [NodeId(2), NodeId(3)];
/// Extra delay on n0 → n2 and n0 → n3.
pub(crate) const SLOW: Duration = Duration::from_millis(20);
/// How long after `ahead` first holds the network splits.
pub(crate) const SPLIT_AFTER: Duration = Duration::from_millis(1);
/// How long the partition lasts.
pub(crate) const PARTITION: Duration = Duration::from_secs(180);
/// How long the run goes on after the heal.
pub(crate) const AFTER_HEAL: Duration = Duration::from_secs(10);
/// The seed (the network here has no randomness but the simulator's).
pub(crate) const SEED: u64 = 7;

/// The transaction.
pub(crate) fn tx() -> TxId {
    TxId::new(&b"partitioned"[..]).unwrap()
}

/// What happened, for the caller to assert and print.
#[derive(Debug)]
pub(crate) struct Report<S> {
    /// When the network split (from the start of the run).
    pub(crate) split_at: Duration,
    /// When it healed.
    pub(crate) heal_at: Duration,
    /// The caller's look at the world the moment the split happened.
    pub(crate) at_split: S,
    /// Outcomes told while partitioned (`Commit` / `Abort` at a participant,
    /// `Decided` at the coordinator), per node.
    pub(crate) during: BTreeMap<NodeId, BTreeSet<Vote>>,
    /// Outcomes told over the whole run, per node.
    pub(crate) overall: BTreeMap<NodeId, BTreeSet<Vote>>,
    /// Nodes that told `Event::Blocked` while partitioned.
    pub(crate) blocked: BTreeSet<NodeId>,
    /// The simulator's counts (the partition, messages it dropped).
    pub(crate) stats: Stats,
}

impl<S> Report<S> {
    /// Whether some node committed and another aborted (an atomicity
    /// violation), over the whole run.
    pub(crate) fn violates_atomicity(&self) -> bool {
        let all: BTreeSet<Vote> = self.overall.values().flatten().copied().collect();
        all.contains(&Vote::Commit) && all.contains(&Vote::Abort)
    }
}

fn plan(split: Option<Duration>) -> FaultPlan {
    let mut plan = FaultPlan::none();
    for b in BEHIND {
        *plan.link(COORDINATOR, b) = LinkFaults {
            extra_delay: Some(Delay::Fixed(SLOW)),
            loss: 0.0,
        };
    }
    if let Some(at) = split {
        plan.partition(
            vec![vec![COORDINATOR, AHEAD], BEHIND.to_vec()],
            at,
            at + PARTITION,
        );
    }
    plan
}

/// Runs `sim` until `stop` holds (or `until`), voting commit on every
/// prepare and calling `each` after every step.
fn drive<P>(
    sim: &mut Sim<P>,
    until: Duration,
    mut stop: impl FnMut(&Sim<P>) -> bool,
    mut each: impl FnMut(&Sim<P>),
) where
    P: Protocol<Input = Input, Event = Event> + Recover + 'static,
{
    let mut seen = 0;
    while sim.now() < until && !stop(sim) {
        match sim.step() {
            Ok(true) => {}
            Ok(false) => break,
            Err(f) => panic!("{f}"),
        }
        let now = sim.now();
        let asks: Vec<(NodeId, TxId)> = sim.world().events()[seen..]
            .iter()
            .filter_map(|o| match &o.event {
                Event::Prepare { tx } => Some((o.node, tx.clone())),
                _ => None,
            })
            .collect();
        seen = sim.world().events().len();
        for (node, tx) in asks {
            sim.input(
                now,
                node,
                Input::Voted {
                    tx,
                    vote: Vote::Commit,
                },
            );
        }
        each(sim);
    }
}

fn begin<P>(config: &P::Config, split: Option<Duration>) -> Sim<P>
where
    P: Protocol<Input = Input, Event = Event> + Recover + 'static,
    P::Config: Clone,
{
    let mut sim = Sim::<P>::new(SimConfig::new(SEED, 4), config.clone(), plan(split));
    sim.input(
        Duration::ZERO,
        COORDINATOR,
        Input::Begin {
            tx: tx(),
            participants: vec![AHEAD, BEHIND[0], BEHIND[1]],
        },
    );
    sim
}

/// Runs the scenario for protocol `P` with `config`. `ahead` says when n1
/// is one step further than n2 and n3 (checked after every step of the
/// fault-free run); `look` describes the world the moment the network
/// splits (for the caller to assert that the split fell where it meant).
pub(crate) fn run<P, S>(
    config: P::Config,
    ahead: impl Fn(&World<P>) -> bool,
    look: impl Fn(&World<P>) -> S,
) -> Report<S>
where
    P: Protocol<Input = Input, Event = Event> + Recover + 'static,
    P::Config: Clone,
{
    // Fault-free: when is n1 one step ahead?
    let mut dry = begin::<P>(&config, None);
    drive(
        &mut dry,
        Duration::from_secs(10),
        |s| ahead(s.world()),
        |_| {},
    );
    assert!(ahead(dry.world()), "n1 never got ahead");
    let split_at = dry.now() + SPLIT_AFTER;
    let heal_at = split_at + PARTITION;

    let mut sim = begin::<P>(&config, Some(split_at));
    let mut at_split = None;
    drive(
        &mut sim,
        heal_at + AFTER_HEAL,
        |_| false,
        |s| {
            if at_split.is_none() && s.stats().partitions > 0 {
                at_split = Some(look(s.world()));
            }
        },
    );
    let mut during: BTreeMap<NodeId, BTreeSet<Vote>> = BTreeMap::new();
    let mut overall: BTreeMap<NodeId, BTreeSet<Vote>> = BTreeMap::new();
    let mut blocked = BTreeSet::new();
    for o in sim.world().events() {
        let partitioned = o.at >= split_at && o.at < heal_at;
        let outcome = match &o.event {
            Event::Commit { .. }
            | Event::Decided {
                outcome: Vote::Commit,
                ..
            } => Vote::Commit,
            Event::Abort { .. }
            | Event::Decided {
                outcome: Vote::Abort,
                ..
            } => Vote::Abort,
            Event::Blocked { .. } => {
                if partitioned {
                    blocked.insert(o.node);
                }
                continue;
            }
            _ => continue,
        };
        overall.entry(o.node).or_default().insert(outcome);
        if partitioned {
            during.entry(o.node).or_default().insert(outcome);
        }
    }
    Report {
        split_at,
        heal_at,
        at_split: at_split.expect("the partition happened"),
        during,
        overall,
        blocked,
        stats: *sim.stats(),
    }
}

//! Paxos Commit in the simulator, over many seeds: 5 nodes, acceptors
//! n1, n2, n3 (F = 1), transactions begun at every node with 2–3
//! participants drawn from all nodes (acceptors and coordinators among
//! them), on a network that loses, duplicates, reorders and corrupts, with
//! a partition {n0, n1} | {n2, n3, n4} that heals, while coordinators,
//! participants and acceptors crash. Three sweeps: every crash temporary;
//! one node (any: a coordinator, an RM, an acceptor) down **for good**
//! beside temporary crashes of the others; and n0 (coordinator of a fifth
//! of the transactions, not an acceptor) **and** one acceptor (F = 1) down
//! for good.
//!
//! After every step: **atomicity** (no transaction committed, or decided
//! commit, at one node and aborted at another) and **validity** (commit
//! only if every participant's application voted commit and its Prepared
//! vote is durable there). At the end, the network calm and every node but
//! the one down for good up: **termination** (every node up holds the
//! outcome of every transaction it coordinates or takes part in, also
//! when its coordinator is the node down for good).
//!
//! `FT_COMMIT_SEEDS=n` runs n seeds (default 8); `COMMIT_SEED=k` runs seed
//! k alone.

mod common;

use common::{Xs, answer_delay, outcome_of, prepares, seeds, vote_of};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ft_commit::{
    CommitStats, Input, PaxosCommit, PaxosConfig, PaxosRecord, RmState, TxId, Value, Vote,
};
use ft_core::NodeId;
use ft_sim::{Delay, FaultPlan, NetworkFaults, Sim, SimConfig, World};

const N: u64 = 5;
const TXS: u64 = 24;

/// Compaction is drawn per seed: off, or a snapshot every 1, 4 or 32
/// records, keeping the last 1024 or only 16 outcomes (fewer than the
/// transactions of a run: outcomes are forgotten mid-run).
fn config(seed: u64) -> PaxosConfig {
    PaxosConfig {
        snapshot_every: [0, 1, 4, 32][(seed % 4) as usize],
        keep_finished: [1024, 16][((seed / 4) % 2) as usize],
        ..PaxosConfig::new(vec![NodeId(1), NodeId(2), NodeId(3)])
    }
}

#[derive(Default)]
struct Checker {
    seed: u64,
    seen: usize,
    participants: BTreeMap<TxId, Vec<NodeId>>,
    committed: BTreeMap<TxId, BTreeSet<NodeId>>,
    aborted: BTreeMap<TxId, BTreeSet<NodeId>>,
    /// Commits whose validity was checked (at their first commit event,
    /// while every vote is still in the logs: compaction may drop it once
    /// the outcome is known everywhere).
    validated: BTreeSet<TxId>,
    checks: u64,
}

fn prepared_durable(w: &World<PaxosCommit>, node: NodeId, tx: &TxId) -> bool {
    w.durable_records(node).into_iter().any(|r| {
        match ft_core::record::decode::<PaxosRecord>(r) {
            Ok(PaxosRecord::Voted {
                tx: t,
                value: Value::Prepared,
                ..
            }) => &t == tx,
            // After compaction the vote lives in the snapshot.
            Ok(PaxosRecord::Snapshot(s)) => s
                .rms
                .iter()
                .any(|r| &r.tx == tx && r.vote == Value::Prepared),
            _ => false,
        }
    })
}

impl Checker {
    fn check(&mut self, w: &World<PaxosCommit>) -> Result<(), String> {
        for o in &w.events()[self.seen..] {
            let Some((tx, commit)) = outcome_of(&o.event) else {
                continue;
            };
            let (mine, other) = if commit {
                (&mut self.committed, &self.aborted)
            } else {
                (&mut self.aborted, &self.committed)
            };
            if let Some(o2) = other.get(tx) {
                return Err(format!(
                    "atomicity: {tx} {} at {} but the opposite at {o2:?}",
                    if commit { "committed" } else { "aborted" },
                    o.node
                ));
            }
            mine.entry(tx.clone()).or_default().insert(o.node);
            if commit && self.validated.insert(tx.clone()) {
                for &p in &self.participants[tx] {
                    if vote_of(self.seed, p, tx) != Vote::Commit {
                        return Err(format!("validity: {tx} committed, {p} votes abort"));
                    }
                    if !prepared_durable(w, p, tx) {
                        return Err(format!("validity: {tx} committed, {p} not Prepared"));
                    }
                }
            }
            self.checks += 1;
        }
        self.seen = w.events().len();
        Ok(())
    }
}

#[derive(Default, Debug)]
struct Totals {
    committed: u64,
    aborted: u64,
    crashes: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    corrupted: u64,
    partitioned: u64,
    persists_lost: u64,
    checks: u64,
    /// Transactions whose coordinator, down for good, never learned the
    /// outcome, though a live participant had voted Prepared and did.
    decided_without_coordinator: u64,
    /// Of those, committed.
    committed_without_coordinator: u64,
    /// Undecided at the end because fewer than F + 1 live acceptors
    /// would answer about them (compaction's liveness cost).
    silenced: u64,
    stats: CommitStats,
}

/// How many nodes stay down for good: none; one (any); or n0 (a
/// coordinator, not an acceptor) and one acceptor (F = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ForGood {
    None,
    Any,
    CoordinatorAndAcceptor,
}

fn run(seed: u64, permanent: ForGood, totals: &mut Totals) {
    let horizon = Duration::from_secs(3);
    let mut x = Xs(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut plan = FaultPlan {
        network: NetworkFaults {
            delay: Delay::Uniform {
                min: Duration::from_micros(500),
                max: Duration::from_millis(5),
            },
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.1,
            reorder_window: Duration::from_millis(10),
            corrupt: 0.005,
            calm_after: Some(horizon),
        },
        ..FaultPlan::default()
    };
    let mut down_for_good: Vec<NodeId> = match permanent {
        ForGood::None => vec![],
        ForGood::Any => vec![NodeId(x.next(N))],
        ForGood::CoordinatorAndAcceptor => vec![NodeId(0), NodeId(1 + x.next(3))],
    };
    for &n in &down_for_good {
        plan.crash(n, Duration::from_millis(50 + x.next(1500)), None);
    }
    down_for_good.sort();
    // Temporary crashes of the other nodes, one at a time, 20–600 ms.
    let mut at = Duration::ZERO;
    loop {
        at += Duration::from_millis(1 + x.next(500));
        let down = Duration::from_millis(20 + x.next(580));
        if at + down >= horizon {
            break;
        }
        let n = NodeId(x.next(N));
        if !down_for_good.contains(&n) {
            plan.crash(n, at, Some(down));
        }
        at += down;
    }
    let cut = Duration::from_millis(200 + x.next(1500));
    plan.partition(
        vec![
            vec![NodeId(0), NodeId(1)],
            vec![NodeId(2), NodeId(3), NodeId(4)],
        ],
        cut,
        cut + Duration::from_millis(300 + x.next(400)),
    );
    let mut sim = Sim::<PaxosCommit>::new(SimConfig::new(seed, N as usize), config(seed), plan);
    let checker = Rc::new(RefCell::new(Checker {
        seed,
        ..Checker::default()
    }));
    let mut coordinators = BTreeMap::new();
    for i in 0..TXS {
        let tx = TxId::new(format!("t{i}")).unwrap();
        let coord = NodeId(i % N);
        let k = 2 + x.next(2);
        let mut parts: Vec<NodeId> = Vec::new();
        while (parts.len() as u64) < k {
            let p = NodeId(x.next(N));
            if !parts.contains(&p) {
                parts.push(p);
            }
        }
        coordinators.insert(tx.clone(), coord);
        checker
            .borrow_mut()
            .participants
            .insert(tx.clone(), parts.clone());
        let at = Duration::from_millis(i * horizon.as_millis() as u64 / TXS);
        for &p in &parts {
            sim.input(
                at,
                p,
                Input::Join {
                    tx: tx.clone(),
                    coordinator: coord,
                },
            );
        }
        sim.input(
            at,
            coord,
            Input::Begin {
                tx,
                participants: parts,
            },
        );
    }
    let c2 = checker.clone();
    sim.invariant("atomicity and validity", move |w| c2.borrow_mut().check(w));
    let end = horizon + Duration::from_secs(4);
    let mut seen = 0;
    while sim.now() < end {
        match sim.step() {
            Ok(true) => {}
            Ok(false) => break,
            Err(f) => panic!("seed {seed} (permanent {permanent:?}): {f}"),
        }
        let now = sim.now();
        for (node, life, tx) in prepares(sim.world(), &mut seen) {
            if let Some(d) = answer_delay(seed, node, &tx, life) {
                let vote = vote_of(seed, node, &tx);
                sim.input(now + d, node, Input::Voted { tx, vote });
            }
        }
    }
    // Termination.
    let w = sim.world();
    let c = checker.borrow();
    for &n in w.node_ids() {
        assert_eq!(
            w.is_up(n),
            !down_for_good.contains(&n),
            "seed {seed}: {n} up or down at the end"
        );
    }
    for (node, core) in w.cores() {
        if down_for_good.contains(&node) {
            continue;
        }
        // The one liveness cost of compaction (crate::paxos_snapshot):
        // fewer than F + 1 acceptors up that would answer a phase 1a about
        // the transaction (the others forgot outcomes and never heard of
        // it, or it left their window).
        let silenced = |tx: &TxId| {
            w.cores()
                .filter(|(n, _)| !down_for_good.contains(n))
                .filter(|(_, c)| c.would_answer(tx))
                .count()
                < 2
        };
        for (tx, o) in core.coordinated() {
            if o.is_none() && silenced(tx) {
                totals.silenced += 1;
                continue;
            }
            assert!(
                o.is_some(),
                "seed {seed} (permanent {permanent:?}): coordinator {node} has no outcome of {tx}"
            );
        }
        for (tx, state) in core.participating() {
            if state == RmState::Prepared && silenced(tx) {
                totals.silenced += 1;
                continue;
            }
            assert!(
                matches!(state, RmState::Committed | RmState::Aborted),
                "seed {seed} (permanent {permanent:?}): {node} has {tx} in {state:?} (coordinator {})",
                coordinators[tx]
            );
        }
        totals.stats += core.stats();
    }
    for &d in &down_for_good {
        // Transactions the coordinator never learned the outcome of (no
        // DECIDED in its log) though a live participant had voted
        // Prepared: decided by a leader that took over.
        let decided_at_d: BTreeSet<TxId> = w
            .durable_records(d)
            .into_iter()
            .flat_map(|r| match ft_core::record::decode::<PaxosRecord>(r) {
                Ok(PaxosRecord::Decided { tx, .. }) => vec![tx],
                Ok(PaxosRecord::Snapshot(s)) => s
                    .begun
                    .into_iter()
                    .filter(|b| b.outcome.is_some())
                    .map(|b| b.tx)
                    .collect(),
                _ => vec![],
            })
            .collect();
        totals.decided_without_coordinator += coordinators
            .iter()
            .filter(|(tx, coord)| {
                **coord == d
                    && !decided_at_d.contains(*tx)
                    && c.participants[*tx].iter().any(|&p| {
                        !down_for_good.contains(&p)
                            && prepared_durable(w, p, tx)
                            && w.core(p)
                                .and_then(|core| core.rm_state(tx))
                                .is_some_and(|s| s == RmState::Committed || s == RmState::Aborted)
                    })
            })
            .count() as u64;
        totals.committed_without_coordinator += coordinators
            .iter()
            .filter(|(tx, coord)| {
                **coord == d && !decided_at_d.contains(*tx) && c.committed.contains_key(*tx)
            })
            .count() as u64;
    }
    totals.committed += c.committed.len() as u64;
    totals.aborted += c.aborted.len() as u64;
    let st = sim.stats();
    totals.crashes += st.crashes;
    totals.lost += st.lost;
    totals.duplicated += st.duplicated;
    totals.reordered += st.reordered;
    totals.corrupted += st.corrupted_in_transit;
    totals.partitioned += st.partitioned;
    totals.persists_lost += st.persists_lost;
    totals.checks += c.checks;
}

fn sweep(permanent: ForGood) -> Totals {
    let mut totals = Totals::default();
    let n = seeds(8);
    let t0 = Instant::now();
    for seed in 0..n {
        if common::skipped(seed) {
            continue;
        }
        run(seed, permanent, &mut totals);
    }
    eprintln!(
        "{n} seeds (down for good: {permanent:?}) in {:.1?}: {totals:#?}",
        t0.elapsed()
    );
    if std::env::var("COMMIT_SEED").is_err() {
        assert!(totals.crashes >= n);
        assert!(totals.lost > 0 && totals.duplicated > 0 && totals.partitioned > 0);
        assert!(totals.reordered > 0 && totals.corrupted > 0);
        assert!(totals.committed > 0 && totals.aborted > 0);
        // Leaders above ballot 0 ran (takeovers and coordinator timeouts).
        assert!(totals.stats.leader_rounds > 0);
        // Compaction happened, and outcomes were forgotten mid-run.
        if n >= 8 {
            assert!(totals.stats.snapshots > 0 && totals.stats.forgotten > 0);
        }
    }
    totals
}

#[test]
fn paxos_commit_is_atomic_valid_and_terminates_through_crashes_and_partitions() {
    sweep(ForGood::None);
}

#[test]
fn paxos_commit_terminates_with_a_node_down_for_good() {
    let t = sweep(ForGood::Any);
    if std::env::var("COMMIT_SEED").is_err() {
        assert!(
            t.decided_without_coordinator > 0,
            "no transaction decided while its coordinator stayed down"
        );
    }
}

#[test]
fn paxos_commit_terminates_with_a_coordinator_and_an_acceptor_down_for_good() {
    let t = sweep(ForGood::CoordinatorAndAcceptor);
    if std::env::var("COMMIT_SEED").is_err() {
        assert!(t.decided_without_coordinator > 0);
    }
}

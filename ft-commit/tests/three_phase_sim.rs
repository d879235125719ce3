//! Three-phase commit in the simulator, over many seeds, under the
//! synchrony 3PC assumes: a reliable network (no loss, no partition,
//! delays of at most 5 ms, far below the timeouts) while nodes crash.
//! Transactions are begun at every node with 2–3 participants drawn from
//! the other nodes; the application votes by a fixed rule (one in eight
//! abort, one prepare in sixteen never answered).
//!
//! After every step: **atomicity** and **validity**, as in the 2PC sweep.
//! Three sweeps: crashes of any node that recover (then every participant
//! decides by the end); the same with the network also **duplicating and
//! reordering** messages (no loss, no partition; a reordered message falls
//! at most 20 ms back, still far below the timeouts); and one coordinator
//! crashed **for good** early on (then every participant that is up still
//! decides: termination while the coordinator stays down).
//!
//! Odd seeds run with **log compaction** drawn per seed (a snapshot
//! every 4–19 records, keeping 4–11 finished transactions per role, so
//! nodes forget and the logs are cut many times per run); the totals show
//! it happened (snapshots cut, outcomes forgotten).
//!
//! `FT_COMMIT_SEEDS=n` runs n seeds (default 8); `COMMIT_SEED=k` runs seed
//! k alone.

mod common;

use common::{Xs, answer_delay, outcome_of, prepares, seeds, vote_of};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use ft_commit::{Input, PartState3, Record3, ThreePhase, ThreePhaseConfig, TxId, Vote};
use ft_core::NodeId;
use ft_sim::{Delay, FaultPlan, NetworkFaults, Sim, SimConfig, World};

const N: u64 = 4;
const TXS: u64 = 24;

#[derive(Default)]
struct Checker {
    seed: u64,
    seen: usize,
    participants: BTreeMap<TxId, Vec<NodeId>>,
    committed: BTreeMap<TxId, BTreeSet<NodeId>>,
    aborted: BTreeMap<TxId, BTreeSet<NodeId>>,
    /// (participant, transaction) whose READY was seen durable: checked
    /// once, at the first commit (later the log may have forgotten it).
    ready: BTreeSet<(NodeId, TxId)>,
    checks: u64,
}

/// The configuration of `seed`: compaction on for odd seeds.
fn config_of(seed: u64) -> ThreePhaseConfig {
    let mut x = Xs(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    let mut c = ThreePhaseConfig::default();
    if seed % 2 == 1 {
        c.snapshot_every = 4 + x.next(16) as u32;
        c.keep_finished = 4 + x.next(8) as usize;
    }
    c
}

/// Whether `node`'s log holds its READY on `tx` (the record, or a snapshot
/// holding the transaction in READY or later).
fn ready_durable(w: &World<ThreePhase>, node: NodeId, tx: &TxId) -> bool {
    w.durable_records(node)
        .into_iter()
        .any(|r| match ft_core::record::decode::<Record3>(r) {
            Ok(Record3::Part { tx: t, state, .. }) => &t == tx && state != PartState3::Abort,
            Ok(Record3::Snapshot(s)) => s
                .parts
                .iter()
                .any(|p| &p.tx == tx && p.state != PartState3::Abort),
            _ => false,
        })
}

impl Checker {
    fn check(&mut self, w: &World<ThreePhase>) -> Result<(), String> {
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
            if commit {
                let parts = &self.participants[tx];
                for &p in parts {
                    if vote_of(self.seed, p, tx) != Vote::Commit {
                        return Err(format!("validity: {tx} committed, {p} votes abort"));
                    }
                    if !self.ready.contains(&(p, tx.clone())) {
                        if !ready_durable(w, p, tx) {
                            return Err(format!("validity: {tx} committed, {p} has no READY"));
                        }
                        self.ready.insert((p, tx.clone()));
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
    duplicated: u64,
    reordered: u64,
    overtaken: u64,
    checks: u64,
    terminated: u64,
    undecided_at_down_nodes: u64,
    compacting_seeds: u64,
    snapshots: u64,
    forgotten: u64,
    /// Log prefixes the simulator dropped at the cores' request.
    compactions: u64,
}

/// One seed. `permanent`: one node crashes for good; otherwise crashes
/// recover. `noisy`: the network also duplicates (5%) and reorders (10%,
/// up to 20 ms back) messages; still no loss and no partition.
fn run(seed: u64, permanent: bool, noisy: bool, totals: &mut Totals) {
    let horizon = Duration::from_secs(3);
    let mut x = Xs(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut plan = FaultPlan {
        network: NetworkFaults {
            delay: Delay::Uniform {
                min: Duration::from_micros(500),
                max: Duration::from_millis(5),
            },
            ..NetworkFaults::default()
        },
        ..FaultPlan::default()
    };
    if noisy {
        plan.network.duplicate = 0.05;
        plan.network.reorder = 0.1;
        plan.network.reorder_window = Duration::from_millis(20);
    }
    let mut down_for_good = None;
    if permanent {
        let n = NodeId(x.next(N));
        plan.crash(n, Duration::from_millis(100 + x.next(1500)), None);
        down_for_good = Some(n);
    } else {
        let mut at = Duration::ZERO;
        loop {
            at += Duration::from_millis(1 + x.next(500));
            let down = Duration::from_millis(20 + x.next(580));
            if at + down >= horizon {
                break;
            }
            plan.crash(NodeId(x.next(N)), at, Some(down));
            at += down;
        }
    }
    let config = config_of(seed);
    totals.compacting_seeds += u64::from(config.keep_finished < 1024);
    let mut sim = Sim::<ThreePhase>::new(SimConfig::new(seed, N as usize), config, plan);
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
            if p != coord && !parts.contains(&p) {
                parts.push(p);
            }
        }
        coordinators.insert(tx.clone(), coord);
        checker
            .borrow_mut()
            .participants
            .insert(tx.clone(), parts.clone());
        sim.input(
            Duration::from_millis(i * horizon.as_millis() as u64 / TXS),
            coord,
            Input::Begin {
                tx,
                participants: parts,
            },
        );
    }
    let c2 = checker.clone();
    sim.invariant("atomicity and validity", move |w| c2.borrow_mut().check(w));
    let end = horizon + Duration::from_secs(3);
    let mut seen = 0;
    while sim.now() < end {
        match sim.step() {
            Ok(true) => {}
            Ok(false) => break,
            Err(f) => panic!("seed {seed} (permanent {permanent}, noisy {noisy}): {f}"),
        }
        let now = sim.now();
        for (node, life, tx) in prepares(sim.world(), &mut seen) {
            if let Some(d) = answer_delay(seed, node, &tx, life) {
                let vote = vote_of(seed, node, &tx);
                sim.input(now + d, node, Input::Voted { tx, vote });
            }
        }
    }
    // Termination: every participant that is up holds an outcome.
    let w = sim.world();
    let c = checker.borrow();
    for (node, core) in w.cores() {
        let up = Some(node) != down_for_good;
        for (tx, state) in core.participating() {
            let decided = matches!(state, PartState3::Commit | PartState3::Abort);
            if !up {
                totals.undecided_at_down_nodes += u64::from(!decided);
                continue;
            }
            assert!(
                decided,
                "seed {seed} (permanent {permanent}, noisy {noisy}): {node} has {tx} in {state:?} \
                 (coordinator {})",
                coordinators[tx]
            );
        }
        totals.terminated += core.stats().terminated_cooperatively;
        totals.snapshots += core.stats().snapshots;
        totals.forgotten += core.stats().forgotten;
    }
    totals.committed += c.committed.len() as u64;
    totals.aborted += c.aborted.len() as u64;
    totals.crashes += sim.stats().crashes;
    totals.duplicated += sim.stats().duplicated;
    totals.reordered += sim.stats().reordered;
    totals.overtaken += sim.stats().overtaken;
    totals.compactions += sim.stats().compactions;
    totals.checks += c.checks;
}

fn sweep(permanent: bool, noisy: bool) {
    let mut totals = Totals::default();
    let n = seeds(8);
    for seed in 0..n {
        if common::skipped(seed) {
            continue;
        }
        run(seed, permanent, noisy, &mut totals);
    }
    eprintln!(
        "{n} seeds (coordinator down for good: {permanent}, duplication and reordering: \
         {noisy}): {totals:#?}"
    );
    if std::env::var("COMMIT_SEED").is_err() {
        assert!(totals.crashes >= n);
        assert!(totals.committed > 0 && totals.aborted > 0);
        if noisy {
            assert!(totals.duplicated > 0 && totals.reordered > 0 && totals.overtaken > 0);
        }
        if totals.compacting_seeds > 0 {
            assert!(totals.snapshots > 0 && totals.forgotten > 0 && totals.compactions > 0);
        }
    }
}

#[test]
fn three_phase_is_atomic_and_terminates_through_crashes() {
    sweep(false, false);
}

#[test]
fn three_phase_is_atomic_and_terminates_through_crashes_duplication_and_reordering() {
    sweep(false, true);
}

#[test]
fn three_phase_terminates_while_a_coordinator_stays_down() {
    sweep(true, false);
}

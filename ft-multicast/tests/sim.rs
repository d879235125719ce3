//! Reliable multicast in the simulator: many seeds of loss, duplication,
//! reordering, corruption, slow members, omission windows, crashes and
//! restarts and healing partitions, with invariants checked after every
//! step, and liveness checked once the faults end.

mod common;

use std::time::Duration;

use bytes::Bytes;
use ft_core::NodeId;
use ft_multicast::{GroupConfig, GroupId, McastConfig, McastEvent, McastInput, Multicast};
use ft_sim::{FaultPlan, Sim, SimConfig};

use common::{Checker, all_delivered, all_freed, hostile, lossy, seeds};

const G: GroupId = GroupId(1);
const MS: Duration = Duration::from_millis(1);
const HISTORY: usize = 16;

/// A payload that names its sender and the send's token, so a delivery can
/// be traced back to the send it claims to be.
fn payload(node: NodeId, token: u64) -> Bytes {
    let mut b = node.0.to_le_bytes().to_vec();
    b.extend_from_slice(&token.to_le_bytes());
    Bytes::from(b)
}

fn config(n: usize) -> McastConfig {
    McastConfig::new(vec![
        GroupConfig::new(G, (0..n as u64).map(NodeId)).with_history(HISTORY),
    ])
}

/// Every node sends `per_node` messages, one every `every`, from `from`.
fn schedule_sends(
    sim: &mut Sim<Multicast>,
    n: usize,
    per_node: u64,
    from: Duration,
    every: Duration,
) {
    for i in 0..n as u64 {
        for k in 0..per_node {
            // Staggered, so nodes do not all send at the same instant.
            let at = from + every * k as u32 + MS * i as u32;
            sim.input(
                at,
                NodeId(i),
                McastInput::Send {
                    group: G,
                    token: k,
                    payload: payload(NodeId(i), k),
                },
            );
        }
    }
}

fn sim(seed: u64, n: usize, plan: FaultPlan) -> Sim<Multicast> {
    let mut s = Sim::new(SimConfig::new(seed, n), config(n), plan);
    let mut checker = Checker::default();
    s.invariant("reliable FIFO multicast", move |w| checker.check(w));
    s
}

#[test]
fn every_message_reaches_every_member_in_order_over_a_lossy_network() {
    let n = 5;
    let mut totals = (0, 0, 0, 0);
    let n_seeds = seeds(20);
    for seed in 0..n_seeds {
        let plan = FaultPlan {
            network: lossy(Duration::from_secs(4)),
            ..FaultPlan::default()
        };
        let mut s = sim(seed, n, plan);
        schedule_sends(&mut s, n, 100, MS * 10, MS * 20);
        s.run_until(Duration::from_secs(8))
            .unwrap_or_else(|f| panic!("{f}"));
        let checked = all_delivered(s.world()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(all_freed(s.world()).unwrap_or_else(|e| panic!("seed {seed}: {e}")));
        let stats = s.stats();
        // The faults happened.
        assert!(stats.lost > 0 && stats.duplicated > 0 && stats.reordered > 0);
        assert!(
            stats.crc_dropped > 0,
            "seed {seed}: no corrupted frame was dropped"
        );
        let repairs: u64 = s.world().cores().map(|(_, c)| c.stats().repairs_sent).sum();
        let missed = s
            .world()
            .events()
            .iter()
            .filter(|o| matches!(o.event, McastEvent::Missed { .. }))
            .count();
        // Nobody crashed: nothing may be reported missed.
        assert_eq!(missed, 0, "seed {seed}");
        totals.0 += checked;
        totals.1 += stats.lost;
        totals.2 += repairs;
        totals.3 += stats.invariant_checks;
    }
    eprintln!(
        "{n_seeds} seeds: {} (sender, receiver, message) deliveries checked, {} messages lost, {} repairs, {} invariant checks",
        totals.0, totals.1, totals.2, totals.3
    );
}

#[test]
fn crashes_restarts_partitions_and_slow_members_break_no_invariant() {
    let n = 5;
    let horizon = Duration::from_secs(6);
    let (mut crashes, mut partitions, mut missed, mut refused, mut checked) = (0, 0, 0, 0, 0);
    let mut drained = 0;
    let n_seeds = seeds(30);
    for seed in 0..n_seeds {
        let mut s = sim(seed, n, hostile(n, horizon, horizon));
        schedule_sends(&mut s, n, 200, MS * 10, MS * 25);
        // The crash schedule stops at the horizon; the network is calm
        // from then on. Leave time for every repair.
        s.run_until(horizon + Duration::from_secs(4))
            .unwrap_or_else(|f| panic!("{f}"));
        let w = s.world();
        checked += all_delivered(w).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        if all_freed(w).unwrap_or_else(|e| panic!("seed {seed}: {e}")) {
            drained += 1;
        }
        crashes += s.stats().crashes;
        partitions += s.stats().partitions;
        for o in w.events() {
            match o.event {
                McastEvent::Missed { .. } => missed += 1,
                McastEvent::Refused { .. } => refused += 1,
                _ => {}
            }
        }
    }
    eprintln!(
        "{n_seeds} seeds: {crashes} crashes, {partitions} partitions, {refused} sends refused (ring full), \
         {missed} reported missed, {checked} deliveries checked, histories drained in {drained} runs"
    );
    assert!(crashes > 0 && partitions > 0 && refused > 0 && missed > 0);
    // Most runs end with every member up.
    assert!(drained >= n_seeds * 2 / 3, "{drained} of {n_seeds}");
}

#[test]
fn a_partition_of_minutes_blocks_senders_and_heals_without_loss() {
    let n = 4;
    let mut plan = FaultPlan {
        network: lossy(Duration::from_secs(200)),
        ..FaultPlan::default()
    };
    // Three minutes apart.
    plan.partition(
        vec![vec![NodeId(0), NodeId(1)], vec![NodeId(2), NodeId(3)]],
        Duration::from_secs(5),
        Duration::from_secs(185),
    );
    let mut s = sim(7, n, plan);
    // One send a second for four minutes: the rings fill during the
    // partition, and the sends are refused until it heals.
    schedule_sends(&mut s, n, 240, MS * 10, Duration::from_secs(1));
    s.run_until(Duration::from_secs(260))
        .unwrap_or_else(|f| panic!("{f}"));
    let w = s.world();
    let checked = all_delivered(w).unwrap();
    assert!(all_freed(w).unwrap());
    let count = |f: fn(&McastEvent) -> bool| w.events().iter().filter(|o| f(&o.event)).count();
    let refused = count(|e| matches!(e, McastEvent::Refused { .. }));
    let ready = count(|e| matches!(e, McastEvent::Ready { .. }));
    // Every sender's ring filled (16 sends in), was refused for the rest
    // of the partition, and was told when room came back.
    assert!(refused >= n * 100, "{refused} refused");
    assert_eq!(
        ready, n,
        "each sender told once that its ring has room again"
    );
    assert!(s.stats().partitioned > 0);
    eprintln!(
        "{refused} sends refused during the partition; {checked} deliveries checked after it"
    );
}

#[test]
fn a_failing_seed_reproduces_exactly() {
    let run = |seed| {
        let mut s = sim(
            seed,
            5,
            hostile(5, Duration::from_secs(2), Duration::from_secs(2)),
        );
        schedule_sends(&mut s, 5, 50, MS * 10, MS * 25);
        s.run_until(Duration::from_secs(3)).unwrap().digest
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

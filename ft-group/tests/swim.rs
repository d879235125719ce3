//! SWIM in the simulator: completeness under loss, restarts, fail-stop
//! rejoins, convergence of views, and safety under every fault of the
//! mixed plan, with invariants checked after every step.

mod common;

use common::install_invariants;
use std::time::Duration;

use ft_core::{Incarnation, NodeId, Omission};
use ft_group::membership::MemberState;
use ft_group::swim::{Swim, SwimConfig, SwimEvent};
use ft_sim::{FaultPlan, OmissionWindow, Sim, SimConfig, World, self_check};

const SECOND: Duration = Duration::from_secs(1);
const SEEDS: u64 = 40;

/// Runs until every running member lists `node` alive at the incarnation
/// `node` itself announces (news still spreading at any one instant is no
/// failure: with loss, a late false suspicion can be in flight), or
/// `deadline`; says whether it got there.
fn run_until_all_see_alive(s: &mut Sim<Swim>, node: NodeId, deadline: Duration) -> bool {
    while s.now() < deadline {
        s.run_for(SECOND / 2).unwrap();
        let w = s.world();
        let Some(me) = w.core(node).filter(|c| !c.is_halted() && !c.is_joining()) else {
            continue;
        };
        let target = (MemberState::Alive, me.incarnation());
        if w.cores().all(|(_, c)| {
            c.membership()
                .get(node)
                .is_some_and(|m| (m.state, m.incarnation) == target)
        }) {
            return true;
        }
    }
    false
}

fn sim(seed: u64, n: usize, plan: FaultPlan) -> Sim<Swim> {
    let mut s = Sim::new(SimConfig::new(seed, n), SwimConfig::with_size(n), plan);
    install_invariants(&mut s);
    s
}

/// Whether every member that is up and running holds the same (state,
/// incarnation) for every member.
fn views_agree(w: &World<Swim>) -> bool {
    let views: Vec<Vec<_>> = w
        .cores()
        .filter(|(_, c)| !c.is_halted() && !c.is_joining())
        .map(|(_, c)| {
            c.membership()
                .iter()
                .map(|m| (m.node, m.state, m.incarnation))
                .collect()
        })
        .collect();
    views.windows(2).all(|p| p[0] == p[1])
}

#[test]
fn every_crashed_member_is_declared_failed_by_every_correct_member_under_loss() {
    let crash_at = 5 * SECOND;
    let mut worst = Duration::ZERO;
    let mut times = Vec::new();
    for seed in 0..SEEDS * 2 {
        let mut plan = FaultPlan::none();
        plan.network.loss = 0.05;
        plan.crash(NodeId(3), crash_at, None);
        let mut s = sim(seed, 8, plan);
        s.run_until(crash_at + 40 * SECOND).unwrap();
        let w = s.world();
        assert_eq!(w.stats().crashes, 1);
        assert!(w.stats().lost > 0, "the loss really happened");
        for (id, core) in w.cores() {
            let m = core.membership().get(NodeId(3)).unwrap();
            assert_eq!(
                m.state,
                MemberState::Failed,
                "seed {seed}: {id} still holds n3 {}",
                m.state
            );
            let detected = m.since.duration_since(w.instant() - w.now()) - crash_at;
            worst = worst.max(detected);
            times.push(detected);
        }
    }
    times.sort();
    println!(
        "detection after a crash, 8 members, 5% loss, {} seeds: median {:?}, max {:?}",
        SEEDS * 2,
        times[times.len() / 2],
        worst
    );
}

#[test]
fn a_restarted_member_rejoins_with_a_higher_incarnation() {
    for seed in 0..SEEDS {
        let mut plan = FaultPlan::none();
        plan.network.loss = 0.05;
        plan.crash(NodeId(3), 5 * SECOND, Some(10 * SECOND));
        let mut s = sim(seed, 6, plan);
        s.run_until(15 * SECOND).unwrap();
        assert!(
            run_until_all_see_alive(&mut s, NodeId(3), 60 * SECOND),
            "seed {seed}"
        );
        let w = s.world();
        assert_eq!((w.stats().crashes, w.stats().restarts), (1, 1));
        let n3 = w.core(NodeId(3)).unwrap();
        assert!(n3.incarnation() >= Incarnation(1), "seed {seed}");
        assert!(
            w.events()
                .iter()
                .any(|e| e.node == NodeId(3) && matches!(e.event, SwimEvent::Rejoined { .. })),
            "seed {seed}"
        );
    }
}

#[test]
fn a_member_cut_off_is_declared_failed_acts_failed_and_rejoins() {
    for seed in 0..SEEDS {
        let mut plan = FaultPlan::none();
        plan.network.loss = 0.05;
        // n3 hears nothing and says nothing for 20 s: a receive and send
        // omission failure, indistinguishable from a crash to the others.
        plan.node(NodeId(3)).omission_windows.push(OmissionWindow {
            from: 5 * SECOND,
            until: 25 * SECOND,
            kind: Omission::Both,
        });
        let mut s = sim(seed, 6, plan);
        s.run_until(25 * SECOND).unwrap();
        assert!(
            run_until_all_see_alive(&mut s, NodeId(3), 90 * SECOND),
            "seed {seed}"
        );
        let w = s.world();
        assert!(w.stats().send_omissions > 0 && w.stats().receive_omissions > 0);
        let ev = |node: NodeId, f: &dyn Fn(&SwimEvent) -> bool| {
            w.events().iter().any(|e| e.node == node && f(&e.event))
        };
        assert!(
            ev(NodeId(0), &|e| matches!(
                e,
                SwimEvent::Changed(c) if c.node == NodeId(3) && c.state == MemberState::Failed
            )),
            "seed {seed}: n0 never declared n3 failed"
        );
        assert!(ev(NodeId(3), &|e| matches!(
            e,
            SwimEvent::DeclaredFailed { .. }
        )));
        assert!(ev(NodeId(3), &|e| matches!(e, SwimEvent::Rejoined { .. })));
        assert!(w.core(NodeId(3)).unwrap().incarnation() > Incarnation::FIRST);
    }
}

#[test]
fn a_fault_free_group_never_suspects_anyone() {
    let mut s = sim(1, 10, FaultPlan::none());
    s.run_until(120 * SECOND).unwrap();
    for (id, core) in s.world().cores() {
        let st = core.stats();
        assert_eq!(st.suspicions_raised, 0, "{id}");
        assert!(st.probes >= 100, "{id} probed {} times", st.probes);
        // Every probe answered, bar the one still running at the end.
        assert!(st.probes - st.probes_acked <= 1, "{id}: {st:?}");
    }
    assert!(s.world().events().is_empty());
}

#[test]
fn safety_holds_under_every_fault_of_the_mixed_plan() {
    let horizon = 30 * SECOND;
    let mut crashes = 0;
    let mut corrupted = 0;
    for seed in 0..30 {
        let mut s = sim(seed, 6, FaultPlan::mixed(6, horizon));
        let report = s.run_until(horizon).unwrap_or_else(|f| panic!("{f}"));
        crashes += report.stats.crashes;
        corrupted += report.stats.value_corruptions;
    }
    assert!(
        crashes > 0 && corrupted > 0,
        "{crashes} crashes, {corrupted} value failures"
    );
}

#[test]
fn runs_are_deterministic() {
    let make = || {
        let mut plan = FaultPlan::mixed(6, 20 * SECOND);
        plan.network.loss = 0.05;
        sim(9, 6, plan)
    };
    self_check(make, 20 * SECOND).unwrap();
}

#[test]
fn views_converge_after_crashes_restarts_and_a_partition() {
    for seed in 0..SEEDS {
        let mut plan = FaultPlan::none();
        plan.crash(NodeId(1), 3 * SECOND, Some(4 * SECOND));
        plan.crash(NodeId(4), 6 * SECOND, None);
        plan.partition(
            vec![
                vec![NodeId(0), NodeId(1), NodeId(2)],
                vec![NodeId(3), NodeId(5), NodeId(6)],
            ],
            10 * SECOND,
            20 * SECOND,
        );
        let mut s = sim(seed, 7, plan);
        s.run_until(90 * SECOND).unwrap();
        let w = s.world();
        assert_eq!((w.stats().crashes, w.stats().partitions), (2, 1));
        assert!(views_agree(w), "seed {seed}");
        for (id, core) in w.cores() {
            for m in core.membership().iter() {
                let expect = if m.node == NodeId(4) {
                    MemberState::Failed
                } else {
                    MemberState::Alive
                };
                assert_eq!(
                    m.state, expect,
                    "seed {seed}: {id} holds {} {}",
                    m.node, m.state
                );
            }
        }
    }
}

/// The long sweep CI runs in release mode: `cargo test --release -p
/// ft-group --test swim -- --ignored`.
#[test]
#[ignore]
fn sweep_of_the_mixed_plan() {
    let horizon = 30 * SECOND;
    let started = std::time::Instant::now();
    let (mut crashes, mut checks, mut refutations, mut halts) = (0, 0, 0, 0);
    for seed in 0..2000 {
        let n = 4 + (seed % 5) as usize;
        let mut s = sim(seed, n, FaultPlan::mixed(n, horizon));
        let report = s.run_until(horizon).unwrap_or_else(|f| panic!("{f}"));
        crashes += report.stats.crashes;
        checks += report.stats.invariant_checks;
        for (_, c) in s.world().cores() {
            refutations += c.stats().refutations;
            halts += c.stats().declared_failed;
        }
    }
    println!(
        "swim sweep: 2000 seeds, 4-8 members, 30 s each: {crashes} crashes, {refutations} refutations, \
         {halts} fail-stops, {checks} invariant checks, {:.1?}",
        started.elapsed()
    );
    assert!(crashes > 0 && refutations > 0);
}

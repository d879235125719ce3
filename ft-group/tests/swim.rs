//! SWIM in the simulator: completeness under loss, restarts, fail-stop
//! rejoins, convergence of views, and safety under every fault of the
//! mixed plan, with invariants checked after every step.

mod common;

use common::install_invariants;
use std::time::Duration;

use ft_core::{Incarnation, NodeId, Omission};
use ft_group::membership::MemberState;
use ft_group::membership::Rumor;
use ft_group::swim::{MAX_RUMORS, Swim, SwimConfig, SwimEvent, SwimMessage};
use ft_sim::{AdversaryCtx, Delay, FaultPlan, OmissionWindow, Sim, SimConfig, World, self_check};

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

// ---- each mechanism of SWIM needed by a test ----

/// Verdicts in a run: (suspicions of `node`, failure verdicts about `node`),
/// summed over every observer.
fn verdicts_about(w: &World<Swim>, node: NodeId) -> (usize, usize) {
    let count = |state: MemberState| {
        w.events()
            .iter()
            .filter(
                |e| matches!(e.event, SwimEvent::Changed(c) if c.node == node && c.state == state),
            )
            .count()
    };
    (count(MemberState::Suspect), count(MemberState::Failed))
}

/// Refutation: a slow member is suspected again and again, and each time
/// refutes with a higher incarnation before the suspicion runs out. Fails if
/// the suspect never refutes, or if a higher incarnation does not override
/// a suspicion (then every suspicion of it ends in a failure verdict).
#[test]
fn a_slow_member_refutes_every_suspicion_and_is_never_declared_failed() {
    let slow = NodeId(5);
    let (mut suspicions, mut refutations) = (0, 0);
    for seed in 0..3 {
        let mut plan = FaultPlan::none();
        plan.network.loss = 0.05;
        plan.node(slow).slow = Some(Delay::Exponential {
            min: Duration::ZERO,
            mean: Duration::from_millis(300),
        });
        let mut s = sim(seed, 8, plan);
        s.run_until(300 * SECOND).unwrap();
        let w = s.world();
        assert!(w.stats().slowed > 0 && w.stats().lost > 0);
        let (suspected, failed) = verdicts_about(w, slow);
        assert_eq!(
            failed, 0,
            "seed {seed}: the slow member was declared failed"
        );
        let n5 = w.core(slow).unwrap();
        assert_eq!(n5.stats().declared_failed, 0, "seed {seed}");
        suspicions += suspected;
        refutations += n5.stats().refutations;
        // Every member holds it alive at the incarnation it announces.
        assert!(
            run_until_all_see_alive(&mut s, slow, 330 * SECOND),
            "seed {seed}"
        );
    }
    // The suspicions really happened, and were refuted.
    assert!(
        suspicions >= 10 && refutations >= 10,
        "{suspicions} suspicions, {refutations} refutations"
    );
}

/// Indirect probes: with the direct link between n0 and n3 cut both ways,
/// n0 still reaches n3 through others and never suspects it.
#[test]
fn a_member_behind_a_dead_link_is_reached_through_others_and_never_suspected() {
    for seed in 0..5 {
        let mut plan = FaultPlan::none();
        plan.link(NodeId(0), NodeId(3)).loss = 1.0;
        plan.link(NodeId(3), NodeId(0)).loss = 1.0;
        let mut s = sim(seed, 6, plan);
        s.run_until(120 * SECOND).unwrap();
        let w = s.world();
        assert!(w.stats().lost > 0, "the link really was cut");
        let n0 = w.core(NodeId(0)).unwrap().stats();
        assert!(n0.ping_reqs_sent > 0, "seed {seed}: {n0:?}");
        for (id, c) in w.cores() {
            assert_eq!(
                c.stats().suspicions_raised,
                0,
                "seed {seed}: {id} suspected someone"
            );
        }
        assert_eq!(verdicts_about(w, NodeId(3)), (0, 0), "seed {seed}");
        assert_eq!(verdicts_about(w, NodeId(0)), (0, 0), "seed {seed}");
    }
}

/// Lifeguard's local health: a member that is itself slow (every message
/// it sends or receives delayed by a mean of 1 s) stops blaming others,
/// because the nacks it misses stretch its own timeouts. The same runs
/// with local health off (a multiplier of 1) raise many times more false
/// suspicions.
#[test]
fn a_slow_member_with_local_health_raises_few_false_suspicions() {
    let slow = NodeId(2);
    let raised = |awareness: u32| {
        let mut total = 0;
        for seed in 0..2 {
            let mut plan = FaultPlan::none();
            plan.network.loss = 0.01;
            plan.node(slow).slow = Some(Delay::Exponential {
                min: Duration::ZERO,
                mean: SECOND,
            });
            let mut config = SwimConfig::with_size(8);
            config.awareness_max_multiplier = awareness;
            let mut s: Sim<Swim> = Sim::new(SimConfig::new(seed, 8), config, plan);
            install_invariants(&mut s);
            s.run_until(300 * SECOND).unwrap();
            assert!(s.world().stats().slowed > 0);
            let n2 = s.world().core(slow).unwrap();
            if awareness > 1 {
                assert!(n2.stats().nacks_missed > 0, "{:?}", n2.stats());
            }
            total += n2.stats().suspicions_raised;
        }
        total
    };
    let (with, without) = (raised(8), raised(1));
    println!(
        "false suspicions raised by a slow member: {with} with local health, {without} without"
    );
    assert!(
        without >= 4 * with.max(1),
        "{with} with local health, {without} without"
    );
}

/// Dissemination limits: once everyone has the news, each message carries
/// at most the one view entry of the anti-entropy trickle, not every rumor
/// ever heard.
#[test]
fn once_news_has_spread_messages_carry_only_the_trickle() {
    for seed in 0..5 {
        let mut plan = FaultPlan::none();
        plan.network.loss = 0.02;
        plan.crash(NodeId(6), 5 * SECOND, None);
        plan.crash(NodeId(7), 6 * SECOND, None);
        let mut s = sim(seed, 8, plan);
        s.run_until(60 * SECOND).unwrap();
        let totals = |w: &World<Swim>| {
            w.cores().fold((0, 0), |(r, m), (_, c)| {
                (
                    r + c.stats().rumors_sent,
                    m + ft_core::Protocol::counters(c).messages_sent,
                )
            })
        };
        let (r0, m0) = totals(s.world());
        s.run_until(180 * SECOND).unwrap();
        let (r1, m1) = totals(s.world());
        assert!(m1 > m0);
        let per_message = (r1 - r0) as f64 / (m1 - m0) as f64;
        assert!(
            per_message <= 1.05,
            "seed {seed}: {per_message:.2} rumors per message after the news stopped"
        );
        for (_, c) in s.world().cores() {
            assert!(c.pending_rumors() <= 1, "{}", c.pending_rumors());
        }
    }
}

/// The reconnect loop's load: about one ping per failed member per
/// interval for the whole group (Serf's scaling), not one per member.
#[test]
fn the_reconnect_loop_sends_about_one_ping_per_failed_member_per_interval() {
    let mut pings = 0;
    let seeds = 5;
    for seed in 0..seeds {
        let mut plan = FaultPlan::none();
        plan.crash(NodeId(9), 5 * SECOND, None);
        let mut s = sim(seed, 10, plan);
        s.run_until(600 * SECOND).unwrap();
        pings += s
            .world()
            .cores()
            .map(|(_, c)| c.stats().reconnect_probes)
            .sum::<u64>();
    }
    // n9 is failed-and-past-gossip-to-the-dead from about 50 s on: 55
    // intervals of 10 s, one failed member.
    let expected = 55 * seeds;
    assert!(
        pings >= expected / 2 && pings <= expected * 2,
        "{pings} reconnect pings, expected about {expected}"
    );
}

/// Forged incarnations: a member that piggybacks `Failed { victim,
/// u64::MAX }` and `Alive { victim, u64::MAX - 1 }` on everything it sends,
/// for the whole run, while the victim crashes and restarts. The victim
/// never lists itself failed while running (an invariant), comes back from
/// its restart, and everyone ends holding it alive at its own incarnation.
#[test]
fn forged_incarnations_cannot_pin_a_member_down() {
    let (victim, forger) = (NodeId(2), NodeId(5));
    for seed in 0..10 {
        let mut plan = FaultPlan::none();
        plan.network.loss = 0.01;
        plan.crash(victim, 20 * SECOND, Some(5 * SECOND));
        let mut s = sim(seed, 6, plan);
        s.set_adversary(
            forger,
            move |ctx: &mut AdversaryCtx<'_, SwimMessage>, to: NodeId, mut msg: SwimMessage| {
                if let SwimMessage::Ping { rumors, .. }
                | SwimMessage::PingReq { rumors, .. }
                | SwimMessage::Ack { rumors, .. } = &mut msg
                {
                    rumors.truncate(MAX_RUMORS - 2);
                    rumors.push(Rumor::Failed {
                        node: victim,
                        incarnation: Incarnation(u64::MAX),
                    });
                    rumors.push(Rumor::Alive {
                        node: victim,
                        incarnation: Incarnation(u64::MAX - 1),
                    });
                }
                ctx.send(to, msg);
            },
        );
        s.run_until(60 * SECOND).unwrap();
        assert!(
            run_until_all_see_alive(&mut s, victim, 120 * SECOND),
            "seed {seed}"
        );
        let w = s.world();
        assert!(w.stats().forged > 100 && w.stats().restarts == 1);
        let refused: u64 = w.cores().map(|(_, c)| c.stats().hearsay_refused).sum();
        assert!(refused > 100, "seed {seed}: {refused}");
        let v = w.core(victim).unwrap();
        assert!(
            v.incarnation() < Incarnation(1000),
            "seed {seed}: {}",
            v.incarnation()
        );
        // It came back once, after its restart, and never halted for ever.
        let rejoins = w
            .events()
            .iter()
            .filter(|e| e.node == victim && matches!(e.event, SwimEvent::Rejoined { .. }))
            .count();
        assert!(
            rejoins <= 2,
            "seed {seed}: the victim rejoined {rejoins} times"
        );
    }
}

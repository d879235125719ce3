//! One test per fault kind: each shows the fault really happened (the
//! simulator's counters) *and* that the protocol saw its effect, so a fault
//! that silently did nothing would fail the test.

mod common;

use common::*;
use ft_core::{Incarnation, NodeId, Omission};
use ft_demo::heartbeat::{Beat, HeartbeatConfig, HeartbeatEvent, HeartbeatInput};
use ft_sim::{
    AdversaryCtx, Byzantine, ClockFault, Delay, FaultPlan, OmissionWindow, RandomCrashes, SimConfig,
};

#[test]
fn fault_free_run_loses_nothing_and_suspects_no_one() {
    let mut s = sim(1, 4, FaultPlan::none());
    let r = s.run_until(ms(2000)).unwrap();
    assert!(r.stats.sent > 1000, "{:?}", r.stats);
    let st = r.stats;
    let dropped = st.lost + st.crc_dropped + st.decode_errors + st.partitioned + st.to_down_node;
    assert_eq!(
        dropped + st.send_omissions + st.receive_omissions,
        0,
        "{st:?}"
    );
    // Only what was sent within the last 1 ms network delay is still in
    // flight: at most one round of pings and acks (4 nodes x 3 peers x 2).
    assert!(st.sent - st.delivered <= 24, "{st:?}");
    assert!(!any_suspicion(s.world()));
    assert_eq!(sum(s.world(), |c| c.duplicates() + c.reordered()), 0);
}

#[test]
fn crash_halts_the_node_and_every_correct_node_suspects_it() {
    let mut plan = FaultPlan::none();
    plan.crash(NodeId(3), ms(500), None);
    let mut s = sim(2, 4, plan);
    s.run_until(ms(1000)).unwrap();
    let w = s.world();
    assert_eq!(w.stats().crashes, 1);
    assert!(!w.is_up(NodeId(3)));
    assert!(
        w.stats().to_down_node > 0,
        "messages to the crashed node were not dropped"
    );
    for o in 0..3 {
        assert!(
            suspects_now(w, o, 3),
            "n{o} does not suspect the crashed n3"
        );
        assert!(
            !suspected_between(w, o, 3, ms(0), ms(500)),
            "suspected before the crash"
        );
        for t in 0..3 {
            assert!(
                !suspected(w, o, t),
                "n{o} wrongly suspects the correct n{t}"
            );
        }
    }
}

#[test]
fn restart_comes_back_with_a_new_incarnation_and_fresh_sequence_numbers() {
    let mut plan = FaultPlan::none();
    plan.crash(NodeId(3), ms(500), Some(ms(300)));
    let mut s = sim(3, 4, plan);
    s.run_until(ms(1500)).unwrap();
    let w = s.world();
    assert_eq!((w.stats().crashes, w.stats().restarts), (1, 1));
    assert_eq!(w.incarnation(NodeId(3)), Incarnation(1));
    let core = w.core(NodeId(3)).unwrap();
    assert_eq!(core.incarnation(), Incarnation(1));
    for o in 0..3 {
        assert!(w.events().iter().any(|e| e.node == NodeId(o)
            && e.event
                == HeartbeatEvent::Restarted {
                    node: NodeId(3),
                    incarnation: Incarnation(1)
                }));
        assert!(
            !suspects_now(w, o, 3),
            "n{o} still suspects the restarted n3"
        );
    }
    // Recovery read the durable reservations back (invariant no_reuse held
    // throughout, or run_until would have failed).
    assert!(core.reserved() > 16);
}

#[test]
fn crash_loses_writes_that_were_not_yet_durable() {
    let mut config = SimConfig::new(4, 3);
    config.disk_latency = Delay::Fixed(ms(40));
    let mut plan = FaultPlan::none();
    plan.crash(NodeId(2), ms(10), Some(ms(100)));
    let mut s = sim_with(config, HeartbeatConfig::new(3), plan);
    s.run_until(ms(60)).unwrap();
    assert_eq!(
        s.stats().persists_lost,
        1,
        "the reservation in flight at the crash"
    );
    assert!(s.world().durable_records(NodeId(2)).is_empty());
    assert_eq!(s.world().durable_records(NodeId(0)).len(), 1);
    s.run_until(ms(200)).unwrap();
    let fresh = [ft_core::record::encode(
        &ft_demo::HeartbeatRecord::Reserved { upto: 16 },
    )];
    assert_eq!(
        s.world().durable_records(NodeId(2)),
        fresh,
        "the restarted node reserved from zero: nothing of its first life survived"
    );
}

#[test]
fn send_omission_makes_peers_suspect_a_node_that_still_hears_them() {
    let mut plan = FaultPlan::none();
    plan.node(NodeId(2)).omission_windows.push(OmissionWindow {
        from: ms(500),
        until: ms(1000),
        kind: Omission::Send,
    });
    let mut s = sim(5, 4, plan);
    s.run_until(ms(1500)).unwrap();
    let w = s.world();
    assert!(w.stats().send_omissions > 0);
    for o in [0, 1, 3] {
        assert!(
            suspected_between(w, o, 2, ms(500), ms(1000)),
            "n{o} never suspected n2"
        );
        assert!(!suspects_now(w, o, 2), "n{o} did not trust n2 again");
    }
    assert!(
        !(0..4).any(|t| suspected(w, 2, t)),
        "n2 still received, so it suspects no one"
    );
}

#[test]
fn receive_omission_makes_a_node_suspect_peers_that_still_hear_it() {
    let mut plan = FaultPlan::none();
    plan.node(NodeId(2)).omission_windows.push(OmissionWindow {
        from: ms(500),
        until: ms(1000),
        kind: Omission::Receive,
    });
    plan.node(NodeId(1)).receive_omission = 0.3;
    let mut s = sim(6, 4, plan);
    s.run_until(ms(1500)).unwrap();
    let w = s.world();
    assert!(w.stats().receive_omissions > 0);
    for t in [0, 1, 3] {
        assert!(
            suspected_between(w, 2, t, ms(500), ms(1000)),
            "n2 never suspected n{t}"
        );
    }
    for o in [0, 1, 3] {
        assert!(
            !suspected(w, o, 2),
            "n{o} suspected n2, whose sends all went out"
        );
    }
}

#[test]
fn a_slow_node_is_suspected_although_it_never_crashed() {
    // The subject's point: a crashed node cannot be told from a slow one.
    let mut plan = FaultPlan::none();
    plan.node(NodeId(2)).slow = Some(Delay::Fixed(ms(100)));
    let mut s = sim(7, 3, plan);
    s.run_until(ms(1000)).unwrap();
    let w = s.world();
    assert!(w.stats().slowed > 0);
    assert_eq!(w.stats().crashes, 0);
    assert!(w.is_up(NodeId(2)));
    assert!(suspected(w, 0, 2) && suspected(w, 1, 2));
    assert!(
        !suspected(w, 0, 1),
        "the link between the fast nodes is fine"
    );

    let mut link_plan = FaultPlan::none();
    link_plan.link(NodeId(0), NodeId(1)).extra_delay = Some(Delay::Fixed(ms(100)));
    let mut s = sim(7, 3, link_plan);
    s.run_until(ms(1000)).unwrap();
    let w = s.world();
    assert!(w.stats().slowed > 0);
    assert!(suspected(w, 1, 0), "n1 hears n0 only over the slow link");
    assert!(!suspected(w, 2, 0) && !suspected(w, 0, 2));
}

#[test]
fn a_fast_clock_times_out_early_and_suspects_correct_nodes() {
    // The 50 ms timeout suits this network: peers ping every 10 ms with
    // delays of 1..=38 ms, so a ping arrives within 10 + 37 = 47 ms of the
    // previous one (the first within 11 + 38 ms of the start). On a clock
    // running 1.5 times too fast, 50 ms of the node's time last 33 ms.
    let run = |rho: f64| {
        let mut plan = FaultPlan::none();
        plan.network.delay = Delay::Uniform {
            min: ms(1),
            max: ms(38),
        };
        plan.node(NodeId(0)).clock = Some(ClockFault::drifting(rho));
        let mut s = sim(20, 3, plan);
        // n0 only listens: were it pinging, the acks to its own pings (sent
        // 1.5 times as often too) would hide its early timeouts.
        s.input(ms(0), NodeId(0), HeartbeatInput::Pause);
        s.run_until(ms(5000)).unwrap();
        s
    };
    let s = run(0.0);
    assert_eq!(s.stats().skewed_clocks, 0);
    assert!(!suspected(s.world(), 0, 1) && !suspected(s.world(), 0, 2));
    let s = run(0.5);
    let w = s.world();
    assert_eq!(w.stats().skewed_clocks, 1);
    assert!(w.stats().skewed_timers > 0);
    assert_eq!(w.stats().crashes, 0);
    assert!(
        suspected(w, 0, 1) && suspected(w, 0, 2),
        "n0 times out its correct peers"
    );
    assert!(!suspected(w, 1, 2) && !suspected(w, 2, 1));

    // A real crash: the fast clock suspects it after 50 ms / 1.5 of silence,
    // the slow one (rho = -0.5) after 50 ms / 0.5, the others after 50 ms
    // (each at its next tick, every 10 ms of its own clock).
    let mut plan = FaultPlan::none();
    plan.node(NodeId(0)).clock = Some(ClockFault::drifting(0.5));
    plan.node(NodeId(1)).clock = Some(ClockFault::drifting(-0.5));
    plan.crash(NodeId(3), ms(500), None);
    let mut s = sim(21, 4, plan);
    s.run_until(ms(1000)).unwrap();
    let w = s.world();
    assert_eq!(w.stats().skewed_clocks, 2);
    let noticed = |o: u64| {
        w.events()
            .iter()
            .find(|e| e.node == NodeId(o) && e.event == HeartbeatEvent::Suspected(NodeId(3)))
            .map(|e| e.at)
            .unwrap_or_else(|| panic!("n{o} never suspected the crashed n3"))
    };
    // Last heard from n3 between 490 and 501 ms (its last ping or ack).
    let (fast, slow, right) = (noticed(0), noticed(1), noticed(2));
    assert!(ms(523) < fast && fast < ms(542), "{fast:?}");
    assert!(ms(540) < right && right < ms(562), "{right:?}");
    assert!(ms(590) < slow && slow < ms(622), "{slow:?}");
    for (o, t) in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)] {
        assert!(!suspected(w, o, t), "n{o} suspected the correct n{t}");
    }
}

#[test]
fn network_delay_distributions_bounded_and_unbounded() {
    let mut slow_net = FaultPlan::none();
    slow_net.network.delay = Delay::Fixed(ms(200));
    let mut s = sim(8, 3, slow_net);
    s.run_until(ms(1000)).unwrap();
    assert!(
        suspected(s.world(), 0, 1),
        "a 200 ms network must exceed the 50 ms timeout"
    );

    let mut bounded = FaultPlan::none();
    bounded.network.delay = Delay::Uniform {
        min: ms(1),
        max: ms(20),
    };
    let mut s = sim(8, 3, bounded);
    s.run_until(ms(2000)).unwrap();
    assert!(
        !any_suspicion(s.world()),
        "bounded delay below the timeout: no suspicion"
    );

    let mut unbounded = FaultPlan::none();
    unbounded.network.delay = Delay::Exponential {
        min: ms(1),
        mean: ms(60),
    };
    let mut s = sim(8, 3, unbounded);
    s.run_until(ms(5000)).unwrap();
    assert!(
        any_suspicion(s.world()),
        "an unbounded tail eventually beats any timeout"
    );
    assert!(s.stats().overtaken > 0, "random delays reorder messages");
}

#[test]
fn value_failures_pass_the_crc_and_reach_receivers_as_wrong_values() {
    let mut plan = FaultPlan::none();
    plan.node(NodeId(3)).value_corruption = 0.5;
    let mut s = ft_sim::Sim::new(SimConfig::new(9, 4), HeartbeatConfig::new(4), plan);
    s.run_until(ms(3000)).unwrap();
    let st = *s.stats();
    assert!(st.value_corruptions > 0);
    assert_eq!(
        st.crc_dropped, 0,
        "the frames were valid; only the values were wrong"
    );
    let w = s.world();
    let bogus_restarts = w
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                HeartbeatEvent::Restarted {
                    node: NodeId(3),
                    ..
                }
            )
        })
        .count();
    let violations = sum(w, |c| c.reuse_violations());
    assert!(
        st.decode_errors > 0,
        "flipped tags must be refused by the decoder"
    );
    assert!(
        bogus_restarts + violations as usize > 0,
        "wrong values must reach the cores: n3 never restarted, yet peers saw {bogus_restarts} restarts and {violations} reuses"
    );
}

#[test]
fn state_transition_failures_repeat_and_skip_handling() {
    let mut plan = FaultPlan::none();
    plan.node(NodeId(1)).repeat_transition = 1.0;
    let mut s = sim(10, 3, plan);
    s.run_until(ms(500)).unwrap();
    let w = s.world();
    assert!(w.stats().repeated_transitions > 0);
    assert_eq!(w.stats().duplicated, 0, "the network duplicated nothing");
    assert!(
        w.core(NodeId(1)).unwrap().duplicates() > 0,
        "n1 handled pings twice"
    );
    assert_eq!(w.core(NodeId(0)).unwrap().duplicates(), 0);

    let mut plan = FaultPlan::none();
    plan.node(NodeId(1)).skip_transition = 1.0;
    let mut s = sim(10, 3, plan);
    s.run_until(ms(500)).unwrap();
    let w = s.world();
    assert!(w.stats().skipped_transitions > 0);
    assert!(
        suspected(w, 1, 0) && suspected(w, 1, 2),
        "n1 took in messages but never acted"
    );
    assert!(!suspected(w, 0, 1), "n1's own pings still went out");
}

#[test]
fn byzantine_random_payloads_are_refused_by_honest_decoders() {
    let mut plan = FaultPlan::none();
    plan.node(NodeId(3)).byzantine = Some(Byzantine::RandomPayload);
    plan.adversary_tick = Some(ms(5));
    let mut s = sim(11, 4, plan);
    s.run_until(ms(1000)).unwrap();
    let st = *s.stats();
    assert!(st.forged > 0 && st.suppressed_by_adversary > 0);
    assert!(st.decode_errors > 0, "{st:?}");
    assert_eq!(st.crc_dropped, 0, "forged frames are well framed");
    for o in 0..3 {
        assert!(
            suspected(s.world(), o, 3),
            "n{o} took n3's garbage for signs of life"
        );
    }

    let mut plan = FaultPlan::none();
    plan.node(NodeId(2)).byzantine = Some(Byzantine::Silent);
    let mut s = sim(11, 3, plan);
    s.run_until(ms(500)).unwrap();
    assert!(s.world().is_up(NodeId(2)));
    assert!(suspected(s.world(), 0, 2) && suspected(s.world(), 1, 2));
}

#[test]
fn user_supplied_adversary_lies_about_its_incarnation() {
    let mut s = sim(12, 3, FaultPlan::none());
    s.set_adversary(
        NodeId(2),
        |ctx: &mut AdversaryCtx<'_, Beat>, to: NodeId, msg: Beat| {
            let lie = match msg {
                Beat::Ping { seq, .. } => Beat::Ping {
                    incarnation: Incarnation(99),
                    seq,
                },
                other => other,
            };
            ctx.send(to, lie);
        },
    );
    s.run_until(ms(300)).unwrap();
    let w = s.world();
    assert!(w.stats().forged > 0);
    for o in 0..2 {
        assert!(w.events().iter().any(|e| e.node == NodeId(o)
            && e.event
                == HeartbeatEvent::Restarted {
                    node: NodeId(2),
                    incarnation: Incarnation(99)
                }));
    }
}

#[test]
fn loss_drops_messages_and_the_protocol_sees_fewer() {
    let run = |loss| {
        let mut plan = FaultPlan::none();
        plan.network.loss = loss;
        let mut s = sim(13, 3, plan);
        s.run_until(ms(2000)).unwrap();
        (*s.stats(), sum(s.world(), |c| c.pings_received()))
    };
    let (clean, clean_pings) = run(0.0);
    let (lossy, lossy_pings) = run(0.3);
    assert!(lossy.lost > 0 && clean.lost == 0);
    assert!(
        lossy_pings < clean_pings * 8 / 10,
        "{lossy_pings} vs {clean_pings}"
    );
    let rate = lossy.lost as f64 / lossy.sent as f64;
    assert!((0.25..0.35).contains(&rate), "observed loss rate {rate}");

    let mut plan = FaultPlan::none();
    plan.link(NodeId(0), NodeId(1)).loss = 1.0;
    let mut s = sim(13, 3, plan);
    s.run_until(ms(500)).unwrap();
    assert!(suspected(s.world(), 1, 0), "n1 hears nothing from n0");
    assert!(!suspected(s.world(), 0, 1), "the other direction works");
}

#[test]
fn the_network_calms_down_when_its_faults_end() {
    let mut plan = FaultPlan::none();
    plan.network.loss = 0.3;
    plan.network.duplicate = 0.3;
    plan.network.calm_after = Some(ms(1000));
    let mut s = sim(13, 3, plan);
    s.run_until(ms(1000)).unwrap();
    let during = *s.stats();
    assert!(during.lost > 0 && during.duplicated > 0);
    s.run_until(ms(3000)).unwrap();
    let after = *s.stats();
    assert!(after.sent > during.sent + 100, "messages went on");
    assert_eq!(
        (after.lost, after.duplicated),
        (during.lost, during.duplicated),
        "no loss or duplication after the calm"
    );
}

#[test]
fn duplication_reaches_the_protocol_as_duplicates() {
    let mut plan = FaultPlan::none();
    plan.network.duplicate = 0.5;
    let mut s = sim(14, 3, plan);
    s.run_until(ms(1000)).unwrap();
    assert!(s.stats().duplicated > 0);
    assert!(
        s.stats().delivered > s.stats().sent,
        "copies arrive as extra deliveries"
    );
    assert!(sum(s.world(), |c| c.duplicates()) > 0);
}

#[test]
fn reordering_reaches_the_protocol_out_of_order() {
    let mut plan = FaultPlan::none();
    plan.network.reorder = 0.5;
    plan.network.reorder_window = ms(30);
    let mut s = sim(15, 3, plan);
    s.run_until(ms(1000)).unwrap();
    assert!(s.stats().reordered > 0 && s.stats().overtaken > 0);
    assert!(sum(s.world(), |c| c.reordered()) > 0);
}

#[test]
fn bit_flips_in_transit_are_all_caught_by_the_frame_crc() {
    let mut plan = FaultPlan::none();
    plan.network.corrupt = 0.2;
    let mut s = sim(16, 4, plan);
    s.run_until(ms(2000)).unwrap();
    // Let everything in flight land, so every corrupted frame is checked.
    s.run_until(ms(2100)).unwrap();
    let st = *s.stats();
    assert!(st.corrupted_in_transit > 0);
    assert_eq!(
        st.crc_dropped, st.corrupted_in_transit,
        "every flipped frame refused, none delivered"
    );
    assert_eq!(st.decode_errors, 0);
    assert_eq!(sum(s.world(), |c| c.reuse_violations()), 0);
}

#[test]
fn partition_separates_groups_until_it_heals() {
    let mut plan = FaultPlan::none();
    plan.partition(
        vec![vec![NodeId(0), NodeId(1)], vec![NodeId(2), NodeId(3)]],
        ms(500),
        ms(1000),
    );
    let mut s = sim(17, 4, plan);
    s.run_until(ms(1500)).unwrap();
    let w = s.world();
    assert_eq!((w.stats().partitions, w.stats().heals), (1, 1));
    assert!(w.stats().partitioned > 0);
    for (a, b) in [(0, 2), (0, 3), (1, 2), (3, 0), (2, 1)] {
        assert!(
            suspected_between(w, a, b, ms(500), ms(1000)),
            "n{a} never suspected n{b}"
        );
        assert!(
            !suspects_now(w, a, b),
            "n{a} did not trust n{b} after the heal"
        );
    }
    for (a, b) in [(0, 1), (1, 0), (2, 3), (3, 2)] {
        assert!(!suspected(w, a, b), "n{a} suspected n{b} on its own side");
    }
}

#[test]
fn a_one_way_partition_silences_one_direction_only() {
    let mut plan = FaultPlan::none();
    // n2 and n3 stop hearing n0 and n1; n0 and n1 still hear n2 and n3.
    plan.one_way(
        vec![NodeId(0), NodeId(1)],
        vec![NodeId(2), NodeId(3)],
        ms(500),
        ms(1000),
    );
    let mut s = sim(17, 4, plan);
    s.run_until(ms(1500)).unwrap();
    let w = s.world();
    let st = w.stats();
    assert_eq!((st.one_way_partitions, st.partitions, st.heals), (1, 0, 1));
    assert!(st.one_way_dropped > 0 && st.partitioned == st.one_way_dropped);
    for (a, b) in [(2, 0), (2, 1), (3, 0), (3, 1)] {
        assert!(
            suspected_between(w, a, b, ms(500), ms(1000)),
            "n{a} never suspected n{b}, whom it could not hear"
        );
        assert!(
            !suspects_now(w, a, b),
            "n{a} did not trust n{b} after the heal"
        );
    }
    for (a, b) in [(0, 2), (0, 3), (1, 2), (1, 3), (0, 1), (2, 3)] {
        assert!(
            !suspected(w, a, b),
            "n{a} suspected n{b}, whom it always heard"
        );
    }
}

#[test]
fn random_crashes_respect_the_bound_on_concurrent_failures() {
    let mut plan = FaultPlan::none();
    plan.random_crashes = Some(RandomCrashes {
        mean_interval: ms(100),
        downtime: Some(Delay::Uniform {
            min: ms(50),
            max: ms(400),
        }),
        max_down: 2,
        spare: vec![NodeId(0)],
    });
    let mut s = sim(18, 5, plan);
    s.invariant("at most 2 nodes down at once", |w| {
        let down = w.node_ids().iter().filter(|&&n| !w.is_up(n)).count();
        if down > 2 {
            Err(format!("{down} nodes down"))
        } else {
            Ok(())
        }
    });
    s.invariant("the spare node never crashes", |w| {
        if w.is_up(NodeId(0)) {
            Ok(())
        } else {
            Err("n0 is down".into())
        }
    });
    let r = s.run_until(ms(5000)).unwrap();
    assert!(
        r.stats.crashes >= 10 && r.stats.restarts >= 8,
        "{:?}",
        r.stats
    );
    assert!((1..5).any(|i| s.world().incarnation(NodeId(i)) > Incarnation(1)));
    assert_eq!(r.stats.invariant_checks, r.stats.steps * 3);
}

#[test]
fn inputs_reach_cores_and_inputs_to_down_nodes_are_counted() {
    let run = |pause: bool| {
        let mut plan = FaultPlan::none();
        plan.crash(NodeId(2), ms(100), None);
        let mut s = sim(19, 3, plan);
        if pause {
            s.input(
                ms(200),
                NodeId(1),
                ft_demo::heartbeat::HeartbeatInput::Pause,
            );
            s.input(
                ms(200),
                NodeId(2),
                ft_demo::heartbeat::HeartbeatInput::Pause,
            );
        }
        s.run_until(ms(600)).unwrap();
        let pings = s.world().core(NodeId(0)).unwrap().pings_received();
        (*s.stats(), pings)
    };
    let (paused, paused_pings) = run(true);
    let (_, running_pings) = run(false);
    assert_eq!((paused.inputs, paused.inputs_to_down_node), (1, 1));
    // n2 is down from 100 ms, so n0 counts about 10 pings of n2, then 20 (paused at 200 ms) or 60 of n1.
    assert!(
        paused_pings <= 32 && running_pings >= 65,
        "{paused_pings} vs {running_pings}"
    );
}

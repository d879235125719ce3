//! Runs are determined by seed and plan: the self-check holds over many
//! seeds, and a failing seed reproduces exactly.

mod common;

use std::cell::Cell;
use std::time::Duration;

use common::*;
use ft_core::NodeId;
use ft_demo::heartbeat::{self, HeartbeatConfig};
use ft_sim::{ClockFault, Delay, FaultPlan, RandomCrashes, SelfCheckError, SimConfig, self_check};

const HORIZON: Duration = Duration::from_millis(2000);

#[test]
fn every_seed_of_the_mixed_plan_is_deterministic_and_keeps_its_invariants() {
    // Every fault kind at once, over many seeds, invariants after every step.
    let mut crashes = 0;
    let mut digests = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let r = self_check(|| sim(seed, 5, FaultPlan::mixed(5, HORIZON)), HORIZON)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.stats.invariant_checks >= r.stats.steps);
        crashes += r.stats.crashes;
        digests.insert(r.digest);
    }
    assert!(
        crashes > 40,
        "random crashes too rare to mean anything: {crashes}"
    );
    assert_eq!(
        digests.len(),
        40,
        "different seeds must give different runs"
    );
}

#[test]
fn clock_faults_are_deterministic_and_change_the_run() {
    // Offsets either way and drifts either way, on top of every other fault.
    let plan = || {
        let mut plan = FaultPlan::mixed(5, HORIZON);
        plan.node(NodeId(2)).clock = Some(ClockFault::behind(ms(250)).with_drift(0.3));
        plan.node(NodeId(3)).clock = Some(ClockFault::ahead(ms(40)).with_drift(-0.2));
        plan.node(NodeId(4)).clock = Some(ClockFault::drifting(1e-4));
        plan
    };
    for seed in 0..10 {
        let r = self_check(|| sim(seed, 5, plan()), HORIZON).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.stats.skewed_clocks, 3);
        assert!(r.stats.skewed_timers > 0);
        let plain = sim(seed, 5, FaultPlan::mixed(5, HORIZON))
            .run_until(HORIZON)
            .unwrap();
        assert_eq!(plain.stats.skewed_clocks, 0);
        assert_ne!(
            r.digest, plain.digest,
            "seed {seed}: the clocks changed nothing"
        );
    }
}

#[test]
fn the_self_check_catches_a_nondeterministic_setup() {
    // A setup that sneaks in state from outside the seed: the second build
    // differs from the first, as a HashMap order or a clock read would.
    let builds = Cell::new(0u64);
    let res = self_check(
        || {
            builds.set(builds.get() + 1);
            let mut plan = FaultPlan::none();
            plan.network.loss = 0.1 * builds.get() as f64;
            sim(1, 3, plan)
        },
        ms(500),
    );
    match res {
        Err(SelfCheckError::Diverged { first, second }) => assert_ne!(first.digest, second.digest),
        other => panic!("divergence not detected: {other:?}"),
    }
}

/// The deliberately broken heartbeat (uses reservations before they are
/// durable) under crashes with a slow disk.
fn broken(seed: u64) -> ft_sim::Sim<ft_demo::heartbeat::Heartbeat> {
    let mut config = SimConfig::new(seed, 4);
    config.disk_latency = Delay::Uniform {
        min: ms(2),
        max: ms(30),
    };
    config.trace_tail = 5000;
    let mut hb = HeartbeatConfig::new(4);
    hb.persist_before_send = false;
    hb.block = 4;
    let mut plan = FaultPlan::none();
    plan.random_crashes = Some(RandomCrashes {
        mean_interval: ms(100),
        downtime: Some(Delay::Fixed(ms(20))),
        max_down: 1,
        spare: vec![NodeId(0)],
    });
    sim_with(config, hb, plan)
}

#[test]
fn crashes_expose_a_protocol_that_speaks_before_it_persists_and_the_seed_reproduces() {
    let failure = (0..200)
        .find_map(|seed| broken(seed).run_until(HORIZON).err())
        .expect("no seed exposed the broken protocol: crashes are not losing unsynced writes");
    assert_eq!(failure.invariant, heartbeat::NO_REUSE);
    let text = failure.to_string();
    assert!(text.contains(&format!("seed {}", failure.seed)), "{text}");
    assert!(
        text.contains("random_crashes"),
        "the plan is printed: {text}"
    );
    assert!(
        text.contains("CRASH") && text.contains("RESTART"),
        "the trace shows the crash: {text}"
    );
    assert!(!failure.trace.is_empty());

    // The same seed fails the same way, at the same step, with the same trace.
    let again = broken(failure.seed).run_until(HORIZON).unwrap_err();
    assert_eq!(
        (
            again.step,
            again.at,
            again.digest,
            &again.message,
            &again.trace
        ),
        (
            failure.step,
            failure.at,
            failure.digest,
            &failure.message,
            &failure.trace
        )
    );

    // And the correct protocol survives the very same seed and plan.
    let mut config = SimConfig::new(failure.seed, 4);
    config.disk_latency = Delay::Uniform {
        min: ms(2),
        max: ms(30),
    };
    let mut hb = HeartbeatConfig::new(4);
    hb.block = 4;
    let plan = broken(failure.seed).plan().clone();
    sim_with(config, hb, plan)
        .run_until(HORIZON)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn full_trace_is_readable_and_matches_the_digest() {
    let mut config = SimConfig::new(5, 3);
    config.record_trace = true;
    let mut plan = FaultPlan::none();
    plan.crash(NodeId(2), ms(30), Some(ms(20)));
    plan.network.loss = 0.2;
    let run = |config: SimConfig| {
        let mut s = sim_with(config, HeartbeatConfig::new(3), plan.clone());
        s.run_until(ms(100)).unwrap();
        (s.trace(), s.digest())
    };
    let (trace, digest) = run(config.clone());
    let trace = trace.expect("trace was recorded");
    assert!(trace.iter().any(|l| l.contains("n2 CRASH")));
    assert!(
        trace
            .iter()
            .any(|l| l.contains("RESTART as incarnation #1"))
    );
    assert!(trace.iter().any(|l| l.contains("dropped (loss)")));
    assert!(trace.iter().any(|l| l.contains("deliver Ping")));
    let (quiet, quiet_digest) = run(SimConfig {
        record_trace: false,
        ..config
    });
    assert!(quiet.is_none());
    assert_eq!(
        digest, quiet_digest,
        "recording the trace must not change the run"
    );
}

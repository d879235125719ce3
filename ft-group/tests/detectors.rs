//! The heartbeating group with each failure detector, run in the simulator:
//! crashed members are suspected by everyone (completeness), healthy ones by
//! no one (no false suspicion on a healthy network), hung members are
//! suspected and trusted again, restarts are noticed, and every run is
//! reproducible from its seed.

use std::fmt::Debug;
use std::time::Duration;

use ft_core::{FailureDetector, Incarnation, NodeId};
use ft_group::detector::{FixedTimeout, PhiAccrual};
use ft_group::heartbeat::{HeartbeatConfig, HeartbeatEvent, HeartbeatInput, Heartbeating};
use ft_sim::{Delay, FaultPlan, Sim, SimConfig, self_check};

const CRASHED: NodeId = NodeId(3);
/// When the crash scenarios crash [`CRASHED`] (unless they say otherwise).
const CRASH_AT: Duration = Duration::from_secs(5);
/// How long after the crash every survivor must suspect it: three times the
/// detection budget of phi's defaults (about 4.5 s of silence after regular
/// 1 s heartbeats), which leaves room for heartbeats lost just before the
/// crash.
const DETECTION_BOUND: Duration = Duration::from_secs(15);

fn ids(n: usize) -> Vec<NodeId> {
    (0..n as u64).map(NodeId).collect()
}

/// A heartbeating group of `n` members with `detector` under `plan`, with
/// the invariants that hold under any plan installed.
fn group<D>(seed: u64, n: usize, detector: D, plan: FaultPlan) -> Sim<Heartbeating<D>>
where
    D: FailureDetector + Clone + Debug + 'static,
{
    let mut sim: Sim<Heartbeating<D>> = Sim::new(
        SimConfig::new(seed, n),
        HeartbeatConfig::new(ids(n), detector),
        plan,
    );
    sim.invariant("a member never suspects itself", |w| {
        for (id, core) in w.cores() {
            if core.suspects().contains(&id) {
                return Err(format!("{id} suspects itself"));
            }
        }
        Ok(())
    });
    sim.invariant("only members are suspected", move |w| {
        for (id, core) in w.cores() {
            if let Some(s) = core.suspects().iter().find(|s| s.0 as usize >= n) {
                return Err(format!("{id} suspects {s}, who is no member"));
            }
        }
        Ok(())
    });
    sim.invariant("every suspect was announced", |w| {
        for (id, core) in w.cores() {
            if core.suspects().len() as u64 > core.suspicions_raised() {
                return Err(format!("{id} suspects more members than it reported"));
            }
        }
        Ok(())
    });
    sim
}

/// n3 crashes at `crash_at` and stays down; the network loses `loss` of
/// all messages.
fn crash_plan(crash_at: Duration, loss: f64) -> FaultPlan {
    let mut plan = FaultPlan::none();
    plan.network.loss = loss;
    plan.crash(CRASHED, crash_at, None);
    plan
}

/// Runs the crash scenario on `seeds` with 8 members and returns every
/// survivor's detection time (from the crash to its lasting suspicion of the
/// crashed member), after checking that every survivor suspects it
/// [`DETECTION_BOUND`] after the crash.
fn completeness<D>(
    detector: D,
    crash_at: Duration,
    loss: f64,
    seeds: std::ops::Range<u64>,
) -> Vec<Duration>
where
    D: FailureDetector + Clone + Debug + 'static,
{
    let n = 8;
    let mut detections = Vec::new();
    for seed in seeds {
        let mut sim = group(seed, n, detector.clone(), crash_plan(crash_at, loss));
        if let Err(f) = sim.run_until(crash_at + DETECTION_BOUND) {
            panic!("{f}");
        }
        assert_eq!(sim.stats().crashes, 1, "seed {seed}: the crash happened");
        assert_eq!(
            sim.stats().lost > 0,
            loss > 0.0,
            "seed {seed}: messages were lost"
        );
        for id in ids(n).into_iter().filter(|&id| id != CRASHED) {
            let core = sim.world().core(id).expect("survivors stay up");
            assert!(
                core.suspects().contains(&CRASHED),
                "seed {seed}: {id} does not suspect {CRASHED} {DETECTION_BOUND:?} after its crash"
            );
            // The suspicion that lasted is the last one raised.
            let at = sim
                .world()
                .events()
                .iter()
                .rev()
                .find(|e| e.node == id && e.event == HeartbeatEvent::Suspected(CRASHED))
                .map(|e| e.at)
                .expect("a suspicion is announced");
            detections.push(at.saturating_sub(crash_at));
        }
    }
    detections
}

/// Prints the distribution of detection times (seen with `--nocapture`)
/// and returns their mean and maximum.
fn summary(name: &str, d: &[Duration]) -> (Duration, Duration) {
    let mut sorted = d.to_vec();
    sorted.sort();
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let max = at(1.0);
    let mean = d.iter().sum::<Duration>() / d.len().max(1) as u32;
    eprintln!(
        "{name}: {} detections after the crash: min {:?}, median {:?}, p90 {:?}, max {max:?}, mean {mean:?}",
        d.len(),
        at(0.0),
        at(0.5),
        at(0.9),
    );
    (mean, max)
}

#[test]
fn a_crash_is_suspected_by_every_survivor_with_a_fixed_timeout() {
    let d = completeness(FixedTimeout::default(), CRASH_AT, 0.05, 0..20);
    assert_eq!(d.len(), 20 * 7);
    let (_, max) = summary("fixed timeout, 5% loss, crash at 5 s", &d);
    // The last heartbeat left n3 no later than the crash, so the timeout
    // plus one 100 ms check interval bounds every detection.
    assert!(
        max <= FixedTimeout::DEFAULT_TIMEOUT + Duration::from_millis(100),
        "{max:?}"
    );
}

#[test]
fn a_crash_is_suspected_by_every_survivor_with_phi_accrual() {
    let d = completeness(PhiAccrual::default(), CRASH_AT, 0.05, 0..20);
    assert_eq!(d.len(), 20 * 7);
    // Five seconds in, the window holds a handful of samples, and one lost
    // heartbeat among them (a 2 s gap) widens the learnt deviation a lot:
    // the slowest detections here are the price of that.
    let (_, max) = summary("phi accrual, 5% loss, crash at 5 s", &d);
    assert!(max <= DETECTION_BOUND, "{max:?}");
}

#[test]
fn phi_accrual_detects_within_its_learnt_bound_in_steady_state() {
    // After a minute of regular 1 s heartbeats the window's deviation is
    // below the 100 ms floor, so φ reaches 8 about 4.52 s after the last
    // heartbeat (1 s mean + 3 s pause + 5.23 × 100 ms). The last heartbeat
    // arrives up to 1 s before the crash; the check adds up to 100 ms.
    let crash_at = Duration::from_secs(60);
    let d = completeness(PhiAccrual::default(), crash_at, 0.0, 0..10);
    let (_, max) = summary("phi accrual, no loss, crash at 60 s", &d);
    assert!(max <= Duration::from_millis(4650), "{max:?}");
    let d = completeness(FixedTimeout::default(), crash_at, 0.0, 0..10);
    let (_, max) = summary("fixed timeout, no loss, crash at 60 s", &d);
    assert!(max <= Duration::from_millis(5100), "{max:?}");
    // With 5% loss the learnt deviation grows and detection slows, within
    // the same bound as early in the run.
    let d = completeness(PhiAccrual::default(), crash_at, 0.05, 0..10);
    summary("phi accrual, 5% loss, crash at 60 s", &d);
}

/// A healthy run: every member stays up, so no suspicion may ever be raised.
fn no_false_suspicion<D>(detector: D, plan: FaultPlan, seeds: std::ops::Range<u64>)
where
    D: FailureDetector + Clone + Debug + 'static,
{
    let n = 6;
    for seed in seeds {
        let mut sim = group(seed, n, detector.clone(), plan.clone());
        sim.invariant("no healthy member is suspected", |w| {
            for (id, core) in w.cores() {
                if let Some(s) = core.suspects().first() {
                    return Err(format!("{id} suspects the healthy {s}"));
                }
            }
            Ok(())
        });
        if let Err(f) = sim.run_until(Duration::from_secs(60)) {
            panic!("{f}");
        }
        // 60 s of beats, one per member pair per second, were delivered.
        assert!(sim.stats().delivered >= (n * (n - 1) * 59) as u64);
        assert_eq!(sim.stats().crashes, 0);
        for (_, core) in sim.world().cores() {
            assert_eq!(core.suspicions_raised(), 0);
        }
    }
}

fn jittery_network() -> FaultPlan {
    let mut plan = FaultPlan::none();
    plan.network.delay = Delay::Uniform {
        min: Duration::from_millis(1),
        max: Duration::from_millis(200),
    };
    plan
}

#[test]
fn healthy_members_are_never_suspected() {
    no_false_suspicion(FixedTimeout::default(), FaultPlan::none(), 0..3);
    no_false_suspicion(PhiAccrual::default(), FaultPlan::none(), 0..3);
    // Delays varying by 200 ms are no fault either.
    no_false_suspicion(FixedTimeout::default(), jittery_network(), 0..3);
    no_false_suspicion(PhiAccrual::default(), jittery_network(), 0..3);
}

/// n2 hangs (stops sending heartbeats, still listening) from 10 s to 25 s.
fn hung_member_is_suspected_then_trusted<D>(detector: D)
where
    D: FailureDetector + Clone + Debug + 'static,
{
    let n = 5;
    let hung = NodeId(2);
    let (pause, resume) = (Duration::from_secs(10), Duration::from_secs(25));
    for seed in 0..5 {
        let mut sim = group(seed, n, detector.clone(), FaultPlan::none());
        sim.input(pause, hung, HeartbeatInput::Pause);
        sim.input(resume, hung, HeartbeatInput::Resume);
        sim.invariant("only the hung member is suspected", move |w| {
            for (id, core) in w.cores() {
                if let Some(s) = core.suspects().iter().find(|&&s| s != hung) {
                    return Err(format!("{id} suspects {s}"));
                }
            }
            Ok(())
        });
        if let Err(f) = sim.run_until(resume) {
            panic!("{f}");
        }
        assert_eq!(sim.stats().inputs, 2);
        for (id, core) in sim.world().cores() {
            let expected = id != hung;
            assert_eq!(
                core.suspects().contains(&hung),
                expected,
                "seed {seed}: {id} at the resume"
            );
        }
        // One interval after resuming, every member has heard from it.
        if let Err(f) = sim.run_until(resume + Duration::from_secs(2)) {
            panic!("{f}");
        }
        for (id, core) in sim.world().cores() {
            assert!(
                core.suspects().is_empty(),
                "seed {seed}: {id} still suspects"
            );
            if id != hung {
                assert_eq!(core.suspicions_raised(), 1, "seed {seed}: {id}");
            }
        }
        let trusted = sim
            .world()
            .events()
            .iter()
            .filter(|e| e.event == HeartbeatEvent::Trusted(hung) && e.at > resume)
            .count();
        assert_eq!(trusted, n - 1, "seed {seed}");
    }
}

#[test]
fn a_hung_member_is_suspected_and_trusted_again() {
    hung_member_is_suspected_then_trusted(FixedTimeout::default());
    hung_member_is_suspected_then_trusted(PhiAccrual::default());
}

fn restart_plan() -> FaultPlan {
    let mut plan = FaultPlan::none();
    plan.network.loss = 0.05;
    plan.crash(CRASHED, CRASH_AT, Some(Duration::from_secs(10)));
    plan
}

fn restart_is_noticed<D>(detector: D)
where
    D: FailureDetector + Clone + Debug + 'static,
{
    let n = 5;
    for seed in 0..5 {
        let mut sim = group(seed, n, detector.clone(), restart_plan());
        if let Err(f) = sim.run_until(Duration::from_secs(25)) {
            panic!("{f}");
        }
        assert_eq!((sim.stats().crashes, sim.stats().restarts), (1, 1));
        let restarted = HeartbeatEvent::Restarted {
            node: CRASHED,
            incarnation: Incarnation(1),
        };
        for (id, core) in sim.world().cores() {
            assert!(core.suspects().is_empty(), "seed {seed}: {id}");
            if id == CRASHED {
                assert_eq!(core.incarnation(), Incarnation(1));
                continue;
            }
            let mine = |e: &HeartbeatEvent| {
                sim.world()
                    .events()
                    .iter()
                    .any(|o| o.node == id && o.event == *e)
            };
            assert!(
                mine(&HeartbeatEvent::Suspected(CRASHED)),
                "seed {seed}: {id}"
            );
            assert!(mine(&restarted), "seed {seed}: {id}");
            assert!(mine(&HeartbeatEvent::Trusted(CRASHED)), "seed {seed}: {id}");
        }
    }
}

#[test]
fn a_restart_is_noticed_and_trusted() {
    restart_is_noticed(FixedTimeout::default());
    restart_is_noticed(PhiAccrual::default());
}

#[test]
fn runs_are_reproducible_from_their_seed() {
    for seed in 0..3 {
        let fixed = self_check(
            || group(seed, 8, FixedTimeout::default(), restart_plan()),
            Duration::from_secs(30),
        );
        let phi = self_check(
            || group(seed, 8, PhiAccrual::default(), restart_plan()),
            Duration::from_secs(30),
        );
        for report in [fixed, phi] {
            match report {
                Ok(r) => assert_eq!((r.stats.crashes, r.stats.restarts), (1, 1)),
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
    }
}

//! Accuracy of the detectors in the same run: 5% loss and one slow
//! (timing-failure) member, no crash, so every verdict of failure is a
//! false positive.

use std::time::Duration;

use ft_core::NodeId;
use ft_group::heartbeat::HeartbeatEvent;
use ft_group::membership::MemberState;
use ft_group::side_by_side::{SideBySide, SideBySideConfig, SideEvent};
use ft_group::swim::SwimEvent;
use ft_sim::{Delay, FaultPlan, Sim, SimConfig};

const N: usize = 8;
const MINUTES: u64 = 10;
const SLOW: NodeId = NodeId(5);

/// Verdicts of failure about members that were up, over the whole run,
/// summed over every observer: for the heartbeat detectors a suspicion; for
/// SWIM a member declared failed (its *suspect* state is not a verdict: the
/// suspect can refute, and nothing acts on it).
#[derive(Debug, Default, Clone, Copy)]
struct FalsePositives {
    fixed: u64,
    phi: u64,
    swim_failed: u64,
    swim_suspect: u64,
}

/// One run of the three detectors side by side; `fixed` is the timeout of
/// the fixed-timeout detector.
fn run(seed: u64, slow_mean: Duration, fixed: Duration) -> (FalsePositives, ft_sim::Stats) {
    let mut plan = FaultPlan::none();
    plan.network.loss = 0.05;
    plan.node(SLOW).slow = Some(Delay::Exponential {
        min: Duration::ZERO,
        mean: slow_mean,
    });
    let mut config = SideBySideConfig::new((0..N as u64).map(NodeId).collect());
    config.fixed.detector = ft_group::detector::FixedTimeout::new(fixed);
    let mut sim: Sim<SideBySide> = Sim::new(SimConfig::new(seed, N), config, plan);
    let report = sim
        .run_until(Duration::from_secs(60 * MINUTES))
        .unwrap_or_else(|f| panic!("{f}"));
    let mut fp = FalsePositives::default();
    for e in sim.world().events() {
        match e.event {
            SideEvent::Fixed(HeartbeatEvent::Suspected(_)) => fp.fixed += 1,
            SideEvent::Phi(HeartbeatEvent::Suspected(_)) => fp.phi += 1,
            SideEvent::Swim(SwimEvent::Changed(c)) if c.state == MemberState::Failed => {
                fp.swim_failed += 1
            }
            SideEvent::Swim(SwimEvent::Changed(c)) if c.state == MemberState::Suspect => {
                fp.swim_suspect += 1
            }
            _ => {}
        }
    }
    (fp, report.stats)
}

/// False positives per ordered (observer, member) pair per minute.
fn rate(count: u64) -> f64 {
    count as f64 / ((N * (N - 1)) as f64 * MINUTES as f64)
}

#[test]
fn swim_has_fewer_false_positives_than_the_fixed_timeout_in_the_same_run() {
    for seed in [1, 2, 3] {
        let slow = Duration::from_secs(1);
        let (fp, stats) = run(
            seed,
            slow,
            ft_group::detector::FixedTimeout::DEFAULT_TIMEOUT,
        );
        // The faults really happened.
        assert!(stats.lost > 0 && stats.slowed > 0, "{stats:?}");
        assert_eq!(stats.crashes, 0);
        println!(
            "seed {seed}: {N} members, 5% loss, {SLOW} slow (exponential, mean {slow:?}), \
             {MINUTES} virtual min; false positives per member pair per minute: \
             fixed timeout (3 s) {:.4} ({}), phi accrual {:.4} ({}), SWIM {:.4} ({} declared \
             failed; {} refutable suspicions)",
            rate(fp.fixed),
            fp.fixed,
            rate(fp.phi),
            fp.phi,
            rate(fp.swim_failed),
            fp.swim_failed,
            fp.swim_suspect,
        );
        assert!(fp.fixed > 0, "the slow member must fool the fixed timeout");
        assert!(
            fp.swim_failed < fp.fixed,
            "seed {seed}: SWIM {} vs fixed timeout {}",
            fp.swim_failed,
            fp.fixed
        );
    }
}

/// The table in the README: several slow-member severities and two fixed
/// timeouts, three seeds each. `cargo test --release -p ft-group --test
/// accuracy -- --ignored --nocapture`
#[test]
#[ignore]
fn accuracy_table() {
    println!(
        "| slow member (exp. mean) | fixed 3 s | fixed 5 s | phi accrual | SWIM declared failed | SWIM suspicions |"
    );
    println!("|---|---|---|---|---|---|");
    for ms in [100u64, 300, 1000, 1500] {
        let mut three = FalsePositives::default();
        let mut five = FalsePositives::default();
        for seed in [1, 2, 3] {
            let slow = Duration::from_millis(ms);
            let (a, _) = run(seed, slow, Duration::from_secs(3));
            let (b, _) = run(seed, slow, Duration::from_secs(5));
            three.fixed += a.fixed;
            three.phi += a.phi;
            three.swim_failed += a.swim_failed;
            three.swim_suspect += a.swim_suspect;
            five.fixed += b.fixed;
        }
        let r = |c: u64| format!("{:.4} ({c})", rate(c) / 3.0);
        println!(
            "| {ms} ms | {} | {} | {} | {} | {} |",
            r(three.fixed),
            r(five.fixed),
            r(three.phi),
            r(three.swim_failed),
            r(three.swim_suspect)
        );
    }
}

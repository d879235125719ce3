//! The long sweep: thousands of seeds of the mixed fault plan, invariants
//! after every step, each seed run twice and compared. Ignored in debug
//! test runs; CI runs it in release mode:
//!
//! `cargo test --release -p ft-sim --test sweep -- --ignored`
//!
//! `FT_SWEEP_SEEDS` changes the number of seeds (default 2000).

use std::time::Duration;

use ft_demo::heartbeat::{self, HeartbeatConfig};
use ft_sim::{FaultPlan, SimConfig, self_check};

#[test]
#[ignore = "long: run in release mode (CI does)"]
fn thousands_of_seeds_under_every_fault_kind() {
    let seeds: u64 = std::env::var("FT_SWEEP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let horizon = Duration::from_secs(3);
    let (mut crashes, mut restarts, mut lost, mut checks) = (0, 0, 0, 0);
    for seed in 0..seeds {
        let nodes = 4 + (seed % 4) as usize;
        let make = || {
            heartbeat::sim(
                SimConfig::new(seed, nodes),
                HeartbeatConfig::new(nodes),
                FaultPlan::mixed(nodes, horizon),
            )
        };
        let r = self_check(make, horizon).unwrap_or_else(|e| panic!("{e}"));
        crashes += r.stats.crashes;
        restarts += r.stats.restarts;
        lost += r.stats.persists_lost;
        checks += r.stats.invariant_checks;
    }
    println!(
        "{seeds} seeds: {crashes} crashes, {restarts} restarts, {lost} writes lost in crashes, {checks} invariant checks"
    );
    assert!(
        crashes >= seeds && restarts > 0 && lost > 0,
        "the faults must really happen"
    );
}

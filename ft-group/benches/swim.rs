//! SWIM at N = 10, 100, 1000 members in the simulator: detection time,
//! dissemination, load per member, false positives.
//!
//! `cargo bench -p ft-group --bench swim`
//!
//! Every run: 5% message loss, 1 ms network delay, memberlist's LAN
//! defaults; three members crash (never to return) at 30 s, 35 s and 40 s
//! of virtual time; the run ends 120 s after the last crash. Figures are in
//! virtual time, so they do not depend on the machine; the load column is
//! also printed as a ratio to N = 10, the baseline of the same run (flat
//! means the ratio stays near 1). "Steady" load is counted over the first
//! 30 s, before any crash; "whole run" includes the crashes (probes of the
//! dead, their suspicion and the verdict's spread).

use std::time::{Duration, Instant};

use ft_core::NodeId;
use ft_group::membership::MemberState;
use ft_group::swim::{Swim, SwimConfig};
use ft_sim::{FaultPlan, Sim, SimConfig};

const CRASHES: [u64; 3] = [30, 35, 40];
const TAIL: u64 = 120;

struct Row {
    n: usize,
    detection: Vec<f64>,
    undetected: usize,
    spread_rounds: Vec<f64>,
    per_member_period: f64,
    per_member_period_all: f64,
    false_positives: u64,
    wall: Duration,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(n: usize, seed: u64) -> Row {
    let config = SwimConfig::with_size(n);
    let period = config.protocol_period.as_secs_f64();
    let mut plan = FaultPlan::none();
    plan.network.loss = 0.05;
    // Spread the victims over the id space.
    let victims: Vec<NodeId> = (0..CRASHES.len())
        .map(|i| NodeId(((i * n) / CRASHES.len() + 1) as u64 % n as u64))
        .collect();
    for (v, at) in victims.iter().zip(CRASHES) {
        plan.crash(*v, Duration::from_secs(at), None);
    }
    let mut sc = SimConfig::new(seed, n);
    sc.record_events = false;
    let mut sim: Sim<Swim> = Sim::new(sc, config, plan);
    let started = Instant::now();
    let end = Duration::from_secs(CRASHES[CRASHES.len() - 1] + TAIL);
    // The steady load: everyone up, only loss to cope with.
    let calm = Duration::from_secs(CRASHES[0]);
    sim.run_until(calm).expect("no invariants installed");
    let calm_sent = sim.stats().sent;
    sim.run_until(end).expect("no invariants installed");
    let wall = started.elapsed();
    let w = sim.world();
    let base = w.instant() - w.now();

    let mut detection = Vec::new();
    let mut undetected = 0;
    let mut spread_rounds = Vec::new();
    for (v, at) in victims.iter().zip(CRASHES) {
        let mut first = f64::INFINITY;
        let mut last: f64 = 0.0;
        for (_, core) in w.cores() {
            match core.membership().get(*v) {
                Some(m) if m.state == MemberState::Failed => {
                    let t = m.since.duration_since(base).as_secs_f64();
                    detection.push(t - at as f64);
                    first = first.min(t);
                    last = last.max(t);
                }
                _ => undetected += 1,
            }
        }
        if first.is_finite() {
            spread_rounds.push((last - first) / period);
        }
    }
    let mut false_positives = 0u64;
    for (_, core) in w.cores() {
        false_positives += core.stats().declared_failed;
    }
    let periods = calm.as_secs_f64() / period;
    Row {
        n,
        detection,
        undetected,
        spread_rounds,
        per_member_period: calm_sent as f64 / (n as f64 * periods),
        per_member_period_all: w.stats().sent as f64 / (n as f64 * end.as_secs_f64() / period),
        false_positives,
        wall,
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let sizes = [(10usize, 5u64), (100, 3), (1000, 1)];
    println!(
        "SWIM, memberlist LAN defaults, 5% loss, 3 crashes at 30/35/40 s, {TAIL} s after the last"
    );
    println!(
        "| N | seeds | detection median (s) | detection max (s) | undetected | spread of a verdict, median / max (periods) | msgs per member per period, steady | ratio to N=10 | msgs per member per period, whole run | members falsely declared failed | wall per run (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut baseline = None;
    for (n, seeds) in sizes {
        let mut detection = Vec::new();
        let mut spread = Vec::new();
        let mut load = Vec::new();
        let mut load_all = Vec::new();
        let mut undetected = 0;
        let mut fp = 0;
        let mut wall = Duration::ZERO;
        for seed in 0..seeds {
            let r = run(n, seed);
            assert_eq!(r.n, n);
            detection.extend(r.detection);
            spread.extend(r.spread_rounds);
            load.push(r.per_member_period);
            load_all.push(r.per_member_period_all);
            undetected += r.undetected;
            fp += r.false_positives;
            wall += r.wall;
        }
        let max_det = detection.iter().copied().fold(0.0, f64::max);
        let max_spread = spread.iter().copied().fold(0.0, f64::max);
        let load = median(&mut load);
        let base = *baseline.get_or_insert(load);
        println!(
            "| {n} | {seeds} | {:.2} | {:.2} | {undetected} | {:.1} / {:.1} | {:.2} | {:.2} | {:.2} | {fp} | {:.2} |",
            median(&mut detection),
            max_det,
            median(&mut spread),
            max_spread,
            load,
            load / base,
            median(&mut load_all),
            wall.as_secs_f64() / seeds as f64,
        );
    }
}

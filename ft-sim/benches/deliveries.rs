//! Simulated message deliveries per second on one core.
//!
//! `cargo bench -p ft-sim --bench deliveries`
//!
//! Runs the heartbeat protocol on 16 nodes in the simulator and divides the
//! deliveries by the wall time, median of several runs. Two baselines run in
//! the same process: the bare event queue (a binary heap pushing and popping
//! as many timestamped frames as the run delivered, the floor any simulator
//! pays) and the same scenario under the mixed fault plan. Ratios, not
//! absolute numbers, are what compare across machines.

use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_demo::heartbeat::{self, Heartbeat, HeartbeatConfig};
use ft_sim::{FaultPlan, Sim, SimConfig};

const NODES: usize = 16;
const VIRTUAL: Duration = Duration::from_secs(20);
const RUNS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One simulated run: (deliveries, wall seconds).
fn sim_run(seed: u64, plan: FaultPlan) -> (u64, f64) {
    let mut config = SimConfig::new(seed, NODES);
    config.record_events = false;
    config.trace_tail = 0;
    let mut sim: Sim<Heartbeat> = heartbeat::sim(config, HeartbeatConfig::new(NODES), plan);
    let start = Instant::now();
    let report = sim.run_until(VIRTUAL).expect("invariant held");
    (report.stats.delivered, start.elapsed().as_secs_f64())
}

/// The bare queue: push and pop `n` (time, seq, frame) entries.
fn queue_run(n: u64) -> f64 {
    let frame = Bytes::from_static(&[0u8; 28]);
    let start = Instant::now();
    let mut heap = BinaryHeap::new();
    let mut t = 0u64;
    for i in 0..n {
        t = t
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        heap.push(std::cmp::Reverse((t >> 40, i, frame.clone())));
        if heap.len() > 512 {
            black_box(heap.pop());
        }
    }
    while let Some(x) = heap.pop() {
        black_box(x);
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo test --benches` runs this binary with `--bench` absent; keep
    // that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 1 } else { RUNS };

    let mut clean = Vec::new();
    let mut mixed = Vec::new();
    let mut queue = Vec::new();
    let mut delivered = 0;
    for r in 0..runs {
        let (d, secs) = sim_run(r as u64, FaultPlan::none());
        delivered = d;
        clean.push(d as f64 / secs);
        queue.push(d as f64 / queue_run(d));
        let (dm, secs) = sim_run(r as u64, FaultPlan::mixed(NODES, VIRTUAL));
        mixed.push(dm as f64 / secs);
    }
    let (clean, mixed, queue) = (median(clean), median(mixed), median(queue));
    println!(
        "ft-sim deliveries ({NODES} nodes, {VIRTUAL:?} virtual, median of {runs} runs, one core)"
    );
    println!(
        "  fault-free plan : {:>12.0} deliveries/s  ({delivered} per run)",
        clean
    );
    println!(
        "  mixed plan      : {:>12.0} deliveries/s  (ratio to fault-free {:.2})",
        mixed,
        mixed / clean
    );
    println!(
        "  bare event queue: {:>12.0} pushes+pops/s (simulator runs at {:.2} of the queue alone)",
        queue,
        clean / queue
    );
    println!(
        "  target 1,000,000/s: {}",
        if clean >= 1e6 { "met" } else { "NOT met" }
    );
}

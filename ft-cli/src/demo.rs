//! `ft demo`: the heartbeat protocol under every kind of fault.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ft_demo::heartbeat::{self, Heartbeat, HeartbeatConfig, HeartbeatEvent};
use ft_sim::{FaultPlan, RunReport, SelfCheckError, Sim, SimConfig, self_check};

use crate::bounds;

/// Options of `ft demo`.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Seed of the featured run (the sweep uses the seeds after it): any
    /// number from 0 to 18446744073709551615.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Nodes in the simulated cluster: 2 to 16, others are refused (at
    /// least 4 to get every fault kind).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=MAX_NODES))]
    nodes: u64,
    /// Virtual duration of each run, in milliseconds: 1 to 60000 (one
    /// minute); values outside are clamped, with a note.
    #[arg(long, alias = "millis", default_value_t = 10_000)]
    duration_ms: u64,
    /// How many seeds the sweep runs: 0 to 10000, and at most
    /// 600000 / (duration in s × nodes²), about two minutes of work; more
    /// are clamped, with a note.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    /// Print every step of the featured run (at 16 nodes for 60 s, about
    /// 400 MB of text, held in about 1.4 GB of memory).
    #[arg(long)]
    trace: bool,
}

/// The most nodes `ft demo` runs: every node pings every other and the
/// invariants are checked after every step, so a run's work grows about as
/// nodes⁴ (one second of 64 nodes takes several seconds of a release build).
const MAX_NODES: u64 = 16;
/// The longest run, in milliseconds.
const MAX_DURATION_MS: u64 = 60_000;
/// The most seeds the sweep runs.
const MAX_SEEDS: u64 = 10_000;
/// The sweep's budget: seeds × duration (ms) × nodes² stays within it. A
/// run's work grows about as nodes⁴ × duration; with nodes² here, the worst
/// case (16 nodes) is about two minutes of a release build, and small
/// clusters, much cheaper per run, are not held to that cost.
const SWEEP_BUDGET: u64 = 600_000 * 1000;

/// The most seeds the sweep runs with runs of `duration_ms` over `nodes`.
fn max_seeds(duration_ms: u64, nodes: u64) -> u64 {
    let per_seed = duration_ms.max(1).saturating_mul(nodes.max(1).pow(2));
    (SWEEP_BUDGET / per_seed).min(MAX_SEEDS)
}

impl DemoArgs {
    /// Clamps the duration and the seeds into their ranges, with a note.
    pub(crate) fn clamp(&mut self) {
        self.duration_ms = bounds::clamp("duration-ms", self.duration_ms, 1..=MAX_DURATION_MS, "");
        let max = max_seeds(self.duration_ms, self.nodes);
        let why = if max < MAX_SEEDS {
            "seeds × duration in s × nodes² is at most 600000"
        } else {
            ""
        };
        self.seeds = bounds::clamp("seeds", self.seeds, 0..=max, why);
    }
}

fn scenario(seed: u64, nodes: usize, horizon: Duration, trace: bool) -> Sim<Heartbeat> {
    let mut config = SimConfig::new(seed, nodes);
    config.record_trace = trace;
    heartbeat::sim(
        config,
        HeartbeatConfig::new(nodes),
        FaultPlan::mixed(nodes, horizon),
    )
}

pub(crate) fn run(args: &DemoArgs) -> ExitCode {
    let nodes = args.nodes as usize;
    let horizon = Duration::from_millis(args.duration_ms);
    let plan = FaultPlan::mixed(nodes, horizon);
    println!(
        "ft demo: heartbeat failure detection on {nodes} simulated nodes for {horizon:?} of virtual time"
    );
    let models: Vec<String> = plan
        .failure_models()
        .iter()
        .map(|m| m.to_string())
        .collect();
    println!("failure models injected: {}", models.join(", "));
    println!();

    // The featured run, built twice to show it is deterministic.
    let started = Instant::now();
    let report = match self_check(|| scenario(args.seed, nodes, horizon, false), horizon) {
        Ok(r) => r,
        Err(SelfCheckError::Failure(f)) => {
            eprintln!("{f}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sim = scenario(args.seed, nodes, horizon, args.trace);
    if let Err(f) = sim.run_until(horizon) {
        eprintln!("{f}");
        return ExitCode::FAILURE;
    }
    if let Some(trace) = sim.trace() {
        for line in trace {
            println!("{line}");
        }
        println!();
    }
    print_run(&report, &sim);
    println!(
        "  determinism: ran twice, identical trace digest {:#018x} ({:.0?} wall for both)",
        report.digest,
        started.elapsed()
    );
    println!();

    // The sweep.
    let started = Instant::now();
    let mut totals = ft_sim::Stats::default();
    // Seeds wrap around after the largest.
    for seed in (1..=args.seeds).map(|i| args.seed.wrapping_add(i)) {
        match scenario(seed, nodes, horizon, false).run_until(horizon) {
            Ok(r) => {
                totals.delivered += r.stats.delivered;
                totals.crashes += r.stats.crashes;
                totals.invariant_checks += r.stats.invariant_checks;
            }
            Err(f) => {
                eprintln!("{f}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "sweep: {} more seeds, {} deliveries, {} crashes, {} invariant checks, all held ({:.1?} wall)",
        args.seeds,
        totals.delivered,
        totals.crashes,
        totals.invariant_checks,
        started.elapsed()
    );
    println!(
        "reproduce any run: ft demo --seed <seed> --nodes {nodes} --duration-ms {}",
        args.duration_ms
    );
    println!();
    if let Err(e) = crate::group::demo(args.seed) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = crate::rpc::demo(args.seed) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = crate::multicast::demo(args.seed) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = crate::commit::demo(args.seed) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    println!(
        "more: ft sim group --help, ft sim rpc --help, ft sim multicast --help, ft sim commit --help"
    );
    ExitCode::SUCCESS
}

fn print_run(report: &RunReport, sim: &Sim<Heartbeat>) {
    let s = &report.stats;
    let w = sim.world();
    println!("seed {}:", report.seed);
    println!(
        "  messages: {} sent, {} delivered, {} lost, {} duplicated, {} reordered, {} overtaken",
        s.sent, s.delivered, s.lost, s.duplicated, s.reordered, s.overtaken
    );
    println!(
        "  wire: {} frames bit-flipped in transit, {} dropped by the CRC, {} wrong values sent, {} undecodable",
        s.corrupted_in_transit, s.crc_dropped, s.value_corruptions, s.decode_errors
    );
    println!(
        "  omission: {} sends and {} receives omitted, {} dropped by partition, {} sent to a down node",
        s.send_omissions, s.receive_omissions, s.partitioned, s.to_down_node
    );
    println!(
        "  timing: {} messages slowed; state transitions {} repeated, {} skipped",
        s.slowed, s.repeated_transitions, s.skipped_transitions
    );
    println!(
        "  crashes: {} crashes, {} restarts, {} writes lost with their node, {} records made durable",
        s.crashes, s.restarts, s.persists_lost, s.persisted
    );
    println!(
        "  partitions: {} started ({} one-way), {} healed",
        s.partitions + s.one_way_partitions,
        s.one_way_partitions,
        s.heals
    );
    let (mut suspected, mut trusted, mut restarted) = (0, 0, 0);
    for e in w.events() {
        match e.event {
            HeartbeatEvent::Suspected(_) => suspected += 1,
            HeartbeatEvent::Trusted(_) => trusted += 1,
            HeartbeatEvent::Restarted { .. } => restarted += 1,
        }
    }
    println!(
        "  detector: {suspected} suspicions, {trusted} restored, {restarted} restarts noticed"
    );
    let incarnations: Vec<String> = w
        .node_ids()
        .iter()
        .map(|&n| format!("{n}{}", w.incarnation(n)))
        .collect();
    println!("  incarnations at the end: {}", incarnations.join(" "));
    let up = w.node_ids().iter().filter(|&&n| w.is_up(n)).count();
    println!("  nodes up at the end: {up}/{}", w.node_ids().len());
    let honest_reuse: u64 = w
        .cores()
        .map(|(_, c)| {
            heartbeat::honest_senders(sim.plan(), w.node_ids().len())
                .iter()
                .map(|&p| c.reuse_violations_from(p))
                .sum::<u64>()
        })
        .sum();
    println!(
        "  invariants: {} checks after {} steps, sequence numbers reused by correct nodes: {honest_reuse}",
        s.invariant_checks, s.steps
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_keeps_to_its_budget() {
        // The defaults fit at every size.
        for nodes in 2..=MAX_NODES {
            assert!(max_seeds(10_000, nodes) >= 200, "{nodes}");
        }
        assert_eq!(max_seeds(1, 2), MAX_SEEDS);
        assert_eq!(max_seeds(MAX_DURATION_MS, 16), 39);
        assert_eq!(max_seeds(MAX_DURATION_MS, 5), 400);
        for nodes in 2..=MAX_NODES {
            for duration_ms in [1, 999, 10_000, MAX_DURATION_MS] {
                let seeds = max_seeds(duration_ms, nodes);
                assert!(seeds * duration_ms * nodes * nodes <= SWEEP_BUDGET);
            }
        }
    }
}

//! `ft demo`: the heartbeat protocol under every kind of fault.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ft_sim::heartbeat::{self, Heartbeat, HeartbeatConfig, HeartbeatEvent};
use ft_sim::{FaultPlan, RunReport, SelfCheckError, Sim, SimConfig, self_check};

/// Options of `ft demo`.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Seed of the featured run (the sweep uses the seeds after it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Nodes in the simulated cluster (at least 4 to get every fault kind).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=64))]
    nodes: u64,
    /// Virtual duration of each run, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    millis: u64,
    /// How many seeds the sweep runs.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    /// Print every step of the featured run.
    #[arg(long)]
    trace: bool,
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
    let horizon = Duration::from_millis(args.millis.max(1));
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
    for seed in args.seed + 1..=args.seed + args.seeds {
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
        "reproduce any run: ft demo --seed <seed> --nodes {nodes} --millis {}",
        args.millis
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
    println!("more: ft sim group --help, ft sim rpc --help");
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
    println!("  partitions: {} started, {} healed", s.partitions, s.heals);
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

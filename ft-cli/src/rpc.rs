//! Reliable RPC on the command line: the RPC scenario of `ft demo` and
//! `ft sim rpc`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use ft_core::NodeId;
use ft_rpc::echo::{Echo, EchoConfig, EchoEvent, EchoInput};
use ft_rpc::rpc::{
    CancelReason, OrphanConfig, RpcConfig, RpcError, RpcEvent, Semantics, durable_completions,
};
use ft_sim::{FaultPlan, Sim, SimConfig};

const MS: Duration = Duration::from_millis(1);
const SERVER: NodeId = NodeId(0);

/// Which semantics `ft sim rpc` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Which {
    /// At-least-once.
    AtLeastOnce,
    /// At-most-once.
    AtMostOnce,
    /// Exactly-once.
    ExactlyOnce,
    /// All three, one run each with the same seed and faults.
    All,
}

/// Options of `ft sim rpc`.
#[derive(Args, Debug)]
pub(crate) struct SimRpcArgs {
    /// Clients calling the one server: 1 to 64, others are refused.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Calls per client (one every 20 ms): 0 to 10000; more are clamped,
    /// with a note.
    #[arg(long, default_value_t = 50)]
    calls: u64,
    /// Probability that the network loses a message: at least 0 and below
    /// 1, others are refused.
    #[arg(long, default_value_t = 0.1, value_parser = crate::bounds::probability)]
    loss: f64,
    /// Probability that the network duplicates a message: at least 0 and
    /// below 1, others are refused.
    #[arg(long, default_value_t = 0.05, value_parser = crate::bounds::probability)]
    duplicate: f64,
    /// Server crashes (each followed by a restart 200 ms later), spread over
    /// the calls: 0 to 1000, others are refused.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    server_crashes: u64,
    /// Crash the first client halfway (restart 300 ms later): its running
    /// calls become orphans.
    #[arg(long)]
    client_crash: bool,
    /// The semantics.
    #[arg(long, value_enum, default_value_t = Which::All)]
    semantics: Which,
    /// Seed of the run: any number from 0 to 18446744073709551615.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl SimRpcArgs {
    /// Clamps the calls into their range, with a note: 64 clients × 10000
    /// calls, under every semantics, take about two minutes.
    pub(crate) fn clamp(&mut self) {
        self.calls = crate::bounds::clamp("calls", self.calls, 0..=10_000, "");
    }
}

/// What one run did.
struct Summary {
    semantics: Semantics,
    calls: u64,
    answered: u64,
    errors: BTreeMap<&'static str, u64>,
    executed_twice: u64,
    executions: u64,
    durable_records: usize,
    from_records: u64,
    retransmissions: u64,
    orphans_killed: u64,
    lost: u64,
    duplicated: u64,
    crashes: u64,
}

fn class(e: &RpcError) -> &'static str {
    match e {
        RpcError::CannotLocateServer { .. } => "cannot locate server",
        RpcError::TimedOut { .. } => "timed out",
        RpcError::ServerCrashed { .. } => "server crashed",
        RpcError::Cancelled => "cancelled",
        RpcError::Refused(_) => "refused",
    }
}

fn run(args: &SimRpcArgs, semantics: Semantics) -> Result<Summary, String> {
    let n = args.clients as usize + 1;
    let span = 20 * MS * args.calls as u32;
    let mut plan = FaultPlan::none();
    plan.network.loss = args.loss;
    plan.network.duplicate = args.duplicate;
    for k in 0..args.server_crashes {
        let at = span * (k as u32 + 1) / (args.server_crashes as u32 + 1);
        plan.crash(SERVER, at, Some(200 * MS));
    }
    if args.client_crash {
        plan.crash(NodeId(1), span / 2, Some(300 * MS));
    }
    let rpc = RpcConfig::new((0..n as u64).map(NodeId).collect());
    let config = EchoConfig {
        rpc: RpcConfig {
            orphans: OrphanConfig::default(),
            ..rpc
        },
        service_time: 15 * MS,
        forward: None,
    };
    let mut sim: Sim<Echo> = Sim::new(SimConfig::new(args.seed, n), config, plan);
    for c in 1..n as u64 {
        for j in 0..args.calls {
            let token = c * 1_000_000 + j;
            sim.input(
                20 * MS * j as u32 + MS * c as u32,
                NodeId(c),
                EchoInput::Call {
                    token,
                    server: SERVER,
                    request: Bytes::copy_from_slice(&token.to_le_bytes()),
                    semantics,
                    timeout: 5000 * MS,
                },
            );
        }
    }
    let report = sim.run_until(span + 6000 * MS).map_err(|f| f.to_string())?;
    let w = sim.world();
    let mut s = Summary {
        semantics,
        calls: args.calls * args.clients,
        answered: 0,
        errors: BTreeMap::new(),
        executed_twice: 0,
        executions: 0,
        durable_records: durable_completions(&w.durable_records(SERVER)).len(),
        from_records: 0,
        retransmissions: 0,
        orphans_killed: 0,
        lost: report.stats.lost,
        duplicated: report.stats.duplicated,
        crashes: report.stats.crashes,
    };
    let mut executions: BTreeMap<Bytes, u64> = BTreeMap::new();
    for e in w.events() {
        let EchoEvent::Rpc(ev) = &e.event;
        match ev {
            RpcEvent::Execute { request, .. } => {
                *executions.entry(request.clone()).or_default() += 1
            }
            RpcEvent::Returned { result: Ok(_), .. } => s.answered += 1,
            RpcEvent::Returned {
                result: Err(err), ..
            } => *s.errors.entry(class(err)).or_default() += 1,
            RpcEvent::Cancel { reason, .. } if *reason == CancelReason::Reincarnation => {
                s.orphans_killed += 1
            }
            RpcEvent::Cancel { .. } => {}
        }
    }
    s.executions = executions.values().sum();
    s.executed_twice = executions.values().filter(|n| **n > 1).count() as u64;
    for (_, core) in w.cores() {
        s.from_records += core.rpc().server_stats().replies_from_records;
        s.retransmissions += core.rpc().client_stats().retransmissions;
    }
    Ok(s)
}

fn name(s: Semantics) -> &'static str {
    match s {
        Semantics::AtLeastOnce => "at-least-once",
        Semantics::AtMostOnce => "at-most-once",
        Semantics::ExactlyOnce => "exactly-once",
    }
}

fn print(s: &Summary) {
    let errors: Vec<String> = s.errors.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "  {:<14} {}/{} answered{}; {} executions, {} calls executed twice; {} duplicates answered from completion records; {} durable records; {} retransmissions{}",
        name(s.semantics),
        s.answered,
        s.calls,
        if errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", errors.join(", "))
        },
        s.executions,
        s.executed_twice,
        s.from_records,
        s.durable_records,
        s.retransmissions,
        if s.orphans_killed > 0 {
            format!("; {} orphans killed", s.orphans_killed)
        } else {
            String::new()
        }
    );
}

/// The RPC part of `ft demo`.
pub(crate) fn demo(seed: u64) -> Result<(), String> {
    let args = SimRpcArgs {
        clients: 3,
        calls: 40,
        loss: 0.1,
        duplicate: 0.05,
        server_crashes: 2,
        client_crash: true,
        semantics: Which::All,
        seed,
    };
    println!(
        "reliable RPC: 3 clients × 40 calls to an echo server; 10% loss, 5% duplication; the server crashes twice (restarts 200 ms later); client n1 crashes halfway"
    );
    for semantics in [
        Semantics::AtLeastOnce,
        Semantics::AtMostOnce,
        Semantics::ExactlyOnce,
    ] {
        print(&run(&args, semantics)?);
    }
    println!();
    Ok(())
}

pub(crate) fn sim_rpc(args: &SimRpcArgs) -> ExitCode {
    let started = Instant::now();
    println!(
        "ft sim rpc: {} clients × {} calls, {:.1}% loss, {:.1}% duplication, {} server crashes{}, seed {}",
        args.clients,
        args.calls,
        args.loss * 100.0,
        args.duplicate * 100.0,
        args.server_crashes,
        if args.client_crash {
            ", a client crash"
        } else {
            ""
        },
        args.seed
    );
    let which: Vec<Semantics> = match args.semantics {
        Which::AtLeastOnce => vec![Semantics::AtLeastOnce],
        Which::AtMostOnce => vec![Semantics::AtMostOnce],
        Which::ExactlyOnce => vec![Semantics::ExactlyOnce],
        Which::All => vec![
            Semantics::AtLeastOnce,
            Semantics::AtMostOnce,
            Semantics::ExactlyOnce,
        ],
    };
    for semantics in which {
        match run(args, semantics) {
            Ok(s) => {
                if semantics == Semantics::AtLeastOnce {
                    println!(
                        "  network: {} messages lost, {} duplicated; {} crashes",
                        s.lost, s.duplicated, s.crashes
                    );
                }
                print(&s)
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("  wall time {:.2?}", started.elapsed());
    ExitCode::SUCCESS
}

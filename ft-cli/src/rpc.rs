//! Reliable RPC on the command line: the RPC scenario of `ft demo` and
//! `ft sim rpc`.
//!
//! Every call is accounted for: answered, failed with an error named by its
//! class and by what it says about execution, or lost with a client that
//! crashed. A call nobody can account for is a bug, and the command fails.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use ft_core::NodeId;
use ft_rpc::echo::{Echo, EchoConfig, EchoEvent, EchoInput};
use ft_rpc::rpc::{
    CancelReason, Executed, RpcConfig, RpcError, RpcEvent, Semantics, durable_completions,
    durable_effects,
};
use ft_sim::{FaultPlan, Sim, SimConfig};

const MS: Duration = Duration::from_millis(1);
const SERVER: NodeId = NodeId(0);
/// Each client starts a call every `SPACING`.
const SPACING: Duration = Duration::from_millis(20);
/// The deadline of every call.
const DEADLINE: Duration = Duration::from_secs(5);
/// A crashed server restarts this much later.
const SERVER_DOWN: Duration = Duration::from_millis(200);
/// The crashed client restarts this much later.
const CLIENT_DOWN: Duration = Duration::from_millis(300);
/// Server crashes are at least this far apart, so that each life serves
/// calls for 50 ms at least before the next crash.
const CRASH_GAP: Duration = Duration::from_millis(250);

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
#[derive(Args, Debug, Clone)]
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
    /// the calls: 0 to 1000, others are refused; at most one per 250 ms of
    /// calls happen (the output says when fewer do).
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
    /// The server crashes are clamped to those that fit the calls, one per
    /// 250 ms of them, so that each life of the server serves calls.
    pub(crate) fn clamp(&mut self) {
        self.calls = crate::bounds::clamp("calls", self.calls, 0..=10_000, "");
        let fit = (self.span().as_millis() / CRASH_GAP.as_millis()) as u64;
        let why = format!("{:?} of calls fit one crash per {CRASH_GAP:?}", self.span());
        self.server_crashes = crate::bounds::clamp(
            "server-crashes",
            self.server_crashes,
            0..=fit.saturating_sub(1),
            &why,
        );
    }

    /// How long the clients keep starting calls.
    fn span(&self) -> Duration {
        SPACING * self.calls as u32
    }

    fn reproduce(&self) -> String {
        format!(
            "ft sim rpc --clients {} --calls {} --loss {} --duplicate {} --server-crashes {}{} --semantics {} --seed {}",
            self.clients,
            self.calls,
            self.loss,
            self.duplicate,
            self.server_crashes,
            if self.client_crash {
                " --client-crash"
            } else {
                ""
            },
            self.semantics
                .to_possible_value()
                .map_or("all".into(), |v| v.get_name().to_string()),
            self.seed
        )
    }
}

/// What one run did to every call.
#[derive(Default)]
struct Summary {
    calls: u64,
    answered: u64,
    /// Error class (with what it says about execution) → calls.
    errors: BTreeMap<String, u64>,
    /// Calls in flight at the client when it crashed: no outcome reaches
    /// anyone; they are the orphans' calls.
    died_with_client: u64,
    /// Calls the crashed client would have made while it was down.
    never_made: u64,
    /// Calls with no outcome and no crash to explain it: a bug.
    unaccounted: u64,
    executions: u64,
    executed_twice: u64,
    durable_records: usize,
    durable_effects: usize,
    effects_twice: u64,
    from_records: u64,
    retransmissions: u64,
    orphans_killed: u64,
    lost: u64,
    duplicated: u64,
    crashes: u64,
}

fn executed(e: Executed) -> &'static str {
    match e {
        Executed::Yes => "executed",
        Executed::No => "not executed",
        Executed::Unknown => "executed: unknown",
    }
}

/// An error's class, with what it says about execution.
fn class(e: &RpcError) -> String {
    let what = match e {
        RpcError::CannotLocateServer { .. } => "cannot locate server".to_string(),
        RpcError::TimedOut { .. } => "timed out".to_string(),
        RpcError::ServerCrashed { .. } => "server crashed".to_string(),
        RpcError::Cancelled { .. } => "cancelled".to_string(),
        RpcError::Refused(reason) => format!("refused ({reason})"),
        RpcError::Forgotten { .. } => "forgotten by the server".to_string(),
        RpcError::Mismatch => "mismatch".to_string(),
        RpcError::HandlerFailed => "handler failed".to_string(),
        RpcError::ReplyTooLarge { .. } => "reply too large".to_string(),
        other => other.to_string(),
    };
    format!("{what} ({})", executed(e.executed()))
}

/// What "executed twice" means under each semantics, in one line.
fn twice_means(s: Semantics) -> &'static str {
    match s {
        Semantics::AtLeastOnce => {
            "allowed: a retransmission that finds no record (its reply was lost, or the server restarted) runs the call again"
        }
        Semantics::AtMostOnce => {
            "never allowed: duplicates are answered from the completion record, and a restarted server's calls fail as \"server crashed\""
        }
        Semantics::ExactlyOnce => {
            "only a first execution whose effects died with the server before its completion record was durable; the durable effects hold each call once"
        }
    }
}

fn run(args: &SimRpcArgs, semantics: Semantics) -> Result<Summary, String> {
    let n = args.clients as usize + 1;
    let span = args.span();
    let crashes = args.server_crashes;
    let mut plan = FaultPlan::none();
    plan.network.loss = args.loss;
    plan.network.duplicate = args.duplicate;
    for k in 0..crashes {
        let at = span * (k as u32 + 1) / (crashes as u32 + 1);
        plan.crash(SERVER, at, Some(SERVER_DOWN));
    }
    let client_down = args
        .client_crash
        .then(|| (span / 2, span / 2 + CLIENT_DOWN));
    if let Some((at, _)) = client_down {
        plan.crash(NodeId(1), at, Some(CLIENT_DOWN));
    }
    let config = EchoConfig {
        rpc: RpcConfig::new((0..n as u64).map(NodeId).collect()),
        service_time: 15 * MS,
        service_time_of: None,
        forward: None,
    };
    let mut sim: Sim<Echo> = Sim::new(SimConfig::new(args.seed, n), config, plan);
    let mut started = BTreeMap::new();
    for c in 1..n as u64 {
        for j in 0..args.calls {
            let token = c * 1_000_000 + j;
            let at = SPACING * j as u32 + MS * c as u32;
            started.insert(token, (NodeId(c), at));
            sim.input(
                at,
                NodeId(c),
                EchoInput::Call {
                    token,
                    server: SERVER,
                    request: Bytes::copy_from_slice(&token.to_le_bytes()),
                    semantics,
                    timeout: DEADLINE,
                },
            );
        }
    }
    let report = sim
        .run_until(span + DEADLINE + Duration::from_secs(1))
        .map_err(|f| f.to_string())?;
    let w = sim.world();
    let records = w.durable_records(SERVER);
    let mut s = Summary {
        calls: args.calls * args.clients,
        durable_records: durable_completions(&records).len(),
        lost: report.stats.lost,
        duplicated: report.stats.duplicated,
        crashes: report.stats.crashes,
        ..Summary::default()
    };
    let effects = durable_effects(&records);
    s.durable_effects = effects.len();
    let mut per_call: BTreeMap<&Bytes, u64> = BTreeMap::new();
    for (_, effect) in &effects {
        *per_call.entry(effect).or_default() += 1;
    }
    s.effects_twice = per_call.values().filter(|n| **n > 1).count() as u64;

    let mut executions: BTreeMap<Bytes, u64> = BTreeMap::new();
    let mut returned = BTreeSet::new();
    for e in w.events() {
        let EchoEvent::Rpc(ev) = &e.event;
        match ev {
            RpcEvent::Execute { request, .. } => {
                *executions.entry(request.clone()).or_default() += 1
            }
            RpcEvent::Returned { token, result } => {
                // The client tokens are unique: a second outcome would be a bug.
                if !returned.insert(*token) {
                    return Err(format!("call {token} returned twice"));
                }
                match result {
                    Ok(_) => s.answered += 1,
                    Err(err) => *s.errors.entry(class(err)).or_default() += 1,
                }
            }
            RpcEvent::Cancel { reason, .. } if *reason == CancelReason::Reincarnation => {
                s.orphans_killed += 1
            }
            RpcEvent::Cancel { .. } => {}
        }
    }
    for (token, (client, at)) in &started {
        if returned.contains(token) {
            continue;
        }
        match client_down {
            Some((down, up)) if *client == NodeId(1) && *at >= down && *at < up => {
                s.never_made += 1
            }
            Some((down, _)) if *client == NodeId(1) && *at < down => s.died_with_client += 1,
            _ => s.unaccounted += 1,
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

fn calls(n: u64) -> String {
    format!("{n} call{}", if n == 1 { "" } else { "s" })
}

fn name(s: Semantics) -> &'static str {
    match s {
        Semantics::AtLeastOnce => "at-least-once",
        Semantics::AtMostOnce => "at-most-once",
        Semantics::ExactlyOnce => "exactly-once",
    }
}

/// Prints one run; fails if a call is unaccounted for or a semantics'
/// promise was broken.
fn print(semantics: Semantics, s: &Summary) -> Result<(), String> {
    let mut parts = vec![format!("{} answered", s.answered)];
    parts.extend(s.errors.iter().map(|(k, v)| format!("{v} {k}")));
    if s.died_with_client > 0 {
        parts.push(format!(
            "{} in flight when their client crashed (no outcome: the orphans' calls)",
            s.died_with_client
        ));
    }
    if s.never_made > 0 {
        parts.push(format!(
            "{} never made (their client was down)",
            s.never_made
        ));
    }
    if s.unaccounted > 0 {
        parts.push(format!("{} UNACCOUNTED", s.unaccounted));
    }
    println!(
        "  {:<14} {} calls: {}",
        name(semantics),
        s.calls,
        parts.join(", ")
    );
    println!(
        "  {:<14} {} executions; executed twice: {} — {}",
        "",
        s.executions,
        calls(s.executed_twice),
        twice_means(semantics)
    );
    let mut more = vec![
        format!(
            "{} duplicates answered from completion records",
            s.from_records
        ),
        format!("{} durable records", s.durable_records),
    ];
    if semantics == Semantics::ExactlyOnce {
        more.push(format!(
            "{} durable effects, {} with more than one",
            s.durable_effects,
            calls(s.effects_twice)
        ));
    }
    more.push(format!("{} retransmissions", s.retransmissions));
    if s.orphans_killed > 0 {
        more.push(format!("{} orphans killed", s.orphans_killed));
    }
    println!("  {:<14} {}", "", more.join("; "));
    if s.unaccounted > 0 {
        return Err(format!(
            "{} calls ended with no outcome and no crash to explain it",
            s.unaccounted
        ));
    }
    if semantics == Semantics::AtMostOnce && s.executed_twice > 0 {
        return Err("at-most-once executed a call twice".into());
    }
    if s.effects_twice > 0 {
        return Err("a call's effect is durable twice".into());
    }
    Ok(())
}

const ALL: [Semantics; 3] = [
    Semantics::AtLeastOnce,
    Semantics::AtMostOnce,
    Semantics::ExactlyOnce,
];

/// The RPC part of `ft demo`.
pub(crate) fn demo(seed: u64) -> Result<(), String> {
    let mut args = SimRpcArgs {
        clients: 3,
        calls: 40,
        loss: 0.1,
        duplicate: 0.05,
        server_crashes: 2,
        client_crash: true,
        semantics: Which::All,
        seed,
    };
    args.clamp();
    println!(
        "reliable RPC: 3 clients × 40 calls (5 s deadlines) to an echo server; 10% loss, 5% duplication; the server crashes twice (restarts 200 ms later); client n1 crashes halfway"
    );
    for semantics in ALL {
        print(semantics, &run(&args, semantics)?)?;
    }
    println!("  reproduce: {}", args.reproduce());
    println!();
    Ok(())
}

pub(crate) fn sim_rpc(args: &SimRpcArgs) -> ExitCode {
    let started = Instant::now();
    let crashes = args.server_crashes;
    println!(
        "ft sim rpc: {} clients × {} calls, {:.1}% loss, {:.1}% duplication, {} server crashes{}, seed {}",
        args.clients,
        args.calls,
        args.loss * 100.0,
        args.duplicate * 100.0,
        crashes,
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
        Which::All => ALL.to_vec(),
    };
    let mut failed = false;
    for (i, semantics) in which.into_iter().enumerate() {
        match run(args, semantics) {
            Ok(s) => {
                if i == 0 {
                    println!(
                        "  network: {} messages lost, {} duplicated; {} crashes",
                        s.lost, s.duplicated, s.crashes
                    );
                }
                if let Err(e) = print(semantics, &s) {
                    eprintln!("error: {e}");
                    failed = true;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    println!("  wall time {:.2?}", started.elapsed());
    println!("reproduce: {}", args.reproduce());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! The retry budget's choices, measured in the simulator: gRPC's bucket
//! alone (refilled only by replies), a bucket that also refills with time,
//! a probe per throttled call per second, and both (the default). Each is
//! run through a long cut-off, a server down for a long time (how much
//! retrying costs while nothing can answer), and the lossy crash scenario
//! of `ft sim rpc`. Run with
//! `cargo test --release -p ft-rpc --test budget -- --ignored --nocapture`;
//! the table it prints is in the crate's README.

use std::time::Duration;

use bytes::Bytes;
use ft_core::NodeId;
use ft_rpc::echo::{Echo, EchoConfig, EchoEvent, EchoInput};
use ft_rpc::rpc::{RetryBudget, RpcConfig, RpcEvent, Semantics};
use ft_sim::{FaultPlan, Sim, SimConfig};

const MS: Duration = Duration::from_millis(1);
const SERVER: NodeId = NodeId(0);

fn choices() -> [(&'static str, RetryBudget); 4] {
    let d = RetryBudget::default();
    [
        (
            "gRPC bucket alone",
            RetryBudget {
                refill_per_sec: 0.0,
                probe_every: None,
                ..d
            },
        ),
        (
            "refill with time",
            RetryBudget {
                probe_every: None,
                ..d
            },
        ),
        (
            "probe per call",
            RetryBudget {
                refill_per_sec: 0.0,
                ..d
            },
        ),
        ("both (default)", d),
    ]
}

/// What the clients ask: `clients` × `calls` (one every 20 ms), each with
/// `deadline`.
struct Load {
    clients: u64,
    calls: u64,
    deadline: Duration,
    semantics: Semantics,
}

/// Runs `load` under `plan` until `horizon`; returns (answered, messages
/// the clients sent, total calls).
fn run(
    budget: RetryBudget,
    plan: FaultPlan,
    load: Load,
    horizon: Duration,
    seed: u64,
) -> (usize, u64, u64) {
    let Load {
        clients,
        calls,
        deadline,
        semantics,
    } = load;
    let n = clients as usize + 1;
    let mut rpc = RpcConfig::new((0..n as u64).map(NodeId).collect());
    rpc.budget = budget;
    let config = EchoConfig {
        rpc,
        service_time: 10 * MS,
        forward: None,
        service_time_of: None,
    };
    let mut sim: Sim<Echo> = Sim::new(SimConfig::new(seed, n), config, plan);
    for c in 1..=clients {
        for j in 0..calls {
            let token = c * 1000 + j;
            sim.input(
                20 * MS * j as u32 + MS,
                NodeId(c),
                EchoInput::Call {
                    token,
                    server: SERVER,
                    request: Bytes::copy_from_slice(&token.to_le_bytes()),
                    semantics,
                    timeout: deadline,
                },
            );
        }
    }
    sim.run_until(horizon).unwrap();
    let answered = sim
        .world()
        .events()
        .iter()
        .filter(|e| {
            matches!(
                &e.event,
                EchoEvent::Rpc(RpcEvent::Returned { result: Ok(_), .. })
            )
        })
        .count();
    let sent: u64 = (1..=clients)
        .filter_map(|c| sim.world().core(NodeId(c)))
        .map(|c| c.rpc().client_stats().retransmissions + c.rpc().client_stats().calls)
        .sum();
    (answered, sent, clients * calls)
}

#[test]
#[ignore = "a measurement: prints the table of the crate's README"]
fn budget_choices() {
    println!(
        "| budget | cut off 10 s, 30 s deadlines: answered | server down 20 s: messages per call per second | ft sim rpc (exactly-once, 20% loss, 3 server crashes): answered |"
    );
    println!("|---|---:|---:|---:|");
    for (name, budget) in choices() {
        // A client cut off for the first 10 s of 30 s deadlines.
        let mut cut = FaultPlan::none();
        cut.partition(
            vec![vec![SERVER], vec![NodeId(1)]],
            Duration::ZERO,
            10_000 * MS,
        );
        let (a1, _, n1) = run(
            budget,
            cut,
            Load {
                clients: 1,
                calls: 10,
                deadline: 30_000 * MS,
                semantics: Semantics::ExactlyOnce,
            },
            31_000 * MS,
            1,
        );
        // The server down for 20 s while 3 clients × 20 calls wait (30 s
        // deadlines): what the retries cost while nothing can answer.
        let mut down = FaultPlan::none();
        down.crash(SERVER, Duration::ZERO, Some(20_000 * MS));
        let (_, m2, n2) = run(
            budget,
            down,
            Load {
                clients: 3,
                calls: 20,
                deadline: 30_000 * MS,
                semantics: Semantics::AtLeastOnce,
            },
            19_000 * MS,
            1,
        );
        let per_call_sec = m2 as f64 / n2 as f64 / 19.0;
        // `ft sim rpc --semantics exactly-once --loss 0.2 --duplicate 0
        // --server-crashes 3`: 3 clients × 50 calls, 5 s deadlines.
        let mut answered3 = 0;
        let mut total3 = 0;
        for seed in 1..=3 {
            let mut plan = FaultPlan::none();
            plan.network.loss = 0.2;
            for k in 1..=3u32 {
                plan.crash(SERVER, 400 * MS * k, Some(200 * MS));
            }
            let (a, _, n) = run(
                budget,
                plan,
                Load {
                    clients: 3,
                    calls: 50,
                    deadline: 5000 * MS,
                    semantics: Semantics::ExactlyOnce,
                },
                8000 * MS,
                seed,
            );
            answered3 += a;
            total3 += n;
        }
        println!("| {name} | {a1}/{n1} | {per_call_sec:.2} | {answered3}/{total3} (seeds 1–3) |");
    }
}

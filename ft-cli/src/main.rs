#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bounds;
mod demo;
mod group;
mod rpc;

use clap::{Parser, Subcommand};

/// ft runs fault-tolerance protocols under injected failures and reports
/// what happened. Every run is deterministic: the seed it prints reproduces
/// it exactly.
#[derive(Parser, Debug)]
#[command(name = "ft", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the heartbeat failure detector on a simulated cluster under a
    /// mixed fault plan (loss, duplication, reordering, bit flips, a slow
    /// node, omission windows, value failures, a partition, random crashes)
    /// and print a summary; then sweep many seeds with the invariants checked
    /// after every step.
    Demo(demo::DemoArgs),
    /// Run one scenario in the simulator with the parameters you choose.
    Sim {
        #[command(subcommand)]
        scenario: SimScenario,
    },
}

#[derive(Subcommand, Debug)]
enum SimScenario {
    /// A group of N members under loss, crashes and a slow member: the
    /// fixed-timeout, phi-accrual and SWIM detectors side by side (SWIM
    /// alone above 100 members), with detection times, false positives and
    /// load per member.
    Group(group::SimGroupArgs),
    /// Clients calling an echo server under loss, duplication, server
    /// crashes and a client crash, with at-least-once, at-most-once and
    /// exactly-once semantics side by side: what was answered, what failed
    /// and why, what executed twice.
    Rpc(rpc::SimRpcArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(mut args) => {
            args.clamp();
            demo::run(&args)
        }
        Command::Sim {
            scenario: SimScenario::Group(mut args),
        } => {
            args.clamp();
            group::sim_group(&args)
        }
        Command::Sim {
            scenario: SimScenario::Rpc(mut args),
        } => {
            args.clamp();
            rpc::sim_rpc(&args)
        }
    }
}

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bounds;
mod commit;
mod demo;
mod group;
mod multicast;
mod rpc;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};

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
    /// A group of n0 and N receivers on a tree of routers, with the
    /// feedback strategy (ACK, SRM-style NACK, hierarchical) and the
    /// delivery order you choose, under loss: deliveries, NACKs, repairs,
    /// suppressed requests and repairs, the source's load, all checked
    /// after every step.
    Multicast(multicast::SimMcastArgs),
    /// One transaction coordinated by n0 among n1, n2 and n3, with the
    /// commit protocol you choose (two-phase or three-phase), a crash at
    /// a point of the protocol, and the network's faults (loss or a
    /// partition at that point): the transcript, the termination protocol
    /// at work, and atomicity and validity checked after every step.
    Commit(commit::SimCommitArgs),
}

/// The name of a `--flag` value, as it is given on the command line.
fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// The usage of the deepest subcommand named by `words`.
fn usage(cmd: &mut clap::Command, words: &[String]) -> clap::builder::StyledStr {
    match words.iter().position(|w| cmd.find_subcommand(w).is_some()) {
        Some(i) => usage(
            cmd.find_subcommand_mut(&words[i])
                .expect("the subcommand exists"),
            &words[i + 1..],
        ),
        None => cmd.render_usage(),
    }
}

fn main() -> std::process::ExitCode {
    // clap prints the usage with a bad flag but not with a bad value: add it,
    // the usage of the subcommand the value was given to.
    let cli = Cli::try_parse().unwrap_or_else(|mut error| {
        if matches!(
            error.kind(),
            ErrorKind::ValueValidation | ErrorKind::InvalidValue
        ) && error.get(ContextKind::Usage).is_none()
        {
            let words: Vec<String> = std::env::args().skip(1).collect();
            let mut cmd = Cli::command();
            cmd.build();
            let usage = usage(&mut cmd, &words);
            error.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
        }
        error.exit()
    });
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
        Command::Sim {
            scenario: SimScenario::Multicast(mut args),
        } => {
            args.clamp();
            multicast::sim_multicast(&args)
        }
        Command::Sim {
            scenario: SimScenario::Commit(mut args),
        } => {
            args.clamp();
            commit::sim_commit(&args)
        }
    }
}

//! The feedback-implosion table: what one lost packet costs, and what the
//! source hears, for each feedback strategy as the group grows.
//!
//! `cargo bench -p ft-multicast --bench implosion`
//!
//! Every run (ft-sim, virtual time, so the figures do not depend on the
//! machine): the source sends 100 messages of 64 bytes, one every 5 ms, to
//! a group of itself and N receivers at the leaves of a tree of routers
//! (ten children each, 2 ms a link, `tests/topology`); the run goes on
//! 2 s after the last send and every receiver must have every message.
//! Loss is 1% per receiver, either independent for every copy or
//! correlated along the tree (every link loses each packet on its own, so
//! a packet lost near the root is lost to a whole subtree). Columns, as
//! medians over 3 seeds:
//!
//! - NACKs per lost packet: NACKs (ACK mode) or requests (NACK mode) sent
//!   by all members, per message of the source that some receiver lost
//!   on its first transmission;
//! - repairs per lost packet: retransmissions, by anyone;
//! - source load: messages the source received per message it sent
//!   (acknowledgements, NACKs, requests, session messages);
//! - parity per message: forward error correction's parity packets per
//!   message sent.
//!
//! The classic SRM row is SRM as published (uniform timers, c1 = c2 = 2,
//! d1 = d2 = 1, every holder races to repair); "NACK" is ft's default;
//! "NACK + FEC" adds two Reed–Solomon parity packets after every eight
//! messages (proactive), so repairs count parity packets too; "tree" is
//! hierarchical feedback with its default fanout of 4.

#[path = "../tests/topology/mod.rs"]
mod topology;

use std::time::Duration;

use ft_core::NodeId;
use ft_multicast::Tree as Hierarchy;
use ft_multicast::{Fec, Feedback, GroupConfig, GroupId, Spread, Srm};
use topology::{Figures, Loss, Run, Tree};

const G: GroupId = GroupId(1);
const SEEDS: u64 = 3;

type Strategy = Box<dyn Fn(Vec<NodeId>) -> GroupConfig>;

/// SRM's session messages take a share of the bandwidth that stays put as
/// the group grows: one per member per 200 ms up to 100 members, and less
/// often beyond.
fn session_interval(members: usize) -> Duration {
    Duration::from_millis(200) * (members / 100).max(1) as u32
}

fn base(members: Vec<NodeId>) -> GroupConfig {
    GroupConfig::new(G, members).with_history(1024)
}

fn strategies() -> Vec<(&'static str, Strategy)> {
    vec![
        ("ACK", Box::new(base)),
        (
            "classic SRM",
            Box::new(|m: Vec<NodeId>| {
                let srm = Srm {
                    c2: 2.0,
                    d2: 1.0,
                    spread: Spread::Uniform,
                    repairers: usize::MAX,
                    session_interval: session_interval(m.len()),
                    ..Srm::default()
                };
                base(m).with_feedback(Feedback::Nack(srm))
            }),
        ),
        (
            "NACK",
            Box::new(|m: Vec<NodeId>| {
                let srm = Srm {
                    session_interval: session_interval(m.len()),
                    ..Srm::default()
                };
                base(m).with_feedback(Feedback::Nack(srm))
            }),
        ),
        (
            "NACK + FEC",
            Box::new(|m: Vec<NodeId>| {
                let srm = Srm {
                    session_interval: session_interval(m.len()),
                    ..Srm::default()
                };
                base(m)
                    .with_feedback(Feedback::Nack(srm))
                    .with_fec(Fec::proactive(8, 2))
            }),
        ),
        (
            "tree",
            Box::new(|m: Vec<NodeId>| base(m).with_feedback(Feedback::Tree(Hierarchy::default()))),
        ),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: one small case,
    // to show it works.
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: &[u64] = if quick { &[10] } else { &[10, 100, 1000] };
    println!(
        "{:<12} {:<15} {:>5} {:>6} {:>8} {:>10} {:>9} {:>11}",
        "strategy", "loss", "N", "lost", "NACKs/l", "repairs/l", "src load", "parity/msg"
    );
    for loss in [Loss::Independent(0.01), Loss::Tree(0.01)] {
        for &n in sizes {
            for (name, group) in strategies() {
                if name == "classic SRM" && n > 100 {
                    // Every holder repairs every loss: about N repairs of N
                    // copies each per lost packet, too many to simulate.
                    println!(
                        "{name:<12} {:<15} {n:>5}   not run: ~N repairs per lost packet",
                        loss.name()
                    );
                    continue;
                }
                let run = Run {
                    tree: Tree::new(n, Duration::from_millis(2)),
                    loss,
                    messages: 100,
                    every: Duration::from_millis(5),
                    tail: Duration::from_secs(2),
                };
                let figures: Vec<Figures> = (0..SEEDS)
                    .map(|seed| {
                        run.go(seed, &group)
                            .unwrap_or_else(|e| panic!("{name}: {e}"))
                    })
                    .collect();
                let lost: u64 = figures.iter().map(|f| f.lost).sum();
                println!(
                    "{:<12} {:<15} {:>5} {:>6} {:>8.2} {:>10.2} {:>9.2} {:>11.2}",
                    name,
                    loss.name(),
                    n,
                    lost,
                    median(figures.iter().map(Figures::nacks_per_loss).collect()),
                    median(figures.iter().map(Figures::repairs_per_loss).collect()),
                    median(figures.iter().map(Figures::source_load).collect()),
                    median(figures.iter().map(Figures::parity_per_message).collect()),
                );
            }
        }
    }
}

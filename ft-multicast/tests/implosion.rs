//! Feedback implosion: what a lost packet costs in NACKs and repairs, and
//! what the source hears, as the group grows (the full table is printed by
//! `cargo bench -p ft-multicast --bench implosion`).

mod topology;

use std::time::Duration;

use ft_core::NodeId;
use ft_multicast::{Feedback, GroupConfig, GroupId, Srm};
use topology::{Figures, Loss, Run, Tree};

const G: GroupId = GroupId(1);

fn srm(members: Vec<NodeId>) -> GroupConfig {
    GroupConfig::new(G, members)
        .with_history(1024)
        .with_feedback(Feedback::Nack(Srm::default()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn with_suppression_a_lost_packet_costs_at_most_two_nacks_and_one_and_a_half_repairs() {
    for loss in [Loss::Independent(0.01), Loss::Tree(0.01)] {
        let run = Run {
            tree: Tree::new(100, Duration::from_millis(2)),
            loss,
            messages: 100,
            every: Duration::from_millis(5),
            tail: Duration::from_secs(2),
        };
        let figures: Vec<Figures> = (0..5)
            .map(|seed| run.go(seed, &srm).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let nacks = median(figures.iter().map(Figures::nacks_per_loss).collect());
        let repairs = median(figures.iter().map(Figures::repairs_per_loss).collect());
        let lost: u64 = figures.iter().map(|f| f.lost).sum();
        eprintln!(
            "100 receivers, loss {}: {lost} packets lost over 5 seeds; median {nacks:.2} NACKs and {repairs:.2} repairs per lost packet",
            loss.name()
        );
        assert!(lost > 0);
        assert!(nacks <= 2.0, "{nacks}");
        assert!(repairs <= 1.5, "{repairs}");
    }
}

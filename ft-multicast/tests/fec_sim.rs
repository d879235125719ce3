//! Forward error correction in the simulator: over many seeds of
//! independent loss, every message is delivered; parity rebuilds a share
//! of the losses with no feedback at all; and the same seeds and sends
//! cost fewer NACKs (or SRM requests) than without FEC. Invariants are
//! checked after every step, FEC's state bound among them.

mod common;

use std::time::Duration;

use bytes::Bytes;
use ft_core::NodeId;
use ft_multicast::{Fec, Feedback, GroupConfig, GroupId, McastConfig, McastEvent, McastInput, Srm};
use ft_sim::{FaultPlan, NetworkFaults, Sim, SimConfig};

use common::{Checker, all_delivered, lossy, seeds};

const G: GroupId = GroupId(1);
const N: usize = 5;
/// Longer than each sender's stream (100 messages): with SRM nothing is
/// forgotten, so every message must be delivered.
const HISTORY: usize = 128;
const K: usize = 8;
const PARITY: usize = 2;
const MS: Duration = Duration::from_millis(1);

/// Independent loss on every link (each copy of a multicast meets its
/// fate alone), until the network calms down at 2 s. The delay is fixed,
/// so nothing is reordered and parity never overtakes the messages it
/// covers: a message rebuilt from parity is one whose copy was lost (with
/// reordering, parity may rebuild a message still on its way; the
/// robustness sweep below has that).
fn plan() -> FaultPlan {
    FaultPlan {
        network: NetworkFaults {
            loss: 0.03,
            calm_after: Some(Duration::from_secs(2)),
            ..NetworkFaults::default()
        },
        ..FaultPlan::default()
    }
}

/// What one run cost and did.
#[derive(Default, Debug)]
struct Run {
    deliveries: usize,
    lost: u64,
    feedback: u64,
    repairs: u64,
    recovered: u64,
    parity: u64,
    rejected: u64,
}

fn run(seed: u64, feedback: Feedback, fec: Option<Fec>) -> Run {
    run_with(seed, feedback, fec, plan())
}

fn run_with(seed: u64, feedback: Feedback, fec: Option<Fec>, plan: FaultPlan) -> Run {
    let mut group = GroupConfig::new(G, (0..N as u64).map(NodeId))
        .with_history(HISTORY)
        .with_feedback(feedback);
    group.fec = fec;
    let config = McastConfig::new(vec![group]);
    let mut s = Sim::new(SimConfig::new(seed, N), config, plan);
    let mut checker = Checker::default();
    s.invariant("reliable FIFO multicast", move |w| checker.check(w));
    // What a receiver keeps for blocks: per other sender, the blocks that
    // meet its window, each at most k messages and the parity packets;
    // and the sender's own block being filled.
    let bound = (N - 1) * (HISTORY / K + 2) * (K + PARITY) + K;
    s.invariant("FEC state bounded", move |w| {
        for (node, core) in w.cores() {
            if core.held().fec > bound {
                return Err(format!("{node} holds {:?}, over {bound}", core.held()));
            }
        }
        Ok(())
    });
    // Every member sends 100 messages, one every 2 ms, staggered.
    for i in 0..N as u64 {
        for k in 0..100u64 {
            let mut p = i.to_le_bytes().to_vec();
            // Payloads of unequal lengths.
            p.resize(8 + (k as usize * 13) % 40, k as u8);
            s.input(
                MS * (10 + 2 * k as u32) + Duration::from_micros(300 * i),
                NodeId(i),
                McastInput::Send {
                    group: G,
                    token: k,
                    payload: Bytes::from(p),
                },
            );
        }
    }
    s.run_until(Duration::from_secs(4))
        .unwrap_or_else(|f| panic!("{f}"));
    let w = s.world();
    let mut r = Run {
        deliveries: all_delivered(w).unwrap_or_else(|e| panic!("seed {seed}: {e}")),
        lost: s.stats().lost,
        ..Run::default()
    };
    assert!(
        w.events()
            .iter()
            .all(|o| !matches!(o.event, McastEvent::Missed { .. })),
        "seed {seed}: nobody crashed, nothing may be missed"
    );
    for (_, c) in w.cores() {
        let st = c.stats();
        r.feedback += st.nacks_sent;
        r.repairs += st.repairs_sent;
        r.recovered += st.fec_recovered;
        r.parity += st.parity_sent;
        r.rejected += st.fec_rejected;
    }
    r
}

/// The same seeds without and with FEC: totals, printed, and the checks
/// every sweep makes.
fn compare(name: &str, feedback: Feedback, fec: Fec) -> (Run, Run) {
    let (mut without, mut with) = (Run::default(), Run::default());
    // A tenth of the sweep's seeds: each runs twice, in three
    // configurations.
    let n = seeds(60) / 10;
    for seed in 0..n {
        for (total, fec) in [(&mut without, None), (&mut with, Some(fec.clone()))] {
            let r = run(seed, feedback.clone(), fec);
            // Without reordering, parity never comes before the stream it
            // is about, nor disagrees with anything.
            assert_eq!(r.rejected, 0, "seed {seed}: honest parity refused");
            total.deliveries += r.deliveries;
            total.lost += r.lost;
            total.feedback += r.feedback;
            total.repairs += r.repairs;
            total.recovered += r.recovered;
            total.parity += r.parity;
        }
    }
    let share = with.recovered as f64 / (with.recovered + with.repairs).max(1) as f64;
    eprintln!(
        "{name}, {n} seeds, 3% independent loss, k = {K}, parity = {PARITY}: \
         without FEC {} NACKs, {} repairs ({} copies lost); \
         with FEC {} NACKs, {} repairs, {} rebuilt from parity ({:.0}% of what was made up), \
         {} parity packets ({} copies lost); {} deliveries checked",
        without.feedback,
        without.repairs,
        without.lost,
        with.feedback,
        with.repairs,
        with.recovered,
        share * 100.0,
        with.parity,
        with.lost,
        with.deliveries,
    );
    // The loss happened, and FEC repaired some of it unasked.
    assert!(without.lost > 0 && with.lost > 0);
    assert!(with.recovered > 0);
    assert_eq!(without.recovered + without.parity, 0);
    (without, with)
}

#[test]
fn with_acknowledgements_parity_saves_nacks_and_repairs() {
    let (without, with) = compare("ACK", Feedback::Ack, Fec::proactive(K, PARITY));
    // A receiver waits for parity before it NACKs: most gaps close first.
    assert!(with.feedback * 4 < without.feedback);
    assert!(with.repairs < without.repairs);
}

#[test]
fn with_srm_parity_saves_requests_and_repairs() {
    let (without, with) = compare(
        "SRM",
        Feedback::Nack(Srm::default()),
        Fec::proactive(K, PARITY),
    );
    assert!(with.feedback * 4 < without.feedback);
    assert!(with.repairs < without.repairs);
}

#[test]
fn with_srm_parity_on_demand_replaces_repairs() {
    let (without, with) = compare(
        "SRM, parity on demand",
        Feedback::Nack(Srm::default()),
        Fec::on_demand(K, PARITY),
    );
    // Answers in parity instead of single messages: fewer repairs.
    assert!(with.repairs < without.repairs);
}

#[test]
fn loss_duplication_reordering_and_corruption_break_nothing_with_fec() {
    // A quarter of the sweep's seeds, each in three configurations.
    let n = seeds(16) / 4;
    let (mut checked, mut recovered) = (0, 0);
    for seed in 0..n {
        for (feedback, fec) in [
            (Feedback::Ack, Fec::proactive(K, PARITY)),
            (Feedback::Nack(Srm::default()), Fec::proactive(K, PARITY)),
            (Feedback::Nack(Srm::default()), Fec::on_demand(K, PARITY)),
        ] {
            let plan = FaultPlan {
                network: lossy(Duration::from_secs(2)),
                ..FaultPlan::default()
            };
            let r = run_with(seed, feedback, Some(fec), plan);
            checked += r.deliveries;
            recovered += r.recovered;
        }
    }
    eprintln!("{n} seeds x 3 configurations: {checked} deliveries checked, {recovered} rebuilt");
    assert!(recovered > 0);
}

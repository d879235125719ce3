//! Process resilience on the command line: the group scenario of `ft demo`
//! and `ft sim group`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use ft_core::{FailureModel, NodeId, Protocol};
use ft_group::agreement::{OmConfig, OmEvent, OmGeneral, OmInput};
use ft_group::heartbeat::HeartbeatEvent;
use ft_group::side_by_side::{Detector, SideBySide, SideBySideConfig, SideEvent};
use ft_group::{
    Group, GroupConfig, GroupEvent, Masking, MemberState, Swim, SwimConfig, SwimEvent, sizing,
};
use ft_sim::{Delay, FaultPlan, Sim, SimConfig, SimRng};

use crate::bounds;

const SECOND: Duration = Duration::from_secs(1);

/// The group part of `ft demo`: a hierarchical group of five whose
/// coordinator crashes while another member is slow, then Byzantine
/// agreement with a traitor, and the bound shown tight.
pub(crate) fn demo(seed: u64) -> Result<(), String> {
    println!("process resilience: a hierarchical group of 5 over SWIM membership");
    let members: Vec<NodeId> = (0..5).map(NodeId).collect();
    for (model, masking) in [
        (FailureModel::Crash, Masking::Replication),
        (FailureModel::Arbitrary, Masking::Voting),
        (FailureModel::Arbitrary, Masking::Agreement),
    ] {
        println!(
            "  5 members survive k = {} {model} failures with {masking} (a group needs {})",
            sizing::max_tolerated(model, masking, 5),
            match masking {
                Masking::Replication => "k+1",
                Masking::Voting => "2k+1",
                Masking::Agreement => "3k+1",
            }
        );
    }
    let config = GroupConfig::hierarchical(members)
        .tolerating(FailureModel::Arbitrary, Masking::Voting, 2)
        .map_err(|e| e.to_string())?;
    let mut plan = FaultPlan::none();
    plan.network.loss = 0.05;
    plan.crash(NodeId(0), 5 * SECOND, None);
    plan.node(NodeId(3)).slow = Some(Delay::Exponential {
        min: Duration::ZERO,
        mean: Duration::from_millis(300),
    });
    println!(
        "  faults: 5% loss; n0 (the coordinator) crashes at 5 s; n3 is slow (every message delayed, exponential, mean 300 ms)"
    );
    let mut sim: Sim<Group> = Sim::new(SimConfig::new(seed, 5), config, plan);
    sim.run_until(30 * SECOND).map_err(|f| f.to_string())?;
    // With loss, a refutation or a late suspicion may be on its way at any
    // instant: run on until the views agree (gossip converges), or give up.
    while !views_agree(sim.world()) && sim.now() < 120 * SECOND {
        sim.run_for(SECOND / 4).map_err(|f| f.to_string())?;
    }
    let report = sim.report();
    let w = sim.world();
    let mut refutations = 0;
    let mut suspicions = 0;
    for e in w.events() {
        match e.event {
            // The first election at start-up is no news.
            GroupEvent::Coordinator { previous: None, .. } => {}
            GroupEvent::Coordinator { previous, current } => println!(
                "  {:>6.2} s  {} now follows coordinator {} (was {})",
                e.at.as_secs_f64(),
                e.node,
                show(current),
                show(previous)
            ),
            GroupEvent::Membership(SwimEvent::Changed(c))
                if c.node == NodeId(0) && c.state == MemberState::Failed =>
            {
                println!(
                    "  {:>6.2} s  {} declares n0 failed",
                    e.at.as_secs_f64(),
                    e.node
                )
            }
            GroupEvent::Membership(SwimEvent::Changed(c)) if c.state == MemberState::Suspect => {
                suspicions += 1
            }
            GroupEvent::Membership(SwimEvent::Refuted { .. }) => refutations += 1,
            _ => {}
        }
    }
    println!(
        "  {} messages sent, {} lost, {} slowed; {suspicions} suspicions raised, {refutations} refuted by the suspect itself",
        report.stats.sent, report.stats.lost, report.stats.slowed
    );
    let views = views(w);
    let agree = views_agree(w);
    let coordinators: Vec<String> = w
        .cores()
        .map(|(id, g)| format!("{id}→{}", show(g.coordinator())))
        .collect();
    let view: Vec<String> = views
        .first()
        .map(|v| v.iter().map(|(n, s, i)| format!("{n}#{i} {s}")).collect())
        .unwrap_or_default();
    println!(
        "  at {:.2} s: views agree: {}; view: {}; coordinators: {}",
        w.now().as_secs_f64(),
        if agree { "yes" } else { "no" },
        view.join(", "),
        coordinators.join(" ")
    );
    if !agree {
        return Err("the group's views did not converge".into());
    }
    println!();

    println!("Byzantine agreement, OM(m) (oral messages, synchronous rounds):");
    for (n, label) in [
        (4usize, "n = 4 ≥ 3m+1"),
        (3, "n = 3 < 3m+1 (bound is tight)"),
    ] {
        let (decisions, forged) = om_run(seed, n)?;
        println!(
            "  {label}, m = 1, n0 proposes \"attack\", traitor n{} relays \"retreat\" in every other message (forged: {forged}): {}",
            n - 1,
            decisions.join(", ")
        );
    }
    println!();
    Ok(())
}

fn views(w: &ft_sim::World<Group>) -> Vec<Vec<(NodeId, MemberState, u64)>> {
    w.cores()
        .map(|(_, g)| {
            g.membership()
                .iter()
                .map(|m| (m.node, m.state, m.incarnation.get()))
                .collect()
        })
        .collect()
}

fn views_agree(w: &ft_sim::World<Group>) -> bool {
    views(w).windows(2).all(|p| p[0] == p[1])
}

fn show(n: Option<NodeId>) -> String {
    n.map_or_else(|| "none".to_string(), |n| n.to_string())
}

/// OM(1) with the last general a traitor who relays "retreat" to every
/// other receiver; returns what each loyal general decided.
fn om_run(seed: u64, n: usize) -> Result<(Vec<String>, u64), String> {
    let generals: Vec<NodeId> = (0..n as u64).map(NodeId).collect();
    let traitor = NodeId(n as u64 - 1);
    let round = Duration::from_millis(10);
    let config = OmConfig::unchecked(
        generals,
        NodeId(0),
        1,
        round,
        Bytes::from_static(b"retreat"),
    )
    .map_err(|e| e.to_string())?;
    let checked = OmConfig::new(
        config.generals().to_vec(),
        NodeId(0),
        1,
        round,
        Bytes::from_static(b"retreat"),
    );
    let mut sim: Sim<OmGeneral> = Sim::new(SimConfig::new(seed, n), config, FaultPlan::none());
    let forged = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let count = forged.clone();
    let mut flip = false;
    sim.set_adversary(
        traitor,
        move |ctx: &mut ft_sim::AdversaryCtx<'_, _>, to, mut msg: ft_group::OmMessage| {
            flip = !flip;
            if flip {
                msg.value = Bytes::from_static(b"retreat");
                count.set(count.get() + 1);
            }
            ctx.send(to, msg);
        },
    );
    sim.input(
        Duration::ZERO,
        NodeId(0),
        OmInput::Propose(Bytes::from_static(b"attack")),
    );
    for g in 1..n as u64 {
        sim.input(Duration::ZERO, NodeId(g), OmInput::Start);
    }
    sim.run_until(Duration::from_secs(1))
        .map_err(|f| f.to_string())?;
    let mut out = Vec::new();
    for e in sim.world().events() {
        if let OmEvent::Decided(v) = &e.event
            && e.node != traitor
        {
            out.push(format!("{} decides {}", e.node, String::from_utf8_lossy(v)));
        }
    }
    if checked.is_err() {
        out.push("OmConfig::new refuses this group".to_string());
    }
    Ok((out, forged.get()))
}

/// Options of `ft sim group`.
#[derive(Args, Debug)]
pub(crate) struct SimGroupArgs {
    /// Members in the group: 3 to 2000, others are refused.
    #[arg(long, alias = "n", default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..=2000))]
    nodes: u64,
    /// Probability that the network loses a message: at least 0 and below
    /// 1, others are refused.
    #[arg(long, default_value_t = 0.05, value_parser = bounds::probability)]
    loss: f64,
    /// Members that crash (for good), one every 5 s from a quarter of the
    /// run: 0 to nodes − 2, more are clamped, with a note; crashes that would
    /// come after the end of the run do not happen, and a note says so.
    #[arg(long, default_value_t = 1)]
    crashes: u64,
    /// Make one member slow: every message it sends or receives is delayed
    /// by an exponential with this mean, in milliseconds: 0 (none) to 60000,
    /// others are refused.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    slow_ms: u64,
    /// Virtual duration, in milliseconds: 10000 (10 s) to 600000 (10 min);
    /// values outside are clamped, with a note.
    #[arg(long, default_value_t = 120_000)]
    duration_ms: u64,
    /// The virtual duration in seconds: the old spelling of --duration-ms.
    #[arg(long, hide = true, conflicts_with = "duration_ms")]
    secs: Option<u64>,
    /// Seed of the run: any number from 0 to 18446744073709551615.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The shortest run, in milliseconds: the first crash comes at a quarter of
/// it, and detection takes a few seconds.
const MIN_DURATION_MS: u64 = 10_000;
/// The longest run, in milliseconds: 2000 members take about a minute.
const MAX_DURATION_MS: u64 = 600_000;

impl SimGroupArgs {
    /// Clamps the duration and the crashes into their ranges, with a note.
    pub(crate) fn clamp(&mut self) {
        self.duration_ms = match self.secs.take() {
            Some(secs) => {
                let range = MIN_DURATION_MS / 1000..=MAX_DURATION_MS / 1000;
                bounds::clamp("secs", secs, range, "") * 1000
            }
            None => bounds::clamp(
                "duration-ms",
                self.duration_ms,
                MIN_DURATION_MS..=MAX_DURATION_MS,
                "",
            ),
        };
        self.crashes = bounds::clamp(
            "crashes",
            self.crashes,
            0..=self.nodes - 2,
            "at most --nodes minus 2",
        );
    }
}

/// Above this many members only SWIM runs: the heartbeat detectors send
/// n² messages per interval.
const COMPARE_UP_TO: u64 = 100;

pub(crate) fn sim_group(args: &SimGroupArgs) -> ExitCode {
    let n = args.nodes as usize;
    let horizon = Duration::from_millis(args.duration_ms);
    let mut rng = SimRng::new(args.seed ^ 0x6A09_E667_F3BC_C908);
    let mut ids: Vec<NodeId> = (0..args.nodes).map(NodeId).collect();
    // A seeded shuffle picks the victims, and the slow member among the rest.
    for i in (1..ids.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        ids.swap(i, j);
    }
    let k = (args.crashes as usize).min(n.saturating_sub(2));
    let victims: Vec<(NodeId, Duration)> = ids[..k]
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, horizon / 4 + 5 * SECOND * i as u32))
        .filter(|(_, at)| *at < horizon)
        .collect();
    if victims.len() < k {
        eprintln!(
            "note: --crashes {k}: {} of them would come after the end of the run and do not happen",
            k - victims.len()
        );
    }
    let slow = (args.slow_ms > 0).then(|| ids[k]);
    let mut plan = FaultPlan::none();
    plan.network.loss = args.loss;
    for &(v, at) in &victims {
        plan.crash(v, at, None);
    }
    if let Some(s) = slow {
        plan.node(s).slow = Some(Delay::Exponential {
            min: Duration::ZERO,
            mean: Duration::from_millis(args.slow_ms),
        });
    }
    println!(
        "ft sim group: {n} members, {:.1}% loss, crashes: {}, slow member: {}, {} s virtual, seed {}",
        args.loss * 100.0,
        if victims.is_empty() {
            "none".to_string()
        } else {
            victims
                .iter()
                .map(|(v, at)| format!("{v} at {} s", at.as_secs()))
                .collect::<Vec<_>>()
                .join(", ")
        },
        slow.map_or("none".to_string(), |s| format!(
            "{s} (mean {} ms)",
            args.slow_ms
        )),
        horizon.as_secs_f64(),
        args.seed
    );
    let started = Instant::now();
    let result = if args.nodes <= COMPARE_UP_TO {
        compare(args.seed, n, plan, horizon, &victims)
    } else {
        println!(
            "  (above {COMPARE_UP_TO} members only SWIM runs: all-to-all heartbeats cost n² messages per interval)"
        );
        swim_only(args.seed, n, plan, horizon, &victims)
    };
    match result {
        Ok(()) => {
            println!("  wall time {:.2?}", started.elapsed());
            println!(
                "reproduce: ft sim group --nodes {} --loss {} --crashes {} --slow-ms {} --duration-ms {} --seed {}",
                args.nodes, args.loss, args.crashes, args.slow_ms, args.duration_ms, args.seed
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Tally {
    detections: Vec<f64>,
    false_positives: u64,
    sent: u64,
}

fn print_network(s: &ft_sim::Stats) {
    println!(
        "  network: {} messages sent, {} lost, {} slowed; {} crashes",
        s.sent, s.lost, s.slowed, s.crashes
    );
}

fn median_max(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "-".to_string();
    }
    v.sort_by(f64::total_cmp);
    format!("{:.2} s / {:.2} s", v[v.len() / 2], v[v.len() - 1])
}

fn compare(
    seed: u64,
    n: usize,
    plan: FaultPlan,
    horizon: Duration,
    victims: &[(NodeId, Duration)],
) -> Result<(), String> {
    let config = SideBySideConfig::new((0..n as u64).map(NodeId).collect());
    let mut sim: Sim<SideBySide> = Sim::new(SimConfig::new(seed, n), config, plan);
    let report = sim.run_until(horizon).map_err(|f| f.to_string())?;
    let w = sim.world();
    let crashed_at = |node: NodeId| victims.iter().find(|v| v.0 == node).map(|v| v.1);
    let mut tallies: Vec<(Detector, Tally)> = Detector::ALL
        .iter()
        .map(|&d| (d, Tally::default()))
        .collect();
    // The first verdict of each (detector, observer, member) after the
    // member's crash counts as its detection; verdicts about members that
    // were up are false positives.
    let mut seen = std::collections::BTreeSet::new();
    for e in w.events() {
        let (detector, about) = match e.event {
            SideEvent::Fixed(HeartbeatEvent::Suspected(m)) => (Detector::FixedTimeout, m),
            SideEvent::Phi(HeartbeatEvent::Suspected(m)) => (Detector::PhiAccrual, m),
            SideEvent::Swim(SwimEvent::Changed(c)) if c.state == MemberState::Failed => {
                (Detector::Swim, c.node)
            }
            _ => continue,
        };
        let t = &mut tallies.iter_mut().find(|(d, _)| *d == detector).unwrap().1;
        match crashed_at(about) {
            Some(at) if e.at >= at => {
                if seen.insert((detector, e.node, about)) {
                    t.detections.push((e.at - at).as_secs_f64());
                }
            }
            _ => t.false_positives += 1,
        }
    }
    for (id, core) in w.cores() {
        let _ = id;
        for (d, t) in &mut tallies {
            t.sent += match d {
                Detector::FixedTimeout => core.fixed().counters().messages_sent,
                Detector::PhiAccrual => core.phi().counters().messages_sent,
                Detector::Swim => core.swim().counters().messages_sent,
            };
        }
    }
    let observers = w.cores().count();
    print_network(&report.stats);
    println!(
        "  | detector | detection median / max | undetected | false positives | msgs per member per s |"
    );
    println!("  |---|---|---|---|---|");
    let expected = observers * victims.len();
    for (d, t) in &mut tallies {
        println!(
            "  | {d} | {} | {} | {} | {:.2} |",
            median_max(&mut t.detections),
            expected.saturating_sub(t.detections.len()),
            t.false_positives,
            t.sent as f64 / (n as f64 * horizon.as_secs_f64())
        );
    }
    println!(
        "  (SWIM's verdict is \"declared failed\"; a heartbeat detector's is a suspicion; counts are summed over the {observers} members up at the end)"
    );
    Ok(())
}

fn swim_only(
    seed: u64,
    n: usize,
    plan: FaultPlan,
    horizon: Duration,
    victims: &[(NodeId, Duration)],
) -> Result<(), String> {
    let mut config = SimConfig::new(seed, n);
    config.record_events = false;
    let mut sim: Sim<Swim> = Sim::new(config, SwimConfig::with_size(n), plan);
    let report = sim.run_until(horizon).map_err(|f| f.to_string())?;
    let w = sim.world();
    let base = w.instant() - w.now();
    let mut t = Tally::default();
    let mut undetected = 0;
    for &(v, at) in victims {
        for (_, core) in w.cores() {
            match core.membership().get(v) {
                Some(m) if m.state == MemberState::Failed => {
                    t.detections
                        .push((m.since.duration_since(base).saturating_sub(at)).as_secs_f64());
                }
                _ => undetected += 1,
            }
        }
    }
    for (_, core) in w.cores() {
        t.false_positives += core.stats().declared_failed;
        t.sent += core.counters().messages_sent;
    }
    print_network(&report.stats);
    println!(
        "  SWIM: detection median / max {}, undetected {undetected}, members that learnt they were falsely declared failed {}, {:.2} msgs per member per s",
        median_max(&mut t.detections),
        t.false_positives,
        t.sent as f64 / (n as f64 * horizon.as_secs_f64())
    );
    Ok(())
}

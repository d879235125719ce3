//! OM(m) in the simulator, against traitors.
//!
//! Every run checks, after every step, that no two loyal generals ever
//! decide differently (the loyal commander included, so this is IC1 and IC2
//! at once), and at the end that every loyal general decided. Traitors run
//! the honest core, and a strategy rewrites everything it sends.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use ft_core::{NodeId, Protocol};
use ft_group::agreement::{DropReason, OmConfig, OmGeneral, OmInput, OmMessage};
use ft_sim::{
    Adversary, AdversaryCtx, Delay, Failure, FaultPlan, NetworkFaults, Sim, SimConfig, SimRng,
    Stats, World,
};

const ROUND: Duration = Duration::from_millis(10);
const ATTACK: &[u8] = b"attack";
const RETREAT: &[u8] = b"retreat";
const AGREE: &str = "no two loyal generals decide differently";

/// How a traitor rewrites what its honest core sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    /// Tells receivers with an even id the opposite of what it heard.
    LieToHalf,
    /// A random value per message.
    Random,
    /// Sends nothing.
    Silent,
    /// A different value for every receiver.
    TwoFaced,
    /// Lies, then sends a conflicting copy, and malformed messages of every
    /// kind: words put in a loyal general's mouth, repeated generals,
    /// paths too long, a wrong commander, strangers, raw garbage.
    Forger,
    /// Honest sends, but invents messages at every adversary tick: early
    /// ones are conflicting copies, later ones late.
    Late,
    /// Every value becomes RETREAT.
    SayRetreat,
    /// Sends what the honest core sends (a traitor that bides its time).
    Honest,
}

const STRATEGIES: [Strategy; 6] = [
    Strategy::LieToHalf,
    Strategy::Random,
    Strategy::Silent,
    Strategy::TwoFaced,
    Strategy::Forger,
    Strategy::Late,
];

fn lie(value: &Bytes) -> Bytes {
    if value.as_ref() == ATTACK {
        Bytes::from_static(RETREAT)
    } else {
        Bytes::from_static(ATTACK)
    }
}

struct Traitor {
    strategy: Strategy,
    generals: Vec<NodeId>,
    commander: NodeId,
    m: usize,
    /// Messages changed, withheld or invented.
    forged: Rc<Cell<u64>>,
}

impl Traitor {
    fn forge(
        &self,
        ctx: &mut AdversaryCtx<'_, OmMessage>,
        to: NodeId,
        path: Vec<NodeId>,
        value: Bytes,
    ) {
        self.forged.set(self.forged.get() + 1);
        ctx.send(to, OmMessage { path, value });
    }

    fn malformed(&self, ctx: &mut AdversaryCtx<'_, OmMessage>, to: NodeId, msg: &OmMessage) {
        let me = ctx.me;
        let c = self.commander;
        let v = Bytes::from_static(b"forged");
        // Conflicting copy of a path already sent.
        self.forge(ctx, to, msg.path.clone(), Bytes::from_static(b"conflict"));
        // Words in a loyal general's mouth: the path ends with someone else.
        if let Some(&x) = self
            .generals
            .iter()
            .find(|&&g| g != me && g != to && g != c)
        {
            self.forge(ctx, to, vec![c, x], v.clone());
        }
        // A general twice.
        let mut twice = msg.path.clone();
        twice.push(me);
        self.forge(ctx, to, twice, v.clone());
        // Wrong commander.
        self.forge(ctx, to, vec![me], v.clone());
        self.forge(ctx, to, vec![], v.clone());
        // A stranger on the path.
        self.forge(ctx, to, vec![c, NodeId(1_000), me], v.clone());
        // Too long: distinct generals, more than m + 1 of them.
        let mut long = vec![c];
        long.extend(
            self.generals
                .iter()
                .copied()
                .filter(|&g| g != c && g != me && g != to)
                .take(self.m + 1),
        );
        long.push(me);
        if long.len() > self.m + 1 {
            self.forge(ctx, to, long, v);
        }
        // Garbage only the decoder sees.
        self.forged.set(self.forged.get() + 1);
        let raw = ctx.random_payload(48);
        ctx.send_raw(to, raw);
    }
}

impl Adversary<OmMessage> for Traitor {
    fn on_send(&mut self, ctx: &mut AdversaryCtx<'_, OmMessage>, to: NodeId, msg: OmMessage) {
        match self.strategy {
            Strategy::LieToHalf if to.0.is_multiple_of(2) => {
                self.forge(ctx, to, msg.path, lie(&msg.value))
            }
            Strategy::LieToHalf | Strategy::Late | Strategy::Honest => ctx.send(to, msg),
            Strategy::Random => {
                let value = match ctx.rng.below(3) {
                    0 => Bytes::from_static(ATTACK),
                    1 => Bytes::from_static(RETREAT),
                    _ => ctx.random_payload(8),
                };
                self.forge(ctx, to, msg.path, value);
            }
            Strategy::Silent => self.forged.set(self.forged.get() + 1),
            Strategy::TwoFaced => {
                let value = Bytes::from(format!("v{}", to.0));
                self.forge(ctx, to, msg.path, value);
            }
            Strategy::Forger => {
                let value = lie(&msg.value);
                self.forge(ctx, to, msg.path.clone(), value);
                self.malformed(ctx, to, &msg);
            }
            Strategy::SayRetreat => self.forge(ctx, to, msg.path, Bytes::from_static(RETREAT)),
        }
    }

    fn on_tick(&mut self, ctx: &mut AdversaryCtx<'_, OmMessage>) {
        if self.strategy != Strategy::Late {
            return;
        }
        let me = ctx.me;
        let path = if me == self.commander {
            vec![me]
        } else {
            vec![self.commander, me]
        };
        let value = Bytes::from(format!("late {:?}", ctx.now));
        for to in self.generals.clone() {
            if to != me {
                self.forge(ctx, to, path.clone(), value.clone());
            }
        }
    }
}

struct Scenario {
    seed: u64,
    n: usize,
    m: usize,
    commander: NodeId,
    traitors: Vec<(NodeId, Strategy)>,
    plan: FaultPlan,
    /// Faulty generals that are not traitors (crashed, omitting): left out of
    /// the checks like traitors.
    faulty: Vec<NodeId>,
    check_size: bool,
}

impl Scenario {
    fn new(seed: u64, n: usize, m: usize, commander: u64, traitors: &[(u64, Strategy)]) -> Self {
        let mut plan = FaultPlan::none();
        plan.adversary_tick = Some(Duration::from_millis(7));
        Scenario {
            seed,
            n,
            m,
            commander: NodeId(commander),
            traitors: traitors.iter().map(|&(t, s)| (NodeId(t), s)).collect(),
            plan,
            faulty: vec![],
            check_size: true,
        }
    }

    fn loyal(&self) -> Vec<NodeId> {
        (0..self.n as u64)
            .map(NodeId)
            .filter(|g| !self.faulty.contains(g) && !self.traitors.iter().any(|(t, _)| t == g))
            .collect()
    }

    fn sim(&self, forged: &Rc<Cell<u64>>) -> Sim<OmGeneral> {
        let generals: Vec<NodeId> = (0..self.n as u64).map(NodeId).collect();
        let build = if self.check_size {
            OmConfig::new
        } else {
            OmConfig::unchecked
        };
        let config = build(
            generals.clone(),
            self.commander,
            self.m,
            ROUND,
            Bytes::from_static(RETREAT),
        )
        .expect("valid config");
        let mut sim = Sim::new(SimConfig::new(self.seed, self.n), config, self.plan.clone());
        for &(t, strategy) in &self.traitors {
            sim.set_adversary(
                t,
                Traitor {
                    strategy,
                    generals: generals.clone(),
                    commander: self.commander,
                    m: self.m,
                    forged: forged.clone(),
                },
            );
        }
        let loyal = self.loyal();
        sim.invariant(AGREE, move |w: &World<OmGeneral>| {
            let mut first: Option<(NodeId, &Bytes)> = None;
            for &g in &loyal {
                if let Some(v) = w.core(g).and_then(|c| c.decision()) {
                    match first {
                        Some((h, u)) if u != v => {
                            return Err(format!(
                                "loyal {h} decided {u:?} but loyal {g} decided {v:?}"
                            ));
                        }
                        None => first = Some((g, v)),
                        _ => {}
                    }
                }
            }
            Ok(())
        });
        for &g in &generals {
            let input = if g == self.commander {
                OmInput::Propose(Bytes::from_static(ATTACK))
            } else {
                OmInput::Start
            };
            sim.input(Duration::ZERO, g, input);
        }
        sim
    }
}

/// What a run showed.
#[derive(Default)]
struct Outcome {
    runs: u64,
    forged: u64,
    dropped: BTreeMap<DropReason, u64>,
    stats: Stats,
}

impl Outcome {
    fn add(&mut self, other: Outcome) {
        self.runs += other.runs;
        self.forged += other.forged;
        for (r, n) in other.dropped {
            *self.dropped.entry(r).or_default() += n;
        }
        self.stats.delivered += other.stats.delivered;
        self.stats.decode_errors += other.stats.decode_errors;
        self.stats.duplicated += other.stats.duplicated;
        self.stats.reordered += other.stats.reordered;
        self.stats.send_omissions += other.stats.send_omissions;
        self.stats.crashes += other.stats.crashes;
    }

    fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    fn print(&self, name: &str) {
        eprintln!(
            "{name}: {} runs, {} messages delivered, {} forged/withheld by traitors, {} dropped by loyal generals {:?}, {} undecodable",
            self.runs,
            self.stats.delivered,
            self.forged,
            self.dropped_total(),
            self.dropped,
            self.stats.decode_errors
        );
    }
}

/// Runs the scenario to past the decision and checks agreement and, with a
/// loyal commander, that the loyal lieutenants obey it.
fn run(s: &Scenario) -> Result<Outcome, Box<Failure>> {
    let forged = Rc::new(Cell::new(0));
    let mut sim = s.sim(&forged);
    let report = sim.run_until(ROUND * (s.m as u32 + 2))?;
    let loyal = s.loyal();
    let mut out = Outcome {
        runs: 1,
        forged: forged.get(),
        stats: report.stats,
        ..Outcome::default()
    };
    let commander_loyal = loyal.contains(&s.commander);
    for &g in &loyal {
        let core = sim.world().core(g).expect("loyal generals stay up");
        let d = core.decision().unwrap_or_else(|| {
            panic!(
                "loyal {g} did not decide (seed {}, traitors {:?})",
                s.seed, s.traitors
            )
        });
        if commander_loyal {
            assert_eq!(
                d.as_ref(),
                ATTACK,
                "IC2: loyal {g} disobeyed the loyal commander (seed {}, traitors {:?})",
                s.seed,
                s.traitors
            );
        }
        for r in DropReason::ALL {
            let n = core.dropped(r);
            if n > 0 {
                *out.dropped.entry(r).or_default() += n;
            }
        }
        assert_eq!(
            core.counters().messages_dropped,
            DropReason::ALL
                .iter()
                .map(|&r| core.dropped(r))
                .sum::<u64>()
        );
        assert!(core.paths_received() <= core.config().paths_per_lieutenant());
    }
    Ok(out)
}

fn must(s: &Scenario) -> Outcome {
    match run(s) {
        Ok(o) => o,
        Err(f) => panic!("{f}"),
    }
}

#[test]
fn loyal_generals_agree_without_traitors() {
    for (n, m) in [(1, 0), (2, 0), (4, 1), (7, 2), (10, 3)] {
        let o = must(&Scenario::new(1, n, m, 0, &[]));
        assert_eq!(o.forged, 0);
        assert_eq!(o.dropped_total(), 0);
        let generals = (0..n as u64).map(NodeId).collect();
        let config = OmConfig::new(generals, NodeId(0), m, ROUND, Bytes::new()).unwrap();
        assert_eq!(
            o.stats.delivered,
            config.messages_total() as u64,
            "n = {n}, m = {m}"
        );
    }
}

#[test]
fn one_traitor_among_four_or_five_every_traitor_every_strategy() {
    let mut total = Outcome::default();
    for n in [4usize, 5] {
        for commander in [0, n as u64 - 1] {
            for traitor in 0..n as u64 {
                for strategy in STRATEGIES {
                    for seed in 0..2 {
                        let s = Scenario::new(seed, n, 1, commander, &[(traitor, strategy)]);
                        total.add(must(&s));
                    }
                }
            }
        }
    }
    total.print("m = 1, n = 4 and 5");
    assert!(total.forged > 0);
    for reason in [
        DropReason::SenderNotLast,
        DropReason::Repeated,
        DropReason::WrongCommander,
        DropReason::TooLong,
        DropReason::Conflicting,
        DropReason::Late,
        DropReason::AfterDecision,
    ] {
        assert!(
            total.dropped.get(&reason).copied().unwrap_or(0) > 0,
            "no {reason:?} drop"
        );
    }
    assert!(
        total.stats.decode_errors > 0,
        "raw garbage reached the decoder"
    );
}

#[test]
fn two_traitors_among_seven_every_pair() {
    let mut total = Outcome::default();
    let mut pairs = 0;
    for a in 0..7u64 {
        for b in a + 1..7 {
            pairs += 1;
            for (i, &sa) in STRATEGIES.iter().enumerate() {
                let sb = STRATEGIES[(i + 1 + (a + b) as usize) % STRATEGIES.len()];
                let s = Scenario::new(a * 7 + b, 7, 2, 0, &[(a, sa), (b, sb)]);
                total.add(must(&s));
            }
        }
    }
    assert_eq!(pairs, 21);
    total.print("m = 2, n = 7, every pair of traitors");
    assert!(total.forged > 0 && total.dropped_total() > 0);
    // Fewer traitors than m is fine too.
    for t in 0..7 {
        must(&Scenario::new(t, 7, 2, 3, &[(t, Strategy::TwoFaced)]));
    }
}

const RANDOM_RUNS: u64 = 500;

#[test]
fn random_groups_traitors_and_delays_within_the_round() {
    let mut total = Outcome::default();
    let mut rng = SimRng::new(1982);
    for seed in 0..RANDOM_RUNS {
        let n = 4 + rng.below(7) as usize; // 4..=10, so m = 1, 2 or 3
        let m = (n - 1) / 3;
        let commander = rng.below(n as u64);
        let mut ids: Vec<u64> = (0..n as u64).collect();
        let count = rng.below(m as u64 + 1) as usize;
        let mut traitors = Vec::new();
        for _ in 0..count {
            let t = ids.remove(rng.below(ids.len() as u64) as usize);
            let strategy = STRATEGIES[rng.below(STRATEGIES.len() as u64) as usize];
            traitors.push((t, strategy));
        }
        let mut s = Scenario::new(seed, n, m, commander, &traitors);
        // Asynchrony inside the bound: every hop takes 0.1–6 ms plus up to
        // 3.5 ms when reordered, always under the 10 ms round; and copies.
        s.plan.network = NetworkFaults {
            delay: Delay::Uniform {
                min: Duration::from_micros(100),
                max: Duration::from_millis(6),
            },
            duplicate: 0.1,
            reorder: 0.3,
            reorder_window: Duration::from_micros(3_500),
            ..NetworkFaults::default()
        };
        total.add(must(&s));
    }
    total.print("random groups with delays within the round");
    assert_eq!(total.runs, RANDOM_RUNS);
    assert!(total.stats.duplicated > 0 && total.stats.reordered > 0);
    assert!(
        total
            .dropped
            .get(&DropReason::Duplicate)
            .copied()
            .unwrap_or(0)
            > 0
    );
}

#[test]
fn crashed_and_omitting_generals_count_as_traitors() {
    // n3 crashes in round 1 and restarts (abstaining) in round 2; n5
    // loses half of what it sends; n6 is a traitor. That is m = 3 faulty
    // generals, which n = 10 survives.
    let mut s = Scenario::new(7, 10, 3, 0, &[(6, Strategy::Forger)]);
    s.plan.crash(NodeId(3), ROUND / 2, Some(ROUND));
    s.plan.node(NodeId(5)).send_omission = 0.5;
    s.faulty = vec![NodeId(3), NodeId(5)];
    let o = must(&s);
    assert_eq!(o.stats.crashes, 1);
    assert!(o.stats.send_omissions > 0);
    o.print("crash + omission + traitor, n = 10, m = 3");
    // A commander that crashed before it could speak: the lieutenants hear
    // nothing and all take the default.
    let mut s = Scenario::new(8, 4, 1, 0, &[]);
    s.plan.crash(NodeId(0), Duration::ZERO, None);
    s.faulty = vec![NodeId(0)];
    let forged = Rc::new(Cell::new(0));
    let mut sim = s.sim(&forged);
    sim.run_until(ROUND * 3).unwrap();
    for g in 1..4 {
        let d = sim
            .world()
            .core(NodeId(g))
            .and_then(|c| c.decision())
            .cloned();
        assert_eq!(d.as_deref(), Some(RETREAT));
    }
}

#[test]
fn runs_are_reproducible() {
    let s = Scenario::new(42, 7, 2, 0, &[(0, Strategy::Random), (4, Strategy::Forger)]);
    let make = || s.sim(&Rc::new(Cell::new(0)));
    ft_sim::self_check(make, ROUND * 4).expect("deterministic");
}

/// n = 3, m = 1: the loyal commander says attack, the traitor lieutenant
/// relays retreat, and the loyal lieutenant cannot tell who lies — with one
/// value each way there is no majority, so it takes the default. IC2 is
/// violated. With n = 4 the same traitor is outvoted.
#[test]
fn three_generals_cannot_survive_one_traitor_but_four_can() {
    assert!(
        OmConfig::new(
            (0..3).map(NodeId).collect(),
            NodeId(0),
            1,
            ROUND,
            Bytes::from_static(RETREAT)
        )
        .unwrap_err()
        .to_string()
        .contains("3k+1 = 4 members")
    );

    let mut s = Scenario::new(3, 3, 1, 0, &[(2, Strategy::SayRetreat)]);
    s.check_size = false;
    let failure = run(&s).err().expect("IC2 must break with n = 3");
    assert_eq!(failure.invariant, AGREE);
    eprintln!("n = 3 breaks as expected: {}", failure.message);

    // Who decided what, at the violation.
    let forged = Rc::new(Cell::new(0));
    let mut sim = s.sim(&forged);
    assert!(sim.run_until(ROUND * 3).is_err());
    let w = sim.world();
    let decision = |g: u64| w.core(NodeId(g)).and_then(|c| c.decision()).cloned();
    assert_eq!(decision(0).as_deref(), Some(ATTACK));
    let lieutenant = decision(1).expect("the loyal lieutenant decided");
    assert_eq!(lieutenant.as_ref(), RETREAT);
    assert!(forged.get() > 0);

    let mut s = Scenario::new(3, 4, 1, 0, &[(3, Strategy::SayRetreat)]);
    s.check_size = true;
    let o = must(&s);
    assert!(o.forged > 0);
}

/// A traitor commander that splits the loyal lieutenants evenly and holds
/// its message to one of them back until just before the decision.
struct SplitThenLate {
    late_to: NodeId,
    held: Option<OmMessage>,
    sent_late: Rc<Cell<u64>>,
}

impl Adversary<OmMessage> for SplitThenLate {
    fn on_send(&mut self, ctx: &mut AdversaryCtx<'_, OmMessage>, to: NodeId, msg: OmMessage) {
        if to == self.late_to {
            self.held = Some(msg);
        } else if to.0 == 3 || to.0 == 4 {
            ctx.send(
                to,
                OmMessage {
                    path: msg.path,
                    value: Bytes::from_static(RETREAT),
                },
            );
        } else {
            ctx.send(to, msg);
        }
    }

    fn on_tick(&mut self, ctx: &mut AdversaryCtx<'_, OmMessage>) {
        if let Some(msg) = self.held.take() {
            self.sent_late.set(self.sent_late.get() + 1);
            ctx.send(self.late_to, msg);
        }
    }
}

/// n = 7, m = 2; traitors: the commander n0 and n6 (which relays honestly).
/// n0 tells n1, n2 and n6 "attack", n3 and n4 "retreat", and tells n5
/// "attack" only half a round before the decision. Were n5 to take that
/// message, it would count "attack" for itself where every other loyal
/// lieutenant counts the default for n5's silence: four attacks of six at
/// n5, three of six (no majority, so retreat) at the others. A message
/// whose path has one general is due within one round, so n5 drops it as
/// late and all decide alike.
#[test]
fn a_message_held_back_past_its_round_is_dropped_as_late() {
    let mut s = Scenario::new(11, 7, 2, 0, &[(0, Strategy::Honest), (6, Strategy::Honest)]);
    s.plan.adversary_tick = Some(ROUND * 3 - Duration::from_micros(1_500));
    let sent_late = Rc::new(Cell::new(0));
    let mut sim = s.sim(&Rc::new(Cell::new(0)));
    // Replaces the pass-through strategy `sim` installed for n0.
    sim.set_adversary(
        NodeId(0),
        SplitThenLate {
            late_to: NodeId(5),
            held: None,
            sent_late: sent_late.clone(),
        },
    );
    if let Err(f) = sim.run_until(ROUND * 4) {
        panic!("{f}");
    }
    assert_eq!(sent_late.get(), 1);
    let w = sim.world();
    let n5 = w.core(NodeId(5)).unwrap();
    assert_eq!(n5.dropped(DropReason::Late), 1);
    for g in 1..=5 {
        let d = w.core(NodeId(g)).and_then(|c| c.decision()).cloned();
        assert_eq!(d.as_deref(), Some(RETREAT), "n{g}");
    }
}

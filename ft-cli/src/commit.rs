//! Distributed commit on the command line: the commit scenario of
//! `ft demo` and `ft sim commit`.
//!
//! One transaction, `t1`, coordinated by n0 among the participants n1, n2
//! and n3, whose applications vote one millisecond after they are asked
//! (commit, unless `--abort-voter` names one). A fault strikes at a chosen
//! point of the protocol: the coordinator or a participant crashes there,
//! and with `--faults partition` the network splits there into {n0, n1}
//! and {n2, n3}. The point is found by a first run without the fault (same
//! seed, same network), then the run is made again with the fault at that
//! instant: the simulator is deterministic, so both runs agree up to it.
//!
//! After every step of the simulator: **atomicity** (never committed, or
//! decided commit, at one node and aborted at another) and **validity**
//! (commit only if every participant voted commit). At the end:
//! **termination** (every participant that is up holds the outcome), which
//! two-phase commit gives up while its coordinator is down and participants
//! cannot learn the outcome from each other: they block, and say so.

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ft_commit::{
    CommitStats, CoordState, CoordState3, Event, Input, PartState, PartState3, PaxosCommit,
    PaxosConfig, RmState, ThreePhase, ThreePhaseConfig, TwoPhase, TwoPhaseConfig, TxId, Vote,
};
use ft_core::{NodeId, Protocol, Recover};
use ft_sim::{Delay, FaultPlan, NetworkFaults, Observed, Sim, SimConfig, World};

use crate::bounds;

const COORDINATOR: NodeId = NodeId(0);
const PARTICIPANTS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
/// When the coordinator begins the transaction.
const BEGIN: Duration = Duration::from_millis(10);
/// How long an application takes to vote.
const VOTE_AFTER: Duration = Duration::from_millis(1);
/// How long a run goes on after its last fault ends.
const SETTLE: Duration = Duration::from_secs(10);
/// The longest a node stays down or the network stays split: ten minutes.
const MAX_FAULT_MS: u64 = 600_000;
/// One microsecond: the fault strikes just after the step it follows.
const JUST_AFTER: Duration = Duration::from_micros(1);

/// The commit protocol (`--protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Proto {
    /// Two-phase commit with cooperative termination.
    #[value(name = "2pc")]
    TwoPc,
    /// Three-phase commit with termination by an elected participant.
    #[value(name = "3pc")]
    ThreePc,
    /// Paxos Commit: each participant's vote chosen by Paxos among three
    /// acceptors (n1, n2, n3, the participants themselves: F = 1).
    Paxos,
}

/// Where the fault strikes (`--crash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum CrashPoint {
    /// Nobody crashes (a partition, if asked, falls as the coordinator
    /// sends its decision).
    None,
    /// The coordinator crashes once every participant is READY, before it
    /// hears their votes.
    CoordinatorWaiting,
    /// The coordinator crashes while it sends its decision (3PC: its
    /// PREPARE_COMMIT): the copy to n1 leaves, those to n2 and n3 do not.
    CoordinatorDeciding,
    /// n1 crashes just after it voted commit (READY durable).
    ParticipantReady,
}

/// The network's faults (`--faults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Faults {
    /// Every message arrives, 0.5 to 5 ms after it is sent.
    None,
    /// 10% of messages lost, 5% duplicated, 10% reordered.
    Lossy,
    /// At the crash point the network splits into {n0, n1} and {n2, n3}
    /// for `--partition-ms`.
    Partition,
}

/// Options of `ft sim commit`.
#[derive(Args, Debug, Clone)]
pub(crate) struct SimCommitArgs {
    /// The commit protocol.
    #[arg(long, value_enum, default_value_t = Proto::TwoPc)]
    protocol: Proto,
    /// Where the fault strikes.
    #[arg(long, value_enum, default_value_t = CrashPoint::CoordinatorWaiting)]
    crash: CrashPoint,
    /// The network's faults.
    #[arg(long, value_enum, default_value_t = Faults::None)]
    faults: Faults,
    /// How long the crashed node stays down, in milliseconds: 1 to 600000;
    /// 0 keeps it down for good.
    #[arg(long, default_value_t = 2_000)]
    down_ms: u64,
    /// How long the partition lasts, in milliseconds: 1 to 600000 (two
    /// minutes by default: faults last longer than tests like to wait).
    #[arg(long, default_value_t = 120_000)]
    partition_ms: u64,
    /// A participant (1 to 3) whose application votes abort.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3))]
    abort_voter: Option<u64>,
    /// Seed of the run: any number from 0 to 18446744073709551615.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl SimCommitArgs {
    /// Clamps the durations into their ranges, with a note.
    pub(crate) fn clamp(&mut self) {
        if self.down_ms != 0 {
            self.down_ms = bounds::clamp("down-ms", self.down_ms, 1..=MAX_FAULT_MS, "");
        }
        self.partition_ms = bounds::clamp("partition-ms", self.partition_ms, 1..=MAX_FAULT_MS, "");
    }

    fn reproduce(&self) -> String {
        let voter = self
            .abort_voter
            .map(|v| format!(" --abort-voter {v}"))
            .unwrap_or_default();
        format!(
            "ft sim commit --protocol {} --crash {} --faults {} --down-ms {} --partition-ms {}{voter} --seed {}",
            crate::value_name(self.protocol),
            crate::value_name(self.crash),
            crate::value_name(self.faults),
            self.down_ms,
            self.partition_ms,
            self.seed
        )
    }

    fn down(&self) -> Option<Duration> {
        (self.down_ms != 0).then(|| Duration::from_millis(self.down_ms))
    }

    fn crashed(&self) -> Option<NodeId> {
        match self.crash {
            CrashPoint::None => None,
            CrashPoint::CoordinatorWaiting | CrashPoint::CoordinatorDeciding => Some(COORDINATOR),
            CrashPoint::ParticipantReady => Some(PARTICIPANTS[0]),
        }
    }
}

/// What the scenario needs of a commit core beyond [`Protocol`]: every ft
/// commit core speaks the same [`Input`] and [`Event`].
trait Core: Protocol<Input = Input, Event = Event> + Recover + 'static {
    /// The protocol's name in the output.
    const NAME: &'static str;
    /// Its configuration (the defaults).
    fn config() -> Self::Config;
    /// This node's state as a participant of `tx`, in the subject's words.
    fn participant(&self, tx: &TxId) -> Option<&'static str>;
    /// This node's state as the coordinator of `tx`.
    fn coordinator(&self, tx: &TxId) -> Option<&'static str>;
    /// Its counters.
    fn commit_stats(&self) -> CommitStats;
}

impl Core for TwoPhase {
    const NAME: &'static str = "two-phase commit";
    fn config() -> TwoPhaseConfig {
        TwoPhaseConfig::default()
    }
    fn participant(&self, tx: &TxId) -> Option<&'static str> {
        self.participant_state(tx).map(|s| match s {
            PartState::Init => "INIT",
            PartState::Ready => "READY",
            PartState::Commit => "COMMIT",
            PartState::Abort => "ABORT",
        })
    }
    fn coordinator(&self, tx: &TxId) -> Option<&'static str> {
        self.coordinator_state(tx).map(|s| match s {
            CoordState::Init => "INIT",
            CoordState::Wait => "WAIT",
            CoordState::Commit => "COMMIT",
            CoordState::Abort => "ABORT",
        })
    }
    fn commit_stats(&self) -> CommitStats {
        self.stats()
    }
}

impl Core for ThreePhase {
    const NAME: &'static str = "three-phase commit";
    fn config() -> ThreePhaseConfig {
        ThreePhaseConfig::default()
    }
    fn participant(&self, tx: &TxId) -> Option<&'static str> {
        self.participant_state(tx).map(|s| match s {
            PartState3::Init => "INIT",
            PartState3::Ready => "READY",
            PartState3::PreCommit => "PRECOMMIT",
            PartState3::Commit => "COMMIT",
            PartState3::Abort => "ABORT",
        })
    }
    fn coordinator(&self, tx: &TxId) -> Option<&'static str> {
        self.coordinator_state(tx).map(|s| match s {
            CoordState3::Init => "INIT",
            CoordState3::Wait => "WAIT",
            CoordState3::PreCommit => "PRECOMMIT",
            CoordState3::Commit => "COMMIT",
            CoordState3::Abort => "ABORT",
        })
    }
    fn commit_stats(&self) -> CommitStats {
        self.stats()
    }
}

impl Core for PaxosCommit {
    const NAME: &'static str = "Paxos Commit";
    fn config() -> PaxosConfig {
        PaxosConfig::new(PARTICIPANTS.to_vec())
    }
    fn participant(&self, tx: &TxId) -> Option<&'static str> {
        self.rm_state(tx).map(|s| match s {
            RmState::Init => "INIT",
            RmState::Prepared => "PREPARED",
            RmState::Committed => "COMMIT",
            RmState::Aborted => "ABORT",
        })
    }
    fn coordinator(&self, tx: &TxId) -> Option<&'static str> {
        // Its coordinator logs nothing it waits for: it knows the outcome
        // or waits for the acceptors to choose the votes.
        self.coordinated()
            .find(|(t, _)| *t == tx)
            .map(|(_, outcome)| match outcome {
                None => "WAIT",
                Some(Vote::Commit) => "COMMIT",
                Some(Vote::Abort) => "ABORT",
            })
    }
    fn commit_stats(&self) -> CommitStats {
        self.stats()
    }
}

/// READY, or Paxos Commit's PREPARED: voted commit, the outcome unknown.
fn prepared(state: Option<&str>) -> bool {
    matches!(state, Some("READY" | "PREPARED"))
}

fn tx() -> TxId {
    TxId::new(&b"t1"[..]).expect("a short id")
}

fn vote_of(args: &SimCommitArgs, node: NodeId) -> Vote {
    if args.abort_voter == Some(node.0) {
        Vote::Abort
    } else {
        Vote::Commit
    }
}

/// The network of the scenario, without the fault at the crash point.
fn network(args: &SimCommitArgs) -> NetworkFaults {
    let delay = Delay::Uniform {
        min: Duration::from_micros(500),
        max: Duration::from_millis(5),
    };
    match args.faults {
        Faults::Lossy => NetworkFaults {
            delay,
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.1,
            reorder_window: Duration::from_millis(10),
            ..NetworkFaults::default()
        },
        Faults::None | Faults::Partition => NetworkFaults {
            delay,
            ..NetworkFaults::default()
        },
    }
}

/// The checks after every step: atomicity and validity.
#[derive(Default)]
struct Checker {
    seen: usize,
    all_commit: bool,
    committed: Vec<NodeId>,
    aborted: Vec<NodeId>,
    checks: u64,
}

impl Checker {
    fn check<P: Core>(&mut self, w: &World<P>) -> Result<(), String> {
        for o in &w.events()[self.seen..] {
            let commit = match &o.event {
                Event::Commit { .. }
                | Event::Decided {
                    outcome: Vote::Commit,
                    ..
                } => true,
                Event::Abort { .. }
                | Event::Decided {
                    outcome: Vote::Abort,
                    ..
                } => false,
                _ => continue,
            };
            if commit {
                if !self.committed.contains(&o.node) {
                    self.committed.push(o.node);
                }
                if !self.all_commit {
                    return Err(format!(
                        "validity: t1 committed at {} though a participant voted abort",
                        o.node
                    ));
                }
            } else if !self.aborted.contains(&o.node) {
                self.aborted.push(o.node);
            }
            if !self.committed.is_empty() && !self.aborted.is_empty() {
                return Err(format!(
                    "atomicity: t1 committed at {} and aborted at {}",
                    names(&self.committed),
                    names(&self.aborted)
                ));
            }
            self.checks += 1;
        }
        self.seen = w.events().len();
        Ok(())
    }
}

fn names(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A run of the scenario, step by step, with the applications voting.
struct Run<P: Core> {
    sim: Sim<P>,
    args: SimCommitArgs,
    checker: Rc<RefCell<Checker>>,
    /// Events read so far (for the votes and the transcript).
    seen: usize,
    /// What happened, when: faults first (0) among lines of one instant.
    transcript: Vec<(Duration, u8, String)>,
    /// Each node's state after the last step.
    last_states: Vec<&'static str>,
}

impl<P: Core> Run<P> {
    fn new(args: &SimCommitArgs, plan: FaultPlan) -> Self {
        let mut sim = Sim::<P>::new(SimConfig::new(args.seed, 4), P::config(), plan);
        sim.input(
            BEGIN,
            COORDINATOR,
            Input::Begin {
                tx: tx(),
                participants: PARTICIPANTS.to_vec(),
            },
        );
        let checker = Rc::new(RefCell::new(Checker {
            all_commit: args.abort_voter.is_none(),
            ..Checker::default()
        }));
        let c = checker.clone();
        sim.invariant("atomicity and validity", move |w| c.borrow_mut().check(w));
        Run {
            sim,
            args: args.clone(),
            checker,
            seen: 0,
            transcript: Vec::new(),
            last_states: vec!["INIT"; 4],
        }
    }

    /// One step; the applications answer what they were asked.
    fn step(&mut self) -> Result<bool, String> {
        let more = self.sim.step().map_err(|f| f.to_string())?;
        let now = self.sim.now();
        let new: Vec<Observed<Event>> = self.sim.world().events()[self.seen..].to_vec();
        self.seen = self.sim.world().events().len();
        for o in new {
            let line = match &o.event {
                Event::Prepare { tx } => {
                    let vote = vote_of(&self.args, o.node);
                    self.sim.input(
                        now + VOTE_AFTER,
                        o.node,
                        Input::Voted {
                            tx: tx.clone(),
                            vote,
                        },
                    );
                    format!(
                        "{} is asked to vote; its application votes {}",
                        o.node,
                        if vote == Vote::Commit {
                            "commit"
                        } else {
                            "abort"
                        }
                    )
                }
                // State changes say these (below).
                Event::Decided { .. } | Event::Commit { .. } | Event::Abort { .. } => continue,
                Event::Blocked { coordinator, .. } => format!(
                    "{} is BLOCKED: READY, and every other participant it reached is READY; only {coordinator} knows the outcome (it keeps asking)",
                    o.node
                ),
                Event::Finished { .. } => format!("{} heard every acknowledgement", o.node),
                Event::Heuristic {
                    participant,
                    outcome,
                    heuristic,
                    ..
                } => format!(
                    "{}: HEURISTIC outcome at {participant}: decided {heuristic:?} by hand, the outcome is {outcome:?}",
                    o.node
                ),
                Event::Refused { reason, .. } => {
                    format!("{} refused the transaction: {reason}", o.node)
                }
            };
            self.transcript.push((o.at, 1, line));
        }
        let states = self.state_list();
        for (i, (was, is)) in self.last_states.iter().zip(&states).enumerate() {
            let n = NodeId(i as u64);
            // A crash is told by the fault's own line.
            if was != is && *is != "down" {
                let line = if *was == "down" {
                    format!("{n} restarts and recovers {is} from its log")
                } else {
                    format!("{n}: {was} -> {is}")
                };
                self.transcript.push((now, 1, line));
            }
        }
        self.last_states = states;
        Ok(more)
    }

    fn participant(&self, n: NodeId) -> Option<&'static str> {
        self.sim.world().core(n).and_then(|c| c.participant(&tx()))
    }

    fn coordinator(&self) -> Option<&'static str> {
        self.sim
            .world()
            .core(COORDINATOR)
            .and_then(|c| c.coordinator(&tx()))
    }

    /// Whether the crash point has come.
    fn at_point(&self) -> bool {
        let all_ready = PARTICIPANTS.iter().all(|&p| prepared(self.participant(p)));
        let moved = !matches!(self.coordinator(), None | Some("INIT") | Some("WAIT"));
        match self.args.crash {
            CrashPoint::CoordinatorWaiting => all_ready,
            CrashPoint::None | CrashPoint::CoordinatorDeciding => moved,
            CrashPoint::ParticipantReady => prepared(self.participant(PARTICIPANTS[0])),
        }
    }

    /// The state of n0 as the coordinator and of n1..n3 as participants
    /// ("down" while down).
    fn state_list(&self) -> Vec<&'static str> {
        let w = self.sim.world();
        let mut states = vec![if w.is_up(COORDINATOR) {
            self.coordinator().unwrap_or("INIT")
        } else {
            "down"
        }];
        for &p in &PARTICIPANTS {
            states.push(if w.is_up(p) {
                self.participant(p).unwrap_or("INIT")
            } else {
                "down"
            });
        }
        states
    }

    fn states(&self) -> String {
        self.state_list()
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} {s}", NodeId(i as u64)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a run found.
struct Outcome {
    /// The broken invariant, if one broke.
    violation: Option<String>,
    /// The simulator's account of it: the last steps and the plan.
    failure: Option<String>,
    /// Participants up at the end without the outcome.
    undecided: Vec<NodeId>,
    /// Participants that were told they are blocked.
    blocked: Vec<NodeId>,
    /// Nodes that committed (or, the coordinator, decided commit).
    committed: usize,
    /// Nodes that aborted (or decided abort).
    aborted: usize,
}

/// Runs the scenario and prints its transcript.
fn scenario<P: Core>(args: &SimCommitArgs, indent: &str) -> Result<Outcome, String> {
    // The first run finds the crash point.
    let base_plan = FaultPlan {
        network: network(args),
        ..FaultPlan::default()
    };
    let mut probe = Run::<P>::new(args, base_plan.clone());
    let point = loop {
        if probe.sim.now() >= BEGIN && probe.at_point() {
            break Some(probe.sim.now());
        }
        if probe.sim.now() > Duration::from_secs(30) || !probe.step()? {
            break None;
        }
    };
    let Some(point) = point else {
        return Err(format!(
            "the crash point {} never came in a run without faults (states at the end: {})",
            crate::value_name(args.crash),
            probe.states()
        ));
    };
    let strike = point + JUST_AFTER;
    let mut plan = base_plan;
    let mut last = strike;
    if let Some(n) = args.crashed() {
        plan.crash(n, strike, args.down());
        last = last.max(strike + args.down().unwrap_or(Duration::ZERO));
    }
    let heal = strike + Duration::from_millis(args.partition_ms);
    if args.faults == Faults::Partition {
        plan.partition(
            vec![vec![NodeId(0), NodeId(1)], vec![NodeId(2), NodeId(3)]],
            strike,
            heal,
        );
        last = last.max(heal);
    }
    let mut run = Run::<P>::new(args, plan);
    if args.crash == CrashPoint::CoordinatorDeciding {
        // The coordinator dies between its sends: only n1's copy leaves.
        // (Sends at the instant of the point only: after its restart the
        // coordinator reaches everyone again.)
        run.sim.set_link_model(move |at, from, to, _| {
            let cut = from == COORDINATOR && at >= point && at < strike && to != NodeId(1);
            (!cut).then_some(Duration::ZERO)
        });
    }
    let end = last + SETTLE;
    let mut violation = None;
    let mut failure = None;
    let mut told_point = false;
    while run.sim.now() < end {
        if !told_point && run.sim.now() >= strike {
            told_point = true;
            let what = match (args.crashed(), args.faults == Faults::Partition) {
                (Some(n), p) => format!(
                    "{n} CRASHES{}{}",
                    match args.down() {
                        Some(d) => format!(" (down for {d:?})"),
                        None => " (down for good)".to_string(),
                    },
                    if p {
                        "; the network splits {n0, n1} | {n2, n3}"
                    } else {
                        ""
                    }
                ),
                (None, true) => "the network splits {n0, n1} | {n2, n3}".to_string(),
                (None, false) => "no fault".to_string(),
            };
            run.transcript.push((strike, 0, what));
        }
        match run.step() {
            Ok(true) => {}
            Ok(false) => break,
            Err(f) => {
                // The invariant's own words; the simulator's last steps and
                // plan follow them, for `ft sim commit` to print.
                let short = f.split("\nlast ").next().unwrap_or(&f);
                let short = short.split_whitespace().collect::<Vec<_>>().join(" ");
                violation = Some(short);
                failure = Some(f);
                break;
            }
        }
    }
    if args.faults == Faults::Partition && violation.is_none() && run.sim.now() >= heal {
        run.transcript
            .push((heal, 0, "the partition heals".to_string()));
    }
    run.transcript.sort_by_key(|(at, order, _)| (*at, *order));
    for (at, _, line) in &run.transcript {
        println!("{indent}{:>9.1} ms  {line}", at.as_secs_f64() * 1000.0);
    }
    let w = run.sim.world();
    let blocked: Vec<NodeId> = {
        let mut b: Vec<NodeId> = w
            .events()
            .iter()
            .filter(|o| matches!(o.event, Event::Blocked { .. }))
            .map(|o| o.node)
            .collect();
        b.dedup();
        b.sort();
        b.dedup();
        b
    };
    let undecided: Vec<NodeId> = PARTICIPANTS
        .iter()
        .copied()
        .filter(|&p| w.is_up(p) && !matches!(run.participant(p), Some("COMMIT" | "ABORT")))
        .collect();
    let mut stats = CommitStats::default();
    for (_, c) in w.cores() {
        stats += c.commit_stats();
    }
    let s = run.sim.stats();
    println!("{indent}at the end: {}", run.states());
    println!(
        "{indent}termination protocol: questions asked of other nodes {}, outcomes reached through it {}, vote timeouts {}, Paxos ballots above 0 {}",
        stats.decision_requests,
        stats.terminated_cooperatively,
        stats.vote_timeouts,
        stats.leader_rounds
    );
    println!(
        "{indent}ft-sim: {} messages sent, {} lost, {} duplicated, {} dropped by the partition, {} to a down node; {} crashes, {} restarts",
        s.sent, s.lost, s.duplicated, s.partitioned, s.to_down_node, s.crashes, s.restarts
    );
    let checker = run.checker.borrow();
    println!(
        "{indent}invariants: {} checks after {} steps{}",
        checker.checks,
        s.steps,
        match &violation {
            Some(v) => format!(", BROKEN: {v}"),
            None => ", atomicity and validity held".to_string(),
        }
    );
    println!("{indent}reproduce: {}", args.reproduce());
    Ok(Outcome {
        violation,
        failure,
        undecided,
        blocked,
        committed: checker.committed.len(),
        aborted: checker.aborted.len(),
    })
}

fn run_protocol(args: &SimCommitArgs, indent: &str) -> Result<Outcome, String> {
    match args.protocol {
        Proto::TwoPc => scenario::<TwoPhase>(args, indent),
        Proto::ThreePc => scenario::<ThreePhase>(args, indent),
        Proto::Paxos => scenario::<PaxosCommit>(args, indent),
    }
}

fn name(p: Proto) -> &'static str {
    match p {
        Proto::TwoPc => TwoPhase::NAME,
        Proto::ThreePc => ThreePhase::NAME,
        Proto::Paxos => PaxosCommit::NAME,
    }
}

/// `ft sim commit`.
pub(crate) fn sim_commit(args: &SimCommitArgs) -> ExitCode {
    println!(
        "ft sim commit: {}, n0 coordinates t1 among n1, n2, n3; crash point {}, faults {}, seed {}",
        name(args.protocol),
        crate::value_name(args.crash),
        crate::value_name(args.faults),
        args.seed
    );
    let o = match run_protocol(args, "  ") {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            println!("reproduce: {}", args.reproduce());
            return ExitCode::FAILURE;
        }
    };
    if let Some(v) = &o.violation {
        println!("{}", o.failure.as_deref().unwrap_or(v));
        println!("FAILED: {v}");
        if args.protocol == Proto::ThreePc && args.faults == Faults::Partition {
            println!(
                "(three-phase commit is non-blocking only with reliable failure detection and no partitions: each side terminated on its own)"
            );
        }
        return ExitCode::FAILURE;
    }
    let coordinator_back = args.crashed() != Some(COORDINATOR) || args.down().is_some();
    if o.undecided.is_empty() {
        println!(
            "outcome: t1 {} everywhere it is known",
            if o.committed > 0 {
                "committed"
            } else {
                "aborted"
            }
        );
        ExitCode::SUCCESS
    } else if args.protocol == Proto::TwoPc && !coordinator_back {
        println!(
            "outcome: {} still READY and blocked on n0, which is down for good: two-phase commit blocks, and stays safe",
            names(&o.undecided)
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "FAILED: termination: {} up without the outcome",
            names(&o.undecided)
        );
        ExitCode::FAILURE
    }
}

/// The commit scenario of `ft demo`.
pub(crate) fn demo(seed: u64) -> Result<(), String> {
    println!(
        "distributed commit: n0 coordinates t1 among n1, n2, n3; every application votes commit"
    );
    let base = SimCommitArgs {
        protocol: Proto::TwoPc,
        crash: CrashPoint::CoordinatorDeciding,
        faults: Faults::None,
        down_ms: 2_000,
        partition_ms: 120_000,
        abort_voter: None,
        seed,
    };
    println!();
    println!(
        "1. two-phase commit; n0 crashes while it sends GLOBAL_COMMIT: only n1's copy leaves. n2 and n3 time out in READY and ask the others (cooperative termination)"
    );
    let o = run_protocol(&base, "   ")?;
    expect(&o, "2pc, decision to n1 only", |o| {
        o.committed == 4 && o.undecided.is_empty()
    })?;
    println!();
    println!(
        "2. two-phase commit; n0 crashes once every participant is READY, before it hears their votes: nobody knows the outcome"
    );
    let waiting = SimCommitArgs {
        crash: CrashPoint::CoordinatorWaiting,
        ..base.clone()
    };
    let o = run_protocol(&waiting, "   ")?;
    expect(&o, "2pc, coordinator down in WAIT", |o| {
        o.blocked.len() == 3 && o.undecided.is_empty()
    })?;
    println!();
    println!(
        "3. three-phase commit in the same situation, n0 down for good: the participants elect one of them, which decides from their states"
    );
    let three = SimCommitArgs {
        protocol: Proto::ThreePc,
        down_ms: 0,
        ..waiting.clone()
    };
    let o = run_protocol(&three, "   ")?;
    expect(&o, "3pc, coordinator down for good", |o| {
        o.blocked.is_empty() && o.undecided.is_empty() && o.aborted == 3
    })?;
    println!();
    println!(
        "4. Paxos Commit in the same situation, n0 down for good: n1, n2, n3 are also the acceptors that chose every vote; a participant takes over as leader, learns the chosen votes, and the transaction commits"
    );
    let paxos = SimCommitArgs {
        protocol: Proto::Paxos,
        ..three.clone()
    };
    let o = run_protocol(&paxos, "   ")?;
    expect(&o, "paxos, coordinator down for good", |o| {
        o.blocked.is_empty() && o.undecided.is_empty() && o.committed == 3
    })?;
    println!();
    println!(
        "5. three-phase commit's limit: n0 sends PREPARE_COMMIT, only n1 gets it, and the network splits {{n0, n1}} | {{n2, n3}} for two minutes"
    );
    let split = SimCommitArgs {
        protocol: Proto::ThreePc,
        crash: CrashPoint::None,
        faults: Faults::Partition,
        ..base.clone()
    };
    let o = run_protocol(&split, "   ")?;
    match &o.violation {
        Some(v) => println!(
            "   => {v}: each side terminated on its own, as the subject warns (3PC needs reliable failure detection and no partitions)"
        ),
        None => println!("   => no violation on this seed"),
    }
    println!();
    println!(
        "6. two-phase commit in the same partition, with the decision reaching n1 only: n2 and n3 block until it heals, and stay safe"
    );
    let split2 = SimCommitArgs {
        protocol: Proto::TwoPc,
        crash: CrashPoint::CoordinatorDeciding,
        faults: Faults::Partition,
        ..base.clone()
    };
    let o = run_protocol(&split2, "   ")?;
    expect(&o, "2pc under the partition", |o| {
        o.violation.is_none() && o.undecided.is_empty() && o.committed == 4
    })?;
    println!();
    println!(
        "7. Paxos Commit in the same partition, with the outcome reaching n1 only: n2 and n3 hold two of the three acceptors, a majority, so they finish the instances on their side and reach the same outcome, with no wait for the heal"
    );
    let split3 = SimCommitArgs {
        protocol: Proto::Paxos,
        ..split.clone()
    };
    let o = run_protocol(&split3, "   ")?;
    expect(&o, "paxos under the partition", |o| {
        o.violation.is_none() && o.undecided.is_empty() && o.committed == 4
    })?;
    println!();
    Ok(())
}

fn expect(o: &Outcome, what: &str, ok: impl Fn(&Outcome) -> bool) -> Result<(), String> {
    if let Some(v) = &o.violation {
        return Err(format!("{what}: {v}"));
    }
    if ok(o) {
        Ok(())
    } else {
        Err(format!(
            "{what}: not what the demo shows (blocked {:?}, undecided {:?}, {} committed, {} aborted)",
            o.blocked, o.undecided, o.committed, o.aborted
        ))
    }
}

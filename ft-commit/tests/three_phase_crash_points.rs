//! Exhaustive crash points for **three-phase commit**: one coordinator
//! (n0) and 3 participants (n1..n3), one transaction, as
//! `tests/crash_points.rs` does for 2PC. A crash-free run numbers every
//! persist and every send of each node; then, for each node and each of its
//! actions, the node crashes once **before** it (the record is not
//! written, the message not sent) and once **after** it (the record durable
//! but its `handle_persisted` never called; the message on its way), stays
//! down 2 s (longer than two election rounds and a collect, so termination
//! runs without it, even when it is the lowest-id participant) and restarts
//! from its durable records. Then the same node crashes again before and
//! after each persist and send of its recovery, and restarts once more.
//! And 3PC's promise: the coordinator crashes at each of its points and
//! **never** restarts; the participants must still all decide; and with the
//! coordinator gone for good, n1 (the participant the termination elects
//! first) crashes too at each of its persists and sends, and restarts. All
//! of it twice over: every participant voting commit, and n3 voting abort.
//!
//! After every step: atomicity (never committed at one member, or decided
//! commit, and aborted at another) and validity (commit only if every
//! participant voted commit, with its READY durable). At the end:
//! termination (every node that is up holds the outcome).
//!
//! All of it once more with **log compaction** at its most eager (a
//! snapshot after every record, the log before it dropped as soon as it is
//! durable): every crash point then meets a log that starts with a
//! snapshot, or a snapshot in flight.
//!
//! The network is reliable and ordered (1 ms per message, 1 ms per
//! persist): the synchrony 3PC assumes; what is tried is the crash.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_commit::{
    CoordState3, Event, Input, Message3, PartState3, Record3, ThreePhase, ThreePhaseConfig, Timer3,
    TxId, Vote,
};
use ft_core::wire::Wire;
use ft_core::{Incarnation, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext};

const NODES: usize = 4;
const DOWN: u64 = 2_000_000;
const END: u64 = 15_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    Before,
    After,
}

#[derive(Clone, Copy, Debug)]
struct CrashPoint {
    node: usize,
    /// Which life of the node (1 = the first).
    life: u64,
    /// Its persists and sends in that life, counted from 0.
    action: usize,
    when: When,
}

enum Ev {
    Deliver(usize, NodeId, Bytes),
    Timer3(usize, u64, Timer3, u64),
    Persisted(usize, u64, PersistToken, Bytes, usize),
    Input(usize, u64, Input),
    Restart(usize),
}

struct Node {
    core: Option<ThreePhase>,
    life: u64,
    durable: Vec<Bytes>,
    /// The life and token of each record in `durable` (to apply
    /// compactions).
    tokens: Vec<(u64, PersistToken)>,
    /// Actions (persists and sends) of each life so far, numbered.
    actions: Vec<usize>,
    timers: BTreeMap<Timer3, u64>,
}

struct World {
    base: Instant,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<Node>,
    crash: Vec<CrashPoint>,
    config: ThreePhaseConfig,
    /// Nodes whose READY (or a snapshot holding READY or later) was ever
    /// durable.
    ever_ready: BTreeSet<NodeId>,
    /// How many of `crash` happened.
    crashed: usize,
    abort_voter: Option<NodeId>,
    /// The coordinator (n0), once crashed, never restarts.
    forever: bool,
    events: Vec<(usize, Event)>,
    committed: BTreeSet<usize>,
    aborted: BTreeSet<usize>,
    /// Decisions taken by termination (counted at the end, this life).
    terminated: u64,
    outcome: Option<Vote>,
}

fn tx() -> TxId {
    TxId::new(&b"t"[..]).unwrap()
}

fn participants() -> Vec<NodeId> {
    vec![NodeId(1), NodeId(2), NodeId(3)]
}

impl World {
    fn new(
        crash: Vec<CrashPoint>,
        abort_voter: Option<NodeId>,
        forever: bool,
        compact: bool,
    ) -> World {
        let base = Instant::now();
        let mut w = World {
            base,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes: Vec::new(),
            crash,
            config: ThreePhaseConfig {
                snapshot_every: u32::from(compact),
                ..ThreePhaseConfig::default()
            },
            ever_ready: BTreeSet::new(),
            crashed: 0,
            abort_voter,
            forever,
            events: Vec::new(),
            committed: BTreeSet::new(),
            aborted: BTreeSet::new(),
            terminated: 0,
            outcome: None,
        };
        for i in 0..NODES {
            w.nodes.push(Node {
                core: None,
                life: 0,
                durable: Vec::new(),
                tokens: Vec::new(),
                actions: Vec::new(),
                timers: BTreeMap::new(),
            });
            w.start(i);
        }
        w
    }

    fn at(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    fn schedule(&mut self, after: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.life += 1;
        n.actions.push(0);
        n.timers.clear();
        let ctx = RecoveryContext {
            node: NodeId(i as u64),
            incarnation: Incarnation(n.life),
            records: n.durable.clone(),
            seed: 1,
            now: self.base + Duration::from_micros(self.now),
        };
        n.core = Some(ThreePhase::recover(&self.config, ctx).expect("recovers"));
        self.pump(i);
    }

    fn crash_here(&mut self, i: usize, action: usize, when: When) -> bool {
        let life = self.nodes[i].life;
        let hit = self
            .crash
            .iter()
            .any(|c| c.node == i && c.life == life && c.action == action && c.when == when);
        if hit {
            self.crashed += 1;
            let n = &mut self.nodes[i];
            n.core = None;
            n.timers.clear();
            if !(self.forever && i == 0) {
                self.schedule(DOWN, Ev::Restart(i));
            }
        }
        hit
    }

    /// Carries out node `i`'s outputs, crashing it at the crash point.
    fn pump(&mut self, i: usize) {
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            let Some(o) = core.poll_output() else {
                return;
            };
            let life = self.nodes[i].life;
            match o {
                Output::Persist { record, token } => {
                    let a = self.nodes[i].actions[life as usize - 1];
                    self.nodes[i].actions[life as usize - 1] += 1;
                    if self.crash_here(i, a, When::Before) {
                        return;
                    }
                    self.schedule(1000, Ev::Persisted(i, life, token, record, a));
                }
                Output::Send { to, msg } => {
                    let a = self.nodes[i].actions[life as usize - 1];
                    self.nodes[i].actions[life as usize - 1] += 1;
                    if self.crash_here(i, a, When::Before) {
                        return;
                    }
                    let from = NodeId(i as u64);
                    self.schedule(1000, Ev::Deliver(to.0 as usize, from, msg.to_bytes()));
                    if self.crash_here(i, a, When::After) {
                        return;
                    }
                }
                Output::Multicast { .. } => panic!("the core does not multicast"),
                Output::SetTimer { timer, at } => {
                    self.seq += 1;
                    let generation = self.seq;
                    self.nodes[i].timers.insert(timer.clone(), generation);
                    let at = at.saturating_duration_since(self.base).as_micros() as u64;
                    self.seq += 1;
                    self.queue.insert(
                        (at.max(self.now), self.seq),
                        Ev::Timer3(i, life, timer, generation),
                    );
                }
                Output::CancelTimer { timer } => {
                    self.nodes[i].timers.remove(&timer);
                }
                Output::Compact { before } => {
                    let n = &mut self.nodes[i];
                    let at = n
                        .tokens
                        .iter()
                        .position(|&t| t == (life, before))
                        .expect("compacts before a durable record of this life");
                    n.tokens.drain(..at);
                    n.durable.drain(..at);
                }
                Output::Event(e) => {
                    if let Event::Prepare { tx } = &e {
                        let me = NodeId(i as u64);
                        let vote = if Some(me) == self.abort_voter {
                            Vote::Abort
                        } else {
                            Vote::Commit
                        };
                        let input = Input::Voted {
                            tx: tx.clone(),
                            vote,
                        };
                        self.schedule(1000, Ev::Input(i, life, input));
                    }
                    self.events.push((i, e));
                }
            }
        }
    }

    fn up(&self, i: usize, life: u64) -> bool {
        self.nodes[i].core.is_some() && self.nodes[i].life == life
    }

    fn step(&mut self) -> bool {
        let Some(((t, _), ev)) = self.queue.pop_first() else {
            return false;
        };
        if t > END {
            return false;
        }
        self.now = t;
        let now = self.at();
        match ev {
            Ev::Deliver(i, from, bytes) => {
                if let Some(core) = self.nodes[i].core.as_mut() {
                    let msg = Message3::from_bytes(bytes).expect("decodes");
                    core.handle_message(now, from, msg);
                    self.pump(i);
                }
            }
            Ev::Timer3(i, life, timer, generation) => {
                if self.up(i, life) && self.nodes[i].timers.get(&timer) == Some(&generation) {
                    self.nodes[i].timers.remove(&timer);
                    self.nodes[i]
                        .core
                        .as_mut()
                        .unwrap()
                        .handle_timer(now, timer);
                    self.pump(i);
                }
            }
            Ev::Persisted(i, life, token, record, a) => {
                if self.up(i, life) {
                    let ready = match ft_core::record::decode::<Record3>(record.clone()) {
                        Ok(Record3::Part { state, .. }) => state != PartState3::Abort,
                        Ok(Record3::Snapshot(s)) => s.parts.iter().any(|p| {
                            matches!(
                                p.state,
                                PartState3::Ready | PartState3::PreCommit | PartState3::Commit
                            )
                        }),
                        _ => false,
                    };
                    if ready {
                        self.ever_ready.insert(NodeId(i as u64));
                    }
                    self.nodes[i].durable.push(record);
                    self.nodes[i].tokens.push((life, token));
                    if !self.crash_here(i, a, When::After) {
                        self.nodes[i]
                            .core
                            .as_mut()
                            .unwrap()
                            .handle_persisted(now, token);
                        self.pump(i);
                    }
                }
            }
            Ev::Input(i, life, input) => {
                if self.up(i, life) {
                    self.nodes[i]
                        .core
                        .as_mut()
                        .unwrap()
                        .handle_input(now, input);
                    self.pump(i);
                }
            }
            Ev::Restart(i) => self.start(i),
        }
        true
    }

    fn ready_durable(&self, p: NodeId) -> bool {
        self.ever_ready.contains(&p)
    }

    /// Atomicity and validity over the events since `seen`.
    fn check(&mut self, seen: usize) -> Result<(), String> {
        for k in seen..self.events.len() {
            let (i, e) = self.events[k].clone();
            match e {
                Event::Commit { .. }
                | Event::Decided {
                    outcome: Vote::Commit,
                    ..
                } => {
                    self.committed.insert(i);
                    if self.abort_voter.is_some() {
                        return Err(format!("validity: n{i} committed, n3 voted abort"));
                    }
                    for p in participants() {
                        if !self.ready_durable(p) {
                            return Err(format!("validity: n{i} committed, {p} not READY"));
                        }
                    }
                }
                Event::Abort { .. }
                | Event::Decided {
                    outcome: Vote::Abort,
                    ..
                } => {
                    self.aborted.insert(i);
                }
                _ => {}
            }
        }
        if !self.committed.is_empty() && !self.aborted.is_empty() {
            return Err(format!(
                "atomicity: committed at {:?}, aborted at {:?}",
                self.committed, self.aborted
            ));
        }
        Ok(())
    }

    /// The outcome of the last [`run`](Self::run).
    fn run_outcome(&self) -> Vote {
        self.outcome.expect("ran")
    }

    /// Runs to the end, checking after every step; then termination.
    fn run(&mut self) -> Result<Vote, String> {
        self.schedule(
            0,
            Ev::Input(
                0,
                1,
                Input::Begin {
                    tx: tx(),
                    participants: participants(),
                },
            ),
        );
        let mut seen = 0;
        while self.step() {
            self.check(seen)?;
            seen = self.events.len();
        }
        let states: Vec<Option<PartState3>> = participants()
            .into_iter()
            .map(|p| {
                let core = self.nodes[p.0 as usize].core.as_ref();
                Ok(core
                    .ok_or(format!("{p} down at the end"))?
                    .participant_state(&tx()))
            })
            .collect::<Result<_, String>>()?;
        let outcome = match self.nodes[0].core.as_ref() {
            // Crashed before WAIT was durable: the transaction never began
            // (no VOTE_REQUEST went out).
            Some(c) => match c.coordinator_state(&tx()) {
                None | Some(CoordState3::Abort) => Vote::Abort,
                Some(CoordState3::Commit) => Vote::Commit,
                Some(s) => return Err(format!("the coordinator ends in {s:?}")),
            },
            None if self.forever => {
                if states.contains(&Some(PartState3::Commit)) {
                    Vote::Commit
                } else {
                    Vote::Abort
                }
            }
            None => return Err("n0 down at the end".into()),
        };
        for (p, got) in participants().into_iter().zip(states) {
            let want = match outcome {
                Vote::Commit => Some(PartState3::Commit),
                Vote::Abort => Some(PartState3::Abort),
            };
            // A participant that never heard of an aborted transaction
            // (its VOTE_REQUEST lost in a crash) holds nothing: fine.
            if got != want && !(outcome == Vote::Abort && got.is_none()) {
                return Err(format!("{p} ends in {got:?}, the outcome is {outcome:?}"));
            }
        }
        self.terminated = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.stats().terminated_cooperatively)
            .sum();
        self.outcome = Some(outcome);
        Ok(outcome)
    }
}

/// Runs with `points`; panics with them on a violation.
fn try_points(
    points: Vec<CrashPoint>,
    abort_voter: Option<NodeId>,
    forever: bool,
    compact: bool,
) -> World {
    let mut w = World::new(points.clone(), abort_voter, forever, compact);
    if let Err(e) = w.run() {
        panic!(
            "{points:?}, abort voter {abort_voter:?}, down for good {forever}, compaction              {compact}: {e}"
        );
    }
    assert_eq!(w.crashed, points.len(), "{points:?} not all reached");
    w
}

/// (persists, messages sent) of node `i` in a finished crash-free run.
fn cost(w: &World, i: usize) -> (u64, u64) {
    let c = w.nodes[i].core.as_ref().unwrap().counters();
    (c.persists, c.messages_sent)
}

#[derive(Default, Debug)]
struct Tally {
    runs: usize,
    outcomes: BTreeMap<(bool, Vote), usize>,
    by_termination: usize,
}

impl Tally {
    fn add(&mut self, w: &World) {
        self.runs += 1;
        *self
            .outcomes
            .entry((w.abort_voter.is_some(), w.run_outcome()))
            .or_default() += 1;
        if w.terminated > 0 {
            self.by_termination += 1;
        }
    }
}

#[test]
fn every_crash_point_of_every_node_keeps_atomicity_validity_and_termination() {
    crash_points(false);
}

#[test]
fn every_crash_point_with_a_snapshot_after_every_record() {
    crash_points(true);
}

fn crash_points(compact: bool) {
    let mut once = Tally::default();
    let mut twice = Tally::default();
    let mut forever = Tally::default();
    let mut elected = Tally::default();
    for abort_voter in [None, Some(NodeId(3))] {
        // The crash-free run: it commits (or aborts) and numbers the
        // actions.
        let mut w = World::new(Vec::new(), abort_voter, false, compact);
        let outcome = w.run().expect("crash-free run");
        if compact {
            // A snapshot follows the records; each node's log ends up
            // holding a snapshot and what came after it, at most.
            for (i, n) in w.nodes.iter().enumerate() {
                let c = n.core.as_ref().unwrap();
                assert!(c.stats().snapshots > 0, "n{i} cut no snapshot");
                assert!(n.durable.len() <= 2, "n{i}: {} records", n.durable.len());
                assert!(matches!(
                    ft_core::record::decode::<Record3>(n.durable[0].clone()),
                    Ok(Record3::Snapshot(_))
                ));
            }
        }
        let counts: Vec<usize> = w.nodes.iter().map(|n| n.actions[0]).collect();
        // The costs the README documents, for 3 participants (compaction
        // adds its snapshots).
        if !compact && abort_voter.is_none() {
            assert_eq!(outcome, Vote::Commit);
            assert_eq!(
                cost(&w, 0),
                (3, 9),
                "coordinator: WAIT, PRECOMMIT, COMMIT; VOTE_REQUEST, PREPARE_COMMIT, \
                 GLOBAL_COMMIT to each participant"
            );
            for p in 1..=3 {
                assert_eq!(
                    cost(&w, p),
                    (3, 2),
                    "participant: READY, PRECOMMIT, COMMIT; VOTE_COMMIT, READY_COMMIT"
                );
            }
        } else if !compact {
            assert_eq!(outcome, Vote::Abort);
            assert_eq!(
                cost(&w, 0),
                (2, 6),
                "coordinator: WAIT, ABORT; VOTE_REQUEST, GLOBAL_ABORT to each"
            );
            for p in 1..=2 {
                assert_eq!(cost(&w, p), (2, 1), "READY, ABORT; VOTE_COMMIT");
            }
            assert_eq!(cost(&w, 3), (1, 1), "the abort voter: ABORT; VOTE_ABORT");
        }
        assert_eq!(w.terminated, 0, "no termination without a crash");
        for (node, &count) in counts.iter().enumerate() {
            for action in 0..count {
                for when in [When::Before, When::After] {
                    let first = CrashPoint {
                        node,
                        life: 1,
                        action,
                        when,
                    };
                    let w = try_points(vec![first], abort_voter, false, compact);
                    once.add(&w);
                    // Then crash it again at each action of its recovery
                    // (its second life).
                    let again = w.nodes[node].actions[1];
                    for action in 0..again {
                        for when in [When::Before, When::After] {
                            let second = CrashPoint {
                                node,
                                life: 2,
                                action,
                                when,
                            };
                            twice.add(&try_points(
                                vec![first, second],
                                abort_voter,
                                false,
                                compact,
                            ));
                        }
                    }
                    // 3PC's promise: the coordinator down for good.
                    if node == 0 {
                        let w = try_points(vec![first], abort_voter, true, compact);
                        forever.add(&w);
                        // And a second failure: n1 (elected first by the
                        // termination) crashes too, before and after each
                        // of its persists and sends, and restarts.
                        for action in 0..w.nodes[1].actions[0] {
                            for when in [When::Before, When::After] {
                                let n1 = CrashPoint {
                                    node: 1,
                                    life: 1,
                                    action,
                                    when,
                                };
                                elected.add(&try_points(
                                    vec![first, n1],
                                    abort_voter,
                                    true,
                                    compact,
                                ));
                            }
                        }
                    }
                }
            }
        }
        eprintln!("abort voter {abort_voter:?}: actions per node (n0..n3) {counts:?}");
    }
    eprintln!(
        "3PC (compaction {compact}): {} crash points tried (before and after each persist and send of each node, \
         2 vote patterns): {once:?}; {} runs crashing the same node again at each persist and \
         send of its recovery: {twice:?}; {} runs with the coordinator down for good from each \
         of its points: {forever:?}; {} runs with the coordinator down for good and n1 \
         crashing too at each of its persists and sends: {elected:?}",
        once.runs, twice.runs, forever.runs, elected.runs
    );
    assert!(once.runs > 40 && twice.runs > once.runs && forever.runs > 10);
    assert!(elected.runs > forever.runs && elected.by_termination > 0);
    assert!(once.by_termination > 0 && forever.by_termination > 0);
    assert!(
        forever.outcomes.contains_key(&(false, Vote::Commit)),
        "some run commits with the coordinator gone for good (after PRECOMMIT)"
    );
}

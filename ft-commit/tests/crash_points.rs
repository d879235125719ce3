//! Exhaustive crash points: one coordinator (n0) and 3 participants
//! (n1..n3), one transaction. A crash-free run numbers every persist and
//! every send of each node; then, for each node and each of its actions,
//! the node crashes once **before** it (the record is not written, the
//! message not sent) and once **after** it (the record durable but its
//! `handle_persisted` never called; the message on its way), stays down
//! 400 ms (longer than the participants' wait in READY, so cooperative
//! termination runs while the coordinator is down) and restarts from its
//! durable records. Then, for each of those, the same node crashes again
//! before and after each persist and send of its recovery (its second
//! life), and restarts once more. All of it over several vote patterns
//! and configurations: the plain protocol (all commit; n3 aborts), presumed
//! abort (the same two), and read-only participants (n3 read-only; all
//! read-only; with and without presumed abort).
//!
//! After every step: atomicity (never committed at one member, or decided
//! commit, and aborted at another) and validity (commit only if every
//! participant voted commit, with its READY durable). At the end, every
//! node up: termination (the coordinator decided and heard every ACK, every
//! participant holds its outcome).
//!
//! The network here is reliable and ordered (1 ms per message, 1 ms per
//! persist): what is tried is the crash, at every point; loss, duplication
//! and reordering are the simulator sweep's job (tests/two_phase_sim.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_commit::{
    CoordState, Event, Input, LogRecord, Message, PartState, Timer, TwoPhase, TwoPhaseConfig, TxId,
    Vote,
};
use ft_core::wire::Wire;
use ft_core::{Incarnation, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext};

const NODES: usize = 4;
const DOWN: u64 = 400_000;
const END: u64 = 5_000_000;

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
    Timer(usize, u64, Timer, u64),
    Persisted(usize, u64, PersistToken, Bytes, usize),
    Input(usize, u64, Input),
    Restart(usize),
}

struct Node {
    core: Option<TwoPhase>,
    life: u64,
    durable: Vec<Bytes>,
    /// (life, token) of each durable record, to carry out compactions.
    tokens: Vec<(u64, PersistToken)>,
    /// Actions (persists and sends) of each life so far, numbered.
    actions: Vec<usize>,
    timers: BTreeMap<Timer, u64>,
}

struct World {
    base: Instant,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<Node>,
    crash: Vec<CrashPoint>,
    /// How many of `crash` happened.
    crashed: usize,
    spec: Spec,
    events: Vec<(usize, Event)>,
    committed: BTreeSet<usize>,
    aborted: BTreeSet<usize>,
    blocked: usize,
    outcome: Option<Vote>,
}

fn tx() -> TxId {
    TxId::new(&b"t"[..]).unwrap()
}

fn participants() -> Vec<NodeId> {
    vec![NodeId(1), NodeId(2), NodeId(3)]
}

impl World {
    fn new(crash: Vec<CrashPoint>, spec: Spec) -> World {
        let base = Instant::now();
        let mut w = World {
            base,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes: Vec::new(),
            crash,
            crashed: 0,
            spec,
            events: Vec::new(),
            committed: BTreeSet::new(),
            aborted: BTreeSet::new(),
            blocked: 0,
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
        n.core = Some(TwoPhase::recover(&self.spec.config, ctx).expect("recovers"));
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
            self.schedule(DOWN, Ev::Restart(i));
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
                        Ev::Timer(i, life, timer, generation),
                    );
                }
                Output::CancelTimer { timer } => {
                    self.nodes[i].timers.remove(&timer);
                }
                Output::Compact { before } => {
                    // Drop the log before that record, as a driver does.
                    let n = &mut self.nodes[i];
                    let at = n
                        .tokens
                        .iter()
                        .position(|&t| t == (life, before))
                        .expect("compaction names a durable record of this life");
                    n.tokens.drain(..at);
                    n.durable.drain(..at);
                }
                Output::Event(e) => {
                    if let Event::Prepare { tx } = &e {
                        let me = NodeId(i as u64);
                        let tx = tx.clone();
                        let input = match self.spec.kind(me) {
                            Kind::Commit => Input::Voted {
                                tx,
                                vote: Vote::Commit,
                            },
                            Kind::Abort => Input::Voted {
                                tx,
                                vote: Vote::Abort,
                            },
                            Kind::ReadOnly => Input::VotedReadOnly { tx },
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
                    let msg = Message::from_bytes(bytes).expect("decodes");
                    core.handle_message(now, from, msg);
                    self.pump(i);
                }
            }
            Ev::Timer(i, life, timer, generation) => {
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

    /// READY durable at `p`: its record, or a snapshot that holds it.
    fn ready_durable(&self, p: NodeId) -> bool {
        self.nodes[p.0 as usize].durable.iter().any(|r| {
            match ft_core::record::decode::<LogRecord>(r.clone()) {
                Ok(LogRecord::Ready { .. }) => true,
                Ok(LogRecord::Snapshot(s)) => {
                    s.parts.iter().any(|p| p.outcome != Some(Vote::Abort))
                }
                _ => false,
            }
        })
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
                    if self.spec.votes.contains(&Kind::Abort) {
                        return Err(format!(
                            "validity: n{i} committed, a participant voted abort"
                        ));
                    }
                    for p in participants() {
                        // A read-only voter logs nothing.
                        if self.spec.kind(p) == Kind::Commit && !self.ready_durable(p) {
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
                Event::Blocked { .. } => self.blocked += 1,
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
        let c = self.nodes[0].core.as_ref().ok_or("n0 down at the end")?;
        // Crashed before BEGIN was durable: the transaction never began
        // (no VOTE_REQUEST went out); the participants must not hold it
        // but as aborted.
        let (state, ended) = c
            .coordinated()
            .next()
            .map_or((CoordState::Abort, true), |(_, s, e)| (s, e));
        let outcome = match state {
            CoordState::Commit => Vote::Commit,
            CoordState::Abort => Vote::Abort,
            s => return Err(format!("the coordinator ends in {s:?}")),
        };
        if !ended {
            return Err("the coordinator never heard every ACK".into());
        }
        for p in participants() {
            let core = self.nodes[p.0 as usize]
                .core
                .as_ref()
                .ok_or(format!("{p} down at the end"))?;
            let want = match outcome {
                Vote::Commit => Some(PartState::Commit),
                Vote::Abort => Some(PartState::Abort),
            };
            let got = core.participant_state(&tx());
            // A participant that never heard of an aborted transaction
            // (its VOTE_REQUEST lost in its crash) holds nothing: fine; a
            // read-only voter left the transaction.
            let left = self.spec.kind(p) == Kind::ReadOnly && got.is_none();
            if got != want && !(outcome == Vote::Abort && got.is_none()) && !left {
                return Err(format!("{p} ends in {got:?}, the outcome is {outcome:?}"));
            }
        }
        self.outcome = Some(outcome);
        Ok(outcome)
    }
}

/// How a participant votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Commit,
    Abort,
    ReadOnly,
}

/// A configuration and the votes of n1..n3.
#[derive(Clone, Debug)]
struct Spec {
    config: TwoPhaseConfig,
    votes: [Kind; 3],
}

impl Spec {
    fn kind(&self, p: NodeId) -> Kind {
        self.votes[p.0 as usize - 1]
    }
}

/// Runs with `points`; panics with them on a violation.
fn try_points(points: Vec<CrashPoint>, spec: &Spec) -> World {
    let mut w = World::new(points.clone(), spec.clone());
    if let Err(e) = w.run() {
        panic!("{points:?}, {spec:?}: {e}");
    }
    assert_eq!(w.crashed, points.len(), "{points:?} not all reached");
    w
}

/// (forced writes, messages sent) of each node n0..n3 in a crash-free run.
type Costs = [(u64, u64); 4];

/// The crash-free run of `spec` (its outcome and costs asserted), then
/// every crash point and every second crash in the recovery. Returns
/// (single crash points, double, blocked runs).
fn sweep(spec: &Spec, want: Vote, costs: Option<Costs>) -> (usize, usize, usize) {
    let mut tried = 0;
    let mut twice = 0;
    let mut outcomes: BTreeMap<Vote, usize> = BTreeMap::new();
    let mut blocked_runs = 0;
    // The crash-free run: it commits (or aborts) and numbers the actions.
    let mut w = World::new(Vec::new(), spec.clone());
    let outcome = w.run().expect("crash-free run");
    assert_eq!(outcome, want, "{spec:?}");
    let counts: Vec<usize> = w.nodes.iter().map(|n| n.actions[0]).collect();
    // The costs the README documents, for 3 participants: forced writes
    // (persists the node waited on) and messages.
    let got: Vec<(u64, u64)> = (0..NODES)
        .map(|i| {
            let core = w.nodes[i].core.as_ref().unwrap();
            let c = core.counters();
            (c.persists - core.stats().lazy_writes, c.messages_sent)
        })
        .collect();
    if let Some(costs) = costs {
        assert_eq!(
            got,
            costs.to_vec(),
            "{spec:?}: (forced writes, messages) of n0..n3"
        );
    }
    for (node, &count) in counts.iter().enumerate() {
        for action in 0..count {
            for when in [When::Before, When::After] {
                let first = CrashPoint {
                    node,
                    life: 1,
                    action,
                    when,
                };
                let w = try_points(vec![first], spec);
                tried += 1;
                *outcomes.entry(w.run_outcome()).or_default() += 1;
                if w.blocked > 0 {
                    blocked_runs += 1;
                }
                // Then crash it again at each action of its recovery (its
                // second life): the recovery's own persists and sends are
                // crash points too.
                let again = w.nodes[node].actions[1];
                for action in 0..again {
                    for when in [When::Before, When::After] {
                        let second = CrashPoint {
                            node,
                            life: 2,
                            action,
                            when,
                        };
                        let w = try_points(vec![first, second], spec);
                        twice += 1;
                        *outcomes.entry(w.run_outcome()).or_default() += 1;
                        if w.blocked > 0 {
                            blocked_runs += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{:?} pa={} ro={} gc={} snapshot_every={}: (forced writes, messages) {got:?}; actions \
         per node (n0..n3) {counts:?}; {tried} crash points, {twice} second crashes in recovery; \
         outcomes {outcomes:?}; {blocked_runs} runs blocked for a while",
        spec.votes,
        spec.config.presumed_abort,
        spec.config.read_only,
        spec.config.group_commit,
        spec.config.snapshot_every
    );
    assert!(tried > 10 && twice > 0);
    (tried, twice, blocked_runs)
}

fn spec(presumed_abort: bool, read_only: bool, votes: [Kind; 3]) -> Spec {
    Spec {
        config: TwoPhaseConfig {
            presumed_abort,
            read_only,
            ..TwoPhaseConfig::default()
        },
        votes,
    }
}

use Kind::{Abort as A, Commit as C, ReadOnly as R};

#[test]
fn every_crash_point_of_every_node_keeps_atomicity_validity_and_termination() {
    // Coordinator: BEGIN, decision, END; VOTE_REQUEST and the decision to
    // each participant. Participant: READY, outcome; vote, ACK. An abort
    // voter logs ABORT only.
    let (a, b, blocked1) = sweep(
        &spec(false, false, [C, C, C]),
        Vote::Commit,
        Some([(3, 6), (2, 2), (2, 2), (2, 2)]),
    );
    let (c, d, blocked2) = sweep(
        &spec(false, false, [C, C, A]),
        Vote::Abort,
        Some([(3, 6), (2, 2), (2, 2), (1, 2)]),
    );
    eprintln!(
        "plain 2PC: {} crash points tried (before and after each persist and send of each \
         node, 2 vote patterns), and {} runs crashing the same node again at each persist and \
         send of its recovery",
        a + c,
        b + d
    );
    assert!(
        blocked1 + blocked2 > 0,
        "no crash point blocked a participant"
    );
}

#[test]
fn presumed_abort_at_every_crash_point() {
    // Commit: no BEGIN (one forced write fewer at the coordinator).
    sweep(
        &spec(true, false, [C, C, C]),
        Vote::Commit,
        Some([(2, 6), (2, 2), (2, 2), (2, 2)]),
    );
    // Abort: no coordinator record at all; GLOBAL_ABORT only to those
    // that did not vote abort; no ACKs; participants' ABORT not forced.
    sweep(
        &spec(true, false, [C, C, A]),
        Vote::Abort,
        Some([(0, 5), (1, 1), (1, 1), (0, 1)]),
    );
}

#[test]
fn read_only_participants_at_every_crash_point() {
    // n3 read-only: it logs nothing, sends VOTE_READ_ONLY only, and gets
    // no decision.
    sweep(
        &spec(false, true, [C, C, R]),
        Vote::Commit,
        Some([(3, 5), (2, 2), (2, 2), (0, 1)]),
    );
    sweep(
        &spec(true, true, [C, C, R]),
        Vote::Commit,
        Some([(2, 5), (2, 2), (2, 2), (0, 1)]),
    );
    // All read-only: no decision to send; without presumed abort the
    // coordinator still closes its BEGIN with a decision record (no END);
    // with it, nothing is logged anywhere.
    sweep(
        &spec(false, true, [R, R, R]),
        Vote::Commit,
        Some([(2, 3), (0, 1), (0, 1), (0, 1)]),
    );
    sweep(
        &spec(true, true, [R, R, R]),
        Vote::Commit,
        Some([(0, 3), (0, 1), (0, 1), (0, 1)]),
    );
}

#[test]
fn compaction_at_every_crash_point() {
    // A snapshot after every record, and the log before it dropped as soon
    // as it is durable: every crash point meets a log that starts with a
    // snapshot, or a snapshot in flight. The plain protocol, and then
    // every switch on at once.
    let compact = |mut s: Spec| {
        s.config.snapshot_every = 1;
        s
    };
    sweep(&compact(spec(false, false, [C, C, C])), Vote::Commit, None);
    sweep(&compact(spec(false, false, [C, C, A])), Vote::Abort, None);
    let all = |votes| {
        let mut s = compact(spec(true, true, votes));
        s.config.group_commit = true;
        s
    };
    sweep(&all([C, C, R]), Vote::Commit, None);
    sweep(&all([C, A, R]), Vote::Abort, None);
}

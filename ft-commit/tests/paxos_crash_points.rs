//! Exhaustive crash points of Paxos Commit: one coordinator (n0), 3
//! participants (RMs n1..n3) and 3 acceptors (n4..n6, F = 1), one
//! transaction. A crash-free run numbers every persist and every send of
//! each node; then, for each node and each of its actions, the node
//! crashes once **before** it (the record is not written, the message not
//! sent) and once **after** it (the record durable but its
//! `handle_persisted` never called; the message on its way), stays down
//! 700 ms (longer than an RM's takeover round, so a leader takes over
//! while the coordinator is down) and restarts from its durable records.
//! Then the same node crashes again before and after each persist and send
//! of its recovery (its second life), and restarts once more. And, for
//! termination **without** the crashed node: the coordinator, and each
//! acceptor (F = 1 may be down), crash at each of their points and never
//! come back. All of it twice over: every RM voting commit, and n3 voting
//! abort.
//!
//! After every step: atomicity (never committed at one node, or decided
//! commit, and aborted at another) and validity (commit only if every RM
//! voted commit, with its Prepared vote durable). At the end: termination
//! (every node up that knows the transaction holds its outcome).
//!
//! The network is reliable and ordered (1 ms per message, 1 ms per
//! persist): what is tried is the crash, at every point; loss, duplication
//! and reordering are the sweep's job (tests/paxos_commit_sim.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_commit::{
    Event, Input, PaxosCommit, PaxosConfig, PaxosMessage, PaxosRecord, PaxosTimer, RmState, TxId,
    Value, Vote,
};
use ft_core::wire::Wire;
use ft_core::{Incarnation, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext};

const NODES: usize = 7;
const DOWN: u64 = 700_000;
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
    Timer(usize, u64, PaxosTimer, u64),
    Persisted(usize, u64, PersistToken, Bytes, usize),
    Input(usize, u64, Input),
    Restart(usize),
}

struct Node {
    core: Option<PaxosCommit>,
    life: u64,
    durable: Vec<Bytes>,
    /// Actions (persists and sends) of each life so far, numbered.
    actions: Vec<usize>,
    timers: BTreeMap<PaxosTimer, u64>,
    /// Never restarted after its crash.
    for_good: bool,
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
    abort_voter: Option<NodeId>,
    events: Vec<(usize, Event)>,
    committed: BTreeSet<usize>,
    aborted: BTreeSet<usize>,
    blocked: usize,
    /// Compactions carried out.
    compactions: u64,
}

fn tx() -> TxId {
    TxId::new(&b"t"[..]).unwrap()
}

fn participants() -> Vec<NodeId> {
    vec![NodeId(1), NodeId(2), NodeId(3)]
}

thread_local! {
    /// Compaction of the runs on this thread: off (the cost assertions
    /// count every record), or a snapshot after every record.
    static SNAPSHOT_EVERY: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn config() -> PaxosConfig {
    PaxosConfig {
        snapshot_every: SNAPSHOT_EVERY.with(|c| c.get()),
        ..PaxosConfig::new(vec![NodeId(4), NodeId(5), NodeId(6)])
    }
}

impl World {
    fn new(crash: Vec<CrashPoint>, abort_voter: Option<NodeId>) -> World {
        let base = Instant::now();
        let mut w = World {
            base,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes: Vec::new(),
            crash,
            crashed: 0,
            abort_voter,
            events: Vec::new(),
            committed: BTreeSet::new(),
            aborted: BTreeSet::new(),
            blocked: 0,
            compactions: 0,
        };
        for i in 0..NODES {
            w.nodes.push(Node {
                core: None,
                life: 0,
                durable: Vec::new(),
                actions: Vec::new(),
                timers: BTreeMap::new(),
                for_good: false,
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
        n.core = Some(PaxosCommit::recover(&config(), ctx).expect("recovers"));
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
            if !n.for_good {
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
                        Ev::Timer(i, life, timer, generation),
                    );
                }
                Output::CancelTimer { timer } => {
                    self.nodes[i].timers.remove(&timer);
                }
                Output::Compact { .. } => {
                    // Honoured: the log keeps the last snapshot (durable:
                    // the core asks only then) and what follows it.
                    let d = &mut self.nodes[i].durable;
                    let last = d.iter().rposition(|r| {
                        matches!(
                            ft_core::record::decode::<PaxosRecord>(r.clone()),
                            Ok(PaxosRecord::Snapshot(_))
                        )
                    });
                    let last = last.expect("compaction asked after a durable snapshot");
                    d.drain(..last);
                    self.compactions += 1;
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
                    let msg = PaxosMessage::from_bytes(bytes).expect("decodes");
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

    fn prepared_durable(&self, p: NodeId) -> bool {
        self.nodes[p.0 as usize].durable.iter().any(|r| {
            matches!(
                ft_core::record::decode::<PaxosRecord>(r.clone()),
                Ok(PaxosRecord::Voted {
                    value: Value::Prepared,
                    ..
                })
            ) || matches!(
                ft_core::record::decode::<PaxosRecord>(r.clone()),
                Ok(PaxosRecord::Snapshot(s)) if s.rms.iter().any(|r| r.vote == Value::Prepared)
            )
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
                    if self.abort_voter.is_some() {
                        return Err(format!("validity: n{i} committed, n3 voted abort"));
                    }
                    for p in participants() {
                        if !self.prepared_durable(p) {
                            return Err(format!("validity: n{i} committed, {p} not Prepared"));
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

    /// Runs to the end, checking after every step; then termination:
    /// every node up that knows the transaction holds one outcome.
    /// `None`: no node knows it (the coordinator crashed before PREPARE
    /// went out).
    fn run(&mut self) -> Result<Option<Vote>, String> {
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
        let mut outcome = None;
        let mut agree = |o: Vote, who: String| -> Result<(), String> {
            match outcome {
                Some(p) if p != o => Err(format!("{who} ends with {o:?}, another with {p:?}")),
                _ => {
                    outcome = Some(o);
                    Ok(())
                }
            }
        };
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(core) = n.core.as_ref() else {
                if n.for_good {
                    continue;
                }
                return Err(format!("n{i} down at the end"));
            };
            for (_, o) in core.coordinated() {
                agree(
                    o.ok_or(format!("coordinator n{i} has no outcome"))?,
                    format!("n{i}"),
                )?;
            }
            for (_, s) in core.participating() {
                match s {
                    RmState::Committed => agree(Vote::Commit, format!("n{i}"))?,
                    RmState::Aborted => agree(Vote::Abort, format!("n{i}"))?,
                    s => return Err(format!("RM n{i} ends in {s:?}")),
                }
            }
        }
        if outcome.is_some() {
            // Every RM that is up knows the transaction once anyone does.
            for p in participants() {
                let n = &self.nodes[p.0 as usize];
                if let Some(core) = n.core.as_ref()
                    && core.rm_state(&tx()).is_none()
                    && outcome == Some(Vote::Commit)
                {
                    return Err(format!("{p} never heard of a committed transaction"));
                }
            }
        }
        Ok(outcome)
    }
}

/// Runs with `points` (the nodes of `for_good` never restart); panics
/// with them on a violation.
fn try_points(
    points: Vec<CrashPoint>,
    abort_voter: Option<NodeId>,
    for_good: &[usize],
) -> (World, Option<Vote>) {
    let mut w = World::new(points.clone(), abort_voter);
    for &i in for_good {
        w.nodes[i].for_good = true;
    }
    let outcome = match w.run() {
        Ok(o) => o,
        Err(e) => {
            panic!("{points:?}, abort voter {abort_voter:?}, down for good {for_good:?}: {e}")
        }
    };
    assert_eq!(w.crashed, points.len(), "{points:?} not all reached");
    (w, outcome)
}

#[test]
fn every_crash_point_of_every_node_keeps_atomicity_validity_and_termination() {
    crash_points(0);
}

/// The same with a snapshot after every record (and the log compacted to
/// it): every crash point now also falls between a snapshot and the
/// records it replaces, and recovery starts from snapshots.
#[test]
fn every_crash_point_with_a_snapshot_after_every_record() {
    crash_points(1);
}

fn crash_points(snapshot_every: u32) {
    SNAPSHOT_EVERY.with(|c| c.set(snapshot_every));
    let mut compactions = 0;
    let mut tried = 0;
    let mut twice = 0;
    let mut for_good_runs = 0;
    let mut outcomes: BTreeMap<(bool, Option<Vote>), usize> = BTreeMap::new();
    let mut takeovers = 0;
    for abort_voter in [None, Some(NodeId(3))] {
        let mut w = World::new(Vec::new(), abort_voter);
        let outcome = w.run().expect("crash-free run");
        assert_eq!(
            outcome,
            Some(if abort_voter.is_some() {
                Vote::Abort
            } else {
                Vote::Commit
            })
        );
        let counts: Vec<usize> = w.nodes.iter().map(|n| n.actions[0]).collect();
        if snapshot_every > 0 {
            assert!(w.compactions > 0, "no compaction in the crash-free run");
        }
        // The costs the module docs and the README state, for N = 3 RMs
        // and A = 3 acceptors: (log writes, messages sent).
        let cost = |i: usize| {
            let c = w.nodes[i].core.as_ref().unwrap().counters();
            (c.persists, c.messages_sent)
        };
        if snapshot_every == 0 {
            assert_eq!(
                cost(0),
                (2, 6),
                "coordinator: BEGIN, DECIDED; PREPARE and OUTCOME to each RM"
            );
            for p in 1..=2 {
                assert_eq!(
                    cost(p),
                    (2, 3),
                    "RM: VOTED, OUTCOME; phase 2a to each acceptor"
                );
            }
            let n3 = if abort_voter.is_some() {
                (1, 3)
            } else {
                (2, 3)
            };
            assert_eq!(cost(3), n3, "an Aborted voter logs its vote only");
            for a in 4..=6 {
                assert_eq!(
                    cost(a),
                    (3, 3),
                    "acceptor: ACCEPTED and phase 2b per instance"
                );
            }
            let total: u64 = (0..NODES).map(|i| cost(i).1).sum();
            // 2N + 2NA with N = 3, A = 3.
            assert_eq!(total, 2 * 3 + 2 * 3 * 3);
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
                    let (w, o) = try_points(vec![first], abort_voter, &[]);
                    compactions += w.compactions;
                    tried += 1;
                    *outcomes.entry((abort_voter.is_some(), o)).or_default() += 1;
                    takeovers += w
                        .nodes
                        .iter()
                        .filter_map(|n| n.core.as_ref())
                        .map(|c| c.stats().leader_rounds)
                        .sum::<u64>();
                    let again = w.nodes[node].actions[1];
                    for action in 0..again {
                        for when in [When::Before, When::After] {
                            let second = CrashPoint {
                                node,
                                life: 2,
                                action,
                                when,
                            };
                            let (_, o) = try_points(vec![first, second], abort_voter, &[]);
                            twice += 1;
                            *outcomes.entry((abort_voter.is_some(), o)).or_default() += 1;
                        }
                    }
                    // The coordinator, or one acceptor (F = 1), never
                    // comes back: the RMs reach the outcome without it.
                    if node == 0 || node >= 4 {
                        let (_, o) = try_points(vec![first], abort_voter, &[node]);
                        for_good_runs += 1;
                        *outcomes.entry((abort_voter.is_some(), o)).or_default() += 1;
                    }
                }
            }
        }
        eprintln!("abort voter {abort_voter:?}: actions per node (n0..n6) {counts:?}");
    }
    eprintln!(
        "{tried} crash points tried (before and after each persist and send of each node, \
         2 vote patterns); {twice} runs crashing the same node again at each persist and send \
         of its recovery; {for_good_runs} runs with the coordinator or an acceptor down for \
         good from its crash point; outcomes (n3 votes abort, outcome): {outcomes:?}; \
         {takeovers} ballots above 0 in the single-crash runs"
    );
    assert!(tried > 100 && twice > tried && for_good_runs > 0);
    assert_eq!(compactions > 0, snapshot_every > 0);
    assert!(takeovers > 0, "no leader ever took over");
}

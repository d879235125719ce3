//! Log compaction of Paxos Commit (`PaxosConfig::snapshot_every`,
//! `keep_finished`, `max_open`; see `ft_commit::paxos_snapshot`), on a
//! small deterministic network: one coordinator (n0), three RMs (n1..n3),
//! three acceptors (n4..n6, F = 1). Persists complete in order, messages
//! arrive in order, `Output::Compact` drops the log before the last
//! snapshot, and restarts recover from that compacted log.
//!
//! - Over thousands of transactions, every node's log and tables stay
//!   bounded (and without compaction they do not).
//! - A flood of forged phase 1a / 2a about unknown transactions leaves
//!   an acceptor's tables and log bounded.
//! - An RM that missed OUTCOME and takes over after the acceptors
//!   compacted (and restarted) never aborts a committed transaction: it
//!   is told COMMIT while the outcome is in the acceptors' window, and
//!   meets silence (stays Prepared) once it left it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_commit::{
    Ballot, Event, Input, PaxosCommit, PaxosConfig, PaxosMessage, PaxosRecord, PaxosTimer, RmState,
    TxId, Value, Vote,
};
use ft_core::{Incarnation, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext};

const C: NodeId = NodeId(0);
const RMS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const ACCEPTORS: [NodeId; 3] = [NodeId(4), NodeId(5), NodeId(6)];
/// A hostile node: not a participant, not an acceptor.
const H: NodeId = NodeId(9);

fn config(snapshot_every: u32, keep_finished: usize) -> PaxosConfig {
    PaxosConfig {
        snapshot_every,
        keep_finished,
        max_open: 64,
        ..PaxosConfig::new(ACCEPTORS.to_vec())
    }
}

fn tx(i: usize) -> TxId {
    TxId::new(format!("t{i}")).unwrap()
}

struct Net {
    config: PaxosConfig,
    base: Instant,
    now: Duration,
    cores: BTreeMap<NodeId, PaxosCommit>,
    lives: BTreeMap<NodeId, u64>,
    logs: BTreeMap<NodeId, Vec<Bytes>>,
    persists: VecDeque<(NodeId, PersistToken, Bytes)>,
    msgs: VecDeque<(NodeId, NodeId, PaxosMessage)>,
    inputs: VecDeque<(NodeId, Input)>,
    timers: BTreeMap<(NodeId, PaxosTimer), Instant>,
    events: Vec<(NodeId, Event)>,
    /// OUTCOME messages to these nodes are lost.
    cut: Vec<NodeId>,
    /// The longest log seen, per node.
    max_log: BTreeMap<NodeId, usize>,
}

impl Net {
    fn new(config: PaxosConfig) -> Net {
        let mut n = Net {
            config,
            base: Instant::now(),
            now: Duration::ZERO,
            cores: BTreeMap::new(),
            lives: BTreeMap::new(),
            logs: BTreeMap::new(),
            persists: VecDeque::new(),
            msgs: VecDeque::new(),
            inputs: VecDeque::new(),
            timers: BTreeMap::new(),
            events: Vec::new(),
            cut: Vec::new(),
            max_log: BTreeMap::new(),
        };
        for id in std::iter::once(C).chain(RMS).chain(ACCEPTORS) {
            n.restart(id);
        }
        n
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    /// (Re)starts `id` from its (compacted) log.
    fn restart(&mut self, id: NodeId) {
        let life = self.lives.entry(id).or_insert(0);
        *life += 1;
        self.persists.retain(|(n, ..)| *n != id);
        self.timers.retain(|(n, _), _| *n != id);
        let ctx = RecoveryContext {
            node: id,
            incarnation: Incarnation(*life),
            records: self.logs.get(&id).cloned().unwrap_or_default(),
            seed: 1,
            now: self.at(),
        };
        let core = PaxosCommit::recover(&self.config, ctx).expect("recovers");
        self.cores.insert(id, core);
        self.pump(id);
    }

    fn pump(&mut self, id: NodeId) {
        while let Some(o) = self.cores.get_mut(&id).unwrap().poll_output() {
            match o {
                Output::Persist { record, token } => self.persists.push_back((id, token, record)),
                Output::Send { to, msg } => self.msgs.push_back((id, to, msg)),
                Output::SetTimer { timer, at } => {
                    self.timers.insert((id, timer), at);
                }
                Output::CancelTimer { timer } => {
                    self.timers.remove(&(id, timer));
                }
                Output::Compact { .. } => {
                    let log = self.logs.get_mut(&id).unwrap();
                    let last = log
                        .iter()
                        .rposition(|r| {
                            matches!(
                                ft_core::record::decode::<PaxosRecord>(r.clone()),
                                Ok(PaxosRecord::Snapshot(_))
                            )
                        })
                        .expect("a durable snapshot");
                    log.drain(..last);
                }
                Output::Event(e) => {
                    if let Event::Prepare { tx } = &e {
                        self.inputs.push_back((
                            id,
                            Input::Voted {
                                tx: tx.clone(),
                                vote: Vote::Commit,
                            },
                        ));
                    }
                    self.events.push((id, e));
                }
                Output::Multicast { .. } => panic!("no multicast"),
            }
        }
    }

    /// Runs until nothing is left but timers.
    fn quiet(&mut self) {
        loop {
            let now = self.at();
            if let Some((id, token, record)) = self.persists.pop_front() {
                let log = self.logs.entry(id).or_default();
                log.push(record);
                let len = log.len();
                let m = self.max_log.entry(id).or_default();
                *m = (*m).max(len);
                self.cores
                    .get_mut(&id)
                    .unwrap()
                    .handle_persisted(now, token);
                self.pump(id);
            } else if let Some((from, to, msg)) = self.msgs.pop_front() {
                if self.cut.contains(&to) && matches!(msg, PaxosMessage::Outcome { .. }) {
                    continue;
                }
                if let Some(core) = self.cores.get_mut(&to) {
                    core.handle_message(now, from, msg);
                    self.pump(to);
                }
            } else if let Some((id, input)) = self.inputs.pop_front() {
                self.cores.get_mut(&id).unwrap().handle_input(now, input);
                self.pump(id);
            } else {
                return;
            }
        }
    }

    /// Moves time on by `d`, firing the timers due (and what follows).
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let due = self
                .timers
                .iter()
                .filter(|(_, at)| **at <= self.base + end)
                .min_by_key(|(_, at)| **at)
                .map(|(k, at)| (k.clone(), *at));
            let Some(((id, timer), at)) = due else {
                break;
            };
            self.timers.remove(&(id, timer.clone()));
            self.now = self.now.max(at - self.base);
            let now = self.at();
            self.cores.get_mut(&id).unwrap().handle_timer(now, timer);
            self.pump(id);
            self.quiet();
        }
        self.now = end;
    }

    fn begin(&mut self, tx: TxId, participants: Vec<NodeId>) {
        self.inputs
            .push_back((C, Input::Begin { tx, participants }));
        self.quiet();
    }

    fn core(&self, id: NodeId) -> &PaxosCommit {
        &self.cores[&id]
    }

    fn told(&self, id: NodeId, tx: &TxId) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|(n, e)| {
                *n == id && matches!(e, Event::Commit { tx: t } | Event::Abort { tx: t } if t == tx)
            })
            .map(|(_, e)| e)
            .collect()
    }
}

/// The largest table of any node: (coordinator, RM, acceptor instances,
/// outcomes, leaders).
fn largest_tables(net: &Net) -> usize {
    net.cores
        .values()
        .map(|c| {
            let (a, b, d, e, f) = c.table_sizes();
            a.max(b).max(d).max(e).max(f)
        })
        .max()
        .unwrap()
}

#[test]
fn logs_and_tables_stay_bounded_over_thousands_of_transactions() {
    const TXS: usize = 3000;
    let (every, keep) = (16u32, 32usize);
    let mut net = Net::new(config(every, keep));
    let mut largest = 0;
    for i in 0..TXS {
        net.begin(tx(i), RMS.to_vec());
        largest = largest.max(largest_tables(&net));
    }
    for i in [0, TXS / 2, TXS - 1] {
        assert_eq!(
            net.core(C).decided(&tx(i)).or(Some(Vote::Commit)),
            Some(Vote::Commit)
        );
    }
    assert_eq!(net.core(C).decided(&tx(TXS - 1)), Some(Vote::Commit));
    for rm in RMS {
        assert_eq!(
            net.core(rm).rm_state(&tx(TXS - 1)),
            Some(RmState::Committed)
        );
        // Forgotten beyond the window.
        assert_eq!(net.core(rm).rm_state(&tx(0)), None);
    }
    let committed = net
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Commit { .. }))
        .count();
    assert_eq!(committed, 3 * TXS);
    // Tables: the window and the transaction in progress (acceptor
    // instances: none kept once the outcome is known). Per snapshot
    // period, the window may overflow by the outcomes learned since.
    let bound = keep + every as usize + 1;
    assert!(largest <= bound * RMS.len(), "largest table {largest}");
    let longest = net.max_log.values().copied().max().unwrap();
    eprintln!(
        "{TXS} transactions, snapshot every {every} records, keep {keep}: largest table \
         {largest} entries, longest log {longest} records (max per node {:?})",
        net.max_log
    );
    // A log holds one snapshot and what came after it, up to the next
    // snapshot's compaction.
    assert!(longest <= 2 * every as usize + 2, "longest log {longest}");
    for id in net.cores.keys().copied().collect::<Vec<_>>() {
        assert!(net.core(id).stats().snapshots > 0);
    }
    let forgotten = net.core(ACCEPTORS[0]).stats().forgotten;
    assert!(
        forgotten >= (TXS - bound) as u64,
        "an acceptor forgot {forgotten} outcomes"
    );

    // A restart tells again only the outcomes logged after the last
    // snapshot (the snapshot says which were told): at most one per two
    // records (VOTED, OUTCOME) of the log's tail.
    let seen = net.events.len();
    for id in RMS {
        net.restart(id);
    }
    let retold = net.events[seen..]
        .iter()
        .filter(|(_, e)| matches!(e, Event::Commit { .. }))
        .count();
    eprintln!("retold after a restart of the RMs: {retold}");
    assert!(retold <= RMS.len() * every as usize / 2, "retold {retold}");
    // Likewise the coordinator (BEGIN, DECIDED per transaction).
    let seen = net.events.len();
    net.restart(C);
    let retold = net.events[seen..]
        .iter()
        .filter(|(_, e)| matches!(e, Event::Decided { .. }))
        .count();
    assert!(retold <= every as usize / 2, "coordinator retold {retold}");

    // Without compaction every record stays.
    let mut off = Net::new(config(0, keep));
    for i in 0..200 {
        off.begin(tx(i), RMS.to_vec());
    }
    let acceptor_log = off.max_log[&ACCEPTORS[0]];
    assert_eq!(acceptor_log, 200 * 3, "one ACCEPTED per instance, all kept");
    assert_eq!(off.core(ACCEPTORS[0]).table_sizes().2, 200 * 3);
}

/// A network where every acceptor has forgotten outcomes.
fn compacted_net() -> Net {
    let mut net = Net::new(config(4, 4));
    for i in 0..20 {
        net.begin(tx(i), RMS.to_vec());
    }
    for a in ACCEPTORS {
        assert!(net.core(a).has_forgotten());
    }
    net
}

#[test]
fn a_flood_of_forged_phase_1a_and_2a_leaves_an_acceptor_bounded() {
    let mut net = compacted_net();
    let a = ACCEPTORS[0];
    let before = net.core(a).table_sizes();
    let h_ballot = Ballot {
        round: 1,
        incarnation: 1,
        leader: H,
    };
    // Phase 1a and higher-ballot phase 2a about unknown transactions:
    // silence, nothing kept, nothing logged.
    for i in 0..5000 {
        let t = TxId::new(format!("forged{i}")).unwrap();
        net.msgs.push_back((
            H,
            a,
            PaxosMessage::Phase1a {
                tx: t.clone(),
                ballot: h_ballot,
                rms: vec![H],
            },
        ));
        net.msgs.push_back((
            H,
            a,
            PaxosMessage::Phase2a {
                tx: t,
                rm: H,
                ballot: h_ballot,
                value: Value::Prepared,
            },
        ));
    }
    let log_before = net.logs[&a].len();
    net.quiet();
    assert_eq!(net.core(a).stats().silent_unknown, 10_000);
    assert_eq!(net.core(a).table_sizes(), before);
    assert_eq!(net.logs[&a].len(), log_before, "nothing logged");
    // Ballot-0 phase 2a (a new transaction's vote, from its RM) must be
    // accepted: up to max_open open transactions, then refused.
    for i in 0..5000 {
        let t = TxId::new(format!("new{i}")).unwrap();
        net.msgs.push_back((
            H,
            a,
            PaxosMessage::Phase2a {
                tx: t,
                rm: H,
                ballot: Ballot::zero(H),
                value: Value::Prepared,
            },
        ));
    }
    net.quiet();
    let s = net.core(a).stats();
    assert_eq!(s.acceptor_full, 5000 - 64);
    assert_eq!(net.core(a).table_sizes().2, 64);
    // A forged OUTCOME (not from a leader of the transaction's ballots)
    // closes nothing.
    let t = TxId::new("new0").unwrap();
    net.msgs.push_back((
        NodeId(8),
        a,
        PaxosMessage::Outcome {
            tx: t.clone(),
            outcome: Vote::Abort,
        },
    ));
    net.quiet();
    assert_eq!(net.core(a).known_outcome(&t), None);
    assert_eq!(net.core(a).table_sizes().2, 64);
    assert!(net.max_log[&a] <= 2 * 4 + 2 + 64, "log {}", net.max_log[&a]);

    // An acceptor that has forgotten nothing promises a phase 1a about an
    // unknown transaction (it may be new), but only up to max_open.
    let mut fresh = Net::new(config(4, 4));
    for i in 0..1000 {
        let t = TxId::new(format!("forged{i}")).unwrap();
        fresh.msgs.push_back((
            H,
            a,
            PaxosMessage::Phase1a {
                tx: t,
                ballot: h_ballot,
                rms: vec![H],
            },
        ));
    }
    fresh.quiet();
    assert_eq!(fresh.core(a).stats().acceptor_full, 1000 - 64);
    assert_eq!(fresh.core(a).table_sizes().2, 64);
}

/// t0 commits, but P3 (n3) misses OUTCOME; then `later` transactions
/// among n1, n2 run; the acceptors and n3 restart from their compacted
/// logs; n3 takes over.
fn lagging_rm(later: usize) -> Net {
    let mut net = Net::new(config(4, 8));
    let p3 = RMS[2];
    // n3 votes, but every OUTCOME to it is lost.
    net.cut.push(p3);
    net.begin(tx(0), RMS.to_vec());
    assert_eq!(net.core(C).decided(&tx(0)), Some(Vote::Commit));
    assert_eq!(net.core(p3).rm_state(&tx(0)), Some(RmState::Prepared));
    for i in 1..=later {
        net.begin(tx(i), RMS[..2].to_vec());
    }
    for id in ACCEPTORS.into_iter().chain([p3]) {
        net.restart(id);
    }
    net.cut.clear();
    // n3's first election round after a restart elects itself.
    net.advance(Duration::from_secs(5));
    net
}

#[test]
fn a_lagging_rm_taking_over_within_the_window_is_told_commit() {
    let net = lagging_rm(3);
    let p3 = RMS[2];
    assert_eq!(net.core(p3).rm_state(&tx(0)), Some(RmState::Committed));
    assert_eq!(net.told(p3, &tx(0)), vec![&Event::Commit { tx: tx(0) }]);
    let answers: u64 = ACCEPTORS
        .iter()
        .map(|&a| net.core(a).stats().outcome_answers)
        .sum();
    assert!(answers > 0, "the acceptors answered with OUTCOME");
    assert!(ACCEPTORS.iter().all(|&a| starts_with_snapshot(&net, a)));
}

/// The node restarted from a compacted log (a snapshot first).
fn starts_with_snapshot(net: &Net, id: NodeId) -> bool {
    matches!(
        ft_core::record::decode::<PaxosRecord>(net.logs[&id][0].clone()),
        Ok(PaxosRecord::Snapshot(_))
    )
}

#[test]
fn a_lagging_rm_taking_over_after_the_window_never_aborts() {
    let net = lagging_rm(40);
    let p3 = RMS[2];
    // The acceptors forgot t0: silence, so n3 waits (liveness), never
    // aborts (a promise "accepted nothing" would make it propose Aborted
    // for its instance while Prepared was chosen and COMMIT decided).
    assert!(ACCEPTORS.iter().all(|&a| net.core(a).has_forgotten()));
    assert!(ACCEPTORS.iter().all(|&a| starts_with_snapshot(&net, a)));
    assert_eq!(net.core(p3).rm_state(&tx(0)), Some(RmState::Prepared));
    assert!(net.told(p3, &tx(0)).is_empty());
    assert!(net.core(p3).stats().leader_rounds > 0, "n3 took over");
    let silent: u64 = ACCEPTORS
        .iter()
        .map(|&a| net.core(a).stats().silent_unknown)
        .sum();
    assert!(silent > 0, "the acceptors stayed silent");
}

#[test]
fn a_snapshot_cut_while_an_acceptance_is_in_flight_keeps_it() {
    // A snapshot after every record: the one cut right after an ACCEPTED
    // (still in flight) must hold the acceptance, since the compaction it
    // asks for drops the ACCEPTED record.
    let mut net = Net::new(config(1, 8));
    let a = ACCEPTORS[0];
    let t = tx(0);
    net.msgs.push_back((
        RMS[0],
        a,
        PaxosMessage::Phase2a {
            tx: t.clone(),
            rm: RMS[0],
            ballot: Ballot::zero(C),
            value: Value::Prepared,
        },
    ));
    net.quiet();
    assert!(starts_with_snapshot(&net, a), "compacted");
    assert!(
        !net.logs[&a].iter().any(|r| matches!(
            ft_core::record::decode::<PaxosRecord>(r.clone()),
            Ok(PaxosRecord::Accepted { .. })
        )),
        "the ACCEPTED record was compacted away"
    );
    net.restart(a);
    assert_eq!(
        net.core(a).accepted(&t, RMS[0]),
        Some((Ballot::zero(C), Value::Prepared))
    );
}

#[test]
fn a_window_of_zero_still_tells_every_outcome_once() {
    // The coordinator is also an RM: it learns the outcome while its RM's
    // OUTCOME record is in flight, and a snapshot cut then must not forget
    // the transaction before the application is told.
    let mut net = Net::new(config(1, 0));
    for i in 0..5 {
        net.begin(tx(i), vec![C, RMS[0], RMS[1]]);
    }
    for i in 0..5 {
        for id in [C, RMS[0], RMS[1]] {
            assert_eq!(
                net.told(id, &tx(i)),
                vec![&Event::Commit { tx: tx(i) }],
                "{id} on t{i}"
            );
        }
    }
    assert!(net.core(C).stats().forgotten > 0);
}

#[test]
fn a_snapshot_cut_while_a_promise_is_in_flight_keeps_it() {
    let mut net = Net::new(config(1, 8));
    let a = ACCEPTORS[0];
    let t = tx(0);
    let b = |round| Ballot {
        round,
        incarnation: 1,
        leader: RMS[0],
    };
    net.msgs.push_back((
        RMS[0],
        a,
        PaxosMessage::Phase1a {
            tx: t.clone(),
            ballot: b(2),
            rms: vec![RMS[0]],
        },
    ));
    net.quiet();
    assert!(starts_with_snapshot(&net, a), "compacted");
    net.restart(a);
    // Below the promise: refused, also after the restart.
    net.msgs.push_back((
        RMS[0],
        a,
        PaxosMessage::Phase2a {
            tx: t.clone(),
            rm: RMS[0],
            ballot: b(1),
            value: Value::Aborted,
        },
    ));
    net.quiet();
    assert_eq!(net.core(a).stats().stale_ballot, 1);
    assert_eq!(net.core(a).accepted(&t, RMS[0]), None);
}

#[test]
fn an_acceptor_that_missed_outcome_asks_again_and_closes_the_transaction() {
    missed_outcome(false);
}

#[test]
fn an_acceptor_that_missed_outcome_asks_again_after_a_restart() {
    missed_outcome(true);
}

fn missed_outcome(restart: bool) {
    let mut net = Net::new(config(4, 8));
    let a = ACCEPTORS[0];
    net.cut.push(a);
    net.begin(tx(0), RMS.to_vec());
    assert_eq!(net.core(C).decided(&tx(0)), Some(Vote::Commit));
    assert_eq!(net.core(a).known_outcome(&tx(0)), None);
    assert_eq!(net.core(a).table_sizes().2, 3, "open: three instances");
    if restart {
        net.restart(a);
        assert_eq!(net.core(a).table_sizes().2, 3, "still open");
    }
    net.cut.clear();
    net.advance(Duration::from_secs(3));
    assert_eq!(net.core(a).known_outcome(&tx(0)), Some(Vote::Commit));
    assert_eq!(net.core(a).table_sizes().2, 0, "closed");
    assert!(net.core(C).stats().outcome_answers > 0);
}

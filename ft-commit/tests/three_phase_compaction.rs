//! Log compaction of the three-phase commit core: logs and tables stay
//! bounded over thousands of transactions and under a flood of forged
//! STATE_REQUESTs; a restart does not tell history again; a late
//! STATE_REQUEST about a recent commit is answered COMMIT, one about a
//! forgotten transaction gets no answer (never INIT, never an ABORT
//! logged); a snapshot cut with records in flight holds their effect.

use bytes::Bytes;
use ft_commit::{
    Event, Input, Message3, PartState3, Record3, ThreePhase, ThreePhaseConfig, Timer3, TxId, Vote,
};
use ft_core::harness::{self, Harness};
use ft_core::{Incarnation, NodeId, Output, PersistToken, Protocol, Recover};

const C: NodeId = NodeId(0);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);
const P3: NodeId = NodeId(3);
const STRANGER: NodeId = NodeId(9);

fn txn(i: usize) -> TxId {
    TxId::new(format!("t{i}")).unwrap()
}

fn compacting(every: u32, keep: usize) -> ThreePhaseConfig {
    ThreePhaseConfig {
        snapshot_every: every,
        keep_finished: keep,
        ..ThreePhaseConfig::default()
    }
}

/// A coordinator (n0, not a participant) and three participants, through a
/// perfect network, with logs that apply the compactions asked for.
struct Cluster {
    cfg: ThreePhaseConfig,
    nodes: Vec<ThreePhase>,
    /// Each node's log: (life, token, record).
    logs: Vec<Vec<(u64, PersistToken, Bytes)>>,
    /// Each node's log with no compaction carried out (as after a crash
    /// between a snapshot's write and the compaction).
    full_logs: Vec<Vec<Bytes>>,
    life: u64,
    events: Vec<(usize, Event)>,
    max_log: usize,
}

impl Cluster {
    fn new(cfg: ThreePhaseConfig) -> Cluster {
        Cluster {
            nodes: (0..4)
                .map(|n| Harness::<ThreePhase>::new(&cfg, NodeId(n)).core)
                .collect(),
            cfg,
            logs: vec![Vec::new(); 4],
            full_logs: vec![Vec::new(); 4],
            life: 1,
            events: Vec::new(),
            max_log: 0,
        }
    }

    fn restart(&mut self) {
        self.life += 1;
        for i in 0..4 {
            let mut ctx = harness::context(NodeId(i as u64));
            ctx.incarnation = Incarnation(self.life);
            ctx.records = self.logs[i].iter().map(|(_, _, r)| r.clone()).collect();
            self.nodes[i] = ThreePhase::recover(&self.cfg, ctx).unwrap();
        }
    }

    /// Runs until nothing is left to do; persists complete at once, in
    /// order; every Prepare is answered commit; timers are dropped (no
    /// timeout in a perfect run).
    fn run(&mut self) {
        let now = std::time::Instant::now();
        loop {
            let mut idle = true;
            for i in 0..4 {
                while let Some(o) = self.nodes[i].poll_output() {
                    idle = false;
                    self.apply(i, o, now);
                }
                self.max_log = self.max_log.max(self.logs[i].len());
            }
            if idle {
                return;
            }
        }
    }

    fn apply(&mut self, i: usize, o: Output<ThreePhase>, now: std::time::Instant) {
        match o {
            Output::Send { to, msg } => {
                let j = to.0 as usize;
                if j < 4 {
                    self.nodes[j].handle_message(now, NodeId(i as u64), msg);
                }
            }
            Output::Persist { record, token } => {
                self.logs[i].push((self.life, token, record.clone()));
                self.full_logs[i].push(record);
                self.nodes[i].handle_persisted(now, token);
            }
            Output::Compact { before } => {
                let life = self.life;
                let at = self.logs[i]
                    .iter()
                    .position(|&(l, t, _)| l == life && t == before)
                    .expect("compacts before a record of this life");
                self.logs[i].drain(..at);
            }
            Output::Event(e) => {
                if let Event::Prepare { tx } = &e {
                    self.nodes[i].handle_input(
                        now,
                        Input::Voted {
                            tx: tx.clone(),
                            vote: Vote::Commit,
                        },
                    );
                }
                self.events.push((i, e));
            }
            _ => {}
        }
    }

    /// Node `i` gets `msg` from a node outside the cluster: what it sends
    /// back, and whether it logged anything.
    fn ask(&mut self, i: usize, msg: Message3) -> (Vec<Message3>, bool) {
        let now = std::time::Instant::now();
        self.nodes[i].handle_message(now, P2, msg);
        let mut answers = Vec::new();
        let mut logged = false;
        while let Some(o) = self.nodes[i].poll_output() {
            match o {
                Output::Send { msg, .. } => answers.push(msg),
                Output::Persist { .. } => logged = true,
                _ => {}
            }
        }
        (answers, logged)
    }
}

fn run_transactions(c: &mut Cluster, txs: usize) {
    let now = std::time::Instant::now();
    for i in 0..txs {
        c.nodes[0].handle_input(
            now,
            Input::Begin {
                tx: txn(i),
                participants: vec![P1, P2, P3],
            },
        );
        c.run();
    }
    let commits = c
        .events
        .iter()
        .filter(|(i, e)| *i == 1 && matches!(e, Event::Commit { .. }))
        .count();
    assert_eq!(commits, txs, "every transaction committed");
}

#[test]
fn logs_and_tables_stay_bounded_over_thousands_of_transactions() {
    const TXS: usize = 2000;
    // Without compaction the log grows with history (3 records per
    // transaction at every node).
    let mut plain = Cluster::new(compacting(0, 128));
    run_transactions(&mut plain, 200);
    assert_eq!(plain.max_log, 3 * 200);
    assert_eq!(plain.nodes[1].participating().count(), 200);

    let mut c = Cluster::new(compacting(64, 128));
    run_transactions(&mut c, TXS);
    // Logs: at most a snapshot and the records since it.
    assert!(c.max_log <= 64 + 2, "a log grew to {}", c.max_log);
    eprintln!(
        "3PC, {TXS} transactions over 3 participants: the longest log held {} records \
         (snapshot every 64, keeping 128 finished per role; {} without compaction)",
        c.max_log,
        3 * TXS
    );
    for (i, n) in c.nodes.iter().enumerate() {
        let s = n.stats();
        assert!(s.snapshots > 0 && s.forgotten > 0, "n{i}: {s:?}");
        // Memory: the window, and what finished since the last snapshot.
        assert!(n.coordinated().count() <= 128 + 64);
        assert!(n.participating().count() <= 128 + 64);
    }
}

#[test]
fn after_compaction_and_restart_an_old_commit_is_never_answered_init_or_abort() {
    const TXS: usize = 1000;
    let mut c = Cluster::new(compacting(64, 128));
    run_transactions(&mut c, TXS);
    // Restart every node from its compacted log. Only the outcomes logged
    // after the last snapshot are told again (the snapshot holds 128 the
    // application heard before it was cut).
    let after_snapshot: usize = (1..4).map(|i| c.logs[i].len() - 1).sum();
    c.events.clear();
    c.restart();
    c.run();
    let retold = c
        .events
        .iter()
        .filter(|(i, e)| *i > 0 && matches!(e, Event::Commit { .. }))
        .count();
    assert!(
        retold <= after_snapshot,
        "a restart re-told {retold} outcomes; {after_snapshot} records follow the snapshots"
    );
    let decided = c
        .events
        .iter()
        .filter(|(i, e)| *i == 0 && matches!(e, Event::Decided { .. }))
        .count();
    assert!(
        decided < c.logs[0].len(),
        "the coordinator re-told {decided}"
    );
    // A late STATE_REQUEST about a recent commit, at a participant and at
    // the coordinator (named as such): COMMIT, nothing logged.
    let recent = txn(TXS - 10);
    for i in [1, 0] {
        let (answers, logged) = c.ask(
            i,
            Message3::StateRequest {
                tx: recent.clone(),
                coordinator: C,
            },
        );
        assert!(!logged, "n{i} logged for a question about a commit");
        assert_eq!(
            answers,
            vec![Message3::State {
                tx: recent.clone(),
                state: PartState3::Commit
            }],
            "n{i}"
        );
    }
    // One forgotten long ago: silence everywhere (it was a COMMIT: INIT,
    // or the ABORT logged before it, would contradict it).
    for i in [1, 2, 3, 0] {
        let (answers, logged) = c.ask(
            i,
            Message3::StateRequest {
                tx: txn(0),
                coordinator: C,
            },
        );
        assert!(answers.is_empty() && !logged, "n{i}: {answers:?} {logged}");
        assert_eq!(c.nodes[i].participant_state(&txn(0)), None);
    }
}

/// A participant fed forged STATE_REQUESTs about `n` distinct unknown
/// transactions, its log compacted as asked: (longest log, INIT answers).
fn flood(cfg: &ThreePhaseConfig, n: usize) -> (ThreePhase, usize, usize) {
    let mut h = Harness::<ThreePhase>::new(cfg, P1);
    let mut log: Vec<PersistToken> = Vec::new();
    let mut longest = 0;
    let mut inits = 0;
    for i in 0..n {
        h.message(
            STRANGER,
            Message3::StateRequest {
                tx: txn(i),
                coordinator: NodeId(7),
            },
        );
        // Complete the persists (and those they lead to), applying
        // compactions.
        loop {
            let d = h.drain();
            for (_, m) in &d.sends {
                if matches!(
                    m,
                    Message3::State {
                        state: PartState3::Init,
                        ..
                    }
                ) {
                    inits += 1;
                }
            }
            for before in &d.compactions {
                let at = log.iter().position(|t| t == before).unwrap();
                log.drain(..at);
            }
            if d.persists.is_empty() {
                break;
            }
            for (token, _) in d.persists {
                log.push(token);
                h.persisted(token);
            }
        }
        longest = longest.max(log.len());
    }
    (h.core, longest, inits)
}

#[test]
fn a_flood_of_forged_state_requests_stays_bounded() {
    const N: usize = 5000;
    // Without compaction every forged request logs an ABORT and keeps an
    // entry for ever.
    let (core, longest, inits) = flood(&compacting(0, 128), 500);
    assert_eq!(
        (core.participating().count(), longest, inits),
        (500, 500, 500)
    );
    // With it: once the first outcomes are forgotten, unknown transactions
    // get no answer, no record, no entry.
    let (core, longest, inits) = flood(&compacting(64, 128), N);
    let s = core.stats();
    eprintln!(
        "3PC, {N} forged STATE_REQUESTs: {} entries kept, longest log {longest}, {inits} INIT \
         answers, {} snapshots, {} forgotten",
        core.participating().count(),
        s.snapshots,
        s.forgotten
    );
    assert!(core.participating().count() <= 128 + 64);
    assert!(longest <= 64 + 2, "log {longest}");
    assert!(inits <= 128 + 64 + 1, "{inits} INIT answers");
    assert_eq!(s.unknown_tx, N as u64, "every forged request counted");
    assert!(s.forgotten > 0);
}

#[test]
fn a_snapshot_cut_with_records_in_flight_holds_their_effect() {
    // A participant's READY in flight when the snapshot is cut: the
    // snapshot must say READY, or compaction would lose the vote.
    let cfg = compacting(1, 1024);
    let mut h = Harness::<ThreePhase>::new(&cfg, P1);
    h.message(
        C,
        Message3::VoteRequest {
            tx: txn(1),
            participants: vec![P1, P2, P3],
        },
    );
    h.drain();
    let d = h
        .input(Input::Voted {
            tx: txn(1),
            vote: Vote::Commit,
        })
        .drain();
    let recs = d.records::<Record3>().unwrap();
    assert!(matches!(recs[0], Record3::Part { .. }));
    let Record3::Snapshot(snap) = &recs[1] else {
        panic!("a snapshot after the READY: {recs:?}");
    };
    assert_eq!(snap.parts.len(), 1);
    assert_eq!(snap.parts[0].state, PartState3::Ready);
    assert!(!snap.parts[0].told);
    // The snapshot alone recovers READY, and termination will run.
    let mut ctx = harness::context(P1);
    ctx.incarnation = Incarnation(2);
    ctx.records = vec![d.persists[1].1.clone()];
    let mut r = Harness::<ThreePhase>::recover(&cfg, ctx).unwrap();
    assert_eq!(r.core.participant_state(&txn(1)), Some(PartState3::Ready));
    assert!(
        r.drain()
            .timers_set
            .iter()
            .any(|(t, _)| *t == Timer3::Decision(txn(1)))
    );
    // Durable: it asks for the log before the snapshot to be dropped.
    h.persisted(d.persists[0].0);
    h.persisted(d.persists[1].0);
    let d2 = h.drain();
    assert_eq!(d2.compactions, vec![d.persists[1].0]);
}

#[test]
fn a_finished_transaction_is_forgotten_only_when_a_snapshot_is_cut() {
    // Keep 0 finished transactions, but no snapshot for a long while: the
    // outcome stays in memory (its records are still in the log), and a
    // STATE_REQUEST about it is answered from it.
    let mut h = Harness::<ThreePhase>::new(&compacting(100, 0), P1);
    h.message(
        C,
        Message3::VoteRequest {
            tx: txn(1),
            participants: vec![P1, P2, P3],
        },
    );
    h.input(Input::Voted {
        tx: txn(1),
        vote: Vote::Commit,
    });
    h.complete_persists();
    h.message(C, Message3::GlobalCommit { tx: txn(1) });
    h.complete_persists();
    h.drain();
    let d = h
        .message(
            P2,
            Message3::StateRequest {
                tx: txn(1),
                coordinator: C,
            },
        )
        .drain();
    assert_eq!(
        d.sent_to(P2),
        vec![&Message3::State {
            tx: txn(1),
            state: PartState3::Commit
        }]
    );
    assert_eq!(h.core.stats().forgotten, 0);
}

#[test]
fn records_before_a_snapshot_are_superseded_by_it() {
    // A crash after a snapshot is durable but before the log before it is
    // dropped: recovery reads the old records, then the snapshot, which
    // replaces them; what the snapshot forgot stays forgotten.
    let mut c = Cluster::new(compacting(64, 128));
    run_transactions(&mut c, 400);
    for i in [0, 1] {
        let mut ctx = harness::context(NodeId(i as u64));
        ctx.incarnation = Incarnation(2);
        ctx.records = c.full_logs[i].clone();
        let mut n = ThreePhase::recover(&c.cfg, ctx).unwrap();
        assert_eq!(n.participant_state(&txn(0)), None, "n{i}");
        assert_eq!(n.coordinator_state(&txn(0)), None, "n{i}");
        assert!(n.participating().count() <= 128 + 64, "n{i}");
        assert!(n.coordinated().count() <= 128 + 64, "n{i}");
        // What the restart itself asks for (resent decisions) first.
        while n.poll_output().is_some() {}
        n.handle_message(
            std::time::Instant::now(),
            P2,
            Message3::StateRequest {
                tx: txn(0),
                coordinator: C,
            },
        );
        while let Some(o) = n.poll_output() {
            assert!(
                !matches!(o, Output::Send { .. } | Output::Persist { .. }),
                "n{i} answers about a forgotten transaction: {o:?}"
            );
        }
    }
}

#[test]
fn a_snapshot_cut_with_a_decision_in_flight_holds_it_untold() {
    // The coordinator's COMMIT in flight when the snapshot is cut: the
    // snapshot must say COMMIT, not yet told, so that a restart from it
    // alone tells the application and sends GLOBAL_COMMIT.
    let cfg = compacting(1, 1024);
    let mut h = Harness::<ThreePhase>::new(&cfg, C);
    h.input(Input::Begin {
        tx: txn(1),
        participants: vec![P1, P2, P3],
    });
    h.complete_persists();
    for p in [P1, P2, P3] {
        h.message(p, Message3::VoteCommit { tx: txn(1) });
    }
    h.complete_persists();
    h.drain();
    for p in [P1, P2] {
        h.message(p, Message3::ReadyCommit { tx: txn(1) });
    }
    let d = h.message(P3, Message3::ReadyCommit { tx: txn(1) }).drain();
    let recs = d.records::<Record3>().unwrap();
    let Record3::Snapshot(snap) = &recs[1] else {
        panic!("a snapshot after the COMMIT: {recs:?}");
    };
    assert_eq!(snap.coords.len(), 1);
    assert_eq!(snap.coords[0].state, ft_commit::CoordState3::Commit);
    assert!(!snap.coords[0].told, "COMMIT not durable yet, not told");
    let mut ctx = harness::context(C);
    ctx.incarnation = Incarnation(2);
    ctx.records = vec![d.persists[1].1.clone()];
    let mut r = Harness::<ThreePhase>::recover(&cfg, ctx).unwrap();
    let d = r.drain();
    assert_eq!(
        d.events,
        vec![Event::Decided {
            tx: txn(1),
            outcome: Vote::Commit
        }]
    );
    assert_eq!(d.sends.len(), 3, "GLOBAL_COMMIT to each participant");
}

#[test]
fn the_window_limit_a_participant_back_after_its_peers_forgot_decides_alone() {
    // What the window assumes, shown (see "Log compaction" in the module
    // docs): P1 and P2 committed t by termination while P3, READY, was
    // down (so it was never sent PREPARE_COMMIT), then finished more than
    // `keep_finished` later transactions and forgot t; the coordinator is
    // gone. P3 comes back READY and terminates: nobody answers, and by the
    // rule "all READY → abort" it aborts beside their commit. Forgetting
    // made P1 and P2 look crashed; this is 3PC's known limit when no node
    // that knows the outcome answers (as `three_phase_open_risk.rs`), here
    // reached by forgetting. The bound is the window, not the protocol.
    let cfg = compacting(64, 0);
    let forgot = Record3::Snapshot(ft_commit::Snapshot3 {
        forgotten: true,
        ..Default::default()
    });
    let recover = |node: NodeId, records: Vec<Record3>| {
        let mut ctx = harness::context(node);
        ctx.incarnation = Incarnation(2);
        ctx.records = records.iter().map(ft_core::record::encode).collect();
        Harness::<ThreePhase>::recover(&cfg, ctx).unwrap()
    };
    let mut peers = [
        recover(P1, vec![forgot.clone()]),
        recover(P2, vec![forgot.clone()]),
    ];
    let t = txn(1);
    let mut p3 = recover(
        P3,
        vec![Record3::Part {
            tx: t.clone(),
            state: PartState3::Ready,
            coordinator: C,
            participants: vec![P1, P2, P3],
        }],
    );
    p3.drain();
    // Two rounds elect P1, then P2 (silent); the third elects P3.
    for _ in 0..3 {
        p3.advance(cfg.decision_timeout);
        p3.timer(Timer3::Decision(t.clone()));
    }
    let asks = p3.drain().sends;
    assert_eq!(asks.len(), 3, "STATE_REQUEST to P1, P2 and the coordinator");
    for (to, m) in asks {
        if let Some(peer) = peers.get_mut((to.0 as usize).wrapping_sub(1)) {
            let d = peer.message(P3, m).drain();
            assert!(d.sends.is_empty() && d.persists.is_empty(), "{to} silent");
        }
    }
    p3.advance(cfg.collect);
    p3.timer(Timer3::Collect(t.clone()));
    p3.complete_persists();
    assert_eq!(p3.core.participant_state(&t), Some(PartState3::Abort));
}

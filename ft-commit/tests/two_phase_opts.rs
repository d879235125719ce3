//! Unit tests of the 2PC optimizations and additions, with ft-core's
//! harness: presumed abort, read-only participants, group commit of
//! decision records, heuristic outcomes, and log compaction (snapshots).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use ft_commit::snapshot::Snapshot;
use ft_commit::{
    CoordState, Event, Input, LogRecord, Message, PartState, PeerState, TwoPhase, TwoPhaseConfig,
    TxId, Vote,
};
use ft_core::harness::{self, Harness};
use ft_core::{Incarnation, NodeId, Output, PersistToken, Protocol, RecoveryContext};

const C: NodeId = NodeId(0);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);
const P3: NodeId = NodeId(3);

fn tx() -> TxId {
    TxId::new(&b"t1"[..]).unwrap()
}

fn txn(i: usize) -> TxId {
    TxId::new(format!("t{i}")).unwrap()
}

fn parts() -> Vec<NodeId> {
    vec![P1, P2, P3]
}

fn pa() -> TwoPhaseConfig {
    TwoPhaseConfig {
        presumed_abort: true,
        ..TwoPhaseConfig::default()
    }
}

fn ro() -> TwoPhaseConfig {
    TwoPhaseConfig {
        read_only: true,
        ..TwoPhaseConfig::default()
    }
}

fn recovered(cfg: &TwoPhaseConfig, node: NodeId, records: &[Bytes]) -> Harness<TwoPhase> {
    let mut ctx: RecoveryContext = harness::context(node);
    ctx.incarnation = Incarnation(2);
    ctx.records = records.to_vec();
    Harness::recover(cfg, ctx).unwrap()
}

fn records(persists: &[(PersistToken, Bytes)]) -> Vec<LogRecord> {
    persists
        .iter()
        .map(|(_, r)| ft_core::record::decode(r.clone()).unwrap())
        .collect()
}

/// Participant P1 of `tx()` asked to vote, under `cfg`.
fn asked(cfg: &TwoPhaseConfig) -> Harness<TwoPhase> {
    let mut h = Harness::<TwoPhase>::new(cfg, P1);
    h.message(
        C,
        Message::VoteRequest {
            tx: tx(),
            participants: parts(),
        },
    );
    h.drain();
    h
}

/// Participant P1 READY on `tx()`, under `cfg`.
fn ready(cfg: &TwoPhaseConfig) -> Harness<TwoPhase> {
    let mut h = asked(cfg);
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Commit,
    });
    h.complete_persists();
    h.drain();
    assert_eq!(h.core.participant_state(&tx()), Some(PartState::Ready));
    h
}

// ---- presumed abort ----

#[test]
fn presumed_abort_coordinator_logs_no_begin_and_no_abort_and_waits_for_no_ack() {
    let mut h = Harness::<TwoPhase>::new(&pa(), C);
    let d = h
        .input(Input::Begin {
            tx: tx(),
            participants: parts(),
        })
        .drain();
    assert!(d.persists.is_empty(), "no BEGIN");
    assert_eq!(d.sends.len(), 3, "VOTE_REQUEST at once");
    h.message(P1, Message::VoteCommit { tx: tx() });
    let d = h.message(P3, Message::VoteAbort { tx: tx() }).drain();
    assert!(d.persists.is_empty(), "no abort record");
    // GLOBAL_ABORT to those that did not vote abort; none to P3.
    let to: BTreeSet<NodeId> = d.sends.iter().map(|(n, _)| *n).collect();
    assert_eq!(to, BTreeSet::from([P1, P2]));
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| matches!(m, Message::GlobalAbort { .. }))
    );
    assert_eq!(
        d.events,
        vec![
            Event::Decided {
                tx: tx(),
                outcome: Vote::Abort
            },
            Event::Finished { tx: tx() }
        ]
    );
    // No resends, no ACK awaited; asked later, it answers ABORT.
    let d = h.timer(ft_commit::Timer::Resend(tx())).drain();
    assert!(d.sends.is_empty());
    let d = h
        .message(
            P2,
            Message::DecisionRequest {
                tx: tx(),
                coordinator: C,
            },
        )
        .drain();
    assert_eq!(
        d.sends,
        vec![(
            P2,
            Message::State {
                tx: tx(),
                state: PeerState::Abort
            }
        )]
    );
    // The id is remembered: a second Begin of it is refused.
    let d = h
        .input(Input::Begin {
            tx: tx(),
            participants: parts(),
        })
        .drain();
    assert!(matches!(d.events[..], [Event::Refused { .. }]));
}

#[test]
fn presumed_abort_coordinator_that_knows_nothing_answers_abort_without_a_record() {
    // A coordinator crashed in WAIT: no BEGIN, so its new life knows
    // nothing of the transaction.
    let mut h = recovered(&pa(), C, &[]);
    let d = h
        .message(
            P1,
            Message::DecisionRequest {
                tx: tx(),
                coordinator: C,
            },
        )
        .drain();
    assert!(d.persists.is_empty());
    assert_eq!(
        d.sends,
        vec![(
            P1,
            Message::State {
                tx: tx(),
                state: PeerState::Abort
            }
        )]
    );
    assert_eq!(h.core.stats().presumed_aborts, 1);
    // Without presumed abort the same question costs a forced record.
    let mut h = recovered(&TwoPhaseConfig::default(), C, &[]);
    let d = h
        .message(
            P1,
            Message::DecisionRequest {
                tx: tx(),
                coordinator: C,
            },
        )
        .drain();
    assert_eq!(d.persists.len(), 1);
    assert!(d.sends.is_empty(), "the answer waits for the record");
}

#[test]
fn presumed_abort_participant_does_not_force_abort_records_nor_ack_an_abort() {
    // Voting abort: the record is written, but VOTE_ABORT does not wait.
    let mut h = asked(&pa());
    let d = h
        .input(Input::Voted {
            tx: tx(),
            vote: Vote::Abort,
        })
        .drain();
    assert_eq!(
        records(&d.persists),
        vec![LogRecord::Abort {
            tx: tx(),
            coordinator: C
        }]
    );
    assert_eq!(d.sends, vec![(C, Message::VoteAbort { tx: tx() })]);
    assert_eq!(h.core.stats().lazy_writes, 1);
    // GLOBAL_ABORT in READY: aborted at once, no ACK.
    let mut h = ready(&pa());
    let d = h.message(C, Message::GlobalAbort { tx: tx() }).drain();
    assert_eq!(d.persists.len(), 1);
    assert!(d.sends.is_empty(), "no ACK of an abort");
    assert_eq!(d.events, vec![Event::Abort { tx: tx() }]);
    assert_eq!(h.core.participant_state(&tx()), Some(PartState::Abort));
    // Its record lost in a crash: READY again, it asks, and the
    // presumption answers.
    let mut h = recovered(
        &pa(),
        P1,
        &[ft_core::record::encode(&LogRecord::Ready {
            tx: tx(),
            coordinator: C,
            participants: parts(),
        })],
    );
    let d = h.drain();
    assert!(
        d.sends
            .iter()
            .any(|(n, m)| *n == C && matches!(m, Message::DecisionRequest { .. }))
    );
    // A GLOBAL_ABORT about a transaction it never knew: no ACK either.
    let mut h = Harness::<TwoPhase>::new(&pa(), P2);
    let d = h.message(C, Message::GlobalAbort { tx: tx() }).drain();
    assert!(d.sends.is_empty());
}

#[test]
fn presumed_abort_keeps_the_abort_before_an_init_answer_forced() {
    let mut h = asked(&pa());
    let d = h
        .message(
            P2,
            Message::DecisionRequest {
                tx: tx(),
                coordinator: C,
            },
        )
        .drain();
    assert_eq!(d.persists.len(), 1);
    assert!(
        d.sends.is_empty(),
        "INIT is answered only once ABORT is durable"
    );
    assert_eq!(h.core.stats().lazy_writes, 0);
    let d = h.persisted(d.persists[0].0).drain();
    assert_eq!(
        d.sends,
        vec![(
            P2,
            Message::State {
                tx: tx(),
                state: PeerState::Init
            }
        )]
    );
}

// ---- read-only participants ----

#[test]
fn read_only_participant_logs_nothing_and_leaves() {
    let mut h = asked(&ro());
    let d = h.input(Input::VotedReadOnly { tx: tx() }).drain();
    assert!(d.persists.is_empty());
    assert_eq!(d.sends, vec![(C, Message::VoteReadOnly { tx: tx() })]);
    assert!(h.core.voted_read_only(&tx()));
    assert_eq!(h.core.participant_state(&tx()), None);
    // A repeated VOTE_REQUEST: the vote again.
    let d = h
        .message(
            C,
            Message::VoteRequest {
                tx: tx(),
                participants: parts(),
            },
        )
        .drain();
    assert_eq!(d.sends, vec![(C, Message::VoteReadOnly { tx: tx() })]);
    // Asked by a READY peer: it does not know the outcome.
    let d = h
        .message(
            P2,
            Message::DecisionRequest {
                tx: tx(),
                coordinator: C,
            },
        )
        .drain();
    assert_eq!(
        d.sends,
        vec![(
            P2,
            Message::State {
                tx: tx(),
                state: PeerState::Ready
            }
        )]
    );
    // After a crash it knows nothing, and must not answer INIT (it may
    // have voted read-only, which the coordinator counts as yes).
    let mut h = recovered(&ro(), P1, &[]);
    let d = h
        .message(
            P2,
            Message::DecisionRequest {
                tx: tx(),
                coordinator: C,
            },
        )
        .drain();
    assert!(d.sends.is_empty() && d.persists.is_empty());
    // With the switch off, a read-only vote is a commit vote.
    let mut h = asked(&TwoPhaseConfig::default());
    let d = h.input(Input::VotedReadOnly { tx: tx() }).drain();
    assert!(matches!(
        records(&d.persists)[..],
        [LogRecord::Ready { .. }]
    ));
}

#[test]
fn coordinator_leaves_read_only_voters_out_of_phase_two() {
    let mut h = Harness::<TwoPhase>::new(&ro(), C);
    h.input(Input::Begin {
        tx: tx(),
        participants: parts(),
    });
    h.complete_persists();
    h.drain();
    h.message(P1, Message::VoteCommit { tx: tx() });
    h.message(P2, Message::VoteCommit { tx: tx() });
    let d = h.message(P3, Message::VoteReadOnly { tx: tx() }).drain();
    assert_eq!(
        records(&d.persists),
        vec![LogRecord::Decision {
            tx: tx(),
            outcome: Vote::Commit,
            participants: vec![P1, P2]
        }]
    );
    let d = h.persisted(d.persists[0].0).drain();
    let to: BTreeSet<NodeId> = d.sends.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        to,
        BTreeSet::from([P1, P2]),
        "no decision to the read-only voter"
    );
    h.message(P1, Message::Ack { tx: tx() });
    let d = h.message(P2, Message::Ack { tx: tx() }).drain();
    assert!(
        matches!(records(&d.persists)[..], [LogRecord::End { .. }]),
        "two ACKs end it"
    );
    assert_eq!(h.core.stats().read_only_votes, 1);
}

#[test]
fn all_read_only_needs_no_decision_record_under_presumed_abort() {
    let cfg = TwoPhaseConfig {
        presumed_abort: true,
        read_only: true,
        ..TwoPhaseConfig::default()
    };
    let mut h = Harness::<TwoPhase>::new(&cfg, C);
    h.input(Input::Begin {
        tx: tx(),
        participants: parts(),
    });
    h.drain();
    for p in parts() {
        h.message(p, Message::VoteReadOnly { tx: tx() });
    }
    let d = h.drain();
    assert!(d.persists.is_empty() && d.sends.is_empty());
    assert_eq!(
        d.events,
        vec![
            Event::Decided {
                tx: tx(),
                outcome: Vote::Commit
            },
            Event::Finished { tx: tx() }
        ]
    );
    assert_eq!(h.core.counters().persists, 0);
}

// ---- group commit ----

#[test]
fn group_commit_writes_the_decisions_taken_meanwhile_in_one_record() {
    const N: usize = 64;
    let cfg = TwoPhaseConfig {
        group_commit: true,
        ..TwoPhaseConfig::default()
    };
    let mut h = Harness::<TwoPhase>::new(&cfg, C);
    for i in 0..N {
        h.input(Input::Begin {
            tx: txn(i),
            participants: vec![P1, P2],
        });
    }
    h.complete_persists();
    let mut log: Vec<Bytes> = h.drain().persists.into_iter().map(|(_, r)| r).collect();
    // Every vote arrives before any decision is durable.
    for i in 0..N {
        h.message(P1, Message::VoteCommit { tx: txn(i) });
        h.message(P2, Message::VoteCommit { tx: txn(i) });
    }
    let first = h.drain();
    assert_eq!(first.persists.len(), 1, "one decision record in flight");
    h.persisted(first.persists[0].0);
    let d = h.drain();
    assert_eq!(d.persists.len(), 1, "the 63 others in one record");
    let rec = records(&d.persists);
    assert!(matches!(&rec[0], LogRecord::Decisions(b) if b.len() == N - 1));
    assert!(d.sends.len() == 2, "only the first decision is sent so far");
    h.persisted(d.persists[0].0);
    let d2 = h.drain();
    assert_eq!(
        d2.sends.len(),
        2 * (N - 1),
        "every decision sent once durable"
    );
    let s = h.core.stats();
    assert_eq!((s.decision_batches, s.decisions_batched), (1, N as u64 - 1));
    // 64 decisions, 2 forced writes for them (without group commit: 64).
    log.push(first.persists[0].1.clone());
    log.push(d.persists[0].1.clone());
    // Recovery reads the batch: every transaction decided, resent.
    let mut r = recovered(&cfg, C, &log);
    assert!((0..N).all(|i| r.core.coordinator_state(&txn(i)) == Some(CoordState::Commit)));
    let d = r.drain();
    assert_eq!(d.sends.len(), 2 * N);
    // And without group commit, 64 decision records.
    let mut h = Harness::<TwoPhase>::new(&TwoPhaseConfig::default(), C);
    for i in 0..N {
        h.input(Input::Begin {
            tx: txn(i),
            participants: vec![P1, P2],
        });
    }
    h.complete_persists();
    h.drain();
    for i in 0..N {
        h.message(P1, Message::VoteCommit { tx: txn(i) });
        h.message(P2, Message::VoteCommit { tx: txn(i) });
    }
    assert_eq!(h.drain().persists.len(), N);
}

// ---- heuristic outcomes ----

#[test]
fn a_heuristic_decision_that_differs_is_reported_at_both_ends() {
    let mut h = ready(&TwoPhaseConfig::default());
    let d = h
        .input(Input::Heuristic {
            tx: tx(),
            outcome: Vote::Commit,
        })
        .drain();
    assert_eq!(
        records(&d.persists),
        vec![LogRecord::Heuristic {
            tx: tx(),
            heuristic: Vote::Commit
        }]
    );
    h.persisted(d.persists[0].0).drain();
    // Still READY: asked, it does not spread its guess.
    assert_eq!(h.core.participant_state(&tx()), Some(PartState::Ready));
    let d = h
        .message(
            P2,
            Message::DecisionRequest {
                tx: tx(),
                coordinator: C,
            },
        )
        .drain();
    assert_eq!(
        d.sends,
        vec![(
            P2,
            Message::State {
                tx: tx(),
                state: PeerState::Ready
            }
        )]
    );
    // The real decision is abort: reported, and the ACK carries it.
    h.message(C, Message::GlobalAbort { tx: tx() });
    h.complete_persists();
    let d = h.drain();
    let heuristic = Event::Heuristic {
        tx: tx(),
        participant: P1,
        outcome: Vote::Abort,
        heuristic: Vote::Commit,
    };
    assert_eq!(d.events, vec![heuristic.clone()]);
    let hack = Message::HeuristicAck {
        tx: tx(),
        heuristic: Vote::Commit,
    };
    assert_eq!(d.sends, vec![(C, hack.clone())]);
    // A repeated GLOBAL_ABORT gets it again.
    let d = h.message(C, Message::GlobalAbort { tx: tx() }).drain();
    assert_eq!(d.sends, vec![(C, hack.clone())]);
    // After a restart the application hears it again: never hidden.
    let log: Vec<Bytes> = [
        LogRecord::Ready {
            tx: tx(),
            coordinator: C,
            participants: parts(),
        },
        LogRecord::Heuristic {
            tx: tx(),
            heuristic: Vote::Commit,
        },
        LogRecord::Abort {
            tx: tx(),
            coordinator: C,
        },
    ]
    .iter()
    .map(ft_core::record::encode)
    .collect();
    let mut r = recovered(&TwoPhaseConfig::default(), P1, &log);
    assert_eq!(r.drain().events, vec![heuristic]);
    assert_eq!(r.core.stats().heuristic_outcomes, 1);

    // The coordinator: the HEURISTIC_ACK is an ACK, and reported.
    let mut c = Harness::<TwoPhase>::new(&TwoPhaseConfig::default(), C);
    c.input(Input::Begin {
        tx: tx(),
        participants: vec![P1, P2],
    });
    c.complete_persists();
    c.message(P1, Message::VoteCommit { tx: tx() });
    c.message(P2, Message::VoteAbort { tx: tx() });
    c.complete_persists();
    c.drain();
    let d = c.message(P1, hack.clone()).drain();
    assert_eq!(
        d.events,
        vec![Event::Heuristic {
            tx: tx(),
            participant: P1,
            outcome: Vote::Abort,
            heuristic: Vote::Commit
        }]
    );
    let d = c.message(P1, hack).drain();
    assert!(d.events.is_empty(), "told once per life");
    let d = c.message(P2, Message::Ack { tx: tx() }).drain();
    assert!(matches!(records(&d.persists)[..], [LogRecord::End { .. }]));
}

#[test]
fn a_heuristic_decision_that_matches_is_a_plain_outcome_and_one_outside_ready_is_refused() {
    let mut h = ready(&TwoPhaseConfig::default());
    h.input(Input::Heuristic {
        tx: tx(),
        outcome: Vote::Commit,
    });
    h.complete_persists();
    h.message(C, Message::GlobalCommit { tx: tx() });
    h.complete_persists();
    let d = h.drain();
    assert_eq!(d.events, vec![Event::Commit { tx: tx() }]);
    assert_eq!(d.sends, vec![(C, Message::Ack { tx: tx() })]);
    // Outside READY: refused, nothing logged.
    let mut h = asked(&TwoPhaseConfig::default());
    let d = h
        .input(Input::Heuristic {
            tx: tx(),
            outcome: Vote::Abort,
        })
        .drain();
    assert!(d.persists.is_empty());
    assert_eq!(h.core.stats().wrong_phase, 1);
}

// ---- log compaction ----

/// A coordinator and one participant, talking through a perfect network,
/// with logs that apply the compactions asked for.
struct Pair {
    cfg: TwoPhaseConfig,
    nodes: [TwoPhase; 2],
    /// Each node's log: (life, token, record).
    logs: [Vec<(u64, PersistToken, Bytes)>; 2],
    life: u64,
    events: Vec<(usize, Event)>,
    max_log: usize,
}

impl Pair {
    fn new(cfg: TwoPhaseConfig) -> Pair {
        let mk = |n| Harness::<TwoPhase>::new(&cfg, n).core;
        Pair {
            nodes: [mk(C), mk(P1)],
            cfg,
            logs: [Vec::new(), Vec::new()],
            life: 1,
            events: Vec::new(),
            max_log: 0,
        }
    }

    fn restart(&mut self) {
        self.life += 1;
        for (i, n) in [C, P1].into_iter().enumerate() {
            let mut ctx = harness::context(n);
            ctx.incarnation = Incarnation(self.life);
            ctx.records = self.logs[i].iter().map(|(_, _, r)| r.clone()).collect();
            self.nodes[i] = <TwoPhase as ft_core::Recover>::recover(&self.cfg, ctx).unwrap();
        }
    }

    /// Runs until nothing is left to do; persists complete at once, in
    /// order; every Prepare is answered commit.
    fn run(&mut self) {
        let now = std::time::Instant::now();
        loop {
            let mut idle = true;
            for i in 0..2 {
                while let Some(o) = self.nodes[i].poll_output() {
                    idle = false;
                    match o {
                        Output::Send { to, msg } => {
                            let j = to.0 as usize;
                            let from = if i == 0 { C } else { P1 };
                            self.nodes[j].handle_message(now, from, msg);
                        }
                        Output::Persist { record, token } => {
                            self.logs[i].push((self.life, token, record));
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
                self.max_log = self.max_log.max(self.logs[i].len());
            }
            if idle {
                return;
            }
        }
    }
}

#[test]
fn logs_stay_bounded_and_a_late_question_about_an_old_commit_is_answered_commit() {
    const TXS: usize = 3000;
    let cfg = TwoPhaseConfig {
        snapshot_every: 64,
        keep_finished: 128,
        ..TwoPhaseConfig::default()
    };
    let mut pair = Pair::new(cfg.clone());
    let now = std::time::Instant::now();
    for i in 0..TXS {
        pair.nodes[0].handle_input(
            now,
            Input::Begin {
                tx: txn(i),
                participants: vec![P1],
            },
        );
        pair.run();
    }
    let commits = pair
        .events
        .iter()
        .filter(|(i, e)| *i == 1 && matches!(e, Event::Commit { .. }))
        .count();
    assert_eq!(commits, TXS, "every transaction committed");
    // Logs: at most a snapshot and the records since it, whatever the
    // history (3 records per transaction at the coordinator, 2 at the
    // participant: 9000 and 6000 without compaction).
    assert!(pair.max_log <= 64 + 4, "a log grew to {}", pair.max_log);
    eprintln!(
        "{TXS} transactions: the longest log held {} records (snapshot every 64, keeping 128 \
         finished per role)",
        pair.max_log
    );
    let s = pair.nodes[1].stats();
    assert!(s.snapshots > 0 && s.forgotten > 0);
    // Memory too: the window, and what finished since the last snapshot.
    assert!(pair.nodes[0].coordinated().count() <= 128 + 64);
    assert!(pair.nodes[1].participating().count() <= 128 + 64);
    // Restart both from their compacted logs. Only the outcomes logged
    // after the last snapshot are told again (the snapshot holds 128
    // outcomes the application heard before it was cut).
    let after_snapshot = pair.logs[1].len() - 1;
    pair.events.clear();
    pair.restart();
    pair.run();
    let retold = pair
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Commit { .. } | Event::Decided { .. }))
        .count();
    assert!(
        retold <= after_snapshot,
        "a restart re-told {retold} outcomes; {after_snapshot} records follow the snapshot"
    );
    // A late DECISION_REQUEST about a recent committed transaction, at
    // the participant and at the coordinator: COMMIT, never INIT / ABORT.
    let old = txn(TXS - 10);
    for (i, coordinator) in [(1, C), (0, C)] {
        pair.nodes[i].handle_message(
            now,
            P2,
            Message::DecisionRequest {
                tx: old.clone(),
                coordinator,
            },
        );
        let mut answers = Vec::new();
        while let Some(o) = pair.nodes[i].poll_output() {
            match o {
                Output::Send { msg, .. } => answers.push(msg),
                Output::Persist { .. } => panic!("no record for a question about a commit"),
                _ => {}
            }
        }
        assert_eq!(
            answers,
            vec![Message::State {
                tx: old.clone(),
                state: PeerState::Commit
            }]
        );
    }
    // One forgotten long ago: the participant stays silent rather than
    // answer INIT (it may have committed it).
    let ancient = txn(0);
    pair.nodes[1].handle_message(
        now,
        P2,
        Message::DecisionRequest {
            tx: ancient,
            coordinator: C,
        },
    );
    assert!(pair.nodes[1].poll_output().is_none());
}

#[test]
fn a_snapshot_taken_with_records_in_flight_holds_their_effect() {
    // A participant READY record in flight when the snapshot is cut: the
    // snapshot must say READY, or compaction would lose the vote.
    let cfg = TwoPhaseConfig {
        snapshot_every: 1,
        ..TwoPhaseConfig::default()
    };
    let mut h = asked(&cfg);
    let d = h
        .input(Input::Voted {
            tx: tx(),
            vote: Vote::Commit,
        })
        .drain();
    let recs = records(&d.persists);
    assert!(matches!(recs[0], LogRecord::Ready { .. }));
    let LogRecord::Snapshot(Snapshot { parts, .. }) = &recs[1] else {
        panic!("a snapshot after the READY: {recs:?}");
    };
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].outcome, None, "READY");
    // The snapshot alone recovers READY (the log before it dropped).
    let mut r = recovered(&cfg, P1, &[d.persists[1].1.clone()]);
    assert_eq!(r.core.participant_state(&tx()), Some(PartState::Ready));
    assert!(
        r.drain()
            .sends
            .iter()
            .any(|(_, m)| matches!(m, Message::DecisionRequest { .. }))
    );
    // Durable: it asks for the log before it to be dropped.
    h.persisted(d.persists[0].0);
    h.persisted(d.persists[1].0);
    let d2 = h.drain();
    assert_eq!(d2.compactions, vec![d.persists[1].0]);
}

#[test]
fn timeouts_are_untouched_by_the_switches() {
    // Presumed abort: the vote timeout aborts with no record.
    let mut h = Harness::<TwoPhase>::new(&pa(), C);
    h.input(Input::Begin {
        tx: tx(),
        participants: parts(),
    });
    h.drain();
    h.advance(Duration::from_millis(600));
    let d = h.timer(ft_commit::Timer::Votes(tx())).drain();
    assert!(d.persists.is_empty());
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState::Abort));
    assert_eq!(h.core.stats().vote_timeouts, 1);
}

#[test]
fn a_finished_transaction_is_forgotten_only_when_a_snapshot_is_cut() {
    // Keep 1 finished transaction, but no snapshot for a long while: the
    // older outcome stays in memory (its records are still in the log), so
    // a late VOTE_REQUEST for it is late, not a new transaction whose
    // READY would sit beside its old COMMIT in the log.
    let cfg = TwoPhaseConfig {
        snapshot_every: 100,
        keep_finished: 1,
        ..TwoPhaseConfig::default()
    };
    let mut h = Harness::<TwoPhase>::new(&cfg, P1);
    for t in [txn(1), txn(2)] {
        h.message(
            C,
            Message::VoteRequest {
                tx: t.clone(),
                participants: parts(),
            },
        );
        h.input(Input::Voted {
            tx: t.clone(),
            vote: Vote::Commit,
        });
        h.complete_persists();
        h.message(C, Message::GlobalCommit { tx: t });
        h.complete_persists();
    }
    let mut log: Vec<Bytes> = h.drain().persists.into_iter().map(|(_, r)| r).collect();
    assert_eq!(h.core.participant_state(&txn(1)), Some(PartState::Commit));
    let d = h
        .message(
            C,
            Message::VoteRequest {
                tx: txn(1),
                participants: parts(),
            },
        )
        .drain();
    assert!(d.events.is_empty(), "not prepared again");
    h.input(Input::Voted {
        tx: txn(1),
        vote: Vote::Commit,
    });
    h.complete_persists();
    log.extend(h.drain().persists.into_iter().map(|(_, r)| r));
    let r = recovered(&cfg, P1, &log);
    assert_eq!(r.core.participant_state(&txn(1)), Some(PartState::Commit));
}

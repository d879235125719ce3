//! Unit tests of the Paxos Commit core with ft-core's harness: each
//! transition of each role (coordinator, RM, acceptor, leader that takes
//! over), persist before speak, the phase 1 value rule, the election by
//! rounds, recovery of each role, and bad input ignored and counted.

use bytes::Bytes;
use ft_commit::{
    Ballot, Event, Input, PaxosCommit, PaxosConfig, PaxosMessage, PaxosRecord, PaxosTimer, RmState,
    TxId, Value, Vote,
};
use ft_core::harness::{self, Harness};
use ft_core::{Incarnation, NodeId, RecoveryContext};

const C: NodeId = NodeId(0);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);
const P3: NodeId = NodeId(3);
const A1: NodeId = NodeId(4);
const A2: NodeId = NodeId(5);
const A3: NodeId = NodeId(6);

fn tx() -> TxId {
    TxId::new(&b"t1"[..]).unwrap()
}

/// Compaction off: these tests count every record and message
/// (tests/paxos_compaction.rs tests it).
fn cfg() -> PaxosConfig {
    PaxosConfig {
        snapshot_every: 0,
        ..PaxosConfig::new(vec![A1, A2, A3])
    }
}

fn parts() -> Vec<NodeId> {
    vec![P1, P2, P3]
}

fn acceptors() -> Vec<NodeId> {
    vec![A1, A2, A3]
}

fn zero() -> Ballot {
    Ballot::zero(C)
}

fn ballot(round: u32, leader: NodeId) -> Ballot {
    Ballot {
        round,
        incarnation: Incarnation::FIRST.0,
        leader,
    }
}

fn recovered(node: NodeId, records: &[PaxosRecord]) -> Harness<PaxosCommit> {
    let mut ctx: RecoveryContext = harness::context(node);
    ctx.incarnation = Incarnation(2);
    ctx.records = records.iter().map(ft_core::record::encode).collect();
    Harness::recover(&cfg(), ctx).unwrap()
}

fn p2b(rm: NodeId, ballot: Ballot, value: Value) -> PaxosMessage {
    PaxosMessage::Phase2b {
        tx: tx(),
        rm,
        ballot,
        value,
    }
}

fn p2a(rm: NodeId, ballot: Ballot, value: Value) -> PaxosMessage {
    PaxosMessage::Phase2a {
        tx: tx(),
        rm,
        ballot,
        value,
    }
}

/// A coordinator that has sent PREPARE.
fn coordinator() -> Harness<PaxosCommit> {
    let mut h = Harness::<PaxosCommit>::new(&cfg(), C);
    h.input(Input::Begin {
        tx: tx(),
        participants: parts(),
    });
    h.drain();
    h
}

#[test]
fn coordinator_prepares_at_once_and_decides_commit_from_a_majority_of_each_instance() {
    let mut h = Harness::<PaxosCommit>::new(&cfg(), C);
    let d = h
        .input(Input::Begin {
            tx: tx(),
            participants: parts(),
        })
        .drain();
    // BEGIN is not forced: PREPARE goes out with it.
    assert_eq!(
        d.records::<PaxosRecord>().unwrap(),
        vec![PaxosRecord::Begin {
            tx: tx(),
            participants: parts()
        }]
    );
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| matches!(m, PaxosMessage::Prepare { .. }))
    );
    // One acceptor per instance is not enough; F + 1 = 2 is.
    for rm in parts() {
        h.message(A1, p2b(rm, zero(), Value::Prepared));
    }
    h.message(A2, p2b(P1, zero(), Value::Prepared));
    h.message(A2, p2b(P2, zero(), Value::Prepared));
    let d = h.drain();
    assert!(
        d.sends.is_empty() && d.events.is_empty(),
        "P3 not chosen yet"
    );
    assert_eq!(h.core.decided(&tx()), None);
    let d = h.message(A3, p2b(P3, zero(), Value::Prepared)).drain();
    assert_eq!(
        d.events,
        vec![Event::Decided {
            tx: tx(),
            outcome: Vote::Commit
        }]
    );
    // The decision needs no forced write: told and sent with its record.
    assert_eq!(
        d.records::<PaxosRecord>().unwrap(),
        vec![PaxosRecord::Decided {
            tx: tx(),
            outcome: Vote::Commit
        }]
    );
    assert_eq!(d.sends.len(), 3);
    assert!(d.sends.iter().all(|(_, m)| *m
        == PaxosMessage::Outcome {
            tx: tx(),
            outcome: Vote::Commit
        }));
    // Late 2b: counted.
    h.message(A2, p2b(P3, zero(), Value::Prepared));
    assert_eq!(h.core.stats().late, 1);
}

#[test]
fn one_instance_chosen_aborted_aborts_at_once() {
    let mut h = coordinator();
    h.message(A1, p2b(P2, zero(), Value::Aborted));
    assert!(h.drain().events.is_empty());
    // A duplicate from the same acceptor does not make a majority.
    h.message(A1, p2b(P2, zero(), Value::Aborted));
    assert!(h.drain().events.is_empty());
    assert_eq!(h.core.stats().duplicates, 1);
    let d = h.message(A3, p2b(P2, zero(), Value::Aborted)).drain();
    assert_eq!(
        d.events,
        vec![Event::Decided {
            tx: tx(),
            outcome: Vote::Abort
        }]
    );
    assert_eq!(h.core.decided(&tx()), Some(Vote::Abort));
}

#[test]
fn coordinator_resends_prepare_then_runs_a_higher_ballot_on_the_vote_timeout() {
    let mut h = coordinator();
    h.message(A1, p2b(P1, zero(), Value::Prepared));
    h.message(A2, p2b(P1, zero(), Value::Prepared));
    let d = h.timer(PaxosTimer::Resend(tx())).drain();
    let to: Vec<NodeId> = d.sends.iter().map(|(n, _)| *n).collect();
    assert_eq!(to, vec![P2, P3], "PREPARE again to the RMs not chosen");
    let d = h.timer(PaxosTimer::Votes(tx())).drain();
    let b = ballot(1, C);
    assert_eq!(d.sends.len(), 3);
    for (n, m) in &d.sends {
        assert!(acceptors().contains(n));
        assert_eq!(
            *m,
            PaxosMessage::Phase1a {
                tx: tx(),
                ballot: b,
                rms: vec![P2, P3]
            },
            "phase 1a only for the instances not known chosen"
        );
    }
    assert!(h.core.is_leading(&tx()));
    assert_eq!(h.core.stats().vote_timeouts, 1);
    // Phase 1b from a majority: P2 accepted Prepared in ballot 0 at A2,
    // P3 nothing anywhere: propose Prepared for P2, Aborted for P3.
    let reports = |p2: Option<(Ballot, Value)>| PaxosMessage::Phase1b {
        tx: tx(),
        ballot: b,
        reports: vec![(P2, p2), (P3, None)],
    };
    h.message(A1, reports(None));
    assert!(h.drain().sends.is_empty());
    let d = h
        .message(A2, reports(Some((zero(), Value::Prepared))))
        .drain();
    let mut proposed: Vec<(NodeId, Value)> = d
        .sends
        .iter()
        .map(|(_, m)| match m {
            PaxosMessage::Phase2a {
                rm, ballot, value, ..
            } => {
                assert_eq!(*ballot, b);
                (*rm, *value)
            }
            m => panic!("{m:?}"),
        })
        .collect();
    proposed.dedup();
    assert_eq!(proposed, vec![(P2, Value::Prepared), (P3, Value::Aborted)]);
    // P3 chosen Aborted in ballot 1: abort.
    h.message(A1, p2b(P3, b, Value::Aborted));
    let d = h.message(A3, p2b(P3, b, Value::Aborted)).drain();
    assert_eq!(
        d.events,
        vec![Event::Decided {
            tx: tx(),
            outcome: Vote::Abort
        }]
    );
}

#[test]
fn phase1_takes_the_value_of_the_highest_ballot_reported() {
    let mut h = coordinator();
    h.timer(PaxosTimer::Votes(tx()));
    h.drain();
    let b = ballot(1, C);
    let other = Ballot {
        round: 1,
        incarnation: 1,
        leader: P1,
    };
    // P1's instance: Aborted in ballot 0 at A1 cannot be (P1 is Prepared
    // at A2 in a higher ballot): the highest ballot wins.
    h.message(
        A1,
        PaxosMessage::Phase1b {
            tx: tx(),
            ballot: b,
            reports: vec![(P1, Some((zero(), Value::Aborted))), (P2, None), (P3, None)],
        },
    );
    let d = h
        .message(
            A2,
            PaxosMessage::Phase1b {
                tx: tx(),
                ballot: b,
                reports: vec![
                    (P1, Some((other, Value::Prepared))),
                    (P2, Some((zero(), Value::Prepared))),
                    (P3, Some((zero(), Value::Prepared))),
                ],
            },
        )
        .drain();
    assert!(d.sends.iter().all(|(_, m)| matches!(
        m,
        PaxosMessage::Phase2a {
            value: Value::Prepared,
            ..
        }
    )));
    assert_eq!(d.sends.len(), 9);
    for rm in parts() {
        h.message(A1, p2b(rm, b, Value::Prepared));
        h.message(A3, p2b(rm, b, Value::Prepared));
    }
    assert_eq!(h.core.decided(&tx()), Some(Vote::Commit));
}

#[test]
fn rm_logs_its_vote_before_phase_2a_and_the_outcome_before_telling() {
    let mut h = Harness::<PaxosCommit>::new(&cfg(), P1);
    let d = h
        .message(
            C,
            PaxosMessage::Prepare {
                tx: tx(),
                participants: parts(),
            },
        )
        .drain();
    assert_eq!(d.events, vec![Event::Prepare { tx: tx() }]);
    let d = h
        .input(Input::Voted {
            tx: tx(),
            vote: Vote::Commit,
        })
        .drain();
    assert_eq!(
        d.records::<PaxosRecord>().unwrap(),
        vec![PaxosRecord::Voted {
            tx: tx(),
            coordinator: C,
            participants: parts(),
            value: Value::Prepared
        }]
    );
    assert!(
        d.sends.is_empty(),
        "nothing sent before the vote is durable"
    );
    h.persisted(d.persists[0].0);
    let d = h.drain();
    assert_eq!(d.sends.len(), 3);
    for (n, m) in &d.sends {
        assert!(acceptors().contains(n));
        assert_eq!(*m, p2a(P1, zero(), Value::Prepared));
    }
    assert_eq!(h.core.rm_state(&tx()), Some(RmState::Prepared));
    // A repeated PREPARE: the phase 2a again.
    let d = h
        .message(
            C,
            PaxosMessage::Prepare {
                tx: tx(),
                participants: parts(),
            },
        )
        .drain();
    assert_eq!(d.sends.len(), 3);
    assert_eq!(h.core.stats().votes_resent, 1);
    // The outcome: logged, then told.
    let d = h
        .message(
            C,
            PaxosMessage::Outcome {
                tx: tx(),
                outcome: Vote::Commit,
            },
        )
        .drain();
    assert!(d.events.is_empty());
    assert_eq!(
        d.records::<PaxosRecord>().unwrap(),
        vec![PaxosRecord::Outcome {
            tx: tx(),
            outcome: Vote::Commit
        }]
    );
    h.persisted(d.persists[0].0);
    assert_eq!(h.drain().events, vec![Event::Commit { tx: tx() }]);
    assert_eq!(h.core.rm_state(&tx()), Some(RmState::Committed));
    // An abort now contradicts: ignored.
    h.message(
        C,
        PaxosMessage::Outcome {
            tx: tx(),
            outcome: Vote::Abort,
        },
    );
    assert!(h.drain().persists.is_empty());
    assert_eq!(h.core.stats().wrong_phase, 1);
}

#[test]
fn rm_voting_aborted_or_timing_out_in_init_aborts_at_once() {
    let mut h = Harness::<PaxosCommit>::new(&cfg(), P2);
    h.message(
        C,
        PaxosMessage::Prepare {
            tx: tx(),
            participants: parts(),
        },
    );
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Abort,
    });
    let d = h.drain();
    assert!(d.sends.is_empty(), "the Aborted vote is forced too");
    h.persisted(d.persists[0].0);
    let d = h.drain();
    assert_eq!(d.events, vec![Event::Abort { tx: tx() }]);
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| *m == p2a(P2, zero(), Value::Aborted))
    );

    // Joined, no PREPARE: the INIT timeout aborts.
    let mut h = Harness::<PaxosCommit>::new(&cfg(), P3);
    h.input(Input::Join {
        tx: tx(),
        coordinator: C,
    });
    h.timer(PaxosTimer::Prepare(tx()));
    h.complete_persists();
    let d = h.drain();
    assert_eq!(d.events, vec![Event::Abort { tx: tx() }]);
    assert_eq!(h.core.rm_state(&tx()), Some(RmState::Aborted));
    assert_eq!(h.core.stats().prepare_timeouts, 1);
    // Told abort while in INIT (asked, not voted): votes Aborted, durably,
    // so a late vote cannot propose Prepared.
    let mut h = Harness::<PaxosCommit>::new(&cfg(), P1);
    h.message(
        C,
        PaxosMessage::Prepare {
            tx: tx(),
            participants: parts(),
        },
    );
    h.message(
        P2,
        PaxosMessage::Outcome {
            tx: tx(),
            outcome: Vote::Abort,
        },
    );
    h.complete_persists();
    h.drain();
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Commit,
    });
    assert!(h.drain().persists.is_empty());
    assert_eq!(h.core.rm_state(&tx()), Some(RmState::Aborted));
}

#[test]
fn acceptor_logs_before_phase_2b_and_answers_duplicates() {
    let mut h = Harness::<PaxosCommit>::new(&cfg(), A1);
    let d = h.message(P1, p2a(P1, zero(), Value::Prepared)).drain();
    assert_eq!(
        d.records::<PaxosRecord>().unwrap(),
        vec![PaxosRecord::Accepted {
            tx: tx(),
            rm: P1,
            ballot: zero(),
            value: Value::Prepared
        }]
    );
    assert!(d.sends.is_empty());
    // While the record is in flight, a copy is dropped (the sender retries).
    h.message(P1, p2a(P1, zero(), Value::Prepared));
    assert_eq!(h.core.stats().busy, 1);
    h.persisted(d.persists[0].0);
    let d = h.drain();
    assert_eq!(d.sends, vec![(C, p2b(P1, zero(), Value::Prepared))]);
    let d = h.message(P1, p2a(P1, zero(), Value::Prepared)).drain();
    assert_eq!(d.sends, vec![(C, p2b(P1, zero(), Value::Prepared))]);
    assert!(d.persists.is_empty());
    // A second value in the same ballot: refused.
    h.message(P1, p2a(P1, zero(), Value::Aborted));
    assert!(h.drain().is_empty());
    assert_eq!(h.core.stats().wrong_phase, 1);
    // Ballot 0 of P2 sent by P1: forged.
    h.message(P1, p2a(P2, zero(), Value::Prepared));
    // A higher ballot not from its leader: forged.
    h.message(P1, p2a(P2, ballot(1, C), Value::Aborted));
    assert_eq!(h.core.stats().forged_sender, 2);
    assert!(h.drain().persists.is_empty());
    // Not an acceptor.
    let mut h = Harness::<PaxosCommit>::new(&cfg(), P1);
    h.message(P2, p2a(P2, zero(), Value::Prepared));
    assert_eq!(h.core.stats().not_acceptor, 1);
    assert!(h.drain().persists.is_empty());
}

#[test]
fn acceptor_promises_durably_and_refuses_lower_ballots_after() {
    let mut h = Harness::<PaxosCommit>::new(&cfg(), A2);
    h.message(P1, p2a(P1, zero(), Value::Prepared));
    h.complete_persists();
    h.drain();
    let b = ballot(1, P2);
    let d = h
        .message(
            P2,
            PaxosMessage::Phase1a {
                tx: tx(),
                ballot: b,
                rms: vec![P1, P3],
            },
        )
        .drain();
    assert_eq!(
        d.records::<PaxosRecord>().unwrap(),
        vec![PaxosRecord::Promised {
            tx: tx(),
            ballot: b,
            rms: vec![P1, P3]
        }]
    );
    assert!(
        d.sends.is_empty(),
        "no phase 1b before the promise is durable"
    );
    h.persisted(d.persists[0].0);
    let d = h.drain();
    let want = PaxosMessage::Phase1b {
        tx: tx(),
        ballot: b,
        reports: vec![(P1, Some((zero(), Value::Prepared))), (P3, None)],
    };
    assert_eq!(d.sends, vec![(P2, want.clone())]);
    // The same phase 1a again: answered again, no new record.
    let d = h
        .message(
            P2,
            PaxosMessage::Phase1a {
                tx: tx(),
                ballot: b,
                rms: vec![P1, P3],
            },
        )
        .drain();
    assert_eq!(d.sends, vec![(P2, want)]);
    assert!(d.persists.is_empty());
    // P3's ballot 0 arrives late: below the promise.
    h.message(P3, p2a(P3, zero(), Value::Prepared));
    // A lower leader ballot, too.
    h.message(
        C,
        PaxosMessage::Phase1a {
            tx: tx(),
            ballot: ballot(1, C),
            rms: vec![P3],
        },
    );
    assert!(h.drain().is_empty());
    assert_eq!(h.core.stats().stale_ballot, 2);
    // Survives a restart.
    let records: Vec<PaxosRecord> = vec![
        PaxosRecord::Accepted {
            tx: tx(),
            rm: P1,
            ballot: zero(),
            value: Value::Prepared,
        },
        PaxosRecord::Promised {
            tx: tx(),
            ballot: b,
            rms: vec![P1, P3],
        },
    ];
    let mut h = recovered(A2, &records);
    h.drain();
    h.message(P3, p2a(P3, zero(), Value::Prepared));
    assert_eq!(h.core.stats().stale_ballot, 1);
    assert_eq!(h.core.accepted(&tx(), P1), Some((zero(), Value::Prepared)));
}

#[test]
fn a_prepared_rm_elects_by_rounds_and_the_elected_one_leads() {
    let mut h = Harness::<PaxosCommit>::new(&cfg(), P2);
    h.message(
        C,
        PaxosMessage::Prepare {
            tx: tx(),
            participants: parts(),
        },
    );
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Commit,
    });
    h.complete_persists();
    h.drain();
    // Round 0 elects P1: P2 sends nothing and waits another round.
    let d = h.timer(PaxosTimer::Takeover(tx())).drain();
    assert!(d.sends.is_empty());
    assert_eq!(d.timers_set.len(), 1);
    assert!(!h.core.is_leading(&tx()));
    // Round 1 elects P2: phase 1a for every instance, in a ballot of its own.
    let d = h.timer(PaxosTimer::Takeover(tx())).drain();
    let b = ballot(1, P2);
    assert_eq!(d.sends.len(), 3);
    assert!(d.sends.iter().all(|(_, m)| *m
        == PaxosMessage::Phase1a {
            tx: tx(),
            ballot: b,
            rms: parts()
        }));
    assert!(h.core.is_leading(&tx()));
    assert_eq!(h.core.stats().leader_rounds, 1);
    // Nothing accepted for P3 at the majority: it proposes Aborted there.
    for a in [A1, A3] {
        h.message(
            a,
            PaxosMessage::Phase1b {
                tx: tx(),
                ballot: b,
                reports: vec![
                    (P1, Some((zero(), Value::Prepared))),
                    (P2, Some((zero(), Value::Prepared))),
                    (P3, None),
                ],
            },
        );
    }
    let d = h.drain();
    assert!(d.sends.contains(&(A1, p2a(P3, b, Value::Aborted))));
    assert!(d.sends.contains(&(A1, p2a(P1, b, Value::Prepared))));
    for a in [A1, A3] {
        h.message(a, p2b(P3, b, Value::Aborted));
    }
    let d = h.drain();
    // To every other RM and to the coordinator; its own RM half applies
    // it (logged, then told).
    let mut to: Vec<NodeId> = d
        .sends
        .iter()
        .filter(|(_, m)| matches!(m, PaxosMessage::Outcome { .. }))
        .map(|(n, _)| *n)
        .collect();
    to.sort();
    assert_eq!(to, vec![C, P1, P3]);
    assert!(!h.core.is_leading(&tx()));
    assert!(d.events.is_empty());
    assert_eq!(
        d.records::<PaxosRecord>().unwrap(),
        vec![PaxosRecord::Outcome {
            tx: tx(),
            outcome: Vote::Abort
        }]
    );
    h.persisted(d.persists[0].0);
    assert_eq!(h.drain().events, vec![Event::Abort { tx: tx() }]);
    // A leader whose ballot got no outcome moves to a higher one.
    let mut h = Harness::<PaxosCommit>::new(&cfg(), P1);
    h.message(
        C,
        PaxosMessage::Prepare {
            tx: tx(),
            participants: parts(),
        },
    );
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Commit,
    });
    h.complete_persists();
    h.timer(PaxosTimer::Takeover(tx()));
    h.drain();
    let d = h.timer(PaxosTimer::Lead(tx())).drain();
    assert!(d.sends.iter().all(|(_, m)| matches!(
        m,
        PaxosMessage::Phase1a { ballot, .. } if ballot.round == 2
    )));
    // A 1b of the ballot it left is stale.
    h.message(
        A1,
        PaxosMessage::Phase1b {
            tx: tx(),
            ballot: ballot(1, P1),
            reports: vec![],
        },
    );
    assert_eq!(h.core.stats().stale_ballot, 1);
}

#[test]
fn recovery_of_each_role() {
    // Coordinator, BEGIN only: learns by a ballot of its own at once.
    let mut h = recovered(
        C,
        &[PaxosRecord::Begin {
            tx: tx(),
            participants: parts(),
        }],
    );
    let d = h.drain();
    assert_eq!(d.sends.len(), 3);
    assert!(d.sends.iter().all(|(_, m)| matches!(
        m,
        PaxosMessage::Phase1a { ballot, .. } if ballot.round == 1 && ballot.incarnation == 2
    )));
    // Coordinator, decided: tells it again.
    let mut h = recovered(
        C,
        &[
            PaxosRecord::Begin {
                tx: tx(),
                participants: parts(),
            },
            PaxosRecord::Decided {
                tx: tx(),
                outcome: Vote::Commit,
            },
        ],
    );
    let d = h.drain();
    assert_eq!(
        d.events,
        vec![Event::Decided {
            tx: tx(),
            outcome: Vote::Commit
        }]
    );
    assert!(d.sends.is_empty());
    // RM Prepared: a takeover round later; RM with an outcome: told again.
    let voted = PaxosRecord::Voted {
        tx: tx(),
        coordinator: C,
        participants: parts(),
        value: Value::Prepared,
    };
    let mut h = recovered(P1, std::slice::from_ref(&voted));
    let d = h.drain();
    assert_eq!(d.timers_set.len(), 1);
    assert_eq!(h.core.rm_state(&tx()), Some(RmState::Prepared));
    let d = h.timer(PaxosTimer::Takeover(tx())).drain();
    assert_eq!(d.sends.len(), 3, "P1 is elected in round 0");
    let mut h = recovered(
        P1,
        &[
            voted.clone(),
            PaxosRecord::Outcome {
                tx: tx(),
                outcome: Vote::Commit,
            },
        ],
    );
    assert_eq!(h.drain().events, vec![Event::Commit { tx: tx() }]);
    // Contradictions refuse recovery.
    let bad = |records: &[PaxosRecord]| {
        let mut ctx = harness::context(P1);
        ctx.records = records.iter().map(ft_core::record::encode).collect();
        Harness::<PaxosCommit>::recover(&cfg(), ctx).is_err()
    };
    assert!(bad(&[PaxosRecord::Outcome {
        tx: tx(),
        outcome: Vote::Commit
    }]));
    assert!(bad(&[voted.clone(), voted.clone()]));
    assert!(bad(&[
        PaxosRecord::Voted {
            tx: tx(),
            coordinator: C,
            participants: parts(),
            value: Value::Aborted,
        },
        PaxosRecord::Outcome {
            tx: tx(),
            outcome: Vote::Commit
        }
    ]));
    assert!(bad(&[
        PaxosRecord::Accepted {
            tx: tx(),
            rm: P1,
            ballot: zero(),
            value: Value::Prepared
        },
        PaxosRecord::Accepted {
            tx: tx(),
            rm: P1,
            ballot: zero(),
            value: Value::Aborted
        }
    ]));
    assert!(bad(&[PaxosRecord::Decided {
        tx: tx(),
        outcome: Vote::Abort
    }]));
    let mut ctx = harness::context(P1);
    ctx.records = vec![Bytes::from_static(&[0, 1, 99])];
    assert!(Harness::<PaxosCommit>::recover(&cfg(), ctx).is_err());
    // A configuration naming an acceptor twice is refused.
    let mut c = cfg();
    c.acceptors.push(A1);
    assert!(Harness::<PaxosCommit>::recover(&c, harness::context(P1)).is_err());
}

#[test]
fn bad_input_is_ignored_and_counted() {
    let mut h = coordinator();
    let before = h.core.stats();
    // A 2b from a node that is not an acceptor; for a ballot not ours;
    // about a non-participant; about an unknown transaction.
    h.message(P1, p2b(P1, zero(), Value::Prepared));
    h.message(A1, p2b(P1, ballot(1, P2), Value::Prepared));
    h.message(A1, p2b(NodeId(9), zero(), Value::Prepared));
    h.message(
        A1,
        PaxosMessage::Phase2b {
            tx: TxId::new(&b"other"[..]).unwrap(),
            rm: P1,
            ballot: zero(),
            value: Value::Prepared,
        },
    );
    // A 1b while in ballot 0, and from a stranger.
    h.message(
        A1,
        PaxosMessage::Phase1b {
            tx: tx(),
            ballot: zero(),
            reports: vec![],
        },
    );
    h.message(
        NodeId(9),
        PaxosMessage::Phase1b {
            tx: tx(),
            ballot: zero(),
            reports: vec![],
        },
    );
    // An outcome from a stranger.
    h.message(
        NodeId(9),
        PaxosMessage::Outcome {
            tx: tx(),
            outcome: Vote::Commit,
        },
    );
    let d = h.drain();
    assert!(d.events.is_empty() && d.sends.is_empty() && d.persists.is_empty());
    let s = h.core.stats();
    assert_eq!(s.forged_sender - before.forged_sender, 3);
    assert_eq!(s.not_participant, 2);
    assert_eq!(s.unknown_tx, 1);
    assert_eq!(s.stale_ballot, 1);
    assert_eq!(h.core.decided(&tx()), None);
    // Begin twice, or with no participants, is refused.
    h.input(Input::Begin {
        tx: tx(),
        participants: parts(),
    });
    h.input(Input::Begin {
        tx: TxId::new(&b"t2"[..]).unwrap(),
        participants: vec![],
    });
    assert_eq!(h.core.stats().refused, 2);
    // RM: PREPARE from another coordinator, or not naming us; a vote never
    // asked for.
    let mut h = Harness::<PaxosCommit>::new(&cfg(), P1);
    h.message(
        C,
        PaxosMessage::Prepare {
            tx: tx(),
            participants: parts(),
        },
    );
    h.message(
        P2,
        PaxosMessage::Prepare {
            tx: tx(),
            participants: parts(),
        },
    );
    h.message(
        C,
        PaxosMessage::Prepare {
            tx: TxId::new(&b"t2"[..]).unwrap(),
            participants: vec![P2],
        },
    );
    h.input(Input::Voted {
        tx: TxId::new(&b"t3"[..]).unwrap(),
        vote: Vote::Commit,
    });
    let s = h.core.stats();
    assert_eq!(
        (s.wrong_coordinator, s.not_participant, s.unknown_tx),
        (1, 1, 1)
    );
    // Outcome COMMIT to an RM that has not voted: ignored.
    h.message(
        C,
        PaxosMessage::Outcome {
            tx: tx(),
            outcome: Vote::Commit,
        },
    );
    assert_eq!(h.core.stats().wrong_phase, 1);
    assert_eq!(h.core.rm_state(&tx()), Some(RmState::Init));
}

/// A few cores wired by hand: persists complete at once, messages wait
/// in a queue until a test delivers them (so it picks the interleaving).
struct Net {
    nodes: std::collections::BTreeMap<NodeId, Harness<PaxosCommit>>,
    queue: Vec<(NodeId, NodeId, PaxosMessage)>,
    events: Vec<(NodeId, Event)>,
}

impl Net {
    fn new(ids: &[NodeId]) -> Net {
        Net {
            nodes: ids
                .iter()
                .map(|&n| (n, Harness::<PaxosCommit>::new(&cfg(), n)))
                .collect(),
            queue: Vec::new(),
            events: Vec::new(),
        }
    }

    fn settle(&mut self, n: NodeId) {
        let h = self.nodes.get_mut(&n).unwrap();
        let mut d = h.drain();
        while !d.persists.is_empty() {
            let mut sends = std::mem::take(&mut d.sends);
            let mut events = std::mem::take(&mut d.events);
            for (t, _) in &d.persists {
                h.persisted(*t);
            }
            d = h.drain();
            sends.append(&mut d.sends);
            events.append(&mut d.events);
            d.sends = sends;
            d.events = events;
        }
        for (to, m) in d.sends {
            self.queue.push((n, to, m));
        }
        for e in d.events {
            self.events.push((n, e));
        }
    }

    fn input(&mut self, n: NodeId, i: Input) {
        self.nodes.get_mut(&n).unwrap().input(i);
        self.settle(n);
    }

    fn timer(&mut self, n: NodeId, t: PaxosTimer) {
        self.nodes.get_mut(&n).unwrap().timer(t);
        self.settle(n);
    }

    /// Delivers (and answers, and so on) every queued message `pick`
    /// accepts, until none is left; the others stay queued.
    fn deliver(&mut self, pick: impl Fn(NodeId, NodeId, &PaxosMessage) -> bool) {
        loop {
            let Some(k) = self.queue.iter().position(|(f, t, m)| pick(*f, *t, m)) else {
                return;
            };
            let (from, to, m) = self.queue.remove(k);
            self.nodes.get_mut(&to).unwrap().message(from, m);
            self.settle(to);
        }
    }

    fn told(&self, e: &Event) -> Vec<NodeId> {
        self.events
            .iter()
            .filter(|(_, x)| x == e)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Two leaders at once, and a ballot-0 vote arriving after a takeover: the
/// coordinator has P1 and P2 chosen Prepared in ballot 0 and waits for
/// P3, whose phase 2a messages are slow; P1 takes over, finds nothing
/// accepted for P3 at A1, A2, proposes Aborted there and aborts. Then
/// P3's ballot-0 Prepared reaches A2 and A3: A2 promised ballot 1 and
/// refuses it, so the coordinator (still in ballot 0, P1's outcome not
/// yet delivered) never sees P3 chosen Prepared and never commits.
#[test]
fn a_late_ballot_0_vote_cannot_overturn_a_takeover() {
    let mut net = Net::new(&[C, P1, P2, P3, A1, A2, A3]);
    net.input(
        C,
        Input::Begin {
            tx: tx(),
            participants: parts(),
        },
    );
    net.deliver(|_, _, m| matches!(m, PaxosMessage::Prepare { .. }));
    for p in parts() {
        net.input(
            p,
            Input::Voted {
                tx: tx(),
                vote: Vote::Commit,
            },
        );
    }
    // P1's and P2's votes are accepted everywhere; P3's are held back.
    net.deliver(|f, _, m| f != P3 && !matches!(m, PaxosMessage::Outcome { .. }));
    assert_eq!(net.nodes[&C].core.decided(&tx()), None);
    // P1 takes over (round 0 elects it); only A1 and A2 hear it.
    net.timer(P1, PaxosTimer::Takeover(tx()));
    net.deliver(|f, t, m| {
        f != P3 && !matches!(m, PaxosMessage::Outcome { .. }) && t != A3 && t != C
    });
    assert_eq!(net.told(&Event::Abort { tx: tx() }), vec![P1]);
    // Now P3's ballot-0 Prepared arrives at A2 and A3, and their 2b at C.
    net.deliver(|f, t, m| f == P3 && t != A1 && matches!(m, PaxosMessage::Phase2a { .. }));
    net.deliver(|f, t, m| {
        (f == A2 || f == A3) && t == C && matches!(m, PaxosMessage::Phase2b { .. })
    });
    assert!(
        net.nodes[&A2].core.stats().stale_ballot > 0,
        "A2 refused it"
    );
    assert_eq!(net.nodes[&C].core.decided(&tx()), None, "C did not commit");
    // Everything else, in any order: all abort.
    net.deliver(|_, t, _| t != C);
    net.deliver(|_, _, _| true);
    net.timer(C, PaxosTimer::Votes(tx()));
    net.deliver(|_, _, _| true);
    assert_eq!(net.nodes[&C].core.decided(&tx()), Some(Vote::Abort));
    assert!(net.told(&Event::Commit { tx: tx() }).is_empty());
    for p in parts() {
        assert_eq!(net.nodes[&p].core.rm_state(&tx()), Some(RmState::Aborted));
    }
}

/// Two-phase commit's read-only vote is a commit vote here (the instance
/// must still be chosen), and a heuristic decision is refused and counted
/// (Paxos Commit does not block while a majority of acceptors is up).
#[test]
fn a_read_only_vote_is_a_commit_vote_and_heuristics_are_refused() {
    let mut h = Harness::<PaxosCommit>::new(&cfg(), P1);
    h.message(
        C,
        PaxosMessage::Prepare {
            tx: tx(),
            participants: parts(),
        },
    )
    .drain();
    let d = h.input(Input::VotedReadOnly { tx: tx() }).drain();
    assert_eq!(
        d.records::<PaxosRecord>().unwrap(),
        vec![PaxosRecord::Voted {
            tx: tx(),
            coordinator: C,
            participants: parts(),
            value: Value::Prepared
        }]
    );
    h.persisted(d.persists[0].0);
    assert_eq!(h.drain().sends.len(), 3);
    let before = h.core.stats().wrong_phase;
    let d = h
        .input(Input::Heuristic {
            tx: tx(),
            outcome: Vote::Commit,
        })
        .drain();
    assert!(d.persists.is_empty() && d.sends.is_empty() && d.events.is_empty());
    assert_eq!(h.core.stats().wrong_phase, before + 1);
    assert_eq!(h.core.rm_state(&tx()), Some(RmState::Prepared));
}

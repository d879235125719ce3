//! Unit tests of the two-phase commit core with ft-core's harness: each
//! transition of the subject's state diagrams, persist before speak,
//! timeouts, cooperative termination, recovery from each state, and bad
//! input ignored and counted.

use bytes::Bytes;
use ft_commit::{
    CoordState, Event, Input, LogRecord, Message, PartState, PeerState, Timer, TwoPhase,
    TwoPhaseConfig, TxId, Vote,
};
use ft_core::harness::{self, Harness};
use ft_core::{Incarnation, NodeId, RecoveryContext};

const C: NodeId = NodeId(0);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);
const P3: NodeId = NodeId(3);

fn tx() -> TxId {
    TxId::new(&b"t1"[..]).unwrap()
}

fn cfg() -> TwoPhaseConfig {
    TwoPhaseConfig::default()
}

fn parts() -> Vec<NodeId> {
    vec![P1, P2, P3]
}

/// A node rebuilt from `records` in its second life.
fn recovered(node: NodeId, records: &[LogRecord]) -> Harness<TwoPhase> {
    let mut ctx: RecoveryContext = harness::context(node);
    ctx.incarnation = Incarnation(2);
    ctx.records = records.iter().map(ft_core::record::encode).collect();
    Harness::recover(&cfg(), ctx).unwrap()
}

/// A coordinator that has sent VOTE_REQUEST to P1..P3.
fn waiting() -> Harness<TwoPhase> {
    let mut h = Harness::<TwoPhase>::new(&cfg(), C);
    h.input(Input::Begin {
        tx: tx(),
        participants: parts(),
    });
    h.complete_persists();
    h.drain();
    h
}

/// Participant P1 in READY (its VOTE_COMMIT sent).
fn ready() -> Harness<TwoPhase> {
    let mut h = Harness::<TwoPhase>::new(&cfg(), P1);
    h.message(
        C,
        Message::VoteRequest {
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
    assert_eq!(h.core.participant_state(&tx()), Some(PartState::Ready));
    h
}

#[test]
fn coordinator_logs_begin_and_decision_before_sending_them() {
    let mut h = Harness::<TwoPhase>::new(&cfg(), C);
    let d = h
        .input(Input::Begin {
            tx: tx(),
            participants: parts(),
        })
        .drain();
    assert_eq!(
        d.records::<LogRecord>().unwrap(),
        vec![LogRecord::Begin {
            tx: tx(),
            participants: parts()
        }]
    );
    assert!(d.sends.is_empty(), "nothing sent before BEGIN is durable");
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState::Init));
    h.persisted(d.persists[0].0);
    let d = h.drain();
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| matches!(m, Message::VoteRequest { .. }))
    );
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState::Wait));

    for p in parts() {
        h.message(p, Message::VoteCommit { tx: tx() });
    }
    let d = h.drain();
    assert_eq!(
        d.records::<LogRecord>().unwrap(),
        vec![LogRecord::Decision {
            tx: tx(),
            outcome: Vote::Commit,
            participants: parts()
        }]
    );
    assert!(
        d.sends.is_empty(),
        "nothing sent before the decision is durable"
    );
    h.persisted(d.persists[0].0);
    let d = h.drain();
    assert_eq!(
        d.events,
        vec![Event::Decided {
            tx: tx(),
            outcome: Vote::Commit
        }]
    );
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| *m == Message::GlobalCommit { tx: tx() })
    );

    // Unacknowledged participants get it again.
    h.message(P1, Message::Ack { tx: tx() });
    let d = h.timer(Timer::Resend(tx())).drain();
    assert_eq!(d.sends.len(), 2);
    h.message(P2, Message::Ack { tx: tx() });
    let d = h.message(P3, Message::Ack { tx: tx() }).drain();
    assert_eq!(
        d.records::<LogRecord>().unwrap(),
        vec![LogRecord::End { tx: tx() }]
    );
    for (t, _) in &d.persists {
        h.persisted(*t);
    }
    assert_eq!(h.drain().events, vec![Event::Finished { tx: tx() }]);
    assert_eq!(h.core.stats().decisions_resent, 2);
}

#[test]
fn one_abort_vote_or_the_vote_timeout_aborts() {
    let mut h = waiting();
    h.message(P1, Message::VoteCommit { tx: tx() });
    h.message(P2, Message::VoteAbort { tx: tx() });
    h.complete_persists();
    let d = h.drain();
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| *m == Message::GlobalAbort { tx: tx() })
    );
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState::Abort));

    let mut h = waiting();
    h.message(P1, Message::VoteCommit { tx: tx() });
    h.timer(Timer::Votes(tx()));
    h.complete_persists();
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState::Abort));
    assert_eq!(h.core.stats().vote_timeouts, 1);
}

#[test]
fn participant_logs_ready_before_voting_commit_and_commits_on_global_commit() {
    let mut h = Harness::<TwoPhase>::new(&cfg(), P1);
    let d = h
        .message(
            C,
            Message::VoteRequest {
                tx: tx(),
                participants: parts(),
            },
        )
        .drain();
    assert_eq!(d.events, vec![Event::Prepare { tx: tx() }]);
    assert!(d.timers_set.iter().any(|(t, _)| *t == Timer::Prepare(tx())));
    let d = h
        .input(Input::Voted {
            tx: tx(),
            vote: Vote::Commit,
        })
        .drain();
    assert!(d.sends.is_empty(), "no VOTE_COMMIT before READY is durable");
    assert_eq!(
        d.records::<LogRecord>().unwrap(),
        vec![LogRecord::Ready {
            tx: tx(),
            coordinator: C,
            participants: parts()
        }]
    );
    h.persisted(d.persists[0].0);
    assert_eq!(h.drain().sends, vec![(C, Message::VoteCommit { tx: tx() })]);
    let d = h.message(C, Message::GlobalCommit { tx: tx() }).drain();
    assert!(d.sends.is_empty() && d.events.is_empty());
    for (t, _) in &d.persists {
        h.persisted(*t);
    }
    let d = h.drain();
    assert_eq!(d.events, vec![Event::Commit { tx: tx() }]);
    assert_eq!(d.sends, vec![(C, Message::Ack { tx: tx() })]);
    // A repeated GLOBAL_COMMIT: our ACK was lost; ACK again, nothing else.
    let d = h.message(C, Message::GlobalCommit { tx: tx() }).drain();
    assert_eq!(d.sends, vec![(C, Message::Ack { tx: tx() })]);
    assert!(d.persists.is_empty() && d.events.is_empty());
}

#[test]
fn participant_vote_abort_and_init_timeout_abort() {
    for by_timeout in [false, true] {
        let mut h = Harness::<TwoPhase>::new(&cfg(), P1);
        h.message(
            C,
            Message::VoteRequest {
                tx: tx(),
                participants: parts(),
            },
        );
        h.drain();
        if by_timeout {
            h.timer(Timer::Prepare(tx()));
        } else {
            h.input(Input::Voted {
                tx: tx(),
                vote: Vote::Abort,
            });
        }
        let d = h.drain();
        assert!(d.sends.is_empty());
        assert!(matches!(
            d.records::<LogRecord>().unwrap()[..],
            [LogRecord::Abort { .. }]
        ));
        for (t, _) in &d.persists {
            h.persisted(*t);
        }
        let d = h.drain();
        assert_eq!(d.events, vec![Event::Abort { tx: tx() }]);
        assert_eq!(d.sends, vec![(C, Message::VoteAbort { tx: tx() })]);
        // A late vote is ignored and counted.
        h.input(Input::Voted {
            tx: tx(),
            vote: Vote::Commit,
        });
        assert!(h.drain().is_empty());
        assert_eq!(h.core.stats().wrong_phase, 1);
        assert_eq!(h.core.stats().prepare_timeouts, u64::from(by_timeout));
    }
}

#[test]
fn ready_participant_asks_the_others_and_blocks_when_all_are_ready() {
    let mut h = ready();
    let d = h.timer(Timer::Decision(tx())).drain();
    let asked: Vec<NodeId> = d.sends.iter().map(|(n, _)| *n).collect();
    assert_eq!(asked, vec![C, P2, P3]);
    assert!(d.sends.iter().all(|(_, m)| *m
        == Message::DecisionRequest {
            tx: tx(),
            coordinator: C
        }));
    for p in [P2, P3] {
        h.message(
            p,
            Message::State {
                tx: tx(),
                state: PeerState::Ready,
            },
        );
    }
    // Next round: all others READY → blocked, told once, keeps asking.
    let d = h.timer(Timer::Decision(tx())).drain();
    assert_eq!(d.sends.len(), 3);
    assert_eq!(
        d.events,
        vec![Event::Blocked {
            tx: tx(),
            coordinator: C
        }]
    );
    assert!(h.core.is_blocked(&tx()));
    let d = h.timer(Timer::Decision(tx())).drain();
    assert_eq!(d.sends.len(), 3);
    assert!(d.events.is_empty());
    // One participant learned COMMIT: commit.
    h.message(
        P3,
        Message::State {
            tx: tx(),
            state: PeerState::Commit,
        },
    );
    h.complete_persists();
    assert_eq!(h.drain().events, vec![Event::Commit { tx: tx() }]);
    assert_eq!(h.core.stats().terminated_cooperatively, 1);
}

#[test]
fn a_ready_participant_that_reaches_only_ready_peers_is_told_it_is_blocked() {
    // P2 answers READY, P3 and the coordinator never answer (crashed or
    // partitioned away): after a whole round without a decision the
    // application is told, once, and the participant keeps asking.
    let mut h = ready();
    let d = h.timer(Timer::Decision(tx())).drain();
    assert!(d.events.is_empty(), "not before a round has gone by");
    h.message(
        P2,
        Message::State {
            tx: tx(),
            state: PeerState::Ready,
        },
    );
    let d = h.timer(Timer::Decision(tx())).drain();
    assert_eq!(
        d.events,
        vec![Event::Blocked {
            tx: tx(),
            coordinator: C
        }]
    );
    assert_eq!(d.sends.len(), 3);
    let d = h.timer(Timer::Decision(tx())).drain();
    assert!(d.events.is_empty(), "told once");
    assert_eq!(d.sends.len(), 3);
    assert!(h.core.is_blocked(&tx()));
}

#[test]
fn an_init_or_abort_answer_aborts_a_ready_participant() {
    for state in [PeerState::Init, PeerState::Abort] {
        let mut h = ready();
        h.timer(Timer::Decision(tx()));
        h.message(P2, Message::State { tx: tx(), state });
        h.complete_persists();
        assert_eq!(h.drain().events, vec![Event::Abort { tx: tx() }]);
        assert_eq!(h.core.participant_state(&tx()), Some(PartState::Abort));
    }
}

#[test]
fn a_participant_asked_in_init_aborts_before_answering_init() {
    // Asked to prepare, not voted yet.
    let mut h = Harness::<TwoPhase>::new(&cfg(), P2);
    h.message(
        C,
        Message::VoteRequest {
            tx: tx(),
            participants: parts(),
        },
    );
    h.drain();
    let d = h
        .message(
            P1,
            Message::DecisionRequest {
                tx: tx(),
                coordinator: C,
            },
        )
        .drain();
    assert!(d.sends.is_empty(), "answered INIT before ABORT is durable");
    assert!(d.events.is_empty(), "aborted before ABORT is durable");
    assert!(matches!(
        d.records::<LogRecord>().unwrap()[..],
        [LogRecord::Abort { .. }]
    ));
    for (t, _) in &d.persists {
        h.persisted(*t);
    }
    let d = h.drain();
    assert_eq!(d.events, vec![Event::Abort { tx: tx() }]);
    assert_eq!(
        d.sends,
        vec![(
            P1,
            Message::State {
                tx: tx(),
                state: PeerState::Init
            }
        )]
    );
    // Its application's vote comes too late; the coordinator's repeated
    // VOTE_REQUEST gets VOTE_ABORT.
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Commit,
    });
    let d = h
        .message(
            C,
            Message::VoteRequest {
                tx: tx(),
                participants: parts(),
            },
        )
        .drain();
    assert_eq!(d.sends, vec![(C, Message::VoteAbort { tx: tx() })]);

    // Never heard of the transaction: the same.
    let mut h = Harness::<TwoPhase>::new(&cfg(), P3);
    h.message(
        P1,
        Message::DecisionRequest {
            tx: tx(),
            coordinator: C,
        },
    );
    h.complete_persists();
    let d = h.drain();
    assert!(d.events.is_empty(), "no abort for work never prepared here");
    assert_eq!(d.sends.len(), 1);
    assert_eq!(h.core.participant_state(&tx()), Some(PartState::Abort));
}

#[test]
fn coordinator_answers_decision_requests_and_aborts_unknown_transactions() {
    let mut h = waiting();
    let ask = Message::DecisionRequest {
        tx: tx(),
        coordinator: C,
    };
    // Undecided: no answer.
    assert!(h.message(P1, ask.clone()).drain().sends.is_empty());
    h.message(P1, Message::VoteAbort { tx: tx() });
    h.complete_persists();
    h.drain();
    assert_eq!(
        h.message(P1, ask.clone()).drain().sends,
        vec![(
            P1,
            Message::State {
                tx: tx(),
                state: PeerState::Abort
            }
        )]
    );
    // A transaction it never began (its BEGIN lost): aborted, logged, then
    // answered, and a later Begin of that id refused.
    let other = TxId::new(&b"t2"[..]).unwrap();
    let d = h
        .message(
            P2,
            Message::DecisionRequest {
                tx: other.clone(),
                coordinator: C,
            },
        )
        .drain();
    assert!(d.sends.is_empty() && d.persists.len() == 1);
    for (t, _) in &d.persists {
        h.persisted(*t);
    }
    assert_eq!(h.drain().sends.len(), 1);
    assert_eq!(h.core.coordinator_state(&other), Some(CoordState::Abort));
    let d = h
        .input(Input::Begin {
            tx: other.clone(),
            participants: parts(),
        })
        .drain();
    assert!(matches!(d.events[..], [Event::Refused { .. }]));
}

#[test]
fn recovery_rebuilds_each_state_and_acts_on_it() {
    let begin = LogRecord::Begin {
        tx: tx(),
        participants: parts(),
    };
    // Coordinator in WAIT: aborts, logging it first.
    let mut h = recovered(C, std::slice::from_ref(&begin));
    let d = h.drain();
    assert!(d.sends.is_empty());
    assert!(matches!(
        d.records::<LogRecord>().unwrap()[..],
        [LogRecord::Decision {
            outcome: Vote::Abort,
            ..
        }]
    ));
    for (t, _) in &d.persists {
        h.persisted(*t);
    }
    assert_eq!(h.drain().sends.len(), 3);

    // Coordinator that decided: resends its logged decision.
    let decided = LogRecord::Decision {
        tx: tx(),
        outcome: Vote::Commit,
        participants: parts(),
    };
    let mut h = recovered(C, &[begin.clone(), decided.clone()]);
    let d = h.drain();
    assert!(d.persists.is_empty());
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| *m == Message::GlobalCommit { tx: tx() })
    );
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState::Commit));
    assert_eq!(
        d.events,
        vec![Event::Decided {
            tx: tx(),
            outcome: Vote::Commit
        }]
    );
    // ...unless every participant had acknowledged it.
    let mut h = recovered(C, &[begin, decided, LogRecord::End { tx: tx() }]);
    assert!(h.drain().is_empty());

    // Participant in READY: asks at once.
    let ready = LogRecord::Ready {
        tx: tx(),
        coordinator: C,
        participants: parts(),
    };
    let mut h = recovered(P1, std::slice::from_ref(&ready));
    let d = h.drain();
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| matches!(m, Message::DecisionRequest { .. }))
    );
    // The coordinator's answer ends it.
    h.message(C, Message::GlobalCommit { tx: tx() });
    h.complete_persists();
    assert_eq!(h.drain().events, vec![Event::Commit { tx: tx() }]);

    // COMMIT and ABORT are entered again, idempotently.
    let mut h = recovered(
        P1,
        &[
            ready,
            LogRecord::Commit {
                tx: tx(),
                coordinator: C,
            },
        ],
    );
    assert_eq!(h.drain().events, vec![Event::Commit { tx: tx() }]);
    let mut h = recovered(
        P1,
        &[LogRecord::Abort {
            tx: tx(),
            coordinator: C,
        }],
    );
    assert_eq!(h.drain().events, vec![Event::Abort { tx: tx() }]);
}

#[test]
fn contradictory_or_unreadable_records_refuse_recovery() {
    let mut ctx = harness::context(P1);
    ctx.records = vec![ft_core::record::encode(&LogRecord::Commit {
        tx: tx(),
        coordinator: C,
    })];
    assert!(Harness::<TwoPhase>::recover(&cfg(), ctx).is_err());
    let mut ctx = harness::context(P1);
    ctx.records = vec![
        ft_core::record::encode(&LogRecord::Abort {
            tx: tx(),
            coordinator: C,
        }),
        ft_core::record::encode(&LogRecord::Commit {
            tx: tx(),
            coordinator: C,
        }),
    ];
    assert!(Harness::<TwoPhase>::recover(&cfg(), ctx).is_err());
    let mut ctx = harness::context(P1);
    ctx.records = vec![Bytes::from_static(&[0, 1, 99])];
    assert!(Harness::<TwoPhase>::recover(&cfg(), ctx).is_err());
}

#[test]
fn bad_input_is_ignored_and_counted() {
    let mut h = waiting();
    let other = TxId::new(&b"zz"[..]).unwrap();
    // Votes on an unknown transaction, from a non-participant, twice.
    h.message(P1, Message::VoteCommit { tx: other.clone() });
    h.message(NodeId(9), Message::VoteCommit { tx: tx() });
    h.message(P1, Message::VoteCommit { tx: tx() });
    h.message(P1, Message::VoteCommit { tx: tx() });
    // An ACK in WAIT.
    h.message(P2, Message::Ack { tx: tx() });
    // A bad Begin.
    h.input(Input::Begin {
        tx: other.clone(),
        participants: vec![P1, P1],
    });
    let d = h.drain();
    assert!(d.sends.is_empty() && d.persists.is_empty());
    let s = h.core.stats();
    assert_eq!(
        (
            s.unknown_tx,
            s.not_participant,
            s.duplicates,
            s.wrong_phase,
            s.refused
        ),
        (1, 1, 1, 1, 1)
    );

    let mut h = ready();
    // A decision from a node that is not the coordinator.
    h.message(P2, Message::GlobalCommit { tx: tx() });
    // A VOTE_REQUEST for it from another coordinator.
    h.message(
        P3,
        Message::VoteRequest {
            tx: tx(),
            participants: parts(),
        },
    );
    // A VOTE_REQUEST that does not name us.
    h.message(
        C,
        Message::VoteRequest {
            tx: other.clone(),
            participants: vec![P2],
        },
    );
    // GLOBAL_COMMIT for a transaction never prepared here.
    h.message(C, Message::GlobalCommit { tx: other.clone() });
    // A vote for something never asked.
    h.input(Input::Voted {
        tx: other,
        vote: Vote::Commit,
    });
    let d = h.drain();
    assert!(d.sends.is_empty() && d.persists.is_empty() && d.events.is_empty());
    let s = h.core.stats();
    assert_eq!(
        (s.wrong_coordinator, s.not_participant, s.unknown_tx),
        (2, 1, 2)
    );
    assert_eq!(h.core.participant_state(&tx()), Some(PartState::Ready));
}

#[test]
fn a_joined_participant_aborts_if_no_vote_request_comes() {
    let mut h = Harness::<TwoPhase>::new(&cfg(), P1);
    let d = h
        .input(Input::Join {
            tx: tx(),
            coordinator: C,
        })
        .drain();
    assert!(d.timers_set.iter().any(|(t, _)| *t == Timer::Prepare(tx())));
    assert!(d.sends.is_empty() && d.events.is_empty());
    assert_eq!(h.core.participant_state(&tx()), Some(PartState::Init));
    let d = h.timer(Timer::Prepare(tx())).drain();
    assert!(d.sends.is_empty());
    h.persisted(d.persists[0].0);
    let d = h.drain();
    assert_eq!(d.events, vec![Event::Abort { tx: tx() }]);
    assert_eq!(d.sends, vec![(C, Message::VoteAbort { tx: tx() })]);

    // Joined, then asked: prepares as usual.
    let mut h = Harness::<TwoPhase>::new(&cfg(), P1);
    h.input(Input::Join {
        tx: tx(),
        coordinator: C,
    });
    let d = h
        .message(
            C,
            Message::VoteRequest {
                tx: tx(),
                participants: parts(),
            },
        )
        .drain();
    assert_eq!(d.events, vec![Event::Prepare { tx: tx() }]);
    // A second Join, and a VOTE_REQUEST from another coordinator, are
    // ignored and counted.
    h.input(Input::Join {
        tx: tx(),
        coordinator: C,
    });
    h.message(
        P2,
        Message::VoteRequest {
            tx: tx(),
            participants: parts(),
        },
    );
    assert!(h.drain().is_empty());
    let s = h.core.stats();
    assert_eq!((s.wrong_phase, s.wrong_coordinator), (1, 1));
}

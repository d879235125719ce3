//! Unit tests of the three-phase commit core with ft-core's harness: each
//! transition, persist before speak, the termination rules and the
//! election, recovery.

use std::time::Duration;

use ft_commit::{
    CoordState3, Event, Input, Message3, PartState3, Record3, ThreePhase, ThreePhaseConfig,
    ThreePhaseConfigError, Timer3, TxId, Vote,
};
use ft_core::harness::{self, Harness};
use ft_core::wire::Wire;
use ft_core::{Incarnation, NodeId, RecoveryContext};

const C: NodeId = NodeId(0);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);
const P3: NodeId = NodeId(3);

fn tx() -> TxId {
    TxId::new(&b"t1"[..]).unwrap()
}

fn cfg() -> ThreePhaseConfig {
    ThreePhaseConfig::default()
}

fn parts() -> Vec<NodeId> {
    vec![P1, P2, P3]
}

fn recovered(
    node: NodeId,
    records: &[Record3],
) -> Result<Harness<ThreePhase>, ft_core::RecoveryError> {
    let mut ctx: RecoveryContext = harness::context(node);
    ctx.incarnation = Incarnation(2);
    ctx.records = records.iter().map(ft_core::record::encode).collect();
    Harness::recover(&cfg(), ctx)
}

/// Durable: completes the persists asked for, checking nothing was sent
/// before; returns what followed.
fn durable(h: &mut Harness<ThreePhase>) -> ft_core::harness::Drained<ThreePhase> {
    let before = h.drain();
    assert!(!before.persists.is_empty(), "a record is logged");
    assert!(
        before.sends.is_empty(),
        "nothing sent before the record is durable"
    );
    for (token, _) in &before.persists {
        h.persisted(*token);
    }
    h.complete_persists();
    h.drain()
}

fn part_state(h: &Harness<ThreePhase>) -> PartState3 {
    h.core.participant_state(&tx()).unwrap()
}

/// A coordinator that sent VOTE_REQUEST.
fn waiting() -> Harness<ThreePhase> {
    let mut h = Harness::<ThreePhase>::new(&cfg(), C);
    h.input(Input::Begin {
        tx: tx(),
        participants: parts(),
    });
    let d = durable(&mut h);
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| matches!(m, Message3::VoteRequest { .. }))
    );
    h
}

/// Participant `me` in READY.
fn ready(me: NodeId) -> Harness<ThreePhase> {
    let mut h = Harness::<ThreePhase>::new(&cfg(), me);
    h.message(
        C,
        Message3::VoteRequest {
            tx: tx(),
            participants: parts(),
        },
    );
    let d = h.drain();
    assert_eq!(d.events, vec![Event::Prepare { tx: tx() }]);
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Commit,
    });
    let d = durable(&mut h);
    assert_eq!(d.sent_to(C), vec![&Message3::VoteCommit { tx: tx() }]);
    assert_eq!(part_state(&h), PartState3::Ready);
    h
}

#[test]
fn coordinator_commits_through_precommit() {
    let mut h = waiting();
    for p in [P1, P2] {
        h.message(p, Message3::VoteCommit { tx: tx() });
    }
    assert!(
        h.drain().persists.is_empty(),
        "no decision before every vote"
    );
    h.message(P3, Message3::VoteCommit { tx: tx() });
    let d = durable(&mut h);
    assert_eq!(
        h.core.coordinator_state(&tx()),
        Some(CoordState3::PreCommit)
    );
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| *m == Message3::PrepareCommit { tx: tx() })
    );
    for p in [P1, P2] {
        h.message(p, Message3::ReadyCommit { tx: tx() });
    }
    assert!(h.drain().persists.is_empty());
    h.message(P3, Message3::ReadyCommit { tx: tx() });
    let d = durable(&mut h);
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState3::Commit));
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| *m == Message3::GlobalCommit { tx: tx() })
    );
    assert_eq!(d.sends.len(), 3);
    assert!(d.events.contains(&Event::Decided {
        tx: tx(),
        outcome: Vote::Commit
    }));
}

#[test]
fn coordinator_aborts_on_a_vote_abort_or_the_vote_timeout() {
    let mut h = waiting();
    h.message(P1, Message3::VoteCommit { tx: tx() });
    h.message(P2, Message3::VoteAbort { tx: tx() });
    let d = durable(&mut h);
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState3::Abort));
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| *m == Message3::GlobalAbort { tx: tx() })
    );

    let mut h = waiting();
    h.timer(Timer3::Votes(tx()));
    durable(&mut h);
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState3::Abort));
}

#[test]
fn coordinator_in_precommit_does_not_commit_on_a_timeout() {
    let mut h = waiting();
    for p in parts() {
        h.message(p, Message3::VoteCommit { tx: tx() });
    }
    durable(&mut h);
    h.timer(Timer3::Votes(tx()));
    h.timer(Timer3::Resend(tx()));
    let d = h.drain();
    assert!(d.persists.is_empty());
    assert_eq!(d.sends.len(), 3, "PREPARE_COMMIT resent");
    // A participant reports termination's outcome.
    h.message(
        P2,
        Message3::State {
            tx: tx(),
            state: PartState3::Abort,
        },
    );
    durable(&mut h);
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState3::Abort));
}

#[test]
fn participant_ready_precommit_commit() {
    let mut h = ready(P1);
    h.message(C, Message3::PrepareCommit { tx: tx() });
    let d = durable(&mut h);
    assert_eq!(part_state(&h), PartState3::PreCommit);
    assert_eq!(d.sent_to(C), vec![&Message3::ReadyCommit { tx: tx() }]);
    h.message(C, Message3::GlobalCommit { tx: tx() });
    let d = durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Commit);
    assert_eq!(d.events, vec![Event::Commit { tx: tx() }]);
}

#[test]
fn participant_aborts_by_vote_timeout_or_global_abort() {
    let mut h = Harness::<ThreePhase>::new(&cfg(), P1);
    h.message(
        C,
        Message3::VoteRequest {
            tx: tx(),
            participants: parts(),
        },
    );
    h.drain();
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Abort,
    });
    let d = durable(&mut h);
    assert_eq!(d.sent_to(C), vec![&Message3::VoteAbort { tx: tx() }]);
    assert_eq!(part_state(&h), PartState3::Abort);

    let mut h = Harness::<ThreePhase>::new(&cfg(), P1);
    h.message(
        C,
        Message3::VoteRequest {
            tx: tx(),
            participants: parts(),
        },
    );
    h.drain();
    h.timer(Timer3::Prepare(tx()));
    let d = durable(&mut h);
    assert_eq!(d.sent_to(C), vec![&Message3::VoteAbort { tx: tx() }]);

    let mut h = ready(P1);
    h.message(C, Message3::GlobalAbort { tx: tx() });
    let d = durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Abort);
    assert_eq!(d.events, vec![Event::Abort { tx: tx() }]);
}

/// P1 (lowest id) times out in READY and, elected, asks P2 and P3, and
/// the original coordinator.
fn terminating() -> Harness<ThreePhase> {
    let mut h = ready(P1);
    h.timer(Timer3::Decision(tx()));
    let d = h.drain();
    assert!(h.core.is_terminating(&tx()));
    let asked: Vec<NodeId> = d.sends.iter().map(|(n, _)| *n).collect();
    assert_eq!(asked, vec![P2, P3, C]);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| matches!(m, Message3::StateRequest { coordinator: C, .. }))
    );
    h
}

fn globals(d: &ft_core::harness::Drained<ThreePhase>) -> Vec<(NodeId, Message3)> {
    d.sends.clone()
}

#[test]
fn termination_any_abort_aborts() {
    let mut h = terminating();
    h.message(
        P2,
        Message3::State {
            tx: tx(),
            state: PartState3::Ready,
        },
    );
    h.message(
        P3,
        Message3::State {
            tx: tx(),
            state: PartState3::Abort,
        },
    );
    let d = durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Abort);
    assert_eq!(
        globals(&d),
        vec![
            (P2, Message3::GlobalAbort { tx: tx() }),
            (P3, Message3::GlobalAbort { tx: tx() })
        ]
    );
}

#[test]
fn termination_any_commit_commits() {
    let mut h = terminating();
    h.message(
        P3,
        Message3::State {
            tx: tx(),
            state: PartState3::Commit,
        },
    );
    let d = durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Commit);
    assert_eq!(
        globals(&d),
        vec![
            (P2, Message3::GlobalCommit { tx: tx() }),
            (P3, Message3::GlobalCommit { tx: tx() })
        ]
    );
    assert_eq!(h.core.stats().terminated_cooperatively, 1);
}

#[test]
fn termination_any_precommit_precommits_then_commits() {
    let mut h = terminating();
    h.message(
        P2,
        Message3::State {
            tx: tx(),
            state: PartState3::PreCommit,
        },
    );
    h.message(
        P3,
        Message3::State {
            tx: tx(),
            state: PartState3::Ready,
        },
    );
    assert!(h.drain().persists.is_empty(), "waits for the collect timer");
    h.timer(Timer3::Collect(tx()));
    let d = durable(&mut h);
    assert_eq!(part_state(&h), PartState3::PreCommit);
    assert_eq!(
        globals(&d),
        vec![
            (P2, Message3::PrepareCommit { tx: tx() }),
            (P3, Message3::PrepareCommit { tx: tx() })
        ]
    );
    h.message(P2, Message3::ReadyCommit { tx: tx() });
    assert!(
        h.drain().persists.is_empty(),
        "waits for every READY_COMMIT"
    );
    h.message(P3, Message3::ReadyCommit { tx: tx() });
    let d = durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Commit);
    assert_eq!(
        globals(&d),
        vec![
            (P2, Message3::GlobalCommit { tx: tx() }),
            (P3, Message3::GlobalCommit { tx: tx() })
        ]
    );
}

#[test]
fn termination_own_precommit_with_a_crashed_peer_commits() {
    let mut h = ready(P1);
    h.message(C, Message3::PrepareCommit { tx: tx() });
    durable(&mut h);
    h.timer(Timer3::Decision(tx()));
    h.drain();
    // P3 is down; P2 answers READY.
    h.message(
        P2,
        Message3::State {
            tx: tx(),
            state: PartState3::Ready,
        },
    );
    h.timer(Timer3::Collect(tx()));
    let d = h.drain();
    assert!(d.persists.is_empty(), "already PRECOMMIT");
    assert_eq!(
        globals(&d),
        vec![(P2, Message3::PrepareCommit { tx: tx() })]
    );
    h.message(P2, Message3::ReadyCommit { tx: tx() });
    durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Commit);
}

#[test]
fn termination_all_ready_or_init_aborts() {
    let mut h = terminating();
    h.message(
        P2,
        Message3::State {
            tx: tx(),
            state: PartState3::Ready,
        },
    );
    h.message(
        P3,
        Message3::State {
            tx: tx(),
            state: PartState3::Init,
        },
    );
    h.timer(Timer3::Collect(tx()));
    durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Abort);

    // Only P2 reached (P3 crashed), READY: abort.
    let mut h = terminating();
    h.message(
        P2,
        Message3::State {
            tx: tx(),
            state: PartState3::Ready,
        },
    );
    h.timer(Timer3::Collect(tx()));
    durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Abort);
}

#[test]
fn election_lowest_first_then_the_next_one() {
    let mut h = ready(P2);
    h.timer(Timer3::Decision(tx()));
    let d = h.drain();
    assert!(d.sends.is_empty(), "round 0 elects P1");
    assert!(!h.core.is_terminating(&tx()));
    assert!(
        d.timers_set
            .iter()
            .any(|(t, _)| *t == Timer3::Decision(tx()))
    );
    h.timer(Timer3::Decision(tx()));
    let d = h.drain();
    assert!(h.core.is_terminating(&tx()), "round 1 elects P2");
    let asked: Vec<NodeId> = d.sends.iter().map(|(n, _)| *n).collect();
    assert_eq!(asked, vec![P1, P3, C]);
}

#[test]
fn asked_in_init_or_unknown_aborts_before_answering() {
    let mut h = Harness::<ThreePhase>::new(&cfg(), P3);
    h.message(
        C,
        Message3::VoteRequest {
            tx: tx(),
            participants: parts(),
        },
    );
    h.drain();
    h.message(
        P1,
        Message3::StateRequest {
            tx: tx(),
            coordinator: C,
        },
    );
    let d = durable(&mut h);
    assert_eq!(
        d.sent_to(P1),
        vec![&Message3::State {
            tx: tx(),
            state: PartState3::Init
        }]
    );
    assert_eq!(part_state(&h), PartState3::Abort);
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Commit,
    });
    assert!(h.drain().persists.is_empty(), "can no longer vote commit");

    let mut h = Harness::<ThreePhase>::new(&cfg(), P3);
    h.message(
        P1,
        Message3::StateRequest {
            tx: tx(),
            coordinator: C,
        },
    );
    let d = durable(&mut h);
    assert_eq!(
        d.sent_to(P1),
        vec![&Message3::State {
            tx: tx(),
            state: PartState3::Init
        }]
    );

    // READY answers READY.
    let mut h = ready(P3);
    h.message(
        P1,
        Message3::StateRequest {
            tx: tx(),
            coordinator: C,
        },
    );
    let d = h.drain();
    assert_eq!(
        d.sent_to(P1),
        vec![&Message3::State {
            tx: tx(),
            state: PartState3::Ready
        }]
    );
}

fn coord(state: CoordState3) -> Record3 {
    Record3::Coord {
        tx: tx(),
        state,
        participants: parts(),
    }
}

fn part(state: PartState3) -> Record3 {
    Record3::Part {
        tx: tx(),
        state,
        coordinator: C,
        participants: parts(),
    }
}

#[test]
fn recovery_from_each_state() {
    // Coordinator in WAIT aborts.
    let mut h = recovered(C, &[coord(CoordState3::Wait)]).unwrap();
    let d = durable(&mut h);
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState3::Abort));
    assert_eq!(d.sends.len(), 3);
    // In PRECOMMIT: asks (STATE_REQUEST), never pushes PREPARE_COMMIT
    // (participants may have aborted by termination), takes the outcome.
    let mut h = recovered(
        C,
        &[coord(CoordState3::Wait), coord(CoordState3::PreCommit)],
    )
    .unwrap();
    let d = h.drain();
    assert!(d.persists.is_empty());
    assert_eq!(d.sends.len(), 3);
    assert!(
        d.sends
            .iter()
            .all(|(_, m)| matches!(m, Message3::StateRequest { .. }))
    );
    h.message(P1, Message3::ReadyCommit { tx: tx() });
    h.message(
        P2,
        Message3::State {
            tx: tx(),
            state: PartState3::PreCommit,
        },
    );
    assert!(h.drain().persists.is_empty());
    h.message(
        P3,
        Message3::State {
            tx: tx(),
            state: PartState3::Commit,
        },
    );
    durable(&mut h);
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState3::Commit));
    // Decided: told again and resent.
    let mut h = recovered(
        C,
        &[
            coord(CoordState3::Wait),
            coord(CoordState3::PreCommit),
            coord(CoordState3::Commit),
        ],
    )
    .unwrap();
    let d = h.drain();
    assert_eq!(
        d.events,
        vec![Event::Decided {
            tx: tx(),
            outcome: Vote::Commit
        }]
    );
    // Participant in READY / PRECOMMIT: termination after its timeout.
    for recs in [
        vec![part(PartState3::Ready)],
        vec![part(PartState3::Ready), part(PartState3::PreCommit)],
    ] {
        let mut h = recovered(P1, &recs).unwrap();
        let d = h.drain();
        assert!(
            d.timers_set
                .iter()
                .any(|(t, _)| *t == Timer3::Decision(tx()))
        );
        h.timer(Timer3::Decision(tx()));
        assert!(h.core.is_terminating(&tx()));
    }
    // COMMIT told again.
    let mut h = recovered(P1, &[part(PartState3::Ready), part(PartState3::Commit)]).unwrap();
    assert_eq!(h.drain().events, vec![Event::Commit { tx: tx() }]);
}

#[test]
fn contradictory_records_refuse_recovery() {
    assert!(
        recovered(P1, &[part(PartState3::Commit)]).is_err(),
        "COMMIT without READY"
    );
    assert!(
        recovered(
            P1,
            &[
                part(PartState3::Ready),
                part(PartState3::Abort),
                part(PartState3::Commit)
            ]
        )
        .is_err()
    );
    assert!(
        recovered(C, &[coord(CoordState3::Wait), coord(CoordState3::Commit)]).is_err(),
        "COMMIT without PRECOMMIT"
    );
}

#[test]
fn wire_round_trips() {
    let msgs = vec![
        Message3::VoteRequest {
            tx: tx(),
            participants: parts(),
        },
        Message3::VoteCommit { tx: tx() },
        Message3::VoteAbort { tx: tx() },
        Message3::PrepareCommit { tx: tx() },
        Message3::ReadyCommit { tx: tx() },
        Message3::GlobalCommit { tx: tx() },
        Message3::GlobalAbort { tx: tx() },
        Message3::StateRequest {
            tx: tx(),
            coordinator: C,
        },
        Message3::State {
            tx: tx(),
            state: PartState3::PreCommit,
        },
    ];
    for m in msgs {
        let mut buf = bytes::BytesMut::new();
        m.encode(&mut buf);
        let mut b = buf.freeze();
        assert_eq!(Message3::decode(&mut b).unwrap(), m);
        assert!(b.is_empty());
    }
    for r in [coord(CoordState3::PreCommit), part(PartState3::Ready)] {
        assert_eq!(
            ft_core::record::decode::<Record3>(ft_core::record::encode(&r)).unwrap(),
            r
        );
    }
}

#[test]
fn default_election_round_outlasts_the_vote_timeout() {
    // A live coordinator must have decided or logged PRECOMMIT before a
    // participant starts termination (the sweep's seed 1290 fails with a
    // 300 ms round).
    let c = cfg();
    assert!(c.decision_timeout > c.vote_timeout + c.retry);
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn a_config_breaking_the_timing_relations_is_refused() {
    let bad = [
        (
            ThreePhaseConfig {
                decision_timeout: Duration::from_millis(500),
                ..cfg()
            },
            ThreePhaseConfigError::ElectionRoundTooShort {
                decision_timeout: Duration::from_millis(500),
                vote_timeout: Duration::from_millis(500),
            },
        ),
        (
            ThreePhaseConfig {
                collect: Duration::from_millis(700),
                ..cfg()
            },
            ThreePhaseConfigError::CollectTooLong {
                collect: Duration::from_millis(700),
                decision_timeout: Duration::from_millis(700),
            },
        ),
        (
            ThreePhaseConfig {
                retry: Duration::ZERO,
                ..cfg()
            },
            ThreePhaseConfigError::ZeroRetry,
        ),
    ];
    for (config, why) in bad {
        assert_eq!(config.validate(), Err(why.clone()));
        // No node runs with it: recovery refuses it, naming the reason.
        match Harness::<ThreePhase>::recover(&config, harness::context(P1)) {
            Err(ft_core::RecoveryError::Inconsistent(s)) => {
                assert!(s.contains(&why.to_string()), "{s}")
            }
            other => panic!("{config:?} accepted: {:?}", other.map(|_| ())),
        }
    }
    // Just inside each relation is fine.
    let ok = ThreePhaseConfig {
        decision_timeout: Duration::from_millis(501),
        collect: Duration::from_millis(500),
        retry: Duration::from_nanos(1),
        ..cfg()
    };
    assert_eq!(ok.validate(), Ok(()));
    assert!(Harness::<ThreePhase>::recover(&ok, harness::context(P1)).is_ok());
}

/// The original coordinator `C`, recovered in `state` (PRECOMMIT, COMMIT
/// or ABORT) for `tx()`; C is not a participant.
fn coordinator_in(state: CoordState3) -> Harness<ThreePhase> {
    let path: &[CoordState3] = match state {
        CoordState3::Commit => &[
            CoordState3::Wait,
            CoordState3::PreCommit,
            CoordState3::Commit,
        ],
        CoordState3::PreCommit => &[CoordState3::Wait, CoordState3::PreCommit],
        _ => &[CoordState3::Wait, CoordState3::Abort],
    };
    let records: Vec<Record3> = path.iter().map(|&s| coord(s)).collect();
    let mut h = recovered(C, &records).unwrap();
    h.drain();
    h
}

#[test]
fn the_original_coordinator_answers_termination_with_what_it_decided() {
    let ask = Message3::StateRequest {
        tx: tx(),
        coordinator: C,
    };
    // Decided ABORT (or COMMIT): it says so, and creates no participant
    // entry (which would log an ABORT of its own).
    for (state, answer) in [
        (CoordState3::Abort, PartState3::Abort),
        (CoordState3::Commit, PartState3::Commit),
    ] {
        let mut h = coordinator_in(state);
        h.message(P1, ask.clone());
        let d = h.drain();
        assert!(d.persists.is_empty());
        assert_eq!(
            d.sends,
            vec![(
                P1,
                Message3::State {
                    tx: tx(),
                    state: answer
                }
            )]
        );
        assert_eq!(h.core.participant_state(&tx()), None);
    }
    // Still in WAIT: it aborts first, durably, and only then tells
    // everyone (so it can no longer log PRECOMMIT).
    let mut h = waiting();
    h.message(P1, ask.clone());
    let d = durable(&mut h);
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState3::Abort));
    assert_eq!(
        d.sends,
        parts()
            .into_iter()
            .map(|p| (p, Message3::GlobalAbort { tx: tx() }))
            .collect::<Vec<_>>()
    );
    assert_eq!(h.core.participant_state(&tx()), None);
    h.message(P1, Message3::VoteCommit { tx: tx() });
    assert!(h.drain().persists.is_empty(), "no PRECOMMIT after that");
    // In PRECOMMIT: no answer (it must not push anyone towards commit).
    let mut h = coordinator_in(CoordState3::PreCommit);
    h.message(P1, ask.clone());
    let d = h.drain();
    assert!(d.sends.is_empty() && d.persists.is_empty());
    assert_eq!(h.core.participant_state(&tx()), None);
    // A stranger asking is ignored.
    let mut h = coordinator_in(CoordState3::Abort);
    h.message(NodeId(9), ask);
    assert!(h.drain().sends.is_empty());
    assert_eq!(h.core.stats().not_participant, 1);
}

#[test]
fn termination_takes_the_coordinators_abort_and_never_sends_it_prepare_commit() {
    // The coordinator's ABORT decides at once, even with a PRECOMMIT
    // peer, and the outcome goes to the participants only.
    let mut h = terminating();
    h.message(
        P2,
        Message3::State {
            tx: tx(),
            state: PartState3::PreCommit,
        },
    );
    h.message(
        C,
        Message3::State {
            tx: tx(),
            state: PartState3::Abort,
        },
    );
    let d = durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Abort);
    assert_eq!(
        d.sends,
        vec![
            (P2, Message3::GlobalAbort { tx: tx() }),
            (P3, Message3::GlobalAbort { tx: tx() })
        ]
    );
    // An undecided answer from the coordinator is not collected: with a
    // PRECOMMIT peer, PREPARE_COMMIT goes to the participants that
    // answered, not to the coordinator, and their READY_COMMITs suffice.
    let mut h = terminating();
    for (n, state) in [
        (C, PartState3::PreCommit),
        (P2, PartState3::PreCommit),
        (P3, PartState3::Ready),
    ] {
        h.message(n, Message3::State { tx: tx(), state });
    }
    h.timer(Timer3::Collect(tx()));
    let d = durable(&mut h);
    assert_eq!(
        d.sends,
        vec![
            (P2, Message3::PrepareCommit { tx: tx() }),
            (P3, Message3::PrepareCommit { tx: tx() })
        ]
    );
    h.message(P2, Message3::ReadyCommit { tx: tx() });
    h.message(P3, Message3::ReadyCommit { tx: tx() });
    durable(&mut h);
    assert_eq!(part_state(&h), PartState3::Commit);
    // A coordinator that is also a participant is asked once, as one.
    let mut h = Harness::<ThreePhase>::new(&cfg(), P2);
    h.message(
        P1,
        Message3::VoteRequest {
            tx: tx(),
            participants: vec![P1, P2],
        },
    );
    h.input(Input::Voted {
        tx: tx(),
        vote: Vote::Commit,
    });
    durable(&mut h);
    h.timer(Timer3::Decision(tx()));
    h.timer(Timer3::Decision(tx()));
    let asked: Vec<NodeId> = h.drain().sends.iter().map(|(n, _)| *n).collect();
    assert_eq!(asked, vec![P1]);
}

#[test]
fn a_recovered_precommit_coordinator_takes_only_an_outcome_from_the_answers() {
    // READY and PRECOMMIT answers say nothing about a termination that
    // may be aborting right now: no decision on them; COMMIT decides.
    let mut h = coordinator_in(CoordState3::PreCommit);
    for (p, state) in [(P1, PartState3::Ready), (P2, PartState3::PreCommit)] {
        h.message(p, Message3::State { tx: tx(), state });
        assert!(h.drain().persists.is_empty(), "{state:?} decides nothing");
    }
    assert_eq!(
        h.core.coordinator_state(&tx()),
        Some(CoordState3::PreCommit)
    );
    h.message(
        P3,
        Message3::State {
            tx: tx(),
            state: PartState3::Commit,
        },
    );
    durable(&mut h);
    assert_eq!(h.core.coordinator_state(&tx()), Some(CoordState3::Commit));
}

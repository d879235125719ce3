//! `CommitCore::logged`: what a driver reports after a restart, for each
//! state a log can leave a transaction in, for 2PC and 3PC.

use ft_commit::{
    CommitCore, CoordState3, LogRecord, Logged, PartState3, PaxosCommit, PaxosConfig, PaxosRecord,
    Record3, Role, ThreePhase, ThreePhaseConfig, TwoPhase, TwoPhaseConfig, TxId, Value, Vote,
};
use ft_core::{NodeId, Recover, harness};

fn tx(s: &str) -> TxId {
    TxId::new(s.as_bytes().to_vec()).unwrap()
}

fn logged(tx_: &str, role: Role, outcome: Option<Vote>) -> Logged {
    Logged {
        tx: tx(tx_),
        role,
        outcome,
    }
}

#[test]
fn two_phase_reports_decisions_undecided_and_in_doubt() {
    let ps = vec![NodeId(1), NodeId(2)];
    let c = NodeId(0);
    let records = [
        LogRecord::Begin {
            tx: tx("wait"),
            participants: ps.clone(),
        },
        LogRecord::Begin {
            tx: tx("done"),
            participants: ps.clone(),
        },
        LogRecord::Decision {
            tx: tx("done"),
            outcome: Vote::Commit,
            participants: ps.clone(),
        },
        LogRecord::End { tx: tx("done") },
        LogRecord::Ready {
            tx: tx("ready"),
            coordinator: c,
            participants: ps.clone(),
        },
        LogRecord::Ready {
            tx: tx("commit"),
            coordinator: c,
            participants: ps.clone(),
        },
        LogRecord::Commit {
            tx: tx("commit"),
            coordinator: c,
        },
        LogRecord::Abort {
            tx: tx("abort"),
            coordinator: c,
        },
    ];
    let mut ctx = harness::context(NodeId(1));
    ctx.records = records.iter().map(ft_core::record::encode).collect();
    let core = TwoPhase::recover(&TwoPhaseConfig::default(), ctx).unwrap();
    let mut got = core.logged();
    got.sort_by(|a, b| (a.role, &a.tx).cmp(&(b.role, &b.tx)));
    assert_eq!(
        got,
        vec![
            logged("done", Role::Coordinator, Some(Vote::Commit)),
            // WAIT: undecided in the log (the core aborts it now).
            logged("wait", Role::Coordinator, None),
            logged("abort", Role::Participant, Some(Vote::Abort)),
            logged("commit", Role::Participant, Some(Vote::Commit)),
            logged("ready", Role::Participant, None),
        ]
    );
}

#[test]
fn three_phase_precommit_is_not_a_decision() {
    let ps = vec![NodeId(1), NodeId(2)];
    let coord = |t: &str, state| Record3::Coord {
        tx: tx(t),
        state,
        participants: ps.clone(),
    };
    let part = |t: &str, state| Record3::Part {
        tx: tx(t),
        state,
        coordinator: NodeId(0),
        participants: ps.clone(),
    };
    let records = [
        coord("pre", CoordState3::Wait),
        coord("pre", CoordState3::PreCommit),
        coord("ab", CoordState3::Wait),
        coord("ab", CoordState3::Abort),
        part("p-ready", PartState3::Ready),
        part("p-pre", PartState3::Ready),
        part("p-pre", PartState3::PreCommit),
        part("p-commit", PartState3::Ready),
        part("p-commit", PartState3::PreCommit),
        part("p-commit", PartState3::Commit),
    ];
    let mut ctx = harness::context(NodeId(1));
    ctx.records = records.iter().map(ft_core::record::encode).collect();
    let core = ThreePhase::recover(&ThreePhaseConfig::default(), ctx).unwrap();
    let mut got = core.logged();
    got.sort_by(|a, b| (a.role, &a.tx).cmp(&(b.role, &b.tx)));
    assert_eq!(
        got,
        vec![
            logged("ab", Role::Coordinator, Some(Vote::Abort)),
            // PRECOMMIT is not a decision: a recovered coordinator there
            // only asks, and may still learn ABORT.
            logged("pre", Role::Coordinator, None),
            logged("p-commit", Role::Participant, Some(Vote::Commit)),
            logged("p-pre", Role::Participant, None),
            logged("p-ready", Role::Participant, None),
        ]
    );
}

#[test]
fn paxos_commit_reports_learned_outcomes_and_prepared_as_in_doubt() {
    let ps = vec![NodeId(1), NodeId(2)];
    let c = NodeId(0);
    let records = [
        PaxosRecord::Begin {
            tx: tx("open"),
            participants: ps.clone(),
        },
        PaxosRecord::Begin {
            tx: tx("done"),
            participants: ps.clone(),
        },
        PaxosRecord::Decided {
            tx: tx("done"),
            outcome: Vote::Abort,
        },
        PaxosRecord::Voted {
            tx: tx("prepared"),
            coordinator: c,
            participants: ps.clone(),
            value: Value::Prepared,
        },
        PaxosRecord::Voted {
            tx: tx("commit"),
            coordinator: c,
            participants: ps.clone(),
            value: Value::Prepared,
        },
        PaxosRecord::Outcome {
            tx: tx("commit"),
            outcome: Vote::Commit,
        },
    ];
    let mut ctx = harness::context(NodeId(1));
    ctx.records = records.iter().map(ft_core::record::encode).collect();
    let config = PaxosConfig::new(vec![NodeId(1), NodeId(2), NodeId(3)]);
    let core = PaxosCommit::recover(&config, ctx).unwrap();
    let mut got = core.logged();
    got.sort_by(|a, b| (a.role, &a.tx).cmp(&(b.role, &b.tx)));
    assert_eq!(
        got,
        vec![
            logged("done", Role::Coordinator, Some(Vote::Abort)),
            logged("open", Role::Coordinator, None),
            logged("commit", Role::Participant, Some(Vote::Commit)),
            logged("prepared", Role::Participant, None),
        ]
    );
}

//! Hostile input to one Paxos Commit node that plays every role (an RM, an
//! acceptor, a coordinator of what it begins, a leader when elected):
//! arbitrary sequences of messages (forged, duplicated, late, from anyone,
//! about a few transaction ids, any ballot), inputs, timer firings,
//! completed persists and restarts. Never a panic, and:
//!
//! - persist before speak: its own phase 2a in ballot 0 only with its vote
//!   durable; a phase 2b only with that acceptance durable; a phase 1b
//!   only with a durable promise at least that ballot for every instance
//!   reported, and reporting exactly what it durably accepted;
//! - an acceptor never accepts below a durable promise;
//! - `Commit` / `Abort` told only with the record that says so durable,
//!   and never both for one transaction, across restarts;
//! - the log always recovers.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ft_commit::{
    Ballot, Event, Input, PaxosCommit, PaxosConfig, PaxosMessage, PaxosRecord, PaxosTimer, TxId,
    Value, Vote,
};
use ft_core::{Incarnation, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext};
use proptest::prelude::*;

const ME: NodeId = NodeId(1);

fn tx(i: u8) -> TxId {
    TxId::new(vec![b't', i]).unwrap()
}

/// `snapshot_every` 0 (off) or a snapshot every 1–3 records. The window
/// holds more than the three transaction ids, so nothing is forgotten: a
/// hostile sequence may replay any old message, which the window assumes
/// away (see `ft_commit::paxos_snapshot`).
fn config(snapshot_every: u32) -> PaxosConfig {
    PaxosConfig {
        snapshot_every,
        keep_finished: 16,
        ..PaxosConfig::new(vec![NodeId(1), NodeId(2), NodeId(3)])
    }
}

#[derive(Clone, Debug)]
enum Step {
    Message(u64, PaxosMessage),
    Input(Input),
    Timer(PaxosTimer),
    Persist,
    Restart,
}

fn node() -> impl Strategy<Value = NodeId> + Clone {
    (0u64..5).prop_map(NodeId)
}

fn nodes() -> impl Strategy<Value = Vec<NodeId>> + Clone {
    proptest::collection::vec(node(), 0..5)
}

fn ballot() -> impl Strategy<Value = Ballot> + Clone {
    (0u32..3, 0u64..3, node()).prop_map(|(round, incarnation, leader)| Ballot {
        round,
        incarnation,
        leader,
    })
}

fn value() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![Just(Value::Prepared), Just(Value::Aborted)]
}

fn vote() -> impl Strategy<Value = Vote> + Clone {
    prop_oneof![Just(Vote::Commit), Just(Vote::Abort)]
}

fn step() -> impl Strategy<Value = Step> {
    let t = (0u8..3).prop_map(tx);
    let report = (node(), proptest::option::of((ballot(), value())));
    let msg = prop_oneof![
        (t.clone(), nodes())
            .prop_map(|(tx, participants)| PaxosMessage::Prepare { tx, participants }),
        (t.clone(), node(), ballot(), value()).prop_map(|(tx, rm, ballot, value)| {
            PaxosMessage::Phase2a {
                tx,
                rm,
                ballot,
                value,
            }
        }),
        (t.clone(), node(), ballot(), value()).prop_map(|(tx, rm, ballot, value)| {
            PaxosMessage::Phase2b {
                tx,
                rm,
                ballot,
                value,
            }
        }),
        (t.clone(), ballot(), nodes()).prop_map(|(tx, ballot, rms)| PaxosMessage::Phase1a {
            tx,
            ballot,
            rms
        }),
        (t.clone(), ballot(), proptest::collection::vec(report, 0..4)).prop_map(
            |(tx, ballot, reports)| PaxosMessage::Phase1b {
                tx,
                ballot,
                reports
            }
        ),
        (t.clone(), vote()).prop_map(|(tx, outcome)| PaxosMessage::Outcome { tx, outcome }),
    ];
    let timer = prop_oneof![
        t.clone().prop_map(PaxosTimer::Votes),
        t.clone().prop_map(PaxosTimer::Resend),
        t.clone().prop_map(PaxosTimer::Lead),
        t.clone().prop_map(PaxosTimer::Prepare),
        t.clone().prop_map(PaxosTimer::Takeover),
        t.clone().prop_map(PaxosTimer::Learn),
    ];
    prop_oneof![
        5 => (0u64..5, msg).prop_map(|(f, m)| Step::Message(f, m)),
        1 => (t.clone(), nodes()).prop_map(|(tx, participants)| Step::Input(Input::Begin { tx, participants })),
        1 => (t.clone(), node()).prop_map(|(tx, coordinator)| Step::Input(Input::Join { tx, coordinator })),
        2 => (t, vote()).prop_map(|(tx, vote)| Step::Input(Input::Voted { tx, vote })),
        2 => timer.prop_map(Step::Timer),
        3 => Just(Step::Persist),
        1 => Just(Step::Restart),
    ]
}

struct Run {
    config: PaxosConfig,
    core: PaxosCommit,
    life: u64,
    durable: Vec<Bytes>,
    in_flight: Vec<(PersistToken, Bytes)>,
    committed: BTreeSet<TxId>,
    aborted: BTreeSet<TxId>,
    decided: BTreeMap<TxId, Vote>,
}

impl Run {
    /// Recovers from the log as compaction leaves it: from the last
    /// snapshot on (every snapshot in `durable` is durable, so its
    /// compaction may have happened).
    fn recover(config: &PaxosConfig, life: u64, durable: &[Bytes]) -> PaxosCommit {
        let from = durable
            .iter()
            .rposition(|r| {
                matches!(
                    ft_core::record::decode::<PaxosRecord>(r.clone()),
                    Ok(PaxosRecord::Snapshot(_))
                )
            })
            .unwrap_or(0);
        let ctx = RecoveryContext {
            node: ME,
            incarnation: Incarnation(life),
            records: durable[from..].to_vec(),
            seed: 0,
            now: std::time::Instant::now(),
        };
        PaxosCommit::recover(config, ctx).expect("recovers from its own log")
    }

    fn records(&self) -> Vec<PaxosRecord> {
        self.durable
            .iter()
            .map(|r| ft_core::record::decode(r.clone()).unwrap())
            .collect()
    }

    fn drain(&mut self) -> Result<(), TestCaseError> {
        while let Some(o) = self.core.poll_output() {
            let logged = self.records();
            let has = |f: &dyn Fn(&PaxosRecord) -> bool| logged.iter().any(f);
            // The highest durable promise (or acceptance) and the last
            // durable acceptance of an instance.
            let promised = |tx: &TxId, rm: NodeId| {
                logged
                    .iter()
                    .filter_map(|r| match r {
                        PaxosRecord::Promised { tx: t, ballot, rms }
                            if t == tx && rms.contains(&rm) =>
                        {
                            Some(*ballot)
                        }
                        PaxosRecord::Accepted {
                            tx: t,
                            rm: r,
                            ballot,
                            ..
                        } if t == tx && *r == rm => Some(*ballot),
                        _ => None,
                    })
                    .max()
            };
            let accepted = |tx: &TxId, rm: NodeId| {
                logged
                    .iter()
                    .filter_map(|r| match r {
                        PaxosRecord::Accepted {
                            tx: t,
                            rm: r,
                            ballot,
                            value,
                        } if t == tx && *r == rm => Some((*ballot, *value)),
                        _ => None,
                    })
                    .next_back()
            };
            match o {
                Output::Persist { record, token } => self.in_flight.push((token, record)),
                Output::Send { msg, .. } => match &msg {
                    PaxosMessage::Phase2a {
                        tx,
                        rm,
                        ballot,
                        value,
                    } if *rm == ME && ballot.round == 0 => prop_assert!(
                        has(
                            &|r| matches!(r, PaxosRecord::Voted { tx: t, value: v, .. } if t == tx && v == value)
                        ),
                        "phase 2a of our vote on {tx} without the vote durable"
                    ),
                    PaxosMessage::Phase2b {
                        tx,
                        rm,
                        ballot,
                        value,
                    } => prop_assert!(
                        has(&|r| *r
                            == PaxosRecord::Accepted {
                                tx: tx.clone(),
                                rm: *rm,
                                ballot: *ballot,
                                value: *value
                            }),
                        "phase 2b on {tx} without the acceptance durable"
                    ),
                    PaxosMessage::Phase1b {
                        tx,
                        ballot,
                        reports,
                    } => {
                        for (rm, acc) in reports {
                            prop_assert!(
                                promised(tx, *rm) >= Some(*ballot),
                                "phase 1b on {tx} without a durable promise"
                            );
                            prop_assert_eq!(
                                *acc,
                                accepted(tx, *rm),
                                "phase 1b reports what is durable"
                            );
                        }
                    }
                    _ => {}
                },
                Output::Event(Event::Commit { tx }) => {
                    prop_assert!(
                        has(
                            &|r| matches!(r, PaxosRecord::Outcome { tx: t, outcome: Vote::Commit } if *t == tx)
                        ),
                        "Commit of {tx} told without it durable"
                    );
                    prop_assert!(!self.aborted.contains(&tx), "{tx} aborted, then committed");
                    self.committed.insert(tx);
                }
                Output::Event(Event::Abort { tx }) => {
                    prop_assert!(
                        has(&|r| matches!(r,
                            PaxosRecord::Outcome { tx: t, outcome: Vote::Abort }
                            | PaxosRecord::Voted { tx: t, value: Value::Aborted, .. } if *t == tx)),
                        "Abort of {tx} told without it durable"
                    );
                    prop_assert!(
                        !self.committed.contains(&tx),
                        "{tx} committed, then aborted"
                    );
                    self.aborted.insert(tx);
                }
                Output::Event(Event::Decided { tx, outcome }) => {
                    // Within one life (the DECIDED record is not forced).
                    let first = *self.decided.entry(tx.clone()).or_insert(outcome);
                    prop_assert_eq!(first, outcome, "two outcomes decided for {}", tx);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_sequences_never_break_a_node(
        steps in proptest::collection::vec(step(), 0..60),
        snapshot_every in prop_oneof![Just(0u32), 1u32..4],
    ) {
        let config = config(snapshot_every);
        let mut run = Run {
            core: Run::recover(&config, 1, &[]),
            config,
            life: 1,
            durable: Vec::new(),
            in_flight: Vec::new(),
            committed: BTreeSet::new(),
            aborted: BTreeSet::new(),
            decided: BTreeMap::new(),
        };
        let now = std::time::Instant::now();
        run.drain()?;
        for s in steps {
            match s {
                Step::Message(from, msg) => run.core.handle_message(now, NodeId(from), msg),
                Step::Input(i) => run.core.handle_input(now, i),
                Step::Timer(t) => run.core.handle_timer(now, t),
                Step::Persist => {
                    if !run.in_flight.is_empty() {
                        let (token, record) = run.in_flight.remove(0);
                        run.durable.push(record);
                        run.core.handle_persisted(now, token);
                    }
                }
                Step::Restart => {
                    run.in_flight.clear();
                    run.life += 1;
                    run.decided.clear();
                    run.core = Run::recover(&run.config, run.life, &run.durable);
                }
            }
            run.drain()?;
        }
        // The acceptor never accepted below a durable promise, and the RM
        // logged at most one outcome per transaction.
        let mut promise: BTreeMap<(TxId, NodeId), Ballot> = BTreeMap::new();
        let mut outcome: BTreeMap<TxId, Vote> = BTreeMap::new();
        for r in run.records() {
            match r {
                PaxosRecord::Promised { tx, ballot, rms } => {
                    for rm in rms {
                        let p = promise.entry((tx.clone(), rm)).or_insert(ballot);
                        *p = (*p).max(ballot);
                    }
                }
                PaxosRecord::Accepted { tx, rm, ballot, .. } => {
                    let p = promise.entry((tx.clone(), rm)).or_insert(ballot);
                    prop_assert!(ballot >= *p, "accepted below a promise on {}", tx);
                    *p = ballot;
                }
                PaxosRecord::Outcome { tx, outcome: o } => {
                    prop_assert_eq!(*outcome.entry(tx).or_insert(o), o);
                }
                _ => {}
            }
        }
    }
}

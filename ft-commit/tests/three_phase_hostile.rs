//! Hostile input to one three-phase commit node, as `tests/hostile.rs`
//! does for 2PC: arbitrary sequences of messages (forged, duplicated, late,
//! from anyone, about a few transaction ids, in any phase), inputs, timer
//! firings, completed persists and restarts. Never a panic; nothing that
//! depends on a record is sent before that record is durable (VOTE_COMMIT
//! on READY, READY_COMMIT on PRECOMMIT, GLOBAL_COMMIT / GLOBAL_ABORT on the
//! decision, an INIT answer on ABORT, a COMMIT / ABORT answer on that
//! outcome); never both Commit and Abort told for one transaction; memory
//! bounded by the transaction ids seen; the node always recovers from what
//! it logged, which holds one outcome per transaction and role.
//!
//! Each case draws a compaction setting (off, or a snapshot every 1–3
//! records keeping 0–2 finished transactions per role) and its log applies
//! the compactions asked for: with three transaction ids, nodes forget and
//! meet forgotten ids again. A forgotten transaction met again is a new one
//! (ids are unique in real use), so the checks of told outcomes and of the
//! log start afresh for it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ft_commit::{
    CoordState3, Event, Input, Message3, PartState3, Record3, ThreePhase, ThreePhaseConfig, Timer3,
    TxId, Vote,
};
use ft_core::{Incarnation, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext};
use proptest::prelude::*;

const ME: NodeId = NodeId(1);

fn tx(i: u8) -> TxId {
    TxId::new(vec![b't', i]).unwrap()
}

#[derive(Clone, Debug)]
enum Step {
    Message(u64, Message3),
    Input(Input),
    Timer(Timer3),
    /// Complete the oldest persist in flight.
    Persist,
    Restart,
}

fn node() -> impl Strategy<Value = NodeId> + Clone {
    (0u64..5).prop_map(NodeId)
}

fn nodes() -> impl Strategy<Value = Vec<NodeId>> {
    proptest::collection::vec(node(), 0..5)
}

fn state() -> impl Strategy<Value = PartState3> {
    prop_oneof![
        Just(PartState3::Init),
        Just(PartState3::Ready),
        Just(PartState3::PreCommit),
        Just(PartState3::Commit),
        Just(PartState3::Abort)
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let t = (0u8..3).prop_map(tx);
    let vote = prop_oneof![Just(Vote::Commit), Just(Vote::Abort)];
    let msg = prop_oneof![
        (t.clone(), nodes())
            .prop_map(|(tx, participants)| Message3::VoteRequest { tx, participants }),
        t.clone().prop_map(|tx| Message3::VoteCommit { tx }),
        t.clone().prop_map(|tx| Message3::VoteAbort { tx }),
        t.clone().prop_map(|tx| Message3::PrepareCommit { tx }),
        t.clone().prop_map(|tx| Message3::ReadyCommit { tx }),
        t.clone().prop_map(|tx| Message3::GlobalCommit { tx }),
        t.clone().prop_map(|tx| Message3::GlobalAbort { tx }),
        (t.clone(), node())
            .prop_map(|(tx, coordinator)| Message3::StateRequest { tx, coordinator }),
        (t.clone(), state()).prop_map(|(tx, state)| Message3::State { tx, state }),
    ];
    let timer = prop_oneof![
        t.clone().prop_map(Timer3::Votes),
        t.clone().prop_map(Timer3::Resend),
        t.clone().prop_map(Timer3::Prepare),
        t.clone().prop_map(Timer3::Decision),
        t.clone().prop_map(Timer3::Collect),
    ];
    prop_oneof![
        4 => (0u64..5, msg).prop_map(|(f, m)| Step::Message(f, m)),
        1 => (t.clone(), nodes()).prop_map(|(tx, participants)| Step::Input(Input::Begin { tx, participants })),
        1 => (t.clone(), node()).prop_map(|(tx, coordinator)| Step::Input(Input::Join { tx, coordinator })),
        2 => (t, vote).prop_map(|(tx, vote)| Step::Input(Input::Voted { tx, vote })),
        3 => timer.prop_map(Step::Timer),
        3 => Just(Step::Persist),
        1 => Just(Step::Restart),
    ]
}

struct Run {
    config: ThreePhaseConfig,
    core: ThreePhase,
    life: u64,
    durable: Vec<Bytes>,
    /// The life and token of each record in `durable`.
    tokens: Vec<(u64, PersistToken)>,
    in_flight: Vec<(PersistToken, Bytes)>,
    committed: BTreeSet<TxId>,
    aborted: BTreeSet<TxId>,
}

impl Run {
    fn recover(config: &ThreePhaseConfig, life: u64, durable: &[Bytes]) -> ThreePhase {
        let ctx = RecoveryContext {
            node: ME,
            incarnation: Incarnation(life),
            records: durable.to_vec(),
            seed: 0,
            now: std::time::Instant::now(),
        };
        ThreePhase::recover(config, ctx).expect("recovers from its own log")
    }

    fn durable_records(&self) -> Vec<Record3> {
        self.durable
            .iter()
            .map(|r| ft_core::record::decode(r.clone()).unwrap())
            .collect()
    }

    fn drain(&mut self) -> Result<(), TestCaseError> {
        // Outcomes of transactions the node forgot: a new transaction
        // under that id may end otherwise.
        let core = &self.core;
        let known =
            |t: &TxId| core.participant_state(t).is_some() || core.coordinator_state(t).is_some();
        self.committed.retain(known);
        self.aborted.retain(known);
        while let Some(o) = self.core.poll_output() {
            let logged = self.durable_records();
            let part = |tx: &TxId, s: PartState3| {
                logged.iter().any(|r| match r {
                    Record3::Part { tx: t, state, .. } => t == tx && *state == s,
                    Record3::Snapshot(snap) => {
                        snap.parts.iter().any(|p| &p.tx == tx && p.state == s)
                    }
                    _ => false,
                })
            };
            let coord = |tx: &TxId, s: CoordState3| {
                logged.iter().any(|r| match r {
                    Record3::Coord { tx: t, state, .. } => t == tx && *state == s,
                    Record3::Snapshot(snap) => {
                        snap.coords.iter().any(|c| &c.tx == tx && c.state == s)
                    }
                    _ => false,
                })
            };
            match o {
                Output::Persist { record, token } => self.in_flight.push((token, record)),
                Output::Compact { before } => {
                    let life = self.life;
                    let at = self.tokens.iter().position(|&t| t == (life, before));
                    prop_assert!(at.is_some(), "compacts before a durable record");
                    let at = at.unwrap();
                    self.tokens.drain(..at);
                    self.durable.drain(..at);
                }
                Output::Send { msg, .. } => match &msg {
                    // READY, or a later state (a snapshot holds only the
                    // latest).
                    Message3::VoteCommit { tx } => prop_assert!(
                        part(tx, PartState3::Ready)
                            || part(tx, PartState3::PreCommit)
                            || part(tx, PartState3::Commit),
                        "VOTE_COMMIT on {tx} without READY durable"
                    ),
                    Message3::ReadyCommit { tx } => prop_assert!(
                        part(tx, PartState3::PreCommit),
                        "READY_COMMIT on {tx} without PRECOMMIT durable"
                    ),
                    Message3::PrepareCommit { tx } => prop_assert!(
                        part(tx, PartState3::PreCommit) || coord(tx, CoordState3::PreCommit),
                        "PREPARE_COMMIT on {tx} without PRECOMMIT durable"
                    ),
                    Message3::GlobalCommit { tx } => prop_assert!(
                        part(tx, PartState3::Commit) || coord(tx, CoordState3::Commit),
                        "GLOBAL_COMMIT on {tx} without COMMIT durable"
                    ),
                    Message3::GlobalAbort { tx } => prop_assert!(
                        part(tx, PartState3::Abort) || coord(tx, CoordState3::Abort),
                        "GLOBAL_ABORT on {tx} without ABORT durable"
                    ),
                    Message3::State { tx, state } => {
                        let need = match state {
                            PartState3::Init | PartState3::Abort => {
                                part(tx, PartState3::Abort) || coord(tx, CoordState3::Abort)
                            }
                            PartState3::Commit => {
                                part(tx, PartState3::Commit) || coord(tx, CoordState3::Commit)
                            }
                            s => part(tx, *s),
                        };
                        prop_assert!(
                            need,
                            "answered {state:?} on {tx} without its record durable"
                        );
                    }
                    _ => {}
                },
                Output::Event(Event::Commit { tx }) => {
                    prop_assert!(!self.aborted.contains(&tx), "{tx} aborted, then committed");
                    self.committed.insert(tx);
                }
                Output::Event(Event::Abort { tx }) => {
                    prop_assert!(
                        !self.committed.contains(&tx),
                        "{tx} committed, then aborted"
                    );
                    self.aborted.insert(tx);
                }
                _ => {}
            }
        }
        prop_assert!(
            self.core.participating().count() <= 3,
            "memory bounded by the ids"
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_sequences_never_break_a_three_phase_node(
        steps in proptest::collection::vec(step(), 0..60),
        compaction in prop::option::of((1u32..4, 0usize..3)),
    ) {
        let mut config = ThreePhaseConfig::default();
        if let Some((every, keep)) = compaction {
            config.snapshot_every = every;
            config.keep_finished = keep;
        }
        let mut run = Run {
            core: Run::recover(&config, 1, &[]),
            config,
            life: 1,
            durable: Vec::new(),
            tokens: Vec::new(),
            in_flight: Vec::new(),
            committed: BTreeSet::new(),
            aborted: BTreeSet::new(),
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
                        run.tokens.push((run.life, token));
                        run.core.handle_persisted(now, token);
                    }
                }
                Step::Restart => {
                    run.in_flight.clear();
                    run.life += 1;
                    run.core = Run::recover(&run.config, run.life, &run.durable);
                }
            }
            run.drain()?;
        }
        // Whatever was logged reads back, and says one outcome per
        // transaction and role (a snapshot restates what it keeps).
        let mut outcome: BTreeMap<(TxId, bool), bool> = BTreeMap::new();
        for r in run.durable_records() {
            let (key, commit) = match r {
                Record3::Snapshot(snap) => {
                    outcome.clear();
                    for c in snap.coords {
                        if matches!(c.state, CoordState3::Commit | CoordState3::Abort) {
                            outcome.insert((c.tx, true), c.state == CoordState3::Commit);
                        }
                    }
                    for p in snap.parts {
                        if matches!(p.state, PartState3::Commit | PartState3::Abort) {
                            outcome.insert((p.tx, false), p.state == PartState3::Commit);
                        }
                    }
                    continue;
                }
                Record3::Part { tx, state: PartState3::Commit, .. } => ((tx, false), true),
                Record3::Part { tx, state: PartState3::Abort, .. } => ((tx, false), false),
                Record3::Coord { tx, state: CoordState3::Commit, .. } => ((tx, true), true),
                Record3::Coord { tx, state: CoordState3::Abort, .. } => ((tx, true), false),
                _ => continue,
            };
            prop_assert_eq!(*outcome.entry(key).or_insert(commit), commit);
        }
    }
}

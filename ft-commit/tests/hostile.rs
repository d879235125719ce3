//! Hostile input to one node: arbitrary sequences of messages (forged,
//! duplicated, late, from anyone, about a few transaction ids), inputs,
//! timer firings, completed persists and restarts. Never a panic; the node
//! never commits what it did not log READY for, never both commits and
//! aborts one transaction, never sends a vote or an answer that depends on
//! a record before that record is durable, and always recovers from what
//! it logged.
//!
//! Each case draws the node's configuration: presumed abort, read-only,
//! group commit and compaction (a snapshot every 1–8 records, keeping 1–4
//! finished transactions), each on or off; the environment drops the log
//! prefix a compaction names, so recovery starts from snapshots too. Two
//! relaxations follow from the optimizations, both documented in the core:
//! an outcome the node forgot (beyond its window, or an unforced ABORT
//! lost in a crash under presumed abort) may be met again as a new
//! transaction, so the "never both" check holds per remembered outcome.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ft_commit::{
    Event, Input, LogRecord, Message, PartState, PeerState, Timer, TwoPhase, TwoPhaseConfig, TxId,
    Vote,
};
use ft_core::{Incarnation, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext};
use proptest::prelude::*;

const ME: NodeId = NodeId(1);

fn tx(i: u8) -> TxId {
    TxId::new(vec![b't', i]).unwrap()
}

#[derive(Clone, Debug)]
enum Step {
    Message(u64, Message),
    Input(Input),
    Timer(Timer),
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

fn step() -> impl Strategy<Value = Step> {
    let t = (0u8..3).prop_map(tx);
    let state = prop_oneof![
        Just(PeerState::Init),
        Just(PeerState::Ready),
        Just(PeerState::Commit),
        Just(PeerState::Abort)
    ];
    let vote = prop_oneof![Just(Vote::Commit), Just(Vote::Abort)];
    let msg = prop_oneof![
        (t.clone(), nodes())
            .prop_map(|(tx, participants)| Message::VoteRequest { tx, participants }),
        t.clone().prop_map(|tx| Message::VoteCommit { tx }),
        t.clone().prop_map(|tx| Message::VoteAbort { tx }),
        t.clone().prop_map(|tx| Message::GlobalCommit { tx }),
        t.clone().prop_map(|tx| Message::GlobalAbort { tx }),
        t.clone().prop_map(|tx| Message::Ack { tx }),
        (t.clone(), node())
            .prop_map(|(tx, coordinator)| Message::DecisionRequest { tx, coordinator }),
        (t.clone(), state).prop_map(|(tx, state)| Message::State { tx, state }),
        t.clone().prop_map(|tx| Message::VoteReadOnly { tx }),
        (t.clone(), vote.clone())
            .prop_map(|(tx, heuristic)| Message::HeuristicAck { tx, heuristic }),
    ];
    let timer = prop_oneof![
        t.clone().prop_map(Timer::Votes),
        t.clone().prop_map(Timer::Resend),
        t.clone().prop_map(Timer::Prepare),
        t.clone().prop_map(Timer::Decision),
    ];
    prop_oneof![
        4 => (0u64..5, msg).prop_map(|(f, m)| Step::Message(f, m)),
        1 => (t.clone(), nodes()).prop_map(|(tx, participants)| Step::Input(Input::Begin { tx, participants })),
        1 => (t.clone(), node()).prop_map(|(tx, coordinator)| Step::Input(Input::Join { tx, coordinator })),
        2 => (t.clone(), vote.clone()).prop_map(|(tx, vote)| Step::Input(Input::Voted { tx, vote })),
        1 => t.clone().prop_map(|tx| Step::Input(Input::VotedReadOnly { tx })),
        1 => (t, vote).prop_map(|(tx, outcome)| Step::Input(Input::Heuristic { tx, outcome })),
        2 => timer.prop_map(Step::Timer),
        3 => Just(Step::Persist),
        1 => Just(Step::Restart),
    ]
}

fn config() -> impl Strategy<Value = TwoPhaseConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0u32), 1u32..9],
        1usize..5,
    )
        .prop_map(
            |(presumed_abort, read_only, group_commit, snapshot_every, keep_finished)| {
                TwoPhaseConfig {
                    presumed_abort,
                    read_only,
                    group_commit,
                    snapshot_every,
                    keep_finished,
                    ..TwoPhaseConfig::default()
                }
            },
        )
}

struct Run {
    config: TwoPhaseConfig,
    core: TwoPhase,
    life: u64,
    /// The log: (life, token, record), its prefix dropped at compactions.
    durable: Vec<(u64, PersistToken, Bytes)>,
    in_flight: Vec<(PersistToken, Bytes)>,
    committed: BTreeSet<TxId>,
    aborted: BTreeSet<TxId>,
}

impl Run {
    fn recover(
        config: &TwoPhaseConfig,
        life: u64,
        durable: &[(u64, PersistToken, Bytes)],
    ) -> TwoPhase {
        let ctx = RecoveryContext {
            node: ME,
            incarnation: Incarnation(life),
            records: durable.iter().map(|(_, _, r)| r.clone()).collect(),
            seed: 0,
            now: std::time::Instant::now(),
        };
        TwoPhase::recover(config, ctx).expect("recovers from its own log")
    }

    fn durable_records(&self) -> Vec<LogRecord> {
        self.durable
            .iter()
            .map(|(_, _, r)| ft_core::record::decode(r.clone()).unwrap())
            .collect()
    }

    /// Forgets, in the checker, outcomes the node no longer holds (beyond
    /// its window, or an unforced ABORT lost in a crash).
    fn forget(&mut self) {
        let core = &self.core;
        let held = |tx: &TxId| {
            matches!(
                core.participant_state(tx),
                Some(PartState::Commit | PartState::Abort)
            )
        };
        self.committed.retain(|tx| held(tx));
        self.aborted.retain(|tx| held(tx));
    }

    fn drain(&mut self) -> Result<(), TestCaseError> {
        while let Some(o) = self.core.poll_output() {
            let logged = self.durable_records();
            let has = |f: &dyn Fn(&LogRecord) -> bool| logged.iter().any(f);
            match o {
                Output::Persist { record, token } => self.in_flight.push((token, record)),
                Output::Compact { before } => {
                    let life = self.life;
                    let at = self
                        .durable
                        .iter()
                        .position(|&(l, t, _)| l == life && t == before);
                    prop_assert!(at.is_some(), "compaction before a record not durable");
                    self.durable.drain(..at.unwrap());
                }
                Output::Send { msg, .. } => match &msg {
                    Message::VoteCommit { tx } => prop_assert!(
                        has(&|r| match r {
                            LogRecord::Ready { tx: t, .. } => t == tx,
                            LogRecord::Snapshot(s) =>
                                s.parts.iter().any(|p| &p.tx == tx && p.outcome.is_none()),
                            _ => false,
                        }),
                        "VOTE_COMMIT on {tx} without READY durable"
                    ),
                    Message::GlobalCommit { tx } => prop_assert!(
                        has(&|r| match r {
                            LogRecord::Decision {
                                tx: t,
                                outcome: Vote::Commit,
                                ..
                            } => t == tx,
                            LogRecord::Decisions(b) =>
                                b.iter().any(|d| &d.tx == tx && d.outcome == Vote::Commit),
                            LogRecord::Snapshot(s) => s
                                .coords
                                .iter()
                                .any(|c| &c.tx == tx && c.outcome == Some(Vote::Commit)),
                            _ => false,
                        }),
                        "GLOBAL_COMMIT on {tx} without the decision durable"
                    ),
                    Message::State {
                        tx,
                        state: PeerState::Init,
                    } => prop_assert!(
                        has(&|r| match r {
                            LogRecord::Abort { tx: t, .. } => t == tx,
                            LogRecord::Snapshot(s) => s
                                .parts
                                .iter()
                                .any(|p| &p.tx == tx && p.outcome == Some(Vote::Abort)),
                            _ => false,
                        }),
                        "answered INIT on {tx} without ABORT durable"
                    ),
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
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_sequences_never_break_a_node(
        config in config(),
        steps in proptest::collection::vec(step(), 0..60),
    ) {
        let mut run = Run {
            core: Run::recover(&config, 1, &[]),
            config,
            life: 1,
            durable: Vec::new(),
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
                        run.durable.push((run.life, token, record));
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
            run.forget();
        }
        // Whatever was logged reads back, and says one outcome per
        // transaction at the participant.
        // (A snapshot replaces what came before it.)
        let mut outcome: BTreeMap<TxId, bool> = BTreeMap::new();
        for r in run.durable_records() {
            let (tx, commit) = match r {
                LogRecord::Commit { tx, .. } => (tx, true),
                LogRecord::Abort { tx, .. } => (tx, false),
                LogRecord::Snapshot(s) => {
                    outcome = s
                        .parts
                        .into_iter()
                        .filter_map(|p| p.outcome.map(|o| (p.tx, o == Vote::Commit)))
                        .collect();
                    continue;
                }
                _ => continue,
            };
            prop_assert_eq!(*outcome.entry(tx).or_insert(commit), commit);
        }
    }
}

//! Hostile input to one node: arbitrary sequences of messages (forged,
//! duplicated, late, from anyone, about a few transaction ids), inputs,
//! timer firings, completed persists and restarts. Never a panic; the node
//! never commits what it did not log READY for, never both commits and
//! aborts one transaction, never sends a vote or an answer that depends on
//! a record before that record is durable, and always recovers from what
//! it logged.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ft_commit::{
    Event, Input, LogRecord, Message, PeerState, Timer, TwoPhase, TwoPhaseConfig, TxId, Vote,
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
        2 => (t, vote).prop_map(|(tx, vote)| Step::Input(Input::Voted { tx, vote })),
        2 => timer.prop_map(Step::Timer),
        3 => Just(Step::Persist),
        1 => Just(Step::Restart),
    ]
}

struct Run {
    core: TwoPhase,
    life: u64,
    durable: Vec<Bytes>,
    in_flight: Vec<(PersistToken, Bytes)>,
    committed: BTreeSet<TxId>,
    aborted: BTreeSet<TxId>,
}

impl Run {
    fn recover(life: u64, durable: &[Bytes]) -> TwoPhase {
        let ctx = RecoveryContext {
            node: ME,
            incarnation: Incarnation(life),
            records: durable.to_vec(),
            seed: 0,
            now: std::time::Instant::now(),
        };
        TwoPhase::recover(&TwoPhaseConfig::default(), ctx).expect("recovers from its own log")
    }

    fn durable_records(&self) -> Vec<LogRecord> {
        self.durable
            .iter()
            .map(|r| ft_core::record::decode(r.clone()).unwrap())
            .collect()
    }

    fn drain(&mut self) -> Result<(), TestCaseError> {
        while let Some(o) = self.core.poll_output() {
            let logged = self.durable_records();
            let has = |f: &dyn Fn(&LogRecord) -> bool| logged.iter().any(f);
            match o {
                Output::Persist { record, token } => self.in_flight.push((token, record)),
                Output::Send { msg, .. } => match &msg {
                    Message::VoteCommit { tx } => prop_assert!(
                        has(&|r| matches!(r, LogRecord::Ready { tx: t, .. } if t == tx)),
                        "VOTE_COMMIT on {tx} without READY durable"
                    ),
                    Message::GlobalCommit { tx } => prop_assert!(
                        has(
                            &|r| matches!(r, LogRecord::Decision { tx: t, outcome: Vote::Commit, .. } if t == tx)
                        ),
                        "GLOBAL_COMMIT on {tx} without the decision durable"
                    ),
                    Message::State {
                        tx,
                        state: PeerState::Init,
                    } => prop_assert!(
                        has(&|r| matches!(r, LogRecord::Abort { tx: t, .. } if t == tx)),
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
    fn hostile_sequences_never_break_a_node(steps in proptest::collection::vec(step(), 0..60)) {
        let mut run = Run {
            core: Run::recover(1, &[]),
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
                        run.durable.push(record);
                        run.core.handle_persisted(now, token);
                    }
                }
                Step::Restart => {
                    run.in_flight.clear();
                    run.life += 1;
                    run.core = Run::recover(run.life, &run.durable);
                }
            }
            run.drain()?;
        }
        // Whatever was logged reads back, and says one outcome per
        // transaction at the participant.
        let mut outcome: BTreeMap<TxId, bool> = BTreeMap::new();
        for r in run.durable_records() {
            let (tx, commit) = match r {
                LogRecord::Commit { tx, .. } => (tx, true),
                LogRecord::Abort { tx, .. } => (tx, false),
                _ => continue,
            };
            prop_assert_eq!(*outcome.entry(tx).or_insert(commit), commit);
        }
    }
}

//! The two-phase commit core: [`TwoPhase`], one per node, playing the
//! coordinator of the transactions it begins and a participant in those it
//! is asked to vote on.
//!
//! # The protocol
//!
//! As in the subject (Tanenbaum & van Steen, "Distributed commit"):
//!
//! - **Coordinator**: INIT → (log BEGIN) → WAIT, VOTE_REQUEST to every
//!   participant; all VOTE_COMMIT → (log COMMIT) → COMMIT, GLOBAL_COMMIT;
//!   any VOTE_ABORT, or the vote timeout in WAIT → (log ABORT) → ABORT,
//!   GLOBAL_ABORT. The decision is resent until every participant ACKs it.
//! - **Participant**: INIT, VOTE_REQUEST → [`Event::Prepare`] to the
//!   application, which answers [`Input::Voted`]; commit → (log READY) →
//!   READY, VOTE_COMMIT; abort → (log ABORT) → ABORT, VOTE_ABORT. A
//!   participant in INIT aborts on its timeout: no VOTE_REQUEST since
//!   [`Input::Join`], or no vote from its application.
//!   In READY it waits for the decision; GLOBAL_COMMIT → (log COMMIT) →
//!   COMMIT, ACK; GLOBAL_ABORT → (log ABORT) → ABORT, ACK.
//! - **Cooperative termination**: a participant in READY that has no
//!   decision after [`TwoPhaseConfig::decision_timeout`] sends
//!   DECISION_REQUEST to the coordinator and to every other participant,
//!   and again every [`TwoPhaseConfig::retry`] until it knows. An answer of
//!   COMMIT commits it, ABORT or INIT aborts it, READY tells it nothing.
//!   When every other participant has answered READY, it is **blocked**: the
//!   application is told ([`Event::Blocked`], naming the transaction and the
//!   coordinator it waits on), and it keeps asking.
//!
//!   The subject's rule "Q in INIT → P aborts" is only safe if Q can no
//!   longer vote commit; so Q, asked in INIT (or about a transaction it
//!   never heard of), logs ABORT first and only then answers INIT.
//!
//! # Persist before you speak
//!
//! Every state change is logged ([`LogRecord`]) and takes effect (events,
//! messages) only in [`handle_persisted`](ft_core::Protocol::handle_persisted)
//! for that record. While a transaction has a record in flight its messages
//! are dropped (counted in [`CommitStats::busy`]): their senders retry.
//!
//! # Recovery
//!
//! [`Recover::recover`] replays the log: the last record of each
//! transaction (per role) is its state. Then a coordinator in WAIT aborts
//! (logs ABORT, sends GLOBAL_ABORT), a coordinator in COMMIT or ABORT that
//! had not heard every ACK resends its decision (and tells its application
//! [`Event::Decided`] again), a participant in READY runs
//! cooperative termination at once, and a participant in COMMIT or ABORT
//! re-enters it: [`Event::Commit`] / [`Event::Abort`] again, which the
//! application applies idempotently.
//!
//! # Bad input
//!
//! Messages about unknown transactions, from a node that is not the
//! coordinator or not a participant, in the wrong phase, duplicated or late
//! are ignored (or, for duplicates that show a message was lost, answered
//! again) and counted in [`CommitStats`]; never a panic.
//!
//! # Time
//!
//! Timeouts only decide when to give up waiting or to ask again: no
//! decision depends on a clock being right, so clock drift and slow
//! messages cost liveness (an abort that was not needed, a question asked
//! early), never atomicity.
//!
//! # Method groups and poll order
//!
//! Getters ([`TwoPhase::coordinator_state`], [`TwoPhase::participant_state`],
//! [`TwoPhase::coordinated`], [`TwoPhase::participating`],
//! [`TwoPhase::is_blocked`], [`TwoPhase::stats`]); `handle_*` of
//! [`Protocol`]; no mutators beyond [`Input`]; `poll_output`. Outputs come
//! out in the order the core decided them; a `Send` that depends on a
//! record is only emitted after that record's `handle_persisted`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ft_core::{
    Counters, NodeId, Outbox, Output, PersistToken, Persisted, Protocol, Recover, RecoveryContext,
    RecoveryError,
};

use crate::wire::{LogRecord, MAX_PARTICIPANTS, Message, PeerState, TxId, Vote};

/// Timeouts of a [`TwoPhase`] node: the same in every life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoPhaseConfig {
    /// How often a message that may have been lost is sent again:
    /// VOTE_REQUEST to participants that have not voted, the decision to
    /// participants that have not acknowledged, DECISION_REQUEST while
    /// blocked.
    pub retry: Duration,
    /// Coordinator: how long it waits in WAIT for every vote before it
    /// aborts.
    pub vote_timeout: Duration,
    /// Participant: its timeout in INIT, which aborts it: from
    /// [`Input::Join`] until a VOTE_REQUEST, and from [`Event::Prepare`]
    /// until the application votes.
    pub prepare_timeout: Duration,
    /// Participant: how long it waits in READY for the decision before it
    /// starts cooperative termination.
    pub decision_timeout: Duration,
}

impl Default for TwoPhaseConfig {
    /// 50 ms retries, 500 ms vote and prepare timeouts, 300 ms in READY
    /// before asking the others: values for a LAN and the simulator.
    fn default() -> Self {
        TwoPhaseConfig {
            retry: Duration::from_millis(50),
            vote_timeout: Duration::from_millis(500),
            prepare_timeout: Duration::from_millis(500),
            decision_timeout: Duration::from_millis(300),
        }
    }
}

/// What the application asks of a [`TwoPhase`] node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Coordinate `tx` among `participants` (this node may be one of them).
    /// Refused ([`Event::Refused`]) if this node already coordinates `tx`,
    /// or `participants` is empty, too long ([`MAX_PARTICIPANTS`]) or
    /// names a node twice.
    Begin {
        /// The transaction.
        tx: TxId,
        /// Its participants.
        participants: Vec<NodeId>,
    },
    /// The application works for `tx`, coordinated by `coordinator`, and
    /// waits for its VOTE_REQUEST: if none comes within
    /// [`TwoPhaseConfig::prepare_timeout`], the participant aborts (the
    /// subject's timeout in INIT), logging ABORT and sending VOTE_ABORT.
    /// Optional: a VOTE_REQUEST for a transaction not joined starts it
    /// too. Not logged: after a crash the participant forgets it joined
    /// (its application's volatile work is gone as well).
    Join {
        /// The transaction.
        tx: TxId,
        /// Its coordinator.
        coordinator: NodeId,
    },
    /// The application's resource voted on `tx`, answering
    /// [`Event::Prepare`]: [`Vote::Commit`] means its work is prepared
    /// (durable, able to commit or abort later, as XA's `xa_prepare`).
    Voted {
        /// The transaction.
        tx: TxId,
        /// The vote.
        vote: Vote,
    },
}

/// What a [`TwoPhase`] node tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Participant: prepare the work of `tx` and answer with
    /// [`Input::Voted`].
    Prepare {
        /// The transaction.
        tx: TxId,
    },
    /// Participant: commit the work of `tx`. May come again (after a
    /// restart): applying it must be idempotent.
    Commit {
        /// The transaction.
        tx: TxId,
    },
    /// Participant: abort (roll back) the work of `tx`. May come again, and
    /// for a transaction never prepared here: idempotent.
    Abort {
        /// The transaction.
        tx: TxId,
    },
    /// Participant: `tx` is READY here and every other participant reached
    /// is READY too; only `coordinator` knows the outcome. The participant
    /// keeps asking; this is never hidden.
    Blocked {
        /// The transaction.
        tx: TxId,
        /// Whom it waits on.
        coordinator: NodeId,
    },
    /// Coordinator: the outcome of `tx` is durable and being sent. Comes
    /// again after a restart while some participant has not acknowledged
    /// it.
    Decided {
        /// The transaction.
        tx: TxId,
        /// The outcome.
        outcome: Vote,
    },
    /// Coordinator: every participant acknowledged the outcome of `tx`.
    Finished {
        /// The transaction.
        tx: TxId,
    },
    /// Coordinator: [`Input::Begin`] for `tx` was refused.
    Refused {
        /// The transaction.
        tx: TxId,
        /// Why.
        reason: &'static str,
    },
}

/// The named timers of a [`TwoPhase`] node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Coordinator: the vote timeout of `tx` in WAIT.
    Votes(TxId),
    /// Coordinator: resend VOTE_REQUEST or the decision of `tx`.
    Resend(TxId),
    /// Participant: the application's time to vote on `tx` (INIT).
    Prepare(TxId),
    /// Participant: READY without a decision on `tx`; ask the others.
    Decision(TxId),
}

/// A coordinator's state for one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordState {
    /// BEGIN is being logged.
    Init,
    /// Collecting votes.
    Wait,
    /// Decided commit.
    Commit,
    /// Decided abort.
    Abort,
}

/// A participant's state for one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartState {
    /// Not voted (yet).
    Init,
    /// Voted commit; waits for the decision.
    Ready,
    /// Committed.
    Commit,
    /// Aborted.
    Abort,
}

/// Counters of what a [`TwoPhase`] node ignored and resent, beside ft-core's
/// [`Counters`]. Plain numbers since this life began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Messages and inputs about a transaction this node does not know in
    /// that role.
    pub unknown_tx: u64,
    /// Messages claiming a coordinator other than the transaction's.
    pub wrong_coordinator: u64,
    /// Votes, ACKs and answers from nodes that are not participants, and
    /// vote-requests whose participant list is unusable.
    pub not_participant: u64,
    /// Messages and inputs that make no sense in the transaction's state
    /// (a vote before a vote-request, a global-commit to an aborted node).
    pub wrong_phase: u64,
    /// Copies of messages already acted on (counting too the GLOBAL_ABORT
    /// a participant that voted abort gets: it had aborted already).
    pub duplicates: u64,
    /// Messages that arrived after the state they were for had passed.
    pub late: u64,
    /// Messages dropped because the transaction had a record in flight
    /// (their senders retry).
    pub busy: u64,
    /// [`Input::Begin`]s refused.
    pub refused: u64,
    /// VOTE_REQUESTs sent again.
    pub vote_requests_resent: u64,
    /// VOTE_COMMIT / VOTE_ABORT sent again, for a repeated VOTE_REQUEST.
    pub votes_resent: u64,
    /// GLOBAL_COMMIT / GLOBAL_ABORT sent again (timer or recovery).
    pub decisions_resent: u64,
    /// DECISION_REQUESTs sent (cooperative termination).
    pub decision_requests: u64,
    /// Times a participant told the application it is blocked.
    pub blocked: u64,
    /// Transactions a participant decided through cooperative termination
    /// (an answer from another participant or from the coordinator).
    pub terminated_cooperatively: u64,
    /// Participant aborts on the INIT timeout.
    pub prepare_timeouts: u64,
    /// Coordinator aborts on the vote timeout.
    pub vote_timeouts: u64,
    /// Paxos Commit: messages whose sender may not send them (a phase 2a
    /// in ballot 0 not from its RM, a phase 1a / 2a not from its ballot's
    /// leader, a phase 1b / 2b not from an acceptor).
    pub forged_sender: u64,
    /// Paxos Commit: phase 1a / 2a below an acceptor's promise, phase 1b
    /// for a ballot the leader left.
    pub stale_ballot: u64,
    /// Paxos Commit: acceptor messages to a node that is not an acceptor.
    pub not_acceptor: u64,
    /// Paxos Commit: ballots above 0 started (takeovers and retries).
    pub leader_rounds: u64,
}

#[derive(Debug)]
struct Coord {
    state: CoordState,
    participants: Vec<NodeId>,
    votes: BTreeSet<NodeId>,
    acked: BTreeSet<NodeId>,
    /// A record of this transaction is being logged.
    pending: bool,
    ended: bool,
}

#[derive(Debug)]
struct Part {
    state: PartState,
    coordinator: NodeId,
    participants: Vec<NodeId>,
    pending: bool,
    /// The application was asked to prepare (and has not answered).
    asked: bool,
    /// The application said it works for the transaction
    /// ([`Input::Join`]) before any VOTE_REQUEST.
    joined: bool,
    /// Participants that answered READY to our DECISION_REQUEST.
    ready: BTreeSet<NodeId>,
    blocked: bool,
}

/// What to do once an abort record of a participant is durable.
#[derive(Clone, Copy, Debug)]
enum Then {
    VoteAbort,
    Ack,
    AnswerInit(NodeId),
}

/// What a record in flight is for.
#[derive(Debug)]
enum Pending {
    Begin(TxId),
    Decision(TxId, Vote, Option<NodeId>),
    End(TxId),
    Ready(TxId),
    Commit(TxId),
    Abort(TxId, Then, bool),
}

/// A two-phase commit node: coordinator and participant. See the
/// [module docs](self).
#[derive(Debug)]
pub struct TwoPhase {
    me: NodeId,
    config: TwoPhaseConfig,
    coords: BTreeMap<TxId, Coord>,
    parts: BTreeMap<TxId, Part>,
    pending: BTreeMap<PersistToken, Pending>,
    stats: CommitStats,
    out: Outbox<TwoPhase>,
}

impl TwoPhase {
    // ---- getters ----

    /// This node.
    pub fn node(&self) -> NodeId {
        self.me
    }

    /// The counters of ignored and resent messages.
    pub fn stats(&self) -> CommitStats {
        self.stats
    }

    /// The coordinator's state of `tx`, if this node coordinates it.
    pub fn coordinator_state(&self, tx: &TxId) -> Option<CoordState> {
        self.coords.get(tx).map(|c| c.state)
    }

    /// The participant's state of `tx`, if this node takes part in it.
    pub fn participant_state(&self, tx: &TxId) -> Option<PartState> {
        self.parts.get(tx).map(|p| p.state)
    }

    /// Every transaction this node coordinates, with its state and whether
    /// every participant acknowledged the decision.
    pub fn coordinated(&self) -> impl Iterator<Item = (&TxId, CoordState, bool)> {
        self.coords.iter().map(|(t, c)| (t, c.state, c.ended))
    }

    /// Every transaction this node takes part in, with its state.
    pub fn participating(&self) -> impl Iterator<Item = (&TxId, PartState)> {
        self.parts.iter().map(|(t, p)| (t, p.state))
    }

    /// Whether the participant of `tx` told the application it is blocked
    /// (and has not decided since).
    pub fn is_blocked(&self, tx: &TxId) -> bool {
        self.parts
            .get(tx)
            .is_some_and(|p| p.blocked && p.state == PartState::Ready)
    }

    // ---- helpers ----

    fn log(&mut self, record: LogRecord, what: Pending) {
        let token = self.out.persist(&record);
        self.pending.insert(token, what);
    }

    fn decision_msg(tx: &TxId, outcome: Vote) -> Message {
        match outcome {
            Vote::Commit => Message::GlobalCommit { tx: tx.clone() },
            Vote::Abort => Message::GlobalAbort { tx: tx.clone() },
        }
    }

    /// Coordinator: log the decision on `tx` (unless one is on its way).
    fn decide(&mut self, tx: &TxId, outcome: Vote, reply: Option<NodeId>) {
        let Some(c) = self.coords.get_mut(tx) else {
            return;
        };
        c.pending = true;
        let participants = c.participants.clone();
        self.log(
            LogRecord::Decision {
                tx: tx.clone(),
                outcome,
                participants,
            },
            Pending::Decision(tx.clone(), outcome, reply),
        );
    }

    /// Participant: log ABORT on `tx`, then do `then`.
    fn part_abort(&mut self, tx: &TxId, then: Then) {
        let Some(p) = self.parts.get_mut(tx) else {
            return;
        };
        p.pending = true;
        // The application hears of the abort if it heard of the
        // transaction (asked to prepare, or READY).
        let tell = p.asked || p.joined || p.state == PartState::Ready;
        let coordinator = p.coordinator;
        self.log(
            LogRecord::Abort {
                tx: tx.clone(),
                coordinator,
            },
            Pending::Abort(tx.clone(), then, tell),
        );
    }

    fn part_commit(&mut self, tx: &TxId) {
        let Some(p) = self.parts.get_mut(tx) else {
            return;
        };
        p.pending = true;
        let coordinator = p.coordinator;
        self.log(
            LogRecord::Commit {
                tx: tx.clone(),
                coordinator,
            },
            Pending::Commit(tx.clone()),
        );
    }

    /// Participant in READY: ask the coordinator and every other
    /// participant what they know; tell the application if blocked.
    fn ask(&mut self, now: Instant, tx: &TxId) {
        let Some(p) = self.parts.get_mut(tx) else {
            return;
        };
        let others: Vec<NodeId> = p
            .participants
            .iter()
            .copied()
            .filter(|&n| n != self.me)
            .collect();
        let coordinator = p.coordinator;
        let blocked_now = !p.blocked && others.iter().all(|n| p.ready.contains(n));
        if blocked_now {
            p.blocked = true;
        }
        let mut to = vec![coordinator];
        to.extend(others.into_iter().filter(|&n| n != coordinator));
        for n in to {
            self.stats.decision_requests += 1;
            self.out.send(
                n,
                Message::DecisionRequest {
                    tx: tx.clone(),
                    coordinator,
                },
            );
        }
        if blocked_now {
            self.stats.blocked += 1;
            self.out.event(Event::Blocked {
                tx: tx.clone(),
                coordinator,
            });
        }
        self.out
            .set_timer_after(Timer::Decision(tx.clone()), now, self.config.retry);
    }

    // ---- coordinator side ----

    fn begin(&mut self, tx: TxId, participants: Vec<NodeId>) {
        let distinct: BTreeSet<NodeId> = participants.iter().copied().collect();
        let reason = if self.coords.contains_key(&tx) {
            Some("this node already coordinates the transaction")
        } else if participants.is_empty() {
            Some("no participants")
        } else if participants.len() > MAX_PARTICIPANTS {
            Some("more participants than MAX_PARTICIPANTS")
        } else if distinct.len() != participants.len() {
            Some("a participant is named twice")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.stats.refused += 1;
            self.out.event(Event::Refused { tx, reason });
            return;
        }
        self.coords.insert(
            tx.clone(),
            Coord {
                state: CoordState::Init,
                participants: participants.clone(),
                votes: BTreeSet::new(),
                acked: BTreeSet::new(),
                pending: true,
                ended: false,
            },
        );
        self.log(
            LogRecord::Begin {
                tx: tx.clone(),
                participants,
            },
            Pending::Begin(tx),
        );
    }

    fn coord_message(&mut self, from: NodeId, msg: Message) {
        let tx = msg.tx().clone();
        if let Message::DecisionRequest { .. } = msg {
            return self.coord_decision_request(from, tx);
        }
        let Some(c) = self.coords.get_mut(&tx) else {
            self.stats.unknown_tx += 1;
            self.out.dropped();
            return;
        };
        if !c.participants.contains(&from) {
            self.stats.not_participant += 1;
            self.out.dropped();
            return;
        }
        if c.pending {
            self.stats.busy += 1;
            self.out.dropped();
            return;
        }
        match (msg, c.state) {
            (Message::VoteCommit { .. }, CoordState::Wait) => {
                if !c.votes.insert(from) {
                    self.stats.duplicates += 1;
                    self.out.dropped();
                } else if c.votes.len() == c.participants.len() {
                    self.decide(&tx, Vote::Commit, None);
                }
            }
            (Message::VoteAbort { .. }, CoordState::Wait) => {
                self.decide(&tx, Vote::Abort, None);
            }
            (Message::VoteCommit { .. } | Message::VoteAbort { .. }, _) => {
                // A vote resent for a repeated VOTE_REQUEST, after the
                // decision: the decision's own resends reach its sender.
                self.stats.late += 1;
                self.out.dropped();
            }
            (Message::Ack { .. }, CoordState::Commit | CoordState::Abort) => {
                if !c.acked.insert(from) {
                    self.stats.duplicates += 1;
                    self.out.dropped();
                } else if c.acked.len() == c.participants.len() && !c.ended {
                    c.pending = true;
                    self.out.cancel_timer(Timer::Resend(tx.clone()));
                    self.log(LogRecord::End { tx: tx.clone() }, Pending::End(tx));
                }
            }
            _ => {
                self.stats.wrong_phase += 1;
                self.out.dropped();
            }
        }
    }

    fn coord_decision_request(&mut self, from: NodeId, tx: TxId) {
        match self.coords.get(&tx) {
            None => {
                // Never began here (or BEGIN was lost in a crash, so no
                // VOTE_REQUEST went out): abort it, durably, so that a
                // later Begin of the same id is refused, then answer.
                self.coords.insert(
                    tx.clone(),
                    Coord {
                        state: CoordState::Init,
                        participants: Vec::new(),
                        votes: BTreeSet::new(),
                        acked: BTreeSet::new(),
                        pending: true,
                        ended: false,
                    },
                );
                self.stats.unknown_tx += 1;
                self.decide(&tx, Vote::Abort, Some(from));
            }
            Some(c) if c.pending => {
                self.stats.busy += 1;
                self.out.dropped();
            }
            Some(c) => {
                let state = match c.state {
                    CoordState::Commit => PeerState::Commit,
                    CoordState::Abort => PeerState::Abort,
                    // Undecided: nothing to tell; the asker asks again.
                    CoordState::Init | CoordState::Wait => return,
                };
                self.out.send(from, Message::State { tx, state });
            }
        }
    }

    // ---- participant side ----

    fn part_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        let tx = msg.tx().clone();
        match msg {
            Message::VoteRequest { participants, .. } => {
                self.vote_request(now, from, tx, participants)
            }
            Message::GlobalCommit { .. } | Message::GlobalAbort { .. } => {
                let commit = matches!(msg, Message::GlobalCommit { .. });
                let Some(p) = self.parts.get_mut(&tx) else {
                    if commit {
                        self.stats.unknown_tx += 1;
                        self.out.dropped();
                    } else {
                        // The coordinator aborted before our vote (or our
                        // VOTE_REQUEST) mattered: nothing to undo, but it
                        // resends until acknowledged.
                        self.stats.unknown_tx += 1;
                        self.out.send(from, Message::Ack { tx });
                    }
                    return;
                };
                if p.coordinator != from {
                    self.stats.wrong_coordinator += 1;
                    self.out.dropped();
                    return;
                }
                if p.pending {
                    self.stats.busy += 1;
                    self.out.dropped();
                    return;
                }
                match (p.state, commit) {
                    (PartState::Ready, true) => self.part_commit(&tx),
                    (PartState::Ready | PartState::Init, false) => self.part_abort(&tx, Then::Ack),
                    (PartState::Commit, true) | (PartState::Abort, false) => {
                        // Our ACK was lost, or we voted abort and this is
                        // the coordinator's GLOBAL_ABORT: ACK it.
                        self.stats.duplicates += 1;
                        self.out.send(from, Message::Ack { tx });
                    }
                    _ => {
                        // GLOBAL_COMMIT without our READY, or contradicting
                        // our state: not from an honest coordinator.
                        self.stats.wrong_phase += 1;
                        self.out.dropped();
                    }
                }
            }
            Message::DecisionRequest { coordinator, .. } => {
                let Some(p) = self.parts.get_mut(&tx) else {
                    // Never heard of it: abort it here first, so we never
                    // vote commit on it, then answer INIT.
                    self.parts.insert(
                        tx.clone(),
                        Part {
                            state: PartState::Init,
                            coordinator,
                            participants: Vec::new(),
                            pending: false,
                            asked: false,
                            joined: false,
                            ready: BTreeSet::new(),
                            blocked: false,
                        },
                    );
                    self.part_abort(&tx, Then::AnswerInit(from));
                    return;
                };
                if p.coordinator != coordinator {
                    self.stats.wrong_coordinator += 1;
                    self.out.dropped();
                    return;
                }
                if p.pending {
                    self.stats.busy += 1;
                    self.out.dropped();
                    return;
                }
                let state = match p.state {
                    PartState::Init => {
                        // The application hears of the abort once it is
                        // durable, with the answer.
                        return self.part_abort(&tx, Then::AnswerInit(from));
                    }
                    PartState::Ready => PeerState::Ready,
                    PartState::Commit => PeerState::Commit,
                    PartState::Abort => PeerState::Abort,
                };
                self.out.send(from, Message::State { tx, state });
            }
            Message::State { state, .. } => {
                let Some(p) = self.parts.get_mut(&tx) else {
                    self.stats.unknown_tx += 1;
                    self.out.dropped();
                    return;
                };
                if from != p.coordinator && !p.participants.contains(&from) {
                    self.stats.not_participant += 1;
                    self.out.dropped();
                    return;
                }
                if p.pending || p.state != PartState::Ready {
                    self.stats.late += 1;
                    self.out.dropped();
                    return;
                }
                match state {
                    PeerState::Commit => {
                        self.stats.terminated_cooperatively += 1;
                        self.part_commit(&tx);
                    }
                    PeerState::Abort | PeerState::Init => {
                        self.stats.terminated_cooperatively += 1;
                        self.part_abort(&tx, Then::Ack);
                    }
                    PeerState::Ready => {
                        p.ready.insert(from);
                    }
                }
            }
            Message::VoteCommit { .. } | Message::VoteAbort { .. } | Message::Ack { .. } => {
                // Coordinator messages to a node that does not coordinate
                // the transaction.
                self.stats.unknown_tx += 1;
                self.out.dropped();
            }
        }
    }

    fn vote_request(&mut self, now: Instant, from: NodeId, tx: TxId, participants: Vec<NodeId>) {
        let distinct: BTreeSet<NodeId> = participants.iter().copied().collect();
        if !participants.contains(&self.me) || distinct.len() != participants.len() {
            self.stats.not_participant += 1;
            self.out.dropped();
            return;
        }
        let Some(p) = self.parts.get_mut(&tx) else {
            self.parts.insert(
                tx.clone(),
                Part {
                    state: PartState::Init,
                    coordinator: from,
                    participants,
                    pending: false,
                    asked: true,
                    joined: false,
                    ready: BTreeSet::new(),
                    blocked: false,
                },
            );
            self.out
                .set_timer_after(Timer::Prepare(tx.clone()), now, self.config.prepare_timeout);
            self.out.event(Event::Prepare { tx });
            return;
        };
        if p.coordinator != from {
            self.stats.wrong_coordinator += 1;
            self.out.dropped();
            return;
        }
        if p.pending {
            self.stats.busy += 1;
            self.out.dropped();
            return;
        }
        match p.state {
            PartState::Init if p.asked => {
                // Already asked the application.
                self.stats.duplicates += 1;
                self.out.dropped();
            }
            PartState::Init => {
                // Joined, and now asked to vote.
                p.asked = true;
                p.participants = participants;
                self.out.set_timer_after(
                    Timer::Prepare(tx.clone()),
                    now,
                    self.config.prepare_timeout,
                );
                self.out.event(Event::Prepare { tx });
            }
            PartState::Ready => {
                // Our VOTE_COMMIT was lost (or we restarted before sending).
                self.stats.votes_resent += 1;
                self.out.retransmit(from, 0, Message::VoteCommit { tx });
            }
            PartState::Abort => {
                self.stats.votes_resent += 1;
                self.out.retransmit(from, 0, Message::VoteAbort { tx });
            }
            PartState::Commit => {
                self.stats.late += 1;
                self.out.dropped();
            }
        }
    }

    fn join(&mut self, now: Instant, tx: TxId, coordinator: NodeId) {
        if self.parts.contains_key(&tx) {
            self.stats.wrong_phase += 1;
            return;
        }
        self.parts.insert(
            tx.clone(),
            Part {
                state: PartState::Init,
                coordinator,
                participants: Vec::new(),
                pending: false,
                asked: false,
                joined: true,
                ready: BTreeSet::new(),
                blocked: false,
            },
        );
        self.out
            .set_timer_after(Timer::Prepare(tx), now, self.config.prepare_timeout);
    }

    fn voted(&mut self, tx: TxId, vote: Vote) {
        let Some(p) = self.parts.get_mut(&tx) else {
            self.stats.unknown_tx += 1;
            return;
        };
        if p.state != PartState::Init || !p.asked || p.pending {
            self.stats.wrong_phase += 1;
            return;
        }
        match vote {
            Vote::Commit => {
                p.pending = true;
                let record = LogRecord::Ready {
                    tx: tx.clone(),
                    coordinator: p.coordinator,
                    participants: p.participants.clone(),
                };
                self.log(record, Pending::Ready(tx));
            }
            Vote::Abort => self.part_abort(&tx, Then::VoteAbort),
        }
    }

    // ---- persisted ----

    fn durable(&mut self, now: Instant, what: Pending) {
        match what {
            Pending::Begin(tx) => {
                let Some(c) = self.coords.get_mut(&tx) else {
                    return;
                };
                c.pending = false;
                c.state = CoordState::Wait;
                let to = c.participants.clone();
                for n in to.iter().copied() {
                    self.out.send(
                        n,
                        Message::VoteRequest {
                            tx: tx.clone(),
                            participants: to.clone(),
                        },
                    );
                }
                self.out
                    .set_timer_after(Timer::Votes(tx.clone()), now, self.config.vote_timeout);
                self.out
                    .set_timer_after(Timer::Resend(tx), now, self.config.retry);
            }
            Pending::Decision(tx, outcome, reply) => {
                let Some(c) = self.coords.get_mut(&tx) else {
                    return;
                };
                c.pending = false;
                c.state = match outcome {
                    Vote::Commit => CoordState::Commit,
                    Vote::Abort => CoordState::Abort,
                };
                c.ended = c.participants.is_empty();
                let to = c.participants.clone();
                self.out.cancel_timer(Timer::Votes(tx.clone()));
                if !to.is_empty() {
                    self.out.event(Event::Decided {
                        tx: tx.clone(),
                        outcome,
                    });
                }
                for n in to.iter().copied() {
                    self.out.send(n, Self::decision_msg(&tx, outcome));
                }
                if let Some(asker) = reply {
                    let state = match outcome {
                        Vote::Commit => PeerState::Commit,
                        Vote::Abort => PeerState::Abort,
                    };
                    self.out.send(
                        asker,
                        Message::State {
                            tx: tx.clone(),
                            state,
                        },
                    );
                }
                if !to.is_empty() {
                    self.out
                        .set_timer_after(Timer::Resend(tx), now, self.config.retry);
                }
            }
            Pending::End(tx) => {
                if let Some(c) = self.coords.get_mut(&tx) {
                    c.pending = false;
                    c.ended = true;
                    self.out.event(Event::Finished { tx });
                }
            }
            Pending::Ready(tx) => {
                let Some(p) = self.parts.get_mut(&tx) else {
                    return;
                };
                p.pending = false;
                p.asked = false;
                p.state = PartState::Ready;
                let coordinator = p.coordinator;
                self.out.cancel_timer(Timer::Prepare(tx.clone()));
                self.out
                    .send(coordinator, Message::VoteCommit { tx: tx.clone() });
                self.out
                    .set_timer_after(Timer::Decision(tx), now, self.config.decision_timeout);
            }
            Pending::Commit(tx) => {
                let Some(p) = self.parts.get_mut(&tx) else {
                    return;
                };
                p.pending = false;
                p.state = PartState::Commit;
                let coordinator = p.coordinator;
                self.out.cancel_timer(Timer::Decision(tx.clone()));
                self.out.event(Event::Commit { tx: tx.clone() });
                self.out.send(coordinator, Message::Ack { tx });
            }
            Pending::Abort(tx, then, tell) => {
                let Some(p) = self.parts.get_mut(&tx) else {
                    return;
                };
                p.pending = false;
                p.asked = false;
                p.state = PartState::Abort;
                let coordinator = p.coordinator;
                self.out.cancel_timer(Timer::Prepare(tx.clone()));
                self.out.cancel_timer(Timer::Decision(tx.clone()));
                if tell {
                    self.out.event(Event::Abort { tx: tx.clone() });
                }
                match then {
                    Then::VoteAbort => self.out.send(coordinator, Message::VoteAbort { tx }),
                    Then::Ack => self.out.send(coordinator, Message::Ack { tx }),
                    Then::AnswerInit(asker) => self.out.send(
                        asker,
                        Message::State {
                            tx,
                            state: PeerState::Init,
                        },
                    ),
                }
            }
        }
    }
}

impl Protocol for TwoPhase {
    type Message = Message;
    type Input = Input;
    type Event = Event;
    type Timer = Timer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        self.out.received();
        match &msg {
            Message::VoteCommit { .. } | Message::VoteAbort { .. } | Message::Ack { .. } => {
                self.coord_message(from, msg)
            }
            Message::DecisionRequest { coordinator, .. } if *coordinator == self.me => {
                self.coord_message(from, msg)
            }
            _ => self.part_message(now, from, msg),
        }
    }

    fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Begin { tx, participants } => self.begin(tx, participants),
            Input::Join { tx, coordinator } => self.join(now, tx, coordinator),
            Input::Voted { tx, vote } => self.voted(tx, vote),
        }
    }

    fn handle_timer(&mut self, now: Instant, timer: Timer) {
        self.out.timer_fired();
        match timer {
            Timer::Votes(tx) => {
                if let Some(c) = self.coords.get(&tx)
                    && c.state == CoordState::Wait
                    && !c.pending
                {
                    self.stats.vote_timeouts += 1;
                    self.decide(&tx, Vote::Abort, None);
                }
            }
            Timer::Resend(tx) => {
                let Some(c) = self.coords.get(&tx) else {
                    return;
                };
                if c.pending || c.ended {
                    return;
                }
                let (msg, done) = match c.state {
                    CoordState::Wait => (
                        Message::VoteRequest {
                            tx: tx.clone(),
                            participants: c.participants.clone(),
                        },
                        &c.votes,
                    ),
                    CoordState::Commit => (Self::decision_msg(&tx, Vote::Commit), &c.acked),
                    CoordState::Abort => (Self::decision_msg(&tx, Vote::Abort), &c.acked),
                    CoordState::Init => return,
                };
                let wait = c.state == CoordState::Wait;
                let to: Vec<NodeId> = c
                    .participants
                    .iter()
                    .copied()
                    .filter(|n| !done.contains(n))
                    .collect();
                for n in to {
                    if wait {
                        self.stats.vote_requests_resent += 1;
                    } else {
                        self.stats.decisions_resent += 1;
                    }
                    self.out.retransmit(n, 0, msg.clone());
                }
                self.out
                    .set_timer_after(Timer::Resend(tx), now, self.config.retry);
            }
            Timer::Prepare(tx) => {
                if let Some(p) = self.parts.get(&tx)
                    && p.state == PartState::Init
                    && !p.pending
                {
                    self.stats.prepare_timeouts += 1;
                    self.part_abort(&tx, Then::VoteAbort);
                }
            }
            Timer::Decision(tx) => {
                if let Some(p) = self.parts.get(&tx)
                    && p.state == PartState::Ready
                    && !p.pending
                {
                    self.ask(now, &tx);
                }
            }
        }
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        let Persisted::Own(token) = self.out.persisted(token) else {
            return;
        };
        if let Some(what) = self.pending.remove(&token) {
            self.durable(now, what);
        }
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl Recover for TwoPhase {
    type Config = TwoPhaseConfig;

    fn recover(config: &TwoPhaseConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let records: Vec<LogRecord> = ctx.read()?;
        let mut core = TwoPhase {
            me: ctx.node,
            config: config.clone(),
            coords: BTreeMap::new(),
            parts: BTreeMap::new(),
            pending: BTreeMap::new(),
            stats: CommitStats::default(),
            out: Outbox::recovered(&ctx),
        };
        let bad = |tx: &TxId, what: &str| RecoveryError::Inconsistent(format!("{tx}: {what}"));
        for r in records {
            let commit = matches!(r, LogRecord::Commit { .. });
            match r {
                LogRecord::Begin { tx, participants } => {
                    if core.coords.contains_key(&tx) {
                        return Err(bad(&tx, "BEGIN logged twice"));
                    }
                    core.coords.insert(
                        tx,
                        Coord {
                            state: CoordState::Wait,
                            participants,
                            votes: BTreeSet::new(),
                            acked: BTreeSet::new(),
                            pending: false,
                            ended: false,
                        },
                    );
                }
                LogRecord::Decision {
                    tx,
                    outcome,
                    participants,
                } => {
                    let state = match outcome {
                        Vote::Commit => CoordState::Commit,
                        Vote::Abort => CoordState::Abort,
                    };
                    let c = core.coords.entry(tx.clone()).or_insert(Coord {
                        state: CoordState::Wait,
                        participants: participants.clone(),
                        votes: BTreeSet::new(),
                        acked: BTreeSet::new(),
                        pending: false,
                        ended: false,
                    });
                    if c.state != CoordState::Wait || c.participants != participants {
                        return Err(bad(&tx, "a second decision, or other participants"));
                    }
                    c.state = state;
                    c.ended = participants.is_empty();
                }
                LogRecord::End { tx } => match core.coords.get_mut(&tx) {
                    Some(c) if matches!(c.state, CoordState::Commit | CoordState::Abort) => {
                        c.ended = true
                    }
                    _ => return Err(bad(&tx, "END before a decision")),
                },
                LogRecord::Ready {
                    tx,
                    coordinator,
                    participants,
                } => {
                    if core.parts.contains_key(&tx) {
                        return Err(bad(&tx, "READY after another participant record"));
                    }
                    core.parts.insert(
                        tx,
                        Part {
                            state: PartState::Ready,
                            coordinator,
                            participants,
                            pending: false,
                            asked: false,
                            joined: false,
                            ready: BTreeSet::new(),
                            blocked: false,
                        },
                    );
                }
                LogRecord::Commit { tx, coordinator } | LogRecord::Abort { tx, coordinator } => {
                    let state = if commit {
                        PartState::Commit
                    } else {
                        PartState::Abort
                    };
                    match core.parts.get_mut(&tx) {
                        Some(p) if p.state == PartState::Ready && p.coordinator == coordinator => {
                            p.state = state
                        }
                        Some(p) if p.state == state => {}
                        Some(_) => return Err(bad(&tx, "COMMIT and ABORT both logged")),
                        None if commit => return Err(bad(&tx, "COMMIT without READY")),
                        None => {
                            core.parts.insert(
                                tx,
                                Part {
                                    state,
                                    coordinator,
                                    participants: Vec::new(),
                                    pending: false,
                                    asked: false,
                                    joined: false,
                                    ready: BTreeSet::new(),
                                    blocked: false,
                                },
                            );
                        }
                    }
                }
            }
        }
        let now = ctx.now;
        // Coordinator: WAIT aborts; a decision not known to be acknowledged
        // everywhere is sent again.
        let coords: Vec<(TxId, CoordState, bool)> = core
            .coords
            .iter()
            .map(|(t, c)| (t.clone(), c.state, c.ended))
            .collect();
        for (tx, state, ended) in coords {
            match state {
                CoordState::Wait => core.decide(&tx, Vote::Abort, None),
                CoordState::Commit | CoordState::Abort if !ended => {
                    let outcome = if state == CoordState::Commit {
                        Vote::Commit
                    } else {
                        Vote::Abort
                    };
                    // The application may not have heard the outcome
                    // before the crash: tell it again (idempotently).
                    core.out.event(Event::Decided {
                        tx: tx.clone(),
                        outcome,
                    });
                    let to = core.coords[&tx].participants.clone();
                    for n in to {
                        core.stats.decisions_resent += 1;
                        core.out.retransmit(n, 0, Self::decision_msg(&tx, outcome));
                    }
                    core.out
                        .set_timer_after(Timer::Resend(tx), now, core.config.retry);
                }
                _ => {}
            }
        }
        // Participant: READY asks at once; COMMIT and ABORT are entered
        // again (idempotently, by the application).
        let parts: Vec<(TxId, PartState)> = core
            .parts
            .iter()
            .map(|(t, p)| (t.clone(), p.state))
            .collect();
        for (tx, state) in parts {
            match state {
                PartState::Ready => core.ask(now, &tx),
                PartState::Commit => core.out.event(Event::Commit { tx }),
                PartState::Abort => core.out.event(Event::Abort { tx }),
                PartState::Init => {}
            }
        }
        Ok(core)
    }
}

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
//!   When every other participant has answered READY, or a whole round
//!   went by with no decision (all it reaches are READY; the others may be
//!   crashed or cut off), it is **blocked**: the application is told
//!   ([`Event::Blocked`], naming the transaction and the coordinator it
//!   waits on), once per life, and it keeps asking.
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
//! # Optimizations (switches in [`TwoPhaseConfig`])
//!
//! Counts for 3 participants, no failure and no loss, as the crash-free
//! runs of `tests/crash_points.rs` assert them ("writes" are forced log
//! writes: records the node waits for before it speaks, END included; a
//! snapshot every [`TwoPhaseConfig::snapshot_every`] records comes on top):
//!
//! | run | writes (coordinator + participants) | messages |
//! |---|---|---|
//! | plain, commit | 3 + 2·3 = 9 | 6 + 2·3 = 12 |
//! | plain, one votes abort | 3 + 2 + 2 + 1 = 8 | 6 + 2·3 = 12 |
//! | presumed abort, commit | 2 + 2·3 = 8 (no BEGIN) | 12 |
//! | presumed abort, one votes abort | 0 + 1 + 1 + 0 = 2 (3 ABORTs written unforced) | 5 + 1·3 = 8 |
//! | read-only, one of three read-only | 3 + 2 + 2 + 0 = 7 | 5 + 2 + 2 + 1 = 10 |
//! | read-only and presumed abort, one read-only | 2 + 2 + 2 + 0 = 6 | 10 |
//! | read-only, all three | 2 (BEGIN, decision) + 0 | 3 + 3 = 6 |
//! | read-only and presumed abort, all three | 0 | 6 |
//!
//! - **Presumed abort** ([`TwoPhaseConfig::presumed_abort`]): per committed
//!   transaction it saves the coordinator's BEGIN (1 forced write); per
//!   aborted one, the coordinator's BEGIN, abort decision and END (3
//!   writes), every participant's forced ABORT (written unforced instead),
//!   the ACKs of GLOBAL_ABORT (one per participant) and the GLOBAL_ABORT to
//!   participants that voted abort. What makes dropping BEGIN safe: a
//!   coordinator with no record of a transaction never sent GLOBAL_COMMIT
//!   for it (the commit decision is logged first), so "no record → ABORT"
//!   is a true answer; participants that were READY learn it by asking.
//!   What it costs: transaction ids must not be reused — a coordinator
//!   that crashed in WAIT cannot refuse a second `Begin` of the id (it
//!   refuses ids it still remembers); the ABORT a participant logs before
//!   answering INIT stays forced.
//! - **Read-only participants** ([`TwoPhaseConfig::read_only`],
//!   [`Input::VotedReadOnly`]): such a participant logs nothing (saves its
//!   2 forced writes), sends VOTE_READ_ONLY and leaves; the coordinator
//!   leaves it out of phase two (saves GLOBAL_COMMIT and ACK). All read-only
//!   → nothing to send; the decision needs no record under presumed abort,
//!   and only closes BEGIN without it. A read-only voter that crashed has
//!   forgotten its vote, so with the switch on a participant asked about a
//!   transaction it does not know stays silent instead of answering INIT.
//! - **Group commit of decision records**
//!   ([`TwoPhaseConfig::group_commit`]): while a decision record is being
//!   written, decisions queue; when it is durable they are written as one
//!   [`LogRecord::Decisions`]. No timer: a decision waits for at most one
//!   write. k decisions that meet one in flight cost 2 forced writes
//!   instead of k+1 (`tests/two_phase_opts.rs`: 64 decisions, 2 writes).
//!
//! # Heuristic outcomes
//!
//! A resource READY and blocked may decide on its own ([`Input::Heuristic`],
//! logged as [`LogRecord::Heuristic`]). The participant stays READY (it
//! answers READY when asked: its guess is not an outcome) and waits for the
//! decision. If the decision differs, it tells [`Event::Heuristic`] (XA's
//! HEURCOM / HEURRB) instead of Commit / Abort, and sends HEURISTIC_ACK,
//! which the coordinator takes as an ACK and reports to its application as
//! the same [`Event::Heuristic`]. Never hidden; told again after a restart.
//! A matching heuristic decision is a plain outcome.
//!
//! # Log compaction
//!
//! Every [`TwoPhaseConfig::snapshot_every`] records the node cuts a
//! [`LogRecord::Snapshot`] (live transactions, with the records in flight
//! applied, and the last [`TwoPhaseConfig::keep_finished`] outcomes per
//! role) and, once it is durable, asks for the log before it to be dropped
//! ([`Output::Compact`]). Logs and memory stay bounded; a restart tells
//! again only the outcomes logged after the last snapshot. See
//! [`crate::snapshot`] for what is kept, why a participant that forgot an
//! outcome stays silent rather than answering INIT, and what the window
//! assumes (unique ids, messages that do not outlive it).
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ft_core::{
    Counters, NodeId, Outbox, Output, PersistToken, Persisted, Protocol, Recover, RecoveryContext,
    RecoveryError,
};

use crate::snapshot::{SnapCoord, SnapPart, Snapshot};
use crate::wire::{DecisionEntry, LogRecord, MAX_PARTICIPANTS, Message, PeerState, TxId, Vote};

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
    /// **Presumed abort** (off by default, the subject's plain protocol;
    /// turn it on at every node). The coordinator logs no BEGIN and no
    /// abort decision, waits for no abort ACK and forgets an aborted
    /// transaction at once; asked about a transaction it knows nothing of,
    /// it answers ABORT without logging (the presumption: a commit is
    /// always logged before the first GLOBAL_COMMIT, so no record means no
    /// commit). Participants do not force their ABORT records (the vote or
    /// the state change does not wait for them) and send no ACK for
    /// GLOBAL_ABORT; the ABORT logged before answering INIT stays forced
    /// (it is what makes "INIT → abort" safe). Transaction ids must then
    /// never be reused: a coordinator that crashed in WAIT has no record
    /// of the id and cannot refuse a second `Begin` of it (it refuses ids
    /// it still remembers). See the module docs for the counts saved.
    pub presumed_abort: bool,
    /// **Read-only participants** (off by default; turn it on at every
    /// node). A participant whose application answers
    /// [`Input::VotedReadOnly`] logs nothing, sends VOTE_READ_ONLY and
    /// leaves. Because such a participant forgets its vote in a crash, a
    /// participant asked about a transaction it does not know stays silent
    /// instead of logging ABORT and answering INIT. With the switch off,
    /// `VotedReadOnly` is taken as a commit vote.
    pub read_only: bool,
    /// **Group commit of decision records** (off by default): while a
    /// decision record is being written, later decisions queue, and go to
    /// the log together, as one [`LogRecord::Decisions`], when it is
    /// durable. No timer is added: a decision waits at most one write.
    pub group_commit: bool,
    /// **Log compaction**: after this many records, write a
    /// [`LogRecord::Snapshot`] of what is still needed and ask for the log
    /// before it to be dropped. 0 turns compaction off.
    pub snapshot_every: u32,
    /// How many finished transactions, per role, a node keeps (in memory
    /// and in its snapshot) to answer late questions about them; older
    /// ones are dropped when a snapshot is cut (so never with compaction
    /// off, except read-only votes, which are only in memory). See
    /// [`crate::snapshot`] for why this is safe and what it assumes.
    pub keep_finished: usize,
}

impl Default for TwoPhaseConfig {
    /// 50 ms retries, 500 ms vote and prepare timeouts, 300 ms in READY
    /// before asking the others: values for a LAN and the simulator. No
    /// optimization on; a snapshot every 256 records, keeping the last 1024
    /// finished transactions per role.
    fn default() -> Self {
        TwoPhaseConfig {
            retry: Duration::from_millis(50),
            vote_timeout: Duration::from_millis(500),
            prepare_timeout: Duration::from_millis(500),
            decision_timeout: Duration::from_millis(300),
            presumed_abort: false,
            read_only: false,
            group_commit: false,
            snapshot_every: 256,
            keep_finished: 1024,
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
    /// The application's resource only read for `tx`: either outcome
    /// suits it (answering [`Event::Prepare`]). With
    /// [`TwoPhaseConfig::read_only`] the participant logs nothing, sends
    /// VOTE_READ_ONLY and leaves the transaction (no decision comes, no
    /// event follows); without it, this is [`Vote::Commit`]. A separate
    /// input rather than a third [`Vote`], because `Vote` is also an
    /// outcome, which can never be "read-only".
    VotedReadOnly {
        /// The transaction.
        tx: TxId,
    },
    /// The application's resource, READY on `tx` (typically blocked),
    /// decided `outcome` on its own, as XA resource managers may
    /// (heuristic commit or rollback). The participant logs it, stays
    /// READY and keeps waiting for the real decision; if that differs, it
    /// tells [`Event::Heuristic`] and reports it to the coordinator (a
    /// HEURISTIC_ACK), which tells its application the same. Refused
    /// (counted in [`CommitStats::wrong_phase`]) unless READY.
    Heuristic {
        /// The transaction.
        tx: TxId,
        /// What the resource decided.
        outcome: Vote,
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
    /// Participant and coordinator: a **heuristic outcome**: the resource
    /// of `participant` decided `heuristic` on its own
    /// ([`Input::Heuristic`]) and the transaction's outcome is the other
    /// one (XA's HEURCOM when `heuristic` is commit, HEURRB when abort;
    /// with others committed, the transaction as a whole is HEURMIX). Told
    /// at the participant (then `participant` is this node) when the
    /// decision arrives, and at the coordinator when its HEURISTIC_ACK
    /// does; again after a restart. Never hidden: the atomicity of `tx`
    /// is broken at `participant` and someone must repair it. (Under
    /// presumed abort the coordinator forgets an aborted transaction and
    /// does not resend GLOBAL_ABORT, so it may miss a HEURISTIC_ACK; the
    /// participant's own report stands.)
    Heuristic {
        /// The transaction.
        tx: TxId,
        /// The participant whose resource decided on its own.
        participant: NodeId,
        /// The transaction's outcome.
        outcome: Vote,
        /// What the resource decided.
        heuristic: Vote,
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
    /// Presumed abort: DECISION_REQUESTs about a transaction the
    /// coordinator does not know, answered ABORT without a record.
    pub presumed_aborts: u64,
    /// Records written without waiting for them (presumed abort's
    /// participant ABORT records): [`Counters::persists`] minus this is
    /// the number of forced writes.
    pub lazy_writes: u64,
    /// Coordinator: VOTE_READ_ONLYs received (first copies).
    pub read_only_votes: u64,
    /// Group commit: decision records written for decisions that waited
    /// behind another decision record (one record for all that waited).
    pub decision_batches: u64,
    /// Group commit: decisions written in those records. Forced writes
    /// saved: this minus [`decision_batches`](Self::decision_batches).
    pub decisions_batched: u64,
    /// Participant: heuristic decisions logged ([`Input::Heuristic`]).
    pub heuristic_decisions: u64,
    /// Heuristic outcomes told ([`Event::Heuristic`]), at either role.
    pub heuristic_outcomes: u64,
    /// Snapshot records written (log compaction).
    pub snapshots: u64,
    /// Finished transactions dropped from memory (and from the next
    /// snapshot) beyond [`TwoPhaseConfig::keep_finished`].
    pub forgotten: u64,
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
    /// Paxos Commit with compaction: phase 1a / 2a about a transaction an
    /// acceptor does not know, ignored because it has forgotten outcomes
    /// (see [`crate::paxos_snapshot`]).
    pub silent_unknown: u64,
    /// Paxos Commit with compaction: phase 1a / 2a answered with OUTCOME
    /// (the transaction's outcome is known here).
    pub outcome_answers: u64,
    /// Paxos Commit: phase 1a / 2a about a new transaction refused because
    /// the acceptor holds [`PaxosConfig::max_open`](crate::PaxosConfig::max_open)
    /// open transactions already.
    pub acceptor_full: u64,
}

/// Sums the counters of several nodes (or lives): `total += node.stats()`.
impl std::ops::AddAssign for CommitStats {
    fn add_assign(&mut self, other: CommitStats) {
        // Destructured so that a counter added to the struct and forgotten
        // here fails to compile.
        let CommitStats {
            unknown_tx: _,
            wrong_coordinator: _,
            not_participant: _,
            wrong_phase: _,
            duplicates: _,
            late: _,
            busy: _,
            refused: _,
            vote_requests_resent: _,
            votes_resent: _,
            decisions_resent: _,
            decision_requests: _,
            blocked: _,
            terminated_cooperatively: _,
            prepare_timeouts: _,
            vote_timeouts: _,
            presumed_aborts: _,
            lazy_writes: _,
            read_only_votes: _,
            decision_batches: _,
            decisions_batched: _,
            heuristic_decisions: _,
            heuristic_outcomes: _,
            snapshots: _,
            forgotten: _,
            forged_sender: _,
            stale_ballot: _,
            not_acceptor: _,
            leader_rounds: _,
            silent_unknown: _,
            outcome_answers: _,
            acceptor_full: _,
        } = other;
        self.unknown_tx += other.unknown_tx;
        self.wrong_coordinator += other.wrong_coordinator;
        self.not_participant += other.not_participant;
        self.wrong_phase += other.wrong_phase;
        self.duplicates += other.duplicates;
        self.late += other.late;
        self.busy += other.busy;
        self.refused += other.refused;
        self.vote_requests_resent += other.vote_requests_resent;
        self.votes_resent += other.votes_resent;
        self.decisions_resent += other.decisions_resent;
        self.decision_requests += other.decision_requests;
        self.blocked += other.blocked;
        self.terminated_cooperatively += other.terminated_cooperatively;
        self.prepare_timeouts += other.prepare_timeouts;
        self.vote_timeouts += other.vote_timeouts;
        self.presumed_aborts += other.presumed_aborts;
        self.lazy_writes += other.lazy_writes;
        self.read_only_votes += other.read_only_votes;
        self.decision_batches += other.decision_batches;
        self.decisions_batched += other.decisions_batched;
        self.heuristic_decisions += other.heuristic_decisions;
        self.heuristic_outcomes += other.heuristic_outcomes;
        self.snapshots += other.snapshots;
        self.forgotten += other.forgotten;
        self.forged_sender += other.forged_sender;
        self.stale_ballot += other.stale_ballot;
        self.not_acceptor += other.not_acceptor;
        self.leader_rounds += other.leader_rounds;
        self.silent_unknown += other.silent_unknown;
        self.outcome_answers += other.outcome_answers;
        self.acceptor_full += other.acceptor_full;
    }
}

#[derive(Debug)]
struct Coord {
    state: CoordState,
    /// Its participants; after the decision, those it must tell (the
    /// read-only voters left out).
    participants: Vec<NodeId>,
    /// Participants that voted commit or read-only.
    votes: BTreeSet<NodeId>,
    /// Participants that voted read-only.
    read_only: BTreeSet<NodeId>,
    /// Participants that voted abort.
    abort_votes: BTreeSet<NodeId>,
    acked: BTreeSet<NodeId>,
    /// Participants whose heuristic outcome was told.
    heuristics: BTreeSet<NodeId>,
    /// A record of this transaction is being logged (or its decision
    /// waits in the group-commit queue).
    pending: bool,
    ended: bool,
    /// Begun by the application (not an unknown transaction aborted when
    /// asked about): the application hears its decision.
    began: bool,
    /// Some record of it is in the log (so a snapshot must keep it).
    logged: bool,
}

impl Coord {
    fn new(state: CoordState, participants: Vec<NodeId>, pending: bool) -> Self {
        Coord {
            state,
            participants,
            votes: BTreeSet::new(),
            read_only: BTreeSet::new(),
            abort_votes: BTreeSet::new(),
            acked: BTreeSet::new(),
            heuristics: BTreeSet::new(),
            pending,
            ended: false,
            began: true,
            logged: true,
        }
    }
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
    /// DECISION_REQUEST rounds sent this life.
    rounds: u32,
    /// What the resource decided on its own while READY.
    heuristic: Option<Vote>,
}

impl Part {
    fn new(state: PartState, coordinator: NodeId, participants: Vec<NodeId>) -> Self {
        Part {
            state,
            coordinator,
            participants,
            pending: false,
            asked: false,
            joined: false,
            ready: BTreeSet::new(),
            blocked: false,
            rounds: 0,
            heuristic: None,
        }
    }
}

/// What to do once an abort record of a participant is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    VoteAbort,
    Ack,
    AnswerInit(NodeId),
}

/// One decision being logged: the transaction, its outcome, whom to tell,
/// and who asked (to answer once it is durable).
type Decision = (TxId, Vote, Vec<NodeId>, Option<NodeId>);

/// What a record in flight is for.
#[derive(Debug)]
enum Pending {
    Begin(TxId),
    Decisions(Vec<Decision>),
    End(TxId),
    Ready(TxId),
    Commit(TxId),
    Abort(TxId, Then, bool),
    /// A record nothing waits on (presumed abort's participant ABORT).
    Lazy(TxId),
    Heuristic(TxId, Vote),
    Snapshot,
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
    /// Group commit: a decision record is being written.
    decision_in_flight: bool,
    /// Group commit: decisions waiting for it.
    decision_queue: Vec<Decision>,
    /// Read-only votes given (nothing logged), with the coordinator.
    read_only: BTreeMap<TxId, NodeId>,
    /// Finished transactions, oldest first, per role and read-only votes:
    /// what [`TwoPhaseConfig::keep_finished`] bounds.
    finished_coords: VecDeque<TxId>,
    finished_parts: VecDeque<TxId>,
    finished_read_only: VecDeque<TxId>,
    /// A participant outcome was dropped (see [`crate::snapshot`]).
    forgotten: bool,
    /// Records written since the last snapshot.
    since_snapshot: u32,
    snapshot_in_flight: bool,
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

    /// The coordinator's state of `tx`, if this node coordinates it (and
    /// has not forgotten it, see [`TwoPhaseConfig::keep_finished`]).
    pub fn coordinator_state(&self, tx: &TxId) -> Option<CoordState> {
        self.coords.get(tx).map(|c| c.state)
    }

    /// The participant's state of `tx`, if this node takes part in it
    /// (and has not forgotten it, nor voted read-only on it).
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

    /// Whether this node voted read-only on `tx` (and left it).
    pub fn voted_read_only(&self, tx: &TxId) -> bool {
        self.read_only.contains_key(tx)
    }

    /// What this node's resource decided on its own for `tx`
    /// ([`Input::Heuristic`], durable), if it did and the node still
    /// remembers the transaction.
    pub fn heuristic(&self, tx: &TxId) -> Option<Vote> {
        self.parts.get(tx).and_then(|p| p.heuristic)
    }

    // ---- helpers ----

    fn log(&mut self, record: LogRecord, what: Pending) {
        let token = self.out.persist(&record);
        self.pending.insert(token, what);
        self.since_snapshot = self.since_snapshot.saturating_add(1);
    }

    fn decision_msg(tx: &TxId, outcome: Vote) -> Message {
        match outcome {
            Vote::Commit => Message::GlobalCommit { tx: tx.clone() },
            Vote::Abort => Message::GlobalAbort { tx: tx.clone() },
        }
    }

    fn peer_state(outcome: Vote) -> PeerState {
        match outcome {
            Vote::Commit => PeerState::Commit,
            Vote::Abort => PeerState::Abort,
        }
    }

    /// Coordinator: decide `tx`: log the decision (unless presumed abort
    /// or an all-read-only vote makes a record needless), or queue it
    /// behind the decision record in flight (group commit).
    fn decide(&mut self, now: Instant, tx: &TxId, outcome: Vote, reply: Option<NodeId>) {
        let pa = self.config.presumed_abort;
        let Some(c) = self.coords.get_mut(tx) else {
            return;
        };
        c.pending = true;
        let tell: Vec<NodeId> = c
            .participants
            .iter()
            .copied()
            .filter(|n| !c.read_only.contains(n))
            // Presumed abort: those that voted abort have aborted and
            // need not hear it (nor will they ACK).
            .filter(|n| !(pa && outcome == Vote::Abort && c.abort_votes.contains(n)))
            .collect();
        let unlogged_commit = pa && outcome == Vote::Commit && tell.is_empty() && c.began;
        if (pa && outcome == Vote::Abort) || unlogged_commit {
            // Presumed abort: no abort record; all read-only: nothing to
            // tell anyone, and (no BEGIN either) nothing to record.
            self.decision_durable(now, tx.clone(), outcome, tell, reply, false);
            return;
        }
        if self.config.group_commit && self.decision_in_flight {
            self.decision_queue.push((tx.clone(), outcome, tell, reply));
            return;
        }
        self.log_decisions(vec![(tx.clone(), outcome, tell, reply)], false);
    }

    /// Logs `batch` as one record; `queued`: it waited behind another
    /// decision record (group commit).
    fn log_decisions(&mut self, batch: Vec<Decision>, queued: bool) {
        if queued {
            self.stats.decision_batches += 1;
            self.stats.decisions_batched += batch.len() as u64;
        }
        let record = if let [(tx, outcome, participants, _)] = batch.as_slice() {
            LogRecord::Decision {
                tx: tx.clone(),
                outcome: *outcome,
                participants: participants.clone(),
            }
        } else {
            LogRecord::Decisions(
                batch
                    .iter()
                    .map(|(tx, outcome, participants, _)| DecisionEntry {
                        tx: tx.clone(),
                        outcome: *outcome,
                        participants: participants.clone(),
                    })
                    .collect(),
            )
        };
        self.decision_in_flight = self.config.group_commit;
        self.log(record, Pending::Decisions(batch));
    }

    /// Participant: log ABORT on `tx`, then do `then` (at once, under
    /// presumed abort, but before answering INIT).
    fn part_abort(&mut self, tx: &TxId, then: Then) {
        let Some(p) = self.parts.get_mut(tx) else {
            return;
        };
        // The application hears of the abort if it heard of the
        // transaction (asked to prepare, or READY).
        let tell = p.asked || p.joined || p.state == PartState::Ready;
        let coordinator = p.coordinator;
        let record = LogRecord::Abort {
            tx: tx.clone(),
            coordinator,
        };
        if self.config.presumed_abort && !matches!(then, Then::AnswerInit(_)) {
            // Not forced: if it is lost in a crash, the participant
            // recovers READY (and asks: ABORT, presumed) or knows nothing
            // (it had not voted commit).
            self.stats.lazy_writes += 1;
            self.log(record, Pending::Lazy(tx.clone()));
            self.part_aborted(tx.clone(), then, tell);
        } else {
            p.pending = true;
            self.log(record, Pending::Abort(tx.clone(), then, tell));
        }
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

    /// The acknowledgement of a participant holding `outcome` on `tx`:
    /// HEURISTIC_ACK if its resource decided otherwise; none for an abort
    /// under presumed abort (unless heuristic).
    fn ack(&self, tx: &TxId, outcome: Vote, heuristic: Option<Vote>) -> Option<Message> {
        match heuristic {
            Some(h) if h != outcome => Some(Message::HeuristicAck {
                tx: tx.clone(),
                heuristic: h,
            }),
            _ if outcome == Vote::Abort && self.config.presumed_abort => None,
            _ => Some(Message::Ack { tx: tx.clone() }),
        }
    }

    /// Tells the application the outcome of `tx` here: the outcome, or a
    /// heuristic outcome if its resource decided otherwise.
    fn tell_outcome(&mut self, tx: &TxId, outcome: Vote, heuristic: Option<Vote>) {
        match heuristic {
            Some(h) if h != outcome => {
                self.stats.heuristic_outcomes += 1;
                self.out.event(Event::Heuristic {
                    tx: tx.clone(),
                    participant: self.me,
                    outcome,
                    heuristic: h,
                });
            }
            _ => self.out.event(match outcome {
                Vote::Commit => Event::Commit { tx: tx.clone() },
                Vote::Abort => Event::Abort { tx: tx.clone() },
            }),
        }
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
        // Blocked when every other participant answered READY, or when a
        // whole round went by without a decision: everyone it reaches is
        // READY (those it cannot reach, crashed or cut off by a partition,
        // must not hide the block from the application).
        let blocked_now =
            !p.blocked && (p.rounds > 0 || others.iter().all(|n| p.ready.contains(n)));
        p.rounds += 1;
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

    // ---- bounded history and compaction ----

    /// Drops the oldest read-only votes beyond
    /// [`TwoPhaseConfig::keep_finished`] and, with `logged`, the oldest
    /// finished transactions, from memory. Logged ones are only dropped
    /// right before a snapshot is cut (which leaves them out): a
    /// transaction forgotten and then met again (a message older than the
    /// window) gets records after that snapshot, never beside its old ones.
    fn trim(&mut self, logged: bool) {
        let keep = self.config.keep_finished;
        while self.finished_read_only.len() > keep {
            let tx = self.finished_read_only.pop_front().expect("non-empty");
            self.read_only.remove(&tx);
            // A forgotten read-only vote is "unknown" like any other:
            // with read-only on, unknown transactions get no INIT answer.
        }
        if !logged {
            return;
        }
        while self.finished_coords.len() > keep {
            let tx = self.finished_coords.pop_front().expect("non-empty");
            if self.coords.get(&tx).is_some_and(|c| c.ended && !c.pending) {
                self.coords.remove(&tx);
                self.stats.forgotten += 1;
            }
        }
        while self.finished_parts.len() > keep {
            let tx = self.finished_parts.pop_front().expect("non-empty");
            if self.parts.get(&tx).is_some_and(|p| {
                !p.pending && matches!(p.state, PartState::Commit | PartState::Abort)
            }) {
                self.parts.remove(&tx);
                self.forgotten = true;
                self.stats.forgotten += 1;
            }
        }
    }

    /// Writes a snapshot if enough records were written since the last
    /// one. Called at the end of every `handle_*`, when the state is
    /// whole.
    fn maybe_snapshot(&mut self) {
        self.trim(false);
        let every = self.config.snapshot_every;
        if every == 0 || self.snapshot_in_flight || self.since_snapshot < every {
            return;
        }
        self.trim(true);
        let snap = self.snapshot();
        self.stats.snapshots += 1;
        self.snapshot_in_flight = true;
        self.log(LogRecord::Snapshot(snap), Pending::Snapshot);
        self.since_snapshot = 0;
    }

    /// What the log says now: the state of every transaction, with the
    /// records in flight applied (they come before the snapshot in the
    /// log, and the snapshot replaces them).
    fn snapshot(&self) -> Snapshot {
        // The effect of the records in flight, per transaction.
        // Per transaction: (decision, whom to tell, ended).
        type CoordNext<'a> = (Option<Vote>, Option<&'a Vec<NodeId>>, bool);
        let mut coord_next: BTreeMap<&TxId, CoordNext<'_>> = BTreeMap::new();
        let mut part_next: BTreeMap<&TxId, (Option<Vote>, Option<Vote>)> = BTreeMap::new();
        let mut part_ready: BTreeSet<&TxId> = BTreeSet::new();
        for what in self.pending.values() {
            match what {
                Pending::Begin(tx) => {
                    coord_next.entry(tx).or_insert((None, None, false));
                }
                Pending::Decisions(batch) => {
                    for (tx, outcome, tell, _) in batch {
                        let e = coord_next.entry(tx).or_insert((None, None, false));
                        e.0 = Some(*outcome);
                        e.1 = Some(tell);
                        e.2 = tell.is_empty();
                    }
                }
                Pending::End(tx) => {
                    coord_next.entry(tx).or_insert((None, None, false)).2 = true;
                }
                Pending::Ready(tx) => {
                    part_ready.insert(tx);
                }
                Pending::Commit(tx) => {
                    part_next.entry(tx).or_default().0 = Some(Vote::Commit);
                }
                Pending::Abort(tx, ..) | Pending::Lazy(tx) => {
                    part_next.entry(tx).or_default().0 = Some(Vote::Abort);
                }
                Pending::Heuristic(tx, h) => {
                    part_next.entry(tx).or_default().1 = Some(*h);
                }
                Pending::Snapshot => {}
            }
        }
        let mut snap = Snapshot {
            forgotten: self.forgotten,
            ..Snapshot::default()
        };
        for (tx, c) in &self.coords {
            let next = coord_next.get(tx);
            if !c.logged && next.is_none() {
                // Presumed abort: nothing of it in the log; absence says
                // ABORT.
                continue;
            }
            let outcome = match c.state {
                CoordState::Commit => Some(Vote::Commit),
                CoordState::Abort => Some(Vote::Abort),
                _ => next.and_then(|n| n.0),
            };
            let participants = next.and_then(|n| n.1).unwrap_or(&c.participants).clone();
            snap.coords.push(SnapCoord {
                tx: tx.clone(),
                outcome,
                participants,
                ended: c.ended || next.is_some_and(|n| n.2),
            });
        }
        for (tx, p) in &self.parts {
            let next = part_next.get(tx).copied().unwrap_or_default();
            let told = matches!(p.state, PartState::Commit | PartState::Abort) && !p.pending;
            let outcome = match p.state {
                PartState::Commit => Some(Vote::Commit),
                PartState::Abort => Some(Vote::Abort),
                PartState::Ready => next.0,
                PartState::Init if next.0.is_some() => next.0,
                PartState::Init if part_ready.contains(tx) => None,
                // Not voted: nothing logged.
                PartState::Init => continue,
            };
            snap.parts.push(SnapPart {
                tx: tx.clone(),
                outcome,
                coordinator: p.coordinator,
                participants: p.participants.clone(),
                heuristic: p.heuristic.or(next.1),
                told,
            });
        }
        snap
    }

    fn coord_finished(&mut self, tx: &TxId) {
        self.finished_coords.push_back(tx.clone());
    }

    fn part_finished(&mut self, tx: &TxId) {
        self.finished_parts.push_back(tx.clone());
    }

    // ---- coordinator side ----

    fn begin(&mut self, now: Instant, tx: TxId, participants: Vec<NodeId>) {
        let distinct: BTreeSet<NodeId> = participants.iter().copied().collect();
        let reason = if self.coords.contains_key(&tx) {
            Some("this node already coordinates the transaction (ids must not be reused)")
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
        if self.config.presumed_abort {
            // No BEGIN: a coordinator that crashes in WAIT forgets the
            // transaction, and answers ABORT when asked about it.
            let mut c = Coord::new(CoordState::Init, participants, false);
            c.logged = false;
            self.coords.insert(tx.clone(), c);
            self.begun(now, tx);
            return;
        }
        self.coords.insert(
            tx.clone(),
            Coord::new(CoordState::Init, participants.clone(), true),
        );
        self.log(
            LogRecord::Begin {
                tx: tx.clone(),
                participants,
            },
            Pending::Begin(tx),
        );
    }

    /// Coordinator: WAIT; send VOTE_REQUEST.
    fn begun(&mut self, now: Instant, tx: TxId) {
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

    fn coord_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        let tx = msg.tx().clone();
        if let Message::DecisionRequest { .. } = msg {
            return self.coord_decision_request(now, from, tx);
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
        if let Message::HeuristicAck { heuristic, .. } = msg
            && let Some(outcome) = match c.state {
                CoordState::Commit => Some(Vote::Commit),
                CoordState::Abort => Some(Vote::Abort),
                _ => None,
            }
            && heuristic != outcome
            && c.heuristics.insert(from)
        {
            // Told before anything else: even if the ACK part is a
            // duplicate or the transaction ended (presumed abort).
            self.stats.heuristic_outcomes += 1;
            self.out.event(Event::Heuristic {
                tx: tx.clone(),
                participant: from,
                outcome,
                heuristic,
            });
        }
        if c.pending {
            self.stats.busy += 1;
            self.out.dropped();
            return;
        }
        let read_only = matches!(msg, Message::VoteReadOnly { .. });
        match (msg, c.state) {
            (Message::VoteCommit { .. } | Message::VoteReadOnly { .. }, CoordState::Wait) => {
                if !c.votes.insert(from) {
                    self.stats.duplicates += 1;
                    self.out.dropped();
                    return;
                }
                if read_only {
                    self.stats.read_only_votes += 1;
                    c.read_only.insert(from);
                }
                if c.votes.len() == c.participants.len() {
                    self.decide(now, &tx, Vote::Commit, None);
                }
            }
            (Message::VoteAbort { .. }, CoordState::Wait) => {
                c.abort_votes.insert(from);
                self.decide(now, &tx, Vote::Abort, None);
            }
            (
                Message::VoteCommit { .. }
                | Message::VoteAbort { .. }
                | Message::VoteReadOnly { .. },
                _,
            ) => {
                // A vote resent for a repeated VOTE_REQUEST, after the
                // decision: the decision's own resends reach its sender.
                self.stats.late += 1;
                self.out.dropped();
            }
            (
                Message::Ack { .. } | Message::HeuristicAck { .. },
                CoordState::Commit | CoordState::Abort,
            ) => {
                if c.ended || !c.acked.insert(from) {
                    self.stats.duplicates += 1;
                    self.out.dropped();
                } else if c.acked.len() == c.participants.len() {
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

    fn coord_decision_request(&mut self, now: Instant, from: NodeId, tx: TxId) {
        match self.coords.get(&tx) {
            None if self.config.presumed_abort => {
                // The presumption: no record of a commit, so it did not
                // commit (it was never begun here, or crashed in WAIT, or
                // aborted and forgot).
                self.stats.unknown_tx += 1;
                self.stats.presumed_aborts += 1;
                self.out.send(
                    from,
                    Message::State {
                        tx,
                        state: PeerState::Abort,
                    },
                );
            }
            None => {
                // Never began here (or BEGIN was lost in a crash, so no
                // VOTE_REQUEST went out): abort it, durably, so that a
                // later Begin of the same id is refused, then answer.
                let mut c = Coord::new(CoordState::Init, Vec::new(), true);
                c.began = false;
                self.coords.insert(tx.clone(), c);
                self.stats.unknown_tx += 1;
                self.decide(now, &tx, Vote::Abort, Some(from));
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
        if !matches!(msg, Message::VoteRequest { .. })
            && !self.parts.contains_key(&tx)
            && let Some(&coordinator) = self.read_only.get(&tx)
        {
            // We voted read-only and left: we know nothing of the outcome.
            match msg {
                Message::DecisionRequest { coordinator: c, .. } if c == coordinator => {
                    self.out.send(
                        from,
                        Message::State {
                            tx,
                            state: PeerState::Ready,
                        },
                    );
                }
                // A coordinator that crashed in WAIT forgot our read-only
                // vote and aborts: let it finish (as for an unknown
                // transaction).
                Message::GlobalAbort { .. }
                    if from == coordinator && !self.config.presumed_abort =>
                {
                    self.stats.late += 1;
                    self.out.send(from, Message::Ack { tx });
                }
                _ => {
                    self.stats.late += 1;
                    self.out.dropped();
                }
            }
            return;
        }
        match msg {
            Message::VoteRequest { participants, .. } => {
                self.vote_request(now, from, tx, participants)
            }
            Message::GlobalCommit { .. } | Message::GlobalAbort { .. } => {
                let commit = matches!(msg, Message::GlobalCommit { .. });
                let Some(p) = self.parts.get_mut(&tx) else {
                    self.stats.unknown_tx += 1;
                    if commit && self.forgotten {
                        // A commit needs our READY, which we keep until we
                        // hold the outcome: we committed it and forgot it
                        // (the coordinator missed our ACK).
                        self.out.send(from, Message::Ack { tx });
                    } else if commit || self.config.presumed_abort {
                        self.out.dropped();
                    } else {
                        // The coordinator aborted before our vote (or our
                        // VOTE_REQUEST) mattered: nothing to undo, but it
                        // resends until acknowledged.
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
                        let outcome = if commit { Vote::Commit } else { Vote::Abort };
                        let heuristic = p.heuristic;
                        match self.ack(&tx, outcome, heuristic) {
                            Some(m) => self.out.send(from, m),
                            None => self.out.dropped(),
                        }
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
                    if self.config.read_only || self.forgotten {
                        // It may be a transaction we voted read-only on,
                        // or whose outcome we dropped: we cannot promise
                        // we never voted. Silence; the asker asks the
                        // coordinator.
                        self.stats.unknown_tx += 1;
                        self.out.dropped();
                        return;
                    }
                    // Never heard of it: abort it here first, so we never
                    // vote commit on it, then answer INIT.
                    self.parts.insert(
                        tx.clone(),
                        Part::new(PartState::Init, coordinator, Vec::new()),
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
                    // With a heuristic decision too: this node does not
                    // know the outcome, and must not spread its guess.
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
            Message::VoteCommit { .. }
            | Message::VoteAbort { .. }
            | Message::Ack { .. }
            | Message::VoteReadOnly { .. }
            | Message::HeuristicAck { .. } => {
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
        if let Some(&coordinator) = self.read_only.get(&tx) {
            if coordinator == from {
                // Our VOTE_READ_ONLY was lost.
                self.stats.votes_resent += 1;
                self.out.retransmit(from, 0, Message::VoteReadOnly { tx });
            } else {
                self.stats.wrong_coordinator += 1;
                self.out.dropped();
            }
            return;
        }
        let Some(p) = self.parts.get_mut(&tx) else {
            let mut p = Part::new(PartState::Init, from, participants);
            p.asked = true;
            self.parts.insert(tx.clone(), p);
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
        if self.parts.contains_key(&tx) || self.read_only.contains_key(&tx) {
            self.stats.wrong_phase += 1;
            return;
        }
        let mut p = Part::new(PartState::Init, coordinator, Vec::new());
        p.joined = true;
        self.parts.insert(tx.clone(), p);
        self.out
            .set_timer_after(Timer::Prepare(tx), now, self.config.prepare_timeout);
    }

    fn voted(&mut self, tx: TxId, vote: Option<Vote>) {
        let Some(p) = self.parts.get_mut(&tx) else {
            self.stats.unknown_tx += 1;
            return;
        };
        if p.state != PartState::Init || !p.asked || p.pending {
            self.stats.wrong_phase += 1;
            return;
        }
        match vote {
            None if self.config.read_only => {
                // Read-only: nothing to log (nothing to commit or undo),
                // and the participant leaves the transaction.
                let coordinator = p.coordinator;
                self.parts.remove(&tx);
                self.read_only.insert(tx.clone(), coordinator);
                self.finished_read_only.push_back(tx.clone());
                self.out.cancel_timer(Timer::Prepare(tx.clone()));
                self.out.send(coordinator, Message::VoteReadOnly { tx });
            }
            None | Some(Vote::Commit) => {
                p.pending = true;
                let record = LogRecord::Ready {
                    tx: tx.clone(),
                    coordinator: p.coordinator,
                    participants: p.participants.clone(),
                };
                self.log(record, Pending::Ready(tx));
            }
            Some(Vote::Abort) => self.part_abort(&tx, Then::VoteAbort),
        }
    }

    fn decide_heuristically(&mut self, tx: TxId, outcome: Vote) {
        let Some(p) = self.parts.get_mut(&tx) else {
            self.stats.unknown_tx += 1;
            return;
        };
        if p.state != PartState::Ready || p.pending || p.heuristic.is_some() {
            self.stats.wrong_phase += 1;
            return;
        }
        p.pending = true;
        self.log(
            LogRecord::Heuristic {
                tx: tx.clone(),
                heuristic: outcome,
            },
            Pending::Heuristic(tx, outcome),
        );
    }

    // ---- persisted ----

    /// Coordinator: the decision on `tx` is durable (or needs no record).
    fn decision_durable(
        &mut self,
        now: Instant,
        tx: TxId,
        outcome: Vote,
        tell: Vec<NodeId>,
        reply: Option<NodeId>,
        logged: bool,
    ) {
        let Some(c) = self.coords.get_mut(&tx) else {
            return;
        };
        c.pending = false;
        c.logged |= logged;
        c.state = match outcome {
            Vote::Commit => CoordState::Commit,
            Vote::Abort => CoordState::Abort,
        };
        // Presumed abort waits for no abort ACK; nobody to tell, nothing
        // to wait for.
        c.ended = tell.is_empty() || !logged;
        c.participants = tell.clone();
        let (began, ended) = (c.began, c.ended);
        self.out.cancel_timer(Timer::Votes(tx.clone()));
        if began {
            self.out.event(Event::Decided {
                tx: tx.clone(),
                outcome,
            });
        }
        for n in tell.iter().copied() {
            self.out.send(n, Self::decision_msg(&tx, outcome));
        }
        if let Some(asker) = reply {
            self.out.send(
                asker,
                Message::State {
                    tx: tx.clone(),
                    state: Self::peer_state(outcome),
                },
            );
        }
        if ended {
            self.out.cancel_timer(Timer::Resend(tx.clone()));
            if began {
                self.out.event(Event::Finished { tx: tx.clone() });
            }
            self.coord_finished(&tx);
        } else {
            self.out
                .set_timer_after(Timer::Resend(tx), now, self.config.retry);
        }
    }

    /// Participant: ABORT on `tx` (durable, or not waited for).
    fn part_aborted(&mut self, tx: TxId, then: Then, tell: bool) {
        let pa = self.config.presumed_abort;
        let Some(p) = self.parts.get_mut(&tx) else {
            return;
        };
        p.pending = false;
        p.asked = false;
        p.state = PartState::Abort;
        let coordinator = p.coordinator;
        let heuristic = p.heuristic;
        self.out.cancel_timer(Timer::Prepare(tx.clone()));
        self.out.cancel_timer(Timer::Decision(tx.clone()));
        self.part_finished(&tx);
        if tell {
            self.tell_outcome(&tx, Vote::Abort, heuristic);
        }
        match then {
            Then::VoteAbort => self.out.send(coordinator, Message::VoteAbort { tx }),
            Then::Ack => {
                if let Some(m) = self.ack(&tx, Vote::Abort, heuristic) {
                    self.out.send(coordinator, m);
                } else {
                    debug_assert!(pa, "only presumed abort sends no ACK");
                }
            }
            Then::AnswerInit(asker) => self.out.send(
                asker,
                Message::State {
                    tx,
                    state: PeerState::Init,
                },
            ),
        }
    }

    fn durable(&mut self, now: Instant, what: Pending) {
        match what {
            Pending::Begin(tx) => self.begun(now, tx),
            Pending::Decisions(batch) => {
                for (tx, outcome, tell, reply) in batch {
                    self.decision_durable(now, tx, outcome, tell, reply, true);
                }
                self.decision_in_flight = false;
                if !self.decision_queue.is_empty() {
                    // Group commit: everything decided meanwhile, in one
                    // forced write.
                    let batch = std::mem::take(&mut self.decision_queue);
                    self.log_decisions(batch, true);
                }
            }
            Pending::End(tx) => {
                if let Some(c) = self.coords.get_mut(&tx) {
                    c.pending = false;
                    c.ended = true;
                    self.out.event(Event::Finished { tx: tx.clone() });
                    self.coord_finished(&tx);
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
                let heuristic = p.heuristic;
                self.out.cancel_timer(Timer::Decision(tx.clone()));
                self.part_finished(&tx);
                self.tell_outcome(&tx, Vote::Commit, heuristic);
                if let Some(m) = self.ack(&tx, Vote::Commit, heuristic) {
                    self.out.send(coordinator, m);
                }
            }
            Pending::Abort(tx, then, tell) => self.part_aborted(tx, then, tell),
            Pending::Lazy(_) => {}
            Pending::Heuristic(tx, outcome) => {
                if let Some(p) = self.parts.get_mut(&tx) {
                    p.pending = false;
                    p.heuristic = Some(outcome);
                    self.stats.heuristic_decisions += 1;
                }
            }
            Pending::Snapshot => {
                // Everything before it is in it: drop it.
                self.snapshot_in_flight = false;
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
            Message::VoteCommit { .. }
            | Message::VoteAbort { .. }
            | Message::VoteReadOnly { .. }
            | Message::Ack { .. }
            | Message::HeuristicAck { .. } => self.coord_message(now, from, msg),
            Message::DecisionRequest { coordinator, .. } if *coordinator == self.me => {
                self.coord_message(now, from, msg)
            }
            _ => self.part_message(now, from, msg),
        }
        self.maybe_snapshot();
    }

    fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Begin { tx, participants } => self.begin(now, tx, participants),
            Input::Join { tx, coordinator } => self.join(now, tx, coordinator),
            Input::Voted { tx, vote } => self.voted(tx, Some(vote)),
            Input::VotedReadOnly { tx } => self.voted(tx, None),
            Input::Heuristic { tx, outcome } => self.decide_heuristically(tx, outcome),
        }
        self.maybe_snapshot();
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
                    self.decide(now, &tx, Vote::Abort, None);
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
        self.maybe_snapshot();
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        let Persisted::Own(token) = self.out.persisted(token) else {
            return;
        };
        if let Some(what) = self.pending.remove(&token) {
            let snapshot = matches!(what, Pending::Snapshot);
            self.durable(now, what);
            if snapshot {
                self.out.compact(token);
            }
        }
        self.maybe_snapshot();
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
            decision_in_flight: false,
            decision_queue: Vec::new(),
            read_only: BTreeMap::new(),
            finished_coords: VecDeque::new(),
            finished_parts: VecDeque::new(),
            finished_read_only: VecDeque::new(),
            forgotten: false,
            since_snapshot: 0,
            snapshot_in_flight: false,
        };
        // Outcomes the application was told before the last snapshot: not
        // told again.
        let mut told: BTreeSet<TxId> = BTreeSet::new();
        let bad = |tx: &TxId, what: &str| RecoveryError::Inconsistent(format!("{tx}: {what}"));
        let apply_decision = |core: &mut TwoPhase,
                              tx: TxId,
                              outcome: Vote,
                              participants: Vec<NodeId>|
         -> Result<(), RecoveryError> {
            let c = core.coords.entry(tx.clone()).or_insert(Coord::new(
                CoordState::Wait,
                participants.clone(),
                false,
            ));
            if c.state != CoordState::Wait
                || !participants.iter().all(|n| c.participants.contains(n))
            {
                return Err(bad(&tx, "a second decision, or other participants"));
            }
            c.state = match outcome {
                Vote::Commit => CoordState::Commit,
                Vote::Abort => CoordState::Abort,
            };
            c.participants = participants;
            c.ended = c.participants.is_empty();
            if c.ended {
                core.finished_coords.push_back(tx);
            }
            Ok(())
        };
        for r in records {
            let commit = matches!(r, LogRecord::Commit { .. });
            match r {
                LogRecord::Begin { tx, participants } => {
                    if core.coords.contains_key(&tx) {
                        return Err(bad(&tx, "BEGIN logged twice"));
                    }
                    core.coords
                        .insert(tx, Coord::new(CoordState::Wait, participants, false));
                }
                LogRecord::Decision {
                    tx,
                    outcome,
                    participants,
                } => apply_decision(&mut core, tx, outcome, participants)?,
                LogRecord::Decisions(batch) => {
                    for d in batch {
                        apply_decision(&mut core, d.tx, d.outcome, d.participants)?;
                    }
                }
                LogRecord::End { tx } => match core.coords.get_mut(&tx) {
                    Some(c) if matches!(c.state, CoordState::Commit | CoordState::Abort) => {
                        if !c.ended {
                            c.ended = true;
                            core.finished_coords.push_back(tx);
                        }
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
                    core.parts
                        .insert(tx, Part::new(PartState::Ready, coordinator, participants));
                }
                LogRecord::Heuristic { tx, heuristic } => match core.parts.get_mut(&tx) {
                    Some(p) if p.state == PartState::Ready && p.heuristic.is_none() => {
                        p.heuristic = Some(heuristic)
                    }
                    _ => return Err(bad(&tx, "a heuristic decision outside READY")),
                },
                LogRecord::Commit { tx, coordinator } | LogRecord::Abort { tx, coordinator } => {
                    let state = if commit {
                        PartState::Commit
                    } else {
                        PartState::Abort
                    };
                    match core.parts.get_mut(&tx) {
                        Some(p) if p.state == PartState::Ready && p.coordinator == coordinator => {
                            p.state = state;
                            core.finished_parts.push_back(tx);
                        }
                        Some(p) if p.state == state => {}
                        Some(_) => return Err(bad(&tx, "COMMIT and ABORT both logged")),
                        None if commit => return Err(bad(&tx, "COMMIT without READY")),
                        None => {
                            core.parts
                                .insert(tx.clone(), Part::new(state, coordinator, Vec::new()));
                            core.finished_parts.push_back(tx);
                        }
                    }
                }
                LogRecord::Snapshot(snap) => {
                    // Everything before it is in it.
                    core.coords.clear();
                    core.parts.clear();
                    core.finished_coords.clear();
                    core.finished_parts.clear();
                    told.clear();
                    core.forgotten = snap.forgotten;
                    for s in snap.coords {
                        let state = match s.outcome {
                            None => CoordState::Wait,
                            Some(Vote::Commit) => CoordState::Commit,
                            Some(Vote::Abort) => CoordState::Abort,
                        };
                        let mut c = Coord::new(state, s.participants, false);
                        c.ended = s.ended;
                        if s.ended {
                            core.finished_coords.push_back(s.tx.clone());
                        }
                        core.coords.insert(s.tx, c);
                    }
                    for s in snap.parts {
                        let state = match s.outcome {
                            None => PartState::Ready,
                            Some(Vote::Commit) => PartState::Commit,
                            Some(Vote::Abort) => PartState::Abort,
                        };
                        let mut p = Part::new(state, s.coordinator, s.participants);
                        p.heuristic = s.heuristic;
                        if s.outcome.is_some() {
                            core.finished_parts.push_back(s.tx.clone());
                            if s.told {
                                told.insert(s.tx.clone());
                            }
                        }
                        core.parts.insert(s.tx, p);
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
                CoordState::Wait => core.decide(now, &tx, Vote::Abort, None),
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
        // again (idempotently, by the application), unless the snapshot
        // says it was told.
        let parts: Vec<(TxId, PartState, Option<Vote>)> = core
            .parts
            .iter()
            .map(|(t, p)| (t.clone(), p.state, p.heuristic))
            .collect();
        for (tx, state, heuristic) in parts {
            match state {
                PartState::Ready => core.ask(now, &tx),
                _ if told.contains(&tx) => {}
                PartState::Commit => core.tell_outcome(&tx, Vote::Commit, heuristic),
                PartState::Abort => core.tell_outcome(&tx, Vote::Abort, heuristic),
                PartState::Init => {}
            }
        }
        Ok(core)
    }
}

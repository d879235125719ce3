//! The three-phase commit core: [`ThreePhase`], one per node, coordinating
//! the transactions it begins and taking part in those it is asked to vote
//! on.
//!
//! # The protocol (the subject's 3PC)
//!
//! - **Coordinator** INIT → (log WAIT) → WAIT, VOTE_REQUEST to all; any
//!   VOTE_ABORT or the vote timeout → (log ABORT) → ABORT, GLOBAL_ABORT;
//!   all VOTE_COMMIT → (log PRECOMMIT) → PRECOMMIT, PREPARE_COMMIT to all;
//!   all READY_COMMIT → (log COMMIT) → COMMIT, GLOBAL_COMMIT.
//! - **Participant** INIT, VOTE_REQUEST → [`Event::Prepare`], the
//!   application answers [`Input::Voted`]: commit → (log READY) → READY,
//!   VOTE_COMMIT; abort (or the INIT timeout) → (log ABORT) → ABORT,
//!   VOTE_ABORT. READY, PREPARE_COMMIT → (log PRECOMMIT) → PRECOMMIT,
//!   READY_COMMIT. GLOBAL_COMMIT → (log COMMIT) → COMMIT; GLOBAL_ABORT →
//!   (log ABORT) → ABORT.
//!
//! Persist before speak, as in 2PC: every state change is a [`Record3`] and
//! takes effect (state, events, sends) only once it is durable.
//!
//! # Termination (participants time out)
//!
//! A participant in READY or PRECOMMIT without a decision after
//! [`ThreePhaseConfig::decision_timeout`] runs an **election by rounds**:
//! round `r` elects the `r`-th participant in id order (mod their number),
//! and every further timeout moves to the next round. So the lowest-id
//! participant acts first, and if it is down the next one takes over one
//! timeout later: in effect the lowest *live* participant (deterministic,
//! no messages). The elected one sends STATE_REQUEST to the others and to
//! the original coordinator (when it is not a participant), collects
//! answers for [`ThreePhaseConfig::collect`], and decides by the subject's
//! rules over its own state and the participants' answers:
//!
//! - any ABORT → abort (GLOBAL_ABORT to all); any COMMIT → commit;
//! - any PRECOMMIT → log PRECOMMIT itself if READY, send PREPARE_COMMIT to
//!   every participant that answered, and commit once each of them sent
//!   READY_COMMIT;
//! - all READY or INIT → abort.
//!
//! A participant asked in INIT (or about a transaction it never heard of)
//! logs ABORT before answering INIT, so it can no longer vote commit.
//!
//! The original coordinator, asked, answers only with what it decided: a
//! COMMIT or ABORT decides the termination at once. Asked in WAIT it logs
//! ABORT first (and sends GLOBAL_ABORT), so it can no longer log PRECOMMIT
//! beside an abort the asker decides. In PRECOMMIT it does not answer: that
//! PRECOMMIT may be older than an ABORT decided by termination (it crashed
//! before PREPARE_COMMIT went out), so it must not push anyone towards
//! commit. It is never collected as a participant, never sent
//! PREPARE_COMMIT by a termination coordinator.
//!
//! The timing relations safety rests on (`decision_timeout` >
//! `vote_timeout`, `collect` < `decision_timeout`, `retry` > 0) are checked
//! by [`ThreePhaseConfig::validate`]; recovery refuses a config that breaks
//! them.
//!
//! # Where this deviates from the textbook, and the honest limits
//!
//! - The coordinator in PRECOMMIT does **not** commit on a timeout (the
//!   textbook lets it); it resends PREPARE_COMMIT and waits, and takes an
//!   outcome a participant reports (a STATE answer of COMMIT or ABORT).
//!   Participants that time out terminate without it.
//! - No ACKs and no END record: a participant that missed the decision
//!   times out and terminates with the others.
//! - 3PC is only non-blocking *and safe* under the subject's synchrony
//!   assumptions: crashes detected reliably, messages delivered within the
//!   timeouts, no partitions. Two termination coordinators at once (a slow
//!   rather than crashed one) can decide differently. This is the known
//!   limit of 3PC, shown by `tests/partition.rs`: under a partition a
//!   PRECOMMIT participant commits on its side while the READY ones abort
//!   on theirs (2PC, in the same scenario, blocks and stays safe). And a
//!   PRECOMMIT participant that missed a GLOBAL_ABORT and terminates with
//!   no one else reachable, the original coordinator included, commits
//!   (`tests/three_phase_open_risk.rs`).
//!
//! # Recovery
//!
//! The last record of each transaction (per role) is its state. A
//! coordinator in WAIT aborts (safe: it never logged PRECOMMIT, so no one
//! can be in PRECOMMIT and no termination can commit); one in PRECOMMIT
//! resends PREPARE_COMMIT and waits for every READY_COMMIT or a reported
//! outcome; one in COMMIT / ABORT tells [`Event::Decided`] and sends the
//! decision again. A participant in READY or PRECOMMIT starts termination
//! after its timeout; COMMIT / ABORT are told again (idempotently).
//!
//! # Log compaction
//!
//! With compaction on (off by default, see below), every
//! [`ThreePhaseConfig::snapshot_every`] records the node cuts a
//! [`Record3::Snapshot`] ([`Snapshot3`]: every live transaction, with the
//! records in flight applied, and the last
//! [`ThreePhaseConfig::keep_finished`] decided ones per role) and, once it
//! is durable, asks for the log before it to be dropped
//! ([`Output::Compact`]). Older decided transactions leave memory at that
//! moment (never between snapshots: a forgotten id met again then gets
//! records after the snapshot, never beside its old ones), and only those
//! with no record in flight and no termination running. So the log holds
//! at most a snapshot and `snapshot_every` records after it, and the tables
//! `keep_finished` + `snapshot_every` decided transactions per role plus
//! the live ones, however long the history. A restart tells the
//! application again only the outcomes logged after the snapshot (each
//! entry says whether it was `told`), and resends only those decisions.
//! Snapshots appeared in record version 2; version 1 logs are still read.
//!
//! **What a node that forgot says.** Asked by a STATE_REQUEST about a
//! transaction it does not know, a node normally logs ABORT and answers
//! INIT: "I cannot have voted commit". Once it has dropped *any* outcome
//! (`forgotten`, kept in the snapshot) it can no longer tell "never heard
//! of" from "forgotten", and if the forgotten outcome was COMMIT, INIT
//! (and the ABORT logged before it) would contradict it: a READY asker
//! that sees only READY and INIT aborts beside a commit. So it stays
//! **silent**: no record, no entry, no answer (counted in
//! [`CommitStats::unknown_tx`]). The same silence covers the original
//! coordinator: asked about a transaction it still holds it answers as
//! above (WAIT: logs ABORT; COMMIT / ABORT: its outcome; PRECOMMIT:
//! nothing); about one it forgot, its coordinator side does not know it
//! and its participant side is silent. This also bounds a flood of forged
//! STATE_REQUESTs: each logs an ABORT only until the first of those ABORTs
//! is forgotten, after which they cost nothing.
//!
//! The termination rules still terminate: a silent node counts as
//! unreachable. The collect timer decides with the answers it has, and
//! only nodes that answered are sent PREPARE_COMMIT and waited for.
//!
//! **What the window assumes.** A node that forgot a transaction looks,
//! for that transaction, like a crashed one, and 3PC's termination is safe
//! with crashed nodes only while some node that knows the outcome answers
//! (the subject's assumption; `tests/three_phase_open_risk.rs` shows what
//! happens when none does). Most askers are safe alone: one in PRECOMMIT
//! when the outcome is COMMIT commits, one in READY when it is ABORT
//! aborts. The exceptions are participants that a termination did not
//! reach: one still READY beside a COMMIT decided by a termination (it
//! was down), or still PRECOMMIT beside an ABORT. Such a participant must
//! come back and ask before the nodes that decided have finished
//! `keep_finished` later transactions (`tests/three_phase_compaction.rs`
//! shows one that does not, and aborts beside a commit); as in 2PC,
//! transaction ids must be unique and messages must not outlive the
//! window. 2PC needs no such bound for a participant that was down,
//! because its coordinator forgets a decision only once every participant
//! acknowledged it; this 3PC has no acknowledgements (see above), so no
//! node knows when every participant holds the outcome. That is why
//! compaction is **off by default** here (`snapshot_every` 0: nothing is
//! forgotten, and log and memory grow with history, a flood of forged
//! STATE_REQUESTs included); turn it on where the window holds.
//!
//! Inputs and events are those of the 2PC core ([`Input`], [`Event`]);
//! `Blocked`, `Finished` are never told here. Ignored messages are counted
//! in [`CommitStats`] (`decision_requests` counts STATE_REQUESTs sent,
//! `terminated_cooperatively` the transactions decided by termination).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{
    Counters, NodeId, Outbox, Output, PersistToken, Persisted, Protocol, Record, Recover,
    RecoveryContext, RecoveryError,
};

use crate::two_phase::{CommitStats, Event, Input};
use crate::wire::{MAX_PARTICIPANTS, TxId, Vote, get_nodes, put_nodes};

/// Timeouts of a [`ThreePhase`] node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreePhaseConfig {
    /// Resend period (VOTE_REQUEST, PREPARE_COMMIT to nodes that have not
    /// answered).
    pub retry: Duration,
    /// Coordinator in WAIT: abort after this.
    pub vote_timeout: Duration,
    /// Participant in INIT: abort if the application has not voted.
    pub prepare_timeout: Duration,
    /// Participant in READY / PRECOMMIT: time per election round. Must
    /// exceed `vote_timeout` (see [`Default`]; checked by
    /// [`validate`](Self::validate)).
    pub decision_timeout: Duration,
    /// Termination coordinator: how long it collects states. Must be
    /// shorter than `decision_timeout`.
    pub collect: Duration,
    /// **Log compaction**: after this many records, write a
    /// [`Record3::Snapshot`] of what is still needed and ask for the log
    /// before it to be dropped. 0 (the default) turns compaction off, and
    /// with it all forgetting: memory and log then grow with history.
    ///
    /// Off by default, unlike 2PC's: forgetting in 3PC rests on an extra
    /// assumption, that a participant left undecided by a termination that
    /// did not reach it comes back and asks within the window (see [Log
    /// compaction](self#log-compaction)). Turn it on where that holds:
    /// `keep_finished` well above the transactions a node finishes while
    /// a peer may be down.
    pub snapshot_every: u32,
    /// How many finished transactions, per role, a node keeps (in memory
    /// and in its snapshot) to answer late questions about them; older
    /// ones are dropped when a snapshot is cut. See [Log
    /// compaction](self#log-compaction) for what this window assumes.
    pub keep_finished: usize,
}

/// Why a [`ThreePhaseConfig`] is refused ([`ThreePhaseConfig::validate`];
/// [`ThreePhase`]'s `recover` refuses such a config too).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ThreePhaseConfigError {
    /// `decision_timeout` is not longer than `vote_timeout`: a participant
    /// could start termination (and abort, all READY) while its live
    /// coordinator still waits for a late vote and then logs PRECOMMIT.
    #[error(
        "decision_timeout {decision_timeout:?} must exceed vote_timeout {vote_timeout:?} \
         (an election round must outlast the coordinator's wait for votes)"
    )]
    ElectionRoundTooShort {
        /// The configured `decision_timeout`.
        decision_timeout: Duration,
        /// The configured `vote_timeout`.
        vote_timeout: Duration,
    },
    /// `collect` is not shorter than `decision_timeout`: the next elected
    /// participant could start while this one still collects, and two
    /// termination coordinators could decide differently.
    #[error("collect {collect:?} must be shorter than decision_timeout {decision_timeout:?}")]
    CollectTooLong {
        /// The configured `collect`.
        collect: Duration,
        /// The configured `decision_timeout`.
        decision_timeout: Duration,
    },
    /// `retry` is zero: resends would run without end at one instant.
    #[error("retry must be longer than zero")]
    ZeroRetry,
}

impl ThreePhaseConfig {
    /// Checks the timing relations 3PC's safety rests on: `retry` > 0,
    /// `decision_timeout` > `vote_timeout` (a live coordinator has aborted
    /// or logged PRECOMMIT before any participant runs termination), and
    /// `collect` < `decision_timeout` (one termination coordinator at a
    /// time). The fields stay public; [`ThreePhase`]'s `recover` calls this
    /// and refuses a bad config as [`RecoveryError::Inconsistent`], so no
    /// node runs with one.
    pub fn validate(&self) -> Result<(), ThreePhaseConfigError> {
        if self.retry.is_zero() {
            return Err(ThreePhaseConfigError::ZeroRetry);
        }
        if self.decision_timeout <= self.vote_timeout {
            return Err(ThreePhaseConfigError::ElectionRoundTooShort {
                decision_timeout: self.decision_timeout,
                vote_timeout: self.vote_timeout,
            });
        }
        if self.collect >= self.decision_timeout {
            return Err(ThreePhaseConfigError::CollectTooLong {
                collect: self.collect,
                decision_timeout: self.decision_timeout,
            });
        }
        Ok(())
    }
}

impl Default for ThreePhaseConfig {
    /// 50 ms retries, 500 ms vote and prepare timeouts, 700 ms per election
    /// round, 100 ms to collect states; compaction off (`snapshot_every`
    /// 0; `keep_finished` 1024 once it is turned on). Keep
    /// `decision_timeout` above
    /// `vote_timeout`: a live coordinator then has decided or logged
    /// PRECOMMIT before any participant starts termination (a READY
    /// participant that aborts by termination while the coordinator still
    /// waits for a late vote and then precommits breaks atomicity; found by
    /// the sweep, seed 1290, with 300 ms).
    fn default() -> Self {
        ThreePhaseConfig {
            retry: Duration::from_millis(50),
            vote_timeout: Duration::from_millis(500),
            prepare_timeout: Duration::from_millis(500),
            decision_timeout: Duration::from_millis(700),
            collect: Duration::from_millis(100),
            snapshot_every: 0,
            keep_finished: 1024,
        }
    }
}

/// A 3PC coordinator's state for one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordState3 {
    /// WAIT is being logged.
    Init,
    /// Collecting votes.
    Wait,
    /// Every participant voted commit; PREPARE_COMMIT sent.
    PreCommit,
    /// Decided commit.
    Commit,
    /// Decided abort.
    Abort,
}

/// A 3PC participant's state for one transaction (also its answer to a
/// STATE_REQUEST).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartState3 {
    /// Not voted.
    Init,
    /// Voted commit.
    Ready,
    /// Got PREPARE_COMMIT.
    PreCommit,
    /// Committed.
    Commit,
    /// Aborted.
    Abort,
}

impl PartState3 {
    fn tag(self) -> u8 {
        self as u8
    }
    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        Ok(match tag {
            0 => PartState3::Init,
            1 => PartState3::Ready,
            2 => PartState3::PreCommit,
            3 => PartState3::Commit,
            4 => PartState3::Abort,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "PartState3",
                    tag,
                });
            }
        })
    }
}

impl CoordState3 {
    fn tag(self) -> u8 {
        self as u8
    }
    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        Ok(match tag {
            1 => CoordState3::Wait,
            2 => CoordState3::PreCommit,
            3 => CoordState3::Commit,
            4 => CoordState3::Abort,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "CoordState3",
                    tag,
                });
            }
        })
    }
}

/// The three-phase commit messages (names from the subject where it has
/// them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message3 {
    /// Coordinator → participant: vote, with every participant listed.
    VoteRequest {
        /// The transaction.
        tx: TxId,
        /// Its participants.
        participants: Vec<NodeId>,
    },
    /// Participant → coordinator: READY is durable.
    VoteCommit {
        /// The transaction.
        tx: TxId,
    },
    /// Participant → coordinator: it aborted.
    VoteAbort {
        /// The transaction.
        tx: TxId,
    },
    /// (Termination) coordinator → participant: move to PRECOMMIT.
    PrepareCommit {
        /// The transaction.
        tx: TxId,
    },
    /// Participant → (termination) coordinator: PRECOMMIT is durable.
    ReadyCommit {
        /// The transaction.
        tx: TxId,
    },
    /// Commit.
    GlobalCommit {
        /// The transaction.
        tx: TxId,
    },
    /// Abort.
    GlobalAbort {
        /// The transaction.
        tx: TxId,
    },
    /// Termination coordinator → participant: what is your state?
    StateRequest {
        /// The transaction.
        tx: TxId,
        /// The original coordinator.
        coordinator: NodeId,
    },
    /// The answer to a STATE_REQUEST (or to a PREPARE_COMMIT that came
    /// after the decision).
    State {
        /// The transaction.
        tx: TxId,
        /// The sender's participant state.
        state: PartState3,
    },
}

impl Message3 {
    /// The transaction the message is about.
    pub fn tx(&self) -> &TxId {
        match self {
            Message3::VoteRequest { tx, .. }
            | Message3::VoteCommit { tx }
            | Message3::VoteAbort { tx }
            | Message3::PrepareCommit { tx }
            | Message3::ReadyCommit { tx }
            | Message3::GlobalCommit { tx }
            | Message3::GlobalAbort { tx }
            | Message3::StateRequest { tx, .. }
            | Message3::State { tx, .. } => tx,
        }
    }

    fn global(tx: &TxId, outcome: Vote) -> Message3 {
        match outcome {
            Vote::Commit => Message3::GlobalCommit { tx: tx.clone() },
            Vote::Abort => Message3::GlobalAbort { tx: tx.clone() },
        }
    }
}

impl Wire for Message3 {
    fn encode(&self, buf: &mut BytesMut) {
        let tag = match self {
            Message3::VoteRequest { .. } => 1,
            Message3::VoteCommit { .. } => 2,
            Message3::VoteAbort { .. } => 3,
            Message3::PrepareCommit { .. } => 4,
            Message3::ReadyCommit { .. } => 5,
            Message3::GlobalCommit { .. } => 6,
            Message3::GlobalAbort { .. } => 7,
            Message3::StateRequest { .. } => 8,
            Message3::State { .. } => 9,
        };
        buf.put_u8(tag);
        self.tx().encode(buf);
        match self {
            Message3::VoteRequest { participants, .. } => put_nodes(buf, participants),
            Message3::StateRequest { coordinator, .. } => coordinator.encode(buf),
            Message3::State { state, .. } => buf.put_u8(state.tag()),
            _ => {}
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        if !(1..=9).contains(&tag) {
            return Err(DecodeError::UnknownTag {
                what: "Message3",
                tag,
            });
        }
        let tx = TxId::decode(buf)?;
        Ok(match tag {
            1 => Message3::VoteRequest {
                tx,
                participants: get_nodes(buf)?,
            },
            2 => Message3::VoteCommit { tx },
            3 => Message3::VoteAbort { tx },
            4 => Message3::PrepareCommit { tx },
            5 => Message3::ReadyCommit { tx },
            6 => Message3::GlobalCommit { tx },
            7 => Message3::GlobalAbort { tx },
            8 => Message3::StateRequest {
                tx,
                coordinator: NodeId::decode(buf)?,
            },
            _ => Message3::State {
                tx,
                state: PartState3::from_tag(wire::get_u8(buf)?)?,
            },
        })
    }
}

/// What a [`ThreePhase`] node logs: the new state of one transaction in one
/// role. The last record of a transaction (per role) is its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record3 {
    /// Coordinator state.
    Coord {
        /// The transaction.
        tx: TxId,
        /// WAIT, PRECOMMIT, COMMIT or ABORT.
        state: CoordState3,
        /// Its participants.
        participants: Vec<NodeId>,
    },
    /// Participant state.
    Part {
        /// The transaction.
        tx: TxId,
        /// READY, PRECOMMIT, COMMIT or ABORT.
        state: PartState3,
        /// Its coordinator.
        coordinator: NodeId,
        /// Its participants (empty if unknown).
        participants: Vec<NodeId>,
    },
    /// Log compaction: everything the node still needs; every record
    /// before it can be dropped (written from record version 2 on).
    Snapshot(Snapshot3),
}

impl Wire for Record3 {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            Record3::Coord {
                tx,
                state,
                participants,
            } => {
                buf.put_u8(1);
                tx.encode(buf);
                buf.put_u8(state.tag());
                put_nodes(buf, participants);
            }
            Record3::Part {
                tx,
                state,
                coordinator,
                participants,
            } => {
                buf.put_u8(2);
                tx.encode(buf);
                buf.put_u8(state.tag());
                coordinator.encode(buf);
                put_nodes(buf, participants);
            }
            Record3::Snapshot(snap) => {
                buf.put_u8(3);
                snap.encode(buf);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match wire::get_u8(buf)? {
            1 => Ok(Record3::Coord {
                tx: TxId::decode(buf)?,
                state: CoordState3::from_tag(wire::get_u8(buf)?)?,
                participants: get_nodes(buf)?,
            }),
            2 => Ok(Record3::Part {
                tx: TxId::decode(buf)?,
                state: PartState3::from_tag(wire::get_u8(buf)?)?,
                coordinator: NodeId::decode(buf)?,
                participants: get_nodes(buf)?,
            }),
            3 => Ok(Record3::Snapshot(Snapshot3::decode(buf)?)),
            tag => Err(DecodeError::UnknownTag {
                what: "Record3",
                tag,
            }),
        }
    }
}

impl Record for Record3 {
    /// 2 added [`Record3::Snapshot`]; the other records are encoded as in
    /// version 1, which is still read.
    const VERSION: u8 = 2;

    fn reads(version: u8) -> bool {
        version == 1 || version == 2
    }
}

/// The most entries (per role) a [`Snapshot3`] may hold: bounds what a
/// corrupt record can make recovery allocate.
pub const MAX_SNAPSHOT3_ENTRIES: usize = 1 << 20;

/// A coordinator's transaction in a [`Snapshot3`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap3Coord {
    /// The transaction.
    pub tx: TxId,
    /// WAIT, PRECOMMIT, COMMIT or ABORT (never INIT: nothing logged).
    pub state: CoordState3,
    /// Its participants.
    pub participants: Vec<NodeId>,
    /// The application was told the decision before the snapshot was
    /// written: a restart does not tell it again.
    pub told: bool,
}

/// A participant's transaction in a [`Snapshot3`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap3Part {
    /// The transaction.
    pub tx: TxId,
    /// READY, PRECOMMIT, COMMIT or ABORT (never INIT: nothing logged).
    pub state: PartState3,
    /// Its coordinator.
    pub coordinator: NodeId,
    /// Its participants (empty if unknown).
    pub participants: Vec<NodeId>,
    /// The application was told the outcome before the snapshot was
    /// written: a restart does not tell it again.
    pub told: bool,
}

/// What a [`ThreePhase`] node still needs of its log
/// ([`Record3::Snapshot`]): every live transaction and the last
/// [`ThreePhaseConfig::keep_finished`] finished ones per role. See [Log
/// compaction](self#log-compaction).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot3 {
    /// Coordinator side.
    pub coords: Vec<Snap3Coord>,
    /// Participant side.
    pub parts: Vec<Snap3Part>,
    /// Some outcome was dropped: do not answer a STATE_REQUEST about an
    /// unknown transaction.
    pub forgotten: bool,
}

fn get_bool(buf: &mut Bytes) -> Result<bool, DecodeError> {
    match wire::get_u8(buf)? {
        0 => Ok(false),
        1 => Ok(true),
        tag => Err(DecodeError::UnknownTag { what: "bool", tag }),
    }
}

fn get_len(buf: &mut Bytes, min_entry: usize) -> Result<usize, DecodeError> {
    let len = wire::get_u32(buf)? as usize;
    if len > MAX_SNAPSHOT3_ENTRIES {
        return Err(DecodeError::Oversized {
            len,
            max: MAX_SNAPSHOT3_ENTRIES,
        });
    }
    // Each entry takes at least `min_entry` bytes: a short buffer fails
    // here, before anything is allocated.
    wire::need(buf, len * min_entry)?;
    Ok(len)
}

impl Wire for Snapshot3 {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.forgotten));
        buf.put_u32_le(self.coords.len() as u32);
        for c in &self.coords {
            c.tx.encode(buf);
            buf.put_u8(c.state.tag());
            put_nodes(buf, &c.participants);
            buf.put_u8(u8::from(c.told));
        }
        buf.put_u32_le(self.parts.len() as u32);
        for p in &self.parts {
            p.tx.encode(buf);
            buf.put_u8(p.state.tag());
            p.coordinator.encode(buf);
            put_nodes(buf, &p.participants);
            buf.put_u8(u8::from(p.told));
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let forgotten = get_bool(buf)?;
        let n = get_len(buf, 5)?;
        let mut coords = Vec::with_capacity(n);
        for _ in 0..n {
            coords.push(Snap3Coord {
                tx: TxId::decode(buf)?,
                state: CoordState3::from_tag(wire::get_u8(buf)?)?,
                participants: get_nodes(buf)?,
                told: get_bool(buf)?,
            });
        }
        let n = get_len(buf, 13)?;
        let mut parts = Vec::with_capacity(n);
        for _ in 0..n {
            let tx = TxId::decode(buf)?;
            let state = match wire::get_u8(buf)? {
                // INIT is never logged, so never in a snapshot.
                0 => {
                    return Err(DecodeError::UnknownTag {
                        what: "Snap3Part state",
                        tag: 0,
                    });
                }
                tag => PartState3::from_tag(tag)?,
            };
            parts.push(Snap3Part {
                tx,
                state,
                coordinator: NodeId::decode(buf)?,
                participants: get_nodes(buf)?,
                told: get_bool(buf)?,
            });
        }
        Ok(Snapshot3 {
            coords,
            parts,
            forgotten,
        })
    }
}

/// The named timers of a [`ThreePhase`] node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer3 {
    /// Coordinator: vote timeout in WAIT.
    Votes(TxId),
    /// Coordinator: resend VOTE_REQUEST / PREPARE_COMMIT.
    Resend(TxId),
    /// Participant: INIT timeout.
    Prepare(TxId),
    /// Participant: READY / PRECOMMIT without a decision: next election
    /// round.
    Decision(TxId),
    /// Termination coordinator: stop collecting and decide (then: resend
    /// PREPARE_COMMIT).
    Collect(TxId),
}

#[derive(Debug)]
struct Coord {
    state: CoordState3,
    participants: Vec<NodeId>,
    votes: BTreeSet<NodeId>,
    readies: BTreeSet<NodeId>,
    pending: bool,
    /// Recovered in PRECOMMIT: only asks the participants (STATE_REQUEST)
    /// and takes their outcome; never pushes PREPARE_COMMIT.
    asking: bool,
}

#[derive(Debug)]
enum Term {
    /// Collecting states.
    Collecting(BTreeMap<NodeId, PartState3>),
    /// Moving the nodes that answered (`reached`) to PRECOMMIT.
    PreCommitting {
        reached: BTreeSet<NodeId>,
        acks: BTreeSet<NodeId>,
    },
}

#[derive(Debug)]
struct Part {
    state: PartState3,
    coordinator: NodeId,
    participants: Vec<NodeId>,
    pending: bool,
    asked: bool,
    round: usize,
    term: Option<Term>,
}

#[derive(Debug)]
enum Pending {
    Coord(TxId, CoordState3),
    Part(TxId, PartState3, Vec<(NodeId, Message3)>),
    Snapshot,
}

/// A three-phase commit node. See the [module docs](self).
#[derive(Debug)]
pub struct ThreePhase {
    me: NodeId,
    config: ThreePhaseConfig,
    coords: BTreeMap<TxId, Coord>,
    parts: BTreeMap<TxId, Part>,
    pending: BTreeMap<PersistToken, Pending>,
    stats: CommitStats,
    out: Outbox<ThreePhase>,
    /// Decided transactions per role, oldest first: what
    /// [`ThreePhaseConfig::keep_finished`] bounds.
    finished_coords: VecDeque<TxId>,
    finished_parts: VecDeque<TxId>,
    /// Some outcome was dropped: unknown transactions get no answer.
    forgotten: bool,
    /// Records written since the last snapshot.
    since_snapshot: u32,
    snapshot_in_flight: bool,
}

impl ThreePhase {
    /// This node.
    pub fn node(&self) -> NodeId {
        self.me
    }

    /// Counters of ignored messages and of termination.
    pub fn stats(&self) -> CommitStats {
        self.stats
    }

    /// The coordinator's state of `tx`.
    pub fn coordinator_state(&self, tx: &TxId) -> Option<CoordState3> {
        self.coords.get(tx).map(|c| c.state)
    }

    /// The participant's state of `tx`.
    pub fn participant_state(&self, tx: &TxId) -> Option<PartState3> {
        self.parts.get(tx).map(|p| p.state)
    }

    /// Every transaction this node takes part in, with its state.
    pub fn participating(&self) -> impl Iterator<Item = (&TxId, PartState3)> {
        self.parts.iter().map(|(t, p)| (t, p.state))
    }

    /// Every transaction this node coordinates, with its state.
    pub fn coordinated(&self) -> impl Iterator<Item = (&TxId, CoordState3)> {
        self.coords.iter().map(|(t, c)| (t, c.state))
    }

    /// Whether this node runs termination for `tx` as elected coordinator.
    pub fn is_terminating(&self, tx: &TxId) -> bool {
        self.parts.get(tx).is_some_and(|p| p.term.is_some())
    }

    fn ignore(&mut self, counter: fn(&mut CommitStats) -> &mut u64) {
        *counter(&mut self.stats) += 1;
        self.out.dropped();
    }

    fn coord_log(&mut self, tx: &TxId, state: CoordState3) {
        let Some(c) = self.coords.get_mut(tx) else {
            return;
        };
        c.pending = true;
        let record = Record3::Coord {
            tx: tx.clone(),
            state,
            participants: c.participants.clone(),
        };
        let token = self.out.persist(&record);
        self.since_snapshot = self.since_snapshot.saturating_add(1);
        self.pending
            .insert(token, Pending::Coord(tx.clone(), state));
    }

    fn part_log(&mut self, tx: &TxId, state: PartState3, sends: Vec<(NodeId, Message3)>) {
        let Some(p) = self.parts.get_mut(tx) else {
            return;
        };
        p.pending = true;
        let record = Record3::Part {
            tx: tx.clone(),
            state,
            coordinator: p.coordinator,
            participants: p.participants.clone(),
        };
        let token = self.out.persist(&record);
        self.since_snapshot = self.since_snapshot.saturating_add(1);
        self.pending
            .insert(token, Pending::Part(tx.clone(), state, sends));
    }

    // ---- bounded history and compaction ----

    /// Drops the oldest decided transactions beyond
    /// [`ThreePhaseConfig::keep_finished`] per role. Only right before a
    /// snapshot is cut (which leaves them out): a transaction forgotten
    /// and met again gets records after that snapshot, never beside its
    /// old ones. An entry is queued once, when it is decided; COMMIT and
    /// ABORT are final (no record follows them, no termination runs), and
    /// entries leave the tables only here, so what is dequeued is decided
    /// and not in flight.
    fn trim(&mut self) {
        let keep = self.config.keep_finished;
        while self.finished_coords.len() > keep {
            let tx = self.finished_coords.pop_front().expect("non-empty");
            if self.coords.remove(&tx).is_some() {
                self.forgotten = true;
                self.stats.forgotten += 1;
            }
        }
        while self.finished_parts.len() > keep {
            let tx = self.finished_parts.pop_front().expect("non-empty");
            if self.parts.remove(&tx).is_some() {
                self.forgotten = true;
                self.stats.forgotten += 1;
            }
        }
    }

    /// Writes a snapshot if enough records were written since the last
    /// one. Called at the end of every `handle_*`, when the state is
    /// whole.
    fn maybe_snapshot(&mut self) {
        let every = self.config.snapshot_every;
        if every == 0 || self.snapshot_in_flight || self.since_snapshot < every {
            return;
        }
        self.trim();
        let snap = self.snapshot();
        self.stats.snapshots += 1;
        self.snapshot_in_flight = true;
        let token = self.out.persist(&Record3::Snapshot(snap));
        self.pending.insert(token, Pending::Snapshot);
        self.since_snapshot = 0;
    }

    /// What the log says now: the state of every transaction, with the
    /// records in flight applied (they come before the snapshot in the
    /// log, and the snapshot replaces them).
    fn snapshot(&self) -> Snapshot3 {
        let mut coord_next: BTreeMap<&TxId, CoordState3> = BTreeMap::new();
        let mut part_next: BTreeMap<&TxId, PartState3> = BTreeMap::new();
        // In token order: the last record in flight wins.
        for what in self.pending.values() {
            match what {
                Pending::Coord(tx, s) => {
                    coord_next.insert(tx, *s);
                }
                Pending::Part(tx, s, _) => {
                    part_next.insert(tx, *s);
                }
                Pending::Snapshot => {}
            }
        }
        let mut snap = Snapshot3 {
            forgotten: self.forgotten,
            ..Snapshot3::default()
        };
        for (tx, c) in &self.coords {
            let next = coord_next.get(tx).copied();
            let state = next.unwrap_or(c.state);
            if state == CoordState3::Init {
                continue;
            }
            snap.coords.push(Snap3Coord {
                tx: tx.clone(),
                state,
                participants: c.participants.clone(),
                told: next.is_none() && matches!(c.state, CoordState3::Commit | CoordState3::Abort),
            });
        }
        for (tx, p) in &self.parts {
            let next = part_next.get(tx).copied();
            let state = next.unwrap_or(p.state);
            if state == PartState3::Init {
                // Not voted: nothing logged.
                continue;
            }
            snap.parts.push(Snap3Part {
                tx: tx.clone(),
                state,
                coordinator: p.coordinator,
                participants: p.participants.clone(),
                told: next.is_none() && matches!(p.state, PartState3::Commit | PartState3::Abort),
            });
        }
        snap
    }

    fn others(&self, p: &Part) -> Vec<NodeId> {
        p.participants
            .iter()
            .copied()
            .filter(|&n| n != self.me)
            .collect()
    }

    /// Termination coordinator: log the outcome, then tell everyone.
    fn term_decide(&mut self, tx: &TxId, outcome: Vote) {
        let Some(p) = self.parts.get(tx) else {
            return;
        };
        let sends = self
            .others(p)
            .into_iter()
            .map(|n| (n, Message3::global(tx, outcome)))
            .collect();
        let state = match outcome {
            Vote::Commit => PartState3::Commit,
            Vote::Abort => PartState3::Abort,
        };
        self.stats.terminated_cooperatively += 1;
        self.part_log(tx, state, sends);
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
                state: CoordState3::Init,
                participants,
                votes: BTreeSet::new(),
                readies: BTreeSet::new(),
                pending: false,
                asking: false,
            },
        );
        self.coord_log(&tx, CoordState3::Wait);
    }

    fn coord_message(&mut self, from: NodeId, msg: Message3) {
        let tx = msg.tx().clone();
        let Some(c) = self.coords.get_mut(&tx) else {
            return self.ignore(|s| &mut s.unknown_tx);
        };
        if !c.participants.contains(&from) {
            return self.ignore(|s| &mut s.not_participant);
        }
        if c.pending {
            return self.ignore(|s| &mut s.busy);
        }
        match (msg, c.state) {
            (Message3::VoteCommit { .. }, CoordState3::Wait) => {
                if !c.votes.insert(from) {
                    self.ignore(|s| &mut s.duplicates);
                } else if c.votes.len() == c.participants.len() {
                    self.coord_log(&tx, CoordState3::PreCommit);
                }
            }
            (Message3::VoteAbort { .. }, CoordState3::Wait) => {
                self.coord_log(&tx, CoordState3::Abort)
            }
            (Message3::ReadyCommit { .. }, CoordState3::PreCommit) if c.asking => {
                self.ignore(|s| &mut s.late)
            }
            (Message3::ReadyCommit { .. }, CoordState3::PreCommit) => {
                if !c.readies.insert(from) {
                    self.ignore(|s| &mut s.duplicates);
                } else if c.readies.len() == c.participants.len() {
                    self.coord_log(&tx, CoordState3::Commit);
                }
            }
            // Participants decided without us (termination).
            (Message3::State { state, .. }, CoordState3::PreCommit | CoordState3::Wait) => {
                match state {
                    PartState3::Commit if c.state == CoordState3::PreCommit => {
                        self.coord_log(&tx, CoordState3::Commit)
                    }
                    PartState3::Abort | PartState3::Init => self.coord_log(&tx, CoordState3::Abort),
                    _ => self.ignore(|s| &mut s.wrong_phase),
                }
            }
            (_, CoordState3::Commit | CoordState3::Abort) => self.ignore(|s| &mut s.late),
            _ => self.ignore(|s| &mut s.wrong_phase),
        }
    }

    /// A termination coordinator asks this (original) coordinator.
    fn coord_state_request(&mut self, from: NodeId, tx: &TxId) {
        let Some(c) = self.coords.get(tx) else {
            return self.ignore(|s| &mut s.unknown_tx);
        };
        if !c.participants.contains(&from) {
            return self.ignore(|s| &mut s.not_participant);
        }
        if c.pending {
            return self.ignore(|s| &mut s.busy);
        }
        match c.state {
            // Still waiting for votes: abort now, durably, so this
            // coordinator can no longer log PRECOMMIT beside an abort the
            // asker may decide; GLOBAL_ABORT then goes to everyone.
            CoordState3::Wait => self.coord_log(tx, CoordState3::Abort),
            CoordState3::Commit | CoordState3::Abort => {
                let state = if c.state == CoordState3::Commit {
                    PartState3::Commit
                } else {
                    PartState3::Abort
                };
                self.out.send(
                    from,
                    Message3::State {
                        tx: tx.clone(),
                        state,
                    },
                );
            }
            // No answer: this PRECOMMIT may be older than an ABORT decided
            // by termination (logged, then crashed before PREPARE_COMMIT
            // went out), so it must not push anyone towards commit.
            CoordState3::PreCommit | CoordState3::Init => self.ignore(|s| &mut s.wrong_phase),
        }
    }

    fn coord_durable(&mut self, now: Instant, tx: TxId, state: CoordState3) {
        let Some(c) = self.coords.get_mut(&tx) else {
            return;
        };
        c.pending = false;
        c.state = state;
        let to = c.participants.clone();
        match state {
            CoordState3::Init => {}
            CoordState3::Wait => {
                for n in to.iter().copied() {
                    self.out.send(
                        n,
                        Message3::VoteRequest {
                            tx: tx.clone(),
                            participants: to.clone(),
                        },
                    );
                }
                self.out
                    .set_timer_after(Timer3::Votes(tx.clone()), now, self.config.vote_timeout);
                self.out
                    .set_timer_after(Timer3::Resend(tx), now, self.config.retry);
            }
            CoordState3::PreCommit => {
                self.out.cancel_timer(Timer3::Votes(tx.clone()));
                for n in to {
                    self.out.send(n, Message3::PrepareCommit { tx: tx.clone() });
                }
                self.out
                    .set_timer_after(Timer3::Resend(tx), now, self.config.retry);
            }
            CoordState3::Commit | CoordState3::Abort => {
                let outcome = if state == CoordState3::Commit {
                    Vote::Commit
                } else {
                    Vote::Abort
                };
                self.out.cancel_timer(Timer3::Votes(tx.clone()));
                self.out.cancel_timer(Timer3::Resend(tx.clone()));
                for n in to {
                    self.out.send(n, Message3::global(&tx, outcome));
                }
                self.finished_coords.push_back(tx.clone());
                self.out.event(Event::Decided { tx, outcome });
            }
        }
    }

    // ---- participant side ----

    fn part_message(&mut self, now: Instant, from: NodeId, msg: Message3) {
        let tx = msg.tx().clone();
        if let Message3::VoteRequest { participants, .. } = &msg
            && !self.parts.contains_key(&tx)
        {
            let distinct: BTreeSet<NodeId> = participants.iter().copied().collect();
            if !participants.contains(&self.me) || distinct.len() != participants.len() {
                return self.ignore(|s| &mut s.not_participant);
            }
            self.parts.insert(
                tx.clone(),
                Part {
                    state: PartState3::Init,
                    coordinator: from,
                    participants: participants.clone(),
                    pending: false,
                    asked: true,
                    round: 0,
                    term: None,
                },
            );
            self.out.event(Event::Prepare { tx: tx.clone() });
            self.out
                .set_timer_after(Timer3::Prepare(tx), now, self.config.prepare_timeout);
            return;
        }
        if let Message3::StateRequest { coordinator, .. } = &msg
            && !self.parts.contains_key(&tx)
        {
            if self.forgotten {
                // It may be an outcome we dropped (a COMMIT, say): INIT
                // (and the ABORT logged before it) could contradict it.
                // Silence: the asker counts us as unreachable. See "Log
                // compaction" in the module docs.
                return self.ignore(|s| &mut s.unknown_tx);
            }
            // Never heard of it: abort first, then answer INIT.
            self.stats.unknown_tx += 1;
            self.parts.insert(
                tx.clone(),
                Part {
                    state: PartState3::Init,
                    coordinator: *coordinator,
                    participants: Vec::new(),
                    pending: false,
                    asked: false,
                    round: 0,
                    term: None,
                },
            );
            let answer = Message3::State {
                tx: tx.clone(),
                state: PartState3::Init,
            };
            return self.part_log(&tx, PartState3::Abort, vec![(from, answer)]);
        }
        let Some(p) = self.parts.get_mut(&tx) else {
            return self.ignore(|s| &mut s.unknown_tx);
        };
        let known = from == p.coordinator || p.participants.contains(&from);
        if !known {
            return self.ignore(|s| &mut s.not_participant);
        }
        if p.pending {
            return self.ignore(|s| &mut s.busy);
        }
        let state = p.state;
        let coordinator = p.coordinator;
        let answer = Message3::State {
            tx: tx.clone(),
            state,
        };
        match (msg, state) {
            (Message3::VoteRequest { .. }, PartState3::Init) => self.ignore(|s| &mut s.duplicates),
            (Message3::VoteRequest { .. }, PartState3::Ready | PartState3::PreCommit) => {
                self.stats.votes_resent += 1;
                self.out
                    .retransmit(coordinator, 0, Message3::VoteCommit { tx });
            }
            (Message3::VoteRequest { .. }, PartState3::Abort) => {
                self.stats.votes_resent += 1;
                self.out
                    .retransmit(coordinator, 0, Message3::VoteAbort { tx });
            }
            (Message3::PrepareCommit { .. }, PartState3::Ready) => self.part_log(
                &tx,
                PartState3::PreCommit,
                vec![(from, Message3::ReadyCommit { tx: tx.clone() })],
            ),
            (Message3::PrepareCommit { .. }, PartState3::PreCommit) => {
                self.stats.duplicates += 1;
                self.out.retransmit(from, 0, Message3::ReadyCommit { tx });
            }
            (Message3::PrepareCommit { .. }, PartState3::Commit | PartState3::Abort) => {
                self.stats.late += 1;
                self.out.send(from, answer);
            }
            (Message3::GlobalCommit { .. }, PartState3::Ready | PartState3::PreCommit) => {
                self.part_log(&tx, PartState3::Commit, Vec::new())
            }
            (
                Message3::GlobalAbort { .. },
                PartState3::Init | PartState3::Ready | PartState3::PreCommit,
            ) => self.part_log(&tx, PartState3::Abort, Vec::new()),
            (Message3::GlobalCommit { .. }, PartState3::Commit)
            | (Message3::GlobalAbort { .. }, PartState3::Abort) => {
                self.ignore(|s| &mut s.duplicates)
            }
            (Message3::StateRequest { .. }, PartState3::Init) => {
                let answer = Message3::State {
                    tx: tx.clone(),
                    state: PartState3::Init,
                };
                self.part_log(&tx, PartState3::Abort, vec![(from, answer)])
            }
            (Message3::StateRequest { .. }, _) => {
                self.out.send(from, answer);
                if from != coordinator && matches!(state, PartState3::Ready | PartState3::PreCommit)
                {
                    // Someone is terminating: give it time before our next
                    // round.
                    self.out.set_timer_after(
                        Timer3::Decision(tx),
                        now,
                        self.config.decision_timeout,
                    );
                }
            }
            (Message3::State { state: theirs, .. }, _) => self.term_state(&tx, from, theirs),
            (Message3::ReadyCommit { .. }, _) => self.term_ready_commit(&tx, from),
            _ => self.ignore(|s| &mut s.wrong_phase),
        }
    }

    fn term_state(&mut self, tx: &TxId, from: NodeId, theirs: PartState3) {
        let Some(p) = self.parts.get_mut(tx) else {
            return;
        };
        if from == p.coordinator && !p.participants.contains(&from) {
            // The original coordinator: only a decision counts; it is not
            // one of the participants to collect (nor to send
            // PREPARE_COMMIT to).
            return match (&p.term, theirs) {
                (Some(_), PartState3::Abort) => self.term_decide(tx, Vote::Abort),
                (Some(_), PartState3::Commit) => self.term_decide(tx, Vote::Commit),
                _ => self.ignore(|s| &mut s.late),
            };
        }
        match &mut p.term {
            Some(Term::Collecting(states)) => {
                states.insert(from, theirs);
                match theirs {
                    PartState3::Abort => self.term_decide(tx, Vote::Abort),
                    PartState3::Commit => self.term_decide(tx, Vote::Commit),
                    _ => {}
                }
            }
            Some(Term::PreCommitting { .. }) => match theirs {
                // Decided meanwhile (by an earlier coordinator).
                PartState3::Abort => self.term_decide(tx, Vote::Abort),
                PartState3::Commit => self.term_decide(tx, Vote::Commit),
                _ => self.ignore(|s| &mut s.late),
            },
            None => self.ignore(|s| &mut s.late),
        }
    }

    fn term_ready_commit(&mut self, tx: &TxId, from: NodeId) {
        let Some(p) = self.parts.get_mut(tx) else {
            return;
        };
        let Some(Term::PreCommitting { reached, acks }) = &mut p.term else {
            return self.ignore(|s| &mut s.wrong_phase);
        };
        acks.insert(from);
        if reached.is_subset(acks) && p.state == PartState3::PreCommit {
            self.term_decide(tx, Vote::Commit);
        }
    }

    /// The Collect timer: decide by the subject's rules, or resend
    /// PREPARE_COMMIT.
    fn term_collected(&mut self, now: Instant, tx: &TxId) {
        let me = self.me;
        let Some(p) = self.parts.get_mut(tx) else {
            return;
        };
        if p.pending || !matches!(p.state, PartState3::Ready | PartState3::PreCommit) {
            return;
        }
        let own = p.state;
        match &mut p.term {
            None => {}
            Some(Term::Collecting(states)) => {
                let all = || states.values().copied().chain(std::iter::once(own));
                if all().any(|s| s == PartState3::Abort) {
                    self.term_decide(tx, Vote::Abort);
                } else if all().any(|s| s == PartState3::Commit) {
                    self.term_decide(tx, Vote::Commit);
                } else if all().any(|s| s == PartState3::PreCommit) {
                    let reached: BTreeSet<NodeId> =
                        states.keys().copied().filter(|&n| n != me).collect();
                    p.term = Some(Term::PreCommitting {
                        reached: reached.clone(),
                        acks: BTreeSet::new(),
                    });
                    if own == PartState3::Ready {
                        let sends = reached
                            .iter()
                            .map(|&n| (n, Message3::PrepareCommit { tx: tx.clone() }))
                            .collect();
                        self.part_log(tx, PartState3::PreCommit, sends);
                    } else if reached.is_empty() {
                        self.term_decide(tx, Vote::Commit);
                        return;
                    } else {
                        for n in reached {
                            self.out.send(n, Message3::PrepareCommit { tx: tx.clone() });
                        }
                    }
                    self.out
                        .set_timer_after(Timer3::Collect(tx.clone()), now, self.config.retry);
                } else {
                    // All READY or INIT (INIT answerers have aborted).
                    self.term_decide(tx, Vote::Abort);
                }
            }
            Some(Term::PreCommitting { reached, acks }) => {
                let missing: Vec<NodeId> = reached.difference(acks).copied().collect();
                for n in missing {
                    self.out
                        .retransmit(n, 0, Message3::PrepareCommit { tx: tx.clone() });
                }
                self.out
                    .set_timer_after(Timer3::Collect(tx.clone()), now, self.config.retry);
            }
        }
    }

    /// Decision timer: next election round.
    fn election_round(&mut self, now: Instant, tx: &TxId) {
        let me = self.me;
        let Some(p) = self.parts.get_mut(tx) else {
            return;
        };
        if p.pending
            || p.term.is_some()
            || !matches!(p.state, PartState3::Ready | PartState3::PreCommit)
        {
            return;
        }
        let mut sorted = p.participants.clone();
        sorted.sort();
        if sorted.is_empty() {
            return;
        }
        let elected = sorted[p.round % sorted.len()];
        p.round += 1;
        if elected == me {
            p.term = Some(Term::Collecting(BTreeMap::new()));
            let coordinator = p.coordinator;
            // The original coordinator too (unless it is a participant, and
            // so asked already): it may know an ABORT it decided.
            let also = (!sorted.contains(&coordinator) && coordinator != me).then_some(coordinator);
            for n in sorted.into_iter().filter(|&n| n != me).chain(also) {
                self.stats.decision_requests += 1;
                self.out.send(
                    n,
                    Message3::StateRequest {
                        tx: tx.clone(),
                        coordinator,
                    },
                );
            }
            self.out
                .set_timer_after(Timer3::Collect(tx.clone()), now, self.config.collect);
        } else {
            self.out.set_timer_after(
                Timer3::Decision(tx.clone()),
                now,
                self.config.decision_timeout,
            );
        }
    }

    fn part_durable(
        &mut self,
        now: Instant,
        tx: TxId,
        state: PartState3,
        sends: Vec<(NodeId, Message3)>,
    ) {
        let Some(p) = self.parts.get_mut(&tx) else {
            return;
        };
        p.pending = false;
        let before = p.state;
        let tell = p.asked || before != PartState3::Init;
        p.state = state;
        let precommitting_alone = matches!(
            &p.term,
            Some(Term::PreCommitting { reached, .. }) if reached.is_empty()
        ) && state == PartState3::PreCommit;
        for (n, m) in sends {
            self.out.send(n, m);
        }
        match state {
            PartState3::Ready | PartState3::PreCommit => {
                self.out.cancel_timer(Timer3::Prepare(tx.clone()));
                if p.term.is_none() {
                    self.out.set_timer_after(
                        Timer3::Decision(tx.clone()),
                        now,
                        self.config.decision_timeout,
                    );
                }
                if precommitting_alone {
                    self.term_decide(&tx, Vote::Commit);
                }
            }
            PartState3::Commit | PartState3::Abort => {
                p.term = None;
                if before != state {
                    self.finished_parts.push_back(tx.clone());
                }
                self.out.cancel_timer(Timer3::Prepare(tx.clone()));
                self.out.cancel_timer(Timer3::Decision(tx.clone()));
                self.out.cancel_timer(Timer3::Collect(tx.clone()));
                if state == PartState3::Commit {
                    self.out.event(Event::Commit { tx });
                } else if tell {
                    self.out.event(Event::Abort { tx });
                }
            }
            PartState3::Init => {}
        }
    }

    fn voted(&mut self, tx: TxId, vote: Vote) {
        let Some(p) = self.parts.get(&tx) else {
            return self.ignore(|s| &mut s.unknown_tx);
        };
        if p.pending || p.state != PartState3::Init || !p.asked {
            return self.ignore(|s| &mut s.wrong_phase);
        }
        let c = p.coordinator;
        match vote {
            Vote::Commit => self.part_log(
                &tx,
                PartState3::Ready,
                vec![(c, Message3::VoteCommit { tx: tx.clone() })],
            ),
            Vote::Abort => self.part_log(
                &tx,
                PartState3::Abort,
                vec![(c, Message3::VoteAbort { tx: tx.clone() })],
            ),
        }
    }
}

impl ThreePhase {
    fn on_message(&mut self, now: Instant, from: NodeId, msg: Message3) {
        self.out.received();
        let tx = msg.tx().clone();
        let terminating = self.is_terminating(&tx);
        match &msg {
            Message3::VoteCommit { .. } | Message3::VoteAbort { .. } => {
                self.coord_message(from, msg)
            }
            Message3::ReadyCommit { .. } | Message3::State { .. }
                if !terminating && self.coords.contains_key(&tx) =>
            {
                self.coord_message(from, msg)
            }
            // A termination coordinator asking the original coordinator,
            // which is not a participant: answered by the coordinator side
            // (the participant side would log an ABORT for an unknown
            // transaction).
            Message3::StateRequest { coordinator, .. }
                if *coordinator == self.me
                    && self
                        .coords
                        .get(&tx)
                        .is_some_and(|c| !c.participants.contains(&self.me)) =>
            {
                self.coord_state_request(from, &tx)
            }
            _ => self.part_message(now, from, msg),
        }
    }

    fn on_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Begin { tx, participants } => self.begin(tx, participants),
            Input::Join { tx, coordinator } => {
                if self.parts.contains_key(&tx) {
                    return self.ignore(|s| &mut s.duplicates);
                }
                self.parts.insert(
                    tx.clone(),
                    Part {
                        state: PartState3::Init,
                        coordinator,
                        participants: Vec::new(),
                        pending: false,
                        asked: true,
                        round: 0,
                        term: None,
                    },
                );
                self.out
                    .set_timer_after(Timer3::Prepare(tx), now, self.config.prepare_timeout);
            }
            Input::Voted { tx, vote } => self.voted(tx, vote),
            // 3PC has no read-only optimization: a read-only vote is a
            // commit vote (safe: either outcome suits the resource).
            Input::VotedReadOnly { tx } => self.voted(tx, Vote::Commit),
            // 3PC does not block under its assumptions, and does not take
            // heuristic decisions: refused and counted.
            Input::Heuristic { .. } => self.stats.wrong_phase += 1,
        }
    }

    fn on_timer(&mut self, now: Instant, timer: Timer3) {
        self.out.timer_fired();
        match timer {
            Timer3::Votes(tx) => {
                if let Some(c) = self.coords.get(&tx)
                    && c.state == CoordState3::Wait
                    && !c.pending
                {
                    self.stats.vote_timeouts += 1;
                    self.coord_log(&tx, CoordState3::Abort);
                }
            }
            Timer3::Resend(tx) => {
                let Some(c) = self.coords.get(&tx) else {
                    return;
                };
                if c.pending {
                    return;
                }
                let (msg, done) = match c.state {
                    CoordState3::Wait => (
                        Message3::VoteRequest {
                            tx: tx.clone(),
                            participants: c.participants.clone(),
                        },
                        &c.votes,
                    ),
                    CoordState3::PreCommit if c.asking => (
                        Message3::StateRequest {
                            tx: tx.clone(),
                            coordinator: self.me,
                        },
                        &c.readies,
                    ),
                    CoordState3::PreCommit => {
                        (Message3::PrepareCommit { tx: tx.clone() }, &c.readies)
                    }
                    _ => return,
                };
                let to: Vec<NodeId> = c
                    .participants
                    .iter()
                    .copied()
                    .filter(|n| !done.contains(n))
                    .collect();
                for n in to {
                    self.stats.vote_requests_resent += 1;
                    self.out.retransmit(n, 0, msg.clone());
                }
                self.out
                    .set_timer_after(Timer3::Resend(tx), now, self.config.retry);
            }
            Timer3::Prepare(tx) => {
                if let Some(p) = self.parts.get(&tx)
                    && p.state == PartState3::Init
                    && !p.pending
                {
                    self.stats.prepare_timeouts += 1;
                    let c = p.coordinator;
                    self.part_log(
                        &tx,
                        PartState3::Abort,
                        vec![(c, Message3::VoteAbort { tx: tx.clone() })],
                    );
                }
            }
            Timer3::Decision(tx) => self.election_round(now, &tx),
            Timer3::Collect(tx) => self.term_collected(now, &tx),
        }
    }

    fn on_persisted(&mut self, now: Instant, token: PersistToken) {
        let Persisted::Own(token) = self.out.persisted(token) else {
            return;
        };
        match self.pending.remove(&token) {
            Some(Pending::Coord(tx, state)) => self.coord_durable(now, tx, state),
            Some(Pending::Part(tx, state, sends)) => self.part_durable(now, tx, state, sends),
            Some(Pending::Snapshot) => {
                // Everything before it is in it: drop it.
                self.snapshot_in_flight = false;
                self.out.compact(token);
            }
            None => {}
        }
    }
}

impl Protocol for ThreePhase {
    type Message = Message3;
    type Input = Input;
    type Event = Event;
    type Timer = Timer3;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message3) {
        self.on_message(now, from, msg);
        self.maybe_snapshot();
    }

    fn handle_input(&mut self, now: Instant, input: Input) {
        self.on_input(now, input);
        self.maybe_snapshot();
    }

    fn handle_timer(&mut self, now: Instant, timer: Timer3) {
        self.on_timer(now, timer);
        self.maybe_snapshot();
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        self.on_persisted(now, token);
        self.maybe_snapshot();
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

/// Whether a participant may log `next` after `prev` (same state again is
/// allowed: a repeated record).
fn part_step_ok(prev: PartState3, next: PartState3) -> bool {
    use PartState3::*;
    prev == next
        || matches!(
            (prev, next),
            (Init, Ready | Abort)
                | (Ready, PreCommit | Commit | Abort)
                | (PreCommit, Commit | Abort)
        )
}

fn coord_step_ok(prev: CoordState3, next: CoordState3) -> bool {
    use CoordState3::*;
    prev == next
        || matches!(
            (prev, next),
            (Init, Wait) | (Wait, PreCommit | Abort) | (PreCommit, Commit | Abort)
        )
}

impl Recover for ThreePhase {
    type Config = ThreePhaseConfig;

    fn recover(config: &ThreePhaseConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        config
            .validate()
            .map_err(|e| RecoveryError::Inconsistent(format!("ThreePhaseConfig: {e}")))?;
        let records: Vec<Record3> = ctx.read()?;
        let mut core = ThreePhase {
            me: ctx.node,
            config: config.clone(),
            coords: BTreeMap::new(),
            parts: BTreeMap::new(),
            pending: BTreeMap::new(),
            stats: CommitStats::default(),
            out: Outbox::recovered(&ctx),
            finished_coords: VecDeque::new(),
            finished_parts: VecDeque::new(),
            forgotten: false,
            since_snapshot: 0,
            snapshot_in_flight: false,
        };
        // Outcomes the application was told before the last snapshot: not
        // told again.
        let mut told_coords: BTreeSet<TxId> = BTreeSet::new();
        let mut told_parts: BTreeSet<TxId> = BTreeSet::new();
        let bad = |tx: &TxId, what: &str| RecoveryError::Inconsistent(format!("{tx}: {what}"));
        for r in records {
            match r {
                Record3::Coord {
                    tx,
                    state,
                    participants,
                } => {
                    let c = core.coords.entry(tx.clone()).or_insert(Coord {
                        state: CoordState3::Init,
                        participants: participants.clone(),
                        votes: BTreeSet::new(),
                        readies: BTreeSet::new(),
                        pending: false,
                        asking: false,
                    });
                    if !coord_step_ok(c.state, state) || c.participants != participants {
                        return Err(bad(&tx, "coordinator records out of order"));
                    }
                    if c.state != state {
                        told_coords.remove(&tx);
                        if matches!(state, CoordState3::Commit | CoordState3::Abort) {
                            core.finished_coords.push_back(tx.clone());
                        }
                    }
                    c.state = state;
                }
                Record3::Part {
                    tx,
                    state,
                    coordinator,
                    participants,
                } => {
                    let p = core.parts.entry(tx.clone()).or_insert(Part {
                        state: PartState3::Init,
                        coordinator,
                        participants: participants.clone(),
                        pending: false,
                        asked: false,
                        round: 0,
                        term: None,
                    });
                    if !part_step_ok(p.state, state) || p.coordinator != coordinator {
                        return Err(bad(&tx, "participant records out of order"));
                    }
                    if p.participants.is_empty() {
                        p.participants = participants;
                    }
                    if p.state != state {
                        told_parts.remove(&tx);
                        if matches!(state, PartState3::Commit | PartState3::Abort) {
                            core.finished_parts.push_back(tx.clone());
                        }
                    }
                    p.state = state;
                }
                Record3::Snapshot(snap) => {
                    // Everything before it is in it.
                    core.coords.clear();
                    core.parts.clear();
                    core.finished_coords.clear();
                    core.finished_parts.clear();
                    told_coords.clear();
                    told_parts.clear();
                    core.forgotten = snap.forgotten;
                    for s in snap.coords {
                        if matches!(s.state, CoordState3::Commit | CoordState3::Abort) {
                            core.finished_coords.push_back(s.tx.clone());
                            if s.told {
                                told_coords.insert(s.tx.clone());
                            }
                        }
                        core.coords.insert(
                            s.tx,
                            Coord {
                                state: s.state,
                                participants: s.participants,
                                votes: BTreeSet::new(),
                                readies: BTreeSet::new(),
                                pending: false,
                                asking: false,
                            },
                        );
                    }
                    for s in snap.parts {
                        if matches!(s.state, PartState3::Commit | PartState3::Abort) {
                            core.finished_parts.push_back(s.tx.clone());
                            if s.told {
                                told_parts.insert(s.tx.clone());
                            }
                        }
                        core.parts.insert(
                            s.tx,
                            Part {
                                state: s.state,
                                coordinator: s.coordinator,
                                participants: s.participants,
                                pending: false,
                                asked: false,
                                round: 0,
                                term: None,
                            },
                        );
                    }
                }
            }
        }
        let now = ctx.now;
        let coords: Vec<(TxId, CoordState3, Vec<NodeId>)> = core
            .coords
            .iter()
            .map(|(t, c)| (t.clone(), c.state, c.participants.clone()))
            .collect();
        for (tx, state, to) in coords {
            match state {
                CoordState3::Init => {}
                CoordState3::Wait => core.coord_log(&tx, CoordState3::Abort),
                CoordState3::PreCommit => {
                    // Participants may have terminated without us (and
                    // aborted, all READY): pushing PREPARE_COMMIT now could
                    // move a READY one to PRECOMMIT beside an ABORT. Ask.
                    if let Some(c) = core.coords.get_mut(&tx) {
                        c.asking = true;
                    }
                    let me = core.me;
                    for n in to {
                        core.stats.decision_requests += 1;
                        core.out.retransmit(
                            n,
                            0,
                            Message3::StateRequest {
                                tx: tx.clone(),
                                coordinator: me,
                            },
                        );
                    }
                    core.out
                        .set_timer_after(Timer3::Resend(tx), now, core.config.retry);
                }
                CoordState3::Commit | CoordState3::Abort => {
                    let outcome = if state == CoordState3::Commit {
                        Vote::Commit
                    } else {
                        Vote::Abort
                    };
                    if told_coords.contains(&tx) {
                        // Told and sent before the snapshot: a participant
                        // that missed it asks (termination), and we answer.
                        continue;
                    }
                    core.out.event(Event::Decided {
                        tx: tx.clone(),
                        outcome,
                    });
                    for n in to {
                        core.stats.decisions_resent += 1;
                        core.out.retransmit(n, 0, Message3::global(&tx, outcome));
                    }
                }
            }
        }
        let parts: Vec<(TxId, PartState3)> = core
            .parts
            .iter()
            .map(|(t, p)| (t.clone(), p.state))
            .collect();
        for (tx, state) in parts {
            match state {
                PartState3::Ready | PartState3::PreCommit => core.out.set_timer_after(
                    Timer3::Decision(tx),
                    now,
                    core.config.decision_timeout,
                ),
                _ if told_parts.contains(&tx) => {}
                PartState3::Commit => core.out.event(Event::Commit { tx }),
                PartState3::Abort => core.out.event(Event::Abort { tx }),
                PartState3::Init => {}
            }
        }
        Ok(core)
    }
}

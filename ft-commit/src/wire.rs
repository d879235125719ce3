//! What crosses the network ([`Message`]) and what goes to the log
//! ([`LogRecord`]), with transaction ids ([`TxId`]).
//!
//! Everything is encoded by hand, little-endian, through ft-core's
//! [`Wire`]. Decoders treat their input as hostile: every length is checked
//! against its limit and against what is left before anything is allocated,
//! and failures are typed [`DecodeError`]s, never panics.

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{NodeId, Record};

/// The largest transaction id, in bytes. Ids are opaque to the protocol; 64
/// bytes holds an XA `gtrid` (at most 64 bytes), a UUID or a
/// `node:counter` pair with room to spare, and bounds what a forged
/// message can make a node store per transaction.
pub const MAX_TX_ID: usize = 64;

/// The largest number of participants in one transaction: bounds what a
/// vote-request (and a log record) can make a node allocate.
pub const MAX_PARTICIPANTS: usize = 256;

/// A transaction id: opaque bytes chosen by the application, at most
/// [`MAX_TX_ID`] of them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(Bytes);

/// A transaction id longer than [`MAX_TX_ID`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("transaction id of {len} bytes exceeds the maximum of {MAX_TX_ID}")]
pub struct TxIdTooLong {
    /// The length given.
    pub len: usize,
}

impl TxId {
    /// `bytes` as a transaction id.
    ///
    /// # Errors
    /// [`TxIdTooLong`] if `bytes` is longer than [`MAX_TX_ID`].
    pub fn new(bytes: impl Into<Bytes>) -> Result<Self, TxIdTooLong> {
        let bytes = bytes.into();
        if bytes.len() > MAX_TX_ID {
            return Err(TxIdTooLong { len: bytes.len() });
        }
        Ok(TxId(bytes))
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for TxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "tx {s:?}"),
            _ => {
                write!(f, "tx 0x")?;
                for b in self.0.iter() {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl Wire for TxId {
    fn encode(&self, buf: &mut BytesMut) {
        // One length byte: MAX_TX_ID fits, and a longer id cannot be built.
        buf.put_u8(self.0.len() as u8);
        buf.put_slice(&self.0);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let len = wire::get_u8(buf)? as usize;
        if len > MAX_TX_ID {
            return Err(DecodeError::Oversized {
                len,
                max: MAX_TX_ID,
            });
        }
        wire::need(buf, len)?;
        Ok(TxId(buf.split_to(len)))
    }
}

/// A participant's vote, and the outcome of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Vote {
    /// VOTE_COMMIT / GLOBAL_COMMIT.
    Commit,
    /// VOTE_ABORT / GLOBAL_ABORT.
    Abort,
}

/// A participant's state, as it answers a DECISION_REQUEST (the subject's
/// cooperative termination table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerState {
    /// It had not voted; answering, it aborted, so it never will vote
    /// commit (which is what makes "INIT → abort" safe for the asker).
    Init,
    /// It voted commit and waits for the decision, like the asker.
    Ready,
    /// It committed (or, from the coordinator, decided commit).
    Commit,
    /// It aborted (or, from the coordinator, decided abort).
    Abort,
}

impl PeerState {
    fn tag(self) -> u8 {
        match self {
            PeerState::Init => 0,
            PeerState::Ready => 1,
            PeerState::Commit => 2,
            PeerState::Abort => 3,
        }
    }
    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        Ok(match tag {
            0 => PeerState::Init,
            1 => PeerState::Ready,
            2 => PeerState::Commit,
            3 => PeerState::Abort,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "PeerState",
                    tag,
                });
            }
        })
    }
}

/// The two-phase commit messages, named as in the subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Phase 1a, coordinator → participant: vote on `tx`. Carries the
    /// participants so that a READY participant knows whom to ask in
    /// cooperative termination.
    VoteRequest {
        /// The transaction.
        tx: TxId,
        /// Every participant of `tx`.
        participants: Vec<NodeId>,
    },
    /// Phase 1b, participant → coordinator: ready to commit (READY is
    /// durable at the sender).
    VoteCommit {
        /// The transaction.
        tx: TxId,
    },
    /// Phase 1b, participant → coordinator: it aborted.
    VoteAbort {
        /// The transaction.
        tx: TxId,
    },
    /// Phase 2a, coordinator → participant: commit (the decision is durable
    /// at the coordinator).
    GlobalCommit {
        /// The transaction.
        tx: TxId,
    },
    /// Phase 2a, coordinator → participant: abort.
    GlobalAbort {
        /// The transaction.
        tx: TxId,
    },
    /// Participant → coordinator: the decision is applied and durable here;
    /// stop resending it.
    Ack {
        /// The transaction.
        tx: TxId,
    },
    /// Cooperative termination, READY participant → coordinator or another
    /// participant: what do you know of `tx`?
    DecisionRequest {
        /// The transaction.
        tx: TxId,
        /// Its coordinator, as the asker knows it: the node asked answers
        /// as coordinator if it is that node, else as participant.
        coordinator: NodeId,
    },
    /// The answer to a [`DecisionRequest`](Message::DecisionRequest).
    State {
        /// The transaction.
        tx: TxId,
        /// The state of the node answering.
        state: PeerState,
    },
    /// Phase 1b, participant → coordinator: its work on `tx` only read, so
    /// either outcome suits it; it logged nothing and leaves the
    /// transaction (the read-only optimization: no decision is sent to it,
    /// no ACK comes back).
    VoteReadOnly {
        /// The transaction.
        tx: TxId,
    },
    /// Participant → coordinator: the decision is applied, but the
    /// participant's resource had decided `heuristic` on its own while
    /// blocked, and that differs from the decision (XA's HEURCOM /
    /// HEURRB). Stands for an [`Ack`](Message::Ack) and reports the
    /// damage.
    HeuristicAck {
        /// The transaction.
        tx: TxId,
        /// What the resource decided on its own.
        heuristic: Vote,
    },
}

impl Message {
    /// The transaction the message is about.
    pub fn tx(&self) -> &TxId {
        match self {
            Message::VoteRequest { tx, .. }
            | Message::VoteCommit { tx }
            | Message::VoteAbort { tx }
            | Message::GlobalCommit { tx }
            | Message::GlobalAbort { tx }
            | Message::Ack { tx }
            | Message::DecisionRequest { tx, .. }
            | Message::State { tx, .. }
            | Message::VoteReadOnly { tx }
            | Message::HeuristicAck { tx, .. } => tx,
        }
    }
}

pub(crate) fn put_vote(buf: &mut BytesMut, vote: Vote) {
    buf.put_u8(match vote {
        Vote::Commit => 1,
        Vote::Abort => 0,
    });
}

pub(crate) fn get_vote(buf: &mut Bytes) -> Result<Vote, DecodeError> {
    match wire::get_u8(buf)? {
        1 => Ok(Vote::Commit),
        0 => Ok(Vote::Abort),
        tag => Err(DecodeError::UnknownTag { what: "Vote", tag }),
    }
}

pub(crate) fn put_nodes(buf: &mut BytesMut, nodes: &[NodeId]) {
    // Callers keep lists within MAX_PARTICIPANTS, so this never truncates.
    buf.put_u16_le(nodes.len() as u16);
    for n in nodes {
        n.encode(buf);
    }
}

pub(crate) fn get_nodes(buf: &mut Bytes) -> Result<Vec<NodeId>, DecodeError> {
    let len = wire::get_u16(buf)? as usize;
    if len > MAX_PARTICIPANTS {
        return Err(DecodeError::Oversized {
            len,
            max: MAX_PARTICIPANTS,
        });
    }
    wire::need(buf, len * 8)?;
    (0..len).map(|_| NodeId::decode(buf)).collect()
}

impl Wire for Message {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            Message::VoteRequest { tx, participants } => {
                buf.put_u8(1);
                tx.encode(buf);
                put_nodes(buf, participants);
            }
            Message::VoteCommit { tx } => {
                buf.put_u8(2);
                tx.encode(buf);
            }
            Message::VoteAbort { tx } => {
                buf.put_u8(3);
                tx.encode(buf);
            }
            Message::GlobalCommit { tx } => {
                buf.put_u8(4);
                tx.encode(buf);
            }
            Message::GlobalAbort { tx } => {
                buf.put_u8(5);
                tx.encode(buf);
            }
            Message::Ack { tx } => {
                buf.put_u8(6);
                tx.encode(buf);
            }
            Message::DecisionRequest { tx, coordinator } => {
                buf.put_u8(7);
                tx.encode(buf);
                coordinator.encode(buf);
            }
            Message::State { tx, state } => {
                buf.put_u8(8);
                tx.encode(buf);
                buf.put_u8(state.tag());
            }
            Message::VoteReadOnly { tx } => {
                buf.put_u8(9);
                tx.encode(buf);
            }
            Message::HeuristicAck { tx, heuristic } => {
                buf.put_u8(10);
                tx.encode(buf);
                put_vote(buf, *heuristic);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        let tx = match tag {
            1..=10 => TxId::decode(buf)?,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "Message",
                    tag,
                });
            }
        };
        Ok(match tag {
            1 => Message::VoteRequest {
                tx,
                participants: get_nodes(buf)?,
            },
            2 => Message::VoteCommit { tx },
            3 => Message::VoteAbort { tx },
            4 => Message::GlobalCommit { tx },
            5 => Message::GlobalAbort { tx },
            6 => Message::Ack { tx },
            7 => Message::DecisionRequest {
                tx,
                coordinator: NodeId::decode(buf)?,
            },
            8 => Message::State {
                tx,
                state: PeerState::from_tag(wire::get_u8(buf)?)?,
            },
            9 => Message::VoteReadOnly { tx },
            _ => Message::HeuristicAck {
                tx,
                heuristic: get_vote(buf)?,
            },
        })
    }
}

/// What a node logs, through [`Output::Persist`](ft_core::Output::Persist)
/// (typed and versioned by ft-core's [`record`](ft_core::record) module).
///
/// Each record is written before the message that depends on it is sent:
/// that is the whole of two-phase commit's crash tolerance. Recovery reads
/// them in order, and the last record of a transaction (per role) is its
/// state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// Coordinator: `tx` began with these participants (state WAIT).
    /// Written before the first VOTE_REQUEST, so a coordinator that
    /// recovers knows which transactions it may have asked about, and
    /// aborts them.
    Begin {
        /// The transaction.
        tx: TxId,
        /// Its participants.
        participants: Vec<NodeId>,
    },
    /// Coordinator: the decision on `tx` (state COMMIT or ABORT). Written
    /// before the first GLOBAL_COMMIT / GLOBAL_ABORT.
    Decision {
        /// The transaction.
        tx: TxId,
        /// The outcome.
        outcome: Vote,
        /// Whom to tell (empty for a transaction the coordinator never
        /// began, aborted when someone asked about it).
        participants: Vec<NodeId>,
    },
    /// Coordinator: every participant acknowledged the decision; nothing
    /// more to send for `tx`. Not forced: if it is lost, a recovering
    /// coordinator resends the decision once more.
    End {
        /// The transaction.
        tx: TxId,
    },
    /// Participant: READY (voted commit) on `tx`. Written before
    /// VOTE_COMMIT.
    Ready {
        /// The transaction.
        tx: TxId,
        /// Its coordinator.
        coordinator: NodeId,
        /// Its participants (whom to ask in cooperative termination).
        participants: Vec<NodeId>,
    },
    /// Participant: COMMIT on `tx`, written before the ACK.
    Commit {
        /// The transaction.
        tx: TxId,
        /// Its coordinator.
        coordinator: NodeId,
    },
    /// Participant: ABORT on `tx`, written before VOTE_ABORT, an ACK, or a
    /// state answer of INIT. Under presumed abort it is not forced (the
    /// message does not wait for it), except before a state answer of
    /// INIT.
    Abort {
        /// The transaction.
        tx: TxId,
        /// Its coordinator.
        coordinator: NodeId,
    },
    /// Participant: its resource, blocked in READY, decided `heuristic` on
    /// its own ([`Input::Heuristic`](crate::Input::Heuristic)). The
    /// participant stays READY and still waits for the real decision, to
    /// report a difference.
    Heuristic {
        /// The transaction.
        tx: TxId,
        /// What the resource decided.
        heuristic: Vote,
    },
    /// Coordinator: several decisions written in one forced write (group
    /// commit of decision records,
    /// [`TwoPhaseConfig::group_commit`](crate::TwoPhaseConfig::group_commit)),
    /// each as a [`Decision`](LogRecord::Decision) would say it.
    Decisions(Vec<DecisionEntry>),
    /// Both roles: everything the node still needs, so that the records
    /// before it can be dropped (log compaction,
    /// [`TwoPhaseConfig::snapshot_every`](crate::TwoPhaseConfig::snapshot_every)).
    Snapshot(crate::snapshot::Snapshot),
}

/// One decision of a [`LogRecord::Decisions`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionEntry {
    /// The transaction.
    pub tx: TxId,
    /// The outcome.
    pub outcome: Vote,
    /// Whom to tell.
    pub participants: Vec<NodeId>,
}

/// The most decisions in one [`LogRecord::Decisions`] batch: bounds what a
/// corrupt record can make recovery allocate (a batch holds the decisions
/// queued while one forced write was in flight).
pub const MAX_BATCH: usize = 4096;

impl Wire for LogRecord {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            LogRecord::Begin { tx, participants } => {
                buf.put_u8(1);
                tx.encode(buf);
                put_nodes(buf, participants);
            }
            LogRecord::Decision {
                tx,
                outcome,
                participants,
            } => {
                buf.put_u8(2);
                tx.encode(buf);
                put_vote(buf, *outcome);
                put_nodes(buf, participants);
            }
            LogRecord::End { tx } => {
                buf.put_u8(3);
                tx.encode(buf);
            }
            LogRecord::Ready {
                tx,
                coordinator,
                participants,
            } => {
                buf.put_u8(4);
                tx.encode(buf);
                coordinator.encode(buf);
                put_nodes(buf, participants);
            }
            LogRecord::Commit { tx, coordinator } => {
                buf.put_u8(5);
                tx.encode(buf);
                coordinator.encode(buf);
            }
            LogRecord::Abort { tx, coordinator } => {
                buf.put_u8(6);
                tx.encode(buf);
                coordinator.encode(buf);
            }
            LogRecord::Heuristic { tx, heuristic } => {
                buf.put_u8(7);
                tx.encode(buf);
                put_vote(buf, *heuristic);
            }
            LogRecord::Decisions(batch) => {
                buf.put_u8(8);
                // Callers keep batches within MAX_BATCH.
                buf.put_u16_le(batch.len() as u16);
                for d in batch {
                    d.tx.encode(buf);
                    put_vote(buf, d.outcome);
                    put_nodes(buf, &d.participants);
                }
            }
            LogRecord::Snapshot(snap) => {
                buf.put_u8(9);
                snap.encode(buf);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        if tag == 8 {
            let len = wire::get_u16(buf)? as usize;
            if len > MAX_BATCH {
                return Err(DecodeError::Oversized {
                    len,
                    max: MAX_BATCH,
                });
            }
            // Each entry is at least 4 bytes: check before allocating.
            wire::need(buf, len * 4)?;
            let mut batch = Vec::with_capacity(len);
            for _ in 0..len {
                batch.push(DecisionEntry {
                    tx: TxId::decode(buf)?,
                    outcome: get_vote(buf)?,
                    participants: get_nodes(buf)?,
                });
            }
            return Ok(LogRecord::Decisions(batch));
        }
        if tag == 9 {
            return Ok(LogRecord::Snapshot(crate::snapshot::Snapshot::decode(buf)?));
        }
        let tx = match tag {
            1..=7 => TxId::decode(buf)?,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "LogRecord",
                    tag,
                });
            }
        };
        Ok(match tag {
            1 => LogRecord::Begin {
                tx,
                participants: get_nodes(buf)?,
            },
            2 => {
                let outcome = get_vote(buf)?;
                LogRecord::Decision {
                    tx,
                    outcome,
                    participants: get_nodes(buf)?,
                }
            }
            3 => LogRecord::End { tx },
            4 => LogRecord::Ready {
                tx,
                coordinator: NodeId::decode(buf)?,
                participants: get_nodes(buf)?,
            },
            5 => LogRecord::Commit {
                tx,
                coordinator: NodeId::decode(buf)?,
            },
            6 => LogRecord::Abort {
                tx,
                coordinator: NodeId::decode(buf)?,
            },
            _ => LogRecord::Heuristic {
                tx,
                heuristic: get_vote(buf)?,
            },
        })
    }
}

impl Record for LogRecord {
    const VERSION: u8 = 1;
}

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
            | Message::State { tx, .. } => tx,
        }
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
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        let tx = match tag {
            1..=8 => TxId::decode(buf)?,
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
            _ => Message::State {
                tx,
                state: PeerState::from_tag(wire::get_u8(buf)?)?,
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
    /// state answer of INIT.
    Abort {
        /// The transaction.
        tx: TxId,
        /// Its coordinator.
        coordinator: NodeId,
    },
}

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
                buf.put_u8(match outcome {
                    Vote::Commit => 1,
                    Vote::Abort => 0,
                });
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
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        let tx = match tag {
            1..=6 => TxId::decode(buf)?,
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
                let outcome = match wire::get_u8(buf)? {
                    1 => Vote::Commit,
                    0 => Vote::Abort,
                    tag => return Err(DecodeError::UnknownTag { what: "Vote", tag }),
                };
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
            _ => LogRecord::Abort {
                tx,
                coordinator: NodeId::decode(buf)?,
            },
        })
    }
}

impl Record for LogRecord {
    const VERSION: u8 = 1;
}

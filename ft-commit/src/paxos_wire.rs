//! What Paxos Commit ([`PaxosCommit`](crate::PaxosCommit)) sends
//! ([`PaxosMessage`]) and logs ([`PaxosRecord`]), with its ballots
//! ([`Ballot`]) and instance values ([`Value`]).
//!
//! Transaction ids ([`TxId`]), outcomes ([`Vote`]) and node lists are
//! encoded as in [`wire`](crate::wire). Everything is little-endian, by
//! hand, through ft-core's [`Wire`]; decoders treat their input as
//! hostile: lists are capped at [`MAX_PARTICIPANTS`] before anything is
//! allocated, and every failure is a typed [`DecodeError`].

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{NodeId, Record};

use crate::paxos_snapshot::PaxosSnapshot;
use crate::wire::{MAX_PARTICIPANTS, TxId, Vote, get_nodes, put_nodes};

/// The value of one Paxos instance: the vote of one resource manager (RM)
/// on one transaction, as Gray and Lamport name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// The RM prepared (its PREPARED record is durable).
    Prepared,
    /// The RM aborted, or a leader proposed abort for an RM it could not
    /// hear from.
    Aborted,
}

impl Value {
    fn tag(self) -> u8 {
        match self {
            Value::Prepared => 1,
            Value::Aborted => 2,
        }
    }
    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Value::Prepared),
            2 => Ok(Value::Aborted),
            tag => Err(DecodeError::UnknownTag { what: "Value", tag }),
        }
    }
}

fn put_vote(buf: &mut BytesMut, v: Vote) {
    buf.put_u8(match v {
        Vote::Commit => 1,
        Vote::Abort => 0,
    });
}

fn get_vote(buf: &mut Bytes) -> Result<Vote, DecodeError> {
    match wire::get_u8(buf)? {
        1 => Ok(Vote::Commit),
        0 => Ok(Vote::Abort),
        tag => Err(DecodeError::UnknownTag { what: "Vote", tag }),
    }
}

/// A Paxos ballot number, ordered by `round`, then `incarnation`, then
/// `leader`.
///
/// Ballot 0 (`round` 0) of an instance belongs to its RM, which proposes
/// its own vote in it (the fast path); its `leader` is the transaction's
/// coordinator, to whom the acceptors report. A leader that takes over
/// uses `round` ≥ 1 with its own id and incarnation: no two nodes, and no
/// two lives of one node, ever share a ballot, so a leader never needs to
/// log its ballot before using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    /// 0 for the RMs' own ballot; a leader's attempt number otherwise.
    pub round: u32,
    /// The leader's incarnation (0 in ballot 0).
    pub incarnation: u64,
    /// Who collects the phase 2b (and 1b) answers of this ballot.
    pub leader: NodeId,
}

impl Ballot {
    /// Ballot 0 of a transaction coordinated by `coordinator`.
    pub fn zero(coordinator: NodeId) -> Self {
        Ballot {
            round: 0,
            incarnation: 0,
            leader: coordinator,
        }
    }
}

impl Wire for Ballot {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.round);
        buf.put_u64_le(self.incarnation);
        self.leader.encode(buf);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Ballot {
            round: wire::get_u32(buf)?,
            incarnation: wire::get_u64(buf)?,
            leader: NodeId::decode(buf)?,
        })
    }
}

/// What an acceptor reports of one instance in phase 1b: the RM, and the
/// ballot and value it last accepted there, if any.
pub type Report = (NodeId, Option<(Ballot, Value)>);

/// The Paxos Commit messages (Gray & Lamport's names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaxosMessage {
    /// Coordinator (initial leader) → RM: prepare `tx` and vote, in ballot
    /// 0 of your own instance. Carries every participant (the instances of
    /// `tx`, and the candidates for leader if the coordinator fails).
    Prepare {
        /// The transaction.
        tx: TxId,
        /// Its participants (RMs).
        participants: Vec<NodeId>,
    },
    /// Phase 2a → every acceptor: accept `value` in `ballot` for the
    /// instance of `rm`. In ballot 0 the RM itself sends it (its vote, its
    /// record durable); in a higher ballot, the ballot's leader.
    Phase2a {
        /// The transaction.
        tx: TxId,
        /// The instance: the RM whose vote it decides.
        rm: NodeId,
        /// The ballot.
        ballot: Ballot,
        /// The value proposed.
        value: Value,
    },
    /// Phase 2b, acceptor → the ballot's leader: accepted (durably).
    Phase2b {
        /// The transaction.
        tx: TxId,
        /// The instance.
        rm: NodeId,
        /// The ballot accepted in.
        ballot: Ballot,
        /// The value accepted.
        value: Value,
    },
    /// Phase 1a, a new leader → every acceptor: promise `ballot` for the
    /// instances of `rms`.
    Phase1a {
        /// The transaction.
        tx: TxId,
        /// The ballot (round ≥ 1).
        ballot: Ballot,
        /// The instances asked about.
        rms: Vec<NodeId>,
    },
    /// Phase 1b, acceptor → leader: promised `ballot` (durably) for every
    /// instance of the phase 1a, with what it had accepted in each.
    Phase1b {
        /// The transaction.
        tx: TxId,
        /// The ballot promised.
        ballot: Ballot,
        /// One report per instance of the phase 1a.
        reports: Vec<Report>,
    },
    /// Leader → RMs (and the coordinator): the outcome, decided from the
    /// values chosen in every instance (COMMIT iff all are Prepared).
    Outcome {
        /// The transaction.
        tx: TxId,
        /// Commit or abort.
        outcome: Vote,
    },
}

impl PaxosMessage {
    /// The transaction the message is about.
    pub fn tx(&self) -> &TxId {
        match self {
            PaxosMessage::Prepare { tx, .. }
            | PaxosMessage::Phase2a { tx, .. }
            | PaxosMessage::Phase2b { tx, .. }
            | PaxosMessage::Phase1a { tx, .. }
            | PaxosMessage::Phase1b { tx, .. }
            | PaxosMessage::Outcome { tx, .. } => tx,
        }
    }
}

fn put_reports(buf: &mut BytesMut, reports: &[Report]) {
    // Callers keep lists within MAX_PARTICIPANTS.
    buf.put_u16_le(reports.len() as u16);
    for (rm, acc) in reports {
        rm.encode(buf);
        match acc {
            None => buf.put_u8(0),
            Some((b, v)) => {
                buf.put_u8(1);
                b.encode(buf);
                buf.put_u8(v.tag());
            }
        }
    }
}

fn get_reports(buf: &mut Bytes) -> Result<Vec<Report>, DecodeError> {
    let len = wire::get_u16(buf)? as usize;
    if len > MAX_PARTICIPANTS {
        return Err(DecodeError::Oversized {
            len,
            max: MAX_PARTICIPANTS,
        });
    }
    // At least 9 bytes per report: check before allocating.
    wire::need(buf, len * 9)?;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let rm = NodeId::decode(buf)?;
        let acc = match wire::get_u8(buf)? {
            0 => None,
            1 => Some((Ballot::decode(buf)?, Value::from_tag(wire::get_u8(buf)?)?)),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "Report",
                    tag,
                });
            }
        };
        out.push((rm, acc));
    }
    Ok(out)
}

impl Wire for PaxosMessage {
    fn encode(&self, buf: &mut BytesMut) {
        let tag = match self {
            PaxosMessage::Prepare { .. } => 1,
            PaxosMessage::Phase2a { .. } => 2,
            PaxosMessage::Phase2b { .. } => 3,
            PaxosMessage::Phase1a { .. } => 4,
            PaxosMessage::Phase1b { .. } => 5,
            PaxosMessage::Outcome { .. } => 6,
        };
        buf.put_u8(tag);
        self.tx().encode(buf);
        match self {
            PaxosMessage::Prepare { participants, .. } => put_nodes(buf, participants),
            PaxosMessage::Phase2a {
                rm, ballot, value, ..
            }
            | PaxosMessage::Phase2b {
                rm, ballot, value, ..
            } => {
                rm.encode(buf);
                ballot.encode(buf);
                buf.put_u8(value.tag());
            }
            PaxosMessage::Phase1a { ballot, rms, .. } => {
                ballot.encode(buf);
                put_nodes(buf, rms);
            }
            PaxosMessage::Phase1b {
                ballot, reports, ..
            } => {
                ballot.encode(buf);
                put_reports(buf, reports);
            }
            PaxosMessage::Outcome { outcome, .. } => put_vote(buf, *outcome),
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        if !(1..=6).contains(&tag) {
            return Err(DecodeError::UnknownTag {
                what: "PaxosMessage",
                tag,
            });
        }
        let tx = TxId::decode(buf)?;
        Ok(match tag {
            1 => PaxosMessage::Prepare {
                tx,
                participants: get_nodes(buf)?,
            },
            2 | 3 => {
                let rm = NodeId::decode(buf)?;
                let ballot = Ballot::decode(buf)?;
                let value = Value::from_tag(wire::get_u8(buf)?)?;
                if tag == 2 {
                    PaxosMessage::Phase2a {
                        tx,
                        rm,
                        ballot,
                        value,
                    }
                } else {
                    PaxosMessage::Phase2b {
                        tx,
                        rm,
                        ballot,
                        value,
                    }
                }
            }
            4 => PaxosMessage::Phase1a {
                tx,
                ballot: Ballot::decode(buf)?,
                rms: get_nodes(buf)?,
            },
            5 => PaxosMessage::Phase1b {
                tx,
                ballot: Ballot::decode(buf)?,
                reports: get_reports(buf)?,
            },
            _ => PaxosMessage::Outcome {
                tx,
                outcome: get_vote(buf)?,
            },
        })
    }
}

/// What a [`PaxosCommit`](crate::PaxosCommit) node logs (typed and
/// versioned by ft-core's [`record`](ft_core::record) module). Which ones
/// are forced (waited for before anything depends on them) is said on
/// each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaxosRecord {
    /// Coordinator: `tx` began with these participants. **Not forced**:
    /// PREPARE goes out at once; the record only lets a recovering
    /// coordinator learn (and tell its application) the outcome.
    Begin {
        /// The transaction.
        tx: TxId,
        /// Its participants.
        participants: Vec<NodeId>,
    },
    /// Coordinator (or leader): the outcome it learned. **Not forced**: the
    /// outcome is fixed by what the acceptors accepted, and a leader that
    /// lost this record learns it again.
    Decided {
        /// The transaction.
        tx: TxId,
        /// The outcome.
        outcome: Vote,
    },
    /// RM: its vote on `tx`, **forced** before its phase 2a in ballot 0 (an
    /// RM must never propose two values in its ballot 0).
    Voted {
        /// The transaction.
        tx: TxId,
        /// Its coordinator.
        coordinator: NodeId,
        /// Its participants (empty if the RM only joined).
        participants: Vec<NodeId>,
        /// Prepared or Aborted.
        value: Value,
    },
    /// RM: the outcome learned, written before the application is told
    /// (no message waits for it).
    Outcome {
        /// The transaction.
        tx: TxId,
        /// The outcome.
        outcome: Vote,
    },
    /// Acceptor: promised `ballot` for the instances of `rms`, **forced**
    /// before its phase 1b.
    Promised {
        /// The transaction.
        tx: TxId,
        /// The ballot.
        ballot: Ballot,
        /// The instances.
        rms: Vec<NodeId>,
    },
    /// Acceptor: accepted `value` in `ballot` for the instance of `rm`,
    /// **forced** before its phase 2b.
    Accepted {
        /// The transaction.
        tx: TxId,
        /// The instance.
        rm: NodeId,
        /// The ballot.
        ballot: Ballot,
        /// The value.
        value: Value,
    },
    /// Any role: what the node still needs (live transactions and the
    /// window of outcomes); every record before it may be dropped. Written
    /// every [`PaxosConfig::snapshot_every`](crate::PaxosConfig::snapshot_every)
    /// records; see [`paxos_snapshot`](crate::paxos_snapshot).
    Snapshot(PaxosSnapshot),
}

impl Wire for PaxosRecord {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            PaxosRecord::Begin { tx, participants } => {
                buf.put_u8(1);
                tx.encode(buf);
                put_nodes(buf, participants);
            }
            PaxosRecord::Decided { tx, outcome } => {
                buf.put_u8(2);
                tx.encode(buf);
                put_vote(buf, *outcome);
            }
            PaxosRecord::Voted {
                tx,
                coordinator,
                participants,
                value,
            } => {
                buf.put_u8(3);
                tx.encode(buf);
                coordinator.encode(buf);
                put_nodes(buf, participants);
                buf.put_u8(value.tag());
            }
            PaxosRecord::Outcome { tx, outcome } => {
                buf.put_u8(4);
                tx.encode(buf);
                put_vote(buf, *outcome);
            }
            PaxosRecord::Promised { tx, ballot, rms } => {
                buf.put_u8(5);
                tx.encode(buf);
                ballot.encode(buf);
                put_nodes(buf, rms);
            }
            PaxosRecord::Accepted {
                tx,
                rm,
                ballot,
                value,
            } => {
                buf.put_u8(6);
                tx.encode(buf);
                rm.encode(buf);
                ballot.encode(buf);
                buf.put_u8(value.tag());
            }
            PaxosRecord::Snapshot(snap) => {
                buf.put_u8(7);
                snap.encode(buf);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        if tag == 7 {
            return Ok(PaxosRecord::Snapshot(PaxosSnapshot::decode(buf)?));
        }
        if !(1..=6).contains(&tag) {
            return Err(DecodeError::UnknownTag {
                what: "PaxosRecord",
                tag,
            });
        }
        let tx = TxId::decode(buf)?;
        Ok(match tag {
            1 => PaxosRecord::Begin {
                tx,
                participants: get_nodes(buf)?,
            },
            2 => PaxosRecord::Decided {
                tx,
                outcome: get_vote(buf)?,
            },
            3 => PaxosRecord::Voted {
                tx,
                coordinator: NodeId::decode(buf)?,
                participants: get_nodes(buf)?,
                value: Value::from_tag(wire::get_u8(buf)?)?,
            },
            4 => PaxosRecord::Outcome {
                tx,
                outcome: get_vote(buf)?,
            },
            5 => PaxosRecord::Promised {
                tx,
                ballot: Ballot::decode(buf)?,
                rms: get_nodes(buf)?,
            },
            _ => PaxosRecord::Accepted {
                tx,
                rm: NodeId::decode(buf)?,
                ballot: Ballot::decode(buf)?,
                value: Value::from_tag(wire::get_u8(buf)?)?,
            },
        })
    }
}

impl Record for PaxosRecord {
    const VERSION: u8 = 1;
}

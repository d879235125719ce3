//! The snapshot record of a [`PaxosCommit`](crate::PaxosCommit) node's log
//! ([`PaxosRecord::Snapshot`](crate::PaxosRecord::Snapshot)): what the node
//! still needs, so that every record before it can be dropped.
//!
//! # What it keeps
//!
//! - Every **live** transaction, per role: a coordinator's BEGIN without
//!   an outcome; an RM's vote without an outcome; every acceptor instance
//!   (promise and accepted value) of a transaction whose outcome this node
//!   does not know.
//! - The **window**: the outcomes of the last
//!   [`PaxosConfig::keep_finished`] transactions whose outcome this node
//!   learned (in any role), with the coordinator and RM entries of those
//!   transactions (so a restart does not tell the application again:
//!   `told`).
//! - `forgotten`: some outcome has left the window.
//!
//! An acceptor keeps no instance of a transaction whose outcome it knows:
//! it answers phase 1a and phase 2a about it with OUTCOME instead (see
//! below). The snapshot is bounded by the live transactions (at an
//! acceptor at most [`PaxosConfig::max_open`]) plus the window, not by
//! history.
//!
//! # Why forgetting is safe
//!
//! Paxos is safe because any F+1 acceptors that promise a ballot include
//! one of the F+1 that accepted a chosen value, and that one reports it:
//! the new leader then proposes the chosen value again. An acceptor that
//! simply forgot an instance would promise as if it had accepted nothing,
//! and a lagging RM that missed OUTCOME and takes over could propose
//! Aborted where Prepared was chosen. So here:
//!
//! 1. An acceptor drops an instance only once its transaction's **outcome
//!    is known** at this node (it learned it as coordinator, RM or from
//!    OUTCOME, which leaders also send to the acceptors when compaction
//!    is on). The outcome is a consequence of the chosen values, and it
//!    is final.
//! 2. While the outcome is in the window, a phase 1a or phase 2a about the
//!    transaction is answered with **OUTCOME** (never a promise, never an
//!    acceptance): the asker learns the decision itself.
//! 3. Once any outcome has left the window (`forgotten`), the node cannot
//!    tell a transaction it never heard of from one it forgot. It then
//!    stays **silent** about transactions it does not know, except for
//!    the one message only a new transaction needs: a **phase 2a in
//!    ballot 0 from the RM itself** (the RM's own vote). A phase 1a or a
//!    phase 2a in a higher ballot about an unknown transaction is ignored
//!    and counted ([`CommitStats::silent_unknown`]): to its sender, this
//!    acceptor is down. A takeover's phase 1a can then only gather F+1
//!    promises if F+1 acceptors still hold state of the transaction, and
//!    by 1. each of them holds its accepted value, so the argument above
//!    holds again.
//!
//! Why a ballot-0 phase 2a may be taken as new: only the RM sends it, with
//! its vote, which its forced VOTED record fixes forever; and an RM sends
//! it only just after voting, and again on a repeated PREPARE, which a
//! coordinator sends only in ballot 0, before its
//! [`PaxosConfig::vote_timeout`]. So ballot-0 phase 2a of a transaction
//! exist only in its first moments. As for two-phase commit
//! ([`crate::snapshot`]), the window assumes that **transaction ids are
//! never reused and that messages do not outlive the window** (a
//! ballot-0 phase 2a delayed in the network past `keep_finished` later
//! outcomes could re-create an instance an acceptor forgot, next to a
//! different value chosen in a higher ballot).
//!
//! What silence costs: a live node that lags by more than the window (an
//! RM that missed OUTCOME and whose acceptors all forgot the transaction)
//! waits forever instead of aborting wrongly; and a transaction that no
//! acceptor of a majority heard of in ballot 0 (every PREPARE lost) can
//! no longer be aborted by the coordinator's takeover while the majority
//! is silent about it. Both are liveness, never atomicity; a larger
//! `keep_finished` makes the first rarer.
//!
//! # How acceptors learn outcomes
//!
//! An acceptor that is neither a participant nor the coordinator learns
//! an outcome from the OUTCOME its leader sends it on deciding. If that
//! is lost, the acceptor's `Learn` timer (every two takeover rounds, while
//! the transaction is open there) sends its phase 2b again, and a leader
//! that decided answers a repeated phase 2b with OUTCOME. A leader that
//! has itself forgotten the transaction cannot answer: the instances then
//! stay (safely) and count against [`PaxosConfig::max_open`].
//!
//! # Size
//!
//! About (live + `keep_finished`) × (id + 8 bytes per participant) for
//! the coordinator and RM entries, plus about 40 bytes per open acceptor
//! instance: with the defaults and a few participants per transaction,
//! tens of kilobytes.
//!
//! [`PaxosConfig::keep_finished`]: crate::PaxosConfig::keep_finished
//! [`PaxosConfig::max_open`]: crate::PaxosConfig::max_open
//! [`PaxosConfig::vote_timeout`]: crate::PaxosConfig::vote_timeout
//! [`CommitStats::silent_unknown`]: crate::CommitStats::silent_unknown

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::NodeId;
use ft_core::wire::{self, DecodeError, Wire};

use crate::paxos_wire::{Ballot, Value};
use crate::snapshot::MAX_SNAPSHOT_ENTRIES;
use crate::wire::{TxId, Vote, get_nodes, get_vote, put_nodes, put_vote};

/// The version of the snapshot encoding (its first byte).
pub const PAXOS_SNAPSHOT_VERSION: u8 = 1;

/// A coordinator's transaction in a [`PaxosSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapBegun {
    /// The transaction.
    pub tx: TxId,
    /// Its participants.
    pub participants: Vec<NodeId>,
    /// The outcome learned; `None` while undecided.
    pub outcome: Option<Vote>,
    /// The application was told the outcome before the snapshot.
    pub told: bool,
}

/// An RM's transaction (it voted) in a [`PaxosSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapRm {
    /// The transaction.
    pub tx: TxId,
    /// Its coordinator.
    pub coordinator: NodeId,
    /// Its participants.
    pub participants: Vec<NodeId>,
    /// The RM's vote.
    pub vote: Value,
    /// The outcome learned; `None` while waiting.
    pub outcome: Option<Vote>,
    /// The application was told the outcome before the snapshot.
    pub told: bool,
}

/// One acceptor instance of a transaction whose outcome the node does not
/// know, in a [`PaxosSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInstance {
    /// The transaction.
    pub tx: TxId,
    /// The instance (the RM whose vote it decides).
    pub rm: NodeId,
    /// The highest ballot promised.
    pub promised: Option<Ballot>,
    /// The ballot and value last accepted.
    pub accepted: Option<(Ballot, Value)>,
}

/// What a Paxos Commit node still needs of its log. See the
/// [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaxosSnapshot {
    /// Some outcome left the window: stay silent about unknown
    /// transactions (except a ballot-0 phase 2a).
    pub forgotten: bool,
    /// The window of outcomes known here, oldest first.
    pub outcomes: Vec<(TxId, Vote)>,
    /// Coordinator entries.
    pub begun: Vec<SnapBegun>,
    /// RM entries.
    pub rms: Vec<SnapRm>,
    /// Acceptor instances.
    pub instances: Vec<SnapInstance>,
}

fn get_bool(buf: &mut Bytes) -> Result<bool, DecodeError> {
    match wire::get_u8(buf)? {
        0 => Ok(false),
        1 => Ok(true),
        tag => Err(DecodeError::UnknownTag { what: "bool", tag }),
    }
}

fn put_opt_vote(buf: &mut BytesMut, v: Option<Vote>) {
    match v {
        None => buf.put_u8(2),
        Some(v) => put_vote(buf, v),
    }
}

fn get_opt_vote(buf: &mut Bytes) -> Result<Option<Vote>, DecodeError> {
    if buf.first() == Some(&2) {
        let _ = wire::get_u8(buf)?;
        return Ok(None);
    }
    get_vote(buf).map(Some)
}

fn put_value(buf: &mut BytesMut, v: Value) {
    buf.put_u8(match v {
        Value::Prepared => 1,
        Value::Aborted => 2,
    });
}

fn get_value(buf: &mut Bytes) -> Result<Value, DecodeError> {
    match wire::get_u8(buf)? {
        1 => Ok(Value::Prepared),
        2 => Ok(Value::Aborted),
        tag => Err(DecodeError::UnknownTag { what: "Value", tag }),
    }
}

/// A list length, checked against [`MAX_SNAPSHOT_ENTRIES`] and against
/// the bytes left (each entry takes at least `min_entry`) before anything
/// is allocated.
fn get_len(buf: &mut Bytes, min_entry: usize) -> Result<usize, DecodeError> {
    let len = wire::get_u32(buf)? as usize;
    if len > MAX_SNAPSHOT_ENTRIES {
        return Err(DecodeError::Oversized {
            len,
            max: MAX_SNAPSHOT_ENTRIES,
        });
    }
    wire::need(buf, len * min_entry)?;
    Ok(len)
}

impl Wire for PaxosSnapshot {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(PAXOS_SNAPSHOT_VERSION);
        buf.put_u8(u8::from(self.forgotten));
        buf.put_u32_le(self.outcomes.len() as u32);
        for (tx, o) in &self.outcomes {
            tx.encode(buf);
            put_vote(buf, *o);
        }
        buf.put_u32_le(self.begun.len() as u32);
        for b in &self.begun {
            b.tx.encode(buf);
            put_nodes(buf, &b.participants);
            put_opt_vote(buf, b.outcome);
            buf.put_u8(u8::from(b.told));
        }
        buf.put_u32_le(self.rms.len() as u32);
        for r in &self.rms {
            r.tx.encode(buf);
            r.coordinator.encode(buf);
            put_nodes(buf, &r.participants);
            put_value(buf, r.vote);
            put_opt_vote(buf, r.outcome);
            buf.put_u8(u8::from(r.told));
        }
        buf.put_u32_le(self.instances.len() as u32);
        for i in &self.instances {
            i.tx.encode(buf);
            i.rm.encode(buf);
            match i.promised {
                None => buf.put_u8(0),
                Some(b) => {
                    buf.put_u8(1);
                    b.encode(buf);
                }
            }
            match i.accepted {
                None => buf.put_u8(0),
                Some((b, v)) => {
                    buf.put_u8(1);
                    b.encode(buf);
                    put_value(buf, v);
                }
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let version = wire::get_u8(buf)?;
        if version != PAXOS_SNAPSHOT_VERSION {
            return Err(DecodeError::UnknownTag {
                what: "PaxosSnapshot version",
                tag: version,
            });
        }
        let forgotten = get_bool(buf)?;
        // Minimum entry sizes: an empty id is 1 byte, a node 8, a node
        // list 2, a vote, value, option or bool 1.
        let n = get_len(buf, 2)?;
        let mut outcomes = Vec::with_capacity(n);
        for _ in 0..n {
            outcomes.push((TxId::decode(buf)?, get_vote(buf)?));
        }
        let n = get_len(buf, 5)?;
        let mut begun = Vec::with_capacity(n);
        for _ in 0..n {
            begun.push(SnapBegun {
                tx: TxId::decode(buf)?,
                participants: get_nodes(buf)?,
                outcome: get_opt_vote(buf)?,
                told: get_bool(buf)?,
            });
        }
        let n = get_len(buf, 14)?;
        let mut rms = Vec::with_capacity(n);
        for _ in 0..n {
            rms.push(SnapRm {
                tx: TxId::decode(buf)?,
                coordinator: NodeId::decode(buf)?,
                participants: get_nodes(buf)?,
                vote: get_value(buf)?,
                outcome: get_opt_vote(buf)?,
                told: get_bool(buf)?,
            });
        }
        let n = get_len(buf, 11)?;
        let mut instances = Vec::with_capacity(n);
        for _ in 0..n {
            let tx = TxId::decode(buf)?;
            let rm = NodeId::decode(buf)?;
            let promised = if get_bool(buf)? {
                Some(Ballot::decode(buf)?)
            } else {
                None
            };
            let accepted = if get_bool(buf)? {
                Some((Ballot::decode(buf)?, get_value(buf)?))
            } else {
                None
            };
            instances.push(SnapInstance {
                tx,
                rm,
                promised,
                accepted,
            });
        }
        Ok(PaxosSnapshot {
            forgotten,
            outcomes,
            begun,
            rms,
            instances,
        })
    }
}

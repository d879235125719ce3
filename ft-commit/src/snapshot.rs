//! The snapshot record of a [`TwoPhase`](crate::TwoPhase) node's log
//! ([`LogRecord::Snapshot`](crate::LogRecord::Snapshot)): what the node
//! still needs, so that every record before it can be dropped.
//!
//! # What it keeps, and why that is bounded
//!
//! - Every transaction still **live**: a coordinator's WAIT (with BEGIN
//!   logged) and its decisions not yet acknowledged by every participant;
//!   a participant's READY (with any heuristic decision of its resource).
//!   These are bounded by the transactions in progress, not by history.
//! - The outcomes of the last [`TwoPhaseConfig::keep_finished`] finished
//!   transactions per role. A participant must keep the outcome it may
//!   still be asked about: one that forgot a COMMIT would, asked by a
//!   READY peer, log ABORT and answer INIT, and the peer would abort
//!   beside a commit. So a node that has forgotten any outcome
//!   (`forgotten`) no longer answers INIT about a transaction it does not
//!   know (it cannot tell "never heard of" from "forgotten"): it stays
//!   silent, and the asker learns the outcome from the coordinator, which
//!   forgets a commit only after every participant acknowledged it. That
//!   costs liveness in one corner (a peer that never got its VOTE_REQUEST
//!   can no longer free a READY asker while the coordinator is down),
//!   never atomicity.
//!
//! Its size is about (live transactions + 2 × `keep_finished`) × (id +
//! 8 bytes per participant): with the defaults and a few participants per
//! transaction, tens of kilobytes; at worst (1024 outcomes per role, 64-byte
//! ids, 256 participants each) about 4.3 MB plus the live transactions,
//! under ft-storage's `FileLog` default record limit of 16 MiB.
//!
//! The window also bounds how late a message may come: a VOTE_REQUEST
//! delayed in the network past `keep_finished` later transactions of the
//! node looks new. Transaction ids must be unique (never reused), and
//! messages must not outlive the window (as TCP assumes a maximum segment
//! lifetime). Within the window, a late message is answered from the
//! snapshot (a late DECISION_REQUEST about a committed transaction gets
//! COMMIT).
//!
//! [`TwoPhaseConfig::keep_finished`]: crate::TwoPhaseConfig::keep_finished

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::NodeId;
use ft_core::wire::{self, DecodeError, Wire};

use crate::wire::{TxId, Vote, get_nodes, get_vote, put_nodes, put_vote};

/// The most entries (per role) a snapshot may hold: bounds what a corrupt
/// record can make recovery allocate.
pub const MAX_SNAPSHOT_ENTRIES: usize = 1 << 20;

/// A coordinator's transaction in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapCoord {
    /// The transaction.
    pub tx: TxId,
    /// The decision; `None` for WAIT (BEGIN logged, undecided).
    pub outcome: Option<Vote>,
    /// Its participants (after a decision: whom to tell).
    pub participants: Vec<NodeId>,
    /// Every participant acknowledged the decision.
    pub ended: bool,
}

/// A participant's transaction in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapPart {
    /// The transaction.
    pub tx: TxId,
    /// Its outcome here; `None` for READY.
    pub outcome: Option<Vote>,
    /// Its coordinator.
    pub coordinator: NodeId,
    /// Its participants (whom to ask while READY).
    pub participants: Vec<NodeId>,
    /// What the resource decided on its own while blocked, if it did.
    pub heuristic: Option<Vote>,
    /// The application was told the outcome before the snapshot was
    /// written: a restart does not tell it again.
    pub told: bool,
}

/// What a node still needs of its log. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Coordinator side.
    pub coords: Vec<SnapCoord>,
    /// Participant side.
    pub parts: Vec<SnapPart>,
    /// Some participant outcome was dropped: do not answer INIT about an
    /// unknown transaction.
    pub forgotten: bool,
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

fn get_bool(buf: &mut Bytes) -> Result<bool, DecodeError> {
    match wire::get_u8(buf)? {
        0 => Ok(false),
        1 => Ok(true),
        tag => Err(DecodeError::UnknownTag { what: "bool", tag }),
    }
}

fn get_len(buf: &mut Bytes, min_entry: usize) -> Result<usize, DecodeError> {
    let len = wire::get_u32(buf)? as usize;
    if len > MAX_SNAPSHOT_ENTRIES {
        return Err(DecodeError::Oversized {
            len,
            max: MAX_SNAPSHOT_ENTRIES,
        });
    }
    // Each entry takes at least `min_entry` bytes: a short buffer fails
    // here, before anything is allocated.
    wire::need(buf, len * min_entry)?;
    Ok(len)
}

impl Wire for Snapshot {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.forgotten));
        buf.put_u32_le(self.coords.len() as u32);
        for c in &self.coords {
            c.tx.encode(buf);
            put_opt_vote(buf, c.outcome);
            buf.put_u8(u8::from(c.ended));
            put_nodes(buf, &c.participants);
        }
        buf.put_u32_le(self.parts.len() as u32);
        for p in &self.parts {
            p.tx.encode(buf);
            put_opt_vote(buf, p.outcome);
            p.coordinator.encode(buf);
            put_nodes(buf, &p.participants);
            put_opt_vote(buf, p.heuristic);
            buf.put_u8(u8::from(p.told));
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let forgotten = get_bool(buf)?;
        let n = get_len(buf, 5)?;
        let mut coords = Vec::with_capacity(n);
        for _ in 0..n {
            coords.push(SnapCoord {
                tx: TxId::decode(buf)?,
                outcome: get_opt_vote(buf)?,
                ended: get_bool(buf)?,
                participants: get_nodes(buf)?,
            });
        }
        let n = get_len(buf, 14)?;
        let mut parts = Vec::with_capacity(n);
        for _ in 0..n {
            parts.push(SnapPart {
                tx: TxId::decode(buf)?,
                outcome: get_opt_vote(buf)?,
                coordinator: NodeId::decode(buf)?,
                participants: get_nodes(buf)?,
                heuristic: get_opt_vote(buf)?,
                told: get_bool(buf)?,
            });
        }
        Ok(Snapshot {
            coords,
            parts,
            forgotten,
        })
    }
}

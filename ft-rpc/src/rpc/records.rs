//! What an RPC node keeps on stable storage: typed, versioned records
//! ([`RpcRecord`]), and how a new life reads them back.
//!
//! Every record is an [`RpcRecord`] in `ft_core`'s record format
//! (component, [`RpcRecord::VERSION`], then the encoding below); the
//! byte-level layout is in the crate's README. A record that does not
//! decode fails the recovery ([`RecoveryError`]): it is never skipped.
//!
//! # Snapshots
//!
//! A node's log would otherwise grow with every exactly-once call. So every
//! so often ([`Compaction`](super::Compaction)) the node writes a
//! *snapshot*: a [`SnapshotPart::Start`], one part for each thing it still
//! needs (each client's state, every effect, the live completion records,
//! the unfinished logged calls), and a [`SnapshotPart::End`] that counts
//! them. Once the end is durable, the records before the start are no
//! longer read, and the node asks for them to be compacted away.
//!
//! A new life reads from the start of the last *whole* snapshot (its end
//! is there and counts the parts between) and applies every record after
//! it; parts of a snapshot cut short by a crash are skipped, since every
//! record they restate is still in the log before them. So recovery reads
//! the same state whether or not the environment has dropped the records
//! before the snapshot yet.

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::record::{self, Component, Record, RecordError, RecoveryError};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{Incarnation, NodeId};

use super::message::{CallId, get_id, put_id};

/// The most effects one [`SnapshotPart::Effects`] holds.
pub const EFFECTS_PER_PART: usize = 1024;

/// Bytes of effects after which a [`SnapshotPart::Effects`] is closed.
const EFFECT_BYTES_PER_PART: usize = 64 << 10;

/// Packs `effects` into snapshot parts.
pub(crate) fn effect_parts(effects: &[(CallId, Bytes)]) -> Vec<SnapshotPart> {
    let mut parts = Vec::new();
    let mut part: Vec<(CallId, Bytes)> = Vec::new();
    let mut bytes = 0;
    for (id, effect) in effects {
        if part.len() == EFFECTS_PER_PART || (bytes >= EFFECT_BYTES_PER_PART && !part.is_empty()) {
            parts.push(SnapshotPart::Effects(std::mem::take(&mut part)));
            bytes = 0;
        }
        bytes += effect.len();
        part.push((*id, effect.clone()));
    }
    if !part.is_empty() {
        parts.push(SnapshotPart::Effects(part));
    }
    parts
}

/// The largest body (reply or effect) a record may claim: records come
/// from this node's own storage, which checks them, but a decoder still
/// bounds what it believes.
const MAX_RECORD_BODY: usize = u32::MAX as usize;

/// What a completed call answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The reply.
    Reply(Bytes),
    /// The handler failed.
    Failed,
    /// The reply was larger than the server may send.
    TooLarge(u64),
}

impl Answer {
    pub(crate) fn size(&self) -> usize {
        match self {
            Answer::Reply(b) => b.len(),
            _ => 0,
        }
    }
}

/// A completion record as it is on stable storage (exactly-once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The call.
    pub id: CallId,
    /// The fingerprint of its semantics and request.
    pub fingerprint: u64,
    pub(crate) answer: Answer,
    /// The state change its handler returned with the reply, made durable
    /// in the same record (see [`RpcInput::Complete`](super::RpcInput)).
    /// In a snapshot the effects are parts of their own
    /// ([`SnapshotPart::Effects`]) and this is `None`.
    pub effect: Option<Bytes>,
}

impl Completion {
    /// The reply, if the call completed with one.
    pub fn reply(&self) -> Option<&Bytes> {
        match &self.answer {
            Answer::Reply(b) => Some(b),
            _ => None,
        }
    }
}

/// A call the client logged before sending it (extermination and gentle
/// reincarnation), so that a later life knows what it left unfinished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedCall {
    /// The life that made the call.
    pub life: Incarnation,
    /// Its sequence number in that life.
    pub seq: u64,
    /// The server it was sent to.
    pub server: NodeId,
}

/// What a server knows of one client beyond its completion records: the
/// life it last saw, its stale mark and the calls whose records it
/// forgot. Kept in snapshots, so that a call answered and forgotten before
/// the snapshot is never run again after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRecord {
    /// The client.
    pub client: NodeId,
    /// Its life.
    pub incarnation: Incarnation,
    /// Its stale mark: every call below it was answered and forgotten.
    pub first_incomplete: u64,
    /// Calls above the mark whose records were forgotten, as closed ranges.
    pub forgotten: Vec<(u64, u64)>,
}

/// One record of a snapshot. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotPart {
    /// A snapshot begins.
    Start,
    /// A client's state on the server.
    Client(ClientRecord),
    /// Effects of exactly-once calls, in the order they were made durable,
    /// many to a record (at most [`EFFECTS_PER_PART`], or a part of about
    /// 64 KiB).
    Effects(Vec<(CallId, Bytes)>),
    /// A completion record still needed (its effect is a part of its own).
    Completion(Completion),
    /// A logged call not yet known to be finished.
    CallLogged(LoggedCall),
    /// The snapshot ends; `parts` records lie between it and its start.
    End {
        /// How many.
        parts: u64,
    },
}

/// A record of an RPC node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcRecord {
    /// An exactly-once call completed: its answer and effect, durable
    /// before the reply is sent.
    Completion(Completion),
    /// A call was logged before it was sent.
    CallLogged(LoggedCall),
    /// A logged call finished.
    CallDone {
        /// The life that made it.
        life: Incarnation,
        /// Its sequence number.
        seq: u64,
    },
    /// A record of a snapshot.
    Snapshot(SnapshotPart),
}

const CALL_LOGGED: u8 = 2;
const CALL_DONE: u8 = 3;
const COMPLETION: u8 = 4;
const SNAP_START: u8 = 5;
const SNAP_CLIENT: u8 = 6;
const SNAP_EFFECTS: u8 = 7;
const SNAP_COMPLETION: u8 = 8;
const SNAP_CALL: u8 = 9;
const SNAP_END: u8 = 10;

const ANSWER_REPLY: u8 = 0;
const ANSWER_FAILED: u8 = 1;
const ANSWER_TOO_LARGE: u8 = 2;

impl Completion {
    fn put(&self, buf: &mut BytesMut) {
        put_id(buf, &self.id);
        buf.put_u64_le(self.fingerprint);
        match &self.answer {
            Answer::Reply(b) => {
                buf.put_u8(ANSWER_REPLY);
                wire::put_bytes(buf, b);
            }
            Answer::Failed => buf.put_u8(ANSWER_FAILED),
            Answer::TooLarge(len) => {
                buf.put_u8(ANSWER_TOO_LARGE);
                buf.put_u64_le(*len);
            }
        }
        put_opt_bytes(buf, self.effect.as_ref());
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let id = get_id(buf)?;
        let fingerprint = wire::get_u64(buf)?;
        let answer = match wire::get_u8(buf)? {
            ANSWER_REPLY => Answer::Reply(wire::get_bytes(buf, MAX_RECORD_BODY)?),
            ANSWER_FAILED => Answer::Failed,
            ANSWER_TOO_LARGE => Answer::TooLarge(wire::get_u64(buf)?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "Answer",
                    tag,
                });
            }
        };
        let effect = get_opt_bytes(buf)?;
        Ok(Completion {
            id,
            fingerprint,
            answer,
            effect,
        })
    }
}

impl LoggedCall {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.life.0);
        buf.put_u64_le(self.seq);
        buf.put_u64_le(self.server.0);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(LoggedCall {
            life: Incarnation(wire::get_u64(buf)?),
            seq: wire::get_u64(buf)?,
            server: NodeId(wire::get_u64(buf)?),
        })
    }
}

impl ClientRecord {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.client.0);
        buf.put_u64_le(self.incarnation.0);
        buf.put_u64_le(self.first_incomplete);
        buf.put_u32_le(self.forgotten.len() as u32);
        for &(start, end) in &self.forgotten {
            buf.put_u64_le(start);
            buf.put_u64_le(end);
        }
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let client = NodeId(wire::get_u64(buf)?);
        let incarnation = Incarnation(wire::get_u64(buf)?);
        let first_incomplete = wire::get_u64(buf)?;
        let n = wire::get_len(buf, 16)?;
        let mut forgotten = Vec::with_capacity(n);
        for _ in 0..n {
            let (start, end) = (wire::get_u64(buf)?, wire::get_u64(buf)?);
            if start > end {
                return Err(DecodeError::Invalid(
                    "a forgotten range ends before it starts",
                ));
            }
            forgotten.push((start, end));
        }
        Ok(ClientRecord {
            client,
            incarnation,
            first_incomplete,
            forgotten,
        })
    }
}

fn put_opt_bytes(buf: &mut BytesMut, b: Option<&Bytes>) {
    match b {
        Some(b) => {
            buf.put_u8(1);
            wire::put_bytes(buf, b);
        }
        None => buf.put_u8(0),
    }
}

fn get_opt_bytes(buf: &mut Bytes) -> Result<Option<Bytes>, DecodeError> {
    match wire::get_u8(buf)? {
        0 => Ok(None),
        1 => Ok(Some(wire::get_bytes(buf, MAX_RECORD_BODY)?)),
        tag => Err(DecodeError::UnknownTag {
            what: "Option<Bytes>",
            tag,
        }),
    }
}

impl Wire for RpcRecord {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            RpcRecord::Completion(c) => {
                buf.put_u8(COMPLETION);
                c.put(buf);
            }
            RpcRecord::CallLogged(c) => {
                buf.put_u8(CALL_LOGGED);
                c.put(buf);
            }
            RpcRecord::CallDone { life, seq } => {
                buf.put_u8(CALL_DONE);
                buf.put_u64_le(life.0);
                buf.put_u64_le(*seq);
            }
            RpcRecord::Snapshot(part) => match part {
                SnapshotPart::Start => buf.put_u8(SNAP_START),
                SnapshotPart::Client(c) => {
                    buf.put_u8(SNAP_CLIENT);
                    c.put(buf);
                }
                SnapshotPart::Effects(effects) => {
                    buf.put_u8(SNAP_EFFECTS);
                    buf.put_u32_le(effects.len() as u32);
                    for (id, effect) in effects {
                        put_id(buf, id);
                        wire::put_bytes(buf, effect);
                    }
                }
                SnapshotPart::Completion(c) => {
                    buf.put_u8(SNAP_COMPLETION);
                    c.put(buf);
                }
                SnapshotPart::CallLogged(c) => {
                    buf.put_u8(SNAP_CALL);
                    c.put(buf);
                }
                SnapshotPart::End { parts } => {
                    buf.put_u8(SNAP_END);
                    buf.put_u64_le(*parts);
                }
            },
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let snap = RpcRecord::Snapshot;
        Ok(match wire::get_u8(buf)? {
            COMPLETION => RpcRecord::Completion(Completion::get(buf)?),
            CALL_LOGGED => RpcRecord::CallLogged(LoggedCall::get(buf)?),
            CALL_DONE => RpcRecord::CallDone {
                life: Incarnation(wire::get_u64(buf)?),
                seq: wire::get_u64(buf)?,
            },
            SNAP_START => snap(SnapshotPart::Start),
            SNAP_CLIENT => snap(SnapshotPart::Client(ClientRecord::get(buf)?)),
            SNAP_EFFECTS => {
                // An effect takes an id (24 bytes) and a length (4) at least.
                let n = wire::get_len(buf, 28)?;
                let mut effects = Vec::with_capacity(n);
                for _ in 0..n {
                    effects.push((get_id(buf)?, wire::get_bytes(buf, MAX_RECORD_BODY)?));
                }
                snap(SnapshotPart::Effects(effects))
            }
            SNAP_COMPLETION => snap(SnapshotPart::Completion(Completion::get(buf)?)),
            SNAP_CALL => snap(SnapshotPart::CallLogged(LoggedCall::get(buf)?)),
            SNAP_END => snap(SnapshotPart::End {
                parts: wire::get_u64(buf)?,
            }),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "RpcRecord",
                    tag,
                });
            }
        })
    }
}

impl Record for RpcRecord {
    const VERSION: u8 = 1;
}

/// One thing the durable records say, in the order a new life applies
/// them: snapshot parts and the records after the snapshot, as one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fact {
    Client(ClientRecord),
    Effects(Vec<(CallId, Bytes)>),
    Completion(Completion),
    Logged(LoggedCall),
    Done(Incarnation, u64),
}

/// What a new life reads: the facts, and how many records the log holds
/// beyond its last whole snapshot.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub(crate) facts: Vec<Fact>,
    pub(crate) since_snapshot: usize,
    pub(crate) snapshot: bool,
}

impl Replayed {
    /// Reads `records` (in the order persisted) from their last whole
    /// snapshot on. See the [module docs](self).
    pub(crate) fn of(records: Vec<RpcRecord>) -> Replayed {
        let part = |r: &RpcRecord| match r {
            RpcRecord::Snapshot(p) => Some(p.clone()),
            _ => None,
        };
        let whole = (0..records.len()).rev().find_map(|end| {
            let Some(SnapshotPart::End { parts }) = part(&records[end]) else {
                return None;
            };
            let start = end.checked_sub(usize::try_from(parts).ok()?.checked_add(1)?)?;
            let inner = &records[start + 1..end];
            (part(&records[start]) == Some(SnapshotPart::Start)
                && inner.iter().all(|r| {
                    matches!(r, RpcRecord::Snapshot(p) if !matches!(p, SnapshotPart::Start | SnapshotPart::End { .. }))
                }))
            .then_some((start, end))
        });
        let (from, since_snapshot) = match whole {
            Some((start, end)) => (start, records.len() - end - 1),
            None => (0, records.len()),
        };
        let last_end = whole.map(|(_, end)| end);
        let mut facts = Vec::new();
        for (i, r) in records.into_iter().enumerate().skip(from) {
            let fact = match r {
                RpcRecord::Completion(c) => Fact::Completion(c),
                RpcRecord::CallLogged(c) => Fact::Logged(c),
                RpcRecord::CallDone { life, seq } => Fact::Done(life, seq),
                // A snapshot after the last whole one was cut short: what
                // it restates is all in the records before it.
                RpcRecord::Snapshot(_) if last_end.is_none_or(|e| i > e) => continue,
                RpcRecord::Snapshot(p) => match p {
                    SnapshotPart::Start | SnapshotPart::End { .. } => continue,
                    SnapshotPart::Client(c) => Fact::Client(c),
                    SnapshotPart::Effects(effects) => Fact::Effects(effects),
                    SnapshotPart::Completion(c) => Fact::Completion(c),
                    SnapshotPart::CallLogged(c) => Fact::Logged(c),
                },
            };
            facts.push(fact);
        }
        Replayed {
            facts,
            since_snapshot,
            snapshot: whole.is_some(),
        }
    }
}

/// What an RPC node's durable records say, read as its next life reads
/// them (from the last whole snapshot on): for applications rebuilding
/// their state, tests and tools.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableRecords {
    /// The exactly-once completion records a restarted server answers
    /// from, in the order they were made durable.
    pub completions: Vec<Completion>,
    /// The effects of the exactly-once calls, in the order they were made
    /// durable: what a restarted application replays (see
    /// [`RpcInput::Complete`](super::RpcInput)).
    pub effects: Vec<(CallId, Bytes)>,
    /// Whether the records hold a whole snapshot.
    pub snapshot: bool,
    /// The records beyond the last whole snapshot (all of them without one).
    pub since_snapshot: usize,
}

impl DurableRecords {
    /// Reads the records of an RPC node as stable storage holds them, in
    /// order. Records an outer core tagged with the component it embeds
    /// the RPC core as (an [`Echo`](crate::echo::Echo)'s) are read through
    /// their tags: every record must be an RPC record, at whatever depth.
    ///
    /// # Errors
    /// [`RecoveryError::Record`] for the first record that does not decode.
    pub fn read(records: &[Bytes]) -> Result<DurableRecords, RecoveryError> {
        let mut typed = Vec::with_capacity(records.len());
        for (index, raw) in records.iter().enumerate() {
            let mut own = raw.clone();
            let mut component = Component::SELF;
            while let Some(&c) = own.first()
                && c != Component::SELF.0
            {
                component = Component(c);
                own = own.slice(1..);
            }
            let r = record::decode::<RpcRecord>(own).map_err(|error: RecordError| {
                RecoveryError::Record {
                    index,
                    component,
                    error,
                }
            })?;
            typed.push(r);
        }
        let replayed = Replayed::of(typed);
        let mut out = DurableRecords {
            snapshot: replayed.snapshot,
            since_snapshot: replayed.since_snapshot,
            ..DurableRecords::default()
        };
        for fact in replayed.facts {
            match fact {
                Fact::Effects(effects) => out.effects.extend(effects),
                Fact::Completion(c) => {
                    if let Some(e) = &c.effect {
                        out.effects.push((c.id, e.clone()));
                    }
                    out.completions.push(c);
                }
                Fact::Client(_) | Fact::Logged(_) | Fact::Done(..) => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> CallId {
        CallId {
            client: NodeId(3),
            client_incarnation: Incarnation(2),
            seq,
        }
    }

    fn completion(seq: u64, effect: Option<&'static str>) -> Completion {
        Completion {
            id: id(seq),
            fingerprint: 77,
            answer: Answer::Reply(Bytes::from("reply")),
            effect: effect.map(Bytes::from),
        }
    }

    fn every_kind() -> Vec<RpcRecord> {
        let call = LoggedCall {
            life: Incarnation(4),
            seq: 5,
            server: NodeId(6),
        };
        vec![
            RpcRecord::Completion(completion(1, Some("+1"))),
            RpcRecord::Completion(Completion {
                answer: Answer::Failed,
                ..completion(2, None)
            }),
            RpcRecord::Completion(Completion {
                answer: Answer::TooLarge(1 << 30),
                ..completion(3, Some(""))
            }),
            RpcRecord::CallLogged(call),
            RpcRecord::CallDone {
                life: Incarnation(4),
                seq: 5,
            },
            RpcRecord::Snapshot(SnapshotPart::Start),
            RpcRecord::Snapshot(SnapshotPart::Client(ClientRecord {
                client: NodeId(3),
                incarnation: Incarnation(2),
                first_incomplete: 9,
                forgotten: vec![(11, 12), (20, 20)],
            })),
            RpcRecord::Snapshot(SnapshotPart::Effects(vec![
                (id(1), Bytes::from("+1")),
                (id(2), Bytes::new()),
            ])),
            RpcRecord::Snapshot(SnapshotPart::Effects(vec![])),
            RpcRecord::Snapshot(SnapshotPart::Completion(completion(4, None))),
            RpcRecord::Snapshot(SnapshotPart::CallLogged(call)),
            RpcRecord::Snapshot(SnapshotPart::End { parts: 5 }),
        ]
    }

    #[test]
    fn every_record_round_trips_and_every_truncation_is_an_error() {
        for r in every_kind() {
            let bytes = record::encode(&r);
            assert_eq!(&bytes[..2], &[0, RpcRecord::VERSION]);
            assert_eq!(record::decode::<RpcRecord>(bytes.clone()).unwrap(), r);
            for cut in 2..bytes.len() {
                assert!(
                    record::decode::<RpcRecord>(bytes.slice(..cut)).is_err(),
                    "{r:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn effects_are_packed_many_to_a_part_in_order() {
        let effects: Vec<(CallId, Bytes)> = (0..2500).map(|s| (id(s), Bytes::from("e"))).collect();
        let parts = effect_parts(&effects);
        assert_eq!(parts.len(), 3);
        let unpacked: Vec<(CallId, Bytes)> = parts
            .into_iter()
            .flat_map(|p| match p {
                SnapshotPart::Effects(e) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(unpacked, effects);
        let large = vec![(id(1), Bytes::from(vec![0; 100 << 10])); 3];
        assert_eq!(effect_parts(&large).len(), 3, "one large effect a part");
    }

    #[test]
    fn a_record_that_does_not_decode_is_an_error_never_skipped() {
        let good = record::encode(&RpcRecord::Completion(completion(1, None)));
        let mut unknown = BytesMut::from(&good[..]);
        unknown[2] = 99;
        let err = DurableRecords::read(&[good.clone(), unknown.freeze()]).unwrap_err();
        assert!(
            matches!(
                err,
                RecoveryError::Record {
                    index: 1,
                    error: RecordError::Decode(DecodeError::UnknownTag { .. }),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn reading_starts_at_the_last_whole_snapshot_and_skips_a_cut_one() {
        let c = |seq| RpcRecord::Completion(completion(seq, Some("e")));
        let snap = |parts: Vec<SnapshotPart>| {
            let n = parts.len() as u64;
            let mut v = vec![RpcRecord::Snapshot(SnapshotPart::Start)];
            v.extend(parts.into_iter().map(RpcRecord::Snapshot));
            v.push(RpcRecord::Snapshot(SnapshotPart::End { parts: n }));
            v
        };
        let kept = vec![
            SnapshotPart::Effects(vec![(id(1), Bytes::from("e"))]),
            SnapshotPart::Completion(completion(2, None)),
        ];
        let mut log = vec![c(1), c(2)];
        log.extend(snap(kept.clone()));
        log.push(c(3));
        // A second snapshot, cut short by a crash, and the next life's.
        log.extend(snap(kept).into_iter().take(2));
        log.push(c(4));
        let bytes: Vec<Bytes> = log.iter().map(record::encode).collect();
        let whole = DurableRecords::read(&bytes).unwrap();
        // And the same log compacted before the snapshot.
        let compacted = DurableRecords::read(&bytes[2..]).unwrap();
        assert_eq!(whole, compacted);
        assert!(whole.snapshot);
        assert_eq!(whole.since_snapshot, 4);
        let seqs = |v: &[Completion]| v.iter().map(|c| c.id.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&whole.completions), vec![2, 3, 4]);
        assert_eq!(
            whole.effects.iter().map(|(i, _)| i.seq).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
    }
}

//! Total order: a sequencer that survives its own crash.
//!
//! Each group's **sequencer** is its lowest member (membership is static).
//! Every member multicasts its [`Agreed`](crate::Order::Agreed) and
//! [`Safe`](crate::Order::Safe) messages through the reliable core as any
//! other; the sequencer gives each, in the order its core delivers them
//! to it, the next **position** of the group's total order, and
//! multicasts its decisions through the core as messages of its own
//! stream (a [`Decision`]: the positions, and for each sender how far its
//! stream is decided). A member delivers position after position: the
//! message at the next position, once it holds it and (like every
//! message of its sender) once its sender's earlier messages and its
//! causal past are delivered.
//!
//! # Surviving the sequencer's crash
//!
//! The sequencer **persists each decision before it multicasts it**
//! (`Output::Persist`, a typed [`OrderRecord`]; a snapshot record every
//! [`SNAPSHOT_EVERY`] decisions lets the log be compacted). A restarted
//! sequencer rebuilds from its records the next position and, for each
//! sender, how far it has ordered: it continues the numbering, never
//! gives a position twice, and never orders a message twice (a message
//! its core delivers again, from a sender's history, is recognised as
//! ordered). A decision that was not durable when it crashed was never
//! sent, so the message is ordered again, afresh. It also keeps the
//! decisions not yet known to be held by every member (the **tail**, at
//! most [`MAX_TAIL`]) and multicasts them again in its new life: members
//! that missed them in its earlier life get them again; a member that
//! already has them ignores them. A member that missed positions for good
//! (it restarted, or lags by more than the tail) is told so with
//! [`OrderedEvent::MissedAgreed`](crate::OrderedEvent::MissedAgreed).
//!
//! # Stability, for Safe
//!
//! Each member tells the sequencer how far it has **resolved** the total
//! order ([`McastMessage::Have`](crate::McastMessage::Have): every
//! position up to there is held here, delivered, or reported missed),
//! when that advances while it holds a Safe message, and periodically
//! while it holds any Agreed or Safe message. The sequencer takes the
//! smallest over all members (its own included) as **stable**, and
//! multicasts it in a [`McastMessage::Beacon`](crate::McastMessage::Beacon)
//! when it covers a new Safe message, and unicasts one in answer to each
//! `Have` (so a lost beacon is made good). A Safe message is delivered at
//! its position once that position is stable.
//!
//! The beacon also carries how far the sequencer's decisions have gone
//! (as of which message of its stream): a member that restarted after the
//! decisions about the messages it holds were sent and acknowledged, and
//! that so never sees them, learns from it that those messages were
//! ordered before its time, and drops them (reported missed) instead of
//! waiting for ever.

use std::collections::{BTreeMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{Incarnation, NodeId, PersistToken, Record};

use crate::group::GroupId;
use crate::header::{Decision, MAX_DECISIONS, MessageId};
use crate::message::{get_ids, put_ids};

/// How many decision records the sequencer appends before it writes a
/// snapshot and lets the log be compacted up to it.
pub const SNAPSHOT_EVERY: usize = 64;

/// The most decisions the sequencer keeps (and multicasts again after a
/// restart) that are not yet known to be held by every member. A member
/// that lags further behind is told it missed the older ones. Bounds the
/// sequencer's memory and its snapshot when a member stays away.
pub const MAX_TAIL: usize = 4096;

/// What a sequencer persists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderRecord {
    /// A decision for `group`, before it is multicast.
    Decided(GroupId, Decision),
    /// Everything the records of `group` before it said: the next
    /// position, how far each sender is decided, and the decisions from
    /// `tail_first` on.
    Snapshot {
        /// The group.
        group: GroupId,
        /// The next position to give.
        next: u64,
        /// Per sender, the last message decided.
        prefix: Vec<MessageId>,
        /// The position of the first of `tail`.
        tail_first: u64,
        /// The decisions not known to be stable.
        tail: Vec<MessageId>,
    },
}

const DECIDED: u8 = 1;
const SNAPSHOT: u8 = 2;

impl Wire for OrderRecord {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            OrderRecord::Decided(group, d) => {
                buf.put_u8(DECIDED);
                buf.put_u32_le(group.0);
                buf.put_u64_le(d.first);
                put_ids(buf, &d.entries);
                put_ids(buf, &d.prefix);
            }
            OrderRecord::Snapshot {
                group,
                next,
                prefix,
                tail_first,
                tail,
            } => {
                buf.put_u8(SNAPSHOT);
                buf.put_u32_le(group.0);
                buf.put_u64_le(*next);
                put_ids(buf, prefix);
                buf.put_u64_le(*tail_first);
                put_ids(buf, tail);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match wire::get_u8(buf)? {
            DECIDED => Ok(OrderRecord::Decided(
                GroupId(wire::get_u32(buf)?),
                Decision {
                    first: wire::get_u64(buf)?,
                    entries: get_ids(buf, usize::MAX, "a record with too many entries")?,
                    prefix: get_ids(buf, usize::MAX, "a record with too many entries")?,
                },
            )),
            SNAPSHOT => Ok(OrderRecord::Snapshot {
                group: GroupId(wire::get_u32(buf)?),
                next: wire::get_u64(buf)?,
                prefix: get_ids(buf, usize::MAX, "a record with too many entries")?,
                tail_first: wire::get_u64(buf)?,
                tail: get_ids(buf, usize::MAX, "a record with too many entries")?,
            }),
            tag => Err(DecodeError::UnknownTag {
                what: "OrderRecord",
                tag,
            }),
        }
    }
}

impl Record for OrderRecord {
    const VERSION: u8 = 1;
}

/// Whether message `id` is at or before `upto` (a life and a number) of
/// its sender.
pub(crate) fn at_or_before(id: MessageId, upto: (Incarnation, u64)) -> bool {
    (id.1, id.2) <= upto
}

fn prefix_list(prefix: &BTreeMap<NodeId, (Incarnation, u64)>) -> Vec<MessageId> {
    prefix.iter().map(|(&k, &(l, u))| (k, l, u)).collect()
}

/// The sequencer's side of one group.
#[derive(Debug)]
pub(crate) struct Sequencer {
    /// The next position to give.
    pub(crate) next: u64,
    /// Per sender, the last message whose fate is decided (logged).
    pub(crate) prefix: BTreeMap<NodeId, (Incarnation, u64)>,
    /// Decisions logged and not known stable, from position `tail_first`.
    pub(crate) tail: VecDeque<MessageId>,
    pub(crate) tail_first: u64,
    /// Given positions in this call, not logged yet (from `batch_first`).
    batch: Vec<MessageId>,
    batch_first: u64,
    /// The prefix moved without a position given, and a member waits on
    /// it: log and send it.
    dirty: bool,
    /// The prefix as last logged.
    logged: BTreeMap<NodeId, (Incarnation, u64)>,
    /// Logged, waiting to be durable: a decision, or a snapshot (`None`).
    pub(crate) persisting: VecDeque<(PersistToken, Option<Decision>)>,
    /// Durable, waiting for room in this node's ring.
    pub(crate) unsent: VecDeque<Decision>,
    /// How many of `unsent` are decisions of an earlier life, sent again.
    pub(crate) resend: usize,
    /// Decision records since the last snapshot.
    records: usize,
    /// As of the last decision sent: its number in this node's stream, the
    /// next position after it, the prefix it carried.
    pub(crate) sent_highest: u64,
    pub(crate) sent_next: u64,
    pub(crate) sent_prefix: Vec<MessageId>,
    /// Per member, how far it has said it resolved the order.
    pub(crate) have: BTreeMap<NodeId, u64>,
    /// Positions up to here are held by every member.
    pub(crate) stable: u64,
    /// The stability last multicast.
    pub(crate) announced: u64,
    /// The last position given to a Safe message.
    pub(crate) last_safe: u64,
}

impl Sequencer {
    /// A sequencer rebuilt from its records (none at the first start).
    pub(crate) fn recover(group: GroupId, records: &[OrderRecord]) -> Self {
        let records: Vec<&OrderRecord> = records
            .iter()
            .filter(|r| match r {
                OrderRecord::Decided(g, _) | OrderRecord::Snapshot { group: g, .. } => *g == group,
            })
            .collect();
        let mut s = Sequencer {
            next: 1,
            prefix: BTreeMap::new(),
            tail: VecDeque::new(),
            tail_first: 1,
            batch: Vec::new(),
            batch_first: 1,
            dirty: false,
            logged: BTreeMap::new(),
            persisting: VecDeque::new(),
            unsent: VecDeque::new(),
            resend: 0,
            records: 0,
            sent_highest: 0,
            sent_next: 1,
            sent_prefix: Vec::new(),
            have: BTreeMap::new(),
            stable: 0,
            announced: 0,
            last_safe: 0,
        };
        for r in &records {
            match r {
                OrderRecord::Decided(_, d) => {
                    s.keep(d);
                    s.next = s.next.max(d.first + d.entries.len() as u64);
                    for &(k, l, u) in &d.prefix {
                        s.advance(k, l, u);
                    }
                    s.records += 1;
                }
                OrderRecord::Snapshot {
                    next,
                    prefix,
                    tail_first,
                    tail,
                    ..
                } => {
                    s.next = *next;
                    s.prefix = prefix.iter().map(|&(k, l, u)| (k, (l, u))).collect();
                    s.tail_first = *tail_first;
                    s.tail = tail.iter().copied().collect();
                    s.records = 0;
                }
            }
        }
        s.logged = s.prefix.clone();
        s.trim();
        // What is not known stable is multicast again in this life, then
        // one (possibly empty) decision says how far everything goes. The
        // prefix rides only on that last one: a member that learned a
        // sender's messages are all decided before it got their positions
        // would drop them.
        let prefix = prefix_list(&s.prefix);
        let mut first = s.tail_first;
        for chunk in s
            .tail
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .chunks(MAX_DECISIONS)
        {
            s.unsent.push_back(Decision {
                first,
                entries: chunk.to_vec(),
                prefix: Vec::new(),
            });
            first += chunk.len() as u64;
        }
        if !records.is_empty() {
            s.unsent.push_back(Decision {
                first: s.next,
                entries: Vec::new(),
                prefix,
            });
        }
        s.resend = s.unsent.len();
        s.batch_first = s.next;
        s.sent_next = s.tail_first;
        s
    }

    /// Keeps decision `d`'s entries in the tail, which they continue.
    fn keep(&mut self, d: &Decision) {
        if d.entries.is_empty() {
            return;
        }
        if self.tail.is_empty() {
            self.tail_first = d.first;
        }
        debug_assert_eq!(d.first, self.tail_first + self.tail.len() as u64);
        self.tail.extend(d.entries.iter().copied());
    }

    fn advance(&mut self, k: NodeId, life: Incarnation, upto: u64) -> bool {
        let p = self.prefix.entry(k).or_default();
        if (life, upto) > *p {
            *p = (life, upto);
            true
        } else {
            false
        }
    }

    /// Gives message `id` the next position, unless it has one already.
    /// Returns whether it took one.
    pub(crate) fn order(&mut self, id: MessageId, safe: bool) -> bool {
        let done = self.prefix.get(&id.0).is_some_and(|&p| at_or_before(id, p));
        if done {
            return false;
        }
        if self.batch.is_empty() {
            self.batch_first = self.next;
        }
        if safe {
            self.last_safe = self.next;
        }
        self.batch.push(id);
        self.next += 1;
        self.advance(id.0, id.1, id.2);
        true
    }

    /// `k`'s messages up to `upto` of its life `life` will never be
    /// ordered (lost with that life), or `k` has a life `life` (then
    /// `upto` is 0). The members learn it with the next decision, or at
    /// once if one of them holds such a message ([`held`](Self::held)):
    /// a group that orders nothing sends nothing for a restart.
    pub(crate) fn abandon(&mut self, k: NodeId, life: Incarnation, upto: u64) {
        self.advance(k, life, upto);
    }

    /// A member holds `id` with no position. Returns whether this
    /// sequencer has decided its fate (then the members are told, if
    /// they were not); if not, the caller asks its sender for it.
    pub(crate) fn held(&mut self, id: MessageId) -> bool {
        let decided = self.prefix.get(&id.0).is_some_and(|&p| at_or_before(id, p));
        let told = self.logged.get(&id.0).is_some_and(|&p| at_or_before(id, p));
        if decided && !told {
            self.dirty = true;
        }
        decided
    }

    /// The decisions and the snapshot to log now, as records; the caller
    /// persists them in order and hands the tokens to [`logged`](Self::logged).
    pub(crate) fn take_records(&mut self, group: GroupId) -> Vec<OrderRecord> {
        let mut out = Vec::new();
        if self.batch.is_empty() && !self.dirty {
            return out;
        }
        let prefix = prefix_list(&self.prefix);
        let batch = std::mem::take(&mut self.batch);
        // Positions given in this call start at `batch_first`; a decision
        // with none says how far the order goes: up to `next`.
        let mut first = if batch.is_empty() {
            self.next
        } else {
            self.batch_first
        };
        if batch.is_empty() {
            out.push(OrderRecord::Decided(
                group,
                Decision {
                    first,
                    entries: Vec::new(),
                    prefix: prefix.clone(),
                },
            ));
        }
        let chunks = batch.chunks(MAX_DECISIONS).count();
        for (i, chunk) in batch.chunks(MAX_DECISIONS).enumerate() {
            out.push(OrderRecord::Decided(
                group,
                Decision {
                    first,
                    entries: chunk.to_vec(),
                    // Only the last: see `recover`.
                    prefix: if i + 1 == chunks {
                        prefix.clone()
                    } else {
                        Vec::new()
                    },
                },
            ));
            first += chunk.len() as u64;
        }
        self.dirty = false;
        self.logged = self.prefix.clone();
        for r in &out {
            if let OrderRecord::Decided(_, d) = r {
                self.keep(d);
                self.records += 1;
            }
        }
        self.trim();
        if self.records >= SNAPSHOT_EVERY {
            self.records = 0;
            out.push(OrderRecord::Snapshot {
                group,
                next: self.next,
                prefix,
                tail_first: self.tail_first,
                tail: self.tail.iter().copied().collect(),
            });
        }
        out
    }

    /// A record of [`take_records`](Self::take_records) was handed out under `token`.
    pub(crate) fn logged(&mut self, token: PersistToken, record: OrderRecord) {
        let d = match record {
            OrderRecord::Decided(_, d) => Some(d),
            OrderRecord::Snapshot { .. } => None,
        };
        self.persisting.push_back((token, d));
    }

    /// The record of `token` is durable: its decision may be multicast.
    /// Returns whether it was a snapshot's (the log may be compacted).
    pub(crate) fn durable(&mut self, token: PersistToken) -> Option<bool> {
        let i = self.persisting.iter().position(|(t, _)| *t == token)?;
        // Persists complete in order: everything before it is durable too.
        let mut snapshot = false;
        for (_, d) in self.persisting.drain(..=i) {
            match d {
                Some(d) => self.unsent.push_back(d),
                None => snapshot = true,
            }
        }
        Some(snapshot)
    }

    /// Decision `d` went out as message `seq` of this node's stream.
    pub(crate) fn sent(&mut self, seq: u64, d: &Decision) {
        self.sent_highest = seq;
        self.sent_next = self.sent_next.max(d.first + d.entries.len() as u64);
        // An empty prefix says nothing new; the last one still holds.
        if !d.prefix.is_empty() {
            self.sent_prefix.clone_from(&d.prefix);
        }
    }

    /// `member` resolved the order up to `upto`. A claim beyond what was
    /// sent (a broken or hostile member's) raises nothing: stability is
    /// the smallest claim, and this node's own is always among them.
    pub(crate) fn heard(&mut self, member: NodeId, upto: u64) {
        let h = self.have.entry(member).or_default();
        *h = (*h).max(upto);
    }

    /// Recomputes stability over `members`; returns whether a beacon is
    /// due (stability covers a Safe message not announced yet).
    pub(crate) fn restabilise(&mut self, members: &[NodeId]) -> bool {
        let stable = members
            .iter()
            .map(|m| self.have.get(m).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        self.stable = self.stable.max(stable);
        self.trim();
        self.stable > self.announced && self.last_safe > self.announced
    }

    /// Forgets decisions every member holds, and the oldest beyond
    /// [`MAX_TAIL`].
    fn trim(&mut self) {
        while !self.tail.is_empty()
            && (self.tail_first <= self.stable || self.tail.len() > MAX_TAIL)
        {
            self.tail.pop_front();
            self.tail_first += 1;
        }
        if self.tail.is_empty() {
            self.tail_first = self.tail_first.max(self.next);
        }
    }
}

/// A member's view of one group's total order.
#[derive(Debug, Default)]
pub(crate) struct Agreed {
    /// The next position to deliver (`None`: no decision seen in this life).
    pub(crate) next: Option<u64>,
    /// Every position before this one is decided (or lost) here.
    pub(crate) known: u64,
    pub(crate) by_pos: BTreeMap<u64, MessageId>,
    pub(crate) by_msg: BTreeMap<MessageId, u64>,
    /// Per sender, the last message whose fate the sequencer decided.
    pub(crate) prefix: BTreeMap<NodeId, (Incarnation, u64)>,
    /// Positions up to here are held by every member.
    pub(crate) stable: u64,
    /// The last resolution told the sequencer, in its life `told`.
    pub(crate) have_sent: u64,
    pub(crate) told: Incarnation,
    /// The newest life of the sequencer heard a beacon from.
    pub(crate) answered: Incarnation,
    /// The stability that life of the sequencer (`told`) announced: what
    /// an earlier life knew is no reason to stop telling this one.
    pub(crate) heard_stable: u64,
    /// The `Order` timer is set.
    pub(crate) ticking: bool,
}

impl Agreed {
    /// Takes a decision; returns the positions this life will never see
    /// (before the first decision it learns), if any.
    pub(crate) fn decide(&mut self, d: &Decision) -> Option<(u64, u64)> {
        let missed = self.start(d.first);
        let next = self.next.unwrap_or(d.first);
        for (i, &id) in d.entries.iter().enumerate() {
            let p = d.first + i as u64;
            if p >= next && !self.by_pos.contains_key(&p) && !self.by_msg.contains_key(&id) {
                self.by_pos.insert(p, id);
                self.by_msg.insert(id, p);
            }
        }
        self.known = self.known.max(d.first + d.entries.len() as u64);
        self.learn_prefix(&d.prefix);
        missed
    }

    /// Starts this life's order at `first` if it has not started.
    pub(crate) fn start(&mut self, first: u64) -> Option<(u64, u64)> {
        if self.next.is_some() {
            self.known = self.known.max(first);
            return None;
        }
        let first = first.max(1);
        self.next = Some(first);
        self.known = self.known.max(first);
        (first > 1).then_some((1, first - 1))
    }

    pub(crate) fn learn_prefix(&mut self, prefix: &[MessageId]) {
        for &(k, l, u) in prefix {
            let p = self.prefix.entry(k).or_default();
            if (l, u) > *p {
                *p = (l, u);
            }
        }
    }

    /// Whether the sequencer decided `id`'s fate (it may have a position).
    pub(crate) fn covered(&self, id: MessageId) -> bool {
        self.prefix.get(&id.0).is_some_and(|&p| at_or_before(id, p))
    }

    /// `id`'s position, if known here.
    pub(crate) fn position(&self, id: MessageId) -> Option<u64> {
        self.by_msg.get(&id).copied()
    }

    /// The sequencer has a life `life`: if it is new, it is told
    /// everything again.
    pub(crate) fn tell(&mut self, life: Incarnation) {
        if life > self.told {
            self.told = life;
            self.have_sent = 0;
            self.heard_stable = 0;
        }
    }

    /// Position `p` is done with (delivered or skipped).
    pub(crate) fn pass(&mut self, p: u64) {
        if let Some(id) = self.by_pos.remove(&p) {
            self.by_msg.remove(&id);
        }
        self.next = Some(p + 1);
    }
}

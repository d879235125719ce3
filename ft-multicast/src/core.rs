//! [`Multicast`]: the reliable-multicast core.
//!
//! # What it does
//!
//! Each member numbers the messages it sends to a group (1, 2, 3… in each
//! of its lives), keeps them in its [history ring](crate::GroupConfig::history)
//! and multicasts them to the other members. Each receiver delivers a
//! sender's messages in that order (FIFO per sender), keeps what comes
//! after a gap, and
//!
//! - **acknowledges** cumulatively ("I have everything up to n"), a short
//!   while after it delivers ([`McastConfig::ack_delay`]) and whenever the
//!   sender announces its position;
//! - **asks for what is missing** (a NACK of the gaps, unicast to the
//!   sender) as soon as it sees one, and again every
//!   [`McastConfig::nack_interval`] while it lasts.
//!
//! The sender repairs from its ring and frees a message once every other
//! member has acknowledged it. While something is unacknowledged it
//! **announces** its highest number every [`McastConfig::announce_interval`],
//! so the loss of the last messages (which no later message reveals) is
//! noticed, and lost acknowledgements are sent again.
//!
//! # Flow control
//!
//! A send to a full ring is refused ([`McastEvent::Refused`] with
//! [`Refusal::HistoryFull`]: nothing was sent); the sender is told
//! [`McastEvent::Ready`] once room frees. So a sender is never more than
//! its ring ahead of its slowest member, and a member that stays
//! unreachable (crashed and not back, or cut off) holds every sender's
//! ring full: senders then wait, they do not drop. (Membership views,
//! which remove such a member, come with virtual synchrony.)
//!
//! # Lives
//!
//! Nothing is persisted. A restarted member is a new life: its own stream
//! starts again at 1, and receivers that see the new life drop what they
//! waited for from the old one (telling the application with
//! [`McastEvent::Missed`] when there was a gap). A restarted receiver
//! starts each sender's stream at the oldest message the sender still
//! holds, and is told with `Missed` what came before it.
//!
//! # Poll order
//!
//! Outputs come out in the order the core produced them; within one
//! `handle_*` call: deliveries and events first, then the messages that
//! call sends, then timers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{
    Counters, Incarnation, NodeId, Outbox, Output, PersistToken, Protocol, Recover,
    RecoveryContext, RecoveryError,
};

use ft_core::rng::Rng;

use crate::fec::FecState;
use crate::group::{Feedback, GroupConfig, GroupId};
use crate::history::History;
use crate::message::{MAX_NACK_RANGES, MAX_PAYLOAD, MAX_SEQ, McastMessage};
use crate::receive::{Stream, Took};
use crate::srm::SrmState;
use crate::tree::{TreeState, TreeStats};

/// Timing of a [`Multicast`] node, the same for all its groups.
#[derive(Clone, Debug, PartialEq)]
pub struct McastConfig {
    /// The groups this node is a member of.
    pub groups: Vec<GroupConfig>,
    /// How often a sender with unacknowledged messages announces its
    /// position (default 100 ms).
    pub announce_interval: Duration,
    /// How long a receiver waits after a delivery before acknowledging it,
    /// so one acknowledgement covers a burst (default 10 ms).
    pub ack_delay: Duration,
    /// How long a receiver waits before it asks again for messages still
    /// missing, before it has measured its round trip to the sender
    /// (default 40 ms); once measured (from its NACKs to the repairs that
    /// answer them), it waits that round trip's retransmission timeout,
    /// from 1 ms up to this.
    pub nack_interval: Duration,
}

impl McastConfig {
    /// A node in `groups`, with the default timing.
    pub fn new(groups: Vec<GroupConfig>) -> Self {
        McastConfig {
            groups,
            announce_interval: Duration::from_millis(100),
            ack_delay: Duration::from_millis(10),
            nack_interval: Duration::from_millis(40),
        }
    }
}

/// The round-trip estimator of NACKs to a sender: from 1 ms up to
/// `nack_interval`, which is also the interval before any sample.
fn nack_rtt(config: &McastConfig) -> ft_rpc::rtt::RttConfig {
    ft_rpc::rtt::RttConfig {
        initial_rto: config.nack_interval,
        min_rto: Duration::from_millis(1),
        max_rto: config.nack_interval.max(Duration::from_millis(1)),
        granularity: Duration::from_millis(1),
    }
}

/// What the application asks of a [`Multicast`] node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum McastInput {
    /// Multicast `payload` to `group` (this node included).
    Send {
        /// The group.
        group: GroupId,
        /// The caller's name for this send, echoed in its
        /// [`McastEvent::Sent`] or [`McastEvent::Refused`].
        token: u64,
        /// The bytes.
        payload: Bytes,
    },
}

/// Why a send was refused. A refused send was not sent at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The group is not one of this node's.
    UnknownGroup,
    /// The payload is larger than the group's
    /// [`max_payload`](GroupConfig::max_payload).
    TooLarge {
        /// Its length.
        len: usize,
        /// The group's limit.
        max: usize,
    },
    /// The history ring is full: some member has not acknowledged the
    /// oldest message yet. [`McastEvent::Ready`] says when to try again.
    HistoryFull,
}

/// What a [`Multicast`] node tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum McastEvent {
    /// A send went out as message `seq` of this node's stream (and was
    /// delivered here first).
    Sent {
        /// The group.
        group: GroupId,
        /// The send's token.
        token: u64,
        /// Its number.
        seq: u64,
    },
    /// A send was refused: nothing was sent.
    Refused {
        /// The group.
        group: GroupId,
        /// The send's token.
        token: u64,
        /// Why.
        why: Refusal,
    },
    /// The group's history has room again after a
    /// [`Refusal::HistoryFull`].
    Ready {
        /// The group.
        group: GroupId,
    },
    /// Message `seq` of `from`'s stream (in its life `life`), delivered
    /// in the sender's order.
    Delivered {
        /// The group.
        group: GroupId,
        /// The sender.
        from: NodeId,
        /// The sender's life.
        life: Incarnation,
        /// Its number in that life.
        seq: u64,
        /// The bytes.
        payload: Bytes,
    },
    /// With [`report_arrivals`](Multicast::report_arrivals): message `seq`
    /// of `from`'s stream arrived ahead of a gap and waits for it. It is
    /// still [`Delivered`](McastEvent::Delivered) later, in the sender's
    /// order; this only lets a layer above hand it on early (the
    /// [`Reliable`](crate::Order::Reliable) level).
    Arrived {
        /// The group.
        group: GroupId,
        /// The sender.
        from: NodeId,
        /// The sender's life.
        life: Incarnation,
        /// Its number in that life.
        seq: u64,
        /// The bytes.
        payload: Bytes,
    },
    /// The messages of `from`'s life `life` numbered up to `upto` that were
    /// not delivered here never will be: this node started after the
    /// sender freed them, or the sender restarted before repairing them.
    Missed {
        /// The group.
        group: GroupId,
        /// The sender.
        from: NodeId,
        /// The sender's life.
        life: Incarnation,
        /// The last message missed.
        upto: u64,
    },
}

/// The timers of a [`Multicast`] node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum McastTimer {
    /// Announce this node's position in the group.
    Announce(GroupId),
    /// Acknowledge what was delivered from the sender.
    Ack(GroupId, NodeId),
    /// Ask the sender for what is still missing.
    Nack(GroupId, NodeId),
    /// With [`Feedback::Nack`](crate::Feedback): ask the group for what
    /// is missing of this source's stream.
    Request(GroupId, NodeId),
    /// With `Feedback::Nack`: repair message `seq` of this source's stream.
    Repair(GroupId, NodeId, u64),
    /// With `Feedback::Nack`: send this node's session message.
    Session(GroupId),
    /// With [`Feedback::Tree`](crate::Feedback): the group's heartbeat
    /// (announcements to children, silent parents and children).
    Tree(GroupId),
    /// With proactive [`Fec`](crate::Fec): parity over the block being
    /// filled.
    FecFlush(GroupId),
    /// With on-demand `Fec`: answer requests for this block of this
    /// source's stream with parity.
    FecRepair(GroupId, NodeId, u64),
    /// A timer of the ordering layer above ([`Ordered`](crate::Ordered)):
    /// the core never sets one, and ignores it.
    Order(GroupId),
}

/// How much a node holds, for checking bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Messages in this node's history rings, all groups.
    pub history: usize,
    /// Messages waiting out of order, all groups and senders.
    pub pending: usize,
    /// The most waiting out of order from any one sender in any one group.
    pub pending_per_stream: usize,
    /// Messages kept to repair them for others
    /// ([`Feedback::Nack`](crate::Feedback)), all groups and sources.
    pub recent: usize,
    /// With `Feedback::Nack`: repairs waiting for their timers, and
    /// recent repairs remembered to ignore the requests that crossed them.
    pub repairs: usize,
    /// With [`Fec`](crate::Fec): messages and parity packets kept to
    /// rebuild blocks, and parity answers pending or remembered.
    pub fec: usize,
}

/// Counters beyond [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct McastStats {
    /// Messages delivered, this node's own included.
    pub delivered: u64,
    /// Duplicates received (already delivered, or already waiting).
    pub duplicates: u64,
    /// Messages dropped for lying beyond the receive window.
    pub beyond_window: u64,
    /// NACKs sent.
    pub nacks_sent: u64,
    /// Repairs sent in answer to NACKs.
    pub repairs_sent: u64,
    /// With [`Feedback::Nack`](crate::Feedback): requests this member was
    /// about to send and held back, having heard another member ask for
    /// the same gap first.
    pub requests_suppressed: u64,
    /// With `Feedback::Nack`: repairs this member had planned and dropped,
    /// having heard another member's repair first.
    pub repairs_suppressed: u64,
    /// Acknowledgements sent.
    pub acks_sent: u64,
    /// Announcements sent.
    pub announces_sent: u64,
    /// Sends refused because the ring was full.
    pub refused_full: u64,
    /// Messages from nodes that are not members, or about unknown groups,
    /// or with an oversized payload, ignored.
    pub ignored: u64,
    /// With [`Fec`](crate::Fec): parity packets sent.
    pub parity_sent: u64,
    /// With `Fec`: messages rebuilt from parity (and taken as if they had
    /// arrived).
    pub fec_recovered: u64,
    /// With `Fec`: parity packets dropped for disagreeing with the group's
    /// configuration, the messages held or themselves, for lying beyond
    /// the receive window, or for a stream not followed.
    pub fec_rejected: u64,
}

/// One group, as this node sees it.
pub(crate) struct Group {
    pub(crate) config: GroupConfig,
    /// The other members.
    pub(crate) others: Vec<NodeId>,
    /// This node's own stream.
    pub(crate) history: History,
    /// How far each other member has acknowledged this node's stream.
    acked: BTreeMap<NodeId, u64>,
    /// A send was refused for a full ring since the last `Ready`.
    blocked: bool,
    /// The announce timer is set.
    announcing: bool,
    /// The other members' streams.
    pub(crate) streams: BTreeMap<NodeId, Stream>,
    /// With [`Feedback::Nack`](crate::Feedback): distances, pending
    /// repairs.
    pub(crate) srm: Option<SrmState>,
    /// With [`Feedback::Tree`](crate::Feedback): this node's place in
    /// each source's tree.
    pub(crate) tree: Option<TreeState>,
    /// With [`Fec`](crate::Fec): blocks sent and received.
    pub(crate) fec: Option<FecState>,
}

impl Group {
    /// This node's stream position in the group, as an announcement.
    fn announcement(&self, life: Incarnation) -> McastMessage {
        McastMessage::Announce {
            group: self.config.id,
            life,
            base: self.history.base(),
            highest: self.history.highest(),
        }
    }
}

/// The reliable-multicast core: see the [module docs](self).
pub struct Multicast {
    pub(crate) me: NodeId,
    pub(crate) life: Incarnation,
    pub(crate) config: McastConfig,
    pub(crate) groups: BTreeMap<GroupId, Group>,
    pub(crate) stats: McastStats,
    pub(crate) out: Outbox<Multicast>,
    /// For the random delays of `Feedback::Nack`.
    pub(crate) rng: Rng,
    /// When this life started: session time stamps count from it.
    pub(crate) start: Instant,
    /// Reused for deliveries.
    pub(crate) delivered: Vec<(u64, Bytes)>,
    /// Acknowledge only what the layer above has [released](Self::release).
    pub(crate) hold_acks: bool,
    /// With `Feedback::Tree`.
    pub(crate) tree_stats: TreeStats,
    /// Report messages kept after a gap ([`McastEvent::Arrived`]).
    report_arrivals: bool,
}

impl Multicast {
    // ---- getters ----

    /// This node.
    pub fn node(&self) -> NodeId {
        self.me
    }

    /// This life.
    pub fn life(&self) -> Incarnation {
        self.life
    }

    /// The counters beyond [`Protocol::counters`].
    pub fn stats(&self) -> McastStats {
        self.stats
    }

    /// How much this node holds now.
    pub fn held(&self) -> Held {
        let mut held = Held::default();
        for g in self.groups.values() {
            held.history += g.history.len();
            for s in g.streams.values() {
                held.recent += s.recent.len();
                held.pending += s.pending_len();
                held.pending_per_stream = held.pending_per_stream.max(s.pending_len());
            }
        }
        held.repairs = self.srm_held();
        held.fec = self.fec_held();
        held
    }

    /// The last message of this node's own stream in `group` freed from
    /// its history ring (0: none): every member it waits on has it.
    pub fn freed_upto(&self, group: GroupId) -> u64 {
        self.groups.get(&group).map_or(0, |g| g.history.base() - 1)
    }

    /// The largest history ring of this node's groups.
    pub fn max_history(&self) -> usize {
        self.groups
            .values()
            .map(|g| g.config.history)
            .max()
            .unwrap_or(0)
    }

    /// The next message this node would deliver from `from` in `group`
    /// (1 when it knows nothing of that stream yet).
    pub fn next_from(&self, group: GroupId, from: NodeId) -> u64 {
        self.groups
            .get(&group)
            .and_then(|g| g.streams.get(&from))
            .map_or(1, |s| s.next)
    }

    /// With [`Feedback::Nack`]: the estimated one-way distance to `peer`
    /// in `group`, once measured from session messages (`None` before, or
    /// for an ACK-based group).
    pub fn distance(&self, group: GroupId, peer: NodeId) -> Option<Duration> {
        self.groups.get(&group)?.srm.as_ref()?.measured(peer)
    }

    /// How many more messages this node's history ring in `group` takes
    /// now (0 for a group it is not in).
    pub fn room(&self, group: GroupId) -> usize {
        self.groups
            .get(&group)
            .map_or(0, |g| g.config.history.saturating_sub(g.history.len()))
    }

    /// The members of `group` (empty if this node is not in it).
    pub fn members(&self, group: GroupId) -> &[NodeId] {
        self.groups
            .get(&group)
            .map_or(&[], |g| g.config.members.as_slice())
    }

    /// The life of `from` whose stream this node follows in `group`: the
    /// newest it has heard of (`None`: it has heard nothing from `from`).
    pub fn life_of(&self, group: GroupId, from: NodeId) -> Option<Incarnation> {
        self.groups
            .get(&group)
            .and_then(|g| g.streams.get(&from))
            .map(|s| s.life)
    }

    // ---- mutators ----

    /// Makes this node acknowledge a sender's messages only once the layer
    /// above has taken them ([`release`](Self::release)), not when they
    /// are delivered to it. A layer that holds delivered messages back
    /// (causal order, for one) so keeps every sender's ring as the bound
    /// of what it holds: a sender gets no further ahead of that layer than
    /// its ring.
    pub fn hold_acks(&mut self) {
        self.hold_acks = true;
    }

    /// Makes this node report each message that arrives after a gap, at
    /// once ([`McastEvent::Arrived`]), besides delivering it in order later.
    pub fn report_arrivals(&mut self) {
        self.report_arrivals = true;
    }

    /// Multicasts `payload` to `group` as [`McastInput::Send`] does, but
    /// answers here instead of with a `Sent` or `Refused` event: the
    /// message's number, or why nothing was sent (a full ring says
    /// [`McastEvent::Ready`] later, as for any send). It is delivered here
    /// first, as every send is. For a layer above that sends messages of
    /// its own (the total order's decisions).
    ///
    /// # Errors
    /// The [`Refusal`]: nothing was sent.
    pub fn try_send(
        &mut self,
        now: Instant,
        group: GroupId,
        payload: Bytes,
    ) -> Result<u64, Refusal> {
        self.send_inner(now, group, payload, None)
    }

    /// With [`hold_acks`](Self::hold_acks): the layer above has taken
    /// `from`'s messages of life `life` up to `upto`, which may now be
    /// acknowledged.
    pub fn release(
        &mut self,
        now: Instant,
        group: GroupId,
        from: NodeId,
        life: Incarnation,
        upto: u64,
    ) {
        let Some(s) = self
            .groups
            .get_mut(&group)
            .and_then(|g| g.streams.get_mut(&from))
            .filter(|s| s.life == life)
        else {
            return;
        };
        s.released = s.released.max(upto);
        if s.released > s.acked && !s.ack_due {
            s.ack_due = true;
            self.out
                .set_timer_after(McastTimer::Ack(group, from), now, self.config.ack_delay);
        }
    }

    /// Tells the node that message `upto` of `from`'s life `life` exists
    /// (a layer above learned it, for example from another member's causal
    /// past): if it is not delivered yet, the node asks `from` for it as
    /// for any gap. A sender that has restarted since answers with its new
    /// life, and what its old one left undelivered is reported
    /// [`McastEvent::Missed`]: a member never waits for ever on a life
    /// that is over.
    pub fn expect(
        &mut self,
        now: Instant,
        group: GroupId,
        from: NodeId,
        life: Incarnation,
        upto: u64,
    ) {
        if from == self.me || upto > MAX_SEQ {
            return;
        }
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if !g.config.contains(from) {
            return;
        }
        let srm = g.srm.is_some();
        let Some(s) = Self::stream_of(&mut self.out, g, from, life, 1) else {
            return;
        };
        s.highest = s.highest.max(upto);
        let gap = s.next <= s.highest;
        if srm {
            // Asked of the group, after the request delay, as any gap is:
            // a NACK to the source would bypass suppression.
            if gap {
                self.schedule_request(now, group, from);
            }
            return;
        }
        if gap && !s.nack_due {
            s.nack_due = true;
            self.nack(now, group, from);
        }
    }

    // ---- handle_* helpers ----

    fn send(&mut self, now: Instant, group: GroupId, token: u64, payload: Bytes) {
        if let Err(why) = self.send_inner(now, group, payload, Some(token)) {
            self.out.event(McastEvent::Refused { group, token, why });
        }
    }

    /// A send; `token`: say `Sent` (after the delivery here).
    fn send_inner(
        &mut self,
        now: Instant,
        group: GroupId,
        payload: Bytes,
        token: Option<u64>,
    ) -> Result<u64, Refusal> {
        let Some(g) = self.groups.get_mut(&group) else {
            return Err(Refusal::UnknownGroup);
        };
        let max = g.config.max_payload.min(MAX_PAYLOAD);
        if payload.len() > max {
            return Err(Refusal::TooLarge {
                len: payload.len(),
                max,
            });
        }
        if g.srm.is_some() && g.history.is_full() {
            // Nobody acknowledges: the oldest message is forgotten.
            let base = g.history.base();
            g.history.release_upto(base);
        }
        let Some(seq) = g.history.push(payload.clone()) else {
            if !g.blocked && g.tree.is_none() {
                // Ask for the acknowledgements that would free the ring
                // now, not at the next periodic announcement: the last
                // ones may have been lost, and the sender waits on them.
                self.stats.announces_sent += 1;
                let msg = g.announcement(self.life);
                self.out.multicast(g.others.clone(), msg);
            }
            g.blocked = true;
            self.stats.refused_full += 1;
            return Err(Refusal::HistoryFull);
        };
        // Delivered here first: this node is a member too.
        self.stats.delivered += 1;
        self.out.event(McastEvent::Delivered {
            group,
            from: self.me,
            life: self.life,
            seq,
            payload: payload.clone(),
        });
        if let Some(token) = token {
            self.out.event(McastEvent::Sent { group, token, seq });
        }
        let msg = McastMessage::Data {
            group,
            life: self.life,
            seq,
            base: g.history.base(),
            payload: payload.clone(),
        };
        let to = g.others.clone();
        // A group of one keeps nothing.
        if g.srm.is_none() {
            Self::free_acknowledged(&mut self.out, g);
        }
        self.out.multicast(to, msg);
        self.fec_sent(now, group, seq, payload);
        let g = self.groups.get_mut(&group).expect("the group is there");
        if g.srm.is_none() && g.tree.is_none() && !g.history.is_empty() && !g.announcing {
            g.announcing = true;
            self.out.set_timer_after(
                McastTimer::Announce(group),
                now,
                self.config.announce_interval,
            );
        }
        Ok(seq)
    }

    /// Frees what every other member has acknowledged, and says `Ready`
    /// if a send was refused for want of room.
    pub(crate) fn free_acknowledged(out: &mut Outbox<Multicast>, g: &mut Group) {
        let upto = match &g.tree {
            // Hierarchical feedback: the children's aggregates only.
            Some(t) => t.freeable(),
            None => g.acked.values().copied().min().unwrap_or(u64::MAX),
        };
        g.history.release_upto(upto);
        if g.blocked && !g.history.is_full() {
            g.blocked = false;
            out.event(McastEvent::Ready { group: g.config.id });
        }
    }

    /// The stream of `from` in `g` for its life `life`, started at `base`
    /// if this node knows no such life yet; `None` for an older life.
    pub(crate) fn stream_of<'a>(
        out: &mut Outbox<Multicast>,
        g: &'a mut Group,
        from: NodeId,
        life: Incarnation,
        base: u64,
    ) -> Option<&'a mut Stream> {
        let group = g.config.id;
        match g.streams.get(&from) {
            Some(s) if s.life > life => return None,
            Some(s) if s.life == life => {}
            old => {
                // A new life of the sender (or the first seen): what the
                // old one left undelivered is lost with it.
                if let Some(old) = old
                    && old.next <= old.highest
                {
                    out.event(McastEvent::Missed {
                        group,
                        from,
                        life: old.life,
                        upto: old.highest,
                    });
                }
                if base > 1 {
                    out.event(McastEvent::Missed {
                        group,
                        from,
                        life,
                        upto: base - 1,
                    });
                }
                g.streams.insert(from, Stream::new(life, base));
            }
        }
        g.streams.get_mut(&from)
    }

    /// A data message `(seq, base, payload)` of `from`'s stream.
    pub(crate) fn on_data(
        &mut self,
        now: Instant,
        from: NodeId,
        group: GroupId,
        life: Incarnation,
        (seq, base, payload): (u64, u64, Bytes),
    ) {
        if self.take_data(now, from, group, life, (seq, base, payload.clone())) {
            self.fec_on_data(now, from, group, life, seq, payload);
        }
    }

    /// Takes a message of `from`'s stream (arrived, or rebuilt from
    /// parity); true if it was new (delivered, or kept after a gap).
    pub(crate) fn take_data(
        &mut self,
        now: Instant,
        from: NodeId,
        group: GroupId,
        life: Incarnation,
        (seq, base, payload): (u64, u64, Bytes),
    ) -> bool {
        let Some(g) = self.groups.get_mut(&group) else {
            self.stats.ignored += 1;
            return false;
        };
        if payload.len() > g.config.max_payload || seq == 0 || base > seq {
            self.stats.ignored += 1;
            return false;
        }
        let window = g.config.history;
        let srm = g.srm.is_some();
        let tree = g.tree.is_some();
        let Some(s) = Self::stream_of(&mut self.out, g, from, life, base) else {
            return false;
        };
        self.delivered.clear();
        Self::skip_to_base(&mut self.out, s, base, &mut self.delivered, group, from);
        let early = self.report_arrivals.then(|| payload.clone());
        let new = match s.take(seq, payload, window, &mut self.delivered) {
            Took::Duplicate => {
                self.stats.duplicates += 1;
                false
            }
            Took::BeyondWindow => {
                self.stats.beyond_window += 1;
                false
            }
            Took::Kept => {
                if let Some(payload) = early {
                    self.out.event(McastEvent::Arrived {
                        group,
                        from,
                        life,
                        seq,
                        payload,
                    });
                }
                true
            }
            Took::Delivered => true,
        };
        // The repair of the first message the last NACK asked for: a
        // round-trip sample, unless that NACK was a repeat.
        if let Some((at, first, repeat)) = s.nacked
            && seq == first
            && new
        {
            s.nacked = None;
            if !repeat {
                s.nack_rtt
                    .get_or_insert_with(|| ft_rpc::rtt::RttEstimator::new(nack_rtt(&self.config)))
                    .on_sample(now.saturating_duration_since(at));
            }
        }
        if srm {
            s.remember(&self.delivered, window);
            let gap = s.first_gap().is_some();
            self.emit_delivered(group, from, life);
            if gap {
                self.schedule_request(now, group, from);
            } else {
                self.gap_closed(group, from);
            }
            return new;
        }
        if tree {
            // Kept for the children's repairs until they have it.
            s.remember(&self.delivered, window);
        }
        let gap = s.next <= s.highest;
        let delivered = !self.delivered.is_empty();
        let ack = (delivered || s.next - 1 > s.acked) && !s.ack_due && !self.hold_acks;
        if ack {
            s.ack_due = true;
        }
        // The gaps are closed: the next gap is asked for at once, not when
        // this one's NACK timer fires (up to a `nack_interval` later). The
        // timer may still fire: it finds nothing to ask, or is set anew by
        // that next gap's NACK.
        if !gap {
            s.nack_due = false;
        }
        let first_nack = gap && !s.nack_due;
        if first_nack {
            s.nack_due = true;
        }
        // A quarter of the ring owed: acknowledged now, not when the timer
        // fires, so a fast sender's ring frees before it fills (a timer
        // alone caps a sender at `history` messages per `ack_delay`).
        let ack_now = !tree
            && !self.hold_acks
            && (s.next - 1).saturating_sub(s.acked) >= (window as u64 / 4).max(1);
        self.emit_delivered(group, from, life);
        if first_nack {
            // Asked at once (or once parity had its chance), then again
            // while the gap lasts.
            self.first_nack(now, group, from);
        }
        if ack_now {
            self.ack(group, from);
        }
        if ack {
            self.out
                .set_timer_after(McastTimer::Ack(group, from), now, self.config.ack_delay);
        }
        new
    }

    /// Hands the application what `self.delivered` holds, from `from`'s
    /// stream `life`.
    pub(crate) fn emit_delivered(&mut self, group: GroupId, from: NodeId, life: Incarnation) {
        for (seq, payload) in self.delivered.drain(..) {
            self.stats.delivered += 1;
            self.out.event(McastEvent::Delivered {
                group,
                from,
                life,
                seq,
                payload,
            });
        }
    }

    /// Skips `s` to `base` (the source holds nothing older), reporting
    /// what was skipped as missed; what `base` makes contiguous goes into
    /// `delivered`.
    pub(crate) fn skip_to_base(
        out: &mut Outbox<Multicast>,
        s: &mut Stream,
        base: u64,
        delivered: &mut Vec<(u64, Bytes)>,
        group: GroupId,
        from: NodeId,
    ) {
        if let Some(upto) = s.skip_to(base, delivered) {
            out.event(McastEvent::Missed {
                group,
                from,
                life: s.life,
                upto,
            });
        }
    }

    fn on_announce(
        &mut self,
        now: Instant,
        from: NodeId,
        group: GroupId,
        life: Incarnation,
        base: u64,
        highest: u64,
    ) {
        let Some(g) = self.groups.get_mut(&group) else {
            self.stats.ignored += 1;
            return;
        };
        if base == 0 || base > highest.saturating_add(1) {
            self.stats.ignored += 1;
            return;
        }
        let Some(s) = Self::stream_of(&mut self.out, g, from, life, base) else {
            return;
        };
        self.delivered.clear();
        Self::skip_to_base(&mut self.out, s, base, &mut self.delivered, group, from);
        s.highest = s.highest.max(highest);
        let first_nack = s.next <= s.highest && !s.nack_due;
        if first_nack {
            s.nack_due = true;
        }
        self.emit_delivered(group, from, life);
        // The sender is waiting for acknowledgements: one now.
        self.ack(group, from);
        if first_nack {
            self.first_nack(now, group, from);
        }
    }

    fn on_ack(&mut self, from: NodeId, group: GroupId, life: Incarnation, upto: u64) {
        let Some(g) = self.groups.get_mut(&group) else {
            self.stats.ignored += 1;
            return;
        };
        if life != self.life {
            return;
        }
        // Never beyond what was sent: an acknowledgement from the future
        // (garbled, or forged) frees nothing that was not sent.
        let upto = upto.min(g.history.highest());
        if let Some(a) = g.acked.get_mut(&from) {
            *a = (*a).max(upto);
        }
        Self::free_acknowledged(&mut self.out, g);
        if g.history.is_empty() && g.announcing {
            g.announcing = false;
            self.out.cancel_timer(McastTimer::Announce(group));
        }
    }

    pub(crate) fn on_nack(
        &mut self,
        from: NodeId,
        group: GroupId,
        life: Incarnation,
        ranges: &[(u64, u64)],
    ) {
        let Some(g) = self.groups.get_mut(&group) else {
            self.stats.ignored += 1;
            return;
        };
        if life != self.life {
            // Asked about another life of this node: this one is the life
            // now, and the asker learns so from its announcement.
            self.stats.announces_sent += 1;
            self.out.send(from, g.announcement(self.life));
            return;
        }
        let mut budget = g.config.history;
        let mut gone = false;
        for &(first, last) in ranges {
            let mut seq = first;
            while seq <= last && budget > 0 {
                if seq < g.history.base() {
                    gone = true;
                    seq = g.history.base();
                    continue;
                }
                let Some(payload) = g.history.get(seq) else {
                    break;
                };
                budget -= 1;
                self.stats.repairs_sent += 1;
                let msg = McastMessage::Data {
                    group,
                    life: self.life,
                    seq,
                    base: g.history.base(),
                    payload: payload.clone(),
                };
                self.out.retransmit(from, seq, msg);
                seq += 1;
            }
        }
        if gone {
            // Asked for what is freed: the announcement's base says so.
            self.stats.announces_sent += 1;
            self.out.send(from, g.announcement(self.life));
        }
    }

    fn ack(&mut self, group: GroupId, from: NodeId) {
        if self.tree_ack(group, from) {
            return;
        }
        let Some(s) = self
            .groups
            .get_mut(&group)
            .and_then(|g| g.streams.get_mut(&from))
        else {
            return;
        };
        let upto = if self.hold_acks {
            s.released.min(s.next - 1)
        } else {
            s.next - 1
        };
        s.acked = upto;
        self.stats.acks_sent += 1;
        self.out.send(
            from,
            McastMessage::Ack {
                group,
                life: s.life,
                upto,
            },
        );
    }

    pub(crate) fn nack(&mut self, now: Instant, group: GroupId, from: NodeId) {
        if self.tree_nack(now, group, from) {
            return;
        }
        let Some(s) = self
            .groups
            .get_mut(&group)
            .and_then(|g| g.streams.get_mut(&from))
        else {
            return;
        };
        let ranges = s.gaps(MAX_NACK_RANGES);
        if ranges.is_empty() {
            s.nack_due = false;
            return;
        }
        let life = s.life;
        let first = ranges[0].0;
        let repeat = s.nacked.is_some_and(|(_, f, _)| f == first);
        s.nacked = Some((now, first, repeat));
        // Asked again after the round trip measured from earlier NACKs
        // (its RTO, at least 1 ms), or `nack_interval` before any: a lost
        // NACK or repair stalls everything behind it until then.
        let again = s
            .nack_rtt
            .as_ref()
            .map_or(self.config.nack_interval, |r| r.rto());
        self.stats.nacks_sent += 1;
        self.out.send(
            from,
            McastMessage::Nack {
                group,
                life,
                ranges,
            },
        );
        self.out
            .set_timer_after(McastTimer::Nack(group, from), now, again);
    }

    fn announce(&mut self, now: Instant, group: GroupId) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if g.history.is_empty() {
            g.announcing = false;
            return;
        }
        self.stats.announces_sent += 1;
        let msg = g.announcement(self.life);
        let to = g.others.clone();
        self.out.multicast(to, msg);
        self.out.set_timer_after(
            McastTimer::Announce(group),
            now,
            self.config.announce_interval,
        );
    }
}

impl Protocol for Multicast {
    type Message = McastMessage;
    type Input = McastInput;
    type Event = McastEvent;
    type Timer = McastTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: McastMessage) {
        self.out.received();
        let group = msg.group();
        let member = self
            .groups
            .get(&group)
            .is_some_and(|g| from != self.me && g.config.contains(from));
        if !member || !msg.numbers_in_range() {
            self.stats.ignored += 1;
            self.out.dropped();
            return;
        }
        match msg {
            McastMessage::Data {
                group,
                life,
                seq,
                base,
                payload,
            } => self.on_data(now, from, group, life, (seq, base, payload)),
            McastMessage::Ack { group, life, upto } => self.on_ack(from, group, life, upto),
            McastMessage::Nack {
                group,
                life,
                ranges,
            } => self.on_nack(from, group, life, &ranges),
            McastMessage::Announce {
                group,
                life,
                base,
                highest,
            } => self.on_announce(now, from, group, life, base, highest),
            McastMessage::Request {
                group,
                origin,
                life,
                ranges,
            } => {
                self.fec_on_request(now, from, group, origin, life, &ranges);
                self.on_request(now, from, group, origin, life, &ranges);
            }
            McastMessage::Repair {
                group,
                origin,
                life,
                seq,
                payload,
            } => self.on_repair(now, from, group, origin, life, seq, payload),
            McastMessage::Session {
                group,
                life,
                base,
                highest,
                stamp,
                echoes,
            } => self.on_session(now, from, group, life, (base, highest), stamp, &echoes),
            msg @ (McastMessage::TreeAck { .. }
            | McastMessage::TreeNack { .. }
            | McastMessage::TreeRepair { .. }
            | McastMessage::TreeAnnounce { .. }
            | McastMessage::TreeLeave { .. }) => self.on_tree(now, from, msg),
            msg @ McastMessage::Parity { .. } => self.on_parity(now, from, msg),
            // The ordering layer's own messages: handled above the core.
            McastMessage::Datagram { .. }
            | McastMessage::Have { .. }
            | McastMessage::Beacon { .. } => {
                self.stats.ignored += 1;
                self.out.dropped();
            }
        }
    }

    fn handle_input(&mut self, now: Instant, input: McastInput) {
        match input {
            McastInput::Send {
                group,
                token,
                payload,
            } => self.send(now, group, token, payload),
        }
    }

    fn handle_timer(&mut self, now: Instant, timer: McastTimer) {
        self.out.timer_fired();
        match timer {
            McastTimer::Announce(group) => self.announce(now, group),
            McastTimer::Ack(group, from) => {
                if let Some(s) = self
                    .groups
                    .get_mut(&group)
                    .and_then(|g| g.streams.get_mut(&from))
                {
                    s.ack_due = false;
                }
                self.ack(group, from);
            }
            McastTimer::Nack(group, from) => self.nack(now, group, from),
            McastTimer::Request(group, origin) => self.request(now, group, origin),
            McastTimer::Repair(group, origin, seq) => self.repair(now, group, origin, seq),
            McastTimer::Session(group) => self.session(now, group),
            McastTimer::Tree(group) => self.tree_tick(now, group),
            McastTimer::FecFlush(group) => self.fec_flush(group),
            McastTimer::FecRepair(group, origin, block) => {
                self.fec_answer(now, group, origin, block);
            }
            McastTimer::Order(_) => {}
        }
    }

    fn handle_persisted(&mut self, _now: Instant, _token: PersistToken) {}

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl Recover for Multicast {
    type Config = McastConfig;

    /// Builds a node; nothing is persisted, so `ctx.records` must be empty
    /// (a record is an error, never skipped).
    fn recover(config: &McastConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        if !ctx.records.is_empty() {
            return Err(RecoveryError::Inconsistent(
                "ft-multicast persists nothing, yet records were handed to it".into(),
            ));
        }
        let me = ctx.node;
        let mut out = Outbox::recovered(&ctx);
        let groups: BTreeMap<GroupId, Group> = config
            .groups
            .iter()
            .cloned()
            .map(GroupConfig::normalized)
            .filter(|g| g.contains(me))
            .map(|g| {
                let others = g.others(me);
                (
                    g.id,
                    Group {
                        history: History::new(g.history),
                        acked: others.iter().map(|&m| (m, 0)).collect(),
                        others,
                        blocked: false,
                        announcing: false,
                        streams: BTreeMap::new(),
                        srm: match &g.feedback {
                            Feedback::Nack(params) => Some(SrmState::new(params.clone())),
                            Feedback::Ack | Feedback::Tree(_) => None,
                        },
                        tree: match &g.feedback {
                            Feedback::Tree(params) => Some(TreeState::new(
                                params.clone(),
                                me,
                                ctx.incarnation,
                                g.members.clone(),
                                ctx.now,
                            )),
                            Feedback::Ack | Feedback::Nack(_) => None,
                        },
                        fec: g.fec.clone().map(FecState::new),
                        config: g,
                    },
                )
            })
            .collect();
        let mut rng = Rng::new(ft_core::rng::mix(ctx.seed, 0x006d_6361_7374));
        for g in groups.values() {
            if let Some(srm) = &g.srm {
                // Members started together do not send their sessions in
                // step.
                let first = srm
                    .params
                    .session_interval
                    .mul_f64(rng.below(1000) as f64 / 1000.0);
                out.set_timer(McastTimer::Session(g.config.id), ctx.now + first);
            }
            if let Some(t) = &g.tree {
                // Heartbeats out of step, as sessions are.
                let first = t.params.heartbeat.mul_f64(rng.below(1000) as f64 / 1000.0);
                out.set_timer(McastTimer::Tree(g.config.id), ctx.now + first);
            }
        }
        Ok(Multicast {
            me,
            life: ctx.incarnation,
            config: config.clone(),
            groups,
            stats: McastStats::default(),
            out,
            delivered: Vec::new(),
            hold_acks: false,
            tree_stats: TreeStats::default(),
            report_arrivals: false,
            rng,
            start: ctx.now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: GroupId = GroupId(1);

    fn node(me: u64, life: u64, history: usize) -> Multicast {
        let group = GroupConfig::new(G, [NodeId(1), NodeId(2), NodeId(3)]).with_history(history);
        let ctx = RecoveryContext {
            node: NodeId(me),
            incarnation: Incarnation(life),
            records: Vec::new(),
            seed: me,
            now: Instant::now(),
        };
        Multicast::recover(&McastConfig::new(vec![group]), ctx).unwrap()
    }

    fn events(m: &mut Multicast) -> Vec<McastEvent> {
        std::iter::from_fn(|| m.poll_output())
            .filter_map(|o| match o {
                Output::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn data(life: u64, seq: u64, base: u64) -> McastMessage {
        McastMessage::Data {
            group: G,
            life: Incarnation(life),
            seq,
            base,
            payload: Bytes::from(vec![seq as u8]),
        }
    }

    fn delivered(events: &[McastEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                McastEvent::Delivered { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_sender_far_ahead_costs_a_receiver_at_most_its_window() {
        // A forged or broken sender: numbers far beyond the window are not
        // kept, so they cannot grow the receiver.
        let mut r = node(2, 0, 4);
        let now = Instant::now();
        for seq in 2..1000 {
            r.handle_message(now, NodeId(1), data(0, seq, 1));
        }
        events(&mut r);
        assert_eq!(r.held().pending_per_stream, 3);
        assert_eq!(r.stats().beyond_window, 1000 - 2 - 3);
    }

    #[test]
    fn numbers_beyond_any_stream_are_ignored() {
        // Found by the fuzz target: message u64::MAX, delivered, left the
        // next number to overflow.
        let mut r = node(2, 0, 4);
        let now = Instant::now();
        let top = crate::message::MAX_SEQ;
        for (seq, base) in [(u64::MAX, u64::MAX), (top + 1, 1), (2, top + 1)] {
            r.handle_message(now, NodeId(1), data(0, seq, base));
        }
        assert!(events(&mut r).is_empty());
        assert_eq!(r.stats().ignored, 3);
        // The last number accepted still works.
        r.handle_message(now, NodeId(1), data(0, top, top));
        assert_eq!(delivered(&events(&mut r)), vec![top]);
    }

    #[test]
    fn an_acknowledgement_of_an_earlier_life_frees_nothing() {
        let mut s = node(1, 5, 8);
        let now = Instant::now();
        for token in 0..3 {
            s.handle_input(
                now,
                McastInput::Send {
                    group: G,
                    token,
                    payload: Bytes::from_static(b"x"),
                },
            );
        }
        events(&mut s);
        // Both others acknowledge far ahead, but for the sender's life 4.
        for from in [2, 3] {
            s.handle_message(
                now,
                NodeId(from),
                McastMessage::Ack {
                    group: G,
                    life: Incarnation(4),
                    upto: 100,
                },
            );
        }
        assert_eq!(s.held().history, 3);
        for from in [2, 3] {
            s.handle_message(
                now,
                NodeId(from),
                McastMessage::Ack {
                    group: G,
                    life: Incarnation(5),
                    upto: 2,
                },
            );
        }
        assert_eq!(s.held().history, 1);
    }

    #[test]
    fn a_repair_that_says_older_messages_are_gone_skips_them_at_once() {
        let mut r = node(2, 0, 8);
        let now = Instant::now();
        r.handle_message(now, NodeId(1), data(0, 3, 1));
        assert!(delivered(&events(&mut r)).is_empty());
        // The sender freed 1 and 2 (acknowledged by this node's earlier
        // life): its next message says so, and 3 and 4 go at once.
        r.handle_message(now, NodeId(1), data(0, 4, 3));
        let ev = events(&mut r);
        assert!(ev.contains(&McastEvent::Missed {
            group: G,
            from: NodeId(1),
            life: Incarnation(0),
            upto: 2
        }));
        assert_eq!(delivered(&ev), vec![3, 4]);
    }

    #[test]
    fn a_gap_left_by_a_sender_that_restarted_is_reported() {
        let mut r = node(2, 0, 8);
        let now = Instant::now();
        // Message 2 of life 0 came, message 1 never did.
        r.handle_message(now, NodeId(1), data(0, 2, 1));
        events(&mut r);
        // The sender restarts: life 1 starts again at 1.
        r.handle_message(now, NodeId(1), data(1, 1, 1));
        let ev = events(&mut r);
        assert_eq!(
            ev[0],
            McastEvent::Missed {
                group: G,
                from: NodeId(1),
                life: Incarnation(0),
                upto: 2
            }
        );
        assert_eq!(delivered(&ev), vec![1]);
    }

    /// The acknowledgements among `m`'s outputs.
    fn acks(m: &mut Multicast) -> Vec<u64> {
        std::iter::from_fn(|| m.poll_output())
            .filter_map(|o| match o {
                Output::Send {
                    msg: McastMessage::Ack { upto, .. },
                    ..
                } => Some(upto),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_receiver_acknowledges_each_quarter_of_the_ring_without_waiting() {
        let mut r = node(2, 0, 16);
        let now = Instant::now();
        let mut sent = Vec::new();
        for seq in 1..=9 {
            r.handle_message(now, NodeId(1), data(0, seq, 1));
            sent.extend(acks(&mut r));
        }
        // 16 / 4 = 4: at 4 and 8, before any timer.
        assert_eq!(sent, vec![4, 8]);
    }

    #[test]
    fn a_sender_whose_ring_fills_announces_at_once() {
        let mut a = node(1, 0, 2);
        let now = Instant::now();
        let send = |a: &mut Multicast, token| {
            a.handle_input(
                now,
                McastInput::Send {
                    group: G,
                    token,
                    payload: Bytes::from_static(b"x"),
                },
            );
            std::iter::from_fn(|| a.poll_output())
                .filter(|o| {
                    matches!(
                        o,
                        Output::Multicast {
                            msg: McastMessage::Announce { .. },
                            ..
                        }
                    )
                })
                .count()
        };
        assert_eq!(send(&mut a, 1) + send(&mut a, 2), 0);
        // Full: refused, and the others are asked for their
        // acknowledgements once, not at every refusal.
        assert_eq!(send(&mut a, 3), 1);
        assert_eq!(send(&mut a, 4), 0);
    }

    /// When `m`'s outputs set the NACK timer for node 1's stream.
    fn nack_timer(m: &mut Multicast) -> Option<Instant> {
        std::iter::from_fn(|| m.poll_output())
            .filter_map(|o| match o {
                Output::SetTimer {
                    timer: McastTimer::Nack(G, NodeId(1)),
                    at,
                } => Some(at),
                _ => None,
            })
            .last()
    }

    #[test]
    fn a_nack_is_repeated_after_the_round_trip_its_repairs_measured() {
        let mut r = node(2, 0, 16);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A gap at 2: NACKed at once, asked again after nack_interval
        // (40 ms) while nothing is measured.
        r.handle_message(t0, NodeId(1), data(0, 1, 1));
        r.handle_message(t0, NodeId(1), data(0, 3, 1));
        assert_eq!(nack_timer(&mut r), Some(t0 + ms(40)));
        // Another message after the gap comes first: no sample (it
        // answers nothing); the repair comes 2 ms after the NACK: a sample.
        r.handle_message(t0 + ms(1), NodeId(1), data(0, 4, 1));
        r.handle_message(t0 + ms(2), NodeId(1), data(0, 2, 1));
        // The next gap is asked for again after the RTO of that sample:
        // 2 ms + 4 × 1 ms.
        let t1 = t0 + ms(10);
        r.handle_message(t1, NodeId(1), data(0, 6, 1));
        assert_eq!(nack_timer(&mut r), Some(t1 + ms(6)));
        // A repeated NACK's answer gives no sample (which NACK did it
        // answer?): the next interval stays 6 ms, though this repair took
        // 30 ms.
        r.handle_timer(t1 + ms(6), McastTimer::Nack(G, NodeId(1)));
        assert_eq!(nack_timer(&mut r), Some(t1 + ms(12)));
        r.handle_message(t1 + ms(30), NodeId(1), data(0, 5, 1));
        let t2 = t1 + ms(40);
        r.handle_message(t2, NodeId(1), data(0, 8, 1));
        assert_eq!(nack_timer(&mut r), Some(t2 + ms(6)));
    }
}

//! [`Ordered`]: delivery levels chosen message by message, over the
//! reliable-multicast core — unreliable, reliable, FIFO, causal, agreed
//! (total order) and safe, in the spirit of Spread.
//!
//! [`Multicast`] delivers each sender's messages in the order it sent
//! them, and nothing more. `Ordered` embeds a `Multicast` and lets each
//! send pick its [`Order`] (its delivery level):
//!
//! | level | guarantee | extra messages | latency (one-way hops) |
//! |---|---|---|---|
//! | [`Unreliable`](Order::Unreliable) | none: may be lost; delivered on arrival, at most once | none (no acknowledgements, no repair) | 1 |
//! | [`Reliable`](Order::Reliable) | every member gets it (or is told it missed it); no order | the core's (acknowledgements, repairs) | 1, or a repair's round trip |
//! | [`Fifo`](Order::Fifo) | reliable, in its sender's order | the core's | 1, plus waiting for the sender's earlier messages |
//! | [`Causal`](Order::Causal) | FIFO, and after everything its sender had delivered | the core's; a vector timestamp in the payload (24 bytes per member) | FIFO's, plus waiting for its causal past |
//! | [`Agreed`](Order::Agreed) | causal, and in one total order at every member | one decision per batch from the sequencer (a core message, multicast and acknowledged), a persist at the sequencer | 2 (to the sequencer, its decision back), plus the sequencer's persist |
//! | [`Safe`](Order::Safe) | agreed, and only once every member holds it | agreed's, plus a `Have` from each member to the sequencer and a beacon back | 4: agreed's, plus `Have` and the beacon |
//!
//! A receiver delivers each sender's messages of the levels FIFO and above
//! in that sender's order whatever their level: a causal or agreed
//! message held back holds back the sender's later ones. Reliable and
//! unreliable messages skip that queue.
//!
//! # Causal order
//!
//! A causal (or agreed, or safe) message carries its sender's causal past
//! (for every other member, the last of its messages the sender had
//! delivered: one vector timestamp, in the sender's lives and stream
//! numbers), and a receiver holds it back until it has delivered that
//! past. A dependency on messages that will never come (the core reported
//! them [`Missed`](crate::McastEvent::Missed), or their sender has
//! restarted since) is taken as met, so a restart never holds a member
//! back for ever; the application was told of the loss.
//!
//! # Total order
//!
//! See [`total`](crate::total): the group's lowest member is its
//! sequencer; it numbers agreed and safe messages in the order they reach
//! it, persists each decision before it multicasts it, and so survives its
//! own crash. Agreed order respects causal order: a message's causal past
//! was delivered, so ordered, somewhere before the message was sent, so it
//! reached the sequencer, and took its position, first.
//!
//! Nothing new crosses the network for the ordered levels: the level, the
//! timestamp and the decisions ride inside the core's payload
//! ([`header`](mod@crate::header)). Unreliable messages, the members'
//! `Have`s and the sequencer's beacons are messages of their own
//! ([`McastMessage::Datagram`], [`McastMessage::Have`],
//! [`McastMessage::Beacon`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use ft_core::{
    Component, Counters, Incarnation, NodeId, Outbox, Output, PersistToken, Persisted, Protocol,
    Recover, RecoveryContext, RecoveryError,
};

use crate::core::{McastConfig, McastEvent, McastInput, McastTimer, Multicast, Refusal};
use crate::group::{GroupConfig, GroupId};
use crate::header::{self, Header, MessageId};
use crate::message::{MAX_PAYLOAD, McastMessage};
use crate::total::{Agreed, OrderRecord, Sequencer};

/// The embedded core's component number.
const CORE: Component = Component(1);

/// How many datagram numbers a receiver remembers per sender, to deliver a
/// duplicated datagram once.
const DATAGRAM_MEMORY: usize = 64;

/// A message's delivery level, chosen per send: see the
/// [module docs](self) for each one's guarantee and cost. Each level
/// promises what the ones before it do, except that [`Unreliable`](Self::Unreliable)
/// and [`Reliable`](Self::Reliable) promise no order at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Order {
    /// Multicast once, kept nowhere, never repaired: it may be lost.
    /// Delivered on arrival, at most once (duplicates are dropped), never
    /// refused for a full ring. Its number in
    /// [`OrderedEvent::Delivered`] counts the sender's datagrams, apart
    /// from its stream.
    Unreliable,
    /// Repaired as every core message is, and delivered as soon as it
    /// arrives, even ahead of its sender's earlier messages.
    Reliable,
    /// In its sender's order.
    Fifo,
    /// After everything its sender had delivered when it sent it (and in
    /// its sender's order).
    Causal,
    /// Causal, and at the same position of the group's total order at
    /// every member: no two members deliver two agreed (or safe) messages
    /// in different orders.
    Agreed,
    /// Agreed, and delivered only once every member is known to hold it
    /// (its position is stable).
    Safe,
}

impl Order {
    /// Whether the message carries its sender's causal past.
    fn carries_past(self) -> bool {
        matches!(self, Order::Causal | Order::Agreed | Order::Safe)
    }

    /// Whether the message takes a position of the total order.
    fn total(self) -> bool {
        matches!(self, Order::Agreed | Order::Safe)
    }
}

/// What the application asks of an [`Ordered`] node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderedInput {
    /// Multicast `payload` to `group` with `order`.
    Send {
        /// The group.
        group: GroupId,
        /// Echoed in the send's `Sent` or `Refused` event.
        token: u64,
        /// The bytes.
        payload: Bytes,
        /// How the other members deliver it.
        order: Order,
    },
}

/// What an [`Ordered`] node tells the application: the core's events, with
/// deliveries in the order asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderedEvent {
    /// Message `seq` of `from` (in its life `life`), delivered.
    Delivered {
        /// The group.
        group: GroupId,
        /// The sender.
        from: NodeId,
        /// The sender's life.
        life: Incarnation,
        /// Its number in the sender's stream (for
        /// [`Order::Unreliable`]: among the sender's datagrams).
        seq: u64,
        /// How it was sent.
        order: Order,
        /// Its position in the group's total order, for
        /// [`Order::Agreed`] and [`Order::Safe`] (positions start at 1 and
        /// go on across the sequencer's restarts).
        position: Option<u64>,
        /// The application's bytes.
        payload: Bytes,
    },
    /// Positions `first..=last` of the group's total order will never be
    /// delivered here: this node (re)started after they were decided, or
    /// the messages there were lost with their senders' lives.
    MissedAgreed {
        /// The group.
        group: GroupId,
        /// The first position missed.
        first: u64,
        /// The last.
        last: u64,
    },
    /// Any other event of the core: `Sent`, `Refused`, `Ready`, `Missed`
    /// (never `Delivered` or `Arrived`). A `Missed` comes in its sender's
    /// stream order: after the messages before it are delivered. An agreed
    /// message whose position this node will never deliver is reported
    /// `Missed` too.
    Core(McastEvent),
}

/// Counters of an [`Ordered`] node, beyond the core's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderedStats {
    /// Positions given (as sequencer), this life.
    pub positions_given: u64,
    /// Decisions multicast (as sequencer), this life.
    pub decisions_sent: u64,
    /// Decisions multicast again after a restart (as sequencer).
    pub decisions_resent: u64,
    /// `Have`s sent to the sequencer.
    pub haves_sent: u64,
    /// Beacons sent (as sequencer).
    pub beacons_sent: u64,
    /// Datagrams ([`Order::Unreliable`]) sent.
    pub datagrams_sent: u64,
    /// Duplicated datagrams dropped.
    pub datagram_duplicates: u64,
    /// Messages of this layer ignored: decisions from a member that is not
    /// the sequencer, `Have`s or beacons from the wrong member, messages
    /// from non-members or about unknown groups.
    pub ignored: u64,
    /// Application sends refused at the sequencer to keep room in its ring
    /// for decisions.
    pub refused_for_decisions: u64,
}

/// The last message of a sender's stream delivered (or known lost) here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    life: Incarnation,
    /// Delivered, or reported missed, up to here.
    upto: u64,
}

/// A message waiting for its turn.
#[derive(Debug)]
struct Held {
    life: Incarnation,
    seq: u64,
    order: Order,
    deps: Vec<(NodeId, Progress)>,
    payload: Bytes,
    /// Already handed on (a reliable message, delivered on arrival) or
    /// not the application's (a decision): only its place in the
    /// sender's order is left.
    done: bool,
}

/// What waits in a sender's queue, in the sender's order.
#[derive(Debug)]
enum Item {
    /// A message.
    Message(Held),
    /// The core's report that messages up to `upto` of the sender's life
    /// `life` will never come: passed on once what came before it is
    /// delivered, so the application hears of the loss in stream order.
    Missed { life: Incarnation, upto: u64 },
}

/// What to do with a queue's front.
enum Act {
    /// Deliver it (at this position, for the total order).
    Deliver(Option<u64>),
    /// Its turn is past: the sequencer decided it before this node's time.
    Drop,
    /// Pass it on without a delivery (a loss report, or something already
    /// handed on).
    Pass,
}

#[derive(Debug)]
struct GroupState {
    members: Vec<NodeId>,
    /// The lowest member: it orders agreed and safe messages.
    sequencer: NodeId,
    max_payload: usize,
    /// Ring slots this node keeps free for decisions, as sequencer.
    reserve: usize,
    progress: BTreeMap<NodeId, Progress>,
    /// How far earlier lives of members were delivered (or reported
    /// lost) here, once `progress` moved on to a newer one: a dependency
    /// on an old life is met only if this says so.
    old: BTreeMap<(NodeId, Incarnation), u64>,
    /// The newest life of each member the core has heard from.
    newest: BTreeMap<NodeId, Incarnation>,
    /// Per sender, what is not yet passed on, in its order.
    queues: BTreeMap<NodeId, VecDeque<Item>>,
    /// The total order, as this member sees it.
    agreed: Agreed,
    /// As sequencer.
    seq: Option<Sequencer>,
    /// Reliable messages delivered on arrival, before their turn.
    early: BTreeSet<MessageId>,
    /// Per sender, its datagrams' life and the numbers seen lately.
    datagrams: BTreeMap<NodeId, (Incarnation, VecDeque<u64>)>,
    /// The last datagram number sent.
    datagram_sent: u64,
    /// An application send was refused to keep room for decisions.
    app_blocked: bool,
    /// The last snapshot of this group's sequencer that is durable.
    snapshot: Option<PersistToken>,
}

/// Whether a dependency is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Met {
    /// Delivered (or reported lost) here.
    Yes,
    /// Not delivered, and never will be: the member has a newer life, and
    /// nothing of the needed one waits here any more.
    Lost,
    /// Not yet.
    No,
}

impl GroupState {
    fn new(config: &GroupConfig, me: NodeId, records: &[OrderRecord]) -> Self {
        let sequencer = config.members[0];
        GroupState {
            members: config.members.clone(),
            sequencer,
            max_payload: config.max_payload.min(MAX_PAYLOAD),
            reserve: (config.history / 4).max(1),
            progress: BTreeMap::new(),
            old: BTreeMap::new(),
            newest: BTreeMap::new(),
            queues: BTreeMap::new(),
            agreed: Agreed::default(),
            seq: (sequencer == me).then(|| Sequencer::recover(config.id, records)),
            early: BTreeSet::new(),
            datagrams: BTreeMap::new(),
            datagram_sent: 0,
            app_blocked: false,
            snapshot: None,
        }
    }

    fn advance(&mut self, from: NodeId, life: Incarnation, upto: u64) {
        let p = self.progress.entry(from).or_default();
        if life > p.life {
            if p.upto > 0 {
                self.old.insert((from, p.life), p.upto);
            }
            *p = Progress { life, upto };
        } else if life == p.life {
            p.upto = p.upto.max(upto);
        } else {
            let o = self.old.entry((from, life)).or_default();
            *o = (*o).max(upto);
        }
    }

    /// Whether `k`'s messages up to `need` are delivered here, or lost.
    fn met(&self, k: NodeId, need: Progress) -> Met {
        let have = self.progress.get(&k).copied().unwrap_or_default();
        let done = if have.life == need.life {
            have.upto
        } else {
            self.old.get(&(k, need.life)).copied().unwrap_or(0)
        };
        if done >= need.upto {
            return Met::Yes;
        }
        let newer = have.life > need.life || self.newest.get(&k).is_some_and(|&n| n > need.life);
        let waiting = self.queues.get(&k).is_some_and(|q| {
            q.iter().any(|i| match i {
                Item::Message(h) => h.life <= need.life,
                Item::Missed { life, .. } => *life <= need.life,
            })
        });
        if newer && !waiting {
            Met::Lost
        } else {
            Met::No
        }
    }

    /// Whether message `id` waits in its sender's queue here.
    fn holds(&self, id: MessageId) -> bool {
        self.queues.get(&id.0).is_some_and(|q| {
            q.iter()
                .any(|i| matches!(i, Item::Message(h) if h.life == id.1 && h.seq == id.2))
        })
    }

    /// Whether an agreed or safe message (`safe`: a safe one) waits here.
    fn holds_total(&self, safe: bool) -> bool {
        self.queues.values().flatten().any(|i| {
            matches!(i, Item::Message(h) if !h.done && h.order.total() && (!safe || h.order == Order::Safe))
        })
    }

    /// The agreed or safe messages first in their senders' queues that
    /// have no position yet and are not known decided: the sequencer may
    /// never have got them (their sender restarted before repairing them
    /// to it, and nobody knows of its new life yet), and is told.
    fn undecided(&self) -> Vec<MessageId> {
        self.queues
            .iter()
            .filter_map(|(&k, q)| match q.front()? {
                Item::Message(h) if !h.done && h.order.total() => {
                    let id = (k, h.life, h.seq);
                    (self.agreed.position(id).is_none() && !self.agreed.covered(id)).then_some(id)
                }
                _ => None,
            })
            .collect()
    }

    /// How far the total order is resolved here: every position up to it
    /// is delivered, skipped, or held with its decision.
    fn resolved(&self) -> u64 {
        let Some(next) = self.agreed.next else {
            return 0;
        };
        let mut r = next - 1;
        while r + 1 < self.agreed.known {
            match self.agreed.by_pos.get(&(r + 1)) {
                Some(&id) if self.holds(id) => r += 1,
                _ => break,
            }
        }
        r
    }
}

/// Delivery levels over the reliable core: see the [module docs](self).
pub struct Ordered {
    core: Multicast,
    groups: BTreeMap<GroupId, GroupState>,
    out: Outbox<Ordered>,
    config: McastConfig,
    /// The time of the call being handled.
    now: Instant,
    /// Messages held back, at most.
    held_most: usize,
    held_now: usize,
    events: Vec<McastEvent>,
    /// Messages held back need these (group, member, life, number):
    /// the core is told, so that it asks for them.
    wanted: Vec<(GroupId, NodeId, Incarnation, u64)>,
    stats: OrderedStats,
}

impl Ordered {
    // ---- getters ----

    /// The embedded reliable-multicast core.
    pub fn core(&self) -> &Multicast {
        &self.core
    }

    /// Messages held back now (waiting for their turn, their causal past
    /// or their position).
    pub fn held(&self) -> usize {
        self.held_now
    }

    /// The most that ever waited at once.
    pub fn held_most(&self) -> usize {
        self.held_most
    }

    /// This layer's counters.
    pub fn stats(&self) -> OrderedStats {
        self.stats
    }

    /// The group's sequencer (its lowest member).
    pub fn sequencer(&self, group: GroupId) -> Option<NodeId> {
        self.groups.get(&group).map(|st| st.sequencer)
    }

    /// The messages of `group` this node holds now, not yet delivered:
    /// sender, life, number (for checking stability in tests).
    pub fn holding(&self, group: GroupId) -> Vec<MessageId> {
        self.groups
            .get(&group)
            .map(|st| {
                st.queues
                    .iter()
                    .flat_map(|(&k, q)| {
                        q.iter().filter_map(move |i| match i {
                            Item::Message(h) if !h.done => Some((k, h.life, h.seq)),
                            _ => None,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The next position of `group`'s total order this node delivers
    /// (`None` before it has seen a decision in this life).
    pub fn next_position(&self, group: GroupId) -> Option<u64> {
        self.groups.get(&group).and_then(|st| st.agreed.next)
    }

    /// How much of the total order this node keeps: positions decided and
    /// not yet delivered, and, as sequencer, decisions kept for members
    /// that may lack them plus decisions waiting to be logged or sent.
    pub fn order_held(&self) -> usize {
        self.groups
            .values()
            .map(|st| {
                st.agreed.by_pos.len()
                    + st.seq
                        .as_ref()
                        .map_or(0, |s| s.tail.len() + s.unsent.len() + s.persisting.len())
            })
            .sum()
    }

    // ---- internals ----

    /// Moves the core's outputs here, acting on its events, until
    /// nothing more happens.
    fn pump(&mut self, now: Instant) {
        self.now = now;
        loop {
            let events = &mut self.events;
            self.out.lift(
                CORE,
                &mut self.core,
                |m| m,
                |t| t,
                |e| {
                    events.push(e);
                    None
                },
            );
            let mut busy = !self.events.is_empty();
            for e in std::mem::take(&mut self.events) {
                self.on_core_event(e);
            }
            for (group, k, life, upto) in std::mem::take(&mut self.wanted) {
                self.core.expect(now, group, k, life, upto);
            }
            let groups: Vec<GroupId> = self.groups.keys().copied().collect();
            for g in groups {
                busy |= self.settle(now, g);
            }
            if !busy {
                break;
            }
        }
    }

    /// The total order's housekeeping after every call: the sequencer
    /// logs and sends its decisions and announces stability; a member
    /// tells the sequencer how far it has resolved the order. Returns
    /// whether the core was given something to do.
    fn settle(&mut self, now: Instant, group: GroupId) -> bool {
        let me = self.core.node();
        let my_life = self.core.life();
        let mut busy = false;
        let Some(st) = self.groups.get_mut(&group) else {
            return false;
        };
        let own = st.resolved();
        if let Some(seq) = st.seq.as_mut() {
            // A member's new life: whatever its old one left unordered
            // never will be.
            for &k in &st.members {
                let life = if k == me {
                    Some(my_life)
                } else {
                    self.core.life_of(group, k)
                };
                if let Some(life) = life
                    && seq.prefix.get(&k).is_none_or(|p| p.0 < life)
                {
                    seq.abandon(k, life, 0);
                }
            }
            // Persist before speaking.
            for r in seq.take_records(group) {
                let token = self.out.persist(&r);
                seq.logged(token, r);
            }
            while let Some(d) = seq.unsent.front() {
                match self.core.try_send(now, group, header::encode_decision(d)) {
                    Ok(n) => {
                        let d = seq.unsent.pop_front().expect("looked at");
                        if seq.resend > 0 {
                            seq.resend -= 1;
                            self.stats.decisions_resent += 1;
                        }
                        self.stats.decisions_sent += 1;
                        seq.sent(n, &d);
                        busy = true;
                    }
                    Err(_) => break,
                }
            }
            seq.heard(me, own);
            if seq.restabilise(&st.members) {
                seq.announced = seq.stable;
                let beacon = Self::beacon(seq, group, my_life);
                let others: Vec<NodeId> = st.members.iter().copied().filter(|&k| k != me).collect();
                self.stats.beacons_sent += 1;
                self.out.multicast(others, beacon);
            }
            if seq.stable > st.agreed.stable {
                st.agreed.stable = seq.stable;
                self.drain(group);
            }
            return busy || self.finish_settle(now, group);
        } else {
            // A new life of the sequencer knows nothing of what members
            // hold: it is told again.
            if let Some(life) = self.core.life_of(group, st.sequencer) {
                st.agreed.tell(life);
            }
            let resolved = st.resolved();
            if resolved > st.agreed.have_sent && st.holds_total(true) {
                self.send_have(group, resolved);
            }
        }
        self.finish_settle(now, group)
    }

    /// The member's `Have` timer, and `Ready` for an application the
    /// sequencer refused.
    fn finish_settle(&mut self, now: Instant, group: GroupId) -> bool {
        let Some(st) = self.groups.get_mut(&group) else {
            return false;
        };
        if st.seq.is_none()
            && !st.agreed.ticking
            // Until this life has learned where the order is (a member
            // that restarted when nothing was being decided would not
            // hear), while it holds agreed or safe messages, until what it
            // resolved is known stable, and until the
            // sequencer's life it last heard of has answered (a `Have`
            // may be lost; a beacon of that life says one arrived: a
            // restarted sequencer knows nothing of what members hold until
            // they tell it). A member's silence would hold stability back.
            && (st.agreed.next.is_none()
                || st.holds_total(false)
                || st.resolved() > st.agreed.heard_stable
                || st.agreed.answered < st.agreed.told)
        {
            st.agreed.ticking = true;
            self.out
                .set_timer_after(McastTimer::Order(group), now, self.config.announce_interval);
        }
        if st.app_blocked && self.app_room(group) {
            let st = self.groups.get_mut(&group).expect("there");
            st.app_blocked = false;
            self.out
                .event(OrderedEvent::Core(McastEvent::Ready { group }));
        }
        false
    }

    fn beacon(seq: &Sequencer, group: GroupId, life: Incarnation) -> McastMessage {
        McastMessage::Beacon {
            group,
            life,
            highest: seq.sent_highest,
            next: seq.sent_next,
            stable: seq.stable,
            prefix: seq.sent_prefix.clone(),
        }
    }

    fn send_have(&mut self, group: GroupId, upto: u64) {
        let life = self.core.life();
        let Some(st) = self.groups.get_mut(&group) else {
            return;
        };
        st.agreed.have_sent = upto;
        self.stats.haves_sent += 1;
        let lacking = st.undecided();
        self.out.send(
            st.sequencer,
            McastMessage::Have {
                group,
                life,
                upto,
                lacking,
            },
        );
    }

    /// Whether the application may send to `group` through the core: the
    /// sequencer keeps room in its ring for its decisions (else its own
    /// agreed messages could fill the ring, and their decisions, which
    /// free it, could not be sent).
    fn app_room(&self, group: GroupId) -> bool {
        let Some(st) = self.groups.get(&group) else {
            return true;
        };
        match &st.seq {
            Some(seq) => seq.unsent.is_empty() && self.core.room(group) > st.reserve,
            None => true,
        }
    }

    fn on_core_event(&mut self, e: McastEvent) {
        let me = self.core.node();
        match e {
            McastEvent::Delivered {
                group,
                from,
                life,
                seq,
                payload,
            } => self.on_delivered(group, from, life, seq, payload),
            McastEvent::Arrived {
                group,
                from,
                life,
                seq,
                payload,
            } => {
                // Only a reliable message is handed on ahead of its turn.
                if let Ok(Header::Message {
                    order: Order::Reliable,
                    payload,
                    ..
                }) = header::decode(payload)
                    && let Some(st) = self.groups.get_mut(&group)
                    && st.early.insert((from, life, seq))
                {
                    self.out.event(OrderedEvent::Delivered {
                        group,
                        from,
                        life,
                        seq,
                        order: Order::Reliable,
                        position: None,
                        payload,
                    });
                }
            }
            McastEvent::Missed {
                group,
                from,
                life,
                upto,
            } => {
                let Some(st) = self.groups.get_mut(&group) else {
                    return;
                };
                if let Some(seq) = st.seq.as_mut() {
                    // Never to be ordered: the members learn it.
                    seq.abandon(from, life, upto);
                }
                st.early
                    .retain(|&(k, l, n)| k != from || (l, n) > (life, upto));
                if from != me {
                    let newest = st.newest.entry(from).or_insert(life);
                    *newest = (*newest).max(life);
                }
                st.queues
                    .entry(from)
                    .or_default()
                    .push_back(Item::Missed { life, upto });
                self.drain(group);
            }
            other => self.out.event(OrderedEvent::Core(other)),
        }
    }

    fn on_delivered(
        &mut self,
        group: GroupId,
        from: NodeId,
        life: Incarnation,
        seq: u64,
        payload: Bytes,
    ) {
        let me = self.core.node();
        let Some(st) = self.groups.get_mut(&group) else {
            return;
        };
        if from != me {
            let newest = st.newest.entry(from).or_insert(life);
            *newest = (*newest).max(life);
        }
        let (order, past, payload, done) = match header::decode(payload.clone()) {
            Ok(Header::Decision(d)) => {
                if from == st.sequencer {
                    if let Some((first, last)) = st.agreed.decide(&d) {
                        self.out
                            .event(OrderedEvent::MissedAgreed { group, first, last });
                    }
                } else {
                    self.stats.ignored += 1;
                }
                (Order::Fifo, Vec::new(), Bytes::new(), true)
            }
            Ok(Header::Message {
                order,
                past,
                payload,
            }) => (order, past, payload, false),
            // Bytes no `Ordered` node wrote (a plain `Multicast` member):
            // delivered in FIFO order, as they came.
            Err(_) => (Order::Fifo, Vec::new(), payload, false),
        };
        if order.total()
            && !done
            && let Some(s) = st.seq.as_mut()
            && s.order((from, life, seq), order == Order::Safe)
        {
            self.stats.positions_given += 1;
        }
        let mut done = done;
        if order == Order::Reliable {
            if !st.early.remove(&(from, life, seq)) {
                self.out.event(OrderedEvent::Delivered {
                    group,
                    from,
                    life,
                    seq,
                    order,
                    position: None,
                    payload: payload.clone(),
                });
            }
            done = true;
        }
        let deps = past
            .into_iter()
            .map(|(k, life, upto)| (k, Progress { life, upto }))
            .collect();
        st.queues
            .entry(from)
            .or_default()
            .push_back(Item::Message(Held {
                life,
                seq,
                order,
                deps,
                payload,
                done,
            }));
        self.held_now += 1;
        self.held_most = self.held_most.max(self.held_now);
        self.drain(group);
    }

    /// Notes that `from`'s stream `life` is delivered (or lost) up to
    /// `upto` here, and lets the core acknowledge it.
    fn advance(
        core: &mut Multicast,
        now: Instant,
        st: &mut GroupState,
        (group, from): (GroupId, NodeId),
        life: Incarnation,
        upto: u64,
    ) {
        st.advance(from, life, upto);
        core.release(now, group, from, life, upto);
    }

    /// Skips the positions of the total order that will never be
    /// delivered here: no decision came for them (lost with a life of the
    /// sequencer, or before this node's), or their message will never
    /// come (lost with its sender's life). Reported as one range.
    fn skip_positions(&mut self, group: GroupId) {
        let me = self.core.node();
        let my_life = self.core.life();
        let Some(st) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(mut p) = st.agreed.next else {
            return;
        };
        let first = p;
        while p < st.agreed.known {
            let gone = match st.agreed.by_pos.get(&p) {
                None => true,
                Some(&id) => {
                    !st.holds(id)
                        && if id.0 == me {
                            id.1 < my_life
                        } else {
                            st.met(
                                id.0,
                                Progress {
                                    life: id.1,
                                    upto: id.2,
                                },
                            ) != Met::No
                        }
                }
            };
            if !gone {
                break;
            }
            st.agreed.pass(p);
            p += 1;
        }
        if p > first {
            self.out.event(OrderedEvent::MissedAgreed {
                group,
                first,
                last: p - 1,
            });
        }
    }

    /// What to do with the front of `from`'s queue, if anything yet.
    fn act(st: &GroupState, me: NodeId, my_life: Incarnation, from: NodeId) -> Option<Act> {
        let h = match st.queues.get(&from)?.front()? {
            Item::Missed { .. } => return Some(Act::Pass),
            Item::Message(h) if h.done => return Some(Act::Pass),
            Item::Message(h) => h,
        };
        let met = || {
            h.deps.iter().all(|&(k, need)| {
                k == me && need.life <= my_life || k != me && st.met(k, need) != Met::No
            })
        };
        if !h.order.total() {
            return (h.order != Order::Causal || met()).then_some(Act::Deliver(None));
        }
        let id = (from, h.life, h.seq);
        match st.agreed.position(id) {
            Some(p) => (Some(p) == st.agreed.next
                && met()
                && (h.order == Order::Agreed || st.agreed.stable >= p))
                .then_some(Act::Deliver(Some(p))),
            None => st.agreed.covered(id).then_some(Act::Drop),
        }
    }

    /// Delivers every queued message whose turn has come, until none has.
    fn drain(&mut self, group: GroupId) {
        let me = self.core.node();
        let my_life = self.core.life();
        // A member's newer life may be known to the core without a single
        // message of it delivered (an announcement, an answer to a NACK).
        if let Some(st) = self.groups.get_mut(&group) {
            for &k in self.core.members(group) {
                if let Some(life) = self.core.life_of(group, k) {
                    let newest = st.newest.entry(k).or_insert(life);
                    *newest = (*newest).max(life);
                }
            }
        }
        loop {
            self.skip_positions(group);
            let Some(st) = self.groups.get_mut(&group) else {
                return;
            };
            let ready = st
                .queues
                .keys()
                .find_map(|&from| Self::act(st, me, my_life, from).map(|a| (from, a)));
            let Some((from, act)) = ready else {
                self.want(group);
                return;
            };
            let item = st
                .queues
                .get_mut(&from)
                .and_then(VecDeque::pop_front)
                .expect("the queue's front was just looked at");
            let h = match item {
                Item::Missed { life, upto } => {
                    Self::advance(&mut self.core, self.now, st, (group, from), life, upto);
                    self.out.event(OrderedEvent::Core(McastEvent::Missed {
                        group,
                        from,
                        life,
                        upto,
                    }));
                    continue;
                }
                Item::Message(h) => h,
            };
            self.held_now -= 1;
            match act {
                Act::Pass => {
                    Self::advance(&mut self.core, self.now, st, (group, from), h.life, h.seq);
                }
                Act::Drop => {
                    // Ordered before this node's time: its position was
                    // reported missed, and so is the message.
                    Self::advance(&mut self.core, self.now, st, (group, from), h.life, h.seq);
                    self.out.event(OrderedEvent::Core(McastEvent::Missed {
                        group,
                        from,
                        life: h.life,
                        upto: h.seq,
                    }));
                }
                Act::Deliver(position) => {
                    // Whatever of its past can never come is reported
                    // first: the application hears of every hole.
                    for &(k, need) in &h.deps {
                        if k != me && st.met(k, need) == Met::Lost {
                            st.advance(k, need.life, need.upto);
                            self.out.event(OrderedEvent::Core(McastEvent::Missed {
                                group,
                                from: k,
                                life: need.life,
                                upto: need.upto,
                            }));
                        }
                    }
                    if let Some(p) = position {
                        st.agreed.pass(p);
                    }
                    Self::advance(&mut self.core, self.now, st, (group, from), h.life, h.seq);
                    self.out.event(OrderedEvent::Delivered {
                        group,
                        from,
                        life: h.life,
                        seq: h.seq,
                        order: h.order,
                        position,
                        payload: h.payload,
                    });
                }
            }
        }
    }

    /// Notes what each sender's first held-back message waits for, and
    /// the message at the next position of the total order if it is not
    /// here: the core asks its sender (and learns so of a restarted
    /// sender's new life, so that a message lost with the old one is
    /// reported missed instead of awaited for ever).
    fn want(&mut self, group: GroupId) {
        let me = self.core.node();
        let Some(st) = self.groups.get(&group) else {
            return;
        };
        if let Some(&id) = st.agreed.next.and_then(|p| st.agreed.by_pos.get(&p))
            && id.0 != me
            && !st.holds(id)
        {
            self.wanted.push((group, id.0, id.1, id.2));
        }
        for q in st.queues.values() {
            let Some(Item::Message(h)) = q.front() else {
                continue;
            };
            for &(k, need) in &h.deps {
                if k != me && st.met(k, need) == Met::No {
                    self.wanted.push((group, k, need.life, need.upto));
                }
            }
        }
    }

    /// The causal past of a message sent now: what this node delivered of
    /// every other member's stream, in the member's newest life and in the
    /// one before it (whose messages a receiver that missed them must be
    /// told of, not pass over silently).
    fn past(&self, group: GroupId) -> Vec<MessageId> {
        let me = self.core.node();
        let Some(st) = self.groups.get(&group) else {
            return Vec::new();
        };
        let mut past = Vec::new();
        for (&k, &p) in &st.progress {
            if k == me {
                continue;
            }
            if let Some((&(_, life), &upto)) =
                st.old.range((k, Incarnation(0))..(k, p.life)).next_back()
            {
                past.push((k, life, upto));
            }
            if p.upto > 0 {
                past.push((k, p.life, p.upto));
            }
        }
        past
    }

    /// An unreliable send: one multicast datagram, delivered here first.
    fn send_datagram(&mut self, group: GroupId, token: u64, payload: Bytes) {
        let me = self.core.node();
        let life = self.core.life();
        let Some(st) = self.groups.get_mut(&group) else {
            self.out.event(OrderedEvent::Core(McastEvent::Refused {
                group,
                token,
                why: Refusal::UnknownGroup,
            }));
            return;
        };
        if payload.len() > st.max_payload {
            self.out.event(OrderedEvent::Core(McastEvent::Refused {
                group,
                token,
                why: Refusal::TooLarge {
                    len: payload.len(),
                    max: st.max_payload,
                },
            }));
            return;
        }
        st.datagram_sent += 1;
        let number = st.datagram_sent;
        let others: Vec<NodeId> = st.members.iter().copied().filter(|&k| k != me).collect();
        self.stats.datagrams_sent += 1;
        self.out.event(OrderedEvent::Delivered {
            group,
            from: me,
            life,
            seq: number,
            order: Order::Unreliable,
            position: None,
            payload: payload.clone(),
        });
        self.out.event(OrderedEvent::Core(McastEvent::Sent {
            group,
            token,
            seq: number,
        }));
        self.out.multicast(
            others,
            McastMessage::Datagram {
                group,
                life,
                number,
                payload,
            },
        );
    }

    /// One of this layer's own messages, from a member.
    fn on_layer_message(&mut self, now: Instant, from: NodeId, msg: McastMessage) {
        let me = self.core.node();
        let my_life = self.core.life();
        let group = msg.group();
        let Some(st) = self
            .groups
            .get_mut(&group)
            .filter(|st| from != me && st.members.binary_search(&from).is_ok())
        else {
            self.stats.ignored += 1;
            return;
        };
        match msg {
            McastMessage::Datagram {
                life,
                number,
                payload,
                ..
            } => {
                if payload.len() > st.max_payload {
                    self.stats.ignored += 1;
                    return;
                }
                let (l, seen) = st.datagrams.entry(from).or_insert((life, VecDeque::new()));
                if life < *l {
                    self.stats.ignored += 1;
                    return;
                }
                if life > *l {
                    *l = life;
                    seen.clear();
                }
                if seen.contains(&number) {
                    self.stats.datagram_duplicates += 1;
                    return;
                }
                if seen.len() >= DATAGRAM_MEMORY {
                    seen.pop_front();
                }
                seen.push_back(number);
                self.out.event(OrderedEvent::Delivered {
                    group,
                    from,
                    life,
                    seq: number,
                    order: Order::Unreliable,
                    position: None,
                    payload,
                });
            }
            McastMessage::Have { upto, lacking, .. } => {
                let Some(seq) = st.seq.as_mut() else {
                    self.stats.ignored += 1;
                    return;
                };
                seq.heard(from, upto);
                // Messages a member holds that this sequencer has not
                // ordered: asked of their senders, which repair them, or
                // answer with a new life (and what the old one left
                // unordered is then abandoned).
                for (k, life, n) in lacking {
                    if k != me && !seq.held((k, life, n)) {
                        self.core.expect(now, group, k, life, n);
                    }
                }
                // The answer makes good a lost beacon, and tells a member
                // that restarted how far the decisions go.
                self.stats.beacons_sent += 1;
                let beacon = Self::beacon(seq, group, my_life);
                self.out.send(from, beacon);
            }
            McastMessage::Beacon {
                life,
                highest,
                next,
                stable,
                prefix,
                ..
            } => {
                if from != st.sequencer {
                    self.stats.ignored += 1;
                    return;
                }
                st.agreed.tell(life);
                st.agreed.answered = st.agreed.answered.max(life);
                if life == st.agreed.told {
                    st.agreed.heard_stable = st.agreed.heard_stable.max(stable);
                }
                // Never beyond what was decided: a position is stable only
                // once this node could have resolved it.
                st.agreed.stable = st
                    .agreed
                    .stable
                    .max(stable.min(st.agreed.known.saturating_sub(1)));
                let caught_up = self.core.life_of(group, from) == Some(life)
                    && self.core.next_from(group, from) > highest;
                if caught_up {
                    // Every decision up to `next` was in the sequencer's
                    // stream up to `highest`, all of it taken here: what
                    // this life lacks of them it will never get.
                    if let Some((first, last)) = st.agreed.start(next) {
                        self.out
                            .event(OrderedEvent::MissedAgreed { group, first, last });
                    }
                    st.agreed.learn_prefix(&prefix);
                } else {
                    self.core.expect(now, group, from, life, highest);
                }
                self.drain(group);
            }
            _ => self.stats.ignored += 1,
        }
    }
}

impl std::fmt::Debug for Ordered {
    /// Per group: what is delivered of each member's stream, the newest
    /// life heard of, what waits first in each sender's queue, and the
    /// total order's state.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Ordered");
        d.field("node", &self.core.node())
            .field("held", &self.held_now);
        for (g, st) in &self.groups {
            let fronts: Vec<_> = st
                .queues
                .iter()
                .map(|(k, q)| (k, q.len(), q.front()))
                .collect();
            d.field(
                &format!("{g}"),
                &(&st.progress, &st.newest, fronts, &st.agreed, &st.seq),
            );
        }
        d.finish()
    }
}

impl Protocol for Ordered {
    type Message = McastMessage;
    type Input = OrderedInput;
    type Event = OrderedEvent;
    type Timer = McastTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: McastMessage) {
        match msg {
            McastMessage::Datagram { .. }
            | McastMessage::Have { .. }
            | McastMessage::Beacon { .. } => {
                if msg.numbers_in_range() {
                    self.on_layer_message(now, from, msg);
                } else {
                    self.stats.ignored += 1;
                }
            }
            msg => self.core.handle_message(now, from, msg),
        }
        self.pump(now);
    }

    fn handle_input(&mut self, now: Instant, input: OrderedInput) {
        let OrderedInput::Send {
            group,
            token,
            payload,
            order,
        } = input;
        if order == Order::Unreliable {
            self.send_datagram(group, token, payload);
            self.pump(now);
            return;
        }
        if !self.app_room(group) {
            self.stats.refused_for_decisions += 1;
            if let Some(st) = self.groups.get_mut(&group) {
                st.app_blocked = true;
            }
            self.out.event(OrderedEvent::Core(McastEvent::Refused {
                group,
                token,
                why: Refusal::HistoryFull,
            }));
            return;
        }
        let past = if order.carries_past() {
            self.past(group)
        } else {
            Vec::new()
        };
        let payload = header::encode_message(order, &past, &payload);
        self.core.handle_input(
            now,
            McastInput::Send {
                group,
                token,
                payload,
            },
        );
        self.pump(now);
    }

    fn handle_timer(&mut self, now: Instant, timer: McastTimer) {
        if let McastTimer::Order(group) = timer {
            self.out.timer_fired();
            if let Some(st) = self.groups.get_mut(&group) {
                st.agreed.ticking = false;
                if st.seq.is_none() {
                    let resolved = st.resolved();
                    self.send_have(group, resolved);
                }
            }
        } else {
            self.core.handle_timer(now, timer);
        }
        self.pump(now);
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        match self.out.persisted(token) {
            Persisted::Own(t) => {
                for st in self.groups.values_mut() {
                    if let Some(seq) = st.seq.as_mut()
                        && let Some(snapshot) = seq.durable(t)
                        && snapshot
                    {
                        st.snapshot = Some(t);
                    }
                }
                // The log is shared by the groups: compacted up to the
                // oldest snapshot any of them still needs.
                let snapshots: Vec<Option<PersistToken>> = self
                    .groups
                    .values()
                    .filter(|st| st.seq.is_some())
                    .map(|st| st.snapshot)
                    .collect();
                if let Some(Some(oldest)) = snapshots.iter().min()
                    && snapshots.iter().all(Option::is_some)
                {
                    self.out.compact(*oldest);
                    for st in self.groups.values_mut() {
                        if st.snapshot == Some(*oldest) {
                            st.snapshot = None;
                        }
                    }
                }
            }
            Persisted::Inner { token, .. } => self.core.handle_persisted(now, token),
        }
        self.pump(now);
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        let mut c = self.out.counters();
        c += self.core.counters();
        c
    }
}

impl Recover for Ordered {
    type Config = McastConfig;

    /// Builds a node. Only a group's sequencer persists (its decisions):
    /// it rebuilds its numbering from its records, and multicasts again
    /// the decisions not known to be held by every member.
    fn recover(config: &McastConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let out = Outbox::recovered(&ctx);
        let records: Vec<OrderRecord> = ctx.read_beside(&[CORE])?;
        let now = ctx.now;
        let me = ctx.node;
        let mut core = Multicast::recover(config, ctx.component(CORE))?;
        // What waits here for its turn is not acknowledged, so each
        // sender's ring bounds it.
        core.hold_acks();
        core.report_arrivals();
        let groups = config
            .groups
            .iter()
            .cloned()
            .map(GroupConfig::normalized)
            .filter(|g| g.contains(me))
            .map(|g| (g.id, GroupState::new(&g, me, &records)))
            .collect();
        let mut node = Ordered {
            core,
            groups,
            out,
            config: config.clone(),
            held_most: 0,
            held_now: 0,
            events: Vec::new(),
            wanted: Vec::new(),
            now,
            stats: OrderedStats::default(),
        };
        node.pump(now);
        Ok(node)
    }
}

//! [`Ordered`]: FIFO or causal delivery, message by message, over the
//! reliable-multicast core.
//!
//! [`Multicast`] delivers each sender's messages in the order it sent
//! them, and nothing more: if A's message made B send one of its own, a
//! third member may get B's before A's. `Ordered` embeds a `Multicast`
//! and adds **causal order** for the messages sent with
//! [`Order::Causal`]: each carries its sender's causal past (for every
//! other member, the last of its messages the sender had delivered: one
//! vector timestamp, in the sender's lives and stream numbers), and a
//! receiver holds it back until it has delivered that past. Messages
//! sent with [`Order::Fifo`] carry no timestamp and are delivered in
//! their sender's order only.
//!
//! A receiver delivers each sender's messages in that sender's order
//! whatever their [`Order`]: a causal message held back holds back the
//! sender's later ones. A dependency on messages that will never come
//! (the core reported them [`Missed`](crate::McastEvent::Missed), or
//! their sender has restarted since) is taken as met, so a restart never
//! holds a member back for ever; the application was told of the loss.
//!
//! Nothing new crosses the network: the timestamp rides inside the
//! core's payload, as a small header before the application's bytes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::{
    Component, Counters, Incarnation, NodeId, Outbox, Output, PersistToken, Protocol, Recover,
    RecoveryContext, RecoveryError,
};

use crate::core::{McastConfig, McastEvent, McastInput, McastTimer, Multicast};
use crate::group::GroupId;
use crate::message::McastMessage;

/// The embedded core's component number.
const CORE: Component = Component(1);

/// The version of the ordering header.
const HEADER_VERSION: u8 = 1;

/// How a message is delivered at the other members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Order {
    /// In its sender's order.
    Fifo,
    /// After everything its sender had delivered when it sent it (and in
    /// its sender's order).
    Causal,
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
        /// Its number in the sender's stream.
        seq: u64,
        /// How it was sent.
        order: Order,
        /// The application's bytes.
        payload: Bytes,
    },
    /// Any other event of the core: `Sent`, `Refused`, `Ready`, `Missed`
    /// (never `Delivered`). A `Missed` comes in its sender's stream order:
    /// after the messages before it are delivered.
    Core(McastEvent),
}

/// The last message of a sender's stream delivered (or known lost) here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    life: Incarnation,
    /// Delivered, or reported missed, up to here.
    upto: u64,
}

/// A message waiting for its causal past.
#[derive(Debug)]
struct Held {
    life: Incarnation,
    seq: u64,
    order: Order,
    deps: Vec<(NodeId, Progress)>,
    payload: Bytes,
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

#[derive(Debug, Default)]
struct GroupState {
    progress: BTreeMap<NodeId, Progress>,
    /// The newest life of each member the core has heard from.
    newest: BTreeMap<NodeId, Incarnation>,
    /// Per sender, what is not yet passed on, in its order.
    queues: BTreeMap<NodeId, VecDeque<Item>>,
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
    fn advance(&mut self, from: NodeId, life: Incarnation, upto: u64) {
        let p = self.progress.entry(from).or_default();
        if life > p.life {
            *p = Progress { life, upto };
        } else if life == p.life {
            p.upto = p.upto.max(upto);
        }
    }

    /// Whether `k`'s messages up to `need` are delivered here, or lost.
    fn met(&self, k: NodeId, need: Progress) -> Met {
        let have = self.progress.get(&k).copied().unwrap_or_default();
        if have.life > need.life || (have.life == need.life && have.upto >= need.upto) {
            return Met::Yes;
        }
        let newer = self.newest.get(&k).is_some_and(|&n| n > need.life);
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
}

/// FIFO and causal multicast: see the [module docs](self).
pub struct Ordered {
    core: Multicast,
    groups: BTreeMap<GroupId, GroupState>,
    out: Outbox<Ordered>,
    /// The time of the call being handled.
    now: Instant,
    /// Messages held back for their causal past, at most.
    held_most: usize,
    held_now: usize,
    events: Vec<McastEvent>,
    /// Messages held back need these (group, member, life, number):
    /// the core is told, so that it asks for them.
    wanted: Vec<(GroupId, NodeId, Incarnation, u64)>,
}

impl Ordered {
    // ---- getters ----

    /// The embedded reliable-multicast core.
    pub fn core(&self) -> &Multicast {
        &self.core
    }

    /// Messages waiting for their causal past now.
    pub fn held(&self) -> usize {
        self.held_now
    }

    /// The most that ever waited at once.
    pub fn held_most(&self) -> usize {
        self.held_most
    }

    // ---- internals ----

    /// Moves the core's outputs here, taking its events for ordering, and
    /// tells the core what held-back messages wait for.
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
            if self.events.is_empty() {
                break;
            }
            for e in std::mem::take(&mut self.events) {
                self.on_core_event(e);
            }
            for (group, k, life, upto) in std::mem::take(&mut self.wanted) {
                self.core.expect(now, group, k, life, upto);
            }
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
            } => {
                // Bytes no `Ordered` node wrote (a plain `Multicast`
                // member): delivered in FIFO order, as they came.
                let (order, deps, payload) =
                    decode(payload.clone()).unwrap_or((Order::Fifo, Vec::new(), payload));
                if from == me {
                    // Our own: its causal past is ours, delivered already.
                    self.deliver(group, from, life, seq, order, payload);
                    return;
                }
                let st = self.groups.entry(group).or_default();
                let newest = st.newest.entry(from).or_insert(life);
                *newest = (*newest).max(life);
                st.queues
                    .entry(from)
                    .or_default()
                    .push_back(Item::Message(Held {
                        life,
                        seq,
                        order,
                        deps,
                        payload,
                    }));
                self.held_now += 1;
                self.held_most = self.held_most.max(self.held_now);
                self.drain(group);
            }
            McastEvent::Missed {
                group,
                from,
                life,
                upto,
            } => {
                let st = self.groups.entry(group).or_default();
                let newest = st.newest.entry(from).or_insert(life);
                *newest = (*newest).max(life);
                st.queues
                    .entry(from)
                    .or_default()
                    .push_back(Item::Missed { life, upto });
                self.drain(group);
            }
            other => self.out.event(OrderedEvent::Core(other)),
        }
    }

    /// Notes that `from`'s stream `life` is delivered (or lost) up to
    /// `upto` here.
    fn advance(&mut self, group: GroupId, from: NodeId, life: Incarnation, upto: u64) {
        self.groups
            .entry(group)
            .or_default()
            .advance(from, life, upto);
    }

    fn deliver(
        &mut self,
        group: GroupId,
        from: NodeId,
        life: Incarnation,
        seq: u64,
        order: Order,
        payload: Bytes,
    ) {
        self.advance(group, from, life, seq);
        self.core.release(self.now, group, from, life, seq);
        self.out.event(OrderedEvent::Delivered {
            group,
            from,
            life,
            seq,
            order,
            payload,
        });
    }

    /// Delivers every queued message whose causal past is delivered, until
    /// none is.
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
            let Some(st) = self.groups.get_mut(&group) else {
                return;
            };
            let ready = st.queues.iter().find_map(|(&from, q)| {
                let Item::Message(h) = q.front()? else {
                    return Some(from);
                };
                let met = h.deps.iter().all(|&(k, need)| {
                    k == me && need.life <= my_life || st.met(k, need) != Met::No
                });
                met.then_some(from)
            });
            let Some(from) = ready else {
                self.want(group);
                return;
            };
            match st
                .queues
                .get_mut(&from)
                .and_then(VecDeque::pop_front)
                .expect("the queue's front was just looked at")
            {
                Item::Message(h) => {
                    self.held_now -= 1;
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
                    self.deliver(group, from, h.life, h.seq, h.order, h.payload);
                }
                Item::Missed { life, upto } => {
                    self.advance(group, from, life, upto);
                    self.out.event(OrderedEvent::Core(McastEvent::Missed {
                        group,
                        from,
                        life,
                        upto,
                    }));
                }
            }
        }
    }

    /// Notes what each sender's first held-back message waits for.
    fn want(&mut self, group: GroupId) {
        let me = self.core.node();
        let Some(st) = self.groups.get(&group) else {
            return;
        };
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
    /// every other member's stream.
    fn past(&self, group: GroupId) -> Vec<(NodeId, Progress)> {
        let me = self.core.node();
        self.groups
            .get(&group)
            .map(|st| {
                st.progress
                    .iter()
                    .filter(|&(&k, p)| k != me && p.upto > 0)
                    .map(|(&k, &p)| (k, p))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Ordered {
    /// Per group: what is delivered of each member's stream, the newest
    /// life heard of, and what waits first in each sender's queue.
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
            d.field(&format!("{g}"), &(&st.progress, &st.newest, fronts));
        }
        d.finish()
    }
}

/// The header and the application's bytes, as one core payload.
fn encode(order: Order, deps: &[(NodeId, Progress)], payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(6 + deps.len() * 24 + payload.len());
    b.put_u8(HEADER_VERSION);
    b.put_u8(match order {
        Order::Fifo => 0,
        Order::Causal => 1,
    });
    b.put_u32_le(deps.len() as u32);
    for (k, p) in deps {
        b.put_u64_le(k.0);
        b.put_u64_le(p.life.0);
        b.put_u64_le(p.upto);
    }
    b.put_slice(payload);
    b.freeze()
}

/// A causal past: for each other member, how far its stream was delivered.
type Past = Vec<(NodeId, Progress)>;

/// The order, causal past and application bytes of a core payload; `None`
/// for bytes no `Ordered` node wrote.
fn decode(mut b: Bytes) -> Option<(Order, Past, Bytes)> {
    if b.remaining() < 6 || b.get_u8() != HEADER_VERSION {
        return None;
    }
    let order = match b.get_u8() {
        0 => Order::Fifo,
        1 => Order::Causal,
        _ => return None,
    };
    let n = b.get_u32_le() as usize;
    if b.remaining() / 24 < n {
        return None;
    }
    let deps = (0..n)
        .map(|_| {
            let k = NodeId(b.get_u64_le());
            let life = Incarnation(b.get_u64_le());
            (
                k,
                Progress {
                    life,
                    upto: b.get_u64_le(),
                },
            )
        })
        .collect();
    Some((order, deps, b))
}

impl Protocol for Ordered {
    type Message = McastMessage;
    type Input = OrderedInput;
    type Event = OrderedEvent;
    type Timer = McastTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: McastMessage) {
        self.core.handle_message(now, from, msg);
        self.pump(now);
    }

    fn handle_input(&mut self, now: Instant, input: OrderedInput) {
        let OrderedInput::Send {
            group,
            token,
            payload,
            order,
        } = input;
        let deps = match order {
            Order::Fifo => Vec::new(),
            Order::Causal => self.past(group),
        };
        let payload = encode(order, &deps, &payload);
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
        self.core.handle_timer(now, timer);
        self.pump(now);
    }

    fn handle_persisted(&mut self, _now: Instant, _token: PersistToken) {}

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

    fn recover(config: &McastConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let out = Outbox::recovered(&ctx);
        let ctx_now = ctx.now;
        let mut core = Multicast::recover(config, ctx)?;
        // What waits here for its causal past is not acknowledged, so
        // each sender's ring bounds it.
        core.hold_acks();
        Ok(Ordered {
            core,
            groups: BTreeMap::new(),
            out,
            held_most: 0,
            held_now: 0,
            events: Vec::new(),
            wanted: Vec::new(),
            now: ctx_now,
        })
    }
}

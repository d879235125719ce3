//! Reliable multicast on the command line: the multicast scenario of
//! `ft demo` and `ft sim multicast`.
//!
//! The members sit at the leaves of a tree of routers (ten to a router,
//! one link delay per hop), so that members near each other hear each
//! other first: what SRM's distance-scaled timers rely on. Every run is
//! checked after every step of the simulator (no duplicate, no invented
//! delivery, FIFO per sender, causal order when asked); at the end every
//! message sent must have been delivered at every member, or the command
//! fails.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use ft_core::{FrameCodec, Incarnation, NodeId, Protocol};
use ft_multicast::{
    Feedback, GroupConfig, GroupId, McastConfig, McastEvent, McastMessage, Ordered, OrderedEvent,
    OrderedInput, Srm,
};
use ft_sim::{FaultPlan, Observed, Sim, SimConfig, World};

use crate::bounds;

const G: GroupId = GroupId(1);
const MS: Duration = Duration::from_millis(1);
/// Each sender sends one message every `SPACING`.
const SPACING: Duration = Duration::from_millis(10);
/// The first sends, once SRM's session messages have measured distances.
const START: Duration = Duration::from_secs(1);
/// One link of the router tree.
const HOP: Duration = Duration::from_millis(2);
/// Receivers (or routers) under one router.
const FANOUT: u64 = 10;
/// Every sender's history ring.
const HISTORY: usize = 1024;
/// How long a run may go on after the last send for the last repairs
/// before a message still missing somewhere is a failure.
const GRACE: Duration = Duration::from_secs(30);
/// The most receivers.
const MAX_RECEIVERS: u64 = 1000;
/// The most messages per sender.
const MAX_MESSAGES: u64 = 10_000;
/// A run's work: senders × messages × members stays within it, and with
/// NACK feedback, whose requests and repairs go to every member, that
/// times members / 100 (measured: 100 messages to 1000 receivers at 5%
/// loss take about 15 s of a release build with NACKs, 1 to 2 s with ACKs
/// or the tree).
const BUDGET: u64 = 2_000_000;

/// How receivers feed back to senders (`--strategy`). One value per
/// [`Feedback`] of ft-multicast, each mapped to its group by
/// [`Strategy::group`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Strategy {
    /// Every receiver acknowledges to the sender and asks it for gaps.
    Ack,
    /// SRM-style: receivers multicast requests for gaps after random
    /// delays and hold theirs back on hearing one first; any holder
    /// repairs, likewise.
    Nack,
    /// Hierarchical: receivers acknowledge to and are repaired by their
    /// parent in a tree of coordinators.
    Tree,
    /// SRM-style, with two Reed–Solomon parity packets after every eight
    /// messages, which rebuild most losses with no feedback at all.
    NackFec,
}

impl Strategy {
    /// The group of `members` with this feedback.
    fn group(self, members: Vec<NodeId>) -> GroupConfig {
        let n = members.len();
        let group = GroupConfig::new(G, members).with_history(HISTORY);
        match self {
            Strategy::Ack => group,
            Strategy::Nack | Strategy::NackFec => {
                let group = group.with_feedback(Feedback::Nack(Srm {
                    // Every member multicasts a session message per
                    // interval: the interval grows with the group so
                    // sessions cost each member a fixed share (as SRM
                    // does, and the implosion bench).
                    session_interval: Duration::from_millis(200) * (n / 100).max(1) as u32,
                    ..Srm::default()
                }));
                if self == Strategy::NackFec {
                    group.with_fec(ft_multicast::Fec::proactive(8, 2))
                } else {
                    group
                }
            }
            Strategy::Tree => group.with_feedback(Feedback::Tree(ft_multicast::Tree::default())),
        }
    }
}

/// The delivery order asked of the `Ordered` layer (`--order`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Order {
    /// Each sender's messages in its order.
    Fifo,
    /// After everything their sender had delivered when it sent them.
    Causal,
    /// Causal, and at the same position of one total order everywhere
    /// (n0 is the sequencer).
    Agreed,
    /// Agreed, and delivered only once every member holds it.
    Safe,
}

impl Order {
    fn order(self) -> ft_multicast::Order {
        match self {
            Order::Fifo => ft_multicast::Order::Fifo,
            Order::Causal => ft_multicast::Order::Causal,
            Order::Agreed => ft_multicast::Order::Agreed,
            Order::Safe => ft_multicast::Order::Safe,
        }
    }

    /// What the checker checks beyond FIFO, no duplicate and no invented
    /// delivery.
    fn checked(self) -> &'static str {
        match self {
            Order::Fifo => "",
            Order::Causal => ", causal order",
            Order::Agreed | Order::Safe => ", causal order, one total order",
        }
    }
}

/// What sender `s` sends as its `k`-th message (its token).
fn payload(s: u64, k: u64) -> Bytes {
    let mut p = s.to_le_bytes().to_vec();
    p.extend_from_slice(&k.to_le_bytes());
    Bytes::from(p)
}

/// Parses a loss probability: 0 to 0.5.
fn loss(s: &str) -> Result<f64, String> {
    let p = bounds::probability(s)?;
    if p <= 0.5 {
        Ok(p)
    } else {
        Err("a loss must be at least 0 and at most 0.5".to_string())
    }
}

/// Options of `ft sim multicast`.
#[derive(Args, Debug, Clone)]
pub(crate) struct SimMcastArgs {
    /// How receivers feed back to senders.
    #[arg(long, value_enum, default_value_t = Strategy::Nack)]
    strategy: Strategy,
    /// Receivers besides n0: 1 to 1000, others are refused.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=MAX_RECEIVERS))]
    receivers: u64,
    /// How many members send (n0, n1, ...): 1 to the members; more are
    /// clamped, with a note.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    senders: u64,
    /// Messages per sender, one every 10 ms: 0 to 10000, and at most
    /// 2000000 / (senders × members), over members / 100 more with NACK
    /// feedback; more are clamped, with a note.
    #[arg(long, default_value_t = 100)]
    messages: u64,
    /// Probability that the network loses a copy of a message, each on its
    /// own, until the last send: 0 to 0.5, others are refused.
    #[arg(long, default_value_t = 0.01, value_parser = loss)]
    loss: f64,
    /// The delivery order of every message.
    #[arg(long, value_enum, default_value_t = Order::Fifo)]
    order: Order,
    /// Lose n0's first copy of its message K on the link to the first
    /// router: receivers n1..n10 lose it (0: none). 0 to --messages; more
    /// are clamped, with a note.
    #[arg(long, value_name = "K", default_value_t = 0)]
    drop_message: u64,
    /// Seed of the run: any number from 0 to 18446744073709551615.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl SimMcastArgs {
    /// Clamps the senders to the members, the messages to the budget and
    /// the dropped message to the messages, with a note.
    pub(crate) fn clamp(&mut self) {
        let members = self.receivers + 1;
        self.senders = bounds::clamp("senders", self.senders, 1..=members, "the members");
        let max = max_messages(self.strategy, self.senders, members);
        let why = match self.strategy {
            _ if max == MAX_MESSAGES => "",
            Strategy::Nack | Strategy::NackFec => {
                "senders × messages × members × members / 100 is at most 2000000"
            }
            Strategy::Ack | Strategy::Tree => "senders × messages × members is at most 2000000",
        };
        self.messages = bounds::clamp("messages", self.messages, 0..=max, why);
        self.drop_message = bounds::clamp(
            "drop-message",
            self.drop_message,
            0..=self.messages,
            "the messages",
        );
    }

    fn members(&self) -> usize {
        self.receivers as usize + 1
    }

    fn last_send(&self) -> Duration {
        START + SPACING * self.messages as u32 + MS * self.senders as u32
    }

    fn reproduce(&self) -> String {
        format!(
            "ft sim multicast --strategy {} --receivers {} --senders {} --messages {} --loss {} --order {}{} --seed {}",
            crate::value_name(self.strategy),
            self.receivers,
            self.senders,
            self.messages,
            self.loss,
            crate::value_name(self.order),
            if self.drop_message > 0 {
                format!(" --drop-message {}", self.drop_message)
            } else {
                String::new()
            },
            self.seed
        )
    }
}

/// The most messages per sender that `senders` of `members` send with
/// `strategy` within the [`BUDGET`].
fn max_messages(strategy: Strategy, senders: u64, members: u64) -> u64 {
    let per_message = match strategy {
        Strategy::Nack | Strategy::NackFec => members * (members / 100).max(1),
        Strategy::Ack | Strategy::Tree => members,
    };
    (BUDGET / (senders * per_message).max(1)).min(MAX_MESSAGES)
}

/// The routers between the members: n0 at the root, the receivers at the
/// leaves, ten to a router at every level.
#[derive(Clone, Copy)]
struct Routers {
    levels: u32,
}

impl Routers {
    fn new(receivers: u64) -> Self {
        let mut levels = 1;
        while FANOUT.pow(levels) < receivers {
            levels += 1;
        }
        Routers { levels }
    }

    /// Links a packet from `a` to `b` crosses.
    fn hops(self, a: NodeId, b: NodeId) -> u32 {
        let mut hops = 0;
        for level in 0..self.levels {
            // The link from a receiver's subtree at `level` to its router.
            let link = |n: NodeId| (n.0 != 0).then(|| (n.0 - 1) / FANOUT.pow(level));
            let (up, down) = (link(a), link(b));
            if up.is_some() && up == down {
                break;
            }
            hops += u32::from(up.is_some()) + u32::from(down.is_some());
        }
        hops
    }
}

/// A request or repair seen on the wire: when, by whom, what.
struct Sent {
    at: Duration,
    by: NodeId,
    what: String,
}

/// What the link model saw.
#[derive(Default)]
struct Wire {
    /// The receivers that lost the dropped message's first copy.
    lost_dropped: BTreeSet<NodeId>,
    /// When the dropped message was first sent.
    dropped_at: Option<Duration>,
    /// With the detail asked for: requests and repairs, one per multicast.
    requests: Vec<Sent>,
    repairs: Vec<Sent>,
}

/// A sender in one of its lives.
type Stream = (NodeId, Incarnation);

/// The invariants, checked after every step, and the deliveries counted.
#[derive(Default)]
struct Checker {
    seen: usize,
    causal: bool,
    /// Agreed or safe: n0, the sequencer, numbers its decisions among its
    /// messages.
    total: bool,
    /// What each sender delivered as its own (life, seq).
    sent: BTreeMap<(NodeId, Incarnation, u64), Bytes>,
    /// Per (member, its life, sender, sender's life): the last message
    /// delivered and the last reported missed.
    streams: BTreeMap<(NodeId, Incarnation, NodeId, Incarnation), (u64, u64)>,
    /// Per causal message, what its sender had delivered when it sent it.
    past: BTreeMap<(NodeId, Incarnation, u64), Vec<(Stream, u64)>>,
    /// Per member life: what it delivered of each sender's life.
    upto: BTreeMap<Stream, BTreeMap<Stream, u64>>,
    deliveries: u64,
    missed: u64,
    refused: u64,
    causal_checked: u64,
    /// Agreed or safe: the message at each position of the total order.
    positions: BTreeMap<u64, (NodeId, Incarnation, u64)>,
    /// Per member life: the last position it delivered.
    at: BTreeMap<Stream, u64>,
    total_checked: u64,
}

impl Checker {
    fn check(&mut self, w: &World<Ordered>) -> Result<(), String> {
        self.take(&w.events()[self.seen..])?;
        self.seen = w.events().len();
        Ok(())
    }

    /// Checks `events`, the next ones of the run.
    fn take(&mut self, events: &[Observed<OrderedEvent>]) -> Result<(), String> {
        for o in events {
            let me = (o.node, o.incarnation);
            match &o.event {
                OrderedEvent::Delivered {
                    from,
                    life,
                    seq,
                    order,
                    payload,
                    position,
                    ..
                } => {
                    self.deliveries += 1;
                    let id = (*from, *life, *seq);
                    if *from == o.node {
                        self.sent.insert(id, payload.clone());
                        if self.causal && !self.past.contains_key(&id) {
                            let past = self.upto.get(&me).cloned().unwrap_or_default();
                            self.past.insert(id, past.into_iter().collect());
                        }
                    }
                    // No invented delivery: what the sender sent, byte for
                    // byte.
                    if self.sent.get(&id) != Some(payload) {
                        return Err(format!(
                            "{} delivered {from}#{seq}, which {from} never sent with these bytes",
                            o.node
                        ));
                    }
                    // No duplicate, FIFO, no silent hole: the next after
                    // the last delivered or reported missed.
                    let (last, missed) = self
                        .streams
                        .entry((o.node, o.incarnation, *from, *life))
                        .or_default();
                    let expected = (*last).max(*missed) + 1;
                    // The sequencer's stream carries its decisions too, so
                    // its application messages skip those numbers.
                    let gaps = self.total && *from == NodeId(0);
                    if *seq < expected || (*seq != expected && !gaps) {
                        return Err(format!(
                            "{} delivered {from}#{seq}, expected #{expected} (a duplicate or out of FIFO order)",
                            o.node
                        ));
                    }
                    *last = *seq;
                    // One total order: a position names one message
                    // everywhere, and each member goes up it.
                    if let Some(p) = position {
                        if let Some(named) = self.positions.insert(*p, id)
                            && named != id
                        {
                            return Err(format!(
                                "{} delivered {from}#{seq} at position {p}, where another member delivered {}#{} (total order)",
                                o.node, named.0, named.2
                            ));
                        }
                        let at = self.at.entry(me).or_default();
                        if *p <= *at {
                            return Err(format!(
                                "{} delivered position {p} after position {at} (total order)",
                                o.node
                            ));
                        }
                        *at = *p;
                        self.total_checked += 1;
                    }
                    let causal = matches!(
                        order,
                        ft_multicast::Order::Causal
                            | ft_multicast::Order::Agreed
                            | ft_multicast::Order::Safe
                    );
                    if causal && self.causal && *from != o.node {
                        let Some(past) = self.past.get(&id) else {
                            return Err(format!("{} delivered unsent {from}#{seq}", o.node));
                        };
                        let have = self.upto.get(&me);
                        for &((k, klife), need) in past {
                            let got = have.and_then(|h| h.get(&(k, klife))).copied();
                            let newer =
                                have.is_some_and(|h| h.keys().any(|&(n, l)| n == k && l > klife));
                            if got.unwrap_or(0) < need && !newer {
                                return Err(format!(
                                    "{} delivered {from}#{seq} before {k}#{need}, which {from} had delivered when it sent it (causal order)",
                                    o.node
                                ));
                            }
                        }
                        self.causal_checked += 1;
                    }
                    let u = self
                        .upto
                        .entry(me)
                        .or_default()
                        .entry((*from, *life))
                        .or_default();
                    *u = (*u).max(*seq);
                }
                OrderedEvent::Core(McastEvent::Missed {
                    from, life, upto, ..
                }) => {
                    self.missed += 1;
                    let (last, missed) = self
                        .streams
                        .entry((o.node, o.incarnation, *from, *life))
                        .or_default();
                    if *upto <= (*last).max(*missed) {
                        return Err(format!(
                            "{} was told it missed {from}'s messages up to #{upto}, but was past it",
                            o.node
                        ));
                    }
                    *missed = *upto;
                    let u = self
                        .upto
                        .entry(me)
                        .or_default()
                        .entry((*from, *life))
                        .or_default();
                    *u = (*u).max(*upto);
                }
                OrderedEvent::Core(McastEvent::Refused { .. }) => self.refused += 1,
                // What a sender sent, known when it sends: an agreed or safe
                // message may be delivered elsewhere before its sender
                // delivers it (at its position).
                OrderedEvent::Core(McastEvent::Sent { token, seq, .. }) => {
                    let id = (o.node, o.incarnation, *seq);
                    self.sent.insert(id, payload(o.node.0, *token));
                    if self.causal {
                        let past = self.upto.get(&me).cloned().unwrap_or_default();
                        self.past.entry(id).or_insert(past.into_iter().collect());
                    }
                }
                OrderedEvent::Core(_) => {}
                // Positions of the total order this member will never
                // deliver: it goes on after them.
                OrderedEvent::MissedAgreed { last, .. } => {
                    self.missed += 1;
                    let at = self.at.entry(me).or_default();
                    *at = (*at).max(*last);
                }
            }
        }
        Ok(())
    }

    /// Members that have not delivered every message of every sender (all
    /// in their first life: nothing crashes).
    fn short(&self, w: &World<Ordered>) -> Vec<NodeId> {
        let mut sent: BTreeMap<NodeId, u64> = BTreeMap::new();
        for &(from, _, _) in self.sent.keys() {
            *sent.entry(from).or_default() += 1;
        }
        w.node_ids()
            .iter()
            .copied()
            .filter(|&r| {
                sent.iter().any(|(&s, &n)| {
                    let got = self
                        .streams
                        .get(&(r, Incarnation::FIRST, s, Incarnation::FIRST))
                        .map_or(0, |&(last, _)| last);
                    got < n
                })
            })
            .collect()
    }
}

/// What a run did.
struct Outcome {
    stats: ft_sim::Stats,
    checker: Checker,
    wire: Wire,
    /// Members short of some message at the end.
    short: Vec<NodeId>,
    /// Summed over the members.
    mcast: ft_multicast::McastStats,
    tree: ft_multicast::TreeStats,
    /// Members that held a request, or a repair, back.
    held_requests: Vec<NodeId>,
    held_repairs: Vec<NodeId>,
    /// Messages n0 received, and sent.
    source_received: u64,
    source_sent: u64,
    /// Virtual time when every member had everything.
    done_at: Duration,
}

fn run(args: &SimMcastArgs, detail: bool) -> Result<Outcome, String> {
    let n = args.members();
    let members: Vec<NodeId> = (0..n as u64).map(NodeId).collect();
    let config = McastConfig::new(vec![args.strategy.group(members)]);
    let mut plan = FaultPlan::none();
    plan.network.loss = args.loss;
    // The loss stops after the last send: the run then shows every member
    // gets everything.
    plan.network.calm_after = Some(args.last_send());
    let mut sim: Sim<Ordered> = Sim::new(SimConfig::new(args.seed, n), config, plan);

    let wire = Rc::new(RefCell::new(Wire::default()));
    let log = Rc::clone(&wire);
    let routers = Routers::new(args.receivers);
    let codec = FrameCodec::default();
    let drop = args.drop_message;
    // The receivers under the first router lose the dropped message.
    let dropped_to = 1..=FANOUT.min(args.receivers);
    let mut last: Option<(Duration, NodeId)> = None;
    sim.set_link_model(move |now, from, to, frame| {
        let interesting = detail || (drop > 0 && from == NodeId(0));
        let msg = interesting
            .then(|| {
                codec
                    .decode::<McastMessage>(Bytes::copy_from_slice(frame))
                    .ok()
            })
            .flatten();
        let mut w = log.borrow_mut();
        if let Some(McastMessage::Data { seq, life, .. }) = &msg
            && from == NodeId(0)
            && *seq == drop
            && *life == Incarnation::FIRST
        {
            // Its first transmission only: every copy of one multicast is
            // sent at the same time.
            let first = *w.dropped_at.get_or_insert(now) == now;
            if first && dropped_to.contains(&to.0) {
                w.lost_dropped.insert(to);
                return None;
            }
        }
        // One entry per multicast: its copies come one after the other.
        if detail && last != Some((now, from)) {
            last = Some((now, from));
            let at = now;
            match &msg {
                Some(McastMessage::Request { ranges, .. }) => {
                    let what = ranges
                        .iter()
                        .map(|&(a, b)| {
                            if a == b {
                                format!("#{a}")
                            } else {
                                format!("#{a}-#{b}")
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    w.requests.push(Sent { at, by: from, what });
                }
                Some(McastMessage::Repair { seq, .. }) => {
                    w.repairs.push(Sent {
                        at,
                        by: from,
                        what: format!("#{seq}"),
                    });
                }
                _ => last = None,
            }
        }
        Some(HOP * routers.hops(from, to))
    });

    let checker = Rc::new(RefCell::new(Checker {
        causal: args.order != Order::Fifo,
        total: matches!(args.order, Order::Agreed | Order::Safe),
        ..Checker::default()
    }));
    let check = Rc::clone(&checker);
    let invariant = format!(
        "no duplicate, no invented delivery, FIFO{}",
        args.order.checked()
    );
    sim.invariant(invariant, move |w| check.borrow_mut().check(w));

    for s in 0..args.senders {
        for k in 0..args.messages {
            sim.input(
                START + SPACING * k as u32 + MS * s as u32,
                NodeId(s),
                OrderedInput::Send {
                    group: G,
                    token: k,
                    payload: payload(s, k),
                    order: args.order.order(),
                },
            );
        }
    }
    let fail = |f: Box<ft_sim::Failure>| format!("{f}");
    sim.run_until(args.last_send() + 100 * MS).map_err(fail)?;
    // Run on until every member has everything, or give up.
    let deadline = args.last_send() + GRACE;
    loop {
        let short = checker.borrow().short(sim.world());
        if short.is_empty() || sim.now() >= deadline {
            break;
        }
        sim.run_for(50 * MS).map_err(fail)?;
    }
    let done_at = sim.now();
    let w = sim.world();
    let short = checker.borrow().short(w);
    let mut out = Outcome {
        stats: *sim.stats(),
        checker: std::mem::take(&mut *checker.borrow_mut()),
        wire: std::mem::take(&mut *wire.borrow_mut()),
        short,
        mcast: ft_multicast::McastStats::default(),
        tree: ft_multicast::TreeStats::default(),
        held_requests: Vec::new(),
        held_repairs: Vec::new(),
        source_received: 0,
        source_sent: 0,
        done_at,
    };
    for (node, o) in w.cores() {
        let s = o.core().stats();
        let m = &mut out.mcast;
        m.delivered += s.delivered;
        m.nacks_sent += s.nacks_sent;
        m.repairs_sent += s.repairs_sent;
        m.requests_suppressed += s.requests_suppressed;
        m.repairs_suppressed += s.repairs_suppressed;
        m.acks_sent += s.acks_sent;
        m.duplicates += s.duplicates;
        m.parity_sent += s.parity_sent;
        m.fec_recovered += s.fec_recovered;
        let t = o.core().tree_stats();
        out.tree.local_repairs += t.local_repairs;
        out.tree.escalated += t.escalated;
        if s.requests_suppressed > 0 {
            out.held_requests.push(node);
        }
        if s.repairs_suppressed > 0 {
            out.held_repairs.push(node);
        }
        if node == NodeId(0) {
            out.source_received = o.core().counters().messages_received;
        }
    }
    out.source_sent = out
        .checker
        .sent
        .keys()
        .filter(|(from, _, _)| *from == NodeId(0))
        .count() as u64;
    Ok(out)
}

/// Nodes as "n1 n2 n3", at most `most` of them.
fn nodes(list: &[NodeId], most: usize) -> String {
    let mut s: Vec<String> = list.iter().take(most).map(|n| n.to_string()).collect();
    if list.len() > most {
        s.push(format!("and {} more", list.len() - most));
    }
    s.join(" ")
}

fn when(list: &[Sent]) -> String {
    list.iter()
        .map(|s| format!("{} {} at {} ms", s.by, s.what, s.at.as_millis()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The multicast part of `ft demo`: one lost packet among 100 receivers.
pub(crate) fn demo(seed: u64) -> Result<(), String> {
    let mut args = SimMcastArgs {
        strategy: Strategy::Nack,
        receivers: 100,
        senders: 1,
        messages: 20,
        loss: 0.0,
        order: Order::Fifo,
        drop_message: 10,
        seed,
    };
    args.clamp();
    println!(
        "reliable multicast: n0 sends 20 messages, 10 ms apart, to 100 receivers (10 routers of 10, 2 ms a hop) with SRM-style NACKs; its first copy of #10 is lost on the link to the first router"
    );
    let o = run(&args, true)?;
    let w = &o.wire;
    let lost: Vec<NodeId> = w.lost_dropped.iter().copied().collect();
    println!(
        "  lost: #10 (sent at {} ms) at {} receivers: {}",
        w.dropped_at.unwrap_or_default().as_millis(),
        lost.len(),
        nodes(&lost, 10)
    );
    println!(
        "  requests (NACKs multicast to the group), {} sent: {}",
        o.mcast.nacks_sent,
        when(&w.requests)
    );
    println!(
        "  suppressed: {} requests held back on hearing another first (requests_suppressed), by {}",
        o.mcast.requests_suppressed,
        nodes(&o.held_requests, 10)
    );
    println!(
        "  repairs, {} sent: {}; {} suppressed (repairs_suppressed: planned, dropped on hearing one first)",
        o.mcast.repairs_sent,
        when(&w.repairs),
        o.mcast.repairs_suppressed
    );
    print_delivered(&args, &o);
    println!("  reproduce: {}", args.reproduce());
    println!();
    if !o.short.is_empty() {
        return Err(format!(
            "{} members still miss a message: {}",
            o.short.len(),
            nodes(&o.short, 10)
        ));
    }
    Ok(())
}

fn print_delivered(args: &SimMcastArgs, o: &Outcome) {
    let c = &o.checker;
    let expected = c.sent.len() as u64 * args.members() as u64;
    if o.short.is_empty() {
        println!(
            "  delivered: {} of {expected}: every member has every message (at {} ms); {} reported missed",
            c.deliveries,
            o.done_at.as_millis(),
            c.missed
        );
    } else {
        println!(
            "  delivered: {} of {expected}: NOT ALL; {} members miss some: {}",
            c.deliveries,
            o.short.len(),
            nodes(&o.short, 10)
        );
    }
    println!(
        "  invariants: no duplicate, no invented delivery, FIFO per sender{} checked after each of {} steps{}: held",
        args.order.checked(),
        o.stats.steps,
        match (c.causal, c.total_checked) {
            (false, _) => String::new(),
            (true, 0) => format!(" ({} causal deliveries checked)", c.causal_checked),
            (true, total) => format!(
                " ({} causal deliveries checked, {total} at a position of the total order)",
                c.causal_checked
            ),
        }
    );
}

pub(crate) fn sim_multicast(args: &SimMcastArgs) -> ExitCode {
    let started = Instant::now();
    println!(
        "ft sim multicast: {} feedback, {} order, {} sender{} × {} messages (one every 10 ms) to a group of {} (n0 and {} receivers), {:.1}% loss{}, seed {}",
        crate::value_name(args.strategy),
        crate::value_name(args.order),
        args.senders,
        if args.senders == 1 { "" } else { "s" },
        args.messages,
        args.members(),
        args.receivers,
        args.loss * 100.0,
        if args.drop_message > 0 {
            format!(
                ", n0's #{} lost to n1..n{}",
                args.drop_message,
                FANOUT.min(args.receivers)
            )
        } else {
            String::new()
        },
        args.seed
    );
    let o = match run(args, false) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            println!("reproduce: {}", args.reproduce());
            return ExitCode::FAILURE;
        }
    };
    let s = &o.stats;
    let routers = Routers::new(args.receivers);
    println!(
        "  network: {} levels of routers, ten to a router, 2 ms a hop; {} copies sent, {} lost{}",
        routers.levels,
        s.sent,
        s.lost,
        if args.drop_message > 0 {
            format!(
                " ({} of them n0's #{} on purpose)",
                o.wire.lost_dropped.len(),
                args.drop_message
            )
        } else {
            String::new()
        }
    );
    let m = &o.mcast;
    let mut feedback = vec![
        format!("{} NACKs/requests", m.nacks_sent),
        format!("{} repairs", m.repairs_sent),
    ];
    match args.strategy {
        Strategy::Ack => feedback.push(format!("{} acknowledgements", m.acks_sent)),
        Strategy::Nack => feedback.push(format!(
            "suppressed: {} requests, {} repairs",
            m.requests_suppressed, m.repairs_suppressed
        )),
        Strategy::NackFec => feedback.push(format!(
            "{} parity packets sent, {} messages rebuilt from parity; suppressed: {} requests, {} repairs",
            m.parity_sent, m.fec_recovered, m.requests_suppressed, m.repairs_suppressed
        )),
        Strategy::Tree => feedback.push(format!(
            "{} repairs by coordinators, {} NACKs escalated to the source",
            o.tree.local_repairs, o.tree.escalated
        )),
    }
    println!("  feedback: {}", feedback.join("; "));
    println!(
        "  source load: n0 received {} messages for the {} it sent: {:.2} per message (acknowledgements, NACKs, sessions: everything)",
        o.source_received,
        o.source_sent,
        o.source_received as f64 / o.source_sent.max(1) as f64
    );
    if o.checker.refused > 0 {
        println!(
            "  refused: {} sends (a history ring full); not sent, not expected",
            o.checker.refused
        );
    }
    print_delivered(args, &o);
    println!("  wall time {:.2?}", started.elapsed());
    println!("reproduce: {}", args.reproduce());
    if o.short.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {} members still miss a message {GRACE:?} after the last send",
            o.short.len()
        );
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_tree_counts_the_links_between_two_members() {
        let r = Routers::new(100);
        assert_eq!(r.levels, 2);
        // The source to a receiver: its router's link and the receiver's.
        assert_eq!(r.hops(NodeId(0), NodeId(7)), 2);
        // Under the same router.
        assert_eq!(r.hops(NodeId(1), NodeId(10)), 2);
        // Under two routers.
        assert_eq!(r.hops(NodeId(1), NodeId(11)), 4);
        assert_eq!(Routers::new(1000).levels, 3);
    }

    fn delivered(
        node: u64,
        from: u64,
        seq: u64,
        order: ft_multicast::Order,
    ) -> Observed<OrderedEvent> {
        Observed {
            at: Duration::ZERO,
            node: NodeId(node),
            incarnation: Incarnation::FIRST,
            event: OrderedEvent::Delivered {
                group: G,
                from: NodeId(from),
                life: Incarnation::FIRST,
                seq,
                order,
                payload: Bytes::from(vec![from as u8, seq as u8]),
                position: None,
            },
        }
    }

    /// `delivered`, at position `p` of the total order.
    fn at(node: u64, from: u64, seq: u64, p: u64) -> Observed<OrderedEvent> {
        let mut o = delivered(node, from, seq, ft_multicast::Order::Agreed);
        if let OrderedEvent::Delivered { position, .. } = &mut o.event {
            *position = Some(p);
        }
        o
    }

    /// The checker over `events`: the first error, if any.
    fn verdict(causal: bool, events: &[Observed<OrderedEvent>]) -> Result<(), String> {
        let mut c = Checker {
            causal,
            ..Checker::default()
        };
        // One at a time, as steps would hand them over.
        events
            .iter()
            .try_for_each(|e| c.take(std::slice::from_ref(e)))
    }

    #[test]
    fn the_checker_refuses_duplicates_gaps_inventions_and_causal_inversions() {
        use ft_multicast::Order::{Causal, Fifo};
        // n0 sends #1 and #2; n1 delivers them in order: fine.
        let good = [
            delivered(0, 0, 1, Fifo),
            delivered(0, 0, 2, Fifo),
            delivered(1, 0, 1, Fifo),
            delivered(1, 0, 2, Fifo),
        ];
        assert_eq!(verdict(false, &good), Ok(()));
        let dup = [good[0].clone(), good[2].clone(), good[2].clone()];
        assert!(verdict(false, &dup).unwrap_err().contains("expected #2"));
        let skip = [good[0].clone(), good[1].clone(), good[3].clone()];
        assert!(verdict(false, &skip).unwrap_err().contains("expected #1"));
        // Delivered before its sender sent it, or with other bytes.
        assert!(
            verdict(false, &[good[2].clone()])
                .unwrap_err()
                .contains("never sent")
        );
        let mut forged = good[2].clone();
        if let OrderedEvent::Delivered { payload, .. } = &mut forged.event {
            *payload = Bytes::from_static(b"forged");
        }
        assert!(
            verdict(false, &[good[0].clone(), forged])
                .unwrap_err()
                .contains("never sent")
        );
        // n1 delivers n0#1, then sends n1#1 causally; n2 delivers n1#1
        // before n0#1: a causal inversion.
        let inversion = [
            delivered(0, 0, 1, Fifo),
            delivered(1, 0, 1, Fifo),
            delivered(1, 1, 1, Causal),
            delivered(2, 1, 1, Causal),
        ];
        assert!(verdict(true, &inversion).unwrap_err().contains("causal"));
        let mut kept = inversion.to_vec();
        kept.insert(3, delivered(2, 0, 1, Fifo));
        assert_eq!(verdict(true, &kept), Ok(()));
    }

    #[test]
    fn the_checker_refuses_two_orders() {
        // n0 and n1 each send one message; n0 is the sequencer.
        let sends = [at(0, 0, 1, 1), at(1, 1, 1, 2)];
        let mut good = sends.to_vec();
        good.extend([at(2, 0, 1, 1), at(2, 1, 1, 2)]);
        assert_eq!(verdict(false, &good), Ok(()));
        // n2 delivers n1#1 at position 1, where n0 delivered n0#1.
        let mut other = sends.to_vec();
        other.push(at(2, 1, 1, 1));
        assert!(verdict(false, &other).unwrap_err().contains("total order"));
        // n2 goes down the order.
        let mut down = sends.to_vec();
        down.extend([at(2, 1, 1, 2), at(2, 0, 1, 1)]);
        assert!(verdict(false, &down).unwrap_err().contains("total order"));
    }
}

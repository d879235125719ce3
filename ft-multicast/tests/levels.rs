//! Each delivery level breaking the property it does not promise, in
//! crafted runs, next to the level above keeping it; and a sequencer that
//! restarts from its records continuing the total order. (FIFO breaking
//! causal order is shown in `tests/causal.rs`.)

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Output, Protocol, Recover, RecoveryContext};
use ft_multicast::{
    GroupConfig, GroupId, McastConfig, McastMessage, McastTimer, Order, Ordered, OrderedEvent,
    OrderedInput,
};

const G: GroupId = GroupId(1);

/// A hand-driven network: messages wait in one queue until `flush`
/// delivers them (those a filter keeps back stay aside), persists
/// complete at once, timers fire on `tick`.
struct Net {
    nodes: BTreeMap<u64, Ordered>,
    lives: BTreeMap<u64, u64>,
    /// Each node's durable records.
    records: BTreeMap<u64, Vec<Bytes>>,
    queue: VecDeque<(u64, u64, McastMessage)>,
    aside: Vec<(u64, u64, McastMessage)>,
    timers: BTreeMap<(u64, McastTimer), Instant>,
    now: Instant,
    /// Per node: what it delivered (payloads) and its positions.
    delivered: BTreeMap<u64, Vec<(Bytes, Option<u64>)>>,
}

impl Net {
    fn new(members: &[u64]) -> Self {
        let mut net = Net {
            nodes: BTreeMap::new(),
            lives: BTreeMap::new(),
            records: BTreeMap::new(),
            queue: VecDeque::new(),
            aside: Vec::new(),
            timers: BTreeMap::new(),
            now: Instant::now(),
            delivered: BTreeMap::new(),
        };
        for &m in members {
            net.start(m, 0);
        }
        net
    }

    fn config(&self) -> McastConfig {
        McastConfig::new(vec![GroupConfig::new(
            G,
            [1, 2, 3, 4].into_iter().map(NodeId),
        )])
    }

    /// Starts `node` in life `life` from its durable records.
    fn start(&mut self, node: u64, life: u64) {
        let ctx = RecoveryContext {
            node: NodeId(node),
            incarnation: Incarnation(life),
            records: self.records.get(&node).cloned().unwrap_or_default(),
            seed: node,
            now: self.now,
        };
        let core = Ordered::recover(&self.config(), ctx).unwrap();
        self.nodes.insert(node, core);
        self.lives.insert(node, life);
        self.timers.retain(|(n, _), _| *n != node);
        self.pump(node);
    }

    /// `node` crashes: its state and timers are gone, its records stay.
    fn crash(&mut self, node: u64) {
        self.nodes.remove(&node);
        self.timers.retain(|(n, _), _| *n != node);
    }

    fn send(&mut self, node: u64, payload: &'static str, order: Order) {
        let n = self.nodes.get_mut(&node).unwrap();
        n.handle_input(
            self.now,
            OrderedInput::Send {
                group: G,
                token: 0,
                payload: Bytes::from_static(payload.as_bytes()),
                order,
            },
        );
        self.pump(node);
    }

    fn pump(&mut self, node: u64) {
        loop {
            let Some(n) = self.nodes.get_mut(&node) else {
                return;
            };
            let Some(out) = n.poll_output() else {
                return;
            };
            match out {
                Output::Send { to, msg } => self.queue.push_back((node, to.0, msg)),
                Output::Multicast { to, msg } => {
                    for t in to {
                        self.queue.push_back((node, t.0, msg.clone()));
                    }
                }
                Output::SetTimer { timer, at } => {
                    self.timers.insert((node, timer), at);
                }
                Output::CancelTimer { timer } => {
                    self.timers.remove(&(node, timer));
                }
                Output::Persist { record, token } => {
                    // Durable at once.
                    self.records.entry(node).or_default().push(record);
                    let now = self.now;
                    self.nodes
                        .get_mut(&node)
                        .unwrap()
                        .handle_persisted(now, token);
                }
                Output::Event(OrderedEvent::Delivered {
                    payload, position, ..
                }) => self
                    .delivered
                    .entry(node)
                    .or_default()
                    .push((payload, position)),
                _ => {}
            }
        }
    }

    /// Delivers what waits, and what that sends, until nothing does;
    /// messages `keep_back` names are set aside instead.
    fn flush(&mut self, keep_back: impl Fn(u64, u64, &McastMessage) -> bool) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if keep_back(from, to, &msg) {
                self.aside.push((from, to, msg));
                continue;
            }
            let now = self.now;
            if let Some(n) = self.nodes.get_mut(&to) {
                n.handle_message(now, NodeId(from), msg);
                self.pump(to);
            }
        }
    }

    /// Puts what was set aside back on the network.
    fn release(&mut self) {
        self.queue.extend(self.aside.drain(..));
    }

    /// Lets `d` pass, firing the timers due, delivering everything.
    fn tick(&mut self, d: Duration) {
        self.tick_but(d, |_, _, _| false);
    }

    /// Lets `d` pass, firing the timers due, delivering everything but
    /// what `keep_back` names.
    fn tick_but(&mut self, d: Duration, keep_back: impl Fn(u64, u64, &McastMessage) -> bool) {
        self.now += d;
        let due: Vec<(u64, McastTimer)> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= self.now)
            .map(|(k, _)| k.clone())
            .collect();
        for (node, timer) in due {
            self.timers.remove(&(node, timer.clone()));
            let now = self.now;
            if let Some(n) = self.nodes.get_mut(&node) {
                n.handle_timer(now, timer);
                self.pump(node);
            }
        }
        self.flush(keep_back);
    }

    fn got(&self, node: u64) -> Vec<&[u8]> {
        self.delivered
            .get(&node)
            .map(|d| d.iter().map(|(p, _)| &p[..]).collect())
            .unwrap_or_default()
    }
}

fn data_to(to: u64) -> impl Fn(u64, u64, &McastMessage) -> bool {
    move |_, t, m| t == to && matches!(m, McastMessage::Data { .. } | McastMessage::Datagram { .. })
}

#[test]
fn an_unreliable_message_is_lost_for_good_a_reliable_one_is_repaired() {
    let mut net = Net::new(&[1, 2, 3, 4]);
    net.send(2, "unreliable", Order::Unreliable);
    net.send(2, "reliable", Order::Reliable);
    // Node 3's copies of both are lost.
    net.flush(data_to(3));
    net.aside.clear();
    assert_eq!(net.got(4), vec![&b"unreliable"[..], b"reliable"]);
    assert!(net.got(3).is_empty());
    // Time passes: the sender announces, node 3 asks for what it lacks.
    for _ in 0..10 {
        net.tick(Duration::from_millis(50));
    }
    assert_eq!(
        net.got(3),
        vec![&b"reliable"[..]],
        "the unreliable one is never repaired"
    );
}

#[test]
fn reliable_delivers_out_of_its_senders_order_fifo_does_not() {
    for (order, expected) in [
        (Order::Reliable, vec![&b"second"[..], b"first"]),
        (Order::Fifo, vec![&b"first"[..], b"second"]),
    ] {
        let mut net = Net::new(&[1, 2, 3, 4]);
        net.send(2, "first", order);
        net.send(2, "second", order);
        // The network reorders: node 3 gets the second message first.
        let first_to_3 = |_: u64, t: u64, m: &McastMessage| {
            t == 3 && matches!(m, McastMessage::Data { seq: 1, .. })
        };
        net.flush(first_to_3);
        let early = net.got(3).len();
        net.release();
        net.flush(|_, _, _| false);
        assert_eq!(net.got(3), expected, "{order:?}");
        // Reliable handed the second over at once; FIFO held it back.
        assert_eq!(early, usize::from(order == Order::Reliable), "{order:?}");
    }
}

/// Nodes 2 and 3 send one message each, concurrently (neither has the
/// other's); node 4 gets 2's first, the others get 3's first. Returns what
/// nodes 1 and 4 deliver.
fn concurrent(order: Order) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut net = Net::new(&[1, 2, 3, 4]);
    net.send(2, "from 2", order);
    net.send(3, "from 3", order);
    let from = |f: u64| {
        move |s: u64, _: u64, m: &McastMessage| s == f && matches!(m, McastMessage::Data { .. })
    };
    // 2's message reaches only node 4; 3's reaches everyone else, then 2's.
    net.flush(|s, t, m| from(2)(s, t, m) && t != 4 || from(3)(s, t, m) && t == 4);
    net.release();
    net.flush(|_, _, _| false);
    for _ in 0..10 {
        net.tick(Duration::from_millis(50));
    }
    let get = |n: u64| net.got(n).into_iter().map(<[u8]>::to_vec).collect();
    (get(1), get(4))
}

#[test]
fn causal_delivers_concurrent_messages_in_different_orders_agreed_does_not() {
    let (one, four) = concurrent(Order::Causal);
    assert_eq!(one, vec![b"from 3".to_vec(), b"from 2".to_vec()]);
    assert_eq!(four, vec![b"from 2".to_vec(), b"from 3".to_vec()]);
    // Agreed: one order everywhere, the sequencer's (node 1 got 3's first).
    let (one, four) = concurrent(Order::Agreed);
    assert_eq!(one, vec![b"from 3".to_vec(), b"from 2".to_vec()]);
    assert_eq!(four, one);
}

#[test]
fn agreed_delivers_before_every_member_has_the_message_safe_does_not() {
    for order in [Order::Agreed, Order::Safe] {
        let mut net = Net::new(&[1, 2, 3, 4]);
        net.send(2, "m", order);
        // Node 3 does not get it (yet).
        net.flush(data_to(3));
        // And keeps not getting it, repairs included, while time passes.
        let m_to_3 = |s: u64, t: u64, m: &McastMessage| {
            s == 2 && t == 3 && matches!(m, McastMessage::Data { .. })
        };
        for _ in 0..6 {
            net.tick_but(Duration::from_millis(50), m_to_3);
        }
        net.aside.clear();
        assert!(net.got(3).is_empty());
        if order == Order::Agreed {
            // Delivered at the sender and elsewhere while node 3 lacks it.
            assert_eq!(net.got(2), vec![&b"m"[..]]);
            assert_eq!(net.got(4), vec![&b"m"[..]]);
        } else {
            // Nobody delivers it before node 3 holds it.
            assert!(net.got(2).is_empty() && net.got(4).is_empty() && net.got(1).is_empty());
        }
        // Node 3 gets it (repaired): then everyone delivers it.
        for _ in 0..10 {
            net.tick(Duration::from_millis(50));
        }
        for n in 1..=4 {
            assert_eq!(net.got(n), vec![&b"m"[..]], "{order:?} at {n}");
        }
    }
}

#[test]
fn a_restarted_sequencer_continues_the_order_and_resends_what_members_lack() {
    let mut net = Net::new(&[1, 2, 3, 4]);
    net.send(2, "a", Order::Agreed);
    // The sequencer decides, persists, and multicasts its decision; node
    // 3's copy of the decision is lost, and the sequencer crashes.
    net.flush(|s, t, m| s == 1 && t == 3 && matches!(m, McastMessage::Data { .. }));
    net.aside.clear();
    assert_eq!(net.delivered[&4], vec![(Bytes::from_static(b"a"), Some(1))]);
    assert!(net.got(3).is_empty());
    net.crash(1);
    net.start(1, 1);
    net.flush(|_, _, _| false);
    // The new life multicast the decision again: node 3 delivers "a" at
    // its position.
    assert_eq!(net.delivered[&3], vec![(Bytes::from_static(b"a"), Some(1))]);
    // And the numbering goes on: the next message takes position 2, not 1.
    net.send(3, "b", Order::Agreed);
    for _ in 0..6 {
        net.tick(Duration::from_millis(50));
    }
    for n in [2, 3, 4] {
        assert_eq!(
            net.delivered[&n].last(),
            Some(&(Bytes::from_static(b"b"), Some(2))),
            "at {n}"
        );
    }
}

#[test]
fn forged_decisions_and_beacons_and_huge_haves_change_nothing_and_are_counted() {
    let mut net = Net::new(&[1, 2, 3, 4]);
    net.send(2, "m", Order::Safe);
    // Node 3 does not get the message.
    net.flush(data_to(3));
    net.aside.clear();
    // Node 4, not the sequencer, forges a decision (in its own stream)
    // and a beacon saying everything is stable; and tells the sequencer
    // it has resolved the order up to 2^62.
    let forged = ft_multicast::header::encode_decision(&ft_multicast::header::Decision {
        first: 1,
        entries: vec![(NodeId(4), Incarnation(0), 1)],
        prefix: vec![(NodeId(2), Incarnation(0), 100)],
    });
    let now = net.now;
    let n3 = net.nodes.get_mut(&3).unwrap();
    n3.handle_message(
        now,
        NodeId(4),
        McastMessage::Data {
            group: G,
            life: Incarnation(0),
            seq: 1,
            base: 1,
            payload: forged,
        },
    );
    n3.handle_message(
        now,
        NodeId(4),
        McastMessage::Beacon {
            group: G,
            life: Incarnation(0),
            highest: 0,
            next: 1000,
            stable: 1000,
            prefix: vec![(NodeId(2), Incarnation(0), 100)],
        },
    );
    assert_eq!(n3.stats().ignored, 2);
    net.pump(3);
    let big = ft_multicast::message::MAX_SEQ;
    net.queue.push_back((
        4,
        1,
        McastMessage::Have {
            group: G,
            life: Incarnation(0),
            upto: big,
            lacking: Vec::new(),
        },
    ));
    net.flush(data_to(3));
    net.aside.clear();
    // The safe message is still not delivered anywhere: node 3 lacks it,
    // whatever node 4 claims.
    for n in 1..=4 {
        assert!(net.got(n).is_empty(), "delivered at {n}");
    }
    // Once node 3 has it, it is delivered, at position 1 (the forged
    // decision took nothing).
    for _ in 0..10 {
        net.tick(Duration::from_millis(50));
    }
    for n in 1..=4 {
        assert_eq!(
            net.delivered[&n],
            vec![(Bytes::from_static(b"m"), Some(1))],
            "at {n}"
        );
    }
}

#[test]
fn a_duplicated_datagram_is_delivered_once() {
    let mut net = Net::new(&[1, 2, 3, 4]);
    net.send(2, "d", Order::Unreliable);
    let copies: Vec<_> = net
        .queue
        .iter()
        .filter(|(_, t, _)| *t == 3)
        .cloned()
        .collect();
    net.queue.extend(copies);
    net.flush(|_, _, _| false);
    assert_eq!(net.got(3), vec![&b"d"[..]]);
    assert_eq!(net.nodes[&3].stats().datagram_duplicates, 1);
}

//! Members configured differently, as happens when a configuration changes
//! between runs and not every process has restarted yet: the ring sizes
//! and timings are each member's own business; members that disagree on
//! who is in a group, on the feedback strategy or on the largest payload
//! never panic, never deliver twice or deliver what was not sent, and
//! count what they ignore.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Output, Protocol, Recover, RecoveryContext};
use ft_multicast::{
    Feedback, GroupConfig, GroupId, McastConfig, McastEvent, McastInput, McastMessage, McastTimer,
    Multicast, Srm,
};

const G: GroupId = GroupId(1);
const HOP: Duration = Duration::from_millis(1);

enum Ev {
    Deliver(NodeId, NodeId, McastMessage),
    Timer(NodeId, McastTimer),
    Send(NodeId, u64),
}

/// A few cores, each with its own configuration, on a perfect network
/// with 1 ms delay: timers fire, messages arrive, in time order.
struct Net {
    start: Instant,
    nodes: BTreeMap<NodeId, Multicast>,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: BTreeMap<u64, Ev>,
    next: u64,
    /// Timers set, by (node, timer): the time of the latest setting.
    armed: BTreeMap<(NodeId, McastTimer), Duration>,
    /// What each node told its application.
    seen: BTreeMap<NodeId, Vec<McastEvent>>,
}

impl Net {
    fn new(configs: Vec<(NodeId, McastConfig)>) -> Self {
        let start = Instant::now();
        let mut net = Net {
            start,
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next: 0,
            armed: BTreeMap::new(),
            seen: BTreeMap::new(),
        };
        for (node, config) in configs {
            let ctx = RecoveryContext {
                node,
                incarnation: Incarnation::FIRST,
                records: Vec::new(),
                seed: node.0,
                now: start,
            };
            net.nodes
                .insert(node, Multicast::recover(&config, ctx).unwrap());
            net.drain(node, Duration::ZERO);
        }
        net
    }

    fn at(&mut self, t: Duration, ev: Ev) {
        self.next += 1;
        self.queue.push(Reverse((t, self.next)));
        self.events.insert(self.next, ev);
    }

    fn drain(&mut self, node: NodeId, now: Duration) {
        let core = self.nodes.get_mut(&node).unwrap();
        let mut outs = Vec::new();
        while let Some(o) = core.poll_output() {
            outs.push(o);
        }
        for o in outs {
            match o {
                Output::Send { to, msg } => self.at(now + HOP, Ev::Deliver(node, to, msg)),
                Output::Multicast { to, msg } => {
                    for to in to {
                        self.at(now + HOP, Ev::Deliver(node, to, msg.clone()));
                    }
                }
                Output::SetTimer { timer, at } => {
                    let t = at.saturating_duration_since(self.start);
                    self.armed.insert((node, timer.clone()), t);
                    self.at(t, Ev::Timer(node, timer));
                }
                Output::CancelTimer { timer } => {
                    self.armed.remove(&(node, timer));
                }
                Output::Event(e) => self.seen.entry(node).or_default().push(e),
                _ => {}
            }
        }
    }

    fn run_until(&mut self, end: Duration) {
        while let Some(&Reverse((t, id))) = self.queue.peek() {
            if t > end {
                break;
            }
            self.queue.pop();
            let now = self.start + t;
            let node = match self.events.remove(&id).unwrap() {
                Ev::Deliver(from, to, msg) => {
                    let Some(core) = self.nodes.get_mut(&to) else {
                        continue;
                    };
                    core.handle_message(now, from, msg);
                    to
                }
                Ev::Timer(node, timer) => {
                    // Only the latest setting of a timer fires.
                    if self.armed.get(&(node, timer.clone())) != Some(&t) {
                        continue;
                    }
                    self.armed.remove(&(node, timer.clone()));
                    self.nodes.get_mut(&node).unwrap().handle_timer(now, timer);
                    node
                }
                Ev::Send(node, k) => {
                    let mut payload = node.0.to_le_bytes().to_vec();
                    payload.extend_from_slice(&k.to_le_bytes());
                    payload.resize(8 + 8 + (k as usize % 3) * 400, 0);
                    self.nodes.get_mut(&node).unwrap().handle_input(
                        now,
                        McastInput::Send {
                            group: G,
                            token: k,
                            payload: Bytes::from(payload),
                        },
                    );
                    node
                }
            };
            self.drain(node, t);
        }
    }

    /// Each node sends `count` messages, one every 5 ms.
    fn sends(&mut self, senders: &[u64], count: u64) {
        for &s in senders {
            for k in 0..count {
                self.at(HOP * (10 + 5 * k as u32 + s as u32), Ev::Send(NodeId(s), k));
            }
        }
    }

    /// What `node` delivered from `from`: (seq, payload), checked never to
    /// repeat and to be what `from` sent as that number.
    fn delivered(&self, node: u64, from: u64) -> Vec<u64> {
        let mine = |n: u64| {
            self.seen
                .get(&NodeId(n))
                .into_iter()
                .flatten()
                .filter_map(move |e| match e {
                    McastEvent::Delivered {
                        from: f,
                        seq,
                        payload,
                        ..
                    } if *f == NodeId(from) => Some((*seq, payload.clone())),
                    _ => None,
                })
        };
        let sent: BTreeMap<u64, Bytes> = mine(from).collect();
        let got: Vec<(u64, Bytes)> = mine(node).collect();
        for (i, (seq, payload)) in got.iter().enumerate() {
            assert_eq!(
                *seq,
                i as u64 + 1,
                "n{node} from n{from}: out of order or twice"
            );
            assert_eq!(sent.get(seq), Some(payload), "n{node}: invented {seq}");
        }
        got.into_iter().map(|(s, _)| s).collect()
    }

    fn refused(&self, node: u64) -> usize {
        self.seen
            .get(&NodeId(node))
            .into_iter()
            .flatten()
            .filter(|e| matches!(e, McastEvent::Refused { .. }))
            .count()
    }
}

fn group(members: &[u64]) -> GroupConfig {
    GroupConfig::new(G, members.iter().copied().map(NodeId))
}

#[test]
fn ring_sizes_and_timings_are_each_members_own() {
    let mut configs = Vec::new();
    for (node, history, ack_ms) in [(1, 4, 1), (2, 64, 50), (3, 16, 30)] {
        let mut c = McastConfig::new(vec![group(&[1, 2, 3]).with_history(history)]);
        c.ack_delay = Duration::from_millis(ack_ms);
        configs.push((NodeId(node), c));
    }
    let mut net = Net::new(configs);
    net.sends(&[1, 2, 3], 40);
    // Refused sends (a ring of 4 fills) are sent again by nobody: count
    // what was sent.
    net.run_until(Duration::from_secs(3));
    for from in 1..=3 {
        let sent = net.delivered(from, from).len();
        assert_eq!(sent + net.refused(from), 40);
        for node in 1..=3 {
            assert_eq!(
                net.delivered(node, from).len(),
                sent,
                "n{node} from n{from}"
            );
        }
    }
    assert!(net.refused(1) > 0, "the small ring filled");
}

#[test]
fn a_member_that_does_not_list_a_sender_ignores_it_and_that_sender_waits() {
    let mut net = Net::new(vec![
        (
            NodeId(1),
            McastConfig::new(vec![group(&[1, 2, 3]).with_history(8)]),
        ),
        (
            NodeId(2),
            McastConfig::new(vec![group(&[1, 2, 3]).with_history(8)]),
        ),
        // An older configuration: node 2 is not in it.
        (
            NodeId(3),
            McastConfig::new(vec![group(&[1, 3]).with_history(8)]),
        ),
    ]);
    net.sends(&[1, 2], 20);
    net.run_until(Duration::from_secs(3));
    // Node 1's messages reach everyone.
    assert_eq!(net.delivered(2, 1).len(), 20);
    assert_eq!(net.delivered(3, 1).len(), 20);
    // Node 3 ignores node 2 (counted), so node 2's ring fills with what
    // node 3 never acknowledges, and node 2 is refused: told, not lost.
    assert!(net.delivered(3, 2).is_empty());
    assert!(net.nodes[&NodeId(3)].stats().ignored > 0);
    assert_eq!(net.delivered(2, 2).len(), 8);
    assert_eq!(net.refused(2), 12);
    assert_eq!(net.delivered(1, 2).len(), 8);
}

#[test]
fn members_that_disagree_on_the_feedback_strategy_deliver_nothing_twice() {
    for (a, b) in [
        (Feedback::Ack, Feedback::Nack(Srm::default())),
        (
            Feedback::Nack(Srm::default()),
            Feedback::Tree(ft_multicast::Tree::default()),
        ),
        (Feedback::Tree(ft_multicast::Tree::default()), Feedback::Ack),
    ] {
        let config = |f: &Feedback| {
            McastConfig::new(vec![
                group(&[1, 2, 3]).with_history(16).with_feedback(f.clone()),
            ])
        };
        let mut net = Net::new(vec![
            (NodeId(1), config(&a)),
            (NodeId(2), config(&b)),
            (NodeId(3), config(&a)),
        ]);
        net.sends(&[1, 2, 3], 30);
        net.run_until(Duration::from_secs(3));
        // Whatever arrives is checked; what cannot be agreed on is
        // counted, not guessed.
        for node in 1..=3 {
            for from in 1..=3 {
                net.delivered(node, from);
            }
        }
        // Members of the same mind deliver each other's first messages.
        assert!(!net.delivered(3, 1).is_empty(), "{a:?} / {b:?}");
    }
}

#[test]
fn a_member_with_a_smaller_payload_limit_ignores_larger_messages_and_counts_them() {
    let mut net = Net::new(vec![
        (
            NodeId(1),
            McastConfig::new(vec![group(&[1, 2]).with_history(64)]),
        ),
        (
            NodeId(2),
            McastConfig::new(vec![group(&[1, 2]).with_history(64).with_max_payload(100)]),
        ),
    ]);
    // Payloads of 16, 416 and 816 bytes in turn.
    net.sends(&[1], 9);
    net.run_until(Duration::from_secs(2));
    // The first (16 bytes) arrives; the second (416) is ignored, and
    // being in order, nothing after it is delivered.
    assert_eq!(net.delivered(2, 1), vec![1]);
    assert!(net.nodes[&NodeId(2)].stats().ignored > 0);
}

//! Causal multicast in the simulator: members keep sending while they
//! deliver, so messages have long causal pasts; on a lossy network with
//! crashes, restarts, a slow member and a healing partition, no member
//! delivers a message before its causal past, checked after every step.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use ft_core::{Incarnation, NodeId};
use ft_multicast::{
    GroupConfig, GroupId, McastConfig, McastEvent, Order, Ordered, OrderedEvent, OrderedInput,
};
use ft_sim::{FaultPlan, Sim, SimConfig, World};

use common::{hostile_then_calm, lossy, seeds};

const G: GroupId = GroupId(1);

/// A stream: a sender in one of its lives.
type Stream = (NodeId, Incarnation);

/// What a member (in one life) has delivered of each stream, and the
/// newest life it knows of each sender.
#[derive(Clone, Default)]
struct Seen {
    upto: BTreeMap<Stream, u64>,
    newest: BTreeMap<NodeId, Incarnation>,
}

impl Seen {
    fn note(&mut self, from: NodeId, life: Incarnation, upto: u64) {
        let u = self.upto.entry((from, life)).or_default();
        *u = (*u).max(upto);
        let n = self.newest.entry(from).or_insert(life);
        *n = (*n).max(life);
    }

    /// Whether message `upto` of `(k, life)` is delivered here, reported
    /// missed, or can never come (a later life of `k` is known).
    fn covers(&self, k: NodeId, life: Incarnation, upto: u64) -> bool {
        self.upto.get(&(k, life)).is_some_and(|&u| u >= upto)
            || self.newest.get(&k).is_some_and(|&n| n > life)
    }
}

#[derive(Default)]
struct Checker {
    seen_events: usize,
    /// Per member life, what it has delivered.
    members: BTreeMap<(NodeId, Incarnation), Seen>,
    /// Per message, its sender's deliveries when it was sent.
    past: BTreeMap<(NodeId, Incarnation, u64), Seen>,
    causal_checked: u64,
}

impl Checker {
    fn check(&mut self, w: &World<Ordered>) -> Result<(), String> {
        for o in &w.events()[self.seen_events..] {
            let me = (o.node, o.incarnation);
            match &o.event {
                OrderedEvent::Delivered {
                    from,
                    life,
                    seq,
                    order,
                    ..
                } => {
                    let seen = self.members.entry(me).or_default();
                    if *from == o.node {
                        // Sent just now: its causal past is what this
                        // member delivered before.
                        self.past.insert((*from, *life, *seq), seen.clone());
                    } else if *order == Order::Causal {
                        let Some(past) = self.past.get(&(*from, *life, *seq)) else {
                            return Err(format!("{} delivered an unsent {from}#{seq}", o.node));
                        };
                        for (&(k, klife), &upto) in &past.upto {
                            if k != o.node && !seen.covers(k, klife, upto) {
                                return Err(format!(
                                    "{} delivered {from}/{life:?}#{seq} before {k}/{klife:?}#{upto}, in its past",
                                    o.node
                                ));
                            }
                        }
                        self.causal_checked += 1;
                    }
                    let expected = seen.upto.get(&(*from, *life)).copied().unwrap_or(0) + 1;
                    if *from != o.node && *seq < expected {
                        return Err(format!(
                            "{} delivered {from}#{seq} twice or out of order",
                            o.node
                        ));
                    }
                    self.members.entry(me).or_default().note(*from, *life, *seq);
                }
                OrderedEvent::Core(McastEvent::Missed {
                    from, life, upto, ..
                }) => {
                    self.members
                        .entry(me)
                        .or_default()
                        .note(*from, *life, *upto);
                }
                _ => {}
            }
        }
        self.seen_events = w.events().len();
        Ok(())
    }
}

fn run(seed: u64, n: usize, plan: FaultPlan, until: Duration) -> (Sim<Ordered>, u64) {
    let config = McastConfig::new(vec![
        GroupConfig::new(G, (0..n as u64).map(NodeId)).with_history(16),
    ]);
    let mut s = Sim::new(SimConfig::new(seed, n), config, plan);
    let checked = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut checker = Checker::default();
    let out = checked.clone();
    s.invariant("causal order", move |w| {
        let r = checker.check(w);
        out.set(checker.causal_checked);
        r
    });
    // What waits for its causal past is bounded by the senders' rings:
    // nothing held is acknowledged, so no sender runs further ahead. Twice
    // over after a restart: a sender frees what a member's earlier life
    // acknowledged, so a restarted member may hold a ring's worth beyond
    // what it acknowledged itself (and what waits of a restarted sender's
    // old life sits beside its new life's ring).
    s.invariant("held back within the rings", move |w| {
        for (node, core) in w.cores() {
            if core.held() > 2 * 16 * (n - 1) {
                return Err(format!("{node} holds {} back: {core:?}", core.held()));
            }
        }
        Ok(())
    });
    for i in 0..n as u64 {
        for k in 0..150u64 {
            s.input(
                Duration::from_millis(5 + 17 * k + 3 * i),
                NodeId(i),
                OrderedInput::Send {
                    group: G,
                    token: k,
                    payload: Bytes::from(format!("{i}:{k}")),
                    // Mostly causal, some FIFO in between.
                    order: if k % 5 == 4 {
                        Order::Fifo
                    } else {
                        Order::Causal
                    },
                },
            );
        }
    }
    s.run_until(until).unwrap_or_else(|f| panic!("{f}"));
    let c = checked.get();
    (s, c)
}

#[test]
fn no_member_delivers_a_message_before_its_causal_past() {
    let (mut checked, mut crashes, mut held_most) = (0, 0, 0);
    for seed in 0..seeds(20) {
        let horizon = Duration::from_secs(3);
        let (s, c) = run(
            seed,
            5,
            hostile_then_calm(seed, 5, horizon),
            horizon + Duration::from_secs(3),
        );
        checked += c;
        crashes += s.stats().crashes;
        // Once every member is up and the network calm, nothing waits for
        // a past that will never come (a restarted member's, or one lost
        // with a restart).
        let w = s.world();
        assert!(
            w.node_ids().iter().all(|&n| w.is_up(n)),
            "seed {seed}: a member is down"
        );
        for (node, core) in w.cores() {
            assert_eq!(
                core.held(),
                0,
                "seed {seed}: {node} still holds messages back"
            );
        }
        held_most = held_most.max(
            s.world()
                .cores()
                .map(|(_, c)| c.held_most())
                .max()
                .unwrap_or(0),
        );
    }
    eprintln!(
        "{} seeds: {checked} causal deliveries checked against their pasts, {crashes} crashes, \
         at most {held_most} messages held back at once, all released by the end of every run",
        seeds(20)
    );
    // Messages really were held back for their past, and the runs had
    // crashes in them.
    assert!(held_most > 0 && crashes > 0 && checked > 10_000);
}

#[test]
fn without_faults_every_causal_message_is_delivered_everywhere() {
    let plan = FaultPlan {
        network: lossy(Duration::from_secs(3)),
        ..FaultPlan::default()
    };
    let (s, checked) = run(3, 4, plan, Duration::from_secs(6));
    // 4 members, 150 sends each, every one delivered at the 3 others
    // (4 in 5 of them causal).
    assert_eq!(checked, 4 * 3 * 120);
    assert!(s.world().cores().all(|(_, c)| c.held() == 0));
}

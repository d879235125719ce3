//! `Output::Multicast` in the simulator: each copy goes through the network
//! on its own, as a `Send` to its destination would, and each distinct
//! destination (the sender included) is sent one copy.

use std::time::{Duration, Instant};

use ft_core::{
    Counters, NodeId, Outbox, Output, PersistToken, Protocol, Recover, RecoveryContext,
    RecoveryError,
};
use ft_sim::{AdversaryCtx, FaultPlan, Sim, SimConfig, World};

/// Multicasts each input's number to the input's destinations; tells the
/// application of every number it receives, and from whom.
#[derive(Debug)]
struct Shout {
    out: Outbox<Shout>,
}

impl Protocol for Shout {
    type Message = u64;
    type Input = (Vec<NodeId>, u64);
    type Event = (NodeId, u64);
    type Timer = ();
    fn handle_message(&mut self, _: Instant, from: NodeId, n: u64) {
        self.out.received();
        self.out.event((from, n));
    }
    fn handle_input(&mut self, _: Instant, (to, n): (Vec<NodeId>, u64)) {
        self.out.multicast(to, n);
    }
    fn handle_timer(&mut self, _: Instant, _: ()) {}
    fn handle_persisted(&mut self, _: Instant, _: PersistToken) {}
    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }
    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl Recover for Shout {
    type Config = ();
    fn recover(_: &(), ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        Ok(Shout {
            out: Outbox::recovered(&ctx),
        })
    }
}

fn ids(v: &[u64]) -> Vec<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

/// A run of `nodes` nodes in which `from` multicasts `n` to `to` at once.
fn run(seed: u64, nodes: usize, plan: FaultPlan, from: u64, to: &[u64], n: u64) -> Sim<Shout> {
    let mut sim = Sim::<Shout>::new(SimConfig::new(seed, nodes), (), plan);
    sim.input(Duration::ZERO, NodeId(from), (ids(to), n));
    sim.run_until(Duration::from_millis(100)).unwrap();
    sim
}

/// Which nodes received what, from whom, in order.
fn received(w: &World<Shout>) -> Vec<(NodeId, NodeId, u64)> {
    w.events()
        .iter()
        .map(|o| (o.node, o.event.0, o.event.1))
        .collect()
}

#[test]
fn each_copy_of_a_multicast_is_lost_on_its_own() {
    let mut plan = FaultPlan::none();
    plan.network.loss = 0.5;
    let (mut partial, mut lost) = (0, 0);
    // For each destination: runs in which it got the message, and not.
    let mut got = [0u32; 6];
    let seeds = 40;
    for seed in 0..seeds {
        let sim = run(seed, 6, plan.clone(), 0, &[1, 2, 3, 4, 5], 7);
        let st = *sim.stats();
        assert_eq!(st.multicasts, 1, "{st:?}");
        assert_eq!(st.sent, 5, "one copy per destination: {st:?}");
        assert_eq!(st.lost + st.delivered, 5, "{st:?}");
        let receivers: Vec<NodeId> = received(sim.world()).iter().map(|r| r.0).collect();
        assert_eq!(receivers.len() as u64, st.delivered);
        for r in &receivers {
            got[r.0 as usize] += 1;
        }
        if !receivers.is_empty() && receivers.len() < 5 {
            partial += 1;
        }
        lost += st.lost;
        // One message sent, however many copies.
        assert_eq!(
            sim.world()
                .core(NodeId(0))
                .unwrap()
                .counters()
                .messages_sent,
            1
        );
    }
    assert!(lost > 0, "the plan lost nothing");
    assert!(
        partial > 0,
        "in no run did some destinations get it and others not: the copies share their fate"
    );
    for (node, &n) in got.iter().enumerate().skip(1) {
        assert!(
            0 < n && n < seeds as u32,
            "n{node} got it in {n} of {seeds} runs"
        );
    }
    assert_eq!(got[0], 0, "the sender was not listed");
}

#[test]
fn each_copy_of_a_multicast_is_duplicated_on_its_own() {
    let mut plan = FaultPlan::none();
    plan.network.duplicate = 0.5;
    let mut mixed = 0;
    for seed in 0..20 {
        let sim = run(seed, 4, plan.clone(), 0, &[1, 2, 3], 5);
        let st = *sim.stats();
        assert_eq!(st.delivered, 3 + st.duplicated, "{st:?}");
        let copies: Vec<usize> = (1..4)
            .map(|i| {
                received(sim.world())
                    .iter()
                    .filter(|r| r.0 == NodeId(i))
                    .count()
            })
            .collect();
        assert!(copies.iter().all(|&c| c == 1 || c == 2), "{copies:?}");
        if copies.contains(&1) && copies.contains(&2) {
            mixed += 1;
        }
    }
    assert!(
        mixed > 0,
        "in no run was one destination's copy duplicated and another's not"
    );
}

#[test]
fn each_distinct_destination_gets_one_copy_the_sender_included() {
    let sim = run(1, 6, FaultPlan::none(), 2, &[0, 2, 0, 4, 2], 9);
    let mut got = received(sim.world());
    got.sort();
    assert_eq!(
        got,
        vec![
            (NodeId(0), NodeId(2), 9),
            (NodeId(2), NodeId(2), 9),
            (NodeId(4), NodeId(2), 9),
        ]
    );
    let st = sim.stats();
    assert_eq!((st.multicasts, st.sent, st.delivered), (1, 3, 3), "{st:?}");

    // An empty multicast is counted, and sends nothing.
    let sim = run(1, 3, FaultPlan::none(), 0, &[], 9);
    let st = sim.stats();
    assert_eq!((st.multicasts, st.sent, st.delivered), (1, 0, 0), "{st:?}");
}

#[test]
fn a_partition_cuts_the_copies_that_cross_it_only() {
    let mut plan = FaultPlan::none();
    plan.partition(
        vec![ids(&[0, 1, 2]), ids(&[3, 4, 5])],
        Duration::ZERO,
        Duration::from_secs(1),
    );
    let sim = run(3, 6, plan, 0, &[1, 3, 5, 0], 4);
    let mut got: Vec<NodeId> = received(sim.world()).iter().map(|r| r.0).collect();
    got.sort();
    assert_eq!(got, ids(&[0, 1]));
    let st = sim.stats();
    assert_eq!((st.sent, st.partitioned, st.delivered), (4, 2, 2), "{st:?}");
}

#[test]
fn a_byzantine_node_s_strategy_sees_each_copy_as_a_send() {
    let mut sim = Sim::<Shout>::new(SimConfig::new(4, 4), (), FaultPlan::none());
    sim.set_adversary(
        NodeId(0),
        |ctx: &mut AdversaryCtx<'_, u64>, to: NodeId, n: u64| ctx.send(to, n + 100 * to.0),
    );
    sim.input(Duration::ZERO, NodeId(0), (ids(&[3, 1, 3]), 7));
    sim.run_until(Duration::from_millis(100)).unwrap();
    let mut got = received(sim.world());
    got.sort();
    assert_eq!(
        got,
        vec![(NodeId(1), NodeId(0), 107), (NodeId(3), NodeId(0), 307)]
    );
    let st = sim.stats();
    assert_eq!(
        (st.multicasts, st.suppressed_by_adversary, st.forged),
        (1, 2, 2),
        "{st:?}"
    );
}

/// A caller's link model: the copies of one multicast are lost together
/// when the model decides by the frame (loss correlated along a tree), and
/// its delays add to the plan's.
#[test]
fn a_link_model_loses_copies_together_and_delays_them() {
    // Nodes 1-2 sit under one inner link, 3-4 under another; the first
    // inner link loses every frame that carries an odd number.
    let model = |_: Duration, _: NodeId, to: NodeId, frame: &[u8]| {
        // The frame's payload is the number, little-endian, after the
        // 7-byte frame header.
        let odd = frame
            .get(ft_core::frame::HEADER_LEN)
            .is_some_and(|b| b % 2 == 1);
        match to.0 {
            1 | 2 if odd => None,
            1 | 2 => Some(Duration::from_millis(5)),
            _ => Some(Duration::from_millis(10)),
        }
    };
    let mut sim = Sim::<Shout>::new(SimConfig::new(3, 5), (), FaultPlan::none());
    sim.set_link_model(model);
    for n in 1..=4 {
        sim.input(Duration::ZERO, NodeId(0), (ids(&[1, 2, 3, 4]), n));
    }
    sim.run_until(Duration::from_millis(8)).unwrap();
    // At 8 ms only the near subtree has its even numbers; nothing odd.
    let mut early = received(sim.world());
    early.sort();
    assert_eq!(
        early,
        vec![
            (NodeId(1), NodeId(0), 2),
            (NodeId(1), NodeId(0), 4),
            (NodeId(2), NodeId(0), 2),
            (NodeId(2), NodeId(0), 4),
        ]
    );
    sim.run_until(Duration::from_millis(100)).unwrap();
    let got = received(sim.world());
    assert_eq!(got.len(), 4 + 8, "the far subtree gets all four");
    assert_eq!(sim.stats().model_lost, 4);
    assert_eq!(sim.stats().lost, 4);
}

//! The reliable channel in the simulator: exactly-once in-order delivery
//! over a network that loses, duplicates, reorders, delays and corrupts;
//! restarts of receivers and senders; a partition; bounded memory under a
//! flood. Invariants are checked after every step.
//!
//! Every payload names its stream: `(sender, receiver, epoch, k)`, where
//! the epoch is the sender's life the message was submitted in (the test
//! schedules no input while a node is down, so it knows) and `k` counts
//! that life's messages to that receiver from 0.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::{Incarnation, NodeId};
use ft_rpc::channel::{RejectReason, Reliable, ReliableConfig, ReliableEvent, ReliableInput};
use ft_sim::{Delay, FaultPlan, Sim, SimConfig, World, self_check};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Msg {
    from: NodeId,
    to: NodeId,
    epoch: u64,
    k: u64,
}

impl Msg {
    fn bytes(self) -> Bytes {
        let mut b = BytesMut::with_capacity(32);
        b.put_u64_le(self.from.0);
        b.put_u64_le(self.to.0);
        b.put_u64_le(self.epoch);
        b.put_u64_le(self.k);
        b.freeze()
    }

    fn parse(mut b: Bytes) -> Msg {
        assert_eq!(b.len(), 32, "not a test payload");
        Msg {
            from: NodeId(b.get_u64_le()),
            to: NodeId(b.get_u64_le()),
            epoch: b.get_u64_le(),
            k: b.get_u64_le(),
        }
    }
}

/// Schedules the stream `from -> to` of `epoch`: `count` messages, one
/// every `every`, from `start`.
fn stream(
    sim: &mut Sim<Reliable>,
    from: NodeId,
    to: NodeId,
    epoch: u64,
    count: u64,
    start: Duration,
    every: Duration,
) {
    for k in 0..count {
        let payload = Msg { from, to, epoch, k }.bytes();
        sim.input(
            start + every * k as u32,
            from,
            ReliableInput::Send { to, payload },
        );
    }
}

/// The lossy network of the subject: 10% loss, 5% duplicates, 10% of
/// messages held back up to 20 ms (so later ones overtake them), 1% of
/// frames with a flipped bit (the CRC drops them), 1–5 ms delay.
fn lossy() -> FaultPlan {
    let mut plan = FaultPlan::none();
    plan.network.delay = Delay::Uniform {
        min: MS,
        max: 5 * MS,
    };
    plan.network.loss = 0.10;
    plan.network.duplicate = 0.05;
    plan.network.reorder = 0.10;
    plan.network.reorder_window = 20 * MS;
    plan.network.corrupt = 0.01;
    plan
}

/// What the lives of a receiver delivered of one stream.
struct History {
    /// The latest life that delivered from it,
    life: Incarnation,
    /// and the highest `k` that life delivered.
    highest: u64,
    /// The highest `k` all earlier lives delivered.
    before: Option<u64>,
}

/// Delivery safety, checked after every step on the events that appeared
/// since the last step:
/// - a payload arrives at the node it was sent to, from its sender;
/// - within one life of a receiver, the messages of one sender epoch are
///   delivered in order with no duplicate and no gap: the first is 0 in
///   the receiver's first life (nothing can have been skipped), and above
///   everything an earlier life delivered in later ones;
/// - within one life of a receiver, a sender's epochs never go back;
///
/// and memory bounds, on every core: in flight ≤ window, queued ≤ send
/// queue, reorder buffer below its size.
fn install_invariants(sim: &mut Sim<Reliable>, config: &ReliableConfig) {
    let mut cursor = 0;
    // (receiver, receiver life, sender, epoch) -> last k delivered
    let mut last: BTreeMap<(NodeId, Incarnation, NodeId, u64), u64> = BTreeMap::new();
    let mut earlier: BTreeMap<(NodeId, NodeId, u64), History> = BTreeMap::new();
    let mut epochs: BTreeMap<(NodeId, Incarnation, NodeId), u64> = BTreeMap::new();
    sim.invariant(
        "in order, no duplicates, no gaps, per sender epoch and receiver life",
        move |w: &World<Reliable>| {
            for ev in &w.events()[cursor..] {
                let ReliableEvent::Delivered { from, payload } = &ev.event else {
                    continue;
                };
                let (to, life) = (ev.node, ev.incarnation);
                let m = Msg::parse(payload.clone());
                if (m.from, m.to) != (*from, to) {
                    return Err(format!("{m:?} delivered at {to} from {from}"));
                }
                let epoch = epochs.entry((to, life, m.from)).or_insert(m.epoch);
                if m.epoch < *epoch {
                    return Err(format!("{m:?} after epoch {epoch} at {to} life {life}"));
                }
                *epoch = m.epoch;
                let hist = earlier.entry((to, m.from, m.epoch)).or_insert(History {
                    life,
                    highest: m.k,
                    before: None,
                });
                if hist.life != life {
                    // A new life of the receiver: roll the previous one in.
                    hist.before = hist.before.max(Some(hist.highest));
                    hist.life = life;
                }
                match last.get(&(to, life, m.from, m.epoch)) {
                    Some(&prev) if m.k != prev + 1 => {
                        return Err(format!("{m:?} after k = {prev} in life {life}"));
                    }
                    Some(_) => {}
                    None if life == Incarnation::FIRST && m.k != 0 => {
                        return Err(format!("{m:?} is the first delivery of its stream"));
                    }
                    None => {
                        if let Some(before) = hist.before
                            && m.k <= before
                        {
                            return Err(format!(
                                "{m:?} delivered again: an earlier life delivered up to {before}"
                            ));
                        }
                    }
                }
                last.insert((to, life, m.from, m.epoch), m.k);
                hist.highest = hist.highest.max(m.k);
            }
            cursor = w.events().len();
            Ok(())
        },
    );
    let (window, queue, reorder) = (config.window, config.send_queue, config.reorder_buffer);
    sim.invariant("memory stays bounded", move |w: &World<Reliable>| {
        for (id, core) in w.cores() {
            for peer in core.peers() {
                let st = core.peer_stats(peer).unwrap();
                if st.in_flight > window || st.queued > queue || st.reorder_buffered >= reorder {
                    return Err(format!("{id} -> {peer}: {st:?}"));
                }
            }
        }
        Ok(())
    });
}

fn sim(seed: u64, n: usize, config: ReliableConfig, plan: FaultPlan) -> Sim<Reliable> {
    let mut s = Sim::new(SimConfig::new(seed, n), config.clone(), plan);
    install_invariants(&mut s, &config);
    s
}

/// Every delivery of the run, by stream.
fn deliveries(w: &World<Reliable>) -> BTreeMap<(NodeId, NodeId, u64), Vec<(Incarnation, u64)>> {
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for ev in w.events() {
        if let ReliableEvent::Delivered { payload, .. } = &ev.event {
            let m = Msg::parse(payload.clone());
            out.entry((m.from, m.to, m.epoch))
                .or_default()
                .push((ev.incarnation, m.k));
        }
    }
    out
}

/// The `PeerRestarted` reports of the run: (reporter, peer, new
/// incarnation, unacked messages).
fn restarts(w: &World<Reliable>) -> Vec<(NodeId, NodeId, Incarnation, Vec<Msg>)> {
    w.events()
        .iter()
        .filter_map(|ev| match &ev.event {
            ReliableEvent::PeerRestarted {
                peer,
                incarnation,
                unacked,
            } => Some((
                ev.node,
                *peer,
                *incarnation,
                unacked.iter().cloned().map(Msg::parse).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn retransmissions(w: &World<Reliable>) -> u64 {
    w.cores()
        .flat_map(|(_, c)| c.peers().map(move |p| c.peer_stats(p).unwrap()))
        .map(|s| s.retransmissions)
        .sum()
}

#[test]
fn every_message_arrives_once_and_in_order_over_a_lossy_network() {
    const SEEDS: u64 = 100;
    const PER_STREAM: u64 = 25;
    let (mut lost, mut duplicated, mut reordered, mut crc) = (0, 0, 0, 0);
    let (mut resent, mut fast, mut messages, mut checks) = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        let n = 3 + (seed % 3) as usize;
        let config = ReliableConfig::with_size(n);
        let mut s = sim(seed, n, config, lossy());
        for from in 0..n as u64 {
            for to in (0..n as u64).filter(|&to| to != from) {
                // Staggered so streams interleave.
                let start = MS * (from * 7 + to) as u32;
                stream(
                    &mut s,
                    NodeId(from),
                    NodeId(to),
                    0,
                    PER_STREAM,
                    start,
                    4 * MS,
                );
            }
        }
        let report = s.run_until(120 * SECOND).unwrap_or_else(|f| panic!("{f}"));
        let w = s.world();
        // Liveness: everything sent was delivered, exactly the stream.
        let got = deliveries(w);
        assert_eq!(got.len(), n * (n - 1), "seed {seed}");
        for (key, ks) in &got {
            let ks: Vec<u64> = ks.iter().map(|&(_, k)| k).collect();
            assert_eq!(
                ks,
                (0..PER_STREAM).collect::<Vec<_>>(),
                "seed {seed} {key:?}"
            );
        }
        assert!(restarts(w).is_empty(), "seed {seed}");
        for (id, core) in w.cores() {
            assert!(core.is_idle(), "seed {seed}: {id} still has work");
            fast += core
                .peers()
                .map(|p| core.peer_stats(p).unwrap().fast_retransmissions)
                .sum::<u64>();
        }
        let st = report.stats;
        assert!(st.lost > 0, "seed {seed}: the loss happened");
        lost += st.lost;
        duplicated += st.duplicated;
        reordered += st.reordered;
        crc += st.crc_dropped;
        checks += st.invariant_checks;
        resent += retransmissions(w);
        messages += (n * (n - 1)) as u64 * PER_STREAM;
    }
    println!(
        "{SEEDS} seeds, 3-5 nodes, {messages} messages: {lost} lost, {duplicated} duplicated, \
         {reordered} reordered, {crc} dropped by CRC; {resent} retransmissions ({fast} fast); \
         {checks} invariant checks"
    );
    assert!(duplicated > 0 && reordered > 0 && crc > 0);
    assert!(resent > 0 && fast > 0);
}

#[test]
fn a_restarted_receiver_gets_a_fresh_stream_and_the_sender_learns_what_was_unacked() {
    const PER_STREAM: u64 = 150;
    let (crash, back) = (SECOND, 3 * SECOND);
    let mut reported = 0;
    for seed in 0..30 {
        let mut plan = lossy();
        plan.crash(NodeId(1), crash, Some(back - crash));
        let config = ReliableConfig::with_size(3);
        let mut s = sim(seed, 3, config, plan);
        // n0 and n2 send to n1 straight through its downtime.
        for from in [0, 2] {
            stream(
                &mut s,
                NodeId(from),
                NodeId(1),
                0,
                PER_STREAM,
                MS * from as u32,
                20 * MS,
            );
        }
        s.run_until(120 * SECOND).unwrap_or_else(|f| panic!("{f}"));
        let w = s.world();
        assert_eq!((w.stats().crashes, w.stats().restarts), (1, 1));
        let got = deliveries(w);
        let reports = restarts(w);
        for from in [NodeId(0), NodeId(2)] {
            // The sender was told, once, with the messages it had in flight.
            let told: Vec<_> = reports
                .iter()
                .filter(|r| r.0 == from && r.1 == NodeId(1))
                .collect();
            assert_eq!(told.len(), 1, "seed {seed}: {reports:?}");
            let (_, _, inc, unacked) = told[0];
            assert_eq!(*inc, Incarnation(1));
            assert!(!unacked.is_empty(), "seed {seed}: messages were in flight");
            reported += unacked.len();
            let ks = &got[&(from, NodeId(1), 0)];
            let old: BTreeSet<u64> = ks
                .iter()
                .filter(|d| d.0 == Incarnation(0))
                .map(|d| d.1)
                .collect();
            let new: Vec<u64> = ks
                .iter()
                .filter(|d| d.0 == Incarnation(1))
                .map(|d| d.1)
                .collect();
            let unacked: BTreeSet<u64> = unacked.iter().map(|m| m.k).collect();
            // The unacked messages are consecutive, right after what the
            // old life had acknowledged; the new life's stream picks up
            // right after them and runs to the end, in order.
            let first_unacked = *unacked.first().unwrap();
            let last_unacked = *unacked.last().unwrap();
            assert_eq!(unacked.len() as u64, last_unacked - first_unacked + 1);
            assert!((0..first_unacked).all(|k| old.contains(&k)), "seed {seed}");
            assert_eq!(
                new,
                (last_unacked + 1..PER_STREAM).collect::<Vec<_>>(),
                "seed {seed}"
            );
            // Nothing was delivered twice across the restart.
            assert!(new.iter().all(|k| !old.contains(k)));
        }
        assert!(w.cores().all(|(_, c)| c.is_idle()));
    }
    println!("receiver restart, 30 seeds: {reported} messages reported unacked");
}

#[test]
fn a_restarted_sender_starts_a_new_stream_that_is_accepted_from_its_start() {
    const BEFORE: u64 = 40;
    const AFTER: u64 = 60;
    let (crash, back) = (SECOND, 2 * SECOND);
    for seed in 0..30 {
        let mut plan = lossy();
        plan.crash(NodeId(0), crash, Some(back - crash));
        let config = ReliableConfig::with_size(2);
        let mut s = sim(seed, 2, config, plan);
        // Epoch 0 ends (its last sends at ~ 0.98 s) before the crash;
        // epoch 1 starts after the restart.
        stream(&mut s, NodeId(0), NodeId(1), 0, BEFORE, 200 * MS, 20 * MS);
        stream(
            &mut s,
            NodeId(0),
            NodeId(1),
            1,
            AFTER,
            back + 10 * MS,
            20 * MS,
        );
        // And n1 talks to n0 throughout, so it has a stream to reset too.
        stream(&mut s, NodeId(1), NodeId(0), 0, 150, MS, 20 * MS);
        s.run_until(120 * SECOND).unwrap_or_else(|f| panic!("{f}"));
        let w = s.world();
        assert_eq!(w.stats().restarts, 1);
        let got = deliveries(w);
        // The old life's messages arrived as a prefix (what was in flight
        // at the crash died with it); the new life's all arrived, from 0.
        let old: Vec<u64> = got[&(NodeId(0), NodeId(1), 0)]
            .iter()
            .map(|d| d.1)
            .collect();
        assert_eq!(old, (0..old.len() as u64).collect::<Vec<_>>());
        let new: Vec<u64> = got[&(NodeId(0), NodeId(1), 1)]
            .iter()
            .map(|d| d.1)
            .collect();
        assert_eq!(new, (0..AFTER).collect::<Vec<_>>(), "seed {seed}");
        // n1 noticed, and n0's new life received n1's stream afresh.
        let reports = restarts(w);
        assert!(
            reports
                .iter()
                .any(|r| r.0 == NodeId(1) && r.1 == NodeId(0) && r.2 == Incarnation(1)),
            "seed {seed}: {reports:?}"
        );
        let back_then: Vec<(Incarnation, u64)> = got[&(NodeId(1), NodeId(0), 0)].clone();
        assert!(
            back_then.iter().any(|d| d.0 == Incarnation(1)),
            "seed {seed}"
        );
    }
}

#[test]
fn messages_queue_during_a_partition_and_drain_after_the_heal() {
    const PER_STREAM: u64 = 100;
    let (cut, heal) = (200 * MS, 4 * SECOND);
    for seed in 0..20 {
        let mut plan = lossy();
        plan.partition(
            vec![vec![NodeId(0), NodeId(1)], vec![NodeId(2), NodeId(3)]],
            cut,
            heal,
        );
        let config = ReliableConfig::with_size(4);
        let mut s = sim(seed, 4, config, plan);
        for from in 0..4 {
            for to in (0..4).filter(|&to| to != from) {
                stream(&mut s, NodeId(from), NodeId(to), 0, PER_STREAM, MS, 10 * MS);
            }
        }
        s.run_until(heal - MS).unwrap_or_else(|f| panic!("{f}"));
        // Across the cut, messages wait: a full window in flight (64) and
        // the rest of what was not through before the cut queued.
        let n0 = s.world().core(NodeId(0)).unwrap();
        let across = n0.peer_stats(NodeId(2)).unwrap();
        assert_eq!(across.in_flight, 64, "seed {seed}");
        assert!(across.queued > 0 && across.in_flight + across.queued <= PER_STREAM as usize);
        assert!(across.timeouts > 0);
        // On the same side, the stream flowed: nothing ever had to queue.
        let beside = n0.peer_stats(NodeId(1)).unwrap();
        assert_eq!((beside.segments_sent, beside.queued), (PER_STREAM, 0));
        s.run_until(300 * SECOND).unwrap_or_else(|f| panic!("{f}"));
        let w = s.world();
        assert!(w.stats().partitioned > 0 && w.stats().heals == 1);
        for (key, ks) in deliveries(w) {
            let ks: Vec<u64> = ks.iter().map(|d| d.1).collect();
            assert_eq!(
                ks,
                (0..PER_STREAM).collect::<Vec<_>>(),
                "seed {seed} {key:?}"
            );
        }
        assert!(restarts(w).is_empty());
        assert!(w.cores().all(|(_, c)| c.is_idle()));
    }
}

#[test]
fn a_flood_is_met_with_backpressure_and_memory_stays_bounded() {
    let config = ReliableConfig {
        window: 16,
        send_queue: 100,
        ..ReliableConfig::with_size(2)
    };
    let mut plan = FaultPlan::none();
    // n1 is gone for good: nothing is ever acknowledged.
    plan.crash(NodeId(1), MS, None);
    let mut s = sim(1, 2, config, plan);
    for k in 0..1000 {
        let payload = Msg {
            from: NodeId(0),
            to: NodeId(1),
            epoch: 0,
            k,
        }
        .bytes();
        s.input(
            10 * MS,
            NodeId(0),
            ReliableInput::Send {
                to: NodeId(1),
                payload,
            },
        );
    }
    s.run_until(3600 * SECOND).unwrap_or_else(|f| panic!("{f}"));
    let w = s.world();
    let rejected: Vec<u64> = w
        .events()
        .iter()
        .map(|ev| match &ev.event {
            ReliableEvent::SendRejected {
                to,
                payload,
                reason: RejectReason::QueueFull,
            } if *to == NodeId(1) => Msg::parse(payload.clone()).k,
            e => panic!("{e:?}"),
        })
        .collect();
    // The first 16 fill the window, the next 100 the queue, the rest are
    // refused, in order.
    assert_eq!(rejected, (116..1000).collect::<Vec<_>>());
    let st = w.core(NodeId(0)).unwrap().peer_stats(NodeId(1)).unwrap();
    assert_eq!((st.in_flight, st.queued, st.rejected), (16, 100, 884));
    // An hour of retrying a dead peer costs one window per RTO, backed off
    // to 60 s: a bounded trickle, not a storm.
    assert_eq!(st.rto, 60 * SECOND);
    assert!(st.timeouts < 70, "{st:?}");
    assert!(st.retransmissions <= 16 * st.timeouts, "{st:?}");
    println!("flood of 1000 to a dead peer: {st:?}");
}

/// One node crashes at a time that depends on the seed, for a time that
/// depends on the seed, while every node streams to every other: safety
/// throughout (the invariants), and at the end nothing is silently lost:
/// every message of a sender's current life was delivered by some life of
/// its receiver, or handed back to the sender in a `PeerRestarted`.
/// Returns (crashes, messages reported unacked, retransmissions).
fn crash_anywhere(seeds: std::ops::Range<u64>) -> (u64, u64, u64) {
    const PER_STREAM: u64 = 60;
    let (mut crashes, mut reported, mut resent) = (0, 0, 0);
    for seed in seeds {
        let n = 3 + (seed % 3) as usize;
        let victim = NodeId(seed % n as u64);
        // Half a millisecond off the inputs' whole milliseconds, so no
        // input coincides with the crash or the restart.
        let crash = MS * (300 + (seed * 37 % 700) as u32) + MS / 2;
        let back = crash + MS * (50 + (seed * 53 % 1400) as u32);
        let mut plan = lossy();
        plan.crash(victim, crash, Some(back - crash));
        let mut s = sim(seed, n, ReliableConfig::with_size(n), plan);
        // (sender, receiver, epoch) -> ks scheduled
        let mut sent: BTreeMap<(NodeId, NodeId, u64), Vec<u64>> = BTreeMap::new();
        for from in (0..n as u64).map(NodeId) {
            for to in (0..n as u64).map(NodeId).filter(|&to| to != from) {
                for i in 0..PER_STREAM {
                    let at = MS * (1 + from.0 * 3 + to.0) as u32 + 10 * MS * i as u32;
                    let epoch = match from == victim {
                        false => 0,
                        true if at < crash => 0,
                        true if at > back => 1,
                        true => continue,
                    };
                    let ks = sent.entry((from, to, epoch)).or_default();
                    let k = ks.len() as u64;
                    ks.push(k);
                    let payload = Msg { from, to, epoch, k }.bytes();
                    s.input(at, from, ReliableInput::Send { to, payload });
                }
            }
        }
        s.run_until(600 * SECOND).unwrap_or_else(|f| panic!("{f}"));
        let w = s.world();
        crashes += w.stats().crashes;
        resent += retransmissions(w);
        assert!(w.cores().all(|(_, c)| c.is_idle()), "seed {seed}");
        let got = deliveries(w);
        let reports = restarts(w);
        reported += reports.iter().map(|r| r.3.len() as u64).sum::<u64>();
        for ((from, to, epoch), ks) in &sent {
            if *epoch != w.incarnation(*from).0 {
                continue; // died with the old life: only a prefix is owed
            }
            let delivered: BTreeSet<u64> = got
                .get(&(*from, *to, *epoch))
                .map(|d| d.iter().map(|x| x.1).collect())
                .unwrap_or_default();
            let handed_back: BTreeSet<u64> = reports
                .iter()
                .filter(|r| r.0 == *from && r.1 == *to)
                .flat_map(|r| r.3.iter().filter(|m| m.epoch == *epoch).map(|m| m.k))
                .collect();
            for k in ks {
                assert!(
                    delivered.contains(k) || handed_back.contains(k),
                    "seed {seed}: {from} -> {to} epoch {epoch} k {k} silently lost"
                );
            }
        }
    }
    (crashes, reported, resent)
}

#[test]
fn nothing_is_silently_lost_when_any_node_crashes_at_any_time() {
    let (crashes, reported, resent) = crash_anywhere(0..40);
    println!("40 seeds: {crashes} crashes, {reported} reported unacked, {resent} retransmissions");
    assert_eq!(crashes, 40);
    assert!(reported > 0 && resent > 0);
}

/// The long sweep: `cargo test --release -p ft-rpc --test channel --
/// --ignored`.
#[test]
#[ignore]
fn sweep_of_crashes_anywhere() {
    let started = std::time::Instant::now();
    let (crashes, reported, resent) = crash_anywhere(0..2000);
    println!(
        "2000 seeds: {crashes} crashes, {reported} reported unacked, {resent} retransmissions, {:.1?}",
        started.elapsed()
    );
}

#[test]
fn runs_are_deterministic() {
    let make = || {
        let mut plan = lossy();
        plan.crash(NodeId(2), SECOND, Some(SECOND));
        let mut s = sim(7, 4, ReliableConfig::with_size(4), plan);
        for from in 0..4 {
            for to in (0..4).filter(|&to| to != from) {
                if from != 2 {
                    stream(&mut s, NodeId(from), NodeId(to), 0, 50, MS, 30 * MS);
                }
            }
        }
        s
    };
    self_check(make, 60 * SECOND).unwrap();
}

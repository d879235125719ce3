//! Fault plans shared by the simulation tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Omission, Protocol};
use ft_multicast::{Feedback, GroupConfig, McastConfig, McastEvent, McastInput, Multicast};
use ft_sim::{
    Delay, FaultPlan, NetworkFaults, OmissionWindow, RandomCrashes, Sim, SimConfig, World,
};

/// Loss, duplication, reordering and corruption on every link, until
/// `calm`.
pub(crate) fn lossy(calm: Duration) -> NetworkFaults {
    NetworkFaults {
        delay: Delay::Uniform {
            min: Duration::from_micros(500),
            max: Duration::from_millis(3),
        },
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.1,
        reorder_window: Duration::from_millis(10),
        corrupt: 0.005,
        calm_after: Some(calm),
    }
}

/// Every fault but value failures (a wrong payload inside a valid frame is
/// not a fault reliable multicast can see): crashes and restarts of one
/// member at a time (not nodes 0 and 1), a slow member, send and receive
/// omission windows, a partition that heals, on a lossy network.
pub(crate) fn hostile(n: usize, horizon: Duration, calm: Duration) -> FaultPlan {
    let mut plan = FaultPlan {
        network: lossy(calm),
        ..FaultPlan::default()
    };
    plan.node(NodeId(2)).slow = Some(Delay::Exponential {
        min: Duration::ZERO,
        mean: Duration::from_millis(20),
    });
    plan.node(NodeId(2)).omission_windows.push(OmissionWindow {
        from: horizon / 5,
        until: horizon / 5 + horizon / 20,
        kind: Omission::Send,
    });
    plan.node(NodeId(3)).omission_windows.push(OmissionWindow {
        from: horizon * 3 / 5,
        until: horizon * 3 / 5 + horizon / 20,
        kind: Omission::Receive,
    });
    let (a, b): (Vec<_>, Vec<_>) = (0..n as u64).map(NodeId).partition(|n| n.0 % 2 == 0);
    plan.partition(vec![a, b], horizon * 2 / 5, horizon / 2);
    plan.random_crashes = Some(RandomCrashes {
        mean_interval: horizon / 6,
        downtime: Some(Delay::Uniform {
            min: Duration::from_millis(50),
            max: Duration::from_millis(500),
        }),
        max_down: 1,
        spare: vec![NodeId(0), NodeId(1)],
    });
    plan
}

/// [`hostile`], but with crashes that stop at `horizon`: one member at a
/// time among nodes 2.. crashes about every `horizon / 6` and restarts
/// 50–500 ms later (drawn from `seed`), so every member is up once the
/// faults end and liveness can be asserted on every run.
pub(crate) fn hostile_then_calm(seed: u64, n: usize, horizon: Duration) -> FaultPlan {
    let mut plan = hostile(n, horizon, horizon);
    plan.random_crashes = None;
    // A small generator of our own: the plan is built before the run.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |below: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % below
    };
    let mut at = Duration::ZERO;
    loop {
        at += Duration::from_millis(1 + next(horizon.as_millis() as u64 / 3));
        let down = Duration::from_millis(50 + next(450));
        if at + down >= horizon {
            return plan;
        }
        let node = NodeId(2 + next(n as u64 - 2));
        plan.crash(node, at, Some(down));
        at += down;
    }
}

/// Seeds per sweep: `FT_MCAST_SEEDS` if set (CI's release sweep sets
/// hundreds), else `default`.
pub(crate) fn seeds(default: u64) -> u64 {
    std::env::var("FT_MCAST_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Where a stream is delivered: the receiver's life, the sender and the
/// sender's life.
type StreamKey = (NodeId, Incarnation, NodeId, Incarnation);

/// The invariants, checked after every step over the events emitted since
/// the last step.
#[derive(Default)]
pub(crate) struct Checker {
    seen: usize,
    /// What each sender's own delivery of (life, seq) carried.
    sent: BTreeMap<(NodeId, Incarnation, u64), Bytes>,
    /// Per stream, the last message delivered and the last reported missed.
    streams: BTreeMap<StreamKey, (u64, u64)>,
}

impl Checker {
    pub(crate) fn check(&mut self, w: &World<Multicast>) -> Result<(), String> {
        for o in &w.events()[self.seen..] {
            match &o.event {
                McastEvent::Delivered {
                    group,
                    from,
                    life,
                    seq,
                    payload,
                } => {
                    if *group != ft_multicast::GroupId(1) {
                        return Err(format!("{} delivered in unknown {group}", o.node));
                    }
                    if *from == o.node {
                        if life != &o.incarnation {
                            return Err(format!(
                                "{} delivered its own message of another life",
                                o.node
                            ));
                        }
                        self.sent.insert((*from, *life, *seq), payload.clone());
                    }
                    // No invented delivery: what the sender sent under that
                    // number, byte for byte.
                    match self.sent.get(&(*from, *life, *seq)) {
                        Some(p) if p == payload => {}
                        other => {
                            return Err(format!(
                                "{} delivered {from}/{life:?}#{seq} = {payload:?}, sent {other:?}",
                                o.node
                            ));
                        }
                    }
                    // FIFO, no duplicate, no silent hole: the next message
                    // after the last delivered or reported missed.
                    let key = (o.node, o.incarnation, *from, *life);
                    let (last, missed) = self.streams.entry(key).or_default();
                    let expected = (*last).max(*missed) + 1;
                    if *seq != expected {
                        return Err(format!(
                            "{} (life {:?}) delivered {from}/{life:?}#{seq}, expected #{expected}",
                            o.node, o.incarnation
                        ));
                    }
                    *last = *seq;
                }
                McastEvent::Missed {
                    from, life, upto, ..
                } => {
                    let key = (o.node, o.incarnation, *from, *life);
                    let (last, missed) = self.streams.entry(key).or_default();
                    if *upto <= (*last).max(*missed) {
                        return Err(format!(
                            "{} reported {from}/{life:?} missed up to #{upto}, but was past it",
                            o.node
                        ));
                    }
                    *missed = *upto;
                }
                _ => {}
            }
        }
        self.seen = w.events().len();
        // Buffers within their bounds.
        for (node, core) in w.cores() {
            let held = core.held();
            let most = core.max_history();
            if held.history > most || held.pending_per_stream > most {
                return Err(format!("{node} holds {held:?}, over {most}"));
            }
        }
        Ok(())
    }
}

/// Every message sent by a sender that never crashed was delivered by
/// every member that never crashed. Returns how many deliveries that is.
pub(crate) fn all_delivered(w: &World<Multicast>) -> Result<usize, String> {
    match all_accounted(w)? {
        (delivered, 0) => Ok(delivered),
        (_, lost) => Err(format!("{lost} messages reported missed, not delivered")),
    }
}

/// Once every member is up and the network calm, every sender's history
/// drains: each message was acknowledged by every member (a lost last
/// acknowledgement is sent again when the sender announces). Returns false
/// when some member is down.
pub(crate) fn all_freed(w: &World<Multicast>) -> Result<bool, String> {
    if !w.node_ids().iter().all(|&n| w.is_up(n)) {
        return Ok(false);
    }
    for (node, core) in w.cores() {
        if core.held().history != 0 {
            return Err(format!("{node} still holds {:?}", core.held()));
        }
    }
    Ok(true)
}

/// Every message sent by a sender that never crashed is, at every member
/// that never crashed, delivered or reported missed: with bounded
/// histories some may be forgotten, but never silently.
pub(crate) fn all_accounted(w: &World<Multicast>) -> Result<(usize, usize), String> {
    let stayed: Vec<NodeId> = w
        .node_ids()
        .iter()
        .copied()
        .filter(|&n| w.incarnation(n) == Incarnation::FIRST && w.is_up(n))
        .collect();
    let mut sent: BTreeMap<NodeId, BTreeSet<u64>> = BTreeMap::new();
    let mut got: BTreeMap<(NodeId, NodeId), BTreeSet<u64>> = BTreeMap::new();
    let mut missed: BTreeMap<(NodeId, NodeId), u64> = BTreeMap::new();
    for o in w.events() {
        if o.incarnation != Incarnation::FIRST {
            continue;
        }
        match &o.event {
            McastEvent::Sent { seq, .. } => {
                sent.entry(o.node).or_default().insert(*seq);
            }
            McastEvent::Delivered {
                from, life, seq, ..
            } if *life == Incarnation::FIRST => {
                got.entry((o.node, *from)).or_default().insert(*seq);
            }
            McastEvent::Missed {
                from, life, upto, ..
            } if *life == Incarnation::FIRST => {
                let m = missed.entry((o.node, *from)).or_default();
                *m = (*m).max(*upto);
            }
            _ => {}
        }
    }
    let (mut delivered, mut lost) = (0, 0);
    for &s in &stayed {
        let Some(seqs) = sent.get(&s) else { continue };
        for &r in &stayed {
            let have = got.get(&(r, s)).cloned().unwrap_or_default();
            let gone = missed.get(&(r, s)).copied().unwrap_or(0);
            for &q in seqs {
                if have.contains(&q) {
                    delivered += 1;
                } else if q <= gone {
                    lost += 1;
                } else {
                    return Err(format!(
                        "{r} neither delivered nor was told it missed {s}#{q}"
                    ));
                }
            }
        }
    }
    Ok((delivered, lost))
}

/// What a source received while it sent: the feedback-implosion figure.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Load {
    /// Messages handed to the source's core (acknowledgements, NACKs,
    /// requests, sessions: everything), from its core's counters.
    pub(crate) received: u64,
    /// Messages it sent to the group.
    pub(crate) sent: u64,
}

impl Load {
    /// Messages received per message sent.
    pub(crate) fn per_message(&self) -> f64 {
        self.received as f64 / self.sent.max(1) as f64
    }
}

/// Node 0 sends 100 messages, one every 20 ms, to `receivers` others with
/// `feedback`, every link losing `loss` of its messages independently
/// (nothing else goes wrong); the run lasts until everything is
/// delivered and freed. Returns what node 0 received meanwhile.
pub(crate) fn feedback_load(feedback: Feedback, receivers: usize, loss: f64, seed: u64) -> Load {
    let n = receivers + 1;
    let group = ft_multicast::GroupId(1);
    let config = McastConfig::new(vec![
        GroupConfig::new(group, (0..n as u64).map(NodeId)).with_feedback(feedback),
    ]);
    let plan = FaultPlan {
        network: NetworkFaults {
            delay: Delay::Uniform {
                min: Duration::from_micros(500),
                max: Duration::from_millis(3),
            },
            loss,
            ..NetworkFaults::default()
        },
        ..FaultPlan::default()
    };
    let mut sim = Sim::new(SimConfig::new(seed, n), config, plan);
    let sent = 100;
    for k in 0..sent {
        sim.input(
            Duration::from_millis(10 + 20 * k),
            NodeId(0),
            McastInput::Send {
                group,
                token: k,
                payload: Bytes::from(k.to_le_bytes().to_vec()),
            },
        );
    }
    sim.run_until(Duration::from_millis(20 * sent + 5000))
        .unwrap_or_else(|f| panic!("{f}"));
    let w = sim.world();
    let delivered = all_delivered(w).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(delivered, n * sent as usize);
    assert!(all_freed(w).unwrap_or_else(|e| panic!("{e}")));
    Load {
        received: w.core(NodeId(0)).expect("up").counters().messages_received,
        sent,
    }
}

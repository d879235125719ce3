//! An example protocol: heartbeats with a timeout failure detector.
//!
//! Every node pings every peer each `interval`; a peer answers each ping with
//! an ack. A peer not heard from (ping or ack) within `timeout` is
//! *suspected*; hearing from it again restores trust. Pings carry the
//! sender's incarnation and a sequence number, so receivers notice restarts
//! and count duplicated and reordered deliveries.
//!
//! Sequence numbers are reserved in blocks on stable storage before use, the
//! classic way to keep them unique across crashes without a write per
//! message: a node persists "reserved up to R" and only sends sequence
//! numbers below R once that record is durable (**persist before you
//! speak**). After a crash it resumes at R, above anything it may have sent.
//! Receivers check that property ([`Heartbeat::reuse_violations`]); setting
//! [`HeartbeatConfig::persist_before_send`] to `false` breaks it on purpose,
//! which the simulator's crash faults then expose.
//!
//! Small as it is, the protocol exercises every part of the simulator:
//! messages, timers, persists, recovery from records, events and randomness
//! passed in (a seeded jitter of the first tick).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::{
    Counters, DecodeError, FailureDetector, Incarnation, NodeId, Outbox, Output, PersistToken,
    Protocol, Record, Recover, RecoveryContext, RecoveryError, Suspicion, Wire, wire,
};
use ft_sim::{FaultPlan, Sim, SimConfig, SimRng, World};

/// Configuration, the same for every node and every life.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    /// Every node of the group (a node skips itself).
    pub peers: Vec<NodeId>,
    /// Time between two pings to each peer.
    pub interval: Duration,
    /// Silence after which a peer is suspected.
    pub timeout: Duration,
    /// Sequence numbers reserved per stable-storage write.
    pub block: u64,
    /// Wait for the reservation to be durable before using it. `false` is a
    /// deliberately broken variant for tests.
    pub persist_before_send: bool,
}

impl HeartbeatConfig {
    /// `nodes` peers `NodeId(0)..`, pinging every 10 ms, suspecting after
    /// 50 ms of silence, reserving 16 sequence numbers at a time.
    pub fn new(nodes: usize) -> Self {
        HeartbeatConfig {
            peers: (0..nodes as u64).map(NodeId).collect(),
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(50),
            block: 16,
            persist_before_send: true,
        }
    }
}

/// A heartbeat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Beat {
    /// "I am alive": sender's incarnation and sequence number.
    Ping {
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The sender's sequence number.
        seq: u64,
    },
    /// The answer to a ping, echoing its sequence number.
    Ack {
        /// The acking node's incarnation.
        incarnation: Incarnation,
        /// The sequence number of the ping answered.
        seq: u64,
    },
}

const PING: u8 = 1;
const ACK: u8 = 2;

impl Wire for Beat {
    fn encode(&self, buf: &mut BytesMut) {
        let (tag, inc, seq) = match self {
            Beat::Ping { incarnation, seq } => (PING, incarnation, seq),
            Beat::Ack { incarnation, seq } => (ACK, incarnation, seq),
        };
        buf.put_u8(tag);
        buf.put_u64_le(inc.0);
        buf.put_u64_le(*seq);
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        wire::need(buf, 16)?;
        let incarnation = Incarnation(buf.get_u64_le());
        let seq = buf.get_u64_le();
        match tag {
            PING => Ok(Beat::Ping { incarnation, seq }),
            ACK => Ok(Beat::Ack { incarnation, seq }),
            tag => Err(DecodeError::UnknownTag { what: "Beat", tag }),
        }
    }
}

/// What a heartbeat node tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// `0` is suspected to have failed.
    Suspected(NodeId),
    /// `0` was suspected and has been heard from again.
    Trusted(NodeId),
    /// `node` restarted: a ping came from a newer incarnation.
    Restarted {
        /// The peer.
        node: NodeId,
        /// Its new incarnation.
        incarnation: Incarnation,
    },
}

/// The only timer: time to ping and to check the detector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick;

/// Application inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatInput {
    /// Stop pinging (a graceful pause); acks are still sent.
    Pause,
    /// Ping again.
    Resume,
}

/// A fixed-timeout failure detector: suspects a node not heard from for
/// longer than the timeout.
#[derive(Clone, Debug)]
pub struct TimeoutDetector {
    timeout: Duration,
    last: BTreeMap<NodeId, Instant>,
}

impl TimeoutDetector {
    /// Suspects after `timeout` of silence.
    pub fn new(timeout: Duration) -> Self {
        TimeoutDetector {
            timeout,
            last: BTreeMap::new(),
        }
    }
}

impl FailureDetector for TimeoutDetector {
    fn heartbeat(&mut self, node: NodeId, now: Instant) {
        let e = self.last.entry(node).or_insert(now);
        *e = (*e).max(now);
    }

    fn suspicion(&self, node: NodeId, now: Instant) -> Suspicion {
        match self.last.get(&node) {
            None => Suspicion::Unknown,
            Some(&t) if now.saturating_duration_since(t) > self.timeout => Suspicion::Suspected,
            Some(_) => Suspicion::Alive,
        }
    }

    fn remove(&mut self, node: NodeId) {
        self.last.remove(&node);
    }
}

/// How many incarnations of a peer a receiver remembers sequence ranges for.
const REMEMBERED_INCARNATIONS: usize = 8;
/// Window of recent sequence numbers per peer used to tell duplicates from
/// reordered deliveries.
const SEEN_WINDOW: u64 = 256;

#[derive(Default, Debug)]
struct PeerView {
    incarnation: Incarnation,
    /// Per incarnation, the lowest and highest sequence number seen.
    ranges: BTreeMap<Incarnation, (u64, u64)>,
    /// Recent sequence numbers of the current incarnation.
    seen: BTreeSet<u64>,
    highest: Option<u64>,
}

/// What a node keeps on stable storage.
///
/// On disk (after ft-core's two header bytes, component and version 1,
/// see [`ft_core::record`]): tag `1`, then `upto` as a little-endian `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatRecord {
    /// Sequence numbers below `upto` are reserved: no later life uses one.
    Reserved {
        /// The first number not reserved.
        upto: u64,
    },
}

const RESERVED: u8 = 1;

impl Wire for HeartbeatRecord {
    fn encode(&self, buf: &mut BytesMut) {
        let HeartbeatRecord::Reserved { upto } = self;
        buf.put_u8(RESERVED);
        buf.put_u64_le(*upto);
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match wire::get_u8(buf)? {
            RESERVED => Ok(HeartbeatRecord::Reserved {
                upto: wire::get_u64(buf)?,
            }),
            tag => Err(DecodeError::UnknownTag {
                what: "HeartbeatRecord",
                tag,
            }),
        }
    }
}

impl Record for HeartbeatRecord {
    const VERSION: u8 = 1;
}

/// One node of the heartbeat protocol.
#[derive(Debug)]
pub struct Heartbeat {
    me: NodeId,
    incarnation: Incarnation,
    config: HeartbeatConfig,
    detector: TimeoutDetector,
    suspected: BTreeSet<NodeId>,
    peers: BTreeMap<NodeId, PeerView>,
    next_seq: u64,
    /// Sequence numbers below this are reserved durably.
    reserved: u64,
    /// A reservation on its way to the disk.
    reserving: Option<(PersistToken, u64)>,
    paused: bool,
    out: Outbox<Heartbeat>,
    duplicates: u64,
    reordered: u64,
    reuse_violations: BTreeMap<NodeId, u64>,
    pings_received: u64,
    acks_received: u64,
}

impl Heartbeat {
    // --- getters ---

    /// This node.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Peers currently suspected.
    pub fn suspects(&self) -> &BTreeSet<NodeId> {
        &self.suspected
    }

    /// Sequence numbers below this are durably reserved.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Pings received.
    pub fn pings_received(&self) -> u64 {
        self.pings_received
    }

    /// Acks received.
    pub fn acks_received(&self) -> u64 {
        self.acks_received
    }

    /// Pings received again (same peer, incarnation and sequence number).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Pings received after a ping the same peer sent later.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Pings whose sequence number a peer had already used in an earlier
    /// incarnation (or that came from an older incarnation with a number the
    /// newer one used): a sequence number reused across a crash. Always zero
    /// when reservations are persisted before use.
    pub fn reuse_violations(&self) -> u64 {
        self.reuse_violations.values().sum()
    }

    /// [`reuse_violations`](Self::reuse_violations) in pings from `peer`.
    pub fn reuse_violations_from(&self, peer: NodeId) -> u64 {
        self.reuse_violations.get(&peer).copied().unwrap_or(0)
    }

    // --- internals ---

    /// Reserves the next block once half of the current one is used, so
    /// pings rarely wait for the disk.
    fn maybe_reserve(&mut self) {
        if self.reserving.is_some() || self.next_seq + self.config.block / 2 < self.reserved {
            return;
        }
        let upto = self.reserved.max(self.next_seq) + self.config.block.max(1);
        let token = self.out.persist(&HeartbeatRecord::Reserved { upto });
        if self.config.persist_before_send {
            self.reserving = Some((token, upto));
        } else {
            // The broken variant: believe the write before it is durable.
            self.reserved = upto;
        }
    }

    fn heard_from(&mut self, from: NodeId, now: Instant) {
        self.detector.heartbeat(from, now);
        if self.suspected.remove(&from) {
            self.out.note("trusted again", Some(from), None, None);
            self.out.event(HeartbeatEvent::Trusted(from));
        }
    }

    fn on_ping(&mut self, from: NodeId, incarnation: Incarnation, seq: u64) {
        self.pings_received += 1;
        let view = self.peers.entry(from).or_default();
        // Reuse across lives: every number of an older incarnation must lie
        // below every number of a newer one.
        let mut violation = false;
        for (&inc, &(lo, hi)) in &view.ranges {
            if (inc < incarnation && hi >= seq) || (inc > incarnation && lo <= seq) {
                violation = true;
            }
        }
        if violation {
            *self.reuse_violations.entry(from).or_default() += 1;
        }
        let r = view.ranges.entry(incarnation).or_insert((seq, seq));
        r.0 = r.0.min(seq);
        r.1 = r.1.max(seq);
        while view.ranges.len() > REMEMBERED_INCARNATIONS {
            view.ranges.pop_first();
        }
        if incarnation > view.incarnation {
            view.incarnation = incarnation;
            view.seen.clear();
            view.highest = None;
            if incarnation > Incarnation::FIRST {
                self.out
                    .note("peer restarted", Some(from), Some(incarnation), None);
                self.out.event(HeartbeatEvent::Restarted {
                    node: from,
                    incarnation,
                });
            }
        }
        if incarnation == view.incarnation {
            if !view.seen.insert(seq) {
                self.duplicates += 1;
            } else if view.highest.is_some_and(|h| seq < h) {
                self.reordered += 1;
            }
            view.highest = Some(view.highest.map_or(seq, |h| h.max(seq)));
            let floor = view.highest.unwrap_or(0).saturating_sub(SEEN_WINDOW);
            while view.seen.first().is_some_and(|&s| s < floor) {
                view.seen.pop_first();
            }
        }
        let me = self.incarnation;
        self.out.send(
            from,
            Beat::Ack {
                incarnation: me,
                seq,
            },
        );
    }

    fn tick(&mut self, now: Instant) {
        if !self.paused {
            self.maybe_reserve();
            if self.next_seq < self.reserved {
                let seq = self.next_seq;
                self.next_seq += 1;
                let peers: Vec<NodeId> = self
                    .config
                    .peers
                    .iter()
                    .copied()
                    .filter(|&p| p != self.me)
                    .collect();
                for p in peers {
                    self.out.send(
                        p,
                        Beat::Ping {
                            incarnation: self.incarnation,
                            seq,
                        },
                    );
                }
            }
        }
        for &p in &self.config.peers {
            if p != self.me
                && self.detector.suspicion(p, now) == Suspicion::Suspected
                && self.suspected.insert(p)
            {
                self.out.note("suspected", Some(p), None, None);
                self.out.event(HeartbeatEvent::Suspected(p));
            }
        }
        self.out.set_timer_after(Tick, now, self.config.interval);
    }
}

impl Protocol for Heartbeat {
    type Message = Beat;
    type Input = HeartbeatInput;
    type Event = HeartbeatEvent;
    type Timer = Tick;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Beat) {
        self.out.received();
        if from == self.me || !self.config.peers.contains(&from) {
            self.out.dropped();
            return;
        }
        self.heard_from(from, now);
        match msg {
            Beat::Ping { incarnation, seq } => self.on_ping(from, incarnation, seq),
            Beat::Ack { .. } => self.acks_received += 1,
        }
    }

    fn handle_input(&mut self, _now: Instant, input: HeartbeatInput) {
        self.paused = input == HeartbeatInput::Pause;
    }

    fn handle_timer(&mut self, now: Instant, _timer: Tick) {
        self.out.timer_fired();
        self.tick(now);
    }

    fn handle_persisted(&mut self, _now: Instant, token: PersistToken) {
        if let Some((t, upto)) = self.reserving
            && t == token
        {
            self.reserved = self.reserved.max(upto);
            self.reserving = None;
        }
        // Only the highest reservation matters: every earlier record is
        // obsolete once a later one is durable, so the log keeps one.
        self.out.compact(token);
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl Recover for Heartbeat {
    type Config = HeartbeatConfig;

    fn recover(config: &HeartbeatConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        Ok({
            // Every sequence number below the highest durable reservation may
            // have been used by an earlier life: resume above it.
            let reserved = ctx
                .read::<HeartbeatRecord>()?
                .into_iter()
                .map(|HeartbeatRecord::Reserved { upto }| upto)
                .max()
                .unwrap_or(0);
            let now = ctx.now;
            // Randomness comes from the seed handed in: jitter the first tick so
            // nodes do not ping in lockstep.
            let jitter_ns = SimRng::new(ctx.seed).below(config.interval.as_nanos().max(1) as u64);
            let mut hb = Heartbeat {
                me: ctx.node,
                incarnation: ctx.incarnation,
                detector: TimeoutDetector::new(config.timeout),
                suspected: BTreeSet::new(),
                peers: BTreeMap::new(),
                next_seq: reserved,
                reserved,
                reserving: None,
                paused: false,
                out: Outbox::recovered(&ctx),
                duplicates: 0,
                reordered: 0,
                reuse_violations: BTreeMap::new(),
                pings_received: 0,
                acks_received: 0,
                config: config.clone(),
            };
            // Start every peer's clock now: a peer that never answers is
            // suspected after one timeout, not left Unknown forever.
            for &p in &config.peers {
                if p != ctx.node {
                    hb.detector.heartbeat(p, now);
                }
            }
            hb.maybe_reserve();
            hb.out
                .set_timer_after(Tick, now, Duration::from_nanos(jitter_ns));
            hb
        })
    }
}

/// The senders whose sequence numbers must never be reused: every node of
/// the run except those the plan gives value or arbitrary failures (a wrong
/// value is exactly what those may produce).
pub fn honest_senders(plan: &FaultPlan, nodes: usize) -> Vec<NodeId> {
    (0..nodes as u64)
        .map(NodeId)
        .filter(|n| {
            plan.nodes
                .get(n)
                .is_none_or(|f| f.value_corruption == 0.0 && f.byzantine.is_none())
        })
        .collect()
}

/// The protocol's safety invariant, for [`Sim::invariant`]:
/// no node has received a ping from one of `senders` whose sequence number an
/// earlier life of that sender had used.
pub fn no_reuse(senders: Vec<NodeId>) -> impl FnMut(&World<Heartbeat>) -> Result<(), String> {
    move |w| {
        for (id, core) in w.cores() {
            for &from in &senders {
                let n = core.reuse_violations_from(from);
                if n > 0 {
                    return Err(format!(
                        "{id} received {n} pings from {from} whose sequence number an earlier life of {from} had used"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The name [`no_reuse`] is registered under by [`sim`].
pub const NO_REUSE: &str = "sequence numbers are never reused across crashes";

/// A heartbeat run with its safety invariant installed.
pub fn sim(config: SimConfig, heartbeat: HeartbeatConfig, plan: FaultPlan) -> Sim<Heartbeat> {
    let honest = honest_senders(&plan, config.nodes);
    let mut s = Sim::new(config, heartbeat, plan);
    s.invariant(NO_REUSE, no_reuse(honest));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ft_core::harness::{Harness, context};
    use proptest::prelude::*;

    fn node(config: &HeartbeatConfig, records: Vec<Bytes>, inc: u64) -> Harness<Heartbeat> {
        let mut ctx = context(NodeId(0));
        ctx.records = records;
        ctx.incarnation = Incarnation(inc);
        Harness::recover(config, ctx).unwrap()
    }

    fn reserved(upto: u64) -> Bytes {
        ft_core::record::encode(&HeartbeatRecord::Reserved { upto })
    }

    #[test]
    fn no_ping_before_the_reservation_is_durable() {
        let config = HeartbeatConfig::new(3);
        let mut h = node(&config, vec![], 0);
        let first = h.drain();
        assert_eq!(
            first.records::<HeartbeatRecord>().unwrap(),
            vec![HeartbeatRecord::Reserved { upto: 16 }]
        );
        let token = first.persists[0].0;
        assert!(
            h.timer(Tick).drain().sends.is_empty(),
            "pinged with an undurable reservation"
        );
        let pings = h.persisted(token).timer(Tick).drain().sends;
        let seq0 = pings
            .iter()
            .filter(|(_, m)| matches!(m, Beat::Ping { seq: 0, .. }))
            .count();
        assert_eq!(seq0, 2, "one ping to each of the two peers");
    }

    #[test]
    fn a_durable_reservation_makes_every_earlier_record_obsolete() {
        let config = HeartbeatConfig::new(2);
        let mut h = node(&config, vec![reserved(16)], 1);
        let token = h.drain().persists[0].0;
        // The new reservation is durable: the log keeps only it.
        assert_eq!(h.persisted(token).drain().compactions, vec![token]);
    }

    #[test]
    fn recovery_resumes_above_every_durable_reservation() {
        let config = HeartbeatConfig::new(2);
        let h = node(&config, vec![reserved(16), reserved(32)], 2);
        assert_eq!(h.core.reserved(), 32);
        assert_eq!(h.core.next_seq, 32);
        assert_eq!(h.core.incarnation(), Incarnation(2));
    }

    #[test]
    fn a_record_that_does_not_read_stops_recovery() {
        let config = HeartbeatConfig::new(2);
        let mut ctx = context(NodeId(0));
        // The old format: eight bare bytes, no header.
        ctx.records = vec![reserved(16), Bytes::copy_from_slice(&32u64.to_le_bytes())];
        let err = Harness::<Heartbeat>::recover(&config, ctx).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Record { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn receiver_flags_reuse_duplicates_and_reordering() {
        let config = HeartbeatConfig::new(2);
        let mut h = node(&config, vec![], 0);
        let p = NodeId(1);
        let ping = |inc, seq| Beat::Ping {
            incarnation: Incarnation(inc),
            seq,
        };
        h.message(p, ping(0, 5))
            .message(p, ping(0, 3))
            .message(p, ping(0, 3));
        assert_eq!((h.core.reordered(), h.core.duplicates()), (1, 1));
        h.message(p, ping(1, 6));
        assert_eq!(h.core.reuse_violations(), 0);
        h.message(p, ping(2, 4));
        assert_eq!(
            h.core.reuse_violations(),
            1,
            "incarnation 2 reused a number of 0"
        );
        assert!(h.drain().events.contains(&HeartbeatEvent::Restarted {
            node: NodeId(1),
            incarnation: Incarnation(2)
        }));
    }

    #[test]
    fn silence_is_suspected_and_speech_restores_trust() {
        let config = HeartbeatConfig::new(2);
        let mut h = node(&config, vec![], 0);
        h.drain();
        h.advance(config.timeout + Duration::from_millis(1));
        assert!(
            h.timer(Tick)
                .drain()
                .events
                .contains(&HeartbeatEvent::Suspected(NodeId(1)))
        );
        let ack = Beat::Ack {
            incarnation: Incarnation(0),
            seq: 0,
        };
        assert!(
            h.message(NodeId(1), ack)
                .drain()
                .events
                .contains(&HeartbeatEvent::Trusted(NodeId(1)))
        );
        assert!(h.core.suspects().is_empty());
    }

    #[test]
    fn detector_reports_unknown_alive_suspected() {
        let mut d = TimeoutDetector::new(Duration::from_millis(10));
        let t = Instant::now();
        assert_eq!(d.suspicion(NodeId(1), t), Suspicion::Unknown);
        d.heartbeat(NodeId(1), t);
        assert_eq!(
            d.suspicion(NodeId(1), t + Duration::from_millis(10)),
            Suspicion::Alive
        );
        assert!(d.is_suspected(NodeId(1), t + Duration::from_millis(11)));
        d.remove(NodeId(1));
        assert_eq!(d.suspicion(NodeId(1), t), Suspicion::Unknown);
    }

    proptest! {
        #[test]
        fn beats_round_trip(ping in any::<bool>(), inc in any::<u64>(), seq in any::<u64>()) {
            let b = if ping {
                Beat::Ping { incarnation: Incarnation(inc), seq }
            } else {
                Beat::Ack { incarnation: Incarnation(inc), seq }
            };
            prop_assert_eq!(Beat::from_bytes(b.to_bytes())?, b);
        }

        #[test]
        fn hostile_beats_never_panic(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let r = Beat::from_bytes(Bytes::from(data.clone()));
            if data.len() != 17 {
                prop_assert!(r.is_err());
            }
        }
    }
}

//! An all-to-all heartbeating group: every member tells every other member
//! "I am alive" at a fixed interval, and each member runs a failure detector
//! over what it hears.
//!
//! [`Heartbeating`] is a sans-IO core ([`Protocol`] + [`Recover`]) generic
//! over the detector, so the same group runs with a
//! [`FixedTimeout`](crate::detector::FixedTimeout), a
//! [`PhiAccrual`](crate::detector::PhiAccrual) or any other
//! [`FailureDetector`], and they can be compared on equal terms in the
//! simulator.
//!
//! All-to-all costs n·(n−1) messages per interval; it is the baseline that
//! gossip-style detectors (SWIM) improve on, and the simplest correct way to
//! give every member its own view of who is alive.
//!
//! Nothing is persisted: a restarted member has lost its heartbeat history
//! and starts over, which is exactly what the volatile state of a detector
//! is. Its incarnation (kept by the environment) tells peers it restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::{
    Counters, DecodeError, FailureDetector, Incarnation, NodeId, Outbox, Output, PersistToken,
    Protocol, Recover, RecoveryContext, RecoveryError, Suspicion, Wire, wire,
};

use ft_core::rng::Rng;

/// Configuration of a heartbeating group, the same for every member and
/// every life.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig<D> {
    /// Every member of the group; a member skips itself. Duplicates are
    /// ignored.
    pub members: Vec<NodeId>,
    /// Time between two heartbeats from a member to each other member.
    /// Values below 1 ms are treated as 1 ms, so a zero interval cannot
    /// stall an event loop with timers that fire at once forever.
    pub interval: Duration,
    /// Time between two evaluations of the detector, which is how late
    /// after the detector starts suspecting a member the
    /// [`Suspected`](HeartbeatEvent::Suspected) event may come. Treated as
    /// at least 1 ms, like `interval`.
    pub check_interval: Duration,
    /// The failure detector; every life of a member starts from a clone of
    /// it (its history is volatile state).
    pub detector: D,
}

impl<D> HeartbeatConfig<D> {
    /// The default heartbeat interval: 1 s, as Akka's `heartbeat-interval`
    /// and memberlist's LAN `ProbeInterval`, which the default detector
    /// settings ([`FixedTimeout::DEFAULT_TIMEOUT`](crate::detector::FixedTimeout::DEFAULT_TIMEOUT),
    /// [`PhiConfig::default`](crate::detector::PhiConfig)) assume.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
    /// The default check interval: 100 ms, a tenth of the heartbeat
    /// interval, so suspicion is raised at most that late.
    pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(100);

    /// A group of `members` using `detector`, heartbeating every
    /// [`DEFAULT_INTERVAL`](Self::DEFAULT_INTERVAL) and checking every
    /// [`DEFAULT_CHECK_INTERVAL`](Self::DEFAULT_CHECK_INTERVAL).
    pub fn new(members: Vec<NodeId>, detector: D) -> Self {
        HeartbeatConfig {
            members,
            interval: Self::DEFAULT_INTERVAL,
            check_interval: Self::DEFAULT_CHECK_INTERVAL,
            detector,
        }
    }
}

/// Smallest interval used for either timer (see [`HeartbeatConfig::interval`]).
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// "I am alive", sent by every member to every other member each interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's incarnation: receivers drop heartbeats from a life older
    /// than one they have heard from, and notice restarts.
    pub incarnation: Incarnation,
    /// The sender's heartbeat number within this incarnation, from 0. It
    /// lets a trace tell duplicated and reordered deliveries apart; liveness
    /// does not depend on it (any heartbeat of the current life is a sign of
    /// life).
    pub seq: u64,
}

impl Heartbeat {
    /// The wire version this code writes and reads.
    pub const VERSION: u8 = 1;
    /// The length of an encoded heartbeat: version, incarnation, seq.
    pub const ENCODED_LEN: usize = 1 + 8 + 8;
}

impl Wire for Heartbeat {
    /// `version: u8 | incarnation: u64 LE | seq: u64 LE`.
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(Self::VERSION);
        buf.put_u64_le(self.incarnation.0);
        buf.put_u64_le(self.seq);
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let version = wire::get_u8(buf)?;
        if version != Self::VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: Self::VERSION,
            });
        }
        wire::need(buf, 16)?;
        let incarnation = Incarnation(buf.get_u64_le());
        let seq = buf.get_u64_le();
        Ok(Heartbeat { incarnation, seq })
    }
}

/// What a heartbeating member tells its application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// The detector now suspects this member.
    Suspected(NodeId),
    /// This member was suspected and the detector trusts it again.
    Trusted(NodeId),
    /// `node` restarted: a heartbeat came from an incarnation newer than any
    /// heard from it before.
    Restarted {
        /// The member.
        node: NodeId,
        /// Its new incarnation.
        incarnation: Incarnation,
    },
}

/// The timers of a heartbeating member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HeartbeatTimer {
    /// Time to send heartbeats.
    Beat,
    /// Time to evaluate the detector.
    Check,
}

/// Requests from the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatInput {
    /// Stop sending heartbeats while still receiving and checking: to the
    /// other members this looks like a hung process (or one whose outgoing
    /// link died).
    Pause,
    /// Send heartbeats again.
    Resume,
}

/// One member of an all-to-all heartbeating group, with failure detector `D`.
///
/// # Behaviour
///
/// - Every [`interval`](HeartbeatConfig::interval) it sends a [`Heartbeat`]
///   to every other member (unless [paused](HeartbeatInput::Pause)). The
///   first round is delayed by a random fraction of the interval drawn from
///   the seed, so members do not beat in lockstep.
/// - A heartbeat from another member is handed to the detector. Heartbeats
///   from itself or from non-members, and from an incarnation older than one
///   already heard from the sender, are dropped (and counted in
///   [`Counters::messages_dropped`]). A newer incarnation is reported as
///   [`Restarted`](HeartbeatEvent::Restarted).
/// - The detector's history of a sender starts over (it is
///   [removed](FailureDetector::remove) and then given the heartbeat) at the
///   first heartbeat of each of the sender's lives that this member hears:
///   neither the silence of a crash nor the start-up gap before a member's
///   first heartbeat says anything about its rhythm, and an adaptive
///   detector such as [`PhiAccrual`](crate::detector::PhiAccrual) would
///   otherwise learn them as inter-arrival times.
/// - Every [`check_interval`](HeartbeatConfig::check_interval) it asks the
///   detector about every member and reports transitions as
///   [`Suspected`](HeartbeatEvent::Suspected) /
///   [`Trusted`](HeartbeatEvent::Trusted). A member is also re-evaluated as
///   soon as a heartbeat from it arrives, so trust returns without waiting
///   for the next check.
/// - At the start of each life every member's clock is started (one
///   heartbeat is recorded for each), so a member never heard from is
///   suspected after one timeout rather than left
///   [`Unknown`](Suspicion::Unknown) forever. (For `PhiAccrual` the "timeout"
///   of such a member is set by
///   [`first_heartbeat_estimate`](crate::detector::PhiConfig::first_heartbeat_estimate).)
///
/// # Methods
///
/// Getters: [`id`](Self::id), [`incarnation`](Self::incarnation),
/// [`suspects`](Self::suspects), [`detector`](Self::detector),
/// [`suspicions_raised`](Self::suspicions_raised),
/// [`is_paused`](Self::is_paused). `handle_*` and `poll_output` are the
/// [`Protocol`] ones; the only mutators are the [`HeartbeatInput`]s.
///
/// # Poll order
///
/// Outputs come out in the order they arose: on construction the first
/// `Beat` and `Check` timers; on a `Beat` the heartbeats (members in
/// ascending order) then the next `Beat`; on a `Check` the events (members
/// in ascending order) then the next `Check`. Nothing is persisted.
#[derive(Debug)]
pub struct Heartbeating<D: FailureDetector> {
    me: NodeId,
    incarnation: Incarnation,
    /// The other members, without duplicates.
    others: BTreeSet<NodeId>,
    interval: Duration,
    check_interval: Duration,
    detector: D,
    suspected: BTreeSet<NodeId>,
    /// The newest incarnation heard from each member.
    lives: BTreeMap<NodeId, Incarnation>,
    seq: u64,
    paused: bool,
    suspicions_raised: u64,
    out: Outbox<Self>,
}

impl<D: FailureDetector> Heartbeating<D> {
    // --- getters ---

    /// This member.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// This life of this member.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The members currently suspected.
    pub fn suspects(&self) -> &BTreeSet<NodeId> {
        &self.suspected
    }

    /// The failure detector, with its history of this life.
    pub fn detector(&self) -> &D {
        &self.detector
    }

    /// How many [`Suspected`](HeartbeatEvent::Suspected) events this life
    /// has emitted.
    pub fn suspicions_raised(&self) -> u64 {
        self.suspicions_raised
    }

    /// Whether sending heartbeats is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    // --- internals ---

    /// Reports a change of the detector's verdict on `node`, if any.
    fn evaluate(&mut self, node: NodeId, now: Instant) {
        let suspected = self.detector.suspicion(node, now) == Suspicion::Suspected;
        let life = self.lives.get(&node).copied();
        if suspected && self.suspected.insert(node) {
            self.suspicions_raised += 1;
            self.out.note("suspected", Some(node), life, None);
            self.out.event(HeartbeatEvent::Suspected(node));
        } else if !suspected && self.suspected.remove(&node) {
            self.out.note("trusted again", Some(node), life, None);
            self.out.event(HeartbeatEvent::Trusted(node));
        }
    }

    fn beat(&mut self, now: Instant) {
        if !self.paused {
            let msg = Heartbeat {
                incarnation: self.incarnation,
                seq: self.seq,
            };
            self.seq = self.seq.saturating_add(1);
            for &to in &self.others {
                self.out.send(to, msg);
            }
        }
        // An interval so long that the deadline is past what `Instant` can
        // hold means "never": the timer is then not set.
        self.out
            .set_timer_after(HeartbeatTimer::Beat, now, self.interval);
    }

    fn check(&mut self, now: Instant) {
        let others: Vec<NodeId> = self.others.iter().copied().collect();
        for node in others {
            self.evaluate(node, now);
        }
        self.out
            .set_timer_after(HeartbeatTimer::Check, now, self.check_interval);
    }
}

impl<D: FailureDetector> Protocol for Heartbeating<D> {
    type Message = Heartbeat;
    type Input = HeartbeatInput;
    type Event = HeartbeatEvent;
    type Timer = HeartbeatTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: Heartbeat) {
        self.out.received();
        if from == self.me || !self.others.contains(&from) {
            self.out.dropped();
            return;
        }
        let known = self.lives.get(&from).copied();
        if known.is_some_and(|k| msg.incarnation < k) {
            // A heartbeat of a life that has since ended: it says nothing
            // about the process now.
            self.out.dropped();
            return;
        }
        if msg.incarnation > known.unwrap_or(Incarnation::FIRST) {
            self.out.event(HeartbeatEvent::Restarted {
                node: from,
                incarnation: msg.incarnation,
            });
        }
        if known.is_none_or(|k| msg.incarnation > k) {
            // The first heartbeat of a life starts the detector's history
            // afresh. Before it, the detector held only the clock started at
            // recovery (not an arrival: the gap to this heartbeat is just
            // the sender's start-up jitter) or the previous life (whose
            // crash silence says nothing about the new life's rhythm).
            self.detector.remove(from);
        }
        self.lives.insert(from, msg.incarnation);
        self.detector.heartbeat(from, now);
        self.evaluate(from, now);
    }

    fn handle_input(&mut self, _now: Instant, input: HeartbeatInput) {
        self.paused = input == HeartbeatInput::Pause;
    }

    fn handle_timer(&mut self, now: Instant, timer: HeartbeatTimer) {
        self.out.timer_fired();
        match timer {
            HeartbeatTimer::Beat => self.beat(now),
            HeartbeatTimer::Check => self.check(now),
        }
    }

    fn handle_persisted(&mut self, _now: Instant, _token: PersistToken) {
        // Nothing is ever persisted, so no token can be ours.
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl<D: FailureDetector + Clone> Recover for Heartbeating<D> {
    type Config = HeartbeatConfig<D>;

    /// A fresh member: nothing is persisted, so nothing is read.
    fn recover(config: &HeartbeatConfig<D>, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let now = ctx.now;
        let interval = config.interval.max(MIN_INTERVAL);
        let check_interval = config.check_interval.max(MIN_INTERVAL);
        let others: BTreeSet<NodeId> = config
            .members
            .iter()
            .copied()
            .filter(|&m| m != ctx.node)
            .collect();
        let mut detector = config.detector.clone();
        // Start every member's clock: a member that never speaks is then
        // suspected after one timeout instead of staying Unknown.
        for &m in &others {
            detector.heartbeat(m, now);
        }
        let span = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(Rng::new(ctx.seed).below(span));
        let mut hb = Heartbeating {
            me: ctx.node,
            incarnation: ctx.incarnation,
            others,
            interval,
            check_interval,
            detector,
            suspected: BTreeSet::new(),
            lives: BTreeMap::new(),
            seq: 0,
            paused: false,
            suspicions_raised: 0,
            out: Outbox::new(),
        };
        hb.out.set_timer_after(HeartbeatTimer::Beat, now, jitter);
        hb.out
            .set_timer_after(HeartbeatTimer::Check, now, check_interval);
        Ok(hb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{FixedTimeout, PhiAccrual};
    use ft_core::harness::{self, Harness};
    use proptest::prelude::*;

    fn members(n: u64) -> Vec<NodeId> {
        (0..n).map(NodeId).collect()
    }

    /// Life `inc` of member `me`.
    fn start<D: FailureDetector + Clone>(
        config: &HeartbeatConfig<D>,
        me: u64,
        inc: u64,
    ) -> Harness<Heartbeating<D>> {
        let ctx = RecoveryContext {
            incarnation: Incarnation(inc),
            ..harness::context(NodeId(me))
        };
        Harness::recover(config, ctx).unwrap()
    }

    fn beat(inc: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            incarnation: Incarnation(inc),
            seq,
        }
    }

    #[test]
    fn starts_with_jittered_beat_and_a_check() {
        let config = HeartbeatConfig::new(members(3), FixedTimeout::default());
        let mut h = start(&config, 0, 0);
        let now = h.now;
        let out = h.take();
        assert_eq!(out.len(), 2);
        match &out[0] {
            Output::SetTimer {
                timer: HeartbeatTimer::Beat,
                at,
            } => assert!(*at >= now && *at < now + config.interval),
            other => panic!("expected the first beat, got {other:?}"),
        }
        assert!(matches!(
            out[1],
            Output::SetTimer { timer: HeartbeatTimer::Check, at } if at == now + config.check_interval
        ));
        // Every other member's clock is running, none is Unknown.
        for m in [NodeId(1), NodeId(2)] {
            assert_eq!(h.core.detector().suspicion(m, now), Suspicion::Alive);
        }
        assert_eq!(h.core.detector().tracked(), 2);
    }

    #[test]
    fn beats_every_other_member_once_and_numbers_beats() {
        let mut config = HeartbeatConfig::new(members(4), FixedTimeout::default());
        config.members.push(NodeId(2)); // a duplicate is ignored
        let mut h = start(&config, 1, 3);
        h.drain();
        for round in 0..2u64 {
            let out = h.timer(HeartbeatTimer::Beat).drain();
            assert_eq!(
                out.sends,
                [0, 2, 3].map(|n| (NodeId(n), beat(3, round))).to_vec()
            );
            assert_eq!(
                out.timers_set,
                [(HeartbeatTimer::Beat, h.now + config.interval)]
            );
        }
        assert_eq!(h.core.counters().messages_sent, 6);
    }

    #[test]
    fn pause_stops_heartbeats_but_not_the_timer() {
        let config = HeartbeatConfig::new(members(2), FixedTimeout::default());
        let mut h = start(&config, 0, 0);
        h.drain();
        h.input(HeartbeatInput::Pause);
        assert!(h.core.is_paused());
        let out = h.timer(HeartbeatTimer::Beat).drain();
        assert!(out.sends.is_empty());
        assert!(
            out.timers_set
                .iter()
                .any(|(t, _)| *t == HeartbeatTimer::Beat)
        );
        let out = h
            .input(HeartbeatInput::Resume)
            .timer(HeartbeatTimer::Beat)
            .drain();
        assert!(!out.sent_to(NodeId(1)).is_empty());
    }

    #[test]
    fn silence_is_suspected_and_a_heartbeat_restores_trust() {
        let config = HeartbeatConfig::new(members(3), FixedTimeout::default());
        let mut h = start(&config, 0, 0);
        h.drain();
        h.advance(FixedTimeout::DEFAULT_TIMEOUT - Duration::from_millis(1))
            .message(NodeId(2), beat(0, 4));
        let out = h
            .advance(Duration::from_millis(2))
            .timer(HeartbeatTimer::Check)
            .drain();
        assert_eq!(out.events, vec![HeartbeatEvent::Suspected(NodeId(1))]);
        assert_eq!(
            h.core.suspects().iter().copied().collect::<Vec<_>>(),
            [NodeId(1)]
        );
        assert_eq!(h.core.suspicions_raised(), 1);
        // Checking again raises nothing new.
        assert!(h.timer(HeartbeatTimer::Check).drain().events.is_empty());
        let out = h.message(NodeId(1), beat(0, 5)).drain();
        assert_eq!(out.events, vec![HeartbeatEvent::Trusted(NodeId(1))]);
        assert!(h.core.suspects().is_empty());
        assert_eq!(h.core.suspicions_raised(), 1);
    }

    #[test]
    fn drops_self_strangers_and_old_lives_and_reports_restarts() {
        let config = HeartbeatConfig::new(members(3), PhiAccrual::default());
        let mut h = start(&config, 0, 0);
        h.drain();
        h.message(NodeId(0), beat(0, 0))
            .message(NodeId(9), beat(0, 0));
        assert_eq!(h.core.counters().messages_dropped, 2);
        assert_eq!(h.core.detector().tracked(), 2, "strangers are not tracked");

        h.advance(Duration::from_secs(1));
        let out = h.message(NodeId(1), beat(0, 0)).drain();
        assert!(out.events.is_empty(), "incarnation 0 is no restart");
        let out = h.message(NodeId(1), beat(2, 0)).drain();
        assert_eq!(
            out.events,
            vec![HeartbeatEvent::Restarted {
                node: NodeId(1),
                incarnation: Incarnation(2)
            }]
        );
        // The new life's history starts over from the seeded estimate.
        assert_eq!(h.core.detector().sample_count(NodeId(1)), Some(2));
        let before = h.core.detector().last_heartbeat(NodeId(1));
        h.advance(Duration::from_secs(1))
            .message(NodeId(1), beat(1, 9));
        assert_eq!(h.core.counters().messages_dropped, 3, "an older life");
        assert_eq!(h.core.detector().last_heartbeat(NodeId(1)), before);
        assert_eq!(h.core.counters().messages_received, 5);
    }

    #[test]
    fn a_restart_while_suspected_is_trusted_at_once() {
        let config = HeartbeatConfig::new(members(2), FixedTimeout::default());
        let mut h = start(&config, 0, 0);
        h.drain();
        let out = h
            .advance(Duration::from_secs(30))
            .timer(HeartbeatTimer::Check)
            .drain();
        assert_eq!(out.events, vec![HeartbeatEvent::Suspected(NodeId(1))]);
        let out = h.message(NodeId(1), beat(1, 0)).drain();
        assert_eq!(
            out.events,
            vec![
                HeartbeatEvent::Restarted {
                    node: NodeId(1),
                    incarnation: Incarnation(1)
                },
                HeartbeatEvent::Trusted(NodeId(1)),
            ]
        );
    }

    #[test]
    fn degenerate_intervals_neither_stall_nor_panic() {
        let mut config = HeartbeatConfig::new(members(2), FixedTimeout::default());
        config.interval = Duration::ZERO;
        config.check_interval = Duration::MAX;
        let mut h = start(&config, 0, 0);
        // Only the first beat; a check that far away is "never".
        assert_eq!(h.take().len(), 1);
        let out = h.timer(HeartbeatTimer::Beat).drain();
        assert!(
            out.timers_set
                .contains(&(HeartbeatTimer::Beat, h.now + MIN_INTERVAL))
        );
        h.timer(HeartbeatTimer::Check).persisted(PersistToken(1));
    }

    #[test]
    fn encoding_is_little_endian_with_a_version_byte() {
        let b = beat(0x0102, 0x0a0b);
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), Heartbeat::ENCODED_LEN);
        assert_eq!(bytes[0], Heartbeat::VERSION);
        assert_eq!(&bytes[1..3], &[0x02, 0x01]);
        assert_eq!(&bytes[9..11], &[0x0b, 0x0a]);
    }

    #[test]
    fn unknown_versions_and_truncation_are_typed_errors() {
        let full = beat(5, 6).to_bytes();
        for cut in 0..full.len() {
            assert!(
                matches!(
                    Heartbeat::decode(&mut full.slice(..cut)),
                    Err(DecodeError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut other = full.to_vec();
        other[0] = 2;
        assert_eq!(
            Heartbeat::from_bytes(Bytes::from(other)),
            Err(DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        let mut long = full.to_vec();
        long.push(0);
        assert_eq!(
            Heartbeat::from_bytes(Bytes::from(long)),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    proptest! {
        #[test]
        fn heartbeats_round_trip(inc in any::<u64>(), seq in any::<u64>()) {
            let b = beat(inc, seq);
            prop_assert_eq!(Heartbeat::from_bytes(b.to_bytes())?, b);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let r = Heartbeat::from_bytes(Bytes::from(data.clone()));
            match r {
                Ok(b) => prop_assert_eq!(&b.to_bytes()[..], &data[..]),
                Err(_) => prop_assert!(data.len() != Heartbeat::ENCODED_LEN || data[0] != Heartbeat::VERSION),
            }
        }
    }
}

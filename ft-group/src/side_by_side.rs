//! Three failure detectors on one node, over one network, for comparing
//! them under the same faults.
//!
//! A [`SideBySide`] core runs a SWIM member, an all-to-all heartbeating
//! member with a [`FixedTimeout`] detector and one with a [`PhiAccrual`]
//! detector, and multiplexes their messages on one channel. Run in the
//! simulator, the three see the same crashes, the same slow node and the
//! same lossy network, so their accuracy (false suspicions of members that
//! are up) and completeness (time to notice a crash) can be compared
//! honestly, in the same run. `ft sim group` and this crate's accuracy test
//! use it; it is also a template for composing cores (DESIGN §2): each
//! embedded core is a [`Component`], and one [`Outbox::lift`] per core
//! moves its outputs into the outer core's outbox.
//!
//! # On-disk format
//!
//! Of the three, only the SWIM member persists anything: its records (see
//! [`swim`](crate::swim#on-disk-format)), each tagged with its component
//! byte in front (see [`ft_core::record`]). The components, fixed for ever
//! since they are on disk:
//!
//! | component | core | persists |
//! |---|---|---|
//! | 1 | the SWIM member | its incarnations: `1 | 0 | 1 | 1 | u64 LE` |
//! | 2 | the fixed-timeout heartbeating member | nothing |
//! | 3 | the phi-accrual heartbeating member | nothing |
//!
//! A record of any component but 1 fails recovery with a
//! [`RecoveryError`], as does a SWIM record that does not decode.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{
    Component, Counters, NodeId, Outbox, Output, PersistToken, Persisted, Protocol, Recover,
    RecoveryContext, RecoveryError,
};

use crate::detector::{FixedTimeout, PhiAccrual};
use crate::heartbeat::{
    Heartbeat, HeartbeatConfig, HeartbeatEvent, HeartbeatInput, HeartbeatTimer, Heartbeating,
};
use crate::swim::{Swim, SwimConfig, SwimEvent, SwimInput, SwimMessage, SwimTimer};

/// The component of the SWIM member.
const SWIM: Component = Component(1);
/// The component of the fixed-timeout member.
const FIXED: Component = Component(2);
/// The component of the phi-accrual member.
const PHI: Component = Component(3);

/// Which of the three detectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Detector {
    /// Heartbeats with a fixed timeout.
    FixedTimeout,
    /// Heartbeats with a phi accrual detector.
    PhiAccrual,
    /// SWIM gossip membership.
    Swim,
}

impl Detector {
    /// All three, in a stable order.
    pub const ALL: [Detector; 3] = [Detector::FixedTimeout, Detector::PhiAccrual, Detector::Swim];
}

impl std::fmt::Display for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Detector::FixedTimeout => "fixed timeout",
            Detector::PhiAccrual => "phi accrual",
            Detector::Swim => "SWIM",
        })
    }
}

/// Configuration of the three detectors.
#[derive(Clone, Debug)]
pub struct SideBySideConfig {
    /// The SWIM member.
    pub swim: SwimConfig,
    /// The fixed-timeout heartbeating member.
    pub fixed: HeartbeatConfig<FixedTimeout>,
    /// The phi-accrual heartbeating member.
    pub phi: HeartbeatConfig<PhiAccrual>,
}

impl SideBySideConfig {
    /// `members`, every detector with its defaults.
    pub fn new(members: Vec<NodeId>) -> Self {
        SideBySideConfig {
            swim: SwimConfig::new(members.clone()),
            fixed: HeartbeatConfig::new(members.clone(), FixedTimeout::default()),
            phi: HeartbeatConfig::new(members, PhiAccrual::default()),
        }
    }
}

/// A message of one of the three.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SideMessage {
    /// For the SWIM member.
    Swim(SwimMessage),
    /// For the fixed-timeout member.
    Fixed(Heartbeat),
    /// For the phi-accrual member.
    Phi(Heartbeat),
}

impl Wire for SideMessage {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            SideMessage::Swim(m) => {
                buf.put_u8(1);
                m.encode(buf);
            }
            SideMessage::Fixed(m) => {
                buf.put_u8(2);
                m.encode(buf);
            }
            SideMessage::Phi(m) => {
                buf.put_u8(3);
                m.encode(buf);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match wire::get_u8(buf)? {
            1 => SwimMessage::decode(buf).map(SideMessage::Swim),
            2 => Heartbeat::decode(buf).map(SideMessage::Fixed),
            3 => Heartbeat::decode(buf).map(SideMessage::Phi),
            tag => Err(DecodeError::UnknownTag {
                what: "SideMessage",
                tag,
            }),
        }
    }
}

/// An event of one of the three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideEvent {
    /// From the SWIM member.
    Swim(SwimEvent),
    /// From the fixed-timeout member.
    Fixed(HeartbeatEvent),
    /// From the phi-accrual member.
    Phi(HeartbeatEvent),
}

/// A timer of one of the three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SideTimer {
    /// Of the SWIM member.
    Swim(SwimTimer),
    /// Of the fixed-timeout member.
    Fixed(HeartbeatTimer),
    /// Of the phi-accrual member.
    Phi(HeartbeatTimer),
}

/// An input for one or all of the three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideInput {
    /// For the SWIM member.
    Swim(SwimInput),
    /// For both heartbeating members.
    Heartbeat(HeartbeatInput),
}

/// Three detectors on one node. See the [module docs](self).
#[derive(Debug)]
pub struct SideBySide {
    swim: Swim,
    fixed: Heartbeating<FixedTimeout>,
    phi: Heartbeating<PhiAccrual>,
    out: Outbox<SideBySide>,
}

impl SideBySide {
    /// The SWIM member.
    pub fn swim(&self) -> &Swim {
        &self.swim
    }

    /// The fixed-timeout heartbeating member.
    pub fn fixed(&self) -> &Heartbeating<FixedTimeout> {
        &self.fixed
    }

    /// The phi-accrual heartbeating member.
    pub fn phi(&self) -> &Heartbeating<PhiAccrual> {
        &self.phi
    }

    /// Whether `detector` on this node currently holds `node` suspected
    /// (SWIM: suspect or failed).
    pub fn suspects(&self, detector: Detector, node: NodeId) -> bool {
        match detector {
            Detector::FixedTimeout => self.fixed.suspects().contains(&node),
            Detector::PhiAccrual => self.phi.suspects().contains(&node),
            Detector::Swim => {
                self.swim.membership().suspicion(node) == ft_core::Suspicion::Suspected
            }
        }
    }

    /// Moves every pending output of the three into ours, SWIM's first.
    fn collect(&mut self) {
        self.out.lift(
            SWIM,
            &mut self.swim,
            SideMessage::Swim,
            SideTimer::Swim,
            |e| Some(SideEvent::Swim(e)),
        );
        self.out.lift(
            FIXED,
            &mut self.fixed,
            SideMessage::Fixed,
            SideTimer::Fixed,
            |e| Some(SideEvent::Fixed(e)),
        );
        self.out
            .lift(PHI, &mut self.phi, SideMessage::Phi, SideTimer::Phi, |e| {
                Some(SideEvent::Phi(e))
            });
    }
}

impl Protocol for SideBySide {
    type Message = SideMessage;
    type Input = SideInput;
    type Event = SideEvent;
    type Timer = SideTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: SideMessage) {
        match msg {
            SideMessage::Swim(m) => self.swim.handle_message(now, from, m),
            SideMessage::Fixed(m) => self.fixed.handle_message(now, from, m),
            SideMessage::Phi(m) => self.phi.handle_message(now, from, m),
        }
        self.collect();
    }

    fn handle_input(&mut self, now: Instant, input: SideInput) {
        match input {
            SideInput::Swim(i) => self.swim.handle_input(now, i),
            SideInput::Heartbeat(i) => {
                self.fixed.handle_input(now, i);
                self.phi.handle_input(now, i);
            }
        }
        self.collect();
    }

    fn handle_timer(&mut self, now: Instant, timer: SideTimer) {
        match timer {
            SideTimer::Swim(t) => self.swim.handle_timer(now, t),
            SideTimer::Fixed(t) => self.fixed.handle_timer(now, t),
            SideTimer::Phi(t) => self.phi.handle_timer(now, t),
        }
        self.collect();
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        // Only the SWIM member persists.
        if let Persisted::Inner {
            component: SWIM,
            token,
        } = self.out.persisted(token)
        {
            self.swim.handle_persisted(now, token);
        }
        self.collect();
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        let mut c = self.out.counters();
        c += self.swim.counters();
        c += self.fixed.counters();
        c += self.phi.counters();
        c
    }
}

impl Recover for SideBySide {
    type Config = SideBySideConfig;

    /// # Errors
    /// [`RecoveryError`] if a record is not the SWIM member's or does not
    /// decode (see the [on-disk format](self#on-disk-format)).
    fn recover(config: &SideBySideConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        crate::recovery::only_components(&ctx, &[SWIM])?;
        // Each member its own records, and its own stream of random numbers:
        // the seeds it had before records were tagged, so that the same
        // seed gives the same run.
        let part = |component, seed| RecoveryContext {
            seed,
            ..ctx.component(component)
        };
        let swim = Swim::recover(&config.swim, part(SWIM, ctx.seed))?;
        let fixed = Heartbeating::recover(
            &config.fixed,
            part(FIXED, ctx.seed.rotate_left(21) ^ 0x5EED_F1ED),
        )?;
        let phi = Heartbeating::recover(
            &config.phi,
            part(PHI, ctx.seed.rotate_left(42) ^ 0x0000_0000_0FEE_D1E5),
        )?;
        let mut s = SideBySide {
            swim,
            fixed,
            phi,
            out: Outbox::recovered(&ctx),
        };
        s.collect();
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Rumor;
    use crate::swim::SwimRecord;
    use ft_core::harness::{self, Harness};
    use ft_core::{Incarnation, record};
    use proptest::prelude::*;

    fn config() -> SideBySideConfig {
        SideBySideConfig::new((0..4).map(NodeId).collect())
    }

    #[test]
    fn the_three_start_side_by_side_swim_first() {
        let mut h = Harness::<SideBySide>::new(&config(), NodeId(0));
        let timers: Vec<SideTimer> = h.drain().timers_set.into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            timers,
            [
                SideTimer::Swim(SwimTimer::Probe),
                SideTimer::Swim(SwimTimer::Reconnect),
                SideTimer::Fixed(HeartbeatTimer::Beat),
                SideTimer::Fixed(HeartbeatTimer::Check),
                SideTimer::Phi(HeartbeatTimer::Beat),
                SideTimer::Phi(HeartbeatTimer::Check),
            ]
        );
        // Each heartbeats under its own tag; the counters add up.
        let out = h
            .timer(SideTimer::Fixed(HeartbeatTimer::Beat))
            .timer(SideTimer::Phi(HeartbeatTimer::Beat))
            .drain();
        assert_eq!(out.sends.len(), 6);
        assert!(
            out.sends[..3]
                .iter()
                .all(|(_, m)| matches!(m, SideMessage::Fixed(_)))
        );
        assert!(
            out.sends[3..]
                .iter()
                .all(|(_, m)| matches!(m, SideMessage::Phi(_)))
        );
        assert_eq!(h.core.counters().messages_sent, 6);
        assert_eq!(h.core.counters().timers_fired, 2);
    }

    #[test]
    fn swim_records_are_tagged_routed_and_read_back_by_the_next_life() {
        let mut h = Harness::<SideBySide>::new(&config(), NodeId(0));
        h.drain();
        let suspect = Rumor::Suspect {
            node: NodeId(0),
            incarnation: Incarnation(0),
            from: NodeId(2),
        };
        let ping = SwimMessage::Ping {
            seq: 1,
            target: NodeId(0),
            sender_incarnation: Incarnation(0),
            rumors: vec![suspect],
        };
        let out = h.message(NodeId(1), SideMessage::Swim(ping)).drain();
        let [(token, written)] = &out.persists[..] else {
            panic!("{:?}", out.persists)
        };
        assert_eq!(written[0], SWIM.0);
        assert_eq!(
            record::decode::<SwimRecord>(written.slice(1..)),
            Ok(SwimRecord::Incarnation(Incarnation(1)))
        );
        let ev = h.persisted(*token).drain().events;
        assert!(ev.contains(&SideEvent::Swim(SwimEvent::Refuted {
            incarnation: Incarnation(1)
        })));
        // The next life: SWIM starts above it.
        let next = |records| {
            Harness::<SideBySide>::recover(
                &config(),
                RecoveryContext {
                    incarnation: Incarnation(1),
                    records,
                    ..harness::context(NodeId(0))
                },
            )
        };
        let out = next(vec![written.clone()]).unwrap().drain();
        assert_eq!(
            record::decode::<SwimRecord>(out.persists[0].1.slice(1..)),
            Ok(SwimRecord::Incarnation(Incarnation(2)))
        );
        // A record of a heartbeating member (which persists nothing) is
        // refused, not skipped.
        let mut stray = written.to_vec();
        stray[0] = FIXED.0;
        assert!(matches!(
            next(vec![written.clone(), Bytes::from(stray)]),
            Err(RecoveryError::Inconsistent(_))
        ));
    }

    #[test]
    fn messages_round_trip_and_hostile_bytes_are_errors() {
        let msgs = [
            SideMessage::Swim(SwimMessage::Nack { seq: 4 }),
            SideMessage::Fixed(Heartbeat {
                incarnation: Incarnation(2),
                seq: 9,
            }),
            SideMessage::Phi(Heartbeat {
                incarnation: Incarnation(1),
                seq: 1,
            }),
        ];
        for m in msgs {
            assert_eq!(SideMessage::from_bytes(m.to_bytes()), Ok(m));
        }
        assert!(SideMessage::from_bytes(Bytes::from_static(&[9, 1, 2])).is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = SideMessage::from_bytes(Bytes::from(bytes));
        }
    }
}

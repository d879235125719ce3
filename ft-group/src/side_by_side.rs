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
//! use it; it is also a template for composing cores (DESIGN §2).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{Counters, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext};

use crate::detector::{FixedTimeout, PhiAccrual};
use crate::heartbeat::{
    Heartbeat, HeartbeatConfig, HeartbeatEvent, HeartbeatInput, HeartbeatTimer, Heartbeating,
};
use crate::swim::{Swim, SwimConfig, SwimEvent, SwimInput, SwimMessage, SwimTimer};

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
    out: VecDeque<Output<SideBySide>>,
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

    /// Moves every pending output of the three into `out`, tagged.
    fn collect(&mut self) {
        while let Some(o) = self.swim.poll_output() {
            self.out.push_back(match o {
                Output::Send { to, msg } => Output::Send {
                    to,
                    msg: SideMessage::Swim(msg),
                },
                Output::SetTimer { timer, at } => Output::SetTimer {
                    timer: SideTimer::Swim(timer),
                    at,
                },
                Output::CancelTimer { timer } => Output::CancelTimer {
                    timer: SideTimer::Swim(timer),
                },
                // Only SWIM persists, so its tokens pass through unchanged.
                Output::Persist { record, token } => Output::Persist { record, token },
                Output::Compact { before } => Output::Compact { before },
                Output::Event(e) => Output::Event(SideEvent::Swim(e)),
            });
        }
        while let Some(o) = self.fixed.poll_output() {
            if let Some(o) = tag(o, SideMessage::Fixed, SideTimer::Fixed, SideEvent::Fixed) {
                self.out.push_back(o);
            }
        }
        while let Some(o) = self.phi.poll_output() {
            if let Some(o) = tag(o, SideMessage::Phi, SideTimer::Phi, SideEvent::Phi) {
                self.out.push_back(o);
            }
        }
    }
}

fn tag<D: ft_core::FailureDetector>(
    o: Output<Heartbeating<D>>,
    msg: fn(Heartbeat) -> SideMessage,
    timer: fn(HeartbeatTimer) -> SideTimer,
    event: fn(HeartbeatEvent) -> SideEvent,
) -> Option<Output<SideBySide>> {
    Some(match o {
        Output::Send { to, msg: m } => Output::Send { to, msg: msg(m) },
        Output::SetTimer { timer: t, at } => Output::SetTimer {
            timer: timer(t),
            at,
        },
        Output::CancelTimer { timer: t } => Output::CancelTimer { timer: timer(t) },
        // Heartbeating members keep nothing on stable storage.
        Output::Persist { .. } | Output::Compact { .. } => return None,
        Output::Event(e) => Output::Event(event(e)),
    })
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
        self.swim.handle_persisted(now, token);
        self.collect();
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop_front()
    }

    fn counters(&self) -> Counters {
        let (a, b, c) = (
            self.swim.counters(),
            self.fixed.counters(),
            self.phi.counters(),
        );
        Counters {
            messages_sent: a.messages_sent + b.messages_sent + c.messages_sent,
            messages_received: a.messages_received + b.messages_received + c.messages_received,
            messages_dropped: a.messages_dropped + b.messages_dropped + c.messages_dropped,
            retransmissions: a.retransmissions + b.retransmissions + c.retransmissions,
            timers_fired: a.timers_fired + b.timers_fired + c.timers_fired,
            persists: a.persists + b.persists + c.persists,
            compactions: a.compactions + b.compactions + c.compactions,
        }
    }
}

impl Recover for SideBySide {
    type Config = SideBySideConfig;

    fn recover(
        config: &SideBySideConfig,
        ctx: RecoveryContext,
    ) -> Result<Self, ft_core::RecoveryError> {
        Ok({
            // Each member gets its own stream of random numbers.
            let with_seed = |seed: u64, records: Vec<Bytes>| RecoveryContext {
                seed,
                records,
                ..ctx.clone()
            };
            let swim = Swim::recover(&config.swim, with_seed(ctx.seed, ctx.records.clone()))?;
            let fixed = Heartbeating::recover(
                &config.fixed,
                with_seed(ctx.seed.rotate_left(21) ^ 0x5EED_F1ED, Vec::new()),
            )?;
            let phi = Heartbeating::recover(
                &config.phi,
                with_seed(ctx.seed.rotate_left(42) ^ 0x0000_0000_0FEE_D1E5, Vec::new()),
            )?;
            let mut s = SideBySide {
                swim,
                fixed,
                phi,
                out: VecDeque::new(),
            };
            s.collect();
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ft_core::Incarnation;
    use proptest::prelude::*;

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

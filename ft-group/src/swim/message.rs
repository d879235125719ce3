//! What SWIM members say to each other.

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{Incarnation, NodeId};

use crate::membership::{RUMOR_MIN_LEN, Rumor};

/// The most rumors a message may carry; a longer list is refused by the
/// decoder before anything is allocated.
pub const MAX_RUMORS: usize = 64;

/// A SWIM message. Every kind but `Nack` carries piggybacked rumors: that
/// is the whole of SWIM's dissemination, no extra messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwimMessage {
    /// "Are you alive?" — to `target`, which answers with an `Ack`.
    Ping {
        /// The prober's number for this probe.
        seq: u64,
        /// Whom the ping is for: a member answers only pings meant for it,
        /// so a misdelivered ping cannot vouch for the wrong node.
        target: NodeId,
        /// The sender's own incarnation: first-hand word, which may raise
        /// the receiver's view of the sender by any amount (hearsay may not,
        /// see [`SwimConfig::max_hearsay_rise`](super::SwimConfig::max_hearsay_rise)).
        sender_incarnation: Incarnation,
        /// Piggybacked news.
        rumors: Vec<Rumor>,
    },
    /// "Ping `target` for me": an indirect probe.
    PingReq {
        /// The requester's number for the probe, echoed in the `Ack` or
        /// `Nack` it gets back.
        seq: u64,
        /// The member to probe.
        target: NodeId,
        /// The sender's own incarnation: first-hand word, which may raise
        /// the receiver's view of the sender by any amount (hearsay may not,
        /// see [`SwimConfig::max_hearsay_rise`](super::SwimConfig::max_hearsay_rise)).
        sender_incarnation: Incarnation,
        /// Piggybacked news.
        rumors: Vec<Rumor>,
    },
    /// The answer to a ping, or an indirect probe's success forwarded.
    Ack {
        /// The probe answered.
        seq: u64,
        /// The sender's own incarnation: first-hand word, which may raise
        /// the receiver's view of the sender by any amount (hearsay may not,
        /// see [`SwimConfig::max_hearsay_rise`](super::SwimConfig::max_hearsay_rise)).
        sender_incarnation: Incarnation,
        /// Piggybacked news.
        rumors: Vec<Rumor>,
    },
    /// Lifeguard: an intermediary got no ack from the target in time. A
    /// prober that misses nacks it expected learns that *it* is the one
    /// not hearing.
    Nack {
        /// The probe that failed.
        seq: u64,
    },
}

const PING: u8 = 1;
const PING_REQ: u8 = 2;
const ACK: u8 = 3;
const NACK: u8 = 4;

impl SwimMessage {
    /// The sender's own incarnation, if the message carries it (all but
    /// `Nack` do).
    pub fn sender_incarnation(&self) -> Option<Incarnation> {
        match self {
            SwimMessage::Ping {
                sender_incarnation, ..
            }
            | SwimMessage::PingReq {
                sender_incarnation, ..
            }
            | SwimMessage::Ack {
                sender_incarnation, ..
            } => Some(*sender_incarnation),
            SwimMessage::Nack { .. } => None,
        }
    }

    /// The piggybacked rumors.
    pub fn rumors(&self) -> &[Rumor] {
        match self {
            SwimMessage::Ping { rumors, .. }
            | SwimMessage::PingReq { rumors, .. }
            | SwimMessage::Ack { rumors, .. } => rumors,
            SwimMessage::Nack { .. } => &[],
        }
    }
}

fn put_rumors(buf: &mut BytesMut, rumors: &[Rumor]) {
    // The sender never piggybacks more than MAX_RUMORS (the core caps
    // max_piggyback), so the count fits.
    buf.put_u32_le(rumors.len().min(MAX_RUMORS) as u32);
    for r in rumors.iter().take(MAX_RUMORS) {
        r.encode(buf);
    }
}

fn get_rumors(buf: &mut Bytes) -> Result<Vec<Rumor>, DecodeError> {
    let n = wire::get_len(buf, RUMOR_MIN_LEN)?;
    if n > MAX_RUMORS {
        return Err(DecodeError::Oversized {
            len: n,
            max: MAX_RUMORS,
        });
    }
    let mut rumors = Vec::with_capacity(n);
    for _ in 0..n {
        rumors.push(Rumor::decode(buf)?);
    }
    Ok(rumors)
}

impl Wire for SwimMessage {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            SwimMessage::Ping {
                seq,
                target,
                sender_incarnation,
                rumors,
            } => {
                buf.put_u8(PING);
                buf.put_u64_le(*seq);
                buf.put_u64_le(target.0);
                buf.put_u64_le(sender_incarnation.0);
                put_rumors(buf, rumors);
            }
            SwimMessage::PingReq {
                seq,
                target,
                sender_incarnation,
                rumors,
            } => {
                buf.put_u8(PING_REQ);
                buf.put_u64_le(*seq);
                buf.put_u64_le(target.0);
                buf.put_u64_le(sender_incarnation.0);
                put_rumors(buf, rumors);
            }
            SwimMessage::Ack {
                seq,
                sender_incarnation,
                rumors,
            } => {
                buf.put_u8(ACK);
                buf.put_u64_le(*seq);
                buf.put_u64_le(sender_incarnation.0);
                put_rumors(buf, rumors);
            }
            SwimMessage::Nack { seq } => {
                buf.put_u8(NACK);
                buf.put_u64_le(*seq);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        let seq = wire::get_u64(buf)?;
        match tag {
            PING | PING_REQ => {
                let target = NodeId(wire::get_u64(buf)?);
                let sender_incarnation = Incarnation(wire::get_u64(buf)?);
                let rumors = get_rumors(buf)?;
                Ok(if tag == PING {
                    SwimMessage::Ping {
                        seq,
                        target,
                        sender_incarnation,
                        rumors,
                    }
                } else {
                    SwimMessage::PingReq {
                        seq,
                        target,
                        sender_incarnation,
                        rumors,
                    }
                })
            }
            ACK => Ok(SwimMessage::Ack {
                seq,
                sender_incarnation: Incarnation(wire::get_u64(buf)?),
                rumors: get_rumors(buf)?,
            }),
            NACK => Ok(SwimMessage::Nack { seq }),
            tag => Err(DecodeError::UnknownTag {
                what: "SwimMessage",
                tag,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rumor() -> impl Strategy<Value = Rumor> {
        (0u8..3, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(k, n, i, f)| {
            let (node, incarnation) = (NodeId(n), Incarnation(i));
            match k {
                0 => Rumor::Alive { node, incarnation },
                1 => Rumor::Suspect {
                    node,
                    incarnation,
                    from: NodeId(f),
                },
                _ => Rumor::Failed { node, incarnation },
            }
        })
    }

    fn message() -> impl Strategy<Value = SwimMessage> {
        (
            0u8..4,
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(rumor(), 0..MAX_RUMORS),
        )
            .prop_map(|(k, seq, t, i, rumors)| match k {
                0 => SwimMessage::Ping {
                    seq,
                    target: NodeId(t),
                    sender_incarnation: Incarnation(i),
                    rumors,
                },
                1 => SwimMessage::PingReq {
                    seq,
                    target: NodeId(t),
                    sender_incarnation: Incarnation(i),
                    rumors,
                },
                2 => SwimMessage::Ack {
                    seq,
                    sender_incarnation: Incarnation(i),
                    rumors,
                },
                _ => SwimMessage::Nack { seq },
            })
    }

    proptest! {
        #[test]
        fn round_trips(m in message()) {
            prop_assert_eq!(SwimMessage::from_bytes(m.to_bytes()), Ok(m));
        }

        #[test]
        fn every_truncation_is_an_error(m in message()) {
            let bytes = m.to_bytes();
            for cut in 0..bytes.len() {
                prop_assert!(SwimMessage::from_bytes(bytes.slice(..cut)).is_err());
            }
        }

        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = SwimMessage::from_bytes(Bytes::from(bytes));
        }
    }

    #[test]
    fn a_huge_rumor_count_is_refused_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u8(ACK);
        buf.put_u64_le(1);
        buf.put_u64_le(0);
        buf.put_u32_le(u32::MAX);
        assert!(matches!(
            SwimMessage::from_bytes(buf.freeze()),
            Err(DecodeError::Truncated { .. })
        ));
        let mut buf = BytesMut::new();
        buf.put_u8(ACK);
        buf.put_u64_le(1);
        buf.put_u64_le(0);
        buf.put_u32_le(MAX_RUMORS as u32 + 1);
        buf.put_bytes(0xff, (MAX_RUMORS + 1) * 25);
        assert_eq!(
            SwimMessage::from_bytes(buf.freeze()),
            Err(DecodeError::Oversized {
                len: MAX_RUMORS + 1,
                max: MAX_RUMORS
            })
        );
    }
}

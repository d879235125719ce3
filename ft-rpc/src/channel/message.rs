//! What two reliable-channel endpoints say to each other.
//!
//! ```text
//! Data: version u8 | 1 u8 | sender_incarnation u64 | receiver_incarnation u64
//!       | seq u64 | payload (u32 length + bytes)
//! Ack:  version u8 | 2 u8 | sender_incarnation u64 | receiver_incarnation u64
//!       | cumulative u64 | count u32 | count × (start u64, end u64) | window u32
//! ```
//!
//! All little-endian. The frame around a message carries the CRC-32, so a
//! message that reaches the decoder was not damaged in transit; the decoder
//! still treats its input as hostile (a Byzantine sender, a bug) and bounds
//! every length before allocating.

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::Incarnation;
use ft_core::frame::DEFAULT_MAX_PAYLOAD;
use ft_core::wire::{self, DecodeError, Wire};

/// The message format version this code writes and reads.
pub const MESSAGE_VERSION: u8 = 1;

/// Bytes a `Data` message adds to its payload: version, tag, two
/// incarnations, the sequence number and the payload length.
pub const DATA_OVERHEAD: usize = 1 + 1 + 8 + 8 + 8 + 4;

/// The largest payload a `Data` message carries: what fits the default
/// frame ([`DEFAULT_MAX_PAYLOAD`]) after [`DATA_OVERHEAD`]. The decoder
/// refuses longer ones before reading them.
pub const MAX_PAYLOAD: usize = DEFAULT_MAX_PAYLOAD - DATA_OVERHEAD;

/// The most selective-acknowledgement ranges an `Ack` may carry; the
/// decoder refuses more before allocating.
pub const MAX_SACK_RANGES: usize = 32;

const DATA: u8 = 1;
const ACK: u8 = 2;

/// A reliable-channel message.
///
/// Both kinds name the two lives they belong to: the sender's incarnation,
/// and the receiver's as the sender knows it. A stream of sequence numbers
/// belongs to one pair of lives, so either endpoint's restart starts a new
/// stream, and a message of an earlier life is recognised and dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReliableMessage {
    /// One application message (a segment).
    Data {
        /// The sender's current incarnation.
        sender_incarnation: Incarnation,
        /// The receiver's incarnation as the sender knows it;
        /// [`Incarnation::FIRST`] while the sender has not heard from the
        /// receiver (a receiver that never restarted accepts it; one that did
        /// drops it and tells the sender its incarnation in the `Ack`).
        receiver_incarnation: Incarnation,
        /// Position in the stream from this sender life to this receiver
        /// life, from 0.
        seq: u64,
        /// The application's bytes.
        payload: Bytes,
    },
    /// What the receiver holds of a stream.
    Ack {
        /// The acknowledging endpoint's incarnation.
        sender_incarnation: Incarnation,
        /// The incarnation of the data's sender as the acknowledging
        /// endpoint knows it.
        receiver_incarnation: Incarnation,
        /// The next sequence number expected: every segment below it was
        /// delivered.
        cumulative: u64,
        /// Half-open ranges `[start, end)` received above `cumulative` and
        /// held in the reorder buffer: non-empty, ascending, with a gap
        /// before each (the decoder enforces it), at most
        /// [`MAX_SACK_RANGES`].
        selective: Vec<(u64, u64)>,
        /// How many segments from `cumulative` on the receiver will buffer
        /// (its reorder buffer): the sender keeps no more in flight.
        window: u32,
    },
}

impl ReliableMessage {
    /// The incarnation of the endpoint that sent this message.
    pub fn sender_incarnation(&self) -> Incarnation {
        match self {
            ReliableMessage::Data {
                sender_incarnation, ..
            }
            | ReliableMessage::Ack {
                sender_incarnation, ..
            } => *sender_incarnation,
        }
    }

    /// The incarnation of the addressee, as the sender knew it.
    pub fn receiver_incarnation(&self) -> Incarnation {
        match self {
            ReliableMessage::Data {
                receiver_incarnation,
                ..
            }
            | ReliableMessage::Ack {
                receiver_incarnation,
                ..
            } => *receiver_incarnation,
        }
    }
}

impl Wire for ReliableMessage {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(MESSAGE_VERSION);
        match self {
            ReliableMessage::Data {
                sender_incarnation,
                receiver_incarnation,
                seq,
                payload,
            } => {
                buf.put_u8(DATA);
                buf.put_u64_le(sender_incarnation.0);
                buf.put_u64_le(receiver_incarnation.0);
                buf.put_u64_le(*seq);
                wire::put_bytes(buf, payload);
            }
            ReliableMessage::Ack {
                sender_incarnation,
                receiver_incarnation,
                cumulative,
                selective,
                window,
            } => {
                buf.put_u8(ACK);
                buf.put_u64_le(sender_incarnation.0);
                buf.put_u64_le(receiver_incarnation.0);
                buf.put_u64_le(*cumulative);
                // The core never builds more than MAX_SACK_RANGES, so the
                // cap only matters to a hand-built value, which then still
                // encodes to something the decoder accepts.
                let n = selective.len().min(MAX_SACK_RANGES);
                buf.put_u32_le(n as u32);
                for &(start, end) in &selective[..n] {
                    buf.put_u64_le(start);
                    buf.put_u64_le(end);
                }
                buf.put_u32_le(*window);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let version = wire::get_u8(buf)?;
        if version != MESSAGE_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: MESSAGE_VERSION,
            });
        }
        let tag = wire::get_u8(buf)?;
        if tag != DATA && tag != ACK {
            return Err(DecodeError::UnknownTag {
                what: "ReliableMessage",
                tag,
            });
        }
        let sender_incarnation = Incarnation(wire::get_u64(buf)?);
        let receiver_incarnation = Incarnation(wire::get_u64(buf)?);
        if tag == DATA {
            let seq = wire::get_u64(buf)?;
            let payload = wire::get_bytes(buf, MAX_PAYLOAD)?;
            return Ok(ReliableMessage::Data {
                sender_incarnation,
                receiver_incarnation,
                seq,
                payload,
            });
        }
        let cumulative = wire::get_u64(buf)?;
        let n = wire::get_len(buf, 16)?;
        if n > MAX_SACK_RANGES {
            return Err(DecodeError::Oversized {
                len: n,
                max: MAX_SACK_RANGES,
            });
        }
        let mut selective = Vec::with_capacity(n);
        // Each range must start past the previous one's end (or past the
        // cumulative point, which is itself missing): then ranges never
        // overlap, and the core can trust their order.
        let mut floor = cumulative;
        for _ in 0..n {
            let start = wire::get_u64(buf)?;
            let end = wire::get_u64(buf)?;
            if start <= floor || end <= start {
                return Err(DecodeError::Invalid(
                    "selective ranges must be non-empty, ascending and above the cumulative ack",
                ));
            }
            selective.push((start, end));
            floor = end;
        }
        let window = wire::get_u32(buf)?;
        Ok(ReliableMessage::Ack {
            sender_incarnation,
            receiver_incarnation,
            cumulative,
            selective,
            window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Valid selective ranges above `cumulative`: gaps and lengths at least
    /// one, so they satisfy the decoder's checks.
    fn ranges(cumulative: u64) -> impl Strategy<Value = Vec<(u64, u64)>> {
        proptest::collection::vec((1u64..1000, 1u64..1000), 0..=MAX_SACK_RANGES).prop_map(
            move |steps| {
                let mut out = Vec::new();
                let mut at = cumulative;
                for (gap, len) in steps {
                    let Some(start) = at.checked_add(gap) else {
                        break;
                    };
                    let Some(end) = start.checked_add(len) else {
                        break;
                    };
                    out.push((start, end));
                    at = end;
                }
                out
            },
        )
    }

    fn message() -> impl Strategy<Value = ReliableMessage> {
        let data = (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(s, r, seq, p)| ReliableMessage::Data {
                sender_incarnation: Incarnation(s),
                receiver_incarnation: Incarnation(r),
                seq,
                payload: Bytes::from(p),
            });
        let ack = (any::<u64>(), any::<u64>(), 0u64..u64::MAX / 2, any::<u32>()).prop_flat_map(
            |(s, r, c, w)| {
                ranges(c).prop_map(move |selective| ReliableMessage::Ack {
                    sender_incarnation: Incarnation(s),
                    receiver_incarnation: Incarnation(r),
                    cumulative: c,
                    selective,
                    window: w,
                })
            },
        );
        prop_oneof![data, ack]
    }

    proptest! {
        #[test]
        fn round_trips(m in message()) {
            prop_assert_eq!(ReliableMessage::from_bytes(m.to_bytes()), Ok(m));
        }

        #[test]
        fn every_truncation_is_an_error(m in message()) {
            let bytes = m.to_bytes();
            for cut in 0..bytes.len() {
                let r = ReliableMessage::from_bytes(bytes.slice(..cut));
                prop_assert!(matches!(r, Err(DecodeError::Truncated { .. })), "cut {}: {:?}", cut, r);
            }
        }

        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = ReliableMessage::from_bytes(Bytes::from(bytes.clone())) {
                // Whatever is accepted re-encodes to the same bytes.
                prop_assert_eq!(&m.to_bytes()[..], &bytes[..]);
            }
        }

        #[test]
        fn hostile_bytes_after_a_valid_header_never_panic(
            tag in 0u8..4,
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut b = BytesMut::new();
            b.put_u8(MESSAGE_VERSION);
            b.put_u8(tag);
            b.put_slice(&rest);
            let _ = ReliableMessage::from_bytes(b.freeze());
        }
    }

    fn ack_header(cumulative: u64, count: u32) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(MESSAGE_VERSION);
        b.put_u8(ACK);
        b.put_u64_le(1);
        b.put_u64_le(2);
        b.put_u64_le(cumulative);
        b.put_u32_le(count);
        b
    }

    #[test]
    fn a_huge_range_count_is_refused_before_allocating() {
        let b = ack_header(0, u32::MAX);
        assert!(matches!(
            ReliableMessage::from_bytes(b.freeze()),
            Err(DecodeError::Truncated { .. })
        ));
        let mut b = ack_header(0, MAX_SACK_RANGES as u32 + 1);
        b.put_bytes(0xff, (MAX_SACK_RANGES + 1) * 16 + 4);
        assert_eq!(
            ReliableMessage::from_bytes(b.freeze()),
            Err(DecodeError::Oversized {
                len: MAX_SACK_RANGES + 1,
                max: MAX_SACK_RANGES
            })
        );
    }

    #[test]
    fn a_huge_payload_is_refused_before_reading_it() {
        let mut b = BytesMut::new();
        b.put_u8(MESSAGE_VERSION);
        b.put_u8(DATA);
        b.put_bytes(0, 24);
        b.put_u32_le(u32::MAX);
        assert_eq!(
            ReliableMessage::from_bytes(b.freeze()),
            Err(DecodeError::Oversized {
                len: u32::MAX as usize,
                max: MAX_PAYLOAD
            })
        );
    }

    #[test]
    fn malformed_ranges_are_invalid() {
        for ranges in [
            vec![(5, 5)],          // empty
            vec![(3, 7)],          // not above the cumulative ack (5)
            vec![(5, 7)],          // starts at the cumulative ack, which is missing
            vec![(7, 9), (9, 11)], // no gap: would be one range
            vec![(9, 11), (7, 8)], // descending
        ] {
            let mut b = ack_header(5, ranges.len() as u32);
            for (s, e) in &ranges {
                b.put_u64_le(*s);
                b.put_u64_le(*e);
            }
            b.put_u32_le(64);
            assert!(
                matches!(
                    ReliableMessage::from_bytes(b.freeze()),
                    Err(DecodeError::Invalid(_))
                ),
                "{ranges:?}"
            );
        }
    }

    #[test]
    fn version_and_tag_are_checked() {
        let m = ReliableMessage::Data {
            sender_incarnation: Incarnation(1),
            receiver_incarnation: Incarnation(2),
            seq: 3,
            payload: Bytes::from_static(b"x"),
        };
        let mut bytes = m.to_bytes().to_vec();
        bytes[0] = 9;
        assert_eq!(
            ReliableMessage::from_bytes(Bytes::from(bytes.clone())),
            Err(DecodeError::UnsupportedVersion {
                found: 9,
                supported: MESSAGE_VERSION
            })
        );
        bytes[0] = MESSAGE_VERSION;
        bytes[1] = 7;
        assert_eq!(
            ReliableMessage::from_bytes(Bytes::from(bytes)),
            Err(DecodeError::UnknownTag {
                what: "ReliableMessage",
                tag: 7
            })
        );
    }

    #[test]
    fn a_full_payload_fits_the_default_frame() {
        let m = ReliableMessage::Data {
            sender_incarnation: Incarnation(1),
            receiver_incarnation: Incarnation(2),
            seq: 3,
            payload: Bytes::from(vec![7u8; MAX_PAYLOAD]),
        };
        assert_eq!(m.to_bytes().len(), DEFAULT_MAX_PAYLOAD);
    }
}

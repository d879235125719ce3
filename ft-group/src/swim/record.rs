//! What a SWIM member keeps on stable storage: see the
//! [on-disk format](super#on-disk-format).

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{Incarnation, Record};

/// A durable record of a [`Swim`](super::Swim) member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwimRecord {
    /// This member took `Incarnation` (at a restart, a refutation or a
    /// rejoin). It is announced only once this record is durable, so a
    /// later life starts above it.
    Incarnation(Incarnation),
}

/// The tag of [`SwimRecord::Incarnation`].
const INCARNATION: u8 = 1;

impl Wire for SwimRecord {
    /// `tag: u8 | incarnation: u64 LE`.
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            SwimRecord::Incarnation(incarnation) => {
                buf.put_u8(INCARNATION);
                incarnation.encode(buf);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match wire::get_u8(buf)? {
            INCARNATION => Incarnation::decode(buf).map(SwimRecord::Incarnation),
            tag => Err(DecodeError::UnknownTag {
                what: "SwimRecord",
                tag,
            }),
        }
    }
}

impl Record for SwimRecord {
    const VERSION: u8 = 1;
}

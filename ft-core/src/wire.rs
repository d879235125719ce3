//! The [`Wire`] trait: how a message becomes bytes and back.
//!
//! Every message type is encoded by hand on [`bytes`], little-endian. A
//! decoder treats its input as hostile: it checks every length against what
//! is left in the buffer *before* allocating, and returns a typed
//! [`DecodeError`] instead of panicking.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::id::{Incarnation, NodeId};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("truncated input: needed {needed} more bytes, {available} available")]
    Truncated {
        /// Bytes the decoder still needed.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A length field exceeds the limit the decoder was given.
    #[error("oversized: {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// The stated length.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// The frame does not start with the frame magic.
    #[error("bad magic {found:#06x}")]
    BadMagic {
        /// The two bytes found instead.
        found: u16,
    },
    /// The frame (or message) carries a version this code does not speak.
    #[error("unsupported version {found} (supported: {supported})")]
    UnsupportedVersion {
        /// The version in the input.
        found: u8,
        /// The version this code speaks.
        supported: u8,
    },
    /// The CRC-32 of the frame does not match its contents.
    #[error("checksum mismatch: frame says {expected:#010x}, contents give {actual:#010x}")]
    Checksum {
        /// The CRC carried in the frame.
        expected: u32,
        /// The CRC computed over the received bytes.
        actual: u32,
    },
    /// A tag byte names no known variant.
    #[error("unknown tag {tag} for {what}")]
    UnknownTag {
        /// The type being decoded.
        what: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// The value decoded but bytes were left over.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// The bytes are well-formed but describe an impossible value.
    #[error("invalid value: {0}")]
    Invalid(&'static str),
}

/// A type that crosses the network.
///
/// `decode(encode(x)) == x` for every value, and `decode` never panics: on
/// any input it returns a value or a [`DecodeError`].
pub trait Wire: Sized {
    /// Appends the encoding of `self` to `buf`.
    fn encode(&self, buf: &mut BytesMut);

    /// Decodes one value from the front of `buf`, advancing it past the value.
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError>;

    /// How many bytes [`encode`](Wire::encode) will append, if known cheaply
    /// (0, the default, means unknown). Only a hint: the frame codec
    /// reserves that much before encoding, which saves a reallocation per
    /// message on the hot path; a wrong hint costs speed, never
    /// correctness.
    fn encoded_len_hint(&self) -> usize {
        0
    }

    /// Encodes into a fresh buffer.
    fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Decodes a value that must use all of `bytes`.
    fn from_bytes(mut bytes: Bytes) -> Result<Self, DecodeError> {
        let v = Self::decode(&mut bytes)?;
        if bytes.has_remaining() {
            return Err(DecodeError::TrailingBytes(bytes.remaining()));
        }
        Ok(v)
    }
}

/// Fails with [`DecodeError::Truncated`] unless `n` bytes remain.
pub fn need(buf: &Bytes, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated {
            needed: n - buf.remaining(),
            available: buf.remaining(),
        })
    } else {
        Ok(())
    }
}

/// Reads a `u8`.
pub fn get_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

/// Reads a little-endian `u16`.
pub fn get_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    need(buf, 2)?;
    Ok(buf.get_u16_le())
}

/// Reads a little-endian `u32`.
pub fn get_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    need(buf, 4)?;
    Ok(buf.get_u32_le())
}

/// Reads a little-endian `u64`.
pub fn get_u64(buf: &mut Bytes) -> Result<u64, DecodeError> {
    need(buf, 8)?;
    Ok(buf.get_u64_le())
}

/// Reads a `u32`-length-prefixed byte string of at most `max` bytes, without
/// copying.
///
/// The length is checked against `max` and against what is left *before*
/// anything is allocated, so a hostile length costs nothing.
pub fn get_bytes(buf: &mut Bytes, max: usize) -> Result<Bytes, DecodeError> {
    let len = get_u32(buf)? as usize;
    if len > max {
        return Err(DecodeError::Oversized { len, max });
    }
    need(buf, len)?;
    Ok(buf.split_to(len))
}

/// Writes a `u32`-length-prefixed byte string.
///
/// # Panics
/// If `bytes` is longer than `u32::MAX`, which no frame can carry.
pub fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("byte string longer than u32::MAX");
    buf.put_u32_le(len);
    buf.put_slice(bytes);
}

/// Reads a `u32` element count for a sequence whose elements take at least
/// `min_elem` bytes each, rejecting counts the remaining input cannot hold.
///
/// Decoders use it before `Vec::with_capacity`, so a hostile count cannot
/// make them reserve memory the frame does not pay for.
pub fn get_len(buf: &mut Bytes, min_elem: usize) -> Result<usize, DecodeError> {
    let n = get_u32(buf)? as usize;
    let bytes = n.saturating_mul(min_elem.max(1));
    if bytes > buf.remaining() {
        return Err(DecodeError::Truncated {
            needed: bytes - buf.remaining(),
            available: buf.remaining(),
        });
    }
    Ok(n)
}

impl Wire for NodeId {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.0);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        get_u64(buf).map(NodeId)
    }
}

impl Wire for Incarnation {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.0);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        get_u64(buf).map(Incarnation)
    }
}

impl Wire for u64 {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64_le(*self);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        get_u64(buf)
    }
}

impl Wire for Bytes {
    fn encode(&self, buf: &mut BytesMut) {
        put_bytes(buf, self);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        get_bytes(buf, u32::MAX as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_length_is_rejected_before_allocation() {
        let mut b = BytesMut::new();
        b.put_u32_le(u32::MAX);
        b.put_slice(b"abc");
        let mut bytes = b.freeze();
        assert_eq!(
            get_bytes(&mut bytes.clone(), 16),
            Err(DecodeError::Oversized {
                len: u32::MAX as usize,
                max: 16
            })
        );
        assert!(matches!(
            get_bytes(&mut bytes, usize::MAX),
            Err(DecodeError::Truncated { available: 3, .. })
        ));
        let mut count = Bytes::from_static(&[0xff, 0xff, 0xff, 0x7f, 1, 2]);
        assert!(matches!(
            get_len(&mut count, 8),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn from_bytes_rejects_trailing_bytes() {
        let mut b = BytesMut::new();
        NodeId(7).encode(&mut b);
        b.put_u8(0);
        assert_eq!(
            NodeId::from_bytes(b.freeze()),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    proptest! {
        #[test]
        fn primitives_round_trip(n in any::<u64>(), i in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = BytesMut::new();
            NodeId(n).encode(&mut b);
            Incarnation(i).encode(&mut b);
            Bytes::from(data.clone()).encode(&mut b);
            let mut bytes = b.freeze();
            prop_assert_eq!(NodeId::decode(&mut bytes)?, NodeId(n));
            prop_assert_eq!(Incarnation::decode(&mut bytes)?, Incarnation(i));
            prop_assert_eq!(Bytes::decode(&mut bytes)?, Bytes::from(data));
            prop_assert!(bytes.is_empty());
        }

        #[test]
        fn truncation_is_an_error_never_a_panic(data in proptest::collection::vec(any::<u8>(), 0..40), cut in 0usize..40) {
            let mut b = BytesMut::new();
            Bytes::from(data.clone()).encode(&mut b);
            let full = b.freeze();
            let cut = cut.min(full.len());
            let res = Bytes::decode(&mut full.slice(..cut));
            if cut < full.len() {
                let is_truncated = matches!(res, Err(DecodeError::Truncated { .. }));
                prop_assert!(is_truncated);
            } else {
                prop_assert_eq!(res?, Bytes::from(data));
            }
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = Bytes::from(data);
            let _ = Bytes::decode(&mut bytes.clone());
            let _ = get_len(&mut bytes, 4);
        }
    }
}

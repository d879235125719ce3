//! Frames: the unit a [`Channel`](crate::Channel) carries.
//!
//! ```text
//! +-------+---------+--------+---------+--------+
//! | magic | version | length | payload | crc32  |
//! | u16   | u8      | u32 LE | length  | u32 LE |
//! +-------+---------+--------+---------+--------+
//! ```
//!
//! The CRC-32 covers everything before it (header and payload): it is the
//! error detection the subject asks of a reliable channel. A frame that fails
//! it is reported as [`DecodeError::Checksum`] so the caller can drop and
//! count it; it is never delivered.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::wire::{DecodeError, Wire};

/// The two bytes every frame starts with (`"fT"` little-endian).
pub const MAGIC: u16 = 0x5466;
/// The frame format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the payload: magic, version, length.
pub const HEADER_LEN: usize = 2 + 1 + 4;
/// Bytes after the payload: the CRC-32.
pub const TRAILER_LEN: usize = 4;
/// Bytes a frame adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + TRAILER_LEN;
/// The default largest payload: what fits an IPv4 UDP datagram.
pub const DEFAULT_MAX_PAYLOAD: usize = 65_507 - OVERHEAD;

/// Encodes and decodes frames with a bound on the payload size.
///
/// The bound is checked on the stated length *before* any payload is read, so
/// a hostile length field cannot make the decoder allocate or wait for more
/// than `max_payload` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameCodec {
    max_payload: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameCodec {
    /// A codec accepting payloads of at most `max_payload` bytes
    /// (capped at `u32::MAX`).
    pub fn new(max_payload: usize) -> Self {
        FrameCodec {
            max_payload: max_payload.min(u32::MAX as usize),
        }
    }

    /// The largest payload accepted.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The largest frame, payload plus overhead.
    pub fn max_frame(&self) -> usize {
        self.max_payload + OVERHEAD
    }

    /// This codec, its payload limit lowered if need be so that every frame
    /// fits in `max_datagram` bytes (a channel's
    /// [`max_datagram`](crate::Channel::max_datagram)). The driver applies it
    /// to its codec, so a core's messages never make datagrams the channel
    /// refuses.
    #[must_use]
    pub fn fitted(self, max_datagram: usize) -> Self {
        if self.max_frame() <= max_datagram {
            self
        } else {
            FrameCodec::new(max_datagram.saturating_sub(OVERHEAD))
        }
    }

    /// Frames `payload`, appending to `out`.
    pub fn encode_payload(&self, payload: &[u8], out: &mut BytesMut) -> Result<(), DecodeError> {
        if payload.len() > self.max_payload {
            return Err(DecodeError::Oversized {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let start = out.len();
        out.reserve(payload.len() + OVERHEAD);
        out.put_u16_le(MAGIC);
        out.put_u8(VERSION);
        out.put_u32_le(payload.len() as u32);
        out.put_slice(payload);
        let crc = crc32fast::hash(&out[start..]);
        out.put_u32_le(crc);
        Ok(())
    }

    /// Encodes `msg` and frames it, appending to `out`.
    ///
    /// The message is encoded straight into `out` and the header patched
    /// afterwards, so no intermediate buffer is needed.
    pub fn encode<M: Wire>(&self, msg: &M, out: &mut BytesMut) -> Result<(), DecodeError> {
        let start = out.len();
        out.reserve(OVERHEAD + msg.encoded_len_hint());
        out.put_u16_le(MAGIC);
        out.put_u8(VERSION);
        out.put_u32_le(0);
        msg.encode(out);
        let len = out.len() - start - HEADER_LEN;
        if len > self.max_payload {
            out.truncate(start);
            return Err(DecodeError::Oversized {
                len,
                max: self.max_payload,
            });
        }
        out[start + 3..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.put_u32_le(crc);
        Ok(())
    }

    /// Encodes `msg` into a fresh frame.
    pub fn encode_to_bytes<M: Wire>(&self, msg: &M) -> Result<Bytes, DecodeError> {
        let mut out = BytesMut::new();
        self.encode(msg, &mut out)?;
        Ok(out.freeze())
    }

    /// Checks one whole frame (a datagram) and returns its payload.
    ///
    /// The datagram must hold exactly one frame: bytes after the CRC are an
    /// error, since a datagram transport preserves boundaries.
    pub fn decode_payload(&self, mut frame: Bytes) -> Result<Bytes, DecodeError> {
        let len = self.check_header(&frame)?;
        let total = HEADER_LEN + len + TRAILER_LEN;
        if frame.len() < total {
            return Err(DecodeError::Truncated {
                needed: total - frame.len(),
                available: frame.len(),
            });
        }
        if frame.len() > total {
            return Err(DecodeError::TrailingBytes(frame.len() - total));
        }
        let actual = crc32fast::hash(&frame[..HEADER_LEN + len]);
        let expected =
            u32::from_le_bytes(frame[HEADER_LEN + len..total].try_into().unwrap_or([0; 4]));
        if actual != expected {
            return Err(DecodeError::Checksum { expected, actual });
        }
        frame.advance(HEADER_LEN);
        frame.truncate(len);
        Ok(frame)
    }

    /// Checks one whole frame and decodes the message it carries, which must
    /// use the whole payload.
    pub fn decode<M: Wire>(&self, frame: Bytes) -> Result<M, DecodeError> {
        M::from_bytes(self.decode_payload(frame)?)
    }

    /// Takes one frame off the front of a byte stream (for stream transports
    /// such as TCP).
    ///
    /// Returns `Ok(None)` when more bytes are needed; the buffer is left
    /// untouched then. A bad header or CRC is an error: a stream that carried
    /// one cannot be resynchronised and should be closed.
    pub fn decode_stream(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if buf.len() < HEADER_LEN {
            // Validate what is there already, so garbage is refused early.
            if buf.len() >= 2 {
                let magic = u16::from_le_bytes([buf[0], buf[1]]);
                if magic != MAGIC {
                    return Err(DecodeError::BadMagic { found: magic });
                }
            }
            return Ok(None);
        }
        let len = self.check_header(buf)?;
        let total = HEADER_LEN + len + TRAILER_LEN;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let frame = buf.split_to(total).freeze();
        self.decode_payload(frame).map(Some)
    }

    /// Validates magic, version and length; returns the payload length.
    fn check_header(&self, frame: &[u8]) -> Result<usize, DecodeError> {
        if frame.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                needed: HEADER_LEN - frame.len(),
                available: frame.len(),
            });
        }
        let magic = u16::from_le_bytes([frame[0], frame[1]]);
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        if frame[2] != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: frame[2],
                supported: VERSION,
            });
        }
        let len = u32::from_le_bytes([frame[3], frame[4], frame[5], frame[6]]) as usize;
        if len > self.max_payload {
            return Err(DecodeError::Oversized {
                len,
                max: self.max_payload,
            });
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_of(payload: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        FrameCodec::default()
            .encode_payload(payload, &mut b)
            .unwrap();
        b.freeze()
    }

    #[test]
    fn fitted_lowers_the_limit_only_when_frames_would_not_fit() {
        let default = FrameCodec::default();
        assert_eq!(default.fitted(usize::MAX), default);
        assert_eq!(default.fitted(default.max_frame()), default);
        let small = default.fitted(1400);
        assert_eq!(small.max_frame(), 1400);
        assert_eq!(default.fitted(3).max_payload(), 0);
    }

    #[test]
    fn layout_is_as_documented() {
        let f = frame_of(b"hi");
        assert_eq!(f.len(), OVERHEAD + 2);
        assert_eq!(&f[..2], &MAGIC.to_le_bytes());
        assert_eq!(f[2], VERSION);
        assert_eq!(&f[3..7], &2u32.to_le_bytes());
        assert_eq!(&f[7..9], b"hi");
        assert_eq!(&f[9..], &crc32fast::hash(&f[..9]).to_le_bytes());
    }

    #[test]
    fn message_encoding_matches_payload_encoding() {
        let codec = FrameCodec::default();
        let via_msg = codec.encode_to_bytes(&Bytes::from_static(b"abc")).unwrap();
        let mut payload = BytesMut::new();
        Bytes::from_static(b"abc").encode(&mut payload);
        assert_eq!(via_msg, frame_of(&payload));
        assert_eq!(
            codec.decode::<Bytes>(via_msg).unwrap(),
            Bytes::from_static(b"abc")
        );
    }

    #[test]
    fn oversized_payload_is_refused_on_both_sides() {
        let small = FrameCodec::new(4);
        let mut out = BytesMut::new();
        assert_eq!(
            small.encode_payload(b"12345", &mut out),
            Err(DecodeError::Oversized { len: 5, max: 4 })
        );
        assert!(out.is_empty());
        assert!(matches!(
            small.encode(&Bytes::from_static(b"12345"), &mut out),
            Err(DecodeError::Oversized { .. })
        ));
        assert!(out.is_empty(), "a refused message leaves nothing behind");
        assert_eq!(
            small.decode_payload(frame_of(b"12345")),
            Err(DecodeError::Oversized { len: 5, max: 4 })
        );
    }

    #[test]
    fn each_header_fault_has_its_error() {
        let codec = FrameCodec::default();
        let good = frame_of(b"payload");
        let mut bad_magic = good.to_vec();
        bad_magic[0] ^= 0xff;
        assert!(matches!(
            codec.decode_payload(bad_magic.into()),
            Err(DecodeError::BadMagic { .. })
        ));
        let mut bad_version = good.to_vec();
        bad_version[2] = 9;
        assert_eq!(
            codec.decode_payload(bad_version.into()),
            Err(DecodeError::UnsupportedVersion {
                found: 9,
                supported: VERSION
            })
        );
        let mut flipped = good.to_vec();
        flipped[8] ^= 0x01;
        assert!(matches!(
            codec.decode_payload(flipped.into()),
            Err(DecodeError::Checksum { .. })
        ));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(
            codec.decode_payload(long.into()),
            Err(DecodeError::TrailingBytes(1))
        );
        assert!(matches!(
            codec.decode_payload(good.slice(..good.len() - 1)),
            Err(DecodeError::Truncated { needed: 1, .. })
        ));
    }

    #[test]
    fn stream_yields_frames_one_by_one_and_waits_for_more() {
        let codec = FrameCodec::default();
        let mut stream = BytesMut::new();
        stream.extend_from_slice(&frame_of(b"one"));
        stream.extend_from_slice(&frame_of(b"two"));
        let second_len = frame_of(b"two").len();
        let mut partial = stream.split_off(stream.len() - 3);
        assert_eq!(
            codec.decode_stream(&mut stream).unwrap().unwrap(),
            Bytes::from_static(b"one")
        );
        assert_eq!(codec.decode_stream(&mut stream).unwrap(), None);
        assert_eq!(
            stream.len(),
            second_len - 3,
            "an incomplete frame is left untouched"
        );
        stream.unsplit(partial.split());
        assert_eq!(
            codec.decode_stream(&mut stream).unwrap().unwrap(),
            Bytes::from_static(b"two")
        );
        assert!(stream.is_empty());
        let mut garbage = BytesMut::from(&b"xx"[..]);
        assert!(matches!(
            codec.decode_stream(&mut garbage),
            Err(DecodeError::BadMagic { .. })
        ));
    }

    proptest! {
        #[test]
        fn frames_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let codec = FrameCodec::default();
            prop_assert_eq!(codec.decode_payload(frame_of(&payload))?, Bytes::from(payload));
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..256), bit in any::<prop::sample::Index>()) {
            let codec = FrameCodec::default();
            let mut f = frame_of(&payload).to_vec();
            let i = bit.index(f.len() * 8);
            f[i / 8] ^= 1 << (i % 8);
            prop_assert!(codec.decode_payload(f.into()).is_err());
        }

        #[test]
        fn every_truncation_is_an_error(payload in proptest::collection::vec(any::<u8>(), 0..256), cut in any::<prop::sample::Index>()) {
            let codec = FrameCodec::default();
            let f = frame_of(&payload);
            let cut = cut.index(f.len());
            prop_assert!(codec.decode_payload(f.slice(..cut)).is_err());
            let mut stream = BytesMut::from(&f[..cut]);
            prop_assert!(matches!(codec.decode_stream(&mut stream), Ok(None)));
        }

        #[test]
        fn hostile_bytes_never_panic_nor_overread(data in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..1024) {
            let codec = FrameCodec::new(max);
            if let Ok(p) = codec.decode_payload(Bytes::from(data.clone())) {
                prop_assert!(p.len() <= max);
            }
            let mut stream = BytesMut::from(&data[..]);
            while let Ok(Some(p)) = codec.decode_stream(&mut stream) {
                prop_assert!(p.len() <= max);
            }
            prop_assert!(stream.capacity() <= data.len().max(max + OVERHEAD) + 64);
        }

        #[test]
        fn hostile_header_with_valid_crc_is_bounded(len in any::<u32>(), max in 0usize..4096) {
            // A forged header whose length field lies: the codec must refuse
            // before reading, never reserve `len` bytes.
            let mut f = BytesMut::new();
            f.put_u16_le(MAGIC);
            f.put_u8(VERSION);
            f.put_u32_le(len);
            let codec = FrameCodec::new(max);
            let mut stream = f.clone();
            match codec.decode_stream(&mut stream) {
                Ok(None) => prop_assert!(len as usize <= max),
                Err(DecodeError::Oversized { .. }) => prop_assert!(len as usize > max),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
            prop_assert!(stream.capacity() <= max + OVERHEAD + 64);
        }
    }
}

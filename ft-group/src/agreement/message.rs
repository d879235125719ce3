//! The one message of OM(m) and its wire format.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::NodeId;
use ft_core::wire::{self, DecodeError, Wire};

/// The longest path a decoder accepts: the commander and up to 31 relayers.
///
/// Far beyond any run [`MAX_TREE_PATHS`](super::MAX_TREE_PATHS) allows, so it
/// never limits a valid run; it exists so that hostile input cannot make a
/// decoder allocate for a long path.
pub const MAX_PATH_LEN: usize = 32;

/// The largest value a decoder accepts, in bytes.
///
/// Byzantine agreement is on small values (a decision, a digest): every
/// lieutenant keeps one value per path, so the value size multiplies the
/// whole tree's memory. Agree on a digest of anything larger.
pub const MAX_VALUE_LEN: usize = 1024;

/// The version byte every encoded [`OmMessage`] starts with.
pub const OM_VERSION: u8 = 1;

/// "`path[last]` says that `path[last-1]` said … that the commander said
/// `value`".
///
/// The commander sends `path == [commander]`; every lieutenant that relays a
/// message appends itself, so the last general on the path is the sender.
/// That is the only claim of the path a receiver can check (the channel
/// tells who sent a message); the rest is what the sender *says* it heard,
/// which is all oral messages offer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OmMessage {
    /// The commander first, then every relayer; the last is the sender.
    pub path: Vec<NodeId>,
    /// The value the sender says it received along `path`.
    pub value: Bytes,
}

/// Wire format, little-endian:
///
/// ```text
/// version: u8 (= OM_VERSION)
/// path length: u32 (≤ MAX_PATH_LEN), then that many u64 node ids
/// value length: u32 (≤ MAX_VALUE_LEN), then that many bytes
/// ```
///
/// Every length is checked against its limit and against the bytes left
/// before anything is allocated, so a decoder never allocates more than the
/// input pays for, and never panics.
impl Wire for OmMessage {
    /// # Panics
    /// If `value` is longer than `u32::MAX` bytes, which no frame can carry
    /// (the core never sends a value above [`MAX_VALUE_LEN`]).
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(OM_VERSION);
        // A path too long for a u32 cannot exist in memory either.
        buf.put_u32_le(u32::try_from(self.path.len()).unwrap_or(u32::MAX));
        for node in &self.path {
            node.encode(buf);
        }
        wire::put_bytes(buf, &self.value);
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let version = wire::get_u8(buf)?;
        if version != OM_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: OM_VERSION,
            });
        }
        let len = wire::get_len(buf, 8)?;
        if len > MAX_PATH_LEN {
            return Err(DecodeError::Oversized {
                len,
                max: MAX_PATH_LEN,
            });
        }
        let mut path = Vec::with_capacity(len);
        for _ in 0..len {
            path.push(NodeId(buf.get_u64_le()));
        }
        let value = wire::get_bytes(buf, MAX_VALUE_LEN)?;
        Ok(OmMessage { path, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(path: &[u64], value: &'static [u8]) -> OmMessage {
        OmMessage {
            path: path.iter().copied().map(NodeId).collect(),
            value: Bytes::from_static(value),
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let b = msg(&[1, 2], b"go").to_bytes();
        let mut expected = vec![OM_VERSION, 2, 0, 0, 0];
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&[2, 0, 0, 0, b'g', b'o']);
        assert_eq!(&b[..], &expected[..]);
    }

    #[test]
    fn hostile_lengths_are_typed_errors() {
        let mut b = BytesMut::new();
        b.put_u8(OM_VERSION);
        b.put_u32_le(u32::MAX);
        assert!(matches!(
            OmMessage::from_bytes(b.freeze()),
            Err(DecodeError::Truncated { .. })
        ));

        let mut b = BytesMut::new();
        b.put_u8(OM_VERSION);
        b.put_u32_le(MAX_PATH_LEN as u32 + 1);
        b.put_slice(&[0; 8 * (MAX_PATH_LEN + 1)]);
        b.put_u32_le(0);
        assert_eq!(
            OmMessage::from_bytes(b.freeze()),
            Err(DecodeError::Oversized {
                len: MAX_PATH_LEN + 1,
                max: MAX_PATH_LEN
            })
        );

        let mut b = BytesMut::new();
        b.put_u8(OM_VERSION);
        b.put_u32_le(0);
        b.put_u32_le(MAX_VALUE_LEN as u32 + 1);
        b.put_slice(&[0; MAX_VALUE_LEN + 1]);
        assert_eq!(
            OmMessage::from_bytes(b.freeze()),
            Err(DecodeError::Oversized {
                len: MAX_VALUE_LEN + 1,
                max: MAX_VALUE_LEN
            })
        );

        assert_eq!(
            OmMessage::from_bytes(Bytes::from_static(&[9, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(DecodeError::UnsupportedVersion {
                found: 9,
                supported: OM_VERSION
            })
        );
        assert!(matches!(
            OmMessage::from_bytes(Bytes::new()),
            Err(DecodeError::Truncated { .. })
        ));
        let mut trailing = BytesMut::from(&msg(&[0], b"x").to_bytes()[..]);
        trailing.put_u8(0);
        assert_eq!(
            OmMessage::from_bytes(trailing.freeze()),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    fn any_message() -> impl Strategy<Value = OmMessage> {
        (
            proptest::collection::vec(any::<u64>(), 0..=MAX_PATH_LEN),
            proptest::collection::vec(any::<u8>(), 0..=64),
        )
            .prop_map(|(path, value)| OmMessage {
                path: path.into_iter().map(NodeId).collect(),
                value: Bytes::from(value),
            })
    }

    proptest! {
        #[test]
        fn round_trips(m in any_message()) {
            prop_assert_eq!(OmMessage::from_bytes(m.to_bytes())?, m);
        }

        #[test]
        fn every_truncation_is_an_error(m in any_message(), cut in any::<prop::sample::Index>()) {
            let full = m.to_bytes();
            let cut = cut.index(full.len());
            let truncated = matches!(
                OmMessage::from_bytes(full.slice(..cut)),
                Err(DecodeError::Truncated { .. })
            );
            prop_assert!(truncated);
        }

        #[test]
        fn mutated_messages_never_panic_and_what_decodes_round_trips(
            m in any_message(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = m.to_bytes().to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let input = Bytes::from(bytes);
            if let Ok(m) = OmMessage::from_bytes(input.clone()) {
                prop_assert_eq!(m.to_bytes(), input);
            }
        }

        #[test]
        fn hostile_bytes_never_panic_and_what_decodes_round_trips(
            data in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let input = Bytes::from(data);
            if let Ok(m) = OmMessage::from_bytes(input.clone()) {
                prop_assert_eq!(m.to_bytes(), input);
            }
        }
    }
}

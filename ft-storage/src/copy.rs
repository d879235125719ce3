//! The on-disk format of one checksummed copy of a stored value, shared by
//! [`FileStore`](crate::FileStore) and both disks of
//! [`MirroredStore`](crate::MirroredStore).
//!
//! ```text
//! magic (4) | version u8 | generation u64 | key_len u32 | key | value_len u32 | value | crc32 u32
//! ```
//!
//! Integers are little-endian; the CRC-32 covers every byte before it. The
//! key is stored with the value so that a copy found under the wrong name (a
//! misplaced or mis-repaired file) is detected rather than returned as the
//! value of another key. The subject's stable-storage rules ("if one is bad,
//! but the other is okay (checksums): choose the good one") need exactly this:
//! a way to tell a good copy from a bad one by looking at it alone.
//!
//! The *generation* grows with every put of the key on a
//! [`MirroredStore`](crate::MirroredStore): of two good copies that
//! differ, the newer one is the value, so a disk that lost a write (it
//! holds an older, still valid copy) cannot win against the disk that has
//! the new one. Version 1 copies (before generations) read as generation 0.

use bytes::Bytes;

/// The first four bytes of every copy ("ft stable value").
pub const MAGIC: [u8; 4] = *b"FTSV";

/// The format version this code writes.
pub const VERSION: u8 = 2;

/// The version before generations, still read (as generation 0).
pub const VERSION_1: u8 = 1;

/// The largest key or value length the format can describe.
pub const MAX_LEN: usize = u32::MAX as usize;

/// Bytes of framing around the key and value: magic, version, generation,
/// the two lengths and the CRC.
pub const OVERHEAD: usize = 4 + 1 + 8 + 4 + 4 + 4;

/// Why bytes are not a valid copy of the expected key's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// Fewer bytes than the smallest possible copy (a truncated file).
    #[error("too short: {len} bytes, a copy has at least {min}")]
    TooShort {
        /// How many bytes there were.
        len: usize,
        /// The smallest copy of this version.
        min: usize,
    },
    /// The first four bytes are not [`MAGIC`]: not a copy at all.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// The bytes found instead.
        found: [u8; 4],
    },
    /// A format version this code does not know.
    #[error("unsupported version {found}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The lengths in the header do not add up to the size of the copy
    /// (truncated, extended, or a length field is damaged).
    #[error("lengths describe {expected} bytes but the copy has {actual}")]
    LengthMismatch {
        /// Size the header's lengths imply (saturated if it overflows).
        expected: usize,
        /// Actual size.
        actual: usize,
    },
    /// The checksum does not match the contents.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// CRC stored in the copy.
        stored: u32,
        /// CRC of the bytes actually there.
        computed: u32,
    },
    /// A valid copy, but of a different key: the file is misplaced.
    #[error("copy belongs to another key")]
    WrongKey,
}

/// A valid copy, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The stored value.
    pub value: Bytes,
    /// Its generation: how many puts of the key made it (0 for copies
    /// written without one).
    pub generation: u64,
}

/// Encodes `value` stored under `key`, put number `generation`, as one
/// self-checking copy.
///
/// # Panics
/// If `key` or `value` is longer than [`MAX_LEN`]; the stores reject such
/// requests before encoding, so this only fires on a caller bug.
pub fn encode(key: &[u8], value: &[u8], generation: u64) -> Vec<u8> {
    let key_len = u32::try_from(key.len()).expect("key longer than the copy format allows");
    let value_len = u32::try_from(value.len()).expect("value longer than the copy format allows");
    let mut out = Vec::with_capacity(OVERHEAD + key.len() + value.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a little-endian `u32` at `at`; the caller has checked the bounds.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buf)
}

/// Decodes a copy written by [`encode`] (or by version 1) for
/// `expected_key`.
///
/// Every way the bytes can be wrong is an error, never a panic: each length
/// is checked against the bytes actually present before anything is sliced,
/// because the bytes come from a disk that may have damaged them.
pub fn decode(bytes: &[u8], expected_key: &[u8]) -> Result<Decoded, CopyError> {
    let len = bytes.len();
    if len < 5 {
        return Err(CopyError::TooShort { len, min: OVERHEAD });
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&bytes[..4]);
    if magic != MAGIC {
        return Err(CopyError::BadMagic { found: magic });
    }
    let (key_start, overhead) = match bytes[4] {
        VERSION => (4 + 1 + 8 + 4, OVERHEAD),
        VERSION_1 => (4 + 1 + 4, OVERHEAD - 8),
        found => return Err(CopyError::UnsupportedVersion { found }),
    };
    if len < overhead {
        return Err(CopyError::TooShort { len, min: overhead });
    }
    let generation = if bytes[4] == VERSION {
        let mut g = [0u8; 8];
        g.copy_from_slice(&bytes[5..13]);
        u64::from_le_bytes(g)
    } else {
        0
    };
    // From here on the size the header implies is computed with saturating
    // arithmetic: a damaged length near u32::MAX must not overflow on a
    // 32-bit target and wrap into a plausible size.
    let key_len = u32_at(bytes, key_start - 4) as usize;
    let key_end = key_start.saturating_add(key_len);
    // The value length field sits right after the key; it must be present
    // (with the CRC) before it can be read.
    let min_with_key = key_end.saturating_add(4 + 4);
    if len < min_with_key {
        return Err(CopyError::LengthMismatch {
            expected: min_with_key,
            actual: len,
        });
    }
    let value_len = u32_at(bytes, key_end) as usize;
    let value_start = key_end + 4;
    let value_end = value_start.saturating_add(value_len);
    let expected = value_end.saturating_add(4);
    if len != expected {
        return Err(CopyError::LengthMismatch {
            expected,
            actual: len,
        });
    }
    let stored = u32_at(bytes, value_end);
    let computed = crc32fast::hash(&bytes[..value_end]);
    if stored != computed {
        return Err(CopyError::ChecksumMismatch { stored, computed });
    }
    // The key is compared only after the checksum passed, so that WrongKey
    // means "intact, but someone else's", not "damaged key bytes".
    if &bytes[key_start..key_end] != expected_key {
        return Err(CopyError::WrongKey);
    }
    Ok(Decoded {
        value: Bytes::copy_from_slice(&bytes[value_start..value_end]),
        generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_key_and_value_round_trip() {
        let enc = encode(b"", b"", 0);
        assert_eq!(enc.len(), OVERHEAD);
        assert_eq!(decode(&enc, b"").unwrap().value, Bytes::new());
    }

    /// A copy as version 1 wrote it: no generation.
    fn encode_v1(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION_1);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn version_1_copies_read_as_generation_0() {
        let d = decode(&encode_v1(b"key", b"old"), b"key").unwrap();
        assert_eq!((d.value, d.generation), (Bytes::from("old"), 0));
        assert_eq!(
            decode(&encode_v1(b"key", b"old"), b"kex"),
            Err(CopyError::WrongKey)
        );
    }

    #[test]
    fn the_generation_round_trips_and_is_checksummed() {
        let enc = encode(b"k", b"v", 41);
        assert_eq!(decode(&enc, b"k").unwrap().generation, 41);
        let mut bad = enc.clone();
        bad[6] ^= 1;
        assert!(matches!(
            decode(&bad, b"k"),
            Err(CopyError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn each_kind_of_damage_has_its_own_error() {
        let enc = encode(b"key", b"value", 7);
        assert_eq!(
            decode(&enc[..3], b"key"),
            Err(CopyError::TooShort {
                len: 3,
                min: OVERHEAD
            })
        );
        assert_eq!(
            decode(&enc[..10], b"key"),
            Err(CopyError::TooShort {
                len: 10,
                min: OVERHEAD
            })
        );
        let mut bad = enc.clone();
        bad[0] = b'X';
        assert!(matches!(
            decode(&bad, b"key"),
            Err(CopyError::BadMagic { .. })
        ));
        let mut bad = enc.clone();
        bad[4] = VERSION + 1;
        assert_eq!(
            decode(&bad, b"key"),
            Err(CopyError::UnsupportedVersion { found: VERSION + 1 })
        );
        let mut bad = enc.clone();
        bad.push(0);
        assert!(matches!(
            decode(&bad, b"key"),
            Err(CopyError::LengthMismatch { .. })
        ));
        let mut bad = enc.clone();
        let last = bad.len() - 6; // inside the value
        bad[last] ^= 0x01;
        assert!(matches!(
            decode(&bad, b"key"),
            Err(CopyError::ChecksumMismatch { .. })
        ));
        assert_eq!(decode(&enc, b"kez"), Err(CopyError::WrongKey));
        assert_eq!(decode(&enc, b"ke"), Err(CopyError::WrongKey));
    }

    #[test]
    fn a_huge_length_field_is_an_error_not_a_panic() {
        let mut enc = encode(b"k", b"v", 0);
        enc[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&enc, b"k"),
            Err(CopyError::LengthMismatch { .. })
        ));
        let mut enc = encode(b"k", b"v", 0);
        enc[18..22].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&enc, b"k"),
            Err(CopyError::LengthMismatch { .. })
        ));
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=100)
    }

    fn value() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..200)
    }

    proptest! {
        #[test]
        fn round_trip(k in key(), v in value()) {
            let enc = encode(&k, &v, 3);
            prop_assert_eq!(enc.len(), OVERHEAD + k.len() + v.len());
            prop_assert_eq!(decode(&enc, &k).unwrap(), Decoded { value: Bytes::from(v), generation: 3 });
        }

        #[test]
        fn every_single_bit_flip_is_detected(k in key(), v in value()) {
            let enc = encode(&k, &v, 9);
            for bit in 0..enc.len() * 8 {
                let mut bad = enc.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(decode(&bad, &k).is_err(), "flip of bit {} not detected", bit);
            }
        }

        #[test]
        fn every_truncation_is_detected(k in key(), v in value()) {
            let enc = encode(&k, &v, 9);
            for cut in 0..enc.len() {
                prop_assert!(decode(&enc[..cut], &k).is_err(), "truncation to {} not detected", cut);
            }
        }

        #[test]
        fn a_copy_of_another_key_is_rejected(k in key(), other in key(), v in value()) {
            prop_assume!(k != other);
            prop_assert_eq!(decode(&encode(&k, &v, 9), &other), Err(CopyError::WrongKey));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), k in key()) {
            let _ = decode(&bytes, &k);
        }

        #[test]
        fn random_bytes_after_a_valid_header_never_panic(
            rest in proptest::collection::vec(any::<u8>(), 0..300),
            k in key(),
        ) {
            // Random bytes almost never pass the magic check; starting from a
            // valid magic and version drives them into the length checks.
            let mut bytes = MAGIC.to_vec();
            bytes.push(VERSION);
            bytes.extend_from_slice(&rest);
            let _ = decode(&bytes, &k);
        }
    }
}

//! The on-disk format of one log record.
//!
//! ```text
//! +--------+--------+--------+-------------+---------+
//! | crc32  | len    | lsn    | batch_first | payload |
//! | u32 LE | u32 LE | u64 LE | u64 LE      | len     |
//! +--------+--------+--------+-------------+---------+
//! ```
//!
//! The CRC-32 covers everything after it: length, LSN, batch start and
//! payload. `batch_first` is the LSN of the first record written to the same
//! segment by the same write-and-sync cycle; recovery uses it to tell a torn
//! tail (the last, possibly unsynced cycle) from corruption of a record that
//! was durable (one followed by a record of a *later* cycle, which is only
//! written after the earlier cycle's sync returned).

use std::ops::Range;

/// Bytes before the payload.
pub(crate) const HEADER: usize = 24;

/// One record found at an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) lsn: u64,
    pub(crate) batch_first: u64,
    pub(crate) payload: Range<usize>,
    /// Offset just past the record.
    pub(crate) end: usize,
}

/// What lies at an offset of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parse {
    /// A record whose CRC checks.
    Record(Found),
    /// A header of zeros: the preallocated, never-written part of a segment.
    Zeros,
    /// Not a valid record (the reason says why).
    Invalid(&'static str),
}

/// Appends the encoding of one record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, lsn: u64, batch_first: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&batch_first.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The LSN field of a header at `off`, if a whole header fits (a cheap
/// filter before a full [`parse`]).
pub(crate) fn lsn_at(seg: &[u8], off: usize) -> Option<u64> {
    (off + HEADER <= seg.len()).then(|| u64_at(seg, off + 8))
}

/// Parses the record at `off` of `seg`, refusing payloads over `max`.
pub(crate) fn parse(seg: &[u8], off: usize, max: usize) -> Parse {
    let Some(h) = seg.get(off..off + HEADER) else {
        return if seg[off.min(seg.len())..].iter().all(|&b| b == 0) {
            Parse::Zeros
        } else {
            Parse::Invalid("header cut short")
        };
    };
    if h.iter().all(|&b| b == 0) {
        return Parse::Zeros;
    }
    let len = u32_at(h, 4) as usize;
    if len > max {
        return Parse::Invalid("length over the record limit");
    }
    let end = off + HEADER + len;
    if end > seg.len() {
        return Parse::Invalid("record runs past the end of the segment");
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[4..]);
    crc.update(&seg[off + HEADER..end]);
    if crc.finalize() != u32_at(h, 0) {
        return Parse::Invalid("checksum mismatch");
    }
    let lsn = u64_at(h, 8);
    let batch_first = u64_at(h, 16);
    if batch_first > lsn {
        return Parse::Invalid("batch starts after its record");
    }
    Parse::Record(Found {
        lsn,
        batch_first,
        payload: off + HEADER..end,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zeros_are_not_a_record_and_garbage_is_invalid() {
        assert_eq!(parse(&[0; 64], 0, 100), Parse::Zeros);
        assert_eq!(parse(&[0; 10], 0, 100), Parse::Zeros);
        assert!(matches!(parse(&[1; 64], 0, 100), Parse::Invalid(_)));
        assert!(matches!(parse(&[0, 0, 1], 0, 100), Parse::Invalid(_)));
    }

    proptest! {
        #[test]
        fn records_round_trip(lsn in 0u64..1 << 40, back in 0u64..100, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = vec![7u8; 3];
            encode(&mut out, lsn, lsn.saturating_sub(back), &payload);
            match parse(&out, 3, 1 << 20) {
                Parse::Record(f) => {
                    prop_assert_eq!(f.lsn, lsn);
                    prop_assert_eq!(&out[f.payload], &payload[..]);
                    prop_assert_eq!(f.end, out.len());
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn every_bit_flip_and_cut_is_caught(payload in proptest::collection::vec(any::<u8>(), 0..100), bit in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
            let mut out = Vec::new();
            encode(&mut out, 5, 5, &payload);
            let mut flipped = out.clone();
            let i = bit.index(out.len() * 8);
            flipped[i / 8] ^= 1 << (i % 8);
            prop_assert!(!matches!(parse(&flipped, 0, 1 << 20), Parse::Record(_)));
            let cut = cut.index(out.len());
            prop_assert!(!matches!(parse(&out[..cut], 0, 1 << 20), Parse::Record(_)));
        }

        #[test]
        fn hostile_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), off in 0usize..200) {
            let _ = parse(&data, off.min(data.len()), 64);
        }
    }
}

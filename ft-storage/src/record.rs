//! The on-disk format of one log record.
//!
//! ```text
//! +------------+-------------+--------+----------+--------+-------------+---------+
//! | header_crc | payload_crc | len    | reserved | lsn    | batch_first | payload |
//! | u32 LE     | u32 LE      | u32 LE | u32 (0)  | u64 LE | u64 LE      | len     |
//! +------------+-------------+--------+----------+--------+-------------+---------+
//! ```
//!
//! `header_crc` (CRC-32) covers the 28 header bytes after it, the payload's
//! CRC included, so a header can be checked on its own, in constant time,
//! and a valid header vouches for the payload it describes.
//! `batch_first` is the LSN of the first record written to the same
//! segment by the same write-and-sync cycle; recovery uses it to tell a torn
//! tail (the last, possibly unsynced cycle) from corruption of a record that
//! was durable (one followed by a record of a *later* cycle, which is only
//! written after the earlier cycle's sync returned).
//!
//! Why the header has a checksum of its own: to decide that, recovery looks
//! for a later cycle's header anywhere after a bad record. With one CRC over
//! header and payload, each candidate offset cost a CRC over the length it
//! claimed, and crafted garbage (many fake headers claiming long payloads)
//! made the search quadratic; checking 28 bytes per candidate keeps it
//! linear in the segment's size.

/// Bytes before the payload.
pub(crate) const HEADER: usize = 32;

/// Bytes the header checksum covers.
pub(crate) const HEADER_CHECKED: usize = HEADER - 4;

/// A header whose checksum holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) len: u32,
    pub(crate) lsn: u64,
    pub(crate) batch_first: u64,
    pub(crate) payload_crc: u32,
}

/// What lies at a record's place in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parse {
    /// A header whose checksum holds (the payload is still to be checked).
    Header(Header),
    /// A header of zeros: the preallocated, never-written part of a segment.
    Zeros,
    /// Not a valid header (the reason says why).
    Invalid(&'static str),
}

/// Appends the encoding of one record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, lsn: u64, batch_first: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&batch_first.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 4..start + HEADER]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The LSN field of the header starting at `h[0]` (unchecked: a cheap
/// filter before [`parse`]).
pub(crate) fn lsn_of(h: &[u8]) -> u64 {
    u64_at(h, 16)
}

/// The batch-start field of the header starting at `h[0]` (unchecked).
pub(crate) fn batch_first_of(h: &[u8]) -> u64 {
    u64_at(h, 24)
}

/// Parses the header in `h` (at least [`HEADER`] bytes).
pub(crate) fn parse(h: &[u8]) -> Parse {
    let h = &h[..HEADER];
    if h.iter().all(|&b| b == 0) {
        return Parse::Zeros;
    }
    if crc32fast::hash(&h[4..]) != u32_at(h, 0) {
        return Parse::Invalid("header checksum mismatch");
    }
    if u32_at(h, 12) != 0 {
        return Parse::Invalid("reserved header bits set");
    }
    let header = Header {
        payload_crc: u32_at(h, 4),
        len: u32_at(h, 8),
        lsn: lsn_of(h),
        batch_first: batch_first_of(h),
    };
    if header.batch_first > header.lsn {
        return Parse::Invalid("batch starts after its record");
    }
    Parse::Header(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zeros_are_not_a_record_and_garbage_is_invalid() {
        assert_eq!(parse(&[0; 64]), Parse::Zeros);
        assert!(matches!(parse(&[1; 64]), Parse::Invalid(_)));
    }

    fn checked(h: &[u8]) -> Option<(Header, &[u8])> {
        match parse(h) {
            Parse::Header(hd) => {
                let payload = h.get(HEADER..HEADER + hd.len as usize)?;
                (crc32fast::hash(payload) == hd.payload_crc).then_some((hd, payload))
            }
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn records_round_trip(lsn in 0u64..1 << 40, back in 0u64..100, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            encode(&mut out, lsn, lsn.saturating_sub(back), &payload);
            prop_assert_eq!(out.len(), HEADER + payload.len());
            let (h, p) = checked(&out).expect("valid");
            prop_assert_eq!(h.lsn, lsn);
            prop_assert_eq!(h.batch_first, lsn.saturating_sub(back));
            prop_assert_eq!(p, &payload[..]);
        }

        #[test]
        fn every_bit_flip_is_caught(payload in proptest::collection::vec(any::<u8>(), 0..100), bit in any::<prop::sample::Index>()) {
            let mut out = Vec::new();
            encode(&mut out, 5, 5, &payload);
            let i = bit.index(out.len() * 8);
            out[i / 8] ^= 1 << (i % 8);
            prop_assert!(checked(&out).is_none());
        }

        #[test]
        fn hostile_headers_never_panic(data in proptest::collection::vec(any::<u8>(), HEADER..HEADER + 8)) {
            let _ = parse(&data);
        }
    }
}

//! Bodies that arrive in parts ([`Chunk`]s), put back together across
//! retransmissions, with the memory they hold bounded per peer and in all.

use std::collections::BTreeMap;

use bytes::Bytes;
use ft_core::NodeId;

use super::message::{CallId, Chunk, MAX_PART};

/// One body being put together.
#[derive(Debug)]
struct Partial {
    /// Tells two different bodies under one call apart (a re-execution's
    /// reply, a reused call identity): their parts are never mixed.
    fingerprint: u64,
    buf: Vec<u8>,
    /// Which `MAX_PART` blocks have arrived.
    have: Vec<bool>,
    missing: usize,
    /// For least-recently-used eviction.
    touched: u64,
}

/// Partial bodies by (peer, call).
#[derive(Debug, Default)]
pub(crate) struct Parts {
    partial: BTreeMap<(NodeId, CallId), Partial>,
    held_by: BTreeMap<NodeId, usize>,
    held: usize,
    clock: u64,
    /// Partial bodies dropped to stay within the bounds.
    pub(crate) evicted: u64,
    /// Parts dropped as malformed (misaligned, inconsistent).
    pub(crate) malformed: u64,
}

/// What [`Parts::add`] made of a part.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// The body is whole: here it is (and it is no longer held).
    Whole(Bytes),
    /// Kept; more parts are needed.
    Waiting,
    /// Dropped (malformed, or larger than the bounds allow).
    Dropped,
}

impl Parts {
    /// Whether no partial body is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }

    /// Bytes held for `peer`.
    pub(crate) fn held_by(&self, peer: NodeId) -> usize {
        self.held_by.get(&peer).copied().unwrap_or(0)
    }

    /// Bytes held in all.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Adds a part of the body of `id` from `peer`. A body larger than
    /// `per_peer` is dropped; to make room, the least recently touched
    /// partial bodies of the same peer, then of any peer, are dropped, so
    /// that no more than `per_peer` bytes are held for one peer and `total`
    /// in all.
    pub(crate) fn add(
        &mut self,
        peer: NodeId,
        id: CallId,
        fingerprint: u64,
        chunk: Chunk,
        per_peer: usize,
        total: usize,
    ) -> Added {
        let len = chunk.total_len as usize;
        let blocks = len.div_ceil(MAX_PART);
        let offset = chunk.offset as usize;
        // Senders split at MAX_PART: anything else is not ours. (The decoder
        // already refuses a part that ends past its body; checked again
        // because the copy below would panic on one.)
        let end = offset.saturating_add(chunk.bytes.len());
        let aligned = offset.is_multiple_of(MAX_PART)
            && offset < len
            && end <= len
            && (chunk.bytes.len() == MAX_PART || end == len);
        if !aligned || len > per_peer || len > total {
            self.malformed += u64::from(!aligned);
            return Added::Dropped;
        }
        let key = (peer, id);
        if self
            .partial
            .get(&key)
            .is_some_and(|p| p.fingerprint != fingerprint || p.buf.len() != len)
        {
            // Another body under the same call: start over with this one.
            self.remove(peer, id);
        }
        if !self.partial.contains_key(&key) {
            self.make_room(peer, len, per_peer, total);
            self.partial.insert(
                key,
                Partial {
                    fingerprint,
                    buf: vec![0; len],
                    have: vec![false; blocks],
                    missing: blocks,
                    touched: 0,
                },
            );
            *self.held_by.entry(peer).or_default() += len;
            self.held += len;
        }
        self.clock += 1;
        let clock = self.clock;
        let Some(p) = self.partial.get_mut(&key) else {
            return Added::Dropped;
        };
        p.touched = clock;
        let block = offset / MAX_PART;
        if !p.have[block] {
            p.buf[offset..offset + chunk.bytes.len()].copy_from_slice(&chunk.bytes);
            p.have[block] = true;
            p.missing -= 1;
        }
        if p.missing > 0 {
            return Added::Waiting;
        }
        let body = self
            .take(peer, id)
            .map(|p| Bytes::from(p.buf))
            .unwrap_or_default();
        Added::Whole(body)
    }

    /// Forgets the partial body of `id` from `peer`, if any.
    pub(crate) fn remove(&mut self, peer: NodeId, id: CallId) {
        self.take(peer, id);
    }

    fn take(&mut self, peer: NodeId, id: CallId) -> Option<Partial> {
        let p = self.partial.remove(&(peer, id))?;
        let len = p.buf.len();
        self.held -= len;
        if let Some(h) = self.held_by.get_mut(&peer) {
            *h -= len;
            if *h == 0 {
                self.held_by.remove(&peer);
            }
        }
        Some(p)
    }

    /// Drops least recently touched partial bodies until `len` more bytes
    /// fit for `peer`.
    fn make_room(&mut self, peer: NodeId, len: usize, per_peer: usize, total: usize) {
        while self.held_by(peer) + len > per_peer {
            let Some(oldest) = self.oldest(Some(peer)) else {
                break;
            };
            self.evict(oldest);
        }
        while self.held + len > total {
            let Some(oldest) = self.oldest(None) else {
                break;
            };
            self.evict(oldest);
        }
    }

    fn oldest(&self, of: Option<NodeId>) -> Option<(NodeId, CallId)> {
        self.partial
            .iter()
            .filter(|((p, _), _)| of.is_none_or(|o| o == *p))
            .min_by_key(|(_, v)| v.touched)
            .map(|(k, _)| *k)
    }

    fn evict(&mut self, key: (NodeId, CallId)) {
        if self.take(key.0, key.1).is_some() {
            self.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ft_core::Incarnation;

    fn id(seq: u64) -> CallId {
        CallId {
            client: NodeId(1),
            client_incarnation: Incarnation(1),
            seq,
        }
    }

    fn body(len: usize, seed: u8) -> Bytes {
        Bytes::from((0..len).map(|i| (i as u8) ^ seed).collect::<Vec<_>>())
    }

    #[test]
    fn parts_in_any_order_and_repeated_make_the_body() {
        let b = body(3 * MAX_PART + 17, 5);
        let mut chunks = Chunk::split(&b);
        chunks.reverse();
        chunks.insert(1, chunks[0].clone());
        let mut parts = Parts::default();
        let mut got = None;
        for c in chunks {
            match parts.add(NodeId(1), id(1), 9, c, 1 << 20, 1 << 20) {
                Added::Whole(w) => got = Some(w),
                Added::Waiting => {}
                Added::Dropped => panic!("dropped"),
            }
        }
        assert_eq!(got, Some(b));
        assert_eq!(parts.held(), 0);
    }

    #[test]
    fn two_bodies_under_one_call_are_never_mixed() {
        let (a, b) = (body(2 * MAX_PART, 1), body(2 * MAX_PART, 2));
        let (ca, cb) = (Chunk::split(&a), Chunk::split(&b));
        let mut parts = Parts::default();
        assert_eq!(
            parts.add(NodeId(1), id(1), 1, ca[0].clone(), 1 << 20, 1 << 20),
            Added::Waiting
        );
        assert_eq!(
            parts.add(NodeId(1), id(1), 2, cb[1].clone(), 1 << 20, 1 << 20),
            Added::Waiting
        );
        assert_eq!(
            parts.add(NodeId(1), id(1), 2, cb[0].clone(), 1 << 20, 1 << 20),
            Added::Whole(b)
        );
    }

    #[test]
    fn memory_stays_within_the_bounds_per_peer_and_in_all() {
        let per_peer = 4 * MAX_PART;
        let total = 6 * MAX_PART;
        let mut parts = Parts::default();
        for seq in 1..50 {
            let b = body(2 * MAX_PART, seq as u8);
            let peer = NodeId(seq % 3);
            let first = Chunk::split(&b)[0].clone();
            parts.add(peer, id(seq), seq, first, per_peer, total);
            assert!(parts.held() <= total);
            for p in 0..3 {
                assert!(parts.held_by(NodeId(p)) <= per_peer);
            }
        }
        assert!(parts.evicted > 0);
        let huge = Chunk::split(&body(5 * MAX_PART, 0))[0].clone();
        assert_eq!(
            parts.add(NodeId(1), id(99), 0, huge, per_peer, total),
            Added::Dropped
        );
    }

    #[test]
    fn misaligned_parts_are_dropped() {
        let mut parts = Parts::default();
        let c = Chunk {
            total_len: 2 * MAX_PART as u32,
            offset: 7,
            bytes: Bytes::from(vec![0; 10]),
        };
        assert_eq!(
            parts.add(NodeId(1), id(1), 0, c, 1 << 20, 1 << 20),
            Added::Dropped
        );
        assert_eq!(parts.malformed, 1);
        // A whole block where only a short last one fits.
        let past_the_end = Chunk {
            total_len: MAX_PART as u32 + 10,
            offset: MAX_PART as u32,
            bytes: Bytes::from(vec![0; MAX_PART]),
        };
        assert_eq!(
            parts.add(NodeId(1), id(2), 0, past_the_end, 1 << 20, 1 << 20),
            Added::Dropped
        );
        assert_eq!(parts.malformed, 2);
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        /// Whatever parts arrive, in whatever order, nothing panics, the
        /// bounds hold after every part, and a body is only ever whole at
        /// its announced length.
        #[test]
        fn hostile_parts_never_panic_nor_exceed_the_bounds(
            parts_in in proptest::collection::vec(
                (
                    0u64..3,
                    0u64..4,
                    0u64..3,
                    // Body lengths near the block boundaries, and any.
                    proptest::prop_oneof![
                        (1u32..4, 0u32..3).prop_map(|(b, d)| b * MAX_PART as u32 + d),
                        0u32..(4 * MAX_PART as u32),
                    ],
                    0u32..5,
                    // Whole blocks, short ones, one byte over.
                    proptest::prop_oneof![
                        proptest::strategy::Just(MAX_PART),
                        proptest::strategy::Just(MAX_PART + 1),
                        0usize..4,
                        0usize..(MAX_PART + 2),
                    ],
                ),
                0..60,
            )
        ) {
            let (per_peer, total) = (3 * MAX_PART, 5 * MAX_PART);
            let mut parts = Parts::default();
            for (peer, seq, fingerprint, total_len, block, len) in parts_in {
                let chunk = Chunk {
                    total_len,
                    offset: block * MAX_PART as u32,
                    bytes: Bytes::from(vec![7; len]),
                };
                let added = parts.add(NodeId(peer), id(seq), fingerprint, chunk, per_peer, total);
                if let Added::Whole(body) = added {
                    proptest::prop_assert_eq!(body.len(), total_len as usize);
                }
                proptest::prop_assert!(parts.held() <= total);
                for p in 0..3 {
                    proptest::prop_assert!(parts.held_by(NodeId(p)) <= per_peer);
                }
            }
        }
    }
}

//! A sender's history: the bounded ring of messages not yet acknowledged
//! by every member.

use std::collections::VecDeque;

use bytes::Bytes;

/// The messages from `base` on, at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct History {
    capacity: usize,
    /// The sequence number of the first message held (or of the next one
    /// sent, when none is held).
    base: u64,
    ring: VecDeque<Bytes>,
}

impl History {
    /// An empty history whose first message will be number 1.
    pub(crate) fn new(capacity: usize) -> Self {
        History {
            capacity: capacity.max(1),
            base: 1,
            ring: VecDeque::with_capacity(capacity.clamp(1, 1024)),
        }
    }

    /// The oldest message held, or the next to be sent when none is.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// The last message sent (0: none).
    pub(crate) fn highest(&self) -> u64 {
        self.base + self.ring.len() as u64 - 1
    }

    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.ring.len() >= self.capacity
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Keeps `payload` as the next message and returns its number, or
    /// `None` when the ring is full.
    pub(crate) fn push(&mut self, payload: Bytes) -> Option<u64> {
        if self.is_full() {
            return None;
        }
        self.ring.push_back(payload);
        Some(self.highest())
    }

    /// Message `seq`, if still held.
    pub(crate) fn get(&self, seq: u64) -> Option<&Bytes> {
        let i = seq.checked_sub(self.base)?;
        self.ring.get(usize::try_from(i).ok()?)
    }

    /// Frees every message up to `upto` (acknowledged by all); returns how
    /// many were freed.
    pub(crate) fn release_upto(&mut self, upto: u64) -> usize {
        let mut freed = 0;
        while self.base <= upto && self.ring.pop_front().is_some() {
            self.base += 1;
            freed += 1;
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_one_refuses_when_full_and_frees_in_order() {
        let mut h = History::new(2);
        assert_eq!((h.base(), h.highest()), (1, 0));
        assert_eq!(h.push(Bytes::from_static(b"a")), Some(1));
        assert_eq!(h.push(Bytes::from_static(b"b")), Some(2));
        assert_eq!(h.push(Bytes::from_static(b"c")), None);
        assert_eq!(h.get(2).map(|b| &b[..]), Some(&b"b"[..]));
        assert_eq!(h.get(0), None);
        assert_eq!(h.get(3), None);
        // Freeing more than is held stops at what is held.
        assert_eq!(h.release_upto(1), 1);
        assert_eq!((h.base(), h.highest()), (2, 2));
        assert_eq!(h.get(1), None);
        assert_eq!(h.push(Bytes::from_static(b"c")), Some(3));
        assert_eq!(h.release_upto(10), 2);
        assert!(h.is_empty());
        assert_eq!((h.base(), h.highest()), (4, 3));
        assert_eq!(h.push(Bytes::from_static(b"d")), Some(4));
    }
}

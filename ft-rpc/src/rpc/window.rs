//! Maps for the hot path: values by a sequence number given out in
//! increasing order ([`Window`]), and a hash map with a fast hasher
//! ([`FastMap`]) for keys whose order nobody reads.
//!
//! Both replace ordered maps (`BTreeMap`) where a call's steps looked
//! keys up several times each. What is walked in order — the outstanding
//! calls, when they are retransmitted, renewed or found crashed — is walked
//! in the same order as before: a [`Window`] is walked by key, and a
//! [`FastMap`] is never walked where the order could show (its keys are
//! sorted first), so simulations stay reproducible seed for seed.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Stale slots tolerated beyond twice the live ones before a compaction.
const SLACK: usize = 64;

/// Values by key, for keys inserted in increasing order (a client's call
/// numbers): a deque of slots from the lowest live key on, a removed
/// value leaving an empty slot until it reaches the front. While no
/// compaction has run, key `k` is in slot `k - first`, found without a
/// search; once the empty slots outnumber twice the live ones (plus a
/// few) they are squeezed out, and keys are found by binary search until
/// the window turns over. Memory stays bounded by the live keys, however
/// long one of them lives while the others come and go.
#[derive(Debug)]
pub(crate) struct Window<V> {
    /// By increasing key; the front one, if any, is live.
    slots: VecDeque<(u64, Option<V>)>,
    live: usize,
}

impl<V> Default for Window<V> {
    fn default() -> Self {
        Window {
            slots: VecDeque::new(),
            live: 0,
        }
    }
}

impl<V> Window<V> {
    /// Values held.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The lowest key held.
    pub(crate) fn first_key(&self) -> Option<u64> {
        self.slots.front().map(|(k, _)| *k)
    }

    /// Inserts `value` under `key`, higher than every key inserted before.
    ///
    /// # Panics
    /// If `key` is not higher than every key inserted before.
    pub(crate) fn push(&mut self, key: u64, value: V) {
        if let Some((last, _)) = self.slots.back() {
            assert!(key > *last, "window keys must increase");
        }
        self.slots.push_back((key, Some(value)));
        self.live += 1;
    }

    /// The value under the lowest key held, with its key.
    pub(crate) fn first(&self) -> Option<(u64, &V)> {
        let (key, value) = self.slots.front()?;
        Some((*key, value.as_ref()?))
    }

    fn index(&self, key: u64) -> Option<usize> {
        let (first, _) = self.slots.front()?;
        let guess = usize::try_from(key.checked_sub(*first)?).ok()?;
        match self.slots.get(guess) {
            Some((k, _)) if *k == key => Some(guess),
            // Compacted: the key, if held, is in an earlier slot.
            _ => self.slots.binary_search_by_key(&key, |(k, _)| *k).ok(),
        }
    }

    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        let i = self.index(key)?;
        self.slots[i].1.as_ref()
    }

    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let i = self.index(key)?;
        self.slots[i].1.as_mut()
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<V> {
        let i = self.index(key)?;
        let value = self.slots[i].1.take()?;
        self.live -= 1;
        while self.slots.front().is_some_and(|(_, v)| v.is_none()) {
            self.slots.pop_front();
        }
        if self.slots.len() > self.live.saturating_mul(2).saturating_add(SLACK) {
            self.slots.retain(|(_, v)| v.is_some());
        }
        Some(value)
    }

    /// The values held, by increasing key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.slots
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
    }

    /// Slots held, empty ones included.
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.slots.len()
    }
}

/// A hash map with [`FastHasher`]: for keys looked up on every call and
/// never walked where the order could show.
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The Fx hash (rustc's): a rotate, an exclusive or and a multiplication
/// per word. Fast for small integer keys; not resistant to keys chosen to
/// collide, which is why it only keys maps bounded by configuration
/// (calls outstanding, computations running, completion records per
/// client): keys made to collide can slow those maps down, never make
/// them grow or answer wrongly.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // The multiplication leaves the high bits the best mixed, and the
        // table picks buckets by the low ones (as rustc-hash 2 does).
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn window_behaves_as_an_ordered_map_and_stays_bounded() {
        let mut w = Window::default();
        let mut m = BTreeMap::new();
        let mut rng = ft_core::rng::Rng::new(7);
        let mut next = 0u64;
        for step in 0..20_000u64 {
            // Mostly inserts early, mostly removals late; key 1 lives long.
            if !rng.next_u64().is_multiple_of(3) || m.is_empty() {
                next += 1 + rng.next_u64() % 2;
                w.push(next, step);
                m.insert(next, step);
            } else {
                let keys: Vec<u64> = m.keys().copied().collect();
                let k = keys[(rng.next_u64() % keys.len() as u64) as usize];
                if k != 1 || step > 19_000 {
                    assert_eq!(w.remove(k), m.remove(&k));
                }
            }
            let probe = rng.next_u64() % (next + 2);
            assert_eq!(w.get(probe), m.get(&probe));
            assert_eq!(w.len(), m.len());
            assert_eq!(w.first_key(), m.keys().next().copied());
            assert_eq!(w.first(), m.iter().next().map(|(k, v)| (*k, v)));
            assert!(w.slots() <= 2 * w.len() + SLACK + 1);
        }
        let a: Vec<(u64, u64)> = w.iter().map(|(k, v)| (k, *v)).collect();
        let b: Vec<(u64, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(a, b);
        if let Some(v) = w.get_mut(next) {
            *v = 0;
        }
        assert_eq!(w.remove(next), Some(0));
        assert_eq!(w.remove(next), None);
    }
}

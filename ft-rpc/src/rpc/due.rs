//! When each outstanding call or running computation next needs a timer,
//! behind one timer of the environment's.
//!
//! A node sets one timer for all its calls (and one for all its
//! computations) at the earliest time any of them needs it, instead of a
//! timer per call set when the call starts and cancelled when it ends: a
//! call answered before its retransmission is due then costs the
//! environment nothing. The times are kept in a binary heap with lazy
//! deletion: an entry whose key is gone, or has moved to another time, is
//! dropped when it comes to the top, and the heap is rebuilt from the live
//! keys once it holds more than twice as many entries as there are live
//! keys (plus a few), so its size stays bounded by the live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Stale entries tolerated beyond twice the live keys before a rebuild.
const SLACK: usize = 64;

/// Wake-up times by key, and the time the shared timer is set for.
#[derive(Debug)]
pub(crate) struct Due<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    /// When the shared timer is set to fire, if it is. It is never
    /// cancelled: one that fires with nothing due is set again for what is.
    armed: Option<Instant>,
}

impl<K: Ord> Default for Due<K> {
    fn default() -> Self {
        Due {
            heap: BinaryHeap::new(),
            armed: None,
        }
    }
}

impl<K: Ord + Copy> Due<K> {
    /// `key` now wakes at `at` (its owner has recorded that, so that
    /// `live` below includes it); any earlier entry of `key` becomes stale.
    /// `live` counts the keys that have a wake-up time, and `all` yields
    /// each of them with its time: it is read only when the heap is
    /// rebuilt.
    pub(crate) fn push(
        &mut self,
        at: Instant,
        key: K,
        live: usize,
        all: impl Iterator<Item = (Instant, K)>,
    ) {
        if self.heap.len() >= live.saturating_mul(2).saturating_add(SLACK) {
            self.heap.clear();
            self.heap.extend(all.map(Reverse));
        } else {
            self.heap.push(Reverse((at, key)));
        }
    }

    /// The key of the earliest live entry, if it is due by `now`. `live`
    /// says whether an entry is still its key's time; stale entries found
    /// on top are dropped.
    pub(crate) fn next_due(
        &mut self,
        now: Instant,
        live: impl Fn(Instant, K) -> bool,
    ) -> Option<K> {
        let (at, key) = self.earliest(live)?;
        (at <= now).then_some(key)
    }

    /// The time to set the shared timer for, if the earliest live entry is
    /// earlier than the timer is set for (or it is not set).
    pub(crate) fn arm_at(&mut self, live: impl Fn(Instant, K) -> bool) -> Option<Instant> {
        if let (Some(armed), Some(Reverse((top, _)))) = (self.armed, self.heap.peek())
            && armed <= *top
        {
            // No entry, live or stale, is earlier than the timer is set
            // for: nothing to do, and no need to look at which are live.
            return None;
        }
        let (at, _) = self.earliest(live)?;
        if self.armed.is_some_and(|armed| armed <= at) {
            return None;
        }
        self.armed = Some(at);
        Some(at)
    }

    /// The shared timer fired: it is no longer set.
    pub(crate) fn fired(&mut self) {
        self.armed = None;
    }

    fn earliest(&mut self, live: impl Fn(Instant, K) -> bool) -> Option<(Instant, K)> {
        while let Some(&Reverse((at, key))) = self.heap.peek() {
            if live(at, key) {
                return Some((at, key));
            }
            self.heap.pop();
        }
        None
    }

    /// Entries held, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn stale_entries_are_skipped_and_the_heap_stays_bounded() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut live: BTreeMap<u64, Instant> = BTreeMap::new();
        let mut due = Due::default();
        for k in 0..10_000u64 {
            // Each key moves once, and all but the last ten go away.
            for ms in [k + 100, k + 50] {
                live.insert(k, at(ms));
                let all = live.iter().map(|(&k, &t)| (t, k));
                due.push(at(ms), k, live.len(), all);
            }
            if k >= 10 {
                live.remove(&(k - 10));
            }
            assert!(due.len() <= 2 * (live.len() + 1) + SLACK);
        }
        let is_live = |t: Instant, k: u64| live.get(&k) == Some(&t);
        assert_eq!(due.arm_at(is_live), Some(at(9_990 + 50)));
        assert_eq!(due.arm_at(is_live), None, "set already, for that time");
        assert_eq!(due.next_due(at(10_000), is_live), None);
        assert_eq!(due.next_due(at(10_040), is_live), Some(9_990));
        due.fired();
        live.remove(&9_990);
        let is_live = |t: Instant, k: u64| live.get(&k) == Some(&t);
        assert_eq!(due.arm_at(is_live), Some(at(9_991 + 50)));
    }
}

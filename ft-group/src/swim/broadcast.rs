//! Dissemination: the rumors waiting to ride on outgoing messages, and the
//! anti-entropy trickle of settled view entries.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use ft_core::NodeId;

use crate::membership::{Member, MemberState, Membership, Rumor};

/// Rumors to piggyback, at most one per member (a newer rumor about a member
/// replaces the older, so the queue is bounded by the group size).
///
/// Each message takes the rumors sent the fewest times, newest first, as
/// memberlist does: fresh news spreads first, and every rumor is sent a
/// bounded number of times (`limit`), enough to reach every member with high
/// probability since each send infects one more member.
///
/// Each message also carries, room permitting, one settled entry of the
/// view taken in turn ([`piggyback`](Self::piggyback)): the anti-entropy
/// trickle.
#[derive(Debug, Default)]
pub(crate) struct Broadcasts {
    pending: BTreeMap<NodeId, (Rumor, u32, u64)>,
    order: BTreeSet<(u32, Reverse<u64>, NodeId)>,
    next: u64,
    /// The view entry the trickle took last.
    sync_cursor: NodeId,
}

impl Broadcasts {
    /// The rumors for one message: up to `max`, fresh news first (each
    /// sent at most `limit` times), then, room permitting, the next settled
    /// entry of `view`.
    pub(crate) fn piggyback(&mut self, view: &Membership, max: usize, limit: u32) -> Vec<Rumor> {
        let mut r = self.take(max, limit);
        if r.len() < max
            && let Some(entry) = self.next_sync_entry(view)
            && !r.iter().any(|x| x.node() == entry.node())
        {
            r.push(entry);
        }
        r
    }

    /// Anti-entropy trickle: every message also carries one entry of the
    /// view, taken in turn. Each rumor is sent only a bounded number of
    /// times, so a member can miss one (and then nothing would ever tell
    /// it); with the trickle, views converge however unlucky the losses,
    /// at the cost of one rumor per message whatever the group size.
    /// Suspicions are not repeated: they must come from a suspecter.
    fn next_sync_entry(&mut self, view: &Membership) -> Option<Rumor> {
        for _ in 0..view.len() {
            let m = view.next_after(self.sync_cursor)?;
            self.sync_cursor = m.node;
            if let Some(r) = settled(m) {
                return Some(r);
            }
        }
        None
    }

    /// Anti-entropy: a rumor older than what `view` holds means its sender
    /// missed the newer news (every rumor is sent a bounded number of
    /// times, so some member can miss it). Spreads the newer entry again;
    /// the answer about to go to that sender carries it. Suspicions are not
    /// repeated this way: they must come from a suspecter.
    pub(crate) fn correct_if_stale(&mut self, view: &Membership, rumor: Rumor) {
        let Some(newer) = view.get(rumor.node()).and_then(settled) else {
            return;
        };
        if newer != rumor && newer.overrides_rumor(&rumor) {
            self.push(newer);
        }
    }

    pub(crate) fn push(&mut self, rumor: Rumor) {
        let node = rumor.node();
        if let Some((_, sent, at)) = self.pending.remove(&node) {
            self.order.remove(&(sent, Reverse(at), node));
        }
        self.next += 1;
        self.pending.insert(node, (rumor, 0, self.next));
        self.order.insert((0, Reverse(self.next), node));
    }

    /// Takes up to `max` rumors for one message; each counts as sent once
    /// and is dropped after its `limit`-th send.
    fn take(&mut self, max: usize, limit: u32) -> Vec<Rumor> {
        let picked: Vec<_> = self.order.iter().take(max).copied().collect();
        let mut rumors = Vec::with_capacity(picked.len());
        for key in picked {
            self.order.remove(&key);
            let (sent, at, node) = key;
            let Some(entry) = self.pending.get_mut(&node) else {
                continue;
            };
            rumors.push(entry.0);
            entry.1 = sent + 1;
            if entry.1 >= limit {
                self.pending.remove(&node);
            } else {
                self.order.insert((sent + 1, at, node));
            }
        }
        rumors
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Drops every rumor waiting (the trickle goes on where it was).
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
        self.order.clear();
    }
}

/// A view entry as a rumor anyone may repeat: alive or failed. A suspicion
/// is not repeated on someone else's behalf (it names its suspecter).
fn settled(m: &Member) -> Option<Rumor> {
    match m.state {
        MemberState::Alive => Some(Rumor::Alive {
            node: m.node,
            incarnation: m.incarnation,
        }),
        MemberState::Failed => Some(Rumor::Failed {
            node: m.node,
            incarnation: m.incarnation,
        }),
        MemberState::Suspect => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ft_core::Incarnation;

    fn alive(n: u64, i: u64) -> Rumor {
        Rumor::Alive {
            node: NodeId(n),
            incarnation: Incarnation(i),
        }
    }

    #[test]
    fn fresh_rumors_first_each_sent_limit_times() {
        let mut b = Broadcasts::default();
        b.push(alive(1, 0));
        b.push(alive(2, 0));
        assert_eq!(b.take(1, 3), vec![alive(2, 0)]); // newest first
        assert_eq!(b.take(1, 3), vec![alive(1, 0)]); // then the unsent one
        let mut sends = 2;
        while !b.take(2, 3).is_empty() {
            sends += 2;
        }
        assert_eq!(sends, 6); // each of two rumors three times
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn a_newer_rumor_replaces_the_older_one() {
        let mut b = Broadcasts::default();
        b.push(alive(1, 0));
        b.take(1, 10);
        b.push(alive(1, 1));
        assert_eq!(b.len(), 1);
        assert_eq!(b.take(5, 10), vec![alive(1, 1)]);
    }
}

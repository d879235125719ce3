//! A receiver's view of one sender's stream: what was delivered, what
//! waits out of order, what is missing.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use ft_core::Incarnation;

/// What a receiver knows of one sender's stream in one group, in one of
/// the sender's lives.
#[derive(Debug)]
pub(crate) struct Stream {
    /// The sender's life this is about.
    pub(crate) life: Incarnation,
    /// The next message to deliver.
    pub(crate) next: u64,
    /// Messages after a gap, waiting: at most `window` of them, all in
    /// `next + 1 ..= next + window - 1`.
    pending: BTreeMap<u64, Bytes>,
    /// The highest message known to exist (seen, or announced).
    pub(crate) highest: u64,
    /// The last cumulative acknowledgement sent.
    pub(crate) acked: u64,
    /// How far the layer above has taken this stream's messages (only
    /// looked at when the node [holds acknowledgements](crate::Multicast::hold_acks)).
    pub(crate) released: u64,
    /// An acknowledgement timer is set.
    pub(crate) ack_due: bool,
    /// A NACK timer is set.
    pub(crate) nack_due: bool,
    /// With [`Feedback::Nack`](crate::Feedback): the last messages
    /// delivered, kept to repair them for others (at most a window's
    /// worth).
    pub(crate) recent: VecDeque<(u64, Bytes)>,
    /// With `Feedback::Nack`: a request timer is set, and how many times
    /// the request was sent or backed off since the stream had no gap.
    pub(crate) request_due: bool,
    pub(crate) backoff: u32,
    /// With `Feedback::Nack`: when this member last asked for the stream's
    /// gaps, or heard another member ask for its first gap: no request
    /// goes out before the repair could have come back.
    pub(crate) asked_at: Option<std::time::Instant>,
    /// ACK mode: the round trip to the sender, measured from NACKs to the
    /// repairs that answer them; it sets how soon a NACK is sent again.
    pub(crate) nack_rtt: Option<ft_rpc::rtt::RttEstimator>,
    /// ACK mode: the last NACK: when it went, the first number it asked
    /// for, and whether it asked for that number again (Karn's rule: the
    /// answer to a repeated NACK gives no sample).
    pub(crate) nacked: Option<(std::time::Instant, u64, bool)>,
}

/// What taking a message did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Took {
    /// Delivered at once, with any waiting messages it made contiguous.
    Delivered,
    /// Kept, after a gap.
    Kept,
    /// Already delivered, or already waiting.
    Duplicate,
    /// Beyond the window: dropped (the sender holds it and repairs it).
    BeyondWindow,
}

impl Stream {
    /// A stream of `life` whose first message to deliver is `next`.
    pub(crate) fn new(life: Incarnation, next: u64) -> Self {
        Stream {
            life,
            next: next.max(1),
            pending: BTreeMap::new(),
            highest: next.max(1) - 1,
            acked: 0,
            released: 0,
            ack_due: false,
            nack_due: false,
            recent: VecDeque::new(),
            request_due: false,
            backoff: 0,
            asked_at: None,
            nack_rtt: None,
            nacked: None,
        }
    }

    /// How many messages wait out of order.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Takes message `seq`, within a window of `window` messages from the
    /// next to deliver; delivered messages are appended to `out`.
    pub(crate) fn take(
        &mut self,
        seq: u64,
        payload: Bytes,
        window: usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> Took {
        self.highest = self.highest.max(seq);
        if seq < self.next || self.pending.contains_key(&seq) {
            return Took::Duplicate;
        }
        if seq - self.next >= window as u64 {
            return Took::BeyondWindow;
        }
        if seq > self.next {
            self.pending.insert(seq, payload);
            return Took::Kept;
        }
        out.push((seq, payload));
        self.next += 1;
        self.drain(out);
        Took::Delivered
    }

    /// Skips to `base` (the sender no longer holds anything older):
    /// waiting messages before it are dropped, and what `base` makes
    /// contiguous is delivered. Returns the last message skipped, if any.
    pub(crate) fn skip_to(&mut self, base: u64, out: &mut Vec<(u64, Bytes)>) -> Option<u64> {
        if base <= self.next {
            return None;
        }
        let skipped = base - 1;
        self.pending = self.pending.split_off(&base);
        self.next = base;
        self.highest = self.highest.max(skipped);
        self.drain(out);
        Some(skipped)
    }

    fn drain(&mut self, out: &mut Vec<(u64, Bytes)>) {
        while let Some(payload) = self.pending.remove(&self.next) {
            out.push((self.next, payload));
            self.next += 1;
        }
    }

    /// Keeps `delivered` for repairs, at most `window` of them.
    pub(crate) fn remember(&mut self, delivered: &[(u64, Bytes)], window: usize) {
        for d in delivered {
            if self.recent.len() >= window {
                self.recent.pop_front();
            }
            self.recent.push_back(d.clone());
        }
    }

    /// Message `seq`, if delivered recently.
    pub(crate) fn recent(&self, seq: u64) -> Option<&Bytes> {
        let first = self.recent.front()?.0;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.recent
            .get(i)
            .filter(|(s, _)| *s == seq)
            .map(|(_, p)| p)
    }

    /// The first message missing, if any.
    pub(crate) fn first_gap(&self) -> Option<u64> {
        (self.next <= self.highest).then_some(self.next)
    }

    /// The missing messages below `highest`, as inclusive ranges, at most
    /// `max` of them, oldest first.
    pub(crate) fn gaps(&self, max: usize) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut from = self.next;
        for &seq in self.pending.keys() {
            if gaps.len() >= max {
                return gaps;
            }
            if seq > from {
                gaps.push((from, seq - 1));
            }
            from = seq + 1;
        }
        if from <= self.highest && gaps.len() < max {
            gaps.push((from, self.highest));
        }
        gaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn delivers_in_order_keeps_after_gaps_and_reports_them() {
        let mut s = Stream::new(Incarnation::FIRST, 1);
        let mut out = Vec::new();
        assert_eq!(s.take(2, p(2), 4, &mut out), Took::Kept);
        assert_eq!(s.take(4, p(4), 4, &mut out), Took::Kept);
        assert_eq!(s.take(5, p(5), 4, &mut out), Took::BeyondWindow);
        assert_eq!(s.take(2, p(2), 4, &mut out), Took::Duplicate);
        assert!(out.is_empty());
        assert_eq!(s.gaps(8), vec![(1, 1), (3, 3), (5, 5)]);
        assert_eq!(s.gaps(1), vec![(1, 1)]);
        assert_eq!(s.take(1, p(1), 4, &mut out), Took::Delivered);
        assert_eq!(out.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(s.take(1, p(1), 4, &mut out), Took::Duplicate);
        assert_eq!(s.gaps(8), vec![(3, 3), (5, 5)]);
        out.clear();
        assert_eq!(s.take(3, p(3), 4, &mut out), Took::Delivered);
        assert_eq!(out.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!((s.next, s.pending_len()), (5, 0));
    }

    #[test]
    fn skipping_drops_what_is_older_and_delivers_what_it_joins() {
        let mut s = Stream::new(Incarnation::FIRST, 1);
        let mut out = Vec::new();
        s.take(2, p(2), 8, &mut out);
        s.take(5, p(5), 8, &mut out);
        s.take(6, p(6), 8, &mut out);
        assert_eq!(s.skip_to(1, &mut out), None);
        assert_eq!(s.skip_to(5, &mut out), Some(4));
        assert_eq!(out.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!((s.next, s.pending_len()), (7, 0));
    }
}

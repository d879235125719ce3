//! The fixed-timeout failure detector.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ft_core::{FailureDetector, NodeId, Suspicion};

/// Suspects a process that has not been heard from for longer than a fixed
/// timeout.
///
/// A process is [`Unknown`](Suspicion::Unknown) until its first heartbeat,
/// [`Alive`](Suspicion::Alive) while the silence since its latest heartbeat
/// is at most the timeout, and [`Suspected`](Suspicion::Suspected) once the
/// silence is strictly longer. A heartbeat ends the suspicion at once.
///
/// The timeout is the whole trade-off: too short and slow processes or lost
/// heartbeats cause false suspicions; too long and a crash goes unnoticed
/// for that long. [`PhiAccrual`](super::PhiAccrual) adapts the trade-off to
/// each process's observed rhythm instead.
///
/// Memory: one timestamp per tracked process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedTimeout {
    timeout: Duration,
    last: BTreeMap<NodeId, Instant>,
}

impl FixedTimeout {
    /// The timeout of [`FixedTimeout::default`]: 3 s.
    ///
    /// That is three heartbeat intervals at the default 1 s interval of
    /// [`HeartbeatConfig`](crate::heartbeat::HeartbeatConfig): the "three
    /// missed heartbeats" rule of thumb (ZooKeeper clients ping every third
    /// of their session timeout; HAProxy's health checks default to
    /// `fall 3`). Two heartbeats in a row may be lost before a healthy
    /// process is suspected. ft-group's README compares it with the other
    /// detectors, and with a 5 s timeout, under loss and a slow member.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

    /// A detector that suspects a process after `timeout` of silence.
    pub fn new(timeout: Duration) -> Self {
        FixedTimeout {
            timeout,
            last: BTreeMap::new(),
        }
    }

    // --- getters ---

    /// The configured timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When `node` was last heard from, if ever (and not removed since).
    pub fn last_heartbeat(&self, node: NodeId) -> Option<Instant> {
        self.last.get(&node).copied()
    }

    /// How many processes are tracked.
    pub fn tracked(&self) -> usize {
        self.last.len()
    }
}

impl Default for FixedTimeout {
    /// A 3 s timeout: see [`FixedTimeout::DEFAULT_TIMEOUT`] for why.
    fn default() -> Self {
        FixedTimeout::new(Self::DEFAULT_TIMEOUT)
    }
}

impl FailureDetector for FixedTimeout {
    fn heartbeat(&mut self, node: NodeId, now: Instant) {
        // A heartbeat stamped earlier than one already seen (a caller whose
        // clock went backwards) must not make the silence look longer.
        let last = self.last.entry(node).or_insert(now);
        *last = (*last).max(now);
    }

    fn suspicion(&self, node: NodeId, now: Instant) -> Suspicion {
        match self.last.get(&node) {
            None => Suspicion::Unknown,
            // Saturating: asking about a time before the latest heartbeat
            // means no silence at all, not a panic.
            Some(&last) if now.saturating_duration_since(last) > self.timeout => {
                Suspicion::Suspected
            }
            Some(_) => Suspicion::Alive,
        }
    }

    fn remove(&mut self, node: NodeId) {
        self.last.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: NodeId = NodeId(1);

    #[test]
    fn unknown_alive_suspected_at_the_boundary_then_alive_again() {
        let timeout = Duration::from_secs(5);
        let mut d = FixedTimeout::new(timeout);
        let t0 = Instant::now();
        assert_eq!(d.suspicion(N, t0), Suspicion::Unknown);
        assert!(!d.is_suspected(N, t0));

        d.heartbeat(N, t0);
        assert_eq!(d.suspicion(N, t0), Suspicion::Alive);
        // Exactly `timeout` of silence is still within the timeout…
        assert_eq!(d.suspicion(N, t0 + timeout), Suspicion::Alive);
        // …one nanosecond more is not.
        let late = t0 + timeout + Duration::from_nanos(1);
        assert_eq!(d.suspicion(N, late), Suspicion::Suspected);
        assert!(d.is_suspected(N, late));

        d.heartbeat(N, late);
        assert_eq!(d.suspicion(N, late), Suspicion::Alive);
        assert_eq!(d.suspicion(N, late + timeout), Suspicion::Alive);
        assert_eq!(
            d.suspicion(N, late + timeout + Duration::from_nanos(1)),
            Suspicion::Suspected
        );
    }

    #[test]
    fn remove_forgets() {
        let mut d = FixedTimeout::default();
        let t0 = Instant::now();
        d.heartbeat(N, t0);
        d.heartbeat(NodeId(2), t0);
        assert_eq!(d.tracked(), 2);
        d.remove(N);
        assert_eq!(
            d.suspicion(N, t0 + Duration::from_secs(60)),
            Suspicion::Unknown
        );
        assert_eq!(d.last_heartbeat(N), None);
        assert_eq!(d.tracked(), 1);
        d.remove(N);
        assert_eq!(d.tracked(), 1);
    }

    #[test]
    fn time_going_backwards_neither_panics_nor_extends_silence() {
        let mut d = FixedTimeout::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        d.heartbeat(N, t1);
        d.heartbeat(N, t0);
        assert_eq!(d.last_heartbeat(N), Some(t1));
        // Asking about a moment before the last heartbeat: no silence.
        assert_eq!(d.suspicion(N, t0), Suspicion::Alive);
    }

    #[test]
    fn default_is_three_seconds() {
        assert_eq!(FixedTimeout::default().timeout(), Duration::from_secs(3));
        assert_eq!(FixedTimeout::DEFAULT_TIMEOUT, Duration::from_secs(3));
    }
}

//! Lifeguard's local health: how much this member should distrust itself.

use std::time::Duration;

/// The local health score: 0 is healthy. Failed probes, missing nacks and
/// having to refute raise it; answered probes lower it. Timeouts and the
/// protocol period are stretched by one more than the score, so a member
/// that is itself the slow one stops accusing others.
#[derive(Debug)]
pub(super) struct LocalHealth {
    score: u32,
    /// The highest score: `awareness_max_multiplier - 1`.
    max: u32,
}

impl LocalHealth {
    /// A healthy member whose timeouts stretch at most `max_multiplier`
    /// times.
    pub(super) fn new(max_multiplier: u32) -> Self {
        LocalHealth {
            score: 0,
            max: max_multiplier.saturating_sub(1),
        }
    }

    /// The score.
    pub(super) fn score(&self) -> u32 {
        self.score
    }

    /// `d` stretched by the score.
    pub(super) fn scale(&self, d: Duration) -> Duration {
        d.saturating_mul(self.score + 1)
    }

    /// Raises (or, negative, lowers) the score by `delta`, within bounds.
    pub(super) fn adjust(&mut self, delta: i64) {
        self.score = (i64::from(self.score) + delta).clamp(0, i64::from(self.max)) as u32;
    }
}

//! When to retransmit: exponential back-off with full jitter, and a retry
//! budget so retransmissions cannot amplify an overload.

use std::time::Duration;

use ft_core::rng::Rng;

/// Exponential back-off with full jitter: the `n`-th wait is `min` plus a
/// draw uniform in `[0, min(max, initial × 2ⁿ)]` (the "full jitter" of
/// AWS's back-off analysis), so clients that lost messages at the same
/// moment do not retransmit in lockstep. The floor `min` keeps a
/// retransmission from overtaking a reply that is merely on its way: set it
/// to about a round trip plus the handler's usual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// No retransmission sooner than this.
    pub min: Duration,
    /// The cap of the first jitter.
    pub initial: Duration,
    /// The largest cap.
    pub max: Duration,
}

impl Default for Backoff {
    /// At least 20 ms, plus a jitter capped at 20 ms doubling to 1 s.
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(20),
            initial: Duration::from_millis(20),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The cap of the `attempt`-th wait (0 for the first retransmission).
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The `attempt`-th wait: `min` plus a full-jitter draw; never zero, so
    /// a retransmission never fires in the same instant.
    pub fn wait(&self, attempt: u32, rng: &mut Rng) -> Duration {
        let cap = self.cap(attempt).as_nanos().min(u128::from(u64::MAX)) as u64;
        self.min
            .saturating_add(Duration::from_nanos(rng.below(cap.max(1))))
            .max(Duration::from_micros(1))
    }
}

/// Retry throttling as in gRPC (proposal A6): a bucket of `max_tokens`;
/// every retransmission takes one token, every reply gives back
/// `token_ratio`; retransmissions are allowed only while more than half the
/// bucket is left. When most attempts go unanswered (the server is
/// overloaded or gone), retransmissions stop until replies come back, so
/// retries cannot amplify an overload; first transmissions of new calls are
/// never throttled, and their replies refill the bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// The bucket's size.
    pub max_tokens: f64,
    /// What a reply gives back.
    pub token_ratio: f64,
}

impl Default for RetryBudget {
    /// 100 tokens, one back per reply: retransmissions go on while at least
    /// about half the attempts are answered, and stop after 50 more
    /// unanswered attempts than answered ones.
    ///
    /// gRPC's documented example (10 tokens, 0.1 per success) tolerates
    /// one failed attempt in ten. It throttles *failed RPCs* over TCP; here
    /// every lost datagram costs a retransmission, and at 10% loss about one
    /// attempt in five goes unanswered, so that example would switch off
    /// loss recovery on an ordinary lossy network.
    fn default() -> Self {
        RetryBudget {
            max_tokens: 100.0,
            token_ratio: 1.0,
        }
    }
}

/// The state of a [`RetryBudget`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bucket {
    tokens: f64,
    budget: RetryBudget,
}

impl Bucket {
    pub(crate) fn new(budget: RetryBudget) -> Self {
        let max = if budget.max_tokens.is_finite() {
            budget.max_tokens.max(0.0)
        } else {
            0.0
        };
        Bucket {
            tokens: max,
            budget: RetryBudget {
                max_tokens: max,
                token_ratio: if budget.token_ratio.is_finite() {
                    budget.token_ratio.max(0.0)
                } else {
                    0.0
                },
            },
        }
    }

    /// A retransmission is due: may it go? One that goes takes a token; one
    /// that is held back takes none (it is the same unanswered attempt, not
    /// a new failure, so waiting must not drain the bucket further).
    pub(crate) fn try_retry(&mut self) -> bool {
        if self.tokens - 1.0 > self.budget.max_tokens / 2.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A reply arrived.
    pub(crate) fn on_success(&mut self) {
        self.tokens = (self.tokens + self.budget.token_ratio).min(self.budget.max_tokens);
    }

    #[cfg(test)]
    pub(crate) fn tokens(&self) -> f64 {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn caps_double_up_to_the_max() {
        let b = Backoff::default();
        assert_eq!(b.cap(0), Duration::from_millis(20));
        assert_eq!(b.cap(1), Duration::from_millis(40));
        assert_eq!(b.cap(5), Duration::from_millis(640));
        assert_eq!(b.cap(6), Duration::from_secs(1));
        assert_eq!(b.cap(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn the_budget_stops_retries_while_most_calls_fail_and_recovers() {
        // gRPC's example bucket: 10 tokens, 0.1 back per success.
        let mut bucket = Bucket::new(RetryBudget {
            max_tokens: 10.0,
            token_ratio: 0.1,
        });
        let allowed = (0..20).filter(|_| bucket.try_retry()).count();
        // Retries while more than 5 tokens would be left.
        assert_eq!(allowed, 4);
        assert!(!bucket.try_retry());
        assert_eq!(bucket.tokens(), 6.0, "held-back retries cost nothing");
        // One success gives back 0.1: 6.1 - 1 > 5, retries resume.
        bucket.on_success();
        assert!(bucket.try_retry());
        // The default tolerates a lossy network: one failure in five.
        let mut bucket = Bucket::new(RetryBudget::default());
        for i in 0..10_000 {
            if i % 5 == 0 {
                assert!(bucket.try_retry());
            } else {
                bucket.on_success();
            }
        }
        assert!(bucket.tokens() > 50.0);
    }

    proptest! {
        #[test]
        fn waits_stay_under_their_cap(attempt in 0u32..100, seed in any::<u64>()) {
            let b = Backoff::default();
            let mut rng = ft_core::rng::Rng::new(seed);
            let w = b.wait(attempt, &mut rng);
            prop_assert!(w <= b.min + b.cap(attempt));
            prop_assert!(w >= b.min && w > Duration::ZERO);
        }

        #[test]
        fn absurd_budgets_do_not_panic(max in any::<f64>(), ratio in any::<f64>()) {
            let mut b = Bucket::new(RetryBudget { max_tokens: max, token_ratio: ratio });
            b.try_retry();
            b.on_success();
            prop_assert!(b.tokens().is_finite());
        }
    }
}

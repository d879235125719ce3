//! When to retransmit: exponential back-off with full jitter, and a retry
//! budget so retransmissions cannot amplify an overload.

use std::time::{Duration, Instant};

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

/// Retry throttling after gRPC (proposal A6), made safe for recovery.
///
/// A bucket of `max_tokens`: every retransmission takes one token, every
/// reply gives back `token_ratio`, and time gives back `refill_per_sec`;
/// retransmissions are allowed only while more than half the bucket is
/// left. When most attempts go unanswered (the server is overloaded or
/// gone), retransmissions stop, so retries cannot amplify an overload.
/// First transmissions of new calls are never throttled.
///
/// Two things keep throttling from stranding a client whose server has come
/// back (a partition healed, a crash storm ended), which gRPC's bucket —
/// refilled only by replies — does: the bucket refills with time, and while
/// it is spent each call may still send one retransmission every
/// `probe_every`, so every call keeps trying until its deadline at a
/// bounded rate. A throttled call therefore costs at most one message per
/// `probe_every`, whatever the bucket says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// The bucket's size.
    pub max_tokens: f64,
    /// What a reply gives back.
    pub token_ratio: f64,
    /// What each second gives back.
    pub refill_per_sec: f64,
    /// A call whose retransmissions are throttled still sends one this
    /// often (`None`: never; then a spent bucket can strand calls until
    /// replies to other calls refill it).
    pub probe_every: Option<Duration>,
}

impl Default for RetryBudget {
    /// 100 tokens, one back per reply and ten per second, and a probe per
    /// call every second: retransmissions go on freely while at least about
    /// half the attempts are answered; when they are not, a call sends at
    /// most one message a second.
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
            refill_per_sec: 10.0,
            probe_every: Some(Duration::from_secs(1)),
        }
    }
}

/// The state of a [`RetryBudget`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bucket {
    tokens: f64,
    budget: RetryBudget,
    refilled_at: Option<Instant>,
}

/// A finite, non-negative value, or 0.
fn sane(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

impl Bucket {
    pub(crate) fn new(budget: RetryBudget) -> Self {
        let max = sane(budget.max_tokens);
        Bucket {
            tokens: max,
            budget: RetryBudget {
                max_tokens: max,
                token_ratio: sane(budget.token_ratio),
                refill_per_sec: sane(budget.refill_per_sec),
                probe_every: budget.probe_every,
            },
            refilled_at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(then) = self.refilled_at {
            let secs = now.saturating_duration_since(then).as_secs_f64();
            self.tokens =
                (self.tokens + secs * self.budget.refill_per_sec).min(self.budget.max_tokens);
        }
        self.refilled_at = Some(now);
    }

    /// A retransmission is due: may it go? One that goes takes a token; one
    /// that is held back takes none (it is the same unanswered attempt, not
    /// a new failure, so waiting must not drain the bucket further).
    pub(crate) fn try_retry(&mut self, now: Instant) -> bool {
        self.refill(now);
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
        // gRPC's example bucket: 10 tokens, 0.1 back per success, no refill
        // with time.
        let now = Instant::now();
        let mut bucket = Bucket::new(RetryBudget {
            max_tokens: 10.0,
            token_ratio: 0.1,
            refill_per_sec: 0.0,
            probe_every: None,
        });
        let allowed = (0..20).filter(|_| bucket.try_retry(now)).count();
        // Retries while more than 5 tokens would be left.
        assert_eq!(allowed, 4);
        assert!(!bucket.try_retry(now + Duration::from_secs(100)));
        assert_eq!(bucket.tokens(), 6.0, "held-back retries cost nothing");
        // One success gives back 0.1: 6.1 - 1 > 5, retries resume.
        bucket.on_success();
        assert!(bucket.try_retry(now));
        // The default tolerates a lossy network: one failure in five.
        let mut bucket = Bucket::new(RetryBudget::default());
        for i in 0..10_000 {
            if i % 5 == 0 {
                assert!(bucket.try_retry(now));
            } else {
                bucket.on_success();
            }
        }
        assert!(bucket.tokens() > 50.0);
    }

    #[test]
    fn time_refills_a_spent_bucket() {
        let now = Instant::now();
        let mut bucket = Bucket::new(RetryBudget::default());
        while bucket.try_retry(now) {}
        assert!(!bucket.try_retry(now));
        // Ten tokens a second: a second later there is room again.
        assert!(bucket.try_retry(now + Duration::from_secs(1)));
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
            let mut b = Bucket::new(RetryBudget { max_tokens: max, token_ratio: ratio, refill_per_sec: ratio, probe_every: None });
            let now = Instant::now();
            b.try_retry(now);
            b.try_retry(now + Duration::from_secs(3));
            b.on_success();
            prop_assert!(b.tokens().is_finite());
        }
    }
}

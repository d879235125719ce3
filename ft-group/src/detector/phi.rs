//! The phi accrual failure detector (Hayashibara, Défago, Yared and Katayama,
//! "The φ accrual failure detector", SRDS 2004), in the form Akka and
//! Cassandra use.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ft_core::{FailureDetector, NodeId, Suspicion};

/// Settings of a [`PhiAccrual`] detector.
///
/// [`PhiConfig::default`] is Akka cluster's documented failure-detector
/// configuration (`akka.cluster.failure-detector`): `threshold = 8.0`,
/// `max-sample-size = 1000`, `min-std-deviation = 100 ms`,
/// `acceptable-heartbeat-pause = 3 s`, and a first estimate equal to its
/// `heartbeat-interval = 1 s`. Those values are the anchor: they are what a
/// widely deployed phi detector ships with, tuned for heartbeats every
/// second on a LAN.
#[derive(Clone, Debug, PartialEq)]
pub struct PhiConfig {
    /// A process is suspected when φ reaches this value. φ = 8 means that,
    /// if heartbeats kept their observed rhythm, a silence this long would
    /// happen with probability about 10⁻⁸. Lower detects sooner and
    /// suspects falsely more often.
    pub threshold: f64,
    /// How many inter-arrival times are remembered per process (older ones
    /// are forgotten first). Bounds memory per process. Values below 1 are
    /// treated as 1 and values above 2²⁰ as 2²⁰, which keeps the running
    /// sums exact in integers.
    pub max_sample_size: usize,
    /// Floor of the standard deviation used, so that perfectly regular
    /// heartbeats do not make the detector intolerant of the smallest delay.
    pub min_std_deviation: Duration,
    /// Extra silence tolerated on top of the mean inter-arrival time, for
    /// pauses the window has not seen (garbage collection, a lost
    /// heartbeat or two).
    pub acceptable_heartbeat_pause: Duration,
    /// The inter-arrival time assumed before any has been measured: the
    /// window starts with two samples, this value plus and minus a quarter
    /// of it (as Akka does), so φ is defined from the first heartbeat on.
    /// Set it to the heartbeat interval.
    pub first_heartbeat_estimate: Duration,
}

impl PhiConfig {
    /// Akka's `threshold`.
    pub const DEFAULT_THRESHOLD: f64 = 8.0;
    /// Akka's `max-sample-size`.
    pub const DEFAULT_MAX_SAMPLE_SIZE: usize = 1000;
    /// Akka's `min-std-deviation`.
    pub const DEFAULT_MIN_STD_DEVIATION: Duration = Duration::from_millis(100);
    /// Akka's `acceptable-heartbeat-pause`.
    pub const DEFAULT_ACCEPTABLE_HEARTBEAT_PAUSE: Duration = Duration::from_secs(3);
    /// Akka's `heartbeat-interval`, used as the first estimate.
    pub const DEFAULT_FIRST_HEARTBEAT_ESTIMATE: Duration = Duration::from_secs(1);
}

impl Default for PhiConfig {
    /// Akka cluster's defaults: threshold 8, 1000 samples, 100 ms minimum
    /// standard deviation, 3 s acceptable pause, 1 s first estimate.
    fn default() -> Self {
        PhiConfig {
            threshold: Self::DEFAULT_THRESHOLD,
            max_sample_size: Self::DEFAULT_MAX_SAMPLE_SIZE,
            min_std_deviation: Self::DEFAULT_MIN_STD_DEVIATION,
            acceptable_heartbeat_pause: Self::DEFAULT_ACCEPTABLE_HEARTBEAT_PAUSE,
            first_heartbeat_estimate: Self::DEFAULT_FIRST_HEARTBEAT_ESTIMATE,
        }
    }
}

/// Largest window accepted, so that `n · Σx²` and `(Σx)²` fit in a `u128`
/// with samples capped at [`MAX_SAMPLE_US`]: 2²⁰ · (2⁴⁰)² = 2¹⁰⁰, and
/// n · that = 2¹²⁰.
const MAX_WINDOW: usize = 1 << 20;

/// Largest inter-arrival time recorded, in microseconds (about 12.7 days).
/// A longer silence is recorded as this long: it is already so far beyond
/// any heartbeat rhythm that the exact figure changes nothing, and the cap
/// keeps the sums exact.
const MAX_SAMPLE_US: u64 = 1 << 40;

/// The standard deviation never drops below one microsecond, whatever
/// [`PhiConfig::min_std_deviation`] says, so φ never divides by zero.
const STD_FLOOR_US: f64 = 1.0;

/// The inter-arrival times of one process and when it was last heard from.
#[derive(Clone, Debug, PartialEq)]
struct History {
    last: Instant,
    /// Inter-arrival times in microseconds, oldest first.
    window: VecDeque<u64>,
    /// Σ window, kept exactly so that forgetting a sample cannot drift.
    sum: u128,
    /// Σ window², likewise exact.
    sum_sq: u128,
}

impl History {
    fn seeded(now: Instant, estimate_us: u64, max: usize) -> Self {
        let mut h = History {
            last: now,
            window: VecDeque::with_capacity(max.min(64)),
            sum: 0,
            sum_sq: 0,
        };
        let spread = estimate_us / 4;
        h.push(estimate_us - spread, max);
        h.push(estimate_us.saturating_add(spread).min(MAX_SAMPLE_US), max);
        h
    }

    fn push(&mut self, sample_us: u64, max: usize) {
        let x = u128::from(sample_us.min(MAX_SAMPLE_US));
        self.window.push_back(x as u64);
        self.sum += x;
        self.sum_sq += x * x;
        while self.window.len() > max {
            if let Some(old) = self.window.pop_front() {
                let old = u128::from(old);
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
    }

    /// Mean and (population) standard deviation of the window, in µs.
    fn mean_std(&self) -> (f64, f64) {
        let n = self.window.len() as u128;
        if n == 0 {
            return (0.0, 0.0);
        }
        let mean = self.sum as f64 / n as f64;
        // n·Σx² − (Σx)² is exact in integers and never negative (Cauchy–
        // Schwarz), unlike Σx²/n − mean² in floating point.
        let spread = (n * self.sum_sq).saturating_sub(self.sum * self.sum);
        let var = spread as f64 / (n as f64 * n as f64);
        (mean, var.sqrt())
    }
}

/// The phi accrual failure detector.
///
/// Instead of a yes/no verdict it computes, for each process, a suspicion
/// level φ from how long the process has been silent compared with the
/// inter-arrival times of its recent heartbeats:
///
/// φ = −log₁₀ P(a heartbeat arrives later than the current silence),
///
/// with the inter-arrival time modelled as normally distributed, its mean the
/// window's mean plus [`acceptable_heartbeat_pause`](PhiConfig::acceptable_heartbeat_pause)
/// and its standard deviation the window's, but at least
/// [`min_std_deviation`](PhiConfig::min_std_deviation). The normal tail is
/// computed with the logistic approximation Akka uses. A process is
/// suspected when φ ≥ [`threshold`](PhiConfig::threshold).
///
/// Because the distribution is learnt per process, a process whose
/// heartbeats arrive irregularly is given a wider tolerance than a regular
/// one at the same mean rate.
///
/// Memory per process is bounded by
/// [`max_sample_size`](PhiConfig::max_sample_size) samples.
///
/// # Odd input
///
/// - A heartbeat stamped at or before the latest one from the same process
///   (a duplicate delivered at the same instant, or a caller whose clock went
///   backwards) is ignored: it is no new arrival, and recording a zero or
///   negative inter-arrival time would only distort the window.
/// - Asking about a time before the latest heartbeat counts as no silence.
/// - Silences longer than about 12.7 days are recorded as that long.
/// - φ is never NaN and never negative. It is `f64::INFINITY` when the
///   silence is so far beyond the mean that the probability underflows an
///   `f64`; such a process is suspected at any finite threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct PhiAccrual {
    config: PhiConfig,
    /// `config.max_sample_size` clamped to `1..=MAX_WINDOW`.
    max: usize,
    nodes: BTreeMap<NodeId, History>,
}

impl PhiAccrual {
    /// A detector with the given settings.
    pub fn new(config: PhiConfig) -> Self {
        let max = config.max_sample_size.clamp(1, MAX_WINDOW);
        PhiAccrual {
            config,
            max,
            nodes: BTreeMap::new(),
        }
    }

    // --- getters ---

    /// The settings.
    pub fn config(&self) -> &PhiConfig {
        &self.config
    }

    /// The suspicion level of `node` at `now`, or `None` if it has never
    /// been heard from (or was removed). Never NaN, never negative, possibly
    /// `f64::INFINITY` (see [the type's docs](PhiAccrual#odd-input)).
    pub fn phi(&self, node: NodeId, now: Instant) -> Option<f64> {
        let h = self.nodes.get(&node)?;
        let (window_mean, window_std) = h.mean_std();
        let mean = window_mean + micros(self.config.acceptable_heartbeat_pause);
        let std = window_std
            .max(micros(self.config.min_std_deviation))
            .max(STD_FLOOR_US);
        let elapsed = micros(now.saturating_duration_since(h.last));
        Some(phi_of(elapsed, mean, std))
    }

    /// How many inter-arrival times the window of `node` holds.
    pub fn sample_count(&self, node: NodeId) -> Option<usize> {
        self.nodes.get(&node).map(|h| h.window.len())
    }

    /// The mean inter-arrival time in the window of `node` (without the
    /// acceptable pause).
    pub fn mean_interval(&self, node: NodeId) -> Option<Duration> {
        self.nodes
            .get(&node)
            .map(|h| duration_of_micros(h.mean_std().0))
    }

    /// The standard deviation of the inter-arrival times in the window of
    /// `node` (before the [`min_std_deviation`](PhiConfig::min_std_deviation)
    /// floor is applied).
    pub fn std_deviation(&self, node: NodeId) -> Option<Duration> {
        self.nodes
            .get(&node)
            .map(|h| duration_of_micros(h.mean_std().1))
    }

    /// When `node` was last heard from.
    pub fn last_heartbeat(&self, node: NodeId) -> Option<Instant> {
        self.nodes.get(&node).map(|h| h.last)
    }

    /// How many processes are tracked.
    pub fn tracked(&self) -> usize {
        self.nodes.len()
    }
}

impl Default for PhiAccrual {
    /// A detector with [`PhiConfig::default`] (Akka's defaults).
    fn default() -> Self {
        PhiAccrual::new(PhiConfig::default())
    }
}

impl FailureDetector for PhiAccrual {
    fn heartbeat(&mut self, node: NodeId, now: Instant) {
        let max = self.max;
        match self.nodes.get_mut(&node) {
            None => {
                let estimate = whole_micros(self.config.first_heartbeat_estimate);
                self.nodes.insert(node, History::seeded(now, estimate, max));
            }
            Some(h) if now > h.last => {
                let interval = whole_micros(now - h.last);
                h.push(interval, max);
                h.last = now;
            }
            // Not after the latest heartbeat: no new arrival (see the docs).
            Some(_) => {}
        }
    }

    fn suspicion(&self, node: NodeId, now: Instant) -> Suspicion {
        match self.phi(node, now) {
            None => Suspicion::Unknown,
            Some(phi) if phi >= self.config.threshold => Suspicion::Suspected,
            Some(_) => Suspicion::Alive,
        }
    }

    fn remove(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }
}

/// A duration in microseconds, with its sub-microsecond part, as `f64`.
fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Microseconds as a `Duration`; the window's statistics are finite and
/// non-negative, but a getter must not panic if that ever failed.
fn duration_of_micros(us: f64) -> Duration {
    Duration::try_from_secs_f64(us / 1e6).unwrap_or(Duration::ZERO)
}

/// A duration in whole microseconds, capped at [`MAX_SAMPLE_US`].
fn whole_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(MAX_SAMPLE_US)
}

/// φ for a silence of `elapsed` under a normal distribution of mean `mean`
/// and standard deviation `std` (all in the same unit, `std > 0`).
///
/// P(X > t) is approximated by the logistic function 1 / (1 + e^(y(1.5976 +
/// 0.070566 y²))) with y = (t − mean) / std, which is within 1.4 · 10⁻⁴ of
/// the normal tail (Bowling et al., "A logistic approximation to the
/// cumulative normal distribution", 2009). The two branches compute the same quantity; each is the
/// one that does not lose precision on its side of the mean: above it the
/// tail is `e / (1 + e)` with `e` small, below it `1 − 1 / (1 + e)` with `e`
/// large.
fn phi_of(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let phi = if elapsed > mean {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    };
    // Far below the mean the tail rounds to exactly 1 and −log10(1) is −0.0;
    // a NaN cannot arise from finite positive inputs, but if one ever did
    // the safe reading is "no evidence of life", hence +∞.
    if phi.is_nan() {
        f64::INFINITY
    } else if phi > 0.0 {
        phi
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const N: NodeId = NodeId(1);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A detector that has seen `beats` heartbeats at the given gaps,
    /// cycling; returns it and the time of the last heartbeat.
    fn trained(config: PhiConfig, gaps: &[f64], beats: usize) -> (PhiAccrual, Instant) {
        let mut d = PhiAccrual::new(config);
        let mut t = Instant::now();
        d.heartbeat(N, t);
        for i in 1..beats {
            t += secs(gaps[i % gaps.len()]);
            d.heartbeat(N, t);
        }
        (d, t)
    }

    #[test]
    fn unknown_before_the_first_heartbeat_and_after_remove() {
        let mut d = PhiAccrual::default();
        let t = Instant::now();
        assert_eq!(d.phi(N, t), None);
        assert_eq!(d.suspicion(N, t), Suspicion::Unknown);
        d.heartbeat(N, t);
        assert_eq!(d.sample_count(N), Some(2), "seeded with two samples");
        assert_eq!(d.suspicion(N, t), Suspicion::Alive);
        d.remove(N);
        assert_eq!(d.suspicion(N, t), Suspicion::Unknown);
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn first_estimate_seeds_mean_and_quarter_spread() {
        let mut d = PhiAccrual::default();
        d.heartbeat(N, Instant::now());
        assert_eq!(d.mean_interval(N), Some(Duration::from_secs(1)));
        assert_eq!(d.std_deviation(N), Some(Duration::from_millis(250)));
    }

    #[test]
    fn phi_grows_with_silence() {
        let (d, t) = trained(PhiConfig::default(), &[1.0], 50);
        let mut prev = 0.0;
        let mut strictly_rising = 0;
        // Fine grid from 0 to 8 s: never decreasing…
        for ms in (0..8000).step_by(10) {
            let phi = d.phi(N, t + Duration::from_millis(ms)).unwrap_or(f64::NAN);
            assert!(phi >= prev, "phi fell from {prev} to {phi} at {ms} ms");
            // …and strictly increasing wherever it is neither ~0 nor ∞.
            if prev > 1e-3 && phi.is_finite() {
                assert!(phi > prev, "phi flat at {ms} ms: {phi}");
                strictly_rising += 1;
            }
            prev = phi;
        }
        assert!(strictly_rising > 50);
        assert_eq!(prev, f64::INFINITY, "8 s of silence is beyond any doubt");
    }

    #[test]
    fn steady_heartbeats_cross_the_threshold_after_interval_pause_and_several_std() {
        let config = PhiConfig::default();
        let (d, t) = trained(config.clone(), &[1.0], 200);
        let phi = |s: f64| d.phi(N, t + secs(s)).unwrap_or(f64::NAN);
        // Right after a beat, and a full interval later, nothing is amiss.
        assert!(phi(0.0) < 1e-6, "{}", phi(0.0));
        assert!(phi(1.0) < 1e-3, "{}", phi(1.0));
        // Regular beats: window std 0, so the 100 ms floor applies, and the
        // mean is 1 s + 3 s pause. φ = 8 needs y ≈ 5.2 standard deviations.
        assert!(phi(4.0) < 1.0, "at the mean φ is ~0.3: {}", phi(4.0));
        assert!(phi(4.3) < config.threshold, "{}", phi(4.3));
        assert!(phi(4.5) < config.threshold, "{}", phi(4.5));
        assert!(phi(4.55) >= config.threshold, "{}", phi(4.55));
        let mut crossing = 4.0;
        while phi(crossing) < config.threshold {
            crossing += 0.001;
        }
        assert!((4.5..4.55).contains(&crossing), "crossed at {crossing} s");
        assert_eq!(d.suspicion(N, t + secs(4.5)), Suspicion::Alive);
        assert_eq!(d.suspicion(N, t + secs(4.55)), Suspicion::Suspected);
    }

    #[test]
    fn jittery_heartbeats_get_a_wider_tolerance() {
        // 200 inter-arrival times each, so both means are exactly 1 s.
        let (regular, tr) = trained(PhiConfig::default(), &[1.0], 201);
        let (jittery, tj) = trained(PhiConfig::default(), &[0.5, 1.5], 201);
        assert_eq!(regular.mean_interval(N), jittery.mean_interval(N));
        for s in [4.2, 4.5, 5.0, 6.0] {
            let r = regular.phi(N, tr + secs(s)).unwrap_or(f64::NAN);
            let j = jittery.phi(N, tj + secs(s)).unwrap_or(f64::NAN);
            assert!(j < r, "after {s} s: jittery {j} vs regular {r}");
        }
        // At 5 s the regular process is long suspected, the jittery one not.
        assert!(regular.is_suspected(N, tr + secs(5.0)));
        assert!(!jittery.is_suspected(N, tj + secs(5.0)));
    }

    #[test]
    fn window_is_bounded() {
        let (d, _) = trained(PhiConfig::default(), &[1.0, 1.1, 0.9], 10_000);
        assert_eq!(d.sample_count(N), Some(1000));
        let small = PhiConfig {
            max_sample_size: 3,
            ..PhiConfig::default()
        };
        let (d, _) = trained(small, &[2.0], 100);
        assert_eq!(d.sample_count(N), Some(3));
        // The seeded samples have rolled out: the window is exactly 2 s.
        assert_eq!(d.mean_interval(N), Some(Duration::from_secs(2)));
        assert_eq!(d.std_deviation(N), Some(Duration::ZERO));
        let zero = PhiConfig {
            max_sample_size: 0,
            ..PhiConfig::default()
        };
        let (d, _) = trained(zero, &[1.0], 10);
        assert_eq!(d.sample_count(N), Some(1), "0 is treated as 1");
    }

    #[test]
    fn equal_timestamps_and_backwards_time_give_no_nan() {
        let t = Instant::now();
        let mut d = PhiAccrual::default();
        for _ in 0..10 {
            d.heartbeat(N, t);
        }
        assert_eq!(d.sample_count(N), Some(2), "repeats are no new arrival");
        d.heartbeat(N, t + secs(1.0));
        d.heartbeat(N, t);
        assert_eq!(d.last_heartbeat(N), Some(t + secs(1.0)));
        let phi = d.phi(N, t).unwrap_or(f64::NAN);
        assert!(!phi.is_nan() && phi >= 0.0);

        // Degenerate settings: zero estimate, zero floors, zero pause.
        let bare = PhiConfig {
            threshold: 1.0,
            max_sample_size: 1,
            min_std_deviation: Duration::ZERO,
            acceptable_heartbeat_pause: Duration::ZERO,
            first_heartbeat_estimate: Duration::ZERO,
        };
        let mut d = PhiAccrual::new(bare);
        d.heartbeat(N, t);
        for dt in [0.0, 1e-9, 1e-6, 1.0, 1e9] {
            let phi = d.phi(N, t + secs(dt)).unwrap_or(f64::NAN);
            assert!(!phi.is_nan() && phi >= 0.0, "{phi} at {dt}");
        }
        assert_eq!(d.phi(N, t + secs(1.0)), Some(f64::INFINITY));
    }

    #[test]
    fn huge_silences_are_infinite_not_nan() {
        let (mut d, t) = trained(PhiConfig::default(), &[1.0], 10);
        let far = t + Duration::from_secs(10 * 365 * 24 * 3600);
        assert_eq!(d.phi(N, far), Some(f64::INFINITY));
        assert!(d.is_suspected(N, far));
        // Recording such a silence keeps the sums exact and φ defined.
        d.heartbeat(N, far);
        let phi = d.phi(N, far + secs(1.0)).unwrap_or(f64::NAN);
        assert!(phi.is_finite() && phi >= 0.0, "{phi}");
    }

    #[test]
    fn phi_of_matches_the_normal_tail_at_known_points() {
        // At the mean the tail is one half.
        assert!((phi_of(10.0, 10.0, 1.0) - 0.5f64.log10().abs()).abs() < 1e-12);
        // One std above: P ≈ 0.1587, φ ≈ 0.80.
        assert!((phi_of(11.0, 10.0, 1.0) - 0.7995).abs() < 0.01);
        // Far below: exactly zero, not −0.0.
        assert_eq!(phi_of(0.0, 1e9, 1.0).to_bits(), 0.0f64.to_bits());
    }

    proptest! {
        #[test]
        fn phi_is_never_nan_nor_negative(
            steps in proptest::collection::vec((any::<bool>(), 0u64..(1 << 50)), 1..60),
            queries in proptest::collection::vec(0u64..(1 << 52), 1..8),
            max in 0usize..8,
            min_std_ms in 0u64..500,
            pause_ms in 0u64..5000,
            estimate_ms in 0u64..5000,
        ) {
            let config = PhiConfig {
                threshold: 8.0,
                max_sample_size: max,
                min_std_deviation: Duration::from_millis(min_std_ms),
                acceptable_heartbeat_pause: Duration::from_millis(pause_ms),
                first_heartbeat_estimate: Duration::from_millis(estimate_ms),
            };
            let mut d = PhiAccrual::new(config);
            let base = Instant::now();
            let mut t = base + Duration::from_secs(1 << 20);
            for (backwards, gap_ns) in steps {
                let gap = Duration::from_nanos(gap_ns);
                // Some steps go back in time, some repeat the same instant.
                t = if backwards { t.checked_sub(gap).unwrap_or(base) } else { t + gap };
                d.heartbeat(N, t);
                for &q in &queries {
                    for at in [t + Duration::from_nanos(q), t.checked_sub(Duration::from_nanos(q)).unwrap_or(base)] {
                        let phi = d.phi(N, at);
                        prop_assert!(phi.is_some());
                        let phi = phi.unwrap_or(f64::NAN);
                        prop_assert!(!phi.is_nan(), "NaN at {:?}", at);
                        prop_assert!(phi >= 0.0, "negative {}", phi);
                    }
                }
            }
        }
    }
}

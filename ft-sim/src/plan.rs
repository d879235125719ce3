//! Fault plans: the failure taxonomy as an API.
//!
//! A [`FaultPlan`] says which failures the simulator injects, and when. It
//! covers every failure model of the subject: crash ([`FaultEvent::Crash`],
//! [`RandomCrashes`]), omission ([`NodeFaults::send_omission`],
//! [`NodeFaults::receive_omission`], [`OmissionWindow`]), timing
//! ([`NodeFaults::slow`], [`LinkFaults::extra_delay`]), response
//! ([`NodeFaults::value_corruption`], [`NodeFaults::repeat_transition`],
//! [`NodeFaults::skip_transition`]), arbitrary ([`NodeFaults::byzantine`]),
//! and the network's own loss, duplication, reordering, corruption, delay
//! distributions, partitions, one-way partitions and heals
//! ([`NetworkFaults`], [`FaultEvent::Partition`], [`FaultEvent::OneWay`],
//! [`FaultEvent::Heal`]).
//!
//! Plans are plain data: `Clone`, `Debug`, printed in every failure report.

use std::collections::BTreeMap;
use std::time::Duration;

use ft_core::{FailureModel, NodeId, Omission, Response};

use crate::rng::SimRng;

/// A distribution of delays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Delay {
    /// Always the same delay.
    Fixed(Duration),
    /// Uniform between `min` and `max` (bounded delay).
    Uniform {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
    /// `min` plus an exponentially distributed extra with mean `mean`:
    /// unbounded delay, as in an asynchronous system.
    Exponential {
        /// Delay every message has at least.
        min: Duration,
        /// Mean of the unbounded extra.
        mean: Duration,
    },
}

impl Delay {
    /// No delay at all.
    pub const ZERO: Delay = Delay::Fixed(Duration::ZERO);

    /// Draws one delay.
    pub fn sample(&self, rng: &mut SimRng) -> Duration {
        match *self {
            Delay::Fixed(d) => d,
            Delay::Uniform { min, max } => {
                if max <= min {
                    return min;
                }
                let span = (max - min).as_nanos() as u64;
                min + Duration::from_nanos(rng.below(span + 1))
            }
            Delay::Exponential { min, mean } => {
                // Inverse transform; 1 - u is in (0, 1] so ln never sees 0.
                let u = 1.0 - rng.next_f64();
                let extra = -u.ln() * mean.as_nanos() as f64;
                min + Duration::from_nanos(extra.min(1e15) as u64)
            }
        }
    }

    /// Whether the distribution has no upper bound.
    pub fn is_unbounded(&self) -> bool {
        matches!(self, Delay::Exponential { .. })
    }
}

/// Faults of the network as a whole.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkFaults {
    /// One-way delay of every message.
    pub delay: Delay,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back by an extra delay drawn from
    /// `[0, reorder_window]`, so that later messages overtake it.
    pub reorder: f64,
    /// How far back a reordered message may fall.
    pub reorder_window: Duration,
    /// Probability that one bit of a frame is flipped in transit (the frame
    /// CRC must catch it).
    pub corrupt: f64,
    /// From this (virtual) time on, the network stops losing, duplicating,
    /// reordering and corrupting messages (delays stay): the faults end, so
    /// liveness after them can be asserted. `None`: they never end.
    pub calm_after: Option<Duration>,
}

impl Default for NetworkFaults {
    /// A perfect network with 1 ms delay.
    fn default() -> Self {
        NetworkFaults {
            delay: Delay::Fixed(Duration::from_millis(1)),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_window: Duration::ZERO,
            corrupt: 0.0,
            calm_after: None,
        }
    }
}

/// An interval of virtual time during which a node omits messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OmissionWindow {
    /// Start (inclusive), from the start of the run.
    pub from: Duration,
    /// End (exclusive).
    pub until: Duration,
    /// Which messages are omitted.
    pub kind: Omission,
}

/// The built-in strategies of a Byzantine node whose user has not supplied
/// one (see [`Sim::set_adversary`](crate::Sim::set_adversary)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Byzantine {
    /// Replaces every message with random bytes of random length, correctly
    /// framed (so only the receiver's decoder stands in the way), and sends
    /// extra garbage at every adversary tick.
    RandomPayload,
    /// Sends nothing at all, while staying up.
    Silent,
}

/// Faults of one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFaults {
    /// Probability that a message the node sends is omitted.
    pub send_omission: f64,
    /// Probability that a message sent to the node is omitted on receipt.
    pub receive_omission: f64,
    /// Intervals during which the node omits every message of a kind.
    pub omission_windows: Vec<OmissionWindow>,
    /// Timing failure: extra delay on every message the node sends or
    /// receives (a slow node).
    pub slow: Option<Delay>,
    /// Timing failure: the node's clock is offset from true time and/or
    /// drifts (see [`ClockFault`]). Its cores see every `now` on this clock
    /// and their timers fire when this clock reaches their deadline.
    pub clock: Option<ClockFault>,
    /// Value failure: probability that a message the node sends has a bit of
    /// its *payload* flipped before framing, so the frame is valid but the
    /// value is wrong.
    pub value_corruption: f64,
    /// State-transition failure: probability that a received message is
    /// handled twice.
    pub repeat_transition: f64,
    /// State-transition failure: probability that a received message is
    /// taken in but its transition skipped.
    pub skip_transition: f64,
    /// Arbitrary failure: the node is Byzantine, with this built-in strategy
    /// unless a custom adversary is set on the simulator.
    pub byzantine: Option<Byzantine>,
}

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A node's clock that does not keep true time: a timing failure.
///
/// At true time `t` since the start of the run the node's clock reads
/// `offset + t × (1 + rho)`, where `rho = drift_ppb / 10⁹` (rounded down to
/// the nanosecond). So an offset shifts every reading by a fixed amount,
/// and a drift makes the clock gain (`rho > 0`) or lose (`rho < 0`) time at
/// a constant rate: a local duration `D` lasts `D / (1 + rho)` of true time.
/// The clock is hardware: it keeps running, unchanged, across crashes and
/// restarts of the node.
///
/// An offset may be any `i64`, behind as well as ahead: since an `Instant`
/// cannot go below the moment it was taken, the simulator starts true time
/// as far in the future as the furthest clock reads behind, so every
/// reading is representable.
///
/// All arithmetic is on integer nanoseconds, so runs stay deterministic.
/// The drift rate is kept within [`MIN_DRIFT_PPB`](Self::MIN_DRIFT_PPB) ..=
/// [`MAX_DRIFT_PPB`](Self::MAX_DRIFT_PPB): a value outside is clamped to the
/// nearest bound (by the constructors, and again wherever the clock is read),
/// because a clock that stops or runs backwards is not a drifting clock and
/// would make every timer of the node fire never or at once.
///
/// ```
/// use std::time::Duration;
/// use ft_sim::ClockFault;
///
/// // 5 ms behind true time, and gaining 1 ms per 10 ms (rho = +0.1).
/// let c = ClockFault::behind(Duration::from_millis(5)).with_drift(0.1);
/// assert_eq!((c.offset_nanos, c.drift_ppb), (-5_000_000, 100_000_000));
/// // A clock cannot stop: rho = -1 is clamped to the slowest allowed rate.
/// assert_eq!(ClockFault::drifting(-1.0).drift_ppb, ClockFault::MIN_DRIFT_PPB);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockFault {
    /// What the clock reads at the start of the run, minus true time, in
    /// nanoseconds: positive means ahead, negative behind.
    pub offset_nanos: i64,
    /// Drift rate in parts per billion: the clock advances
    /// `1 + drift_ppb / 10⁹` seconds per true second.
    pub drift_ppb: i64,
}

impl ClockFault {
    /// The slowest clock: a thousandth of true speed (`rho = -0.999`).
    pub const MIN_DRIFT_PPB: i64 = -999_000_000;
    /// The fastest clock: a thousand times true speed (`rho = +999`).
    pub const MAX_DRIFT_PPB: i64 = 999_000_000_000;

    /// A clock that reads `by` ahead of true time, and does not drift.
    pub fn ahead(by: Duration) -> Self {
        ClockFault {
            offset_nanos: duration_nanos(by),
            drift_ppb: 0,
        }
    }

    /// A clock that reads `by` behind true time, and does not drift.
    pub fn behind(by: Duration) -> Self {
        ClockFault {
            offset_nanos: -duration_nanos(by),
            drift_ppb: 0,
        }
    }

    /// A clock without offset that drifts at rate `rho` (see
    /// [`with_drift`](Self::with_drift)).
    pub fn drifting(rho: f64) -> Self {
        ClockFault::default().with_drift(rho)
    }

    /// This clock, drifting at rate `rho`: it advances `1 + rho` seconds per
    /// true second. `rho` is converted once to whole parts per billion
    /// (rounded to nearest) and clamped to the allowed range; NaN means no
    /// drift.
    pub fn with_drift(self, rho: f64) -> Self {
        // `as` saturates and maps NaN to 0: one well-defined conversion.
        let ppb = (rho * 1e9).round() as i64;
        ClockFault {
            drift_ppb: ppb.clamp(Self::MIN_DRIFT_PPB, Self::MAX_DRIFT_PPB),
            ..self
        }
    }

    /// The drift rate `rho` (after clamping).
    pub fn rho(&self) -> f64 {
        self.clamped_ppb() as f64 / 1e9
    }

    /// Whether the clock differs from true time at all.
    pub fn is_skewed(&self) -> bool {
        self.offset_nanos != 0 || self.clamped_ppb() != 0
    }

    fn clamped_ppb(&self) -> i64 {
        self.drift_ppb
            .clamp(Self::MIN_DRIFT_PPB, Self::MAX_DRIFT_PPB)
    }

    /// Local nanoseconds per 10⁹ true ones; always positive.
    fn rate(&self) -> i128 {
        NANOS_PER_SEC + i128::from(self.clamped_ppb())
    }

    /// The reading at true time `t` since the start, in nanoseconds from the
    /// true start (negative while a clock that is behind reads before it).
    /// Non-decreasing in `t`, because the rate is positive.
    pub(crate) fn local_nanos(&self, t: Duration) -> i128 {
        let elapsed = (t.as_nanos() as i128).saturating_mul(self.rate()) / NANOS_PER_SEC;
        i128::from(self.offset_nanos).saturating_add(elapsed)
    }

    /// The earliest true time since the start at which the clock reads at
    /// least `local` (nanoseconds from the true start): the exact inverse of
    /// [`local_nanos`](Self::local_nanos), rounded up so that a timer never
    /// fires before its node's clock reaches the deadline.
    pub(crate) fn true_time(&self, local: i128) -> Duration {
        let elapsed = local.saturating_sub(i128::from(self.offset_nanos));
        if elapsed <= 0 {
            return Duration::ZERO;
        }
        let rate = self.rate();
        let t = elapsed
            .saturating_mul(NANOS_PER_SEC)
            .saturating_add(rate - 1)
            / rate;
        nanos(t.unsigned_abs())
    }
}

/// A duration of `n` nanoseconds, saturating at [`Duration::MAX`].
pub(crate) fn nanos(n: u128) -> Duration {
    const PER_SEC: u128 = NANOS_PER_SEC as u128;
    let secs = u64::try_from(n / PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, (n % PER_SEC) as u32)
}

fn duration_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Faults of one directed link.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkFaults {
    /// Extra delay on the link (a slow link).
    pub extra_delay: Option<Delay>,
    /// Extra loss probability on the link.
    pub loss: f64,
}

/// Crashes drawn at random during the run.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomCrashes {
    /// Mean time between crashes anywhere in the system (exponential).
    pub mean_interval: Duration,
    /// How long a crashed node stays down before it restarts; `None` means
    /// it never restarts.
    pub downtime: Option<Delay>,
    /// At most this many nodes are down at once (a k-fault bound).
    pub max_down: usize,
    /// Nodes that never crash at random.
    pub spare: Vec<NodeId>,
}

/// A fault that happens at a chosen time.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultEvent {
    /// The node halts: volatile state lost, pending storage writes lost.
    Crash(NodeId),
    /// The node restarts from its stable storage with incarnation + 1.
    Restart(NodeId),
    /// The network splits into the given groups; nodes in different groups
    /// (or in no group) cannot reach each other.
    Partition(Vec<Vec<NodeId>>),
    /// A one-way partition: every message from a node of `from` to a node
    /// of `to` is lost, while messages the other way still arrive (`to`
    /// hears nothing from `from`; `from` still hears `to`). Several may be
    /// in force at once, together with a [`Partition`](Self::Partition).
    OneWay {
        /// The nodes whose messages are lost...
        from: Vec<NodeId>,
        /// ...on their way to these nodes.
        to: Vec<NodeId>,
    },
    /// Every partition heals, one-way partitions included.
    Heal,
}

/// Everything the simulator injects during one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Faults of the network as a whole.
    pub network: NetworkFaults,
    /// Faults of particular nodes.
    pub nodes: BTreeMap<NodeId, NodeFaults>,
    /// Faults of particular directed links `(from, to)`.
    pub links: BTreeMap<(NodeId, NodeId), LinkFaults>,
    /// Faults at chosen times, from the start of the run.
    pub events: Vec<(Duration, FaultEvent)>,
    /// Crashes at random times.
    pub random_crashes: Option<RandomCrashes>,
    /// How often a Byzantine node's strategy gets an unsolicited turn.
    pub adversary_tick: Option<Duration>,
}

impl FaultPlan {
    /// A plan that injects nothing (a 1 ms, lossless network).
    pub fn none() -> Self {
        FaultPlan::default()
    }

    /// The faults of `node`, created empty if needed.
    pub fn node(&mut self, node: NodeId) -> &mut NodeFaults {
        self.nodes.entry(node).or_default()
    }

    /// The faults of the link `from → to`, created empty if needed.
    pub fn link(&mut self, from: NodeId, to: NodeId) -> &mut LinkFaults {
        self.links.entry((from, to)).or_default()
    }

    /// Adds a fault at `at`.
    pub fn at(&mut self, at: Duration, event: FaultEvent) -> &mut Self {
        self.events.push((at, event));
        self
    }

    /// Crashes `node` at `at` and, if `down_for` is given, restarts it after
    /// that long.
    pub fn crash(&mut self, node: NodeId, at: Duration, down_for: Option<Duration>) -> &mut Self {
        self.events.push((at, FaultEvent::Crash(node)));
        if let Some(d) = down_for {
            self.events.push((at + d, FaultEvent::Restart(node)));
        }
        self
    }

    /// Partitions the network into `groups` from `at` until `heal`.
    pub fn partition(
        &mut self,
        groups: Vec<Vec<NodeId>>,
        at: Duration,
        heal: Duration,
    ) -> &mut Self {
        self.events.push((at, FaultEvent::Partition(groups)));
        self.events.push((heal, FaultEvent::Heal));
        self
    }

    /// A one-way partition from `at` until `heal`: messages from `from` to
    /// `to` are lost, messages from `to` to `from` still arrive (see
    /// [`FaultEvent::OneWay`]).
    pub fn one_way(
        &mut self,
        from: Vec<NodeId>,
        to: Vec<NodeId>,
        at: Duration,
        heal: Duration,
    ) -> &mut Self {
        self.events.push((at, FaultEvent::OneWay { from, to }));
        self.events.push((heal, FaultEvent::Heal));
        self
    }

    /// The failure models this plan injects, in the order of
    /// [`FailureModel::ALL`] (network faults are reported as the omission
    /// and timing failures of the channel they amount to).
    pub fn failure_models(&self) -> Vec<FailureModel> {
        let mut found = Vec::new();
        let crash = self.random_crashes.is_some()
            || self
                .events
                .iter()
                .any(|(_, e)| matches!(e, FaultEvent::Crash(_)));
        let n = |f: &dyn Fn(&NodeFaults) -> bool| self.nodes.values().any(f);
        let window = |k: Omission| {
            n(&|f: &NodeFaults| {
                f.omission_windows
                    .iter()
                    .any(|w| w.kind == k || w.kind == Omission::Both)
            })
        };
        let net_omission = self.network.loss > 0.0
            || self.network.corrupt > 0.0
            || self.links.values().any(|l| l.loss > 0.0)
            || self
                .events
                .iter()
                .any(|(_, e)| matches!(e, FaultEvent::Partition(_) | FaultEvent::OneWay { .. }));
        let send = net_omission || n(&|f| f.send_omission > 0.0) || window(Omission::Send);
        let recv = net_omission || n(&|f| f.receive_omission > 0.0) || window(Omission::Receive);
        let timing = self.network.delay.is_unbounded()
            || self.network.reorder > 0.0
            || n(&|f| f.slow.is_some())
            || n(&|f| f.clock.is_some_and(|c| c.is_skewed()))
            || self.links.values().any(|l| l.extra_delay.is_some());
        let checks = [
            (FailureModel::Crash, crash),
            (FailureModel::Omission(Omission::Send), send),
            (FailureModel::Omission(Omission::Receive), recv),
            (FailureModel::Omission(Omission::Both), send && recv),
            (FailureModel::Timing, timing),
            (
                FailureModel::Response(Response::Value),
                n(&|f| f.value_corruption > 0.0),
            ),
            (
                FailureModel::Response(Response::StateTransition),
                n(&|f| f.repeat_transition > 0.0 || f.skip_transition > 0.0),
            ),
            (FailureModel::Arbitrary, n(&|f| f.byzantine.is_some())),
        ];
        for (model, on) in checks {
            if on {
                found.push(model);
            }
        }
        found
    }

    /// A plan mixing every kind of fault, scaled for a run of `horizon` over
    /// `nodes` nodes: 2% loss, 1% duplication, 5% reordering, 0.1% bit flips,
    /// a slow node, send and receive omission windows, one node with value
    /// and state-transition failures, random crash/restarts of at most one
    /// node at a time, and a partition that heals halfway through. Nodes 0
    /// and 1 are kept fault-free so something stays correct to observe.
    pub fn mixed(nodes: usize, horizon: Duration) -> Self {
        let mut plan = FaultPlan {
            network: NetworkFaults {
                delay: Delay::Uniform {
                    min: Duration::from_micros(500),
                    max: Duration::from_millis(3),
                },
                loss: 0.02,
                duplicate: 0.01,
                reorder: 0.05,
                reorder_window: Duration::from_millis(10),
                corrupt: 0.001,
                calm_after: None,
            },
            ..FaultPlan::default()
        };
        let id = |i: usize| NodeId((i % nodes.max(1)) as u64);
        if nodes >= 3 {
            plan.node(id(2)).slow = Some(Delay::Exponential {
                min: Duration::ZERO,
                mean: Duration::from_millis(20),
            });
            plan.node(id(2)).omission_windows.push(OmissionWindow {
                from: horizon / 5,
                until: horizon / 5 + horizon / 20,
                kind: Omission::Send,
            });
        }
        if nodes >= 4 {
            plan.node(id(3)).value_corruption = 0.01;
            plan.node(id(3)).repeat_transition = 0.01;
            plan.node(id(3)).omission_windows.push(OmissionWindow {
                from: horizon * 3 / 5,
                until: horizon * 3 / 5 + horizon / 20,
                kind: Omission::Receive,
            });
        }
        if nodes >= 3 {
            let (a, b): (Vec<_>, Vec<_>) = (0..nodes).map(id).partition(|n| n.0 % 2 == 0);
            plan.partition(vec![a, b], horizon * 2 / 5, horizon / 2);
        }
        plan.random_crashes = Some(RandomCrashes {
            mean_interval: horizon / 6,
            downtime: Some(Delay::Uniform {
                min: Duration::from_millis(50),
                max: Duration::from_millis(500),
            }),
            max_down: 1,
            spare: vec![id(0), id(1)],
        });
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_plan_injects_nothing_and_mixed_plan_injects_everything_but_byzantine() {
        assert!(FaultPlan::none().failure_models().is_empty());
        let models = FaultPlan::mixed(5, Duration::from_secs(10)).failure_models();
        for m in FailureModel::ALL {
            assert_eq!(models.contains(&m), m != FailureModel::Arbitrary, "{m}");
        }
    }

    #[test]
    fn a_skewed_clock_is_a_timing_failure_and_a_true_one_is_none() {
        let mut plan = FaultPlan::none();
        plan.node(NodeId(1)).clock = Some(ClockFault::default());
        assert!(plan.failure_models().is_empty());
        plan.node(NodeId(1)).clock = Some(ClockFault::behind(Duration::from_nanos(1)));
        assert_eq!(plan.failure_models(), [FailureModel::Timing]);
    }

    #[test]
    fn clock_readings_and_deadlines_are_inverse() {
        let clocks = [
            ClockFault::default(),
            ClockFault::ahead(Duration::from_millis(3)),
            ClockFault::behind(Duration::from_secs(2)).with_drift(0.5),
            ClockFault::drifting(-0.25),
            ClockFault::drifting(-0.999),
            ClockFault::drifting(1e-6),
            ClockFault::drifting(999.0),
        ];
        let mut rng = SimRng::new(9);
        for c in clocks {
            for t in (0..2000).map(|_| rng.below(10_000_000_000)) {
                let t = Duration::from_nanos(t);
                let local = c.local_nanos(t);
                // The deadline `local` is first reached at or before `t`...
                let due = c.true_time(local);
                assert!(due <= t && c.local_nanos(due) >= local, "{c:?} {t:?}");
                // ...and not a nanosecond earlier.
                if let Some(before) = due.checked_sub(Duration::from_nanos(1)) {
                    assert!(c.local_nanos(before) < local, "{c:?} {t:?}");
                }
            }
            // Monotonic: later true times never read earlier.
            let ts = [0u64, 1, 2, 3, 1_000, 1_001, 10_000_000_000];
            for w in ts.windows(2) {
                let (a, b) = (Duration::from_nanos(w[0]), Duration::from_nanos(w[1]));
                assert!(c.local_nanos(a) <= c.local_nanos(b), "{c:?}");
            }
            // A deadline before the clock's start is due at once.
            assert_eq!(
                c.true_time(c.local_nanos(Duration::ZERO) - 5),
                Duration::ZERO
            );
        }
    }

    #[test]
    fn absurd_drifts_are_clamped() {
        assert_eq!(
            ClockFault::drifting(-1.0).drift_ppb,
            ClockFault::MIN_DRIFT_PPB
        );
        assert_eq!(
            ClockFault::drifting(-7.0).drift_ppb,
            ClockFault::MIN_DRIFT_PPB
        );
        assert_eq!(
            ClockFault::drifting(1e12).drift_ppb,
            ClockFault::MAX_DRIFT_PPB
        );
        assert_eq!(ClockFault::drifting(f64::NAN).drift_ppb, 0);
        assert_eq!(ClockFault::drifting(0.5).rho(), 0.5);
        // Set by hand past the bound, the field is still read as the bound.
        let stopped = ClockFault {
            offset_nanos: 0,
            drift_ppb: -2_000_000_000,
        };
        assert_eq!(stopped.rho(), -0.999);
        let s = Duration::from_secs(1);
        assert_eq!(stopped.local_nanos(s), 1_000_000);
        assert_eq!(stopped.true_time(1_000_000), s);
    }

    #[test]
    fn delays_stay_in_their_bounds() {
        let mut rng = SimRng::new(3);
        let u = Delay::Uniform {
            min: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let e = Delay::Exponential {
            min: Duration::from_millis(1),
            mean: Duration::from_millis(10),
        };
        let mut above = 0;
        for _ in 0..1000 {
            let d = u.sample(&mut rng);
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_millis(2));
            let d = e.sample(&mut rng);
            assert!(d >= Duration::from_millis(1));
            if d > Duration::from_millis(31) {
                above += 1;
            }
        }
        // P(extra > 3 means) = e^-3 ≈ 5%: the tail is really there.
        assert!((20..90).contains(&above), "{above}");
        assert!(e.is_unbounded() && !u.is_unbounded());
    }
}

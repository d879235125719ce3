//! Per-node clocks: every `now` a core sees is its own node's clock, and its
//! timers fire when that clock reaches their deadline. A tiny probe protocol
//! reports each `now` it is handed, so the tests can compare it with what
//! the clock should read, computed here independently of the simulator.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::ms;
use ft_core::{
    Counters, DecodeError, NodeId, Outbox, Output, PersistToken, Protocol, Record, Recover,
    RecoveryContext, RecoveryError, Wire,
};
use ft_sim::{ClockFault, FaultPlan, Sim, SimConfig, World};

/// Which handler a probe was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saw {
    Start,
    Timer(u32),
    Message,
    Input,
    Persisted,
}

/// The periodic timer.
const TICK: u32 = 1;
/// A timer set in the past (on input).
const LATE: u32 = 2;

/// The one record a probe persists.
struct Started;

impl Wire for Started {
    fn encode(&self, _: &mut BytesMut) {}
    fn decode(_: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Started)
    }
}

impl Record for Started {
    const VERSION: u8 = 1;
}

/// Every `period` of its own clock a probe says hello to every node; it
/// persists one record at start, and on input sets a timer 1 ms in its past.
/// It reports every `now` it is handed.
struct Probe {
    me: NodeId,
    nodes: u64,
    period: Duration,
    out: Outbox<Probe>,
}

impl Probe {
    fn saw(&mut self, saw: Saw, now: Instant) {
        self.out.event((saw, now));
    }
}

impl Protocol for Probe {
    type Message = u64;
    type Input = ();
    type Event = (Saw, Instant);
    type Timer = u32;

    fn handle_message(&mut self, now: Instant, _from: NodeId, _msg: u64) {
        self.saw(Saw::Message, now);
    }

    fn handle_input(&mut self, now: Instant, _input: ()) {
        self.saw(Saw::Input, now);
        self.out.set_timer(LATE, now - ms(1));
    }

    fn handle_timer(&mut self, now: Instant, timer: u32) {
        self.saw(Saw::Timer(timer), now);
        if timer == TICK {
            for to in (0..self.nodes).map(NodeId).filter(|&n| n != self.me) {
                self.out.send(to, 0);
            }
            self.out.set_timer(TICK, now + self.period);
        }
    }

    fn handle_persisted(&mut self, now: Instant, _token: PersistToken) {
        self.saw(Saw::Persisted, now);
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl Recover for Probe {
    type Config = (u64, Duration);

    fn recover(
        &(nodes, period): &(u64, Duration),
        ctx: RecoveryContext,
    ) -> Result<Self, RecoveryError> {
        ctx.read::<Started>()?;
        let mut p = Probe {
            me: ctx.node,
            nodes,
            period,
            out: Outbox::recovered(&ctx),
        };
        p.saw(Saw::Start, ctx.now);
        p.out.persist(&Started);
        p.out.set_timer(TICK, ctx.now + period);
        Ok(p)
    }
}

const PERIOD: Duration = Duration::from_millis(10);

fn probes(seed: u64, nodes: u64, plan: FaultPlan) -> Sim<Probe> {
    Sim::new(SimConfig::new(seed, nodes as usize), (nodes, PERIOD), plan)
}

/// What a clock reads at true time `at`, computed from the definition:
/// `offset + ⌊at × (10⁹ + ppb) / 10⁹⌋` nanoseconds after the true start.
fn reading(w: &World<Probe>, clock: ClockFault, at: Duration) -> Instant {
    let start = w.instant() - w.now();
    let elapsed = at.as_nanos() as i128 * (1_000_000_000 + clock.drift_ppb as i128) / 1_000_000_000;
    let local = clock.offset_nanos as i128 + elapsed;
    if local >= 0 {
        start + Duration::from_nanos(local as u64)
    } else {
        start - Duration::from_nanos(local.unsigned_abs() as u64)
    }
}

/// Per node, every `(saw, true time, now handed)` in order.
fn seen(w: &World<Probe>) -> BTreeMap<u64, Vec<(Saw, Duration, Instant)>> {
    let mut by_node: BTreeMap<u64, Vec<_>> = BTreeMap::new();
    for e in w.events() {
        let (saw, now) = e.event;
        by_node.entry(e.node.0).or_default().push((saw, e.at, now));
    }
    by_node
}

/// Checks that every `now` node `n` was handed is its clock's reading, that
/// its readings never go backwards, and that the simulator reports the same.
fn assert_readings(w: &World<Probe>, n: u64, clock: ClockFault) {
    let seen = seen(w);
    let events = &seen[&n];
    assert!(events.len() > 100, "n{n}: {} events", events.len());
    for (saw, at, now) in events {
        assert_eq!(*now, reading(w, clock, *at), "n{n} {saw:?} at {at:?}");
        assert_eq!(*now, w.local_instant_at(NodeId(n), *at));
    }
    assert!(
        events.windows(2).all(|p| p[0].2 <= p[1].2),
        "n{n} went back"
    );
    assert_eq!(w.local_instant(NodeId(n)), reading(w, clock, w.now()));
}

/// When node `n`'s periodic timer fired: true time and the `now` handed.
fn ticks(w: &World<Probe>, n: u64) -> Vec<(Duration, Instant)> {
    seen(w)[&n]
        .iter()
        .filter(|(saw, ..)| *saw == Saw::Timer(TICK))
        .map(|&(_, at, now)| (at, now))
        .collect()
}

#[test]
fn an_offset_shifts_every_now_and_leaves_timer_durations_alone() {
    let ahead = ClockFault::ahead(ms(7));
    // Further behind than the run is long: the node's clock reads before
    // the true start throughout.
    let behind = ClockFault::behind(Duration::from_millis(1500));
    let mut plan = FaultPlan::none();
    plan.node(NodeId(1)).clock = Some(ahead);
    plan.node(NodeId(2)).clock = Some(behind);
    let mut s = probes(1, 3, plan);
    for n in 0..3 {
        s.input(ms(500), NodeId(n), ());
    }
    s.run_until(ms(1000)).unwrap();
    let w = s.world();
    assert_eq!(w.stats().skewed_clocks, 2);
    assert!(w.stats().skewed_timers > 0 && w.stats().timers_fired > w.stats().skewed_timers);
    assert_readings(w, 0, ClockFault::default());
    assert_readings(w, 1, ahead);
    assert_readings(w, 2, behind);
    let start = w.instant() - w.now();
    let first = |n: u64| seen(w)[&n][0];
    assert_eq!(first(0), (Saw::Start, ms(0), start));
    assert_eq!(first(1), (Saw::Start, ms(0), start + ms(7)));
    assert_eq!(first(2), (Saw::Start, ms(0), start - ms(1500)));

    for n in 0..3 {
        // Every node's timer fires every 10 ms of true time: an offset does
        // not change durations.
        let t = ticks(w, n);
        assert_eq!(t.len(), 100, "n{n}");
        assert!(t.windows(2).all(|p| p[1].0 - p[0].0 == PERIOD), "n{n}");
        // A deadline already in the past fires at once, not in the past.
        let late: Vec<_> = seen(w)[&n]
            .iter()
            .filter(|(saw, ..)| *saw == Saw::Timer(LATE))
            .map(|&(_, at, _)| at)
            .collect();
        assert_eq!(late, [ms(500)], "n{n}");
    }
}

#[test]
fn a_drifting_clock_stretches_or_shrinks_every_timer() {
    let fast = ClockFault::drifting(0.5);
    let slow = ClockFault::drifting(-0.25);
    let both = ClockFault::behind(ms(3)).with_drift(0.001);
    let mut plan = FaultPlan::none();
    plan.node(NodeId(1)).clock = Some(fast);
    plan.node(NodeId(2)).clock = Some(slow);
    plan.node(NodeId(3)).clock = Some(both);
    let mut s = probes(2, 4, plan);
    // One true second, and a little more: a core re-arms from the `now` it
    // was handed, which may be a nanosecond past the deadline.
    s.run_until(ms(1001)).unwrap();
    let w = s.world();
    assert_eq!(w.stats().skewed_clocks, 3);
    let ns = Duration::from_nanos(1);
    for (n, clock) in [(0, ClockFault::default()), (1, fast), (2, slow), (3, both)] {
        assert_readings(w, n, clock);
        let rate = 1_000_000_000 + clock.drift_ppb as i128;
        let exact = PERIOD.as_nanos() as i128 * 1_000_000_000;
        for p in ticks(w, n).windows(2) {
            let ((t0, now0), (t1, _)) = (p[0], p[1]);
            // The timer fired at the first nanosecond its clock read the
            // deadline...
            let deadline = now0 + PERIOD;
            assert!(reading(w, clock, t1) >= deadline, "n{n} early at {t1:?}");
            assert!(reading(w, clock, t1 - ns) < deadline, "n{n} late at {t1:?}");
            // ...so local duration D lasted true D / (1 + rho), give or take
            // the rounding of readings to whole nanoseconds.
            let gap = (t1 - t0).as_nanos() as i128;
            assert!((gap * rate - exact).abs() <= 2 * rate, "n{n}: gap {gap} ns");
        }
    }
    // In one true second: 100 ticks at true speed, 150 on the fast clock,
    // 75 on the slow one.
    let counts: Vec<usize> = (0..4).map(|n| ticks(w, n).len()).collect();
    assert_eq!(counts, [100, 150, 75, 100]);
}

#[test]
fn the_clock_keeps_running_across_a_crash_and_restart() {
    let clock = ClockFault::ahead(ms(40)).with_drift(0.2);
    let mut plan = FaultPlan::none();
    plan.node(NodeId(1)).clock = Some(clock);
    plan.crash(NodeId(1), ms(300), Some(ms(100)));
    let mut s = probes(3, 2, plan);
    s.run_until(ms(1000)).unwrap();
    let w = s.world();
    assert_eq!(w.stats().restarts, 1);
    assert_readings(w, 1, clock);
    let starts: Vec<Instant> = seen(w)[&1]
        .iter()
        .filter(|(saw, ..)| *saw == Saw::Start)
        .map(|&(.., now)| now)
        .collect();
    // Started at 40 ms on its clock; restarted at 40 + 400 × 1.2 = 520 ms.
    let start = w.instant() - w.now();
    assert_eq!(starts, [start + ms(40), start + ms(520)]);
}

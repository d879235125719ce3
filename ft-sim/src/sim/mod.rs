//! The simulator: N nodes of one [`Protocol`], one event queue, virtual time.
//!
//! The queue runs on true (virtual) time; each core sees its own node's
//! clock (see [`ClockFault`](crate::plan::ClockFault)), converted by
//! [`World`]: readings in `clock_at`, timer deadlines in `timer_due`.

mod network;

use network::corrupt_payload;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ft_core::{
    FrameCodec, Incarnation, Lsn, NodeId, Output, PersistToken, Protocol, Recover, Wire, life,
};
use ft_storage::MemLog;

use crate::adversary::{Adversary, AdversaryCtx, BuiltIn, Forged};
use crate::plan::{Delay, FaultEvent, FaultPlan};
use crate::report::{Failure, RunReport};
use crate::rng::SimRng;
use crate::stats::Stats;
use crate::trace::{Trace, TraceEntry, TraceKind};
use crate::world::{Node, Observed, World};

/// How a run is set up (apart from its faults).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: the whole run follows from it and the plan.
    pub seed: u64,
    /// Number of nodes; they are `NodeId(0)..NodeId(nodes)`.
    pub nodes: usize,
    /// Time from a persist request until the record is durable.
    pub disk_latency: Delay,
    /// Steps kept in full for failure reports.
    pub trace_tail: usize,
    /// Keep every step in full (for demos and debugging; costs memory).
    pub record_trace: bool,
    /// Keep every event the cores emit in [`World::events`].
    pub record_events: bool,
    /// The largest frame payload.
    pub max_payload: usize,
}

impl SimConfig {
    /// `nodes` nodes, the given seed, 1 ms disk, a 32-step trace tail,
    /// events recorded.
    pub fn new(seed: u64, nodes: usize) -> Self {
        SimConfig {
            seed,
            nodes,
            disk_latency: Delay::Fixed(Duration::from_millis(1)),
            trace_tail: 32,
            record_trace: false,
            record_events: true,
            max_payload: ft_core::frame::DEFAULT_MAX_PAYLOAD,
        }
    }
}

type Check<P> = Box<dyn FnMut(&World<P>) -> Result<(), String>>;

struct Invariant<P: Protocol> {
    name: String,
    check: Check<P>,
}

enum Ev<P: Protocol> {
    Deliver {
        from: usize,
        to: usize,
        frame: Bytes,
        link_seq: u64,
    },
    Timer {
        node: usize,
        timer: P::Timer,
        generation: u64,
    },
    Persisted {
        node: usize,
        incarnation: Incarnation,
        token: PersistToken,
        lsn: Lsn,
    },
    Input {
        node: usize,
        input: P::Input,
    },
    Fault(FaultEvent),
    RandomCrash,
    AdversaryTick,
}

struct Scheduled<P: Protocol> {
    at: Duration,
    seq: u64,
    ev: Ev<P>,
}

// Min-heap on (at, seq): equal times resolve in scheduling order, which is
// itself deterministic, so the whole run is.
impl<P: Protocol> PartialEq for Scheduled<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<P: Protocol> Eq for Scheduled<P> {}
impl<P: Protocol> PartialOrd for Scheduled<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P: Protocol> Ord for Scheduled<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Runs N nodes of a [`Protocol`] deterministically under a [`FaultPlan`].
///
/// Virtual time jumps from event to event; equal times are resolved in the
/// order events were scheduled. All randomness (the network's, the faults',
/// and each core's seed) comes from one [`SimRng`] seeded from
/// [`SimConfig::seed`], so a seed and a plan determine the run.
///
/// After every step each registered [invariant](Sim::invariant) is checked;
/// the first violation stops the run with a [`Failure`] naming the seed.
pub struct Sim<P: Recover> {
    config: SimConfig,
    proto: P::Config,
    plan: FaultPlan,
    codec: FrameCodec,
    rng: SimRng,
    world: World<P>,
    queue: BinaryHeap<Scheduled<P>>,
    seq: u64,
    timer_generation: u64,
    partition: Option<Vec<Option<usize>>>,
    /// Why the run can no longer go on (a node that could not recover),
    /// reported as a failure at the next check.
    broken: Option<String>,
    /// One-way partitions in force: (senders, receivers) as masks by node
    /// index; a message from a sender to a receiver is lost.
    one_way: Vec<(Vec<bool>, Vec<bool>)>,
    link_sent: Vec<u64>,
    link_delivered: Vec<u64>,
    invariants: Vec<Invariant<P>>,
    trace: Trace<P::Timer>,
    forged: Vec<(NodeId, Forged<P::Message>)>,
    /// The caller's model of the links, if set: see
    /// [`set_link_model`](Sim::set_link_model).
    link_model: Option<LinkModel>,
}

/// A caller's model of the links: for a frame sent at a (virtual) time
/// from one node to another, `None` to lose it or `Some(extra)` to deliver
/// it after `extra` on top of the plan's delays. See
/// [`Sim::set_link_model`].
pub type LinkModel = Box<dyn FnMut(Duration, NodeId, NodeId, &[u8]) -> Option<Duration>>;

impl<P> Sim<P>
where
    P: Recover + 'static,
{
    /// Sets up a run and starts every node at time zero with
    /// [`Incarnation::FIRST`] and empty storage.
    pub fn new(config: SimConfig, proto: P::Config, plan: FaultPlan) -> Self {
        let n = config.nodes;
        let ids: Vec<NodeId> = (0..n as u64).map(NodeId).collect();
        let nodes: Vec<Node<P>> = ids
            .iter()
            .map(|id| {
                let mut faults = plan.nodes.get(id).cloned().unwrap_or_default();
                // A clock that keeps true time is no fault: such a node takes
                // the same path as one without a clock, and is not counted.
                faults.clock = faults.clock.filter(|c| c.is_skewed());
                let adversary = faults
                    .byzantine
                    .map(|b| Box::new(BuiltIn(b)) as Box<dyn Adversary<P::Message>>);
                Node {
                    core: None,
                    incarnation: Incarnation::FIRST,
                    disk: MemLog::new(),
                    timers: BTreeMap::new(),
                    lsns: std::collections::VecDeque::new(),
                    last_persist_at: Duration::ZERO,
                    faults,
                    adversary,
                }
            })
            .collect();
        // `Instant` cannot go below the moment the run is set up, so true
        // time starts as far after it as the furthest clock reads behind:
        // every reading of that clock is then representable. Without such a
        // clock the shift is zero and nothing changes.
        let behind = nodes
            .iter()
            .filter_map(|n| n.faults.clock)
            .map(|c| c.offset_nanos.min(0).unsigned_abs())
            .max()
            .unwrap_or(0);
        let base = Instant::now()
            .checked_add(Duration::from_nanos(behind))
            .expect("a clock offset this far behind does not fit in an Instant");
        let skewed_clocks = nodes.iter().filter(|n| n.faults.clock.is_some()).count() as u64;
        let mut sim = Sim {
            codec: FrameCodec::new(config.max_payload),
            rng: SimRng::new(config.seed),
            world: World {
                base,
                now: Duration::ZERO,
                ids,
                nodes,
                events: Vec::new(),
                stats: Stats {
                    skewed_clocks,
                    ..Stats::default()
                },
            },
            queue: BinaryHeap::new(),
            seq: 0,
            timer_generation: 0,
            partition: None,
            broken: None,
            one_way: Vec::new(),
            link_sent: vec![0; n * n],
            link_delivered: vec![0; n * n],
            invariants: Vec::new(),
            trace: Trace::new(config.trace_tail, config.record_trace),
            forged: Vec::new(),
            link_model: None,
            config,
            proto,
            plan,
        };
        for (at, ev) in sim.plan.events.clone() {
            sim.schedule(at, Ev::Fault(ev));
        }
        if let Some(rc) = sim.plan.random_crashes.clone() {
            let at = Delay::Exponential {
                min: Duration::ZERO,
                mean: rc.mean_interval,
            }
            .sample(&mut sim.rng);
            sim.schedule(at, Ev::RandomCrash);
        }
        if let Some(t) = sim.plan.adversary_tick {
            sim.schedule(t, Ev::AdversaryTick);
        }
        for i in 0..n {
            sim.start(i, None);
        }
        sim
    }

    /// Adds an invariant, checked after every step from now on.
    pub fn invariant(
        &mut self,
        name: impl Into<String>,
        check: impl FnMut(&World<P>) -> Result<(), String> + 'static,
    ) -> &mut Self {
        self.invariants.push(Invariant {
            name: name.into(),
            check: Box::new(check),
        });
        self
    }

    /// Sets a model of the links, for topologies and losses the plan's
    /// independent probabilities cannot draw: the model sees every copy
    /// (sender, receiver, frame bytes) after partitions and before the
    /// plan's own loss, with the virtual time it is sent at, and either
    /// loses it (`None`, counted in
    /// [`Stats::lost`] and [`Stats::model_lost`]) or adds a delay.
    ///
    /// All copies of one multicast carry the same frame and time, so a
    /// model that decides by a hash of both loses them together: loss correlated
    /// along a tree, say, where a lost packet on an inner link is lost to
    /// its whole subtree. The model must be deterministic (a function of
    /// its arguments and its own seeded state) for a seed to reproduce its
    /// run. From the plan's `calm_after` on, its losses end too (its delays
    /// stay).
    pub fn set_link_model(
        &mut self,
        model: impl FnMut(Duration, NodeId, NodeId, &[u8]) -> Option<Duration> + 'static,
    ) {
        self.link_model = Some(Box::new(model));
    }

    /// Makes `node` Byzantine with a strategy of the caller's.
    pub fn set_adversary(&mut self, node: NodeId, adversary: impl Adversary<P::Message> + 'static) {
        if let Some(n) = self.world.nodes.get_mut(node.0 as usize) {
            n.adversary = Some(Box::new(adversary));
        }
    }

    /// Hands `input` to `node`'s core at virtual time `at` (dropped, and
    /// counted, if the node is down then).
    pub fn input(&mut self, at: Duration, node: NodeId, input: P::Input) {
        if (node.0 as usize) < self.world.nodes.len() {
            self.schedule(
                at.max(self.world.now),
                Ev::Input {
                    node: node.0 as usize,
                    input,
                },
            );
        }
    }

    /// The state of the run.
    pub fn world(&self) -> &World<P> {
        &self.world
    }

    /// The counters so far.
    pub fn stats(&self) -> &Stats {
        &self.world.stats
    }

    /// Virtual time since the start of the run.
    pub fn now(&self) -> Duration {
        self.world.now
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.config.seed
    }

    /// The plan.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// The digest of the trace so far.
    pub fn digest(&self) -> u64 {
        self.trace.digest()
    }

    /// Every step so far, readable (only with [`SimConfig::record_trace`]).
    pub fn trace(&self) -> Option<Vec<String>> {
        self.trace
            .full()
            .map(|t| t.iter().map(|e| self.describe(e)).collect())
    }

    /// Runs every event up to and including virtual time `until`, then sets
    /// the clock to `until`.
    pub fn run_until(&mut self, until: Duration) -> Result<RunReport, Box<Failure>> {
        while self.queue.peek().is_some_and(|s| s.at <= until) {
            self.step()?;
        }
        self.world.now = self.world.now.max(until);
        Ok(self.report())
    }

    /// Runs for `d` more virtual time.
    pub fn run_for(&mut self, d: Duration) -> Result<RunReport, Box<Failure>> {
        self.run_until(self.world.now + d)
    }

    /// Takes one event off the queue and checks every invariant; returns
    /// `Ok(false)` when nothing is left to do.
    pub fn step(&mut self) -> Result<bool, Box<Failure>> {
        let Some(Scheduled { at, ev, .. }) = self.queue.pop() else {
            return Ok(false);
        };
        self.world.now = at;
        self.world.stats.steps += 1;
        self.dispatch(ev);
        self.check()?;
        Ok(true)
    }

    /// What the run looks like now.
    pub fn report(&self) -> RunReport {
        RunReport {
            seed: self.config.seed,
            now: self.world.now,
            stats: self.world.stats,
            digest: self.trace.digest(),
        }
    }

    fn check(&mut self) -> Result<(), Box<Failure>> {
        if let Some(message) = self.broken.take() {
            return Err(Box::new(self.failure("recovery".into(), message)));
        }
        for inv in &mut self.invariants {
            self.world.stats.invariant_checks += 1;
            if let Err(message) = (inv.check)(&self.world) {
                let name = inv.name.clone();
                return Err(Box::new(self.failure(name, message)));
            }
        }
        Ok(())
    }

    fn failure(&self, invariant: String, message: String) -> Failure {
        Failure {
            seed: self.config.seed,
            invariant,
            message,
            at: self.world.now,
            step: self.world.stats.steps,
            plan: format!("{:?}", self.plan),
            trace: self.trace.tail().map(|e| self.describe(e)).collect(),
            digest: self.trace.digest(),
        }
    }

    fn describe(&self, e: &TraceEntry<P::Timer>) -> String {
        let msg = |frame: &Bytes| match self
            .codec
            .decode_payload(frame.clone())
            .and_then(P::Message::from_bytes)
        {
            Ok(m) => format!("{m:?}"),
            Err(err) => format!("<undecodable: {err}>"),
        };
        let what = match &e.kind {
            TraceKind::Send { from, to, frame } => format!("{from} -> {to} send {}", msg(frame)),
            TraceKind::Deliver { from, to, frame } => {
                format!("{from} -> {to} deliver {}", msg(frame))
            }
            TraceKind::Drop { from, to, why } => format!("{from} -> {to} dropped ({why})"),
            TraceKind::Timer { node, timer } => format!("{node} timer {timer:?}"),
            TraceKind::Persisted { node } => format!("{node} persisted"),
            TraceKind::Input { node } => format!("{node} input"),
            TraceKind::Event { node, index } => {
                match index.and_then(|i| self.world.events.get(i)) {
                    Some(o) => format!("{node} event {:?}", o.event),
                    None => format!("{node} event"),
                }
            }
            TraceKind::Crash(n) => format!("{n} CRASH"),
            TraceKind::Restart(n, i) => format!("{n} RESTART as incarnation {i}"),
            TraceKind::Partition => "PARTITION".to_string(),
            TraceKind::Heal => "HEAL".to_string(),
            TraceKind::OneWay => "ONE-WAY PARTITION".to_string(),
        };
        format!("{:>12?}  {what}", e.at)
    }

    fn schedule(&mut self, at: Duration, ev: Ev<P>) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn record(&mut self, kind: TraceKind<P::Timer>) {
        self.trace.record(self.world.now, kind);
    }

    /// Begins the life of node `i` after `last` (`None`: its first), with
    /// the one life cycle every environment uses ([`life::begin`]).
    fn start(&mut self, i: usize, last: Option<Incarnation>) {
        let now = self.world.clock_at(i, self.world.now);
        let id = self.world.ids[i];
        let records = self.world.nodes[i].disk.durable();
        let mut stored = None;
        let rng = &mut self.rng;
        let begun = life::begin::<P>(
            &self.proto,
            id,
            last,
            records,
            now,
            |_| rng.next_u64(),
            |incarnation| {
                stored = Some(incarnation);
                Ok(())
            },
        );
        let node = &mut self.world.nodes[i];
        if let Some(incarnation) = stored {
            node.incarnation = incarnation;
            node.lsns.clear();
            if last.is_some() {
                self.record(TraceKind::Restart(id, incarnation));
            }
        }
        match begun {
            Ok(life) => {
                self.world.nodes[i].core = Some(life.core);
                self.drain(i);
            }
            Err(e) => {
                // The node stays down, and the run fails with the reason at
                // the next check: a core that cannot read its own records
                // is a bug to see, not a node to skip.
                self.broken = Some(format!("{id} could not begin a new life: {e}"));
            }
        }
    }

    fn dispatch(&mut self, ev: Ev<P>) {
        match ev {
            Ev::Deliver {
                from,
                to,
                frame,
                link_seq,
            } => self.deliver(from, to, frame, link_seq),
            Ev::Timer {
                node,
                timer,
                generation,
            } => {
                let n = &mut self.world.nodes[node];
                if n.core.is_none() || n.timers.get(&timer) != Some(&generation) {
                    return; // cancelled, reset, or lost in a crash
                }
                n.timers.remove(&timer);
                self.world.stats.timers_fired += 1;
                if n.faults.clock.is_some() {
                    self.world.stats.skewed_timers += 1;
                }
                let now = self.world.clock_at(node, self.world.now);
                self.record(TraceKind::Timer {
                    node: self.world.ids[node],
                    timer: timer.clone(),
                });
                if let Some(core) = self.world.nodes[node].core.as_mut() {
                    core.handle_timer(now, timer);
                }
                self.drain(node);
            }
            Ev::Persisted {
                node,
                incarnation,
                token,
                lsn,
            } => {
                let n = &mut self.world.nodes[node];
                if n.core.is_none() || n.incarnation != incarnation {
                    // The crash came first: the write was lost with it (and
                    // counted then); its position may belong to a newer write.
                    return;
                }
                n.disk.sync_through(lsn);
                self.world.stats.persisted += 1;
                self.record(TraceKind::Persisted {
                    node: self.world.ids[node],
                });
                let now = self.world.clock_at(node, self.world.now);
                if let Some(core) = self.world.nodes[node].core.as_mut() {
                    core.handle_persisted(now, token);
                }
                self.drain(node);
            }
            Ev::Input { node, input } => {
                let now = self.world.clock_at(node, self.world.now);
                match self.world.nodes[node].core.as_mut() {
                    Some(core) => {
                        self.world.stats.inputs += 1;
                        core.handle_input(now, input);
                        self.record(TraceKind::Input {
                            node: self.world.ids[node],
                        });
                        self.drain(node);
                    }
                    None => self.world.stats.inputs_to_down_node += 1,
                }
            }
            Ev::Fault(f) => self.fault(f),
            Ev::RandomCrash => self.random_crash(),
            Ev::AdversaryTick => {
                for i in 0..self.world.nodes.len() {
                    if self.world.nodes[i].core.is_some() && self.world.nodes[i].adversary.is_some()
                    {
                        self.adversary_turn(i, None);
                    }
                }
                if let Some(t) = self.plan.adversary_tick {
                    let at = self.world.now + t.max(Duration::from_nanos(1));
                    self.schedule(at, Ev::AdversaryTick);
                }
            }
        }
    }

    fn fault(&mut self, f: FaultEvent) {
        match f {
            FaultEvent::Crash(id) => self.crash(id.0 as usize),
            FaultEvent::Restart(id) => {
                let i = id.0 as usize;
                if i < self.world.nodes.len() && self.world.nodes[i].core.is_none() {
                    self.world.stats.restarts += 1;
                    let last = self.world.nodes[i].incarnation;
                    self.start(i, Some(last));
                }
            }
            FaultEvent::Partition(groups) => {
                let mut group_of = vec![None; self.world.nodes.len()];
                for (g, members) in groups.iter().enumerate() {
                    for m in members {
                        if let Some(slot) = group_of.get_mut(m.0 as usize) {
                            *slot = Some(g);
                        }
                    }
                }
                self.partition = Some(group_of);
                self.world.stats.partitions += 1;
                self.record(TraceKind::Partition);
            }
            FaultEvent::OneWay { from, to } => {
                let n = self.world.nodes.len();
                let mask = |ids: &[NodeId]| {
                    let mut m = vec![false; n];
                    for id in ids {
                        if let Some(slot) = m.get_mut(id.0 as usize) {
                            *slot = true;
                        }
                    }
                    m
                };
                self.one_way.push((mask(&from), mask(&to)));
                self.world.stats.one_way_partitions += 1;
                self.record(TraceKind::OneWay);
            }
            FaultEvent::Heal => {
                let one_way = !self.one_way.is_empty();
                self.one_way.clear();
                if self.partition.take().is_some() || one_way {
                    self.world.stats.heals += 1;
                    self.record(TraceKind::Heal);
                }
            }
        }
    }

    fn crash(&mut self, i: usize) {
        let Some(n) = self.world.nodes.get_mut(i) else {
            return;
        };
        if n.core.take().is_some() {
            // Volatile state goes with the core, timers with it, and the
            // disk keeps only what was synced.
            n.timers.clear();
            self.world.stats.persists_lost += n.disk.crash() as u64;
            self.world.stats.crashes += 1;
            self.record(TraceKind::Crash(self.world.ids[i]));
        }
    }

    fn random_crash(&mut self) {
        let Some(rc) = self.plan.random_crashes.clone() else {
            return;
        };
        let down = self.world.nodes.iter().filter(|n| n.core.is_none()).count();
        let candidates: Vec<usize> = (0..self.world.nodes.len())
            .filter(|&i| {
                self.world.nodes[i].core.is_some() && !rc.spare.contains(&self.world.ids[i])
            })
            .collect();
        if down < rc.max_down && !candidates.is_empty() {
            let i = candidates[self.rng.below(candidates.len() as u64) as usize];
            self.crash(i);
            if let Some(d) = rc.downtime {
                let at = self.world.now + d.sample(&mut self.rng);
                self.schedule(at, Ev::Fault(FaultEvent::Restart(self.world.ids[i])));
            }
        }
        let next = Delay::Exponential {
            min: Duration::from_nanos(1),
            mean: rc.mean_interval,
        }
        .sample(&mut self.rng);
        self.schedule(self.world.now + next, Ev::RandomCrash);
    }

    /// Carries out everything node `i`'s core wants done, in order.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.world.nodes[i]
                .core
                .as_mut()
                .and_then(|c| c.poll_output())
            else {
                return;
            };
            match out {
                Output::Send { to, msg } => {
                    if self.world.nodes[i].adversary.is_some() {
                        self.adversary_turn(i, Some((to, msg)));
                    } else {
                        self.send_message(i, to, &msg);
                    }
                }
                Output::Multicast { to, msg } => self.multicast(i, to, msg),
                Output::SetTimer { timer, at } => {
                    // `at` is on the node's clock; the queue runs on true time.
                    let at = self.world.timer_due(i, at);
                    self.timer_generation += 1;
                    let generation = self.timer_generation;
                    self.world.nodes[i].timers.insert(timer.clone(), generation);
                    self.schedule(
                        at,
                        Ev::Timer {
                            node: i,
                            timer,
                            generation,
                        },
                    );
                }
                Output::CancelTimer { timer } => {
                    self.world.nodes[i].timers.remove(&timer);
                }
                Output::Persist { record, token } => {
                    let latency = self.config.disk_latency.sample(&mut self.rng);
                    let n = &mut self.world.nodes[i];
                    // Persists complete in the order they were asked for.
                    let at = (self.world.now + latency).max(n.last_persist_at);
                    n.last_persist_at = at;
                    let incarnation = n.incarnation;
                    let lsn = n.disk.write(record);
                    n.lsns.push_back((token, lsn));
                    self.schedule(
                        at,
                        Ev::Persisted {
                            node: i,
                            incarnation,
                            token,
                            lsn,
                        },
                    );
                }
                Output::Compact { before } => {
                    let n = &mut self.world.nodes[i];
                    let Some(pos) = n.lsns.iter().position(|(t, _)| *t == before) else {
                        continue;
                    };
                    let upto = n.lsns[pos].1;
                    n.lsns.drain(..pos);
                    let before = n.disk.start();
                    if let Ok(after) = n.disk.drop_before(upto) {
                        self.world.stats.compactions += 1;
                        self.world.stats.records_compacted += after.0 - before.0;
                    }
                }
                Output::Event(event) => {
                    self.world.stats.events += 1;
                    let node = self.world.ids[i];
                    let index = if self.config.record_events {
                        self.world.events.push(Observed {
                            at: self.world.now,
                            node,
                            incarnation: self.world.nodes[i].incarnation,
                            event,
                        });
                        Some(self.world.events.len() - 1)
                    } else {
                        None
                    };
                    self.record(TraceKind::Event { node, index });
                }
            }
        }
    }

    /// A Byzantine node's strategy acts, on a send of its core or unprompted.
    fn adversary_turn(&mut self, i: usize, send: Option<(NodeId, P::Message)>) {
        let Some(mut adversary) = self.world.nodes[i].adversary.take() else {
            return;
        };
        let mut out = std::mem::take(&mut self.forged);
        let mut ctx = AdversaryCtx {
            now: self.world.now,
            me: self.world.ids[i],
            nodes: &self.world.ids,
            rng: &mut self.rng,
            out: &mut out,
        };
        match send {
            Some((to, msg)) => {
                self.world.stats.suppressed_by_adversary += 1;
                adversary.on_send(&mut ctx, to, msg);
            }
            None => adversary.on_tick(&mut ctx),
        }
        self.world.nodes[i].adversary = Some(adversary);
        for (to, forged) in out.drain(..) {
            self.world.stats.forged += 1;
            let mut buf = BytesMut::new();
            let framed = match &forged {
                Forged::Message(m) => self.codec.encode(m, &mut buf),
                Forged::Raw(payload) => self.codec.encode_payload(payload, &mut buf),
            };
            if framed.is_ok() {
                self.transmit(i, to, buf.freeze());
            }
        }
        self.forged = out;
    }

    /// A multicast of node `i`: one copy for each distinct node of `to`,
    /// each through the network on its own, as a `Send` to that node would
    /// go (its own loss, duplication, delay, partitions; a copy to `i`
    /// itself too). The message is framed once, as the driver frames it, so
    /// a value failure of the sender changes every copy alike. A Byzantine
    /// node's strategy sees each copy as a send of its core.
    fn multicast(&mut self, i: usize, mut to: Vec<NodeId>, msg: P::Message) {
        self.world.stats.multicasts += 1;
        to.sort_unstable();
        to.dedup();
        if self.world.nodes[i].adversary.is_some() {
            for to in to {
                self.adversary_turn(i, Some((to, msg.clone())));
            }
            return;
        }
        if to.is_empty() {
            return;
        }
        let frame = self.frame_message(i, &msg);
        for to in to {
            self.transmit(i, to, frame.clone());
        }
    }

    fn send_message(&mut self, i: usize, to: NodeId, msg: &P::Message) {
        let frame = self.frame_message(i, msg);
        self.transmit(i, to, frame);
    }

    /// Frames a message of node `i`'s core, applying the node's value
    /// failure.
    fn frame_message(&mut self, i: usize, msg: &P::Message) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        if let Err(e) = self.codec.encode(msg, &mut buf) {
            // A core asked to send more than a frame holds: that is the
            // core's bug, and the simulator says so rather than hide it.
            panic!(
                "{} sent a message the frame codec refuses: {e}",
                self.world.ids[i]
            );
        }
        if self.rng.chance(self.world.nodes[i].faults.value_corruption) {
            self.world.stats.value_corruptions += 1;
            corrupt_payload(&mut buf, &mut self.rng);
        }
        buf.freeze()
    }
}

//! RPC in the simulator: every semantics under loss, duplication,
//! reordering, partitions and crashes of client and server, with its
//! invariant checked after every step; each weaker semantics shown to break
//! the stronger invariant under the same faults; orphans killed in bounded
//! time; hostile input survived.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use ft_core::Protocol;
use ft_core::{Incarnation, NodeId};
use ft_rpc::echo::{Echo, EchoConfig, EchoEvent, EchoInput};
use ft_rpc::rpc::{
    CallId, CancelReason, Executed, OrphanConfig, Reincarnation, RpcConfig, RpcError, RpcEvent,
    Semantics, durable_completions, durable_effects,
};
use ft_sim::{FaultPlan, Sim, SimConfig, World};

const MS: Duration = Duration::from_millis(1);
const SERVER: NodeId = NodeId(0);

fn config(n: usize, orphans: OrphanConfig) -> EchoConfig {
    let mut rpc = RpcConfig::new((0..n as u64).map(NodeId).collect());
    rpc.orphans = orphans;
    EchoConfig {
        rpc,
        service_time: 30 * MS,
        forward: None,
        service_time_of: None,
    }
}

/// Four echo nodes (n0 serves, n1–n3 call) with the default orphan
/// handling, under `plan`.
fn echo_sim(seed: u64, plan: FaultPlan) -> Sim<Echo> {
    Sim::new(
        SimConfig::new(seed, 4),
        config(4, OrphanConfig::default()),
        plan,
    )
}

fn token_of(request: &Bytes) -> u64 {
    u64::from_le_bytes(request[..8].try_into().unwrap())
}

/// Every client calls the server `calls` times, one call every 40 ms.
fn schedule(sim: &mut Sim<Echo>, n: usize, calls: u64, semantics: Semantics, timeout: Duration) {
    for c in 1..n as u64 {
        for j in 0..calls {
            let token = c * 1_000_000 + j;
            sim.input(
                40 * MS * j as u32 + MS * c as u32,
                NodeId(c),
                EchoInput::Call {
                    token,
                    server: SERVER,
                    request: Bytes::copy_from_slice(&token.to_le_bytes()),
                    semantics,
                    timeout,
                },
            );
        }
    }
}

/// What the events say so far, read incrementally.
#[derive(Default)]
struct Ledger {
    seen: usize,
    executions: BTreeMap<u64, u32>,
    answered: BTreeSet<u64>,
    failed: BTreeMap<u64, RpcError>,
}

impl Ledger {
    fn update(&mut self, w: &World<Echo>) {
        for e in &w.events()[self.seen..] {
            let EchoEvent::Rpc(ev) = &e.event;
            match ev {
                RpcEvent::Execute { request, .. } => {
                    *self.executions.entry(token_of(request)).or_default() += 1;
                }
                RpcEvent::Returned { token, result } => match result {
                    Ok(body) => {
                        assert_eq!(token_of(body), *token, "a reply for another call");
                        self.answered.insert(*token);
                    }
                    Err(err) => {
                        self.failed.insert(*token, err.clone());
                    }
                },
                RpcEvent::Cancel { .. } => {}
            }
        }
        self.seen = w.events().len();
    }
}

const AT_MOST_ONCE: &str = "at-most-once: no call executes twice";
const EXACTLY_ONCE: &str =
    "exactly-once: an answered call has exactly one durable completion, none has two";
const AT_LEAST_ONCE: &str = "at-least-once: an answered call executed at least once";

fn at_most_once() -> impl FnMut(&World<Echo>) -> Result<(), String> {
    let mut ledger = Ledger::default();
    move |w| {
        ledger.update(w);
        match ledger.executions.iter().find(|(_, n)| **n > 1) {
            Some((t, n)) => Err(format!("call {t} executed {n} times")),
            None => Ok(()),
        }
    }
}

fn exactly_once() -> impl FnMut(&World<Echo>) -> Result<(), String> {
    let mut ledger = Ledger::default();
    move |w| {
        ledger.update(w);
        let mut durable: BTreeMap<u64, u32> = BTreeMap::new();
        for c in durable_completions(&w.durable_records(SERVER)) {
            let reply = c.reply().expect("echo replies");
            *durable.entry(token_of(reply)).or_default() += 1;
        }
        if let Some((t, n)) = durable.iter().find(|(_, n)| **n > 1) {
            return Err(format!("call {t} has {n} durable completions"));
        }
        if let Some(t) = ledger.answered.iter().find(|t| !durable.contains_key(t)) {
            return Err(format!(
                "call {t} was answered but has no durable completion"
            ));
        }
        // The application's effects, made durable with the completions:
        // each call's applied exactly once.
        let mut effects: BTreeMap<u64, u32> = BTreeMap::new();
        for (_, effect) in durable_effects(&w.durable_records(SERVER)) {
            *effects.entry(token_of(&effect)).or_default() += 1;
        }
        if let Some((t, n)) = effects.iter().find(|(_, n)| **n > 1) {
            return Err(format!("call {t}'s effect is durable {n} times"));
        }
        if let Some(t) = ledger.answered.iter().find(|t| !effects.contains_key(t)) {
            return Err(format!(
                "call {t} was answered but its effect is not durable"
            ));
        }
        Ok(())
    }
}

fn at_least_once() -> impl FnMut(&World<Echo>) -> Result<(), String> {
    let mut ledger = Ledger::default();
    move |w| {
        ledger.update(w);
        match ledger
            .answered
            .iter()
            .find(|t| !ledger.executions.contains_key(t))
        {
            Some(t) => Err(format!("call {t} answered without executing")),
            None => Ok(()),
        }
    }
}

fn lossy_plan() -> FaultPlan {
    let mut plan = FaultPlan::none();
    plan.network.loss = 0.1;
    plan.network.duplicate = 0.05;
    plan.network.reorder = 0.1;
    plan.network.reorder_window = 5 * MS;
    plan
}

fn final_ledger(sim: &Sim<Echo>) -> Ledger {
    let mut l = Ledger::default();
    l.update(sim.world());
    l
}

#[test]
fn at_most_once_never_executes_twice_under_loss_duplication_and_server_crashes() {
    let (mut answered, mut crashed_reported, mut from_records) = (0, 0, 0);
    for seed in 0..40 {
        let mut plan = lossy_plan();
        plan.crash(SERVER, 300 * MS, Some(200 * MS));
        let mut sim = echo_sim(seed, plan);
        sim.invariant(AT_MOST_ONCE, at_most_once());
        sim.invariant(AT_LEAST_ONCE, at_least_once());
        schedule(&mut sim, 4, 20, Semantics::AtMostOnce, 3000 * MS);
        sim.run_until(5000 * MS).unwrap_or_else(|f| panic!("{f}"));
        let stats = *sim.stats();
        assert!(stats.lost > 0 && stats.duplicated > 0 && stats.crashes == 1);
        let l = final_ledger(&sim);
        answered += l.answered.len();
        crashed_reported += l
            .failed
            .values()
            .filter(|e| matches!(e, RpcError::ServerCrashed { .. }))
            .count();
        for (_, core) in sim.world().cores() {
            from_records += core.rpc().server_stats().replies_from_records;
        }
        // Every call ended one way or the other.
        assert_eq!(l.answered.len() + l.failed.len(), 60, "seed {seed}");
    }
    println!(
        "at-most-once, 40 seeds: {answered} answered, {crashed_reported} reported as a server crash, {from_records} duplicates answered from completion records"
    );
    assert!(crashed_reported > 0 && from_records > 0);
}

#[test]
fn exactly_once_answers_across_server_crashes_from_durable_records() {
    let (mut answered, mut restored) = (0, 0);
    for seed in 0..40 {
        let mut plan = lossy_plan();
        plan.crash(SERVER, 300 * MS, Some(200 * MS));
        plan.crash(SERVER, 900 * MS, Some(100 * MS));
        let mut sim = echo_sim(seed, plan);
        sim.invariant(EXACTLY_ONCE, exactly_once());
        sim.invariant(AT_LEAST_ONCE, at_least_once());
        schedule(&mut sim, 4, 20, Semantics::ExactlyOnce, 5000 * MS);
        sim.run_until(6000 * MS).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(sim.stats().crashes, 2);
        let l = final_ledger(&sim);
        // Nothing fails: the server's crashes are masked.
        assert_eq!(l.failed, BTreeMap::new(), "seed {seed}");
        assert_eq!(l.answered.len(), 60, "seed {seed}");
        answered += l.answered.len();
        restored += sim
            .world()
            .core(SERVER)
            .unwrap()
            .rpc()
            .server_stats()
            .records_restored;
    }
    println!(
        "exactly-once, 40 seeds, 2 server crashes each: {answered} answered, all exactly once; {restored} records restored"
    );
    assert!(restored > 0);
}

#[test]
fn at_least_once_answers_everything_and_executes_some_calls_twice() {
    let mut twice = 0;
    for seed in 0..20 {
        let mut sim = echo_sim(seed, lossy_plan());
        sim.invariant(AT_LEAST_ONCE, at_least_once());
        schedule(&mut sim, 4, 20, Semantics::AtLeastOnce, 3000 * MS);
        sim.run_until(4000 * MS).unwrap_or_else(|f| panic!("{f}"));
        let l = final_ledger(&sim);
        assert_eq!(l.answered.len(), 60, "seed {seed}");
        twice += l.executions.values().filter(|n| **n > 1).count();
    }
    println!("at-least-once, 20 seeds: {twice} calls executed more than once");
    assert!(twice > 0);
}

#[test]
fn at_least_once_breaks_the_at_most_once_invariant_under_the_same_faults() {
    let broke = (0..20).any(|seed| {
        let mut sim = echo_sim(seed, lossy_plan());
        sim.invariant(AT_MOST_ONCE, at_most_once());
        schedule(&mut sim, 4, 20, Semantics::AtLeastOnce, 3000 * MS);
        matches!(sim.run_until(4000 * MS), Err(f) if f.invariant == AT_MOST_ONCE)
    });
    assert!(broke);
}

#[test]
fn at_most_once_breaks_the_exactly_once_guarantee_under_the_same_faults() {
    // Same plan as the exactly-once test: at-most-once reports crashes
    // instead of answering, and keeps no durable record of what it answered.
    let mut broke = 0;
    for seed in 0..10 {
        let mut plan = lossy_plan();
        plan.crash(SERVER, 300 * MS, Some(200 * MS));
        plan.crash(SERVER, 900 * MS, Some(100 * MS));
        let mut sim = echo_sim(seed, plan);
        sim.invariant(EXACTLY_ONCE, exactly_once());
        schedule(&mut sim, 4, 20, Semantics::AtMostOnce, 5000 * MS);
        if let Err(f) = sim.run_until(6000 * MS) {
            assert_eq!(f.invariant, EXACTLY_ONCE);
            broke += 1;
        }
    }
    assert!(broke > 0);
}

/// Checks after every step that no orphan (a computation of a client life
/// that has ended) stays running longer than `bound` after that life ended.
fn no_orphan_outlives(bound: Duration) -> impl FnMut(&World<Echo>) -> Result<(), String> {
    // client -> (incarnation seen, when its last life ended)
    let mut ended: BTreeMap<NodeId, (Incarnation, bool, Duration)> = BTreeMap::new();
    move |w| {
        for &n in w.node_ids() {
            let e = ended
                .entry(n)
                .or_insert((w.incarnation(n), true, Duration::ZERO));
            let up = w.is_up(n);
            if e.1 && !up {
                // It crashed now: its life ended.
                *e = (w.incarnation(n), false, w.now());
            } else if !e.1 && up {
                e.1 = true;
                e.0 = w.incarnation(n);
            }
        }
        for (server, core) in w.cores() {
            for id in core.rpc().running_calls() {
                let current = w.incarnation(id.client);
                let alive_life = w.is_up(id.client) && current == id.client_incarnation;
                if alive_life {
                    continue;
                }
                let since = ended.get(&id.client).map_or(Duration::ZERO, |e| e.2);
                if w.now() > since + bound {
                    return Err(format!(
                        "{server} still runs orphan {id:?} {:?} after its client's life ended",
                        w.now() - since
                    ));
                }
            }
        }
        Ok(())
    }
}

fn orphan_run(orphans: OrphanConfig, bound: Duration, seed: u64) -> (Sim<Echo>, Ledger) {
    orphan_run_with(orphans, bound, seed, &[])
}

fn orphan_run_with(
    orphans: OrphanConfig,
    bound: Duration,
    seed: u64,
    more_client_crashes: &[Duration],
) -> (Sim<Echo>, Ledger) {
    let mut plan = FaultPlan::none();
    plan.network.loss = 0.05;
    // The client crashes while its (long) calls run, and comes back.
    plan.crash(NodeId(1), 200 * MS, Some(300 * MS));
    for &at in more_client_crashes {
        plan.crash(NodeId(1), at, Some(300 * MS));
    }
    let mut cfg = config(3, orphans);
    cfg.service_time = 10_000 * MS;
    let mut sim = Sim::new(SimConfig::new(seed, 3), cfg, plan);
    sim.invariant(
        "no orphan outlives its detection bound",
        no_orphan_outlives(bound),
    );
    schedule(&mut sim, 3, 4, Semantics::AtMostOnce, 20_000 * MS);
    sim.run_until(3000 * MS).unwrap_or_else(|f| panic!("{f}"));
    let l = final_ledger(&sim);
    (sim, l)
}

fn cancels(sim: &Sim<Echo>, reason: CancelReason) -> usize {
    sim.world()
        .events()
        .iter()
        .filter(|e| matches!(&e.event, EchoEvent::Rpc(RpcEvent::Cancel { reason: r, .. }) if *r == reason))
        .count()
}

#[test]
fn reincarnation_kills_the_orphans_of_a_restarted_client() {
    for seed in 0..10 {
        // Downtime 300 ms plus three announcements a second apart.
        let (sim, _) = orphan_run(OrphanConfig::default(), 3500 * MS, seed);
        assert!(
            cancels(&sim, CancelReason::Reincarnation) > 0,
            "seed {seed}"
        );
    }
}

#[test]
fn expiration_kills_orphans_whose_quantum_is_not_renewed() {
    for seed in 0..10 {
        let orphans = OrphanConfig {
            reincarnation: Reincarnation::Off,
            quantum: Some(400 * MS),
            extermination: false,
        };
        let (sim, _) = orphan_run(orphans, 500 * MS, seed);
        assert!(cancels(&sim, CancelReason::Expired) > 0, "seed {seed}");
        // The computations of n2, whose client is alive, were renewed.
        assert!(
            sim.world()
                .core(SERVER)
                .unwrap()
                .rpc()
                .running_calls()
                .any(|id| id.client == NodeId(2))
        );
    }
}

#[test]
fn extermination_kills_the_calls_the_restarted_client_logged() {
    for seed in 0..10 {
        let orphans = OrphanConfig {
            reincarnation: Reincarnation::Off,
            quantum: None,
            extermination: true,
        };
        let (sim, _) = orphan_run(orphans, 3500 * MS, seed);
        assert!(cancels(&sim, CancelReason::Exterminated) > 0, "seed {seed}");
        assert!(
            sim.world()
                .core(NodeId(1))
                .unwrap()
                .rpc()
                .client_stats()
                .exterminations_requested
                > 0
        );
    }
}

#[test]
fn gentle_reincarnation_spares_the_calls_the_new_life_claims() {
    let orphans = OrphanConfig {
        reincarnation: Reincarnation::Gentle,
        quantum: None,
        extermination: false,
    };
    // No bound: claimed computations are not orphans in the gentle sense.
    let (sim, _) = orphan_run(orphans, Duration::from_secs(3600), 1);
    let server = sim.world().core(SERVER).unwrap();
    // Calls logged before the crash are claimed and keep running.
    assert!(server
        .rpc()
        .running_calls()
        .any(|id: CallId| id.client == NodeId(1) && id.client_incarnation == Incarnation::FIRST));
    assert_eq!(cancels(&sim, CancelReason::Reincarnation), 0);
    assert_eq!(cancels(&sim, CancelReason::GentleReincarnation), 0);

    // The client restarts twice: its second life claims its own unfinished
    // calls (none), so the first life's computations have no owner left
    // and are killed.
    let (sim, _) = orphan_run_with(orphans, Duration::from_secs(3600), 1, &[1000 * MS]);
    assert!(cancels(&sim, CancelReason::GentleReincarnation) > 0);
    assert!(
        !sim.world()
            .core(SERVER)
            .unwrap()
            .rpc()
            .running_calls()
            .any(|id: CallId| id.client == NodeId(1))
    );
}

#[test]
fn a_server_that_is_down_cannot_be_located_and_a_silent_one_times_out() {
    let mut plan = FaultPlan::none();
    plan.crash(SERVER, Duration::ZERO, None);
    let mut sim = Sim::new(
        SimConfig::new(1, 2),
        config(2, OrphanConfig::default()),
        plan,
    );
    schedule(&mut sim, 2, 1, Semantics::AtMostOnce, 500 * MS);
    sim.run_until(1000 * MS).unwrap();
    let l = final_ledger(&sim);
    assert_eq!(
        l.failed.values().next(),
        Some(&RpcError::CannotLocateServer { server: SERVER })
    );

    // Bound first, then the server crashes for good: the request is
    // retransmitted until the deadline.
    let mut plan = FaultPlan::none();
    plan.crash(SERVER, 100 * MS, None);
    let mut sim = Sim::new(
        SimConfig::new(1, 2),
        config(2, OrphanConfig::default()),
        plan,
    );
    let mut cfg_calls = 0;
    for j in 0..3u64 {
        cfg_calls += 1;
        sim.input(
            60 * MS * j as u32,
            NodeId(1),
            EchoInput::Call {
                token: j,
                server: SERVER,
                request: Bytes::copy_from_slice(&j.to_le_bytes()),
                semantics: Semantics::AtMostOnce,
                timeout: 600 * MS,
            },
        );
    }
    sim.run_until(2000 * MS).unwrap();
    let l = final_ledger(&sim);
    assert_eq!(l.answered.len() + l.failed.len(), cfg_calls);
    assert!(
        l.failed
            .values()
            .any(|e| matches!(e, RpcError::TimedOut { attempts, .. } if *attempts > 1))
    );
}

#[test]
fn runs_are_deterministic() {
    let make = || {
        let mut plan = lossy_plan();
        plan.crash(SERVER, 300 * MS, Some(200 * MS));
        let mut sim = echo_sim(5, plan);
        schedule(&mut sim, 4, 10, Semantics::ExactlyOnce, 3000 * MS);
        sim
    };
    ft_sim::self_check(make, 4000 * MS).unwrap();
}

/// A Byzantine node that floods the server with forged, replayed and
/// malformed messages at every adversary tick.
struct Forger {
    n: u64,
}

impl ft_sim::Adversary<ft_rpc::rpc::RpcMessage> for Forger {
    fn on_send(
        &mut self,
        ctx: &mut ft_sim::AdversaryCtx<'_, ft_rpc::rpc::RpcMessage>,
        to: NodeId,
        msg: ft_rpc::rpc::RpcMessage,
    ) {
        ctx.send(to, msg);
    }

    fn on_tick(&mut self, ctx: &mut ft_sim::AdversaryCtx<'_, ft_rpc::rpc::RpcMessage>) {
        use ft_rpc::rpc::RpcMessage;
        self.n += 1;
        let me = ctx.me;
        let body = Bytes::copy_from_slice(&(9_000_000 + self.n).to_le_bytes());
        let call = |client: NodeId, client_inc: u64, server_inc: u64, seq: u64| RpcMessage::Call {
            id: CallId {
                client,
                client_incarnation: Incarnation(client_inc),
                seq,
            },
            server_incarnation: Incarnation(server_inc),
            semantics: Semantics::AtMostOnce,
            first_incomplete: 0,
            budget_ms: 1000,
            fingerprint: ft_rpc::rpc::fingerprint(Semantics::AtMostOnce, &body),
            body: ft_rpc::rpc::Chunk::whole(body.clone()),
        };
        // In an honest client's name (the channel says who sent it).
        ctx.send(SERVER, call(NodeId(1), 0, 0, self.n));
        // For a life of the server that has not happened.
        ctx.send(SERVER, call(me, 0, 99, self.n));
        // Sequence number zero, and a replay from an older life of its own
        // once it has "restarted" (claims life 5, then life 4).
        ctx.send(SERVER, call(me, 5, 0, 0));
        ctx.send(SERVER, call(me, 5, 0, self.n));
        ctx.send(SERVER, call(me, 4, 0, self.n));
        // Kill and renew requests for someone else's calls go nowhere: the
        // server reads the client from the channel.
        ctx.send(
            SERVER,
            RpcMessage::Exterminate {
                client_incarnation: Incarnation(0),
                seqs: (0..10).collect(),
            },
        );
        // Garbage, correctly framed.
        let raw = ctx.random_payload(80);
        ctx.send_raw(SERVER, raw);
    }
}

#[test]
fn forged_replayed_and_malformed_messages_are_dropped_or_rejected_and_counted() {
    for seed in 0..10 {
        let mut plan = FaultPlan::none();
        plan.network.loss = 0.05;
        plan.adversary_tick = Some(5 * MS);
        let mut sim = echo_sim(seed, plan);
        sim.set_adversary(NodeId(3), Forger { n: 0 });
        sim.invariant(AT_MOST_ONCE, at_most_once());
        // Only the honest clients call.
        for c in 1..3u64 {
            for j in 0..20u64 {
                let token = c * 1_000_000 + j;
                sim.input(
                    40 * MS * j as u32,
                    NodeId(c),
                    EchoInput::Call {
                        token,
                        server: SERVER,
                        request: Bytes::copy_from_slice(&token.to_le_bytes()),
                        semantics: Semantics::AtMostOnce,
                        timeout: 3000 * MS,
                    },
                );
            }
        }
        sim.run_until(3000 * MS).unwrap_or_else(|f| panic!("{f}"));
        let w = sim.world();
        assert!(w.stats().forged > 0 && w.stats().decode_errors > 0);
        let server = w.core(SERVER).unwrap().rpc();
        assert!(
            server.counters().messages_dropped > 0,
            "forged calls dropped"
        );
        assert!(server.server_stats().stale_rejected > 0, "replays rejected");
        let l = final_ledger(&sim);
        // Every honest call answered; only the forger's life-5 calls ran.
        let honest: BTreeSet<u64> = l
            .answered
            .iter()
            .copied()
            .filter(|t| *t < 9_000_000)
            .collect();
        assert_eq!(honest.len(), 40, "seed {seed}");
        // What executed: never a call forged in n1's name, never one for a
        // future life of the server, never a replay from an older life.
        let executed: Vec<CallId> = w
            .events()
            .iter()
            .filter_map(|e| match &e.event {
                EchoEvent::Rpc(RpcEvent::Execute { id, request, .. })
                    if token_of(request) >= 9_000_000 =>
                {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        assert!(
            !executed.is_empty(),
            "seed {seed}: the forger's own calls run"
        );
        for id in executed {
            assert_eq!(
                id.client,
                NodeId(3),
                "seed {seed}: forged in another's name"
            );
            assert_eq!(id.client_incarnation, Incarnation(5), "seed {seed}: {id:?}");
        }
    }
}

#[test]
fn a_deadline_propagates_through_a_nested_call() {
    // n1 calls relay n2 with a 300 ms deadline; n2 makes a nested call to
    // n0, whose handler takes 2 s. The nested call carries the caller's
    // deadline: n0 kills its computation when the deadline passes, the
    // nested call times out then, and nothing runs past it.
    let mut relay = config(3, OrphanConfig::default());
    relay.service_time = 2000 * MS;
    // Every node but n0 relays to n0; n0 echoes, slowly.
    relay.forward = Some(SERVER);
    let mut sim: Sim<Echo> = Sim::new(SimConfig::new(3, 3), relay, FaultPlan::none());
    sim.input(
        Duration::ZERO,
        NodeId(1),
        EchoInput::Call {
            token: 1,
            server: NodeId(2),
            request: Bytes::from_static(b"nested"),
            semantics: Semantics::AtMostOnce,
            timeout: 300 * MS,
        },
    );
    sim.run_until(3000 * MS).unwrap();
    let w = sim.world();
    let mut outer = None;
    let mut killed_at = None;
    for e in w.events() {
        match &e.event {
            EchoEvent::Rpc(RpcEvent::Returned { token: 1, result }) if e.node == NodeId(1) => {
                outer = Some((e.at, result.clone()));
            }
            EchoEvent::Rpc(RpcEvent::Cancel {
                reason: CancelReason::DeadlineExceeded,
                ..
            }) if e.node == SERVER => killed_at = Some(e.at),
            _ => {}
        }
    }
    let killed_at = killed_at.expect("n0 killed the nested computation at the deadline");
    // A budget is measured when the call is sent, so each hop adds its
    // one-way delay (1 ms here, two hops) — not the 2 s the handler wanted.
    assert!(killed_at <= 302 * MS, "{killed_at:?}");
    let (at, result) = outer.expect("the caller got an answer");
    // The caller's own deadline ended it (the relay's answer, a nested
    // timeout, cannot arrive before the deadline either).
    assert!(at <= 301 * MS, "{at:?}");
    assert!(
        matches!(result, Err(RpcError::TimedOut { .. })),
        "{result:?}"
    );
    // Nothing is left running anywhere.
    for (_, core) in w.cores() {
        assert_eq!(core.rpc().running(), 0);
    }
}

/// The long sweep CI runs in release mode: `cargo test --release -p ft-rpc
/// --test rpc -- --ignored`. Every semantics under loss, duplication,
/// reordering, a partition, server crashes and a client crash, each with
/// its invariant (and the orphan bound) after every step, and liveness at
/// the end: with the server reachable for the last seconds of every
/// deadline, every exactly-once and at-least-once call is answered, and
/// every at-most-once call is answered or reports the server's crash.
#[test]
#[ignore]
fn sweep() {
    let started = std::time::Instant::now();
    let mut totals = (0u64, 0u64, 0u64, 0u64);
    for seed in 0..3000 {
        let semantics = [
            Semantics::AtLeastOnce,
            Semantics::AtMostOnce,
            Semantics::ExactlyOnce,
        ][(seed % 3) as usize];
        let mut plan = lossy_plan();
        // The faults end at 1.1 s; every deadline is at least 2.9 s later.
        plan.network.calm_after = Some(1100 * MS);
        plan.crash(SERVER, 250 * MS, Some(150 * MS));
        plan.crash(SERVER, 700 * MS, Some(100 * MS));
        plan.crash(NodeId(2), 400 * MS, Some(200 * MS));
        plan.partition(
            vec![vec![SERVER, NodeId(1)], vec![NodeId(2), NodeId(3)]],
            900 * MS,
            1100 * MS,
        );
        let mut sim = echo_sim(seed, plan);
        match semantics {
            Semantics::AtLeastOnce => sim.invariant(AT_LEAST_ONCE, at_least_once()),
            Semantics::AtMostOnce => sim.invariant(AT_MOST_ONCE, at_most_once()),
            Semantics::ExactlyOnce => sim.invariant(EXACTLY_ONCE, exactly_once()),
        };
        sim.invariant(
            "no orphan outlives its detection bound",
            no_orphan_outlives(3500 * MS),
        );
        schedule(&mut sim, 4, 30, semantics, 4000 * MS);
        let report = sim.run_until(6000 * MS).unwrap_or_else(|f| panic!("{f}"));
        let l = final_ledger(&sim);
        // Liveness: the faults end by 1.1 s and every deadline is at least
        // 2.9 s later, so every call of a client that stayed up is answered
        // (at-most-once may instead report the server's crash).
        for c in 1..4u64 {
            for j in 0..30u64 {
                let start = 40 * MS * j as u32 + MS * c as u32;
                if c == 2 && start < 600 * MS {
                    // Lost with its client's crash at 400 ms (or never made
                    // while it was down).
                    continue;
                }
                let token = c * 1_000_000 + j;
                let ok = l.answered.contains(&token)
                    || (semantics == Semantics::AtMostOnce
                        && matches!(l.failed.get(&token), Some(RpcError::ServerCrashed { .. })));
                assert!(
                    ok,
                    "seed {seed} {semantics:?}: call {token} ended {:?}",
                    l.failed.get(&token)
                );
            }
        }
        totals.0 += l.answered.len() as u64;
        totals.1 += l.failed.len() as u64;
        totals.2 += report.stats.crashes;
        totals.3 += report.stats.invariant_checks;
    }
    println!(
        "rpc sweep: 3000 seeds (1000 per semantics): {} calls answered, {} failed (reported), {} crashes, {} invariant checks, {:.1?}",
        totals.0,
        totals.1,
        totals.2,
        totals.3,
        started.elapsed()
    );
}

/// A client cut off from the server for the first 10 s of 30 s deadlines
/// gets every call answered after the heal: the retry budget, spent during
/// the cut, refills with time, and each call keeps probing meanwhile. With
/// gRPC's bucket alone (refilled only by replies, no probes) every call
/// fails, though the server is reachable for the last 20 s.
#[test]
fn calls_are_answered_after_a_long_cut_off_ends() {
    let run = |old_budget: bool, semantics: Semantics| {
        let mut cfg = config(2, OrphanConfig::default());
        if old_budget {
            cfg.rpc.budget.refill_per_sec = 0.0;
            cfg.rpc.budget.probe_every = None;
        }
        let mut plan = FaultPlan::none();
        plan.partition(
            vec![vec![SERVER], vec![NodeId(1)]],
            Duration::ZERO,
            10_000 * MS,
        );
        let mut sim: Sim<Echo> = Sim::new(SimConfig::new(1, 2), cfg, plan);
        for j in 0..10u64 {
            sim.input(
                MS * (1 + j as u32),
                NodeId(1),
                EchoInput::Call {
                    token: j,
                    server: SERVER,
                    request: Bytes::copy_from_slice(&j.to_le_bytes()),
                    semantics,
                    timeout: 30_000 * MS,
                },
            );
        }
        sim.run_until(31_000 * MS).unwrap();
        let stats = sim.world().core(NodeId(1)).unwrap().rpc().client_stats();
        (final_ledger(&sim), stats, sim.stats().partitions)
    };
    for semantics in [
        Semantics::AtLeastOnce,
        Semantics::AtMostOnce,
        Semantics::ExactlyOnce,
    ] {
        let (l, stats, partitions) = run(false, semantics);
        assert_eq!(partitions, 1);
        assert_eq!(l.answered.len(), 10, "{semantics:?}: {:?}", l.failed);
        assert!(stats.throttled > 0 && stats.probes > 0, "{stats:?}");
        let (old, old_stats, _) = run(true, semantics);
        assert!(
            old.answered.is_empty(),
            "{semantics:?}: gRPC's bucket alone strands them: {old_stats:?}"
        );
    }
}

/// With a lease shorter than a partition, an at-most-once call whose reply
/// was lost in the partition has its record dropped when the lease runs
/// out; the tombstone keeps its retransmission after the heal from running
/// it again (reported as an outcome the client cannot know), and an
/// exactly-once call is still answered from its record.
#[test]
fn a_partition_longer_than_the_lease_never_runs_a_call_twice() {
    let mut tombstoned = 0;
    for seed in 0..20 {
        let mut cfg = config(2, OrphanConfig::default());
        cfg.rpc.lease = 200 * MS;
        let mut plan = FaultPlan::none();
        // The calls arrive and run; the partition comes before the replies.
        plan.partition(vec![vec![SERVER], vec![NodeId(1)]], 10 * MS, 1500 * MS);
        let mut sim: Sim<Echo> = Sim::new(SimConfig::new(seed, 2), cfg, plan);
        sim.invariant(AT_MOST_ONCE, at_most_once());
        for (token, semantics) in [(1u64, Semantics::AtMostOnce), (2, Semantics::ExactlyOnce)] {
            sim.input(
                MS,
                NodeId(1),
                EchoInput::Call {
                    token,
                    server: SERVER,
                    request: Bytes::copy_from_slice(&token.to_le_bytes()),
                    semantics,
                    timeout: 5000 * MS,
                },
            );
        }
        sim.run_until(6000 * MS)
            .unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        let l = final_ledger(&sim);
        let server = sim.world().core(SERVER).unwrap().rpc().server_stats();
        assert!(server.leases_expired >= 1, "seed {seed}: {server:?}");
        assert!(
            l.answered.contains(&2),
            "seed {seed}: exactly-once answered"
        );
        assert_eq!(
            l.failed.get(&1),
            Some(&RpcError::Forgotten {
                executed: Executed::Unknown
            }),
            "seed {seed}"
        );
        tombstoned += server.stale_rejected;
    }
    assert!(tombstoned >= 20);
}

/// Tight record bounds, slow calls overtaken by many fast ones, and a
/// network that duplicates and reorders: the records forgotten over the
/// bound are never run again, and a slow call is never refused or
/// forgotten while it runs.
#[test]
fn small_record_bounds_never_run_a_call_twice_nor_forget_a_running_one() {
    fn slow_if_first(request: &Bytes) -> Duration {
        if request[0] == 0 { 1500 * MS } else { 5 * MS }
    }
    let mut evicted = 0;
    for seed in 0..20 {
        let mut cfg = config(2, OrphanConfig::default());
        cfg.rpc.records_per_client = 3;
        cfg.service_time_of = Some(slow_if_first);
        let mut plan = FaultPlan::none();
        plan.network.duplicate = 0.3;
        plan.network.reorder = 0.3;
        plan.network.reorder_window = 200 * MS;
        plan.network.loss = 0.05;
        let mut sim: Sim<Echo> = Sim::new(SimConfig::new(seed, 2), cfg, plan);
        sim.invariant(AT_MOST_ONCE, at_most_once());
        for j in 0..60u64 {
            // Tokens whose first byte is 0 are slow.
            let token = j * 256 + u64::from(j % 20 != 0);
            sim.input(
                MS * (1 + 10 * j as u32),
                NodeId(1),
                EchoInput::Call {
                    token,
                    server: SERVER,
                    request: Bytes::copy_from_slice(&token.to_le_bytes()),
                    semantics: if j % 2 == 0 {
                        Semantics::AtMostOnce
                    } else {
                        Semantics::ExactlyOnce
                    },
                    timeout: 5000 * MS,
                },
            );
        }
        sim.run_until(6000 * MS)
            .unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        let l = final_ledger(&sim);
        let slow: Vec<u64> = (0..60).filter(|j| j % 20 == 0).map(|j| j * 256).collect();
        for t in &slow {
            assert!(
                l.answered.contains(t),
                "seed {seed}: slow call {t}: {:?}",
                l.failed.get(t)
            );
        }
        evicted += sim
            .world()
            .core(SERVER)
            .unwrap()
            .rpc()
            .server_stats()
            .records_evicted;
    }
    assert!(evicted > 100, "the bound was exercised: {evicted}");
}

/// Expiration rests on clocks: the client renews every `T/3` of *its*
/// clock, the server kills after `T` of *its* clock without a renewal. With
/// the client's clock slow and the server's fast, renewals arrive every
/// `(T/3)/(1+ρc)` of true time while the server gives up after
/// `T/(1+ρs)`: expiration survives one lost renewal while
/// `(1+ρs)/(1+ρc) < 1.5`, and none beyond `3` (less the network delay).
/// Inside the bound (ρ = 0.3 each way: 1.3/0.7 < 3) no live computation is
/// killed and orphans die within `T/(1+ρs)` of the crash plus a renewal
/// interval; outside it (ρ = 0.6: 1.6/0.4 > 3) the server kills
/// computations whose client is alive and renewing. (No loss here: the
/// drift alone is at stake.)
#[test]
fn expiration_holds_under_drift_inside_its_bound_and_kills_live_calls_outside() {
    use ft_sim::ClockFault;
    let quantum = 400 * MS;
    let run = |rho: f64, loss: f64, seed: u64| {
        let mut plan = FaultPlan::none();
        plan.network.loss = loss;
        plan.network.delay = ft_sim::Delay::Uniform {
            min: MS,
            max: 5 * MS,
        };
        // The server's clock runs fast, the clients' slow.
        plan.node(SERVER).clock = Some(ClockFault::drifting(rho));
        plan.node(NodeId(1)).clock = Some(ClockFault::drifting(-rho));
        plan.node(NodeId(2)).clock = Some(ClockFault::drifting(-rho));
        plan.crash(NodeId(1), 200 * MS, Some(300 * MS));
        let mut cfg = config(
            3,
            OrphanConfig {
                reincarnation: Reincarnation::Off,
                quantum: Some(quantum),
                extermination: false,
            },
        );
        cfg.service_time = 10_000 * MS;
        let mut sim = Sim::new(SimConfig::new(seed, 3), cfg, plan);
        // Orphans die within T/(1+ρs) of true time, plus the last renewal
        // interval of the slow client clock, plus delivery.
        let bound =
            quantum.mul_f64(1.0 / (1.0 + rho)) + (quantum / 3).mul_f64(1.0 / (1.0 - rho)) + 50 * MS;
        sim.invariant("no orphan outlives its bound", no_orphan_outlives(bound));
        schedule(&mut sim, 3, 4, Semantics::AtMostOnce, 20_000 * MS);
        sim.run_until(3000 * MS)
            .unwrap_or_else(|f| panic!("rho {rho}: {f}"));
        assert!(sim.stats().skewed_clocks >= 3);
        // Live calls killed: n2 never crashed.
        let live_killed = sim
            .world()
            .events()
            .iter()
            .filter(|e| {
                matches!(&e.event, EchoEvent::Rpc(RpcEvent::Cancel { id, reason: CancelReason::Expired })
                    if id.client == NodeId(2))
            })
            .count();
        (live_killed, cancels(&sim, CancelReason::Expired))
    };
    for seed in 0..10 {
        let (live_killed, expired) = run(0.3, 0.0, seed);
        assert_eq!(live_killed, 0, "seed {seed}: inside the bound");
        assert!(
            expired > 0,
            "seed {seed}: the crashed client's orphans expire"
        );
    }
    let broken: usize = (0..10).map(|seed| run(0.6, 0.0, seed).0).sum();
    assert!(broken > 0, "outside the bound, live calls are killed");
}

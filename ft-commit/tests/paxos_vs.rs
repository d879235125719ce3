//! Paxos Commit in the two situations where the textbook protocols fail,
//! in the simulator:
//!
//! (a) **Where 2PC blocks.** Coordinator n0, participants n1..n3. Every
//! participant votes commit and is READY / Prepared, but no vote reaches
//! n0 (a one-way cut from the participants to it) and n0 crashes for
//! good. 2PC: every participant runs cooperative termination, finds only
//! READY peers, and is told `Event::Blocked` — for ever. Paxos Commit
//! (acceptors n1, n2, n3): the participants' votes are accepted by the
//! acceptors; a participant takes over, runs phase 1, finds every
//! instance Prepared and commits, without n0.
//!
//! (b) **Where 3PC errs.** The partition {n0, n1} | {n2, n3} cuts the
//! network at the moment one participant has moved further than the
//! others (n1 Prepared, n2 and n3 not voted yet). With 3PC each side
//! terminates on its own and the sides can decide differently (shown
//! beside 2PC in another test). Paxos Commit: the side with a majority of
//! acceptors ({n2, n3}) decides, the other ({n0, n1}, one acceptor)
//! decides nothing while cut, and once healed every node holds the same
//! outcome. Two cases: n2 and n3 vote commit after the cut (commit), or
//! never vote (their INIT timeout aborts).

use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use ft_commit::{
    Event, Input, PartState, PaxosCommit, PaxosConfig, RmState, TwoPhase, TwoPhaseConfig, TxId,
    Vote,
};
use ft_core::NodeId;
use ft_sim::{Delay, FaultPlan, NetworkFaults, Sim, SimConfig};

const N0: NodeId = NodeId(0);
const RMS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn tx() -> TxId {
    TxId::new(&b"t"[..]).unwrap()
}

fn paxos_config() -> PaxosConfig {
    PaxosConfig::new(RMS.to_vec())
}

/// A reliable network (1–2 ms), no votes reaching n0, n0 crashed for good
/// at 100 ms (every participant is READY / Prepared by then).
fn blocking_plan() -> FaultPlan {
    let mut plan = FaultPlan {
        network: NetworkFaults {
            delay: Delay::Uniform {
                min: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            ..NetworkFaults::default()
        },
        ..FaultPlan::default()
    };
    plan.one_way(
        RMS.to_vec(),
        vec![N0],
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    plan.crash(N0, Duration::from_millis(100), None);
    plan
}

/// Feeds every `Event::Prepare` a vote of commit, at once.
fn answer<P>(sim: &mut Sim<P>, seen: &mut usize, vote: impl Fn(NodeId) -> Option<Vote>)
where
    P: ft_core::Recover<Event = Event, Input = Input> + 'static,
{
    let now = sim.now();
    let asks: Vec<(NodeId, TxId)> = sim.world().events()[*seen..]
        .iter()
        .filter_map(|o| match &o.event {
            Event::Prepare { tx } => Some((o.node, tx.clone())),
            _ => None,
        })
        .collect();
    *seen = sim.world().events().len();
    for (node, tx) in asks {
        if let Some(vote) = vote(node) {
            sim.input(now, node, Input::Voted { tx, vote });
        }
    }
}

fn run_to<P>(
    sim: &mut Sim<P>,
    seen: &mut usize,
    until: Duration,
    vote: &dyn Fn(NodeId) -> Option<Vote>,
) where
    P: ft_core::Recover<Event = Event, Input = Input> + 'static,
{
    while sim.now() < until {
        match sim.step() {
            Ok(true) => answer(sim, seen, vote),
            Ok(false) => break,
            Err(f) => panic!("{f}"),
        }
    }
}

#[test]
fn where_two_phase_commit_blocks_paxos_commit_decides_without_the_coordinator() {
    // 2PC.
    let mut sim = Sim::<TwoPhase>::new(
        SimConfig::new(1, 4),
        TwoPhaseConfig::default(),
        blocking_plan(),
    );
    sim.input(
        Duration::ZERO,
        N0,
        Input::Begin {
            tx: tx(),
            participants: RMS.to_vec(),
        },
    );
    let mut seen = 0;
    let commit = |_| Some(Vote::Commit);
    run_to(&mut sim, &mut seen, Duration::from_millis(99), &commit);
    for p in RMS {
        let state = sim.world().core(p).unwrap().participant_state(&tx());
        assert_eq!(state, Some(PartState::Ready), "{p} READY before n0 crashes");
    }
    run_to(&mut sim, &mut seen, Duration::from_secs(10), &commit);
    let w = sim.world();
    assert!(!w.is_up(N0));
    let blocked: BTreeSet<NodeId> = w
        .events()
        .iter()
        .filter(|o| matches!(o.event, Event::Blocked { .. }))
        .map(|o| o.node)
        .collect();
    assert_eq!(blocked, RMS.iter().copied().collect(), "2PC: all blocked");
    for p in RMS {
        assert!(
            w.core(p).unwrap().is_blocked(&tx()),
            "{p} still blocked at 10 s"
        );
    }
    assert!(
        !w.events()
            .iter()
            .any(|o| matches!(o.event, Event::Commit { .. } | Event::Abort { .. }))
    );
    let two_pc_dropped = w.stats().one_way_dropped;
    assert!(two_pc_dropped > 0, "the cut to n0 dropped votes");

    // Paxos Commit, the same situation.
    let mut sim = Sim::<PaxosCommit>::new(SimConfig::new(1, 4), paxos_config(), blocking_plan());
    sim.input(
        Duration::ZERO,
        N0,
        Input::Begin {
            tx: tx(),
            participants: RMS.to_vec(),
        },
    );
    let mut seen = 0;
    run_to(&mut sim, &mut seen, Duration::from_millis(99), &commit);
    for p in RMS {
        let state = sim.world().core(p).unwrap().rm_state(&tx());
        assert_eq!(
            state,
            Some(RmState::Prepared),
            "{p} Prepared before n0 crashes"
        );
    }
    run_to(&mut sim, &mut seen, Duration::from_secs(10), &commit);
    let w = sim.world();
    assert!(!w.is_up(N0));
    let committed: BTreeSet<NodeId> = w
        .events()
        .iter()
        .filter(|o| matches!(o.event, Event::Commit { .. }))
        .map(|o| o.node)
        .collect();
    assert_eq!(
        committed,
        RMS.iter().copied().collect(),
        "Paxos Commit: all commit"
    );
    assert!(
        !w.events()
            .iter()
            .any(|o| matches!(o.event, Event::Blocked { .. } | Event::Abort { .. }))
    );
    let rounds: u64 = RMS
        .iter()
        .map(|&p| w.core(p).unwrap().stats().leader_rounds)
        .sum();
    assert!(rounds > 0, "a participant took over");
    assert!(w.stats().one_way_dropped > 0);
    eprintln!(
        "2PC: n1..n3 Blocked for good; Paxos Commit: n1..n3 committed at {:?} with n0 down \
         ({rounds} ballot(s) above 0)",
        w.events()
            .iter()
            .filter(|o| matches!(o.event, Event::Commit { .. }))
            .map(|o| o.at)
            .max()
    );
}

/// Case (b): the partition at the moment n1 is Prepared and n2, n3 have
/// not voted; n2 and n3 then vote `later` (or never). Returns the outcome.
fn partition_when_one_moved_further(later: Option<Vote>) -> Vote {
    let plan = FaultPlan {
        network: NetworkFaults {
            delay: Delay::Uniform {
                min: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            ..NetworkFaults::default()
        },
        ..FaultPlan::default()
    };
    let mut sim = Sim::<PaxosCommit>::new(SimConfig::new(7, 4), paxos_config(), plan);
    let cut = Rc::new(Cell::new(false));
    let c2 = cut.clone();
    let side = |n: NodeId| n.0 < 2;
    sim.set_link_model(move |_, from, to, _| {
        if c2.get() && side(from) != side(to) {
            None
        } else {
            Some(Duration::ZERO)
        }
    });
    sim.input(
        Duration::ZERO,
        N0,
        Input::Begin {
            tx: tx(),
            participants: RMS.to_vec(),
        },
    );
    // n1 votes at once; n2 and n3 only once the network is cut.
    let mut seen = 0;
    let early = |n: NodeId| (n == RMS[0]).then_some(Vote::Commit);
    let mut held: Vec<NodeId> = Vec::new();
    while !cut.get() {
        assert!(sim.step().expect("no invariant"), "ran dry");
        let now = sim.now();
        for o in &sim.world().events()[seen..] {
            if let Event::Prepare { .. } = o.event
                && o.node != RMS[0]
            {
                held.push(o.node);
            }
        }
        answer(&mut sim, &mut seen, early);
        if sim.world().core(RMS[0]).and_then(|c| c.rm_state(&tx())) == Some(RmState::Prepared) {
            for p in &RMS[1..] {
                assert_eq!(
                    sim.world().core(*p).unwrap().rm_state(&tx()),
                    Some(RmState::Init),
                    "{p} not voted yet"
                );
            }
            cut.set(true);
            if let Some(vote) = later {
                for &p in &held {
                    sim.input(
                        now + Duration::from_millis(5),
                        p,
                        Input::Voted { tx: tx(), vote },
                    );
                }
            }
        }
    }
    let cut_at = sim.now();
    let none = |_| None;
    run_to(&mut sim, &mut seen, cut_at + Duration::from_secs(5), &none);
    let w = sim.world();
    let decided_on = |nodes: &[NodeId]| -> Vec<Event> {
        w.events()
            .iter()
            .filter(|o| nodes.contains(&o.node))
            .filter(|o| {
                matches!(
                    o.event,
                    Event::Commit { .. } | Event::Abort { .. } | Event::Decided { .. }
                )
            })
            .map(|o| o.event.clone())
            .collect()
    };
    assert_eq!(
        decided_on(&[N0, RMS[0]]),
        vec![],
        "the minority side (one acceptor) decides nothing while cut"
    );
    let majority = decided_on(&RMS[1..]);
    let outcome = match later {
        Some(Vote::Commit) => Vote::Commit,
        _ => Vote::Abort,
    };
    let want: Vec<Event> = RMS[1..]
        .iter()
        .map(|_| match outcome {
            Vote::Commit => Event::Commit { tx: tx() },
            Vote::Abort => Event::Abort { tx: tx() },
        })
        .collect();
    assert_eq!(majority, want, "the majority side decides");
    // Heal: everyone ends with the same outcome.
    cut.set(false);
    let healed = sim.now();
    run_to(&mut sim, &mut seen, healed + Duration::from_secs(5), &none);
    let w = sim.world();
    assert_eq!(w.core(N0).unwrap().decided(&tx()), Some(outcome));
    for p in RMS {
        let want = match outcome {
            Vote::Commit => RmState::Committed,
            Vote::Abort => RmState::Aborted,
        };
        assert_eq!(w.core(p).unwrap().rm_state(&tx()), Some(want), "{p}");
    }
    let (commits, aborts) = w.events().iter().fold((0, 0), |(c, a), o| match o.event {
        Event::Commit { .. }
        | Event::Decided {
            outcome: Vote::Commit,
            ..
        } => (c + 1, a),
        Event::Abort { .. }
        | Event::Decided {
            outcome: Vote::Abort,
            ..
        } => (c, a + 1),
        _ => (c, a),
    });
    assert!(commits == 0 || aborts == 0, "never both outcomes");
    assert!(w.stats().model_lost > 0, "the partition dropped messages");
    eprintln!(
        "partition at {cut_at:?} with n1 Prepared, n2/n3 voting {later:?}: the majority side \
         decided {outcome:?}, the minority nothing until healed at {healed:?}, then {outcome:?} \
         everywhere ({} messages cut)",
        w.stats().model_lost
    );
    outcome
}

#[test]
fn where_three_phase_commit_errs_paxos_commit_never_decides_differently() {
    assert_eq!(
        partition_when_one_moved_further(Some(Vote::Commit)),
        Vote::Commit
    );
    assert_eq!(partition_when_one_moved_further(None), Vote::Abort);
}

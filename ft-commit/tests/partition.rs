//! The honest limits, shown: the same partition scenario
//! (`tests/partition_scenario/mod.rs`) run with 2PC and with 3PC.
//! Coordinator n0, participants n1..n3, all vote commit; the network splits
//! {n0, n1} | {n2, n3} just after n1 has moved one step further than n2 and
//! n3, for three minutes of simulated time, then heals.
//!
//! - **3PC violates atomicity**: n1 in PRECOMMIT, n2 and n3 in READY. On
//!   their side n2 and n3 time out, elect n2 (n1 is unreachable), find only
//!   READY and abort; on the other side n1 times out, is elected, finds
//!   only its own PRECOMMIT (the coordinator in PRECOMMIT does not answer)
//!   and commits. 3PC's termination is only safe when a node that does not
//!   answer has crashed; a partitioned one has not.
//! - **2PC blocks but stays safe**: n1 has GLOBAL_COMMIT, n2 and n3 READY.
//!   n2 and n3 ask everyone they can reach, hear only READY, tell
//!   `Event::Blocked` and keep asking; nothing is decided on their side.
//!   When the partition heals they learn COMMIT: every node commits.

mod partition_scenario;

use std::collections::BTreeSet;

use ft_commit::{
    PartState, PartState3, ThreePhase, ThreePhaseConfig, TwoPhase, TwoPhaseConfig, Vote,
};
use ft_core::NodeId;
use partition_scenario::{AHEAD, BEHIND, COORDINATOR, PARTITION, Report, tx};

fn print<S: std::fmt::Debug>(name: &str, r: &Report<S>) {
    eprintln!(
        "{name}: split at {:?} (states then: {:?}), healed at {:?}; outcomes while \
         partitioned {:?}; over the run {:?}; Blocked while partitioned at {:?}; sim: {} \
         partition(s), {} messages dropped by it, {} heal(s)",
        r.split_at,
        r.at_split,
        r.heal_at,
        r.during,
        r.overall,
        r.blocked,
        r.stats.partitions,
        r.stats.partitioned,
        r.stats.heals,
    );
}

fn only(v: Vote) -> BTreeSet<Vote> {
    [v].into_iter().collect()
}

/// The partition really happened, for minutes, and dropped messages.
fn partitioned<S>(r: &Report<S>) {
    assert_eq!(r.stats.partitions, 1);
    assert_eq!(r.stats.heals, 1);
    assert_eq!(r.heal_at - r.split_at, PARTITION);
    assert!(r.stats.partitioned > 100, "{} dropped", r.stats.partitioned);
}

#[test]
fn three_phase_commit_violates_atomicity_under_a_partition() {
    let r = partition_scenario::run::<ThreePhase, _>(
        ThreePhaseConfig::default(),
        |w| w.core(AHEAD).and_then(|c| c.participant_state(&tx())) == Some(PartState3::PreCommit),
        |w| {
            [AHEAD, BEHIND[0], BEHIND[1]]
                .map(|n| w.core(n).and_then(|c| c.participant_state(&tx())))
        },
    );
    print("3PC", &r);
    partitioned(&r);
    // The split fell where it was meant to: n1 one step further.
    assert_eq!(
        r.at_split,
        [
            Some(PartState3::PreCommit),
            Some(PartState3::Ready),
            Some(PartState3::Ready)
        ]
    );
    // The violation happens, while partitioned: n1 commits, n2 and n3
    // abort.
    assert_eq!(r.during.get(&AHEAD), Some(&only(Vote::Commit)));
    for b in BEHIND {
        assert_eq!(r.during.get(&b), Some(&only(Vote::Abort)));
    }
    assert!(r.violates_atomicity());
    eprintln!(
        "3PC ATOMICITY VIOLATED (as expected under a partition): n1 committed, n2 and n3 aborted"
    );
}

#[test]
fn two_phase_commit_blocks_under_the_same_partition_and_commits_after_it_heals() {
    let r = partition_scenario::run::<TwoPhase, _>(
        TwoPhaseConfig::default(),
        |w| w.core(AHEAD).and_then(|c| c.participant_state(&tx())) == Some(PartState::Commit),
        |w| {
            [AHEAD, BEHIND[0], BEHIND[1]]
                .map(|n| w.core(n).and_then(|c| c.participant_state(&tx())))
        },
    );
    print("2PC", &r);
    partitioned(&r);
    assert_eq!(
        r.at_split,
        [
            Some(PartState::Commit),
            Some(PartState::Ready),
            Some(PartState::Ready)
        ]
    );
    // Blocked, and told so, on the {n2, n3} side; nothing decided there.
    assert_eq!(r.blocked, BEHIND.into_iter().collect::<BTreeSet<NodeId>>());
    for b in BEHIND {
        assert_eq!(r.during.get(&b), None, "{b} decided while partitioned");
    }
    // Safe, and it commits everywhere once the partition heals.
    assert!(!r.violates_atomicity());
    for n in [COORDINATOR, AHEAD, BEHIND[0], BEHIND[1]] {
        assert_eq!(r.overall.get(&n), Some(&only(Vote::Commit)), "{n}");
    }
}

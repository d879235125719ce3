//! What the simulator sweeps of the three protocols share: the seeds to
//! run, a generator for what is fixed before a run, and the applications'
//! votes and answer times, each a pure function of the seed so that a
//! failing seed reproduces exactly.

// Each sweep uses its own part of this module.
#![allow(dead_code)]

use std::time::Duration;

use ft_commit::{Event, TxId, Vote};
use ft_core::NodeId;
use ft_sim::World;

/// How many seeds a sweep runs: `FT_COMMIT_SEEDS`, or `default`.
pub(crate) fn seeds(default: u64) -> u64 {
    std::env::var("FT_COMMIT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Whether `COMMIT_SEED` asks for another seed alone (skip `seed`).
pub(crate) fn skipped(seed: u64) -> bool {
    std::env::var("COMMIT_SEED").is_ok_and(|s| s != seed.to_string())
}

/// A small generator of our own, for what is fixed before the run.
pub(crate) struct Xs(pub(crate) u64);

impl Xs {
    /// The next number below `below`.
    pub(crate) fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// FNV-1a of the seed, the node and the transaction.
pub(crate) fn hash(seed: u64, node: NodeId, tx: &TxId) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in node.0.to_le_bytes().iter().chain(tx.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The application's vote at `node` on `tx`: one in eight abort.
pub(crate) fn vote_of(seed: u64, node: NodeId, tx: &TxId) -> Vote {
    if hash(seed, node, tx).is_multiple_of(8) {
        Vote::Abort
    } else {
        Vote::Commit
    }
}

/// Whether the application at `node` answers a prepare of `tx` in its
/// life `life`, and after how long: one in sixteen never answers (the
/// INIT timeout then aborts).
pub(crate) fn answer_delay(seed: u64, node: NodeId, tx: &TxId, life: u64) -> Option<Duration> {
    let h = hash(seed ^ life.wrapping_mul(0x9E37_79B9), node, tx) >> 8;
    (!h.is_multiple_of(16)).then(|| Duration::from_millis(h % 40))
}

/// The prepares told since `*seen`: (node, its life, transaction), for
/// the applications to answer; moves `*seen` past them.
pub(crate) fn prepares<P>(w: &World<P>, seen: &mut usize) -> Vec<(NodeId, u64, TxId)>
where
    P: ft_core::Protocol<Event = Event>,
{
    let asks = w.events()[*seen..]
        .iter()
        .filter_map(|o| match &o.event {
            Event::Prepare { tx } => Some((o.node, o.incarnation.0, tx.clone())),
            _ => None,
        })
        .collect();
    *seen = w.events().len();
    asks
}

/// The outcome an event tells, if any: a participant's COMMIT or ABORT,
/// or a coordinator's decision (`true` for commit).
pub(crate) fn outcome_of(event: &Event) -> Option<(&TxId, bool)> {
    match event {
        Event::Commit { tx }
        | Event::Decided {
            tx,
            outcome: Vote::Commit,
        } => Some((tx, true)),
        Event::Abort { tx }
        | Event::Decided {
            tx,
            outcome: Vote::Abort,
        } => Some((tx, false)),
        _ => None,
    }
}

//! A majority voter over the outputs of replicas.
//!
//! With arbitrary failure semantics a group whose output is defined by voting
//! needs 2k + 1 members to survive k faulty ones (see [`crate::sizing`]):
//! the k + 1 correct members, all producing the same value, outvote the k
//! faulty ones whatever they produce. [`majority`] is that voter.
//!
//! Two rules keep a faulty replica from doing more than its one vote's worth
//! of harm:
//!
//! - **The majority is of the configured group**, not of those who answered.
//!   A value wins only when strictly more than half of `group_size` members
//!   produced it; a missing reply counts against every value. Otherwise two
//!   faulty members of a group of five could outvote one correct member just
//!   by answering while the other correct members were slow.
//! - **One replica, one vote.** A replica that reports twice counts once:
//!   its first report wins and later ones are ignored, so a Byzantine replica
//!   cannot stuff the ballot. For the same reason, once `group_size`
//!   distinct replicas have reported, reports from further replicas are
//!   ignored: the caller passed more reporters than the group has, and
//!   counting outsiders would let them outvote its members.
//!
//! Values need only `Eq`, so tallying compares each report with each distinct
//! value seen so far: O(reports × distinct values), which for replica groups
//! (a handful of members) is cheaper than hashing.
//!
//! ```
//! use ft_core::NodeId;
//! use ft_group::voting::{majority, tmr};
//!
//! // Five replicas, one lies, one is silent: 3 of 5 is a majority.
//! let won = majority(5, [(NodeId(0), 7), (NodeId(1), 7), (NodeId(2), 9), (NodeId(3), 7)]).unwrap();
//! assert_eq!((won.value, won.missing), (7, 1));
//! assert_eq!(won.dissenting, vec![NodeId(2)]);
//!
//! // Two of five is not, even if nobody disagrees.
//! assert!(majority(5, [(NodeId(0), 7), (NodeId(1), 7)]).is_err());
//!
//! // Triple modular redundancy.
//! assert_eq!(tmr(1, 1, 2), Ok(1));
//! ```

use std::collections::BTreeSet;
use std::fmt;

use ft_core::NodeId;

/// A value produced by a strict majority of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Majority<T> {
    /// The winning value.
    pub value: T,
    /// Replicas that produced it, in the order they reported.
    pub agreeing: Vec<NodeId>,
    /// Replicas that produced something else, in the order they reported.
    pub dissenting: Vec<NodeId>,
    /// Members of the group that did not report.
    pub missing: usize,
}

/// No value was produced by a strict majority of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoMajority<T> {
    /// Every distinct value reported and who reported it, in the order the
    /// values first appeared.
    pub tallies: Vec<(T, Vec<NodeId>)>,
    /// Members of the group that did not report.
    pub missing: usize,
    /// The configured size of the group.
    pub group_size: usize,
}

impl<T> fmt::Display for NoMajority<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let best = self
            .tallies
            .iter()
            .map(|(_, who)| who.len())
            .max()
            .unwrap_or(0);
        write!(
            f,
            "no value was produced by a majority of the {} members (needed {}): \
             {} distinct values, the most common had {} votes, {} members did not report",
            self.group_size,
            self.group_size / 2 + 1,
            self.tallies.len(),
            best,
            self.missing
        )
    }
}

impl<T: fmt::Debug> std::error::Error for NoMajority<T> {}

/// The value produced by strictly more than half of a group of `group_size`
/// replicas, given each replica's output.
///
/// Missing replies count against every value; a replica's first report is
/// the one that counts; reporters beyond the first `group_size` distinct
/// ones are ignored (see the [module docs](self)). Never panics; an empty
/// group has no majority.
pub fn majority<T: Eq + Clone>(
    group_size: usize,
    outputs: impl IntoIterator<Item = (NodeId, T)>,
) -> Result<Majority<T>, NoMajority<T>> {
    let mut seen = BTreeSet::new();
    let mut tallies: Vec<(T, Vec<NodeId>)> = Vec::new();
    // Who reported, in order, and to which tally: `dissenting` keeps the
    // report order across values.
    let mut order: Vec<(NodeId, usize)> = Vec::new();
    for (node, value) in outputs {
        if seen.len() >= group_size {
            break;
        }
        if !seen.insert(node) {
            continue;
        }
        let slot = match tallies.iter().position(|(v, _)| *v == value) {
            Some(i) => i,
            None => {
                tallies.push((value, Vec::new()));
                tallies.len() - 1
            }
        };
        tallies[slot].1.push(node);
        order.push((node, slot));
    }
    let missing = group_size - seen.len();
    match tallies
        .iter()
        .position(|(_, who)| who.len() > group_size / 2)
    {
        Some(win) => {
            let dissenting = order
                .iter()
                .filter(|&&(_, slot)| slot != win)
                .map(|&(node, _)| node)
                .collect();
            let (value, agreeing) = tallies.swap_remove(win);
            Ok(Majority {
                value,
                agreeing,
                dissenting,
                missing,
            })
        }
        None => Err(NoMajority {
            tallies,
            missing,
            group_size,
        }),
    }
}

/// Triple modular redundancy: the value at least two of three replicas
/// produced.
///
/// The replicas are reported as `NodeId(0)`, `NodeId(1)` and `NodeId(2)` in
/// a [`NoMajority`], which happens only when all three differ.
pub fn tmr<T: Eq + Clone>(a: T, b: T, c: T) -> Result<T, NoMajority<T>> {
    majority(3, [(NodeId(0), a), (NodeId(1), b), (NodeId(2), c)]).map(|m| m.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(i: u64) -> NodeId {
        NodeId(i)
    }

    #[test]
    fn strict_majority_of_the_configured_group() {
        let m = majority(3, [(n(0), "a"), (n(1), "a")]).unwrap();
        assert_eq!(m.value, "a");
        assert_eq!(m.agreeing, vec![n(0), n(1)]);
        assert!(m.dissenting.is_empty());
        assert_eq!(m.missing, 1);
        // Half is not a majority.
        let e = majority(4, [(n(0), "a"), (n(1), "a"), (n(2), "b"), (n(3), "b")]).unwrap_err();
        assert_eq!(
            e.tallies,
            vec![("a", vec![n(0), n(1)]), ("b", vec![n(2), n(3)])]
        );
        assert_eq!((e.missing, e.group_size), (0, 4));
        // Missing replies count against: 2 of 5 never wins.
        let e = majority(5, [(n(0), 1), (n(1), 1)]).unwrap_err();
        assert_eq!(e.missing, 3);
    }

    #[test]
    fn dissenters_are_listed_in_report_order() {
        let m = majority(
            5,
            [
                (n(4), 'x'),
                (n(0), 'a'),
                (n(3), 'y'),
                (n(1), 'a'),
                (n(2), 'a'),
            ],
        )
        .unwrap();
        assert_eq!(m.value, 'a');
        assert_eq!(m.agreeing, vec![n(0), n(1), n(2)]);
        assert_eq!(m.dissenting, vec![n(4), n(3)]);
        assert_eq!(m.missing, 0);
    }

    #[test]
    fn a_replica_that_reports_twice_counts_once() {
        // n2 tries to vote three times for "evil": only its first report counts.
        let e = majority(
            3,
            [
                (n(2), "evil"),
                (n(2), "evil"),
                (n(2), "evil"),
                (n(0), "good"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.tallies, vec![("evil", vec![n(2)]), ("good", vec![n(0)])]);
        assert_eq!(e.missing, 1);
        // First report wins, a later change of mind is ignored.
        let m = majority(3, [(n(0), 1), (n(0), 2), (n(1), 1)]).unwrap();
        assert_eq!((m.value, m.agreeing.len(), m.missing), (1, 2, 1));
    }

    #[test]
    fn reporters_beyond_the_group_are_ignored() {
        let e = majority(3, [(n(0), 1), (n(1), 2), (n(2), 3), (n(7), 2), (n(8), 2)]).unwrap_err();
        assert_eq!(e.tallies.len(), 3);
        assert_eq!(e.missing, 0);
    }

    #[test]
    fn empty_group_and_no_reports() {
        assert!(majority::<u8>(0, []).is_err());
        assert!(majority(0, [(n(0), 1)]).is_err());
        let e = majority::<u8>(3, []).unwrap_err();
        assert_eq!((e.missing, e.tallies.len()), (3, 0));
        assert_eq!(
            e.to_string(),
            "no value was produced by a majority of the 3 members (needed 2): 0 distinct values, \
             the most common had 0 votes, 3 members did not report"
        );
    }

    #[test]
    fn benign_group_of_k_plus_one_votes_over_the_replies_that_came() {
        // k = 2 crashed out of k + 1 = 3: the one reply is right, and voting
        // over the replies received (not the group) takes it.
        let replies = vec![(n(1), 42)];
        assert!(majority(3, replies.clone()).is_err());
        assert_eq!(majority(replies.len(), replies).unwrap().value, 42);
    }

    #[test]
    fn tmr_masks_one_fault() {
        assert_eq!(tmr(1, 1, 1), Ok(1));
        assert_eq!(tmr(9, 1, 1), Ok(1));
        assert_eq!(tmr(1, 9, 1), Ok(1));
        assert_eq!(tmr(1, 1, 9), Ok(1));
        let e = tmr(1, 2, 3).unwrap_err();
        assert_eq!(
            e.tallies,
            vec![(1, vec![n(0)]), (2, vec![n(1)]), (3, vec![n(2)])]
        );
    }

    proptest! {
        /// 2k + 1 replicas, at most k faulty with arbitrary outputs (some
        /// silent, some reporting twice), reporting in any order: the
        /// majority is always the correct value.
        #[test]
        fn two_k_plus_one_outvote_k_arbitrary_faults(
            k in 0usize..6,
            correct in any::<u8>(),
            faulty_values in proptest::collection::vec((any::<u8>(), 0u8..3), 6),
            faulty_count in 0usize..6,
            seed in any::<u64>(),
        ) {
            let size = 2 * k + 1;
            let faulty = faulty_count.min(k);
            let mut reports = Vec::new();
            for i in 0..size {
                let id = n(i as u64);
                match faulty_values.get(i) {
                    // 0: one wrong value, 1: silent, 2: two reports.
                    Some(&(v, how)) if i < faulty => match how {
                        0 => reports.push((id, v)),
                        1 => {}
                        _ => {
                            reports.push((id, v));
                            reports.push((id, v.wrapping_add(1)));
                        }
                    },
                    _ => reports.push((id, correct)),
                }
            }
            let mut rng = ft_core::rng::Rng::new(seed);
            rng.shuffle(&mut reports);
            let m = majority(size, reports);
            prop_assert!(m.is_ok());
            let m = m.unwrap();
            prop_assert_eq!(m.value, correct);
            prop_assert!(m.agreeing.len() > k);
        }

        #[test]
        fn never_more_votes_than_members(
            size in 0usize..8,
            reports in proptest::collection::vec((0u64..12, 0u8..3), 0..30),
        ) {
            let reports: Vec<(NodeId, u8)> = reports.into_iter().map(|(i, v)| (n(i), v)).collect();
            match majority(size, reports) {
                Ok(m) => {
                    prop_assert!(2 * m.agreeing.len() > size);
                    prop_assert_eq!(m.agreeing.len() + m.dissenting.len() + m.missing, size);
                }
                Err(e) => {
                    let counted: usize = e.tallies.iter().map(|(_, w)| w.len()).sum();
                    prop_assert_eq!(counted + e.missing, size);
                    prop_assert!(e.tallies.iter().all(|(_, w)| 2 * w.len() <= size));
                }
            }
        }
    }
}

//! The configuration of one OM(m) run, validated when it is built.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use ft_core::{FailureModel, NodeId};

use crate::sizing::{self, Masking, SizingError};

use super::message::MAX_PATH_LEN;

/// The most paths one lieutenant may have to store, and so the most values
/// it keeps: [`OmConfig::paths_per_lieutenant`] must not exceed it.
///
/// OM(m) costs grow like n^(m+1); this bound (n = 13 with m = 4 needs 9,032
/// paths, n = 16 with m = 5 would need 266,645) keeps a lieutenant's memory
/// under `MAX_TREE_PATHS × (MAX_VALUE_LEN + path)` ≈ 17 MiB even when every
/// traitor sends the largest value the wire allows for every path it may.
pub const MAX_TREE_PATHS: usize = 16_384;

/// Why an [`OmConfig`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OmConfigError {
    /// n < 3m + 1: the loyal generals cannot outvote the traitors. Build the
    /// config with [`OmConfig::unchecked`] to run OM(m) anyway (to watch it
    /// fail).
    #[error(transparent)]
    TooFewGenerals(#[from] SizingError),
    /// The commander is not one of the generals.
    #[error("the commander {commander} is not one of the generals")]
    CommanderNotAGeneral {
        /// The commander given.
        commander: NodeId,
    },
    /// A general is listed twice.
    #[error("general {general} is listed twice")]
    DuplicateGeneral {
        /// The general listed twice.
        general: NodeId,
    },
    /// The round is zero: no message could arrive before the decision.
    #[error("the round (the bound on one hop's delay) must be longer than zero")]
    ZeroRound,
    /// (m + 1) rounds do not fit in a `Duration`.
    #[error("{rounds} rounds of {round:?} overflow a Duration")]
    DeadlineOverflow {
        /// m + 1.
        rounds: usize,
        /// The round.
        round: Duration,
    },
    /// The longest path (min(m + 1, n − 1) generals) is longer than the wire
    /// carries.
    #[error("paths of {len} generals are longer than the wire's limit of {max}")]
    PathTooLong {
        /// The longest path the run would use.
        len: usize,
        /// [`MAX_PATH_LEN`].
        max: usize,
    },
    /// A lieutenant would have to store more paths than [`MAX_TREE_PATHS`].
    #[error("a lieutenant would store {paths} paths, more than the limit of {max}")]
    TreeTooLarge {
        /// Paths per lieutenant (saturated).
        paths: usize,
        /// [`MAX_TREE_PATHS`].
        max: usize,
    },
}

/// The configuration of one OM(m) run, the same at every general.
///
/// Fields are private so that a config is always valid: the generals are
/// distinct, the commander is one of them, the deadline fits in a
/// `Duration`, paths fit on the wire and the tree of paths fits under
/// [`MAX_TREE_PATHS`]. [`OmConfig::new`] also requires n ≥ 3m + 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OmConfig {
    generals: Vec<NodeId>,
    members: BTreeSet<NodeId>,
    commander: NodeId,
    traitors: usize,
    round: Duration,
    default: Bytes,
}

impl OmConfig {
    /// A run of OM(`traitors`) among `generals` (the commander included),
    /// with `round` the bound on one hop's delay (plus processing) and
    /// `default` the value (RETREAT) used for a missing message and when no
    /// majority exists.
    ///
    /// Make `round` strictly longer than any hop can take: a message due at
    /// the very instant a round ends may be handled just after it, and is
    /// then late.
    ///
    /// Refuses n < 3m + 1 ([`OmConfigError::TooFewGenerals`], whose message
    /// says why in the subject's words), besides the structural checks of
    /// [`OmConfig::unchecked`].
    pub fn new(
        generals: Vec<NodeId>,
        commander: NodeId,
        traitors: usize,
        round: Duration,
        default: Bytes,
    ) -> Result<Self, OmConfigError> {
        let config = Self::unchecked(generals, commander, traitors, round, default)?;
        sizing::check(
            config.generals.len(),
            FailureModel::Arbitrary,
            Masking::Agreement,
            traitors,
        )?;
        Ok(config)
    }

    /// Like [`OmConfig::new`] but without the n ≥ 3m + 1 check: for showing
    /// that the bound is tight (with n = 3 and m = 1, one traitor can make
    /// the loyal lieutenant disobey the loyal commander). The structural
    /// checks remain, since the core relies on them.
    pub fn unchecked(
        generals: Vec<NodeId>,
        commander: NodeId,
        traitors: usize,
        round: Duration,
        default: Bytes,
    ) -> Result<Self, OmConfigError> {
        let mut members = BTreeSet::new();
        for &g in &generals {
            if !members.insert(g) {
                return Err(OmConfigError::DuplicateGeneral { general: g });
            }
        }
        if !members.contains(&commander) {
            return Err(OmConfigError::CommanderNotAGeneral { commander });
        }
        if round.is_zero() {
            return Err(OmConfigError::ZeroRound);
        }
        let rounds = traitors.saturating_add(1);
        if u32::try_from(rounds)
            .ok()
            .and_then(|r| round.checked_mul(r))
            .is_none()
        {
            return Err(OmConfigError::DeadlineOverflow { rounds, round });
        }
        let n = generals.len();
        let longest = rounds.min(n.saturating_sub(1));
        if longest > MAX_PATH_LEN {
            return Err(OmConfigError::PathTooLong {
                len: longest,
                max: MAX_PATH_LEN,
            });
        }
        let paths = paths_per_lieutenant(n, traitors);
        if paths > MAX_TREE_PATHS {
            return Err(OmConfigError::TreeTooLarge {
                paths,
                max: MAX_TREE_PATHS,
            });
        }
        Ok(OmConfig {
            generals,
            members,
            commander,
            traitors,
            round,
            default,
        })
    }

    // --- getters ---

    /// Every general, the commander included, in the order given.
    pub fn generals(&self) -> &[NodeId] {
        &self.generals
    }

    /// Whether `node` is one of the generals.
    pub fn is_general(&self, node: NodeId) -> bool {
        self.members.contains(&node)
    }

    /// The commander.
    pub fn commander(&self) -> NodeId {
        self.commander
    }

    /// The generals other than the commander.
    pub fn lieutenants(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.generals
            .iter()
            .copied()
            .filter(move |&g| g != self.commander)
    }

    /// m: how many traitors the run is built to survive (and how many
    /// rounds of relaying follow the commander's).
    pub fn traitors(&self) -> usize {
        self.traitors
    }

    /// The bound on one hop's delay.
    pub fn round(&self) -> Duration {
        self.round
    }

    /// The value used for a missing message and when no majority exists.
    pub fn default_value(&self) -> &Bytes {
        &self.default
    }

    /// How long after its start a lieutenant decides: (m + 1) rounds, by
    /// which every message of a loyal chain has arrived.
    pub fn decide_after(&self) -> Duration {
        // Checked when the config was built.
        u32::try_from(self.traitors.saturating_add(1))
            .ok()
            .and_then(|r| self.round.checked_mul(r))
            .unwrap_or(Duration::MAX)
    }

    /// The longest valid path: the commander and m relayers, but never more
    /// generals than leave someone to receive it.
    pub fn longest_path(&self) -> usize {
        self.traitors
            .saturating_add(1)
            .min(self.generals.len().saturating_sub(1))
    }

    /// The most values one lieutenant stores: one per path that does not
    /// contain it, 1 + (n−2) + (n−2)(n−3) + … (m + 1 terms).
    pub fn paths_per_lieutenant(&self) -> usize {
        paths_per_lieutenant(self.generals.len(), self.traitors)
    }

    /// How many messages a run with only loyal generals sends in all:
    /// (n−1) + (n−1)(n−2) + … (m + 1 terms), one per path and receiver.
    pub fn messages_total(&self) -> usize {
        let n = self.generals.len();
        let mut term = n.saturating_sub(1);
        let mut total = term;
        for len in 1..=self.traitors {
            term = term.saturating_mul(n.saturating_sub(1 + len));
            if term == 0 {
                break;
            }
            total = total.saturating_add(term);
        }
        total
    }
}

/// Σ_{L=1}^{m+1} (n−2)!/(n−1−L)!: paths of L generals that start with the
/// commander and avoid one given lieutenant. Saturates; stops early once
/// the count is past any limit that matters.
fn paths_per_lieutenant(n: usize, m: usize) -> usize {
    if n < 2 {
        return 0;
    }
    let mut term = 1usize;
    let mut total = 1usize;
    for len in 1..=m {
        term = term.saturating_mul(n.saturating_sub(1 + len));
        if term == 0 || total > MAX_TREE_PATHS {
            break;
        }
        total = total.saturating_add(term);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<NodeId> {
        (0..n).map(NodeId).collect()
    }

    fn cfg(n: u64, m: usize) -> Result<OmConfig, OmConfigError> {
        OmConfig::new(
            ids(n),
            NodeId(0),
            m,
            Duration::from_millis(10),
            Bytes::from_static(b"retreat"),
        )
    }

    #[test]
    fn three_m_plus_one_is_required_unless_unchecked() {
        let e = cfg(3, 1).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a group of 3 cannot reach Byzantine agreement with 1 traitor"),
            "{e}"
        );
        assert!(cfg(4, 1).is_ok());
        assert!(cfg(6, 2).is_err());
        assert!(cfg(7, 2).is_ok());
        let c = OmConfig::unchecked(ids(3), NodeId(0), 1, Duration::from_millis(1), Bytes::new())
            .unwrap();
        assert_eq!(
            c.lieutenants().collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(2)]
        );
    }

    #[test]
    fn structural_errors() {
        let r = Duration::from_millis(1);
        let b = Bytes::new;
        assert_eq!(
            OmConfig::unchecked(vec![NodeId(1), NodeId(1)], NodeId(1), 0, r, b()),
            Err(OmConfigError::DuplicateGeneral { general: NodeId(1) })
        );
        assert_eq!(
            OmConfig::unchecked(ids(4), NodeId(9), 1, r, b()),
            Err(OmConfigError::CommanderNotAGeneral {
                commander: NodeId(9)
            })
        );
        assert_eq!(
            OmConfig::unchecked(ids(4), NodeId(0), 1, Duration::ZERO, b()),
            Err(OmConfigError::ZeroRound)
        );
        assert!(matches!(
            OmConfig::unchecked(ids(4), NodeId(0), 1, Duration::MAX, b()),
            Err(OmConfigError::DeadlineOverflow { rounds: 2, .. })
        ));
        assert!(matches!(
            OmConfig::unchecked(ids(4), NodeId(0), usize::MAX, r, b()),
            Err(OmConfigError::DeadlineOverflow { .. })
        ));
        assert!(matches!(
            OmConfig::unchecked(ids(40), NodeId(0), 13, r, b()),
            Err(OmConfigError::TreeTooLarge { .. })
        ));
        assert!(matches!(
            OmConfig::unchecked(ids(40), NodeId(0), 40, r, b()),
            Err(OmConfigError::PathTooLong { len: 39, .. })
        ));
        // Many traitors but few generals: paths stop at n − 1 generals.
        let c = OmConfig::unchecked(ids(3), NodeId(0), 100, r, b()).unwrap();
        assert_eq!((c.longest_path(), c.paths_per_lieutenant()), (2, 2));
    }

    #[test]
    fn path_and_message_counts() {
        let c = cfg(4, 1).unwrap();
        assert_eq!(c.paths_per_lieutenant(), 1 + 2);
        assert_eq!(c.messages_total(), 3 + 3 * 2);
        let c = cfg(7, 2).unwrap();
        assert_eq!(c.paths_per_lieutenant(), 1 + 5 + 5 * 4);
        assert_eq!(c.messages_total(), 6 + 6 * 5 + 6 * 5 * 4);
        assert_eq!(c.decide_after(), Duration::from_millis(30));
        assert_eq!(cfg(13, 4).unwrap().paths_per_lieutenant(), 9032);
        let solo =
            OmConfig::new(ids(1), NodeId(0), 0, Duration::from_millis(1), Bytes::new()).unwrap();
        assert_eq!((solo.paths_per_lieutenant(), solo.messages_total()), (0, 0));
    }
}

//! How large a *k-fault-tolerant* group must be.
//!
//! A group is k-fault tolerant when it can mask any `k` concurrent member
//! failures (`k` is its *degree of fault tolerance*). How many members that
//! takes depends on how members fail ([`FailureModel`]) and on how the
//! group's output is formed ([`Masking`]):
//!
//! | failure model | [`Replication`](Masking::Replication) | [`Voting`](Masking::Voting) | [`Agreement`](Masking::Agreement) |
//! |---|---|---|---|
//! | benign: crash, omission, timing | k + 1 | k + 1 | k + 1 |
//! | response (wrong values), arbitrary | cannot mask (k ≥ 1) | 2k + 1 | 3k + 1 |
//!
//! - **Crash/performance failure semantics ⇒ k + 1.** A benign member never
//!   says anything wrong, it only falls silent or answers late, so one
//!   member left standing is enough: its output is the group's. The same
//!   holds for a vote under benign failures — every output that arrives is
//!   right, so the vote over the answers received is unanimous — and for
//!   agreement (a synchronous group of k + 1 members whose failures are
//!   crashes agrees by flooding for k + 1 rounds).
//! - **Arbitrary failure semantics, output by voting ⇒ 2k + 1.** The k + 1
//!   correct members must outvote the k faulty ones.
//! - **Arbitrary failure semantics, members must agree (Byzantine
//!   agreement) ⇒ 3k + 1.** The loyal members reach a majority vote among
//!   themselves in the presence of k traitors, which takes 2k + 1 loyalists;
//!   with the k traitors that is 3k + 1 (see [`crate::agreement`]).
//! - **Replication alone cannot mask wrong values**: with response or
//!   arbitrary failures a single member's answer cannot be trusted, so
//!   [`required_size`] returns [`SizingError::Unmaskable`] for that
//!   combination when `k ≥ 1` (tolerating zero failures needs one member,
//!   whatever the model).
//!
//! Response failures are sized like arbitrary ones: a member that computes
//! wrong values may send different wrong values to different members, and
//! nothing in the model rules that out.
//!
//! A note on [`crate::voting::majority`]: it counts *missing* replies against
//! every value, which is what a 2k + 1 group needs under arbitrary failures.
//! A k + 1 group under benign failures must not vote that way (k crashed
//! members would block it); take any reply, or vote over the replies that
//! arrived by passing their number as the group size.
//!
//! All arithmetic saturates: a `k` so large that the required size would
//! overflow `usize` asks for `usize::MAX` members, which no group has.
//!
//! ```
//! use ft_core::FailureModel;
//! use ft_group::sizing::{self, Masking};
//!
//! assert_eq!(sizing::required_size(FailureModel::Crash, Masking::Replication, 2), Ok(3));
//! assert_eq!(sizing::required_size(FailureModel::Arbitrary, Masking::Voting, 2), Ok(5));
//! assert_eq!(sizing::required_size(FailureModel::Arbitrary, Masking::Agreement, 1), Ok(4));
//! assert_eq!(sizing::max_tolerated(FailureModel::Arbitrary, Masking::Agreement, 7), 2);
//!
//! let err = sizing::check(3, FailureModel::Arbitrary, Masking::Agreement, 1).unwrap_err();
//! assert!(err.to_string().starts_with("a group of 3 cannot reach Byzantine agreement with 1 traitor"));
//! ```

use std::fmt;

use ft_core::FailureModel;

/// How a group turns its members' outputs into the group's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Masking {
    /// Identical replicas; any surviving member's output will do.
    Replication,
    /// Identical replicas; the group's output is the majority vote of the
    /// members' outputs.
    Voting,
    /// Members are not identical (a distributed computation): the
    /// non-faulty members must agree on the same value (Byzantine
    /// agreement under arbitrary failures).
    Agreement,
}

impl Masking {
    /// Every way of masking, from the cheapest to the dearest.
    pub const ALL: [Masking; 3] = [Masking::Replication, Masking::Voting, Masking::Agreement];
}

impl fmt::Display for Masking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Masking::Replication => "replication",
            Masking::Voting => "voting",
            Masking::Agreement => "agreement",
        })
    }
}

/// Why a group of some size cannot mask `k` failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizingError {
    /// The group has fewer members than the model and the masking need.
    #[error("{}", too_small(*.members, *.required, *.k, *.model, *.masking))]
    TooSmall {
        /// Members the group has.
        members: usize,
        /// Members it would need.
        required: usize,
        /// Failures it should survive.
        k: usize,
        /// How members fail.
        model: FailureModel,
        /// How the group's output is formed.
        masking: Masking,
    },
    /// No group size helps: members whose output may be wrong cannot be
    /// masked by taking any one member's output.
    #[error(
        "{model} failures cannot be masked by replication alone: a faulty member's output may be \
         wrong, so a single answer cannot be trusted; vote (2k+1 members) or agree (3k+1 members) instead"
    )]
    Unmaskable {
        /// How members fail.
        model: FailureModel,
        /// The masking asked for ([`Masking::Replication`]).
        masking: Masking,
    },
}

/// How many members a group needs to survive `k` concurrent member failures
/// of kind `model` when its output is formed by `masking`.
///
/// See the [module docs](self) for the table. Fails with
/// [`SizingError::Unmaskable`] for [`Masking::Replication`] under a
/// non-benign model with `k ≥ 1`. Saturates at `usize::MAX`.
pub fn required_size(
    model: FailureModel,
    masking: Masking,
    k: usize,
) -> Result<usize, SizingError> {
    let factor = factor(model, masking, k)?;
    Ok(k.saturating_mul(factor).saturating_add(1))
}

/// The largest `k` a group of `size` members survives, for `model` and
/// `masking`.
///
/// For every `k` whose required size does not saturate,
/// `max_tolerated(model, masking, required_size(model, masking, k)?) == k`.
/// A group that cannot mask even one failure gets 0 — including an empty
/// group, which [`check`] rejects even for `k = 0` (it has no output at all),
/// and a group whose wrong values replication cannot mask.
pub fn max_tolerated(model: FailureModel, masking: Masking, size: usize) -> usize {
    match factor(model, masking, 1) {
        Ok(f) => size.saturating_sub(1) / f,
        Err(_) => 0,
    }
}

/// Whether a group of `size` members survives `k` concurrent failures of
/// kind `model` when its output is formed by `masking`; the error says why
/// not, in the subject's words.
pub fn check(
    size: usize,
    model: FailureModel,
    masking: Masking,
    k: usize,
) -> Result<(), SizingError> {
    let required = required_size(model, masking, k)?;
    if size < required {
        return Err(SizingError::TooSmall {
            members: size,
            required,
            k,
            model,
            masking,
        });
    }
    Ok(())
}

/// The `f` in "f·k + 1 members".
fn factor(model: FailureModel, masking: Masking, k: usize) -> Result<usize, SizingError> {
    if model.is_benign() {
        return Ok(1);
    }
    match masking {
        // Zero failures need no masking, so one member will do even here.
        Masking::Replication if k == 0 => Ok(1),
        Masking::Replication => Err(SizingError::Unmaskable { model, masking }),
        Masking::Voting => Ok(2),
        Masking::Agreement => Ok(3),
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn too_small(
    members: usize,
    required: usize,
    k: usize,
    model: FailureModel,
    masking: Masking,
) -> String {
    if model.is_benign() {
        return format!(
            "a group of {members} cannot survive {} ({model}): crash/performance failure semantics \
             need k+1 = {required} members, so that at least one member is left to give the output",
            plural(k, "member failure"),
        );
    }
    match masking {
        Masking::Agreement => format!(
            "a group of {members} cannot reach Byzantine agreement with {}: {model} failures need \
             3k+1 = {required} members (2k+1 loyal members to outvote k traitors, plus the k traitors)",
            plural(k, "traitor"),
        ),
        // Replication under wrong values is Unmaskable before any size is
        // compared, except for k = 0, where only an empty group is too small.
        Masking::Voting | Masking::Replication => format!(
            "a group of {members} cannot mask {} by {masking}: {model} failures need 2k+1 = {required} \
             members, so that the k+1 correct outputs outvote the k wrong ones",
            plural(k, "faulty member"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ft_core::{Omission, Response};
    use proptest::prelude::*;

    const BENIGN: [FailureModel; 5] = [
        FailureModel::Crash,
        FailureModel::Omission(Omission::Send),
        FailureModel::Omission(Omission::Receive),
        FailureModel::Omission(Omission::Both),
        FailureModel::Timing,
    ];
    const WRONG_VALUES: [FailureModel; 3] = [
        FailureModel::Response(Response::Value),
        FailureModel::Response(Response::StateTransition),
        FailureModel::Arbitrary,
    ];

    #[test]
    fn benign_failures_need_k_plus_one_whatever_the_masking() {
        for model in BENIGN {
            for masking in Masking::ALL {
                for k in 0..5 {
                    assert_eq!(
                        required_size(model, masking, k),
                        Ok(k + 1),
                        "{model} {masking} {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn wrong_values_need_2k_plus_one_to_vote_and_3k_plus_one_to_agree() {
        for model in WRONG_VALUES {
            for k in 0..5 {
                assert_eq!(required_size(model, Masking::Voting, k), Ok(2 * k + 1));
                assert_eq!(required_size(model, Masking::Agreement, k), Ok(3 * k + 1));
            }
        }
    }

    #[test]
    fn replication_cannot_mask_wrong_values() {
        for model in WRONG_VALUES {
            assert_eq!(required_size(model, Masking::Replication, 0), Ok(1));
            for k in 1..4 {
                assert_eq!(
                    required_size(model, Masking::Replication, k),
                    Err(SizingError::Unmaskable {
                        model,
                        masking: Masking::Replication
                    })
                );
                assert!(check(100, model, Masking::Replication, k).is_err());
            }
            assert_eq!(max_tolerated(model, Masking::Replication, 100), 0);
        }
        let msg = required_size(FailureModel::Arbitrary, Masking::Replication, 1)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("a single answer cannot be trusted"), "{msg}");
    }

    #[test]
    fn max_tolerated_rows() {
        let a = FailureModel::Arbitrary;
        assert_eq!(max_tolerated(a, Masking::Agreement, 3), 0);
        assert_eq!(max_tolerated(a, Masking::Agreement, 4), 1);
        assert_eq!(max_tolerated(a, Masking::Agreement, 6), 1);
        assert_eq!(max_tolerated(a, Masking::Agreement, 7), 2);
        assert_eq!(max_tolerated(a, Masking::Voting, 3), 1);
        assert_eq!(max_tolerated(a, Masking::Voting, 4), 1);
        assert_eq!(max_tolerated(a, Masking::Voting, 5), 2);
        assert_eq!(
            max_tolerated(FailureModel::Crash, Masking::Replication, 3),
            2
        );
        assert_eq!(max_tolerated(FailureModel::Crash, Masking::Voting, 0), 0);
        assert!(check(0, FailureModel::Crash, Masking::Replication, 0).is_err());
    }

    #[test]
    fn error_text_says_why_in_the_subjects_words() {
        let e = check(3, FailureModel::Arbitrary, Masking::Agreement, 1).unwrap_err();
        assert_eq!(
            e,
            SizingError::TooSmall {
                members: 3,
                required: 4,
                k: 1,
                model: FailureModel::Arbitrary,
                masking: Masking::Agreement
            }
        );
        assert_eq!(
            e.to_string(),
            "a group of 3 cannot reach Byzantine agreement with 1 traitor: arbitrary failures need \
             3k+1 = 4 members (2k+1 loyal members to outvote k traitors, plus the k traitors)"
        );
        let e = check(4, FailureModel::Arbitrary, Masking::Voting, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a group of 4 cannot mask 2 faulty members by voting: arbitrary failures need 2k+1 = 5 \
             members, so that the k+1 correct outputs outvote the k wrong ones"
        );
        let e = check(2, FailureModel::Crash, Masking::Replication, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a group of 2 cannot survive 2 member failures (crash): crash/performance failure \
             semantics need k+1 = 3 members, so that at least one member is left to give the output"
        );
        let e = check(6, FailureModel::Arbitrary, Masking::Agreement, 2).unwrap_err();
        assert!(e.to_string().contains("with 2 traitors"), "{e}");
    }

    #[test]
    fn huge_k_saturates() {
        assert_eq!(
            required_size(FailureModel::Arbitrary, Masking::Agreement, usize::MAX),
            Ok(usize::MAX)
        );
        assert_eq!(
            required_size(FailureModel::Crash, Masking::Replication, usize::MAX),
            Ok(usize::MAX)
        );
        assert!(
            check(
                usize::MAX - 1,
                FailureModel::Arbitrary,
                Masking::Voting,
                usize::MAX / 2 + 1
            )
            .is_err()
        );
        assert_eq!(
            max_tolerated(FailureModel::Crash, Masking::Voting, usize::MAX),
            usize::MAX - 1
        );
    }

    fn any_model() -> impl Strategy<Value = FailureModel> {
        proptest::sample::select(FailureModel::ALL.to_vec())
    }

    fn any_masking() -> impl Strategy<Value = Masking> {
        proptest::sample::select(Masking::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn required_size_is_tight(model in any_model(), masking in any_masking(), k in 0usize..1_000_000) {
            if let Ok(n) = required_size(model, masking, k) {
                prop_assert!(check(n, model, masking, k).is_ok());
                if k >= 1 {
                    let too_small = check(n - 1, model, masking, k);
                    let is_too_small = matches!(too_small, Err(SizingError::TooSmall { .. }));
                    prop_assert!(is_too_small);
                }
                prop_assert_eq!(max_tolerated(model, masking, n), k);
                // One member short of the next k does not raise the bound.
                if let Ok(next) = required_size(model, masking, k + 1) {
                    prop_assert_eq!(max_tolerated(model, masking, next - 1), k);
                }
            } else {
                prop_assert!(!model.is_benign() && masking == Masking::Replication && k >= 1);
            }
        }

        #[test]
        fn check_agrees_with_max_tolerated(model in any_model(), masking in any_masking(), size in 1usize..10_000, k in 0usize..5_000) {
            prop_assert_eq!(check(size, model, masking, k).is_ok(), k <= max_tolerated(model, masking, size));
        }
    }
}

//! The failure-model taxonomy of the subject, as types.
//!
//! A component *fails* when it does not live up to its specification. The
//! kinds below are ordered by how much harm they can do: crash failures are
//! the most benign, arbitrary (Byzantine) failures the least. A protocol that
//! tolerates one kind tolerates every kind it [subsumes](FailureModel::subsumes).

use std::fmt;

/// How a component may fail (the subject's "failure semantics").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureModel {
    /// The component halts, but behaves correctly before halting.
    Crash,
    /// The component fails to respond: it omits to send, to receive, or both.
    Omission(Omission),
    /// Output is correct, but lies outside a specified real-time interval
    /// (performance failure: too slow).
    Timing,
    /// Output is incorrect, and the fault cannot be blamed on another component.
    Response(Response),
    /// The component produces arbitrary output at arbitrary times
    /// (Byzantine failure).
    Arbitrary,
}

/// Which side of an omission failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Omission {
    /// The component fails to send messages it should send.
    Send,
    /// The component fails to receive messages sent to it.
    Receive,
    /// Both.
    Both,
}

/// What is wrong with a response failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Response {
    /// A wrong value is produced.
    Value,
    /// Execution brings the component into a wrong state (a transition is
    /// skipped, repeated or taken wrongly).
    StateTransition,
}

impl FailureModel {
    /// Every failure model, from the most benign to the least.
    pub const ALL: [FailureModel; 8] = [
        FailureModel::Crash,
        FailureModel::Omission(Omission::Send),
        FailureModel::Omission(Omission::Receive),
        FailureModel::Omission(Omission::Both),
        FailureModel::Timing,
        FailureModel::Response(Response::Value),
        FailureModel::Response(Response::StateTransition),
        FailureModel::Arbitrary,
    ];

    /// Whether a component that may fail as `self` may also show every
    /// behaviour of `other`, so that tolerating `self` implies tolerating
    /// `other`.
    ///
    /// A crash is an omission of everything from some moment on; an omission
    /// is an infinitely late output (a timing failure); everything is an
    /// arbitrary failure. Response failures are only subsumed by arbitrary
    /// ones: a wrong value is not a late or missing one.
    pub fn subsumes(self, other: FailureModel) -> bool {
        use FailureModel::*;
        if self == other {
            return true;
        }
        matches!(
            (self, other),
            (Arbitrary, _)
                | (Timing, Crash | Omission(_))
                | (Omission(self::Omission::Both), Crash | Omission(_))
                | (Omission(_), Crash)
        )
    }

    /// Whether the failure is *benign*: it never makes a component emit a
    /// wrong value, only a missing or late one.
    pub fn is_benign(self) -> bool {
        matches!(
            self,
            FailureModel::Crash | FailureModel::Omission(_) | FailureModel::Timing
        )
    }
}

impl fmt::Display for FailureModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FailureModel::Crash => "crash",
            FailureModel::Omission(Omission::Send) => "send omission",
            FailureModel::Omission(Omission::Receive) => "receive omission",
            FailureModel::Omission(Omission::Both) => "omission",
            FailureModel::Timing => "timing",
            FailureModel::Response(Response::Value) => "value (response)",
            FailureModel::Response(Response::StateTransition) => "state transition (response)",
            FailureModel::Arbitrary => "arbitrary",
        };
        f.write_str(s)
    }
}

/// What clients can assume about how a component fails
/// (the subject's assumptions about crash failures).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureSemantics {
    /// The component shows omission or crash failures; clients cannot tell
    /// what went wrong.
    FailSilent,
    /// The component shows crash failures, but its failure can be detected,
    /// by announcement or by timeouts.
    FailStop,
    /// The component shows arbitrary but benign failures: they cannot do any
    /// harm.
    FailSafe,
}

impl FailureSemantics {
    /// Whether peers can learn of the failure (and so stop waiting for the
    /// component) rather than having to guess from silence.
    pub fn is_detectable(self) -> bool {
        matches!(self, FailureSemantics::FailStop)
    }

    /// The failure models a component with these semantics may show.
    pub fn models(self) -> &'static [FailureModel] {
        match self {
            FailureSemantics::FailSilent => &[
                FailureModel::Crash,
                FailureModel::Omission(Omission::Send),
                FailureModel::Omission(Omission::Receive),
                FailureModel::Omission(Omission::Both),
            ],
            FailureSemantics::FailStop => &[FailureModel::Crash],
            FailureSemantics::FailSafe => &[
                FailureModel::Crash,
                FailureModel::Omission(Omission::Send),
                FailureModel::Omission(Omission::Receive),
                FailureModel::Omission(Omission::Both),
                FailureModel::Timing,
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrary_subsumes_everything_and_crash_only_itself() {
        for m in FailureModel::ALL {
            assert!(FailureModel::Arbitrary.subsumes(m), "{m}");
            assert!(m.subsumes(m));
            assert_eq!(FailureModel::Crash.subsumes(m), m == FailureModel::Crash);
        }
    }

    #[test]
    fn subsumption_is_transitive() {
        for a in FailureModel::ALL {
            for b in FailureModel::ALL {
                for c in FailureModel::ALL {
                    if a.subsumes(b) && b.subsumes(c) {
                        assert!(a.subsumes(c), "{a} > {b} > {c}");
                    }
                }
            }
        }
    }

    #[test]
    fn value_failures_are_not_benign_and_not_subsumed_by_timing() {
        let value = FailureModel::Response(Response::Value);
        assert!(!value.is_benign());
        assert!(!FailureModel::Timing.subsumes(value));
        assert!(FailureModel::Timing.subsumes(FailureModel::Crash));
    }

    #[test]
    fn only_fail_stop_is_detectable_and_fail_safe_is_benign() {
        assert!(FailureSemantics::FailStop.is_detectable());
        assert!(!FailureSemantics::FailSilent.is_detectable());
        assert!(
            FailureSemantics::FailSafe
                .models()
                .iter()
                .all(|m| m.is_benign())
        );
        assert_eq!(FailureSemantics::FailStop.models(), &[FailureModel::Crash]);
    }
}

//! Process groups: flat and hierarchical, over SWIM membership.
//!
//! The subject protects against faulty processes by replicating them in a
//! group. In a **flat** group every member is equal and decisions are made
//! collectively: no single point of failure, more coordination. In a
//! **hierarchical** group one member, the coordinator, directs the workers:
//! simple, but the coordinator is a single point of failure, so it must be
//! replaced when it is suspected.
//!
//! A [`Group`] is a [`Swim`] member that also keeps track of the group's
//! structure. In a hierarchical group the coordinator is the member with the
//! lowest id among those this member's view holds [alive](MemberState::Alive):
//! a coordinator that becomes merely *suspect* is replaced at once (waiting
//! for the failure to be confirmed would leave the workers without direction
//! for a whole suspicion timeout), and since views converge (see
//! [`membership`](crate::membership)), every member ends up naming the same
//! coordinator. Two members may name different coordinators while news is
//! still spreading; a layer that needs a single coordinator at every instant
//! needs agreement on top (for instance the view changes of virtual
//! synchrony), not just membership.
//!
//! A group can be checked against the failures it is meant to survive:
//! [`GroupConfig::tolerating`] refuses a group too small for its `k` (see
//! [`crate::sizing`]).

use std::time::Instant;

use ft_core::{
    Counters, FailureModel, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext,
};

use crate::membership::{MemberState, Membership};
use crate::sizing::{self, Masking, SizingError};
use crate::swim::{Swim, SwimConfig, SwimEvent, SwimInput, SwimMessage, SwimTimer};

/// How a group is organised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// All members equal.
    Flat,
    /// A coordinator (the lowest-id member believed alive) and workers.
    Hierarchical,
}

/// The failures a group is sized to survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tolerance {
    /// How members may fail.
    pub model: FailureModel,
    /// How the group's output masks failed members.
    pub masking: Masking,
    /// How many members may fail at once (the degree of fault tolerance).
    pub k: usize,
}

/// Configuration of a [`Group`] member.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// The membership protocol underneath (its `members` are the group).
    pub swim: SwimConfig,
    /// Flat or hierarchical.
    pub structure: Structure,
    /// What the group was checked to survive, if it was.
    pub tolerance: Option<Tolerance>,
}

impl GroupConfig {
    /// A flat group of `members` with SWIM's defaults.
    pub fn flat(members: Vec<NodeId>) -> Self {
        GroupConfig {
            swim: SwimConfig::new(members),
            structure: Structure::Flat,
            tolerance: None,
        }
    }

    /// A hierarchical group of `members` with SWIM's defaults.
    pub fn hierarchical(members: Vec<NodeId>) -> Self {
        GroupConfig {
            structure: Structure::Hierarchical,
            ..GroupConfig::flat(members)
        }
    }

    /// Claims the group survives `k` members failing as `model`, with
    /// output masked by `masking`; refuses (saying why) if it is too small.
    pub fn tolerating(
        mut self,
        model: FailureModel,
        masking: Masking,
        k: usize,
    ) -> Result<Self, SizingError> {
        let mut members = self.swim.members.clone();
        members.sort();
        members.dedup();
        sizing::check(members.len(), model, masking, k)?;
        self.tolerance = Some(Tolerance { model, masking, k });
        Ok(self)
    }
}

/// What a group member tells its application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    /// News from the membership protocol.
    Membership(SwimEvent),
    /// The coordinator changed, in this member's view (hierarchical groups
    /// only): `None` when no member is believed alive.
    Coordinator {
        /// The coordinator before.
        previous: Option<NodeId>,
        /// The coordinator now.
        current: Option<NodeId>,
    },
}

/// A member of a flat or hierarchical group. See the [module docs](self).
///
/// Methods: getters ([`coordinator`](Group::coordinator),
/// [`workers`](Group::workers), [`membership`](Group::membership),
/// [`swim`](Group::swim), [`structure`](Group::structure)); the
/// [`Protocol`] `handle_*` methods; mutators through [`SwimInput`];
/// `poll_output` after every `handle_*` call.
#[derive(Debug)]
pub struct Group {
    swim: Swim,
    structure: Structure,
    coordinator: Option<NodeId>,
    /// The coordinator as last announced, and the view version it was
    /// computed at (recomputed only when the view changed).
    seen_version: u64,
    pending: Option<GroupEvent>,
}

impl Group {
    // ---- getters ----

    /// The coordinator in this member's view (hierarchical groups), or
    /// `None` in a flat group.
    pub fn coordinator(&self) -> Option<NodeId> {
        self.coordinator
    }

    /// Whether this member is the coordinator.
    pub fn is_coordinator(&self) -> bool {
        self.coordinator == Some(self.swim.id())
    }

    /// The members believed alive that are not the coordinator.
    pub fn workers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.swim
            .membership()
            .in_state(MemberState::Alive)
            .filter(move |&n| Some(n) != self.coordinator)
    }

    /// The membership view.
    pub fn membership(&self) -> &Membership {
        self.swim.membership()
    }

    /// The SWIM member underneath.
    pub fn swim(&self) -> &Swim {
        &self.swim
    }

    /// Flat or hierarchical.
    pub fn structure(&self) -> Structure {
        self.structure
    }

    fn elect(&self) -> Option<NodeId> {
        match self.structure {
            Structure::Flat => None,
            // The lowest id among those believed alive: every member applies
            // the same rule to converging views, so they converge on one
            // coordinator without exchanging a message.
            Structure::Hierarchical => self.swim.membership().in_state(MemberState::Alive).next(),
        }
    }

    fn refresh(&mut self) {
        let version = self.swim.membership().version();
        if version == self.seen_version {
            return;
        }
        self.seen_version = version;
        let current = self.elect();
        if current != self.coordinator {
            self.pending = Some(GroupEvent::Coordinator {
                previous: self.coordinator,
                current,
            });
            self.coordinator = current;
        }
    }
}

impl Protocol for Group {
    type Message = SwimMessage;
    type Input = SwimInput;
    type Event = GroupEvent;
    type Timer = SwimTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: SwimMessage) {
        self.swim.handle_message(now, from, msg);
    }

    fn handle_input(&mut self, now: Instant, input: SwimInput) {
        self.swim.handle_input(now, input);
    }

    fn handle_timer(&mut self, now: Instant, timer: SwimTimer) {
        self.swim.handle_timer(now, timer);
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        self.swim.handle_persisted(now, token);
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        if let Some(e) = self.pending.take() {
            return Some(Output::Event(e));
        }
        let out = self.swim.poll_output()?;
        Some(match out {
            Output::Send { to, msg } => Output::Send { to, msg },
            Output::SetTimer { timer, at } => Output::SetTimer { timer, at },
            Output::CancelTimer { timer } => Output::CancelTimer { timer },
            Output::Persist { record, token } => Output::Persist { record, token },
            Output::Compact { before } => Output::Compact { before },
            Output::Event(e) => {
                // A membership event may move the coordinator: report the
                // membership news first, the coordinator change right after.
                self.refresh();
                Output::Event(GroupEvent::Membership(e))
            }
        })
    }

    fn counters(&self) -> Counters {
        self.swim.counters()
    }
}

impl Recover for Group {
    type Config = GroupConfig;

    fn recover(config: &GroupConfig, ctx: RecoveryContext) -> Result<Self, ft_core::RecoveryError> {
        Ok({
            let swim = Swim::recover(&config.swim, ctx)?;
            let mut g = Group {
                swim,
                structure: config.structure,
                coordinator: None,
                seen_version: u64::MAX,
                pending: None,
            };
            g.refresh();
            g
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Rumor;
    use ft_core::Incarnation;

    fn member(structure: Structure, me: u64) -> Group {
        let members = (0..5).map(NodeId).collect();
        let config = match structure {
            Structure::Flat => GroupConfig::flat(members),
            Structure::Hierarchical => GroupConfig::hierarchical(members),
        };
        Group::recover(
            &config,
            RecoveryContext {
                node: NodeId(me),
                incarnation: Incarnation::FIRST,
                records: vec![],
                seed: 3,
                now: Instant::now(),
            },
        )
        .unwrap()
    }

    fn events(g: &mut Group) -> Vec<GroupEvent> {
        std::iter::from_fn(|| g.poll_output())
            .filter_map(|o| match o {
                Output::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_suspected_coordinator_is_replaced_and_comes_back_after_refuting() {
        let mut g = member(Structure::Hierarchical, 3);
        let _ = events(&mut g);
        assert_eq!(g.coordinator(), Some(NodeId(0)));
        assert_eq!(g.workers().count(), 4);
        let now = Instant::now();
        let gossip = |r: Rumor| SwimMessage::Ping {
            seq: 1,
            target: NodeId(3),
            sender_incarnation: Incarnation(0),
            rumors: vec![r],
        };
        g.handle_message(
            now,
            NodeId(1),
            gossip(Rumor::Suspect {
                node: NodeId(0),
                incarnation: Incarnation(0),
                from: NodeId(1),
            }),
        );
        let ev = events(&mut g);
        assert!(ev.contains(&GroupEvent::Coordinator {
            previous: Some(NodeId(0)),
            current: Some(NodeId(1))
        }));
        assert!(!g.is_coordinator());
        g.handle_message(
            now,
            NodeId(1),
            gossip(Rumor::Alive {
                node: NodeId(0),
                incarnation: Incarnation(1),
            }),
        );
        let ev = events(&mut g);
        assert!(ev.contains(&GroupEvent::Coordinator {
            previous: Some(NodeId(1)),
            current: Some(NodeId(0))
        }));
    }

    #[test]
    fn a_flat_group_has_no_coordinator() {
        let mut g = member(Structure::Flat, 0);
        let _ = events(&mut g);
        assert_eq!(g.coordinator(), None);
        assert_eq!(g.workers().count(), 5);
    }

    #[test]
    fn a_group_too_small_for_its_claim_is_refused() {
        let members: Vec<NodeId> = (0..3).map(NodeId).collect();
        let err = GroupConfig::flat(members.clone())
            .tolerating(FailureModel::Arbitrary, Masking::Agreement, 1)
            .unwrap_err();
        assert!(err.to_string().contains('4'), "{err}");
        assert!(
            GroupConfig::flat(members)
                .tolerating(FailureModel::Arbitrary, Masking::Voting, 1)
                .is_ok()
        );
    }
}

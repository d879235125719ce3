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
//!
//! # On-disk format
//!
//! A group member persists nothing of its own: its records are those of
//! the SWIM member it embeds as component 1, each tagged with
//! that component byte in front of SWIM's own record (see
//! [`swim`](crate::swim#on-disk-format) and [`ft_core::record`]):
//!
//! ```text
//! +-------------+-----------------------------------------------+
//! | 1 (SWIM)    | 0 (SELF) | 1 (version) | 1 (tag) | u64 LE   |
//! +-------------+-----------------------------------------------+
//!    1 byte                 SWIM's record, 11 bytes
//! ```
//!
//! At recovery the SWIM member reads its own records back; a record of any
//! other component fails recovery with a [`RecoveryError`], as does a SWIM
//! record that does not decode.

use std::time::Instant;

use ft_core::{
    Component, Counters, FailureModel, NodeId, Outbox, Output, PersistToken, Persisted, Protocol,
    Recover, RecoveryContext, RecoveryError,
};

use crate::membership::{MemberState, Membership};
use crate::sizing::{self, Masking, SizingError};
use crate::swim::{Swim, SwimConfig, SwimEvent, SwimInput, SwimMessage, SwimTimer};

/// The component the SWIM member persists as (on disk: for ever).
const SWIM: Component = Component(1);

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
    /// A coordinator change, reported right after the membership event
    /// that caused it.
    pending: Option<GroupEvent>,
    out: Outbox<Group>,
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

    /// Moves the SWIM member's outputs into ours.
    fn lift(&mut self) {
        self.out.lift(
            SWIM,
            &mut self.swim,
            |m| m,
            |t| t,
            |e| Some(GroupEvent::Membership(e)),
        );
    }

    /// Elects the coordinator again if the view changed since the last
    /// election; a change is reported next.
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
        self.lift();
    }

    fn handle_input(&mut self, now: Instant, input: SwimInput) {
        self.swim.handle_input(now, input);
        self.lift();
    }

    fn handle_timer(&mut self, now: Instant, timer: SwimTimer) {
        self.swim.handle_timer(now, timer);
        self.lift();
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        // A group persists nothing of its own: every token is SWIM's.
        if let Persisted::Inner {
            component: SWIM,
            token,
        } = self.out.persisted(token)
        {
            self.swim.handle_persisted(now, token);
        }
        self.lift();
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        if let Some(e) = self.pending.take() {
            return Some(Output::Event(e));
        }
        let out = self.out.pop()?;
        if let Output::Event(GroupEvent::Membership(_)) = out {
            // A membership event may move the coordinator: report the
            // membership news first, the coordinator change right after.
            // (At poll time, not in `lift`: electing reads the SWIM
            // member's view, and one membership event must be followed at
            // once by the change it caused.)
            self.refresh();
        }
        Some(out)
    }

    fn counters(&self) -> Counters {
        let mut c = self.out.counters();
        c += self.swim.counters();
        c
    }
}

impl Recover for Group {
    type Config = GroupConfig;

    /// # Errors
    /// [`RecoveryError`] if a record is not the SWIM member's or does not
    /// decode (see the [on-disk format](self#on-disk-format)).
    fn recover(config: &GroupConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        crate::recovery::only_components(&ctx, &[SWIM])?;
        // The SWIM member draws from the group's own seed, as it did before
        // records were tagged: the same seed gives the same run.
        let swim = Swim::recover(
            &config.swim,
            RecoveryContext {
                seed: ctx.seed,
                ..ctx.component(SWIM)
            },
        )?;
        let mut g = Group {
            swim,
            structure: config.structure,
            coordinator: None,
            seen_version: u64::MAX,
            pending: None,
            out: Outbox::recovered(&ctx),
        };
        g.refresh();
        g.lift();
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Rumor;
    use crate::swim::SwimRecord;
    use ft_core::harness::{self, Harness};
    use ft_core::{Incarnation, record};

    fn config(structure: Structure) -> GroupConfig {
        let members = (0..5).map(NodeId).collect();
        match structure {
            Structure::Flat => GroupConfig::flat(members),
            Structure::Hierarchical => GroupConfig::hierarchical(members),
        }
    }

    fn member(structure: Structure, me: u64) -> Harness<Group> {
        Harness::new(&config(structure), NodeId(me))
    }

    /// A ping to `target` carrying `rumor`.
    fn gossip(target: u64, rumor: Rumor) -> SwimMessage {
        SwimMessage::Ping {
            seq: 1,
            target: NodeId(target),
            sender_incarnation: Incarnation(0),
            rumors: vec![rumor],
        }
    }

    #[test]
    fn a_suspected_coordinator_is_replaced_and_comes_back_after_refuting() {
        let mut g = member(Structure::Hierarchical, 3);
        let first = g.drain().events;
        assert_eq!(
            first,
            [GroupEvent::Coordinator {
                previous: None,
                current: Some(NodeId(0))
            }]
        );
        assert_eq!(g.core.coordinator(), Some(NodeId(0)));
        assert_eq!(g.core.workers().count(), 4);
        let suspect = Rumor::Suspect {
            node: NodeId(0),
            incarnation: Incarnation(0),
            from: NodeId(1),
        };
        let ev = g.message(NodeId(1), gossip(3, suspect)).drain().events;
        // The membership news first, the coordinator change right after.
        let at = ev
            .iter()
            .position(|e| {
                *e == GroupEvent::Coordinator {
                    previous: Some(NodeId(0)),
                    current: Some(NodeId(1)),
                }
            })
            .expect("the coordinator changed");
        assert!(matches!(ev[at - 1], GroupEvent::Membership(_)));
        assert!(!g.core.is_coordinator());
        let refuted = Rumor::Alive {
            node: NodeId(0),
            incarnation: Incarnation(1),
        };
        let ev = g.message(NodeId(1), gossip(3, refuted)).drain().events;
        assert!(ev.contains(&GroupEvent::Coordinator {
            previous: Some(NodeId(1)),
            current: Some(NodeId(0))
        }));
    }

    #[test]
    fn a_flat_group_has_no_coordinator() {
        let mut g = member(Structure::Flat, 0);
        assert!(g.drain().events.is_empty());
        assert_eq!(g.core.coordinator(), None);
        assert_eq!(g.core.workers().count(), 5);
    }

    #[test]
    fn swim_records_are_tagged_and_read_back_by_the_next_life() {
        let mut g = member(Structure::Flat, 3);
        g.drain();
        // n3 refutes a suspicion: its SWIM member persists incarnation 1.
        let suspect = Rumor::Suspect {
            node: NodeId(3),
            incarnation: Incarnation(0),
            from: NodeId(1),
        };
        let out = g.message(NodeId(1), gossip(3, suspect)).drain();
        let [(token, written)] = &out.persists[..] else {
            panic!("{:?}", out.persists)
        };
        assert_eq!(written[0], 1, "tagged as component 1, SWIM");
        assert_eq!(
            record::decode::<SwimRecord>(written.slice(1..)),
            Ok(SwimRecord::Incarnation(Incarnation(1)))
        );
        // Durable: the group hands the token down, SWIM refutes.
        let ev = g.persisted(*token).drain().events;
        assert!(ev.contains(&GroupEvent::Membership(SwimEvent::Refuted {
            incarnation: Incarnation(1)
        })));
        assert_eq!(g.core.counters().persists, 1);
        // The next life starts above it.
        let ctx = RecoveryContext {
            incarnation: Incarnation(1),
            records: vec![written.clone()],
            ..harness::context(NodeId(3))
        };
        let mut next = Harness::<Group>::recover(&config(Structure::Flat), ctx).unwrap();
        let out = next.drain();
        assert_eq!(out.persists.len(), 1);
        assert_eq!(
            record::decode::<SwimRecord>(out.persists[0].1.slice(1..)),
            Ok(SwimRecord::Incarnation(Incarnation(2)))
        );
        // A record of a component the group does not have is refused.
        let ctx = RecoveryContext {
            incarnation: Incarnation(1),
            records: vec![
                written.clone(),
                record::encode(&SwimRecord::Incarnation(Incarnation(5))),
            ],
            ..harness::context(NodeId(3))
        };
        assert!(matches!(
            Harness::<Group>::recover(&config(Structure::Flat), ctx),
            Err(RecoveryError::Inconsistent(_))
        ));
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

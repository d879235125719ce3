//! The membership view: who is in the group, in which state, at which
//! incarnation.
//!
//! A [`Membership`] is what the failure detectors of this crate produce and
//! what later layers consume (multicast views, commit termination). It changes
//! only through [`Rumor`]s, whose precedence rules (those of SWIM) make the
//! views of different members converge whatever order rumors arrive in:
//!
//! | rumor | overrides |
//! |---|---|
//! | `Alive { i }` | `Alive { j }` or `Suspect { j }` with `i > j`; `Failed { j }` with `i > j` (a rejoin) |
//! | `Suspect { i }` | `Alive { j }` with `i >= j`; `Suspect { j }` or `Failed { j }` with `i > j` |
//! | `Failed { i }` | `Alive { j }` or `Suspect { j }` with `i >= j`; `Failed { j }` with `i > j` |
//!
//! In other words the rumors are ordered by (incarnation, alive < suspect <
//! failed) and a view keeps the greatest it has heard: a total order, which
//! is why views fed the same rumors in any order end up equal. Only a member
//! itself raises its own incarnation, to refute a suspicion or to come back
//! after being declared failed, so "higher incarnation" means "newer word
//! from the member itself".

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{Incarnation, NodeId, Suspicion};

/// What a view believes about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Taking part in the group.
    Alive,
    /// Suspected by someone to have failed; it has a while to refute.
    Suspect,
    /// Declared failed: no longer probed, its work may be taken over. Only
    /// a higher incarnation from the member itself brings it back.
    Failed,
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Failed => "failed",
        })
    }
}

/// One entry of a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Who.
    pub node: NodeId,
    /// The newest incarnation heard of.
    pub incarnation: Incarnation,
    /// What the view believes.
    pub state: MemberState,
    /// When the entry last changed.
    pub since: Instant,
}

/// A piece of membership news, spread by gossip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rumor {
    /// `node` is alive at `incarnation`.
    Alive {
        /// Whom it is about.
        node: NodeId,
        /// Its incarnation.
        incarnation: Incarnation,
    },
    /// `from` suspects `node` (at `incarnation`) to have failed.
    Suspect {
        /// Whom it is about.
        node: NodeId,
        /// The incarnation suspected.
        incarnation: Incarnation,
        /// Who suspects it (several independent suspecters shorten the
        /// suspicion timeout, as in Lifeguard).
        from: NodeId,
    },
    /// `node` (at `incarnation`) has been declared failed.
    Failed {
        /// Whom it is about.
        node: NodeId,
        /// The incarnation declared failed.
        incarnation: Incarnation,
    },
}

impl Rumor {
    /// The member the rumor is about.
    pub fn node(&self) -> NodeId {
        match *self {
            Rumor::Alive { node, .. }
            | Rumor::Suspect { node, .. }
            | Rumor::Failed { node, .. } => node,
        }
    }

    /// The incarnation the rumor names.
    pub fn incarnation(&self) -> Incarnation {
        match *self {
            Rumor::Alive { incarnation, .. }
            | Rumor::Suspect { incarnation, .. }
            | Rumor::Failed { incarnation, .. } => incarnation,
        }
    }

    /// The state the rumor asserts.
    pub fn state(&self) -> MemberState {
        match self {
            Rumor::Alive { .. } => MemberState::Alive,
            Rumor::Suspect { .. } => MemberState::Suspect,
            Rumor::Failed { .. } => MemberState::Failed,
        }
    }

    /// Whether the rumor says something newer than what `member` records
    /// (the precedence table of the module docs).
    pub fn overrides(&self, member: &Member) -> bool {
        outranks(
            (self.incarnation(), self.state()),
            (member.incarnation, member.state),
        )
    }

    /// Whether the rumor says something newer than `other`.
    pub fn overrides_rumor(&self, other: &Rumor) -> bool {
        outranks(
            (self.incarnation(), self.state()),
            (other.incarnation(), other.state()),
        )
    }
}

/// The precedence of rumors: by incarnation, then alive < suspect < failed
/// (the declaration order of [`MemberState`]).
fn outranks(new: (Incarnation, MemberState), old: (Incarnation, MemberState)) -> bool {
    new > old
}

const ALIVE: u8 = 1;
const SUSPECT: u8 = 2;
const FAILED: u8 = 3;

/// The fewest bytes a rumor takes on the wire (tag, node, incarnation).
pub(crate) const RUMOR_MIN_LEN: usize = 17;

impl Wire for Rumor {
    fn encode(&self, buf: &mut BytesMut) {
        match *self {
            Rumor::Alive { node, incarnation } => {
                buf.put_u8(ALIVE);
                buf.put_u64_le(node.0);
                buf.put_u64_le(incarnation.0);
            }
            Rumor::Suspect {
                node,
                incarnation,
                from,
            } => {
                buf.put_u8(SUSPECT);
                buf.put_u64_le(node.0);
                buf.put_u64_le(incarnation.0);
                buf.put_u64_le(from.0);
            }
            Rumor::Failed { node, incarnation } => {
                buf.put_u8(FAILED);
                buf.put_u64_le(node.0);
                buf.put_u64_le(incarnation.0);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let tag = wire::get_u8(buf)?;
        wire::need(buf, 16)?;
        let node = NodeId(buf.get_u64_le());
        let incarnation = Incarnation(buf.get_u64_le());
        match tag {
            ALIVE => Ok(Rumor::Alive { node, incarnation }),
            SUSPECT => Ok(Rumor::Suspect {
                node,
                incarnation,
                from: NodeId(wire::get_u64(buf)?),
            }),
            FAILED => Ok(Rumor::Failed { node, incarnation }),
            tag => Err(DecodeError::UnknownTag { what: "Rumor", tag }),
        }
    }
}

/// A change a rumor made to a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Whose entry changed.
    pub node: NodeId,
    /// The state before (`None` if the member was not in the view).
    pub previous: Option<MemberState>,
    /// The state now.
    pub state: MemberState,
    /// The incarnation now.
    pub incarnation: Incarnation,
}

/// A view of the group: every member with its state and incarnation.
///
/// Bounded by construction: only members it was built with (or
/// [`add`](Membership::add)ed) are tracked, so rumors about strangers (which
/// a hostile peer could invent by the million) are ignored.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    members: BTreeMap<NodeId, Member>,
    version: u64,
}

impl Membership {
    /// A view holding `members`, all alive at [`Incarnation::FIRST`].
    pub fn new(members: impl IntoIterator<Item = NodeId>, now: Instant) -> Self {
        let mut m = Membership::default();
        for node in members {
            m.add(node, Incarnation::FIRST, now);
        }
        m
    }

    // ---- getters ----

    /// The entry of `node`.
    pub fn get(&self, node: NodeId) -> Option<&Member> {
        self.members.get(&node)
    }

    /// The state of `node`, if it is a member.
    pub fn state(&self, node: NodeId) -> Option<MemberState> {
        self.members.get(&node).map(|m| m.state)
    }

    /// The newest incarnation of `node` heard of.
    pub fn incarnation(&self, node: NodeId) -> Option<Incarnation> {
        self.members.get(&node).map(|m| m.incarnation)
    }

    /// Whether `node` is tracked.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }

    /// Every entry, by node id.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The entry after `node` in id order, wrapping around to the first:
    /// for walking the view round-robin.
    pub fn next_after(&self, node: NodeId) -> Option<&Member> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.members
            .range((Excluded(node), Unbounded))
            .next()
            .or_else(|| self.members.iter().next())
            .map(|(_, m)| m)
    }

    /// Members in `state`, by node id.
    pub fn in_state(&self, state: MemberState) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .values()
            .filter(move |m| m.state == state)
            .map(|m| m.node)
    }

    /// Members not declared failed (alive or suspect), by node id.
    pub fn live(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .values()
            .filter(|m| m.state != MemberState::Failed)
            .map(|m| m.node)
    }

    /// Number of members tracked, whatever their state.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no member is tracked.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Goes up by one at every change: two reads with the same version saw
    /// the same view.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The view in [`FailureDetector`](ft_core::FailureDetector) terms:
    /// alive → `Alive`, suspect or failed → `Suspected`, not a member →
    /// `Unknown`.
    pub fn suspicion(&self, node: NodeId) -> Suspicion {
        match self.state(node) {
            Some(MemberState::Alive) => Suspicion::Alive,
            Some(_) => Suspicion::Suspected,
            None => Suspicion::Unknown,
        }
    }

    // ---- mutators ----

    /// Starts tracking `node` (alive at `incarnation`); a member already
    /// tracked is left as it is. Returns whether it was added.
    pub fn add(&mut self, node: NodeId, incarnation: Incarnation, now: Instant) -> bool {
        if self.members.contains_key(&node) {
            return false;
        }
        self.members.insert(
            node,
            Member {
                node,
                incarnation,
                state: MemberState::Alive,
                since: now,
            },
        );
        self.version += 1;
        true
    }

    /// Stops tracking `node` (it left the group for good).
    pub fn remove(&mut self, node: NodeId) -> Option<Member> {
        let m = self.members.remove(&node);
        if m.is_some() {
            self.version += 1;
        }
        m
    }

    /// Applies `rumor` if it [overrides](Rumor::overrides) what the view
    /// holds, and says what changed. Rumors about members not tracked are
    /// ignored.
    pub fn apply(&mut self, rumor: &Rumor, now: Instant) -> Option<Change> {
        let member = self.members.get_mut(&rumor.node())?;
        if !rumor.overrides(member) {
            return None;
        }
        let previous = member.state;
        member.incarnation = rumor.incarnation();
        member.state = rumor.state();
        member.since = now;
        self.version += 1;
        Some(Change {
            node: member.node,
            previous: Some(previous),
            state: member.state,
            incarnation: member.incarnation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alive(n: u64, i: u64) -> Rumor {
        Rumor::Alive {
            node: NodeId(n),
            incarnation: Incarnation(i),
        }
    }
    fn suspect(n: u64, i: u64) -> Rumor {
        Rumor::Suspect {
            node: NodeId(n),
            incarnation: Incarnation(i),
            from: NodeId(9),
        }
    }
    fn failed(n: u64, i: u64) -> Rumor {
        Rumor::Failed {
            node: NodeId(n),
            incarnation: Incarnation(i),
        }
    }

    #[test]
    fn precedence_follows_swim() {
        let now = Instant::now();
        let mut m = Membership::new([NodeId(1)], now);
        // Alive at the same incarnation says nothing new.
        assert!(m.apply(&alive(1, 0), now).is_none());
        // Suspect at the same incarnation wins over alive.
        let c = m.apply(&suspect(1, 0), now).unwrap();
        assert_eq!(
            (c.previous, c.state),
            (Some(MemberState::Alive), MemberState::Suspect)
        );
        // A second suspicion at the same incarnation is old news.
        assert!(m.apply(&suspect(1, 0), now).is_none());
        // The member refutes with a higher incarnation.
        assert_eq!(
            m.apply(&alive(1, 1), now).unwrap().state,
            MemberState::Alive
        );
        // A stale suspicion of the old incarnation no longer applies.
        assert!(m.apply(&suspect(1, 0), now).is_none());
        // Failed at the current incarnation wins.
        assert_eq!(
            m.apply(&failed(1, 1), now).unwrap().state,
            MemberState::Failed
        );
        // Nothing at that incarnation brings it back.
        assert!(m.apply(&alive(1, 1), now).is_none());
        assert!(m.apply(&suspect(1, 1), now).is_none());
        // A rejoin with a higher incarnation does.
        assert_eq!(
            m.apply(&alive(1, 2), now).unwrap().state,
            MemberState::Alive
        );
        assert_eq!(m.incarnation(NodeId(1)), Some(Incarnation(2)));
        // A failure rumor about an older life does not kill the new one.
        assert!(m.apply(&failed(1, 1), now).is_none());
        assert_eq!(m.suspicion(NodeId(1)), Suspicion::Alive);
    }

    #[test]
    fn strangers_are_ignored() {
        let now = Instant::now();
        let mut m = Membership::new([NodeId(1)], now);
        assert!(m.apply(&alive(7, 3), now).is_none());
        assert_eq!(m.len(), 1);
        assert_eq!(m.suspicion(NodeId(7)), Suspicion::Unknown);
        let v = m.version();
        assert!(!m.add(NodeId(1), Incarnation(4), now));
        assert_eq!(m.version(), v);
    }

    fn rumor() -> impl Strategy<Value = Rumor> {
        (0u8..3, 0u64..3, 0u64..4, 0u64..3).prop_map(|(k, n, i, f)| match k {
            0 => alive(n, i),
            1 => Rumor::Suspect {
                node: NodeId(n),
                incarnation: Incarnation(i),
                from: NodeId(f),
            },
            _ => failed(n, i),
        })
    }

    proptest! {
        /// Two views fed the same set of rumors in different orders end the
        /// same: gossip converges whatever the network does to the order.
        #[test]
        fn views_converge_in_any_order(rumors in proptest::collection::vec(rumor(), 0..30), seed in any::<u64>()) {
            let now = Instant::now();
            let ids = [NodeId(0), NodeId(1), NodeId(2)];
            let mut a = Membership::new(ids, now);
            let mut b = Membership::new(ids, now);
            for r in &rumors {
                a.apply(r, now);
            }
            let mut shuffled = rumors.clone();
            ft_core::rng::Rng::new(seed).shuffle(&mut shuffled);
            for r in &shuffled {
                b.apply(r, now);
            }
            for id in ids {
                prop_assert_eq!(
                    a.get(id).map(|m| (m.state, m.incarnation)),
                    b.get(id).map(|m| (m.state, m.incarnation))
                );
            }
        }

        #[test]
        fn rumor_round_trips(r in rumor()) {
            prop_assert_eq!(Rumor::from_bytes(r.to_bytes()), Ok(r));
        }

        #[test]
        fn rumor_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Rumor::from_bytes(Bytes::from(bytes));
        }
    }
}

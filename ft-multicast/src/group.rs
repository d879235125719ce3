//! Groups: who is in one, and how its messages are kept and acknowledged.

use std::fmt;

use ft_core::NodeId;

/// Names a group. Every member configures the same id for the same group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// One group: its members and its sender history.
///
/// Membership is static here: every member lists the same members. A node
/// may be a member of several groups, and may send to a group it is a
/// member of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// The group's id.
    pub id: GroupId,
    /// Its members, each once (duplicates are ignored).
    pub members: Vec<NodeId>,
    /// How many messages each sender keeps until every other member has
    /// acknowledged them (at least 1): its history ring. When the ring is
    /// full a send is refused ([`Refusal::HistoryFull`](crate::Refusal)),
    /// so a sender never runs further ahead of its slowest member than
    /// this: the ring is the flow control and the garbage collection at
    /// once. It also bounds what a receiver holds out of order from one
    /// sender.
    pub history: usize,
    /// The largest payload a member sends or accepts, in bytes.
    pub max_payload: usize,
}

impl GroupConfig {
    /// A group of `members` with a history of 64 messages of at most
    /// 16 KiB.
    pub fn new(id: GroupId, members: impl IntoIterator<Item = NodeId>) -> Self {
        let mut members: Vec<NodeId> = members.into_iter().collect();
        members.sort();
        members.dedup();
        GroupConfig {
            id,
            members,
            history: 64,
            max_payload: 16 * 1024,
        }
    }

    /// The same group with a history ring of `history` messages.
    #[must_use]
    pub fn with_history(mut self, history: usize) -> Self {
        self.history = history;
        self
    }

    /// The same group with payloads of at most `max_payload` bytes.
    #[must_use]
    pub fn with_max_payload(mut self, max_payload: usize) -> Self {
        self.max_payload = max_payload;
        self
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.binary_search(&node).is_ok()
    }

    /// The members other than `me`.
    pub(crate) fn others(&self, me: NodeId) -> Vec<NodeId> {
        self.members.iter().copied().filter(|&m| m != me).collect()
    }

    /// The configuration with every value in range and members sorted.
    pub(crate) fn normalized(mut self) -> Self {
        self.members.sort();
        self.members.dedup();
        self.history = self.history.max(1);
        self
    }
}

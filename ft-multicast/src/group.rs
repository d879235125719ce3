//! Groups: who is in one, and how its messages are kept and acknowledged.

use std::fmt;
use std::time::Duration;

use ft_core::NodeId;

use crate::fec::Fec;
use crate::tree::Tree;

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
#[derive(Clone, Debug, PartialEq)]
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
    /// How receivers tell senders what they have and lack.
    pub feedback: Feedback,
    /// Forward error correction: parity packets after each block of
    /// messages, so receivers repair some losses with no feedback
    /// (`None`, the default: none).
    pub fec: Option<Fec>,
}

/// How a group's receivers feed back to its senders.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Feedback {
    /// Every receiver acknowledges cumulatively and asks the sender for
    /// gaps: the sender frees a message once all have it, and a full ring
    /// refuses sends. Exact, and the sender hears from every receiver.
    Ack,
    /// SRM-style (Floyd et al.): receivers only report gaps, multicast to
    /// the group after a random delay that grows with their distance to
    /// the source, and keep quiet when another receiver asked first; any
    /// member that holds a message may repair it, after a delay of its own
    /// and only if nobody repaired it first. Senders hear nothing for
    /// messages that arrive, so they keep the last
    /// [`history`](GroupConfig::history) messages and forget older ones
    /// (a receiver that asks for those is told it missed them).
    Nack(Srm),
    /// Hierarchical feedback: receivers are arranged, per source, in a
    /// tree of local coordinators ([`Tree`]). Each acknowledges to its
    /// parent the least of its own position and its children's, keeps
    /// what its children still need and repairs them, so the source hears
    /// from its own children only. A member whose parent goes silent
    /// re-attaches to an ancestor. See [`tree`](crate::tree).
    Tree(Tree),
}

/// The timers of [`Feedback::Nack`], in units of the estimated one-way
/// distance `d` between two members (half the smoothed round trip their
/// session messages measure).
///
/// A receiver that sees a gap asks after a delay drawn from
/// `[c1·d, (c1+c2)·d]`, `d` its distance to the source; each further try,
/// and each time it hears another receiver ask first, doubles the
/// interval. A member that holds a requested message repairs it after a
/// delay drawn from `[d1·d', (d1+d2)·d']`, `d'` its distance to the
/// asker, unless it hears a repair first.
///
/// How the delay is drawn within its interval is [`Spread`]: SRM's
/// uniform draw, or (the default) an exponentially rising one that makes
/// early timers rare, so that the first request or repair is usually
/// heard before most others fire. With the uniform draw, `k` members
/// that could all answer send about `1 + k·d/(c2·d)` answers; in a group
/// of 100 where everyone holds a lost message that is dozens of repairs
/// (measured: 39 per lost packet, `tests/implosion.rs` with
/// [`Spread::Uniform`]). The defaults (`c1 = 2, c2 = 4, d1 = 1,
/// d2 = 8`, exponential) were chosen by that measurement: see the
/// README's feedback-implosion table.
#[derive(Clone, Debug, PartialEq)]
pub struct Srm {
    /// The request delay's start, in distances.
    pub c1: f64,
    /// The request delay's spread, in distances.
    pub c2: f64,
    /// The repair delay's start, in distances.
    pub d1: f64,
    /// The repair delay's spread, in distances.
    pub d2: f64,
    /// How delays are drawn within their intervals.
    pub spread: Spread,
    /// How many members besides the source answer a request in the first
    /// round of repairs, drawn at random for each request by each member
    /// on its own (each holder takes part with probability
    /// `repairers / members`). The others wait one repair window and a
    /// round trip more, so a message some member holds is always repaired
    /// in the end; but when all hold it, only about `repairers + 1` race
    /// to repair it, not the whole group. `usize::MAX`: every holder
    /// races, as in SRM.
    pub repairers: usize,
    /// How often each member multicasts a session message (its stream's
    /// position, so tail loss is noticed, and time stamps from which
    /// distances are measured). Every member sends one per interval, so
    /// sessions cost each member `members` messages per interval: a large
    /// group should lengthen it (SRM scales it with the group so sessions
    /// take a fixed share of the bandwidth).
    pub session_interval: Duration,
    /// The distance assumed before one is measured.
    pub default_distance: Duration,
}

/// How a request's or a repair's delay is drawn within its interval
/// `[a·d, (a+b)·d]`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Spread {
    /// Uniformly, as in SRM (Floyd et al.): suppression works while few
    /// members would answer, and fails as they grow in number.
    Uniform,
    /// From an exponential density rising over the interval, with rate
    /// `λ = ln(members) + 1` (Nonnenmacher and Biersack, "Optimal
    /// multicast feedback", 1998): the earliest of many timers still
    /// fires early, and few fire within one distance of it, so the
    /// answers stay near one as the group grows.
    Exponential,
}

impl Default for Srm {
    fn default() -> Self {
        Srm {
            c1: 2.0,
            c2: 4.0,
            d1: 1.0,
            d2: 8.0,
            spread: Spread::Exponential,
            repairers: 2,
            session_interval: Duration::from_millis(200),
            default_distance: Duration::from_millis(5),
        }
    }
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
            feedback: Feedback::Ack,
            fec: None,
        }
    }

    /// The same group with forward error correction ([`Fec`]).
    #[must_use]
    pub fn with_fec(mut self, fec: Fec) -> Self {
        self.fec = Some(fec);
        self
    }

    /// The group of every member of `view`, ft-group's membership view
    /// (whatever each member's state in it: the list is static, and a
    /// member the view later declares dead stays in the group; views that
    /// change a group come with virtual synchrony).
    ///
    /// ```
    /// # use std::time::Instant;
    /// use ft_core::NodeId;
    /// use ft_group::membership::Membership;
    /// use ft_multicast::{GroupConfig, GroupId};
    ///
    /// let view = Membership::new([NodeId(3), NodeId(1), NodeId(2)], Instant::now());
    /// let group = GroupConfig::from_membership(GroupId(7), &view);
    /// assert_eq!(group.members, vec![NodeId(1), NodeId(2), NodeId(3)]);
    /// ```
    pub fn from_membership(id: GroupId, view: &ft_group::membership::Membership) -> Self {
        GroupConfig::new(id, view.iter().map(|m| m.node))
    }

    /// The same group with `feedback`.
    #[must_use]
    pub fn with_feedback(mut self, feedback: Feedback) -> Self {
        self.feedback = feedback;
        self
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
        self.fec = self.fec.and_then(|f| f.normalized(&self.feedback));
        self
    }
}

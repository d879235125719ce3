//! [`Feedback::Tree`](crate::Feedback): hierarchical feedback, for groups
//! too large for every receiver to acknowledge to the sender.
//!
//! # The tree
//!
//! Each source's stream has its own tree over the group's members. Take
//! the members sorted, rotate the list so the source comes first, and
//! number the positions from 0: position 0 (the source) is the root, and
//! the node at position `p > 0` has its parent at `(p - 1) / fanout` and
//! its children at `fanout·p + 1 ..= fanout·p + fanout` (those below the
//! member count): a complete `fanout`-ary tree, filled level by level,
//! of depth about `log_fanout(n)`. Every member computes the same tree from
//! the same member list, with no message. Rotating per source spreads the
//! coordinators' work: a member is an inner node in some sources' trees
//! and a leaf in others'.
//!
//! # Feedback up the tree
//!
//! Data still goes from the source to every member at once (one
//! multicast). Feedback goes up the tree:
//!
//! - a member acknowledges cumulatively **to its parent**, not to the
//!   source, and what it acknowledges is the minimum of its own delivered
//!   position and the positions its children acknowledged to it: so what
//!   any member acknowledges upward is held by its whole subtree, and a
//!   coordinator that crashes right after acknowledging loses nothing
//!   its parent relied on;
//! - the source frees its history from its own children's
//!   acknowledgements only: it hears `fanout` acknowledgements per round,
//!   whatever the group's size;
//! - a coordinator keeps the messages it delivered until its children
//!   acknowledged them (at most a ring's worth), and answers its children's
//!   NACKs from them: repairs are local. What it lacks itself it asks its
//!   own parent for, as any member does. A child whose NACK for the same gap
//!   goes unanswered [`ESCALATE_AFTER`] times asks the source directly
//!   (which repairs, or says the messages are gone: a typed
//!   [`Missed`](crate::McastEvent::Missed));
//! - while the source holds messages, each member sends its children the
//!   source's position every [`Tree::heartbeat`]: it reveals tail loss,
//!   asks for acknowledgements, and is the parent's sign of life. When the
//!   source's history empties it says so once, and the word goes down the
//!   tree.
//!
//! # Crashes: re-attachment
//!
//! A member that hears nothing from its parent for
//! [`Tree::parent_timeout`] while the source holds messages (it probes
//! with its acknowledgement every two heartbeats before that) re-attaches
//! to the next ancestor up, and further up to the source at last: it sends
//! its acknowledgement there, and the ancestor **adopts** it (an
//! acknowledgement from a member of its subtree that is not its child
//! makes it one). When it later hears from a nearer ancestor that waits on
//! it (its own parent, restarted, announces to it), it goes back there and
//! tells the adopter it left.
//!
//! A coordinator stops waiting on a child that has been behind and silent
//! for [`Tree::child_timeout`]: the child is presumed down, and its slot
//! is replaced by one for each of its own children, each starting at the
//! child's last acknowledged position. That position was held by the whole
//! of the child's subtree when it was acknowledged, so nothing already
//! acknowledged upward is lost; and the dead coordinator's own position no
//! longer holds the source back, while its children, which re-attach (and
//! are sent the adopter's announcements at once), still do. A restarted
//! member is a new life: it starts each stream where the source's history
//! starts then, is told [`Missed`](crate::McastEvent::Missed) for what was
//! freed while it was away, and waits on its children again from
//! position 0 (its old children come back to it when they hear it).
//!
//! A member cut off for longer than `child_timeout` is presumed down too;
//! when it comes back it learns from the next announcement or repair what
//! was freed meanwhile, and is told it `Missed` it: never a silent hole.
//! While a member is down for less than `child_timeout`, senders wait for
//! it as with [`Feedback::Ack`](crate::Feedback).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId};

use crate::core::{McastTimer, Multicast};
use crate::group::GroupId;
use crate::message::{MAX_NACK_RANGES, McastMessage};
use crate::receive::Stream;

/// How many NACKs for the same gap a member sends its parent before it
/// asks the source directly: the parent may have freed what was asked
/// (a restarted member asks for older messages than its siblings), or
/// be cut off from its own parent.
pub const ESCALATE_AFTER: u32 = 3;

/// The parameters of [`Feedback::Tree`](crate::Feedback): the shape of
/// each source's tree and its failure timers. See the
/// [module docs](crate::tree).
#[derive(Clone, Debug, PartialEq)]
pub struct Tree {
    /// How many children each coordinator has (at least 1; the source's
    /// feedback load per acknowledgement round).
    pub fanout: usize,
    /// How often a member sends its children the source's position while
    /// the source holds messages (default 100 ms).
    pub heartbeat: Duration,
    /// How long a member hears nothing from its parent, while the source
    /// holds messages, before it re-attaches to the next ancestor
    /// (default 500 ms).
    pub parent_timeout: Duration,
    /// How long a child may stay behind and silent before its coordinator
    /// presumes it down and waits on its children instead (default 2 s).
    /// Longer than `parent_timeout`, so the children of a dead
    /// coordinator re-attach before it is given up.
    pub child_timeout: Duration,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            fanout: 4,
            heartbeat: Duration::from_millis(100),
            parent_timeout: Duration::from_millis(500),
            child_timeout: Duration::from_secs(2),
        }
    }
}

/// Counters of hierarchical feedback, all groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Times this member changed parent: re-attached to an ancestor after
    /// its parent went silent, or came back to a nearer one.
    pub reattached: u64,
    /// Members of its subtree this node adopted as children.
    pub adopted: u64,
    /// Children presumed down (behind and silent for `child_timeout`).
    pub presumed_down: u64,
    /// Adopted children that left for a nearer parent.
    pub left: u64,
    /// Repairs sent to children from what this node kept.
    pub local_repairs: u64,
    /// NACKs sent to the source after [`ESCALATE_AFTER`] unanswered ones.
    pub escalated: u64,
}

/// One source's tree over sorted `members`: see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape<'a> {
    members: &'a [NodeId],
    root: usize,
    fanout: usize,
}

impl<'a> Shape<'a> {
    /// The tree of `source`'s stream, `None` if it is not a member.
    pub(crate) fn new(members: &'a [NodeId], source: NodeId, fanout: usize) -> Option<Self> {
        let root = members.binary_search(&source).ok()?;
        Some(Shape {
            members,
            root,
            fanout: fanout.clamp(1, members.len().max(1)),
        })
    }

    fn position(&self, node: NodeId) -> Option<usize> {
        let i = self.members.binary_search(&node).ok()?;
        let n = self.members.len();
        Some((i + n - self.root) % n)
    }

    fn at(&self, position: usize) -> NodeId {
        self.members[(self.root + position) % self.members.len()]
    }

    /// `node`'s parent (`None` for the source, or a stranger).
    pub(crate) fn parent(&self, node: NodeId) -> Option<NodeId> {
        let p = self.position(node)?;
        (p > 0).then(|| self.at((p - 1) / self.fanout))
    }

    /// `node`'s children.
    pub(crate) fn children(&self, node: NodeId) -> Vec<NodeId> {
        let Some(p) = self.position(node) else {
            return Vec::new();
        };
        let n = self.members.len();
        let first = p.saturating_mul(self.fanout).saturating_add(1);
        (first..first.saturating_add(self.fanout).min(n))
            .map(|q| self.at(q))
            .collect()
    }

    /// `node`'s ancestors, its parent first and the source last.
    pub(crate) fn ancestors(&self, node: NodeId) -> Vec<NodeId> {
        let mut up = Vec::new();
        let mut p = self.position(node).unwrap_or(0);
        while p > 0 {
            p = (p - 1) / self.fanout;
            up.push(self.at(p));
        }
        up
    }

    /// Whether `node` is in `ancestor`'s subtree (and is not `ancestor`).
    pub(crate) fn is_below(&self, node: NodeId, ancestor: NodeId) -> bool {
        let (Some(mut p), Some(a)) = (self.position(node), self.position(ancestor)) else {
            return false;
        };
        while p > 0 {
            p = (p - 1) / self.fanout;
            if p == a {
                return true;
            }
        }
        false
    }
}

/// A child this node waits on in one source's tree.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The most it acknowledged (or, for the child of a child presumed
    /// down, what that child had acknowledged for its whole subtree).
    acked: u64,
    /// Since when it has been behind without a word (reset while it is
    /// caught up, and by each of its messages).
    since: Instant,
    /// It said it acknowledges to a nearer parent now: it is let go once
    /// that parent (or another ancestor of it) is a slot here too.
    left: bool,
}

impl Slot {
    fn new(acked: u64, now: Instant) -> Self {
        Slot {
            acked,
            since: now,
            left: false,
        }
    }
}

/// This node's place in one source's tree, for one life of the source.
#[derive(Debug)]
pub(crate) struct Branch {
    /// The source's life.
    life: Incarnation,
    /// Whom this node acknowledges to now (`None` at the source).
    parent: Option<NodeId>,
    /// When the parent was last heard from.
    heard_parent: Instant,
    /// The children it waits on.
    slots: BTreeMap<NodeId, Slot>,
    /// The most it acknowledged upward.
    upward: u64,
    /// The source's history base, as last heard.
    base: u64,
    /// The first gap last asked for, and how many times in a row.
    asked: (u64, u32),
}

impl Branch {
    fn new(life: Incarnation, parent: Option<NodeId>, children: Vec<NodeId>, now: Instant) -> Self {
        Branch {
            life,
            parent,
            heard_parent: now,
            slots: children
                .into_iter()
                .map(|c| (c, Slot::new(0, now)))
                .collect(),
            upward: 0,
            base: 1,
            asked: (0, 0),
        }
    }

    /// The least position a child acknowledged (`u64::MAX`: no child).
    fn children_min(&self) -> u64 {
        self.slots
            .values()
            .map(|s| s.acked)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Whether it waits on anything: the source holds messages, or this
    /// node has a gap.
    fn active(&self, s: &Stream) -> bool {
        self.base <= s.highest || s.next <= s.highest
    }
}

/// A group's hierarchical-feedback state.
pub(crate) struct TreeState {
    pub(crate) params: Tree,
    me: NodeId,
    members: Vec<NodeId>,
    /// Per source (this node included).
    branches: BTreeMap<NodeId, Branch>,
}

impl TreeState {
    pub(crate) fn new(
        params: Tree,
        me: NodeId,
        life: Incarnation,
        members: Vec<NodeId>,
        now: Instant,
    ) -> Self {
        let mut t = TreeState {
            params,
            me,
            members,
            branches: BTreeMap::new(),
        };
        let children = t.shape(me).map(|s| s.children(me)).unwrap_or_default();
        t.branches
            .insert(me, Branch::new(life, None, children, now));
        t
    }

    fn shape(&self, source: NodeId) -> Option<Shape<'_>> {
        Shape::new(&self.members, source, self.params.fanout)
    }

    /// How far this node's own stream may be freed: the least of its
    /// children's acknowledgements.
    pub(crate) fn freeable(&self) -> u64 {
        self.branches
            .get(&self.me)
            .map_or(u64::MAX, Branch::children_min)
    }

    /// This node's branch of `origin`'s tree for the source's life `life`,
    /// made (or made afresh, for a new life) if needed.
    fn branch(&mut self, origin: NodeId, life: Incarnation, now: Instant) -> &mut Branch {
        let me = self.me;
        let (parent, children) = self
            .shape(origin)
            .map(|s| (s.parent(me), s.children(me)))
            .unwrap_or_default();
        match self.branches.entry(origin) {
            Entry::Vacant(e) => e.insert(Branch::new(life, parent, children, now)),
            Entry::Occupied(e) => {
                let b = e.into_mut();
                if b.life != life {
                    // A new life of the source: positions start again,
                    // and this node waits on its own children again.
                    let heard = b.heard_parent;
                    *b = Branch::new(life, b.parent, children, now);
                    b.heard_parent = heard;
                }
                b
            }
        }
    }

    /// Lets go the children of `origin`'s tree that left for a nearer
    /// parent once an ancestor of theirs is a slot here: what they hold
    /// is waited on through that ancestor. Until then they are waited on
    /// here still (an adopter that let a child go before its new parent
    /// was waited on would acknowledge past it). Returns how many.
    fn let_go(&mut self, origin: NodeId) -> u64 {
        let Some(shape) = Shape::new(&self.members, origin, self.params.fanout) else {
            return 0;
        };
        let Some(b) = self.branches.get_mut(&origin) else {
            return 0;
        };
        let covered: Vec<NodeId> = b
            .slots
            .iter()
            .filter(|&(&c, slot)| {
                slot.left
                    && b.slots
                        .iter()
                        .any(|(&a, s)| !s.left && shape.is_below(c, a))
            })
            .map(|(&c, _)| c)
            .collect();
        for c in &covered {
            b.slots.remove(c);
        }
        covered.len() as u64
    }

    /// Presumes down the children of `origin`'s tree that stayed behind
    /// `highest` without a word for `child_timeout`, waiting on their
    /// children instead from the same position. Returns how many.
    fn presume_down(&mut self, origin: NodeId, highest: u64, now: Instant) -> u64 {
        let timeout = self.params.child_timeout;
        let Some(shape) = Shape::new(&self.members, origin, self.params.fanout) else {
            return 0;
        };
        let Some(b) = self.branches.get_mut(&origin) else {
            return 0;
        };
        let mut gone = Vec::new();
        for (&n, slot) in &mut b.slots {
            if slot.acked >= highest {
                slot.since = now;
            } else if now.saturating_duration_since(slot.since) > timeout {
                gone.push((n, slot.acked));
            }
        }
        for &(n, acked) in &gone {
            b.slots.remove(&n);
            for c in shape.children(n) {
                b.slots.entry(c).or_insert(Slot::new(acked, now));
            }
        }
        gone.len() as u64
    }
}

/// A stream's delivered position, as this node may acknowledge it.
fn own_position(hold_acks: bool, s: &Stream) -> u64 {
    if hold_acks {
        s.released.min(s.next - 1)
    } else {
        s.next - 1
    }
}

impl Multicast {
    // ---- getters ----

    /// With [`Feedback::Tree`](crate::Feedback): whom this node
    /// acknowledges `origin`'s stream to now (its parent in `origin`'s
    /// tree, or the ancestor it re-attached to). `None` for its own
    /// stream, or when it knows nothing of `origin`'s yet.
    pub fn tree_parent(&self, group: GroupId, origin: NodeId) -> Option<NodeId> {
        let t = self.groups.get(&group)?.tree.as_ref()?;
        match t.branches.get(&origin) {
            Some(b) => b.parent,
            None => t.shape(origin)?.parent(self.me),
        }
    }

    /// With `Feedback::Tree`: the members this node waits on in `origin`'s
    /// tree (its children, adopted ones included).
    pub fn tree_children(&self, group: GroupId, origin: NodeId) -> Vec<NodeId> {
        self.groups
            .get(&group)
            .and_then(|g| g.tree.as_ref())
            .and_then(|t| t.branches.get(&origin))
            .map(|b| b.slots.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The counters of hierarchical feedback.
    pub fn tree_stats(&self) -> TreeStats {
        self.tree_stats
    }

    // ---- hooks of the core ----

    /// The core's acknowledgement of `origin`'s stream, in a tree group:
    /// sent to the parent if it says more than before. `false` for
    /// another kind of group.
    pub(crate) fn tree_ack(&mut self, group: GroupId, origin: NodeId) -> bool {
        if self.groups.get(&group).is_none_or(|g| g.tree.is_none()) {
            return false;
        }
        self.send_tree_ack(group, origin, false);
        true
    }

    /// The core's NACK of `origin`'s stream, in a tree group: to the
    /// parent, or to the source after [`ESCALATE_AFTER`] unanswered ones.
    /// `false` for another kind of group.
    pub(crate) fn tree_nack(&mut self, now: Instant, group: GroupId, origin: NodeId) -> bool {
        let Some(g) = self.groups.get_mut(&group) else {
            return false;
        };
        let Some(t) = &mut g.tree else {
            return false;
        };
        let Some(s) = g.streams.get_mut(&origin) else {
            return true;
        };
        let ranges = s.gaps(MAX_NACK_RANGES);
        if ranges.is_empty() {
            s.nack_due = false;
            return true;
        }
        let life = s.life;
        let b = t.branch(origin, life, now);
        let first = ranges[0].0;
        if b.asked.0 == first {
            b.asked.1 = b.asked.1.saturating_add(1);
        } else {
            b.asked = (first, 0);
        }
        let escalate = b.asked.1 >= ESCALATE_AFTER;
        self.stats.nacks_sent += 1;
        match b.parent {
            Some(parent) if parent != origin && !escalate => self.out.send(
                parent,
                McastMessage::TreeNack {
                    group,
                    origin,
                    life,
                    ranges,
                },
            ),
            _ => {
                if escalate {
                    self.tree_stats.escalated += 1;
                }
                self.out.send(
                    origin,
                    McastMessage::Nack {
                        group,
                        life,
                        ranges,
                    },
                );
            }
        }
        self.out.set_timer_after(
            McastTimer::Nack(group, origin),
            now,
            self.config.nack_interval,
        );
        true
    }

    /// A hierarchical-feedback message.
    pub(crate) fn on_tree(&mut self, now: Instant, from: NodeId, msg: McastMessage) {
        let group = msg.group();
        let known = self.groups.get(&group).and_then(|g| {
            let t = g.tree.as_ref()?;
            let origin = match &msg {
                McastMessage::TreeAck { origin, .. }
                | McastMessage::TreeNack { origin, .. }
                | McastMessage::TreeRepair { origin, .. }
                | McastMessage::TreeAnnounce { origin, .. }
                | McastMessage::TreeLeave { origin, .. } => *origin,
                _ => return None,
            };
            t.shape(origin)?;
            Some(())
        });
        if known.is_none() {
            // Not a tree group, or a source that is not a member.
            self.stats.ignored += 1;
            self.out.dropped();
            return;
        }
        match msg {
            McastMessage::TreeAck {
                origin, life, upto, ..
            } => self.on_tree_ack(now, from, group, origin, life, upto),
            McastMessage::TreeNack {
                origin,
                life,
                ranges,
                ..
            } => self.on_tree_nack(now, from, group, origin, life, &ranges),
            McastMessage::TreeRepair {
                origin,
                life,
                seq,
                base,
                payload,
                ..
            } => self.on_tree_repair(now, from, group, origin, life, (seq, base, payload)),
            McastMessage::TreeAnnounce {
                origin,
                life,
                base,
                highest,
                ..
            } => self.on_tree_announce(now, from, group, origin, life, (base, highest)),
            McastMessage::TreeLeave { origin, life, .. } => {
                self.on_tree_leave(now, from, group, origin, life);
            }
            _ => {}
        }
    }

    /// The group's heartbeat: presume silent children down, announce to
    /// children, probe or leave a silent parent.
    pub(crate) fn tree_tick(&mut self, now: Instant, group: GroupId) {
        let me = self.me;
        let my_life = self.life;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(t) = &mut g.tree else { return };
        let params = t.params.clone();
        self.out
            .set_timer_after(McastTimer::Tree(group), now, params.heartbeat);
        // This node's own stream.
        let highest = g.history.highest();
        let down = t.presume_down(me, highest, now);
        self.tree_stats.presumed_down += down;
        if down > 0 {
            Self::free_acknowledged(&mut self.out, g);
        }
        let Some(t) = &mut g.tree else { return };
        if !g.history.is_empty()
            && let Some(b) = t.branches.get(&me)
            && !b.slots.is_empty()
        {
            self.stats.announces_sent += 1;
            self.out.multicast(
                b.slots.keys().copied().collect(),
                McastMessage::TreeAnnounce {
                    group,
                    origin: me,
                    life: my_life,
                    base: g.history.base(),
                    highest,
                },
            );
        }
        // The others' streams.
        let origins: Vec<NodeId> = g.streams.keys().copied().collect();
        let mut acks = Vec::new();
        for origin in origins {
            let s = &g.streams[&origin];
            let (life, highest) = (s.life, s.highest);
            let down = t.presume_down(origin, highest, now);
            self.tree_stats.presumed_down += down;
            let b = t.branch(origin, life, now);
            if down > 0 {
                acks.push((origin, false));
            }
            if !b.active(s) {
                continue;
            }
            if !b.slots.is_empty() {
                self.stats.announces_sent += 1;
                self.out.multicast(
                    b.slots.keys().copied().collect(),
                    McastMessage::TreeAnnounce {
                        group,
                        origin,
                        life,
                        base: b.base,
                        highest,
                    },
                );
            }
            let Some(parent) = b.parent else { continue };
            let silent = now.saturating_duration_since(b.heard_parent);
            if silent > params.parent_timeout && parent != origin {
                // The parent is gone: the next ancestor up.
                let up = Shape::new(&t.members, origin, params.fanout)
                    .map(|sh| sh.ancestors(me))
                    .unwrap_or_default();
                let b = t.branch(origin, life, now);
                let next = up
                    .iter()
                    .position(|&a| a == parent)
                    .and_then(|i| up.get(i + 1))
                    .copied()
                    .unwrap_or(origin);
                b.parent = Some(next);
                b.heard_parent = now;
                self.tree_stats.reattached += 1;
                acks.push((origin, true));
            } else if silent >= params.heartbeat * 2 {
                // A probe: the acknowledgement again.
                acks.push((origin, true));
            }
        }
        for (origin, force) in acks {
            self.send_tree_ack(group, origin, force);
        }
    }

    // ---- handle_* helpers ----

    /// Sends `origin`'s acknowledgement to the parent: the least of this
    /// node's position and its children's. Unless `force`d, only if it
    /// says more than the last one. Frees what every child has.
    fn send_tree_ack(&mut self, group: GroupId, origin: NodeId, force: bool) {
        let hold = self.hold_acks;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(t) = &mut g.tree else { return };
        let Some(s) = g.streams.get_mut(&origin) else {
            return;
        };
        let Some(b) = t.branches.get_mut(&origin).filter(|b| b.life == s.life) else {
            return;
        };
        let own = own_position(hold, s);
        s.acked = own;
        let children = b.children_min();
        // What every child has is kept no longer.
        while s.recent.front().is_some_and(|&(seq, _)| seq <= children) {
            s.recent.pop_front();
        }
        let upto = own.min(children);
        if !force && upto <= b.upward {
            return;
        }
        b.upward = b.upward.max(upto);
        let Some(parent) = b.parent else { return };
        self.stats.acks_sent += 1;
        self.out.send(
            parent,
            McastMessage::TreeAck {
                group,
                origin,
                life: s.life,
                upto,
            },
        );
    }

    /// After a change of `origin`'s slots: the source frees (and says so
    /// when its history empties); a coordinator acknowledges anew, after
    /// the acknowledgement delay.
    fn slots_changed(&mut self, now: Instant, group: GroupId, origin: NodeId) {
        let me = self.me;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if origin == me {
            let was_empty = g.history.is_empty();
            Self::free_acknowledged(&mut self.out, g);
            if !was_empty && g.history.is_empty() {
                self.final_announce(group);
            }
            return;
        }
        let Some(s) = g.streams.get_mut(&origin) else {
            return;
        };
        if !s.ack_due {
            s.ack_due = true;
            self.out
                .set_timer_after(McastTimer::Ack(group, origin), now, self.config.ack_delay);
        }
    }

    /// This node's history emptied: every child is told once (and each
    /// tells its own), so the tree stops waiting.
    fn final_announce(&mut self, group: GroupId) {
        let Some(g) = self.groups.get(&group) else {
            return;
        };
        let Some(b) = g.tree.as_ref().and_then(|t| t.branches.get(&self.me)) else {
            return;
        };
        if b.slots.is_empty() {
            return;
        }
        self.stats.announces_sent += 1;
        self.out.multicast(
            b.slots.keys().copied().collect(),
            McastMessage::TreeAnnounce {
                group,
                origin: self.me,
                life: self.life,
                base: g.history.base(),
                highest: g.history.highest(),
            },
        );
    }

    fn on_tree_ack(
        &mut self,
        now: Instant,
        child: NodeId,
        group: GroupId,
        origin: NodeId,
        life: Incarnation,
        upto: u64,
    ) {
        let me = self.me;
        let my_life = self.life;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(t) = &mut g.tree else { return };
        let below = t.shape(origin).is_some_and(|s| s.is_below(child, me));
        if !below {
            // Only a member of this node's subtree waits on it.
            self.stats.ignored += 1;
            return;
        }
        let (highest, inactive, b) = if origin == me {
            if life != my_life {
                return;
            }
            let empty = g.history.is_empty();
            let b = t.branches.get_mut(&me).expect("made with the group");
            ((g.history.base(), g.history.highest()), empty, b)
        } else {
            let Some(s) = g.streams.get(&origin).filter(|s| s.life == life) else {
                return;
            };
            let b = t.branch(origin, life, now);
            ((b.base, s.highest), !b.active(s), b)
        };
        // Never beyond what this node knows was sent.
        let upto = upto.min(highest.1);
        let slot = b.slots.entry(child).or_insert_with(|| {
            self.tree_stats.adopted += 1;
            Slot::new(0, now)
        });
        slot.acked = slot.acked.max(upto);
        slot.since = now;
        slot.left = false;
        self.tree_stats.left += t.let_go(origin);
        if inactive {
            // A probe while nothing is held: the child missed the word.
            self.stats.announces_sent += 1;
            self.out.send(
                child,
                McastMessage::TreeAnnounce {
                    group,
                    origin,
                    life,
                    base: highest.0,
                    highest: highest.1,
                },
            );
        }
        self.slots_changed(now, group, origin);
    }

    fn on_tree_nack(
        &mut self,
        now: Instant,
        child: NodeId,
        group: GroupId,
        origin: NodeId,
        life: Incarnation,
        ranges: &[(u64, u64)],
    ) {
        if origin == self.me {
            self.on_nack(child, group, life, ranges);
            return;
        }
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let window = g.config.history;
        let Some(t) = &mut g.tree else { return };
        let Some(s) = g.streams.get(&origin).filter(|s| s.life == life) else {
            return;
        };
        let b = t.branch(origin, life, now);
        // Only the numbers kept are looked at: a NACK naming billions
        // costs no more than one naming what is kept.
        let (lo, hi) = match (s.recent.front(), s.recent.back()) {
            (Some(&(first, _)), Some(&(last, _))) => (first, last),
            _ => (1, 0),
        };
        let mut budget = window;
        'ranges: for &(first, last) in ranges {
            for seq in first.max(lo)..=last.min(hi) {
                if budget == 0 {
                    break 'ranges;
                }
                let Some(payload) = s.recent(seq) else {
                    continue;
                };
                budget -= 1;
                self.stats.repairs_sent += 1;
                self.tree_stats.local_repairs += 1;
                self.out.retransmit(
                    child,
                    seq,
                    McastMessage::TreeRepair {
                        group,
                        origin,
                        life,
                        seq,
                        base: b.base.min(seq),
                        payload: payload.clone(),
                    },
                );
            }
        }
        if ranges.iter().any(|&(first, _)| first < b.base) {
            // Asked for what the source freed: the base says so.
            self.stats.announces_sent += 1;
            self.out.send(
                child,
                McastMessage::TreeAnnounce {
                    group,
                    origin,
                    life,
                    base: b.base,
                    highest: s.highest,
                },
            );
        }
    }

    fn on_tree_repair(
        &mut self,
        now: Instant,
        _repairer: NodeId,
        group: GroupId,
        origin: NodeId,
        life: Incarnation,
        (seq, base, payload): (u64, u64, Bytes),
    ) {
        if origin == self.me {
            self.stats.ignored += 1;
            return;
        }
        // From any member (the core checked that): a repair is what the
        // source sent under that number, whoever kept it.
        self.on_data(now, origin, group, life, (seq, base.min(seq), payload));
    }

    fn on_tree_announce(
        &mut self,
        now: Instant,
        from: NodeId,
        group: GroupId,
        origin: NodeId,
        life: Incarnation,
        (base, highest): (u64, u64),
    ) {
        let me = self.me;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let window = g.config.history;
        let Some(t) = &mut g.tree else { return };
        let up = t.shape(origin).map(|s| s.ancestors(me)).unwrap_or_default();
        let Some(rank) = up.iter().position(|&a| a == from) else {
            // Only an ancestor announces to this node.
            self.stats.ignored += 1;
            return;
        };
        if origin == me || base == 0 || base > highest.saturating_add(1) {
            self.stats.ignored += 1;
            return;
        }
        if Self::stream_of(&mut self.out, g, origin, life, base).is_none() {
            return;
        }
        let (Some(t), Some(s)) = (&mut g.tree, g.streams.get_mut(&origin)) else {
            return;
        };
        let b = t.branch(origin, life, now);
        let was_active = b.active(s);
        let current = b
            .parent
            .and_then(|p| up.iter().position(|&a| a == p))
            .unwrap_or(usize::MAX);
        let mut attach = false;
        if rank < current {
            // A nearer ancestor waits on this node (it announces only to
            // those it waits on): back to it, and the adopter is told.
            if let Some(old) = b.parent {
                self.out.send(
                    old,
                    McastMessage::TreeLeave {
                        group,
                        origin,
                        life,
                    },
                );
            }
            b.parent = Some(from);
            self.tree_stats.reattached += 1;
            attach = true;
        }
        if b.parent == Some(from) {
            b.heard_parent = now;
        }
        b.base = b.base.max(base);
        let base = b.base;
        self.delivered.clear();
        Self::skip_to_base(&mut self.out, s, base, &mut self.delivered, group, origin);
        s.remember(&self.delivered, window);
        s.highest = s.highest.max(highest);
        let first_nack = s.next <= s.highest && !s.nack_due;
        if first_nack {
            s.nack_due = true;
        }
        let now_inactive = was_active && !b.active(s);
        let forward: Vec<NodeId> = if now_inactive {
            b.slots.keys().copied().collect()
        } else {
            Vec::new()
        };
        let (stream_highest, from_parent) = (s.highest, b.parent == Some(from));
        self.emit_delivered(group, origin, life);
        if !forward.is_empty() {
            // The source holds nothing more: the word goes down.
            self.stats.announces_sent += 1;
            self.out.multicast(
                forward,
                McastMessage::TreeAnnounce {
                    group,
                    origin,
                    life,
                    base,
                    highest: stream_highest,
                },
            );
        }
        if attach || (from_parent && base <= highest) {
            // The parent waits on this node: where it stands, now.
            self.send_tree_ack(group, origin, true);
        }
        if first_nack {
            self.nack(now, group, origin);
        }
    }

    fn on_tree_leave(
        &mut self,
        now: Instant,
        child: NodeId,
        group: GroupId,
        origin: NodeId,
        life: Incarnation,
    ) {
        let me = self.me;
        let my_life = self.life;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(t) = &mut g.tree else { return };
        let own_child = t.shape(origin).and_then(|s| s.parent(child)) == Some(me);
        let current = if origin == me {
            my_life
        } else {
            match g.streams.get(&origin) {
                Some(s) => s.life,
                None => return,
            }
        };
        if own_child || life != current {
            return;
        }
        let Some(b) = t.branches.get_mut(&origin).filter(|b| b.life == life) else {
            return;
        };
        let Some(slot) = b.slots.get_mut(&child) else {
            return;
        };
        slot.left = true;
        let gone = t.let_go(origin);
        if gone > 0 {
            self.tree_stats.left += gone;
            self.slots_changed(now, group, origin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<NodeId> {
        (0..n).map(|i| NodeId(i * 10)).collect()
    }

    #[test]
    fn each_source_roots_a_complete_fanout_ary_tree_of_every_member() {
        for n in 1..=23u64 {
            let members = ids(n);
            for fanout in 1..=5 {
                for &source in &members {
                    let shape = Shape::new(&members, source, fanout).unwrap();
                    assert_eq!(shape.parent(source), None);
                    assert!(shape.ancestors(source).is_empty());
                    let mut seen = vec![source];
                    for &m in &members {
                        let children = shape.children(m);
                        assert!(children.len() <= fanout);
                        for &c in &children {
                            assert_eq!(shape.parent(c), Some(m));
                            assert!(shape.is_below(c, m));
                            assert!(!shape.is_below(m, c));
                        }
                        seen.extend(children);
                        if m != source {
                            // Every path leads to the source.
                            let up = shape.ancestors(m);
                            assert_eq!(up.last(), Some(&source));
                            assert_eq!(up.first().copied(), shape.parent(m));
                            assert!(shape.is_below(m, source));
                        }
                    }
                    // Each member is somebody's child exactly once.
                    seen.sort();
                    assert_eq!(seen, members);
                }
            }
        }
    }

    #[test]
    fn the_shape_is_the_sorted_list_rotated_to_the_source_and_filled_level_by_level() {
        // Members 0, 10, …, 90; source 40: positions 0..10 are 40, 50, …,
        // 90, 0, 10, 20, 30.
        let members = ids(10);
        let shape = Shape::new(&members, NodeId(40), 3).unwrap();
        assert_eq!(
            shape.children(NodeId(40)),
            vec![NodeId(50), NodeId(60), NodeId(70)]
        );
        // Position 1 (50) has positions 4..=6: 80, 90, 0.
        assert_eq!(
            shape.children(NodeId(50)),
            vec![NodeId(80), NodeId(90), NodeId(0)]
        );
        // Position 2 (60) has positions 7..=9: 10, 20, 30.
        assert_eq!(
            shape.children(NodeId(60)),
            vec![NodeId(10), NodeId(20), NodeId(30)]
        );
        assert!(shape.children(NodeId(70)).is_empty());
        assert_eq!(shape.ancestors(NodeId(20)), vec![NodeId(60), NodeId(40)]);
        assert!(!shape.is_below(NodeId(20), NodeId(50)));
        // Not a member: no place in the tree.
        assert_eq!(shape.parent(NodeId(5)), None);
        assert!(shape.children(NodeId(5)).is_empty());
        assert!(Shape::new(&members, NodeId(5), 3).is_none());
        // A fanout of 0 is taken as 1 (a chain), one above n as n.
        let chain = Shape::new(&members, NodeId(0), 0).unwrap();
        assert_eq!(chain.children(NodeId(0)), vec![NodeId(10)]);
        let star = Shape::new(&members, NodeId(0), 99).unwrap();
        assert_eq!(star.children(NodeId(0)).len(), 9);
    }

    #[test]
    fn a_presumed_down_child_is_replaced_by_its_children_at_its_position() {
        let now = Instant::now();
        let params = Tree {
            fanout: 2,
            child_timeout: Duration::from_secs(1),
            ..Tree::default()
        };
        // Members 0..7, source 0: 0 → {1, 2}, 1 → {3, 4}, 2 → {5, 6}.
        let members: Vec<NodeId> = (0..7).map(NodeId).collect();
        let mut t = TreeState::new(params, NodeId(0), Incarnation(0), members, now);
        let b = t.branches.get_mut(&NodeId(0)).unwrap();
        b.slots.get_mut(&NodeId(1)).unwrap().acked = 5;
        b.slots.get_mut(&NodeId(2)).unwrap().acked = 9;
        assert_eq!(t.freeable(), 5);
        // Behind (9 sent), but not silent long enough.
        assert_eq!(
            t.presume_down(NodeId(0), 9, now + Duration::from_millis(900)),
            0
        );
        // Node 2 is caught up, so its silence does not count.
        assert_eq!(
            t.presume_down(NodeId(0), 9, now + Duration::from_millis(1500)),
            1
        );
        let b = &t.branches[&NodeId(0)];
        let slots: Vec<(NodeId, u64)> = b.slots.iter().map(|(&n, s)| (n, s.acked)).collect();
        assert_eq!(slots, vec![(NodeId(2), 9), (NodeId(3), 5), (NodeId(4), 5)]);
        // What node 1 acknowledged stays the bound until its children say
        // more.
        assert_eq!(t.freeable(), 5);
    }

    // ---- the core's tree paths, driven by hand ----

    use crate::core::McastConfig;
    use crate::group::{Feedback, GroupConfig};
    use ft_core::{Output, Protocol, Recover, RecoveryContext};

    const G: GroupId = GroupId(1);

    /// Node `me` of members 0..7 with fanout 2: source 0's tree is
    /// 0 → {1, 2}, 1 → {3, 4}, 2 → {5, 6}.
    fn node(me: u64, now: Instant) -> Multicast {
        let group = GroupConfig::new(G, (0..7).map(NodeId))
            .with_history(8)
            .with_feedback(Feedback::Tree(Tree {
                fanout: 2,
                ..Tree::default()
            }));
        let ctx = RecoveryContext {
            node: NodeId(me),
            incarnation: Incarnation(0),
            records: Vec::new(),
            seed: me,
            now,
        };
        Multicast::recover(&McastConfig::new(vec![group]), ctx).unwrap()
    }

    /// The messages sent, each with its destinations.
    fn sent(m: &mut Multicast) -> Vec<(Vec<NodeId>, McastMessage)> {
        std::iter::from_fn(|| m.poll_output())
            .filter_map(|o| match o {
                Output::Send { to, msg } => Some((vec![to], msg)),
                Output::Multicast { to, msg } => Some((to, msg)),
                _ => None,
            })
            .collect()
    }

    fn data(seq: u64) -> McastMessage {
        McastMessage::Data {
            group: G,
            life: Incarnation(0),
            seq,
            base: 1,
            payload: Bytes::from(vec![seq as u8]),
        }
    }

    fn ack(upto: u64) -> McastMessage {
        McastMessage::TreeAck {
            group: G,
            origin: NodeId(0),
            life: Incarnation(0),
            upto,
        }
    }

    /// The acknowledgements sent: (to, upto).
    fn acks(out: &[(Vec<NodeId>, McastMessage)]) -> Vec<(NodeId, u64)> {
        out.iter()
            .filter_map(|(to, m)| match m {
                McastMessage::TreeAck { upto, .. } => Some((to[0], *upto)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_coordinator_acknowledges_the_least_of_its_own_and_its_childrens_positions() {
        let now = Instant::now();
        let mut c = node(1, now);
        for seq in 1..=5 {
            c.handle_message(now, NodeId(0), data(seq));
        }
        c.handle_timer(now, McastTimer::Ack(G, NodeId(0)));
        // Its children have said nothing: nothing to acknowledge upward.
        assert!(acks(&sent(&mut c)).is_empty());
        c.handle_message(now, NodeId(3), ack(5));
        c.handle_message(now, NodeId(4), ack(3));
        c.handle_timer(now, McastTimer::Ack(G, NodeId(0)));
        assert_eq!(acks(&sent(&mut c)), vec![(NodeId(0), 3)]);
        // A child ahead of the coordinator counts for what it has itself.
        c.handle_message(now, NodeId(4), ack(9));
        c.handle_timer(now, McastTimer::Ack(G, NodeId(0)));
        assert_eq!(acks(&sent(&mut c)), vec![(NodeId(0), 5)]);
        // A stranger to its subtree is not waited on.
        c.handle_message(now, NodeId(5), ack(1));
        assert_eq!(c.tree_children(G, NodeId(0)), vec![NodeId(3), NodeId(4)]);
    }

    #[test]
    fn the_source_frees_on_its_childrens_acknowledgements_alone() {
        let now = Instant::now();
        let mut s = node(0, now);
        for token in 0..4 {
            s.handle_input(
                now,
                crate::McastInput::Send {
                    group: G,
                    token,
                    payload: Bytes::from_static(b"x"),
                },
            );
        }
        sent(&mut s);
        s.handle_message(now, NodeId(1), ack(4));
        assert_eq!(s.freed_upto(G), 0);
        s.handle_message(now, NodeId(2), ack(2));
        assert_eq!(s.freed_upto(G), 2);
        // A plain acknowledgement from a grandchild frees nothing.
        s.handle_message(
            now,
            NodeId(5),
            McastMessage::Ack {
                group: G,
                life: Incarnation(0),
                upto: 4,
            },
        );
        assert_eq!(s.freed_upto(G), 2);
        s.handle_message(now, NodeId(2), ack(4));
        assert_eq!(s.freed_upto(G), 4);
        // An acknowledgement of what was never sent frees nothing later.
        s.handle_message(now, NodeId(1), ack(100));
        s.handle_message(now, NodeId(2), ack(100));
        // Emptied: the children are told so.
        let out = sent(&mut s);
        assert!(out.iter().any(|(to, m)| to == &vec![NodeId(1), NodeId(2)]
            && matches!(
                m,
                McastMessage::TreeAnnounce {
                    base: 5,
                    highest: 4,
                    ..
                }
            )));
        s.handle_input(
            now,
            crate::McastInput::Send {
                group: G,
                token: 9,
                payload: Bytes::from_static(b"x"),
            },
        );
        assert_eq!(s.freed_upto(G), 4);
        // A child that missed the word and probes is told again.
        s.handle_message(now, NodeId(2), ack(5));
        s.handle_message(now, NodeId(1), ack(5));
        sent(&mut s);
        s.handle_message(now, NodeId(1), ack(5));
        assert!(sent(&mut s).iter().any(|(to, m)| to == &vec![NodeId(1)]
            && matches!(
                m,
                McastMessage::TreeAnnounce {
                    base: 6,
                    highest: 5,
                    ..
                }
            )));
    }

    #[test]
    fn a_coordinator_repairs_its_children_from_what_they_have_not_acknowledged() {
        let now = Instant::now();
        let mut c = node(1, now);
        for seq in 1..=5 {
            c.handle_message(now, NodeId(0), data(seq));
        }
        sent(&mut c);
        let nack = McastMessage::TreeNack {
            group: G,
            origin: NodeId(0),
            life: Incarnation(0),
            ranges: vec![(2, 3), (5, u64::MAX >> 2)],
        };
        c.handle_message(now, NodeId(3), nack.clone());
        let repaired: Vec<(NodeId, u64)> = sent(&mut c)
            .into_iter()
            .filter_map(|(to, m)| match m {
                McastMessage::TreeRepair { seq, .. } => Some((to[0], seq)),
                _ => None,
            })
            .collect();
        assert_eq!(
            repaired,
            vec![(NodeId(3), 2), (NodeId(3), 3), (NodeId(3), 5)]
        );
        assert_eq!(c.tree_stats().local_repairs, 3);
        // Once both children have everything, nothing is kept.
        c.handle_message(now, NodeId(3), ack(5));
        c.handle_message(now, NodeId(4), ack(5));
        c.handle_timer(now, McastTimer::Ack(G, NodeId(0)));
        assert_eq!(c.held().recent, 0);
        c.handle_message(now, NodeId(3), nack);
        assert!(
            sent(&mut c)
                .iter()
                .all(|(_, m)| !matches!(m, McastMessage::TreeRepair { .. }))
        );
    }

    #[test]
    fn a_gap_is_asked_of_the_parent_then_of_the_source() {
        let now = Instant::now();
        let mut leaf = node(3, now);
        leaf.handle_message(now, NodeId(0), data(2));
        let mut asked = Vec::new();
        for _ in 0..5 {
            asked.extend(sent(&mut leaf).into_iter().filter_map(|(to, m)| match m {
                McastMessage::TreeNack { .. } | McastMessage::Nack { .. } => Some(to[0]),
                _ => None,
            }));
            leaf.handle_timer(now, McastTimer::Nack(G, NodeId(0)));
        }
        assert_eq!(
            asked,
            vec![NodeId(1), NodeId(1), NodeId(1), NodeId(0), NodeId(0)]
        );
        // (The last timer sent a sixth, to the source too.)
        assert_eq!(leaf.tree_stats().escalated, 3);
    }

    #[test]
    fn a_silent_parent_is_left_for_the_grandparent_and_a_restarted_one_regained() {
        let now = Instant::now();
        let mut leaf = node(3, now);
        leaf.handle_message(now, NodeId(0), data(1));
        sent(&mut leaf);
        assert_eq!(leaf.tree_parent(G, NodeId(0)), Some(NodeId(1)));
        // The source still holds message 1, and node 1 says nothing.
        let mut t = now;
        while leaf.tree_parent(G, NodeId(0)) == Some(NodeId(1)) {
            t += Duration::from_millis(100);
            assert!(t < now + Duration::from_secs(1), "never left");
            leaf.handle_timer(t, McastTimer::Tree(G));
        }
        assert_eq!(leaf.tree_parent(G, NodeId(0)), Some(NodeId(0)));
        // It attached to the source with its acknowledgement.
        assert!(acks(&sent(&mut leaf)).contains(&(NodeId(0), 1)));
        // Node 1 is back and announces to it: back to node 1, and the
        // source is told it left.
        let announce = McastMessage::TreeAnnounce {
            group: G,
            origin: NodeId(0),
            life: Incarnation(0),
            base: 1,
            highest: 1,
        };
        leaf.handle_message(t, NodeId(1), announce);
        assert_eq!(leaf.tree_parent(G, NodeId(0)), Some(NodeId(1)));
        let out = sent(&mut leaf);
        assert!(
            out.iter().any(
                |(to, m)| to == &vec![NodeId(0)] && matches!(m, McastMessage::TreeLeave { .. })
            )
        );
        assert!(acks(&out).contains(&(NodeId(1), 1)));
        assert_eq!(leaf.tree_stats().reattached, 2);
        // An announcement from a member that is not an ancestor is ignored.
        let before = leaf.stats().ignored;
        leaf.handle_message(
            t,
            NodeId(5),
            McastMessage::TreeAnnounce {
                group: G,
                origin: NodeId(0),
                life: Incarnation(0),
                base: 1,
                highest: 1_000,
            },
        );
        assert_eq!(leaf.stats().ignored, before + 1);
    }
}

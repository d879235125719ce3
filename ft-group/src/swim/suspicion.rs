//! Suspicions of other members: who suspects them, at which incarnation,
//! and when each suspicion runs out (Lifeguard's dynamic timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ft_core::{Incarnation, NodeId, Outbox};

use super::{Swim, SwimConfig, SwimTimer};
use crate::membership::{MemberState, Membership, Rumor};

/// One suspicion of another member.
#[derive(Debug)]
struct Suspicion {
    /// The incarnation suspected: news of a higher one (a refutation) ends
    /// the suspicion.
    incarnation: Incarnation,
    started: Instant,
    /// The members that suspect it, independently: each confirmation
    /// shortens the timeout.
    confirmers: BTreeSet<NodeId>,
}

/// The suspicions this member is timing, one per suspect, each with its
/// [`SwimTimer::Suspicion`].
#[derive(Debug, Default)]
pub(super) struct Suspicions(BTreeMap<NodeId, Suspicion>);

impl Suspicions {
    /// Starts timing a suspicion of `node` at `incarnation`, raised by
    /// `suspecter`.
    pub(super) fn raise(
        &mut self,
        node: NodeId,
        incarnation: Incarnation,
        suspecter: NodeId,
        now: Instant,
    ) {
        self.0.insert(
            node,
            Suspicion {
                incarnation,
                started: now,
                confirmers: BTreeSet::from([suspecter]),
            },
        );
    }

    /// `suspecter` suspects `node` at `incarnation` too: `None` if no
    /// suspicion of that incarnation is being timed, else whether the
    /// suspecter is a new, independent confirmation.
    pub(super) fn confirm(
        &mut self,
        node: NodeId,
        incarnation: Incarnation,
        suspecter: NodeId,
    ) -> Option<bool> {
        let s = self.0.get_mut(&node)?;
        (s.incarnation == incarnation).then(|| s.confirmers.insert(suspecter))
    }

    /// Sets (or moves) the timer of the suspicion of `node`: its start plus
    /// the timeout its confirmations earn, in a group of `n`, and never in
    /// the past.
    pub(super) fn arm(
        &self,
        out: &mut Outbox<Swim>,
        node: NodeId,
        now: Instant,
        config: &SwimConfig,
        n: usize,
    ) {
        let Some(s) = self.0.get(&node) else {
            return;
        };
        let confirmations = s.confirmers.len().saturating_sub(1);
        let at = s
            .started
            .checked_add(timeout(config, n, confirmations))
            .map(|at| at.max(now));
        if let Some(at) = at {
            out.set_timer(SwimTimer::Suspicion(node), at);
        }
    }

    /// News that settles `node` (alive again, or failed): stops timing its
    /// suspicion, if one was timed.
    pub(super) fn settle(&mut self, out: &mut Outbox<Swim>, node: NodeId) {
        if self.0.remove(&node).is_some() {
            out.cancel_timer(SwimTimer::Suspicion(node));
        }
    }

    /// The timer of `node`'s suspicion fired: forgets it, and says which
    /// incarnation was suspected.
    pub(super) fn expire(&mut self, node: NodeId) -> Option<Incarnation> {
        self.0.remove(&node).map(|s| s.incarnation)
    }

    /// Stops timing every suspicion (this member halted).
    pub(super) fn cancel_all(&mut self, out: &mut Outbox<Swim>) {
        for (node, _) in std::mem::take(&mut self.0) {
            out.cancel_timer(SwimTimer::Suspicion(node));
        }
    }

    /// Times again every suspicion `view` still holds of a member other
    /// than `me` (their timers were lost when this member halted), as if
    /// raised `now` by nobody in particular.
    pub(super) fn resume(
        &mut self,
        out: &mut Outbox<Swim>,
        view: &Membership,
        me: NodeId,
        now: Instant,
        config: &SwimConfig,
    ) {
        let suspects: Vec<(NodeId, Incarnation)> = view
            .iter()
            .filter(|m| m.state == MemberState::Suspect && m.node != me)
            .map(|m| (m.node, m.incarnation))
            .collect();
        for (node, incarnation) in suspects {
            self.0.entry(node).or_insert(Suspicion {
                incarnation,
                started: now,
                confirmers: BTreeSet::new(),
            });
            self.arm(out, node, now, config, view.len());
        }
    }
}

/// The suspicion timeout, in a group of `n`, of a suspicion confirmed by
/// `confirmations` members besides the first suspecter: see
/// [`Swim::suspicion_timeout`].
pub(super) fn timeout(config: &SwimConfig, n: usize, confirmations: usize) -> Duration {
    let min = config.min_suspicion_timeout(n);
    let max = config.max_suspicion_timeout(n);
    // Lifeguard expects suspicion_mult - 2 independent confirmations,
    // fewer in a group too small to provide them.
    let k = (config.suspicion_mult as usize)
        .saturating_sub(2)
        .min(n.saturating_sub(2));
    if k == 0 || max <= min {
        return min;
    }
    let frac = ((confirmations as f64) + 1.0).ln() / ((k as f64) + 1.0).ln();
    let t = max.as_secs_f64() - (max - min).as_secs_f64() * frac;
    Duration::try_from_secs_f64(t.max(min.as_secs_f64())).unwrap_or(max)
}

impl Swim {
    /// Sets the timer of the suspicion of `node`.
    pub(super) fn arm_suspicion(&mut self, now: Instant, node: NodeId) {
        self.suspicions
            .arm(&mut self.out, node, now, &self.config, self.view.len());
    }

    /// The suspicion of `node` ran out: unless it was refuted meanwhile,
    /// this member declares it failed.
    pub(super) fn on_suspicion_timeout(&mut self, now: Instant, node: NodeId) {
        let Some(incarnation) = self.suspicions.expire(node) else {
            return;
        };
        if self
            .view
            .get(node)
            .is_some_and(|m| m.state == MemberState::Suspect && m.incarnation == incarnation)
        {
            self.stats.failures_declared += 1;
            self.out.note(
                "suspicion timed out: member declared failed",
                Some(node),
                Some(incarnation),
                None,
            );
            self.learn(now, Rumor::Failed { node, incarnation });
        }
    }
}

//! SWIM-style gossip membership (Das, Gupta & Motivala 2002) with the
//! Lifeguard extensions (Dadgar et al. 2018), as a sans-IO [`Protocol`].
//!
//! Once per protocol period a member probes one other member, taken in a
//! shuffled round-robin order (so every member is probed within a bounded
//! number of periods, unlike a purely random choice):
//!
//! 1. it sends a `Ping`; an `Ack` within the probe timeout ends the probe;
//! 2. otherwise it asks `k` other members to ping the target for it
//!    (`PingReq`); they forward the target's ack, or send a `Nack` when the
//!    target stayed silent;
//! 3. with no ack by the end of the period the target becomes **suspect**.
//!    A suspect that learns of it refutes by announcing itself alive with a
//!    higher **incarnation**; one that has not refuted when its suspicion
//!    times out is declared **failed**.
//!
//! Membership news (alive, suspect, failed) is not sent in messages of its
//! own: it rides on pings and acks (infection-style dissemination), each
//! rumor a bounded number of times. A member's load is therefore a constant
//! number of messages per period whatever the group size.
//!
//! Lifeguard adds three things, all here: a **local health** score that
//! stretches this member's own timeouts and period when the evidence says
//! *it* is the slow one (failed probes, missing nacks, having to refute);
//! **nacks** from intermediaries, which provide that evidence; and a
//! **dynamic suspicion timeout** that starts long and shrinks as other
//! members independently confirm the suspicion.
//!
//! The subject's option "on failure detection, pretend you failed as well"
//! is [`OnDeclaredFailed::FailStop`]: a member that learns it was declared
//! failed stops (a fail-stop announcement: everyone can now rely on the old
//! incarnation being gone) and rejoins with a new incarnation.
//!
//! Incarnations are kept on stable storage: a member persists a new
//! incarnation (an 8-byte record) and announces it only once it is durable,
//! and a restarted member starts above every incarnation it ever announced,
//! so a rumor about an earlier life can never be mistaken for the current
//! one.
//!
//! # Healing partitions
//!
//! A member declared failed is still probed, with the news, for
//! [`gossip_to_the_dead`](SwimConfig::gossip_to_the_dead), and after that
//! by a low-rate **reconnect loop** for ever
//! ([`reconnect_interval`](SwimConfig::reconnect_interval), Serf's): a
//! member that was only cut off learns it was declared failed, rejoins, and
//! the two sides' views merge. Every message also carries its sender's own
//! incarnation, so a member held failed at the incarnation it still runs
//! under is told so by the first member it speaks to. Without the loop, a
//! partition that outlasts detection plus gossip to the dead splits the
//! group for ever: each side holds the other failed and sends it nothing.
//!
//! # Trust model
//!
//! SWIM trusts its members; this implementation bounds what one can do.
//!
//! - **A member** can declare any other member suspect or failed at the
//!   incarnation it holds: that is the protocol (the victim refutes, or,
//!   with [`OnDeclaredFailed::FailStop`], halts and rejoins with a new
//!   incarnation). It can claim any incarnation for *itself* (first-hand
//!   word is believed). What it cannot do is pin another member down: news
//!   heard second-hand may raise a member's incarnation at most
//!   [`max_hearsay_rise`](SwimConfig::max_hearsay_rise) above what the
//!   receiver knows (for news about the receiver itself, above what it
//!   announced), so one forged `Failed { victim, u64::MAX }` is dropped
//!   everywhere, and saturating anyone takes `2⁶⁴ / max_hearsay_rise`
//!   forged rumors. A member that does reach `u64::MAX` and is declared
//!   failed there stays halted ([`SwimEvent::CannotRejoin`]) rather than
//!   flapping. Nor can it grow anyone's memory: views hold only the
//!   configured members, a message at most [`MAX_RUMORS`] rumors, and a
//!   member serves at most [`max_forwarded`](SwimConfig::max_forwarded)
//!   indirect probes at once.
//! - **A non-member** is ignored: messages whose sender is not in
//!   [`members`](SwimConfig::members), and rumors about strangers, are
//!   dropped.
//! - **What waits for an authenticated transport**: the sender a message is
//!   attributed to is whatever the transport says. Over plain UDP anyone who
//!   can send packets can claim to be any member, and then has a member's
//!   powers above. Keeping outsiders out needs a channel that authenticates
//!   its peers (TLS, DTLS, or a MAC in a channel wrapper); no channel of
//!   this workspace does that yet.
//!
//! # Methods
//!
//! - getters: [`membership`](Swim::membership), [`id`](Swim::id),
//!   [`incarnation`](Swim::incarnation), [`local_health`](Swim::local_health),
//!   [`is_halted`](Swim::is_halted), [`stats`](Swim::stats),
//!   [`counters`](Protocol::counters);
//! - `handle_*`: the [`Protocol`] methods;
//! - mutators: through [`SwimInput`];
//! - `poll_output`: drain after every `handle_*` call.

mod broadcast;
mod config;
mod message;

pub use config::{OnDeclaredFailed, SwimConfig};
pub use message::{MAX_RUMORS, SwimMessage};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{
    Counters, Incarnation, NodeId, Output, PersistToken, Protocol, Recover, RecoveryContext,
};

use crate::membership::{Change, MemberState, Membership, Rumor};
use broadcast::Broadcasts;
use ft_core::rng::Rng;

/// What a member asks of its SWIM core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwimInput {
    /// Rejoin after having been declared failed (with
    /// [`OnDeclaredFailed::FailStop`] and no automatic rejoin).
    Rejoin,
}

/// What SWIM tells its application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwimEvent {
    /// Another member's entry changed (joined, suspected, refuted, failed,
    /// restarted with a new incarnation).
    Changed(Change),
    /// This member was suspected and has refuted with `incarnation`.
    Refuted {
        /// The new incarnation.
        incarnation: Incarnation,
    },
    /// This member learnt it was declared failed and now acts as failed
    /// ([`OnDeclaredFailed::FailStop`]): whatever it was doing for the group
    /// should stop.
    DeclaredFailed {
        /// The incarnation that was declared failed.
        incarnation: Incarnation,
    },
    /// This member (re)joined with `incarnation`, after a fail-stop or a
    /// restart.
    Rejoined {
        /// The new incarnation.
        incarnation: Incarnation,
    },
    /// This member was declared failed at incarnation `u64::MAX` and cannot
    /// rejoin under its identity: nothing can outbid that failure. It stays
    /// halted; only a new [`NodeId`] brings it back.
    CannotRejoin,
}

/// SWIM's named timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SwimTimer {
    /// The end of a protocol period: judge the probe, start the next.
    Probe,
    /// The direct ping went unanswered: ask others.
    ProbeTimeout,
    /// A suspicion of this member runs out.
    Suspicion(NodeId),
    /// An indirect probe run on someone else's behalf (by our sequence
    /// number) runs out: nack.
    Forward(u64),
    /// Time to rejoin after a fail-stop.
    Rejoin,
    /// Time to ping a member declared failed long ago (the reconnect loop).
    Reconnect,
}

/// Counts of what a member did, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwimStats {
    /// Probes started (direct pings).
    pub probes: u64,
    /// Probes answered, directly or through an intermediary.
    pub probes_acked: u64,
    /// Indirect-probe requests sent.
    pub ping_reqs_sent: u64,
    /// Indirect probes run for others.
    pub ping_reqs_served: u64,
    /// Indirect-probe requests refused because too many were running.
    pub ping_reqs_refused: u64,
    /// Nacks received.
    pub nacks_received: u64,
    /// Nacks expected but never received (evidence this member is slow).
    pub nacks_missed: u64,
    /// Suspicions this member raised itself.
    pub suspicions_raised: u64,
    /// Failures this member declared itself.
    pub failures_declared: u64,
    /// Suspicions of this member it refuted.
    pub refutations: u64,
    /// Times this member learnt it was declared failed.
    pub declared_failed: u64,
    /// Rumors piggybacked.
    pub rumors_sent: u64,
    /// Pings of members declared failed long ago (the reconnect loop).
    pub reconnect_probes: u64,
    /// Of those, answered: the member was alive after all.
    pub reconnects_answered: u64,
    /// Second-hand rumors dropped for raising an incarnation by more than
    /// [`SwimConfig::max_hearsay_rise`].
    pub hearsay_refused: u64,
    /// Rejoins refused because this member's incarnation is `u64::MAX` and
    /// cannot rise: it stays halted (a new identity is needed).
    pub rejoins_refused: u64,
}

#[derive(Debug)]
struct Probe {
    target: NodeId,
    /// Probing a member already declared failed (gossip to the dead): its
    /// silence proves nothing new and says nothing about our health.
    target_failed: bool,
    incarnation: Incarnation,
    seq: u64,
    acked: bool,
    expected_nacks: u64,
    nacks: u64,
}

#[derive(Debug)]
struct Suspicion {
    incarnation: Incarnation,
    started: Instant,
    confirmers: BTreeSet<NodeId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Waiting for the incarnation of a new life to be durable.
    Joining,
    Running,
    /// Declared failed, acting as failed (fail-stop).
    Halted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Join,
    Refute,
}

/// A SWIM member. See the [module docs](self).
#[derive(Debug)]
pub struct Swim {
    config: SwimConfig,
    me: NodeId,
    incarnation: Incarnation,
    view: Membership,
    rng: Rng,
    mode: Mode,
    persisting: Option<(PersistToken, Incarnation, Why)>,
    next_token: u64,
    probe_order: Vec<NodeId>,
    probe_index: usize,
    probe: Option<Probe>,
    next_seq: u64,
    /// The sequence number of the last reconnect ping.
    reconnect_seq: Option<u64>,
    forwarded: BTreeMap<u64, (NodeId, u64)>,
    suspicions: BTreeMap<NodeId, Suspicion>,
    awareness: u32,
    broadcasts: Broadcasts,
    sync_cursor: NodeId,
    out: VecDeque<Output<Swim>>,
    counters: Counters,
    stats: SwimStats,
}

impl Swim {
    // ---- getters ----

    /// This member's view of the group.
    pub fn membership(&self) -> &Membership {
        &self.view
    }

    /// This member.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// This member's current (announced) incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Lifeguard's local health score: 0 is healthy; timeouts and the
    /// period are multiplied by one more than this.
    pub fn local_health(&self) -> u32 {
        self.awareness
    }

    /// Whether this member is acting as failed after being declared failed.
    pub fn is_halted(&self) -> bool {
        self.mode == Mode::Halted
    }

    /// Whether this member is waiting for a new incarnation to become
    /// durable before it takes part (after a restart or a fail-stop).
    pub fn is_joining(&self) -> bool {
        self.mode == Mode::Joining
    }

    /// What this member did so far in this life.
    pub fn stats(&self) -> SwimStats {
        self.stats
    }

    /// Rumors waiting to be piggybacked: at most one per member, so
    /// bounded by the group size however much news arrives.
    pub fn pending_rumors(&self) -> usize {
        self.broadcasts.len()
    }

    /// The configuration.
    pub fn config(&self) -> &SwimConfig {
        &self.config
    }

    /// The suspicion timeout that applies now to a suspicion confirmed by
    /// `confirmations` members besides the first suspecter.
    pub fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let n = self.view.len();
        let min = self.config.min_suspicion_timeout(n);
        let max = self.config.max_suspicion_timeout(n);
        // Lifeguard expects suspicion_mult - 2 independent confirmations,
        // fewer in a group too small to provide them.
        let k = (self.config.suspicion_mult as usize)
            .saturating_sub(2)
            .min(n.saturating_sub(2));
        if k == 0 || max <= min {
            return min;
        }
        let frac = ((confirmations as f64) + 1.0).ln() / ((k as f64) + 1.0).ln();
        let t = max.as_secs_f64() - (max - min).as_secs_f64() * frac;
        Duration::try_from_secs_f64(t.max(min.as_secs_f64())).unwrap_or(max)
    }

    // ---- internals ----

    /// Sets `timer` to fire `after` from `now`. A deadline beyond what an
    /// `Instant` can hold (an absurd configuration) is never reached, so
    /// the timer is simply not set rather than panicking.
    fn set_timer(&mut self, timer: SwimTimer, now: Instant, after: Duration) {
        if let Some(at) = now.checked_add(after) {
            self.out.push_back(Output::SetTimer { timer, at });
        }
    }

    fn scale(&self, d: Duration) -> Duration {
        d.saturating_mul(self.awareness + 1)
    }

    fn adjust_awareness(&mut self, delta: i64) {
        let max = i64::from(self.config.awareness_max_multiplier.saturating_sub(1));
        self.awareness = (i64::from(self.awareness) + delta).clamp(0, max) as u32;
    }

    fn limit(&self) -> u32 {
        self.config.retransmit_limit(self.view.len())
    }

    fn rumors(&mut self) -> Vec<Rumor> {
        let max = self.config.max_piggyback.min(MAX_RUMORS);
        let limit = self.limit();
        let mut r = self.broadcasts.take(max, limit);
        if r.len() < max
            && let Some(entry) = self.next_sync_entry()
            && !r.iter().any(|x| x.node() == entry.node())
        {
            r.push(entry);
        }
        self.stats.rumors_sent += r.len() as u64;
        r
    }

    /// Anti-entropy trickle: every message also carries one entry of the
    /// view, taken in turn. Each rumor is sent only a bounded number of
    /// times, so a member can miss one (and then nothing would ever tell
    /// it); with the trickle, views converge however unlucky the losses,
    /// at the cost of one rumor per message whatever the group size.
    /// Suspicions are not repeated: they must come from a suspecter.
    fn next_sync_entry(&mut self) -> Option<Rumor> {
        for _ in 0..self.view.len() {
            let m = self.view.next_after(self.sync_cursor)?;
            self.sync_cursor = m.node;
            if let Some(r) = settled(m) {
                return Some(r);
            }
        }
        None
    }

    fn send(&mut self, to: NodeId, msg: SwimMessage) {
        self.counters.messages_sent += 1;
        self.out.push_back(Output::Send { to, msg });
    }

    fn event(&mut self, e: SwimEvent) {
        self.out.push_back(Output::Event(e));
    }

    fn token(&mut self) -> PersistToken {
        self.next_token += 1;
        PersistToken(self.next_token)
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Persist before you speak: the new incarnation is announced only once
    /// it is durable, so no later life can reuse it.
    fn persist_incarnation(&mut self, incarnation: Incarnation, why: Why) {
        if let Some((_, pending, w)) = &mut self.persisting
            && *pending >= incarnation
        {
            // A rejoin rides on a refutation already on its way to disk.
            if why == Why::Join {
                *w = Why::Join;
            }
            return;
        }
        let token = self.token();
        self.counters.persists += 1;
        self.persisting = Some((token, incarnation, why));
        self.out.push_back(Output::Persist {
            record: Bytes::copy_from_slice(&incarnation.0.to_le_bytes()),
            token,
        });
    }

    /// Members not declared failed, other than this one and `except`.
    fn others(&self, except: NodeId) -> Vec<NodeId> {
        self.view
            .live()
            .filter(|&n| n != self.me && n != except)
            .collect()
    }

    fn start_probing(&mut self, now: Instant, first_in: Duration) {
        self.set_timer(SwimTimer::Probe, now, first_in);
        if let Some(every) = self.reconnect_interval() {
            // A random phase, so that members do not reconnect in lockstep.
            let phase = Duration::from_nanos(
                self.rng
                    .below(every.as_nanos().min(u128::from(u64::MAX)) as u64),
            );
            self.set_timer(SwimTimer::Reconnect, now, phase);
        }
    }

    fn reconnect_interval(&self) -> Option<Duration> {
        // A zero interval would fire at the same instant for ever.
        self.config
            .reconnect_interval
            .map(|d| d.max(Duration::from_millis(1)))
    }

    /// The reconnect loop: a member cut off for longer than detection plus
    /// gossip to the dead is probed by nobody else, so without this the two
    /// sides of a long partition would never hear each other again.
    fn on_reconnect_timer(&mut self, now: Instant) {
        let Some(every) = self.reconnect_interval() else {
            return;
        };
        self.set_timer(SwimTimer::Reconnect, now, every);
        let long_failed: Vec<NodeId> = self
            .view
            .iter()
            .filter(|m| {
                m.node != self.me
                    && m.state == MemberState::Failed
                    && now.saturating_duration_since(m.since) >= self.config.gossip_to_the_dead
            })
            .map(|m| m.node)
            .collect();
        if long_failed.is_empty() {
            return;
        }
        // Serf's scaling: with probability failed / live, so the group as a
        // whole sends about one ping per failed member per interval.
        let live = self.view.live().count().max(1) as u64;
        if self.rng.below(live) >= long_failed.len() as u64 {
            return;
        }
        let target = long_failed[self.rng.below(long_failed.len() as u64) as usize];
        let seq = self.next_seq();
        self.reconnect_seq = Some(seq);
        self.stats.reconnect_probes += 1;
        let msg = self.ping_with_news(seq, target);
        self.send(target, msg);
    }

    /// A ping of `target` carrying our rumors and, if it is bad news, what
    /// we believe of the target: a suspect can refute at once, and a member
    /// cut off from the group learns it was declared failed and rejoins
    /// rather than living on in a split view.
    fn ping_with_news(&mut self, seq: u64, target: NodeId) -> SwimMessage {
        let mut rumors = self.rumors();
        let incarnation = self.view.incarnation(target).unwrap_or_default();
        let news = match self.view.state(target) {
            Some(MemberState::Suspect) => Some(Rumor::Suspect {
                node: target,
                incarnation,
                from: self.me,
            }),
            Some(MemberState::Failed) => Some(Rumor::Failed {
                node: target,
                incarnation,
            }),
            _ => None,
        };
        if let Some(news) = news
            && rumors.len() < MAX_RUMORS
            && !rumors.contains(&news)
        {
            rumors.push(news);
        }
        SwimMessage::Ping {
            seq,
            target,
            sender_incarnation: self.incarnation,
            rumors,
        }
    }

    fn on_probe_timer(&mut self, now: Instant) {
        if let Some(p) = self.probe.take()
            && !p.acked
            && !p.target_failed
        {
            // Lifeguard: nacks that did not come back mean *we* are not
            // hearing; with no intermediaries to ask, a failed probe itself
            // counts against us.
            let missed = p.expected_nacks.saturating_sub(p.nacks);
            self.stats.nacks_missed += missed;
            let delta = if p.expected_nacks > 0 {
                missed as i64
            } else {
                1
            };
            self.adjust_awareness(delta);
            // A failed probe of a member already suspect at the same
            // incarnation is an independent confirmation (it shortens the
            // suspicion, Lifeguard).
            if self
                .view
                .get(p.target)
                .is_some_and(|m| m.state != MemberState::Failed && m.incarnation == p.incarnation)
            {
                self.stats.suspicions_raised += 1;
                let rumor = Rumor::Suspect {
                    node: p.target,
                    incarnation: p.incarnation,
                    from: self.me,
                };
                self.learn(now, rumor);
            }
        }
        self.start_probe(now);
        let period = self.scale(self.config.protocol_period);
        self.set_timer(SwimTimer::Probe, now, period);
    }

    fn next_target(&mut self, now: Instant) -> Option<NodeId> {
        for _ in 0..=self.probe_order.len() {
            if self.probe_index >= self.probe_order.len() {
                // SWIM's randomized round-robin: a fresh order every pass.
                self.probe_index = 0;
                let mut order = std::mem::take(&mut self.probe_order);
                self.rng.shuffle(&mut order);
                self.probe_order = order;
                if self.probe_order.is_empty() {
                    return None;
                }
            }
            let candidate = self.probe_order[self.probe_index];
            self.probe_index += 1;
            let probe = self.view.get(candidate).is_some_and(|m| {
                m.state != MemberState::Failed
                    || now.saturating_duration_since(m.since) < self.config.gossip_to_the_dead
            });
            if probe {
                return Some(candidate);
            }
        }
        None
    }

    fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.next_target(now) else {
            return;
        };
        let incarnation = self.view.incarnation(target).unwrap_or_default();
        let target_failed = self.view.state(target) == Some(MemberState::Failed);
        let seq = self.next_seq();
        self.stats.probes += 1;
        self.probe = Some(Probe {
            target,
            target_failed,
            incarnation,
            seq,
            acked: false,
            expected_nacks: 0,
            nacks: 0,
        });
        let msg = self.ping_with_news(seq, target);
        self.send(target, msg);
        let timeout = self.scale(self.config.probe_timeout);
        self.set_timer(SwimTimer::ProbeTimeout, now, timeout);
    }

    fn on_probe_timeout(&mut self) {
        let Some(p) = &self.probe else { return };
        if p.acked || p.expected_nacks > 0 || p.target_failed {
            return;
        }
        let (target, seq) = (p.target, p.seq);
        let mut helpers = self.others(target);
        self.rng.shuffle(&mut helpers);
        helpers.truncate(self.config.indirect_checks);
        if let Some(p) = &mut self.probe {
            p.expected_nacks = helpers.len() as u64;
        }
        for h in helpers {
            self.stats.ping_reqs_sent += 1;
            let rumors = self.rumors();
            self.send(
                h,
                SwimMessage::PingReq {
                    seq,
                    target,
                    sender_incarnation: self.incarnation,
                    rumors,
                },
            );
        }
    }

    fn on_ack(&mut self, seq: u64) -> bool {
        if self.reconnect_seq == Some(seq) {
            self.reconnect_seq = None;
            self.stats.reconnects_answered += 1;
            return true;
        }
        if let Some(p) = &mut self.probe
            && p.seq == seq
        {
            if !p.acked {
                p.acked = true;
                self.stats.probes_acked += 1;
                self.adjust_awareness(-1);
                self.out.push_back(Output::CancelTimer {
                    timer: SwimTimer::ProbeTimeout,
                });
            }
            return true;
        }
        if let Some((requester, their_seq)) = self.forwarded.remove(&seq) {
            self.out.push_back(Output::CancelTimer {
                timer: SwimTimer::Forward(seq),
            });
            let rumors = self.rumors();
            self.send(
                requester,
                SwimMessage::Ack {
                    seq: their_seq,
                    sender_incarnation: self.incarnation,
                    rumors,
                },
            );
            return true;
        }
        false
    }

    fn on_ping_req(&mut self, now: Instant, from: NodeId, seq: u64, target: NodeId) -> bool {
        if target == self.me || target == from || !self.view.contains(target) {
            return false;
        }
        if self.forwarded.len() >= self.config.max_forwarded {
            self.stats.ping_reqs_refused += 1;
            return false;
        }
        self.stats.ping_reqs_served += 1;
        let mine = self.next_seq();
        self.forwarded.insert(mine, (from, seq));
        let rumors = self.rumors();
        self.send(
            target,
            SwimMessage::Ping {
                seq: mine,
                target,
                sender_incarnation: self.incarnation,
                rumors,
            },
        );
        let timeout = self.scale(self.config.probe_timeout);
        self.set_timer(SwimTimer::Forward(mine), now, timeout);
        true
    }

    /// Takes in one rumor that arrived in a message from `from`. A rumor
    /// about the sender itself is first-hand word and believed at any
    /// incarnation; any other is hearsay, and may raise the incarnation it
    /// names at most [`SwimConfig::max_hearsay_rise`] above what this member
    /// knows (for news about itself: above what it announced). Only a member
    /// itself raises its incarnation, one step per refutation, rejoin or
    /// restart, so a bigger jump is a forgery (or a record of long ago, which
    /// the member's own word will correct).
    fn hear(&mut self, now: Instant, from: NodeId, rumor: Rumor) {
        let node = rumor.node();
        if node != from {
            let known = if node == self.me {
                Some(self.persisting.map_or(self.incarnation, |p| p.1))
            } else {
                self.view.incarnation(node)
            };
            if known.is_some_and(|k| {
                rumor.incarnation().0 > k.0.saturating_add(self.config.max_hearsay_rise)
            }) {
                self.stats.hearsay_refused += 1;
                return;
            }
        }
        self.learn(now, rumor);
    }

    /// Takes in one rumor, heard from another member or raised here.
    fn learn(&mut self, now: Instant, rumor: Rumor) {
        let node = rumor.node();
        if node == self.me {
            self.about_me(now, rumor);
            return;
        }
        // A further suspecter of the same incarnation: not news to the view,
        // but it shortens the suspicion (Lifeguard) and is passed on so
        // others can count it too.
        if let Rumor::Suspect {
            incarnation,
            from: suspecter,
            ..
        } = rumor
            && let Some(s) = self.suspicions.get_mut(&node)
            && s.incarnation == incarnation
        {
            if s.confirmers.insert(suspecter) {
                self.broadcasts.push(rumor);
                self.arm_suspicion(now, node);
            }
            return;
        }
        let Some(change) = self.view.apply(&rumor, now) else {
            self.correct_if_stale(rumor);
            return;
        };
        self.broadcasts.push(rumor);
        match rumor {
            Rumor::Suspect {
                incarnation,
                from: suspecter,
                ..
            } => {
                self.suspicions.insert(
                    node,
                    Suspicion {
                        incarnation,
                        started: now,
                        confirmers: BTreeSet::from([suspecter]),
                    },
                );
                self.arm_suspicion(now, node);
            }
            Rumor::Alive { .. } | Rumor::Failed { .. } => {
                if self.suspicions.remove(&node).is_some() {
                    self.out.push_back(Output::CancelTimer {
                        timer: SwimTimer::Suspicion(node),
                    });
                }
            }
        }
        self.event(SwimEvent::Changed(change));
    }

    /// Anti-entropy: a rumor older than what the view holds means its
    /// sender missed the newer news (every rumor is sent a bounded number of
    /// times, so some member can miss it). Spread the newer entry again;
    /// the answer about to go to that sender carries it. Suspicions are not
    /// repeated this way: they must come from a suspecter.
    fn correct_if_stale(&mut self, rumor: Rumor) {
        let Some(newer) = self.view.get(rumor.node()).and_then(settled) else {
            return;
        };
        if newer != rumor && newer.overrides_rumor(&rumor) {
            self.broadcasts.push(newer);
        }
    }

    fn arm_suspicion(&mut self, now: Instant, node: NodeId) {
        let Some(s) = self.suspicions.get(&node) else {
            return;
        };
        let confirmations = s.confirmers.len().saturating_sub(1);
        let at = s
            .started
            .checked_add(self.suspicion_timeout(confirmations))
            .map(|at| at.max(now));
        if let Some(at) = at {
            self.out.push_back(Output::SetTimer {
                timer: SwimTimer::Suspicion(node),
                at,
            });
        }
    }

    fn on_suspicion_timeout(&mut self, now: Instant, node: NodeId) {
        let Some(s) = self.suspicions.remove(&node) else {
            return;
        };
        if self
            .view
            .get(node)
            .is_some_and(|m| m.state == MemberState::Suspect && m.incarnation == s.incarnation)
        {
            self.stats.failures_declared += 1;
            let rumor = Rumor::Failed {
                node,
                incarnation: s.incarnation,
            };
            self.learn(now, rumor);
        }
    }

    fn about_me(&mut self, now: Instant, rumor: Rumor) {
        let announced = self.persisting.map_or(self.incarnation, |p| p.1);
        let inc = rumor.incarnation();
        match rumor {
            Rumor::Failed { .. }
                if inc >= self.incarnation
                    && matches!(
                        self.config.on_declared_failed,
                        OnDeclaredFailed::FailStop { .. }
                    ) =>
            {
                self.halt(now, inc);
            }
            // Refute: only this member may raise its incarnation. (A
            // suspicion below one already on its way to disk needs nothing.)
            Rumor::Suspect { .. } | Rumor::Failed { .. }
                if inc >= self.incarnation && inc >= announced =>
            {
                self.stats.refutations += 1;
                // Lifeguard: being suspected suggests we are the slow one.
                self.adjust_awareness(1);
                self.persist_incarnation(Incarnation(inc.0.saturating_add(1)), Why::Refute);
            }
            Rumor::Suspect { .. } | Rumor::Failed { .. } if self.persisting.is_none() => {
                // News about an earlier incarnation: the sender missed our
                // last announcement (its copies ran out before reaching it).
                // Say it again; the answer about to go out carries it.
                self.broadcasts.push(Rumor::Alive {
                    node: self.me,
                    incarnation: self.incarnation,
                });
            }
            Rumor::Alive { .. } if inc > announced => {
                // Someone claims a newer life of ours than we announced (a
                // forgery, or news from a life whose record was lost):
                // outbid it.
                self.persist_incarnation(Incarnation(inc.0.saturating_add(1)), Why::Refute);
            }
            _ => {}
        }
    }

    fn halt(&mut self, now: Instant, declared: Incarnation) {
        self.stats.declared_failed += 1;
        self.mode = Mode::Halted;
        self.incarnation = self.incarnation.max(declared);
        // The view shows what everyone else now believes about us.
        self.view.apply(
            &Rumor::Failed {
                node: self.me,
                incarnation: self.incarnation,
            },
            now,
        );
        self.probe = None;
        self.out.push_back(Output::CancelTimer {
            timer: SwimTimer::Probe,
        });
        self.out.push_back(Output::CancelTimer {
            timer: SwimTimer::ProbeTimeout,
        });
        self.out.push_back(Output::CancelTimer {
            timer: SwimTimer::Reconnect,
        });
        for (seq, _) in std::mem::take(&mut self.forwarded) {
            self.out.push_back(Output::CancelTimer {
                timer: SwimTimer::Forward(seq),
            });
        }
        for (node, _) in std::mem::take(&mut self.suspicions) {
            self.out.push_back(Output::CancelTimer {
                timer: SwimTimer::Suspicion(node),
            });
        }
        self.broadcasts.clear();
        self.event(SwimEvent::DeclaredFailed {
            incarnation: self.incarnation,
        });
        if let OnDeclaredFailed::FailStop {
            rejoin_after: Some(after),
        } = self.config.on_declared_failed
        {
            self.set_timer(SwimTimer::Rejoin, now, after);
        }
    }

    fn rejoin(&mut self) {
        if self.mode != Mode::Halted {
            return;
        }
        if self.incarnation == Incarnation(u64::MAX) {
            // Nothing can outbid the failure of the last incarnation: under
            // this identity the member stays failed (the hearsay bound makes
            // reaching here take 2⁶⁴ / max_hearsay_rise forged rumors).
            self.stats.rejoins_refused += 1;
            self.event(SwimEvent::CannotRejoin);
            return;
        }
        self.mode = Mode::Joining;
        self.persist_incarnation(Incarnation(self.incarnation.0.saturating_add(1)), Why::Join);
    }

    /// The new incarnation is durable: announce it.
    fn on_incarnation_durable(&mut self, now: Instant, incarnation: Incarnation, why: Why) {
        self.incarnation = self.incarnation.max(incarnation);
        if self.mode == Mode::Halted {
            // A refutation that became durable after we were declared
            // failed: a halted member announces nothing.
            return;
        }
        let alive = Rumor::Alive {
            node: self.me,
            incarnation: self.incarnation,
        };
        self.view.apply(&alive, now);
        self.broadcasts.push(alive);
        match why {
            Why::Refute => {
                if self.mode == Mode::Running {
                    self.event(SwimEvent::Refuted {
                        incarnation: self.incarnation,
                    });
                    // A refutation races the suspicion timeout: push it now
                    // rather than wait for the next ping or ack to carry it.
                    self.announce();
                }
            }
            Why::Join => {
                self.mode = Mode::Running;
                self.event(SwimEvent::Rejoined {
                    incarnation: self.incarnation,
                });
                // Nobody probes a member they believe failed, so a member
                // coming back tells a few others itself; gossip does the rest.
                self.announce();
                // Suspicions the view still holds lost their timers when we
                // halted: run them again, or they would never end.
                let suspects: Vec<(NodeId, Incarnation)> = self
                    .view
                    .iter()
                    .filter(|m| m.state == MemberState::Suspect && m.node != self.me)
                    .map(|m| (m.node, m.incarnation))
                    .collect();
                for (node, incarnation) in suspects {
                    self.suspicions.entry(node).or_insert(Suspicion {
                        incarnation,
                        started: now,
                        confirmers: BTreeSet::new(),
                    });
                    self.arm_suspicion(now, node);
                }
                let first = self.first_probe_delay();
                self.start_probing(now, first);
            }
        }
    }

    /// Tells `indirect_checks` random members our news at once (as pings,
    /// whose acks are ignored), instead of waiting for the next probe.
    fn announce(&mut self) {
        let mut contacts = self.others(self.me);
        self.rng.shuffle(&mut contacts);
        contacts.truncate(self.config.indirect_checks.max(1));
        for c in contacts {
            let seq = self.next_seq();
            let rumors = self.rumors();
            self.send(
                c,
                SwimMessage::Ping {
                    seq,
                    target: c,
                    sender_incarnation: self.incarnation,
                    rumors,
                },
            );
        }
    }

    fn first_probe_delay(&mut self) -> Duration {
        // Jittered so that members do not probe in lockstep.
        let period = self.config.protocol_period.as_nanos().max(1);
        Duration::from_nanos(self.rng.below(period.min(u128::from(u64::MAX)) as u64))
    }
}

/// A view entry as a rumor anyone may repeat: alive or failed. A suspicion
/// is not repeated on someone else's behalf (it names its suspecter).
fn settled(m: &crate::membership::Member) -> Option<Rumor> {
    match m.state {
        MemberState::Alive => Some(Rumor::Alive {
            node: m.node,
            incarnation: m.incarnation,
        }),
        MemberState::Failed => Some(Rumor::Failed {
            node: m.node,
            incarnation: m.incarnation,
        }),
        MemberState::Suspect => None,
    }
}

impl Protocol for Swim {
    type Message = SwimMessage;
    type Input = SwimInput;
    type Event = SwimEvent;
    type Timer = SwimTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: SwimMessage) {
        self.counters.messages_received += 1;
        // Strangers, ourselves, and everything while not running are
        // dropped: a halted member acts as failed.
        if self.mode != Mode::Running || from == self.me || !self.view.contains(from) {
            self.counters.messages_dropped += 1;
            return;
        }
        // Rumors first, whatever the message (even a stale ack carries
        // news): an answer then carries any correction they call for, and a
        // member that learns it was declared failed does not answer at all.
        // First-hand word: the sender's own incarnation. It raises our view
        // of the sender (it rejoined or refuted while we were not hearing),
        // and when we hold the sender failed at that very incarnation the
        // answer carries the news, so it learns it and rejoins.
        if let Some(incarnation) = msg.sender_incarnation() {
            self.hear(
                now,
                from,
                Rumor::Alive {
                    node: from,
                    incarnation,
                },
            );
        }
        for r in msg.rumors() {
            self.hear(now, from, *r);
            if self.mode != Mode::Running {
                return;
            }
        }
        let useful = match msg {
            SwimMessage::Ping { seq, target, .. } => {
                if target == self.me {
                    let rumors = self.rumors();
                    self.send(
                        from,
                        SwimMessage::Ack {
                            seq,
                            sender_incarnation: self.incarnation,
                            rumors,
                        },
                    );
                    true
                } else {
                    false
                }
            }
            SwimMessage::PingReq { seq, target, .. } => self.on_ping_req(now, from, seq, target),
            SwimMessage::Ack { seq, .. } => self.on_ack(seq),
            SwimMessage::Nack { seq } => match &mut self.probe {
                Some(p) if p.seq == seq && p.nacks < p.expected_nacks => {
                    p.nacks += 1;
                    self.stats.nacks_received += 1;
                    true
                }
                _ => false,
            },
        };
        if !useful {
            self.counters.messages_dropped += 1;
        }
    }

    fn handle_input(&mut self, _now: Instant, input: SwimInput) {
        match input {
            SwimInput::Rejoin => self.rejoin(),
        }
    }

    fn handle_timer(&mut self, now: Instant, timer: SwimTimer) {
        self.counters.timers_fired += 1;
        match (self.mode, timer) {
            (Mode::Halted, SwimTimer::Rejoin) => self.rejoin(),
            (Mode::Running, SwimTimer::Probe) => self.on_probe_timer(now),
            (Mode::Running, SwimTimer::ProbeTimeout) => self.on_probe_timeout(),
            (Mode::Running, SwimTimer::Suspicion(node)) => self.on_suspicion_timeout(now, node),
            (Mode::Running, SwimTimer::Reconnect) => self.on_reconnect_timer(now),
            (Mode::Running, SwimTimer::Forward(seq)) => {
                if let Some((requester, their_seq)) = self.forwarded.remove(&seq) {
                    self.send(requester, SwimMessage::Nack { seq: their_seq });
                }
            }
            _ => {}
        }
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        if let Some((t, incarnation, why)) = self.persisting
            && t == token
        {
            self.persisting = None;
            self.on_incarnation_durable(now, incarnation, why);
        }
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop_front()
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

impl Recover for Swim {
    type Config = SwimConfig;

    fn recover(config: &SwimConfig, ctx: RecoveryContext) -> Result<Self, ft_core::RecoveryError> {
        Ok({
            // Start above every incarnation an earlier life announced (each was
            // durable before it was announced).
            let last = ctx
                .records
                .iter()
                .filter_map(|r| r.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_le_bytes)
                .max();
            let incarnation = match last {
                Some(l) => ctx.incarnation.max(Incarnation(l.saturating_add(1))),
                None => ctx.incarnation,
            };
            let mut view = Membership::new(config.members.iter().copied(), ctx.now);
            view.add(ctx.node, incarnation, ctx.now);
            let probe_order: Vec<NodeId> = view
                .iter()
                .map(|m| m.node)
                .filter(|&n| n != ctx.node)
                .collect();
            let mut rng = Rng::new(ctx.seed);
            // Sequence numbers start at a random point so that acks meant for an
            // earlier life are not taken for answers to this one.
            let next_seq = rng.next_u64();
            let mut swim = Swim {
                probe_index: probe_order.len(),
                probe_order,
                config: config.clone(),
                me: ctx.node,
                incarnation: Incarnation::FIRST,
                view,
                rng,
                mode: Mode::Joining,
                persisting: None,
                next_token: 0,
                probe: None,
                next_seq,
                reconnect_seq: None,
                forwarded: BTreeMap::new(),
                suspicions: BTreeMap::new(),
                awareness: 0,
                broadcasts: Broadcasts::default(),
                sync_cursor: NodeId(0),
                out: VecDeque::new(),
                counters: Counters::default(),
                stats: SwimStats::default(),
            };
            if incarnation == Incarnation::FIRST {
                // A first life: everyone already lists us alive at FIRST.
                swim.mode = Mode::Running;
                let first = swim.first_probe_delay();
                swim.start_probing(ctx.now, first);
            } else {
                swim.persist_incarnation(incarnation, Why::Join);
            }
            swim
        })
    }
}

#[cfg(test)]
mod tests;

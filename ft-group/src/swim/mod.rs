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
//! incarnation (a [`SwimRecord`]) and announces it only once it is durable,
//! and a restarted member starts above every incarnation it ever announced,
//! so a rumor about an earlier life can never be mistaken for the current
//! one.
//!
//! # On-disk format
//!
//! A member persists one kind of record, [`SwimRecord::Incarnation`], each
//! time it takes a new incarnation (a restart, a refutation, a rejoin),
//! before it announces it. Byte for byte, behind the header every ft core
//! writes (component and version, see [`ft_core::record`]):
//!
//! ```text
//! +-----------+---------+------+-------------------------+
//! | component | version | tag  | incarnation             |
//! | 0 (SELF)  |    1    |  1   | u64, little-endian      |
//! +-----------+---------+------+-------------------------+
//!    1 byte     1 byte   1 byte          8 bytes
//! ```
//!
//! A member embedded in another core ([`Group`](crate::group::Group),
//! `SideBySide`, feature `scenarios`) gets that core's
//! component byte in front. At recovery every record is read back with
//! [`RecoveryContext::read`]; the new life starts above the highest
//! incarnation found. A record that does not decode (another version, an
//! unknown tag, too short or too long), or that names a component other
//! than SWIM's own (such as a raw 8-byte incarnation of the format before
//! this one), fails recovery with a [`RecoveryError`]: it is never skipped,
//! since skipping the record of the last incarnation announced would let
//! the new life reuse it. Nothing is compacted: every record stays in the
//! log.
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
//! The state is split by role, each part a type of its own with its own
//! methods: the member's own incarnation and mode (`incarnation.rs`:
//! refuting, halting, rejoining, persisting), its probes (`probe.rs`: the
//! round-robin, direct and indirect probes, the reconnect loop, indirect
//! probes served for others), its suspicions of others (`suspicion.rs`:
//! confirmations and timeouts), its local health (`health.rs`) and the
//! rumors waiting to be piggybacked (`broadcast.rs`). [`Swim`] holds them
//! and routes messages and timers to them.
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
mod health;
mod incarnation;
mod message;
mod probe;
mod record;
mod suspicion;

pub use config::{OnDeclaredFailed, SwimConfig};
pub use message::{MAX_RUMORS, SwimMessage};
pub use record::SwimRecord;

use std::time::{Duration, Instant};

use ft_core::rng::Rng;
use ft_core::{
    Component, Counters, Incarnation, NodeId, Outbox, Output, PersistToken, Protocol, Recover,
    RecoveryContext, RecoveryError,
};

use crate::membership::{Change, Membership, Rumor};
use broadcast::Broadcasts;
use health::LocalHealth;
use incarnation::{Life, Mode, Why};
use probe::{Forwards, Prober};
use suspicion::Suspicions;

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

/// A SWIM member. See the [module docs](self).
#[derive(Debug)]
pub struct Swim {
    config: SwimConfig,
    me: NodeId,
    /// This member's incarnation and mode.
    life: Life,
    view: Membership,
    rng: Rng,
    /// This member's own probes.
    prober: Prober,
    /// Indirect probes run for others.
    forwards: Forwards,
    next_seq: u64,
    /// Suspicions of others being timed.
    suspicions: Suspicions,
    health: LocalHealth,
    broadcasts: Broadcasts,
    out: Outbox<Swim>,
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
        self.life.incarnation()
    }

    /// Lifeguard's local health score: 0 is healthy; timeouts and the
    /// period are multiplied by one more than this.
    pub fn local_health(&self) -> u32 {
        self.health.score()
    }

    /// Whether this member is acting as failed after being declared failed.
    pub fn is_halted(&self) -> bool {
        self.life.mode() == Mode::Halted
    }

    /// Whether this member is waiting for a new incarnation to become
    /// durable before it takes part (after a restart or a fail-stop).
    pub fn is_joining(&self) -> bool {
        self.life.mode() == Mode::Joining
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
        suspicion::timeout(&self.config, self.view.len(), confirmations)
    }

    // ---- internals ----

    /// The rumors for one outgoing message.
    fn rumors(&mut self) -> Vec<Rumor> {
        let max = self.config.max_piggyback.min(MAX_RUMORS);
        let limit = self.config.retransmit_limit(self.view.len());
        let r = self.broadcasts.piggyback(&self.view, max, limit);
        self.stats.rumors_sent += r.len() as u64;
        r
    }

    /// A ping of `target` numbered `seq`, with our rumors.
    fn ping(&mut self, seq: u64, target: NodeId) -> SwimMessage {
        SwimMessage::Ping {
            seq,
            target,
            sender_incarnation: self.life.incarnation(),
            rumors: self.rumors(),
        }
    }

    /// An ack numbered `seq`, with our rumors.
    fn ack(&mut self, seq: u64) -> SwimMessage {
        SwimMessage::Ack {
            seq,
            sender_incarnation: self.life.incarnation(),
            rumors: self.rumors(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Members not declared failed, other than this one and `except`.
    fn others(&self, except: NodeId) -> Vec<NodeId> {
        self.view
            .live()
            .filter(|&n| n != self.me && n != except)
            .collect()
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
                Some(self.life.announced())
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
            && let Some(new) = self.suspicions.confirm(node, incarnation, suspecter)
        {
            if new {
                self.broadcasts.push(rumor);
                self.arm_suspicion(now, node);
            }
            return;
        }
        let Some(change) = self.view.apply(&rumor, now) else {
            self.broadcasts.correct_if_stale(&self.view, rumor);
            return;
        };
        self.broadcasts.push(rumor);
        match rumor {
            Rumor::Suspect {
                incarnation,
                from: suspecter,
                ..
            } => {
                self.suspicions.raise(node, incarnation, suspecter, now);
                self.arm_suspicion(now, node);
            }
            Rumor::Alive { .. } | Rumor::Failed { .. } => {
                self.suspicions.settle(&mut self.out, node);
            }
        }
        self.out.event(SwimEvent::Changed(change));
    }
}

impl Protocol for Swim {
    type Message = SwimMessage;
    type Input = SwimInput;
    type Event = SwimEvent;
    type Timer = SwimTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: SwimMessage) {
        self.out.received();
        // Strangers, ourselves, and everything while not running are
        // dropped: a halted member acts as failed.
        if self.life.mode() != Mode::Running || from == self.me || !self.view.contains(from) {
            self.out.dropped();
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
            if self.life.mode() != Mode::Running {
                return;
            }
        }
        let useful = match msg {
            SwimMessage::Ping { seq, target, .. } => {
                if target == self.me {
                    let ack = self.ack(seq);
                    self.out.send(from, ack);
                    true
                } else {
                    false
                }
            }
            SwimMessage::PingReq { seq, target, .. } => self.on_ping_req(now, from, seq, target),
            SwimMessage::Ack { seq, .. } => self.on_ack(seq),
            SwimMessage::Nack { seq } => self.on_nack(seq),
        };
        if !useful {
            self.out.dropped();
        }
    }

    fn handle_input(&mut self, _now: Instant, input: SwimInput) {
        match input {
            SwimInput::Rejoin => self.rejoin(),
        }
    }

    fn handle_timer(&mut self, now: Instant, timer: SwimTimer) {
        self.out.timer_fired();
        match (self.life.mode(), timer) {
            (Mode::Halted, SwimTimer::Rejoin) => self.rejoin(),
            (Mode::Running, SwimTimer::Probe) => self.on_probe_timer(now),
            (Mode::Running, SwimTimer::ProbeTimeout) => self.on_probe_timeout(),
            (Mode::Running, SwimTimer::Suspicion(node)) => self.on_suspicion_timeout(now, node),
            (Mode::Running, SwimTimer::Reconnect) => self.on_reconnect_timer(now),
            (Mode::Running, SwimTimer::Forward(seq)) => self.on_forward_timeout(seq),
            _ => {}
        }
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        self.on_incarnation_durable(now, token);
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl Recover for Swim {
    type Config = SwimConfig;

    /// A first life runs at once; a later one starts above every
    /// incarnation an earlier life persisted (each was durable before it
    /// was announced) and waits for its own to be durable.
    ///
    /// # Errors
    /// [`RecoveryError`] if a record does not decode (see the
    /// [on-disk format](self#on-disk-format)), or is not SWIM's own.
    fn recover(config: &SwimConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        crate::recovery::only_components(&ctx, &[Component::SELF])?;
        let last = ctx
            .read::<SwimRecord>()?
            .into_iter()
            .map(|r| match r {
                SwimRecord::Incarnation(i) => i,
            })
            .max();
        let incarnation = match last {
            Some(l) => ctx.incarnation.max(Incarnation(l.0.saturating_add(1))),
            None => ctx.incarnation,
        };
        let mut view = Membership::new(config.members.iter().copied(), ctx.now);
        view.add(ctx.node, incarnation, ctx.now);
        let prober = Prober::new(&view, ctx.node);
        let mut rng = Rng::new(ctx.seed);
        // Sequence numbers start at a random point so that acks meant for an
        // earlier life are not taken for answers to this one.
        let next_seq = rng.next_u64();
        let first_life = incarnation == Incarnation::FIRST;
        let mut swim = Swim {
            config: config.clone(),
            me: ctx.node,
            life: Life::new(first_life),
            view,
            rng,
            prober,
            forwards: Forwards::default(),
            next_seq,
            suspicions: Suspicions::default(),
            health: LocalHealth::new(config.awareness_max_multiplier),
            broadcasts: Broadcasts::default(),
            out: Outbox::recovered(&ctx),
            stats: SwimStats::default(),
        };
        if first_life {
            // Everyone already lists us alive at FIRST.
            let first = swim.first_probe_delay();
            swim.start_probing(ctx.now, first);
        } else {
            swim.life.persist(&mut swim.out, incarnation, Why::Join);
        }
        Ok(swim)
    }
}

#[cfg(test)]
mod tests;

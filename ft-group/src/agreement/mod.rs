//! Byzantine agreement: the oral-messages algorithm OM(m) of Lamport,
//! Shostak and Pease (1982), as a sans-IO core.
//!
//! A commander sends a value to n − 1 lieutenants; up to m of the n
//! generals (the commander included) are traitors with arbitrary failures.
//! The loyal generals must reach
//!
//! - **IC1** every loyal lieutenant decides the same value, and
//! - **IC2** if the commander is loyal, every loyal lieutenant decides the
//!   value it sent.
//!
//! With oral (unsigned) messages that takes n ≥ 3m + 1 generals — the loyal
//! members must outvote the traitors among themselves, which needs 2m + 1
//! loyalists besides the m traitors ([`crate::sizing`] says so in the
//! subject's words, and [`OmConfig::new`] refuses anything less).
//!
//! # When agreement is possible at all
//!
//! Whether distributed agreement can be reached depends on four properties
//! of the system (Dolev, Dwork and Stockmeyer, 1987, as the subject shows
//! it):
//!
//! - **processes**: synchronous (they operate in lockstep) or asynchronous;
//! - **delays**: is communication delay bounded or unbounded;
//! - **ordering**: are messages delivered in the order they were sent;
//! - **transmission**: are messages sent one by one (unicast) or multicast.
//!
//! | processes | delays | unordered, unicast | unordered, multicast | ordered, unicast | ordered, multicast |
//! |---|---|:-:|:-:|:-:|:-:|
//! | synchronous | bounded | ✓ | ✓ | ✓ | ✓ |
//! | synchronous | unbounded | | | ✓ | ✓ |
//! | asynchronous | bounded | | | | ✓ |
//! | asynchronous | unbounded | | | | ✓ |
//!
//! That is: synchronous processes with bounded delays can always agree;
//! synchronous processes with unbounded delays only with ordered delivery;
//! asynchronous processes only with ordered delivery *and* multicast.
//!
//! **OM(m) here lives in the first row, first column**: synchronous
//! processes (every general gets its input at the same instant and they
//! count rounds from it), bounded delays ([`OmConfig::round`] bounds one
//! hop's delay plus processing), and unordered unicast (the channel may
//! reorder and duplicate; each message goes to one general). Messages are
//! *oral*: unsigned, but the receiver knows who sent each one (the channel
//! tells `from`), so a traitor can lie about what it heard but cannot
//! impersonate a loyal general. The absence of a message is detected by the
//! round timeout and replaced by the default value (RETREAT). Outside those
//! assumptions — a hop slower than `round`, lost messages from loyal
//! generals, generals that start at different times — the guarantees are
//! gone; such a general counts as one of the m faulty ones.
//!
//! # The algorithm
//!
//! OM(0): the commander sends its value to every lieutenant, who uses the
//! value received (or the default if none came). OM(m), m > 0: the commander
//! sends its value to every lieutenant; each lieutenant i then acts as the
//! commander of OM(m − 1), sending the value it received to the n − 2 other
//! lieutenants; finally each lieutenant takes the majority of the value it
//! received from the commander and the values the others decided in their
//! OM(m − 1) (the default when there is no strict majority).
//!
//! Run as messages, OM(m) is a tree of *paths* ("n3 says n2 says the
//! commander said v" is path `[c, n2, n3]`), which is what [`OmMessage`]
//! carries:
//!
//! - the commander sends `path = [c]` to every lieutenant;
//! - a lieutenant receiving a well-formed message with a path of at most m
//!   generals relays it at once, with itself appended, to every general not
//!   on the path. A loyal chain of L hops therefore arrives within L rounds,
//!   and a message whose path has L generals is accepted only until L rounds
//!   after the start: a traitor cannot delay a message so that a loyal
//!   relayer's copy reaches some loyal generals in time and others too late;
//! - at (m + 1) rounds each lieutenant decides bottom-up over the tree
//!   (exponential information gathering): for a path p of m + 1 generals,
//!   `resolve(p)` is the value received for p, or the default; for a shorter
//!   p, `resolve(p)` is the strict majority of the value received for p (or
//!   the default) and `resolve(p ++ [j])` for every general j not on p other
//!   than itself, or the default when there is none — step 3 of OM(m),
//!   applied at every level. The decision is `resolve([c])`. The commander
//!   decides its own value.
//!
//! A loyal general never has to send the default: every receiver puts the
//! default in place of a message that did not come, exactly as if it had
//! been sent. So a loyal lieutenant that heard nothing for a path simply
//! relays nothing for it.
//!
//! # Checks and bounds
//!
//! A message is dropped, and counted by [`DropReason`], when it comes from a
//! non-general, its path does not start with the commander, names a
//! non-general or a general twice, does not end with the actual sender,
//! contains the receiver, is longer than m + 1, carries a value over
//! [`MAX_VALUE_LEN`], arrives late or after the decision, or repeats a path
//! already received (the first value per path is kept: a traitor's
//! conflicting second copy changes nothing). A lieutenant thus stores at
//! most one value per valid path: [`OmConfig::paths_per_lieutenant`] =
//! 1 + (n−2) + (n−2)(n−3) + … (m + 1 terms), itself bounded by
//! [`MAX_TREE_PATHS`]. A run with loyal generals only sends
//! [`OmConfig::messages_total`] = (n−1) + (n−1)(n−2) + … messages: OM(m) is
//! exponential in m, which is why it suits small groups.
//!
//! # Crashes
//!
//! OM(m) keeps nothing on stable storage: a general that crashed has lost
//! the values it received and its place in the rounds. Restarted
//! ([`Recover::recover`] with an incarnation above the first), it
//! abstains — sends nothing, decides nothing — which the others see as
//! silence, replaced by the default; a crashed general is one of the m
//! faulty ones.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use ft_core::{Incarnation, NodeId, Output, Protocol, Recover, RecoveryContext};
//! use ft_group::agreement::{OmConfig, OmEvent, OmGeneral, OmInput, OmTimer};
//!
//! // Four generals, one traitor tolerated; n0 commands.
//! let generals: Vec<NodeId> = (0..4).map(NodeId).collect();
//! let config = OmConfig::new(
//!     generals.clone(), NodeId(0), 1, Duration::from_millis(10), Bytes::from_static(b"retreat"),
//! ).unwrap();
//! let t0 = Instant::now();
//! let mut cores: Vec<OmGeneral> = generals.iter().map(|&node| OmGeneral::recover(&config, RecoveryContext {
//!     node, incarnation: Incarnation::FIRST, records: vec![], seed: 0, now: t0,
//! }).unwrap()).collect();
//!
//! // Everyone starts at the same instant; a perfect network delivers in order.
//! cores[0].handle_input(t0, OmInput::Propose(Bytes::from_static(b"attack")));
//! for c in &mut cores[1..] { c.handle_input(t0, OmInput::Start); }
//! let mut inflight = Vec::new();
//! loop {
//!     for (i, c) in cores.iter_mut().enumerate() {
//!         while let Some(out) = c.poll_output() {
//!             if let Output::Send { to, msg } = out { inflight.push((NodeId(i as u64), to, msg)); }
//!         }
//!     }
//!     if inflight.is_empty() { break; }
//!     for (from, to, msg) in inflight.drain(..) {
//!         cores[to.0 as usize].handle_message(t0 + Duration::from_millis(1), from, msg);
//!     }
//! }
//! for c in &mut cores[1..] { c.handle_timer(t0 + config.decide_after(), OmTimer::Decide); }
//! for c in &cores { assert_eq!(c.decision().map(|v| &v[..]), Some(&b"attack"[..])); }
//! ```

mod config;
mod message;

pub use config::{MAX_TREE_PATHS, OmConfig, OmConfigError};
pub use message::{MAX_PATH_LEN, MAX_VALUE_LEN, OM_VERSION, OmMessage};

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use ft_core::{
    Counters, Incarnation, NodeId, Outbox, Output, PersistToken, Protocol, Recover,
    RecoveryContext, RecoveryError,
};

use crate::voting;

/// What the application asks of a general. Every general gets its input at
/// the same instant: that instant is the start of round 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OmInput {
    /// To the commander: send this value (and decide it).
    Propose(Bytes),
    /// To a lieutenant: the run starts now; decide in (m + 1) rounds.
    Start,
}

/// Why an [`OmInput`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OmInputError {
    /// This node takes no part in the run (see [`Role::Abstaining`]).
    #[error("this node takes no part in the run (not a general, or restarted)")]
    Abstaining,
    /// [`OmInput::Propose`] given to a lieutenant.
    #[error("only the commander proposes a value")]
    NotCommander,
    /// [`OmInput::Start`] given to the commander.
    #[error("the commander starts by proposing a value")]
    NotLieutenant,
    /// A second input: a run has one start.
    #[error("the run has already started")]
    AlreadyStarted,
    /// The proposed value is larger than the wire carries.
    #[error("a value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// [`MAX_VALUE_LEN`].
        max: usize,
    },
    /// The start time plus (m + 1) rounds is past what an `Instant` holds.
    #[error("the decision time is not representable")]
    DeadlineOverflow,
}

/// What a general tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OmEvent {
    /// The general decided: the commander at once, a lieutenant (m + 1)
    /// rounds after its start. Emitted once.
    Decided(Bytes),
    /// An input was refused and had no effect.
    InputRejected(OmInputError),
}

/// The only timer: time to decide.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OmTimer {
    /// (m + 1) rounds after the start.
    Decide,
}

/// This node's part in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// It sends the value.
    Commander,
    /// It relays and decides.
    Lieutenant,
    /// It takes no part: it is not one of the generals, or it restarted
    /// after a crash and has lost the run.
    Abstaining,
}

/// Why a received message was dropped (see
/// [`OmGeneral::dropped`]). Each is also counted in
/// [`Counters::messages_dropped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// This node abstains ([`Role::Abstaining`]).
    Abstaining,
    /// The decision was already taken.
    AfterDecision,
    /// The sender is not one of the generals.
    FromStranger,
    /// The path is empty or does not start with the commander.
    WrongCommander,
    /// The path has more than m + 1 generals.
    TooLong,
    /// The path names someone who is not a general.
    StrangerInPath,
    /// The path names a general twice.
    Repeated,
    /// The last general on the path is not the one who sent the message: a
    /// traitor putting words in a loyal general's mouth.
    SenderNotLast,
    /// The path already contains the receiver (every message to the
    /// commander is such).
    ReceiverInPath,
    /// The value is longer than [`MAX_VALUE_LEN`].
    ValueTooLarge,
    /// The message came after the round its path length belongs to.
    Late,
    /// The path was already received, with the same value.
    Duplicate,
    /// The path was already received, with another value (only a traitor
    /// sends that); the first value stands.
    Conflicting,
    /// More paths than the tree holds; unreachable for valid paths, kept as
    /// a last bound on memory.
    OverCapacity,
}

impl DropReason {
    /// Every reason, in declaration order.
    pub const ALL: [DropReason; 14] = [
        DropReason::Abstaining,
        DropReason::AfterDecision,
        DropReason::FromStranger,
        DropReason::WrongCommander,
        DropReason::TooLong,
        DropReason::StrangerInPath,
        DropReason::Repeated,
        DropReason::SenderNotLast,
        DropReason::ReceiverInPath,
        DropReason::ValueTooLarge,
        DropReason::Late,
        DropReason::Duplicate,
        DropReason::Conflicting,
        DropReason::OverCapacity,
    ];
}

/// One general of an OM(m) run: the commander or a lieutenant.
///
/// # Methods
///
/// - getters: [`id`](Self::id), [`role`](Self::role),
///   [`config`](Self::config), [`decision`](Self::decision),
///   [`started_at`](Self::started_at), [`value_for`](Self::value_for),
///   [`paths_received`](Self::paths_received), [`dropped`](Self::dropped),
///   [`counters`](Protocol::counters);
/// - `handle_*`: the [`Protocol`] methods (`handle_persisted` is never
///   needed: OM(m) persists nothing);
/// - mutators: none beyond [`OmInput`];
/// - `poll_*`: [`poll_output`](Protocol::poll_output) returns, after an
///   input, the commander's sends then its `Decided`, or a lieutenant's
///   `SetTimer(Decide)`; after a message, its relays in the order of
///   [`OmConfig::generals`]; after the timer, `Decided`.
#[derive(Debug)]
pub struct OmGeneral {
    me: NodeId,
    config: OmConfig,
    role: Role,
    started_at: Option<Instant>,
    decision: Option<Bytes>,
    /// The first value received per path.
    values: BTreeMap<Vec<NodeId>, Bytes>,
    out: Outbox<OmGeneral>,
    drops: BTreeMap<DropReason, u64>,
}

impl OmGeneral {
    // --- getters ---

    /// This node.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// This node's part in the run.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The run's configuration.
    pub fn config(&self) -> &OmConfig {
        &self.config
    }

    /// The decision, once taken.
    pub fn decision(&self) -> Option<&Bytes> {
        self.decision.as_ref()
    }

    /// When this general's input came: the start of round 1.
    pub fn started_at(&self) -> Option<Instant> {
        self.started_at
    }

    /// The value received for `path`, if any.
    pub fn value_for(&self, path: &[NodeId]) -> Option<&Bytes> {
        self.values.get(path)
    }

    /// How many paths a value was received for (at most
    /// [`OmConfig::paths_per_lieutenant`]).
    pub fn paths_received(&self) -> usize {
        self.values.len()
    }

    /// Messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }

    // --- internals ---

    fn drop_message(&mut self, reason: DropReason) {
        self.out.dropped();
        *self.drops.entry(reason).or_default() += 1;
    }

    fn reject(&mut self, why: OmInputError) {
        self.out.event(OmEvent::InputRejected(why));
    }

    fn decide(&mut self, value: Bytes) {
        // The value is the application's: the note says only that the run
        // of this commander is decided.
        self.out
            .note("decided", Some(self.config.commander()), None, None);
        self.decision = Some(value.clone());
        self.out.event(OmEvent::Decided(value));
    }

    /// Why `msg` from `from` cannot be used, if it cannot.
    fn check(&self, now: Instant, from: NodeId, msg: &OmMessage) -> Option<DropReason> {
        let cfg = &self.config;
        let path = &msg.path;
        if self.role != Role::Lieutenant && self.role != Role::Commander {
            return Some(DropReason::Abstaining);
        }
        if self.decision.is_some() {
            return Some(DropReason::AfterDecision);
        }
        if !cfg.is_general(from) {
            return Some(DropReason::FromStranger);
        }
        if path.first() != Some(&cfg.commander()) {
            return Some(DropReason::WrongCommander);
        }
        // Length first: it bounds the work of the checks below.
        if path.len() > cfg.traitors().saturating_add(1) {
            return Some(DropReason::TooLong);
        }
        if path.iter().any(|&g| !cfg.is_general(g)) {
            return Some(DropReason::StrangerInPath);
        }
        if path.iter().enumerate().any(|(i, g)| path[..i].contains(g)) {
            return Some(DropReason::Repeated);
        }
        if path.last() != Some(&from) {
            return Some(DropReason::SenderNotLast);
        }
        if path.contains(&self.me) {
            return Some(DropReason::ReceiverInPath);
        }
        if msg.value.len() > MAX_VALUE_LEN {
            return Some(DropReason::ValueTooLarge);
        }
        // A message with L generals on its path belongs to round L. Before
        // this general's start nothing is late (it is early).
        if let Some(start) = self.started_at {
            let rounds = u32::try_from(path.len()).unwrap_or(u32::MAX);
            let due = start.checked_add(cfg.round().saturating_mul(rounds));
            if due.is_some_and(|due| now > due) {
                return Some(DropReason::Late);
            }
        }
        if let Some(v) = self.values.get(path) {
            return Some(if *v == msg.value {
                DropReason::Duplicate
            } else {
                DropReason::Conflicting
            });
        }
        if self.values.len() >= cfg.paths_per_lieutenant() {
            return Some(DropReason::OverCapacity);
        }
        None
    }

    /// OM(m) step 3 at `path`: the value this lieutenant attributes to the
    /// sub-run commanded by `path`'s last general (see the module docs).
    /// Recursion depth is at most m + 1 ≤ [`MAX_PATH_LEN`].
    fn resolve(&self, path: &mut Vec<NodeId>) -> Bytes {
        let default = self.config.default_value();
        let own = self.values.get(path.as_slice()).unwrap_or(default).clone();
        if path.len() > self.config.traitors() {
            return own;
        }
        let children: Vec<NodeId> = self
            .config
            .generals()
            .iter()
            .copied()
            .filter(|g| *g != self.me && !path.contains(g))
            .collect();
        if children.is_empty() {
            return own;
        }
        let sender = path.last().copied().unwrap_or(self.me);
        let mut votes = Vec::with_capacity(children.len() + 1);
        votes.push((sender, own));
        for j in children {
            path.push(j);
            votes.push((j, self.resolve(path)));
            path.pop();
        }
        match voting::majority(votes.len(), votes) {
            Ok(m) => m.value,
            Err(_) => default.clone(),
        }
    }
}

impl Protocol for OmGeneral {
    type Message = OmMessage;
    type Input = OmInput;
    type Event = OmEvent;
    type Timer = OmTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: OmMessage) {
        self.out.received();
        if let Some(reason) = self.check(now, from, &msg) {
            self.drop_message(reason);
            return;
        }
        let relay = msg.path.len() <= self.config.traitors();
        if relay {
            let mut path = Vec::with_capacity(msg.path.len() + 1);
            path.extend_from_slice(&msg.path);
            path.push(self.me);
            let to: Vec<NodeId> = self
                .config
                .generals()
                .iter()
                .copied()
                .filter(|g| !path.contains(g))
                .collect();
            for g in to {
                let relayed = OmMessage {
                    path: path.clone(),
                    value: msg.value.clone(),
                };
                self.out.send(g, relayed);
            }
        }
        self.values.insert(msg.path, msg.value);
    }

    fn handle_input(&mut self, now: Instant, input: OmInput) {
        match (self.role, input) {
            (Role::Abstaining, _) => self.reject(OmInputError::Abstaining),
            (_, _) if self.started_at.is_some() => self.reject(OmInputError::AlreadyStarted),
            (Role::Lieutenant, OmInput::Propose(_)) => self.reject(OmInputError::NotCommander),
            (Role::Commander, OmInput::Start) => self.reject(OmInputError::NotLieutenant),
            (Role::Commander, OmInput::Propose(value)) => {
                if value.len() > MAX_VALUE_LEN {
                    self.reject(OmInputError::ValueTooLarge {
                        len: value.len(),
                        max: MAX_VALUE_LEN,
                    });
                    return;
                }
                self.started_at = Some(now);
                let path = vec![self.me];
                let to: Vec<NodeId> = self.config.lieutenants().collect();
                for g in to {
                    let msg = OmMessage {
                        path: path.clone(),
                        value: value.clone(),
                    };
                    self.out.send(g, msg);
                }
                self.decide(value);
            }
            (Role::Lieutenant, OmInput::Start) => {
                match now.checked_add(self.config.decide_after()) {
                    Some(at) => {
                        self.started_at = Some(now);
                        self.out.set_timer(OmTimer::Decide, at);
                    }
                    None => self.reject(OmInputError::DeadlineOverflow),
                }
            }
        }
    }

    fn handle_timer(&mut self, _now: Instant, timer: OmTimer) {
        self.out.timer_fired();
        match timer {
            OmTimer::Decide => {
                if self.role == Role::Lieutenant && self.decision.is_none() {
                    let mut path = vec![self.config.commander()];
                    let value = self.resolve(&mut path);
                    self.decide(value);
                }
            }
        }
    }

    fn handle_persisted(&mut self, _now: Instant, _token: PersistToken) {
        // OM(m) persists nothing.
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl Recover for OmGeneral {
    type Config = OmConfig;

    /// A fresh general on first start; an abstaining one after a restart
    /// (see the module docs on crashes). Needs no records and no randomness.
    fn recover(config: &OmConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let role = if ctx.incarnation != Incarnation::FIRST || !config.is_general(ctx.node) {
            Role::Abstaining
        } else if ctx.node == config.commander() {
            Role::Commander
        } else {
            Role::Lieutenant
        };
        Ok(OmGeneral {
            me: ctx.node,
            config: config.clone(),
            role,
            started_at: None,
            decision: None,
            values: BTreeMap::new(),
            out: Outbox::new(),
            drops: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests;

//! A reliable point-to-point channel over unreliable datagrams, as a
//! sans-IO [`Protocol`].
//!
//! The network underneath (a [`Channel`](ft_core::Channel), the simulator)
//! may lose, duplicate, reorder and delay datagrams. On top of it, a
//! [`Reliable`] core gives each pair of processes what the subject asks of
//! reliable communication:
//!
//! - **error detection** is the frame's CRC-32: the environment drops a
//!   damaged frame before it reaches the core, so to the channel corruption
//!   is just one more loss;
//! - **loss detection** by per-peer sequence numbers, and **error
//!   correction** by retransmission: the receiver acknowledges
//!   cumulatively (everything below `cumulative` arrived) and selectively
//!   (these ranges above it arrived too), and the sender repeats only what
//!   is missing (*selective repeat*);
//! - **duplicate suppression** and **in-order delivery**: a segment is
//!   [delivered](ReliableEvent::Delivered) exactly once, in the order it
//!   was sent, through a bounded reorder buffer.
//!
//! # Retransmission
//!
//! Each peer has one retransmission timer, set from an RFC 6298
//! [estimator](crate::rtt::RttEstimator) of the round-trip time (RTO
//! between 200 ms and 60 s by default). The timer runs while anything is in
//! flight and restarts whenever an ack moves the cumulative point. When it
//! fires, the sender retransmits the oldest unacknowledged segment, and
//! every other one not selectively acknowledged that has been out for a
//! whole RTO, then doubles the RTO (exponential back-off). Segments are
//! also retransmitted at once, one time each, when three segments above
//! them have been selectively acknowledged (fast retransmit, RFC 6675's
//! `DupThresh`): under light loss, most holes are filled within one round
//! trip instead of one RTO. Karn's rule holds throughout: an
//! acknowledgement of a segment sent more than once is never an RTT sample,
//! and the back-off stays until an unambiguous sample arrives.
//!
//! The channel never gives up on a peer: a peer that is down or cut off is
//! retried at most every `max_rto`, and what waits for it stays bounded by
//! the window and the send queue. Deciding that a peer is dead is a failure
//! detector's job, not the channel's.
//!
//! # Incarnations instead of stable storage
//!
//! The channel writes nothing to stable storage (it emits no
//! [`Output::Persist`]): a crash loses every sequence number, buffer and
//! unacknowledged message. What survives is the **incarnation**, which the
//! environment keeps durable and bumps at every restart
//! ([`RecoveryContext::incarnation`]). Every message names its sender's
//! incarnation and its receiver's as the sender knows it, and a stream of
//! sequence numbers belongs to one pair of lives:
//!
//! - a message whose sender incarnation is **higher** than the one known
//!   means the peer restarted: the receive state for it is reset, and so is
//!   the send state to it. What was in flight to the old life and never
//!   acknowledged is handed back in [`ReliableEvent::PeerRestarted`] (it may
//!   or may not have been delivered before the crash: the application
//!   decides whether to send it again); messages still queued go to the new
//!   life, numbered from 0;
//! - a **lower** sender incarnation is a message from a dead life: dropped
//!   and counted;
//! - a data segment addressed to an **earlier life of this node** is
//!   dropped and counted, and answered with an ack that carries the current
//!   incarnation, so its sender learns of the restart and reports what it
//!   had in flight.
//!
//! A sender that has not yet heard from a peer addresses it as
//! [`Incarnation::FIRST`]. If the peer has restarted since, that first
//! exchange costs a round trip and a `PeerRestarted` listing what was sent
//! meanwhile: the channel cannot tell whether the peer's first life took
//! those messages before it crashed, so it says so rather than guess.
//!
//! Delivery is therefore exactly once and in order *per pair of lives*:
//! within one life of the receiver, the messages of one life of the sender
//! arrive in order with no duplicates and no gaps; across a receiver's
//! restart, the stream resumes after the messages reported unacknowledged.
//!
//! # Bounded memory
//!
//! Per peer at most `window` segments in flight, `send_queue` messages
//! waiting (a send beyond is answered with
//! [`SendRejected`](ReliableEvent::SendRejected): backpressure), and
//! `reorder_buffer` segments held for in-order delivery (a segment further
//! ahead is dropped, counted, and retransmitted by its sender later); at
//! most `max_sack_ranges` ranges per ack; payloads of at most
//! `max_payload` bytes; and only the configured `peers` (messages from
//! anyone else are dropped and counted). See [`ReliableConfig`] for the
//! defaults.
//!
//! # Methods
//!
//! Following quinn-proto, in four groups:
//!
//! - getters: [`id`](Reliable::id), [`incarnation`](Reliable::incarnation),
//!   [`config`](Reliable::config), [`peers`](Reliable::peers),
//!   [`peer_incarnation`](Reliable::peer_incarnation),
//!   [`peer_stats`](Reliable::peer_stats), [`rtt`](Reliable::rtt),
//!   [`is_idle`](Reliable::is_idle),
//!   [`strangers_dropped`](Reliable::strangers_dropped),
//!   [`counters`](Protocol::counters);
//! - `handle_*`: the [`Protocol`] methods;
//! - mutators: [`send`](Reliable::send), also reachable as
//!   [`ReliableInput::Send`] through [`handle_input`](Protocol::handle_input);
//! - [`poll_output`](Protocol::poll_output).
//!
//! # Poll order
//!
//! After every `handle_*` call and every [`send`](Reliable::send), drain
//! [`poll_output`](Protocol::poll_output) until it returns `None`. Outputs
//! come in the order things happened: for one incoming segment, the
//! `PeerRestarted` it revealed (if any), then the `Delivered` events it
//! released, in order, then the ack; segments to a peer are first sent in
//! sequence order. A `SetTimer` for a timer already set replaces it, and a
//! timer that fires after it was replaced or cancelled is ignored, so an
//! environment that cannot cancel timers is still correct.
//!
//! # Example
//!
//! Two endpoints wired by hand, with the first segment lost:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use ft_core::{Incarnation, NodeId, Output, Protocol};
//! use ft_rpc::channel::{Reliable, ReliableConfig, ReliableEvent, ReliableTimer};
//!
//! let config = ReliableConfig::with_size(2);
//! let mut a = Reliable::new(&config, NodeId(0), Incarnation::FIRST);
//! let mut b = Reliable::new(&config, NodeId(1), Incarnation::FIRST);
//! let t0 = Instant::now();
//!
//! a.send(t0, NodeId(1), Bytes::from_static(b"hello"));
//! a.send(t0, NodeId(1), Bytes::from_static(b"world"));
//! let mut segments = Vec::new();
//! while let Some(out) = a.poll_output() {
//!     if let Output::Send { msg, .. } = out {
//!         segments.push(msg);
//!     }
//! }
//! // "hello" is lost; "world" arrives and waits in b's reorder buffer.
//! b.handle_message(t0, NodeId(0), segments[1].clone());
//! let mut acks = Vec::new();
//! while let Some(out) = b.poll_output() {
//!     assert!(!matches!(out, Output::Event(_)), "nothing delivered out of order");
//!     if let Output::Send { msg, .. } = out {
//!         acks.push(msg);
//!     }
//! }
//! for ack in acks {
//!     a.handle_message(t0, NodeId(1), ack);
//! }
//! while a.poll_output().is_some() {}
//!
//! // One RTO later (1 s before any RTT sample) a retransmits "hello" only.
//! a.handle_timer(t0 + Duration::from_secs(1), ReliableTimer::Retransmit(NodeId(1)));
//! let mut resent = Vec::new();
//! while let Some(out) = a.poll_output() {
//!     if let Output::Send { msg, .. } = out {
//!         resent.push(msg);
//!     }
//! }
//! assert_eq!(resent.len(), 1);
//! b.handle_message(t0, NodeId(0), resent.remove(0));
//! let delivered: Vec<Bytes> = std::iter::from_fn(|| b.poll_output())
//!     .filter_map(|o| match o {
//!         Output::Event(ReliableEvent::Delivered { payload, .. }) => Some(payload),
//!         _ => None,
//!     })
//!     .collect();
//! assert_eq!(delivered, [&b"hello"[..], &b"world"[..]]);
//! ```

mod config;
mod message;
#[cfg(test)]
mod tests;

pub use config::ReliableConfig;
pub use message::{DATA_OVERHEAD, MAX_PAYLOAD, MAX_SACK_RANGES, MESSAGE_VERSION, ReliableMessage};

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{
    Counters, Incarnation, NodeId, Outbox, Output, PersistToken, Protocol, Recover,
    RecoveryContext, RecoveryError,
};

use crate::rtt::RttEstimator;

/// Segments selectively acknowledged above a hole before the hole is
/// retransmitted without waiting for the timer (RFC 6675's `DupThresh`):
/// fewer would resend segments that were merely reordered.
pub const DUP_THRESHOLD: usize = 3;

/// What the application asks of the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReliableInput {
    /// Send `payload` to `to`, reliably and in order
    /// (see [`Reliable::send`]).
    Send {
        /// The destination.
        to: NodeId,
        /// The message.
        payload: Bytes,
    },
}

/// What the channel tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReliableEvent {
    /// A message from `from`, in the order it was sent, exactly once per
    /// life of the sender (within this life of the receiver).
    Delivered {
        /// The sender.
        from: NodeId,
        /// The message.
        payload: Bytes,
    },
    /// `peer` restarted: it now runs as `incarnation`, with none of its old
    /// life's state. The messages in `unacked`, in the order they were
    /// sent, went to its old life and were never acknowledged: each may
    /// have been delivered before the crash, or lost. The channel does not
    /// resend them; messages sent after them (still queued) go to the new
    /// life.
    PeerRestarted {
        /// The peer.
        peer: NodeId,
        /// Its new incarnation.
        incarnation: Incarnation,
        /// What its old life may not have received.
        unacked: Vec<Bytes>,
    },
    /// A send was refused and will never be delivered; `payload` is handed
    /// back.
    SendRejected {
        /// The destination asked for.
        to: NodeId,
        /// The message.
        payload: Bytes,
        /// Why.
        reason: RejectReason,
    },
}

/// Why a send was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The window and the send queue to this peer are full: backpressure.
    /// Retry once deliveries have drained some.
    QueueFull,
    /// The destination is not a configured peer (or is this node).
    UnknownPeer,
    /// The payload is longer than [`ReliableConfig::max_payload`].
    TooLarge,
}

/// The channel's named timers, one of each kind per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReliableTimer {
    /// The retransmission timeout of the segments in flight to this peer.
    Retransmit(NodeId),
    /// A delayed acknowledgement to this peer is due.
    Ack(NodeId),
}

/// What happened between this node and one peer in this life, and the
/// state of the stream now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Segments sent for the first time.
    pub segments_sent: u64,
    /// Segments sent again (by timeout or fast retransmit).
    pub retransmissions: u64,
    /// Of those, fast retransmissions.
    pub fast_retransmissions: u64,
    /// Times the retransmission timer fired with segments in flight.
    pub timeouts: u64,
    /// Messages delivered to the application.
    pub delivered: u64,
    /// Segments received again and dropped.
    pub duplicates_dropped: u64,
    /// Segments that arrived ahead of a hole and were buffered.
    pub out_of_order_buffered: u64,
    /// Segments too far ahead for the reorder buffer, dropped.
    pub beyond_window_dropped: u64,
    /// Messages of an old life of the peer, or addressed to an old life of
    /// this node, dropped.
    pub stale_dropped: u64,
    /// Messages that cannot be right (acks of segments never sent, a
    /// future incarnation of this node), dropped.
    pub invalid_dropped: u64,
    /// Sends refused with [`RejectReason::QueueFull`].
    pub rejected: u64,
    /// Restarts of the peer reported with [`ReliableEvent::PeerRestarted`].
    pub restarts_detected: u64,
    /// Messages handed back as unacknowledged by those reports.
    pub unacked_reported: u64,
    /// Acks sent.
    pub acks_sent: u64,
    /// Round-trip samples taken (Karn's rule skips the rest).
    pub rtt_samples: u64,
    /// Segments in flight now.
    pub in_flight: usize,
    /// Messages waiting for the window now.
    pub queued: usize,
    /// Segments waiting in the reorder buffer now.
    pub reorder_buffered: usize,
    /// The smoothed round-trip time, once sampled.
    pub srtt: Option<Duration>,
    /// The retransmission timeout in force.
    pub rto: Duration,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    payload: Bytes,
    /// When it was last (re)transmitted.
    sent_at: Instant,
    transmissions: u32,
    sacked: bool,
    fast_retransmitted: bool,
}

#[derive(Debug)]
struct Peer {
    id: NodeId,
    /// The peer's incarnation as known (or, before hearing, assumed first).
    incarnation: Incarnation,
    heard: bool,
    // Sending side.
    next_seq: u64,
    /// Sent and not cumulatively acknowledged, in sequence order with no
    /// gaps: the front is the oldest unacknowledged segment.
    in_flight: VecDeque<Segment>,
    queue: VecDeque<Bytes>,
    /// The window the peer advertised (its reorder buffer).
    peer_window: usize,
    rtt: RttEstimator,
    rto_at: Option<Instant>,
    // Receiving side.
    expected: u64,
    reorder: BTreeMap<u64, Bytes>,
    ack_at: Option<Instant>,
    /// In-order segments received since the last ack.
    unacked_in_order: u32,
    stats: PeerStats,
}

/// What a peer's handlers need besides the peer: the outbox, and the
/// node's own incarnation and configuration.
struct Io<'a> {
    out: &'a mut Outbox<Reliable>,
    me: Incarnation,
    config: &'a ReliableConfig,
}

impl Reliable {
    /// The peers, the strangers counter and the output side, borrowed
    /// apart so a peer's state and the outputs can be used together.
    fn split(&mut self) -> (&mut BTreeMap<NodeId, Peer>, &mut u64, Io<'_>) {
        let Reliable {
            config,
            incarnation,
            peers,
            out,
            strangers,
            ..
        } = self;
        let io = Io {
            out,
            me: *incarnation,
            config,
        };
        (peers, strangers, io)
    }
}

impl Io<'_> {
    fn drop_message(&mut self, counter: &mut u64) {
        *counter += 1;
        self.out.dropped();
    }
}

/// A reliable channel endpoint. See the [module docs](self).
///
/// # Example
///
/// Sans-IO: the core only says what to send, and the caller carries it.
/// Here one message goes from A to B, and B's acknowledgement back to A:
///
/// ```
/// use std::time::Instant;
/// use bytes::Bytes;
/// use ft_core::{Incarnation, NodeId, Output, Protocol};
/// use ft_rpc::channel::{Reliable, ReliableConfig, ReliableEvent};
///
/// let config = ReliableConfig::new([NodeId(0), NodeId(1)]);
/// let mut a = Reliable::new(&config, NodeId(0), Incarnation::FIRST);
/// let mut b = Reliable::new(&config, NodeId(1), Incarnation::FIRST);
/// let now = Instant::now();
///
/// a.send(now, NodeId(1), Bytes::from_static(b"hello"));
/// while let Some(out) = a.poll_output() {
///     if let Output::Send { to, msg } = out {
///         assert_eq!(to, NodeId(1));
///         b.handle_message(now, NodeId(0), msg); // the network, by hand
///     }
/// }
/// let mut delivered = Vec::new();
/// while let Some(out) = b.poll_output() {
///     match out {
///         Output::Event(ReliableEvent::Delivered { from, payload }) => delivered.push((from, payload)),
///         Output::Send { msg, .. } => a.handle_message(now, NodeId(1), msg), // the ack
///         _ => {}
///     }
/// }
/// assert_eq!(delivered, [(NodeId(0), Bytes::from_static(b"hello"))]);
/// assert!(a.is_idle(), "everything sent was acknowledged");
/// // ...so its retransmission timer is cancelled.
/// let mut rest = std::iter::from_fn(|| a.poll_output());
/// assert!(rest.any(|o| matches!(o, Output::CancelTimer { .. })));
/// ```
#[derive(Debug)]
pub struct Reliable {
    config: ReliableConfig,
    me: NodeId,
    incarnation: Incarnation,
    peers: BTreeMap<NodeId, Peer>,
    out: Outbox<Reliable>,
    strangers: u64,
}

impl Reliable {
    /// An endpoint for `node` in its life `incarnation`, with nothing sent
    /// or received. [`Recover::recover`] calls this; a core that embeds a
    /// channel can call it directly.
    pub fn new(config: &ReliableConfig, node: NodeId, incarnation: Incarnation) -> Self {
        let config = config.normalized();
        let peers = config
            .peers
            .iter()
            .filter(|&&p| p != node)
            .map(|&p| (p, Peer::new(p, &config)))
            .collect();
        Reliable {
            config,
            me: node,
            incarnation,
            peers,
            out: Outbox::new(),
            strangers: 0,
        }
    }

    // ---- getters ----

    /// This node.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// This life of this node.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The configuration in use ([normalized](ReliableConfig::normalized)).
    pub fn config(&self) -> &ReliableConfig {
        &self.config
    }

    /// The peers, in order (this node excluded).
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    /// `peer`'s incarnation, once this life has heard from it.
    pub fn peer_incarnation(&self, peer: NodeId) -> Option<Incarnation> {
        self.peers
            .get(&peer)
            .filter(|p| p.heard)
            .map(|p| p.incarnation)
    }

    /// What happened with `peer` in this life, and the stream's state now;
    /// `None` if `peer` is not a peer.
    pub fn peer_stats(&self, peer: NodeId) -> Option<PeerStats> {
        self.peers.get(&peer).map(|p| PeerStats {
            in_flight: p.in_flight.len(),
            queued: p.queue.len(),
            reorder_buffered: p.reorder.len(),
            srtt: p.rtt.srtt(),
            rto: p.rtt.rto(),
            ..p.stats
        })
    }

    /// The round-trip estimator for `peer`.
    pub fn rtt(&self, peer: NodeId) -> Option<&RttEstimator> {
        self.peers.get(&peer).map(|p| &p.rtt)
    }

    /// Whether every message sent has been acknowledged (nothing in flight
    /// or queued to anyone).
    pub fn is_idle(&self) -> bool {
        self.peers
            .values()
            .all(|p| p.in_flight.is_empty() && p.queue.is_empty())
    }

    /// Messages dropped because their sender is not a configured peer.
    pub fn strangers_dropped(&self) -> u64 {
        self.strangers
    }

    // ---- mutators ----

    /// Sends `payload` to `to`: reliably, in order, exactly once per life
    /// of the receiver, unless `to` restarts first (then
    /// [`PeerRestarted`](ReliableEvent::PeerRestarted) hands it back if it
    /// was not acknowledged).
    ///
    /// The segment goes out at once if the window has room; otherwise it
    /// waits in the send queue. With the queue full too, or `to` not a
    /// peer, or `payload` too long, the send is answered with
    /// [`SendRejected`](ReliableEvent::SendRejected) and nothing else
    /// changes.
    pub fn send(&mut self, now: Instant, to: NodeId, payload: Bytes) {
        let (peers, _, mut io) = self.split();
        if payload.len() > io.config.max_payload {
            io.out.event(ReliableEvent::SendRejected {
                to,
                payload,
                reason: RejectReason::TooLarge,
            });
            return;
        }
        let Some(peer) = peers.get_mut(&to) else {
            io.out.event(ReliableEvent::SendRejected {
                to,
                payload,
                reason: RejectReason::UnknownPeer,
            });
            return;
        };
        if peer.queue.len() >= io.config.send_queue && !peer.window_has_room(io.config) {
            peer.stats.rejected += 1;
            io.out.event(ReliableEvent::SendRejected {
                to,
                payload,
                reason: RejectReason::QueueFull,
            });
            return;
        }
        peer.queue.push_back(payload);
        peer.pump(now, &mut io);
    }
}

impl Peer {
    fn new(id: NodeId, config: &ReliableConfig) -> Self {
        Peer {
            id,
            incarnation: Incarnation::FIRST,
            heard: false,
            next_seq: 0,
            in_flight: VecDeque::new(),
            queue: VecDeque::new(),
            peer_window: config.window,
            rtt: RttEstimator::new(config.rtt),
            rto_at: None,
            expected: 0,
            reorder: BTreeMap::new(),
            ack_at: None,
            unacked_in_order: 0,
            stats: PeerStats::default(),
        }
    }

    fn window(&self, config: &ReliableConfig) -> usize {
        config.window.min(self.peer_window).max(1)
    }

    fn window_has_room(&self, config: &ReliableConfig) -> bool {
        // The last sequence number is never used, so a receiver's
        // `expected + 1` cannot overflow into a second delivery of it.
        self.in_flight.len() < self.window(config) && self.next_seq < u64::MAX
    }

    // ---- sending side ----

    /// Moves queued messages into the window and sends them; starts the
    /// timer if it is not running (RFC 6298 (5.1)).
    fn pump(&mut self, now: Instant, io: &mut Io<'_>) {
        while self.window_has_room(io.config) {
            let Some(payload) = self.queue.pop_front() else {
                break;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            io.out.send(
                self.id,
                ReliableMessage::Data {
                    sender_incarnation: io.me,
                    receiver_incarnation: self.incarnation,
                    seq,
                    payload: payload.clone(),
                },
            );
            self.in_flight.push_back(Segment {
                seq,
                payload,
                sent_at: now,
                transmissions: 1,
                sacked: false,
                fast_retransmitted: false,
            });
            self.stats.segments_sent += 1;
        }
        if !self.in_flight.is_empty() && self.rto_at.is_none() {
            self.arm_rto(now, io);
        }
    }

    fn arm_rto(&mut self, now: Instant, io: &mut Io<'_>) {
        // A deadline past what an Instant holds (an absurd max_rto) is
        // never reached: leave the timer off rather than panic.
        self.rto_at = now.checked_add(self.rtt.rto());
        if let Some(at) = self.rto_at {
            io.out.set_timer(ReliableTimer::Retransmit(self.id), at);
        }
    }

    fn disarm_rto(&mut self, io: &mut Io<'_>) {
        if self.rto_at.take().is_some() {
            io.out.cancel_timer(ReliableTimer::Retransmit(self.id));
        }
    }

    fn retransmit(&mut self, index: usize, now: Instant, io: &mut Io<'_>) {
        let Some(seg) = self.in_flight.get_mut(index) else {
            return;
        };
        seg.sent_at = now;
        seg.transmissions = seg.transmissions.saturating_add(1);
        let msg = ReliableMessage::Data {
            sender_incarnation: io.me,
            receiver_incarnation: self.incarnation,
            seq: seg.seq,
            payload: seg.payload.clone(),
        };
        self.stats.retransmissions += 1;
        io.out.retransmit(self.id, seg.seq, msg);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        cumulative: u64,
        selective: &[(u64, u64)],
        window: u32,
        io: &mut Io<'_>,
    ) {
        let beyond_sent = |n: u64| n > self.next_seq;
        if beyond_sent(cumulative) || selective.iter().any(|&(_, end)| beyond_sent(end)) {
            io.drop_message(&mut self.stats.invalid_dropped);
            return;
        }
        self.peer_window = usize::try_from(window).unwrap_or(usize::MAX).max(1);
        // Karn: only segments sent once give a sample; of those newly
        // acknowledged, the most recently sent one is the freshest.
        let mut sample: Option<Instant> = None;
        let mut consider = |seg: &Segment| {
            if seg.transmissions == 1 && sample.is_none_or(|t| seg.sent_at > t) {
                sample = Some(seg.sent_at);
            }
        };
        let mut advanced = false;
        while self.in_flight.front().is_some_and(|s| s.seq < cumulative) {
            if let Some(seg) = self.in_flight.pop_front() {
                advanced = true;
                if !seg.sacked {
                    consider(&seg);
                }
            }
        }
        if let Some(base) = self.in_flight.front().map(|s| s.seq) {
            for &(start, end) in selective {
                let lo = start.saturating_sub(base);
                let hi = end.saturating_sub(base);
                let (lo, hi) = (
                    clamp_index(lo, self.in_flight.len()),
                    clamp_index(hi, self.in_flight.len()),
                );
                for seg in self.in_flight.range_mut(lo..hi) {
                    if !seg.sacked {
                        seg.sacked = true;
                        consider(seg);
                    }
                }
            }
        }
        if let Some(sent_at) = sample {
            self.rtt.on_sample(now.saturating_duration_since(sent_at));
            self.stats.rtt_samples += 1;
        }
        if advanced {
            // RFC 6298 (5.2), (5.3): off when nothing is left, else
            // restarted by the pump below (a SetTimer replaces the old
            // setting, so no CancelTimer is needed for that).
            if self.in_flight.is_empty() && self.queue.is_empty() {
                self.disarm_rto(io);
            } else {
                self.rto_at = None;
            }
        }
        self.fast_retransmit(now, io);
        self.pump(now, io);
    }

    /// Retransmits, once each, the holes with [`DUP_THRESHOLD`] selectively
    /// acknowledged segments above them.
    fn fast_retransmit(&mut self, now: Instant, io: &mut Io<'_>) {
        let mut above = 0;
        let mut holes = Vec::new();
        for (i, seg) in self.in_flight.iter().enumerate().rev() {
            if seg.sacked {
                above += 1;
            } else if above >= DUP_THRESHOLD && !seg.fast_retransmitted {
                holes.push(i);
            }
        }
        for &i in holes.iter().rev() {
            if let Some(seg) = self.in_flight.get_mut(i) {
                seg.fast_retransmitted = true;
            }
            self.stats.fast_retransmissions += 1;
            self.retransmit(i, now, io);
        }
    }

    fn on_retransmit_timer(&mut self, now: Instant, io: &mut Io<'_>) {
        match self.rto_at {
            Some(at) if now >= at => self.rto_at = None,
            // Replaced or cancelled since: not this timer's turn.
            _ => return,
        }
        if self.in_flight.is_empty() {
            return;
        }
        self.stats.timeouts += 1;
        // Segments out for a whole RTO are presumed lost; those sent since
        // (after an ack opened the window) may still be on their way.
        let cutoff = now.checked_sub(self.rtt.rto());
        let mut oldest = true;
        for i in 0..self.in_flight.len() {
            let seg = &self.in_flight[i];
            if seg.sacked {
                continue;
            }
            if oldest || cutoff.is_some_and(|c| seg.sent_at <= c) {
                self.retransmit(i, now, io);
            }
            oldest = false;
        }
        // RFC 6298 (5.5), (5.6).
        self.rtt.on_timeout();
        self.arm_rto(now, io);
    }

    // ---- receiving side ----

    fn on_data(&mut self, now: Instant, seq: u64, payload: Bytes, io: &mut Io<'_>) {
        if seq == u64::MAX {
            // Never sent (see window_has_room).
            io.drop_message(&mut self.stats.invalid_dropped);
            return;
        }
        if seq < self.expected {
            io.drop_message(&mut self.stats.duplicates_dropped);
            // Our earlier ack may have been lost: repeat it.
            self.send_ack(io);
            return;
        }
        let ahead = seq - self.expected;
        if ahead >= io.config.reorder_buffer as u64 {
            io.drop_message(&mut self.stats.beyond_window_dropped);
            self.send_ack(io);
            return;
        }
        if ahead > 0 {
            match self.reorder.entry(seq) {
                Entry::Occupied(_) => io.drop_message(&mut self.stats.duplicates_dropped),
                Entry::Vacant(slot) => {
                    slot.insert(payload);
                    self.stats.out_of_order_buffered += 1;
                }
            }
            // An immediate ack tells the sender of the hole (RFC 5681).
            self.send_ack(io);
            return;
        }
        self.deliver(payload, io);
        let filled_hole = self
            .reorder
            .first_key_value()
            .is_some_and(|(&k, _)| k == self.expected);
        while let Some(payload) = self.reorder.remove(&self.expected) {
            self.deliver(payload, io);
        }
        self.unacked_in_order += 1;
        if filled_hole || io.config.ack_delay.is_zero() || self.unacked_in_order >= 2 {
            self.send_ack(io);
        } else if self.ack_at.is_none() {
            match now.checked_add(io.config.ack_delay) {
                Some(at) => {
                    self.ack_at = Some(at);
                    io.out.set_timer(ReliableTimer::Ack(self.id), at);
                }
                None => self.send_ack(io),
            }
        }
    }

    fn deliver(&mut self, payload: Bytes, io: &mut Io<'_>) {
        self.expected += 1;
        self.stats.delivered += 1;
        io.out.event(ReliableEvent::Delivered {
            from: self.id,
            payload,
        });
    }

    fn send_ack(&mut self, io: &mut Io<'_>) {
        if self.ack_at.take().is_some() {
            io.out.cancel_timer(ReliableTimer::Ack(self.id));
        }
        self.unacked_in_order = 0;
        let mut selective: Vec<(u64, u64)> = Vec::new();
        for &seq in self.reorder.keys() {
            // Keys are below u64::MAX (on_data refuses it), so `seq + 1`
            // cannot overflow.
            if let Some((_, end)) = selective.last_mut()
                && *end == seq
            {
                *end = seq + 1;
            } else if selective.len() == io.config.max_sack_ranges {
                break;
            } else {
                selective.push((seq, seq + 1));
            }
        }
        self.stats.acks_sent += 1;
        io.out.send(
            self.id,
            ReliableMessage::Ack {
                sender_incarnation: io.me,
                receiver_incarnation: self.incarnation,
                cumulative: self.expected,
                selective,
                window: u32::try_from(io.config.reorder_buffer).unwrap_or(u32::MAX),
            },
        );
    }

    // ---- incarnations ----

    /// The peer runs as `incarnation`, above the one known: both streams
    /// with it start afresh.
    fn restarted(&mut self, incarnation: Incarnation, io: &mut Io<'_>) {
        let unacked: Vec<Bytes> = self.in_flight.drain(..).map(|s| s.payload).collect();
        let report = self.heard || !unacked.is_empty();
        self.incarnation = incarnation;
        self.next_seq = 0;
        self.peer_window = io.config.window;
        self.disarm_rto(io);
        // The peer answered, so the path works: a back-off earned while it
        // was down would only delay repairing the new life's first loss.
        self.rtt.reset_backoff();
        self.expected = 0;
        self.reorder.clear();
        self.unacked_in_order = 0;
        if self.ack_at.take().is_some() {
            io.out.cancel_timer(ReliableTimer::Ack(self.id));
        }
        if report {
            self.stats.restarts_detected += 1;
            self.stats.unacked_reported += unacked.len() as u64;
            io.out.event(ReliableEvent::PeerRestarted {
                peer: self.id,
                incarnation,
                unacked,
            });
        }
    }
}

fn clamp_index(i: u64, len: usize) -> usize {
    usize::try_from(i).unwrap_or(usize::MAX).min(len)
}

impl Protocol for Reliable {
    type Message = ReliableMessage;
    type Input = ReliableInput;
    type Event = ReliableEvent;
    type Timer = ReliableTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: ReliableMessage) {
        self.out.received();
        let (peers, strangers, mut io) = self.split();
        let Some(peer) = peers.get_mut(&from) else {
            io.drop_message(strangers);
            return;
        };
        let sender = msg.sender_incarnation();
        if sender < peer.incarnation {
            io.drop_message(&mut peer.stats.stale_dropped);
            return;
        }
        if sender > peer.incarnation {
            peer.restarted(sender, &mut io);
        }
        peer.heard = true;
        let addressed = msg.receiver_incarnation();
        match msg {
            ReliableMessage::Data { seq, payload, .. } => {
                if addressed < io.me {
                    io.drop_message(&mut peer.stats.stale_dropped);
                    // Tells the sender our incarnation: it learns we
                    // restarted and reports what it had in flight.
                    peer.send_ack(&mut io);
                } else if addressed > io.me {
                    io.drop_message(&mut peer.stats.invalid_dropped);
                } else {
                    peer.on_data(now, seq, payload, &mut io);
                }
            }
            ReliableMessage::Ack {
                cumulative,
                selective,
                window,
                ..
            } => {
                if addressed < io.me {
                    io.drop_message(&mut peer.stats.stale_dropped);
                } else if addressed > io.me {
                    io.drop_message(&mut peer.stats.invalid_dropped);
                } else {
                    peer.on_ack(now, cumulative, &selective, window, &mut io);
                }
            }
        }
        // A restart may have freed the window for queued messages.
        peer.pump(now, &mut io);
    }

    fn handle_input(&mut self, now: Instant, input: ReliableInput) {
        match input {
            ReliableInput::Send { to, payload } => self.send(now, to, payload),
        }
    }

    fn handle_timer(&mut self, now: Instant, timer: ReliableTimer) {
        self.out.timer_fired();
        let (peers, _, mut io) = self.split();
        match timer {
            ReliableTimer::Retransmit(p) => {
                if let Some(peer) = peers.get_mut(&p) {
                    peer.on_retransmit_timer(now, &mut io);
                }
            }
            ReliableTimer::Ack(p) => {
                if let Some(peer) = peers.get_mut(&p)
                    && let Some(at) = peer.ack_at
                    && now >= at
                {
                    peer.ack_at = None;
                    peer.send_ack(&mut io);
                }
            }
        }
    }

    /// Never called: the channel persists nothing.
    fn handle_persisted(&mut self, _now: Instant, _token: PersistToken) {}

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl Recover for Reliable {
    type Config = ReliableConfig;

    /// Builds a fresh endpoint in the life `ctx.incarnation`: the channel
    /// keeps nothing on stable storage, so `ctx.records` is empty and
    /// ignored, and it uses no randomness.
    fn recover(config: &ReliableConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        Ok(Reliable::new(config, ctx.node, ctx.incarnation))
    }
}

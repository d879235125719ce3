//! How a reliable channel is set up.

use std::time::Duration;

use ft_core::NodeId;

use super::message::{MAX_PAYLOAD, MAX_SACK_RANGES};
use crate::rtt::RttConfig;

/// The static configuration of a [`Reliable`](super::Reliable) core, the
/// same in every life.
///
/// Every buffer is bounded by a number here, so the memory a core can hold
/// is at most, per peer, `window + send_queue` unacknowledged payloads on
/// the sending side and `reorder_buffer` payloads on the receiving side,
/// each at most `max_payload` bytes; and the number of peers is
/// `peers.len()`. With the defaults and 1 KiB payloads that is about
/// 1.1 MiB per peer, almost all of it the send queue.
///
/// # Defaults ([`ReliableConfig::new`])
///
/// | field | default | why |
/// |---|---|---|
/// | `window` | 64 | segments in flight per peer: enough to keep a path of 64 × payload / RTT busy, small enough that a timeout resends little |
/// | `send_queue` | 1024 | messages waiting for the window per peer; beyond it sends are rejected (backpressure) rather than buffered without bound |
/// | `reorder_buffer` | 64 | the same as the window, so a peer using the default window never has a segment dropped for being too far ahead |
/// | `max_sack_ranges` | 8 | holes worth reporting at once; with a 64-segment window, 8 ranges describe the usual one or two losses many times over (the wire allows [`MAX_SACK_RANGES`]) |
/// | `rtt` | [`RttConfig::default`] | RFC 6298 with a 200 ms floor |
/// | `ack_delay` | 0 | acknowledge every segment at once: acks are small, and a prompt ack keeps RTT samples honest; set a few milliseconds to coalesce acks of bursts |
/// | `max_payload` | [`MAX_PAYLOAD`] | what fits one default frame |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReliableConfig {
    /// The nodes this endpoint talks to. Messages from anyone else are
    /// dropped and counted; sends to anyone else are rejected. This node
    /// itself may be listed (it is ignored), so every node of a group can
    /// share one configuration.
    pub peers: Vec<NodeId>,
    /// The most segments in flight (sent, not yet cumulatively
    /// acknowledged) to one peer; at least 1. The receiver's advertised
    /// window lowers it further.
    pub window: usize,
    /// The most messages waiting for room in the window, per peer; a send
    /// beyond it is answered with
    /// [`SendRejected`](super::ReliableEvent::SendRejected).
    pub send_queue: usize,
    /// The most segments held for in-order delivery, per peer: a segment
    /// more than this far past the next expected one is dropped (and
    /// counted), and the sender retransmits it later. At least 1.
    pub reorder_buffer: usize,
    /// The most selective-acknowledgement ranges per ack (at most
    /// [`MAX_SACK_RANGES`]; the lowest ranges are reported, since they
    /// describe the holes the sender must fill first).
    pub max_sack_ranges: usize,
    /// The retransmission-timeout estimator's bounds.
    pub rtt: RttConfig,
    /// How long a receiver may wait to acknowledge an in-order segment,
    /// hoping to cover the next one with the same ack. Out-of-order,
    /// duplicate and misaddressed segments, and every second in-order one,
    /// are acknowledged at once whatever this says. Keep it well below
    /// `rtt.min_rto`, or the sender retransmits segments that arrived.
    pub ack_delay: Duration,
    /// The largest payload accepted by a send (at most [`MAX_PAYLOAD`], what
    /// the decoder and the default frame allow); larger ones are rejected.
    pub max_payload: usize,
}

impl ReliableConfig {
    /// The defaults (see the table above) for a group of `peers`.
    pub fn new(peers: impl IntoIterator<Item = NodeId>) -> Self {
        ReliableConfig {
            peers: peers.into_iter().collect(),
            window: 64,
            send_queue: 1024,
            reorder_buffer: 64,
            max_sack_ranges: 8,
            rtt: RttConfig::default(),
            ack_delay: Duration::ZERO,
            max_payload: MAX_PAYLOAD,
        }
    }

    /// The defaults for nodes `NodeId(0)..NodeId(n)`, as the simulator
    /// numbers them.
    pub fn with_size(n: usize) -> Self {
        ReliableConfig::new((0..n as u64).map(NodeId))
    }

    /// The configuration a core actually uses: `window` and
    /// `reorder_buffer` at least 1 (and at most `u32::MAX`, what an ack can
    /// advertise), `max_sack_ranges` and `max_payload` at most what the wire
    /// allows, the RTT bounds [normalized](RttConfig::normalized), and
    /// `peers` sorted without duplicates.
    #[must_use]
    pub fn normalized(&self) -> ReliableConfig {
        let mut peers = self.peers.clone();
        peers.sort_unstable();
        peers.dedup();
        let max_window = u32::MAX as usize;
        ReliableConfig {
            peers,
            window: self.window.clamp(1, max_window),
            send_queue: self.send_queue,
            reorder_buffer: self.reorder_buffer.clamp(1, max_window),
            max_sack_ranges: self.max_sack_ranges.min(MAX_SACK_RANGES),
            rtt: self.rtt.normalized(),
            ack_delay: self.ack_delay,
            max_payload: self.max_payload.min(MAX_PAYLOAD),
        }
    }
}

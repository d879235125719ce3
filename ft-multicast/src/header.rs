//! The ordering layer's header, inside the core's payloads.
//!
//! [`Ordered`](crate::Ordered) adds nothing to the reliable core's wire
//! format for its ordered levels: what it needs rides in front of the
//! application's bytes, inside [`McastMessage::Data`](crate::McastMessage).
//! Two kinds of payload, both starting with [`HEADER_VERSION`] and a kind
//! byte; integers are little-endian:
//!
//! ```text
//! message:  version | level (0 Fifo, 1 Causal, 2 Reliable, 3 Agreed, 4 Safe)
//!           | u32 n | n × (node u64, life u64, upto u64)  (causal past)
//!           | the application's bytes
//! decision: version | 0x10 | first u64
//!           | u32 n | n × (node u64, life u64, seq u64)   (positions first..)
//!           | u32 m | m × (node u64, life u64, upto u64)  (prefix)
//! ```
//!
//! A decision is the group's sequencer's (see [`total`](crate::total)):
//! the messages it names take positions `first`, `first + 1`, … of the
//! total order, and the prefix says, for each sender, up to which message
//! of which life every [`Agreed`](crate::Order::Agreed) or
//! [`Safe`](crate::Order::Safe) message has been ordered or will never be.
//!
//! [`decode`] never panics and allocates no more than the bytes allow.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError};
use ft_core::{Incarnation, NodeId};

use crate::causal::Order;
use crate::message::{get_ids, put_ids};

/// The version of the ordering header.
pub const HEADER_VERSION: u8 = 1;

/// The most positions one decision carries.
pub const MAX_DECISIONS: usize = 64;

const DECISION: u8 = 0x10;

/// A message of a sender's stream: the sender, its life, its number.
pub type MessageId = (NodeId, Incarnation, u64);

/// What a core payload written by [`Ordered`](crate::Ordered) holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    /// An application message.
    Message {
        /// Its delivery level (never [`Order::Unreliable`], which does not
        /// ride the core).
        order: Order,
        /// Its causal past (empty unless the level carries one): for other
        /// members, the last message of theirs (in a life) delivered by
        /// the sender.
        past: Vec<MessageId>,
        /// The application's bytes.
        payload: Bytes,
    },
    /// A decision of the sequencer.
    Decision(Decision),
}

/// The sequencer's decision: positions of the total order, and how far
/// each sender's stream has been ordered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The position of the first of `entries`.
    pub first: u64,
    /// The messages at positions `first`, `first + 1`, …: at most
    /// [`MAX_DECISIONS`].
    pub entries: Vec<MessageId>,
    /// For each sender, the last message whose fate is decided once these
    /// entries are: ordered at a position, or never to be ordered (it was
    /// lost with its sender's life).
    pub prefix: Vec<MessageId>,
}

fn level_byte(order: Order) -> u8 {
    match order {
        Order::Fifo => 0,
        Order::Causal => 1,
        Order::Reliable => 2,
        Order::Agreed => 3,
        Order::Safe => 4,
        // Never written: datagrams do not ride the core.
        Order::Unreliable => 5,
    }
}

/// Why an ordering header's list is refused.
const TOO_MANY: &str = "an ordering header with too many entries";

/// An application message with its level and causal past, as one core
/// payload.
pub fn encode_message(order: Order, past: &[MessageId], payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(6 + past.len() * 24 + payload.len());
    b.put_u8(HEADER_VERSION);
    b.put_u8(level_byte(order));
    put_ids(&mut b, past);
    b.put_slice(payload);
    b.freeze()
}

/// A decision, as one core payload (entries beyond [`MAX_DECISIONS`] are
/// left out: the sequencer never makes more).
pub fn encode_decision(d: &Decision) -> Bytes {
    let n = d.entries.len().min(MAX_DECISIONS);
    let mut b = BytesMut::with_capacity(18 + (n + d.prefix.len()) * 24);
    b.put_u8(HEADER_VERSION);
    b.put_u8(DECISION);
    b.put_u64_le(d.first);
    put_ids(&mut b, &d.entries[..n]);
    put_ids(&mut b, &d.prefix);
    b.freeze()
}

/// Reads a core payload written by [`Ordered`](crate::Ordered).
///
/// # Errors
/// [`DecodeError`] for bytes no `Ordered` node wrote: a wrong version or
/// kind, lengths beyond the bytes, a decision that does not end where its
/// lists do.
pub fn decode(mut b: Bytes) -> Result<Header, DecodeError> {
    let version = wire::get_u8(&mut b)?;
    if version != HEADER_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: HEADER_VERSION,
        });
    }
    let order = match wire::get_u8(&mut b)? {
        0 => Order::Fifo,
        1 => Order::Causal,
        2 => Order::Reliable,
        3 => Order::Agreed,
        4 => Order::Safe,
        DECISION => {
            let first = wire::get_u64(&mut b)?;
            let entries = get_ids(&mut b, MAX_DECISIONS, TOO_MANY)?;
            let prefix = get_ids(&mut b, usize::MAX, TOO_MANY)?;
            if b.has_remaining() {
                return Err(DecodeError::Invalid("bytes after a decision"));
            }
            return Ok(Header::Decision(Decision {
                first,
                entries,
                prefix,
            }));
        }
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "ordering header",
                tag,
            });
        }
    };
    let past = get_ids(&mut b, usize::MAX, TOO_MANY)?;
    Ok(Header::Message {
        order,
        past,
        payload: b,
    })
}

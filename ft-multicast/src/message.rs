//! What members send each other, and its wire format.
//!
//! Every message starts with a version byte ([`MESSAGE_VERSION`]) and a
//! tag; integers are little-endian. A decoder never panics and never
//! allocates more than the bytes it was given allow: a payload is at most
//! [`MAX_PAYLOAD`] bytes and a NACK at most [`MAX_NACK_RANGES`] ranges.

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{Incarnation, NodeId};

use crate::group::GroupId;

/// The format version of [`McastMessage`].
pub const MESSAGE_VERSION: u8 = 1;

/// The largest payload the decoder accepts (a group's own limit,
/// [`GroupConfig::max_payload`](crate::GroupConfig), is checked by the
/// core).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The most gap ranges one NACK carries; a receiver with more gaps asks
/// for the first ones first.
pub const MAX_NACK_RANGES: usize = 16;

const DATA: u8 = 1;
const ACK: u8 = 2;
const NACK: u8 = 3;
const ANNOUNCE: u8 = 4;
const REQUEST: u8 = 5;
const REPAIR: u8 = 6;
const SESSION: u8 = 7;
// Hierarchical feedback (`Feedback::Tree`): tags 48..=63 are its.
const TREE_ACK: u8 = 48;
const TREE_NACK: u8 = 49;
const TREE_REPAIR: u8 = 50;
const TREE_ANNOUNCE: u8 = 51;
const TREE_LEAVE: u8 = 52;
const PARITY: u8 = 32;

/// The most messages one block of forward error correction covers
/// ([`Fec::k`](crate::Fec)), and the most parity packets one block has.
pub const MAX_FEC_K: usize = 128;
// Tags 16..=31: the ordering layer's own messages.
const DATAGRAM: u8 = 16;
const HAVE: u8 = 17;
const BEACON: u8 = 18;

/// The most messages one [`McastMessage::Beacon`] or [`McastMessage::Have`]
/// lists.
pub const MAX_PREFIX: usize = 4096;

/// Why a list of messages too long for a message is refused.
const TOO_MANY_IDS: &str = "a list of too many messages";

/// The most time-stamp echoes one session message carries.
pub const MAX_ECHOES: usize = 16;

/// The largest stream number a member accepts: a stream never gets near
/// it (2^62 messages), and numbers above it, which only a broken or
/// hostile member sends, are ignored, so no count can overflow.
pub const MAX_SEQ: u64 = 1 << 62;

/// A reliable-multicast message. Every one names its group and the life
/// ([`Incarnation`]) of the sender whose stream it is about: a sender's
/// sequence numbers start again at 1 in each life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum McastMessage {
    /// Message `seq` of the sender's stream in `group`: multicast when
    /// first sent, unicast again as a repair.
    Data {
        /// The group.
        group: GroupId,
        /// The sender's life.
        life: Incarnation,
        /// Its number in the sender's stream, from 1.
        seq: u64,
        /// The oldest message the sender still holds: a receiver that
        /// needs an older one will never get it.
        base: u64,
        /// The application's bytes.
        payload: Bytes,
    },
    /// "I have every message of your stream up to `upto`": cumulative,
    /// from a receiver to the sender.
    Ack {
        /// The group.
        group: GroupId,
        /// The life of the sender whose stream is acknowledged.
        life: Incarnation,
        /// Every message up to this one is delivered (0: none).
        upto: u64,
    },
    /// "Send me these again": from a receiver that sees a gap, to the
    /// sender. Each range is inclusive.
    Nack {
        /// The group.
        group: GroupId,
        /// The life of the sender whose stream has the gaps.
        life: Incarnation,
        /// The missing messages, as inclusive ranges, at most
        /// [`MAX_NACK_RANGES`].
        ranges: Vec<(u64, u64)>,
    },
    /// The sender's stream position, multicast periodically while some
    /// member has not acknowledged everything, so that the loss of the
    /// last messages is noticed.
    Announce {
        /// The group.
        group: GroupId,
        /// The sender's life.
        life: Incarnation,
        /// The oldest message the sender still holds.
        base: u64,
        /// The last message sent (0: none yet).
        highest: u64,
    },
    /// "Who has these messages of `origin`'s stream?": multicast to the
    /// group by a receiver with gaps ([`Feedback::Nack`](crate::Feedback)).
    Request {
        /// The group.
        group: GroupId,
        /// The stream's source.
        origin: ft_core::NodeId,
        /// The source's life.
        life: Incarnation,
        /// The missing messages, as inclusive ranges, at most
        /// [`MAX_NACK_RANGES`].
        ranges: Vec<(u64, u64)>,
    },
    /// Message `seq` of `origin`'s stream again, multicast by any member
    /// that holds it, in answer to a `Request`.
    Repair {
        /// The group.
        group: GroupId,
        /// The stream's source.
        origin: ft_core::NodeId,
        /// The source's life.
        life: Incarnation,
        /// Its number.
        seq: u64,
        /// The application's bytes.
        payload: Bytes,
    },
    /// A member's periodic session message ([`Feedback::Nack`](crate::Feedback)):
    /// its own stream's position, its clock, and echoes of other members'
    /// clocks, from which each measures its distance to the others.
    Session {
        /// The group.
        group: GroupId,
        /// The member's life.
        life: Incarnation,
        /// The oldest message of its own stream it still holds.
        base: u64,
        /// The last message it sent (0: none).
        highest: u64,
        /// Its clock, in microseconds since it started.
        stamp: u64,
        /// For some other members: the stamp of their last session message
        /// heard, and how long ago (µs) it was heard. At most
        /// [`MAX_ECHOES`].
        echoes: Vec<(ft_core::NodeId, u64, u64)>,
    },
    /// "My subtree has every message of `origin`'s stream up to `upto`":
    /// cumulative, from a member to its parent in `origin`'s tree
    /// ([`Feedback::Tree`](crate::Feedback)), never more than what the
    /// member and every child it waits on have delivered. Also how a
    /// member attaches to a new parent.
    TreeAck {
        /// The group.
        group: GroupId,
        /// The stream's source.
        origin: ft_core::NodeId,
        /// The source's life.
        life: Incarnation,
        /// Every message up to this one is delivered in the subtree.
        upto: u64,
    },
    /// "Send me these again", from a member to its parent in `origin`'s
    /// tree, which repairs from what it keeps for its subtree.
    TreeNack {
        /// The group.
        group: GroupId,
        /// The stream's source.
        origin: ft_core::NodeId,
        /// The source's life.
        life: Incarnation,
        /// The missing messages, as inclusive ranges, at most
        /// [`MAX_NACK_RANGES`].
        ranges: Vec<(u64, u64)>,
    },
    /// Message `seq` of `origin`'s stream, from a coordinator to a child
    /// that asked for it.
    TreeRepair {
        /// The group.
        group: GroupId,
        /// The stream's source.
        origin: ft_core::NodeId,
        /// The source's life.
        life: Incarnation,
        /// Its number.
        seq: u64,
        /// The oldest message the source still held, as far as the
        /// coordinator heard.
        base: u64,
        /// The application's bytes.
        payload: Bytes,
    },
    /// `origin`'s stream position, sent by each member of its tree to its
    /// children every heartbeat while the source holds messages: it
    /// reveals tail loss, asks for acknowledgements, and tells the
    /// children their parent is alive.
    TreeAnnounce {
        /// The group.
        group: GroupId,
        /// The stream's source.
        origin: ft_core::NodeId,
        /// The source's life.
        life: Incarnation,
        /// The oldest message the source still holds (as heard).
        base: u64,
        /// The last message the source sent (as heard).
        highest: u64,
    },
    /// "I acknowledge to a nearer parent now": from a member to a
    /// coordinator that adopted it, once its own parent (or a nearer
    /// ancestor) is back and waits on it.
    TreeLeave {
        /// The group.
        group: GroupId,
        /// The stream's source.
        origin: ft_core::NodeId,
        /// The source's life.
        life: Incarnation,
    },
    /// Parity packet `index` of block `block` of `origin`'s stream
    /// (forward error correction, [`Fec`](crate::Fec)): a Reed–Solomon
    /// recovery shard over the block's first `lens.len()` messages,
    /// numbers `block·k + 1 ..= block·k + lens.len()`, each padded to the
    /// longest. A receiver that holds any `lens.len()` of those messages
    /// and parity packets rebuilds the rest.
    Parity {
        /// The group.
        group: GroupId,
        /// The stream's source.
        origin: ft_core::NodeId,
        /// The source's life.
        life: Incarnation,
        /// The block's number, from 0.
        block: u64,
        /// Messages per block in the group (blocks are numbered by it).
        k: u16,
        /// Which parity packet of the block this is.
        index: u16,
        /// The true length of each message the parity covers, at most
        /// [`MAX_FEC_K`]: what padding to take off a rebuilt message.
        lens: Vec<u32>,
        /// The recovery shard.
        shard: Bytes,
    },
    /// An [`Unreliable`](crate::Order::Unreliable) message: multicast
    /// once, kept nowhere, never repaired, delivered on arrival.
    Datagram {
        /// The group.
        group: GroupId,
        /// The sender's life.
        life: Incarnation,
        /// Its number among the sender's datagrams in this life, from 1
        /// (so that a duplicated copy is delivered once).
        number: u64,
        /// The application's bytes.
        payload: Bytes,
    },
    /// From a member to the group's sequencer (total order): every
    /// position of the total order up to `upto` is resolved here (the
    /// message is held or delivered, or reported missed). The sequencer
    /// learns from these which positions are stable (held everywhere).
    Have {
        /// The group.
        group: GroupId,
        /// The member's life.
        life: Incarnation,
        /// The last position resolved.
        upto: u64,
        /// Agreed or safe messages held here with no position yet, first
        /// in their senders' order: the sequencer asks their senders for
        /// any it lacks. At most [`MAX_PREFIX`].
        lacking: Vec<(ft_core::NodeId, Incarnation, u64)>,
    },
    /// From the group's sequencer: how far its decisions have gone, as of
    /// message `highest` of its stream, and how far the total order is
    /// stable. Multicast when stability advances for a
    /// [`Safe`](crate::Order::Safe) message, and unicast in answer to a
    /// [`Have`](McastMessage::Have).
    Beacon {
        /// The group.
        group: GroupId,
        /// The sequencer's life.
        life: Incarnation,
        /// The last message of the sequencer's stream that carries
        /// decisions up to `next`.
        highest: u64,
        /// The next position the sequencer will send a decision for.
        next: u64,
        /// Every position up to this one is held by every member.
        stable: u64,
        /// For each sender, the last message (in its life) whose fate the
        /// sequencer has decided: ordered, or never to be. At most
        /// [`MAX_PREFIX`].
        prefix: Vec<(ft_core::NodeId, Incarnation, u64)>,
    },
}

impl McastMessage {
    /// Whether every stream number in it is at most [`MAX_SEQ`].
    pub fn numbers_in_range(&self) -> bool {
        let ok = |n: u64| n <= MAX_SEQ;
        match self {
            McastMessage::Data { seq, base, .. } => ok(*seq) && ok(*base),
            McastMessage::Ack { upto, .. } => ok(*upto),
            McastMessage::Nack { ranges, .. } | McastMessage::Request { ranges, .. } => {
                ranges.iter().all(|&(a, b)| ok(a) && ok(b))
            }
            McastMessage::Announce { base, highest, .. }
            | McastMessage::Session { base, highest, .. } => ok(*base) && ok(*highest),
            McastMessage::Repair { seq, .. } => ok(*seq),
            McastMessage::TreeAck { upto, .. } => ok(*upto),
            McastMessage::TreeNack { ranges, .. } => ranges.iter().all(|&(a, b)| ok(a) && ok(b)),
            McastMessage::TreeRepair { seq, base, .. } => ok(*seq) && ok(*base),
            McastMessage::TreeAnnounce { base, highest, .. } => ok(*base) && ok(*highest),
            McastMessage::TreeLeave { .. } => true,
            // A block's numbers are `block·k + 1 ..= block·k + k`.
            McastMessage::Parity { block, .. } => *block <= MAX_SEQ / MAX_FEC_K as u64,
            McastMessage::Datagram { number, .. } => ok(*number),
            McastMessage::Have { upto, lacking, .. } => {
                ok(*upto) && lacking.iter().all(|p| ok(p.2))
            }
            McastMessage::Beacon {
                highest,
                next,
                stable,
                prefix,
                ..
            } => ok(*highest) && ok(*next) && ok(*stable) && prefix.iter().all(|p| ok(p.2)),
        }
    }

    /// The group the message is about.
    pub fn group(&self) -> GroupId {
        match self {
            McastMessage::Data { group, .. }
            | McastMessage::Ack { group, .. }
            | McastMessage::Nack { group, .. }
            | McastMessage::Announce { group, .. }
            | McastMessage::Request { group, .. }
            | McastMessage::Repair { group, .. }
            | McastMessage::Session { group, .. }
            | McastMessage::TreeAck { group, .. }
            | McastMessage::TreeNack { group, .. }
            | McastMessage::TreeRepair { group, .. }
            | McastMessage::TreeAnnounce { group, .. }
            | McastMessage::TreeLeave { group, .. }
            | McastMessage::Parity { group, .. }
            | McastMessage::Datagram { group, .. }
            | McastMessage::Have { group, .. }
            | McastMessage::Beacon { group, .. } => *group,
        }
    }
}

impl Wire for McastMessage {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(MESSAGE_VERSION);
        match self {
            McastMessage::Data {
                group,
                life,
                seq,
                base,
                payload,
            } => {
                buf.put_u8(DATA);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(*seq);
                buf.put_u64_le(*base);
                wire::put_bytes(buf, payload);
            }
            McastMessage::Ack { group, life, upto } => {
                buf.put_u8(ACK);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(*upto);
            }
            McastMessage::Nack {
                group,
                life,
                ranges,
            } => {
                buf.put_u8(NACK);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                put_ranges(buf, ranges);
            }
            McastMessage::Announce {
                group,
                life,
                base,
                highest,
            } => {
                buf.put_u8(ANNOUNCE);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(*base);
                buf.put_u64_le(*highest);
            }
            McastMessage::Request {
                group,
                origin,
                life,
                ranges,
            } => {
                buf.put_u8(REQUEST);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(origin.0);
                put_ranges(buf, ranges);
            }
            McastMessage::Repair {
                group,
                origin,
                life,
                seq,
                payload,
            } => {
                buf.put_u8(REPAIR);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(origin.0);
                buf.put_u64_le(*seq);
                wire::put_bytes(buf, payload);
            }
            McastMessage::Session {
                group,
                life,
                base,
                highest,
                stamp,
                echoes,
            } => {
                buf.put_u8(SESSION);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(*base);
                buf.put_u64_le(*highest);
                buf.put_u64_le(*stamp);
                let n = echoes.len().min(MAX_ECHOES);
                buf.put_u32_le(n as u32);
                for &(node, stamp, held) in &echoes[..n] {
                    buf.put_u64_le(node.0);
                    buf.put_u64_le(stamp);
                    buf.put_u64_le(held);
                }
            }
            McastMessage::TreeAck {
                group,
                origin,
                life,
                upto,
            } => {
                tree_head(buf, TREE_ACK, *group, *life, *origin);
                buf.put_u64_le(*upto);
            }
            McastMessage::TreeNack {
                group,
                origin,
                life,
                ranges,
            } => {
                tree_head(buf, TREE_NACK, *group, *life, *origin);
                put_ranges(buf, ranges);
            }
            McastMessage::TreeRepair {
                group,
                origin,
                life,
                seq,
                base,
                payload,
            } => {
                tree_head(buf, TREE_REPAIR, *group, *life, *origin);
                buf.put_u64_le(*seq);
                buf.put_u64_le(*base);
                wire::put_bytes(buf, payload);
            }
            McastMessage::TreeAnnounce {
                group,
                origin,
                life,
                base,
                highest,
            } => {
                tree_head(buf, TREE_ANNOUNCE, *group, *life, *origin);
                buf.put_u64_le(*base);
                buf.put_u64_le(*highest);
            }
            McastMessage::TreeLeave {
                group,
                origin,
                life,
            } => tree_head(buf, TREE_LEAVE, *group, *life, *origin),
            McastMessage::Parity {
                group,
                origin,
                life,
                block,
                k,
                index,
                lens,
                shard,
            } => {
                buf.put_u8(PARITY);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(origin.0);
                buf.put_u64_le(*block);
                buf.put_u16_le(*k);
                buf.put_u16_le(*index);
                // At most MAX_FEC_K, as for ranges: what the decoder takes.
                let n = lens.len().min(MAX_FEC_K);
                buf.put_u16_le(n as u16);
                for &len in &lens[..n] {
                    buf.put_u32_le(len);
                }
                wire::put_bytes(buf, shard);
            }
            McastMessage::Datagram {
                group,
                life,
                number,
                payload,
            } => {
                buf.put_u8(DATAGRAM);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(*number);
                wire::put_bytes(buf, payload);
            }
            McastMessage::Have {
                group,
                life,
                upto,
                lacking,
            } => {
                buf.put_u8(HAVE);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(*upto);
                put_ids(buf, &lacking[..lacking.len().min(MAX_PREFIX)]);
            }
            McastMessage::Beacon {
                group,
                life,
                highest,
                next,
                stable,
                prefix,
            } => {
                buf.put_u8(BEACON);
                buf.put_u32_le(group.0);
                buf.put_u64_le(life.0);
                buf.put_u64_le(*highest);
                buf.put_u64_le(*next);
                buf.put_u64_le(*stable);
                put_ids(buf, &prefix[..prefix.len().min(MAX_PREFIX)]);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let version = wire::get_u8(buf)?;
        if version != MESSAGE_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: MESSAGE_VERSION,
            });
        }
        let tag = wire::get_u8(buf)?;
        if !(DATA..=SESSION).contains(&tag)
            && !(DATAGRAM..=BEACON).contains(&tag)
            && tag != PARITY
            && !(TREE_ACK..=TREE_LEAVE).contains(&tag)
        {
            return Err(DecodeError::UnknownTag {
                what: "McastMessage",
                tag,
            });
        }
        let group = GroupId(wire::get_u32(buf)?);
        let life = Incarnation(wire::get_u64(buf)?);
        if tag >= TREE_ACK {
            return decode_tree(tag, group, life, buf);
        }
        Ok(match tag {
            DATA => McastMessage::Data {
                group,
                life,
                seq: wire::get_u64(buf)?,
                base: wire::get_u64(buf)?,
                payload: wire::get_bytes(buf, MAX_PAYLOAD)?,
            },
            ACK => McastMessage::Ack {
                group,
                life,
                upto: wire::get_u64(buf)?,
            },
            NACK => McastMessage::Nack {
                group,
                life,
                ranges: get_ranges(buf)?,
            },
            REQUEST => {
                let origin = ft_core::NodeId(wire::get_u64(buf)?);
                McastMessage::Request {
                    group,
                    origin,
                    life,
                    ranges: get_ranges(buf)?,
                }
            }
            REPAIR => McastMessage::Repair {
                group,
                life,
                origin: ft_core::NodeId(wire::get_u64(buf)?),
                seq: wire::get_u64(buf)?,
                payload: wire::get_bytes(buf, MAX_PAYLOAD)?,
            },
            SESSION => {
                let base = wire::get_u64(buf)?;
                let highest = wire::get_u64(buf)?;
                let stamp = wire::get_u64(buf)?;
                let n = wire::get_u32(buf)? as usize;
                let echoes = get_list(
                    buf,
                    n,
                    MAX_ECHOES,
                    24,
                    "a session message with too many echoes",
                    |b| {
                        Ok((
                            ft_core::NodeId(wire::get_u64(b)?),
                            wire::get_u64(b)?,
                            wire::get_u64(b)?,
                        ))
                    },
                )?;
                McastMessage::Session {
                    group,
                    life,
                    base,
                    highest,
                    stamp,
                    echoes,
                }
            }
            PARITY => {
                let origin = ft_core::NodeId(wire::get_u64(buf)?);
                let block = wire::get_u64(buf)?;
                let k = wire::get_u16(buf)?;
                let index = wire::get_u16(buf)?;
                let n = wire::get_u16(buf)? as usize;
                let lens = get_list(
                    buf,
                    n,
                    MAX_FEC_K,
                    4,
                    "a parity packet covering too many messages",
                    wire::get_u32,
                )?;
                McastMessage::Parity {
                    group,
                    origin,
                    life,
                    block,
                    k,
                    index,
                    lens,
                    shard: wire::get_bytes(buf, MAX_PAYLOAD)?,
                }
            }
            DATAGRAM => McastMessage::Datagram {
                group,
                life,
                number: wire::get_u64(buf)?,
                payload: wire::get_bytes(buf, MAX_PAYLOAD)?,
            },
            HAVE => McastMessage::Have {
                group,
                life,
                upto: wire::get_u64(buf)?,
                lacking: get_ids(buf, MAX_PREFIX, TOO_MANY_IDS)?,
            },
            BEACON => {
                let highest = wire::get_u64(buf)?;
                let next = wire::get_u64(buf)?;
                let stable = wire::get_u64(buf)?;
                let prefix = get_ids(buf, MAX_PREFIX, TOO_MANY_IDS)?;
                McastMessage::Beacon {
                    group,
                    life,
                    highest,
                    next,
                    stable,
                    prefix,
                }
            }
            _ => McastMessage::Announce {
                group,
                life,
                base: wire::get_u64(buf)?,
                highest: wire::get_u64(buf)?,
            },
        })
    }

    fn encoded_len_hint(&self) -> usize {
        match self {
            McastMessage::Data { payload, .. }
            | McastMessage::Repair { payload, .. }
            | McastMessage::Datagram { payload, .. } => 2 + 4 + 8 * 3 + 4 + payload.len(),
            McastMessage::Nack { ranges, .. } => 2 + 4 + 8 + 4 + 16 * ranges.len(),
            McastMessage::Request { ranges, .. } => 2 + 4 + 16 + 4 + 16 * ranges.len(),
            McastMessage::Session { echoes, .. } => 2 + 4 + 8 * 4 + 4 + 24 * echoes.len(),
            McastMessage::TreeNack { ranges, .. } => 2 + 4 + 16 + 4 + 16 * ranges.len(),
            McastMessage::TreeRepair { payload, .. } => 2 + 4 + 8 * 4 + 4 + payload.len(),
            McastMessage::TreeAnnounce { .. } => 2 + 4 + 8 * 4,
            McastMessage::Parity { lens, shard, .. } => {
                2 + 4 + 8 * 3 + 2 * 3 + 4 * lens.len() + 4 + shard.len()
            }
            McastMessage::Beacon { prefix, .. } => 2 + 4 + 8 * 4 + 4 + 24 * prefix.len(),
            McastMessage::Have { lacking, .. } => 2 + 4 + 8 * 2 + 4 + 24 * lacking.len(),
            _ => 2 + 4 + 8 * 3,
        }
    }
}

/// The start of every hierarchical-feedback message, after the version
/// byte: its tag, the group, the source's life and the source.
fn tree_head(buf: &mut BytesMut, tag: u8, group: GroupId, life: Incarnation, origin: NodeId) {
    buf.put_u8(tag);
    buf.put_u32_le(group.0);
    buf.put_u64_le(life.0);
    buf.put_u64_le(origin.0);
}

/// The rest of a hierarchical-feedback message, after its group and life.
fn decode_tree(
    tag: u8,
    group: GroupId,
    life: Incarnation,
    buf: &mut Bytes,
) -> Result<McastMessage, DecodeError> {
    let origin = NodeId(wire::get_u64(buf)?);
    Ok(match tag {
        TREE_ACK => McastMessage::TreeAck {
            group,
            origin,
            life,
            upto: wire::get_u64(buf)?,
        },
        TREE_NACK => McastMessage::TreeNack {
            group,
            origin,
            life,
            ranges: get_ranges(buf)?,
        },
        TREE_REPAIR => McastMessage::TreeRepair {
            group,
            origin,
            life,
            seq: wire::get_u64(buf)?,
            base: wire::get_u64(buf)?,
            payload: wire::get_bytes(buf, MAX_PAYLOAD)?,
        },
        TREE_ANNOUNCE => McastMessage::TreeAnnounce {
            group,
            origin,
            life,
            base: wire::get_u64(buf)?,
            highest: wire::get_u64(buf)?,
        },
        _ => McastMessage::TreeLeave {
            group,
            origin,
            life,
        },
    })
}

/// Appends `ranges`, at most [`MAX_NACK_RANGES`] of them: the core never
/// builds more, and a hand-built value still encodes to something the
/// decoder accepts.
fn put_ranges(buf: &mut BytesMut, ranges: &[(u64, u64)]) {
    let n = ranges.len().min(MAX_NACK_RANGES);
    buf.put_u32_le(n as u32);
    for &(first, last) in &ranges[..n] {
        buf.put_u64_le(first);
        buf.put_u64_le(last);
    }
}

/// Appends messages named by sender, life and number (the caller keeps
/// to the list's limit): the one encoding of such lists, in messages, the
/// ordering header and the sequencer's records.
pub(crate) fn put_ids(buf: &mut BytesMut, ids: &[(ft_core::NodeId, Incarnation, u64)]) {
    buf.put_u32_le(ids.len() as u32);
    for &(node, life, n) in ids {
        buf.put_u64_le(node.0);
        buf.put_u64_le(life.0);
        buf.put_u64_le(n);
    }
}

/// At most `most` messages named by sender, life and number (more is
/// refused as `too_many`): the one decoding of such lists.
pub(crate) fn get_ids(
    buf: &mut Bytes,
    most: usize,
    too_many: &'static str,
) -> Result<Vec<(ft_core::NodeId, Incarnation, u64)>, DecodeError> {
    let n = wire::get_u32(buf)? as usize;
    get_list(buf, n, most, 24, too_many, |b| {
        Ok((
            ft_core::NodeId(wire::get_u64(b)?),
            Incarnation(wire::get_u64(b)?),
            wire::get_u64(b)?,
        ))
    })
}

/// A list of at most [`MAX_NACK_RANGES`] inclusive ranges.
fn get_ranges(buf: &mut Bytes) -> Result<Vec<(u64, u64)>, DecodeError> {
    let n = wire::get_u32(buf)? as usize;
    get_list(
        buf,
        n,
        MAX_NACK_RANGES,
        16,
        "a NACK with too many ranges",
        |b| Ok((wire::get_u64(b)?, wire::get_u64(b)?)),
    )
}

/// `n` elements of `size` bytes each, read by `get`: more than `max`
/// (`too_many` says of what) or more than the bytes left can hold are
/// refused before anything is allocated, so a hostile count costs
/// nothing.
fn get_list<T>(
    buf: &mut Bytes,
    n: usize,
    max: usize,
    size: usize,
    too_many: &'static str,
    mut get: impl FnMut(&mut Bytes) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    if n > max {
        return Err(DecodeError::Invalid(too_many));
    }
    wire::need(buf, n * size)?;
    (0..n).map(|_| get(buf)).collect()
}

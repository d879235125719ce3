//! What RPC clients and servers say to each other.
//!
//! A body of up to [`MAX_PART`] bytes travels in one message; a larger one
//! (up to [`RpcConfig::max_body`](super::RpcConfig::max_body)) travels as
//! parts, each a [`Chunk`] naming its offset in the whole, and each carrying
//! the call's header so that the receiver can start on any of them. Lost
//! parts are sent again with the call's (or the reply's) next
//! retransmission, and the receiver keeps what it has across them.

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{Incarnation, NodeId};

use super::Semantics;

/// The wire version of every RPC message.
pub const RPC_VERSION: u8 = 2;
/// The most body bytes one message carries (a UDP datagram holds it with
/// room for the headers); larger bodies travel in parts of this size.
pub const MAX_PART: usize = 60 * 1024;
/// The largest body any configuration may allow (64 MiB): the bound a
/// receiver checks a part's claimed total against before keeping anything.
pub const MAX_BODY_LIMIT: usize = 64 << 20;
/// The most sequence numbers one `Exterminate` or `Renew` may list.
pub const MAX_LISTED: usize = 256;

/// Names one call: which client, which life of it, which call of that life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId {
    /// The calling node.
    pub client: NodeId,
    /// The life of the client that made the call.
    pub client_incarnation: Incarnation,
    /// The call's number within that life, from 1.
    pub seq: u64,
}

/// Why a call was refused. A refused call did **not** execute: every
/// variant is a refusal before anything ran, and a caller may retry it as it
/// is (or after fixing what the reason says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// (At the client.) The caller's token names a call already outstanding.
    #[error("the token names a call already outstanding")]
    TokenInUse,
    /// (At the client.) `max_pending` calls are outstanding already.
    #[error("too many calls outstanding at the client")]
    TooManyPending,
    /// The request is larger than the limit of the client (checked before
    /// sending) or of the server (checked before executing).
    #[error("request of {len} bytes exceeds the limit of {limit}")]
    RequestTooLarge {
        /// The request's size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// (At the server.) It keeps state for as many clients as it may.
    #[error("the server serves too many clients")]
    TooManyClients,
    /// (At the server.) `max_running` computations are running already.
    #[error("the server is busy")]
    ServerBusy,
    /// (At the server.) The call arrived with no time left to its deadline.
    #[error("the deadline had passed when the call arrived")]
    DeadlinePassed,
    /// (At the server.) The node serves no calls (a client-only node).
    #[error("the node serves no calls")]
    NotServing,
    /// (At the server.) An exactly-once call reached a node without stable
    /// storage, which could not keep the promise across its restarts.
    #[error("exactly-once needs stable storage, which the server has not")]
    NoStableStorage,
}

impl Refusal {
    /// A short name of the reason, for trace events.
    pub(crate) fn note(self) -> &'static str {
        match self {
            Refusal::TokenInUse => "call refused: token in use",
            Refusal::TooManyPending => "call refused: too many pending",
            Refusal::RequestTooLarge { .. } => "call refused: request too large",
            Refusal::TooManyClients => "call refused: too many clients",
            Refusal::ServerBusy => "call refused: server busy",
            Refusal::DeadlinePassed => "call refused: deadline passed",
            Refusal::NotServing => "call refused: not serving",
            Refusal::NoStableStorage => "call refused: no stable storage",
        }
    }

    fn code(self) -> u8 {
        match self {
            Refusal::TokenInUse => 1,
            Refusal::TooManyPending => 2,
            Refusal::RequestTooLarge { .. } => 3,
            Refusal::TooManyClients => 4,
            Refusal::ServerBusy => 5,
            Refusal::DeadlinePassed => 6,
            Refusal::NotServing => 7,
            Refusal::NoStableStorage => 8,
        }
    }
}

/// What a server answers about a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The call completed with this reply (whole: at most [`MAX_PART`]
    /// bytes; a larger reply comes as [`RpcMessage::ReplyPart`]s).
    Done(Bytes),
    /// The call is running: a duplicate is not executed again.
    InProgress,
    /// The call is addressed to a life of the server or of the client that
    /// is over, or duplicates a call answered and forgotten: the server
    /// does not know its outcome.
    Stale,
    /// The server refused the call; it did not execute.
    Refused(Refusal),
    /// The server holds a *different* request under this call's identity:
    /// this request did not execute, and the other call's reply is never
    /// given for it. (A client that reused an identity.)
    Mismatch,
    /// The handler failed (it panicked) while executing the call.
    Failed,
    /// The call executed, but its reply is larger than the server may send.
    ReplyTooLarge {
        /// The reply's size.
        len: u64,
        /// The server's limit.
        limit: u64,
    },
}

/// A piece of a body: `bytes` sit at `offset` in a body of `total_len`
/// bytes. A whole body is the chunk at offset 0 holding all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The whole body's length.
    pub total_len: u32,
    /// Where this piece starts.
    pub offset: u32,
    /// The piece.
    pub bytes: Bytes,
}

impl Chunk {
    /// The whole of a body of at most [`MAX_PART`] bytes.
    pub fn whole(body: Bytes) -> Chunk {
        Chunk {
            total_len: body.len() as u32,
            offset: 0,
            bytes: body,
        }
    }

    /// Whether this chunk is the whole body.
    pub fn is_whole(&self) -> bool {
        self.offset == 0 && self.bytes.len() as u64 == u64::from(self.total_len)
    }

    /// The chunks of `body`, [`MAX_PART`] bytes each (one, if it fits).
    pub fn split(body: &Bytes) -> Vec<Chunk> {
        Chunk::parts(body).collect()
    }

    /// The chunks of `body`, as [`split`](Self::split) makes them, one by
    /// one: nothing is allocated.
    pub(crate) fn parts(body: &Bytes) -> impl Iterator<Item = Chunk> + '_ {
        // An empty body is one empty chunk.
        let ends = body.len().div_ceil(MAX_PART).max(1);
        (0..ends).map(move |i| {
            let at = i * MAX_PART;
            Chunk {
                total_len: body.len() as u32,
                offset: at as u32,
                bytes: if body.len() <= MAX_PART {
                    body.clone()
                } else {
                    body.slice(at..(at + MAX_PART).min(body.len()))
                },
            }
        })
    }
}

/// A 64-bit fingerprint (FNV-1a) of a call's semantics and request: a
/// server compares a duplicate's fingerprint with the recorded call's, so a
/// reused call identity never gets another call's reply. Stable across
/// versions and platforms (it is kept in durable records).
pub fn fingerprint(semantics: Semantics, body: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let step = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(PRIME);
    // A plain loop over the body (FNV-1a is one multiply per byte, in
    // sequence): the hash is the same as over the code and the body
    // chained.
    let h = step(0xcbf2_9ce4_8422_2325, semantics.code());
    body.iter().fold(h, |h, &b| step(h, b))
}

/// An RPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcMessage {
    /// "Which life of you is serving?" — binding to a server.
    Locate {
        /// Echoed in the answer.
        nonce: u64,
    },
    /// The answer to `Locate`.
    Located {
        /// The nonce asked with.
        nonce: u64,
        /// The server's current life.
        server_incarnation: Incarnation,
    },
    /// A call, or one part of a call whose request is larger than
    /// [`MAX_PART`].
    Call {
        /// Which call.
        id: CallId,
        /// The server life the client is bound to: a later life of the
        /// server answers at-most-once calls meant for an earlier one with
        /// `Stale`, never by executing them.
        server_incarnation: Incarnation,
        /// The semantics asked for.
        semantics: Semantics,
        /// Every call of this client life below this number has its reply:
        /// the server may forget their completion records.
        first_incomplete: u64,
        /// Time left until the call's deadline when it was sent, in
        /// milliseconds (deadlines propagate: a nested call inherits it).
        budget_ms: u32,
        /// [`fingerprint`] of the semantics and the whole request.
        fingerprint: u64,
        /// The request, or a part of it.
        body: Chunk,
    },
    /// The answer to a call.
    Reply {
        /// Which call.
        id: CallId,
        /// The life of the server answering.
        server_incarnation: Incarnation,
        /// The answer.
        outcome: Outcome,
    },
    /// One part of a reply larger than [`MAX_PART`] (the call completed).
    ReplyPart {
        /// Which call.
        id: CallId,
        /// The life of the server answering.
        server_incarnation: Incarnation,
        /// A [`fingerprint`] of the whole reply: parts of two different
        /// replies to one call (an at-least-once call executed twice) are
        /// never put together.
        fingerprint: u64,
        /// The part.
        body: Chunk,
    },
    /// The caller gave up on the call: stop working on it.
    Cancel {
        /// Which call.
        id: CallId,
    },
    /// A client restarted (reincarnation): its computations from earlier
    /// lives are orphans.
    Announce {
        /// The client's new life.
        client_incarnation: Incarnation,
        /// Calls of its previous life that the new life still owns (found in
        /// its call log): gentle reincarnation spares them.
        adopted: Vec<u64>,
    },
    /// Extermination: a restarted client asks the server to kill the calls
    /// of an earlier life that it had logged as outgoing.
    Exterminate {
        /// The earlier life.
        client_incarnation: Incarnation,
        /// The calls to kill.
        seqs: Vec<u64>,
    },
    /// The server has killed (or never had) the calls listed.
    Exterminated {
        /// The earlier life.
        client_incarnation: Incarnation,
        /// The calls.
        seqs: Vec<u64>,
    },
    /// Expiration: the client still wants these calls; renew their quantum.
    Renew {
        /// The client's life.
        client_incarnation: Incarnation,
        /// The calls.
        seqs: Vec<u64>,
    },
}

const LOCATE: u8 = 1;
const LOCATED: u8 = 2;
const CALL: u8 = 3;
const REPLY: u8 = 4;
const CANCEL: u8 = 5;
const ANNOUNCE: u8 = 6;
const EXTERMINATE: u8 = 7;
const EXTERMINATED: u8 = 8;
const RENEW: u8 = 9;
const REPLY_PART: u8 = 10;

fn put_chunk(buf: &mut BytesMut, c: &Chunk) {
    buf.put_u32_le(c.total_len);
    buf.put_u32_le(c.offset);
    wire::put_bytes(buf, &c.bytes[..c.bytes.len().min(MAX_PART)]);
}

/// A chunk, checked: it lies inside a body no larger than
/// [`MAX_BODY_LIMIT`], and holds at most [`MAX_PART`] bytes.
fn get_chunk(buf: &mut Bytes) -> Result<Chunk, DecodeError> {
    let total_len = wire::get_u32(buf)?;
    let offset = wire::get_u32(buf)?;
    let bytes = wire::get_bytes(buf, MAX_PART)?;
    if total_len as usize > MAX_BODY_LIMIT {
        return Err(DecodeError::Oversized {
            len: total_len as usize,
            max: MAX_BODY_LIMIT,
        });
    }
    if u64::from(offset) + bytes.len() as u64 > u64::from(total_len) {
        return Err(DecodeError::Invalid("a chunk lies outside its body"));
    }
    Ok(Chunk {
        total_len,
        offset,
        bytes,
    })
}

fn put_outcome(buf: &mut BytesMut, outcome: &Outcome) {
    match outcome {
        Outcome::Done(body) => {
            buf.put_u8(1);
            wire::put_bytes(buf, &body[..body.len().min(MAX_PART)]);
        }
        Outcome::InProgress => buf.put_u8(2),
        Outcome::Stale => buf.put_u8(3),
        Outcome::Refused(r) => {
            buf.put_u8(4);
            buf.put_u8(r.code());
            if let Refusal::RequestTooLarge { len, limit } = r {
                buf.put_u64_le(*len);
                buf.put_u64_le(*limit);
            }
        }
        Outcome::Mismatch => buf.put_u8(5),
        Outcome::Failed => buf.put_u8(6),
        Outcome::ReplyTooLarge { len, limit } => {
            buf.put_u8(7);
            buf.put_u64_le(*len);
            buf.put_u64_le(*limit);
        }
    }
}

fn get_outcome(buf: &mut Bytes) -> Result<Outcome, DecodeError> {
    Ok(match wire::get_u8(buf)? {
        1 => Outcome::Done(wire::get_bytes(buf, MAX_PART)?),
        2 => Outcome::InProgress,
        3 => Outcome::Stale,
        4 => Outcome::Refused(match wire::get_u8(buf)? {
            1 => Refusal::TokenInUse,
            2 => Refusal::TooManyPending,
            3 => Refusal::RequestTooLarge {
                len: wire::get_u64(buf)?,
                limit: wire::get_u64(buf)?,
            },
            4 => Refusal::TooManyClients,
            5 => Refusal::ServerBusy,
            6 => Refusal::DeadlinePassed,
            7 => Refusal::NotServing,
            8 => Refusal::NoStableStorage,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "Refusal",
                    tag,
                });
            }
        }),
        5 => Outcome::Mismatch,
        6 => Outcome::Failed,
        7 => Outcome::ReplyTooLarge {
            len: wire::get_u64(buf)?,
            limit: wire::get_u64(buf)?,
        },
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "Outcome",
                tag,
            });
        }
    })
}

pub(crate) fn put_id(buf: &mut BytesMut, id: &CallId) {
    buf.put_u64_le(id.client.0);
    buf.put_u64_le(id.client_incarnation.0);
    buf.put_u64_le(id.seq);
}

pub(crate) fn get_id(buf: &mut Bytes) -> Result<CallId, DecodeError> {
    Ok(CallId {
        client: NodeId(wire::get_u64(buf)?),
        client_incarnation: Incarnation(wire::get_u64(buf)?),
        seq: wire::get_u64(buf)?,
    })
}

fn put_seqs(buf: &mut BytesMut, seqs: &[u64]) {
    let n = seqs.len().min(MAX_LISTED);
    buf.put_u32_le(n as u32);
    for s in &seqs[..n] {
        buf.put_u64_le(*s);
    }
}

fn get_seqs(buf: &mut Bytes) -> Result<Vec<u64>, DecodeError> {
    let n = wire::get_len(buf, 8)?;
    if n > MAX_LISTED {
        return Err(DecodeError::Oversized {
            len: n,
            max: MAX_LISTED,
        });
    }
    (0..n).map(|_| wire::get_u64(buf)).collect()
}

/// The encoded length of a chunk.
fn chunk_len(c: &Chunk) -> usize {
    4 + 4 + 4 + c.bytes.len().min(MAX_PART)
}

/// The encoded length of a list of sequence numbers.
fn seqs_len(seqs: &[u64]) -> usize {
    4 + 8 * seqs.len().min(MAX_LISTED)
}

impl RpcMessage {
    /// How many bytes [`Wire::encode`] appends for this message.
    pub(crate) fn encoded_len(&self) -> usize {
        const ID: usize = 24;
        2 + match self {
            RpcMessage::Locate { .. } => 8,
            RpcMessage::Located { .. } => 16,
            RpcMessage::Call { body, .. } => ID + 8 + 1 + 8 + 4 + 8 + chunk_len(body),
            RpcMessage::Reply { outcome, .. } => {
                ID + 8
                    + match outcome {
                        Outcome::Done(body) => 1 + 4 + body.len().min(MAX_PART),
                        Outcome::Refused(Refusal::RequestTooLarge { .. }) => 2 + 16,
                        Outcome::Refused(_) => 2,
                        Outcome::ReplyTooLarge { .. } => 1 + 16,
                        Outcome::InProgress
                        | Outcome::Stale
                        | Outcome::Mismatch
                        | Outcome::Failed => 1,
                    }
            }
            RpcMessage::ReplyPart { body, .. } => ID + 8 + 8 + chunk_len(body),
            RpcMessage::Cancel { .. } => ID,
            RpcMessage::Announce { adopted: seqs, .. }
            | RpcMessage::Exterminate { seqs, .. }
            | RpcMessage::Exterminated { seqs, .. }
            | RpcMessage::Renew { seqs, .. } => 8 + seqs_len(seqs),
        }
    }
}

impl Wire for RpcMessage {
    fn encoded_len_hint(&self) -> usize {
        self.encoded_len()
    }

    fn encode(&self, buf: &mut BytesMut) {
        // One allocation for the whole message, and room for the frame's
        // trailer that usually follows, rather than growing a step at a
        // time (the frame codec reserves from the hint already; this
        // covers encoding without it).
        buf.reserve(self.encoded_len() + ft_core::frame::TRAILER_LEN);
        buf.put_u8(RPC_VERSION);
        match self {
            RpcMessage::Locate { nonce } => {
                buf.put_u8(LOCATE);
                buf.put_u64_le(*nonce);
            }
            RpcMessage::Located {
                nonce,
                server_incarnation,
            } => {
                buf.put_u8(LOCATED);
                buf.put_u64_le(*nonce);
                buf.put_u64_le(server_incarnation.0);
            }
            RpcMessage::Call {
                id,
                server_incarnation,
                semantics,
                first_incomplete,
                budget_ms,
                fingerprint,
                body,
            } => {
                buf.put_u8(CALL);
                put_id(buf, id);
                buf.put_u64_le(server_incarnation.0);
                buf.put_u8(semantics.code());
                buf.put_u64_le(*first_incomplete);
                buf.put_u32_le(*budget_ms);
                buf.put_u64_le(*fingerprint);
                put_chunk(buf, body);
            }
            RpcMessage::Reply {
                id,
                server_incarnation,
                outcome,
            } => {
                buf.put_u8(REPLY);
                put_id(buf, id);
                buf.put_u64_le(server_incarnation.0);
                put_outcome(buf, outcome);
            }
            RpcMessage::ReplyPart {
                id,
                server_incarnation,
                fingerprint,
                body,
            } => {
                buf.put_u8(REPLY_PART);
                put_id(buf, id);
                buf.put_u64_le(server_incarnation.0);
                buf.put_u64_le(*fingerprint);
                put_chunk(buf, body);
            }
            RpcMessage::Cancel { id } => {
                buf.put_u8(CANCEL);
                put_id(buf, id);
            }
            RpcMessage::Announce {
                client_incarnation,
                adopted,
            } => {
                buf.put_u8(ANNOUNCE);
                buf.put_u64_le(client_incarnation.0);
                put_seqs(buf, adopted);
            }
            RpcMessage::Exterminate {
                client_incarnation,
                seqs,
            } => {
                buf.put_u8(EXTERMINATE);
                buf.put_u64_le(client_incarnation.0);
                put_seqs(buf, seqs);
            }
            RpcMessage::Exterminated {
                client_incarnation,
                seqs,
            } => {
                buf.put_u8(EXTERMINATED);
                buf.put_u64_le(client_incarnation.0);
                put_seqs(buf, seqs);
            }
            RpcMessage::Renew {
                client_incarnation,
                seqs,
            } => {
                buf.put_u8(RENEW);
                buf.put_u64_le(client_incarnation.0);
                put_seqs(buf, seqs);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let version = wire::get_u8(buf)?;
        if version != RPC_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: RPC_VERSION,
            });
        }
        let tag = wire::get_u8(buf)?;
        let inc = |buf: &mut Bytes| wire::get_u64(buf).map(Incarnation);
        Ok(match tag {
            LOCATE => RpcMessage::Locate {
                nonce: wire::get_u64(buf)?,
            },
            LOCATED => RpcMessage::Located {
                nonce: wire::get_u64(buf)?,
                server_incarnation: inc(buf)?,
            },
            CALL => {
                let id = get_id(buf)?;
                let server_incarnation = inc(buf)?;
                let semantics = Semantics::from_code(wire::get_u8(buf)?)?;
                let first_incomplete = wire::get_u64(buf)?;
                let budget_ms = wire::get_u32(buf)?;
                let fingerprint = wire::get_u64(buf)?;
                let body = get_chunk(buf)?;
                RpcMessage::Call {
                    id,
                    server_incarnation,
                    semantics,
                    first_incomplete,
                    budget_ms,
                    fingerprint,
                    body,
                }
            }
            REPLY => RpcMessage::Reply {
                id: get_id(buf)?,
                server_incarnation: inc(buf)?,
                outcome: get_outcome(buf)?,
            },
            REPLY_PART => RpcMessage::ReplyPart {
                id: get_id(buf)?,
                server_incarnation: inc(buf)?,
                fingerprint: wire::get_u64(buf)?,
                body: get_chunk(buf)?,
            },
            CANCEL => RpcMessage::Cancel { id: get_id(buf)? },
            ANNOUNCE => RpcMessage::Announce {
                client_incarnation: inc(buf)?,
                adopted: get_seqs(buf)?,
            },
            EXTERMINATE => RpcMessage::Exterminate {
                client_incarnation: inc(buf)?,
                seqs: get_seqs(buf)?,
            },
            EXTERMINATED => RpcMessage::Exterminated {
                client_incarnation: inc(buf)?,
                seqs: get_seqs(buf)?,
            },
            RENEW => RpcMessage::Renew {
                client_incarnation: inc(buf)?,
                seqs: get_seqs(buf)?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "RpcMessage",
                    tag,
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = CallId> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, i, s)| CallId {
            client: NodeId(c),
            client_incarnation: Incarnation(i),
            seq: s,
        })
    }

    fn body() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn message() -> impl Strategy<Value = RpcMessage> {
        let seqs = proptest::collection::vec(any::<u64>(), 0..8);
        prop_oneof![
            any::<u64>().prop_map(|nonce| RpcMessage::Locate { nonce }),
            (any::<u64>(), any::<u64>()).prop_map(|(nonce, s)| RpcMessage::Located {
                nonce,
                server_incarnation: Incarnation(s)
            }),
            (
                id(),
                any::<u64>(),
                0u8..3,
                any::<u64>(),
                any::<u32>(),
                body()
            )
                .prop_map(|(id, s, m, f, b, body)| RpcMessage::Call {
                    id,
                    server_incarnation: Incarnation(s),
                    semantics: Semantics::from_code(m).unwrap(),
                    first_incomplete: f,
                    budget_ms: b,
                    fingerprint: s ^ f,
                    body: Chunk::whole(body)
                }),
            (id(), any::<u64>(), 0u8..14, body()).prop_map(|(id, s, k, body)| {
                RpcMessage::Reply {
                    id,
                    server_incarnation: Incarnation(s),
                    outcome: match k {
                        0 => Outcome::Done(body),
                        1 => Outcome::InProgress,
                        2 => Outcome::Stale,
                        3 => Outcome::Mismatch,
                        4 => Outcome::Failed,
                        5 => Outcome::ReplyTooLarge {
                            len: s,
                            limit: s / 2,
                        },
                        6 => Outcome::Refused(Refusal::RequestTooLarge { len: s, limit: 7 }),
                        7 => Outcome::Refused(Refusal::TooManyClients),
                        8 => Outcome::Refused(Refusal::ServerBusy),
                        9 => Outcome::Refused(Refusal::DeadlinePassed),
                        10 => Outcome::Refused(Refusal::TokenInUse),
                        11 => Outcome::Refused(Refusal::NotServing),
                        12 => Outcome::Refused(Refusal::NoStableStorage),
                        _ => Outcome::Refused(Refusal::TooManyPending),
                    },
                }
            }),
            (id(), any::<u64>(), any::<u64>(), body(), 0u32..4).prop_map(|(id, s, f, bytes, k)| {
                let total_len = bytes.len() as u32 + 1000 * k;
                RpcMessage::ReplyPart {
                    id,
                    server_incarnation: Incarnation(s),
                    fingerprint: f,
                    body: Chunk {
                        total_len,
                        offset: 1000 * k,
                        bytes,
                    },
                }
            }),
            id().prop_map(|id| RpcMessage::Cancel { id }),
            (any::<u64>(), seqs.clone()).prop_map(|(i, adopted)| RpcMessage::Announce {
                client_incarnation: Incarnation(i),
                adopted
            }),
            (any::<u64>(), seqs.clone()).prop_map(|(i, seqs)| RpcMessage::Exterminate {
                client_incarnation: Incarnation(i),
                seqs
            }),
            (any::<u64>(), seqs.clone()).prop_map(|(i, seqs)| RpcMessage::Exterminated {
                client_incarnation: Incarnation(i),
                seqs
            }),
            (any::<u64>(), seqs).prop_map(|(i, seqs)| RpcMessage::Renew {
                client_incarnation: Incarnation(i),
                seqs
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(m in message()) {
            prop_assert_eq!(RpcMessage::from_bytes(m.to_bytes()), Ok(m));
        }

        #[test]
        fn encoded_len_is_exact(m in message()) {
            prop_assert_eq!(m.to_bytes().len(), m.encoded_len());
        }

        #[test]
        fn every_truncation_is_an_error(m in message()) {
            let b = m.to_bytes();
            for cut in 0..b.len() {
                prop_assert!(RpcMessage::from_bytes(b.slice(..cut)).is_err());
            }
        }

        #[test]
        fn hostile_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RpcMessage::from_bytes(Bytes::from(b));
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u8(RPC_VERSION);
        buf.put_u8(RENEW);
        buf.put_u64_le(1);
        buf.put_u32_le(u32::MAX);
        assert!(RpcMessage::from_bytes(buf.freeze()).is_err());
        let mut buf = BytesMut::new();
        buf.put_u8(RPC_VERSION + 1);
        assert_eq!(
            RpcMessage::from_bytes(buf.freeze()),
            Err(DecodeError::UnsupportedVersion {
                found: RPC_VERSION + 1,
                supported: RPC_VERSION
            })
        );
    }
}

//! What RPC clients and servers say to each other.

use bytes::{BufMut, Bytes, BytesMut};
use ft_core::wire::{self, DecodeError, Wire};
use ft_core::{Incarnation, NodeId};

use super::Semantics;

/// The wire version of every RPC message.
pub const RPC_VERSION: u8 = 1;
/// The largest request or reply body a message may carry.
pub const MAX_BODY: usize = 60 * 1024;
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

/// What a server answers about a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The call completed with this reply.
    Done(Bytes),
    /// The call is running: a duplicate is not executed again.
    InProgress,
    /// The call is addressed to a life of the server or of the client that
    /// is over, or duplicates a call already answered and forgotten.
    Stale,
    /// The server refused the call (too many clients, body too large,
    /// deadline already past).
    Refused,
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
    /// A call.
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
        /// The request.
        body: Bytes,
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

fn put_id(buf: &mut BytesMut, id: &CallId) {
    buf.put_u64_le(id.client.0);
    buf.put_u64_le(id.client_incarnation.0);
    buf.put_u64_le(id.seq);
}

fn get_id(buf: &mut Bytes) -> Result<CallId, DecodeError> {
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

impl Wire for RpcMessage {
    fn encode(&self, buf: &mut BytesMut) {
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
                body,
            } => {
                buf.put_u8(CALL);
                put_id(buf, id);
                buf.put_u64_le(server_incarnation.0);
                buf.put_u8(semantics.code());
                buf.put_u64_le(*first_incomplete);
                buf.put_u32_le(*budget_ms);
                wire::put_bytes(buf, &body[..body.len().min(MAX_BODY)]);
            }
            RpcMessage::Reply {
                id,
                server_incarnation,
                outcome,
            } => {
                buf.put_u8(REPLY);
                put_id(buf, id);
                buf.put_u64_le(server_incarnation.0);
                match outcome {
                    Outcome::Done(body) => {
                        buf.put_u8(1);
                        wire::put_bytes(buf, &body[..body.len().min(MAX_BODY)]);
                    }
                    Outcome::InProgress => buf.put_u8(2),
                    Outcome::Stale => buf.put_u8(3),
                    Outcome::Refused => buf.put_u8(4),
                }
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
                let body = wire::get_bytes(buf, MAX_BODY)?;
                RpcMessage::Call {
                    id,
                    server_incarnation,
                    semantics,
                    first_incomplete,
                    budget_ms,
                    body,
                }
            }
            REPLY => {
                let id = get_id(buf)?;
                let server_incarnation = inc(buf)?;
                let outcome = match wire::get_u8(buf)? {
                    1 => Outcome::Done(wire::get_bytes(buf, MAX_BODY)?),
                    2 => Outcome::InProgress,
                    3 => Outcome::Stale,
                    4 => Outcome::Refused,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "Outcome",
                            tag,
                        });
                    }
                };
                RpcMessage::Reply {
                    id,
                    server_incarnation,
                    outcome,
                }
            }
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
                    body
                }),
            (id(), any::<u64>(), 0u8..4, body()).prop_map(|(id, s, k, body)| {
                RpcMessage::Reply {
                    id,
                    server_incarnation: Incarnation(s),
                    outcome: match k {
                        0 => Outcome::Done(body),
                        1 => Outcome::InProgress,
                        2 => Outcome::Stale,
                        _ => Outcome::Refused,
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

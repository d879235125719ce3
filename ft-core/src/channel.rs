//! The [`Channel`] edge trait: unreliable datagrams to a [`NodeId`].
//!
//! # The contract
//!
//! Every transport keeps these promises; the exported conformance suite
//! (`ft_core::testing::channel_conformance`, feature `testing`) checks each
//! one, and ft-core's "Writing a transport" guide ([`crate::guide`])
//! builds an adapter that passes it.
//!
//! | promise | why the protocols need it |
//! |---|---|
//! | a datagram arrives whole or not at all, with the sender the transport saw | frames are checked, never reassembled |
//! | it may be lost, duplicated, reordered or delayed | reliability is the protocols' job |
//! | `send` of more than [`max_datagram`](Channel::max_datagram) bytes fails with [`ChannelError::TooLarge`] | the driver fits its frames to the limit |
//! | `send` to a node the channel cannot locate fails with [`ChannelError::Unreachable`]; it does not drop silently | a misconfigured address book shows in [`DriverStats::send_failures`](crate::DriverStats) instead of looking like a lossy network |
//! | `send` never waits for a remote peer: a slow, dead or unreachable peer's full queue drops the datagram (`Ok`, counted by the channel) | one stuck peer must not stop a node from talking to the others |
//! | `send` to the channel's own node delivers to its own `recv`, with its own id as sender | protocols do send to themselves: an RPC node calling its own server, a multicast sender in its own group |
//! | `recv` is cancel safe and receive buffers are bounded (full drops) | the driver keeps one `recv` pending and a flood cannot exhaust memory |
//! | [`send_batch`](Channel::send_batch) and [`send_to_many`](Channel::send_to_many) behave as the same `send`s one by one, and report each refused datagram by position | the driver hands a whole step's datagrams over at once |
//!
//! `send` may wait for the *local* host (a socket's send buffer draining),
//! which is bounded by the machine, not by any peer. The driver also
//! protects itself: its sends run beside its other work, so even a `send`
//! that breaks the contract and never returns stalls only the datagrams
//! behind it, which are dropped and counted
//! ([`DriverStats::datagrams_dropped`](crate::DriverStats)), never the
//! core's timers, inputs or persists.

use async_trait::async_trait;
use bytes::Bytes;

use crate::id::NodeId;

/// Why a channel operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No route to the destination is known: the transport cannot locate it.
    #[error("{0} is unreachable: no address is known for it")]
    Unreachable(NodeId),
    /// The datagram is larger than the transport carries.
    #[error("datagram of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The datagram's length.
        len: usize,
        /// The largest datagram accepted.
        max: usize,
    },
    /// The channel was closed; no further datagrams will be sent or received.
    #[error("channel closed")]
    Closed,
    /// The transport failed (an I/O error, described).
    #[error("transport error: {0}")]
    Transport(String),
}

/// The datagrams of a [`send_batch`](Channel::send_batch) or
/// [`send_to_many`](Channel::send_to_many) that the channel refused.
///
/// Each entry is the position of a refused datagram (in the batch, or in the
/// list of destinations) and why; every datagram not listed was handed to
/// the network. Entries are in increasing position order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} datagram(s) of the batch refused, the first at position {}: {}", .failed.len(), .failed[0].0, .failed[0].1)]
pub struct BatchError {
    /// `(position, why)` of each refused datagram; never empty.
    pub failed: Vec<(usize, ChannelError)>,
}

impl BatchError {
    /// The outcome of a batch from its refusals, in any order: `Ok` when
    /// there are none, else the refusals sorted by position (what
    /// [`Channel::send_batch`] and [`Channel::send_to_many`] return).
    ///
    /// # Errors
    /// The refusals, when there are any.
    pub fn result(mut failed: Vec<(usize, ChannelError)>) -> Result<(), BatchError> {
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort_by_key(|(i, _)| *i);
        Err(BatchError { failed })
    }

    /// Whether the channel is closed: some datagram was refused with
    /// [`ChannelError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.failed
            .iter()
            .any(|(_, e)| matches!(e, ChannelError::Closed))
    }
}

/// Collects the refusals of a batch sent one datagram at a time.
struct Refusals(Vec<(usize, ChannelError)>);

impl Refusals {
    /// Records the outcome of datagram `i`; says whether to go on (a closed
    /// channel refuses everything after, which is recorded at once).
    fn record(&mut self, i: usize, len: usize, result: Result<(), ChannelError>) -> bool {
        match result {
            Ok(()) => true,
            Err(ChannelError::Closed) => {
                self.0.extend((i..len).map(|j| (j, ChannelError::Closed)));
                false
            }
            Err(e) => {
                self.0.push((i, e));
                true
            }
        }
    }

    fn finish(self) -> Result<(), BatchError> {
        BatchError::result(self.0)
    }
}

/// An unreliable datagram channel from one node to the others.
///
/// A datagram sent may be lost, duplicated, reordered or delayed; a datagram
/// received is never split or merged with another, and comes with the sender
/// the transport saw. Reliability is the protocols' job, not the channel's:
/// `Ok` from [`send`](Channel::send) means "handed to the network", nothing
/// more. The [module docs](self) state the whole contract.
///
/// Only [`local`](Channel::local), [`max_datagram`](Channel::max_datagram),
/// [`send`](Channel::send) and [`recv`](Channel::recv) must be written; the
/// batched sends have defaults that loop over `send`, which a transport
/// overrides when it can do better (one vectored write per peer, one
/// `sendmmsg`, one IP multicast datagram).
///
/// The trait is object safe: `Box<dyn Channel>` works.
#[async_trait]
pub trait Channel: Send + Sync {
    /// The node this end of the channel belongs to.
    fn local(&self) -> NodeId;

    /// The largest datagram [`send`](Channel::send) accepts.
    fn max_datagram(&self) -> usize;

    /// Hands `datagram` to the network for `to`.
    ///
    /// # Errors
    /// [`ChannelError::TooLarge`] over [`max_datagram`](Channel::max_datagram);
    /// [`ChannelError::Unreachable`] for a node the channel cannot locate;
    /// [`ChannelError::Closed`] once closed. A full queue towards a slow
    /// peer is not an error: the datagram is dropped, as a network would.
    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError>;

    /// Hands every datagram of `batch` to the network, as if by
    /// [`send`](Channel::send) one after the other, in batch order.
    ///
    /// - **What a batch may hold**: any number of datagrams (none, too), to
    ///   any destinations, the channel's own node and repeats included.
    /// - **Ordering**: datagrams to one destination are handed to the
    ///   network in batch order (the network may still reorder them, as for
    ///   single sends); there is no order between destinations.
    /// - **Partial failure**: a refused datagram fails alone, with the
    ///   error `send` would give, and the others still go; the error lists
    ///   every refused datagram by position ([`BatchError`]). Once the
    ///   channel is closed, the rest of the batch is refused as
    ///   [`ChannelError::Closed`].
    /// - Like `send`, it never waits for a remote peer.
    ///
    /// The default loops over `send`; transports override it to write each
    /// peer's datagrams at once.
    ///
    /// # Errors
    /// [`BatchError`] naming each refused datagram.
    async fn send_batch(&self, batch: &[(NodeId, Bytes)]) -> Result<(), BatchError> {
        let mut refusals = Refusals(Vec::new());
        for (i, (to, datagram)) in batch.iter().enumerate() {
            let result = self.send(*to, datagram.clone()).await;
            if !refusals.record(i, batch.len(), result) {
                break;
            }
        }
        refusals.finish()
    }

    /// Hands one `datagram` to the network for each node of `to`, as if by
    /// [`send`](Channel::send) to each in turn: the same promises, with
    /// refusals listed by position in `to`.
    ///
    /// The default fans out over `send`. A transport with real multicast
    /// (IP multicast on ft-tokio's UDP channel) may send it once, when that
    /// reaches exactly the nodes of `to` and no others.
    ///
    /// # Errors
    /// [`BatchError`] naming each destination refused.
    async fn send_to_many(&self, to: &[NodeId], datagram: Bytes) -> Result<(), BatchError> {
        let mut refusals = Refusals(Vec::new());
        for (i, node) in to.iter().enumerate() {
            let result = self.send(*node, datagram.clone()).await;
            if !refusals.record(i, to.len(), result) {
                break;
            }
        }
        refusals.finish()
    }

    /// Waits for the next datagram and its sender.
    ///
    /// Cancel safe: dropping the future before it completes loses nothing.
    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError>;
}

/// Forwards every method, the batched ones included, so a wrapper never
/// hides a transport's own batching behind the default loop.
macro_rules! forward_channel {
    ($ty:ty) => {
        #[async_trait]
        impl<C: Channel + ?Sized> Channel for $ty {
            fn local(&self) -> NodeId {
                (**self).local()
            }
            fn max_datagram(&self) -> usize {
                (**self).max_datagram()
            }
            async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
                (**self).send(to, datagram).await
            }
            async fn send_batch(&self, batch: &[(NodeId, Bytes)]) -> Result<(), BatchError> {
                (**self).send_batch(batch).await
            }
            async fn send_to_many(&self, to: &[NodeId], datagram: Bytes) -> Result<(), BatchError> {
                (**self).send_to_many(to, datagram).await
            }
            async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
                (**self).recv().await
            }
        }
    };
}

forward_channel!(Box<C>);
forward_channel!(std::sync::Arc<C>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemNetwork;
    use futures::executor::block_on;

    #[test]
    fn the_default_batch_reports_each_refusal_by_position_and_sends_the_rest() {
        block_on(async {
            let net = MemNetwork::with_max_datagram(16, 8);
            let a = net.join(NodeId(1));
            let b = net.join(NodeId(2));
            let batch = vec![
                (NodeId(2), Bytes::from_static(b"one")),
                (NodeId(9), Bytes::from_static(b"lost")),
                (NodeId(2), Bytes::from_static(b"far too long")),
                (NodeId(2), Bytes::from_static(b"two")),
            ];
            let err = a.send_batch(&batch).await.unwrap_err();
            assert_eq!(
                err.failed,
                vec![
                    (1, ChannelError::Unreachable(NodeId(9))),
                    (2, ChannelError::TooLarge { len: 12, max: 8 }),
                ]
            );
            assert!(!err.is_closed());
            assert_eq!(b.recv().await.unwrap().1, Bytes::from_static(b"one"));
            assert_eq!(b.recv().await.unwrap().1, Bytes::from_static(b"two"));
            assert_eq!(a.send_batch(&[]).await, Ok(()));
        });
    }

    #[test]
    fn a_batch_result_is_ok_without_refusals_and_sorted_by_position_with() {
        assert_eq!(BatchError::result(Vec::new()), Ok(()));
        let out_of_order = vec![
            (3, ChannelError::Closed),
            (1, ChannelError::Unreachable(NodeId(7))),
        ];
        assert_eq!(
            BatchError::result(out_of_order).unwrap_err().failed,
            vec![
                (1, ChannelError::Unreachable(NodeId(7))),
                (3, ChannelError::Closed),
            ]
        );
    }

    #[test]
    fn a_closed_channel_refuses_the_rest_of_the_batch() {
        block_on(async {
            let net = MemNetwork::new(16);
            let a = net.join(NodeId(1));
            let _b = net.join(NodeId(2));
            a.close();
            let err = a
                .send_to_many(&[NodeId(2), NodeId(2)], Bytes::from_static(b"x"))
                .await
                .unwrap_err();
            assert_eq!(
                err.failed,
                vec![(0, ChannelError::Closed), (1, ChannelError::Closed)]
            );
            assert!(err.is_closed());
        });
    }

    #[test]
    fn send_to_many_fans_out_through_a_box() {
        block_on(async {
            let net = MemNetwork::new(16);
            let a: Box<dyn Channel> = Box::new(net.join(NodeId(1)));
            let b = net.join(NodeId(2));
            let c = net.join(NodeId(3));
            let d = Bytes::from_static(b"all");
            a.send_to_many(&[NodeId(2), NodeId(3), NodeId(1)], d.clone())
                .await
                .unwrap();
            assert_eq!(b.recv().await.unwrap(), (NodeId(1), d.clone()));
            assert_eq!(c.recv().await.unwrap(), (NodeId(1), d.clone()));
            assert_eq!(a.recv().await.unwrap(), (NodeId(1), d));
        });
    }
}

//! The [`Channel`] edge trait: unreliable datagrams to a [`NodeId`].

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

/// An unreliable datagram channel from one node to the others.
///
/// A datagram sent may be lost, duplicated, reordered or delayed; a datagram
/// received is never split or merged with another, and comes with the sender
/// the transport saw. Reliability is the protocols' job, not the channel's:
/// `Ok` from [`send`](Channel::send) means "handed to the network", nothing
/// more. Implementations bound their receive buffers and drop when full, so a
/// flood cannot exhaust memory.
///
/// The trait is object safe: `Box<dyn Channel>` works.
#[async_trait]
pub trait Channel: Send + Sync {
    /// The node this end of the channel belongs to.
    fn local(&self) -> NodeId;

    /// The largest datagram [`send`](Channel::send) accepts.
    fn max_datagram(&self) -> usize;

    /// Hands `datagram` to the network for `to`.
    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError>;

    /// Waits for the next datagram and its sender.
    ///
    /// Cancel safe: dropping the future before it completes loses nothing.
    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError>;
}

#[async_trait]
impl<C: Channel + ?Sized> Channel for Box<C> {
    fn local(&self) -> NodeId {
        (**self).local()
    }
    fn max_datagram(&self) -> usize {
        (**self).max_datagram()
    }
    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        (**self).send(to, datagram).await
    }
    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        (**self).recv().await
    }
}

#[async_trait]
impl<C: Channel + ?Sized> Channel for std::sync::Arc<C> {
    fn local(&self) -> NodeId {
        (**self).local()
    }
    fn max_datagram(&self) -> usize {
        (**self).max_datagram()
    }
    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        (**self).send(to, datagram).await
    }
    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        (**self).recv().await
    }
}

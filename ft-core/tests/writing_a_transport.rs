//! The adapter of ft-core's guide "Writing a transport" (`ft_core::guide`),
//! run against the conformance suite.
#![cfg(not(ft_loom))]

// The adapter: a `Channel` over tokio's bounded mpsc queues.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{Channel, ChannelError, NodeId};
use tokio::sync::mpsc::{self, error::TrySendError};

type Inbox = mpsc::Sender<(NodeId, Bytes)>;

/// The "network": every node's inbox, by id.
#[derive(Clone, Default)]
pub struct Switch(Arc<Mutex<BTreeMap<NodeId, Inbox>>>);

/// One node's end of the switch.
pub struct QueueChannel {
    me: NodeId,
    switch: Switch,
    inbox: tokio::sync::Mutex<mpsc::Receiver<(NodeId, Bytes)>>,
}

impl Switch {
    /// Attaches `me` with an inbox of `capacity` datagrams.
    pub fn join(&self, me: NodeId, capacity: usize) -> QueueChannel {
        let (tx, rx) = mpsc::channel(capacity);
        self.0.lock().unwrap().insert(me, tx);
        QueueChannel {
            me,
            switch: self.clone(),
            inbox: tokio::sync::Mutex::new(rx),
        }
    }
}

#[async_trait]
impl Channel for QueueChannel {
    fn local(&self) -> NodeId {
        self.me
    }

    fn max_datagram(&self) -> usize {
        64 * 1024
    }

    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        let max = self.max_datagram();
        if datagram.len() > max {
            return Err(ChannelError::TooLarge {
                len: datagram.len(),
                max,
            });
        }
        // An unknown node is a configuration error: say so, never drop.
        let inbox = self.switch.0.lock().unwrap().get(&to).cloned();
        let inbox = inbox.ok_or(ChannelError::Unreachable(to))?;
        // `try_send`, never `send(..).await`: that would wait for the peer
        // to read. A full inbox, or a peer that is gone, loses the datagram
        // as a network would.
        match inbox.try_send((self.me, datagram)) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => Ok(()),
        }
    }

    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        // Cancel safe: a datagram leaves the queue only when `recv`
        // returns it, and the lock is released if this future is dropped.
        let mut inbox = self.inbox.lock().await;
        inbox.recv().await.ok_or(ChannelError::Closed)
    }
}
// (end of the guide's adapter)

#[cfg(feature = "testing")]
mod suite {
    use super::*;
    use ft_core::testing::{ChannelFactory, MIN_QUEUE, channel_conformance};

    /// A fresh switch for every check.
    struct Queues;

    #[async_trait]
    impl ChannelFactory for Queues {
        async fn make(&mut self, nodes: &[NodeId]) -> Vec<Box<dyn Channel>> {
            let switch = Switch::default();
            nodes
                .iter()
                .map(|&n| Box::new(switch.join(n, MIN_QUEUE)) as Box<dyn Channel>)
                .collect()
        }
    }

    #[tokio::test]
    async fn the_guide_s_queue_channel_passes_the_suite() {
        channel_conformance(Queues).await;
    }
}

//! `MemChannel` against the exported `Channel` conformance suite, run the
//! way a transport crate would run it: under tokio, through the public API.
// Under `--cfg ft_loom` the crate runs on loom primitives, usable only
// inside `loom::model`: only tests/loom_mem.rs runs then.
#![cfg(not(ft_loom))]

use async_trait::async_trait;
use ft_core::testing::{ChannelFactory, MIN_QUEUE, channel_conformance, recv_is_cancel_safe};
use ft_core::{Channel, MemNetwork, NodeId};

/// A fresh network per check, with no more inbox room than the suite asks
/// for, so the suite's stated minimum is what is tested.
struct Mem {
    max_datagram: usize,
}

#[async_trait]
impl ChannelFactory for Mem {
    async fn make(&mut self, nodes: &[NodeId]) -> Vec<Box<dyn Channel>> {
        let net = MemNetwork::with_max_datagram(MIN_QUEUE, self.max_datagram);
        nodes
            .iter()
            .map(|&n| Box::new(net.join(n)) as Box<dyn Channel>)
            .collect()
    }
}

#[tokio::test]
async fn mem_channel_passes_the_suite() {
    channel_conformance(Mem {
        max_datagram: 65_507,
    })
    .await;
}

#[tokio::test]
async fn mem_channel_passes_with_a_small_datagram_limit() {
    // Smaller than some of the boundary check's sizes would be: the suite
    // must adapt its sizes to `max_datagram()`.
    channel_conformance(Mem { max_datagram: 64 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_check_runs_on_its_own() {
    recv_is_cancel_safe(&mut Mem { max_datagram: 1500 }).await;
}

//! Both channels against `ft-core`'s exported `Channel` conformance suite,
//! on loopback with ports the system picks.

mod common;

use async_trait::async_trait;
use ft_core::testing::{ChannelFactory, channel_conformance};
use ft_core::{Channel, NodeId};
use ft_tokio::{TcpConfig, UdpBatching};

use common::{tcp_mesh_with, udp_mesh};

/// Fresh UDP sockets for every check, limited to `max_datagram`, with
/// `batching`'s system calls.
struct Udp {
    max_datagram: usize,
    batching: UdpBatching,
}

#[async_trait]
impl ChannelFactory for Udp {
    async fn make(&mut self, nodes: &[NodeId]) -> Vec<Box<dyn Channel>> {
        udp_mesh(nodes)
            .await
            .into_iter()
            .map(|c| {
                Box::new(
                    c.with_max_datagram(self.max_datagram)
                        .with_batching(self.batching),
                ) as Box<dyn Channel>
            })
            .collect()
    }
}

/// Fresh TCP listeners for every check.
struct Tcp {
    config: TcpConfig,
}

#[async_trait]
impl ChannelFactory for Tcp {
    async fn make(&mut self, nodes: &[NodeId]) -> Vec<Box<dyn Channel>> {
        tcp_mesh_with(nodes, self.config)
            .await
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Channel>)
            .collect()
    }
}

#[tokio::test]
async fn udp_channel_passes_the_suite() {
    channel_conformance(Udp {
        max_datagram: ft_tokio::UDP_MAX_DATAGRAM,
        batching: UdpBatching::default(),
    })
    .await;
}

#[tokio::test]
async fn udp_channel_passes_with_a_small_datagram_limit() {
    channel_conformance(Udp {
        max_datagram: 64,
        batching: UdpBatching::default(),
    })
    .await;
}

/// The fallback path (one system call per datagram, both ways), which is
/// the only one off Linux.
#[tokio::test]
async fn udp_channel_passes_with_plain_system_calls() {
    channel_conformance(Udp {
        max_datagram: ft_tokio::UDP_MAX_DATAGRAM,
        batching: UdpBatching::Plain,
    })
    .await;
}

#[tokio::test]
async fn tcp_channel_passes_the_suite() {
    channel_conformance(Tcp {
        config: TcpConfig::default(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_channel_passes_the_suite_on_several_threads() {
    channel_conformance(Tcp {
        config: TcpConfig::default(),
    })
    .await;
}

#[tokio::test]
async fn tcp_channel_passes_with_tight_bounds() {
    // The suite's stated minimum queue, and a small datagram limit.
    let config = TcpConfig::default()
        .with_max_datagram(64)
        .with_inbox_capacity(ft_core::testing::MIN_QUEUE)
        .with_outbound_capacity(ft_core::testing::MIN_QUEUE);
    channel_conformance(Tcp { config }).await;
}

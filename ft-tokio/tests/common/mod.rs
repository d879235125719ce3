//! Helpers shared by the test binaries.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use ft_core::NodeId;
use ft_tokio::{TcpChannel, TcpConfig, UdpChannel};

/// The failure guard of every wait: generous, since only a hang or a lost
/// datagram should ever reach it.
pub(crate) const GUARD: Duration = Duration::from_secs(10);

pub(crate) fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs `fut`, failing the test as hung if it takes longer than [`GUARD`].
pub(crate) async fn guarded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits until `cond` holds, polling; fails the test as hung after
/// [`GUARD`].
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    guarded(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// UDP channels for `nodes` on loopback, each with every other in its book.
pub(crate) async fn udp_mesh(nodes: &[NodeId]) -> Vec<UdpChannel> {
    let mut channels = Vec::new();
    for &n in nodes {
        channels.push(
            UdpChannel::bind(n, loopback(), BTreeMap::new())
                .await
                .unwrap(),
        );
    }
    let book: Vec<_> = channels
        .iter()
        .map(|c| (ft_core::Channel::local(c), c.local_addr()))
        .collect();
    for c in &channels {
        for &(n, addr) in &book {
            c.set_peer(n, addr);
        }
    }
    channels
}

/// TCP channels for `nodes` on loopback with `config`, each with every
/// other in its book.
pub(crate) async fn tcp_mesh_with(nodes: &[NodeId], config: TcpConfig) -> Vec<TcpChannel> {
    let mut channels = Vec::new();
    for &n in nodes {
        channels.push(
            TcpChannel::bind_with(n, loopback(), BTreeMap::new(), config)
                .await
                .unwrap(),
        );
    }
    let book: Vec<_> = channels
        .iter()
        .map(|c| (ft_core::Channel::local(c), c.local_addr()))
        .collect();
    for c in &channels {
        for &(n, addr) in &book {
            c.set_peer(n, addr);
        }
    }
    channels
}

pub(crate) async fn tcp_mesh(nodes: &[NodeId]) -> Vec<TcpChannel> {
    tcp_mesh_with(nodes, TcpConfig::default()).await
}

//! `UdpChannel` beyond the conformance suite: what it refuses to send, and
//! what it refuses to believe.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use ft_core::{Channel, ChannelError, NodeId};
use ft_tokio::{UDP_HEADER_LEN, UDP_MAX_DATAGRAM, UdpChannel};
use tokio::net::UdpSocket;

use common::{guarded, loopback, udp_mesh};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// A datagram as a channel would send it, claiming to be from `from`.
fn claiming(from: u64, payload: &[u8]) -> Vec<u8> {
    let mut d = from.to_le_bytes().to_vec();
    d.extend_from_slice(payload);
    d
}

#[tokio::test]
async fn send_errors_say_why() {
    let nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let a = &nodes[0];
    assert_eq!(a.max_datagram(), UDP_MAX_DATAGRAM);
    assert_eq!(UDP_MAX_DATAGRAM + UDP_HEADER_LEN, 65_507);
    assert_eq!(
        a.send(NodeId(3), b("x")).await,
        Err(ChannelError::Unreachable(NodeId(3)))
    );
    assert_eq!(
        a.send(NodeId(2), Bytes::from(vec![0; UDP_MAX_DATAGRAM + 1]))
            .await,
        Err(ChannelError::TooLarge {
            len: UDP_MAX_DATAGRAM + 1,
            max: UDP_MAX_DATAGRAM
        })
    );
    // Taking a node out of the book makes it unreachable.
    assert!(a.remove_peer(NodeId(2)).is_some());
    assert_eq!(
        a.send(NodeId(2), b("x")).await,
        Err(ChannelError::Unreachable(NodeId(2)))
    );
    assert_eq!(a.stats().sent, 0);
}

#[tokio::test]
async fn spoofed_short_unknown_and_oversized_datagrams_are_dropped_and_counted() {
    let mut nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let rx = nodes.pop().unwrap().with_max_datagram(16);
    let a = nodes.pop().unwrap();
    let to = rx.local_addr();

    let raw = UdpSocket::bind(loopback()).await.unwrap();
    // Too short to hold a sender.
    raw.send_to(&[1, 2, 3], to).await.unwrap();
    // Claims to be node 1, from another address than node 1's.
    raw.send_to(&claiming(1, b"spoofed"), to).await.unwrap();
    // Claims to be a node the book does not list.
    raw.send_to(&claiming(99, b"who"), to).await.unwrap();
    // Larger than the receiver's limit.
    raw.send_to(&claiming(1, &[0; 17]), to).await.unwrap();

    // Each `recv` skips whatever bad datagrams precede the good one: receive
    // good ones until every bad one has been seen and counted.
    guarded("the bad datagrams to be counted", async {
        loop {
            a.send(NodeId(2), b("genuine")).await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), (NodeId(1), b("genuine")));
            let s = rx.stats();
            if s.dropped_short
                + s.dropped_mismatched_addr
                + s.dropped_unknown_sender
                + s.dropped_oversize
                == 4
            {
                break;
            }
        }
    })
    .await;
    let s = rx.stats();
    assert_eq!(
        (
            s.dropped_short,
            s.dropped_mismatched_addr,
            s.dropped_unknown_sender,
            s.dropped_oversize
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(s.received, a.stats().sent);
}

#[tokio::test]
async fn a_peer_bound_to_the_wildcard_address_is_reached_on_loopback() {
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let wild = UdpChannel::bind(NodeId(1), any, BTreeMap::new())
        .await
        .unwrap();
    let lo = UdpChannel::bind(NodeId(2), loopback(), BTreeMap::new())
        .await
        .unwrap();
    // The book may list the wildcard address as it was bound: it is stored
    // as loopback, where the node's datagrams come from.
    lo.set_peer(NodeId(1), wild.local_addr());
    assert!(lo.peer_addr(NodeId(1)).unwrap().ip().is_loopback());
    wild.set_peer(NodeId(2), lo.local_addr());

    wild.send(NodeId(2), b("out")).await.unwrap();
    assert_eq!(
        guarded("out", lo.recv()).await.unwrap(),
        (NodeId(1), b("out"))
    );
    lo.send(NodeId(1), b("back")).await.unwrap();
    assert_eq!(
        guarded("back", wild.recv()).await.unwrap(),
        (NodeId(2), b("back"))
    );
    // And to itself, with no entry for itself in its book.
    wild.send(NodeId(1), b("self")).await.unwrap();
    assert_eq!(
        guarded("self", wild.recv()).await.unwrap(),
        (NodeId(1), b("self"))
    );
}

#[tokio::test]
async fn a_socket_configured_by_the_caller_can_be_wrapped() {
    let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = std_socket.local_addr().unwrap();
    let wrapped = UdpChannel::from_std(NodeId(1), std_socket, BTreeMap::new()).unwrap();
    assert_eq!(wrapped.local_addr(), addr);
    let peer = UdpChannel::bind(NodeId(2), loopback(), BTreeMap::from([(NodeId(1), addr)]))
        .await
        .unwrap();
    wrapped.set_peer(NodeId(2), peer.local_addr());
    peer.send(NodeId(1), b("hi")).await.unwrap();
    assert_eq!(
        guarded("hi", wrapped.recv()).await.unwrap(),
        (NodeId(2), b("hi"))
    );
    assert_eq!(wrapped.peers().len(), 1);
}

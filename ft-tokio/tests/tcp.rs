//! `TcpChannel` beyond the conformance suite: reconnection, bounds, and
//! hostile input.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use ft_core::{Channel, ChannelError, NodeId};
use ft_tokio::tcp::TCP_HELLO_MAGIC;
use ft_tokio::{TcpChannel, TcpConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{eventually, guarded, loopback, tcp_mesh, tcp_mesh_with};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// The hello a dialer named `node` opens its connection with.
fn hello(node: u64) -> Vec<u8> {
    let mut h = 12u32.to_le_bytes().to_vec();
    h.extend_from_slice(&TCP_HELLO_MAGIC);
    h.extend_from_slice(&node.to_le_bytes());
    h
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// Connects to `to` and writes `parts` in one write: the channel may close
/// the connection as soon as it has read a bad part, and a second write
/// would then race with that.
async fn connect_and_write(to: std::net::SocketAddr, parts: &[&[u8]]) -> TcpStream {
    let mut raw = TcpStream::connect(to).await.unwrap();
    raw.write_all(&parts.concat()).await.unwrap();
    raw
}

/// Waits until the channel closes `raw` (EOF, or a reset because it left
/// our bytes unread).
async fn closed_by_peer(raw: &mut TcpStream) {
    let mut sink = Vec::new();
    let _ = guarded(
        "the channel to close the connection",
        raw.read_to_end(&mut sink),
    )
    .await;
    assert!(
        sink.is_empty(),
        "the acceptor wrote on an accepted connection"
    );
}

/// Sends `what` to `to` until `rx` receives it (each send may be lost
/// while a connection is being replaced, as datagrams may).
async fn send_until_received(tx: &TcpChannel, rx: &TcpChannel, to: NodeId, what: Bytes) {
    let from = tx.local();
    guarded("a datagram to get through", async {
        loop {
            tx.send(to, what.clone()).await.unwrap();
            // Paces the resends; `recv` is cancel safe.
            if let Ok(got) = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
                assert_eq!(got.unwrap(), (from, what.clone()));
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn send_errors_say_why() {
    let nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let a = &nodes[0];
    assert_eq!(
        a.send(NodeId(3), b("x")).await,
        Err(ChannelError::Unreachable(NodeId(3)))
    );
    let max = a.max_datagram();
    assert_eq!(
        a.send(NodeId(2), Bytes::from(vec![0; max + 1])).await,
        Err(ChannelError::TooLarge { len: max + 1, max })
    );
    a.remove_peer(NodeId(2));
    assert_eq!(
        a.send(NodeId(2), b("x")).await,
        Err(ChannelError::Unreachable(NodeId(2)))
    );
}

#[tokio::test]
async fn reconnects_after_the_peer_restarts_on_the_same_port() {
    let mut nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let server = nodes.pop().unwrap();
    let client = nodes.pop().unwrap();
    let addr = server.local_addr();

    client.send(NodeId(2), b("before")).await.unwrap();
    assert_eq!(
        guarded("before", server.recv()).await.unwrap(),
        (NodeId(1), b("before"))
    );

    // The server process "restarts": its channel is gone, sockets closed,
    // and a new one listens on the same port.
    server.shutdown().await;
    let server = TcpChannel::bind(NodeId(2), addr, client.peers())
        .await
        .expect("shutdown released the port");

    send_until_received(&client, &server, NodeId(2), b("after")).await;
    let s = client.stats();
    assert_eq!(s.connects, 2, "{s:?}");
    assert!(s.connections_lost >= 1, "{s:?}");
    assert_eq!(server.stats().accepted, 1);
}

#[tokio::test]
async fn follows_a_peer_that_moved_to_another_port() {
    let mut nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let server = nodes.pop().unwrap();
    let client = nodes.pop().unwrap();
    client.send(NodeId(2), b("old")).await.unwrap();
    assert_eq!(guarded("old", server.recv()).await.unwrap().1, b("old"));

    let moved = TcpChannel::bind(NodeId(2), loopback(), client.peers())
        .await
        .unwrap();
    drop(server);
    assert!(client.set_peer(NodeId(2), moved.local_addr()).is_some());
    send_until_received(&client, &moved, NodeId(2), b("new")).await;
}

#[tokio::test]
async fn a_peer_that_is_down_costs_dropped_datagrams_not_blocked_sends() {
    // A port nothing listens on.
    let dead = {
        let l = TcpListener::bind(loopback()).await.unwrap();
        l.local_addr().unwrap()
    };
    let a = TcpChannel::bind(NodeId(1), loopback(), BTreeMap::from([(NodeId(2), dead)]))
        .await
        .unwrap();
    for _ in 0..100 {
        a.send(NodeId(2), b("into the void")).await.unwrap();
    }
    eventually("the dial to fail", || a.stats().connect_failures >= 1).await;
    // Every datagram is accounted for once the writer has seen them all.
    eventually("every datagram to be dropped", || {
        let s = a.stats();
        s.dropped_unconnected + s.dropped_outbound_full == 100
    })
    .await;
    let s = a.stats();
    assert_eq!(s.sent, 0);
    assert!(
        s.connect_failures < 100,
        "the backoff should spare most dials: {s:?}"
    );
}

#[tokio::test]
async fn a_full_outbound_queue_drops_instead_of_blocking() {
    let config = TcpConfig::default().with_outbound_capacity(2);
    let nodes = tcp_mesh_with(&[NodeId(1), NodeId(2)], config).await;
    // On this single-threaded runtime the writer cannot run before the
    // test yields: the first two datagrams fill the queue.
    for i in 0..100u8 {
        nodes[0]
            .send(NodeId(2), Bytes::from(vec![i]))
            .await
            .unwrap();
    }
    assert_eq!(nodes[0].stats().dropped_outbound_full, 98);
    for i in 0..2u8 {
        let got = guarded("the queued datagrams", nodes[1].recv())
            .await
            .unwrap();
        assert_eq!(got, (NodeId(1), Bytes::from(vec![i])));
    }
    assert_eq!(nodes[0].stats().sent, 2);
}

#[tokio::test]
async fn a_flood_is_bounded_by_the_inbox_and_counted() {
    let config = TcpConfig::default().with_inbox_capacity(4);
    let nodes = tcp_mesh_with(&[NodeId(1), NodeId(2)], config).await;
    for i in 0..100u8 {
        nodes[0]
            .send(NodeId(2), Bytes::from(vec![i]))
            .await
            .unwrap();
    }
    eventually("every datagram to be received or dropped", || {
        let s = nodes[1].stats();
        s.received + s.dropped_inbox_full == 100
    })
    .await;
    assert_eq!(nodes[1].stats().dropped_inbox_full, 96);
    // One connection keeps order: the first four were kept.
    for i in 0..4u8 {
        assert_eq!(nodes[1].recv().await.unwrap().1, Bytes::from(vec![i]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_keep_both_connections() {
    let nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let (a, b_end) = (&nodes[0], &nodes[1]);
    let (sa, sb) = tokio::join!(
        a.send(NodeId(2), b("from a")),
        b_end.send(NodeId(1), b("from b"))
    );
    sa.unwrap();
    sb.unwrap();
    let (ra, rb) = guarded("both datagrams", async {
        tokio::join!(a.recv(), b_end.recv())
    })
    .await;
    assert_eq!(ra.unwrap(), (NodeId(2), b("from b")));
    assert_eq!(rb.unwrap(), (NodeId(1), b("from a")));
    // And they keep working both ways, each on the connection it dialed.
    for _ in 0..10 {
        a.send(NodeId(2), b("again")).await.unwrap();
        b_end.send(NodeId(1), b("again")).await.unwrap();
        guarded("again", b_end.recv()).await.unwrap();
        guarded("again", a.recv()).await.unwrap();
    }
    for c in [a, b_end] {
        let s = c.stats();
        assert_eq!(
            (s.connects, s.accepted, s.connections_lost),
            (1, 1, 0),
            "{s:?}"
        );
    }
}

#[tokio::test]
async fn hostile_input_is_refused_without_allocating_and_others_are_served() {
    let mut nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let server = nodes.pop().unwrap();
    let client = nodes.pop().unwrap();
    // A peer the raw connections below may claim to be: listed, on loopback.
    server.set_peer(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let to = server.local_addr();

    // A huge length where the hello should be.
    let mut raw = connect_and_write(to, &[&u32::MAX.to_le_bytes(), b"garbage garbage"]).await;
    closed_by_peer(&mut raw).await;

    // A hello without the magic.
    let mut raw = connect_and_write(to, &[&frame(b"HTTP/1.1 200")]).await;
    closed_by_peer(&mut raw).await;

    // A well-formed hello from a node not in the book.
    let mut raw = connect_and_write(to, &[&hello(99)]).await;
    closed_by_peer(&mut raw).await;

    // A good hello from a listed node, a good frame, then a length of 4 GiB:
    // the good frame is delivered, and the huge one closes the connection
    // before anything is allocated for it.
    let huge = (u32::MAX - 1).to_le_bytes();
    let mut raw = connect_and_write(to, &[&hello(3), &frame(b"legit"), &huge, &[0xAB; 1000]]).await;
    closed_by_peer(&mut raw).await;
    assert_eq!(server.recv().await.unwrap(), (NodeId(3), b("legit")));

    // Just over the limit is refused too.
    let over = (server.max_datagram() as u32 + 1).to_le_bytes();
    let mut raw = connect_and_write(to, &[&hello(3), &over]).await;
    closed_by_peer(&mut raw).await;

    let s = server.stats();
    assert_eq!(
        (s.rejected, s.accepted, s.oversized_frames),
        (3, 2, 2),
        "{s:?}"
    );

    // The channel still serves its real peers.
    client.send(NodeId(2), b("still here")).await.unwrap();
    assert_eq!(
        guarded("still here", server.recv()).await.unwrap(),
        (NodeId(1), b("still here"))
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let config = TcpConfig::default().with_max_inbound(1);
    let server = TcpChannel::bind_with(NodeId(2), loopback(), BTreeMap::new(), config)
        .await
        .unwrap();
    let to = server.local_addr();
    // The first holds the only slot (accepted first: the backlog is FIFO);
    // the second is closed at once.
    let first = TcpStream::connect(to).await.unwrap();
    let mut excess = TcpStream::connect(to).await.unwrap();
    closed_by_peer(&mut excess).await;
    assert_eq!(server.stats().rejected, 1);
    // Closing the first frees its slot (it is rejected for sending no
    // hello), and a new connection is served.
    drop(first);
    eventually("the first connection to be rejected", || {
        server.stats().rejected == 2
    })
    .await;
    server.set_peer(NodeId(7), "127.0.0.1:9".parse().unwrap());
    let _next = connect_and_write(to, &[&hello(7), &frame(b"served")]).await;
    assert_eq!(
        guarded("served", server.recv()).await.unwrap(),
        (NodeId(7), b("served"))
    );
    assert_eq!(server.stats().accepted, 1);
}

#[tokio::test]
async fn a_connection_without_a_hello_is_closed_after_the_hello_timeout() {
    let config = TcpConfig::default().with_hello_timeout(Duration::from_millis(20));
    let server = TcpChannel::bind_with(NodeId(2), loopback(), BTreeMap::new(), config)
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.local_addr()).await.unwrap();
    closed_by_peer(&mut silent).await;
    assert_eq!(server.stats().rejected, 1);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_hello_from_another_ip_than_the_books_is_refused() {
    let mut nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let server = nodes.pop().unwrap();
    // Node 1 is on 127.0.0.1; this connection comes from 127.0.0.2 (all of
    // 127/8 is loopback on Linux) and claims to be node 1.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut raw = socket.connect(server.local_addr()).await.unwrap();
    raw.write_all(&[hello(1), frame(b"spoofed")].concat())
        .await
        .unwrap();
    closed_by_peer(&mut raw).await;
    let s = server.stats();
    assert_eq!((s.rejected, s.received), (1, 0), "{s:?}");
}

#[tokio::test]
async fn send_to_self_is_delivered_locally() {
    let nodes = tcp_mesh(&[NodeId(1)]).await;
    nodes[0].send(NodeId(1), b("me")).await.unwrap();
    assert_eq!(nodes[0].recv().await.unwrap(), (NodeId(1), b("me")));
    assert_eq!(nodes[0].stats().connects, 0);
}

#[tokio::test]
async fn shutdown_closes_the_listener() {
    let a = TcpChannel::bind(NodeId(1), loopback(), BTreeMap::new())
        .await
        .unwrap();
    let addr = a.local_addr();
    a.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

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

/// A datagram numbered `seq`, `len` bytes long, every byte derived from
/// `seq`: a frame cut or spliced wrongly shows.
fn numbered(seq: u32, len: usize) -> Bytes {
    let mut d = seq.to_le_bytes().to_vec();
    d.extend((4..len).map(|i| (seq as usize * 31 + i) as u8));
    Bytes::from(d)
}

/// The number of a datagram made by [`numbered`], checking its bytes.
fn number_of(d: &Bytes) -> u32 {
    let seq = u32::from_le_bytes(d[..4].try_into().unwrap());
    assert_eq!(*d, numbered(seq, d.len()), "datagram {seq} is corrupt");
    seq
}

/// Receives `count` datagrams from `from` on `rx`; their numbers.
async fn recv_numbers(rx: &TcpChannel, from: NodeId, count: usize) -> Vec<u32> {
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        let (sender, d) = guarded("the datagrams that were not dropped", rx.recv())
            .await
            .unwrap();
        assert_eq!(sender, from);
        got.push(number_of(&d));
    }
    got
}

#[tokio::test]
async fn frames_keep_their_order_across_the_direct_and_the_queued_path() {
    const LEN: usize = 16 << 10;
    const FLOOD: u32 = 4_000;
    let config = TcpConfig::default().with_outbound_capacity(64);
    let nodes = tcp_mesh_with(&[NodeId(1), NodeId(2)], config).await;
    let (tx, rx) = (&nodes[0], &nodes[1]);
    // The connection is up: what follows starts on the direct path.
    tx.send(NodeId(2), numbered(0, LEN)).await.unwrap();
    assert_eq!(recv_numbers(rx, NodeId(1), 1).await, [0]);
    let queued_before = tx.stats();
    assert_eq!(queued_before.dropped_outbound_full, 0);
    // The receiver reads nothing while this runs (one thread, no await
    // that yields): the socket buffers fill, a frame is cut short, the
    // rest queues behind it, and the queue overflows.
    for seq in 1..=FLOOD {
        tx.send(NodeId(2), numbered(seq, LEN)).await.unwrap();
    }
    let s = tx.stats();
    assert!(
        s.dropped_outbound_full > 0,
        "the flood did not fill the queue: {s:?}"
    );
    assert!(s.sent > 1, "nothing went the direct path: {s:?}");
    // Now the receiver reads everything: the direct writes, the frame cut
    // short, the queue; whole, in order, none twice.
    let through = FLOOD as usize - s.dropped_outbound_full as usize;
    let got = recv_numbers(rx, NodeId(1), through).await;
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    // What was not dropped is a prefix (the direct path and the queue)
    // and nothing after the queue filled.
    assert_eq!(got, (1..=through as u32).collect::<Vec<_>>());
    // With the queue drained, the direct path again, after the queue.
    eventually("the queue to drain", || {
        tx.stats().sent == 1 + through as u64
    })
    .await;
    tx.send(NodeId(2), numbered(FLOOD + 1, LEN)).await.unwrap();
    assert_eq!(recv_numbers(rx, NodeId(1), 1).await, [FLOOD + 1]);
    let s = tx.stats();
    assert_eq!(
        (
            s.dropped_write_failed,
            s.dropped_unconnected,
            s.connects,
            s.connections_lost
        ),
        (0, 0, 1, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_keep_their_order_while_the_receiver_reads_on_another_thread() {
    // Sends race the writer task and the reader: some direct, some queued
    // behind a frame cut short, back and forth.
    const LEN: usize = 3_000;
    const COUNT: u32 = 20_000;
    let nodes = tcp_mesh_with(&[NodeId(1), NodeId(2)], TcpConfig::default()).await;
    let nodes = std::sync::Arc::new(nodes);
    let reader = {
        let nodes = std::sync::Arc::clone(&nodes);
        tokio::spawn(async move {
            let mut last = None;
            let mut count = 0u32;
            loop {
                let got = tokio::time::timeout(Duration::from_millis(500), nodes[1].recv()).await;
                let Ok(got) = got else { return count };
                let seq = number_of(&got.unwrap().1);
                assert!(last < Some(seq), "{seq} after {last:?}");
                last = Some(seq);
                count += 1;
            }
        })
    };
    for seq in 0..COUNT {
        nodes[0].send(NodeId(2), numbered(seq, LEN)).await.unwrap();
        if seq % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let received = reader.await.unwrap();
    let s = nodes[0].stats();
    assert_eq!(u64::from(received), s.sent, "{s:?}");
    assert_eq!(s.sent + s.dropped_outbound_full, u64::from(COUNT), "{s:?}");
}

#[tokio::test]
async fn a_receiver_that_does_not_read_pushes_back_and_the_sender_drops() {
    // Frames from peers wait in the socket buffers (bounded by the
    // kernel), not in an unbounded queue: the sender's queue overflows
    // and counts, and a peer that stays full past the write timeout loses
    // its connection and the frames waiting for it.
    let config = TcpConfig::default()
        .with_outbound_capacity(8)
        .with_write_timeout(Duration::from_millis(100));
    let nodes = tcp_mesh_with(&[NodeId(1), NodeId(2)], config).await;
    let (tx, rx) = (&nodes[0], &nodes[1]);
    tx.send(NodeId(2), numbered(0, 100)).await.unwrap();
    assert_eq!(recv_numbers(rx, NodeId(1), 1).await, [0]);
    let big = Bytes::from(vec![1u8; 60_000]);
    for _ in 0..2_000 {
        tx.send(NodeId(2), big.clone()).await.unwrap();
    }
    assert!(tx.stats().dropped_outbound_full > 0);
    eventually("the write timeout to drop the connection", || {
        tx.stats().connections_lost == 1
    })
    .await;
    let s = tx.stats();
    assert!(s.dropped_write_failed > 0, "{s:?}");
    assert_eq!(
        s.sent + s.dropped_outbound_full + s.dropped_write_failed,
        2_001,
        "{s:?}"
    );
    // The next datagram dials again; the receiver adopts the new
    // connection (closing the old one) and gets it.
    let fresh = std::sync::Arc::new(nodes);
    let drain = {
        let fresh = std::sync::Arc::clone(&fresh);
        tokio::spawn(async move {
            loop {
                let (_, d) = fresh[1].recv().await.unwrap();
                if d.len() == 5 {
                    return d;
                }
            }
        })
    };
    guarded("a datagram on a new connection", async {
        while !drain.is_finished() {
            fresh[0].send(NodeId(2), b("again")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(drain.await.unwrap(), b("again"));
    assert_eq!(fresh[0].stats().connects, 2);
}

#[tokio::test]
async fn a_batch_to_several_peers_refuses_by_position_and_keeps_each_peers_order() {
    let nodes = tcp_mesh(&[NodeId(1), NodeId(2), NodeId(3)]).await;
    let (a, b_end, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let max = a.max_datagram();
    let batch = vec![
        (NodeId(2), numbered(1, 10)),
        (NodeId(3), numbered(2, 20)),
        (NodeId(9), numbered(3, 30)),
        (NodeId(2), Bytes::from(vec![0; max + 1])),
        (NodeId(3), numbered(5, 50)),
        (NodeId(1), numbered(6, 60)),
        (NodeId(2), numbered(7, 70)),
        (NodeId(2), numbered(8, 80)),
    ];
    let err = a.send_batch(&batch).await.unwrap_err();
    assert_eq!(
        err.failed,
        vec![
            (2, ChannelError::Unreachable(NodeId(9))),
            (3, ChannelError::TooLarge { len: max + 1, max }),
        ]
    );
    assert_eq!(recv_numbers(b_end, NodeId(1), 3).await, [1, 7, 8]);
    assert_eq!(recv_numbers(c, NodeId(1), 2).await, [2, 5]);
    assert_eq!(recv_numbers(a, NodeId(1), 1).await, [6]);
    // Once connected, a batch's frames to one peer take one vectored write
    // and arrive in order.
    let batch: Vec<_> = (10..200u32)
        .map(|seq| {
            (
                NodeId(2 + seq as u64 % 2),
                numbered(seq, 100 + seq as usize),
            )
        })
        .collect();
    a.send_batch(&batch).await.unwrap();
    let evens: Vec<u32> = (10..200).filter(|s| s % 2 == 0).collect();
    let odds: Vec<u32> = (10..200).filter(|s| s % 2 == 1).collect();
    assert_eq!(recv_numbers(b_end, NodeId(1), evens.len()).await, evens);
    assert_eq!(recv_numbers(c, NodeId(1), odds.len()).await, odds);
}

#[tokio::test]
async fn a_slow_peer_does_not_hold_up_sends_to_another() {
    let config = TcpConfig::default().with_outbound_capacity(16);
    let nodes = tcp_mesh_with(&[NodeId(1), NodeId(2), NodeId(3)], config).await;
    let (a, slow, fast) = (&nodes[0], &nodes[1], &nodes[2]);
    // Both connections up.
    a.send(NodeId(2), numbered(0, 10)).await.unwrap();
    a.send(NodeId(3), numbered(0, 10)).await.unwrap();
    recv_numbers(slow, NodeId(1), 1).await;
    recv_numbers(fast, NodeId(1), 1).await;
    // n2 stops reading; n1 floods it, interleaving datagrams for n3.
    let big = Bytes::from(vec![9u8; 32 << 10]);
    let started = std::time::Instant::now();
    for seq in 1..=1_000u32 {
        a.send(NodeId(2), big.clone()).await.unwrap();
        a.send_batch(&[(NodeId(2), big.clone()), (NodeId(3), numbered(seq, 40))])
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "sends waited for the slow peer: {:?}",
        started.elapsed()
    );
    assert!(
        a.stats().dropped_outbound_full > 0,
        "n2's queue never filled"
    );
    // n3 got every one of its datagrams, in order.
    assert_eq!(
        recv_numbers(fast, NodeId(1), 1_000).await,
        (1..=1_000).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_cancelled_recv_keeps_a_frame_read_in_part() {
    let nodes = tcp_mesh(&[NodeId(2)]).await;
    let server = &nodes[0];
    server.set_peer(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let whole = numbered(42, 50_000);
    let framed = [hello(3), frame(&whole)].concat();
    let (first, second) = framed.split_at(12 + 4 + 20_000);
    let mut raw = connect_and_write(server.local_addr(), &[first]).await;
    // Polled until it has read the first part, then dropped.
    let early = tokio::time::timeout(Duration::from_millis(100), server.recv()).await;
    assert!(
        early.is_err(),
        "a frame read in part was returned: {early:?}"
    );
    raw.write_all(second).await.unwrap();
    let got = guarded("the whole frame", server.recv()).await.unwrap();
    assert_eq!(got, (NodeId(3), whole));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_at_once_lose_nothing_and_keep_each_sides_order() {
    // Whether both dial, or one adopts the other's connection first,
    // depends on timing: many rounds see both.
    let (mut both_dialed, mut one_connection) = (0, 0);
    for _ in 0..20 {
        let nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
        let (a, b_end) = (&nodes[0], &nodes[1]);
        let (sa, sb) = tokio::join!(
            a.send(NodeId(2), numbered(0, 8)),
            b_end.send(NodeId(1), numbered(0, 8))
        );
        sa.unwrap();
        sb.unwrap();
        // Each side keeps sending on the connection it has.
        for i in 1..20 {
            a.send(NodeId(2), numbered(i, 8)).await.unwrap();
            b_end.send(NodeId(1), numbered(i, 8)).await.unwrap();
        }
        let (ra, rb) = guarded("both sides' datagrams", async {
            tokio::join!(
                recv_numbers(a, NodeId(2), 20),
                recv_numbers(b_end, NodeId(1), 20)
            )
        })
        .await;
        assert_eq!(ra, (0..20).collect::<Vec<_>>());
        assert_eq!(rb, (0..20).collect::<Vec<_>>());
        let (sa, sb) = (a.stats(), b_end.stats());
        assert_eq!(
            (sa.connections_lost, sb.connections_lost),
            (0, 0),
            "{sa:?} {sb:?}"
        );
        match (sa.connects, sb.connects) {
            (1, 1) => {
                both_dialed += 1;
                // Each reads the other's hello in time (a dial that lost
                // the race may still be on its way).
                eventually("both hellos", || {
                    (a.stats().accepted, b_end.stats().accepted) == (1, 1)
                })
                .await;
            }
            (1, 0) | (0, 1) => one_connection += 1,
            other => panic!("dials: {other:?}: {sa:?} {sb:?}"),
        }
    }
    eprintln!("both dialed in {both_dialed} rounds, one connection in {one_connection}");
}

#[tokio::test]
async fn a_reply_rides_the_connection_its_request_came_on() {
    let nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let (client, server) = (&nodes[0], &nodes[1]);
    for i in 0..50 {
        client.send(NodeId(2), numbered(i, 64)).await.unwrap();
        let (from, request) = guarded("the request", server.recv()).await.unwrap();
        assert_eq!((from, number_of(&request)), (NodeId(1), i));
        server.send(NodeId(1), request).await.unwrap();
        let (from, reply) = guarded("the reply", client.recv()).await.unwrap();
        assert_eq!((from, number_of(&reply)), (NodeId(2), i));
    }
    // One connection, dialed by the client: the server never dials.
    let (c, s) = (client.stats(), server.stats());
    assert_eq!((c.connects, c.accepted), (1, 0), "{c:?}");
    assert_eq!((s.connects, s.accepted), (0, 1), "{s:?}");
    assert_eq!((c.sent, s.sent, c.received, s.received), (50, 50, 50, 50));
}

#[tokio::test]
async fn a_server_whose_client_restarts_answers_on_the_new_connection() {
    let mut nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let server = std::sync::Arc::new(nodes.pop().unwrap());
    let client = nodes.pop().unwrap();
    let addr = client.local_addr();
    // The server answers everything, as a driver would.
    let echo = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            while let Ok((from, request)) = server.recv().await {
                let _ = server.send(from, request).await;
            }
        })
    };
    client.send(NodeId(2), b("before")).await.unwrap();
    assert_eq!(
        guarded("before", client.recv()).await.unwrap(),
        (NodeId(2), b("before"))
    );

    // The client restarts on the same address, with a new connection.
    client.shutdown().await;
    let client = TcpChannel::bind(NodeId(1), addr, server.peers())
        .await
        .expect("shutdown released the port");
    guarded("an answer on the new connection", async {
        loop {
            client.send(NodeId(2), b("after")).await.unwrap();
            let got = tokio::time::timeout(Duration::from_millis(50), client.recv()).await;
            if let Ok(got) = got {
                assert_eq!(got.unwrap(), (NodeId(2), b("after")));
                break;
            }
        }
    })
    .await;
    // The server noticed the old connection end, and answers on the new
    // one: it has never dialed.
    let s = server.stats();
    assert_eq!((s.connects, s.accepted), (0, 2), "{s:?}");
    assert_eq!(s.connections_lost, 1, "{s:?}");
    assert_eq!(client.stats().accepted, 0);
    echo.abort();
}

#[tokio::test]
async fn a_newer_connection_from_a_peer_takes_over_its_replies() {
    let nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let (client, server) = (&nodes[0], &nodes[1]);
    // A process on the client's host dials first in its name: the book's
    // IP is all the server checks, so the server sends it what is meant
    // for node 1 (the documented limit), until node 1 itself connects.
    let mut impostor = connect_and_write(server.local_addr(), &[&hello(1)]).await;
    eventually("the impostor's hello", || server.stats().accepted == 1).await;
    let first = guarded("the impostor's connection adopted", async {
        loop {
            server.send(NodeId(1), b("meant for 1")).await.unwrap();
            let mut got = [0u8; 4 + 11];
            if tokio::time::timeout(Duration::from_millis(20), impostor.read_exact(&mut got))
                .await
                .is_ok()
            {
                break got;
            }
        }
    })
    .await;
    assert_eq!(&first[4..], b"meant for 1");
    // Node 1 connects: its connection replaces the older one, for
    // receiving and for sending, so the server answers it without dialing.
    let recv = async {
        loop {
            let (from, request) = server.recv().await.unwrap();
            if request == b("request") {
                return from;
            }
        }
    };
    client.send(NodeId(2), b("request")).await.unwrap();
    assert_eq!(guarded("the request", recv).await, NodeId(1));
    server.send(NodeId(1), b("reply")).await.unwrap();
    assert_eq!(
        guarded("the reply", client.recv()).await.unwrap(),
        (NodeId(2), b("reply"))
    );
    let s = server.stats();
    assert_eq!((s.connects, s.accepted), (0, 2), "{s:?}");
    // Replaced: the server closed it.
    guarded("the impostor's connection closed", async {
        let mut rest = Vec::new();
        let _ = impostor.read_to_end(&mut rest).await;
    })
    .await;
}

#[tokio::test]
async fn a_dial_that_completes_after_adopting_the_peers_connection_is_not_sent_on() {
    let nodes = tcp_mesh_with(
        &[NodeId(1), NodeId(2)],
        TcpConfig::default().with_connect_timeout(Duration::from_secs(10)),
    )
    .await;
    let (a, b_end) = (&nodes[0], &nodes[1]);
    // B's book sends node 1's dials to a listener whose backlog is full,
    // so B's dial waits (the kernel drops its SYN and retries it later).
    let stall = tokio::net::TcpSocket::new_v4().unwrap();
    stall.bind(loopback()).unwrap();
    let stall = stall.listen(0).unwrap();
    let stall_addr = stall.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        fillers.push(tokio::spawn(TcpStream::connect(stall_addr)));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    b_end.set_peer(NodeId(1), stall_addr);
    b_end.send(NodeId(1), b("queued")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b_end.stats().connects, 0, "the dial did not wait");

    // Meanwhile A dials B: B adopts that connection, and what waited for
    // its own dial goes on it.
    a.send(NodeId(2), b("hello b")).await.unwrap();
    assert_eq!(
        guarded("a's datagram", b_end.recv()).await.unwrap(),
        (NodeId(1), b("hello b"))
    );
    assert_eq!(
        guarded("b's queued datagram", a.recv()).await.unwrap(),
        (NodeId(2), b("queued"))
    );

    // B's dial completes now. B keeps sending on A's connection.
    let _accepted: Vec<_> = guarded("the stalled dials", async {
        let mut got = Vec::new();
        while b_end.stats().connects == 0 {
            if let Ok(Ok((s, _))) =
                tokio::time::timeout(Duration::from_millis(100), stall.accept()).await
            {
                got.push(s);
            }
        }
        got
    })
    .await;
    b_end.send(NodeId(1), b("after")).await.unwrap();
    assert_eq!(
        guarded("b's later datagram", a.recv()).await.unwrap(),
        (NodeId(2), b("after"))
    );
    for f in fillers {
        f.abort();
    }
}

#[tokio::test]
async fn hostile_input_is_refused_without_allocating_and_others_are_served() {
    let mut nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let server = std::sync::Arc::new(nodes.pop().unwrap());
    let client = nodes.pop().unwrap();
    // A peer the raw connections below may claim to be: listed, on loopback.
    server.set_peer(NodeId(3), "127.0.0.1:9".parse().unwrap());
    let to = server.local_addr();
    // The server receives all along, as a driver does: connections are
    // read (and closed when hostile) while a `recv` is pending.
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let receiver = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            loop {
                let _ = got_tx.send(server.recv().await.unwrap());
            }
        })
    };

    // A huge length where the hello should be.
    let mut raw = connect_and_write(to, &[&u32::MAX.to_le_bytes(), b"garbage garbage"]).await;
    closed_by_peer(&mut raw).await;

    // A hello without the magic.
    let mut raw = connect_and_write(to, &[&frame(b"HTTP/1.1 200")]).await;
    closed_by_peer(&mut raw).await;

    // A version-1 hello (whose acceptor never sent): refused.
    let mut v1 = frame(b"ftT1");
    v1[0] += 8;
    v1.extend_from_slice(&3u64.to_le_bytes());
    let mut raw = connect_and_write(to, &[&v1]).await;
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
    assert_eq!(got.recv().await.unwrap(), (NodeId(3), b("legit")));

    // Just over the limit is refused too.
    let over = (server.max_datagram() as u32 + 1).to_le_bytes();
    let mut raw = connect_and_write(to, &[&hello(3), &over]).await;
    closed_by_peer(&mut raw).await;

    // A frame cut short by the peer closing: dropped, nothing delivered.
    let mut raw = connect_and_write(to, &[&hello(3), &frame(b"cut short")[..7]]).await;
    raw.shutdown().await.unwrap();
    closed_by_peer(&mut raw).await;

    let s = server.stats();
    assert_eq!(
        (s.rejected, s.accepted, s.oversized_frames),
        (4, 3, 2),
        "{s:?}"
    );

    // The channel still serves its real peers.
    client.send(NodeId(2), b("still here")).await.unwrap();
    assert_eq!(
        guarded("still here", got.recv()).await.unwrap(),
        (NodeId(1), b("still here"))
    );
    assert!(
        got.try_recv().is_err(),
        "a hostile connection delivered something"
    );
    receiver.abort();
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

#[tokio::test]
async fn replies_to_a_burst_sent_as_one_batch_leave_in_few_writes() {
    // n2 receives a burst of requests already buffered and answers them
    // all in one batch, as the driver does for the steps it takes back to
    // back: the answers leave in a vectored write per 64 frames, all of
    // them, in order.
    const BURST: u32 = 200;
    let nodes = tcp_mesh(&[NodeId(1), NodeId(2)]).await;
    let (a, server) = (&nodes[0], &nodes[1]);
    // Both connections up.
    a.send(NodeId(2), numbered(0, 10)).await.unwrap();
    recv_numbers(server, NodeId(1), 1).await;
    server.send(NodeId(1), numbered(0, 10)).await.unwrap();
    recv_numbers(a, NodeId(2), 1).await;
    let batch: Vec<_> = (1..=BURST)
        .map(|seq| (NodeId(2), numbered(seq, 64)))
        .collect();
    a.send_batch(&batch).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..BURST {
        answers.push(guarded("a request", server.recv()).await.unwrap());
    }
    let writes_before = server.stats().writes;
    server.send_batch(&answers).await.unwrap();
    let got = recv_numbers(a, NodeId(2), BURST as usize).await;
    assert_eq!(got, (1..=BURST).collect::<Vec<_>>());
    let writes = server.stats().writes - writes_before;
    assert!(
        writes * 4 <= u64::from(BURST),
        "{writes} writes for a batch of {BURST} answers"
    );
}

#[tokio::test]
async fn a_batch_larger_than_the_queue_stays_within_the_bound_when_the_socket_fills() {
    let config = TcpConfig::default().with_outbound_capacity(4);
    let nodes = tcp_mesh_with(&[NodeId(1), NodeId(2)], config).await;
    let (tx, rx) = (&nodes[0], &nodes[1]);
    tx.send(NodeId(2), numbered(0, 10)).await.unwrap();
    recv_numbers(rx, NodeId(1), 1).await;
    // More than the socket buffers take: what they do not is queued up to
    // the bound, the rest dropped.
    let batch: Vec<_> = (1..=400)
        .map(|seq| (NodeId(2), numbered(seq, 60_000)))
        .collect();
    tx.send_batch(&batch).await.unwrap();
    let s = tx.stats();
    assert!(s.dropped_outbound_full > 0, "{s:?}");
    let through = 400 - s.dropped_outbound_full as usize;
    assert!(through <= s.sent as usize + 4, "more than 4 queued: {s:?}");
    let got = recv_numbers(rx, NodeId(1), through).await;
    assert_eq!(got, (1..=through as u32).collect::<Vec<_>>());
}

//! `UdpChannel` beyond the conformance suite: what it refuses to send, and
//! what it refuses to believe; batched sends (GSO, `sendmmsg`, the plain
//! fallback) and draining reads.

mod common;
mod netns;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ft_core::{BatchError, Channel, ChannelError, NodeId};
use ft_tokio::{UDP_HEADER_LEN, UDP_MAX_DATAGRAM, UdpBatching, UdpChannel};
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
    // Larger than the receiver's limit: by one byte, and by far (more than
    // a receive slot holds, so the kernel cuts it).
    raw.send_to(&claiming(1, &[0; 17]), to).await.unwrap();
    raw.send_to(&claiming(1, &[0; 1000]), to).await.unwrap();

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
                == 5
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
        (1, 1, 1, 2)
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

/// `n` datagrams of `len` bytes, each starting with its number.
fn numbered(n: usize, len: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let mut d = vec![0xa5; len.max(4)];
            d[..4].copy_from_slice(&(i as u32).to_le_bytes());
            Bytes::from(d)
        })
        .collect()
}

/// Receives `n` datagrams on `c` and checks they are `expected`, from
/// `from`, in order.
async fn expect_in_order(c: &UdpChannel, from: NodeId, expected: &[Bytes]) {
    for (i, want) in expected.iter().enumerate() {
        let got = guarded("a datagram of the batch", c.recv()).await.unwrap();
        assert_eq!(got.0, from);
        assert_eq!(&got.1, want, "datagram {i} of {}", expected.len());
    }
}

#[tokio::test]
async fn a_batch_refuses_by_position_and_sends_the_rest() {
    let nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let mut nodes = nodes.into_iter();
    let a = nodes.next().unwrap().with_max_datagram(8);
    let b_ = nodes.next().unwrap();
    let batch = vec![
        (NodeId(2), b("one")),
        (NodeId(9), b("lost")),
        (NodeId(2), b("far too long")),
        (NodeId(2), b("two")),
        (NodeId(1), b("me")),
        (NodeId(2), b("three")),
    ];
    let err = a.send_batch(&batch).await.unwrap_err();
    assert_eq!(
        err,
        BatchError {
            failed: vec![
                (1, ChannelError::Unreachable(NodeId(9))),
                (2, ChannelError::TooLarge { len: 12, max: 8 }),
            ]
        }
    );
    expect_in_order(&b_, NodeId(1), &[b("one"), b("two"), b("three")]).await;
    expect_in_order(&a, NodeId(1), &[b("me")]).await;
    assert_eq!(a.stats().sent, 4);
    assert_eq!(a.send_batch(&[]).await, Ok(()));

    // send_to_many: refusals by position in the list of destinations.
    let err = a
        .send_to_many(&[NodeId(7), NodeId(2), NodeId(1)], b("all"))
        .await
        .unwrap_err();
    assert_eq!(err.failed, vec![(0, ChannelError::Unreachable(NodeId(7)))]);
    expect_in_order(&b_, NodeId(1), &[b("all")]).await;
    expect_in_order(&a, NodeId(1), &[b("all")]).await;
}

#[tokio::test]
async fn a_hundred_datagrams_to_one_peer_go_as_two_gso_writes() {
    let nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let (a, b_) = (&nodes[0], &nodes[1]);
    let data = numbered(100, 64);
    let batch: Vec<_> = data.iter().map(|d| (NodeId(2), d.clone())).collect();
    a.send_batch(&batch).await.unwrap();
    let s = a.stats();
    // 64 segments at most per GSO write.
    assert_eq!(
        (
            s.sent,
            s.gso_sends,
            s.send_syscalls,
            s.batches,
            s.gso_fallbacks
        ),
        (100, 2, 2, 1, 0),
        "{s:?}"
    );
    expect_in_order(b_, NodeId(1), &data).await;

    // A shorter last datagram still rides in the run; a longer one starts
    // another.
    let batch = vec![
        (NodeId(2), b("aaaa")),
        (NodeId(2), b("bbbb")),
        (NodeId(2), b("cc")),
        (NodeId(2), b("dddddd")),
        (NodeId(2), b("eeeeee")),
    ];
    a.send_batch(&batch).await.unwrap();
    assert_eq!(a.stats().gso_sends, 4);
    let expected: Vec<_> = batch.iter().map(|(_, d)| d.clone()).collect();
    expect_in_order(b_, NodeId(1), &expected).await;
}

#[tokio::test]
async fn a_batch_to_many_peers_is_one_sendmmsg() {
    let nodes = udp_mesh(&[NodeId(1), NodeId(2), NodeId(3), NodeId(4)]).await;
    let a = &nodes[0];
    // Alternating destinations and sizes: nothing for GSO.
    let data = numbered(99, 40);
    let batch: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, d)| (NodeId(2 + (i % 3) as u64), d.slice(..4 + i % 7)))
        .collect();
    a.send_batch(&batch).await.unwrap();
    let s = a.stats();
    assert_eq!(
        (s.sent, s.mmsg_sends, s.send_syscalls, s.gso_sends),
        (99, 1, 1, 0),
        "{s:?}"
    );
    for (k, peer) in nodes[1..].iter().enumerate() {
        let mine: Vec<_> = batch
            .iter()
            .filter(|(to, _)| *to == NodeId(2 + k as u64))
            .map(|(_, d)| d.clone())
            .collect();
        expect_in_order(peer, NodeId(1), &mine).await;
    }

    // send_to_many without a group fans out in one sendmmsg too.
    a.send_to_many(&[NodeId(2), NodeId(3), NodeId(4)], b("fan"))
        .await
        .unwrap();
    assert_eq!(a.stats().mmsg_sends, 2);
    for peer in &nodes[1..] {
        expect_in_order(peer, NodeId(1), &[b("fan")]).await;
    }
}

#[tokio::test]
async fn the_plain_path_writes_one_datagram_per_system_call() {
    let nodes = udp_mesh(&[NodeId(1), NodeId(2), NodeId(3)]).await;
    let mut nodes = nodes.into_iter();
    let a = nodes.next().unwrap().with_batching(UdpBatching::Plain);
    let (b_, c) = (nodes.next().unwrap(), nodes.next().unwrap());
    let data = numbered(20, 64);
    let batch: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, d)| (NodeId(2 + (i / 10) as u64), d.clone()))
        .collect();
    a.send_batch(&batch).await.unwrap();
    let s = a.stats();
    assert_eq!(
        (s.sent, s.send_syscalls, s.gso_sends, s.mmsg_sends),
        (20, 20, 0, 0)
    );
    expect_in_order(&b_, NodeId(1), &data[..10]).await;
    expect_in_order(&c, NodeId(1), &data[10..]).await;

    // sendmmsg without GSO.
    let a = udp_mesh(&[NodeId(1), NodeId(2)]).await.remove(0);
    let a = a.with_batching(UdpBatching::Mmsg);
    let batch: Vec<_> = data.iter().map(|d| (NodeId(2), d.clone())).collect();
    a.send_batch(&batch).await.unwrap();
    let s = a.stats();
    assert_eq!((s.send_syscalls, s.mmsg_sends, s.gso_sends), (1, 1, 0));
}

/// Runs `case` on a fresh current-thread runtime.
fn run_local<F: std::future::Future<Output = ()>>(case: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(case);
}

/// GSO refused by the kernel: the segments are larger than loopback's MTU.
async fn gso_refused() {
    let nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let (a, b_) = (&nodes[0], &nodes[1]);
    let big = numbered(10, 2000);
    let batch: Vec<_> = big.iter().map(|d| (NodeId(2), d.clone())).collect();
    a.send_batch(&batch).await.unwrap();
    let s = a.stats();
    assert_eq!((s.gso_fallbacks, s.gso_sends, s.sent), (1, 0, 10), "{s:?}");
    expect_in_order(b_, NodeId(1), &big).await;
    // Learnt: segments that large are no longer tried with GSO.
    a.send_batch(&batch).await.unwrap();
    let s = a.stats();
    assert_eq!((s.gso_fallbacks, s.gso_sends, s.sent), (1, 0, 20), "{s:?}");
    expect_in_order(b_, NodeId(1), &big).await;
    // Smaller ones still are.
    let small = numbered(10, 100);
    let batch: Vec<_> = small.iter().map(|d| (NodeId(2), d.clone())).collect();
    a.send_batch(&batch).await.unwrap();
    assert_eq!(a.stats().gso_sends, 1);
    expect_in_order(b_, NodeId(1), &small).await;
}

#[test]
fn a_gso_write_the_kernel_refuses_is_written_without_gso() {
    if netns::inside() {
        run_local(gso_refused());
        return;
    }
    // Loopback's MTU (64 KiB) takes any segment: lower it in a namespace.
    if let Err(why) = netns::rerun(
        "a_gso_write_the_kernel_refuses_is_written_without_gso",
        "ip link set lo mtu 1500 && ip link set lo up",
    ) {
        eprintln!("skipped: cannot make the kernel refuse GSO here, as {why}");
    }
}

#[tokio::test]
async fn recv_drains_what_is_ready_and_hands_it_out_in_order() {
    let nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let (a, b_) = (&nodes[0], &nodes[1]);
    let data = numbered(64, 32);
    for d in &data {
        a.send(NodeId(2), d.clone()).await.unwrap();
    }
    // Loopback delivers at once; give it a moment all the same.
    tokio::time::sleep(Duration::from_millis(50)).await;
    expect_in_order(b_, NodeId(1), &data).await;
    let s = b_.stats();
    assert_eq!(s.received, 64);
    // 32 datagrams at most per drain: 2, and maybe one more that found the
    // socket empty.
    assert!(s.recv_drains <= 3, "{s:?}");
    // 64 KiB datagrams allowed: `recvmmsg` has 4 slots of 64 KiB.
    assert!(s.recv_syscalls <= 64 / 4 + 3, "{s:?}");
}

#[tokio::test]
async fn small_datagrams_are_read_many_to_a_system_call() {
    for (batching, most) in [(UdpBatching::Gso, 4), (UdpBatching::Plain, 64 + 3)] {
        let mut nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
        let b_ = nodes
            .pop()
            .unwrap()
            .with_max_datagram(1400)
            .with_batching(batching);
        let a = &nodes[0];
        let data = numbered(64, 32);
        for d in &data {
            a.send(NodeId(2), d.clone()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        expect_in_order(&b_, NodeId(1), &data).await;
        let s = b_.stats();
        assert_eq!(s.received, 64, "{batching:?}");
        // 32 slots of 1.4 KiB: a call per drain, and maybe one that found
        // the socket empty; plain reads take one call per datagram.
        assert!(s.recv_syscalls <= most, "{batching:?}: {s:?}");
        if batching == UdpBatching::Plain {
            assert!(s.recv_syscalls >= 64, "{s:?}");
        }
    }
}

#[tokio::test]
async fn a_datagram_that_comes_alone_costs_one_read() {
    let nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let (a, b_) = (&nodes[0], &nodes[1]);
    for i in 0..20u8 {
        a.send(NodeId(2), Bytes::from(vec![i; 8])).await.unwrap();
        assert_eq!(
            b_.recv().await.unwrap(),
            (NodeId(1), Bytes::from(vec![i; 8]))
        );
    }
    let s = b_.stats();
    // Not two (the read, and one that finds the socket empty): a read
    // that fills fewer slots than it had found the socket empty. A read
    // that finds nothing at all happens only when a wake-up was spurious.
    assert!(s.recv_syscalls <= 20 + 2, "{s:?}");
}

#[tokio::test]
async fn a_recv_dropped_at_any_point_loses_nothing() {
    let nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let (a, b_) = (&nodes[0], &nodes[1]);
    let data = numbered(200, 32);
    let mut got = Vec::new();
    let mut next = 0;
    let mut polls = 0u32;
    guarded("every datagram", async {
        while got.len() < data.len() {
            // Bursts of up to 7 datagrams, and receives cut short at their
            // first await, or after one poll of the runtime.
            if next < data.len() && polls.is_multiple_of(3) {
                let end = (next + 7).min(data.len());
                let batch: Vec<_> = data[next..end]
                    .iter()
                    .map(|d| (NodeId(2), d.clone()))
                    .collect();
                a.send_batch(&batch).await.unwrap();
                next = end;
            }
            polls += 1;
            // Receives polled once, or twice (around a yield to the
            // runtime), or for 50 µs, and dropped if they still wait.
            let got_one = match polls % 3 {
                0 => futures::FutureExt::now_or_never(b_.recv()),
                1 => tokio::select! {
                    biased;
                    r = b_.recv() => Some(r),
                    () = tokio::task::yield_now() => None,
                },
                _ => tokio::time::timeout(Duration::from_micros(50), b_.recv())
                    .await
                    .ok(),
            };
            if let Some(r) = got_one {
                got.push(r.unwrap().1);
            }
        }
    })
    .await;
    assert_eq!(got, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_receivers_each_get_a_datagram_one_of_them_drained() {
    let mut nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let b_ = std::sync::Arc::new(nodes.pop().unwrap());
    let a = nodes.pop().unwrap();
    for round in 0..300usize {
        // Receivers that take one datagram each and stop: whichever drains
        // the socket must leave the rest to the others, those already
        // waiting and those about to.
        let receivers: Vec<_> = (0..4)
            .map(|_| {
                let b_ = b_.clone();
                tokio::spawn(async move { b_.recv().await.unwrap().1 })
            })
            .collect();
        if round.is_multiple_of(8) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let data = numbered(4, 16 + round % 64);
        let batch: Vec<_> = data.iter().map(|d| (NodeId(2), d.clone())).collect();
        a.send_batch(&batch).await.unwrap();
        let mut all = Vec::new();
        for r in receivers {
            let got = tokio::time::timeout(Duration::from_secs(2), r).await;
            all.push(
                got.unwrap_or_else(|_| panic!("a receiver stalled in round {round}"))
                    .unwrap(),
            );
        }
        all.sort_by_key(|d| u32::from_le_bytes(d[..4].try_into().unwrap()));
        assert_eq!(all, data);
    }
}

#[tokio::test]
async fn a_datagram_the_kernel_refuses_fails_alone_in_every_path() {
    let mut nodes = udp_mesh(&[NodeId(1), NodeId(2)]).await;
    let b_ = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    // A broadcast address: refused (EACCES) without SO_BROADCAST.
    a.set_peer(NodeId(9), "255.255.255.255:9".parse().unwrap());
    for batching in [UdpBatching::Gso, UdpBatching::Mmsg, UdpBatching::Plain] {
        let a = UdpChannel::bind(NodeId(1), loopback(), a.peers())
            .await
            .unwrap()
            .with_batching(batching);
        b_.set_peer(NodeId(1), a.local_addr());
        let batch = vec![
            (NodeId(2), b("one")),
            (NodeId(9), b("bcast")),
            (NodeId(9), b("bcast")),
            (NodeId(2), b("two")),
            (NodeId(2), b("three")),
        ];
        let err = a.send_batch(&batch).await.unwrap_err();
        let positions: Vec<_> = err.failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(positions, vec![1, 2], "{batching:?}: {err:?}");
        // The error `send` gives, for each.
        let alone = a.send(NodeId(9), b("bcast")).await.unwrap_err();
        assert!(matches!(alone, ChannelError::Transport(_)), "{alone:?}");
        assert!(err.failed.iter().all(|(_, e)| *e == alone), "{err:?}");
        expect_in_order(&b_, NodeId(1), &[b("one"), b("two"), b("three")]).await;
        assert_eq!(a.stats().sent, 3, "{batching:?}");
    }
}

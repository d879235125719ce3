//! `UdpChannel`'s IP multicast over loopback: one datagram to the group
//! reaches every other member once, and no one outside the destinations.
//!
//! Where the host routes no multicast on loopback, the test runs itself
//! again in a private network namespace (root, `unshare` and `ip` needed)
//! whose loopback has a multicast route; where it cannot, it says
//! "skipped: ..." and passes. `FT_TEST_FORCE_NETNS=1` takes the namespace
//! path on a host that would not need it.

mod common;
mod netns;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use ft_core::{Channel, NodeId};
use ft_tokio::{MulticastConfig, UdpChannel};

use common::udp_mesh;

/// How long a datagram may take to show up on loopback before multicast is
/// judged unavailable, and how long "nothing more arrives" is watched.
const WAIT: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_millis(200);

/// Sets up multicast on a fresh namespace's loopback.
const SETUP: &str =
    "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo";

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// A group of this process's own: an administratively scoped address and a
/// port the system just handed out, so that concurrent runs do not meet.
fn private_group() -> SocketAddrV4 {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    let pid = std::process::id();
    SocketAddrV4::new(Ipv4Addr::new(239, 255, (pid >> 8) as u8, pid as u8), port)
}

/// The next datagram `c` receives within `within`, if any.
async fn next(c: &UdpChannel, within: Duration) -> Option<(NodeId, Bytes)> {
    tokio::time::timeout(within, c.recv())
        .await
        .ok()
        .map(Result::unwrap)
}

/// The test proper. `Err`: multicast is not available here (joining or
/// sending failed, or nothing arrived); anything wrong once it is available
/// panics.
async fn three_members() -> Result<(), String> {
    let group = private_group();
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let config = MulticastConfig::new(group, Ipv4Addr::LOCALHOST, members)
        // Never beyond this host, whatever the routes say.
        .with_ttl(0)
        .with_loopback(true);
    let mut nodes = Vec::new();
    for c in udp_mesh(&members).await {
        nodes.push(
            c.with_multicast(config.clone())
                .map_err(|e| format!("cannot join {group} on loopback: {e}"))?,
        );
    }
    let [a, b_, c] = &nodes[..] else {
        unreachable!()
    };
    assert_eq!(a.multicast(), Some(&config));

    // To the other two: one multicast datagram, each receives it once.
    let d = b("to the group");
    a.send_to_many(&[NodeId(2), NodeId(3)], d.clone())
        .await
        .map_err(|e| format!("cannot send to {group} on loopback: {e}"))?;
    let Some(got) = next(b_, WAIT).await else {
        return Err(format!("nothing sent to {group} arrived on loopback"));
    };
    assert_eq!(got, (NodeId(1), d.clone()));
    assert_eq!(next(c, WAIT).await, Some((NodeId(1), d.clone())));
    let s = a.stats();
    assert_eq!(
        (s.multicast_sent, s.sent, s.send_syscalls),
        (1, 1, 1),
        "one multicast datagram, not a fan-out: {s:?}"
    );
    assert_eq!(b_.stats().multicast_received, 1);
    assert_eq!(c.stats().multicast_received, 1);
    // Once only, and not to the sender, which did not name itself: its
    // looped-back copy is dropped.
    assert_eq!(next(b_, QUIET).await, None);
    assert_eq!(next(c, QUIET).await, None);
    assert_eq!(next(a, QUIET).await, None);
    assert_eq!(a.stats().dropped_own_multicast, 1);

    // Naming itself too: the others by multicast, itself by unicast, each once.
    let d = b("to all three");
    a.send_to_many(&[NodeId(3), NodeId(1), NodeId(2)], d.clone())
        .await
        .unwrap();
    for n in [a, b_, c] {
        assert_eq!(next(n, WAIT).await, Some((NodeId(1), d.clone())));
        assert_eq!(next(n, QUIET).await, None);
    }
    let s = a.stats();
    assert_eq!((s.multicast_sent, s.sent), (2, 3));
    assert_eq!(s.dropped_own_multicast, 2);

    // A subset of the group is reached by unicast: the member left out
    // receives nothing.
    let d = b("to one");
    c.send_to_many(&[NodeId(2)], d.clone()).await.unwrap();
    assert_eq!(next(b_, WAIT).await, Some((NodeId(3), d.clone())));
    assert_eq!(next(a, QUIET).await, None);
    assert_eq!(c.stats().multicast_sent, 0);
    // As is a list with a repeat (as two sends, two datagrams).
    c.send_to_many(&[NodeId(1), NodeId(2), NodeId(1)], d.clone())
        .await
        .unwrap();
    assert_eq!(next(a, WAIT).await, Some((NodeId(3), d.clone())));
    assert_eq!(next(a, WAIT).await, Some((NodeId(3), d.clone())));
    assert_eq!(next(b_, WAIT).await, Some((NodeId(3), d.clone())));
    assert_eq!(c.stats().multicast_sent, 0);
    // Every multicast datagram was checked like a unicast one.
    for n in [a, b_, c] {
        let s = n.stats();
        assert_eq!(s.dropped_mismatched_addr + s.dropped_unknown_sender, 0);
    }
    Ok(())
}

#[test]
fn send_to_many_reaches_the_other_members_with_one_multicast_datagram() {
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(three_members())
    };
    if netns::inside() {
        // Set up for multicast: unavailable is a failure here.
        run().unwrap();
        return;
    }
    if !netns::forced() {
        match run() {
            Ok(()) => return,
            Err(why) => eprintln!("{why}; trying a private network namespace"),
        }
    }
    if let Err(why) = netns::rerun(
        "send_to_many_reaches_the_other_members_with_one_multicast_datagram",
        SETUP,
    ) {
        eprintln!("skipped: multicast on loopback is not available here, and {why}");
    }
}

#[tokio::test]
async fn a_group_address_must_be_multicast_and_the_channel_ipv4() {
    let nodes = udp_mesh(&[NodeId(1)]).await;
    let not_a_group = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7400);
    let err = nodes
        .into_iter()
        .next()
        .unwrap()
        .with_multicast(MulticastConfig::new(
            not_a_group,
            Ipv4Addr::LOCALHOST,
            [NodeId(1)],
        ))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let v6 = UdpChannel::bind(NodeId(1), "[::1]:0".parse().unwrap(), Default::default()).await;
    if let Ok(v6) = v6 {
        let err = v6
            .with_multicast(MulticastConfig::new(
                private_group(),
                Ipv4Addr::LOCALHOST,
                [NodeId(1)],
            ))
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    }
}

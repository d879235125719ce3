//! Conformance suites for edge-trait implementations (feature `testing`).
//!
//! A transport is correct for the protocols only if it keeps the promises of
//! the [`Channel`] contract. This module states those promises as checks that
//! any implementation runs against itself, the way openraft exports its
//! storage suite and chitchat runs one transport suite against UDP and memory:
//!
//! ```
//! use async_trait::async_trait;
//! use ft_core::testing::{channel_conformance, ChannelFactory};
//! use ft_core::{Channel, MemNetwork, NodeId};
//!
//! struct Mem;
//!
//! #[async_trait]
//! impl ChannelFactory for Mem {
//!     async fn make(&mut self, nodes: &[NodeId]) -> Vec<Box<dyn Channel>> {
//!         let net = MemNetwork::new(64);
//!         nodes.iter().map(|&n| Box::new(net.join(n)) as Box<dyn Channel>).collect()
//!     }
//! }
//!
//! futures::executor::block_on(channel_conformance(Mem));
//! ```
//!
//! The suite uses only `futures`, so it runs under whatever executor the
//! implementation needs (a UDP channel runs it inside `#[tokio::test]`).
//!
//! # What the suite assumes
//!
//! The network under test is benign: at the scale of these checks (tens of
//! datagrams, on loopback or in memory) nothing is lost or duplicated. A
//! channel that injects faults on purpose should run the suite with its
//! faults off. Each receiver must be able to queue at least
//! [`MIN_QUEUE`] datagrams, since the checks send that many before reading.
//!
//! Every check has a watchdog of [`CHECK_TIMEOUT`]: a datagram lost or a
//! receiver never woken fails the check by name instead of hanging the test.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::{Either, join_all, select};

use crate::channel::{Channel, ChannelError};
use crate::id::NodeId;

/// How long one check may take before it fails as hung, unless the factory
/// says otherwise ([`ChannelFactory::check_timeout`]).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The fewest datagrams a receiver must be able to queue unread for the
/// suite to pass.
pub const MIN_QUEUE: usize = 20;

/// The smallest [`max_datagram`](Channel::max_datagram) the suite works
/// with; every datagram it sends fits, except where it probes the limit.
pub const MIN_DATAGRAM: usize = 16;

/// Builds fresh channels for each conformance check.
#[async_trait]
pub trait ChannelFactory: Send {
    /// Returns one connected channel per id in `nodes`, in the same order,
    /// each able to send to every other.
    ///
    /// Called once per check, possibly with ids used before: each call must
    /// build a fresh set, independent of the channels of earlier calls (which
    /// are dropped by then).
    async fn make(&mut self, nodes: &[NodeId]) -> Vec<Box<dyn Channel>>;

    /// How long one check may take before it fails as hung. A transport
    /// that is slow to set up may need more than the default.
    fn check_timeout(&self) -> Duration {
        CHECK_TIMEOUT
    }
}

/// Runs every check of the suite, in order, and panics naming the first one
/// that fails.
pub async fn channel_conformance<F: ChannelFactory>(mut factory: F) {
    boxed_channel_is_usable(&mut factory).await;
    datagram_arrives_intact(&mut factory).await;
    boundaries_are_preserved(&mut factory).await;
    max_datagram_is_enforced(&mut factory).await;
    send_to_self(&mut factory).await;
    concurrent_senders_all_arrive(&mut factory).await;
    recv_is_cancel_safe(&mut factory).await;
    unknown_destination_is_unreachable(&mut factory).await;
    send_batch_is_send_by_send(&mut factory).await;
    send_to_many_reaches_each(&mut factory).await;
    send_never_waits_for_a_peer(&mut factory).await;
}

/// Fails the check `$check` with a message naming it.
macro_rules! ensure {
    ($check:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("channel conformance check `{}` failed: {}", $check, format_args!($($msg)+));
        }
    };
}

/// Makes the channels of one check and checks the factory kept its promise.
async fn make<F: ChannelFactory>(
    check: &str,
    factory: &mut F,
    nodes: &[NodeId],
) -> Vec<Box<dyn Channel>> {
    let channels = factory.make(nodes).await;
    ensure!(
        check,
        channels.len() == nodes.len(),
        "the factory made {} channels for {} nodes",
        channels.len(),
        nodes.len()
    );
    for (channel, &node) in channels.iter().zip(nodes) {
        ensure!(
            check,
            channel.max_datagram() >= MIN_DATAGRAM,
            "max_datagram() of {node} is {}, below the suite's minimum of {MIN_DATAGRAM}",
            channel.max_datagram()
        );
        ensure!(
            check,
            channel.local() == node,
            "the channel made for {node} says it is {}",
            channel.local()
        );
    }
    channels
}

/// Sends, failing the check on any error.
async fn send_ok(check: &str, from: &dyn Channel, to: NodeId, datagram: Bytes) {
    let len = datagram.len();
    if let Err(e) = from.send(to, datagram).await {
        panic!(
            "channel conformance check `{check}` failed: {} could not send {len} bytes to {to}: {e}",
            from.local()
        );
    }
}

/// Receives, failing the check on any error.
async fn recv_ok(check: &str, on: &dyn Channel) -> (NodeId, Bytes) {
    match on.recv().await {
        Ok(got) => got,
        Err(e) => panic!(
            "channel conformance check `{check}` failed: recv on {} returned {e}",
            on.local()
        ),
    }
}

/// A datagram whose bytes say which sender and sequence number made it, so a
/// received one can be matched to what was sent.
fn tagged(sender: NodeId, seq: usize, len: usize) -> Bytes {
    let seed = (sender.get() as usize)
        .wrapping_mul(131)
        .wrapping_add(seq.wrapping_mul(31));
    (0..len)
        .map(|i| (seed.wrapping_add(i * 7) % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// Runs `check` under a watchdog thread that fails it after `limit`.
///
/// A thread rather than a runtime timer keeps the suite executor-agnostic;
/// it waits on a channel with a timeout so that it exits as soon as the check
/// finishes instead of sleeping out the full timeout.
async fn watched<Fut: Future<Output = ()>>(name: &str, limit: Duration, check: Fut) {
    let (fire, fired) = oneshot::channel::<()>();
    let (done, finished) = std_mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(std_mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
            let _ = fire.send(());
        }
    });
    match select(pin!(check), fired).await {
        Either::Left(((), _)) => {
            drop(done);
            let _ = watchdog.join();
        }
        Either::Right(_) => panic!(
            "channel conformance check `{name}` failed: timed out after {limit:?} \
             (a datagram was lost, or a pending recv was never woken)"
        ),
    }
}

/// `Box<dyn Channel>` works through generic code, and each channel reports
/// the id it was made for and a usable datagram limit.
pub async fn boxed_channel_is_usable<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "boxed_channel_is_usable";
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let channels = make(CHECK, factory, &[NodeId(1), NodeId(2)]).await;

        // Generic code that knows only `C: Channel` must accept a box.
        async fn ping<C: Channel + ?Sized>(c: &C, to: NodeId) -> Result<(), ChannelError> {
            c.send(to, Bytes::from_static(b"boxed")).await
        }
        let sent = ping(&channels[0], NodeId(2)).await;
        ensure!(
            CHECK,
            sent.is_ok(),
            "send through Box<dyn Channel> failed: {sent:?}"
        );
        let got = recv_ok(CHECK, &*channels[1]).await;
        ensure!(
            CHECK,
            got == (NodeId(1), Bytes::from_static(b"boxed")),
            "expected (n1, b\"boxed\"), got {got:?}"
        );
    })
    .await;
}

/// One datagram arrives with the right sender and exactly the bytes sent.
pub async fn datagram_arrives_intact<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "datagram_arrives_intact";
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let channels = make(CHECK, factory, &[NodeId(1), NodeId(2)]).await;
        let payload = tagged(NodeId(1), 0, channels[0].max_datagram().min(300));
        send_ok(CHECK, &*channels[0], NodeId(2), payload.clone()).await;
        let (from, got) = recv_ok(CHECK, &*channels[1]).await;
        ensure!(
            CHECK,
            from == NodeId(1),
            "datagram from n1 arrived as from {from}"
        );
        ensure!(
            CHECK,
            got == payload,
            "sent {} bytes, received {} bytes that differ",
            payload.len(),
            got.len()
        );
        // And the other way, so a channel that only works one way is caught.
        send_ok(
            CHECK,
            &*channels[1],
            NodeId(1),
            Bytes::from_static(b"reply"),
        )
        .await;
        let back = recv_ok(CHECK, &*channels[0]).await;
        ensure!(
            CHECK,
            back == (NodeId(2), Bytes::from_static(b"reply")),
            "reply arrived as {back:?}"
        );
    })
    .await;
}

/// 100 datagrams of different sizes (including empty) each arrive exactly as
/// sent: none merged, split, truncated or padded. Order is not checked, since
/// a datagram channel may reorder.
pub async fn boundaries_are_preserved<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "boundaries_are_preserved";
    const COUNT: usize = 100;
    // Sent in batches, each read before the next is sent, so a loopback UDP
    // socket's default receive buffer is never what fails the check.
    const BATCH: usize = 10;
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let channels = make(CHECK, factory, &[NodeId(1), NodeId(2)]).await;
        let largest = channels[0].max_datagram().min(1200);
        let sizes: Vec<usize> = (0..COUNT)
            .map(|i| (i * 37 + i / 3) % (largest + 1))
            .collect();
        let mut expected: BTreeMap<Bytes, usize> = BTreeMap::new();
        for start in (0..COUNT).step_by(BATCH) {
            for (seq, &len) in sizes.iter().enumerate().skip(start).take(BATCH) {
                let d = tagged(NodeId(1), seq, len);
                *expected.entry(d.clone()).or_default() += 1;
                send_ok(CHECK, &*channels[0], NodeId(2), d).await;
            }
            for _ in 0..BATCH.min(COUNT - start) {
                let (from, got) = recv_ok(CHECK, &*channels[1]).await;
                ensure!(CHECK, from == NodeId(1), "datagram arrived as from {from}");
                match expected.get_mut(&got) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => panic!(
                        "channel conformance check `{CHECK}` failed: received a datagram of {} \
                         bytes that matches none sent (merged, split or altered) or arrived twice",
                        got.len()
                    ),
                }
            }
        }
        ensure!(
            CHECK,
            expected.values().all(|&n| n == 0),
            "some datagrams never arrived"
        );
    })
    .await;
}

/// A datagram of exactly `max_datagram()` bytes is carried intact; one byte
/// more is refused with [`ChannelError::TooLarge`].
pub async fn max_datagram_is_enforced<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "max_datagram_is_enforced";
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let channels = make(CHECK, factory, &[NodeId(1), NodeId(2)]).await;
        let max = channels[0].max_datagram();
        let biggest = tagged(NodeId(1), 1, max);
        send_ok(CHECK, &*channels[0], NodeId(2), biggest.clone()).await;
        let (from, got) = recv_ok(CHECK, &*channels[1]).await;
        ensure!(
            CHECK,
            from == NodeId(1) && got == biggest,
            "a datagram of max_datagram() = {max} bytes arrived altered ({} bytes)",
            got.len()
        );
        let over = channels[0]
            .send(NodeId(2), Bytes::from(vec![0u8; max + 1]))
            .await;
        ensure!(
            CHECK,
            over == Err(ChannelError::TooLarge { len: max + 1, max }),
            "sending max_datagram() + 1 = {} bytes returned {over:?}, expected TooLarge {{ len: {}, max: {max} }}",
            max + 1,
            max + 1
        );
    })
    .await;
}

/// Sending to oneself works: the datagram comes back to one's own `recv`
/// with one's own id as sender. Protocols do send to themselves (an RPC
/// node calling its own server, a multicast sender in its own group).
pub async fn send_to_self<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "send_to_self";
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let channels = make(CHECK, factory, &[NodeId(1), NodeId(2)]).await;
        let me = &*channels[0];
        let sent = me.send(NodeId(1), Bytes::from_static(b"self")).await;
        ensure!(
            CHECK,
            sent.is_ok(),
            "send to oneself returned {sent:?}; a channel must deliver to its own node"
        );
        let got = recv_ok(CHECK, me).await;
        ensure!(
            CHECK,
            got == (NodeId(1), Bytes::from_static(b"self")),
            "a datagram sent to oneself came back as {got:?}"
        );
    })
    .await;
}

/// A node the channel was never told about: `send` fails with
/// [`ChannelError::Unreachable`] naming it, rather than dropping the
/// datagram as if the network had lost it (which would hide a
/// misconfigured address book), and the channel goes on working.
pub async fn unknown_destination_is_unreachable<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "unknown_destination_is_unreachable";
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let channels = make(CHECK, factory, &[NodeId(1), NodeId(2)]).await;
        let stranger = NodeId(0xdead_beef);
        let sent = channels[0]
            .send(stranger, Bytes::from_static(b"anyone?"))
            .await;
        ensure!(
            CHECK,
            sent == Err(ChannelError::Unreachable(stranger)),
            "send to {stranger}, which no channel was made for, returned {sent:?}; \
             expected Err(Unreachable({stranger}))"
        );
        send_ok(
            CHECK,
            &*channels[0],
            NodeId(2),
            Bytes::from_static(b"still"),
        )
        .await;
        let got = recv_ok(CHECK, &*channels[1]).await;
        ensure!(
            CHECK,
            got == (NodeId(1), Bytes::from_static(b"still")),
            "after a send to an unknown node, the next datagram arrived as {got:?}"
        );
    })
    .await;
}

/// Receives `count` datagrams on `on` and returns them grouped by sender,
/// in arrival order.
async fn recv_many(check: &str, on: &dyn Channel, count: usize) -> Vec<(NodeId, Bytes)> {
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        got.push(recv_ok(check, on).await);
    }
    got
}

/// [`send_batch`](Channel::send_batch) behaves as the same `send`s one by
/// one: datagrams to two peers and to oneself arrive intact, each peer's in
/// batch order; a datagram to an unknown node and one over the limit are
/// refused alone, by position, and the rest still go; an empty batch is
/// fine.
pub async fn send_batch_is_send_by_send<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "send_batch_is_send_by_send";
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        let channels = make(CHECK, factory, &nodes).await;
        let max = channels[0].max_datagram();
        let stranger = NodeId(0xdead_beef);
        let size = max.min(200);
        let mut batch = Vec::new();
        let mut expected: BTreeMap<NodeId, Vec<Bytes>> = BTreeMap::new();
        for seq in 0..12 {
            let to = nodes[seq % 3];
            let d = tagged(to, seq, size - seq % 7);
            expected.entry(to).or_default().push(d.clone());
            batch.push((to, d));
            if seq == 4 {
                batch.push((stranger, Bytes::from_static(b"nobody")));
            }
            if seq == 8 {
                batch.push((NodeId(2), Bytes::from(vec![7u8; max + 1])));
            }
        }
        let result = channels[0].send_batch(&batch).await;
        let expected_refusals = vec![
            (5, ChannelError::Unreachable(stranger)),
            (10, ChannelError::TooLarge { len: max + 1, max }),
        ];
        ensure!(
            CHECK,
            result.as_ref().err().map(|e| &e.failed) == Some(&expected_refusals),
            "a batch with an unknown destination at position 5 and an oversized datagram at \
             position 10 returned {result:?}; expected exactly those two refusals"
        );
        for (channel, node) in channels.iter().zip(nodes) {
            let want = &expected[&node];
            let got = recv_many(CHECK, &**channel, want.len()).await;
            for (i, (from, d)) in got.iter().enumerate() {
                ensure!(CHECK, *from == NodeId(1), "a datagram of the batch arrived at {node} as from {from}");
                ensure!(
                    CHECK,
                    *d == want[i],
                    "{node}'s datagrams did not arrive intact and in batch order (position {i} of {})",
                    want.len()
                );
            }
        }
        let empty = channels[0].send_batch(&[]).await;
        ensure!(CHECK, empty.is_ok(), "an empty batch returned {empty:?}");
    })
    .await;
}

/// [`send_to_many`](Channel::send_to_many) delivers one copy to every node
/// listed, oneself included, and refuses an unknown node by its position
/// in the list while still reaching the others.
pub async fn send_to_many_reaches_each<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "send_to_many_reaches_each";
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        let channels = make(CHECK, factory, &nodes).await;
        let d = tagged(NodeId(1), 77, channels[0].max_datagram().min(300));
        let sent = channels[0]
            .send_to_many(&[NodeId(2), NodeId(3), NodeId(1)], d.clone())
            .await;
        ensure!(
            CHECK,
            sent.is_ok(),
            "send_to_many to every node returned {sent:?}"
        );
        for channel in &channels {
            let got = recv_ok(CHECK, &**channel).await;
            ensure!(
                CHECK,
                got == (NodeId(1), d.clone()),
                "{} got {} bytes from {} instead of the datagram sent to many",
                channel.local(),
                got.1.len(),
                got.0
            );
        }
        let stranger = NodeId(0xdead_beef);
        let partial = channels[0]
            .send_to_many(&[NodeId(2), stranger, NodeId(3)], d.clone())
            .await;
        ensure!(
            CHECK,
            partial.as_ref().err().map(|e| &e.failed)
                == Some(&vec![(1, ChannelError::Unreachable(stranger))]),
            "send_to_many with an unknown node at position 1 returned {partial:?}"
        );
        for channel in &channels[1..] {
            let got = recv_ok(CHECK, &**channel).await;
            ensure!(
                CHECK,
                got == (NodeId(1), d.clone()),
                "after a partial refusal, {} got {got:?}",
                channel.local()
            );
        }
    })
    .await;
}

/// How many bytes the peer that never reads is sent, in all: more than any
/// sane transport buffers for one peer (queues plus socket buffers), so a
/// `send` that waits for room would wait for ever.
pub const FLOOD_BYTES: usize = 32 << 20;

/// `send` never waits for a remote peer: [`FLOOD_BYTES`] sent to a peer
/// that never reads all return (dropped datagrams are `Ok`: the network
/// lost them), and then the same to a peer whose channel is gone (any
/// result but [`ChannelError::Closed`], which would mean *this* channel is
/// closed). Meanwhile a third node still gets its datagrams.
pub async fn send_never_waits_for_a_peer<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "send_never_waits_for_a_peer";
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let mut channels = make(CHECK, factory, &[NodeId(1), NodeId(2), NodeId(3)]).await;
        let size = channels[0].max_datagram().min(16 << 10);
        let count = (FLOOD_BYTES / size).clamp(2_000, 200_000);
        let d = Bytes::from(vec![0x5a; size]);
        for _ in 0..count {
            send_ok(CHECK, &*channels[0], NodeId(2), d.clone()).await;
        }
        send_ok(
            CHECK,
            &*channels[0],
            NodeId(3),
            Bytes::from_static(b"third"),
        )
        .await;
        let got = recv_ok(CHECK, &*channels[2]).await;
        ensure!(
            CHECK,
            got == (NodeId(1), Bytes::from_static(b"third")),
            "while n2 was flooded, n3 got {got:?}"
        );
        // n2 goes away: its channel is dropped, as when a process dies.
        drop(channels.remove(1));
        for _ in 0..count.min(5_000) {
            let sent = channels[0].send(NodeId(2), d.clone()).await;
            ensure!(
                CHECK,
                sent != Err(ChannelError::Closed),
                "a send to a peer that went away said this channel is closed"
            );
        }
    })
    .await;
}

/// Several channels sending to one receiver at the same time: every datagram
/// arrives once, with its sender's id.
pub async fn concurrent_senders_all_arrive<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "concurrent_senders_all_arrive";
    const SENDERS: u64 = 4;
    const EACH: usize = 5;
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let nodes: Vec<NodeId> = (1..=SENDERS + 1).map(NodeId).collect();
        let channels = make(CHECK, factory, &nodes).await;
        let (receiver, senders) = channels.split_first().expect("at least two channels");
        let mut expected: BTreeMap<(NodeId, Bytes), usize> = BTreeMap::new();
        for s in senders {
            for seq in 0..EACH {
                *expected
                    .entry((s.local(), tagged(s.local(), seq, MIN_DATAGRAM - seq)))
                    .or_default() += 1;
            }
        }
        let to = receiver.local();
        // Interleaved on one task: the sends of all senders are in progress
        // together, and the receiver reads while they are.
        let sending = join_all(senders.iter().map(|s| async move {
            for seq in 0..EACH {
                send_ok(CHECK, &**s, to, tagged(s.local(), seq, MIN_DATAGRAM - seq)).await;
            }
        }));
        let receiving = async {
            let mut got = Vec::new();
            for _ in 0..SENDERS as usize * EACH {
                got.push(recv_ok(CHECK, &**receiver).await);
            }
            got
        };
        let (_, got) = futures::future::join(sending, receiving).await;
        for (from, d) in got {
            match expected.get_mut(&(from, d.clone())) {
                Some(n) if *n > 0 => *n -= 1,
                _ => panic!(
                    "channel conformance check `{CHECK}` failed: received {} bytes from {from} \
                     that it did not send, or twice",
                    d.len()
                ),
            }
        }
        ensure!(
            CHECK,
            expected.values().all(|&n| n == 0),
            "some datagrams never arrived"
        );
    })
    .await;
}

/// Dropping a pending `recv` loses nothing: neither one dropped before the
/// datagram is sent, nor one dropped after it was sent (and possibly woken)
/// but before it was polled again, nor one polled again after the send and
/// then dropped while still pending.
pub async fn recv_is_cancel_safe<F: ChannelFactory>(factory: &mut F) {
    const CHECK: &str = "recv_is_cancel_safe";
    let limit = factory.check_timeout();
    watched(CHECK, limit, async {
        let channels = make(CHECK, factory, &[NodeId(1), NodeId(2)]).await;
        let (tx, rx) = (&*channels[0], &*channels[1]);

        // Dropped before anything is sent.
        let early = rx.recv().now_or_never();
        ensure!(CHECK, early.is_none(), "recv on an empty channel returned {early:?}");
        send_ok(CHECK, tx, NodeId(2), Bytes::from_static(b"first")).await;
        let got = recv_ok(CHECK, rx).await;
        ensure!(
            CHECK,
            got == (NodeId(1), Bytes::from_static(b"first")),
            "after a cancelled recv, the next recv got {got:?}"
        );

        // Pending, then the datagram is sent, then dropped without being
        // polled again: the datagram must still be there for the next recv.
        let mut pending = rx.recv();
        ensure!(
            CHECK,
            (&mut pending).now_or_never().is_none(),
            "recv on an empty channel completed"
        );
        send_ok(CHECK, tx, NodeId(2), Bytes::from_static(b"second")).await;
        drop(pending);
        let got = recv_ok(CHECK, rx).await;
        ensure!(
            CHECK,
            got == (NodeId(1), Bytes::from_static(b"second")),
            "a datagram sent while a recv was pending was lost when that recv was dropped; next recv got {got:?}"
        );

        // Pending, then the datagram is sent, then polled once more: either
        // that poll returns the datagram, or the datagram is still there
        // for the next recv after the future is dropped. (A `recv` that
        // takes the datagram and then awaits something else fails here.)
        let mut pending = rx.recv();
        ensure!(
            CHECK,
            (&mut pending).now_or_never().is_none(),
            "recv on an empty channel completed"
        );
        send_ok(CHECK, tx, NodeId(2), Bytes::from_static(b"third")).await;
        let got = match (&mut pending).now_or_never() {
            Some(Ok(got)) => got,
            Some(Err(e)) => panic!(
                "channel conformance check `{CHECK}` failed: a pending recv returned {e}"
            ),
            None => {
                drop(pending);
                recv_ok(CHECK, rx).await
            }
        };
        ensure!(
            CHECK,
            got == (NodeId(1), Bytes::from_static(b"third")),
            "expected the third datagram, got {got:?}"
        );
    })
    .await;
}

// Not under loom: these run channels outside any `loom::model`.
#[cfg(all(test, not(ft_loom)))]
mod tests {
    //! The suite must catch broken channels, each in the check named for
    //! what they break: a suite that passes everything proves nothing.

    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use futures::executor::block_on;

    use super::*;
    use crate::channel::BatchError;
    use crate::mem::{MemChannel, MemNetwork};

    #[derive(Clone, Copy)]
    enum Fault {
        /// Reports every datagram as coming from n42.
        WrongSender,
        /// Claims a limit one byte lower than it enforces.
        LimitNotEnforced,
        /// Cuts datagrams to 100 bytes.
        Truncates,
        /// Loses every fifth datagram.
        Lossy,
        /// Takes the datagram, then awaits once more before returning it.
        NotCancelSafe,
        /// Drops datagrams to unknown nodes as if the network had lost them.
        DropsUnknown,
        /// Refuses to send to its own node.
        NoSelf,
        /// A batch stops at its first refusal: the rest is never sent.
        BatchStopsAtFirstRefusal,
        /// Sends a batch's datagrams last first.
        BatchReversed,
        /// Waits, for ever, for the receiver to read once 64 datagrams are
        /// unread: a bounded queue that blocks instead of dropping.
        WaitsForThePeer,
    }

    struct Faulty {
        inner: MemChannel,
        fault: Fault,
        sent: AtomicUsize,
        /// Datagrams sent on the network and not yet received, shared.
        unread: Arc<AtomicUsize>,
    }

    /// Pending once, then ready: the await point a careless `recv` adds.
    struct YieldOnce(bool);

    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[async_trait]
    impl Channel for Faulty {
        fn local(&self) -> NodeId {
            self.inner.local()
        }
        fn max_datagram(&self) -> usize {
            match self.fault {
                Fault::LimitNotEnforced => self.inner.max_datagram() - 1,
                _ => self.inner.max_datagram(),
            }
        }
        async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
            let n = self.sent.fetch_add(1, Ordering::Relaxed);
            match self.fault {
                Fault::Truncates if datagram.len() > 100 => {
                    self.inner.send(to, datagram.slice(..100)).await
                }
                Fault::Lossy if n % 5 == 4 => Ok(()),
                Fault::DropsUnknown => match self.inner.send(to, datagram).await {
                    Err(ChannelError::Unreachable(_)) => Ok(()),
                    other => other,
                },
                Fault::NoSelf if to == self.local() => Err(ChannelError::Unreachable(to)),
                Fault::WaitsForThePeer => {
                    if self.unread.load(Ordering::Relaxed) >= 64 {
                        futures::future::pending::<()>().await;
                    }
                    self.unread.fetch_add(1, Ordering::Relaxed);
                    self.inner.send(to, datagram).await
                }
                _ => self.inner.send(to, datagram).await,
            }
        }
        async fn send_batch(&self, batch: &[(NodeId, Bytes)]) -> Result<(), BatchError> {
            match self.fault {
                Fault::BatchStopsAtFirstRefusal => {
                    for (i, (to, d)) in batch.iter().enumerate() {
                        if let Err(e) = self.send(*to, d.clone()).await {
                            return Err(BatchError {
                                failed: vec![(i, e)],
                            });
                        }
                    }
                    Ok(())
                }
                Fault::BatchReversed => {
                    let mut failed = Vec::new();
                    for (i, (to, d)) in batch.iter().enumerate().rev() {
                        if let Err(e) = self.send(*to, d.clone()).await {
                            failed.push((i, e));
                        }
                    }
                    BatchError::result(failed)
                }
                _ => {
                    let mut failed = Vec::new();
                    for (i, (to, d)) in batch.iter().enumerate() {
                        if let Err(e) = self.send(*to, d.clone()).await {
                            failed.push((i, e));
                        }
                    }
                    BatchError::result(failed)
                }
            }
        }
        async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
            let (from, d) = self.inner.recv().await?;
            let _ = self
                .unread
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            match self.fault {
                Fault::WrongSender => Ok((NodeId(42), d)),
                Fault::NotCancelSafe => {
                    YieldOnce(false).await;
                    Ok((from, d))
                }
                _ => Ok((from, d)),
            }
        }
    }

    struct FaultyFactory(Fault);

    #[async_trait]
    impl ChannelFactory for FaultyFactory {
        async fn make(&mut self, nodes: &[NodeId]) -> Vec<Box<dyn Channel>> {
            let net = MemNetwork::with_max_datagram(64, 1500);
            let unread = Arc::new(AtomicUsize::new(0));
            nodes
                .iter()
                .map(|&n| {
                    Box::new(Faulty {
                        inner: net.join(n),
                        fault: self.0,
                        sent: AtomicUsize::new(0),
                        unread: Arc::clone(&unread),
                    }) as Box<dyn Channel>
                })
                .collect()
        }
        fn check_timeout(&self) -> Duration {
            // Short, since some of these faults are only seen as a hang.
            Duration::from_millis(300)
        }
    }

    /// Runs the whole suite against `fault` and returns the panic message.
    fn failure_of(fault: Fault) -> String {
        let result = catch_unwind(AssertUnwindSafe(|| {
            block_on(channel_conformance(FaultyFactory(fault)))
        }));
        let payload = result.expect_err("the suite passed a broken channel");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn each_fault_fails_the_check_named_for_it() {
        let cases = [
            (Fault::WrongSender, "boxed_channel_is_usable"),
            (Fault::Truncates, "datagram_arrives_intact"),
            (Fault::LimitNotEnforced, "max_datagram_is_enforced"),
            (Fault::Lossy, "boundaries_are_preserved"),
            (Fault::NotCancelSafe, "recv_is_cancel_safe"),
            (Fault::NoSelf, "send_to_self"),
            (Fault::DropsUnknown, "unknown_destination_is_unreachable"),
            (
                Fault::BatchStopsAtFirstRefusal,
                "send_batch_is_send_by_send",
            ),
            (Fault::BatchReversed, "send_batch_is_send_by_send"),
            (Fault::WaitsForThePeer, "send_never_waits_for_a_peer"),
        ];
        for (fault, check) in cases {
            let message = failure_of(fault);
            assert!(
                message.contains(&format!("check `{check}` failed")),
                "expected `{check}` to fail, got: {message}"
            );
        }
    }

    #[test]
    fn a_truncating_channel_fails_the_boundary_check_on_its_own() {
        let result = catch_unwind(AssertUnwindSafe(|| {
            block_on(boundaries_are_preserved(&mut FaultyFactory(
                Fault::Truncates,
            )))
        }));
        assert!(result.is_err());
    }
}

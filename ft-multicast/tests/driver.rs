//! `Ordered` nodes on ft-core's driver over `MemNetwork`, on tokio: each
//! multicast leaves as one `send_to_many`, and every member delivers
//! every message, each sender's in order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::driver::driver;
use ft_core::{Clock, DriverConfig, Incarnation, MemNetwork, NodeId, Recover, RecoveryContext};
use ft_multicast::{GroupConfig, GroupId, McastConfig, Order, Ordered, OrderedEvent, OrderedInput};
use ft_storage::MemLog;

const G: GroupId = GroupId(3);

struct TokioClock;

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
    async fn sleep_until(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

#[tokio::test]
async fn every_member_delivers_every_message_through_the_driver() {
    let n = 3u64;
    let per_node = 50u64;
    let net = MemNetwork::new(1024);
    let config = McastConfig::new(vec![
        GroupConfig::new(G, (0..n).map(NodeId)).with_history(8),
    ]);
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let core = Ordered::recover(
            &config,
            RecoveryContext {
                node: NodeId(i),
                incarnation: Incarnation::FIRST,
                records: Vec::new(),
                seed: i,
                now: Instant::now(),
            },
        )
        .unwrap();
        let (handle, run) = driver(
            core,
            net.join(NodeId(i)),
            TokioClock,
            MemLog::new(),
            DriverConfig::default(),
        );
        tasks.push(tokio::spawn(run));
        handles.push(handle);
    }
    let mut delivered: Vec<BTreeMap<NodeId, Vec<u64>>> = vec![BTreeMap::new(); n as usize];
    let (mut sent, mut refused) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Each node sends its next message whenever its ring has room (a
    // refusal waits for `Ready`), and everyone collects deliveries.
    let mut next = vec![0u64; n as usize];
    for (i, h) in handles.iter().enumerate() {
        h.input(OrderedInput::Send {
            group: G,
            token: 0,
            payload: Bytes::from(vec![i as u8]),
            order: Order::Causal,
        })
        .unwrap();
        next[i] = 1;
    }
    // Until every delivery and every `Sent` is read (a node's last `Sent`
    // may come after the last delivery anywhere).
    while sent < n * per_node
        || delivered
            .iter()
            .any(|d| d.values().map(Vec::len).sum::<usize>() < (n * per_node) as usize)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries: {delivered:?}"
        );
        for (i, h) in handles.iter_mut().enumerate() {
            let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(5), h.next_event()).await
            else {
                continue;
            };
            // One send at a time per node: the next after `Sent`, the same
            // again after a refusal once `Ready` says there is room.
            let send = match event {
                OrderedEvent::Delivered { from, seq, .. } => {
                    delivered[i].entry(from).or_default().push(seq);
                    false
                }
                OrderedEvent::Core(ft_multicast::McastEvent::Sent { .. }) => {
                    sent += 1;
                    true
                }
                OrderedEvent::Core(ft_multicast::McastEvent::Refused { .. }) => {
                    refused += 1;
                    next[i] -= 1;
                    false
                }
                OrderedEvent::Core(ft_multicast::McastEvent::Ready { .. }) => true,
                _ => false,
            };
            if send && next[i] < per_node {
                h.input(OrderedInput::Send {
                    group: G,
                    token: next[i],
                    payload: Bytes::from(vec![i as u8]),
                    order: Order::Causal,
                })
                .unwrap();
                next[i] += 1;
            }
        }
    }
    assert_eq!(sent, n * per_node);
    eprintln!("{sent} sent, {refused} refused for a full ring and sent again after Ready");
    for d in &delivered {
        for seqs in d.values() {
            assert_eq!(*seqs, (1..=per_node).collect::<Vec<_>>());
        }
    }
    // The multicasts went out as multicasts.
    for h in &handles {
        let stats = h.stats();
        assert!(stats.multicasts >= per_node, "{stats:?}");
        h.shutdown();
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

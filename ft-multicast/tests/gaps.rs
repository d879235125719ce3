//! ACK mode: a receiver asks for each gap as soon as it sees it, also when
//! an earlier gap was repaired only a moment before.
//!
//! Found by the real-network bench (`benches/net.rs`): at 2 000 messages/s
//! with 1% loss, the NACK timer of a repaired gap stayed set, so a gap that
//! opened within the next `nack_interval` (40 ms) was asked for only when
//! that timer fired, and every later message waited behind it (p90
//! latency 16–21 ms instead of about 0.2 ms).

use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Output, Protocol, Recover, RecoveryContext};
use ft_multicast::{GroupConfig, GroupId, McastConfig, McastInput, McastMessage, Multicast};

const G: GroupId = GroupId(1);
const SENDER: NodeId = NodeId(1);

fn node(id: NodeId, now: Instant) -> Multicast {
    let config = McastConfig::new(vec![GroupConfig::new(G, [NodeId(1), NodeId(2)])]);
    let ctx = RecoveryContext {
        node: id,
        incarnation: Incarnation::FIRST,
        records: Vec::new(),
        seed: id.0,
        now,
    };
    Multicast::recover(&config, ctx).unwrap()
}

/// The NACKs `to` sends while it takes `msg` from the sender.
fn nacks_on(to: &mut Multicast, now: Instant, msg: &McastMessage) -> Vec<Vec<(u64, u64)>> {
    to.handle_message(now, SENDER, msg.clone());
    std::iter::from_fn(|| to.poll_output())
        .filter_map(|out| match out {
            Output::Send {
                msg: McastMessage::Nack { ranges, .. },
                ..
            } => Some(ranges),
            _ => None,
        })
        .collect()
}

#[test]
fn a_gap_soon_after_a_repaired_one_is_asked_for_at_once() {
    let t0 = Instant::now();
    let mut sender = node(SENDER, t0);
    let mut receiver = node(NodeId(2), t0);
    // Messages 1..=6 as the sender multicasts them.
    let mut data = Vec::new();
    for token in 1..=6 {
        sender.handle_input(
            t0,
            McastInput::Send {
                group: G,
                token,
                payload: Bytes::from(vec![token as u8]),
            },
        );
        while let Some(out) = sender.poll_output() {
            if let Output::Multicast { msg, .. } = out {
                data.push(msg);
            }
        }
    }
    assert_eq!(data.len(), 6, "one multicast per send");
    let seq = |n: usize| &data[n - 1];

    // Message 2 lost: asked for when 3 arrives, and repaired.
    let ms = |n| t0 + Duration::from_millis(n);
    assert!(nacks_on(&mut receiver, ms(0), seq(1)).is_empty());
    assert_eq!(nacks_on(&mut receiver, ms(1), seq(3)), [vec![(2, 2)]]);
    assert!(nacks_on(&mut receiver, ms(2), seq(2)).is_empty());
    assert_eq!(receiver.next_from(G, SENDER), 4, "2 and 3 delivered");

    // Message 5 lost 2 ms later, well within the NACK interval of the
    // first gap: asked for when 6 arrives, not when that interval ends.
    assert!(nacks_on(&mut receiver, ms(3), seq(4)).is_empty());
    assert_eq!(nacks_on(&mut receiver, ms(4), seq(6)), [vec![(5, 5)]]);
}

//! The reliable-multicast decoder against arbitrary bytes: never panics,
//! and whatever it accepts re-encodes to the bytes it came from. Accepted
//! messages are then fed to a core, from a member and from a stranger,
//! which must not panic on them either. The same bytes are read as the
//! ordering layer's header (inside a core payload) and as a sequencer's
//! record, and fed to an `Ordered` node as a message's payload, from the
//! sequencer and from another member.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Protocol, Recover, RecoveryContext, Wire};
use ft_multicast::header::{self, Header};
use ft_multicast::total::OrderRecord;
use ft_multicast::{
    Fec, Feedback, GroupConfig, GroupId, McastConfig, McastInput, McastMessage, McastTimer,
    Multicast, Order, Ordered, OrderedInput, Srm, Tree,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ordering(data);
    let Ok(msg) = McastMessage::from_bytes(Bytes::copy_from_slice(data)) else {
        return;
    };
    ordered(&msg);
    assert_eq!(&msg.to_bytes()[..], data);
    // Every feedback strategy, each on the same message, without and with
    // forward error correction (proactive, and on demand where it applies).
    for feedback in [
        Feedback::Ack,
        Feedback::Nack(Srm::default()),
        Feedback::Tree(Tree::default()),
    ] {
        for fec in [None, Some(Fec::proactive(2, 2)), Some(Fec::on_demand(2, 2))] {
            run(&msg, feedback.clone(), fec);
        }
    }
});

fn run(msg: &McastMessage, feedback: Feedback, fec: Option<Fec>) {
    let mut group = GroupConfig::new(GroupId(msg.group().0), [NodeId(0), NodeId(1), NodeId(2)])
        .with_history(4)
        .with_feedback(feedback);
    group.fec = fec;
    let now = Instant::now();
    let ctx = RecoveryContext {
        node: NodeId(0),
        incarnation: Incarnation(1),
        records: Vec::new(),
        seed: 0,
        now,
    };
    let mut core = Multicast::recover(&McastConfig::new(vec![group]), ctx).unwrap();
    core.handle_input(
        now,
        McastInput::Send {
            group: msg.group(),
            token: 0,
            payload: Bytes::from_static(b"x"),
        },
    );
    core.handle_message(now, NodeId(1), msg.clone());
    core.handle_message(now, NodeId(1), msg.clone());
    core.handle_message(now, NodeId(9), msg.clone());
    let later = now + Duration::from_secs(1);
    core.handle_timer(later, McastTimer::Announce(msg.group()));
    core.handle_timer(later, McastTimer::Nack(msg.group(), NodeId(1)));
    core.handle_timer(later, McastTimer::Ack(msg.group(), NodeId(1)));
    core.handle_timer(later, McastTimer::Request(msg.group(), NodeId(1)));
    core.handle_timer(later, McastTimer::Session(msg.group()));
    core.handle_timer(later, McastTimer::Tree(msg.group()));
    // Long after: silent parents and children.
    core.handle_timer(later + Duration::from_secs(5), McastTimer::Tree(msg.group()));
    core.handle_timer(later, McastTimer::FecFlush(msg.group()));
    for block in 0..3 {
        core.handle_timer(later, McastTimer::FecRepair(msg.group(), NodeId(0), block));
        core.handle_timer(later, McastTimer::FecRepair(msg.group(), NodeId(1), block));
    }
    while core.poll_output().is_some() {}
    assert!(core.held().pending_per_stream <= 4);
    assert!(core.held().recent <= 4 * 2);
    // Two streams' blocks within a window of 4 (at most 3 blocks of 2
    // messages and 2 parity packets each), the block being sent, and
    // answers.
    assert!(core.held().fec <= 2 * 3 * 4 + 2 + 16, "{:?}", core.held());
}

/// The ordering header and the sequencer's records against the bytes; an
/// `Ordered` member (and the sequencer) handed them as a payload.
fn ordering(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    match header::decode(bytes.clone()) {
        Ok(Header::Decision(d)) => {
            assert_eq!(header::decode(header::encode_decision(&d)).unwrap(), Header::Decision(d));
        }
        Ok(Header::Message { order, past, payload }) => {
            let again = header::encode_message(order, &past, &payload);
            assert_eq!(&again[..], data);
        }
        Err(_) => {}
    }
    let _ = ft_core::record::decode::<OrderRecord>(bytes.clone());
    // As a payload of the sequencer's stream and of another member's.
    for (me, from) in [(1, 0), (0, 1)] {
        let mut node = ordered_node(me);
        let now = Instant::now();
        let msg = McastMessage::Data {
            group: GroupId(1),
            life: Incarnation(0),
            seq: 1,
            base: 1,
            payload: bytes.clone(),
        };
        node.handle_message(now, NodeId(from), msg);
        node.handle_timer(now + Duration::from_secs(1), McastTimer::Order(GroupId(1)));
        while node.poll_output().is_some() {}
        assert!(node.held() <= 1);
    }
}

fn ordered_node(me: u64) -> Ordered {
    let group = GroupConfig::new(GroupId(1), [NodeId(0), NodeId(1), NodeId(2)]).with_history(4);
    let ctx = RecoveryContext {
        node: NodeId(me),
        incarnation: Incarnation(1),
        records: Vec::new(),
        seed: 0,
        now: Instant::now(),
    };
    Ordered::recover(&McastConfig::new(vec![group]), ctx).unwrap()
}

/// A decoded message handed to `Ordered` nodes (the sequencer, a member)
/// that have sent an agreed message: from a member and from a stranger.
fn ordered(msg: &McastMessage) {
    for me in [0, 1] {
        let mut node = ordered_node(me);
        let now = Instant::now();
        node.handle_input(
            now,
            OrderedInput::Send {
                group: GroupId(1),
                token: 0,
                payload: Bytes::from_static(b"x"),
                order: Order::Safe,
            },
        );
        for from in [2, 9] {
            node.handle_message(now, NodeId(from), msg.clone());
        }
        node.handle_timer(now + Duration::from_secs(1), McastTimer::Order(GroupId(1)));
        while node.poll_output().is_some() {}
        assert!(node.order_held() <= 4 * 3 + ft_multicast::total::MAX_TAIL);
    }
}

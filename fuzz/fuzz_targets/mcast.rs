//! The reliable-multicast decoder against arbitrary bytes: never panics,
//! and whatever it accepts re-encodes to the bytes it came from. Accepted
//! messages are then fed to a core, from a member and from a stranger,
//! which must not panic on them either.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Protocol, Recover, RecoveryContext, Wire};
use ft_multicast::{
    Feedback, GroupConfig, GroupId, McastConfig, McastInput, McastMessage, McastTimer, Multicast,
    Srm, Tree,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = McastMessage::from_bytes(Bytes::copy_from_slice(data)) else {
        return;
    };
    assert_eq!(&msg.to_bytes()[..], data);
    // Every feedback strategy, each on the same message.
    for feedback in [
        Feedback::Ack,
        Feedback::Nack(Srm::default()),
        Feedback::Tree(Tree::default()),
    ] {
        run(&msg, feedback);
    }
});

fn run(msg: &McastMessage, feedback: Feedback) {
    let group = GroupConfig::new(GroupId(msg.group().0), [NodeId(0), NodeId(1), NodeId(2)])
        .with_history(4)
        .with_feedback(feedback);
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
    while core.poll_output().is_some() {}
    assert!(core.held().pending_per_stream <= 4);
    assert!(core.held().recent <= 4 * 2);
}

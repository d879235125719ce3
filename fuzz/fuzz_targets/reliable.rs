//! The reliable channel's decoder against arbitrary bytes: never panics,
//! and whatever it accepts re-encodes to the bytes it came from. Accepted
//! messages are then fed to a core, which must not panic on them either.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Protocol, Wire};
use ft_rpc::channel::{Reliable, ReliableConfig, ReliableMessage, ReliableTimer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = ReliableMessage::from_bytes(Bytes::copy_from_slice(data)) else {
        return;
    };
    assert_eq!(&msg.to_bytes()[..], data);
    let config = ReliableConfig {
        window: 4,
        reorder_buffer: 4,
        ..ReliableConfig::with_size(2)
    };
    let mut core = Reliable::new(&config, NodeId(0), Incarnation(1));
    let now = Instant::now();
    core.send(now, NodeId(1), Bytes::from_static(b"x"));
    core.handle_message(now, NodeId(1), msg.clone());
    core.handle_message(now, NodeId(1), msg);
    core.handle_timer(
        now + Duration::from_secs(1),
        ReliableTimer::Retransmit(NodeId(1)),
    );
    while core.poll_output().is_some() {}
});

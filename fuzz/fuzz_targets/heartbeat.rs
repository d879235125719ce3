//! The heartbeating group's message decoder on hostile bytes: never panics,
//! and what it accepts round-trips.
#![no_main]

use bytes::Bytes;
use ft_core::Wire;
use ft_group::heartbeat::Heartbeat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = Bytes::copy_from_slice(data);
    if let Ok(beat) = <Heartbeat as Wire>::decode(&mut buf) {
        // What was accepted is exactly the prefix it re-encodes to.
        let consumed = data.len() - buf.len();
        assert_eq!(&beat.to_bytes()[..], &data[..consumed]);
    }
});

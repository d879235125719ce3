//! The heartbeat message decoder on hostile bytes: never panics, and what it
//! accepts round-trips.
#![no_main]

use bytes::Bytes;
use ft_core::Wire;
use ft_demo::heartbeat::Beat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(beat) = Beat::from_bytes(Bytes::copy_from_slice(data)) {
        assert_eq!(&beat.to_bytes()[..], data);
    }
});

//! The OM(m) message decoder on hostile bytes: never panics, and what it
//! accepts round-trips (the encoding is canonical).
#![no_main]

use bytes::Bytes;
use ft_core::Wire;
use ft_group::agreement::OmMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = OmMessage::from_bytes(Bytes::copy_from_slice(data)) {
        assert_eq!(&msg.to_bytes()[..], data);
    }
});

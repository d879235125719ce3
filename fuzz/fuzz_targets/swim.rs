//! SWIM's decoder against arbitrary bytes: never panics, and whatever it
//! accepts re-encodes to the bytes it came from.
#![no_main]

use bytes::Bytes;
use ft_core::Wire;
use ft_group::swim::SwimMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = SwimMessage::from_bytes(Bytes::copy_from_slice(data)) {
        assert_eq!(&msg.to_bytes()[..], data);
    }
});

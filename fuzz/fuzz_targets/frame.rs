//! The frame codec on hostile bytes: never panics, never returns a payload
//! over the limit, and every accepted frame re-encodes to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use ft_core::FrameCodec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a payload limit, so small limits get exercised.
    let (max, data) = match data.split_first() {
        Some((m, rest)) => (usize::from(*m) * 16, rest),
        None => (0, data),
    };
    let codec = FrameCodec::new(max);
    if let Ok(payload) = codec.decode_payload(Bytes::copy_from_slice(data)) {
        assert!(payload.len() <= max);
        let mut again = BytesMut::new();
        codec
            .encode_payload(&payload, &mut again)
            .expect("accepted payload re-encodes");
        assert_eq!(&again[..], data, "a valid frame has one encoding");
    }
    let mut stream = BytesMut::from(data);
    while let Ok(Some(payload)) = codec.decode_stream(&mut stream) {
        assert!(payload.len() <= max);
    }
});

//! ft-commit's two-phase commit decoders on hostile bytes: its messages
//! (as they come off the network) and its log records, snapshots and
//! batches of decisions included (as recovery reads a damaged log): never
//! panic, and what they accept re-encodes to the bytes it came from.
#![no_main]

use bytes::Bytes;
use ft_commit::{LogRecord, Message};
use ft_core::record::{decode, encode};
use ft_core::wire::Wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(m) = Message::from_bytes(bytes.clone()) {
        assert_eq!(&m.to_bytes()[..], data);
    }
    if let Ok(r) = decode::<LogRecord>(bytes) {
        assert_eq!(&encode(&r)[..], data);
    }
});

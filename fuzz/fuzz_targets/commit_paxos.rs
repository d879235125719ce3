//! Paxos Commit's decoders (ft-commit's `PaxosMessage`, and `PaxosRecord`
//! through ft-core's record header, snapshots included) on hostile bytes: never panic, and
//! what they accept re-encodes to the bytes it came from.
#![no_main]

use bytes::Bytes;
use ft_commit::{PaxosMessage, PaxosRecord};
use ft_core::Wire;
use ft_core::record::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(m) = PaxosMessage::from_bytes(bytes.clone()) {
        assert_eq!(&m.to_bytes()[..], data);
    }
    if let Ok(r) = decode::<PaxosRecord>(bytes) {
        assert_eq!(&encode(&r)[..], data);
    }
});

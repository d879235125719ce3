//! The durable-record decoders (ft-core's header, then each core's typed
//! record) on hostile bytes, as recovery reads a damaged or foreign log:
//! never panic, and what they accept re-encodes to the bytes it came from.
#![no_main]

use bytes::Bytes;
use ft_core::record::{decode, encode};
use ft_demo::heartbeat::HeartbeatRecord;
use ft_group::swim::SwimRecord;
use ft_rpc::rpc::RpcRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(r) = decode::<SwimRecord>(bytes.clone()) {
        assert_eq!(&encode(&r)[..], data);
    }
    if let Ok(r) = decode::<HeartbeatRecord>(bytes.clone()) {
        assert_eq!(&encode(&r)[..], data);
    }
    if let Ok(r) = decode::<RpcRecord>(bytes) {
        assert_eq!(&encode(&r)[..], data);
    }
});

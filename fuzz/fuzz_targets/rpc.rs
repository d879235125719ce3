//! The RPC message decoder against arbitrary bytes: never panics, and
//! whatever it accepts re-encodes to the bytes it came from.
#![no_main]

use bytes::Bytes;
use ft_core::Wire;
use ft_rpc::rpc::RpcMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = RpcMessage::from_bytes(Bytes::copy_from_slice(data)) {
        assert_eq!(&msg.to_bytes()[..], data);
    }
});

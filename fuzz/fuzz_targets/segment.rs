//! The log's recovery scan on hostile segment bytes: never panics, stays in
//! bounds, and only calls a segment cleanly ended when zeros follow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ft_storage::fuzzing::scan_segment(data));

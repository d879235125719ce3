//! The stores' checksummed value copies on hostile bytes: never panics, and
//! what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = data.get(..data.len().min(3)).unwrap_or_default();
    if let Ok(copy) = ft_storage::copy::decode(data, key)
        && data[4] == ft_storage::copy::VERSION
    {
        assert_eq!(
            ft_storage::copy::encode(key, &copy.value, copy.generation),
            data
        );
    }
});

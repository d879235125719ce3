//! Helpers the integration tests share (each test binary uses some).
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use ft_core::Lsn;
use ft_storage::FileLog;

/// Every record of `log`, read back; panics on a read error.
pub(crate) fn all(log: &FileLog) -> Vec<(Lsn, Bytes)> {
    log.iter_from(Lsn(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Flips the bits of `mask` in the byte at `at` of the file at `path`, in
/// place (damage behind the store's back).
pub(crate) fn flip(path: &Path, at: u64, mask: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, at).unwrap();
}

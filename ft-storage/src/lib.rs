#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod file_log;
pub mod fsutil;
pub mod mem;
mod queue;
mod record;
mod segment;
mod sync;
pub mod testdir;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use file_log::{FileLog, FileLogOptions, LogIter, SyncHook};
pub use mem::{MemLog, MemStore};
pub mod copy;
pub mod file_store;
pub mod mirrored;
pub use file_store::FileStore;
pub use mirrored::{MirroredStore, RepairCounts, ScrubReport};

/// Entry points for the fuzz targets in `fuzz/` (not part of the API).
#[doc(hidden)]
pub mod fuzzing {
    /// Scans `data` as a segment whose first LSN is taken from its first
    /// byte, checking what the recovery scan promises: it stays in bounds,
    /// and a clean end is followed by nothing but zeros.
    pub fn scan_segment(data: &[u8]) {
        let first = u64::from(data.first().copied().unwrap_or(0));
        let scan = crate::segment::scan(data, first, 1 << 16);
        assert!(scan.offset <= data.len());
        assert!(scan.next_lsn >= first);
        if scan.end == crate::segment::End::Clean {
            assert!(data[scan.offset..].iter().all(|&b| b == 0));
        } else {
            let _ = crate::segment::later_cycle_after(data, scan.offset, scan.next_lsn, 1 << 16);
        }
    }
}

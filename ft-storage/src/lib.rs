#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod file_log;
pub mod fs;
mod fsutil;
pub mod mem;
pub mod power_loss;
mod queue;
mod record;
mod segment;
mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testdir;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use file_log::{FileLog, FileLogOptions, FileLogStats, LogIter, RecoveryReport, SyncHook};
pub use fs::{Fs, OsFs};
pub use mem::{MemLog, MemStore};
pub use power_loss::PowerLossFs;
pub mod copy;
pub mod file_store;
pub mod mirrored;
pub use file_store::FileStore;
pub use mirrored::{MirroredStore, RepairCounts, ScrubReport};

/// Entry points for the fuzz targets in `fuzz/` (not part of the API).
#[doc(hidden)]
pub mod fuzzing {
    use crate::segment::{self, Bytes, End, Work};

    /// Scans `data` as a segment whose first LSN is taken from its first
    /// byte, checking what the recovery scan promises: it stays in bounds,
    /// a clean end is followed by nothing but zeros, and the work is linear
    /// in the segment's size whatever it holds.
    pub fn scan_segment(data: &[u8]) {
        let first = u64::from(data.first().copied().unwrap_or(0));
        let file = Bytes(data);
        let len = data.len() as u64;
        let mut work = Work::default();
        let scan = segment::scan(&file, len, first, &mut work).expect("in-memory reads");
        assert!(scan.offset <= len);
        assert!(scan.next_lsn >= first);
        if scan.end == End::Clean {
            assert!(data[scan.offset as usize..].iter().all(|&b| b == 0));
        } else {
            let after = segment::after_bad_record(
                &file,
                len,
                scan.offset,
                scan.next_lsn,
                (first % 2 == 0).then_some(scan.next_lsn + 3),
                &mut work,
            )
            .expect("in-memory reads");
            assert!(after.written_end <= len);
        }
        assert!(work.read <= 3 * len + 64, "read {} of {len}", work.read);
        assert!(
            work.checksummed <= 29 * len + 64,
            "checksummed {} of {len}",
            work.checksummed
        );
    }
}

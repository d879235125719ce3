//! A node's simulated stable storage.
//!
//! Writes land in the disk at once but are *volatile* until synced, as with a
//! real file before `fdatasync`. [`crash`](SimDisk::crash) cuts the disk back
//! to what was synced; what survives is what a restarted core recovers from.

use bytes::Bytes;

/// The stable storage of one simulated node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimDisk {
    records: Vec<Bytes>,
    synced: usize,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        SimDisk::default()
    }

    /// Writes `record` after every earlier one, not yet durable; returns its
    /// position, which [`sync_through`](SimDisk::sync_through) takes.
    pub fn write(&mut self, record: Bytes) -> usize {
        self.records.push(record);
        self.records.len() - 1
    }

    /// Makes every record up to and including position `at` durable.
    /// Returns how many records became durable (zero if they already were,
    /// or if `at` was lost in a crash).
    pub fn sync_through(&mut self, at: usize) -> usize {
        let target = (at + 1).min(self.records.len());
        let newly = target.saturating_sub(self.synced);
        self.synced = self.synced.max(target);
        newly
    }

    /// The disk survives a crash with only its synced records; returns how
    /// many unsynced records were lost.
    pub fn crash(&mut self) -> usize {
        let lost = self.records.len() - self.synced;
        self.records.truncate(self.synced);
        lost
    }

    /// The durable records, in the order they were written.
    pub fn durable(&self) -> &[Bytes] {
        &self.records[..self.synced]
    }

    /// Records written but not yet synced.
    pub fn unsynced(&self) -> usize {
        self.records.len() - self.synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_exactly_the_synced_prefix() {
        let mut d = SimDisk::new();
        let a = d.write(Bytes::from_static(b"a"));
        let b = d.write(Bytes::from_static(b"b"));
        d.write(Bytes::from_static(b"c"));
        assert!(d.durable().is_empty());
        assert_eq!(d.sync_through(a), 1);
        assert_eq!(
            d.sync_through(a),
            0,
            "syncing twice makes nothing new durable"
        );
        assert_eq!(d.unsynced(), 2);
        assert_eq!(d.crash(), 2);
        assert_eq!(d.durable(), &[Bytes::from_static(b"a")]);
        assert_eq!(
            d.sync_through(b),
            0,
            "a write lost in the crash cannot be synced later"
        );
        let d2 = d.write(Bytes::from_static(b"d"));
        assert_eq!(d.sync_through(d2), 1);
        assert_eq!(
            d.durable(),
            &[Bytes::from_static(b"a"), Bytes::from_static(b"d")]
        );
        assert_eq!(d.crash(), 0);
    }
}

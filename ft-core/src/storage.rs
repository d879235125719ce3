//! The stable-storage edge traits: [`StableLog`] and [`StableStore`].
//!
//! "Stable" means durable when the call returns: a record acknowledged by
//! `append` or a value acknowledged by `put` survives a crash of the process
//! and of the machine. Implementations live in `ft-storage`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// The position of a record in a [`StableLog`]: the first record appended is
/// LSN 0, and LSNs grow by one per record, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Why a storage operation failed.
///
/// Non-exhaustive: storage can learn new ways to fail; match the variants
/// you handle and treat the rest as fatal for the handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O error from the operating system.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data fails its checksum or does not parse, at a place before
    /// the end (so it is not a torn tail a crash could leave).
    #[error("corruption in {location} at offset {offset}: {reason}")]
    Corrupt {
        /// Which file or copy.
        location: String,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier sync failed: the handle no longer knows what is durable and
    /// refuses further writes rather than pretend.
    #[error("storage handle poisoned by an earlier failed sync")]
    Poisoned,
    /// The handle was closed.
    #[error("storage closed")]
    Closed,
    /// The request itself is invalid (a record too large, an LSN out of range).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The storage is held by another handle, in this process or another:
    /// two writers on one directory would overwrite each other's records.
    /// Nothing was read or changed.
    #[error("{location} is in use by another handle (its lock is held)")]
    Locked {
        /// The directory (or its lock file).
        location: String,
    },
    /// A file where the storage keeps its own is not one it could have
    /// written (not a regular file, or larger than its format allows). It is
    /// refused without being read, and nothing was changed.
    #[error("{location} is not a file this storage wrote: {reason}")]
    Foreign {
        /// The file.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// An append-only log on stable storage.
#[async_trait]
pub trait StableLog: Send + Sync {
    /// Appends `records` in order; returns the LSN of the first one once all
    /// of them are durable.
    async fn append(&self, records: &[Bytes]) -> Result<Lsn, StorageError>;

    /// Every durable record with LSN at or after `from`, in LSN order.
    async fn read_from(&self, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, StorageError>;

    /// Discards every record before `upto` (they are no longer needed, for
    /// example because a checkpoint covers them), durably, and returns the
    /// log's start afterwards: the first LSN a read can return.
    ///
    /// The start never moves back, and never past the durable end: the
    /// result is `max(old start, min(upto, durable end))`, so it is below
    /// `upto` when records before `upto` were still in flight. An `upto`
    /// past [`next_lsn`](StableLog::next_lsn) names records that were never
    /// appended: it is [`StorageError::Rejected`] and changes nothing.
    async fn truncate_prefix(&self, upto: Lsn) -> Result<Lsn, StorageError>;

    /// The LSN the next appended record will get.
    async fn next_lsn(&self) -> Result<Lsn, StorageError>;
}

/// A key-value store on stable storage; each `put` is atomic.
#[async_trait]
pub trait StableStore: Send + Sync {
    /// Stores `value` under `key`, replacing any earlier value; durable on return.
    async fn put(&self, key: &[u8], value: Bytes) -> Result<(), StorageError>;

    /// The value under `key`, if any.
    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError>;

    /// Removes `key`; durable on return. Removing a missing key is not an error.
    async fn delete(&self, key: &[u8]) -> Result<(), StorageError>;

    /// Every key, in ascending byte order.
    async fn keys(&self) -> Result<Vec<Bytes>, StorageError>;
}

// Shared and boxed handles are logs and stores too, so one log can serve a
// driver and the application, and `Box<dyn StableLog>` works.
macro_rules! forward_storage {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<L: StableLog + ?Sized> StableLog for $ptr<L> {
            async fn append(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
                (**self).append(records).await
            }
            async fn read_from(&self, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, StorageError> {
                (**self).read_from(from).await
            }
            async fn truncate_prefix(&self, upto: Lsn) -> Result<Lsn, StorageError> {
                (**self).truncate_prefix(upto).await
            }
            async fn next_lsn(&self) -> Result<Lsn, StorageError> {
                (**self).next_lsn().await
            }
        }

        #[async_trait]
        impl<S: StableStore + ?Sized> StableStore for $ptr<S> {
            async fn put(&self, key: &[u8], value: Bytes) -> Result<(), StorageError> {
                (**self).put(key, value).await
            }
            async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
                (**self).get(key).await
            }
            async fn delete(&self, key: &[u8]) -> Result<(), StorageError> {
                (**self).delete(key).await
            }
            async fn keys(&self) -> Result<Vec<Bytes>, StorageError> {
                (**self).keys().await
            }
        }
    )*};
}

forward_storage!(Box, Arc);

//! [`FileStore`]: a [`StableStore`] keeping one checksummed file per key in a
//! directory.
//!
//! Each value lives in its own file, named by the hex of its key plus
//! [`SUFFIX`], holding one [`copy`] (key, value, CRC-32). A put
//! replaces the file with [`fsutil::write_atomic`] (temporary file, fsync,
//! rename, fsync of the directory), so after a crash at any moment the key
//! holds its old value or its new one, never a mix; an interrupted put leaves
//! at most a `*.tmp` file, which [`FileStore::open`] removes.
//!
//! One file per key keeps a put's cost independent of how many keys there
//! are, and lets the mirrored store repair one key without touching others.
//! The price is a limit on key length: a file name holds at most 255 bytes,
//! and hex doubles the key, hence [`MAX_KEY_LEN`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{StableStore, StorageError};

use crate::copy::{self, CopyError};
use crate::fsutil;

/// The longest key a [`FileStore`] accepts: its hex name (200 bytes), the
/// suffix and the temporary suffix must fit in a 255-byte file name.
pub const MAX_KEY_LEN: usize = 100;

/// The suffix of every value file; a name without it is a temporary or a
/// foreign file and is never read as a key.
pub const SUFFIX: &str = ".v";

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The mutex guards no data, only the order of file operations, so a
    // panic while it was held leaves nothing inconsistent behind.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one key's file holds, as seen by the mirrored store's recovery
/// rules.
#[derive(Debug)]
pub(crate) enum CopyState {
    /// No file for the key.
    Missing,
    /// A file that is not a valid copy of the key's value.
    Bad(CopyError),
    /// A valid copy: its value and its exact bytes (to repair the other disk
    /// with a byte-identical file).
    Good {
        /// The decoded value.
        value: Bytes,
        /// The file's contents.
        raw: Vec<u8>,
    },
}

/// A directory of checksummed value files: a [`StableStore`] on one disk.
///
/// The [`StableStore`] methods do blocking `std::fs` I/O (including fsync)
/// directly inside their `async fn`s, so they block the calling task's
/// thread until the data is durable. That is acceptable for the small,
/// infrequent writes stable state sees (checkpoints, incarnation numbers);
/// callers on a latency-sensitive executor can move the synchronous
/// [`put_sync`](FileStore::put_sync) family onto a blocking thread themselves.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    /// Serializes writes: [`fsutil::write_atomic`] uses one fixed temporary
    /// name per key, and two concurrent puts of one key writing through the
    /// same temporary file could rename a mix of both values into place.
    writes: Mutex<()>,
}

impl FileStore {
    /// Opens the store in `dir`, creating the directory if needed.
    ///
    /// This is the store's recovery: temporaries (`*.tmp`) left by puts
    /// interrupted before their rename are removed, and the directory is
    /// synced so the removal is durable. The value such a put was replacing
    /// is untouched, because the rename never happened.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        let existed = dir.is_dir();
        fs::create_dir_all(&dir)?;
        if !existed {
            // A new directory's own entry lives in its parent; without this
            // sync a crash could lose the directory and every value in it.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            fsutil::sync_dir(parent)?;
        }
        let mut removed = 0usize;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if fsutil::is_temporary(name) && entry.file_type()?.is_file() {
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if removed > 0 {
            fsutil::sync_dir(&dir)?;
            tracing::info!(dir = %dir.display(), removed, "removed temporaries of interrupted puts");
        }
        Ok(FileStore {
            dir,
            writes: Mutex::new(()),
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `key`'s value (whether or not it exists).
    ///
    /// # Errors
    /// [`StorageError::Rejected`] if `key` is longer than [`MAX_KEY_LEN`].
    pub fn path_of(&self, key: &[u8]) -> Result<PathBuf, StorageError> {
        check_key(key)?;
        let mut name = hex(key);
        name.push_str(SUFFIX);
        Ok(self.dir.join(name))
    }

    /// Stores `value` under `key`, atomically and durably (the synchronous
    /// form of [`StableStore::put`]).
    pub fn put_sync(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        if value.len() > copy::MAX_LEN {
            return Err(StorageError::Rejected(format!(
                "value of {} bytes exceeds the {}-byte limit",
                value.len(),
                copy::MAX_LEN
            )));
        }
        let encoded = copy::encode(key, value);
        let _guard = lock(&self.writes);
        fsutil::write_atomic(&path, &encoded)?;
        Ok(())
    }

    /// The value under `key`, if any (the synchronous form of
    /// [`StableStore::get`]).
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] naming the file if it holds anything but a
    /// valid copy of `key`'s value: a damaged value is never returned.
    pub fn get_sync(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let (path, state) = self.read_copy(key)?;
        match state {
            CopyState::Missing => Ok(None),
            CopyState::Good { value, .. } => Ok(Some(value)),
            CopyState::Bad(err) => Err(corrupt(&path, &err)),
        }
    }

    /// Removes `key` durably; a missing key is not an error (the synchronous
    /// form of [`StableStore::delete`]).
    pub fn delete_sync(&self, key: &[u8]) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let _guard = lock(&self.writes);
        fsutil::remove_durably(&path)?;
        Ok(())
    }

    /// Every key with a value file, in ascending byte order (the synchronous
    /// form of [`StableStore::keys`]).
    ///
    /// Keys come from file names, not contents: a key whose file is corrupt
    /// is listed (and its [`get_sync`](FileStore::get_sync) reports the
    /// corruption). Temporaries and files whose names are not the store's
    /// are ignored.
    pub fn keys_sync(&self) -> Result<Vec<Bytes>, StorageError> {
        let mut keys = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(key) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(unhex)
            else {
                continue;
            };
            if key.len() <= MAX_KEY_LEN && entry.file_type()?.is_file() {
                keys.push(Bytes::from(key));
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Reads `key`'s file and classifies it; I/O errors other than a missing
    /// file are returned, not classified as a bad copy, because an
    /// unreadable disk is not evidence about what the file holds.
    pub(crate) fn read_copy(&self, key: &[u8]) -> Result<(PathBuf, CopyState), StorageError> {
        let path = self.path_of(key)?;
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((path, CopyState::Missing)),
            Err(e) => return Err(e.into()),
        };
        let state = match copy::decode(&raw, key) {
            Ok(value) => CopyState::Good { value, raw },
            Err(err) => CopyState::Bad(err),
        };
        Ok((path, state))
    }

    /// Replaces `key`'s file with `raw`, a copy already encoded (and checked)
    /// elsewhere: the mirrored store repairs one disk with the other's exact
    /// bytes so that the two end byte-identical.
    pub(crate) fn write_raw(&self, key: &[u8], raw: &[u8]) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let _guard = lock(&self.writes);
        fsutil::write_atomic(&path, raw)?;
        Ok(())
    }
}

/// The error for a file that is not a valid copy. The offset is 0 because a
/// copy is checked as a whole: its CRC cannot say where the damage is.
pub(crate) fn corrupt(path: &Path, err: &CopyError) -> StorageError {
    StorageError::Corrupt {
        location: path.display().to_string(),
        offset: 0,
        reason: err.to_string(),
    }
}

fn check_key(key: &[u8]) -> Result<(), StorageError> {
    if key.len() > MAX_KEY_LEN {
        return Err(StorageError::Rejected(format!(
            "key of {} bytes exceeds the {MAX_KEY_LEN}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// The inverse of [`hex`]. Only lowercase digits are accepted, so that each
/// key has exactly one file name: `AB.v` is a foreign file, not key `0xab`.
fn unhex(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The trait methods run the synchronous ones inline: each blocks the
/// calling task until the file system has made the change durable.
#[async_trait]
impl StableStore for FileStore {
    async fn put(&self, key: &[u8], value: Bytes) -> Result<(), StorageError> {
        self.put_sync(key, &value)
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        self.get_sync(key)
    }

    async fn delete(&self, key: &[u8]) -> Result<(), StorageError> {
        self.delete_sync(key)
    }

    async fn keys(&self) -> Result<Vec<Bytes>, StorageError> {
        self.keys_sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hex_names_are_lowercase_and_round_trip() {
        assert_eq!(hex(&[0x00, 0xab, 0x2f, 0xff]), "00ab2fff");
        assert_eq!(unhex("00ab2fff"), Some(vec![0x00, 0xab, 0x2f, 0xff]));
        assert_eq!(unhex(""), Some(vec![]));
        assert_eq!(
            unhex("AB"),
            None,
            "uppercase is not a name the store writes"
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    proptest! {
        #[test]
        fn hex_round_trips(key in proptest::collection::vec(any::<u8>(), 0..=MAX_KEY_LEN)) {
            prop_assert_eq!(unhex(&hex(&key)), Some(key));
        }
    }

    #[test]
    fn longest_key_fits_in_a_file_name_with_its_temporary_suffix() {
        let dir = crate::testdir::TestDir::new("file-store-name");
        let store = FileStore::open(dir.path()).unwrap();
        let key = [0xffu8; MAX_KEY_LEN];
        store.put_sync(&key, b"v").unwrap();
        assert_eq!(store.get_sync(&key).unwrap().as_deref(), Some(&b"v"[..]));
    }
}

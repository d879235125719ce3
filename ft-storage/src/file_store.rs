//! [`FileStore`]: a [`StableStore`] keeping one checksummed file per key in a
//! directory.
//!
//! Each value lives in its own file, named by the hex of its key plus
//! [`SUFFIX`], holding one [`copy`] (key, value, CRC-32). A put
//! replaces the file with `fsutil::write_atomic` (temporary file, fsync,
//! rename, fsync of the directory), so after a crash at any moment the key
//! holds its old value or its new one, never a mix; an interrupted put leaves
//! at most a `*.tmp` file, which [`FileStore::open`] removes (and a put that
//! fails removes its own at once).
//!
//! One file per key keeps a put's cost independent of how many keys there
//! are, and lets the mirrored store repair one key without touching others.
//! The price is a limit on key length: a file name holds at most 255 bytes,
//! and hex doubles the key, hence [`MAX_KEY_LEN`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{StableStore, StorageError};

use crate::copy;
use crate::fs::{Fs, FsLock, Kind, Mode, OsFs};
use crate::fsutil;

/// The longest key a [`FileStore`] accepts: its hex name (200 bytes), the
/// suffix and the temporary suffix must fit in a 255-byte file name.
pub const MAX_KEY_LEN: usize = 100;

/// The largest value a [`FileStore`] accepts (64 MiB). A file larger than
/// the largest copy this allows is refused as a bad copy without being
/// read, so a hostile file cannot make a read allocate without bound.
pub const MAX_VALUE_LEN: usize = 64 << 20;

/// The largest file a valid copy can be.
const MAX_COPY: u64 = (copy::OVERHEAD + MAX_KEY_LEN + MAX_VALUE_LEN) as u64;

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
    /// A file that is not a valid copy of the key's value (why).
    Bad(String),
    /// A valid copy: its value, generation and exact bytes (to repair the
    /// other disk with a byte-identical file).
    Good {
        /// The decoded value.
        value: Bytes,
        /// Its generation.
        generation: u64,
        /// The file's contents.
        raw: Vec<u8>,
    },
}

/// A directory of checksummed value files: a [`StableStore`] on one disk.
///
/// The directory is locked while the store is open (a second open fails
/// with [`StorageError::Locked`]): two stores writing one directory could
/// rename each other's temporaries into place.
///
/// The [`StableStore`] methods do blocking file I/O (including fsync)
/// directly inside their `async fn`s, so they block the calling task's
/// thread until the data is durable. That is acceptable for the small,
/// infrequent writes stable state sees (checkpoints, incarnation numbers);
/// callers on a latency-sensitive executor can move the synchronous
/// [`put_sync`](FileStore::put_sync) family onto a blocking thread themselves.
#[derive(Debug)]
pub struct FileStore {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// Serializes writes: `fsutil::write_atomic` uses one fixed temporary
    /// name per key, and two concurrent puts of one key writing through the
    /// same temporary file could rename a mix of both values into place.
    writes: Mutex<()>,
    _lock: FsLock,
}

impl FileStore {
    /// Opens the store in `dir` on the real file system, creating the
    /// directory if needed: see [`open_in`](Self::open_in).
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore, StorageError> {
        FileStore::open_in(Arc::new(OsFs), dir)
    }

    /// Opens the store in `dir` on `fs`, creating the directory (durably)
    /// if needed.
    ///
    /// This is the store's recovery: temporaries (`*.tmp`) left by puts
    /// interrupted before their rename are removed. The value such a put
    /// was replacing is untouched, because the rename never happened.
    ///
    /// # Errors
    /// [`StorageError::Locked`] if another store has `dir` open.
    pub fn open_in(fs: Arc<dyn Fs>, dir: impl AsRef<Path>) -> Result<FileStore, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        fsutil::create_dir_durably(&*fs, &dir)?;
        let dir_lock = fsutil::lock_dir(&*fs, &dir)?;
        let mut removed = 0usize;
        for entry in fs.read_dir(&dir)? {
            if fsutil::is_temporary(&entry.name) && entry.kind == Kind::File {
                // Not durably: a temporary that comes back after a crash is
                // removed by the next open.
                removed += usize::from(fsutil::remove_if_present(&*fs, &dir.join(&entry.name))?);
            }
        }
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "removed temporaries of interrupted puts");
        }
        Ok(FileStore {
            fs,
            dir,
            writes: Mutex::new(()),
            _lock: dir_lock,
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
        self.put_generation(key, value, 0)
    }

    /// A put whose copy carries `generation` (the mirrored store's).
    pub(crate) fn put_generation(
        &self,
        key: &[u8],
        value: &[u8],
        generation: u64,
    ) -> Result<(), StorageError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(StorageError::Rejected(format!(
                "value of {} bytes exceeds the {MAX_VALUE_LEN}-byte limit",
                value.len(),
            )));
        }
        self.write_raw(key, &copy::encode(key, value, generation))
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
            CopyState::Bad(reason) => Err(corrupt(&path, reason)),
        }
    }

    /// Removes `key` durably; a missing key is not an error (the synchronous
    /// form of [`StableStore::delete`]).
    pub fn delete_sync(&self, key: &[u8]) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let _guard = lock(&self.writes);
        fsutil::remove_durably(&*self.fs, &path)?;
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
        for entry in self.fs.read_dir(&self.dir)? {
            let Some(key) = entry.name.strip_suffix(SUFFIX).and_then(unhex) else {
                continue;
            };
            if key.len() <= MAX_KEY_LEN && entry.kind != Kind::Dir {
                keys.push(Bytes::from(key));
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Reads `key`'s file and classifies it; I/O errors other than a missing
    /// file are returned, not classified as a bad copy, because an
    /// unreadable disk is not evidence about what the file holds. A file
    /// that is not a regular file, or larger than any copy, is a bad copy
    /// and is not read.
    pub(crate) fn read_copy(&self, key: &[u8]) -> Result<(PathBuf, CopyState), StorageError> {
        let path = self.path_of(key)?;
        match self.fs.kind(&path)? {
            None => return Ok((path, CopyState::Missing)),
            Some(Kind::File) => {}
            Some(kind) => {
                let why = format!("a {kind:?}, not a regular file");
                return Ok((path, CopyState::Bad(why)));
            }
        }
        let file = match self.fs.open(&path, Mode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((path, CopyState::Missing)),
            Err(e) => return Err(e.into()),
        };
        let len = file.len()?;
        if len > MAX_COPY {
            let why = format!("{len} bytes, larger than any copy ({MAX_COPY})");
            return Ok((path, CopyState::Bad(why)));
        }
        let mut raw = vec![0; len as usize];
        let n = crate::fs::read_up_to(&*file, &mut raw, 0)?;
        raw.truncate(n);
        let state = match copy::decode(&raw, key) {
            Ok(d) => CopyState::Good {
                value: d.value,
                generation: d.generation,
                raw,
            },
            Err(err) => CopyState::Bad(err.to_string()),
        };
        Ok((path, state))
    }

    /// Replaces `key`'s file with `raw`, a copy already encoded (and checked)
    /// elsewhere: the mirrored store repairs one disk with the other's exact
    /// bytes so that the two end byte-identical.
    pub(crate) fn write_raw(&self, key: &[u8], raw: &[u8]) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let _guard = lock(&self.writes);
        fsutil::write_atomic(&*self.fs, &path, raw)?;
        Ok(())
    }
}

/// The error for a file that is not a valid copy. The offset is 0 because a
/// copy is checked as a whole: its CRC cannot say where the damage is.
pub(crate) fn corrupt(path: &Path, reason: String) -> StorageError {
    StorageError::Corrupt {
        location: path.display().to_string(),
        offset: 0,
        reason,
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

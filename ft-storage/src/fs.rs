//! The file system the stores run on: [`Fs`], implemented by [`OsFs`] for
//! real disks and by [`PowerLossFs`](crate::PowerLossFs), an in-memory file
//! system that can lose power.
//!
//! Every file operation [`FileLog`](crate::FileLog),
//! [`FileStore`](crate::FileStore) and [`MirroredStore`](crate::MirroredStore)
//! make goes through this thin layer, and nothing else: so a test can swap
//! the disk for one that keeps every write not yet covered by a completed
//! sync in a volatile overlay and drops, keeps or tears it on a power cut,
//! as crash-consistency checkers such as ALICE and CrashMonkey do. A
//! process kill cannot show what a missing `fdatasync` costs (the page
//! cache survives it); a power cut can.
//!
//! The layer is small on purpose: positional reads and writes, the two
//! syncs, and the directory operations whose durability needs a sync of the
//! directory (create, rename, remove).

use std::any::Any;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// What a directory entry is. Symbolic links are not followed: a store
/// refuses a link where it expects its own file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else: a FIFO, a socket, a device.
    Other,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name; names that are not UTF-8 are left out of listings
    /// (no store writes one).
    pub name: String,
    /// What it is.
    pub kind: Kind,
}

/// How to open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An existing file, for reading.
    Read,
    /// An existing file, for reading and writing.
    Write,
    /// Created if missing and emptied if present, for reading and writing.
    Create,
}

/// A lock on a directory, held until dropped.
pub struct FsLock(#[allow(dead_code)] Box<dyn Any + Send + Sync>);

impl FsLock {
    /// Wraps whatever keeps the lock held while it lives.
    pub fn new(holder: impl Any + Send + Sync) -> Self {
        FsLock(Box::new(holder))
    }
}

impl fmt::Debug for FsLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FsLock")
    }
}

/// An open regular file.
pub trait FsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of
    /// the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// `fdatasync`: the file's data, and its size, are durable on return.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: the file's data and all of its metadata are durable on
    /// return. Neither sync covers the file's *name*: that takes
    /// [`Fs::sync_dir`] of its directory.
    fn sync_all(&self) -> io::Result<()>;
}

/// The file-system operations the stores use.
///
/// Implementations must give POSIX semantics: a rename within a directory
/// replaces its target atomically; a file's data is durable after its sync,
/// and a directory's entries (creates, renames, removes) after the sync of
/// the directory; nothing else is promised to survive a power cut.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Creates `dir` and any missing parents (not durably: sync the parent).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The entries of `dir` (without `.` and `..`), in no particular order.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<Entry>>;
    /// What `path` is, without following a symbolic link; `None` if
    /// nothing is there.
    fn kind(&self, path: &Path) -> io::Result<Option<Kind>>;
    /// Opens the regular file at `path`. A symbolic link, a FIFO or a device
    /// is refused with [`io::ErrorKind::InvalidInput`] (never followed, never
    /// blocked on).
    fn open(&self, path: &Path, mode: Mode) -> io::Result<Box<dyn FsFile>>;
    /// Renames `from` to `to` in the same directory, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on the lock file `path` (created if
    /// missing) without waiting: `Ok(None)` if another handle holds it, in
    /// this process or another.
    fn try_lock(&self, path: &Path) -> io::Result<Option<FsLock>>;
}

/// The operating system's file system, through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsFs;

#[derive(Debug)]
struct OsFile(File);

impl FsFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
}

fn kind_of(ft: std::fs::FileType) -> Kind {
    if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    }
}

/// The error [`Fs::open`] gives for anything but a regular file.
pub(crate) fn not_a_file(path: &Path, kind: impl fmt::Debug) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not a regular file ({kind:?})", path.display()),
    )
}

impl Fs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            out.push(Entry {
                name,
                kind: kind_of(entry.file_type()?),
            });
        }
        Ok(out)
    }

    fn kind(&self, path: &Path) -> io::Result<Option<Kind>> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(Some(kind_of(m.file_type()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self, path: &Path, mode: Mode) -> io::Result<Box<dyn FsFile>> {
        let mut o = OpenOptions::new();
        o.read(true);
        match mode {
            Mode::Read => {}
            Mode::Write => {
                o.write(true);
            }
            Mode::Create => {
                o.write(true).create(true).truncate(true);
            }
        }
        // Never follow a link, and never block opening a FIFO: the checks
        // before the open cannot rule out a swap between the two.
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        let file = o.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                not_a_file(path, Kind::Symlink)
            } else {
                e
            }
        })?;
        let ft = file.metadata()?.file_type();
        if !ft.is_file() {
            return Err(not_a_file(path, kind_of(ft)));
        }
        Ok(Box::new(OsFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<FsLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        // flock(2): held per open file description, so a second open in
        // this process conflicts as one in another process does, and the
        // kernel drops it when the holder dies (SIGKILL included).
        match file.try_lock() {
            Ok(()) => Ok(Some(FsLock::new(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Reads from `offset` until `buf` is full or the file ends; returns how
/// many bytes were read.
pub(crate) fn read_up_to(file: &dyn FsFile, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

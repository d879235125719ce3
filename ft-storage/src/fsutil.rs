//! File-system steps that durability rests on, on any [`Fs`].

use std::io;
use std::path::{Path, PathBuf};

use ft_core::StorageError;

use crate::fs::{Fs, FsLock, Mode};

/// The lock file of a store's directory, held while a handle has it open.
pub(crate) const LOCK: &str = "LOCK";

/// Takes the exclusive lock of the storage directory `dir` (on its
/// [`LOCK`] file), or says that another handle holds it.
///
/// # Errors
/// [`StorageError::Locked`] if another handle, in this process or another,
/// holds it; I/O errors of creating or locking the lock file.
pub(crate) fn lock_dir(fs: &dyn Fs, dir: &Path) -> Result<FsLock, StorageError> {
    match fs.try_lock(&dir.join(LOCK))? {
        Some(lock) => Ok(lock),
        None => Err(StorageError::Locked {
            location: dir.display().to_string(),
        }),
    }
}

/// Replaces `path` with `contents` atomically and durably: write a temporary
/// file beside it, sync it, rename it over `path`, sync the directory.
///
/// After a crash at any point, `path` holds either its old contents or
/// `contents`, never a mix (rename is atomic on POSIX file systems). If a
/// step before the rename fails (a full disk, say), the temporary is removed
/// at once rather than left for the next open.
pub(crate) fn write_atomic(fs: &dyn Fs, path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = parent_of(path)?;
    let tmp = temporary_of(path)?;
    let written = (|| {
        let f = fs.open(&tmp, Mode::Create)?;
        f.write_all_at(contents, 0)?;
        // Without this sync the rename can reach the disk before the data:
        // after a power cut, `path` would name a torn or empty file.
        f.sync_all()?;
        drop(f);
        fs.rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Best effort: the error that matters is the write's.
        let _ = fs.remove_file(&tmp);
        return Err(e);
    }
    // Without this sync the rename itself may be lost in a power cut: the
    // put would be acknowledged and the old value come back.
    fs.sync_dir(dir)
}

/// The directory `path` is in.
pub(crate) fn parent_of(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no parent",
        )),
    }
}

/// The temporary file [`write_atomic`] writes before renaming it to `path`
/// (what a crash in the middle of it can leave behind).
pub(crate) fn temporary_of(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(TEMPORARY_SUFFIX);
    Ok(path.with_file_name(tmp_name))
}

const TEMPORARY_SUFFIX: &str = ".tmp";

/// Removes `path` durably; a missing file is not an error.
pub(crate) fn remove_durably(fs: &dyn Fs, path: &Path) -> io::Result<()> {
    if !remove_if_present(fs, path)? {
        return Ok(());
    }
    // Without this sync a removal (a delete that was acknowledged) may be
    // undone by a power cut.
    fs.sync_dir(parent_of(path)?)
}

/// Removes `path` if it is there, not durably: for leftovers whose return
/// after a crash is harmless (the next open removes them again). Returns
/// whether there was something to remove.
pub(crate) fn remove_if_present(fs: &dyn Fs, path: &Path) -> io::Result<bool> {
    match fs.remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and its missing parents, durably: each new directory's
/// entry is synced in its parent, top down, so a power cut cannot lose a
/// directory (and every file in it) after files in it were made durable.
pub(crate) fn create_dir_durably(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || fs.kind(d)?.is_some() {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir)?;
    for d in missing.iter().rev() {
        fs.sync_dir(parent_of(d)?)?;
    }
    Ok(())
}

/// Whether a file name is a leftover temporary of [`write_atomic`].
pub(crate) fn is_temporary(name: &str) -> bool {
    name.ends_with(TEMPORARY_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::OsFs;
    use crate::power_loss::{Fault, PowerLossFs};

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = crate::testdir::TestDir::new("fsutil");
        let p = dir.path().join("v");
        write_atomic(&OsFs, &p, b"one").unwrap();
        write_atomic(&OsFs, &p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("v")]);
        remove_durably(&OsFs, &p).unwrap();
        remove_durably(&OsFs, &p).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary() {
        let fs = PowerLossFs::new();
        let d = Path::new("d");
        create_dir_durably(&fs, d).unwrap();
        write_atomic(&fs, &d.join("v"), b"old").unwrap();
        fs.set_fault(d, Some(Fault::Full));
        let e = write_atomic(&fs, &d.join("v"), b"new").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let names: Vec<_> = fs
            .read_dir(d)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["v".to_string()], "the temporary is gone");
        assert_eq!(fs.files()[&d.join("v")], b"old");
    }

    #[test]
    fn nested_directories_are_created_durably() {
        for seed in 0..20 {
            let fs = PowerLossFs::new();
            let d = Path::new("a/b/c");
            create_dir_durably(&fs, d).unwrap();
            write_atomic(&fs, &d.join("v"), b"x").unwrap();
            fs.power_cut(seed);
            assert_eq!(
                fs.files().get(&d.join("v")).map(Vec::as_slice),
                Some(&b"x"[..])
            );
        }
    }
}

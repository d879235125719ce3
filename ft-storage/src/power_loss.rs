//! [`PowerLossFs`]: an in-memory [`Fs`] that can lose power, for testing
//! what a store promises about durability.
//!
//! It keeps, for every file, the contents as of its last completed sync
//! and, apart, every write made since; for every directory, its entries as
//! of its last sync and every create, rename and remove since. Reads see
//! everything, as through a page cache. [`PowerLossFs::power_cut`] then
//! does what a power failure may do, at random from a seed, in the manner of
//! the crash-consistency checkers ALICE and CrashMonkey:
//!
//! * each write not covered by a completed `fdatasync`/`fsync` of its file
//!   is **dropped**, **kept**, or **torn**: kept or lost sector by sector
//!   (512 bytes, aligned to the file), so a multi-sector write can land in
//!   part, in any pattern;
//! * each directory operation not covered by a sync of its directory is
//!   kept or dropped independently of the others (applied in order; each
//!   acts on the file it named when it was made, so a kept rename moves
//!   that file even if the creation of its old name was dropped);
//! * a file whose name did not survive is gone with its data.
//!
//! This is stricter than a journaling file system, which keeps metadata
//! operations in order: a store that survives this model does not lean on
//! any particular file system's ordering.
//!
//! A test arms [`fail_after`](PowerLossFs::fail_after) so that power goes
//! out at the *n*-th mutating operation, wherever the store is at that
//! moment (between a write and its sync, between a rename and the
//! directory's sync, halfway through a segment's preparation); from then
//! on every operation fails, as on a machine that is off. The test drops
//! the store's handles, calls `power_cut` and opens the store again on the
//! same `PowerLossFs`, which now holds only what survived.
//!
//! Faults of a running disk are there too: a directory can be made
//! [full](Fault::Full), [read-only](Fault::ReadOnly) or
//! [unreadable](Fault::Unreadable), and [`decay`](PowerLossFs::decay)
//! changes stored bytes behind the store's back (bit rot).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ft_core::rng::Rng;

use crate::fs::{Entry, Fs, FsFile, FsLock, Kind, Mode};

/// Granularity of a torn write.
pub const SECTOR: u64 = 512;

/// A fault of a running disk, set on a directory and everything under it
/// with [`PowerLossFs::set_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No space left: a write that would grow a file fails with
    /// [`io::ErrorKind::StorageFull`]; writes inside a file's length, syncs,
    /// renames and removes still work.
    Full,
    /// Remounted read-only: every change fails with
    /// [`io::ErrorKind::ReadOnlyFilesystem`]; reads work.
    ReadOnly,
    /// The disk returns errors on reads (as `EIO`).
    Unreadable,
}

/// What power cuts did, to show a test's faults really happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerLossStats {
    /// Mutating operations (writes, syncs, creates, renames, removes).
    pub ops: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Unsynced writes a cut dropped entirely.
    pub writes_dropped: u64,
    /// Unsynced writes a cut kept entirely.
    pub writes_kept: u64,
    /// Unsynced writes a cut tore (kept some sectors, lost others).
    pub writes_torn: u64,
    /// Unsynced directory operations a cut dropped.
    pub dir_ops_dropped: u64,
    /// Unsynced directory operations a cut kept.
    pub dir_ops_kept: u64,
    /// Operations refused by a [`Fault`].
    pub faults_injected: u64,
    /// The largest single read asked for, in bytes.
    pub max_read: usize,
    /// Syncs of each file (by the name it was opened under), and how many
    /// of them had to make a change of the file's size durable.
    pub syncs: BTreeMap<String, FileSyncs>,
}

/// The syncs of one file (see [`PowerLossStats::syncs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileSyncs {
    /// `sync_data` and `sync_all` calls.
    pub syncs: u64,
    /// Of those, the ones that made a new file size durable (a sync that
    /// must journal metadata, not only write data).
    pub size_changes: u64,
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, data: Vec<u8> },
    Truncate,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<FileOp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

/// A change to a directory, naming the node it acts on: a cut that keeps a
/// rename but drops an earlier change of the same name moves the node the
/// rename moved, never whatever else the name held.
#[derive(Clone, Debug)]
enum DirOp {
    Link(String, Node),
    Rename {
        from: String,
        to: String,
        node: Node,
    },
    Unlink(String, Node),
}

#[derive(Clone, Debug, Default)]
struct Dir {
    durable: BTreeMap<String, Node>,
    current: BTreeMap<String, Node>,
    pending: Vec<DirOp>,
}

#[derive(Clone, Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Every directory that exists now, by normalized path ("" is the root).
    dirs: BTreeMap<PathBuf, Dir>,
    /// Bumped by each power cut: handles opened before it are dead.
    generation: u64,
    power_on: bool,
    /// Mutating operations left before the power fails.
    countdown: Option<u64>,
    locks: BTreeSet<PathBuf>,
    faults: Vec<(PathBuf, Fault)>,
    stats: PowerLossStats,
}

impl Default for State {
    fn default() -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::new(), Dir::default());
        State {
            inodes: HashMap::new(),
            next_ino: 1,
            dirs,
            generation: 0,
            power_on: true,
            countdown: None,
            locks: BTreeSet::new(),
            faults: Vec::new(),
            stats: PowerLossStats::default(),
        }
    }
}

/// An in-memory file system that keeps unsynced changes apart and can lose
/// them in a power cut: see the [module docs](self).
///
/// Clones share one file system, as two processes share a disk.
#[derive(Clone, Debug, Default)]
pub struct PowerLossFs {
    state: Arc<Mutex<State>>,
}

fn norm(p: &Path) -> PathBuf {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn split(p: &Path) -> io::Result<(PathBuf, String)> {
    let p = norm(p);
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string();
    Ok((p.parent().map(Path::to_path_buf).unwrap_or_default(), name))
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", p.display()),
    )
}

fn power_lost() -> io::Error {
    io::Error::other("power lost")
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a mutating operation asks of the disk, for faults.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Grow,
    Change,
}

impl State {
    /// Counts a mutating operation and fails it if the power is out (or
    /// goes out now).
    fn mutate(&mut self) -> io::Result<()> {
        if !self.power_on {
            return Err(power_lost());
        }
        if let Some(left) = self.countdown.as_mut() {
            if *left == 0 {
                self.power_on = false;
                return Err(power_lost());
            }
            *left -= 1;
        }
        self.stats.ops += 1;
        Ok(())
    }

    fn check_power(&self) -> io::Result<()> {
        if self.power_on {
            Ok(())
        } else {
            Err(power_lost())
        }
    }

    fn fault(&mut self, path: &Path, access: Access) -> io::Result<()> {
        let p = norm(path);
        let fault = self
            .faults
            .iter()
            .filter(|(prefix, _)| p.starts_with(prefix))
            .map(|(_, f)| *f)
            .next();
        let err = match (fault, access) {
            (Some(Fault::Unreadable), Access::Read) => {
                Some(io::Error::other("input/output error (injected)"))
            }
            (Some(Fault::ReadOnly), Access::Grow | Access::Change) => Some(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                "read-only file system (injected)",
            )),
            (Some(Fault::Full), Access::Grow) => Some(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            )),
            _ => None,
        };
        match err {
            Some(e) => {
                self.stats.faults_injected += 1;
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn dir(&self, dir: &Path) -> io::Result<&Dir> {
        self.dirs.get(&norm(dir)).ok_or_else(|| not_found(dir))
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(&norm(dir)).ok_or_else(|| not_found(dir))
    }

    fn lookup(&self, path: &Path) -> io::Result<Option<Node>> {
        let p = norm(path);
        if p.as_os_str().is_empty() {
            return Ok(Some(Node::Dir));
        }
        let (parent, name) = split(&p)?;
        match self.dirs.get(&parent) {
            Some(d) => Ok(d.current.get(&name).copied()),
            None => Ok(None),
        }
    }

    fn link(&mut self, parent: &Path, name: String, node: Node) -> io::Result<()> {
        let d = self.dir_mut(parent)?;
        d.current.insert(name.clone(), node);
        d.pending.push(DirOp::Link(name, node));
        Ok(())
    }

    fn new_inode(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::default());
        ino
    }

    /// What a power cut leaves, drawn from `rng`.
    fn cut(&mut self, rng: &mut Rng) {
        let mut dirs = BTreeMap::new();
        let mut files = BTreeSet::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(path) = stack.pop() {
            let Some(old) = self.dirs.get(&path) else {
                continue;
            };
            let mut map = old.durable.clone();
            for op in &old.pending {
                if rng.below(2) == 0 {
                    self.stats.dir_ops_dropped += 1;
                    continue;
                }
                self.stats.dir_ops_kept += 1;
                match op {
                    DirOp::Link(name, node) => {
                        map.insert(name.clone(), *node);
                    }
                    DirOp::Rename { from, to, node } => {
                        if map.get(from) == Some(node) {
                            map.remove(from);
                        }
                        map.insert(to.clone(), *node);
                    }
                    DirOp::Unlink(name, node) => {
                        if map.get(name) == Some(node) {
                            map.remove(name);
                        }
                    }
                }
            }
            for (name, node) in &map {
                match node {
                    Node::File(ino) => {
                        files.insert(*ino);
                    }
                    Node::Dir => stack.push(path.join(name)),
                }
            }
            // A directory entry whose directory never existed cannot be
            // made: drop such names (a subdirectory created and synced in
            // its parent always has its own `Dir`).
            map.retain(|name, node| *node != Node::Dir || self.dirs.contains_key(&path.join(name)));
            dirs.insert(
                path,
                Dir {
                    durable: map.clone(),
                    current: map,
                    pending: Vec::new(),
                },
            );
        }
        let mut inodes = HashMap::new();
        for ino in files {
            let Some(old) = self.inodes.get(&ino) else {
                continue;
            };
            let mut data = old.durable.clone();
            for op in &old.pending {
                match op {
                    FileOp::Truncate => {
                        if rng.below(2) == 0 {
                            self.stats.writes_dropped += 1;
                        } else {
                            self.stats.writes_kept += 1;
                            data.clear();
                        }
                    }
                    FileOp::Write {
                        offset,
                        data: bytes,
                    } => match rng.below(3) {
                        0 => self.stats.writes_dropped += 1,
                        1 => {
                            self.stats.writes_kept += 1;
                            put(&mut data, *offset, bytes);
                        }
                        _ => {
                            self.stats.writes_torn += 1;
                            let end = offset + bytes.len() as u64;
                            let mut at = *offset;
                            while at < end {
                                let next = ((at / SECTOR) + 1) * SECTOR;
                                let stop = next.min(end);
                                if rng.below(2) == 0 {
                                    let from = (at - offset) as usize;
                                    let to = (stop - offset) as usize;
                                    put(&mut data, at, &bytes[from..to]);
                                }
                                at = stop;
                            }
                        }
                    },
                }
            }
            inodes.insert(
                ino,
                Inode {
                    durable: data.clone(),
                    current: data,
                    pending: Vec::new(),
                },
            );
        }
        self.dirs = dirs;
        self.inodes = inodes;
        self.locks.clear();
        self.generation += 1;
        self.power_on = true;
        self.countdown = None;
        self.stats.cuts += 1;
    }
}

fn put(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let offset = offset as usize;
    let end = offset + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset..end].copy_from_slice(bytes);
}

impl PowerLossFs {
    /// An empty file system with the power on.
    pub fn new() -> Self {
        PowerLossFs::default()
    }

    /// Power fails at the `n`-th mutating operation from now (counting from
    /// 0: `fail_after(0)` fails the very next one): that operation and every
    /// one after it fail, until [`power_cut`](Self::power_cut).
    pub fn fail_after(&self, n: u64) {
        lock(&self.state).countdown = Some(n);
    }

    /// Whether the power is out (armed by [`fail_after`](Self::fail_after)).
    pub fn is_off(&self) -> bool {
        !lock(&self.state).power_on
    }

    /// The power fails now, if it has not already, and comes back: every
    /// unsynced write and directory operation is dropped, kept or torn,
    /// drawn from `seed`; open handles and locks are gone (the processes
    /// died with the power). Returns the statistics so far.
    pub fn power_cut(&self, seed: u64) -> PowerLossStats {
        let mut s = lock(&self.state);
        s.cut(&mut Rng::new(seed));
        s.stats.clone()
    }

    /// Injects `fault` into the directory `dir` and everything under it, or
    /// clears it (`None`).
    pub fn set_fault(&self, dir: &Path, fault: Option<Fault>) {
        let mut s = lock(&self.state);
        let d = norm(dir);
        s.faults.retain(|(p, _)| *p != d);
        if let Some(f) = fault {
            s.faults.push((d, f));
        }
    }

    /// What happened so far.
    pub fn stats(&self) -> PowerLossStats {
        lock(&self.state).stats.clone()
    }

    /// An independent copy of this file system as it is now, power on, with
    /// no handles and no locks: for running many trials from one state.
    pub fn fork(&self) -> PowerLossFs {
        let mut s = lock(&self.state).clone();
        s.locks.clear();
        s.generation += 1;
        s.power_on = true;
        s.countdown = None;
        PowerLossFs {
            state: Arc::new(Mutex::new(s)),
        }
    }

    /// Every file that exists now, by path (relative to the root), with
    /// what a read would return: for inspection, and for copying a failing
    /// state to a real directory.
    pub fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let s = lock(&self.state);
        let mut out = BTreeMap::new();
        for (path, dir) in &s.dirs {
            for (name, node) in &dir.current {
                if let Node::File(ino) = node
                    && let Some(inode) = s.inodes.get(ino)
                {
                    out.insert(path.join(name), inode.current.clone());
                }
            }
        }
        out
    }

    /// What a read of the file at `path` would return now, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = lock(&self.state);
        match s.lookup(path) {
            Ok(Some(Node::File(ino))) => s.inodes.get(&ino).map(|i| i.current.clone()),
            _ => None,
        }
    }

    /// Writes every file to the same relative path under `to` on the real
    /// file system (a failing state kept for a post-mortem).
    pub fn dump(&self, to: &Path) -> io::Result<()> {
        for (path, data) in self.files() {
            let dest = to.join(path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(dest, data)?;
        }
        Ok(())
    }

    /// Changes the stored bytes of the file at `path` behind every handle's
    /// back, durably, as bit rot or a stray write would: `change` gets the
    /// contents and may alter or resize them.
    pub fn decay(&self, path: &Path, change: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut s = lock(&self.state);
        let Some(Node::File(ino)) = s.lookup(path)? else {
            return Err(not_found(path));
        };
        let inode = s.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        change(&mut inode.current);
        // Rot is on the platter: what is durable is what is there now.
        inode.durable = inode.current.clone();
        inode.pending.clear();
        Ok(())
    }

    /// Creates (durably) a non-regular file at `path`, as a FIFO or a
    /// device would be: opening it must be refused.
    pub fn make_special(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        let (parent, name) = split(path)?;
        // Recorded as a directory entry with no inode behind it: a name
        // that is there but is not a file.
        let ino = u64::MAX;
        let d = s.dir_mut(&parent)?;
        d.current.insert(name.clone(), Node::File(ino));
        d.durable.insert(name, Node::File(ino));
        Ok(())
    }
}

/// A handle on one file of a [`PowerLossFs`].
#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    generation: u64,
    writable: bool,
    path: PathBuf,
    name: String,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, &mut Inode) -> io::Result<T>) -> io::Result<T> {
        let mut s = lock(&self.state);
        if s.generation != self.generation {
            return Err(power_lost());
        }
        let mut inode = s.inodes.remove(&self.ino).ok_or_else(power_lost)?;
        let out = f(&mut s, &mut inode);
        s.inodes.insert(self.ino, inode);
        out
    }

    fn sync(&self) -> io::Result<()> {
        self.with(|s, inode| {
            s.mutate()?;
            let changed = inode.durable.len() != inode.current.len();
            inode.durable = inode.current.clone();
            inode.pending.clear();
            let entry = s.stats.syncs.entry(self.name.clone()).or_default();
            entry.syncs += 1;
            entry.size_changes += u64::from(changed);
            Ok(())
        })
    }
}

impl FsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(|s, inode| {
            s.check_power()?;
            s.fault(&self.path, Access::Read)?;
            s.stats.max_read = s.stats.max_read.max(buf.len());
            let data = &inode.current;
            let start = (offset as usize).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened for reading",
            ));
        }
        self.with(|s, inode| {
            s.mutate()?;
            let grows = offset + buf.len() as u64 > inode.current.len() as u64;
            s.fault(
                &self.path,
                if grows { Access::Grow } else { Access::Change },
            )?;
            put(&mut inode.current, offset, buf);
            inode.pending.push(FileOp::Write {
                offset,
                data: buf.to_vec(),
            });
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|s, inode| {
            s.check_power()?;
            Ok(inode.current.len() as u64)
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

/// Held while a [`PowerLossFs`] lock is: dropping it releases the lock
/// (unless a power cut released every lock already).
struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    generation: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        if s.generation == self.generation {
            s.locks.remove(&self.path);
        }
    }
}

impl Fs for PowerLossFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        let target = norm(dir);
        let mut path = PathBuf::new();
        for c in target.components() {
            let parent = path.clone();
            path.push(c);
            match s.lookup(&path)? {
                Some(Node::Dir) => continue,
                Some(Node::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is a file", path.display()),
                    ));
                }
                None => {
                    s.mutate()?;
                    s.fault(&parent, Access::Grow)?;
                    let name = c.as_os_str().to_string_lossy().into_owned();
                    s.link(&parent, name, Node::Dir)?;
                    s.dirs.insert(path.clone(), Dir::default());
                }
            }
        }
        Ok(())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        let mut s = lock(&self.state);
        s.check_power()?;
        s.fault(dir, Access::Read)?;
        let d = s.dir(dir)?;
        Ok(d.current
            .iter()
            .map(|(name, node)| Entry {
                name: name.clone(),
                kind: match node {
                    Node::Dir => Kind::Dir,
                    Node::File(u64::MAX) => Kind::Other,
                    Node::File(_) => Kind::File,
                },
            })
            .collect())
    }

    fn kind(&self, path: &Path) -> io::Result<Option<Kind>> {
        let s = lock(&self.state);
        s.check_power()?;
        Ok(s.lookup(path)?.map(|n| match n {
            Node::Dir => Kind::Dir,
            Node::File(u64::MAX) => Kind::Other,
            Node::File(_) => Kind::File,
        }))
    }

    fn open(&self, path: &Path, mode: Mode) -> io::Result<Box<dyn FsFile>> {
        let mut s = lock(&self.state);
        s.check_power()?;
        let (parent, name) = split(path)?;
        let ino = match (s.lookup(path)?, mode) {
            (Some(Node::Dir), _) => return Err(crate::fs::not_a_file(path, Kind::Dir)),
            (Some(Node::File(u64::MAX)), _) => {
                return Err(crate::fs::not_a_file(path, Kind::Other));
            }
            (Some(Node::File(ino)), Mode::Read | Mode::Write) => ino,
            (None, Mode::Read | Mode::Write) => return Err(not_found(path)),
            (Some(Node::File(ino)), Mode::Create) => {
                s.mutate()?;
                s.fault(path, Access::Change)?;
                let inode = s.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
                inode.current.clear();
                inode.pending.push(FileOp::Truncate);
                ino
            }
            (None, Mode::Create) => {
                s.mutate()?;
                s.dir(&parent)?;
                // An empty file takes no data blocks: a full disk refuses
                // its first write, not its creation (as the kernel's does).
                s.fault(path, Access::Change)?;
                let ino = s.new_inode();
                s.link(&parent, name.clone(), Node::File(ino))?;
                ino
            }
        };
        Ok(Box::new(SimFile {
            state: self.state.clone(),
            ino,
            generation: s.generation,
            writable: mode != Mode::Read,
            path: norm(path),
            name,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.mutate()?;
        s.fault(to, Access::Change)?;
        let (parent, from_name) = split(from)?;
        let (to_parent, to_name) = split(to)?;
        if parent != to_parent {
            return Err(io::Error::new(
                io::ErrorKind::CrossesDevices,
                "renames across directories are not modelled",
            ));
        }
        let d = s.dir_mut(&parent)?;
        let node = d
            .current
            .remove(&from_name)
            .ok_or_else(|| not_found(from))?;
        d.current.insert(to_name.clone(), node);
        d.pending.push(DirOp::Rename {
            from: from_name,
            to: to_name,
            node,
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.mutate()?;
        s.fault(path, Access::Change)?;
        let (parent, name) = split(path)?;
        let d = s.dir_mut(&parent)?;
        let node = match d.current.get(&name) {
            Some(node @ Node::File(_)) => *node,
            Some(Node::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a directory", path.display()),
                ));
            }
            None => return Err(not_found(path)),
        };
        d.current.remove(&name);
        d.pending.push(DirOp::Unlink(name, node));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.mutate()?;
        let d = s.dir_mut(dir)?;
        d.durable = d.current.clone();
        d.pending.clear();
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<FsLock>> {
        {
            let s = lock(&self.state);
            s.check_power()?;
        }
        // The lock file is created as the OS's would be (not durably).
        if self.kind(path)?.is_none() {
            drop(self.open(path, Mode::Create)?);
        }
        let mut s = lock(&self.state);
        let p = norm(path);
        if !s.locks.insert(p.clone()) {
            return Ok(None);
        }
        Ok(Some(FsLock::new(SimLock {
            state: self.state.clone(),
            path: p,
            generation: s.generation,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &PowerLossFs, path: &str, data: &[u8], sync: bool) {
        let f = fs.open(Path::new(path), Mode::Create).unwrap();
        f.write_all_at(data, 0).unwrap();
        if sync {
            f.sync_data().unwrap();
        }
    }

    fn read(fs: &PowerLossFs, path: &str) -> Option<Vec<u8>> {
        fs.files().get(Path::new(path)).cloned()
    }

    #[test]
    fn synced_data_and_entries_survive_every_cut() {
        for seed in 0..50 {
            let fs = PowerLossFs::new();
            fs.create_dir_all(Path::new("d")).unwrap();
            fs.sync_dir(Path::new("")).unwrap();
            write(&fs, "d/a", &[7; 3000], true);
            fs.sync_dir(Path::new("d")).unwrap();
            fs.power_cut(seed);
            assert_eq!(read(&fs, "d/a"), Some(vec![7; 3000]), "seed {seed}");
        }
    }

    #[test]
    fn unsynced_writes_are_dropped_kept_or_torn_by_sector() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..200 {
            let fs = PowerLossFs::new();
            write(&fs, "a", &[0; 2048], true);
            fs.sync_dir(Path::new("")).unwrap();
            let f = fs.open(Path::new("a"), Mode::Write).unwrap();
            f.write_all_at(&[1; 2048], 0).unwrap();
            fs.power_cut(seed);
            let data = read(&fs, "a").unwrap();
            assert_eq!(data.len(), 2048);
            // Each sector is all old or all new.
            let sectors: Vec<u8> = data
                .chunks(SECTOR as usize)
                .map(|c| {
                    assert!(
                        c.iter().all(|&b| b == c[0]),
                        "seed {seed}: torn inside a sector"
                    );
                    c[0]
                })
                .collect();
            outcomes.insert(sectors);
        }
        assert!(outcomes.contains(&vec![0, 0, 0, 0]), "dropped");
        assert!(outcomes.contains(&vec![1, 1, 1, 1]), "kept");
        assert!(outcomes.len() > 4, "torn in several patterns: {outcomes:?}");
    }

    #[test]
    fn an_entry_needs_its_directory_synced() {
        let (mut kept, mut lost) = (0, 0);
        for seed in 0..100 {
            let fs = PowerLossFs::new();
            write(&fs, "a", b"data", true);
            fs.power_cut(seed);
            match read(&fs, "a") {
                Some(d) => {
                    assert_eq!(d, b"data");
                    kept += 1;
                }
                None => lost += 1,
            }
        }
        assert!(kept > 0 && lost > 0, "kept {kept}, lost {lost}");
    }

    /// A rename moves the file it renamed: a cut that drops the creation of
    /// the source name (or the removal of an older file of that name) must
    /// not let the rename move the older file instead.
    #[test]
    fn a_kept_rename_moves_the_file_it_renamed() {
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let fs = PowerLossFs::new();
            write(&fs, "a.tmp", b"stale", true);
            fs.sync_dir(Path::new("")).unwrap();
            fs.remove_file(Path::new("a.tmp")).unwrap();
            write(&fs, "a.tmp", b"new", true);
            fs.rename(Path::new("a.tmp"), Path::new("a")).unwrap();
            fs.power_cut(seed);
            let a = read(&fs, "a");
            assert_ne!(a.as_deref(), Some(&b"stale"[..]), "seed {seed}");
            seen.insert(a);
        }
        assert!(seen.contains(&None) && seen.contains(&Some(b"new".to_vec())));
    }

    #[test]
    fn power_fails_at_the_armed_operation_and_handles_die_with_it() {
        let fs = PowerLossFs::new();
        let f = fs.open(Path::new("a"), Mode::Create).unwrap();
        fs.fail_after(1);
        f.write_all_at(b"x", 0).unwrap();
        assert!(f.sync_data().is_err());
        assert!(fs.is_off());
        assert!(f.write_all_at(b"y", 0).is_err());
        fs.power_cut(1);
        assert!(!fs.is_off());
        assert!(
            f.read_at(&mut [0; 1], 0).is_err(),
            "a handle from before the cut"
        );
    }

    #[test]
    fn locks_exclude_until_dropped_or_cut() {
        let fs = PowerLossFs::new();
        let l = fs.try_lock(Path::new("LOCK")).unwrap();
        assert!(l.is_some());
        assert!(fs.try_lock(Path::new("LOCK")).unwrap().is_none());
        drop(l);
        let l = fs.try_lock(Path::new("LOCK")).unwrap();
        assert!(l.is_some());
        fs.power_cut(0);
        assert!(fs.try_lock(Path::new("LOCK")).unwrap().is_some());
        drop(l);
    }

    #[test]
    fn faults_refuse_what_they_say() {
        let fs = PowerLossFs::new();
        fs.create_dir_all(Path::new("d")).unwrap();
        write(&fs, "d/a", &[1; 100], true);
        fs.set_fault(Path::new("d"), Some(Fault::Full));
        let f = fs.open(Path::new("d/a"), Mode::Write).unwrap();
        f.write_all_at(&[2; 50], 0).unwrap();
        let e = f.write_all_at(&[2; 50], 80).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        fs.set_fault(Path::new("d"), Some(Fault::ReadOnly));
        assert_eq!(
            f.write_all_at(&[3], 0).unwrap_err().kind(),
            io::ErrorKind::ReadOnlyFilesystem
        );
        fs.set_fault(Path::new("d"), Some(Fault::Unreadable));
        assert!(f.read_at(&mut [0; 4], 0).is_err());
        fs.set_fault(Path::new("d"), None);
        assert_eq!(f.read_at(&mut [0; 4], 0).unwrap(), 4);
        assert_eq!(fs.stats().faults_injected, 3);
    }

    #[test]
    fn special_files_are_not_opened() {
        let fs = PowerLossFs::new();
        fs.make_special(Path::new("fifo")).unwrap();
        assert_eq!(fs.kind(Path::new("fifo")).unwrap(), Some(Kind::Other));
        assert_eq!(
            fs.open(Path::new("fifo"), Mode::Read).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}

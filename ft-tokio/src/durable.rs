//! Starting a life of a core that persists: [`open`] rebuilds it from a
//! directory on disk, as a real process does at every (re)start.
//!
//! A core is rebuilt after a crash by [`Recover::recover`] from what stable
//! storage holds, with an incarnation one higher than the life before. In
//! the simulator the world keeps both; in a process, [`open`] does, in one
//! directory:
//!
//! ```text
//! dir/
//!   store/   a FileStore: the incarnation of the latest life, under INCARNATION_KEY
//!   log/     a FileLog: every record the core persisted, in order
//! ```
//!
//! # What `open` does, in order
//!
//! 1. creates `dir` if needed and opens the [`FileLog`] in `dir/log`, which
//!    recovers it (a torn tail left by a crash is erased; corruption before
//!    the tail is an error, never skipped), and reads every durable record;
//! 2. reads the incarnation of the previous life from the [`FileStore`] in
//!    `dir/store`, and stores the new life's, one higher
//!    ([`Incarnation::FIRST`] if there was none), **durably** (written,
//!    synced, renamed into place, directory synced);
//! 3. only then builds the core with [`Recover::recover`], from those
//!    records and that incarnation.
//!
//! So **the incarnation is durable before the new life can say anything**:
//! the core does not exist until it is, and a peer can never hear two lives
//! of the same process under one incarnation, not even if this life is
//! killed a moment after it starts (the next one takes the number after
//! it). A start that fails or is killed before step 3 only skips a number,
//! which is harmless: incarnations must grow, not be contiguous.
//!
//! The returned [`FileLog`] is the log to run the core with (handed to
//! [`spawn`](crate::spawn), or to `ft_rpc::handle::rpc_node`), so that what
//! this life persists is what the next one recovers.
//!
//! # One process per directory
//!
//! The log's directory is locked (`flock`) for as long as the returned
//! [`FileLog`] is open, and the store's while it is read and written: a
//! second process started on the same directory gets
//! [`StorageError::Locked`] instead of sharing an incarnation counter and a
//! log, which neither protocol nor storage is built for. The kernel drops
//! the lock when its holder dies, so a supervisor restarting a killed
//! process opens at once. [`records`], which opens the log, fails with
//! `Locked` while a process runs on the directory; [`incarnation`] reads the
//! store, locked only while a starting life bumps it, and so returns the
//! running life's incarnation.
//!
//! # Example
//!
//! ```
//! use std::collections::VecDeque;
//! # use std::time::Instant;
//! # use ft_core::{Counters, NodeId, Output, PersistToken, Protocol};
//! use ft_core::{Incarnation, Recover, RecoveryContext};
//! use ft_storage::testdir::TestDir;
//! use ft_tokio::durable;
//!
//! /// Remembers how it was recovered.
//! struct Life(RecoveryContext);
//! # impl Protocol for Life {
//! #     type Message = u64;
//! #     type Input = ();
//! #     type Event = ();
//! #     type Timer = ();
//! #     fn handle_message(&mut self, _: Instant, _: NodeId, _: u64) {}
//! #     fn handle_input(&mut self, _: Instant, _: ()) {}
//! #     fn handle_timer(&mut self, _: Instant, _: ()) {}
//! #     fn handle_persisted(&mut self, _: Instant, _: PersistToken) {}
//! #     fn poll_output(&mut self) -> Option<Output<Self>> { None }
//! #     fn counters(&self) -> Counters { Counters::default() }
//! # }
//! impl Recover for Life {
//!     type Config = ();
//!     fn recover(_: &(), ctx: RecoveryContext) -> Result<Self, ft_core::RecoveryError> { Ok(Life(ctx)) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ft_core::StorageError> {
//! let dir = TestDir::new("durable-doc");
//! let first = durable::open::<Life>(&(), NodeId(1), dir.path(), 7).await?;
//! assert_eq!(first.incarnation, Incarnation::FIRST);
//! first.log.append_blocking(&["vote-commit T1".into()])?;
//! drop(first); // a crash, as far as the directory is concerned
//!
//! let second = durable::open::<Life>(&(), NodeId(1), dir.path(), 7).await?;
//! assert_eq!(second.core.0.incarnation, Incarnation(1));
//! assert_eq!(second.core.0.records, vec![bytes::Bytes::from("vote-commit T1")]);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use ft_core::life::{self, LifeError};
use ft_core::{Clock, Incarnation, Lsn, NodeId, Recover, StorageError};
use ft_storage::{FileLog, FileLogOptions, FileStore};

use crate::clock::TokioClock;

/// The subdirectory holding the [`FileStore`] with the incarnation.
pub const STORE_DIR: &str = "store";

/// The subdirectory holding the [`FileLog`].
pub const LOG_DIR: &str = "log";

/// The store key of the latest life's incarnation: a `u64`, little-endian.
pub const INCARNATION_KEY: &[u8] = b"incarnation";

/// A core rebuilt by [`open`], with the log to run it with.
#[derive(Debug)]
pub struct Opened<P> {
    /// The core, built by [`Recover::recover`].
    pub core: P,
    /// The log the core's records were read from, and where this life's go:
    /// give it to the driver.
    pub log: FileLog,
    /// This life's incarnation, durable already.
    pub incarnation: Incarnation,
    /// How many records the core was rebuilt from.
    pub records: usize,
    /// The records themselves, in order, for an application that rebuilds
    /// its own state from them too (say, the effects of exactly-once calls:
    /// `ft_rpc::rpc::durable_effects`).
    pub recovered: Vec<Bytes>,
}

/// Rebuilds a `P` for `node` from `dir` (created if needed), as a new life:
/// see the [module docs](self) for what is read and written, and in what
/// order. The log is opened with the default [`FileLogOptions`].
///
/// `seed` is the process's seed; the core's RNG is seeded with it mixed with
/// the incarnation ([`life_seed`]), so each life draws different numbers
/// while a run stays reproducible from `seed`. The recovery time is
/// [`TokioClock`]'s now. The file work runs on tokio's blocking pool.
///
/// # Errors
/// What opening and recovering the log or the store, or storing the new
/// incarnation, fails with; [`StorageError::Corrupt`] if the stored
/// incarnation is not eight bytes, [`StorageError::Rejected`] if it cannot
/// grow any more. Nothing is built then.
///
/// # Panics
/// Outside a tokio runtime; and if recovering the core panicked (the panic
/// is passed on).
///
/// # Example
///
/// Two lives of an RPC node ([`Rpc`](ft_rpc::rpc::Rpc) implements
/// [`Recover`]) from one directory:
///
/// ```
/// use ft_core::{Incarnation, NodeId};
/// use ft_rpc::rpc::{Rpc, RpcConfig};
/// use ft_storage::testdir::TestDir;
/// use ft_tokio::durable;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ft_core::StorageError> {
/// let dir = TestDir::new("durable-open-doc"); // removed when dropped
/// let config = RpcConfig::new(vec![NodeId(0), NodeId(1)]);
/// let first = durable::open::<Rpc>(&config, NodeId(0), dir.path(), 42).await?;
/// assert_eq!(first.incarnation, Incarnation::FIRST);
/// assert_eq!(first.core.incarnation(), Incarnation::FIRST);
/// assert_eq!(first.records, 0, "nothing persisted yet");
/// // Run `first.core` with `first.log` (say, in `ft_rpc::handle::rpc_node`)
/// // so that what it persists is what the next life recovers.
/// drop(first); // the process stops, or crashes: the directory is free
///
/// let second = durable::open::<Rpc>(&config, NodeId(0), dir.path(), 42).await?;
/// assert_eq!(second.incarnation, Incarnation(1), "a new life, never a reused one");
/// # Ok(())
/// # }
/// ```
pub async fn open<P>(
    config: &P::Config,
    node: NodeId,
    dir: &Path,
    seed: u64,
) -> Result<Opened<P>, StorageError>
where
    P: Recover + Send + 'static,
    P::Config: Send + 'static,
{
    open_with(config, node, dir, seed, FileLogOptions::default()).await
}

/// [`open`] with the log opened with `log_options` (smaller segments for
/// tests, a sync hook for fault injection).
///
/// # Errors
/// As [`open`].
///
/// # Panics
/// As [`open`].
pub async fn open_with<P>(
    config: &P::Config,
    node: NodeId,
    dir: &Path,
    seed: u64,
    log_options: FileLogOptions,
) -> Result<Opened<P>, StorageError>
where
    P: Recover + Send + 'static,
    P::Config: Send + 'static,
{
    let config = config.clone();
    let dir = dir.to_path_buf();
    let now = TokioClock.now();
    let opening = tokio::task::spawn_blocking(move || {
        open_blocking(&config, node, &dir, seed, log_options, now)
    });
    match opening.await {
        Ok(opened) => opened,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StorageError::Io(io::Error::other(format!(
            "the recovery task did not run: {e}"
        )))),
    }
}

/// [`open_with`] on the calling thread, with the recovery time `now`, for
/// code outside tokio (it blocks on file reads and syncs).
///
/// # Errors
/// As [`open`].
pub fn open_blocking<P: Recover>(
    config: &P::Config,
    node: NodeId,
    dir: &Path,
    seed: u64,
    log_options: FileLogOptions,
    now: Instant,
) -> Result<Opened<P>, StorageError> {
    let log = FileLog::open(dir.join(LOG_DIR), log_options)?;
    let records = read_all(&log)?;
    let store = FileStore::open(dir.join(STORE_DIR))?;
    let last = read_incarnation(&store)?;
    // Cheap: `Bytes` clones share their buffers.
    let recovered = records.clone();
    // The one life cycle (ft_core::life): the incarnation is durable before
    // the new life exists.
    let life = life::begin::<P>(
        config,
        node,
        last,
        records,
        now,
        |incarnation| life_seed(seed, incarnation),
        |incarnation| store.put_sync(INCARNATION_KEY, &incarnation.0.to_le_bytes()),
    )
    .map_err(|e| match e {
        LifeError::Storage(e) => e,
        LifeError::Recovery(e) => StorageError::Corrupt {
            location: dir.join(LOG_DIR).display().to_string(),
            offset: 0,
            reason: format!("the core cannot read its records: {e}"),
        },
    })?;
    drop(store);
    let (core, incarnation, count) = (life.core, life.incarnation, life.records);
    tracing::info!(
        %node,
        %incarnation,
        records = count,
        dir = %dir.display(),
        "recovered a new life"
    );
    Ok(Opened {
        core,
        log,
        incarnation,
        records: count,
        recovered,
    })
}

/// The durable records in `dir`'s log, in order: what the next life of the
/// core would be rebuilt from, for tools and tests that inspect a stopped
/// process's directory. Opening the log recovers it (a torn tail is erased),
/// so no process may be running on `dir`.
///
/// # Errors
/// What opening or reading the log fails with.
pub fn records(dir: &Path) -> Result<Vec<Bytes>, StorageError> {
    let log = FileLog::open(dir.join(LOG_DIR), FileLogOptions::default())?;
    let records = read_all(&log);
    log.close();
    records
}

/// The incarnation of the latest life started in `dir`, if any. Reads only.
///
/// # Errors
/// What opening or reading the store fails with, and
/// [`StorageError::Corrupt`] if the value is not eight bytes.
pub fn incarnation(dir: &Path) -> Result<Option<Incarnation>, StorageError> {
    let store_dir = dir.join(STORE_DIR);
    if !store_dir.is_dir() {
        return Ok(None);
    }
    let store = FileStore::open(&store_dir)?;
    read_incarnation(&store)
}

pub use ft_core::life::life_seed;

fn read_all(log: &FileLog) -> Result<Vec<Bytes>, StorageError> {
    log.iter_from(Lsn(0))?
        .map(|r| r.map(|(_, record)| record))
        .collect()
}

fn read_incarnation(store: &FileStore) -> Result<Option<Incarnation>, StorageError> {
    let Some(value) = store.get_sync(INCARNATION_KEY)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value
        .as_ref()
        .try_into()
        .map_err(|_| corrupt(store, &value))?;
    Ok(Some(Incarnation(u64::from_le_bytes(bytes))))
}

fn corrupt(store: &FileStore, value: &[u8]) -> StorageError {
    let location = store
        .path_of(INCARNATION_KEY)
        .unwrap_or_else(|_| PathBuf::from(store.dir()));
    StorageError::Corrupt {
        location: location.display().to_string(),
        offset: 0,
        reason: format!("an incarnation is 8 bytes, found {}", value.len()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use ft_core::{
        Counters, DriverConfig, MemNetwork, Output, PersistToken, Protocol, RecoveryContext,
    };
    use ft_storage::testdir::TestDir;

    use super::*;

    /// Persists every input, reports each once durable, and remembers how
    /// it was recovered.
    struct Diary {
        ctx: RecoveryContext,
        next: u64,
        written: Vec<(PersistToken, u64)>,
        out: VecDeque<Output<Diary>>,
    }

    impl Protocol for Diary {
        type Message = u64;
        type Input = u64;
        type Event = u64;
        type Timer = ();

        fn handle_message(&mut self, _: Instant, _: NodeId, _: u64) {}
        fn handle_input(&mut self, _: Instant, n: u64) {
            self.next += 1;
            let token = PersistToken(self.next);
            self.written.push((token, n));
            self.out.push_back(Output::Persist {
                record: Bytes::copy_from_slice(&n.to_le_bytes()),
                token,
            });
        }
        fn handle_timer(&mut self, _: Instant, _: ()) {}
        fn handle_persisted(&mut self, _: Instant, token: PersistToken) {
            if let Some(&(_, n)) = self.written.iter().find(|(t, _)| *t == token) {
                self.out.push_back(Output::Event(n));
            }
        }
        fn poll_output(&mut self) -> Option<Output<Self>> {
            self.out.pop_front()
        }
        fn counters(&self) -> Counters {
            Counters::default()
        }
    }

    impl Recover for Diary {
        type Config = ();
        fn recover(_: &(), ctx: RecoveryContext) -> Result<Self, ft_core::RecoveryError> {
            Ok(Diary {
                ctx,
                next: 0,
                written: Vec::new(),
                out: VecDeque::new(),
            })
        }
    }

    fn small() -> FileLogOptions {
        FileLogOptions {
            segment_size: 1 << 20,
            ..FileLogOptions::default()
        }
    }

    #[tokio::test]
    async fn a_fresh_dir_is_the_first_life_and_each_open_the_next() {
        let dir = TestDir::new("durable-lives");
        // A directory that does not exist yet is created.
        let path = dir.path().join("node");
        assert_eq!(incarnation(&path).unwrap(), None);

        let first = open_with::<Diary>(&(), NodeId(3), &path, 1, small())
            .await
            .unwrap();
        assert_eq!(first.incarnation, Incarnation::FIRST);
        assert_eq!(first.core.ctx.incarnation, Incarnation::FIRST);
        assert_eq!(first.core.ctx.node, NodeId(3));
        assert!(first.core.ctx.records.is_empty());
        assert_eq!(first.records, 0);
        assert_eq!(incarnation(&path).unwrap(), Some(Incarnation::FIRST));
        first
            .log
            .append_blocking(&[Bytes::from("a"), Bytes::from("b")])
            .unwrap();
        let seed0 = first.core.ctx.seed;
        drop(first);

        let second = open_with::<Diary>(&(), NodeId(3), &path, 1, small())
            .await
            .unwrap();
        assert_eq!(second.incarnation, Incarnation(1));
        assert_eq!(second.core.ctx.incarnation, Incarnation(1));
        assert_eq!(
            second.core.ctx.records,
            vec![Bytes::from("a"), Bytes::from("b")]
        );
        assert_eq!(second.records, 2);
        assert_ne!(second.core.ctx.seed, seed0, "each life its own stream");
        assert_eq!(second.core.ctx.seed, life_seed(1, Incarnation(1)));
        second.log.append_blocking(&[Bytes::from("c")]).unwrap();
        drop(second);

        assert_eq!(
            records(&path).unwrap(),
            vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]
        );
        let third = open_with::<Diary>(&(), NodeId(3), &path, 1, small())
            .await
            .unwrap();
        assert_eq!(third.incarnation, Incarnation(2));
        assert_eq!(third.records, 3);
    }

    #[tokio::test]
    async fn what_a_driven_life_persisted_is_what_the_next_life_recovers() {
        let dir = TestDir::new("durable-driven");
        let net = MemNetwork::new(16);
        for life in 0..3u64 {
            let opened = open_with::<Diary>(&(), NodeId(1), dir.path(), 9, small())
                .await
                .unwrap();
            assert_eq!(opened.incarnation, Incarnation(life));
            let expected: Vec<Bytes> = (0..life * 2)
                .map(|n| Bytes::copy_from_slice(&n.to_le_bytes()))
                .collect();
            assert_eq!(opened.core.ctx.records, expected);
            let (mut handle, task) = crate::spawn(
                opened.core,
                net.join(NodeId(1)),
                TokioClock,
                opened.log,
                DriverConfig::default(),
            );
            for n in life * 2..life * 2 + 2 {
                handle.input(n).unwrap();
                // Reported only once durable.
                let durable = tokio::time::timeout(Duration::from_secs(10), handle.next_event());
                assert_eq!(durable.await.unwrap(), Some(n));
            }
            // A crash: the task is stopped without a word to the core.
            task.abort();
            let _ = task.await;
        }
    }

    #[test]
    fn a_second_life_on_a_running_directory_is_refused() {
        let dir = TestDir::new("durable-twice");
        let now = Instant::now();
        let first = open_blocking::<Diary>(&(), NodeId(1), dir.path(), 0, small(), now).unwrap();
        let second = open_blocking::<Diary>(&(), NodeId(1), dir.path(), 0, small(), now);
        assert!(
            matches!(second, Err(StorageError::Locked { .. })),
            "{:?}",
            second.err()
        );
        assert!(matches!(
            records(dir.path()),
            Err(StorageError::Locked { .. })
        ));
        // The store is not held: the running life's incarnation reads.
        assert_eq!(incarnation(dir.path()).unwrap(), Some(first.incarnation));
        // The refused start took no incarnation: the next life is the second.
        drop(first);
        let next = open_blocking::<Diary>(&(), NodeId(1), dir.path(), 0, small(), now).unwrap();
        assert_eq!(next.incarnation, Incarnation(1));
    }

    #[test]
    fn a_damaged_incarnation_is_an_error_not_a_guess() {
        let dir = TestDir::new("durable-damaged");
        let put = |value: &[u8]| {
            // Opened and dropped each time: the store's directory is locked
            // while a store has it open, and `open_blocking` opens it too.
            let store = FileStore::open(dir.path().join(STORE_DIR)).unwrap();
            store.put_sync(INCARNATION_KEY, value).unwrap();
        };
        put(b"\x01\x02\x03");
        let opened = open_blocking::<Diary>(&(), NodeId(1), dir.path(), 0, small(), Instant::now());
        assert!(matches!(opened, Err(StorageError::Corrupt { .. })));
        assert!(matches!(
            incarnation(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));

        put(&u64::MAX.to_le_bytes());
        let opened = open_blocking::<Diary>(&(), NodeId(1), dir.path(), 0, small(), Instant::now());
        assert!(matches!(opened, Err(StorageError::Rejected(_))));
    }
}

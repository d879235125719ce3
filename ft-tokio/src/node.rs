//! [`RpcNode`]: an RPC node on a real transport, in a few lines.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use ft_core::NodeId;
//! use ft_rpc::rpc::{CallOptions, Semantics};
//! use ft_tokio::RpcNode;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
//! // The server: node 0, durable (its identity and its exactly-once
//! // records live in a directory), answering "hello" to everything.
//! let server = RpcNode::builder(NodeId(0))
//!     .peer(NodeId(0), addr(7000))
//!     .peer(NodeId(1), addr(7001))
//!     .data_dir("/var/lib/my-service")
//!     .serve(|_id, _request: Bytes, _deadline| async { Bytes::from("hello") })
//!     .await?;
//! // A client-only node, elsewhere: a fresh identity every start.
//! let client = RpcNode::builder(NodeId(1))
//!     .peer(NodeId(0), addr(7000))
//!     .peer(NodeId(1), addr(7001))
//!     .client_only()
//!     .await?;
//! let reply = client
//!     .client()
//!     .call(NodeId(0), Bytes::from("hi"), CallOptions::within(Semantics::AtMostOnce, Duration::from_secs(5)))
//!     .await?;
//! assert_eq!(reply, Bytes::from("hello"));
//! client.shutdown().await?;
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Identity: never reused by accident
//!
//! A node's identity on the wire is its id and its *incarnation*. A server
//! matches retransmissions to its records by (client, incarnation,
//! sequence number), so a process that restarted under the identity of its
//! previous life would be handed that life's replies. The builder gives
//! every start a fresh incarnation:
//!
//! * with a [`data_dir`](RpcNodeBuilder::data_dir), the next one of the
//!   directory's life counter, made durable before the node exists
//!   ([`durable::open`]); the directory also holds the
//!   node's exactly-once completion records and their effects;
//! * without, an *ephemeral* incarnation read from the system clock
//!   (nanoseconds since 1970): it cannot repeat, and it grows from one
//!   start to the next as long as the clock does not step back. Such a node
//!   keeps nothing across restarts, so it refuses exactly-once calls
//!   ([`Refusal::NoStableStorage`](ft_rpc::rpc::Refusal)) instead of
//!   promising what it would forget.
//!
//! As a second line of defence, a server never answers a retransmission
//! with the reply of a *different* request recorded under the same identity
//! ([`RpcError::Mismatch`](ft_rpc::rpc::RpcError::Mismatch)).
//!
//! # Effects
//!
//! A handler may return a [`Reply`] carrying the
//! state change the call made; under exactly-once it is made durable in the
//! same record as the call's completion. [`RpcNodeBuilder::open`] reads
//! them back ([`Prepared::effects`]) so the application rebuilds its state
//! before it serves: an effect made that way is applied exactly once.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ft_core::driver::driver;
use ft_core::{
    Channel, Counters, DriverConfig, DriverError, DriverStats, Incarnation, NodeId, Recover,
    RecoveryContext, StableLog, StatsReader, StorageError,
};
use ft_rpc::handle::{Reply, RpcClient, ServeStats, serve};
use ft_rpc::rpc::{CallId, DurableRecords, Reincarnation, Rpc, RpcConfig};
use ft_storage::FileLog;
use tokio::task::JoinHandle;

use crate::clock::TokioClock;
use crate::spawn::NoLog;
use crate::{TcpChannel, UdpChannel, durable};

/// The transport an [`RpcNode`] runs over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// UDP datagrams ([`UdpChannel`]): the default.
    #[default]
    Udp,
    /// TCP connections carrying framed datagrams ([`TcpChannel`]).
    Tcp,
}

/// Why an [`RpcNode`] did not start. Nothing was served or called.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node's own address was not declared with
    /// [`peer`](RpcNodeBuilder::peer).
    #[error("{0} has no address: declare it with .peer({0}, addr)")]
    NoAddress(NodeId),
    /// The configuration asks for something this node cannot do (say, a
    /// call log without a data directory).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding the transport failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Opening the data directory failed (locked by another process,
    /// damaged, ...).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Builds an [`RpcNode`]: see the [module docs](self).
#[derive(Debug)]
pub struct RpcNodeBuilder {
    me: NodeId,
    peers: BTreeMap<NodeId, SocketAddr>,
    transport: Transport,
    data_dir: Option<PathBuf>,
    rpc: RpcConfig,
    driver: DriverConfig,
    seed: Option<u64>,
}

/// What the node's dispatcher and driver did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Computations served, handler panics, this node's calls answered and
    /// failed.
    pub serve: ServeStats,
    /// Datagrams, decode failures, persists, timers.
    pub driver: DriverStats,
    /// The RPC core's own counters: messages, retransmissions, persists,
    /// compactions.
    pub core: Counters,
}

impl RpcNodeBuilder {
    /// Declares node `id` at `addr`: every node of the system, this one
    /// included (its address is the one it binds), each once.
    pub fn peer(mut self, id: NodeId, addr: SocketAddr) -> Self {
        self.peers.insert(id, addr);
        self
    }

    /// The transport (default [`Transport::Udp`]).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Makes the node durable: its life counter, its exactly-once
    /// completion records and their effects live in `dir` (see
    /// [`durable`]). Without one, the node has an ephemeral
    /// identity and refuses exactly-once calls.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Adjusts the RPC configuration (back-off, retry budget, bounds,
    /// orphans, lease). Its `peers` are the declared ones, whatever this
    /// sets.
    pub fn configure(mut self, f: impl FnOnce(&mut RpcConfig)) -> Self {
        f(&mut self.rpc);
        self
    }

    /// The driver's configuration (its frame codec is fitted to the
    /// transport).
    pub fn driver_config(mut self, config: DriverConfig) -> Self {
        self.driver = config;
        self
    }

    /// Seeds the node's random numbers (back-off jitter, nonces); by
    /// default from the clock. A durable node mixes in its incarnation, so
    /// each life draws different numbers.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Opens the node's identity and records: the data directory, if any,
    /// is recovered and the new incarnation made durable. The application
    /// can then rebuild its state from [`Prepared::effects`] before it
    /// serves.
    ///
    /// # Errors
    /// [`NodeError::NoAddress`], [`NodeError::Config`], and
    /// [`NodeError::Storage`] if the directory cannot be opened (locked by
    /// another process, damaged).
    ///
    /// # Example
    ///
    /// A durable server whose state is a running total: each exactly-once
    /// call's request is the number to add, and also its effect. A restart
    /// rebuilds the total by replaying the effects.
    ///
    /// ```
    /// # use std::net::UdpSocket;
    /// # use std::time::Duration;
    /// use bytes::Bytes;
    /// use ft_core::NodeId;
    /// use ft_rpc::handle::Reply;
    /// use ft_rpc::rpc::{CallOptions, Semantics};
    /// use ft_storage::testdir::TestDir;
    /// use ft_tokio::RpcNode;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (s, c) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// # let (server_addr, client_addr) = (s.local_addr()?, c.local_addr()?);
    /// # drop((s, c));
    /// # let client = RpcNode::builder(NodeId(1)).peer(NodeId(0), server_addr).peer(NodeId(1), client_addr).client_only().await?;
    ///
    /// let dir = TestDir::new("doc-effects"); // removed when dropped
    /// let server = || {
    ///     RpcNode::builder(NodeId(0))
    ///         .peer(NodeId(0), server_addr)
    ///         .peer(NodeId(1), client_addr)
    ///         .data_dir(dir.path())
    /// };
    /// let first = server().open().await?;
    /// assert!(first.effects().is_empty(), "a new directory");
    /// let first = first
    ///     .serve(|_id, add: Bytes, _deadline| async move { Reply::with_effect(Bytes::new(), add) })
    ///     .await?;
    /// for add in [5u8, 7] {
    ///     let options = CallOptions::within(Semantics::ExactlyOnce, Duration::from_secs(5));
    ///     client.client().call(NodeId(0), Bytes::from(vec![add]), options).await?;
    /// }
    /// first.shutdown().await?;
    ///
    /// // The next life replays the effects before it serves.
    /// let second = server().open().await?;
    /// let total: u64 = second.effects().iter().map(|(_id, add)| u64::from(add[0])).sum();
    /// assert_eq!(total, 12);
    /// # client.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open(self) -> Result<Prepared, NodeError> {
        let addr = *self
            .peers
            .get(&self.me)
            .ok_or(NodeError::NoAddress(self.me))?;
        let mut rpc = self.rpc.clone();
        rpc.peers = self.peers.keys().copied().collect();
        let seed = self.seed.unwrap_or_else(clock_nanos);
        let (log, incarnation, records) = match &self.data_dir {
            Some(dir) => {
                rpc.stable_storage = true;
                // Takes the directory's lock, recovers its log and makes the
                // new incarnation durable; the core it builds is rebuilt
                // below with the final configuration (it never ran).
                let opened = durable::open::<Rpc>(&rpc, self.me, dir, seed).await?;
                (Some(opened.log), opened.incarnation, opened.recovered)
            }
            None => {
                if rpc.orphans.extermination || rpc.orphans.reincarnation == Reincarnation::Gentle {
                    return Err(NodeError::Config(
                        "extermination and gentle reincarnation keep a call log: they need a data_dir"
                            .into(),
                    ));
                }
                rpc.stable_storage = false;
                (None, ephemeral_incarnation(), Vec::new())
            }
        };
        // Typed records: `durable::open` rebuilt the core from these very
        // records, so they read; a record that did not would fail here too,
        // never be skipped.
        let effects = DurableRecords::read(&records)
            .map_err(|e| StorageError::Corrupt {
                location: self
                    .data_dir
                    .as_deref()
                    .map(|d| d.join(durable::LOG_DIR).display().to_string())
                    .unwrap_or_default(),
                offset: 0,
                reason: format!("the RPC records do not read: {e}"),
            })?
            .effects;
        Ok(Prepared {
            me: self.me,
            addr,
            peers: self.peers,
            transport: self.transport,
            driver: self.driver,
            effects,
            rpc,
            log,
            incarnation,
            records,
            seed: durable::life_seed(seed, incarnation),
        })
    }

    /// [`open`](Self::open), then [`Prepared::serve`] with `handler`.
    ///
    /// # Errors
    /// As [`open`](Self::open) and [`Prepared::serve`].
    pub async fn serve<H, F, R>(self, handler: H) -> Result<RpcNode, NodeError>
    where
        H: Fn(CallId, Bytes, Instant) -> F + Send + 'static,
        F: Future<Output = R> + Send + 'static,
        R: Into<Reply> + Send + 'static,
    {
        self.open().await?.serve(handler).await
    }

    /// [`open`](Self::open), then [`Prepared::client_only`].
    ///
    /// # Errors
    /// As [`open`](Self::open) and [`Prepared::client_only`].
    pub async fn client_only(self) -> Result<RpcNode, NodeError> {
        self.open().await?.client_only().await
    }
}

/// A node whose identity and records are open, not yet running: rebuild
/// the application's state from [`effects`](Self::effects), then
/// [`serve`](Self::serve).
#[derive(Debug)]
pub struct Prepared {
    me: NodeId,
    addr: SocketAddr,
    peers: BTreeMap<NodeId, SocketAddr>,
    transport: Transport,
    driver: DriverConfig,
    rpc: RpcConfig,
    log: Option<FileLog>,
    incarnation: Incarnation,
    records: Vec<bytes::Bytes>,
    seed: u64,
    effects: Vec<(CallId, Bytes)>,
}

impl Prepared {
    /// This life's incarnation (durable already, with a data directory).
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The effects of the exactly-once calls completed in earlier lives, in
    /// the order they were made durable: replay them to rebuild the state
    /// the handler works on.
    pub fn effects(&self) -> &[(CallId, Bytes)] {
        &self.effects
    }

    /// Binds the transport and runs the node on tokio, serving calls with
    /// `handler` (see [`ft_rpc::handle`] for handlers, cancellation and
    /// panics).
    ///
    /// # Errors
    /// [`NodeError::Bind`] if the transport cannot bind its address.
    pub async fn serve<H, F, R>(self, handler: H) -> Result<RpcNode, NodeError>
    where
        H: Fn(CallId, Bytes, Instant) -> F + Send + 'static,
        F: Future<Output = R> + Send + 'static,
        R: Into<Reply> + Send + 'static,
    {
        let channel = self.bind().await?;
        Ok(self.run(channel, handler))
    }

    /// Binds the transport and runs a node that only calls: calls that
    /// reach it are refused ([`Refusal::NotServing`](ft_rpc::rpc::Refusal)).
    ///
    /// # Errors
    /// [`NodeError::Bind`] if the transport cannot bind its address.
    pub async fn client_only(mut self) -> Result<RpcNode, NodeError> {
        // The core refuses calls; the handler below never runs.
        self.rpc.serves = false;
        let channel = self.bind().await?;
        Ok(self.run(channel, |_, _, _| async { Bytes::new() }))
    }

    async fn bind(&self) -> Result<Box<dyn Channel>, NodeError> {
        let bind_err = |source| NodeError::Bind {
            addr: self.addr,
            source,
        };
        Ok(match self.transport {
            Transport::Udp => Box::new(
                UdpChannel::bind(self.me, self.addr, self.peers.clone())
                    .await
                    .map_err(bind_err)?,
            ),
            Transport::Tcp => Box::new(
                TcpChannel::bind(self.me, self.addr, self.peers.clone())
                    .await
                    .map_err(bind_err)?,
            ),
        })
    }

    fn run<H, F, R>(self, channel: Box<dyn Channel>, handler: H) -> RpcNode
    where
        H: Fn(CallId, Bytes, Instant) -> F + Send + 'static,
        F: Future<Output = R> + Send + 'static,
        R: Into<Reply> + Send + 'static,
    {
        let config = self.driver;
        let log: Box<dyn StableLog> = match self.log {
            Some(log) => Box::new(log),
            None => Box::new(NoLog),
        };
        let ctx = RecoveryContext {
            node: self.me,
            incarnation: self.incarnation,
            records: self.records,
            seed: self.seed,
            now: Instant::now(),
        };
        // `open` rebuilt a core from these very records already and would
        // have failed there: recovery is deterministic, so this cannot.
        let core = Rpc::recover(&self.rpc, ctx).expect("open() recovered from these records");
        let (handle, run) = driver(core, channel, TokioClock, log, config);
        let stats = handle.stats_reader();
        let (client, dispatch) = RpcClient::for_driver(&handle);
        let task = tokio::spawn(async move {
            let (result, ()) = futures::join!(run, serve(handle, dispatch, handler));
            result
        });
        RpcNode {
            client,
            incarnation: self.incarnation,
            task,
            stats,
        }
    }
}

/// An RPC node running on tokio: its [`client`](Self::client), its
/// [`stats`](Self::stats), and [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct RpcNode {
    client: RpcClient,
    incarnation: Incarnation,
    task: JoinHandle<Result<(), DriverError>>,
    stats: StatsReader,
}

impl RpcNode {
    /// A builder for node `me`.
    ///
    /// # Example
    ///
    /// A server and a client-only node on the loopback interface, over
    /// UDP. Every node's address is declared up front, so the example
    /// first asks the system for two free ports.
    ///
    /// ```
    /// use std::net::UdpSocket;
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use ft_core::NodeId;
    /// use ft_rpc::rpc::{CallOptions, Semantics};
    /// use ft_tokio::RpcNode;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (s, c) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// let (server_addr, client_addr) = (s.local_addr()?, c.local_addr()?);
    /// drop((s, c)); // free again, for the nodes to bind
    ///
    /// let server = RpcNode::builder(NodeId(0))
    ///     .peer(NodeId(0), server_addr)
    ///     .peer(NodeId(1), client_addr)
    ///     .serve(|_id, request: Bytes, _deadline| async move {
    ///         Bytes::from([&b"hello, "[..], &request].concat())
    ///     })
    ///     .await?;
    /// let client = RpcNode::builder(NodeId(1))
    ///     .peer(NodeId(0), server_addr)
    ///     .peer(NodeId(1), client_addr)
    ///     .client_only()
    ///     .await?;
    ///
    /// let options = CallOptions::within(Semantics::AtMostOnce, Duration::from_secs(5));
    /// let reply = client.client().call(NodeId(0), Bytes::from("ft"), options).await?;
    /// assert_eq!(reply, Bytes::from("hello, ft"));
    /// client.shutdown().await?;
    /// server.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(me: NodeId) -> RpcNodeBuilder {
        RpcNodeBuilder {
            me,
            peers: BTreeMap::new(),
            transport: Transport::Udp,
            data_dir: None,
            rpc: RpcConfig::new(Vec::new()),
            driver: DriverConfig::default(),
            seed: None,
        }
    }

    /// The node's client: clone it into every task that calls.
    pub fn client(&self) -> &RpcClient {
        &self.client
    }

    /// This life's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// What the node did so far.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            serve: self.client.serve_stats(),
            driver: self.stats.stats(),
            core: self.stats.counters(),
        }
    }

    /// Stops the node once it has handled what was sent to it before, and
    /// waits for it; calls still waiting end with
    /// [`CallError::Closed`](ft_rpc::handle::CallError::Closed).
    ///
    /// # Errors
    /// What the driver stopped with, if it failed (a transport or storage
    /// error) rather than being shut down.
    pub async fn shutdown(self) -> Result<(), DriverError> {
        self.client.shutdown();
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

/// An incarnation for a node without stable storage: the system clock in
/// nanoseconds since 1970 (1 if the clock reads before it), so it grows
/// from one start to the next and never repeats, unless the clock steps
/// back between them. Then a server takes the new life for an older one and
/// answers its calls `Forgotten` (executed: unknown) until its lease on the
/// client runs out or the clock passes the previous start; a node with a
/// data directory keeps its incarnation there and has no such window.
pub fn ephemeral_incarnation() -> Incarnation {
    Incarnation(clock_nanos().max(1))
}

/// The wall clock in nanoseconds since the Unix epoch (0 before it): seeds
/// and per-life nonces of the nodes here.
pub(crate) fn clock_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

//! [`TcpChannel`]: the [`Channel`] contract over TCP connections.
//!
//! # Wire format
//!
//! Every connection carries frames, each a length and that many bytes:
//!
//! ```text
//! +-----------------+----------------+
//! | length  u32 LE  | length bytes   |
//! +-----------------+----------------+
//! ```
//!
//! The first frame on a connection is the dialer's hello, 12 bytes long:
//! the magic `b"ftT1"` (format version 1) and the dialer's [`NodeId`] as a
//! `u64` LE. Every later frame is one datagram's payload, of at most
//! [`max_datagram`](Channel::max_datagram) bytes. Only the dialer writes:
//! the acceptor never sends on a connection it accepted.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use ft_core::{Channel, ChannelError, NodeId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::{Instant, timeout};
use tracing::{debug, trace, warn};

use crate::book::{AddressBook, canonical, lock};

/// The magic and version that open every hello frame.
pub const TCP_HELLO_MAGIC: [u8; 4] = *b"ftT1";

/// The length of the hello frame's body: magic and [`NodeId`].
const HELLO_LEN: u32 = 4 + 8;

/// The largest datagram a [`TcpChannel`] carries by default: the largest
/// IPv4 UDP payload, so that the same frame sizes (and
/// [`DriverConfig::default`](ft_core::DriverConfig)'s codec) work over every
/// transport.
pub const TCP_DEFAULT_MAX_DATAGRAM: usize = 65_507;

/// How many frames a writer gathers into one write, at most, in bytes: big
/// enough to amortize system calls under load, small enough that one write
/// does not hold up the next batch for long.
const BATCH_BYTES: usize = 256 * 1024;

/// The buffer of each accepted connection's reader.
const READ_BUF: usize = 16 * 1024;

/// How a [`TcpChannel`] bounds its queues and times its connections.
///
/// Memory is bounded by the queues: at most
/// `inbox_capacity × max_datagram` bytes of received datagrams,
/// `outbound_capacity × max_datagram` bytes waiting per peer, and one frame
/// of at most `max_datagram` bytes being read per accepted connection (of
/// which there are at most `max_inbound`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpConfig {
    /// The largest datagram sent or accepted (default
    /// [`TCP_DEFAULT_MAX_DATAGRAM`]; capped at `u32::MAX`). A frame whose
    /// length prefix exceeds it closes its connection.
    pub max_datagram: usize,
    /// Received datagrams waiting for `recv`, at most (default 1024); more
    /// are dropped and counted.
    pub inbox_capacity: usize,
    /// Datagrams waiting to be written to one peer, at most (default 1024);
    /// more are dropped and counted, so `send` never waits for the network.
    pub outbound_capacity: usize,
    /// Accepted connections open at once, at most (default 256); more are
    /// closed as soon as they are accepted.
    pub max_inbound: usize,
    /// How long dialing a peer may take (default 2 s).
    pub connect_timeout: Duration,
    /// How long an accepted connection may take to send its hello (default
    /// 5 s).
    pub hello_timeout: Duration,
    /// How long one write may block (default 5 s): a peer that stops
    /// reading for longer is treated as gone and its connection dropped.
    pub write_timeout: Duration,
    /// The wait before dialing a peer again after a failed dial (default
    /// 10 ms), doubled after each further failure.
    pub backoff_min: Duration,
    /// The longest wait between dials (default 500 ms).
    pub backoff_max: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_datagram: TCP_DEFAULT_MAX_DATAGRAM,
            inbox_capacity: 1024,
            outbound_capacity: 1024,
            max_inbound: 256,
            connect_timeout: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
        }
    }
}

impl TcpConfig {
    /// The same configuration with `max_datagram`.
    #[must_use]
    pub fn with_max_datagram(mut self, max_datagram: usize) -> Self {
        self.max_datagram = max_datagram;
        self
    }

    /// The same configuration with `inbox_capacity` (at least 1).
    #[must_use]
    pub fn with_inbox_capacity(mut self, inbox_capacity: usize) -> Self {
        self.inbox_capacity = inbox_capacity;
        self
    }

    /// The same configuration with `outbound_capacity` (at least 1).
    #[must_use]
    pub fn with_outbound_capacity(mut self, outbound_capacity: usize) -> Self {
        self.outbound_capacity = outbound_capacity;
        self
    }

    /// The same configuration with `max_inbound`.
    #[must_use]
    pub fn with_max_inbound(mut self, max_inbound: usize) -> Self {
        self.max_inbound = max_inbound;
        self
    }

    /// The same configuration with `connect_timeout`.
    #[must_use]
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// The same configuration with `hello_timeout`.
    #[must_use]
    pub fn with_hello_timeout(mut self, hello_timeout: Duration) -> Self {
        self.hello_timeout = hello_timeout;
        self
    }

    /// The same configuration with `write_timeout`.
    #[must_use]
    pub fn with_write_timeout(mut self, write_timeout: Duration) -> Self {
        self.write_timeout = write_timeout;
        self
    }

    /// The same configuration with the reconnect backoff between `min` and
    /// `max`.
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// The configuration with every value in range.
    fn normalized(mut self) -> Self {
        self.max_datagram = self.max_datagram.min(u32::MAX as usize);
        self.inbox_capacity = self.inbox_capacity.max(1);
        self.outbound_capacity = self.outbound_capacity.max(1);
        self.backoff_max = self.backoff_max.max(self.backoff_min);
        self
    }
}

/// A snapshot of a [`TcpChannel`]'s counters, all since it was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpStats {
    /// Datagrams written to a connection (or delivered to oneself).
    pub sent: u64,
    /// Datagrams put in the inbox for `recv`.
    pub received: u64,
    /// Datagrams dropped by `send` because the peer's outbound queue was
    /// full.
    pub dropped_outbound_full: u64,
    /// Datagrams dropped because no connection to the peer could be made
    /// (the dial failed, or the channel was waiting before dialing again).
    pub dropped_unconnected: u64,
    /// Datagrams dropped because the write carrying them failed.
    pub dropped_write_failed: u64,
    /// Received datagrams dropped because the inbox was full.
    pub dropped_inbox_full: u64,
    /// Successful dials.
    pub connects: u64,
    /// Failed dials.
    pub connect_failures: u64,
    /// Dialed connections dropped after they broke (a failed write, or the
    /// peer closed them).
    pub connections_lost: u64,
    /// Accepted connections whose hello was good.
    pub accepted: u64,
    /// Accepted connections closed before or at their hello: over the
    /// `max_inbound` limit, no hello in time, a malformed hello, a sender
    /// not in the book or connecting from another IP than the book's.
    pub rejected: u64,
    /// Accepted connections closed because a frame's length prefix exceeded
    /// `max_datagram`.
    pub oversized_frames: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped_outbound_full: AtomicU64,
    dropped_unconnected: AtomicU64,
    dropped_write_failed: AtomicU64,
    dropped_inbox_full: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    connections_lost: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    oversized_frames: AtomicU64,
}

/// Adds `n`. Relaxed: each counter is read on its own.
fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// A [`Channel`] over TCP: datagrams as length-prefixed frames on one
/// connection per direction per pair of peers.
///
/// # Connections
///
/// A node dials a peer lazily, on the first [`send`](Channel::send) to it,
/// and writes every datagram for that peer on the connection it dialed. It
/// reads datagrams only from connections it accepted; each starts with the
/// dialer's hello, which names the dialer. So between two nodes that both
/// send there are two connections, one dialed by each: when both dial at
/// once there is nothing to resolve, no tie-break, and each side's
/// connection lives and dies on its own.
///
/// An accepted connection is believed only if the node its hello names is
/// in the book, is not the local node, and connected from the IP the book
/// has for it (any port: the dialer's port is ephemeral). Dialers bind
/// their outgoing sockets to the listening IP when it is a specific one, so
/// that their connections come from it. A new good connection from a node
/// replaces (closes) the older one from the same node, so at most one
/// accepted connection per peer stays open after its hello.
///
/// # Failures and reconnection
///
/// Datagram semantics: a lost datagram is fine, blocking is not. `send`
/// puts the datagram in the peer's bounded outbound queue and returns at
/// once; a full queue drops it ([`TcpStats::dropped_outbound_full`]). Each
/// peer's writer task takes datagrams from the queue, dialing when it has
/// no connection. When a write fails (or times out, or the peer closes the
/// connection, which the writer notices as soon as it happens), the
/// connection is dropped with the datagrams of that write, and the next
/// datagram dials again. After a failed dial, datagrams are dropped without
/// dialing for a backoff that doubles from
/// [`TcpConfig::backoff_min`] to [`TcpConfig::backoff_max`], so a peer that
/// is down is not dialed for every datagram.
///
/// # Bounds
///
/// One inbox, bounded by [`TcpConfig::inbox_capacity`], receives from every
/// connection; when it is full, new datagrams are dropped and counted. A
/// frame's length is checked before anything is allocated for it: a length
/// over [`max_datagram`](Channel::max_datagram) closes the connection
/// ([`TcpStats::oversized_frames`]), so hostile input can cost at most one
/// `max_datagram` buffer per connection, and connections are bounded by
/// [`TcpConfig::max_inbound`]. See [`TcpConfig`] for the resulting memory
/// bound.
///
/// # Tasks
///
/// The channel runs on the tokio runtime it was bound in: one task accepts
/// connections, one reads each accepted connection, one writes to each peer
/// sent to. Dropping the channel stops them all (each stops at its next
/// await point); [`shutdown`](Self::shutdown) also waits until they have
/// stopped and closed their sockets, for example before binding the same
/// port again.
///
/// Sending to oneself is delivered straight to one's own inbox.
///
/// `TCP_NODELAY` is set on every connection: datagrams are request and
/// reply messages that should leave at once, and the writer already batches
/// what is queued into one write.
pub struct TcpChannel {
    shared: Arc<Shared>,
    /// `recv` takes `&self`: a tokio mutex makes the receiver shareable,
    /// and both its `lock` and the receiver's `recv` are cancel safe.
    inbox: tokio::sync::Mutex<mpsc::Receiver<(NodeId, Bytes)>>,
    stop: watch::Sender<bool>,
    /// Ends (`None`) once every task has stopped.
    tasks_done: Option<mpsc::Receiver<()>>,
}

/// What the channel's tasks share with it.
struct Shared {
    local: NodeId,
    local_addr: SocketAddr,
    config: TcpConfig,
    book: AddressBook,
    inbox: mpsc::Sender<(NodeId, Bytes)>,
    /// Each peer's outbound queue, whose receiver its writer task owns.
    writers: Mutex<BTreeMap<NodeId, mpsc::Sender<Bytes>>>,
    /// The open accepted connection of each peer, by connection number;
    /// dropping the sender closes that connection.
    inbound: Mutex<BTreeMap<NodeId, (u64, oneshot::Sender<()>)>>,
    next_conn: AtomicU64,
    tasks: Tasks,
    counters: Counters,
}

/// Spawns the channel's tasks so that they stop together.
struct Tasks {
    /// The runtime the channel was bound in: tasks started by a `send` from
    /// elsewhere (another runtime, a plain thread) still run there.
    runtime: tokio::runtime::Handle,
    stop: watch::Receiver<bool>,
    /// Cloned into every task and dropped when it ends; `None` once the
    /// channel is shut down, so no task starts after that.
    alive: Mutex<Option<mpsc::Sender<()>>>,
}

impl Tasks {
    /// Spawns `task`, to run until it ends or the channel stops. Returns
    /// false, spawning nothing, if the channel has stopped.
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) -> bool {
        let Some(alive) = lock(&self.alive).clone() else {
            return false;
        };
        let mut stop = self.stop.clone();
        self.runtime.spawn(async move {
            tokio::select! {
                // An error means the channel is gone: stop too.
                _ = stop.wait_for(|stopped| *stopped) => {}
                () = task => {}
            }
            // The task (and its sockets) is dropped by now.
            drop(alive);
        });
        true
    }
}

impl TcpChannel {
    /// Listens on `addr` for the node `local`, with `peers` as the address
    /// book and the default [`TcpConfig`].
    ///
    /// Port 0 lets the system choose; [`local_addr`](Self::local_addr) says
    /// which, and [`set_peer`](Self::set_peer) adds the peers once their
    /// addresses are known. Must be called within a tokio runtime, which
    /// then runs the channel's tasks.
    ///
    /// # Errors
    /// The error of binding the listener.
    pub async fn bind(
        local: NodeId,
        addr: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> io::Result<Self> {
        Self::bind_with(local, addr, peers, TcpConfig::default()).await
    }

    /// [`bind`](Self::bind) with `config`.
    ///
    /// # Errors
    /// The error of binding the listener.
    pub async fn bind_with(
        local: NodeId,
        addr: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        config: TcpConfig,
    ) -> io::Result<Self> {
        let config = config.normalized();
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (inbox_tx, inbox_rx) = mpsc::channel(config.inbox_capacity);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            local,
            local_addr,
            config,
            book: AddressBook::new(peers),
            inbox: inbox_tx,
            writers: Mutex::new(BTreeMap::new()),
            inbound: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(0),
            tasks: Tasks {
                runtime: tokio::runtime::Handle::current(),
                stop: stop_rx,
                alive: Mutex::new(Some(alive_tx)),
            },
            counters: Counters::default(),
        });
        shared
            .tasks
            .spawn(accept_loop(Arc::clone(&shared), listener));
        debug!(node = %local, %local_addr, "tcp channel listening");
        Ok(TcpChannel {
            shared,
            inbox: tokio::sync::Mutex::new(inbox_rx),
            stop: stop_tx,
            tasks_done: Some(alive_rx),
        })
    }

    /// The address the listener is bound to (with the port the system
    /// chose, if it was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The configuration in force.
    pub fn config(&self) -> TcpConfig {
        self.shared.config
    }

    /// The address book: where each known node listens.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.shared.book.snapshot()
    }

    /// Where the book says `node` listens.
    pub fn peer_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.shared.book.get(node)
    }

    /// Puts `node` at `addr` in the book, returning its previous address.
    ///
    /// The connection dialed to `node`'s old address (if any) is closed
    /// once the datagrams already queued for it are written; the next send
    /// dials the new one. A wildcard IP is stored as loopback, and an
    /// IPv4-mapped IPv6 address as the IPv4 one.
    pub fn set_peer(&self, node: NodeId, addr: SocketAddr) -> Option<SocketAddr> {
        let old = self.shared.book.insert(node, addr);
        lock(&self.shared.writers).remove(&node);
        old
    }

    /// Takes `node` out of the book: sends to it are refused as
    /// unreachable, its dialed connection is closed (after what is queued),
    /// and its new connections are rejected. An accepted connection it has
    /// open stays open.
    pub fn remove_peer(&self, node: NodeId) -> Option<SocketAddr> {
        let old = self.shared.book.remove(node);
        lock(&self.shared.writers).remove(&node);
        old
    }

    /// The channel's counters.
    pub fn stats(&self) -> TcpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.shared.counters;
        TcpStats {
            sent: get(&c.sent),
            received: get(&c.received),
            dropped_outbound_full: get(&c.dropped_outbound_full),
            dropped_unconnected: get(&c.dropped_unconnected),
            dropped_write_failed: get(&c.dropped_write_failed),
            dropped_inbox_full: get(&c.dropped_inbox_full),
            connects: get(&c.connects),
            connect_failures: get(&c.connect_failures),
            connections_lost: get(&c.connections_lost),
            accepted: get(&c.accepted),
            rejected: get(&c.rejected),
            oversized_frames: get(&c.oversized_frames),
        }
    }

    /// Stops the channel's tasks and waits until they have stopped: the
    /// listener and every connection are closed when this returns, so the
    /// port can be bound again. Datagrams still queued are lost.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        lock(&self.shared.tasks.alive).take();
        if let Some(mut done) = self.tasks_done.take() {
            // Every task holds a sender; `None` once all have ended.
            while done.recv().await.is_some() {}
        }
        debug!(node = %self.shared.local, "tcp channel shut down");
    }
}

impl Drop for TcpChannel {
    fn drop(&mut self) {
        // Each task stops at its next await point; `shutdown` waits for it.
        self.stop.send_replace(true);
        lock(&self.shared.tasks.alive).take();
    }
}

impl fmt::Debug for TcpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpChannel")
            .field("local", &self.shared.local)
            .field("local_addr", &self.shared.local_addr)
            .field("max_datagram", &self.shared.config.max_datagram)
            .field("stats", &self.stats())
            .finish()
    }
}

#[async_trait]
impl Channel for TcpChannel {
    fn local(&self) -> NodeId {
        self.shared.local
    }

    /// [`TcpConfig::max_datagram`].
    fn max_datagram(&self) -> usize {
        self.shared.config.max_datagram
    }

    /// Queues `datagram` for `to`'s writer and returns without waiting for
    /// the network; see [`TcpChannel`] on what happens next.
    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        let shared = &self.shared;
        let max = shared.config.max_datagram;
        if datagram.len() > max {
            return Err(ChannelError::TooLarge {
                len: datagram.len(),
                max,
            });
        }
        if to == shared.local {
            return match shared.inbox.try_send((to, datagram)) {
                Ok(()) => {
                    bump(&shared.counters.sent);
                    bump(&shared.counters.received);
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    bump(&shared.counters.dropped_inbox_full);
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(ChannelError::Closed),
            };
        }
        // Held only for the lookup and the (non-blocking) queueing.
        let mut writers = lock(&shared.writers);
        if writers.get(&to).is_none_or(mpsc::Sender::is_closed) {
            if !shared.book.contains(to) {
                return Err(ChannelError::Unreachable(to));
            }
            let (tx, rx) = mpsc::channel(shared.config.outbound_capacity);
            if !shared.tasks.spawn(write_loop(Arc::clone(shared), to, rx)) {
                return Err(ChannelError::Closed);
            }
            writers.insert(to, tx);
        }
        let Some(queue) = writers.get(&to) else {
            return Err(ChannelError::Unreachable(to));
        };
        match queue.try_send(datagram) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&shared.counters.dropped_outbound_full);
                trace!(%to, "outbound queue full; datagram dropped");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ChannelError::Closed),
        }
    }

    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        self.inbox
            .lock()
            .await
            .recv()
            .await
            .ok_or(ChannelError::Closed)
    }
}

// ---------------------------------------------------------------- accepting

/// Accepts connections and starts a reader for each, within the limit.
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(shared.config.max_inbound));
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    let reader = read_connection(Arc::clone(&shared), stream, remote, permit);
                    shared.tasks.spawn(reader);
                }
                Err(_) => {
                    bump(&shared.counters.rejected);
                    debug!(%remote, "too many inbound connections; closed a new one");
                }
            },
            // The connection went away between arriving and being accepted.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
            // Out of file descriptors or memory: pause rather than spin; the
            // kernel's backlog holds (or refuses) connections meanwhile.
            Err(e) => {
                warn!(error = %e, "accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why an accepted connection was not believed.
enum Rejected {
    Io(io::Error),
    Timeout,
    BadLength(u32),
    BadMagic,
    Unknown(NodeId),
    WrongIp { expected: IpAddr },
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Io(e) => write!(f, "failed before its hello: {e}"),
            Rejected::Timeout => f.write_str("no hello in time"),
            Rejected::BadLength(len) => write!(f, "hello of {len} bytes, not {HELLO_LEN}"),
            Rejected::BadMagic => f.write_str("hello without the magic"),
            Rejected::Unknown(node) => write!(f, "hello from {node}, which is not a peer"),
            Rejected::WrongIp { expected } => write!(f, "not from {expected}, the peer's IP"),
        }
    }
}

/// Reads one accepted connection: its hello, then its frames into the inbox.
async fn read_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let mut reader = BufReader::with_capacity(READ_BUF, stream);
    let from = match check_hello(&shared, &mut reader, remote).await {
        Ok(from) => from,
        Err(why) => {
            bump(&shared.counters.rejected);
            debug!(%remote, %why, "rejected an inbound connection");
            return;
        }
    };
    bump(&shared.counters.accepted);
    debug!(%remote, %from, "accepted a connection");
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (close_tx, close_rx) = oneshot::channel();
    // Replacing the sender of an older connection from `from` closes it.
    lock(&shared.inbound).insert(from, (conn, close_tx));
    tokio::select! {
        _ = close_rx => debug!(%remote, %from, "closed: replaced by a newer connection"),
        () = read_frames(&shared, &mut reader, from) => {}
    }
    let mut inbound = lock(&shared.inbound);
    if inbound.get(&from).is_some_and(|(c, _)| *c == conn) {
        inbound.remove(&from);
    }
}

/// Reads and checks the hello, within the hello timeout.
async fn check_hello<R: AsyncRead + Unpin>(
    shared: &Shared,
    reader: &mut R,
    remote: SocketAddr,
) -> Result<NodeId, Rejected> {
    let hello = async {
        let len = reader.read_u32_le().await.map_err(Rejected::Io)?;
        if len != HELLO_LEN {
            return Err(Rejected::BadLength(len));
        }
        let mut magic = [0; 4];
        reader.read_exact(&mut magic).await.map_err(Rejected::Io)?;
        if magic != TCP_HELLO_MAGIC {
            return Err(Rejected::BadMagic);
        }
        reader.read_u64_le().await.map(NodeId).map_err(Rejected::Io)
    };
    let from = timeout(shared.config.hello_timeout, hello)
        .await
        .map_err(|_| Rejected::Timeout)??;
    if from == shared.local {
        return Err(Rejected::Unknown(from));
    }
    let expected = shared.book.get(from).ok_or(Rejected::Unknown(from))?.ip();
    if !expected.is_unspecified() && expected != canonical(remote).ip() {
        return Err(Rejected::WrongIp { expected });
    }
    Ok(from)
}

/// Reads frames from `from` into the inbox until the connection ends or
/// breaks the format.
async fn read_frames<R: AsyncRead + Unpin>(shared: &Shared, reader: &mut R, from: NodeId) {
    let max = shared.config.max_datagram;
    loop {
        let len = match reader.read_u32_le().await {
            Ok(len) => len as usize,
            Err(e) => {
                debug!(%from, error = %e, "inbound connection ended");
                return;
            }
        };
        // Checked before allocating: a hostile length costs nothing.
        if len > max {
            bump(&shared.counters.oversized_frames);
            warn!(%from, len, max, "frame longer than max_datagram; connection closed");
            return;
        }
        let mut payload = BytesMut::with_capacity(len);
        let mut body = (&mut *reader).take(len as u64);
        while payload.len() < len {
            match body.read_buf(&mut payload).await {
                Ok(0) => {
                    debug!(%from, "inbound connection ended inside a frame");
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(%from, error = %e, "inbound connection failed inside a frame");
                    return;
                }
            }
        }
        match shared.inbox.try_send((from, payload.freeze())) {
            Ok(()) => bump(&shared.counters.received),
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&shared.counters.dropped_inbox_full);
                trace!(%from, "inbox full; datagram dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

// ----------------------------------------------------------------- dialing

/// One dialed connection, split so that the writer can notice the peer
/// closing it while waiting for datagrams.
struct Conn {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
}

/// What woke a writer.
enum Wake {
    Datagram(Option<Bytes>),
    /// The peer closed the connection (or sent something, which it never
    /// should: the dialed side only writes).
    Closed(io::Result<usize>),
}

/// When a writer may dial again.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    until: Option<Instant>,
}

impl Backoff {
    fn new(config: &TcpConfig) -> Self {
        Backoff {
            min: config.backoff_min,
            max: config.backoff_max,
            next: config.backoff_min,
            until: None,
        }
    }

    fn waiting(&self) -> bool {
        self.until.is_some_and(|until| Instant::now() < until)
    }

    fn failed(&mut self) {
        self.until = Some(Instant::now() + self.next);
        self.next = (self.next * 2).min(self.max);
    }

    fn succeeded(&mut self) {
        self.next = self.min;
        self.until = None;
    }
}

/// Writes the datagrams queued for `peer`, dialing as needed.
async fn write_loop(shared: Arc<Shared>, peer: NodeId, mut queue: mpsc::Receiver<Bytes>) {
    let counters = &shared.counters;
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff::new(&shared.config);
    let mut batch = BytesMut::new();
    let mut scratch = [0u8; 64];
    loop {
        let wake = match conn.as_mut() {
            None => Wake::Datagram(queue.recv().await),
            Some(c) => tokio::select! {
                d = queue.recv() => Wake::Datagram(d),
                r = c.read.read(&mut scratch) => Wake::Closed(r),
            },
        };
        let first = match wake {
            Wake::Datagram(Some(d)) => d,
            // The queue was replaced (the peer moved or left): done.
            Wake::Datagram(None) => return,
            Wake::Closed(Ok(n)) if n > 0 => {
                trace!(%peer, n, "ignored bytes on a dialed connection");
                continue;
            }
            Wake::Closed(r) => {
                bump(&counters.connections_lost);
                debug!(%peer, result = ?r, "peer closed the connection");
                conn = None;
                continue;
            }
        };
        batch.clear();
        if conn.is_none() {
            if backoff.waiting() {
                bump(&counters.dropped_unconnected);
                continue;
            }
            let Some(addr) = shared.book.get(peer) else {
                bump(&counters.dropped_unconnected);
                continue;
            };
            match dial(&shared, addr).await {
                Ok(stream) => {
                    bump(&counters.connects);
                    debug!(%peer, %addr, "connected");
                    backoff.succeeded();
                    let (read, write) = stream.into_split();
                    conn = Some(Conn { read, write });
                    batch.put_u32_le(HELLO_LEN);
                    batch.put_slice(&TCP_HELLO_MAGIC);
                    batch.put_u64_le(shared.local.get());
                }
                Err(e) => {
                    bump(&counters.connect_failures);
                    bump(&counters.dropped_unconnected);
                    debug!(%peer, %addr, error = %e, "dial failed");
                    backoff.failed();
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        // Whatever else is queued goes in the same write.
        let mut frames = 1;
        put_frame(&mut batch, &first);
        while batch.len() < BATCH_BYTES {
            match queue.try_recv() {
                Ok(d) => {
                    put_frame(&mut batch, &d);
                    frames += 1;
                }
                Err(_) => break,
            }
        }
        match timeout(shared.config.write_timeout, c.write.write_all(&batch)).await {
            Ok(Ok(())) => add(&counters.sent, frames),
            result => {
                add(&counters.dropped_write_failed, frames);
                bump(&counters.connections_lost);
                debug!(%peer, ?result, frames, "write failed; connection dropped");
                conn = None;
            }
        }
        if batch.capacity() > 2 * BATCH_BYTES {
            // One huge batch should not pin its buffer for good.
            batch = BytesMut::new();
        }
    }
}

fn put_frame(batch: &mut BytesMut, datagram: &[u8]) {
    // The length fits: `send` refused anything over `max_datagram`, which
    // is at most `u32::MAX`.
    batch.put_u32_le(datagram.len() as u32);
    batch.put_slice(datagram);
}

/// Connects to `addr` with `TCP_NODELAY`, from the listening IP when that is
/// a specific one of the same kind (so the peer sees the IP its book has).
async fn dial(shared: &Shared, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let ip = shared.local_addr.ip();
    if !ip.is_unspecified()
        && ip.is_ipv4() == addr.is_ipv4()
        && ip.is_loopback() == addr.ip().is_loopback()
    {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    // Before connecting, so that the hello already leaves at once.
    socket.set_nodelay(true)?;
    let stream = timeout(shared.config.connect_timeout, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    Ok(stream)
}

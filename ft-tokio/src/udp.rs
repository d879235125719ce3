//! [`UdpChannel`]: the [`Channel`] contract over one UDP socket.
//!
//! # Wire format
//!
//! ```text
//! +------------------+----------------------+
//! | sender NodeId    | payload              |
//! | u64 LE (8 bytes) | 0 ..= max_datagram() |
//! +------------------+----------------------+
//! ```
//!
//! One datagram on the channel is one UDP datagram. The header tells the
//! receiver which node sent it; the receiver believes it only if the
//! datagram came from the address its book has for that node (see
//! [`UdpChannel`] on spoofing).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{Channel, ChannelError, NodeId};
use tokio::net::UdpSocket;
use tracing::{debug, trace};

use crate::book::{AddressBook, canonical, lock, reachable};

/// Bytes the channel puts before each payload: the sender's [`NodeId`].
pub const UDP_HEADER_LEN: usize = 8;

/// The largest payload a [`UdpChannel`] carries by default: the largest
/// IPv4 UDP payload (65 507 bytes) less the [`UDP_HEADER_LEN`] header.
///
/// Loopback and Linux carry datagrams this large (fragmented on the wire
/// when the path MTU is smaller, and a lost fragment loses the datagram).
/// Some systems refuse them (macOS limits UDP datagrams to 9 216 bytes by
/// default), and IP fragmentation makes large datagrams fragile on real
/// networks: [`UdpChannel::with_max_datagram`] lowers the limit, for
/// example to 1 400 to stay within one Ethernet frame.
pub const UDP_MAX_DATAGRAM: usize = 65_507 - UDP_HEADER_LEN;

/// The user-space receive buffer: any UDP datagram fits (the largest IPv6
/// payload without jumbograms is 65 527 bytes), so none is silently
/// truncated.
const RECV_BUF: usize = 65_536;

/// A snapshot of a [`UdpChannel`]'s counters, all since it was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpStats {
    /// Datagrams handed to the socket.
    pub sent: u64,
    /// Datagrams returned by `recv`.
    pub received: u64,
    /// Datagrams dropped because they were shorter than the header.
    pub dropped_short: u64,
    /// Datagrams dropped because their payload exceeded
    /// [`max_datagram`](Channel::max_datagram).
    pub dropped_oversize: u64,
    /// Datagrams dropped because the sender they named is not in the book.
    pub dropped_unknown_sender: u64,
    /// Datagrams dropped because they did not come from the address the
    /// book has for the sender they named: spoofed, or a misconfigured peer.
    pub dropped_mismatched_addr: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped_short: AtomicU64,
    dropped_oversize: AtomicU64,
    dropped_unknown_sender: AtomicU64,
    dropped_mismatched_addr: AtomicU64,
}

/// Counts one. Relaxed: each counter is read on its own.
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A [`Channel`] over one UDP socket, with a book of where each peer is.
///
/// # Addressing
///
/// Each node has one socket address, listed in the channel's address book
/// (given to [`bind`](Self::bind), changed with
/// [`set_peer`](Self::set_peer) and [`remove_peer`](Self::remove_peer)).
/// [`send`](Channel::send) to a node that is not in the book returns
/// [`ChannelError::Unreachable`]. Sending to oneself works whether or not
/// the book lists the local node: the datagram goes through the socket and
/// comes back from it.
///
/// # Spoofing
///
/// A datagram names its sender in its header, and the receiver checks that
/// it came from the address the book has for that sender. One that names a
/// node not in the book, or comes from another address, is dropped and
/// counted ([`UdpStats::dropped_unknown_sender`],
/// [`UdpStats::dropped_mismatched_addr`]): a host that can send to the
/// socket cannot pass itself off as a peer unless it can also forge that
/// peer's source address. So each node should bind the address the others'
/// books list for it (a specific IP, not `0.0.0.0`, on a multi-homed host,
/// where the source address of a reply depends on the route).
///
/// # Memory
///
/// Datagrams wait in the kernel's socket receive buffer (`SO_RCVBUF`) until
/// [`recv`](Channel::recv) takes them; when it is full the kernel drops new
/// ones, so a flood cannot grow this process's memory. The channel itself
/// holds one 64 KiB buffer that every `recv` reads into, and copies each
/// accepted payload out of it into a [`Bytes`] of its exact size. To change
/// the kernel buffer (the default of a few hundred KiB holds a few dozen
/// large datagrams), configure a socket yourself and hand it to
/// [`from_std`](Self::from_std).
///
/// # Cancel safety
///
/// `recv` waits for the socket to be readable and then takes a datagram
/// without awaiting, so a `recv` dropped at its only await point loses
/// nothing. Several tasks may `recv` on one channel at once; each datagram
/// goes to one of them.
pub struct UdpChannel {
    local: NodeId,
    socket: UdpSocket,
    local_addr: SocketAddr,
    book: AddressBook,
    max_datagram: usize,
    recv_buf: Mutex<Vec<u8>>,
    counters: Counters,
}

impl UdpChannel {
    /// Binds a UDP socket to `addr` for the node `local`, with `peers` as
    /// the address book.
    ///
    /// Port 0 lets the system choose; [`local_addr`](Self::local_addr) says
    /// which, and [`set_peer`](Self::set_peer) adds the peers once their
    /// addresses are known.
    ///
    /// # Errors
    /// The error of binding the socket.
    pub async fn bind(
        local: NodeId,
        addr: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        Self::from_socket(local, socket, peers)
    }

    /// Wraps a socket the caller bound and configured (buffer sizes, a
    /// dual-stack IPv6 socket, ...). It is switched to non-blocking mode.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// The error of registering the socket with the runtime.
    pub fn from_std(
        local: NodeId,
        socket: std::net::UdpSocket,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Self::from_socket(local, UdpSocket::from_std(socket)?, peers)
    }

    fn from_socket(
        local: NodeId,
        socket: UdpSocket,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> io::Result<Self> {
        let local_addr = socket.local_addr()?;
        debug!(node = %local, %local_addr, "udp channel bound");
        Ok(UdpChannel {
            local,
            socket,
            local_addr,
            book: AddressBook::new(peers),
            max_datagram: UDP_MAX_DATAGRAM,
            recv_buf: Mutex::new(vec![0; RECV_BUF]),
            counters: Counters::default(),
        })
    }

    /// The same channel with payloads limited to `max` bytes (at most
    /// [`UDP_MAX_DATAGRAM`]; larger values are capped). Larger datagrams
    /// are refused by `send` and dropped on receipt, so every node should
    /// use the same limit.
    #[must_use]
    pub fn with_max_datagram(mut self, max: usize) -> Self {
        self.max_datagram = max.min(UDP_MAX_DATAGRAM);
        self
    }

    /// The address the socket is bound to (with the port the system chose,
    /// if it was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address book: where each known node is.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.book.snapshot()
    }

    /// Where the book says `node` is.
    pub fn peer_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.book.get(node)
    }

    /// Puts `node` at `addr` in the book, returning its previous address.
    ///
    /// A wildcard IP (`0.0.0.0`, `::`) is stored as loopback, and an
    /// IPv4-mapped IPv6 address as the IPv4 one: that is where such a node
    /// is reached, and where its datagrams come from.
    pub fn set_peer(&self, node: NodeId, addr: SocketAddr) -> Option<SocketAddr> {
        self.book.insert(node, addr)
    }

    /// Takes `node` out of the book: sends to it are refused as
    /// unreachable, and its datagrams are dropped as from an unknown sender.
    pub fn remove_peer(&self, node: NodeId) -> Option<SocketAddr> {
        self.book.remove(node)
    }

    /// The channel's counters.
    pub fn stats(&self) -> UdpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        UdpStats {
            sent: get(&c.sent),
            received: get(&c.received),
            dropped_short: get(&c.dropped_short),
            dropped_oversize: get(&c.dropped_oversize),
            dropped_unknown_sender: get(&c.dropped_unknown_sender),
            dropped_mismatched_addr: get(&c.dropped_mismatched_addr),
        }
    }

    /// Where `node` is reached, and where its datagrams must come from.
    fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        match self.book.get(node) {
            Some(addr) => Some(addr),
            None if node == self.local => Some(reachable(self.local_addr)),
            None => None,
        }
    }

    /// Checks one received datagram and returns its sender and payload, or
    /// counts why it was dropped.
    fn accept(&self, datagram: &[u8], source: SocketAddr) -> Option<(NodeId, Bytes)> {
        let Some((header, payload)) = datagram.split_first_chunk::<UDP_HEADER_LEN>() else {
            bump(&self.counters.dropped_short);
            trace!(%source, len = datagram.len(), "dropped a datagram shorter than the header");
            return None;
        };
        let from = NodeId(u64::from_le_bytes(*header));
        if payload.len() > self.max_datagram {
            bump(&self.counters.dropped_oversize);
            trace!(%source, %from, len = payload.len(), "dropped an oversized datagram");
            return None;
        }
        match self.addr_of(from) {
            None => {
                bump(&self.counters.dropped_unknown_sender);
                debug!(%source, %from, "dropped a datagram from a sender not in the book");
                None
            }
            Some(expected) if expected != canonical(source) => {
                bump(&self.counters.dropped_mismatched_addr);
                debug!(%source, %from, %expected, "dropped a datagram from the wrong address");
                None
            }
            Some(_) => {
                bump(&self.counters.received);
                Some((from, Bytes::copy_from_slice(payload)))
            }
        }
    }
}

fn transport(error: io::Error) -> ChannelError {
    ChannelError::Transport(error.to_string())
}

#[async_trait]
impl Channel for UdpChannel {
    fn local(&self) -> NodeId {
        self.local
    }

    /// [`UDP_MAX_DATAGRAM`] unless lowered with
    /// [`with_max_datagram`](UdpChannel::with_max_datagram).
    fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        if datagram.len() > self.max_datagram {
            return Err(ChannelError::TooLarge {
                len: datagram.len(),
                max: self.max_datagram,
            });
        }
        let addr = self.addr_of(to).ok_or(ChannelError::Unreachable(to))?;
        let mut wire = Vec::with_capacity(UDP_HEADER_LEN + datagram.len());
        wire.extend_from_slice(&self.local.get().to_le_bytes());
        wire.extend_from_slice(&datagram);
        let sent = self.socket.send_to(&wire, addr).await.map_err(transport)?;
        if sent != wire.len() {
            return Err(ChannelError::Transport(format!(
                "sent {sent} of {} bytes",
                wire.len()
            )));
        }
        bump(&self.counters.sent);
        Ok(())
    }

    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        loop {
            // The only await point: readiness is cancel safe, and the
            // datagram is taken below without awaiting.
            self.socket.readable().await.map_err(transport)?;
            let mut buf = lock(&self.recv_buf);
            match self.socket.try_recv_from(&mut buf) {
                Ok((len, source)) => {
                    if let Some(got) = self.accept(&buf[..len], source) {
                        return Ok(got);
                    }
                }
                // Another receiver took it, or readiness was spurious.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Reports (on some systems) that an earlier send was refused
                // by its destination: news about a lost datagram, which a
                // datagram channel does not report, not a receive failure.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    trace!(error = %e, "ignored an error report about an earlier send");
                }
                Err(e) => return Err(transport(e)),
            }
        }
    }
}

impl fmt::Debug for UdpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpChannel")
            .field("local", &self.local)
            .field("local_addr", &self.local_addr)
            .field("max_datagram", &self.max_datagram)
            .field("stats", &self.stats())
            .finish()
    }
}

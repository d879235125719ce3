//! [`UdpChannel`]: the [`Channel`] contract over one UDP socket, with
//! batched sends and IP multicast.
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
//! [`UdpChannel`] on spoofing). Multicast datagrams have the same format
//! and come from the sender's unicast address, so the same check applies.
//!
//! # System calls
//!
//! On Linux the channel writes through [nix](https://docs.rs/nix)'s typed
//! wrappers, so that ft-tokio itself keeps `#![forbid(unsafe_code)]`:
//!
//! - every datagram is written as an iovec of the 8-byte header and the
//!   payload (`sendmsg`): the payload is never copied in user space;
//! - [`send_batch`](Channel::send_batch) and
//!   [`send_to_many`](Channel::send_to_many) write a run of datagrams of one
//!   size to one destination as **one UDP GSO** `sendmsg` (`UDP_SEGMENT`:
//!   the kernel cuts it into datagrams; the last may be shorter), and the
//!   other datagrams with **`sendmmsg`**, many destinations per system call;
//! - a GSO write the kernel refuses (`EIO` where the device cannot segment,
//!   `EINVAL` for a segment larger than the route's MTU) is written again
//!   without GSO, and the channel stops trying GSO for that case (for
//!   segments that large, or at all after `EIO`);
//! - [`UdpBatching`] chooses the path ([`UdpChannel::with_batching`]), and
//!   [`UdpStats`] shows which one ran: `gso_sends`, `mmsg_sends`,
//!   `send_syscalls`, `gso_fallbacks`.
//!
//! Elsewhere, every datagram is copied behind its header and written with
//! one `send_to`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::{BatchError, Channel, ChannelError, NodeId};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
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

/// At most this many received datagrams wait inside the channel, taken from
/// the socket by one `recv` and handed out by the next ones.
const RECV_QUEUE: usize = 32;

/// The bytes of the slots one `recvmmsg` reads into (Linux): each slot
/// holds the largest datagram the channel accepts, so the default limit
/// gets 4 slots of 64 KiB and a limit of 1 400 bytes gets 32.
#[cfg(target_os = "linux")]
const RECV_SLOTS_BYTES: usize = 256 * 1024;

/// ... and at most this many payload bytes: a drain stops at either bound.
const RECV_QUEUE_BYTES: usize = 256 * 1024;

/// The kernel's limit on the datagrams of one GSO write (`UDP_MAX_SEGMENTS`).
#[cfg(target_os = "linux")]
const GSO_MAX_SEGMENTS: usize = 64;

/// The bytes of one GSO write: it is one IP packet before segmentation, so
/// it must fit an IP length (65 535 bytes with its IP and UDP headers; an
/// IPv6 header is 40 bytes).
#[cfg(target_os = "linux")]
const GSO_MAX_BYTES: usize = 65_535 - 40 - 8;

/// The messages of one `sendmmsg` (the kernel's `UIO_MAXIOV`).
#[cfg(target_os = "linux")]
const MMSG_MAX: usize = 1024;

/// How [`send_batch`](Channel::send_batch) and
/// [`send_to_many`](Channel::send_to_many) write a batch to the socket
/// (see the [module docs](self)), and how `recv` reads: `recvmmsg` but for
/// [`Plain`](Self::Plain). A single [`send`](Channel::send) is one
/// `sendmsg` whatever the choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UdpBatching {
    /// The fewest system calls (Linux): one GSO write for each run of
    /// equal-size datagrams to one destination, `sendmmsg` for the others,
    /// each falling back to the next path when the kernel refuses it.
    #[default]
    Gso,
    /// `sendmmsg` for every batch, no GSO (Linux).
    Mmsg,
    /// One system call per datagram, sent or received: the fallback path,
    /// and the only one off Linux.
    Plain,
}

/// Where and how a [`UdpChannel`] sends and receives IP multicast; see
/// [`UdpChannel::with_multicast`].
///
/// Every member must configure the same group and the same member list: a
/// sender uses the group only for a datagram meant for exactly the other
/// members, so a node that joins the group without being listed would
/// receive datagrams not meant for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MulticastConfig {
    /// The group address and port, for example `239.255.0.1:7400` (an
    /// administratively scoped group, which routers do not forward beyond
    /// the organisation).
    pub group: SocketAddrV4,
    /// The local interface, by one of its IPv4 addresses, that joins the
    /// group and sends to it: `127.0.0.1` keeps the group on this host.
    /// The unspecified address lets the kernel choose by its routes.
    pub interface: Ipv4Addr,
    /// How many routers a multicast datagram may cross (`IP_MULTICAST_TTL`):
    /// 0 keeps it on the host, 1 (the default) on the local network.
    pub ttl: u32,
    /// Whether a datagram sent to the group is also delivered to the
    /// members on the sending host (`IP_MULTICAST_LOOP`, default on): it
    /// must be on when several members share a host.
    pub loopback: bool,
    /// The nodes that join the group, this one included: one multicast
    /// datagram stands for a [`send_to_many`](Channel::send_to_many) to all
    /// of them but the sender.
    pub members: BTreeSet<NodeId>,
}

impl MulticastConfig {
    /// A group of `members` at `group`, joined and sent to on the local
    /// `interface`, with a TTL of 1 and loopback on.
    pub fn new(
        group: SocketAddrV4,
        interface: Ipv4Addr,
        members: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        MulticastConfig {
            group,
            interface,
            ttl: 1,
            loopback: true,
            members: members.into_iter().collect(),
        }
    }

    /// The same configuration with `ttl`.
    #[must_use]
    pub fn with_ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// The same configuration with loopback on or off.
    #[must_use]
    pub fn with_loopback(mut self, loopback: bool) -> Self {
        self.loopback = loopback;
        self
    }
}

/// A joined group: the socket bound to it and the configuration.
struct Multicast {
    socket: UdpSocket,
    config: MulticastConfig,
}

/// A snapshot of a [`UdpChannel`]'s counters, all since it was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpStats {
    /// Datagrams handed to the socket (a multicast datagram counts once).
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
    /// System calls that wrote datagrams (`sendmsg`, `sendmmsg`,
    /// `send_to`), those that failed included.
    pub send_syscalls: u64,
    /// Batches ([`send_batch`](Channel::send_batch),
    /// [`send_to_many`](Channel::send_to_many)) that wrote two datagrams
    /// or more.
    pub batches: u64,
    /// UDP GSO writes: each carried several datagrams in one system call.
    pub gso_sends: u64,
    /// GSO writes the kernel refused, whose datagrams were written again
    /// without GSO.
    pub gso_fallbacks: u64,
    /// `sendmmsg` system calls.
    pub mmsg_sends: u64,
    /// Receive system calls, those that found nothing included.
    pub recv_syscalls: u64,
    /// Times `recv` found its queue empty and drained the socket(s): with
    /// many datagrams waiting, far fewer than [`received`](Self::received).
    pub recv_drains: u64,
    /// Multicast datagrams sent to the group.
    pub multicast_sent: u64,
    /// Multicast datagrams received from the group and accepted.
    pub multicast_received: u64,
    /// This node's own multicast datagrams, looped back by the kernel and
    /// dropped (see [`UdpChannel::with_multicast`]).
    pub dropped_own_multicast: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped_short: AtomicU64,
    dropped_oversize: AtomicU64,
    dropped_unknown_sender: AtomicU64,
    dropped_mismatched_addr: AtomicU64,
    send_syscalls: AtomicU64,
    batches: AtomicU64,
    gso_sends: AtomicU64,
    gso_fallbacks: AtomicU64,
    mmsg_sends: AtomicU64,
    recv_syscalls: AtomicU64,
    recv_drains: AtomicU64,
    multicast_sent: AtomicU64,
    multicast_received: AtomicU64,
    dropped_own_multicast: AtomicU64,
}

/// Counts one. Relaxed: each counter is read on its own.
fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What a failed read means for a drain: `Some` ends it (`Ok` when the
/// socket has nothing more, or another receiver took it), `None` goes on.
fn end_of_drain(e: io::Error) -> Option<io::Result<()>> {
    match e.kind() {
        io::ErrorKind::WouldBlock => Some(Ok(())),
        // Reports (on some systems) that an earlier send was refused by
        // its destination: news about a lost datagram, which a datagram
        // channel does not report, not a receive failure.
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused => {
            trace!(error = %e, "ignored an error report about an earlier send");
            None
        }
        _ => Some(Err(e)),
    }
}

/// The receive side's state: the buffer every read goes into, and the
/// datagrams already taken from the socket(s) and not yet handed out.
struct Inbox {
    buf: Vec<u8>,
    /// The `recvmmsg` slots, allocated by the first drain that uses them
    /// (a channel that only sends never does).
    #[cfg(target_os = "linux")]
    slots: Vec<u8>,
    queue: VecDeque<(NodeId, Bytes)>,
    queued_bytes: usize,
}

impl Inbox {
    fn push(&mut self, got: (NodeId, Bytes)) {
        self.queued_bytes += got.1.len();
        self.queue.push_back(got);
    }

    fn pop(&mut self) -> Option<(NodeId, Bytes)> {
        let got = self.queue.pop_front()?;
        self.queued_bytes -= got.1.len();
        Some(got)
    }

    fn full(&self) -> bool {
        self.queue.len() >= RECV_QUEUE || self.queued_bytes >= RECV_QUEUE_BYTES
    }
}

/// One datagram of a batch, checked and located.
struct Out<'a> {
    /// Its position in the batch (or in the list of destinations).
    index: usize,
    addr: SocketAddr,
    payload: &'a [u8],
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
/// # Sending
///
/// `send` writes one datagram with one system call; the batched sends write
/// a whole batch with as few as the kernel allows (see the
/// [module docs](self) and [`UdpBatching`]). When the socket's send buffer
/// is full (`WouldBlock`), a send waits for it to drain: that is the local
/// host's resource, freed as the kernel hands datagrams to the network, not
/// a remote peer's (a UDP socket's buffer does not wait for receivers,
/// which drop what they cannot hold).
///
/// # Memory
///
/// Datagrams wait in the kernel's socket receive buffer (`SO_RCVBUF`) until
/// [`recv`](Channel::recv) takes them; when it is full the kernel drops new
/// ones, so a flood cannot grow this process's memory. A `recv` that finds
/// nothing waiting in the channel drains what the socket holds, up to 32
/// datagrams or 256 KiB, into a queue inside the channel, and the next
/// `recv`s hand them out one at a time, in the order read, without a
/// system call ([`UdpStats::recv_drains`] counts the drains). On Linux a
/// drain reads with `recvmmsg` into slots that each hold the largest
/// datagram the channel accepts, 256 KiB of them in all (4 slots at the
/// default limit, 32 at 1 400 bytes), allocated by the first drain; a read
/// that fills fewer slots than it had ends the drain, so a datagram that
/// comes alone costs one system call. Elsewhere, and with
/// [`UdpBatching::Plain`], it reads one datagram per call into one 64 KiB
/// buffer. Each accepted payload is copied out into a [`Bytes`] of its
/// exact size. To
/// change the kernel buffer (the default of a few hundred KiB holds a few
/// dozen large datagrams), configure a socket yourself and hand it to
/// [`from_std`](Self::from_std).
///
/// # Cancel safety
///
/// `recv` waits for a socket to be readable (or for datagrams another
/// `recv` queued) and then takes datagrams without awaiting, straight into
/// the queue, so a `recv` dropped at its only await point loses nothing.
/// Several tasks may `recv` on one channel at once; each datagram goes to
/// one of them.
pub struct UdpChannel {
    local: NodeId,
    socket: UdpSocket,
    local_addr: SocketAddr,
    book: AddressBook,
    max_datagram: usize,
    batching: UdpBatching,
    /// GSO writes use segments smaller than this: lowered to a segment size
    /// the kernel refused, 0 once it refused GSO itself.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    gso_limit: AtomicUsize,
    multicast: Option<Multicast>,
    inbox: Mutex<Inbox>,
    /// Wakes a waiting `recv` when another left datagrams in the queue.
    queued: Notify,
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
            batching: UdpBatching::default(),
            gso_limit: AtomicUsize::new(usize::MAX),
            multicast: None,
            inbox: Mutex::new(Inbox {
                buf: vec![0; RECV_BUF],
                #[cfg(target_os = "linux")]
                slots: Vec::new(),
                queue: VecDeque::with_capacity(RECV_QUEUE),
                queued_bytes: 0,
            }),
            queued: Notify::new(),
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

    /// The same channel writing batches as `batching` says (default
    /// [`UdpBatching::Gso`]).
    #[must_use]
    pub fn with_batching(mut self, batching: UdpBatching) -> Self {
        self.batching = batching;
        self
    }

    /// The same channel in the IP multicast group `config` describes.
    ///
    /// - **Receiving**: a second socket is bound to the group's address and
    ///   port with `SO_REUSEADDR` (so several channels and processes on one
    ///   host can join) and joins the group on `config.interface`; `recv`
    ///   takes datagrams from both sockets. A multicast datagram is checked
    ///   like any other (its header names its sender, who must be in the
    ///   book at the datagram's source address).
    /// - **Sending**: the node's own unicast socket sends to the group
    ///   (with the configured interface, TTL and loopback), so receivers
    ///   see the address their books have for it.
    ///   [`send_to_many`](Channel::send_to_many) sends **one** multicast
    ///   datagram when its destinations, less this node, are exactly the
    ///   other members (each once, each in the book); anything else fans
    ///   out by unicast, so no node outside the destinations receives it.
    /// - **Itself**: a member's own multicast datagrams come back to its
    ///   group socket when loopback is on; they are dropped
    ///   ([`UdpStats::dropped_own_multicast`]), and a `send_to_many` that
    ///   names this node as well sends it one unicast datagram, as
    ///   [`send`](Channel::send) does. So this node receives the datagram
    ///   once if it named itself and never otherwise, loopback on or off.
    ///
    /// IPv4 only. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// A channel bound to IPv6, and the errors of binding, joining and
    /// configuring the sockets.
    pub fn with_multicast(mut self, config: MulticastConfig) -> io::Result<Self> {
        if !self.local_addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "multicast needs an IPv4 channel",
            ));
        }
        if !config.group.ip().is_multicast() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a multicast group", config.group.ip()),
            ));
        }
        use socket2::{Domain, Protocol, SockRef, Socket, Type};
        let unicast = SockRef::from(&self.socket);
        unicast.set_multicast_if_v4(&config.interface)?;
        unicast.set_multicast_ttl_v4(config.ttl)?;
        unicast.set_multicast_loop_v4(config.loopback)?;

        let group = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        group.set_reuse_address(true)?;
        // Bound to the group's address, not the wildcard: only the group's
        // datagrams arrive here, never unicast to the same port.
        group.bind(&SocketAddr::V4(config.group).into())?;
        group.join_multicast_v4(config.group.ip(), &config.interface)?;
        group.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(group.into())?;
        debug!(node = %self.local, group = %config.group, interface = %config.interface,
            "udp channel joined a multicast group");
        self.multicast = Some(Multicast { socket, config });
        Ok(self)
    }

    /// The multicast group this channel is in, if any.
    pub fn multicast(&self) -> Option<&MulticastConfig> {
        self.multicast.as_ref().map(|m| &m.config)
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
            send_syscalls: get(&c.send_syscalls),
            batches: get(&c.batches),
            gso_sends: get(&c.gso_sends),
            gso_fallbacks: get(&c.gso_fallbacks),
            mmsg_sends: get(&c.mmsg_sends),
            recv_syscalls: get(&c.recv_syscalls),
            recv_drains: get(&c.recv_drains),
            multicast_sent: get(&c.multicast_sent),
            multicast_received: get(&c.multicast_received),
            dropped_own_multicast: get(&c.dropped_own_multicast),
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

    /// Checks a datagram before it is sent, and says where it goes.
    fn check(&self, to: NodeId, len: usize) -> Result<SocketAddr, ChannelError> {
        if len > self.max_datagram {
            return Err(ChannelError::TooLarge {
                len,
                max: self.max_datagram,
            });
        }
        self.addr_of(to).ok_or(ChannelError::Unreachable(to))
    }

    /// Checks one received datagram and returns its sender and payload, or
    /// counts why it was dropped. `multicast`: it came from the group.
    fn accept(
        &self,
        datagram: &[u8],
        source: SocketAddr,
        multicast: bool,
    ) -> Option<(NodeId, Bytes)> {
        let Some((header, payload)) = datagram.split_first_chunk::<UDP_HEADER_LEN>() else {
            bump(&self.counters.dropped_short);
            trace!(%source, len = datagram.len(), "dropped a datagram shorter than the header");
            return None;
        };
        let from = NodeId(u64::from_le_bytes(*header));
        if multicast && from == self.local {
            // Our own, looped back: a send_to_many that named this node
            // sent it a unicast copy as well.
            bump(&self.counters.dropped_own_multicast);
            return None;
        }
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
                if multicast {
                    bump(&self.counters.multicast_received);
                }
                Some((from, Bytes::copy_from_slice(payload)))
            }
        }
    }

    /// Reads what `socket` holds into the inbox, until it has nothing more
    /// (which clears its readiness) or the inbox is full. Never awaits.
    fn drain(&self, inbox: &mut Inbox, socket: &UdpSocket, multicast: bool) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if self.batching != UdpBatching::Plain {
            return self.drain_mmsg(inbox, socket, multicast);
        }
        while !inbox.full() {
            bump(&self.counters.recv_syscalls);
            match socket.try_recv_from(&mut inbox.buf) {
                Ok((len, source)) => {
                    if let Some(got) = self.accept(&inbox.buf[..len], source, multicast) {
                        inbox.push(got);
                    }
                }
                Err(e) => {
                    if let Some(end) = end_of_drain(e) {
                        return end;
                    }
                }
            }
        }
        Ok(())
    }

    /// [`drain`](Self::drain) with `recvmmsg`: up to one slot's worth of
    /// datagrams per system call. A call that returns fewer datagrams than
    /// it had slots found the socket empty, so it clears the socket's
    /// readiness as a `WouldBlock` would: a datagram costs one system call
    /// when one comes at a time, not two (its read and the read that finds
    /// nothing). That is as safe as a real `WouldBlock`: tokio clears
    /// readiness only if no new readiness event came since it was reported,
    /// and every datagram that arrives later brings one.
    #[cfg(target_os = "linux")]
    fn drain_mmsg(&self, inbox: &mut Inbox, socket: &UdpSocket, multicast: bool) -> io::Result<()> {
        use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;
        // One byte more than the largest datagram accepted: the kernel cuts
        // a larger one to the slot, and `accept` sees it is too long (cut
        // to exactly the limit, it would pass for a whole datagram).
        let slot = self.max_datagram + UDP_HEADER_LEN + 1;
        let slots = (RECV_SLOTS_BYTES / slot).clamp(2, RECV_QUEUE);
        if inbox.slots.len() != slots * slot {
            inbox.slots = vec![0; slots * slot];
        }
        let fd = socket.as_raw_fd();
        // What each read datagram was: its length (at most its slot's) and
        // source.
        let mut read: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(slots);
        while !inbox.full() {
            let room = slots.min(RECV_QUEUE - inbox.queue.len());
            read.clear();
            bump(&self.counters.recv_syscalls);
            let result = socket.try_io(tokio::io::Interest::READABLE, || {
                // Built per call: it holds raw pointers, so it cannot live
                // in the channel, which is Send and Sync.
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(room, None);
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = inbox
                    .slots
                    .chunks_mut(slot)
                    .take(room)
                    .map(|chunk| [IoSliceMut::new(chunk)])
                    .collect();
                let results = recvmmsg(fd, &mut headers, iovs.iter_mut(), MsgFlags::empty(), None)
                    .map_err(io::Error::from)?;
                for msg in results {
                    let source = msg.address.and_then(|a| {
                        a.as_sockaddr_in()
                            .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                            .or_else(|| {
                                a.as_sockaddr_in6()
                                    .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                            })
                    });
                    read.push((msg.bytes, source));
                }
                if read.len() < room {
                    // The socket is empty: clear its readiness (see above).
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            for (i, &(len, source)) in read.iter().enumerate() {
                let Some(source) = source else { continue };
                let datagram = &inbox.slots[i * slot..i * slot + len];
                if let Some(got) = self.accept(datagram, source, multicast) {
                    inbox.push(got);
                }
            }
            if let Err(e) = result
                && let Some(end) = end_of_drain(e)
            {
                return end;
            }
        }
        Ok(())
    }

    /// Waits until a socket may be readable or another `recv` left
    /// datagrams in the queue. The only await point of `recv`.
    async fn ready(&self) -> io::Result<()> {
        match &self.multicast {
            None => tokio::select! {
                biased;
                r = self.socket.readable() => r,
                () = self.queued.notified() => Ok(()),
            },
            Some(m) => tokio::select! {
                biased;
                r = self.socket.readable() => r,
                r = m.socket.readable() => r,
                () = self.queued.notified() => Ok(()),
            },
        }
    }

    /// Whether `to` (less this node) is exactly the other members of the
    /// group, each once and each in the book: then one multicast datagram
    /// reaches them and no one else.
    fn multicast_covers(&self, group: &MulticastConfig, to: &[NodeId]) -> bool {
        let others = group.members.iter().filter(|&&n| n != self.local).count();
        if others == 0 {
            return false;
        }
        let mut seen = BTreeSet::new();
        for &node in to {
            if node == self.local {
                continue;
            }
            if !group.members.contains(&node) || !seen.insert(node) || !self.book.contains(node) {
                return false;
            }
        }
        seen.len() == others
    }

    /// Writes the checked datagrams `outs`, adding each that the socket
    /// refused to `refused`.
    async fn write_all(&self, outs: &[Out<'_>], refused: &mut Vec<(usize, ChannelError)>) {
        if outs.len() > 1 {
            bump(&self.counters.batches);
        }
        #[cfg(target_os = "linux")]
        {
            let mut i = 0;
            while i < outs.len() {
                let rest = &outs[i..];
                if self.batching == UdpBatching::Gso {
                    let run = self.gso_run(rest);
                    if run > 1 {
                        self.write_gso(&rest[..run], refused).await;
                        i += run;
                        continue;
                    }
                }
                if self.batching != UdpBatching::Plain {
                    // Up to the next GSO run, if any.
                    let mut end = 1;
                    while end < rest.len()
                        && end < MMSG_MAX
                        && !(self.batching == UdpBatching::Gso && self.gso_run(&rest[end..]) > 1)
                    {
                        end += 1;
                    }
                    if end > 1 {
                        self.write_mmsg(&rest[..end], refused).await;
                        i += end;
                        continue;
                    }
                }
                self.write_plain(&rest[0], refused).await;
                i += 1;
            }
        }
        #[cfg(not(target_os = "linux"))]
        for out in outs {
            self.write_plain(out, refused).await;
        }
    }

    /// Writes one datagram with one system call, noting a refusal.
    async fn write_plain(&self, out: &Out<'_>, refused: &mut Vec<(usize, ChannelError)>) {
        if let Err(e) = self.write_one(out.addr, out.payload).await {
            refused.push((out.index, e));
        }
    }

    /// Writes `payload` behind the header to `addr`: one system call.
    async fn write_one(&self, addr: SocketAddr, payload: &[u8]) -> Result<(), ChannelError> {
        let header = self.local.get().to_le_bytes();
        let sent = self.write_one_sys(addr, &header, payload).await;
        bump(&self.counters.send_syscalls);
        let sent = sent.map_err(transport)?;
        let len = UDP_HEADER_LEN + payload.len();
        if sent != len {
            return Err(ChannelError::Transport(format!(
                "sent {sent} of {len} bytes"
            )));
        }
        bump(&self.counters.sent);
        Ok(())
    }

    #[cfg(target_os = "linux")]
    async fn write_one_sys(
        &self,
        addr: SocketAddr,
        header: &[u8; UDP_HEADER_LEN],
        payload: &[u8],
    ) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmsg};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        let iov = [IoSlice::new(header), IoSlice::new(payload)];
        let dest = SockaddrStorage::from(addr);
        let fd = self.socket.as_raw_fd();
        self.socket
            .async_io(tokio::io::Interest::WRITABLE, || {
                sendmsg(fd, &iov, &[], MsgFlags::empty(), Some(&dest)).map_err(io::Error::from)
            })
            .await
    }

    #[cfg(not(target_os = "linux"))]
    async fn write_one_sys(
        &self,
        addr: SocketAddr,
        header: &[u8; UDP_HEADER_LEN],
        payload: &[u8],
    ) -> io::Result<usize> {
        let mut wire = Vec::with_capacity(UDP_HEADER_LEN + payload.len());
        wire.extend_from_slice(header);
        wire.extend_from_slice(payload);
        self.socket.send_to(&wire, addr).await
    }

    /// How many datagrams from the start of `outs` one GSO write can carry:
    /// the same destination, the same size (the last may be shorter),
    /// within the kernel's limits and the sizes it accepted. 0 or 1: none.
    #[cfg(target_os = "linux")]
    fn gso_run(&self, outs: &[Out<'_>]) -> usize {
        let Some(first) = outs.first() else {
            return 0;
        };
        let segment = UDP_HEADER_LEN + first.payload.len();
        if segment >= self.gso_limit.load(Ordering::Relaxed) {
            return 0;
        }
        let mut total = segment;
        let mut n = 1;
        while n < outs.len() && n < GSO_MAX_SEGMENTS {
            let next = &outs[n];
            let len = UDP_HEADER_LEN + next.payload.len();
            if next.addr != first.addr || len > segment || total + len > GSO_MAX_BYTES {
                break;
            }
            total += len;
            n += 1;
            if len < segment {
                break;
            }
        }
        n
    }

    /// Writes a GSO run (see [`gso_run`](Self::gso_run)) with one system
    /// call, or without GSO if the kernel refuses it.
    #[cfg(target_os = "linux")]
    async fn write_gso(&self, run: &[Out<'_>], refused: &mut Vec<(usize, ChannelError)>) {
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        let header = self.local.get().to_le_bytes();
        let segment = UDP_HEADER_LEN + run[0].payload.len();
        let Ok(segment_u16) = u16::try_from(segment) else {
            return self.write_mmsg(run, refused).await;
        };
        let mut iov = Vec::with_capacity(2 * run.len());
        let mut total = 0;
        for out in run {
            iov.push(IoSlice::new(&header));
            iov.push(IoSlice::new(out.payload));
            total += UDP_HEADER_LEN + out.payload.len();
        }
        let dest = SockaddrStorage::from(run[0].addr);
        let fd = self.socket.as_raw_fd();
        let result = self
            .socket
            .async_io(tokio::io::Interest::WRITABLE, || {
                let cmsg = [ControlMessage::UdpGsoSegments(&segment_u16)];
                sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&dest)).map_err(io::Error::from)
            })
            .await;
        bump(&self.counters.send_syscalls);
        match result {
            Ok(sent) if sent == total => {
                bump(&self.counters.gso_sends);
                add(&self.counters.sent, run.len() as u64);
            }
            other => {
                // EIO: the device cannot segment; EINVAL/EMSGSIZE: the
                // segment does not fit the route's MTU (or the kernel has no
                // GSO). Whatever the cause, each datagram is written alone
                // and fails, if it does, on its own.
                match &other {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                        self.gso_limit.store(0, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(nix::libc::EINVAL | nix::libc::EMSGSIZE)
                        ) =>
                    {
                        self.gso_limit.fetch_min(segment, Ordering::Relaxed);
                    }
                    // Refused for its destination (EACCES, ENETUNREACH,
                    // ...): each datagram fails alone below.
                    Err(_) => {}
                }
                bump(&self.counters.gso_fallbacks);
                debug!(
                    ?other,
                    segment,
                    count = run.len(),
                    "GSO write refused; writing without"
                );
                self.write_mmsg(run, refused).await;
            }
        }
    }

    /// Writes `outs` with `sendmmsg`, as few calls as the kernel takes; a
    /// datagram it refuses is written alone to learn why.
    #[cfg(target_os = "linux")]
    async fn write_mmsg(&self, outs: &[Out<'_>], refused: &mut Vec<(usize, ChannelError)>) {
        use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        if self.batching == UdpBatching::Plain || outs.len() == 1 {
            for out in outs {
                self.write_plain(out, refused).await;
            }
            return;
        }
        let header = self.local.get().to_le_bytes();
        let slices: Vec<[IoSlice<'_>; 2]> = outs
            .iter()
            .map(|out| [IoSlice::new(&header), IoSlice::new(out.payload)])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = outs
            .iter()
            .map(|out| Some(SockaddrStorage::from(out.addr)))
            .collect();
        let fd = self.socket.as_raw_fd();
        let mut start = 0;
        while start < outs.len() {
            let result = self
                .socket
                .async_io(tokio::io::Interest::WRITABLE, || {
                    // Built per call: it holds raw pointers, so it cannot
                    // live across an await in a Send future.
                    let mut headers =
                        MultiHeaders::<SockaddrStorage>::preallocate(outs.len() - start, None);
                    sendmmsg(
                        fd,
                        &mut headers,
                        &slices[start..],
                        &addrs[start..],
                        [],
                        MsgFlags::empty(),
                    )
                    .map(Iterator::count)
                    .map_err(io::Error::from)
                })
                .await;
            bump(&self.counters.send_syscalls);
            bump(&self.counters.mmsg_sends);
            match result {
                Ok(n) if n > 0 => {
                    add(&self.counters.sent, n as u64);
                    start += n;
                }
                // The first datagram failed (or none went): it alone says why.
                _ => {
                    self.write_plain(&outs[start], refused).await;
                    start += 1;
                }
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
        let addr = self.check(to, datagram.len())?;
        self.write_one(addr, &datagram).await
    }

    async fn send_batch(&self, batch: &[(NodeId, Bytes)]) -> Result<(), BatchError> {
        let mut refused = Vec::new();
        let mut outs = Vec::with_capacity(batch.len());
        for (index, (to, datagram)) in batch.iter().enumerate() {
            match self.check(*to, datagram.len()) {
                Ok(addr) => outs.push(Out {
                    index,
                    addr,
                    payload: datagram,
                }),
                Err(e) => refused.push((index, e)),
            }
        }
        self.write_all(&outs, &mut refused).await;
        BatchError::result(refused)
    }

    async fn send_to_many(&self, to: &[NodeId], datagram: Bytes) -> Result<(), BatchError> {
        if let Some(m) = &self.multicast
            && datagram.len() <= self.max_datagram
            && self.multicast_covers(&m.config, to)
        {
            let mut refused = Vec::new();
            let group = SocketAddr::V4(m.config.group);
            match self.write_one(group, &datagram).await {
                Ok(()) => bump(&self.counters.multicast_sent),
                // Every destination but this node shares the failure.
                Err(e) => refused.extend(
                    to.iter()
                        .enumerate()
                        .filter(|&(_, &n)| n != self.local)
                        .map(|(i, _)| (i, e.clone())),
                ),
            }
            for (index, _) in to.iter().enumerate().filter(|&(_, &n)| n == self.local) {
                let out = Out {
                    index,
                    addr: self
                        .addr_of(self.local)
                        .unwrap_or_else(|| reachable(self.local_addr)),
                    payload: &datagram,
                };
                self.write_plain(&out, &mut refused).await;
            }
            return BatchError::result(refused);
        }
        let mut refused = Vec::new();
        let mut outs = Vec::with_capacity(to.len());
        for (index, &node) in to.iter().enumerate() {
            match self.check(node, datagram.len()) {
                Ok(addr) => outs.push(Out {
                    index,
                    addr,
                    payload: &datagram,
                }),
                Err(e) => refused.push((index, e)),
            }
        }
        self.write_all(&outs, &mut refused).await;
        BatchError::result(refused)
    }

    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        loop {
            {
                let mut inbox = lock(&self.inbox);
                if let Some(got) = inbox.pop() {
                    if !inbox.queue.is_empty() {
                        // Another `recv` may be waiting for the sockets,
                        // which this one emptied: let it take the rest (a
                        // stored permit if none waits yet, so no wake-up is
                        // lost between its look at the queue and its wait).
                        self.queued.notify_one();
                    }
                    return Ok(got);
                }
            }
            // The only await point: nothing is taken from a socket before
            // it, and what is taken after goes into the queue at once.
            self.ready().await.map_err(transport)?;
            let mut inbox = lock(&self.inbox);
            if !inbox.queue.is_empty() {
                continue;
            }
            bump(&self.counters.recv_drains);
            let unicast = self.drain(&mut inbox, &self.socket, false);
            let group = match &self.multicast {
                Some(m) => self.drain(&mut inbox, &m.socket, true),
                None => Ok(()),
            };
            if inbox.queue.is_empty() {
                unicast.map_err(transport)?;
                group.map_err(transport)?;
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
            .field("batching", &self.batching)
            .field("multicast", &self.multicast())
            .field("stats", &self.stats())
            .finish()
    }
}

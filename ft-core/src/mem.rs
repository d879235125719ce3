//! An in-memory [`Channel`] for tests: [`MemNetwork`] and its [`MemChannel`]s.
//!
//! A [`MemNetwork`] is a switch between the nodes that [`join`](MemNetwork::join)
//! it. It keeps the semantics of a datagram network that matter to the
//! protocols and nothing more:
//!
//! - a datagram arrives whole or not at all, with the sender's [`NodeId`];
//! - each node's inbox is bounded: when it is full, a new datagram is dropped
//!   and counted, never queued, so a flood cannot exhaust memory;
//! - a datagram on a link that is down ([`set_link`](MemNetwork::set_link),
//!   [`partition`](MemNetwork::partition)) is dropped and counted;
//! - nothing is reordered, duplicated or delayed: a test that wants those
//!   faults runs under `ft-sim`, which injects them on purpose and
//!   reproducibly.
//!
//! ```
//! use bytes::Bytes;
//! use ft_core::{Channel, ChannelError, MemNetwork, NodeId};
//!
//! # futures::executor::block_on(async {
//! let net = MemNetwork::new(16);
//! let a = net.join(NodeId(1));
//! let b = net.join(NodeId(2));
//! a.send(NodeId(2), Bytes::from_static(b"hello")).await?;
//! assert_eq!(b.recv().await?, (NodeId(1), Bytes::from_static(b"hello")));
//!
//! // A downed link loses datagrams silently, as a real network does.
//! net.set_link(NodeId(1), NodeId(2), false);
//! a.send(NodeId(2), Bytes::from_static(b"lost")).await?;
//! assert_eq!(net.stats().dropped_link, 1);
//!
//! // A node that left is no longer routable.
//! drop(b);
//! assert_eq!(a.send(NodeId(2), Bytes::new()).await, Err(ChannelError::Unreachable(NodeId(2))));
//! # Ok::<(), ChannelError>(())
//! # }).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use bytes::Bytes;

use crate::channel::{Channel, ChannelError};
use crate::id::NodeId;
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, lock};

/// The largest datagram a [`MemNetwork`] carries unless told otherwise: the
/// largest IPv4 UDP payload, so code tested in memory does not rely on
/// datagrams a real network would refuse.
pub const DEFAULT_MAX_DATAGRAM: usize = 65_507;

/// An in-memory datagram network between the [`MemChannel`]s that join it.
///
/// Clones share the same network, so a test can keep one to steer links and
/// read counters while the channels are owned by drivers.
#[derive(Clone)]
pub struct MemNetwork {
    inner: Arc<Net>,
}

/// A snapshot of a [`MemNetwork`]'s counters, all since the network was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemStats {
    /// Datagrams put in a receiver's inbox.
    pub delivered: u64,
    /// Datagrams dropped because the receiver's inbox was full.
    pub dropped_full: u64,
    /// Datagrams dropped because the link from sender to receiver was down.
    pub dropped_link: u64,
    /// Datagrams dropped because the receiver closed while they were in flight.
    pub dropped_closed: u64,
}

struct Net {
    inbox_capacity: usize,
    max_datagram: usize,
    routes: Mutex<Routes>,
    delivered: AtomicU64,
    dropped_full: AtomicU64,
    dropped_link: AtomicU64,
    dropped_closed: AtomicU64,
}

/// Who is on the network and which links are down.
///
/// Ordered collections, so that anything iterating them (`Debug`, `nodes`)
/// is deterministic.
struct Routes {
    nodes: BTreeMap<NodeId, Arc<Inbox>>,
    /// Directed links `(from, to)` that drop everything.
    down: BTreeSet<(NodeId, NodeId)>,
}

impl Routes {
    /// Whether `inbox` is still the registered inbox of `node`; it is not
    /// once its channel closed or a newer channel joined under the same id.
    fn is_current(&self, node: NodeId, inbox: &Arc<Inbox>) -> bool {
        self.nodes.get(&node).is_some_and(|i| Arc::ptr_eq(i, inbox))
    }
}

impl MemNetwork {
    /// A network whose nodes each queue at most `inbox_capacity` datagrams
    /// (0 drops everything), carrying datagrams of up to
    /// [`DEFAULT_MAX_DATAGRAM`] bytes.
    pub fn new(inbox_capacity: usize) -> Self {
        Self::with_max_datagram(inbox_capacity, DEFAULT_MAX_DATAGRAM)
    }

    /// A network like [`new`](Self::new) whose datagrams are limited to
    /// `max_datagram` bytes.
    pub fn with_max_datagram(inbox_capacity: usize, max_datagram: usize) -> Self {
        MemNetwork {
            inner: Arc::new(Net {
                inbox_capacity,
                max_datagram,
                routes: Mutex::new(Routes {
                    nodes: BTreeMap::new(),
                    down: BTreeSet::new(),
                }),
                delivered: AtomicU64::new(0),
                dropped_full: AtomicU64::new(0),
                dropped_link: AtomicU64::new(0),
                dropped_closed: AtomicU64::new(0),
            }),
        }
    }

    /// Attaches `node` to the network and returns its end.
    ///
    /// If `node` had already joined, the new channel replaces the old one,
    /// which is closed: this is a process restarting and binding its address
    /// again, and the old life's pending `recv` ends with
    /// [`ChannelError::Closed`] rather than waiting forever.
    pub fn join(&self, node: NodeId) -> MemChannel {
        let inbox = Arc::new(Inbox::new(self.inner.inbox_capacity));
        let old = lock(&self.inner.routes)
            .nodes
            .insert(node, Arc::clone(&inbox));
        if let Some(old) = old {
            old.close();
        }
        MemChannel {
            net: Arc::clone(&self.inner),
            node,
            inbox,
        }
    }

    /// The largest datagram the network carries.
    pub fn max_datagram(&self) -> usize {
        self.inner.max_datagram
    }

    /// How many datagrams each node's inbox holds before new ones are dropped.
    pub fn inbox_capacity(&self) -> usize {
        self.inner.inbox_capacity
    }

    /// The nodes currently on the network, in ascending order.
    pub fn nodes(&self) -> Vec<NodeId> {
        lock(&self.inner.routes).nodes.keys().copied().collect()
    }

    /// Brings the directed link `from → to` up or down. A datagram sent on a
    /// down link is dropped and counted in [`MemStats::dropped_link`]; the
    /// sender is not told, as on a real network.
    ///
    /// Links are independent of membership: a link set down stays down for
    /// whichever channel later joins under those ids.
    pub fn set_link(&self, from: NodeId, to: NodeId, up: bool) {
        let mut routes = lock(&self.inner.routes);
        if up {
            routes.down.remove(&(from, to));
        } else {
            routes.down.insert((from, to));
        }
    }

    /// Whether the directed link `from → to` is up.
    pub fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        !lock(&self.inner.routes).down.contains(&(from, to))
    }

    /// Cuts every link between a node of `side_a` and a node of `side_b`, in
    /// both directions. Links within each side are left as they are.
    pub fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        let mut routes = lock(&self.inner.routes);
        for &a in side_a {
            for &b in side_b {
                routes.down.insert((a, b));
                routes.down.insert((b, a));
            }
        }
    }

    /// Brings every link up again.
    pub fn heal(&self) {
        lock(&self.inner.routes).down.clear();
    }

    /// The network's counters.
    pub fn stats(&self) -> MemStats {
        MemStats {
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            dropped_full: self.inner.dropped_full.load(Ordering::Relaxed),
            dropped_link: self.inner.dropped_link.load(Ordering::Relaxed),
            dropped_closed: self.inner.dropped_closed.load(Ordering::Relaxed),
        }
    }

    /// Datagrams dropped because the receiver's inbox was full.
    pub fn dropped_full(&self) -> u64 {
        self.stats().dropped_full
    }

    /// Datagrams dropped because their link was down.
    pub fn dropped_link(&self) -> u64 {
        self.stats().dropped_link
    }

    /// Datagrams put in a receiver's inbox.
    pub fn delivered(&self) -> u64 {
        self.stats().delivered
    }
}

impl fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemNetwork")
            .field("nodes", &self.nodes())
            .field("inbox_capacity", &self.inner.inbox_capacity)
            .field("max_datagram", &self.inner.max_datagram)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Net {
    fn deliver(
        &self,
        from: NodeId,
        from_inbox: &Arc<Inbox>,
        to: NodeId,
        datagram: Bytes,
    ) -> Result<(), ChannelError> {
        let target = {
            let routes = lock(&self.routes);
            if !routes.is_current(from, from_inbox) {
                return Err(ChannelError::Closed);
            }
            if datagram.len() > self.max_datagram {
                return Err(ChannelError::TooLarge {
                    len: datagram.len(),
                    max: self.max_datagram,
                });
            }
            let Some(inbox) = routes.nodes.get(&to) else {
                return Err(ChannelError::Unreachable(to));
            };
            if routes.down.contains(&(from, to)) {
                self.dropped_link.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // The routing lock is released before the inbox is touched, so
            // senders to different nodes only contend for the lookup.
            Arc::clone(inbox)
        };
        let counter = match target.push(from, datagram) {
            Push::Queued => &self.delivered,
            Push::Full => &self.dropped_full,
            // The receiver left between the lookup and the push: the datagram
            // was in flight, and is lost like any datagram in flight.
            Push::Closed => &self.dropped_closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One node's end of a [`MemNetwork`].
///
/// Dropping it, or calling [`close`](MemChannel::close), takes the node off
/// the network: datagrams sent to it afterwards get
/// [`ChannelError::Unreachable`], and its own `recv` and `send` return
/// [`ChannelError::Closed`].
///
/// Several tasks may wait in [`recv`](Channel::recv) on one channel at once;
/// each datagram goes to exactly one of them.
pub struct MemChannel {
    net: Arc<Net>,
    node: NodeId,
    inbox: Arc<Inbox>,
}

impl MemChannel {
    /// Takes this node off the network and wakes every pending `recv`, which
    /// then returns [`ChannelError::Closed`]. Datagrams still queued are
    /// discarded, as a closed socket's are. Closing twice is harmless.
    pub fn close(&self) {
        {
            let mut routes = lock(&self.net.routes);
            // A newer channel may have joined under the same id; that one
            // stays.
            if routes.is_current(self.node, &self.inbox) {
                routes.nodes.remove(&self.node);
            }
        }
        self.inbox.close();
    }

    /// Whether the channel was closed, by [`close`](Self::close) or by a
    /// newer channel joining under the same id.
    pub fn is_closed(&self) -> bool {
        lock(&self.inbox.state).closed
    }

    /// The next queued datagram without waiting: `Ok(None)` when the inbox is
    /// empty.
    pub fn try_recv(&self) -> Result<Option<(NodeId, Bytes)>, ChannelError> {
        let mut state = lock(&self.inbox.state);
        if state.closed {
            return Err(ChannelError::Closed);
        }
        Ok(state.queue.pop_front())
    }

    /// Datagrams waiting in this channel's inbox.
    pub fn queued(&self) -> usize {
        lock(&self.inbox.state).queue.len()
    }

    /// Datagrams dropped because this channel's inbox was full.
    pub fn dropped_full(&self) -> u64 {
        lock(&self.inbox.state).dropped_full
    }

    /// Tasks currently registered as waiting in `recv` (for tests of the
    /// channel itself: cancelled receivers must not leave wakers behind).
    #[cfg(all(test, not(ft_loom)))]
    fn waiters(&self) -> usize {
        lock(&self.inbox.state).waiters.len()
    }
}

impl Drop for MemChannel {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for MemChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemChannel")
            .field("node", &self.node)
            .field("queued", &self.queued())
            .field("closed", &self.is_closed())
            .finish()
    }
}

#[async_trait]
impl Channel for MemChannel {
    fn local(&self) -> NodeId {
        self.node
    }

    fn max_datagram(&self) -> usize {
        self.net.max_datagram
    }

    /// Queues `datagram` in `to`'s inbox, or drops it and counts why (inbox
    /// full, link down). Sending to oneself works like sending to anyone.
    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        self.net.deliver(self.node, &self.inbox, to, datagram)
    }

    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        Recv {
            inbox: &self.inbox,
            waiter: None,
        }
        .await
    }
}

/// One node's bounded queue of received datagrams.
struct Inbox {
    capacity: usize,
    state: Mutex<InboxState>,
}

struct InboxState {
    queue: VecDeque<(NodeId, Bytes)>,
    /// Pending `recv` futures, by the id each was given. A list rather than
    /// one slot because `recv` takes `&self`: with a single slot a second
    /// waiting task would overwrite the first one's waker and the first
    /// would never wake. Entries are removed when their future is dropped,
    /// so cancelled receivers leave nothing behind.
    waiters: Vec<(u64, Waker)>,
    next_waiter: u64,
    closed: bool,
    dropped_full: u64,
}

/// What became of a datagram handed to an inbox.
enum Push {
    Queued,
    Full,
    Closed,
}

impl Inbox {
    fn new(capacity: usize) -> Self {
        Inbox {
            capacity,
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                waiters: Vec::new(),
                next_waiter: 0,
                closed: false,
                dropped_full: 0,
            }),
        }
    }

    fn push(&self, from: NodeId, datagram: Bytes) -> Push {
        let waiters = {
            let mut state = lock(&self.state);
            if state.closed {
                return Push::Closed;
            }
            if state.queue.len() >= self.capacity {
                state.dropped_full += 1;
                return Push::Full;
            }
            state.queue.push_back((from, datagram));
            // Every waiter is woken, not just one: a woken future may be
            // dropped before it runs, and a single wake-up given to it would
            // be lost with it while the datagram sat in the queue.
            std::mem::take(&mut state.waiters)
        };
        // Woken outside the lock: some executors run the woken task inline,
        // and it would then try to take this lock again.
        for (_, waker) in waiters {
            waker.wake();
        }
        Push::Queued
    }

    fn close(&self) {
        let waiters = {
            let mut state = lock(&self.state);
            if state.closed {
                return;
            }
            state.closed = true;
            // Released, not just cleared: a closed channel holds no memory.
            state.queue = VecDeque::new();
            std::mem::take(&mut state.waiters)
        };
        for (_, waker) in waiters {
            waker.wake();
        }
    }
}

/// The future of [`MemChannel::recv`].
///
/// Cancel safe: a datagram leaves the queue only in the `poll` that returns
/// it, so dropping the future at any other point loses nothing.
struct Recv<'a> {
    inbox: &'a Inbox,
    /// This future's entry in the waiter list, once it has registered.
    waiter: Option<u64>,
}

impl Future for Recv<'_> {
    type Output = Result<(NodeId, Bytes), ChannelError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut state = lock(&this.inbox.state);
        let ready = if state.closed {
            Some(Err(ChannelError::Closed))
        } else {
            state.queue.pop_front().map(Ok)
        };
        if let Some(result) = ready {
            if let Some(id) = this.waiter.take() {
                state.waiters.retain(|(w, _)| *w != id);
            }
            return Poll::Ready(result);
        }
        // Registered under the same lock that `push` takes, so a datagram
        // pushed after the queue was seen empty finds this waker: no lost
        // wake-up.
        let registered = this
            .waiter
            .and_then(|id| state.waiters.iter_mut().find(|(w, _)| *w == id));
        match registered {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => {
                // Either first poll, or a push woke (and unregistered) this
                // future but another receiver took the datagram first.
                let id = state.next_waiter;
                state.next_waiter += 1;
                state.waiters.push((id, cx.waker().clone()));
                this.waiter = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for Recv<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter.take() {
            lock(&self.inbox.state).waiters.retain(|(w, _)| *w != id);
        }
    }
}

#[cfg(all(test, not(ft_loom)))]
mod tests {
    use super::*;
    use crate::testing::{ChannelFactory, channel_conformance};
    use futures::FutureExt;
    use futures::executor::block_on;

    struct MemFactory;

    #[async_trait]
    impl ChannelFactory for MemFactory {
        async fn make(&mut self, nodes: &[NodeId]) -> Vec<Box<dyn Channel>> {
            let net = MemNetwork::with_max_datagram(64, 1500);
            nodes
                .iter()
                .map(|&n| Box::new(net.join(n)) as Box<dyn Channel>)
                .collect()
        }
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn passes_the_channel_conformance_suite() {
        block_on(channel_conformance(MemFactory));
    }

    #[test]
    fn a_flood_is_bounded_by_the_inbox_and_counted() {
        let net = MemNetwork::new(4);
        let a = net.join(NodeId(1));
        let rx = net.join(NodeId(2));
        block_on(async {
            for i in 0..100u64 {
                a.send(NodeId(2), Bytes::from(i.to_le_bytes().to_vec()))
                    .await
                    .unwrap();
            }
        });
        assert_eq!(rx.queued(), 4);
        assert_eq!(rx.dropped_full(), 96);
        assert_eq!(net.stats().dropped_full, 96);
        assert_eq!(net.delivered(), 4);
        // The first datagrams were kept, the later ones dropped: a full
        // inbox refuses newcomers rather than evicting what it holds.
        let first = rx.try_recv().unwrap().unwrap();
        assert_eq!(first.1, Bytes::from(0u64.to_le_bytes().to_vec()));
    }

    #[test]
    fn send_errors_say_why() {
        let net = MemNetwork::with_max_datagram(4, 8);
        let a = net.join(NodeId(1));
        let _b = net.join(NodeId(2));
        block_on(async {
            assert_eq!(
                a.send(NodeId(3), b("x")).await,
                Err(ChannelError::Unreachable(NodeId(3)))
            );
            assert_eq!(
                a.send(NodeId(2), Bytes::from(vec![0; 9])).await,
                Err(ChannelError::TooLarge { len: 9, max: 8 })
            );
            assert_eq!(a.send(NodeId(2), Bytes::from(vec![0; 8])).await, Ok(()));
        });
    }

    #[test]
    fn downed_links_drop_one_direction_and_heal() {
        let net = MemNetwork::new(8);
        let a = net.join(NodeId(1));
        let b_end = net.join(NodeId(2));
        net.set_link(NodeId(1), NodeId(2), false);
        assert!(!net.link_up(NodeId(1), NodeId(2)));
        block_on(async {
            a.send(NodeId(2), b("lost")).await.unwrap();
            b_end.send(NodeId(1), b("back")).await.unwrap();
        });
        assert_eq!(net.dropped_link(), 1);
        assert_eq!(b_end.try_recv(), Ok(None));
        assert_eq!(a.try_recv(), Ok(Some((NodeId(2), b("back")))));

        net.set_link(NodeId(1), NodeId(2), true);
        block_on(a.send(NodeId(2), b("through"))).unwrap();
        assert_eq!(b_end.try_recv(), Ok(Some((NodeId(1), b("through")))));

        net.partition(&[NodeId(1)], &[NodeId(2)]);
        block_on(async {
            a.send(NodeId(2), b("x")).await.unwrap();
            b_end.send(NodeId(1), b("y")).await.unwrap();
        });
        assert_eq!(net.dropped_link(), 3);
        net.heal();
        assert!(net.link_up(NodeId(2), NodeId(1)));
    }

    #[test]
    fn close_wakes_receivers_and_unroutes_the_node() {
        let net = MemNetwork::new(8);
        let a = net.join(NodeId(1));
        let rx = net.join(NodeId(2));
        block_on(a.send(NodeId(2), b("discarded"))).unwrap();
        let mut pending = Box::pin(a.recv());
        assert!((&mut pending).now_or_never().is_none());
        a.close();
        assert_eq!(block_on(pending), Err(ChannelError::Closed));
        assert_eq!(block_on(a.recv()), Err(ChannelError::Closed));
        assert_eq!(
            block_on(a.send(NodeId(2), b("x"))),
            Err(ChannelError::Closed)
        );
        assert_eq!(
            block_on(rx.send(NodeId(1), b("x"))),
            Err(ChannelError::Unreachable(NodeId(1)))
        );
        assert_eq!(net.nodes(), vec![NodeId(2)]);
        drop(rx);
        assert!(net.nodes().is_empty());
    }

    #[test]
    fn rejoining_replaces_and_closes_the_old_life() {
        let net = MemNetwork::new(8);
        let old = net.join(NodeId(1));
        let peer = net.join(NodeId(2));
        let new = net.join(NodeId(1));
        assert!(old.is_closed());
        // Dropping the old life must not unroute the new one.
        drop(old);
        block_on(peer.send(NodeId(1), b("to the new life"))).unwrap();
        assert_eq!(new.try_recv(), Ok(Some((NodeId(2), b("to the new life")))));
    }

    #[test]
    fn concurrent_receivers_each_get_a_datagram_and_cancelled_ones_leave_nothing() {
        let net = MemNetwork::new(8);
        let tx = net.join(NodeId(1));
        let rx = net.join(NodeId(2));
        let mut first = Box::pin(rx.recv());
        let mut second = Box::pin(rx.recv());
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        assert_eq!(rx.waiters(), 2);
        block_on(async {
            tx.send(NodeId(2), b("one")).await.unwrap();
            tx.send(NodeId(2), b("two")).await.unwrap();
        });
        let got = block_on(futures::future::join(first, second));
        assert_eq!(got, (Ok((NodeId(1), b("one"))), Ok((NodeId(1), b("two")))));

        for _ in 0..10 {
            assert!(rx.recv().now_or_never().is_none());
        }
        assert_eq!(rx.waiters(), 0, "dropped receivers must unregister");
    }
}

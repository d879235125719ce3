//! The address book both channels share: which socket address each
//! [`NodeId`] is at.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use ft_core::NodeId;

/// A static-by-default map from node to address that can still be changed
/// while the channel runs (a node moved, a node joined).
///
/// Addresses are stored as [`reachable`] makes them, so that the address a
/// datagram is sent to and the address a peer's datagrams are checked
/// against are the same.
///
/// Reads happen on every datagram, writes almost never: an `RwLock`, held
/// only for a lookup, never across an await.
#[derive(Debug)]
pub(crate) struct AddressBook {
    peers: RwLock<BTreeMap<NodeId, SocketAddr>>,
}

impl AddressBook {
    pub(crate) fn new(peers: BTreeMap<NodeId, SocketAddr>) -> Self {
        AddressBook {
            peers: RwLock::new(
                peers
                    .into_iter()
                    .map(|(node, addr)| (node, reachable(addr)))
                    .collect(),
            ),
        }
    }

    pub(crate) fn get(&self, node: NodeId) -> Option<SocketAddr> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .copied()
    }

    pub(crate) fn contains(&self, node: NodeId) -> bool {
        self.get(node).is_some()
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn insert(&self, node: NodeId, addr: SocketAddr) -> Option<SocketAddr> {
        self.peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, reachable(addr))
    }

    pub(crate) fn remove(&self, node: NodeId) -> Option<SocketAddr> {
        self.peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&node)
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into the IPv4 one, so that
/// a dual-stack socket's view of a peer compares equal to the book's.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// `addr` as a destination: canonical, with a wildcard IP replaced by
/// loopback (what a socket bound to `0.0.0.0` is reached at from the same
/// host, and what its datagrams to itself come from).
pub(crate) fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    canonical(SocketAddr::new(ip, bound.port()))
}

/// Locks `mutex`, ignoring poisoning: the data behind this crate's mutexes
/// (queues of senders, counters) is consistent at every step, so a panic in
/// one task should not turn into poison errors in all the others.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod book;
pub mod clock;
pub mod commit;
pub mod durable;
pub mod node;
mod spawn;
pub mod tcp;
pub mod udp;

pub use clock::TokioClock;
pub use commit::{CommitError, CommitNode, CommitNodeBuilder, Outcome};
pub use durable::Opened;
pub use node::{NodeError, NodeStats, Prepared, RpcNode, RpcNodeBuilder, Transport};
pub use spawn::{NoLog, spawn, spawn_volatile};
pub use tcp::{TCP_DEFAULT_MAX_DATAGRAM, TcpChannel, TcpConfig, TcpStats};
pub use udp::{
    MulticastConfig, UDP_HEADER_LEN, UDP_MAX_DATAGRAM, UdpBatching, UdpChannel, UdpStats,
};

//! # Writing a transport
//!
//! ft's protocols never touch a socket: each runs as a sans-IO core under
//! the [`driver`](crate::driver), which moves its datagrams through a
//! [`Channel`]. ft-tokio ships UDP and TCP channels; any other transport
//! (QUIC, a message bus, shared memory, a test network) plugs in by
//! implementing the trait. This guide gives the contract, a complete
//! adapter, and how to check it.
//!
//! ## The contract
//!
//! The [`channel`](crate::channel) module's docs state it in full; in
//! short, a channel carries *unreliable datagrams* between [`NodeId`]s:
//!
//! 1. A datagram arrives whole or not at all, with the sender's id. It may
//!    be lost, duplicated, reordered or delayed: the protocols make that
//!    reliable. Do not add retries or acknowledgements.
//! 2. `send` over [`max_datagram`](Channel::max_datagram) fails with
//!    [`ChannelError::TooLarge`]. The driver fits its frames to that limit
//!    itself, so a core's messages never hit it.
//! 3. `send` to a node the channel cannot locate fails with
//!    [`ChannelError::Unreachable`]. It must not pretend the network lost
//!    the datagram: that hides a misconfigured address book.
//! 4. `send` never waits for a remote peer. A slow or dead peer's queue is
//!    full: drop the datagram and return `Ok` (count it, if you keep
//!    counters). This is the mistake most adapters make: an `.await` on a
//!    bounded queue, a blocking socket, a connection being dialed. Waiting
//!    for a *local* resource (a socket buffer draining to the network card)
//!    is fine.
//! 5. `send` to the channel's own node delivers to its own `recv`. ft's
//!    protocols send to themselves (an RPC node calling its own server, a
//!    multicast sender in its own group).
//! 6. `recv` is cancel safe (the driver keeps one pending and drops it at
//!    shutdown), and receive queues are bounded, dropping when full.
//! 7. [`send_batch`](Channel::send_batch) and
//!    [`send_to_many`](Channel::send_to_many) behave as `send` one datagram
//!    at a time, and report each refused datagram by its position. Their
//!    defaults do exactly that; override them when the transport can do
//!    better (one vectored write per peer, `sendmmsg`, IP multicast).
//!
//! ## How the driver uses a channel
//!
//! After each step of the core (a message, an input, a timer, a persist
//! completed), the driver frames every datagram the core asked for and hands
//! them to [`send_batch`](Channel::send_batch) in one call, in the order
//! asked. When more work is ready at once (a burst of datagrams, inputs
//! queued meanwhile), it takes it back to back and hands over the datagrams
//! of 2 steps, then 4, 8…, so a burst costs a few batches, not one per
//! step. It polls each call once at once: a channel that completes
//! immediately (the common case, since sends do not wait) costs no extra
//! wake-up. A batch still in progress is polled beside the driver's other
//! work, and later datagrams wait for it in a bounded queue
//! ([`DriverConfig::send_queue_bytes`](crate::DriverConfig)); so even a
//! channel that breaks rule 4 stalls only datagrams, which are dropped and
//! counted, never the core's timers, inputs or persists.
//!
//! One `recv` future stays pending across the driver's iterations; each
//! datagram it returns is checked (magic, version, length, CRC-32) and
//! decoded, and a bad one is dropped and counted. So a channel needs no
//! checksums of its own.
//!
//! ## A complete adapter
//!
//! A channel over tokio's bounded mpsc queues: a `Switch` holds every
//! node's inbox. It is the whole of `ft-core/tests/writing_a_transport.rs`,
//! whose test runs it against the conformance suite (so this code is
//! compiled and checked by `cargo test`, though not as a doc test):
//!
#![doc = concat!("```rust,ignore\n", include_str!("../tests/writing_a_transport.rs"), "```")]
//!
//! What to notice:
//!
//! - `try_send`, not `send(..).await` (rule 4): a full inbox drops;
//! - an unknown id is [`ChannelError::Unreachable`] (rule 3), while a
//!   known peer that is gone is a datagram lost;
//! - `recv` takes a datagram only when it returns it (rule 6);
//! - the node's own inbox is in the switch like any other (rule 5).
//!
//! ## Checking an adapter
//!
//! With ft-core's `testing` feature (a dev-dependency:
//! `ft-core = { version = "…", features = ["testing"] }`), run
//! `ft_core::testing::channel_conformance` with a factory that builds fresh,
//! connected channels for each check:
//!
//! ```ignore
//! struct Queues;
//!
//! #[async_trait]
//! impl ChannelFactory for Queues {
//!     async fn make(&mut self, nodes: &[NodeId]) -> Vec<Box<dyn Channel>> {
//!         let switch = Switch::default();
//!         nodes.iter().map(|&n| Box::new(switch.join(n, MIN_QUEUE)) as Box<dyn Channel>).collect()
//!     }
//! }
//!
//! #[tokio::test]
//! async fn passes_the_suite() {
//!     channel_conformance(Queues).await;
//! }
//! ```
//!
//! The suite checks every rule above, each in a check named for it, and
//! each check is shown to fail on an adapter that breaks its rule (an
//! adapter that drops datagrams to unknown nodes, one that refuses to send
//! to itself, one whose batch stops at the first refusal or reverses the
//! order, one that waits for a full peer). A transport that injects faults
//! on purpose runs it with its faults off; it assumes a benign network at
//! its scale (tens of datagrams, nothing lost between two live nodes) and
//! receivers that queue at least `MIN_QUEUE` datagrams.
//!
//! Then run a protocol over it: any ft core under
//! [`driver`](crate::driver::driver), with the channel passed by value
//! (`Box<dyn Channel>` works).

#[cfg(doc)]
use crate::{Channel, ChannelError, NodeId};

//! Reliable RPC as a sans-IO core: at-least-once, at-most-once and
//! exactly-once semantics, the subject's five failure classes, orphans,
//! deadlines, back-off and a retry budget.
//!
//! An [`Rpc`] core is both a client and a server: any node may call any
//! other. It runs over unreliable datagrams — not over the
//! [reliable channel](crate::channel) — on purpose: RPC's own
//! retransmissions and duplicate detection are what *define* its semantics
//! (Birrell and Nelson's design). Under a reliable channel a request could
//! never be seen twice and at-least-once would mean nothing.
//!
//! # Semantics
//!
//! | semantics | client | server | survives |
//! |---|---|---|---|
//! | [at-least-once](Semantics::AtLeastOnce) | retransmits until a reply or the deadline | executes every copy it receives | request and reply loss; may execute more than once |
//! | [at-most-once](Semantics::AtMostOnce) | retransmits; calls carry (client, client incarnation, sequence number) and the server life they are bound to | keeps completion records (cached replies) in memory and answers duplicates from them; a duplicate of a running call gets `InProgress`; a stale duplicate is rejected | loss and duplication; a server crash is reported, never hidden by a second execution |
//! | [exactly-once](Semantics::ExactlyOnce) | as at-most-once | makes the completion record durable (`Persist`) *before* the reply is sent, and rebuilds the records on restart | also server crashes: a completed call is answered from the record, never re-executed |
//!
//! Completion records are forgotten when the client's piggybacked
//! `first_incomplete` says it has the reply, and when a client's lease runs
//! out (a tombstone keeps later duplicates from executing again).
//!
//! # The five failure classes
//!
//! | subject's class | here |
//! |---|---|
//! | the client cannot locate the server | [`RpcError::CannotLocateServer`]: binding (`Locate`) got no answer before the deadline |
//! | the request is lost | retransmitted transparently with exponential back-off and full jitter until the deadline, then [`RpcError::TimedOut`] |
//! | the server crashes | detected by a changed server incarnation: [`RpcError::ServerCrashed`] with whether the call may have executed ([`Executed`]); exactly-once calls are answered from the new life's durable record instead |
//! | the reply is lost | the retransmitted request is answered from the completion record ([`ServerStats::replies_from_records`]) |
//! | the client crashes | orphans: see below |
//!
//! # Orphans
//!
//! A computation whose caller crashed is an orphan. The server handles them
//! as configured ([`OrphanConfig`]), and tells the application to stop each
//! one ([`RpcEvent::Cancel`] with the [`CancelReason`]):
//!
//! - **reincarnation**: a restarted client announces its new incarnation;
//!   the server kills every computation of its older lives;
//! - **gentle reincarnation**: the same, but computations the new life
//!   still owns (it lists them, from its call log) are spared;
//! - **expiration**: each computation gets a quantum `T` that the client
//!   must renew; one not renewed in time is killed;
//! - **extermination**: the client logs every outgoing call on stable
//!   storage before sending it; on restart it asks the servers to kill the
//!   calls its log shows unfinished.
//!
//! # Deadlines, cancellation, retries
//!
//! A call carries the time left to its deadline; the server's
//! [`RpcEvent::Execute`] hands the absolute deadline to the handler, which
//! passes it on to nested calls ([`CallOptions::deadline`]), and the server
//! cancels a computation whose deadline passes. [`RpcInput::Cancel`] (what
//! an async handle sends when its caller drops the call) ends the call with
//! [`RpcError::Cancelled`] and tells the server. Retransmissions back off
//! exponentially with full jitter, and a token bucket in the manner of
//! gRPC's retry throttling stops them altogether while most calls are
//! timing out, so retries cannot amplify an overload.
//!
//! # Methods
//!
//! getters ([`Rpc::client_stats`], [`Rpc::server_stats`],
//! [`Rpc::log_stats`], [`Rpc::pending`], [`Rpc::running`],
//! [`Rpc::incarnation`]); the [`Protocol`] `handle_*` methods; mutators
//! through [`RpcInput`]; `poll_output` after every `handle_*` call.
//!
//! Inside, the node is a `Client` and a `Server` (private types), each
//! owning its state and methods, over the part they share (the
//! configuration, the identity, the random numbers, one `ft_core::Outbox`
//! and the log's bookkeeping). What it keeps on stable storage, and how it
//! snapshots and compacts it, is in [`records`].

mod budget;
mod client;
mod due;
mod message;
mod node;
mod parts;
pub mod records;
mod server;
mod window;

pub use budget::{Backoff, RetryBudget};
pub use client::ClientStats;
pub use message::{
    CallId, Chunk, MAX_BODY_LIMIT, MAX_LISTED, MAX_PART, Outcome, RPC_VERSION, Refusal, RpcMessage,
    fingerprint,
};
pub use node::LogStats;
pub use records::{Completion, DurableRecords, RpcRecord};
pub use server::{MAX_CLIENTS, ServerStats};

use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::rng::Rng;
use ft_core::wire::DecodeError;
use ft_core::{
    Counters, Incarnation, NodeId, Outbox, Output, PersistToken, Persisted, Protocol, Recover,
    RecoveryContext, RecoveryError,
};

use client::Client;
use node::Node;
use records::{Replayed, SnapshotPart};
use server::Server;

/// How often a call may be executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Semantics {
    /// At least once: possibly more (every retransmission may execute).
    AtLeastOnce,
    /// At most once: never twice, even across server crashes (a crash is
    /// reported instead).
    AtMostOnce,
    /// Exactly once for every call that is answered, across server crashes.
    ExactlyOnce,
}

impl Semantics {
    pub(crate) fn code(self) -> u8 {
        match self {
            Semantics::AtLeastOnce => 0,
            Semantics::AtMostOnce => 1,
            Semantics::ExactlyOnce => 2,
        }
    }

    pub(crate) fn from_code(c: u8) -> Result<Self, DecodeError> {
        match c {
            0 => Ok(Semantics::AtLeastOnce),
            1 => Ok(Semantics::AtMostOnce),
            2 => Ok(Semantics::ExactlyOnce),
            tag => Err(DecodeError::UnknownTag {
                what: "Semantics",
                tag,
            }),
        }
    }
}

/// Whether a failed call may have executed: what a caller needs to decide
/// whether retrying it could run it twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executed {
    /// It did not.
    No,
    /// It may have: it was sent, and nothing says whether it ran.
    Unknown,
    /// It did (the server said it was running it, or that it ran).
    Yes,
}

/// Why a call failed: the subject's failure classes, plus what a caller
/// must handle differently. Every error says whether the call may have
/// executed ([`RpcError::executed`]); a *refused* call never did.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No life of the server answered `Locate` before the deadline; the
    /// call was never sent.
    #[error("cannot locate server {server}")]
    CannotLocateServer {
        /// The server.
        server: NodeId,
    },
    /// The request (or every reply) was lost until the deadline.
    #[error("no reply before the deadline after {attempts} transmissions; executed: {executed:?}")]
    TimedOut {
        /// How many times the request was sent.
        attempts: u32,
        /// Whether it may have executed.
        executed: Executed,
    },
    /// The server restarted while the call was outstanding.
    #[error("the server crashed (restarted as {incarnation}); executed: {executed:?}")]
    ServerCrashed {
        /// The server's new life.
        incarnation: Incarnation,
        /// Whether the call may have executed.
        executed: Executed,
    },
    /// The caller cancelled the call.
    #[error("cancelled by the caller; executed: {executed:?}")]
    Cancelled {
        /// Whether it may have executed before the cancellation.
        executed: Executed,
    },
    /// The call was refused before it executed, by this client or by the
    /// server: it did not run.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The server no longer knows the call's outcome: its completion record
    /// was forgotten (acknowledged, over the server's bounds, or its lease
    /// ran out) before this retransmission arrived. It may have executed.
    #[error("the server forgot the call's outcome; executed: {executed:?}")]
    Forgotten {
        /// Whether it may have executed (`Yes` if the server had said it
        /// was running it).
        executed: Executed,
    },
    /// The server holds a different request under this call's identity (a
    /// client life that reused another's identity): this request did not
    /// run, and the other's reply was not given for it.
    #[error("the server holds a different call under this identity")]
    Mismatch,
    /// The server's handler failed (panicked) while executing the call.
    #[error("the handler failed; executed: Yes")]
    HandlerFailed,
    /// The call executed, but its reply is larger than the server may send.
    #[error("the call executed, but its reply of {len} bytes exceeds the limit of {limit}")]
    ReplyTooLarge {
        /// The reply's size.
        len: u64,
        /// The limit.
        limit: u64,
    },
}

impl RpcError {
    /// Whether the call may have executed.
    pub fn executed(&self) -> Executed {
        match self {
            RpcError::CannotLocateServer { .. } | RpcError::Refused(_) | RpcError::Mismatch => {
                Executed::No
            }
            RpcError::TimedOut { executed, .. }
            | RpcError::ServerCrashed { executed, .. }
            | RpcError::Cancelled { executed }
            | RpcError::Forgotten { executed } => *executed,
            RpcError::HandlerFailed | RpcError::ReplyTooLarge { .. } => Executed::Yes,
        }
    }
}

/// How a server treats orphans. Expiration and extermination work alongside
/// either reincarnation policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reincarnation {
    /// Leave orphans of a restarted client alone (only expiration or
    /// extermination, if on, end them).
    Off,
    /// Kill every computation of a restarted client's earlier lives.
    Kill,
    /// Kill those the restarted client does not claim as its own.
    Gentle,
}

/// Orphan handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrphanConfig {
    /// What the server does when a client announces a new life.
    pub reincarnation: Reincarnation,
    /// Expiration: every computation must be renewed by its client within
    /// this quantum `T` (the client renews every `T / 3`); `None` disables.
    ///
    /// # The clocks it assumes
    ///
    /// The client measures `T / 3` on its clock and the server `T` on its
    /// own. If the client's clock runs slow by `ρc` and the server's fast by
    /// `ρs` (a clock drifting at rate `ρ` advances `1 + ρ` seconds per true
    /// second), renewals arrive every `(T/3)/(1+ρc)` of true time and the
    /// server gives up after `T/(1+ρs)`. So expiration needs
    /// `(1+ρs)/(1+ρc) < 3` with no renewal lost, and `< 1.5` to survive one
    /// lost renewal (the gap is then `2T/3`), each less the network delay:
    /// for clocks drifting apart by the same rate, `ρ < 0.5` and `ρ < 0.2`.
    /// Outside that bound the server kills computations whose client is
    /// alive and renewing ([`CancelReason::Expired`]); inside it, orphans of
    /// a crashed client die within `T/(1+ρs)` plus a renewal interval. The
    /// simulator's clock faults show both
    /// (`tests/rpc.rs`, `expiration_holds_under_drift_…`).
    pub quantum: Option<Duration>,
    /// Extermination: the client logs outgoing calls on stable storage and
    /// on restart asks servers to kill the unfinished ones.
    pub extermination: bool,
}

impl Default for OrphanConfig {
    /// Reincarnation (kill), no expiration, no extermination.
    fn default() -> Self {
        OrphanConfig {
            reincarnation: Reincarnation::Kill,
            quantum: None,
            extermination: false,
        }
    }
}

/// When an RPC node writes a snapshot of what it still needs and compacts
/// its log to it (see [`records`]): once the records written since the
/// last snapshot are at least `multiple` times as many as a snapshot now
/// takes (the *live set* `L`), and at least `min_records`.
///
/// `L` counts two records of framing, one per client that made
/// exactly-once calls, one per completion record not yet acknowledged by
/// its client (at most [`RpcConfig::records_per_client`] a client; after a
/// restart, every record restored until its client acknowledges it), one
/// per unfinished logged call, and **one per 1,024 effects (or 64 KiB of
/// them) ever made durable**: effects are the application's state, which
/// only the application could fold, so a service whose calls return
/// effects keeps them all.
///
/// A core embedding the RPC core (as [`Echo`](crate::echo::Echo) does)
/// compacts through `ft_core`'s `Outbox::lift`, which remembers the last
/// 4,096 persists of the embedded core: a snapshot of more records than
/// that (beyond some four million effects) is written but not compacted
/// behind.
///
/// The node checks whether a snapshot is due when `min_records`, the last
/// check's threshold, or `L` more records have been written, whichever
/// comes first, and a check costs about what a snapshot does: checks and
/// snapshots together rewrite at most about `1 + 1 / multiple` records
/// per record written. So the log holds the last snapshot, the records
/// written since (fewer than `max(multiple × L, min_records) + L`), and a
/// snapshot being made durable with what is written meanwhile: with `L`
/// the largest live set, at most about `(multiple + 3) × L + min_records`
/// records, each no larger than a completion record (its reply, at most
/// [`RpcConfig::max_body`], plus 50 bytes). `Rpc::log_stats` shows `L`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// The records written since the last snapshot, as a multiple of the
    /// snapshot's size, that make the next snapshot due.
    pub multiple: usize,
    /// No snapshot before this many records were written since the last.
    pub min_records: usize,
}

impl Default for Compaction {
    /// A snapshot once 4 times its size and at least 256 records were
    /// written since the last.
    fn default() -> Self {
        Compaction {
            multiple: 4,
            min_records: 256,
        }
    }
}

/// Configuration of an [`Rpc`] node, the same in every life.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// The nodes this node may call or be called by; messages from others
    /// are dropped (and their memory never allocated).
    pub peers: Vec<NodeId>,
    /// Orphan handling (both as a client and as a server).
    pub orphans: OrphanConfig,
    /// Back-off between retransmissions of a call or a `Locate`.
    pub backoff: Backoff,
    /// Retry throttling.
    pub budget: RetryBudget,
    /// Completion records kept per client (older ones are forgotten and
    /// their duplicates answered `Stale`, reported as
    /// [`RpcError::Forgotten`]).
    pub records_per_client: usize,
    /// Bytes of replies kept in completion records per client; over it the
    /// oldest records are forgotten, as over `records_per_client`.
    pub record_bytes_per_client: usize,
    /// The largest request or reply body (at most [`MAX_BODY_LIMIT`]).
    /// Bodies larger than [`MAX_PART`] travel in parts. A larger request is
    /// refused before it is sent (and by the server before it runs); a
    /// larger reply is reported as [`RpcError::ReplyTooLarge`].
    pub max_body: usize,
    /// Bytes of bodies arriving in parts held for one peer; beyond, the
    /// oldest partial bodies are dropped (their senders send them again).
    pub max_partial_per_peer: usize,
    /// Bytes of bodies arriving in parts held for all peers together.
    pub max_partial_total: usize,
    /// Computations running at once; calls beyond are refused.
    pub max_running: usize,
    /// Calls outstanding at once at the client; calls beyond are refused.
    pub max_pending: usize,
    /// Whether this node serves calls; a client-only node answers every call
    /// with [`Refusal::NotServing`].
    pub serves: bool,
    /// Whether the node's [`StableLog`](ft_core::StableLog) is stable
    /// storage. Without it exactly-once calls are refused
    /// ([`Refusal::NoStableStorage`]) rather than promised and forgotten at
    /// the next restart.
    pub stable_storage: bool,
    /// A server forgets a client's at-most-once records when it has not
    /// heard from it for this long (keeping a tombstone so its old calls are
    /// not executed again). Measured on the server's clock only: drift makes
    /// it end sooner or later, which changes how often a late duplicate is
    /// answered "forgotten", never whether a call runs twice.
    pub lease: Duration,
    /// When the node snapshots what it still needs and compacts its log
    /// ([`Compaction`]); `None`: never, the log grows with every record.
    pub compaction: Option<Compaction>,
}

impl RpcConfig {
    /// `peers` with the defaults: back-off of at least 20 ms plus a full
    /// jitter capped at 20 ms doubling to 1 s, the default
    /// [`RetryBudget`], 1024 records and 16 MiB of replies per client,
    /// bodies up to 4 MiB, 8 MiB of partial bodies per peer and 64 MiB in
    /// all, 1024 running, 1024 pending, a 60 s lease, reincarnation, the
    /// default [`Compaction`].
    pub fn new(peers: Vec<NodeId>) -> Self {
        RpcConfig {
            peers,
            orphans: OrphanConfig::default(),
            backoff: Backoff::default(),
            budget: RetryBudget::default(),
            records_per_client: 1024,
            record_bytes_per_client: 16 << 20,
            max_body: 4 << 20,
            max_partial_per_peer: 8 << 20,
            max_partial_total: 64 << 20,
            max_running: 1024,
            max_pending: 1024,
            serves: true,
            stable_storage: true,
            lease: Duration::from_secs(60),
            compaction: Some(Compaction::default()),
        }
    }
}

/// How one call is made.
///
/// # Example
///
/// ```
/// use std::time::{Duration, Instant};
/// use ft_rpc::rpc::{CallOptions, Semantics};
///
/// // Exactly once, giving up five seconds from now.
/// let options = CallOptions::within(Semantics::ExactlyOnce, Duration::from_secs(5));
/// assert_eq!(options.semantics, Semantics::ExactlyOnce);
/// assert!(options.deadline <= Instant::now() + Duration::from_secs(5));
///
/// // The fields are public: a nested call keeps its parent's deadline
/// // (the `deadline` its handler was given) and picks its own semantics.
/// let nested = CallOptions {
///     semantics: Semantics::AtMostOnce,
///     ..options
/// };
/// assert_eq!(nested.deadline, options.deadline);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallOptions {
    /// How often it may execute.
    pub semantics: Semantics,
    /// When to give up. A nested call passes on its parent's deadline (the
    /// `deadline` of [`RpcEvent::Execute`]).
    pub deadline: Instant,
}

impl CallOptions {
    /// `semantics`, with the deadline `timeout` from now (read from the
    /// system's monotonic clock: for callers outside a simulation).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use ft_rpc::rpc::{CallOptions, Semantics};
    ///
    /// let before = Instant::now();
    /// let options = CallOptions::within(Semantics::AtLeastOnce, Duration::from_millis(250));
    /// assert!(options.deadline >= before + Duration::from_millis(250));
    /// ```
    pub fn within(semantics: Semantics, timeout: Duration) -> CallOptions {
        CallOptions {
            semantics,
            deadline: after(Instant::now(), timeout),
        }
    }
}

/// What the application asks of its RPC node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcInput {
    /// Call `server` with `request`; the answer comes as
    /// [`RpcEvent::Returned`] with the same `token`.
    Call {
        /// The caller's name for the call.
        token: u64,
        /// Whom to call.
        server: NodeId,
        /// The request body.
        request: Bytes,
        /// How.
        options: CallOptions,
    },
    /// The caller gave up on the call named `token`.
    Cancel {
        /// The call.
        token: u64,
    },
    /// The application finished executing `exec` with `reply`.
    ///
    /// `effect` is the state change the computation made, as the
    /// application wants to replay it after a restart. Under exactly-once it
    /// is made durable **in the same record as the call's completion**, so
    /// an effect recorded this way is applied exactly once: a restarted
    /// application rebuilds its state from these effects
    /// ([`durable_effects`]) and a completed call is answered, never run
    /// again. Effects the handler makes *outside* this record (its own
    /// files, other services) have no such promise: a life killed after the
    /// handler ran but before the record was durable leaves them done, and
    /// the retransmitted call runs again in the next life. Under the other
    /// semantics `effect` is ignored.
    Complete {
        /// The computation ([`RpcEvent::Execute`]).
        exec: CallId,
        /// The reply.
        reply: Bytes,
        /// The state change to make durable with the completion.
        effect: Option<Bytes>,
    },
    /// The computation `exec` failed (its handler panicked): the caller gets
    /// [`RpcError::HandlerFailed`], recorded like a reply so a duplicate is
    /// not run again.
    Fail {
        /// The computation.
        exec: CallId,
    },
}

/// Why a computation must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// Its client restarted (reincarnation).
    Reincarnation,
    /// Its client restarted and does not claim it (gentle reincarnation).
    GentleReincarnation,
    /// Its client did not renew its quantum (expiration).
    Expired,
    /// Its restarted client asked for it to be killed (extermination).
    Exterminated,
    /// Its deadline passed.
    DeadlineExceeded,
    /// The caller cancelled it.
    CallerCancelled,
}

impl CancelReason {
    /// Whether the computation is an orphan (its caller crashed, or gave it
    /// up by not renewing it).
    pub fn orphan(self) -> bool {
        matches!(
            self,
            CancelReason::Reincarnation
                | CancelReason::GentleReincarnation
                | CancelReason::Expired
                | CancelReason::Exterminated
        )
    }
}

/// What an RPC node tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcEvent {
    /// The call named `token` ended.
    Returned {
        /// The caller's name for the call.
        token: u64,
        /// Its outcome.
        result: Result<Bytes, RpcError>,
    },
    /// Run `request` for `id` and answer with [`RpcInput::Complete`].
    Execute {
        /// The computation.
        id: CallId,
        /// The request.
        request: Bytes,
        /// When the caller gives up: pass it on to nested calls.
        deadline: Instant,
        /// The semantics the caller asked for.
        semantics: Semantics,
    },
    /// Stop the computation `id`; its result, if any, will not be used.
    Cancel {
        /// The computation.
        id: CallId,
        /// Why.
        reason: CancelReason,
    },
}

/// The named timers of an RPC node.
///
/// The node sets one timer for all its outstanding calls
/// ([`Calls`](Self::Calls)) and one for all its running computations
/// ([`Computations`](Self::Computations)), each for the earliest moment one
/// of them needs it, rather than a timer (or two) per call: a call
/// answered before its retransmission is due costs the environment no
/// timer at all. These timers are never cancelled; one that fires with
/// nothing due sets itself again for what is.
///
/// `Retry`, `Deadline` and `Running` name one call's or computation's
/// event. The node no longer sets them, but handles them when they fire:
/// a test or tool may fire one to make that event happen now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RpcTimer {
    /// Retransmit call `seq` (or its `Locate`) now.
    Retry(u64),
    /// Call `seq` reached its deadline.
    Deadline(u64),
    /// Computation `id` reached its deadline or its quantum, if it did by
    /// now.
    Running(CallId),
    /// The earliest retransmission or deadline of the outstanding calls is
    /// due: every one due by now is handled.
    Calls,
    /// The earliest deadline or quantum of the running computations is
    /// due: every one due by now is handled.
    Computations,
    /// Renew the quanta of outstanding calls (expiration).
    Renew,
    /// Retransmit the restart announcement / extermination requests.
    Recovery,
    /// Forget clients whose lease ran out.
    Leases,
}

/// An RPC node: client and server. See the [module docs](self).
///
/// It is built by [`Recover::recover`], from a [`RecoveryContext`] whose
/// incarnation must be new in every life of the node: a server answers a
/// retransmission from its record of `(node, incarnation, sequence
/// number)`, so a restarted client that reused its incarnation could be
/// handed its previous life's replies (the server answers
/// [`RpcError::Mismatch`] when the request differs, but cannot tell an
/// identical request from the old one). `ft_tokio::RpcNode` does this
/// right: a durable incarnation from its data directory, or one from the
/// clock without one.
#[derive(Debug)]
pub struct Rpc {
    node: Node,
    client: Client,
    server: Server,
}

impl Rpc {
    /// This node.
    pub fn id(&self) -> NodeId {
        self.node.me
    }

    /// This node's life.
    pub fn incarnation(&self) -> Incarnation {
        self.node.incarnation
    }

    /// Calls outstanding at this node as a client.
    pub fn pending(&self) -> usize {
        self.client.pending()
    }

    /// Computations running at this node as a server.
    pub fn running(&self) -> usize {
        self.server.running_count()
    }

    /// The computations running at this node as a server.
    pub fn running_calls(&self) -> impl Iterator<Item = CallId> + '_ {
        self.server.running_ids()
    }

    /// What the client side did in this life.
    pub fn client_stats(&self) -> ClientStats {
        self.client.stats()
    }

    /// What the server side did in this life.
    pub fn server_stats(&self) -> ServerStats {
        self.server.stats()
    }

    /// What the node did with its log in this life: snapshots and
    /// compactions.
    pub fn log_stats(&self) -> LogStats {
        self.node.log_stats()
    }

    /// The configuration.
    pub fn config(&self) -> &RpcConfig {
        &self.node.config
    }

    /// After every step: the timers set for what is due earliest, and a
    /// snapshot, if one is due.
    fn after_step(&mut self) {
        self.client.arm(&mut self.node);
        self.server.arm(&mut self.node);
        if self.node.snapshot_due() {
            let mut parts = self.server.snapshot();
            parts.extend(self.client.snapshot().map(SnapshotPart::CallLogged));
            self.node.snapshot(parts);
        }
    }
}

/// The completion records (exactly-once) among an RPC node's durable
/// records: what a restarted server will answer from
/// ([`DurableRecords::completions`]). For tests and tools.
///
/// # Panics
/// If a record does not decode: read them with [`DurableRecords::read`] to
/// handle that.
pub fn durable_completions(records: &[Bytes]) -> Vec<Completion> {
    read_or_panic(records).completions
}

/// The effects of the exactly-once calls among an RPC node's durable
/// records, in the order they were made durable: what a restarted
/// application replays to rebuild its state (see [`RpcInput::Complete`],
/// [`DurableRecords::effects`]).
///
/// # Panics
/// If a record does not decode: read them with [`DurableRecords::read`] to
/// handle that.
pub fn durable_effects(records: &[Bytes]) -> Vec<(CallId, Bytes)> {
    read_or_panic(records).effects
}

fn read_or_panic(records: &[Bytes]) -> DurableRecords {
    DurableRecords::read(records)
        .unwrap_or_else(|e| panic!("the RPC node's records do not read: {e}"))
}

/// A deadline `d` from `now`, saturating instead of panicking on absurd
/// durations.
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Protocol for Rpc {
    type Message = RpcMessage;
    type Input = RpcInput;
    type Event = RpcEvent;
    type Timer = RpcTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: RpcMessage) {
        let Rpc {
            node,
            client,
            server,
        } = self;
        node.out.received();
        if from == node.me || !node.config.peers.contains(&from) {
            node.out.dropped();
            return;
        }
        let used = match msg {
            RpcMessage::Locate { nonce } => Server::on_locate(node, from, nonce),
            RpcMessage::Located {
                nonce,
                server_incarnation,
            } => client.on_located(node, now, from, nonce, server_incarnation),
            RpcMessage::Reply {
                id,
                server_incarnation,
                outcome,
            } => client.on_reply(node, from, id, server_incarnation, outcome),
            RpcMessage::ReplyPart {
                id,
                server_incarnation,
                fingerprint,
                body,
            } => client.on_reply_part(node, from, id, server_incarnation, fingerprint, body),
            RpcMessage::Exterminated {
                client_incarnation,
                seqs,
            } => client.on_exterminated(from, client_incarnation, &seqs),
            RpcMessage::Call {
                id,
                server_incarnation,
                semantics,
                first_incomplete,
                budget_ms,
                fingerprint,
                body,
            } => server.on_call(
                node,
                now,
                from,
                id,
                server_incarnation,
                semantics,
                first_incomplete,
                budget_ms,
                fingerprint,
                body,
            ),
            RpcMessage::Cancel { id } => server.on_cancel_call(node, from, id),
            RpcMessage::Announce {
                client_incarnation,
                adopted,
            } => server.on_announce(node, from, client_incarnation, &adopted),
            RpcMessage::Exterminate {
                client_incarnation,
                seqs,
            } => server.on_exterminate(node, from, client_incarnation, seqs),
            RpcMessage::Renew {
                client_incarnation,
                seqs,
            } => server.on_renew(node, now, from, client_incarnation, &seqs),
        };
        if !used {
            node.out.dropped();
        }
        self.after_step();
    }

    fn handle_input(&mut self, now: Instant, input: RpcInput) {
        let Rpc {
            node,
            client,
            server,
        } = self;
        match input {
            RpcInput::Call {
                token,
                server,
                request,
                options,
            } => client.call(node, now, token, server, request, options),
            RpcInput::Cancel { token } => client.cancel(node, token),
            RpcInput::Complete {
                exec,
                reply,
                effect,
            } => server.complete(node, exec, Some(reply), effect),
            RpcInput::Fail { exec } => server.complete(node, exec, None, None),
        }
        self.after_step();
    }

    fn handle_timer(&mut self, now: Instant, timer: RpcTimer) {
        let Rpc {
            node,
            client,
            server,
        } = self;
        node.out.timer_fired();
        match timer {
            RpcTimer::Retry(seq) => client.on_retry(node, now, seq),
            RpcTimer::Deadline(seq) => client.on_deadline(node, seq),
            RpcTimer::Running(id) => server.on_running_timer(node, now, id),
            RpcTimer::Calls => client.on_calls_timer(node, now),
            RpcTimer::Computations => server.on_computations_timer(node, now),
            RpcTimer::Renew => client.on_renew_timer(node, now),
            RpcTimer::Recovery => client.on_recovery_timer(node, now),
            RpcTimer::Leases => server.on_leases(node, now),
        }
        self.after_step();
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        let Rpc {
            node,
            client,
            server,
        } = self;
        // The core embeds no other core: every token is its own.
        let (Persisted::Own(token) | Persisted::Inner { token, .. }) = node.out.persisted(token);
        if !node.snapshot_persisted(token) && !server.persisted(node, token) {
            client.persisted(node, now, token);
        }
        self.after_step();
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.node.out.pop()
    }

    fn counters(&self) -> Counters {
        self.node.out.counters()
    }
}

impl Recover for Rpc {
    type Config = RpcConfig;

    /// Rebuilds the node from its records (see [`records`]).
    ///
    /// # Errors
    /// [`RecoveryError::Record`] if a record does not decode.
    fn recover(config: &RpcConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let replayed = Replayed::of(ctx.read::<RpcRecord>()?);
        let mut config = config.clone();
        config.max_body = config.max_body.min(MAX_BODY_LIMIT);
        let lease = config.lease;
        let node = Node::new(
            config,
            ctx.node,
            ctx.incarnation,
            Rng::new(ctx.seed),
            Outbox::recovered(&ctx),
            replayed.since_snapshot,
        );
        let mut rpc = Rpc {
            node,
            client: Client::default(),
            server: Server::default(),
        };
        rpc.server.restore(replayed.facts.iter(), ctx.now);
        rpc.client.restore(replayed.facts.iter());
        rpc.client.start(&mut rpc.node, ctx.now);
        rpc.node
            .out
            .set_timer(RpcTimer::Leases, after(ctx.now, lease));
        Ok(rpc)
    }
}

#[cfg(test)]
mod tests;

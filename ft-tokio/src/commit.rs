//! [`CommitNode`]: distributed commit on a real transport, driving the
//! node's own [`Resource`].
//!
//! One `CommitNode` per process runs one commit core ([`TwoPhase`] by
//! default, [`ThreePhase`] with
//! [`.core::<ThreePhase>(..)`](CommitNodeBuilder::core), any
//! [`CommitCore`]) over UDP or TCP, with its log in a [`FileLog`] in its
//! data directory ([`durable::open`]). The node plays every role the core
//! has: it coordinates the transactions its application begins and takes
//! part in those it is asked to vote on. Its [`Resource`] does the
//! participant's work:
//!
//! | the core says | the node does |
//! |---|---|
//! | [`Event::Prepare`] (VOTE_REQUEST came) | [`Resource::prepare`], then [`Input::Voted`] with its vote |
//! | [`Event::Commit`] (COMMIT durable here) | [`Resource::commit`], then the outcome is [`Outcome::Committed`] |
//! | [`Event::Abort`] (ABORT durable here) | [`Resource::abort`], then [`Outcome::Aborted`] |
//! | [`Event::Blocked`] (READY, every other participant READY) | [`Outcome::Blocked`], naming the coordinator |
//! | [`Event::Decided`] (coordinator) | the outcome of [`Transaction::commit`] |
//!
//! The calls on the resource of one transaction are made one after the
//! other, in the order the core asked for them (an abort that comes while
//! a prepare is still running waits for it); different transactions run
//! side by side. A call that panics ends its transaction's worker: the
//! outcome of that transaction stays unknown at this node (later calls
//! start a new worker) until the next life applies it again.
//!
//! # Example
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use ft_commit::resource::MemResource;
//! use ft_core::NodeId;
//! use ft_tokio::commit::{CommitNode, Outcome};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
//! let node = |me: u64, dir: &str| {
//!     CommitNode::builder(NodeId(me))
//!         .peer(NodeId(0), addr(7100))
//!         .peer(NodeId(1), addr(7101))
//!         .peer(NodeId(2), addr(7102))
//!         .data_dir(dir)
//!         .resource(Arc::new(MemResource::new()))
//! };
//! // Usually one per process; here three in one.
//! let coordinator = node(0, "/var/lib/tm").start().await?;
//! let p1 = node(1, "/var/lib/rm1").start().await?;
//! let p2 = node(2, "/var/lib/rm2").start().await?;
//!
//! let mut tx = coordinator.begin();
//! tx.enlist(NodeId(1)).enlist(NodeId(2));
//! let id = tx.id().clone();
//! assert_eq!(tx.commit().await?, Outcome::Committed);
//! // A participant learns the outcome too, once its resource applied it.
//! assert_eq!(p1.outcome(&id).decided().await?, Outcome::Committed);
//! # Ok(())
//! # }
//! ```
//!
//! # Restarts
//!
//! Started again on the same data directory (after a crash, SIGKILL
//! included), the node recovers its core from the log with a new
//! incarnation, and [`CommitNode::recovered`] lists what the log held:
//! decisions reached in earlier lives, undecided transactions (a 2PC or 3PC
//! coordinator aborts them now) and in-doubt ones (a participant asks the
//! others now). A participant's logged COMMIT or ABORT is applied to the
//! resource **again** (it may have been logged just before the crash,
//! before the resource did it), which is why [`Resource`] calls must be
//! idempotent; a coordinator's logged decisions are outcomes at once
//! ([`CommitNode::outcome`]).
//!
//! # Errors tell whether the transaction ran
//!
//! As ft-rpc's errors say whether a call executed, every [`CommitError`]
//! says whether the transaction **may have committed**
//! ([`CommitError::executed`]): `No` if it was never begun (refused, or
//! the node had stopped), `Unknown` if the node stopped after it was begun
//! and before the outcome was known here (a restarted node finds it in
//! [`recovered`](CommitNode::recovered), or learns it from the
//! coordinator). An aborted transaction is an outcome, not an error.
//!
//! # What is kept
//!
//! The node keeps the outcome of every transaction it saw in this life in
//! memory, as its core keeps every transaction in its log: both grow with
//! history until ft-commit's log compaction exists.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ft_commit::{
    Applied, CommitCore, Event, Input, Logged, Resource, Role, ThreePhase, TwoPhase, TxId, Vote,
};
use ft_core::driver::driver;
use ft_core::{
    Channel, Counters, DriverConfig, DriverError, DriverStats, Handle, Incarnation, NodeId,
    StableLog, StatsReader,
};
use ft_rpc::rpc::Executed;
use ft_storage::FileLog;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock::TokioClock;
use crate::node::{NodeError, Transport};
use crate::{TcpChannel, UdpChannel, durable};

/// The outcome of a transaction at one node, as far as it knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Committed: the coordinator's decision, or the participant's resource
    /// committed.
    Committed,
    /// Aborted: the coordinator's decision, or the participant's resource
    /// rolled back.
    Aborted,
    /// Not final: this participant is READY, every other participant it
    /// reached is READY too, and only the coordinator `on` knows the
    /// outcome (2PC's blocking, never hidden). It keeps asking; the outcome
    /// follows once `on` (or anyone who heard it) answers.
    Blocked {
        /// The coordinator it waits on.
        on: NodeId,
    },
    /// Final, and damaged: the participant's resource had decided `tx` on
    /// its own while in doubt ([`Applied::Heuristic`]) and applied
    /// `resource`; the protocol's outcome is `outcome`. If they differ the
    /// transaction is not atomic and needs repair by hand, as transaction
    /// managers report XA's heuristic outcomes.
    Heuristic {
        /// The protocol's outcome.
        outcome: Vote,
        /// What the resource had applied on its own.
        resource: Vote,
    },
}

impl Outcome {
    /// Whether the outcome can no longer change (all but
    /// [`Blocked`](Outcome::Blocked)).
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Blocked { .. })
    }

    fn of(vote: Vote) -> Outcome {
        match vote {
            Vote::Commit => Outcome::Committed,
            Vote::Abort => Outcome::Aborted,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Committed => write!(f, "committed"),
            Outcome::Aborted => write!(f, "aborted"),
            Outcome::Blocked { on } => write!(f, "blocked on coordinator {on}"),
            Outcome::Heuristic { outcome, resource } => write!(
                f,
                "HEURISTIC: outcome {outcome:?}, but the resource had applied {resource:?} on its own"
            ),
        }
    }
}

/// Why a commit operation failed, and whether the transaction may have
/// committed ([`executed`](Self::executed)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The transaction was refused before it began: this node coordinates
    /// it already (ids are never reused), or its participants are
    /// unusable (none, too many, one named twice). Nothing ran.
    #[error("refused: {reason}; executed: No")]
    Refused {
        /// Why.
        reason: String,
    },
    /// The node stopped (shut down, or its driver failed) before the
    /// outcome was known here.
    #[error("the commit node stopped before the outcome was known; executed: {executed:?}")]
    Closed {
        /// `No` if the transaction never reached the core; `Unknown` if it
        /// did (it may commit: ask again after the restart).
        executed: Executed,
    },
}

impl CommitError {
    /// Whether the transaction may have committed.
    pub fn executed(&self) -> Executed {
        match self {
            CommitError::Refused { .. } => Executed::No,
            CommitError::Closed { executed } => *executed,
        }
    }
}

/// What a [`CommitNode`] did so far, in this life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitNodeStats {
    /// Datagrams, decode failures, persists, timers.
    pub driver: DriverStats,
    /// The core's counters (messages, retransmissions, persists).
    pub core: Counters,
    /// [`Resource::prepare`] calls, and votes cast with no resource (abort).
    pub prepares: u64,
    /// [`Resource::commit`] calls (repeats after a restart included).
    pub commits: u64,
    /// [`Resource::abort`] calls (repeats included).
    pub aborts: u64,
    /// Outcomes the resource reported as heuristic.
    pub heuristics: u64,
    /// Times the core said a transaction is blocked.
    pub blocked: u64,
    /// Decisions the core told as coordinator (again after a restart).
    pub decided: u64,
    /// Transactions whose every participant acknowledged the decision.
    pub finished: u64,
}

type LogLayer = Box<dyn FnOnce(FileLog) -> Box<dyn StableLog> + Send>;

/// Builds a [`CommitNode`]: see the [module docs](self).
pub struct CommitNodeBuilder<C: CommitCore = TwoPhase> {
    me: NodeId,
    peers: BTreeMap<NodeId, SocketAddr>,
    transport: Transport,
    data_dir: Option<PathBuf>,
    config: C::Config,
    driver: DriverConfig,
    seed: Option<u64>,
    resource: Option<Arc<dyn Resource>>,
    log_layer: Option<LogLayer>,
}

impl<C: CommitCore> fmt::Debug for CommitNodeBuilder<C>
where
    C::Config: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitNodeBuilder")
            .field("protocol", &C::NAME)
            .field("me", &self.me)
            .field("peers", &self.peers)
            .field("transport", &self.transport)
            .field("data_dir", &self.data_dir)
            .field("config", &self.config)
            .field("resource", &self.resource.is_some())
            .field("log_layer", &self.log_layer.is_some())
            .finish()
    }
}

impl<C: CommitCore> CommitNodeBuilder<C> {
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

    /// Where the node keeps its incarnation and its log ([`durable`]):
    /// required, since every commit protocol logs before it speaks.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Runs the core `D` with `config` instead: `.core::<ThreePhase>(ThreePhaseConfig::default())`.
    pub fn core<D: CommitCore>(self, config: D::Config) -> CommitNodeBuilder<D> {
        CommitNodeBuilder {
            me: self.me,
            peers: self.peers,
            transport: self.transport,
            data_dir: self.data_dir,
            config,
            driver: self.driver,
            seed: self.seed,
            resource: self.resource,
            log_layer: self.log_layer,
        }
    }

    /// Adjusts the core's configuration (timeouts).
    pub fn configure(mut self, f: impl FnOnce(&mut C::Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// The driver's configuration.
    pub fn driver_config(mut self, config: DriverConfig) -> Self {
        self.driver = config;
        self
    }

    /// Seeds the node's random numbers; by default from the clock, mixed
    /// with the incarnation so each life draws different ones.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The resource this node's participant drives. Without one the node
    /// only coordinates: asked to vote, it votes abort.
    pub fn resource(mut self, resource: Arc<dyn Resource>) -> Self {
        self.resource = Some(resource);
        self
    }

    /// Puts a layer around the node's log: every record the core persists
    /// goes through it. For metrics, and for fault injection (the
    /// `commit_crash` example stops a coordinator just before, or just
    /// after, its decision record).
    pub fn wrap_log(
        mut self,
        layer: impl FnOnce(FileLog) -> Box<dyn StableLog> + Send + 'static,
    ) -> Self {
        self.log_layer = Some(Box::new(layer));
        self
    }
}

impl<C> CommitNodeBuilder<C>
where
    C: CommitCore + Send + 'static,
    C::Config: Send + 'static,
    C::Message: Send,
    C::Timer: Send,
{
    /// Opens the data directory (a new incarnation, durable first; the
    /// core recovered from the log), binds the transport and runs the node
    /// on tokio.
    ///
    /// # Errors
    /// [`NodeError::NoAddress`]; [`NodeError::Config`] without a data
    /// directory; [`NodeError::Storage`] if it cannot be opened (locked by
    /// another process, damaged, or a log the core cannot recover from);
    /// [`NodeError::Bind`].
    pub async fn start(self) -> Result<CommitNode<C>, NodeError> {
        let addr = *self
            .peers
            .get(&self.me)
            .ok_or(NodeError::NoAddress(self.me))?;
        let dir = self.data_dir.clone().ok_or_else(|| {
            NodeError::Config("a commit node logs before it speaks: it needs a data_dir".into())
        })?;
        let seed = self.seed.unwrap_or_else(crate::node::clock_nanos);
        let opened = durable::open::<C>(&self.config, self.me, &dir, seed).await?;
        let bind_err = |source| NodeError::Bind { addr, source };
        let channel: Box<dyn Channel> = match self.transport {
            Transport::Udp => Box::new(
                UdpChannel::bind(self.me, addr, self.peers.clone())
                    .await
                    .map_err(bind_err)?,
            ),
            Transport::Tcp => Box::new(
                TcpChannel::bind(self.me, addr, self.peers.clone())
                    .await
                    .map_err(bind_err)?,
            ),
        };
        let recovered = opened.core.logged();
        let log: Box<dyn StableLog> = match self.log_layer {
            Some(layer) => layer(opened.log),
            None => Box::new(opened.log),
        };
        let (handle, run) = driver(opened.core, channel, TokioClock, log, self.driver);
        let stats = handle.stats_reader();
        let inputs = handle.input_sender();
        let voted = handle.input_sender();
        let shared = Arc::new(Shared {
            me: self.me,
            incarnation: opened.incarnation,
            resource: self.resource,
            voted: Box::new(move |tx, vote| {
                // A stopped driver: the vote is lost with it, as in a crash.
                let _ = voted.input(Input::Voted { tx, vote });
            }),
            txs: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            next_tx: AtomicU64::new(0),
            started: crate::node::clock_nanos(),
            counts: Counts::default(),
        });
        // A coordinator's logged decisions are outcomes now (2PC does not
        // tell them again once every participant acknowledged). A
        // participant's logged outcomes come back as events, to be applied
        // to the resource again first. (An id coordinated in an earlier
        // life is refused by the core itself.)
        for l in &recovered {
            if let (Role::Coordinator, Some(v)) = (l.role, l.outcome) {
                let mut txs = shared.lock();
                entry(&mut txs, &l.tx)
                    .outcome
                    .send_replace(Some(Outcome::of(v)));
            }
        }
        let driver_task = tokio::spawn(run);
        let (stop, stopped) = oneshot::channel();
        let events = tokio::spawn(event_loop(handle, Arc::clone(&shared), stopped));
        Ok(CommitNode {
            shared,
            inputs,
            recovered,
            stats,
            stop: Some(stop),
            driver_task,
            events,
        })
    }
}

/// A commit node running on tokio: see the [module docs](self).
pub struct CommitNode<C: CommitCore = TwoPhase> {
    shared: Arc<Shared>,
    inputs: ft_core::InputSender<C>,
    recovered: Vec<Logged>,
    stats: StatsReader,
    stop: Option<oneshot::Sender<()>>,
    driver_task: JoinHandle<Result<(), DriverError>>,
    events: JoinHandle<()>,
}

impl<C: CommitCore> fmt::Debug for CommitNode<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitNode")
            .field("protocol", &C::NAME)
            .field("me", &self.shared.me)
            .field("incarnation", &self.shared.incarnation)
            .finish()
    }
}

impl CommitNode<TwoPhase> {
    /// A builder for node `me`, running two-phase commit with its default
    /// timeouts; [`CommitNodeBuilder::core`] picks another protocol.
    pub fn builder(me: NodeId) -> CommitNodeBuilder<TwoPhase> {
        CommitNodeBuilder {
            me,
            peers: BTreeMap::new(),
            transport: Transport::Udp,
            data_dir: None,
            config: Default::default(),
            driver: DriverConfig::default(),
            seed: None,
            resource: None,
            log_layer: None,
        }
    }
}

/// Three-phase commit, named for convenience:
/// `CommitNode::builder(me).core::<ThreePhase>(config)` is the same.
pub type ThreePhaseNode = CommitNode<ThreePhase>;

impl<C: CommitCore> CommitNode<C> {
    /// This node.
    pub fn me(&self) -> NodeId {
        self.shared.me
    }

    /// This life's incarnation (durable already).
    pub fn incarnation(&self) -> Incarnation {
        self.shared.incarnation
    }

    /// What the log held when this life started: see [`Logged`].
    pub fn recovered(&self) -> &[Logged] {
        &self.recovered
    }

    /// A new transaction coordinated by this node, with a fresh id
    /// (`n<node>.<incarnation>.<start>.<count>`): unique across lives, as
    /// the incarnation is durable and grows, and across a lost directory,
    /// which starts the incarnation over: `<start>` is the wall clock's
    /// nanoseconds when this life started. (A reused id would be taken by
    /// the participants for the old transaction they still remember.)
    /// Nothing is sent before [`Transaction::commit`].
    pub fn begin(&self) -> Transaction<C> {
        let n = self.shared.next_tx.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "n{}.{}.{:x}.{n}",
            self.shared.me.0, self.shared.incarnation.0, self.shared.started
        );
        let tx = TxId::new(id.into_bytes()).expect("a generated id is short");
        self.begin_with(tx)
    }

    /// A new transaction with the application's own id (never reused:
    /// [`CommitError::Refused`] if this node coordinated it before).
    pub fn begin_with(&self, tx: TxId) -> Transaction<C> {
        Transaction {
            tx,
            participants: Vec::new(),
            shared: Arc::clone(&self.shared),
            inputs: self.inputs.clone(),
        }
    }

    /// Tells the participant that the application works for `tx`,
    /// coordinated by `coordinator`, before its VOTE_REQUEST: if none comes
    /// within the core's prepare timeout, it aborts (the subject's timeout
    /// in INIT). Optional.
    ///
    /// # Errors
    /// [`CommitError::Closed`] (executed: No) if the node stopped.
    pub fn join(&self, tx: &TxId, coordinator: NodeId) -> Result<(), CommitError> {
        self.inputs
            .input(Input::Join {
                tx: tx.clone(),
                coordinator,
            })
            .map_err(|_| CommitError::Closed {
                executed: Executed::No,
            })
    }

    /// The operator decided `tx` by hand at this participant while it was
    /// in doubt (blocked in READY), and applied `outcome` to the resource
    /// itself: the core logs it, keeps answering READY to the others, and
    /// when the real outcome comes and differs, reports
    /// [`Outcome::Heuristic`] here and, through its acknowledgement, at the
    /// coordinator, as transaction managers report XA's heuristic
    /// outcomes. Ignored (and counted by the core) if `tx` is not READY
    /// here: its outcome is then already known, see [`outcome`](Self::outcome).
    ///
    /// # Errors
    /// [`CommitError::Closed`] (executed: No) if the node stopped.
    pub fn decide_heuristically(&self, tx: &TxId, outcome: Vote) -> Result<(), CommitError> {
        self.inputs
            .input(Input::Heuristic {
                tx: tx.clone(),
                outcome,
            })
            .map_err(|_| CommitError::Closed {
                executed: Executed::No,
            })
    }

    /// Watches the outcome of `tx` at this node, whatever its role: for
    /// the coordinator its decision, for a participant what its resource
    /// applied (and [`Outcome::Blocked`] while it waits).
    pub fn outcome(&self, tx: &TxId) -> OutcomeWatch {
        let mut txs = self.shared.lock();
        if self.shared.closed.load(Ordering::Acquire) {
            // The sender is dropped at once: `decided` reports Closed.
            let (_, rx) = watch::channel(None);
            return OutcomeWatch { rx };
        }
        OutcomeWatch {
            rx: entry(&mut txs, tx).outcome.subscribe(),
        }
    }

    /// What the node did so far.
    pub fn stats(&self) -> CommitNodeStats {
        let c = &self.shared.counts;
        CommitNodeStats {
            driver: self.stats.stats(),
            core: self.stats.counters(),
            prepares: c.prepares.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            aborts: c.aborts.load(Ordering::Relaxed),
            heuristics: c.heuristics.load(Ordering::Relaxed),
            blocked: c.blocked.load(Ordering::Relaxed),
            decided: c.decided.load(Ordering::Relaxed),
            finished: c.finished.load(Ordering::Relaxed),
        }
    }

    /// Stops the node once it has handled the inputs sent before, and
    /// waits for it. Transactions still undecided here end with
    /// [`CommitError::Closed`]; the log keeps what they reached.
    ///
    /// # Errors
    /// What the driver stopped with, if it failed (transport, storage)
    /// rather than being shut down.
    pub async fn shutdown(mut self) -> Result<(), DriverError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = match (&mut self.driver_task).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        };
        let _ = (&mut self.events).await;
        result
    }
}

impl<C: CommitCore> Drop for CommitNode<C> {
    /// Dropped without [`shutdown`](CommitNode::shutdown): stops the node
    /// the same way, without waiting.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A transaction this node coordinates, not begun yet: enlist its
/// participants, then [`commit`](Self::commit).
pub struct Transaction<C: CommitCore = TwoPhase> {
    tx: TxId,
    participants: Vec<NodeId>,
    shared: Arc<Shared>,
    inputs: ft_core::InputSender<C>,
}

impl<C: CommitCore> fmt::Debug for Transaction<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("tx", &self.tx)
            .field("participants", &self.participants)
            .finish()
    }
}

impl<C: CommitCore> Transaction<C> {
    /// Its id: give it to the participants' applications, which do their
    /// work under it (their resources are asked to prepare it by id).
    pub fn id(&self) -> &TxId {
        &self.tx
    }

    /// Adds `node` (this node included, if it takes part) as a
    /// participant; a node enlisted twice is kept once.
    pub fn enlist(&mut self, node: NodeId) -> &mut Self {
        if !self.participants.contains(&node) {
            self.participants.push(node);
        }
        self
    }

    /// The participants enlisted so far.
    pub fn participants(&self) -> &[NodeId] {
        &self.participants
    }

    /// Runs the protocol: BEGIN logged, VOTE_REQUEST to every participant,
    /// the decision logged and sent. Returns the decision, once durable:
    /// [`Outcome::Committed`] or [`Outcome::Aborted`] (a participant voted
    /// abort, or did not vote in time).
    ///
    /// # Errors
    /// [`CommitError::Refused`] (executed: No) for an id this node
    /// coordinated before, or unusable participants;
    /// [`CommitError::Closed`] if the node stopped first (executed: No
    /// if the transaction never reached the core, Unknown if it did).
    pub async fn commit(self) -> Result<Outcome, CommitError> {
        let (done, wait) = oneshot::channel();
        {
            let mut txs = self.shared.lock();
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(CommitError::Closed {
                    executed: Executed::No,
                });
            }
            let e = entry(&mut txs, &self.tx);
            if e.coordinated {
                return Err(CommitError::Refused {
                    reason: format!("this node coordinated {} already", self.tx),
                });
            }
            e.coordinated = true;
            e.waiter = Some(done);
        }
        let begin = Input::Begin {
            tx: self.tx.clone(),
            participants: self.participants,
        };
        if self.inputs.input(begin).is_err() {
            return Err(CommitError::Closed {
                executed: Executed::No,
            });
        }
        wait.await.unwrap_or(Err(CommitError::Closed {
            executed: Executed::Unknown,
        }))
    }
}

/// The outcome of one transaction at one node, as it changes
/// ([`CommitNode::outcome`]).
#[derive(Clone, Debug)]
pub struct OutcomeWatch {
    rx: watch::Receiver<Option<Outcome>>,
}

impl OutcomeWatch {
    /// The outcome known now (`None`: nothing yet).
    pub fn current(&self) -> Option<Outcome> {
        *self.rx.borrow()
    }

    /// Waits for the outcome to change, and returns the new one
    /// ([`Outcome::Blocked`], then a final one).
    ///
    /// # Errors
    /// [`CommitError::Closed`] (executed: Unknown) once the node stopped.
    pub async fn changed(&mut self) -> Result<Option<Outcome>, CommitError> {
        match self.rx.changed().await {
            Ok(()) => Ok(*self.rx.borrow_and_update()),
            Err(_) => Err(CommitError::Closed {
                executed: Executed::Unknown,
            }),
        }
    }

    /// Waits for a final outcome (not [`Outcome::Blocked`]).
    ///
    /// # Errors
    /// [`CommitError::Closed`] (executed: Unknown) if the node stopped
    /// first.
    pub async fn decided(&mut self) -> Result<Outcome, CommitError> {
        match self.rx.wait_for(|o| o.is_some_and(|o| o.is_final())).await {
            Ok(o) => Ok(o.expect("waited for Some")),
            Err(_) => Err(CommitError::Closed {
                executed: Executed::Unknown,
            }),
        }
    }
}

// ---- the machinery ----

#[derive(Debug, Default)]
struct Counts {
    prepares: AtomicU64,
    commits: AtomicU64,
    aborts: AtomicU64,
    heuristics: AtomicU64,
    blocked: AtomicU64,
    decided: AtomicU64,
    finished: AtomicU64,
}

/// A call on the resource for one transaction.
#[derive(Clone, Copy, Debug)]
enum Call {
    Prepare,
    Apply(Vote),
}

struct TxEntry {
    outcome: watch::Sender<Option<Outcome>>,
    /// Begun here in this life: a second [`Transaction::commit`] of the
    /// id is refused before it can take the first one's waiter.
    coordinated: bool,
    /// [`Transaction::commit`] waiting for the decision.
    waiter: Option<oneshot::Sender<Result<Outcome, CommitError>>>,
    /// The queue of calls on the resource, while a worker runs them.
    worker: Option<mpsc::UnboundedSender<Call>>,
}

fn entry<'a>(txs: &'a mut HashMap<TxId, TxEntry>, tx: &TxId) -> &'a mut TxEntry {
    txs.entry(tx.clone()).or_insert_with(|| TxEntry {
        outcome: watch::channel(None).0,
        coordinated: false,
        waiter: None,
        worker: None,
    })
}

/// What the event loop, the resource workers and the node's handles share.
struct Shared {
    me: NodeId,
    incarnation: Incarnation,
    resource: Option<Arc<dyn Resource>>,
    voted: Box<dyn Fn(TxId, Vote) + Send + Sync>,
    txs: Mutex<HashMap<TxId, TxEntry>>,
    closed: std::sync::atomic::AtomicBool,
    next_tx: AtomicU64,
    /// When this life started (wall-clock nanoseconds): part of the ids
    /// [`CommitNode::begin`] makes.
    started: u64,
    counts: Counts,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<TxId, TxEntry>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.txs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_event(self: &Arc<Self>, event: Event) {
        match event {
            Event::Prepare { tx } => self.call(tx, Call::Prepare),
            Event::Commit { tx } => self.call(tx, Call::Apply(Vote::Commit)),
            Event::Abort { tx } => self.call(tx, Call::Apply(Vote::Abort)),
            Event::Blocked { tx, coordinator } => {
                self.counts.blocked.fetch_add(1, Ordering::Relaxed);
                let mut txs = self.lock();
                entry(&mut txs, &tx).outcome.send_if_modified(|o| {
                    if o.is_some_and(|o| o.is_final()) {
                        return false;
                    }
                    *o = Some(Outcome::Blocked { on: coordinator });
                    true
                });
            }
            Event::Decided { tx, outcome } => {
                self.counts.decided.fetch_add(1, Ordering::Relaxed);
                let mut txs = self.lock();
                let e = entry(&mut txs, &tx);
                e.coordinated = true;
                set_final(e, Outcome::of(outcome));
                if let Some(w) = e.waiter.take() {
                    let _ = w.send(Ok(Outcome::of(outcome)));
                }
            }
            Event::Finished { .. } => {
                self.counts.finished.fetch_add(1, Ordering::Relaxed);
            }
            Event::Refused { tx, reason } => {
                let mut txs = self.lock();
                if let Some(w) = txs.get_mut(&tx).and_then(|e| e.waiter.take()) {
                    let _ = w.send(Err(CommitError::Refused {
                        reason: reason.to_string(),
                    }));
                }
            }
            // The core's own report: at a participant whose application
            // decided `tx` by hand ([`CommitNode::decide_heuristically`])
            // and the outcome differs (the resource is not called: it holds
            // what the operator applied); at the coordinator, which heard
            // it in that participant's acknowledgement.
            Event::Heuristic {
                tx,
                outcome,
                heuristic,
                ..
            } => {
                self.counts.heuristics.fetch_add(1, Ordering::Relaxed);
                let mut txs = self.lock();
                set_final(
                    entry(&mut txs, &tx),
                    Outcome::Heuristic {
                        outcome,
                        resource: heuristic,
                    },
                );
            }
        }
    }

    /// Queues `call` on `tx`'s resource worker, starting one if none runs.
    fn call(self: &Arc<Self>, tx: TxId, call: Call) {
        let mut txs = self.lock();
        let e = entry(&mut txs, &tx);
        let queue = match &e.worker {
            Some(q) if !q.is_closed() => q.clone(),
            _ => {
                let (q, calls) = mpsc::unbounded_channel();
                tokio::spawn(work(Arc::clone(self), tx.clone(), calls));
                e.worker = Some(q.clone());
                q
            }
        };
        // The worker holds the receiver until the queue is empty and
        // dropped, so this cannot fail.
        let _ = queue.send(call);
        if matches!(call, Call::Apply(_)) {
            // Nothing follows an outcome: let the worker end once done.
            e.worker = None;
        }
    }

    /// The node stopped: no outcome will come in this life.
    fn close(&self) {
        let mut txs = self.lock();
        self.closed.store(true, Ordering::Release);
        for (_, e) in txs.drain() {
            if let Some(w) = e.waiter {
                let _ = w.send(Err(CommitError::Closed {
                    executed: Executed::Unknown,
                }));
            }
            // Dropping the watch senders ends every OutcomeWatch.
        }
    }
}

fn set_final(e: &mut TxEntry, outcome: Outcome) {
    e.outcome.send_if_modified(|o| {
        // A heuristic report stays: it is the worse news.
        if matches!(o, Some(Outcome::Heuristic { .. })) || *o == Some(outcome) {
            return false;
        }
        *o = Some(outcome);
        true
    });
}

/// Runs the calls on one transaction's resource, one after the other.
async fn work(shared: Arc<Shared>, tx: TxId, mut calls: mpsc::UnboundedReceiver<Call>) {
    while let Some(call) = calls.recv().await {
        match call {
            Call::Prepare => {
                shared.counts.prepares.fetch_add(1, Ordering::Relaxed);
                let vote = match &shared.resource {
                    Some(r) => r.prepare(&tx).await,
                    None => Vote::Abort,
                };
                (shared.voted)(tx.clone(), vote);
            }
            Call::Apply(outcome) => {
                let applied = match (&shared.resource, outcome) {
                    (None, _) => Applied::Done,
                    (Some(r), Vote::Commit) => {
                        shared.counts.commits.fetch_add(1, Ordering::Relaxed);
                        r.commit(&tx).await
                    }
                    (Some(r), Vote::Abort) => {
                        shared.counts.aborts.fetch_add(1, Ordering::Relaxed);
                        r.abort(&tx).await
                    }
                };
                let result = match applied {
                    Applied::Done => Outcome::of(outcome),
                    Applied::Heuristic(resource) => {
                        shared.counts.heuristics.fetch_add(1, Ordering::Relaxed);
                        Outcome::Heuristic { outcome, resource }
                    }
                };
                let mut txs = shared.lock();
                if let Some(e) = txs.get_mut(&tx) {
                    set_final(e, result);
                }
            }
        }
    }
}

/// Hands the core's events to [`Shared::on_event`] until the driver stops;
/// asks it to stop when the node is shut down or dropped.
async fn event_loop<C: CommitCore>(
    mut handle: Handle<C>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut stopping = false;
    loop {
        tokio::select! {
            event = handle.next_event() => match event {
                Some(event) => shared.on_event(event),
                None => break,
            },
            _ = &mut stop, if !stopping => {
                stopping = true;
                handle.shutdown();
            }
        }
    }
    shared.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            me: NodeId(0),
            incarnation: Incarnation::FIRST,
            resource: None,
            voted: Box::new(|_, _| {}),
            txs: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            next_tx: AtomicU64::new(0),
            started: 0,
            counts: Counts::default(),
        })
    }

    fn current(s: &Shared, tx: &TxId) -> Option<Outcome> {
        *s.lock()[tx].outcome.borrow()
    }

    /// A final outcome never goes back to Blocked: a Blocked told late
    /// (the node coordinates the transaction and takes part in it) is
    /// ignored.
    #[test]
    fn a_final_outcome_is_not_undone_by_a_late_blocked() {
        let s = shared();
        let tx = TxId::new(&b"t"[..]).unwrap();
        s.on_event(Event::Blocked {
            tx: tx.clone(),
            coordinator: NodeId(0),
        });
        assert_eq!(current(&s, &tx), Some(Outcome::Blocked { on: NodeId(0) }));
        s.on_event(Event::Decided {
            tx: tx.clone(),
            outcome: Vote::Commit,
        });
        s.on_event(Event::Blocked {
            tx: tx.clone(),
            coordinator: NodeId(0),
        });
        assert_eq!(current(&s, &tx), Some(Outcome::Committed));
        assert_eq!(s.counts.blocked.load(Ordering::Relaxed), 2);
    }

    /// A transaction's worker ends once its outcome is applied: no idle
    /// task (and queue) per transaction stays behind.
    #[tokio::test]
    async fn the_resource_worker_ends_after_the_outcome() {
        let s = shared();
        let tx = TxId::new(&b"t"[..]).unwrap();
        s.on_event(Event::Prepare { tx: tx.clone() });
        assert!(s.lock()[&tx].worker.is_some(), "a worker runs");
        s.on_event(Event::Commit { tx: tx.clone() });
        // The worker holds the only other reference to the shared state:
        // it is gone once the count is back to one.
        let gone = async {
            while Arc::strong_count(&s) > 1 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), gone)
            .await
            .expect("the worker ended");
        assert_eq!(current(&s, &tx), Some(Outcome::Committed));
    }

    /// A heuristic report is the worse news and stays: a decision told
    /// after it (a coordinator that is its own participant, told the
    /// decision again after a restart) does not hide it.
    #[test]
    fn a_heuristic_report_is_not_hidden_by_a_later_decision() {
        let s = shared();
        let tx = TxId::new(&b"t"[..]).unwrap();
        let heuristic = Outcome::Heuristic {
            outcome: Vote::Commit,
            resource: Vote::Abort,
        };
        set_final(entry(&mut s.lock(), &tx), heuristic);
        s.on_event(Event::Decided {
            tx: tx.clone(),
            outcome: Vote::Commit,
        });
        assert_eq!(current(&s, &tx), Some(heuristic));
    }
}

//! An async handle on an [`Rpc`] node: many tasks call through a cloneable
//! [`RpcClient`], and a dispatcher runs the node's server side with an async
//! handler.
//!
//! The [`Rpc`] core is sans-IO; the [driver](ft_core::driver) runs it and
//! speaks in [`RpcInput`]s and [`RpcEvent`]s. This module turns those into
//! ordinary async calls, with nothing but `futures`, so it runs on any
//! executor:
//!
//! - [`RpcClient::call`] names the call with a fresh token, sends
//!   [`RpcInput::Call`], and waits for the [`RpcEvent::Returned`] with that
//!   token. **Dropping the call's future cancels the call**: the handle sends
//!   [`RpcInput::Cancel`], the core tells the server, and the server's
//!   handler for it is dropped. A result that arrives after the caller gave
//!   up is discarded.
//! - [`serve`], the dispatcher, takes the driver's events: it completes the
//!   waiting calls, runs the handler for every [`RpcEvent::Execute`]
//!   (concurrently with the others, inside the dispatcher's own future) and
//!   answers with [`RpcInput::Complete`], and drops the handler's future on
//!   [`RpcEvent::Cancel`].
//! - [`rpc_node`] wires a driver, a client and a dispatcher into one future
//!   for the caller to spawn.
//!
//! A node is both server and client, so a handler may call other nodes (or
//! its own node's peers) through an [`RpcClient`] clone, passing on its
//! `deadline` in [`CallOptions::deadline`].
//!
//! # Handlers and cancellation
//!
//! A handler is `Fn(CallId, Bytes, Instant) -> impl Future<Output = R>`
//! where `R: Into<`[`Reply`]`>` (a plain `Bytes` reply will do): the
//! computation's id, the request and the caller's deadline. A [`Reply`]
//! may carry the call's *effect*, which an exactly-once server makes
//! durable in the same record as the completion (see
//! [`RpcInput::Complete`]). Its future is polled by the dispatcher,
//! concurrently with the other handlers and with the node's event loop (a
//! `FuturesUnordered`), so it should not block the thread; CPU-heavy work
//! belongs on the executor's blocking pool. It is first polled as its call
//! arrives: a handler ready then is answered at once.
//!
//! **A handler that panics fails its call, not the node.** The panic is
//! caught, logged and counted ([`ServeStats::handler_panics`]); the caller
//! gets [`RpcError::HandlerFailed`] (the call executed, and failed), and
//! the node goes on serving.
//!
//! **A handler sees cancellation as being dropped.** When the server core
//! cancels a computation (its caller gave up or crashed, its deadline or
//! quantum passed: [`RpcEvent::Cancel`]), the dispatcher drops that
//! handler's future at its next `.await`: code after that point never runs,
//! and clean-up belongs in `Drop` implementations. A handler that spawns
//! work elsewhere must cancel it from such a guard itself.
//!
//! # Stopping
//!
//! [`RpcClient::shutdown`] asks the driver to stop once it has handled the
//! inputs sent before. When the driver stops (shut down, or failed), or the
//! dispatcher's future is dropped, every call still waiting ends with
//! [`CallError::Closed`], and so does every later call: no caller hangs.
//!
//! # Example
//!
//! ```
//! # use std::time::{Duration, Instant};
//! # use async_trait::async_trait;
//! # use bytes::Bytes;
//! # use ft_core::Clock;
//! use ft_core::{DriverConfig, Incarnation, MemNetwork, NodeId, Recover, RecoveryContext};
//! use ft_rpc::handle::rpc_node;
//! use ft_rpc::rpc::{CallOptions, Rpc, RpcConfig, Semantics};
//! use ft_storage::MemLog;
//! # /// A clock whose sleeps never end: a lossless network needs no retries.
//! # struct NoTimers;
//! # #[async_trait]
//! # impl Clock for NoTimers {
//! #     fn now(&self) -> Instant { Instant::now() }
//! #     async fn sleep_until(&self, _: Instant) { futures::future::pending::<()>().await }
//! # }
//!
//! let net = MemNetwork::new(64);
//! let node = |id: u64| {
//!     let ctx = RecoveryContext {
//!         node: NodeId(id),
//!         incarnation: Incarnation::FIRST,
//!         records: Vec::new(),
//!         seed: id,
//!         now: Instant::now(),
//!     };
//!     Rpc::recover(&RpcConfig::new(vec![NodeId(0), NodeId(1)]), ctx).unwrap()
//! };
//! let echo = |_id, request: Bytes, _deadline| async move { request };
//! let (server, run_server) =
//!     rpc_node(node(0), net.join(NodeId(0)), NoTimers, MemLog::new(), DriverConfig::default(), echo);
//! let (client, run_client) =
//!     rpc_node(node(1), net.join(NodeId(1)), NoTimers, MemLog::new(), DriverConfig::default(), echo);
//!
//! futures::executor::block_on(async {
//!     let app = async {
//!         let options = CallOptions {
//!             semantics: Semantics::AtMostOnce,
//!             deadline: Instant::now() + Duration::from_secs(10),
//!         };
//!         let reply = client.call(NodeId(0), Bytes::from_static(b"hi"), options).await;
//!         assert_eq!(reply, Ok(Bytes::from_static(b"hi")));
//!         client.shutdown();
//!         server.shutdown();
//!     };
//!     let (a, b, ()) = futures::join!(run_server, run_client, app);
//!     a.unwrap();
//!     b.unwrap();
//! });
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::future::{AbortHandle, Aborted, abortable};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use ft_core::completion::{Closed, CompletionTable};
use ft_core::driver::driver;
use ft_core::{
    Channel, Clock, Counters, DriverConfig, DriverError, Handle, InputSender, NodeId, StableLog,
    StatsReader,
};

use crate::rpc::{CallId, CallOptions, Rpc, RpcError, RpcEvent, RpcInput};

/// The calls of one client waiting for their results, by token: the
/// table is `ft_core`'s, loom-modelled there.
type PendingCalls = CompletionTable<u64, Result<Bytes, RpcError>>;

/// What a handler answers: the reply, and the state change the call made
/// (its *effect*), which an exactly-once server makes durable together
/// with the completion record (see [`RpcInput::Complete`]). A `Bytes`
/// converts into a reply with no effect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The reply sent to the caller.
    pub body: Bytes,
    /// The effect to make durable with the completion (exactly-once).
    pub effect: Option<Bytes>,
}

impl Reply {
    /// A reply with an effect.
    pub fn with_effect(body: Bytes, effect: Bytes) -> Reply {
        Reply {
            body,
            effect: Some(effect),
        }
    }
}

impl From<Bytes> for Reply {
    fn from(body: Bytes) -> Reply {
        Reply { body, effect: None }
    }
}

/// What a node's dispatcher ([`serve`]) did, read through
/// [`RpcClient::serve_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Computations started (an `Execute` event each).
    pub executions: u64,
    /// Computations whose handler returned a reply.
    pub completed: u64,
    /// Computations cancelled by the core (caller gone, deadline, orphan).
    pub cancelled: u64,
    /// Handlers that panicked (each call failed with
    /// [`RpcError::HandlerFailed`]; the node went on).
    pub handler_panics: u64,
    /// This node's calls that returned a reply.
    pub calls_answered: u64,
    /// This node's calls that returned an error.
    pub calls_failed: u64,
}

#[derive(Debug, Default)]
struct ServeCells {
    executions: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    handler_panics: AtomicU64,
    calls_answered: AtomicU64,
    calls_failed: AtomicU64,
}

impl ServeCells {
    fn snapshot(&self) -> ServeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServeStats {
            executions: get(&self.executions),
            completed: get(&self.completed),
            cancelled: get(&self.cancelled),
            handler_panics: get(&self.handler_panics),
            calls_answered: get(&self.calls_answered),
            calls_failed: get(&self.calls_failed),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why an [`RpcClient::call`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The RPC core ended the call with one of its failure classes.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The node has stopped (its driver shut down or failed, or its
    /// dispatcher is gone): the call's outcome will never be known here.
    #[error("the RPC node has stopped")]
    Closed,
}

/// A cloneable handle for calling other nodes through one [`Rpc`] node.
///
/// Clones share the node; any number of tasks may call at once. Built by
/// [`rpc_node`], or by [`RpcClient::new`] for a driver set up by hand.
#[derive(Clone)]
pub struct RpcClient {
    inner: std::sync::Arc<ClientInner>,
}

struct ClientInner {
    inputs: InputSender<Rpc>,
    calls: PendingCalls,
    next_token: AtomicU64,
    stop: mpsc::UnboundedSender<()>,
    stats: Arc<ServeCells>,
    driver: Option<StatsReader>,
}

/// The dispatcher's end of an [`RpcClient`]: where [`serve`] delivers the
/// results of its calls and hears its [`shutdown`](RpcClient::shutdown).
pub struct Dispatch {
    calls: PendingCalls,
    stop: mpsc::UnboundedReceiver<()>,
    stats: Arc<ServeCells>,
}

impl fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// A client sending its calls to the driver behind `inputs`, and the
    /// [`Dispatch`] to hand to [`serve`] together with that driver's
    /// [`Handle`].
    ///
    /// The client owns the node's call tokens: nothing else should send
    /// [`RpcInput::Call`] or [`RpcInput::Cancel`] to the same driver.
    /// Built this way it cannot read the core's counters
    /// ([`counters`](Self::counters)); [`for_driver`](Self::for_driver) can.
    pub fn new(inputs: InputSender<Rpc>) -> (RpcClient, Dispatch) {
        RpcClient::build(inputs, None)
    }

    /// [`new`](Self::new) for the driver behind `handle`, whose counters
    /// the client then reads ([`counters`](Self::counters)).
    pub fn for_driver(handle: &Handle<Rpc>) -> (RpcClient, Dispatch) {
        RpcClient::build(handle.input_sender(), Some(handle.stats_reader()))
    }

    fn build(inputs: InputSender<Rpc>, driver: Option<StatsReader>) -> (RpcClient, Dispatch) {
        let cancel = inputs.clone();
        let calls = PendingCalls::new(move |token| {
            // An error means the driver has stopped, and the call with it.
            let _ = cancel.input(RpcInput::Cancel { token });
        });
        let (stop_tx, stop_rx) = mpsc::unbounded();
        let stats = Arc::new(ServeCells::default());
        let client = RpcClient {
            inner: Arc::new(ClientInner {
                inputs,
                calls: calls.clone(),
                next_token: AtomicU64::new(0),
                stop: stop_tx,
                stats: stats.clone(),
                driver,
            }),
        };
        let dispatch = Dispatch {
            calls,
            stop: stop_rx,
            stats,
        };
        (client, dispatch)
    }

    /// Calls `server` with `request`, and waits for its reply.
    ///
    /// Dropping the returned future before it completes cancels the call:
    /// the core is sent [`RpcInput::Cancel`], which tells the server to stop
    /// the computation, and a reply that comes later is discarded.
    ///
    /// # Errors
    /// [`CallError::Rpc`] with the core's failure class (cannot locate the
    /// server, timed out at `options.deadline`, server crashed, refused);
    /// [`CallError::Closed`] if the node stops before the call ends.
    ///
    /// # Example
    ///
    /// Retrying only what surely did not run ([`RpcError::executed`] is
    /// [`Executed::No`](crate::rpc::Executed::No)): a call that may have
    /// executed is not called again, so it cannot run twice. Here server 0
    /// starts only after the first call failed to locate it.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use ft_core::{DriverConfig, Incarnation, MemNetwork, Recover, RecoveryContext};
    /// # use ft_storage::MemLog;
    /// use bytes::Bytes;
    /// use ft_core::NodeId;
    /// use ft_rpc::handle::{CallError, rpc_node};
    /// use ft_rpc::rpc::{CallOptions, Executed, Rpc, RpcConfig, Semantics};
    /// # struct TokioClock;
    /// # #[async_trait::async_trait]
    /// # impl ft_core::Clock for TokioClock {
    /// #     fn now(&self) -> Instant { tokio::time::Instant::now().into_std() }
    /// #     async fn sleep_until(&self, t: Instant) { tokio::time::sleep_until(t.into()).await }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let net = MemNetwork::new(64);
    /// # let node = |id: u64| {
    /// #     let config = RpcConfig::new(vec![NodeId(0), NodeId(1)]);
    /// #     let ctx = RecoveryContext { node: NodeId(id), incarnation: Incarnation::FIRST, records: Vec::new(), seed: id, now: Instant::now() };
    /// #     let echo = |_id, request: Bytes, _deadline| async move { request };
    /// #     rpc_node(Rpc::recover(&config, ctx).unwrap(), net.join(NodeId(id)), TokioClock, MemLog::new(), DriverConfig::default(), echo)
    /// # };
    /// let (server, run_server) = node(0); // an echo server, not running yet
    /// let (client, run_client) = node(1);
    /// let client_task = tokio::spawn(run_client);
    ///
    /// let mut run_server = Some(run_server);
    /// let mut failures = 0;
    /// let reply = loop {
    ///     let options = CallOptions::within(Semantics::AtMostOnce, Duration::from_millis(200));
    ///     match client.call(NodeId(0), Bytes::from_static(b"hi"), options).await {
    ///         // Never executed (here: no server answered): safe to call again.
    ///         Err(CallError::Rpc(e)) if e.executed() == Executed::No && failures < 10 => {
    ///             failures += 1;
    ///             if let Some(run) = run_server.take() {
    ///                 tokio::spawn(run); // the server starts
    ///             }
    ///         }
    ///         // A reply, or an error after which the call may have run.
    ///         other => break other,
    ///     }
    /// };
    /// assert_eq!(reply, Ok(Bytes::from_static(b"hi")));
    /// assert!(failures >= 1, "the first call found no server");
    /// # client.shutdown();
    /// # server.shutdown();
    /// # client_task.await.unwrap().unwrap();
    /// # }
    /// ```
    pub async fn call(
        &self,
        server: NodeId,
        request: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, CallError> {
        let completion = loop {
            let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
            // A token wraps only after 2^64 calls; one still waiting then is
            // skipped.
            if let Ok(c) = self.inner.calls.register(token) {
                break c;
            }
        };
        let token = *completion.key();
        let call = RpcInput::Call {
            token,
            server,
            request,
            options,
        };
        if self.inner.inputs.input(call).is_err() {
            // Never reached the core: nothing there to cancel.
            completion.forget();
            return Err(CallError::Closed);
        }
        match completion.await {
            Ok(result) => result.map_err(CallError::Rpc),
            Err(Closed) => Err(CallError::Closed),
        }
    }

    /// The core's counters (messages sent and received, retransmissions,
    /// persists, compactions…) as of its last step, read while it runs;
    /// `None` for a client built with [`new`](Self::new), which knows no
    /// driver.
    pub fn counters(&self) -> Option<Counters> {
        self.inner.driver.as_ref().map(StatsReader::counters)
    }

    /// What the node's dispatcher did so far: computations served, handler
    /// panics, this node's calls answered and failed.
    pub fn serve_stats(&self) -> ServeStats {
        self.inner.stats.snapshot()
    }

    /// How many calls are waiting for their results.
    pub fn pending(&self) -> usize {
        self.inner.calls.len()
    }

    /// Whether the node has stopped: every call now ends with
    /// [`CallError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.inner.calls.is_closed() || self.inner.inputs.is_closed()
    }

    /// Asks the node to stop once its driver has handled the inputs sent
    /// before this call (the same as [`Handle::shutdown`]); calls still
    /// waiting then end with [`CallError::Closed`]. Does nothing if the node
    /// has stopped already.
    pub fn shutdown(&self) {
        // An error means the dispatcher is gone, and the node with it.
        let _ = self.inner.stop.unbounded_send(());
    }
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("pending", &self.pending())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Closes the table when the dispatcher ends, however it ends (returned, or
/// its future dropped), so that no caller waits for a result that can no
/// longer come.
struct CloseOnDrop(PendingCalls);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// How a handler ended: with a reply, or by panicking.
type Handled = Result<Result<Reply, ()>, Aborted>;

/// What woke the dispatcher.
enum Wake {
    Event(Option<RpcEvent>),
    Handled(CallId, u64, Handled),
    Stop,
}

/// Runs the node's application side: delivers the results of `dispatch`'s
/// client calls, serves [`RpcEvent::Execute`] with `handler`, and drops the
/// handlers of cancelled computations. See the [module docs](self).
///
/// Returns when the driver behind `handle` has stopped and every event it
/// emitted was taken; the client's waiting calls then end with
/// [`CallError::Closed`]. Dropping the future early does the same, and drops
/// every running handler.
///
/// Handlers run concurrently inside this future (a `FuturesUnordered`), so
/// it is `Send` when `handler` and its futures are.
pub async fn serve<H, F, R>(mut handle: Handle<Rpc>, dispatch: Dispatch, handler: H)
where
    H: Fn(CallId, Bytes, Instant) -> F,
    F: Future<Output = R>,
    R: Into<Reply>,
{
    let Dispatch {
        calls,
        mut stop,
        stats,
    } = dispatch;
    let _close = CloseOnDrop(calls.clone());
    let mut stop_open = true;
    // The running handlers, by computation, with the generation that tells a
    // handler from a later one for the same id (at-least-once re-executes).
    let mut running: HashMap<CallId, (u64, AbortHandle)> = HashMap::new();
    let mut handlers = FuturesUnordered::new();
    let mut generation: u64 = 0;
    let mut events_first = false;
    loop {
        events_first = !events_first;
        let wake = {
            // A `next_event` future holds nothing: the receiver keeps the
            // waker, so a fresh one each turn loses no event.
            let mut event = pin!(handle.next_event());
            poll_fn(|cx| {
                if stop_open {
                    match stop.poll_next_unpin(cx) {
                        Poll::Ready(Some(())) => return Poll::Ready(Wake::Stop),
                        // Every client is gone; only the driver stops us now.
                        Poll::Ready(None) => stop_open = false,
                        Poll::Pending => {}
                    }
                }
                // Take turns, so neither a flood of events nor a stream of
                // finishing handlers starves the other.
                for turn in 0..2 {
                    if (turn == 0) == events_first {
                        if let Poll::Ready(e) = event.as_mut().poll(cx) {
                            return Poll::Ready(Wake::Event(e));
                        }
                    } else if let Poll::Ready(Some((id, generation, reply))) =
                        handlers.poll_next_unpin(cx)
                    {
                        return Poll::Ready(Wake::Handled(id, generation, reply));
                    }
                }
                Poll::Pending
            })
            .await
        };
        match wake {
            Wake::Event(None) => break,
            Wake::Event(Some(RpcEvent::Returned { token, result })) => {
                bump(if result.is_ok() {
                    &stats.calls_answered
                } else {
                    &stats.calls_failed
                });
                // `false`: the caller gave up; the result is discarded.
                calls.complete(&token, result);
            }
            Wake::Event(Some(RpcEvent::Execute {
                id,
                request,
                deadline,
                ..
            })) => {
                generation = generation.wrapping_add(1);
                bump(&stats.executions);
                // The core runs one computation per id at a time; an older
                // one still here has been superseded.
                if let Some((_, older)) = running.remove(&id) {
                    older.abort();
                }
                // A panicking handler fails its own call, not the node: the
                // panic is caught at the future's boundary. (Assuming unwind
                // safety is sound here: a panicked handler's future is
                // dropped, never polled again.)
                let mut work = Box::pin(
                    AssertUnwindSafe(handler(id, request, deadline))
                        .catch_unwind()
                        .map(|r| r.map(Into::into).map_err(|_| ())),
                );
                // Polled once here: a handler that is ready at once (an
                // echo, a lookup) is answered now, with no abort handle,
                // no place among the running handlers and no turn of this
                // loop of its own. One that is not goes on among the
                // others (which poll it again, with their own waker).
                if let Poll::Ready(outcome) =
                    poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
                {
                    handled(&handle, &stats, id, outcome);
                    continue;
                }
                let (work, abort) = abortable(work);
                running.insert(id, (generation, abort));
                let this = generation;
                handlers.push(work.map(move |reply| (id, this, reply)));
            }
            Wake::Event(Some(RpcEvent::Cancel { id, .. })) => {
                if let Some((_, abort)) = running.remove(&id) {
                    bump(&stats.cancelled);
                    // The handler's future is dropped when `handlers` next
                    // polls it, which the abort's wake-up brings about.
                    abort.abort();
                }
            }
            Wake::Handled(id, this, Ok(outcome)) => {
                if running.get(&id).is_some_and(|(g, _)| *g == this) {
                    running.remove(&id);
                    handled(&handle, &stats, id, outcome);
                }
            }
            Wake::Handled(_, _, Err(Aborted)) => {}
            Wake::Stop => handle.shutdown(),
        }
    }
}

/// A handler for computation `id` ended with `outcome`: the core is told.
fn handled(handle: &Handle<Rpc>, stats: &ServeCells, id: CallId, outcome: Result<Reply, ()>) {
    let input = match outcome {
        Ok(Reply { body, effect }) => {
            bump(&stats.completed);
            RpcInput::Complete {
                exec: id,
                reply: body,
                effect,
            }
        }
        Err(()) => {
            bump(&stats.handler_panics);
            tracing::error!(call = ?id, "an RPC handler panicked; the call fails, the node goes on");
            RpcInput::Fail { exec: id }
        }
    };
    // An error means the driver has stopped; the loop ends when its events
    // run out.
    let _ = handle.input(input);
}

/// Runs `rpc` over `channel`, `clock` and `log` with `handler` serving its
/// calls: the [`driver`] and [`serve`] in one future.
///
/// Returns the node's [`RpcClient`] and the future that does all the work;
/// nothing happens until it is polled, on any executor (ft-tokio has a
/// spawn helper). The future returns what the driver returns, once the
/// driver has stopped and the dispatcher has delivered its last events; it
/// is `Send` when the edges, `handler` and its futures are.
///
/// A node that only calls sets [`RpcConfig::serves`](crate::rpc::RpcConfig)
/// to `false`, so that calls reaching it are refused
/// ([`Refusal::NotServing`](crate::rpc::Refusal), not executed); it still
/// passes a handler, which is never called.
pub fn rpc_node<C, K, L, H, F, R>(
    rpc: Rpc,
    channel: C,
    clock: K,
    log: L,
    config: DriverConfig,
    handler: H,
) -> (RpcClient, impl Future<Output = Result<(), DriverError>>)
where
    C: Channel + 'static,
    K: Clock + 'static,
    L: StableLog + 'static,
    H: Fn(CallId, Bytes, Instant) -> F,
    F: Future<Output = R>,
    R: Into<Reply>,
{
    let (handle, run) = driver(rpc, channel, clock, log, config);
    let (client, dispatch) = RpcClient::for_driver(&handle);
    let node = async move {
        let (result, ()) = futures::join!(run, serve(handle, dispatch, handler));
        result
    };
    (client, node)
}

//! The async handle end to end: `Rpc` nodes over `MemNetwork`, driven on
//! tokio, called through cloned `RpcClient`s.
//!
//! Nothing here depends on timing: the network is lossless, so calls need
//! no retransmission, and the timeouts are failure guards (a hang fails the
//! test instead of blocking it) or deadlines the test waits out on purpose.
// Under `--cfg ft_loom` the crates run on loom primitives, usable only
// inside `loom::model`: only the in-crate loom models run then.
#![cfg(not(ft_loom))]

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::harness;
use ft_core::{Clock, DriverConfig, DriverError, MemNetwork, NodeId, Recover, RecoveryContext};
use ft_rpc::handle::{CallError, RpcClient, rpc_node};
use ft_rpc::rpc::{CallId, CallOptions, Rpc, RpcConfig, RpcError, Semantics};
use ft_storage::MemLog;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long anything may take before the test calls it a hang.
const GUARD: Duration = Duration::from_secs(20);

/// Tokio's clock as the driver's.
struct TokioClock;

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
    async fn sleep_until(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

fn rpc(id: u64) -> Rpc {
    Rpc::recover(
        &RpcConfig::new(vec![NodeId(0), NodeId(1), NodeId(2)]),
        RecoveryContext {
            seed: id + 1,
            ..harness::context(NodeId(id))
        },
    )
    .unwrap()
}

/// Starts node `id` on `net` with `handler`, spawned on tokio.
fn start<H, F>(
    net: &MemNetwork,
    id: u64,
    handler: H,
) -> (RpcClient, JoinHandle<Result<(), DriverError>>)
where
    H: Fn(CallId, Bytes, Instant) -> F + Send + 'static,
    F: Future<Output = Bytes> + Send + 'static,
{
    let (client, run) = rpc_node(
        rpc(id),
        net.join(NodeId(id)),
        TokioClock,
        MemLog::new(),
        DriverConfig::default(),
        handler,
    );
    (client, tokio::spawn(run))
}

async fn echo(_: CallId, request: Bytes, _: Instant) -> Bytes {
    request
}

fn within(d: Duration) -> CallOptions {
    CallOptions {
        semantics: Semantics::AtMostOnce,
        deadline: Instant::now() + d,
    }
}

async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, f).await {
        Ok(t) => t,
        Err(_) => panic!("{what}: hung"),
    }
}

/// Sends `()` when dropped: how a test sees a handler's future dropped.
struct DropGuard(mpsc::UnboundedSender<CallId>, CallId);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// A handler that answers `ping` at once and never answers anything else:
/// it reports that it started, and, through its guard, when its future is
/// dropped.
fn stuck(
    started: mpsc::UnboundedSender<CallId>,
    dropped: mpsc::UnboundedSender<CallId>,
) -> impl Fn(CallId, Bytes, Instant) -> std::pin::Pin<Box<dyn Future<Output = Bytes> + Send>>
+ Send
+ 'static {
    move |id, request, _| {
        if request == PING {
            return Box::pin(async { Bytes::from_static(PING) });
        }
        let started = started.clone();
        let guard = DropGuard(dropped.clone(), id);
        Box::pin(async move {
            let _guard = guard;
            let _ = started.send(id);
            std::future::pending::<Bytes>().await
        })
    }
}

const PING: &[u8] = b"ping";

/// Binds `client` to `server` with a call that is answered, so that a test's
/// next call reaches the server without a `Locate` round first.
async fn bind(client: &RpcClient, server: u64) {
    let pong = guarded(
        "ping",
        client.call(NodeId(server), Bytes::from_static(PING), within(GUARD)),
    )
    .await;
    assert_eq!(pong, Ok(Bytes::from_static(PING)));
}

async fn stop(client: &RpcClient, node: JoinHandle<Result<(), DriverError>>) {
    client.shutdown();
    guarded("shutdown", node).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_calling_through_clones_each_get_their_own_reply() {
    let net = MemNetwork::new(1024);
    let (server, server_node) = start(&net, 0, echo);
    let (client, client_node) = start(&net, 1, echo);

    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..8 {
                    let request = Bytes::from(format!("task {task} call {i}"));
                    let reply = client.call(NodeId(0), request.clone(), within(GUARD)).await;
                    assert_eq!(reply, Ok(request));
                }
            })
        })
        .collect();
    for t in tasks {
        guarded("callers", t).await.unwrap();
    }
    assert_eq!(client.pending(), 0, "every slot released");
    // The core's counters, read while it runs: 128 calls went out and came
    // back (a lossless network: no retransmission, unless a retry timer
    // beat a reply).
    let counters = client.counters().expect("rpc_node knows its driver");
    assert!(counters.messages_sent >= 128, "{counters:?}");
    assert!(counters.messages_received >= 128, "{counters:?}");
    let served = server.counters().unwrap();
    assert!(served.messages_received >= 128, "{served:?}");

    stop(&client, client_node).await;
    stop(&server, server_node).await;
}

#[tokio::test]
async fn both_nodes_serve_and_call_each_other() {
    let net = MemNetwork::new(256);
    let (a, a_node) = start(&net, 0, echo);
    let (b, b_node) = start(&net, 1, echo);
    let (ab, ba) = guarded("calls", async {
        futures::join!(
            a.call(NodeId(1), Bytes::from_static(b"a to b"), within(GUARD)),
            b.call(NodeId(0), Bytes::from_static(b"b to a"), within(GUARD)),
        )
    })
    .await;
    assert_eq!(ab, Ok(Bytes::from_static(b"a to b")));
    assert_eq!(ba, Ok(Bytes::from_static(b"b to a")));
    stop(&a, a_node).await;
    stop(&b, b_node).await;
}

#[tokio::test]
async fn a_call_dropped_by_its_caller_is_cancelled_at_the_server() {
    let net = MemNetwork::new(256);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let (server, server_node) = start(&net, 0, stuck(started_tx, dropped_tx));
    let (client, client_node) = start(&net, 1, echo);

    let call = client.call(NodeId(0), Bytes::from_static(b"slow"), within(GUARD));
    let id = guarded("handler start", async {
        tokio::select! {
            r = call => panic!("the handler never answers, yet the call returned {r:?}"),
            id = started.recv() => id.unwrap(),
        }
    })
    .await;
    // The call's future was dropped by `select!` when the handler started.
    assert_eq!(client.pending(), 0);
    let gone = guarded("handler dropped", dropped.recv()).await;
    assert_eq!(gone, Some(id), "the server dropped the cancelled handler");

    stop(&client, client_node).await;
    stop(&server, server_node).await;
}

#[tokio::test]
async fn a_call_to_an_absent_server_cannot_locate_it() {
    let net = MemNetwork::new(256);
    let (client, client_node) = start(&net, 1, echo);
    // Node 2 is a peer but never joins the network.
    let got = guarded(
        "call",
        client.call(
            NodeId(2),
            Bytes::from_static(b"anyone?"),
            within(Duration::from_millis(200)),
        ),
    )
    .await;
    assert_eq!(
        got,
        Err(CallError::Rpc(RpcError::CannotLocateServer {
            server: NodeId(2)
        }))
    );
    stop(&client, client_node).await;
}

#[tokio::test]
async fn a_call_the_server_never_answers_times_out_and_its_handler_is_dropped() {
    let net = MemNetwork::new(256);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let (server, server_node) = start(&net, 0, stuck(started_tx, dropped_tx));
    let (client, client_node) = start(&net, 1, echo);
    bind(&client, 0).await;

    let got = guarded(
        "call",
        client.call(
            NodeId(0),
            Bytes::from_static(b"never"),
            within(Duration::from_millis(500)),
        ),
    )
    .await;
    assert!(
        matches!(got, Err(CallError::Rpc(RpcError::TimedOut { .. }))),
        "{got:?}"
    );
    let id = guarded("handler start", started.recv()).await;
    // The server cancels the computation too: the caller gave up, and its
    // deadline passed.
    assert_eq!(guarded("handler dropped", dropped.recv()).await, id);

    stop(&client, client_node).await;
    stop(&server, server_node).await;
}

#[tokio::test]
async fn shutting_down_the_node_ends_waiting_calls_with_closed() {
    let net = MemNetwork::new(256);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, _dropped) = mpsc::unbounded_channel();
    let (server, server_node) = start(&net, 0, stuck(started_tx, dropped_tx));
    let (client, client_node) = start(&net, 1, echo);

    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call(NodeId(0), Bytes::from_static(b"wait"), within(GUARD))
                .await
        })
    };
    guarded("handler start", started.recv()).await;
    assert_eq!(client.pending(), 1);
    stop(&client, client_node).await;

    let got = guarded("waiting call", waiting).await.unwrap();
    assert_eq!(got, Err(CallError::Closed));
    assert!(client.is_closed());
    assert_eq!(
        client.call(NodeId(0), Bytes::new(), within(GUARD)).await,
        Err(CallError::Closed),
        "a call after the stop fails at once"
    );
    assert_eq!(client.pending(), 0);
    stop(&server, server_node).await;
}

#[tokio::test]
async fn dropping_the_node_future_ends_waiting_calls_with_closed() {
    let net = MemNetwork::new(256);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, _dropped) = mpsc::unbounded_channel();
    let (server, server_node) = start(&net, 0, stuck(started_tx, dropped_tx));
    let (client, client_node) = start(&net, 1, echo);

    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call(NodeId(0), Bytes::from_static(b"wait"), within(GUARD))
                .await
        })
    };
    guarded("handler start", started.recv()).await;
    client_node.abort();
    let _ = client_node.await;

    assert_eq!(
        guarded("waiting call", waiting).await.unwrap(),
        Err(CallError::Closed)
    );
    stop(&server, server_node).await;
}

/// A handler that panics fails its own call, with an error saying it ran,
/// and the node goes on serving the next ones.
#[tokio::test]
async fn a_panicking_handler_fails_its_call_and_the_node_serves_on() {
    let net = MemNetwork::new(64);
    let (server, server_node) = start(&net, 0, |_, request: Bytes, _| async move {
        if request.as_ref() == b"boom" {
            panic!("the handler blew up");
        }
        request
    });
    let (client, client_node) = start(&net, 1, echo);
    for semantics in [Semantics::AtMostOnce, Semantics::ExactlyOnce] {
        let options = CallOptions {
            semantics,
            ..within(GUARD)
        };
        let failed = guarded(
            "the panicking call",
            client.call(NodeId(0), Bytes::from_static(b"boom"), options),
        )
        .await;
        match failed {
            Err(CallError::Rpc(e)) => {
                assert_eq!(e, RpcError::HandlerFailed);
                assert_eq!(e.executed(), ft_rpc::rpc::Executed::Yes);
            }
            other => panic!("{semantics:?}: {other:?}"),
        }
        let ok = guarded(
            "the next call",
            client.call(NodeId(0), Bytes::from_static(b"fine"), options),
        )
        .await;
        assert_eq!(ok, Ok(Bytes::from_static(b"fine")), "{semantics:?}");
    }
    let stats = server.serve_stats();
    assert_eq!(stats.handler_panics, 2);
    assert_eq!(stats.completed, 2);
    assert_eq!(client.serve_stats().calls_answered, 2);
    assert_eq!(client.serve_stats().calls_failed, 2);
    stop(&client, client_node).await;
    stop(&server, server_node).await;
}

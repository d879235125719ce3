//! [`RpcNode`] as a service uses it: restarts of client and server with the
//! same node id and data directory, client-only nodes, ephemeral servers,
//! effects replayed after a restart, two nodes on one directory, TCP.
//!
//! The regression at the heart of it: a client process that restarts and
//! makes new calls must never be handed its previous life's replies — not
//! by an at-most-once server that still remembers them, nor by an
//! exactly-once server restarted from its durable records.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{DriverConfig, Incarnation, NodeId, Recover, RecoveryContext};
use ft_rpc::handle::{CallError, Reply, rpc_node};
use ft_rpc::rpc::{CallId, CallOptions, Refusal, Rpc, RpcConfig, RpcError, Semantics};
use ft_storage::testdir::TestDir;
use ft_tokio::{NodeError, RpcNode, Transport, UdpChannel};

const SERVER: NodeId = NodeId(0);
const CLIENT: NodeId = NodeId(1);

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn within(semantics: Semantics) -> CallOptions {
    CallOptions::within(semantics, Duration::from_secs(10))
}

/// An echo server answering each request with the request and a counter
/// of its executions in this life.
async fn echo_server(port: u16, client_port: u16, dir: Option<&std::path::Path>) -> RpcNode {
    let count = Arc::new(AtomicU64::new(0));
    let mut b = RpcNode::builder(SERVER)
        .peer(SERVER, addr(port))
        .peer(CLIENT, addr(client_port));
    if let Some(dir) = dir {
        b = b.data_dir(dir);
    }
    b.serve(move |_, request: Bytes, _| {
        let n = count.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut reply = request.to_vec();
            reply.extend_from_slice(format!(" #{n}").as_bytes());
            Bytes::from(reply)
        }
    })
    .await
    .unwrap()
}

async fn client(port: u16, server_port: u16) -> RpcNode {
    RpcNode::builder(CLIENT)
        .peer(SERVER, addr(server_port))
        .peer(CLIENT, addr(port))
        .client_only()
        .await
        .unwrap()
}

/// A client restarted by the builder has a new identity: the server runs
/// its new calls, and never answers them with the previous life's replies.
#[tokio::test]
async fn a_restarted_client_never_gets_its_previous_lifes_replies() {
    for semantics in [Semantics::AtMostOnce, Semantics::ExactlyOnce] {
        let dir = TestDir::new("node-restart");
        let (sp, cp) = (free_port(), free_port());
        let server = echo_server(sp, cp, Some(dir.path())).await;
        let first = client(cp, sp).await;
        for i in 0..5 {
            let r = first
                .client()
                .call(SERVER, Bytes::from(format!("first {i}")), within(semantics))
                .await
                .unwrap();
            assert!(r.starts_with(format!("first {i}").as_bytes()));
        }
        let first_life = first.incarnation();
        first.shutdown().await.unwrap();
        // The exactly-once server restarts too, from its records.
        let server = if semantics == Semantics::ExactlyOnce {
            server.shutdown().await.unwrap();
            echo_server(sp, cp, Some(dir.path())).await
        } else {
            server
        };
        let second = client(cp, sp).await;
        assert!(second.incarnation() > first_life, "a new identity");
        for i in 0..5 {
            let request = format!("second {i}");
            let r = second
                .client()
                .call(SERVER, Bytes::from(request.clone()), within(semantics))
                .await
                .unwrap();
            assert!(
                r.starts_with(request.as_bytes()),
                "{semantics:?}: call {i} of the new life got {r:?}"
            );
        }
        second.shutdown().await.unwrap();
        server.shutdown().await.unwrap();
    }
}

/// The unsafe way, spelled out by hand (the same node id and incarnation
/// in two processes' lives): the server compares the requests and answers
/// `Mismatch`, never the other call's reply.
#[tokio::test]
async fn a_reused_identity_gets_mismatch_never_another_calls_reply() {
    let dir = TestDir::new("node-reuse");
    let (sp, cp) = (free_port(), free_port());
    let server = echo_server(sp, cp, Some(dir.path())).await;
    let life = |text: &'static str| async move {
        let config = RpcConfig::new(vec![SERVER, CLIENT]);
        let ctx = RecoveryContext {
            node: CLIENT,
            // The same identity in both lives: what the builder prevents.
            incarnation: Incarnation::FIRST,
            records: Vec::new(),
            seed: 1,
            now: Instant::now(),
        };
        let peers = [(SERVER, addr(sp))].into_iter().collect();
        let channel = UdpChannel::bind(CLIENT, addr(cp), peers).await.unwrap();
        let (c, run) = rpc_node(
            Rpc::recover(&config, ctx).unwrap(),
            channel,
            ft_tokio::TokioClock,
            ft_tokio::NoLog,
            DriverConfig::default(),
            |_, _, _| async { Bytes::new() },
        );
        let task = tokio::spawn(run);
        let mut results = Vec::new();
        for semantics in [Semantics::AtMostOnce, Semantics::ExactlyOnce] {
            results.push(c.call(SERVER, Bytes::from(text), within(semantics)).await);
        }
        c.shutdown();
        task.await.unwrap().unwrap();
        results
    };
    let first = life("first life").await;
    assert!(
        first
            .iter()
            .all(|r| r.as_ref().is_ok_and(|b| b.starts_with(b"first life")))
    );
    let second = life("second life").await;
    // Call 1 was acknowledged by the first life (its record is gone: the
    // server cannot tell, and says the outcome is unknown); call 2's record
    // is there, and its request differs. Neither gets the other's reply.
    assert_eq!(
        second,
        vec![
            Err(CallError::Rpc(RpcError::Forgotten {
                executed: ft_rpc::rpc::Executed::Unknown
            })),
            Err(CallError::Rpc(RpcError::Mismatch)),
        ]
    );
    server.shutdown().await.unwrap();
}

/// Client-only nodes refuse calls; a server without a data directory
/// refuses exactly-once (it could not keep the promise across restarts)
/// and serves the other semantics.
#[tokio::test]
async fn client_only_and_ephemeral_nodes_refuse_what_they_cannot_do() {
    let (sp, cp) = (free_port(), free_port());
    let server = echo_server(sp, cp, None).await;
    let c = client(cp, sp).await;
    assert_eq!(
        c.client()
            .call(SERVER, Bytes::from("x"), within(Semantics::ExactlyOnce))
            .await,
        Err(CallError::Rpc(RpcError::Refused(Refusal::NoStableStorage)))
    );
    assert!(
        c.client()
            .call(SERVER, Bytes::from("x"), within(Semantics::AtMostOnce))
            .await
            .is_ok()
    );
    // The server calls the client-only node.
    assert_eq!(
        server
            .client()
            .call(CLIENT, Bytes::from("y"), within(Semantics::AtMostOnce))
            .await,
        Err(CallError::Rpc(RpcError::Refused(Refusal::NotServing)))
    );
    c.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

/// Effects returned by an exactly-once handler are durable with the
/// completions; a restarted server reads them back to rebuild its state,
/// so each call's effect is applied once across the restart.
#[tokio::test]
async fn effects_are_replayed_after_a_restart() {
    let dir = TestDir::new("node-effects");
    let (sp, cp) = (free_port(), free_port());
    let start = |total: Arc<Mutex<u64>>| {
        let dir = dir.path().to_path_buf();
        async move {
            let prepared = RpcNode::builder(SERVER)
                .peer(SERVER, addr(sp))
                .peer(CLIENT, addr(cp))
                .data_dir(dir)
                .open()
                .await
                .unwrap();
            // Rebuild the state from the effects of earlier lives.
            *total.lock().unwrap() = prepared
                .effects()
                .iter()
                .map(|(_, e)| u64::from_le_bytes(e[..8].try_into().unwrap()))
                .sum();
            let t = total.clone();
            prepared
                .serve(move |_: CallId, request: Bytes, _| {
                    let add = u64::from_le_bytes(request[..8].try_into().unwrap());
                    let mut total = t.lock().unwrap();
                    *total += add;
                    let reply = Bytes::copy_from_slice(&total.to_le_bytes());
                    async move { Reply::with_effect(reply, request) }
                })
                .await
                .unwrap()
        }
    };
    let total = Arc::new(Mutex::new(0));
    let server = start(total.clone()).await;
    let c = client(cp, sp).await;
    for add in [5u64, 7, 11] {
        c.client()
            .call(
                SERVER,
                Bytes::copy_from_slice(&add.to_le_bytes()),
                within(Semantics::ExactlyOnce),
            )
            .await
            .unwrap();
    }
    server.shutdown().await.unwrap();
    let after = Arc::new(Mutex::new(0));
    let server = start(after.clone()).await;
    assert_eq!(
        *after.lock().unwrap(),
        23,
        "rebuilt from the durable effects"
    );
    let r = c
        .client()
        .call(
            SERVER,
            Bytes::copy_from_slice(&1u64.to_le_bytes()),
            within(Semantics::ExactlyOnce),
        )
        .await
        .unwrap();
    assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), 24);
    c.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

/// Two nodes on one data directory: the second is refused, before it
/// binds anything.
#[tokio::test]
async fn a_second_node_on_a_running_directory_is_refused() {
    let dir = TestDir::new("node-twice");
    let (sp, cp) = (free_port(), free_port());
    let server = echo_server(sp, cp, Some(dir.path())).await;
    let again = RpcNode::builder(SERVER)
        .peer(SERVER, addr(free_port()))
        .peer(CLIENT, addr(cp))
        .data_dir(dir.path())
        .client_only()
        .await;
    assert!(
        matches!(
            again,
            Err(NodeError::Storage(ft_core::StorageError::Locked { .. }))
        ),
        "{again:?}"
    );
    server.shutdown().await.unwrap();
    let missing = RpcNode::builder(SERVER)
        .peer(CLIENT, addr(cp))
        .client_only()
        .await;
    assert!(matches!(missing, Err(NodeError::NoAddress(SERVER))));
}

/// The same over TCP, with a request and a reply too large for one
/// datagram.
#[tokio::test]
async fn tcp_nodes_call_each_other_with_large_bodies() {
    let (sp, cp) = (free_port(), free_port());
    let server = RpcNode::builder(SERVER)
        .peer(SERVER, addr(sp))
        .peer(CLIENT, addr(cp))
        .transport(Transport::Tcp)
        .serve(|_, request: Bytes, _| async move { request })
        .await
        .unwrap();
    let c = RpcNode::builder(CLIENT)
        .peer(SERVER, addr(sp))
        .peer(CLIENT, addr(cp))
        .transport(Transport::Tcp)
        .client_only()
        .await
        .unwrap();
    let big = Bytes::from((0..1_000_000u32).map(|i| i as u8).collect::<Vec<_>>());
    let r = c
        .client()
        .call(SERVER, big.clone(), within(Semantics::AtMostOnce))
        .await
        .unwrap();
    assert_eq!(r, big);
    assert!(c.stats().driver.datagrams_out > 10, "sent in parts");
    c.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

/// The files below `dir`: how many, their lengths, and the bytes the file
/// system allocated for them (segments are preallocated, perhaps sparse).
fn bytes_below(dir: &std::path::Path) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0, 0);
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        let (files, len, allocated) = if meta.is_dir() {
            bytes_below(&entry.path())
        } else {
            (1, meta.len(), meta.blocks() * 512)
        };
        total = (total.0 + files, total.1 + len, total.2 + allocated);
    }
    total
}

/// A real data directory under steady exactly-once load: the server's log
/// is compacted behind its snapshots, so the bytes on disk stay bounded.
/// `FT_CALLS` calls (10^5 by default), 16 in flight, over UDP loopback;
/// prints the log's bytes and records every 10% of the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (the README's figures): cargo test --release -p ft-tokio --test node -- --ignored --nocapture"]
async fn the_bytes_on_disk_stay_bounded_under_exactly_once_load() {
    let calls: u64 = std::env::var("FT_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = TestDir::new("node-disk-bound");
    let (sp, cp) = (free_port(), free_port());
    let server = echo_server(sp, cp, Some(dir.path())).await;
    let client = client(cp, sp).await;
    let started = Instant::now();
    let in_flight = 16;
    let (mut max_allocated, mut done) = (0, 0);
    while done < calls {
        let batch = (calls - done).min(calls / 10).max(1);
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..in_flight {
            let c = client.client().clone();
            let n = batch / in_flight + u64::from(t < batch % in_flight);
            tasks.spawn(async move {
                for _ in 0..n {
                    c.call(
                        SERVER,
                        Bytes::from_static(b"ping"),
                        within(Semantics::ExactlyOnce),
                    )
                    .await
                    .unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        done += batch;
        let (files, len, allocated) = bytes_below(&dir.path().join(ft_tokio::durable::LOG_DIR));
        max_allocated = max_allocated.max(allocated);
        let core = server.stats().core;
        println!(
            "{done} calls: log directory {files} files, {len} bytes long, {allocated} bytes \
             allocated; {} persists, {} compactions; {:.1?}",
            core.persists,
            core.compactions,
            started.elapsed()
        );
    }
    let core = server.stats().core;
    client.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
    let records = ft_tokio::durable::records(dir.path()).unwrap();
    println!(
        "{calls} exactly-once calls: at most {max_allocated} bytes allocated to the log; \
         {} records ({} bytes of records) at the end; {} compactions",
        records.len(),
        records.iter().map(Bytes::len).sum::<usize>(),
        core.compactions
    );
    assert!(core.compactions > 0);
}

//! RPC throughput and latency: ft's RPC over ft-core's in-memory network,
//! TCP and UDP on loopback, against tarpc over TCP on loopback, all in one
//! run.
//!
//! ```text
//! cargo bench -p ft-tokio --bench rpc              # everything (about a minute)
//! cargo bench -p ft-tokio --bench rpc -- tcp       # the cases whose name contains "tcp"
//! ```
//!
//! Each call echoes a 64-byte request; ft's calls are at-most-once. A case
//! is one transport with 1 or 16 calls in flight (as many tasks, each
//! calling in a loop). Every case is warmed up, then measured for a fixed
//! number of calls; the cases take turns, round after round, so a noisy
//! neighbour slows all of them alike, and each figure is the median of the
//! rounds. No figure is asserted: this prints tables and ratios.
//!
//! The headline table runs everything on one multi-threaded tokio runtime
//! with 2 workers (the project's machine has 2 cores): both ends of every
//! pair, their drivers and channels, tarpc's client and server. Then:
//!
//! - the same cases on 1 worker (no wake-ups across threads);
//! - an experiment: ft over a bench-only TCP channel that does its reads
//!   and writes in the driver's own task ([`DirectTcp`]), against ft-tokio's
//!   `TcpChannel` (writer and reader tasks between the driver and the
//!   socket) and tarpc;
//! - where ft's time goes ([`diagnose`]): CPU, worker busy time, parks and
//!   context switches per call, the time inside each node's task and
//!   inside the channel's `send`, and the sans-IO cores alone.
//!
//! `FT_RPC_BENCH_PROFILE="ft tcp x16"` runs one case alone (see
//! [`profile`]), to look at it with `perf`.
//!
//! What each transport measures:
//!
//! - `ft mem`: ft-core's `MemNetwork` (a bounded queue per node), so the
//!   cost of the RPC layer itself: core, driver, async handle, framing;
//! - `ft tcp`: ft-tokio's `TcpChannel` (one connection, dialed by the
//!   client and answered on by the server; writes and reads in the
//!   driver's task, a writer task per peer for what the socket does not
//!   take at once);
//! - `ft udp`: ft-tokio's `UdpChannel` (one socket per node);
//! - `tarpc tcp`: tarpc 0.38 with its bincode transport over one TCP
//!   connection (`TCP_NODELAY` on both ends, as ft's channel sets it), each
//!   request served on a task of its own, as tarpc's examples do.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ft_core::{
    BatchError, Channel, ChannelError, DriverConfig, DriverError, FrameCodec, Incarnation,
    MemNetwork, NodeId, Output, Protocol, Recover, RecoveryContext,
};
use ft_rpc::handle::{RpcClient, rpc_node};
use ft_rpc::rpc::{CallOptions, Rpc, RpcConfig, RpcEvent, RpcInput, RpcMessage, Semantics};
use ft_tokio::{NoLog, TcpChannel, TokioClock, UdpChannel};
use futures::StreamExt;
use futures::future::BoxFuture;
use tarpc::context;
use tarpc::server::{BaseChannel, Channel as _};
use tarpc::tokio_serde::formats::Bincode;
use tokio::task::JoinHandle;

const SERVER: NodeId = NodeId(0);
const CLIENT: NodeId = NodeId(1);
const PAYLOAD: usize = 64;
const WORKERS: usize = 2;
const ROUNDS: usize = 5;
const WARM_UP: usize = 2_000;
const IN_FLIGHT: [usize; 3] = [1, 16, 256];

/// Calls measured per round, by calls in flight.
fn calls_per_round(in_flight: usize) -> usize {
    if in_flight == 1 { 10_000 } else { 40_000 }
}

/// The project's performance targets for RPC, checked at the end of a run.
const TCP_TARGET: f64 = 1.1;
const UDP_TARGET: f64 = 1.3;
const MANY_TARGET: f64 = 1.0;
const MEM_TARGET: f64 = 5.0;
/// The sans-IO cores' cost per call, at most, in µs.
const CORES_TARGET_US: f64 = 1.0;

#[tarpc::service]
trait Echo {
    /// Returns its argument.
    async fn echo(body: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: context::Context, body: Vec<u8>) -> Vec<u8> {
        body
    }
}

// ---------------------------------------------------------------------------
// Targets.

/// Calls that returned an error, over the whole run.
static FAILED_CALLS: AtomicU64 = AtomicU64::new(0);

/// One call, ready to be made again and again by a load task.
type CallFn = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A transport under test: how to call, and how to take it down.
struct Target {
    name: &'static str,
    call: CallFn,
    stop: Box<dyn FnOnce() -> BoxFuture<'static, ()>>,
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn payload() -> Bytes {
    Bytes::from((0..PAYLOAD as u8).collect::<Vec<u8>>())
}

fn rpc(node: NodeId) -> Rpc {
    let ctx = RecoveryContext {
        node,
        incarnation: Incarnation::FIRST,
        records: Vec::new(),
        seed: node.0 + 1,
        now: Instant::now(),
    };
    Rpc::recover(&RpcConfig::new(vec![SERVER, CLIENT]), ctx).unwrap()
}

fn options() -> CallOptions {
    CallOptions {
        semantics: Semantics::AtMostOnce,
        deadline: Instant::now() + Duration::from_secs(30),
    }
}

/// An ft RPC node on `channel` with an echo handler, spawned; its task's
/// polls are counted in `polls` if given.
fn ft_node<C: Channel + 'static>(
    node: NodeId,
    channel: C,
    polls: Option<Arc<PollStats>>,
) -> (RpcClient, JoinHandle<Result<(), DriverError>>) {
    // The driver fits its codec to the channel's `max_datagram` itself.
    let config = DriverConfig::default();
    let echo = |_, request: Bytes, _| async move { request };
    let (client, run) = rpc_node(rpc(node), channel, TokioClock, NoLog, config, echo);
    let task = match polls {
        Some(stats) => tokio::spawn(Timed {
            inner: Box::pin(run),
            stats,
        }),
        None => tokio::spawn(run),
    };
    (client, task)
}

/// A server and a client over `server_channel` and `client_channel`, with
/// their tasks timed into `probe` if given.
fn ft_target<C: Channel + 'static>(
    name: &'static str,
    server_channel: C,
    client_channel: C,
    probe: Option<&Probe>,
) -> Target {
    let (server, server_task) =
        ft_node(SERVER, server_channel, probe.map(|p| Arc::clone(&p.server)));
    let (client, client_task) =
        ft_node(CLIENT, client_channel, probe.map(|p| Arc::clone(&p.client)));
    let request = payload();
    let caller = client.clone();
    let call: CallFn = Arc::new(move || {
        let client = caller.clone();
        let request = request.clone();
        Box::pin(async move {
            match client.call(SERVER, request, options()).await {
                Ok(reply) => assert_eq!(reply.len(), PAYLOAD, "an echo"),
                // At-most-once over a lossy transport may fail a call (UDP
                // at 256 in flight loses datagrams to full socket buffers,
                // and a late retransmission can find the outcome
                // forgotten): counted and reported, not fatal.
                Err(_) => {
                    FAILED_CALLS.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    let stop = Box::new(move || -> BoxFuture<'static, ()> {
        Box::pin(async move {
            client.shutdown();
            server.shutdown();
            let _ = client_task.await;
            let _ = server_task.await;
        })
    });
    Target { name, call, stop }
}

/// `channel`, with its sends timed into `probe` if given.
fn probed<C: Channel>(channel: C, probe: Option<&Probe>) -> TimedChannel<C> {
    TimedChannel {
        inner: channel,
        sends: probe.map(|p| Arc::clone(&p.sends)),
    }
}

async fn ft_mem(probe: Option<&Probe>) -> Target {
    let net = MemNetwork::new(4096);
    ft_target(
        "ft mem",
        probed(net.join(SERVER), probe),
        probed(net.join(CLIENT), probe),
        probe,
    )
}

async fn ft_tcp(probe: Option<&Probe>) -> Target {
    let s = TcpChannel::bind(SERVER, loopback(), BTreeMap::new())
        .await
        .expect("bind");
    let c = TcpChannel::bind(CLIENT, loopback(), BTreeMap::new())
        .await
        .expect("bind");
    s.set_peer(CLIENT, c.local_addr());
    c.set_peer(SERVER, s.local_addr());
    ft_target("ft tcp", probed(s, probe), probed(c, probe), probe)
}

async fn ft_udp(probe: Option<&Probe>) -> Target {
    let s = UdpChannel::bind(SERVER, loopback(), BTreeMap::new())
        .await
        .expect("bind");
    let c = UdpChannel::bind(CLIENT, loopback(), BTreeMap::new())
        .await
        .expect("bind");
    s.set_peer(CLIENT, c.local_addr());
    c.set_peer(SERVER, s.local_addr());
    ft_target("ft udp", probed(s, probe), probed(c, probe), probe)
}

async fn tarpc_tcp() -> Target {
    let mut incoming = tarpc::serde_transport::tcp::listen(loopback(), Bincode::default)
        .await
        .expect("listen");
    let addr = incoming.local_addr();
    let server = tokio::spawn(async move {
        while let Some(Ok(transport)) = incoming.next().await {
            transport.get_ref().set_nodelay(true).expect("nodelay");
            let channel = BaseChannel::with_defaults(transport);
            tokio::spawn(
                channel
                    .execute(EchoServer.serve())
                    .for_each(|response| async {
                        tokio::spawn(response);
                    }),
            );
        }
    });
    let transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default)
        .await
        .expect("connect");
    transport.get_ref().set_nodelay(true).expect("nodelay");
    let client = EchoClient::new(tarpc::client::Config::default(), transport).spawn();
    let request = payload().to_vec();
    let call: CallFn = Arc::new(move || {
        let client = client.clone();
        let request = request.clone();
        Box::pin(async move {
            let reply = client.echo(context::current(), request).await;
            assert_eq!(reply.map(|r| r.len()).ok(), Some(PAYLOAD), "an echo");
        })
    });
    let stop = Box::new(move || -> BoxFuture<'static, ()> {
        Box::pin(async move {
            server.abort();
            let _ = server.await;
        })
    });
    Target {
        name: "tarpc tcp",
        call,
        stop,
    }
}

/// The transports of the comparison.
const COMPARED: [&str; 4] = ["ft mem", "ft tcp", "ft udp", "tarpc tcp"];

/// The transport called `name`, its tasks timed into `probe` if given.
async fn target(name: &str, probe: Option<&Probe>) -> Target {
    match name {
        "ft mem" => ft_mem(probe).await,
        "ft tcp" => ft_tcp(probe).await,
        "ft udp" => ft_udp(probe).await,
        _ => tarpc_tcp().await,
    }
}

// ---------------------------------------------------------------------------
// Load and figures.

/// `calls` calls spread over `in_flight` tasks; the wall time and every
/// call's latency.
async fn load(call: &CallFn, in_flight: usize, calls: usize) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|t| {
            let call = Arc::clone(call);
            // The first tasks take one more when the calls do not divide.
            let mine = calls / in_flight + usize::from(t < calls % in_flight);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(mine);
                for _ in 0..mine {
                    let t0 = Instant::now();
                    call().await;
                    latencies.push(t0.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(calls);
    for t in tasks {
        latencies.extend(t.await.expect("load task"));
    }
    (start.elapsed(), latencies)
}

/// One round's figures.
#[derive(Clone, Copy, Debug)]
struct Round {
    calls_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(wall: Duration, mut latencies: Vec<Duration>) -> Round {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Round {
        calls_per_s: latencies.len() as f64 / wall.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The median figures of each case, by transport and calls in flight.
type Figures = BTreeMap<(&'static str, usize), Round>;

/// Runs every case whose name passes `filter` on a runtime of `workers`,
/// prints the table, and returns the medians of each case.
fn table(names: &[&str], workers: usize, rounds: usize, filter: &[String]) -> Figures {
    runtime(workers).block_on(async {
        let mut targets = Vec::new();
        for name in names {
            targets.push(target(name, None).await);
        }
        let cases: Vec<(usize, usize)> = (0..targets.len())
            .flat_map(|t| IN_FLIGHT.map(|k| (t, k)))
            .filter(|&(t, k)| selected(filter, &format!("{} x{k}", targets[t].name)))
            .collect();
        println!(
            "\n{workers} tokio worker(s); {rounds} rounds of {} calls (1 in flight) / {} calls \
             (16 and 256 in flight) after {WARM_UP} warm-up calls; medians over the rounds\n",
            calls_per_round(1),
            calls_per_round(16)
        );
        let started = Instant::now();
        for &(t, k) in &cases {
            load(&targets[t].call, k, WARM_UP).await;
        }
        let mut measured: BTreeMap<(usize, usize), Vec<Round>> = BTreeMap::new();
        let mut failed: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        for _ in 0..rounds {
            for &(t, k) in &cases {
                let before = FAILED_CALLS.load(Ordering::Relaxed);
                let (wall, latencies) = load(&targets[t].call, k, calls_per_round(k)).await;
                *failed.entry((t, k)).or_default() +=
                    FAILED_CALLS.load(Ordering::Relaxed) - before;
                measured
                    .entry((t, k))
                    .or_default()
                    .push(summarize(wall, latencies));
            }
        }
        println!(
            "| transport | in flight | calls/s | p50 µs | p99 µs | calls/s, min–max of rounds |"
        );
        println!("|---|---:|---:|---:|---:|---|");
        let mut figures = BTreeMap::new();
        for &(t, k) in &cases {
            let r = &measured[&(t, k)];
            let calls_per_s = median(r.iter().map(|r| r.calls_per_s).collect());
            let p50 = median(r.iter().map(|r| r.p50).collect());
            let p99 = median(r.iter().map(|r| r.p99).collect());
            let lo = r
                .iter()
                .map(|r| r.calls_per_s)
                .fold(f64::INFINITY, f64::min);
            let hi = r.iter().map(|r| r.calls_per_s).fold(0.0, f64::max);
            println!(
                "| {} | {k} | {calls_per_s:.0} | {} | {} | {lo:.0}–{hi:.0} |",
                targets[t].name,
                micros(p50),
                micros(p99)
            );
            figures.insert(
                (targets[t].name, k),
                Round {
                    calls_per_s,
                    p50,
                    p99,
                },
            );
        }
        println!();
        for (&(t, k), &n) in &failed {
            if n > 0 {
                println!(
                    "{} x{k}: {n} of {} calls failed (counted in calls/s)",
                    targets[t].name,
                    rounds * calls_per_round(k)
                );
            }
        }
        for k in IN_FLIGHT {
            let Some(tarpc) = figures.get(&("tarpc tcp", k)) else {
                continue;
            };
            for name in ["ft tcp", "ft udp", "ft mem"] {
                if let Some(ft) = figures.get(&(name, k)) {
                    println!(
                        "{name} / tarpc tcp, {k:>3} in flight, {workers} worker(s): {:.2}x calls/s; \
                         p99 {} µs vs tarpc's {} µs",
                        ft.calls_per_s / tarpc.calls_per_s,
                        micros(ft.p99),
                        micros(tarpc.p99)
                    );
                }
            }
        }
        println!("({:.1} s)", started.elapsed().as_secs_f64());
        for target in targets {
            (target.stop)().await;
        }
        figures
    })
}

fn selected(filter: &[String], name: &str) -> bool {
    filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()))
}

// ---------------------------------------------------------------------------
// Where the time goes.

/// Time spent inside one task's `poll`, and how often it was polled.
#[derive(Default)]
struct PollStats {
    polls: AtomicU64,
    nanos: AtomicU64,
}

impl PollStats {
    fn add(&self, d: Duration) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn take(&self) -> (u64, u64) {
        (
            self.polls.swap(0, Ordering::Relaxed),
            self.nanos.swap(0, Ordering::Relaxed),
        )
    }
}

/// A future whose polls are timed.
struct Timed<F> {
    inner: Pin<Box<F>>,
    stats: Arc<PollStats>,
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = Instant::now();
        let out = self.inner.as_mut().poll(cx);
        self.stats.add(start.elapsed());
        out
    }
}

/// A channel whose sends are timed (from the first poll of `send` or
/// `send_batch` to its end: for TCP the vectored write, for UDP the
/// `sendto`s).
struct TimedChannel<C> {
    inner: C,
    sends: Option<Arc<PollStats>>,
}

#[async_trait]
impl<C: Channel> Channel for TimedChannel<C> {
    fn local(&self) -> NodeId {
        self.inner.local()
    }

    fn max_datagram(&self) -> usize {
        self.inner.max_datagram()
    }

    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        let start = Instant::now();
        let sent = self.inner.send(to, datagram).await;
        if let Some(s) = &self.sends {
            s.add(start.elapsed());
        }
        sent
    }

    /// Forwarded, not the default loop over `send`: the driver hands each
    /// step's datagrams over in one batch, which TCP writes at once.
    async fn send_batch(&self, batch: &[(NodeId, Bytes)]) -> Result<(), BatchError> {
        let start = Instant::now();
        let sent = self.inner.send_batch(batch).await;
        if let Some(s) = &self.sends {
            s.add(start.elapsed());
        }
        sent
    }

    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        self.inner.recv().await
    }
}

/// What the diagnostics time in an ft target.
#[derive(Default)]
struct Probe {
    client: Arc<PollStats>,
    server: Arc<PollStats>,
    sends: Arc<PollStats>,
}

/// CPU time (ns) and context switches of every thread of this process,
/// from `/proc` (zeros where it cannot be read).
fn process_usage() -> (u64, u64) {
    let mut cpu = 0;
    let mut switches = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let path = task.path();
        if let Ok(s) = std::fs::read_to_string(path.join("schedstat")) {
            cpu += s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(path.join("status")) {
            for line in s.lines() {
                if line.starts_with("voluntary_ctxt_switches")
                    || line.starts_with("nonvoluntary_ctxt_switches")
                {
                    switches += line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    (cpu, switches)
}

/// Busy time (ns) and parks summed over the runtime's workers.
fn worker_usage() -> (u64, u64) {
    let metrics = tokio::runtime::Handle::current().metrics();
    (0..metrics.num_workers()).fold((0, 0), |(busy, parks), w| {
        (
            busy + metrics.worker_total_busy_duration(w).as_nanos() as u64,
            parks + metrics.worker_park_count(w),
        )
    })
}

/// The sans-IO cores alone: a client and a server [`Rpc`] exchanging
/// framed messages by hand, no async at all. Returns ns per call.
fn core_only(calls: u64) -> f64 {
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut frame = |msg: &RpcMessage| -> RpcMessage {
        codec.encode(msg, &mut buf).expect("encode");
        codec.decode(buf.split().freeze()).expect("decode")
    };
    let (mut client, mut server) = (rpc(CLIENT), rpc(SERVER));
    let request = payload();
    let now = Instant::now();
    let start = Instant::now();
    for token in 0..calls {
        client.handle_input(
            now,
            RpcInput::Call {
                token,
                server: SERVER,
                request: request.clone(),
                options: CallOptions {
                    semantics: Semantics::AtMostOnce,
                    deadline: now + Duration::from_secs(30),
                },
            },
        );
        let mut done = false;
        while !done {
            let mut moved = false;
            while let Some(out) = client.poll_output() {
                moved = true;
                match out {
                    Output::Send { msg, .. } => server.handle_message(now, CLIENT, frame(&msg)),
                    Output::Event(RpcEvent::Returned { result, .. }) => {
                        assert_eq!(result.map(|r| r.len()), Ok(PAYLOAD));
                        done = true;
                    }
                    _ => {}
                }
            }
            while let Some(out) = server.poll_output() {
                moved = true;
                match out {
                    Output::Send { msg, .. } => client.handle_message(now, SERVER, frame(&msg)),
                    Output::Event(RpcEvent::Execute { id, request, .. }) => {
                        server.handle_input(
                            now,
                            RpcInput::Complete {
                                exec: id,
                                reply: request,
                                effect: None,
                            },
                        );
                    }
                    _ => {}
                }
            }
            assert!(moved || done, "the cores stalled");
        }
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// Runs each ft case once more, instrumented, and tarpc for comparison:
/// CPU time and context switches per call for the whole process, and for
/// ft the time inside each node's task (driver + dispatcher + handler) and
/// inside the channel's `send`, with how often each node's task was polled
/// (woken) per call.
fn diagnose(workers: usize, filter: &[String]) {
    println!(
        "\nwhere the time goes ({workers} worker(s), instrumented: these runs are not the \
         comparison; per call, averaged over {} calls):\n",
        calls_per_round(16)
    );
    println!(
        "| case | calls/s | process CPU µs | workers busy µs | worker parks | ctx switches | \
         client task µs (polls) | server task µs (polls) | channel send µs (batches) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    runtime(workers).block_on(async {
        for name in COMPARED {
            for k in IN_FLIGHT {
                let case = format!("{name} x{k}");
                if !selected(filter, &case) {
                    continue;
                }
                let probe = Probe::default();
                let target = target(name, Some(&probe)).await;
                load(&target.call, k, WARM_UP).await;
                let _ = (probe.client.take(), probe.server.take(), probe.sends.take());
                let calls = calls_per_round(16);
                let ((cpu0, sw0), (busy0, parks0)) = (process_usage(), worker_usage());
                let (wall, _) = load(&target.call, k, calls).await;
                let ((cpu1, sw1), (busy1, parks1)) = (process_usage(), worker_usage());
                let per = |n: u64| n as f64 / calls as f64;
                let task = |(polls, nanos): (u64, u64)| {
                    if polls == 0 {
                        "–".to_string()
                    } else {
                        format!("{:.2} ({:.1})", per(nanos) / 1e3, per(polls))
                    }
                };
                println!(
                    "| {case} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                    calls as f64 / wall.as_secs_f64(),
                    per(cpu1.saturating_sub(cpu0)) / 1e3,
                    per(busy1.saturating_sub(busy0)) / 1e3,
                    per(parks1.saturating_sub(parks0)),
                    per(sw1.saturating_sub(sw0)),
                    task(probe.client.take()),
                    task(probe.server.take()),
                    task(probe.sends.take()),
                );
                (target.stop)().await;
            }
        }
    });
}

/// Runs one case alone for `FT_RPC_BENCH_PROFILE_CALLS` calls (default
/// 200,000) after a warm-up, on `FT_RPC_BENCH_PROFILE_WORKERS` tokio
/// workers (default 2), for `perf` and friends:
/// `FT_RPC_BENCH_PROFILE="ft tcp x16" perf stat -e … target/release/deps/rpc-…`.
fn profile(case: &str) {
    let (name, k) = case
        .rsplit_once(" x")
        .and_then(|(n, k)| Some((n, k.parse::<usize>().ok()?)))
        .expect("FT_RPC_BENCH_PROFILE: a case such as \"ft tcp x16\"");
    let calls = std::env::var("FT_RPC_BENCH_PROFILE_CALLS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200_000);
    // `FT_RPC_BENCH_PROFILE_WORKERS=1` profiles without cross-thread
    // wake-ups.
    let workers = std::env::var("FT_RPC_BENCH_PROFILE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(WORKERS);
    runtime(workers).block_on(async {
        let target = target(name, None).await;
        load(&target.call, k, WARM_UP).await;
        let (wall, latencies) = load(&target.call, k, calls).await;
        let r = summarize(wall, latencies);
        println!(
            "{case}: {:.0} calls/s, p50 {} µs, p99 {} µs",
            r.calls_per_s,
            micros(r.p50),
            micros(r.p99)
        );
        (target.stop)().await;
    });
}

/// One line per performance target: `met` or `MISSED`, with the measured
/// ratio, from the headline table's medians and the cores' cost per call.
fn verdicts(figures: &Figures, cores_us: f64) {
    println!(
        "\n## Verdicts (the performance targets; {WORKERS} workers, medians of the headline table)\n"
    );
    let line = |what: String, measured: String, met: bool| {
        let verdict = if met { "met" } else { "MISSED" };
        println!("{verdict:>6}: {what}: {measured}");
    };
    let ratio = |name: &str, k: usize| -> Option<(f64, f64, f64)> {
        let ft = figures.get(&(name, k))?;
        let tarpc = figures.get(&("tarpc tcp", k))?;
        Some((
            ft.calls_per_s / tarpc.calls_per_s,
            ft.p99.as_secs_f64() * 1e6,
            tarpc.p99.as_secs_f64() * 1e6,
        ))
    };
    let throughput = |name: &str, k: usize, target: f64| {
        if let Some((r, _, _)) = ratio(name, k) {
            line(
                format!("{name} ≥ {target:.1}x tarpc's calls/s at {k} in flight"),
                format!("{r:.2}x"),
                r >= target,
            );
        }
    };
    throughput("ft tcp", 1, TCP_TARGET);
    throughput("ft tcp", 16, TCP_TARGET);
    throughput("ft udp", 1, UDP_TARGET);
    throughput("ft udp", 16, UDP_TARGET);
    throughput("ft tcp", 256, MANY_TARGET);
    throughput("ft udp", 256, MANY_TARGET);
    throughput("ft mem", 1, MEM_TARGET);
    for k in [1, 16] {
        if let Some((_, ft, tarpc)) = ratio("ft tcp", k) {
            line(
                format!("ft tcp p99 ≤ tarpc's p99 at {k} in flight"),
                format!("{ft:.1} µs vs {tarpc:.1} µs ({:.2}x)", ft / tarpc),
                ft <= tarpc,
            );
        }
    }
    line(
        format!("the sans-IO cores + framing < {CORES_TARGET_US:.1} µs per call"),
        format!("{cores_us:.2} µs"),
        cores_us < CORES_TARGET_US,
    );
}

fn main() {
    if let Ok(case) = std::env::var("FT_RPC_BENCH_PROFILE") {
        return profile(&case);
    }
    // `cargo bench` passes `--bench`; any other argument filters the cases.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let started = Instant::now();
    println!("rpc bench: {PAYLOAD}-byte echo, at-most-once (ft)");
    println!("\n## The comparison: {WORKERS} workers");
    let figures = table(&COMPARED, WORKERS, ROUNDS, &filter);
    println!("\n## The same on 1 worker (no wake-ups across threads)");
    table(&COMPARED, 1, 3, &filter);
    println!("\n## Where ft's time goes");
    let cores_us = core_only(200_000) / 1e3;
    println!(
        "\nsans-IO cores + framing alone (client and server Rpc, no async, no I/O): \
         {cores_us:.2} µs/call (target: under {CORES_TARGET_US:.1} µs)"
    );
    diagnose(WORKERS, &filter);
    diagnose(1, &filter);
    verdicts(&figures, cores_us);
    println!("\n(total {:.1} s)", started.elapsed().as_secs_f64());
}

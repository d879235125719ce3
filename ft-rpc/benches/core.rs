//! The cost of one call through the sans-IO RPC cores, with nothing else:
//! a client [`Rpc`] and a server [`Rpc`] in one thread, every message
//! framed with `FrameCodec::default()` (encoded and decoded) between them,
//! no async, no I/O. It is `core_only` of ft-tokio's `rpc` bench, alone.
//!
//! ```text
//! cargo bench -p ft-rpc --bench core
//! ```
//!
//! Each call is a 64-byte at-most-once echo: the client's `Call` input,
//! its outputs drained, each `Send` framed and handed to the server, whose
//! `Execute` is answered with `Complete`, until the client returns the
//! reply. The baseline in the same run frames the same messages (the
//! `Call` and the `Reply` of one call) without the cores, so the cores'
//! own share is the difference. Each figure is the median of several
//! rounds, taking turns; allocations are counted by a counting global
//! allocator over one whole round. Besides the wall clock, each round's
//! CPU time is shown (where Linux tells it): on a machine shared with
//! other work it is the steadier figure.
//!
//! `FT_RPC_CORE_PROFILE=N` runs the cores alone for `N` calls, for
//! `perf record` and friends.
//!
//! Without `--bench` (as `cargo test --benches` runs it) it does a tiny
//! smoke run whose numbers mean nothing.

use std::alloc::System;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ft_core::{FrameCodec, Incarnation, NodeId, Output, Protocol, Recover, RecoveryContext};
use ft_rpc::rpc::{CallOptions, Rpc, RpcConfig, RpcEvent, RpcInput, RpcMessage, Semantics};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SERVER: NodeId = NodeId(0);
const CLIENT: NodeId = NodeId(1);
const PAYLOAD: usize = 64;

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

/// Frames `msg` (encode, then decode) as the bench's network does.
fn frame(codec: &FrameCodec, buf: &mut BytesMut, msg: &RpcMessage) -> RpcMessage {
    codec.encode(msg, buf).expect("encode");
    codec.decode(buf.split().freeze()).expect("decode")
}

/// A pair of cores, bound (the first call's `Locate` done), as the
/// measured loop finds them after its first call.
struct Pair {
    client: Rpc,
    server: Rpc,
    token: u64,
    /// Every message of the last call, in the order they were sent.
    sent: Vec<RpcMessage>,
    record: bool,
}

impl Pair {
    fn new() -> Pair {
        let mut pair = Pair {
            client: rpc(CLIENT),
            server: rpc(SERVER),
            token: 0,
            sent: Vec::new(),
            record: false,
        };
        pair.call(&FrameCodec::default(), &mut BytesMut::new(), &payload());
        pair
    }

    /// One call, exactly as ft-tokio's `core_only` makes it.
    fn call(&mut self, codec: &FrameCodec, buf: &mut BytesMut, request: &Bytes) {
        let now = Instant::now();
        let (client, server) = (&mut self.client, &mut self.server);
        client.handle_input(
            now,
            RpcInput::Call {
                token: self.token,
                server: SERVER,
                request: request.clone(),
                options: CallOptions {
                    semantics: Semantics::AtMostOnce,
                    deadline: now + Duration::from_secs(30),
                },
            },
        );
        self.token += 1;
        let mut done = false;
        while !done {
            let mut moved = false;
            while let Some(out) = client.poll_output() {
                moved = true;
                match out {
                    Output::Send { msg, .. } => {
                        if self.record {
                            self.sent.push(msg.clone());
                        }
                        server.handle_message(now, CLIENT, frame(codec, buf, &msg));
                    }
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
                    Output::Send { msg, .. } => {
                        if self.record {
                            self.sent.push(msg.clone());
                        }
                        client.handle_message(now, SERVER, frame(codec, buf, &msg));
                    }
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
}

/// The time this thread has run on a CPU, in nanoseconds, where Linux
/// tells it (`/proc/thread-self/schedstat`): unlike the wall clock, it
/// does not count the time the thread waited for a CPU that other work on
/// the machine held.
fn cpu_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// What one round measured.
#[derive(Clone, Copy)]
struct Round {
    ns_per_call: f64,
    cpu_ns_per_call: Option<f64>,
    allocs_per_call: f64,
    bytes_per_call: f64,
}

fn measure(calls: u64, mut one: impl FnMut()) -> Round {
    let region = Region::new(GLOBAL);
    let cpu = cpu_nanos();
    let start = Instant::now();
    for _ in 0..calls {
        one();
    }
    let elapsed = start.elapsed();
    let cpu = cpu.zip(cpu_nanos()).map(|(a, b)| b.saturating_sub(a));
    let stats = region.change();
    let per = |n: usize| n as f64 / calls as f64;
    Round {
        ns_per_call: elapsed.as_nanos() as f64 / calls as f64,
        cpu_ns_per_call: cpu.map(|c| c as f64 / calls as f64),
        allocs_per_call: per(stats.allocations + stats.reallocations),
        bytes_per_call: per(stats.bytes_allocated),
    }
}

/// Calls through the cores, framing every message.
fn cores(pair: &mut Pair, calls: u64) -> Round {
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let request = payload();
    measure(calls, || pair.call(&codec, &mut buf, &request))
}

/// The framing alone: the messages of one call, framed as often as the
/// calls would frame them, with the request cloned as a call does.
fn framing(messages: &[RpcMessage], calls: u64) -> Round {
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let request = payload();
    measure(calls, || {
        let r = std::hint::black_box(request.clone());
        for msg in messages {
            std::hint::black_box(frame(&codec, &mut buf, msg));
        }
        drop(r);
    })
}

/// A CPU time per call, or a dash where the system does not tell it.
fn cpu(ns: Option<f64>) -> String {
    ns.map_or_else(|| "–".to_string(), |ns| format!("{ns:.0}"))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, calls) = if full { (9, 100_000) } else { (1, 1_000) };
    let mut pair = Pair::new();
    if let Some(n) = std::env::var("FT_RPC_CORE_PROFILE")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        // The cores alone for `n` calls, for `perf record`.
        let r = cores(&mut pair, n);
        println!(
            "{:.0} ns/call ({} CPU ns/call), {:.2} allocations/call",
            r.ns_per_call,
            cpu(r.cpu_ns_per_call),
            r.allocs_per_call
        );
        return;
    }
    pair.record = true;
    pair.call(&FrameCodec::default(), &mut BytesMut::new(), &payload());
    pair.record = false;
    let messages = std::mem::take(&mut pair.sent);
    assert_eq!(messages.len(), 2, "a bound call is one Call and one Reply");
    // Warm-up.
    cores(&mut pair, calls / 10);
    framing(&messages, calls / 10);
    let (mut core_rounds, mut frame_rounds) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        core_rounds.push(cores(&mut pair, calls));
        frame_rounds.push(framing(&messages, calls));
    }
    let summary = |rs: &[Round]| {
        let cpu: Option<Vec<f64>> = rs.iter().map(|r| r.cpu_ns_per_call).collect();
        (
            median(rs.iter().map(|r| r.ns_per_call).collect()),
            cpu.map(median),
            median(rs.iter().map(|r| r.allocs_per_call).collect()),
            median(rs.iter().map(|r| r.bytes_per_call).collect()),
        )
    };
    let (core_ns, core_cpu, core_allocs, core_bytes) = summary(&core_rounds);
    let (frame_ns, frame_cpu, frame_allocs, frame_bytes) = summary(&frame_rounds);
    println!(
        "ft-rpc core bench: {PAYLOAD}-byte at-most-once echo, median of {rounds} rounds \
         of {calls} calls{}",
        if full {
            ""
        } else {
            " (smoke run: the numbers mean nothing)"
        }
    );
    println!("| case | ns/call | CPU ns/call | allocations/call | bytes allocated/call |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| client + server cores, framed | {core_ns:.0} | {} | {core_allocs:.2} | \
         {core_bytes:.0} |",
        cpu(core_cpu)
    );
    println!(
        "| framing alone (the same {} messages) | {frame_ns:.0} | {} | {frame_allocs:.2} | \
         {frame_bytes:.0} |",
        messages.len(),
        cpu(frame_cpu)
    );
    println!(
        "| the cores' own share | {:.0} | {} | {:.2} | {:.0} |",
        core_ns - frame_ns,
        cpu(core_cpu.zip(frame_cpu).map(|(c, f)| c - f)),
        core_allocs - frame_allocs,
        core_bytes - frame_bytes
    );
    println!(
        "\ncores + framing / framing alone: {:.2}x; target: under 1000 ns/call",
        core_ns / frame_ns
    );
}

//! ft-multicast on a real network: one sender and four receivers of an
//! ACK-based group, each in its own process, over ft-tokio's UDP channel
//! on loopback, 1 KiB messages, against a raw UDP loop measured in the
//! same run.
//!
//! ```text
//! cargo bench -p ft-multicast --bench net     # about a minute
//! ```
//!
//! - **Configurations**: IP multicast (one datagram to a group on
//!   loopback per message) and unicast fan-out (`send_to_many` to the four
//!   receivers: one `sendmmsg` of four datagrams), each with no loss and
//!   with 1% of the datagrams every process receives dropped on purpose
//!   (counted, and repaired by the protocol).
//! - **Throughput**: the sender sends as fast as its history ring lets it
//!   (a send refused for a full ring waits for `Ready`) for one second;
//!   each receiver's rate is its messages delivered in order over the time
//!   from the first message's send to its delivery of the last. MB/s are
//!   of payload (10⁶ bytes).
//! - **Baseline**: the raw loop, one process writing 1 KiB datagrams with
//!   `send_to` as fast as it can for a second, another reading them with
//!   `recv_from`: what loopback carries from one process to another,
//!   without a protocol. Each configuration's ratio is to its rate.
//! - **Latency**: the sender paced at 2 000 messages/s; send (the moment
//!   the application hands the message to the driver) to delivery (the
//!   moment a receiver's application gets it), over the host's realtime
//!   clock, which all processes share (see `tests/net/mod.rs`).
//! - **Rounds**: the configurations take turns, round after round (5 for
//!   throughput, 3 for latency), so a noisy neighbour slows all alike;
//!   throughput figures are medians of the rounds, latency percentiles are
//!   over every sample of every round.
//!
//! Where it can (root, `unshare`, `ip`), the whole bench runs in a private
//! network namespace whose loopback carries multicast: its loopback is its
//! only interface, so no datagram can leave the host, and the kernel's
//! receive-buffer drops it reports are this bench's alone. Elsewhere it
//! runs on the host's loopback, multicast with a TTL of 0, if multicast
//! works there at all (it says why not when it does not).
//!
//! `cargo test --benches` runs nothing (it does not pass `--bench`).
//! `FT_MCAST_NET_ROUNDS` and `FT_MCAST_NET_HISTORY` change the rounds and
//! the history ring.

#[path = "../tests/net/mod.rs"]
mod net;

use std::process::Command;
use std::time::Duration;

use net::{Fanout, Outcome, Setup};

/// How long the sender floods in a throughput run (and the raw loop runs).
const FLOOD: Duration = Duration::from_secs(1);
/// The paced rate of the latency runs, and how many messages each sends.
const RATE: u64 = 2_000;
const PACED_MESSAGES: u64 = 3_000;
/// The history ring: with acknowledgements every 10 ms (the default
/// `ack_delay`), a sender gets at most a ring per 10 ms through, so the
/// default ring of 64 would cap the rate at 6 400 messages/s.
const HISTORY: usize = 1024;
/// The receivers' acknowledgement delay, µs: ft-multicast's default.
const ACK_DELAY_US: u64 = 10_000;
const ROUNDS: usize = 5;
const LATENCY_ROUNDS: usize = 3;
/// Injected loss, per million datagrams received.
const LOSSES: [u64; 2] = [0, 10_000];

fn this_binary() -> Command {
    Command::new(std::env::current_exe().unwrap())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One configuration of the group.
#[derive(Clone, Copy)]
struct Case {
    fanout: Fanout,
    loss_ppm: u64,
}

impl Case {
    fn name(self) -> String {
        let fanout = match self.fanout {
            Fanout::Multicast => "IP multicast",
            Fanout::Unicast => "unicast fan-out",
        };
        format!("{fanout}, {}% loss", self.loss_ppm as f64 / 10_000.0)
    }

    fn setup(self, seed: u64, history: usize, ack_delay: Duration, paced: bool) -> Setup {
        Setup {
            fanout: self.fanout,
            loss_ppm: self.loss_ppm,
            count: if paced { PACED_MESSAGES } else { u64::MAX },
            duration: (!paced).then_some(FLOOD),
            rate: paced.then_some(RATE),
            history,
            ack_delay,
            seed,
            timeout: Duration::from_secs(60),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_u64(v: &[u64]) -> f64 {
    median(v.iter().map(|&x| x as f64).collect())
}

/// The `p` quantile (0..=1) of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn kilo(rate: f64) -> String {
    format!("{:.1}k", rate / 1e3)
}

fn mb(rate: f64) -> f64 {
    rate * net::PAYLOAD as f64 / 1e6
}

/// What the rounds of one configuration gave.
#[derive(Default)]
struct Tally {
    /// Per round, each receiver's rate.
    rates: Vec<Vec<f64>>,
    injected: Vec<u64>,
    repairs: Vec<u64>,
    refused: Vec<u64>,
    kernel: Vec<u64>,
    sent: Vec<u64>,
    /// Per receiver, every latency sample.
    latencies: Vec<Vec<u64>>,
    failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        self.rates
            .push(outcome.receivers.iter().map(net::Report::rate).collect());
        self.injected.push(outcome.injected());
        self.repairs.push(outcome.sender.get("repairs"));
        self.refused.push(outcome.sender.get("refused"));
        self.kernel.push(outcome.kernel_drops.unwrap_or(0));
        self.sent.push(outcome.sender.get("sent"));
        self.latencies.resize(outcome.receivers.len(), Vec::new());
        for (all, r) in self.latencies.iter_mut().zip(&outcome.receivers) {
            all.extend_from_slice(&r.latencies_us);
        }
    }

    /// Each receiver's median rate over the rounds.
    fn per_receiver(&self) -> Vec<f64> {
        let n = self.rates.iter().map(Vec::len).max().unwrap_or(0);
        (0..n)
            .map(|i| {
                median(
                    self.rates
                        .iter()
                        .filter_map(|r| r.get(i).copied())
                        .collect(),
                )
            })
            .collect()
    }
}

fn main() {
    if net::child_main() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "net: a benchmark, run with `cargo bench -p ft-multicast --bench net`; nothing measured in test mode"
        );
        return;
    }
    if net::netns_inside() {
        println!(
            "network: a private network namespace (its loopback only, multicast routed to it)"
        );
    } else {
        match net::rerun_in_netns(&args) {
            Ok(status) => std::process::exit(status.code().unwrap_or(1)),
            Err(why) => println!("network: the host's loopback ({why})"),
        }
    }
    let rounds = env_or("FT_MCAST_NET_ROUNDS", ROUNDS).max(1);
    let latency_rounds = env_or("FT_MCAST_NET_ROUNDS", LATENCY_ROUNDS).clamp(1, LATENCY_ROUNDS);
    let history = env_or("FT_MCAST_NET_HISTORY", HISTORY).max(1);
    let ack_delay = Duration::from_micros(env_or("FT_MCAST_NET_ACK_US", ACK_DELAY_US));
    let multicast = net::probe_multicast();
    match &multicast {
        Ok(()) => println!("IP multicast on loopback: works"),
        Err(why) => println!("IP multicast on loopback: not available: {why}"),
    }
    let mut cases = Vec::new();
    for fanout in [Fanout::Multicast, Fanout::Unicast] {
        if fanout == Fanout::Multicast && multicast.is_err() {
            continue;
        }
        for loss_ppm in LOSSES {
            cases.push(Case { fanout, loss_ppm });
        }
    }
    println!(
        "1 sender and {} receivers, each its own process; {} B payloads; ACK-based group, \
         history ring {history}, ack_delay {ack_delay:?}; {rounds} rounds of {} s floods, \
         {latency_rounds} of {PACED_MESSAGES} messages at {RATE}/s",
        net::RECEIVERS,
        net::PAYLOAD,
        FLOOD.as_secs_f64()
    );

    // Throughput, the configurations taking turns with the raw loop.
    let mut raw = Tally::default();
    let mut raw_sent = Vec::new();
    let mut tallies: Vec<Tally> = cases.iter().map(|_| Tally::default()).collect();
    for round in 0..rounds {
        eprint!("throughput round {}/{rounds} ...", round + 1);
        match net::run_raw(&this_binary, FLOOD) {
            Ok(o) => {
                raw_sent.push(o.sender.get("sent"));
                raw.add(o);
            }
            Err(e) => raw.failures.push(e),
        }
        for (case, tally) in cases.iter().zip(&mut tallies) {
            match net::run(
                &this_binary,
                &case.setup(round as u64, history, ack_delay, false),
            ) {
                Ok(o) => tally.add(o),
                Err(e) => tally.failures.push(e),
            }
        }
        eprintln!(" done");
    }
    let raw_rate = median(raw.rates.iter().flatten().copied().collect());
    println!();
    println!("Throughput (medians of {rounds} rounds)");
    println!(
        "{:<26} {:>30} {:>8} {:>7} {:>10} {:>9} {:>8} {:>9}",
        "configuration",
        "msg/s per receiver (r1 r2 r3 r4)",
        "MB/s",
        "x raw",
        "injected",
        "repairs",
        "kernel",
        "refused"
    );
    println!(
        "{:<26} {:>30} {:>8.1} {:>7.2} {:>10} {:>9} {:>8.0} {:>9}",
        "raw UDP loop (1 receiver)",
        kilo(raw_rate),
        mb(raw_rate),
        1.0,
        "-",
        "-",
        median_u64(&raw.kernel),
        "-"
    );
    for (case, tally) in cases.iter().zip(&tallies) {
        let per = tally.per_receiver();
        let mean = per.iter().sum::<f64>() / per.len().max(1) as f64;
        let each: Vec<String> = per.iter().map(|&r| kilo(r)).collect();
        println!(
            "{:<26} {:>30} {:>8.1} {:>7.2} {:>10.0} {:>9.0} {:>8.0} {:>9.0}",
            case.name(),
            each.join(" "),
            mb(mean),
            mean / raw_rate,
            median_u64(&tally.injected),
            median_u64(&tally.repairs),
            median_u64(&tally.kernel),
            median_u64(&tally.refused),
        );
    }
    println!(
        "(raw loop: {} datagrams sent a round, median; injected: datagrams dropped on purpose \
         on receive, all 5 processes; repairs: data the sender sent again; kernel: datagrams \
         the kernel dropped for a full receive buffer; refused: sends refused for a full ring)",
        median_u64(&raw_sent)
    );

    // Latency at a moderate rate.
    let mut paced: Vec<Tally> = cases.iter().map(|_| Tally::default()).collect();
    for round in 0..latency_rounds {
        eprint!("latency round {}/{latency_rounds} ...", round + 1);
        for (case, tally) in cases.iter().zip(&mut paced) {
            match net::run(
                &this_binary,
                &case.setup(100 + round as u64, history, ack_delay, true),
            ) {
                Ok(o) => tally.add(o),
                Err(e) => tally.failures.push(e),
            }
        }
        eprintln!(" done");
    }
    println!();
    println!(
        "Latency, send to delivery, at {RATE} messages/s (µs, every sample of {latency_rounds} rounds)"
    );
    println!(
        "{:<26} {:>7} {:>7} {:>7} {:>8} {:>28} {:>9} {:>8}",
        "configuration", "p50", "p90", "p99", "max", "p99 by receiver", "injected", "repairs"
    );
    for (case, tally) in cases.iter().zip(&paced) {
        let mut all: Vec<u64> = tally.latencies.iter().flatten().copied().collect();
        all.sort_unstable();
        let each: Vec<String> = tally
            .latencies
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.sort_unstable();
                percentile(&l, 0.99).to_string()
            })
            .collect();
        println!(
            "{:<26} {:>7} {:>7} {:>7} {:>8} {:>28} {:>9} {:>8}",
            case.name(),
            percentile(&all, 0.50),
            percentile(&all, 0.90),
            percentile(&all, 0.99),
            all.last().copied().unwrap_or(0),
            each.join(" "),
            tally.injected.iter().sum::<u64>(),
            tally.repairs.iter().sum::<u64>(),
        );
    }

    // Every run checked every delivery (the receivers fail a run on the
    // first message out of order, repeated, missing or altered).
    let runs: usize = tallies.iter().chain(&paced).map(|t| t.rates.len()).sum();
    let failures: Vec<&String> = std::iter::once(&raw)
        .chain(&tallies)
        .chain(&paced)
        .flat_map(|t| &t.failures)
        .collect();
    println!();
    for (case, tally) in cases.iter().zip(&tallies) {
        let mean = tally.per_receiver().iter().sum::<f64>() / net::RECEIVERS as f64;
        println!(
            "ratio to the raw loop: {:<26} {:.2} ({} of {} msg/s)",
            case.name(),
            mean / raw_rate,
            kilo(mean),
            kilo(raw_rate)
        );
    }
    if failures.is_empty() {
        println!(
            "verdict: all {runs} group runs delivered every message in order, intact, at all {} receivers",
            net::RECEIVERS
        );
    } else {
        for f in &failures {
            println!("FAILED run: {f}");
        }
        println!("verdict: {} runs FAILED", failures.len());
        std::process::exit(1);
    }
}

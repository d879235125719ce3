//! One sender and four receivers of an ACK-based [`Multicast`] group, each
//! in its own OS process, over ft-tokio's UDP channel on loopback: the
//! real-network path that `tests/udp.rs` checks and `benches/net.rs`
//! measures (which includes this file).
//!
//! # Processes
//!
//! The coordinator ([`run`], [`run_raw`]) starts each role as a copy of the
//! running executable, the role named in the environment variable [`ROLE`]
//! (where [`child_main`] picks it up), and talks to it over its stdin and
//! stdout, one line each way, the child's lines prefixed `@ft ` (a test
//! harness prints lines of its own):
//!
//! | who | says | when |
//! |---|---|---|
//! | child | `addr <ip:port>` | its socket is bound (port 0: the system chose) |
//! | coordinator | `book <id>=<ip:port> ...` | every child is bound |
//! | child | `ready` | its driver runs |
//! | coordinator | `go` (to the sender) | every child is ready |
//! | receiver | `done` | it delivered the sender's last message |
//! | coordinator | closes stdin | every receiver is done |
//! | child | `result <key>=<value> ...`, then exits | stdin closed |
//! | child | `error <why>`, then exits with 1 | anything wrong |
//!
//! So the receivers run before the first message is sent, and the sender
//! stays up (repairing) until every receiver has everything.
//! `FT_MCAST_NET_DEBUG=1` echoes every child's lines on stderr.
//!
//! # Loss
//!
//! Each process (the sender too, for acknowledgements and NACKs) receives
//! through [`Lossy`], which drops a seeded random share of the datagrams
//! its UDP channel hands it, and counts them: loss injected on receive.
//!
//! # Time stamps
//!
//! Each payload carries the time it was handed to the sender's driver, in
//! microseconds since the UNIX epoch from `SystemTime` (on Linux
//! `CLOCK_REALTIME`), and a receiver subtracts it from its own reading of
//! the same clock. `Instant` (`CLOCK_MONOTONIC`) would be steadier, but it
//! has no value that means anything in another process, while every
//! process on one host reads the one realtime clock. A step of that clock
//! during a run (an NTP correction; the kernel normally slews instead)
//! would skew that run's figures.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::rng::{Rng, mix};
use ft_core::{
    BatchError, Channel, ChannelError, DriverConfig, Incarnation, NodeId, Recover, RecoveryContext,
};
use ft_multicast::{GroupConfig, GroupId, McastConfig, McastEvent, McastInput, Multicast, Refusal};
use ft_tokio::{MulticastConfig, UdpChannel, spawn_volatile};

/// The environment variable that makes a process one role of a run.
pub(crate) const ROLE: &str = "FT_MCAST_NET_ROLE";

/// Set in the environment of a coordinator running inside its private
/// network namespace.
pub(crate) const IN_NETNS: &str = "FT_MCAST_NET_IN_NETNS";

/// Bytes of every message's payload.
pub(crate) const PAYLOAD: usize = 1024;

/// The receivers of a run.
pub(crate) const RECEIVERS: u64 = 4;

/// The sender's node id; the receivers are 1 ..= [`RECEIVERS`].
pub(crate) const SENDER: NodeId = NodeId(0);

/// The group every process is a member of.
const GROUP: GroupId = GroupId(1);

/// Turns a private network namespace's loopback into one that carries
/// multicast: up, multicast on, and the multicast range routed to it.
pub(crate) const NETNS_SETUP: &str =
    "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo";

/// How the sender reaches the four receivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fanout {
    /// One IP multicast datagram to a group on loopback for each message.
    Multicast,
    /// One unicast datagram to each receiver (`send_to_many` with four
    /// destinations: one `sendmmsg`).
    Unicast,
}

impl Fanout {
    fn name(self) -> &'static str {
        match self {
            Fanout::Multicast => "multicast",
            Fanout::Unicast => "unicast",
        }
    }
}

/// One run of the group.
#[derive(Clone, Debug)]
pub(crate) struct Setup {
    /// How the sender reaches the receivers.
    pub(crate) fanout: Fanout,
    /// Datagrams each process drops on receive, per million.
    pub(crate) loss_ppm: u64,
    /// The sender sends at most this many messages ...
    pub(crate) count: u64,
    /// ... and stops earlier once this long has passed since its first.
    pub(crate) duration: Option<Duration>,
    /// Messages per second; `None`: as fast as the history ring lets it.
    pub(crate) rate: Option<u64>,
    /// The group's history ring.
    pub(crate) history: usize,
    /// How long a receiver waits before acknowledging
    /// ([`McastConfig::ack_delay`]).
    pub(crate) ack_delay: Duration,
    /// Seeds the cores and the injected loss.
    pub(crate) seed: u64,
    /// The whole run is abandoned (every process killed) after this long.
    pub(crate) timeout: Duration,
}

/// What one process reported: counters, and latency samples.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    /// Counters by name (see [`sender`] and [`receiver`] for which).
    pub(crate) values: BTreeMap<String, u64>,
    /// Send → deliver times of every message, µs (paced runs only).
    pub(crate) latencies_us: Vec<u64>,
}

impl Report {
    /// The counter `key` (0 if it was not reported).
    pub(crate) fn get(&self, key: &str) -> u64 {
        self.values.get(key).copied().unwrap_or(0)
    }

    /// Messages per second delivered: from the first message's send stamp
    /// to this receiver's delivery of the last.
    pub(crate) fn rate(&self) -> f64 {
        let span = self.get("last_at").saturating_sub(self.get("first_stamp"));
        self.get("delivered") as f64 / (span.max(1) as f64 / 1e6)
    }

    fn parse(line: &str) -> Result<Report, String> {
        let mut report = Report::default();
        for field in line.split_whitespace() {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("not key=value: {field}"))?;
            if key == "lat" {
                for v in value.split(',').filter(|v| !v.is_empty()) {
                    report
                        .latencies_us
                        .push(v.parse().map_err(|e| format!("{key}: {e}"))?);
                }
            } else {
                let v = value.parse().map_err(|e| format!("{key}: {e}"))?;
                report.values.insert(key.to_string(), v);
            }
        }
        Ok(report)
    }

    fn line(&self) -> String {
        let mut s = String::from("result");
        for (k, v) in &self.values {
            s.push_str(&format!(" {k}={v}"));
        }
        if !self.latencies_us.is_empty() {
            s.push_str(" lat=");
            let lat: Vec<String> = self.latencies_us.iter().map(u64::to_string).collect();
            s.push_str(&lat.join(","));
        }
        s
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// The sender's report (`sent`: its last message's number).
    pub(crate) sender: Report,
    /// Each receiver's, in node order.
    pub(crate) receivers: Vec<Report>,
    /// Datagrams the kernel dropped for full receive buffers during the
    /// run (`RcvbufErrors` of `/proc/net/snmp`: this network namespace's,
    /// so every process's on this host when run outside a private one).
    pub(crate) kernel_drops: Option<u64>,
}

impl Outcome {
    /// Datagrams dropped on purpose, all processes.
    pub(crate) fn injected(&self) -> u64 {
        self.sender.get("dropped") + self.receivers.iter().map(|r| r.get("dropped")).sum::<u64>()
    }
}

// ---------------------------------------------------------------------------
// Loss on receive.

/// A [`Channel`] that drops a seeded random share of the datagrams it
/// receives, counting them; sends go straight through (batched sends
/// included, so the transport's own batching is what runs).
pub(crate) struct Lossy<C> {
    inner: C,
    per_million: u64,
    rng: Mutex<Rng>,
    dropped: AtomicU64,
    passed: AtomicU64,
}

impl<C> Lossy<C> {
    /// `inner`, dropping `per_million` of a million received datagrams,
    /// chosen by a generator seeded with `seed`.
    pub(crate) fn new(inner: C, per_million: u64, seed: u64) -> Self {
        Lossy {
            inner,
            per_million,
            rng: Mutex::new(Rng::new(seed)),
            dropped: AtomicU64::new(0),
            passed: AtomicU64::new(0),
        }
    }

    /// Datagrams dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Datagrams handed on so far.
    pub(crate) fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl<C: Channel> Channel for Lossy<C> {
    fn local(&self) -> NodeId {
        self.inner.local()
    }

    fn max_datagram(&self) -> usize {
        self.inner.max_datagram()
    }

    async fn send(&self, to: NodeId, datagram: Bytes) -> Result<(), ChannelError> {
        self.inner.send(to, datagram).await
    }

    async fn send_batch(&self, batch: &[(NodeId, Bytes)]) -> Result<(), BatchError> {
        self.inner.send_batch(batch).await
    }

    async fn send_to_many(&self, to: &[NodeId], datagram: Bytes) -> Result<(), BatchError> {
        self.inner.send_to_many(to, datagram).await
    }

    /// Cancel safe as the inner `recv` is: nothing awaits after it.
    async fn recv(&self) -> Result<(NodeId, Bytes), ChannelError> {
        loop {
            let got = self.inner.recv().await?;
            let drop = self.per_million > 0
                && self.rng.lock().unwrap().below(1_000_000) < self.per_million;
            if drop {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.passed.fetch_add(1, Ordering::Relaxed);
            return Ok(got);
        }
    }
}

// ---------------------------------------------------------------------------
// Payloads.

/// Microseconds since the UNIX epoch (see the module docs on why not
/// `Instant`).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A payload: its index (the number the sender expects it to get), its
/// send stamp, whether it is the last, and filler derived from the index
/// (checked on delivery).
fn payload(index: u64, stamp: u64, last: bool) -> Bytes {
    let mut p = vec![index as u8; PAYLOAD];
    p[..8].copy_from_slice(&index.to_le_bytes());
    p[8..16].copy_from_slice(&stamp.to_le_bytes());
    p[16] = u8::from(last);
    Bytes::from(p)
}

/// `(index, stamp, last)` of a payload that [`payload`] made, or why not.
fn parse_payload(p: &[u8]) -> Result<(u64, u64, bool), String> {
    if p.len() != PAYLOAD {
        return Err(format!("a payload of {} bytes", p.len()));
    }
    let index = u64::from_le_bytes(p[..8].try_into().unwrap());
    let stamp = u64::from_le_bytes(p[8..16].try_into().unwrap());
    if p[17..].iter().any(|&b| b != index as u8) {
        return Err(format!("payload {index} altered"));
    }
    Ok((index, stamp, p[16] == 1))
}

// ---------------------------------------------------------------------------
// The coordinator.

/// A group of this process's own: an administratively scoped address and a
/// port the system just handed out, so that concurrent runs do not meet.
fn private_group() -> SocketAddrV4 {
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    let pid = std::process::id();
    SocketAddrV4::new(Ipv4Addr::new(239, 255, (pid >> 8) as u8, pid as u8), port)
}

/// The multicast configuration every member uses: kept on this host (TTL
/// 0, loopback interface), loopback delivery on since all share it.
fn multicast_config(group: SocketAddrV4) -> MulticastConfig {
    MulticastConfig::new(group, Ipv4Addr::LOCALHOST, (0..=RECEIVERS).map(NodeId))
        .with_ttl(0)
        .with_loopback(true)
}

/// The running children; killed (each by its own handle) if dropped
/// before they exited.
struct Children {
    procs: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    lines: mpsc::Receiver<(usize, Option<String>)>,
    deadline: Instant,
}

impl Children {
    fn spawn(
        base: &dyn Fn() -> Command,
        roles: &[String],
        timeout: Duration,
    ) -> Result<Self, String> {
        let (tx, lines) = mpsc::channel();
        let mut children = Children {
            procs: Vec::new(),
            stdins: Vec::new(),
            lines,
            deadline: Instant::now() + timeout,
        };
        for (i, role) in roles.iter().enumerate() {
            let mut child = base()
                .env(ROLE, role)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start a process: {e}"))?;
            let stdout = child.stdout.take().unwrap();
            children.stdins.push(child.stdin.take());
            children.procs.push(child);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("FT_MCAST_NET_DEBUG").is_some() {
                        eprintln!("[{i}] {}", &line[..line.len().min(200)]);
                    }
                    // Anywhere in the line: a test harness may have
                    // started it (`test role_process ... `).
                    if let Some(at) = line.find("@ft ")
                        && tx.send((i, Some(line[at + 4..].to_string()))).is_err()
                    {
                        return;
                    }
                }
                let _ = tx.send((i, None));
            });
        }
        Ok(children)
    }

    fn tell(&mut self, i: usize, line: &str) -> Result<(), String> {
        let stdin = self.stdins[i].as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}").map_err(|e| format!("process {i}: {e}"))
    }

    /// Waits until `want` holds a line from each of `from` starting with
    /// `word`, returning the rest of each line.
    fn expect(&mut self, from: &[usize], word: &str) -> Result<BTreeMap<usize, String>, String> {
        let mut got = BTreeMap::new();
        while got.len() < from.len() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let (i, line) = self.lines.recv_timeout(left).map_err(|_| {
                let missing: Vec<_> = from.iter().filter(|i| !got.contains_key(*i)).collect();
                format!("timed out waiting for `{word}` from processes {missing:?}")
            })?;
            let Some(line) = line else {
                if got.contains_key(&i) {
                    // Said its line, then exited: in order.
                    continue;
                }
                return Err(format!("process {i} ended before `{word}`"));
            };
            if let Some(why) = line.strip_prefix("error ") {
                return Err(format!("process {i}: {why}"));
            }
            match line
                .split_once(' ')
                .map_or((line.as_str(), ""), |(w, r)| (w, r))
            {
                (w, rest) if w == word && from.contains(&i) => {
                    got.insert(i, rest.to_string());
                }
                _ => return Err(format!("process {i} said `{line}` where `{word}` was due")),
            }
        }
        Ok(got)
    }

    /// Closes every stdin and waits for every process to exit.
    fn finish(&mut self) -> Result<(), String> {
        self.stdins.iter_mut().for_each(|s| drop(s.take()));
        for (i, p) in self.procs.iter_mut().enumerate() {
            let status = loop {
                if let Some(status) = p.try_wait().map_err(|e| e.to_string())? {
                    break status;
                }
                if Instant::now() > self.deadline {
                    return Err(format!("process {i} did not exit"));
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            if !status.success() {
                return Err(format!("process {i} exited with {status}"));
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Ok(None) = p.try_wait() {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
    }
}

/// The kernel's count of datagrams dropped for a full receive buffer, in
/// this network namespace.
fn rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let i = names.iter().position(|&n| n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

/// Books every child's address with every child, gets them ready, and
/// starts the sender (process 0); returns once every receiver is done, with
/// every report.
fn drive(children: &mut Children, receivers: &[usize]) -> Result<Vec<Report>, String> {
    let all: Vec<usize> = (0..children.procs.len()).collect();
    let addrs = children.expect(&all, "addr")?;
    let book: Vec<String> = addrs.iter().map(|(i, a)| format!("{i}={a}")).collect();
    let book = format!("book {}", book.join(" "));
    for &i in &all {
        children.tell(i, &book)?;
    }
    children.expect(&all, "ready")?;
    children.tell(0, "go")?;
    children.expect(receivers, "done")?;
    children.stdins.iter_mut().for_each(|s| drop(s.take()));
    let results = children.expect(&all, "result")?;
    children.finish()?;
    results.values().map(|r| Report::parse(r)).collect()
}

/// Runs the group once: the sender and [`RECEIVERS`] receivers, each a
/// process made by `base` (the running executable, with whatever
/// arguments bring it to [`child_main`]).
///
/// `Err` says what went wrong: a process's own error (a message out of
/// order, a group it could not join), one that ended early, or the
/// timeout.
pub(crate) fn run(base: &dyn Fn() -> Command, setup: &Setup) -> Result<Outcome, String> {
    let group = private_group();
    let roles: Vec<String> = (0..=RECEIVERS)
        .map(|node| {
            let kind = if node == 0 { "sender" } else { "receiver" };
            format!(
                "kind={kind} node={node} fanout={} loss_ppm={} count={} dur_us={} rate={} \
                 history={} ack_us={} seed={} group={group}",
                setup.fanout.name(),
                setup.loss_ppm,
                setup.count,
                setup.duration.map_or(0, |d| d.as_micros() as u64),
                setup.rate.unwrap_or(0),
                setup.history,
                setup.ack_delay.as_micros(),
                setup.seed,
            )
        })
        .collect();
    let before = rcvbuf_errors();
    let mut children = Children::spawn(base, &roles, setup.timeout)?;
    let receivers: Vec<usize> = (1..=RECEIVERS as usize).collect();
    let mut reports = drive(&mut children, &receivers)?;
    let after = rcvbuf_errors();
    let sender = reports.remove(0);
    Ok(Outcome {
        sender,
        receivers: reports,
        kernel_drops: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
    })
}

/// The raw loop: one process sends 1 KiB datagrams with `send_to`, as fast
/// as it can for `duration`, to another that reads them with `recv_from`.
/// The receiver's report has the same keys as a group receiver's.
pub(crate) fn run_raw(base: &dyn Fn() -> Command, duration: Duration) -> Result<Outcome, String> {
    let roles = [
        format!("kind=raw-sender dur_us={}", duration.as_micros()),
        "kind=raw-receiver".to_string(),
    ];
    let before = rcvbuf_errors();
    let mut children = Children::spawn(base, &roles, duration + Duration::from_secs(20))?;
    let mut reports = drive(&mut children, &[1])?;
    let after = rcvbuf_errors();
    let sender = reports.remove(0);
    Ok(Outcome {
        sender,
        receivers: reports,
        kernel_drops: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
    })
}

// ---------------------------------------------------------------------------
// Network namespaces.

/// Whether this process is a coordinator inside its private network
/// namespace.
pub(crate) fn netns_inside() -> bool {
    std::env::var_os(IN_NETNS).is_some()
}

/// Runs this executable again with `args`, in a new network namespace whose
/// loopback carries multicast ([`NETNS_SETUP`]), with [`IN_NETNS`] set.
/// Its only interface is its loopback, so nothing it sends can leave the
/// host, whatever the address.
///
/// `Err` says why it could not start (not root, no `unshare` or `ip`,
/// namespaces refused).
pub(crate) fn rerun_in_netns(args: &[String]) -> Result<ExitStatus, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run `id`: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("a private network namespace needs root".into());
    }
    let probe = Command::new("unshare")
        .args(["--net", "--", "sh", "-ec", NETNS_SETUP])
        .output()
        .map_err(|e| format!("cannot run `unshare`: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "`unshare --net` with `{NETNS_SETUP}` failed: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("no path to this program: {e}"))?;
    Command::new("unshare")
        .args(["--net", "--", "sh", "-ec"])
        .arg(format!("{NETNS_SETUP}; exec \"$0\" \"$@\""))
        .arg(exe)
        .args(args)
        .env(IN_NETNS, "1")
        .status()
        .map_err(|e| format!("cannot run `unshare`: {e}"))
}

/// Whether IP multicast works on this network's loopback: two channels in
/// a group, one datagram to the group, which the other must receive within
/// a second. `Err` carries the error (joining, sending) or says that
/// nothing arrived.
pub(crate) fn probe_multicast() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let group = private_group();
        let config = MulticastConfig::new(group, Ipv4Addr::LOCALHOST, [NodeId(1), NodeId(2)])
            .with_ttl(0)
            .with_loopback(true);
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bind = |n| UdpChannel::bind(NodeId(n), lo, BTreeMap::new());
        let (a, b) = (bind(1).await, bind(2).await);
        let (a, b) = (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?);
        a.set_peer(NodeId(2), b.local_addr());
        b.set_peer(NodeId(1), a.local_addr());
        let join = |c: UdpChannel| {
            c.with_multicast(config.clone())
                .map_err(|e| format!("cannot join {group} on loopback: {e}"))
        };
        let (a, b) = (join(a)?, join(b)?);
        a.send_to_many(&[NodeId(2)], Bytes::from_static(b"probe"))
            .await
            .map_err(|e| format!("cannot send to {group} on loopback: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(1), b.recv()).await {
            Ok(Ok(_)) if b.stats().multicast_received == 1 => Ok(()),
            Ok(Ok(_)) => Err("the probe came by unicast".into()),
            Ok(Err(e)) => Err(format!("receiving from {group}: {e}")),
            Err(_) => Err(format!("nothing sent to {group} arrived on loopback")),
        }
    })
}

// ---------------------------------------------------------------------------
// The children.

/// Where the environment names a role ([`ROLE`]), runs it and exits the
/// process (0 when it went well; otherwise it says `error ...` and exits
/// with 1). Returns `false` at once in any other process.
pub(crate) fn child_main() -> bool {
    let Some(role) = std::env::var_os(ROLE) else {
        return false;
    };
    let role = role.to_string_lossy().into_owned();
    let code = match std::panic::catch_unwind(|| child(&role)) {
        Ok(Ok(())) => 0,
        Ok(Err(why)) => {
            say(&format!("error {why}"));
            1
        }
        Err(_) => {
            say("error panicked");
            1
        }
    };
    std::process::exit(code);
}

/// One line to the coordinator.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@ft {line}");
    let _ = out.flush();
}

/// The next line from the coordinator; `None` once stdin is closed.
fn hear() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_string()),
    }
}

/// The next line, which must start with `word`; the rest of it.
fn hear_word(word: &str) -> Result<String, String> {
    let line = hear().ok_or_else(|| format!("stdin closed before `{word}`"))?;
    match line.split_once(' ') {
        Some((w, rest)) if w == word => Ok(rest.to_string()),
        None if line == word => Ok(String::new()),
        _ => Err(format!("heard `{line}` where `{word}` was due")),
    }
}

/// A role's settings, parsed from its [`ROLE`] value.
struct Spec(BTreeMap<String, String>);

impl Spec {
    fn parse(role: &str) -> Self {
        Spec(
            role.split_whitespace()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn str(&self, key: &str) -> Result<&str, String> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("role without {key}"))
    }

    fn u64(&self, key: &str) -> Result<u64, String> {
        self.str(key)?.parse().map_err(|e| format!("{key}: {e}"))
    }
}

fn parse_book(line: &str) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    line.split_whitespace()
        .map(|f| {
            let (id, addr) = f.split_once('=').ok_or("bad book")?;
            let id = id.parse().map_err(|_| "bad book id")?;
            let addr = addr.parse().map_err(|_| "bad book address")?;
            Ok((NodeId(id), addr))
        })
        .collect()
}

fn child(role: &str) -> Result<(), String> {
    let spec = Spec::parse(role);
    match spec.str("kind")? {
        "sender" | "receiver" => member(&spec),
        "raw-sender" => raw_sender(&spec),
        "raw-receiver" => raw_receiver(),
        other => Err(format!("no role {other}")),
    }
}

/// Stdin after the book, as a stream: every line, then `None` when closed.
fn control() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Some(line) = hear() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A group member: the sender (node 0) or a receiver.
fn member(spec: &Spec) -> Result<(), String> {
    let node = NodeId(spec.u64("node")?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let udp = rt
        .block_on(UdpChannel::bind(
            node,
            "127.0.0.1:0".parse().unwrap(),
            BTreeMap::new(),
        ))
        .map_err(|e| format!("bind: {e}"))?;
    say(&format!("addr {}", udp.local_addr()));
    let book = parse_book(&hear_word("book")?)?;
    let _guard = rt.enter();
    for (&n, &addr) in &book {
        udp.set_peer(n, addr);
    }
    let udp = match spec.str("fanout")? {
        "multicast" => {
            let group: SocketAddrV4 = spec.str("group")?.parse().map_err(|_| "bad group")?;
            udp.with_multicast(multicast_config(group))
                .map_err(|e| format!("cannot join {group} on loopback: {e}"))?
        }
        _ => udp,
    };
    let seed = spec.u64("seed")?;
    let channel = Arc::new(Lossy::new(
        udp,
        spec.u64("loss_ppm")?,
        mix(seed, node.0 + 1000),
    ));
    let history = spec.u64("history")? as usize;
    let group = GroupConfig::new(GROUP, (0..=RECEIVERS).map(NodeId))
        .with_history(history)
        .with_max_payload(PAYLOAD);
    let mut config = McastConfig::new(vec![group]);
    config.ack_delay = Duration::from_micros(spec.u64("ack_us")?);
    let core = Multicast::recover(
        &config,
        RecoveryContext {
            node,
            incarnation: Incarnation::FIRST,
            records: Vec::new(),
            seed: mix(seed, node.0),
            now: Instant::now(),
        },
    )
    .map_err(|e| e.to_string())?;
    let (handle, task) = spawn_volatile(
        core,
        channel.clone(),
        // Room for a burst of deliveries, so the driver seldom waits for
        // this process's application loop.
        DriverConfig::default().with_event_capacity(1024),
    );
    let mut report = if node == SENDER {
        let rate = spec.u64("rate")?;
        let dur = spec.u64("dur_us")?;
        let plan = Plan {
            count: spec.u64("count")?,
            duration: (dur > 0).then(|| Duration::from_micros(dur)),
            rate: (rate > 0).then_some(rate),
        };
        say("ready");
        hear_word("go")?;
        rt.block_on(sender(handle, control(), plan))?
    } else {
        say("ready");
        rt.block_on(receiver(handle, control(), spec.u64("rate")? > 0))?
    };
    rt.block_on(task)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let udp = &channel.inner;
    let s = udp.stats();
    for (k, v) in [
        ("dropped", channel.dropped()),
        ("passed", channel.passed()),
        ("udp_sent", s.sent),
        ("udp_received", s.received),
        ("mcast_sent", s.multicast_sent),
        ("mcast_received", s.multicast_received),
        ("send_syscalls", s.send_syscalls),
        ("recv_syscalls", s.recv_syscalls),
    ] {
        report.values.insert(k.to_string(), v);
    }
    say(&report.line());
    Ok(())
}

/// How the sender sends.
struct Plan {
    count: u64,
    duration: Option<Duration>,
    rate: Option<u64>,
}

/// The sender's loop: one send in flight at a time (the next once the
/// driver says `Sent`, so each message's payload index is its number), as
/// fast as the ring allows or at the plan's rate; a refusal for a full
/// ring waits for `Ready` and sends the same payload again (its stamp
/// unchanged: the wait counts in its latency). After its last message it
/// keeps running, for the repairs, until stdin closes (and it has seen its
/// last message's `Sent`).
///
/// Reports `sent` (the last number), `refused` (sends refused for a full
/// ring) and `repairs` (the core's retransmissions).
async fn sender(
    mut handle: ft_core::Handle<Multicast>,
    mut control: tokio::sync::mpsc::UnboundedReceiver<String>,
    plan: Plan,
) -> Result<Report, String> {
    let start = Instant::now();
    // Paced: a thread ticks at each message's time (its sleep is finer
    // than the runtime's 1 ms timer wheel).
    let (tick_tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
    if let Some(rate) = plan.rate {
        let count = plan.count;
        std::thread::spawn(move || {
            for k in 0..count {
                let at = start + Duration::from_secs_f64(k as f64 / rate as f64);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                if tick_tx.send(()).is_err() {
                    return;
                }
            }
        });
    } else {
        drop(tick_tx);
    }
    let mut due: u64 = if plan.rate.is_some() { 0 } else { u64::MAX };
    let mut next = 1u64;
    let mut pending: Option<Bytes> = None;
    let (mut in_flight, mut blocked, mut finished) = (false, false, false);
    let mut refused = 0u64;
    // Stdin closed: every receiver has the last message. Its `Sent` may
    // still wait in the event queue, so the loop goes on until it is seen.
    let mut closing = false;
    loop {
        if closing && finished {
            break;
        }
        if !finished && !in_flight && !blocked && due > 0 {
            let p = pending.take().unwrap_or_else(|| {
                let last =
                    next == plan.count || plan.duration.is_some_and(|d| start.elapsed() >= d);
                payload(next, now_us(), last)
            });
            handle
                .input(McastInput::Send {
                    group: GROUP,
                    token: next,
                    payload: p.clone(),
                })
                .map_err(|e| e.to_string())?;
            pending = Some(p);
            in_flight = true;
        }
        tokio::select! {
            event = handle.next_event() => match event {
                None => return Err("the driver stopped".into()),
                Some(McastEvent::Sent { seq, .. }) => {
                    if seq != next {
                        return Err(format!("sent as {seq}, expected {next}"));
                    }
                    let p = pending.take().unwrap();
                    finished = parse_payload(&p)?.2;
                    in_flight = false;
                    due = due.saturating_sub(1);
                    next += 1;
                }
                Some(McastEvent::Refused { why: Refusal::HistoryFull, .. }) => {
                    refused += 1;
                    in_flight = false;
                    blocked = true;
                }
                Some(McastEvent::Refused { why, .. }) => return Err(format!("refused: {why:?}")),
                Some(McastEvent::Ready { .. }) => blocked = false,
                Some(_) => {}
            },
            Some(()) = ticks.recv() => due += 1,
            line = control.recv(), if !closing => closing = line.is_none(),
        }
    }
    let repairs = handle.counters().retransmissions;
    handle.shutdown();
    let mut report = Report::default();
    report.values.insert("sent".into(), next - 1);
    report.values.insert("refused".into(), refused);
    report.values.insert("repairs".into(), repairs);
    Ok(report)
}

/// A receiver's loop: checks that the sender's messages are delivered in
/// order, each once, intact, and says `done` at the last; keeps running
/// (acknowledging) until stdin closes.
///
/// Reports `delivered`, `first_stamp` (message 1's send stamp), `last_at`
/// (when the last was delivered), `decode_failures` and, when `paced`, the
/// latency of every message.
async fn receiver(
    mut handle: ft_core::Handle<Multicast>,
    mut control: tokio::sync::mpsc::UnboundedReceiver<String>,
    paced: bool,
) -> Result<Report, String> {
    let mut report = Report::default();
    let mut expect = 1u64;
    let (mut first_stamp, mut last_at) = (0, 0);
    loop {
        tokio::select! {
            event = handle.next_event() => match event {
                None => return Err("the driver stopped".into()),
                Some(McastEvent::Delivered { from, seq, payload, .. }) => {
                    let now = now_us();
                    if from != SENDER {
                        return Err(format!("delivered a message from {from}"));
                    }
                    if seq != expect {
                        return Err(format!("delivered {seq} where {expect} was due"));
                    }
                    let (index, stamp, last) = parse_payload(&payload)?;
                    if index != seq {
                        return Err(format!("message {seq} carries payload {index}"));
                    }
                    if seq == 1 {
                        first_stamp = stamp;
                    }
                    if paced {
                        report.latencies_us.push(now.saturating_sub(stamp));
                    }
                    expect += 1;
                    if last {
                        last_at = now;
                        say("done");
                    }
                }
                Some(McastEvent::Missed { upto, .. }) => {
                    return Err(format!("told it missed messages up to {upto}"));
                }
                Some(_) => {}
            },
            line = control.recv() => if line.is_none() { break },
        }
    }
    if last_at == 0 {
        return Err(format!("stopped before the last message, at {expect}"));
    }
    let decode_failures = handle.stats().decode_failures;
    handle.shutdown();
    for (k, v) in [
        ("delivered", expect - 1),
        ("first_stamp", first_stamp),
        ("last_at", last_at),
        ("decode_failures", decode_failures),
    ] {
        report.values.insert(k.to_string(), v);
    }
    Ok(report)
}

/// The raw loop's sender: `send_to` in a loop for the duration, then a few
/// end marks (flag `last`, not counted), a millisecond apart.
fn raw_sender(spec: &Spec) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    say(&format!("addr {}", socket.local_addr().unwrap()));
    let book = parse_book(&hear_word("book")?)?;
    let peer = *book.get(&NodeId(1)).ok_or("no receiver in the book")?;
    say("ready");
    hear_word("go")?;
    let duration = Duration::from_micros(spec.u64("dur_us")?);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut buf = vec![0u8; PAYLOAD];
    while start.elapsed() < duration {
        buf[..8].copy_from_slice(&sent.to_le_bytes());
        buf[8..16].copy_from_slice(&now_us().to_le_bytes());
        socket.send_to(&buf, peer).map_err(|e| e.to_string())?;
        sent += 1;
    }
    buf[16] = 1;
    for _ in 0..50 {
        socket.send_to(&buf, peer).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(1));
    }
    while hear().is_some() {}
    say(&format!("result sent={sent}"));
    Ok(())
}

/// The raw loop's receiver: `recv_from` until an end mark; reports like a
/// group receiver (`first_stamp`: the first datagram received's stamp).
fn raw_receiver() -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    say(&format!("addr {}", socket.local_addr().unwrap()));
    hear_word("book")?;
    say("ready");
    let mut buf = vec![0u8; 2 * PAYLOAD];
    let (mut delivered, mut first_stamp, mut last_at) = (0u64, 0u64, 0u64);
    loop {
        let (n, _) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
        if n != PAYLOAD {
            return Err(format!("a datagram of {n} bytes"));
        }
        if buf[16] == 1 {
            break;
        }
        last_at = now_us();
        if delivered == 0 {
            first_stamp = u64::from_le_bytes(buf[8..16].try_into().unwrap());
        }
        delivered += 1;
    }
    say("done");
    while hear().is_some() {}
    say(&format!(
        "result delivered={delivered} first_stamp={first_stamp} last_at={last_at}"
    ));
    Ok(())
}

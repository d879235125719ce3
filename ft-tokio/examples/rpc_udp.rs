//! An RPC server and client in two processes over UDP on loopback, and the
//! server killed (SIGKILL) and restarted in the middle of the client's calls.
//!
//! ```text
//! cargo run --release -p ft-tokio --example rpc_udp                 # the demo, every semantics
//! cargo run --release -p ft-tokio --example rpc_udp -- demo --semantics exactly-once --calls 500
//! rpc_udp server --dir D --port P --peer-port Q --semantics S
//! rpc_udp client --port Q --peer-port P --calls N --semantics exactly-once|at-most-once|at-least-once
//! ```
//!
//! The **server** (node 0) is an [`RpcNode`] with its data directory `D`
//! (a new incarnation, durable before the node exists, and the completion
//! records of its earlier lives), on UDP port `P`. It serves an echo that
//! answers `call-i` with `call-i life=L`, `L` being the server life that
//! executed it, and keeps an *execution log*, one line per execution:
//!
//! - under exactly-once, the line is the call's **effect**: the handler
//!   returns it with the reply, and ft makes it durable in the same record
//!   as the call's completion, before the reply goes out; the execution log
//!   is read back from `D/log`;
//! - under the other semantics the handler appends the line to
//!   `D/executions` itself (`fdatasync`ed before it answers), an effect
//!   made outside ft's records.
//!
//! The **client** (node 1, port `Q`) is a client-only [`RpcNode`] with an
//! ephemeral identity (a new one at every start, so a restarted client is
//! never taken for its previous life). It makes `N` calls, a few in
//! flight, each with a deadline long enough to ride out the restart, and
//! prints each result as it comes.
//!
//! The **demo** (the default) starts a server process and a client process
//! (this same executable), kills the server with SIGKILL once a third of
//! the calls have returned, restarts it on the same port and directory,
//! waits for the client, and then checks the client's results against the
//! server's execution log and the completion records in its stable log:
//!
//! - exactly-once: every answered call has exactly one durable completion
//!   record and **exactly one execution** (its effect, durable with that
//!   record), none has two. (A life killed after its handler ran but before
//!   the record was durable left nothing: its effect died with it, and the
//!   call ran again in the next life.)
//! - at-most-once: no call was executed twice (calls caught by the crash
//!   fail with `ServerCrashed` instead);
//! - at-least-once: every answered call was executed (perhaps more than
//!   once).
//!
//! The demo exits non-zero if any of these is violated.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::frame::OVERHEAD;
use ft_core::{DriverConfig, FrameCodec, Incarnation, NodeId};
use ft_rpc::handle::{CallError, Reply};
use ft_rpc::rpc::{
    CallId, CallOptions, Executed, RpcError, Semantics, durable_completions, durable_effects,
};
use ft_tokio::{RpcNode, UDP_MAX_DATAGRAM, durable};
use futures::StreamExt;

/// The server's node.
pub(crate) const SERVER: NodeId = NodeId(0);
/// The client's node.
pub(crate) const CLIENT: NodeId = NodeId(1);
/// Starts every line a child says to its parent, so they can be told from
/// anything else on the same stdout (a test harness's chatter).
const TAG: &str = "FTRPC ";
/// The server's execution log, in its directory.
pub(crate) const EXECUTIONS: &str = "executions";

const USAGE: &str = "\
usage: rpc_udp [demo] [--semantics all|exactly-once|at-most-once|at-least-once] [--calls N]
                      [--in-flight K] [--down-ms MS] [--dir D] [--keep] [--verbose]
       rpc_udp server --dir D --port P --peer-port Q [--seed S] [--watch-stdin]
       rpc_udp client --port Q --peer-port P --calls N --semantics S
                      [--in-flight K] [--deadline-ms MS] [--seed S] [--watch-stdin]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spawn = |child_args: &[String]| {
        let exe = std::env::current_exe().expect("the path of this executable");
        let mut command = Command::new(exe);
        command.args(child_args);
        command
    };
    match run(&args, &spawn) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rpc_udp: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Builds the command that runs this program with the given arguments in a
/// child process (the example runs its own executable; the multi-process
/// test runs its test binary).
pub(crate) type Spawner<'a> = &'a dyn Fn(&[String]) -> Command;

/// Runs the mode `args` names; `Ok(false)` when a check failed.
pub(crate) fn run(args: &[String], spawn: Spawner<'_>) -> Result<bool, String> {
    let (mode, rest) = match args.first().map(String::as_str) {
        Some("server") => ("server", &args[1..]),
        Some("client") => ("client", &args[1..]),
        Some("demo") => ("demo", &args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(true);
        }
        _ => ("demo", args),
    };
    let flags = Flags::parse(rest)?;
    match mode {
        "server" => {
            let opts = ServerOpts {
                dir: PathBuf::from(flags.required("dir")?),
                port: flags.number("port", None)?,
                peer_port: flags.number("peer-port", None)?,
                semantics: parse_semantics(flags.required("semantics")?)?,
                seed: flags.number("seed", Some(1))?,
                watch_stdin: flags.switch("watch-stdin"),
            };
            flags.check_used()?;
            server(&opts).map(|()| true)
        }
        "client" => {
            let opts = ClientOpts {
                port: flags.number("port", None)?,
                peer_port: flags.number("peer-port", None)?,
                calls: flags.number("calls", None)?,
                semantics: parse_semantics(flags.required("semantics")?)?,
                in_flight: flags.number("in-flight", Some(4))?,
                deadline: Duration::from_millis(flags.number("deadline-ms", Some(10_000))?),
                seed: flags.number("seed", Some(2))?,
                watch_stdin: flags.switch("watch-stdin"),
            };
            flags.check_used()?;
            let summary = client(&opts)?;
            Ok(summary.wrong == 0)
        }
        _ => {
            let semantics = match flags.optional("semantics").unwrap_or("all") {
                "all" => vec![
                    Semantics::ExactlyOnce,
                    Semantics::AtMostOnce,
                    Semantics::AtLeastOnce,
                ],
                one => vec![parse_semantics(one)?],
            };
            let opts = DemoOpts {
                calls: flags.number("calls", Some(200))?,
                in_flight: flags.number("in-flight", Some(4))?,
                down: Duration::from_millis(flags.number("down-ms", Some(500))?),
                dir: flags.optional("dir").map(PathBuf::from),
                keep: flags.switch("keep"),
                verbose: flags.switch("verbose"),
                quiet: false,
            };
            flags.check_used()?;
            let mut ok = true;
            for s in semantics {
                let report = demo(&opts, s, spawn)?;
                print!("{report}");
                ok &= report.violations.is_empty();
            }
            Ok(ok)
        }
    }
}

// ---------------------------------------------------------------------------
// Flags.

/// `--name value` pairs and `--switch`es, each used at most once.
struct Flags {
    values: BTreeMap<String, Option<String>>,
    used: Mutex<BTreeSet<String>>,
}

impl Flags {
    fn parse(args: &[String]) -> Result<Flags, String> {
        const SWITCHES: [&str; 3] = ["watch-stdin", "keep", "verbose"];
        let mut values = BTreeMap::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            let value = if SWITCHES.contains(&name) {
                None
            } else {
                Some(
                    args.next()
                        .ok_or_else(|| format!("--{name} needs a value"))?
                        .clone(),
                )
            };
            if values.insert(name.to_string(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Flags {
            values,
            used: Mutex::new(BTreeSet::new()),
        })
    }

    fn optional(&self, name: &str) -> Option<&str> {
        self.used.lock().unwrap().insert(name.to_string());
        self.values.get(name).and_then(|v| v.as_deref())
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.optional(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> Result<T, String> {
        match (self.optional(name), default) {
            (Some(v), _) => v
                .parse()
                .map_err(|_| format!("--{name}: {v:?} is not a number")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("--{name} is required")),
        }
    }

    fn switch(&self, name: &str) -> bool {
        self.used.lock().unwrap().insert(name.to_string());
        self.values.contains_key(name)
    }

    fn check_used(&self) -> Result<(), String> {
        let used = self.used.lock().unwrap();
        match self.values.keys().find(|k| !used.contains(*k)) {
            Some(k) => Err(format!("unknown flag --{k}")),
            None => Ok(()),
        }
    }
}

pub(crate) fn parse_semantics(s: &str) -> Result<Semantics, String> {
    match s {
        "exactly-once" => Ok(Semantics::ExactlyOnce),
        "at-most-once" => Ok(Semantics::AtMostOnce),
        "at-least-once" => Ok(Semantics::AtLeastOnce),
        other => Err(format!("unknown semantics {other:?}")),
    }
}

pub(crate) fn semantics_name(s: Semantics) -> &'static str {
    match s {
        Semantics::ExactlyOnce => "exactly-once",
        Semantics::AtMostOnce => "at-most-once",
        Semantics::AtLeastOnce => "at-least-once",
    }
}

// ---------------------------------------------------------------------------
// What both processes share.

/// The default driver configuration with frames that fit a UDP datagram
/// after the channel's header.
fn driver_config() -> DriverConfig {
    DriverConfig::default().with_codec(FrameCodec::new(UDP_MAX_DATAGRAM - OVERHEAD))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Tells the parent one line.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A parent that has gone away is no reason to stop serving.
    let _ = writeln!(out, "{TAG}{line}");
    let _ = out.flush();
}

/// Ends this process when its stdin closes: a child of the demo goes away
/// with the demo, even if the demo is killed.
fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
}

/// What the echo answers to `request`, executed by server life `life`.
fn echo_reply(request: &[u8], life: Incarnation) -> Bytes {
    let mut reply = request.to_vec();
    reply.extend_from_slice(format!(" life={}", life.0).as_bytes());
    Bytes::from(reply)
}

/// Splits an echo reply into the request number and the life that
/// executed it.
pub(crate) fn parse_reply(reply: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(reply).ok()?;
    let (request, life) = text.split_once(" life=")?;
    Some((parse_request(request)?, life.parse().ok()?))
}

fn parse_request(request: &str) -> Option<u64> {
    request.strip_prefix("call-")?.parse().ok()
}

// ---------------------------------------------------------------------------
// The server.

/// How the server runs.
pub(crate) struct ServerOpts {
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
    pub(crate) peer_port: u16,
    pub(crate) semantics: Semantics,
    pub(crate) seed: u64,
    pub(crate) watch_stdin: bool,
}

/// The line the execution log holds for one execution.
fn execution_line(life: Incarnation, id: CallId, request: &[u8]) -> String {
    format!(
        "{} {} {} {} {}\n",
        life.0,
        id.client.0,
        id.client_incarnation.0,
        id.seq,
        String::from_utf8_lossy(request)
    )
}

/// Serves until killed (or, with `watch_stdin`, until stdin closes).
fn server(o: &ServerOpts) -> Result<(), String> {
    if o.watch_stdin {
        exit_when_stdin_closes();
    }
    runtime()?.block_on(async {
        let prepared = RpcNode::builder(SERVER)
            .peer(SERVER, loopback(o.port))
            .peer(CLIENT, loopback(o.peer_port))
            .data_dir(&o.dir)
            .seed(o.seed)
            .driver_config(driver_config())
            .open()
            .await
            .map_err(|e| format!("recovering from {}: {e}", o.dir.display()))?;
        let life = prepared.incarnation();
        let effects = prepared.effects().len();
        let path = o.dir.join(EXECUTIONS);
        let executions = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        ft_storage::Fs::sync_dir(&ft_storage::OsFs, &o.dir)
            .map_err(|e| format!("syncing the directory: {e}"))?;
        let executions = Arc::new(Mutex::new(executions));
        let exactly_once = o.semantics == Semantics::ExactlyOnce;
        let handler = move |id: CallId, request: Bytes, _deadline: Instant| {
            let executions = Arc::clone(&executions);
            async move {
                let line = execution_line(life, id, &request);
                let reply = echo_reply(&request, life);
                if exactly_once {
                    // The execution is the call's effect: durable with its
                    // completion record, in one append, or not at all.
                    return Reply::with_effect(reply, Bytes::from(line));
                }
                // An effect made outside ft's records: on disk before the
                // result leaves the handler; `fdatasync` blocks, so off the
                // runtime's workers.
                let logged = tokio::task::spawn_blocking(move || {
                    let mut file = executions.lock().unwrap_or_else(|e| e.into_inner());
                    file.write_all(line.as_bytes())?;
                    file.sync_data()
                })
                .await;
                if !matches!(logged, Ok(Ok(()))) {
                    // Answering an execution the log does not show would
                    // make the demo's count wrong: stop as a crash would.
                    eprintln!("server: cannot log an execution: {logged:?}");
                    std::process::exit(3);
                }
                Reply::from(reply)
            }
        };
        let _node = prepared
            .serve(handler)
            .await
            .map_err(|e| format!("starting the server: {e}"))?;
        say(&format!("ready {} {effects}", life.0));
        // Serves until killed.
        std::future::pending::<Result<(), String>>().await
    })
}

// ---------------------------------------------------------------------------
// The client.

/// How the client runs.
pub(crate) struct ClientOpts {
    pub(crate) port: u16,
    pub(crate) peer_port: u16,
    pub(crate) calls: u64,
    pub(crate) semantics: Semantics,
    pub(crate) in_flight: usize,
    pub(crate) deadline: Duration,
    pub(crate) seed: u64,
    pub(crate) watch_stdin: bool,
}

/// What the client saw.
#[derive(Debug, Default)]
pub(crate) struct ClientSummary {
    pub(crate) answered: u64,
    pub(crate) failed: u64,
    pub(crate) wrong: u64,
}

/// A failure's class, one word.
pub(crate) fn class(e: &CallError) -> String {
    match e {
        CallError::Rpc(RpcError::CannotLocateServer { .. }) => "cannot-locate-server".into(),
        CallError::Rpc(RpcError::TimedOut { .. }) => "timed-out".into(),
        CallError::Rpc(RpcError::ServerCrashed { executed, .. }) => {
            let executed = match executed {
                Executed::No => "no",
                Executed::Unknown => "unknown",
                Executed::Yes => "yes",
            };
            format!("server-crashed(executed:{executed})")
        }
        CallError::Rpc(RpcError::Refused(why)) => format!("refused({why})"),
        CallError::Rpc(e) => format!("{e}").replace(' ', "-"),
        CallError::Closed => "closed".into(),
    }
}

/// Makes the calls, printing each result; returns when all have ended.
fn client(o: &ClientOpts) -> Result<ClientSummary, String> {
    if o.watch_stdin {
        exit_when_stdin_closes();
    }
    runtime()?.block_on(async {
        // A fresh (ephemeral) identity at every start: a restarted client
        // is never matched to its previous life's calls.
        let node = RpcNode::builder(CLIENT)
            .peer(SERVER, loopback(o.peer_port))
            .peer(CLIENT, loopback(o.port))
            .seed(o.seed)
            .driver_config(driver_config())
            .client_only()
            .await
            .map_err(|e| format!("starting the client: {e}"))?;
        let client = node.client().clone();
        say("started");
        let (semantics, deadline) = (o.semantics, o.deadline);
        let mut results = futures::stream::iter(0..o.calls)
            .map(|i| {
                let client = client.clone();
                async move {
                    let start = Instant::now();
                    let options = CallOptions {
                        semantics,
                        deadline: start + deadline,
                    };
                    let request = Bytes::from(format!("call-{i}"));
                    let result = client.call(SERVER, request, options).await;
                    (i, result, start.elapsed())
                }
            })
            .buffer_unordered(o.in_flight.max(1));
        let mut summary = ClientSummary::default();
        while let Some((i, result, took)) = results.next().await {
            let ms = took.as_secs_f64() * 1e3;
            match result {
                Ok(reply) => match parse_reply(&reply) {
                    Some((n, life)) if n == i => {
                        summary.answered += 1;
                        say(&format!("ok {i} {life} {ms:.1}"));
                    }
                    _ => {
                        summary.wrong += 1;
                        say(&format!("wrong {i} {:?}", String::from_utf8_lossy(&reply)));
                    }
                },
                Err(e) => {
                    summary.failed += 1;
                    say(&format!("err {i} {} {ms:.1}", class(&e)));
                }
            }
        }
        node.shutdown()
            .await
            .map_err(|e| format!("the client's driver stopped: {e}"))?;
        say(&format!(
            "done {} {} {}",
            summary.answered, summary.failed, summary.wrong
        ));
        Ok(summary)
    })
}

// ---------------------------------------------------------------------------
// The demo: two processes, a kill, a restart, and the checks.

/// How the demo runs.
pub(crate) struct DemoOpts {
    pub(crate) calls: u64,
    pub(crate) in_flight: usize,
    /// How long the server stays dead.
    pub(crate) down: Duration,
    /// Where the server's directories go (a fresh temporary one if `None`).
    pub(crate) dir: Option<PathBuf>,
    /// Keep the server's directory afterwards.
    pub(crate) keep: bool,
    /// Relay every client line, not a sample.
    pub(crate) verbose: bool,
    /// Relay nothing while running (the report is still returned).
    pub(crate) quiet: bool,
}

/// The result of one call, as the client reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered, by this server life.
    Answered(u64),
    /// Failed, with this class.
    Failed(String),
    /// Answered with something that is not its echo.
    Wrong(String),
}

/// What one run of the demo showed.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) semantics: Semantics,
    pub(crate) calls: u64,
    pub(crate) in_flight: usize,
    /// Client results seen when the server was killed.
    pub(crate) killed_after: u64,
    pub(crate) down: Duration,
    pub(crate) elapsed: Duration,
    /// Each call's result (calls that never reported are missing).
    pub(crate) outcomes: BTreeMap<u64, Outcome>,
    /// Calls whose result came after the kill.
    pub(crate) after_kill: BTreeSet<u64>,
    /// Server lives that reported ready.
    pub(crate) lives: Vec<u64>,
    /// Each call's executions: the server lives that executed it, in order.
    pub(crate) executions: BTreeMap<u64, Vec<u64>>,
    /// Lines of the execution log that are not whole (a kill mid-write).
    pub(crate) torn_lines: usize,
    /// Each call's durable completion records: the life whose reply each
    /// holds.
    pub(crate) records: BTreeMap<u64, Vec<u64>>,
    /// Every check that failed.
    pub(crate) violations: Vec<String>,
}

impl Report {
    pub(crate) fn answered(&self) -> usize {
        self.outcomes
            .values()
            .filter(|o| matches!(o, Outcome::Answered(_)))
            .count()
    }

    /// Failures by class.
    pub(crate) fn failures(&self) -> BTreeMap<&str, usize> {
        let mut by_class = BTreeMap::new();
        for o in self.outcomes.values() {
            match o {
                Outcome::Failed(class) => *by_class.entry(class.as_str()).or_default() += 1,
                Outcome::Wrong(_) => *by_class.entry("wrong-reply").or_default() += 1,
                Outcome::Answered(_) => {}
            }
        }
        by_class
    }

    /// How many calls were executed how many times (calls 0..calls).
    pub(crate) fn execution_histogram(&self) -> BTreeMap<usize, usize> {
        let mut h = BTreeMap::new();
        for i in 0..self.calls {
            let n = self.executions.get(&i).map_or(0, Vec::len);
            *h.entry(n).or_default() += 1;
        }
        h
    }

    /// Calls executed more than once.
    pub(crate) fn executed_twice(&self) -> usize {
        self.executions.values().filter(|e| e.len() > 1).count()
    }

    /// The first few calls executed more than once, with their lives.
    fn executed_twice_list(&self) -> String {
        let twice: Vec<String> = self
            .executions
            .iter()
            .filter(|(_, e)| e.len() > 1)
            .take(8)
            .map(|(i, e)| format!("call-{i} by lives {e:?}"))
            .collect();
        if twice.is_empty() {
            String::new()
        } else {
            format!(": {}", twice.join(", "))
        }
    }

    /// Calls with more than one durable completion record.
    pub(crate) fn calls_with_several_records(&self) -> usize {
        self.records.values().filter(|r| r.len() > 1).count()
    }

    /// Calls answered after the kill by the killed life: from its durable
    /// completion record (exactly-once), by the next life.
    pub(crate) fn answered_from_dead_life(&self) -> usize {
        let Some(&killed) = self.lives.first() else {
            return 0;
        };
        self.after_kill
            .iter()
            .filter(|i| self.outcomes.get(i) == Some(&Outcome::Answered(killed)))
            .count()
    }

    /// Answered calls with exactly one durable completion record.
    pub(crate) fn answered_with_one_record(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(i, o)| {
                matches!(o, Outcome::Answered(_))
                    && self.records.get(i).is_some_and(|r| r.len() == 1)
            })
            .count()
    }

    /// Fills `violations` with every check that fails.
    pub(crate) fn check(&mut self) {
        let mut v = Vec::new();
        if self.outcomes.len() as u64 != self.calls {
            v.push(format!(
                "the client reported {} of {} calls",
                self.outcomes.len(),
                self.calls
            ));
        }
        for (i, o) in &self.outcomes {
            let execs = self.executions.get(i).map(Vec::as_slice).unwrap_or(&[]);
            let records = self.records.get(i).map(Vec::as_slice).unwrap_or(&[]);
            match o {
                Outcome::Wrong(reply) => v.push(format!("call {i}: wrong reply {reply:?}")),
                Outcome::Answered(life) if !execs.contains(life) => v.push(format!(
                    "call {i}: answered by life {life}, which the execution log does not show \
                     executing it (it shows {execs:?})"
                )),
                _ => {}
            }
            match self.semantics {
                Semantics::ExactlyOnce => {
                    if let Outcome::Answered(life) = o
                        && (records != [*life] || execs != [*life])
                    {
                        v.push(format!(
                            "call {i}: answered by life {life} with durable completion records \
                             from lives {records:?} and executions by lives {execs:?} (exactly \
                             one of each, from that life, expected)"
                        ));
                    }
                    if execs.len() > 1 {
                        v.push(format!("call {i}: executed {} times", execs.len()));
                    }
                }
                Semantics::AtMostOnce => {
                    if execs.len() > 1 {
                        v.push(format!("call {i}: executed {} times", execs.len()));
                    }
                }
                Semantics::AtLeastOnce => {}
            }
        }
        if self.semantics == Semantics::ExactlyOnce {
            for (i, records) in &self.records {
                let execs = self.executions.get(i).map(Vec::as_slice).unwrap_or(&[]);
                if records.len() > 1 {
                    v.push(format!(
                        "call {i}: {} durable completion records",
                        records.len()
                    ));
                }
                let Some(&done) = records.first() else {
                    continue;
                };
                // A life may execute a call again only if no earlier life's
                // completion record for it was durable; and once per life.
                if let Some(later) = execs.iter().find(|&&l| l > done) {
                    v.push(format!(
                        "call {i}: executed by life {later} after life {done}'s completion \
                         record was durable"
                    ));
                }
                let lives: BTreeSet<_> = execs.iter().collect();
                if lives.len() != execs.len() {
                    v.push(format!("call {i}: executed twice by one life ({execs:?})"));
                }
            }
        }
        self.violations = v;
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = semantics_name(self.semantics);
        writeln!(
            f,
            "\n== {name}: {} calls, {} in flight; server killed (SIGKILL) after {} results, \
             down {} ms; {:.2} s ==",
            self.calls,
            self.in_flight,
            self.killed_after,
            self.down.as_millis(),
            self.elapsed.as_secs_f64()
        )?;
        let failures = self.failures();
        let failed: usize = failures.values().sum();
        let mut classes = String::new();
        for (class, n) in &failures {
            let _ = write!(
                classes,
                "{}{class}: {n}",
                if classes.is_empty() { "" } else { ", " }
            );
        }
        writeln!(
            f,
            "client: {} calls made, {} answered, {} failed{}",
            self.calls,
            self.answered(),
            failed,
            if classes.is_empty() {
                String::new()
            } else {
                format!(" ({classes})")
            }
        )?;
        let execs: usize = self.executions.values().map(Vec::len).sum();
        let histogram: Vec<String> = self
            .execution_histogram()
            .iter()
            .map(|(times, calls)| format!("{times}x: {calls}"))
            .collect();
        writeln!(
            f,
            "server: lives {:?}; {execs} executions; calls executed {}{}",
            self.lives,
            histogram.join(", "),
            if self.torn_lines > 0 {
                format!("; {} torn log lines", self.torn_lines)
            } else {
                String::new()
            }
        )?;
        let twice = self.executed_twice();
        match self.semantics {
            Semantics::ExactlyOnce => {
                let total: usize = self.records.values().map(Vec::len).sum();
                writeln!(
                    f,
                    "durable completion records: {total} for {} calls; answered calls with \
                     exactly one: {} of {}; calls with two or more: {}",
                    self.records.len(),
                    self.answered_with_one_record(),
                    self.answered(),
                    self.calls_with_several_records()
                )?;
                writeln!(
                    f,
                    "answered after the kill from the killed life's durable completion record: {}",
                    self.answered_from_dead_life()
                )?;
                writeln!(
                    f,
                    "calls executed twice: {twice}{} (each execution's effect is durable with \
                     its completion record, or died with a killed life)",
                    self.executed_twice_list()
                )?;
            }
            Semantics::AtMostOnce => writeln!(
                f,
                "calls executed twice: {twice}{}",
                self.executed_twice_list()
            )?,
            Semantics::AtLeastOnce => writeln!(
                f,
                "calls executed more than once: {twice}{} (allowed by at-least-once)",
                self.executed_twice_list()
            )?,
        }
        if self.violations.is_empty() {
            let verdict = match self.semantics {
                Semantics::ExactlyOnce => {
                    "every answered call has exactly one durable completion record and exactly \
                     one execution, and no call has two"
                }
                Semantics::AtMostOnce => "no call executed twice",
                Semantics::AtLeastOnce => "every answered call was executed",
            };
            writeln!(f, "check: OK: {verdict}")
        } else {
            writeln!(f, "check: FAILED, {} violations:", self.violations.len())?;
            for v in self.violations.iter().take(20) {
                writeln!(f, "  {v}")?;
            }
            Ok(())
        }
    }
}

/// A UDP port that was free a moment ago on loopback.
fn free_port() -> Result<u16, String> {
    let socket = std::net::UdpSocket::bind(loopback(0)).map_err(|e| format!("free port: {e}"))?;
    socket
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// Which child a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    /// The server process of this start (0 first, 1 after the restart).
    Server(u32),
    Client,
}

/// A child process that is killed (if still running) when dropped, whose
/// stdout lines go to the demo's channel.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn start(
        spawn: Spawner<'_>,
        args: &[String],
        who: Who,
        lines: &mpsc::Sender<(Who, Option<String>)>,
    ) -> Result<Proc, String> {
        let mut child = spawn(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {who:?}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Only the child's own lines; a harness may print others.
                if let Some(at) = line.find(TAG) {
                    let said = line[at + TAG.len()..].to_string();
                    if lines.send((who, Some(said))).is_err() {
                        return;
                    }
                }
            }
            let _ = lines.send((who, None));
        });
        let stdin = child.stdin.take();
        Ok(Proc { child, stdin })
    }

    /// SIGKILL, and wait until it is gone (its port and files released).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its stdin (a child started with `--watch-stdin` exits) and
    /// waits up to `grace`, then kills it.
    fn stop(&mut self, grace: Duration) {
        self.stdin.take();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Removes the demo's directory on drop, unless asked to keep it.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs the scenario once with `semantics`: see the module docs.
pub(crate) fn demo(
    o: &DemoOpts,
    semantics: Semantics,
    spawn: Spawner<'_>,
) -> Result<Report, String> {
    let name = semantics_name(semantics);
    let base = o.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch {
        path: base.join(format!("ft-rpc-udp-{}-{name}", std::process::id())),
        keep: o.keep,
    };
    let dir = scratch.path.clone();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let (server_port, client_port) = (free_port()?, free_port()?);
    let server_args: Vec<String> = [
        "server",
        "--dir",
        &dir.display().to_string(),
        "--port",
        &server_port.to_string(),
        "--peer-port",
        &client_port.to_string(),
        "--semantics",
        name,
        "--watch-stdin",
    ]
    .map(String::from)
    .to_vec();
    let client_args: Vec<String> = [
        "client",
        "--port",
        &client_port.to_string(),
        "--peer-port",
        &server_port.to_string(),
        "--calls",
        &o.calls.to_string(),
        "--semantics",
        name,
        "--in-flight",
        &o.in_flight.to_string(),
        "--watch-stdin",
    ]
    .map(String::from)
    .to_vec();
    let relay = |line: &str| {
        if !o.quiet {
            println!("{line}");
        }
    };
    relay(&format!(
        "\n-- {name}: server on udp {server_port} (dir {}), client on udp {client_port}",
        dir.display()
    ));

    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut server = Proc::start(spawn, &server_args, Who::Server(0), &tx)?;
    let mut lives = Vec::new();
    wait_ready(&rx, Who::Server(0), &mut lives, &relay)?;
    let mut client = Proc::start(spawn, &client_args, Who::Client, &tx)?;

    let kill_after = (o.calls / 3).max(1);
    let mut outcomes = BTreeMap::new();
    let mut after_kill = BTreeSet::new();
    let mut restart_at: Option<Instant> = None;
    let mut restarted = false;
    // Results relayed in full for a while after each server event.
    let mut loud = 0u32;
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut client_done = false;
    while !client_done {
        if let Some(at) = restart_at
            && Instant::now() >= at
        {
            restart_at = None;
            restarted = true;
            server = Proc::start(spawn, &server_args, Who::Server(1), &tx)?;
            relay("   server restarted on the same port and directory");
            loud = 8;
        }
        if Instant::now() > give_up {
            return Err("the client did not finish within 120 s".into());
        }
        let wait = restart_at.map_or(Duration::from_millis(200), |at| {
            at.saturating_duration_since(Instant::now())
        });
        let (who, line) = match rx.recv_timeout(wait) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match (who, line) {
            (Who::Client, None) => client_done = true,
            (Who::Client, Some(line)) => {
                let words: Vec<&str> = line.split(' ').collect();
                let index = words.get(1).and_then(|w| w.parse::<u64>().ok());
                let outcome = match (words[0], index) {
                    ("ok", Some(_)) => words
                        .get(2)
                        .and_then(|l| l.parse().ok())
                        .map(Outcome::Answered),
                    ("err", Some(_)) => words.get(2).map(|c| Outcome::Failed(c.to_string())),
                    ("wrong", Some(_)) => Some(Outcome::Wrong(words[2..].join(" "))),
                    ("done", _) => {
                        client_done = true;
                        None
                    }
                    _ => None,
                };
                if let (Some(i), Some(outcome)) = (index, outcome) {
                    // Every failure, every slow call (one that rode out the
                    // restart), and a sample of the rest.
                    let slow = words
                        .get(3)
                        .and_then(|ms| ms.parse::<f64>().ok())
                        .is_some_and(|ms| ms >= 50.0);
                    let shown = o.verbose
                        || loud > 0
                        || slow
                        || !matches!(outcome, Outcome::Answered(_))
                        || i % 25 == 0;
                    if shown {
                        relay(&format!("   client | {line}"));
                    }
                    loud = loud.saturating_sub(1);
                    outcomes.insert(i, outcome);
                    if restarted || restart_at.is_some() {
                        after_kill.insert(i);
                    }
                }
                if !restarted && restart_at.is_none() && outcomes.len() as u64 >= kill_after {
                    server.kill();
                    relay(&format!(
                        "   server KILLED (SIGKILL) after {} results; restarting in {} ms",
                        outcomes.len(),
                        o.down.as_millis()
                    ));
                    restart_at = Some(Instant::now() + o.down);
                    loud = 8;
                }
            }
            (Who::Server(n), Some(line)) => {
                if let Some(rest) = line.strip_prefix("ready ") {
                    record_ready(rest, &mut lives, &relay);
                } else {
                    relay(&format!("   server {n} | {line}"));
                }
            }
            (Who::Server(_), None) => {}
        }
    }
    // The client is done: let it exit, then stop the server.
    client.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(5));
    drop(tx);
    // Late lines (a ready the loop did not wait for).
    while let Ok((who, line)) = rx.recv_timeout(Duration::from_millis(100)) {
        if let (Who::Server(_), Some(line)) = (who, line)
            && let Some(rest) = line.strip_prefix("ready ")
        {
            record_ready(rest, &mut lives, &relay);
        }
    }
    let elapsed = started.elapsed();

    let durable = durable::records(&dir).map_err(|e| format!("reading the server's log: {e}"))?;
    let (executions, torn_lines) = if semantics == Semantics::ExactlyOnce {
        // The effects, read back from the stable log.
        let mut text = String::new();
        for (_, effect) in durable_effects(&durable) {
            text.push_str(&String::from_utf8_lossy(&effect));
        }
        parse_executions(&text)
    } else {
        read_executions(&dir.join(EXECUTIONS))?
    };
    let mut records: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for c in durable_completions(&durable) {
        let (id, reply) = (c.id, c.reply().cloned().unwrap_or_default());
        match parse_reply(&reply) {
            Some((i, life)) => records.entry(i).or_default().push(life),
            None => {
                return Err(format!(
                    "completion record of {id:?} is not an echo: {reply:?}"
                ));
            }
        }
    }
    let mut report = Report {
        semantics,
        calls: o.calls,
        in_flight: o.in_flight,
        killed_after: kill_after,
        down: o.down,
        elapsed,
        outcomes,
        after_kill,
        lives,
        executions,
        torn_lines,
        records,
        violations: Vec::new(),
    };
    report.check();
    if !restarted {
        report
            .violations
            .push("the server was never killed and restarted".into());
    }
    Ok(report)
}

fn record_ready(rest: &str, lives: &mut Vec<u64>, relay: &dyn Fn(&str)) {
    let mut words = rest.split(' ');
    let life = words.next().and_then(|w| w.parse().ok());
    let records = words.next().unwrap_or("?");
    if let Some(life) = life {
        lives.push(life);
        relay(&format!(
            "   server life {life} ready, rebuilt from {records} durable records"
        ));
    }
}

/// Waits for the ready line of `who`.
fn wait_ready(
    rx: &mpsc::Receiver<(Who, Option<String>)>,
    who: Who,
    lives: &mut Vec<u64>,
    relay: &dyn Fn(&str),
) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((w, Some(line))) if w == who => {
                if let Some(rest) = line.strip_prefix("ready ") {
                    record_ready(rest, lives, relay);
                    return Ok(());
                }
            }
            Ok((w, None)) if w == who => return Err(format!("{who:?} exited before it was ready")),
            Ok(_) => {}
            Err(_) => return Err(format!("{who:?} was not ready within 30 s")),
        }
    }
}

/// Reads the execution log: each call's executing lives, and the number of
/// lines cut short by a kill.
fn read_executions(path: &Path) -> Result<(BTreeMap<u64, Vec<u64>>, usize), String> {
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(parse_executions(&text))
}

/// Each call's executing lives in an execution log's text, and the number
/// of lines cut short by a kill.
fn parse_executions(text: &str) -> (BTreeMap<u64, Vec<u64>>, usize) {
    let mut executions: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut torn = 0;
    for line in text.split_inclusive('\n') {
        let parsed = line.strip_suffix('\n').and_then(|line| {
            // life client client-incarnation seq request
            let words: Vec<&str> = line.split(' ').collect();
            let life = words.first()?.parse().ok()?;
            Some((parse_request(words.get(4)?)?, life))
        });
        match parsed {
            Some((i, life)) => executions.entry(i).or_default().push(life),
            None => torn += 1,
        }
    }
    (executions, torn)
}

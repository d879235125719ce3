//! Distributed commit across four processes on loopback, with the
//! coordinator killed (SIGKILL) between the phases and restarted from its
//! log.
//!
//! ```text
//! cargo run -p ft-tokio --example commit_crash                  # every scenario
//! cargo run -p ft-tokio --example commit_crash -- demo --scenario after-decision
//! commit_crash node --id N --dir D --ports P0,P1,P2,P3 [--protocol 2pc|3pc]
//!                   [--begin] [--crash before-decision|after-decision|after-commit|before-precommit]
//! ```
//!
//! Every process is a [`CommitNode`] with its own data directory (its
//! incarnation and its `FileLog`) and a [`MemResource`] that narrates what
//! it is asked. Node 0, the **coordinator**, begins one transaction with
//! nodes 1, 2 and 3 as **participants**, which vote commit. The demo (this
//! same executable, re-run as each process) stops one process at a chosen
//! point, SIGKILLs it there, and restarts it on the same directory with the
//! same node id:
//!
//! - `before-decision` (2PC): every participant is READY (its vote is
//!   durable), the coordinator has not logged its decision. Participants
//!   time out, ask each other (cooperative termination), find everyone
//!   READY and **block**, saying on whom. Meanwhile an operator decides
//!   node 3's in-doubt work by hand (commit). The coordinator restarts, finds
//!   BEGIN without a decision, and aborts: nodes 1 and 2 abort, node 3
//!   reports a **heuristic** outcome (its resource committed on its own).
//! - `after-decision` (2PC): the decision (commit) is durable but was never
//!   sent. Participants block the same way; the restarted coordinator finds
//!   its decision in the log and sends it again: everyone commits.
//! - `after-commit` (2PC): participant 1 is killed after its COMMIT record
//!   is durable, before its resource committed; restarted, it finds COMMIT
//!   in its log and commits the resource then (which is why resource calls
//!   are idempotent).
//! - `before-precommit` (3PC): the coordinator dies before PRECOMMIT; the
//!   participants elect one of themselves and **abort without it**: 3PC
//!   does not block on a crash (under its synchrony assumptions).
//!
//! How a process is stopped "at a point": its log is wrapped
//! ([`CommitNodeBuilder::wrap_log`]) by a layer that, on the chosen record,
//! says so and parks the append (before writing it, or after it is durable
//! and before the core may act on it); the demo then kills the process
//! with SIGKILL. A SIGKILL is not a power loss: what was written stays.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ft_commit::resource::{Applied, MemResource, Resource};
use ft_commit::{
    CommitCore, CoordState3, LogRecord, Record3, ThreePhase, ThreePhaseConfig, TxId, Vote,
};
use ft_core::{Lsn, NodeId, StableLog, StorageError};
use ft_storage::FileLog;
use ft_tokio::commit::{CommitNode, CommitNodeBuilder};

/// Starts every line a child says to its parent.
const TAG: &str = "FTC ";
/// The transaction every scenario runs.
pub(crate) const TX: &str = "t1";
const USAGE: &str = "\
usage: commit_crash [demo] [--scenario all|before-decision|after-decision|after-commit|before-precommit] [--keep]
       commit_crash node --id N --dir D --ports P0,P1,P2,P3 [--protocol 2pc|3pc] [--begin]
                         [--crash before-decision|after-decision|after-commit|before-precommit]";

/// The scenarios, in the order the demo runs them.
pub(crate) const SCENARIOS: [&str; 4] = [
    "before-decision",
    "after-decision",
    "after-commit",
    "before-precommit",
];

#[allow(dead_code)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spawn = |child_args: &[String]| {
        let mut command = Command::new(std::env::current_exe().expect("this executable"));
        command.args(child_args);
        command
    };
    match run(&args, &spawn) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("commit_crash: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Builds the command that runs this program with the given arguments (the
/// example runs its own executable; the test runs its test binary).
pub(crate) type Spawner<'a> = &'a dyn Fn(&[String]) -> Command;

/// Runs the mode `args` names; `Ok(false)` when an outcome was not the
/// expected one.
pub(crate) fn run(args: &[String], spawn: Spawner<'_>) -> Result<bool, String> {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == &format!("--{name}"))
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let switch = |name: &str| args.iter().any(|a| a == &format!("--{name}"));
    match args.first().map(String::as_str) {
        Some("node") => {
            let ports: Vec<u16> = flag("ports")
                .ok_or("--ports")?
                .split(',')
                .map(|p| p.parse().map_err(|e| format!("--ports: {e}")))
                .collect::<Result<_, _>>()?;
            let o = NodeOpts {
                id: flag("id")
                    .ok_or("--id")?
                    .parse()
                    .map_err(|e| format!("--id: {e}"))?,
                dir: PathBuf::from(flag("dir").ok_or("--dir")?),
                ports,
                three_phase: flag("protocol").as_deref() == Some("3pc"),
                begin: switch("begin"),
                crash: flag("crash"),
            };
            node(&o).map(|()| true)
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(true)
        }
        _ => {
            let chosen = flag("scenario").unwrap_or_else(|| "all".into());
            let mut ok = true;
            for s in SCENARIOS {
                if chosen == "all" || chosen == s {
                    println!("\n== scenario {s} ==\n{}", explain(s));
                    let report = demo(s, spawn, switch("keep"), false)?;
                    println!("{}", report.summary());
                    ok &= report.as_expected();
                }
            }
            Ok(ok)
        }
    }
}

/// What a scenario shows, for the transcript.
fn explain(scenario: &str) -> &'static str {
    match scenario {
        "before-decision" => {
            "2PC; the coordinator is killed once every participant is READY, before its decision is logged"
        }
        "after-decision" => {
            "2PC; the coordinator is killed once its decision (commit) is durable, before it is sent"
        }
        "after-commit" => {
            "2PC; participant n1 is killed once its COMMIT is durable, before its resource committed"
        }
        _ => {
            "3PC; the coordinator is killed once every participant is READY, before PRECOMMIT is logged"
        }
    }
}

// ---- one process: a node ----

struct NodeOpts {
    id: u64,
    dir: PathBuf,
    ports: Vec<u16>,
    three_phase: bool,
    begin: bool,
    crash: Option<String>,
}

/// Tells the parent one line.
fn say(line: impl fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{TAG}{line}");
    let _ = out.flush();
}

fn node(o: &NodeOpts) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mem = Arc::new(MemResource::new());
        let (seen, mut prepared) = tokio::sync::mpsc::unbounded_channel();
        let resource = Arc::new(Narrated {
            mem: mem.clone(),
            seen,
        });
        let mut b = CommitNode::builder(NodeId(o.id))
            .data_dir(&o.dir)
            .resource(resource)
            .seed(o.id);
        for (i, port) in o.ports.iter().enumerate() {
            b = b.peer(
                NodeId(i as u64),
                SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
            );
        }
        if let Some(point) = o.crash.clone() {
            b = b.wrap_log(move |log| Box::new(StopAt { log, point }));
        }
        if o.three_phase {
            serve(
                b.core::<ThreePhase>(ThreePhaseConfig::default()),
                o,
                &mem,
                &mut prepared,
            )
            .await
        } else {
            serve(b, o, &mem, &mut prepared).await
        }
    })
}

async fn serve<C>(
    b: CommitNodeBuilder<C>,
    o: &NodeOpts,
    mem: &Arc<MemResource>,
    prepared: &mut tokio::sync::mpsc::UnboundedReceiver<TxId>,
) -> Result<(), String>
where
    C: CommitCore + Send + 'static,
    C::Config: Send + 'static,
    C::Message: Send,
    C::Timer: Send,
{
    let node = Arc::new(b.start().await.map_err(|e| e.to_string())?);
    say(format_args!(
        "up {} incarnation {}",
        C::NAME,
        node.incarnation().0
    ));
    let mut watched = std::collections::HashSet::new();
    for l in node.recovered() {
        let outcome = match l.outcome {
            Some(v) => format!("{v:?}").to_lowercase(),
            None => "undecided".into(),
        };
        say(format_args!("recovered {} {:?} {outcome}", l.tx, l.role));
        if watched.insert(l.tx.clone()) {
            watch(&node, l.tx.clone());
        }
    }
    // Commands from the parent: an operator's heuristic decision; EOF ends
    // the process.
    let (cmds, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let _ = cmds.send(line);
        }
        std::process::exit(0);
    });
    if o.begin {
        let mut t = node.begin_with(tx_id());
        t.enlist(NodeId(1)).enlist(NodeId(2)).enlist(NodeId(3));
        say(format_args!("begin {} with n1 n2 n3", t.id()));
        watched.insert(t.id().clone());
        watch(&node, t.id().clone());
        tokio::spawn(async move {
            match t.commit().await {
                Ok(o) => say(format_args!("commit() returned: {o}")),
                Err(e) => say(format_args!("commit() failed: {e}")),
            }
        });
    }
    loop {
        tokio::select! {
            Some(tx) = prepared.recv() => {
                if watched.insert(tx.clone()) {
                    watch(&node, tx);
                }
            }
            Some(cmd) = commands.recv() => {
                if let ["heuristic", vote] = cmd.split_whitespace().collect::<Vec<_>>()[..] {
                    let vote = if vote == "commit" { Vote::Commit } else { Vote::Abort };
                    if mem.decide_heuristically(&tx_id(), vote) {
                        say(format_args!("operator: {} decided {vote:?} by hand while in doubt", tx_id()));
                    }
                }
            }
            else => return Ok(()),
        }
    }
}

/// Says every outcome `tx` goes through here.
fn watch<C: CommitCore>(node: &Arc<CommitNode<C>>, tx: TxId) {
    let mut w = node.outcome(&tx);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let now = w.current();
            if let Some(o) = now
                && now != last
            {
                say(format_args!("outcome {tx}: {o}"));
                last = now;
            }
            if now.is_some_and(|o| o.is_final()) || w.changed().await.is_err() {
                return;
            }
        }
    });
}

fn tx_id() -> TxId {
    TxId::new(TX.as_bytes()).expect("short")
}

/// The in-memory resource, saying what it is asked.
struct Narrated {
    mem: Arc<MemResource>,
    seen: tokio::sync::mpsc::UnboundedSender<TxId>,
}

#[async_trait]
impl Resource for Narrated {
    async fn prepare(&self, tx: &TxId) -> Vote {
        let _ = self.seen.send(tx.clone());
        let vote = self.mem.prepare(tx).await;
        say(format_args!("resource: prepare {tx} -> vote {vote:?}"));
        vote
    }
    async fn commit(&self, tx: &TxId) -> Applied {
        let _ = self.seen.send(tx.clone());
        let a = self.mem.commit(tx).await;
        say(format_args!("resource: commit {tx} -> {a:?}"));
        a
    }
    async fn abort(&self, tx: &TxId) -> Applied {
        let _ = self.seen.send(tx.clone());
        let a = self.mem.abort(tx).await;
        say(format_args!("resource: abort {tx} -> {a:?}"));
        a
    }
}

/// The log layer that stops the process at a point: on the chosen record
/// it says `stopped` and parks the append forever, before writing the
/// record (`before-*`) or once it is durable (`after-*`), so the core
/// never acts on it. The parent then SIGKILLs the process.
struct StopAt {
    log: FileLog,
    point: String,
}

impl StopAt {
    fn hit(&self, record: &Bytes) -> bool {
        let two = ft_core::record::decode::<LogRecord>(record.clone());
        let three = ft_core::record::decode::<Record3>(record.clone());
        match self.point.as_str() {
            "before-decision" | "after-decision" => {
                matches!(two, Ok(LogRecord::Decision { .. }))
            }
            "after-commit" => matches!(two, Ok(LogRecord::Commit { .. })),
            "before-precommit" => matches!(
                three,
                Ok(Record3::Coord {
                    state: CoordState3::PreCommit,
                    ..
                })
            ),
            _ => false,
        }
    }
}

#[async_trait]
impl StableLog for StopAt {
    async fn append(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
        let hit = records.iter().any(|r| self.hit(r));
        if hit && self.point.starts_with("before") {
            say(format_args!(
                "stopped {}: the record is not written",
                self.point
            ));
            std::future::pending::<()>().await;
        }
        let lsn = self.log.append(records).await?;
        if hit {
            say(format_args!(
                "stopped {}: the record is durable, not acted on",
                self.point
            ));
            std::future::pending::<()>().await;
        }
        Ok(lsn)
    }
    async fn read_from(&self, from: Lsn) -> Result<Vec<(Lsn, Bytes)>, StorageError> {
        self.log.read_from(from).await
    }
    async fn truncate_prefix(&self, upto: Lsn) -> Result<Lsn, StorageError> {
        self.log.truncate_prefix(upto).await
    }
    async fn next_lsn(&self) -> Result<Lsn, StorageError> {
        self.log.next_lsn().await
    }
}

// ---- the demo: the parent of the four processes ----

/// What one scenario showed, from the lines the processes said.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    /// Every line, in order, with the node that said it (and its life).
    pub(crate) transcript: Vec<(u64, u32, String)>,
    /// The node killed, and how it ended ("signal 9").
    pub(crate) killed: Option<(u64, String)>,
    /// Nodes that said they were blocked, and on whom.
    pub(crate) blocked: BTreeMap<u64, String>,
    /// Each node's last final outcome of the transaction.
    pub(crate) outcomes: BTreeMap<u64, String>,
    /// What the restarted node found in its log.
    pub(crate) recovered: Vec<String>,
    /// The participants that reached a final outcome while the killed node
    /// was down.
    pub(crate) decided_while_down: BTreeSet<u64>,
}

impl Report {
    /// What each scenario is expected to end with.
    pub(crate) fn expected(&self) -> BTreeMap<u64, &'static str> {
        let all = |o| BTreeMap::from([(0, o), (1, o), (2, o), (3, o)]);
        match self.scenario {
            "before-decision" => {
                let mut m = all("aborted");
                m.insert(
                    3,
                    "HEURISTIC: outcome Abort, but the resource had applied Commit on its own",
                );
                m
            }
            "before-precommit" => all("aborted"),
            _ => all("committed"),
        }
    }

    pub(crate) fn as_expected(&self) -> bool {
        let expected: BTreeMap<u64, String> = self
            .expected()
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        self.outcomes == expected
    }
}

impl Report {
    /// The outcomes, and whether they are the expected ones.
    pub(crate) fn summary(&self) -> String {
        let mut out = String::from("  -- outcome of t1 at each node:\n");
        for (node, o) in &self.outcomes {
            out.push_str(&format!("       n{node}: {o}\n"));
        }
        out.push_str(if self.as_expected() {
            "  -- as expected"
        } else {
            "  -- NOT AS EXPECTED"
        });
        out
    }
}

/// One line of the transcript.
fn transcript_line(node: u64, life: u32, text: &str) -> String {
    let who = if node == 0 {
        "coordinator n0".to_string()
    } else {
        format!("participant n{node}")
    };
    format!("  {who:<16} life {life}: {text}")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== scenario {} ==", self.scenario)?;
        for (node, life, line) in &self.transcript {
            writeln!(f, "{}", transcript_line(*node, *life, line))?;
        }
        write!(f, "{}", self.summary())
    }
}

/// A child process, killed if still running when dropped; its tagged stdout
/// lines go to the demo's channel.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

type Line = (u64, u32, Option<String>);

impl Proc {
    fn start(
        spawn: Spawner<'_>,
        args: &[String],
        who: (u64, u32),
        lines: &mpsc::Sender<Line>,
    ) -> Result<Proc, String> {
        let mut child = spawn(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting n{}: {e}", who.0))?;
        let stdout = child.stdout.take().expect("piped");
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(TAG) {
                    let _ = lines.send((who.0, who.1, Some(line[at + TAG.len()..].to_string())));
                }
            }
            let _ = lines.send((who.0, who.1, None));
        });
        let stdin = child.stdin.take();
        Ok(Proc { child, stdin })
    }

    /// SIGKILL, and how it ended.
    fn kill(&mut self) -> String {
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => {
                #[cfg(unix)]
                {
                    use std::os::unix::process::ExitStatusExt;
                    if let Some(sig) = status.signal() {
                        return format!("killed by signal {sig}");
                    }
                }
                format!("ended: {status}")
            }
            Err(e) => format!("wait failed: {e}"),
        }
    }

    fn tell(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Closing stdin ends the child; kill it if it lingers.
        self.stdin.take();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.port())
}

/// How long the demo waits for a line it expects before it gives up: a
/// bound against hangs, not a timing being measured.
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs one scenario: see the module docs.
pub(crate) fn demo(
    scenario: &'static str,
    spawn: Spawner<'_>,
    keep: bool,
    quiet: bool,
) -> Result<Report, String> {
    let base =
        std::env::temp_dir().join(format!("ft-commit-crash-{}-{scenario}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let ports: Vec<String> = (0..4)
        .map(|_| free_port().map(|p| p.to_string()))
        .collect::<Result<_, _>>()?;
    let three = scenario == "before-precommit";
    let victim = if scenario == "after-commit" { 1 } else { 0 };
    let args = |id: u64, crash: Option<&str>, first_life: bool| -> Vec<String> {
        let dir: &Path = &base.join(format!("n{id}"));
        let mut a: Vec<String> = vec![
            "node".into(),
            "--id".into(),
            id.to_string(),
            "--dir".into(),
            dir.display().to_string(),
            "--ports".into(),
            ports.join(","),
            "--protocol".into(),
            if three { "3pc" } else { "2pc" }.into(),
        ];
        if id == 0 && first_life {
            a.push("--begin".into());
        }
        if let Some(c) = crash {
            a.extend(["--crash".into(), c.into()]);
        }
        a
    };
    let mut report = Report {
        scenario,
        ..Report::default()
    };
    let (send, lines) = mpsc::channel::<Line>();
    let mut procs: BTreeMap<u64, Proc> = BTreeMap::new();
    let mut lives: BTreeMap<u64, u32> = BTreeMap::new();
    let say = |r: &mut Report, node: u64, life: u32, line: String| {
        if !quiet {
            println!("{}", transcript_line(node, life, &line));
        }
        r.transcript.push((node, life, line));
    };

    // Reads lines until `done` holds for the report.
    let wait = |r: &mut Report, what: &str, done: &dyn Fn(&Report) -> bool| -> Result<(), String> {
        let until = Instant::now() + PATIENCE;
        while !done(r) {
            let left = until.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok((node, life, Some(line))) => {
                    if let Some(on) =
                        line.strip_prefix(&format!("outcome {}: blocked on ", tx_id()))
                    {
                        r.blocked.insert(node, on.to_string());
                    } else if let Some(o) = line.strip_prefix(&format!("outcome {}: ", tx_id())) {
                        r.outcomes.insert(node, o.to_string());
                    }
                    if line.starts_with("recovered ") && node == victim && life > 0 {
                        r.recovered.push(line["recovered ".len()..].to_string());
                    }
                    say(r, node, life, line);
                }
                Ok((_, _, None)) => {}
                Err(_) => return Err(format!("{scenario}: gave up waiting for {what}\n{r}")),
            }
        }
        Ok(())
    };
    let up = |n: u64| {
        move |r: &Report| {
            r.transcript
                .iter()
                .any(|(m, _, l)| *m == n && l.starts_with("up "))
        }
    };

    // Participants first, then the coordinator, which begins at once.
    for id in [1, 2, 3, 0] {
        let crash = match (id == victim, scenario) {
            (true, "after-commit") => Some("after-commit"),
            (true, s) => Some(s),
            _ => None,
        };
        procs.insert(
            id,
            Proc::start(spawn, &args(id, crash, true), (id, 0), &send)?,
        );
        lives.insert(id, 0);
        wait(&mut report, "the node to start", &up(id))?;
    }
    wait(&mut report, "the process to stop at its point", &|r| {
        r.transcript
            .iter()
            .any(|(_, _, l)| l.starts_with("stopped "))
    })?;
    let how = procs.get_mut(&victim).expect("started").kill();
    say(
        &mut report,
        victim,
        0,
        format!("** {how} (SIGKILL from the demo) **"),
    );
    report.killed = Some((victim, how));
    report.outcomes.remove(&victim);

    let others: Vec<u64> = (1..4).filter(|&n| n != victim).collect();
    match scenario {
        "before-decision" | "after-decision" => {
            wait(&mut report, "every participant to block", &|r| {
                others.iter().all(|n| r.blocked.contains_key(n))
            })?;
            if scenario == "before-decision" {
                // An operator frees node 3's locks by guessing "commit".
                procs.get_mut(&3).expect("n3").tell("heuristic commit");
                wait(&mut report, "the operator's decision", &|r| {
                    r.transcript
                        .iter()
                        .any(|(n, _, l)| *n == 3 && l.starts_with("operator:"))
                })?;
            }
        }
        "before-precommit" => {
            wait(
                &mut report,
                "the participants to terminate without the coordinator",
                &|r| others.iter().all(|n| r.outcomes.contains_key(n)),
            )?;
            report.decided_while_down = others.iter().copied().collect();
        }
        _ => {}
    }

    // The same node id, the same directory, a new life.
    let life = lives[&victim] + 1;
    procs.insert(
        victim,
        Proc::start(spawn, &args(victim, None, false), (victim, life), &send)?,
    );
    say(
        &mut report,
        victim,
        life,
        "** restarted on the same directory **".into(),
    );
    wait(&mut report, "every node's outcome", &|r| {
        (0..4).all(|n| r.outcomes.contains_key(&n))
    })?;
    drop(procs);
    if keep {
        println!("  (directories kept in {})", base.display());
    } else {
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(report)
}

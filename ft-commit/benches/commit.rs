//! Committed transactions per second, with 3 participants and FileLogs on
//! disk, at 1 and 64 concurrent transactions, for each commit protocol, and
//! the same transactions as two-phase commit across three PostgreSQL
//! databases (`PREPARE TRANSACTION` / `COMMIT PREPARED`) in the same run.
//!
//! ```text
//! cargo bench -p ft-commit --bench commit
//! FT_COMMIT_BENCH_RUNS=5 FT_COMMIT_BENCH_SECS=2 cargo bench -p ft-commit --bench commit
//! FT_COMMIT_BENCH_PROTOCOLS=2PC,3PC FT_COMMIT_BENCH_POSTGRES=0 cargo bench -p ft-commit --bench commit
//! ```
//!
//! `FT_COMMIT_BENCH_PROTOCOLS` picks entries of [`protocols`] by name (all
//! by default); `FT_COMMIT_BENCH_POSTGRES=0` skips the baseline.
//!
//! # The ft setup
//!
//! Four nodes in this one process, each a driver task on one tokio runtime
//! (two worker threads): node 0 coordinates, nodes 1 to 3 take part. Each
//! node has its own directory with its own `FileLog` (real `fdatasync`),
//! opened with `ft_tokio::durable::open_with` as a real process would, and
//! its own `TcpChannel` on 127.0.0.1. Participants vote commit as soon as
//! they are asked.
//!
//! TCP rather than UDP: over loopback UDP at 64 concurrent transactions the
//! coordinator's socket (which receives three times what each participant
//! does) dropped about 60 of 11 300 datagrams in a 1 s run; with resends
//! timed beyond the run (below) a lost vote stalls its transaction, and with
//! resends at their usual 50 ms the counts would include retransmissions.
//! TCP delivers every message once, so the counts are those of a run
//! without loss, the case the README's costs describe. A closed loop at the coordinator keeps `c` transactions
//! in flight: each `Event::Decided { Commit }` (the outcome is durable: what
//! a client waits for) begins the next. A run lasts `FT_COMMIT_BENCH_SECS`
//! (2 s by default); tx/s is the commits over the time to the last one. Each
//! protocol and concurrency is run `FT_COMMIT_BENCH_RUNS` times (5), each
//! time on fresh directories, and the median is printed.
//!
//! Timeouts are set far above a run's length, so that no resend, timeout or
//! termination fires: the counts are those of a failure-free transaction.
//!
//! # Counts, checked
//!
//! After a run has drained (every participant has committed every
//! transaction), each node's own counters (`Counters::persists`, the log
//! writes the core asked for, and `Counters::messages_sent`) must be
//! exactly the documented cost per transaction (`ft-commit/README.md`,
//! "Costs per transaction") times the transactions committed, per role,
//! with no retransmission. Any difference is printed as `COUNT MISMATCH`
//! and the bench exits with status 1 after printing its table. The
//! `fsync/tx` column counts the FileLogs' `fdatasync` calls (a
//! `FileLogOptions::sync_hook` that counts): it is printed, not checked,
//! since the log's group commit merges the syncs of concurrent records.
//!
//! # The PostgreSQL baseline
//!
//! The bench starts a throwaway PostgreSQL cluster (`initdb`, then `pg_ctl
//! start`, as the `postgres` user through `runuser` when run as root) in a
//! temporary directory, with `fsync` and `synchronous_commit` on (its
//! defaults, stated anyway) and `max_prepared_transactions` = 200, creates
//! databases p1, p2, p3 each with one table, and runs the same transaction
//! shape: on three connections at once (one per database), `BEGIN; INSERT
//! one row; PREPARE TRANSACTION 'gid'`, then `COMMIT PREPARED 'gid'` on the
//! three. The client speaks PostgreSQL's simple-query protocol over the
//! cluster's Unix socket with the few lines of [`pg`] below (trust
//! authentication, no TLS), rather than adding a client crate to
//! ft-commit's dev-dependencies, which every `cargo test -p ft-commit`
//! would then compile. If PostgreSQL cannot be started, the bench says so
//! and prints ft's rows alone.
//!
//! The baseline's coordinator (this client) logs nothing: PostgreSQL's
//! forced writes are the three PREPAREs and three COMMIT PREPAREDs, where
//! ft's coordinator also makes its BEGIN and decision durable.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_commit::{
    Event, Input, PaxosCommit, PaxosConfig, ThreePhase, ThreePhaseConfig, TwoPhase, TwoPhaseConfig,
    TxId, Vote,
};
use ft_core::{Counters, DriverConfig, NodeId, Protocol, Recover, StatsReader};
use ft_storage::FileLogOptions;
use ft_tokio::{TcpChannel, TokioClock, durable};

/// Participants per transaction (nodes 1..=N; node 0 coordinates).
const N: u64 = 3;

/// The concurrencies measured.
const CONCURRENCY: [usize; 2] = [1, 64];

/// What one failure-free committed transaction costs, per role, as
/// `ft-commit/README.md` documents it.
#[derive(Clone, Copy, Debug)]
struct Costs {
    coord_writes: u64,
    coord_msgs: u64,
    part_writes: u64,
    part_msgs: u64,
    /// The coordinator's decision records may be batched (group commit):
    /// its writes are checked to be at most `coord_writes` per transaction.
    batched: bool,
}

impl Costs {
    fn writes(&self) -> u64 {
        self.coord_writes + N * self.part_writes
    }

    fn msgs(&self) -> u64 {
        self.coord_msgs + N * self.part_msgs
    }
}

/// One measured run.
#[derive(Clone, Debug)]
struct Run {
    committed: u64,
    tx_per_s: f64,
    msgs_per_tx: f64,
    writes_per_tx: f64,
    fsyncs_per_tx: f64,
    /// Differences from the documented costs (empty when they agree).
    mismatches: Vec<String>,
}

type RunFuture = Pin<Box<dyn Future<Output = Result<Measured, String>>>>;

/// One protocol of the table: its name, its documented costs, and how to
/// run it at a concurrency for a duration in a directory.
struct Entry {
    name: &'static str,
    costs: Costs,
    run: fn(usize, Duration, PathBuf) -> RunFuture,
}

/// 2PC with timeouts far above a run's length (see the module docs), and
/// compaction off: its snapshot record (one per `snapshot_every` records)
/// belongs to no transaction, so it would blur the per-transaction counts.
fn two_phase_config() -> TwoPhaseConfig {
    TwoPhaseConfig {
        retry: Duration::from_secs(60),
        vote_timeout: Duration::from_secs(120),
        prepare_timeout: Duration::from_secs(120),
        decision_timeout: Duration::from_secs(180),
        snapshot_every: 0,
        ..TwoPhaseConfig::default()
    }
}

/// 2PC with presumed abort.
fn presumed_abort_config() -> TwoPhaseConfig {
    TwoPhaseConfig {
        presumed_abort: true,
        ..two_phase_config()
    }
}

/// 2PC with presumed abort and group commit of decision records.
fn group_commit_config() -> TwoPhaseConfig {
    TwoPhaseConfig {
        group_commit: true,
        ..presumed_abort_config()
    }
}

/// 3PC likewise (`decision_timeout` above `vote_timeout`, as it requires).
fn three_phase_config() -> ThreePhaseConfig {
    ThreePhaseConfig {
        retry: Duration::from_secs(60),
        vote_timeout: Duration::from_secs(120),
        prepare_timeout: Duration::from_secs(120),
        decision_timeout: Duration::from_secs(180),
        collect: Duration::from_secs(10),
        ..ThreePhaseConfig::default()
    }
}

/// Paxos Commit with the participants n1..n3 as its acceptors (F = 1),
/// timeouts likewise far above a run, compaction off.
fn paxos_config() -> PaxosConfig {
    PaxosConfig {
        retry: Duration::from_secs(60),
        vote_timeout: Duration::from_secs(120),
        prepare_timeout: Duration::from_secs(120),
        takeover_timeout: Duration::from_secs(180),
        // Compaction off, as for 2PC: its snapshots belong to no
        // transaction.
        snapshot_every: 0,
        ..PaxosConfig::new((1..=N).map(NodeId).collect())
    }
}

/// The protocols measured, one entry each.
fn protocols() -> Vec<Entry> {
    vec![
        Entry {
            name: "2PC",
            // README: coordinator BEGIN, decision, END and 2n messages
            // (VOTE_REQUEST, GLOBAL_COMMIT); participant READY, COMMIT and
            // VOTE_COMMIT, ACK (asserted in tests/crash_points.rs too).
            costs: Costs {
                coord_writes: 3,
                coord_msgs: 2 * N,
                part_writes: 2,
                part_msgs: 2,
                batched: false,
            },
            run: |c, d, dir| Box::pin(run_ft::<TwoPhase>(two_phase_config(), c, d, dir)),
        },
        Entry {
            name: "2PC-PA",
            // Presumed abort: no BEGIN record; a commit costs the decision
            // and END (tests/crash_points.rs asserts it too).
            costs: Costs {
                coord_writes: 2,
                coord_msgs: 2 * N,
                part_writes: 2,
                part_msgs: 2,
                batched: false,
            },
            run: |c, d, dir| Box::pin(run_ft::<TwoPhase>(presumed_abort_config(), c, d, dir)),
        },
        Entry {
            name: "2PC-PA-GC",
            // Presumed abort and group commit: decisions taken while one is
            // being written share the next write.
            costs: Costs {
                coord_writes: 2,
                coord_msgs: 2 * N,
                part_writes: 2,
                part_msgs: 2,
                batched: true,
            },
            run: |c, d, dir| Box::pin(run_ft::<TwoPhase>(group_commit_config(), c, d, dir)),
        },
        Entry {
            name: "3PC",
            // README: coordinator WAIT, PRECOMMIT, COMMIT and 3n messages
            // (VOTE_REQUEST, PREPARE_COMMIT, GLOBAL_COMMIT); participant
            // READY, PRECOMMIT, COMMIT and VOTE_COMMIT, READY_COMMIT.
            costs: Costs {
                coord_writes: 3,
                coord_msgs: 3 * N,
                part_writes: 3,
                part_msgs: 2,
                batched: false,
            },
            run: |c, d, dir| Box::pin(run_ft::<ThreePhase>(three_phase_config(), c, d, dir)),
        },
        Entry {
            name: "Paxos",
            // README: the three participants are also the 2F+1 = 3
            // acceptors. Coordinator: BEGIN and DECIDED (neither waited
            // for) and PREPARE, OUTCOME to each participant. Participant:
            // its vote (forced), the acceptance of each of the N instances
            // (forced), the outcome (not waited for); phase 2a to each of
            // the 3 acceptors and a phase 2b per instance to the leader.
            costs: Costs {
                coord_writes: 2,
                coord_msgs: 2 * N,
                part_writes: 2 + N,
                part_msgs: 3 + N,
                batched: false,
            },
            run: |c, d, dir| Box::pin(run_ft::<PaxosCommit>(paxos_config(), c, d, dir)),
        },
    ]
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A node's driver, its counters, and the fdatasyncs of its log.
struct Node {
    stats: StatsReader,
    syncs: Arc<AtomicU64>,
    driver: tokio::task::JoinHandle<Result<(), ft_core::DriverError>>,
}

/// Runs one protocol: 4 nodes, `conc` transactions in flight, for `dur`.
async fn run_ft<P>(
    config: P::Config,
    conc: usize,
    dur: Duration,
    dir: PathBuf,
) -> Result<Measured, String>
where
    P: Protocol<Input = Input, Event = Event> + Recover + Send + 'static,
    P::Message: Send,
    P::Timer: Send + 'static,
    P::Config: Send + 'static,
{
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let ids: Vec<NodeId> = (0..=N).map(NodeId).collect();
    let mut channels = Vec::new();
    for &id in &ids {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let ch = TcpChannel::bind(id, addr, BTreeMap::new())
            .await
            .map_err(|e| err("binding a TCP listener", &e))?;
        channels.push(ch);
    }
    let addrs: Vec<SocketAddr> = channels.iter().map(TcpChannel::local_addr).collect();
    for ch in &channels {
        for (&id, &addr) in ids.iter().zip(&addrs) {
            ch.set_peer(id, addr);
        }
    }

    let mut nodes = Vec::new();
    let mut handles = Vec::new();
    // Stops every driver and task of this run however it ends (an early
    // error return included), so that none outlives it.
    let mut guard = AbortOnDrop(Vec::new());
    for (&id, ch) in ids.iter().zip(channels) {
        let syncs = Arc::new(AtomicU64::new(0));
        let counted = syncs.clone();
        let options = FileLogOptions {
            sync_hook: Some(Arc::new(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })),
            ..FileLogOptions::default()
        };
        let node_dir = dir.join(format!("node{}", id.0));
        let opened = durable::open_with::<P>(&config, id, &node_dir, 7, options)
            .await
            .map_err(|e| err("opening a node's FileLog", &e))?;
        let (handle, driver) = ft_tokio::spawn(
            opened.core,
            ch,
            TokioClock,
            opened.log,
            DriverConfig::default(),
        );
        guard.0.push(driver.abort_handle());
        nodes.push(Node {
            stats: handle.stats_reader(),
            syncs,
            driver,
        });
        handles.push(handle);
    }
    let mut handles = handles.into_iter();
    let mut coord = handles.next().expect("the coordinator");

    // Participants: vote commit at once, count commits.
    let mut part_commits = Vec::new();
    let trouble = Arc::new(AtomicU64::new(0));
    for mut h in handles {
        let commits = Arc::new(AtomicU64::new(0));
        part_commits.push(commits.clone());
        let trouble = trouble.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = h.next_event().await {
                match ev {
                    Event::Prepare { tx } => {
                        let _ = h.input(Input::Voted {
                            tx,
                            vote: Vote::Commit,
                        });
                    }
                    Event::Commit { .. } => {
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        trouble.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        guard.0.push(task.abort_handle());
    }

    // The coordinator's closed loop.
    let mut next = 0u64;
    let mut begin = |coord: &ft_core::Handle<P>| {
        let tx = TxId::new(Bytes::from(format!("tx{next}"))).expect("a short id");
        next += 1;
        coord
            .input(Input::Begin {
                tx,
                participants: ids[1..].to_vec(),
            })
            .map_err(|e| err("beginning a transaction", &e))
    };
    let start = Instant::now();
    let deadline = start + dur;
    for _ in 0..conc {
        begin(&coord)?;
    }
    let mut in_flight = conc;
    let mut committed = 0u64;
    let mut last = start;
    let watchdog = dur + Duration::from_secs(30);
    while in_flight > 0 {
        let ev = tokio::time::timeout_at((start + watchdog).into(), coord.next_event())
            .await
            .map_err(|_| {
                let counts: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("{:?} {:?}", n.stats.counters(), n.stats.stats()))
                    .collect();
                format!(
                    "transactions did not finish within 30 s of the run's end \
                     ({in_flight} in flight, {committed} committed); nodes: {counts:#?}"
                )
            })?
            .ok_or("the coordinator's driver stopped")?;
        match ev {
            Event::Decided { outcome, .. } => {
                in_flight -= 1;
                if outcome != Vote::Commit {
                    return Err("a transaction aborted in a failure-free run".into());
                }
                committed += 1;
                last = Instant::now();
                if last < deadline {
                    begin(&coord)?;
                    in_flight += 1;
                }
            }
            Event::Refused { reason, .. } => return Err(format!("Begin refused: {reason}")),
            _ => {}
        }
    }
    let elapsed = last.duration_since(start).as_secs_f64();
    // Keep reading the coordinator's events (Finished) so that it never
    // waits on a full event queue while it finishes.
    let drain = tokio::spawn(async move { while coord.next_event().await.is_some() {} });
    guard.0.push(drain.abort_handle());

    // Drain: every participant has committed every transaction, then the
    // counters settle (2PC's END after the last ACKs).
    let drain_until = Instant::now() + Duration::from_secs(30);
    while part_commits
        .iter()
        .any(|c| c.load(Ordering::Relaxed) < committed)
    {
        if Instant::now() > drain_until {
            return Err("participants did not all commit within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = |nodes: &[Node]| {
        nodes.iter().fold((0, 0), |(p, m), n| {
            let c = n.stats.counters();
            (p + c.persists, m + c.messages_sent)
        })
    };
    let mut seen = total(&nodes);
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = total(&nodes);
        if now != seen {
            seen = now;
            still = Instant::now();
        }
    }
    // One more settle of the logs' syncs (END is written, not waited for).
    tokio::time::sleep(Duration::from_millis(50)).await;

    let counters: Vec<Counters> = nodes.iter().map(|n| n.stats.counters()).collect();
    let syncs: u64 = nodes.iter().map(|n| n.syncs.load(Ordering::Relaxed)).sum();
    drop(guard);
    for n in nodes {
        n.driver.abort();
        let _ = n.driver.await;
    }

    Ok(Measured {
        committed,
        secs: elapsed,
        counters,
        syncs,
        trouble: trouble.load(Ordering::Relaxed),
    })
}

/// What [`run_ft`] counted.
struct Measured {
    committed: u64,
    /// From the first Begin to the last commit.
    secs: f64,
    /// Each node's counters, node 0 the coordinator.
    counters: Vec<Counters>,
    /// fdatasyncs of all four logs.
    syncs: u64,
    /// Participant events other than Prepare and Commit.
    trouble: u64,
}

/// Per-transaction figures of `m`, and every count that differs from
/// `costs` times the commits, per node.
fn summarize(costs: &Costs, m: &Measured) -> Run {
    let k = m.committed;
    let per_tx = |x: u64| x as f64 / k.max(1) as f64;
    let mut mismatches = Vec::new();
    if m.trouble > 0 {
        mismatches.push(format!(
            "participants were told {} events other than Prepare or Commit",
            m.trouble
        ));
    }
    for (i, c) in m.counters.iter().enumerate() {
        let (role, writes, msgs) = if i == 0 {
            ("coordinator", costs.coord_writes, costs.coord_msgs)
        } else {
            ("participant", costs.part_writes, costs.part_msgs)
        };
        let batched = i == 0 && costs.batched;
        if (batched && c.persists > writes * k) || (!batched && c.persists != writes * k) {
            mismatches.push(format!(
                "node {i} ({role}): {} log writes for {k} tx, documented {writes}/tx = {}",
                c.persists,
                writes * k
            ));
        }
        if c.messages_sent != msgs * k {
            mismatches.push(format!(
                "node {i} ({role}): {} messages for {k} tx, documented {msgs}/tx = {}",
                c.messages_sent,
                msgs * k
            ));
        }
        if c.retransmissions != 0 {
            mismatches.push(format!(
                "node {i} ({role}): {} retransmissions in a failure-free run",
                c.retransmissions
            ));
        }
    }
    Run {
        committed: k,
        tx_per_s: k as f64 / m.secs.max(1e-9),
        msgs_per_tx: per_tx(m.counters.iter().map(|c| c.messages_sent).sum()),
        writes_per_tx: per_tx(m.counters.iter().map(|c| c.persists).sum()),
        fsyncs_per_tx: per_tx(m.syncs),
        mismatches,
    }
}

/// The few lines of PostgreSQL's frontend/backend protocol (version 3.0)
/// the baseline needs: startup with trust authentication over a Unix
/// socket, and simple queries.
mod pg {
    use std::io;
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;

    /// Longest backend message accepted (the baseline's are tiny).
    const MAX_MESSAGE: usize = 1 << 20;

    /// One connection to one database.
    pub(crate) struct Conn {
        stream: BufReader<UnixStream>,
    }

    impl Conn {
        /// Connects to `database` as `user` through the socket file `socket`.
        pub(crate) async fn connect(socket: &Path, user: &str, database: &str) -> io::Result<Conn> {
            let mut body = 196_608u32.to_be_bytes().to_vec(); // protocol 3.0
            for (key, value) in [("user", user), ("database", database)] {
                body.extend_from_slice(key.as_bytes());
                body.push(0);
                body.extend_from_slice(value.as_bytes());
                body.push(0);
            }
            body.push(0);
            let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
            msg.extend_from_slice(&body);
            let mut stream = UnixStream::connect(socket).await?;
            stream.write_all(&msg).await?;
            let mut conn = Conn {
                stream: BufReader::new(stream),
            };
            conn.until_ready().await?;
            Ok(conn)
        }

        /// Runs `sql` (one or more statements) and waits for its end; an
        /// error the server reports is an `Err`.
        pub(crate) async fn query(&mut self, sql: &str) -> io::Result<()> {
            let mut msg = Vec::with_capacity(sql.len() + 6);
            msg.push(b'Q');
            msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
            msg.extend_from_slice(sql.as_bytes());
            msg.push(0);
            self.stream.get_mut().write_all(&msg).await?;
            self.until_ready().await
        }

        /// Reads backend messages up to ReadyForQuery, keeping the first
        /// error's text.
        async fn until_ready(&mut self) -> io::Result<()> {
            let mut error = None;
            loop {
                let kind = self.stream.read_u8().await?;
                let len = self.stream.read_u32().await? as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(io::Error::other(format!("bad message length {len}")));
                }
                let mut body = vec![0; len - 4];
                self.stream.read_exact(&mut body).await?;
                match kind {
                    b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                        return Err(io::Error::other(
                            "the server asks for a password; the bench's cluster uses trust",
                        ));
                    }
                    b'E' if error.is_none() => {
                        // Fields: a type byte, then a C string; 'M' is the message.
                        let text = body
                            .split(|&b| b == 0)
                            .find(|f| f.first() == Some(&b'M'))
                            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                            .unwrap_or_else(|| "an error".into());
                        error = Some(text);
                    }
                    b'Z' => {
                        return match error {
                            Some(e) => Err(io::Error::other(e)),
                            None => Ok(()),
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A throwaway PostgreSQL cluster in a temporary directory, stopped and
/// removed on drop.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// `Some("postgres")` when run as root: the server refuses to run as root.
    run_as: Option<String>,
}

/// The user the baseline connects as.
const PG_USER: &str = "bench";

impl Cluster {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// initdb, start, wait until it accepts connections.
    fn start(base: &Path) -> Result<Cluster, String> {
        let bin = ["/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
            .ok_or("no initdb and pg_ctl found")?;
        let dir = base.join("postgres");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let output = |c: &mut Command| -> Result<String, String> {
            let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{c:?} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let root = output(Command::new("id").arg("-u"))? == "0";
        let run_as = if root {
            let uid: u32 = output(Command::new("id").args(["-u", "postgres"]))?
                .parse()
                .map_err(|e| format!("the postgres user's uid: {e}"))?;
            let gid: u32 = output(Command::new("id").args(["-g", "postgres"]))?
                .parse()
                .map_err(|e| format!("the postgres user's gid: {e}"))?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
            Some("postgres".to_string())
        } else {
            None
        };
        let cluster = Cluster {
            dir,
            bin,
            port: 20_000 + (std::process::id() % 20_000) as u16,
            run_as,
        };
        let data = cluster.dir.join("data");
        // --no-sync only spares initdb's own syncs; the server runs with fsync on.
        output(cluster.command("initdb").arg("-D").arg(&data).args([
            "-U",
            PG_USER,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]))?;
        let options = format!(
            "-c port={} -c listen_addresses='' -c unix_socket_directories='{}' \
             -c max_connections=300 -c max_prepared_transactions=200 \
             -c fsync=on -c synchronous_commit=on -c full_page_writes=on",
            cluster.port,
            cluster.dir.display()
        );
        output(
            cluster
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.join("server.log"))
                .args(["-w", "-o", &options, "start"]),
        )?;
        Ok(cluster)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// Creates databases p1..p3 with the table the transactions insert into.
    async fn create_databases(&self) -> Result<(), String> {
        let e = |e: std::io::Error| format!("setting up the databases: {e}");
        let mut admin = pg::Conn::connect(&self.socket(), PG_USER, "postgres")
            .await
            .map_err(e)?;
        for db in 1..=N {
            admin
                .query(&format!("CREATE DATABASE p{db}"))
                .await
                .map_err(e)?;
            let mut c = pg::Conn::connect(&self.socket(), PG_USER, &format!("p{db}"))
                .await
                .map_err(e)?;
            c.query("CREATE TABLE t (tx bigint NOT NULL, payload int NOT NULL)")
                .await
                .map_err(e)?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The baseline: `conc` clients, each with one connection to each of the
/// three databases, committing across them with PREPARE TRANSACTION /
/// COMMIT PREPARED for `dur`. Returns the commits per second.
async fn run_pg(
    cluster: &Cluster,
    conc: usize,
    dur: Duration,
    round: usize,
) -> Result<f64, String> {
    let e = |e: std::io::Error| format!("PostgreSQL: {e}");
    let mut slots = Vec::new();
    for _ in 0..conc {
        let mut conns = Vec::new();
        for db in 1..=N {
            conns.push(
                pg::Conn::connect(&cluster.socket(), PG_USER, &format!("p{db}"))
                    .await
                    .map_err(e)?,
            );
        }
        slots.push(conns);
    }
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for (slot, conns) in slots.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let [mut a, mut b, mut c]: [pg::Conn; 3] = conns
                .try_into()
                .map_err(|_| "three connections".to_string())?;
            let mut done = 0u64;
            let mut last = start;
            while Instant::now() < deadline {
                let id = (slot as u64) << 32 | done;
                let gid = format!("r{round}c{conc}s{slot}n{done}");
                // Global transaction ids are cluster-wide: one per database.
                let prepare = |db: u64| {
                    format!(
                        "BEGIN; INSERT INTO t VALUES ({id}, 1); PREPARE TRANSACTION '{gid}p{db}'"
                    )
                };
                let (pa, pb, pc) = (prepare(1), prepare(2), prepare(3));
                let (x, y, z) = tokio::join!(a.query(&pa), b.query(&pb), c.query(&pc));
                x.and(y).and(z).map_err(e)?;
                let commit = |db: u64| format!("COMMIT PREPARED '{gid}p{db}'");
                let (ca, cb, cc) = (commit(1), commit(2), commit(3));
                let (x, y, z) = tokio::join!(a.query(&ca), b.query(&cb), c.query(&cc));
                x.and(y).and(z).map_err(e)?;
                done += 1;
                last = Instant::now();
            }
            Ok::<_, String>((done, last))
        }));
    }
    let mut total = 0;
    let mut last = start;
    for t in tasks {
        let (done, l) = t.await.map_err(|e| format!("a client task: {e}"))??;
        total += done;
        last = last.max(l);
    }
    Ok(total as f64 / last.duration_since(start).as_secs_f64().max(1e-9))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// "min–max" of `xs`, rounded.
fn range(xs: impl Iterator<Item = f64>) -> String {
    let (lo, hi) = xs.fold((f64::INFINITY, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    format!("{lo:.0}–{hi:.0}")
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let runs = env_or("FT_COMMIT_BENCH_RUNS", 5).max(1) as usize;
    let dur = Duration::from_millis(env_or("FT_COMMIT_BENCH_SECS", 2) * 1000);
    let base = std::env::temp_dir().join(format!("ft-commit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("a temporary directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "ft-commit bench: {N} participants, FileLog in {}, {runs} runs of {} s each, \
         load average before: {}",
        base.display(),
        dur.as_secs_f64(),
        loadavg()
    );

    let entries: Vec<Entry> = match std::env::var("FT_COMMIT_BENCH_PROTOCOLS") {
        Ok(names) => {
            let names: Vec<&str> = names.split(',').map(str::trim).collect();
            protocols()
                .into_iter()
                .filter(|e| names.contains(&e.name))
                .collect()
        }
        Err(_) => protocols(),
    };
    let cluster = if env_or("FT_COMMIT_BENCH_POSTGRES", 1) == 0 {
        println!("PostgreSQL baseline skipped (FT_COMMIT_BENCH_POSTGRES=0)");
        None
    } else {
        match Cluster::start(&base) {
            Ok(c) => match rt.block_on(c.create_databases()) {
                Ok(()) => Some(c),
                Err(e) => {
                    println!("PostgreSQL baseline unavailable: {e}");
                    None
                }
            },
            Err(e) => {
                println!("PostgreSQL baseline unavailable: {e}");
                None
            }
        }
    };

    // Rounds: every protocol and the baseline once per round, so that the
    // machine's load drifting during the bench touches all of them alike.
    let mut pg_runs: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut ft_runs: BTreeMap<(usize, usize), Vec<Run>> = BTreeMap::new();
    let mut failures = Vec::new();
    for round in 0..runs {
        for conc in CONCURRENCY {
            if let Some(c) = &cluster {
                match rt.block_on(run_pg(c, conc, dur, round)) {
                    Ok(tps) => pg_runs.entry(conc).or_default().push(tps),
                    Err(e) => failures.push(format!("PostgreSQL at {conc}: {e}")),
                }
            }
            for (i, entry) in entries.iter().enumerate() {
                let dir = base.join(format!("{}-c{conc}-r{round}", entry.name));
                let measured = rt.block_on((entry.run)(conc, dur, dir.clone()));
                let _ = std::fs::remove_dir_all(&dir);
                match measured {
                    Ok(m) => ft_runs
                        .entry((i, conc))
                        .or_default()
                        .push(summarize(&entry.costs, &m)),
                    Err(e) => failures.push(format!("{} at {conc}: {e}", entry.name)),
                }
            }
        }
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&base);

    println!("load average after: {}", loadavg());
    println!();
    println!(
        "| protocol | concurrent tx | tx/s (median of {runs}) | min–max | vs PostgreSQL | messages/tx (documented) | log writes/tx (documented) | fsync/tx | tx checked |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut mismatches = Vec::new();
    for conc in CONCURRENCY {
        let pg = pg_runs.get(&conc).map(|v| median(v.clone()));
        match pg {
            Some(tps) => println!(
                "| PostgreSQL 2PC (3 databases) | {conc} | {tps:.0} | {} | 1.00 | - | 6 forced (3 PREPARE, 3 COMMIT PREPARED) | - | - |",
                range(pg_runs[&conc].iter().copied())
            ),
            None => {
                println!("| PostgreSQL 2PC (3 databases) | {conc} | n/a | - | - | - | - | - | - |")
            }
        }
        for (i, entry) in entries.iter().enumerate() {
            let Some(rs) = ft_runs.get(&(i, conc)) else {
                println!(
                    "| {} | {conc} | failed | - | - | - | - | - | - |",
                    entry.name
                );
                continue;
            };
            let tps = median(rs.iter().map(|r| r.tx_per_s).collect());
            let ratio = pg.map_or("n/a".to_string(), |p| format!("{:.2}", tps / p));
            let msgs = median(rs.iter().map(|r| r.msgs_per_tx).collect());
            let writes = median(rs.iter().map(|r| r.writes_per_tx).collect());
            let fsyncs = median(rs.iter().map(|r| r.fsyncs_per_tx).collect());
            // Transactions whose counts were checked, over all runs.
            let checked: u64 = rs.iter().map(|r| r.committed).sum();
            println!(
                "| {} | {conc} | {tps:.0} | {} | {ratio} | {msgs:.2} ({}) | {writes:.2} ({}) | {fsyncs:.2} | {checked} |",
                entry.name,
                range(rs.iter().map(|r| r.tx_per_s)),
                entry.costs.msgs(),
                entry.costs.writes(),
            );
            for (round, r) in rs.iter().enumerate() {
                for m in &r.mismatches {
                    mismatches.push(format!("{} at {conc}, run {round}: {m}", entry.name));
                }
            }
        }
    }
    println!();
    for f in &failures {
        eprintln!("RUN FAILED: {f}");
    }
    if !mismatches.is_empty() {
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("COUNT MISMATCH: measured counts differ from ft-commit/README.md's costs");
        for m in &mismatches {
            eprintln!("COUNT MISMATCH: {m}");
        }
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    }
    let ft_failed = failures.iter().any(|f| !f.starts_with("PostgreSQL"));
    if !mismatches.is_empty() || ft_failed {
        std::process::exit(1);
    }
    println!("counts agree with the documented costs in every run");
}

//! `CommitNode` in one process: four nodes as tasks, each with its own UDP
//! socket on loopback and its own FileLog, restarted on the same directory
//! with the same identity. The crash of a coordinator between the phases,
//! across real processes, is in `commit_crash.rs`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ft_commit::resource::{MemResource, MemState};
use ft_commit::{Logged, PaxosCommit, PaxosConfig, Role, ThreePhase, ThreePhaseConfig, TxId, Vote};
use ft_core::{Lsn, NodeId, StableLog, StorageError};
use ft_rpc::rpc::Executed;
use ft_storage::FileLog;
use ft_storage::testdir::TestDir;
use ft_tokio::Transport;
use ft_tokio::commit::{CommitError, CommitNode, CommitNodeBuilder, Outcome};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, Semaphore};

const N: u64 = 4;

struct Cluster {
    addrs: Vec<SocketAddr>,
    dirs: Vec<TestDir>,
    resources: Vec<Arc<MemResource>>,
}

impl Cluster {
    fn new(tag: &str) -> Self {
        let socks: Vec<UdpSocket> = (0..N)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs = socks.iter().map(|s| s.local_addr().unwrap()).collect();
        drop(socks);
        Cluster {
            addrs,
            dirs: (0..N)
                .map(|i| TestDir::new(&format!("{tag}-{i}")))
                .collect(),
            resources: (0..N).map(|_| Arc::new(MemResource::new())).collect(),
        }
    }

    fn builder(&self, i: u64) -> CommitNodeBuilder {
        let mut b = CommitNode::builder(NodeId(i))
            .data_dir(self.dirs[i as usize].path())
            .resource(self.resources[i as usize].clone())
            .seed(i);
        for (j, a) in self.addrs.iter().enumerate() {
            b = b.peer(NodeId(j as u64), *a);
        }
        b
    }

    async fn start_all(&self) -> Vec<CommitNode> {
        let mut nodes = Vec::new();
        for i in 0..N {
            nodes.push(self.builder(i).start().await.unwrap());
        }
        nodes
    }
}

fn tx(s: &str) -> TxId {
    TxId::new(Bytes::copy_from_slice(s.as_bytes())).unwrap()
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    // Not a timed assertion: a bound so that a bug hangs no CI run.
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("no outcome within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_at_every_participant_and_each_learns_it() {
    let c = Cluster::new("commit-ok");
    let nodes = c.start_all().await;
    let mut t = nodes[0].begin();
    t.enlist(NodeId(1)).enlist(NodeId(2)).enlist(NodeId(3));
    let id = t.id().clone();
    assert_eq!(within(t.commit()).await, Ok(Outcome::Committed));
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let outcome = within(node.outcome(&id).decided()).await;
        assert_eq!(outcome, Ok(Outcome::Committed), "node {i}");
        assert_eq!(c.resources[i].state(&id), Some(MemState::Committed));
        assert_eq!(c.resources[i].calls().prepares, 1);
    }
    // The coordinator took no part: its resource was never called.
    assert_eq!(c.resources[0].calls().prepares, 0);
    assert_eq!(nodes[0].outcome(&id).current(), Some(Outcome::Committed));
    assert_eq!(nodes[0].stats().decided, 1);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_over_tcp_too() {
    let c = Cluster::new("commit-tcp");
    let mut nodes = Vec::new();
    for i in 0..N {
        nodes.push(
            c.builder(i)
                .transport(Transport::Tcp)
                .start()
                .await
                .unwrap(),
        );
    }
    let mut t = nodes[0].begin();
    t.enlist(NodeId(1)).enlist(NodeId(2)).enlist(NodeId(3));
    let id = t.id().clone();
    assert_eq!(within(t.commit()).await, Ok(Outcome::Committed));
    for node in &nodes[1..] {
        assert_eq!(
            within(node.outcome(&id).decided()).await,
            Ok(Outcome::Committed)
        );
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_abort_vote_aborts_everywhere() {
    let c = Cluster::new("commit-abort");
    let id = tx("t-abort");
    c.resources[3].vote_on(&id, Vote::Abort);
    let nodes = c.start_all().await;
    let mut t = nodes[0].begin_with(id.clone());
    t.enlist(NodeId(1)).enlist(NodeId(2)).enlist(NodeId(3));
    assert_eq!(within(t.commit()).await, Ok(Outcome::Aborted));
    for (i, node) in nodes.iter().enumerate().skip(1) {
        assert_eq!(
            within(node.outcome(&id).decided()).await,
            Ok(Outcome::Aborted),
            "node {i}"
        );
        assert_eq!(c.resources[i].state(&id), Some(MemState::Aborted));
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A restarted coordinator reports its logged decision and refuses the id
/// again; a restarted participant applies its logged COMMIT to its
/// resource again (here a fresh one: the first life's work is "lost").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reports_logged_outcomes_and_reapplies_them() {
    let c = Cluster::new("commit-restart");
    let nodes = c.start_all().await;
    let id = tx("t-restart");
    let mut t = nodes[0].begin_with(id.clone());
    t.enlist(NodeId(1)).enlist(NodeId(2));
    assert_eq!(within(t.commit()).await, Ok(Outcome::Committed));
    for node in &nodes[1..3] {
        within(node.outcome(&id).decided()).await.unwrap();
    }
    let first = nodes[0].incarnation();
    for n in nodes {
        n.shutdown().await.unwrap();
    }

    // The participant's next life has a resource whose commit waits to be
    // released: its outcome must not be reported before the resource
    // applied it.
    let gated = Arc::new(Gated {
        mem: MemResource::new(),
        release: Notify::new(),
    });
    let coordinator = c.builder(0).start().await.unwrap();
    let participant = c.builder(1).resource(gated.clone()).start().await.unwrap();
    assert!(coordinator.incarnation() > first, "a new life");
    assert_eq!(
        coordinator.recovered(),
        &[Logged {
            tx: id.clone(),
            role: Role::Coordinator,
            outcome: Some(Vote::Commit)
        }]
    );
    assert_eq!(coordinator.outcome(&id).current(), Some(Outcome::Committed));
    assert_eq!(
        participant.recovered(),
        &[Logged {
            tx: id.clone(),
            role: Role::Participant,
            outcome: Some(Vote::Commit)
        }]
    );
    assert_eq!(
        participant.outcome(&id).current(),
        None,
        "not before the resource committed"
    );
    gated.release.notify_one();
    assert_eq!(
        within(participant.outcome(&id).decided()).await,
        Ok(Outcome::Committed)
    );
    assert_eq!(gated.mem.calls().commits, 1, "applied again");
    assert_eq!(gated.mem.state(&id), Some(MemState::Committed));

    let mut again = coordinator.begin_with(id.clone());
    again.enlist(NodeId(1));
    let refused = again.commit().await.unwrap_err();
    assert!(matches!(refused, CommitError::Refused { .. }), "{refused}");
    assert_eq!(refused.executed(), Executed::No);
    coordinator.shutdown().await.unwrap();
    participant.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_whether_the_transaction_ran() {
    let c = Cluster::new("commit-errors");
    let node = c.builder(0).start().await.unwrap();
    // No participants: refused by the core, nothing ran.
    let err = within(node.begin().commit()).await.unwrap_err();
    assert!(matches!(err, CommitError::Refused { .. }), "{err}");
    assert_eq!(err.executed(), Executed::No);
    // Begun, then the node stops before any participant answers: unknown.
    let mut t = node.begin();
    t.enlist(NodeId(1));
    let waiting = tokio::spawn(t.commit());
    let mut watch = node.outcome(&tx("never"));
    // Let the BEGIN reach the core first.
    while node.stats().core.persists == 0 {
        tokio::task::yield_now().await;
    }
    node.shutdown().await.unwrap();
    let err = within(waiting).await.unwrap().unwrap_err();
    assert_eq!(err.executed(), Executed::Unknown, "{err}");
    assert_eq!(
        within(watch.decided()).await.unwrap_err().executed(),
        Executed::Unknown
    );
}

/// The participants' side of a coordinator that stops between the phases,
/// in one process: its log layer parks the decision record (it is never
/// written), the node is dropped, the participants block, and the
/// restarted coordinator aborts. An operator decided one participant by
/// hand meanwhile: reported as heuristic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_participants_learn_the_outcome_after_the_coordinator_restarts() {
    let c = Cluster::new("commit-blocked");
    let parked = Arc::new(Notify::new());
    let p = parked.clone();
    let coordinator = c
        .builder(0)
        .wrap_log(move |log| Box::new(ParkDecision { log, parked: p }))
        .start()
        .await
        .unwrap();
    let mut participants = Vec::new();
    for i in 1..N {
        participants.push(c.builder(i).start().await.unwrap());
    }
    let id = tx("t-blocked");
    let mut t = coordinator.begin_with(id.clone());
    t.enlist(NodeId(1)).enlist(NodeId(2)).enlist(NodeId(3));
    let commit = tokio::spawn(t.commit());
    within(parked.notified()).await;
    drop(coordinator); // stops; the parked append is abandoned
    assert_eq!(
        within(commit).await.unwrap().unwrap_err().executed(),
        Executed::Unknown
    );
    for (i, p) in participants.iter().enumerate() {
        let mut w = p.outcome(&id);
        let blocked = within(w.wait_blocked()).await;
        assert_eq!(
            blocked,
            Outcome::Blocked { on: NodeId(0) },
            "node {}",
            i + 1
        );
        assert!(p.stats().blocked >= 1);
    }
    // Node 3's resource decides on its own (it reports it when the outcome
    // is applied); node 2's operator decides by hand and tells its node,
    // whose acknowledgement carries it to the coordinator.
    assert!(c.resources[3].decide_heuristically(&id, Vote::Commit));
    assert!(c.resources[2].decide_heuristically(&id, Vote::Commit));
    participants[1]
        .decide_heuristically(&id, Vote::Commit)
        .unwrap();

    // The same identity, the same directory: it finds BEGIN without a
    // decision, and aborts.
    let restarted = loop {
        match c.builder(0).start().await {
            Ok(n) => break n,
            // The dropped life's log may take a moment to be released.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(
        restarted.recovered(),
        &[Logged {
            tx: id.clone(),
            role: Role::Coordinator,
            outcome: None
        }]
    );
    // It aborts (and may have heard of node 2's damage already).
    let decided = within(restarted.outcome(&id).decided()).await;
    assert!(
        matches!(
            decided,
            Ok(Outcome::Aborted
                | Outcome::Heuristic {
                    outcome: Vote::Abort,
                    ..
                })
        ),
        "{decided:?}"
    );
    // The coordinator hears of node 2's damage.
    let mut w = restarted.outcome(&id);
    within(async {
        while !matches!(w.current(), Some(Outcome::Heuristic { .. })) {
            w.changed().await.unwrap();
        }
    })
    .await;
    assert_eq!(
        w.current(),
        Some(Outcome::Heuristic {
            outcome: Vote::Abort,
            resource: Vote::Commit
        })
    );
    for (i, p) in participants.iter().enumerate() {
        let expected = if i >= 1 {
            Outcome::Heuristic {
                outcome: Vote::Abort,
                resource: Vote::Commit,
            }
        } else {
            Outcome::Aborted
        };
        assert_eq!(within(p.outcome(&id).decided()).await, Ok(expected));
    }
    assert_eq!(participants[2].stats().heuristics, 1);
    assert_eq!(participants[1].stats().heuristics, 1);
    // Node 2's resource was not rolled back over the operator's commit.
    assert_eq!(
        c.resources[2].state(&id),
        Some(MemState::Heuristic {
            decided: Vote::Commit,
            told: None
        })
    );
    restarted.shutdown().await.unwrap();
    for p in participants {
        p.shutdown().await.unwrap();
    }
}

/// Two commits of one id at once: one runs, the other is refused
/// (executed: No) and does not take the first one's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_commit_of_the_same_id_is_refused_and_the_first_completes() {
    let c = Cluster::new("commit-twice");
    let nodes = c.start_all().await;
    let id = tx("t-twice");
    let mut first = nodes[0].begin_with(id.clone());
    first.enlist(NodeId(1));
    let mut second = nodes[0].begin_with(id.clone());
    second.enlist(NodeId(2));
    let (a, b) = within(async { tokio::join!(first.commit(), second.commit()) }).await;
    assert_eq!(a, Ok(Outcome::Committed));
    let refused = b.unwrap_err();
    assert!(matches!(refused, CommitError::Refused { .. }), "{refused}");
    assert_eq!(refused.executed(), Executed::No);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A MemResource whose commit waits to be released.
struct Gated {
    mem: MemResource,
    release: Notify,
}

#[async_trait]
impl ft_commit::Resource for Gated {
    async fn prepare(&self, tx: &TxId) -> Vote {
        self.mem.prepare(tx).await
    }
    async fn commit(&self, tx: &TxId) -> ft_commit::Applied {
        self.release.notified().await;
        self.mem.commit(tx).await
    }
    async fn abort(&self, tx: &TxId) -> ft_commit::Applied {
        self.mem.abort(tx).await
    }
}

/// A resource whose prepare waits to be released, recording the order of
/// the calls it gets.
struct SlowPrepare {
    release: Notify,
    calls: std::sync::Mutex<Vec<&'static str>>,
}

#[async_trait]
impl ft_commit::Resource for SlowPrepare {
    async fn prepare(&self, _: &TxId) -> Vote {
        self.calls.lock().unwrap().push("prepare begins");
        self.release.notified().await;
        self.calls.lock().unwrap().push("prepare ends");
        Vote::Commit
    }
    async fn commit(&self, _: &TxId) -> ft_commit::Applied {
        self.calls.lock().unwrap().push("commit");
        ft_commit::Applied::Done
    }
    async fn abort(&self, _: &TxId) -> ft_commit::Applied {
        self.calls.lock().unwrap().push("abort");
        ft_commit::Applied::Done
    }
}

/// The participant's INIT timeout aborts while its resource is still
/// preparing: the abort waits for the prepare, so the resource never ends
/// up prepared after being told to abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_during_a_prepare_waits_for_it() {
    let c = Cluster::new("commit-slow-prepare");
    let slow = Arc::new(SlowPrepare {
        release: Notify::new(),
        calls: std::sync::Mutex::new(Vec::new()),
    });
    let coordinator = c.builder(0).start().await.unwrap();
    let participant = c
        .builder(1)
        .resource(slow.clone())
        .configure(|cfg| cfg.prepare_timeout = Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let mut t = coordinator.begin();
    t.enlist(NodeId(1));
    let id = t.id().clone();
    // The participant timed out in INIT, logged ABORT and voted abort.
    assert_eq!(within(t.commit()).await, Ok(Outcome::Aborted));
    assert!(
        !slow.calls.lock().unwrap().contains(&"abort"),
        "not while the prepare runs"
    );
    slow.release.notify_one();
    assert_eq!(
        within(participant.outcome(&id).decided()).await,
        Ok(Outcome::Aborted)
    );
    assert_eq!(
        *slow.calls.lock().unwrap(),
        vec!["prepare begins", "prepare ends", "abort"]
    );
    coordinator.shutdown().await.unwrap();
    participant.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_phase_commit_runs_through_the_same_api() {
    let c = Cluster::new("commit-3pc");
    let mut nodes = Vec::new();
    for i in 0..N {
        nodes.push(
            c.builder(i)
                .core::<ThreePhase>(ThreePhaseConfig::default())
                .start()
                .await
                .unwrap(),
        );
    }
    let mut t = nodes[0].begin();
    t.enlist(NodeId(1)).enlist(NodeId(2)).enlist(NodeId(3));
    let id = t.id().clone();
    assert_eq!(within(t.commit()).await, Ok(Outcome::Committed));
    for (i, node) in nodes.iter().enumerate().skip(1) {
        assert_eq!(
            within(node.outcome(&id).decided()).await,
            Ok(Outcome::Committed)
        );
        assert_eq!(c.resources[i].state(&id), Some(MemState::Committed));
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Paxos Commit through the same API, with its promise: the coordinator
/// is gone before any participant votes (their prepares are held until it
/// stopped), so no outcome can come from it; the participants, which are
/// also the three acceptors, choose every vote by Paxos and commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paxos_commit_decides_without_its_coordinator() {
    let c = Cluster::new("commit-paxos");
    let config = PaxosConfig::new(vec![NodeId(1), NodeId(2), NodeId(3)]);
    let held: Vec<Arc<HeldPrepare>> = (0..N)
        .map(|_| {
            Arc::new(HeldPrepare {
                mem: MemResource::new(),
                go: Semaphore::new(0),
                asked: AtomicUsize::new(0),
            })
        })
        .collect();
    let coordinator = c
        .builder(0)
        .core::<PaxosCommit>(config.clone())
        .start()
        .await
        .unwrap();
    let mut participants = Vec::new();
    for i in 1..N {
        participants.push(
            c.builder(i)
                .resource(held[i as usize].clone())
                .core::<PaxosCommit>(config.clone())
                .start()
                .await
                .unwrap(),
        );
    }
    let mut t = coordinator.begin();
    t.enlist(NodeId(1)).enlist(NodeId(2)).enlist(NodeId(3));
    let id = t.id().clone();
    let commit = tokio::spawn(t.commit());
    within(async {
        while held[1..]
            .iter()
            .any(|h| h.asked.load(Ordering::SeqCst) == 0)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    coordinator.shutdown().await.unwrap();
    assert_eq!(
        within(commit).await.unwrap().unwrap_err().executed(),
        Executed::Unknown
    );
    for h in &held[1..] {
        h.go.add_permits(1);
    }
    for (i, p) in participants.iter().enumerate() {
        assert_eq!(
            within(p.outcome(&id).decided()).await,
            Ok(Outcome::Committed),
            "node {}",
            i + 1
        );
        assert_eq!(held[i + 1].mem.state(&id), Some(MemState::Committed));
    }
    for p in participants {
        p.shutdown().await.unwrap();
    }
}

/// A resource whose prepare waits for a permit, counting the prepares
/// asked.
struct HeldPrepare {
    mem: MemResource,
    go: Semaphore,
    asked: AtomicUsize,
}

#[async_trait]
impl ft_commit::Resource for HeldPrepare {
    async fn prepare(&self, tx: &TxId) -> Vote {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.go.acquire().await.unwrap().forget();
        self.mem.prepare(tx).await
    }
    async fn commit(&self, tx: &TxId) -> ft_commit::Applied {
        self.mem.commit(tx).await
    }
    async fn abort(&self, tx: &TxId) -> ft_commit::Applied {
        self.mem.abort(tx).await
    }
}

trait WaitBlocked {
    async fn wait_blocked(&mut self) -> Outcome;
}

impl WaitBlocked for ft_tokio::commit::OutcomeWatch {
    async fn wait_blocked(&mut self) -> Outcome {
        loop {
            if let Some(o @ Outcome::Blocked { .. }) = self.current() {
                return o;
            }
            self.changed().await.unwrap();
        }
    }
}

/// A log that never writes a coordinator's decision: the append parks
/// (and says so), as a process stopped just before it would.
struct ParkDecision {
    log: FileLog,
    parked: Arc<Notify>,
}

#[async_trait]
impl StableLog for ParkDecision {
    async fn append(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
        let decision = records.iter().any(|r| {
            matches!(
                ft_core::record::decode::<ft_commit::LogRecord>(r.clone()),
                Ok(ft_commit::LogRecord::Decision { .. })
            )
        });
        if decision {
            self.parked.notify_one();
            std::future::pending::<()>().await;
        }
        self.log.append(records).await
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

/// A coordinator that lost its directory comes back with the same node id
/// and a fresh log (incarnation 1 again): the ids it generates must not
/// repeat those of its earlier life, which the participants still hold
/// (with a reused id the new transaction was never prepared and aborted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_with_a_new_directory_never_reuses_an_id() {
    let c = Cluster::new("commit-new-dir");
    let nodes = c.start_all().await;
    let mut t = nodes[0].begin();
    t.enlist(NodeId(1)).enlist(NodeId(2));
    let first = t.id().clone();
    assert_eq!(within(t.commit()).await, Ok(Outcome::Committed));
    let mut nodes = nodes.into_iter();
    let old = nodes.next().unwrap();
    let first_life = old.incarnation();
    old.shutdown().await.unwrap();
    // The same id, a new empty directory.
    let fresh = TestDir::new("commit-new-dir-fresh");
    let builder = || {
        let mut b = CommitNode::builder(NodeId(0))
            .data_dir(fresh.path())
            .resource(c.resources[0].clone())
            .seed(0);
        for (j, a) in c.addrs.iter().enumerate() {
            b = b.peer(NodeId(j as u64), *a);
        }
        b
    };
    let reborn = loop {
        match builder().start().await {
            Ok(n) => break n,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(
        reborn.incarnation(),
        first_life,
        "a new directory starts over"
    );
    // A reused id would be taken for the old, finished transaction (no
    // prepare, no vote: the new one would only abort by its vote timeout).
    let mut t = reborn.begin();
    t.enlist(NodeId(1)).enlist(NodeId(2));
    let second = t.id().clone();
    assert_ne!(second, first);
    assert_eq!(within(t.commit()).await, Ok(Outcome::Committed));
    let rest: Vec<CommitNode> = nodes.collect();
    assert_eq!(
        within(rest[0].outcome(&second).decided()).await,
        Ok(Outcome::Committed)
    );
    assert_eq!(c.resources[1].state(&second), Some(MemState::Committed));
    reborn.shutdown().await.unwrap();
    for n in rest {
        n.shutdown().await.unwrap();
    }
}

/// Two processes on one directory would interleave two logs: the second
/// start is refused while the first node runs, and succeeds once it
/// stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_directory_is_refused() {
    let c = Cluster::new("commit-two-on-one-dir");
    let first = c.builder(1).start().await.unwrap();
    // Refused by the directory's lock, before any socket is bound.
    match c.builder(1).start().await {
        Err(ft_tokio::NodeError::Storage(e)) => assert!(e.to_string().contains("lock"), "{e}"),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second node started on the same directory"),
    }
    let life = first.incarnation();
    first.shutdown().await.unwrap();
    let again = loop {
        match c.builder(1).start().await {
            Ok(n) => break n,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(again.incarnation() > life);
    again.shutdown().await.unwrap();
}

/// A full disk: every append fails with ENOSPC.
struct FullDisk {
    log: FileLog,
}

#[async_trait]
impl StableLog for FullDisk {
    async fn append(&self, _: &[Bytes]) -> Result<Lsn, StorageError> {
        Err(StorageError::Io(std::io::Error::from_raw_os_error(28)))
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

/// A participant whose disk is full cannot log READY, so it never votes
/// commit: the transaction aborts and nothing is committed anywhere. A
/// coordinator whose disk is full cannot log BEGIN: its caller learns the
/// commit did not happen (or may not have: never a false "committed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_commits() {
    let c = Cluster::new("commit-full-disk");
    let coordinator = c.builder(0).start().await.unwrap();
    let full = c
        .builder(1)
        .wrap_log(|log| Box::new(FullDisk { log }))
        .start()
        .await
        .unwrap();
    let healthy = c.builder(2).start().await.unwrap();
    let mut t = coordinator.begin();
    t.enlist(NodeId(1)).enlist(NodeId(2));
    let id = t.id().clone();
    assert_eq!(within(t.commit()).await, Ok(Outcome::Aborted));
    assert_eq!(
        within(healthy.outcome(&id).decided()).await,
        Ok(Outcome::Aborted)
    );
    assert_ne!(c.resources[1].state(&id), Some(MemState::Committed));
    drop(full);

    let stuck = c
        .builder(3)
        .wrap_log(|log| Box::new(FullDisk { log }))
        .start()
        .await
        .unwrap();
    let mut t = stuck.begin();
    t.enlist(NodeId(2));
    let id = t.id().clone();
    match within(t.commit()).await {
        Ok(o) => assert_eq!(o, Outcome::Aborted),
        Err(e) => assert_ne!(e.executed(), Executed::Yes, "{e}"),
    }
    assert_ne!(c.resources[2].state(&id), Some(MemState::Committed));
    coordinator.shutdown().await.unwrap();
    healthy.shutdown().await.unwrap();
}

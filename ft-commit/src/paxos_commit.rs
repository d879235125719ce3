//! Paxos Commit (Gray & Lamport, "Consensus on Transaction Commit", 2006):
//! [`PaxosCommit`], one sans-IO core per node, which may be a resource
//! manager (RM, a participant), the coordinator (initial leader) of the
//! transactions it begins, a leader that takes over, and an acceptor.
//!
//! Two-phase commit blocks when its coordinator fails at the wrong moment;
//! three-phase commit does not block but is only safe without partitions.
//! Paxos Commit replaces the coordinator's single decision by one Paxos
//! consensus instance **per RM**, deciding that RM's vote (Prepared or
//! Aborted) among 2F+1 acceptors: the outcome is reached while at most F
//! acceptors are down, whatever else fails, and no timing assumption is
//! needed for safety.
//!
//! # The protocol
//!
//! **Normal case (ballot 0).** The coordinator sends PREPARE (with the
//! participant list) to every RM. The RM asks its application
//! ([`Event::Prepare`] → [`Input::Voted`]), logs its vote
//! ([`PaxosRecord::Voted`], **forced**) and sends phase 2a (ballot 0, its
//! value) for its own instance to every acceptor. An acceptor whose promise
//! allows it logs the acceptance ([`PaxosRecord::Accepted`], **forced**)
//! and only then sends phase 2b to the ballot's leader (in ballot 0, the
//! coordinator). The leader learns an instance chosen when F+1 acceptors
//! sent phase 2b for the same ballot; it decides COMMIT iff every instance
//! is chosen Prepared, ABORT as soon as one is chosen Aborted, and tells
//! every RM (OUTCOME). An RM logs the outcome, then tells its application
//! ([`Event::Commit`] / [`Event::Abort`]).
//!
//! **No forced write at the leader.** As in the paper, the decision is
//! fixed by the acceptors' durable state: the coordinator logs
//! [`PaxosRecord::Begin`] and [`PaxosRecord::Decided`] without waiting
//! for them (they only let a recovered coordinator tell its application
//! again, [`Event::Decided`]); a leader that loses them learns the
//! outcome again by running phase 1.
//!
//! **Leader failure, timeouts.** The coordinator that has no outcome
//! after [`PaxosConfig::vote_timeout`] runs a higher ballot itself. An RM
//! that is Prepared without an outcome after
//! [`PaxosConfig::takeover_timeout`] runs an **election by rounds**, as
//! 3PC's termination does: round `r` elects the `r`-th participant by id
//! (mod their number), each further timeout the next one, no messages.
//! The one elected leads: it picks a ballot of its own (`round ≥ 1`, its
//! incarnation, its id: unique per node and per life, so it is never
//! logged), sends phase 1a for every instance it does not know chosen,
//! and once F+1 acceptors promised (each logs [`PaxosRecord::Promised`],
//! **forced**, before its phase 1b) proposes in phase 2a, per instance,
//! the value accepted in the highest ballot reported, or **Aborted** if
//! none was (the paper's rule: a leader never proposes Prepared on its
//! own). It decides as above and sends OUTCOME to the RMs and the
//! coordinator. A leader with no outcome after `takeover_timeout` tries a
//! higher ballot. Two leaders at once are Paxos' ordinary case: at most
//! one value is chosen per instance, so they cannot disagree; timing only
//! decides when an outcome is reached.
//!
//! A recovered RM in Prepared starts its rounds with the one that elects
//! itself: it missed what happened while down, and the others have likely
//! decided and gone quiet.
//!
//! An RM in INIT times out ([`PaxosConfig::prepare_timeout`], from
//! [`Input::Join`] or [`Event::Prepare`]) and votes Aborted. An RM that
//! voted Aborted knows the outcome at once (no leader may propose
//! Prepared for its instance) and tells its application.
//!
//! # Deviations from the paper
//!
//! - **An RM's Aborted vote is forced** here (the paper lets it be
//!   unforced): this API lets the application vote again after a restart,
//!   and an RM that lost its Aborted record could then propose Prepared in
//!   the same ballot 0, which Paxos forbids. The cost is the same one
//!   forced write per RM either way.
//! - The RM's outcome record is written before the application hears the
//!   outcome (persist before speak), though no message waits for it.
//! - No bundling: each acceptor sends one phase 2b per instance, and the
//!   acceptors do not batch their writes across instances (the paper's
//!   optimizations); no co-location discounts (a message to oneself is
//!   sent and counted like any other).
//! - Election candidates are the transaction's participants (they need
//!   the outcome and know the instances); acceptors that are not
//!   participants never lead. No ACKs: an RM that misses OUTCOME times
//!   out and leads (or waits for) a ballot that tells it again.
//!
//! # Costs per transaction (no failure, no loss)
//!
//! With `N` participants and `A = 2F + 1` acceptors, all on distinct nodes
//! (asserted exactly for `N = 3`, `F = 1` in `tests/paxos_crash_points.rs`):
//!
//! | | log writes | forced | messages sent |
//! |---|---|---|---|
//! | coordinator | 2: BEGIN, DECIDED | 0 | `2N`: PREPARE, OUTCOME |
//! | each RM voting Prepared | 2: VOTED, OUTCOME | 1 (+1 the event waits on) | `A`: phase 2a |
//! | an RM voting Aborted | 1: VOTED | 1 | `A`: phase 2a |
//! | each acceptor | `N`: ACCEPTED | `N` | `N`: phase 2b |
//!
//! A committed transaction: `2N + 2NA = 2N(2F + 2)` messages (2PC here:
//! `4N`), and `N + NA = N(2F + 2)` forced writes before a send (2PC here:
//! `2N + 2`), in 4 message delays (PREPARE, 2a, 2b, OUTCOME; 2PC: 3 before
//! the participants know). With F = 0 the message count equals 2PC's.
//!
//! The table above is with compaction off (`snapshot_every: 0`). With it
//! on, the leader also sends OUTCOME to every acceptor it did not tell
//! already (`+A` messages with all roles on distinct nodes, 0 when the
//! acceptors are the participants), and every node writes one snapshot
//! record per [`PaxosConfig::snapshot_every`] records.
//!
//! # Log compaction
//!
//! Off by default (its silence about forgotten transactions costs
//! liveness in two corners, below; turn it on where a log that grows with
//! history is the greater harm, with e.g. `snapshot_every: 256`). Every
//! [`PaxosConfig::snapshot_every`] records a node cuts
//! a [`PaxosRecord::Snapshot`] (its live transactions, with the records in
//! flight applied, and the last [`PaxosConfig::keep_finished`] outcomes it
//! learned, default 1024) and, once it is durable, asks for the log
//! before it to be dropped ([`Output::Compact`]). Logs and tables (the
//! coordinator's, the RM's, the acceptor's, the leader's) then stay
//! bounded however many transactions went by; a restart tells the
//! application again only what it was not told before the snapshot.
//!
//! Paxos' safety rests on acceptors never forgetting what they promised or
//! accepted, so an acceptor forgets an instance only once the outcome of
//! its transaction is known at the node; while the outcome is in the
//! window, it answers phase 1a and phase 2a about the transaction with
//! OUTCOME (no promise, no acceptance); once it forgot any outcome, it
//! stays silent about transactions it does not know, except a phase 2a in
//! ballot 0 from the RM itself (a new transaction's vote). An RM that
//! missed OUTCOME and takes over after the acceptors compacted is thus
//! told COMMIT, or met with silence, never a promise "accepted nothing"
//! that would let it propose Aborted where Prepared was chosen. The full
//! argument, what the window assumes (unique ids, messages that do not
//! outlive it) and what silence costs (liveness in two corners) are in
//! [`crate::paxos_snapshot`]. An acceptor whose OUTCOME was lost sends
//! its phase 2b again on its [`PaxosTimer::Learn`] timer, and a leader
//! that decided answers a repeated phase 2b with OUTCOME. Open acceptor
//! transactions (outcome not
//! known) are capped by [`PaxosConfig::max_open`] (default 4096), which
//! bounds what floods of forged phase 1a / 2a can make an acceptor hold.
//!
//! # Counters
//!
//! [`CommitStats`] as for 2PC, read this way: `vote_timeouts` counts the
//! coordinator's ballots above 0 started on its vote timeout,
//! `vote_requests_resent` PREPAREs sent again, `votes_resent` phase 2a
//! of an RM's vote sent again for a repeated PREPARE; and the Paxos
//! fields `forged_sender`, `stale_ballot`, `not_acceptor`,
//! `leader_rounds` (every ballot above 0 started); with compaction
//! `snapshots`, `forgotten` (outcomes that left the window),
//! `outcome_answers`, `silent_unknown` and `acceptor_full`.
//!
//! # Bad input
//!
//! Messages about unknown transactions, from a sender that may not send
//! them (a phase 2a in ballot 0 not from its RM, a phase 1a or 2a not from
//! its ballot's leader, a phase 1b or 2b not from an acceptor), below an
//! acceptor's promise, for an old ballot, duplicated, or to a node that is
//! not an acceptor are ignored and counted in [`CommitStats`]; never a
//! panic. Acceptors keep state per instance they are told about, as any
//! Paxos acceptor must (bounded per message by [`MAX_PARTICIPANTS`], and
//! with compaction in all by [`PaxosConfig::max_open`] transactions).
//!
//! # Method groups and poll order
//!
//! Getters ([`PaxosCommit::rm_state`], [`PaxosCommit::decided`],
//! [`PaxosCommit::coordinated`], [`PaxosCommit::participating`],
//! [`PaxosCommit::accepted`], [`PaxosCommit::is_leading`],
//! [`PaxosCommit::stats`]); `handle_*` of [`Protocol`]; no mutators
//! beyond [`Input`]; `poll_output`. Outputs come out in the order decided;
//! a send or event that depends on a forced record is only emitted from
//! `handle_persisted` of that record.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ft_core::{
    Counters, Incarnation, NodeId, Outbox, Output, PersistToken, Persisted, Protocol, Recover,
    RecoveryContext, RecoveryError,
};

use crate::paxos_snapshot::{PaxosSnapshot, SnapBegun, SnapInstance, SnapRm};
use crate::paxos_wire::{Ballot, PaxosMessage, PaxosRecord, Report, Value};
use crate::two_phase::{CommitStats, Event, Input};
use crate::wire::{MAX_PARTICIPANTS, TxId, Vote};

/// The acceptors and timeouts of a [`PaxosCommit`] node: the same at every
/// node and in every life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaxosConfig {
    /// The 2F+1 acceptors (distinct; may include participants and
    /// coordinators). Outcomes are reached while at most F are down.
    pub acceptors: Vec<NodeId>,
    /// How often what may have been lost is sent again: PREPARE to RMs
    /// whose instance is not chosen, phase 1a / 2a to acceptors that have
    /// not answered.
    pub retry: Duration,
    /// Coordinator: how long ballot 0 may take before it runs a higher
    /// ballot itself (proposing Aborted for the RMs not heard from).
    pub vote_timeout: Duration,
    /// RM in INIT: abort if no PREPARE came since [`Input::Join`], or the
    /// application has not voted.
    pub prepare_timeout: Duration,
    /// RM Prepared without an outcome: time per election round; a leader
    /// without an outcome: time before its next, higher ballot.
    pub takeover_timeout: Duration,
    /// **Log compaction**: after this many records, write a
    /// [`PaxosRecord::Snapshot`] and, once durable, allow every record
    /// before it to be dropped. 0 (the default) turns compaction off (and with it the
    /// window, the OUTCOME answers of acceptors and [`Self::max_open`]).
    pub snapshot_every: u32,
    /// With compaction: how many outcomes a node keeps (in memory and in
    /// its snapshot) to answer late questions with; older ones are
    /// forgotten when a snapshot is cut. See [`crate::paxos_snapshot`]
    /// for why this is safe and what it assumes.
    pub keep_finished: usize,
    /// With compaction: the most transactions an acceptor keeps open
    /// (instances whose outcome it does not know). A phase 1a / 2a about
    /// a further one is ignored and counted
    /// ([`CommitStats::acceptor_full`]): bounds what a flood of forged
    /// messages can make an acceptor hold, at the price of acting as down
    /// for new transactions while full.
    pub max_open: usize,
}

impl PaxosConfig {
    /// Acceptors `acceptors` and the default timeouts: 50 ms retries,
    /// 500 ms vote and prepare timeouts, 600 ms per takeover round;
    /// compaction off (`keep_finished` 1024 and `max_open` 4096 once it is
    /// turned on). The
    /// takeover round outlasts the vote timeout so that a live
    /// coordinator usually finishes before an RM takes over: for fewer
    /// needless aborts, not for safety, which needs no timing.
    pub fn new(acceptors: Vec<NodeId>) -> Self {
        PaxosConfig {
            acceptors,
            retry: Duration::from_millis(50),
            vote_timeout: Duration::from_millis(500),
            prepare_timeout: Duration::from_millis(500),
            takeover_timeout: Duration::from_millis(600),
            // Off by default: silence about forgotten transactions costs
            // liveness in two corners (crate::paxos_snapshot), and the
            // promise of this protocol is not to block.
            snapshot_every: 0,
            keep_finished: 1024,
            max_open: 4096,
        }
    }

    fn compacting(&self) -> bool {
        self.snapshot_every > 0
    }

    /// F + 1: how many acceptors make a majority.
    pub fn majority(&self) -> usize {
        self.acceptors.len() / 2 + 1
    }
}

/// The named timers of a [`PaxosCommit`] node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PaxosTimer {
    /// Coordinator: ballot 0 took too long; run a higher ballot.
    Votes(TxId),
    /// Leader: resend PREPARE / phase 1a / phase 2a.
    Resend(TxId),
    /// Leader: no outcome in this ballot; try a higher one.
    Lead(TxId),
    /// RM: INIT timeout.
    Prepare(TxId),
    /// RM: Prepared without an outcome; next election round.
    Takeover(TxId),
    /// Acceptor, with compaction: the outcome of a transaction it accepted
    /// in is still unknown (OUTCOME lost); send its phase 2b again, which
    /// a leader that decided answers with OUTCOME.
    Learn(TxId),
}

/// An RM's state for one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmState {
    /// Not voted.
    Init,
    /// Voted Prepared; waits for the outcome.
    Prepared,
    /// Committed.
    Committed,
    /// Aborted (voted Aborted, or told so).
    Aborted,
}

#[derive(Debug)]
struct Rm {
    state: RmState,
    coordinator: NodeId,
    participants: Vec<NodeId>,
    pending: bool,
    asked: bool,
    joined: bool,
    round: usize,
}

#[derive(Debug)]
enum Phase {
    /// Ballot 0: the coordinator collects phase 2b.
    Zero,
    /// Collecting phase 1b for `Lead::ballot`.
    One {
        asked: Vec<NodeId>,
        promises: BTreeMap<NodeId, Vec<Report>>,
    },
    /// Proposed these values in `Lead::ballot`.
    Two { proposals: BTreeMap<NodeId, Value> },
}

#[derive(Debug)]
struct Lead {
    participants: Vec<NodeId>,
    coordinator: NodeId,
    ballot: Ballot,
    phase: Phase,
    /// Phase 2b received, per instance and ballot.
    tallies: BTreeMap<(NodeId, Ballot), (Value, BTreeSet<NodeId>)>,
    chosen: BTreeMap<NodeId, Value>,
    decided: Option<Vote>,
}

#[derive(Debug, Default)]
struct Acc {
    promised: Option<Ballot>,
    accepted: Option<(Ballot, Value)>,
    pending: bool,
}

#[derive(Debug)]
enum Pending {
    Voted(TxId, Value),
    RmOutcome(TxId, Vote),
    Promised(TxId, Ballot, Vec<NodeId>, Vec<NodeId>),
    Accepted(TxId, NodeId, Ballot, Value),
    Snapshot,
}

/// A Paxos Commit node: RM, coordinator, leader and acceptor. See the
/// [module docs](self).
#[derive(Debug)]
pub struct PaxosCommit {
    me: NodeId,
    incarnation: Incarnation,
    config: PaxosConfig,
    acceptor: bool,
    /// Transactions this node began, and what it learned of them.
    coords: BTreeMap<TxId, Option<Vote>>,
    leads: BTreeMap<TxId, Lead>,
    rms: BTreeMap<TxId, Rm>,
    accs: BTreeMap<(TxId, NodeId), Acc>,
    /// Transactions with acceptor instances here.
    acc_txs: BTreeSet<TxId>,
    pending: BTreeMap<PersistToken, Pending>,
    stats: CommitStats,
    out: Outbox<PaxosCommit>,
    /// With compaction: the window of outcomes known here (any role),
    /// and the order they were learned in.
    outcomes: BTreeMap<TxId, Vote>,
    finished: VecDeque<TxId>,
    /// Some outcome left the window (see [`crate::paxos_snapshot`]).
    forgotten: bool,
    since_snapshot: u32,
    snapshot_in_flight: bool,
}

impl PaxosCommit {
    // ---- getters ----

    /// This node.
    pub fn node(&self) -> NodeId {
        self.me
    }

    /// Counters of ignored messages, resends and takeovers.
    pub fn stats(&self) -> CommitStats {
        self.stats
    }

    /// The RM's state of `tx`, if this node takes part in it.
    pub fn rm_state(&self, tx: &TxId) -> Option<RmState> {
        self.rms.get(tx).map(|r| r.state)
    }

    /// The outcome this node learned as coordinator of `tx` (`None` if it
    /// does not coordinate it or does not know yet).
    pub fn decided(&self, tx: &TxId) -> Option<Vote> {
        self.coords.get(tx).copied().flatten()
    }

    /// Every transaction this node began, with the outcome it learned.
    pub fn coordinated(&self) -> impl Iterator<Item = (&TxId, Option<Vote>)> {
        self.coords.iter().map(|(t, o)| (t, *o))
    }

    /// Every transaction this node takes part in, with its state.
    pub fn participating(&self) -> impl Iterator<Item = (&TxId, RmState)> {
        self.rms.iter().map(|(t, r)| (t, r.state))
    }

    /// What this acceptor accepted (durably) in the instance of `rm` of
    /// `tx`.
    pub fn accepted(&self, tx: &TxId, rm: NodeId) -> Option<(Ballot, Value)> {
        self.accs.get(&(tx.clone(), rm)).and_then(|a| a.accepted)
    }

    /// With compaction: the outcome of `tx` known here (in any role), while
    /// it is in the window.
    pub fn known_outcome(&self, tx: &TxId) -> Option<Vote> {
        self.outcomes.get(tx).copied()
    }

    /// Sizes of the node's tables: (coordinator entries, RM entries,
    /// acceptor instances, outcomes in the window, leader entries). With
    /// compaction on they stay bounded by the live transactions and
    /// [`PaxosConfig::keep_finished`].
    pub fn table_sizes(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.coords.len(),
            self.rms.len(),
            self.accs.len(),
            self.outcomes.len(),
            self.leads.len(),
        )
    }

    /// Whether this node, as an acceptor, would answer a phase 1a about
    /// `tx`: it is an acceptor and knows `tx` (instances or outcome), or
    /// has forgotten nothing (see [`crate::paxos_snapshot`]).
    pub fn would_answer(&self, tx: &TxId) -> bool {
        self.acceptor
            && (!self.forgotten || self.acc_txs.contains(tx) || self.outcomes.contains_key(tx))
    }

    /// Whether this node has forgotten some outcome (and so stays silent
    /// about transactions it does not know).
    pub fn has_forgotten(&self) -> bool {
        self.forgotten
    }

    /// Whether this node leads a ballot above 0 for `tx` and has no
    /// outcome yet.
    pub fn is_leading(&self, tx: &TxId) -> bool {
        self.leads
            .get(tx)
            .is_some_and(|l| l.decided.is_none() && l.ballot.round > 0)
    }

    // ---- helpers ----

    fn ignore(&mut self, counter: fn(&mut CommitStats) -> &mut u64) {
        *counter(&mut self.stats) += 1;
        self.out.dropped();
    }

    fn log(&mut self, record: PaxosRecord, then: Option<Pending>) {
        let token = self.out.persist(&record);
        if let Some(p) = then {
            self.pending.insert(token, p);
        }
        self.since_snapshot = self.since_snapshot.saturating_add(1);
    }

    // ---- compaction ----

    fn acc_mut(&mut self, tx: &TxId, rm: NodeId) -> &mut Acc {
        if !self.acc_txs.contains(tx) {
            self.acc_txs.insert(tx.clone());
        }
        self.accs.entry((tx.clone(), rm)).or_default()
    }

    fn instance_keys(&self, tx: &TxId) -> Vec<(TxId, NodeId)> {
        self.accs
            .range((tx.clone(), NodeId(0))..=(tx.clone(), NodeId(u64::MAX)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Drops the acceptor instances of `tx` (its outcome is known here:
    /// phase 1a / 2a about it are answered with OUTCOME), unless a record
    /// of one is in flight.
    fn drop_instances(&mut self, tx: &TxId) -> bool {
        let keys = self.instance_keys(tx);
        if keys.iter().any(|k| self.accs[k].pending) {
            return false;
        }
        for k in keys {
            self.accs.remove(&k);
        }
        self.acc_txs.remove(tx);
        true
    }

    /// The outcome of `tx` is known here (any role): keep it in the
    /// window, and let the acceptor drop its instances.
    fn learned(&mut self, tx: &TxId, outcome: Vote) {
        if !self.config.compacting() || self.outcomes.contains_key(tx) {
            return;
        }
        self.outcomes.insert(tx.clone(), outcome);
        self.finished.push_back(tx.clone());
        self.drop_instances(tx);
    }

    /// Whether every role is done with `tx` (nothing in flight).
    fn settled(&self, tx: &TxId) -> bool {
        let rm_done = self
            .rms
            .get(tx)
            .is_none_or(|r| !r.pending && matches!(r.state, RmState::Committed | RmState::Aborted));
        let lead_done = self.leads.get(tx).is_none_or(|l| l.decided.is_some());
        let coord_done = self.coords.get(tx).is_none_or(|c| c.is_some());
        rm_done && lead_done && coord_done
    }

    /// Forgets the oldest outcomes beyond the window, with every table
    /// entry of their transactions. Only right before a snapshot is cut
    /// (which leaves them out): a forgotten transaction's records are gone
    /// from the log once the snapshot is durable.
    fn trim(&mut self) {
        while self.finished.len() > self.config.keep_finished {
            let tx = self.finished.front().expect("non-empty").clone();
            if !self.settled(&tx) || !self.drop_instances(&tx) {
                // Something is in flight: try again at the next snapshot.
                break;
            }
            self.finished.pop_front();
            self.outcomes.remove(&tx);
            self.rms.remove(&tx);
            self.leads.remove(&tx);
            self.coords.remove(&tx);
            for t in [
                PaxosTimer::Votes(tx.clone()),
                PaxosTimer::Resend(tx.clone()),
                PaxosTimer::Lead(tx.clone()),
                PaxosTimer::Prepare(tx.clone()),
                PaxosTimer::Takeover(tx.clone()),
                PaxosTimer::Learn(tx.clone()),
            ] {
                self.out.cancel_timer(t);
            }
            self.forgotten = true;
            self.stats.forgotten += 1;
        }
    }

    /// Writes a snapshot if enough records were written since the last
    /// one. Called at the end of every `handle_*`, when the state is whole.
    fn maybe_snapshot(&mut self) {
        let every = self.config.snapshot_every;
        if every == 0 || self.snapshot_in_flight || self.since_snapshot < every {
            return;
        }
        self.trim();
        let snap = self.snapshot();
        self.stats.snapshots += 1;
        self.snapshot_in_flight = true;
        self.log(PaxosRecord::Snapshot(snap), Some(Pending::Snapshot));
        self.since_snapshot = 0;
    }

    /// What the log says now: every table, with the records in flight
    /// applied (they come before the snapshot in the log, which replaces
    /// them).
    fn snapshot(&self) -> PaxosSnapshot {
        let mut voted: BTreeMap<&TxId, Value> = BTreeMap::new();
        let mut rm_next: BTreeMap<&TxId, Vote> = BTreeMap::new();
        // Per instance: (promise, acceptance) of the records in flight.
        type AccNext = (Option<Ballot>, Option<(Ballot, Value)>);
        let mut acc_next: BTreeMap<(TxId, NodeId), AccNext> = BTreeMap::new();
        for what in self.pending.values() {
            match what {
                Pending::Voted(tx, v) => {
                    voted.insert(tx, *v);
                }
                Pending::RmOutcome(tx, o) => {
                    rm_next.insert(tx, *o);
                }
                Pending::Promised(tx, ballot, need, _) => {
                    for &rm in need {
                        let e = acc_next.entry((tx.clone(), rm)).or_default();
                        e.0 = e.0.max(Some(*ballot));
                    }
                }
                Pending::Accepted(tx, rm, ballot, value) => {
                    let e = acc_next.entry((tx.clone(), *rm)).or_default();
                    e.0 = e.0.max(Some(*ballot));
                    e.1 = Some((*ballot, *value));
                }
                Pending::Snapshot => {}
            }
        }
        let mut snap = PaxosSnapshot {
            forgotten: self.forgotten,
            outcomes: self
                .finished
                .iter()
                .map(|t| (t.clone(), self.outcomes[t]))
                .collect(),
            ..PaxosSnapshot::default()
        };
        for (tx, outcome) in &self.coords {
            snap.begun.push(SnapBegun {
                tx: tx.clone(),
                participants: self
                    .leads
                    .get(tx)
                    .map(|l| l.participants.clone())
                    .unwrap_or_default(),
                outcome: *outcome,
                // Told when learned (the record is not forced).
                told: outcome.is_some(),
            });
        }
        for (tx, r) in &self.rms {
            let (vote, outcome, told) = match r.state {
                RmState::Init => match voted.get(tx) {
                    Some(&v) => (v, None, false),
                    None => continue,
                },
                RmState::Prepared => (Value::Prepared, rm_next.get(tx).copied(), false),
                RmState::Committed => (Value::Prepared, Some(Vote::Commit), !r.pending),
                RmState::Aborted => (Value::Aborted, Some(Vote::Abort), !r.pending),
            };
            snap.rms.push(SnapRm {
                tx: tx.clone(),
                coordinator: r.coordinator,
                participants: r.participants.clone(),
                vote,
                outcome,
                told,
            });
        }
        for ((tx, rm), a) in &self.accs {
            let next = acc_next.get(&(tx.clone(), *rm));
            let promised = a.promised.max(next.and_then(|n| n.0));
            let accepted = next.and_then(|n| n.1).or(a.accepted);
            if promised.is_none() && accepted.is_none() {
                continue;
            }
            snap.instances.push(SnapInstance {
                tx: tx.clone(),
                rm: *rm,
                promised,
                accepted,
            });
        }
        snap
    }

    /// Acceptor, before a phase 1a / 2a about `tx` (`new_ok`: a ballot-0
    /// phase 2a from the RM itself): whether to go on. Answers OUTCOME if
    /// the outcome is known here; stays silent about an unknown
    /// transaction once outcomes were forgotten, or when full.
    fn acceptor_gate(&mut self, from: NodeId, tx: &TxId, new_ok: bool) -> bool {
        if !self.config.compacting() {
            return true;
        }
        if let Some(&outcome) = self.outcomes.get(tx) {
            self.stats.outcome_answers += 1;
            self.out.send(
                from,
                PaxosMessage::Outcome {
                    tx: tx.clone(),
                    outcome,
                },
            );
            return false;
        }
        if self.acc_txs.contains(tx) {
            return true;
        }
        if self.forgotten && !new_ok {
            self.ignore(|s| &mut s.silent_unknown);
            return false;
        }
        if self.acc_txs.len() >= self.config.max_open {
            self.ignore(|s| &mut s.acceptor_full);
            return false;
        }
        true
    }

    fn send_acceptors(&mut self, msg: PaxosMessage) {
        for a in self.config.acceptors.clone() {
            self.out.send(a, msg.clone());
        }
    }

    // ---- coordinator and leader ----

    fn begin(&mut self, now: Instant, tx: TxId, participants: Vec<NodeId>) {
        let distinct: BTreeSet<NodeId> = participants.iter().copied().collect();
        let reason = if self.coords.contains_key(&tx) || self.leads.contains_key(&tx) {
            Some("this node already coordinates or leads the transaction")
        } else if participants.is_empty() {
            Some("no participants")
        } else if participants.len() > MAX_PARTICIPANTS {
            Some("more participants than MAX_PARTICIPANTS")
        } else if distinct.len() != participants.len() {
            Some("a participant is named twice")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.stats.refused += 1;
            self.out.event(Event::Refused { tx, reason });
            return;
        }
        self.coords.insert(tx.clone(), None);
        self.leads.insert(
            tx.clone(),
            Lead {
                participants: participants.clone(),
                coordinator: self.me,
                ballot: Ballot::zero(self.me),
                phase: Phase::Zero,
                tallies: BTreeMap::new(),
                chosen: BTreeMap::new(),
                decided: None,
            },
        );
        // Not forced: nothing depends on it (see the module docs).
        self.log(
            PaxosRecord::Begin {
                tx: tx.clone(),
                participants: participants.clone(),
            },
            None,
        );
        for &p in &participants {
            self.out.send(
                p,
                PaxosMessage::Prepare {
                    tx: tx.clone(),
                    participants: participants.clone(),
                },
            );
        }
        self.out
            .set_timer_after(PaxosTimer::Votes(tx.clone()), now, self.config.vote_timeout);
        self.out
            .set_timer_after(PaxosTimer::Resend(tx), now, self.config.retry);
    }

    /// Leader: a new ballot of our own, phase 1a for every instance not
    /// known chosen.
    fn start_ballot(&mut self, now: Instant, tx: &TxId) {
        let me = self.me;
        let incarnation = self.incarnation.0;
        let Some(l) = self.leads.get_mut(tx) else {
            return;
        };
        if l.decided.is_some() {
            return;
        }
        let round = l.ballot.round + 1;
        l.ballot = Ballot {
            round,
            incarnation,
            leader: me,
        };
        let asked: Vec<NodeId> = l
            .participants
            .iter()
            .copied()
            .filter(|p| !l.chosen.contains_key(p))
            .collect();
        l.phase = Phase::One {
            asked: asked.clone(),
            promises: BTreeMap::new(),
        };
        let ballot = l.ballot;
        self.stats.leader_rounds += 1;
        self.send_acceptors(PaxosMessage::Phase1a {
            tx: tx.clone(),
            ballot,
            rms: asked,
        });
        self.out
            .set_timer_after(PaxosTimer::Resend(tx.clone()), now, self.config.retry);
        self.out.set_timer_after(
            PaxosTimer::Lead(tx.clone()),
            now,
            self.config.takeover_timeout,
        );
    }

    /// The outcome, if the chosen values fix it.
    fn outcome_of(l: &Lead) -> Option<Vote> {
        if l.chosen.values().any(|v| *v == Value::Aborted) {
            Some(Vote::Abort)
        } else if l.participants.iter().all(|p| l.chosen.contains_key(p)) {
            Some(Vote::Commit)
        } else {
            None
        }
    }

    fn decide(&mut self, tx: &TxId, outcome: Vote) {
        let Some(l) = self.leads.get_mut(tx) else {
            return;
        };
        if l.decided.is_some() {
            return;
        }
        l.decided = Some(outcome);
        let mut to = l.participants.clone();
        if !to.contains(&l.coordinator) && l.coordinator != self.me {
            to.push(l.coordinator);
        }
        for t in [
            PaxosTimer::Votes(tx.clone()),
            PaxosTimer::Resend(tx.clone()),
            PaxosTimer::Lead(tx.clone()),
        ] {
            self.out.cancel_timer(t);
        }
        self.coord_learned(tx, outcome);
        self.learned(tx, outcome);
        // With compaction the acceptors learn the outcome too, so that
        // they may drop the instances (see crate::paxos_snapshot).
        if self.config.compacting() {
            for a in self.config.acceptors.clone() {
                if !to.contains(&a) && a != self.me {
                    to.push(a);
                }
            }
        }
        // A leader that is an RM of `tx` applies the outcome itself.
        if self.rms.contains_key(tx) {
            to.retain(|&n| n != self.me);
            self.rm_outcome(self.me, tx.clone(), outcome);
        }
        for n in to {
            self.out.send(
                n,
                PaxosMessage::Outcome {
                    tx: tx.clone(),
                    outcome,
                },
            );
        }
    }

    /// Coordinator: the outcome of `tx` is known; log it (not forced) and
    /// tell the application.
    fn coord_learned(&mut self, tx: &TxId, outcome: Vote) {
        let Some(slot) = self.coords.get_mut(tx) else {
            return;
        };
        if slot.is_some() {
            return;
        }
        *slot = Some(outcome);
        self.log(
            PaxosRecord::Decided {
                tx: tx.clone(),
                outcome,
            },
            None,
        );
        self.out.event(Event::Decided {
            tx: tx.clone(),
            outcome,
        });
    }

    fn phase2b(&mut self, from: NodeId, tx: TxId, rm: NodeId, ballot: Ballot, value: Value) {
        if !self.config.acceptors.contains(&from) {
            return self.ignore(|s| &mut s.forged_sender);
        }
        let majority = self.config.majority();
        let me = self.me;
        let Some(l) = self.leads.get_mut(&tx) else {
            return self.ignore(|s| &mut s.unknown_tx);
        };
        if ballot.leader != me {
            return self.ignore(|s| &mut s.forged_sender);
        }
        if !l.participants.contains(&rm) {
            return self.ignore(|s| &mut s.not_participant);
        }
        if let Some(outcome) = l.decided {
            // A repeated phase 2b after the decision: the acceptor has not
            // learned the outcome (its OUTCOME was lost); tell it again.
            let (_, set) = l
                .tallies
                .entry((rm, ballot))
                .or_insert((value, BTreeSet::new()));
            if set.insert(from) || !self.config.compacting() {
                return self.ignore(|s| &mut s.late);
            }
            self.stats.outcome_answers += 1;
            self.out
                .retransmit(from, 0, PaxosMessage::Outcome { tx, outcome });
            return;
        }
        let (v, set) = l
            .tallies
            .entry((rm, ballot))
            .or_insert((value, BTreeSet::new()));
        if *v != value {
            // Two values in one ballot: not from honest acceptors.
            return self.ignore(|s| &mut s.wrong_phase);
        }
        if !set.insert(from) {
            return self.ignore(|s| &mut s.duplicates);
        }
        if set.len() >= majority {
            match l.chosen.get(&rm) {
                Some(c) if *c != value => {
                    return self.ignore(|s| &mut s.wrong_phase);
                }
                _ => {
                    l.chosen.insert(rm, value);
                }
            }
            if let Some(o) = Self::outcome_of(l) {
                self.decide(&tx, o);
            }
        }
    }

    fn phase1b(&mut self, from: NodeId, tx: TxId, ballot: Ballot, reports: Vec<Report>) {
        if !self.config.acceptors.contains(&from) {
            return self.ignore(|s| &mut s.forged_sender);
        }
        let majority = self.config.majority();
        let Some(l) = self.leads.get_mut(&tx) else {
            return self.ignore(|s| &mut s.unknown_tx);
        };
        if l.decided.is_some() {
            return self.ignore(|s| &mut s.late);
        }
        let Phase::One { asked, promises } = &mut l.phase else {
            return self.ignore(|s| &mut s.stale_ballot);
        };
        if ballot != l.ballot {
            return self.ignore(|s| &mut s.stale_ballot);
        }
        if promises.contains_key(&from) {
            return self.ignore(|s| &mut s.duplicates);
        }
        promises.insert(from, reports);
        if promises.len() < majority {
            return;
        }
        // The paper's rule: the value of the highest ballot reported, or
        // Aborted if no acceptor of the majority accepted anything.
        let mut proposals = BTreeMap::new();
        for &rm in asked.iter() {
            if l.chosen.contains_key(&rm) {
                continue;
            }
            let best = promises
                .values()
                .flat_map(|r| r.iter())
                .filter(|(r, _)| *r == rm)
                .filter_map(|(_, acc)| *acc)
                .max_by_key(|(b, _)| *b);
            proposals.insert(rm, best.map_or(Value::Aborted, |(_, v)| v));
        }
        l.phase = Phase::Two {
            proposals: proposals.clone(),
        };
        if let Some(o) = Self::outcome_of(l) {
            return self.decide(&tx, o);
        }
        for (rm, value) in proposals {
            self.send_acceptors(PaxosMessage::Phase2a {
                tx: tx.clone(),
                rm,
                ballot,
                value,
            });
        }
    }

    fn coord_outcome(&mut self, from: NodeId, tx: &TxId, outcome: Vote) {
        let Some(l) = self.leads.get(tx) else {
            return;
        };
        if !l.participants.contains(&from)
            && from != l.coordinator
            && from != self.me
            && !self.config.acceptors.contains(&from)
        {
            return self.ignore(|s| &mut s.not_participant);
        }
        if l.decided.is_some() {
            return self.ignore(|s| &mut s.duplicates);
        }
        // Another leader learned it: stop leading, keep the answer.
        if let Some(l) = self.leads.get_mut(tx) {
            l.decided = Some(outcome);
        }
        for t in [
            PaxosTimer::Votes(tx.clone()),
            PaxosTimer::Resend(tx.clone()),
            PaxosTimer::Lead(tx.clone()),
        ] {
            self.out.cancel_timer(t);
        }
        self.coord_learned(tx, outcome);
        self.learned(tx, outcome);
    }

    fn resend(&mut self, now: Instant, tx: &TxId) {
        let Some(l) = self.leads.get(tx) else {
            return;
        };
        if l.decided.is_some() {
            return;
        }
        let mut sends: Vec<(NodeId, PaxosMessage)> = Vec::new();
        match &l.phase {
            Phase::Zero => {
                for &p in &l.participants {
                    if !l.chosen.contains_key(&p) {
                        sends.push((
                            p,
                            PaxosMessage::Prepare {
                                tx: tx.clone(),
                                participants: l.participants.clone(),
                            },
                        ));
                    }
                }
            }
            Phase::One { asked, promises } => {
                for &a in &self.config.acceptors {
                    if !promises.contains_key(&a) {
                        sends.push((
                            a,
                            PaxosMessage::Phase1a {
                                tx: tx.clone(),
                                ballot: l.ballot,
                                rms: asked.clone(),
                            },
                        ));
                    }
                }
            }
            Phase::Two { proposals } => {
                for (&rm, &value) in proposals {
                    if l.chosen.contains_key(&rm) {
                        continue;
                    }
                    let heard = l.tallies.get(&(rm, l.ballot)).map(|(_, s)| s);
                    for &a in &self.config.acceptors {
                        if !heard.is_some_and(|s| s.contains(&a)) {
                            sends.push((
                                a,
                                PaxosMessage::Phase2a {
                                    tx: tx.clone(),
                                    rm,
                                    ballot: l.ballot,
                                    value,
                                },
                            ));
                        }
                    }
                }
            }
        }
        for (to, msg) in sends {
            if matches!(msg, PaxosMessage::Prepare { .. }) {
                self.stats.vote_requests_resent += 1;
            }
            self.out.retransmit(to, 0, msg);
        }
        self.out
            .set_timer_after(PaxosTimer::Resend(tx.clone()), now, self.config.retry);
    }

    // ---- acceptor ----

    fn phase2a(&mut self, from: NodeId, tx: TxId, rm: NodeId, ballot: Ballot, value: Value) {
        if !self.acceptor {
            return self.ignore(|s| &mut s.not_acceptor);
        }
        let sender_ok = if ballot.round == 0 {
            from == rm
        } else {
            from == ballot.leader
        };
        if !sender_ok {
            return self.ignore(|s| &mut s.forged_sender);
        }
        // Only a ballot-0 phase 2a (the RM's own vote) may be about a
        // transaction an acceptor that forgot outcomes does not know.
        if !self.acceptor_gate(from, &tx, ballot.round == 0) {
            return;
        }
        let a = self.acc_mut(&tx, rm);
        if a.pending {
            return self.ignore(|s| &mut s.busy);
        }
        if a.promised.is_some_and(|p| p > ballot) {
            return self.ignore(|s| &mut s.stale_ballot);
        }
        match a.accepted {
            Some((b, v)) if b == ballot && v == value => {
                // Our phase 2b was lost: say it again (it is durable).
                self.stats.duplicates += 1;
                self.out.retransmit(
                    ballot.leader,
                    0,
                    PaxosMessage::Phase2b {
                        tx,
                        rm,
                        ballot,
                        value,
                    },
                );
                return;
            }
            Some((b, _)) if b == ballot => return self.ignore(|s| &mut s.wrong_phase),
            _ => {}
        }
        a.pending = true;
        self.log(
            PaxosRecord::Accepted {
                tx: tx.clone(),
                rm,
                ballot,
                value,
            },
            Some(Pending::Accepted(tx, rm, ballot, value)),
        );
    }

    fn phase1a(&mut self, from: NodeId, tx: TxId, ballot: Ballot, rms: Vec<NodeId>) {
        if !self.acceptor {
            return self.ignore(|s| &mut s.not_acceptor);
        }
        if ballot.round == 0 || from != ballot.leader {
            return self.ignore(|s| &mut s.forged_sender);
        }
        let distinct: BTreeSet<NodeId> = rms.iter().copied().collect();
        if distinct.len() != rms.len() || rms.is_empty() {
            return self.ignore(|s| &mut s.not_participant);
        }
        if !self.acceptor_gate(from, &tx, false) {
            return;
        }
        let mut need = Vec::new();
        for &rm in &rms {
            let a = self.accs.get(&(tx.clone(), rm));
            if a.is_some_and(|a| a.pending) {
                return self.ignore(|s| &mut s.busy);
            }
            match a.and_then(|a| a.promised) {
                Some(p) if p > ballot => return self.ignore(|s| &mut s.stale_ballot),
                Some(p) if p == ballot => {}
                _ => need.push(rm),
            }
        }
        if need.is_empty() {
            // A repeated phase 1a: the promise is durable; answer again.
            self.stats.duplicates += 1;
            let reports = self.reports(&tx, &rms);
            self.out.retransmit(
                from,
                0,
                PaxosMessage::Phase1b {
                    tx,
                    ballot,
                    reports,
                },
            );
            return;
        }
        for &rm in &need {
            self.acc_mut(&tx, rm).pending = true;
        }
        self.log(
            PaxosRecord::Promised {
                tx: tx.clone(),
                ballot,
                rms: need.clone(),
            },
            Some(Pending::Promised(tx, ballot, need, rms)),
        );
    }

    fn reports(&self, tx: &TxId, rms: &[NodeId]) -> Vec<Report> {
        rms.iter()
            .map(|&rm| {
                let acc = self.accs.get(&(tx.clone(), rm)).and_then(|a| a.accepted);
                (rm, acc)
            })
            .collect()
    }

    // ---- RM ----

    fn prepare(&mut self, now: Instant, from: NodeId, tx: TxId, participants: Vec<NodeId>) {
        let distinct: BTreeSet<NodeId> = participants.iter().copied().collect();
        if !participants.contains(&self.me) || distinct.len() != participants.len() {
            return self.ignore(|s| &mut s.not_participant);
        }
        let Some(r) = self.rms.get_mut(&tx) else {
            self.rms.insert(
                tx.clone(),
                Rm {
                    state: RmState::Init,
                    coordinator: from,
                    participants,
                    pending: false,
                    asked: true,
                    joined: false,
                    round: 0,
                },
            );
            self.out.set_timer_after(
                PaxosTimer::Prepare(tx.clone()),
                now,
                self.config.prepare_timeout,
            );
            self.out.event(Event::Prepare { tx });
            return;
        };
        if r.coordinator != from {
            return self.ignore(|s| &mut s.wrong_coordinator);
        }
        if r.pending {
            return self.ignore(|s| &mut s.busy);
        }
        match r.state {
            RmState::Init if r.asked => self.ignore(|s| &mut s.duplicates),
            RmState::Init => {
                r.asked = true;
                r.participants = participants;
                self.out.set_timer_after(
                    PaxosTimer::Prepare(tx.clone()),
                    now,
                    self.config.prepare_timeout,
                );
                self.out.event(Event::Prepare { tx });
            }
            RmState::Prepared | RmState::Aborted => {
                // Our phase 2a may have been lost: send it again (the vote
                // is durable).
                let value = if r.state == RmState::Prepared {
                    Value::Prepared
                } else {
                    Value::Aborted
                };
                let ballot = Ballot::zero(r.coordinator);
                self.stats.votes_resent += 1;
                let me = self.me;
                for a in self.config.acceptors.clone() {
                    self.out.retransmit(
                        a,
                        0,
                        PaxosMessage::Phase2a {
                            tx: tx.clone(),
                            rm: me,
                            ballot,
                            value,
                        },
                    );
                }
            }
            RmState::Committed => self.ignore(|s| &mut s.late),
        }
    }

    fn rm_vote(&mut self, tx: &TxId, value: Value) {
        let Some(r) = self.rms.get_mut(tx) else {
            return;
        };
        r.pending = true;
        let record = PaxosRecord::Voted {
            tx: tx.clone(),
            coordinator: r.coordinator,
            participants: r.participants.clone(),
            value,
        };
        self.log(record, Some(Pending::Voted(tx.clone(), value)));
    }

    fn rm_outcome(&mut self, from: NodeId, tx: TxId, outcome: Vote) {
        let Some(r) = self.rms.get_mut(&tx) else {
            return self.ignore(|s| &mut s.unknown_tx);
        };
        if from != r.coordinator
            && !r.participants.contains(&from)
            && !self.config.acceptors.contains(&from)
        {
            return self.ignore(|s| &mut s.not_participant);
        }
        if r.pending {
            return self.ignore(|s| &mut s.busy);
        }
        match (r.state, outcome) {
            (RmState::Prepared, _) => {
                r.pending = true;
                self.log(
                    PaxosRecord::Outcome {
                        tx: tx.clone(),
                        outcome,
                    },
                    Some(Pending::RmOutcome(tx, outcome)),
                );
            }
            // Never voted, and the transaction aborted: vote Aborted
            // (forced) so this RM can never propose Prepared.
            (RmState::Init, Vote::Abort) => self.rm_vote(&tx, Value::Aborted),
            (RmState::Committed, Vote::Commit) | (RmState::Aborted, Vote::Abort) => {
                self.ignore(|s| &mut s.duplicates)
            }
            _ => self.ignore(|s| &mut s.wrong_phase),
        }
    }

    /// Takeover timer: the next election round.
    fn election_round(&mut self, now: Instant, tx: &TxId) {
        let me = self.me;
        let Some(r) = self.rms.get_mut(tx) else {
            return;
        };
        if r.pending || r.state != RmState::Prepared {
            return;
        }
        let mut sorted = r.participants.clone();
        sorted.sort();
        if sorted.is_empty() {
            return;
        }
        let elected = sorted[r.round % sorted.len()];
        r.round += 1;
        let (participants, coordinator) = (r.participants.clone(), r.coordinator);
        if elected != me {
            self.out.set_timer_after(
                PaxosTimer::Takeover(tx.clone()),
                now,
                self.config.takeover_timeout,
            );
            return;
        }
        if let Some(outcome) = self.leads.get(tx).and_then(|l| l.decided) {
            // Our leader half knows it (the RM half was busy then).
            return self.rm_outcome(me, tx.clone(), outcome);
        }
        if self.is_leading(tx) {
            // Already leading (its own timer moves it on).
            return;
        }
        self.leads.entry(tx.clone()).or_insert(Lead {
            participants,
            coordinator,
            ballot: Ballot::zero(coordinator),
            phase: Phase::Zero,
            tallies: BTreeMap::new(),
            chosen: BTreeMap::new(),
            decided: None,
        });
        self.start_ballot(now, tx);
    }

    // ---- persisted ----

    fn durable(&mut self, now: Instant, what: Pending) {
        match what {
            Pending::Voted(tx, value) => {
                let me = self.me;
                let Some(r) = self.rms.get_mut(&tx) else {
                    return;
                };
                r.pending = false;
                let tell = r.asked || r.joined || r.state != RmState::Init;
                r.state = match value {
                    Value::Prepared => RmState::Prepared,
                    Value::Aborted => RmState::Aborted,
                };
                let ballot = Ballot::zero(r.coordinator);
                self.out.cancel_timer(PaxosTimer::Prepare(tx.clone()));
                self.send_acceptors(PaxosMessage::Phase2a {
                    tx: tx.clone(),
                    rm: me,
                    ballot,
                    value,
                });
                match value {
                    Value::Prepared => self.out.set_timer_after(
                        PaxosTimer::Takeover(tx),
                        now,
                        self.config.takeover_timeout,
                    ),
                    Value::Aborted => {
                        self.learned(&tx, Vote::Abort);
                        if tell {
                            self.out.event(Event::Abort { tx });
                        }
                    }
                }
            }
            Pending::RmOutcome(tx, outcome) => {
                let Some(r) = self.rms.get_mut(&tx) else {
                    return;
                };
                r.pending = false;
                r.state = match outcome {
                    Vote::Commit => RmState::Committed,
                    Vote::Abort => RmState::Aborted,
                };
                self.out.cancel_timer(PaxosTimer::Takeover(tx.clone()));
                self.learned(&tx, outcome);
                match outcome {
                    Vote::Commit => self.out.event(Event::Commit { tx }),
                    Vote::Abort => self.out.event(Event::Abort { tx }),
                }
            }
            Pending::Promised(tx, ballot, need, rms) => {
                for rm in need {
                    let a = self.acc_mut(&tx, rm);
                    a.pending = false;
                    a.promised = a.promised.max(Some(ballot));
                }
                let reports = self.reports(&tx, &rms);
                self.out.send(
                    ballot.leader,
                    PaxosMessage::Phase1b {
                        tx,
                        ballot,
                        reports,
                    },
                );
            }
            Pending::Accepted(tx, rm, ballot, value) => {
                let a = self.acc_mut(&tx, rm);
                a.pending = false;
                a.promised = a.promised.max(Some(ballot));
                a.accepted = Some((ballot, value));
                if self.config.compacting() {
                    self.out.set_timer_after(
                        PaxosTimer::Learn(tx.clone()),
                        now,
                        self.config.takeover_timeout * 2,
                    );
                }
                self.out.send(
                    ballot.leader,
                    PaxosMessage::Phase2b {
                        tx,
                        rm,
                        ballot,
                        value,
                    },
                );
            }
            Pending::Snapshot => {
                // Everything before it is in it.
                self.snapshot_in_flight = false;
            }
        }
    }

    /// Learn timer: the transaction is still open here; send the phase 2b
    /// of every instance accepted again, and try again later.
    fn learn(&mut self, now: Instant, tx: TxId) {
        if !self.config.compacting() || self.outcomes.contains_key(&tx) {
            return;
        }
        let sends: Vec<(NodeId, PaxosMessage)> = self
            .instance_keys(&tx)
            .into_iter()
            .filter_map(|k| {
                let (ballot, value) = self.accs[&k].accepted?;
                Some((
                    ballot.leader,
                    PaxosMessage::Phase2b {
                        tx: tx.clone(),
                        rm: k.1,
                        ballot,
                        value,
                    },
                ))
            })
            .collect();
        if sends.is_empty() {
            return;
        }
        for (to, msg) in sends {
            self.out.retransmit(to, 0, msg);
        }
        self.out
            .set_timer_after(PaxosTimer::Learn(tx), now, self.config.takeover_timeout * 2);
    }

    /// OUTCOME at an acceptor that knows `tx`: from the leader of a ballot
    /// it promised or accepted in (ballot 0's is the coordinator).
    fn acceptor_outcome(&mut self, from: NodeId, tx: &TxId, outcome: Vote) -> bool {
        if !self.acceptor || !self.config.compacting() || !self.acc_txs.contains(tx) {
            return false;
        }
        let leader = self.instance_keys(tx).iter().any(|k| {
            let a = &self.accs[k];
            a.promised.is_some_and(|b| b.leader == from)
                || a.accepted.is_some_and(|(b, _)| b.leader == from)
        });
        if leader {
            self.learned(tx, outcome);
        }
        leader
    }
}

impl Protocol for PaxosCommit {
    type Message = PaxosMessage;
    type Input = Input;
    type Event = Event;
    type Timer = PaxosTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: PaxosMessage) {
        self.out.received();
        match msg {
            PaxosMessage::Prepare { tx, participants } => self.prepare(now, from, tx, participants),
            PaxosMessage::Phase2a {
                tx,
                rm,
                ballot,
                value,
            } => self.phase2a(from, tx, rm, ballot, value),
            PaxosMessage::Phase1a { tx, ballot, rms } => self.phase1a(from, tx, ballot, rms),
            PaxosMessage::Phase2b {
                tx,
                rm,
                ballot,
                value,
            } => self.phase2b(from, tx, rm, ballot, value),
            PaxosMessage::Phase1b {
                tx,
                ballot,
                reports,
            } => self.phase1b(from, tx, ballot, reports),
            PaxosMessage::Outcome { tx, outcome } => {
                let lead = self.leads.contains_key(&tx);
                let rm = self.rms.contains_key(&tx);
                let acc = self.acceptor_outcome(from, &tx, outcome);
                if lead {
                    self.coord_outcome(from, &tx, outcome);
                }
                if rm {
                    self.rm_outcome(from, tx, outcome);
                } else if !lead && !acc {
                    self.ignore(|s| &mut s.unknown_tx);
                }
            }
        }
        self.maybe_snapshot();
    }

    fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Begin { tx, participants } => self.begin(now, tx, participants),
            Input::Join { tx, coordinator } => {
                if self.rms.contains_key(&tx) {
                    self.stats.wrong_phase += 1;
                    return;
                }
                self.rms.insert(
                    tx.clone(),
                    Rm {
                        state: RmState::Init,
                        coordinator,
                        participants: Vec::new(),
                        pending: false,
                        asked: false,
                        joined: true,
                        round: 0,
                    },
                );
                self.out
                    .set_timer_after(PaxosTimer::Prepare(tx), now, self.config.prepare_timeout);
            }
            Input::Voted { tx, vote } => {
                let Some(r) = self.rms.get(&tx) else {
                    self.stats.unknown_tx += 1;
                    return;
                };
                if r.state != RmState::Init || !r.asked || r.pending {
                    self.stats.wrong_phase += 1;
                    return;
                }
                let value = match vote {
                    Vote::Commit => Value::Prepared,
                    Vote::Abort => Value::Aborted,
                };
                self.rm_vote(&tx, value);
            }
            // Read-only participants are a two-phase commit optimization:
            // here a read-only vote is a commit vote (its instance must
            // still be chosen, as in 3PC).
            Input::VotedReadOnly { tx } => self.handle_input(
                now,
                Input::Voted {
                    tx,
                    vote: Vote::Commit,
                },
            ),
            // Paxos Commit does not block while a majority of acceptors is
            // up, so it takes no heuristic decisions: refused and counted.
            Input::Heuristic { .. } => self.stats.wrong_phase += 1,
        }
        self.maybe_snapshot();
    }

    fn handle_timer(&mut self, now: Instant, timer: PaxosTimer) {
        self.out.timer_fired();
        match timer {
            PaxosTimer::Votes(tx) => {
                if let Some(l) = self.leads.get(&tx)
                    && l.decided.is_none()
                    && matches!(l.phase, Phase::Zero)
                {
                    self.stats.vote_timeouts += 1;
                    self.start_ballot(now, &tx);
                }
            }
            PaxosTimer::Resend(tx) => self.resend(now, &tx),
            PaxosTimer::Lead(tx) => {
                if self.is_leading(&tx) {
                    self.start_ballot(now, &tx);
                }
            }
            PaxosTimer::Prepare(tx) => {
                if let Some(r) = self.rms.get(&tx)
                    && r.state == RmState::Init
                    && !r.pending
                {
                    self.stats.prepare_timeouts += 1;
                    self.rm_vote(&tx, Value::Aborted);
                }
            }
            PaxosTimer::Takeover(tx) => self.election_round(now, &tx),
            PaxosTimer::Learn(tx) => self.learn(now, tx),
        }
        self.maybe_snapshot();
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        let Persisted::Own(token) = self.out.persisted(token) else {
            return;
        };
        if let Some(what) = self.pending.remove(&token) {
            let snapshot = matches!(what, Pending::Snapshot);
            self.durable(now, what);
            if snapshot {
                self.out.compact(token);
            }
        }
        self.maybe_snapshot();
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        self.out.counters()
    }
}

impl Recover for PaxosCommit {
    type Config = PaxosConfig;

    fn recover(config: &PaxosConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let distinct: BTreeSet<NodeId> = config.acceptors.iter().copied().collect();
        if config.acceptors.is_empty() || distinct.len() != config.acceptors.len() {
            return Err(RecoveryError::Inconsistent(
                "the acceptors must be distinct and at least one".into(),
            ));
        }
        let records: Vec<PaxosRecord> = ctx.read()?;
        let mut core = PaxosCommit {
            me: ctx.node,
            incarnation: ctx.incarnation,
            config: config.clone(),
            acceptor: config.acceptors.contains(&ctx.node),
            coords: BTreeMap::new(),
            leads: BTreeMap::new(),
            rms: BTreeMap::new(),
            accs: BTreeMap::new(),
            acc_txs: BTreeSet::new(),
            pending: BTreeMap::new(),
            stats: CommitStats::default(),
            out: Outbox::recovered(&ctx),
            outcomes: BTreeMap::new(),
            finished: VecDeque::new(),
            forgotten: false,
            since_snapshot: 0,
            snapshot_in_flight: false,
        };
        // Outcomes the application was told before the last snapshot: not
        // told again.
        let mut told: BTreeSet<TxId> = BTreeSet::new();
        let bad = |tx: &TxId, what: &str| RecoveryError::Inconsistent(format!("{tx}: {what}"));
        let mut begun: BTreeMap<TxId, Vec<NodeId>> = BTreeMap::new();
        for r in records {
            match r {
                PaxosRecord::Begin { tx, participants } => {
                    if begun.insert(tx.clone(), participants).is_some() {
                        return Err(bad(&tx, "BEGIN logged twice"));
                    }
                    core.coords.insert(tx, None);
                }
                PaxosRecord::Decided { tx, outcome } => {
                    match core.coords.get_mut(&tx) {
                        Some(slot) if slot.is_none_or(|o| o == outcome) => *slot = Some(outcome),
                        Some(_) => return Err(bad(&tx, "two outcomes decided")),
                        None => return Err(bad(&tx, "DECIDED without BEGIN")),
                    }
                    core.learned(&tx, outcome);
                }
                PaxosRecord::Voted {
                    tx,
                    coordinator,
                    participants,
                    value,
                } => {
                    if core.rms.contains_key(&tx) {
                        return Err(bad(&tx, "an RM voted twice"));
                    }
                    if value == Value::Aborted {
                        core.learned(&tx, Vote::Abort);
                    }
                    core.rms.insert(
                        tx,
                        Rm {
                            state: match value {
                                Value::Prepared => RmState::Prepared,
                                Value::Aborted => RmState::Aborted,
                            },
                            coordinator,
                            participants,
                            pending: false,
                            asked: false,
                            joined: false,
                            round: 0,
                        },
                    );
                }
                PaxosRecord::Outcome { tx, outcome } => {
                    let Some(r) = core.rms.get_mut(&tx) else {
                        return Err(bad(&tx, "an outcome without a vote"));
                    };
                    r.state = match (r.state, outcome) {
                        (RmState::Prepared | RmState::Committed, Vote::Commit) => {
                            RmState::Committed
                        }
                        (RmState::Prepared | RmState::Aborted, Vote::Abort) => RmState::Aborted,
                        _ => return Err(bad(&tx, "an outcome contradicting the RM's state")),
                    };
                    core.learned(&tx, outcome);
                }
                PaxosRecord::Promised { tx, ballot, rms } => {
                    for rm in rms {
                        let a = core.acc_mut(&tx, rm);
                        a.promised = a.promised.max(Some(ballot));
                    }
                }
                PaxosRecord::Accepted {
                    tx,
                    rm,
                    ballot,
                    value,
                } => {
                    let a = core.acc_mut(&tx, rm);
                    if a.accepted.is_some_and(|(b, v)| b == ballot && v != value) {
                        return Err(bad(&tx, "two values accepted in one ballot"));
                    }
                    a.promised = a.promised.max(Some(ballot));
                    a.accepted = Some((ballot, value));
                }
                PaxosRecord::Snapshot(snap) => {
                    // Everything before it is in it.
                    begun.clear();
                    told.clear();
                    core.coords.clear();
                    core.rms.clear();
                    core.accs.clear();
                    core.acc_txs.clear();
                    core.outcomes.clear();
                    core.finished.clear();
                    core.forgotten = snap.forgotten;
                    for (tx, outcome) in snap.outcomes {
                        if core.outcomes.insert(tx.clone(), outcome).is_some() {
                            return Err(bad(&tx, "an outcome twice in a snapshot"));
                        }
                        core.finished.push_back(tx);
                    }
                    for b in snap.begun {
                        if b.told {
                            told.insert(b.tx.clone());
                        }
                        core.coords.insert(b.tx.clone(), b.outcome);
                        begun.insert(b.tx, b.participants);
                    }
                    for r in snap.rms {
                        let state = match (r.vote, r.outcome) {
                            (Value::Prepared, None) => RmState::Prepared,
                            (_, Some(Vote::Abort)) | (Value::Aborted, None) => RmState::Aborted,
                            (Value::Prepared, Some(Vote::Commit)) => RmState::Committed,
                            (Value::Aborted, Some(Vote::Commit)) => {
                                return Err(bad(&r.tx, "committed after voting Aborted"));
                            }
                        };
                        if r.told {
                            told.insert(r.tx.clone());
                        }
                        core.rms.insert(
                            r.tx,
                            Rm {
                                state,
                                coordinator: r.coordinator,
                                participants: r.participants,
                                pending: false,
                                asked: false,
                                joined: false,
                                round: 0,
                            },
                        );
                    }
                    for i in snap.instances {
                        let a = core.acc_mut(&i.tx, i.rm);
                        a.promised = i.promised;
                        a.accepted = i.accepted;
                    }
                }
            }
        }
        let now = ctx.now;
        // Coordinator: tell the outcome again, or learn it by a ballot of
        // our own (the acceptors hold it).
        for (tx, participants) in begun {
            match core.coords[&tx] {
                Some(outcome) => {
                    if !told.contains(&tx) {
                        core.out.event(Event::Decided {
                            tx: tx.clone(),
                            outcome,
                        });
                    }
                    core.leads.insert(
                        tx,
                        Lead {
                            participants,
                            coordinator: core.me,
                            ballot: Ballot::zero(core.me),
                            phase: Phase::Zero,
                            tallies: BTreeMap::new(),
                            chosen: BTreeMap::new(),
                            decided: Some(outcome),
                        },
                    );
                }
                None => {
                    core.leads.insert(
                        tx.clone(),
                        Lead {
                            participants,
                            coordinator: core.me,
                            ballot: Ballot::zero(core.me),
                            phase: Phase::Zero,
                            tallies: BTreeMap::new(),
                            chosen: BTreeMap::new(),
                            decided: None,
                        },
                    );
                    core.start_ballot(now, &tx);
                }
            }
        }
        // Acceptor: open transactions ask their leaders for the outcome.
        if core.config.compacting() {
            let open: Vec<TxId> = core
                .acc_txs
                .iter()
                .filter(|t| !core.outcomes.contains_key(*t))
                .cloned()
                .collect();
            for tx in open {
                core.out.set_timer_after(
                    PaxosTimer::Learn(tx),
                    now,
                    core.config.takeover_timeout * 2,
                );
            }
        }
        // RM: Prepared waits a takeover round; outcomes are told again.
        let rms: Vec<(TxId, RmState)> =
            core.rms.iter().map(|(t, r)| (t.clone(), r.state)).collect();
        for (tx, state) in rms {
            match state {
                RmState::Prepared => {
                    // A recovered RM missed what happened while it was
                    // down, and the others have likely decided and gone
                    // quiet: its first round elects itself.
                    let me = core.me;
                    if let Some(r) = core.rms.get_mut(&tx) {
                        let mut sorted = r.participants.clone();
                        sorted.sort();
                        r.round = sorted.iter().position(|&p| p == me).unwrap_or(0);
                    }
                    core.out.set_timer_after(
                        PaxosTimer::Takeover(tx),
                        now,
                        core.config.takeover_timeout,
                    )
                }
                _ if told.contains(&tx) => {}
                RmState::Committed => core.out.event(Event::Commit { tx }),
                RmState::Aborted => core.out.event(Event::Abort { tx }),
                RmState::Init => {}
            }
        }
        Ok(core)
    }
}

//! The server side: duplicate detection, completion records, orphans.
//!
//! # What a duplicate is answered with
//!
//! Checked in this order, so that a call that ran or is running is never
//! refused:
//!
//! 1. a completion record of the call: the recorded answer, if the
//!    duplicate carries the same request (its [`fingerprint`]); a different
//!    request under the same identity gets [`Outcome::Mismatch`], never the
//!    other call's reply;
//! 2. the call is running, or its record is being made durable:
//!    [`Outcome::InProgress`] (or `Mismatch`, as above);
//! 3. the call's record was forgotten (acknowledged by the client, evicted
//!    over the bounds, or dropped when the client's lease ran out):
//!    [`Outcome::Stale`], which the client reports as an outcome it cannot
//!    know, never as a refusal.
//!
//! # The stale mark and the forgotten set
//!
//! Records are forgotten when the client acknowledges them (its
//! `first_incomplete`), when more than the per-client bounds accumulate
//! (the ones made longest ago go), and when the client's lease runs out
//! (at-most-once records go; exactly-once ones stay, since they are the
//! durable truth and a lost reply must still be answered). A forgotten call
//! must never run again, so below the client's *stale mark* every call is
//! stale, and above it the *forgotten set* (ranges of sequence numbers)
//! names the calls whose records went. Only the client's acknowledgements
//! move the mark, and they never pass a call the client still waits for: a
//! slow call overtaken by many fast ones is never made stale by them. The
//! forgotten set is bounded: when it would hold too many ranges the closest
//! two are merged, which can only make a call that never arrived look
//! forgotten (an outcome-unknown answer, never a second execution).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, PersistToken};

use super::due::Due;
use super::message::{Chunk, Refusal, fingerprint};
use super::node::Node;
use super::parts::{Added, Parts};
use super::records::{
    Answer, ClientRecord, Completion, Fact, RpcRecord, SnapshotPart, effect_parts,
};
use super::window::{FastMap, Window};
use super::{
    CallId, CancelReason, MAX_PART, Outcome, Reincarnation, RpcEvent, RpcMessage, RpcTimer,
    Semantics, after,
};

/// The most clients a server keeps state for; calls from further clients
/// are refused rather than evicting a client's state (which would let a
/// late duplicate of its calls execute again).
pub const MAX_CLIENTS: usize = 4096;

/// The most ranges a client's forgotten set holds before the closest two
/// are merged.
const MAX_FORGOTTEN_RANGES: usize = 64;

/// Counts of what the server side did, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Calls handed to the application to execute.
    pub executions: u64,
    /// Duplicates answered from a completion record (the reply had been
    /// lost, or the call retransmitted before it arrived).
    pub replies_from_records: u64,
    /// Duplicates of running calls answered "in progress".
    pub in_progress_replies: u64,
    /// Calls answered "stale": addressed to an earlier life, or forgotten.
    pub stale_rejected: u64,
    /// Calls refused before executing (too many clients or computations,
    /// request too large, deadline past).
    pub refused: u64,
    /// Duplicates whose request differs from the recorded or running call
    /// of the same identity (a reused identity), answered `Mismatch`.
    pub mismatches: u64,
    /// Computations killed as orphans or past their deadline.
    pub killed: u64,
    /// Completions that arrived for computations already killed.
    pub completions_discarded: u64,
    /// Computations whose handler failed (panicked).
    pub handler_failures: u64,
    /// Replies too large to send (the call executed; the caller is told).
    pub replies_too_large: u64,
    /// Completion records made durable (exactly-once).
    pub records_persisted: u64,
    /// Completion records restored at start (exactly-once).
    pub records_restored: u64,
    /// Completion records forgotten (acknowledged by the client, over the
    /// per-client bounds, or at the end of a lease).
    pub records_forgotten: u64,
    /// Of those, records evicted over the per-client bounds.
    pub records_evicted: u64,
    /// Leases that ran out with records to forget (the tombstone set).
    pub leases_expired: u64,
    /// Partial requests dropped to bound the memory they hold.
    pub partial_requests_evicted: u64,
}

/// A completion record, in memory.
#[derive(Clone, Debug)]
struct Recorded {
    fingerprint: u64,
    answer: Answer,
    /// When it was made, in the client's order of records.
    made: u64,
    /// Exactly-once: on stable storage, kept when the lease runs out.
    durable: bool,
}

/// Sequence numbers in closed ranges, start → end.
#[derive(Debug, Default)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    fn contains(&self, seq: u64) -> bool {
        self.0
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| seq <= end)
    }

    fn insert(&mut self, seq: u64) {
        if self.contains(seq) {
            return;
        }
        let mut start = seq;
        let mut end = seq;
        if let Some((&s, &e)) = self.0.range(..seq).next_back()
            && e.checked_add(1) == Some(seq)
        {
            start = s;
            self.0.remove(&s);
        }
        if let Some(next) = seq.checked_add(1)
            && let Some(e) = self.0.remove(&next)
        {
            end = e;
        }
        self.0.insert(start, end);
        while self.0.len() > MAX_FORGOTTEN_RANGES {
            self.merge_closest();
        }
    }

    /// Merges the two ranges with the smallest gap between them.
    fn merge_closest(&mut self) {
        let pairs: Vec<(u64, u64)> = self.0.iter().map(|(&s, &e)| (s, e)).collect();
        let Some(i) = (1..pairs.len()).min_by_key(|&i| pairs[i].0 - pairs[i - 1].1) else {
            return;
        };
        let (s, _) = pairs[i - 1];
        let (next, e) = pairs[i];
        self.0.remove(&next);
        self.0.insert(s, e);
    }

    /// The ranges, in order, for a snapshot.
    fn to_vec(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|(&s, &e)| (s, e)).collect()
    }

    /// Forgets everything below `mark` (the stale mark covers it).
    fn trim_below(&mut self, mark: u64) {
        while let Some((&s, &e)) = self.0.first_key_value()
            && s < mark
        {
            self.0.remove(&s);
            if e >= mark {
                self.0.insert(mark, e);
            }
        }
    }
}

#[derive(Debug)]
struct ClientState {
    incarnation: Incarnation,
    /// The stale mark: calls below it were answered and forgotten (or
    /// never will be): duplicates of them are stale, never executed again.
    first_incomplete: u64,
    /// Calls above the mark whose records were forgotten.
    forgotten: Ranges,
    /// The completion records by call number, all at or above the stale
    /// mark; never walked where the order could show.
    records: FastMap<u64, Recorded>,
    /// The records' call numbers in the order they were made (by `made`):
    /// over the bounds, the one made longest ago goes (not the lowest call,
    /// which may be a slow call that just finished and whose reply is still
    /// on its way).
    by_age: Window<u64>,
    made: u64,
    record_bytes: usize,
    last_heard: Instant,
    /// The client has made exactly-once calls here: its state goes into
    /// snapshots (in every later life of the client too), so that none of
    /// its answered calls runs again after a compaction.
    durable: bool,
}

impl ClientState {
    fn new(incarnation: Incarnation, now: Instant) -> Self {
        ClientState {
            incarnation,
            first_incomplete: 0,
            forgotten: Ranges::default(),
            records: FastMap::default(),
            by_age: Window::default(),
            made: 0,
            record_bytes: 0,
            last_heard: now,
            durable: false,
        }
    }

    /// The state a snapshot keeps, read back.
    fn restored(r: &ClientRecord, now: Instant) -> Self {
        let mut state = ClientState::new(r.incarnation, now);
        state.first_incomplete = r.first_incomplete;
        for &(start, end) in &r.forgotten {
            state.forgotten.0.insert(start, end);
        }
        state.durable = true;
        state
    }

    fn is_forgotten(&self, seq: u64) -> bool {
        seq < self.first_incomplete || self.forgotten.contains(seq)
    }

    fn drop_record(&mut self, seq: u64) -> Option<Recorded> {
        let r = self.records.remove(&seq)?;
        self.by_age.remove(r.made);
        self.record_bytes -= r.answer.size();
        Some(r)
    }

    fn put_record(&mut self, seq: u64, mut rec: Recorded) {
        self.made += 1;
        rec.made = self.made;
        self.by_age.push(rec.made, seq);
        self.record_bytes += rec.answer.size();
        if let Some(old) = self.records.insert(seq, rec) {
            // The new record replaces it.
            self.by_age.remove(old.made);
            self.record_bytes -= old.answer.size();
        }
    }

    /// The record made longest ago.
    fn oldest_record(&self) -> Option<u64> {
        self.by_age.first().map(|(_, seq)| *seq)
    }

    /// Moves the stale mark up to `mark` (the caller has checked that no
    /// running or persisting call lies below it), dropping what it covers.
    fn raise_mark(&mut self, mark: u64) -> u64 {
        if mark <= self.first_incomplete {
            return 0;
        }
        // Every record is at or above the old mark (none is put below it),
        // so those below the new one are found by number when there are
        // fewer numbers than records, and by a walk otherwise. Either way
        // the same records go, and the order they go in does not show.
        let mut dropped = 0;
        if mark - self.first_incomplete <= self.records.len() as u64 {
            for seq in self.first_incomplete..mark {
                if self.drop_record(seq).is_some() {
                    dropped += 1;
                }
            }
        } else {
            let ClientState {
                records,
                by_age,
                record_bytes,
                ..
            } = self;
            records.retain(|&seq, r| {
                if seq >= mark {
                    return true;
                }
                by_age.remove(r.made);
                *record_bytes -= r.answer.size();
                dropped += 1;
                false
            });
        }
        self.first_incomplete = mark;
        self.forgotten.trim_below(mark);
        dropped
    }
}

#[derive(Debug)]
struct Running {
    semantics: Semantics,
    deadline: Instant,
    quantum_until: Option<Instant>,
    fingerprint: u64,
    /// When it next needs the timer: the earlier of its deadline and its
    /// quantum's end. Its time in [`Server::due`].
    wake: Instant,
}

/// The server side of an RPC node: its clients' state and completion
/// records, the computations running, and the effects made durable.
#[derive(Debug, Default)]
pub(crate) struct Server {
    clients: BTreeMap<NodeId, ClientState>,
    /// The running computations: looked up by id on every call, and
    /// walked only in an order that cannot show, or sorted first.
    running: FastMap<CallId, Running>,
    /// The running computations by when they next need the timer
    /// (`wake`). One timer ([`RpcTimer::Computations`]) serves them all, so
    /// a computation that completes in time sets and cancels no timer of
    /// its own.
    due: Due<CallId>,
    persisting: BTreeMap<PersistToken, (CallId, Recorded)>,
    /// Every effect made durable (or being made so), in order: the
    /// application's state is rebuilt from them, so every snapshot keeps
    /// them all.
    effects: Vec<(CallId, Bytes)>,
    parts: Parts,
    stats: ServerStats,
}

impl Server {
    // ---- getters ----

    pub(crate) fn stats(&self) -> ServerStats {
        self.stats
    }

    pub(crate) fn running_count(&self) -> usize {
        self.running.len()
    }

    /// The running computations' ids, in order.
    pub(crate) fn running_ids(&self) -> impl Iterator<Item = CallId> + '_ {
        let mut ids: Vec<CallId> = self.running.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
    }

    /// What a snapshot must keep of the server: the state of every client
    /// that made exactly-once calls, every effect, and every completion
    /// record that is durable or being made so (a snapshot is durable only
    /// after every record asked for before it).
    pub(crate) fn snapshot(&self) -> Vec<SnapshotPart> {
        let mut parts = Vec::new();
        for (&client, state) in &self.clients {
            if state.durable {
                parts.push(SnapshotPart::Client(ClientRecord {
                    client,
                    incarnation: state.incarnation,
                    first_incomplete: state.first_incomplete,
                    forgotten: state.forgotten.to_vec(),
                }));
            }
        }
        parts.extend(effect_parts(&self.effects));
        let kept = |id: CallId, r: &Recorded| {
            SnapshotPart::Completion(Completion {
                id,
                fingerprint: r.fingerprint,
                answer: r.answer.clone(),
                effect: None,
            })
        };
        for (&client, state) in &self.clients {
            // Oldest first, so that the bounds evict in the same order
            // after a restart.
            for (_, seq) in state.by_age.iter() {
                let id = CallId {
                    client,
                    client_incarnation: state.incarnation,
                    seq: *seq,
                };
                if let Some(r) = state.records.get(seq).filter(|r| r.durable) {
                    parts.push(kept(id, r));
                }
            }
        }
        for (id, r) in self.persisting.values() {
            parts.push(kept(*id, r));
        }
        parts
    }

    // ---- recovery ----

    /// Rebuilds the clients' state, their exactly-once completion records
    /// (for each client only its newest life's) and the effects from the
    /// durable records (see [`Replayed`](super::records::Replayed)).
    pub(crate) fn restore<'a>(&mut self, facts: impl Iterator<Item = &'a Fact>, now: Instant) {
        for fact in facts {
            match fact {
                Fact::Client(r) => {
                    self.clients.insert(r.client, ClientState::restored(r, now));
                }
                Fact::Effects(effects) => self.effects.extend(effects.iter().cloned()),
                Fact::Completion(c) => self.restore_completion(c, now),
                Fact::Logged(_) | Fact::Done(..) => {}
            }
        }
    }

    fn restore_completion(&mut self, c: &Completion, now: Instant) {
        if let Some(effect) = &c.effect {
            self.effects.push((c.id, effect.clone()));
        }
        let state = self
            .clients
            .entry(c.id.client)
            .or_insert_with(|| ClientState::new(c.id.client_incarnation, now));
        if c.id.client_incarnation > state.incarnation {
            *state = ClientState::new(c.id.client_incarnation, now);
        }
        state.durable = true;
        if c.id.client_incarnation == state.incarnation && !state.is_forgotten(c.id.seq) {
            let rec = Recorded {
                fingerprint: c.fingerprint,
                answer: c.answer.clone(),
                made: 0,
                durable: true,
            };
            state.put_record(c.id.seq, rec);
            self.stats.records_restored += 1;
        }
    }

    // ---- answering ----

    fn reply(node: &mut Node, to: NodeId, id: CallId, outcome: Outcome) {
        let server_incarnation = node.incarnation;
        node.out.send(
            to,
            RpcMessage::Reply {
                id,
                server_incarnation,
                outcome,
            },
        );
    }

    /// Sends a completed call's answer: whole, or in parts.
    fn answer(node: &mut Node, to: NodeId, id: CallId, answer: &Answer) {
        match answer {
            Answer::Reply(body) if body.len() > MAX_PART => {
                let server_incarnation = node.incarnation;
                let fingerprint = fingerprint(Semantics::AtLeastOnce, body);
                for chunk in Chunk::split(body) {
                    node.out.send(
                        to,
                        RpcMessage::ReplyPart {
                            id,
                            server_incarnation,
                            fingerprint,
                            body: chunk,
                        },
                    );
                }
            }
            Answer::Reply(body) => Server::reply(node, to, id, Outcome::Done(body.clone())),
            Answer::Failed => Server::reply(node, to, id, Outcome::Failed),
            Answer::TooLarge(len) => {
                let limit = node.config.max_body as u64;
                Server::reply(node, to, id, Outcome::ReplyTooLarge { len: *len, limit });
            }
        }
    }

    fn refuse(&mut self, node: &mut Node, to: NodeId, id: CallId, why: Refusal) {
        self.stats.refused += 1;
        node.out.note(
            why.note(),
            Some(to),
            Some(id.client_incarnation),
            Some(id.seq),
        );
        Server::reply(node, to, id, Outcome::Refused(why));
    }

    // ---- messages ----

    /// A client locates this node: it answers with its life.
    pub(crate) fn on_locate(node: &mut Node, from: NodeId, nonce: u64) -> bool {
        let server_incarnation = node.incarnation;
        node.out.send(
            from,
            RpcMessage::Located {
                nonce,
                server_incarnation,
            },
        );
        true
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_call(
        &mut self,
        node: &mut Node,
        now: Instant,
        from: NodeId,
        id: CallId,
        server_incarnation: Incarnation,
        semantics: Semantics,
        first_incomplete: u64,
        budget_ms: u32,
        claimed: u64,
        body: Chunk,
    ) -> bool {
        // A call in someone else's name, or for a life of ours that has not
        // happened yet, is forged: drop it.
        if id.client != from || server_incarnation > node.incarnation || id.seq == 0 {
            return false;
        }
        if !node.config.serves {
            self.refuse(node, from, id, Refusal::NotServing);
            return true;
        }
        if semantics == Semantics::ExactlyOnce && !node.config.stable_storage {
            self.refuse(node, from, id, Refusal::NoStableStorage);
            return true;
        }
        let known = match self.clients.get(&from) {
            Some(state) => state.incarnation,
            None => {
                if self.clients.len() >= MAX_CLIENTS {
                    self.refuse(node, from, id, Refusal::TooManyClients);
                    return true;
                }
                self.clients
                    .insert(from, ClientState::new(id.client_incarnation, now));
                id.client_incarnation
            }
        };
        if id.client_incarnation < known {
            // A stale duplicate from an earlier life of the client.
            self.stats.stale_rejected += 1;
            Server::reply(node, from, id, Outcome::Stale);
            return true;
        }
        if id.client_incarnation > known {
            // The new life's first call may overtake its announcement: the
            // claims gentle reincarnation needs are not known yet.
            self.client_restarted(node, from, id.client_incarnation, None);
        }
        let Some(state) = self.clients.get_mut(&from) else {
            return false;
        };
        state.last_heard = now;
        // The client has every reply below `first_incomplete` (it is the
        // lowest call it still waits for, so the mark never passes a call
        // the client wants answered).
        self.stats.records_forgotten += state.raise_mark(first_incomplete);
        let forgotten = state.is_forgotten(id.seq);
        if semantics != Semantics::AtLeastOnce
            && let Some(rec) = state.records.get(&id.seq)
        {
            if rec.fingerprint != claimed {
                self.stats.mismatches += 1;
                Server::reply(node, from, id, Outcome::Mismatch);
                return true;
            }
            let answer = rec.answer.clone();
            self.stats.replies_from_records += 1;
            Server::answer(node, from, id, &answer);
            return true;
        }
        let active = self.running.get(&id).map(|r| r.fingerprint).or_else(|| {
            self.persisting
                .values()
                .find(|(p, _)| *p == id)
                .map(|(_, r)| r.fingerprint)
        });
        if let Some(running_fingerprint) = active {
            if running_fingerprint != claimed {
                self.stats.mismatches += 1;
                Server::reply(node, from, id, Outcome::Mismatch);
            } else {
                self.stats.in_progress_replies += 1;
                Server::reply(node, from, id, Outcome::InProgress);
            }
            return true;
        }
        if semantics != Semantics::AtLeastOnce && forgotten {
            self.stats.stale_rejected += 1;
            Server::reply(node, from, id, Outcome::Stale);
            return true;
        }
        if semantics == Semantics::AtMostOnce && server_incarnation < node.incarnation {
            // Meant for an earlier life of ours, which may have executed it
            // before crashing: executing it again could make twice.
            self.stats.stale_rejected += 1;
            Server::reply(node, from, id, Outcome::Stale);
            return true;
        }
        let limit = node.config.max_body;
        if body.total_len as usize > limit {
            // Checked before anything is kept or run.
            let len = u64::from(body.total_len);
            let why = Refusal::RequestTooLarge {
                len,
                limit: limit as u64,
            };
            self.refuse(node, from, id, why);
            return true;
        }
        if self.running.len() >= node.config.max_running {
            self.refuse(node, from, id, Refusal::ServerBusy);
            return true;
        }
        if budget_ms == 0 {
            self.refuse(node, from, id, Refusal::DeadlinePassed);
            return true;
        }
        let request = if body.is_whole() {
            // One frame, whose CRC the driver checked: the body is what the
            // client fingerprinted. (A forger able to send as the client
            // could compute a matching fingerprint anyway, so hashing the
            // body again here would protect nothing, at the price of a
            // pass over every request.)
            body.bytes
        } else {
            let per_peer = node.config.max_partial_per_peer;
            let total = node.config.max_partial_total;
            let added = self.parts.add(from, id, claimed, body, per_peer, total);
            self.stats.partial_requests_evicted = self.parts.evicted;
            let request = match added {
                Added::Whole(b) => b,
                Added::Waiting => return true,
                Added::Dropped => return false,
            };
            // Reassembled from parts, each checked alone: the whole must
            // be what the client fingerprinted (parts of another request
            // under the same id must never be run as this one), since the
            // fingerprint is what duplicates are compared by.
            if fingerprint(semantics, &request) != claimed {
                return false;
            }
            request
        };
        let deadline = after(now, Duration::from_millis(u64::from(budget_ms)));
        let quantum_until = node.config.orphans.quantum.map(|q| after(now, q));
        let wake = quantum_until.map_or(deadline, |q| q.min(deadline));
        self.running.insert(
            id,
            Running {
                semantics,
                deadline,
                quantum_until,
                fingerprint: claimed,
                wake,
            },
        );
        self.schedule(wake, id);
        self.stats.executions += 1;
        node.out.event(RpcEvent::Execute {
            id,
            request,
            deadline,
            semantics,
        });
        true
    }

    /// Moves computation `id` to its place in `due` after its quantum
    /// moved.
    fn arm_running(&mut self, id: CallId) {
        if let Some(r) = self.running.get_mut(&id) {
            let at = r.quantum_until.map_or(r.deadline, |q| q.min(r.deadline));
            if at != r.wake {
                r.wake = at;
                self.schedule(at, id);
            }
        }
    }

    /// Puts computation `id` in `due` for `at`, the time it now wakes at.
    fn schedule(&mut self, at: Instant, id: CallId) {
        let all = self.running.iter().map(|(&id, r)| (r.wake, id));
        self.due.push(at, id, self.running.len(), all);
    }

    /// Whether computation `id` is running and next needs the timer at
    /// `at`.
    fn wakes(running: &FastMap<CallId, Running>, at: Instant, id: CallId) -> bool {
        running.get(&id).is_some_and(|r| r.wake == at)
    }

    /// Sets the `Computations` timer if the earliest computation due is
    /// earlier than it is set for (or it is not set): after every step of
    /// the node.
    pub(crate) fn arm(&mut self, node: &mut Node) {
        let running = &self.running;
        if let Some(at) = self.due.arm_at(|at, id| Server::wakes(running, at, id)) {
            node.out.set_timer(RpcTimer::Computations, at);
        }
    }

    /// The `Computations` timer fired: every computation whose deadline or
    /// quantum passed by `now`, earliest first.
    pub(crate) fn on_computations_timer(&mut self, node: &mut Node, now: Instant) {
        self.due.fired();
        loop {
            let running = &self.running;
            let Some(id) = self
                .due
                .next_due(now, |at, id| Server::wakes(running, at, id))
            else {
                break;
            };
            // Kills it, or moves its wake past `now`.
            self.on_running_timer(node, now, id);
        }
    }

    /// Takes computation `id` off the running ones.
    fn stop_running(&mut self, id: CallId) -> Option<Running> {
        // Its entry in `due` goes stale, and is dropped when it comes up.
        self.running.remove(&id)
    }

    fn kill(&mut self, node: &mut Node, id: CallId, reason: CancelReason) {
        if self.stop_running(id).is_some() {
            self.stats.killed += 1;
            if reason.orphan() {
                node.out.note(
                    "orphan killed",
                    Some(id.client),
                    Some(id.client_incarnation),
                    Some(id.seq),
                );
            }
            node.out.event(RpcEvent::Cancel { id, reason });
        }
    }

    pub(crate) fn on_running_timer(&mut self, node: &mut Node, now: Instant, id: CallId) {
        let Some(r) = self.running.get(&id) else {
            return;
        };
        if now >= r.deadline {
            self.kill(node, id, CancelReason::DeadlineExceeded);
        } else if r.quantum_until.is_some_and(|q| now >= q) {
            self.kill(node, id, CancelReason::Expired);
        } else {
            self.arm_running(id);
        }
    }

    /// The application finished `id`: with a reply (and perhaps an effect),
    /// or with a failure (`reply` `None`).
    pub(crate) fn complete(
        &mut self,
        node: &mut Node,
        id: CallId,
        reply: Option<Bytes>,
        effect: Option<Bytes>,
    ) {
        let Some(r) = self.stop_running(id) else {
            self.stats.completions_discarded += 1;
            return;
        };
        let answer = match reply {
            None => {
                self.stats.handler_failures += 1;
                Answer::Failed
            }
            Some(reply) if reply.len() > node.config.max_body => {
                // The call ran: the caller is told so, never a refusal.
                self.stats.replies_too_large += 1;
                Answer::TooLarge(reply.len() as u64)
            }
            Some(reply) => Answer::Reply(reply),
        };
        let recorded = Recorded {
            fingerprint: r.fingerprint,
            answer,
            made: 0,
            durable: r.semantics == Semantics::ExactlyOnce,
        };
        match r.semantics {
            Semantics::AtLeastOnce => Server::answer(node, id.client, id, &recorded.answer),
            Semantics::AtMostOnce => {
                // Answered from the record about to be kept (keeping it
                // sends nothing, so the order does not show).
                Server::answer(node, id.client, id, &recorded.answer);
                self.record(node, id, recorded);
            }
            Semantics::ExactlyOnce => {
                // Persist before you speak: the answer goes out only once
                // the record that lets a later life give it — with the
                // call's effect, in the same append — is durable.
                if let Some(e) = &effect {
                    self.effects.push((id, e.clone()));
                }
                let token = node.persist(&RpcRecord::Completion(Completion {
                    id,
                    fingerprint: recorded.fingerprint,
                    answer: recorded.answer.clone(),
                    effect,
                }));
                self.persisting.insert(token, (id, recorded));
                self.mark_durable(id.client);
            }
        }
    }

    fn mark_durable(&mut self, client: NodeId) {
        if let Some(state) = self.clients.get_mut(&client) {
            state.durable = true;
        }
    }

    fn record(&mut self, node: &Node, id: CallId, rec: Recorded) {
        let count_bound = node.config.records_per_client.max(1);
        let bytes_bound = node.config.record_bytes_per_client;
        let Some(state) = self.clients.get_mut(&id.client) else {
            return;
        };
        if state.incarnation != id.client_incarnation || state.is_forgotten(id.seq) {
            return;
        }
        state.put_record(id.seq, rec);
        let mut evicted = 0;
        while state.records.len() > count_bound
            || (state.record_bytes > bytes_bound && state.records.len() > 1)
        {
            // Over the bounds: forget the oldest; it must never run again,
            // so it joins the forgotten set. The stale mark stays: calls
            // below the evicted one may not have arrived yet (reordered,
            // lost, or slow), and only the client knows which it still
            // waits for (its `first_incomplete` moves the mark).
            let Some(seq) = state.oldest_record() else {
                break;
            };
            state.drop_record(seq);
            state.forgotten.insert(seq);
            evicted += 1;
        }
        self.stats.records_forgotten += evicted;
        self.stats.records_evicted += evicted;
    }

    /// A completion record became durable: answer. Returns whether the
    /// token was the server's.
    pub(crate) fn persisted(&mut self, node: &mut Node, token: PersistToken) -> bool {
        let Some((id, rec)) = self.persisting.remove(&token) else {
            return false;
        };
        self.stats.records_persisted += 1;
        Server::answer(node, id.client, id, &rec.answer);
        self.record(node, id, rec);
        true
    }

    pub(crate) fn on_cancel_call(&mut self, node: &mut Node, from: NodeId, id: CallId) -> bool {
        if id.client != from || !self.running.contains_key(&id) {
            return false;
        }
        self.kill(node, id, CancelReason::CallerCancelled);
        true
    }

    pub(crate) fn on_announce(
        &mut self,
        node: &mut Node,
        from: NodeId,
        incarnation: Incarnation,
        adopted: &[u64],
    ) -> bool {
        let newer = self
            .clients
            .get(&from)
            .is_none_or(|s| incarnation > s.incarnation);
        let running_older = self
            .running
            .keys()
            .any(|id| id.client == from && id.client_incarnation < incarnation);
        if newer || running_older {
            self.client_restarted(node, from, incarnation, Some(adopted));
        }
        true
    }

    /// `client` is now in life `incarnation`: its earlier lives' records go,
    /// and their running computations are orphans. `adopted` lists the calls
    /// of the previous life the new one claims, when its announcement says
    /// so; gentle reincarnation waits for that list.
    fn client_restarted(
        &mut self,
        node: &mut Node,
        client: NodeId,
        incarnation: Incarnation,
        adopted: Option<&[u64]>,
    ) {
        if let Some(state) = self.clients.get_mut(&client)
            && incarnation > state.incarnation
        {
            self.stats.records_forgotten += state.records.len() as u64;
            let durable = state.durable;
            *state = ClientState::new(incarnation, state.last_heard);
            state.durable = durable;
        }
        let mut orphans: Vec<CallId> = self
            .running
            .keys()
            .filter(|id| id.client == client && id.client_incarnation < incarnation)
            .copied()
            .collect();
        // Killed in order, as the events show.
        orphans.sort_unstable();
        for id in orphans {
            match node.config.orphans.reincarnation {
                Reincarnation::Off => {}
                Reincarnation::Kill => self.kill(node, id, CancelReason::Reincarnation),
                Reincarnation::Gentle => {
                    let Some(adopted) = adopted else { continue };
                    let owned =
                        id.client_incarnation.0 + 1 == incarnation.0 && adopted.contains(&id.seq);
                    if !owned {
                        self.kill(node, id, CancelReason::GentleReincarnation);
                    }
                }
            }
        }
    }

    pub(crate) fn on_exterminate(
        &mut self,
        node: &mut Node,
        from: NodeId,
        incarnation: Incarnation,
        seqs: Vec<u64>,
    ) -> bool {
        for &seq in &seqs {
            let id = CallId {
                client: from,
                client_incarnation: incarnation,
                seq,
            };
            self.kill(node, id, CancelReason::Exterminated);
        }
        node.out.send(
            from,
            RpcMessage::Exterminated {
                client_incarnation: incarnation,
                seqs,
            },
        );
        true
    }

    pub(crate) fn on_renew(
        &mut self,
        node: &mut Node,
        now: Instant,
        from: NodeId,
        incarnation: Incarnation,
        seqs: &[u64],
    ) -> bool {
        let Some(quantum) = node.config.orphans.quantum else {
            return false;
        };
        for &seq in seqs {
            let id = CallId {
                client: from,
                client_incarnation: incarnation,
                seq,
            };
            if let Some(r) = self.running.get_mut(&id) {
                r.quantum_until = Some(after(now, quantum));
                self.arm_running(id);
            }
        }
        if let Some(s) = self.clients.get_mut(&from) {
            s.last_heard = now;
        }
        true
    }

    /// Forgets the at-most-once records of clients whose lease ran out,
    /// keeping a tombstone: their calls join the forgotten set, so a late
    /// duplicate is answered stale, never run again. Exactly-once records
    /// stay: they are on stable storage, and a reply lost before the lease
    /// ran out must still be answered from them.
    pub(crate) fn on_leases(&mut self, node: &mut Node, now: Instant) {
        let lease = node.config.lease;
        for state in self.clients.values_mut() {
            if now.saturating_duration_since(state.last_heard) < lease {
                continue;
            }
            let mut volatile: Vec<u64> = state
                .records
                .iter()
                .filter(|(_, r)| !r.durable)
                .map(|(s, _)| *s)
                .collect();
            // Into the forgotten set in order (what it merges depends on
            // it).
            volatile.sort_unstable();
            if volatile.is_empty() {
                continue;
            }
            for seq in &volatile {
                state.drop_record(*seq);
                state.forgotten.insert(*seq);
            }
            self.stats.records_forgotten += volatile.len() as u64;
            self.stats.leases_expired += 1;
        }
        node.out.set_timer(
            RpcTimer::Leases,
            after(now, lease.max(Duration::from_millis(1))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_neighbours_and_stay_bounded() {
        let mut r = Ranges::default();
        for s in [5, 7, 6, 10] {
            r.insert(s);
        }
        assert_eq!(r.to_vec(), vec![(5, 7), (10, 10)]);
        assert!(r.contains(6) && r.contains(10) && !r.contains(8));
        for s in 0..1000u64 {
            r.insert(100 + 3 * s);
        }
        assert!(r.0.len() <= MAX_FORGOTTEN_RANGES);
        assert!(r.contains(100) && r.contains(100 + 3 * 999));
        r.trim_below(7);
        assert!(!r.contains(5) && r.contains(7));
    }
}

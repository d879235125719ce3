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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::{Incarnation, NodeId, PersistToken};

use super::message::{Chunk, Refusal, fingerprint};
use super::parts::{Added, Parts};
use super::{
    CallId, CancelReason, MAX_PART, Outcome, Reincarnation, Rpc, RpcEvent, RpcMessage, RpcTimer,
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

/// What a completed call answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The reply.
    Reply(Bytes),
    /// The handler failed.
    Failed,
    /// The reply was larger than the server may send.
    TooLarge(u64),
}

impl Answer {
    fn size(&self) -> usize {
        match self {
            Answer::Reply(b) => b.len(),
            _ => 0,
        }
    }
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

    /// Forgets everything below `mark` (the stale mark covers it).
    fn trim_below(&mut self, mark: u64) {
        let below: Vec<(u64, u64)> = self.0.range(..mark).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in below {
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
    records: BTreeMap<u64, Recorded>,
    /// The records in the order they were made: over the bounds, the one
    /// made longest ago goes (not the lowest call, which may be a slow call
    /// that just finished and whose reply is still on its way).
    by_age: BTreeMap<u64, u64>,
    made: u64,
    record_bytes: usize,
    last_heard: Instant,
}

impl ClientState {
    fn new(incarnation: Incarnation, now: Instant) -> Self {
        ClientState {
            incarnation,
            first_incomplete: 0,
            forgotten: Ranges::default(),
            records: BTreeMap::new(),
            by_age: BTreeMap::new(),
            made: 0,
            record_bytes: 0,
            last_heard: now,
        }
    }

    fn is_forgotten(&self, seq: u64) -> bool {
        seq < self.first_incomplete || self.forgotten.contains(seq)
    }

    fn drop_record(&mut self, seq: u64) -> Option<Recorded> {
        let r = self.records.remove(&seq)?;
        self.by_age.remove(&r.made);
        self.record_bytes -= r.answer.size();
        Some(r)
    }

    fn put_record(&mut self, seq: u64, mut rec: Recorded) {
        self.drop_record(seq);
        self.made += 1;
        rec.made = self.made;
        self.by_age.insert(rec.made, seq);
        self.record_bytes += rec.answer.size();
        self.records.insert(seq, rec);
    }

    /// The record made longest ago.
    fn oldest_record(&self) -> Option<u64> {
        self.by_age.first_key_value().map(|(_, seq)| *seq)
    }

    /// Moves the stale mark up to `mark` (the caller has checked that no
    /// running or persisting call lies below it), dropping what it covers.
    fn raise_mark(&mut self, mark: u64) -> u64 {
        if mark <= self.first_incomplete {
            return 0;
        }
        let below: Vec<u64> = self.records.range(..mark).map(|(s, _)| *s).collect();
        for seq in &below {
            self.drop_record(*seq);
        }
        self.first_incomplete = mark;
        self.forgotten.trim_below(mark);
        below.len() as u64
    }
}

#[derive(Debug)]
struct Running {
    semantics: Semantics,
    deadline: Instant,
    quantum_until: Option<Instant>,
    fingerprint: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Server {
    clients: BTreeMap<NodeId, ClientState>,
    running: BTreeMap<CallId, Running>,
    persisting: BTreeMap<PersistToken, (CallId, Recorded)>,
    parts: Parts,
    pub(crate) stats: ServerStats,
}

impl Server {
    pub(crate) fn running_count(&self) -> usize {
        self.running.len()
    }

    pub(crate) fn running_ids(&self) -> impl Iterator<Item = CallId> + '_ {
        self.running.keys().copied()
    }

    /// Rebuilds the completion records of exactly-once calls from stable
    /// storage, keeping for each client only its newest life.
    pub(crate) fn restore(&mut self, completions: &[Completion], now: Instant) {
        for c in completions {
            let state = self
                .clients
                .entry(c.id.client)
                .or_insert_with(|| ClientState::new(c.id.client_incarnation, now));
            if c.id.client_incarnation > state.incarnation {
                *state = ClientState::new(c.id.client_incarnation, now);
            }
            if c.id.client_incarnation == state.incarnation {
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
    }
}

/// A completion record as it is on stable storage (exactly-once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The call.
    pub id: CallId,
    /// The fingerprint of its semantics and request.
    pub fingerprint: u64,
    pub(crate) answer: Answer,
    /// The state change its handler returned with the reply, made durable
    /// in the same record (see [`RpcInput::Complete`](super::RpcInput)).
    pub effect: Option<Bytes>,
}

impl Completion {
    /// The reply, if the call completed with one.
    pub fn reply(&self) -> Option<&Bytes> {
        match &self.answer {
            Answer::Reply(b) => Some(b),
            _ => None,
        }
    }
}

/// Stable-storage records of an RPC node: completion records (server,
/// exactly-once) and the call log (client, extermination and gentle
/// reincarnation).
#[derive(Debug, Default)]
pub(crate) struct Records {
    pub(crate) completions: Vec<Completion>,
    /// Calls logged as sent and not logged as finished: (life, seq) → server.
    pub(crate) unfinished: BTreeMap<(Incarnation, u64), NodeId>,
}

const COMPLETION: u8 = 4;
const CALL_LOGGED: u8 = 2;
const CALL_DONE: u8 = 3;

const ANSWER_REPLY: u8 = 0;
const ANSWER_FAILED: u8 = 1;
const ANSWER_TOO_LARGE: u8 = 2;

impl Records {
    /// The durable completion record of `id`: its fingerprint, its answer
    /// and the effect that goes with it, in one record (one append).
    pub(crate) fn completion(
        id: &CallId,
        fingerprint: u64,
        answer: &Answer,
        effect: Option<&Bytes>,
    ) -> Bytes {
        let reply: &[u8] = match answer {
            Answer::Reply(b) => b,
            _ => &[],
        };
        let effect_len = effect.map_or(0, |e| e.len());
        let mut b = BytesMut::with_capacity(1 + 32 + 1 + 8 + 4 + reply.len() + 5 + effect_len);
        b.put_u8(COMPLETION);
        b.put_u64_le(id.client.0);
        b.put_u64_le(id.client_incarnation.0);
        b.put_u64_le(id.seq);
        b.put_u64_le(fingerprint);
        match answer {
            Answer::Reply(_) => b.put_u8(ANSWER_REPLY),
            Answer::Failed => b.put_u8(ANSWER_FAILED),
            Answer::TooLarge(len) => {
                b.put_u8(ANSWER_TOO_LARGE);
                b.put_u64_le(*len);
            }
        }
        b.put_u32_le(reply.len() as u32);
        b.put_slice(reply);
        match effect {
            Some(e) => {
                b.put_u8(1);
                b.put_u32_le(e.len() as u32);
                b.put_slice(e);
            }
            None => b.put_u8(0),
        }
        b.freeze()
    }

    pub(crate) fn call_logged(life: Incarnation, seq: u64, server: NodeId) -> Bytes {
        let mut b = BytesMut::with_capacity(25);
        b.put_u8(CALL_LOGGED);
        b.put_u64_le(life.0);
        b.put_u64_le(seq);
        b.put_u64_le(server.0);
        b.freeze()
    }

    pub(crate) fn call_done(life: Incarnation, seq: u64) -> Bytes {
        let mut b = BytesMut::with_capacity(17);
        b.put_u8(CALL_DONE);
        b.put_u64_le(life.0);
        b.put_u64_le(seq);
        b.freeze()
    }

    fn parse_completion(mut b: Bytes) -> Option<Completion> {
        if b.remaining() < 33 {
            return None;
        }
        let id = CallId {
            client: NodeId(b.get_u64_le()),
            client_incarnation: Incarnation(b.get_u64_le()),
            seq: b.get_u64_le(),
        };
        let fingerprint = b.get_u64_le();
        let kind = b.get_u8();
        let too_large = if kind == ANSWER_TOO_LARGE {
            (b.remaining() >= 8).then(|| b.get_u64_le())?
        } else {
            0
        };
        if b.remaining() < 4 {
            return None;
        }
        let len = b.get_u32_le() as usize;
        if b.remaining() < len {
            return None;
        }
        let reply = b.split_to(len);
        let answer = match kind {
            ANSWER_REPLY => Answer::Reply(reply),
            ANSWER_FAILED => Answer::Failed,
            ANSWER_TOO_LARGE => Answer::TooLarge(too_large),
            _ => return None,
        };
        let effect = match (b.remaining() >= 1).then(|| b.get_u8())? {
            0 => None,
            _ => {
                if b.remaining() < 4 {
                    return None;
                }
                let len = b.get_u32_le() as usize;
                if b.remaining() < len {
                    return None;
                }
                Some(b.split_to(len))
            }
        };
        Some(Completion {
            id,
            fingerprint,
            answer,
            effect,
        })
    }

    /// Reads every record; one that does not parse (it cannot happen with
    /// this code's records) is skipped rather than trusted.
    pub(crate) fn parse(records: &[Bytes]) -> Records {
        let mut out = Records::default();
        for r in records {
            let mut b = r.clone();
            if b.remaining() < 17 {
                continue;
            }
            match b.get_u8() {
                COMPLETION => {
                    if let Some(c) = Records::parse_completion(b) {
                        out.completions.push(c);
                    }
                }
                CALL_LOGGED if b.remaining() >= 24 => {
                    let life = Incarnation(b.get_u64_le());
                    let seq = b.get_u64_le();
                    out.unfinished.insert((life, seq), NodeId(b.get_u64_le()));
                }
                CALL_DONE => {
                    let life = Incarnation(b.get_u64_le());
                    let seq = b.get_u64_le();
                    out.unfinished.remove(&(life, seq));
                }
                _ => {}
            }
        }
        out
    }
}

impl Rpc {
    fn reply(&mut self, to: NodeId, id: CallId, outcome: Outcome) {
        let server_incarnation = self.incarnation;
        self.send(
            to,
            RpcMessage::Reply {
                id,
                server_incarnation,
                outcome,
            },
        );
    }

    /// Sends a completed call's answer: whole, or in parts.
    fn answer(&mut self, to: NodeId, id: CallId, answer: &Answer) {
        match answer {
            Answer::Reply(body) if body.len() > MAX_PART => {
                let server_incarnation = self.incarnation;
                let fingerprint = fingerprint(Semantics::AtLeastOnce, body);
                for chunk in Chunk::split(body) {
                    self.send(
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
            Answer::Reply(body) => self.reply(to, id, Outcome::Done(body.clone())),
            Answer::Failed => self.reply(to, id, Outcome::Failed),
            Answer::TooLarge(len) => {
                let limit = self.config.max_body as u64;
                self.reply(to, id, Outcome::ReplyTooLarge { len: *len, limit });
            }
        }
    }

    fn refuse(&mut self, to: NodeId, id: CallId, why: Refusal) {
        self.server.stats.refused += 1;
        self.reply(to, id, Outcome::Refused(why));
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_call(
        &mut self,
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
        if id.client != from || server_incarnation > self.incarnation || id.seq == 0 {
            return false;
        }
        if !self.config.serves {
            self.refuse(from, id, Refusal::NotServing);
            return true;
        }
        if semantics == Semantics::ExactlyOnce && !self.config.stable_storage {
            self.refuse(from, id, Refusal::NoStableStorage);
            return true;
        }
        if !self.server.clients.contains_key(&from) {
            if self.server.clients.len() >= MAX_CLIENTS {
                self.refuse(from, id, Refusal::TooManyClients);
                return true;
            }
            self.server
                .clients
                .insert(from, ClientState::new(id.client_incarnation, now));
        }
        let known = self.server.clients[&from].incarnation;
        if id.client_incarnation < known {
            // A stale duplicate from an earlier life of the client.
            self.server.stats.stale_rejected += 1;
            self.reply(from, id, Outcome::Stale);
            return true;
        }
        if id.client_incarnation > known {
            // The new life's first call may overtake its announcement: the
            // claims gentle reincarnation needs are not known yet.
            self.client_restarted(from, id.client_incarnation, None);
        }
        let Some(state) = self.server.clients.get_mut(&from) else {
            return false;
        };
        state.last_heard = now;
        // The client has every reply below `first_incomplete` (it is the
        // lowest call it still waits for, so the mark never passes a call
        // the client wants answered).
        self.server.stats.records_forgotten += state.raise_mark(first_incomplete);
        if semantics != Semantics::AtLeastOnce
            && let Some(rec) = state.records.get(&id.seq)
        {
            if rec.fingerprint != claimed {
                self.server.stats.mismatches += 1;
                self.reply(from, id, Outcome::Mismatch);
                return true;
            }
            let answer = rec.answer.clone();
            self.server.stats.replies_from_records += 1;
            self.answer(from, id, &answer);
            return true;
        }
        let active = self
            .server
            .running
            .get(&id)
            .map(|r| r.fingerprint)
            .or_else(|| {
                self.server
                    .persisting
                    .values()
                    .find(|(p, _)| *p == id)
                    .map(|(_, r)| r.fingerprint)
            });
        if let Some(running_fingerprint) = active {
            if running_fingerprint != claimed {
                self.server.stats.mismatches += 1;
                self.reply(from, id, Outcome::Mismatch);
            } else {
                self.server.stats.in_progress_replies += 1;
                self.reply(from, id, Outcome::InProgress);
            }
            return true;
        }
        let forgotten = self.server.clients[&from].is_forgotten(id.seq);
        if semantics != Semantics::AtLeastOnce && forgotten {
            self.server.stats.stale_rejected += 1;
            self.reply(from, id, Outcome::Stale);
            return true;
        }
        if semantics == Semantics::AtMostOnce && server_incarnation < self.incarnation {
            // Meant for an earlier life of ours, which may have executed it
            // before crashing: executing it again could make twice.
            self.server.stats.stale_rejected += 1;
            self.reply(from, id, Outcome::Stale);
            return true;
        }
        let limit = self.config.max_body;
        if body.total_len as usize > limit {
            // Checked before anything is kept or run.
            let len = u64::from(body.total_len);
            self.refuse(
                from,
                id,
                Refusal::RequestTooLarge {
                    len,
                    limit: limit as u64,
                },
            );
            return true;
        }
        if self.server.running.len() >= self.config.max_running {
            self.refuse(from, id, Refusal::ServerBusy);
            return true;
        }
        if budget_ms == 0 {
            self.refuse(from, id, Refusal::DeadlinePassed);
            return true;
        }
        let request = if body.is_whole() {
            body.bytes
        } else {
            let per_peer = self.config.max_partial_per_peer;
            let total = self.config.max_partial_total;
            let added = self
                .server
                .parts
                .add(from, id, claimed, body, per_peer, total);
            self.server.stats.partial_requests_evicted = self.server.parts.evicted;
            match added {
                Added::Whole(b) => b,
                Added::Waiting => return true,
                Added::Dropped => return false,
            }
        };
        if fingerprint(semantics, &request) != claimed {
            // Damaged, or forged: the fingerprint is what duplicates are
            // compared by, so a call whose own does not match is not run.
            return false;
        }
        let deadline = after(now, Duration::from_millis(u64::from(budget_ms)));
        let quantum_until = self.config.orphans.quantum.map(|q| after(now, q));
        self.server.running.insert(
            id,
            Running {
                semantics,
                deadline,
                quantum_until,
                fingerprint: claimed,
            },
        );
        self.server.stats.executions += 1;
        self.arm_running(id);
        self.event(RpcEvent::Execute {
            id,
            request,
            deadline,
            semantics,
        });
        true
    }

    fn arm_running(&mut self, id: CallId) {
        if let Some(r) = self.server.running.get(&id) {
            let at = r.quantum_until.map_or(r.deadline, |q| q.min(r.deadline));
            self.set_timer(RpcTimer::Running(id), at);
        }
    }

    fn kill(&mut self, id: CallId, reason: CancelReason) {
        if self.server.running.remove(&id).is_some() {
            self.server.stats.killed += 1;
            self.cancel_timer(RpcTimer::Running(id));
            self.event(RpcEvent::Cancel { id, reason });
        }
    }

    pub(crate) fn on_running_timer(&mut self, now: Instant, id: CallId) {
        let Some(r) = self.server.running.get(&id) else {
            return;
        };
        if now >= r.deadline {
            self.kill(id, CancelReason::DeadlineExceeded);
        } else if r.quantum_until.is_some_and(|q| now >= q) {
            self.kill(id, CancelReason::Expired);
        } else {
            self.arm_running(id);
        }
    }

    /// The application finished `id`: with a reply (and perhaps an effect),
    /// or with a failure (`reply` `None`).
    pub(crate) fn complete(
        &mut self,
        _now: Instant,
        id: CallId,
        reply: Option<Bytes>,
        effect: Option<Bytes>,
    ) {
        let Some(r) = self.server.running.remove(&id) else {
            self.server.stats.completions_discarded += 1;
            return;
        };
        self.cancel_timer(RpcTimer::Running(id));
        let answer = match reply {
            None => {
                self.server.stats.handler_failures += 1;
                Answer::Failed
            }
            Some(reply) if reply.len() > self.config.max_body => {
                // The call ran: the caller is told so, never a refusal.
                self.server.stats.replies_too_large += 1;
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
            Semantics::AtLeastOnce => self.answer(id.client, id, &recorded.answer),
            Semantics::AtMostOnce => {
                let answer = recorded.answer.clone();
                self.record(id, recorded);
                self.answer(id.client, id, &answer);
            }
            Semantics::ExactlyOnce => {
                // Persist before you speak: the answer goes out only once
                // the record that lets a later life give it — with the
                // call's effect, in the same append — is durable.
                let record = Records::completion(
                    &id,
                    recorded.fingerprint,
                    &recorded.answer,
                    effect.as_ref(),
                );
                let token = self.persist(record);
                self.server.persisting.insert(token, (id, recorded));
            }
        }
    }

    fn record(&mut self, id: CallId, rec: Recorded) {
        let count_bound = self.config.records_per_client.max(1);
        let bytes_bound = self.config.record_bytes_per_client;
        let Some(state) = self.server.clients.get_mut(&id.client) else {
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
        self.server.stats.records_forgotten += evicted;
        self.server.stats.records_evicted += evicted;
    }

    /// A completion record became durable: answer.
    pub(crate) fn server_persisted(&mut self, token: PersistToken) -> bool {
        let Some((id, rec)) = self.server.persisting.remove(&token) else {
            return false;
        };
        self.server.stats.records_persisted += 1;
        let answer = rec.answer.clone();
        self.record(id, rec);
        self.answer(id.client, id, &answer);
        true
    }

    pub(crate) fn on_cancel_call(&mut self, from: NodeId, id: CallId) -> bool {
        if id.client != from || !self.server.running.contains_key(&id) {
            return false;
        }
        self.kill(id, CancelReason::CallerCancelled);
        true
    }

    pub(crate) fn on_announce(
        &mut self,
        _now: Instant,
        from: NodeId,
        incarnation: Incarnation,
        adopted: &[u64],
    ) -> bool {
        let newer = self
            .server
            .clients
            .get(&from)
            .is_none_or(|s| incarnation > s.incarnation);
        let running_older = self
            .server
            .running
            .keys()
            .any(|id| id.client == from && id.client_incarnation < incarnation);
        if newer || running_older {
            self.client_restarted(from, incarnation, Some(adopted));
        }
        true
    }

    /// `client` is now in life `incarnation`: its earlier lives' records go,
    /// and their running computations are orphans. `adopted` lists the calls
    /// of the previous life the new one claims, when its announcement says
    /// so; gentle reincarnation waits for that list.
    fn client_restarted(
        &mut self,
        client: NodeId,
        incarnation: Incarnation,
        adopted: Option<&[u64]>,
    ) {
        if let Some(state) = self.server.clients.get_mut(&client)
            && incarnation > state.incarnation
        {
            self.server.stats.records_forgotten += state.records.len() as u64;
            let last_heard = state.last_heard;
            *state = ClientState::new(incarnation, last_heard);
        }
        let orphans: Vec<CallId> = self
            .server
            .running
            .keys()
            .filter(|id| id.client == client && id.client_incarnation < incarnation)
            .copied()
            .collect();
        for id in orphans {
            match self.config.orphans.reincarnation {
                Reincarnation::Off => {}
                Reincarnation::Kill => self.kill(id, CancelReason::Reincarnation),
                Reincarnation::Gentle => {
                    let Some(adopted) = adopted else { continue };
                    let owned =
                        id.client_incarnation.0 + 1 == incarnation.0 && adopted.contains(&id.seq);
                    if !owned {
                        self.kill(id, CancelReason::GentleReincarnation);
                    }
                }
            }
        }
    }

    pub(crate) fn on_exterminate(
        &mut self,
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
            self.kill(id, CancelReason::Exterminated);
        }
        self.send(
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
        now: Instant,
        from: NodeId,
        incarnation: Incarnation,
        seqs: &[u64],
    ) -> bool {
        let Some(quantum) = self.config.orphans.quantum else {
            return false;
        };
        for &seq in seqs {
            let id = CallId {
                client: from,
                client_incarnation: incarnation,
                seq,
            };
            if let Some(r) = self.server.running.get_mut(&id) {
                r.quantum_until = Some(after(now, quantum));
                self.arm_running(id);
            }
        }
        if let Some(s) = self.server.clients.get_mut(&from) {
            s.last_heard = now;
        }
        true
    }

    /// Forgets the at-most-once records of clients whose lease ran out,
    /// keeping a tombstone: their calls join the forgotten set, so a late
    /// duplicate is answered stale, never run again. Exactly-once records
    /// stay: they are on stable storage, and a reply lost before the lease
    /// ran out must still be answered from them.
    pub(crate) fn on_leases(&mut self, now: Instant) {
        let lease = self.config.lease;
        for state in self.server.clients.values_mut() {
            if now.saturating_duration_since(state.last_heard) < lease {
                continue;
            }
            let volatile: Vec<u64> = state
                .records
                .iter()
                .filter(|(_, r)| !r.durable)
                .map(|(s, _)| *s)
                .collect();
            if volatile.is_empty() {
                continue;
            }
            for seq in &volatile {
                state.drop_record(*seq);
                state.forgotten.insert(*seq);
            }
            self.server.stats.records_forgotten += volatile.len() as u64;
            self.server.stats.leases_expired += 1;
        }
        self.set_timer(
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
        assert_eq!(
            r.0.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
            vec![(5, 7), (10, 10)]
        );
        assert!(r.contains(6) && r.contains(10) && !r.contains(8));
        for s in 0..1000u64 {
            r.insert(100 + 3 * s);
        }
        assert!(r.0.len() <= MAX_FORGOTTEN_RANGES);
        assert!(r.contains(100) && r.contains(100 + 3 * 999));
        r.trim_below(7);
        assert!(!r.contains(5) && r.contains(7));
    }

    #[test]
    fn completion_records_round_trip_with_their_effect() {
        let id = CallId {
            client: NodeId(3),
            client_incarnation: Incarnation(2),
            seq: 9,
        };
        for (answer, effect) in [
            (Answer::Reply(Bytes::from("reply")), Some(Bytes::from("+1"))),
            (Answer::Failed, None),
            (Answer::TooLarge(1 << 30), Some(Bytes::new())),
        ] {
            let rec = Records::completion(&id, 77, &answer, effect.as_ref());
            let parsed = Records::parse(&[rec]);
            assert_eq!(
                parsed.completions,
                vec![Completion {
                    id,
                    fingerprint: 77,
                    answer,
                    effect
                }]
            );
        }
    }
}

//! The server side: duplicate detection, completion records, orphans.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ft_core::{Incarnation, NodeId, PersistToken};

use super::{
    CallId, CancelReason, Outcome, Reincarnation, Rpc, RpcEvent, RpcMessage, RpcTimer, Semantics,
    after,
};

/// The most clients a server keeps state for; calls from further clients
/// are refused rather than evicting a client's state (which would let a
/// late duplicate of its calls execute again).
pub const MAX_CLIENTS: usize = 4096;

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
    /// Stale calls rejected (an earlier life of the client or the server).
    pub stale_rejected: u64,
    /// Calls refused (too many clients or computations, deadline past).
    pub refused: u64,
    /// Computations killed as orphans or past their deadline.
    pub killed: u64,
    /// Completions that arrived for computations already killed.
    pub completions_discarded: u64,
    /// Completion records made durable (exactly-once).
    pub records_persisted: u64,
    /// Completion records restored at start (exactly-once).
    pub records_restored: u64,
    /// Completion records forgotten (acknowledged by the client, or over
    /// the per-client bound).
    pub records_forgotten: u64,
}

#[derive(Debug)]
struct ClientState {
    incarnation: Incarnation,
    /// Calls below this have been answered and forgotten: duplicates of
    /// them are stale, never executed again.
    first_incomplete: u64,
    records: BTreeMap<u64, Bytes>,
    last_heard: Instant,
    highest_seen: u64,
}

#[derive(Debug)]
struct Running {
    semantics: Semantics,
    deadline: Instant,
    quantum_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct Server {
    clients: BTreeMap<NodeId, ClientState>,
    running: BTreeMap<CallId, Running>,
    persisting: BTreeMap<PersistToken, (CallId, Bytes)>,
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
    pub(crate) fn restore(&mut self, completions: &[(CallId, Bytes)], now: Instant) {
        for (id, reply) in completions {
            let state = self.clients.entry(id.client).or_insert(ClientState {
                incarnation: id.client_incarnation,
                first_incomplete: 0,
                records: BTreeMap::new(),
                last_heard: now,
                highest_seen: 0,
            });
            if id.client_incarnation > state.incarnation {
                state.incarnation = id.client_incarnation;
                state.records.clear();
            }
            if id.client_incarnation == state.incarnation {
                state.records.insert(id.seq, reply.clone());
                state.highest_seen = state.highest_seen.max(id.seq);
                self.stats.records_restored += 1;
            }
        }
    }
}

/// Stable-storage records of an RPC node: completion records (server,
/// exactly-once) and the call log (client, extermination and gentle
/// reincarnation).
#[derive(Debug, Default)]
pub(crate) struct Records {
    pub(crate) completions: Vec<(CallId, Bytes)>,
    /// Calls logged as sent and not logged as finished: (life, seq) → server.
    pub(crate) unfinished: BTreeMap<(Incarnation, u64), NodeId>,
}

const COMPLETION: u8 = 1;
const CALL_LOGGED: u8 = 2;
const CALL_DONE: u8 = 3;

impl Records {
    pub(crate) fn completion(id: &CallId, reply: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(1 + 24 + reply.len());
        b.put_u8(COMPLETION);
        b.put_u64_le(id.client.0);
        b.put_u64_le(id.client_incarnation.0);
        b.put_u64_le(id.seq);
        b.put_slice(reply);
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
                COMPLETION if b.remaining() >= 24 => {
                    let id = CallId {
                        client: NodeId(b.get_u64_le()),
                        client_incarnation: Incarnation(b.get_u64_le()),
                        seq: b.get_u64_le(),
                    };
                    out.completions.push((id, b));
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
        body: Bytes,
    ) -> bool {
        // A call in someone else's name, or for a life of ours that has not
        // happened yet, is forged: drop it.
        if id.client != from || server_incarnation > self.incarnation || id.seq == 0 {
            return false;
        }
        if !self.server.clients.contains_key(&from) {
            if self.server.clients.len() >= MAX_CLIENTS {
                self.server.stats.refused += 1;
                self.reply(from, id, Outcome::Refused);
                return true;
            }
            self.server.clients.insert(
                from,
                ClientState {
                    incarnation: id.client_incarnation,
                    first_incomplete: 0,
                    records: BTreeMap::new(),
                    last_heard: now,
                    highest_seen: 0,
                },
            );
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
        state.highest_seen = state.highest_seen.max(id.seq);
        if first_incomplete > state.first_incomplete {
            // The client has every reply below `first_incomplete`.
            let keep = state.records.split_off(&first_incomplete);
            self.server.stats.records_forgotten += state.records.len() as u64;
            state.records = keep;
            state.first_incomplete = first_incomplete;
        }
        if semantics != Semantics::AtLeastOnce {
            if let Some(reply) = state.records.get(&id.seq).cloned() {
                self.server.stats.replies_from_records += 1;
                self.reply(from, id, Outcome::Done(reply));
                return true;
            }
            if id.seq < state.first_incomplete {
                self.server.stats.stale_rejected += 1;
                self.reply(from, id, Outcome::Stale);
                return true;
            }
        }
        if self.server.running.contains_key(&id)
            || self.server.persisting.values().any(|(p, _)| *p == id)
        {
            self.server.stats.in_progress_replies += 1;
            self.reply(from, id, Outcome::InProgress);
            return true;
        }
        if semantics == Semantics::AtMostOnce && server_incarnation < self.incarnation {
            // Meant for an earlier life of ours, which may have executed it
            // before crashing: executing it again could make twice.
            self.server.stats.stale_rejected += 1;
            self.reply(from, id, Outcome::Stale);
            return true;
        }
        if self.server.running.len() >= self.config.max_running || budget_ms == 0 {
            self.server.stats.refused += 1;
            self.reply(from, id, Outcome::Refused);
            return true;
        }
        let deadline = after(now, Duration::from_millis(u64::from(budget_ms)));
        let quantum_until = self.config.orphans.quantum.map(|q| after(now, q));
        self.server.running.insert(
            id,
            Running {
                semantics,
                deadline,
                quantum_until,
            },
        );
        self.server.stats.executions += 1;
        self.arm_running(id);
        self.event(RpcEvent::Execute {
            id,
            request: body,
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

    pub(crate) fn complete(&mut self, _now: Instant, id: CallId, reply: Bytes) {
        let Some(r) = self.server.running.remove(&id) else {
            self.server.stats.completions_discarded += 1;
            return;
        };
        self.cancel_timer(RpcTimer::Running(id));
        let reply = if reply.len() > super::MAX_BODY {
            // Too large to send: the caller gets a refusal, not a truncation.
            self.reply(id.client, id, Outcome::Refused);
            return;
        } else {
            reply
        };
        match r.semantics {
            Semantics::AtLeastOnce => self.reply(id.client, id, Outcome::Done(reply)),
            Semantics::AtMostOnce => {
                self.record(id, reply.clone());
                self.reply(id.client, id, Outcome::Done(reply));
            }
            Semantics::ExactlyOnce => {
                // Persist before you speak: the reply goes out only once the
                // record that lets a later life answer it is durable.
                let token = self.persist(Records::completion(&id, &reply));
                self.server.persisting.insert(token, (id, reply));
            }
        }
    }

    fn record(&mut self, id: CallId, reply: Bytes) {
        let bound = self.config.records_per_client.max(1);
        let Some(state) = self.server.clients.get_mut(&id.client) else {
            return;
        };
        if state.incarnation != id.client_incarnation || id.seq < state.first_incomplete {
            return;
        }
        state.records.insert(id.seq, reply);
        while state.records.len() > bound {
            // Over the bound: forget the oldest, and everything below it
            // becomes stale rather than executable again.
            if let Some((seq, _)) = state.records.pop_first() {
                state.first_incomplete = state.first_incomplete.max(seq + 1);
                self.server.stats.records_forgotten += 1;
            }
        }
    }

    /// A completion record became durable: answer.
    pub(crate) fn server_persisted(&mut self, token: PersistToken) -> bool {
        let Some((id, reply)) = self.server.persisting.remove(&token) else {
            return false;
        };
        self.server.stats.records_persisted += 1;
        self.record(id, reply.clone());
        self.reply(id.client, id, Outcome::Done(reply));
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
            state.incarnation = incarnation;
            self.server.stats.records_forgotten += state.records.len() as u64;
            state.records.clear();
            state.first_incomplete = 0;
            state.highest_seen = 0;
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

    /// Forgets the records of clients whose lease ran out, keeping a
    /// tombstone (everything up to the highest call seen is stale).
    pub(crate) fn on_leases(&mut self, now: Instant) {
        let lease = self.config.lease;
        for state in self.server.clients.values_mut() {
            if now.saturating_duration_since(state.last_heard) >= lease && !state.records.is_empty()
            {
                self.server.stats.records_forgotten += state.records.len() as u64;
                state.records.clear();
                state.first_incomplete = state.first_incomplete.max(state.highest_seen + 1);
            }
        }
        self.set_timer(
            RpcTimer::Leases,
            after(now, lease.max(Duration::from_millis(1))),
        );
    }
}

//! The client side: binding, retransmission, deadlines, the five failure
//! classes, and the client's part in orphan handling.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, PersistToken};

use super::budget::Bucket;
use super::due::Due;
use super::message::{Chunk, Refusal, fingerprint};
use super::node::Node;
use super::parts::{Added, Parts};
use super::records::{Fact, LoggedCall, RpcRecord};
use super::window::{FastMap, Window};
use super::{
    CallId, CallOptions, Executed, Outcome, Reincarnation, RpcError, RpcEvent, RpcMessage,
    RpcTimer, Semantics, after,
};

/// How many times a restarted client announces its new life (the
/// announcement is not acknowledged; repeats cover a lossy network).
const ANNOUNCES: u32 = 3;

/// How often a client renews the quantum `q` of its calls (expiration):
/// three times per quantum, so one lost renewal leaves a gap of `2q/3`,
/// which a server whose clock does not run much faster than the client's
/// still accepts (see [`OrphanConfig::quantum`](super::OrphanConfig)).
pub(crate) fn renew_every(q: Duration) -> Duration {
    (q / 3).max(Duration::from_millis(1))
}

/// Counts of what the client side did, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientStats {
    /// Calls started.
    pub calls: u64,
    /// Calls answered with a reply.
    pub succeeded: u64,
    /// Calls that ended in an error, of any class.
    pub failed: u64,
    /// Requests sent again after a timeout (once per call and timeout,
    /// however many parts or `Locate`s went out: the core's
    /// [`Counters::retransmissions`](ft_core::Counters) counts messages).
    pub retransmissions: u64,
    /// Retransmissions withheld by the retry budget.
    pub throttled: u64,
    /// Retransmissions sent although the budget was spent: the one probe a
    /// call may send every [`RetryBudget::probe_every`](super::RetryBudget),
    /// so that a call never stops trying before its deadline.
    pub probes: u64,
    /// Replies that arrived in parts and were put together.
    pub replies_reassembled: u64,
    /// `Locate` requests sent (binding).
    pub locates: u64,
    /// Server restarts noticed (a higher server incarnation).
    pub server_restarts_seen: u64,
    /// "In progress" answers received.
    pub in_progress: u64,
    /// Replies that matched no outstanding call (late duplicates).
    pub stray_replies: u64,
    /// Unfinished calls of earlier lives this life asked servers to kill.
    pub exterminations_requested: u64,
}

#[derive(Debug)]
struct Call {
    token: u64,
    server: NodeId,
    /// The request, sent in parts of [`MAX_PART`](super::MAX_PART) (one,
    /// if it is small: see [`Chunk::parts`]).
    request: Bytes,
    fingerprint: u64,
    options: CallOptions,
    /// Times the request itself was sent.
    attempts: u32,
    /// Times anything was sent for it (binding included): the back-off
    /// exponent.
    tries: u32,
    /// The server life the request was last sent to.
    sent_to: Option<Incarnation>,
    /// The server said it was running the call.
    in_progress_seen: bool,
    /// Waiting for the call-log record to become durable.
    logging: bool,
    /// When anything was last sent for it (for the probe allowance).
    last_sent: Option<Instant>,
    /// When it is to be sent again (none before it was first sent).
    retry_at: Option<Instant>,
    /// When it next needs the timer: the earlier of `retry_at` and its
    /// deadline (once it is in [`Client::due`]).
    wake: Option<Instant>,
}

impl Call {
    /// Whether the call may have executed, from what this client saw.
    fn executed(&self) -> Executed {
        if self.in_progress_seen {
            Executed::Yes
        } else if self.attempts == 0 {
            Executed::No
        } else {
            Executed::Unknown
        }
    }
}

/// The client side of an RPC node: its outstanding calls, the servers it
/// is bound to, its retry budget and its call log.
#[derive(Debug, Default)]
pub(crate) struct Client {
    /// The outstanding calls, by number: numbers are given out in
    /// increasing order, so they are kept in a [`Window`], and walked in
    /// that order.
    calls: Window<Call>,
    /// The outstanding calls by when they next need the timer (`wake`).
    /// One timer ([`RpcTimer::Calls`]) serves them all, so a call that is
    /// answered before its retransmission is due sets and cancels no timer
    /// of its own.
    due: Due<u64>,
    /// The outstanding calls' numbers by token (never walked).
    by_token: FastMap<u64, u64>,
    next_seq: u64,
    bound: BTreeMap<NodeId, Incarnation>,
    locating: BTreeMap<NodeId, u64>,
    bucket: Option<Bucket>,
    log_waits: BTreeMap<PersistToken, u64>,
    /// The call log as stable storage will hold it once every persist asked
    /// for is durable: calls logged and not yet logged as done, (life, seq)
    /// → server. What a snapshot keeps of the log.
    call_log: BTreeMap<(Incarnation, u64), NodeId>,
    /// Extermination requests not yet acknowledged: (server, life) → seqs.
    exterminate: BTreeMap<(NodeId, Incarnation), Vec<u64>>,
    /// Servers that have not yet acknowledged our restart announcement.
    announce_to: BTreeSet<NodeId>,
    adopted: Vec<u64>,
    announces_left: u32,
    /// Replies arriving in parts.
    parts: Parts,
    stats: ClientStats,
}

impl Client {
    // ---- getters ----

    /// Calls outstanding.
    pub(crate) fn pending(&self) -> usize {
        self.calls.len()
    }

    pub(crate) fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The call-log entries a snapshot must keep.
    pub(crate) fn snapshot(&self) -> impl Iterator<Item = LoggedCall> + '_ {
        self.call_log
            .iter()
            .map(|(&(life, seq), &server)| LoggedCall { life, seq, server })
    }

    fn first_incomplete(&self) -> u64 {
        self.calls.first_key().unwrap_or(self.next_seq + 1)
    }

    /// Puts call `seq` in `due` for when it next needs the timer, after
    /// it started or its retransmission time changed.
    fn schedule(&mut self, seq: u64) {
        let Some(c) = self.calls.get_mut(seq) else {
            return;
        };
        let deadline = c.options.deadline;
        let wake = c.retry_at.map_or(deadline, |r| r.min(deadline));
        if c.wake != Some(wake) {
            c.wake = Some(wake);
            let all = self
                .calls
                .iter()
                .filter_map(|(seq, c)| Some((c.wake?, seq)));
            self.due.push(wake, seq, self.calls.len(), all);
        }
    }

    /// Sets the `Calls` timer if the earliest call due is earlier than it
    /// is set for (or it is not set): after every step of the node.
    pub(crate) fn arm(&mut self, node: &mut Node) {
        let calls = &self.calls;
        if let Some(at) = self.due.arm_at(|at, seq| Client::wakes(calls, at, seq)) {
            node.out.set_timer(RpcTimer::Calls, at);
        }
    }

    /// Whether call `seq` is outstanding and next needs the timer at `at`.
    fn wakes(calls: &Window<Call>, at: Instant, seq: u64) -> bool {
        calls.get(seq).is_some_and(|c| c.wake == Some(at))
    }

    fn bucket(&mut self, node: &Node) -> &mut Bucket {
        let budget = node.config.budget;
        self.bucket.get_or_insert_with(|| Bucket::new(budget))
    }

    // ---- recovery ----

    /// The call log as the durable records have it.
    pub(crate) fn restore<'a>(&mut self, facts: impl Iterator<Item = &'a Fact>) {
        for fact in facts {
            match fact {
                Fact::Logged(c) => {
                    self.call_log.insert((c.life, c.seq), c.server);
                }
                Fact::Done(life, seq) => {
                    self.call_log.remove(&(*life, *seq));
                }
                _ => {}
            }
        }
    }

    /// At start: announce a new life to every peer, and exterminate (or
    /// adopt) the unfinished calls of earlier lives found in the call log.
    pub(crate) fn start(&mut self, node: &mut Node, now: Instant) {
        if let Some(q) = node.config.orphans.quantum {
            node.out
                .set_timer(RpcTimer::Renew, after(now, renew_every(q)));
        }
        if node.incarnation == Incarnation::FIRST {
            return;
        }
        let previous = Incarnation(node.incarnation.0.saturating_sub(1));
        if node.config.orphans.extermination {
            for (&(life, seq), &server) in &self.call_log {
                if life < node.incarnation {
                    self.exterminate
                        .entry((server, life))
                        .or_default()
                        .push(seq);
                    self.stats.exterminations_requested += 1;
                }
            }
        } else {
            if node.config.orphans.reincarnation == Reincarnation::Gentle {
                self.adopted = self
                    .call_log
                    .keys()
                    .filter(|(life, _)| *life == previous)
                    .map(|(_, seq)| *seq)
                    .collect();
            }
            // Announced now: a later life adopts only this life's calls.
            self.call_log
                .retain(|(life, _), _| *life >= node.incarnation);
        }
        self.announce_to = node.config.peers.iter().copied().collect();
        self.announce_to.remove(&node.me);
        self.announces_left = ANNOUNCES;
        self.on_recovery_timer(node, now);
    }

    // ---- calls ----

    pub(crate) fn call(
        &mut self,
        node: &mut Node,
        now: Instant,
        token: u64,
        server: NodeId,
        request: Bytes,
        options: CallOptions,
    ) {
        self.stats.calls += 1;
        let limit = node.config.max_body;
        // Looked up once: the entry is filled if the call goes ahead.
        let by_token = self.by_token.entry(token);
        let refuse = if matches!(by_token, Entry::Occupied(_)) {
            Some(RpcError::Refused(Refusal::TokenInUse))
        } else if self.calls.len() >= node.config.max_pending {
            Some(RpcError::Refused(Refusal::TooManyPending))
        } else if request.len() > limit {
            // Checked before anything is sent.
            Some(RpcError::Refused(Refusal::RequestTooLarge {
                len: request.len() as u64,
                limit: limit as u64,
            }))
        } else if server == node.me || !node.config.peers.contains(&server) {
            Some(RpcError::CannotLocateServer { server })
        } else if options.deadline <= now {
            Some(RpcError::TimedOut {
                attempts: 0,
                executed: Executed::No,
            })
        } else {
            None
        };
        if let Some(e) = refuse {
            if let RpcError::Refused(why) = &e {
                node.out.note(why.note(), Some(server), None, None);
            }
            self.stats.failed += 1;
            node.out.event(RpcEvent::Returned {
                token,
                result: Err(e),
            });
            return;
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        by_token.insert_entry(seq);
        let logging = node.logs_calls();
        self.calls.push(
            seq,
            Call {
                token,
                server,
                fingerprint: fingerprint(options.semantics, &request),
                request,
                options,
                attempts: 0,
                tries: 0,
                sent_to: None,
                in_progress_seen: false,
                logging,
                last_sent: None,
                retry_at: None,
                wake: None,
            },
        );
        if logging {
            // Extermination: the call is on stable storage before any server
            // can start on it, so a later life knows what to kill.
            let entry = LoggedCall {
                life: node.incarnation,
                seq,
                server,
            };
            let t = node.persist(&RpcRecord::CallLogged(entry));
            self.call_log.insert((entry.life, seq), server);
            self.log_waits.insert(t, seq);
            self.schedule(seq);
        } else {
            self.transmit(node, now, seq, false);
        }
    }

    fn finish(&mut self, node: &mut Node, seq: u64, result: Result<Bytes, RpcError>) {
        let Some(call) = self.calls.remove(seq) else {
            return;
        };
        self.by_token.remove(&call.token);
        if !self.parts.is_empty() {
            self.parts.remove(call.server, node.call_id(seq));
        }
        if result.is_ok() {
            self.stats.succeeded += 1;
        } else {
            self.stats.failed += 1;
        }
        if node.logs_calls() && !call.logging {
            // No need to wait: a lost "done" only means a later life asks
            // the server to kill a call that already finished.
            let life = node.incarnation;
            node.persist(&RpcRecord::CallDone { life, seq });
            self.call_log.remove(&(life, seq));
        }
        node.out.event(RpcEvent::Returned {
            token: call.token,
            result,
        });
    }

    /// A record became durable: if it logged a call, the call goes out.
    /// Returns whether the token was the client's.
    pub(crate) fn persisted(&mut self, node: &mut Node, now: Instant, token: PersistToken) -> bool {
        let Some(seq) = self.log_waits.remove(&token) else {
            return false;
        };
        if let Some(call) = self.calls.get_mut(seq) {
            call.logging = false;
            self.transmit(node, now, seq, false);
        }
        true
    }

    /// Sends call `seq` (or locates its server first) and arms its retry;
    /// `again` when it is a retransmission.
    fn transmit(&mut self, node: &mut Node, now: Instant, seq: u64, again: bool) {
        let first_incomplete = self.first_incomplete();
        let Some(call) = self.calls.get_mut(seq) else {
            return;
        };
        let server = call.server;
        let attempt = call.tries;
        call.tries += 1;
        call.last_sent = Some(now);
        match self.bound.get(&server).copied() {
            Some(inc) => {
                call.attempts += 1;
                call.sent_to = Some(inc);
                let left = call.options.deadline.saturating_duration_since(now);
                let budget_ms = left.as_millis().min(u128::from(u32::MAX)) as u32;
                // Every part again: the server keeps the parts it has, so
                // each retransmission fills what was lost.
                for body in Chunk::parts(&call.request) {
                    let msg = RpcMessage::Call {
                        id: node.call_id(seq),
                        server_incarnation: inc,
                        semantics: call.options.semantics,
                        first_incomplete,
                        budget_ms,
                        fingerprint: call.fingerprint,
                        body,
                    };
                    node.send(server, seq, msg, again);
                }
            }
            None => {
                let nonce = node.rng.next_u64();
                self.locating.insert(server, nonce);
                self.stats.locates += 1;
                node.send(server, seq, RpcMessage::Locate { nonce }, again);
            }
        }
        let wait = node.config.backoff.wait(attempt, &mut node.rng);
        call.retry_at = Some(after(now, wait));
        self.schedule(seq);
    }

    /// The `Calls` timer fired: every retransmission and deadline due by
    /// `now`, earliest first (a retransmission before a deadline at the
    /// same instant).
    pub(crate) fn on_calls_timer(&mut self, node: &mut Node, now: Instant) {
        self.due.fired();
        loop {
            let calls = &self.calls;
            let Some(seq) = self
                .due
                .next_due(now, |at, seq| Client::wakes(calls, at, seq))
            else {
                break;
            };
            let Some(c) = self.calls.get(seq) else {
                break;
            };
            // Each turn either ends the call or moves its retransmission
            // past `now`.
            if c.retry_at.is_some_and(|r| r <= c.options.deadline) {
                self.on_retry(node, now, seq);
            } else {
                self.on_deadline(node, seq);
            }
        }
    }

    pub(crate) fn on_retry(&mut self, node: &mut Node, now: Instant, seq: u64) {
        let Some(last_sent) = self.calls.get(seq).map(|c| c.last_sent) else {
            return;
        };
        // Past the probe interval, a call sends even with the budget spent:
        // the budget protects an overloaded server from amplified retries,
        // and must not strand a call on a server that has come back.
        let probe_due = node
            .config
            .budget
            .probe_every
            .is_some_and(|every| last_sent.is_none_or(|t| now >= after(t, every)));
        if self.bucket(node).try_retry(now) {
            self.stats.retransmissions += 1;
            self.transmit(node, now, seq, true);
        } else if probe_due {
            self.stats.probes += 1;
            self.stats.retransmissions += 1;
            self.transmit(node, now, seq, true);
        } else {
            // Throttled: keep waiting for a reply, try again later (backing
            // off as if it had been sent).
            self.stats.throttled += 1;
            let attempt = self.calls.get_mut(seq).map_or(0, |c| {
                c.tries += 1;
                c.tries - 1
            });
            let wait = node.config.backoff.wait(attempt, &mut node.rng);
            if let Some(c) = self.calls.get_mut(seq) {
                c.retry_at = Some(after(now, wait));
            }
            self.schedule(seq);
        }
    }

    pub(crate) fn on_deadline(&mut self, node: &mut Node, seq: u64) {
        let Some(call) = self.calls.get(seq) else {
            return;
        };
        let error = if call.sent_to.is_none() {
            RpcError::CannotLocateServer {
                server: call.server,
            }
        } else {
            RpcError::TimedOut {
                attempts: call.attempts,
                executed: call.executed(),
            }
        };
        self.tell_server_to_stop(node, seq);
        self.finish(node, seq, Err(error));
    }

    pub(crate) fn cancel(&mut self, node: &mut Node, token: u64) {
        if let Some(&seq) = self.by_token.get(&token) {
            let executed = self
                .calls
                .get(seq)
                .map_or(Executed::Unknown, Call::executed);
            self.tell_server_to_stop(node, seq);
            self.finish(node, seq, Err(RpcError::Cancelled { executed }));
        }
    }

    fn tell_server_to_stop(&mut self, node: &mut Node, seq: u64) {
        if let Some(call) = self.calls.get(seq)
            && call.sent_to.is_some()
        {
            let id = node.call_id(seq);
            node.out.send(call.server, RpcMessage::Cancel { id });
        }
    }

    // ---- messages ----

    pub(crate) fn on_located(
        &mut self,
        node: &mut Node,
        now: Instant,
        from: NodeId,
        nonce: u64,
        server_incarnation: Incarnation,
    ) -> bool {
        if self.locating.get(&from) != Some(&nonce) {
            return false;
        }
        self.locating.remove(&from);
        self.bind(node, from, server_incarnation);
        let waiting: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.server == from && c.sent_to.is_none() && !c.logging)
            .map(|(s, _)| s)
            .collect();
        for seq in waiting {
            self.transmit(node, now, seq, false);
        }
        true
    }

    /// Records `server`'s life; a newer one means it restarted, and the
    /// calls sent to the old life are dealt with by their semantics.
    fn bind(&mut self, node: &mut Node, server: NodeId, incarnation: Incarnation) {
        let old = self.bound.get(&server).copied();
        if old.is_some_and(|o| o >= incarnation) {
            return;
        }
        self.bound.insert(server, incarnation);
        if old.is_none() {
            return;
        }
        self.stats.server_restarts_seen += 1;
        node.out
            .note("server restarted", Some(server), Some(incarnation), None);
        let crashed: Vec<(u64, Executed)> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.server == server
                    && c.options.semantics == Semantics::AtMostOnce
                    && c.sent_to.is_some_and(|s| s < incarnation)
            })
            .map(|(seq, c)| (seq, c.executed()))
            .collect();
        for (seq, executed) in crashed {
            self.finish(
                node,
                seq,
                Err(RpcError::ServerCrashed {
                    incarnation,
                    executed,
                }),
            );
        }
        // At-least-once and exactly-once calls go on with the new life at
        // their next retransmission.
    }

    pub(crate) fn on_reply(
        &mut self,
        node: &mut Node,
        from: NodeId,
        id: CallId,
        server_incarnation: Incarnation,
        outcome: Outcome,
    ) -> bool {
        if id.client != node.me {
            return false;
        }
        if id.client_incarnation != node.incarnation {
            // Gentle reincarnation: a call of the previous life that this
            // life adopted has its answer.
            return false;
        }
        let Some(call) = self.calls.get(id.seq) else {
            self.stats.stray_replies += 1;
            return false;
        };
        if call.server != from {
            return false;
        }
        self.bind(node, from, server_incarnation);
        let Some(call) = self.calls.get_mut(id.seq) else {
            // The restart ended it (at-most-once).
            return true;
        };
        let executed = call.executed();
        let result = match outcome {
            Outcome::Done(body) => {
                self.bucket(node).on_success();
                Ok(body)
            }
            Outcome::InProgress => {
                call.in_progress_seen = true;
                self.stats.in_progress += 1;
                self.bucket(node).on_success();
                return true;
            }
            Outcome::Stale => {
                // Our life is current and the server's too: the call was
                // answered and forgotten, or meant for a life of the server
                // that is over. Either way its outcome is unknown here; it
                // is never reported as refused.
                if call.options.semantics == Semantics::AtMostOnce
                    && call.sent_to.is_some_and(|s| s < server_incarnation)
                {
                    Err(RpcError::ServerCrashed {
                        incarnation: server_incarnation,
                        executed,
                    })
                } else {
                    Err(RpcError::Forgotten { executed })
                }
            }
            Outcome::Refused(why) => Err(RpcError::Refused(why)),
            Outcome::Mismatch => Err(RpcError::Mismatch),
            Outcome::Failed => Err(RpcError::HandlerFailed),
            Outcome::ReplyTooLarge { len, limit } => Err(RpcError::ReplyTooLarge { len, limit }),
        };
        self.finish(node, id.seq, result);
        true
    }

    /// A part of a large reply: kept until the whole is there.
    pub(crate) fn on_reply_part(
        &mut self,
        node: &mut Node,
        from: NodeId,
        id: CallId,
        server_incarnation: Incarnation,
        fingerprint: u64,
        body: Chunk,
    ) -> bool {
        if id.client != node.me
            || id.client_incarnation != node.incarnation
            || self.calls.get(id.seq).is_none_or(|c| c.server != from)
            || body.total_len as usize > node.config.max_body
        {
            return false;
        }
        let per_peer = node.config.max_partial_per_peer;
        let total = node.config.max_partial_total;
        match self.parts.add(from, id, fingerprint, body, per_peer, total) {
            Added::Whole(reply) => {
                self.stats.replies_reassembled += 1;
                self.on_reply(node, from, id, server_incarnation, Outcome::Done(reply))
            }
            Added::Waiting => true,
            Added::Dropped => false,
        }
    }

    pub(crate) fn on_exterminated(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        seqs: &[u64],
    ) -> bool {
        let Some(pending) = self.exterminate.get_mut(&(from, incarnation)) else {
            return false;
        };
        pending.retain(|s| !seqs.contains(s));
        for seq in seqs {
            // Killed: no later life needs to ask again.
            self.call_log.remove(&(incarnation, *seq));
        }
        if pending.is_empty() {
            self.exterminate.remove(&(from, incarnation));
        }
        self.announce_to.remove(&from);
        true
    }

    // ---- timers ----

    pub(crate) fn on_recovery_timer(&mut self, node: &mut Node, now: Instant) {
        for &to in &self.announce_to {
            node.out.send(
                to,
                RpcMessage::Announce {
                    client_incarnation: node.incarnation,
                    adopted: self.adopted.clone(),
                },
            );
        }
        for (&(server, life), seqs) in &self.exterminate {
            for chunk in seqs.chunks(super::MAX_LISTED) {
                node.out.send(
                    server,
                    RpcMessage::Exterminate {
                        client_incarnation: life,
                        seqs: chunk.to_vec(),
                    },
                );
            }
        }
        // Announcements are not acknowledged: on a lossy network they are
        // repeated a few times; extermination requests until acknowledged.
        self.announces_left = self.announces_left.saturating_sub(1);
        if self.announces_left == 0 {
            self.announce_to.clear();
        }
        if !self.exterminate.is_empty() || !self.announce_to.is_empty() {
            let wait = node.config.backoff.max.max(Duration::from_millis(1));
            node.out.set_timer(RpcTimer::Recovery, after(now, wait));
        }
    }

    pub(crate) fn on_renew_timer(&mut self, node: &mut Node, now: Instant) {
        let Some(q) = node.config.orphans.quantum else {
            return;
        };
        let mut by_server: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
        for (seq, c) in self.calls.iter() {
            if c.sent_to.is_some() {
                by_server.entry(c.server).or_default().push(seq);
            }
        }
        for (server, seqs) in by_server {
            for chunk in seqs.chunks(super::MAX_LISTED) {
                node.out.send(
                    server,
                    RpcMessage::Renew {
                        client_incarnation: node.incarnation,
                        seqs: chunk.to_vec(),
                    },
                );
            }
        }
        node.out
            .set_timer(RpcTimer::Renew, after(now, renew_every(q)));
    }
}

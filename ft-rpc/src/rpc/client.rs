//! The client side: binding, retransmission, deadlines, the five failure
//! classes, and the client's part in orphan handling.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, PersistToken};

use super::budget::Bucket;
use super::message::{Chunk, Refusal, fingerprint};
use super::parts::{Added, Parts};
use super::server::Records;
use super::{
    CallId, CallOptions, Executed, Outcome, Reincarnation, Rpc, RpcError, RpcEvent, RpcMessage,
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
    /// Requests sent again after a timeout.
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
pub(crate) struct Call {
    token: u64,
    server: NodeId,
    /// The request, in the parts it is sent in (one, if it is small).
    request: Vec<Chunk>,
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

#[derive(Debug, Default)]
pub(crate) struct Client {
    pub(crate) calls: BTreeMap<u64, Call>,
    by_token: BTreeMap<u64, u64>,
    next_seq: u64,
    bound: BTreeMap<NodeId, Incarnation>,
    locating: BTreeMap<NodeId, u64>,
    bucket: Option<Bucket>,
    log_waits: BTreeMap<PersistToken, u64>,
    /// Extermination requests not yet acknowledged: (server, life) → seqs.
    exterminate: BTreeMap<(NodeId, Incarnation), Vec<u64>>,
    /// Servers that have not yet acknowledged our restart announcement.
    announce_to: BTreeSet<NodeId>,
    adopted: Vec<u64>,
    announces_left: u32,
    /// Replies arriving in parts.
    parts: Parts,
    pub(crate) stats: ClientStats,
}

impl Rpc {
    fn logs_calls(&self) -> bool {
        self.config.orphans.extermination
            || self.config.orphans.reincarnation == Reincarnation::Gentle
    }

    fn bucket(&mut self) -> &mut Bucket {
        let budget = self.config.budget;
        self.client
            .bucket
            .get_or_insert_with(|| Bucket::new(budget))
    }

    fn finish(&mut self, seq: u64, result: Result<Bytes, RpcError>) {
        let Some(call) = self.client.calls.remove(&seq) else {
            return;
        };
        self.client.by_token.remove(&call.token);
        let id = CallId {
            client: self.me,
            client_incarnation: self.incarnation,
            seq,
        };
        self.client.parts.remove(call.server, id);
        self.cancel_timer(RpcTimer::Retry(seq));
        self.cancel_timer(RpcTimer::Deadline(seq));
        if result.is_ok() {
            self.client.stats.succeeded += 1;
        } else {
            self.client.stats.failed += 1;
        }
        if self.logs_calls() && !call.logging {
            // No need to wait: a lost "done" only means a later life asks
            // the server to kill a call that already finished.
            let record = Records::call_done(self.incarnation, seq);
            self.persist(record);
        }
        self.event(RpcEvent::Returned {
            token: call.token,
            result,
        });
    }

    pub(crate) fn call(
        &mut self,
        now: Instant,
        token: u64,
        server: NodeId,
        request: Bytes,
        options: CallOptions,
    ) {
        self.client.stats.calls += 1;
        let limit = self.config.max_body;
        let refuse = if self.client.by_token.contains_key(&token) {
            Some(RpcError::Refused(Refusal::TokenInUse))
        } else if self.client.calls.len() >= self.config.max_pending {
            Some(RpcError::Refused(Refusal::TooManyPending))
        } else if request.len() > limit {
            // Checked before anything is sent.
            Some(RpcError::Refused(Refusal::RequestTooLarge {
                len: request.len() as u64,
                limit: limit as u64,
            }))
        } else if server == self.me || !self.config.peers.contains(&server) {
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
            self.client.stats.failed += 1;
            self.event(RpcEvent::Returned {
                token,
                result: Err(e),
            });
            return;
        }
        self.client.next_seq += 1;
        let seq = self.client.next_seq;
        let logging = self.logs_calls();
        self.client.calls.insert(
            seq,
            Call {
                token,
                server,
                fingerprint: fingerprint(options.semantics, &request),
                request: Chunk::split(&request),
                options,
                attempts: 0,
                tries: 0,
                sent_to: None,
                in_progress_seen: false,
                logging,
                last_sent: None,
            },
        );
        self.client.by_token.insert(token, seq);
        self.set_timer(RpcTimer::Deadline(seq), options.deadline);
        if logging {
            // Extermination: the call is on stable storage before any server
            // can start on it, so a later life knows what to kill.
            let t = self.persist(Records::call_logged(self.incarnation, seq, server));
            self.client.log_waits.insert(t, seq);
        } else {
            self.transmit(now, seq);
        }
    }

    pub(crate) fn client_persisted(&mut self, now: Instant, token: PersistToken) {
        if let Some(seq) = self.client.log_waits.remove(&token)
            && let Some(call) = self.client.calls.get_mut(&seq)
        {
            call.logging = false;
            self.transmit(now, seq);
        }
    }

    fn first_incomplete(&self) -> u64 {
        self.client
            .calls
            .keys()
            .next()
            .copied()
            .unwrap_or(self.client.next_seq + 1)
    }

    /// Sends call `seq` (or locates its server first) and arms its retry.
    fn transmit(&mut self, now: Instant, seq: u64) {
        let first_incomplete = self.first_incomplete();
        let Some(call) = self.client.calls.get_mut(&seq) else {
            return;
        };
        let server = call.server;
        let attempt = call.tries;
        call.tries += 1;
        call.last_sent = Some(now);
        match self.client.bound.get(&server).copied() {
            Some(inc) => {
                call.attempts += 1;
                call.sent_to = Some(inc);
                let left = call.options.deadline.saturating_duration_since(now);
                let id = CallId {
                    client: self.me,
                    client_incarnation: self.incarnation,
                    seq,
                };
                let (semantics, fingerprint) = (call.options.semantics, call.fingerprint);
                let budget_ms = left.as_millis().min(u128::from(u32::MAX)) as u32;
                // Every part again: the server keeps the parts it has, so
                // each retransmission fills what was lost.
                let parts = call.request.clone();
                for body in parts {
                    self.send(
                        server,
                        RpcMessage::Call {
                            id,
                            server_incarnation: inc,
                            semantics,
                            first_incomplete,
                            budget_ms,
                            fingerprint,
                            body,
                        },
                    );
                }
            }
            None => self.locate(server),
        }
        let wait = self.config.backoff.wait(attempt, &mut self.rng);
        self.set_timer(RpcTimer::Retry(seq), after(now, wait));
    }

    fn locate(&mut self, server: NodeId) {
        let nonce = self.rng.next_u64();
        self.client.locating.insert(server, nonce);
        self.client.stats.locates += 1;
        self.send(server, RpcMessage::Locate { nonce });
    }

    pub(crate) fn on_retry(&mut self, now: Instant, seq: u64) {
        let Some(last_sent) = self.client.calls.get(&seq).map(|c| c.last_sent) else {
            return;
        };
        // Past the probe interval, a call sends even with the budget spent:
        // the budget protects an overloaded server from amplified retries,
        // and must not strand a call on a server that has come back.
        let probe_due = self
            .config
            .budget
            .probe_every
            .is_some_and(|every| last_sent.is_none_or(|t| now >= after(t, every)));
        if self.bucket().try_retry(now) {
            self.client.stats.retransmissions += 1;
            self.counters.retransmissions += 1;
            self.transmit(now, seq);
        } else if probe_due {
            self.client.stats.probes += 1;
            self.client.stats.retransmissions += 1;
            self.counters.retransmissions += 1;
            self.transmit(now, seq);
        } else {
            // Throttled: keep waiting for a reply, try again later (backing
            // off as if it had been sent).
            self.client.stats.throttled += 1;
            let attempt = self.client.calls.get_mut(&seq).map_or(0, |c| {
                c.tries += 1;
                c.tries - 1
            });
            let wait = self.config.backoff.wait(attempt, &mut self.rng);
            self.set_timer(RpcTimer::Retry(seq), after(now, wait));
        }
    }

    pub(crate) fn on_deadline(&mut self, seq: u64) {
        let Some(call) = self.client.calls.get(&seq) else {
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
        self.tell_server_to_stop(seq);
        self.finish(seq, Err(error));
    }

    pub(crate) fn cancel(&mut self, token: u64) {
        if let Some(&seq) = self.client.by_token.get(&token) {
            let executed = self
                .client
                .calls
                .get(&seq)
                .map_or(Executed::Unknown, Call::executed);
            self.tell_server_to_stop(seq);
            self.finish(seq, Err(RpcError::Cancelled { executed }));
        }
    }

    fn tell_server_to_stop(&mut self, seq: u64) {
        if let Some(call) = self.client.calls.get(&seq)
            && call.sent_to.is_some()
        {
            let id = CallId {
                client: self.me,
                client_incarnation: self.incarnation,
                seq,
            };
            let server = call.server;
            self.send(server, RpcMessage::Cancel { id });
        }
    }

    pub(crate) fn on_located(
        &mut self,
        now: Instant,
        from: NodeId,
        nonce: u64,
        server_incarnation: Incarnation,
    ) -> bool {
        if self.client.locating.get(&from) != Some(&nonce) {
            return false;
        }
        self.client.locating.remove(&from);
        self.bind(from, server_incarnation);
        let waiting: Vec<u64> = self
            .client
            .calls
            .iter()
            .filter(|(_, c)| c.server == from && c.sent_to.is_none() && !c.logging)
            .map(|(s, _)| *s)
            .collect();
        for seq in waiting {
            self.transmit(now, seq);
        }
        true
    }

    /// Records `server`'s life; a newer one means it restarted, and the
    /// calls sent to the old life are dealt with by their semantics.
    fn bind(&mut self, server: NodeId, incarnation: Incarnation) {
        let old = self.client.bound.get(&server).copied();
        if old.is_some_and(|o| o >= incarnation) {
            return;
        }
        self.client.bound.insert(server, incarnation);
        if old.is_none() {
            return;
        }
        self.client.stats.server_restarts_seen += 1;
        let crashed: Vec<(u64, Executed)> = self
            .client
            .calls
            .iter()
            .filter(|(_, c)| {
                c.server == server
                    && c.options.semantics == Semantics::AtMostOnce
                    && c.sent_to.is_some_and(|s| s < incarnation)
            })
            .map(|(seq, c)| (*seq, c.executed()))
            .collect();
        for (seq, executed) in crashed {
            self.finish(
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
        _now: Instant,
        from: NodeId,
        id: CallId,
        server_incarnation: Incarnation,
        outcome: Outcome,
    ) -> bool {
        if id.client != self.me {
            return false;
        }
        if id.client_incarnation != self.incarnation {
            // Gentle reincarnation: a call of the previous life that this
            // life adopted has its answer.
            return false;
        }
        let Some(call) = self.client.calls.get(&id.seq) else {
            self.client.stats.stray_replies += 1;
            return false;
        };
        if call.server != from {
            return false;
        }
        self.bind(from, server_incarnation);
        let Some(call) = self.client.calls.get_mut(&id.seq) else {
            // The restart ended it (at-most-once).
            return true;
        };
        let executed = call.executed();
        match outcome {
            Outcome::Done(body) => {
                self.bucket().on_success();
                self.finish(id.seq, Ok(body));
            }
            Outcome::InProgress => {
                call.in_progress_seen = true;
                self.client.stats.in_progress += 1;
                self.bucket().on_success();
            }
            Outcome::Stale => {
                // Our life is current and the server's too: the call was
                // answered and forgotten, or meant for a life of the server
                // that is over. Either way its outcome is unknown here; it
                // is never reported as refused.
                let error = if call.options.semantics == Semantics::AtMostOnce
                    && call.sent_to.is_some_and(|s| s < server_incarnation)
                {
                    RpcError::ServerCrashed {
                        incarnation: server_incarnation,
                        executed,
                    }
                } else {
                    RpcError::Forgotten { executed }
                };
                self.finish(id.seq, Err(error));
            }
            Outcome::Refused(why) => self.finish(id.seq, Err(RpcError::Refused(why))),
            Outcome::Mismatch => self.finish(id.seq, Err(RpcError::Mismatch)),
            Outcome::Failed => self.finish(id.seq, Err(RpcError::HandlerFailed)),
            Outcome::ReplyTooLarge { len, limit } => {
                self.finish(id.seq, Err(RpcError::ReplyTooLarge { len, limit }));
            }
        }
        true
    }

    /// A part of a large reply: kept until the whole is there.
    pub(crate) fn on_reply_part(
        &mut self,
        now: Instant,
        from: NodeId,
        id: CallId,
        server_incarnation: Incarnation,
        fingerprint: u64,
        body: Chunk,
    ) -> bool {
        if id.client != self.me
            || id.client_incarnation != self.incarnation
            || self
                .client
                .calls
                .get(&id.seq)
                .is_none_or(|c| c.server != from)
            || body.total_len as usize > self.config.max_body
        {
            return false;
        }
        let per_peer = self.config.max_partial_per_peer;
        let total = self.config.max_partial_total;
        match self
            .client
            .parts
            .add(from, id, fingerprint, body, per_peer, total)
        {
            Added::Whole(reply) => {
                self.client.stats.replies_reassembled += 1;
                self.on_reply(now, from, id, server_incarnation, Outcome::Done(reply))
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
        let Some(pending) = self.client.exterminate.get_mut(&(from, incarnation)) else {
            return false;
        };
        pending.retain(|s| !seqs.contains(s));
        if pending.is_empty() {
            self.client.exterminate.remove(&(from, incarnation));
        }
        self.client.announce_to.remove(&from);
        true
    }

    /// At start: announce a new life to every peer, and exterminate (or
    /// adopt) the unfinished calls of earlier lives found in the call log.
    pub(crate) fn start_client(&mut self, now: Instant, records: &Records) {
        if let Some(q) = self.config.orphans.quantum {
            self.set_timer(RpcTimer::Renew, after(now, renew_every(q)));
        }
        if self.incarnation == Incarnation::FIRST {
            return;
        }
        let previous = Incarnation(self.incarnation.0.saturating_sub(1));
        if self.config.orphans.extermination {
            for (&(life, seq), &server) in &records.unfinished {
                if life < self.incarnation {
                    self.client
                        .exterminate
                        .entry((server, life))
                        .or_default()
                        .push(seq);
                    self.client.stats.exterminations_requested += 1;
                }
            }
        } else if self.config.orphans.reincarnation == Reincarnation::Gentle {
            self.client.adopted = records
                .unfinished
                .keys()
                .filter(|(life, _)| *life == previous)
                .map(|(_, seq)| *seq)
                .collect();
        }
        self.client.announce_to = self.config.peers.iter().copied().collect();
        self.client.announce_to.remove(&self.me);
        self.client.announces_left = ANNOUNCES;
        self.on_recovery_timer(now);
    }

    pub(crate) fn on_recovery_timer(&mut self, now: Instant) {
        let incarnation = self.incarnation;
        let adopted: Vec<u64> = self.client.adopted.clone();
        let targets: Vec<NodeId> = self.client.announce_to.iter().copied().collect();
        for to in targets {
            self.send(
                to,
                RpcMessage::Announce {
                    client_incarnation: incarnation,
                    adopted: adopted.clone(),
                },
            );
        }
        let requests: Vec<((NodeId, Incarnation), Vec<u64>)> = self
            .client
            .exterminate
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for ((server, life), seqs) in requests {
            for chunk in seqs.chunks(super::MAX_LISTED) {
                self.send(
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
        self.client.announces_left = self.client.announces_left.saturating_sub(1);
        if self.client.announces_left == 0 {
            self.client.announce_to.clear();
        }
        if !self.client.exterminate.is_empty() || !self.client.announce_to.is_empty() {
            let wait = self.config.backoff.max.max(Duration::from_millis(1));
            self.set_timer(RpcTimer::Recovery, after(now, wait));
        }
    }

    pub(crate) fn on_renew_timer(&mut self, now: Instant) {
        let Some(q) = self.config.orphans.quantum else {
            return;
        };
        let mut by_server: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
        for (seq, c) in &self.client.calls {
            if c.sent_to.is_some() {
                by_server.entry(c.server).or_default().push(*seq);
            }
        }
        let incarnation = self.incarnation;
        for (server, seqs) in by_server {
            for chunk in seqs.chunks(super::MAX_LISTED) {
                self.send(
                    server,
                    RpcMessage::Renew {
                        client_incarnation: incarnation,
                        seqs: chunk.to_vec(),
                    },
                );
            }
        }
        self.set_timer(RpcTimer::Renew, after(now, renew_every(q)));
    }
}

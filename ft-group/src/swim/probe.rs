//! Probing: the shuffled round-robin of targets, the probe of the current
//! period (a direct ping, then `k` indirect ones through others), the
//! reconnect loop's pings of members failed long ago, and the indirect
//! probes this member runs on others' behalf.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ft_core::rng::Rng;
use ft_core::{Incarnation, NodeId, Outbox};

use super::{MAX_RUMORS, Swim, SwimMessage, SwimTimer};
use crate::membership::{MemberState, Membership, Rumor};

/// The probe of the current protocol period.
#[derive(Debug)]
pub(super) struct Probe {
    target: NodeId,
    /// Probing a member already declared failed (gossip to the dead): its
    /// silence proves nothing new and says nothing about our health.
    target_failed: bool,
    /// The target's incarnation when the probe started: a failed probe
    /// suspects that one.
    incarnation: Incarnation,
    seq: u64,
    acked: bool,
    /// Nacks expected from the intermediaries asked (0 before the probe
    /// timeout).
    expected_nacks: u64,
    nacks: u64,
}

impl Probe {
    /// Nacks expected but never received: evidence that this member is the
    /// one not hearing.
    pub(super) fn missed_nacks(&self) -> u64 {
        self.expected_nacks.saturating_sub(self.nacks)
    }

    /// What a failed probe costs this member's local health (Lifeguard):
    /// its missed nacks or, with no intermediaries to ask, one.
    pub(super) fn health_penalty(&self) -> i64 {
        if self.expected_nacks > 0 {
            self.missed_nacks() as i64
        } else {
            1
        }
    }
}

/// What an ack answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answered {
    /// The last reconnect ping: the member was alive after all.
    Reconnect,
    /// The current probe, for the first time.
    Probe,
    /// The current probe, again.
    ProbeAgain,
    /// Nothing of ours.
    Nothing,
}

/// This member's own probes: the order targets are probed in, the probe of
/// the current period, and the last reconnect ping. It owns the
/// [`Probe`](SwimTimer::Probe), [`ProbeTimeout`](SwimTimer::ProbeTimeout)
/// and [`Reconnect`](SwimTimer::Reconnect) timers.
#[derive(Debug)]
pub(super) struct Prober {
    order: Vec<NodeId>,
    /// The next position in `order`; past its end, the order is shuffled
    /// again.
    index: usize,
    current: Option<Probe>,
    /// The sequence number of the last reconnect ping.
    reconnect_seq: Option<u64>,
}

impl Prober {
    /// Probes every member of `view` but `me`, starting with a shuffle.
    pub(super) fn new(view: &Membership, me: NodeId) -> Self {
        let order: Vec<NodeId> = view.iter().map(|m| m.node).filter(|&n| n != me).collect();
        Prober {
            index: order.len(),
            order,
            current: None,
            reconnect_seq: None,
        }
    }

    /// The next member to probe: SWIM's randomized round-robin (a fresh
    /// order every pass), skipping members declared failed longer ago than
    /// `gossip_to_the_dead`.
    fn next_target(
        &mut self,
        view: &Membership,
        rng: &mut Rng,
        now: Instant,
        gossip_to_the_dead: Duration,
    ) -> Option<NodeId> {
        for _ in 0..=self.order.len() {
            if self.index >= self.order.len() {
                self.index = 0;
                rng.shuffle(&mut self.order);
                if self.order.is_empty() {
                    return None;
                }
            }
            let candidate = self.order[self.index];
            self.index += 1;
            let probe = view.get(candidate).is_some_and(|m| {
                m.state != MemberState::Failed
                    || now.saturating_duration_since(m.since) < gossip_to_the_dead
            });
            if probe {
                return Some(candidate);
            }
        }
        None
    }

    /// Starts the probe of `target` (as `view` holds it) numbered `seq`.
    fn begin(&mut self, view: &Membership, target: NodeId, seq: u64) {
        self.current = Some(Probe {
            target,
            target_failed: view.state(target) == Some(MemberState::Failed),
            incarnation: view.incarnation(target).unwrap_or_default(),
            seq,
            acked: false,
            expected_nacks: 0,
            nacks: 0,
        });
    }

    /// Ends the current period's probe; returns it if it failed in a way
    /// that counts (unanswered, of a member not already failed).
    fn end(&mut self) -> Option<Probe> {
        self.current.take().filter(|p| !p.acked && !p.target_failed)
    }

    /// The direct ping of the current probe went unanswered: its target and
    /// number, if others should now be asked (once per probe).
    fn unanswered(&self) -> Option<(NodeId, u64)> {
        let p = self.current.as_ref()?;
        (!p.acked && p.expected_nacks == 0 && !p.target_failed).then_some((p.target, p.seq))
    }

    /// `n` intermediaries were asked: as many nacks are expected.
    fn expect_nacks(&mut self, n: u64) {
        if let Some(p) = &mut self.current {
            p.expected_nacks = n;
        }
    }

    /// An ack numbered `seq` arrived.
    fn ack(&mut self, seq: u64) -> Answered {
        if self.reconnect_seq == Some(seq) {
            self.reconnect_seq = None;
            return Answered::Reconnect;
        }
        match &mut self.current {
            Some(p) if p.seq == seq && !p.acked => {
                p.acked = true;
                Answered::Probe
            }
            Some(p) if p.seq == seq => Answered::ProbeAgain,
            _ => Answered::Nothing,
        }
    }

    /// A nack numbered `seq` arrived: whether it was one expected.
    fn nack(&mut self, seq: u64) -> bool {
        match &mut self.current {
            Some(p) if p.seq == seq && p.nacks < p.expected_nacks => {
                p.nacks += 1;
                true
            }
            _ => false,
        }
    }

    /// Stops probing (this member halted): forgets the current probe and
    /// cancels the prober's timers.
    fn stop(&mut self, out: &mut Outbox<Swim>) {
        self.current = None;
        out.cancel_timer(SwimTimer::Probe);
        out.cancel_timer(SwimTimer::ProbeTimeout);
        out.cancel_timer(SwimTimer::Reconnect);
    }

    /// A reconnect ping numbered `seq` went out.
    fn reconnecting(&mut self, seq: u64) {
        self.reconnect_seq = Some(seq);
    }
}

/// The reconnect loop's choice at `now`: with probability `failed / live`
/// (Serf's scaling, so the group as a whole sends about one ping per failed
/// member per interval), one of the members of `view` other than `me`
/// declared failed at least `gossip_to_the_dead` ago, at random.
fn reconnect_target(
    view: &Membership,
    rng: &mut Rng,
    me: NodeId,
    now: Instant,
    gossip_to_the_dead: Duration,
) -> Option<NodeId> {
    let long_failed: Vec<NodeId> = view
        .iter()
        .filter(|m| {
            m.node != me
                && m.state == MemberState::Failed
                && now.saturating_duration_since(m.since) >= gossip_to_the_dead
        })
        .map(|m| m.node)
        .collect();
    if long_failed.is_empty() {
        return None;
    }
    let live = view.live().count().max(1) as u64;
    if rng.below(live) >= long_failed.len() as u64 {
        return None;
    }
    Some(long_failed[rng.below(long_failed.len() as u64) as usize])
}

/// The indirect probes this member runs for others: our ping's number →
/// the requester and its number. Each has a
/// [`Forward`](SwimTimer::Forward) timer.
#[derive(Debug, Default)]
pub(super) struct Forwards(BTreeMap<u64, (NodeId, u64)>);

impl Forwards {
    /// Whether `max` indirect probes are running already.
    fn is_full(&self, max: usize) -> bool {
        self.0.len() >= max
    }

    /// Runs an indirect probe, our number `mine`, for `requester`'s probe
    /// numbered `their_seq`.
    fn start(&mut self, mine: u64, requester: NodeId, their_seq: u64) {
        self.0.insert(mine, (requester, their_seq));
    }

    /// Forgets the indirect probe of our number `seq`; returns whom to
    /// answer, under which number.
    fn take(&mut self, seq: u64) -> Option<(NodeId, u64)> {
        self.0.remove(&seq)
    }

    /// Stops every indirect probe (this member halted).
    pub(super) fn cancel_all(&mut self, out: &mut Outbox<Swim>) {
        for (seq, _) in std::mem::take(&mut self.0) {
            out.cancel_timer(SwimTimer::Forward(seq));
        }
    }
}

impl Swim {
    /// Starts the probe and reconnect timers: the first probe in
    /// `first_in`, the reconnect loop at a random phase.
    pub(super) fn start_probing(&mut self, now: Instant, first_in: Duration) {
        self.out.set_timer_after(SwimTimer::Probe, now, first_in);
        if let Some(every) = self.reconnect_interval() {
            // A random phase, so that members do not reconnect in lockstep.
            let phase = Duration::from_nanos(
                self.rng
                    .below(every.as_nanos().min(u128::from(u64::MAX)) as u64),
            );
            self.out.set_timer_after(SwimTimer::Reconnect, now, phase);
        }
    }

    /// The delay of the first probe of a life: jittered so that members do
    /// not probe in lockstep.
    pub(super) fn first_probe_delay(&mut self) -> Duration {
        let period = self.config.protocol_period.as_nanos().max(1);
        Duration::from_nanos(self.rng.below(period.min(u128::from(u64::MAX)) as u64))
    }

    /// Stops probing and serving indirect probes (this member halted).
    pub(super) fn stop_probing(&mut self) {
        self.prober.stop(&mut self.out);
        self.forwards.cancel_all(&mut self.out);
    }

    fn reconnect_interval(&self) -> Option<Duration> {
        // A zero interval would fire at the same instant for ever.
        self.config
            .reconnect_interval
            .map(|d| d.max(Duration::from_millis(1)))
    }

    /// The reconnect loop: a member cut off for longer than detection plus
    /// gossip to the dead is probed by nobody else, so without this the two
    /// sides of a long partition would never hear each other again.
    pub(super) fn on_reconnect_timer(&mut self, now: Instant) {
        let Some(every) = self.reconnect_interval() else {
            return;
        };
        self.out.set_timer_after(SwimTimer::Reconnect, now, every);
        let Some(target) = reconnect_target(
            &self.view,
            &mut self.rng,
            self.me,
            now,
            self.config.gossip_to_the_dead,
        ) else {
            return;
        };
        let seq = self.next_seq();
        self.prober.reconnecting(seq);
        self.stats.reconnect_probes += 1;
        self.out.note(
            "reconnect probe of a member failed long ago",
            Some(target),
            self.view.incarnation(target),
            Some(seq),
        );
        let msg = self.ping_with_news(seq, target);
        self.out.send(target, msg);
    }

    /// A ping of `target` carrying our rumors and, if it is bad news, what
    /// we believe of the target: a suspect can refute at once, and a member
    /// cut off from the group learns it was declared failed and rejoins
    /// rather than living on in a split view.
    fn ping_with_news(&mut self, seq: u64, target: NodeId) -> SwimMessage {
        let mut rumors = self.rumors();
        let incarnation = self.view.incarnation(target).unwrap_or_default();
        let news = match self.view.state(target) {
            Some(MemberState::Suspect) => Some(Rumor::Suspect {
                node: target,
                incarnation,
                from: self.me,
            }),
            Some(MemberState::Failed) => Some(Rumor::Failed {
                node: target,
                incarnation,
            }),
            _ => None,
        };
        if let Some(news) = news
            && rumors.len() < MAX_RUMORS
            && !rumors.contains(&news)
        {
            rumors.push(news);
        }
        SwimMessage::Ping {
            seq,
            target,
            sender_incarnation: self.life.incarnation(),
            rumors,
        }
    }

    /// The end of a protocol period: judge the probe, start the next.
    pub(super) fn on_probe_timer(&mut self, now: Instant) {
        if let Some(p) = self.prober.end() {
            // Lifeguard: nacks that did not come back mean *we* are not
            // hearing; with no intermediaries to ask, a failed probe itself
            // counts against us.
            self.stats.nacks_missed += p.missed_nacks();
            self.health.adjust(p.health_penalty());
            // A failed probe of a member already suspect at the same
            // incarnation is an independent confirmation (it shortens the
            // suspicion, Lifeguard).
            if self
                .view
                .get(p.target)
                .is_some_and(|m| m.state != MemberState::Failed && m.incarnation == p.incarnation)
            {
                self.stats.suspicions_raised += 1;
                self.out.note(
                    "probe failed: suspicion raised",
                    Some(p.target),
                    Some(p.incarnation),
                    Some(p.seq),
                );
                let rumor = Rumor::Suspect {
                    node: p.target,
                    incarnation: p.incarnation,
                    from: self.me,
                };
                self.learn(now, rumor);
            }
        }
        self.start_probe(now);
        let period = self.health.scale(self.config.protocol_period);
        self.out.set_timer_after(SwimTimer::Probe, now, period);
    }

    fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.prober.next_target(
            &self.view,
            &mut self.rng,
            now,
            self.config.gossip_to_the_dead,
        ) else {
            return;
        };
        let seq = self.next_seq();
        self.stats.probes += 1;
        self.prober.begin(&self.view, target, seq);
        let msg = self.ping_with_news(seq, target);
        self.out.send(target, msg);
        let timeout = self.health.scale(self.config.probe_timeout);
        self.out
            .set_timer_after(SwimTimer::ProbeTimeout, now, timeout);
    }

    /// The direct ping went unanswered: ask `k` others to ping the target.
    pub(super) fn on_probe_timeout(&mut self) {
        let Some((target, seq)) = self.prober.unanswered() else {
            return;
        };
        let mut helpers = self.others(target);
        self.rng.shuffle(&mut helpers);
        helpers.truncate(self.config.indirect_checks);
        self.prober.expect_nacks(helpers.len() as u64);
        for h in helpers {
            self.stats.ping_reqs_sent += 1;
            let req = SwimMessage::PingReq {
                seq,
                target,
                sender_incarnation: self.life.incarnation(),
                rumors: self.rumors(),
            };
            self.out.send(h, req);
        }
    }

    /// An ack numbered `seq`: whether it was of use.
    pub(super) fn on_ack(&mut self, seq: u64) -> bool {
        match self.prober.ack(seq) {
            Answered::Reconnect => {
                self.stats.reconnects_answered += 1;
                return true;
            }
            Answered::Probe => {
                self.stats.probes_acked += 1;
                self.health.adjust(-1);
                self.out.cancel_timer(SwimTimer::ProbeTimeout);
                return true;
            }
            Answered::ProbeAgain => return true,
            Answered::Nothing => {}
        }
        let Some((requester, their_seq)) = self.forwards.take(seq) else {
            return false;
        };
        self.out.cancel_timer(SwimTimer::Forward(seq));
        let ack = self.ack(their_seq);
        self.out.send(requester, ack);
        true
    }

    /// A nack numbered `seq`: whether it was one expected.
    pub(super) fn on_nack(&mut self, seq: u64) -> bool {
        let expected = self.prober.nack(seq);
        if expected {
            self.stats.nacks_received += 1;
        }
        expected
    }

    /// `from` asks us to ping `target` for it: whether we do.
    pub(super) fn on_ping_req(
        &mut self,
        now: Instant,
        from: NodeId,
        seq: u64,
        target: NodeId,
    ) -> bool {
        if target == self.me || target == from || !self.view.contains(target) {
            return false;
        }
        if self.forwards.is_full(self.config.max_forwarded) {
            self.stats.ping_reqs_refused += 1;
            return false;
        }
        self.stats.ping_reqs_served += 1;
        let mine = self.next_seq();
        self.forwards.start(mine, from, seq);
        let ping = self.ping(mine, target);
        self.out.send(target, ping);
        let timeout = self.health.scale(self.config.probe_timeout);
        self.out
            .set_timer_after(SwimTimer::Forward(mine), now, timeout);
        true
    }

    /// An indirect probe run for someone else (our number `seq`) got no
    /// ack in time: nack.
    pub(super) fn on_forward_timeout(&mut self, seq: u64) {
        if let Some((requester, their_seq)) = self.forwards.take(seq) {
            self.out
                .send(requester, SwimMessage::Nack { seq: their_seq });
        }
    }
}

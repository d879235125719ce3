//! [`Feedback::Nack`](crate::Feedback): SRM-style requests and repairs,
//! each delayed by a random time scaled by the distance between members
//! and suppressed when another member's is heard first; session messages
//! for tail loss and for measuring those distances.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId};
use ft_rpc::rtt::{RttConfig, RttEstimator};

use crate::core::{McastTimer, Multicast};
use crate::group::{GroupId, Spread, Srm};
use crate::message::{MAX_ECHOES, MAX_NACK_RANGES, McastMessage};

/// The most doublings of a request's interval (each time another
/// member's request for the same gap is heard first).
const MAX_BACKOFF: u32 = 6;

/// How many distances a member ignores requests for a message it has just
/// repaired (or seen repaired): the requests that crossed the repair.
const QUIET_DISTANCES: f64 = 3.0;

/// How many distances a member remembers the requests it heard for a
/// message it holds, when no repair came: the count that raises its
/// chance to repair.
const ASKED_DISTANCES: f64 = 256.0;

/// What a member knows of another, for distances.
struct Peer {
    rtt: RttEstimator,
    /// The stamp of its last session message, and when it came.
    heard: Option<(u64, Instant)>,
}

/// A group's SRM state.
pub(crate) struct SrmState {
    pub(crate) params: Srm,
    peers: BTreeMap<NodeId, Peer>,
    /// Repairs waiting for their timer: (source, number) → the asker.
    pending: BTreeMap<(NodeId, u64), NodeId>,
    /// (source, number) repaired lately: requests for it are ignored until
    /// then.
    quiet: BTreeMap<(NodeId, u64), Instant>,
    /// (source, number) held here and asked for, with no repair seen
    /// since: how many requests were heard for it, and the last one's
    /// time. Each request heard doubles this member's chance to repair.
    asked: BTreeMap<(NodeId, u64), (u32, Instant)>,
    /// Whose stamps the next session message echoes first.
    echo_turn: usize,
}

impl SrmState {
    pub(crate) fn new(params: Srm) -> Self {
        SrmState {
            params,
            peers: BTreeMap::new(),
            pending: BTreeMap::new(),
            quiet: BTreeMap::new(),
            asked: BTreeMap::new(),
            echo_turn: 0,
        }
    }

    /// The estimated one-way distance to `peer`.
    pub(crate) fn distance(&self, peer: NodeId) -> Duration {
        self.peers
            .get(&peer)
            .and_then(|p| p.rtt.srtt())
            .map_or(self.params.default_distance, |rtt| rtt / 2)
    }

    /// The distance to `peer`, if measured.
    pub(crate) fn measured(&self, peer: NodeId) -> Option<Duration> {
        Some(self.peers.get(&peer)?.rtt.srtt()? / 2)
    }

    fn peer(&mut self, node: NodeId) -> &mut Peer {
        self.peers.entry(node).or_insert_with(|| Peer {
            rtt: RttEstimator::new(RttConfig::default()),
            heard: None,
        })
    }

    /// Requests and repairs pending, and quiet windows kept (for bounds).
    pub(crate) fn held(&self) -> usize {
        self.pending.len() + self.quiet.len() + self.asked.len()
    }
}

/// A delay drawn from `[a·d, (a+b)·d]` as `spread` says, doubled
/// `backoff` times; `members` sets the exponential draw's rate.
#[allow(clippy::too_many_arguments)]
pub(crate) fn delay(
    rng: &mut ft_core::rng::Rng,
    spread: Spread,
    members: usize,
    d: Duration,
    a: f64,
    b: f64,
    backoff: u32,
) -> Duration {
    let u = rng.below(1_000_001) as f64 / 1_000_000.0;
    let x = match spread {
        Spread::Uniform => u,
        Spread::Exponential => {
            // The inverse of the distribution λe^{λx}/(e^λ - 1) on [0, 1].
            let lambda = (members.max(2) as f64).ln() + 1.0;
            (u * lambda.exp_m1()).ln_1p() / lambda
        }
    };
    d.mul_f64((a + b * x) * f64::from(1u32 << backoff.min(MAX_BACKOFF)))
}

impl Multicast {
    /// Microseconds since this life started.
    fn stamp(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// Sets the request timer of `origin`'s stream, unless set.
    pub(crate) fn schedule_request(&mut self, now: Instant, group: GroupId, origin: NodeId) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(srm) = &g.srm else { return };
        let d = srm.distance(origin);
        let (c1, c2, spread) = (srm.params.c1, srm.params.c2, srm.params.spread);
        let members = g.config.members.len();
        // Proactive FEC: the first request waits for parity too.
        let hold = g
            .fec
            .as_ref()
            .filter(|f| f.config.mode == crate::fec::FecMode::Proactive)
            .map_or(Duration::ZERO, |f| f.config.wait);
        let Some(s) = g.streams.get_mut(&origin) else {
            return;
        };
        if s.request_due {
            return;
        }
        s.request_due = true;
        let mut after = delay(&mut self.rng, spread, members, d, c1, c2, s.backoff);
        if s.backoff == 0 {
            after += hold;
        }
        // After a request (ours, or another's for our first gap), the
        // repair needs the request's way there, the slowest repair timer
        // and its way back: asking again before that only starts a second
        // round of repairs.
        let (d1, d2) = (srm.params.d1, srm.params.d2);
        let earliest = s.asked_at.map(|at| at + d.mul_f64(2.0 + d1 + d2));
        let at = earliest.map_or(now + after, |e| e.max(now + after));
        self.out.set_timer(McastTimer::Request(group, origin), at);
    }

    /// `origin`'s stream has no gap: its next loss starts afresh.
    pub(crate) fn gap_closed(&mut self, group: GroupId, origin: NodeId) {
        let Some(s) = self
            .groups
            .get_mut(&group)
            .and_then(|g| g.streams.get_mut(&origin))
        else {
            return;
        };
        s.backoff = 0;
        s.asked_at = None;
        if s.request_due {
            s.request_due = false;
            self.out.cancel_timer(McastTimer::Request(group, origin));
        }
    }

    /// The request timer fired: ask the group for the gaps.
    pub(crate) fn request(&mut self, now: Instant, group: GroupId, origin: NodeId) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(s) = g.streams.get_mut(&origin) else {
            return;
        };
        s.request_due = false;
        let ranges = s.gaps(MAX_NACK_RANGES);
        if ranges.is_empty() {
            s.backoff = 0;
            return;
        }
        let life = s.life;
        // The next request for this gap waits twice as long: the repair
        // needs time to come. If it is lost too, the gap shows again at
        // the source's next message or session message, which sets the
        // timer anew.
        s.backoff = (s.backoff + 1).min(MAX_BACKOFF);
        s.asked_at = Some(now);
        let to = g.others.clone();
        self.stats.nacks_sent += 1;
        self.out.multicast(
            to,
            McastMessage::Request {
                group,
                origin,
                life,
                ranges,
            },
        );
    }

    pub(crate) fn on_request(
        &mut self,
        now: Instant,
        asker: NodeId,
        group: GroupId,
        origin: NodeId,
        life: Incarnation,
        ranges: &[(u64, u64)],
    ) {
        let me = self.me;
        let my_life = self.life;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(srm) = &mut g.srm else { return };
        let window = g.config.history;
        let covers = |seq: u64| ranges.iter().any(|&(a, b)| a <= seq && seq <= b);
        // Another receiver asked for our first gap: keep quiet, and ask
        // later ourselves only if the repair does not come.
        let mut backed_off = false;
        if let Some(s) = g.streams.get_mut(&origin)
            && s.life == life
            && s.request_due
            && s.first_gap().is_some_and(covers)
        {
            s.backoff = (s.backoff + 1).min(MAX_BACKOFF);
            s.request_due = false;
            s.asked_at = Some(now);
            backed_off = true;
            self.stats.requests_suppressed += 1;
        }
        // Repairs of what this member holds, each after its own delay.
        let d = srm.distance(asker);
        let (d1, d2, spread) = (srm.params.d1, srm.params.d2, srm.params.spread);
        let repairers = srm.params.repairers;
        let members = g.config.members.len();
        // A round of repairs: the request's way here, the slowest repair
        // timer and the repair's way back.
        let round = d.mul_f64(2.0 + d1 + d2);
        let mut repairs = Vec::new();
        // What this member holds of that stream, as an interval: only
        // those numbers are looked at, so a request naming billions costs
        // no more than one naming what is held.
        let (lo, hi) = if origin == me {
            if life == my_life {
                (g.history.base(), g.history.highest())
            } else {
                (1, 0)
            }
        } else {
            match g.streams.get(&origin).filter(|s| s.life == life) {
                Some(s) => match (s.recent.front(), s.recent.back()) {
                    (Some(&(first, _)), Some(&(last, _))) => (first, last),
                    _ => (1, 0),
                },
                None => (1, 0),
            }
        };
        // Numbers below `lo` that the source forgot: its next session
        // message's base tells the asker, which then reports the loss.
        let mut budget = window;
        'ranges: for &(first, last) in ranges {
            for seq in first.max(lo)..=last.min(hi) {
                if budget == 0 {
                    break 'ranges;
                }
                let held = if origin == me {
                    g.history.get(seq).is_some()
                } else {
                    g.streams
                        .get(&origin)
                        .is_some_and(|s| s.recent(seq).is_some())
                };
                // Left to a parity answer (on-demand FEC).
                if !held
                    || g.fec
                        .as_ref()
                        .is_some_and(|f| f.answering(now, origin, seq, ranges))
                {
                    continue;
                }
                budget -= 1;
                let key = (origin, seq);
                let quiet = srm.quiet.get(&key).is_some_and(|&until| now < until);
                if quiet || srm.pending.contains_key(&key) {
                    continue;
                }
                // The source always answers. Another holder answers the
                // k-th request it hears for a message with probability
                // `repairers·2^(k-1) / members`: when every member holds
                // it, about `repairers + 1` race to repair, not the whole
                // group; when few do, the asker's next requests (it asks
                // again when no repair comes) soon draw one of them.
                // Requests heard within one round of the last draw (the
                // requests of several askers that lost the same message)
                // are one: only a request after the round is over, when no
                // repair came, draws again.
                let heard = srm.asked.entry(key).or_insert((0, now));
                if heard.0 > 0 && now < heard.1 + round {
                    continue;
                }
                *heard = (heard.0.saturating_add(1), now);
                let odds = (repairers as u64).saturating_mul(1 << (heard.0 - 1).min(32));
                if origin == me || self.rng.below(members as u64) < odds {
                    srm.pending.insert(key, asker);
                    repairs.push(seq);
                }
            }
        }
        srm.quiet.retain(|_, &mut until| until > now);
        // A request unanswered for this long was answered by now, or its
        // asker gave up on it (the source forgot it).
        let forget = d.mul_f64(ASKED_DISTANCES);
        srm.asked.retain(|_, &mut (_, at)| at + forget > now);
        for seq in repairs {
            let racing = repairers.saturating_add(1).min(members);
            let after = delay(&mut self.rng, spread, racing, d, d1, d2, 0);
            self.out
                .set_timer(McastTimer::Repair(group, origin, seq), now + after);
        }
        if backed_off {
            self.schedule_request(now, group, origin);
        }
    }

    /// A repair timer fired: repair, unless another member did first.
    pub(crate) fn repair(&mut self, now: Instant, group: GroupId, origin: NodeId, seq: u64) {
        let me = self.me;
        let my_life = self.life;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(srm) = &mut g.srm else { return };
        let Some(asker) = srm.pending.remove(&(origin, seq)) else {
            return;
        };
        let quiet_for = srm.distance(asker).mul_f64(QUIET_DISTANCES);
        let held = if origin == me {
            g.history.get(seq).map(|p| (my_life, p.clone()))
        } else {
            g.streams
                .get(&origin)
                .and_then(|s| s.recent(seq).map(|p| (s.life, p.clone())))
        };
        let Some((life, payload)) = held else { return };
        srm.quiet.retain(|_, &mut until| until > now);
        srm.quiet.insert((origin, seq), now + quiet_for);
        let to = g.others.clone();
        self.stats.repairs_sent += 1;
        self.out.count_retransmissions(1);
        self.out.multicast(
            to,
            McastMessage::Repair {
                group,
                origin,
                life,
                seq,
                payload,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_repair(
        &mut self,
        now: Instant,
        from: NodeId,
        group: GroupId,
        origin: NodeId,
        life: Incarnation,
        seq: u64,
        payload: Bytes,
    ) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(srm) = &mut g.srm else { return };
        // Somebody repaired it: ours would be one too many.
        let quiet_for = srm.distance(from).mul_f64(QUIET_DISTANCES);
        if srm.pending.remove(&(origin, seq)).is_some() {
            self.stats.repairs_suppressed += 1;
            self.out
                .cancel_timer(McastTimer::Repair(group, origin, seq));
        }
        srm.quiet.retain(|_, &mut until| until > now);
        srm.quiet.insert((origin, seq), now + quiet_for);
        if origin == self.me || seq == 0 || payload.len() > g.config.max_payload {
            return;
        }
        // As the source's own copy would be: base 1, as a repair says
        // nothing of what the source still holds.
        let base = g
            .streams
            .get(&origin)
            .filter(|s| s.life == life)
            .map_or(1, |s| s.next.min(seq));
        self.on_data(now, origin, group, life, (seq, base, payload));
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_session(
        &mut self,
        now: Instant,
        from: NodeId,
        group: GroupId,
        life: Incarnation,
        (base, highest): (u64, u64),
        stamp: u64,
        echoes: &[(NodeId, u64, u64)],
    ) {
        let me = self.me;
        let mine = self.stamp(now);
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(srm) = &mut g.srm else { return };
        let peer = srm.peer(from);
        peer.heard = Some((stamp, now));
        if let Some(&(_, sent, held)) = echoes.iter().find(|e| e.0 == me) {
            // Our stamp came back: the round trip, less the time it was
            // held at the peer. A stamp from the future (a garbled echo)
            // gives no sample.
            if let Some(rtt) = mine.checked_sub(sent).and_then(|r| r.checked_sub(held)) {
                peer.rtt.on_sample(Duration::from_micros(rtt));
            }
        }
        if base == 0 || base > highest.saturating_add(1) {
            self.stats.ignored += 1;
            return;
        }
        let window = g.config.history;
        if highest == 0 && !g.streams.contains_key(&from) {
            // Nothing sent yet: no stream to follow.
            return;
        }
        let Some(s) = Self::stream_of(&mut self.out, g, from, life, base) else {
            return;
        };
        self.delivered.clear();
        Self::skip_to_base(&mut self.out, s, base, &mut self.delivered, group, from);
        s.highest = s.highest.max(highest);
        s.remember(&self.delivered, window);
        let gap = s.first_gap().is_some();
        self.emit_delivered(group, from, life);
        if gap {
            self.schedule_request(now, group, from);
        } else {
            self.gap_closed(group, from);
        }
    }

    /// The session timer fired: this node's position and clock, with
    /// echoes of the stamps heard from up to [`MAX_ECHOES`] members (in
    /// turns, so a large group is covered over several sessions).
    pub(crate) fn session(&mut self, now: Instant, group: GroupId) {
        let life = self.life;
        let stamp = self.stamp(now);
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(srm) = &mut g.srm else { return };
        let heard: Vec<(NodeId, u64, Instant)> = srm
            .peers
            .iter()
            .filter_map(|(&n, p)| p.heard.map(|(s, at)| (n, s, at)))
            .collect();
        let mut echoes = Vec::new();
        if !heard.is_empty() {
            let start = srm.echo_turn % heard.len();
            for &(n, s, at) in heard
                .iter()
                .cycle()
                .skip(start)
                .take(heard.len().min(MAX_ECHOES))
            {
                let held = u64::try_from(now.saturating_duration_since(at).as_micros())
                    .unwrap_or(u64::MAX);
                echoes.push((n, s, held));
            }
            srm.echo_turn = start + echoes.len();
        }
        let interval = srm.params.session_interval;
        let to = g.others.clone();
        let msg = McastMessage::Session {
            group,
            life,
            base: g.history.base(),
            highest: g.history.highest(),
            stamp,
            echoes,
        };
        self.stats.announces_sent += 1;
        self.out.multicast(to, msg);
        self.out
            .set_timer(McastTimer::Session(group), now + interval);
    }

    /// How much SRM state this node keeps (pending repairs and quiet
    /// windows), for bounds.
    pub(crate) fn srm_held(&self) -> usize {
        self.groups
            .values()
            .filter_map(|g| g.srm.as_ref())
            .map(SrmState::held)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use ft_core::{Incarnation, NodeId, Output, Protocol, Recover, RecoveryContext};

    use crate::core::{McastConfig, McastTimer, Multicast};
    use crate::group::{Feedback, GroupConfig, GroupId, Spread, Srm};
    use crate::message::McastMessage;

    const G: GroupId = GroupId(1);
    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    /// SRM as published: uniform draws in `[2d, 4d]` and `[d, 2d]`, every
    /// holder repairing.
    fn classic() -> Srm {
        Srm {
            c2: 2.0,
            d2: 1.0,
            spread: Spread::Uniform,
            repairers: usize::MAX,
            ..Srm::default()
        }
    }

    fn node(me: NodeId, now: Instant) -> Multicast {
        node_with(me, now, [A, B, C], classic())
    }

    fn node_with(
        me: NodeId,
        now: Instant,
        members: impl IntoIterator<Item = NodeId>,
        srm: Srm,
    ) -> Multicast {
        let group = GroupConfig::new(G, members)
            .with_history(8)
            .with_feedback(Feedback::Nack(srm));
        let ctx = RecoveryContext {
            node: me,
            incarnation: Incarnation::FIRST,
            records: Vec::new(),
            seed: me.0,
            now,
        };
        let mut m = Multicast::recover(&McastConfig::new(vec![group]), ctx).unwrap();
        while m.poll_output().is_some() {}
        m
    }

    fn data(seq: u64) -> McastMessage {
        McastMessage::Data {
            group: G,
            life: Incarnation::FIRST,
            seq,
            base: 1,
            payload: Bytes::from(vec![seq as u8]),
        }
    }

    fn request(seq: u64) -> McastMessage {
        McastMessage::Request {
            group: G,
            origin: A,
            life: Incarnation::FIRST,
            ranges: vec![(seq, seq)],
        }
    }

    /// The outputs, with the repair timers' deadlines and the repairs sent.
    fn drain(m: &mut Multicast) -> (Vec<(McastTimer, Instant)>, Vec<u64>) {
        let (mut timers, mut repairs) = (Vec::new(), Vec::new());
        while let Some(o) = m.poll_output() {
            match o {
                Output::SetTimer { timer, at } => timers.push((timer, at)),
                Output::Multicast {
                    msg: McastMessage::Repair { seq, .. },
                    ..
                } => repairs.push(seq),
                _ => {}
            }
        }
        (timers, repairs)
    }

    #[test]
    fn a_receiver_that_holds_a_message_repairs_it_for_another() {
        let now = Instant::now();
        let mut b = node(B, now);
        b.handle_message(now, A, data(1));
        drain(&mut b);
        // C asks for A's message 1; B holds it.
        b.handle_message(now, C, request(1));
        let (timers, _) = drain(&mut b);
        let at = timers
            .iter()
            .find(|(t, _)| *t == McastTimer::Repair(G, A, 1))
            .map(|&(_, at)| at)
            .expect("a repair timer");
        // Within [d1·d, (d1+d2)·d] of the default distance (5 ms).
        let after = at - now;
        assert!(
            after >= Duration::from_millis(5) && after <= Duration::from_millis(10),
            "{after:?}"
        );
        b.handle_timer(at, McastTimer::Repair(G, A, 1));
        assert_eq!(drain(&mut b).1, vec![1]);
    }

    #[test]
    fn a_repair_heard_first_cancels_ours_and_quiets_late_requests() {
        let now = Instant::now();
        let mut b = node(B, now);
        b.handle_message(now, A, data(1));
        drain(&mut b);
        b.handle_message(now, C, request(1));
        drain(&mut b);
        // C got a repair from someone else, which B hears too.
        let repair = McastMessage::Repair {
            group: G,
            origin: A,
            life: Incarnation::FIRST,
            seq: 1,
            payload: Bytes::from_static(&[1]),
        };
        b.handle_message(now + Duration::from_millis(1), C, repair);
        b.handle_timer(now + Duration::from_millis(10), McastTimer::Repair(G, A, 1));
        assert!(drain(&mut b).1.is_empty(), "repaired twice");
        assert_eq!(b.stats().repairs_suppressed, 1);
        // A request that crossed that repair is ignored...
        b.handle_message(now + Duration::from_millis(2), C, request(1));
        assert!(drain(&mut b).0.is_empty());
        // ...but one long after it is answered again.
        b.handle_message(now + Duration::from_secs(1), C, request(1));
        assert_eq!(drain(&mut b).0.len(), 1);
    }

    #[test]
    fn a_request_naming_billions_of_messages_costs_what_is_held() {
        // Found by the fuzz target: a hostile range about another source
        // was walked number by number.
        let now = Instant::now();
        let mut b = node(B, now);
        b.handle_message(now, A, data(1));
        drain(&mut b);
        let hostile = |origin| McastMessage::Request {
            group: G,
            origin,
            life: Incarnation::FIRST,
            ranges: vec![(0, crate::message::MAX_SEQ); 16],
        };
        b.handle_message(now, C, hostile(A));
        let (timers, _) = drain(&mut b);
        assert_eq!(timers.len(), 1, "one repair, for the one message held");
        // About B's own stream, and about a stream it knows nothing of.
        b.handle_message(now, C, hostile(B));
        b.handle_message(now, C, hostile(NodeId(9)));
        assert!(drain(&mut b).0.is_empty());
    }

    #[test]
    fn backing_off_for_others_requests_ends_with_the_gap() {
        let now = Instant::now();
        let mut b = node(B, now);
        let request_at = |b: &mut Multicast| {
            drain(b)
                .0
                .into_iter()
                .find(|(t, _)| *t == McastTimer::Request(G, A))
                .map(|(_, at)| at)
        };
        // A gap: 2 came, 1 did not. B's request timer is set...
        b.handle_message(now, A, data(2));
        assert!(request_at(&mut b).is_some());
        // ...and C's request for 1, heard first, pushes it back (twice).
        b.handle_message(now, C, request(1));
        b.handle_message(now, C, request(1));
        let backed = request_at(&mut b).expect("set again") - now;
        assert_eq!(b.stats().requests_suppressed, 2);
        assert!(backed > Duration::from_millis(20), "{backed:?}");
        // The repair closes the gap; the next gap is asked for at the
        // normal delay, [c1·d, (c1+c2)·d] = [10, 20] ms, not the backed-off one.
        b.handle_message(now, A, data(1));
        b.handle_message(now, A, data(4));
        let fresh = request_at(&mut b).expect("a new request") - now;
        assert!(
            fresh >= Duration::from_millis(10) && fresh <= Duration::from_millis(20),
            "{fresh:?}"
        );
    }

    #[test]
    fn exponential_delays_stay_in_their_interval_and_are_rarely_early() {
        let mut rng = ft_core::rng::Rng::new(7);
        let d = Duration::from_millis(10);
        let draws: Vec<Duration> = (0..2000)
            .map(|_| super::delay(&mut rng, Spread::Exponential, 100, d, 1.0, 8.0, 0))
            .collect();
        assert!(draws.iter().all(|&x| x >= d && x <= d * 9));
        // Rising density with λ = ln(100) + 1 ≈ 5.6: a draw falls in the
        // interval's first half with probability (e^{λ/2} - 1)/(e^λ - 1),
        // about 6%; uniformly it would be 50%.
        let early = draws.iter().filter(|&&x| x < d * 5).count();
        assert!(early > 40 && early < 250, "{early}");
        let uniform = (0..2000)
            .map(|_| super::delay(&mut rng, Spread::Uniform, 100, d, 1.0, 8.0, 0))
            .filter(|&x| x < d * 5)
            .count();
        assert!(uniform > 800, "{uniform}");
    }

    /// Repair timers set by `m`'s outputs.
    fn repair_timers(m: &mut Multicast) -> usize {
        drain(m)
            .0
            .iter()
            .filter(|(t, _)| matches!(t, McastTimer::Repair(..)))
            .count()
    }

    #[test]
    fn in_a_large_group_a_holder_rarely_answers_a_first_request_and_more_often_as_it_is_repeated() {
        let members: Vec<NodeId> = (1..=100).map(NodeId).collect();
        let srm = Srm::default();
        let round = srm.default_distance.mul_f64(2.0 + srm.d1 + srm.d2);
        let (mut first, mut by_fourth) = (0, 0);
        let trials = 200;
        for me in 0..trials {
            let now = Instant::now();
            let mut b = node_with(B, now, members.clone(), Srm::default());
            // Another seed for each trial: B's draws differ.
            b.rng = ft_core::rng::Rng::new(me);
            b.handle_message(now, A, data(1));
            drain(&mut b);
            // Ten askers' requests in one round: one draw.
            for asker in 3..13 {
                b.handle_message(now, NodeId(asker), request(1));
            }
            let answered = repair_timers(&mut b);
            assert!(answered <= 1);
            first += answered;
            // No repair came: each later request, a round apart, doubles
            // the odds (2, 4, 8 and 16 in 100).
            let mut at = now;
            let mut answered = answered;
            for _ in 0..3 {
                if answered > 0 {
                    break;
                }
                at += round;
                b.handle_message(at, C, request(1));
                answered = repair_timers(&mut b);
            }
            by_fourth += answered;
        }
        // 2% of holders answer a first request (18% if each of the ten
        // requests drew); by the fourth, 1 - 0.98 · 0.96 · 0.92 · 0.84 ≈
        // 27%.
        assert!(first < trials as usize / 12, "{first}");
        assert!(by_fourth > trials as usize / 7, "{by_fourth}");
        // The source always answers.
        let now = Instant::now();
        let mut a = node_with(A, now, members.clone(), Srm::default());
        a.handle_input(
            now,
            crate::McastInput::Send {
                group: G,
                token: 1,
                payload: Bytes::from_static(b"x"),
            },
        );
        drain(&mut a);
        a.handle_message(now, C, request(1));
        assert_eq!(repair_timers(&mut a), 1);
    }

    #[test]
    fn no_second_request_before_a_repair_could_have_come() {
        let now = Instant::now();
        let srm = Srm::default();
        let round = srm.default_distance.mul_f64(2.0 + srm.d1 + srm.d2);
        let mut b = node_with(B, now, [A, B, C], Srm::default());
        let request_at = |b: &mut Multicast| {
            drain(b)
                .0
                .into_iter()
                .find(|(t, _)| *t == McastTimer::Request(G, A))
                .map(|(_, at)| at)
        };
        b.handle_message(now, A, data(2));
        let at = request_at(&mut b).expect("a request timer");
        b.handle_timer(at, McastTimer::Request(G, A));
        drain(&mut b);
        // The gap shows again at once (the source's next message): the
        // next request waits for the round the first one started.
        b.handle_message(at, A, data(3));
        let again = request_at(&mut b).expect("a request timer");
        assert!(again >= at + round, "{:?} < {round:?}", again - at);
    }

    #[test]
    fn what_a_member_remembers_of_requests_stays_bounded() {
        // Requests for ever new messages over a long time: the counts of
        // requests heard are forgotten, as are the pending repairs once
        // sent.
        let members: Vec<NodeId> = (1..=100).map(NodeId).collect();
        let start = Instant::now();
        let mut b = node_with(B, start, members, Srm::default());
        let mut most = 0;
        for k in 1..=500u64 {
            let now = start + Duration::from_millis(200) * k as u32;
            b.handle_message(now, A, data(k));
            drain(&mut b);
            b.handle_message(now, C, request(k));
            for (timer, at) in drain(&mut b).0 {
                if matches!(timer, McastTimer::Repair(..)) {
                    b.handle_timer(at, timer);
                }
            }
            drain(&mut b);
            most = most.max(b.held().repairs);
        }
        assert!(most <= 16, "{most}");
    }

    #[test]
    fn a_message_expected_by_a_layer_above_is_asked_of_the_group() {
        // The causal layer learns of message 3 from another member's past:
        // with SRM feedback the gap is asked for as any gap is, by a
        // request after its delay, not by a NACK to the source.
        let now = Instant::now();
        let mut b = node(B, now);
        b.expect(now, G, A, Incarnation::FIRST, 3);
        let mut request_timer = false;
        while let Some(o) = b.poll_output() {
            match o {
                Output::SetTimer {
                    timer: McastTimer::Request(G, A),
                    ..
                } => request_timer = true,
                Output::Send { msg, .. } => panic!("sent {msg:?}"),
                _ => {}
            }
        }
        assert!(request_timer);
        assert_eq!(b.stats().nacks_sent, 0);
    }
}

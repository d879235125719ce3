//! The simulated network: omission, partitions, loss, duplication, delay,
//! reordering and corruption between a core's send and another core's
//! `handle_message`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ft_core::frame::{HEADER_LEN, TRAILER_LEN};
use ft_core::{NodeId, Omission, Recover, Wire};

use super::{Ev, Sim};
use crate::plan::Delay;
use crate::rng::SimRng;
use crate::trace::TraceKind;

impl<P> Sim<P>
where
    P: Recover + 'static,
{
    pub(super) fn in_window(&self, i: usize, side: Omission) -> bool {
        let now = self.world.now;
        self.world.nodes[i]
            .faults
            .omission_windows
            .iter()
            .any(|w| (w.kind == side || w.kind == Omission::Both) && w.from <= now && now < w.until)
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        match &self.partition {
            None => true,
            Some(g) => a == b || (g[a].is_some() && g[a] == g[b]),
        }
    }

    /// Whether a one-way partition loses messages from `a` to `b`.
    fn cut_one_way(&self, a: usize, b: usize) -> bool {
        a != b
            && self
                .one_way
                .iter()
                .any(|(from, to)| from.get(a) == Some(&true) && to.get(b) == Some(&true))
    }

    /// Drops a message a partition (two-way or one-way) does not let from
    /// `i` to `j`; says whether it did.
    fn partitioned(&mut self, i: usize, j: usize, to: NodeId) -> bool {
        if !self.reachable(i, j) {
            self.world.stats.partitioned += 1;
            self.drop_msg(i, to, "partition");
            return true;
        }
        if self.cut_one_way(i, j) {
            self.world.stats.partitioned += 1;
            self.world.stats.one_way_dropped += 1;
            self.drop_msg(i, to, "one-way partition");
            return true;
        }
        false
    }

    fn drop_msg(&mut self, from: usize, to: NodeId, why: &'static str) {
        self.record(TraceKind::Drop {
            from: self.world.ids[from],
            to,
            why,
        });
    }

    /// The network: omission, partitions, loss, duplication, delay,
    /// reordering and corruption, in that order.
    pub(super) fn transmit(&mut self, i: usize, to: NodeId, frame: Bytes) {
        self.world.stats.sent += 1;
        self.record(TraceKind::Send {
            from: self.world.ids[i],
            to,
            frame: frame.clone(),
        });
        let n = self.world.nodes.len();
        if self.rng.chance(self.world.nodes[i].faults.send_omission)
            || self.in_window(i, Omission::Send)
        {
            self.world.stats.send_omissions += 1;
            return self.drop_msg(i, to, "send omission");
        }
        let j = to.0 as usize;
        if j >= n {
            self.world.stats.to_down_node += 1;
            return self.drop_msg(i, to, "no such node");
        }
        if self.partitioned(i, j, to) {
            return;
        }
        let link_loss = self
            .plan
            .links
            .get(&(self.world.ids[i], to))
            .map_or(0.0, |l| l.loss);
        // After `calm_after` the network's own faults end (no random draws
        // either, so a run before it is what it always was).
        let calm = self
            .plan
            .network
            .calm_after
            .is_some_and(|t| self.world.now >= t);
        let net = |p: f64| if calm { 0.0 } else { p };
        let modeled = match &mut self.link_model {
            Some(model) => match model(self.world.now, self.world.ids[i], to, &frame) {
                Some(extra) => extra,
                None if !calm => {
                    self.world.stats.lost += 1;
                    self.world.stats.model_lost += 1;
                    return self.drop_msg(i, to, "link model");
                }
                None => Duration::ZERO,
            },
            None => Duration::ZERO,
        };
        if self.rng.chance(net(self.plan.network.loss)) || self.rng.chance(link_loss) {
            self.world.stats.lost += 1;
            return self.drop_msg(i, to, "loss");
        }
        let copies = if self.rng.chance(net(self.plan.network.duplicate)) {
            self.world.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.plan.network.delay.sample(&mut self.rng) + modeled;
            let mut slowed = false;
            for k in [i, j] {
                if let Some(slow) = self.world.nodes[k].faults.slow {
                    delay += slow.sample(&mut self.rng);
                    slowed = true;
                }
            }
            if let Some(extra) = self
                .plan
                .links
                .get(&(self.world.ids[i], to))
                .and_then(|l| l.extra_delay)
            {
                delay += extra.sample(&mut self.rng);
                slowed = true;
            }
            if slowed {
                self.world.stats.slowed += 1;
            }
            if self.rng.chance(net(self.plan.network.reorder)) {
                self.world.stats.reordered += 1;
                delay += Delay::Uniform {
                    min: Duration::ZERO,
                    max: self.plan.network.reorder_window,
                }
                .sample(&mut self.rng);
            }
            let mut frame = frame.clone();
            if self.rng.chance(net(self.plan.network.corrupt)) && !frame.is_empty() {
                self.world.stats.corrupted_in_transit += 1;
                let mut v = frame.to_vec();
                let bit = self.rng.below(v.len() as u64 * 8) as usize;
                v[bit / 8] ^= 1 << (bit % 8);
                frame = Bytes::from(v);
            }
            let link = i * n + j;
            self.link_sent[link] += 1;
            let link_seq = self.link_sent[link];
            let at = self.world.now + delay;
            self.schedule(
                at,
                Ev::Deliver {
                    from: i,
                    to: j,
                    frame,
                    link_seq,
                },
            );
        }
    }

    pub(super) fn deliver(&mut self, i: usize, j: usize, frame: Bytes, link_seq: u64) {
        let (from, to) = (self.world.ids[i], self.world.ids[j]);
        if self.world.nodes[j].core.is_none() {
            self.world.stats.to_down_node += 1;
            return self.drop_msg(i, to, "receiver down");
        }
        if self.rng.chance(self.world.nodes[j].faults.receive_omission)
            || self.in_window(j, Omission::Receive)
        {
            self.world.stats.receive_omissions += 1;
            return self.drop_msg(i, to, "receive omission");
        }
        if self.partitioned(i, j, to) {
            return;
        }
        let link = i * self.world.nodes.len() + j;
        if link_seq < self.link_delivered[link] {
            self.world.stats.overtaken += 1;
        } else {
            self.link_delivered[link] = link_seq;
        }
        let msg = match self.codec.decode_payload(frame.clone()) {
            Err(_) => {
                self.world.stats.crc_dropped += 1;
                return self.drop_msg(i, to, "frame check failed");
            }
            Ok(payload) => match P::Message::from_bytes(payload) {
                Ok(m) => m,
                Err(_) => {
                    self.world.stats.decode_errors += 1;
                    return self.drop_msg(i, to, "undecodable payload");
                }
            },
        };
        self.record(TraceKind::Deliver { from, to, frame });
        let faults = &self.world.nodes[j].faults;
        let (skip, repeat) = (faults.skip_transition, faults.repeat_transition);
        if self.rng.chance(skip) {
            self.world.stats.skipped_transitions += 1;
            return;
        }
        let twice = self.rng.chance(repeat);
        let now = self.world.clock_at(j, self.world.now);
        self.world.stats.delivered += 1;
        if let Some(core) = self.world.nodes[j].core.as_mut() {
            if twice {
                core.handle_message(now, from, msg.clone());
            }
            core.handle_message(now, from, msg);
        }
        if twice {
            self.world.stats.repeated_transitions += 1;
        }
        self.drain(j);
    }
}

/// Flips one bit of a frame's payload and fixes the CRC, so the frame is
/// valid and only the value is wrong (a value failure of the sender).
pub(super) fn corrupt_payload(buf: &mut BytesMut, rng: &mut SimRng) {
    let payload_len = buf.len() - HEADER_LEN - TRAILER_LEN;
    if payload_len == 0 {
        return;
    }
    let bit = rng.below(payload_len as u64 * 8) as usize;
    buf[HEADER_LEN + bit / 8] ^= 1 << (bit % 8);
    let body = buf.len() - TRAILER_LEN;
    let crc = crc32fast::hash(&buf[..body]);
    buf[body..].copy_from_slice(&crc.to_le_bytes());
}

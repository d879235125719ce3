//! The network of the feedback-implosion measurements: a tree of routers
//! with the source (node 0) at its root and the receivers (nodes 1..=n) at
//! its leaves, ten to a router at every level, and a loss model on it.
//!
//! Shared by `tests/implosion.rs` (which checks the targets) and
//! `benches/implosion.rs` (which prints the table).
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use ft_core::{FrameCodec, NodeId};
use ft_multicast::McastMessage;

/// Routers per level: every router has ten children.
pub(crate) const FANOUT: u64 = 10;

/// How a tree's links lose packets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Loss {
    /// Each copy is lost on its own, with this probability.
    Independent(f64),
    /// Each link of the tree loses each packet on its own, so a packet
    /// lost on an inner link is lost to the whole subtree below it; the
    /// links' losses are set so a receiver loses this fraction end to end.
    Tree(f64),
}

impl Loss {
    /// Its name in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Loss::Independent(_) => "independent",
            Loss::Tree(_) => "along the tree",
        }
    }
}

/// What the loss model saw: the source's data messages whose first
/// transmission some receiver lost.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The source's messages sent so far: number → its first
    /// transmission.
    pub(crate) sent: BTreeMap<u64, u64>,
    /// Of those, the ones some receiver lost the first time.
    pub(crate) lost: BTreeSet<u64>,
    /// Copies of first transmissions lost (a message lost at three
    /// receivers counts three).
    pub(crate) lost_copies: u64,
}

/// The tree of `n` receivers.
#[derive(Clone, Debug)]
pub(crate) struct Tree {
    /// Receivers.
    pub(crate) n: u64,
    /// Router levels between the source and a receiver.
    pub(crate) levels: u32,
    /// One-way delay of each link.
    pub(crate) hop: Duration,
}

impl Tree {
    /// `n` receivers under as many levels of ten as they need.
    pub(crate) fn new(n: u64, hop: Duration) -> Self {
        let mut levels = 1;
        while FANOUT.pow(levels) < n {
            levels += 1;
        }
        Tree { n, levels, hop }
    }

    /// The links from `node` up to its subtree's root at `level` (not
    /// included): `(level, router)` for each level below.
    fn link(node: NodeId, level: u32) -> (u32, u64) {
        (level, (node.0 - 1) / FANOUT.pow(level))
    }

    /// The links a packet from `a` to `b` crosses.
    pub(crate) fn path(&self, a: NodeId, b: NodeId) -> Vec<(u32, u64)> {
        let mut links = Vec::new();
        for level in 0..self.levels {
            let up = (a.0 != 0).then(|| Self::link(a, level));
            let down = (b.0 != 0).then(|| Self::link(b, level));
            if up.is_some() && up == down {
                // The subtree's root is a common ancestor: no link above.
                break;
            }
            links.extend(up);
            links.extend(down);
        }
        links
    }

    /// The one-way extra delay from `a` to `b`.
    pub(crate) fn delay(&self, a: NodeId, b: NodeId) -> Duration {
        self.hop * self.path(a, b).len() as u32
    }

    /// A link model for `Sim::set_link_model`, and what it saw.
    pub(crate) fn model(self, loss: Loss, seed: u64) -> (ft_sim::LinkModel, Rc<RefCell<Seen>>) {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let log = Rc::clone(&seen);
        let codec = FrameCodec::default();
        let per_link = match loss {
            Loss::Independent(p) => p,
            // 1 - (1 - q)^levels = p.
            Loss::Tree(p) => 1.0 - (1.0 - p).powf(1.0 / f64::from(self.levels)),
        };
        let model = move |now: Duration, from: NodeId, to: NodeId, frame: &[u8]| {
            // One transmission: its frame and time, the same for every
            // copy of a multicast.
            let packet = ft_core::rng::mix(
                ft_core::rng::mix(seed, fnv(frame)),
                u64::try_from(now.as_nanos()).unwrap_or(u64::MAX) ^ from.0 << 48,
            );
            let lost = match loss {
                Loss::Independent(_) => chance(ft_core::rng::mix(packet, to.0), per_link),
                Loss::Tree(_) => self.path(from, to).iter().any(|&(level, router)| {
                    chance(
                        ft_core::rng::mix(packet, u64::from(level) << 56 | router),
                        per_link,
                    )
                }),
            };
            // A first transmission of the source's data?
            if from == NodeId(0)
                && let Ok(McastMessage::Data { seq, .. }) =
                    codec.decode::<McastMessage>(Bytes::copy_from_slice(frame))
            {
                let mut s = log.borrow_mut();
                let first = *s.sent.entry(seq).or_insert(packet) == packet;
                if lost && first {
                    s.lost.insert(seq);
                    s.lost_copies += 1;
                }
            }
            (!lost).then(|| self.delay(from, to))
        };
        (Box::new(model), seen)
    }
}

/// Whether a hash falls below probability `p`.
fn chance(hash: u64, p: f64) -> bool {
    (hash >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
}

/// FNV-1a, 64 bits.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One run's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Figures {
    /// The source's messages some receiver lost the first time.
    pub(crate) lost: u64,
    /// Copies of first transmissions lost.
    pub(crate) lost_copies: u64,
    /// NACKs (ACK mode) or requests (NACK mode) sent, all members.
    pub(crate) nacks: u64,
    /// Repairs sent, all members.
    pub(crate) repairs: u64,
    /// Parity packets sent (forward error correction), all members.
    pub(crate) parity: u64,
    /// Messages the source received.
    pub(crate) source_received: u64,
    /// Messages the source sent (its data).
    pub(crate) sent: u64,
}

impl Figures {
    /// NACKs per lost packet.
    pub(crate) fn nacks_per_loss(&self) -> f64 {
        self.nacks as f64 / self.lost.max(1) as f64
    }
    /// Repairs per lost packet.
    pub(crate) fn repairs_per_loss(&self) -> f64 {
        self.repairs as f64 / self.lost.max(1) as f64
    }
    /// Parity packets per message sent.
    pub(crate) fn parity_per_message(&self) -> f64 {
        self.parity as f64 / self.sent.max(1) as f64
    }
    /// Messages the source received per message it sent.
    pub(crate) fn source_load(&self) -> f64 {
        self.source_received as f64 / self.sent.max(1) as f64
    }
}

/// How the measured runs go: the source sends `messages` messages, one
/// every `every`, to a group of itself and `tree.n` receivers whose
/// feedback `group` configures; the run lasts until `tail` after the last
/// send, and every receiver must then have every message.
pub(crate) struct Run {
    /// The network.
    pub(crate) tree: Tree,
    /// Its loss.
    pub(crate) loss: Loss,
    /// Messages the source sends.
    pub(crate) messages: u64,
    /// Between two sends.
    pub(crate) every: Duration,
    /// Run on after the last send.
    pub(crate) tail: Duration,
}

impl Run {
    /// Runs it with `seed`, the group made by `group` from its members.
    pub(crate) fn go(
        &self,
        seed: u64,
        group: &dyn Fn(Vec<NodeId>) -> ft_multicast::GroupConfig,
    ) -> Result<Figures, String> {
        use ft_multicast::{GroupId, McastConfig, McastEvent, McastInput, Multicast};
        use ft_sim::{FaultPlan, Sim, SimConfig};

        let n = self.tree.n as usize + 1;
        let members: Vec<NodeId> = (0..n as u64).map(NodeId).collect();
        let config = group(members);
        let id: GroupId = config.id;
        let mut sim = Sim::<Multicast>::new(
            SimConfig::new(seed, n),
            McastConfig::new(vec![config]),
            FaultPlan::none(),
        );
        let (model, seen) = self.tree.clone().model(self.loss, seed);
        sim.set_link_model(model);
        let start = Duration::from_millis(500);
        for k in 0..self.messages {
            sim.input(
                start + self.every * k as u32,
                NodeId(0),
                McastInput::Send {
                    group: id,
                    token: k,
                    payload: Bytes::from(vec![k as u8; 64]),
                },
            );
        }
        let end = start + self.every * self.messages as u32 + self.tail;
        sim.run_until(end).map_err(|f| f.to_string())?;
        let w = sim.world();
        let mut got = vec![0u64; n];
        for o in w.events() {
            if let McastEvent::Delivered {
                from: NodeId(0), ..
            } = o.event
            {
                got[o.node.0 as usize] += 1;
            }
        }
        if let Some(short) = got.iter().position(|&g| g != self.messages) {
            return Err(format!(
                "seed {seed}: node {short} delivered {} of {}",
                got[short], self.messages
            ));
        }
        let mut f = Figures {
            sent: self.messages,
            ..Figures::default()
        };
        for (node, core) in w.cores() {
            f.nacks += core.stats().nacks_sent;
            f.repairs += core.stats().repairs_sent;
            f.parity += core.stats().parity_sent;
            if node == NodeId(0) {
                f.source_received = ft_core::Protocol::counters(core).messages_received;
            }
        }
        let s = seen.borrow();
        f.lost = s.lost.len() as u64;
        f.lost_copies = s.lost_copies;
        Ok(f)
    }
}

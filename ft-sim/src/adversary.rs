//! Byzantine nodes: arbitrary failures driven by a strategy.
//!
//! A Byzantine node still runs the honest core (so it knows what a plausible
//! message looks like and when one is due); its [`Adversary`] sees every
//! message the core would send and decides what is really sent, and gets an
//! unsolicited turn at every adversary tick of the plan.

use std::time::Duration;

use bytes::Bytes;
use ft_core::NodeId;

use crate::plan::Byzantine;
use crate::rng::SimRng;

/// What a Byzantine node sends: a message of the protocol, or raw payload
/// bytes (framed correctly, so only the receiver's decoder stands between
/// them and the core).
#[derive(Clone, Debug)]
pub enum Forged<M> {
    /// A well-formed message with chosen contents.
    Message(M),
    /// Arbitrary payload bytes.
    Raw(Bytes),
}

/// What an adversary can see and do during its turn.
pub struct AdversaryCtx<'a, M> {
    /// Virtual time since the start of the run.
    pub now: Duration,
    /// The Byzantine node.
    pub me: NodeId,
    /// Every node of the run.
    pub nodes: &'a [NodeId],
    /// The simulator's generator: draws from it keep the run reproducible.
    pub rng: &'a mut SimRng,
    pub(crate) out: &'a mut Vec<(NodeId, Forged<M>)>,
}

impl<M> AdversaryCtx<'_, M> {
    /// Sends `msg` to `to`.
    pub fn send(&mut self, to: NodeId, msg: M) {
        self.out.push((to, Forged::Message(msg)));
    }

    /// Sends arbitrary payload bytes to `to`.
    pub fn send_raw(&mut self, to: NodeId, payload: Bytes) {
        self.out.push((to, Forged::Raw(payload)));
    }

    /// Random payload bytes of a random length below `max_len`.
    pub fn random_payload(&mut self, max_len: usize) -> Bytes {
        let len = self.rng.below(max_len.max(1) as u64) as usize;
        let v: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
        Bytes::from(v)
    }
}

/// The strategy of a Byzantine node.
pub trait Adversary<M> {
    /// The node's honest core wants to send `msg` to `to`: send whatever the
    /// strategy likes instead (possibly nothing, possibly to others). A
    /// multicast of the core comes as one call for each of its distinct
    /// destinations.
    fn on_send(&mut self, ctx: &mut AdversaryCtx<'_, M>, to: NodeId, msg: M);

    /// An unsolicited turn, at every adversary tick of the plan.
    fn on_tick(&mut self, ctx: &mut AdversaryCtx<'_, M>) {
        let _ = ctx;
    }
}

/// Any closure `(ctx, to, msg)` is an adversary that acts only on sends.
impl<M, F> Adversary<M> for F
where
    F: FnMut(&mut AdversaryCtx<'_, M>, NodeId, M),
{
    fn on_send(&mut self, ctx: &mut AdversaryCtx<'_, M>, to: NodeId, msg: M) {
        self(ctx, to, msg)
    }
}

/// The built-in strategies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BuiltIn(pub(crate) Byzantine);

/// Random payloads are kept short: long enough to reach into any field of
/// a small message, short enough not to slow the run.
const RANDOM_PAYLOAD_MAX: usize = 64;

impl<M> Adversary<M> for BuiltIn {
    fn on_send(&mut self, ctx: &mut AdversaryCtx<'_, M>, to: NodeId, _msg: M) {
        match self.0 {
            Byzantine::RandomPayload => {
                let p = ctx.random_payload(RANDOM_PAYLOAD_MAX);
                ctx.send_raw(to, p);
            }
            Byzantine::Silent => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut AdversaryCtx<'_, M>) {
        if self.0 == Byzantine::RandomPayload && !ctx.nodes.is_empty() {
            let to = ctx.nodes[ctx.rng.below(ctx.nodes.len() as u64) as usize];
            let p = ctx.random_payload(RANDOM_PAYLOAD_MAX);
            ctx.send_raw(to, p);
        }
    }
}

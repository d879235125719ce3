//! Helpers for this crate's unit tests.

use ft_core::harness::Harness;
use ft_core::{NodeId, Protocol};

/// Carries every message between `a` (node `ids.0`) and `b` (node `ids.1`)
/// until none is left, dropping the ones `lose` says to; returns the
/// events both emitted, in order.
pub(crate) fn exchange<P: Protocol>(
    a: &mut Harness<P>,
    b: &mut Harness<P>,
    ids: (NodeId, NodeId),
    mut lose: impl FnMut(&P::Message) -> bool,
) -> Vec<P::Event> {
    let mut events = Vec::new();
    let mut wire: Vec<(NodeId, NodeId, P::Message)> = Vec::new();
    for (from, h) in [(ids.0, &mut *a), (ids.1, &mut *b)] {
        let out = h.drain();
        events.extend(out.events);
        wire.extend(out.sends.into_iter().map(|(to, m)| (from, to, m)));
    }
    while let Some((from, to, msg)) = wire.pop() {
        if lose(&msg) {
            continue;
        }
        let h = if to == ids.0 { &mut *a } else { &mut *b };
        let out = h.message(from, msg).drain();
        events.extend(out.events);
        wire.extend(out.sends.into_iter().map(|(t, m)| (to, t, m)));
    }
    events
}

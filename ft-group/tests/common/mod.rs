//! What the simulated SWIM tests share: the safety invariants checked after
//! every step.

use std::collections::BTreeMap;

use ft_core::{Incarnation, NodeId};
use ft_group::membership::MemberState;
use ft_group::swim::Swim;
use ft_sim::{Sim, World};

/// Safety invariants of SWIM, checked after every step:
/// - a member lists itself failed only while it acts as failed;
/// - every life of a member announces incarnations above every earlier
///   life's (so no rumor about an old life can pass for the new one);
/// - within one life of an observer, no member's incarnation ever goes
///   down in its view.
pub(crate) fn install_invariants(sim: &mut Sim<Swim>) {
    sim.invariant(
        "a member lists itself failed only while halted",
        |w: &World<Swim>| {
            for (id, core) in w.cores() {
                if core.membership().state(id) == Some(MemberState::Failed)
                    && !core.is_halted()
                    && !core.is_joining()
                {
                    return Err(format!("{id} lists itself failed but is running"));
                }
            }
            Ok(())
        },
    );
    // node -> (sim life, highest incarnation of earlier lives, highest of this life)
    let mut lives: BTreeMap<NodeId, (Incarnation, Option<Incarnation>, Option<Incarnation>)> =
        BTreeMap::new();
    sim.invariant(
        "a new life announces incarnations above every earlier life's",
        move |w: &World<Swim>| {
            for (id, core) in w.cores() {
                if core.is_joining() {
                    continue;
                }
                let life = w.incarnation(id);
                let entry = lives.entry(id).or_insert((life, None, None));
                if entry.0 != life {
                    entry.1 = entry.1.max(entry.2);
                    entry.0 = life;
                    entry.2 = None;
                }
                let inc = core.incarnation();
                if let Some(prev) = entry.1
                    && inc <= prev
                {
                    return Err(format!(
                        "{id} in life {life} announces {inc}, but an earlier life announced {prev}"
                    ));
                }
                entry.2 = entry.2.max(Some(inc));
            }
            Ok(())
        },
    );
    let mut seen: BTreeMap<(NodeId, Incarnation, NodeId), Incarnation> = BTreeMap::new();
    sim.invariant(
        "incarnations never go down in a view",
        move |w: &World<Swim>| {
            for (id, core) in w.cores() {
                let life = w.incarnation(id);
                for m in core.membership().iter() {
                    let last = seen.entry((id, life, m.node)).or_insert(m.incarnation);
                    if m.incarnation < *last {
                        return Err(format!(
                            "{id}'s view of {} went from {} down to {}",
                            m.node, last, m.incarnation
                        ));
                    }
                    *last = m.incarnation;
                }
            }
            Ok(())
        },
    );
}

//! Transition tests of one SWIM core, fed by hand.

use bytes::Bytes;
use ft_core::harness::{self, Drained, Harness};
use ft_core::{DecodeError, RecordError, record};

use super::*;
use crate::membership::MemberState;

/// A first life of `me` in a group of `n`.
fn member(n: usize, me: u64) -> Harness<Swim> {
    Harness::new(&SwimConfig::with_size(n), NodeId(me))
}

/// Life `life` of `me` in a group of `n`, rebuilt from `records`.
fn recovered(
    n: usize,
    me: u64,
    records: Vec<Bytes>,
    life: u64,
) -> Result<Harness<Swim>, RecoveryError> {
    Harness::recover(
        &SwimConfig::with_size(n),
        RecoveryContext {
            incarnation: Incarnation(life),
            records,
            ..harness::context(NodeId(me))
        },
    )
}

/// The bytes SWIM persists for incarnation `i`.
fn incarnation_record(i: u64) -> Bytes {
    record::encode(&SwimRecord::Incarnation(Incarnation(i)))
}

/// The incarnations persisted.
fn incarnations(out: &Drained<Swim>) -> Vec<Incarnation> {
    out.records::<SwimRecord>()
        .expect("SWIM writes records it reads")
        .into_iter()
        .map(|r| match r {
            SwimRecord::Incarnation(i) => i,
        })
        .collect()
}

fn announces_alive(out: &Drained<Swim>, me: NodeId, inc: u64) -> bool {
    out.sends.iter().any(|(_, m)| {
        m.rumors().contains(&Rumor::Alive {
            node: me,
            incarnation: Incarnation(inc),
        })
    })
}

fn ping(seq: u64, target: NodeId) -> SwimMessage {
    SwimMessage::Ping {
        seq,
        target,
        sender_incarnation: Incarnation(0),
        rumors: vec![],
    }
}

fn ping_with(rumor: Rumor, target: NodeId) -> SwimMessage {
    SwimMessage::Ping {
        seq: 1,
        target,
        sender_incarnation: Incarnation(0),
        rumors: vec![rumor],
    }
}

#[test]
fn a_suspicion_is_refuted_only_once_the_new_incarnation_is_durable() {
    let mut h = member(4, 0);
    h.drain();
    let suspect = Rumor::Suspect {
        node: NodeId(0),
        incarnation: Incarnation(0),
        from: NodeId(2),
    };
    let out = h.message(NodeId(1), ping_with(suspect, NodeId(0))).drain();
    assert_eq!(
        incarnations(&out),
        [Incarnation(1)],
        "the refutation is persisted"
    );
    // The ack goes out at once, but carries no announcement yet.
    assert_eq!(out.sends.len(), 1);
    assert!(!announces_alive(&out, NodeId(0), 1));
    assert_eq!(h.core.incarnation(), Incarnation(0));

    let out = h.persisted(out.persists[0].0).drain();
    assert!(out.events.contains(&SwimEvent::Refuted {
        incarnation: Incarnation(1)
    }));
    assert_eq!(h.core.incarnation(), Incarnation(1));
    assert_eq!(h.core.stats().refutations, 1);
    // Lifeguard: having to refute worsens local health.
    assert_eq!(h.core.local_health(), 1);
    // The next message carries the announcement.
    let out = h.message(NodeId(1), ping(2, NodeId(0))).drain();
    assert!(announces_alive(&out, NodeId(0), 1));
}

#[test]
fn declared_failed_means_fail_stop_then_rejoin_with_a_new_incarnation() {
    let mut h = member(4, 0);
    h.drain();
    let failed = Rumor::Failed {
        node: NodeId(0),
        incarnation: Incarnation(0),
    };
    let out = h.message(NodeId(1), ping_with(failed, NodeId(0))).drain();
    assert!(h.core.is_halted());
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, SwimEvent::DeclaredFailed { .. }))
    );
    assert_eq!(
        h.core.membership().state(NodeId(0)),
        Some(MemberState::Failed)
    );
    // Acting as failed: no answer to pings, probing stopped.
    let before = h.core.counters().messages_sent;
    h.message(NodeId(2), ping(9, NodeId(0)))
        .timer(SwimTimer::Probe);
    assert!(h.drain().sends.is_empty());
    assert_eq!(h.core.counters().messages_sent, before);

    let out = h
        .advance(Duration::from_secs(1))
        .timer(SwimTimer::Rejoin)
        .drain();
    assert_eq!(
        incarnations(&out),
        [Incarnation(1)],
        "the new incarnation is persisted"
    );
    assert!(out.sends.is_empty(), "nothing said before it is durable");
    let out = h.persisted(out.persists[0].0).drain();
    assert!(!h.core.is_halted());
    assert!(out.events.contains(&SwimEvent::Rejoined {
        incarnation: Incarnation(1)
    }));
    assert!(announces_alive(&out, NodeId(0), 1));
    assert_eq!(
        h.core.membership().state(NodeId(0)),
        Some(MemberState::Alive)
    );
}

#[test]
fn refute_mode_refutes_a_failure_instead_of_halting() {
    let mut config = SwimConfig::with_size(3);
    config.on_declared_failed = OnDeclaredFailed::Refute;
    let mut h = Harness::<Swim>::new(&config, NodeId(0));
    h.drain();
    let failed = Rumor::Failed {
        node: NodeId(0),
        incarnation: Incarnation(0),
    };
    let out = h.message(NodeId(1), ping_with(failed, NodeId(0))).drain();
    assert!(!h.core.is_halted());
    assert_eq!(incarnations(&out), [Incarnation(1)]);
}

#[test]
fn a_restart_starts_above_every_announced_incarnation_and_waits_for_disk() {
    let records = vec![incarnation_record(3), incarnation_record(5)];
    let mut h = recovered(4, 2, records, 2).unwrap();
    let out = h.drain();
    assert_eq!(incarnations(&out), [Incarnation(6)]);
    assert!(out.sends.is_empty());
    // Messages before the incarnation is durable are dropped.
    assert!(
        h.message(NodeId(1), ping(1, NodeId(2)))
            .drain()
            .sends
            .is_empty()
    );
    assert_eq!(h.core.counters().messages_dropped, 1);
    let out = h.persisted(out.persists[0].0).drain();
    assert!(announces_alive(&out, NodeId(2), 6));
    assert_eq!(h.core.incarnation(), Incarnation(6));
}

#[test]
fn a_record_written_by_the_core_round_trips() {
    // First life: a refutation persists incarnation 1.
    let mut h = member(4, 0);
    let suspect = Rumor::Suspect {
        node: NodeId(0),
        incarnation: Incarnation(0),
        from: NodeId(2),
    };
    let out = h.message(NodeId(1), ping_with(suspect, NodeId(0))).drain();
    let written: Vec<Bytes> = out.persists.iter().map(|(_, r)| r.clone()).collect();
    // The documented format: component SELF, version 1, tag 1, u64 LE.
    assert_eq!(&written[0][..], &[0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        out.records::<SwimRecord>().unwrap(),
        [SwimRecord::Incarnation(Incarnation(1))]
    );
    // The next life reads it back and starts above it.
    let mut h = recovered(4, 0, written, 1).unwrap();
    assert_eq!(incarnations(&h.drain()), [Incarnation(2)]);
    assert!(h.core.is_joining());
}

#[test]
fn a_record_that_does_not_decode_fails_recovery() {
    let error = |index, error| RecoveryError::Record {
        index,
        component: Component::SELF,
        error,
    };
    let cases = [
        (
            Bytes::from_static(&[0, 1, 9, 1, 0, 0, 0, 0, 0, 0, 0]),
            error(
                1,
                RecordError::Decode(DecodeError::UnknownTag {
                    what: "SwimRecord",
                    tag: 9,
                }),
            ),
        ),
        (
            Bytes::from_static(&[0, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0]),
            error(
                1,
                RecordError::Version {
                    found: 2,
                    writes: 1,
                },
            ),
        ),
        (
            Bytes::from_static(&[0, 1, 1, 1, 0]),
            error(
                1,
                RecordError::Decode(DecodeError::Truncated {
                    needed: 6,
                    available: 2,
                }),
            ),
        ),
        (
            Bytes::from_static(&[0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            error(1, RecordError::Trailing { extra: 1 }),
        ),
        (Bytes::new(), error(1, RecordError::NoHeader { len: 0 })),
        // A raw 8-byte incarnation (the format before records had a
        // header) reads as a record of component 7.
        (
            Bytes::copy_from_slice(&7u64.to_le_bytes()),
            RecoveryError::Inconsistent(
                "records of component 7, which this core does not have".into(),
            ),
        ),
    ];
    for (bad, expected) in cases {
        let records = vec![incarnation_record(3), bad.clone()];
        assert_eq!(recovered(4, 0, records, 1).err(), Some(expected), "{bad:?}");
    }
}

#[test]
fn an_unanswered_probe_asks_k_others_then_suspects() {
    let mut h = member(6, 0);
    h.drain();
    let (target, _) = h.timer(SwimTimer::Probe).drain().sends[0].clone();
    let reqs: Vec<_> = h
        .advance(Duration::from_millis(500))
        .timer(SwimTimer::ProbeTimeout)
        .drain()
        .sends
        .into_iter()
        .filter(|(to, m)| {
            matches!(m, SwimMessage::PingReq { target: t, .. } if *t == target) && *to != target
        })
        .collect();
    assert_eq!(reqs.len(), 3);
    // One nack of three arrives: two missing nacks count against us.
    let seq = match &reqs[0].1 {
        SwimMessage::PingReq { seq, .. } => *seq,
        _ => unreachable!(),
    };
    let out = h
        .message(reqs[0].0, SwimMessage::Nack { seq })
        .advance(Duration::from_millis(500))
        .timer(SwimTimer::Probe)
        .drain();
    assert_eq!(
        h.core.membership().state(target),
        Some(MemberState::Suspect)
    );
    assert_eq!(h.core.stats().nacks_missed, 2);
    assert_eq!(h.core.local_health(), 2);
    assert!(
        out.timers_set
            .iter()
            .any(|(t, _)| *t == SwimTimer::Suspicion(target))
    );
}

#[test]
fn confirmations_shorten_the_suspicion_timeout() {
    let s = member(10, 0).core;
    let t0 = s.suspicion_timeout(0);
    let t1 = s.suspicion_timeout(1);
    let t2 = s.suspicion_timeout(2);
    assert_eq!(t0, s.config().max_suspicion_timeout(10));
    assert!(t0 > t1 && t1 > t2);
    assert_eq!(t2, s.config().min_suspicion_timeout(10));
    assert_eq!(s.suspicion_timeout(50), t2);
}

#[test]
fn pings_for_someone_else_and_strangers_are_dropped() {
    let mut h = member(3, 0);
    h.drain();
    h.message(NodeId(1), ping(1, NodeId(2)))
        .message(NodeId(77), ping(1, NodeId(0)));
    assert!(h.drain().sends.is_empty());
    assert_eq!(h.core.counters().messages_dropped, 2);
}

#[test]
fn a_flood_of_indirect_requests_is_bounded() {
    let mut h = member(3, 0);
    h.drain();
    for seq in 0..1000 {
        h.message(
            NodeId(1),
            SwimMessage::PingReq {
                seq,
                target: NodeId(2),
                sender_incarnation: Incarnation(0),
                rumors: vec![],
            },
        );
    }
    let max = h.core.config().max_forwarded as u64;
    assert_eq!(h.core.stats().ping_reqs_served, max);
    assert_eq!(h.core.stats().ping_reqs_refused, 1000 - max);
    assert_eq!(h.drain().sends.len() as u64, max);
}

#[test]
fn a_flood_of_rumors_keeps_memory_bounded_by_the_group() {
    let mut h = member(5, 0);
    h.drain();
    for i in 0..10_000u64 {
        let rumors = (0..MAX_RUMORS as u64)
            .map(|k| Rumor::Alive {
                node: NodeId((i * 64 + k) % 50),
                incarnation: Incarnation(i),
            })
            .collect();
        h.message(
            NodeId(1),
            SwimMessage::Ack {
                seq: i,
                sender_incarnation: Incarnation(0),
                rumors,
            },
        );
    }
    // Strangers (n5..n49) are ignored; members' news replaces older news.
    assert!(h.core.pending_rumors() <= 4, "{}", h.core.pending_rumors());
    assert_eq!(h.core.membership().len(), 5);
}

#[test]
fn an_absurd_configuration_does_not_panic() {
    let mut config = SwimConfig::with_size(4);
    config.protocol_period = Duration::MAX;
    config.probe_timeout = Duration::MAX;
    config.suspicion_mult = u32::MAX;
    config.suspicion_max_timeout_mult = u32::MAX;
    config.retransmit_mult = u32::MAX;
    config.awareness_max_multiplier = u32::MAX;
    config.on_declared_failed = OnDeclaredFailed::FailStop {
        rejoin_after: Some(Duration::MAX),
    };
    let mut h = Harness::<Swim>::new(&config, NodeId(0));
    for t in [SwimTimer::Probe, SwimTimer::ProbeTimeout, SwimTimer::Probe] {
        h.timer(t);
    }
    let suspect = Rumor::Suspect {
        node: NodeId(1),
        incarnation: Incarnation(0),
        from: NodeId(2),
    };
    let failed = Rumor::Failed {
        node: NodeId(0),
        incarnation: Incarnation(0),
    };
    h.message(NodeId(2), ping_with(suspect, NodeId(0)))
        .message(NodeId(2), ping_with(failed, NodeId(0)));
    assert!(h.core.is_halted());
    assert!(h.core.suspicion_timeout(0) >= h.core.suspicion_timeout(5));
}

#[test]
fn hearsay_cannot_push_an_incarnation_far_beyond_what_its_member_said() {
    let mut h = member(4, 0);
    h.drain();
    let k = h.core.config().max_hearsay_rise;
    // About this member: a failure of an incarnation it never came near.
    for forged in [
        Rumor::Failed {
            node: NodeId(0),
            incarnation: Incarnation(u64::MAX),
        },
        Rumor::Alive {
            node: NodeId(0),
            incarnation: Incarnation(u64::MAX - 1),
        },
        Rumor::Suspect {
            node: NodeId(0),
            incarnation: Incarnation(k + 1),
            from: NodeId(2),
        },
    ] {
        let out = h.message(NodeId(2), ping_with(forged, NodeId(0))).drain();
        assert!(out.persists.is_empty(), "{forged:?} made it outbid");
    }
    assert!(!h.core.is_halted());
    assert_eq!(h.core.incarnation(), Incarnation(0));
    // About another member: the view does not move.
    let forged = Rumor::Failed {
        node: NodeId(1),
        incarnation: Incarnation(u64::MAX),
    };
    h.message(NodeId(2), ping_with(forged, NodeId(0)));
    assert_eq!(
        h.core.membership().state(NodeId(1)),
        Some(MemberState::Alive)
    );
    assert_eq!(h.core.stats().hearsay_refused, 4);
    // Up to the bound, hearsay is believed (a member really can refute that
    // often while we were not hearing).
    let far = Rumor::Alive {
        node: NodeId(1),
        incarnation: Incarnation(k),
    };
    h.message(NodeId(2), ping_with(far, NodeId(0)));
    assert_eq!(
        h.core.membership().incarnation(NodeId(1)),
        Some(Incarnation(k))
    );
    // First-hand word is believed at any height: n3 says it itself.
    let mut first_hand = ping(9, NodeId(0));
    if let SwimMessage::Ping {
        sender_incarnation, ..
    } = &mut first_hand
    {
        *sender_incarnation = Incarnation(u64::MAX - 7);
    }
    h.message(NodeId(3), first_hand);
    assert_eq!(
        h.core.membership().incarnation(NodeId(3)),
        Some(Incarnation(u64::MAX - 7))
    );
    assert_eq!(h.core.stats().hearsay_refused, 4);
}

#[test]
fn a_member_at_the_last_incarnation_stays_failed_instead_of_flapping() {
    // A life that starts at u64::MAX (its record says so).
    let mut h = recovered(4, 0, vec![incarnation_record(u64::MAX - 1)], 1).unwrap();
    let out = h.drain();
    assert_eq!(incarnations(&out), [Incarnation(u64::MAX)]);
    h.persisted(out.persists[0].0);
    let failed = Rumor::Failed {
        node: NodeId(0),
        incarnation: Incarnation(u64::MAX),
    };
    h.message(NodeId(2), ping_with(failed, NodeId(0)));
    assert!(h.core.is_halted());
    h.drain();
    let out = h.timer(SwimTimer::Rejoin).drain();
    assert!(
        h.core.is_halted() && !h.core.is_joining(),
        "it rejoined at u64::MAX"
    );
    assert!(out.persists.is_empty());
    assert_eq!(h.core.stats().rejoins_refused, 1);
    assert!(out.events.contains(&SwimEvent::CannotRejoin));
}

/// Holds n1 failed (at incarnation 0), as n2 told it.
fn member_holding_n1_failed() -> Harness<Swim> {
    let mut h = member(4, 0);
    let failed = Rumor::Failed {
        node: NodeId(1),
        incarnation: Incarnation(0),
    };
    h.message(NodeId(2), ping_with(failed, NodeId(0))).drain();
    assert_eq!(
        h.core.membership().state(NodeId(1)),
        Some(MemberState::Failed)
    );
    h
}

#[test]
fn the_reconnect_loop_pings_members_failed_long_ago_with_the_news() {
    let mut h = member_holding_n1_failed();
    let failed = Rumor::Failed {
        node: NodeId(1),
        incarnation: Incarnation(0),
    };
    // Within gossip to the dead, the loop leaves n1 to the probe rotation.
    for _ in 0..30 {
        let out = h.timer(SwimTimer::Reconnect).drain();
        assert!(out.sent_to(NodeId(1)).is_empty());
    }
    // After it, about one tick in three (one failed member, three live)
    // pings n1, always with the news of its failure.
    let gossip_to_the_dead = h.core.config().gossip_to_the_dead;
    h.advance(gossip_to_the_dead);
    let mut pings = Vec::new();
    for _ in 0..300 {
        let out = h.timer(SwimTimer::Reconnect).drain();
        assert!(
            out.timers_set
                .iter()
                .any(|(t, _)| *t == SwimTimer::Reconnect)
        );
        pings.extend(out.sent_to(NodeId(1)).into_iter().cloned());
    }
    assert!((60..=140).contains(&pings.len()), "{} pings", pings.len());
    assert_eq!(h.core.stats().reconnect_probes, pings.len() as u64);
    for p in &pings {
        assert!(p.rumors().contains(&failed), "{p:?}");
    }
    // An answer means n1 was alive after all: it rejoined at a new
    // incarnation, which its own word carries.
    let SwimMessage::Ping { seq, .. } = pings[pings.len() - 1] else {
        panic!("not a ping")
    };
    h.message(
        NodeId(1),
        SwimMessage::Ack {
            seq,
            sender_incarnation: Incarnation(1),
            rumors: vec![],
        },
    );
    assert_eq!(h.core.stats().reconnects_answered, 1);
    assert_eq!(
        h.core.membership().state(NodeId(1)),
        Some(MemberState::Alive)
    );
}

#[test]
fn a_member_held_failed_that_speaks_is_told_so_in_the_answer() {
    let mut h = member_holding_n1_failed();
    // The news of n1's failure has been spread as often as it is spread.
    for seq in 0..100 {
        if h.core.pending_rumors() == 0 {
            break;
        }
        h.message(NodeId(2), ping(seq, NodeId(0))).drain();
    }
    assert_eq!(h.core.pending_rumors(), 0);
    // n1, cut off, does not know; it pings us under the incarnation we hold
    // failed. Every ack tells it (not just the one in four the anti-entropy
    // trickle would).
    for seq in 200..204 {
        let out = h.message(NodeId(1), ping(seq, NodeId(0))).drain();
        let (to, ack) = &out.sends[0];
        assert_eq!(*to, NodeId(1));
        assert!(matches!(ack, SwimMessage::Ack { seq: s, .. } if *s == seq));
        assert!(
            ack.rumors().contains(&Rumor::Failed {
                node: NodeId(1),
                incarnation: Incarnation(0),
            }),
            "{ack:?}"
        );
    }
}

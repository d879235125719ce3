//! Transition tests of one SWIM core, fed by hand.

use super::*;

fn core(n: usize, me: u64, records: Vec<Bytes>, incarnation: u64) -> (Swim, Instant) {
    core_with(&SwimConfig::with_size(n), me, records, incarnation)
}

fn core_with(
    config: &SwimConfig,
    me: u64,
    records: Vec<Bytes>,
    incarnation: u64,
) -> (Swim, Instant) {
    let now = Instant::now();
    let swim = Swim::recover(
        config,
        RecoveryContext {
            node: NodeId(me),
            incarnation: Incarnation(incarnation),
            records,
            seed: 7,
            now,
        },
    )
    .unwrap();
    (swim, now)
}

fn drain(s: &mut Swim) -> Vec<Output<Swim>> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn sends(out: &[Output<Swim>]) -> Vec<(NodeId, SwimMessage)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn persist_token(out: &[Output<Swim>]) -> Option<(PersistToken, u64)> {
    out.iter().find_map(|o| match o {
        Output::Persist { record, token } => {
            Some((*token, u64::from_le_bytes(record[..8].try_into().unwrap())))
        }
        _ => None,
    })
}

fn announces_alive(out: &[Output<Swim>], me: NodeId, inc: u64) -> bool {
    sends(out).iter().any(|(_, m)| {
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
    let (mut s, now) = core(4, 0, vec![], 0);
    drain(&mut s);
    let suspect = Rumor::Suspect {
        node: NodeId(0),
        incarnation: Incarnation(0),
        from: NodeId(2),
    };
    s.handle_message(now, NodeId(1), ping_with(suspect, NodeId(0)));
    let out = drain(&mut s);
    let (token, inc) = persist_token(&out).expect("the refutation is persisted");
    assert_eq!(inc, 1);
    // The ack goes out at once, but carries no announcement yet.
    assert_eq!(sends(&out).len(), 1);
    assert!(!announces_alive(&out, NodeId(0), 1));
    assert_eq!(s.incarnation(), Incarnation(0));

    s.handle_persisted(now, token);
    let out = drain(&mut s);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(SwimEvent::Refuted {
            incarnation: Incarnation(1)
        })
    )));
    assert_eq!(s.incarnation(), Incarnation(1));
    assert_eq!(s.stats().refutations, 1);
    // Lifeguard: having to refute worsens local health.
    assert_eq!(s.local_health(), 1);
    // The next message carries the announcement.
    s.handle_message(now, NodeId(1), ping(2, NodeId(0)));
    assert!(announces_alive(&drain(&mut s), NodeId(0), 1));
}

#[test]
fn declared_failed_means_fail_stop_then_rejoin_with_a_new_incarnation() {
    let (mut s, now) = core(4, 0, vec![], 0);
    drain(&mut s);
    let failed = Rumor::Failed {
        node: NodeId(0),
        incarnation: Incarnation(0),
    };
    s.handle_message(now, NodeId(1), ping_with(failed, NodeId(0)));
    let out = drain(&mut s);
    assert!(s.is_halted());
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(SwimEvent::DeclaredFailed { .. })))
    );
    assert_eq!(s.membership().state(NodeId(0)), Some(MemberState::Failed));
    // Acting as failed: no answer to pings, probing stopped.
    let before = s.counters().messages_sent;
    s.handle_message(now, NodeId(2), ping(9, NodeId(0)));
    s.handle_timer(now, SwimTimer::Probe);
    assert!(sends(&drain(&mut s)).is_empty());
    assert_eq!(s.counters().messages_sent, before);

    let later = now + Duration::from_secs(1);
    s.handle_timer(later, SwimTimer::Rejoin);
    let out = drain(&mut s);
    let (token, inc) = persist_token(&out).expect("the new incarnation is persisted");
    assert_eq!(inc, 1);
    assert!(sends(&out).is_empty(), "nothing said before it is durable");
    s.handle_persisted(later, token);
    let out = drain(&mut s);
    assert!(!s.is_halted());
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(SwimEvent::Rejoined {
            incarnation: Incarnation(1)
        })
    )));
    assert!(announces_alive(&out, NodeId(0), 1));
    assert_eq!(s.membership().state(NodeId(0)), Some(MemberState::Alive));
}

#[test]
fn refute_mode_refutes_a_failure_instead_of_halting() {
    let mut config = SwimConfig::with_size(3);
    config.on_declared_failed = OnDeclaredFailed::Refute;
    let (mut s, now) = core_with(&config, 0, vec![], 0);
    drain(&mut s);
    let failed = Rumor::Failed {
        node: NodeId(0),
        incarnation: Incarnation(0),
    };
    s.handle_message(now, NodeId(1), ping_with(failed, NodeId(0)));
    let out = drain(&mut s);
    assert!(!s.is_halted());
    assert_eq!(persist_token(&out).map(|p| p.1), Some(1));
}

#[test]
fn a_restart_starts_above_every_announced_incarnation_and_waits_for_disk() {
    let records = vec![
        Bytes::copy_from_slice(&3u64.to_le_bytes()),
        Bytes::copy_from_slice(&5u64.to_le_bytes()),
    ];
    let (mut s, now) = core(4, 2, records, 2);
    let out = drain(&mut s);
    let (token, inc) = persist_token(&out).unwrap();
    assert_eq!(inc, 6);
    assert!(sends(&out).is_empty());
    // Messages before the incarnation is durable are dropped.
    s.handle_message(now, NodeId(1), ping(1, NodeId(2)));
    assert!(sends(&drain(&mut s)).is_empty());
    assert_eq!(s.counters().messages_dropped, 1);
    s.handle_persisted(now, token);
    let out = drain(&mut s);
    assert!(announces_alive(&out, NodeId(2), 6));
    assert_eq!(s.incarnation(), Incarnation(6));
}

#[test]
fn an_unanswered_probe_asks_k_others_then_suspects() {
    let (mut s, now) = core(6, 0, vec![], 0);
    drain(&mut s);
    s.handle_timer(now, SwimTimer::Probe);
    let out = drain(&mut s);
    let (target, _) = sends(&out)[0].clone();
    s.handle_timer(now + Duration::from_millis(500), SwimTimer::ProbeTimeout);
    let reqs: Vec<_> = sends(&drain(&mut s))
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
    s.handle_message(now, reqs[0].0, SwimMessage::Nack { seq });
    s.handle_timer(now + Duration::from_secs(1), SwimTimer::Probe);
    let out = drain(&mut s);
    assert_eq!(s.membership().state(target), Some(MemberState::Suspect));
    assert_eq!(s.stats().nacks_missed, 2);
    assert_eq!(s.local_health(), 2);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::SetTimer { timer: SwimTimer::Suspicion(n), .. } if *n == target
    )));
}

#[test]
fn confirmations_shorten_the_suspicion_timeout() {
    let (s, _) = core(10, 0, vec![], 0);
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
    let (mut s, now) = core(3, 0, vec![], 0);
    drain(&mut s);
    s.handle_message(now, NodeId(1), ping(1, NodeId(2)));
    s.handle_message(now, NodeId(77), ping(1, NodeId(0)));
    assert!(sends(&drain(&mut s)).is_empty());
    assert_eq!(s.counters().messages_dropped, 2);
}

#[test]
fn a_flood_of_indirect_requests_is_bounded() {
    let (mut s, now) = core(3, 0, vec![], 0);
    drain(&mut s);
    for seq in 0..1000 {
        s.handle_message(
            now,
            NodeId(1),
            SwimMessage::PingReq {
                seq,
                target: NodeId(2),
                sender_incarnation: Incarnation(0),
                rumors: vec![],
            },
        );
    }
    let max = s.config().max_forwarded as u64;
    assert_eq!(s.stats().ping_reqs_served, max);
    assert_eq!(s.stats().ping_reqs_refused, 1000 - max);
    assert_eq!(sends(&drain(&mut s)).len() as u64, max);
}

#[test]
fn a_flood_of_rumors_keeps_memory_bounded_by_the_group() {
    let (mut s, now) = core(5, 0, vec![], 0);
    drain(&mut s);
    for i in 0..10_000u64 {
        let rumors = (0..MAX_RUMORS as u64)
            .map(|k| Rumor::Alive {
                node: NodeId((i * 64 + k) % 50),
                incarnation: Incarnation(i),
            })
            .collect();
        s.handle_message(
            now,
            NodeId(1),
            SwimMessage::Ack {
                seq: i,
                sender_incarnation: Incarnation(0),
                rumors,
            },
        );
    }
    // Strangers (n5..n49) are ignored; members' news replaces older news.
    assert!(s.pending_rumors() <= 4, "{}", s.pending_rumors());
    assert_eq!(s.membership().len(), 5);
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
    let (mut s, now) = core_with(&config, 0, vec![], 0);
    drain(&mut s);
    for t in [SwimTimer::Probe, SwimTimer::ProbeTimeout, SwimTimer::Probe] {
        s.handle_timer(now, t);
        drain(&mut s);
    }
    let suspect = Rumor::Suspect {
        node: NodeId(1),
        incarnation: Incarnation(0),
        from: NodeId(2),
    };
    s.handle_message(now, NodeId(2), ping_with(suspect, NodeId(0)));
    let failed = Rumor::Failed {
        node: NodeId(0),
        incarnation: Incarnation(0),
    };
    s.handle_message(now, NodeId(2), ping_with(failed, NodeId(0)));
    drain(&mut s);
    assert!(s.is_halted());
    assert!(s.suspicion_timeout(0) >= s.suspicion_timeout(5));
}

#[test]
fn hearsay_cannot_push_an_incarnation_far_beyond_what_its_member_said() {
    let (mut s, now) = core(4, 0, vec![], 0);
    drain(&mut s);
    let k = s.config().max_hearsay_rise;
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
        s.handle_message(now, NodeId(2), ping_with(forged, NodeId(0)));
        let out = drain(&mut s);
        assert!(persist_token(&out).is_none(), "{forged:?} made it outbid");
    }
    assert!(!s.is_halted());
    assert_eq!(s.incarnation(), Incarnation(0));
    // About another member: the view does not move.
    let forged = Rumor::Failed {
        node: NodeId(1),
        incarnation: Incarnation(u64::MAX),
    };
    s.handle_message(now, NodeId(2), ping_with(forged, NodeId(0)));
    assert_eq!(s.membership().state(NodeId(1)), Some(MemberState::Alive));
    assert_eq!(s.stats().hearsay_refused, 4);
    // Up to the bound, hearsay is believed (a member really can refute that
    // often while we were not hearing).
    let far = Rumor::Alive {
        node: NodeId(1),
        incarnation: Incarnation(k),
    };
    s.handle_message(now, NodeId(2), ping_with(far, NodeId(0)));
    assert_eq!(s.membership().incarnation(NodeId(1)), Some(Incarnation(k)));
    // First-hand word is believed at any height: n3 says it itself.
    let mut first_hand = ping(9, NodeId(0));
    if let SwimMessage::Ping {
        sender_incarnation, ..
    } = &mut first_hand
    {
        *sender_incarnation = Incarnation(u64::MAX - 7);
    }
    s.handle_message(now, NodeId(3), first_hand);
    assert_eq!(
        s.membership().incarnation(NodeId(3)),
        Some(Incarnation(u64::MAX - 7))
    );
    assert_eq!(s.stats().hearsay_refused, 4);
}

#[test]
fn a_member_at_the_last_incarnation_stays_failed_instead_of_flapping() {
    // A life that starts at u64::MAX (its record says so).
    let record = Bytes::copy_from_slice(&(u64::MAX - 1).to_le_bytes());
    let (mut s, now) = core(4, 0, vec![record], 1);
    let out = drain(&mut s);
    let (token, inc) = persist_token(&out).unwrap();
    assert_eq!(inc, u64::MAX);
    s.handle_persisted(now, token);
    drain(&mut s);
    let failed = Rumor::Failed {
        node: NodeId(0),
        incarnation: Incarnation(u64::MAX),
    };
    s.handle_message(now, NodeId(2), ping_with(failed, NodeId(0)));
    drain(&mut s);
    assert!(s.is_halted());
    s.handle_timer(now, SwimTimer::Rejoin);
    let out = drain(&mut s);
    assert!(s.is_halted() && !s.is_joining(), "it rejoined at u64::MAX");
    assert!(persist_token(&out).is_none());
    assert_eq!(s.stats().rejoins_refused, 1);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(SwimEvent::CannotRejoin)))
    );
}

/// Holds n1 failed (at incarnation 0) at `now`, as n2 told it.
fn core_holding_n1_failed() -> (Swim, Instant) {
    let (mut s, now) = core(4, 0, vec![], 0);
    drain(&mut s);
    let failed = Rumor::Failed {
        node: NodeId(1),
        incarnation: Incarnation(0),
    };
    s.handle_message(now, NodeId(2), ping_with(failed, NodeId(0)));
    drain(&mut s);
    assert_eq!(s.membership().state(NodeId(1)), Some(MemberState::Failed));
    (s, now)
}

#[test]
fn the_reconnect_loop_pings_members_failed_long_ago_with_the_news() {
    let (mut s, now) = core_holding_n1_failed();
    let failed = Rumor::Failed {
        node: NodeId(1),
        incarnation: Incarnation(0),
    };
    let to_n1 = |out: &[Output<Swim>]| {
        sends(out)
            .into_iter()
            .filter(|(to, _)| *to == NodeId(1))
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
    };
    // Within gossip to the dead, the loop leaves n1 to the probe rotation.
    for _ in 0..30 {
        s.handle_timer(now, SwimTimer::Reconnect);
        assert!(to_n1(&drain(&mut s)).is_empty());
    }
    // After it, about one tick in three (one failed member, three live)
    // pings n1, always with the news of its failure.
    let later = now + s.config().gossip_to_the_dead;
    let mut pings = Vec::new();
    for _ in 0..300 {
        s.handle_timer(later, SwimTimer::Reconnect);
        let out = drain(&mut s);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::SetTimer {
                timer: SwimTimer::Reconnect,
                ..
            }
        )));
        pings.extend(to_n1(&out));
    }
    assert!((60..=140).contains(&pings.len()), "{} pings", pings.len());
    assert_eq!(s.stats().reconnect_probes, pings.len() as u64);
    for p in &pings {
        assert!(p.rumors().contains(&failed), "{p:?}");
    }
    // An answer means n1 was alive after all: it rejoined at a new
    // incarnation, which its own word carries.
    let SwimMessage::Ping { seq, .. } = pings[pings.len() - 1] else {
        panic!("not a ping")
    };
    s.handle_message(
        later,
        NodeId(1),
        SwimMessage::Ack {
            seq,
            sender_incarnation: Incarnation(1),
            rumors: vec![],
        },
    );
    assert_eq!(s.stats().reconnects_answered, 1);
    assert_eq!(s.membership().state(NodeId(1)), Some(MemberState::Alive));
}

#[test]
fn a_member_held_failed_that_speaks_is_told_so_in_the_answer() {
    let (mut s, now) = core_holding_n1_failed();
    // The news of n1's failure has been spread as often as it is spread.
    for seq in 0..100 {
        if s.pending_rumors() == 0 {
            break;
        }
        s.handle_message(now, NodeId(2), ping(seq, NodeId(0)));
        drain(&mut s);
    }
    assert_eq!(s.pending_rumors(), 0);
    // n1, cut off, does not know; it pings us under the incarnation we hold
    // failed. Every ack tells it (not just the one in four the anti-entropy
    // trickle would).
    for seq in 200..204 {
        s.handle_message(now, NodeId(1), ping(seq, NodeId(0)));
        let out = sends(&drain(&mut s));
        let (to, ack) = &out[0];
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

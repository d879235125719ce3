//! Transitions of one general, driven by hand.

use std::time::Duration;

use ft_core::harness::{self, Harness};

use super::*;

const ROUND: Duration = Duration::from_millis(10);

fn ids(n: u64) -> Vec<NodeId> {
    (0..n).map(NodeId).collect()
}

fn config(n: u64, m: usize) -> OmConfig {
    OmConfig::unchecked(ids(n), NodeId(0), m, ROUND, Bytes::from_static(b"retreat")).unwrap()
}

/// Life `incarnation` of general `node`.
fn general(config: &OmConfig, node: u64, incarnation: u64) -> Harness<OmGeneral> {
    let ctx = RecoveryContext {
        incarnation: Incarnation(incarnation),
        ..harness::context(NodeId(node))
    };
    Harness::recover(config, ctx).unwrap()
}

fn msg(path: &[u64], value: &'static str) -> OmMessage {
    OmMessage {
        path: path.iter().copied().map(NodeId).collect(),
        value: Bytes::from_static(value.as_bytes()),
    }
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn commander_sends_to_every_lieutenant_and_decides_at_once() {
    let c = config(4, 1);
    let mut g = general(&c, 0, 0);
    assert_eq!(g.core.role(), Role::Commander);
    let outs = g.input(OmInput::Propose(b("attack"))).take();
    let s: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        s,
        vec![
            (NodeId(1), msg(&[0], "attack")),
            (NodeId(2), msg(&[0], "attack")),
            (NodeId(3), msg(&[0], "attack")),
        ]
    );
    assert!(matches!(outs.last(), Some(Output::Event(OmEvent::Decided(v))) if v == "attack"));
    assert_eq!(g.core.decision(), Some(&b("attack")));
    assert_eq!(g.core.counters().messages_sent, 3);
    // Anything sent to the commander is useless to it.
    g.message(NodeId(1), msg(&[0, 1], "x"));
    assert_eq!(g.core.dropped(DropReason::AfterDecision), 1);
}

#[test]
fn lieutenant_relays_to_everyone_off_the_path_and_stops_at_m_plus_one() {
    let c = config(7, 2);
    let mut g = general(&c, 3, 0);
    let t0 = g.now;
    let outs = g.input(OmInput::Start).take();
    assert!(matches!(
        outs[..],
        [Output::SetTimer { timer: OmTimer::Decide, at }] if at == t0 + 3 * ROUND
    ));
    let s = g
        .advance(ROUND / 2)
        .message(NodeId(0), msg(&[0], "v"))
        .drain()
        .sends;
    let to: Vec<u64> = s.iter().map(|(to, _)| to.0).collect();
    assert_eq!(to, vec![1, 2, 4, 5, 6]);
    assert!(s.iter().all(|(_, m)| *m == msg(&[0, 3], "v")));
    let s = g
        .advance(ROUND / 2)
        .message(NodeId(1), msg(&[0, 1], "v"))
        .drain()
        .sends;
    let to: Vec<u64> = s.iter().map(|(to, _)| to.0).collect();
    assert_eq!(to, vec![2, 4, 5, 6]);
    // Three generals on the path is m + 1: stored, not relayed.
    let out = g.message(NodeId(2), msg(&[0, 1, 2], "v")).drain();
    assert!(out.sends.is_empty());
    assert_eq!(g.core.paths_received(), 3);
    assert_eq!(
        g.core.value_for(&[NodeId(0), NodeId(1), NodeId(2)]),
        Some(&b("v"))
    );
    assert_eq!(g.core.counters().messages_dropped, 0);
}

#[test]
fn every_malformed_message_is_dropped_for_its_reason() {
    let c = config(5, 1);
    let mut g = general(&c, 1, 0);
    g.input(OmInput::Start).drain();
    let cases: Vec<(u64, OmMessage, DropReason)> = vec![
        (9, msg(&[0, 9], "x"), DropReason::FromStranger),
        (2, msg(&[], "x"), DropReason::WrongCommander),
        (2, msg(&[2], "x"), DropReason::WrongCommander),
        (3, msg(&[0, 2, 3], "x"), DropReason::TooLong),
        (
            2,
            msg(&[0, 2, 2, 3, 4, 5, 6, 7, 8], "x"),
            DropReason::TooLong,
        ),
    ];
    for (from, m, reason) in cases {
        let before = g.core.dropped(reason);
        g.message(NodeId(from), m);
        assert_eq!(g.core.dropped(reason), before + 1, "{reason:?}");
    }
    let c3 = config(5, 3);
    let mut g3 = general(&c3, 1, 0);
    g3.input(OmInput::Start).drain();
    let cases = vec![
        (2, msg(&[0, 7, 2], "x"), DropReason::StrangerInPath),
        (2, msg(&[0, 2, 2], "x"), DropReason::Repeated),
        (3, msg(&[0, 3, 0], "x"), DropReason::Repeated),
        (3, msg(&[0, 2], "x"), DropReason::SenderNotLast),
        (2, msg(&[0, 1, 2], "x"), DropReason::ReceiverInPath),
    ];
    for (from, m, reason) in cases {
        let before = g3.core.dropped(reason);
        g3.message(NodeId(from), m);
        assert_eq!(g3.core.dropped(reason), before + 1, "{reason:?}");
    }
    let big = OmMessage {
        path: vec![NodeId(0)],
        value: Bytes::from(vec![0; MAX_VALUE_LEN + 1]),
    };
    g3.message(NodeId(0), big);
    assert_eq!(g3.core.dropped(DropReason::ValueTooLarge), 1);
    assert_eq!(g3.core.counters().messages_dropped, 6);
    assert_eq!(g3.core.paths_received(), 0);
    assert!(g3.drain().sends.is_empty(), "nothing malformed is relayed");
}

#[test]
fn first_value_per_path_wins_and_copies_are_counted() {
    let c = config(4, 1);
    let mut g = general(&c, 1, 0);
    g.input(OmInput::Start)
        .message(NodeId(0), msg(&[0], "attack"))
        .drain();
    g.message(NodeId(0), msg(&[0], "attack"))
        .message(NodeId(0), msg(&[0], "retreat"));
    assert_eq!(g.core.dropped(DropReason::Duplicate), 1);
    assert_eq!(g.core.dropped(DropReason::Conflicting), 1);
    assert!(g.drain().sends.is_empty(), "copies are not relayed");
    assert_eq!(g.core.value_for(&[NodeId(0)]), Some(&b("attack")));
}

#[test]
fn a_message_is_due_within_as_many_rounds_as_its_path_is_long() {
    let c = config(4, 1);
    let mut g = general(&c, 1, 0);
    g.input(OmInput::Start)
        .advance(ROUND + Duration::from_nanos(1))
        .message(NodeId(0), msg(&[0], "a"));
    assert_eq!(g.core.dropped(DropReason::Late), 1);
    g.advance(ROUND - Duration::from_nanos(1))
        .message(NodeId(2), msg(&[0, 2], "a"))
        .advance(Duration::from_nanos(1))
        .message(NodeId(3), msg(&[0, 3], "a"));
    assert_eq!(g.core.dropped(DropReason::Late), 2);
    assert_eq!(g.core.paths_received(), 1);
    g.timer(OmTimer::Decide);
    // [0] missing → retreat; [0,2] says a; [0,3] missing → retreat.
    assert_eq!(g.core.decision(), Some(&b("retreat")));
    g.message(NodeId(3), msg(&[0, 3], "a"));
    assert_eq!(g.core.dropped(DropReason::AfterDecision), 1);
}

#[test]
fn messages_before_the_start_are_early_not_late() {
    let c = config(4, 1);
    let mut g = general(&c, 1, 0);
    let out = g
        .advance(5 * ROUND)
        .message(NodeId(0), msg(&[0], "attack"))
        .drain();
    assert_eq!(g.core.paths_received(), 1);
    assert_eq!(out.sends.len(), 2);
}

#[test]
fn decision_is_om_step_three_at_every_level() {
    // n = 7, m = 2, from lieutenant 1's point of view; the commander (a
    // traitor) told 1 "x", and its accomplice n6 lies about everything.
    let c = config(7, 2);
    let mut g = general(&c, 1, 0);
    g.input(OmInput::Start).advance(ROUND);
    g.message(NodeId(0), msg(&[0], "x"));
    // What the others say the commander told them: 2 heard "y", 3, 4, 5
    // heard "x", 6 claims "z".
    for (j, v) in [(2, "y"), (3, "x"), (4, "x"), (5, "x"), (6, "z")] {
        g.message(NodeId(j), msg(&[0, j], v));
    }
    // Second-level relays: loyal j relays exactly what it heard from k;
    // n6 claims everyone told it "z".
    let heard = |k: u64| match k {
        2 => "y",
        3..=5 => "x",
        _ => "z",
    };
    for k in 2..=6u64 {
        for j in 2..=6u64 {
            if j != k {
                let v = if j == 6 { "z" } else { heard(k) };
                g.message(NodeId(j), msg(&[0, k, j], v));
            }
        }
    }
    g.drain();
    let out = g.advance(2 * ROUND).timer(OmTimer::Decide).drain();
    // resolve([0,k]) for loyal k: k's value, 3 loyal echoes of it against
    // n6's "z" → k's value. resolve([0,6]) = majority(z, z, z, z, z) = z.
    // resolve([0]) = majority(x | y, x, x, x, z) = x (4 of 6).
    assert_eq!(g.core.decision(), Some(&b("x")));
    assert_eq!(out.events, vec![OmEvent::Decided(b("x"))]);
}

#[test]
fn nothing_heard_means_the_default() {
    let c = config(7, 2);
    let mut g = general(&c, 4, 0);
    g.input(OmInput::Start)
        .advance(3 * ROUND)
        .timer(OmTimer::Decide);
    assert_eq!(g.core.decision(), Some(&b("retreat")));
    // A second firing changes nothing and says nothing.
    g.drain();
    assert!(g.advance(ROUND).timer(OmTimer::Decide).drain().is_empty());
}

#[test]
fn wrong_inputs_are_rejected_and_change_nothing() {
    let c = config(4, 1);
    let mut lt = general(&c, 1, 0);
    assert_eq!(
        lt.input(OmInput::Propose(b("attack"))).drain().events,
        vec![OmEvent::InputRejected(OmInputError::NotCommander)]
    );
    lt.input(OmInput::Start).drain();
    assert_eq!(
        lt.input(OmInput::Start).drain().events,
        vec![OmEvent::InputRejected(OmInputError::AlreadyStarted)]
    );

    let mut cmd = general(&c, 0, 0);
    let out = cmd
        .input(OmInput::Start)
        .input(OmInput::Propose(Bytes::from(vec![1; MAX_VALUE_LEN + 1])))
        .drain();
    assert_eq!(
        out.events,
        vec![
            OmEvent::InputRejected(OmInputError::NotLieutenant),
            OmEvent::InputRejected(OmInputError::ValueTooLarge {
                len: MAX_VALUE_LEN + 1,
                max: MAX_VALUE_LEN
            })
        ]
    );
    assert_eq!(cmd.core.decision(), None);
}

#[test]
fn outsiders_and_restarted_generals_abstain() {
    let c = config(4, 1);
    for (node, inc) in [(9, 0), (1, 1), (0, 2)] {
        let mut g = general(&c, node, inc);
        assert_eq!(g.core.role(), Role::Abstaining);
        let out = g
            .input(OmInput::Start)
            .message(NodeId(0), msg(&[0], "attack"))
            .advance(2 * ROUND)
            .timer(OmTimer::Decide)
            .drain();
        assert_eq!(
            out.events,
            vec![OmEvent::InputRejected(OmInputError::Abstaining)]
        );
        assert_eq!(g.core.dropped(DropReason::Abstaining), 1);
        assert_eq!(g.core.decision(), None);
    }
}

#[test]
fn drop_reasons_are_all_listed() {
    let mut all = DropReason::ALL.to_vec();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), DropReason::ALL.len());
}

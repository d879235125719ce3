//! Transitions of one general, driven by hand.

use std::time::Duration;

use super::*;

const ROUND: Duration = Duration::from_millis(10);

fn ids(n: u64) -> Vec<NodeId> {
    (0..n).map(NodeId).collect()
}

fn config(n: u64, m: usize) -> OmConfig {
    OmConfig::unchecked(ids(n), NodeId(0), m, ROUND, Bytes::from_static(b"retreat")).unwrap()
}

fn general(config: &OmConfig, node: u64, incarnation: u64) -> (OmGeneral, Instant) {
    let now = Instant::now();
    let g = OmGeneral::recover(
        config,
        RecoveryContext {
            node: NodeId(node),
            incarnation: Incarnation(incarnation),
            records: vec![],
            seed: 0,
            now,
        },
    )
    .unwrap();
    (g, now)
}

fn drain(g: &mut OmGeneral) -> Vec<Output<OmGeneral>> {
    std::iter::from_fn(|| g.poll_output()).collect()
}

fn sends(outs: &[Output<OmGeneral>]) -> Vec<(NodeId, OmMessage)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn events(outs: &[Output<OmGeneral>]) -> Vec<OmEvent> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
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
    let (mut g, t0) = general(&c, 0, 0);
    assert_eq!(g.role(), Role::Commander);
    g.handle_input(t0, OmInput::Propose(b("attack")));
    let outs = drain(&mut g);
    let s = sends(&outs);
    assert_eq!(
        s,
        vec![
            (NodeId(1), msg(&[0], "attack")),
            (NodeId(2), msg(&[0], "attack")),
            (NodeId(3), msg(&[0], "attack")),
        ]
    );
    assert!(matches!(outs.last(), Some(Output::Event(OmEvent::Decided(v))) if v == "attack"));
    assert_eq!(g.decision(), Some(&b("attack")));
    assert_eq!(g.counters().messages_sent, 3);
    // Anything sent to the commander is useless to it.
    g.handle_message(t0, NodeId(1), msg(&[0, 1], "x"));
    assert_eq!(g.dropped(DropReason::AfterDecision), 1);
}

#[test]
fn lieutenant_relays_to_everyone_off_the_path_and_stops_at_m_plus_one() {
    let c = config(7, 2);
    let (mut g, t0) = general(&c, 3, 0);
    g.handle_input(t0, OmInput::Start);
    let outs = drain(&mut g);
    assert!(matches!(
        outs[..],
        [Output::SetTimer { timer: OmTimer::Decide, at }] if at == t0 + 3 * ROUND
    ));
    g.handle_message(t0 + ROUND / 2, NodeId(0), msg(&[0], "v"));
    let s = sends(&drain(&mut g));
    let to: Vec<u64> = s.iter().map(|(to, _)| to.0).collect();
    assert_eq!(to, vec![1, 2, 4, 5, 6]);
    assert!(s.iter().all(|(_, m)| *m == msg(&[0, 3], "v")));
    g.handle_message(t0 + ROUND, NodeId(1), msg(&[0, 1], "v"));
    let to: Vec<u64> = sends(&drain(&mut g)).iter().map(|(to, _)| to.0).collect();
    assert_eq!(to, vec![2, 4, 5, 6]);
    // Three generals on the path is m + 1: stored, not relayed.
    g.handle_message(t0 + ROUND, NodeId(2), msg(&[0, 1, 2], "v"));
    assert!(sends(&drain(&mut g)).is_empty());
    assert_eq!(g.paths_received(), 3);
    assert_eq!(
        g.value_for(&[NodeId(0), NodeId(1), NodeId(2)]),
        Some(&b("v"))
    );
    assert_eq!(g.counters().messages_dropped, 0);
}

#[test]
fn every_malformed_message_is_dropped_for_its_reason() {
    let c = config(5, 1);
    let (mut g, t0) = general(&c, 1, 0);
    g.handle_input(t0, OmInput::Start);
    drain(&mut g);
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
        let before = g.dropped(reason);
        g.handle_message(t0, NodeId(from), m);
        assert_eq!(g.dropped(reason), before + 1, "{reason:?}");
    }
    let c3 = config(5, 3);
    let (mut g3, t0) = general(&c3, 1, 0);
    g3.handle_input(t0, OmInput::Start);
    drain(&mut g3);
    let cases = vec![
        (2, msg(&[0, 7, 2], "x"), DropReason::StrangerInPath),
        (2, msg(&[0, 2, 2], "x"), DropReason::Repeated),
        (3, msg(&[0, 3, 0], "x"), DropReason::Repeated),
        (3, msg(&[0, 2], "x"), DropReason::SenderNotLast),
        (2, msg(&[0, 1, 2], "x"), DropReason::ReceiverInPath),
    ];
    for (from, m, reason) in cases {
        let before = g3.dropped(reason);
        g3.handle_message(t0, NodeId(from), m);
        assert_eq!(g3.dropped(reason), before + 1, "{reason:?}");
    }
    let big = OmMessage {
        path: vec![NodeId(0)],
        value: Bytes::from(vec![0; MAX_VALUE_LEN + 1]),
    };
    g3.handle_message(t0, NodeId(0), big);
    assert_eq!(g3.dropped(DropReason::ValueTooLarge), 1);
    assert_eq!(g3.counters().messages_dropped, 6);
    assert_eq!(g3.paths_received(), 0);
    assert!(
        sends(&drain(&mut g3)).is_empty(),
        "nothing malformed is relayed"
    );
}

#[test]
fn first_value_per_path_wins_and_copies_are_counted() {
    let c = config(4, 1);
    let (mut g, t0) = general(&c, 1, 0);
    g.handle_input(t0, OmInput::Start);
    g.handle_message(t0, NodeId(0), msg(&[0], "attack"));
    drain(&mut g);
    g.handle_message(t0, NodeId(0), msg(&[0], "attack"));
    g.handle_message(t0, NodeId(0), msg(&[0], "retreat"));
    assert_eq!(g.dropped(DropReason::Duplicate), 1);
    assert_eq!(g.dropped(DropReason::Conflicting), 1);
    assert!(sends(&drain(&mut g)).is_empty(), "copies are not relayed");
    assert_eq!(g.value_for(&[NodeId(0)]), Some(&b("attack")));
}

#[test]
fn a_message_is_due_within_as_many_rounds_as_its_path_is_long() {
    let c = config(4, 1);
    let (mut g, t0) = general(&c, 1, 0);
    g.handle_input(t0, OmInput::Start);
    g.handle_message(
        t0 + ROUND + Duration::from_nanos(1),
        NodeId(0),
        msg(&[0], "a"),
    );
    assert_eq!(g.dropped(DropReason::Late), 1);
    g.handle_message(t0 + 2 * ROUND, NodeId(2), msg(&[0, 2], "a"));
    g.handle_message(
        t0 + 2 * ROUND + Duration::from_nanos(1),
        NodeId(3),
        msg(&[0, 3], "a"),
    );
    assert_eq!(g.dropped(DropReason::Late), 2);
    assert_eq!(g.paths_received(), 1);
    g.handle_timer(t0 + 2 * ROUND, OmTimer::Decide);
    // [0] missing → retreat; [0,2] says a; [0,3] missing → retreat.
    assert_eq!(g.decision(), Some(&b("retreat")));
    g.handle_message(t0 + 2 * ROUND, NodeId(3), msg(&[0, 3], "a"));
    assert_eq!(g.dropped(DropReason::AfterDecision), 1);
}

#[test]
fn messages_before_the_start_are_early_not_late() {
    let c = config(4, 1);
    let (mut g, t0) = general(&c, 1, 0);
    g.handle_message(t0 + 5 * ROUND, NodeId(0), msg(&[0], "attack"));
    assert_eq!(g.paths_received(), 1);
    assert_eq!(sends(&drain(&mut g)).len(), 2);
}

#[test]
fn decision_is_om_step_three_at_every_level() {
    // n = 7, m = 2, from lieutenant 1's point of view; the commander (a
    // traitor) told 1 "x", and its accomplice n6 lies about everything.
    let c = config(7, 2);
    let (mut g, t0) = general(&c, 1, 0);
    g.handle_input(t0, OmInput::Start);
    let at = t0 + ROUND;
    g.handle_message(at, NodeId(0), msg(&[0], "x"));
    // What the others say the commander told them: 2 heard "y", 3, 4, 5
    // heard "x", 6 claims "z".
    for (j, v) in [(2, "y"), (3, "x"), (4, "x"), (5, "x"), (6, "z")] {
        g.handle_message(at, NodeId(j), msg(&[0, j], v));
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
                g.handle_message(at, NodeId(j), msg(&[0, k, j], v));
            }
        }
    }
    drain(&mut g);
    g.handle_timer(t0 + 3 * ROUND, OmTimer::Decide);
    // resolve([0,k]) for loyal k: k's value, 3 loyal echoes of it against
    // n6's "z" → k's value. resolve([0,6]) = majority(z, z, z, z, z) = z.
    // resolve([0]) = majority(x | y, x, x, x, z) = x (4 of 6).
    assert_eq!(g.decision(), Some(&b("x")));
    let outs = drain(&mut g);
    assert_eq!(events(&outs), vec![OmEvent::Decided(b("x"))]);
}

#[test]
fn nothing_heard_means_the_default() {
    let c = config(7, 2);
    let (mut g, t0) = general(&c, 4, 0);
    g.handle_input(t0, OmInput::Start);
    g.handle_timer(t0 + 3 * ROUND, OmTimer::Decide);
    assert_eq!(g.decision(), Some(&b("retreat")));
    // A second firing changes nothing and says nothing.
    drain(&mut g);
    g.handle_timer(t0 + 4 * ROUND, OmTimer::Decide);
    assert!(drain(&mut g).is_empty());
}

#[test]
fn wrong_inputs_are_rejected_and_change_nothing() {
    let c = config(4, 1);
    let (mut lt, t0) = general(&c, 1, 0);
    lt.handle_input(t0, OmInput::Propose(b("attack")));
    assert_eq!(
        events(&drain(&mut lt)),
        vec![OmEvent::InputRejected(OmInputError::NotCommander)]
    );
    lt.handle_input(t0, OmInput::Start);
    drain(&mut lt);
    lt.handle_input(t0, OmInput::Start);
    assert_eq!(
        events(&drain(&mut lt)),
        vec![OmEvent::InputRejected(OmInputError::AlreadyStarted)]
    );

    let (mut cmd, t0) = general(&c, 0, 0);
    cmd.handle_input(t0, OmInput::Start);
    cmd.handle_input(
        t0,
        OmInput::Propose(Bytes::from(vec![1; MAX_VALUE_LEN + 1])),
    );
    assert_eq!(
        events(&drain(&mut cmd)),
        vec![
            OmEvent::InputRejected(OmInputError::NotLieutenant),
            OmEvent::InputRejected(OmInputError::ValueTooLarge {
                len: MAX_VALUE_LEN + 1,
                max: MAX_VALUE_LEN
            })
        ]
    );
    assert_eq!(cmd.decision(), None);
}

#[test]
fn outsiders_and_restarted_generals_abstain() {
    let c = config(4, 1);
    for (node, inc) in [(9, 0), (1, 1), (0, 2)] {
        let (mut g, t0) = general(&c, node, inc);
        assert_eq!(g.role(), Role::Abstaining);
        g.handle_input(t0, OmInput::Start);
        g.handle_message(t0, NodeId(0), msg(&[0], "attack"));
        g.handle_timer(t0 + 2 * ROUND, OmTimer::Decide);
        assert_eq!(
            events(&drain(&mut g)),
            vec![OmEvent::InputRejected(OmInputError::Abstaining)]
        );
        assert_eq!(g.dropped(DropReason::Abstaining), 1);
        assert_eq!(g.decision(), None);
    }
}

#[test]
fn drop_reasons_are_all_listed() {
    let mut all = DropReason::ALL.to_vec();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), DropReason::ALL.len());
}

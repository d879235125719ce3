//! Transition tests of one reliable-channel core, fed by hand.

use super::*;

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const MS: Duration = Duration::from_millis(1);

fn core_with(config: &ReliableConfig, me: NodeId, incarnation: u64) -> Reliable {
    Reliable::recover(
        config,
        RecoveryContext {
            node: me,
            incarnation: Incarnation(incarnation),
            records: vec![],
            seed: 1,
            now: Instant::now(),
        },
    )
    .unwrap()
}

fn core(me: NodeId, incarnation: u64) -> Reliable {
    core_with(&ReliableConfig::with_size(3), me, incarnation)
}

fn drain(c: &mut Reliable) -> Vec<Output<Reliable>> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn sends(out: &[Output<Reliable>]) -> Vec<ReliableMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output<Reliable>]) -> Vec<ReliableEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn delivered(out: &[Output<Reliable>]) -> Vec<Bytes> {
    events(out)
        .into_iter()
        .filter_map(|e| match e {
            ReliableEvent::Delivered { payload, .. } => Some(payload),
            _ => None,
        })
        .collect()
}

fn seqs(msgs: &[ReliableMessage]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            ReliableMessage::Data { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn timers_set(out: &[Output<Reliable>]) -> Vec<(ReliableTimer, Instant)> {
    out.iter()
        .filter_map(|o| match o {
            Output::SetTimer { timer, at } => Some((*timer, *at)),
            _ => None,
        })
        .collect()
}

fn p(i: u64) -> Bytes {
    Bytes::from(i.to_le_bytes().to_vec())
}

fn data(sender: u64, receiver: u64, seq: u64) -> ReliableMessage {
    ReliableMessage::Data {
        sender_incarnation: Incarnation(sender),
        receiver_incarnation: Incarnation(receiver),
        seq,
        payload: p(seq),
    }
}

fn ack(sender: u64, receiver: u64, cumulative: u64, selective: Vec<(u64, u64)>) -> ReliableMessage {
    ReliableMessage::Ack {
        sender_incarnation: Incarnation(sender),
        receiver_incarnation: Incarnation(receiver),
        cumulative,
        selective,
        window: 64,
    }
}

/// The (cumulative, selective) of the only ack in `out`.
fn the_ack(out: &[Output<Reliable>]) -> (u64, Vec<(u64, u64)>, Incarnation) {
    let acks: Vec<_> = sends(out)
        .into_iter()
        .filter_map(|m| match m {
            ReliableMessage::Ack {
                cumulative,
                selective,
                sender_incarnation,
                ..
            } => Some((cumulative, selective, sender_incarnation)),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 1, "{out:?}");
    acks.into_iter().next().unwrap()
}

// ---- receiving ----

#[test]
fn in_order_segments_are_delivered_and_acknowledged() {
    let mut b = core(B, 0);
    let now = Instant::now();
    for seq in 0..3 {
        b.handle_message(now, A, data(0, 0, seq));
        let out = drain(&mut b);
        assert_eq!(delivered(&out), [p(seq)]);
        assert_eq!(the_ack(&out), (seq + 1, vec![], Incarnation(0)));
    }
    let st = b.peer_stats(A).unwrap();
    assert_eq!((st.delivered, st.acks_sent), (3, 3));
    assert_eq!(b.peer_incarnation(A), Some(Incarnation(0)));
}

#[test]
fn out_of_order_segments_wait_for_the_hole_then_go_in_order() {
    let mut b = core(B, 0);
    let now = Instant::now();
    for seq in [2, 3, 5] {
        b.handle_message(now, A, data(0, 0, seq));
        let out = drain(&mut b);
        assert!(delivered(&out).is_empty());
    }
    b.handle_message(now, A, data(0, 0, 1));
    let out = drain(&mut b);
    assert!(delivered(&out).is_empty());
    assert_eq!(the_ack(&out).1, vec![(1, 4), (5, 6)]);
    assert_eq!(b.peer_stats(A).unwrap().reorder_buffered, 4);
    b.handle_message(now, A, data(0, 0, 0));
    let out = drain(&mut b);
    assert_eq!(delivered(&out), [p(0), p(1), p(2), p(3)]);
    assert_eq!(the_ack(&out).0, 4);
    assert_eq!(the_ack(&out).1, vec![(5, 6)]);
    b.handle_message(now, A, data(0, 0, 4));
    assert_eq!(delivered(&drain(&mut b)), [p(4), p(5)]);
    let st = b.peer_stats(A).unwrap();
    assert_eq!((st.out_of_order_buffered, st.reorder_buffered), (4, 0));
}

#[test]
fn duplicates_are_dropped_and_acknowledged_again() {
    let mut b = core(B, 0);
    let now = Instant::now();
    b.handle_message(now, A, data(0, 0, 0));
    b.handle_message(now, A, data(0, 0, 2));
    drain(&mut b);
    // Below the cumulative point, and already in the reorder buffer.
    b.handle_message(now, A, data(0, 0, 0));
    let out = drain(&mut b);
    assert!(delivered(&out).is_empty());
    assert_eq!(the_ack(&out).0, 1);
    b.handle_message(now, A, data(0, 0, 2));
    let out = drain(&mut b);
    assert!(delivered(&out).is_empty());
    assert_eq!(the_ack(&out).1, vec![(2, 3)]);
    assert_eq!(b.peer_stats(A).unwrap().duplicates_dropped, 2);
    assert_eq!(b.counters().messages_dropped, 2);
}

#[test]
fn selective_ranges_are_capped_and_the_lowest_are_reported() {
    let config = ReliableConfig {
        max_sack_ranges: 2,
        ..ReliableConfig::with_size(2)
    };
    let mut b = core_with(&config, B, 0);
    let now = Instant::now();
    for seq in [2, 4, 5, 7, 9] {
        b.handle_message(now, A, data(0, 0, seq));
    }
    let out = drain(&mut b);
    let last = sends(&out).pop().unwrap();
    let ReliableMessage::Ack { selective, .. } = last else {
        panic!("{last:?}")
    };
    assert_eq!(selective, vec![(2, 3), (4, 6)]);
}

#[test]
fn segments_beyond_the_reorder_buffer_are_dropped() {
    let config = ReliableConfig {
        reorder_buffer: 4,
        ..ReliableConfig::with_size(2)
    };
    let mut b = core_with(&config, B, 0);
    let now = Instant::now();
    b.handle_message(now, A, data(0, 0, 3));
    b.handle_message(now, A, data(0, 0, 4));
    b.handle_message(now, A, data(0, 0, u64::MAX - 1));
    let out = drain(&mut b);
    assert!(delivered(&out).is_empty());
    let st = b.peer_stats(A).unwrap();
    assert_eq!((st.beyond_window_dropped, st.reorder_buffered), (2, 1));
    let last = sends(&out).pop().unwrap();
    assert!(matches!(last, ReliableMessage::Ack { window: 4, .. }));
    // The last sequence number is never sent, so it cannot be delivered.
    let mut b = core(B, 0);
    let mut m = data(0, 0, u64::MAX);
    if let ReliableMessage::Data { seq, .. } = &mut m {
        *seq = u64::MAX;
    }
    b.handle_message(now, A, m);
    assert!(delivered(&drain(&mut b)).is_empty());
    assert_eq!(b.peer_stats(A).unwrap().invalid_dropped, 1);
}

#[test]
fn a_delayed_ack_covers_two_segments() {
    let config = ReliableConfig {
        ack_delay: 20 * MS,
        ..ReliableConfig::with_size(2)
    };
    let mut b = core_with(&config, B, 0);
    let now = Instant::now();
    b.handle_message(now, A, data(0, 0, 0));
    let out = drain(&mut b);
    assert_eq!(delivered(&out).len(), 1);
    assert!(sends(&out).is_empty());
    assert_eq!(timers_set(&out), [(ReliableTimer::Ack(A), now + 20 * MS)]);
    // The second in-order segment is acknowledged at once, with the first.
    b.handle_message(now + MS, A, data(0, 0, 1));
    let out = drain(&mut b);
    assert_eq!(the_ack(&out).0, 2);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::CancelTimer {
            timer: ReliableTimer::Ack(_)
        }
    )));
    // A lone segment is acknowledged when the timer fires; a stale firing
    // does nothing.
    b.handle_message(now + 2 * MS, A, data(0, 0, 2));
    drain(&mut b);
    b.handle_timer(now + 3 * MS, ReliableTimer::Ack(A));
    assert!(sends(&drain(&mut b)).is_empty());
    b.handle_timer(now + 22 * MS, ReliableTimer::Ack(A));
    assert_eq!(the_ack(&drain(&mut b)).0, 3);
    b.handle_timer(now + 40 * MS, ReliableTimer::Ack(A));
    assert!(sends(&drain(&mut b)).is_empty());
}

// ---- sending ----

#[test]
fn the_window_limits_segments_in_flight_and_the_rest_queue() {
    let config = ReliableConfig {
        window: 4,
        ..ReliableConfig::with_size(2)
    };
    let mut a = core_with(&config, A, 0);
    let now = Instant::now();
    for i in 0..6 {
        a.send(now, B, p(i));
    }
    let out = drain(&mut a);
    assert_eq!(seqs(&sends(&out)), [0, 1, 2, 3]);
    // The timer starts with the first segment, at the initial RTO.
    assert_eq!(
        timers_set(&out),
        [(ReliableTimer::Retransmit(B), now + Duration::from_secs(1))]
    );
    let st = a.peer_stats(B).unwrap();
    assert_eq!((st.in_flight, st.queued), (4, 2));
    a.handle_message(now + 10 * MS, B, ack(0, 0, 2, vec![]));
    let out = drain(&mut a);
    assert_eq!(seqs(&sends(&out)), [4, 5]);
    let st = a.peer_stats(B).unwrap();
    assert_eq!((st.in_flight, st.queued, st.rtt_samples), (4, 0, 1));
    assert_eq!(st.srtt, Some(10 * MS));
    a.handle_message(now + 20 * MS, B, ack(0, 0, 6, vec![]));
    let out = drain(&mut a);
    assert!(a.is_idle());
    assert!(out.iter().any(|o| matches!(
        o,
        Output::CancelTimer {
            timer: ReliableTimer::Retransmit(_)
        }
    )));
}

#[test]
fn the_receiver_window_lowers_the_senders() {
    let mut a = core(A, 0);
    let now = Instant::now();
    a.send(now, B, p(0));
    drain(&mut a);
    let mut m = ack(0, 0, 1, vec![]);
    if let ReliableMessage::Ack { window, .. } = &mut m {
        *window = 0; // treated as 1, or the stream could never move again
    }
    a.handle_message(now, B, m);
    for i in 1..4 {
        a.send(now, B, p(i));
    }
    assert_eq!(seqs(&sends(&drain(&mut a))), [1]);
}

#[test]
fn a_full_queue_rejects_sends() {
    let config = ReliableConfig {
        window: 2,
        send_queue: 3,
        ..ReliableConfig::with_size(2)
    };
    let mut a = core_with(&config, A, 0);
    let now = Instant::now();
    for i in 0..8 {
        a.send(now, B, p(i));
    }
    let out = drain(&mut a);
    let rejected: Vec<_> = events(&out)
        .into_iter()
        .map(|e| match e {
            ReliableEvent::SendRejected {
                to,
                payload,
                reason: RejectReason::QueueFull,
            } if to == B => payload,
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(rejected, [p(5), p(6), p(7)]);
    let st = a.peer_stats(B).unwrap();
    assert_eq!((st.in_flight, st.queued, st.rejected), (2, 3, 3));
}

#[test]
fn sends_to_strangers_and_oversized_payloads_are_rejected() {
    let mut a = core(A, 0);
    let now = Instant::now();
    a.send(now, NodeId(9), p(0));
    a.send(now, A, p(0));
    a.send(now, B, Bytes::from(vec![0; MAX_PAYLOAD + 1]));
    let reasons: Vec<_> = events(&drain(&mut a))
        .into_iter()
        .map(|e| match e {
            ReliableEvent::SendRejected { reason, .. } => reason,
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            RejectReason::UnknownPeer,
            RejectReason::UnknownPeer,
            RejectReason::TooLarge
        ]
    );
    // And messages from strangers are dropped.
    a.handle_message(now, NodeId(9), data(0, 0, 0));
    assert!(drain(&mut a).is_empty());
    assert_eq!(a.strangers_dropped(), 1);
}

#[test]
fn a_timeout_retransmits_what_is_missing_and_backs_off() {
    let mut a = core(A, 0);
    let t0 = Instant::now();
    for i in 0..3 {
        a.send(t0, B, p(i));
    }
    drain(&mut a);
    // Segment 1 arrived (SACKed, and a 10 ms sample: RTO 200 ms); 0 and 2
    // did not. No cumulative progress, so the timer keeps its first
    // setting, the initial RTO.
    a.handle_message(t0 + 10 * MS, B, ack(0, 0, 0, vec![(1, 2)]));
    assert!(timers_set(&drain(&mut a)).is_empty());
    let mut at = t0 + Duration::from_secs(1);
    for rto in [400, 800, 1600] {
        a.handle_timer(at, ReliableTimer::Retransmit(B));
        let out = drain(&mut a);
        assert_eq!(seqs(&sends(&out)), [0, 2], "at RTO {rto}");
        let next = at + rto * MS;
        assert_eq!(timers_set(&out), [(ReliableTimer::Retransmit(B), next)]);
        at = next;
    }
    let st = a.peer_stats(B).unwrap();
    assert_eq!((st.timeouts, st.retransmissions), (3, 6));
    assert_eq!(a.counters().retransmissions, 6);
    assert_eq!(a.rtt(B).unwrap().backoff(), 3);
    assert_eq!(st.rto, 1600 * MS);
    // An early (replaced) firing does nothing.
    a.handle_timer(at - MS, ReliableTimer::Retransmit(B));
    assert!(drain(&mut a).is_empty());
}

#[test]
fn a_timeout_spares_segments_sent_less_than_an_rto_ago() {
    let mut a = core(A, 0);
    let t0 = Instant::now();
    a.send(t0, B, p(0));
    a.send(t0, B, p(1));
    drain(&mut a);
    // Sent 600 ms after the first two: not yet out for the 1 s RTO.
    a.send(t0 + 600 * MS, B, p(2));
    drain(&mut a);
    a.handle_timer(t0 + Duration::from_secs(1), ReliableTimer::Retransmit(B));
    assert_eq!(seqs(&sends(&drain(&mut a))), [0, 1]);
    // The oldest always goes, however recently it was sent.
    a.handle_timer(t0 + Duration::from_secs(3), ReliableTimer::Retransmit(B));
    assert_eq!(seqs(&sends(&drain(&mut a))), [0, 1, 2]);
    a.handle_message(t0 + Duration::from_secs(3), B, ack(0, 0, 2, vec![]));
    drain(&mut a);
    a.handle_timer(t0 + Duration::from_secs(7), ReliableTimer::Retransmit(B));
    assert_eq!(seqs(&sends(&drain(&mut a))), [2]);
}

#[test]
fn karn_never_samples_a_retransmitted_segment() {
    let mut a = core(A, 0);
    let t0 = Instant::now();
    a.send(t0, B, p(0));
    drain(&mut a);
    a.handle_timer(t0 + Duration::from_secs(1), ReliableTimer::Retransmit(B));
    drain(&mut a);
    a.handle_message(t0 + Duration::from_millis(1010), B, ack(0, 0, 1, vec![]));
    let out = drain(&mut a);
    let st = a.peer_stats(B).unwrap();
    assert_eq!((st.rtt_samples, st.srtt), (0, None));
    // The back-off stays until a clean sample.
    assert_eq!(st.rto, Duration::from_secs(2));
    assert!(timers_set(&out).is_empty());
    let t1 = t0 + Duration::from_secs(3);
    a.send(t1, B, p(1));
    drain(&mut a);
    a.handle_message(t1 + 30 * MS, B, ack(0, 0, 2, vec![]));
    drain(&mut a);
    let st = a.peer_stats(B).unwrap();
    assert_eq!((st.rtt_samples, st.srtt), (1, Some(30 * MS)));
    assert_eq!(st.rto, 200 * MS);
}

#[test]
fn three_sacked_segments_above_a_hole_trigger_one_fast_retransmit() {
    let mut a = core(A, 0);
    let t0 = Instant::now();
    for i in 0..6 {
        a.send(t0, B, p(i));
    }
    drain(&mut a);
    a.handle_message(t0 + 10 * MS, B, ack(0, 0, 1, vec![(2, 4)]));
    assert!(seqs(&sends(&drain(&mut a))).is_empty());
    a.handle_message(t0 + 11 * MS, B, ack(0, 0, 1, vec![(2, 5)]));
    assert_eq!(seqs(&sends(&drain(&mut a))), [1]);
    // Not again on the next ack: the timer covers a second loss.
    a.handle_message(t0 + 12 * MS, B, ack(0, 0, 1, vec![(2, 6)]));
    assert!(seqs(&sends(&drain(&mut a))).is_empty());
    let st = a.peer_stats(B).unwrap();
    assert_eq!((st.fast_retransmissions, st.retransmissions), (1, 1));
    // SACKed segments are not resent by the timer.
    a.handle_timer(t0 + Duration::from_secs(2), ReliableTimer::Retransmit(B));
    assert_eq!(seqs(&sends(&drain(&mut a))), [1]);
}

#[test]
fn acks_of_segments_never_sent_are_invalid() {
    let mut a = core(A, 0);
    let now = Instant::now();
    a.send(now, B, p(0));
    drain(&mut a);
    a.handle_message(now, B, ack(0, 0, 5, vec![]));
    a.handle_message(now, B, ack(0, 0, 0, vec![(1, 9)]));
    drain(&mut a);
    let st = a.peer_stats(B).unwrap();
    assert_eq!((st.invalid_dropped, st.in_flight), (2, 1));
}

// ---- incarnations ----

#[test]
fn messages_of_an_older_life_are_dropped() {
    let mut b = core(B, 0);
    let now = Instant::now();
    b.handle_message(now, A, data(2, 0, 0));
    assert_eq!(delivered(&drain(&mut b)).len(), 1);
    b.handle_message(now, A, data(1, 0, 1));
    b.handle_message(now, A, ack(1, 0, 0, vec![]));
    assert!(drain(&mut b).is_empty());
    assert_eq!(b.peer_stats(A).unwrap().stale_dropped, 2);
    assert_eq!(b.peer_incarnation(A), Some(Incarnation(2)));
}

#[test]
fn data_for_an_earlier_life_is_dropped_and_answered_with_the_current_incarnation() {
    let mut b = core(B, 3);
    let now = Instant::now();
    b.handle_message(now, A, data(0, 2, 0));
    let out = drain(&mut b);
    assert!(delivered(&out).is_empty());
    assert_eq!(the_ack(&out), (0, vec![], Incarnation(3)));
    // Addressed to a life this node has not had yet: dropped silently.
    b.handle_message(now, A, data(0, 4, 0));
    assert!(drain(&mut b).is_empty());
    let st = b.peer_stats(A).unwrap();
    assert_eq!((st.stale_dropped, st.invalid_dropped), (1, 1));
    // Correctly addressed, it is delivered.
    b.handle_message(now, A, data(0, 3, 0));
    assert_eq!(delivered(&drain(&mut b)), [p(0)]);
}

#[test]
fn a_receiver_restart_hands_back_what_was_unacknowledged() {
    let config = ReliableConfig {
        window: 3,
        ..ReliableConfig::with_size(2)
    };
    let mut a = core_with(&config, A, 0);
    let t0 = Instant::now();
    for i in 0..5 {
        a.send(t0, B, p(i));
    }
    drain(&mut a);
    a.handle_message(t0, B, ack(0, 0, 1, vec![]));
    drain(&mut a);
    // B restarts as incarnation 1 and answers a retransmission.
    a.handle_message(t0, B, ack(1, 0, 0, vec![]));
    let out = drain(&mut a);
    assert_eq!(
        events(&out),
        [ReliableEvent::PeerRestarted {
            peer: B,
            incarnation: Incarnation(1),
            unacked: vec![p(1), p(2), p(3)],
        }]
    );
    // The queued message goes to the new life, numbered afresh.
    let sent = sends(&out);
    assert_eq!(
        sent,
        [ReliableMessage::Data {
            sender_incarnation: Incarnation(0),
            receiver_incarnation: Incarnation(1),
            seq: 0,
            payload: p(4),
        }]
    );
    let st = a.peer_stats(B).unwrap();
    assert_eq!(
        (st.restarts_detected, st.unacked_reported, st.in_flight),
        (1, 3, 1)
    );
    // The old life's late acks are now stale.
    a.handle_message(t0, B, ack(0, 0, 4, vec![]));
    assert!(drain(&mut a).is_empty());
    assert_eq!(a.peer_stats(B).unwrap().stale_dropped, 1);
}

#[test]
fn a_sender_restart_resets_the_receiving_stream() {
    let mut b = core(B, 0);
    let now = Instant::now();
    for seq in [0, 1, 3] {
        b.handle_message(now, A, data(0, 0, seq));
    }
    b.send(now, A, p(100));
    drain(&mut b);
    // A's new life starts again at 0; the old buffered 3 is gone.
    b.handle_message(now, A, data(1, 0, 0));
    let out = drain(&mut b);
    assert_eq!(
        events(&out),
        [
            ReliableEvent::PeerRestarted {
                peer: A,
                incarnation: Incarnation(1),
                unacked: vec![p(100)],
            },
            ReliableEvent::Delivered {
                from: A,
                payload: p(0)
            },
        ]
    );
    assert_eq!(b.peer_stats(A).unwrap().reorder_buffered, 0);
    b.handle_message(now, A, data(1, 0, 1));
    b.handle_message(now, A, data(1, 0, 2));
    assert_eq!(delivered(&drain(&mut b)), [p(1), p(2)]);
}

#[test]
fn first_contact_with_a_restarted_peer_reports_only_what_was_sent() {
    let mut a = core(A, 0);
    let now = Instant::now();
    // Nothing sent: learning B's incarnation is no news.
    a.handle_message(now, B, data(2, 0, 0));
    let out = drain(&mut a);
    assert_eq!(delivered(&out), [p(0)]);
    assert_eq!(events(&out).len(), 1);
    // Sent before hearing: the first life of C may have taken it.
    let c = NodeId(2);
    a.send(now, c, p(7));
    drain(&mut a);
    a.handle_message(now, c, ack(1, 0, 0, vec![]));
    assert_eq!(
        events(&drain(&mut a)),
        [ReliableEvent::PeerRestarted {
            peer: c,
            incarnation: Incarnation(1),
            unacked: vec![p(7)],
        }]
    );
}

#[test]
fn nothing_is_persisted_and_recovery_starts_fresh() {
    let mut a = core(A, 5);
    assert_eq!(a.incarnation(), Incarnation(5));
    assert!(drain(&mut a).is_empty());
    a.send(Instant::now(), B, p(0));
    let out = drain(&mut a);
    assert!(!out.iter().any(|o| matches!(o, Output::Persist { .. })));
    assert_eq!(a.counters().persists, 0);
    assert_eq!(a.peers().collect::<Vec<_>>(), [B, NodeId(2)]);
}

/// Two cores over a lossy, reordering, duplicating link driven by a simple
/// deterministic generator: everything arrives, in order, exactly once,
/// and no buffer exceeds its bound.
#[test]
fn a_hostile_link_still_delivers_everything_in_order_within_bounds() {
    let config = ReliableConfig {
        window: 8,
        send_queue: 16,
        reorder_buffer: 8,
        max_sack_ranges: 3,
        ..ReliableConfig::with_size(2)
    };
    let mut a = core_with(&config, A, 0);
    let mut b = core_with(&config, B, 0);
    let mut now = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % 100
    };
    let total = 200u64;
    let mut next = 0u64;
    let mut got = Vec::new();
    let mut wire: Vec<(NodeId, ReliableMessage)> = Vec::new();
    let mut timer: Option<Instant> = None;
    for _ in 0..20_000 {
        while next < total && a.peer_stats(B).unwrap().queued < 16 {
            a.send(now, B, p(next));
            next += 1;
        }
        for o in drain(&mut a) {
            match o {
                Output::Send { msg, .. } => wire.push((B, msg)),
                Output::SetTimer { at, .. } => timer = Some(at),
                Output::CancelTimer { .. } => timer = None,
                Output::Event(e) => panic!("{e:?}"),
                Output::Persist { .. } | Output::Compact { .. } => unreachable!(),
            }
        }
        for o in drain(&mut b) {
            match o {
                Output::Send { msg, .. } => wire.push((A, msg)),
                Output::Event(ReliableEvent::Delivered { payload, .. }) => got.push(payload),
                _ => {}
            }
        }
        let sb = b.peer_stats(A).unwrap();
        let sa = a.peer_stats(B).unwrap();
        assert!(sa.in_flight <= 8 && sa.queued <= 16 && sb.reorder_buffered < 8);
        if got.len() as u64 == total && a.is_idle() {
            break;
        }
        now += MS;
        if wire.is_empty() {
            if let Some(at) = timer.take() {
                now = now.max(at);
                a.handle_timer(now, ReliableTimer::Retransmit(B));
            }
            continue;
        }
        // Take a random message off the wire (reordering); lose 20%,
        // duplicate 10%.
        let i = (rand() as usize) % wire.len();
        let (to, msg) = wire.swap_remove(i);
        let r = rand();
        if r < 20 {
            continue;
        }
        if r >= 90 {
            wire.push((to, msg.clone()));
        }
        if to == B {
            b.handle_message(now, A, msg);
        } else {
            a.handle_message(now, B, msg);
        }
    }
    assert_eq!(got, (0..total).map(p).collect::<Vec<_>>());
    let sa = a.peer_stats(B).unwrap();
    let sb = b.peer_stats(A).unwrap();
    assert!(
        sa.retransmissions > 0 && sb.duplicates_dropped > 0,
        "{sa:?} {sb:?}"
    );
}

mod hostile {
    use super::*;
    use ft_core::Wire;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Send(u64, usize),
        Message(u64, ReliableMessage),
        Timer(bool, u64),
        Wait(u64),
    }

    fn message() -> impl Strategy<Value = ReliableMessage> {
        let small = || prop_oneof![0u64..12, Just(u64::MAX - 1), Just(u64::MAX)];
        let data = (0u64..3, 0u64..3, small()).prop_map(|(s, r, seq)| ReliableMessage::Data {
            sender_incarnation: Incarnation(s),
            receiver_incarnation: Incarnation(r),
            seq,
            payload: p(seq),
        });
        let ack = (
            0u64..3,
            0u64..3,
            small(),
            proptest::collection::vec((1u64..4, 1u64..4), 0..4),
            any::<u32>(),
        )
            .prop_map(|(s, r, cumulative, steps, window)| {
                let mut selective = Vec::new();
                let mut at = cumulative;
                for (gap, len) in steps {
                    let (Some(start), Some(end)) = (at.checked_add(gap), at.checked_add(gap + len))
                    else {
                        break;
                    };
                    selective.push((start, end));
                    at = end;
                }
                ReliableMessage::Ack {
                    sender_incarnation: Incarnation(s),
                    receiver_incarnation: Incarnation(r),
                    cumulative,
                    selective,
                    window,
                }
            });
        prop_oneof![data, ack]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..4, 0usize..3).prop_map(|(to, n)| Op::Send(to, n)),
            4 => (0u64..4, message()).prop_map(|(from, m)| Op::Message(from, m)),
            1 => (any::<bool>(), 0u64..4).prop_map(|(r, peer)| Op::Timer(r, peer)),
            1 => (0u64..3000).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever arrives, in whatever order, a core never panics and
        /// never holds more than its bounds allow.
        #[test]
        fn any_sequence_of_inputs_keeps_the_core_within_bounds(
            ops in proptest::collection::vec(op(), 0..200),
            ack_delay in prop_oneof![Just(0u64), 1u64..50],
        ) {
            let config = ReliableConfig {
                window: 3,
                send_queue: 4,
                reorder_buffer: 3,
                max_sack_ranges: 2,
                ack_delay: Duration::from_millis(ack_delay),
                ..ReliableConfig::with_size(3)
            };
            let mut c = core_with(&config, A, 1);
            let mut now = Instant::now();
            let mut k = 0;
            for op in ops {
                match op {
                    Op::Send(to, n) => {
                        for _ in 0..n {
                            c.send(now, NodeId(to), p(k));
                            k += 1;
                        }
                    }
                    Op::Message(from, m) => c.handle_message(now, NodeId(from), m),
                    Op::Timer(rto, peer) => {
                        let t = if rto {
                            ReliableTimer::Retransmit(NodeId(peer))
                        } else {
                            ReliableTimer::Ack(NodeId(peer))
                        };
                        c.handle_timer(now, t);
                    }
                    Op::Wait(ms) => now += Duration::from_millis(ms),
                }
                for o in drain(&mut c) {
                    if let Output::Send { msg: ReliableMessage::Ack { selective, .. }, .. } = &o {
                        prop_assert!(selective.len() <= 2);
                    }
                    // What the core sends, its peers can decode.
                    if let Output::Send { msg, .. } = o {
                        prop_assert_eq!(ReliableMessage::from_bytes(msg.to_bytes()), Ok(msg));
                    }
                }
                for peer in [B, NodeId(2)] {
                    let st = c.peer_stats(peer).unwrap();
                    prop_assert!(st.in_flight <= 3 && st.queued <= 4 && st.reorder_buffered < 3, "{:?}", st);
                    prop_assert!(st.rto <= Duration::from_secs(60));
                }
            }
        }
    }
}

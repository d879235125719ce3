//! Transition tests of one reliable-channel core, fed by hand through
//! `ft_core`'s [`Harness`].

use super::*;
use ft_core::harness::{self, Drained, Harness};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const MS: Duration = Duration::from_millis(1);

type H = Harness<Reliable>;

fn core_with(config: &ReliableConfig, me: NodeId, incarnation: u64) -> H {
    let ctx = RecoveryContext {
        incarnation: Incarnation(incarnation),
        ..harness::context(me)
    };
    Harness::recover(config, ctx).unwrap()
}

fn core(me: NodeId, incarnation: u64) -> H {
    core_with(&ReliableConfig::with_size(3), me, incarnation)
}

/// The harness with its clock at `t`.
fn at(h: &mut H, t: Instant) -> &mut H {
    h.now = t;
    h
}

/// Sends `payload` to `to` at `t` ([`Reliable::send`], as an input).
fn send(h: &mut H, t: Instant, to: NodeId, payload: Bytes) {
    at(h, t).input(ReliableInput::Send { to, payload });
}

fn sends(out: &Drained<Reliable>) -> Vec<ReliableMessage> {
    out.sends.iter().map(|(_, m)| m.clone()).collect()
}

fn delivered(out: &Drained<Reliable>) -> Vec<Bytes> {
    out.events
        .iter()
        .filter_map(|e| match e {
            ReliableEvent::Delivered { payload, .. } => Some(payload.clone()),
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
fn the_ack(out: &Drained<Reliable>) -> (u64, Vec<(u64, u64)>, Incarnation) {
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
        at(&mut b, now).message(A, data(0, 0, seq));
        let out = b.drain();
        assert_eq!(delivered(&out), [p(seq)]);
        assert_eq!(the_ack(&out), (seq + 1, vec![], Incarnation(0)));
    }
    let st = b.core.peer_stats(A).unwrap();
    assert_eq!((st.delivered, st.acks_sent), (3, 3));
    assert_eq!(b.core.peer_incarnation(A), Some(Incarnation(0)));
}

#[test]
fn out_of_order_segments_wait_for_the_hole_then_go_in_order() {
    let mut b = core(B, 0);
    let now = Instant::now();
    for seq in [2, 3, 5] {
        at(&mut b, now).message(A, data(0, 0, seq));
        let out = b.drain();
        assert!(delivered(&out).is_empty());
    }
    at(&mut b, now).message(A, data(0, 0, 1));
    let out = b.drain();
    assert!(delivered(&out).is_empty());
    assert_eq!(the_ack(&out).1, vec![(1, 4), (5, 6)]);
    assert_eq!(b.core.peer_stats(A).unwrap().reorder_buffered, 4);
    at(&mut b, now).message(A, data(0, 0, 0));
    let out = b.drain();
    assert_eq!(delivered(&out), [p(0), p(1), p(2), p(3)]);
    assert_eq!(the_ack(&out).0, 4);
    assert_eq!(the_ack(&out).1, vec![(5, 6)]);
    at(&mut b, now).message(A, data(0, 0, 4));
    assert_eq!(delivered(&b.drain()), [p(4), p(5)]);
    let st = b.core.peer_stats(A).unwrap();
    assert_eq!((st.out_of_order_buffered, st.reorder_buffered), (4, 0));
}

#[test]
fn duplicates_are_dropped_and_acknowledged_again() {
    let mut b = core(B, 0);
    let now = Instant::now();
    at(&mut b, now).message(A, data(0, 0, 0));
    at(&mut b, now).message(A, data(0, 0, 2));
    b.drain();
    // Below the cumulative point, and already in the reorder buffer.
    at(&mut b, now).message(A, data(0, 0, 0));
    let out = b.drain();
    assert!(delivered(&out).is_empty());
    assert_eq!(the_ack(&out).0, 1);
    at(&mut b, now).message(A, data(0, 0, 2));
    let out = b.drain();
    assert!(delivered(&out).is_empty());
    assert_eq!(the_ack(&out).1, vec![(2, 3)]);
    assert_eq!(b.core.peer_stats(A).unwrap().duplicates_dropped, 2);
    assert_eq!(b.core.counters().messages_dropped, 2);
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
        at(&mut b, now).message(A, data(0, 0, seq));
    }
    let out = b.drain();
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
    at(&mut b, now).message(A, data(0, 0, 3));
    at(&mut b, now).message(A, data(0, 0, 4));
    at(&mut b, now).message(A, data(0, 0, u64::MAX - 1));
    let out = b.drain();
    assert!(delivered(&out).is_empty());
    let st = b.core.peer_stats(A).unwrap();
    assert_eq!((st.beyond_window_dropped, st.reorder_buffered), (2, 1));
    let last = sends(&out).pop().unwrap();
    assert!(matches!(last, ReliableMessage::Ack { window: 4, .. }));
    // The last sequence number is never sent, so it cannot be delivered.
    let mut b = core(B, 0);
    let mut m = data(0, 0, u64::MAX);
    if let ReliableMessage::Data { seq, .. } = &mut m {
        *seq = u64::MAX;
    }
    at(&mut b, now).message(A, m);
    assert!(delivered(&b.drain()).is_empty());
    assert_eq!(b.core.peer_stats(A).unwrap().invalid_dropped, 1);
}

#[test]
fn a_delayed_ack_covers_two_segments() {
    let config = ReliableConfig {
        ack_delay: 20 * MS,
        ..ReliableConfig::with_size(2)
    };
    let mut b = core_with(&config, B, 0);
    let now = Instant::now();
    at(&mut b, now).message(A, data(0, 0, 0));
    let out = b.drain();
    assert_eq!(delivered(&out).len(), 1);
    assert!(sends(&out).is_empty());
    assert_eq!(out.timers_set, [(ReliableTimer::Ack(A), now + 20 * MS)]);
    // The second in-order segment is acknowledged at once, with the first.
    at(&mut b, now + MS).message(A, data(0, 0, 1));
    let out = b.drain();
    assert_eq!(the_ack(&out).0, 2);
    assert!(
        out.timers_cancelled
            .iter()
            .any(|t| matches!(t, ReliableTimer::Ack(_)))
    );
    // A lone segment is acknowledged when the timer fires; a stale firing
    // does nothing.
    at(&mut b, now + 2 * MS).message(A, data(0, 0, 2));
    b.drain();
    at(&mut b, now + 3 * MS).timer(ReliableTimer::Ack(A));
    assert!(sends(&b.drain()).is_empty());
    at(&mut b, now + 22 * MS).timer(ReliableTimer::Ack(A));
    assert_eq!(the_ack(&b.drain()).0, 3);
    at(&mut b, now + 40 * MS).timer(ReliableTimer::Ack(A));
    assert!(sends(&b.drain()).is_empty());
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
        send(&mut a, now, B, p(i));
    }
    let out = a.drain();
    assert_eq!(seqs(&sends(&out)), [0, 1, 2, 3]);
    // The timer starts with the first segment, at the initial RTO.
    assert_eq!(
        out.timers_set,
        [(ReliableTimer::Retransmit(B), now + Duration::from_secs(1))]
    );
    let st = a.core.peer_stats(B).unwrap();
    assert_eq!((st.in_flight, st.queued), (4, 2));
    at(&mut a, now + 10 * MS).message(B, ack(0, 0, 2, vec![]));
    let out = a.drain();
    assert_eq!(seqs(&sends(&out)), [4, 5]);
    let st = a.core.peer_stats(B).unwrap();
    assert_eq!((st.in_flight, st.queued, st.rtt_samples), (4, 0, 1));
    assert_eq!(st.srtt, Some(10 * MS));
    at(&mut a, now + 20 * MS).message(B, ack(0, 0, 6, vec![]));
    let out = a.drain();
    assert!(a.core.is_idle());
    assert!(
        out.timers_cancelled
            .iter()
            .any(|t| matches!(t, ReliableTimer::Retransmit(_)))
    );
}

#[test]
fn the_receiver_window_lowers_the_senders() {
    let mut a = core(A, 0);
    let now = Instant::now();
    send(&mut a, now, B, p(0));
    a.drain();
    let mut m = ack(0, 0, 1, vec![]);
    if let ReliableMessage::Ack { window, .. } = &mut m {
        *window = 0; // treated as 1, or the stream could never move again
    }
    at(&mut a, now).message(B, m);
    for i in 1..4 {
        send(&mut a, now, B, p(i));
    }
    assert_eq!(seqs(&sends(&a.drain())), [1]);
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
        send(&mut a, now, B, p(i));
    }
    let out = a.drain();
    let rejected: Vec<_> = out
        .events
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
    let st = a.core.peer_stats(B).unwrap();
    assert_eq!((st.in_flight, st.queued, st.rejected), (2, 3, 3));
}

#[test]
fn sends_to_strangers_and_oversized_payloads_are_rejected() {
    let mut a = core(A, 0);
    let now = Instant::now();
    send(&mut a, now, NodeId(9), p(0));
    send(&mut a, now, A, p(0));
    send(&mut a, now, B, Bytes::from(vec![0; MAX_PAYLOAD + 1]));
    let reasons: Vec<_> = a
        .drain()
        .events
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
    at(&mut a, now).message(NodeId(9), data(0, 0, 0));
    assert!(a.drain().is_empty());
    assert_eq!(a.core.strangers_dropped(), 1);
}

#[test]
fn a_timeout_retransmits_what_is_missing_and_backs_off() {
    let mut a = core(A, 0);
    let t0 = Instant::now();
    for i in 0..3 {
        send(&mut a, t0, B, p(i));
    }
    a.drain();
    // Segment 1 arrived (SACKed, and a 10 ms sample: RTO 200 ms); 0 and 2
    // did not. No cumulative progress, so the timer keeps its first
    // setting, the initial RTO.
    at(&mut a, t0 + 10 * MS).message(B, ack(0, 0, 0, vec![(1, 2)]));
    assert!(a.drain().timers_set.is_empty());
    let mut when = t0 + Duration::from_secs(1);
    for rto in [400, 800, 1600] {
        at(&mut a, when).timer(ReliableTimer::Retransmit(B));
        let out = a.drain();
        assert_eq!(seqs(&sends(&out)), [0, 2], "at RTO {rto}");
        let next = when + rto * MS;
        assert_eq!(out.timers_set, [(ReliableTimer::Retransmit(B), next)]);
        when = next;
    }
    let st = a.core.peer_stats(B).unwrap();
    assert_eq!((st.timeouts, st.retransmissions), (3, 6));
    assert_eq!(a.core.counters().retransmissions, 6);
    assert_eq!(a.core.rtt(B).unwrap().backoff(), 3);
    assert_eq!(st.rto, 1600 * MS);
    // An early (replaced) firing does nothing.
    at(&mut a, when - MS).timer(ReliableTimer::Retransmit(B));
    assert!(a.drain().is_empty());
}

#[test]
fn a_timeout_spares_segments_sent_less_than_an_rto_ago() {
    let mut a = core(A, 0);
    let t0 = Instant::now();
    send(&mut a, t0, B, p(0));
    send(&mut a, t0, B, p(1));
    a.drain();
    // Sent 600 ms after the first two: not yet out for the 1 s RTO.
    send(&mut a, t0 + 600 * MS, B, p(2));
    a.drain();
    at(&mut a, t0 + Duration::from_secs(1)).timer(ReliableTimer::Retransmit(B));
    assert_eq!(seqs(&sends(&a.drain())), [0, 1]);
    // The oldest always goes, however recently it was sent.
    at(&mut a, t0 + Duration::from_secs(3)).timer(ReliableTimer::Retransmit(B));
    assert_eq!(seqs(&sends(&a.drain())), [0, 1, 2]);
    at(&mut a, t0 + Duration::from_secs(3)).message(B, ack(0, 0, 2, vec![]));
    a.drain();
    at(&mut a, t0 + Duration::from_secs(7)).timer(ReliableTimer::Retransmit(B));
    assert_eq!(seqs(&sends(&a.drain())), [2]);
}

#[test]
fn karn_never_samples_a_retransmitted_segment() {
    let mut a = core(A, 0);
    let t0 = Instant::now();
    send(&mut a, t0, B, p(0));
    a.drain();
    at(&mut a, t0 + Duration::from_secs(1)).timer(ReliableTimer::Retransmit(B));
    a.drain();
    at(&mut a, t0 + Duration::from_millis(1010)).message(B, ack(0, 0, 1, vec![]));
    let out = a.drain();
    let st = a.core.peer_stats(B).unwrap();
    assert_eq!((st.rtt_samples, st.srtt), (0, None));
    // The back-off stays until a clean sample.
    assert_eq!(st.rto, Duration::from_secs(2));
    assert!(out.timers_set.is_empty());
    let t1 = t0 + Duration::from_secs(3);
    send(&mut a, t1, B, p(1));
    a.drain();
    at(&mut a, t1 + 30 * MS).message(B, ack(0, 0, 2, vec![]));
    a.drain();
    let st = a.core.peer_stats(B).unwrap();
    assert_eq!((st.rtt_samples, st.srtt), (1, Some(30 * MS)));
    assert_eq!(st.rto, 200 * MS);
}

#[test]
fn three_sacked_segments_above_a_hole_trigger_one_fast_retransmit() {
    let mut a = core(A, 0);
    let t0 = Instant::now();
    for i in 0..6 {
        send(&mut a, t0, B, p(i));
    }
    a.drain();
    at(&mut a, t0 + 10 * MS).message(B, ack(0, 0, 1, vec![(2, 4)]));
    assert!(seqs(&sends(&a.drain())).is_empty());
    at(&mut a, t0 + 11 * MS).message(B, ack(0, 0, 1, vec![(2, 5)]));
    assert_eq!(seqs(&sends(&a.drain())), [1]);
    // Not again on the next ack: the timer covers a second loss.
    at(&mut a, t0 + 12 * MS).message(B, ack(0, 0, 1, vec![(2, 6)]));
    assert!(seqs(&sends(&a.drain())).is_empty());
    let st = a.core.peer_stats(B).unwrap();
    assert_eq!((st.fast_retransmissions, st.retransmissions), (1, 1));
    // SACKed segments are not resent by the timer.
    at(&mut a, t0 + Duration::from_secs(2)).timer(ReliableTimer::Retransmit(B));
    assert_eq!(seqs(&sends(&a.drain())), [1]);
}

#[test]
fn acks_of_segments_never_sent_are_invalid() {
    let mut a = core(A, 0);
    let now = Instant::now();
    send(&mut a, now, B, p(0));
    a.drain();
    at(&mut a, now).message(B, ack(0, 0, 5, vec![]));
    at(&mut a, now).message(B, ack(0, 0, 0, vec![(1, 9)]));
    a.drain();
    let st = a.core.peer_stats(B).unwrap();
    assert_eq!((st.invalid_dropped, st.in_flight), (2, 1));
}

// ---- incarnations ----

#[test]
fn messages_of_an_older_life_are_dropped() {
    let mut b = core(B, 0);
    let now = Instant::now();
    at(&mut b, now).message(A, data(2, 0, 0));
    assert_eq!(delivered(&b.drain()).len(), 1);
    at(&mut b, now).message(A, data(1, 0, 1));
    at(&mut b, now).message(A, ack(1, 0, 0, vec![]));
    assert!(b.drain().is_empty());
    assert_eq!(b.core.peer_stats(A).unwrap().stale_dropped, 2);
    assert_eq!(b.core.peer_incarnation(A), Some(Incarnation(2)));
}

#[test]
fn data_for_an_earlier_life_is_dropped_and_answered_with_the_current_incarnation() {
    let mut b = core(B, 3);
    let now = Instant::now();
    at(&mut b, now).message(A, data(0, 2, 0));
    let out = b.drain();
    assert!(delivered(&out).is_empty());
    assert_eq!(the_ack(&out), (0, vec![], Incarnation(3)));
    // Addressed to a life this node has not had yet: dropped silently.
    at(&mut b, now).message(A, data(0, 4, 0));
    assert!(b.drain().is_empty());
    let st = b.core.peer_stats(A).unwrap();
    assert_eq!((st.stale_dropped, st.invalid_dropped), (1, 1));
    // Correctly addressed, it is delivered.
    at(&mut b, now).message(A, data(0, 3, 0));
    assert_eq!(delivered(&b.drain()), [p(0)]);
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
        send(&mut a, t0, B, p(i));
    }
    a.drain();
    at(&mut a, t0).message(B, ack(0, 0, 1, vec![]));
    a.drain();
    // B restarts as incarnation 1 and answers a retransmission.
    at(&mut a, t0).message(B, ack(1, 0, 0, vec![]));
    let out = a.drain();
    assert_eq!(
        out.events,
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
    let st = a.core.peer_stats(B).unwrap();
    assert_eq!(
        (st.restarts_detected, st.unacked_reported, st.in_flight),
        (1, 3, 1)
    );
    // The old life's late acks are now stale.
    at(&mut a, t0).message(B, ack(0, 0, 4, vec![]));
    assert!(a.drain().is_empty());
    assert_eq!(a.core.peer_stats(B).unwrap().stale_dropped, 1);
}

#[test]
fn a_sender_restart_resets_the_receiving_stream() {
    let mut b = core(B, 0);
    let now = Instant::now();
    for seq in [0, 1, 3] {
        at(&mut b, now).message(A, data(0, 0, seq));
    }
    send(&mut b, now, A, p(100));
    b.drain();
    // A's new life starts again at 0; the old buffered 3 is gone.
    at(&mut b, now).message(A, data(1, 0, 0));
    let out = b.drain();
    assert_eq!(
        out.events,
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
    assert_eq!(b.core.peer_stats(A).unwrap().reorder_buffered, 0);
    at(&mut b, now).message(A, data(1, 0, 1));
    at(&mut b, now).message(A, data(1, 0, 2));
    assert_eq!(delivered(&b.drain()), [p(1), p(2)]);
}

#[test]
fn first_contact_with_a_restarted_peer_reports_only_what_was_sent() {
    let mut a = core(A, 0);
    let now = Instant::now();
    // Nothing sent: learning B's incarnation is no news.
    at(&mut a, now).message(B, data(2, 0, 0));
    let out = a.drain();
    assert_eq!(delivered(&out), [p(0)]);
    assert_eq!(out.events.len(), 1);
    // Sent before hearing: the first life of C may have taken it.
    let c = NodeId(2);
    send(&mut a, now, c, p(7));
    a.drain();
    at(&mut a, now).message(c, ack(1, 0, 0, vec![]));
    assert_eq!(
        a.drain().events,
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
    assert_eq!(a.core.incarnation(), Incarnation(5));
    assert!(a.drain().is_empty());
    send(&mut a, Instant::now(), B, p(0));
    let out = a.drain();
    assert!(out.persists.is_empty());
    assert_eq!(a.core.counters().persists, 0);
    assert_eq!(a.core.peers().collect::<Vec<_>>(), [B, NodeId(2)]);
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
        while next < total && a.core.peer_stats(B).unwrap().queued < 16 {
            send(&mut a, now, B, p(next));
            next += 1;
        }
        for o in a.take() {
            match o {
                Output::Send { msg, .. } => wire.push((B, msg)),
                Output::SetTimer { at, .. } => timer = Some(at),
                Output::CancelTimer { .. } => timer = None,
                Output::Event(e) => panic!("{e:?}"),
                Output::Multicast { .. } | Output::Persist { .. } | Output::Compact { .. } => {
                    unreachable!()
                }
            }
        }
        for o in b.take() {
            match o {
                Output::Send { msg, .. } => wire.push((A, msg)),
                Output::Event(ReliableEvent::Delivered { payload, .. }) => got.push(payload),
                _ => {}
            }
        }
        let sb = b.core.peer_stats(A).unwrap();
        let sa = a.core.peer_stats(B).unwrap();
        assert!(sa.in_flight <= 8 && sa.queued <= 16 && sb.reorder_buffered < 8);
        if got.len() as u64 == total && a.core.is_idle() {
            break;
        }
        now += MS;
        if wire.is_empty() {
            if let Some(due) = timer.take() {
                now = now.max(due);
                at(&mut a, now).timer(ReliableTimer::Retransmit(B));
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
            at(&mut b, now).message(A, msg);
        } else {
            at(&mut a, now).message(B, msg);
        }
    }
    assert_eq!(got, (0..total).map(p).collect::<Vec<_>>());
    let sa = a.core.peer_stats(B).unwrap();
    let sb = b.core.peer_stats(A).unwrap();
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
                            send(&mut c, now, NodeId(to), p(k));
                            k += 1;
                        }
                    }
                    Op::Message(from, m) => {
                        at(&mut c, now).message(NodeId(from), m);
                    }
                    Op::Timer(rto, peer) => {
                        let t = if rto {
                            ReliableTimer::Retransmit(NodeId(peer))
                        } else {
                            ReliableTimer::Ack(NodeId(peer))
                        };
                        at(&mut c, now).timer(t);
                    }
                    Op::Wait(ms) => now += Duration::from_millis(ms),
                }
                for o in c.take() {
                    if let Output::Send { msg: ReliableMessage::Ack { selective, .. }, .. } = &o {
                        prop_assert!(selective.len() <= 2);
                    }
                    // What the core sends, its peers can decode.
                    if let Output::Send { msg, .. } = o {
                        prop_assert_eq!(ReliableMessage::from_bytes(msg.to_bytes()), Ok(msg));
                    }
                }
                for peer in [B, NodeId(2)] {
                    let st = c.core.peer_stats(peer).unwrap();
                    prop_assert!(st.in_flight <= 3 && st.queued <= 4 && st.reorder_buffered < 3, "{:?}", st);
                    prop_assert!(st.rto <= Duration::from_secs(60));
                }
            }
        }
    }
}

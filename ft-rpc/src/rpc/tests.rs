//! Transition tests of one RPC core, fed by hand through `ft_core`'s
//! [`Harness`].

use super::*;
use ft_core::harness::{self, Harness};

const MS: Duration = Duration::from_millis(1);

type H = Harness<Rpc>;

fn peers() -> RpcConfig {
    RpcConfig::new(vec![NodeId(0), NodeId(1), NodeId(2)])
}

/// A first life of node `me`, what it did at start drained.
fn node(me: u64) -> H {
    node_with(&peers(), me)
}

fn node_with(config: &RpcConfig, me: u64) -> H {
    let mut h = Harness::new(config, NodeId(me));
    h.drain();
    h
}

/// Node `me` in life `incarnation`, rebuilt from `records`.
fn restarted(me: u64, incarnation: u64, records: Vec<Bytes>) -> H {
    let ctx = RecoveryContext {
        incarnation: Incarnation(incarnation),
        records,
        ..harness::context(NodeId(me))
    };
    let mut h = Harness::recover(&peers(), ctx).expect("the records read");
    h.drain();
    h
}

fn call_input(h: &H, token: u64, semantics: Semantics) -> RpcInput {
    RpcInput::Call {
        token,
        server: NodeId(0),
        request: Bytes::from_static(b"hi"),
        options: CallOptions {
            semantics,
            deadline: h.now + 1000 * MS,
        },
    }
}

/// The last message sent.
fn last_sent(h: &mut H) -> RpcMessage {
    h.drain().sends.pop().expect("a message was sent").1
}

/// Client n1 bound to server n0 (life `server_inc`), with call 1 (token 7)
/// sent.
fn bound_call(semantics: Semantics, server_inc: u64) -> (H, RpcMessage) {
    bound_call_with(&peers(), semantics, server_inc)
}

fn bound_call_with(config: &RpcConfig, semantics: Semantics, server_inc: u64) -> (H, RpcMessage) {
    let mut c = node_with(config, 1);
    let input = call_input(&c, 7, semantics);
    let RpcMessage::Locate { nonce } = last_sent(c.input(input)) else {
        panic!("binds first")
    };
    let located = RpcMessage::Located {
        nonce,
        server_incarnation: Incarnation(server_inc),
    };
    let msg = last_sent(c.message(NodeId(0), located));
    assert!(matches!(msg, RpcMessage::Call { .. }));
    (c, msg)
}

fn returned(token: u64, result: Result<Bytes, RpcError>) -> Vec<RpcEvent> {
    vec![RpcEvent::Returned { token, result }]
}

fn reply(id: CallId, server_incarnation: u64, outcome: Outcome) -> RpcMessage {
    RpcMessage::Reply {
        id,
        server_incarnation: Incarnation(server_incarnation),
        outcome,
    }
}

fn id_of(msg: &RpcMessage) -> CallId {
    match msg {
        RpcMessage::Call { id, .. } => *id,
        other => panic!("not a call: {other:?}"),
    }
}

/// The outcome the server answered with last.
fn outcome(h: &mut H) -> Outcome {
    match h.drain().sends.pop() {
        Some((_, RpcMessage::Reply { outcome, .. })) => outcome,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Completes `exec` with `reply` and makes its record durable; what the
/// server does then waits in the harness.
fn complete_durably(s: &mut H, exec: CallId, reply: Bytes) {
    s.input(RpcInput::Complete {
        exec,
        reply,
        effect: None,
    });
    assert_eq!(
        s.complete_persists(),
        1,
        "the completion record is persisted"
    );
}

/// Hands `msg` from n1 to the server, which must execute it.
fn execute(s: &mut H, msg: RpcMessage) -> CallId {
    match s.message(NodeId(1), msg).drain().events.pop() {
        Some(RpcEvent::Execute { id, .. }) => id,
        other => panic!("expected an execution, got {other:?}"),
    }
}

/// A hand-made call from n1's life `life`, call `seq`, with `body`.
fn raw_call(semantics: Semantics, life: u64, seq: u64, body: &'static [u8]) -> RpcMessage {
    RpcMessage::Call {
        id: CallId {
            client: NodeId(1),
            client_incarnation: Incarnation(life),
            seq,
        },
        server_incarnation: Incarnation(0),
        semantics,
        first_incomplete: 0,
        budget_ms: 5000,
        fingerprint: fingerprint(semantics, body),
        body: Chunk::whole(Bytes::from_static(body)),
    }
}

#[test]
fn a_call_binds_then_retransmits_then_times_out() {
    let (mut c, _) = bound_call(Semantics::AtMostOnce, 0);
    let out = c.advance(30 * MS).timer(RpcTimer::Retry(1)).drain();
    assert!(matches!(out.sends[0].1, RpcMessage::Call { .. }));
    assert_eq!(c.core.client_stats().retransmissions, 1);
    let out = c.advance(970 * MS).timer(RpcTimer::Deadline(1)).drain();
    let timed_out = RpcError::TimedOut {
        attempts: 2,
        executed: Executed::Unknown,
    };
    assert_eq!(out.events, returned(7, Err(timed_out)));
    assert_eq!(c.core.pending(), 0);
}

#[test]
fn an_unanswered_locate_is_cannot_locate_server() {
    let mut c = node(1);
    let input = call_input(&c, 7, Semantics::AtMostOnce);
    c.input(input).drain();
    let out = c.advance(1000 * MS).timer(RpcTimer::Deadline(1)).drain();
    let error = RpcError::CannotLocateServer { server: NodeId(0) };
    assert_eq!(out.events, returned(7, Err(error)));
}

/// Under no loss, a call and its answer count exactly the messages that
/// went out and came in, on both sides, and no retransmission.
#[test]
fn a_call_under_no_loss_counts_exactly_the_messages_sent() {
    for semantics in [
        Semantics::AtLeastOnce,
        Semantics::AtMostOnce,
        Semantics::ExactlyOnce,
    ] {
        let (mut c, mut s) = (node(1), node(0));
        let input = call_input(&c, 7, semantics);
        let mut to_server = c.input(input).drain().sends;
        let (mut sent, mut received) = ([to_server.len() as u64, 0], [0u64, 0]);
        let mut answered = false;
        while let Some((_, msg)) = to_server.pop() {
            received[1] += 1;
            let mut out = s.message(NodeId(1), msg).drain();
            for e in &out.events {
                if let RpcEvent::Execute { id, request, .. } = e {
                    s.input(RpcInput::Complete {
                        exec: *id,
                        reply: request.clone(),
                        effect: None,
                    });
                    s.complete_persists();
                }
            }
            out.sends.extend(s.drain().sends);
            sent[1] += out.sends.len() as u64;
            for (to, msg) in out.sends {
                assert_eq!(to, NodeId(1));
                received[0] += 1;
                let back = c.message(NodeId(0), msg).drain();
                sent[0] += back.sends.len() as u64;
                to_server.extend(back.sends);
                answered |= back.events == returned(7, Ok(Bytes::from_static(b"hi")));
            }
        }
        assert!(answered, "{semantics:?}");
        for (i, h) in [&c, &s].into_iter().enumerate() {
            let counters = h.core.counters();
            assert_eq!(counters.messages_sent, sent[i], "{semantics:?}, node {i}");
            assert_eq!(counters.messages_received, received[i], "{semantics:?}");
            assert_eq!(counters.messages_dropped, 0, "{semantics:?}");
            assert_eq!(counters.retransmissions, 0, "{semantics:?}");
        }
        assert_eq!(sent, [2, 2], "locate and call; located and reply");
        let persists = u64::from(semantics == Semantics::ExactlyOnce);
        assert_eq!(s.core.counters().persists, persists);
    }
}

#[test]
fn the_server_executes_once_answers_duplicates_and_rejects_the_stale() {
    let (_, msg) = bound_call(Semantics::AtMostOnce, 0);
    let mut s = node(0);
    let id = execute(&mut s, msg.clone());
    // A duplicate while it runs: in progress, not a second execution.
    let out = s.message(NodeId(1), msg.clone()).drain();
    assert!(out.events.is_empty());
    assert!(matches!(
        &out.sends[0].1,
        RpcMessage::Reply {
            outcome: Outcome::InProgress,
            ..
        }
    ));
    s.input(RpcInput::Complete {
        exec: id,
        reply: Bytes::from_static(b"ok"),
        effect: None,
    })
    .drain();
    // The reply was lost: the retransmission is answered from the record.
    let out = s.message(NodeId(1), msg.clone()).drain();
    assert!(out.events.is_empty());
    assert!(matches!(
        &out.sends[0].1,
        RpcMessage::Reply { outcome: Outcome::Done(b), .. } if b == &Bytes::from_static(b"ok")
    ));
    assert_eq!(s.core.server_stats().executions, 1);
    assert_eq!(s.core.server_stats().replies_from_records, 1);
    // The client restarts (life 1): its old call is now stale.
    let RpcMessage::Call {
        id,
        server_incarnation,
        semantics,
        first_incomplete,
        budget_ms,
        fingerprint,
        body,
    } = msg.clone()
    else {
        unreachable!()
    };
    let newer = RpcMessage::Call {
        id: CallId {
            client_incarnation: Incarnation(1),
            ..id
        },
        server_incarnation,
        semantics,
        first_incomplete,
        budget_ms,
        fingerprint,
        body,
    };
    s.message(NodeId(1), newer).drain();
    assert_eq!(outcome(s.message(NodeId(1), msg)), Outcome::Stale);
    assert_eq!(s.core.server_stats().stale_rejected, 1);
}

#[test]
fn exactly_once_persists_the_record_before_replying_and_a_restart_answers_from_it() {
    let (_, msg) = bound_call(Semantics::ExactlyOnce, 0);
    let mut s = node(0);
    let id = execute(&mut s, msg.clone());
    let out = s
        .input(RpcInput::Complete {
            exec: id,
            reply: Bytes::from_static(b"ok"),
            effect: None,
        })
        .drain();
    assert!(
        out.sends.is_empty(),
        "no reply before the record is durable"
    );
    let (token, record) = out.persists[0].clone();
    assert_eq!(s.persisted(token).drain().sends.len(), 1);

    // A restarted server answers the retransmission from the record.
    let mut s2 = restarted(0, 1, vec![record]);
    assert_eq!(s2.core.server_stats().records_restored, 1);
    let out = s2.message(NodeId(1), msg).drain();
    assert!(out.events.is_empty(), "never re-executed");
    assert!(matches!(
        &out.sends[0].1,
        RpcMessage::Reply {
            outcome: Outcome::Done(_),
            server_incarnation: Incarnation(1),
            ..
        }
    ));
}

/// A record that does not decode fails the recovery: it is never skipped.
#[test]
fn a_record_that_does_not_decode_fails_the_recovery() {
    let (_, msg) = bound_call(Semantics::ExactlyOnce, 0);
    let mut s = node(0);
    let id = execute(&mut s, msg);
    s.input(RpcInput::Complete {
        exec: id,
        reply: Bytes::from_static(b"ok"),
        effect: None,
    });
    let good = s.drain().persists.remove(0).1;
    let bad = good.slice(..good.len() - 1);
    let ctx = RecoveryContext {
        incarnation: Incarnation(1),
        records: vec![good, bad],
        ..harness::context(NodeId(0))
    };
    let err = Harness::<Rpc>::recover(&peers(), ctx).unwrap_err();
    assert!(
        matches!(err, RecoveryError::Record { index: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn an_at_most_once_call_caught_in_a_server_crash_is_reported_with_what_is_known() {
    let (mut c, msg) = bound_call(Semantics::AtMostOnce, 0);
    let id = id_of(&msg);
    c.message(NodeId(0), reply(id, 0, Outcome::InProgress));
    let out = c.message(NodeId(0), reply(id, 1, Outcome::Stale)).drain();
    let crashed = RpcError::ServerCrashed {
        incarnation: Incarnation(1),
        executed: Executed::Yes,
    };
    assert_eq!(out.events, returned(7, Err(crashed)));
    assert_eq!(c.core.client_stats().server_restarts_seen, 1);
}

#[test]
fn cancelling_a_call_tells_the_server_which_stops_the_computation() {
    let (mut c, msg) = bound_call(Semantics::AtMostOnce, 0);
    let mut s = node(0);
    execute(&mut s, msg);
    let mut out = c.input(RpcInput::Cancel { token: 7 }).drain();
    let cancelled = RpcError::Cancelled {
        executed: Executed::Unknown,
    };
    assert_eq!(out.events, returned(7, Err(cancelled)));
    let (_, cancel) = out.sends.pop().unwrap();
    let ev = s.message(NodeId(1), cancel).drain().events;
    assert!(matches!(
        ev[0],
        RpcEvent::Cancel {
            reason: CancelReason::CallerCancelled,
            ..
        }
    ));
    assert_eq!(s.core.running(), 0);
}

#[test]
fn retransmissions_stop_when_the_budget_runs_out() {
    // gRPC's bucket alone: no refill with time, no probes.
    let mut config = peers();
    config.budget.refill_per_sec = 0.0;
    config.budget.probe_every = None;
    let (mut c, _) = bound_call_with(&config, Semantics::AtLeastOnce, 0);
    for _ in 0..200 {
        c.advance(10 * MS).timer(RpcTimer::Retry(1)).drain();
    }
    let st = c.core.client_stats();
    assert_eq!(
        st.retransmissions, 49,
        "100 tokens, retries while more than 50"
    );
    assert_eq!(st.throttled, 151);
    assert_eq!(c.core.counters().retransmissions, 49);
}

#[test]
fn bad_calls_are_refused_up_front() {
    let mut c = node(1);
    let deadline = c.now + MS;
    let call = |token, server, request| RpcInput::Call {
        token,
        server,
        request,
        options: CallOptions {
            semantics: Semantics::AtMostOnce,
            deadline,
        },
    };
    let too_large = Bytes::from(vec![0; peers().max_body + 1]);
    c.input(call(1, NodeId(9), Bytes::new()));
    let ev = c.input(call(2, NodeId(0), too_large)).drain().events;
    assert!(matches!(
        ev[0],
        RpcEvent::Returned {
            token: 1,
            result: Err(RpcError::CannotLocateServer { .. })
        }
    ));
    assert!(matches!(
        ev[1],
        RpcEvent::Returned {
            token: 2,
            result: Err(RpcError::Refused(Refusal::RequestTooLarge { .. }))
        }
    ));
    assert_eq!(c.core.pending(), 0);
}

/// A client life that reuses another's identity (same node, same
/// incarnation, same sequence numbers) never gets the other's replies: the
/// server compares the request with the recorded call's.
#[test]
fn a_different_request_under_a_recorded_identity_is_a_mismatch_never_another_reply() {
    for semantics in [Semantics::AtMostOnce, Semantics::ExactlyOnce] {
        let mut s = node(0);
        let id = execute(&mut s, raw_call(semantics, 0, 1, b"first life"));
        // While it runs, and after it completed.
        let second = raw_call(semantics, 0, 1, b"second life");
        assert_eq!(
            outcome(s.message(NodeId(1), second.clone())),
            Outcome::Mismatch
        );
        s.input(RpcInput::Complete {
            exec: id,
            reply: Bytes::from_static(b"first life's reply"),
            effect: None,
        });
        s.complete_persists();
        let record = s.drain().persists.pop().map(|(_, r)| r);
        assert_eq!(
            outcome(s.message(NodeId(1), second.clone())),
            Outcome::Mismatch,
            "{semantics:?}"
        );
        assert_eq!(s.core.server_stats().mismatches, 2);
        assert_eq!(s.core.server_stats().executions, 1);
        // The same request is still answered from its record.
        let first = raw_call(semantics, 0, 1, b"first life");
        assert_eq!(
            outcome(s.message(NodeId(1), first)),
            Outcome::Done(Bytes::from_static(b"first life's reply"))
        );
        // Exactly-once: a restarted server knows the fingerprint from the
        // durable record.
        if let Some(record) = record {
            let mut s2 = restarted(0, 1, vec![record]);
            assert_eq!(outcome(s2.message(NodeId(1), second)), Outcome::Mismatch);
        }
    }
    // The client reports it as a call that did not run.
    assert_eq!(RpcError::Mismatch.executed(), Executed::No);
}

/// A reply over the limit is reported as executed, never as a refusal;
/// a failed handler likewise, and both are recorded (a duplicate does not
/// run the call again).
#[test]
fn a_reply_too_large_and_a_failed_handler_say_the_call_executed() {
    let mut config = peers();
    config.max_body = 100;
    let mut s = node_with(&config, 0);
    let id = execute(&mut s, raw_call(Semantics::AtMostOnce, 0, 1, b"a"));
    s.input(RpcInput::Complete {
        exec: id,
        reply: Bytes::from(vec![1; 101]),
        effect: None,
    });
    let too_large = Outcome::ReplyTooLarge {
        len: 101,
        limit: 100,
    };
    assert_eq!(outcome(&mut s), too_large);
    let id2 = execute(&mut s, raw_call(Semantics::AtMostOnce, 0, 2, b"b"));
    assert_eq!(
        outcome(s.input(RpcInput::Fail { exec: id2 })),
        Outcome::Failed
    );
    // Duplicates: answered from the records, not run again.
    let again = raw_call(Semantics::AtMostOnce, 0, 2, b"b");
    assert_eq!(outcome(s.message(NodeId(1), again)), Outcome::Failed);
    assert_eq!(s.core.server_stats().executions, 2);
    assert_eq!(s.core.server_stats().handler_failures, 1);
    assert_eq!(s.core.server_stats().replies_too_large, 1);
    // The client's side of both.
    let (mut c, msg) = bound_call(Semantics::AtMostOnce, 0);
    let too_large = reply(id_of(&msg), 0, Outcome::ReplyTooLarge { len: 9, limit: 8 });
    let ev = c.message(NodeId(0), too_large).drain().events;
    let RpcEvent::Returned { result: Err(e), .. } = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(e.executed(), Executed::Yes);
    assert_eq!(RpcError::HandlerFailed.executed(), Executed::Yes);
}

/// Drives messages between two cores until nothing is sent, dropping the
/// messages `lose` says to.
fn exchange(a: &mut H, b: &mut H, lose: impl FnMut(&RpcMessage) -> bool) -> Vec<RpcEvent> {
    let ids = (a.core.id(), b.core.id());
    crate::testing::exchange(a, b, ids, lose)
}

/// A request and a reply of megabytes travel in parts; parts lost on the
/// way are sent again with the next retransmission, and the receiver keeps
/// what it has, so the call completes.
#[test]
fn large_requests_and_replies_travel_in_parts_through_loss() {
    let (mut c, mut s) = (node(1), node(0));
    let request = Bytes::from(
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let deadline = c.now + 60_000 * MS;
    c.input(RpcInput::Call {
        token: 1,
        server: NodeId(0),
        request: request.clone(),
        options: CallOptions {
            semantics: Semantics::ExactlyOnce,
            deadline,
        },
    });
    // Every third message is lost.
    let mut n = 0;
    let mut lossy = |_: &RpcMessage| {
        n += 1;
        n % 3 == 0
    };
    let mut executed = None;
    for _ in 0..20 {
        for e in exchange(&mut c, &mut s, &mut lossy) {
            if let RpcEvent::Execute { id, request: r, .. } = e {
                assert_eq!(r, request, "the request arrived whole");
                executed = Some(id);
            }
        }
        if executed.is_some() {
            break;
        }
        c.advance(2000 * MS).timer(RpcTimer::Retry(1));
    }
    let id = executed.expect("the request was put together");
    // A reply of 2 MB.
    let reply = Bytes::from(vec![7u8; 2_000_000]);
    complete_durably(&mut s, id, reply.clone());
    let mut answered = None;
    for _ in 0..20 {
        for e in exchange(&mut c, &mut s, &mut lossy) {
            if let RpcEvent::Returned { result, .. } = e {
                answered = Some(result);
            }
        }
        if answered.is_some() {
            break;
        }
        c.advance(2000 * MS).timer(RpcTimer::Retry(1));
    }
    assert_eq!(answered, Some(Ok(reply)));
    assert_eq!(s.core.server_stats().executions, 1);
    assert!(c.core.client_stats().replies_reassembled == 1);
    // Every part sent again is one retransmission of the core's.
    assert!(c.core.counters().retransmissions > c.core.client_stats().retransmissions);
}

/// A slow call overtaken by many fast ones, with a small record bound: the
/// stale mark never passes the running call, so its retransmission is
/// answered "in progress" and it completes; and the records forgotten over
/// the bound are never run again.
#[test]
fn the_stale_mark_never_passes_a_running_call() {
    let mut config = peers();
    config.records_per_client = 4;
    let mut s = node_with(&config, 0);
    let slow = execute(&mut s, raw_call(Semantics::ExactlyOnce, 0, 1, b"slow"));
    for seq in 2..40 {
        let mut msg = raw_call(Semantics::ExactlyOnce, 0, seq, b"fast");
        if let RpcMessage::Call {
            first_incomplete, ..
        } = &mut msg
        {
            // The client has the replies of everything but the slow call.
            *first_incomplete = 1;
        }
        let id = execute(&mut s, msg);
        complete_durably(&mut s, id, Bytes::from_static(b"done"));
        s.drain();
    }
    assert!(s.core.server_stats().records_evicted > 30);
    let slow_again = raw_call(Semantics::ExactlyOnce, 0, 1, b"slow");
    assert_eq!(
        outcome(s.message(NodeId(1), slow_again)),
        Outcome::InProgress
    );
    // An evicted call's duplicate is stale (forgotten), never run again.
    let evicted = raw_call(Semantics::ExactlyOnce, 0, 5, b"fast");
    assert_eq!(outcome(s.message(NodeId(1), evicted)), Outcome::Stale);
    assert_eq!(s.core.server_stats().executions, 39);
    // The slow call completes and is answered.
    complete_durably(&mut s, slow, Bytes::from_static(b"slow done"));
    assert_eq!(
        outcome(&mut s),
        Outcome::Done(Bytes::from_static(b"slow done"))
    );
}

/// When a client's lease runs out, its at-most-once records go, but their
/// calls are tombstoned (never run again); exactly-once records stay, so a
/// lost reply is still answered.
#[test]
fn a_lapsed_lease_tombstones_at_most_once_calls_and_keeps_exactly_once_records() {
    let mut config = peers();
    config.lease = 100 * MS;
    let mut s = node_with(&config, 0);
    for (seq, semantics) in [(1, Semantics::AtMostOnce), (2, Semantics::ExactlyOnce)] {
        let id = execute(&mut s, raw_call(semantics, 0, seq, b"x"));
        s.input(RpcInput::Complete {
            exec: id,
            reply: Bytes::from_static(b"r"),
            effect: None,
        });
        s.complete_persists();
        s.drain();
    }
    s.advance(200 * MS).timer(RpcTimer::Leases).drain();
    assert_eq!(s.core.server_stats().leases_expired, 1);
    let amo = raw_call(Semantics::AtMostOnce, 0, 1, b"x");
    assert_eq!(
        outcome(s.message(NodeId(1), amo)),
        Outcome::Stale,
        "tombstoned"
    );
    let eo = raw_call(Semantics::ExactlyOnce, 0, 2, b"x");
    assert_eq!(
        outcome(s.message(NodeId(1), eo)),
        Outcome::Done(Bytes::from_static(b"r")),
        "answered from the record"
    );
    assert_eq!(s.core.server_stats().executions, 2);
    // And the client says "forgotten", never "refused".
    let (mut c, msg) = bound_call(Semantics::AtMostOnce, 0);
    let out = c
        .message(NodeId(0), reply(id_of(&msg), 0, Outcome::Stale))
        .drain();
    let forgotten = RpcError::Forgotten {
        executed: Executed::Unknown,
    };
    assert_eq!(out.events, returned(7, Err(forgotten)));
}

/// A call whose retransmissions are throttled still sends one probe per
/// `probe_every`, so it goes on trying until its deadline.
#[test]
fn a_throttled_call_still_probes_until_its_deadline() {
    let mut config = peers();
    config.budget.refill_per_sec = 0.0;
    let (mut c, _) = bound_call_with(&config, Semantics::AtLeastOnce, 0);
    let mut sent_at = Vec::new();
    for _ in 0..1000 {
        if !c
            .advance(10 * MS)
            .timer(RpcTimer::Retry(1))
            .drain()
            .sends
            .is_empty()
        {
            sent_at.push(c.now);
        }
    }
    let st = c.core.client_stats();
    assert!(st.throttled > 0);
    assert!(st.probes >= 8, "{st:?}");
    // Once throttled, sends are at least a probe interval apart.
    let late: Vec<_> = sent_at.windows(2).skip(60).map(|w| w[1] - w[0]).collect();
    assert!(
        late.iter().all(|d| *d >= Duration::from_secs(1)),
        "{late:?}"
    );
}

/// An exactly-once server snapshots what it still needs and compacts its
/// log behind it; a server rebuilt from the compacted log, and one rebuilt
/// from the whole log, answer an acknowledged call's late duplicate as
/// forgotten and a live one from its record, and never run either again.
#[test]
fn a_snapshot_compacts_the_log_and_both_logs_recover_the_same() {
    let mut config = peers();
    config.compaction = Some(Compaction {
        multiple: 2,
        min_records: 8,
    });
    let mut s = node_with(&config, 0);
    let mut log: Vec<(PersistToken, Bytes)> = Vec::new();
    let mut compacted_before = None;
    for seq in 1..=20 {
        let mut msg = raw_call(Semantics::ExactlyOnce, 0, seq, b"x");
        if let RpcMessage::Call {
            first_incomplete, ..
        } = &mut msg
        {
            // The client has every reply before this call.
            *first_incomplete = seq;
        }
        let id = execute(&mut s, msg);
        s.input(RpcInput::Complete {
            exec: id,
            reply: Bytes::from_static(b"r"),
            effect: None,
        });
        s.complete_persists();
        let out = s.drain();
        log.extend(out.persists);
        if let Some(&before) = out.compactions.last() {
            compacted_before = Some(before);
        }
    }
    let stats = s.core.log_stats();
    assert!(stats.snapshots >= 1 && stats.compactions >= 1, "{stats:?}");
    assert_eq!(s.core.counters().compactions, stats.compactions);
    let before = compacted_before.expect("a compaction was asked for");
    let whole: Vec<Bytes> = log.iter().map(|(_, r)| r.clone()).collect();
    let compacted: Vec<Bytes> = log
        .iter()
        .filter(|(t, _)| *t >= before)
        .map(|(_, r)| r.clone())
        .collect();
    assert!(compacted.len() < whole.len());
    assert_eq!(
        DurableRecords::read(&whole).unwrap(),
        DurableRecords::read(&compacted).unwrap()
    );
    for records in [whole, compacted] {
        let mut s2 = restarted(0, 1, records);
        // Call 3 was acknowledged (call 4 said so) before the snapshot.
        let old = raw_call(Semantics::ExactlyOnce, 0, 3, b"x");
        assert_eq!(outcome(s2.message(NodeId(1), old)), Outcome::Stale);
        // Call 20 was not: answered from its record.
        let live = raw_call(Semantics::ExactlyOnce, 0, 20, b"x");
        assert_eq!(
            outcome(s2.message(NodeId(1), live)),
            Outcome::Done(Bytes::from_static(b"r"))
        );
        assert_eq!(s2.core.server_stats().executions, 0);
    }
}

/// A request of two parts whose whole is not what the call's fingerprint
/// says (parts of another request under the same id and fingerprint): the
/// server never runs it; the honest request of the same shape runs.
#[test]
fn a_request_reassembled_from_parts_runs_only_if_it_matches_its_fingerprint() {
    let mut s = node(0);
    let good: Vec<u8> = (0..MAX_PART + 10).map(|i| (i % 251) as u8).collect();
    let mut forged = good.clone();
    forged[MAX_PART + 3] ^= 0x55;
    let part = |seq: u64, body: &[u8], offset: usize, end: usize| RpcMessage::Call {
        id: CallId {
            client: NodeId(1),
            client_incarnation: Incarnation(1),
            seq,
        },
        server_incarnation: Incarnation(0),
        semantics: Semantics::AtMostOnce,
        first_incomplete: 0,
        budget_ms: 5000,
        // The honest body's fingerprint, whatever the parts hold.
        fingerprint: fingerprint(Semantics::AtMostOnce, &good),
        body: Chunk {
            total_len: body.len() as u32,
            offset: offset as u32,
            bytes: Bytes::copy_from_slice(&body[offset..end]),
        },
    };
    let n = good.len();
    s.message(NodeId(1), part(1, &forged, 0, MAX_PART));
    s.message(NodeId(1), part(1, &forged, MAX_PART, n));
    let out = s.drain();
    assert!(
        !out.events
            .iter()
            .any(|e| matches!(e, RpcEvent::Execute { .. })),
        "a forged whole was run: {:?}",
        out.events
    );
    s.message(NodeId(1), part(2, &good, 0, MAX_PART));
    let id = execute(&mut s, part(2, &good, MAX_PART, n));
    assert_eq!(id.seq, 2);
}

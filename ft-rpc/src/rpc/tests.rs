//! Transition tests of one RPC core, fed by hand.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn peers() -> RpcConfig {
    RpcConfig::new(vec![NodeId(0), NodeId(1), NodeId(2)])
}

fn node(me: u64, incarnation: u64, records: Vec<Bytes>) -> (Rpc, Instant) {
    node_with(&peers(), me, incarnation, records)
}

fn node_with(config: &RpcConfig, me: u64, incarnation: u64, records: Vec<Bytes>) -> (Rpc, Instant) {
    let now = Instant::now();
    let rpc = Rpc::recover(
        config,
        RecoveryContext {
            node: NodeId(me),
            incarnation: Incarnation(incarnation),
            records,
            seed: 3,
            now,
        },
    )
    .unwrap();
    (rpc, now)
}

fn drain(r: &mut Rpc) -> Vec<Output<Rpc>> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn sent(out: &[Output<Rpc>]) -> Vec<(NodeId, RpcMessage)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output<Rpc>]) -> Vec<RpcEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn call(r: &mut Rpc, now: Instant, token: u64, semantics: Semantics) {
    r.handle_input(
        now,
        RpcInput::Call {
            token,
            server: NodeId(0),
            request: Bytes::from_static(b"hi"),
            options: CallOptions {
                semantics,
                deadline: now + 1000 * MS,
            },
        },
    );
}

/// Client n1 bound to server n0 (life `server_inc`), with call 1 sent.
fn bound_call(semantics: Semantics, server_inc: u64) -> (Rpc, Instant, RpcMessage) {
    bound_call_with(&peers(), semantics, server_inc)
}

fn bound_call_with(
    config: &RpcConfig,
    semantics: Semantics,
    server_inc: u64,
) -> (Rpc, Instant, RpcMessage) {
    let (mut c, now) = node_with(config, 1, 0, vec![]);
    drain(&mut c);
    call(&mut c, now, 7, semantics);
    let out = drain(&mut c);
    let (_, locate) = sent(&out).pop().unwrap();
    let RpcMessage::Locate { nonce } = locate else {
        panic!("binds first: {locate:?}")
    };
    c.handle_message(
        now,
        NodeId(0),
        RpcMessage::Located {
            nonce,
            server_incarnation: Incarnation(server_inc),
        },
    );
    let (_, msg) = sent(&drain(&mut c)).pop().unwrap();
    assert!(matches!(msg, RpcMessage::Call { .. }));
    (c, now, msg)
}

#[test]
fn a_call_binds_then_retransmits_then_times_out() {
    let (mut c, now, _) = bound_call(Semantics::AtMostOnce, 0);
    c.handle_timer(now + 30 * MS, RpcTimer::Retry(1));
    let out = drain(&mut c);
    assert!(matches!(sent(&out)[0].1, RpcMessage::Call { .. }));
    assert_eq!(c.client_stats().retransmissions, 1);
    c.handle_timer(now + 1000 * MS, RpcTimer::Deadline(1));
    let ev = events(&drain(&mut c));
    assert_eq!(
        ev,
        vec![RpcEvent::Returned {
            token: 7,
            result: Err(RpcError::TimedOut {
                attempts: 2,
                executed: Executed::Unknown
            })
        }]
    );
    assert_eq!(c.pending(), 0);
}

#[test]
fn an_unanswered_locate_is_cannot_locate_server() {
    let (mut c, now) = node(1, 0, vec![]);
    drain(&mut c);
    call(&mut c, now, 7, Semantics::AtMostOnce);
    drain(&mut c);
    c.handle_timer(now + 1000 * MS, RpcTimer::Deadline(1));
    assert_eq!(
        events(&drain(&mut c)),
        vec![RpcEvent::Returned {
            token: 7,
            result: Err(RpcError::CannotLocateServer { server: NodeId(0) })
        }]
    );
}

#[test]
fn the_server_executes_once_answers_duplicates_and_rejects_the_stale() {
    let (_, now, msg) = bound_call(Semantics::AtMostOnce, 0);
    let (mut s, _) = node(0, 0, vec![]);
    drain(&mut s);
    s.handle_message(now, NodeId(1), msg.clone());
    let out = drain(&mut s);
    let ev = events(&out);
    let RpcEvent::Execute { id, .. } = ev[0].clone() else {
        panic!("{ev:?}")
    };
    // A duplicate while it runs: in progress, not a second execution.
    s.handle_message(now, NodeId(1), msg.clone());
    let out = drain(&mut s);
    assert!(events(&out).is_empty());
    assert!(matches!(
        &sent(&out)[0].1,
        RpcMessage::Reply {
            outcome: Outcome::InProgress,
            ..
        }
    ));
    s.handle_input(
        now,
        RpcInput::Complete {
            exec: id,
            reply: Bytes::from_static(b"ok"),
            effect: None,
        },
    );
    drain(&mut s);
    // The reply was lost: the retransmission is answered from the record.
    s.handle_message(now, NodeId(1), msg.clone());
    let out = drain(&mut s);
    assert!(events(&out).is_empty());
    assert!(matches!(
        &sent(&out)[0].1,
        RpcMessage::Reply { outcome: Outcome::Done(b), .. } if b == &Bytes::from_static(b"ok")
    ));
    assert_eq!(s.server_stats().executions, 1);
    assert_eq!(s.server_stats().replies_from_records, 1);
    // The client restarts (life 1): its old call is now stale.
    let RpcMessage::Call {
        id,
        server_incarnation,
        semantics,
        first_incomplete,
        budget_ms,
        fingerprint,
        body,
    } = msg
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
        body: body.clone(),
    };
    s.handle_message(now, NodeId(1), newer);
    drain(&mut s);
    s.handle_message(
        now,
        NodeId(1),
        RpcMessage::Call {
            id,
            server_incarnation,
            semantics,
            first_incomplete,
            budget_ms,
            fingerprint,
            body,
        },
    );
    let out = drain(&mut s);
    assert!(matches!(
        &sent(&out)[0].1,
        RpcMessage::Reply {
            outcome: Outcome::Stale,
            ..
        }
    ));
    assert_eq!(s.server_stats().stale_rejected, 1);
}

#[test]
fn exactly_once_persists_the_record_before_replying_and_a_restart_answers_from_it() {
    let (_, now, msg) = bound_call(Semantics::ExactlyOnce, 0);
    let (mut s, _) = node(0, 0, vec![]);
    drain(&mut s);
    s.handle_message(now, NodeId(1), msg.clone());
    let ev = events(&drain(&mut s));
    let RpcEvent::Execute { id, .. } = ev[0].clone() else {
        panic!()
    };
    s.handle_input(
        now,
        RpcInput::Complete {
            exec: id,
            reply: Bytes::from_static(b"ok"),
            effect: None,
        },
    );
    let out = drain(&mut s);
    assert!(
        sent(&out).is_empty(),
        "no reply before the record is durable"
    );
    let (record, token) = out
        .iter()
        .find_map(|o| match o {
            Output::Persist { record, token } => Some((record.clone(), *token)),
            _ => None,
        })
        .unwrap();
    s.handle_persisted(now, token);
    assert_eq!(sent(&drain(&mut s)).len(), 1);

    // A restarted server answers the retransmission from the record.
    let (mut s2, _) = node(0, 1, vec![record]);
    drain(&mut s2);
    assert_eq!(s2.server_stats().records_restored, 1);
    s2.handle_message(now, NodeId(1), msg);
    let out = drain(&mut s2);
    assert!(events(&out).is_empty(), "never re-executed");
    assert!(matches!(
        &sent(&out)[0].1,
        RpcMessage::Reply {
            outcome: Outcome::Done(_),
            server_incarnation: Incarnation(1),
            ..
        }
    ));
}

#[test]
fn an_at_most_once_call_caught_in_a_server_crash_is_reported_with_what_is_known() {
    let (mut c, now, msg) = bound_call(Semantics::AtMostOnce, 0);
    let RpcMessage::Call { id, .. } = msg else {
        unreachable!()
    };
    c.handle_message(
        now,
        NodeId(0),
        RpcMessage::Reply {
            id,
            server_incarnation: Incarnation(0),
            outcome: Outcome::InProgress,
        },
    );
    c.handle_message(
        now,
        NodeId(0),
        RpcMessage::Reply {
            id,
            server_incarnation: Incarnation(1),
            outcome: Outcome::Stale,
        },
    );
    assert_eq!(
        events(&drain(&mut c)),
        vec![RpcEvent::Returned {
            token: 7,
            result: Err(RpcError::ServerCrashed {
                incarnation: Incarnation(1),
                executed: Executed::Yes
            })
        }]
    );
}

#[test]
fn cancelling_a_call_tells_the_server_which_stops_the_computation() {
    let (mut c, now, msg) = bound_call(Semantics::AtMostOnce, 0);
    let (mut s, _) = node(0, 0, vec![]);
    drain(&mut s);
    s.handle_message(now, NodeId(1), msg);
    drain(&mut s);
    c.handle_input(now, RpcInput::Cancel { token: 7 });
    let out = drain(&mut c);
    assert_eq!(
        events(&out),
        vec![RpcEvent::Returned {
            token: 7,
            result: Err(RpcError::Cancelled {
                executed: Executed::Unknown
            })
        }]
    );
    let (_, cancel) = sent(&out).pop().unwrap();
    s.handle_message(now, NodeId(1), cancel);
    let ev = events(&drain(&mut s));
    assert!(matches!(
        ev[0],
        RpcEvent::Cancel {
            reason: CancelReason::CallerCancelled,
            ..
        }
    ));
    assert_eq!(s.running(), 0);
}

#[test]
fn retransmissions_stop_when_the_budget_runs_out() {
    // gRPC's bucket alone: no refill with time, no probes.
    let mut config = peers();
    config.budget.refill_per_sec = 0.0;
    config.budget.probe_every = None;
    let (mut c, now, _) = bound_call_with(&config, Semantics::AtLeastOnce, 0);
    let mut t = now;
    for _ in 0..200 {
        t += 10 * MS;
        c.handle_timer(t, RpcTimer::Retry(1));
        drain(&mut c);
    }
    let st = c.client_stats();
    assert_eq!(
        st.retransmissions, 49,
        "100 tokens, retries while more than 50"
    );
    assert_eq!(st.throttled, 151);
}

#[test]
fn bad_calls_are_refused_up_front() {
    let (mut c, now) = node(1, 0, vec![]);
    drain(&mut c);
    c.handle_input(
        now,
        RpcInput::Call {
            token: 1,
            server: NodeId(9),
            request: Bytes::new(),
            options: CallOptions {
                semantics: Semantics::AtMostOnce,
                deadline: now + MS,
            },
        },
    );
    c.handle_input(
        now,
        RpcInput::Call {
            token: 2,
            server: NodeId(0),
            request: Bytes::from(vec![0; peers().max_body + 1]),
            options: CallOptions {
                semantics: Semantics::AtMostOnce,
                deadline: now + MS,
            },
        },
    );
    let ev = events(&drain(&mut c));
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
    assert_eq!(c.pending(), 0);
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

fn outcome(out: &[Output<Rpc>]) -> Outcome {
    match sent(out).pop() {
        Some((_, RpcMessage::Reply { outcome, .. })) => outcome,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Completes `exec` with `reply` and makes its record durable; what the
/// server does then is left in its outbox.
fn complete_durably(s: &mut Rpc, now: Instant, exec: CallId, reply: Bytes) {
    s.handle_input(
        now,
        RpcInput::Complete {
            exec,
            reply,
            effect: None,
        },
    );
    let token = drain(s)
        .into_iter()
        .find_map(|o| match o {
            Output::Persist { token, .. } => Some(token),
            _ => None,
        })
        .expect("the completion record is persisted");
    s.handle_persisted(now, token);
}

fn execute(s: &mut Rpc, now: Instant, msg: RpcMessage) -> CallId {
    s.handle_message(now, NodeId(1), msg);
    match events(&drain(s)).pop() {
        Some(RpcEvent::Execute { id, .. }) => id,
        other => panic!("expected an execution, got {other:?}"),
    }
}

/// A client life that reuses another's identity (same node, same
/// incarnation, same sequence numbers) never gets the other's replies: the
/// server compares the request with the recorded call's.
#[test]
fn a_different_request_under_a_recorded_identity_is_a_mismatch_never_another_reply() {
    for semantics in [Semantics::AtMostOnce, Semantics::ExactlyOnce] {
        let (mut s, now) = node(0, 0, vec![]);
        drain(&mut s);
        let id = execute(&mut s, now, raw_call(semantics, 0, 1, b"first life"));
        // While it runs, and after it completed.
        s.handle_message(now, NodeId(1), raw_call(semantics, 0, 1, b"second life"));
        assert_eq!(outcome(&drain(&mut s)), Outcome::Mismatch);
        s.handle_input(
            now,
            RpcInput::Complete {
                exec: id,
                reply: Bytes::from_static(b"first life's reply"),
                effect: None,
            },
        );
        let out = drain(&mut s);
        let record = out.iter().find_map(|o| match o {
            Output::Persist { record, token } => Some((record.clone(), *token)),
            _ => None,
        });
        if let Some((_, token)) = &record {
            s.handle_persisted(now, *token);
            drain(&mut s);
        }
        s.handle_message(now, NodeId(1), raw_call(semantics, 0, 1, b"second life"));
        assert_eq!(outcome(&drain(&mut s)), Outcome::Mismatch, "{semantics:?}");
        assert_eq!(s.server_stats().mismatches, 2);
        assert_eq!(s.server_stats().executions, 1);
        // The same request is still answered from its record.
        s.handle_message(now, NodeId(1), raw_call(semantics, 0, 1, b"first life"));
        assert_eq!(
            outcome(&drain(&mut s)),
            Outcome::Done(Bytes::from_static(b"first life's reply"))
        );
        // Exactly-once: a restarted server knows the fingerprint from the
        // durable record.
        if let Some((record, _)) = record {
            let (mut s2, _) = node(0, 1, vec![record]);
            drain(&mut s2);
            s2.handle_message(now, NodeId(1), raw_call(semantics, 0, 1, b"second life"));
            assert_eq!(outcome(&drain(&mut s2)), Outcome::Mismatch);
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
    let (mut s, now) = node_with(&config, 0, 0, vec![]);
    drain(&mut s);
    let id = execute(&mut s, now, raw_call(Semantics::AtMostOnce, 0, 1, b"a"));
    s.handle_input(
        now,
        RpcInput::Complete {
            exec: id,
            reply: Bytes::from(vec![1; 101]),
            effect: None,
        },
    );
    assert_eq!(
        outcome(&drain(&mut s)),
        Outcome::ReplyTooLarge {
            len: 101,
            limit: 100
        }
    );
    let id2 = execute(&mut s, now, raw_call(Semantics::AtMostOnce, 0, 2, b"b"));
    s.handle_input(now, RpcInput::Fail { exec: id2 });
    assert_eq!(outcome(&drain(&mut s)), Outcome::Failed);
    // Duplicates: answered from the records, not run again.
    s.handle_message(now, NodeId(1), raw_call(Semantics::AtMostOnce, 0, 2, b"b"));
    assert_eq!(outcome(&drain(&mut s)), Outcome::Failed);
    assert_eq!(s.server_stats().executions, 2);
    assert_eq!(s.server_stats().handler_failures, 1);
    assert_eq!(s.server_stats().replies_too_large, 1);
    // The client's side of both.
    let (mut c, now, msg) = bound_call(Semantics::AtMostOnce, 0);
    let RpcMessage::Call { id, .. } = msg else {
        unreachable!()
    };
    c.handle_message(
        now,
        NodeId(0),
        RpcMessage::Reply {
            id,
            server_incarnation: Incarnation(0),
            outcome: Outcome::ReplyTooLarge { len: 9, limit: 8 },
        },
    );
    let ev = events(&drain(&mut c));
    let RpcEvent::Returned { result: Err(e), .. } = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(e.executed(), Executed::Yes);
    assert_eq!(RpcError::HandlerFailed.executed(), Executed::Yes);
}

/// Drives messages between two cores until nothing is sent, dropping the
/// messages `lose` says to.
fn exchange(
    a: &mut Rpc,
    b: &mut Rpc,
    now: Instant,
    mut lose: impl FnMut(&RpcMessage) -> bool,
) -> Vec<RpcEvent> {
    let mut seen = Vec::new();
    let mut pending: Vec<(NodeId, NodeId, RpcMessage)> = Vec::new();
    for (from, out) in [(a.id(), drain(a)), (b.id(), drain(b))] {
        seen.extend(events(&out));
        pending.extend(sent(&out).into_iter().map(|(to, m)| (from, to, m)));
    }
    while let Some((from, to, msg)) = pending.pop() {
        if lose(&msg) {
            continue;
        }
        let target = if to == a.id() { &mut *a } else { &mut *b };
        target.handle_message(now, from, msg);
        let out = drain(target);
        seen.extend(events(&out));
        pending.extend(sent(&out).into_iter().map(|(t, m)| (to, t, m)));
    }
    seen
}

/// A request and a reply of megabytes travel in parts; parts lost on the
/// way are sent again with the next retransmission, and the receiver keeps
/// what it has, so the call completes.
#[test]
fn large_requests_and_replies_travel_in_parts_through_loss() {
    let (mut c, now) = node(1, 0, vec![]);
    let (mut s, _) = node(0, 0, vec![]);
    drain(&mut c);
    drain(&mut s);
    let request = Bytes::from(
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    c.handle_input(
        now,
        RpcInput::Call {
            token: 1,
            server: NodeId(0),
            request: request.clone(),
            options: CallOptions {
                semantics: Semantics::ExactlyOnce,
                deadline: now + 60_000 * MS,
            },
        },
    );
    // Every third message is lost.
    let mut n = 0;
    let mut lossy = |_: &RpcMessage| {
        n += 1;
        n % 3 == 0
    };
    let mut t = now;
    let mut executed = None;
    for _ in 0..20 {
        for e in exchange(&mut c, &mut s, t, &mut lossy) {
            if let RpcEvent::Execute { id, request: r, .. } = e {
                assert_eq!(r, request, "the request arrived whole");
                executed = Some(id);
            }
        }
        if executed.is_some() {
            break;
        }
        t += 2000 * MS;
        c.handle_timer(t, RpcTimer::Retry(1));
    }
    let id = executed.expect("the request was put together");
    // A reply of 2 MB.
    let reply = Bytes::from(vec![7u8; 2_000_000]);
    complete_durably(&mut s, t, id, reply.clone());
    let mut answered = None;
    for _ in 0..20 {
        for e in exchange(&mut c, &mut s, t, &mut lossy) {
            if let RpcEvent::Returned { result, .. } = e {
                answered = Some(result);
            }
        }
        if answered.is_some() {
            break;
        }
        t += 2000 * MS;
        c.handle_timer(t, RpcTimer::Retry(1));
    }
    assert_eq!(answered, Some(Ok(reply)));
    assert_eq!(s.server_stats().executions, 1);
    assert!(c.client_stats().replies_reassembled == 1);
}

/// A slow call overtaken by many fast ones, with a small record bound: the
/// stale mark never passes the running call, so its retransmission is
/// answered "in progress" and it completes; and the records forgotten over
/// the bound are never run again.
#[test]
fn the_stale_mark_never_passes_a_running_call() {
    let mut config = peers();
    config.records_per_client = 4;
    let (mut s, now) = node_with(&config, 0, 0, vec![]);
    drain(&mut s);
    let slow = execute(&mut s, now, raw_call(Semantics::ExactlyOnce, 0, 1, b"slow"));
    for seq in 2..40 {
        let mut msg = raw_call(Semantics::ExactlyOnce, 0, seq, b"fast");
        if let RpcMessage::Call {
            first_incomplete, ..
        } = &mut msg
        {
            // The client has the replies of everything but the slow call.
            *first_incomplete = 1;
        }
        let id = execute(&mut s, now, msg);
        complete_durably(&mut s, now, id, Bytes::from_static(b"done"));
        drain(&mut s);
    }
    assert!(s.server_stats().records_evicted > 30);
    s.handle_message(
        now,
        NodeId(1),
        raw_call(Semantics::ExactlyOnce, 0, 1, b"slow"),
    );
    assert_eq!(outcome(&drain(&mut s)), Outcome::InProgress);
    // An evicted call's duplicate is stale (forgotten), never run again.
    s.handle_message(
        now,
        NodeId(1),
        raw_call(Semantics::ExactlyOnce, 0, 5, b"fast"),
    );
    assert_eq!(outcome(&drain(&mut s)), Outcome::Stale);
    assert_eq!(s.server_stats().executions, 39);
    // The slow call completes and is answered.
    complete_durably(&mut s, now, slow, Bytes::from_static(b"slow done"));
    assert_eq!(
        outcome(&drain(&mut s)),
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
    let (mut s, now) = node_with(&config, 0, 0, vec![]);
    drain(&mut s);
    for (seq, semantics) in [(1, Semantics::AtMostOnce), (2, Semantics::ExactlyOnce)] {
        let id = execute(&mut s, now, raw_call(semantics, 0, seq, b"x"));
        s.handle_input(
            now,
            RpcInput::Complete {
                exec: id,
                reply: Bytes::from_static(b"r"),
                effect: None,
            },
        );
        for o in drain(&mut s) {
            if let Output::Persist { token, .. } = o {
                s.handle_persisted(now, token);
            }
        }
        drain(&mut s);
    }
    s.handle_timer(now + 200 * MS, RpcTimer::Leases);
    drain(&mut s);
    assert_eq!(s.server_stats().leases_expired, 1);
    s.handle_message(now, NodeId(1), raw_call(Semantics::AtMostOnce, 0, 1, b"x"));
    assert_eq!(outcome(&drain(&mut s)), Outcome::Stale, "tombstoned");
    s.handle_message(now, NodeId(1), raw_call(Semantics::ExactlyOnce, 0, 2, b"x"));
    assert_eq!(
        outcome(&drain(&mut s)),
        Outcome::Done(Bytes::from_static(b"r")),
        "answered from the record"
    );
    assert_eq!(s.server_stats().executions, 2);
    // And the client says "forgotten", never "refused".
    let (mut c, now, msg) = bound_call(Semantics::AtMostOnce, 0);
    let RpcMessage::Call { id, .. } = msg else {
        unreachable!()
    };
    c.handle_message(
        now,
        NodeId(0),
        RpcMessage::Reply {
            id,
            server_incarnation: Incarnation(0),
            outcome: Outcome::Stale,
        },
    );
    assert_eq!(
        events(&drain(&mut c)),
        vec![RpcEvent::Returned {
            token: 7,
            result: Err(RpcError::Forgotten {
                executed: Executed::Unknown
            })
        }]
    );
}

/// A call whose retransmissions are throttled still sends one probe per
/// `probe_every`, so it goes on trying until its deadline.
#[test]
fn a_throttled_call_still_probes_until_its_deadline() {
    let mut config = peers();
    config.budget.refill_per_sec = 0.0;
    let (mut c, now, _) = bound_call_with(&config, Semantics::AtLeastOnce, 0);
    let mut t = now;
    let mut sent_at = Vec::new();
    for _ in 0..1000 {
        t += 10 * MS;
        c.handle_timer(t, RpcTimer::Retry(1));
        if !sent(&drain(&mut c)).is_empty() {
            sent_at.push(t);
        }
    }
    let st = c.client_stats();
    assert!(st.throttled > 0);
    assert!(st.probes >= 8, "{st:?}");
    // Once throttled, sends are at least a probe interval apart.
    let late: Vec<_> = sent_at.windows(2).skip(60).map(|w| w[1] - w[0]).collect();
    assert!(
        late.iter().all(|d| *d >= Duration::from_secs(1)),
        "{late:?}"
    );
}

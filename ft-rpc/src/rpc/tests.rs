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
    );
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

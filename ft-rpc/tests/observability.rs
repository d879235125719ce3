//! What the cores tell `tracing` (target `ft::protocol`): exactly one
//! `retransmission` event per message sent again, a note for each server
//! restart noticed, call refused and orphan killed, and never a payload.
//!
//! The events are caught by a small subscriber of the test's own (no
//! dependency beyond `tracing`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ft_core::harness::Harness;
use ft_core::{Incarnation, NodeId, Protocol};
use ft_rpc::channel::{Reliable, ReliableConfig, ReliableInput, ReliableTimer};
use ft_rpc::rpc::{
    CallOptions, Rpc, RpcConfig, RpcEvent, RpcInput, RpcMessage, RpcTimer, Semantics,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const MS: Duration = Duration::from_millis(1);

/// One event: its target, and its fields as `name=value` text.
#[derive(Clone, Debug)]
struct Caught {
    target: String,
    message: String,
    fields: String,
}

/// Keeps every event.
#[derive(Clone, Default)]
struct Catcher(Arc<Mutex<Vec<Caught>>>);

struct Fields<'a>(&'a mut Caught);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.message = format!("{value:?}");
        } else {
            self.0.fields += &format!("{}={value:?} ", field.name());
        }
    }
}

impl Subscriber for Catcher {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut caught = Caught {
            target: event.metadata().target().to_string(),
            message: String::new(),
            fields: String::new(),
        };
        event.record(&mut Fields(&mut caught));
        self.0.lock().unwrap().push(caught);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Catcher {
    fn protocol(&self, message: &str) -> Vec<Caught> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.target == "ft::protocol" && c.message == message)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Caught> {
        self.0.lock().unwrap().clone()
    }
}

fn peers() -> RpcConfig {
    RpcConfig::new(vec![NodeId(0), NodeId(1)])
}

/// The payload no event may carry.
const SECRET: &[u8] = b"do-not-log-me";

/// A call whose request is lost once: the client retransmits it once,
/// and says so once; nothing carries the request's bytes.
#[test]
fn one_retransmission_under_loss_is_one_event() {
    let catcher = Catcher::default();
    let (counters, server_counters) = tracing::subscriber::with_default(catcher.clone(), || {
        let mut c = Harness::<Rpc>::new(&peers(), NodeId(1));
        let mut s = Harness::<Rpc>::new(&peers(), NodeId(0));
        c.drain();
        s.drain();
        let deadline = c.now + 5000 * MS;
        let call = RpcInput::Call {
            token: 1,
            server: NodeId(0),
            request: Bytes::from_static(SECRET),
            options: CallOptions {
                semantics: Semantics::AtMostOnce,
                deadline,
            },
        };
        let (_, locate) = c.input(call).drain().sends.remove(0);
        let (_, located) = s.message(NodeId(1), locate).drain().sends.remove(0);
        let (_, lost) = c.message(NodeId(0), located).drain().sends.remove(0);
        assert!(matches!(lost, RpcMessage::Call { .. }), "{lost:?}");
        // The call is lost; its retry timer fires.
        let out = c.advance(100 * MS).timer(RpcTimer::Retry(1)).drain();
        assert_eq!(out.sends.len(), 1);
        let (_, again) = out.sends.into_iter().next().unwrap();
        let out = s.message(NodeId(1), again).drain();
        let Some(RpcEvent::Execute { id, request, .. }) = out.events.first().cloned() else {
            panic!("{out:?}")
        };
        let (_, reply) = s
            .input(RpcInput::Complete {
                exec: id,
                reply: request,
                effect: Some(Bytes::from_static(SECRET)),
            })
            .drain()
            .sends
            .remove(0);
        let out = c.message(NodeId(0), reply).drain();
        assert!(matches!(
            &out.events[0],
            RpcEvent::Returned { result: Ok(_), .. }
        ));
        (c.core.counters(), s.core.counters())
    });
    let events = catcher.protocol("retransmission");
    assert_eq!(events.len(), 1, "{:?}", catcher.all());
    assert!(events[0].fields.contains("peer=0"), "{events:?}");
    assert!(events[0].fields.contains("seq=1"), "{events:?}");
    assert_eq!(counters.retransmissions, 1);
    assert_eq!(server_counters.retransmissions, 0);
    assert_no_payload(&catcher);
}

/// The reliable channel: a segment lost once is retransmitted once, with
/// one event.
#[test]
fn one_lost_segment_is_one_retransmission_event() {
    let catcher = Catcher::default();
    tracing::subscriber::with_default(catcher.clone(), || {
        let config = ReliableConfig::with_size(2);
        let mut a = Harness::with_core(Reliable::new(&config, NodeId(0), Incarnation::FIRST), {
            std::time::Instant::now()
        });
        a.input(ReliableInput::Send {
            to: NodeId(1),
            payload: Bytes::from_static(SECRET),
        });
        assert_eq!(a.drain().sends.len(), 1, "sent, and lost");
        let out = a
            .advance(1000 * MS)
            .timer(ReliableTimer::Retransmit(NodeId(1)))
            .drain();
        assert_eq!(out.sends.len(), 1);
        assert_eq!(a.core.counters().retransmissions, 1);
    });
    assert_eq!(catcher.protocol("retransmission").len(), 1);
    assert_no_payload(&catcher);
}

/// A refused call, a server restart the client notices and an orphan
/// killed are each one note, naming the peer, the life and the call.
#[test]
fn refusals_restarts_and_orphans_are_noted() {
    let catcher = Catcher::default();
    tracing::subscriber::with_default(catcher.clone(), || {
        // A server that serves nothing refuses the call.
        let mut config = peers();
        config.serves = false;
        let mut s = Harness::<Rpc>::new(&config, NodeId(0));
        let mut c = Harness::<Rpc>::new(&peers(), NodeId(1));
        s.drain();
        c.drain();
        let deadline = c.now + 5000 * MS;
        let call = |token, semantics| RpcInput::Call {
            token,
            server: NodeId(0),
            request: Bytes::from_static(SECRET),
            options: CallOptions {
                semantics,
                deadline,
            },
        };
        let (_, locate) = c
            .input(call(1, Semantics::AtMostOnce))
            .drain()
            .sends
            .remove(0);
        let (_, located) = s.message(NodeId(1), locate).drain().sends.remove(0);
        let (_, sent) = c.message(NodeId(0), located).drain().sends.remove(0);
        let (_, refused) = s.message(NodeId(1), sent).drain().sends.remove(0);
        c.message(NodeId(0), refused).drain();
        // The server's next life serves; the client's next call, still
        // addressed to the first life, runs there, and its answer tells
        // the client of the restart.
        let ctx = ft_core::RecoveryContext {
            incarnation: Incarnation(1),
            ..ft_core::harness::context(NodeId(0))
        };
        let mut s2 = Harness::<Rpc>::recover(&peers(), ctx).unwrap();
        s2.drain();
        let (_, sent) = c
            .input(call(2, Semantics::ExactlyOnce))
            .drain()
            .sends
            .remove(0);
        let out = s2.message(NodeId(1), sent.clone()).drain();
        assert!(matches!(out.events[0], RpcEvent::Execute { .. }));
        let (_, in_progress) = s2.message(NodeId(1), sent).drain().sends.remove(0);
        c.message(NodeId(0), in_progress).drain();
        // The client's next life announces itself: the call is an orphan.
        let announce = RpcMessage::Announce {
            client_incarnation: Incarnation(1),
            adopted: vec![],
        };
        s2.message(NodeId(1), announce).drain();
    });
    let refused = catcher.protocol("call refused: not serving");
    assert_eq!(refused.len(), 1, "{:?}", catcher.all());
    assert!(refused[0].fields.contains("peer=1"), "{refused:?}");
    let restarted = catcher.protocol("server restarted");
    assert_eq!(restarted.len(), 1, "{:?}", catcher.all());
    assert!(
        restarted[0].fields.contains("incarnation=1"),
        "{restarted:?}"
    );
    let killed = catcher.protocol("orphan killed");
    assert_eq!(killed.len(), 1, "{:?}", catcher.all());
    assert!(killed[0].fields.contains("seq=2"), "{killed:?}");
    assert_no_payload(&catcher);
}

/// No event anywhere carries the payload's bytes, in any form.
fn assert_no_payload(catcher: &Catcher) {
    let text = String::from_utf8_lossy(SECRET).to_string();
    let debug = format!("{:?}", Bytes::from_static(SECRET));
    let numbers = format!("{:?}", SECRET);
    for c in catcher.all() {
        let all = format!("{} {}", c.message, c.fields);
        for needle in [&text, &debug, &numbers] {
            assert!(!all.contains(needle.as_str()), "a payload in {c:?}");
        }
    }
}

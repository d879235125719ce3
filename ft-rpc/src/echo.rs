//! An echo service around an [`Rpc`] node: the application side made
//! deterministic, for the simulator, the demo and the benchmarks.
//!
//! [`Echo`] answers every call with its request after a configurable
//! service time (a named timer, so a computation can be caught running by a
//! crash, a cancellation or an orphan kill), and turns [`EchoInput::Call`]
//! into an RPC call with a relative deadline. Everything the [`Rpc`] core
//! says comes out as [`EchoEvent::Rpc`], so tests see executions,
//! cancellations and results.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{
    Component, Counters, NodeId, Outbox, Output, PersistToken, Persisted, Protocol, Recover,
    RecoveryContext, RecoveryError,
};

use crate::rpc::{
    CallId, CallOptions, Rpc, RpcConfig, RpcEvent, RpcInput, RpcMessage, RpcTimer, Semantics, after,
};

/// Configuration of an [`Echo`] node.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    /// The RPC node underneath.
    pub rpc: RpcConfig,
    /// How long the echo handler takes per call.
    pub service_time: Duration,
    /// Relay instead of echoing: each call is answered with the reply of a
    /// nested call to this node, made with the *caller's* deadline (the
    /// deadline propagates). The node named echoes.
    pub forward: Option<NodeId>,
    /// A service time per request, overriding `service_time` (slow and fast
    /// calls side by side).
    pub service_time_of: Option<fn(&Bytes) -> Duration>,
}

impl EchoConfig {
    /// An echo node among `peers` answering after `service_time`.
    pub fn new(peers: Vec<NodeId>, service_time: Duration) -> Self {
        EchoConfig {
            rpc: RpcConfig::new(peers),
            service_time,
            forward: None,
            service_time_of: None,
        }
    }
}

/// What the test or demo asks of an echo node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EchoInput {
    /// Call `server` with `request`, giving up after `timeout`.
    Call {
        /// The caller's name for the call.
        token: u64,
        /// Whom to call.
        server: NodeId,
        /// The request (echoed back).
        request: Bytes,
        /// How often it may execute.
        semantics: Semantics,
        /// How long until the deadline.
        timeout: Duration,
    },
    /// Give up on the call `token`.
    Cancel {
        /// The call.
        token: u64,
    },
}

/// What an echo node reports: everything its RPC node says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EchoEvent {
    /// An event of the RPC node.
    Rpc(RpcEvent),
}

/// The timers of an echo node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EchoTimer {
    /// A timer of the RPC node.
    Rpc(RpcTimer),
    /// The handler finishes computation `id`.
    Finish(CallId),
}

/// The component the RPC core is embedded as: its records are tagged
/// with it (see `ft_core::record`).
pub const RPC: Component = Component(1);

/// An echo service and client. See the [module docs](self).
#[derive(Debug)]
pub struct Echo {
    rpc: Rpc,
    app: App,
    out: Outbox<Echo>,
}

/// The application around the RPC core: the echo handler and the relay.
#[derive(Debug)]
struct App {
    service_time: Duration,
    service_time_of: Option<fn(&Bytes) -> Duration>,
    forward: Option<NodeId>,
    /// Nested calls in flight: their token → the computation they serve.
    nested: BTreeMap<u64, CallId>,
    next_token: u64,
    /// Computations being "worked on": id → request.
    working: BTreeMap<CallId, Bytes>,
}

/// What the application does about an RPC event besides reporting it.
enum Act {
    /// Feed the core this input.
    Input(RpcInput),
    /// Finish computation `id` after `after`.
    Finish(CallId, Duration),
    /// Stop working on computation `id`.
    Stop(CallId),
}

impl App {
    /// Acts on `e` (what it asks for goes to `acts`).
    fn on_event(&mut self, e: &RpcEvent, acts: &mut Vec<Act>) {
        match e {
            RpcEvent::Execute {
                id,
                request,
                deadline,
                semantics,
            } => {
                self.working.insert(*id, request.clone());
                if let Some(next) = self.forward {
                    // A nested call inherits the caller's deadline: no work
                    // past it anywhere.
                    self.next_token += 1;
                    let token = (1 << 63) | self.next_token;
                    self.nested.insert(token, *id);
                    acts.push(Act::Input(RpcInput::Call {
                        token,
                        server: next,
                        request: request.clone(),
                        options: CallOptions {
                            semantics: *semantics,
                            deadline: *deadline,
                        },
                    }));
                } else {
                    let time = self
                        .service_time_of
                        .map_or(self.service_time, |f| f(request));
                    acts.push(Act::Finish(*id, time));
                }
            }
            RpcEvent::Cancel { id, .. } => {
                // The application stops the computation.
                if self.working.remove(id).is_some() {
                    acts.push(Act::Stop(*id));
                }
            }
            RpcEvent::Returned { token, result } => {
                if let Some(id) = self.nested.remove(token)
                    && self.working.remove(&id).is_some()
                {
                    let reply = match result {
                        Ok(body) => body.clone(),
                        Err(e) => Bytes::from(format!("nested call failed: {e}")),
                    };
                    acts.push(Act::Input(RpcInput::Complete {
                        exec: id,
                        reply,
                        effect: None,
                    }));
                }
            }
        }
    }
}

impl Echo {
    /// The RPC node.
    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    /// Moves the core's outputs into ours and acts on its events, until
    /// the inputs the application feeds back (nested calls, relayed
    /// replies) are all handled.
    fn pump(&mut self, now: Instant) {
        let Echo { rpc, app, out } = self;
        loop {
            let mut acts = Vec::new();
            out.lift(
                RPC,
                rpc,
                |m| m,
                EchoTimer::Rpc,
                |e| {
                    app.on_event(&e, &mut acts);
                    Some(EchoEvent::Rpc(e))
                },
            );
            if acts.is_empty() {
                return;
            }
            for act in acts {
                match act {
                    Act::Input(input) => rpc.handle_input(now, input),
                    Act::Finish(id, time) => out.set_timer_after(EchoTimer::Finish(id), now, time),
                    Act::Stop(id) => out.cancel_timer(EchoTimer::Finish(id)),
                }
            }
        }
    }
}

impl Protocol for Echo {
    type Message = RpcMessage;
    type Input = EchoInput;
    type Event = EchoEvent;
    type Timer = EchoTimer;

    fn handle_message(&mut self, now: Instant, from: NodeId, msg: RpcMessage) {
        self.rpc.handle_message(now, from, msg);
        self.pump(now);
    }

    fn handle_input(&mut self, now: Instant, input: EchoInput) {
        let input = match input {
            EchoInput::Call {
                token,
                server,
                request,
                semantics,
                timeout,
            } => RpcInput::Call {
                token,
                server,
                request,
                options: CallOptions {
                    semantics,
                    deadline: after(now, timeout),
                },
            },
            EchoInput::Cancel { token } => RpcInput::Cancel { token },
        };
        self.rpc.handle_input(now, input);
        self.pump(now);
    }

    fn handle_timer(&mut self, now: Instant, timer: EchoTimer) {
        match timer {
            EchoTimer::Rpc(t) => self.rpc.handle_timer(now, t),
            EchoTimer::Finish(id) => {
                if let Some(request) = self.app.working.remove(&id) {
                    // The effect is the request itself: tests read the
                    // durable effects back to count what ran exactly once.
                    self.rpc.handle_input(
                        now,
                        RpcInput::Complete {
                            exec: id,
                            reply: request.clone(),
                            effect: Some(request),
                        },
                    );
                }
            }
        }
        self.pump(now);
    }

    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        if let Persisted::Inner { token, .. } = self.out.persisted(token) {
            self.rpc.handle_persisted(now, token);
        }
        self.pump(now);
    }

    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }

    fn counters(&self) -> Counters {
        let mut c = self.rpc.counters();
        c += self.out.counters();
        c
    }
}

impl Recover for Echo {
    type Config = EchoConfig;

    fn recover(config: &EchoConfig, ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let now = ctx.now;
        let mut e = Echo {
            rpc: Rpc::recover(&config.rpc, ctx.component(RPC))?,
            app: App {
                service_time: config.service_time,
                service_time_of: config.service_time_of,
                // The node named is the end of the chain: it echoes.
                forward: config.forward.filter(|&f| f != ctx.node),
                nested: BTreeMap::new(),
                next_token: 0,
                working: BTreeMap::new(),
            },
            out: Outbox::recovered(&ctx),
        };
        e.pump(now);
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Outcome, durable_completions};
    use ft_core::harness::{self, Harness};
    use ft_core::{Incarnation, PersistToken};

    const MS: Duration = Duration::from_millis(1);

    fn config() -> EchoConfig {
        EchoConfig::new(vec![NodeId(0), NodeId(1)], 10 * MS)
    }

    fn echo(me: u64) -> Harness<Echo> {
        let mut h = Harness::new(&config(), NodeId(me));
        h.drain();
        h
    }

    fn exchange(a: &mut Harness<Echo>, b: &mut Harness<Echo>) -> Vec<EchoEvent> {
        let ids = (a.core.rpc().id(), b.core.rpc().id());
        crate::testing::exchange(a, b, ids, |_| false)
    }

    /// The RPC core's outputs come out of the echo node: its timers
    /// wrapped, its records tagged with its component and their tokens
    /// routed back to it, its counters the node's; and a restarted echo
    /// server answers from the tagged record.
    #[test]
    fn the_embedded_rpc_core_persists_tagged_records_and_recovers_from_them() {
        let (mut client, mut server) = (echo(1), echo(0));
        client.input(EchoInput::Call {
            token: 9,
            server: NodeId(0),
            request: Bytes::from_static(b"hello"),
            semantics: Semantics::ExactlyOnce,
            timeout: 5000 * MS,
        });
        let events = exchange(&mut client, &mut server);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, EchoEvent::Rpc(RpcEvent::Execute { .. })))
        );
        // The handler's timer, then the completion record.
        let finish = server
            .core
            .app
            .working
            .keys()
            .next()
            .copied()
            .expect("running");
        let out = server
            .advance(10 * MS)
            .timer(EchoTimer::Finish(finish))
            .drain();
        let (token, record): (PersistToken, Bytes) = out.persists[0].clone();
        assert_eq!(
            &record[..3],
            &[RPC.0, 0, 1],
            "tagged, then SELF and version"
        );
        assert!(out.sends.is_empty(), "persist before you speak");
        server.persisted(token);
        let events = exchange(&mut client, &mut server);
        assert!(events.contains(&EchoEvent::Rpc(RpcEvent::Returned {
            token: 9,
            result: Ok(Bytes::from_static(b"hello")),
        })));
        assert_eq!(durable_completions(std::slice::from_ref(&record)).len(), 1);
        assert_eq!(server.core.counters().persists, 1);
        assert_eq!(
            server.core.counters().messages_sent,
            server.core.rpc().counters().messages_sent
        );
        // A restarted server answers the retransmission from the record.
        let ctx = RecoveryContext {
            incarnation: Incarnation(1),
            records: vec![record],
            ..harness::context(NodeId(0))
        };
        let mut restarted = Harness::<Echo>::recover(&config(), ctx).unwrap();
        assert_eq!(restarted.core.rpc().server_stats().records_restored, 1);
        restarted.drain();
        let retransmission = RpcMessage::Call {
            id: finish,
            server_incarnation: Incarnation(0),
            semantics: Semantics::ExactlyOnce,
            first_incomplete: 1,
            budget_ms: 1000,
            fingerprint: crate::rpc::fingerprint(Semantics::ExactlyOnce, b"hello"),
            body: crate::rpc::Chunk::whole(Bytes::from_static(b"hello")),
        };
        let out = restarted.message(NodeId(1), retransmission).drain();
        assert!(out.events.is_empty(), "not executed again");
        assert!(matches!(
            &out.sends[0].1,
            RpcMessage::Reply {
                outcome: Outcome::Done(_),
                ..
            }
        ));
    }
}

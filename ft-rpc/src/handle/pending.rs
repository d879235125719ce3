//! The table of calls waiting for their results: [`PendingCalls`] and the
//! caller's [`Completion`].
//!
//! This is the one place where the handle's tasks share state, so it is
//! built on the [`sync`](crate::sync) shim and modelled with loom (the
//! `loom_tests` module below).
//!
//! Every slot ends exactly one way, decided under the table's lock:
//!
//! | first under the lock | the caller | the late party |
//! |---|---|---|
//! | [`complete`](PendingCalls::complete) | gets the result (or has dropped the completion, which discards it) | — |
//! | the [`Completion`] is dropped | gone | `complete` finds no slot and discards the result; the token is reported to the cancel hook |
//! | [`close`](PendingCalls::close) | gets [`CallError::Closed`] | `complete` finds the slot finished and discards the result |
//!
//! Wakers are stored and taken under the same lock that `complete` and
//! `close` take, so a result cannot slip in between the caller's check and
//! its registration (no lost wake-up), and they are woken after the lock is
//! released.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::CallError;
use crate::rpc::RpcError;
use crate::sync::{Arc, Mutex, lock};

/// One call's slot.
enum Slot {
    /// No result yet; the waker of the caller's last poll, if it polled.
    Waiting(Option<Waker>),
    /// The outcome, waiting for the caller's next poll.
    Done(Result<Bytes, CallError>),
}

struct Table {
    next_token: u64,
    slots: HashMap<u64, Slot>,
    /// Set by [`PendingCalls::close`]: nothing will complete a slot again.
    closed: bool,
}

/// Called with the token of a call whose [`Completion`] was dropped before
/// its result came (the client sends `RpcInput::Cancel` from it).
type CancelHook = Box<dyn Fn(u64) + Send + Sync>;

struct Shared {
    table: Mutex<Table>,
    on_cancel: CancelHook,
}

/// The calls of one RPC client that wait for their results, by token.
///
/// Clones share the same table: the callers hold one (to
/// [`register`](Self::register)), the dispatcher another (to
/// [`complete`](Self::complete) and, when the node stops,
/// [`close`](Self::close)).
#[derive(Clone)]
pub(crate) struct PendingCalls {
    shared: Arc<Shared>,
}

impl PendingCalls {
    /// An empty, open table; `on_cancel` is told the token of every call
    /// whose [`Completion`] is dropped before its result came. It is called
    /// outside the table's lock, from whichever task dropped the completion.
    pub(crate) fn new(on_cancel: impl Fn(u64) + Send + Sync + 'static) -> Self {
        PendingCalls {
            shared: Arc::new(Shared {
                table: Mutex::new(Table {
                    next_token: 0,
                    slots: HashMap::new(),
                    closed: false,
                }),
                on_cancel: Box::new(on_cancel),
            }),
        }
    }

    /// A fresh token and the future that resolves with its result. Once the
    /// table is closed, the completion resolves with [`CallError::Closed`]
    /// at once.
    pub(crate) fn register(&self) -> (u64, Completion) {
        let token = {
            let mut t = lock(&self.shared.table);
            let token = t.next_token;
            t.next_token = t.next_token.wrapping_add(1);
            let slot = if t.closed {
                Slot::Done(Err(CallError::Closed))
            } else {
                Slot::Waiting(None)
            };
            t.slots.insert(token, slot);
            token
        };
        let completion = Completion {
            token,
            shared: Some(Arc::clone(&self.shared)),
        };
        (token, completion)
    }

    /// Hands `result` to the call named `token`, and wakes its caller.
    /// Returns whether it was taken: `false` if the caller has given up (or
    /// the call already ended, or the table is closed), and the result is
    /// discarded.
    pub(crate) fn complete(&self, token: u64, result: Result<Bytes, RpcError>) -> bool {
        let waker = {
            let mut t = lock(&self.shared.table);
            let Some(slot) = t.slots.get_mut(&token) else {
                return false;
            };
            let Slot::Waiting(waker) = slot else {
                return false;
            };
            let waker = waker.take();
            *slot = Slot::Done(result.map_err(CallError::Rpc));
            waker
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// The node has stopped: every waiting call ends with
    /// [`CallError::Closed`], and so does every call registered from now on.
    /// Returns how many waiting calls it ended.
    pub(crate) fn close(&self) -> usize {
        let wakers: Vec<Option<Waker>> = {
            let mut t = lock(&self.shared.table);
            t.closed = true;
            t.slots
                .values_mut()
                .filter_map(|slot| match slot {
                    Slot::Waiting(waker) => {
                        let waker = waker.take();
                        *slot = Slot::Done(Err(CallError::Closed));
                        Some(waker)
                    }
                    Slot::Done(_) => None,
                })
                .collect()
        };
        let ended = wakers.len();
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
        ended
    }

    /// How many calls have a slot: waiting for a result, or holding one their
    /// caller has not taken yet.
    pub(crate) fn len(&self) -> usize {
        lock(&self.shared.table).slots.len()
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.table).closed
    }
}

impl fmt::Debug for PendingCalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = lock(&self.shared.table);
        f.debug_struct("PendingCalls")
            .field("slots", &t.slots.len())
            .field("closed", &t.closed)
            .finish()
    }
}

/// One caller's wait for the result of its call.
///
/// Dropping it before it resolves gives the call up: its slot is removed,
/// a result that comes later is discarded, and the token goes to the
/// table's cancel hook.
#[must_use = "a call is cancelled when its completion is dropped"]
pub(crate) struct Completion {
    token: u64,
    /// `None` once resolved (or forgotten): nothing left to clean up.
    shared: Option<Arc<Shared>>,
}

impl Completion {
    /// Gives the call up without reporting it to the cancel hook: for a call
    /// that never reached the node.
    pub(crate) fn forget(mut self) {
        if let Some(shared) = self.shared.take() {
            let slot = lock(&shared.table).slots.remove(&self.token);
            drop(slot);
        }
    }
}

impl Future for Completion {
    type Output = Result<Bytes, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let token = self.token;
        let Some(shared) = &self.shared else {
            // Polled after it resolved: the result was handed out already.
            return Poll::Ready(Err(CallError::Closed));
        };
        let outcome = {
            let mut t = lock(&shared.table);
            match t.slots.get_mut(&token) {
                Some(Slot::Waiting(waker)) => {
                    match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                Some(Slot::Done(_)) => match t.slots.remove(&token) {
                    Some(Slot::Done(outcome)) => outcome,
                    _ => Err(CallError::Closed),
                },
                // Only this completion removes its slot, so this cannot
                // happen; if it did, no result can ever come.
                None => Err(CallError::Closed),
            }
        };
        self.shared = None;
        Poll::Ready(outcome)
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let slot = lock(&shared.table).slots.remove(&self.token);
        // A finished slot (a result nobody will read, or Closed) needs no
        // cancel: the call has ended at the node already.
        if let Some(Slot::Waiting(_)) = slot {
            (shared.on_cancel)(self.token);
        }
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("token", &self.token)
            .field("resolved", &self.shared.is_none())
            .finish()
    }
}

#[cfg(all(test, not(ft_loom)))]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::Mutex as StdMutex;

    fn table() -> (PendingCalls, std::sync::Arc<StdMutex<Vec<u64>>>) {
        let cancelled = std::sync::Arc::new(StdMutex::new(Vec::new()));
        let hook = std::sync::Arc::clone(&cancelled);
        let calls = PendingCalls::new(move |t| hook.lock().unwrap().push(t));
        (calls, cancelled)
    }

    #[test]
    fn results_go_to_their_own_callers() {
        let (calls, cancelled) = table();
        let (a, mut ca) = calls.register();
        let (b, cb) = calls.register();
        assert_ne!(a, b);
        assert!(
            ca.poll_unpin(&mut Context::from_waker(futures::task::noop_waker_ref()))
                .is_pending()
        );
        assert!(calls.complete(b, Ok(Bytes::from_static(b"b"))));
        assert!(calls.complete(
            a,
            Err(RpcError::Cancelled {
                executed: crate::rpc::Executed::No
            })
        ));
        assert!(
            !calls.complete(a, Ok(Bytes::new())),
            "a second result is discarded"
        );
        assert_eq!(cb.now_or_never(), Some(Ok(Bytes::from_static(b"b"))));
        assert_eq!(
            ca.now_or_never(),
            Some(Err(CallError::Rpc(RpcError::Cancelled {
                executed: crate::rpc::Executed::No
            })))
        );
        assert_eq!(calls.len(), 0);
        assert!(cancelled.lock().unwrap().is_empty());
    }

    #[test]
    fn a_dropped_waiting_completion_is_reported_once_and_a_finished_one_is_not() {
        let (calls, cancelled) = table();
        let (a, ca) = calls.register();
        let (b, cb) = calls.register();
        drop(ca);
        assert!(
            !calls.complete(a, Ok(Bytes::new())),
            "late result discarded"
        );
        assert!(calls.complete(b, Ok(Bytes::new())));
        drop(cb);
        let (c, cc) = calls.register();
        cc.forget();
        assert_eq!(*cancelled.lock().unwrap(), vec![a]);
        assert!(!calls.complete(c, Ok(Bytes::new())));
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn close_ends_waiting_calls_and_later_ones() {
        let (calls, cancelled) = table();
        let (a, ca) = calls.register();
        let (b, cb) = calls.register();
        assert!(calls.complete(b, Ok(Bytes::new())));
        assert_eq!(calls.close(), 1);
        assert!(calls.is_closed());
        assert!(!calls.complete(a, Ok(Bytes::new())));
        assert_eq!(ca.now_or_never(), Some(Err(CallError::Closed)));
        assert_eq!(
            cb.now_or_never(),
            Some(Ok(Bytes::new())),
            "a result already in stands"
        );
        let (_, cc) = calls.register();
        assert_eq!(cc.now_or_never(), Some(Err(CallError::Closed)));
        assert_eq!(calls.len(), 0);
        assert!(cancelled.lock().unwrap().is_empty());
    }
}

/// loom models of the table: every interleaving (up to a preemption bound)
/// of callers, the dispatcher completing calls, callers giving up, and the
/// node stopping. Run with
/// `RUSTFLAGS="--cfg ft_loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p ft-rpc --lib loom`.
#[cfg(all(test, ft_loom))]
mod loom_tests {
    use super::*;
    use futures::FutureExt;
    use loom::future::block_on;
    use loom::thread;

    /// Small models, bounded preemptions: the bugs these look for (a lost
    /// wake-up, a leaked slot, a result both delivered and cancelled) need
    /// only one or two preemptions at the wrong place.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    fn reply(token: u64) -> Bytes {
        Bytes::from(token.to_le_bytes().to_vec())
    }

    /// A table whose cancel hook records the tokens it is told.
    fn table() -> (PendingCalls, Arc<Mutex<Vec<u64>>>) {
        let cancelled = Arc::new(Mutex::new(Vec::new()));
        let hook = Arc::clone(&cancelled);
        let calls = PendingCalls::new(move |t| lock(&hook).push(t));
        (calls, cancelled)
    }

    /// The reply races the caller dropping its call, after `polls` pending
    /// polls (so with a waker stored or not). Exactly one wins: the result
    /// was taken into the slot, or the cancel was reported; either way the
    /// slot is gone.
    fn reply_races_drop(polls: usize) {
        model(move || {
            let (calls, cancelled) = table();
            let (token, mut completion) = calls.register();
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            for _ in 0..polls {
                assert!(completion.poll_unpin(&mut cx).is_pending());
            }
            let completer = {
                let calls = calls.clone();
                thread::spawn(move || calls.complete(token, Ok(reply(token))))
            };
            drop(completion);
            let delivered = completer.join().unwrap();
            let cancelled = lock(&cancelled).clone();
            if delivered {
                assert!(cancelled.is_empty(), "delivered and cancelled");
            } else {
                assert_eq!(cancelled, vec![token], "neither delivered nor cancelled");
            }
            assert_eq!(calls.len(), 0, "slot leaked");
        });
    }

    #[test]
    fn loom_reply_racing_a_drop_is_delivered_xor_cancelled() {
        reply_races_drop(0);
    }

    #[test]
    fn loom_reply_racing_a_drop_after_a_poll_is_delivered_xor_cancelled() {
        reply_races_drop(1);
    }

    #[test]
    fn loom_a_reply_before_or_during_the_first_poll_wakes_the_caller() {
        model(|| {
            let (calls, cancelled) = table();
            let (token, completion) = calls.register();
            let completer = {
                let calls = calls.clone();
                thread::spawn(move || assert!(calls.complete(token, Ok(reply(token)))))
            };
            // A lost wake-up parks this forever, which loom reports.
            assert_eq!(block_on(completion), Ok(reply(token)));
            completer.join().unwrap();
            assert_eq!(calls.len(), 0);
            assert!(lock(&cancelled).is_empty());
        });
    }

    #[test]
    fn loom_two_callers_and_one_completer_each_get_their_own_result() {
        model(|| {
            let (calls, cancelled) = table();
            let (tx, rx) = loom::sync::mpsc::channel();
            let callers: Vec<_> = (0..2)
                .map(|_| {
                    let calls = calls.clone();
                    let tx = tx.clone();
                    thread::spawn(move || {
                        let (token, completion) = calls.register();
                        tx.send(token).unwrap();
                        assert_eq!(block_on(completion), Ok(reply(token)));
                        token
                    })
                })
                .collect();
            // The dispatcher: completes each call as its token arrives.
            for _ in 0..2 {
                let token = rx.recv().unwrap();
                assert!(calls.complete(token, Ok(reply(token))));
            }
            let mut tokens: Vec<u64> = callers.into_iter().map(|c| c.join().unwrap()).collect();
            tokens.sort_unstable();
            assert_eq!(tokens, vec![0, 1], "distinct tokens");
            assert_eq!(calls.len(), 0);
            assert!(lock(&cancelled).is_empty());
        });
    }

    #[test]
    fn loom_shutdown_fails_a_pending_caller_instead_of_hanging() {
        model(|| {
            let (calls, cancelled) = table();
            let caller = {
                let calls = calls.clone();
                // Registers before or after the close: Closed either way.
                thread::spawn(move || block_on(calls.register().1))
            };
            calls.close();
            assert_eq!(caller.join().unwrap(), Err(CallError::Closed));
            assert_eq!(calls.len(), 0);
            assert!(lock(&cancelled).is_empty());
        });
    }

    #[test]
    fn loom_shutdown_racing_a_reply_gives_the_caller_exactly_one_outcome() {
        model(|| {
            let (calls, _) = table();
            let (token, completion) = calls.register();
            let completer = {
                let calls = calls.clone();
                thread::spawn(move || calls.complete(token, Ok(reply(token))))
            };
            let closer = {
                let calls = calls.clone();
                thread::spawn(move || calls.close())
            };
            let got = block_on(completion);
            let delivered = completer.join().unwrap();
            let closed = closer.join().unwrap();
            if delivered {
                assert_eq!((got, closed), (Ok(reply(token)), 0));
            } else {
                assert_eq!((got, closed), (Err(CallError::Closed), 1));
            }
            assert_eq!(calls.len(), 0);
        });
    }

    #[test]
    fn loom_a_drop_racing_shutdown_leaks_nothing() {
        model(|| {
            let (calls, cancelled) = table();
            let (token, completion) = calls.register();
            let closer = {
                let calls = calls.clone();
                thread::spawn(move || calls.close())
            };
            drop(completion);
            let closed = closer.join().unwrap();
            // Dropped first: reported, nothing left to close. Closed first:
            // the call has ended, so there is nothing to cancel.
            let cancelled = lock(&cancelled).clone();
            if closed == 1 {
                assert!(cancelled.is_empty());
            } else {
                assert_eq!(cancelled, vec![token]);
            }
            assert_eq!(calls.len(), 0);
        });
    }
}

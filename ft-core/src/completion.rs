//! A table of one-shot completions by key: [`CompletionTable`] and the
//! waiter's [`Completion`] future.
//!
//! An async handle on a core registers a key (a call's token, a request's
//! id) before it sends the input that names it, and awaits the
//! [`Completion`]; whoever takes the core's events
//! [`complete`](CompletionTable::complete)s the key with its value; when
//! the core stops, [`close`](CompletionTable::close) ends every waiter.
//! This is where such a handle's tasks share state, so it is built on the
//! crate's `sync` shim and modelled with loom (`tests/loom_completion.rs`).
//!
//! Every slot ends exactly one way, decided under the table's lock:
//!
//! | first under the lock | the waiter | the late party |
//! |---|---|---|
//! | [`complete`](CompletionTable::complete) | gets the value (or has dropped the completion, which discards it) | — |
//! | the [`Completion`] is dropped | gone | `complete` finds no slot and discards the value; the key is reported to the cancel hook |
//! | [`close`](CompletionTable::close) | gets [`Closed`] | `complete` finds the slot finished and discards the value |
//!
//! Wakers are stored and taken under the same lock that `complete` and
//! `close` take, so a value cannot slip in between the waiter's check and
//! its registration (no lost wake-up), and they are woken after the lock is
//! released.
//!
//! ```
//! use futures::FutureExt;
//! use ft_core::completion::{Closed, CompletionTable};
//!
//! let table: CompletionTable<u64, &str> = CompletionTable::new(|_cancelled| {});
//! let first = table.register(1).unwrap();
//! let second = table.register(2).unwrap();
//! assert!(table.register(1).is_err(), "a key waits once at a time");
//! assert!(table.complete(&1, "one"));
//! assert_eq!(first.now_or_never(), Some(Ok("one")));
//! assert_eq!(table.close(), 1, "the second was still waiting");
//! assert_eq!(second.now_or_never(), Some(Err(Closed)));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, Mutex, lock};

/// The table was closed before a value came: none ever will.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the completion table is closed")]
pub struct Closed;

/// One key's slot.
enum Slot<V> {
    /// No value yet; the waker of the waiter's last poll, if it polled.
    Waiting(Option<Waker>),
    /// The outcome, waiting for the waiter's next poll.
    Done(Result<V, Closed>),
}

struct Table<K, V> {
    slots: HashMap<K, Slot<V>>,
    /// Set by [`CompletionTable::close`]: nothing completes a slot again.
    closed: bool,
}

/// Called with the key of a completion dropped before its value came.
type CancelHook<K> = Box<dyn Fn(K) + Send + Sync>;

struct Shared<K, V> {
    table: Mutex<Table<K, V>>,
    on_cancel: CancelHook<K>,
}

/// Waiters by key, each completed once. See the [module docs](self).
///
/// Clones share the same table: the waiters hold one (to
/// [`register`](Self::register)), the completer another (to
/// [`complete`](Self::complete) and, when the core stops,
/// [`close`](Self::close)).
pub struct CompletionTable<K, V> {
    shared: Arc<Shared<K, V>>,
}

impl<K, V> Clone for CompletionTable<K, V> {
    fn clone(&self) -> Self {
        CompletionTable {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: Eq + Hash + Clone, V> CompletionTable<K, V> {
    /// An empty, open table; `on_cancel` is told the key of every
    /// [`Completion`] dropped while it still waited. It is called outside
    /// the table's lock, from whichever task dropped the completion.
    pub fn new(on_cancel: impl Fn(K) + Send + Sync + 'static) -> Self {
        CompletionTable {
            shared: Arc::new(Shared {
                table: Mutex::new(Table {
                    slots: HashMap::new(),
                    closed: false,
                }),
                on_cancel: Box::new(on_cancel),
            }),
        }
    }

    /// The future that resolves with `key`'s value. Once the table is
    /// closed, it resolves with [`Closed`] at once.
    ///
    /// # Errors
    /// `key` back if it has a slot already (waiting, or holding a value its
    /// waiter has not taken).
    pub fn register(&self, key: K) -> Result<Completion<K, V>, K> {
        {
            let mut t = lock(&self.shared.table);
            if t.slots.contains_key(&key) {
                return Err(key);
            }
            let slot = if t.closed {
                Slot::Done(Err(Closed))
            } else {
                Slot::Waiting(None)
            };
            t.slots.insert(key.clone(), slot);
        }
        Ok(Completion {
            key,
            shared: Some(Arc::clone(&self.shared)),
        })
    }

    /// Hands `value` to the waiter of `key`, and wakes it. Returns whether
    /// it was taken: `false` if the waiter has given up (or was completed
    /// already, or the table is closed), and the value is discarded.
    pub fn complete(&self, key: &K, value: V) -> bool {
        let waker = {
            let mut t = lock(&self.shared.table);
            let Some(slot) = t.slots.get_mut(key) else {
                return false;
            };
            let Slot::Waiting(waker) = slot else {
                return false;
            };
            let waker = waker.take();
            *slot = Slot::Done(Ok(value));
            waker
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Nothing will complete a slot again: every waiter ends with
    /// [`Closed`], and so does every one registered from now on. Returns
    /// how many waiting slots it ended.
    pub fn close(&self) -> usize {
        let wakers: Vec<Option<Waker>> = {
            let mut t = lock(&self.shared.table);
            t.closed = true;
            t.slots
                .values_mut()
                .filter_map(|slot| match slot {
                    Slot::Waiting(waker) => {
                        let waker = waker.take();
                        *slot = Slot::Done(Err(Closed));
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

    /// How many keys have a slot: waiting for a value, or holding one their
    /// waiter has not taken yet.
    pub fn len(&self) -> usize {
        lock(&self.shared.table).slots.len()
    }

    /// Whether no key has a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.table).closed
    }
}

impl<K, V> fmt::Debug for CompletionTable<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = lock(&self.shared.table);
        f.debug_struct("CompletionTable")
            .field("slots", &t.slots.len())
            .field("closed", &t.closed)
            .finish()
    }
}

/// One waiter's wait for the value of its key.
///
/// Dropping it before it resolves gives the key up: its slot is removed,
/// a value that comes later is discarded, and the key goes to the table's
/// cancel hook.
#[must_use = "a key is given up when its completion is dropped"]
pub struct Completion<K: Eq + Hash + Clone, V> {
    key: K,
    /// `None` once resolved (or forgotten): nothing left to clean up.
    shared: Option<Arc<Shared<K, V>>>,
}

impl<K: Eq + Hash + Clone, V> Completion<K, V> {
    /// The key it waits for.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Gives the key up without telling the cancel hook: for a key whose
    /// input never reached the core.
    pub fn forget(mut self) {
        if let Some(shared) = self.shared.take() {
            let slot = lock(&shared.table).slots.remove(&self.key);
            drop(slot);
        }
    }
}

// Nothing is pinned: the key and the `Arc` move freely.
impl<K: Eq + Hash + Clone, V> Unpin for Completion<K, V> {}

impl<K: Eq + Hash + Clone, V> Future for Completion<K, V> {
    type Output = Result<V, Closed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(shared) = &self.shared else {
            // Polled after it resolved: the value was handed out already.
            return Poll::Ready(Err(Closed));
        };
        let outcome = {
            let mut t = lock(&shared.table);
            match t.slots.get_mut(&self.key) {
                Some(Slot::Waiting(waker)) => {
                    match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                Some(Slot::Done(_)) => match t.slots.remove(&self.key) {
                    Some(Slot::Done(outcome)) => outcome,
                    _ => Err(Closed),
                },
                // Only this completion removes its slot, so this cannot
                // happen; if it did, no value can ever come.
                None => Err(Closed),
            }
        };
        self.shared = None;
        Poll::Ready(outcome)
    }
}

impl<K: Eq + Hash + Clone, V> Drop for Completion<K, V> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let slot = lock(&shared.table).slots.remove(&self.key);
        // A finished slot (a value nobody will read, or Closed) needs no
        // cancel: the key's work has ended already.
        if let Some(Slot::Waiting(_)) = slot {
            (shared.on_cancel)(self.key.clone());
        }
    }
}

impl<K: Eq + Hash + Clone + fmt::Debug, V> fmt::Debug for Completion<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("key", &self.key)
            .field("resolved", &self.shared.is_none())
            .finish()
    }
}

#[cfg(all(test, not(ft_loom)))]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::Mutex as StdMutex;

    fn table() -> (
        CompletionTable<u64, &'static str>,
        std::sync::Arc<StdMutex<Vec<u64>>>,
    ) {
        let cancelled = std::sync::Arc::new(StdMutex::new(Vec::new()));
        let hook = std::sync::Arc::clone(&cancelled);
        let table = CompletionTable::new(move |k| hook.lock().unwrap().push(k));
        (table, cancelled)
    }

    #[test]
    fn values_go_to_their_own_waiters() {
        let (t, cancelled) = table();
        let mut a = t.register(0).unwrap();
        let b = t.register(1).unwrap();
        assert_eq!(t.register(1).unwrap_err(), 1, "one waiter per key");
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(a.poll_unpin(&mut cx).is_pending());
        assert!(t.complete(&1, "b"));
        assert!(t.complete(&0, "a"));
        assert!(!t.complete(&0, "again"), "a second value is discarded");
        assert_eq!(b.now_or_never(), Some(Ok("b")));
        assert_eq!(a.now_or_never(), Some(Ok("a")));
        assert!(t.is_empty());
        assert!(cancelled.lock().unwrap().is_empty());
    }

    #[test]
    fn a_dropped_waiting_completion_is_reported_once_and_a_finished_one_is_not() {
        let (t, cancelled) = table();
        let a = t.register(0).unwrap();
        let b = t.register(1).unwrap();
        drop(a);
        assert!(!t.complete(&0, "late"), "late value discarded");
        assert!(t.complete(&1, "b"));
        drop(b);
        let c = t.register(2).unwrap();
        c.forget();
        assert_eq!(*cancelled.lock().unwrap(), vec![0]);
        assert!(!t.complete(&2, "c"));
        assert!(t.is_empty());
    }

    #[test]
    fn close_ends_waiting_slots_and_later_ones() {
        let (t, cancelled) = table();
        let a = t.register(0).unwrap();
        let b = t.register(1).unwrap();
        assert!(t.complete(&1, "b"));
        assert_eq!(t.close(), 1);
        assert!(t.is_closed());
        assert!(!t.complete(&0, "a"));
        assert_eq!(a.now_or_never(), Some(Err(Closed)));
        assert_eq!(b.now_or_never(), Some(Ok("b")), "a value already in stands");
        let c = t.register(2).unwrap();
        assert_eq!(c.now_or_never(), Some(Err(Closed)));
        assert!(t.is_empty());
        assert!(cancelled.lock().unwrap().is_empty());
    }
}

//! loom models of the [`CompletionTable`]: every interleaving (up to a
//! bounded number of preemptions) of waiters, the completer, waiters
//! giving up, and the table closing.
//!
//! Run with
//! `RUSTFLAGS="--cfg ft_loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p ft-core --test loom_completion --target-dir target/loom`.
#![cfg(ft_loom)]

use std::task::Context;

use ft_core::completion::{Closed, CompletionTable};
use futures::FutureExt;
use loom::future::block_on;
use loom::sync::{Arc, Mutex};
use loom::thread;

/// Small models, bounded preemptions: the bugs these look for (a lost
/// wake-up, a leaked slot, a value both delivered and cancelled) need only
/// one or two preemptions at the wrong place.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

type Table = CompletionTable<u64, u64>;

/// A table whose cancel hook records the keys it is told.
fn table() -> (Table, Arc<Mutex<Vec<u64>>>) {
    let cancelled = Arc::new(Mutex::new(Vec::new()));
    let hook = Arc::clone(&cancelled);
    let t = CompletionTable::new(move |k| hook.lock().unwrap().push(k));
    (t, cancelled)
}

fn cancelled(c: &Arc<Mutex<Vec<u64>>>) -> Vec<u64> {
    c.lock().unwrap().clone()
}

/// The value races the waiter dropping its completion, after `polls`
/// pending polls (so with a waker stored or not). Exactly one wins: the
/// value was taken into the slot, or the cancel was reported; either way
/// the slot is gone.
fn value_races_drop(polls: usize) {
    model(move || {
        let (t, hook) = table();
        let mut completion = t.register(7).unwrap();
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        for _ in 0..polls {
            assert!(completion.poll_unpin(&mut cx).is_pending());
        }
        let completer = {
            let t = t.clone();
            thread::spawn(move || t.complete(&7, 70))
        };
        drop(completion);
        let delivered = completer.join().unwrap();
        if delivered {
            assert!(cancelled(&hook).is_empty(), "delivered and cancelled");
        } else {
            assert_eq!(cancelled(&hook), vec![7], "neither delivered nor cancelled");
        }
        assert!(t.is_empty(), "slot leaked");
    });
}

#[test]
fn a_value_racing_a_drop_is_delivered_xor_cancelled() {
    value_races_drop(0);
}

#[test]
fn a_value_racing_a_drop_after_a_poll_is_delivered_xor_cancelled() {
    value_races_drop(1);
}

#[test]
fn a_value_before_or_during_the_first_poll_wakes_the_waiter() {
    model(|| {
        let (t, hook) = table();
        let completion = t.register(7).unwrap();
        let completer = {
            let t = t.clone();
            thread::spawn(move || assert!(t.complete(&7, 70)))
        };
        // A lost wake-up parks this forever, which loom reports.
        assert_eq!(block_on(completion), Ok(70));
        completer.join().unwrap();
        assert!(t.is_empty());
        assert!(cancelled(&hook).is_empty());
    });
}

#[test]
fn two_waiters_and_one_completer_each_get_their_own_value() {
    model(|| {
        let (t, hook) = table();
        let (tx, rx) = loom::sync::mpsc::channel();
        let waiters: Vec<_> = (0..2u64)
            .map(|key| {
                let t = t.clone();
                let tx = tx.clone();
                thread::spawn(move || {
                    let completion = t.register(key).unwrap();
                    tx.send(key).unwrap();
                    assert_eq!(block_on(completion), Ok(key * 10));
                })
            })
            .collect();
        // The completer: completes each key as it is registered.
        for _ in 0..2 {
            let key = rx.recv().unwrap();
            assert!(t.complete(&key, key * 10));
        }
        for w in waiters {
            w.join().unwrap();
        }
        assert!(t.is_empty());
        assert!(cancelled(&hook).is_empty());
    });
}

#[test]
fn closing_fails_a_waiter_instead_of_hanging() {
    model(|| {
        let (t, hook) = table();
        let waiter = {
            let t = t.clone();
            // Registers before or after the close: Closed either way.
            thread::spawn(move || block_on(t.register(7).unwrap()))
        };
        t.close();
        assert_eq!(waiter.join().unwrap(), Err(Closed));
        assert!(t.is_empty());
        assert!(cancelled(&hook).is_empty());
    });
}

#[test]
fn closing_racing_a_value_gives_the_waiter_exactly_one_outcome() {
    model(|| {
        let (t, _) = table();
        let completion = t.register(7).unwrap();
        let completer = {
            let t = t.clone();
            thread::spawn(move || t.complete(&7, 70))
        };
        let closer = {
            let t = t.clone();
            thread::spawn(move || t.close())
        };
        let got = block_on(completion);
        let delivered = completer.join().unwrap();
        let closed = closer.join().unwrap();
        if delivered {
            assert_eq!((got, closed), (Ok(70), 0));
        } else {
            assert_eq!((got, closed), (Err(Closed), 1));
        }
        assert!(t.is_empty());
    });
}

#[test]
fn a_drop_racing_the_close_leaks_nothing() {
    model(|| {
        let (t, hook) = table();
        let completion = t.register(7).unwrap();
        let closer = {
            let t = t.clone();
            thread::spawn(move || t.close())
        };
        drop(completion);
        let closed = closer.join().unwrap();
        // Dropped first: reported, nothing left to close. Closed first:
        // the key's work has ended, so there is nothing to cancel.
        if closed == 1 {
            assert!(cancelled(&hook).is_empty());
        } else {
            assert_eq!(cancelled(&hook), vec![7]);
        }
        assert!(t.is_empty());
    });
}

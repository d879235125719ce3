//! The synchronization primitives the group-commit queue is built on:
//! `std`'s normally, `loom`'s under `--cfg ft_loom`, so the loom models in
//! `tests/loom_queue.rs` explore every interleaving (the shape of tokio's
//! `src/loom/mod.rs`).

#![allow(unused_imports)]

#[cfg(ft_loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard, atomic::*};

#[cfg(not(ft_loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard, atomic::*};

/// Locks `mutex`, ignoring poisoning: the queue's state is consistent at
/// every step that could panic, and a poisoned lock must not turn one
/// panicking appender into a hang for all the others.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv`, ignoring poisoning like [`lock`].
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv` for at most `dur`, ignoring poisoning like [`lock`].
/// (Under loom the wait never times out; the models never rely on it.)
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    dur: std::time::Duration,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout(guard, dur) {
        Ok((g, _)) => g,
        Err(e) => e.into_inner().0,
    }
}

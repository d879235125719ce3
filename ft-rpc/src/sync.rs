//! The synchronization primitives this crate's shared state is built on.
//!
//! Normally these are `std`'s. Built with `--cfg ft_loom` they are `loom`'s,
//! so the `loom::model` tests in [`handle`](crate::handle) explore every
//! interleaving of the code that uses them (the shape of tokio's
//! `src/loom/mod.rs`, and a copy of `ft-core`'s private shim). Everything
//! that shares state between tasks or threads goes through this module,
//! never through `std::sync` directly, or loom would not see it.

// Not every build uses every name (the glob brings in atomics no module
// needs yet), and that is fine for a shim.
#![allow(unused_imports)]

#[cfg(ft_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard, atomic::*};

#[cfg(not(ft_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard, atomic::*};

/// Locks `mutex`, ignoring poisoning.
///
/// A panic while the lock was held leaves plain data (tables, counters) that
/// is still consistent at every await-free step, so the next user may carry
/// on; turning one test's panic into a cascade of poison errors would only
/// hide the first failure.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

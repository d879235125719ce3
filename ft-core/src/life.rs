//! The restart life cycle, once for every environment.
//!
//! Every environment that runs a core — ft-tokio's durable directories,
//! ft-sim's simulated disks, a user's own event loop — starts each life of a
//! process the same way, and [`begin`] is that way:
//!
//! 1. the next incarnation is one more than the last one stored
//!    ([`next_incarnation`]: [`Incarnation::FIRST`] when none is stored, an
//!    error rather than a wrap at `u64::MAX`);
//! 2. it is stored durably **before** the life exists, so that no two lives
//!    ever share one, not even if this one crashes at once;
//! 3. the core is rebuilt with [`Recover::recover`] from the records that
//!    survived, with this life's seed;
//! 4. a record the core cannot read stops the start with the error
//!    ([`LifeError::Recovery`]): nothing is skipped silently.
//!
//! Where the incarnation and the records live is the environment's
//! business; `begin` takes them as arguments and a closure that stores the
//! new incarnation.
//!
//! ```
//! use std::time::Instant;
//! use ft_core::life::{begin, life_seed};
//! use ft_core::{Incarnation, NodeId};
//! # use ft_core::{Counters, Output, PersistToken, Protocol, Recover, RecoveryContext, RecoveryError};
//! # #[derive(Debug)] struct Idle(Incarnation);
//! # impl Protocol for Idle {
//! #     type Message = u64; type Input = (); type Event = (); type Timer = ();
//! #     fn handle_message(&mut self, _: Instant, _: NodeId, _: u64) {}
//! #     fn handle_input(&mut self, _: Instant, _: ()) {}
//! #     fn handle_timer(&mut self, _: Instant, _: ()) {}
//! #     fn handle_persisted(&mut self, _: Instant, _: PersistToken) {}
//! #     fn poll_output(&mut self) -> Option<Output<Self>> { None }
//! #     fn counters(&self) -> Counters { Counters::default() }
//! # }
//! # impl Recover for Idle {
//! #     type Config = ();
//! #     fn recover(_: &(), ctx: RecoveryContext) -> Result<Self, RecoveryError> { Ok(Idle(ctx.incarnation)) }
//! # }
//!
//! let mut stored = Some(Incarnation(4)); // what the last life stored
//! let life = begin::<Idle>(&(), NodeId(1), stored, Vec::new(), Instant::now(),
//!     |i| life_seed(42, i),
//!     |i| { stored = Some(i); Ok(()) },
//! ).unwrap();
//! assert_eq!(life.incarnation, Incarnation(5));
//! assert_eq!(life.core.0, Incarnation(5));
//! assert_eq!(stored, Some(Incarnation(5)), "stored before the core was built");
//! ```

use std::time::Instant;

use bytes::Bytes;

use crate::id::{Incarnation, NodeId};
use crate::protocol::{Recover, RecoveryContext};
use crate::record::RecoveryError;
use crate::storage::StorageError;

/// A new life, begun by [`begin`].
#[derive(Debug)]
pub struct Life<P> {
    /// The core, rebuilt.
    pub core: P,
    /// This life's incarnation, already durable.
    pub incarnation: Incarnation,
    /// How many records the core was rebuilt from.
    pub records: usize,
}

/// Why a life could not begin.
#[derive(Debug, thiserror::Error)]
pub enum LifeError {
    /// Storing the new incarnation failed, or it cannot grow any more: no
    /// life began.
    #[error("the incarnation could not be stored: {0}")]
    Storage(#[from] StorageError),
    /// The core could not be rebuilt from its records. The new incarnation
    /// is stored (and burnt): a later attempt takes the next one.
    #[error("the core could not be recovered: {0}")]
    Recovery(#[from] RecoveryError),
}

/// The incarnation after `last`: [`Incarnation::FIRST`] when there was no
/// life before.
///
/// # Errors
/// [`StorageError::Rejected`] at `u64::MAX`: an incarnation never wraps
/// around to one an earlier life used.
pub fn next_incarnation(last: Option<Incarnation>) -> Result<Incarnation, StorageError> {
    match last {
        None => Ok(Incarnation::FIRST),
        Some(Incarnation(u64::MAX)) => Err(StorageError::Rejected(
            "the incarnation cannot grow past u64::MAX".into(),
        )),
        Some(last) => Ok(last.next()),
    }
}

/// The seed of life `incarnation` of a process seeded with `seed`:
/// consecutive lives get unrelated streams, while a run stays reproducible
/// from `seed`.
pub fn life_seed(seed: u64, incarnation: Incarnation) -> u64 {
    crate::rng::mix(seed, incarnation.0)
}

/// Begins the life after `last`: see the [module docs](self). `seed` gives
/// the life's seed from its incarnation; `store` makes the incarnation
/// durable and is called before the core is built.
///
/// # Errors
/// [`LifeError::Storage`] if the incarnation cannot grow or `store` fails
/// (no life began); [`LifeError::Recovery`] if the core refuses its records.
#[allow(clippy::too_many_arguments)]
pub fn begin<P: Recover>(
    config: &P::Config,
    node: NodeId,
    last: Option<Incarnation>,
    records: Vec<Bytes>,
    now: Instant,
    seed: impl FnOnce(Incarnation) -> u64,
    store: impl FnOnce(Incarnation) -> Result<(), StorageError>,
) -> Result<Life<P>, LifeError> {
    let incarnation = next_incarnation(last)?;
    store(incarnation)?;
    let count = records.len();
    let ctx = RecoveryContext {
        node,
        incarnation,
        records,
        seed: seed(incarnation),
        now,
    };
    let core = P::recover(config, ctx)?;
    Ok(Life {
        core,
        incarnation,
        records: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_grow_and_never_wrap() {
        assert_eq!(next_incarnation(None).unwrap(), Incarnation::FIRST);
        assert_eq!(
            next_incarnation(Some(Incarnation(7))).unwrap(),
            Incarnation(8)
        );
        assert!(matches!(
            next_incarnation(Some(Incarnation(u64::MAX))),
            Err(StorageError::Rejected(_))
        ));
        assert_ne!(life_seed(1, Incarnation(0)), life_seed(1, Incarnation(1)));
    }
}

//! A participant's work behind a trait: [`Resource`], in the spirit of XA
//! (the X/Open interface between a transaction manager and a resource
//! manager such as a database).
//!
//! The cores ([`TwoPhase`](crate::TwoPhase), [`ThreePhase`](crate::ThreePhase))
//! say *when* to prepare, commit or abort through their events
//! ([`Event::Prepare`](crate::Event::Prepare),
//! [`Event::Commit`](crate::Event::Commit),
//! [`Event::Abort`](crate::Event::Abort)); a driver (ft-tokio's
//! `CommitNode`) calls the node's [`Resource`] for each and feeds the vote
//! back as [`Input::Voted`](crate::Input::Voted).
//!
//! | XA | here | when |
//! |---|---|---|
//! | `xa_prepare` | [`Resource::prepare`] | VOTE_REQUEST arrived |
//! | `xa_commit` | [`Resource::commit`] | COMMIT is durable in this node's log |
//! | `xa_rollback` | [`Resource::abort`] | ABORT is durable in this node's log |
//! | `XA_HEURCOM` / `XA_HEURRB` | [`Applied::Heuristic`] | the resource had decided on its own |
//! | `xa_recover` | the core's own log | READY transactions are asked about again after a restart |
//!
//! # Idempotence
//!
//! Every call may come **again**: the driver calls `commit` (or `abort`)
//! again after every restart for every outcome in the node's log, because
//! a crash may have come between the log record and the resource's work.
//! `abort` may also come for a transaction never prepared here (the
//! participant aborted in INIT), and `prepare` again for a transaction the
//! application restarted. A resource therefore keys its work by
//! [`TxId`] and treats a repeated call as done.
//!
//! # Durability
//!
//! A [`Vote::Commit`] from `prepare` is a promise: the work must survive a
//! crash of the resource and still be able to commit *or* abort later (XA's
//! prepared state). The commit core logs READY only after `prepare`
//! returned, so a resource that cannot keep the promise must vote
//! [`Vote::Abort`].
//!
//! `commit` and `abort` return once the outcome is applied; a resource that
//! fails transiently retries inside them (the outcome is decided and
//! logged: there is nothing else to do but apply it).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::wire::{TxId, Vote};

/// What a resource did with an outcome it was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied now, or applied already (a repeated call).
    Done,
    /// While in doubt (prepared, and the outcome not reachable) the
    /// resource had decided on its own, **heuristically**, and applied
    /// this outcome before it was told the real one: XA's `XA_HEURCOM` /
    /// `XA_HEURRB`. If it differs from the outcome it is told, the
    /// transaction is no longer atomic (a person has to repair it); if it is
    /// the same, the guess was lucky, and still reported.
    Heuristic(Vote),
}

/// The work of one participant node, behind the commit protocol. See the
/// [module docs](self) for what each call means and why each must be
/// idempotent.
#[async_trait]
pub trait Resource: Send + Sync + 'static {
    /// Phase one, XA's `xa_prepare`: make the work of `tx` durable so that
    /// it can still commit or abort after a crash, and vote
    /// [`Vote::Commit`]; or vote [`Vote::Abort`] (nothing to keep, or it
    /// cannot promise). After an abort vote the resource may roll `tx` back
    /// at once: it will be told [`abort`](Self::abort) too.
    async fn prepare(&self, tx: &TxId) -> Vote;

    /// Commit the prepared work of `tx`: XA's `xa_commit`. Idempotent; may
    /// come again after a restart.
    async fn commit(&self, tx: &TxId) -> Applied;

    /// Roll back the work of `tx`, prepared or not, or known or not: XA's
    /// `xa_rollback`. Idempotent; may come again after a restart.
    async fn abort(&self, tx: &TxId) -> Applied;
}

/// Where a transaction is in a [`MemResource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemState {
    /// Voted commit; waits for the outcome.
    Prepared,
    /// Committed when told to.
    Committed,
    /// Aborted when told to (or voted abort).
    Aborted,
    /// Decided here, on its own, while prepared ([`MemResource::decide_heuristically`]);
    /// then told the outcome: `told` is `None` until then.
    Heuristic {
        /// What it decided on its own.
        decided: Vote,
        /// The outcome it was told later.
        told: Option<Vote>,
    },
}

/// How many calls a [`MemResource`] got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemCalls {
    /// [`Resource::prepare`] calls.
    pub prepares: u64,
    /// [`Resource::commit`] calls (repeats included).
    pub commits: u64,
    /// [`Resource::abort`] calls (repeats included).
    pub aborts: u64,
}

#[derive(Debug, Default)]
struct Mem {
    votes: BTreeMap<TxId, Vote>,
    default_vote: Option<Vote>,
    states: BTreeMap<TxId, MemState>,
    calls: MemCalls,
}

/// A resource that keeps its transactions in memory, for examples and
/// tests: it votes commit unless told otherwise ([`vote_on`](Self::vote_on),
/// [`vote_by_default`](Self::vote_by_default)), records the state of each
/// transaction, counts the calls, and can decide a prepared transaction on
/// its own ([`decide_heuristically`](Self::decide_heuristically)).
///
/// It is **not durable**: its promise of a commit vote holds only while
/// the process lives, which suits a participant that is not the one being
/// crashed.
///
/// ```
/// use ft_commit::resource::{Applied, MemResource, MemState, Resource};
/// use ft_commit::{TxId, Vote};
///
/// # futures::executor::block_on(async {
/// let r = MemResource::new();
/// let t1 = TxId::new(&b"t1"[..]).unwrap();
/// assert_eq!(r.prepare(&t1).await, Vote::Commit);
/// assert_eq!(r.commit(&t1).await, Applied::Done);
/// assert_eq!(r.commit(&t1).await, Applied::Done, "idempotent");
/// assert_eq!(r.state(&t1), Some(MemState::Committed));
///
/// // An operator rolls back an in-doubt transaction by hand; the commit
/// // that comes later is reported as heuristic.
/// let t2 = TxId::new(&b"t2"[..]).unwrap();
/// r.prepare(&t2).await;
/// r.decide_heuristically(&t2, Vote::Abort);
/// assert_eq!(r.commit(&t2).await, Applied::Heuristic(Vote::Abort));
/// # });
/// ```
#[derive(Debug, Default)]
pub struct MemResource {
    inner: Mutex<Mem>,
}

impl MemResource {
    /// A resource that votes commit on everything.
    pub fn new() -> Self {
        MemResource::default()
    }

    /// Votes `vote` on `tx` when asked to prepare it.
    pub fn vote_on(&self, tx: &TxId, vote: Vote) {
        self.lock().votes.insert(tx.clone(), vote);
    }

    /// Votes `vote` on every transaction not named by
    /// [`vote_on`](Self::vote_on).
    pub fn vote_by_default(&self, vote: Vote) {
        self.lock().default_vote = Some(vote);
    }

    /// The state of `tx` here, if it was ever prepared or told an outcome.
    pub fn state(&self, tx: &TxId) -> Option<MemState> {
        self.lock().states.get(tx).copied()
    }

    /// How many calls came so far.
    pub fn calls(&self) -> MemCalls {
        self.lock().calls
    }

    /// An operator's decision on a **prepared** transaction, without the
    /// coordinator (say, to free its locks while the coordinator is down):
    /// the later commit or abort is then answered with
    /// [`Applied::Heuristic`]. Returns whether `tx` was prepared here (it
    /// changes nothing otherwise).
    pub fn decide_heuristically(&self, tx: &TxId, decided: Vote) -> bool {
        let mut m = self.lock();
        match m.states.get_mut(tx) {
            Some(s @ MemState::Prepared) => {
                *s = MemState::Heuristic {
                    decided,
                    told: None,
                };
                true
            }
            _ => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        // A panic while holding the lock leaves plain data behind; go on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn told(&self, tx: &TxId, outcome: Vote) -> Applied {
        let mut m = self.lock();
        match outcome {
            Vote::Commit => m.calls.commits += 1,
            Vote::Abort => m.calls.aborts += 1,
        }
        let done = match outcome {
            Vote::Commit => MemState::Committed,
            Vote::Abort => MemState::Aborted,
        };
        match m.states.get_mut(tx) {
            Some(MemState::Heuristic { decided, told }) => {
                *told = Some(outcome);
                Applied::Heuristic(*decided)
            }
            Some(s) => {
                *s = done;
                Applied::Done
            }
            None => {
                m.states.insert(tx.clone(), done);
                Applied::Done
            }
        }
    }
}

#[async_trait]
impl Resource for MemResource {
    async fn prepare(&self, tx: &TxId) -> Vote {
        let mut m = self.lock();
        m.calls.prepares += 1;
        let vote = m
            .votes
            .get(tx)
            .copied()
            .or(m.default_vote)
            .unwrap_or(Vote::Commit);
        match m.states.get(tx) {
            // Already decided here: a repeated prepare changes nothing.
            Some(MemState::Committed) => Vote::Commit,
            Some(MemState::Aborted) => Vote::Abort,
            Some(MemState::Heuristic { decided, .. }) => *decided,
            Some(MemState::Prepared) | None => {
                let state = match vote {
                    Vote::Commit => MemState::Prepared,
                    Vote::Abort => MemState::Aborted,
                };
                m.states.insert(tx.clone(), state);
                vote
            }
        }
    }

    async fn commit(&self, tx: &TxId) -> Applied {
        self.told(tx, Vote::Commit)
    }

    async fn abort(&self, tx: &TxId) -> Applied {
        self.told(tx, Vote::Abort)
    }
}

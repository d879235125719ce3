//! The group-commit queue between appenders and the syncer.
//!
//! Appenders [`submit`](Queue::submit) records and get a [`Ticket`]; the LSNs
//! are assigned under the queue's lock, so queue order is LSN order. The one
//! syncer thread [`take`](Queue::take)s *everything* pending at once, writes
//! it, syncs once, and completes every ticket of the batch in LSN order: many
//! appenders share one sync, and an appender that arrives while a sync is in
//! flight rides the very next one.
//!
//! Every ticket is completed exactly once: by the syncer (with the batch's
//! outcome), or by [`fail_pending`](Queue::fail_pending) when the syncer is
//! gone. This is the crate's concurrency core; the loom models in
//! `tests/loom_queue.rs` check it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sync::{Arc, Condvar, Mutex, lock, wait, wait_timeout};

/// Why a ticket failed; cloneable, unlike `StorageError`, because one failure
/// completes a whole batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The write or sync of this batch failed (kind and message of the
    /// `io::Error`).
    Io(std::io::ErrorKind, String),
    /// An earlier sync failed; the log refuses all further work.
    Poisoned,
    /// The log was shut down before the records were written.
    Closed,
}

type Outcome = Result<u64, Failed>;

#[derive(Default)]
struct Slot {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
}

/// Where blocked appenders sleep: one condition variable for the whole
/// queue, so that completing a batch of n tickets wakes all their threads
/// with one notification (one system call) instead of n.
#[derive(Default)]
pub(crate) struct Bell {
    rung: Mutex<u64>,
    cv: Condvar,
}

impl Bell {
    /// Wakes every blocked appender, to look at its ticket. Call after
    /// completing tickets ([`Ticket::complete_quietly`]).
    pub(crate) fn ring(&self) {
        *lock(&self.rung) += 1;
        self.cv.notify_all();
    }
}

/// One appender's wait for its records to be durable.
pub(crate) struct Ticket {
    slot: Mutex<Slot>,
    bell: Arc<Bell>,
}

impl Ticket {
    fn new(bell: &Arc<Bell>) -> Arc<Ticket> {
        Arc::new(Ticket {
            slot: Mutex::new(Slot::default()),
            bell: Arc::clone(bell),
        })
    }

    /// Completes the ticket and wakes its waiter (the tests' shorthand for
    /// a batch of one).
    #[cfg(test)]
    pub(crate) fn complete(&self, outcome: Outcome) {
        self.complete_quietly(outcome);
        self.bell.ring();
    }

    /// Completes the ticket and wakes an async waiter, but not a blocked
    /// thread: the caller completes a whole batch, then rings the bell
    /// once. A second completion is a bug and is ignored in release builds
    /// (the first outcome stands).
    pub(crate) fn complete_quietly(&self, outcome: Outcome) {
        let waker = {
            let mut s = lock(&self.slot);
            debug_assert!(s.outcome.is_none(), "ticket completed twice");
            if s.outcome.is_some() {
                return;
            }
            s.outcome = Some(outcome);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Blocks the calling thread until the ticket is completed.
    pub(crate) fn wait(&self) -> Outcome {
        // The outcome is looked at under the bell's lock: a completion
        // after that look rings only once this thread is waiting, so no
        // ring is missed.
        let mut rung = lock(&self.bell.rung);
        loop {
            if let Some(o) = &lock(&self.slot).outcome {
                return o.clone();
            }
            rung = wait(&self.bell.cv, rung);
        }
    }

    /// Whether the ticket has been completed.
    #[cfg(all(test, not(ft_loom)))]
    pub(crate) fn is_done(&self) -> bool {
        lock(&self.slot).outcome.is_some()
    }
}

/// Awaits a [`Ticket`] without blocking the executor's thread.
pub(crate) struct TicketFuture(pub(crate) Arc<Ticket>);

impl Future for TicketFuture {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut s = lock(&self.0.slot);
        match &s.outcome {
            Some(o) => Poll::Ready(o.clone()),
            None => {
                // Registered under the same lock `complete` takes, so a
                // completion cannot slip between the check and the store.
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Records submitted together, with the LSN of the first.
pub(crate) struct Pending {
    pub(crate) first: u64,
    pub(crate) records: Vec<Bytes>,
    pub(crate) ticket: Arc<Ticket>,
}

struct State {
    pending: Vec<Pending>,
    /// How many submissions the syncer is gathering for: a submission wakes
    /// it only on the first arrival or when this many are in, so eight
    /// returning appenders cost it one wake-up, not eight.
    want: usize,
    next_lsn: u64,
    closed: bool,
    poisoned: bool,
    /// A batch has been taken and is being written (by the syncer, or by
    /// an appender [`lead`](Queue::lead)ing): no other may be taken until
    /// [`done`](Queue::done), or two writers could reorder LSNs.
    busy: bool,
}

/// What [`Queue::lead`] decided.
pub(crate) enum Lead {
    /// The log was idle: the caller writes this batch itself, then calls
    /// [`Queue::done`].
    Now(Pending),
    /// Queued for the syncer, as [`Queue::submit`] does.
    Queued(Arc<Ticket>),
}

/// The queue itself.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The syncer sleeps here while there is nothing to write.
    work: Condvar,
    /// Blocked appenders sleep here.
    pub(crate) bell: Arc<Bell>,
}

impl Queue {
    /// A queue whose first record gets `next_lsn`.
    pub(crate) fn new(next_lsn: u64) -> Self {
        Queue {
            state: Mutex::new(State {
                pending: Vec::new(),
                want: 1,
                next_lsn,
                closed: false,
                poisoned: false,
                busy: false,
            }),
            work: Condvar::new(),
            bell: Arc::new(Bell::default()),
        }
    }

    /// Queues `records` and assigns their LSNs; the ticket completes with
    /// the first LSN once they are durable.
    pub(crate) fn submit(&self, records: Vec<Bytes>) -> Result<(u64, Arc<Ticket>), Failed> {
        let ticket = Ticket::new(&self.bell);
        let (first, wake) = {
            let mut s = lock(&self.state);
            if s.poisoned {
                return Err(Failed::Poisoned);
            }
            if s.closed {
                return Err(Failed::Closed);
            }
            let first = s.next_lsn;
            s.next_lsn += records.len() as u64;
            s.pending.push(Pending {
                first,
                records,
                ticket: ticket.clone(),
            });
            let n = s.pending.len();
            (first, n == 1 || n >= s.want)
        };
        if wake {
            self.work.notify_one();
        }
        Ok((first, ticket))
    }

    /// Like [`submit`](Queue::submit), but when nothing is pending or being
    /// written and recent batches carried one appender each, hands the
    /// records back as a batch for the caller to write and sync on its own
    /// thread: a lone appender then costs no hand-over to the syncer and
    /// back (two thread wake-ups per append). While appenders come in
    /// groups (`want > 1`) they are left to the syncer, which gathers them.
    pub(crate) fn lead(&self, records: Vec<Bytes>) -> Result<Lead, Failed> {
        {
            let mut s = lock(&self.state);
            if s.poisoned {
                return Err(Failed::Poisoned);
            }
            if s.closed {
                return Err(Failed::Closed);
            }
            if !s.busy && s.pending.is_empty() && s.want <= 1 {
                s.busy = true;
                let first = s.next_lsn;
                s.next_lsn += records.len() as u64;
                return Ok(Lead::Now(Pending {
                    first,
                    records,
                    ticket: Ticket::new(&self.bell),
                }));
            }
        }
        let (_, ticket) = self.submit(records)?;
        Ok(Lead::Queued(ticket))
    }

    /// Ends the write of a batch taken by [`lead`](Queue::lead) or
    /// [`take_gathering`](Queue::take_gathering) (after its tickets are
    /// completed); wakes the syncer if work came in meanwhile.
    pub(crate) fn done(&self) {
        let wake = {
            let mut s = lock(&self.state);
            s.busy = false;
            !s.pending.is_empty()
        };
        if wake {
            self.work.notify_all();
        }
    }

    /// Waits until something is pending, then takes all of it. Returns
    /// `None` once the queue is closed (or poisoned) and drained: what was
    /// submitted before the close is still handed out.
    #[cfg(test)]
    pub(crate) fn take(&self) -> Option<Vec<Pending>> {
        let batch = self.take_gathering(1, Duration::ZERO);
        self.done();
        batch
    }

    /// The syncer's call: waits until something is pending and no batch is
    /// being written; then waits up to `max_wait` for `want` submissions in
    /// all, and takes everything; [`done`](Queue::done) ends its write.
    /// Returns `None` once the queue is closed (or poisoned) and drained
    /// (a leading appender may still be writing): what was submitted before
    /// the close is still handed out.
    ///
    /// After a sync completes, all its appenders wake at once and come back;
    /// taking only the first to arrive would split them into two groups that
    /// alternate forever, each sync carrying half of them. Waiting briefly
    /// for as many as the last batch had keeps them together.
    pub(crate) fn take_gathering(&self, want: usize, max_wait: Duration) -> Option<Vec<Pending>> {
        let mut s = lock(&self.state);
        s.want = want.max(1);
        loop {
            if !s.busy && !s.pending.is_empty() {
                break;
            }
            if s.pending.is_empty() && (s.closed || s.poisoned) {
                return None;
            }
            s = wait(&self.work, s);
        }
        let deadline = Instant::now() + max_wait;
        while s.pending.len() < want && !s.closed && !s.poisoned {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = wait_timeout(&self.work, s, deadline - now);
        }
        s.busy = true;
        Some(std::mem::take(&mut s.pending))
    }

    /// Stops accepting work; the syncer drains what is pending and stops.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.work.notify_all();
    }

    /// An I/O error made durability unknowable: refuse everything from now
    /// on and fail what is pending.
    pub(crate) fn poison(&self) {
        lock(&self.state).poisoned = true;
        self.fail_pending(Failed::Poisoned);
        self.work.notify_all();
    }

    /// Whether the queue was poisoned.
    pub(crate) fn is_poisoned(&self) -> bool {
        lock(&self.state).poisoned
    }

    /// Completes every pending ticket with `why` (the syncer is gone).
    pub(crate) fn fail_pending(&self, why: Failed) {
        let pending = std::mem::take(&mut lock(&self.state).pending);
        for p in pending {
            p.ticket.complete_quietly(Err(why.clone()));
        }
        self.bell.ring();
    }

    /// The LSN the next submitted record gets.
    pub(crate) fn next_lsn(&self) -> u64 {
        lock(&self.state).next_lsn
    }
}

#[cfg(all(test, not(ft_loom)))]
mod tests {
    use super::*;

    fn recs(n: usize) -> Vec<Bytes> {
        vec![Bytes::from_static(b"r"); n]
    }

    #[test]
    fn lsns_follow_queue_order_and_one_take_gets_everything() {
        let q = Queue::new(10);
        let (a, ta) = q.submit(recs(2)).unwrap();
        let (b, tb) = q.submit(recs(1)).unwrap();
        assert_eq!((a, b, q.next_lsn()), (10, 12, 13));
        let batch = q.take().unwrap();
        assert_eq!(
            batch.iter().map(|p| p.first).collect::<Vec<_>>(),
            vec![10, 12]
        );
        for p in &batch {
            p.ticket.complete(Ok(p.first));
        }
        assert_eq!((ta.wait(), tb.wait()), (Ok(10), Ok(12)));
    }

    #[test]
    fn an_appender_leads_only_an_idle_queue_of_lone_appenders() {
        let q = Queue::new(0);
        let Ok(Lead::Now(p)) = q.lead(recs(2)) else {
            panic!("an idle queue is led")
        };
        assert_eq!(p.first, 0);
        // Busy: the next one queues behind the leader's batch.
        assert!(matches!(q.lead(recs(1)), Ok(Lead::Queued(_))));
        p.ticket.complete(Ok(0));
        q.done();
        // Something pending: leading would write it out of order.
        assert!(matches!(q.lead(recs(1)), Ok(Lead::Queued(_))));
        let batch = q.take_gathering(2, Duration::ZERO).unwrap();
        assert_eq!(
            batch.iter().map(|p| p.first).collect::<Vec<_>>(),
            vec![2, 3]
        );
        q.done();
        // Appenders came in groups (want 2): the syncer gathers them.
        assert!(matches!(q.lead(recs(1)), Ok(Lead::Queued(_))));
    }

    #[test]
    fn close_drains_then_refuses_and_poison_fails_everything() {
        let q = Queue::new(0);
        let (_, t) = q.submit(recs(1)).unwrap();
        q.close();
        assert!(matches!(q.submit(recs(1)), Err(Failed::Closed)));
        assert_eq!(
            q.take().map(|b| b.len()),
            Some(1),
            "work before the close is still handed out"
        );
        assert!(q.take().is_none());
        assert!(!t.is_done());

        let q = Queue::new(0);
        let (_, t) = q.submit(recs(1)).unwrap();
        q.poison();
        assert_eq!(t.wait(), Err(Failed::Poisoned));
        assert!(matches!(q.submit(recs(1)), Err(Failed::Poisoned)));
        assert!(q.take().is_none());
    }
}

/// loom models of the queue: every interleaving (up to a preemption bound)
/// of appenders, the syncer, shutdown and poisoning. Run with
/// `RUSTFLAGS="--cfg ft_loom" cargo test --release -p ft-storage --lib loom`.
#[cfg(all(test, ft_loom))]
mod loom_models {
    use super::*;
    use loom::thread;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    fn one() -> Vec<Bytes> {
        vec![Bytes::from_static(b"r")]
    }

    /// The syncer: completes every batch in order until it has completed
    /// `n` submissions; returns the first LSNs in completion order.
    fn syncer(q: Arc<Queue>, n: usize) -> thread::JoinHandle<Vec<u64>> {
        thread::spawn(move || {
            let mut order = Vec::new();
            while order.len() < n {
                let Some(batch) = q.take() else { break };
                for p in batch {
                    order.push(p.first);
                    p.ticket.complete(Ok(p.first));
                }
            }
            order
        })
    }

    #[test]
    fn loom_every_appender_is_completed_exactly_once_in_lsn_order() {
        model(|| {
            let q = Arc::new(Queue::new(0));
            let s = syncer(q.clone(), 2);
            let appenders: Vec<_> = (0..2)
                .map(|_| {
                    let q = q.clone();
                    thread::spawn(move || {
                        let (first, t) = q.submit(one()).unwrap();
                        // Blocks until completed: a lost wake-up would
                        // deadlock, which loom reports.
                        assert_eq!(t.wait(), Ok(first));
                        first
                    })
                })
                .collect();
            let mut got: Vec<u64> = appenders.into_iter().map(|a| a.join().unwrap()).collect();
            let order = s.join().unwrap();
            assert_eq!(order, vec![0, 1], "completion order is LSN order");
            got.sort();
            assert_eq!(got, vec![0, 1], "distinct LSNs, each completed once");
        });
    }

    #[test]
    fn loom_gathering_takes_everyone_and_loses_no_one() {
        model(|| {
            let q = Arc::new(Queue::new(0));
            let s = {
                let q = q.clone();
                thread::spawn(move || {
                    let mut done = 0;
                    while done < 2 {
                        let batch = q
                            .take_gathering(2, std::time::Duration::from_millis(1))
                            .unwrap();
                        for p in batch {
                            done += 1;
                            p.ticket.complete(Ok(p.first));
                        }
                        q.done();
                    }
                })
            };
            let a = {
                let q = q.clone();
                thread::spawn(move || {
                    let (first, t) = q.submit(one()).unwrap();
                    assert_eq!(t.wait(), Ok(first));
                })
            };
            let (first, t) = q.submit(one()).unwrap();
            assert_eq!(t.wait(), Ok(first));
            a.join().unwrap();
            s.join().unwrap();
        });
    }

    #[test]
    fn loom_a_leading_appender_and_the_syncer_write_in_lsn_order() {
        model(|| {
            let q = Arc::new(Queue::new(0));
            // What was "written", in the order it was.
            let log = Arc::new(Mutex::new(Vec::new()));
            let s = {
                let (q, log) = (q.clone(), log.clone());
                thread::spawn(move || {
                    while let Some(batch) = q.take_gathering(1, std::time::Duration::ZERO) {
                        for p in batch {
                            lock(&log).push(p.first);
                            p.ticket.complete(Ok(p.first));
                        }
                        q.done();
                    }
                })
            };
            let append = |q: &Queue, log: &Mutex<Vec<u64>>| match q.lead(one()).unwrap() {
                Lead::Now(p) => {
                    lock(log).push(p.first);
                    p.ticket.complete(Ok(p.first));
                    q.done();
                }
                Lead::Queued(t) => {
                    t.wait().unwrap();
                }
            };
            let a = {
                let (q, log) = (q.clone(), log.clone());
                thread::spawn(move || append(&q, &log))
            };
            append(&q, &log);
            a.join().unwrap();
            q.close();
            s.join().unwrap();
            assert_eq!(
                *lock(&log),
                vec![0, 1],
                "one writer at a time, in LSN order"
            );
        });
    }

    #[test]
    fn loom_async_waiter_is_woken() {
        model(|| {
            let q = Arc::new(Queue::new(5));
            let s = syncer(q.clone(), 1);
            let (first, t) = q.submit(one()).unwrap();
            assert_eq!(loom::future::block_on(TicketFuture(t)), Ok(first));
            assert_eq!(s.join().unwrap(), vec![5]);
        });
    }

    #[test]
    fn loom_shutdown_with_pending_appenders_completes_or_refuses_each() {
        model(|| {
            let q = Arc::new(Queue::new(0));
            let s = {
                let q = q.clone();
                thread::spawn(move || {
                    while let Some(batch) = q.take() {
                        for p in batch {
                            p.ticket.complete(Ok(p.first));
                        }
                    }
                })
            };
            let a = {
                let q = q.clone();
                thread::spawn(move || match q.submit(one()) {
                    Ok((first, t)) => assert_eq!(t.wait(), Ok(first)),
                    Err(e) => assert_eq!(e, Failed::Closed),
                })
            };
            q.close();
            s.join().unwrap();
            // Whatever the syncer did not take is failed here, as FileLog's
            // shutdown does; the appender must not hang either way.
            q.fail_pending(Failed::Closed);
            a.join().unwrap();
        });
    }

    #[test]
    fn loom_poison_fails_everything_pending_and_later() {
        model(|| {
            let q = Arc::new(Queue::new(0));
            let a = {
                let q = q.clone();
                thread::spawn(move || match q.submit(one()) {
                    Ok((_, t)) => assert_eq!(t.wait(), Err(Failed::Poisoned)),
                    Err(e) => assert_eq!(e, Failed::Poisoned),
                })
            };
            q.poison();
            assert!(q.take().is_none());
            a.join().unwrap();
            assert!(matches!(q.submit(one()), Err(Failed::Poisoned)));
        });
    }
}

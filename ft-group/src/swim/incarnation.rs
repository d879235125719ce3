//! This member's own incarnation: the one it announced, the one on its way
//! to disk, and whether it runs, waits for a new life to be durable, or
//! acts as failed. Refuting, halting, rejoining and persisting live here.

use std::time::Instant;

use ft_core::{Incarnation, Outbox, PersistToken};

use super::{OnDeclaredFailed, Swim, SwimEvent, SwimRecord, SwimTimer};
use crate::membership::Rumor;

/// Whether this member takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Waiting for the incarnation of a new life to be durable.
    Joining,
    Running,
    /// Declared failed, acting as failed (fail-stop).
    Halted,
}

/// Why a new incarnation is being persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Why {
    /// A new life: after a restart or a fail-stop.
    Join,
    /// To outbid news of this member (a suspicion, a failure, a forgery).
    Refute,
}

/// What news about this member calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AboutMe {
    /// It was declared failed at this incarnation: act as failed.
    Halt(Incarnation),
    /// It is suspected (or declared failed, and refutes that): take this
    /// incarnation.
    Refute(Incarnation),
    /// The news is about an earlier incarnation: say the current one again.
    Repeat,
    /// Someone claims a newer life than was announced: take this
    /// incarnation, above it.
    Outbid(Incarnation),
    /// Nothing.
    Nothing,
}

/// What a request to rejoin came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rejoin {
    /// The member is not halted.
    NotHalted,
    /// Its incarnation is `u64::MAX`: nothing can outbid that failure.
    Refused,
    /// The new incarnation is on its way to disk.
    Persisting,
}

/// This member's incarnation and mode.
#[derive(Debug)]
pub(super) struct Life {
    /// The incarnation announced (or, at the start of a first life, the
    /// one everyone already lists).
    incarnation: Incarnation,
    mode: Mode,
    /// The incarnation on its way to disk, under which token, and why.
    persisting: Option<(PersistToken, Incarnation, Why)>,
}

impl Life {
    /// A member at [`Incarnation::FIRST`]: running if this is its first
    /// life, else joining (its new incarnation still to persist).
    pub(super) fn new(first_life: bool) -> Self {
        Life {
            incarnation: Incarnation::FIRST,
            mode: if first_life {
                Mode::Running
            } else {
                Mode::Joining
            },
            persisting: None,
        }
    }

    /// The incarnation announced.
    pub(super) fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The mode.
    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    /// The incarnation this member has said or is about to say: the one on
    /// its way to disk, if any, else the one announced.
    pub(super) fn announced(&self) -> Incarnation {
        self.persisting.map_or(self.incarnation, |p| p.1)
    }

    /// What `rumor`, news about this member, calls for.
    pub(super) fn judge(&self, rumor: &Rumor, on_declared_failed: OnDeclaredFailed) -> AboutMe {
        let announced = self.announced();
        let inc = rumor.incarnation();
        let above = Incarnation(inc.0.saturating_add(1));
        match rumor {
            Rumor::Failed { .. }
                if inc >= self.incarnation
                    && matches!(on_declared_failed, OnDeclaredFailed::FailStop { .. }) =>
            {
                AboutMe::Halt(inc)
            }
            // Refute: only this member may raise its incarnation. (A
            // suspicion below one already on its way to disk needs nothing.)
            Rumor::Suspect { .. } | Rumor::Failed { .. }
                if inc >= self.incarnation && inc >= announced =>
            {
                AboutMe::Refute(above)
            }
            // News about an earlier incarnation: the sender missed our last
            // announcement (its copies ran out before reaching it).
            Rumor::Suspect { .. } | Rumor::Failed { .. } if self.persisting.is_none() => {
                AboutMe::Repeat
            }
            // Someone claims a newer life of ours than we announced (a
            // forgery, or news from a life whose record was lost).
            Rumor::Alive { .. } if inc > announced => AboutMe::Outbid(above),
            _ => AboutMe::Nothing,
        }
    }

    /// Persist before you speak: persists `incarnation`, to be announced
    /// only once it is durable, so no later life can reuse it.
    pub(super) fn persist(&mut self, out: &mut Outbox<Swim>, incarnation: Incarnation, why: Why) {
        if let Some((_, pending, w)) = &mut self.persisting
            && *pending >= incarnation
        {
            // A rejoin rides on a refutation already on its way to disk.
            if why == Why::Join {
                *w = Why::Join;
            }
            return;
        }
        let token = out.persist(&SwimRecord::Incarnation(incarnation));
        self.persisting = Some((token, incarnation, why));
    }

    /// The record of `token` is durable. If it was the incarnation on its
    /// way to disk, that incarnation is now this member's, and unless the
    /// member halted meanwhile (a halted member announces nothing) it is
    /// to be announced, for the reason returned; a new life runs from now.
    pub(super) fn durable(&mut self, token: PersistToken) -> Option<Why> {
        let (t, incarnation, why) = self.persisting?;
        if t != token {
            return None;
        }
        self.persisting = None;
        self.incarnation = self.incarnation.max(incarnation);
        if self.mode == Mode::Halted {
            return None;
        }
        if why == Why::Join {
            self.mode = Mode::Running;
        }
        Some(why)
    }

    /// Declared failed at `declared`: acts as failed from now. Returns the
    /// incarnation that failed.
    pub(super) fn halt(&mut self, declared: Incarnation) -> Incarnation {
        self.mode = Mode::Halted;
        self.incarnation = self.incarnation.max(declared);
        self.incarnation
    }

    /// Rejoins after a fail-stop with a new incarnation, once it is
    /// durable.
    pub(super) fn rejoin(&mut self, out: &mut Outbox<Swim>) -> Rejoin {
        if self.mode != Mode::Halted {
            return Rejoin::NotHalted;
        }
        if self.incarnation == Incarnation(u64::MAX) {
            // Nothing can outbid the failure of the last incarnation: under
            // this identity the member stays failed (the hearsay bound makes
            // reaching here take 2⁶⁴ / max_hearsay_rise forged rumors).
            return Rejoin::Refused;
        }
        self.mode = Mode::Joining;
        let next = Incarnation(self.incarnation.0.saturating_add(1));
        self.persist(out, next, Why::Join);
        Rejoin::Persisting
    }
}

impl Swim {
    /// Takes in `rumor`, news about this member.
    pub(super) fn about_me(&mut self, now: Instant, rumor: Rumor) {
        match self.life.judge(&rumor, self.config.on_declared_failed) {
            AboutMe::Halt(declared) => self.halt(now, declared),
            AboutMe::Refute(next) => {
                self.stats.refutations += 1;
                // Lifeguard: being suspected suggests we are the slow one.
                self.health.adjust(1);
                self.out.note(
                    "suspected: refuting with a new incarnation",
                    Some(self.me),
                    Some(next),
                    None,
                );
                self.life.persist(&mut self.out, next, Why::Refute);
            }
            // Say it again; the answer about to go out carries it.
            AboutMe::Repeat => self.broadcasts.push(Rumor::Alive {
                node: self.me,
                incarnation: self.life.incarnation(),
            }),
            AboutMe::Outbid(next) => {
                self.out.note(
                    "a newer life of ours claimed: outbidding it",
                    Some(self.me),
                    Some(next),
                    None,
                );
                self.life.persist(&mut self.out, next, Why::Refute);
            }
            AboutMe::Nothing => {}
        }
    }

    /// Declared failed at `declared`: act as failed ([`OnDeclaredFailed::FailStop`]).
    fn halt(&mut self, now: Instant, declared: Incarnation) {
        self.stats.declared_failed += 1;
        let incarnation = self.life.halt(declared);
        self.out.note(
            "declared failed: halting",
            Some(self.me),
            Some(incarnation),
            None,
        );
        // The view shows what everyone else now believes about us.
        self.view.apply(
            &Rumor::Failed {
                node: self.me,
                incarnation,
            },
            now,
        );
        self.stop_probing();
        self.suspicions.cancel_all(&mut self.out);
        self.broadcasts.clear();
        self.out.event(SwimEvent::DeclaredFailed { incarnation });
        if let OnDeclaredFailed::FailStop {
            rejoin_after: Some(after),
        } = self.config.on_declared_failed
        {
            self.out.set_timer_after(SwimTimer::Rejoin, now, after);
        }
    }

    /// Rejoins after a fail-stop, if halted.
    pub(super) fn rejoin(&mut self) {
        match self.life.rejoin(&mut self.out) {
            Rejoin::NotHalted => {}
            Rejoin::Refused => {
                self.stats.rejoins_refused += 1;
                self.out.note(
                    "declared failed at the last incarnation: cannot rejoin",
                    Some(self.me),
                    Some(self.life.incarnation()),
                    None,
                );
                self.out.event(SwimEvent::CannotRejoin);
            }
            Rejoin::Persisting => {}
        }
    }

    /// The record of `token` is durable: if it was a new incarnation,
    /// announce it.
    pub(super) fn on_incarnation_durable(&mut self, now: Instant, token: PersistToken) {
        let Some(why) = self.life.durable(token) else {
            return;
        };
        let incarnation = self.life.incarnation();
        let alive = Rumor::Alive {
            node: self.me,
            incarnation,
        };
        self.view.apply(&alive, now);
        self.broadcasts.push(alive);
        match why {
            Why::Refute => {
                if self.life.mode() == Mode::Running {
                    self.out.event(SwimEvent::Refuted { incarnation });
                    // A refutation races the suspicion timeout: push it now
                    // rather than wait for the next ping or ack to carry it.
                    self.announce();
                }
            }
            Why::Join => {
                self.out.event(SwimEvent::Rejoined { incarnation });
                self.out
                    .note("rejoined", Some(self.me), Some(incarnation), None);
                // Nobody probes a member they believe failed, so a member
                // coming back tells a few others itself; gossip does the rest.
                self.announce();
                // Suspicions the view still holds lost their timers when we
                // halted: run them again, or they would never end.
                self.suspicions
                    .resume(&mut self.out, &self.view, self.me, now, &self.config);
                let first = self.first_probe_delay();
                self.start_probing(now, first);
            }
        }
    }

    /// Tells `indirect_checks` random members our news at once (as pings,
    /// whose acks are ignored), instead of waiting for the next probe.
    fn announce(&mut self) {
        let mut contacts = self.others(self.me);
        self.rng.shuffle(&mut contacts);
        contacts.truncate(self.config.indirect_checks.max(1));
        for c in contacts {
            let seq = self.next_seq();
            let ping = self.ping(seq, c);
            self.out.send(c, ping);
        }
    }
}

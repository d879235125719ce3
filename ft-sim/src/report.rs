//! How a run ends: a report, or a failure that says how to reproduce it.

use std::fmt;
use std::time::Duration;

use ft_core::Recover;

use crate::sim::Sim;
use crate::stats::Stats;

/// The outcome of a run that kept every invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Virtual time reached.
    pub now: Duration,
    /// What happened.
    pub stats: Stats,
    /// Digest of the whole trace: equal runs have equal digests.
    pub digest: u64,
}

/// A run that broke an invariant: everything needed to understand and
/// reproduce it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed of the run; re-running it with the same plan reproduces the
    /// failure exactly.
    pub seed: u64,
    /// The invariant that failed.
    pub invariant: String,
    /// What the invariant said.
    pub message: String,
    /// When.
    pub at: Duration,
    /// After how many steps.
    pub step: u64,
    /// The fault plan, printed.
    pub plan: String,
    /// The last steps before the failure, readable.
    pub trace: Vec<String>,
    /// The trace digest up to the failure.
    pub digest: u64,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant `{}` violated at {:?} (step {}) with seed {}:",
            self.invariant, self.at, self.step, self.seed
        )?;
        writeln!(f, "  {}", self.message)?;
        writeln!(f, "last {} steps:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "plan: {}", self.plan)?;
        write!(
            f,
            "reproduce: run the same scenario with seed {}",
            self.seed
        )
    }
}

impl std::error::Error for Failure {}

/// Why a determinism self-check failed.
#[derive(Debug)]
pub enum SelfCheckError {
    /// The run broke an invariant (the first of the two runs).
    Failure(Box<Failure>),
    /// The two runs of the same seed differed: something in the protocol or
    /// the setup is not deterministic (a `HashMap` iteration order, a read of
    /// the system clock, global randomness).
    Diverged {
        /// The first run.
        first: Box<RunReport>,
        /// The second run.
        second: Box<RunReport>,
    },
}

impl fmt::Display for SelfCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelfCheckError::Failure(fail) => fail.fmt(f),
            SelfCheckError::Diverged { first, second } => write!(
                f,
                "seed {} is not deterministic: digest {:#x} then {:#x}\nfirst: {:?}\nsecond: {:?}",
                first.seed, first.digest, second.digest, first.stats, second.stats
            ),
        }
    }
}

impl std::error::Error for SelfCheckError {}

/// Builds a run twice with `make`, runs both until `until`, and checks that
/// they took exactly the same steps (equal trace digests and counters).
pub fn self_check<P, F>(make: F, until: Duration) -> Result<RunReport, SelfCheckError>
where
    P: Recover + 'static,
    F: Fn() -> Sim<P>,
{
    let first = make().run_until(until).map_err(SelfCheckError::Failure)?;
    let second = make().run_until(until).map_err(SelfCheckError::Failure)?;
    if first != second {
        return Err(SelfCheckError::Diverged {
            first: Box::new(first),
            second: Box::new(second),
        });
    }
    Ok(first)
}

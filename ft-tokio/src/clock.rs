//! [`TokioClock`]: the driver's [`Clock`] from `tokio::time`.

use std::time::Instant;

use async_trait::async_trait;
use ft_core::Clock;

/// The [`Clock`] of the tokio runtime: [`tokio::time::Instant::now`] and
/// [`tokio::time::sleep_until`].
///
/// Under a runtime whose time is paused (tokio's `test-util` feature,
/// `#[tokio::test(start_paused = true)]`), this clock follows the paused
/// time, so a driver's timers run on virtual time in such tests. It must be
/// used within a tokio runtime with the time driver enabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokioClock;

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    async fn sleep_until(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

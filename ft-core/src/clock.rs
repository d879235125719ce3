//! The [`Clock`] edge trait.

use std::time::Instant;

use async_trait::async_trait;

/// Time, as the driver sees it.
///
/// Cores never read a clock: the driver reads this one and passes `now` in.
/// A real deployment uses the runtime's clock (`ft-tokio` has one); tests may
/// use a virtual one.
#[async_trait]
pub trait Clock: Send + Sync {
    /// The current time. Never goes backwards.
    fn now(&self) -> Instant;

    /// Completes at or after `deadline`.
    async fn sleep_until(&self, deadline: Instant);
}

#[async_trait]
impl<C: Clock + ?Sized> Clock for Box<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
    async fn sleep_until(&self, deadline: Instant) {
        (**self).sleep_until(deadline).await
    }
}

#[async_trait]
impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
    async fn sleep_until(&self, deadline: Instant) {
        (**self).sleep_until(deadline).await
    }
}

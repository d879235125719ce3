//! Failure detectors: deciding from the arrival times of heartbeats whether a
//! process is suspected to have failed.
//!
//! Both detectors implement [`ft_core::FailureDetector`], so any core that
//! embeds a detector (the all-to-all [`Heartbeating`](crate::heartbeat::Heartbeating)
//! group, for one) works with either:
//!
//! - [`FixedTimeout`] suspects a process after a fixed silence: simple, and
//!   exactly as good as the timeout is chosen for the network it runs on.
//! - [`PhiAccrual`] learns each process's heartbeat rhythm and turns the
//!   current silence into a suspicion level φ (Hayashibara et al., as used by
//!   Akka and Cassandra): a process whose heartbeats arrive irregularly is
//!   given more slack than a regular one before it is suspected.
//!
//! Neither can tell a crashed process from a slow one or from a lossy link;
//! they only *suspect*. Both are deterministic: time is passed in, and
//! neither reads a clock.

mod phi;
mod timeout;

pub use phi::{PhiAccrual, PhiConfig};
pub use timeout::FixedTimeout;

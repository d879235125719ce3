//! Running a [`Protocol`]'s driver on tokio: [`spawn`], [`spawn_volatile`]
//! and the [`NoLog`] the latter uses.

use async_trait::async_trait;
use bytes::Bytes;
use ft_core::driver::driver;
use ft_core::{
    Channel, Clock, DriverConfig, DriverError, Handle, Lsn, Protocol, StableLog, StorageError,
};
use tokio::task::JoinHandle;

use crate::clock::TokioClock;

/// Runs `protocol` over `channel`, `clock` and `log` on a new tokio task.
///
/// This is [`ft_core::driver::driver`] with its future handed to
/// [`tokio::spawn`]: the returned [`Handle`] talks to the core, and the
/// [`JoinHandle`] yields what the driver returned when it stopped (`Ok(())`
/// after [`Handle::shutdown`]; see the driver's docs for the errors).
/// Aborting the `JoinHandle` stops the driver as a crash would.
///
/// If `config`'s codec makes frames larger than the channel's
/// [`max_datagram`](Channel::max_datagram), the driver lowers its payload
/// limit so that every frame fits
/// ([`FrameCodec::fitted`](ft_core::FrameCodec::fitted)): with the default [`DriverConfig`] over a
/// [`UdpChannel`](crate::UdpChannel), whose 8-byte sender header leaves
/// less than a whole UDP datagram for the frame, a message too large for
/// the channel then fails to encode (counted in
/// [`DriverStats::send_failures`](ft_core::DriverStats::send_failures), as a
/// refused send would be) instead of being framed and then refused.
///
/// Must be called within a tokio runtime.
pub fn spawn<P, C, K, L>(
    protocol: P,
    channel: C,
    clock: K,
    log: L,
    config: DriverConfig,
) -> (Handle<P>, JoinHandle<Result<(), DriverError>>)
where
    P: Protocol + Send + 'static,
    P::Message: Send,
    P::Input: Send + 'static,
    P::Event: Send + 'static,
    P::Timer: Send + 'static,
    C: Channel + 'static,
    K: Clock + 'static,
    L: StableLog + 'static,
{
    let (handle, run) = driver(protocol, channel, clock, log, config);
    (handle, tokio::spawn(run))
}

/// [`spawn`] for a protocol that persists nothing, on the [`TokioClock`]
/// with a [`NoLog`]: if the protocol does ask to persist a record, its
/// driver stops with [`DriverError::Storage`] rather than tell it the
/// record is durable.
pub fn spawn_volatile<P, C>(
    protocol: P,
    channel: C,
    config: DriverConfig,
) -> (Handle<P>, JoinHandle<Result<(), DriverError>>)
where
    P: Protocol + Send + 'static,
    P::Message: Send,
    P::Input: Send + 'static,
    P::Event: Send + 'static,
    P::Timer: Send + 'static,
    C: Channel + 'static,
{
    spawn(protocol, channel, TokioClock, NoLog, config)
}

/// A [`StableLog`] for protocols that persist nothing: it holds no records
/// and refuses every append.
///
/// An append of one or more records fails with [`StorageError::Rejected`]:
/// a log that only pretended to store them would let the core *speak
/// before it persisted* on records a crash then loses, so a driver given a
/// `NoLog` by mistake stops instead ([`DriverError::Storage`]). Reads find
/// the log empty, and truncating it does nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoLog;

#[async_trait]
impl StableLog for NoLog {
    async fn append(&self, records: &[Bytes]) -> Result<Lsn, StorageError> {
        if records.is_empty() {
            return Ok(Lsn(0));
        }
        Err(StorageError::Rejected(format!(
            "NoLog stores nothing, and {} record(s) were to be persisted: \
             this protocol needs a real StableLog",
            records.len()
        )))
    }

    async fn read_from(&self, _from: Lsn) -> Result<Vec<(Lsn, Bytes)>, StorageError> {
        Ok(Vec::new())
    }

    /// Nothing was ever appended: the start stays 0, and any `upto` past
    /// it names records that do not exist.
    async fn truncate_prefix(&self, upto: Lsn) -> Result<Lsn, StorageError> {
        if upto > Lsn(0) {
            return Err(StorageError::Rejected(format!(
                "NoLog holds no records, so there is nothing before {} to discard",
                upto.0
            )));
        }
        Ok(Lsn(0))
    }

    async fn next_lsn(&self) -> Result<Lsn, StorageError> {
        Ok(Lsn(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_log_refuses_appends_and_is_empty() {
        assert!(matches!(
            NoLog.append(&[Bytes::from_static(b"x")]).await,
            Err(StorageError::Rejected(_))
        ));
        assert_eq!(NoLog.append(&[]).await.unwrap(), Lsn(0));
        assert!(NoLog.read_from(Lsn(0)).await.unwrap().is_empty());
        assert_eq!(NoLog.next_lsn().await.unwrap(), Lsn(0));
        assert_eq!(NoLog.truncate_prefix(Lsn(0)).await.unwrap(), Lsn(0));
        assert!(matches!(
            NoLog.truncate_prefix(Lsn(5)).await,
            Err(StorageError::Rejected(_))
        ));
    }
}

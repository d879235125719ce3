//! What the client and the server of one RPC node share: who the node is,
//! its configuration, its randomness, its outbox, and its log's
//! bookkeeping (snapshots and compaction).

use ft_core::rng::Rng;
use ft_core::{Incarnation, NodeId, Outbox, PersistToken};

use super::records::{RpcRecord, SnapshotPart};
use super::{CallId, Reincarnation, Rpc, RpcConfig, RpcMessage};

/// What an RPC node did with its log in this life, read with
/// [`Rpc::log_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Snapshots written.
    pub snapshots: u64,
    /// Snapshots that became durable, each followed by a request to
    /// compact the records before it away.
    pub compactions: u64,
    /// Records written since the last snapshot began: with none in this
    /// life yet, those recovered from beyond the last snapshot included.
    pub since_snapshot: u64,
    /// Records of the last snapshot written (its start and end included).
    pub last_snapshot: u64,
    /// Records a snapshot would have taken at the last check whether one
    /// was due: the live set (see [`Compaction`](super::Compaction)).
    pub live: u64,
}

/// The shared part of an [`Rpc`] node. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) config: RpcConfig,
    pub(crate) me: NodeId,
    pub(crate) incarnation: Incarnation,
    pub(crate) rng: Rng,
    pub(crate) out: Outbox<Rpc>,
    /// Records written since the last snapshot began.
    written: usize,
    /// No snapshot before this many records are written (the last check
    /// found the live set too large for one to pay).
    check_at: usize,
    /// The snapshot being made durable: its first and last tokens.
    in_flight: Option<(PersistToken, PersistToken)>,
    stats: LogStats,
}

impl Node {
    pub(crate) fn new(
        config: RpcConfig,
        me: NodeId,
        incarnation: Incarnation,
        rng: Rng,
        out: Outbox<Rpc>,
        written: usize,
    ) -> Self {
        Node {
            config,
            me,
            incarnation,
            rng,
            out,
            written,
            check_at: 0,
            in_flight: None,
            stats: LogStats::default(),
        }
    }

    /// This life's call number `seq`.
    pub(crate) fn call_id(&self, seq: u64) -> CallId {
        CallId {
            client: self.me,
            client_incarnation: self.incarnation,
            seq,
        }
    }

    /// Whether calls are logged before they are sent (extermination, and
    /// gentle reincarnation's claims).
    pub(crate) fn logs_calls(&self) -> bool {
        self.config.orphans.extermination
            || self.config.orphans.reincarnation == Reincarnation::Gentle
    }

    /// Sends `msg` for call `seq`; `again` if it is a retransmission.
    pub(crate) fn send(&mut self, to: NodeId, seq: u64, msg: RpcMessage, again: bool) {
        if again {
            self.out.retransmit(to, seq, msg);
        } else {
            self.out.send(to, msg);
        }
    }

    /// Persists `record`, counting it towards the next snapshot.
    pub(crate) fn persist(&mut self, record: &RpcRecord) -> PersistToken {
        self.written += 1;
        self.out.persist(record)
    }

    pub(crate) fn log_stats(&self) -> LogStats {
        LogStats {
            since_snapshot: self.written as u64,
            ..self.stats
        }
    }

    /// Whether a snapshot may be due: cheap, checked after every step.
    pub(crate) fn snapshot_due(&self) -> bool {
        self.config.compaction.is_some_and(|c| {
            self.in_flight.is_none() && self.written >= self.check_at.max(c.min_records)
        })
    }

    /// Writes `parts` (what the node still needs) as a snapshot, if the
    /// records written since the last one are at least
    /// [`Compaction::multiple`](super::Compaction) times as many as the
    /// snapshot takes; otherwise checks again when they would be, or when
    /// as many records as the snapshot takes were written (the live set
    /// may shrink meanwhile: a restarted server's restored records go as
    /// soon as their clients acknowledge them). A check costs as much as
    /// the snapshot, so checks cost one record's worth per record written.
    pub(crate) fn snapshot(&mut self, parts: Vec<SnapshotPart>) {
        let Some(policy) = self.config.compaction else {
            return;
        };
        let records = parts.len() + 2;
        self.stats.live = records as u64;
        let threshold = records
            .saturating_mul(policy.multiple)
            .max(policy.min_records);
        if self.written < threshold {
            self.check_at = threshold.min(self.written.saturating_add(records));
            return;
        }
        let count = parts.len() as u64;
        let start = self.out.persist(&RpcRecord::Snapshot(SnapshotPart::Start));
        for part in parts {
            self.out.persist(&RpcRecord::Snapshot(part));
        }
        let end = self
            .out
            .persist(&RpcRecord::Snapshot(SnapshotPart::End { parts: count }));
        self.in_flight = Some((start, end));
        self.written = 0;
        self.check_at = 0;
        self.stats.snapshots += 1;
        self.stats.last_snapshot = records as u64;
    }

    /// A record became durable: if it ends the snapshot in flight, the log
    /// before the snapshot is compacted away. Returns whether the token
    /// was one of the snapshot's.
    pub(crate) fn snapshot_persisted(&mut self, token: PersistToken) -> bool {
        let Some((start, end)) = self.in_flight else {
            return false;
        };
        if token == end {
            self.in_flight = None;
            self.stats.compactions += 1;
            self.out.compact(start);
            self.out
                .note("log compacted to a snapshot", None, None, Some(start.0));
        }
        (start..=end).contains(&token)
    }
}

//! What the simulator counts: the evidence that each fault really happened.

/// Counts of everything the simulator did and injected during a run.
///
/// Tests use these to show that a fault was not a no-op: a test that injects
/// loss asserts `lost > 0`, and then that the protocol coped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events taken off the queue.
    pub steps: u64,
    /// Messages the cores (and adversaries) sent: one for each copy of a
    /// multicast.
    pub sent: u64,
    /// Multicasts the cores emitted ([`Output::Multicast`]), one each
    /// whatever the number of destinations. Each copy, one per distinct
    /// destination, goes through the network as a `Send` would, and is
    /// counted as one in `sent`, `delivered`, `lost`, `duplicated` and the
    /// others.
    ///
    /// [`Output::Multicast`]: ft_core::Output::Multicast
    pub multicasts: u64,
    /// Messages handed to a core's `handle_message`.
    pub delivered: u64,
    /// Messages lost by the network (random loss, link loss, the link
    /// model's losses).
    pub lost: u64,
    /// Of those, lost by the caller's [link model](crate::Sim::set_link_model).
    pub model_lost: u64,
    /// Extra copies the network made.
    pub duplicated: u64,
    /// Messages held back so that later ones overtook them.
    pub reordered: u64,
    /// Deliveries that arrived after a message sent later on the same link
    /// (measured at delivery, whatever caused it).
    pub overtaken: u64,
    /// Frames with a bit flipped in transit.
    pub corrupted_in_transit: u64,
    /// Frames dropped at a receiver because their CRC failed.
    pub crc_dropped: u64,
    /// Payloads dropped at a receiver because they did not decode.
    pub decode_errors: u64,
    /// Messages dropped because a partition separated the two ends.
    pub partitioned: u64,
    /// Of those, messages dropped by a one-way partition (the other
    /// direction of the same link was open).
    pub one_way_dropped: u64,
    /// Messages dropped because the receiver was down.
    pub to_down_node: u64,
    /// Messages a node omitted to send.
    pub send_omissions: u64,
    /// Messages a node omitted to receive.
    pub receive_omissions: u64,
    /// Messages that got extra delay from a slow node or link.
    pub slowed: u64,
    /// Nodes whose clock is offset from true time or drifts (timing
    /// failure), counted once when the run is set up.
    pub skewed_clocks: u64,
    /// Timers that fired on a skewed clock: at the true time their node's
    /// clock reached the deadline.
    pub skewed_timers: u64,
    /// Messages whose payload a value failure changed.
    pub value_corruptions: u64,
    /// Received messages handled twice (state-transition failure).
    pub repeated_transitions: u64,
    /// Received messages whose transition was skipped.
    pub skipped_transitions: u64,
    /// Messages sent by Byzantine strategies.
    pub forged: u64,
    /// Messages of Byzantine nodes' honest cores that the strategy suppressed
    /// or replaced.
    pub suppressed_by_adversary: u64,
    /// Crashes.
    pub crashes: u64,
    /// Restarts.
    pub restarts: u64,
    /// Partitions started.
    pub partitions: u64,
    /// One-way partitions started.
    pub one_way_partitions: u64,
    /// Heals.
    pub heals: u64,
    /// Timers that fired.
    pub timers_fired: u64,
    /// Records persisted (became durable).
    pub persisted: u64,
    /// Persists lost because the node crashed before they were durable.
    pub persists_lost: u64,
    /// Compactions carried out at the cores' request.
    pub compactions: u64,
    /// Records dropped by them.
    pub records_compacted: u64,
    /// Application inputs delivered.
    pub inputs: u64,
    /// Application inputs dropped because the node was down.
    pub inputs_to_down_node: u64,
    /// Events the cores emitted.
    pub events: u64,
    /// Invariant evaluations (one per invariant per step).
    pub invariant_checks: u64,
}

//! SWIM's knobs and their defaults.

use std::time::Duration;

use ft_core::NodeId;

/// What a member does when it learns the group has declared it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDeclaredFailed {
    /// Refute like a suspicion: announce itself alive with a higher
    /// incarnation and carry on (memberlist's behaviour).
    Refute,
    /// The subject's option, "on failure detection, pretend you failed as
    /// well": the member acts as failed (fail-stop: it stops probing,
    /// answering and gossiping, so its failure is *announced* rather than
    /// left to timeouts), tells its application, and after `rejoin_after`
    /// (if set) rejoins with a new incarnation. Everyone then agrees the old
    /// incarnation failed, and whatever depended on it can be cleaned up.
    FailStop {
        /// How long to stay failed before rejoining; `None` waits for
        /// [`SwimInput::Rejoin`](super::SwimInput::Rejoin).
        rejoin_after: Option<Duration>,
    },
}

/// Configuration of a [`Swim`](super::Swim) member. The same in every life.
///
/// The defaults are those of HashiCorp memberlist's `DefaultLANConfig`
/// (the best-known production SWIM, with the Lifeguard extensions): probe
/// interval 1 s, probe timeout 500 ms, 3 indirect checks, suspicion
/// multiplier 4, suspicion max-timeout multiplier 6, retransmit multiplier 4,
/// awareness max multiplier 8, gossip to the dead 30 s. The reconnect loop
/// after that comes from Serf (which runs one every 30 s; ours every 10 s).
/// The piggyback bound, the bound on indirect probes served, the bound on
/// hearsay incarnations and the fail-stop option (with a rejoin after one
/// period) are ours: memberlist fills a UDP packet and always refutes.
#[derive(Clone, Debug)]
pub struct SwimConfig {
    /// Every member of the group, this one included. Rumors about anyone
    /// else are ignored, so a view's size is bounded by this list.
    pub members: Vec<NodeId>,
    /// The protocol period: one probe per period.
    pub protocol_period: Duration,
    /// How long a direct ping waits for its ack before asking others.
    pub probe_timeout: Duration,
    /// How many members are asked to ping a silent target indirectly (`k`).
    pub indirect_checks: usize,
    /// The shortest suspicion timeout is
    /// `suspicion_mult × max(1, log10(n)) × protocol_period`.
    pub suspicion_mult: u32,
    /// The longest suspicion timeout, used while nobody else confirms a
    /// suspicion, is this times the shortest (Lifeguard's dynamic
    /// suspicion: independent confirmations shrink it toward the shortest).
    pub suspicion_max_timeout_mult: u32,
    /// Each rumor is piggybacked `retransmit_mult × ceil(log10(n + 1))`
    /// times, enough to reach everyone with high probability.
    pub retransmit_mult: u32,
    /// Lifeguard's local health: timeouts and the period are multiplied by
    /// up to this when the member itself seems slow (its probes fail, its
    /// nacks go missing, it has to refute).
    pub awareness_max_multiplier: u32,
    /// At most this many rumors ride on one message.
    pub max_piggyback: usize,
    /// At most this many indirect probes run on behalf of others at once;
    /// further requests are dropped (a flood must not grow memory).
    pub max_forwarded: usize,
    /// What to do on learning one has been declared failed.
    pub on_declared_failed: OnDeclaredFailed,
    /// Members declared failed less than this long ago stay in the probe
    /// rotation, with the news of their failure piggybacked: a member that
    /// was only cut off (a partition, an omission failure) learns it was
    /// declared failed soon after the cut ends and comes back (memberlist's
    /// "gossip to the dead"). After this, only the slower
    /// [`reconnect_interval`](Self::reconnect_interval) loop reaches them.
    pub gossip_to_the_dead: Duration,
    /// Members declared failed longer ago than
    /// [`gossip_to_the_dead`](Self::gossip_to_the_dead) are still pinged, at
    /// a low rate, for ever (Serf's reconnect loop): every interval, a
    /// member pings one of them, chosen at random, with probability
    /// `failed / live` (capped at 1), so the whole group sends about one
    /// such ping per failed member per interval whatever its size. The ping
    /// carries the news that the target was declared failed, so a member
    /// that was only cut off (a partition of any length) learns it, rejoins,
    /// and its answers carry the views of its side across: without this a
    /// partition that outlasts detection plus `gossip_to_the_dead` would
    /// split the group for ever, each side holding the other failed, since
    /// nothing else is ever sent to a member held failed. `None` turns it
    /// off (and with it the healing of long partitions).
    pub reconnect_interval: Option<Duration>,
    /// How far a rumor heard second-hand (about a member other than the
    /// message's sender) may raise a member's incarnation above what this
    /// member knows of it; a rumor claiming more is dropped and counted
    /// ([`SwimStats::hearsay_refused`](super::SwimStats::hearsay_refused)).
    /// The same bound applies to news about this member itself, against the
    /// incarnation it announced. First-hand word (every message carries its
    /// sender's incarnation) is not bounded, so a member whose incarnation
    /// really is far ahead is believed as soon as it speaks to you.
    ///
    /// Why: only a member itself raises its incarnation, by one per
    /// refutation, rejoin or restart, so an honest jump of more than this
    /// needs that many refutations unseen. Without a bound, one forged
    /// `Failed { victim, u64::MAX }` (or `Alive { victim, u64::MAX - 1 }`
    /// and a restart) leaves the victim unable to outbid the news about
    /// itself: it halts and rejoins for ever. With it, a forger needs
    /// `2⁶⁴ / max_hearsay_rise` forged rumors to saturate anyone.
    pub max_hearsay_rise: u64,
}

impl SwimConfig {
    /// A group of `members` with the defaults.
    pub fn new(members: Vec<NodeId>) -> Self {
        SwimConfig {
            members,
            protocol_period: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            retransmit_mult: 4,
            awareness_max_multiplier: 8,
            max_piggyback: 8,
            max_forwarded: 64,
            on_declared_failed: OnDeclaredFailed::FailStop {
                rejoin_after: Some(Duration::from_secs(1)),
            },
            gossip_to_the_dead: Duration::from_secs(30),
            reconnect_interval: Some(Duration::from_secs(10)),
            max_hearsay_rise: 1 << 16,
        }
    }

    /// `NodeId(0)..NodeId(n)` with the defaults.
    pub fn with_size(n: usize) -> Self {
        SwimConfig::new((0..n as u64).map(NodeId).collect())
    }

    /// The shortest suspicion timeout for a group of `n`.
    pub fn min_suspicion_timeout(&self, n: usize) -> Duration {
        let scale = (n.max(1) as f64).log10().max(1.0);
        let secs = self.protocol_period.as_secs_f64() * f64::from(self.suspicion_mult) * scale;
        // Saturates: an absurd configuration must not panic a member.
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }

    /// The longest suspicion timeout for a group of `n`.
    pub fn max_suspicion_timeout(&self, n: usize) -> Duration {
        self.min_suspicion_timeout(n)
            .saturating_mul(self.suspicion_max_timeout_mult.max(1))
    }

    /// How many times each rumor is piggybacked in a group of `n`.
    pub fn retransmit_limit(&self, n: usize) -> u32 {
        let scale = ((n as f64) + 1.0).log10().ceil().max(1.0) as u32;
        self.retransmit_mult.max(1).saturating_mul(scale)
    }
}

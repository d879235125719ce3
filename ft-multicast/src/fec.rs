//! Forward error correction: parity packets after each block of a
//! sender's messages, so that a receiver rebuilds some lost messages with
//! no feedback at all.
//!
//! # Blocks
//!
//! A group configured [`with_fec`](crate::GroupConfig::with_fec) cuts each
//! sender's stream into blocks of [`Fec::k`] messages: message `s` is in
//! block `(s - 1) / k`. Over a block's payloads, padded with zeros to the
//! longest, Reed–Solomon coding (the [`reed_solomon_simd`] crate) computes
//! up to [`Fec::parity`] recovery shards; each goes out as an
//! [`McastMessage::Parity`], which also carries every message's true
//! length, so padding comes off a rebuilt message exactly. A receiver that
//! holds any `k` of a block's `k + parity` pieces (messages and parity
//! packets) rebuilds the messages it lacks and takes them exactly as if
//! they had arrived: the same ordering, acknowledgements, deliveries and
//! [`Missed`](crate::McastEvent::Missed) reports follow.
//!
//! # Proactive and on demand
//!
//! - [`FecMode::Proactive`]: a sender multicasts `parity` parity packets
//!   after the `k`-th message of each block. A block that stops short (the
//!   sender sends nothing for [`Fec::flush`]) gets parity over what it has,
//!   so the loss of a stream's last messages is repaired too; if the block
//!   fills later, parity over the whole block follows as usual. (A sender
//!   slower than one message per `flush` so sends parity after every
//!   message; a steady faster one, after every `k`.) Receivers hold their first
//!   feedback for a gap [`Fec::wait`] longer than they would without FEC,
//!   so the parity can arrive first: a gap that parity closes costs no NACK
//!   or request at all. Holding is the only cost (no extra state: the
//!   NACK or request timer is set later), and it delays the repair of
//!   losses that parity cannot rebuild by `wait`.
//! - [`FecMode::OnDemand`], for [`Feedback::Nack`] groups: nothing is sent
//!   proactively. A member that holds a whole block answers a request for
//!   losses in it with parity packets instead of the messages themselves,
//!   after SRM's repair delay and suppressed as SRM repairs are: as many
//!   as the most losses any one request heard named in that block (at most
//!   `parity`). One parity packet repairs any one loss at any receiver, so
//!   receivers that lost different messages of a block are all repaired by
//!   the same packets, where repairs of the messages themselves would
//!   take the union of their losses. Requests naming more losses in a
//!   block than `parity` (which parity cannot repair) and blocks not held
//!   whole are repaired message by message, as without FEC. With
//!   [`Feedback::Ack`], repairs are unicast to one asker each, where
//!   parity gains nothing: `OnDemand` is ignored there.
//!
//! # Bounds
//!
//! A receiver keeps pieces only for the blocks of each sender that meet
//! its receive window (the group's [`history`](crate::GroupConfig::history)
//! from the next message to deliver), and forgets a block once all of it
//! is delivered. Parity for a block beyond the window, parity that
//! disagrees with the group's `k` and `parity`, with the messages already
//! held, or with itself (a rebuilt message whose padding is not zero) is
//! dropped and counted ([`McastStats::fec_rejected`](crate::McastStats)).
//! Parity is no more authenticated than data: a member that forges parity
//! could as well forge messages.
//!
//! # Why reed-solomon-simd
//!
//! It is maintained (releases through 2025), pure Rust with runtime
//! selection of SSSE3/AVX2/Neon code and a portable fallback, and codes in
//! O(n log n) (Leopard-RS's algorithm), any 1..=32768 originals with
//! 1..=32768 recovery shards. Its `unsafe` is confined to the SIMD
//! intrinsics, each behind a run-time CPU feature check. The alternative,
//! reed-solomon-erasure, has not been released since 2022 and needs C code
//! (through `cc`) for its SIMD path.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{Incarnation, NodeId, Outbox};

use crate::core::{McastStats, McastTimer, Multicast};
use crate::group::{Feedback, GroupId};
use crate::message::{MAX_FEC_K, McastMessage};

/// How many distances a member takes requests for a block it has just
/// seen answered with parity as having crossed that answer (as SRM does
/// for repairs).
const QUIET_DISTANCES: f64 = 3.0;

/// When a group's parity is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FecMode {
    /// After every block, unasked.
    Proactive,
    /// In answer to requests ([`Feedback::Nack`] groups only).
    OnDemand,
}

/// Forward error correction for a group: see the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct Fec {
    /// Messages per block (1..=[`MAX_FEC_K`]).
    pub k: usize,
    /// Parity packets per block (1..=[`MAX_FEC_K`]): a receiver rebuilds
    /// up to this many lost messages of a block.
    pub parity: usize,
    /// When parity is sent.
    pub mode: FecMode,
    /// With [`FecMode::Proactive`]: how long a sender that stops short of
    /// a block's end waits for its next message before it sends parity
    /// over the block so far (default 5 ms).
    pub flush: Duration,
    /// With `Proactive`: how much longer a receiver holds its first NACK
    /// or request for a gap, for parity to repair it first (default 20 ms:
    /// the flush, and a few network delays).
    pub wait: Duration,
}

impl Fec {
    /// Proactive parity: `parity` packets after every `k` messages.
    pub fn proactive(k: usize, parity: usize) -> Self {
        Fec {
            k,
            parity,
            mode: FecMode::Proactive,
            flush: Duration::from_millis(5),
            wait: Duration::from_millis(20),
        }
    }

    /// Parity on demand, in answer to requests, over blocks of `k`
    /// messages, at most `parity` packets per block.
    pub fn on_demand(k: usize, parity: usize) -> Self {
        Fec {
            mode: FecMode::OnDemand,
            ..Fec::proactive(k, parity)
        }
    }

    /// The same, with parity over a block cut short once the sender has
    /// sent nothing for `flush`.
    #[must_use]
    pub fn with_flush(mut self, flush: Duration) -> Self {
        self.flush = flush;
        self
    }

    /// The same, with receivers holding their first feedback `wait`
    /// longer.
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// In range, or `None` where it has no use (on demand with
    /// acknowledgements).
    pub(crate) fn normalized(mut self, feedback: &Feedback) -> Option<Self> {
        if self.mode == FecMode::OnDemand && matches!(feedback, Feedback::Ack) {
            return None;
        }
        self.k = self.k.clamp(1, MAX_FEC_K);
        self.parity = self.parity.clamp(1, MAX_FEC_K);
        Some(self)
    }
}

// ---- the code ----

/// The length a block's messages are padded to: the longest, rounded up
/// to even (the code works on pairs of bytes), at least 2.
pub(crate) fn shard_len(lens: &[u32]) -> usize {
    let longest = lens.iter().copied().max().unwrap_or(0) as usize;
    (longest + longest % 2).max(2)
}

fn padded(payload: &[u8], len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(payload);
    v.resize(len, 0);
    v
}

/// The lengths of `payloads` and their `parity` recovery shards (`None`
/// only for counts the code does not support, which configurations never
/// reach).
pub(crate) fn encode(payloads: &[Bytes], parity: usize) -> Option<(Vec<u32>, Vec<Bytes>)> {
    let lens: Vec<u32> = payloads
        .iter()
        .map(|p| u32::try_from(p.len()).unwrap_or(u32::MAX))
        .collect();
    let len = shard_len(&lens);
    let shards = reed_solomon_simd::encode(
        payloads.len(),
        parity,
        payloads.iter().map(|p| padded(p, len)),
    )
    .ok()?;
    Some((lens, shards.into_iter().map(Bytes::from).collect()))
}

/// Rebuilds the messages of a block of `lens.len()` messages that `have`
/// (index → message) lacks, from `have` and `shards` (parity index →
/// shard, each [`shard_len`] long, out of `parity`). `None` when they are
/// too few, or when the parity disagrees with itself: a rebuilt message's
/// padding is not zero.
pub(crate) fn decode(
    lens: &[u32],
    parity: usize,
    have: &BTreeMap<usize, Bytes>,
    shards: &BTreeMap<u16, Bytes>,
) -> Option<Vec<(usize, Bytes)>> {
    let count = lens.len();
    let len = shard_len(lens);
    let originals = have.range(..count).map(|(&i, p)| (i, padded(p, len)));
    let recovery = shards
        .iter()
        .map(|(&i, s)| (usize::from(i), s))
        .filter(|&(i, _)| i < parity);
    let rebuilt = reed_solomon_simd::decode(count, parity, originals, recovery).ok()?;
    let mut out = Vec::with_capacity(rebuilt.len());
    for (i, mut shard) in rebuilt {
        let true_len = *lens.get(i)? as usize;
        if shard.len() != len || shard[true_len..].iter().any(|&b| b != 0) {
            return None;
        }
        shard.truncate(true_len);
        out.push((i, Bytes::from(shard)));
    }
    Some(out)
}

// ---- state ----

/// A group's forward error correction state.
pub(crate) struct FecState {
    pub(crate) config: Fec,
    /// This node's block being filled (proactive): its number, the
    /// messages sent in it so far, and how many of them the last parity
    /// covered.
    block: u64,
    sent: Vec<Bytes>,
    covered: usize,
    /// What this node receives of each other member's stream.
    rx: BTreeMap<NodeId, RxStream>,
    /// On demand: answers waiting for their timer, (source, block) → the
    /// asker and how many parity packets.
    answers: BTreeMap<(NodeId, u64), (NodeId, usize)>,
    /// On demand: (source, block) answered lately, here or by another
    /// member: until when requests for it are taken as crossing the
    /// answer.
    quiet: BTreeMap<(NodeId, u64), Instant>,
}

/// One sender's blocks, in one of its lives.
struct RxStream {
    life: Incarnation,
    blocks: BTreeMap<u64, RxBlock>,
}

/// What a receiver holds of one block.
#[derive(Default)]
struct RxBlock {
    /// The block's messages received (or rebuilt), by index in the block.
    data: BTreeMap<usize, Bytes>,
    /// The lengths the parity held says the messages have (empty: no
    /// parity held); it covers the block's first `lens.len()` messages.
    lens: Vec<u32>,
    /// The parity packets held, by index.
    shards: BTreeMap<u16, Bytes>,
}

impl RxBlock {
    fn drop_parity(&mut self) {
        self.lens.clear();
        self.shards.clear();
    }
}

impl FecState {
    pub(crate) fn new(config: Fec) -> Self {
        FecState {
            config,
            block: 0,
            sent: Vec::new(),
            covered: 0,
            rx: BTreeMap::new(),
            answers: BTreeMap::new(),
            quiet: BTreeMap::new(),
        }
    }

    /// Messages, parity packets and answers held (for bounds).
    pub(crate) fn held(&self) -> usize {
        let rx: usize = self
            .rx
            .values()
            .flat_map(|r| r.blocks.values())
            .map(|b| b.data.len() + b.shards.len())
            .sum();
        self.sent.len() + rx + self.answers.len() + self.quiet.len()
    }

    /// The blocks of `from`'s life `life`, forgotten if of another life,
    /// without those wholly before `next`.
    fn rx(&mut self, from: NodeId, life: Incarnation, next: u64) -> &mut RxStream {
        let k = self.config.k as u64;
        let r = self.rx.entry(from).or_insert_with(|| RxStream {
            life,
            blocks: BTreeMap::new(),
        });
        if r.life != life {
            r.life = life;
            r.blocks.clear();
        }
        r.blocks = r.blocks.split_off(&((next - 1) / k));
        r
    }

    /// Whether a request naming `ranges` leaves `origin`'s message `seq`
    /// to a parity answer (this member's, pending, or one seen lately).
    pub(crate) fn answering(
        &self,
        now: Instant,
        origin: NodeId,
        seq: u64,
        ranges: &[(u64, u64)],
    ) -> bool {
        if self.config.mode != FecMode::OnDemand || seq == 0 {
            return false;
        }
        let block = (seq - 1) / self.config.k as u64;
        let key = (origin, block);
        (self.answers.contains_key(&key) || self.quiet.get(&key).is_some_and(|&t| now < t))
            && losses(ranges, block, self.config.k as u64) <= self.config.parity as u64
    }
}

/// How many numbers of block `block` (of `k`) `ranges` name.
fn losses(ranges: &[(u64, u64)], block: u64, k: u64) -> u64 {
    let (first, last) = (block * k + 1, block * k + k);
    ranges
        .iter()
        .map(|&(a, b)| {
            let (a, b) = (a.max(first), b.min(last));
            if a <= b { b - a + 1 } else { 0 }
        })
        .sum()
}

/// Multicasts the parity packets `indices` over `payloads`, block `block`
/// of `origin`'s life `life`.
#[allow(clippy::too_many_arguments)]
fn multicast_parity(
    out: &mut Outbox<Multicast>,
    stats: &mut McastStats,
    to: &[NodeId],
    (group, origin, life, block): (GroupId, NodeId, Incarnation, u64),
    k: usize,
    parity: usize,
    payloads: &[Bytes],
    indices: impl Iterator<Item = usize>,
) {
    let Some((lens, shards)) = encode(payloads, parity) else {
        return;
    };
    for index in indices {
        let Some(shard) = shards.get(index) else {
            continue;
        };
        stats.parity_sent += 1;
        out.multicast(
            to.to_vec(),
            McastMessage::Parity {
                group,
                origin,
                life,
                block,
                k: k as u16,
                index: index as u16,
                lens: lens.clone(),
                shard: shard.clone(),
            },
        );
    }
}

impl Multicast {
    // ---- the sender ----

    /// This node sent `payload` as message `seq` in `group`: proactive
    /// parity after the block's last message, or the flush timer set (or
    /// set again: it fires once the sender pauses).
    pub(crate) fn fec_sent(&mut self, now: Instant, group: GroupId, seq: u64, payload: Bytes) {
        let life = self.life;
        let me = self.me;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(f) = &mut g.fec else { return };
        if f.config.mode != FecMode::Proactive {
            return;
        }
        let k = f.config.k;
        let block = (seq - 1) / k as u64;
        if block != f.block {
            f.block = block;
            f.sent.clear();
            f.covered = 0;
        }
        f.sent.push(payload);
        if f.sent.len() >= k {
            let id = (group, me, life, block);
            let parity = f.config.parity;
            multicast_parity(
                &mut self.out,
                &mut self.stats,
                &g.others,
                id,
                k,
                parity,
                &f.sent,
                0..parity,
            );
            f.block += 1;
            f.sent.clear();
            f.covered = 0;
        } else {
            let flush = f.config.flush;
            self.out
                .set_timer_after(McastTimer::FecFlush(group), now, flush);
        }
    }

    /// The flush timer fired (the sender paused): parity over the
    /// messages of the block being filled, if some are not covered yet.
    pub(crate) fn fec_flush(&mut self, group: GroupId) {
        let life = self.life;
        let me = self.me;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(f) = &mut g.fec else { return };
        if f.sent.len() <= f.covered {
            return;
        }
        let parity = f.config.parity;
        multicast_parity(
            &mut self.out,
            &mut self.stats,
            &g.others,
            (group, me, life, f.block),
            f.config.k,
            parity,
            &f.sent,
            0..parity,
        );
        f.covered = f.sent.len();
    }

    // ---- the receiver ----

    /// The first NACK for a gap in `from`'s stream: at once, or after
    /// [`Fec::wait`] when proactive parity may repair it first.
    pub(crate) fn first_nack(&mut self, now: Instant, group: GroupId, from: NodeId) {
        match self.fec_wait(group) {
            Some(wait) => self
                .out
                .set_timer_after(McastTimer::Nack(group, from), now, wait),
            None => self.nack(now, group, from),
        }
    }

    /// How much longer a receiver holds its first NACK for a gap in
    /// `group`: FEC's wait, if any (an ACK-based group's FEC is always
    /// proactive: on demand is normalized away there).
    pub(crate) fn fec_wait(&self, group: GroupId) -> Option<Duration> {
        Some(self.groups.get(&group)?.fec.as_ref()?.config.wait)
    }

    /// A message `seq` of `from`'s life `life` arrived (and was taken as
    /// any): kept with its block while that block may need rebuilding,
    /// and the block rebuilt if it now can be.
    pub(crate) fn fec_on_data(
        &mut self,
        now: Instant,
        from: NodeId,
        group: GroupId,
        life: Incarnation,
        seq: u64,
        payload: Bytes,
    ) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(f) = &mut g.fec else { return };
        let Some(s) = g.streams.get(&from).filter(|s| s.life == life) else {
            return;
        };
        let k = f.config.k as u64;
        let next = s.next;
        let block = (seq - 1) / k;
        // Blocks wholly delivered are forgotten (and those beyond the
        // window never come here: the stream did not take the message).
        let rx = f.rx(from, life, next);
        if block < (next - 1) / k {
            return;
        }
        let b = rx.blocks.entry(block).or_default();
        let i = ((seq - 1) % k) as usize;
        if b.lens.get(i).is_some_and(|&l| l as usize != payload.len()) {
            // The parity held disagrees with the source's own message.
            self.stats.fec_rejected += 1;
            b.drop_parity();
        }
        b.data.insert(i, payload);
        self.fec_rebuild(now, group, from, life, block);
    }

    /// Rebuilds what block `block` of `origin`'s stream lacks, if it holds
    /// enough pieces, and takes the rebuilt messages as if they had
    /// arrived.
    fn fec_rebuild(
        &mut self,
        now: Instant,
        group: GroupId,
        origin: NodeId,
        life: Incarnation,
        block: u64,
    ) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(f) = &mut g.fec else { return };
        let Some(b) =
            f.rx.get_mut(&origin)
                .filter(|r| r.life == life)
                .and_then(|r| r.blocks.get_mut(&block))
        else {
            return;
        };
        let count = b.lens.len();
        let have = b.data.range(..count).count();
        if have >= count || have + b.shards.len() < count {
            return;
        }
        let Some(rebuilt) = decode(&b.lens, f.config.parity, &b.data, &b.shards) else {
            self.stats.fec_rejected += 1;
            b.drop_parity();
            return;
        };
        for (i, p) in &rebuilt {
            b.data.insert(*i, p.clone());
        }
        let k = f.config.k as u64;
        for (i, payload) in rebuilt {
            let seq = block * k + i as u64 + 1;
            // Base 1: a rebuilt message says nothing of what the source
            // still holds.
            if self.take_data(now, origin, group, life, (seq, 1, payload)) {
                self.stats.fec_recovered += 1;
            }
        }
        // The blocks the rebuilt messages completed are forgotten now, not
        // at the next message.
        if let Some(g) = self.groups.get_mut(&group)
            && let (Some(f), Some(s)) = (&mut g.fec, g.streams.get(&origin))
            && s.life == life
        {
            f.rx(origin, life, s.next);
        }
    }

    /// A parity packet: see [`McastMessage::Parity`].
    pub(crate) fn on_parity(&mut self, now: Instant, from: NodeId, msg: McastMessage) {
        let McastMessage::Parity {
            group,
            origin,
            life,
            block,
            k,
            index,
            lens,
            shard,
        } = msg
        else {
            return;
        };
        let me = self.me;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let window = g.config.history as u64;
        let max_payload = g.config.max_payload;
        let Some(f) = &mut g.fec else {
            self.stats.ignored += 1;
            return;
        };
        let consistent = usize::from(k) == f.config.k
            && usize::from(index) < f.config.parity
            && !lens.is_empty()
            && lens.len() <= f.config.k
            && lens.iter().all(|&l| l as usize <= max_payload)
            && shard.len() == shard_len(&lens);
        if !consistent {
            self.stats.fec_rejected += 1;
            return;
        }
        let key = (origin, block);
        if f.answers.remove(&key).is_some() {
            // Another member answered first: ours would be one too many,
            // and the requests that crossed its answer are answered.
            self.out
                .cancel_timer(McastTimer::FecRepair(group, origin, block));
            if let Some(srm) = &g.srm {
                let quiet_for = srm.distance(from).mul_f64(QUIET_DISTANCES);
                f.quiet.retain(|_, &mut until| until > now);
                f.quiet.insert(key, now + quiet_for);
            }
        }
        if origin == me {
            return;
        }
        let Some(s) = g.streams.get_mut(&origin).filter(|s| s.life == life) else {
            // A stream not heard of (yet), or of another life.
            self.stats.fec_rejected += 1;
            return;
        };
        let k = u64::from(k);
        let (first, last) = (block * k + 1, block * k + lens.len() as u64);
        if last < s.next {
            self.stats.duplicates += 1;
            return;
        }
        if first > s.next + window - 1 {
            // Beyond the window: not kept, as a message there is not.
            self.stats.fec_rejected += 1;
            return;
        }
        let next = s.next;
        let rx = f.rx(origin, life, next);
        let b = rx.blocks.entry(block).or_default();
        if lens.len() < b.lens.len() {
            // Parity over the block's first messages, sent before it
            // filled: the parity held covers more.
            self.stats.duplicates += 1;
            return;
        }
        if lens.len() > b.lens.len() {
            b.lens = lens;
            b.shards.clear();
        } else if b.lens != lens {
            self.stats.fec_rejected += 1;
            return;
        }
        if b.data
            .range(..b.lens.len())
            .any(|(&i, p)| p.len() != b.lens[i] as usize)
        {
            // It disagrees with the messages held.
            self.stats.fec_rejected += 1;
            b.drop_parity();
            return;
        }
        if b.shards.insert(index, shard).is_some() {
            self.stats.duplicates += 1;
        }
        // The parity shows that the block's messages exist: the loss of a
        // stream's last messages shows here.
        s.highest = s.highest.max(last);
        self.fec_rebuild(now, group, origin, life, block);
        self.fec_gap(now, group, origin);
    }

    /// After parity: what it could not rebuild is asked for, as a gap seen
    /// in the messages would be.
    fn fec_gap(&mut self, now: Instant, group: GroupId, origin: NodeId) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let srm = g.srm.is_some();
        let Some(s) = g.streams.get_mut(&origin) else {
            return;
        };
        if s.first_gap().is_none() {
            return;
        }
        if srm {
            self.schedule_request(now, group, origin);
        } else if !s.nack_due {
            s.nack_due = true;
            self.first_nack(now, group, origin);
        }
    }

    // ---- on demand ----

    /// A request for `ranges` of `origin`'s life `life`: the blocks this
    /// member holds whole, and in which the request names at most
    /// `parity` losses, are answered with parity after a repair delay.
    /// (The repairs of single messages, in [`Multicast::on_request`], skip
    /// what is so answered.)
    pub(crate) fn fec_on_request(
        &mut self,
        now: Instant,
        asker: NodeId,
        group: GroupId,
        origin: NodeId,
        life: Incarnation,
        ranges: &[(u64, u64)],
    ) {
        let (me, my_life) = (self.me, self.life);
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let (Some(f), Some(srm)) = (&mut g.fec, &g.srm) else {
            return;
        };
        if f.config.mode != FecMode::OnDemand {
            return;
        }
        // What this member holds of the stream, as an interval.
        let (lo, hi) = if origin == me {
            if life != my_life {
                return;
            }
            (g.history.base(), g.history.highest())
        } else {
            match g
                .streams
                .get(&origin)
                .filter(|s| s.life == life)
                .and_then(|s| Some((s.recent.front()?.0, s.recent.back()?.0)))
            {
                Some(held) => held,
                None => return,
            }
        };
        let k = f.config.k as u64;
        // The blocks held whole: from the first starting at or after `lo`
        // to the last ending at or before `hi`.
        let first_block = (lo - 1).div_ceil(k);
        let Some(last_block) = (hi / k).checked_sub(1) else {
            return;
        };
        if first_block > last_block {
            return;
        }
        let mut blocks = Vec::new();
        for &(a, b) in ranges {
            let (a, b) = (a.max(first_block * k + 1), b.min(last_block * k + k));
            if a > b {
                continue;
            }
            for block in (a - 1) / k..=(b - 1) / k {
                blocks.push(block);
            }
        }
        blocks.sort_unstable();
        blocks.dedup();
        let d = srm.distance(asker);
        let (d1, d2, spread) = (srm.params.d1, srm.params.d2, srm.params.spread);
        let members = g.config.members.len();
        f.quiet.retain(|_, &mut until| until > now);
        for block in blocks {
            let n = losses(ranges, block, k);
            let key = (origin, block);
            if n > f.config.parity as u64 || f.quiet.contains_key(&key) {
                continue;
            }
            let n = n as usize;
            match f.answers.get_mut(&key) {
                Some((_, most)) => *most = (*most).max(n),
                None => {
                    f.answers.insert(key, (asker, n));
                    let after = crate::srm::delay(&mut self.rng, spread, members, d, d1, d2, 0);
                    self.out
                        .set_timer(McastTimer::FecRepair(group, origin, block), now + after);
                }
            }
        }
    }

    /// An answer's timer fired: parity for block `block` of `origin`'s
    /// stream, unless another member answered first.
    pub(crate) fn fec_answer(&mut self, now: Instant, group: GroupId, origin: NodeId, block: u64) {
        let (me, my_life) = (self.me, self.life);
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let (Some(f), Some(srm)) = (&mut g.fec, &g.srm) else {
            return;
        };
        let Some((asker, n)) = f.answers.remove(&(origin, block)) else {
            return;
        };
        let k = f.config.k;
        let first = block * k as u64 + 1;
        let (life, payloads) = if origin == me {
            let p: Option<Vec<Bytes>> = (0..k as u64)
                .map(|i| g.history.get(first + i).cloned())
                .collect();
            (my_life, p)
        } else {
            let Some(s) = g.streams.get(&origin) else {
                return;
            };
            let p: Option<Vec<Bytes>> = (0..k as u64)
                .map(|i| s.recent(first + i).cloned())
                .collect();
            (s.life, p)
        };
        // Forgotten since the request: the next request is answered
        // message by message.
        let Some(payloads) = payloads else { return };
        f.quiet.retain(|_, &mut until| until > now);
        let quiet_for = srm.distance(asker).mul_f64(QUIET_DISTANCES);
        f.quiet.insert((origin, block), now + quiet_for);
        // From a random index: a receiver asking again (it lost the first
        // answer's packets, or needed more) likely gets packets it lacks.
        let parity = f.config.parity;
        let start = self.rng.below(parity as u64) as usize;
        self.out.count_retransmissions(n as u64);
        multicast_parity(
            &mut self.out,
            &mut self.stats,
            &g.others,
            (group, origin, life, block),
            k,
            parity,
            &payloads,
            (0..n).map(|j| (start + j) % parity),
        );
    }

    /// How much forward error correction state this node holds.
    pub(crate) fn fec_held(&self) -> usize {
        self.groups
            .values()
            .filter_map(|g| g.fec.as_ref())
            .map(FecState::held)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(payloads: &[&[u8]]) -> Vec<Bytes> {
        payloads.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn a_block_round_trips_with_unequal_and_empty_payloads() {
        let payloads = block(&[b"", b"a", b"hello", b"", b"odd length!", b"xy"]);
        let (lens, shards) = encode(&payloads, 3).unwrap();
        assert_eq!(lens, vec![0, 1, 5, 0, 11, 2]);
        assert_eq!(shards.len(), 3);
        assert!(shards.iter().all(|s| s.len() == 12));
        // Every way of losing up to three messages is rebuilt exactly.
        let n = payloads.len();
        for lost in 0u32..(1 << n) {
            if lost.count_ones() > 3 || lost == 0 {
                continue;
            }
            let have: BTreeMap<usize, Bytes> = (0..n)
                .filter(|i| lost & (1 << i) == 0)
                .map(|i| (i, payloads[i].clone()))
                .collect();
            // As many parity packets as losses, from the end.
            let need = lost.count_ones() as usize;
            let parity: BTreeMap<u16, Bytes> = (3 - need..3)
                .map(|i| (i as u16, shards[i].clone()))
                .collect();
            let rebuilt = decode(&lens, 3, &have, &parity).expect("rebuilt");
            assert_eq!(rebuilt.len(), need);
            for (i, p) in rebuilt {
                assert!(lost & (1 << i) != 0);
                assert_eq!(p, payloads[i], "message {i}, lost {lost:b}");
            }
        }
    }

    #[test]
    fn too_few_pieces_rebuild_nothing() {
        let payloads = block(&[b"one", b"two", b"three"]);
        let (lens, shards) = encode(&payloads, 1).unwrap();
        let have: BTreeMap<usize, Bytes> = [(0, payloads[0].clone())].into();
        let parity: BTreeMap<u16, Bytes> = [(0, shards[0].clone())].into();
        assert_eq!(decode(&lens, 1, &have, &parity), None);
    }

    #[test]
    fn single_messages_and_all_empty_blocks_work() {
        let (lens, shards) = encode(&block(&[b"only"]), 1).unwrap();
        let rebuilt = decode(&lens, 1, &BTreeMap::new(), &[(0, shards[0].clone())].into());
        assert_eq!(rebuilt, Some(vec![(0, Bytes::from_static(b"only"))]));
        let (lens, shards) = encode(&block(&[b"", b""]), 2).unwrap();
        assert_eq!(shard_len(&lens), 2);
        let rebuilt = decode(
            &lens,
            2,
            &BTreeMap::new(),
            &shards
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, s)| (i as u16, s))
                .collect(),
        );
        assert_eq!(rebuilt, Some(vec![(0, Bytes::new()), (1, Bytes::new())]));
    }

    #[test]
    fn parity_that_disagrees_with_itself_is_refused() {
        let payloads = block(&[b"a", b"bbbbbbbb", b"cc"]);
        let (lens, shards) = encode(&payloads, 2).unwrap();
        let have: BTreeMap<usize, Bytes> = [(1, payloads[1].clone())].into();
        let mut bad = shards[0].to_vec();
        bad[7] ^= 0x5a;
        let parity: BTreeMap<u16, Bytes> = [(0, Bytes::from(bad)), (1, shards[1].clone())].into();
        // Message 0 (one byte, padded to 8) rebuilt from a garbled shard
        // has a non-zero padding.
        assert_eq!(decode(&lens, 2, &have, &parity), None);
    }
}

#[cfg(test)]
mod protocol_tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use ft_core::{Incarnation, NodeId, Output, Protocol, Recover, RecoveryContext};

    use super::Fec;
    use crate::core::{McastConfig, McastEvent, McastInput, McastTimer, Multicast};
    use crate::group::{Feedback, GroupConfig, GroupId, Srm};
    use crate::message::McastMessage;

    const G: GroupId = GroupId(1);
    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);
    const D: NodeId = NodeId(4);
    const HISTORY: usize = 16;

    fn node(me: NodeId, fec: Fec, feedback: Feedback, now: Instant) -> Multicast {
        let group = GroupConfig::new(G, [A, B, C, D])
            .with_history(HISTORY)
            .with_feedback(feedback)
            .with_fec(fec);
        let ctx = RecoveryContext {
            node: me,
            incarnation: Incarnation::FIRST,
            records: Vec::new(),
            seed: me.0,
            now,
        };
        let mut m = Multicast::recover(&McastConfig::new(vec![group]), ctx).unwrap();
        while m.poll_output().is_some() {}
        m
    }

    #[derive(Default)]
    struct Out {
        msgs: Vec<McastMessage>,
        timers: Vec<(McastTimer, Instant)>,
        delivered: Vec<u64>,
    }

    fn drain(m: &mut Multicast) -> Out {
        let mut out = Out::default();
        while let Some(o) = m.poll_output() {
            match o {
                Output::Send { msg, .. } | Output::Multicast { msg, .. } => out.msgs.push(msg),
                Output::SetTimer { timer, at } => out.timers.push((timer, at)),
                Output::Event(McastEvent::Delivered { seq, .. }) => out.delivered.push(seq),
                _ => {}
            }
        }
        out
    }

    fn send(m: &mut Multicast, now: Instant, n: u64) -> Out {
        for token in 0..n {
            // Unequal lengths, one of them empty.
            let payload = Bytes::from(vec![token as u8 + 1; (token as usize * 7) % 12]);
            m.handle_input(
                now,
                McastInput::Send {
                    group: G,
                    token,
                    payload,
                },
            );
        }
        drain(m)
    }

    fn is_data(m: &McastMessage, n: u64) -> bool {
        matches!(m, McastMessage::Data { seq, .. } if *seq == n)
    }

    fn parity(msgs: &[McastMessage]) -> Vec<McastMessage> {
        msgs.iter()
            .filter(|m| matches!(m, McastMessage::Parity { .. }))
            .cloned()
            .collect()
    }

    fn timer_at(out: &Out, timer: &McastTimer) -> Option<Instant> {
        out.timers
            .iter()
            .find(|(t, _)| t == timer)
            .map(|&(_, at)| at)
    }

    /// A sends a block of 4 (2 parity packets); B loses `lost`; B is fed the
    /// rest in order, then fires whatever feedback timer it set.
    fn lose(feedback: Feedback, lost: &[u64]) -> (Multicast, Multicast, Out) {
        let now = Instant::now();
        let fec = Fec::proactive(4, 2);
        let mut a = node(A, fec.clone(), feedback.clone(), now);
        let mut b = node(B, fec, feedback, now);
        let sent = send(&mut a, now, 4);
        assert_eq!(
            parity(&sent.msgs).len(),
            2,
            "two parity packets after the block"
        );
        assert_eq!(a.stats().parity_sent, 2);
        let mut got = Out::default();
        for msg in sent.msgs {
            if lost.iter().any(|&n| is_data(&msg, n)) {
                continue;
            }
            b.handle_message(now, A, msg);
            let o = drain(&mut b);
            got.delivered.extend(o.delivered);
            got.msgs.extend(o.msgs);
            got.timers.extend(o.timers);
        }
        (a, b, got)
    }

    #[test]
    fn up_to_parity_losses_are_rebuilt_with_no_feedback_in_ack_mode() {
        let (_, mut b, got) = lose(Feedback::Ack, &[2, 3]);
        assert_eq!(got.delivered, vec![1, 2, 3, 4]);
        assert_eq!(b.stats().fec_recovered, 2);
        // The first NACK was held for the parity, not sent...
        let at = timer_at(&got, &McastTimer::Nack(G, A)).expect("a held NACK");
        assert!(
            !got.msgs
                .iter()
                .any(|m| matches!(m, McastMessage::Nack { .. }))
        );
        // ...and finds nothing to ask for when it fires.
        b.handle_timer(at, McastTimer::Nack(G, A));
        assert!(
            !drain(&mut b)
                .msgs
                .iter()
                .any(|m| matches!(m, McastMessage::Nack { .. }))
        );
        assert_eq!(b.stats().nacks_sent, 0);
    }

    #[test]
    fn up_to_parity_losses_are_rebuilt_with_no_request_in_nack_mode() {
        let (_, mut b, got) = lose(Feedback::Nack(Srm::default()), &[1, 4]);
        assert_eq!(got.delivered, vec![1, 2, 3, 4]);
        assert_eq!(b.stats().fec_recovered, 2);
        if let Some(at) = timer_at(&got, &McastTimer::Request(G, A)) {
            b.handle_timer(at, McastTimer::Request(G, A));
        }
        assert!(
            !drain(&mut b)
                .msgs
                .iter()
                .any(|m| matches!(m, McastMessage::Request { .. }))
        );
        assert_eq!(b.stats().nacks_sent, 0);
    }

    #[test]
    fn the_first_feedback_waits_for_parity_only_as_long_as_configured() {
        let now = Instant::now();
        let fec = Fec::proactive(4, 2).with_wait(Duration::from_millis(33));
        let mut b = node(B, fec, Feedback::Ack, now);
        b.handle_message(
            now,
            A,
            McastMessage::Data {
                group: G,
                life: Incarnation::FIRST,
                seq: 2,
                base: 1,
                payload: Bytes::new(),
            },
        );
        let o = drain(&mut b);
        assert_eq!(
            timer_at(&o, &McastTimer::Nack(G, A)),
            Some(now + Duration::from_millis(33))
        );
        assert_eq!(b.stats().nacks_sent, 0);
        // With SRM: the request delay, [c1·d, (c1+c2)·d] = [10, 30] ms
        // before a distance is measured, and the wait on top.
        let fec = Fec::proactive(4, 2).with_wait(Duration::from_millis(33));
        let mut b = node(B, fec, Feedback::Nack(Srm::default()), now);
        b.handle_message(
            now,
            A,
            McastMessage::Data {
                group: G,
                life: Incarnation::FIRST,
                seq: 2,
                base: 1,
                payload: Bytes::new(),
            },
        );
        let at = timer_at(&drain(&mut b), &McastTimer::Request(G, A)).expect("a request timer");
        assert!(at >= now + Duration::from_millis(43), "{:?}", at - now);
        assert!(at <= now + Duration::from_millis(63), "{:?}", at - now);
        // On demand, no parity comes unasked: nothing to wait for.
        let fec = Fec::on_demand(4, 2).with_wait(Duration::from_millis(33));
        let mut b = node(B, fec, Feedback::Nack(Srm::default()), now);
        b.handle_message(
            now,
            A,
            McastMessage::Data {
                group: G,
                life: Incarnation::FIRST,
                seq: 2,
                base: 1,
                payload: Bytes::new(),
            },
        );
        let at = timer_at(&drain(&mut b), &McastTimer::Request(G, A)).expect("a request timer");
        assert!(at <= now + Duration::from_millis(30), "{:?}", at - now);
    }

    #[test]
    fn a_message_that_disagrees_with_the_parity_held_drops_it() {
        let now = Instant::now();
        let mut b = node(B, Fec::proactive(4, 2), Feedback::Ack, now);
        b.handle_message(
            now,
            A,
            McastMessage::Data {
                group: G,
                life: Incarnation::FIRST,
                seq: 6,
                base: 1,
                payload: Bytes::new(),
            },
        );
        // Parity for block 0 says every message is 6 bytes long...
        b.handle_message(
            now,
            A,
            McastMessage::Parity {
                group: G,
                origin: A,
                life: Incarnation::FIRST,
                block: 0,
                k: 4,
                index: 0,
                lens: vec![6; 4],
                shard: Bytes::from(vec![7; 6]),
            },
        );
        assert_eq!((b.held().fec, b.stats().fec_rejected), (2, 0));
        // ...but message 1 from the source has 2.
        b.handle_message(
            now,
            A,
            McastMessage::Data {
                group: G,
                life: Incarnation::FIRST,
                seq: 1,
                base: 1,
                payload: Bytes::from_static(b"ab"),
            },
        );
        assert_eq!(b.stats().fec_rejected, 1);
        assert_eq!(
            b.held().fec,
            2,
            "the parity is dropped, messages 1 and 6 kept"
        );
    }

    #[test]
    fn messages_skipped_before_the_senders_base_are_not_counted_rebuilt() {
        let now = Instant::now();
        let fec = Fec::proactive(4, 2);
        let mut a = node(A, fec.clone(), Feedback::Ack, now);
        let mut b = node(B, fec, Feedback::Ack, now);
        let sent = send(&mut a, now, 4);
        // B hears of A's stream from message 2, which says A holds nothing
        // older (base 2): 1 is missed. Message 3 is lost.
        let McastMessage::Data { payload, .. } = sent.msgs[1].clone() else {
            unreachable!()
        };
        let second = McastMessage::Data {
            group: G,
            life: Incarnation::FIRST,
            seq: 2,
            base: 2,
            payload,
        };
        b.handle_message(now, A, second);
        b.handle_message(now, A, sent.msgs[3].clone());
        for p in parity(&sent.msgs) {
            b.handle_message(now, A, p);
        }
        // The parity rebuilds 1 and 3; only 3 is taken.
        assert_eq!(drain(&mut b).delivered, vec![2, 3, 4]);
        assert_eq!(b.stats().fec_recovered, 1);
    }

    #[test]
    fn a_restarted_senders_blocks_are_not_mixed_with_its_old_lifes() {
        let now = Instant::now();
        let fec = Fec::proactive(4, 2);
        let mut b = node(B, fec.clone(), Feedback::Ack, now);
        // Messages 1 to 3 of A's first life arrive, then A restarts.
        let mut a = node(A, fec.clone(), Feedback::Ack, now);
        let old = send(&mut a, now, 3);
        for m in old
            .msgs
            .iter()
            .filter(|m| matches!(m, McastMessage::Data { .. }))
        {
            b.handle_message(now, A, m.clone());
        }
        let ctx = RecoveryContext {
            node: A,
            incarnation: Incarnation(1),
            records: Vec::new(),
            seed: 9,
            now,
        };
        let group = GroupConfig::new(G, [A, B, C, D])
            .with_history(HISTORY)
            .with_fec(fec);
        let mut a = Multicast::recover(&McastConfig::new(vec![group]), ctx).unwrap();
        drain(&mut a);
        drain(&mut b);
        // Its new life's block 0, other payloads: B gets messages 1 and 2
        // and both parity packets, and rebuilds 3 and 4 of the new life.
        let new: Vec<McastMessage> = (0..4u8)
            .flat_map(|t| {
                a.handle_input(
                    now,
                    McastInput::Send {
                        group: G,
                        token: 0,
                        payload: Bytes::from(vec![b'n' + t; 3]),
                    },
                );
                drain(&mut a).msgs
            })
            .collect();
        let mut delivered = Vec::new();
        for m in new.into_iter().filter(|m| !is_data(m, 3) && !is_data(m, 4)) {
            b.handle_message(now, A, m);
            while let Some(o) = b.poll_output() {
                if let Output::Event(McastEvent::Delivered {
                    life, seq, payload, ..
                }) = o
                {
                    delivered.push((life, seq, payload));
                }
            }
        }
        let expected: Vec<_> = (0..4u8)
            .map(|t| {
                (
                    Incarnation(1),
                    u64::from(t) + 1,
                    Bytes::from(vec![b'n' + t; 3]),
                )
            })
            .collect();
        assert_eq!(delivered, expected);
    }

    #[test]
    fn more_losses_than_parity_fall_back_to_nacks() {
        let (mut a, mut b, got) = lose(Feedback::Ack, &[1, 2, 4]);
        assert!(got.delivered.is_empty());
        assert_eq!(b.stats().fec_recovered, 0);
        let at = timer_at(&got, &McastTimer::Nack(G, A)).expect("a held NACK");
        b.handle_timer(at, McastTimer::Nack(G, A));
        let nack = drain(&mut b)
            .msgs
            .into_iter()
            .find(|m| matches!(m, McastMessage::Nack { .. }))
            .expect("a NACK once the wait is over");
        a.handle_message(at, B, nack);
        for m in drain(&mut a).msgs {
            b.handle_message(at, A, m);
        }
        assert_eq!(drain(&mut b).delivered, vec![1, 2, 3, 4]);
        assert_eq!(a.stats().repairs_sent, 3);
    }

    #[test]
    fn a_block_cut_short_is_covered_after_the_flush_and_again_when_full() {
        let now = Instant::now();
        let fec = Fec::proactive(4, 1);
        let mut a = node(A, fec.clone(), Feedback::Ack, now);
        let mut b = node(B, fec, Feedback::Ack, now);
        // Two messages, then a pause: the last one is lost.
        let first = send(&mut a, now, 2);
        assert!(parity(&first.msgs).is_empty());
        let at = timer_at(&first, &McastTimer::FecFlush(G)).expect("a flush timer");
        a.handle_timer(at, McastTimer::FecFlush(G));
        let flushed = parity(&drain(&mut a).msgs);
        assert!(matches!(&flushed[..], [McastMessage::Parity { lens, .. }] if lens.len() == 2));
        b.handle_message(at, A, first.msgs[0].clone());
        b.handle_message(at, A, flushed[0].clone());
        assert_eq!(drain(&mut b).delivered, vec![1, 2]);
        // A second flush with nothing new sends nothing.
        a.handle_timer(at, McastTimer::FecFlush(G));
        assert!(parity(&drain(&mut a).msgs).is_empty());
        // The block fills: parity over all four; message 4 is lost.
        let rest: Vec<McastMessage> = (2..4)
            .flat_map(|token| {
                a.handle_input(
                    at,
                    McastInput::Send {
                        group: G,
                        token,
                        payload: Bytes::from(vec![9; token as usize]),
                    },
                );
                drain(&mut a).msgs
            })
            .collect();
        let full = parity(&rest);
        assert!(matches!(&full[..], [McastMessage::Parity { lens, .. }] if lens.len() == 4));
        for m in rest.into_iter().filter(|m| !is_data(m, 4)) {
            b.handle_message(at, A, m);
        }
        assert_eq!(drain(&mut b).delivered, vec![3, 4]);
        assert_eq!(b.stats().fec_recovered, 2);
        assert_eq!(a.stats().parity_sent, 2);
        // Reordered: a receiver that holds the whole block's parity takes
        // the earlier parity over its first two messages as stale, not as
        // a disagreement.
        let mut c = node(C, Fec::proactive(4, 1), Feedback::Ack, now);
        c.handle_message(at, A, first.msgs[0].clone());
        c.handle_message(at, A, full[0].clone());
        c.handle_message(at, A, flushed[0].clone());
        assert_eq!(c.stats().fec_rejected, 0);
        assert_eq!(c.held().fec, 2);
    }

    #[test]
    fn the_parity_of_a_lost_tail_shows_the_gap_it_cannot_rebuild() {
        let now = Instant::now();
        let fec = Fec::proactive(4, 1);
        let mut a = node(A, fec.clone(), Feedback::Ack, now);
        let mut b = node(B, fec, Feedback::Ack, now);
        let sent = send(&mut a, now, 4);
        // Only message 1 and the parity arrive: 3 and 4 are the tail.
        b.handle_message(now, A, sent.msgs[0].clone());
        b.handle_message(now, A, parity(&sent.msgs)[0].clone());
        let o = drain(&mut b);
        assert_eq!(o.delivered, vec![1]);
        let at = timer_at(&o, &McastTimer::Nack(G, A)).expect("the gap the parity shows");
        b.handle_timer(at, McastTimer::Nack(G, A));
        let nack = drain(&mut b).msgs;
        assert!(matches!(&nack[..], [McastMessage::Nack { ranges, .. }] if ranges == &[(2, 4)]));
    }

    fn good_parity(now: Instant) -> Vec<McastMessage> {
        let fec = Fec::proactive(4, 2);
        let mut a = node(A, fec, Feedback::Ack, now);
        send(&mut a, now, 4).msgs
    }

    #[test]
    fn hostile_or_inconsistent_parity_is_dropped_and_counted() {
        let now = Instant::now();
        let sent = good_parity(now);
        let p = parity(&sent)[0].clone();
        let McastMessage::Parity {
            group,
            origin,
            life,
            block,
            k,
            index,
            lens,
            shard,
        } = p.clone()
        else {
            unreachable!()
        };
        let with = |f: &dyn Fn(&mut McastMessage)| {
            let mut m = p.clone();
            f(&mut m);
            m
        };
        let hostile = vec![
            // Another k, an index beyond the parity count, no lengths, more
            // lengths than k, a shard of the wrong length, a length above
            // the group's limit.
            McastMessage::Parity {
                group,
                origin,
                life,
                block,
                k: 5,
                index,
                lens: lens.clone(),
                shard: shard.clone(),
            },
            McastMessage::Parity {
                group,
                origin,
                life,
                block,
                k,
                index: 2,
                lens: lens.clone(),
                shard: shard.clone(),
            },
            McastMessage::Parity {
                group,
                origin,
                life,
                block,
                k,
                index,
                lens: vec![],
                shard: Bytes::from_static(&[0, 0]),
            },
            McastMessage::Parity {
                group,
                origin,
                life,
                block,
                k,
                index,
                lens: vec![0; 5],
                shard: Bytes::from_static(&[0, 0]),
            },
            McastMessage::Parity {
                group,
                origin,
                life,
                block,
                k,
                index,
                lens: lens.clone(),
                shard: shard.slice(1..),
            },
            // (Block 1, of which nothing is held to disagree with.)
            McastMessage::Parity {
                group,
                origin,
                life,
                block: 1,
                k,
                index,
                lens: vec![20_000; 4],
                shard: Bytes::from(vec![0; 20_000]),
            },
            // Far beyond the window; about a non-member; about a life not
            // followed.
            with(&|m| {
                if let McastMessage::Parity { block, .. } = m {
                    *block = 1000
                }
            }),
            with(&|m| {
                if let McastMessage::Parity { origin, .. } = m {
                    *origin = NodeId(99)
                }
            }),
            with(&|m| {
                if let McastMessage::Parity { life, .. } = m {
                    *life = Incarnation(7)
                }
            }),
        ];
        let n = hostile.len() as u64;
        let fec = Fec::proactive(4, 2);
        let mut b = node(B, fec, Feedback::Ack, now);
        // B follows A's stream: message 1 arrived.
        b.handle_message(now, A, sent[0].clone());
        drain(&mut b);
        for m in hostile {
            b.handle_message(now, A, m);
        }
        assert_eq!(b.stats().fec_rejected, n);
        assert_eq!(b.held().fec, 1, "only message 1 is kept");
        // A block number whose messages no stream reaches is not looked at.
        b.handle_message(
            now,
            A,
            with(&|m| {
                if let McastMessage::Parity { block, .. } = m {
                    *block = u64::MAX
                }
            }),
        );
        assert_eq!(b.stats().ignored, 1);
        // Lengths that disagree with message 1 as it arrived.
        let mut wrong = lens.clone();
        wrong[0] += 2;
        let wrong_shard = Bytes::from(vec![0; super::shard_len(&wrong)]);
        b.handle_message(
            now,
            A,
            McastMessage::Parity {
                group,
                origin,
                life,
                block,
                k,
                index,
                lens: wrong,
                shard: wrong_shard,
            },
        );
        assert_eq!(b.stats().fec_rejected, n + 1);
        // A garbled shard rebuilds messages whose padding is not zero:
        // refused, and nothing is delivered from it.
        let mut garbled = shard.to_vec();
        for byte in &mut garbled {
            *byte ^= 0xa5;
        }
        for (i, s) in [(0, Bytes::from(garbled.clone())), (1, Bytes::from(garbled))] {
            b.handle_message(
                now,
                A,
                McastMessage::Parity {
                    group,
                    origin,
                    life,
                    block,
                    k,
                    index: i,
                    lens: lens.clone(),
                    shard: s,
                },
            );
        }
        b.handle_message(now, A, sent[2].clone());
        assert!(drain(&mut b).delivered.is_empty());
        assert_eq!(b.stats().fec_recovered, 0);
        assert_eq!(b.stats().fec_rejected, n + 2);
    }

    #[test]
    fn what_a_receiver_keeps_for_blocks_is_bounded_by_its_window() {
        let now = Instant::now();
        let fec = Fec::proactive(4, 2);
        let mut b = node(B, fec, Feedback::Ack, now);
        // Messages 1 to 5 never come; a flood of later messages and of
        // parity for every block, near and far.
        for seq in 6..2000u64 {
            b.handle_message(
                now,
                A,
                McastMessage::Data {
                    group: G,
                    life: Incarnation::FIRST,
                    seq,
                    base: 1,
                    payload: Bytes::from_static(b"x"),
                },
            );
        }
        for block in 0..500u64 {
            for index in 0..2 {
                b.handle_message(
                    now,
                    A,
                    McastMessage::Parity {
                        group: G,
                        origin: A,
                        life: Incarnation::FIRST,
                        block,
                        k: 4,
                        index,
                        lens: vec![1, 1, 1, 1],
                        shard: Bytes::from(vec![0; 2]),
                    },
                );
            }
        }
        drain(&mut b);
        // The window is 16 messages: blocks 0..=3, each at most 4 messages
        // and 2 parity packets.
        let held = b.held().fec;
        assert!(held <= (HISTORY / 4) * (4 + 2), "{held}");
        assert!(held >= 11 + 2 * 4, "{held}");
        assert!(b.stats().fec_rejected >= 2 * (500 - 4));
        // Messages 1 to 4 come: 1 to 16 are delivered, and what was kept
        // for their blocks is forgotten.
        for seq in 1..5 {
            b.handle_message(
                now,
                A,
                McastMessage::Data {
                    group: G,
                    life: Incarnation::FIRST,
                    seq,
                    base: 1,
                    payload: Bytes::from_static(b"x"),
                },
            );
        }
        assert_eq!(b.held().fec, 0, "blocks 0 to 3 delivered");
        for seq in 17..=20 {
            b.handle_message(
                now,
                A,
                McastMessage::Data {
                    group: G,
                    life: Incarnation::FIRST,
                    seq,
                    base: 1,
                    payload: Bytes::from_static(b"x"),
                },
            );
        }
        assert_eq!(b.next_from(G, A), 21);
        assert_eq!(b.held().fec, 0, "block 4, completed in order, is not kept");
    }

    #[test]
    fn on_demand_one_parity_packet_repairs_different_losses_at_different_receivers() {
        let now = Instant::now();
        let fec = Fec::on_demand(4, 2);
        let srm = Feedback::Nack(Srm::default());
        let mut a = node(A, fec.clone(), srm.clone(), now);
        let mut b = node(B, fec.clone(), srm.clone(), now);
        let mut c = node(C, fec, srm, now);
        let sent = send(&mut a, now, 4);
        assert!(parity(&sent.msgs).is_empty(), "nothing proactive");
        // B loses message 1, C message 3.
        let mut requests = Vec::new();
        for (r, lost) in [(&mut b, 1), (&mut c, 3)] {
            let mut timers = Vec::new();
            for m in sent.msgs.iter().filter(|m| !is_data(m, lost)) {
                r.handle_message(now, A, m.clone());
                timers.extend(drain(r).timers);
            }
            let (t, at) = timers
                .into_iter()
                .find(|(t, _)| matches!(t, McastTimer::Request(..)))
                .expect("a request timer");
            r.handle_timer(at, t);
            requests.extend(drain(r).msgs);
        }
        assert_eq!(requests.len(), 2);
        // The source hears both: one parity answer for the block, no
        // repair of single messages.
        let mut timers = Vec::new();
        for (from, req) in [B, C].into_iter().zip(requests) {
            a.handle_message(now, from, req);
            timers.extend(drain(&mut a).timers);
        }
        assert!(
            timers
                .iter()
                .all(|(t, _)| matches!(t, McastTimer::FecRepair(G, A, 0))),
            "{timers:?}"
        );
        let (t, at) = timers[0].clone();
        // D, which holds the block too, would answer the same requests;
        // it hears A's answer first and stays quiet.
        let mut d = node(D, Fec::on_demand(4, 2), Feedback::Nack(Srm::default()), now);
        for m in &sent.msgs {
            d.handle_message(now, A, m.clone());
        }
        d.handle_message(
            now,
            B,
            McastMessage::Request {
                group: G,
                origin: A,
                life: Incarnation::FIRST,
                ranges: vec![(1, 1)],
            },
        );
        let d_timers = drain(&mut d).timers;
        assert!(
            d_timers
                .iter()
                .any(|(t, _)| matches!(t, McastTimer::FecRepair(G, A, 0)))
        );
        a.handle_timer(at, t);
        let answer = drain(&mut a).msgs;
        assert_eq!(parity(&answer).len(), 1, "one packet repairs both");
        assert_eq!((a.stats().repairs_sent, a.stats().parity_sent), (0, 1));
        d.handle_message(at, A, answer[0].clone());
        d.handle_timer(at, McastTimer::FecRepair(G, A, 0));
        assert!(parity(&drain(&mut d).msgs).is_empty(), "answered twice");
        assert_eq!(d.stats().parity_sent, 0);
        for r in [&mut b, &mut c] {
            r.handle_message(at, A, answer[0].clone());
            assert_eq!(drain(r).delivered.last(), Some(&4));
            assert_eq!(r.stats().fec_recovered, 1);
        }
        // A request that crossed the answer is not answered again.
        a.handle_message(
            at,
            D,
            McastMessage::Request {
                group: G,
                origin: A,
                life: Incarnation::FIRST,
                ranges: vec![(2, 2)],
            },
        );
        assert!(drain(&mut a).timers.is_empty());
    }

    #[test]
    fn on_demand_more_losses_than_parity_are_repaired_one_by_one() {
        let now = Instant::now();
        let fec = Fec::on_demand(4, 1);
        let srm = Feedback::Nack(Srm::default());
        let mut a = node(A, fec, srm, now);
        send(&mut a, now, 4);
        a.handle_message(
            now,
            B,
            McastMessage::Request {
                group: G,
                origin: A,
                life: Incarnation::FIRST,
                ranges: vec![(1, 2)],
            },
        );
        let timers = drain(&mut a).timers;
        assert_eq!(timers.len(), 2);
        assert!(
            timers
                .iter()
                .all(|(t, _)| matches!(t, McastTimer::Repair(G, A, _)))
        );
    }
}

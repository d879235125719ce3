//! The outbox's tagging, routing and compaction, with two embedded cores
//! that both persist.

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::*;
use crate::record::{self, Component};
use crate::wire::{self, DecodeError, Wire};
use crate::{Incarnation, Recover, RecoveryError};

#[derive(Debug, PartialEq, Clone, Copy)]
struct Note(u64);
impl Wire for Note {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.0);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        wire::need(buf, 8)?;
        Ok(Note(buf.get_u64_le()))
    }
}
impl Record for Note {
    const VERSION: u8 = 1;
}

/// Persists each input; compacts before the latest on `u64::MAX`.
#[derive(Debug)]
struct Diary {
    out: Outbox<Diary>,
    recovered: Vec<Note>,
    last: Option<PersistToken>,
    durable: Vec<PersistToken>,
}
impl Protocol for Diary {
    type Message = u64;
    type Input = u64;
    type Event = u64;
    type Timer = u8;
    fn handle_message(&mut self, _: Instant, _: NodeId, m: u64) {
        self.out.received();
        self.out.send(NodeId(9), m);
    }
    fn handle_input(&mut self, _: Instant, n: u64) {
        if n == u64::MAX {
            if let Some(t) = self.last {
                self.out.compact(t);
            }
        } else {
            self.last = Some(self.out.persist(&Note(n)));
        }
    }
    /// Timers from 100 on multicast their number to nodes 7 and 8; the
    /// others become events.
    fn handle_timer(&mut self, _: Instant, t: u8) {
        if t >= 100 {
            self.out.multicast(vec![NodeId(7), NodeId(8)], u64::from(t));
        } else {
            self.out.event(u64::from(t));
        }
    }
    fn handle_persisted(&mut self, _: Instant, token: PersistToken) {
        self.durable.push(token);
    }
    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }
    fn counters(&self) -> Counters {
        self.out.counters()
    }
}
impl Recover for Diary {
    type Config = ();
    fn recover(_: &(), ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        Ok(Diary {
            out: Outbox::recovered(&ctx),
            recovered: ctx.read()?,
            last: None,
            durable: Vec::new(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Which {
    A,
    B,
}

/// Two diaries side by side.
#[derive(Debug)]
struct Pair {
    a: Diary,
    b: Diary,
    out: Outbox<Pair>,
}
const A: Component = Component(1);
const B: Component = Component(2);
/// Messages of B carry the top bit.
const B_BIT: u64 = 1 << 63;
impl Pair {
    fn pump(&mut self) {
        self.out.lift(
            A,
            &mut self.a,
            |m| m,
            |t| (Which::A, t),
            |e| Some((Which::A, e)),
        );
        self.out.lift(
            B,
            &mut self.b,
            |m| m | B_BIT,
            |t| (Which::B, t),
            |e| Some((Which::B, e)),
        );
    }
}
impl Protocol for Pair {
    type Message = u64;
    type Input = (Which, u64);
    type Event = (Which, u64);
    type Timer = (Which, u8);
    fn handle_message(&mut self, now: Instant, from: NodeId, m: u64) {
        if m & B_BIT != 0 {
            self.b.handle_message(now, from, m & !B_BIT);
        } else {
            self.a.handle_message(now, from, m);
        }
        self.pump();
    }
    fn handle_input(&mut self, now: Instant, (w, n): (Which, u64)) {
        match w {
            Which::A => self.a.handle_input(now, n),
            Which::B => self.b.handle_input(now, n),
        }
        self.pump();
    }
    fn handle_timer(&mut self, now: Instant, (w, t): (Which, u8)) {
        match w {
            Which::A => self.a.handle_timer(now, t),
            Which::B => self.b.handle_timer(now, t),
        }
        self.pump();
    }
    fn handle_persisted(&mut self, now: Instant, token: PersistToken) {
        match self.out.persisted(token) {
            Persisted::Own(_) => {}
            Persisted::Inner { component, token } if component == A => {
                self.a.handle_persisted(now, token)
            }
            Persisted::Inner { token, .. } => self.b.handle_persisted(now, token),
        }
        self.pump();
    }
    fn poll_output(&mut self) -> Option<Output<Self>> {
        self.out.pop()
    }
    fn counters(&self) -> Counters {
        let mut c = self.out.counters();
        c += self.a.counters();
        c += self.b.counters();
        c
    }
}
impl Recover for Pair {
    type Config = ();
    fn recover(_: &(), ctx: RecoveryContext) -> Result<Self, RecoveryError> {
        let mut p = Pair {
            a: Diary::recover(&(), ctx.component(A))?,
            b: Diary::recover(&(), ctx.component(B))?,
            out: Outbox::recovered(&ctx),
        };
        p.pump();
        Ok(p)
    }
}

/// A stable log for the test: records by outer token, compaction applied.
#[derive(Default)]
struct Disk {
    records: Vec<(PersistToken, Bytes)>,
    compactions: Vec<PersistToken>,
}

impl Disk {
    /// Carries out everything `p` asks, completing persists at once.
    fn run(&mut self, p: &mut Pair, now: Instant) -> Vec<Output<Pair>> {
        let mut seen = Vec::new();
        while let Some(o) = p.poll_output() {
            match &o {
                Output::Persist { record, token } => {
                    self.records.push((*token, record.clone()));
                    p.handle_persisted(now, *token);
                }
                Output::Compact { before } => {
                    self.compactions.push(*before);
                    self.records.retain(|(t, _)| t >= before);
                }
                _ => {}
            }
            seen.push(o);
        }
        seen
    }

    fn ctx(&self, incarnation: u64) -> RecoveryContext {
        RecoveryContext {
            node: NodeId(1),
            incarnation: Incarnation(incarnation),
            records: self.records.iter().map(|(_, r)| r.clone()).collect(),
            seed: 1,
            now: Instant::now(),
        }
    }
}

#[test]
fn two_embedded_cores_persist_recover_and_compact_side_by_side() {
    let now = Instant::now();
    let mut disk = Disk::default();
    let mut p = Pair::recover(&(), disk.ctx(0)).unwrap();
    for n in 0..3 {
        p.handle_input(now, (Which::A, n));
        p.handle_input(now, (Which::B, 100 + n));
        disk.run(&mut p, now);
    }
    // Each inner core got back its own tokens, 1, 2, 3.
    let tokens = |d: &Diary| d.durable.iter().map(|t| t.0).collect::<Vec<_>>();
    assert_eq!((tokens(&p.a), tokens(&p.b)), (vec![1, 2, 3], vec![1, 2, 3]));
    // Tagged on disk: component first.
    assert!(disk.records.iter().all(|(_, r)| r[0] == 1 || r[0] == 2));

    // A compacts before its last record: B still needs all of its own, and
    // B's first record is older than A's last, so only A's first goes.
    p.handle_input(now, (Which::A, u64::MAX));
    disk.run(&mut p, now);
    assert_eq!(disk.compactions.len(), 1);
    assert_eq!(disk.records.len(), 5);

    // B compacts before its last: everything before A's last goes.
    p.handle_input(now, (Which::B, u64::MAX));
    disk.run(&mut p, now);
    assert_eq!(disk.compactions.len(), 2);
    assert_eq!(disk.records.len(), 2);

    // A new life: each core reads its own, from what was kept.
    let p = Pair::recover(&(), disk.ctx(1)).unwrap();
    assert_eq!(p.a.recovered, vec![Note(2)]);
    assert_eq!(p.b.recovered, vec![Note(102)]);
    assert_eq!(p.counters().compactions, 0, "counters are per life");
}

#[test]
fn records_of_earlier_lives_pin_the_log_until_their_core_compacts() {
    let now = Instant::now();
    let mut disk = Disk::default();
    let mut p = Pair::recover(&(), disk.ctx(0)).unwrap();
    p.handle_input(now, (Which::B, 7));
    disk.run(&mut p, now);

    // Next life: B has records from before; A writes and compacts.
    let mut p = Pair::recover(&(), disk.ctx(1)).unwrap();
    assert_eq!(p.b.recovered, vec![Note(7)]);
    p.handle_input(now, (Which::A, 1));
    p.handle_input(now, (Which::A, 2));
    disk.run(&mut p, now);
    p.handle_input(now, (Which::A, u64::MAX));
    disk.run(&mut p, now);
    assert!(disk.compactions.is_empty(), "B's old record would be lost");
    assert_eq!(disk.records.len(), 3);
    let p = Pair::recover(&(), disk.ctx(2)).unwrap();
    assert_eq!(p.b.recovered, vec![Note(7)]);
    assert_eq!(p.a.recovered, vec![Note(1), Note(2)]);
}

#[test]
fn lifted_outputs_are_mapped_and_counted_once() {
    let now = Instant::now();
    let mut p = Pair::recover(&(), Disk::default().ctx(0)).unwrap();
    p.handle_message(now, NodeId(3), 5 | B_BIT);
    p.handle_timer(now, (Which::A, 4));
    let out: Vec<_> = std::iter::from_fn(|| p.poll_output()).collect();
    assert!(matches!(
        out[0],
        Output::Send {
            to: NodeId(9),
            msg
        } if msg == 5 | B_BIT
    ));
    assert!(matches!(out[1], Output::Event((Which::A, 4))));
    let c = p.counters();
    assert_eq!((c.messages_sent, c.messages_received), (1, 1));
}

#[test]
fn a_lifted_multicast_keeps_its_destinations_maps_its_message_and_counts_once() {
    let now = Instant::now();
    let mut p = Pair::recover(&(), Disk::default().ctx(0)).unwrap();
    p.handle_timer(now, (Which::B, 100));
    p.handle_timer(now, (Which::A, 101));
    let out: Vec<_> = std::iter::from_fn(|| p.poll_output()).collect();
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        matches!(
            &out[0],
            Output::Multicast { to, msg } if *to == [NodeId(7), NodeId(8)] && *msg == 100 | B_BIT
        ),
        "{out:?}"
    );
    assert!(
        matches!(
            &out[1],
            Output::Multicast { to, msg } if *to == [NodeId(7), NodeId(8)] && *msg == 101
        ),
        "{out:?}"
    );
    // One message sent per multicast, not one per destination.
    assert_eq!(p.counters().messages_sent, 2);
    assert_eq!(p.b.counters().messages_sent, 1);
}

#[test]
fn the_harness_keeps_multicasts_apart_from_sends() {
    let mut h = crate::harness::Harness::<Pair>::new(&(), NodeId(1));
    let out = h.timer((Which::A, 100)).message(NodeId(3), 5).drain();
    assert_eq!(out.multicasts, vec![(vec![NodeId(7), NodeId(8)], 100)]);
    assert_eq!(out.sends, vec![(NodeId(9), 5)]);
    assert!(!out.is_empty());
    let out = h.timer((Which::A, 101)).drain();
    assert!(!out.is_empty(), "a multicast alone is something asked for");
}

#[test]
fn a_record_the_core_cannot_read_stops_its_recovery() {
    let mut disk = Disk::default();
    disk.records.push((
        PersistToken(1),
        record::tag(B, &Bytes::from_static(&[0, 1, 2])),
    ));
    let err = Pair::recover(&(), disk.ctx(1)).unwrap_err();
    assert!(
        matches!(err, RecoveryError::Record { index: 0, .. }),
        "{err}"
    );
}

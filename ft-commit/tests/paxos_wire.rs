//! Decoders of Paxos Commit's messages and records: round trips (also
//! through ft-core's record header), every truncation is a typed error,
//! arbitrary bytes never panic, limits and unknown tags are typed errors.

use bytes::{BufMut, Bytes, BytesMut};
use ft_commit::snapshot::MAX_SNAPSHOT_ENTRIES;
use ft_commit::{
    Ballot, MAX_PARTICIPANTS, MAX_TX_ID, PaxosMessage, PaxosRecord, PaxosSnapshot, Report,
    SnapBegun, SnapInstance, SnapRm, TxId, Value, Vote,
};
use ft_core::NodeId;
use ft_core::wire::{DecodeError, Wire};
use proptest::prelude::*;

fn tx() -> impl Strategy<Value = TxId> {
    proptest::collection::vec(any::<u8>(), 0..=MAX_TX_ID).prop_map(|v| TxId::new(v).unwrap())
}

fn node() -> impl Strategy<Value = NodeId> {
    any::<u64>().prop_map(NodeId)
}

fn nodes() -> impl Strategy<Value = Vec<NodeId>> {
    proptest::collection::vec(node(), 0..8)
}

fn vote() -> impl Strategy<Value = Vote> {
    prop_oneof![Just(Vote::Commit), Just(Vote::Abort)]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![Just(Value::Prepared), Just(Value::Aborted)]
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (any::<u32>(), any::<u64>(), node()).prop_map(|(round, incarnation, leader)| Ballot {
        round,
        incarnation,
        leader,
    })
}

fn reports() -> impl Strategy<Value = Vec<Report>> {
    proptest::collection::vec((node(), proptest::option::of((ballot(), value()))), 0..6)
}

fn message() -> impl Strategy<Value = PaxosMessage> {
    prop_oneof![
        (tx(), nodes()).prop_map(|(tx, participants)| PaxosMessage::Prepare { tx, participants }),
        (tx(), node(), ballot(), value()).prop_map(|(tx, rm, ballot, value)| {
            PaxosMessage::Phase2a {
                tx,
                rm,
                ballot,
                value,
            }
        }),
        (tx(), node(), ballot(), value()).prop_map(|(tx, rm, ballot, value)| {
            PaxosMessage::Phase2b {
                tx,
                rm,
                ballot,
                value,
            }
        }),
        (tx(), ballot(), nodes()).prop_map(|(tx, ballot, rms)| PaxosMessage::Phase1a {
            tx,
            ballot,
            rms
        }),
        (tx(), ballot(), reports()).prop_map(|(tx, ballot, reports)| PaxosMessage::Phase1b {
            tx,
            ballot,
            reports
        }),
        (tx(), vote()).prop_map(|(tx, outcome)| PaxosMessage::Outcome { tx, outcome }),
    ]
}

fn record() -> impl Strategy<Value = PaxosRecord> {
    prop_oneof![
        (tx(), nodes()).prop_map(|(tx, participants)| PaxosRecord::Begin { tx, participants }),
        (tx(), vote()).prop_map(|(tx, outcome)| PaxosRecord::Decided { tx, outcome }),
        (tx(), node(), nodes(), value()).prop_map(|(tx, coordinator, participants, value)| {
            PaxosRecord::Voted {
                tx,
                coordinator,
                participants,
                value,
            }
        }),
        (tx(), vote()).prop_map(|(tx, outcome)| PaxosRecord::Outcome { tx, outcome }),
        (tx(), ballot(), nodes()).prop_map(|(tx, ballot, rms)| PaxosRecord::Promised {
            tx,
            ballot,
            rms
        }),
        (tx(), node(), ballot(), value()).prop_map(|(tx, rm, ballot, value)| {
            PaxosRecord::Accepted {
                tx,
                rm,
                ballot,
                value,
            }
        }),
        snapshot().prop_map(PaxosRecord::Snapshot),
    ]
}

fn snapshot() -> impl Strategy<Value = PaxosSnapshot> {
    let begun = (tx(), nodes(), proptest::option::of(vote()), any::<bool>()).prop_map(
        |(tx, participants, outcome, told)| SnapBegun {
            tx,
            participants,
            outcome,
            told,
        },
    );
    let rm = (
        tx(),
        node(),
        nodes(),
        value(),
        proptest::option::of(vote()),
        any::<bool>(),
    )
        .prop_map(
            |(tx, coordinator, participants, vote, outcome, told)| SnapRm {
                tx,
                coordinator,
                participants,
                vote,
                outcome,
                told,
            },
        );
    let instance = (
        tx(),
        node(),
        proptest::option::of(ballot()),
        proptest::option::of((ballot(), value())),
    )
        .prop_map(|(tx, rm, promised, accepted)| SnapInstance {
            tx,
            rm,
            promised,
            accepted,
        });
    (
        any::<bool>(),
        proptest::collection::vec((tx(), vote()), 0..4),
        proptest::collection::vec(begun, 0..3),
        proptest::collection::vec(rm, 0..3),
        proptest::collection::vec(instance, 0..3),
    )
        .prop_map(
            |(forgotten, outcomes, begun, rms, instances)| PaxosSnapshot {
                forgotten,
                outcomes,
                begun,
                rms,
                instances,
            },
        )
}

fn round_trip_and_truncations<W: Wire + PartialEq + std::fmt::Debug>(v: &W) {
    let bytes = v.to_bytes();
    assert_eq!(&W::from_bytes(bytes.clone()).unwrap(), v);
    for cut in 0..bytes.len() {
        match W::from_bytes(bytes.slice(..cut)) {
            Err(DecodeError::Truncated { .. }) => {}
            other => panic!("cut at {cut} of {}: {other:?}", bytes.len()),
        }
    }
}

proptest! {
    #[test]
    fn messages_round_trip_and_every_truncation_is_an_error(m in message()) {
        round_trip_and_truncations(&m);
    }

    #[test]
    fn records_round_trip_and_every_truncation_is_an_error(r in record()) {
        round_trip_and_truncations(&r);
        let bytes = ft_core::record::encode(&r);
        prop_assert_eq!(ft_core::record::decode::<PaxosRecord>(bytes).unwrap(), r);
    }

    #[test]
    fn ballots_round_trip_and_order_by_round_incarnation_leader(a in ballot(), b in ballot()) {
        round_trip_and_truncations(&a);
        prop_assert_eq!(
            a.cmp(&b),
            (a.round, a.incarnation, a.leader).cmp(&(b.round, b.incarnation, b.leader))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = PaxosMessage::from_bytes(Bytes::from(b.clone()));
        let _ = PaxosRecord::from_bytes(Bytes::from(b.clone()));
        let _ = ft_core::record::decode::<PaxosRecord>(Bytes::from(b));
    }

    /// A valid encoding with one byte changed decodes to something or to
    /// a typed error, never a panic.
    #[test]
    fn flipped_bytes_never_panic(m in message(), at in any::<usize>(), x in 1u8..) {
        let mut b = m.to_bytes().to_vec();
        let i = at % b.len();
        b[i] ^= x;
        let _ = PaxosMessage::from_bytes(Bytes::from(b));
    }
}

#[test]
fn limits_and_unknown_tags_are_typed_errors() {
    // A forged id length.
    let mut b = BytesMut::new();
    b.put_u8(6);
    b.put_u8(MAX_TX_ID as u8 + 1);
    b.put_slice(&[0; 80]);
    assert_eq!(
        PaxosMessage::from_bytes(b.freeze()),
        Err(DecodeError::Oversized {
            len: MAX_TX_ID + 1,
            max: MAX_TX_ID
        })
    );
    // A forged phase 1a list and phase 1b report count cost nothing.
    for tag in [4u8, 5] {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_u8(0);
        Ballot::zero(NodeId(0)).encode(&mut b);
        b.put_u16_le(MAX_PARTICIPANTS as u16 + 1);
        assert_eq!(
            PaxosMessage::from_bytes(b.freeze()),
            Err(DecodeError::Oversized {
                len: MAX_PARTICIPANTS + 1,
                max: MAX_PARTICIPANTS
            })
        );
    }
    // A report count larger than the bytes that follow: truncated, before
    // allocating.
    let mut b = BytesMut::new();
    b.put_u8(5);
    b.put_u8(0);
    Ballot::zero(NodeId(0)).encode(&mut b);
    b.put_u16_le(200);
    assert!(matches!(
        PaxosMessage::from_bytes(b.freeze()),
        Err(DecodeError::Truncated { .. })
    ));
    let unknown_m = |bytes: &'static [u8], what: &'static str, tag: u8| {
        let m = PaxosMessage::from_bytes(Bytes::from_static(bytes));
        assert_eq!(m, Err(DecodeError::UnknownTag { what, tag }), "{bytes:?}");
    };
    let unknown_r = |bytes: &'static [u8], what: &'static str, tag: u8| {
        let r = PaxosRecord::from_bytes(Bytes::from_static(bytes));
        assert_eq!(r, Err(DecodeError::UnknownTag { what, tag }), "{bytes:?}");
    };
    unknown_m(&[0, 0], "PaxosMessage", 0);
    unknown_m(&[7, 0], "PaxosMessage", 7);
    unknown_r(&[0, 0], "PaxosRecord", 0);
    unknown_r(&[9, 0], "PaxosRecord", 9);
    unknown_r(&[2, 0, 9], "Vote", 9);
    // Outcome with a bad vote byte; a value byte of 3.
    unknown_m(&[6, 0, 9], "Vote", 9);
    let mut b = BytesMut::new();
    b.put_u8(2);
    b.put_u8(0);
    NodeId(1).encode(&mut b);
    Ballot::zero(NodeId(0)).encode(&mut b);
    b.put_u8(3);
    assert_eq!(
        PaxosMessage::from_bytes(b.freeze()),
        Err(DecodeError::UnknownTag {
            what: "Value",
            tag: 3
        })
    );
    // A report flag of 2.
    let mut b = BytesMut::new();
    b.put_u8(5);
    b.put_u8(0);
    Ballot::zero(NodeId(0)).encode(&mut b);
    b.put_u16_le(1);
    NodeId(1).encode(&mut b);
    b.put_u8(2);
    assert_eq!(
        PaxosMessage::from_bytes(b.freeze()),
        Err(DecodeError::UnknownTag {
            what: "Report",
            tag: 2
        })
    );
    // A record of an unknown version is refused by the record header.
    let mut raw = ft_core::record::encode(&PaxosRecord::Decided {
        tx: TxId::new(&b"t"[..]).unwrap(),
        outcome: Vote::Commit,
    })
    .to_vec();
    raw[1] = 2;
    assert!(ft_core::record::decode::<PaxosRecord>(Bytes::from(raw)).is_err());
}

#[test]
fn snapshot_limits_are_checked_before_allocating() {
    // An unknown snapshot version.
    unknown_snapshot(&[7, 2, 0], "PaxosSnapshot version", 2);
    // A bad forgotten flag.
    unknown_snapshot(&[7, 1, 2], "bool", 2);
    // A forged entry count above the limit: refused before allocating.
    let mut b = BytesMut::new();
    b.put_u8(7);
    b.put_u8(1);
    b.put_u8(0);
    b.put_u32_le(MAX_SNAPSHOT_ENTRIES as u32 + 1);
    assert_eq!(
        PaxosRecord::from_bytes(b.freeze()),
        Err(DecodeError::Oversized {
            len: MAX_SNAPSHOT_ENTRIES + 1,
            max: MAX_SNAPSHOT_ENTRIES
        })
    );
    // A count within the limit but larger than the bytes that follow:
    // truncated, before allocating.
    for lists_before in 0..4 {
        let mut b = BytesMut::new();
        b.put_u8(7);
        b.put_u8(1);
        b.put_u8(0);
        for _ in 0..lists_before {
            b.put_u32_le(0);
        }
        b.put_u32_le(MAX_SNAPSHOT_ENTRIES as u32);
        b.put_slice(&[0; 64]);
        assert!(
            matches!(
                PaxosRecord::from_bytes(b.freeze()),
                Err(DecodeError::Truncated { .. })
            ),
            "list {lists_before}"
        );
    }
}

fn unknown_snapshot(bytes: &'static [u8], what: &'static str, tag: u8) {
    let r = PaxosRecord::from_bytes(Bytes::from_static(bytes));
    assert_eq!(r, Err(DecodeError::UnknownTag { what, tag }), "{bytes:?}");
}

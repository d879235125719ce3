//! Decoders of messages and log records: round trips, every truncation is
//! a typed error, arbitrary bytes never panic, limits are enforced.

use bytes::{BufMut, Bytes, BytesMut};
use ft_commit::snapshot::{MAX_SNAPSHOT_ENTRIES, SnapCoord, SnapPart, Snapshot};
use ft_commit::{
    CoordState3, DecisionEntry, LogRecord, MAX_BATCH, MAX_PARTICIPANTS, MAX_SNAPSHOT3_ENTRIES,
    MAX_TX_ID, Message, Message3, PartState3, PeerState, Record3, Snap3Coord, Snap3Part, Snapshot3,
    TxId, Vote,
};
use ft_core::NodeId;
use ft_core::wire::{DecodeError, Wire};
use proptest::prelude::*;

fn tx() -> impl Strategy<Value = TxId> {
    proptest::collection::vec(any::<u8>(), 0..=MAX_TX_ID).prop_map(|v| TxId::new(v).unwrap())
}

fn nodes() -> impl Strategy<Value = Vec<NodeId>> {
    proptest::collection::vec(any::<u64>().prop_map(NodeId), 0..8)
}

fn vote() -> impl Strategy<Value = Vote> {
    prop_oneof![Just(Vote::Commit), Just(Vote::Abort)]
}

fn message() -> impl Strategy<Value = Message> {
    let state = prop_oneof![
        Just(PeerState::Init),
        Just(PeerState::Ready),
        Just(PeerState::Commit),
        Just(PeerState::Abort)
    ];
    prop_oneof![
        (tx(), nodes()).prop_map(|(tx, participants)| Message::VoteRequest { tx, participants }),
        tx().prop_map(|tx| Message::VoteCommit { tx }),
        tx().prop_map(|tx| Message::VoteAbort { tx }),
        tx().prop_map(|tx| Message::GlobalCommit { tx }),
        tx().prop_map(|tx| Message::GlobalAbort { tx }),
        tx().prop_map(|tx| Message::Ack { tx }),
        (tx(), any::<u64>()).prop_map(|(tx, c)| Message::DecisionRequest {
            tx,
            coordinator: NodeId(c)
        }),
        (tx(), state).prop_map(|(tx, state)| Message::State { tx, state }),
        tx().prop_map(|tx| Message::VoteReadOnly { tx }),
        (tx(), vote()).prop_map(|(tx, heuristic)| Message::HeuristicAck { tx, heuristic }),
    ]
}

fn opt_vote() -> impl Strategy<Value = Option<Vote>> {
    proptest::option::of(vote())
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    let coord = (tx(), opt_vote(), nodes(), any::<bool>()).prop_map(
        |(tx, outcome, participants, ended)| SnapCoord {
            tx,
            outcome,
            participants,
            ended,
        },
    );
    let part = (
        tx(),
        opt_vote(),
        any::<u64>(),
        nodes(),
        opt_vote(),
        any::<bool>(),
    )
        .prop_map(|(tx, outcome, c, participants, heuristic, told)| SnapPart {
            tx,
            outcome,
            coordinator: NodeId(c),
            participants,
            heuristic,
            told,
        });
    (
        proptest::collection::vec(coord, 0..4),
        proptest::collection::vec(part, 0..4),
        any::<bool>(),
    )
        .prop_map(|(coords, parts, forgotten)| Snapshot {
            coords,
            parts,
            forgotten,
        })
}

fn record() -> impl Strategy<Value = LogRecord> {
    prop_oneof![
        (tx(), nodes()).prop_map(|(tx, participants)| LogRecord::Begin { tx, participants }),
        (tx(), vote(), nodes()).prop_map(|(tx, outcome, participants)| LogRecord::Decision {
            tx,
            outcome,
            participants
        }),
        tx().prop_map(|tx| LogRecord::End { tx }),
        (tx(), any::<u64>(), nodes()).prop_map(|(tx, c, participants)| LogRecord::Ready {
            tx,
            coordinator: NodeId(c),
            participants
        }),
        (tx(), any::<u64>()).prop_map(|(tx, c)| LogRecord::Commit {
            tx,
            coordinator: NodeId(c)
        }),
        (tx(), any::<u64>()).prop_map(|(tx, c)| LogRecord::Abort {
            tx,
            coordinator: NodeId(c)
        }),
        (tx(), vote()).prop_map(|(tx, heuristic)| LogRecord::Heuristic { tx, heuristic }),
        proptest::collection::vec(
            (tx(), vote(), nodes()).prop_map(|(tx, outcome, participants)| DecisionEntry {
                tx,
                outcome,
                participants
            }),
            0..5
        )
        .prop_map(LogRecord::Decisions),
        snapshot().prop_map(LogRecord::Snapshot),
    ]
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
        // Through ft-core's record header too.
        let bytes = ft_core::record::encode(&r);
        prop_assert_eq!(ft_core::record::decode::<LogRecord>(bytes).unwrap(), r);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::from_bytes(Bytes::from(b.clone()));
        let _ = LogRecord::from_bytes(Bytes::from(b));
    }
}

#[test]
fn limits_are_enforced() {
    assert!(TxId::new(vec![0u8; MAX_TX_ID]).is_ok());
    assert_eq!(
        TxId::new(vec![0u8; MAX_TX_ID + 1]).unwrap_err().len,
        MAX_TX_ID + 1
    );
    // A forged id length above the maximum.
    let mut b = BytesMut::new();
    b.put_u8(2);
    b.put_u8(MAX_TX_ID as u8 + 1);
    b.put_slice(&[0; 80]);
    assert_eq!(
        Message::from_bytes(b.freeze()),
        Err(DecodeError::Oversized {
            len: MAX_TX_ID + 1,
            max: MAX_TX_ID
        })
    );
    // A forged participant count above the maximum costs nothing.
    let mut b = BytesMut::new();
    b.put_u8(1);
    b.put_u8(0);
    b.put_u16_le(MAX_PARTICIPANTS as u16 + 1);
    assert_eq!(
        Message::from_bytes(b.freeze()),
        Err(DecodeError::Oversized {
            len: MAX_PARTICIPANTS + 1,
            max: MAX_PARTICIPANTS
        })
    );
    // Unknown tags are typed errors.
    assert!(matches!(
        Message::from_bytes(Bytes::from_static(&[11, 0])),
        Err(DecodeError::UnknownTag {
            what: "Message",
            tag: 11
        })
    ));
    assert!(matches!(
        Message::from_bytes(Bytes::from_static(&[8, 0, 7])),
        Err(DecodeError::UnknownTag {
            what: "PeerState",
            tag: 7
        })
    ));
    assert!(matches!(
        LogRecord::from_bytes(Bytes::from_static(&[0])),
        Err(DecodeError::UnknownTag {
            what: "LogRecord",
            tag: 0
        })
    ));
    assert!(matches!(
        LogRecord::from_bytes(Bytes::from_static(&[2, 0, 5, 0, 0])),
        Err(DecodeError::UnknownTag {
            what: "Vote",
            tag: 5
        })
    ));
    assert!(matches!(
        LogRecord::from_bytes(Bytes::from_static(&[10, 0])),
        Err(DecodeError::UnknownTag {
            what: "LogRecord",
            tag: 10
        })
    ));
    assert!(matches!(
        Message::from_bytes(Bytes::from_static(&[10, 0, 9])),
        Err(DecodeError::UnknownTag {
            what: "Vote",
            tag: 9
        })
    ));
    // A forged batch or snapshot length costs nothing.
    let mut b = BytesMut::new();
    b.put_u8(8);
    b.put_u16_le(MAX_BATCH as u16 + 1);
    assert_eq!(
        LogRecord::from_bytes(b.freeze()),
        Err(DecodeError::Oversized {
            len: MAX_BATCH + 1,
            max: MAX_BATCH
        })
    );
    let mut b = BytesMut::new();
    b.put_u8(9);
    b.put_u8(0);
    b.put_u32_le(MAX_SNAPSHOT_ENTRIES as u32 + 1);
    assert_eq!(
        LogRecord::from_bytes(b.freeze()),
        Err(DecodeError::Oversized {
            len: MAX_SNAPSHOT_ENTRIES + 1,
            max: MAX_SNAPSHOT_ENTRIES
        })
    );
    let mut b = BytesMut::new();
    b.put_u8(9);
    b.put_u8(0);
    b.put_u32_le(1000);
    assert!(matches!(
        LogRecord::from_bytes(b.freeze()),
        Err(DecodeError::Truncated { .. })
    ));
    // A snapshot's flag byte is 0 or 1.
    assert!(matches!(
        LogRecord::from_bytes(Bytes::from_static(&[9, 7, 0, 0, 0, 0, 0, 0, 0, 0])),
        Err(DecodeError::UnknownTag { what: "bool", .. })
    ));
}

// ---- three-phase commit ----

fn part_state3() -> impl Strategy<Value = PartState3> {
    prop_oneof![
        Just(PartState3::Init),
        Just(PartState3::Ready),
        Just(PartState3::PreCommit),
        Just(PartState3::Commit),
        Just(PartState3::Abort)
    ]
}

fn message3() -> impl Strategy<Value = Message3> {
    prop_oneof![
        (tx(), nodes()).prop_map(|(tx, participants)| Message3::VoteRequest { tx, participants }),
        tx().prop_map(|tx| Message3::VoteCommit { tx }),
        tx().prop_map(|tx| Message3::VoteAbort { tx }),
        tx().prop_map(|tx| Message3::PrepareCommit { tx }),
        tx().prop_map(|tx| Message3::ReadyCommit { tx }),
        tx().prop_map(|tx| Message3::GlobalCommit { tx }),
        tx().prop_map(|tx| Message3::GlobalAbort { tx }),
        (tx(), any::<u64>()).prop_map(|(tx, c)| Message3::StateRequest {
            tx,
            coordinator: NodeId(c)
        }),
        (tx(), part_state3()).prop_map(|(tx, state)| Message3::State { tx, state }),
    ]
}

fn coord_state3() -> impl Strategy<Value = CoordState3> {
    // A coordinator record holds WAIT, PRECOMMIT, COMMIT or ABORT (never
    // INIT: nothing is logged in INIT).
    prop_oneof![
        Just(CoordState3::Wait),
        Just(CoordState3::PreCommit),
        Just(CoordState3::Commit),
        Just(CoordState3::Abort)
    ]
}

fn snapshot3() -> impl Strategy<Value = Snapshot3> {
    // A participant in a snapshot is never in INIT (nothing logged).
    let part_state = prop_oneof![
        Just(PartState3::Ready),
        Just(PartState3::PreCommit),
        Just(PartState3::Commit),
        Just(PartState3::Abort)
    ];
    let coord = (tx(), coord_state3(), nodes(), any::<bool>()).prop_map(
        |(tx, state, participants, told)| Snap3Coord {
            tx,
            state,
            participants,
            told,
        },
    );
    let part = (tx(), part_state, any::<u64>(), nodes(), any::<bool>()).prop_map(
        |(tx, state, c, participants, told)| Snap3Part {
            tx,
            state,
            coordinator: NodeId(c),
            participants,
            told,
        },
    );
    (
        proptest::collection::vec(coord, 0..4),
        proptest::collection::vec(part, 0..4),
        any::<bool>(),
    )
        .prop_map(|(coords, parts, forgotten)| Snapshot3 {
            coords,
            parts,
            forgotten,
        })
}

fn record3() -> impl Strategy<Value = Record3> {
    let coord = coord_state3();
    prop_oneof![
        (tx(), coord, nodes()).prop_map(|(tx, state, participants)| Record3::Coord {
            tx,
            state,
            participants
        }),
        (tx(), part_state3(), any::<u64>(), nodes()).prop_map(|(tx, state, c, participants)| {
            Record3::Part {
                tx,
                state,
                coordinator: NodeId(c),
                participants,
            }
        }),
        snapshot3().prop_map(Record3::Snapshot),
    ]
}

proptest! {
    #[test]
    fn messages3_round_trip_and_every_truncation_is_an_error(m in message3()) {
        round_trip_and_truncations(&m);
    }

    #[test]
    fn records3_round_trip_and_every_truncation_is_an_error(r in record3()) {
        round_trip_and_truncations(&r);
        let bytes = ft_core::record::encode(&r);
        prop_assert_eq!(ft_core::record::decode::<Record3>(bytes.clone()).unwrap(), r);
        // Every truncation of the framed record is an error too.
        for cut in 0..bytes.len() {
            prop_assert!(ft_core::record::decode::<Record3>(bytes.slice(..cut)).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_3pc_decoders(
        b in proptest::collection::vec(any::<u8>(), 0..200)
    ) {
        // Whatever decodes re-encodes to the bytes it came from (no two
        // encodings of one value; trailing bytes are refused).
        if let Ok(m) = Message3::from_bytes(Bytes::from(b.clone())) {
            prop_assert_eq!(&m.to_bytes()[..], &b[..]);
        }
        if let Ok(r) = Record3::from_bytes(Bytes::from(b.clone())) {
            prop_assert_eq!(&r.to_bytes()[..], &b[..]);
        }
        let _ = ft_core::record::decode::<Record3>(Bytes::from(b));
    }

    #[test]
    fn hostile_3pc_bytes_a_valid_prefix_with_a_corrupt_byte(
        m in message3(),
        r in record3(),
        at in any::<prop::sample::Index>(),
        x in any::<u8>(),
    ) {
        for bytes in [m.to_bytes(), r.to_bytes()] {
            let mut b = bytes.to_vec();
            let i = at.index(b.len());
            b[i] ^= x;
            let _ = Message3::from_bytes(Bytes::from(b.clone()));
            let _ = Record3::from_bytes(Bytes::from(b));
        }
    }
}

#[test]
fn three_phase_limits_and_unknown_tags_are_typed_errors() {
    // A forged id length above the maximum.
    let mut b = BytesMut::new();
    b.put_u8(2);
    b.put_u8(MAX_TX_ID as u8 + 1);
    b.put_slice(&[0; 80]);
    assert_eq!(
        Message3::from_bytes(b.freeze()),
        Err(DecodeError::Oversized {
            len: MAX_TX_ID + 1,
            max: MAX_TX_ID
        })
    );
    // A forged participant count above the maximum costs nothing, in a
    // VOTE_REQUEST and in either record.
    for prefix in [
        &[1u8, 0][..],
        &[1, 0, 1],
        &[2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        let mut b = BytesMut::new();
        b.put_slice(prefix);
        b.put_u16_le(MAX_PARTICIPANTS as u16 + 1);
        let m = Message3::from_bytes(b.clone().freeze());
        let r = Record3::from_bytes(b.freeze());
        let over = Some(DecodeError::Oversized {
            len: MAX_PARTICIPANTS + 1,
            max: MAX_PARTICIPANTS,
        });
        assert!(
            m.clone().err() == over || r.clone().err() == over,
            "{prefix:?}: {m:?} {r:?}"
        );
    }
    for (bytes, what, tag) in [
        (&[0u8, 0][..], "Message3", 0),
        (&[10, 0], "Message3", 10),
        (&[9, 0, 5], "PartState3", 5),
    ] {
        assert!(
            matches!(
                Message3::from_bytes(Bytes::copy_from_slice(bytes)),
                Err(DecodeError::UnknownTag { what: w, tag: t }) if w == what && t == tag
            ),
            "{bytes:?}"
        );
    }
    for (bytes, what, tag) in [
        (&[0u8][..], "Record3", 0),
        (&[4], "Record3", 4),
        // A snapshot: a bad `forgotten` flag; INIT in a participant entry
        // (never logged); a bad `told` flag.
        (&[3, 2], "bool", 2),
        (
            &[
                3, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
            "Snap3Part state",
            0,
        ),
        (&[3, 0, 1, 0, 0, 0, 0, 1, 0, 0, 9], "bool", 9),
        // INIT is never logged by a coordinator.
        (&[1, 0, 0], "CoordState3", 0),
        (&[1, 0, 5], "CoordState3", 5),
        (&[2, 0, 7], "PartState3", 7),
    ] {
        assert!(
            matches!(
                Record3::from_bytes(Bytes::copy_from_slice(bytes)),
                Err(DecodeError::UnknownTag { what: w, tag: t }) if w == what && t == tag
            ),
            "{bytes:?}"
        );
    }
}

#[test]
fn a_forged_snapshot3_entry_count_is_refused_before_allocating() {
    for prefix in [&[3u8, 0][..], &[3, 0, 0, 0, 0, 0]] {
        let mut b = BytesMut::new();
        b.put_slice(prefix);
        b.put_u32_le(MAX_SNAPSHOT3_ENTRIES as u32 + 1);
        assert_eq!(
            Record3::from_bytes(b.freeze()),
            Err(DecodeError::Oversized {
                len: MAX_SNAPSHOT3_ENTRIES + 1,
                max: MAX_SNAPSHOT3_ENTRIES
            }),
            "{prefix:?}"
        );
        // A count within the limit but beyond the bytes there: an error
        // before anything is allocated.
        let mut b = BytesMut::new();
        b.put_slice(prefix);
        b.put_u32_le(MAX_SNAPSHOT3_ENTRIES as u32);
        // (The whole claimed size is asked for at once.)
        assert!(matches!(
            Record3::from_bytes(b.freeze()),
            Err(DecodeError::Truncated { needed, .. }) if needed >= MAX_SNAPSHOT3_ENTRIES
        ));
    }
}

#[test]
fn record3_version_1_is_still_read_and_version_3_is_refused() {
    let r = Record3::Part {
        tx: TxId::new(&b"t"[..]).unwrap(),
        state: PartState3::Ready,
        coordinator: NodeId(1),
        participants: vec![NodeId(2)],
    };
    let bytes = ft_core::record::encode(&r);
    // The header: component, then version.
    let at = 1;
    assert_eq!(bytes[at], 2);
    for (version, ok) in [(1u8, true), (2, true), (3, false)] {
        let mut b = bytes.to_vec();
        b[at] = version;
        let got = ft_core::record::decode::<Record3>(Bytes::from(b));
        assert_eq!(got.is_ok(), ok, "version {version}: {got:?}");
    }
}

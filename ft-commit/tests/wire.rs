//! Decoders of messages and log records: round trips, every truncation is
//! a typed error, arbitrary bytes never panic, limits are enforced.

use bytes::{BufMut, Bytes, BytesMut};
use ft_commit::snapshot::{MAX_SNAPSHOT_ENTRIES, SnapCoord, SnapPart, Snapshot};
use ft_commit::{
    DecisionEntry, LogRecord, MAX_BATCH, MAX_PARTICIPANTS, MAX_TX_ID, Message, PeerState, TxId,
    Vote,
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

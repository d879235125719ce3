//! The wire format: every message round-trips, and no input, however
//! hostile, makes the decoder panic or over-allocate.

use bytes::{Bytes, BytesMut};
use ft_core::{DecodeError, Incarnation, NodeId, Wire};
use ft_multicast::header::{self, Decision, Header};
use ft_multicast::message::{MAX_ECHOES, MAX_FEC_K, MAX_NACK_RANGES, MESSAGE_VERSION};
use ft_multicast::total::OrderRecord;
use ft_multicast::{GroupId, McastMessage, Order};
use proptest::prelude::*;

fn message() -> impl Strategy<Value = McastMessage> {
    let group = any::<u32>().prop_map(GroupId);
    let life = any::<u64>().prop_map(Incarnation);
    prop_oneof![
        (
            group.clone(),
            life.clone(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(group, life, seq, base, p)| McastMessage::Data {
                group,
                life,
                seq,
                base,
                payload: Bytes::from(p),
            }),
        (group.clone(), life.clone(), any::<u64>())
            .prop_map(|(group, life, upto)| McastMessage::Ack { group, life, upto }),
        (
            group.clone(),
            life.clone(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..=MAX_NACK_RANGES)
        )
            .prop_map(|(group, life, ranges)| McastMessage::Nack {
                group,
                life,
                ranges
            }),
        (group.clone(), life.clone(), any::<u64>(), any::<u64>()).prop_map(
            |(group, life, base, highest)| McastMessage::Announce {
                group,
                life,
                base,
                highest,
            }
        ),
        (
            group.clone(),
            any::<u64>(),
            life.clone(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..=MAX_NACK_RANGES)
        )
            .prop_map(|(group, origin, life, ranges)| McastMessage::Request {
                group,
                origin: NodeId(origin),
                life,
                ranges
            }),
        (
            group.clone(),
            any::<u64>(),
            life.clone(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(group, origin, life, seq, p)| McastMessage::Repair {
                group,
                origin: NodeId(origin),
                life,
                seq,
                payload: Bytes::from(p),
            }),
        (
            group.clone(),
            (life.clone(), any::<u64>(), any::<u64>()),
            (any::<u16>(), any::<u16>()),
            proptest::collection::vec(any::<u32>(), 0..=MAX_FEC_K),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(group, (life, origin, block), (k, index), lens, shard)| {
                McastMessage::Parity {
                    group,
                    origin: NodeId(origin),
                    life,
                    block,
                    k,
                    index,
                    lens,
                    shard: Bytes::from(shard),
                }
            }),
        (
            group,
            life,
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..=MAX_ECHOES)
        )
            .prop_map(
                |(group, life, base, highest, stamp, e)| McastMessage::Session {
                    group,
                    life,
                    base,
                    highest,
                    stamp,
                    echoes: e.into_iter().map(|(n, s, h)| (NodeId(n), s, h)).collect(),
                }
            ),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in message()) {
        let bytes = msg.to_bytes();
        prop_assert!(msg.encoded_len_hint() >= bytes.len());
        prop_assert_eq!(McastMessage::from_bytes(bytes).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = McastMessage::from_bytes(Bytes::from(bytes));
    }

    #[test]
    fn every_truncation_is_a_typed_error(msg in message(), cut in 0usize..1000) {
        let bytes = msg.to_bytes();
        let cut = cut % bytes.len();
        prop_assert!(McastMessage::from_bytes(bytes.slice(..cut)).is_err());
    }
}

#[test]
fn hostile_lengths_are_refused_before_allocating() {
    // A NACK claiming four billion ranges.
    let mut b = BytesMut::new();
    b.extend_from_slice(&[MESSAGE_VERSION, 3]);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        McastMessage::from_bytes(b.freeze()),
        Err(DecodeError::Invalid(_))
    ));
    // A payload claiming 4 GiB.
    let mut b = BytesMut::new();
    b.extend_from_slice(&[MESSAGE_VERSION, 1]);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(McastMessage::from_bytes(b.freeze()).is_err());
    // A session message claiming four billion echoes.
    let mut b = BytesMut::new();
    b.extend_from_slice(&[MESSAGE_VERSION, 7]);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&[0; 32]);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        McastMessage::from_bytes(b.freeze()),
        Err(DecodeError::Invalid(_))
    ));
    // A parity packet claiming 65535 lengths, and one claiming a 4 GiB
    // shard.
    let parity = |lens: u16, shard: u32| {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[MESSAGE_VERSION, 32]);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0; 24]);
        b.extend_from_slice(&[4, 0, 0, 0]);
        b.extend_from_slice(&lens.to_le_bytes());
        b.extend_from_slice(&vec![0; 4 * usize::from(lens.min(4))]);
        b.extend_from_slice(&shard.to_le_bytes());
        McastMessage::from_bytes(b.freeze())
    };
    assert!(matches!(parity(u16::MAX, 0), Err(DecodeError::Invalid(_))));
    assert!(parity(4, u32::MAX).is_err());
    assert!(parity(4, 0).is_ok());
    // Another version, an unknown tag.
    assert!(matches!(
        McastMessage::from_bytes(Bytes::from_static(&[MESSAGE_VERSION + 1, 1])),
        Err(DecodeError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        McastMessage::from_bytes(Bytes::from_static(&[MESSAGE_VERSION, 9])),
        Err(DecodeError::UnknownTag { .. })
    ));
}

/// The hierarchical-feedback messages (`Feedback::Tree`).
fn tree_message() -> impl Strategy<Value = McastMessage> {
    let group = any::<u32>().prop_map(GroupId);
    let life = any::<u64>().prop_map(Incarnation);
    let origin = any::<u64>().prop_map(NodeId);
    prop_oneof![
        (group.clone(), origin.clone(), life.clone(), any::<u64>()).prop_map(
            |(group, origin, life, upto)| McastMessage::TreeAck {
                group,
                origin,
                life,
                upto,
            }
        ),
        (
            group.clone(),
            origin.clone(),
            life.clone(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..=MAX_NACK_RANGES)
        )
            .prop_map(|(group, origin, life, ranges)| McastMessage::TreeNack {
                group,
                origin,
                life,
                ranges,
            }),
        (
            group.clone(),
            origin.clone(),
            life.clone(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(
                |(group, origin, life, seq, base, p)| McastMessage::TreeRepair {
                    group,
                    origin,
                    life,
                    seq,
                    base,
                    payload: Bytes::from(p),
                }
            ),
        (
            group.clone(),
            origin.clone(),
            life.clone(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(group, origin, life, base, highest)| McastMessage::TreeAnnounce {
                    group,
                    origin,
                    life,
                    base,
                    highest,
                }
            ),
        (group, origin, life).prop_map(|(group, origin, life)| McastMessage::TreeLeave {
            group,
            origin,
            life,
        }),
    ]
}

proptest! {
    #[test]
    fn every_tree_message_round_trips(msg in tree_message()) {
        let bytes = msg.to_bytes();
        prop_assert!(msg.encoded_len_hint() >= bytes.len());
        prop_assert_eq!(McastMessage::from_bytes(bytes).unwrap(), msg);
    }

    #[test]
    fn every_truncated_tree_message_is_a_typed_error(msg in tree_message(), cut in 0usize..1000) {
        let bytes = msg.to_bytes();
        let cut = cut % bytes.len();
        prop_assert!(McastMessage::from_bytes(bytes.slice(..cut)).is_err());
    }

    #[test]
    fn arbitrary_bytes_after_a_tree_tag_never_panic(
        tag in 48u8..=63,
        rest in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut b = vec![MESSAGE_VERSION, tag];
        b.extend(rest);
        let _ = McastMessage::from_bytes(Bytes::from(b));
    }
}

#[test]
fn hostile_tree_lengths_are_refused_before_allocating() {
    // A tree NACK claiming four billion ranges.
    let mut b = BytesMut::new();
    b.extend_from_slice(&[MESSAGE_VERSION, 49]);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        McastMessage::from_bytes(b.freeze()),
        Err(DecodeError::Invalid(_))
    ));
    // A tree repair claiming 4 GiB.
    let mut b = BytesMut::new();
    b.extend_from_slice(&[MESSAGE_VERSION, 50]);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&[0; 32]);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(McastMessage::from_bytes(b.freeze()).is_err());
    // Tags of the tree's range that mean nothing yet, and those around it.
    for tag in [8, 47, 53, 63, 64] {
        assert!(
            matches!(
                McastMessage::from_bytes(Bytes::from(vec![
                    MESSAGE_VERSION,
                    tag,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0
                ])),
                Err(DecodeError::UnknownTag { .. })
            ),
            "tag {tag}"
        );
    }
}

// ---- the ordering layer: its messages, its header, its records ----

fn ids(most: usize) -> impl Strategy<Value = Vec<(NodeId, Incarnation, u64)>> {
    proptest::collection::vec(
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(k, l, n)| (NodeId(k), Incarnation(l), n)),
        0..most,
    )
}

fn ordering_message() -> impl Strategy<Value = McastMessage> {
    let group = any::<u32>().prop_map(GroupId);
    let life = any::<u64>().prop_map(Incarnation);
    prop_oneof![
        (
            group.clone(),
            life.clone(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(group, life, number, p)| McastMessage::Datagram {
                group,
                life,
                number,
                payload: Bytes::from(p),
            }),
        (group.clone(), life.clone(), any::<u64>(), ids(8)).prop_map(
            |(group, life, upto, lacking)| McastMessage::Have {
                group,
                life,
                upto,
                lacking,
            }
        ),
        (
            group,
            life,
            (any::<u64>(), any::<u64>(), any::<u64>()),
            ids(8)
        )
            .prop_map(|(group, life, (highest, next, stable), prefix)| {
                McastMessage::Beacon {
                    group,
                    life,
                    highest,
                    next,
                    stable,
                    prefix,
                }
            }),
    ]
}

fn level() -> impl Strategy<Value = Order> {
    prop_oneof![
        Just(Order::Reliable),
        Just(Order::Fifo),
        Just(Order::Causal),
        Just(Order::Agreed),
        Just(Order::Safe),
    ]
}

proptest! {
    #[test]
    fn every_ordering_message_round_trips(msg in ordering_message()) {
        let bytes = msg.to_bytes();
        prop_assert!(msg.encoded_len_hint() >= bytes.len());
        prop_assert_eq!(McastMessage::from_bytes(bytes).unwrap(), msg);
    }

    #[test]
    fn every_truncated_ordering_message_is_a_typed_error(msg in ordering_message(), cut in 0usize..1000) {
        let bytes = msg.to_bytes();
        let cut = cut % bytes.len();
        prop_assert!(McastMessage::from_bytes(bytes.slice(..cut)).is_err());
    }

    #[test]
    fn the_ordering_header_round_trips(
        order in level(),
        past in ids(8),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        first in any::<u64>(),
        entries in ids(header::MAX_DECISIONS + 1),
        prefix in ids(8),
    ) {
        let bytes = header::encode_message(order, &past, &payload);
        prop_assert_eq!(
            header::decode(bytes).unwrap(),
            Header::Message { order, past, payload: Bytes::from(payload) }
        );
        let d = Decision { first, entries: entries[..entries.len().min(header::MAX_DECISIONS)].to_vec(), prefix };
        prop_assert_eq!(header::decode(header::encode_decision(&d)).unwrap(), Header::Decision(d.clone()));
        // Cut anywhere inside its lists, a decision does not read.
        let bytes = header::encode_decision(&d);
        for cut in 0..bytes.len() {
            prop_assert!(header::decode(bytes.slice(..cut)).is_err());
        }
    }

    #[test]
    fn arbitrary_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = header::decode(Bytes::from(bytes.clone()));
        let _ = ft_core::record::decode::<OrderRecord>(Bytes::from(bytes));
    }

    #[test]
    fn the_sequencers_records_round_trip(
        group in any::<u32>(),
        first in any::<u64>(),
        entries in ids(8),
        prefix in ids(8),
        next in any::<u64>(),
    ) {
        let group = GroupId(group);
        for r in [
            OrderRecord::Decided(group, Decision { first, entries: entries.clone(), prefix: prefix.clone() }),
            OrderRecord::Snapshot { group, next, prefix, tail_first: first, tail: entries },
        ] {
            let bytes = ft_core::record::encode(&r);
            prop_assert_eq!(ft_core::record::decode::<OrderRecord>(bytes).unwrap(), r);
        }
    }
}

#[test]
fn hostile_ordering_lengths_are_refused_before_allocating() {
    // A beacon and a Have claiming four billion messages.
    for (tag, fixed) in [(18u8, 24usize), (17, 8)] {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[MESSAGE_VERSION, tag]);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&vec![0; fixed]);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            McastMessage::from_bytes(b.freeze()),
            Err(DecodeError::Invalid(_))
        ));
    }
    // A decision claiming four billion positions, a past claiming as
    // many dependencies, bytes after a decision, an unknown kind.
    let mut b = vec![header::HEADER_VERSION, 0x10];
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        header::decode(Bytes::from(b)),
        Err(DecodeError::Invalid(_))
    ));
    let mut b = vec![header::HEADER_VERSION, 1];
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        header::decode(Bytes::from(b)),
        Err(DecodeError::Truncated { .. })
    ));
    let mut b = header::encode_decision(&Decision::default()).to_vec();
    b.push(0);
    assert!(header::decode(Bytes::from(b)).is_err());
    assert!(matches!(
        header::decode(Bytes::from_static(&[header::HEADER_VERSION, 9])),
        Err(DecodeError::UnknownTag { .. })
    ));
}

//! Typed, versioned, tagged durable records.
//!
//! A core never hands raw bytes to stable storage: it persists values of its
//! own record enum (a [`Record`]) through its [`Outbox`](crate::Outbox), and
//! at recovery reads them back with [`RecoveryContext::read`], which
//! fails (never skips) on a record that does not decode.
//!
//! # On-disk format
//!
//! Every record a core persists is, byte for byte:
//!
//! ```text
//! +-----------+---------+---------------------------+
//! | component | version | the record, through Wire  |
//! |  1 byte   | 1 byte  |  (the core's own format)  |
//! +-----------+---------+---------------------------+
//! ```
//!
//! - **component** says which core wrote it: [`Component::SELF`] (0) for the
//!   core that persisted it. When a core embeds another, the outer core's
//!   outbox puts the inner core's [`Component`] in front of the inner
//!   record (whose own first byte is then the inner core's `SELF`), so a
//!   record of a core nested two deep starts with two component bytes.
//!   Recovery peels them off in the same order
//!   ([`RecoveryContext::component`]).
//! - **version** is [`Record::VERSION`] of the writer. A reader refuses a
//!   version it does not know with [`RecordError::Version`]; a core that
//!   changes its format raises the version and keeps reading the old one.
//! - The rest is the record's [`Wire`] encoding, which must consume it all.
//!
//! The log around the records (framing, checksums, segments) is the
//! storage's business: see `ft-storage`.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::RecoveryContext;
use crate::wire::{DecodeError, Wire};

/// A core's durable record: an enum of what it persists, encoded through
/// [`Wire`], with the version of that encoding.
///
/// ```
/// use bytes::{Buf, BufMut, Bytes, BytesMut};
/// use ft_core::wire::{self, DecodeError, Wire};
/// use ft_core::Record;
///
/// /// What a counter core persists.
/// #[derive(Debug, PartialEq)]
/// enum CounterRecord { Set(u64) }
///
/// impl Wire for CounterRecord {
///     fn encode(&self, buf: &mut BytesMut) {
///         let CounterRecord::Set(n) = self;
///         buf.put_u8(1);
///         buf.put_u64_le(*n);
///     }
///     fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
///         match wire::get_u8(buf)? {
///             1 => Ok(CounterRecord::Set(wire::get_u64(buf)?)),
///             tag => Err(DecodeError::UnknownTag { what: "CounterRecord", tag }),
///         }
///     }
/// }
///
/// impl Record for CounterRecord {
///     const VERSION: u8 = 1;
/// }
///
/// let bytes = ft_core::record::encode(&CounterRecord::Set(7));
/// assert_eq!(&bytes[..2], &[0, 1], "component SELF, version 1");
/// assert_eq!(ft_core::record::decode::<CounterRecord>(bytes).unwrap(), CounterRecord::Set(7));
/// ```
pub trait Record: Wire {
    /// The version of this record's encoding, written in front of every
    /// record. Raise it when the encoding changes.
    const VERSION: u8;

    /// Whether a record of `version` can be read by [`Wire::decode`]: by
    /// default only [`VERSION`](Self::VERSION) itself. A core that raised its
    /// version and still reads the old format says so here.
    fn reads(version: u8) -> bool {
        version == Self::VERSION
    }
}

/// Which embedded core wrote a record or asked for a persist.
///
/// [`Component::SELF`] is the core itself; an outer core numbers the cores
/// it embeds from 1, once and for ever (the number is on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Component(pub u8);

impl Component {
    /// The core that persisted the record itself.
    pub const SELF: Component = Component(0);
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "component {}", self.0)
    }
}

/// Why a durable record could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record is shorter than its two header bytes.
    #[error("a record of {len} bytes has no header (component and version)")]
    NoHeader {
        /// Its length.
        len: usize,
    },
    /// The version byte is one this code does not read.
    #[error("record version {found} is not readable here (this code writes version {writes})")]
    Version {
        /// The version found.
        found: u8,
        /// The version this code writes.
        writes: u8,
    },
    /// The payload does not decode.
    #[error("the record does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The payload decoded, but bytes were left over.
    #[error("{extra} bytes left over after the record")]
    Trailing {
        /// How many.
        extra: usize,
    },
    /// The record names a component the reading core does not embed: not
    /// its record at all (a record of another program, or of the old format
    /// without a header).
    #[error("the record belongs to {0}, which this core does not embed")]
    UnknownComponent(Component),
}

/// Why a core could not be rebuilt from its records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// Record `index` (counting from 0 among the records handed to the
    /// core that failed) could not be read.
    #[error("record {index} of {component}: {error}")]
    Record {
        /// Its position among the core's records.
        index: usize,
        /// The core it belongs to, as seen by the core reading it.
        component: Component,
        /// What is wrong with it.
        error: RecordError,
    },
    /// The records decode, but say something the core cannot accept (a
    /// snapshot that contradicts itself, a record from a future it never
    /// reached). The string says what.
    #[error("inconsistent records: {0}")]
    Inconsistent(String),
}

/// The bytes a core persists for `record`: [`Component::SELF`], the version,
/// the encoding (see the [module docs](self)).
pub fn encode<R: Record>(record: &R) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(Component::SELF.0);
    buf.put_u8(R::VERSION);
    record.encode(&mut buf);
    buf.freeze()
}

/// Reads back one record written by [`encode`].
///
/// # Errors
/// [`RecordError`] if the header is missing, names an embedded component
/// (such a record is read through [`RecoveryContext::component`]), the
/// version is unknown, the payload does not decode or bytes are left over.
pub fn decode<R: Record>(bytes: Bytes) -> Result<R, RecordError> {
    match strip(bytes)? {
        (Component::SELF, rest) => decode_payload::<R>(rest),
        (other, _) => Err(RecordError::UnknownComponent(other)),
    }
}

/// Splits a record into its component and the rest.
fn strip(mut bytes: Bytes) -> Result<(Component, Bytes), RecordError> {
    if bytes.len() < 2 {
        return Err(RecordError::NoHeader { len: bytes.len() });
    }
    let c = Component(bytes[0]);
    let rest = bytes.split_off(1);
    Ok((c, rest))
}

/// Decodes `version | payload`.
fn decode_payload<R: Record>(mut bytes: Bytes) -> Result<R, RecordError> {
    let Some(&version) = bytes.first() else {
        return Err(RecordError::NoHeader { len: 1 });
    };
    if !R::reads(version) {
        return Err(RecordError::Version {
            found: version,
            writes: R::VERSION,
        });
    }
    let mut payload = bytes.split_off(1);
    let record = R::decode(&mut payload)?;
    if !payload.is_empty() {
        return Err(RecordError::Trailing {
            extra: payload.len(),
        });
    }
    Ok(record)
}

/// `record` as it goes to storage when the core that wrote it is embedded
/// as `component`: the component byte in front.
pub(crate) fn tag(component: Component, record: &Bytes) -> Bytes {
    let mut buf = BytesMut::with_capacity(record.len() + 1);
    buf.put_u8(component.0);
    buf.extend_from_slice(record);
    buf.freeze()
}

impl RecoveryContext {
    /// The records of a core that embeds no other, decoded as `R`, in the
    /// order they were persisted.
    ///
    /// # Errors
    /// [`RecoveryError::Record`] for the first record that does not read,
    /// including one that names a component ([`RecordError::UnknownComponent`]):
    /// a core never skips a record silently.
    pub fn read<R: Record>(&self) -> Result<Vec<R>, RecoveryError> {
        self.read_beside(&[])
    }

    /// The records this core wrote itself ([`Component::SELF`]), decoded as
    /// `R`, in the order they were persisted, for a core that embeds the
    /// cores numbered `embedded`: their records are left for them (each
    /// reads its own from [`component`](Self::component)).
    ///
    /// # Errors
    /// [`RecoveryError::Record`] for the first record that does not read, or
    /// that names a component not in `embedded`.
    pub fn read_beside<R: Record>(&self, embedded: &[Component]) -> Result<Vec<R>, RecoveryError> {
        let mut out = Vec::new();
        for (index, raw) in self.records.iter().enumerate() {
            let error = |error| RecoveryError::Record {
                index,
                component: Component::SELF,
                error,
            };
            let (c, rest) = strip(raw.clone()).map_err(error)?;
            if c == Component::SELF {
                out.push(decode_payload::<R>(rest).map_err(error)?);
            } else if !embedded.contains(&c) {
                return Err(error(RecordError::UnknownComponent(c)));
            }
        }
        Ok(out)
    }

    /// The context to rebuild the core embedded as `component` from: the
    /// same node, incarnation and time, its own records (this core's
    /// component byte taken off), and a seed of its own derived from this
    /// one.
    pub fn component(&self, component: Component) -> RecoveryContext {
        let records = self
            .records
            .iter()
            .filter(|r| r.first() == Some(&component.0) && component != Component::SELF)
            .map(|r| r.slice(1..))
            .collect();
        RecoveryContext {
            node: self.node,
            incarnation: self.incarnation,
            records,
            seed: crate::rng::mix(self.seed, u64::from(component.0)),
            now: self.now,
        }
    }

    /// The components that have records here (this core's own included, as
    /// [`Component::SELF`]), each once, in increasing order. A record too
    /// short to name one is ignored here; [`read`](Self::read)
    /// reports it.
    pub fn components(&self) -> Vec<Component> {
        let mut seen: Vec<Component> = self
            .records
            .iter()
            .filter_map(|r| r.first().map(|&c| Component(c)))
            .collect();
        seen.sort();
        seen.dedup();
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Incarnation, NodeId};
    use crate::wire;
    use bytes::Buf;
    use std::time::Instant;

    #[derive(Debug, PartialEq)]
    struct N(u64);
    impl Wire for N {
        fn encode(&self, buf: &mut BytesMut) {
            buf.put_u64_le(self.0);
        }
        fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
            wire::need(buf, 8)?;
            Ok(N(buf.get_u64_le()))
        }
    }
    impl Record for N {
        const VERSION: u8 = 3;
    }

    fn ctx(records: Vec<Bytes>) -> RecoveryContext {
        RecoveryContext {
            node: NodeId(1),
            incarnation: Incarnation(2),
            records,
            seed: 5,
            now: Instant::now(),
        }
    }

    #[test]
    fn records_round_trip_and_components_split() {
        let own = encode(&N(1));
        let inner = tag(Component(2), &encode(&N(20)));
        let deeper = tag(Component(2), &tag(Component(1), &encode(&N(210))));
        assert_eq!(
            decode::<N>(inner.clone()),
            Err(RecordError::UnknownComponent(Component(2)))
        );
        let c = ctx(vec![own.clone(), inner, deeper, encode(&N(3))]);
        assert_eq!(
            c.read_beside::<N>(&[Component(2)]).unwrap(),
            vec![N(1), N(3)]
        );
        // A core that embeds nothing refuses another component's record.
        assert_eq!(
            c.read::<N>(),
            Err(RecoveryError::Record {
                index: 1,
                component: Component::SELF,
                error: RecordError::UnknownComponent(Component(2))
            })
        );
        assert_eq!(c.components(), vec![Component::SELF, Component(2)]);
        let two = c.component(Component(2));
        assert_eq!(two.read_beside::<N>(&[Component(1)]).unwrap(), vec![N(20)]);
        assert_eq!(
            two.component(Component(1)).read::<N>().unwrap(),
            vec![N(210)]
        );
        assert_ne!(two.seed, c.seed);
        assert!(c.component(Component(9)).records.is_empty());
        assert!(c.component(Component::SELF).records.is_empty());
    }

    #[test]
    fn a_bad_record_is_an_error_never_skipped() {
        let short = Bytes::from_static(&[0]);
        let wrong_version = Bytes::from_static(&[0, 9, 1, 2, 3, 4, 5, 6, 7, 8]);
        let truncated = Bytes::from_static(&[0, 3, 1, 2]);
        let trailing = {
            let mut b = BytesMut::from(&encode(&N(1))[..]);
            b.put_u8(0);
            b.freeze()
        };
        for (bad, expect) in [
            (short, RecordError::NoHeader { len: 1 }),
            (
                wrong_version,
                RecordError::Version {
                    found: 9,
                    writes: 3,
                },
            ),
            (
                truncated,
                RecordError::Decode(DecodeError::Truncated {
                    needed: 6,
                    available: 2,
                }),
            ),
            (trailing, RecordError::Trailing { extra: 1 }),
        ] {
            let c = ctx(vec![encode(&N(1)), bad]);
            assert_eq!(
                c.read::<N>(),
                Err(RecoveryError::Record {
                    index: 1,
                    component: Component::SELF,
                    error: expect
                })
            );
        }
    }
}

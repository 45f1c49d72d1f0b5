//! The data types every store speaks: ids, events, atomic writes, snapshots, offsets.

use std::borrow::Borrow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::error::{Error, Result};

/// A sequence number: 1 for an entity's first event, then one more for each event.
pub type SequenceNr = u64;

/// The largest length of a persistence id, in bytes of UTF-8.
pub const MAX_PERSISTENCE_ID_BYTES: usize = 255;

/// The id of one event-sourced entity, validated on construction.
///
/// A valid id is non-empty UTF-8 of at most [`MAX_PERSISTENCE_ID_BYTES`] bytes with no
/// control characters. Anything else is an [`crate::ErrorKind::InvalidInput`] error, so a
/// backend never sees an id it would mangle.
///
/// ```
/// use persistence_api::{ErrorKind, PersistenceId};
/// let id = PersistenceId::new("account|42 #é").unwrap();
/// assert_eq!(id.as_str(), "account|42 #é");
/// assert_eq!(PersistenceId::new("").unwrap_err().kind(), ErrorKind::InvalidInput);
/// assert_eq!(PersistenceId::new("a\nb").unwrap_err().kind(), ErrorKind::InvalidInput);
/// assert!(PersistenceId::new("x".repeat(256)).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PersistenceId(String);

impl PersistenceId {
    /// Validates `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        Self::validate(&id)?;
        Ok(PersistenceId(id))
    }

    /// Checks `id` against the rules without allocating.
    pub fn validate(id: &str) -> Result<()> {
        if id.is_empty() {
            return Err(Error::invalid_input("persistence id must not be empty"));
        }
        if id.len() > MAX_PERSISTENCE_ID_BYTES {
            return Err(Error::invalid_input(format!(
                "persistence id is {} bytes long; at most {MAX_PERSISTENCE_ID_BYTES} bytes are allowed",
                id.len()
            )));
        }
        if let Some(c) = id.chars().find(|c| c.is_control()) {
            return Err(Error::invalid_input(format!(
                "persistence id contains the control character {:?}",
                c
            )));
        }
        Ok(())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl<'de> Deserialize<'de> for PersistenceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PersistenceId::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for PersistenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PersistenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for PersistenceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for PersistenceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for PersistenceId {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self> {
        PersistenceId::new(value)
    }
}

impl TryFrom<String> for PersistenceId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        PersistenceId::new(value)
    }
}

/// Milliseconds since the Unix epoch, as the Pekko journals store them.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The earliest timestamp (0, the epoch): matches every snapshot's timestamp from below.
    pub const MIN: Timestamp = Timestamp(0);
    /// The latest timestamp: matches every snapshot's timestamp from above.
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// The current wall-clock time.
    pub fn now() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(millis)
    }

    /// A timestamp of `millis` milliseconds since the epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }
}

/// Serialized bytes plus what is needed to decode them again.
///
/// `serializer_id` names the codec (`"cbor"` for [`crate::CborCodec`]); `manifest` names the
/// type and its schema version (`"bank.AccountEvent/v2"`), so old bytes can be upcast.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Payload {
    /// Which codec wrote the bytes.
    pub serializer_id: String,
    /// The type and schema version of the bytes, as the codec understands it.
    pub manifest: String,
    /// The serialized value.
    pub bytes: Bytes,
}

impl Payload {
    /// A payload of `bytes` written by `serializer_id` with `manifest`.
    pub fn new(
        serializer_id: impl Into<String>,
        manifest: impl Into<String>,
        bytes: impl Into<Bytes>,
    ) -> Self {
        Payload {
            serializer_id: serializer_id.into(),
            manifest: manifest.into(),
            bytes: bytes.into(),
        }
    }

    /// Raw bytes with an empty serializer id and manifest (for tests and opaque payloads).
    pub fn raw(bytes: impl Into<Bytes>) -> Self {
        Payload::new("", "", bytes)
    }

    /// The size counted against a store's limits: the bytes plus both strings.
    pub fn stored_size(&self) -> usize {
        self.bytes.len() + self.serializer_id.len() + self.manifest.len()
    }
}

/// One event as the journal stores and replays it.
///
/// Field for field what a Pekko `PersistentRepr` holds: the id and sequence number, the
/// serialized payload with its serializer id and manifest, the event adapter manifest, the
/// id of the writer that persisted it, the write time, the tags, and optional metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentEvent {
    /// The entity this event belongs to.
    pub persistence_id: PersistenceId,
    /// Its position in the entity's history, from 1.
    pub sequence_nr: SequenceNr,
    /// The serialized event.
    pub payload: Payload,
    /// The manifest an event adapter set, or empty.
    pub event_manifest: String,
    /// The id of the writer (one incarnation of the entity) that persisted it.
    pub writer_id: String,
    /// When it was written.
    pub timestamp: Timestamp,
    /// The tags under which the event is found by events-by-tag queries.
    pub tags: Vec<String>,
    /// Metadata stored beside the event, if any.
    pub metadata: Option<Payload>,
}

impl PersistentEvent {
    /// An event with no tags, no metadata, an empty writer id and the current time.
    pub fn new(persistence_id: PersistenceId, sequence_nr: SequenceNr, payload: Payload) -> Self {
        PersistentEvent {
            persistence_id,
            sequence_nr,
            payload,
            event_manifest: String::new(),
            writer_id: String::new(),
            timestamp: Timestamp::now(),
            tags: Vec::new(),
            metadata: None,
        }
    }

    /// Sets the tags.
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the writer id.
    pub fn with_writer_id(mut self, writer_id: impl Into<String>) -> Self {
        self.writer_id = writer_id.into();
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Payload) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The size that counts against [`crate::Capabilities::max_event_size`]: every
    /// variable-length part of the event (payload, manifests, ids, tags, metadata).
    ///
    /// A backend declares a limit on this number such that any event within it is storable;
    /// its own fixed overhead (attribute names, numbers) is its business.
    pub fn stored_size(&self) -> usize {
        self.payload.stored_size()
            + self.event_manifest.len()
            + self.writer_id.len()
            + self.persistence_id.as_str().len()
            + self.tags.iter().map(String::len).sum::<usize>()
            + self.metadata.as_ref().map_or(0, Payload::stored_size)
    }

    /// Decodes the payload with `codec`. A failure keeps the codec's kind
    /// ([`crate::ErrorKind::Serialization`] for [`crate::CborCodec`]) and names this event:
    /// its persistence id and sequence number are in the error's fields and its text.
    ///
    /// ```
    /// use persistence_api::{CborCodec, Codec, ErrorKind, Payload, PersistenceId, PersistentEvent};
    /// let codec = CborCodec::<u32>::new("n");
    /// let id = PersistenceId::new("counter-1").unwrap();
    /// let good = PersistentEvent::new(id.clone(), 1, codec.encode(&7).unwrap());
    /// assert_eq!(good.decode_payload(&codec).unwrap(), 7);
    ///
    /// let bad = PersistentEvent::new(id, 2, Payload::new("cbor", "n/v1", vec![0xff; 4]));
    /// let err = bad.decode_payload(&codec).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Serialization);
    /// assert_eq!((err.persistence_id(), err.sequence_range()), (Some("counter-1"), Some((2, 2))));
    /// assert!(err.to_string().contains("persistence id counter-1, sequence number 2"), "{err}");
    /// ```
    pub fn decode_payload<T>(&self, codec: &(impl Codec<T> + ?Sized)) -> Result<T> {
        codec.decode(&self.payload).map_err(|e| {
            e.with_persistence_id(self.persistence_id.as_str())
                .with_sequence_range(self.sequence_nr, self.sequence_nr)
        })
    }
}

/// One or more events of one persistence id with consecutive sequence numbers, stored all
/// or nothing.
///
/// ```
/// use persistence_api::{AtomicWrite, Payload, PersistenceId, PersistentEvent};
/// let id = PersistenceId::new("a").unwrap();
/// let e = |n| PersistentEvent::new(id.clone(), n, Payload::raw(vec![n as u8]));
/// let w = AtomicWrite::new(vec![e(4), e(5)]).unwrap();
/// assert_eq!((w.lowest_sequence_nr(), w.highest_sequence_nr()), (4, 5));
/// assert!(AtomicWrite::new(vec![e(4), e(6)]).is_err());
/// assert!(AtomicWrite::new(vec![]).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtomicWrite {
    events: Vec<PersistentEvent>,
}

impl AtomicWrite {
    /// Checks that `events` are non-empty, of one id, numbered consecutively from at least 1.
    pub fn new(events: Vec<PersistentEvent>) -> Result<Self> {
        let Some(first) = events.first() else {
            return Err(Error::invalid_input(
                "an atomic write needs at least one event",
            ));
        };
        if first.sequence_nr == 0 {
            return Err(Error::invalid_input("sequence numbers start at 1")
                .with_persistence_id(first.persistence_id.as_str()));
        }
        for (i, e) in events.iter().enumerate() {
            if e.persistence_id != first.persistence_id {
                return Err(Error::invalid_input(format!(
                    "an atomic write holds events of one persistence id, found {} and {}",
                    first.persistence_id, e.persistence_id
                )));
            }
            let expected = first.sequence_nr.checked_add(i as u64);
            if Some(e.sequence_nr) != expected {
                return Err(Error::invalid_input(format!(
                    "sequence numbers of an atomic write must be consecutive: expected {}, found {}",
                    expected.unwrap_or(u64::MAX),
                    e.sequence_nr
                ))
                .with_persistence_id(first.persistence_id.as_str()));
            }
        }
        Ok(AtomicWrite { events })
    }

    /// A write of one event (always valid once the event's sequence number is at least 1).
    pub fn single(event: PersistentEvent) -> Result<Self> {
        AtomicWrite::new(vec![event])
    }

    /// The id all events belong to.
    pub fn persistence_id(&self) -> &PersistenceId {
        &self.events[0].persistence_id
    }

    /// The first sequence number.
    pub fn lowest_sequence_nr(&self) -> SequenceNr {
        self.events[0].sequence_nr
    }

    /// The last sequence number.
    pub fn highest_sequence_nr(&self) -> SequenceNr {
        self.events[self.events.len() - 1].sequence_nr
    }

    /// The events, in order.
    pub fn events(&self) -> &[PersistentEvent] {
        &self.events
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Always false: an atomic write holds at least one event.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Takes the events out.
    pub fn into_events(self) -> Vec<PersistentEvent> {
        self.events
    }
}

/// Identifies one snapshot: the entity, the sequence number it was taken at, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    /// The entity.
    pub persistence_id: PersistenceId,
    /// The sequence number of the last event the snapshot includes.
    pub sequence_nr: SequenceNr,
    /// When it was taken. In [`crate::SnapshotStore::delete_snapshot`], `Timestamp::MIN`
    /// (0) means "whatever the timestamp".
    pub timestamp: Timestamp,
    /// Metadata stored beside the snapshot, if any.
    pub metadata: Option<Payload>,
}

impl SnapshotMetadata {
    /// Metadata for a snapshot of `persistence_id` at `sequence_nr` taken now.
    pub fn new(persistence_id: PersistenceId, sequence_nr: SequenceNr) -> Self {
        SnapshotMetadata {
            persistence_id,
            sequence_nr,
            timestamp: Timestamp::now(),
            metadata: None,
        }
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = timestamp;
        self
    }
}

/// A loaded snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedSnapshot {
    /// Which snapshot it is.
    pub metadata: SnapshotMetadata,
    /// The serialized state.
    pub snapshot: Payload,
}

impl SelectedSnapshot {
    /// Decodes the state with `codec`. A failure keeps the codec's kind and names this
    /// snapshot: its persistence id and sequence number are in the error's fields and text,
    /// as [`PersistentEvent::decode_payload`] does for an event.
    pub fn decode_snapshot<T>(&self, codec: &(impl Codec<T> + ?Sized)) -> Result<T> {
        let (id, seq) = (&self.metadata.persistence_id, self.metadata.sequence_nr);
        codec.decode(&self.snapshot).map_err(|e| {
            e.with_persistence_id(id.as_str())
                .with_sequence_range(seq, seq)
        })
    }
}

/// Which snapshots a load or delete selects; all bounds are inclusive.
///
/// A snapshot matches when `min_sequence_nr <= sequence_nr <= max_sequence_nr` and
/// `min_timestamp <= timestamp <= max_timestamp`. [`SnapshotSelectionCriteria::latest`]
/// matches everything; [`SnapshotSelectionCriteria::none`] matches nothing.
///
/// ```
/// use persistence_api::{SnapshotSelectionCriteria, Timestamp};
/// let c = SnapshotSelectionCriteria::latest().with_max_sequence_nr(13);
/// assert!(c.matches(13, Timestamp::from_millis(5)));
/// assert!(!c.matches(14, Timestamp::from_millis(5)));
/// assert!(!SnapshotSelectionCriteria::none().matches(0, Timestamp::MIN));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSelectionCriteria {
    /// Upper bound on the sequence number.
    pub max_sequence_nr: SequenceNr,
    /// Upper bound on the timestamp.
    pub max_timestamp: Timestamp,
    /// Lower bound on the sequence number.
    pub min_sequence_nr: SequenceNr,
    /// Lower bound on the timestamp.
    pub min_timestamp: Timestamp,
}

impl Default for SnapshotSelectionCriteria {
    fn default() -> Self {
        Self::latest()
    }
}

impl SnapshotSelectionCriteria {
    /// Matches every snapshot; a load returns the one with the highest sequence number.
    pub const fn latest() -> Self {
        SnapshotSelectionCriteria {
            max_sequence_nr: u64::MAX,
            max_timestamp: Timestamp::MAX,
            min_sequence_nr: 0,
            min_timestamp: Timestamp::MIN,
        }
    }

    /// Matches no snapshot.
    pub const fn none() -> Self {
        SnapshotSelectionCriteria {
            max_sequence_nr: 0,
            max_timestamp: Timestamp::MIN,
            min_sequence_nr: 1,
            min_timestamp: Timestamp::MIN,
        }
    }

    /// Sets the upper bound on the sequence number.
    pub fn with_max_sequence_nr(mut self, max: SequenceNr) -> Self {
        self.max_sequence_nr = max;
        self
    }

    /// Sets the upper bound on the timestamp.
    pub fn with_max_timestamp(mut self, max: Timestamp) -> Self {
        self.max_timestamp = max;
        self
    }

    /// Sets the lower bound on the sequence number.
    pub fn with_min_sequence_nr(mut self, min: SequenceNr) -> Self {
        self.min_sequence_nr = min;
        self
    }

    /// Sets the lower bound on the timestamp.
    pub fn with_min_timestamp(mut self, min: Timestamp) -> Self {
        self.min_timestamp = min;
        self
    }

    /// Whether a snapshot at `sequence_nr` taken at `timestamp` matches.
    pub fn matches(&self, sequence_nr: SequenceNr, timestamp: Timestamp) -> bool {
        sequence_nr <= self.max_sequence_nr
            && sequence_nr >= self.min_sequence_nr
            && timestamp <= self.max_timestamp
            && timestamp >= self.min_timestamp
    }

    /// Whether no snapshot can match (the `none` criteria or crossed bounds).
    pub fn is_empty(&self) -> bool {
        self.max_sequence_nr < self.min_sequence_nr || self.max_timestamp < self.min_timestamp
    }
}

/// Where an events-by-tag query starts, and the position each envelope reports.
///
/// Offsets are exclusive: a query from an envelope's offset yields the events after it.
/// Which variant a backend uses is its business (the memory and SQL drivers use a global
/// [`Offset::Sequence`], Cassandra [`Offset::TimeBasedUuid`], DynamoDB an opaque sortable
/// [`Offset::Token`]); callers store the offset they got and hand it back unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Offset {
    /// From the beginning.
    #[default]
    NoOffset,
    /// A position in a global or per-tag ordering.
    Sequence(u64),
    /// A time-based (version 1) UUID, as pekko-persistence-cassandra uses.
    TimeBasedUuid(uuid::Uuid),
    /// A backend-defined, lexicographically ordered position.
    Token(String),
}

/// The text form of an offset, for storing it where only text fits (a projection's offset
/// column, a command line): `none`, `sequence:<n>`, `timeuuid:<uuid>` or `token:<text>`.
/// [`str::parse`] reads it back to an equal offset.
///
/// ```
/// use persistence_api::Offset;
/// for offset in [Offset::NoOffset, Offset::Sequence(42), Offset::Token("b17:0003|x".into())] {
///     assert_eq!(offset.to_string().parse::<Offset>().unwrap(), offset);
/// }
/// assert_eq!(Offset::Sequence(7).to_string(), "sequence:7");
/// assert!("sequence:x".parse::<Offset>().is_err());
/// ```
impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offset::NoOffset => f.write_str("none"),
            Offset::Sequence(n) => write!(f, "sequence:{n}"),
            Offset::TimeBasedUuid(u) => write!(f, "timeuuid:{}", u.hyphenated()),
            Offset::Token(t) => write!(f, "token:{t}"),
        }
    }
}

impl std::str::FromStr for Offset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid_input(format!("{s:?} is not an offset: {why}"));
        if s == "none" {
            return Ok(Offset::NoOffset);
        }
        let Some((kind, value)) = s.split_once(':') else {
            return Err(bad(
                "expected none, sequence:<n>, timeuuid:<uuid> or token:<text>",
            ));
        };
        match kind {
            "sequence" => value
                .parse()
                .map(Offset::Sequence)
                .map_err(|_| bad("the sequence is not a number")),
            "timeuuid" => uuid::Uuid::parse_str(value)
                .map(Offset::TimeBasedUuid)
                .map_err(|_| bad("not a UUID")),
            "token" => Ok(Offset::Token(value.to_owned())),
            _ => Err(bad(
                "expected none, sequence:<n>, timeuuid:<uuid> or token:<text>",
            )),
        }
    }
}

/// One event as a query delivers it: the event and the offset to resume after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventEnvelope {
    /// Resume a tag query from here to get the events after this one.
    pub offset: Offset,
    /// The event, with its id, sequence number, timestamp, tags and metadata.
    pub event: PersistentEvent,
}

impl EventEnvelope {
    /// The event's persistence id.
    pub fn persistence_id(&self) -> &PersistenceId {
        &self.event.persistence_id
    }

    /// The event's sequence number.
    pub fn sequence_nr(&self) -> SequenceNr {
        self.event.sequence_nr
    }
}

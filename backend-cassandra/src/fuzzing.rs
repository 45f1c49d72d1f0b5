//! The row decoders fed with whatever the columns can hold, for the fuzz targets in
//! `fuzz/` (`cargo +nightly fuzz run cassandra_rows`) and this crate's tests. Not part of
//! the API: compiled with the `fuzzing` feature only.
//!
//! The driver checks each column's CQL type against the row struct before anything here
//! runs (a column of another type is the driver's deserialization error, `Corrupt`); what
//! is left to this crate is every value a column of the right type can hold: NULLs,
//! negative numbers, empty strings and tags, any time-based UUID, metadata set in part.
//! Every decoder of stored rows (events, tag rows, snapshots, durable states, projection
//! offsets) must return the value or an [`ErrorKind::Corrupt`] error, never panic and never
//! another kind.

use arbitrary::{Arbitrary, Unstructured};
use persistence_api::{ErrorKind, PersistenceId, ProjectionId};
use scylla::value::CqlTimeuuid;

use crate::durable_state::StateRow;
use crate::schema::{EventRow, LoadedSnapshotRow, TagRow};

/// The column values of every row kind, drawn once and shared out.
#[derive(Debug, Clone, Arbitrary)]
struct Columns {
    sequence_nr: Option<i64>,
    timestamp: Option<[u8; 16]>,
    writer_uuid: Option<String>,
    ser_id: Option<String>,
    ser_manifest: Option<String>,
    event_manifest: Option<String>,
    event: Option<Vec<u8>>,
    meta_ser_id: Option<String>,
    meta_ser_manifest: Option<String>,
    meta: Option<Vec<u8>>,
    tags: Option<Vec<String>>,
    event_time: Option<i64>,
    persistence_id: String,
    tag_pid_sequence_nr: i64,
    deleted: Option<bool>,
    tag: Option<String>,
    offset: Option<String>,
    version: Option<i64>,
}

fn uuid(bytes: Option<[u8; 16]>) -> Option<CqlTimeuuid> {
    bytes.map(CqlTimeuuid::from_bytes)
}

/// Panics (the fuzzer's finding) unless `result` is a value or a `Corrupt` error.
fn check<T>(what: &str, c: &Columns, result: persistence_api::Result<T>) {
    if let Err(e) = result {
        assert_eq!(
            e.kind(),
            ErrorKind::Corrupt,
            "{what} of {c:?}: a stored row that does not decode must be Corrupt, got {e}"
        );
    }
}

/// Decodes `data` as column values and reads them as every kind of stored row.
pub fn rows(data: &[u8]) {
    let Ok(c) = Columns::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    decode_all(&c);
}

/// Reads `c` as every kind of stored row.
fn decode_all(c: &Columns) {
    let c = c.clone();
    let pid = PersistenceId::new("fuzz|1").expect("a valid id");
    let event = || EventRow {
        sequence_nr: c.sequence_nr,
        timestamp: uuid(c.timestamp),
        writer_uuid: c.writer_uuid.clone(),
        ser_id: c.ser_id.clone(),
        ser_manifest: c.ser_manifest.clone(),
        event_manifest: c.event_manifest.clone(),
        event: c.event.clone(),
        meta_ser_id: c.meta_ser_id.clone(),
        meta_ser_manifest: c.meta_ser_manifest.clone(),
        meta: c.meta.clone(),
        tags: c.tags.clone(),
        event_time: c.event_time,
    };
    check("an event row", &c, event().into_event(pid.clone()));
    let e = event();
    let tag_row = TagRow {
        persistence_id: c.persistence_id.clone(),
        tag_pid_sequence_nr: c.tag_pid_sequence_nr,
        sequence_nr: e.sequence_nr,
        timestamp: e.timestamp,
        writer_uuid: e.writer_uuid,
        ser_id: e.ser_id,
        ser_manifest: e.ser_manifest,
        event_manifest: e.event_manifest,
        event: e.event,
        meta_ser_id: e.meta_ser_id,
        meta_ser_manifest: e.meta_ser_manifest,
        meta: e.meta,
        tags: e.tags,
        event_time: e.event_time,
    };
    let _ = tag_row.timestamp();
    check(
        "a tag row",
        &c,
        tag_row.into_event_row().into_event(pid.clone()),
    );
    let snapshot = LoadedSnapshotRow {
        sequence_nr: c.sequence_nr.unwrap_or(0),
        timestamp: c.event_time,
        ser_id: c.ser_id.clone(),
        ser_manifest: c.ser_manifest.clone(),
        snapshot_data: c.event.clone(),
        meta_ser_id: c.meta_ser_id.clone(),
        meta_ser_manifest: c.meta_ser_manifest.clone(),
        meta: c.meta.clone(),
    };
    check("a snapshot row", &c, snapshot.into_snapshot(&pid));
    let state = StateRow {
        revision: c.sequence_nr,
        ser_id: c.ser_id.clone(),
        ser_manifest: c.ser_manifest.clone(),
        state: c.event.clone(),
        deleted: c.deleted,
        tag: c.tag.clone(),
        timestamp: uuid(c.timestamp),
    };
    check("a durable state row", &c, state.into_state(pid.clone()));
    let id = ProjectionId::new("fuzz", "0").expect("a valid projection id");
    check(
        "an offset row's offset",
        &c,
        crate::offsets::stored_offset(&id, c.offset.clone()),
    );
    check(
        "an offset row's version",
        &c,
        crate::offsets::stored_version(&id, c.version),
    );
}

#[cfg(test)]
mod tests {
    use super::{decode_all, Columns};

    /// The fuzz target's body over inputs of a fixed pseudo-random sequence.
    #[test]
    fn random_rows_decode_or_are_corrupt() {
        for bytes in persistence_tck::fuzz::random_inputs(4000, 300) {
            super::rows(&bytes);
        }
    }

    /// Columns as this crate writes them, each changed to NULL or a value no write
    /// stores (random bytes seldom fill every column): every decoder still returns the
    /// value or `Corrupt`.
    #[test]
    fn written_rows_with_one_column_changed_decode_or_are_corrupt() {
        let some = |s: &str| Some(s.to_owned());
        let written = Columns {
            sequence_nr: Some(3),
            timestamp: Some([0x11; 16]),
            writer_uuid: some("w"),
            ser_id: some("s"),
            ser_manifest: some("m"),
            event_manifest: some("em"),
            event: Some(b"x".to_vec()),
            meta_ser_id: some("ms"),
            meta_ser_manifest: some("mm"),
            meta: Some(b"y".to_vec()),
            tags: Some(vec!["t".into()]),
            event_time: Some(5),
            persistence_id: "a|1".into(),
            tag_pid_sequence_nr: 1,
            deleted: Some(false),
            tag: some("t"),
            offset: some("sequence:3"),
            version: Some(1),
        };
        let changes: Vec<fn(&mut Columns)> = vec![
            |c| c.sequence_nr = None,
            |c| c.sequence_nr = Some(-1),
            |c| c.sequence_nr = Some(i64::MIN),
            |c| c.timestamp = None,
            |c| c.timestamp = Some([0xff; 16]),
            |c| c.writer_uuid = None,
            |c| c.ser_id = None,
            |c| c.ser_manifest = None,
            |c| c.event_manifest = None,
            |c| c.event = None,
            |c| c.event = Some(Vec::new()),
            |c| c.meta_ser_id = None,
            |c| c.meta_ser_manifest = None,
            |c| c.meta = None,
            |c| c.tags = Some(vec![String::new()]),
            |c| c.tags = None,
            |c| c.event_time = None,
            |c| c.event_time = Some(i64::MIN),
            |c| c.deleted = None,
            |c| c.deleted = Some(true),
            |c| c.tag = Some(String::new()),
            |c| c.offset = None,
            |c| c.offset = Some("garbage".into()),
            |c| c.version = None,
            |c| c.version = Some(0),
            |c| c.version = Some(-5),
        ];
        decode_all(&written);
        for change in changes {
            let mut c = written.clone();
            change(&mut c);
            decode_all(&c);
        }
    }
}

//! The row decoders fed with whatever a table's columns can hold, for the fuzz targets in
//! `fuzz/` (`cargo +nightly fuzz run sql_rows`) and this crate's tests. Not part of the
//! API: compiled with the `fuzzing` feature only.
//!
//! A row here is a list of columns, each NULL, an integer, a text or bytes, as a database
//! can hold them whatever this crate wrote: a column of another type than the decoder reads
//! answers what sqlx answers (a decode error). Every decoder of stored rows (events,
//! snapshots, durable states, projection offsets) must return the row or an
//! [`ErrorKind::Corrupt`] error, never panic and never another kind.

use arbitrary::{Arbitrary, Unstructured};
use persistence_api::{ErrorKind, ProjectionId};

use crate::error::to_public;
use crate::schema::Columns;

/// One column's value.
#[derive(Debug, Clone, Arbitrary)]
enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// A row of up to 16 columns (the widest read is 13); a column past its end is missing.
#[derive(Debug, Clone, Arbitrary)]
struct Row(Vec<Value>);

fn mismatch(index: usize, expected: &str, got: &Value) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source: format!("expected {expected}, found {got:?}").into(),
    }
}

impl Row {
    fn get(&self, index: usize) -> Result<&Value, sqlx::Error> {
        self.0
            .get(index)
            .ok_or(sqlx::Error::ColumnIndexOutOfBounds {
                index,
                len: self.0.len(),
            })
    }
}

impl Columns for Row {
    fn int(&self, index: usize) -> Result<i64, sqlx::Error> {
        match self.get(index)? {
            Value::Int(v) => Ok(*v),
            other => Err(mismatch(index, "BIGINT", other)),
        }
    }
    fn text(&self, index: usize) -> Result<String, sqlx::Error> {
        match self.get(index)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(mismatch(index, "TEXT", other)),
        }
    }
    fn opt_text(&self, index: usize) -> Result<Option<String>, sqlx::Error> {
        match self.get(index)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => Err(mismatch(index, "TEXT or NULL", other)),
        }
    }
    fn bytes(&self, index: usize) -> Result<Vec<u8>, sqlx::Error> {
        match self.get(index)? {
            Value::Bytes(v) => Ok(v.clone()),
            other => Err(mismatch(index, "BYTEA/BLOB", other)),
        }
    }
    fn opt_bytes(&self, index: usize) -> Result<Option<Vec<u8>>, sqlx::Error> {
        match self.get(index)? {
            Value::Null => Ok(None),
            Value::Bytes(v) => Ok(Some(v.clone())),
            other => Err(mismatch(index, "BYTEA/BLOB or NULL", other)),
        }
    }
}

/// Panics (the fuzzer's finding) unless `result` is a value or a `Corrupt` error.
fn check<T>(what: &str, row: &Row, result: persistence_api::Result<T>) {
    if let Err(e) = result {
        assert_eq!(
            e.kind(),
            ErrorKind::Corrupt,
            "{what} of {row:?}: a stored row that does not decode must be Corrupt, got {e}"
        );
    }
}

/// Decodes `data` as a row and reads it as every kind of stored row.
pub fn rows(data: &[u8]) {
    let Ok(row) = Row::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    if row.0.len() > 16 {
        return;
    }
    decode_all(&row);
}

/// Reads `row` as every kind of stored row.
fn decode_all(row: &Row) {
    let row = row.clone();
    let event = crate::schema::read_event(&row).map_err(to_public);
    check("an event row", &row, event);
    let snapshot = crate::snapshot::read_snapshot(&row).map_err(to_public);
    check("a snapshot row", &row, snapshot);
    for ordering in [false, true] {
        let state = crate::durable_state::read_state(&row, ordering).map_err(to_public);
        check("a durable state row", &row, state);
    }
    let id = ProjectionId::new("fuzz", "0").expect("a valid projection id");
    check("an offset row", &row, crate::offsets::read_row(&id, &row));
}

#[cfg(test)]
mod tests {
    use super::{decode_all, Row, Value};

    /// The fuzz target's body over inputs of a fixed pseudo-random sequence.
    #[test]
    fn random_rows_decode_or_are_corrupt() {
        for bytes in persistence_tck::fuzz::random_inputs(4000, 300) {
            super::rows(&bytes);
        }
    }

    /// Rows as this crate writes them, each with one column replaced by every kind of
    /// value (random bytes seldom get past the first columns): every decoder still returns
    /// the row or `Corrupt`.
    #[test]
    fn written_rows_with_one_column_replaced_decode_or_are_corrupt() {
        let text = |s: &str| Value::Text(s.to_owned());
        let payload = [text("s"), text("m"), Value::Bytes(b"x".to_vec())];
        let mut event = vec![
            Value::Int(7),
            text("a|1"),
            Value::Int(1),
            text("w"),
            Value::Int(5),
        ];
        event.extend([text("em")]);
        event.extend(payload.clone());
        event.extend(payload.clone());
        event.push(text(r#"["t"]"#));
        let mut snapshot = vec![text("a|1"), Value::Int(1), Value::Int(5)];
        snapshot.extend(payload.clone());
        snapshot.extend([Value::Null, Value::Null, Value::Null]);
        let mut state = vec![text("a|1"), Value::Int(1)];
        state.extend(payload);
        state.extend([text("t"), Value::Int(5), Value::Int(9)]);
        let offset = vec![text("sequence:3"), Value::Int(1)];
        let kinds = [
            Value::Null,
            Value::Int(-1),
            Value::Int(0),
            Value::Int(i64::MAX),
            text(""),
            text("x"),
            text("[1]"),
            text(r#"["", "t"]"#),
            text("\u{0}"),
            Value::Bytes(Vec::new()),
            Value::Bytes(vec![0xff; 3]),
        ];
        // The rows as written decode whole, so each replaced column is one the decoder
        // reaches.
        assert!(crate::schema::read_event(&Row(event.clone())).is_ok());
        assert!(crate::snapshot::read_snapshot(&Row(snapshot.clone())).is_ok());
        assert!(crate::durable_state::read_state(&Row(state.clone()), true).is_ok());
        let id = persistence_api::ProjectionId::new("p", "0").unwrap();
        assert!(crate::offsets::read_row(&id, &Row(offset.clone())).is_ok());
        for base in [event, snapshot, state, offset] {
            decode_all(&Row(base.clone()));
            for i in 0..base.len() {
                for kind in &kinds {
                    let mut row = base.clone();
                    row[i] = kind.clone();
                    decode_all(&Row(row));
                }
                decode_all(&Row(base[..i].to_vec()));
            }
        }
    }
}

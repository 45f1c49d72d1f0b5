//! Printing: text for people, one JSON object per line for scripts; payloads decoded from
//! CBOR to JSON where the serializer id says CBOR, else shown as base64 or hex.

use std::io::Write;

use base64::Engine as _;
use persistence_stores::ciborium::Value as Cbor;
use persistence_stores::{
    DurableState, Offset, Payload, PersistentEvent, SelectedSnapshot, CBOR_SERIALIZER_ID,
};
use serde_json::{json, Map, Value};

use crate::error::CliError;
use crate::Out;

/// Writes one line to standard output; a closed pipe stops the command quietly.
pub fn line(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    Ok(())
}

/// Writes one JSON object as one line.
pub fn json_line(value: &Value) -> Result<(), CliError> {
    line(&value.to_string())
}

/// Writes `value` as a JSON line or `text` as text, as `out` says.
pub fn emit(out: Out, value: Value, text: impl FnOnce() -> String) -> Result<(), CliError> {
    if out.json {
        json_line(&value)
    } else {
        line(&text())
    }
}

/// A payload's value: decoded CBOR as JSON, else its bytes as base64 (or hex); and the
/// encoding used (`json`, `base64`, `hex`).
pub fn payload_value(payload: &Payload, hex: bool) -> (Value, &'static str) {
    if payload.serializer_id == CBOR_SERIALIZER_ID {
        if let Ok(value) = persistence_stores::ciborium::from_reader::<Cbor, _>(&payload.bytes[..])
        {
            return (cbor_to_json(&value), "json");
        }
    }
    if hex {
        (Value::String(to_hex(&payload.bytes)), "hex")
    } else {
        (
            Value::String(base64::engine::general_purpose::STANDARD.encode(&payload.bytes)),
            "base64",
        )
    }
}

/// A payload as a JSON object: serializer id, manifest, encoding and value.
pub fn payload_json(payload: &Payload, hex: bool) -> Value {
    let (value, encoding) = payload_value(payload, hex);
    json!({
        "serializer_id": payload.serializer_id,
        "manifest": payload.manifest,
        "encoding": encoding,
        "value": value,
    })
}

fn payload_text(payload: &Payload, hex: bool) -> String {
    let (value, encoding) = payload_value(payload, hex);
    let shown = match (&value, encoding) {
        (Value::String(s), "base64" | "hex") => format!("{encoding}:{s}"),
        _ => value.to_string(),
    };
    let manifest = if payload.manifest.is_empty() {
        String::new()
    } else {
        format!(" {}", payload.manifest)
    };
    let serializer = if payload.serializer_id.is_empty() {
        "raw"
    } else {
        &payload.serializer_id
    };
    format!("[{serializer}{manifest}] {shown}")
}

/// An event (with the offset a query delivered it at) as a JSON object.
pub fn event_json(event: &PersistentEvent, offset: Option<&Offset>, hex: bool) -> Value {
    let mut object = json!({
        "persistence_id": event.persistence_id.as_str(),
        "sequence_nr": event.sequence_nr,
        "timestamp": event.timestamp.as_millis(),
        "time": format_millis(event.timestamp.as_millis()),
        "writer_id": event.writer_id,
        "event_manifest": event.event_manifest,
        "tags": event.tags,
        "payload": payload_json(&event.payload, hex),
        "metadata": event.metadata.as_ref().map(|m| payload_json(m, hex)),
    });
    if let (Some(offset), Value::Object(map)) = (offset, &mut object) {
        map.insert("offset".into(), Value::String(offset.to_string()));
    }
    object
}

/// An event as one line of text.
pub fn event_text(event: &PersistentEvent, offset: Option<&Offset>, hex: bool) -> String {
    let mut text = String::new();
    if let Some(offset) = offset {
        text.push_str(&format!("{offset}  {}  ", event.persistence_id));
    }
    text.push_str(&format!(
        "#{}  {}",
        event.sequence_nr,
        format_millis(event.timestamp.as_millis())
    ));
    if !event.writer_id.is_empty() {
        text.push_str(&format!("  writer={}", event.writer_id));
    }
    if !event.tags.is_empty() {
        text.push_str(&format!("  tags={}", event.tags.join(",")));
    }
    if !event.event_manifest.is_empty() {
        text.push_str(&format!("  event_manifest={}", event.event_manifest));
    }
    text.push_str(&format!("  {}", payload_text(&event.payload, hex)));
    if let Some(meta) = &event.metadata {
        text.push_str(&format!("  metadata={}", payload_text(meta, hex)));
    }
    text
}

/// A snapshot as a JSON object.
pub fn snapshot_json(s: &SelectedSnapshot, hex: bool) -> Value {
    json!({
        "persistence_id": s.metadata.persistence_id.as_str(),
        "sequence_nr": s.metadata.sequence_nr,
        "timestamp": s.metadata.timestamp.as_millis(),
        "time": format_millis(s.metadata.timestamp.as_millis()),
        "snapshot": payload_json(&s.snapshot, hex),
        "metadata": s.metadata.metadata.as_ref().map(|m| payload_json(m, hex)),
    })
}

/// A snapshot as text.
pub fn snapshot_text(s: &SelectedSnapshot, hex: bool) -> String {
    let mut text = format!(
        "snapshot of {} at #{}  {}  {}",
        s.metadata.persistence_id,
        s.metadata.sequence_nr,
        format_millis(s.metadata.timestamp.as_millis()),
        payload_text(&s.snapshot, hex)
    );
    if let Some(meta) = &s.metadata.metadata {
        text.push_str(&format!("  metadata={}", payload_text(meta, hex)));
    }
    text
}

/// A durable state as a JSON object.
pub fn state_json(s: &DurableState, hex: bool) -> Value {
    json!({
        "persistence_id": s.persistence_id.as_str(),
        "revision": s.revision,
        "deleted": s.is_deleted(),
        "tag": s.tag,
        "timestamp": s.timestamp.as_millis(),
        "time": format_millis(s.timestamp.as_millis()),
        "payload": s.payload.as_ref().map(|p| payload_json(p, hex)),
    })
}

/// A durable state as text.
pub fn state_text(s: &DurableState, hex: bool) -> String {
    let body = match &s.payload {
        Some(p) => payload_text(p, hex),
        None => "(deleted)".to_string(),
    };
    let tag = s
        .tag
        .as_ref()
        .map(|t| format!("  tag={t}"))
        .unwrap_or_default();
    format!(
        "state of {} at revision {}  {}{tag}  {body}",
        s.persistence_id,
        s.revision,
        format_millis(s.timestamp.as_millis())
    )
}

/// CBOR as JSON: byte strings become base64 text, CBOR tags are dropped (their value
/// kept), map keys that are not text become their JSON text, integers beyond 64 bits and
/// floats that JSON cannot hold become strings.
pub fn cbor_to_json(value: &Cbor) -> Value {
    match value {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(*b),
        Cbor::Integer(i) => {
            let n: i128 = (*i).into();
            if let Ok(v) = i64::try_from(n) {
                Value::from(v)
            } else if let Ok(v) = u64::try_from(n) {
                Value::from(v)
            } else {
                Value::String(n.to_string())
            }
        }
        Cbor::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        Cbor::Text(s) => Value::String(s.clone()),
        Cbor::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Cbor::Tag(_, inner) => cbor_to_json(inner),
        Cbor::Array(items) => Value::Array(items.iter().map(cbor_to_json).collect()),
        Cbor::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let key = match k {
                    Cbor::Text(s) => s.clone(),
                    other => cbor_to_json(other).to_string(),
                };
                map.insert(key, cbor_to_json(v));
            }
            Value::Object(map)
        }
        _ => Value::Null,
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the epoch as UTC ISO 8601 (`2024-05-01T10:00:00.123Z`).
pub fn format_millis(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_utc() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_714_557_600_123), "2024-05-01T10:00:00.123Z");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn cbor_payloads_decode_to_json_and_others_to_base64() {
        let bytes =
            persistence_stores::to_cbor(&serde_json::json!({"amount": 5, "who": "ann"})).unwrap();
        let (value, enc) = payload_value(&Payload::new("cbor", "t/v1", bytes), false);
        assert_eq!((value, enc), (json!({"amount": 5, "who": "ann"}), "json"));
        let (value, enc) = payload_value(&Payload::raw(vec![1u8, 2, 255]), true);
        assert_eq!((value, enc), (json!("0102ff"), "hex"));
        let (value, enc) = payload_value(&Payload::new("cbor", "", vec![0xffu8]), false);
        assert_eq!((value, enc), (json!("/w=="), "base64"));
    }
}

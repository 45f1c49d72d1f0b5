//! Serde for [`Duration`] fields written as whole milliseconds, the one form every
//! backend's configuration uses: the field is a `Duration` in code and its key ends in
//! `_ms` in files and in `PERSISTENCE_<BACKEND>_<KEY>` variables.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, PartialEq, Debug)]
//! struct Settings {
//!     #[serde(with = "persistence_api::duration_ms", rename = "poll_interval_ms")]
//!     poll_interval: Duration,
//! }
//!
//! let s: Settings = toml::from_str("poll_interval_ms = 250").unwrap();
//! assert_eq!(s.poll_interval, Duration::from_millis(250));
//! assert_eq!(toml::to_string(&s).unwrap().trim(), "poll_interval_ms = 250");
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `d` as whole milliseconds (rounded down; at most `u64::MAX`).
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads whole milliseconds (a non-negative integer).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Duration::from_millis(u64::deserialize(d)?))
}

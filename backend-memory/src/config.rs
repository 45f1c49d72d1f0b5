//! The configuration: the `[memory]` section, its defaults and its check.

use persistence_api::{Error, Result};
use serde::Deserialize;

/// Settings of the in-memory backend. Its limits are declared as capabilities, so a test
/// suite can make the memory store refuse what a production store would (for example
/// `max_event_size = 400 KB` and `atomic_write_max_events = 100`, like DynamoDB).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// The most events in one atomic write (default 10,000).
    pub atomic_write_max_events: Option<usize>,
    /// The largest event, as `PersistentEvent::stored_size` (default 4 MiB).
    pub max_event_size: Option<usize>,
    /// The largest snapshot (default 64 MiB).
    pub max_snapshot_size: Option<usize>,
    /// Events copied out per lock acquisition when replaying and querying (default 1,000).
    pub page_size: u32,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            atomic_write_max_events: Some(10_000),
            max_event_size: Some(4 * 1024 * 1024),
            max_snapshot_size: Some(64 * 1024 * 1024),
            page_size: 1000,
        }
    }
}

impl MemoryConfig {
    /// Checks the values; [`crate::Memory::open`] (and so [`crate::open`]) calls it. An
    /// invalid one is an `ErrorKind::ConfigInvalid` error naming the key: `page_size` must
    /// be at least 1, and a limit that is set must be above zero (leave it unset for no
    /// limit).
    pub fn validate(&self) -> Result<()> {
        if self.page_size == 0 {
            return Err(Error::config("memory.page_size must be at least 1"));
        }
        for (key, limit) in [
            ("atomic_write_max_events", self.atomic_write_max_events),
            ("max_event_size", self.max_event_size),
            ("max_snapshot_size", self.max_snapshot_size),
        ] {
            if limit == Some(0) {
                return Err(Error::config(format!(
                    "memory.{key} must be at least 1 when set (leave it out for no limit)"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use persistence_api::ErrorKind;

    #[test]
    fn the_defaults_are_valid() {
        MemoryConfig::default().validate().unwrap();
        let unlimited = MemoryConfig {
            atomic_write_max_events: None,
            max_event_size: None,
            max_snapshot_size: None,
            page_size: 1,
        };
        unlimited.validate().unwrap();
    }

    #[test]
    fn an_invalid_value_is_config_invalid_naming_the_key() {
        let cases = [
            (
                MemoryConfig {
                    page_size: 0,
                    ..MemoryConfig::default()
                },
                "page_size",
            ),
            (
                MemoryConfig {
                    atomic_write_max_events: Some(0),
                    ..MemoryConfig::default()
                },
                "atomic_write_max_events",
            ),
            (
                MemoryConfig {
                    max_event_size: Some(0),
                    ..MemoryConfig::default()
                },
                "max_event_size",
            ),
            (
                MemoryConfig {
                    max_snapshot_size: Some(0),
                    ..MemoryConfig::default()
                },
                "max_snapshot_size",
            ),
        ];
        for (config, key) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[tokio::test]
    async fn open_refuses_an_invalid_config() {
        let config = MemoryConfig {
            page_size: 0,
            ..MemoryConfig::default()
        };
        let err = crate::open(config.clone()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
        let err = crate::Memory::open(config).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
    }
}

//! Configuration: a TOML file and/or environment variables naming a backend and its settings.

use std::path::Path;

use persistence_api::{Error, Result};
use serde::de::DeserializeOwned;

/// The prefix of the environment variables [`Config::from_env`] reads.
pub const ENV_PREFIX: &str = "PERSISTENCE_";

/// The backend used when the configuration names none: SQLite (a file, `persistence.db`
/// unless `[sqlite] path` says otherwise) when the `sqlite` feature is on, else memory.
#[cfg(feature = "sqlite")]
pub const DEFAULT_BACKEND: &str = "sqlite";
/// The backend used when the configuration names none: SQLite when the `sqlite` feature
/// is on, else memory.
#[cfg(not(feature = "sqlite"))]
pub const DEFAULT_BACKEND: &str = "memory";

/// Which backend to open and its settings: a top-level `backend` key and one table per
/// backend, named as the backend (and its cargo feature).
///
/// ```toml
/// backend = "dynamodb"
///
/// [dynamodb]
/// endpoint = "http://127.0.0.1:8000"
/// journal_table = "journal"
/// ```
///
/// The same as environment variables: `PERSISTENCE_BACKEND=dynamodb`,
/// `PERSISTENCE_DYNAMODB_ENDPOINT=http://127.0.0.1:8000`,
/// `PERSISTENCE_DYNAMODB_JOURNAL_TABLE=journal` (the part after the backend name is the
/// key, lower-cased; values are read as TOML numbers, booleans or `[arrays]` where they
/// parse, else as strings).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    table: toml::Table,
}

impl Config {
    /// A configuration naming `backend`, with no settings (every key at its default).
    pub fn for_backend(backend: &str) -> Self {
        let mut table = toml::Table::new();
        table.insert("backend".into(), toml::Value::String(backend.into()));
        Config { table }
    }

    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            Error::config(format!("invalid TOML configuration: {e}"))
        })?;
        let config = Config { table };
        config.check()?;
        Ok(config)
    }

    /// Reads a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read configuration file {}: {e}",
                path.display()
            ))
        })?;
        Self::from_toml_str(&text)
    }

    /// Reads `PERSISTENCE_*` variables from the process environment.
    pub fn from_env() -> Result<Self> {
        let mut config = Config::default();
        config.merge_env(std::env::vars())?;
        Ok(config)
    }

    /// The usual way: the TOML file named by `PERSISTENCE_CONFIG` if set, then
    /// `PERSISTENCE_*` variables on top of it.
    pub fn load() -> Result<Self> {
        let mut config = match std::env::var("PERSISTENCE_CONFIG") {
            Ok(path) if !path.is_empty() => Self::from_file(path)?,
            _ => Config::default(),
        };
        config.merge_env(std::env::vars())?;
        Ok(config)
    }

    /// Applies `PERSISTENCE_*` variables from `vars` on top of this configuration.
    pub fn merge_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<()> {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest == "CONFIG" {
                continue;
            }
            if rest == "BACKEND" {
                self.table
                    .insert("backend".into(), toml::Value::String(value));
                continue;
            }
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            let section = section.to_ascii_lowercase();
            let key = key.to_ascii_lowercase();
            let entry = self
                .table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(t) = entry else {
                return Err(Error::config(format!(
                    "configuration key {section:?} is not a table"
                )));
            };
            t.insert(key, parse_env_value(&value));
        }
        self.check()
    }

    fn check(&self) -> Result<()> {
        match self.table.get("backend") {
            None | Some(toml::Value::String(_)) => Ok(()),
            Some(other) => Err(Error::config(format!(
                "`backend` must be a string, found {other}"
            ))),
        }
    }

    /// The backend's name ([`DEFAULT_BACKEND`] when none is set).
    pub fn backend(&self) -> &str {
        match self.table.get("backend") {
            Some(toml::Value::String(s)) => s,
            _ => DEFAULT_BACKEND,
        }
    }

    /// Sets a key of a backend's section (for code that builds configuration).
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<toml::Value>) {
        let entry = self
            .table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = entry {
            t.insert(key.to_string(), value.into());
        }
    }

    /// Deserializes the section `name` into a backend's config struct; a missing section
    /// gives the struct's defaults.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let value = self
            .table
            .get(name)
            .cloned()
            .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        value.try_into().map_err(|e: toml::de::Error| {
            Error::config(format!("invalid [{name}] configuration: {e}"))
        })
    }
}

fn parse_env_value(value: &str) -> toml::Value {
    let probe = format!("v = {value}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)),
            ) => v,
            _ => toml::Value::String(value.to_string()),
        },
        Err(_) => toml::Value::String(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_types_values() {
        let mut c =
            Config::from_toml_str("backend = \"memory\"\n[memory]\npage_size = 10\n").unwrap();
        c.merge_env([
            ("PERSISTENCE_BACKEND".to_string(), "dynamodb".to_string()),
            (
                "PERSISTENCE_DYNAMODB_ENDPOINT".to_string(),
                "http://127.0.0.1:8000".to_string(),
            ),
            (
                "PERSISTENCE_DYNAMODB_CONSISTENT_READS".to_string(),
                "false".to_string(),
            ),
            ("PERSISTENCE_MEMORY_PAGE_SIZE".to_string(), "20".to_string()),
            ("OTHER_VAR".to_string(), "x".to_string()),
            (
                "PERSISTENCE_CASSANDRA_CONTACT_POINTS".to_string(),
                "[\"a:1\", \"b:2\"]".to_string(),
            ),
        ])
        .unwrap();
        assert_eq!(c.backend(), "dynamodb");
        let t = &c.table["dynamodb"];
        assert_eq!(t["endpoint"].as_str(), Some("http://127.0.0.1:8000"));
        assert_eq!(t["consistent_reads"].as_bool(), Some(false));
        assert_eq!(c.table["memory"]["page_size"].as_integer(), Some(20));
        assert_eq!(
            c.table["cassandra"]["contact_points"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn bad_input_is_a_config_error() {
        let err = Config::from_toml_str("backend = [").unwrap_err();
        assert_eq!(err.kind(), persistence_api::ErrorKind::ConfigInvalid);
        let err = Config::from_toml_str("backend = 3").unwrap_err();
        assert!(err.to_string().contains("must be a string"), "{err}");
        assert_eq!(Config::default().backend(), DEFAULT_BACKEND);
    }
}

//! `schema print|create|check`: the configured backend's schema as text to apply by hand,
//! created, or compared with what exists.

use std::time::Duration;

use persistence_stores::{schema, Config, Error, ErrorKind, Health};
use serde_json::json;

use crate::error::CliError;
use crate::output::{self, emit};
use crate::Out;

/// `schema print`: the DDL (SQL), CQL or `aws dynamodb create-table` text, as is (with
/// `--json`, one object holding it).
pub async fn print(config: &Config, out: Out) -> Result<(), CliError> {
    let text = schema::ddl(config).await?;
    if out.json {
        output::json_line(&json!({ "backend": config.backend(), "ddl": text }))
    } else {
        output::line(text.trim_end())
    }
}

/// `schema create`: the backend's idempotent create.
pub async fn create(config: &Config, out: Out) -> Result<(), CliError> {
    schema::create(config).await?;
    emit(
        out,
        json!({ "backend": config.backend(), "created": true }),
        || format!("{}: schema created (or already there)", config.backend()),
    )
}

/// How long `schema check` waits for the health probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the health probe before the check found.
enum Probe {
    /// The backend answered.
    Healthy(Health),
    /// The backend answered with an error that is not about reaching it (a missing
    /// table, most likely): the check says what is missing.
    Failed(Error),
    /// Not probed: an SQLite file that does not exist yet (opening it would create it).
    Skipped(&'static str),
}

impl Probe {
    fn json(&self) -> serde_json::Value {
        match self {
            Probe::Healthy(h) => json!({
                "ok": true,
                "latency_ms": h.latency.as_secs_f64() * 1000.0,
                "probed": h.probed,
            }),
            Probe::Failed(e) => json!({ "ok": false, "error": format!("{e:#}") }),
            Probe::Skipped(why) => json!({ "ok": null, "skipped": why }),
        }
    }

    fn text(&self) -> String {
        match self {
            Probe::Healthy(h) => format!(
                "health: {} answered in {:.1} ms ({})",
                h.backend,
                h.latency.as_secs_f64() * 1000.0,
                h.probed.join(", ")
            ),
            Probe::Failed(e) => format!("health: {e:#}"),
            Probe::Skipped(why) => format!("health: not probed ({why})"),
        }
    }
}

/// [`Stores::health`](persistence_stores::Stores::health) on stores opened without
/// creating anything. A server that cannot be reached or does not answer in time is the
/// error (exit code 4); any other failure of the probe is reported beside the check.
async fn probe(config: &Config) -> Result<Probe, CliError> {
    let backend = config.backend();
    if backend == persistence_stores::sql::Sqlite::NAME {
        let section: persistence_stores::sql::SqliteConfig = config.section(backend)?;
        if !section.path.exists() {
            return Ok(Probe::Skipped("no database file yet"));
        }
    }
    let mut config = config.clone();
    if backend != persistence_stores::memory::Memory::NAME {
        config.set(backend, "create_schema", false);
    }
    let unreachable = |e: &Error| matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout);
    let stores = match crate::open_config(&config).await {
        Ok(stores) => stores,
        Err(CliError::Api(e)) if !unreachable(&e) => return Ok(Probe::Failed(e)),
        Err(e) => return Err(e),
    };
    match stores.health(HEALTH_TIMEOUT).await {
        Ok(health) => Ok(Probe::Healthy(health)),
        Err(e) if unreachable(&e) => Err(CliError::Api(e)),
        Err(e) => Ok(Probe::Failed(e)),
    }
}

/// `schema check`: the health probe first (a server that cannot be reached is exit code
/// 4), then the report; a schema that differs is exit code 6 after the report.
pub async fn check(config: &Config, out: Out) -> Result<(), CliError> {
    let health = probe(config).await?;
    let report = schema::check(config).await?;
    let differences: Vec<_> = report
        .differences
        .iter()
        .map(|d| {
            json!({
                "object": d.object,
                "expected": d.expected,
                "found": d.found,
                "missing": d.found.is_none(),
                "text": d.to_string(),
            })
        })
        .collect();
    emit(
        out,
        json!({
            "backend": report.backend,
            "location": report.location,
            "ok": report.is_ok(),
            "differences": differences,
            "health": health.json(),
        }),
        || format!("{}\n{report}", health.text()),
    )?;
    if report.is_ok() {
        Ok(())
    } else {
        Err(CliError::SchemaDiffers(report.differences.len()))
    }
}

//! `schema print|create|check`: the configured backend's schema as text to apply by hand,
//! created, or compared with what exists.

use persistence_stores::{schema, Config};
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

/// `schema check`: the report; a schema that differs is exit code 6 after the report.
pub async fn check(config: &Config, out: Out) -> Result<(), CliError> {
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
        }),
        || report.to_string(),
    )?;
    if report.is_ok() {
        Ok(())
    } else {
        Err(CliError::SchemaDiffers(report.differences.len()))
    }
}

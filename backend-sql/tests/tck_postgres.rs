//! The whole conformance kit against PostgreSQL: one schema per case (created by the
//! migrations, dropped afterwards), so runs can share one server.
//!
//! `bash scripts/servers/postgres.sh start && source .servers/postgres/env &&
//! cargo test -p persistence-sql --test tck_postgres`

use std::process::ExitCode;

use persistence_sql::PostgresConfig;

#[path = "support/postgres_kit.rs"]
mod postgres_kit;

fn main() -> ExitCode {
    persistence_tck::run_main_server("postgres", "PERSISTENCE_POSTGRES_URL", |url| async move {
        postgres_kit::Factory::new(move || PostgresConfig::new(url.clone())).await
    })
}

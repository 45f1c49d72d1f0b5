//! The whole conformance kit against PostgreSQL over plain TCP (`ssl_mode = "disable"`:
//! the test server offers TLS, which the default `prefer` would take;
//! `tck_postgres_tls.rs` runs the kit over verified TLS): one schema per case (created by
//! the migrations, dropped afterwards), so runs can share one server.
//!
//! `bash scripts/servers/postgres.sh start && source .servers/postgres/env &&
//! cargo test -p persistence-sql --test tck_postgres`

use std::process::ExitCode;

use persistence_sql::{PostgresConfig, SslMode};

#[path = "support/postgres_kit.rs"]
mod postgres_kit;

fn main() -> ExitCode {
    persistence_tck::run_main_server("postgres", "PERSISTENCE_POSTGRES_URL", |url| async move {
        postgres_kit::Factory::new(move || PostgresConfig {
            ssl_mode: Some(SslMode::Disable),
            ..PostgresConfig::new(url.clone())
        })
        .await
    })
}

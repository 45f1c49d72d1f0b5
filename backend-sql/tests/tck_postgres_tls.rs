//! The whole conformance kit against PostgreSQL over TLS with authentication, as
//! `tck_postgres` runs it over plain TCP: `ssl_mode = "verify-full"` with the test CA
//! (`tls_ca_file`), the role `persistence_tls`, which the server admits only over TLS and
//! only with its password (scram-sha-256), the password given through `password_file` (a
//! temporary file).
//!
//! `bash scripts/servers/postgres.sh start && source .servers/postgres/env &&
//! cargo test -p persistence-sql --test tck_postgres_tls`
//!
//! Needs `PERSISTENCE_TEST_POSTGRES_TLS_URL`, `PERSISTENCE_TEST_POSTGRES_TLS_PASSWORD` and
//! `PERSISTENCE_TEST_TLS_DIR` (all written by the script); without the URL every case is
//! reported ignored, and with `CI=true` that is a failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use persistence_api::Error;
use persistence_sql::{PostgresConfig, SslMode};

#[path = "support/postgres_kit.rs"]
mod postgres_kit;

fn env(var: &str) -> persistence_api::Result<String> {
    std::env::var(var)
        .map_err(|_| Error::config(format!("{var} is not set (source .servers/postgres/env)")))
}

fn main() -> ExitCode {
    persistence_tck::run_main_server(
        "postgres-tls",
        "PERSISTENCE_TEST_POSTGRES_TLS_URL",
        |url| async move {
            let password = env("PERSISTENCE_TEST_POSTGRES_TLS_PASSWORD")?;
            let tls_dir = PathBuf::from(env("PERSISTENCE_TEST_TLS_DIR")?);
            // The password in a file, as a mounted secret would give it (with its newline).
            let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
            writeln!(file, "{password}").expect("write the password file");
            let file = Arc::new(file);
            postgres_kit::Factory::new(move || {
                let mut config =
                    PostgresConfig::new(url.clone()).with_ssl_mode(SslMode::VerifyFull);
                config.tls_ca_file = Some(tls_dir.join("ca.pem"));
                // The file lives as long as the factory (this closure holds it).
                config.password_file = Some(file.path().to_path_buf());
                assert!(
                    !url.contains(&password),
                    "the URL must not carry the password"
                );
                config
            })
            .await
        },
    )
}

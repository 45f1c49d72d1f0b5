//! What the TLS tests share: the TLS roles of the test server (`scripts/servers/postgres.sh
//! start` writes them to `.servers/postgres/env`), a `verify-full` configuration trusting
//! the test CA, a password file, and a write-then-read that proves a connection works.
#![allow(dead_code)] // each test binary uses its own part

use std::io::Write;
use std::path::PathBuf;

use persistence_api::{AtomicWrite, JournalExt, Payload, PersistenceId, PersistentEvent};
use persistence_sql::{PostgresConfig, SslMode};

/// The test server's TLS roles and the test certificates.
pub struct Env {
    /// `persistence_tls`: password authentication, TLS connections only.
    pub tls_url: String,
    /// Its password.
    pub password: String,
    /// `persistence_cert`: certificate authentication, TLS connections only.
    pub cert_url: String,
    /// The certificates of `scripts/servers/certs.sh`.
    pub dir: PathBuf,
}

/// The environment, or `None` (a loud skip; a failure with `CI=true`).
pub fn env() -> Option<Env> {
    let tls_url = persistence_tck::server_env("PERSISTENCE_TEST_POSTGRES_TLS_URL")?;
    let var = |v: &str| std::env::var(v).unwrap_or_else(|_| panic!("{v} is not set"));
    Some(Env {
        tls_url,
        password: var("PERSISTENCE_TEST_POSTGRES_TLS_PASSWORD"),
        cert_url: var("PERSISTENCE_TEST_POSTGRES_CERT_URL"),
        dir: PathBuf::from(var("PERSISTENCE_TEST_TLS_DIR")),
    })
}

/// `url` over `verify-full`, trusting the test CA.
pub fn verify_full(url: &str, env: &Env) -> PostgresConfig {
    let mut config = PostgresConfig::new(url).with_ssl_mode(SslMode::VerifyFull);
    config.tls_ca_file = Some(env.dir.join("ca.pem"));
    config.max_connections = 2;
    config
}

/// A password file holding `password` and a newline.
pub fn password_file(password: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{password}").unwrap();
    file
}

/// Writes event 1 of `id` and reads its highest sequence number back.
pub async fn write_and_read(stores: &persistence_api::Stores, id: &str) {
    let id = PersistenceId::new(id).unwrap();
    let event = PersistentEvent::new(id.clone(), 1, Payload::raw(vec![1, 2, 3]));
    stores
        .journal
        .write(AtomicWrite::new(vec![event]).unwrap())
        .await
        .unwrap();
    assert_eq!(stores.journal.highest_sequence_nr(&id).await.unwrap(), 1);
}

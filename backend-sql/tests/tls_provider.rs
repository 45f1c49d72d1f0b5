//! With both of rustls's crypto providers compiled in (this crate's dev-dependencies turn on
//! `aws_lc_rs` beside sqlx's ring, as the Cassandra driver's or the AWS SDK's TLS does in a
//! whole program), rustls has no process-wide default provider, and sqlx's `verify-ca` path
//! (`WebPkiServerVerifier::builder`) would panic without one. Opening with TLS installs ring
//! first. One test in its own binary: nothing else may install a provider before it.
//!
//! `bash scripts/servers/postgres.sh start && source .servers/postgres/env &&
//! cargo test -p persistence-sql --test tls_provider`

use std::path::PathBuf;

use persistence_sql::{PostgresConfig, SslMode};

#[tokio::test]
async fn verify_ca_works_without_a_default_provider() {
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "a default provider is installed before the test: it checks nothing"
    );
    let Some(url) = persistence_tck::server_env("PERSISTENCE_TEST_POSTGRES_TLS_URL") else {
        return;
    };
    let var = |v: &str| std::env::var(v).unwrap_or_else(|_| panic!("{v} is not set"));
    let dir = PathBuf::from(var("PERSISTENCE_TEST_TLS_DIR"));
    let mut config = PostgresConfig::new(url).with_ssl_mode(SslMode::VerifyCa);
    config.tls_ca_file = Some(dir.join("ca.pem"));
    config.password = Some(var("PERSISTENCE_TEST_POSTGRES_TLS_PASSWORD"));
    config.max_connections = 1;
    let opened = persistence_sql::Postgres::open(config)
        .await
        .expect("verify-ca with both providers compiled in");
    let default = rustls::crypto::CryptoProvider::get_default().expect("installed at open");
    // ring's and aws-lc-rs's suites are the same list; ring has no post-quantum key
    // exchange, aws-lc-rs does: so ring is the one that has fewer key-exchange groups.
    assert_eq!(
        default.kx_groups.len(),
        rustls::crypto::ring::default_provider().kx_groups.len(),
        "ring is the default"
    );
    opened.close().await;
}

//! The conformance kit against the secure Cassandra node: TLS (verified against the test
//! CA, for the name `localhost`) and password authentication as a role that is not a
//! superuser, the password read from `password_file`. The same factory and settings as
//! `tck.rs` (its module, compiled in here), only the connection differs.
//!
//! `bash scripts/servers/cassandra.sh secure-start && source .servers/cassandra-secure/env`,
//! then `cargo test -p persistence-cassandra --test tck_secure`. Without the server the
//! cases are reported ignored; with `CI=true` that is a failure.

use std::path::PathBuf;
use std::process::ExitCode;

use persistence_cassandra::Cassandra;

#[allow(dead_code)] // its `main` is the plain kit's
#[path = "tck.rs"]
mod plain;

fn main() -> ExitCode {
    persistence_tck::run_main_server(
        "cassandra-secure",
        "PERSISTENCE_TEST_CASSANDRA_SECURE_CONTACT_POINT",
        |contact_point| async move {
            let var = |name: &str| {
                std::env::var(name).map_err(|_| {
                    persistence_api::Error::config(format!(
                        "{name} is not set (source .servers/cassandra-secure/env)"
                    ))
                })
            };
            let tls_dir = PathBuf::from(var("PERSISTENCE_TEST_TLS_DIR")?);
            let mut config = plain::config(contact_point, Some("datacenter1".into()));
            config.tls = true;
            config.tls_ca_file = Some(tls_dir.join("ca.pem"));
            // The server's certificate is for DNS:localhost; the contact point is 127.0.0.1.
            config.tls_server_name = Some("localhost".into());
            config.username = Some(var("PERSISTENCE_TEST_CASSANDRA_SECURE_USERNAME")?);
            config.password_file =
                Some(var("PERSISTENCE_TEST_CASSANDRA_SECURE_PASSWORD_FILE")?.into());
            let page_size = config.page_size;
            let base = Cassandra::open(config).await?;
            Ok(plain::Factory { base, page_size })
        },
    )
}

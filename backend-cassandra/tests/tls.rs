//! TLS and authentication failures against real servers: each is `ConfigInvalid`, names
//! "cassandra", the contact point, the cause and the key to check, within a bound, and no
//! error or `Debug` text holds the password. An unreachable server stays `Unavailable`.
//!
//! Needs the secure node (`bash scripts/servers/cassandra.sh secure-start`, then
//! `source .servers/cassandra-secure/env`); the expired-certificate case also the plain one
//! (`scripts/servers/cassandra.sh start`, `source .servers/cassandra/env`), behind a
//! `persistence_tck::tls::TlsProxy` presenting `expired.pem`. Without them each test says
//! it skipped; with `CI=true` a missing server fails. Run with `--nocapture` to see the
//! time each failure took.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use persistence_api::{Error, ErrorKind};
use persistence_cassandra::{Cassandra, CassandraConfig};
use persistence_tck::server_env;

/// Every failure must come within this (the connect timeout is 5 s by default).
const BOUND: Duration = Duration::from_secs(10);

/// A password that must never show up in any text.
const SECRET: &str = "Wrong-Secret-4711";

struct Secure {
    contact_point: String,
    username: String,
    password_file: PathBuf,
    tls_dir: PathBuf,
}

fn secure() -> Option<Secure> {
    let contact_point = server_env("PERSISTENCE_TEST_CASSANDRA_SECURE_CONTACT_POINT")?;
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    Some(Secure {
        contact_point,
        username: var("PERSISTENCE_TEST_CASSANDRA_SECURE_USERNAME"),
        password_file: var("PERSISTENCE_TEST_CASSANDRA_SECURE_PASSWORD_FILE").into(),
        tls_dir: var("PERSISTENCE_TEST_TLS_DIR").into(),
    })
}

impl Secure {
    /// The configuration that works: TLS against the test CA for `localhost`, the role's
    /// password from its file.
    fn config(&self) -> CassandraConfig {
        CassandraConfig {
            contact_points: vec![self.contact_point.clone()],
            local_datacenter: Some("datacenter1".into()),
            keyspace: "persistence_tck".into(),
            create_schema: true,
            tls: true,
            tls_ca_file: Some(self.tls_dir.join("ca.pem")),
            tls_server_name: Some("localhost".into()),
            username: Some(self.username.clone()),
            password_file: Some(self.password_file.clone()),
            ..CassandraConfig::default()
        }
    }
}

/// Opens with `config`, expecting an error of `kind` within [`BOUND`] whose message holds
/// every one of `words`; prints the time it took and the message.
async fn fails(case: &str, config: CassandraConfig, kind: ErrorKind, words: &[&str]) -> Error {
    let started = Instant::now();
    let result = tokio::time::timeout(BOUND * 2, Cassandra::open(config.clone())).await;
    let elapsed = started.elapsed();
    let err = match result {
        Err(_) => panic!("{case}: no answer within {:?} (a hang)", BOUND * 2),
        Ok(Ok(_)) => panic!("{case}: opened, but should have failed"),
        Ok(Err(err)) => err,
    };
    eprintln!("{case}: {elapsed:.2?}: {err}");
    assert!(elapsed < BOUND, "{case}: took {elapsed:?}: {err:#}");
    assert_eq!(err.kind(), kind, "{case}: {err:#}");
    let text = err.to_string();
    assert!(text.contains("cassandra"), "{case}: {text}");
    assert!(
        text.contains(&config.contact_points[0]),
        "{case}: the message should name the contact point: {text}"
    );
    for word in words {
        assert!(text.contains(word), "{case}: {word:?} missing in: {text}");
    }
    let all = format!("{err:#} {err:?} {config:?}");
    assert!(!all.contains(SECRET), "{case}: the password shows: {all}");
    if let Ok(real) = std::fs::read_to_string(
        config
            .password_file
            .as_deref()
            .unwrap_or("/nonexistent".as_ref()),
    ) {
        let real = real.trim_end();
        assert!(!all.contains(real), "{case}: the password shows: {all}");
    }
    err
}

#[tokio::test]
async fn the_right_settings_connect() {
    let Some(s) = secure() else { return };
    let started = Instant::now();
    let backend = Cassandra::open(s.config())
        .await
        .expect("open over TLS with authentication");
    eprintln!(
        "open over TLS with authentication (schema present): {:.2?}",
        started.elapsed()
    );
    let password = std::fs::read_to_string(&s.password_file).unwrap();
    assert!(!format!("{backend:?}").contains(password.trim_end()));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_not_trusted() {
    let Some(s) = secure() else { return };
    let config = CassandraConfig {
        tls_ca_file: Some(s.tls_dir.join("other-ca.pem")),
        ..s.config()
    };
    fails(
        "wrong CA",
        config,
        ErrorKind::ConfigInvalid,
        &["UnknownIssuer", "tls_ca_file"],
    )
    .await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let Some(s) = secure() else { return };
    // The certificate is for DNS:localhost only; the contact point is 127.0.0.1.
    let config = CassandraConfig {
        tls_server_name: None,
        ..s.config()
    };
    fails(
        "wrong host name",
        config,
        ErrorKind::ConfigInvalid,
        &["NotValidForName", "tls_server_name"],
    )
    .await;
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let Some(s) = secure() else { return };
    let Some(plain) = server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS") else {
        return;
    };
    let target = plain.split(',').next().unwrap().trim().to_string();
    let proxy = persistence_tck::tls::TlsProxy::start(
        target,
        s.tls_dir.join("expired.pem"),
        s.tls_dir.join("expired.key"),
    )
    .await
    .expect("start the TLS proxy");
    let config = CassandraConfig {
        contact_points: vec![proxy.addr().to_string()],
        username: None,
        password_file: None,
        ..s.config()
    };
    fails(
        "expired certificate",
        config,
        ErrorKind::ConfigInvalid,
        &["expired"],
    )
    .await;
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let Some(s) = secure() else { return };
    let config = CassandraConfig {
        password_file: None,
        password: Some(SECRET.into()),
        ..s.config()
    };
    fails(
        "wrong password",
        config,
        ErrorKind::ConfigInvalid,
        &[
            "authentication failed for user persistence",
            "username/password",
        ],
    )
    .await;
}

#[tokio::test]
async fn missing_credentials_are_refused() {
    let Some(s) = secure() else { return };
    let config = CassandraConfig {
        username: None,
        password_file: None,
        ..s.config()
    };
    fails(
        "missing credentials",
        config,
        ErrorKind::ConfigInvalid,
        &["requires authentication", "username"],
    )
    .await;
}

#[tokio::test]
async fn plaintext_against_a_tls_only_server_is_refused() {
    let Some(s) = secure() else { return };
    let config = CassandraConfig {
        tls: false,
        tls_ca_file: None,
        tls_server_name: None,
        ..s.config()
    };
    fails(
        "TLS off against a TLS-only server",
        config,
        ErrorKind::ConfigInvalid,
        &["check tls"],
    )
    .await;
}

#[tokio::test]
async fn tls_against_a_plaintext_server_is_refused() {
    let Some(s) = secure() else { return };
    let Some(plain) = server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS") else {
        return;
    };
    let config = CassandraConfig {
        contact_points: vec![plain.split(',').next().unwrap().trim().to_string()],
        username: None,
        password_file: None,
        ..s.config()
    };
    fails(
        "TLS on against a plaintext server",
        config,
        ErrorKind::ConfigInvalid,
        &["did not answer with TLS", "check tls"],
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_server_stays_unavailable() {
    let Some(s) = secure() else { return };
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = CassandraConfig {
        contact_points: vec![format!("127.0.0.1:{port}")],
        ..s.config()
    };
    let err = fails("unreachable", config, ErrorKind::Unavailable, &[]).await;
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_missing_password_file_names_the_key() {
    let Some(s) = secure() else { return };
    let config = CassandraConfig {
        password_file: Some(s.tls_dir.join("no-such-password")),
        ..s.config()
    };
    let err = Cassandra::open(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err:#}");
    assert!(err.to_string().contains("password_file"), "{err}");
}

#[tokio::test]
async fn a_server_that_accepts_and_stays_silent_times_out() {
    let Some(s) = secure() else { return };
    // Accepts connections, reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    for tls in [true, false] {
        let config = CassandraConfig {
            contact_points: vec![addr.to_string()],
            tls,
            tls_ca_file: tls.then(|| s.tls_dir.join("ca.pem")),
            tls_server_name: tls.then(|| "localhost".into()),
            connect_timeout: Duration::from_millis(1000),
            request_timeout: Duration::from_millis(2000),
            ..s.config()
        };
        let err = fails(
            &format!("silent server, tls = {tls}"),
            config,
            ErrorKind::Timeout,
            &["no session within 3000 ms", "check tls"],
        )
        .await;
        assert!(err.is_retryable());
    }
    silent.abort();
}

#[tokio::test]
async fn a_contact_point_by_name_is_checked_against_that_name() {
    let Some(s) = secure() else { return };
    // No tls_server_name: the node reached through `localhost:PORT` must present a
    // certificate for `localhost` (the driver itself names it by its IP address).
    let port = s.contact_point.rsplit_once(':').unwrap().1;
    let config = CassandraConfig {
        contact_points: vec![format!("localhost:{port}")],
        tls_server_name: None,
        ..s.config()
    };
    Cassandra::open(config)
        .await
        .expect("open through localhost:PORT without tls_server_name");
}

#[tokio::test]
async fn a_client_certificate_is_loaded_and_a_bad_one_named() {
    let Some(s) = secure() else { return };
    // The node does not require client certificates; this checks the files are read and
    // the handshake still succeeds with one configured.
    let config = CassandraConfig {
        tls_cert_file: Some(s.tls_dir.join("client.pem")),
        tls_key_file: Some(s.tls_dir.join("client.key")),
        ..s.config()
    };
    Cassandra::open(config)
        .await
        .expect("open with a client certificate");
    let config = CassandraConfig {
        tls_cert_file: Some(s.tls_dir.join("client.pem")),
        tls_key_file: Some(s.tls_dir.join("ca.pem")), // a certificate, not a key
        ..s.config()
    };
    let err = Cassandra::open(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err:#}");
    assert!(err.to_string().contains("tls_key_file"), "{err}");
    let config = CassandraConfig {
        tls_ca_file: Some(s.tls_dir.join("no-such-ca.pem")),
        ..s.config()
    };
    let err = Cassandra::open(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err:#}");
    assert!(err.to_string().contains("tls_ca_file"), "{err}");
}

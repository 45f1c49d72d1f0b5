//! PostgreSQL over TLS with authentication: certificate authentication works, and each way
//! a TLS or authentication setup can be wrong fails at open with an
//! [`ErrorKind::ConfigInvalid`] error that names the backend, `host:port` and the cause,
//! within a few seconds (the pool does not retry them), never with the password in it.
//!
//! `bash scripts/servers/postgres.sh start && source .servers/postgres/env &&
//! cargo test -p persistence-sql --test tls -- --nocapture` (prints each case's time).
//! Needs `PERSISTENCE_TEST_POSTGRES_TLS_URL`, `..._TLS_PASSWORD`, `..._CERT_URL` and
//! `PERSISTENCE_TEST_TLS_DIR` (skipped loudly without the URL, a failure with `CI=true`).
//! The expired certificate is presented by the kit's TLS proxy in front of the server.

use std::time::{Duration, Instant};

use persistence_api::{Error, ErrorKind};
use persistence_sql::{PostgresConfig, SslMode};
use persistence_tck::tls::TlsProxy;

#[path = "support/tls_env.rs"]
mod tls_env;
use tls_env::{env, password_file, verify_full, write_and_read};

/// How long a refused connection may take to come back as an error (the pool's acquire
/// timeout stays at its 30 s default, so a retry loop would show).
const BOUND: Duration = Duration::from_secs(5);

/// `url` with its `host:port` replaced.
fn with_address(url: &str, address: &str) -> String {
    let at = url.find('@').expect("a user in the url") + 1;
    let slash = url[at..].find('/').map_or(url.len(), |i| at + i);
    format!("{}{address}{}", &url[..at], &url[slash..])
}

/// `host:port` of `url`.
fn address(url: &str) -> String {
    let at = url.find('@').expect("a user in the url") + 1;
    let slash = url[at..].find('/').map_or(url.len(), |i| at + i);
    url[at..slash].to_owned()
}

fn port(url: &str) -> u16 {
    address(url).rsplit(':').next().unwrap().parse().unwrap()
}

/// Opens `config`, expects a `ConfigInvalid` error within [`BOUND`] whose text has each of
/// `needles` and none of `secrets`; returns it.
async fn refused(case: &str, config: PostgresConfig, needles: &[&str], secrets: &[&str]) -> Error {
    let started = Instant::now();
    let result = persistence_sql::open(config).await;
    let elapsed = started.elapsed();
    let err = match result {
        Ok(_) => panic!("{case}: opened, but it should have been refused"),
        Err(e) => e,
    };
    eprintln!("{case}: {elapsed:.2?}: {err}");
    let texts = [err.to_string(), format!("{err:#}"), format!("{err:?}")];
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{case}: {err:#}");
    assert!(elapsed < BOUND, "{case}: took {elapsed:?}: {err:#}");
    for needle in needles {
        assert!(texts[0].contains(needle), "{case}: no {needle:?} in: {err}");
    }
    for secret in secrets {
        for text in &texts {
            assert!(!text.contains(secret), "{case}: the secret is in: {text}");
        }
    }
    err
}

#[tokio::test]
async fn certificate_authentication_works() {
    let Some(env) = env() else { return };
    let mut config = verify_full(&env.cert_url, &env).with_schema("tls_cert_auth");
    config.tls_cert_file = Some(env.dir.join("client.pem"));
    config.tls_key_file = Some(env.dir.join("client.key"));
    let stores = persistence_sql::open(config)
        .await
        .expect("certificate authentication");
    write_and_read(&stores, &format!("cert-{}", std::process::id())).await;
}

#[tokio::test]
async fn password_authentication_over_verify_full_works() {
    let Some(env) = env() else { return };
    let file = password_file(&env.password);
    let mut config = verify_full(&env.tls_url, &env).with_schema("tls_password_auth");
    config.password_file = Some(file.path().to_path_buf());
    let stores = persistence_sql::open(config)
        .await
        .expect("password over TLS");
    write_and_read(&stores, &format!("pw-{}", std::process::id())).await;
}

/// verify-ca checks the chain, not the name: 127.0.0.1 is not in the certificate, and the
/// connection still succeeds. (This is sqlx's path that needs rustls's process default
/// provider, installed at open.)
#[tokio::test]
async fn verify_ca_does_not_check_the_host_name() {
    let Some(env) = env() else { return };
    let url = with_address(&env.tls_url, &format!("127.0.0.1:{}", port(&env.tls_url)));
    let mut config = verify_full(&url, &env).with_ssl_mode(SslMode::VerifyCa);
    config.password = Some(env.password.clone());
    persistence_sql::open(config)
        .await
        .expect("verify-ca by IP address");
}

#[tokio::test]
async fn a_server_certificate_of_another_ca_is_refused() {
    let Some(env) = env() else { return };
    let mut config = verify_full(&env.tls_url, &env);
    config.tls_ca_file = Some(env.dir.join("other-ca.pem"));
    config.password = Some(env.password.clone());
    let at = address(&env.tls_url);
    refused(
        "wrong CA",
        config,
        &[
            "postgres",
            &at,
            "not trusted (UnknownIssuer)",
            "tls_ca_file",
        ],
        &[&env.password],
    )
    .await;
}

#[tokio::test]
async fn a_server_certificate_for_another_host_is_refused() {
    let Some(env) = env() else { return };
    let at = format!("127.0.0.1:{}", port(&env.tls_url));
    let mut config = verify_full(&with_address(&env.tls_url, &at), &env);
    config.password = Some(env.password.clone());
    refused(
        "wrong host name",
        config,
        &[
            "postgres",
            &at,
            "not valid for host name 127.0.0.1",
            "NotValidForName",
        ],
        &[&env.password],
    )
    .await;
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let Some(env) = env() else { return };
    let proxy = TlsProxy::start_postgres(
        format!("127.0.0.1:{}", port(&env.tls_url)),
        env.dir.join("expired.pem"),
        env.dir.join("expired.key"),
    )
    .await
    .expect("start the TLS proxy");
    let at = format!("localhost:{}", proxy.addr().port());
    let mut config = verify_full(&with_address(&env.tls_url, &at), &env);
    config.password = Some(env.password.clone());
    refused(
        "expired certificate",
        config,
        &["postgres", &at, "expired (Expired"],
        &[&env.password],
    )
    .await;
    assert_eq!(
        proxy.handshakes(),
        0,
        "the client must refuse the handshake"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_never_shown() {
    let Some(env) = env() else { return };
    let wrong = "wrong-Secret-4711";
    let file = password_file(wrong);
    let mut config = verify_full(&env.tls_url, &env);
    config.password_file = Some(file.path().to_path_buf());
    let at = address(&env.tls_url);
    refused(
        "wrong password (password_file)",
        config,
        &[
            "postgres",
            &at,
            "password authentication failed for user",
            "persistence_tls",
        ],
        &[wrong, &env.password],
    )
    .await;

    let mut config = verify_full(&env.tls_url, &env);
    config.password = Some(wrong.into());
    assert!(!format!("{config:?}").contains(wrong));
    refused(
        "wrong password (password)",
        config,
        &["password authentication failed"],
        &[wrong],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_user_is_refused() {
    let Some(env) = env() else { return };
    let url = env.tls_url.replacen("persistence_tls@", "no_such_user@", 1);
    let mut config = verify_full(&url, &env);
    config.password = Some("whatever-Secret".into());
    refused(
        "unknown user",
        config,
        &[
            "postgres",
            &address(&url),
            "authentication failed for user",
            "no_such_user",
        ],
        &["whatever-Secret"],
    )
    .await;
}

#[tokio::test]
async fn certificate_authentication_without_a_certificate_is_refused() {
    let Some(env) = env() else { return };
    let config = verify_full(&env.cert_url, &env);
    refused(
        "missing client certificate",
        config,
        &[
            "postgres",
            &address(&env.cert_url),
            "client certificate",
            "tls_cert_file",
        ],
        &[],
    )
    .await;
}

#[tokio::test]
async fn password_role_over_plain_tcp_is_refused() {
    let Some(env) = env() else { return };
    let mut config = PostgresConfig::new(env.tls_url.clone()).with_ssl_mode(SslMode::Disable);
    config.password = Some(env.password.clone());
    refused(
        "TLS role without TLS",
        config,
        &["postgres", "pg_hba"],
        &[&env.password],
    )
    .await;
}

#[tokio::test]
async fn missing_files_are_named_at_open() {
    let Some(env) = env() else { return };
    let mut config = verify_full(&env.tls_url, &env);
    config.tls_ca_file = Some(env.dir.join("no-such-ca.pem"));
    refused(
        "missing CA file",
        config,
        &["tls_ca_file", "no-such-ca.pem"],
        &[],
    )
    .await;

    let mut config = verify_full(&env.tls_url, &env);
    config.password_file = Some(env.dir.join("no-such-password"));
    refused(
        "missing password file",
        config,
        &["password_file", "no-such-password"],
        &[],
    )
    .await;

    // A key file that holds a certificate, not a key.
    let mut config = verify_full(&env.cert_url, &env);
    config.tls_cert_file = Some(env.dir.join("client.pem"));
    config.tls_key_file = Some(env.dir.join("client.pem"));
    refused(
        "key file without a key",
        config,
        &["tls_key_file", "no PEM private key"],
        &[],
    )
    .await;
}

#[test]
fn password_and_password_file_together_are_invalid() {
    let mut config = PostgresConfig::new("postgres://u@localhost/db");
    config.password = Some("pw-Secret".into());
    config.password_file = Some("/run/secrets/pw".into());
    let err = config.validate().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
    assert!(!format!("{err:#} {err:?} {config:?}").contains("pw-Secret"));
}

/// `require` against a server that answers the TLS request with `N` (no TLS): refused at
/// once, naming the mode. The "server" is a listener of this test that answers `N`.
#[tokio::test]
async fn require_against_a_server_without_tls_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            if socket.read_exact(&mut request).await.is_ok() {
                let _ = socket.write_all(b"N").await;
            }
        }
    });
    let config =
        PostgresConfig::new(format!("postgres://app@{at}/app")).with_ssl_mode(SslMode::Require);
    refused(
        "require without TLS on the server",
        config,
        &["postgres", &at, "ssl_mode require", "does not support TLS"],
        &[],
    )
    .await;
}

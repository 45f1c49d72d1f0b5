//! The HTTPS path the facade's `dynamodb` feature enables (rustls, ring, the OS roots plus
//! `tls_ca_file`), exercised end to end: a TLS-terminating proxy
//! ([`persistence_tck::tls::TlsProxy`]) with the repository's test certificates
//! (scripts/servers/certs.sh) in front of DynamoDB Local. A trusted certificate carries
//! journal, queries and snapshots; an expired one, one for another host name and one of an
//! untrusted authority each fail at once with `ConfigInvalid` naming the cause, never a
//! retry loop or a hang.
#![cfg(feature = "tls")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use persistence_api::{
    AtomicWrite, ErrorKind, JournalExt, Offset, Payload, PersistenceId, PersistentEvent,
    ReadJournalExt, SnapshotMetadata, SnapshotSelectionCriteria,
};
use persistence_dynamodb::DynamoDbConfig;
use persistence_tck::tls::TlsProxy;

/// Every failure case must answer within this (the connect timeout is 3 s; a TLS failure
/// is not retried).
const BOUND: Duration = Duration::from_secs(5);

fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/servers/certs.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{script} failed");
    dir
}

/// DynamoDB Local's `host:port`, from the plain endpoint the scripts export.
fn local_target() -> Option<String> {
    let endpoint = persistence_tck::server_env("PERSISTENCE_DYNAMODB_ENDPOINT")?;
    Some(
        endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
    )
}

fn config(endpoint: String, ca: PathBuf) -> DynamoDbConfig {
    DynamoDbConfig {
        journal_table: "tls_journal".into(),
        snapshot_table: "tls_snapshot".into(),
        namespace: format!("t{}", uuid::Uuid::new_v4().simple()),
        create_schema: true,
        region: Some("us-east-1".into()),
        access_key_id: Some("local".into()),
        secret_access_key: Some("local".into()),
        tls_ca_file: Some(ca),
        ..DynamoDbConfig::local(endpoint)
    }
}

async fn proxy(target: &str, dir: &Path, cert: &str) -> TlsProxy {
    TlsProxy::start(
        target,
        dir.join(format!("{cert}.pem")),
        dir.join(format!("{cert}.key")),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_queries_and_snapshots_over_https_with_a_private_authority() {
    let Some(target) = local_target() else { return };
    let dir = certs();
    let proxy = proxy(&target, dir.path(), "server").await;
    let endpoint = format!("https://localhost:{}", proxy.addr().port());
    let stores = persistence_dynamodb::open(config(endpoint, dir.path().join("ca.pem")))
        .await
        .unwrap_or_else(|e| panic!("open over TLS: {e}"));
    let id = PersistenceId::new("tls-1").unwrap();
    let events: Vec<_> = (1..=3)
        .map(|n| {
            PersistentEvent::new(id.clone(), n, Payload::raw(vec![n as u8; 10])).with_tags(["tls"])
        })
        .collect();
    stores
        .journal
        .write(AtomicWrite::new(events).unwrap())
        .await
        .unwrap();
    let replayed = stores.journal.replay_all(&id).await.unwrap();
    assert_eq!(replayed.len(), 3);
    assert_eq!(
        replayed[2].payload.bytes.as_ref(),
        &[3u8; 10][..],
        "the bytes cross the TLS proxy unchanged"
    );
    let tagged: Vec<_> = stores
        .read_journal
        .current_events_by_tag("tls".into(), Offset::NoOffset)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(tagged.len(), 3);
    let meta = SnapshotMetadata::new(id.clone(), 3);
    stores
        .snapshots
        .save_snapshot(meta, Payload::raw(b"state".to_vec()))
        .await
        .unwrap();
    let loaded = stores
        .snapshots
        .load_snapshot(&id, SnapshotSelectionCriteria::latest())
        .await
        .unwrap();
    assert!(loaded.is_some());
    assert!(proxy.handshakes() >= 1, "the requests went through TLS");
    assert_eq!(proxy.failed_handshakes(), 0);
}

/// Opens the stores against `endpoint` trusting `ca`, expecting a `ConfigInvalid` error
/// that contains `cause`, within [`BOUND`].
async fn refused(endpoint: String, ca: PathBuf, cause: &str) {
    let started = Instant::now();
    let result = tokio::time::timeout(BOUND * 2, persistence_dynamodb::open(config(endpoint, ca)))
        .await
        .expect("the open gives up instead of hanging");
    let error = match result {
        Ok(_) => panic!("the TLS handshake should have been refused ({cause})"),
        Err(e) => e,
    };
    let elapsed = started.elapsed();
    assert_eq!(error.kind(), ErrorKind::ConfigInvalid, "{error}");
    assert!(!error.is_retryable(), "{error}");
    let text = error.to_string();
    assert!(text.contains("TLS handshake"), "{text}");
    assert!(text.contains(cause), "{text} should name {cause}");
    assert!(
        text.contains("tls_ca_file"),
        "{text} should say what to check"
    );
    assert!(elapsed < BOUND, "took {elapsed:?}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_config_invalid_at_once() {
    let Some(target) = local_target() else { return };
    let dir = certs();
    let proxy = proxy(&target, dir.path(), "expired").await;
    let endpoint = format!("https://localhost:{}", proxy.addr().port());
    refused(endpoint, dir.path().join("ca.pem"), "expired").await;
    assert_eq!(proxy.handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_is_config_invalid_at_once() {
    let Some(target) = local_target() else { return };
    let dir = certs();
    let proxy = proxy(&target, dir.path(), "server").await;
    // The certificate names `localhost` only.
    let endpoint = format!("https://127.0.0.1:{}", proxy.addr().port());
    refused(endpoint, dir.path().join("ca.pem"), "not valid for name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_authority_is_config_invalid_at_once() {
    let Some(target) = local_target() else { return };
    let dir = certs();
    let proxy = proxy(&target, dir.path(), "server").await;
    let endpoint = format!("https://localhost:{}", proxy.addr().port());
    refused(endpoint, dir.path().join("other-ca.pem"), "UnknownIssuer").await;
}

#[tokio::test]
async fn a_missing_or_empty_ca_file_is_config_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e = persistence_dynamodb::open(config("https://localhost:1".into(), missing))
        .await
        .expect_err("a missing tls_ca_file is refused");
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let e = persistence_dynamodb::open(config("https://localhost:1".into(), empty))
        .await
        .expect_err("a file without a certificate is refused");
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e}");
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
}

//! Pointing the backend at DynamoDB Local needs no AWS environment: with no credentials and
//! no region anywhere (config, environment), a local endpoint gets dummy credentials and a
//! region instead of ending in the instance metadata service ("failed to load IMDS session
//! token ... gave up after 9 attempts"). The test runs itself again as a child process with
//! every AWS variable removed, so the environment of the other tests stays untouched.

use persistence_api::{AtomicWrite, JournalExt, Payload, PersistenceId, PersistentEvent};
use persistence_dynamodb::DynamoDbConfig;

const CHILD: &str = "PERSISTENCE_LOCAL_ENDPOINT_CHILD";
const AWS_VARS: [&str; 7] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_EC2_METADATA_DISABLED",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_endpoint_needs_no_aws_environment() {
    let Some(endpoint) = persistence_tck::server_env("PERSISTENCE_DYNAMODB_ENDPOINT") else {
        return;
    };
    if std::env::var_os(CHILD).is_none() {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "a_local_endpoint_needs_no_aws_environment",
                "--nocapture",
            ])
            .env(CHILD, "1");
        for v in AWS_VARS {
            child.env_remove(v);
        }
        let out = child.output().expect("the test binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "the child failed:\n{text}");
        assert!(text.contains("1 passed"), "the child ran nothing:\n{text}");
        return;
    }
    for v in AWS_VARS {
        assert!(
            std::env::var_os(v).is_none(),
            "{v} is still set in the child"
        );
    }
    let config = DynamoDbConfig {
        journal_table: "local_endpoint_journal".into(),
        snapshot_table: "local_endpoint_snapshot".into(),
        namespace: format!("l{}", uuid::Uuid::new_v4().simple()),
        create_schema: true,
        ..DynamoDbConfig::local(endpoint)
    };
    let stores = persistence_dynamodb::open(config)
        .await
        .unwrap_or_else(|e| panic!("open with a local endpoint and no AWS environment: {e}"));
    let id = PersistenceId::new("local-1").unwrap();
    let event = PersistentEvent::new(id.clone(), 1, Payload::raw(b"one".to_vec()));
    stores
        .journal
        .write(AtomicWrite::single(event).unwrap())
        .await
        .unwrap_or_else(|e| panic!("a write with no AWS environment: {e}"));
    assert_eq!(stores.journal.replay_all(&id).await.unwrap().len(), 1);
}

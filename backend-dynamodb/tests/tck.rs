//! The whole conformance kit against DynamoDB Local (or any endpoint in
//! `PERSISTENCE_DYNAMODB_ENDPOINT`); each case runs under its own journal name in two shared
//! tables.

use std::process::ExitCode;

use backend_dynamodb::{aws_sdk_dynamodb, DynamoDb, DynamoDbConfig};
use persistence_api::{Result, Stores};

struct Factory {
    client: aws_sdk_dynamodb::Client,
    config: DynamoDbConfig,
}

impl Factory {
    async fn connect(endpoint: String) -> Result<Self> {
        let config = DynamoDbConfig {
            journal_table: "tck_journal".into(),
            snapshot_table: "tck_snapshot".into(),
            poll_interval_ms: 100,
            feed_settle_delay_ms: 500,
            tag_gap_timeout_ms: 1000,
            ..DynamoDbConfig::local(endpoint)
        };
        let db = DynamoDb::connect(config.clone()).await?;
        db.create_tables().await?;
        Ok(Factory {
            client: db.client().clone(),
            config,
        })
    }
}

#[persistence_api::async_trait]
impl tck::StoreFactory for Factory {
    async fn create(&self, namespace: &str) -> Result<Stores> {
        let config = DynamoDbConfig {
            journal_name: namespace.to_owned(),
            ..self.config.clone()
        };
        Ok(DynamoDb::with_client(self.client.clone(), config)?.stores())
    }
}

fn main() -> ExitCode {
    let Some(endpoint) = tck::server_env("PERSISTENCE_DYNAMODB_ENDPOINT") else {
        return ExitCode::SUCCESS;
    };
    tck::run_main("dynamodb", move || async move {
        Factory::connect(endpoint).await
    })
}

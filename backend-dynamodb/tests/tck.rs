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
            poll_interval: std::time::Duration::from_millis(100),
            feed_settle_delay: std::time::Duration::from_millis(500),
            tag_gap_timeout: std::time::Duration::from_millis(1000),
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

    fn page_size(&self) -> Option<usize> {
        Some(self.config.page_size as usize)
    }
}

fn main() -> ExitCode {
    tck::run_main_server(
        "dynamodb",
        "PERSISTENCE_DYNAMODB_ENDPOINT",
        |endpoint| async move { Factory::connect(endpoint).await },
    )
}

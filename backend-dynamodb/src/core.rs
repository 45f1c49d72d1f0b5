//! The SDK client, built from [`DynamoDbConfig`]; [`Inner`], what the three stores share
//! (client, settings, caches); and the requests more than one store sends: the id's
//! highest/deleted-to item, a range of event items, batch writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::{DeleteRequest, KeysAndAttributes, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use persistence_api::{Error, ErrorKind, Result};

use crate::config::DynamoDbConfig;
use crate::error::{build_error, unprocessed_error, Failed};
use crate::retry::RetryPolicy;
use crate::schema::{key, s, seq_sk, Item, Keys, Meta, MAX_BATCH_GET, MAX_BATCH_WRITE, META_SK};

/// The HTTP client the backend gives the SDK: plain HTTP (hyper), plus HTTPS through
/// rustls (ring provider, the OS roots and `tls_ca_file`) when the crate feature `tls` is
/// on. Tests wrap it to inject faults.
pub fn http_client(config: &DynamoDbConfig) -> Result<SharedHttpClient> {
    let https = config
        .endpoint
        .as_deref()
        .is_none_or(|e| e.starts_with("https:"));
    #[cfg(feature = "tls")]
    {
        let _ = https;
        use aws_smithy_http_client::tls;
        let mut trust = tls::TrustStore::default();
        if let Some(path) = &config.tls_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Error::config(format!(
                    "dynamodb: cannot read tls_ca_file {}: {e}",
                    path.display()
                ))
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(Error::config(format!(
                    "dynamodb: tls_ca_file {} holds no PEM certificate",
                    path.display()
                )));
            }
            trust = trust.with_pem_certificate(pem);
        }
        let context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| Error::config(format!("dynamodb: TLS settings: {e}")))?;
        Ok(aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(context)
            .build_https())
    }
    #[cfg(not(feature = "tls"))]
    {
        if https {
            return Err(Error::config(
                "dynamodb: HTTPS endpoints (and so the real AWS endpoints) need the crate feature `tls` \
                 of persistence-dynamodb; without it only plain http:// endpoints such as DynamoDB Local work",
            ));
        }
        if config.tls_ca_file.is_some() {
            return Err(Error::config(
                "dynamodb: tls_ca_file needs the crate feature `tls` of persistence-dynamodb",
            ));
        }
        Ok(aws_smithy_http_client::Builder::new().build_http())
    }
}

/// The SDK client configuration the backend uses: the standard region and credential
/// chains (overridden by the config's values), the endpoint override, the timeouts, our
/// HTTP client, and the SDK's own retries turned off (the backend retries itself, see
/// README). Tests add interceptors or another HTTP client to it.
pub async fn sdk_config(config: &DynamoDbConfig) -> Result<aws_sdk_dynamodb::config::Builder> {
    config.validate()?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client(config)?)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout)
                .operation_attempt_timeout(config.attempt_timeout)
                .build(),
        );
    let local = config.endpoint.as_deref().is_some_and(is_local_endpoint);
    let env_set = |names: &[&str]| names.iter().any(|n| std::env::var_os(n).is_some());
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    } else if local && !env_set(&["AWS_REGION", "AWS_DEFAULT_REGION"]) {
        // DynamoDB Local and its kin ignore the region; without this the chain would ask
        // the instance metadata service and wait for it to time out.
        loader = loader.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            id.clone(),
            secret.clone(),
            config.session_token.clone(),
            None,
            "persistence-config",
        ));
    } else if local && !env_set(&["AWS_ACCESS_KEY_ID", "AWS_PROFILE"]) {
        // A local server accepts any credentials: static dummy ones, so pointing the
        // backend at DynamoDB Local needs no AWS environment (the chain would end in the
        // instance metadata service and fail after its retries).
        loader = loader.credentials_provider(Credentials::new(
            "local",
            "local",
            None,
            None,
            "persistence-local-endpoint",
        ));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_dynamodb::config::Builder::from(&shared);
    if shared.region().is_none() {
        if config.endpoint.is_some() {
            builder = builder.region(Region::new("us-east-1"));
        } else {
            return Err(Error::config(
                "dynamodb: no region configured (set dynamodb.region or AWS_REGION)",
            ));
        }
    }
    Ok(builder)
}

/// What the three stores share: the client, the settings, and small caches.
pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) config: DynamoDbConfig,
    pub(crate) keys: Keys,
    pub(crate) retry: RetryPolicy,
    /// Ids seen with events, and the highest sequence number seen stored for each: their
    /// registry item exists (so writes need not carry it again), and every number up to
    /// that highest is taken (so a write right above it cannot leave a gap).
    known_ids: Mutex<HashMap<String, u64>>,
    /// The last write time handed out, so the write times of this process never go back.
    clock: AtomicI64,
    /// Added to the wall clock (tests of writers whose clocks disagree).
    skew_ms: AtomicI64,
}

const CACHE_LIMIT: usize = 100_000;

impl Inner {
    /// The journal table's item at `key`, read strongly consistently, with the retry
    /// policy.
    pub(crate) async fn get_item(
        &self,
        operation: &'static str,
        key: crate::schema::Item,
    ) -> persistence_api::Result<Option<crate::schema::Item>> {
        let req = self
            .client
            .get_item()
            .table_name(self.journal_table())
            .set_key(Some(key))
            .consistent_read(true);
        let out = self
            .retry
            .run(operation, || req.clone().send())
            .await
            .map_err(crate::error::Failed::into_error)?;
        Ok(out.item)
    }

    pub(crate) fn new(client: Client, config: DynamoDbConfig) -> Result<Self> {
        config.validate()?;
        Ok(Inner {
            client,
            keys: Keys::new(&config),
            retry: RetryPolicy::new(&config),
            config,
            known_ids: Mutex::new(HashMap::new()),
            clock: AtomicI64::new(0),
            skew_ms: AtomicI64::new(0),
        })
    }

    pub(crate) fn journal_table(&self) -> &str {
        &self.config.journal_table
    }

    pub(crate) fn snapshot_table(&self) -> &str {
        &self.config.snapshot_table
    }

    pub(crate) fn consistent(&self) -> bool {
        self.config.consistent_reads
    }

    pub(crate) fn id_known(&self, pid: &str) -> bool {
        self.known_highest(pid).is_some()
    }

    /// The highest sequence number of `pid` this process has seen stored, if any.
    pub(crate) fn known_highest(&self, pid: &str) -> Option<u64> {
        self.known_ids.lock().ok().and_then(|m| m.get(pid).copied())
    }

    /// Records that `pid` has events up to `highest` (the known highest only goes up).
    pub(crate) fn mark_id_known(&self, pid: &str, highest: u64) {
        if let Ok(mut m) = self.known_ids.lock() {
            if let Some(h) = m.get_mut(pid) {
                *h = (*h).max(highest);
                return;
            }
            if m.len() >= CACHE_LIMIT {
                m.clear();
            }
            m.insert(pid.to_owned(), highest);
        }
    }

    /// Forgets what this process knew of `pid` (its registry item, its highest): after the
    /// id was purged, its next write starts from nothing and registers it again.
    pub(crate) fn forget_id(&self, pid: &str) {
        if let Ok(mut m) = self.known_ids.lock() {
            m.remove(pid);
        }
    }

    /// Sets how far this process's write times run ahead of (or, negative, behind) the
    /// wall clock.
    pub(crate) fn skew_clock(&self, ms: i64) {
        self.skew_ms.store(ms, Ordering::Relaxed);
    }

    /// The write time of a new write (new-id feed keys, tag entries' merge order): the
    /// wall clock, never below an earlier one.
    pub(crate) fn token_time(&self) -> i64 {
        let now = now_ms() + self.skew_ms.load(Ordering::Relaxed);
        let prev = self.clock.fetch_max(now, Ordering::SeqCst);
        prev.max(now)
    }

    /// The id's highest/deleted-to item (zeros when there is none).
    pub(crate) async fn meta(&self, pid: &str) -> Result<Meta> {
        let req = self
            .client
            .get_item()
            .table_name(self.journal_table())
            .set_key(Some(key(self.keys.event_pk(pid), META_SK.to_owned())))
            .consistent_read(self.consistent());
        let out = self
            .retry
            .run("replay", || req.clone().send())
            .await
            .map_err(Failed::into_error)?;
        Ok(out.item().map(Meta::of).unwrap_or_default())
    }

    /// The event items of `pid` with `from <= seq <= to`, all pages (at most `limit` items
    /// when given: one page then).
    pub(crate) async fn query_events(
        &self,
        operation: &'static str,
        pid: &str,
        from: u64,
        to: u64,
        limit: Option<i32>,
    ) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let req = self
                .client
                .query()
                .table_name(self.journal_table())
                .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
                .expression_attribute_values(":pk", s(self.keys.event_pk(pid)))
                .expression_attribute_values(":a", s(seq_sk(from)))
                .expression_attribute_values(":b", s(seq_sk(to)))
                .limit(limit.unwrap_or(self.config.page_size.min(i32::MAX as u32) as i32))
                .consistent_read(self.consistent())
                .set_exclusive_start_key(start.take());
            let out = self
                .retry
                .run(operation, || req.clone().send())
                .await
                .map_err(Failed::into_error)?;
            let last = out.last_evaluated_key().cloned();
            items.extend(out.items.unwrap_or_default());
            match last {
                Some(k) if limit.is_none() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// The journal table's items at `keys` (at most [`MAX_BATCH_GET`]) that exist, in no
    /// particular order: one strongly consistent `BatchGetItem`, retried with the retry
    /// policy, unprocessed keys asked again with backoff. `attributes` (none: all) are the
    /// attributes read, named through placeholders so no reserved word gets in the way.
    pub(crate) async fn batch_get(
        &self,
        operation: &'static str,
        keys: Vec<Item>,
        attributes: &[&str],
    ) -> Result<Vec<Item>> {
        debug_assert!(keys.len() <= MAX_BATCH_GET);
        let table = self.journal_table();
        let projection = (!attributes.is_empty()).then(|| {
            (0..attributes.len())
                .map(|i| format!("#a{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let names = (!attributes.is_empty()).then(|| {
            attributes
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("#a{i}"), (*a).to_owned()))
                .collect::<HashMap<_, _>>()
        });
        let mut pending = keys;
        let mut found = Vec::with_capacity(pending.len());
        let mut round = 0u32;
        while !pending.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut pending)))
                .set_projection_expression(projection.clone())
                .set_expression_attribute_names(names.clone())
                .consistent_read(true)
                .build()
                .map_err(build_error)?;
            let req = self.client.batch_get_item().request_items(table, request);
            let out = self
                .retry
                .run(operation, || req.clone().send())
                .await
                .map_err(Failed::into_error)?;
            if let Some(items) = out.responses().and_then(|r| r.get(table)) {
                found.extend(items.iter().cloned());
            }
            if let Some(left) = out.unprocessed_keys().and_then(|u| u.get(table)) {
                if !left.keys().is_empty() {
                    if round >= self.retry.max_retries {
                        return Err(Error::new(
                            ErrorKind::RateLimited,
                            format!(
                                "DynamoDB left {} batch reads unprocessed",
                                left.keys().len()
                            ),
                        )
                        .with_retries_exhausted(round + 1));
                    }
                    tokio::time::sleep(self.retry.delay(round)).await;
                    round += 1;
                    pending = left.keys().to_vec();
                }
            }
        }
        Ok(found)
    }

    /// Deletes `keys` from `table` in batches of 25, several at once, retrying unprocessed
    /// items with backoff until none is left.
    pub(crate) async fn batch_delete(
        &self,
        operation: &'static str,
        table: &str,
        keys: Vec<Item>,
    ) -> Result<()> {
        let writes = keys
            .into_iter()
            .map(delete_request)
            .collect::<Result<Vec<_>>>()?;
        self.batch_write_all(operation, table, writes).await
    }

    /// Sends `writes` (puts and deletes of distinct items) in batches of 25, several at
    /// once, retrying unprocessed items with backoff until none is left.
    pub(crate) async fn batch_write_all(
        &self,
        operation: &'static str,
        table: &str,
        writes: Vec<WriteRequest>,
    ) -> Result<()> {
        use futures::StreamExt;
        let batches: Vec<Vec<WriteRequest>> =
            writes.chunks(MAX_BATCH_WRITE).map(|c| c.to_vec()).collect();
        let results: Vec<Result<()>> = futures::stream::iter(batches)
            .map(|mut batch| async move { self.batch_write(operation, table, &mut batch).await })
            .buffer_unordered(4)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Sends `pending` with `BatchWriteItem`, retrying what DynamoDB leaves unprocessed.
    pub(crate) async fn batch_write(
        &self,
        operation: &'static str,
        table: &str,
        pending: &mut Vec<WriteRequest>,
    ) -> Result<()> {
        let mut round = 0u32;
        while !pending.is_empty() {
            let req = self
                .client
                .batch_write_item()
                .request_items(table, std::mem::take(pending));
            let out = self
                .retry
                .run(operation, || req.clone().send())
                .await
                .map_err(Failed::into_error)?;
            if let Some(left) = out.unprocessed_items().and_then(|m| m.get(table)) {
                if !left.is_empty() {
                    if round >= self.retry.max_retries {
                        return Err(unprocessed_error(left.len(), round + 1));
                    }
                    tokio::time::sleep(self.retry.delay(round)).await;
                    round += 1;
                    *pending = left.clone();
                }
            }
        }
        Ok(())
    }
}

/// A `BatchWriteItem` request deleting the item at `key`.
pub(crate) fn delete_request(key: Item) -> Result<WriteRequest> {
    let del = DeleteRequest::builder()
        .set_key(Some(key))
        .build()
        .map_err(build_error)?;
    Ok(WriteRequest::builder().delete_request(del).build())
}

/// A `BatchWriteItem` request putting `item` (replacing what is at its key).
pub(crate) fn put_request(item: Item) -> Result<WriteRequest> {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(build_error)?;
    Ok(WriteRequest::builder().put_request(put).build())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether `endpoint` is not an AWS endpoint (DynamoDB Local, LocalStack, Alternator, ...):
/// its host is not under `amazonaws.com` or `amazonaws.com.cn`.
fn is_local_endpoint(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or(host)
    } else {
        host.split(':').next().unwrap_or(host)
    }
    .to_ascii_lowercase();
    !(host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn"))
}

#[cfg(test)]
mod tests {
    use super::is_local_endpoint;

    #[test]
    fn local_endpoints_are_the_ones_outside_aws() {
        assert!(is_local_endpoint("http://127.0.0.1:8000"));
        assert!(is_local_endpoint("http://localhost:8000/"));
        assert!(is_local_endpoint("http://[::1]:8000"));
        assert!(is_local_endpoint("http://dynamodb-local:8000"));
        assert!(!is_local_endpoint(
            "https://dynamodb.eu-west-1.amazonaws.com"
        ));
        assert!(!is_local_endpoint(
            "https://dynamodb.cn-north-1.amazonaws.com.cn:443"
        ));
        assert!(!is_local_endpoint(
            "https://vpce-1.dynamodb.us-east-1.vpce.amazonaws.com"
        ));
    }
}

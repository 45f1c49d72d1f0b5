//! The conformance kit against a real Cassandra node.
//!
//! `source .servers/cassandra/env` (after `bash scripts/servers/cassandra.sh start`), then
//! `cargo test -p persistence-cassandra --test tck`. One keyspace (`persistence_tck`, created if
//! missing) serves every run; each case gets its own namespace inside it, so no schema change
//! happens per case (see the README for why), and afterwards deletes what it stored with the
//! driver's purge (`JournalMaintenance::purge_persistence_id`).
//!
//! `tck_secure.rs` runs the same kit with this file's factory over TLS with authentication.

use persistence_api::{JournalMaintenance, ReadJournalExt};
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use persistence_api::futures::TryStreamExt;
use persistence_api::{Error, ErrorKind, PersistenceId, Result, SequenceNr, Stores};
use persistence_cassandra::scylla::value::CqlTimeuuid;
use persistence_cassandra::{Cassandra, CassandraConfig, ConsistencyLevel};
use persistence_tck::Corruption;

pub(crate) struct Factory {
    pub(crate) base: Cassandra,
    /// The configured rows per page.
    pub(crate) page_size: u32,
}

/// How a namespace prefixes the ids and tags it stores (the README's "Namespaces").
fn stored_key(namespace: &str, s: &str) -> String {
    format!("{namespace}\u{1f}{s}")
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Storage, format!("corrupting a row: {e}"))
}

/// The column a corruption damages and its new value as CQL: garbage bytes, a NULL where
/// the driver always writes a value, an empty tag.
fn damage(what: Corruption, payload_column: &'static str) -> Result<(&'static str, &'static str)> {
    match what {
        // Bytes no codec wrote: CBOR "break" codes out of place.
        Corruption::Payload => Ok((payload_column, "0xffffffffffffffff")),
        // The metadata bytes stay, their serializer id goes.
        Corruption::Metadata => Ok(("meta_ser_id", "null")),
        // Cassandra checks every value against its column's type (tags are a
        // `list<text>`), so the damage is an empty tag, which every write refuses.
        Corruption::Tags => Ok(("tags", "tags + ['']")),
        Corruption::Column => Ok(("ser_manifest", "null")),
        other => Err(Error::unsupported(format!(
            "no damage of the Cassandra rows is defined for {other:?}"
        ))),
    }
}

impl Factory {
    /// Every row of a query without values, page by page.
    async fn scan<R>(&self, cql: String) -> Result<Vec<R>>
    where
        R: for<'f, 'm> persistence_cassandra::scylla::deserialize::row::DeserializeRow<'f, 'm>
            + Send
            + 'static,
    {
        self.base
            .session()
            .query_iter(cql, ())
            .await
            .map_err(storage)?
            .rows_stream::<R>()
            .map_err(storage)?
            .try_collect()
            .await
            .map_err(storage)
    }

    /// Runs one CQL statement with `values`.
    async fn run(
        &self,
        cql: String,
        values: impl persistence_cassandra::scylla::serialize::row::SerializeRow,
    ) -> Result<persistence_cassandra::scylla::response::query_result::QueryResult> {
        self.base
            .session()
            .query_unpaged(cql, values)
            .await
            .map_err(storage)
    }
}

#[persistence_api::async_trait]
impl persistence_tck::StoreFactory for Factory {
    async fn create(&self, namespace: &str) -> Result<Stores> {
        Ok(self.base.with_namespace(namespace)?.stores())
    }

    fn page_size(&self) -> Option<u32> {
        Some(self.page_size)
    }

    /// Deletes what the case stored with the driver's own purge (so every case also
    /// exercises it): every id the registry lists or the journal holds (a case may have
    /// dropped the registry).
    async fn cleanup(&self, namespace: &str) -> Result<()> {
        let backend = self.base.with_namespace(namespace)?;
        let maintenance = backend.maintenance();
        let mut ids: BTreeSet<PersistenceId> = backend
            .read_journal()
            .current_persistence_ids()
            .try_collect()
            .await?;
        ids.extend(
            maintenance
                .scan_persistence_ids()
                .try_collect::<Vec<_>>()
                .await?,
        );
        for id in &ids {
            maintenance.purge_persistence_id(id).await?;
        }
        Ok(())
    }

    /// Deletes the namespace's rows of `tag_views`, `tag_write_progress`, `tag_scanning`,
    /// `tag_buckets` and `all_persistence_ids` with raw CQL (the keyspace is shared by
    /// every case, so no TRUNCATE): each table is scanned for the keys of the namespace,
    /// and their partitions are deleted. `messages` and `metadata` stay.
    async fn drop_indexes(&self, namespace: &str) -> Result<()> {
        let config = self.base.config();
        let (ks, t) = (&config.keyspace, &config.tables);
        let prefix = stored_key(namespace, "");
        // tag_views: partitions of (tag, bucket).
        let partitions: Vec<(String, i64)> = self
            .scan(format!(
                "SELECT DISTINCT tag_name, timebucket FROM {ks}.{}",
                t.tag_views
            ))
            .await?;
        for (tag, bucket) in partitions {
            if tag.starts_with(&prefix) {
                self.run(
                    format!(
                        "DELETE FROM {ks}.{} WHERE tag_name = ? AND timebucket = ?",
                        t.tag_views
                    ),
                    (tag.as_str(), bucket),
                )
                .await?;
            }
        }
        // The tables keyed by one id or tag.
        for (table, column) in [
            (&t.tag_write_progress, "persistence_id"),
            (&t.tag_scanning, "persistence_id"),
            (&t.tag_buckets, "tag_name"),
            (&t.all_persistence_ids, "persistence_id"),
        ] {
            let keys: Vec<(String,)> = self
                .scan(format!("SELECT DISTINCT {column} FROM {ks}.{table}"))
                .await?;
            for (key,) in keys {
                if key.starts_with(&prefix) {
                    self.run(
                        format!("DELETE FROM {ks}.{table} WHERE {column} = ?"),
                        (key.as_str(),),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Damages the row of the event in `messages` and its copy in `tag_views` per tag.
    async fn corrupt_event(
        &self,
        namespace: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        let (column, value) = damage(what, "event")?;
        let config = self.base.config();
        let (ks, t) = (&config.keyspace, &config.tables);
        let pid = stored_key(namespace, persistence_id.as_str());
        let partition = ((sequence_nr - 1) / config.target_partition_size) as i64;
        let row = self
            .run(
                format!(
                    "SELECT timestamp, timebucket, tags, meta FROM {ks}.{} \
                     WHERE persistence_id = ? AND partition_nr = ? AND sequence_nr = ?",
                    t.messages
                ),
                (pid.as_str(), partition, sequence_nr as i64),
            )
            .await?
            .into_rows_result()
            .map_err(storage)?
            .maybe_first_row::<(
                Option<CqlTimeuuid>,
                Option<i64>,
                Option<Vec<String>>,
                Option<Vec<u8>>,
            )>()
            .map_err(storage)?;
        let Some((Some(timestamp), bucket, tags, meta)) = row else {
            return Err(Error::invalid_input(format!(
                "no stored event {persistence_id} {sequence_nr}"
            )));
        };
        if what == Corruption::Metadata && meta.is_none() {
            return Err(Error::invalid_input(format!(
                "the event {persistence_id} {sequence_nr} has no metadata to damage"
            )));
        }
        self.run(
            format!(
                "UPDATE {ks}.{} SET {column} = {value} WHERE persistence_id = ? \
                 AND partition_nr = ? AND sequence_nr = ? AND timestamp = ?",
                t.messages
            ),
            (pid.as_str(), partition, sequence_nr as i64, timestamp),
        )
        .await?;
        let tags = tags.unwrap_or_default();
        if tags.is_empty() {
            return Ok(column.to_owned());
        }
        let bucket = bucket.ok_or_else(|| {
            Error::invalid_input(format!(
                "the tagged event {persistence_id} {sequence_nr} has no timebucket"
            ))
        })?;
        for tag in tags {
            let tag_key = stored_key(namespace, &tag);
            let copies = self
                .run(
                    format!(
                        "SELECT tag_pid_sequence_nr FROM {ks}.{} WHERE tag_name = ? \
                         AND timebucket = ? AND timestamp = ? AND persistence_id = ?",
                        t.tag_views
                    ),
                    (tag_key.as_str(), bucket, timestamp, pid.as_str()),
                )
                .await?
                .into_rows_result()
                .map_err(storage)?
                .rows::<(i64,)>()
                .map_err(storage)?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(storage)?;
            if copies.is_empty() {
                return Err(Error::invalid_input(format!(
                    "the tag_views row of {persistence_id} {sequence_nr} under tag {tag:?} was not found"
                )));
            }
            for (tag_pid_seq,) in copies {
                self.run(
                    format!(
                        "UPDATE {ks}.{} SET {column} = {value} WHERE tag_name = ? \
                         AND timebucket = ? AND timestamp = ? AND persistence_id = ? \
                         AND tag_pid_sequence_nr = ?",
                        t.tag_views
                    ),
                    (
                        tag_key.as_str(),
                        bucket,
                        timestamp,
                        pid.as_str(),
                        tag_pid_seq,
                    ),
                )
                .await?;
            }
        }
        Ok(column.to_owned())
    }

    async fn corrupt_snapshot(
        &self,
        namespace: &str,
        persistence_id: &PersistenceId,
        sequence_nr: SequenceNr,
        what: Corruption,
    ) -> Result<String> {
        if what == Corruption::Tags {
            return Err(Error::unsupported("snapshots have no tags"));
        }
        let (column, value) = damage(what, "snapshot_data")?;
        let config = self.base.config();
        let pid = stored_key(namespace, persistence_id.as_str());
        // `IF EXISTS`, so a missing snapshot is not created by the update.
        let applied = self
            .run(
                format!(
                    "UPDATE {}.{} SET {column} = {value} WHERE persistence_id = ? \
                     AND sequence_nr = ? IF EXISTS",
                    config.keyspace, config.tables.snapshots
                ),
                (pid.as_str(), sequence_nr as i64),
            )
            .await?
            .into_rows_result()
            .map_err(storage)?
            .maybe_first_row::<(bool,)>()
            .map_err(storage)?
            .is_some_and(|(applied,)| applied);
        if !applied {
            return Err(Error::invalid_input(format!(
                "no stored snapshot {persistence_id} {sequence_nr}"
            )));
        }
        Ok(column.to_owned())
    }
}

/// The test configuration: the node from the environment, short delays so live queries
/// deliver within the kit's 2 s, and the development autocreate switches on.
pub(crate) fn config(contact_points: String, local_datacenter: Option<String>) -> CassandraConfig {
    CassandraConfig {
        contact_points: contact_points
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        local_datacenter,
        keyspace: "persistence_tck".into(),
        create_schema: true,
        consistency: ConsistencyLevel::Quorum,
        eventual_consistency_delay: Duration::from_millis(400),
        poll_interval: Duration::from_millis(200),
        // The production default: a tag write retried under load (the secure node in CI,
        // TLS and the whole suite on 2 cores) once left a reader's gap open for more than
        // 3 s, which failed `concurrency::reads_never_see_part_of_an_atomic_write`.
        gap_timeout: Duration::from_secs(10),
        ..CassandraConfig::default()
    }
}

fn main() -> ExitCode {
    let dc = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok();
    persistence_tck::run_main_server(
        "cassandra",
        "PERSISTENCE_CASSANDRA_CONTACT_POINTS",
        |contact_points| async move {
            let config = config(contact_points, dc);
            let page_size = config.page_size;
            let base = Cassandra::open(config).await?;
            Ok(Factory { base, page_size })
        },
    )
}

//! The shared core: one session, the prepared statements, [`Inner`] (what the journal,
//! snapshot store and read journal of one namespace share), the key mapping and the
//! helpers every store uses (executing statements, reading rows and LWT answers, the
//! highest-sequence-number walk).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use persistence_api::{Error, ErrorKind, PersistenceId, Result};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::CqlValue;

use crate::config::{CassandraConfig, ConsistencyLevel};
use crate::error::{connect_failed, connect_timed_out, unexpected, ResultExt};
use crate::schema::{self, EVENT_COLUMNS, NS_SEP, STATE_COLUMNS};
use crate::tags::TagSeqs;

/// Every prepared statement the driver uses.
pub(crate) struct Statements {
    pub insert_message: PreparedStatement,
    pub guard_below: PreparedStatement,
    pub guard_new: PreparedStatement,
    pub set_used: PreparedStatement,
    pub select_used: PreparedStatement,
    pub set_tag_pending: PreparedStatement,
    pub select_messages: PreparedStatement,
    pub select_message_tags: PreparedStatement,
    pub select_message_partitions: PreparedStatement,
    pub clear_tag_pending: PreparedStatement,
    pub delete_messages_to: PreparedStatement,
    pub delete_partition: PreparedStatement,
    pub select_deleted_to: PreparedStatement,
    pub insert_deleted_to: PreparedStatement,
    pub delete_metadata: PreparedStatement,
    pub select_all_metadata: PreparedStatement,
    pub insert_persistence_id: PreparedStatement,
    pub select_persistence_ids: PreparedStatement,
    pub delete_persistence_id: PreparedStatement,
    pub insert_tag_view: PreparedStatement,
    pub select_tag_views: PreparedStatement,
    pub delete_tag_view: PreparedStatement,
    pub select_tag_view_number: PreparedStatement,
    pub select_tag_view_keys: PreparedStatement,
    pub select_tag_view_partitions: PreparedStatement,
    pub delete_tag_view_partition: PreparedStatement,
    pub select_tag_progress_ids: PreparedStatement,
    pub select_tag_scanning_ids: PreparedStatement,
    pub select_tag_bucket_tags: PreparedStatement,
    pub delete_tag_buckets: PreparedStatement,
    pub select_tag_progress: PreparedStatement,
    pub insert_tag_progress: PreparedStatement,
    pub delete_tag_progress: PreparedStatement,
    pub insert_tag_scanning: PreparedStatement,
    pub delete_tag_scanning: PreparedStatement,
    pub select_tag_buckets: PreparedStatement,
    pub add_tag_bucket: PreparedStatement,
    pub insert_snapshot: PreparedStatement,
    pub select_snapshots: PreparedStatement,
    pub select_snapshot_timestamps: PreparedStatement,
    pub delete_snapshot: PreparedStatement,
    pub delete_all_snapshots: PreparedStatement,
    pub select_offset: PreparedStatement,
    pub insert_offset: PreparedStatement,
    pub update_offset: PreparedStatement,
    pub select_state_serial: PreparedStatement,
    pub select_state: PreparedStatement,
    pub insert_state: PreparedStatement,
    pub update_state: PreparedStatement,
    pub insert_deleted_state: PreparedStatement,
    pub update_deleted_state: PreparedStatement,
    pub insert_state_change: PreparedStatement,
    pub delete_state_change: PreparedStatement,
    pub select_state_changes: PreparedStatement,
    pub select_state_buckets: PreparedStatement,
    pub add_state_bucket: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, config: &CassandraConfig) -> Result<Statements> {
        let ks = &config.keyspace;
        let t = &config.tables;
        let m = format!("{ks}.{}", t.messages);
        let tv = format!("{ks}.{}", t.tag_views);
        let tp = format!("{ks}.{}", t.tag_write_progress);
        let ts = format!("{ks}.{}", t.tag_scanning);
        let tb = format!("{ks}.{}", t.tag_buckets);
        let md = format!("{ks}.{}", t.metadata);
        let ids = format!("{ks}.{}", t.all_persistence_ids);
        let sn = format!("{ks}.{}", t.snapshots);
        let po = format!("{ks}.{}", t.projection_offsets);
        let ds = format!("{ks}.{}", t.durable_state);
        let dsc = format!("{ks}.{}", t.durable_state_changes);
        let dsb = format!("{ks}.{}", t.durable_state_buckets);
        let (consistency, serial) = match config.consistency {
            ConsistencyLevel::Quorum => (Consistency::Quorum, SerialConsistency::Serial),
            ConsistencyLevel::LocalQuorum => {
                (Consistency::LocalQuorum, SerialConsistency::LocalSerial)
            }
            ConsistencyLevel::One => (Consistency::One, SerialConsistency::LocalSerial),
        };
        let page_size = i32::try_from(config.page_size).unwrap_or(i32::MAX);
        let prep = |cql: String| async move {
            let mut p = session.prepare(cql).await.op_outside_stores("prepare")?;
            p.set_consistency(consistency);
            p.set_serial_consistency(Some(serial));
            p.set_page_size(page_size);
            Ok::<_, Error>(p)
        };
        let idempotent = |mut p: PreparedStatement| {
            p.set_is_idempotent(true);
            p
        };
        let serial_read = |mut p: PreparedStatement| {
            p.set_consistency(match serial {
                SerialConsistency::Serial => Consistency::Serial,
                SerialConsistency::LocalSerial => Consistency::LocalSerial,
            });
            p
        };
        Ok(Statements {
            insert_message: idempotent(prep(format!(
                "INSERT INTO {m} (persistence_id, partition_nr, sequence_nr, timestamp, timebucket, writer_uuid, ser_id, ser_manifest, event_manifest, event, meta_ser_id, meta_ser_manifest, meta, tags, event_time) VALUES (:persistence_id, :partition_nr, :sequence_nr, :timestamp, :timebucket, :writer_uuid, :ser_id, :ser_manifest, :event_manifest, :event, :meta_ser_id, :meta_ser_manifest, :meta, :tags, :event_time)"
            )).await?),
            guard_below: prep(format!(
                "UPDATE {m} SET used = :used WHERE persistence_id = :persistence_id AND partition_nr = :partition_nr IF used < :lowest"
            )).await?,
            guard_new: prep(format!(
                "UPDATE {m} SET used = :used WHERE persistence_id = :persistence_id AND partition_nr = :partition_nr IF used = null"
            )).await?,
            set_used: prep(format!(
                "UPDATE {m} SET used = :used WHERE persistence_id = :persistence_id AND partition_nr = :partition_nr"
            )).await?,
            // A serial read: it completes a write whose Paxos round a crash left accepted
            // but not committed before answering, so the highest it reads is the one the
            // next conditional write will meet (a plain read answered 600 after a kill,
            // and the write at 601 then met 700: tests/server_crash.rs).
            select_used: idempotent(serial_read(prep(format!(
                "SELECT used, tag_pending FROM {m} WHERE persistence_id = ? AND partition_nr = ? LIMIT 1"
            )).await?)),
            set_tag_pending: prep(format!(
                "UPDATE {m} SET tag_pending = :pending WHERE persistence_id = :persistence_id AND partition_nr = :partition_nr"
            )).await?,
            select_messages: idempotent(prep(format!(
                "SELECT {EVENT_COLUMNS} FROM {m} WHERE persistence_id = ? AND partition_nr = ? AND sequence_nr >= ? AND sequence_nr <= ?"
            )).await?),
            select_message_tags: idempotent(prep(format!(
                "SELECT sequence_nr, timestamp, tags FROM {m} WHERE persistence_id = ? AND partition_nr = ?"
            )).await?),
            // Maintenance (`maintenance.rs`): every partition of `messages`, a token-range
            // scan of the whole table, paged.
            select_message_partitions: idempotent(prep(format!(
                "SELECT DISTINCT persistence_id, partition_nr, tag_pending FROM {m}"
            )).await?),
            clear_tag_pending: idempotent(prep(format!(
                "UPDATE {m} SET tag_pending = null WHERE persistence_id = ? AND partition_nr = ?"
            )).await?),
            delete_messages_to: idempotent(prep(format!(
                "DELETE FROM {m} WHERE persistence_id = ? AND partition_nr = ? AND sequence_nr <= ?"
            )).await?),
            delete_partition: idempotent(prep(format!(
                "DELETE FROM {m} WHERE persistence_id = ? AND partition_nr = ?"
            )).await?),
            select_deleted_to: idempotent(prep(format!(
                "SELECT deleted_to FROM {md} WHERE persistence_id = ?"
            )).await?),
            insert_deleted_to: idempotent(prep(format!(
                "INSERT INTO {md} (persistence_id, deleted_to) VALUES (?, ?)"
            )).await?),
            delete_metadata: idempotent(prep(format!(
                "DELETE FROM {md} WHERE persistence_id = ?"
            )).await?),
            select_all_metadata: idempotent(prep(format!(
                "SELECT persistence_id, deleted_to FROM {md}"
            )).await?),
            insert_persistence_id: idempotent(prep(format!(
                "INSERT INTO {ids} (persistence_id) VALUES (?)"
            )).await?),
            select_persistence_ids: idempotent(prep(format!(
                "SELECT persistence_id FROM {ids}"
            )).await?),
            delete_persistence_id: idempotent(prep(format!(
                "DELETE FROM {ids} WHERE persistence_id = ?"
            )).await?),
            insert_tag_view: idempotent(prep(format!(
                "INSERT INTO {tv} (tag_name, timebucket, timestamp, persistence_id, tag_pid_sequence_nr, sequence_nr, writer_uuid, ser_id, ser_manifest, event_manifest, event, meta_ser_id, meta_ser_manifest, meta, tags, event_time) VALUES (:tag_name, :timebucket, :timestamp, :persistence_id, :tag_pid_sequence_nr, :sequence_nr, :writer_uuid, :ser_id, :ser_manifest, :event_manifest, :event, :meta_ser_id, :meta_ser_manifest, :meta, :tags, :event_time)"
            )).await?),
            select_tag_views: idempotent(prep(format!(
                "SELECT persistence_id, tag_pid_sequence_nr, {EVENT_COLUMNS} FROM {tv} WHERE tag_name = ? AND timebucket = ? AND timestamp > ? AND timestamp <= ?"
            )).await?),
            delete_tag_view: idempotent(prep(format!(
                "DELETE FROM {tv} WHERE tag_name = ? AND timebucket = ? AND timestamp = ?"
            )).await?),
            select_tag_view_number: idempotent(prep(format!(
                "SELECT tag_pid_sequence_nr FROM {tv} WHERE tag_name = ? AND timebucket = ? AND timestamp = ? AND persistence_id = ?"
            )).await?),
            select_tag_view_keys: idempotent(prep(format!(
                "SELECT timestamp, persistence_id FROM {tv} WHERE tag_name = ? AND timebucket = ? AND timestamp > ? AND timestamp <= ?"
            )).await?),
            // `truncate_indexes`: the keys of the index tables, each a scan of the table.
            select_tag_view_partitions: idempotent(prep(format!(
                "SELECT DISTINCT tag_name, timebucket FROM {tv}"
            )).await?),
            delete_tag_view_partition: idempotent(prep(format!(
                "DELETE FROM {tv} WHERE tag_name = ? AND timebucket = ?"
            )).await?),
            select_tag_progress_ids: idempotent(prep(format!(
                "SELECT DISTINCT persistence_id FROM {tp}"
            )).await?),
            select_tag_scanning_ids: idempotent(prep(format!(
                "SELECT persistence_id FROM {ts}"
            )).await?),
            select_tag_bucket_tags: idempotent(prep(format!(
                "SELECT tag_name FROM {tb}"
            )).await?),
            delete_tag_buckets: idempotent(prep(format!(
                "DELETE FROM {tb} WHERE tag_name = ?"
            )).await?),
            select_tag_progress: idempotent(prep(format!(
                "SELECT tag, sequence_nr, tag_pid_sequence_nr, offset FROM {tp} WHERE persistence_id = ?"
            )).await?),
            insert_tag_progress: idempotent(prep(format!(
                "INSERT INTO {tp} (persistence_id, tag, sequence_nr, tag_pid_sequence_nr, offset) VALUES (?, ?, ?, ?, ?)"
            )).await?),
            delete_tag_progress: idempotent(prep(format!(
                "DELETE FROM {tp} WHERE persistence_id = ?"
            )).await?),
            insert_tag_scanning: idempotent(prep(format!(
                "INSERT INTO {ts} (persistence_id, sequence_nr) VALUES (?, ?)"
            )).await?),
            delete_tag_scanning: idempotent(prep(format!(
                "DELETE FROM {ts} WHERE persistence_id = ?"
            )).await?),
            select_tag_buckets: idempotent(prep(format!(
                "SELECT first_buckets FROM {tb} WHERE tag_name = ?"
            )).await?),
            add_tag_bucket: idempotent(prep(format!(
                "UPDATE {tb} SET first_buckets = first_buckets + ? WHERE tag_name = ?"
            )).await?),
            insert_snapshot: idempotent(prep(format!(
                "INSERT INTO {sn} (persistence_id, sequence_nr, timestamp, ser_id, ser_manifest, snapshot_data, meta_ser_id, meta_ser_manifest, meta) VALUES (:persistence_id, :sequence_nr, :timestamp, :ser_id, :ser_manifest, :snapshot_data, :meta_ser_id, :meta_ser_manifest, :meta)"
            )).await?),
            select_snapshots: idempotent(prep(format!(
                "SELECT sequence_nr, timestamp, ser_id, ser_manifest, snapshot_data, meta_ser_id, meta_ser_manifest, meta FROM {sn} WHERE persistence_id = ? AND sequence_nr <= ? AND sequence_nr >= ?"
            )).await?),
            select_snapshot_timestamps: idempotent(prep(format!(
                "SELECT sequence_nr, timestamp FROM {sn} WHERE persistence_id = ? AND sequence_nr <= ? AND sequence_nr >= ?"
            )).await?),
            delete_snapshot: idempotent(prep(format!(
                "DELETE FROM {sn} WHERE persistence_id = ? AND sequence_nr = ?"
            )).await?),
            delete_all_snapshots: idempotent(prep(format!(
                "DELETE FROM {sn} WHERE persistence_id = ?"
            )).await?),
            // Read at the serial level (SERIAL, or LOCAL_SERIAL with LOCAL_QUORUM or ONE):
            // a Paxos read that sees every answered lightweight transaction and completes one
            // a quorum accepted, so it never returns a version older than an answered
            // commit's (see `offsets.rs`).
            select_offset: idempotent({
                let mut p = prep(format!(
                    "SELECT offset, version FROM {po} WHERE projection_name = ? AND projection_key = ?"
                )).await?;
                p.set_consistency(match serial {
                    SerialConsistency::Serial => Consistency::Serial,
                    SerialConsistency::LocalSerial => Consistency::LocalSerial,
                });
                p
            }),
            // The two conditional writes (lightweight transactions, never retried by the
            // driver: not idempotent).
            insert_offset: prep(format!(
                "INSERT INTO {po} (projection_name, projection_key, offset, version, updated) VALUES (?, ?, ?, ?, toTimestamp(now())) IF NOT EXISTS"
            )).await?,
            update_offset: prep(format!(
                "UPDATE {po} SET offset = ?, version = ?, updated = toTimestamp(now()) WHERE projection_name = ? AND projection_key = ? IF version = ?"
            )).await?,
            // Durable state (see `durable_state.rs`): `get` reads at the serial level, as
            // offsets do; change queries read at `consistency` and fall back to the serial
            // read only for a change whose write they do not see yet.
            select_state_serial: idempotent(serial_read(prep(format!(
                "SELECT {STATE_COLUMNS} FROM {ds} WHERE persistence_id = ?"
            )).await?)),
            select_state: idempotent(prep(format!(
                "SELECT {STATE_COLUMNS} FROM {ds} WHERE persistence_id = ?"
            )).await?),
            // The four conditional writes (lightweight transactions: not idempotent).
            insert_state: prep(format!(
                "INSERT INTO {ds} (persistence_id, revision, ser_id, ser_manifest, state, deleted, tag, timestamp) VALUES (?, ?, ?, ?, ?, false, ?, ?) IF NOT EXISTS"
            )).await?,
            update_state: prep(format!(
                "UPDATE {ds} SET revision = ?, ser_id = ?, ser_manifest = ?, state = ?, deleted = false, tag = ?, timestamp = ? WHERE persistence_id = ? IF revision = ?"
            )).await?,
            insert_deleted_state: prep(format!(
                "INSERT INTO {ds} (persistence_id, revision, deleted, timestamp) VALUES (?, ?, true, ?) IF NOT EXISTS"
            )).await?,
            update_deleted_state: prep(format!(
                "UPDATE {ds} SET revision = :revision, ser_id = null, ser_manifest = null, state = null, deleted = true, timestamp = ? WHERE persistence_id = ? IF revision = ?"
            )).await?,
            insert_state_change: idempotent(prep(format!(
                "INSERT INTO {dsc} (tag, timebucket, timestamp, persistence_id, revision) VALUES (?, ?, ?, ?, ?)"
            )).await?),
            delete_state_change: idempotent(prep(format!(
                "DELETE FROM {dsc} WHERE tag = ? AND timebucket = ? AND timestamp = ? AND persistence_id = ?"
            )).await?),
            select_state_changes: idempotent(prep(format!(
                "SELECT timestamp, persistence_id, revision FROM {dsc} WHERE tag = ? AND timebucket = ? AND timestamp > ? AND timestamp <= ?"
            )).await?),
            select_state_buckets: idempotent(prep(format!(
                "SELECT first_buckets FROM {dsb} WHERE tag = ?"
            )).await?),
            add_state_bucket: idempotent(prep(format!(
                "UPDATE {dsb} SET first_buckets = first_buckets + ? WHERE tag = ?"
            )).await?),
        })
    }
}

/// What the journal, snapshot store and read journal of one namespace share.
pub(crate) struct Inner {
    pub session: Arc<Session>,
    pub stmts: Arc<Statements>,
    pub config: CassandraConfig,
    /// Ids this process knows to be in `all_persistence_ids`.
    pub known_ids: Mutex<HashSet<String>>,
    /// Per stored id: the tag numbers this journal continues from (see [`TagSeqs`] in
    /// `tags.rs`, which keeps the three tag caches).
    pub tag_seqs: Mutex<HashMap<String, TagSeqs>>,
    /// Ids whose last write here failed: the next write of the id (tagged or not) first
    /// repairs the tag rows that write may have left out and derives the numbers afresh.
    pub repair_due: Mutex<HashSet<String>>,
    /// Per stored tag: the earliest bucket known to be registered in `tag_buckets`.
    pub tag_first_bucket: Mutex<HashMap<String, i64>>,
    /// Per stored tag: the earliest bucket known to be registered in
    /// `durable_state_buckets`.
    pub state_first_bucket: Mutex<HashMap<String, i64>>,
}

/// What [`Inner::walk`] found.
pub(crate) struct Walk {
    pub highest: u64,
    pub deleted_to: u64,
    /// `(partition, first sequence number of its latest tagged write)`: where tag rows a
    /// failed write left out would be.
    pub pending: Vec<(i64, Vec<u64>)>,
}

/// Caches stay bounded: past this many entries they are cleared and refilled from the tables.
pub(crate) const CACHE_LIMIT: usize = 100_000;

impl Inner {
    pub fn new(session: Arc<Session>, stmts: Arc<Statements>, config: CassandraConfig) -> Self {
        Inner {
            session,
            stmts,
            config,
            known_ids: Mutex::new(HashSet::new()),
            tag_seqs: Mutex::new(HashMap::new()),
            repair_due: Mutex::new(HashSet::new()),
            tag_first_bucket: Mutex::new(HashMap::new()),
            state_first_bucket: Mutex::new(HashMap::new()),
        }
    }

    /// The stored form of a persistence id (namespace-prefixed when a namespace is set).
    pub fn pid_key(&self, id: &PersistenceId) -> String {
        self.key(id.as_str())
    }

    /// The stored form of a tag.
    pub fn tag_key(&self, tag: &str) -> String {
        self.key(tag)
    }

    /// The stored `projection_name` of a projection (namespace-prefixed when a namespace
    /// is set; a projection name holds no control character, so it cannot collide).
    pub fn projection_name_key(&self, name: &str) -> String {
        self.key(name)
    }

    fn key(&self, s: &str) -> String {
        if self.config.namespace.is_empty() {
            s.to_owned()
        } else {
            format!("{}{NS_SEP}{s}", self.config.namespace)
        }
    }

    /// The id or tag of a stored key, if the key belongs to this namespace.
    fn plain_of_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        if self.config.namespace.is_empty() {
            (!key.contains(NS_SEP)).then_some(key)
        } else {
            let rest = key.strip_prefix(self.config.namespace.as_str())?;
            rest.strip_prefix(NS_SEP)
        }
    }

    /// Whether a stored key (of an id or a tag) belongs to this namespace.
    pub fn owns_key(&self, key: &str) -> bool {
        self.plain_of_key(key).is_some()
    }

    /// The persistence id of a stored key, if it belongs to this namespace.
    pub fn pid_of_key(&self, key: &str) -> Option<Result<PersistenceId>> {
        let plain = self.plain_of_key(key)?;
        Some(PersistenceId::new(plain).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("stored persistence id {key:?} is invalid: {e}"),
            )
        }))
    }

    /// Inserts the stored key of an id into `all_persistence_ids` (an idempotent upsert)
    /// and remembers that it is there.
    pub async fn register_id(&self, step: &'static str, pid_key: &str) -> Result<()> {
        self.exec(step, &self.stmts.insert_persistence_id, (pid_key,))
            .await?;
        let mut ids = self.known_ids.lock().unwrap();
        if ids.len() >= CACHE_LIMIT {
            ids.clear();
        }
        ids.insert(pid_key.to_owned());
        Ok(())
    }

    pub fn partition_of(&self, sequence_nr: u64) -> i64 {
        (sequence_nr.saturating_sub(1) / self.config.target_partition_size) as i64
    }

    /// Executes `stmt` unpaged and maps the error.
    pub async fn exec(
        &self,
        step: &'static str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult> {
        self.session.execute_unpaged(stmt, values).await.op(step)
    }

    /// Executes `stmt` and collects every row (use only for bounded results) as typed rows.
    pub async fn fetch_all<R>(
        &self,
        step: &'static str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        let pager = self
            .session
            .execute_iter(stmt.clone(), values)
            .await
            .op(step)?;
        let mut stream = pager.rows_stream::<R>().map_err(|e| unexpected(step, e))?;
        let mut out = Vec::new();
        while let Some(row) = stream.next().await {
            out.push(row.op(step)?);
        }
        Ok(out)
    }

    /// The first row of an unpaged result, typed.
    pub fn first_row<R>(step: &'static str, result: QueryResult) -> Result<Option<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let rows = result.into_rows_result().map_err(|e| unexpected(step, e))?;
        let mut iter = rows.rows::<R>().map_err(|e| unexpected(step, e))?;
        match iter.next() {
            None => Ok(None),
            Some(r) => Ok(Some(r.map_err(|e| unexpected(step, e))?)),
        }
    }

    /// Reads an LWT answer: whether it applied, and the current `used` value if returned.
    pub fn lwt_outcome(step: &'static str, result: QueryResult) -> Result<(bool, Option<i64>)> {
        Self::lwt_outcome_of(step, result, "used")
    }

    /// Reads an LWT answer: whether it applied, and the current value of the `bigint`
    /// column `column` if the answer holds it (Cassandra returns the row's condition
    /// columns, or its whole row for `IF NOT EXISTS`, when the condition failed).
    pub fn lwt_outcome_of(
        step: &'static str,
        result: QueryResult,
        column: &str,
    ) -> Result<(bool, Option<i64>)> {
        let rows = result.into_rows_result().map_err(|e| unexpected(step, e))?;
        let specs: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        let mut iter = rows
            .rows::<scylla::value::Row>()
            .map_err(|e| unexpected(step, e))?;
        let Some(row) = iter.next() else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("cassandra {step}: a lightweight transaction answered no row"),
            ));
        };
        let row = row.map_err(|e| unexpected(step, e))?;
        let mut applied = None;
        let mut value = None;
        for (name, cell) in specs.iter().zip(row.columns) {
            match (name.as_str(), cell) {
                ("[applied]", Some(CqlValue::Boolean(b))) => applied = Some(b),
                (name, Some(CqlValue::BigInt(v))) if name == column => value = Some(v),
                _ => {}
            }
        }
        let applied = applied.ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!("cassandra {step}: a lightweight transaction answered without [applied]"),
            )
        })?;
        Ok((applied, value))
    }

    /// The stored `deleted_to` of an id (0 when none).
    pub async fn deleted_to(&self, pid_key: &str) -> Result<u64> {
        let result = self
            .exec("read_deleted_to", &self.stmts.select_deleted_to, (pid_key,))
            .await?;
        let row: Option<(Option<i64>,)> = Self::first_row("read_deleted_to", result)?;
        Ok(row.and_then(|r| r.0).unwrap_or(0).max(0) as u64)
    }

    /// The highest sequence number stored in partition `nr` (`None` when the partition was
    /// never written) and the first sequence number of its latest tagged write (if any).
    pub async fn partition_state(&self, pid_key: &str, nr: i64) -> Result<(Option<u64>, Vec<u64>)> {
        let result = self
            .exec("read_highest", &self.stmts.select_used, (pid_key, nr))
            .await?;
        let row: Option<(Option<i64>, Option<i64>)> = Self::first_row("read_highest", result)?;
        Ok(match row {
            None => (None, Vec::new()),
            Some((used, pending)) => (
                used.map(|u| u.max(0) as u64),
                pending.into_iter().map(|p| p.max(0) as u64).collect(),
            ),
        })
    }

    /// The highest sequence number stored in partition `nr`, `None` if never written.
    pub async fn partition_highest(&self, pid_key: &str, nr: i64) -> Result<Option<u64>> {
        Ok(self.partition_state(pid_key, nr).await?.0)
    }

    /// The highest sequence number of an id and its `deleted_to`.
    pub async fn highest_and_deleted_to(&self, pid_key: &str) -> Result<(u64, u64)> {
        let walk = self.walk(pid_key).await?;
        Ok((walk.highest, walk.deleted_to))
    }

    /// Walks the partitions of an id from the one holding `deleted_to` (one before it, in
    /// case a write spilled over the boundary) and stops at an empty partition that no
    /// earlier write can have skipped: after an empty partition `e` the walk goes on only
    /// while the highest seen reaches past `e`'s range (a write spilling over a boundary can
    /// leave a partition empty).
    pub async fn walk(&self, pid_key: &str) -> Result<Walk> {
        // Partition 0 is where almost every walk starts: read it beside `deleted_to`.
        let (deleted_to, first) =
            futures::try_join!(self.deleted_to(pid_key), self.partition_state(pid_key, 0))?;
        let size = self.config.target_partition_size;
        let mut nr = if deleted_to == 0 {
            0
        } else {
            (self.partition_of(deleted_to) - 1).max(0)
        };
        let mut first = (nr == 0).then_some(first);
        let mut walk = Walk {
            highest: deleted_to,
            deleted_to,
            pending: Vec::new(),
        };
        loop {
            let state = match first.take() {
                Some(state) => state,
                None => self.partition_state(pid_key, nr).await?,
            };
            match state {
                (Some(h), pending) => {
                    walk.highest = walk.highest.max(h);
                    if !pending.is_empty() {
                        walk.pending.push((nr, pending));
                    }
                }
                // A later partition holds events only if a write's first sequence number
                // lies in its range, so its predecessor (in an earlier partition) reached
                // past this empty one.
                (None, _) if walk.highest < (nr as u64 + 1).saturating_mul(size) => break,
                (None, _) => {}
            }
            nr += 1;
        }
        Ok(walk)
    }
}

/// Connects a session as the configuration says and, when switched on, creates the schema.
pub(crate) async fn connect(config: &CassandraConfig) -> Result<(Arc<Session>, Arc<Statements>)> {
    let session = session(config).await?;
    if config.create_schema {
        create_schema(&session, config).await?;
    }
    let stmts = Statements::prepare(&session, config).await?;
    Ok((Arc::new(session), Arc::new(stmts)))
}

/// A session as the configuration says (contact points, data centre, credentials, TLS,
/// timeouts), with nothing prepared: also for the schema tools, which must work while
/// tables are missing.
///
/// Never hangs: the driver bounds the TCP connect by `connect_timeout`, and the whole
/// opening (TLS and CQL handshakes, authentication, the first metadata read) is bounded by
/// `connect_timeout + request_timeout`.
pub(crate) async fn session(config: &CassandraConfig) -> Result<Session> {
    config.validate()?;
    let password = config.resolved_password()?;
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.local_datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(policy.build())
        .request_timeout(Some(config.request_timeout))
        .retry_policy(crate::retry::CountingRetryPolicy::shared())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .connection_timeout(config.connect_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(user) = &config.username {
        builder = builder.user(user.clone(), password.unwrap_or_default());
    }
    #[cfg(feature = "tls")]
    if config.tls {
        builder = builder.tls_context(Some(crate::tls::client_config(config).await?));
    }
    let bound = config.connect_timeout + config.request_timeout;
    match tokio::time::timeout(bound, builder.build()).await {
        Ok(result) => result.map_err(|e| connect_failed(config, e)),
        Err(_) => Err(connect_timed_out(config, bound)),
    }
}

/// Creates the keyspace (with `config.replication`) and the tables when missing: the
/// statements of [`crate::schema_cql`], each `IF NOT EXISTS`.
pub(crate) async fn create_schema(session: &Session, config: &CassandraConfig) -> Result<()> {
    tracing::info!(
        keyspace = %config.keyspace,
        "create_schema is on: creating the keyspace and tables if missing (with several processes starting at once on a new cluster, apply the schema by hand and set create_schema = false: concurrent schema changes can break Cassandra's schema agreement)"
    );
    session
        .query_unpaged(schema::create_keyspace(config), ())
        .await
        .op_outside_stores("create_keyspace")?;
    for cql in schema::create_tables(config) {
        session
            .query_unpaged(cql, ())
            .await
            .op_outside_stores("create_table")?;
    }
    Ok(())
}

/// The rows of a table partitioned by (tag, time bucket) and clustered by a time UUID (the
/// tag views, the durable-state change rows) with `lower < timestamp <= upper`, bucket
/// after bucket: `statement` selects one bucket's rows given (tag key, bucket, lower,
/// upper).
pub(crate) fn bucketed_rows<R>(
    inner: Arc<Inner>,
    statement: PreparedStatement,
    operation: &'static str,
    tag_key: String,
    lower: scylla::value::CqlTimeuuid,
    upper: scylla::value::CqlTimeuuid,
) -> impl futures::Stream<Item = Result<R>> + Send + 'static
where
    R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
{
    async_stream::try_stream! {
        let size = inner.config.tag_time_bucket;
        let mut bucket = size.bucket_of(crate::timeuuid::millis_of(lower.as_ref()));
        let last = size.bucket_of(crate::timeuuid::millis_of(upper.as_ref()));
        while bucket <= last {
            let pager = inner
                .session
                .execute_iter(statement.clone(), (tag_key.as_str(), bucket, lower, upper))
                .await
                .op(operation)?;
            let mut rows = pager
                .rows_stream::<R>()
                .map_err(|e| unexpected(operation, e))?;
            while let Some(row) = rows.next().await {
                yield row.op(operation)?;
            }
            bucket += size.millis();
        }
    }
}

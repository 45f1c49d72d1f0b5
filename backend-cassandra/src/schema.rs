//! The CQL schema: keyspace and tables (modelled on pekko-persistence-cassandra, plus the
//! projection offsets), the stored form of keys, and the row layouts the stores write and
//! read.
//!
//! Users create the tables before production ([`schema_cql`] prints them); the
//! `create_schema` switch runs them at start-up.

use persistence_api::{
    Payload, PersistenceId, PersistentEvent, Result, SelectedSnapshot, SnapshotMetadata, Timestamp,
};
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::serialize::SerializationError;
use scylla::value::{CqlTimeuuid, MaybeUnset};
use scylla::{DeserializeRow, SerializeRow};

use crate::config::CassandraConfig;
use crate::error::{corrupt, metadata, required};
use crate::timeuuid;

/// Separates the namespace from the id or tag in stored keys. A control character, which a
/// valid persistence id never contains, so namespaced keys cannot collide with plain ones.
pub(crate) const NS_SEP: char = '\u{1f}';

/// The columns read back for an event, from `messages` and from `tag_views` alike.
pub(crate) const EVENT_COLUMNS: &str = "sequence_nr, timestamp, writer_uuid, ser_id, ser_manifest, event_manifest, event, meta_ser_id, meta_ser_manifest, meta, tags, event_time";

/// The columns read back for a durable state.
pub(crate) const STATE_COLUMNS: &str =
    "revision, ser_id, ser_manifest, state, deleted, tag, timestamp";

/// The `CREATE KEYSPACE` statement (with the configured development replication).
pub fn create_keyspace(config: &CassandraConfig) -> String {
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
        config.keyspace,
        config.replication.to_cql()
    )
}

/// The `CREATE TABLE` statements, one per table, in the configured keyspace.
pub fn create_tables(config: &CassandraConfig) -> Vec<String> {
    let ks = &config.keyspace;
    let t = &config.tables;
    vec![
        // The journal. `used` (static) is the highest sequence number written to the
        // partition: the overwrite guard's compare-and-set target and the marker the
        // highest-sequence-number walk reads (it survives range deletes). `tag_pending`
        // (static) is the first sequence number of the partition's latest tagged write; it
        // commits with the events, so tag rows a crash left out are found and repaired.
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{messages} (
    persistence_id text,
    partition_nr bigint,
    sequence_nr bigint,
    timestamp timeuuid,
    timebucket bigint,
    writer_uuid text,
    ser_id text,
    ser_manifest text,
    event_manifest text,
    event blob,
    meta_ser_id text,
    meta_ser_manifest text,
    meta blob,
    tags list<text>,
    event_time bigint,
    used bigint static,
    tag_pending bigint static,
    PRIMARY KEY ((persistence_id, partition_nr), sequence_nr, timestamp))
    WITH gc_grace_seconds = 864000
    AND compaction = {{'class': 'SizeTieredCompactionStrategy'}}",
            messages = t.messages
        ),
        // Tagged events, a copy of the event per tag, in time order per (tag, time bucket).
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{tag_views} (
    tag_name text,
    timebucket bigint,
    timestamp timeuuid,
    persistence_id text,
    tag_pid_sequence_nr bigint,
    sequence_nr bigint,
    writer_uuid text,
    ser_id text,
    ser_manifest text,
    event_manifest text,
    event blob,
    meta_ser_id text,
    meta_ser_manifest text,
    meta blob,
    tags list<text>,
    event_time bigint,
    PRIMARY KEY ((tag_name, timebucket), timestamp, persistence_id, tag_pid_sequence_nr))
    WITH gc_grace_seconds = 864000
    AND compaction = {{'class': 'SizeTieredCompactionStrategy'}}",
            tag_views = t.tag_views
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{p} (
    persistence_id text,
    tag text,
    sequence_nr bigint,
    tag_pid_sequence_nr bigint,
    offset timeuuid,
    PRIMARY KEY (persistence_id, tag))",
            p = t.tag_write_progress
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{s} (
    persistence_id text,
    sequence_nr bigint,
    PRIMARY KEY (persistence_id))",
            s = t.tag_scanning
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{b} (
    tag_name text,
    first_buckets set<bigint>,
    PRIMARY KEY (tag_name))",
            b = t.tag_buckets
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{m} (
    persistence_id text PRIMARY KEY,
    deleted_to bigint,
    properties map<text, text>)",
            m = t.metadata
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{a} (
    persistence_id text PRIMARY KEY)",
            a = t.all_persistence_ids
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{s} (
    persistence_id text,
    sequence_nr bigint,
    timestamp bigint,
    ser_id text,
    ser_manifest text,
    snapshot_data blob,
    meta_ser_id text,
    meta_ser_manifest text,
    meta blob,
    PRIMARY KEY (persistence_id, sequence_nr))
    WITH CLUSTERING ORDER BY (sequence_nr DESC)
    AND gc_grace_seconds = 864000
    AND compaction = {{'class': 'SizeTieredCompactionStrategy'}}",
            s = t.snapshots
        ),
        // Projection offsets (see `offsets.rs`): one row per projection `(name, key)`,
        // written only by lightweight transactions on `version`. `offset` is the text form
        // of `Offset` (`none`, `sequence:<n>`, `timeuuid:<uuid>`, `token:<text>`).
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{o} (
    projection_name text,
    projection_key text,
    offset text,
    version bigint,
    updated timestamp,
    PRIMARY KEY ((projection_name, projection_key)))",
            o = t.projection_offsets
        ),
        // Durable state (see `durable_state.rs`): one row per id, written only by
        // lightweight transactions on `revision`. `timestamp` is the time-based UUID of the
        // write, the same as its row in `durable_state_changes` when it has a tag.
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{d} (
    persistence_id text,
    revision bigint,
    ser_id text,
    ser_manifest text,
    state blob,
    deleted boolean,
    tag text,
    timestamp timeuuid,
    PRIMARY KEY (persistence_id))",
            d = t.durable_state
        ),
        // One row per tagged upsert or delete, written before its lightweight transaction;
        // change queries deliver a row only while the state's `timestamp` is the row's.
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{c} (
    tag text,
    timebucket bigint,
    timestamp timeuuid,
    persistence_id text,
    revision bigint,
    PRIMARY KEY ((tag, timebucket), timestamp, persistence_id))
    WITH gc_grace_seconds = 864000
    AND compaction = {{'class': 'SizeTieredCompactionStrategy'}}",
            c = t.durable_state_changes
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{b} (
    tag text,
    first_buckets set<bigint>,
    PRIMARY KEY (tag))",
            b = t.durable_state_buckets
        ),
    ]
}

/// The whole schema as one CQL script (keyspace, then tables), for `cqlsh -f`.
///
/// ```
/// let cql = persistence_cassandra::schema_cql(&Default::default());
/// assert!(cql.contains("PRIMARY KEY ((persistence_id, partition_nr), sequence_nr, timestamp))"));
/// ```
pub fn schema_cql(config: &CassandraConfig) -> String {
    let mut out = create_keyspace(config);
    out.push_str(";\n\n");
    for t in create_tables(config) {
        out.push_str(&t);
        out.push_str(";\n\n");
    }
    out
}

// ---- Creating and checking the schema by hand -------------------------------------------

/// Connects to the cluster of `config` and creates the keyspace and tables when missing
/// (the statements of [`schema_cql`], each `IF NOT EXISTS`), whatever `create_schema`
/// says: for deployments that create the schema in a separate step.
pub async fn create_schema(config: &CassandraConfig) -> Result<()> {
    let session = crate::core::session(config).await?;
    crate::core::create_schema(&session, config).await
}

/// One way the keyspace differs from what [`create_schema`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaDifference {
    /// What differs: `keyspace "k"`, `table "k"."messages"`, `column "k"."messages"."tags"`.
    pub object: String,
    /// What [`create_tables`] creates.
    pub expected: String,
    /// What `system_schema` describes; `None` when the object is missing.
    pub found: Option<String>,
}

impl std::fmt::Display for SchemaDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.found {
            None => write!(f, "missing {} (expected {})", self.object, self.expected),
            Some(found) => write!(
                f,
                "different {}: expected {}, found {}",
                self.object, self.expected, found
            ),
        }
    }
}

/// A column as `system_schema.columns` describes it: type, kind (`partition_key`,
/// `clustering`, `regular`, `static`), position in its key (-1 outside keys) and
/// clustering order (`asc`, `desc`, `none`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ColumnSpec {
    kind: String,
    position: i32,
    cql_type: String,
    order: String,
}

impl std::fmt::Display for ColumnSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.cql_type, self.kind)?;
        if self.position >= 0 {
            write!(f, " #{}", self.position)?;
        }
        if self.order != "none" {
            write!(f, " {}", self.order)?;
        }
        Ok(())
    }
}

/// The tables and columns of [`create_tables`], read back from its own statements (so the
/// check cannot drift from what is created): table name, then each column with its type,
/// kind and key position.
fn expected_tables(config: &CassandraConfig) -> Vec<(String, Vec<(String, ColumnSpec)>)> {
    create_tables(config)
        .iter()
        .map(|cql| parse_create_table(cql))
        .collect()
}

/// Parses one statement of [`create_tables`] (their layout only: one column per line, the
/// key on a `PRIMARY KEY` line or after the only key column).
fn parse_create_table(cql: &str) -> (String, Vec<(String, ColumnSpec)>) {
    let mut lines = cql.lines();
    let header = lines.next().unwrap_or_default();
    let name = header
        .rsplit_once('.')
        .map(|(_, t)| t.trim_end_matches('(').trim())
        .unwrap_or_default()
        .to_string();
    let mut columns: Vec<(String, ColumnSpec)> = Vec::new();
    let mut partition: Vec<String> = Vec::new();
    let mut clustering: Vec<String> = Vec::new();
    let mut descending: Vec<String> = Vec::new();
    for line in lines {
        let line = line.trim();
        if let Some(key) = line.strip_prefix("PRIMARY KEY (") {
            // `(a, b), c, d))`, `a, b))` or `(a, b)))`: up to the parenthesis that closes it.
            let mut depth = 1;
            let end = key
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(key.len());
            let key = &key[..end];
            let (part, rest) = match key.strip_prefix('(') {
                Some(k) => k.split_once(')').unwrap_or((k, "")),
                None => key.split_once(',').unwrap_or((key, "")),
            };
            partition = part.split(',').map(|c| c.trim().to_string()).collect();
            clustering = rest
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect();
        } else if line.starts_with("WITH") || line.starts_with("AND") {
            if let Some(order) = line.split("CLUSTERING ORDER BY (").nth(1) {
                for part in order.split(')').next().unwrap_or_default().split(',') {
                    if let Some(c) = part.trim().strip_suffix(" DESC") {
                        descending.push(c.trim().to_string());
                    }
                }
            }
        } else {
            let line = line
                .strip_suffix(',')
                .or_else(|| line.strip_suffix(')'))
                .unwrap_or(line);
            let (line, only_key) = match line.strip_suffix(" PRIMARY KEY") {
                Some(l) => (l, true),
                None => (line, false),
            };
            let (line, is_static) = match line.strip_suffix(" static") {
                Some(l) => (l, true),
                None => (line, false),
            };
            let Some((column, cql_type)) = line.split_once(' ') else {
                continue;
            };
            if only_key {
                partition = vec![column.to_string()];
            }
            let kind = if is_static { "static" } else { "regular" };
            columns.push((
                column.to_string(),
                ColumnSpec {
                    kind: kind.to_string(),
                    position: -1,
                    cql_type: cql_type.trim().to_lowercase(),
                    order: "none".to_string(),
                },
            ));
        }
    }
    for (column, spec) in &mut columns {
        if let Some(i) = partition.iter().position(|c| c == column) {
            spec.kind = "partition_key".to_string();
            spec.position = i as i32;
        } else if let Some(i) = clustering.iter().position(|c| c == column) {
            spec.kind = "clustering".to_string();
            spec.position = i as i32;
            spec.order = if descending.contains(column) {
                "desc"
            } else {
                "asc"
            }
            .to_string();
        }
    }
    (name, columns)
}

/// Compares the keyspace of `config` with what [`create_schema`] makes, through
/// `system_schema.keyspaces`, `tables` and `columns`: a missing keyspace or table, missing
/// columns, and columns whose type, kind (partition key, clustering, static, regular), key
/// position or clustering order differ. The configured table names are used. An empty list
/// means the schema is complete. Tables and columns beyond these are not differences.
pub async fn check_schema(config: &CassandraConfig) -> Result<Vec<SchemaDifference>> {
    use crate::error::{unexpected, ResultExt};
    let session = crate::core::session(config).await?;
    let ks = config.keyspace.as_str();
    let expected = expected_tables(config);
    let rows = |r: scylla::response::query_result::QueryResult| {
        r.into_rows_result()
            .map_err(|e| unexpected("check_schema", e))
    };
    let keyspaces = rows(
        session
            .query_unpaged(
                "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
                (ks,),
            )
            .await
            .op_outside_stores("check_schema")?,
    )?;
    if keyspaces.rows_num() == 0 {
        return Ok(vec![SchemaDifference {
            object: format!("keyspace {ks:?}"),
            expected: format!("{} tables", expected.len()),
            found: None,
        }]);
    }
    let result = rows(
        session
            .query_unpaged(
                "SELECT table_name, column_name, kind, position, type, clustering_order \
                 FROM system_schema.columns WHERE keyspace_name = ?",
                (ks,),
            )
            .await
            .op_outside_stores("check_schema")?,
    )?;
    let mut found: std::collections::HashMap<String, Vec<(String, ColumnSpec)>> =
        std::collections::HashMap::new();
    for row in result
        .rows::<(String, String, String, i32, String, String)>()
        .map_err(|e| unexpected("check_schema", e))?
    {
        let (table, column, kind, position, cql_type, order) =
            row.map_err(|e| unexpected("check_schema", e))?;
        found.entry(table).or_default().push((
            column,
            ColumnSpec {
                kind,
                position,
                cql_type,
                order,
            },
        ));
    }
    let mut out = Vec::new();
    for (table, columns) in expected {
        let Some(have) = found.get(&table) else {
            let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
            out.push(SchemaDifference {
                object: format!("table {ks:?}.{table:?}"),
                expected: format!("columns {}", names.join(", ")),
                found: None,
            });
            continue;
        };
        for (column, spec) in columns {
            let object = format!("column {ks:?}.{table:?}.{column:?}");
            match have.iter().find(|(c, _)| *c == column) {
                None => out.push(SchemaDifference {
                    object,
                    expected: spec.to_string(),
                    found: None,
                }),
                Some((_, s)) if *s != spec => out.push(SchemaDifference {
                    object,
                    expected: spec.to_string(),
                    found: Some(s.to_string()),
                }),
                Some(_) => {}
            }
        }
    }
    Ok(out)
}

// ---- Row layouts -------------------------------------------------------------------------

/// Absent optional columns are left unset, not bound to null: an event row is written once,
/// and a null would store a tombstone per column and event.
pub(crate) fn unset_none<T>(v: Option<T>) -> MaybeUnset<T> {
    v.map_or(MaybeUnset::Unset, MaybeUnset::Set)
}

/// An event row of `messages`, as written.
#[derive(SerializeRow)]
pub(crate) struct MessageRow<'a> {
    pub persistence_id: &'a str,
    pub partition_nr: i64,
    pub sequence_nr: i64,
    pub timestamp: CqlTimeuuid,
    pub timebucket: i64,
    pub writer_uuid: &'a str,
    pub ser_id: &'a str,
    pub ser_manifest: &'a str,
    pub event_manifest: &'a str,
    pub event: &'a [u8],
    pub meta_ser_id: MaybeUnset<&'a str>,
    pub meta_ser_manifest: MaybeUnset<&'a str>,
    pub meta: MaybeUnset<&'a [u8]>,
    pub tags: MaybeUnset<&'a [String]>,
    pub event_time: i64,
}

/// The overwrite guard of a partition already written: `used` set `IF used < lowest`.
#[derive(SerializeRow)]
pub(crate) struct GuardRow<'a> {
    pub used: i64,
    pub persistence_id: &'a str,
    pub partition_nr: i64,
    pub lowest: i64,
}

/// The static `used` of a partition (its first guarded write, or an unguarded write).
#[derive(SerializeRow)]
pub(crate) struct UsedRow<'a> {
    pub used: i64,
    pub persistence_id: &'a str,
    pub partition_nr: i64,
}

/// A copy of a tagged event in `tag_views`, as written.
#[derive(SerializeRow)]
pub(crate) struct TagViewRow<'a> {
    pub tag_name: &'a str,
    pub timebucket: i64,
    pub timestamp: CqlTimeuuid,
    pub persistence_id: &'a str,
    pub tag_pid_sequence_nr: i64,
    pub sequence_nr: i64,
    pub writer_uuid: &'a str,
    pub ser_id: &'a str,
    pub ser_manifest: &'a str,
    pub event_manifest: &'a str,
    pub event: &'a [u8],
    pub meta_ser_id: MaybeUnset<&'a str>,
    pub meta_ser_manifest: MaybeUnset<&'a str>,
    pub meta: MaybeUnset<&'a [u8]>,
    pub tags: MaybeUnset<&'a [String]>,
    pub event_time: i64,
}

/// The static `tag_pending` of a partition: the first sequence number of its latest tagged
/// write (see `tags.rs`).
#[derive(SerializeRow)]
pub(crate) struct PendingRow<'a> {
    pub pending: i64,
    pub persistence_id: &'a str,
    pub partition_nr: i64,
}

/// One statement's values in a batch whose statements differ.
pub(crate) enum BatchRow<'a> {
    Guard(GuardRow<'a>),
    Used(UsedRow<'a>),
    Pending(PendingRow<'a>),
    Message(MessageRow<'a>),
}

impl SerializeRow for BatchRow<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> std::result::Result<(), SerializationError> {
        match self {
            BatchRow::Guard(r) => r.serialize(ctx, writer),
            BatchRow::Used(r) => r.serialize(ctx, writer),
            BatchRow::Pending(r) => r.serialize(ctx, writer),
            BatchRow::Message(r) => r.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// An event as read back from `messages` or `tag_views`.
#[derive(DeserializeRow)]
pub(crate) struct EventRow {
    pub sequence_nr: Option<i64>,
    pub timestamp: Option<CqlTimeuuid>,
    pub writer_uuid: Option<String>,
    pub ser_id: Option<String>,
    pub ser_manifest: Option<String>,
    pub event_manifest: Option<String>,
    pub event: Option<Vec<u8>>,
    pub meta_ser_id: Option<String>,
    pub meta_ser_manifest: Option<String>,
    pub meta: Option<Vec<u8>>,
    pub tags: Option<Vec<String>>,
    pub event_time: Option<i64>,
}

impl EventRow {
    /// The event of `persistence_id` this row holds. A column the driver always writes that
    /// is NULL, a negative sequence number or metadata set in part is
    /// [`persistence_api::ErrorKind::Corrupt`] naming the event and the column.
    pub fn into_event(self, persistence_id: PersistenceId) -> Result<PersistentEvent> {
        let id = &persistence_id;
        // Without a sequence number the error names the id only.
        let seq = match self.sequence_nr {
            Some(seq) if seq >= 0 => seq as u64,
            other => {
                let detail = match other {
                    Some(seq) => format!("{seq} is negative"),
                    None => "is NULL, but the driver always writes it".to_owned(),
                };
                return Err(persistence_api::Error::corrupt("sequence_nr", detail)
                    .with_persistence_id(id.as_str()));
            }
        };
        let metadata = metadata(
            (self.meta_ser_id, self.meta_ser_manifest, self.meta),
            id,
            seq,
        )?;
        let payload = Payload::new(
            required(self.ser_id, id, seq, "ser_id")?,
            required(self.ser_manifest, id, seq, "ser_manifest")?,
            required(self.event, id, seq, "event")?,
        );
        let event_manifest = required(self.event_manifest, id, seq, "event_manifest")?;
        // An empty list is stored as NULL; an empty tag is refused on every write.
        let tags = self.tags.unwrap_or_default();
        if let Some(i) = tags.iter().position(|t| t.is_empty()) {
            return Err(corrupt(
                id,
                seq,
                "tags",
                format!("tag {i} is empty, and an empty tag is refused on every write"),
            ));
        }
        let writer_id = required(self.writer_uuid, id, seq, "writer_uuid")?;
        let timestamp = Timestamp::from_millis(self.event_time.unwrap_or_else(|| {
            self.timestamp
                .map(|t| timeuuid::millis_of(t.as_ref()))
                .unwrap_or(0)
        }));
        Ok(PersistentEvent {
            persistence_id,
            sequence_nr: seq,
            payload,
            event_manifest,
            writer_id,
            timestamp,
            tags,
            metadata,
        })
    }
}

/// One row of `tag_views` as read back: the tag numbering columns and the event.
#[derive(DeserializeRow)]
pub(crate) struct TagRow {
    pub persistence_id: String,
    pub tag_pid_sequence_nr: i64,
    pub sequence_nr: Option<i64>,
    pub timestamp: Option<CqlTimeuuid>,
    pub writer_uuid: Option<String>,
    pub ser_id: Option<String>,
    pub ser_manifest: Option<String>,
    pub event_manifest: Option<String>,
    pub event: Option<Vec<u8>>,
    pub meta_ser_id: Option<String>,
    pub meta_ser_manifest: Option<String>,
    pub meta: Option<Vec<u8>>,
    pub tags: Option<Vec<String>>,
    pub event_time: Option<i64>,
}

impl TagRow {
    /// The row's time-based UUID (nil when NULL).
    pub fn timestamp(&self) -> CqlTimeuuid {
        self.timestamp.unwrap_or_else(CqlTimeuuid::nil)
    }

    /// The event columns of the row.
    pub fn into_event_row(self) -> EventRow {
        EventRow {
            sequence_nr: self.sequence_nr,
            timestamp: self.timestamp,
            writer_uuid: self.writer_uuid,
            ser_id: self.ser_id,
            ser_manifest: self.ser_manifest,
            event_manifest: self.event_manifest,
            event: self.event,
            meta_ser_id: self.meta_ser_id,
            meta_ser_manifest: self.meta_ser_manifest,
            meta: self.meta,
            tags: self.tags,
            event_time: self.event_time,
        }
    }
}

/// One row of `tag_write_progress`: the last tag row written for one `(id, tag)`.
#[derive(DeserializeRow)]
pub(crate) struct TagProgressRow {
    pub tag: String,
    pub sequence_nr: Option<i64>,
    pub tag_pid_sequence_nr: Option<i64>,
    pub offset: Option<CqlTimeuuid>,
}

/// A snapshot row, as written.
#[derive(SerializeRow)]
pub(crate) struct SnapshotRow<'a> {
    pub persistence_id: &'a str,
    pub sequence_nr: i64,
    pub timestamp: i64,
    pub ser_id: &'a str,
    pub ser_manifest: &'a str,
    pub snapshot_data: &'a [u8],
    pub meta_ser_id: Option<&'a str>,
    pub meta_ser_manifest: Option<&'a str>,
    pub meta: Option<&'a [u8]>,
}

/// A snapshot row, as read back.
#[derive(DeserializeRow)]
pub(crate) struct LoadedSnapshotRow {
    pub sequence_nr: i64,
    pub timestamp: Option<i64>,
    pub ser_id: Option<String>,
    pub ser_manifest: Option<String>,
    pub snapshot_data: Option<Vec<u8>>,
    pub meta_ser_id: Option<String>,
    pub meta_ser_manifest: Option<String>,
    pub meta: Option<Vec<u8>>,
}

impl LoadedSnapshotRow {
    /// The snapshot of `persistence_id` this row holds. A negative sequence number, a
    /// column the driver always writes that is NULL, or metadata set in part is
    /// [`persistence_api::ErrorKind::Corrupt`] naming the snapshot and the column.
    pub fn into_snapshot(self, persistence_id: &PersistenceId) -> Result<SelectedSnapshot> {
        let seq = u64::try_from(self.sequence_nr).map_err(|_| {
            persistence_api::Error::corrupt(
                "sequence_nr",
                format!("{} is negative", self.sequence_nr),
            )
            .with_persistence_id(persistence_id.as_str())
        })?;
        let metadata = metadata(
            (self.meta_ser_id, self.meta_ser_manifest, self.meta),
            persistence_id,
            seq,
        )?;
        Ok(SelectedSnapshot {
            metadata: SnapshotMetadata {
                persistence_id: persistence_id.clone(),
                sequence_nr: seq,
                timestamp: Timestamp::from_millis(self.timestamp.unwrap_or(0)),
                metadata,
            },
            snapshot: Payload::new(
                required(self.ser_id, persistence_id, seq, "ser_id")?,
                required(self.ser_manifest, persistence_id, seq, "ser_manifest")?,
                required(self.snapshot_data, persistence_id, seq, "snapshot_data")?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn readme_shows_the_schema() {
        let cql = super::schema_cql(&Default::default());
        assert!(
            include_str!("../README.md").contains(cql.trim_end()),
            "README.md must show schema_cql() of the default configuration verbatim:\n{cql}"
        );
    }
}

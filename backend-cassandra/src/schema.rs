//! The CQL schema: keyspace and tables, modelled on pekko-persistence-cassandra.
//!
//! Users create these before production ([`schema_cql`] prints them); the
//! `create_schema` switch runs them at start-up.

use crate::config::CassandraConfig;

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

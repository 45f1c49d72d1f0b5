-- backend-sql, PostgreSQL, migration 3: the durable-state table.
-- Names in braces are replaced by quoted, schema-qualified names (schema and table_prefix).

-- One row per persistence id: its latest state. `revision` is 1 at the first upsert and
-- one more per upsert or delete (writes are conditional on it); a delete leaves the row
-- with NULL in the three payload columns (and keeps its tag). `ordering` is the change
-- query's offset: every write moves the row to a new, higher value of the sequence,
-- taken under the tag's advisory lock so the orderings of one tag commit in order.
CREATE TABLE IF NOT EXISTS {durable_state} (
    persistence_id  TEXT   NOT NULL PRIMARY KEY,
    revision        BIGINT NOT NULL,
    ser_id          TEXT,
    ser_manifest    TEXT,
    payload         BYTEA,
    tag             TEXT,
    write_timestamp BIGINT NOT NULL,
    ordering        BIGINT NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS {durable_state_ordering_seq};
CREATE INDEX IF NOT EXISTS {durable_state_tag_idx} ON {durable_state} (tag, ordering);

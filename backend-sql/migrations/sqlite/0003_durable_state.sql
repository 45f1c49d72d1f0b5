-- backend-sql, SQLite, migration 3: the durable-state table.
-- Names in braces are replaced by quoted names (with table_prefix).

-- One row per persistence id: its latest state. `revision` is 1 at the first upsert and
-- one more per upsert or delete (writes are conditional on it); a delete leaves the row
-- with NULL in the three payload columns (and keeps its tag). `ordering` is the change
-- query's offset: every write moves the row to the highest ordering plus one, taken
-- inside the write lock (one writer at a time), so orderings commit in order.
CREATE TABLE IF NOT EXISTS {durable_state} (
    persistence_id  TEXT    NOT NULL PRIMARY KEY,
    revision        INTEGER NOT NULL,
    ser_id          TEXT,
    ser_manifest    TEXT,
    payload         BLOB,
    tag             TEXT,
    write_timestamp INTEGER NOT NULL,
    ordering        INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS {durable_state_ordering_idx} ON {durable_state} (ordering);
CREATE INDEX IF NOT EXISTS {durable_state_tag_idx} ON {durable_state} (tag, ordering);

-- backend-sql, SQLite, migration 1: the journal, tag, id and snapshot tables.
-- Names in braces are replaced by quoted names (with table_prefix).

-- One row per event. `ordering` is the global position used as the offset of
-- events-by-tag queries. AUTOINCREMENT: a rowid is never reused, not even after the
-- newest events were deleted, so an offset never points at two events.
CREATE TABLE IF NOT EXISTS {event_journal} (
    ordering          INTEGER PRIMARY KEY AUTOINCREMENT,
    persistence_id    TEXT    NOT NULL,
    sequence_nr       INTEGER NOT NULL,
    writer_id         TEXT    NOT NULL,
    write_timestamp   INTEGER NOT NULL,
    event_manifest    TEXT    NOT NULL,
    ser_id            TEXT    NOT NULL,
    ser_manifest      TEXT    NOT NULL,
    payload           BLOB    NOT NULL,
    meta_ser_id       TEXT,
    meta_ser_manifest TEXT,
    meta_payload      BLOB,
    tags              TEXT    NOT NULL DEFAULT '[]',
    UNIQUE (persistence_id, sequence_nr)
);

-- One row per (tag, event): events-by-tag queries page through (tag, ordering).
CREATE TABLE IF NOT EXISTS {event_tag} (
    tag            TEXT    NOT NULL,
    ordering       INTEGER NOT NULL,
    persistence_id TEXT    NOT NULL,
    sequence_nr    INTEGER NOT NULL,
    PRIMARY KEY (tag, ordering)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {event_tag_event_idx} ON {event_tag} (persistence_id, sequence_nr);

-- One row per persistence id: the highest sequence number ever written (it survives
-- deleting every event), the delete low-water mark, and the position of the id in the
-- persistence-ids queries.
CREATE TABLE IF NOT EXISTS {journal_ids} (
    id_ordering         INTEGER PRIMARY KEY AUTOINCREMENT,
    persistence_id      TEXT    NOT NULL UNIQUE,
    highest_sequence_nr INTEGER NOT NULL,
    deleted_to          INTEGER NOT NULL DEFAULT 0
);

-- One row per snapshot; saving again at the same sequence number replaces it.
CREATE TABLE IF NOT EXISTS {snapshot} (
    persistence_id    TEXT    NOT NULL,
    sequence_nr       INTEGER NOT NULL,
    created           INTEGER NOT NULL,
    ser_id            TEXT    NOT NULL,
    ser_manifest      TEXT    NOT NULL,
    payload           BLOB    NOT NULL,
    meta_ser_id       TEXT,
    meta_ser_manifest TEXT,
    meta_payload      BLOB,
    PRIMARY KEY (persistence_id, sequence_nr)
);

-- backend-sql, PostgreSQL, migration 1: the journal, tag, id and snapshot tables.
-- Names in braces are replaced by quoted, schema-qualified names (schema and table_prefix).
CREATE SCHEMA IF NOT EXISTS {schema};

-- One row per event. `ordering` is the global position used as the offset of
-- events-by-tag queries; (persistence_id, sequence_nr) is the key, so a taken sequence
-- number is a primary-key violation.
CREATE TABLE IF NOT EXISTS {event_journal} (
    ordering          BIGSERIAL NOT NULL,
    persistence_id    TEXT      NOT NULL,
    sequence_nr       BIGINT    NOT NULL,
    writer_id         TEXT      NOT NULL,
    write_timestamp   BIGINT    NOT NULL,
    event_manifest    TEXT      NOT NULL,
    ser_id            TEXT      NOT NULL,
    ser_manifest      TEXT      NOT NULL,
    payload           BYTEA     NOT NULL,
    meta_ser_id       TEXT,
    meta_ser_manifest TEXT,
    meta_payload      BYTEA,
    tags              TEXT      NOT NULL DEFAULT '[]',
    PRIMARY KEY (persistence_id, sequence_nr)
);
CREATE UNIQUE INDEX IF NOT EXISTS {event_journal_ordering_idx} ON {event_journal} (ordering);

-- One row per (tag, event): events-by-tag queries page through (tag, ordering).
CREATE TABLE IF NOT EXISTS {event_tag} (
    tag            TEXT   NOT NULL,
    ordering       BIGINT NOT NULL,
    persistence_id TEXT   NOT NULL,
    sequence_nr    BIGINT NOT NULL,
    PRIMARY KEY (tag, ordering)
);
CREATE INDEX IF NOT EXISTS {event_tag_event_idx} ON {event_tag} (persistence_id, sequence_nr);

-- One row per persistence id: the highest sequence number ever written (it survives
-- deleting every event), the delete low-water mark, and the position of the id in the
-- persistence-ids queries.
CREATE TABLE IF NOT EXISTS {journal_ids} (
    persistence_id      TEXT   NOT NULL PRIMARY KEY,
    highest_sequence_nr BIGINT NOT NULL,
    deleted_to          BIGINT NOT NULL DEFAULT 0,
    id_ordering         BIGINT
);
CREATE SEQUENCE IF NOT EXISTS {journal_ids_ordering_seq};
CREATE UNIQUE INDEX IF NOT EXISTS {journal_ids_ordering_idx} ON {journal_ids} (id_ordering);

-- One row per snapshot; saving again at the same sequence number replaces it.
CREATE TABLE IF NOT EXISTS {snapshot} (
    persistence_id    TEXT   NOT NULL,
    sequence_nr       BIGINT NOT NULL,
    created           BIGINT NOT NULL,
    ser_id            TEXT   NOT NULL,
    ser_manifest      TEXT   NOT NULL,
    payload           BYTEA  NOT NULL,
    meta_ser_id       TEXT,
    meta_ser_manifest TEXT,
    meta_payload      BYTEA,
    PRIMARY KEY (persistence_id, sequence_nr)
);

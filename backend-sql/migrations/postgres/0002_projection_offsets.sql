-- backend-sql, PostgreSQL, migration 2: the projection offset table.
-- Names in braces are replaced by quoted, schema-qualified names (schema and table_prefix).

-- One row per projection (name, key): the offset of the last envelope it committed, in
-- `Offset`'s text form (`none`, `sequence:<n>`, `timeuuid:<uuid>`, `token:<text>`), and
-- the version every commit, set and clear moves on by one (commits are conditional on it).
CREATE TABLE IF NOT EXISTS {projection_offsets} (
    projection_name TEXT   NOT NULL,
    projection_key  TEXT   NOT NULL,
    current_offset  TEXT   NOT NULL,
    version         BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (projection_name, projection_key)
);

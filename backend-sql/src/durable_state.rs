//! The durable-state store: one row per persistence id in the `durable_state` table, its
//! latest state, written on condition of its revision; and the change queries over it.
//!
//! The reads, the revision check and the change queries are the same for both databases
//! ([`StateRows`], implemented once for [`SqlStore`]); the write statements differ in how
//! they take a change ordering ([`StateSql::postgres`], [`StateSql::sqlite`]).
//!
//! # The conditional write
//! - Revision 1: `INSERT ... ON CONFLICT (persistence_id) DO NOTHING RETURNING revision`;
//!   a row that exists (also a deleted one) means nothing is inserted.
//! - Revision n > 1: `UPDATE ... WHERE persistence_id = ? AND revision = n - 1 RETURNING
//!   revision`. A delete is the same update setting the three payload columns to NULL and
//!   keeping the tag; a delete at revision 1 inserts a deleted row.
//!
//! No row back: the stored revision is read for [`revision_conflict`]. If it is n - 1 after
//! all (the row moved on between the statement's snapshot and the read, or, for a delete on
//! PostgreSQL, its tag changed under it), the write is tried again.
//!
//! # Change ordering that never skips
//! Every write moves the row to a new, higher `ordering`; a change query pages through
//! `(tag, ordering)` after its offset. The trap is the journal's visibility gap: a value
//! taken by a transaction that commits later than the one after it. It is closed the same
//! way as for events by tag: on PostgreSQL the statement first takes a transaction-scoped
//! advisory lock on the tag it writes (a delete: the tag stored), then takes its ordering
//! from a sequence, and holds the lock until its commit is visible, so the orderings of one
//! tag commit in order. SQLite has one writer at a time and takes `MAX(ordering) + 1`
//! inside the write lock. When a query sees ordering n of a tag, no smaller ordering of
//! that tag can still appear.

use std::sync::Arc;

use async_stream::try_stream;
use async_trait::async_trait;
use persistence_api::{
    revision_conflict, Bytes, ChangeStream, DurableState, DurableStateChange, DurableStateStore,
    Offset, Payload, PersistenceId, QueryMode, Result, Revision, Timestamp,
};

use crate::core::{q, wake, Backend, Dialect, Sql, SqlStore, Store};
use crate::error::{corrupt, err, into_sqlx, SqlError};
use crate::query::{tag_position, wait_for_change};
use crate::schema::{clamp, stored_id, unsigned, Columns, Names};

/// The durable-state store of one opened database (what [`crate::Sqlite::stores`] and
/// [`crate::Postgres::stores`] put in [`persistence_api::Stores::durable_state`]).
pub(crate) struct SqlDurableStateStore<B> {
    pub(crate) backend: Arc<B>,
}

#[async_trait]
impl<B: Backend> DurableStateStore for SqlDurableStateStore<B> {
    async fn get(&self, persistence_id: &PersistenceId) -> Result<Option<DurableState>> {
        self.backend.store().get_state(persistence_id).await
    }

    async fn upsert(
        &self,
        persistence_id: &PersistenceId,
        revision: Revision,
        payload: Payload,
        tag: Option<String>,
    ) -> Result<()> {
        // The tag is a key of the changes index ((tag, ordering)): a longer one than the
        // database's index takes would fail the statement (PostgreSQL; see MAX_TAG_BYTES).
        if let (Some(max), Some(t)) = (B::MAX_TAG_BYTES, tag.as_deref()) {
            if t.len() > max {
                let start: String = t.chars().take(40).collect();
                return Err(persistence_api::Error::new(
                    persistence_api::ErrorKind::Rejected,
                    format!(
                        "the tag {start:?}... of the state of {persistence_id} is {} bytes long; the changes index takes at most {max}",
                        t.len()
                    ),
                )
                .with_persistence_id(persistence_id.as_str()));
            }
        }
        self.backend
            .store()
            .write_state(persistence_id, revision, Some(&payload), tag.as_deref())
            .await?;
        wake(self.backend.wake_sender());
        Ok(())
    }

    async fn delete(&self, persistence_id: &PersistenceId, revision: Revision) -> Result<()> {
        self.backend
            .store()
            .write_state(persistence_id, revision, None, None)
            .await?;
        wake(self.backend.wake_sender());
        Ok(())
    }

    fn query_changes(&self, tag: String, offset: Offset, mode: QueryMode) -> ChangeStream {
        let backend = self.backend.clone();
        let live = mode.is_live();
        Box::pin(try_stream! {
            let store = backend.store();
            let page_size = store.page_size();
            let poll = store.poll_interval();
            let mut wake = backend.subscribe();
            let mut after = tag_position(&offset)?;
            // A current query ends at the highest ordering of the tag when it starts; a
            // state changed later is delivered by the next query resumed from its offset.
            let upto = if live { u64::MAX } else { store.max_state_ordering(&tag).await? };
            loop {
                wake.borrow_and_update();
                let page = store.state_changes(&tag, after, upto, page_size).await?;
                let n = page.len();
                for (ordering, change) in page {
                    after = ordering;
                    yield change;
                }
                if n == page_size {
                    continue;
                }
                if !live {
                    break;
                }
                wait_for_change(&mut wake, poll).await;
                persistence_api::metrics::record_poll(B::NAME, "changes");
            }
        })
    }
}

/// What PostgreSQL binds after the other parameters of a write: the text the tag-lock
/// keys hash (namespace and tag), and the notification channel.
struct PgExtra {
    lock_prefix: String,
    channel: String,
}

/// The durable-state statements, rendered once for the schema, table prefix and database.
pub(crate) struct StateSql {
    /// `$1` id.
    get: Sql,
    /// `$1` id.
    revision: Sql,
    /// `$1` tag.
    max_ordering: Sql,
    /// `$1` tag, `$2` after, `$3` upto, `$4` limit.
    changes: Sql,
    /// `$1` id, `$2` revision, `$3`-`$5` payload (or NULLs), `$6` tag, `$7` timestamp.
    insert: Sql,
    /// As `insert`.
    update: Sql,
    /// `$1` id, `$2` revision, `$3` timestamp.
    delete: Sql,
    /// PostgreSQL's extra parameters; `None` on SQLite.
    extra: Option<PgExtra>,
}

/// The columns of a state row, in order (a change query adds `ordering`).
const STATE_COLUMNS: &str =
    "persistence_id, revision, ser_id, ser_manifest, payload, tag, write_timestamp";

impl StateSql {
    /// The reads, the same for both databases.
    fn reads(n: &Names, d: &Dialect) -> (Sql, Sql, Sql, Sql) {
        let t = n.get("durable_state");
        let Dialect {
            param: p, bigint, ..
        } = d;
        (
            format!("SELECT {STATE_COLUMNS} FROM {t} WHERE persistence_id = {p}1").into(),
            format!("SELECT revision FROM {t} WHERE persistence_id = {p}1").into(),
            format!("SELECT COALESCE(MAX(ordering), 0){bigint} FROM {t} WHERE tag = {p}1").into(),
            format!(
                "SELECT {STATE_COLUMNS}, ordering FROM {t} WHERE tag = {p}1 AND ordering > {p}2 \
                 AND ordering <= {p}3 ORDER BY ordering LIMIT {p}4"
            )
            .into(),
        )
    }

    /// PostgreSQL: each write is one statement (one round trip, its own transaction):
    /// the tag lock (when `tag_lock`), then the conditional write taking `nextval`, then
    /// the `NOTIFY` on `channel` (when `notify`), delivered at commit.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(
        n: &Names,
        namespace: &str,
        channel: &str,
        notify: bool,
        tag_lock: bool,
    ) -> StateSql {
        let (get, revision, max_ordering, changes) = Self::reads(n, &crate::core::POSTGRES);
        let t = n.get("durable_state");
        let seq = n.get("durable_state_ordering_seq");
        let notify = |param: u8| {
            if notify {
                format!("(SELECT 1 FROM pg_notify(${param}, ''))")
            } else {
                format!("${param}::text")
            }
        };
        // The lock of the tag being written, taken before the ordering: an aggregate, so
        // one row whether there is a tag to lock or not.
        let lock = |tag: &str, prefix: u8| {
            if tag_lock {
                format!(
                    "SELECT count(pg_advisory_xact_lock(hashtextextended(${prefix}::text || k.t, 0))) \
                     AS n FROM (SELECT {tag} AS t) k WHERE k.t IS NOT NULL"
                )
            } else {
                format!("SELECT count(${prefix}::text) AS n")
            }
        };
        let values = "$1::text, $2::bigint, $3::text, $4::text, $5::bytea, $6::text, $7::bigint";
        let insert = format!(
            "WITH l AS ({lock}), \
             w AS (INSERT INTO {t} (persistence_id, revision, ser_id, ser_manifest, payload, \
             tag, write_timestamp, ordering) SELECT {values}, nextval('{seq}') FROM l \
             ON CONFLICT (persistence_id) DO NOTHING RETURNING revision) \
             SELECT w.revision, {notify} FROM w",
            lock = lock("$6::text", 8),
            notify = notify(9),
        );
        let update = format!(
            "WITH l AS ({lock}), \
             w AS (UPDATE {t} AS s SET revision = $2::bigint, ser_id = $3::text, \
             ser_manifest = $4::text, payload = $5::bytea, tag = $6::text, \
             write_timestamp = $7::bigint, ordering = nextval('{seq}') FROM l \
             WHERE s.persistence_id = $1::text AND s.revision = $2::bigint - 1 \
             RETURNING s.revision) \
             SELECT w.revision, {notify} FROM w",
            lock = lock("$6::text", 8),
            notify = notify(9),
        );
        // A delete keeps the stored tag, so it locks that one; if a concurrent write
        // changed the tag after it was read, the update finds no row and is retried.
        let delete = format!(
            "WITH c AS (SELECT tag FROM {t} WHERE persistence_id = $1::text), \
             l AS (SELECT c.tag FROM c CROSS JOIN LATERAL ({lock}) k), \
             w AS (UPDATE {t} AS s SET revision = $2::bigint, ser_id = NULL, \
             ser_manifest = NULL, payload = NULL, write_timestamp = $3::bigint, \
             ordering = nextval('{seq}') FROM l \
             WHERE s.persistence_id = $1::text AND s.revision = $2::bigint - 1 \
             AND s.tag IS NOT DISTINCT FROM l.tag RETURNING s.revision) \
             SELECT w.revision, {notify} FROM w",
            lock = lock("c.tag", 4),
            notify = notify(5),
        );
        StateSql {
            get,
            revision,
            max_ordering,
            changes,
            insert: insert.into(),
            update: update.into(),
            delete: delete.into(),
            extra: Some(PgExtra {
                lock_prefix: format!("backend-sql:{namespace}:state:"),
                channel: channel.to_owned(),
            }),
        }
    }

    /// SQLite: each write is one statement, which takes the database's write lock when it
    /// starts (and this process's writers take turns before it), so `MAX(ordering) + 1`
    /// (the unique `durable_state_ordering_idx`) is read and committed by one writer at a
    /// time.
    #[cfg(feature = "sqlite")]
    pub(crate) fn sqlite(n: &Names) -> StateSql {
        let (get, revision, max_ordering, changes) = Self::reads(n, &crate::core::SQLITE);
        let t = n.get("durable_state");
        let next = format!("(SELECT COALESCE(MAX(ordering), 0) + 1 FROM {t})");
        StateSql {
            get,
            revision,
            max_ordering,
            changes,
            insert: format!(
                "INSERT INTO {t} (persistence_id, revision, ser_id, ser_manifest, payload, tag, \
                 write_timestamp, ordering) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {next}) \
                 ON CONFLICT (persistence_id) DO NOTHING RETURNING revision"
            )
            .into(),
            update: format!(
                "UPDATE {t} SET revision = ?2, ser_id = ?3, ser_manifest = ?4, payload = ?5, \
                 tag = ?6, write_timestamp = ?7, ordering = {next} \
                 WHERE persistence_id = ?1 AND revision = ?2 - 1 RETURNING revision"
            )
            .into(),
            delete: format!(
                "UPDATE {t} SET revision = ?2, ser_id = NULL, ser_manifest = NULL, \
                 payload = NULL, write_timestamp = ?3, ordering = {next} \
                 WHERE persistence_id = ?1 AND revision = ?2 - 1 RETURNING revision"
            )
            .into(),
            extra: None,
        }
    }
}

/// Reads the [`STATE_COLUMNS`] of a row (and the ordering at index 7 when `ordering`); a
/// column that does not decode names the id (read first) and the column.
pub(crate) fn read_state(
    row: &impl Columns,
    ordering: bool,
) -> std::result::Result<(u64, DurableStateChange), SqlError> {
    let id = row
        .text(0)
        .map_err(|e| corrupt(None, None, "persistence_id", e))?;
    let id = stored_id(id)?;
    let bad =
        |column: &'static str, detail: String| corrupt(Some(id.as_str()), None, column, detail);
    let revision = row.int(1).map_err(|e| bad("revision", e.to_string()))?;
    if revision < 1 {
        return Err(bad(
            "revision",
            format!("{revision} is not a revision (they start at 1)"),
        ));
    }
    let ser_id = row.opt_text(2).map_err(|e| bad("ser_id", e.to_string()))?;
    let manifest = row
        .opt_text(3)
        .map_err(|e| bad("ser_manifest", e.to_string()))?;
    let bytes = row
        .opt_bytes(4)
        .map_err(|e| bad("payload", e.to_string()))?;
    let payload = match (ser_id, manifest, bytes) {
        (Some(serializer_id), Some(manifest), Some(bytes)) => Some(Payload {
            serializer_id,
            manifest,
            bytes: Bytes::from(bytes),
        }),
        // A delete.
        (None, None, None) => None,
        (s, m, b) => {
            let column = [("ser_id", s.is_none()), ("ser_manifest", m.is_none())]
                .into_iter()
                .find_map(|(c, missing)| missing.then_some(c))
                .unwrap_or(if b.is_none() { "payload" } else { "ser_id" });
            return Err(bad(
                column,
                "is NULL while other payload columns are set (a state stores all three, a delete none)"
                    .to_owned(),
            ));
        }
    };
    let tag = row.opt_text(5).map_err(|e| bad("tag", e.to_string()))?;
    let timestamp = row
        .int(6)
        .map_err(|e| bad("write_timestamp", e.to_string()))?;
    let ordering = if ordering {
        let o = row.int(7).map_err(|e| bad("ordering", e.to_string()))?;
        u64::try_from(o).map_err(|_| bad("ordering", format!("{o} is negative")))?
    } else {
        0
    };
    Ok((
        ordering,
        DurableStateChange {
            offset: Offset::Sequence(ordering),
            persistence_id: id,
            revision: revision as u64,
            payload,
            tag,
            timestamp: Timestamp::from_millis(timestamp),
        },
    ))
}

/// How many times a write whose revision was right after all is tried again.
const WRITE_ATTEMPTS: usize = 3;

/// The durable-state statements, the same for both databases (only their SQL differs);
/// [`SqlStore`] runs them.
#[async_trait]
pub(crate) trait StateRows: Send + Sync + 'static {
    /// The stored state of `id`.
    async fn get_state(&self, id: &PersistenceId) -> Result<Option<DurableState>>;
    /// Writes `revision` of `id` (a delete when `payload` is `None`) if the stored
    /// revision is `revision - 1`, else [`revision_conflict`].
    async fn write_state(
        &self,
        id: &PersistenceId,
        revision: Revision,
        payload: Option<&Payload>,
        tag: Option<&str>,
    ) -> Result<()>;
    /// The highest ordering of `tag`, 0 if none.
    async fn max_state_ordering(&self, tag: &str) -> Result<u64>;
    /// The states of `tag` with `after < ordering <= upto`, by ordering, at most `limit`.
    async fn state_changes(
        &self,
        tag: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DurableStateChange)>>;
}

impl<DB> SqlStore<DB>
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    /// One try of the conditional write; whether it wrote.
    async fn write_state_once(
        &self,
        id: &PersistenceId,
        revision: Revision,
        payload: Option<&Payload>,
        tag: Option<&str>,
    ) -> std::result::Result<bool, sqlx::Error> {
        let sql = &self.state_sql;
        let now = Timestamp::now().as_millis();
        let query = if revision > 1 && payload.is_none() {
            sqlx::query_as::<DB, (i64,)>(q(&sql.delete))
                .bind(id.as_str())
                .bind(clamp(revision))
                .bind(now)
        } else {
            let statement = if revision == 1 {
                &sql.insert
            } else {
                &sql.update
            };
            sqlx::query_as::<DB, (i64,)>(q(statement))
                .bind(id.as_str())
                .bind(clamp(revision))
                .bind(payload.map(|p| p.serializer_id.as_str()))
                .bind(payload.map(|p| p.manifest.as_str()))
                .bind(payload.map(|p| p.bytes.as_ref()))
                .bind(tag)
                .bind(now)
        };
        let query = match &sql.extra {
            Some(extra) => query
                .bind(extra.lock_prefix.as_str())
                .bind(extra.channel.as_str()),
            None => query,
        };
        Ok(query.fetch_optional(&self.pool).await?.is_some())
    }
}

#[async_trait]
impl<DB> StateRows for SqlStore<DB>
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    DB::Row: Columns,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    async fn get_state(&self, id: &PersistenceId) -> Result<Option<DurableState>> {
        let row = sqlx::query(q(&self.state_sql.get))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        let Some(row) = row else { return Ok(None) };
        let (_, c) = read_state(&row, false).map_err(err)?;
        Ok(Some(DurableState {
            persistence_id: c.persistence_id,
            revision: c.revision,
            payload: c.payload,
            tag: c.tag,
            timestamp: c.timestamp,
        }))
    }

    async fn write_state(
        &self,
        id: &PersistenceId,
        revision: Revision,
        payload: Option<&Payload>,
        tag: Option<&str>,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let written = {
                let _turn = self.write_turn().await;
                self.write_state_once(id, revision, payload, tag)
                    .await
                    .map_err(err)?
            };
            if written {
                return Ok(());
            }
            let stored: Option<i64> = sqlx::query_scalar(q(&self.state_sql.revision))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?;
            let stored = match stored {
                Some(r) => u64::try_from(r).map_err(|_| {
                    err(corrupt(
                        Some(id.as_str()),
                        None,
                        "revision",
                        format!("{r} is negative"),
                    ))
                })?,
                None => 0,
            };
            if stored.checked_add(1) == Some(revision) && attempt < WRITE_ATTEMPTS {
                continue;
            }
            return Err(revision_conflict(id, stored, revision));
        }
    }

    async fn max_state_ordering(&self, tag: &str) -> Result<u64> {
        let max: i64 = sqlx::query_scalar(q(&self.state_sql.max_ordering))
            .bind(tag)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        unsigned(max, "ordering").map_err(err)
    }

    async fn state_changes(
        &self,
        tag: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DurableStateChange)>> {
        sqlx::query(q(&self.state_sql.changes))
            .bind(tag)
            .bind(clamp(after))
            .bind(clamp(upto))
            .bind(limit as i64)
            // Each row becomes a change as it arrives (see `Store::events`).
            .try_map(|row: DB::Row| read_state(&row, true).map_err(into_sqlx))
            .fetch_all(&self.pool)
            .await
            .map_err(err)
    }
}

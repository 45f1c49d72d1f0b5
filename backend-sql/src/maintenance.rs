//! Journal maintenance ([`JournalMaintenance`]): listing the ids the journal holds,
//! writing the tag table and the id registry again from the events, truncating them, and
//! purging an id. The statements are the same for both databases ([`MaintenanceRows`],
//! implemented once for [`SqlStore`]) but for how a tag list is expanded in SQL, the
//! locks, and how an id is given or loses its place in the persistence-ids queries
//! ([`MaintenanceSql::postgres`], [`MaintenanceSql::sqlite`]).
//!
//! # What is derived here, and from what
//! - The tag table (`event_tag`): one row per distinct tag of each event, keyed by
//!   `(tag, ordering)`, where `ordering` is the event row's own. It is derived from the
//!   `tags` column of `event_journal`, so a rebuild writes the same rows again, with the
//!   same orderings: a projection's `Offset::Sequence` stays valid.
//! - The id row (`journal_ids`) is the id's metadata (its highest sequence number, kept
//!   after `delete_events_to` removed every event, and its deleted-to mark) and, through
//!   its `id_ordering`, the registry `current_persistence_ids` reads. There is no
//!   registry table apart from the metadata: losing the registry means losing the
//!   positions (see [`MaintenanceSql`]), and the scan reads `journal_ids` as the
//!   metadata, with the events beside it. So an id whose row was lost while its events
//!   remain is still found, and its rebuild writes the row again (highest = its highest
//!   stored sequence number, deleted-to 0: the deleted events are gone anyway). An id
//!   whose row was lost *and* whose every event was deleted has nothing left to rebuild
//!   it from.

use std::sync::Arc;

use async_stream::try_stream;
use async_trait::async_trait;
use persistence_api::{
    JournalMaintenance, PersistenceId, PersistenceIdStream, PurgeReport, RebuildReport, Result,
    SequenceNr,
};

use crate::core::{q, wake, Backend, Dialect, Sql, SqlStore, Store};
use crate::error::{err, into_sqlx, SqlError};
use crate::schema::{clamp, read_tags, stored_id, Columns, Names, Record};

/// The journal maintenance of one opened database.
pub(crate) struct SqlMaintenance<B> {
    pub(crate) backend: Arc<B>,
}

#[async_trait]
impl<B: Backend> JournalMaintenance for SqlMaintenance<B> {
    /// Keyset paging by persistence id over the ids of `event_journal` and the ids of
    /// `journal_ids` with a highest above 0 (see the module's documentation: that table is
    /// the registry and the metadata at once), `page_size` ids per statement.
    fn scan_persistence_ids(&self) -> PersistenceIdStream {
        let backend = self.backend.clone();
        Box::pin(try_stream! {
            let page_size = backend.store().page_size();
            // Persistence ids are never empty, so every id sorts after "".
            let mut after = String::new();
            loop {
                let page = backend.store().scan_ids(&after, page_size).await?;
                let n = page.len();
                for id in page {
                    after = id.as_str().to_owned();
                    yield id;
                }
                if n < page_size {
                    break;
                }
            }
        })
    }

    /// Pages through the id's events by sequence number (one transaction per page: the
    /// page's tags read and checked, then one `INSERT ... SELECT ... ON CONFLICT DO
    /// NOTHING` of its tag rows), then writes the id's row again if it is missing or
    /// below the highest stored event, and gives it a position in the persistence-ids
    /// queries if it has none (one more transaction).
    async fn rebuild_persistence_id(&self, id: &PersistenceId) -> Result<RebuildReport> {
        let store = self.backend.store();
        let page_size = store.page_size();
        let mut report = RebuildReport::default();
        let mut after: SequenceNr = 0;
        loop {
            let page = store.rebuild_tag_page(id, after, page_size).await?;
            report.events += page.events;
            report.index_entries += page.index_entries;
            if page.index_entries > 0 {
                // Tag queries that wait for new rows look again.
                wake(self.backend.wake_sender());
            }
            match page.last {
                Some(last) if page.events as usize == page_size => after = last,
                Some(last) => {
                    after = last;
                    break;
                }
                None => break,
            }
        }
        store.register_id(id, after).await?;
        Ok(report)
    }

    /// One transaction: the tag table emptied (PostgreSQL: `TRUNCATE`), and every id row
    /// kept but taken out of the persistence-ids queries (see [`MaintenanceSql`]).
    async fn truncate_indexes(&self) -> Result<()> {
        self.backend.store().truncate().await
    }

    /// One transaction: the id's row, tag rows, events and snapshots deleted (four
    /// statements, whatever the number of events).
    async fn purge_persistence_id(&self, id: &PersistenceId) -> Result<PurgeReport> {
        self.backend.store().purge_id(id).await
    }
}

/// What [`MaintenanceRows::rebuild_tag_page`] did with one page of an id's events.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TagPage {
    /// Events read.
    pub events: u64,
    /// Tag rows written or present: the distinct tags of each event read.
    pub index_entries: u64,
    /// The highest sequence number read, `None` when the page was empty.
    pub last: Option<SequenceNr>,
}

/// The rows affected by a statement, which sqlx gives by database, not through a trait.
pub(crate) trait RowsAffected {
    /// Rows inserted, updated or deleted.
    fn rows(&self) -> u64;
}

#[cfg(feature = "postgres")]
impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "sqlite")]
impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// What the two databases spell their own way.
struct Own {
    /// The `FROM` item that turns the `tags` column of event `e` into rows of one column
    /// `x.value`.
    expand_tags: &'static str,
    /// PostgreSQL: locks the id's row (`FOR SHARE`) for a page's transaction, so neither
    /// `delete_events_to` nor a write of the id changes its events meanwhile. SQLite needs
    /// none: its writers take turns on the whole database.
    lock_id: Option<Sql>,
    /// PostgreSQL: the write path's transaction-scoped ids lock and its key, taken before
    /// an id is given a position, so positions commit in order.
    lock_ids: Option<(Sql, i64)>,
    /// Gives the id a new position (above every position ever given) if it has none.
    assign: Sql,
    /// Empties the tag table.
    truncate_tags: Sql,
    /// Takes every id out of the registry, keeping its row.
    unregister_all: Sql,
}

/// The maintenance statements, rendered once for the schema, table prefix and database.
///
/// An id's position in the persistence-ids queries is its row's `id_ordering`; an id
/// without one is not listed. On PostgreSQL that is a NULL (as the write path leaves a
/// new row until it takes the ids lock). On SQLite `id_ordering` is the rowid and
/// cannot be NULL, so [`JournalMaintenance::truncate_indexes`] negates it: the queries
/// read positions above 0 only, positions are never reused (`AUTOINCREMENT`), so the
/// negated ones never collide, and a rebuild gives the row a new rowid by replacing it.
pub(crate) struct MaintenanceSql {
    scan: Sql,
    tag_page: Sql,
    insert_tags: Sql,
    register: Sql,
    position: Sql,
    delete_id: Sql,
    delete_tags: Sql,
    delete_events: Sql,
    delete_snapshots: Sql,
    own: Own,
}

impl MaintenanceSql {
    /// The statements both databases share, and `own`'s.
    fn new(n: &Names, d: &Dialect, own: Own) -> Self {
        let ev = n.get("event_journal");
        let tag = n.get("event_tag");
        let ids = n.get("journal_ids");
        let snap = n.get("snapshot");
        let Dialect {
            param: p,
            greatest,
            excluded,
            ..
        } = d;
        let expand_tags = own.expand_tags;
        let s = |sql: String| -> Sql { sql.into() };
        MaintenanceSql {
            // The first `limit` of each source hold the first `limit` of their union.
            scan: s(format!(
                "SELECT persistence_id FROM (\
                 SELECT persistence_id FROM (SELECT DISTINCT persistence_id FROM {ev} \
                 WHERE persistence_id > {p}1 ORDER BY persistence_id LIMIT {p}2) AS a \
                 UNION \
                 SELECT persistence_id FROM (SELECT persistence_id FROM {ids} \
                 WHERE persistence_id > {p}1 AND highest_sequence_nr > 0 \
                 ORDER BY persistence_id LIMIT {p}2) AS b\
                 ) AS u ORDER BY persistence_id LIMIT {p}2"
            )),
            tag_page: s(format!(
                "SELECT persistence_id, sequence_nr, tags FROM {ev} \
                 WHERE persistence_id = {p}1 AND sequence_nr > {p}2 \
                 ORDER BY sequence_nr LIMIT {p}3"
            )),
            insert_tags: s(format!(
                "INSERT INTO {tag} (tag, ordering, persistence_id, sequence_nr) \
                 SELECT DISTINCT x.value, e.ordering, e.persistence_id, e.sequence_nr \
                 FROM {ev} e, {expand_tags} \
                 WHERE e.persistence_id = {p}1 AND e.sequence_nr >= {p}2 \
                 AND e.sequence_nr <= {p}3 \
                 ON CONFLICT DO NOTHING"
            )),
            // The id's position back: 0 or below when it has none.
            register: s(format!(
                "INSERT INTO {ids} AS i (persistence_id, highest_sequence_nr) \
                 VALUES ({p}1, {p}2) ON CONFLICT (persistence_id) DO UPDATE SET \
                 highest_sequence_nr = \
                 {greatest}(i.highest_sequence_nr, {excluded}.highest_sequence_nr) \
                 RETURNING COALESCE(id_ordering, 0)"
            )),
            position: s(format!(
                "SELECT COALESCE(id_ordering, 0) FROM {ids} \
                 WHERE persistence_id = {p}1 AND highest_sequence_nr > 0"
            )),
            delete_id: s(format!("DELETE FROM {ids} WHERE persistence_id = {p}1")),
            delete_tags: s(format!("DELETE FROM {tag} WHERE persistence_id = {p}1")),
            delete_events: s(format!("DELETE FROM {ev} WHERE persistence_id = {p}1")),
            delete_snapshots: s(format!("DELETE FROM {snap} WHERE persistence_id = {p}1")),
            own,
        }
    }

    /// PostgreSQL's: tags expanded by `json_array_elements_text`; a page's transaction
    /// locks the id's row; a registered id takes its position from the ids sequence under
    /// the write path's ids lock (`ids_lock_key`); truncation clears `id_ordering`.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(n: &Names, ids_lock_key: i64) -> Self {
        let ids = n.get("journal_ids");
        let seq = n.get("journal_ids_ordering_seq");
        let tag = n.get("event_tag");
        let own = Own {
            expand_tags: "LATERAL json_array_elements_text(e.tags::json) AS x(value)",
            lock_id: Some(
                format!("SELECT 1 FROM {ids} WHERE persistence_id = $1 FOR SHARE").into(),
            ),
            lock_ids: Some(("SELECT pg_advisory_xact_lock($1)".into(), ids_lock_key)),
            assign: format!(
                "UPDATE {ids} SET id_ordering = nextval('{seq}') \
                 WHERE persistence_id = $1 AND id_ordering IS NULL"
            )
            .into(),
            truncate_tags: format!("TRUNCATE {tag}").into(),
            unregister_all: format!(
                "UPDATE {ids} SET id_ordering = NULL WHERE id_ordering IS NOT NULL"
            )
            .into(),
        };
        Self::new(n, &crate::core::POSTGRES, own)
    }

    /// SQLite's: tags expanded by `json_each`; an id without a position has a negated
    /// rowid, and takes a new one when its row is replaced (`AUTOINCREMENT`).
    #[cfg(feature = "sqlite")]
    pub(crate) fn sqlite(n: &Names) -> Self {
        let ids = n.get("journal_ids");
        let tag = n.get("event_tag");
        let own = Own {
            expand_tags: "json_each(e.tags) AS x",
            lock_id: None,
            lock_ids: None,
            assign: format!(
                "INSERT OR REPLACE INTO {ids} (persistence_id, highest_sequence_nr, deleted_to) \
                 SELECT persistence_id, highest_sequence_nr, deleted_to FROM {ids} \
                 WHERE persistence_id = ?1 AND id_ordering <= 0"
            )
            .into(),
            truncate_tags: format!("DELETE FROM {tag}").into(),
            unregister_all: format!(
                "UPDATE {ids} SET id_ordering = -id_ordering WHERE id_ordering > 0"
            )
            .into(),
        };
        Self::new(n, &crate::core::SQLITE, own)
    }
}

/// The maintenance statements, the same for both databases (only their SQL differs);
/// [`SqlStore`] runs them.
#[async_trait]
pub(crate) trait MaintenanceRows: Send + Sync + 'static {
    /// Up to `limit` ids after `after`, by id: those of stored events and those whose row
    /// has a highest above 0.
    async fn scan_ids(&self, after: &str, limit: usize) -> Result<Vec<PersistenceId>>;
    /// Reads up to `limit` events of `id` after sequence number `after` (their tags
    /// checked as a replay checks them) and writes their missing tag rows, in one
    /// transaction.
    async fn rebuild_tag_page(
        &self,
        id: &PersistenceId,
        after: SequenceNr,
        limit: usize,
    ) -> Result<TagPage>;
    /// Writes the row of `id` with `highest` (its highest stored event; 0 when it has
    /// none) if it is missing or lower, and gives the row a position in the
    /// persistence-ids queries if it has none. With `highest` 0 and no row, nothing.
    async fn register_id(&self, id: &PersistenceId, highest: SequenceNr) -> Result<()>;
    /// Deletes the row, tag rows, events and snapshots of `id` in one transaction.
    async fn purge_id(&self, id: &PersistenceId) -> Result<PurgeReport>;
    /// Empties the tag table and takes every id out of the registry (keeping the rows),
    /// in one transaction.
    async fn truncate(&self) -> Result<()>;
}

#[async_trait]
impl<DB> MaintenanceRows for SqlStore<DB>
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    DB::Row: Columns,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    async fn scan_ids(&self, after: &str, limit: usize) -> Result<Vec<PersistenceId>> {
        sqlx::query(q(&self.maintenance_sql.scan))
            .bind(after)
            .bind(limit as i64)
            .try_map(|row: DB::Row| {
                row.text(0)
                    .map_err(|e| crate::error::corrupt(None, None, "persistence_id", e))
                    .and_then(stored_id)
                    .map_err(into_sqlx)
            })
            .fetch_all(&self.pool)
            .await
            .map_err(err)
    }

    async fn rebuild_tag_page(
        &self,
        id: &PersistenceId,
        after: SequenceNr,
        limit: usize,
    ) -> Result<TagPage> {
        let sql = &self.maintenance_sql;
        let run = async {
            let _turn = self.write_turn().await;
            let mut tx = self.begin().await?;
            if let Some(lock_id) = &sql.own.lock_id {
                sqlx::query(q(lock_id))
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            // Each event's sequence number and its number of distinct tags; a `tags` value
            // that is not a JSON array of strings is the replay's corrupt-column error.
            let events: Vec<(u64, u64)> = sqlx::query(q(&sql.tag_page))
                .bind(id.as_str())
                .bind(clamp(after))
                .bind(limit as i64)
                .try_map(|row: DB::Row| {
                    let read = || -> std::result::Result<(u64, u64), SqlError> {
                        let record = Record::read(&row, 0, 1)?;
                        let mut tags = read_tags(&row, &record, 2)?;
                        tags.sort_unstable();
                        tags.dedup();
                        Ok((record.sequence_nr(), tags.len() as u64))
                    };
                    read().map_err(into_sqlx)
                })
                .fetch_all(&mut *tx)
                .await?;
            let page = TagPage {
                events: events.len() as u64,
                index_entries: events.iter().map(|(_, tags)| tags).sum(),
                last: events.last().map(|(seq, _)| *seq),
            };
            if let (Some((first, _)), Some(last)) = (events.first(), page.last) {
                if page.index_entries > 0 {
                    // The same events again, their tags expanded by the database.
                    sqlx::query(q(&sql.insert_tags))
                        .bind(id.as_str())
                        .bind(clamp(*first))
                        .bind(clamp(last))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(page)
        };
        run.await.map_err(err)
    }

    async fn register_id(&self, id: &PersistenceId, highest: SequenceNr) -> Result<()> {
        let sql = &self.maintenance_sql;
        let run = async {
            let _turn = self.write_turn().await;
            let mut tx = self.begin().await?;
            // The id's position, 0 or below when it has none; `None` when the journal
            // does not hold the id.
            let position: Option<i64> = if highest > 0 {
                Some(
                    sqlx::query_scalar(q(&sql.register))
                        .bind(id.as_str())
                        .bind(clamp(highest))
                        .fetch_one(&mut *tx)
                        .await?,
                )
            } else {
                sqlx::query_scalar(q(&sql.position))
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
            };
            if position.is_some_and(|p| p <= 0) {
                if let Some((lock_ids, key)) = &sql.own.lock_ids {
                    sqlx::query(q(lock_ids))
                        .bind(*key)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(q(&sql.own.assign))
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(())
        };
        run.await.map_err(err)
    }

    async fn purge_id(&self, id: &PersistenceId) -> Result<PurgeReport> {
        let sql = &self.maintenance_sql;
        let run = async {
            let _turn = self.write_turn().await;
            let mut tx = self.begin().await?;
            // The id's row first: it is the row every write and delete of the id locks.
            for statement in [&sql.delete_id, &sql.delete_tags] {
                sqlx::query(q(statement))
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            let events = sqlx::query(q(&sql.delete_events))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows();
            let snapshots = sqlx::query(q(&sql.delete_snapshots))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows();
            tx.commit().await?;
            Ok::<_, sqlx::Error>(PurgeReport::new(events, snapshots))
        };
        run.await.map_err(err)
    }

    async fn truncate(&self) -> Result<()> {
        let own = &self.maintenance_sql.own;
        let run = async {
            let _turn = self.write_turn().await;
            let mut tx = self.begin().await?;
            for statement in [&own.truncate_tags, &own.unregister_all] {
                sqlx::query(q(statement)).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(())
        };
        run.await.map_err(err)
    }
}

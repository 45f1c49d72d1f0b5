//! The projection offset store, with exactly-once transactions: one row per
//! [`ProjectionId`] in the `projection_offsets` table, committed on condition of its
//! version; a [`SqliteTransaction`] or [`PostgresTransaction`] is a sqlx transaction the
//! handler of an exactly-once projection writes its effects in, and
//! [`OffsetStore::commit_transaction`] writes the offset in the same transaction and
//! commits both, or rolls both back.
//!
//! The statements and their logic are the same for both databases ([`OffsetRows`],
//! implemented once for [`SqlStore`]); only their spelling ([`Dialect`]) and the type of
//! the public transaction ([`TransactionOf`]) differ.
//!
//! # The conditional write
//! - Expected version 0: `INSERT ... ON CONFLICT DO NOTHING RETURNING version`; no row
//!   returned means another commit inserted first.
//! - Expected version n > 0: `UPDATE ... SET version = version + 1 WHERE ... AND
//!   version = n RETURNING version`; no row returned means the version moved on.
//!
//! Either way nothing was written, and the stored version is read (in the same
//! transaction) for [`version_conflict`]. Two commits of the same expected version from
//! two connections: on PostgreSQL (READ COMMITTED) the second `UPDATE` waits for the
//! first's row lock and then re-evaluates its `WHERE` on the committed row, and the
//! second `INSERT` waits for the first's key and then does nothing, so exactly one
//! returns a row; on SQLite writers run one at a time.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use persistence_api::{
    version_conflict, Error, Offset, OffsetStore, ProjectionId, Result, StoreTransaction,
    StoredOffset, Timestamp,
};

use crate::core::{q, Backend, Dialect, Sql, SqlStore};
use crate::error::{err, SqlError};
use crate::schema::{clamp, unsigned, Columns, Names};

/// The offset store of one opened database (what [`crate::Sqlite::stores`] and
/// [`crate::Postgres::stores`] put in [`persistence_api::Stores::offsets`]).
pub(crate) struct SqlOffsetStore<B> {
    pub(crate) backend: Arc<B>,
}

#[async_trait]
impl<B: Backend> OffsetStore for SqlOffsetStore<B> {
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>> {
        self.backend.store().read_offset(id).await
    }

    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: Offset) -> Result<u64> {
        self.backend
            .store()
            .commit_offset(id, expected, &offset)
            .await
    }

    async fn set_offset(&self, id: &ProjectionId, offset: Offset) -> Result<u64> {
        self.backend.store().set_offset(id, &offset).await
    }

    fn supports_transactions(&self) -> bool {
        true
    }

    async fn begin_transaction(&self) -> Result<StoreTransaction> {
        let tx = self.backend.store().begin_transaction().await?;
        Ok(StoreTransaction::new(B::NAME, tx))
    }

    async fn commit_transaction(
        &self,
        transaction: StoreTransaction,
        id: &ProjectionId,
        expected: u64,
        offset: Offset,
    ) -> Result<u64> {
        let tx = transaction.into_inner::<<B::Store as OffsetRows>::Transaction>()?;
        self.backend
            .store()
            .commit_transaction(tx, id, expected, &offset)
            .await
    }
}

/// The open transaction of an exactly-once projection on SQLite, inside the
/// [`StoreTransaction`] that `begin_transaction` returns: the handler runs its statements
/// on [`SqliteTransaction::connection`], and `commit_transaction` adds the offset and
/// commits, or rolls everything back when the offset's version moved on. Dropping it
/// uncommitted rolls it back.
///
/// It is opened with `BEGIN IMMEDIATE`, so it holds the database's write lock from the
/// start: neither the handler's statements nor the offset write can meet `SQLITE_BUSY`
/// later on (a deferred transaction that read first cannot wait for the lock in WAL
/// mode, it fails at once). Other writers, of this process or another, wait for it (up
/// to `busy_timeout`), so a handler should be quick and must write through this
/// connection only (not through the journal, which would wait for this very lock).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use persistence_api::{ErrorKind, Offset, ProjectionId};
/// use persistence_sql::{sqlx, Sqlite, SqliteConfig, SqliteTransaction};
/// let dir = tempfile::tempdir()?;
/// let opened = Sqlite::open(SqliteConfig::new(dir.path().join("app.db"))).await?;
/// let stores = opened.stores();
/// sqlx::query("CREATE TABLE totals (total INTEGER)").execute(opened.pool()).await?;
/// let id = ProjectionId::new("totals", "all")?;
///
/// let mut tx = stores.offsets.begin_transaction().await?;
/// sqlx::query("INSERT INTO totals VALUES (5)")
///     .execute(SqliteTransaction::of(&mut tx)?.connection())
///     .await?;
/// assert_eq!(stores.offsets.commit_transaction(tx, &id, 0, Offset::Sequence(1)).await?, 1);
///
/// // A commit over a moved-on version stores none of its effects.
/// let mut tx = stores.offsets.begin_transaction().await?;
/// sqlx::query("INSERT INTO totals VALUES (7)")
///     .execute(SqliteTransaction::of(&mut tx)?.connection())
///     .await?;
/// let err = stores.offsets.commit_transaction(tx, &id, 0, Offset::Sequence(2)).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Conflict);
/// let sum: i64 = sqlx::query_scalar("SELECT sum(total) FROM totals").fetch_one(opened.pool()).await?;
/// assert_eq!(sum, 5);
/// let stored = stores.offsets.read_offset(&id).await?.unwrap();
/// assert_eq!((stored.offset, stored.version), (Offset::Sequence(1), 1));
/// # Ok(()) }
/// ```
#[cfg(feature = "sqlite")]
pub struct SqliteTransaction {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
}

#[cfg(feature = "sqlite")]
impl SqliteTransaction {
    /// The SQLite transaction inside `transaction`.
    ///
    /// # Errors
    /// `ErrorKind::InvalidInput` when another backend opened it.
    pub fn of(transaction: &mut StoreTransaction) -> Result<&mut SqliteTransaction> {
        transaction.downcast_mut::<SqliteTransaction>()
    }

    /// The transaction's connection, for the handler's statements
    /// (`sqlx::query(...).execute(tx.connection())`).
    pub fn connection(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.tx
    }
}

#[cfg(feature = "sqlite")]
impl std::fmt::Debug for SqliteTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTransaction").finish_non_exhaustive()
    }
}

/// The open transaction of an exactly-once projection on PostgreSQL, inside the
/// [`StoreTransaction`] that `begin_transaction` returns: the handler runs its statements
/// on [`PostgresTransaction::connection`], and `commit_transaction` adds the offset and
/// commits, or rolls everything back when the offset's version moved on. Dropping it
/// uncommitted rolls it back.
///
/// A plain `BEGIN` (READ COMMITTED): the offset write takes the offset row's lock when
/// it runs, so a concurrent instance's commit of the same version waits for this one and
/// then finds the version moved on.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use persistence_api::{Offset, ProjectionId};
/// use persistence_sql::{sqlx, PostgresConfig, PostgresTransaction};
/// let stores = persistence_sql::open(PostgresConfig::new("postgres://app@127.0.0.1/app")).await?;
/// let id = ProjectionId::new("totals", "all")?;
///
/// let expected = stores.offsets.read_offset(&id).await?.map_or(0, |s| s.version);
/// let mut tx = stores.offsets.begin_transaction().await?;
/// sqlx::query("UPDATE totals SET total = total + $1")
///     .bind(5_i64)
///     .execute(PostgresTransaction::of(&mut tx)?.connection())
///     .await?;
/// stores.offsets.commit_transaction(tx, &id, expected, Offset::Sequence(42)).await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "postgres")]
pub struct PostgresTransaction {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

#[cfg(feature = "postgres")]
impl PostgresTransaction {
    /// The PostgreSQL transaction inside `transaction`.
    ///
    /// # Errors
    /// `ErrorKind::InvalidInput` when another backend opened it.
    pub fn of(transaction: &mut StoreTransaction) -> Result<&mut PostgresTransaction> {
        transaction.downcast_mut::<PostgresTransaction>()
    }

    /// The transaction's connection, for the handler's statements
    /// (`sqlx::query(...).execute(tx.connection())`).
    pub fn connection(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }
}

#[cfg(feature = "postgres")]
impl std::fmt::Debug for PostgresTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTransaction")
            .finish_non_exhaustive()
    }
}

/// The public transaction type of each database: what `begin_transaction` puts in the
/// [`StoreTransaction`] and `commit_transaction` takes out of it.
pub(crate) trait TransactionOf: sqlx::Database {
    /// [`SqliteTransaction`] or [`PostgresTransaction`].
    type Public: Any + Send;
    /// Wraps an open transaction.
    fn wrap(tx: sqlx::Transaction<'static, Self>) -> Self::Public;
    /// The open transaction inside.
    fn unwrap(public: Self::Public) -> sqlx::Transaction<'static, Self>;
}

#[cfg(feature = "sqlite")]
impl TransactionOf for sqlx::Sqlite {
    type Public = SqliteTransaction;
    fn wrap(tx: sqlx::Transaction<'static, Self>) -> SqliteTransaction {
        SqliteTransaction { tx }
    }
    fn unwrap(public: SqliteTransaction) -> sqlx::Transaction<'static, Self> {
        public.tx
    }
}

#[cfg(feature = "postgres")]
impl TransactionOf for sqlx::Postgres {
    type Public = PostgresTransaction;
    fn wrap(tx: sqlx::Transaction<'static, Self>) -> PostgresTransaction {
        PostgresTransaction { tx }
    }
    fn unwrap(public: PostgresTransaction) -> sqlx::Transaction<'static, Self> {
        public.tx
    }
}

/// The offset statements, rendered once for the schema, table prefix and dialect. Every
/// one takes the projection's name and key as its first two parameters.
pub(crate) struct OffsetSql {
    read: Sql,
    version: Sql,
    insert: Sql,
    update: Sql,
    upsert: Sql,
}

impl OffsetSql {
    pub(crate) fn new(n: &Names, d: &Dialect) -> OffsetSql {
        let t = n.get("projection_offsets");
        let Dialect {
            param: p, excluded, ..
        } = d;
        let s = |sql: String| -> Sql { sql.into() };
        let key = format!("projection_name = {p}1 AND projection_key = {p}2");
        let insert = format!(
            "INSERT INTO {t} AS o (projection_name, projection_key, current_offset, version, \
             updated_at) VALUES ({p}1, {p}2, {p}3, 1, {p}4) \
             ON CONFLICT (projection_name, projection_key)"
        );
        OffsetSql {
            read: s(format!(
                "SELECT current_offset, version FROM {t} WHERE {key}"
            )),
            version: s(format!("SELECT version FROM {t} WHERE {key}")),
            insert: s(format!("{insert} DO NOTHING RETURNING version")),
            update: s(format!(
                "UPDATE {t} SET current_offset = {p}3, version = version + 1, \
                 updated_at = {p}4 WHERE {key} AND version = {p}5 RETURNING version"
            )),
            upsert: s(format!(
                "{insert} DO UPDATE SET current_offset = {excluded}.current_offset, \
                 version = o.version + 1, updated_at = {excluded}.updated_at \
                 RETURNING version"
            )),
        }
    }
}

/// The offset statements, the same for both databases (only their SQL spelling differs);
/// [`SqlStore`] runs them.
#[async_trait]
pub(crate) trait OffsetRows: Send + Sync + 'static {
    /// The public transaction type ([`TransactionOf::Public`]).
    type Transaction: Any + Send;
    /// The stored offset and version of `id`.
    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>>;
    /// Stores `offset` if the stored version is `expected`; the new version.
    async fn commit_offset(&self, id: &ProjectionId, expected: u64, offset: &Offset)
        -> Result<u64>;
    /// Stores `offset` whatever is stored; the new version.
    async fn set_offset(&self, id: &ProjectionId, offset: &Offset) -> Result<u64>;
    /// Opens a write transaction for an exactly-once handler.
    async fn begin_transaction(&self) -> Result<Self::Transaction>;
    /// [`OffsetRows::commit_offset`] inside `tx`, then commits it (or rolls it back).
    async fn commit_transaction(
        &self,
        tx: Self::Transaction,
        id: &ProjectionId,
        expected: u64,
        offset: &Offset,
    ) -> Result<u64>;
}

/// How a conditional offset write ended.
enum Committed {
    /// Stored, with this new version.
    Stored(u64),
    /// Nothing stored: the stored version (0: none) is not the expected one.
    Conflict(u64),
}

/// The column holding the offset's text.
const OFFSET_COLUMN: &str = "current_offset";

/// A stored offset read back: a text that does not parse, or a negative version, is
/// corrupt, naming the projection and the column.
pub(crate) fn read_row(id: &ProjectionId, row: &impl Columns) -> Result<StoredOffset> {
    let text = row
        .text(0)
        .map_err(|e| corrupt(id, OFFSET_COLUMN, e.to_string()))?;
    let offset = text
        .parse::<Offset>()
        .map_err(|e| corrupt(id, OFFSET_COLUMN, e.message()))?;
    let version = row
        .int(1)
        .map_err(|e| corrupt(id, "version", e.to_string()))?;
    let version = u64::try_from(version)
        .map_err(|_| corrupt(id, "version", format!("{version} is negative")))?;
    Ok(StoredOffset { offset, version })
}

fn corrupt(id: &ProjectionId, column: &str, detail: impl std::fmt::Display) -> Error {
    Error::corrupt(column, format!("{detail} (projection {id})"))
}

impl<DB> SqlStore<DB>
where
    DB: TransactionOf,
    DB::Arguments: sqlx::IntoArguments<DB>,
    DB::Row: Columns,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// The stored version of `id` (0: none), on `conn`.
    async fn stored_version(
        &self,
        conn: &mut DB::Connection,
        id: &ProjectionId,
    ) -> std::result::Result<u64, SqlError> {
        let version: Option<i64> = sqlx::query_scalar(q(&self.offset_sql.version))
            .bind(id.name())
            .bind(id.key())
            .fetch_optional(&mut *conn)
            .await?;
        version.map_or(Ok(0), |v| unsigned(v, "version"))
    }

    /// The conditional write of `offset` over version `expected`, on `conn` (a pooled
    /// connection or the caller's transaction).
    async fn write_conditional(
        &self,
        conn: &mut DB::Connection,
        id: &ProjectionId,
        expected: u64,
        offset: &Offset,
    ) -> std::result::Result<Committed, SqlError> {
        let text = offset.to_string();
        let now = Timestamp::now().as_millis();
        let query = if expected == 0 {
            sqlx::query_scalar(q(&self.offset_sql.insert))
                .bind(id.name())
                .bind(id.key())
                .bind(text.as_str())
                .bind(now)
        } else {
            sqlx::query_scalar(q(&self.offset_sql.update))
                .bind(id.name())
                .bind(id.key())
                .bind(text.as_str())
                .bind(now)
                .bind(clamp(expected))
        };
        let version: Option<i64> = query.fetch_optional(&mut *conn).await?;
        match version {
            Some(v) => Ok(Committed::Stored(unsigned(v, "version")?)),
            None => Ok(Committed::Conflict(self.stored_version(conn, id).await?)),
        }
    }
}

#[async_trait]
impl<DB> OffsetRows for SqlStore<DB>
where
    DB: TransactionOf,
    DB::Arguments: sqlx::IntoArguments<DB>,
    DB::Row: Columns,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    type Transaction = DB::Public;

    async fn read_offset(&self, id: &ProjectionId) -> Result<Option<StoredOffset>> {
        let row = sqlx::query(q(&self.offset_sql.read))
            .bind(id.name())
            .bind(id.key())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.map(|row| read_row(id, &row)).transpose()
    }

    async fn commit_offset(
        &self,
        id: &ProjectionId,
        expected: u64,
        offset: &Offset,
    ) -> Result<u64> {
        let _turn = self.write_turn().await;
        let mut conn = self.pool.acquire().await.map_err(err)?;
        match self
            .write_conditional(&mut conn, id, expected, offset)
            .await
            .map_err(err)?
        {
            Committed::Stored(version) => Ok(version),
            Committed::Conflict(stored) => Err(version_conflict(id, expected, stored)),
        }
    }

    async fn set_offset(&self, id: &ProjectionId, offset: &Offset) -> Result<u64> {
        let text = offset.to_string();
        let _turn = self.write_turn().await;
        let version: i64 = sqlx::query_scalar(q(&self.offset_sql.upsert))
            .bind(id.name())
            .bind(id.key())
            .bind(text.as_str())
            .bind(Timestamp::now().as_millis())
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        unsigned(version, "version").map_err(err)
    }

    async fn begin_transaction(&self) -> Result<DB::Public> {
        // SQLite: `begin` is `BEGIN IMMEDIATE` (see `SqliteTransaction`), taken in this
        // process's turn so it does not race this process's writers for the lock; the
        // turn is released at once, as the handler may take any time. PostgreSQL: `BEGIN`.
        let _turn = self.write_turn().await;
        let tx = self.begin().await.map_err(err)?;
        Ok(DB::wrap(tx))
    }

    async fn commit_transaction(
        &self,
        tx: DB::Public,
        id: &ProjectionId,
        expected: u64,
        offset: &Offset,
    ) -> Result<u64> {
        let mut tx = DB::unwrap(tx);
        match self.write_conditional(&mut tx, id, expected, offset).await {
            Ok(Committed::Stored(version)) => {
                tx.commit().await.map_err(err)?;
                Ok(version)
            }
            Ok(Committed::Conflict(stored)) => {
                // Nothing of the transaction is stored whether the rollback is
                // acknowledged or not (an unacknowledged one ends with the connection).
                let _ = tx.rollback().await;
                Err(version_conflict(id, expected, stored))
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(err(e))
            }
        }
    }
}

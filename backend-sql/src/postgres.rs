//! PostgreSQL: a connection pool, tag-ordered writes, `LISTEN/NOTIFY` wake-ups.
//!
//! # The visibility gap, and how writes close it
//! `ordering` is a `BIGSERIAL`: a value is taken when a transaction inserts its row but
//! becomes visible when it commits, so without care a reader can see ordering 7 committed
//! while 6 is still in flight, move its offset past 7 and never come back for 6.
//!
//! Here every transaction that writes tagged events first takes a transaction-scoped
//! advisory lock per distinct tag (`pg_advisory_xact_lock`, keys sorted so two writers
//! never wait on each other in a cycle), *then* inserts its events. The lock is released
//! only after the commit is visible, so the orderings of one tag are taken and committed
//! in the same order: when a reader sees ordering n of a tag, every smaller ordering of
//! that tag is already visible. Untagged writes take no lock, writes of different tags do
//! not wait for each other, and a tag query needs no delay or gap detection. The ids table
//! uses the same trick for the position of a new persistence id (one lock key, taken only
//! by the first write of an id). The README gives the measured cost.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use persistence_api::{AtomicWrite, Error, PersistentEvent, Result, Stores};
use sqlx::postgres::{
    PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgSslMode, Postgres as PgDb,
};
use sqlx::Row;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{redact_url, PostgresConfig, SslMode};
use crate::core::{q, wake, Backend, Sql, SqlStore, POSTGRES};
use crate::error::{connect_error, to_public, SqlError};
use crate::journal::{check_write_fits, commit_or_rollback, write_one, WriteError};
use crate::schema::{bind_event, clamp, encode_tags, migrate_postgres, unsigned, Names};

/// FNV-1a, 64 bits: a hash that is the same in every process and every build, for
/// advisory-lock keys and channel names.
pub(crate) fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The distinct tags of every event of `write`, sorted (the lock order).
fn distinct_tags(write: &AtomicWrite) -> Vec<&str> {
    let mut tags: Vec<&str> = write
        .events()
        .iter()
        .flat_map(|e| e.tags.iter().map(String::as_str))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// The write statements, rendered once for the schema and table prefix.
struct Statements {
    lock: Sql,
    lock_all: Sql,
    write_one: Sql,
    write_many: Sql,
    write_group: Sql,
    write_group_uniform: Sql,
    assign_id_ordering: Sql,
}

impl Statements {
    fn new(n: &Names, notify: bool) -> Statements {
        let ev = n.get("event_journal");
        let tag = n.get("event_tag");
        let ids = n.get("journal_ids");
        let seq = n.get("journal_ids_ordering_seq");
        let s = |sql: String| -> Sql { sql.into() };
        // The notification rides on the write's statement (no extra round trip);
        // PostgreSQL delivers it at commit, and not at all on rollback.
        let notify = if notify {
            "(SELECT 1 FROM pg_notify($16, ''))"
        } else {
            "$16::text"
        };
        let columns = "persistence_id, sequence_nr, writer_id, write_timestamp, event_manifest, \
                       ser_id, ser_manifest, payload, meta_ser_id, meta_ser_manifest, meta_payload, tags";
        let one_event =
            "SELECT $1, v.s, v.w, v.ts, v.em, v.si, v.sm, v.p, v.msi, v.msm, v.mp, v.t \
             FROM (VALUES ($2::bigint, $3::text, $4::bigint, $5::text, $6::text, $7::text, \
             $8::bytea, $9::text, $10::text, $11::bytea, $12::text)) \
             AS v(s, w, ts, em, si, sm, p, msi, msm, mp, t), id_row \
             WHERE id_row.deleted_to < $14";
        let many_events =
            "SELECT $1, u.s, u.w, u.ts, u.em, u.si, u.sm, u.p, u.msi, u.msm, u.mp, u.t \
             FROM UNNEST($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
             $7::text[], $8::bytea[], $9::text[], $10::text[], $11::bytea[], $12::text[]) \
             WITH ORDINALITY AS u(s, w, ts, em, si, sm, p, msi, msm, mp, t, n), id_row \
             WHERE id_row.deleted_to < $14 ORDER BY u.n";
        // A whole atomic write in one statement, each step depending on the one before.
        // Locks are always taken in the order tag locks, then id rows, then the ids lock
        // (here and in batches), so writers never wait on each other in a cycle.
        // 1. `locks` takes the tag locks in key order (an aggregate over the sorted keys, so
        //    all of them before it yields its row);
        // 2. `id_row` reads `locks`, then upserts the id's row (row lock, highest,
        //    deleted-to), but only while the first sequence number is above the stored
        //    highest: every number up to the highest is taken, whether its event was
        //    stored, deleted, or skipped by a write that left a gap (the row stays locked
        //    and `id_row` empty otherwise);
        // 3. `e` joins `id_row`, so every ordering is taken after the locks, and inserts the
        //    events only when `id_row` has its row (and the first sequence number is above
        //    deleted-to, which never exceeds the highest);
        // 4. `t` inserts the tag rows of the events just inserted.
        let write = |source: &str| {
            format!(
                "WITH locks AS (SELECT count(pg_advisory_xact_lock(l.k)) AS n FROM \
                 (SELECT k FROM UNNEST($15::bigint[]) AS u(k) ORDER BY k) AS l), \
                 id_row AS (INSERT INTO {ids} AS i (persistence_id, highest_sequence_nr) \
                 SELECT $1, $13 FROM locks ON CONFLICT (persistence_id) DO UPDATE SET \
                 highest_sequence_nr = GREATEST(i.highest_sequence_nr, EXCLUDED.highest_sequence_nr) \
                 WHERE i.highest_sequence_nr < $14 \
                 RETURNING i.deleted_to, i.id_ordering IS NULL AS new_id), \
                 e AS (INSERT INTO {ev} ({columns}) {source} \
                 RETURNING ordering, sequence_nr, tags), \
                 t AS (INSERT INTO {tag} (tag, ordering, persistence_id, sequence_nr) \
                 SELECT DISTINCT x.tag, e.ordering, $1, e.sequence_nr \
                 FROM e CROSS JOIN LATERAL json_array_elements_text(e.tags::json) AS x(tag)) \
                 SELECT id_row.deleted_to, id_row.new_id, {notify} FROM id_row"
            )
        };
        // A whole group of writes of distinct ids in one statement (group commit): the same
        // steps as `write`, each over all the writes. `w` holds one row per write (id,
        // highest, lowest), `id_row` upserts the ids' rows in id order (byte order, the
        // order every other transaction takes them) and returns only the rows of writes
        // whose first number is above the stored highest, so a write whose number is taken
        // inserts nothing and is answered `Conflict`; `e` inserts the events of the writes
        // `id_row` returned, in the order given (ids in order, numbers in order).
        // The lowest number of the write an upserted row belongs to: in a group whose writes
        // all hold the same number of events (single-event writes: the common case) it is
        // the row's new highest less a parameter; otherwise a look-up in `w` per row, which
        // costs time quadratic in the group's size (measured: a 100-task benchmark of
        // single-event writes 4.2x raw sqlx with the look-up, see the README).
        let write_group = |condition: &str| {
            format!(
            "WITH locks AS (SELECT count(pg_advisory_xact_lock(l.k)) AS n FROM \
             (SELECT k FROM UNNEST($17::bigint[]) AS u(k) ORDER BY k) AS l), \
             w AS (SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS w(pid, hi, lo)), \
             id_row AS (INSERT INTO {ids} AS i (persistence_id, highest_sequence_nr) \
             SELECT w.pid, w.hi FROM w, locks ORDER BY w.pid COLLATE \"C\" \
             ON CONFLICT (persistence_id) DO UPDATE SET \
             highest_sequence_nr = GREATEST(i.highest_sequence_nr, EXCLUDED.highest_sequence_nr) \
             WHERE i.highest_sequence_nr < {condition} \
             RETURNING i.persistence_id AS pid, i.deleted_to, i.id_ordering IS NULL AS new_id), \
             e AS (INSERT INTO {ev} ({columns}) \
             SELECT u.pid, u.s, u.w, u.ts, u.em, u.si, u.sm, u.p, u.msi, u.msm, u.mp, u.t \
             FROM UNNEST($4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::text[], $9::text[], \
             $10::text[], $11::bytea[], $12::text[], $13::text[], $14::bytea[], $15::text[]) \
             WITH ORDINALITY AS u(pid, s, w, ts, em, si, sm, p, msi, msm, mp, t, n) \
             JOIN id_row r ON r.pid = u.pid JOIN w ON w.pid = u.pid \
             WHERE r.deleted_to < w.lo ORDER BY u.n \
             RETURNING ordering, persistence_id, sequence_nr, tags), \
             t AS (INSERT INTO {tag} (tag, ordering, persistence_id, sequence_nr) \
             SELECT DISTINCT x.tag, e.ordering, e.persistence_id, e.sequence_nr \
             FROM e CROSS JOIN LATERAL json_array_elements_text(e.tags::json) AS x(tag)) \
             SELECT id_row.pid, id_row.deleted_to, id_row.new_id, {notify} FROM id_row"
        )
        };
        Statements {
            write_group: s(write_group(
                "(SELECT w.lo FROM w WHERE w.pid = EXCLUDED.persistence_id)",
            )),
            write_group_uniform: s(write_group("EXCLUDED.highest_sequence_nr - $18")),
            lock: s("SELECT pg_advisory_xact_lock($1)".into()),
            lock_all: s("SELECT count(pg_advisory_xact_lock(l.k)) FROM \
                 (SELECT k FROM UNNEST($1::bigint[]) AS u(k) ORDER BY k) AS l"
                .into()),
            write_one: s(write(one_event)),
            write_many: s(write(many_events)),
            assign_id_ordering: s(format!(
                "UPDATE {ids} SET id_ordering = nextval('{seq}') \
                 WHERE persistence_id = ANY($1::text[]) AND id_ordering IS NULL"
            )),
        }
    }
}

/// A query of the PostgreSQL driver.
type PgQuery<'q> = sqlx::query::Query<'q, PgDb, sqlx::postgres::PgArguments>;

/// Binds the eleven columns of `events` after the persistence id, one array each, in the
/// order the `UNNEST` of the multi-event statements takes them: sequence number, writer,
/// timestamp, event manifest, payload (3), metadata (3), tags.
fn bind_event_columns<'q>(query: PgQuery<'q>, events: &[&'q PersistentEvent]) -> PgQuery<'q> {
    let col = |f: &dyn Fn(&'q PersistentEvent) -> Option<&'q str>| -> Vec<Option<&'q str>> {
        events.iter().map(|e| f(e)).collect()
    };
    query
        .bind(
            events
                .iter()
                .map(|e| clamp(e.sequence_nr))
                .collect::<Vec<_>>(),
        )
        .bind(col(&|e| Some(e.writer_id.as_str())))
        .bind(
            events
                .iter()
                .map(|e| e.timestamp.as_millis())
                .collect::<Vec<_>>(),
        )
        .bind(col(&|e| Some(e.event_manifest.as_str())))
        .bind(col(&|e| Some(e.payload.serializer_id.as_str())))
        .bind(col(&|e| Some(e.payload.manifest.as_str())))
        .bind(
            events
                .iter()
                .map(|e| e.payload.bytes.as_ref())
                .collect::<Vec<&[u8]>>(),
        )
        .bind(col(&|e| {
            e.metadata.as_ref().map(|m| m.serializer_id.as_str())
        }))
        .bind(col(&|e| e.metadata.as_ref().map(|m| m.manifest.as_str())))
        .bind(
            events
                .iter()
                .map(|e| e.metadata.as_ref().map(|m| m.bytes.as_ref()))
                .collect::<Vec<Option<&[u8]>>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| encode_tags(&e.tags))
                .collect::<Vec<_>>(),
        )
}

/// Aborts the listener task when the backend goes away.
struct ListenerTask(JoinHandle<()>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One opened PostgreSQL database (one schema and prefix).
pub(crate) struct PgBackend {
    /// The pool and the shared statements.
    store: SqlStore<PgDb>,
    options: PgConnectOptions,
    sql: Statements,
    /// Lock-key namespace: schema and prefix, so namespaces never contend.
    namespace: String,
    channel: String,
    ids_lock_key: i64,
    wake: Arc<watch::Sender<u64>>,
    listener: StdMutex<Option<ListenerTask>>,
    group_commit: crate::group_commit::GroupCommit,
    config: PostgresConfig,
}

/// The password of `password_file`: the file's contents less one trailing newline.
fn read_password_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!(
            "postgres.password_file {}: cannot read it ({e})",
            path.display()
        ))
    })?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(Error::config(format!(
            "postgres.password_file {} is empty",
            path.display()
        )));
    }
    Ok(password.to_owned())
}

/// Reads a PEM file of `key` now, so a missing or malformed file is named at open (sqlx
/// would read it at each connection and say less). Errors never quote the contents.
fn check_pem_file(key: &str, path: &Path) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let data = std::fs::read(path).map_err(|e| {
        Error::config(format!(
            "postgres.{key} {}: cannot read it ({e})",
            path.display()
        ))
    })?;
    let problem = if key == "tls_key_file" {
        PrivateKeyDer::from_pem_slice(&data)
            .err()
            .map(|e| format!("holds no PEM private key ({e})"))
    } else {
        let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&data).collect();
        match certs {
            Ok(certs) if certs.is_empty() => Some("holds no PEM certificate".to_owned()),
            Ok(_) => None,
            Err(e) => Some(format!("is not valid PEM ({e})")),
        }
    };
    match problem {
        Some(problem) => Err(Error::config(format!(
            "postgres.{key} {} {problem}",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Makes ring rustls's process-wide default provider, unless one is installed already.
///
/// sqlx builds its TLS client with ring explicitly, except on one path: `verify-ca`
/// (certificate checked, host name not) calls `WebPkiServerVerifier::builder`, which takes
/// the process's default provider, and panics when rustls cannot pick one. rustls picks one
/// by itself only when exactly one of its providers is compiled in; another crate of the
/// same program (the Cassandra driver's `rustls-023` feature, the AWS SDK) may turn on
/// `aws_lc_rs` as well, and then there is no default until someone installs one. Installing
/// ring when none is installed keeps that path working; an error means another part of the
/// program installed its choice first, which serves as well.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

pub(crate) fn connect_options(config: &PostgresConfig) -> Result<PgConnectOptions> {
    config.validate()?;
    let mut options = PgConnectOptions::from_str(&config.url).map_err(|e| {
        Error::config(format!(
            "postgres.url {:?} is not a PostgreSQL URL",
            redact_url(&config.url)
        ))
        .with_source(e)
    })?;
    if let Some(password) = &config.password {
        options = options.password(password);
    }
    if let Some(path) = &config.password_file {
        options = options.password(&read_password_file(path)?);
    }
    if let Some(mode) = config.ssl_mode {
        options = options.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
    }
    if let Some(path) = &config.tls_ca_file {
        check_pem_file("tls_ca_file", path)?;
        options = options.ssl_root_cert(path);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        check_pem_file("tls_cert_file", cert)?;
        check_pem_file("tls_key_file", key)?;
        options = options.ssl_client_cert(cert).ssl_client_key(key);
    }
    if !matches!(options.get_ssl_mode(), PgSslMode::Disable) {
        ensure_crypto_provider();
    }
    Ok(options.application_name("persistence-backend-sql"))
}

pub(crate) async fn connect(config: &PostgresConfig, options: &PgConnectOptions) -> Result<PgPool> {
    config.validate()?;
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options.clone())
        .await
        .map_err(|e| {
            let error = connect_error(
                e,
                options.get_host(),
                options.get_port(),
                options.get_username(),
                config,
            );
            tracing::debug!(%error, "postgres: open failed");
            error
        })
}

/// Runs the embedded PostgreSQL migrations that have not run yet in `config`'s schema
/// (creating the schema when missing). Safe to run from several processes at once: they
/// take turns on an advisory lock.
pub(crate) async fn create_schema(config: &PostgresConfig) -> Result<()> {
    let options = connect_options(config)?;
    let pool = connect(config, &options).await?;
    let result = migrate_postgres(&pool, config).await;
    pool.close().await;
    result
}

impl PgBackend {
    pub(crate) async fn open(config: PostgresConfig) -> Result<PgBackend> {
        let options = connect_options(&config)?;
        let pool = connect(&config, &options).await?;
        if config.create_schema {
            migrate_postgres(&pool, &config).await?;
        }
        let names = Names::new(Some(&config.schema), &config.table_prefix());
        let namespace = format!("{}.{}", config.schema, config.table_prefix());
        let channel = format!("persistence_{:016x}", fnv1a(&namespace));
        let state_sql = crate::durable_state::StateSql::postgres(
            &names,
            &namespace,
            &channel,
            config.notify,
            config.tag_order_lock,
        );
        let ids_lock_key = fnv1a(&format!("backend-sql:{namespace}:ids")) as i64;
        Ok(PgBackend {
            store: SqlStore::new(
                pool,
                &names,
                &POSTGRES,
                state_sql,
                crate::maintenance::MaintenanceSql::postgres(&names, ids_lock_key),
                config.page_size as usize,
                config.poll_interval,
                false,
                None,
            ),
            options,
            sql: Statements::new(&names, config.notify),
            channel,
            ids_lock_key,
            namespace,
            wake: Arc::new(watch::Sender::new(0)),
            listener: StdMutex::new(None),
            group_commit: crate::group_commit::GroupCommit::new(
                crate::group_commit::GroupCommitSettings {
                    enabled: config.group_commit,
                    window: config.group_commit_window,
                    max_events: config.group_commit_max_events as usize,
                    max_bytes: usize::try_from(config.group_commit_max_bytes).unwrap_or(usize::MAX),
                    max_in_flight: (config.max_connections as usize / 2).clamp(1, 4),
                },
            ),
            config,
        })
    }

    fn tag_lock_key(&self, tag: &str) -> i64 {
        fnv1a(&format!("backend-sql:{}:tag:{tag}", self.namespace)) as i64
    }

    /// Starts the `LISTEN` task on first use (live queries only).
    fn ensure_listener(&self) {
        let Ok(mut slot) = self.listener.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|t| !t.0.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = runtime.spawn(listen(
            self.options.clone(),
            self.channel.clone(),
            self.wake.clone(),
        ));
        *slot = Some(ListenerTask(task));
    }

    /// The sorted, distinct tag-lock keys of `writes` (none with `tag_order_lock = false`).
    fn lock_keys<'a>(&self, writes: impl IntoIterator<Item = &'a AtomicWrite>) -> Vec<i64> {
        if !self.config.tag_order_lock {
            return Vec::new();
        }
        let mut keys: Vec<i64> = writes
            .into_iter()
            .flat_map(distinct_tags)
            .map(|t| self.tag_lock_key(t))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Runs the one statement of `write` (taking the tag locks of `lock_keys` first) and
    /// answers whether the id is new. On `Err` the caller rolls back.
    async fn write_statement(
        &self,
        conn: &mut sqlx::PgConnection,
        write: &AtomicWrite,
        lock_keys: Vec<i64>,
    ) -> std::result::Result<bool, WriteError> {
        let id = write.persistence_id().as_str();
        let events = write.events();
        // One round trip for the whole write (see `Statements::new`).
        let query = if let [event] = events {
            bind_event(sqlx::query(q(&self.sql.write_one)), id, event)
        } else {
            let events: Vec<&PersistentEvent> = events.iter().collect();
            bind_event_columns(sqlx::query(q(&self.sql.write_many)).bind(id), &events)
        };
        let row = query
            .bind(clamp(write.highest_sequence_nr()))
            .bind(clamp(write.lowest_sequence_nr()))
            .bind(lock_keys)
            .bind(self.channel.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        // No row: the first sequence number is at or below the stored highest, and
        // nothing was inserted.
        let Some(row) = row else {
            return Err(WriteError::TakenUntouched);
        };
        let deleted_to: i64 = row.try_get(0)?;
        let new_id: bool = row.try_get(1)?;
        if write.lowest_sequence_nr() <= unsigned(deleted_to, "deleted_to")? {
            // Nothing was inserted; the caller rolls back the raised highest.
            return Err(WriteError::Taken);
        }
        Ok(new_id)
    }

    /// Gives new ids their positions in the persistence-ids queries under the ids lock, so
    /// positions also commit in order. Taken last: its holders wait for nothing else.
    async fn assign_id_orderings(
        &self,
        conn: &mut sqlx::PgConnection,
        ids: Vec<&str>,
    ) -> std::result::Result<(), WriteError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(q(&self.sql.lock))
            .bind(self.ids_lock_key)
            .execute(&mut *conn)
            .await?;
        sqlx::query(q(&self.sql.assign_id_ordering))
            .bind(ids)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Several atomic writes in one transaction (one commit, one WAL flush): every tag
    /// lock of the batch first, in key order, then the writes ordered by persistence id
    /// (each id's writes keep their order), so concurrent batches take their locks in
    /// the same order. A write whose first sequence number is taken changes nothing (its
    /// statement inserts no row and updates none), so it is answered `Conflict` and the
    /// others go on. One result per write, in the order of `writes`. `None` when a write
    /// failed otherwise (the transaction is aborted): it is rolled back and the caller
    /// writes them one by one, each getting its own result.
    async fn write_batch_tx(&self, writes: &[&AtomicWrite]) -> Option<Result<Vec<Result<()>>>> {
        let run = async {
            let mut order: Vec<(usize, &AtomicWrite)> =
                writes.iter().copied().enumerate().collect();
            order.sort_by(|a, b| a.1.persistence_id().cmp(b.1.persistence_id()));
            let keys = self.lock_keys(order.iter().map(|(_, w)| *w));
            let mut tx = self.store.begin().await?;
            let mut results: Vec<Result<()>> = writes.iter().map(|_| Ok(())).collect();
            let mut new_ids = Vec::new();
            let distinct = order
                .windows(2)
                .all(|p| p[0].1.persistence_id() != p[1].1.persistence_id());
            if distinct {
                match self
                    .write_group_statement(&mut tx, &order, keys, &mut results)
                    .await?
                {
                    Some(ids) => new_ids = ids,
                    None => {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                }
            } else {
                if !keys.is_empty() {
                    sqlx::query(q(&self.sql.lock_all))
                        .bind(keys)
                        .execute(&mut *tx)
                        .await?;
                }
                for (index, write) in order {
                    match self.write_statement(&mut tx, write, Vec::new()).await {
                        Ok(true) => new_ids.push(write.persistence_id().as_str()),
                        Ok(false) => {}
                        Err(e @ WriteError::TakenUntouched) => {
                            results[index] = Err(e.into_public())
                        }
                        Err(_) => {
                            tx.rollback().await?;
                            return Ok(None);
                        }
                    }
                }
            }
            new_ids.dedup();
            match self.assign_id_orderings(&mut tx, new_ids).await {
                Ok(()) => {}
                Err(WriteError::Sql(e)) => return Err(e),
                Err(WriteError::Taken | WriteError::TakenUntouched) => {
                    return Err(SqlError::Invariant(
                        "deleted-to while assigning positions".into(),
                    ))
                }
            }
            tx.commit().await?;
            Ok::<_, SqlError>(Some(results))
        };
        match run.await {
            Ok(Some(results)) => Some(Ok(results)),
            Ok(None) => None,
            Err(e) => Some(Err(to_public(e))),
        }
    }

    /// The writes of a group, each of its own id, in one statement (`write_group`, taking
    /// the tag locks of `lock_keys` first). A write whose first sequence number is taken
    /// gets its `Conflict` in `results` and leaves nothing behind. Answers the new ids, or
    /// `None` when a write must be refused otherwise (the caller rolls back).
    async fn write_group_statement<'w>(
        &self,
        conn: &mut sqlx::PgConnection,
        order: &[(usize, &'w AtomicWrite)],
        lock_keys: Vec<i64>,
        results: &mut [Result<()>],
    ) -> std::result::Result<Option<Vec<&'w str>>, SqlError> {
        let ids: Vec<&str> = order
            .iter()
            .map(|(_, w)| w.persistence_id().as_str())
            .collect();
        let events: Vec<&PersistentEvent> = order.iter().flat_map(|(_, w)| w.events()).collect();
        let event_ids: Vec<&str> = order
            .iter()
            .flat_map(|(_, w)| w.events().iter().map(|_| w.persistence_id().as_str()))
            .collect();
        let first_len = order.first().map_or(1, |(_, w)| w.len());
        let uniform = order.iter().all(|(_, w)| w.len() == first_len);
        let sql = if uniform {
            &self.sql.write_group_uniform
        } else {
            &self.sql.write_group
        };
        let query = sqlx::query(q(sql))
            .bind(&ids)
            .bind(
                order
                    .iter()
                    .map(|(_, w)| clamp(w.highest_sequence_nr()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                order
                    .iter()
                    .map(|(_, w)| clamp(w.lowest_sequence_nr()))
                    .collect::<Vec<_>>(),
            )
            .bind(event_ids);
        let query = bind_event_columns(query, &events)
            .bind(self.channel.as_str())
            .bind(lock_keys);
        let query = if uniform {
            query.bind(first_len as i64 - 1)
        } else {
            query
        };
        let rows = query.fetch_all(&mut *conn).await?;
        let mut written = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0)?;
            let deleted_to: i64 = row.try_get(1)?;
            let new_id: bool = row.try_get(2)?;
            written.insert(id, (unsigned(deleted_to, "deleted_to")?, new_id));
        }
        let mut new_ids = Vec::new();
        for (index, write) in order {
            let id = write.persistence_id().as_str();
            match written.get(id) {
                // Nothing inserted: the number is taken.
                None => results[*index] = Err(WriteError::TakenUntouched.into_public()),
                // The id's highest was raised but no event inserted: refused as the single
                // path refuses it, after a rollback.
                Some((deleted_to, _)) if write.lowest_sequence_nr() <= *deleted_to => {
                    return Ok(None)
                }
                Some((_, true)) => new_ids.push(id),
                Some((_, false)) => {}
            }
        }
        Ok(Some(new_ids))
    }

    /// The pool.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.store.pool
    }
}

/// Listens on the namespace's channel and wakes live queries on every notification, and
/// after every (re)connection, since notifications sent meanwhile are lost.
async fn listen(options: PgConnectOptions, channel: String, wake: Arc<watch::Sender<u64>>) {
    loop {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options.clone());
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "postgres LISTEN connection failed; live queries poll");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        listener.ignore_pool_close_event(true);
        if let Err(e) = listener.listen(&channel).await {
            tracing::warn!(error = %e, "postgres LISTEN failed; live queries poll");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        crate::core::wake(&wake);
        loop {
            match listener.try_recv().await {
                Ok(_) => crate::core::wake(&wake),
                Err(e) => {
                    tracing::warn!(error = %e, "postgres LISTEN connection lost; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl Backend for PgBackend {
    const NAME: &'static str = Postgres::NAME;
    /// A B-tree index entry holds at most 2,704 bytes (a third of an 8 KiB page): a
    /// `(tag, ordering)` key with a longer tag fails the insert ("index row size exceeds
    /// btree version 4 maximum"), measured with a 3 KiB tag. 2,600 leaves room for the
    /// ordering and the entry's header, whatever the tag's text compresses to.
    const MAX_TAG_BYTES: Option<usize> = Some(2_600);
    type Store = SqlStore<PgDb>;

    fn store(&self) -> &SqlStore<PgDb> {
        &self.store
    }

    fn wake_sender(&self) -> &watch::Sender<u64> {
        &self.wake
    }

    fn group_commit(&self) -> &crate::group_commit::GroupCommit {
        &self.group_commit
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        if self.config.notify {
            self.ensure_listener();
        }
        self.wake.subscribe()
    }

    /// One atomic write in one transaction: `BEGIN`, one statement, `COMMIT`.
    async fn write_tx(&self, write: &AtomicWrite) -> std::result::Result<(), WriteError> {
        let keys = self.lock_keys([write]);
        let mut tx = self.store.begin().await?;
        let result = match self.write_statement(&mut tx, write, keys).await {
            Ok(true) => {
                self.assign_id_orderings(&mut tx, vec![write.persistence_id().as_str()])
                    .await
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        commit_or_rollback(tx, result).await
    }

    async fn write_all(&self, writes: &[AtomicWrite]) -> Result<Vec<Result<()>>> {
        let mut results: Vec<Option<Result<()>>> = writes
            .iter()
            .map(|w| check_write_fits(w, Self::MAX_TAG_BYTES).err().map(Err))
            .collect();
        let fitting: Vec<&AtomicWrite> = writes
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .map(|(w, _)| w)
            .collect();
        if fitting.len() > 1 {
            match self.write_batch_tx(&fitting).await {
                Some(Ok(batch)) => {
                    if batch.iter().any(Result::is_ok) {
                        wake(&self.wake);
                    }
                    let mut batch = batch.into_iter();
                    return Ok(results
                        .into_iter()
                        .map(|r| r.unwrap_or_else(|| batch.next().unwrap_or(Ok(()))))
                        .collect());
                }
                Some(Err(e)) => return Err(e),
                // One write was refused: write them one by one for their own results.
                None => {}
            }
        }
        for (write, slot) in writes.iter().zip(results.iter_mut()) {
            if slot.is_none() {
                *slot = Some(write_one(self, write).await);
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect())
    }
}

/// An opened PostgreSQL database: its [`Stores`] and its connection pool.
///
/// [`crate::open`] is the short way; this handle also gives the pool, for tools and
/// benchmarks that issue their own statements, and closes it.
pub struct Postgres {
    backend: Arc<PgBackend>,
}

impl Postgres {
    /// The backend's name: its configuration section, its cargo feature in the facade, and
    /// the name its errors carry.
    pub const NAME: &'static str = "postgres";

    /// Connects to the database of `config` (a pool; the first connection is made here, so
    /// an unreachable server fails now) and creates the schema when `create_schema` is set.
    pub async fn open(config: PostgresConfig) -> Result<Postgres> {
        Ok(Postgres {
            backend: Arc::new(PgBackend::open(config).await?),
        })
    }

    /// What this backend declares (the same for both databases: everything, no size
    /// limits, live queries within the poll interval plus 500 ms, projection offsets with
    /// exactly-once transactions).
    pub fn capabilities(&self) -> persistence_api::Capabilities {
        use crate::core::Store;
        crate::capabilities(self.backend.store().poll_interval())
    }

    /// The journal, snapshot store, read journal and projection offset store (behind the
    /// checking layer).
    pub fn stores(&self) -> Stores {
        crate::stores(&self.backend)
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        self.backend.pool()
    }

    /// Closes the pool (waits for connections in use).
    pub async fn close(&self) {
        self.backend.pool().close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn lock_keys_are_stable() {
        // Every process must derive the same key from the same tag.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}

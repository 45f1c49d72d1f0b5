//! The quick-start demo: an event-sourced bank account.
//!
//! It opens the stores from configuration (the default backend unless `PERSISTENCE_BACKEND`
//! or `PERSISTENCE_CONFIG` say otherwise), recovers an account from its latest snapshot
//! plus the events after it, persists new events atomically, shows what a second writer
//! gets, reads the deposits back by tag, resuming from an offset, and keeps the balances
//! of all accounts in a read-model table (`bank_balances`) through an exactly-once
//! projection: each event's change to the table is written in one transaction with the
//! projection's offset, so a second run handles only the events written since.
//!
//! Run: `cargo run --example bank_account`

use futures::StreamExt;
use persistence_stores::projection::{
    Projection, ProjectionId, Source, Typed, TypedExactlyOnceHandler,
};
use persistence_stores::ReadJournalExt;
use persistence_stores::{
    Config, Entity, EntityConfig, Error, ErrorKind, EventEnvelope, EventSourced, Offset,
    PersistenceId, QueryMode, Result, StoreTransaction, Stores,
};
use serde::{Deserialize, Serialize};

/// The account's state.
#[derive(Default, Debug, Clone, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance_cents: i64,
    transactions: u64,
}

/// What happens to an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { cents: i64, reference: String },
    Withdrawn { cents: i64 },
    FeeCharged { cents: i64 },
}

impl EventSourced for Account {
    type Event = AccountEvent;
    const TYPE_NAME: &'static str = "bank.Account";

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { cents, .. } => self.balance_cents += cents,
            AccountEvent::Withdrawn { cents } | AccountEvent::FeeCharged { cents } => {
                self.balance_cents -= cents
            }
        }
        self.transactions += 1;
    }

    /// Every event carries `bank-account` (what the balances projection reads) and one tag
    /// of its kind.
    fn tags(event: &AccountEvent) -> Vec<String> {
        let kind = match event {
            AccountEvent::Deposited { .. } => "bank-deposit",
            AccountEvent::Withdrawn { .. } | AccountEvent::FeeCharged { .. } => "bank-debit",
            AccountEvent::Opened { .. } => "bank-account-opened",
        };
        vec!["bank-account".into(), kind.into()]
    }
}

fn euros(cents: i64) -> String {
    format!("{}.{:02} EUR", cents / 100, cents.abs() % 100)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // An error is printed as its message (kind, what was wrong, the id), not as `Debug`.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let config = Config::load()?;
    let stores = persistence_stores::open(&config).await?;
    let caps = stores.capabilities();
    println!("backend: {} (durable: {})", config.backend(), caps.durable);

    let id = PersistenceId::new("account-alice")?;
    let entity_config = EntityConfig::<Account>::default().snapshot_every(4);

    // 1. Recover: latest snapshot plus the events after it.
    let mut account =
        Entity::<Account>::recover(&stores, id.clone(), entity_config.clone()).await?;
    let info = account.recovery_info();
    println!(
        "recovered {id} at sequence number {}: snapshot {:?}, {} events replayed, balance {}",
        account.sequence_nr(),
        info.snapshot_sequence_nr,
        info.events_replayed,
        euros(account.state().balance_cents)
    );
    if account.state().owner.is_none() {
        account
            .persist_one(AccountEvent::Opened {
                owner: "Alice".into(),
            })
            .await?;
        println!("opened the account (event 1)");
    }

    // 2. Persist: single events, and a withdrawal with its fee as one atomic write.
    let run = account.sequence_nr();
    for (cents, reference) in [(10_000, "salary"), (2_550, "refund"), (725, "gift")] {
        account
            .persist_one(AccountEvent::Deposited {
                cents,
                reference: format!("{reference} #{run}"),
            })
            .await?;
        println!(
            "deposited {} -> balance {}",
            euros(cents),
            euros(account.state().balance_cents)
        );
    }
    let withdrawal = 4_000;
    if account.state().balance_cents >= withdrawal + 150 {
        account
            .persist(vec![
                AccountEvent::Withdrawn { cents: withdrawal },
                AccountEvent::FeeCharged { cents: 150 },
            ])
            .await?;
        println!(
            "withdrew {} plus a {} fee in one atomic write -> balance {} (sequence number {})",
            euros(withdrawal),
            euros(150),
            euros(account.state().balance_cents),
            account.sequence_nr()
        );
    }

    // 3. Recover a second copy: snapshot plus events give the same state.
    let copy = Entity::<Account>::recover(&stores, id.clone(), entity_config.clone()).await?;
    let info = copy.recovery_info();
    println!(
        "a fresh recovery starts from the snapshot at {:?} and replays {} events: balance {}, {} transactions",
        info.snapshot_sequence_nr,
        info.events_replayed,
        euros(copy.state().balance_cents),
        copy.state().transactions
    );
    assert_eq!(copy.state().balance_cents, account.state().balance_cents);

    // 4. A second writer on the same id: the stale copy loses with a Conflict, nothing is
    //    overwritten.
    let mut stale = copy;
    account
        .persist_one(AccountEvent::Deposited {
            cents: 100,
            reference: "coffee refund".into(),
        })
        .await?;
    match stale
        .persist_one(AccountEvent::Withdrawn { cents: 1 })
        .await
    {
        Err(e) if e.kind() == ErrorKind::Conflict => println!("a second writer was refused: {e}"),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // 5. Read side: every deposit by tag, then resume after the first one.
    if caps.query_events_by_tag {
        let read = &stores.read_journal;
        let deposits: Vec<_> = read
            .current_events_by_tag("bank-deposit".into(), Offset::NoOffset)
            .collect()
            .await;
        let deposits: Vec<_> = deposits.into_iter().collect::<Result<_>>()?;
        println!("{} deposits tagged \"bank-deposit\":", deposits.len());
        let codec = entity_config.event_codec.clone();
        for env in &deposits {
            let event = codec.decode(&env.event.payload)?;
            println!(
                "  {} #{} at offset {:?}: {:?}",
                env.persistence_id(),
                env.sequence_nr(),
                env.offset,
                event
            );
        }
        if let Some(first) = deposits.first() {
            let rest = read
                .current_events_by_tag("bank-deposit".into(), first.offset.clone())
                .count()
                .await;
            println!(
                "resuming after offset {:?} yields the other {rest}",
                first.offset
            );
            assert_eq!(rest, deposits.len() - 1);
        }
    }

    println!(
        "final balance of {id}: {} after {} events",
        euros(account.state().balance_cents),
        account.sequence_nr()
    );

    // 6. A read model: the balances table, kept by an exactly-once projection.
    balances_read_model(&stores, entity_config).await
}

/// The read-model table, in the journal's own database. SQLite and PostgreSQL take the
/// same statements here (`?` for SQLite's parameters, `$n` for PostgreSQL's).
const CREATE_BALANCES: &str = "CREATE TABLE IF NOT EXISTS bank_balances (\
    account TEXT PRIMARY KEY, balance_cents BIGINT NOT NULL, events BIGINT NOT NULL)";

/// Keeps `bank_balances`: each event adds its amount to its account's row, in the
/// projection's transaction, so the row and the projection's offset move together.
struct Balances;

#[persistence_stores::async_trait]
impl TypedExactlyOnceHandler<AccountEvent> for Balances {
    async fn handle(
        &mut self,
        transaction: &mut StoreTransaction,
        event: AccountEvent,
        envelope: &EventEnvelope,
    ) -> Result<()> {
        let change = match event {
            AccountEvent::Opened { .. } => 0,
            AccountEvent::Deposited { cents, .. } => cents,
            AccountEvent::Withdrawn { cents } | AccountEvent::FeeCharged { cents } => -cents,
        };
        let account = envelope.persistence_id().as_str();
        upsert_balance(transaction, account, change).await
    }
}

async fn upsert_balance(
    transaction: &mut StoreTransaction,
    account: &str,
    change: i64,
) -> Result<()> {
    use persistence_stores::sql::{self, sqlx};
    let failed = |e: sqlx::Error| Error::new(ErrorKind::Storage, "bank_balances").with_source(e);
    match transaction.backend() {
        "sqlite" => {
            let conn = sql::SqliteTransaction::of(transaction)?.connection();
            sqlx::query(CREATE_BALANCES)
                .execute(&mut *conn)
                .await
                .map_err(failed)?;
            sqlx::query(
                "INSERT INTO bank_balances (account, balance_cents, events) VALUES (?, ?, 1) \
                 ON CONFLICT (account) DO UPDATE SET balance_cents = balance_cents + excluded.balance_cents, events = events + 1",
            )
            .bind(account)
            .bind(change)
            .execute(&mut *conn)
            .await
            .map_err(failed)?;
        }
        #[cfg(feature = "postgres")]
        "postgres" => {
            let conn = sql::PostgresTransaction::of(transaction)?.connection();
            sqlx::query(CREATE_BALANCES)
                .execute(&mut *conn)
                .await
                .map_err(failed)?;
            sqlx::query(
                "INSERT INTO bank_balances (account, balance_cents, events) VALUES ($1, $2, 1) \
                 ON CONFLICT (account) DO UPDATE SET balance_cents = bank_balances.balance_cents + excluded.balance_cents, events = bank_balances.events + 1",
            )
            .bind(account)
            .bind(change)
            .execute(&mut *conn)
            .await
            .map_err(failed)?;
        }
        other => {
            return Err(Error::unsupported(format!(
                "the balances read model is a SQL table; the {other} backend has none"
            )))
        }
    }
    Ok(())
}

/// Runs the balances projection over every account event written so far (from its stored
/// offset), then prints the table.
async fn balances_read_model(stores: &Stores, entity: EntityConfig<Account>) -> Result<()> {
    if !matches!(stores.backend(), "sqlite" | "postgres") {
        println!(
            "the balances read model lives in a SQL table; it runs on the sqlite and postgres backends, not on {}",
            stores.backend()
        );
        return Ok(());
    }
    let id = ProjectionId::new("bank-balances", "bank-account")?;
    let before = stores.offsets.read_offset(&id).await?;
    let projection = Projection::builder(
        id.clone(),
        Source::tag("bank-account", QueryMode::Current),
        stores,
    )
    .exactly_once(Typed::new(entity.event_codec, Balances))?;
    let status = projection.run().await?;
    println!(
        "projection {id}: resumed from {}, handled {} new events exactly once, offset now {}",
        before.map_or(Offset::NoOffset, |s| s.offset),
        status.handled,
        status.committed
    );
    // Reading the table in a transaction of the same store (dropped, so rolled back).
    let mut read = stores.offsets.begin_transaction().await?;
    let rows: Vec<(String, i64, i64)> = {
        use persistence_stores::sql::{self, sqlx};
        let query = "SELECT account, balance_cents, events FROM bank_balances ORDER BY account";
        let result = match read.backend() {
            "sqlite" => {
                sqlx::query_as(query)
                    .fetch_all(sql::SqliteTransaction::of(&mut read)?.connection())
                    .await
            }
            #[cfg(feature = "postgres")]
            "postgres" => {
                sqlx::query_as(query)
                    .fetch_all(sql::PostgresTransaction::of(&mut read)?.connection())
                    .await
            }
            other => {
                return Err(Error::unsupported(format!(
                    "the balances read model is a SQL table; the {other} backend has none"
                )))
            }
        };
        result.map_err(|e| Error::new(ErrorKind::Storage, "bank_balances").with_source(e))?
    };
    println!("bank_balances:");
    for (account, cents, events) in rows {
        println!("  {account}: {} ({events} events)", euros(cents));
    }
    Ok(())
}

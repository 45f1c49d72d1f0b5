//! The quick-start demo: an event-sourced bank account.
//!
//! It opens the stores from configuration (the default backend unless `PERSISTENCE_BACKEND`
//! or `PERSISTENCE_CONFIG` say otherwise), recovers an account from its latest snapshot
//! plus the events after it, persists new events atomically, shows what a second writer
//! gets, and reads the deposits back by tag, resuming from an offset.
//!
//! Run: `cargo run --example bank_account`

use futures::StreamExt;
use persistence_stores::ReadJournalExt;
use persistence_stores::{
    Config, Entity, EntityConfig, ErrorKind, EventSourced, Offset, PersistenceId, Result,
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

    fn tags(event: &AccountEvent) -> Vec<String> {
        match event {
            AccountEvent::Deposited { .. } => vec!["bank-deposit".into()],
            AccountEvent::Withdrawn { .. } | AccountEvent::FeeCharged { .. } => {
                vec!["bank-debit".into()]
            }
            AccountEvent::Opened { .. } => vec!["bank-account-opened".into()],
        }
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
    Ok(())
}

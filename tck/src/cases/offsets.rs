//! Offset store cases: [`persistence_api::OffsetStore`] through `Stores::offsets`. Commits
//! are conditional on the version read, so two instances of one projection never both
//! commit; every kind of offset comes back as stored; set and clear move the version on;
//! exactly-once transactions commit the offset with them, or nothing.

use persistence_api::{ErrorKind, Offset, ProjectionId, StoredOffset};

use super::{cases, Case};
use crate::context::Ctx;

pub fn cases() -> Vec<Case> {
    cases![
        "offsets::nothing_committed_reads_none" => [ProjectionOffsets] nothing_committed;
        "offsets::every_offset_kind_reads_back_as_committed" => [ProjectionOffsets] every_kind;
        "offsets::commit_over_a_moved_on_version_is_a_conflict_naming_both" => [ProjectionOffsets] stale_commit;
        "offsets::racing_commits_of_one_version_have_one_winner" => [ProjectionOffsets] racing_commits;
        "offsets::set_and_clear_move_the_version_on" => [ProjectionOffsets] set_and_clear;
        "offsets::name_and_key_both_identify_the_offset" => [ProjectionOffsets] keyed_by_both;
        "offsets::offsets_survive_reopen" => [ProjectionOffsets, Durable] survive_reopen;
        "offsets::transactions_are_as_declared" => [ProjectionOffsets] transactions_as_declared;
        "offsets::transaction_commits_the_offset_or_nothing" => [ExactlyOnceProjections] transaction_commits;
    ]
}

/// A projection id of this case's namespace.
pub(crate) fn projection_id(ctx: &Ctx, name: &str) -> ProjectionId {
    ProjectionId::new(format!("{}-{name}", ctx.namespace), "key-1").expect("a valid projection id")
}

async fn read(ctx: &Ctx, id: &ProjectionId) -> Option<StoredOffset> {
    ctx.stores
        .offsets
        .read_offset(id)
        .await
        .unwrap_or_else(|e| panic!("read_offset({id}): {e:#}"))
}

/// A projection that never committed reads `None`, and its first commit expects 0.
async fn nothing_committed(ctx: Ctx) {
    let id = projection_id(&ctx, "fresh");
    assert_eq!(read(&ctx, &id).await, None);
    let version = ctx
        .stores
        .offsets
        .commit_offset(&id, 0, Offset::Sequence(1))
        .await
        .expect("the first commit expects version 0");
    assert_eq!(version, 1);
}

/// Each kind of offset a query hands out is stored and read back equal, with the version
/// counting commits.
async fn every_kind(ctx: Ctx) {
    let id = projection_id(&ctx, "kinds");
    let kinds = [
        Offset::Sequence(0),
        Offset::Sequence(u64::MAX >> 1),
        Offset::Token("b17:0003|x y/z\"'".into()),
        Offset::TimeBasedUuid(
            uuid::Uuid::parse_str("a4e2f1d0-1234-11ee-8c90-0242ac120002").unwrap(),
        ),
        Offset::NoOffset,
        Offset::Sequence(42),
    ];
    for (i, offset) in kinds.into_iter().enumerate() {
        let version = ctx
            .stores
            .offsets
            .commit_offset(&id, i as u64, offset.clone())
            .await
            .unwrap_or_else(|e| panic!("committing {offset}: {e:#}"));
        assert_eq!(version, i as u64 + 1, "committing {offset}");
        assert_eq!(
            read(&ctx, &id).await,
            Some(StoredOffset {
                offset: offset.clone(),
                version
            }),
            "{offset} reads back as committed"
        );
    }
}

/// A commit that expects a version the store has moved past is a `Conflict` naming the
/// projection and both versions, and stores nothing.
async fn stale_commit(ctx: Ctx) {
    let id = projection_id(&ctx, "stale");
    let offsets = &ctx.stores.offsets;
    offsets
        .commit_offset(&id, 0, Offset::Sequence(1))
        .await
        .unwrap();
    offsets
        .commit_offset(&id, 1, Offset::Sequence(2))
        .await
        .unwrap();
    for expected in [0, 1, 3] {
        let err = offsets
            .commit_offset(&id, expected, Offset::Sequence(99))
            .await
            .expect_err("a commit over another version");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
        let text = err.to_string();
        assert!(
            text.contains(&id.to_string()),
            "names the projection: {text}"
        );
        assert!(
            text.contains(&format!("expected version {expected}"))
                && text.contains("stored version 2"),
            "names both versions: {text}"
        );
    }
    assert_eq!(
        read(&ctx, &id).await,
        Some(StoredOffset {
            offset: Offset::Sequence(2),
            version: 2
        })
    );
}

/// Eight commits of one expected version racing: exactly one is stored, the others are
/// conflicts; and again from the version the winner made.
async fn racing_commits(ctx: Ctx) {
    let id = projection_id(&ctx, "race");
    let offsets = ctx.stores.offsets.clone();
    for round in 0..3u64 {
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let (offsets, id) = (offsets.clone(), id.clone());
                tokio::spawn(async move {
                    offsets
                        .commit_offset(&id, round, Offset::Sequence(round * 100 + i))
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v, round + 1);
                    winners.push(i as u64);
                }
                Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e:#}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: one winner, got {winners:?}"
        );
        let stored = read(&ctx, &id).await.unwrap();
        assert_eq!(
            stored,
            StoredOffset {
                offset: Offset::Sequence(round * 100 + winners[0]),
                version: round + 1
            },
            "the winner's offset is stored"
        );
    }
}

/// `set_offset` stores whatever version is there and moves it on, so a commit based on
/// the version before is a conflict; `clear_offset` stores `NoOffset` the same way.
async fn set_and_clear(ctx: Ctx) {
    let id = projection_id(&ctx, "set");
    let offsets = &ctx.stores.offsets;
    assert_eq!(
        offsets.set_offset(&id, Offset::Sequence(5)).await.unwrap(),
        1
    );
    offsets
        .commit_offset(&id, 1, Offset::Sequence(6))
        .await
        .unwrap();
    let v = offsets.set_offset(&id, Offset::Sequence(3)).await.unwrap();
    assert_eq!(v, 3);
    let err = offsets
        .commit_offset(&id, 2, Offset::Sequence(7))
        .await
        .expect_err("a commit from before the set");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let v = offsets.clear_offset(&id).await.unwrap();
    assert_eq!(v, 4);
    assert_eq!(
        read(&ctx, &id).await,
        Some(StoredOffset {
            offset: Offset::NoOffset,
            version: 4
        })
    );
    assert_eq!(
        offsets
            .commit_offset(&id, 4, Offset::Sequence(1))
            .await
            .unwrap(),
        5
    );
}

/// Projections that share a name (or a key) keep separate offsets; names and keys with
/// separators, quotes, non-ASCII text and the longest allowed length are stored as given.
async fn keyed_by_both(ctx: Ctx) {
    let ns = &ctx.namespace;
    let long = "é".repeat(persistence_api::MAX_PROJECTION_ID_PART_BYTES / 2);
    let ids = [
        ProjectionId::new(format!("{ns}-shared"), "a").unwrap(),
        ProjectionId::new(format!("{ns}-shared"), "b").unwrap(),
        ProjectionId::new(format!("{ns}-other"), "a").unwrap(),
        ProjectionId::new(format!("{ns}-shared/a"), "x").unwrap(),
        ProjectionId::new(format!("{ns}-shared"), "a/x").unwrap(),
        ProjectionId::new(format!("{ns}-q'uo\"te|#%"), "ключ 鍵").unwrap(),
        ProjectionId::new(format!("{ns}-l"), long.clone()).unwrap(),
    ];
    for (i, id) in ids.iter().enumerate() {
        ctx.stores
            .offsets
            .commit_offset(id, 0, Offset::Sequence(i as u64 + 10))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:#}"));
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            read(&ctx, id).await,
            Some(StoredOffset {
                offset: Offset::Sequence(i as u64 + 10),
                version: 1
            }),
            "{id}"
        );
    }
}

/// New stores over the same namespace read the offsets and versions committed before.
async fn survive_reopen(ctx: Ctx) {
    let id = projection_id(&ctx, "durable");
    ctx.stores
        .offsets
        .commit_offset(&id, 0, Offset::Sequence(7))
        .await
        .unwrap();
    let reopened = ctx.reopen().await;
    assert_eq!(
        reopened.offsets.read_offset(&id).await.unwrap(),
        Some(StoredOffset {
            offset: Offset::Sequence(7),
            version: 1
        })
    );
    let err = reopened
        .offsets
        .commit_offset(&id, 0, Offset::Sequence(8))
        .await
        .expect_err("version 0 is gone after reopening too");
    assert_eq!(err.kind(), ErrorKind::Conflict);
}

/// Transactions work exactly when `exactly_once_projections` is declared: otherwise
/// `supports_transactions` is false and both calls are `Unsupported`, naming the backend.
async fn transactions_as_declared(ctx: Ctx) {
    let declared = ctx.caps.exactly_once_projections;
    assert_eq!(ctx.stores.offsets.supports_transactions(), declared);
    match ctx.stores.offsets.begin_transaction().await {
        Ok(tx) => {
            assert!(
                declared,
                "a transaction opened without the capability declared"
            );
            assert_eq!(tx.backend(), ctx.stores.backend());
        }
        Err(e) => {
            assert!(!declared, "declared, yet begin_transaction failed: {e:#}");
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e:#}");
            assert_eq!(e.backend(), Some(ctx.stores.backend()));
        }
    }
}

/// An empty transaction commits the offset conditionally: stored with the next version;
/// over a moved-on version it is a `Conflict` and nothing is stored. Two transactions of
/// one version racing: one winner.
async fn transaction_commits(ctx: Ctx) {
    let id = projection_id(&ctx, "tx");
    let offsets = ctx.stores.offsets.clone();
    let tx = offsets.begin_transaction().await.unwrap();
    assert_eq!(
        offsets
            .commit_transaction(tx, &id, 0, Offset::Sequence(1))
            .await
            .unwrap(),
        1
    );
    let tx = offsets.begin_transaction().await.unwrap();
    let err = offsets
        .commit_transaction(tx, &id, 0, Offset::Sequence(2))
        .await
        .expect_err("a transaction over a moved-on version");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
    assert_eq!(
        read(&ctx, &id).await,
        Some(StoredOffset {
            offset: Offset::Sequence(1),
            version: 1
        })
    );
    let racers: Vec<_> = (0..4u64)
        .map(|i| {
            let (offsets, id) = (offsets.clone(), id.clone());
            tokio::spawn(async move {
                let tx = offsets.begin_transaction().await?;
                offsets
                    .commit_transaction(tx, &id, 1, Offset::Sequence(10 + i))
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(v) => {
                assert_eq!(v, 2);
                wins += 1;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e:#}"),
        }
    }
    assert_eq!(wins, 1, "one of four racing transactions commits");
}

//! Snapshot store cases: criteria, deletes, overwrite, large snapshots.

use persistence_api::{
    ErrorKind, Payload, PersistenceId, SelectedSnapshot, SnapshotMetadata,
    SnapshotSelectionCriteria as Criteria, Timestamp,
};

use super::{cases, Case};
use crate::context::Ctx;

pub fn cases() -> Vec<Case> {
    cases![
        "snapshot::unknown_id_loads_none" => [Snapshots] unknown_id;
        "snapshot::max_timestamp_below_all_loads_none" => [Snapshots] max_ts_100;
        "snapshot::max_sequence_nr_below_all_loads_none" => [Snapshots] max_seq_7;
        "snapshot::none_criteria_load_none" => [Snapshots] none_criteria;
        "snapshot::latest" => [Snapshots] latest;
        "snapshot::max_sequence_nr_13" => [Snapshots] max_seq_13;
        "snapshot::max_sequence_nr_and_timestamp" => [Snapshots] max_seq_and_ts;
        "snapshot::min_bounds_are_inclusive" => [Snapshots] min_bounds;
        "snapshot::timestamp_bounds_at_their_edges" => [Snapshots] timestamp_edges;
        "snapshot::delete_single" => [Snapshots] delete_single;
        "snapshot::delete_single_with_wrong_timestamp_keeps_it" => [Snapshots] delete_single_wrong_ts;
        "snapshot::delete_matching" => [Snapshots] delete_matching;
        "snapshot::delete_matching_below_timestamp_keeps_it" => [Snapshots] delete_matching_ts_edge;
        "snapshot::delete_all_then_save_again" => [Snapshots] delete_all_then_save;
        "snapshot::save_again_overwrites" => [Snapshots] overwrite;
        "snapshot::large_10_kb" => [Snapshots] large_10k;
        "snapshot::large_1_mb" => [LargeSnapshots] large_1mb;
        "snapshot::at_size_limit_is_stored" => [SnapshotSizeLimit] at_limit;
        "snapshot::over_size_limit_is_rejected" => [SnapshotSizeLimit] over_limit;
        "snapshot::large_4_mib" => [HugeSnapshots] large_4mib;
        "snapshot::delete_matching_with_minimum_bounds" => [Snapshots] delete_with_min_bounds;
        "snapshot::delete_matching_with_minimum_timestamp" => [Snapshots] delete_with_min_timestamp;
        "snapshot::concurrent_saves_at_one_sequence_nr_one_wins_whole" => [Snapshots] concurrent_saves;
        "snapshot::metadata_round_trips" => [SnapshotMetadata] metadata;
        "snapshot::ids_are_independent" => [Snapshots] independent;
    ]
}

/// The timestamp the setup gives the snapshot at `seq` (11..15).
fn ts(seq: u64) -> Timestamp {
    Timestamp::from_millis(1_600_000_000_000 + seq as i64 * 1000)
}

fn payload(i: u64) -> Payload {
    Payload::new("tck", "tck.Snapshot/v1", format!("s-{i}").into_bytes())
}

/// Snapshots at 11..15 with payloads s-1..s-5.
async fn setup(ctx: &Ctx) -> PersistenceId {
    let id = ctx.pid("p");
    for (i, seq) in (11..=15).enumerate() {
        let meta = SnapshotMetadata::new(id.clone(), seq).with_timestamp(ts(seq));
        ctx.stores
            .snapshots
            .save_snapshot(meta, payload(i as u64 + 1))
            .await
            .expect("save");
    }
    id
}

async fn load(ctx: &Ctx, id: &PersistenceId, c: Criteria) -> Option<SelectedSnapshot> {
    ctx.stores
        .snapshots
        .load_snapshot(id, c)
        .await
        .expect("load")
}

async fn load_seq(ctx: &Ctx, id: &PersistenceId, c: Criteria) -> Option<u64> {
    load(ctx, id, c).await.map(|s| s.metadata.sequence_nr)
}

async fn unknown_id(ctx: Ctx) {
    setup(&ctx).await;
    assert_eq!(
        load(&ctx, &ctx.pid("unknown"), Criteria::latest()).await,
        None
    );
}

async fn max_ts_100(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(
        load_seq(
            &ctx,
            &id,
            Criteria::latest().with_max_timestamp(Timestamp::from_millis(100))
        )
        .await,
        None
    );
}

async fn max_seq_7(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(
        load_seq(&ctx, &id, Criteria::latest().with_max_sequence_nr(7)).await,
        None
    );
}

async fn none_criteria(ctx: Ctx) {
    let id = setup(&ctx).await;
    assert_eq!(load_seq(&ctx, &id, Criteria::none()).await, None);
    ctx.stores
        .snapshots
        .delete_snapshots(&id, Criteria::none())
        .await
        .expect("delete none");
    assert_eq!(load_seq(&ctx, &id, Criteria::latest()).await, Some(15));
}

async fn latest(ctx: Ctx) {
    let id = setup(&ctx).await;
    let s = load(&ctx, &id, Criteria::latest())
        .await
        .expect("a snapshot");
    assert_eq!(s.metadata.sequence_nr, 15);
    assert_eq!(
        s.metadata.timestamp,
        ts(15),
        "the timestamp loads back equal"
    );
    assert_eq!(s.metadata.persistence_id, id);
    assert_eq!(s.snapshot, payload(5));
}

async fn max_seq_13(ctx: Ctx) {
    let id = setup(&ctx).await;
    let s = load(&ctx, &id, Criteria::latest().with_max_sequence_nr(13))
        .await
        .expect("a snapshot");
    assert_eq!((s.metadata.sequence_nr, s.snapshot), (13, payload(3)));
    assert_eq!(s.metadata.timestamp, ts(13));
}

async fn max_seq_and_ts(ctx: Ctx) {
    let id = setup(&ctx).await;
    let c = Criteria::latest()
        .with_max_sequence_nr(13)
        .with_max_timestamp(ts(13));
    assert_eq!(load_seq(&ctx, &id, c).await, Some(13));
    let c = Criteria::latest()
        .with_max_sequence_nr(15)
        .with_max_timestamp(ts(12));
    assert_eq!(
        load_seq(&ctx, &id, c).await,
        Some(12),
        "the timestamp bound picks the latest below it"
    );
}

async fn min_bounds(ctx: Ctx) {
    let id = setup(&ctx).await;
    let c = Criteria::latest().with_min_sequence_nr(15);
    assert_eq!(load_seq(&ctx, &id, c).await, Some(15));
    let c = Criteria::latest().with_min_sequence_nr(16);
    assert_eq!(load_seq(&ctx, &id, c).await, None);
    let c = Criteria::latest()
        .with_min_sequence_nr(12)
        .with_max_sequence_nr(12);
    assert_eq!(load_seq(&ctx, &id, c).await, Some(12));
    let c = Criteria::latest()
        .with_max_sequence_nr(14)
        .with_min_timestamp(ts(14));
    assert_eq!(load_seq(&ctx, &id, c).await, Some(14));
    let c = Criteria::latest()
        .with_max_sequence_nr(13)
        .with_min_timestamp(ts(14));
    assert_eq!(load_seq(&ctx, &id, c).await, None);
}

async fn timestamp_edges(ctx: Ctx) {
    let id = setup(&ctx).await;
    let just_below = Timestamp::from_millis(ts(14).as_millis() - 1);
    assert_eq!(
        load_seq(&ctx, &id, Criteria::latest().with_max_timestamp(just_below)).await,
        Some(13)
    );
    assert_eq!(
        load_seq(&ctx, &id, Criteria::latest().with_max_timestamp(ts(14))).await,
        Some(14)
    );
    let c = Criteria::latest()
        .with_min_timestamp(ts(11))
        .with_max_timestamp(ts(11));
    assert_eq!(load_seq(&ctx, &id, c).await, Some(11));
}

async fn delete_single(ctx: Ctx) {
    let id = setup(&ctx).await;
    let meta = SnapshotMetadata::new(id.clone(), 13).with_timestamp(Timestamp::MIN);
    ctx.stores
        .snapshots
        .delete_snapshot(&meta)
        .await
        .expect("delete");
    let s = load(&ctx, &id, Criteria::latest().with_max_sequence_nr(13))
        .await
        .expect("a snapshot");
    assert_eq!((s.metadata.sequence_nr, s.snapshot), (12, payload(2)));
    assert_eq!(load_seq(&ctx, &id, Criteria::latest()).await, Some(15));
    // Deleting what does not exist succeeds.
    ctx.stores
        .snapshots
        .delete_snapshot(&meta)
        .await
        .expect("delete again");
}

async fn delete_single_wrong_ts(ctx: Ctx) {
    let id = setup(&ctx).await;
    let meta = SnapshotMetadata::new(id.clone(), 13).with_timestamp(ts(12));
    ctx.stores
        .snapshots
        .delete_snapshot(&meta)
        .await
        .expect("delete");
    assert_eq!(
        load_seq(&ctx, &id, Criteria::latest().with_max_sequence_nr(13)).await,
        Some(13)
    );
    let meta = SnapshotMetadata::new(id.clone(), 13).with_timestamp(ts(13));
    ctx.stores
        .snapshots
        .delete_snapshot(&meta)
        .await
        .expect("delete");
    assert_eq!(
        load_seq(&ctx, &id, Criteria::latest().with_max_sequence_nr(13)).await,
        Some(12)
    );
}

async fn delete_matching(ctx: Ctx) {
    let id = setup(&ctx).await;
    let c = Criteria::latest()
        .with_max_sequence_nr(13)
        .with_max_timestamp(ts(13));
    ctx.stores
        .snapshots
        .delete_snapshots(&id, c)
        .await
        .expect("delete");
    assert_eq!(load_seq(&ctx, &id, c).await, None);
    assert_eq!(
        load_seq(&ctx, &id, Criteria::latest().with_max_sequence_nr(14)).await,
        Some(14)
    );
}

async fn delete_matching_ts_edge(ctx: Ctx) {
    let id = setup(&ctx).await;
    let c = Criteria::latest()
        .with_max_sequence_nr(14)
        .with_max_timestamp(Timestamp::from_millis(ts(14).as_millis() - 1));
    ctx.stores
        .snapshots
        .delete_snapshots(&id, c)
        .await
        .expect("delete");
    assert_eq!(
        load_seq(&ctx, &id, Criteria::latest().with_max_sequence_nr(14)).await,
        Some(14)
    );
    assert_eq!(
        load_seq(&ctx, &id, Criteria::latest().with_max_sequence_nr(13)).await,
        None
    );
}

async fn delete_all_then_save(ctx: Ctx) {
    let id = setup(&ctx).await;
    ctx.stores
        .snapshots
        .delete_snapshots(&id, Criteria::latest())
        .await
        .expect("delete");
    assert_eq!(load_seq(&ctx, &id, Criteria::latest()).await, None);
    let meta = SnapshotMetadata::new(id.clone(), 20).with_timestamp(ts(20));
    ctx.stores
        .snapshots
        .save_snapshot(meta, payload(9))
        .await
        .expect("save");
    assert_eq!(
        load(&ctx, &id, Criteria::latest()).await.unwrap().snapshot,
        payload(9)
    );
}

async fn overwrite(ctx: Ctx) {
    let id = setup(&ctx).await;
    let meta = SnapshotMetadata::new(id.clone(), 15).with_timestamp(ts(16));
    ctx.stores
        .snapshots
        .save_snapshot(meta, payload(42))
        .await
        .expect("save again");
    let s = load(&ctx, &id, Criteria::latest())
        .await
        .expect("a snapshot");
    assert_eq!((s.metadata.sequence_nr, s.snapshot), (15, payload(42)));
    assert_eq!(s.metadata.timestamp, ts(16));
}

/// Saves a snapshot of `size` payload bytes and loads it back equal.
async fn save_and_load_size(ctx: &Ctx, size: usize) {
    let id = ctx.pid("large");
    let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let snap = Payload::new("tck", "big/v1", bytes);
    save_and_load(ctx, &id, snap).await;
}

/// Saves `snap` at 3 and loads it back equal.
async fn save_and_load(ctx: &Ctx, id: &PersistenceId, snap: Payload) {
    let size = snap.bytes.len();
    let meta = SnapshotMetadata::new(id.clone(), 3).with_timestamp(ts(3));
    ctx.stores
        .snapshots
        .save_snapshot(meta, snap.clone())
        .await
        .unwrap_or_else(|e| panic!("saving a snapshot of {size} bytes: {e}"));
    let s = load(ctx, id, Criteria::latest())
        .await
        .expect("the large snapshot loads");
    assert_eq!(s.snapshot.bytes.len(), size);
    assert!(s.snapshot == snap, "the large snapshot loads back equal");
}

async fn large_10k(ctx: Ctx) {
    save_and_load_size(&ctx, 10_000).await;
}

async fn large_1mb(ctx: Ctx) {
    save_and_load_size(&ctx, 1024 * 1024).await;
}

async fn large_4mib(ctx: Ctx) {
    save_and_load_size(&ctx, super::HUGE_SNAPSHOT).await;
}

/// The declared limit (the case needs one).
fn declared_limit(ctx: &Ctx) -> usize {
    ctx.caps
        .max_snapshot_size
        .expect("the case needs a declared max_snapshot_size")
}

/// A snapshot whose `stored_size()` is exactly `size`.
fn sized_snapshot(size: usize) -> Payload {
    let mut p = Payload::new("tck", "sized/v1", Vec::new());
    let overhead = p.stored_size();
    p.bytes = (0..size - overhead)
        .map(|i| (i % 241) as u8)
        .collect::<Vec<u8>>()
        .into();
    assert_eq!(p.stored_size(), size);
    p
}

async fn at_limit(ctx: Ctx) {
    let id = ctx.pid("at-limit");
    save_and_load(&ctx, &id, sized_snapshot(declared_limit(&ctx))).await;
}

async fn over_limit(ctx: Ctx) {
    let id = setup(&ctx).await;
    let max = declared_limit(&ctx);
    let snap = sized_snapshot(max + 1);
    let meta = SnapshotMetadata::new(id.clone(), 16).with_timestamp(ts(16));
    let err = ctx
        .stores
        .snapshots
        .save_snapshot(meta, snap)
        .await
        .expect_err("over the limit");
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert_eq!(
        load_seq(&ctx, &id, Criteria::latest()).await,
        Some(15),
        "nothing stored"
    );
}

async fn metadata(ctx: Ctx) {
    let id = ctx.pid("p");
    let mut meta = SnapshotMetadata::new(id.clone(), 4).with_timestamp(ts(4));
    meta.metadata = Some(Payload::new("m", "m/v1", b"snapshot-meta".to_vec()));
    ctx.stores
        .snapshots
        .save_snapshot(meta.clone(), payload(1))
        .await
        .expect("save");
    let s = load(&ctx, &id, Criteria::latest())
        .await
        .expect("a snapshot");
    assert_eq!(s.metadata, meta);
}

async fn independent(ctx: Ctx) {
    let id = setup(&ctx).await;
    let other = ctx.pid("other");
    let meta = SnapshotMetadata::new(other.clone(), 1).with_timestamp(ts(1));
    ctx.stores
        .snapshots
        .save_snapshot(meta, payload(100))
        .await
        .expect("save");
    ctx.stores
        .snapshots
        .delete_snapshots(&id, Criteria::latest())
        .await
        .expect("delete");
    assert_eq!(
        load(&ctx, &other, Criteria::latest())
            .await
            .unwrap()
            .snapshot,
        payload(100)
    );
    assert_eq!(load_seq(&ctx, &id, Criteria::latest()).await, None);
}

/// `delete_snapshots` honours its lower bounds: only 13 and 14 go with
/// `13 <= seq <= 14`; the lower bound alone (`seq >= 14`) takes 14 and 15.
async fn delete_with_min_bounds(ctx: Ctx) {
    let id = setup(&ctx).await;
    let c = Criteria::latest()
        .with_min_sequence_nr(13)
        .with_max_sequence_nr(14);
    ctx.stores
        .snapshots
        .delete_snapshots(&id, c)
        .await
        .expect("delete");
    assert_eq!(remaining(&ctx, &id).await, vec![11, 12, 15]);
    let other = ctx.pid("other");
    for seq in 11..=15 {
        let meta = SnapshotMetadata::new(other.clone(), seq).with_timestamp(ts(seq));
        ctx.stores
            .snapshots
            .save_snapshot(meta, payload(seq))
            .await
            .expect("save");
    }
    ctx.stores
        .snapshots
        .delete_snapshots(&other, Criteria::latest().with_min_sequence_nr(14))
        .await
        .expect("delete");
    assert_eq!(remaining(&ctx, &other).await, vec![11, 12, 13]);
}

/// `delete_snapshots` with a lower timestamp bound: `ts >= ts(14)` takes 14 and 15 only,
/// and `ts(12) <= ts <= ts(12)` takes 12 only.
async fn delete_with_min_timestamp(ctx: Ctx) {
    let id = setup(&ctx).await;
    ctx.stores
        .snapshots
        .delete_snapshots(&id, Criteria::latest().with_min_timestamp(ts(14)))
        .await
        .expect("delete");
    assert_eq!(remaining(&ctx, &id).await, vec![11, 12, 13]);
    let c = Criteria::latest()
        .with_min_timestamp(ts(12))
        .with_max_timestamp(ts(12));
    ctx.stores
        .snapshots
        .delete_snapshots(&id, c)
        .await
        .expect("delete");
    assert_eq!(remaining(&ctx, &id).await, vec![11, 13]);
}

/// The sequence numbers of `id`'s snapshots, ascending, found by loading with ever lower
/// `max_sequence_nr` (the API has no listing).
async fn remaining(ctx: &Ctx, id: &PersistenceId) -> Vec<u64> {
    let mut found = Vec::new();
    let mut max = u64::MAX;
    while let Some(seq) = load_seq(ctx, id, Criteria::latest().with_max_sequence_nr(max)).await {
        found.push(seq);
        if seq == 0 {
            break;
        }
        max = seq - 1;
    }
    found.reverse();
    found
}

/// Eight saves at one sequence number at once, each with its own timestamp, payload and
/// metadata, of a size that spans several chunks where a backend chunks: the one that
/// loads is one of them, whole (its payload, timestamp and metadata together), never a
/// mix.
async fn concurrent_saves(ctx: Ctx) {
    let id = ctx.pid("raced");
    let size = ctx
        .caps
        .max_snapshot_size
        .map_or(600 * 1024, |m| m.min(600 * 1024));
    let candidates: Vec<(SnapshotMetadata, Payload)> = (0..8u8)
        .map(|i| {
            let mut meta =
                SnapshotMetadata::new(id.clone(), 7).with_timestamp(ts(100 + u64::from(i)));
            if ctx.caps.snapshot_metadata {
                meta.metadata = Some(Payload::new("m", "m/v1", vec![i; 16]));
            }
            let mut p = Payload::new("tck", format!("racer-{i}/v1"), Vec::new());
            let overhead = p.stored_size();
            p.bytes = vec![i; size - overhead].into();
            (meta, p)
        })
        .collect();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(candidates.len()));
    let saves = candidates.iter().cloned().map(|(meta, p)| {
        let snapshots = ctx.stores.snapshots.clone();
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            snapshots.save_snapshot(meta, p).await
        })
    });
    for r in futures::future::join_all(saves).await {
        r.expect("a saver").expect("each save succeeds");
    }
    let got = load(&ctx, &id, Criteria::latest())
        .await
        .expect("a snapshot at 7");
    assert!(
        candidates
            .iter()
            .any(|(m, p)| got.metadata == *m && got.snapshot == *p),
        "the loaded snapshot is one save whole: timestamp {:?}, manifest {:?}, first byte {:?}, {} bytes",
        got.metadata.timestamp,
        got.snapshot.manifest,
        got.snapshot.bytes.first(),
        got.snapshot.bytes.len()
    );
    assert!(
        got.snapshot
            .bytes
            .iter()
            .all(|b| *b == got.snapshot.bytes[0]),
        "no bytes of another save"
    );
}

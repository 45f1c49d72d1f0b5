//! Behaviour the conformance kit cannot reach with the default configuration: partitions
//! (with a target size of 3), writes spilling over a partition boundary, purge and rebuild after deletes, and the
//! events-by-tag gap look-back. Against the real node from
//! `PERSISTENCE_CASSANDRA_CONTACT_POINTS`; skipped loudly when it is unset.

use persistence_api::ReadJournalExt;
use std::time::Duration;

use futures::StreamExt;
use persistence_api::{
    AtomicWrite, ErrorKind, JournalExt, Offset, Payload, PersistenceId, PersistentEvent,
    PurgeReport, RebuildReport, SnapshotMetadata, SnapshotSelectionCriteria,
};
use persistence_cassandra::{Cassandra, CassandraConfig};

async fn backend(target_partition_size: u64) -> Option<Cassandra> {
    let contact_points = persistence_tck::server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS")?;
    let config = CassandraConfig {
        contact_points: contact_points.split(',').map(str::to_owned).collect(),
        local_datacenter: std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER").ok(),
        keyspace: "persistence_tck".into(),
        create_schema: true,
        target_partition_size,
        eventual_consistency_delay: Duration::from_millis(300),
        poll_interval: Duration::from_millis(100),
        gap_timeout: Duration::from_secs(2),
        ..CassandraConfig::default()
    };
    let ns = format!("own{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    Some(
        Cassandra::open(config)
            .await
            .expect("connect")
            .with_namespace(&ns)
            .unwrap(),
    )
}

fn event(id: &PersistenceId, seq: u64, tags: &[&str]) -> PersistentEvent {
    PersistentEvent::new(
        id.clone(),
        seq,
        Payload::raw(format!("{id}#{seq}").into_bytes()),
    )
    .with_tags(tags.iter().copied())
}

fn atomic(id: &PersistenceId, from: u64, to: u64) -> AtomicWrite {
    AtomicWrite::new((from..=to).map(|s| event(id, s, &[])).collect()).unwrap()
}

async fn seqs(b: &Cassandra, id: &PersistenceId, from: u64) -> (Vec<u64>, u64) {
    let stores = b.stores();
    let replay = stores
        .journal
        .replay(id, from, u64::MAX, u64::MAX)
        .await
        .unwrap();
    let events: Vec<_> = replay.events.collect().await;
    (
        events.into_iter().map(|e| e.unwrap().sequence_nr).collect(),
        replay.highest_sequence_nr,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_spills_deletes_and_conflicts() {
    let Some(b) = backend(3).await else { return };
    let j = b.stores().journal;
    let id = PersistenceId::new("p").unwrap();
    // {1,2} and {3,4,5} in partition 0 (the second spills past 3), {6} in partition 1,
    // {7..10} in partition 2, {11} in partition 3.
    for (from, to) in [(1, 2), (3, 5), (6, 6), (7, 10), (11, 11)] {
        j.write(atomic(&id, from, to)).await.unwrap();
    }
    assert_eq!(seqs(&b, &id, 1).await, ((1..=11).collect(), 11));
    assert_eq!(seqs(&b, &id, 4).await, ((4..=11).collect(), 11));
    assert_eq!(seqs(&b, &id, 8).await, ((8..=11).collect(), 11));
    // Every taken first sequence number conflicts, whichever partition it would go to,
    // including 4 and 5, which live in partition 0 although partition 1 is theirs.
    for seq in [1, 3, 4, 5, 6, 9, 11] {
        let err = j.write(atomic(&id, seq, seq)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "seq {seq}: {err}");
    }
    assert_eq!(seqs(&b, &id, 1).await, ((1..=11).collect(), 11));
    // Deletes across partitions; the highest survives.
    j.delete_events_to(&id, 7).await.unwrap();
    assert_eq!(seqs(&b, &id, 1).await, ((8..=11).collect(), 11));
    j.delete_events_to(&id, 100).await.unwrap();
    assert_eq!(seqs(&b, &id, 1).await, (vec![], 11));
    assert_eq!(j.highest_sequence_nr(&id).await.unwrap(), 11);
    j.write(atomic(&id, 12, 13)).await.unwrap();
    assert_eq!(seqs(&b, &id, 1).await, (vec![12, 13], 13));

    // A stale writer after a spill into an empty next partition.
    let id2 = PersistenceId::new("spill").unwrap();
    j.write(atomic(&id2, 1, 2)).await.unwrap();
    j.write(atomic(&id2, 3, 5)).await.unwrap();
    let err = j.write(atomic(&id2, 4, 4)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(seqs(&b, &id2, 1).await, ((1..=5).collect(), 5));
    j.write(atomic(&id2, 6, 6)).await.unwrap();
    assert_eq!(seqs(&b, &id2, 1).await, ((1..=6).collect(), 6));
}

/// A purge removes the id's events, their tag rows (those of events `delete_events_to`
/// removed too, found through the tag's buckets), its snapshot and its registry row; the
/// other id keeps everything.
#[tokio::test(flavor = "multi_thread")]
async fn purge_removes_tag_rows_of_deleted_events_too() {
    let Some(b) = backend(3).await else {
        return;
    };
    let stores = b.stores();
    let (a, keep) = (
        PersistenceId::new("a").unwrap(),
        PersistenceId::new("keep").unwrap(),
    );
    for id in [&a, &keep] {
        stores
            .journal
            .write(AtomicWrite::new(vec![event(id, 1, &["t", "u"]), event(id, 2, &["t"])]).unwrap())
            .await
            .unwrap();
        stores
            .journal
            .write(AtomicWrite::new(vec![event(id, 3, &["t"]), event(id, 4, &[])]).unwrap())
            .await
            .unwrap();
        stores
            .snapshots
            .save_snapshot(
                SnapshotMetadata::new(id.clone(), 2),
                Payload::raw(&b"s"[..]),
            )
            .await
            .unwrap();
    }
    stores.journal.delete_events_to(&a, 2).await.unwrap();
    let report = stores.maintenance.purge_persistence_id(&a).await.unwrap();
    assert_eq!(report, PurgeReport::new(2, 1));
    assert_eq!(seqs(&b, &a, 1).await, (vec![], 0));
    assert_eq!(seqs(&b, &keep, 1).await.0, vec![1, 2, 3, 4]);
    let ids: Vec<String> = stores
        .read_journal
        .current_persistence_ids()
        .map(|r| r.unwrap().into_string())
        .collect()
        .await;
    assert_eq!(ids, vec!["keep".to_string()]);
    for (tag, n) in [("t", 3), ("u", 1)] {
        let tagged: Vec<String> = stores
            .read_journal
            .current_events_by_tag(tag.into(), Offset::NoOffset)
            .map(|r| r.unwrap().event.persistence_id.into_string())
            .collect()
            .await;
        assert_eq!(tagged, vec!["keep"; n], "tag {tag}");
    }
    assert!(stores
        .snapshots
        .load_snapshot(&a, SnapshotSelectionCriteria::latest())
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        stores.maintenance.purge_persistence_id(&a).await.unwrap(),
        PurgeReport::new(0, 0)
    );
}

/// After `delete_events_to`, a rebuild of an intact journal numbers the stored events'
/// tag rows as the write path did (read from the first stored event's row), so it writes
/// the same rows again; with the tag rows lost too it derives the numbers from
/// `tag_write_progress`; and writes after it continue the numbering.
#[tokio::test(flavor = "multi_thread")]
async fn rebuild_after_deletes_keeps_the_numbering() {
    let Some(b) = backend(3).await else {
        return;
    };
    let stores = b.stores();
    let id = PersistenceId::new("r").unwrap();
    for (from, to) in [(1, 3), (4, 5), (6, 7)] {
        let events = (from..=to).map(|s| event(&id, s, &["t"])).collect();
        stores
            .journal
            .write(AtomicWrite::new(events).unwrap())
            .await
            .unwrap();
    }
    stores.journal.delete_events_to(&id, 4).await.unwrap();
    let by_tag = || async {
        stores
            .read_journal
            .current_events_by_tag("t".into(), Offset::NoOffset)
            .map(|r| {
                let e = r.unwrap();
                (e.event.sequence_nr, e.offset)
            })
            .collect::<Vec<_>>()
            .await
    };
    let before = by_tag().await;
    assert_eq!(before.len(), 7, "events by tag keep deleted events");
    let report = stores
        .maintenance
        .rebuild_persistence_id(&id)
        .await
        .unwrap();
    assert_eq!(report, RebuildReport::new(3, 3));
    assert_eq!(by_tag().await, before, "the same rows, nothing added");
    // The rows of the stored events lost (as a partial restore would leave them), the
    // progress kept: the numbers come from it.
    let config = b.config();
    let (ks, t) = (&config.keyspace, &config.tables);
    let ns = &config.namespace;
    let (pid, tag_key) = (format!("{ns}\u{1f}r"), format!("{ns}\u{1f}t"));
    for nr in 0..3i64 {
        let rows = b
            .session()
            .query_unpaged(
                format!(
                    "SELECT timebucket, timestamp, sequence_nr FROM {ks}.{} \
                     WHERE persistence_id = ? AND partition_nr = ?",
                    t.messages
                ),
                (pid.as_str(), nr),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        for row in rows
            .rows::<(
                Option<i64>,
                Option<persistence_cassandra::scylla::value::CqlTimeuuid>,
                Option<i64>,
            )>()
            .unwrap()
        {
            // A partition whose events were all deleted answers its static row alone.
            let (Some(bucket), Some(ts), _) = row.unwrap() else {
                continue;
            };
            b.session()
                .query_unpaged(
                    format!(
                        "DELETE FROM {ks}.{} WHERE tag_name = ? AND timebucket = ? AND timestamp = ?",
                        t.tag_views
                    ),
                    (tag_key.as_str(), bucket, ts),
                )
                .await
                .unwrap();
        }
    }
    assert_eq!(by_tag().await.len(), 4);
    let report = stores
        .maintenance
        .rebuild_persistence_id(&id)
        .await
        .unwrap();
    assert_eq!(report, RebuildReport::new(3, 3));
    assert_eq!(
        by_tag().await,
        before,
        "restored with the same numbers and offsets"
    );
    stores
        .journal
        .write(AtomicWrite::single(event(&id, 8, &["t"])).unwrap())
        .await
        .unwrap();
    let after = by_tag().await;
    assert_eq!(&after[..7], &before[..]);
    assert_eq!(after[7].0, 8);
}

/// A tagged event that lands late, behind a live reader, is found by the gap look-back
/// and delivered before the event that revealed the gap; a gap that never fills fails the
/// stream instead of skipping silently.
#[tokio::test(flavor = "multi_thread")]
async fn tag_gap_is_looked_back_or_fails() {
    let Some(b) = backend(500_000).await else {
        return;
    };
    let stores = b.stores();
    let id = PersistenceId::new("g").unwrap();
    for seq in 1..=3 {
        stores
            .journal
            .write(AtomicWrite::single(event(&id, seq, &["t"])).unwrap())
            .await
            .unwrap();
    }
    // Take the tag row of event 2 away, as if its write were still in flight.
    let ks = &b.config().keyspace;
    let session = b.session();
    let tag_key = format!("{}\u{1f}t", b.config().namespace);
    let rows = session
        .query_unpaged(
            format!("SELECT timebucket, timestamp, tag_pid_sequence_nr, persistence_id, sequence_nr, writer_uuid, ser_id, ser_manifest, event_manifest, event, tags, event_time FROM {ks}.tag_views WHERE tag_name = ? ALLOW FILTERING"),
            (tag_key.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    type Row = (
        i64,
        persistence_cassandra::scylla::value::CqlTimeuuid,
        i64,
        String,
        i64,
        String,
        String,
        String,
        String,
        Vec<u8>,
        Vec<String>,
        i64,
    );
    let rows: Vec<Row> = rows.rows::<Row>().unwrap().map(|r| r.unwrap()).collect();
    let second = rows.iter().find(|r| r.2 == 2).expect("tag row 2").clone();
    session
        .query_unpaged(
            format!("DELETE FROM {ks}.tag_views WHERE tag_name = ? AND timebucket = ? AND timestamp = ?"),
            (tag_key.as_str(), second.0, second.1),
        )
        .await
        .unwrap();
    // A current query from the start cannot fill the gap: it fails, naming what is missing.
    let got: Vec<_> = stores
        .read_journal
        .current_events_by_tag("t".into(), Offset::NoOffset)
        .collect()
        .await;
    assert_eq!(got.len(), 2, "event 1, then the failure");
    assert_eq!(got[0].as_ref().unwrap().event.sequence_nr, 1);
    let err = got[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unexpected, "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    // The late row lands while a reader waits at the gap: delivered in order. The reader
    // hands over each event as it comes; once it has delivered 1, it has read past the
    // row before the gap and waits there (it cannot finish without event 2).
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn({
        let rj = stores.read_journal.clone();
        async move {
            let mut s = rj.current_events_by_tag("t".into(), Offset::NoOffset);
            let mut got = Vec::new();
            while let Some(r) = s.next().await {
                let seq = r.unwrap().event.sequence_nr;
                got.push(seq);
                let _ = seen_tx.send(seq);
            }
            got
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .expect("the reader delivers the event before the gap");
    assert_eq!(first, Some(1));
    assert!(
        !reader.is_finished(),
        "the reader waits at the gap instead of finishing without event 2"
    );
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.tag_views (tag_name, timebucket, timestamp, tag_pid_sequence_nr, persistence_id, sequence_nr, writer_uuid, ser_id, ser_manifest, event_manifest, event, tags, event_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            (tag_key.as_str(), second.0, second.1, second.2, second.3.as_str(), second.4, second.5.as_str(), second.6.as_str(), second.7.as_str(), second.8.as_str(), second.9.clone(), second.10.clone(), second.11),
        )
        .await
        .unwrap();
    assert_eq!(reader.await.unwrap(), vec![1, 2, 3]);
}

/// A write whose events landed but whose tag rows did not (a crash in between) is marked
/// pending in its partition; the next incarnation's replay, or its first tagged write,
/// writes the missing tag rows, so tag readers see every event without a gap.
#[tokio::test(flavor = "multi_thread")]
async fn tag_rows_of_a_crashed_write_are_repaired() {
    let Some(b) = backend(500_000).await else {
        return;
    };
    let id = PersistenceId::new("r").unwrap();
    let tagged = |seq| AtomicWrite::single(event(&id, seq, &["t"])).unwrap();
    b.stores().journal.write(tagged(1)).await.unwrap();
    // Event 2 as a crashed writer leaves it: in `messages`, marked pending, no tag row.
    let ks = &b.config().keyspace;
    let pid_key = format!("{}\u{1f}r", b.config().namespace);
    b.session()
        .query_unpaged(
            format!("INSERT INTO {ks}.messages (persistence_id, partition_nr, sequence_nr, timestamp, timebucket, writer_uuid, ser_id, ser_manifest, event_manifest, event, tags, event_time) VALUES (?, 0, 2, now(), 0, '', '', '', '', 0x72, ['t'], 1)"),
            (pid_key.as_str(),),
        )
        .await
        .unwrap();
    b.session()
        .query_unpaged(
            format!("UPDATE {ks}.messages SET used = 2, tag_pending = 2 WHERE persistence_id = ? AND partition_nr = 0"),
            (pid_key.as_str(),),
        )
        .await
        .unwrap();
    let by_tag = |b: Cassandra| async move {
        b.stores()
            .read_journal
            .current_events_by_tag("t".into(), Offset::NoOffset)
            .map(|r| r.map(|e| e.event.sequence_nr))
            .collect::<Vec<_>>()
            .await
    };
    assert!(
        by_tag(b.clone())
            .await
            .iter()
            .all(|r| r.as_ref().is_ok_and(|s| *s == 1)),
        "before the repair only event 1 is tagged"
    );
    // A new incarnation (fresh caches) writes event 3 without replaying first.
    let fresh = b.with_namespace(&b.config().namespace).unwrap();
    fresh.stores().journal.write(tagged(3)).await.unwrap();
    let got: Vec<u64> = by_tag(fresh.clone())
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, vec![1, 2, 3]);
    // Event 4 crashes the same way; this time the next incarnation's replay repairs it.
    b.session()
        .query_unpaged(
            format!("INSERT INTO {ks}.messages (persistence_id, partition_nr, sequence_nr, timestamp, timebucket, writer_uuid, ser_id, ser_manifest, event_manifest, event, tags, event_time) VALUES (?, 0, 4, now(), 0, '', '', '', '', 0x72, ['t'], 1)"),
            (pid_key.as_str(),),
        )
        .await
        .unwrap();
    b.session()
        .query_unpaged(
            format!("UPDATE {ks}.messages SET used = 4, tag_pending = 4 WHERE persistence_id = ? AND partition_nr = 0"),
            (pid_key.as_str(),),
        )
        .await
        .unwrap();
    let again = fresh.with_namespace(&fresh.config().namespace).unwrap();
    assert_eq!(seqs(&again, &id, 1).await, (vec![1, 2, 3, 4], 4));
    assert_eq!(
        by_tag(again)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

/// Two journals of one id (as in two processes, fresh caches each) write tagged events in
/// turn with no replay between: each derives its tag numbers afresh when the id's last write
/// was not its own, so no tag row reuses a number (events-by-tag would skip it as already
/// delivered). Then a stored write whose answer the journal never saw (simulated: the event
/// and its pending mark, no tag row): the journal's next write sees it did not write the
/// id's last events, repairs the missing row and numbers its own after it.
#[tokio::test(flavor = "multi_thread")]
async fn writers_taking_turns_never_reuse_a_tag_number() {
    let Some(a) = backend(500_000).await else {
        return;
    };
    let b = a.with_namespace(&a.config().namespace).unwrap();
    let id = PersistenceId::new("turns").unwrap();
    let tagged = |seq| AtomicWrite::single(event(&id, seq, &["u"])).unwrap();
    let (ja, jb) = (a.stores().journal, b.stores().journal);
    for seq in 1..=6 {
        let j = if seq % 2 == 1 { &ja } else { &jb };
        j.write(tagged(seq)).await.unwrap();
    }
    // Event 7 as a write whose answer was lost leaves it (stored, marked pending, no tag
    // row): `a` does not know of it.
    let ks = &a.config().keyspace;
    let pid_key = format!("{}\u{1f}turns", a.config().namespace);
    a.session()
        .query_unpaged(
            format!("INSERT INTO {ks}.messages (persistence_id, partition_nr, sequence_nr, timestamp, timebucket, writer_uuid, ser_id, ser_manifest, event_manifest, event, tags, event_time) VALUES (?, 0, 7, now(), 0, '', '', '', '', 0x72, ['u'], 1)"),
            (pid_key.as_str(),),
        )
        .await
        .unwrap();
    a.session()
        .query_unpaged(
            format!("UPDATE {ks}.messages SET used = 7, tag_pending = 7 WHERE persistence_id = ? AND partition_nr = 0"),
            (pid_key.as_str(),),
        )
        .await
        .unwrap();
    ja.write(tagged(8)).await.unwrap();
    jb.write(tagged(9)).await.unwrap();
    let got: Vec<u64> = a
        .stores()
        .read_journal
        .current_events_by_tag("u".into(), Offset::NoOffset)
        .map(|r| r.unwrap().event.sequence_nr)
        .collect()
        .await;
    assert_eq!(got, (1..=9).collect::<Vec<_>>());
}

//! [`DynamoDbMaintenance`]: the operator's repairs of a journal (the
//! [`JournalMaintenance`] contract): listing every id from the events themselves,
//! rebuilding an id's tag index entries, tag counters and registry item from its events,
//! and purging an id.
//!
//! # Which item lists an id once
//! The scan must list every id whose highest is above 0 exactly once, a page at a time,
//! without a set of the ids seen. The id's `#` item (highest / deleted-to) would be the
//! natural one, but it exists only once an id had a delete. Sequence number 1 is the item
//! every such id holds: every number up to an id's highest stays taken, by its event or by
//! a tombstone (a deleted event's, or one a write that starts above the highest puts on
//! every number it skips, see `journal.rs`), and nothing but a purge removes either. So
//! the scan reads the journal table with a filter on `sk` = sequence number 1 under this
//! journal's event prefix, keys only: one item per id, a page of them at a time. The one
//! exception is the bottom part of an unfinished large atomic write starting at 1 (an id
//! whose only write failed half-way): such an item carries the write's marker, and the
//! scan asks the highest for that id (one `Query`) before listing it.
//!
//! # Rebuild
//! Every stored event records the number each of its tags took (`tn`), and, when tagged,
//! the write time its entries carry (`tt`; events written before it was recorded fall back
//! to the large write's time, else the event's timestamp, which only orders entries of
//! different shards). A deleted event's tombstone keeps its `tn` too. A rebuild pages
//! through the id's event items from sequence number 1 and, per page: raises each (tag,
//! shard) counter to at least the highest number of the page (a conditional `SET`, never
//! lowered), reads the page's entry slots (`BatchGetItem`, 100 keys a request, only the
//! attributes that tell whose a slot is), and then
//! - for a stored event (above the deleted-to mark; of a large write, only once the write
//!   is complete), writes each missing entry at its recorded number, a `PutItem`
//!   conditioned on the slot being free. An entry present and naming its event is left as
//!   it is; a tombstone, or another event's entry, in the slot of a stored event is
//!   [`ErrorKind::Corrupt`] naming the tag, the number, the id and the sequence number:
//!   readers skipped (or delivered something else at) that number, and overwriting it
//!   would hide that;
//! - for a deleted event, or the parts of a large write that can no longer complete,
//!   fills each free slot with a tombstone (conditioned the same way), so readers skip the
//!   number instead of waiting `tag_gap_timeout_ms` for it;
//! - leaves the parts of a large write still being stored alone.
//!
//! The counters go up before the entries are written, so a write racing the rebuild takes
//! numbers above the restored ones.
//!
//! # Purge
//! The id's event items (tombstones included) are read a page at a time; the tag entries
//! of each (the numbers its `tn` names, a deleted event's included) become tag index
//! tombstones first (so readers skip their numbers instead of waiting for them), then the
//! page's items are deleted. Sequence number 1 becomes a tombstone and is deleted last,
//! after the snapshots and the `#` item, and the registry item after it: until then the
//! id keeps a highest above 0 and the scan and the registry still list it, so an
//! interrupted purge can be found and run again. The tag counters and the id's new-id feed
//! item stay (the feed item is keyed by the time of the id's first write, which nothing
//! records; only live `persistence_ids` queries read the feed, from their start on).

use std::collections::HashMap;
use std::sync::Arc;

use async_stream::try_stream;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::{FutureExt, StreamExt, TryStreamExt};
use persistence_api::{
    Error, ErrorKind, JournalMaintenance, PersistenceId, PersistenceIdStream, PersistentEvent,
    PurgeReport, RebuildReport, Result, SnapshotSelectionCriteria,
};

use crate::core::{delete_request, put_request, Inner};
use crate::error::{corrupt, Class, Failed};
use crate::large_write::LargeWrites;
use crate::query::query_page;
use crate::schema::{
    decode_event, entry_sk, event_attrs, event_seq, get_i64, get_str, get_u64, is_tombstone, key,
    key_of, large_write, n, s, seq_sk, tombstone, Item, LargeWrite, AW_FROM, COUNTER_SK,
    MAX_BATCH_GET, META_SK, PID, PK, SEQ, SK, TAG_NUMBERS, TOKEN_TIME, TOMBSTONE,
};
use crate::snapshot::DynamoDbSnapshotStore;

const SCAN: &str = "scan_persistence_ids";
const REBUILD: &str = "rebuild_persistence_id";
const PURGE: &str = "purge_persistence_id";
const TRUNCATE: &str = "truncate_indexes";

/// Conditional entry puts of one page of a rebuild sent at once.
const PUTS_IN_FLIGHT: usize = 16;

/// `BatchGetItem`s of one page of a rebuild sent at once.
const GETS_IN_FLIGHT: usize = 4;

/// Journal maintenance on DynamoDB (what [`crate::DynamoDb::stores`] puts in
/// [`persistence_api::Stores::maintenance`]): scanning the journal's ids, rebuilding an
/// id's tag index entries, tag counters and registry item from its events, purging an id.
/// Build it with [`crate::DynamoDb::maintenance`]; the README's *Maintenance* gives the
/// requests each call sends.
#[derive(Clone)]
pub struct DynamoDbMaintenance {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoDbMaintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbMaintenance")
            .field("table", &self.inner.config.journal_table)
            .field("namespace", &self.inner.config.namespace)
            .finish()
    }
}

/// A stored event of the id being rebuilt, decoded, with what its entries need.
struct Stored {
    event: PersistentEvent,
    large: Option<LargeWrite>,
    /// The write time its entries carry (`tt`).
    time: i64,
    /// Each distinct tag with the number it took.
    numbers: Vec<(String, u64)>,
}

/// What a rebuild finds at one sequence number of the id.
enum Found {
    /// A stored event: its entries are restored.
    Stored(Box<Stored>),
    /// A deleted event, or the leftovers of a large write that can no longer complete:
    /// the tag numbers it took (tag, number) get tombstones where their slots are free.
    Retired(Vec<(String, u64)>),
    /// Part of a large write still being stored: left alone.
    InFlight,
}

/// Whose a tag index slot is.
#[derive(Clone, Copy)]
enum Owner<'a> {
    /// A stored event's: its entry belongs there.
    Stored(&'a Stored),
    /// A deleted or abandoned event's: a tombstone belongs there.
    Retired,
}

/// One tag index slot a rebuild makes sure of.
struct Wanted<'a> {
    owner: Owner<'a>,
    tag: &'a str,
    number: u64,
    key: Item,
}

#[async_trait]
impl JournalMaintenance for DynamoDbMaintenance {
    fn scan_persistence_ids(&self) -> PersistenceIdStream {
        Box::pin(scan(self.inner.clone()))
    }

    async fn rebuild_persistence_id(
        &self,
        persistence_id: &PersistenceId,
    ) -> Result<RebuildReport> {
        let inner = &*self.inner;
        let pid = persistence_id.as_str();
        let (highest, meta) = futures::try_join!(inner.highest(pid), inner.meta(pid))?;
        if highest == 0 {
            return Ok(RebuildReport::default());
        }
        self.register(pid).await?;
        let mut large = LargeWrites::new();
        let (mut events, mut entries) = (0u64, 0u64);
        let mut start = None;
        loop {
            // From sequence number 1: deleted events' tombstones name the numbers they took.
            let (items, next) = event_page(inner, REBUILD, pid, 1, start).await?;
            let mut stored = Vec::with_capacity(items.len());
            let mut retired = Vec::new();
            for item in items {
                match found(inner, &mut large, persistence_id, meta.deleted_to, item).await? {
                    Found::Stored(st) => stored.push(*st),
                    Found::Retired(numbers) => retired.extend(numbers),
                    Found::InFlight => {}
                }
            }
            events += stored.len() as u64;
            entries += self.restore_entries(pid, &stored, &retired).await?;
            match next {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        Ok(RebuildReport::new(events, entries))
    }

    async fn truncate_indexes(&self) -> Result<()> {
        truncate(&self.inner).await
    }

    async fn purge_persistence_id(&self, persistence_id: &PersistenceId) -> Result<PurgeReport> {
        let inner = &*self.inner;
        let pid = persistence_id.as_str();
        let table = inner.journal_table();
        let meta = inner.meta(pid).await?;
        let first = key(inner.keys.event_pk(pid), seq_sk(1));
        let mut large = LargeWrites::new();
        let mut events = 0u64;
        let mut start = None;
        loop {
            let (items, next) = event_page(inner, PURGE, pid, 1, start).await?;
            let mut entry_tombstones = Vec::new();
            let mut removals = Vec::with_capacity(items.len());
            for item in &items {
                let seq = event_seq(item)?;
                if !is_tombstone(item) {
                    let complete = match large_write(item) {
                        Some(lw) => large.check(inner, pid, lw, false).await? == Some(true),
                        None => true,
                    };
                    if complete && seq > meta.deleted_to {
                        events += 1;
                    }
                }
                // Tombstones, not deletes: a reader skips them instead of waiting for a
                // missing number (the numbers were this event's alone). A deleted event's
                // tombstone names its numbers too: their slots may have been truncated.
                for k in inner.tag_entry_keys(pid, item) {
                    entry_tombstones.push(put_request(tombstone(k))?);
                }
                if seq == 1 {
                    // Kept, as a tombstone, until the end: it is what the scan finds.
                    if !is_tombstone(item) {
                        removals.push(put_request(tombstone(key_of(item)))?);
                    }
                } else {
                    removals.push(delete_request(key_of(item))?);
                }
            }
            // The entries first: the events record their numbers.
            inner
                .batch_write_all(PURGE, table, entry_tombstones)
                .await?;
            inner.batch_write_all(PURGE, table, removals).await?;
            match next {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        let snapshots = DynamoDbSnapshotStore {
            inner: self.inner.clone(),
        }
        .delete_matching(PURGE, pid, &SnapshotSelectionCriteria::latest())
        .await?;
        // The `#` item, then sequence number 1, then the registry item: each step leaves
        // the id listed with a highest above 0 until the last (see the module docs).
        let meta_key = key(inner.keys.event_pk(pid), META_SK.to_owned());
        let registry = key(inner.keys.ids_pk(inner.keys.id_shard(pid)), pid.to_owned());
        for k in [meta_key, first, registry] {
            inner.batch_delete(PURGE, table, vec![k]).await?;
        }
        inner.forget_id(pid);
        Ok(PurgeReport::new(events, snapshots))
    }
}

impl DynamoDbMaintenance {
    /// Puts the id's registry item (one `PutItem`; the same item again when present).
    async fn register(&self, pid: &str) -> Result<()> {
        let inner = &self.inner;
        let shard = inner.keys.id_shard(pid);
        let req = inner
            .client
            .put_item()
            .table_name(inner.journal_table())
            .set_item(Some(key(inner.keys.ids_pk(shard), pid.to_owned())));
        inner
            .retry
            .run(REBUILD, || req.clone().send())
            .await
            .map_err(Failed::into_error)?;
        Ok(())
    }

    /// Makes sure every tag index entry of `stored` (events of `pid`) is in its slot, and
    /// that the slots of the `retired` numbers are not left free: counters raised, slots
    /// read, missing entries written, free retired slots filled with tombstones. Answers
    /// the number of entries of `stored` written or present.
    async fn restore_entries(
        &self,
        pid: &str,
        stored: &[Stored],
        retired: &[(String, u64)],
    ) -> Result<u64> {
        let inner = &*self.inner;
        let shard = inner.keys.tag_shard(pid);
        let slot = |owner, tag, number| Wanted {
            owner,
            tag,
            number,
            key: key(inner.keys.tag_pk(tag, shard), entry_sk(number)),
        };
        let mut wanted: Vec<Wanted<'_>> = stored
            .iter()
            .flat_map(|st| {
                st.numbers
                    .iter()
                    .map(move |(tag, number)| slot(Owner::Stored(st), tag.as_str(), *number))
            })
            .collect();
        let count = wanted.len() as u64;
        wanted.extend(
            retired
                .iter()
                .map(|(tag, number)| slot(Owner::Retired, tag.as_str(), *number)),
        );
        if wanted.is_empty() {
            return Ok(0);
        }
        // The counters first, so writes from now on take numbers above the restored ones.
        let mut highest: HashMap<&str, u64> = HashMap::new();
        for w in &wanted {
            let h = highest.entry(w.tag).or_default();
            *h = (*h).max(w.number);
        }
        futures::future::try_join_all(
            highest
                .into_iter()
                .map(|(tag, number)| raise_counter(inner, inner.keys.tag_pk(tag, shard), number)),
        )
        .await?;
        // What the slots hold now.
        let batches: Vec<Vec<Item>> = wanted
            .chunks(MAX_BATCH_GET)
            .map(|c| c.iter().map(|w| w.key.clone()).collect())
            .collect();
        let found: Vec<Vec<Item>> = futures::stream::iter(batches)
            .map(|keys| inner.batch_get(REBUILD, keys, &[PK, SK, TOMBSTONE, PID, SEQ]))
            .buffer_unordered(GETS_IN_FLIGHT)
            .try_collect()
            .await?;
        let found: HashMap<(String, String), Item> = found
            .into_iter()
            .flatten()
            .map(|item| {
                (
                    (get_str(&item, PK).to_owned(), get_str(&item, SK).to_owned()),
                    item,
                )
            })
            .collect();
        let mut puts = Vec::new();
        for w in &wanted {
            let slot = (
                get_str(&w.key, PK).to_owned(),
                get_str(&w.key, SK).to_owned(),
            );
            match (found.get(&slot), w.owner) {
                (Some(item), Owner::Stored(st)) => check_entry(pid, st, w, item)?,
                // A tombstone, or the entry a delete did not reach: taken either way.
                (Some(_), Owner::Retired) => {}
                (None, Owner::Stored(st)) => puts.push(self.put_entry(pid, st, w).boxed()),
                (None, Owner::Retired) => puts.push(
                    async move {
                        inner
                            .fill(REBUILD, get_str(&w.key, PK), w.number)
                            .await
                            .map(|_| ())
                    }
                    .boxed(),
                ),
            }
        }
        futures::stream::iter(puts)
            .buffer_unordered(PUTS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(count)
    }

    /// Writes the missing entry `w` at its number, conditioned on the slot being free; when
    /// the slot was taken meanwhile, what took it is checked as a present entry is.
    fn put_entry<'a>(
        &'a self,
        pid: &'a str,
        st: &'a Stored,
        w: &'a Wanted<'a>,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        let inner = &*self.inner;
        let mut entry = w.key.clone();
        event_attrs(&mut entry, &st.event, st.large);
        entry.insert(PID.into(), s(pid));
        entry.insert(SEQ.into(), n(st.event.sequence_nr));
        entry.insert(TOKEN_TIME.into(), n(st.time));
        async move {
            let req = inner
                .client
                .put_item()
                .table_name(inner.journal_table())
                .set_item(Some(entry))
                .condition_expression("attribute_not_exists(pk)");
            match inner.retry.run(REBUILD, || req.clone().send()).await {
                Ok(_) => Ok(()),
                Err(f) if f.class == Class::Conflict => {
                    match inner.get_item(REBUILD, w.key.clone()).await? {
                    Some(item) => check_entry(pid, st, w, &item),
                    None => Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "the tag index entry number {} of tag {:?} was taken and removed again while it was rebuilt; run the rebuild again",
                            w.number, w.tag
                        ),
                    )
                    .with_persistence_id(pid)
                    .with_sequence_range(st.event.sequence_nr, st.event.sequence_nr)),
                }
                }
                Err(f) => Err(f.into_error()),
            }
        }
    }
}

/// Checks that the item in `w`'s slot is `w`'s entry: a tombstone or another event's entry
/// where a stored event's entry belongs is corrupt.
fn check_entry(pid: &str, st: &Stored, w: &Wanted<'_>, item: &Item) -> Result<()> {
    let seq = st.event.sequence_nr;
    let problem = if is_tombstone(item) {
        Some("is a tombstone (readers skip that number)".to_owned())
    } else if get_str(item, PID) != pid || get_u64(item, SEQ) != Some(seq) {
        Some(format!(
            "holds event {} of {:?}",
            get_u64(item, SEQ).unwrap_or(0),
            get_str(item, PID)
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "the tag index entry number {} of tag {:?} {problem}, while event {seq} of {pid}, which took that number, is stored; the rebuild does not overwrite it",
                w.number, w.tag
            ),
        )
        .with_persistence_id(pid)
        .with_sequence_range(seq, seq)),
    }
}

/// Raises the counter of the numbered partition `pk` to `number` unless it is there
/// already (never lowers it): one conditional `UpdateItem`.
async fn raise_counter(inner: &Inner, pk: String, number: u64) -> Result<()> {
    let req = inner
        .client
        .update_item()
        .table_name(inner.journal_table())
        .set_key(Some(key(pk, COUNTER_SK.to_owned())))
        .update_expression("SET n = :n")
        .condition_expression("attribute_not_exists(n) OR n < :n")
        .expression_attribute_values(":n", n(number));
    match inner.retry.run(REBUILD, || req.clone().send()).await {
        // Already at or above it.
        Ok(_) => Ok(()),
        Err(f) if f.class == Class::Conflict => Ok(()),
        Err(f) => Err(f.into_error()),
    }
}

/// One page of the event items (tombstones included, the `#` item not) of `pid` from
/// sequence number `from` on.
async fn event_page(
    inner: &Inner,
    operation: &'static str,
    pid: &str,
    from: u64,
    start: Option<Item>,
) -> Result<(Vec<Item>, Option<Item>)> {
    query_page(
        inner,
        operation,
        "pk = :pk AND sk BETWEEN :a AND :b",
        vec![
            (":pk", inner.keys.event_pk(pid)),
            (":a", seq_sk(from)),
            (":b", seq_sk(u64::MAX)),
        ],
        start,
    )
    .await
}

/// What the event item `item` of `pid` is to a rebuild (see [`Found`]): a tombstone or an
/// event at or below `deleted_to` is deleted; a large write's part is stored when the
/// write is complete, retired when it can no longer complete, in flight otherwise.
async fn found(
    inner: &Inner,
    large: &mut LargeWrites,
    pid: &PersistenceId,
    deleted_to: u64,
    item: Item,
) -> Result<Found> {
    let seq = event_seq(&item)?;
    let retired = |item: &Item| {
        tag_numbers(item).map(Found::Retired).map_err(|e| {
            e.with_persistence_id(pid.as_str())
                .with_sequence_range(seq, seq)
        })
    };
    if is_tombstone(&item) || seq <= deleted_to {
        return retired(&item);
    }
    if let Some(lw) = large_write(&item) {
        match large.check(inner, pid.as_str(), lw, true).await? {
            Some(true) => {}
            Some(false) => return retired(&item),
            None => return Ok(Found::InFlight),
        }
    }
    Ok(Found::Stored(Box::new(stored_event(pid, item)?)))
}

/// The tag numbers an event item (or a deleted event's tombstone) records (`tn`), tag and
/// number; none when it has none.
fn tag_numbers(item: &Item) -> Result<Vec<(String, u64)>> {
    match item.get(TAG_NUMBERS) {
        None => Ok(Vec::new()),
        Some(AttributeValue::M(m)) => {
            m.iter()
                .map(|(tag, v)| match v {
                    AttributeValue::N(num) => num
                        .parse::<u64>()
                        .map(|num| (tag.clone(), num))
                        .map_err(|_| {
                            corrupt(TAG_NUMBERS, format!("the number of tag {tag:?} is {num:?}"))
                        }),
                    _ => Err(corrupt(
                        TAG_NUMBERS,
                        format!("the number of tag {tag:?} is not of type N"),
                    )),
                })
                .collect()
        }
        Some(_) => Err(corrupt(TAG_NUMBERS, "is not of type M")),
    }
}

/// Decodes a stored event item of `pid` for the rebuild: the event, its large-write
/// marker, its entries' write time and its tag numbers, which must name exactly its tags.
fn stored_event(pid: &PersistenceId, item: Item) -> Result<Stored> {
    let seq = event_seq(&item)?;
    let named = |e: Error| {
        e.with_persistence_id(pid.as_str())
            .with_sequence_range(seq, seq)
    };
    let large = large_write(&item);
    let recorded = get_i64(&item, TOKEN_TIME).or(large.map(|lw| lw.time_ms));
    let mut numbers = tag_numbers(&item).map_err(named)?;
    numbers.sort();
    let event = decode_event(pid.clone(), seq, item)?;
    let mut tags: Vec<&String> = event.tags.iter().collect();
    tags.sort();
    tags.dedup();
    if tags.len() != numbers.len() || tags.iter().zip(&numbers).any(|(t, (nt, _))| *t != nt) {
        return Err(named(corrupt(
            TAG_NUMBERS,
            format!(
                "the event's tags {tags:?} and the tags it recorded numbers for {:?} differ",
                numbers.iter().map(|(t, _)| t).collect::<Vec<_>>()
            ),
        )));
    }
    let time = recorded.unwrap_or_else(|| event.timestamp.as_millis());
    Ok(Stored {
        event,
        large,
        time,
        numbers,
    })
}

/// Every id of the journal with a highest above 0, once each, from the items at sequence
/// number 1 (see the module docs): a `Scan` of the journal table, a page at a time.
fn scan(inner: Arc<Inner>) -> impl futures::Stream<Item = Result<PersistenceId>> + Send + 'static {
    try_stream! {
        let prefix = inner.keys.kind_prefix('e');
        let mut start: Option<Item> = None;
        loop {
            let (items, next) = scan_page(
                &inner,
                SCAN,
                "begins_with(pk, :p) AND sk = :first",
                "pk, sk, #af",
                &[("#af", AW_FROM)],
                vec![(":p", prefix.clone()), (":first", seq_sk(1))],
                start,
            )
            .await?;
            for item in items {
                let pid = get_str(&item, PK).get(prefix.len()..).unwrap_or("").to_owned();
                // The bottom of a large write that may never have completed: listed only
                // if the id has a highest.
                if item.contains_key(AW_FROM) && inner.highest(&pid).await? == 0 {
                    continue;
                }
                yield PersistenceId::new(pid.clone()).map_err(|e| {
                    corrupt(PK, format!("the event partition {pid:?} holds no valid persistence id: {e}"))
                })?;
            }
            match next {
                Some(k) => start = Some(k),
                None => break,
            }
        }
    }
}

/// Deletes every item of this journal's tag index (entries, tombstones and counters), id
/// registry and new-id feed: a `Scan` of the journal table for their key prefixes, keys
/// only, each page's items deleted (`BatchWriteItem`s of 25) before the next is read.
async fn truncate(inner: &Inner) -> Result<()> {
    let keys = &inner.keys;
    let prefixes = [
        (":t", keys.kind_prefix('t')),
        (":p", keys.kind_prefix('p')),
        (":n", keys.kind_prefix('n')),
    ];
    let mut start: Option<Item> = None;
    loop {
        let (items, next) = scan_page(
            inner,
            TRUNCATE,
            "begins_with(pk, :t) OR begins_with(pk, :p) OR begins_with(pk, :n)",
            "pk, sk",
            &[],
            prefixes.to_vec(),
            start,
        )
        .await?;
        let keys = items.iter().map(key_of).collect();
        inner
            .batch_delete(TRUNCATE, inner.journal_table(), keys)
            .await?;
        match next {
            Some(k) => start = Some(k),
            None => return Ok(()),
        }
    }
}

/// One page of a `Scan` of the journal table: `filter` over string `values`, the
/// attributes `projection` (with the placeholders `names`), `page_size` items examined.
async fn scan_page(
    inner: &Inner,
    operation: &'static str,
    filter: &'static str,
    projection: &'static str,
    names: &[(&str, &str)],
    values: Vec<(&'static str, String)>,
    start: Option<Item>,
) -> Result<(Vec<Item>, Option<Item>)> {
    let mut req = inner
        .client
        .scan()
        .table_name(inner.journal_table())
        .filter_expression(filter)
        .projection_expression(projection)
        .limit(inner.config.page_size.min(i32::MAX as u32) as i32)
        .consistent_read(inner.consistent())
        .set_exclusive_start_key(start);
    for (name, attribute) in names {
        req = req.expression_attribute_names(*name, *attribute);
    }
    for (name, value) in values {
        req = req.expression_attribute_values(name, s(value));
    }
    let out = inner
        .retry
        .run(operation, || req.clone().send())
        .await
        .map_err(Failed::into_error)?;
    let next = out.last_evaluated_key().cloned();
    Ok((out.items.unwrap_or_default(), next))
}

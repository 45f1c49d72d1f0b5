//! [`DynamoDbSnapshotStore`]: snapshots in their own table, chunked above the item limit.
//!
//! A snapshot that fits one item is one head item with its payload inline. A larger one is
//! written as chunk items under a fresh version id first, and only then the head, which
//! names that version, its chunk count and its length: the head is the commit, so a
//! half-written snapshot is never found, and a load that finds fewer chunks than the head
//! names (a concurrent delete) skips to the next older snapshot instead of returning part.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, ReturnValue, WriteRequest};
use persistence_api::{
    Error, ErrorKind, Payload, PersistenceId, Result, SelectedSnapshot, SnapshotMetadata,
    SnapshotSelectionCriteria, SnapshotStore, Timestamp,
};

use crate::core::Inner;
use crate::error::corrupt;
use crate::error::Class;
use crate::item::{
    b, get_str, get_u64, item_size, n, s, take_metadata, take_str, Item, MANIFEST, META_BYTES,
    META_MANIFEST, META_SERIALIZER, PAYLOAD, SERIALIZER, TIMESTAMP,
};
use crate::schema::{MAX_ITEM_BYTES, PK, SK};

/// Bytes per chunk of a large snapshot.
pub const SNAPSHOT_CHUNK_BYTES: usize = 350 * 1024;

const VERSION: &str = "cv";
const CHUNKS: &str = "cn";
const LENGTH: &str = "cl";
const DATA: &str = "d";

/// The snapshot store on DynamoDB. Build it with [`crate::DynamoDb`].
#[derive(Clone)]
pub struct DynamoDbSnapshotStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoDbSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbSnapshotStore")
            .field("table", &self.inner.config.snapshot_table)
            .finish()
    }
}

/// A binary attribute of `item`: empty when absent (empty bytes are not stored), another
/// type is corrupt.
fn bytes_of(item: &Item, name: &str) -> Result<Vec<u8>> {
    match item.get(name) {
        None => Ok(Vec::new()),
        Some(AttributeValue::B(v)) => Ok(v.as_ref().to_vec()),
        Some(_) => Err(corrupt(name, "is not of type B")),
    }
}

fn skey(pk: String, sk: u64) -> Item {
    Item::from([(PK.to_owned(), s(pk)), (SK.to_owned(), n(sk))])
}

impl DynamoDbSnapshotStore {
    fn chunk_keys(&self, head: &Item) -> Vec<Item> {
        let version = get_str(head, VERSION);
        if version.is_empty() {
            return Vec::new();
        }
        let count = get_u64(head, CHUNKS).unwrap_or(0);
        (0..count)
            .map(|i| skey(self.inner.keys.chunk_pk(version), i))
            .collect()
    }

    async fn delete_chunks_of(&self, head: Option<&Item>) {
        let Some(head) = head else { return };
        let keys = self.chunk_keys(head);
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self
            .inner
            .batch_delete("delete_snapshot", self.inner.snapshot_table(), keys)
            .await
        {
            tracing::warn!(error = %e, "could not delete the chunks of a replaced or deleted snapshot");
        }
    }

    /// The payload of a head: inline, or reassembled from its chunks (`None` when a chunk
    /// is missing).
    async fn payload_of(&self, head: &Item) -> Result<Option<Vec<u8>>> {
        let version = get_str(head, VERSION);
        if version.is_empty() {
            return Ok(Some(bytes_of(head, PAYLOAD)?));
        }
        let inner = &self.inner;
        let count = get_u64(head, CHUNKS).unwrap_or(0);
        let length = get_u64(head, LENGTH).unwrap_or(0) as usize;
        let mut data = Vec::with_capacity(length);
        let mut next = 0u64;
        let mut start = None;
        loop {
            let req = inner
                .client
                .query()
                .table_name(inner.snapshot_table())
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(inner.keys.chunk_pk(version)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            let out = inner
                .retry
                .run("load_snapshot", || req.clone().send())
                .await
                .map_err(|f| f.into_error("load_snapshot"))?;
            for item in out.items() {
                if get_u64(item, SK) != Some(next) {
                    return Ok(None);
                }
                data.extend_from_slice(&bytes_of(item, DATA)?);
                next += 1;
            }
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        if next != count || data.len() != length {
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// One page of the heads of `pid` matching `criteria`, newest first.
    async fn heads_page(
        &self,
        operation: &'static str,
        pid: &str,
        criteria: &SnapshotSelectionCriteria,
        keys_only: bool,
        start: Option<Item>,
    ) -> Result<(Vec<Item>, Option<Item>)> {
        let inner = &self.inner;
        let mut req = inner
            .client
            .query()
            .table_name(inner.snapshot_table())
            .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
            .filter_expression("ts BETWEEN :t0 AND :t1")
            .expression_attribute_values(":pk", s(inner.keys.snapshot_pk(pid)))
            .expression_attribute_values(":a", n(criteria.min_sequence_nr))
            .expression_attribute_values(":b", n(criteria.max_sequence_nr))
            .expression_attribute_values(":t0", n(criteria.min_timestamp.as_millis()))
            .expression_attribute_values(":t1", n(criteria.max_timestamp.as_millis()))
            .scan_index_forward(false)
            .consistent_read(inner.consistent())
            .set_exclusive_start_key(start);
        if keys_only {
            req = req
                .projection_expression("pk, sk, ts, cv, cn")
                .limit(inner.config.page_size as i32);
        } else {
            req = req.limit(4);
        }
        let out = inner
            .retry
            .run(operation, || req.clone().send())
            .await
            .map_err(|f| f.into_error(operation))?;
        let last = out.last_evaluated_key().cloned();
        Ok((out.items.unwrap_or_default(), last))
    }

    /// The snapshot a head item holds, with its payload `bytes`. An attribute of the wrong
    /// type, or metadata attributes set in part, is [`ErrorKind::Corrupt`] naming the
    /// attribute (the caller adds the snapshot's id and sequence number).
    fn selected(
        &self,
        pid: &PersistenceId,
        seq: u64,
        mut head: Item,
        bytes: Vec<u8>,
    ) -> Result<SelectedSnapshot> {
        let metadata = take_metadata(&mut head)?;
        let timestamp = match head.get(TIMESTAMP) {
            Some(AttributeValue::N(v)) => v.parse::<i64>().map_err(|e| {
                corrupt(
                    TIMESTAMP,
                    format!("{v:?} is not a number of milliseconds: {e}"),
                )
            })?,
            None => {
                return Err(corrupt(
                    TIMESTAMP,
                    "missing (every snapshot is written with one)",
                ))
            }
            Some(_) => return Err(corrupt(TIMESTAMP, "is not of type N")),
        };
        Ok(SelectedSnapshot {
            metadata: SnapshotMetadata {
                persistence_id: pid.clone(),
                sequence_nr: seq,
                timestamp: Timestamp::from_millis(timestamp),
                metadata,
            },
            snapshot: Payload::new(
                take_str(&mut head, SERIALIZER)?,
                take_str(&mut head, MANIFEST)?,
                bytes,
            ),
        })
    }
}

#[async_trait]
impl SnapshotStore for DynamoDbSnapshotStore {
    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()> {
        let inner = &self.inner;
        let pid = metadata.persistence_id.as_str();
        let seq = metadata.sequence_nr;
        let ctx = |e: Error| {
            e.with_operation("save_snapshot")
                .with_persistence_id(pid)
                .with_sequence_range(seq, seq)
        };
        let mut head = skey(inner.keys.snapshot_pk(pid), seq);
        head.insert(TIMESTAMP.into(), n(metadata.timestamp.as_millis()));
        if !snapshot.serializer_id.is_empty() {
            head.insert(SERIALIZER.into(), s(snapshot.serializer_id.clone()));
        }
        if !snapshot.manifest.is_empty() {
            head.insert(MANIFEST.into(), s(snapshot.manifest.clone()));
        }
        if let Some(m) = &metadata.metadata {
            head.insert(META_SERIALIZER.into(), s(m.serializer_id.clone()));
            head.insert(META_MANIFEST.into(), s(m.manifest.clone()));
            head.insert(META_BYTES.into(), b(&m.bytes));
        }
        let bare = item_size(&head) + 64;
        if bare > MAX_ITEM_BYTES {
            return Err(ctx(Error::new(
                ErrorKind::Rejected,
                format!("the snapshot's metadata and manifests take {bare} bytes; DynamoDB stores at most {MAX_ITEM_BYTES} bytes per item"),
            )));
        }
        let bytes = &snapshot.bytes;
        if bare + bytes.len() + PAYLOAD.len() <= MAX_ITEM_BYTES {
            if !bytes.is_empty() {
                head.insert(PAYLOAD.into(), b(bytes));
            }
        } else {
            let version = uuid::Uuid::new_v4().simple().to_string();
            let mut requests = Vec::new();
            let chunks: Vec<&[u8]> = bytes.chunks(SNAPSHOT_CHUNK_BYTES).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let mut item = skey(inner.keys.chunk_pk(&version), i as u64);
                item.insert(DATA.into(), b(chunk));
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map_err(|e| ctx(Error::new(ErrorKind::Unexpected, e.to_string())))?;
                requests.push(WriteRequest::builder().put_request(put).build());
            }
            // 16 chunks of 350 KB keep each request under BatchWriteItem's 16 MB.
            for batch in requests.chunks(16) {
                let mut pending = batch.to_vec();
                if let Err(e) = inner
                    .batch_write("save_snapshot", inner.snapshot_table(), &mut pending)
                    .await
                {
                    // No head names these chunks, so nothing can load them; remove them.
                    let keys = (0..chunks.len())
                        .map(|i| skey(inner.keys.chunk_pk(&version), i as u64))
                        .collect();
                    if let Err(re) = inner
                        .batch_delete("save_snapshot", inner.snapshot_table(), keys)
                        .await
                    {
                        tracing::warn!(error = %re, "could not remove the chunks of a failed snapshot save");
                    }
                    return Err(ctx(e));
                }
            }
            head.insert(VERSION.into(), s(version));
            head.insert(CHUNKS.into(), n(chunks.len()));
            head.insert(LENGTH.into(), n(bytes.len()));
        }
        let req = inner
            .client
            .put_item()
            .table_name(inner.snapshot_table())
            .set_item(Some(head))
            .return_values(ReturnValue::AllOld);
        let out = inner
            .retry
            .run("save_snapshot", || req.clone().send())
            .await
            .map_err(|f| ctx(f.into_error("save_snapshot")))?;
        self.delete_chunks_of(out.attributes()).await;
        Ok(())
    }

    async fn load_snapshot(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<Option<SelectedSnapshot>> {
        if criteria.is_empty() {
            return Ok(None);
        }
        let pid = persistence_id.as_str();
        let mut start = None;
        loop {
            let (heads, next) = self
                .heads_page("load_snapshot", pid, &criteria, false, start)
                .await
                .map_err(|e| e.with_persistence_id(pid))?;
            for head in heads {
                let seq = get_u64(&head, SK).ok_or_else(|| {
                    corrupt(SK, "a snapshot head's sort key is not a sequence number")
                        .with_operation("load_snapshot")
                        .with_persistence_id(pid)
                })?;
                let named = |e: Error| {
                    e.with_operation("load_snapshot")
                        .with_persistence_id(pid)
                        .with_sequence_range(seq, seq)
                };
                match self.payload_of(&head).await.map_err(named)? {
                    Some(bytes) => {
                        return self
                            .selected(persistence_id, seq, head, bytes)
                            .map(Some)
                            .map_err(named)
                    }
                    None => tracing::warn!(
                        persistence_id = pid,
                        "a snapshot's chunks are incomplete (deleted concurrently?); trying an older one"
                    ),
                }
            }
            match next {
                Some(k) => start = Some(k),
                None => return Ok(None),
            }
        }
    }

    async fn delete_snapshot(&self, metadata: &SnapshotMetadata) -> Result<()> {
        let inner = &self.inner;
        let pid = metadata.persistence_id.as_str();
        let mut req = inner
            .client
            .delete_item()
            .table_name(inner.snapshot_table())
            .set_key(Some(skey(
                inner.keys.snapshot_pk(pid),
                metadata.sequence_nr,
            )))
            .return_values(ReturnValue::AllOld);
        if metadata.timestamp != Timestamp::MIN {
            req = req
                .condition_expression("ts = :ts")
                .expression_attribute_values(":ts", n(metadata.timestamp.as_millis()));
        }
        match inner
            .retry
            .run("delete_snapshot", || req.clone().send())
            .await
        {
            Ok(out) => {
                self.delete_chunks_of(out.attributes()).await;
                Ok(())
            }
            Err(f) if f.class == Class::Conflict => Ok(()),
            Err(f) => Err(f
                .into_error("delete_snapshot")
                .with_persistence_id(pid)
                .with_sequence_range(metadata.sequence_nr, metadata.sequence_nr)),
        }
    }

    async fn delete_snapshots(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<()> {
        if criteria.is_empty() {
            return Ok(());
        }
        let pid = persistence_id.as_str();
        let mut heads: Vec<Item> = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self
                .heads_page("delete_snapshots", pid, &criteria, true, start)
                .await
                .map_err(|e| e.with_persistence_id(pid))?;
            heads.extend(page);
            match next {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        let mut keys: Vec<Item> = heads
            .iter()
            .map(|h| {
                h.iter()
                    .filter(|(k, _)| k.as_str() == PK || k.as_str() == SK)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Item>()
            })
            .collect();
        // Heads first, so no load finds a head whose chunks are already gone.
        self.inner
            .batch_delete(
                "delete_snapshots",
                self.inner.snapshot_table(),
                keys.split_off(0),
            )
            .await
            .map_err(|e| e.with_persistence_id(persistence_id.as_str()))?;
        let chunk_keys: Vec<Item> = heads.iter().flat_map(|h| self.chunk_keys(h)).collect();
        keys.extend(chunk_keys);
        if !keys.is_empty() {
            self.inner
                .batch_delete("delete_snapshots", self.inner.snapshot_table(), keys)
                .await
                .map_err(|e| e.with_persistence_id(persistence_id.as_str()))?;
        }
        Ok(())
    }
}

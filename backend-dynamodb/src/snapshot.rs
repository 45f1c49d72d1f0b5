//! [`DynamoDbSnapshotStore`]: snapshots in their own table, chunked above the item limit.
//!
//! A snapshot that fits one item is one head item with its payload inline. A larger one is
//! written as chunk items under a fresh version id first, and only then the head, which
//! names that version, its chunk count and its length: the head is the commit, so a
//! half-written snapshot is never found, and a load that finds fewer chunks than the head
//! names (a concurrent delete) skips to the next older snapshot instead of returning part.
//! A save that replaces a head deletes the replaced version's chunks, so a chunked head is
//! never put twice: a put whose answer was lost is tried again under a fresh version (see
//! `save_snapshot`; found by the kit run with injected 500s, `tests/tck_throttled.rs`).

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use persistence_api::{
    Error, ErrorKind, Payload, PersistenceId, Result, SelectedSnapshot, SnapshotMetadata,
    SnapshotSelectionCriteria, SnapshotStore, Timestamp,
};

use crate::core::{put_request, Inner};
use crate::error::{corrupt, Class, Failed};
use crate::schema::{
    b, bytes_of, decode_snapshot_head, get_str, get_u64, item_size, key_of, n, s, snapshot_head,
    snapshot_key, Item, CHUNK_COUNT, CHUNK_DATA, CHUNK_LENGTH, CHUNK_VERSION, MAX_ITEM_BYTES,
    PAYLOAD, SK,
};

/// Bytes per chunk of a large snapshot.
pub const SNAPSHOT_CHUNK_BYTES: usize = 350 * 1024;

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

impl DynamoDbSnapshotStore {
    fn chunk_keys(&self, head: &Item) -> Vec<Item> {
        let version = get_str(head, CHUNK_VERSION);
        if version.is_empty() {
            return Vec::new();
        }
        let count = get_u64(head, CHUNK_COUNT).unwrap_or(0);
        (0..count)
            .map(|i| snapshot_key(self.inner.keys.chunk_pk(version), i))
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

    /// Deletes the `count` chunks of `version` (best effort: a leftover chunk is never read).
    async fn delete_version(&self, version: &str, count: usize) {
        let keys = (0..count)
            .map(|i| snapshot_key(self.inner.keys.chunk_pk(version), i as u64))
            .collect();
        if let Err(e) = self
            .inner
            .batch_delete("save_snapshot", self.inner.snapshot_table(), keys)
            .await
        {
            tracing::warn!(error = %e, "could not remove the chunks of an unused snapshot version");
        }
    }

    /// Writes `bytes` as the chunks of `version`; answers their count. On failure no head
    /// names them: they are removed and the error returned.
    async fn write_chunks(&self, version: &str, bytes: &[u8]) -> Result<usize> {
        let inner = &self.inner;
        let mut requests = Vec::new();
        let chunks: Vec<&[u8]> = bytes.chunks(SNAPSHOT_CHUNK_BYTES).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut item = snapshot_key(inner.keys.chunk_pk(version), i as u64);
            item.insert(CHUNK_DATA.into(), b(chunk));
            requests.push(put_request(item)?);
        }
        // 16 chunks of 350 KB keep each request under BatchWriteItem's 16 MB.
        for batch in requests.chunks(16) {
            let mut pending = batch.to_vec();
            if let Err(e) = inner
                .batch_write("save_snapshot", inner.snapshot_table(), &mut pending)
                .await
            {
                self.delete_version(version, chunks.len()).await;
                return Err(e);
            }
        }
        Ok(chunks.len())
    }

    /// The payload of a head: inline, or reassembled from its chunks (`None` when a chunk
    /// is missing).
    async fn payload_of(&self, head: &Item) -> Result<Option<Vec<u8>>> {
        let version = get_str(head, CHUNK_VERSION);
        if version.is_empty() {
            return Ok(Some(bytes_of(head, PAYLOAD)?));
        }
        let inner = &self.inner;
        let count = get_u64(head, CHUNK_COUNT).unwrap_or(0);
        let length = get_u64(head, CHUNK_LENGTH).unwrap_or(0) as usize;
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
                .map_err(Failed::into_error)?;
            for item in out.items() {
                if get_u64(item, SK) != Some(next) {
                    return Ok(None);
                }
                data.extend_from_slice(&bytes_of(item, CHUNK_DATA)?);
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
            .map_err(Failed::into_error)?;
        let last = out.last_evaluated_key().cloned();
        Ok((out.items.unwrap_or_default(), last))
    }

    /// Deletes the snapshots of `pid` matching `criteria` (heads first, so no load finds a
    /// head whose chunks are gone, then their chunks) and answers how many heads it
    /// deleted.
    pub(crate) async fn delete_matching(
        &self,
        operation: &'static str,
        pid: &str,
        criteria: &SnapshotSelectionCriteria,
    ) -> Result<u64> {
        if criteria.is_empty() {
            return Ok(0);
        }
        let mut heads: Vec<Item> = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self
                .heads_page(operation, pid, criteria, true, start)
                .await?;
            heads.extend(page);
            match next {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        let keys: Vec<Item> = heads.iter().map(key_of).collect();
        let table = self.inner.snapshot_table();
        self.inner.batch_delete(operation, table, keys).await?;
        let chunk_keys: Vec<Item> = heads.iter().flat_map(|h| self.chunk_keys(h)).collect();
        if !chunk_keys.is_empty() {
            self.inner
                .batch_delete(operation, table, chunk_keys)
                .await?;
        }
        Ok(heads.len() as u64)
    }
}

#[async_trait]
impl SnapshotStore for DynamoDbSnapshotStore {
    async fn save_snapshot(&self, metadata: SnapshotMetadata, snapshot: Payload) -> Result<()> {
        let inner = &self.inner;
        let pid = metadata.persistence_id.as_str();
        let mut head = snapshot_head(inner.keys.snapshot_pk(pid), &metadata, &snapshot);
        let bare = item_size(&head) + 64;
        if bare > MAX_ITEM_BYTES {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!("the snapshot's metadata and manifests take {bare} bytes; DynamoDB stores at most {MAX_ITEM_BYTES} bytes per item"),
            ));
        }
        let bytes = &snapshot.bytes;
        if bare + bytes.len() + PAYLOAD.len() <= MAX_ITEM_BYTES {
            if !bytes.is_empty() {
                head.insert(PAYLOAD.into(), b(bytes));
            }
            // An inline head may be put twice (a retry after a lost answer): it carries its
            // whole payload, whatever it replaced.
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
                .map_err(Failed::into_error)?;
            self.delete_chunks_of(out.attributes()).await;
            return Ok(());
        }
        // A chunked head is never put twice. Whoever replaces a head deletes its chunks, so
        // a head put again after its answer was lost (applied, then replaced by a
        // concurrent save that deleted its chunks, then put back by the retry) would name
        // chunks that are gone: an acknowledged snapshot lost. A put that may have been
        // applied is therefore tried again under a fresh version with its own chunks; once
        // one is acknowledged, the chunks of the earlier versions go (no head can name them
        // again: only this call would put them).
        let mut earlier: Vec<(String, usize)> = Vec::new();
        let mut retry = 0;
        loop {
            let version = uuid::Uuid::new_v4().simple().to_string();
            let count = self.write_chunks(&version, bytes).await?;
            let mut head = head.clone();
            head.insert(CHUNK_VERSION.into(), s(version.clone()));
            head.insert(CHUNK_COUNT.into(), n(count));
            head.insert(CHUNK_LENGTH.into(), n(bytes.len()));
            let req = inner
                .client
                .put_item()
                .table_name(inner.snapshot_table())
                .set_item(Some(head))
                .return_values(ReturnValue::AllOld);
            match inner
                .retry
                .run_until_ambiguous("save_snapshot", || req.clone().send())
                .await
            {
                Ok(out) => {
                    self.delete_chunks_of(out.attributes()).await;
                    for (version, count) in &earlier {
                        self.delete_version(version, *count).await;
                    }
                    return Ok(());
                }
                Err(f) if f.class.ambiguous() && retry < inner.retry.max_retries => {
                    earlier.push((version, count));
                    tokio::time::sleep(inner.retry.delay(retry)).await;
                    retry += 1;
                }
                Err(f) => {
                    if !f.class.ambiguous() {
                        // Not applied: no head names this version.
                        self.delete_version(&version, count).await;
                    }
                    // The earlier versions stay: one of them may be the head.
                    return Err(f.into_error());
                }
            }
        }
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
                .await?;
            for head in heads {
                let seq = get_u64(&head, SK).ok_or_else(|| {
                    corrupt(SK, "a snapshot head's sort key is not a sequence number")
                })?;
                // Names the snapshot (the call selects by criteria, not by number).
                let named = |e: Error| e.with_sequence_range(seq, seq);
                match self.payload_of(&head).await.map_err(named)? {
                    Some(bytes) => {
                        return decode_snapshot_head(persistence_id, seq, head, bytes)
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
            .set_key(Some(snapshot_key(
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
            Err(f) => Err(f.into_error()),
        }
    }

    async fn delete_snapshots(
        &self,
        persistence_id: &PersistenceId,
        criteria: SnapshotSelectionCriteria,
    ) -> Result<()> {
        self.delete_matching("delete_snapshots", persistence_id.as_str(), &criteria)
            .await
            .map(|_| ())
    }
}

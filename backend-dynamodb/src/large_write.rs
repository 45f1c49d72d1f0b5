//! Atomic writes too large for one transaction: the write over several transactions, the
//! check that one is complete, the fence that stops an unfinished one for good, and the
//! removal of an unfinished one's parts (the README's "Large atomic writes" explains why
//! each step is safe).

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{ConditionCheck, TransactWriteItem, Update};
use persistence_api::{ErrorKind, Result};

use crate::core::{now_ms, put_request, Inner};
use crate::error::{build_error, Class};
use crate::journal::{DynamoDbJournal, Fail, Kind};
use crate::schema::{
    item_size, key, key_of, large_write, n, seq_sk, sk_str, tombstone, Item, LargeWrite,
    MAX_PK_BYTES, MAX_TX_BYTES, MAX_TX_ITEMS,
};

impl DynamoDbJournal {
    /// An atomic write too large for one transaction: several transactions, every event and
    /// tag entry marked with the write's range and time, the registry items and the last event
    /// in the last transaction, so the write counts as stored exactly when its last event
    /// exists. Every transaction after the first also checks that the write's first event is
    /// still there and not fenced off by another writer removing it as a leftover
    /// ([`Inner::fence`]), so a fenced write can add nothing more. A failure after the first
    /// transaction removes what the earlier ones stored (best effort, top down; leftovers
    /// stay invisible and are removed by the next write they are in the way of).
    pub(crate) async fn write_large(
        &self,
        pid: &str,
        lw: LargeWrite,
        items: Vec<(Item, Kind)>,
    ) -> std::result::Result<(), Fail> {
        let (mut body, markers): (Vec<_>, Vec<_>) =
            items.into_iter().partition(|(_, k)| *k != Kind::Marker);
        let last = body
            .iter()
            .rposition(|(_, k)| *k == Kind::Event)
            .map(|i| body.remove(i));
        body.extend(markers);
        body.extend(last);
        let mut chunks: Vec<Vec<(Item, Kind)>> = Vec::new();
        let mut cur: Vec<(Item, Kind)> = Vec::new();
        let mut cur_size = 0;
        for (item, kind) in body {
            let size = item_size(&item);
            // Transactions after the first carry the fence check: one item and its key less.
            let (max_items, max_bytes) = if chunks.is_empty() {
                (MAX_TX_ITEMS, MAX_TX_BYTES)
            } else {
                (MAX_TX_ITEMS - 1, MAX_TX_BYTES - MAX_PK_BYTES - 64)
            };
            if !cur.is_empty() && (cur.len() == max_items || cur_size + size > max_bytes) {
                chunks.push(std::mem::take(&mut cur));
                cur_size = 0;
            }
            cur_size += size;
            cur.push((item, kind));
        }
        if !cur.is_empty() {
            chunks.push(cur);
        }
        let first = key(self.inner.keys.event_pk(pid), seq_sk(lw.from));
        for (k, chunk) in chunks.iter().enumerate() {
            let fence = (k > 0).then_some((&first, lw));
            if let Err(e) = self.transact(chunk, fence).await {
                // A transaction that failed ambiguously (timeout, 5xx) may still have been
                // applied: remove its items too. Events go top down, so the last event (the
                // commit mark) goes first and what is left is always the bottom of the write.
                let ambiguous = matches!(&e, Fail::Other(e) if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable));
                let upto = if ambiguous { k + 1 } else { k };
                if upto > 0 {
                    let parts = chunks[..upto].iter().flatten();
                    let events = parts
                        .clone()
                        .filter(|(_, kind)| *kind == Kind::Event)
                        .map(|(i, _)| key_of(i))
                        .collect();
                    let entries = parts
                        .filter(|(_, kind)| *kind == Kind::TagEntry)
                        .map(|(i, _)| key_of(i))
                        .collect();
                    if let Err(re) = self.inner.remove_parts(lw, events, entries).await {
                        tracing::warn!(error = %re, "could not remove the stored part of a failed atomic write; it stays invisible until a write at its sequence numbers removes it");
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Inner {
    /// Whether a multi-transaction atomic write is complete: its last event exists.
    pub(crate) async fn write_complete(&self, pid: &str, lw: LargeWrite) -> Result<bool> {
        let item = self
            .get_item("replay", key(self.keys.event_pk(pid), seq_sk(lw.to)))
            .await?;
        Ok(item.as_ref().is_some_and(|i| {
            large_write(i).is_some_and(|l| l.from == lw.from && l.time_ms == lw.time_ms)
        }))
    }

    /// After a write found sequence number `seq` taken: whether the item there is a leftover
    /// of a large write that never completed; if so, that write is fenced off and its stored
    /// parts removed, and the caller writes again (true). False: a real conflict.
    pub(crate) async fn clear_leftover(&self, pid: &str, seq: u64) -> Result<bool> {
        let item = self
            .get_item("write_events", key(self.keys.event_pk(pid), seq_sk(seq)))
            .await?;
        let Some(found) = item.as_ref() else {
            // Gone meanwhile (its writer removed it): write again.
            return Ok(true);
        };
        let Some(lw) = large_write(found) else {
            return Ok(false);
        };
        if self.write_complete(pid, lw).await? || !self.fence(pid, lw).await? {
            return Ok(false);
        }
        let events: Vec<Item> = self
            .query_events("write_events", pid, lw.from, lw.to, None)
            .await?
            .into_iter()
            .filter(|i| large_write(i) == Some(lw))
            .collect();
        let entries = events
            .iter()
            .flat_map(|ev| self.tag_entry_keys(pid, ev))
            .collect();
        let events = events.iter().map(key_of).collect();
        tracing::info!(
            persistence_id = pid,
            from = lw.from,
            to = lw.to,
            "removing the leftovers of a large atomic write that never completed"
        );
        self.remove_parts(lw, events, entries).await?;
        Ok(true)
    }

    /// Makes sure the unfinished large write `lw` can never complete: in one transaction,
    /// checks that its last event is absent and marks its first event (which every later
    /// transaction of the write checks) as abandoned. DynamoDB serializes this transaction
    /// with the write's own transactions (they share items), so either the write completed
    /// first (false: it is a real write) or none of its transactions can succeed afterwards.
    /// When the first event is gone or another write's, the write cannot complete either.
    pub(crate) async fn fence(&self, pid: &str, lw: LargeWrite) -> Result<bool> {
        let pk = self.keys.event_pk(pid);
        let check = ConditionCheck::builder()
            .table_name(self.journal_table())
            .set_key(Some(key(pk.clone(), seq_sk(lw.to))))
            .condition_expression(
                "attribute_not_exists(pk) OR attribute_not_exists(af) OR af <> :f OR aw <> :t",
            )
            .expression_attribute_values(":f", n(lw.from))
            .expression_attribute_values(":t", n(lw.time_ms))
            .build()
            .map_err(build_error)?;
        let mark = Update::builder()
            .table_name(self.journal_table())
            .set_key(Some(key(pk, seq_sk(lw.from))))
            .update_expression("SET ab = :one")
            .condition_expression("af = :f AND aw = :t")
            .expression_attribute_values(":f", n(lw.from))
            .expression_attribute_values(":t", n(lw.time_ms))
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(build_error)?;
        let req = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .transact_items(TransactWriteItem::builder().update(mark).build())
            .client_request_token(uuid::Uuid::new_v4().to_string());
        match self.retry.run("write_events", || req.clone().send()).await {
            Ok(_) => Ok(true),
            Err(f) if f.class == Class::Conflict => Ok(!self.write_complete(pid, lw).await?),
            Err(f) => Err(f.into_error()),
        }
    }

    /// Removes stored parts of the large write `lw` (keys): the events one at a time from
    /// the top down, each conditioned on carrying `lw`'s marker so nothing of another write
    /// is ever deleted, stopping at the first failure (what is left is always the bottom of
    /// the write's range, which [`Inner::highest`] relies on); then the tag entries become
    /// tombstones (their numbers were taken by this write alone, so readers skip them
    /// instead of waiting).
    pub(crate) async fn remove_parts(
        &self,
        lw: LargeWrite,
        mut events: Vec<Item>,
        entries: Vec<Item>,
    ) -> Result<()> {
        events.sort_by(|a, b| sk_str(b).cmp(sk_str(a)));
        for ev in &events {
            self.delete_part(ev, lw).await?;
        }
        let writes = entries
            .into_iter()
            .map(|k| put_request(tombstone(k)))
            .collect::<Result<Vec<_>>>()?;
        self.batch_write_all("write_events", self.journal_table(), writes)
            .await
    }

    async fn delete_part(&self, k: &Item, lw: LargeWrite) -> Result<()> {
        let req = self
            .client
            .delete_item()
            .table_name(self.journal_table())
            .set_key(Some(k.clone()))
            .condition_expression("af = :f AND aw = :t")
            .expression_attribute_values(":f", n(lw.from))
            .expression_attribute_values(":t", n(lw.time_ms));
        match self.retry.run("write_events", || req.clone().send()).await {
            Ok(_) => Ok(()),
            // Not there, or not this write's.
            Err(f) if f.class == Class::Conflict => Ok(()),
            Err(f) => Err(f.into_error()),
        }
    }
}

/// Whether a large write is complete, asked once per write.
pub(crate) struct LargeWrites {
    known: HashMap<(String, u64, i64), bool>,
    /// Incomplete writes this reader fenced off.
    fenced: HashSet<(String, u64, i64)>,
}

impl LargeWrites {
    pub(crate) fn new() -> Self {
        LargeWrites {
            known: HashMap::new(),
            fenced: HashSet::new(),
        }
    }

    /// Records that `lw` is fenced off: it can never complete.
    pub(crate) fn fenced(&mut self, pid: &str, lw: LargeWrite) {
        self.fenced.insert((pid.to_owned(), lw.from, lw.time_ms));
    }

    /// Whether this reader fenced `lw` off already.
    pub(crate) fn is_fenced(&self, pid: &str, lw: LargeWrite) -> bool {
        self.fenced.contains(&(pid.to_owned(), lw.from, lw.time_ms))
    }

    /// Records that `lw` turned out complete (its fence found the last event).
    pub(crate) fn completed(&mut self, pid: &str, lw: LargeWrite) {
        self.known
            .insert((pid.to_owned(), lw.from, lw.time_ms), true);
    }

    /// `Some(true)`: deliver; `Some(false)`: skip (incomplete, abandoned or not live);
    /// `None`: incomplete and young, and `live`: wait and look again.
    pub(crate) async fn check(
        &mut self,
        inner: &Inner,
        pid: &str,
        lw: LargeWrite,
        live: bool,
    ) -> Result<Option<bool>> {
        let k = (pid.to_owned(), lw.from, lw.time_ms);
        if let Some(done) = self.known.get(&k) {
            return Ok(Some(*done));
        }
        let complete = inner.write_complete(pid, lw).await?;
        if complete {
            self.known.insert(k, true);
            return Ok(Some(true));
        }
        let young = now_ms() - lw.time_ms < inner.config.large_write_timeout.as_millis() as i64;
        if live && young {
            return Ok(None);
        }
        self.known.insert(k, false);
        Ok(Some(false))
    }
}

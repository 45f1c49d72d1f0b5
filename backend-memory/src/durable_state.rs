//! The in-memory durable-state store: one row per id with its revision, and a change
//! index per tag ordered by a global change number (the change query's offset).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::stream;
use persistence_api::{
    revision_conflict, ChangeStream, DurableState, DurableStateChange, DurableStateStore, Error,
    Offset, Payload, PersistenceId, QueryMode, Result, Revision, Timestamp,
};
use tokio::sync::watch;

/// The in-memory durable-state store (what [`crate::Memory::stores`] puts in
/// [`persistence_api::Stores::durable_state`]). Clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryDurableStateStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<States>,
    /// Bumped after every change; live change queries wait on it when caught up.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct States {
    rows: HashMap<PersistenceId, Row>,
    /// tag -> change number -> id: each id once, at its latest change.
    changes: HashMap<String, BTreeMap<u64, PersistenceId>>,
    next_change: u64,
}

#[derive(Debug, Clone)]
struct Row {
    revision: Revision,
    payload: Option<Payload>,
    tag: Option<String>,
    timestamp: Timestamp,
    change: u64,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            state: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl MemoryDurableStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, States> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `revision` of `id` (a delete when `payload` is `None`) if the stored one is
    /// `revision - 1`.
    fn write(
        &self,
        id: &PersistenceId,
        revision: Revision,
        payload: Option<Payload>,
        tag: Option<String>,
    ) -> Result<()> {
        let mut states = self.lock();
        let states = &mut *states;
        let old = states.rows.get(id);
        let stored = old.map_or(0, |r| r.revision);
        if revision != stored + 1 {
            return Err(revision_conflict(id, stored, revision));
        }
        // A delete keeps the tag the state had, so change queries of that tag see it.
        let tag = if payload.is_none() {
            old.and_then(|r| r.tag.clone())
        } else {
            tag
        };
        if let Some(old) = old {
            if let Some(index) = old.tag.as_ref().and_then(|t| states.changes.get_mut(t)) {
                index.remove(&old.change);
            }
        }
        states.next_change += 1;
        let change = states.next_change;
        if let Some(t) = &tag {
            states
                .changes
                .entry(t.clone())
                .or_default()
                .insert(change, id.clone());
        }
        states.rows.insert(
            id.clone(),
            Row {
                revision,
                payload,
                tag,
                timestamp: Timestamp::now(),
                change,
            },
        );
        self.inner.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The changes of `tag` after change number `after`, in order.
    fn changes_after(&self, tag: &str, after: u64) -> Vec<DurableStateChange> {
        let states = self.lock();
        let Some(index) = states.changes.get(tag) else {
            return Vec::new();
        };
        index
            .range(after + 1..)
            .filter_map(|(change, id)| {
                let row = states.rows.get(id)?;
                Some(DurableStateChange {
                    offset: Offset::Sequence(*change),
                    persistence_id: id.clone(),
                    revision: row.revision,
                    payload: row.payload.clone(),
                    tag: row.tag.clone(),
                    timestamp: row.timestamp,
                })
            })
            .collect()
    }
}

#[async_trait]
impl DurableStateStore for MemoryDurableStateStore {
    async fn get(&self, persistence_id: &PersistenceId) -> Result<Option<DurableState>> {
        Ok(self
            .lock()
            .rows
            .get(persistence_id)
            .map(|row| DurableState {
                persistence_id: persistence_id.clone(),
                revision: row.revision,
                payload: row.payload.clone(),
                tag: row.tag.clone(),
                timestamp: row.timestamp,
            }))
    }

    async fn upsert(
        &self,
        persistence_id: &PersistenceId,
        revision: Revision,
        payload: Payload,
        tag: Option<String>,
    ) -> Result<()> {
        self.write(persistence_id, revision, Some(payload), tag)
    }

    async fn delete(&self, persistence_id: &PersistenceId, revision: Revision) -> Result<()> {
        self.write(persistence_id, revision, None, None)
    }

    fn query_changes(&self, tag: String, offset: Offset, mode: QueryMode) -> ChangeStream {
        let after = match offset {
            Offset::NoOffset => 0,
            Offset::Sequence(n) => n,
            other => {
                return Box::pin(stream::once(async move {
                    Err(Error::invalid_input(format!(
                        "the in-memory change query resumes from a sequence offset, not from {other}"
                    )))
                }))
            }
        };
        let first = self.changes_after(&tag, after);
        if !mode.is_live() {
            return Box::pin(stream::iter(first.into_iter().map(Ok)));
        }
        let store = self.clone();
        let changed = self.inner.changed.subscribe();
        Box::pin(stream::unfold(
            (first.into_iter(), after, store, changed),
            move |(mut pending, mut after, store, mut changed)| {
                let tag = tag.clone();
                async move {
                    loop {
                        if let Some(change) = pending.next() {
                            if let Offset::Sequence(n) = change.offset {
                                after = n;
                            }
                            return Some((Ok(change), (pending, after, store, changed)));
                        }
                        changed.borrow_and_update();
                        let next = store.changes_after(&tag, after);
                        if !next.is_empty() {
                            pending = next.into_iter();
                            continue;
                        }
                        if changed.changed().await.is_err() {
                            return None;
                        }
                        persistence_api::metrics::record_poll(crate::Memory::NAME, "changes");
                    }
                }
            },
        ))
    }
}

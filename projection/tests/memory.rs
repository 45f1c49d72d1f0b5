//! Exactly-once over the in-memory backend with real effects: a read model changed only
//! by `MemoryTransaction` effects, which run with their offset or not at all. The kit's
//! `projection::*` cases cover the rest on every backend (see `backend-memory/tests/tck.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistence_api::{
    AtomicWrite, Error, ErrorKind, EventEnvelope, JournalExt, Payload, PersistenceId,
    PersistentEvent, QueryMode, Result, StoreTransaction, Stores,
};
use persistence_memory::MemoryTransaction;
use persistence_projection::{
    ExactlyOnceHandler, Projection, ProjectionId, ProjectionSettings, RestartSettings, Source,
};

/// Adds each event's sequence number to its id's total, as an effect; fails once on the
/// sequence numbers in `fail_once` after adding its effect (which must then not happen).
struct Totals {
    read_model: Arc<Mutex<BTreeMap<String, u64>>>,
    fail_once: Vec<(&'static str, u64)>,
}

#[persistence_api::async_trait]
impl ExactlyOnceHandler for Totals {
    async fn handle(
        &mut self,
        transaction: &mut StoreTransaction,
        envelopes: &[EventEnvelope],
    ) -> Result<()> {
        let tx = MemoryTransaction::of(transaction)?;
        for envelope in envelopes {
            let model = self.read_model.clone();
            let id = envelope.persistence_id().as_str().to_owned();
            let seq = envelope.sequence_nr();
            tx.push(move || *model.lock().unwrap().entry(id).or_default() += seq);
            let this = (envelope.persistence_id().as_str(), seq);
            if let Some(i) = self.fail_once.iter().position(|&f| f == this) {
                self.fail_once.remove(i);
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "failed after the effect",
                ));
            }
        }
        Ok(())
    }
}

async fn write(stores: &Stores, id: &str, from: u64, to: u64) {
    let pid = PersistenceId::new(id).unwrap();
    for s in from..=to {
        let event =
            PersistentEvent::new(pid.clone(), s, Payload::raw(vec![s as u8])).with_tags(["t"]);
        stores
            .journal
            .write(AtomicWrite::single(event).unwrap())
            .await
            .unwrap();
    }
}

fn projection(
    stores: &Stores,
    totals: Totals,
) -> Projection<persistence_projection::Transactional<Totals>> {
    Projection::builder(
        ProjectionId::new("totals", "t").unwrap(),
        Source::tag("t", QueryMode::Current),
        stores,
    )
    .settings(ProjectionSettings {
        handler_retries: 1,
        retry_backoff: Duration::from_millis(1),
        restart: RestartSettings::never(),
        ..ProjectionSettings::default()
    })
    .exactly_once(totals)
    .unwrap()
}

#[tokio::test]
async fn effects_happen_exactly_once_with_their_offset() {
    let stores = persistence_memory::stores();
    write(&stores, "a", 1, 4).await;
    write(&stores, "b", 1, 3).await;
    let model = Arc::new(Mutex::new(BTreeMap::new()));
    // Event 2 of each id fails once after pushing its effect: the retry's transaction is
    // new, and the failed one's effect never runs.
    projection(
        &stores,
        Totals {
            read_model: model.clone(),
            fail_once: vec![("a", 2), ("b", 2)],
        },
    )
    .run()
    .await
    .unwrap();
    assert_eq!(
        *model.lock().unwrap(),
        BTreeMap::from([("a".into(), 10), ("b".into(), 6)])
    );
    // A second run over the same offset store: nothing again.
    write(&stores, "a", 5, 5).await;
    projection(
        &stores,
        Totals {
            read_model: model.clone(),
            fail_once: vec![],
        },
    )
    .run()
    .await
    .unwrap();
    assert_eq!(
        *model.lock().unwrap(),
        BTreeMap::from([("a".into(), 15), ("b".into(), 6)])
    );
}

#[tokio::test]
async fn a_conflicting_instance_runs_none_of_its_effects() {
    let stores = persistence_memory::stores();
    write(&stores, "a", 1, 3).await;
    let model = Arc::new(Mutex::new(BTreeMap::new()));
    let id = ProjectionId::new("totals", "t").unwrap();
    // Another instance moved the version on after this one read it: simulate by setting
    // the offset between read and commit (the handler does it on its first call).
    struct Meddler(Stores, ProjectionId, Totals);
    #[persistence_api::async_trait]
    impl ExactlyOnceHandler for Meddler {
        async fn handle(
            &mut self,
            tx: &mut StoreTransaction,
            envelopes: &[EventEnvelope],
        ) -> Result<()> {
            self.0
                .offsets
                .set_offset(&self.1, persistence_api::Offset::NoOffset)
                .await?;
            self.2.handle(tx, envelopes).await
        }
    }
    let err = Projection::builder(id.clone(), Source::tag("t", QueryMode::Current), &stores)
        .settings(ProjectionSettings {
            restart: RestartSettings::never(),
            ..ProjectionSettings::default()
        })
        .exactly_once(Meddler(
            stores.clone(),
            id,
            Totals {
                read_model: model.clone(),
                fail_once: vec![],
            },
        ))
        .unwrap()
        .run()
        .await
        .expect_err("the commit over the moved-on version");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:#}");
    assert!(model.lock().unwrap().is_empty(), "no effect ran");
}

/// Fails the first events-by-tag stream it opens after two envelopes, with `Unavailable`
/// (a server gone mid-stream); later streams pass through.
struct Flaky {
    inner: Arc<dyn persistence_api::ReadJournal>,
    opened: std::sync::atomic::AtomicU32,
}

impl persistence_api::ReadJournal for Flaky {
    fn query_persistence_ids(&self, mode: QueryMode) -> persistence_api::PersistenceIdStream {
        self.inner.query_persistence_ids(mode)
    }
    fn query_events_by_persistence_id(
        &self,
        id: PersistenceId,
        from: u64,
        to: u64,
        mode: QueryMode,
    ) -> persistence_api::EnvelopeStream {
        self.inner
            .query_events_by_persistence_id(id, from, to, mode)
    }
    fn query_events_by_tag(
        &self,
        tag: String,
        offset: persistence_api::Offset,
        mode: QueryMode,
    ) -> persistence_api::EnvelopeStream {
        use futures::StreamExt;
        let stream = self.inner.query_events_by_tag(tag, offset, mode);
        if self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            > 0
        {
            return stream;
        }
        Box::pin(stream.take(2).chain(futures::stream::once(async {
            Err(Error::new(ErrorKind::Unavailable, "the server went away"))
        })))
    }
}

#[tokio::test]
async fn a_source_error_restarts_the_projection_from_its_offset() {
    use persistence_projection::Handler;
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<u64>>>);
    #[persistence_api::async_trait]
    impl Handler for Seen {
        async fn handle(&mut self, envelope: &EventEnvelope) -> Result<()> {
            self.0.lock().unwrap().push(envelope.sequence_nr());
            Ok(())
        }
    }
    let stores = persistence_memory::stores();
    write(&stores, "a", 1, 5).await;
    let flaky = Arc::new(Flaky {
        inner: stores.read_journal.clone(),
        opened: Default::default(),
    });
    let seen = Seen::default();
    let status = Projection::builder(
        ProjectionId::new("restarts", "t").unwrap(),
        Source::tag("t", QueryMode::Current),
        &stores,
    )
    .read_journal(flaky)
    .settings(ProjectionSettings {
        commit_every: 1,
        restart: RestartSettings {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            max_restarts: Some(3),
        },
        ..ProjectionSettings::default()
    })
    .at_least_once(seen.clone())
    .run()
    .await
    .expect("restarted after the source error");
    assert_eq!(status.restarts, 1);
    assert!(status.last_error.unwrap().contains("server went away"));
    // Committed after each envelope: the restart resumes after event 2, nothing repeated.
    assert_eq!(*seen.0.lock().unwrap(), vec![1, 2, 3, 4, 5]);
}

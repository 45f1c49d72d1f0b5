//! [`Projection`]: reads a source from the stored offset, hands each envelope to a
//! [`Handler`], and commits the offset as [`Delivery`] says.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use persistence_api::{
    EnvelopeStream, Error, EventEnvelope, Offset, PersistenceId, QueryMode, ReadJournal, Result,
};
use tracing::Instrument;

use persistence_api::{OffsetStore, ProjectionId};

/// What a projection reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// [`persistence_api::ReadJournalExt::events_by_tag`] (live) or its current form; the
    /// stored offset is the tag query's offset.
    EventsByTag {
        /// The tag.
        tag: String,
        /// Current (stop at the end) or live.
        mode: QueryMode,
    },
    /// The events of one id; the stored offset is `Offset::Sequence` of the last event
    /// handled.
    EventsByPersistenceId {
        /// The id.
        persistence_id: PersistenceId,
        /// Current (stop at the end) or live.
        mode: QueryMode,
    },
}

impl Source {
    /// The stream of envelopes after `offset`.
    ///
    /// # Errors
    /// [`persistence_api::ErrorKind::InvalidInput`] naming the source and the offset when
    /// the offset is of a kind this source cannot resume from (a by-id source resumes from
    /// `Offset::Sequence` or `Offset::NoOffset` only).
    pub fn open(&self, read_journal: &dyn ReadJournal, offset: Offset) -> Result<EnvelopeStream> {
        match self {
            Source::EventsByTag { tag, mode } => {
                Ok(read_journal.query_events_by_tag(tag.clone(), offset, *mode))
            }
            Source::EventsByPersistenceId {
                persistence_id,
                mode,
            } => {
                let from = match offset {
                    Offset::NoOffset => 1,
                    Offset::Sequence(n) => n + 1,
                    other => {
                        return Err(Error::invalid_input(format!(
                            "an events-by-persistence-id source ({persistence_id}) resumes from a sequence offset, not from {other}"
                        ))
                        .with_persistence_id(persistence_id.as_str()))
                    }
                };
                Ok(read_journal.query_events_by_persistence_id(
                    persistence_id.clone(),
                    from,
                    u64::MAX,
                    *mode,
                ))
            }
        }
    }
}

/// What a projection does with each envelope: update a read model, call a service.
#[async_trait]
pub trait Handler: Send + 'static {
    /// Handles one envelope. An `Err` is retried as [`ProjectionSettings`] says.
    async fn handle(&mut self, envelope: &EventEnvelope) -> Result<()>;
}

/// When the offset is committed, which decides what a crash or a stop can repeat or lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Commit after handling, every `commit_every` envelopes or `commit_interval`,
    /// whichever comes first, and when the projection stops: after a crash the envelopes
    /// since the last commit are handled again, none is skipped.
    AtLeastOnce {
        /// Envelopes handled between two commits at most.
        commit_every: usize,
        /// Time between two commits at most (checked as envelopes arrive).
        commit_interval: Duration,
    },
    /// Commit each envelope's offset before handling it: after a crash none is handled
    /// twice, and the one being handled may be lost.
    AtMostOnce,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery::AtLeastOnce {
            commit_every: 100,
            commit_interval: Duration::from_secs(1),
        }
    }
}

/// What happens to an envelope whose handler still fails after its retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Stop the projection with the handler's error; the offset stays before the envelope.
    #[default]
    Stop,
    /// Log it, count it in [`ProjectionStatus::skipped`], and go on past it.
    Skip,
}

/// How a projection commits and recovers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionSettings {
    /// When offsets are committed.
    pub delivery: Delivery,
    /// Retries of a failing handler call before [`ProjectionSettings::on_failure`] applies.
    pub handler_retries: u32,
    /// The first retry's delay; doubled each retry up to `retry_max_backoff`.
    pub retry_backoff: Duration,
    /// The longest delay between two retries.
    pub retry_max_backoff: Duration,
    /// What to do once the retries are spent.
    pub on_failure: OnFailure,
}

impl Default for ProjectionSettings {
    fn default() -> Self {
        ProjectionSettings {
            delivery: Delivery::default(),
            handler_retries: 3,
            retry_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(5),
            on_failure: OnFailure::Stop,
        }
    }
}

/// Where a projection is: readable while it runs through [`Projection::status`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The offset last committed by this run (or read at its start).
    pub committed: Offset,
    /// Envelopes handled by this run.
    pub handled: u64,
    /// Envelopes skipped by [`OnFailure::Skip`] in this run.
    pub skipped: u64,
    /// Offset commits made by this run.
    pub commits: u64,
    /// The last handler or store error, as text.
    pub last_error: Option<String>,
}

/// One projection: a source, a handler, an offset store and its settings.
///
/// ```
/// # use std::sync::Arc;
/// # use persistence_projection::*;
/// # use persistence_memory::MemoryOffsetStore;
/// # use persistence_api::{EventEnvelope, QueryMode, Result};
/// struct Count(u64);
/// #[persistence_api::async_trait]
/// impl Handler for Count {
///     async fn handle(&mut self, _envelope: &EventEnvelope) -> Result<()> {
///         self.0 += 1;
///         Ok(())
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let stores = persistence_memory::stores();
/// let projection = Projection::new(
///     ProjectionId::new("deposits", "all")?,
///     Source::EventsByTag { tag: "deposit".into(), mode: QueryMode::Current },
///     stores.read_journal.clone(),
///     Arc::new(MemoryOffsetStore::new()),
///     Count(0),
/// );
/// let status = projection.run(std::future::pending()).await?;
/// assert_eq!(status.handled, 0);
/// # Ok(()) }
/// ```
pub struct Projection<H> {
    id: ProjectionId,
    source: Source,
    read_journal: Arc<dyn ReadJournal>,
    offsets: Arc<dyn OffsetStore>,
    handler: H,
    settings: ProjectionSettings,
    status: Arc<Mutex<ProjectionStatus>>,
}

impl<H: Handler> Projection<H> {
    /// A projection with the default settings (at-least-once, a commit every 100
    /// envelopes or second, 3 retries, stop on a failure).
    pub fn new(
        id: ProjectionId,
        source: Source,
        read_journal: Arc<dyn ReadJournal>,
        offsets: Arc<dyn OffsetStore>,
        handler: H,
    ) -> Self {
        Projection {
            id,
            source,
            read_journal,
            offsets,
            handler,
            settings: ProjectionSettings::default(),
            status: Arc::default(),
        }
    }

    /// The same projection with `settings`.
    pub fn with_settings(mut self, settings: ProjectionSettings) -> Self {
        self.settings = settings;
        self
    }

    /// A handle on the status, to read while [`Projection::run`] runs.
    pub fn status(&self) -> Arc<Mutex<ProjectionStatus>> {
        self.status.clone()
    }

    /// Runs until the source completes (a current source), `stop` resolves, or an error
    /// stops it; commits what was handled, then returns the status and the handler.
    ///
    /// # Errors
    /// The source's error; the handler's error after its retries with
    /// [`OnFailure::Stop`] (what was handled before it is committed); an
    /// [`persistence_api::ErrorKind::Conflict`] when another instance of the projection
    /// committed meanwhile (nothing more is committed by this one).
    pub async fn run(self, stop: impl Future<Output = ()> + Send) -> Result<ProjectionStatus> {
        self.run_returning_handler(stop)
            .await
            .map(|(status, _)| status)
    }

    /// [`Projection::run`], giving the handler back (with the read model it built).
    pub async fn run_returning_handler(
        self,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<(ProjectionStatus, H)> {
        let span = tracing::info_span!("persistence.projection", projection = %self.id);
        self.run_in_span(stop).instrument(span).await
    }

    async fn run_in_span(
        mut self,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<(ProjectionStatus, H)> {
        let stored = self.offsets.read_offset(&self.id).await?;
        let (mut version, start) = match stored {
            Some(s) => (s.version, s.offset),
            None => (0, Offset::NoOffset),
        };
        self.update(|s| s.committed = start.clone());
        let mut stream = self.source.open(self.read_journal.as_ref(), start)?;
        let mut pending: Option<Offset> = None;
        let mut since_commit = 0usize;
        let mut last_commit = Instant::now();
        tokio::pin!(stop);
        let outcome: Result<()> = loop {
            let item = tokio::select! {
                biased;
                _ = &mut stop => break Ok(()),
                item = stream.next() => item,
            };
            let envelope = match item {
                None => break Ok(()),
                Some(Err(e)) => break Err(e),
                Some(Ok(envelope)) => envelope,
            };
            if self.settings.delivery == Delivery::AtMostOnce {
                if let Err(e) = self.commit(&mut version, envelope.offset.clone()).await {
                    break Err(e);
                }
            }
            match self.handle_with_retries(&envelope).await {
                Ok(()) => self.update(|s| s.handled += 1),
                Err(e) if self.settings.on_failure == OnFailure::Skip => {
                    tracing::warn!(error = %e, offset = %envelope.offset, "projection skipped an envelope its handler failed on");
                    self.update(|s| s.skipped += 1);
                }
                Err(e) => break Err(e),
            }
            if let Delivery::AtLeastOnce {
                commit_every,
                commit_interval,
            } = self.settings.delivery
            {
                pending = Some(envelope.offset.clone());
                since_commit += 1;
                if since_commit >= commit_every.max(1) || last_commit.elapsed() >= commit_interval {
                    if let Some(offset) = pending.take() {
                        if let Err(e) = self.commit(&mut version, offset).await {
                            break Err(e);
                        }
                    }
                    since_commit = 0;
                    last_commit = Instant::now();
                }
            }
        };
        // What was handled is committed, also when the handler or the source failed; not
        // after a conflict (another instance owns the offset now).
        let conflict =
            matches!(&outcome, Err(e) if e.kind() == persistence_api::ErrorKind::Conflict);
        if let (Some(offset), false) = (pending, conflict) {
            self.commit(&mut version, offset).await?;
        }
        if let Err(e) = &outcome {
            let text = e.to_string();
            self.update(|s| s.last_error = Some(text));
        }
        outcome?;
        let status = self.current_status();
        Ok((status, self.handler))
    }

    async fn handle_with_retries(&mut self, envelope: &EventEnvelope) -> Result<()> {
        let mut delay = self.settings.retry_backoff;
        let mut attempt = 0;
        loop {
            match self.handler.handle(envelope).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < self.settings.handler_retries => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "projection handler failed; retrying");
                    let text = e.to_string();
                    self.update(|s| s.last_error = Some(text));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.settings.retry_max_backoff);
                }
                Err(e) => {
                    return Err(e
                        .with_operation("projection handler")
                        .with_persistence_id(envelope.persistence_id().as_str())
                        .with_sequence_range(envelope.sequence_nr(), envelope.sequence_nr()))
                }
            }
        }
    }

    async fn commit(&self, version: &mut u64, offset: Offset) -> Result<()> {
        *version = self
            .offsets
            .commit_offset(&self.id, *version, offset.clone())
            .await?;
        self.update(|s| {
            s.committed = offset;
            s.commits += 1;
        });
        Ok(())
    }

    fn update(&self, f: impl FnOnce(&mut ProjectionStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn current_status(&self) -> ProjectionStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

//! [`Projection`]: reads a [`Source`] from the stored offset, hands envelopes to its
//! handler, commits the offset as its [`Delivery`] says, restarts after transient
//! failures; [`ProjectionBuilder`] makes one, [`ProjectionHandle`] manages it while it
//! runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use persistence_api::{
    Error, ErrorKind, Offset, OffsetStore, ProjectionId, ReadJournal, Result, StoreTransaction,
    Stores, Timestamp,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::handler::{
    ExactlyOnceHandler, Grouped, GroupedHandler, Handler, PerEnvelope, Process, Transactional,
};
use crate::source::{Envelope, SourceProvider, SourceStores, SourceStream};
use crate::Source;

/// When the offset is committed, which decides what a crash or a stop can repeat or lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Commit after handling, every [`ProjectionSettings::commit_every`] envelopes or
    /// [`ProjectionSettings::commit_interval`], whichever comes first, and when the
    /// projection stops or pauses: after a crash the envelopes since the last commit are
    /// handled again, none is skipped.
    AtLeastOnce,
    /// Commit each envelope's offset before handling it: after a crash none is handled
    /// twice, and the one being handled may be lost.
    AtMostOnce,
    /// The handler's effects and the offset are written in one transaction of the
    /// offset store: after a crash each envelope's effects exist exactly once.
    ExactlyOnce,
}

/// What happens to an envelope whose handler still fails after its retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Stop this run with the handler's error; the offset stays before the envelope
    /// (then [`ProjectionSettings::restart`] decides whether it runs again).
    #[default]
    Stop,
    /// Log it, count it in [`ProjectionStatus::skipped`], and go on past it.
    Skip,
}

/// How a projection that stopped on an error runs again: after a transient error
/// (`RateLimited`, `Unavailable`, `Timeout`, `Storage`: a server gone, a handler's
/// service down), it restarts from its stored offset after a backoff that doubles from
/// `min_backoff` up to `max_backoff`, at most `max_restarts` times in a row (`None`:
/// forever). Other errors (a `Conflict` with another instance, bad input, corrupt data)
/// end the run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartSettings {
    /// The first restart's delay.
    pub min_backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
    /// Restarts in a row before the error ends the run (`None`: no limit). The count
    /// starts again after a run that handled something.
    pub max_restarts: Option<u32>,
}

impl RestartSettings {
    /// Never restart: the first error ends the run.
    pub fn never() -> Self {
        RestartSettings {
            max_restarts: Some(0),
            ..RestartSettings::default()
        }
    }
}

impl Default for RestartSettings {
    /// 1 s doubling up to 30 s, forever (Akka Projections' defaults are 3 s to 30 s).
    fn default() -> Self {
        RestartSettings {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_restarts: None,
        }
    }
}

/// How a projection commits, groups and recovers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionSettings {
    /// At-least-once: envelopes handled between two commits at most.
    pub commit_every: usize,
    /// At-least-once: time between two commits at most (also while the source is idle).
    pub commit_interval: Duration,
    /// Grouped and grouped exactly-once handlers: the most envelopes in one group.
    pub group_max_envelopes: usize,
    /// Grouped handlers: how long a group waits for more envelopes after its first.
    pub group_max_wait: Duration,
    /// Retries of a failing handler call before [`ProjectionSettings::on_failure`] applies.
    pub handler_retries: u32,
    /// The first retry's delay; doubled each retry up to `retry_max_backoff`.
    pub retry_backoff: Duration,
    /// The longest delay between two retries.
    pub retry_max_backoff: Duration,
    /// What to do once the retries are spent.
    pub on_failure: OnFailure,
    /// Restarts after a transient error.
    pub restart: RestartSettings,
}

impl Default for ProjectionSettings {
    /// A commit every 100 envelopes or second; groups of up to 100 envelopes or 500 ms;
    /// 3 handler retries from 100 ms to 5 s; stop on a failure; restart forever from 1 s
    /// to 30 s.
    fn default() -> Self {
        ProjectionSettings {
            commit_every: 100,
            commit_interval: Duration::from_secs(1),
            group_max_envelopes: 100,
            group_max_wait: Duration::from_millis(500),
            handler_retries: 3,
            retry_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(5),
            on_failure: OnFailure::Stop,
            restart: RestartSettings::default(),
        }
    }
}

/// Where a projection's run is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProjectionState {
    /// Not run yet.
    #[default]
    NotStarted,
    /// Reading and handling.
    Running,
    /// Paused by [`ProjectionHandle::pause`]: reads nothing until resumed.
    Paused,
    /// Waiting out a restart backoff after a transient error.
    Restarting,
    /// Ended: stopped, or its current source completed.
    Stopped,
    /// Ended on an error (see [`ProjectionStatus::last_error`]).
    Failed,
}

/// A projection's status, readable while it runs ([`ProjectionHandle::status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Where the run is.
    pub state: ProjectionState,
    /// The offset last committed (or read at the start).
    pub committed: Offset,
    /// The offset of the last envelope handled or skipped (ahead of `committed` until
    /// the next at-least-once commit).
    pub position: Offset,
    /// The timestamp of the last envelope handled or skipped.
    pub last_event_timestamp: Option<Timestamp>,
    /// Envelopes handled.
    pub handled: u64,
    /// Envelopes skipped by [`OnFailure::Skip`].
    pub skipped: u64,
    /// Offset commits made.
    pub commits: u64,
    /// Restarts after transient errors.
    pub restarts: u64,
    /// The last handler, source or store error, as text.
    pub last_error: Option<String>,
}

/// How far a projection is behind its source ([`ProjectionHandle::lag`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// Envelopes stored after the projection's position.
    pub events: u64,
    /// The count stopped at [`Lag::COUNT_CAP`]: at least that many.
    pub capped: bool,
    /// The newest stored event's timestamp minus the last handled one's (or the first
    /// unhandled one's); zero when nothing is behind.
    pub time: Duration,
}

impl Lag {
    /// The most envelopes [`ProjectionHandle::lag`] reads to count.
    pub const COUNT_CAP: u64 = 100_000;
}

/// What the handle asks a running projection.
enum Command {
    SetOffset(Offset, oneshot::Sender<Result<u64>>),
}

#[derive(Clone, Copy, Debug, Default)]
struct Control {
    stop: bool,
    paused: bool,
}

/// What a projection and its handles share.
struct Shared<S> {
    id: ProjectionId,
    source: S,
    readers: SourceStores,
    offsets: Arc<dyn OffsetStore>,
    status: Mutex<ProjectionStatus>,
    control: watch::Sender<Control>,
    /// `Some` while a run takes commands; taken under the lock when the run ends.
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
}

impl<S> Shared<S> {
    fn update(&self, f: impl FnOnce(&mut ProjectionStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn status(&self) -> ProjectionStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Manages a projection from outside its run: status, stop, pause and resume, set and
/// clear its offset, lag. Clones share it; it stays usable after the run ends (offset
/// changes then go straight to the offset store).
pub struct ProjectionHandle<S = Source> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for ProjectionHandle<S> {
    fn clone(&self) -> Self {
        ProjectionHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> std::fmt::Debug for ProjectionHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionHandle")
            .field("id", &self.shared.id)
            .field("status", &self.shared.status())
            .finish()
    }
}

impl<S: SourceProvider> ProjectionHandle<S> {
    /// The projection's id.
    pub fn id(&self) -> &ProjectionId {
        &self.shared.id
    }

    /// The status now.
    pub fn status(&self) -> ProjectionStatus {
        self.shared.status()
    }

    /// Asks the run to end after the group in hand, committing what was handled.
    pub fn stop(&self) {
        self.shared.control.send_modify(|c| c.stop = true);
    }

    /// Asks the run to stop reading after the group in hand (committing what was
    /// handled) until [`ProjectionHandle::resume`].
    pub fn pause(&self) {
        self.shared.control.send_modify(|c| c.paused = true);
    }

    /// Lets a paused run read again.
    pub fn resume(&self) {
        self.shared.control.send_modify(|c| c.paused = false);
    }

    /// Sets the stored offset: the projection goes on after `offset` (replay from an
    /// earlier point, or skip ahead). A running projection applies it between two groups
    /// (what it handled since its last commit is not committed) and reads on from there;
    /// otherwise it is written to the offset store at once. Returns the new version.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming both when `offset` is of a kind the source
    /// cannot resume from; the offset store's errors.
    pub async fn set_offset(&self, offset: Offset) -> Result<u64> {
        self.shared
            .source
            .check_offset(&offset)
            .map_err(|e| e.with_operation("set_offset"))?;
        let reply = {
            let commands = self
                .shared
                .commands
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match commands.as_ref() {
                Some(tx) => {
                    let (reply_tx, reply_rx) = oneshot::channel();
                    match tx.send(Command::SetOffset(offset.clone(), reply_tx)) {
                        Ok(()) => Some(reply_rx),
                        Err(_) => None,
                    }
                }
                None => None,
            }
        };
        if let Some(reply) = reply {
            if let Ok(result) = reply.await {
                return result;
            }
        }
        let version = self
            .shared
            .offsets
            .set_offset(&self.shared.id, offset.clone())
            .await?;
        self.shared.update(|s| {
            s.committed = offset.clone();
            s.position = offset;
        });
        Ok(version)
    }

    /// Clears the stored offset: the projection starts again from the beginning of its
    /// source ([`ProjectionHandle::set_offset`] with [`Offset::NoOffset`]).
    pub async fn clear_offset(&self) -> Result<u64> {
        self.set_offset(Offset::NoOffset).await
    }

    /// How far the projection is behind: counts the envelopes its source holds now after
    /// its position (up to [`Lag::COUNT_CAP`]), one current query.
    pub async fn lag(&self) -> Result<Lag> {
        let status = self.status();
        let mut stream = self
            .shared
            .source
            .open_current(&self.shared.readers, status.position)?;
        let mut events = 0u64;
        let mut first: Option<Timestamp> = None;
        let mut newest: Option<Timestamp> = None;
        while let Some(envelope) = stream.next().await {
            let envelope = envelope?;
            events += 1;
            first.get_or_insert(envelope.timestamp());
            newest = Some(envelope.timestamp());
            if events >= Lag::COUNT_CAP {
                break;
            }
        }
        let time = match (newest, status.last_event_timestamp.or(first)) {
            (Some(newest), Some(from)) => {
                Duration::from_millis((newest.as_millis() - from.as_millis()).max(0) as u64)
            }
            _ => Duration::ZERO,
        };
        Ok(Lag {
            events,
            capped: events >= Lag::COUNT_CAP,
            time,
        })
    }
}

/// Makes a [`Projection`]: its id, source and stores, settings, then the handler and the
/// delivery in one call.
///
/// ```
/// # use persistence_projection::*;
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
/// let projection = Projection::builder(
///     ProjectionId::new("deposits", "all")?,
///     Source::tag("deposit", QueryMode::Current),
///     &stores,
/// )
/// .at_least_once(Count(0));
/// let status = projection.run().await?;
/// assert_eq!(status.handled, 0);
/// # Ok(()) }
/// ```
pub struct ProjectionBuilder<S = Source> {
    id: ProjectionId,
    source: S,
    readers: SourceStores,
    offsets: Arc<dyn OffsetStore>,
    settings: ProjectionSettings,
    group: Option<(usize, Duration)>,
}

impl<S: SourceProvider> ProjectionBuilder<S> {
    /// Reads `source` from `stores` (its read journal, or its durable-state store for
    /// changes) and keeps offsets in `stores.offsets`.
    pub fn new(id: ProjectionId, source: S, stores: &Stores) -> Self {
        ProjectionBuilder {
            id,
            source,
            readers: SourceStores::of(stores),
            offsets: stores.offsets.clone(),
            settings: ProjectionSettings::default(),
            group: None,
        }
    }

    /// Keeps the offsets in another store (where the read model lives, for exactly-once).
    pub fn offsets(mut self, offsets: Arc<dyn OffsetStore>) -> Self {
        self.offsets = offsets;
        self
    }

    /// Reads from another read journal.
    pub fn read_journal(mut self, read_journal: Arc<dyn ReadJournal>) -> Self {
        self.readers.read_journal = read_journal;
        self
    }

    /// Replaces the settings.
    pub fn settings(mut self, settings: ProjectionSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Groups of up to `max_envelopes` gathered for at most `max_wait` after the first:
    /// for [`ProjectionBuilder::grouped`] (which otherwise takes the settings' group
    /// size) and [`ProjectionBuilder::exactly_once`] (which otherwise takes one envelope
    /// per transaction).
    pub fn group_within(mut self, max_envelopes: usize, max_wait: Duration) -> Self {
        self.group = Some((max_envelopes.max(1), max_wait));
        self.settings.group_max_envelopes = max_envelopes.max(1);
        self.settings.group_max_wait = max_wait;
        self
    }

    /// At-least-once delivery to `handler`, one envelope at a time.
    pub fn at_least_once<H: Handler<S::Envelope>>(
        self,
        handler: H,
    ) -> Projection<PerEnvelope<H>, S> {
        self.build(
            PerEnvelope(handler),
            Delivery::AtLeastOnce,
            (1, Duration::ZERO),
        )
    }

    /// At-most-once delivery to `handler`, one envelope at a time.
    pub fn at_most_once<H: Handler<S::Envelope>>(
        self,
        handler: H,
    ) -> Projection<PerEnvelope<H>, S> {
        self.build(
            PerEnvelope(handler),
            Delivery::AtMostOnce,
            (1, Duration::ZERO),
        )
    }

    /// At-least-once delivery to `handler` in groups (the offset of a group's last
    /// envelope committed as [`ProjectionSettings::commit_every`] says, counting
    /// envelopes).
    pub fn grouped<H: GroupedHandler<S::Envelope>>(self, handler: H) -> Projection<Grouped<H>, S> {
        let group = self.group.unwrap_or((
            self.settings.group_max_envelopes.max(1),
            self.settings.group_max_wait,
        ));
        self.build(Grouped(handler), Delivery::AtLeastOnce, group)
    }

    /// Exactly-once delivery: each group's effects and offset in one transaction of the
    /// offset store.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] now, before anything runs, when the offset store
    /// cannot write both in one transaction (Cassandra; see
    /// [`crate::idempotency_key`] for at-least-once with idempotent effects instead).
    pub fn exactly_once<H: ExactlyOnceHandler<S::Envelope>>(
        self,
        handler: H,
    ) -> Result<Projection<Transactional<H>, S>> {
        if !self.offsets.supports_transactions() {
            return Err(Error::unsupported(format!(
                "projection {}: exactly-once delivery needs an offset store that writes the handler's effects and the offset in one transaction, and this one cannot (use at-least-once with effects keyed by idempotency_key)",
                self.id
            )));
        }
        let group = self.group.unwrap_or((1, Duration::ZERO));
        Ok(self.build(Transactional(handler), Delivery::ExactlyOnce, group))
    }

    fn build<P: Process<S::Envelope>>(
        self,
        process: P,
        delivery: Delivery,
        group: (usize, Duration),
    ) -> Projection<P, S> {
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (control, _) = watch::channel(Control::default());
        Projection {
            shared: Arc::new(Shared {
                id: self.id,
                source: self.source,
                readers: self.readers,
                offsets: self.offsets,
                status: Mutex::default(),
                control,
                commands: Mutex::new(Some(commands_tx)),
            }),
            process,
            delivery,
            settings: self.settings,
            group,
            commands: commands_rx,
        }
    }
}

/// One projection: a source, a handler, an offset store, a delivery and its settings.
/// Make it with [`Projection::builder`]; run it with [`Projection::run`] (or
/// [`Projection::spawn`]); manage it with its [`ProjectionHandle`].
pub struct Projection<P, S = Source> {
    shared: Arc<Shared<S>>,
    process: P,
    delivery: Delivery,
    settings: ProjectionSettings,
    group: (usize, Duration),
    commands: mpsc::UnboundedReceiver<Command>,
}

/// The most envelopes handled in a row without looking at stop, pause and commands.
const DRAIN_MAX: usize = 256;

type StopFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Why a wait between groups ended.
enum Wake<E> {
    Stop,
    Control,
    CommitDone(std::result::Result<Result<u64>, tokio::task::JoinError>),
    Command(Command),
    Envelope(Box<Option<Result<E>>>),
    CommitDue,
}

impl Projection<()> {
    /// Starts making a projection of `source` ([`Source`] for events, [`crate::ChangeSource`]
    /// for durable-state changes) over `stores` (what it reads, and its offset store).
    pub fn builder<S: SourceProvider>(
        id: ProjectionId,
        source: S,
        stores: &Stores,
    ) -> ProjectionBuilder<S> {
        ProjectionBuilder::new(id, source, stores)
    }
}

impl<S: SourceProvider, P: Process<S::Envelope>> Projection<P, S> {
    /// A handle to manage it, also while it runs.
    pub fn handle(&self) -> ProjectionHandle<S> {
        ProjectionHandle {
            shared: self.shared.clone(),
        }
    }

    /// The delivery it was built with.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// Runs until [`ProjectionHandle::stop`], until a current source completes, or until
    /// an error ends it (after the restarts its settings allow); commits what was
    /// handled, then returns the status.
    ///
    /// # Errors
    /// The error that ended it: the source's or the offset store's after the restarts;
    /// the handler's after its retries with [`OnFailure::Stop`] (what was handled before
    /// it is committed); an [`ErrorKind::Conflict`] when another instance of the
    /// projection committed meanwhile (nothing more is committed by this one).
    pub async fn run(self) -> Result<ProjectionStatus> {
        self.run_returning_handler().await.map(|(status, _)| status)
    }

    /// [`Projection::run`], also ending when `stop` resolves.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<ProjectionStatus> {
        self.run_inner(Box::pin(stop))
            .await
            .map(|(status, _)| status)
    }

    /// [`Projection::run`], giving the handler back (with the read model it built).
    pub async fn run_returning_handler(self) -> Result<(ProjectionStatus, P)> {
        self.run_inner(Box::pin(std::future::pending())).await
    }

    /// Runs it on a Tokio task; the handle manages it, the task's result is
    /// [`Projection::run`]'s.
    pub fn spawn(
        self,
    ) -> (
        ProjectionHandle<S>,
        tokio::task::JoinHandle<Result<ProjectionStatus>>,
    ) {
        let handle = self.handle();
        (handle, tokio::spawn(self.run()))
    }

    async fn run_inner(mut self, stop: StopFuture<'_>) -> Result<(ProjectionStatus, P)> {
        let span = tracing::info_span!("persistence.projection", projection = %self.shared.id, source = %self.shared.source, delivery = ?self.delivery);
        let mut stop = stop;
        let outcome = self.run_restarting(&mut stop).instrument(span).await;
        // No more commands: the handle writes to the store itself from now on; what is
        // queued is applied here.
        self.shared
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        while let Ok(Command::SetOffset(offset, reply)) = self.commands.try_recv() {
            let _ = reply.send(set_directly(&self.shared, offset).await);
        }
        match outcome {
            Ok(()) => {
                self.shared.update(|s| s.state = ProjectionState::Stopped);
                Ok((self.shared.status(), self.process))
            }
            Err(e) => {
                let text = format!("{e:#}");
                self.shared.update(|s| {
                    s.state = ProjectionState::Failed;
                    s.last_error = Some(text);
                });
                Err(e)
            }
        }
    }

    async fn run_restarting(&mut self, stop: &mut StopFuture<'_>) -> Result<()> {
        let restart = self.settings.restart;
        let mut backoff = restart.min_backoff;
        let mut in_a_row = 0u32;
        loop {
            let handled_before = self.shared.status().handled;
            self.shared.update(|s| s.state = ProjectionState::Running);
            let error = match self.run_once(stop).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if self.shared.status().handled > handled_before {
                in_a_row = 0;
                backoff = restart.min_backoff;
            }
            let transient =
                error.kind().is_retryable_by_default() || error.kind() == ErrorKind::Storage;
            if !transient || restart.max_restarts.is_some_and(|max| in_a_row >= max) {
                return Err(error);
            }
            in_a_row += 1;
            let text = format!("{error:#}");
            tracing::warn!(error = %text, backoff_ms = backoff.as_millis() as u64, "projection stopped on a transient error; restarting");
            self.shared.update(|s| {
                s.state = ProjectionState::Restarting;
                s.restarts += 1;
                s.last_error = Some(text);
            });
            let deadline = tokio::time::Instant::now() + backoff;
            loop {
                if self.shared.control.borrow().stop {
                    return Ok(());
                }
                let mut control = self.shared.control.subscribe();
                tokio::select! {
                    biased;
                    _ = stop.as_mut() => return Ok(()),
                    _ = control.changed() => {}
                    Some(Command::SetOffset(offset, reply)) = self.commands.recv() => {
                        let _ = reply.send(set_directly(&self.shared, offset).await);
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            backoff = (backoff * 2).min(restart.max_backoff);
        }
    }

    /// One run from the stored offset until a stop, the end of a current source, or an
    /// error.
    async fn run_once(&mut self, stop: &mut StopFuture<'_>) -> Result<()> {
        let shared = self.shared.clone();
        let stored = shared.offsets.read_offset(&shared.id).await?;
        let (mut version, start) = match stored {
            Some(s) => (s.version, s.offset),
            None => (0, Offset::NoOffset),
        };
        shared.update(|s| {
            s.committed = start.clone();
            s.position = start.clone();
        });
        let mut stream = shared.source.open(&shared.readers, start)?;
        let mut run = RunState {
            version: &mut version,
            pending: None,
            since_commit: 0,
            last_commit: Instant::now(),
            inflight: None,
        };
        let mut control = shared.control.subscribe();
        let mut shown_paused = false;
        // One timer for the commit interval, moved on after each commit (not a new one per
        // envelope).
        let commit_timer = tokio::time::sleep(self.settings.commit_interval);
        tokio::pin!(commit_timer);
        let mut timer_set_for = run.last_commit;
        let outcome: Result<()> = loop {
            let now = *control.borrow_and_update();
            if now.stop {
                break Ok(());
            }
            if now.paused != shown_paused {
                if now.paused {
                    if let Err(e) = commit_pending(&shared, &mut run).await {
                        break Err(e);
                    }
                }
                let state = if now.paused {
                    ProjectionState::Paused
                } else {
                    ProjectionState::Running
                };
                shared.update(|s| s.state = state);
                shown_paused = now.paused;
            }
            if timer_set_for != run.last_commit {
                timer_set_for = run.last_commit;
                commit_timer
                    .as_mut()
                    .reset((run.last_commit + self.settings.commit_interval).into());
            }
            let wake = tokio::select! {
                biased;
                _ = stop.as_mut() => Wake::Stop,
                _ = control.changed() => Wake::Control,
                Some(command) = self.commands.recv() => Wake::Command(command),
                done = async { (&mut run.inflight.as_mut().expect("checked").1).await }, if run.inflight.is_some() => Wake::CommitDone(done),
                _ = &mut commit_timer, if run.pending.is_some() && !now.paused => Wake::CommitDue,
                item = stream.next(), if !now.paused => Wake::Envelope(Box::new(item)),
            };
            match wake {
                Wake::Stop => break Ok(()),
                Wake::Control => continue,
                Wake::CommitDone(done) => {
                    let Some((offset, _)) = run.inflight.take() else {
                        continue;
                    };
                    match done {
                        Ok(Ok(version)) => {
                            *run.version = version;
                            shared.update(|s| {
                                s.committed = offset;
                                s.commits += 1;
                            });
                        }
                        Ok(Err(e)) => break Err(e),
                        Err(e) => {
                            break Err(Error::new(
                                ErrorKind::Unexpected,
                                format!("an offset commit task failed: {e}"),
                            ))
                        }
                    }
                }
                Wake::CommitDue => {
                    if let Err(e) = commit_pending(&shared, &mut run).await {
                        break Err(e);
                    }
                }
                Wake::Command(Command::SetOffset(offset, reply)) => {
                    if let Err(e) = run.finish_inflight(&shared).await {
                        let _ = reply.send(Err(e.clone_shallow()));
                        break Err(e);
                    }
                    match set_directly(&shared, offset.clone()).await {
                        Ok(new_version) => {
                            *run.version = new_version;
                            run.pending = None;
                            run.since_commit = 0;
                            match shared.source.open(&shared.readers, offset) {
                                Ok(s) => stream = s,
                                Err(e) => {
                                    let _ = reply.send(Err(e.clone_shallow()));
                                    break Err(e);
                                }
                            }
                            let _ = reply.send(Ok(new_version));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Wake::Envelope(item) => match *item {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(e),
                    Some(Ok(first)) => {
                        let (group, end) = gather(self.group, first, &mut stream).await;
                        if let Err(e) = self.process_group(group, &mut run).await {
                            break Err(e);
                        }
                        match end {
                            Some(None) => break Ok(()),
                            Some(Some(e)) => break Err(e),
                            None => {}
                        }
                        // Envelopes the stream has ready are handled without going back
                        // through the select (a page holds many), until something else
                        // asks for attention or a bounded number was handled.
                        let mut end = None;
                        for _ in 0..DRAIN_MAX {
                            if control.has_changed().unwrap_or(true)
                                || !self.commands.is_empty()
                                || run.inflight.as_ref().is_some_and(|(_, t)| t.is_finished())
                            {
                                break;
                            }
                            let Some(item) = stream.next().now_or_never() else {
                                break;
                            };
                            match item {
                                None => {
                                    end = Some(Ok(()));
                                    break;
                                }
                                Some(Err(e)) => {
                                    end = Some(Err(e));
                                    break;
                                }
                                Some(Ok(next)) => {
                                    let (group, ended) =
                                        gather(self.group, next, &mut stream).await;
                                    if let Err(e) = self.process_group(group, &mut run).await {
                                        end = Some(Err(e));
                                        break;
                                    }
                                    match ended {
                                        Some(None) => {
                                            end = Some(Ok(()));
                                            break;
                                        }
                                        Some(Some(e)) => {
                                            end = Some(Err(e));
                                            break;
                                        }
                                        None => {}
                                    }
                                }
                            }
                        }
                        if let Some(end) = end {
                            break end;
                        }
                    }
                },
            }
        };
        // What was handled is committed, also when the handler or the source failed; not
        // after a conflict (another instance owns the offset now).
        let conflict = matches!(&outcome, Err(e) if e.kind() == ErrorKind::Conflict);
        if !conflict {
            commit_pending(&shared, &mut run).await?;
        }
        outcome
    }

    async fn process_group(
        &mut self,
        group: Vec<S::Envelope>,
        run: &mut RunState<'_>,
    ) -> Result<()> {
        let Some(last) = group.last() else {
            return Ok(());
        };
        let last_offset = last.offset().clone();
        let last_timestamp = last.timestamp();
        let span = tracing::info_span!("persistence.projection.batch", envelopes = group.len(), offset = %last_offset);
        async {
            let mut handled = 0u64;
            match self.delivery {
                Delivery::AtMostOnce => {
                    for envelope in &group {
                        commit(&self.shared, run, envelope.offset().clone()).await?;
                        if self
                            .handle_with_retries(std::slice::from_ref(envelope), run)
                            .await?
                        {
                            handled += 1;
                        }
                    }
                }
                Delivery::AtLeastOnce => {
                    if self.handle_with_retries(&group, run).await? {
                        handled = group.len() as u64;
                    }
                    run.pending = Some(last_offset.clone());
                    run.since_commit += group.len();
                    if run.since_commit >= self.settings.commit_every.max(1)
                        || run.last_commit.elapsed() >= self.settings.commit_interval
                    {
                        commit_pending_in_background(&self.shared, run).await?;
                    }
                }
                Delivery::ExactlyOnce => {
                    if self.handle_with_retries(&group, run).await? {
                        handled = group.len() as u64;
                    }
                }
            }
            self.shared.update(|s| {
                s.handled += handled;
                s.position = last_offset;
                s.last_event_timestamp = Some(last_timestamp);
            });
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Calls the handler on `group` with retries; exactly-once, each attempt in a new
    /// transaction committed with the group's offset. Skips the group (committing past it
    /// when exactly-once) or fails as [`OnFailure`] says.
    async fn handle_with_retries(
        &mut self,
        group: &[S::Envelope],
        run: &mut RunState<'_>,
    ) -> Result<bool> {
        let last_offset = group.last().map(|e| e.offset().clone()).unwrap_or_default();
        let mut delay = self.settings.retry_backoff;
        let mut attempt = 0;
        loop {
            let result = if self.delivery == Delivery::ExactlyOnce {
                let mut transaction: StoreTransaction =
                    self.shared.offsets.begin_transaction().await?;
                match self.process.process(Some(&mut transaction), group).await {
                    Ok(()) => {
                        // A failed commit ends the run: its outcome is unknown, and the
                        // restart reads the offset to learn it.
                        *run.version = self
                            .shared
                            .offsets
                            .commit_transaction(
                                transaction,
                                &self.shared.id,
                                *run.version,
                                last_offset.clone(),
                            )
                            .await?;
                        self.shared.update(|s| {
                            s.committed = last_offset.clone();
                            s.commits += 1;
                        });
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else {
                self.process.process(None, group).await
            };
            match result {
                Ok(()) => return Ok(true),
                Err(e) if attempt < self.settings.handler_retries => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "projection handler failed; retrying");
                    let text = e.to_string();
                    self.shared.update(|s| s.last_error = Some(text));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.settings.retry_max_backoff);
                }
                Err(e) => {
                    let first = &group[0];
                    let e = e
                        .with_operation("projection handler")
                        .with_persistence_id(first.persistence_id().as_str())
                        .with_sequence_range(first.sequence_nr(), first.sequence_nr());
                    if self.settings.on_failure == OnFailure::Skip {
                        tracing::warn!(error = %e, offset = %last_offset, envelopes = group.len(), "projection skipped envelopes its handler failed on");
                        let text = e.to_string();
                        self.shared.update(|s| {
                            s.skipped += group.len() as u64;
                            s.last_error = Some(text);
                        });
                        if self.delivery == Delivery::ExactlyOnce {
                            commit(&self.shared, run, last_offset.clone()).await?;
                        }
                        return Ok(false);
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// What one run carries between groups.
struct RunState<'a> {
    version: &'a mut u64,
    /// The offset handled and not yet committed (at-least-once).
    pending: Option<Offset>,
    since_commit: usize,
    last_commit: Instant,
    /// An at-least-once commit running in the background while handling goes on: its
    /// offset, and the task answering the new version. At most one at a time, since each
    /// commit names the version the one before made.
    inflight: Option<(Offset, tokio::task::JoinHandle<Result<u64>>)>,
}

impl RunState<'_> {
    /// Waits for the background commit, if any, and takes its result in.
    async fn finish_inflight<S>(&mut self, shared: &Shared<S>) -> Result<()> {
        if let Some((offset, task)) = self.inflight.take() {
            let version = task.await.map_err(|e| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("an offset commit task failed: {e}"),
                )
            })??;
            *self.version = version;
            shared.update(|s| {
                s.committed = offset;
                s.commits += 1;
            });
        }
        Ok(())
    }
}

/// The group starting with `first`: up to the group size, within the group's wait.
/// The second value is `Some` when the source ended while gathering (`Some(None)`:
/// completed; `Some(Some(e))`: failed).
async fn gather<E>(
    group_size: (usize, Duration),
    first: E,
    stream: &mut SourceStream<E>,
) -> (Vec<E>, Option<Option<Error>>) {
    let (max, wait) = group_size;
    let mut group = vec![first];
    if max <= 1 {
        return (group, None);
    }
    let deadline = tokio::time::Instant::now() + wait;
    while group.len() < max {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(envelope))) => group.push(envelope),
            Ok(Some(Err(e))) => return (group, Some(Some(e))),
            Ok(None) => return (group, Some(None)),
            Err(_) => break,
        }
    }
    (group, None)
}

/// Commits the pending offset and waits for it (and for any background commit).
async fn commit_pending<S>(shared: &Shared<S>, run: &mut RunState<'_>) -> Result<()> {
    run.finish_inflight(shared).await?;
    if let Some(offset) = run.pending.take() {
        commit(shared, run, offset).await?;
    }
    run.since_commit = 0;
    run.last_commit = Instant::now();
    Ok(())
}

/// Starts committing the pending offset in the background (after the previous background
/// commit, whose version it needs), so handling goes on while the store answers. A failed
/// commit surfaces at the latest when the next one starts or the run waits for it.
async fn commit_pending_in_background<S>(shared: &Shared<S>, run: &mut RunState<'_>) -> Result<()> {
    run.finish_inflight(shared).await?;
    if let Some(offset) = run.pending.take() {
        let (store, id, expected) = (shared.offsets.clone(), shared.id.clone(), *run.version);
        let committed = offset.clone();
        let task = tokio::spawn(async move { store.commit_offset(&id, expected, committed).await });
        run.inflight = Some((offset, task));
    }
    run.since_commit = 0;
    run.last_commit = Instant::now();
    Ok(())
}

async fn commit<S>(shared: &Shared<S>, run: &mut RunState<'_>, offset: Offset) -> Result<()> {
    *run.version = shared
        .offsets
        .commit_offset(&shared.id, *run.version, offset.clone())
        .await?;
    shared.update(|s| {
        s.committed = offset;
        s.commits += 1;
    });
    Ok(())
}

async fn set_directly<S>(shared: &Shared<S>, offset: Offset) -> Result<u64> {
    let version = shared
        .offsets
        .set_offset(&shared.id, offset.clone())
        .await?;
    shared.update(|s| {
        s.committed = offset.clone();
        s.position = offset;
    });
    Ok(version)
}

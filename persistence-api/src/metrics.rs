//! Metrics through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The checking layer ([`crate::Stores`]) records every call it passes to a backend, so
//! every backend reports the same names with the same labels; backends add only their
//! retries ([`record_retry`]). Nothing is exported unless the application installs a
//! recorder (Prometheus, OpenTelemetry, StatsD, ...): without one every record is a no-op.
//! The names, types and labels are tabled in this crate's README.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures::Stream;

use crate::durable_state::DurableStateChange;
use crate::error::{Error, ErrorKind, Result};
use crate::types::{EventEnvelope, PersistenceId, PersistentEvent, Timestamp};

/// Counter: calls that reached the checking layer, by `backend` and `operation`.
pub const OPERATIONS_TOTAL: &str = "persistence_operations_total";
/// Counter: failed calls (and failed atomic writes, and errors a stream yielded), by
/// `backend`, `operation` and `kind` ([`error_kind_label`]).
pub const ERRORS_TOTAL: &str = "persistence_errors_total";
/// Histogram, seconds: how long a call took, by `backend` and `operation` (for a replay,
/// until its stream was handed over; queries have none).
pub const OPERATION_DURATION_SECONDS: &str = "persistence_operation_duration_seconds";
/// Counter: events of atomic writes the backend acknowledged, by `backend`.
pub const EVENTS_WRITTEN_TOTAL: &str = "persistence_events_written_total";
/// Counter: [`PersistentEvent::stored_size`] summed over the events of
/// [`EVENTS_WRITTEN_TOTAL`], by `backend`.
pub const BYTES_WRITTEN_TOTAL: &str = "persistence_bytes_written_total";
/// Counter: events (or durable-state changes) delivered by replays and queries as the
/// caller takes them, by `backend` and `operation`.
pub const EVENTS_READ_TOTAL: &str = "persistence_events_read_total";
/// Histogram, seconds: for live queries, the time from an event's timestamp to its
/// delivery, by `backend` and `query`.
pub const LIVE_QUERY_LAG_SECONDS: &str = "persistence_live_query_lag_seconds";
/// Counter: requests a backend tried again, by `backend` and `operation`
/// ([`record_retry`]).
pub const RETRIES_TOTAL: &str = "persistence_retries_total";
/// Counter: times a live query looked again for new items after it had delivered all it
/// had found (woken by its poll interval or by a notification of a write), by `backend`
/// and `query` ([`record_poll`]). Its rate against [`EVENTS_READ_TOTAL`] shows how many
/// of the polls found nothing.
pub const LIVE_QUERY_POLLS_TOTAL: &str = "persistence_live_query_polls_total";

/// Describes every metric above to the installed recorder (its help text and unit), for
/// exporters that print them (Prometheus' `# HELP`). Optional: call it once after
/// installing the recorder.
pub fn describe() {
    use ::metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        OPERATIONS_TOTAL,
        Unit::Count,
        "Calls that reached the persistence checking layer"
    );
    describe_counter!(
        ERRORS_TOTAL,
        Unit::Count,
        "Failed persistence calls, failed atomic writes and stream errors, by error kind"
    );
    describe_histogram!(
        OPERATION_DURATION_SECONDS,
        Unit::Seconds,
        "How long a persistence call took"
    );
    describe_counter!(
        EVENTS_WRITTEN_TOTAL,
        Unit::Count,
        "Events of acknowledged atomic writes"
    );
    describe_counter!(
        BYTES_WRITTEN_TOTAL,
        Unit::Bytes,
        "Stored size of the events of acknowledged atomic writes"
    );
    describe_counter!(
        EVENTS_READ_TOTAL,
        Unit::Count,
        "Events and durable-state changes delivered by replays and queries"
    );
    describe_histogram!(
        LIVE_QUERY_LAG_SECONDS,
        Unit::Seconds,
        "Time from an event's timestamp to its delivery by a live query"
    );
    describe_counter!(RETRIES_TOTAL, Unit::Count, "Requests a backend tried again");
    describe_counter!(
        LIVE_QUERY_POLLS_TOTAL,
        Unit::Count,
        "Times a live query looked again for new items after catching up"
    );
}

/// Counts one retry of `operation` by `backend`'s own retry loop, as
/// [`RETRIES_TOTAL`]; for backends, called before each new attempt.
pub fn record_retry(backend: &'static str, operation: &'static str) {
    ::metrics::counter!(RETRIES_TOTAL, "backend" => backend, "operation" => operation).increment(1);
}

/// Counts one poll of a live `query` by `backend`, as [`LIVE_QUERY_POLLS_TOTAL`]; for
/// backends, called each time a live query that had caught up looks again. `query` is the
/// name the checking layer uses for the live query: `persistence_ids`,
/// `events_by_persistence_id`, `events_by_tag` or `changes`.
pub fn record_poll(backend: &'static str, query: &'static str) {
    ::metrics::counter!(LIVE_QUERY_POLLS_TOTAL, "backend" => backend, "query" => query)
        .increment(1);
}

/// The `kind` label of [`ERRORS_TOTAL`]: the kind in snake case (`invalid_input`,
/// `conflict`, `rate_limited`, ...).
pub fn error_kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "invalid_input",
        ErrorKind::Rejected => "rejected",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::ConfigInvalid => "config_invalid",
        ErrorKind::Serialization => "serialization",
        ErrorKind::WriterConflict => "writer_conflict",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Storage => "storage",
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::Unexpected => "unexpected",
    }
}

/// Counts one error of `kind`.
pub(crate) fn record_error(backend: &'static str, operation: &'static str, kind: ErrorKind) {
    ::metrics::counter!(
        ERRORS_TOTAL,
        "backend" => backend,
        "operation" => operation,
        "kind" => error_kind_label(kind)
    )
    .increment(1);
}

/// Counts the events and bytes of acknowledged atomic writes.
pub(crate) fn record_written(backend: &'static str, events: u64, bytes: u64) {
    ::metrics::counter!(EVENTS_WRITTEN_TOTAL, "backend" => backend).increment(events);
    ::metrics::counter!(BYTES_WRITTEN_TOTAL, "backend" => backend).increment(bytes);
}

/// One call being measured: counted when started, timed and its error counted when
/// finished.
pub(crate) struct Call {
    backend: &'static str,
    operation: &'static str,
    start: Instant,
}

impl Call {
    /// Counts the call and starts its clock.
    pub(crate) fn start(backend: &'static str, operation: &'static str) -> Self {
        ::metrics::counter!(OPERATIONS_TOTAL, "backend" => backend, "operation" => operation)
            .increment(1);
        Call {
            backend,
            operation,
            start: Instant::now(),
        }
    }

    /// Records the call's duration and, if it failed, its error.
    pub(crate) fn finish<T>(self, result: &Result<T>) {
        ::metrics::histogram!(
            OPERATION_DURATION_SECONDS,
            "backend" => self.backend,
            "operation" => self.operation
        )
        .record(self.start.elapsed().as_secs_f64());
        if let Err(e) = result {
            record_error(self.backend, self.operation, e.kind());
        }
    }
}

/// What a stream of the API yields, as the stream metrics see it.
pub(crate) trait Item {
    /// Whether the item is an event (or a durable-state change), counted as read.
    const EVENT: bool;
    /// When the item was written, for the live lag.
    fn written_at(&self) -> Option<Timestamp>;
}

impl Item for EventEnvelope {
    const EVENT: bool = true;
    fn written_at(&self) -> Option<Timestamp> {
        Some(self.event.timestamp)
    }
}

impl Item for PersistentEvent {
    const EVENT: bool = true;
    fn written_at(&self) -> Option<Timestamp> {
        Some(self.timestamp)
    }
}

impl Item for DurableStateChange {
    const EVENT: bool = true;
    fn written_at(&self) -> Option<Timestamp> {
        Some(self.timestamp)
    }
}

impl Item for PersistenceId {
    const EVENT: bool = false;
    fn written_at(&self) -> Option<Timestamp> {
        None
    }
}

/// `stream` counting the events it yields, the errors it yields and, when `live`, each
/// event's delivery lag. The call itself is counted by the caller ([`count_call`]).
pub(crate) fn observe_stream<T: Item + Send + 'static>(
    backend: &'static str,
    operation: &'static str,
    live: bool,
    stream: crate::stores::BoxedStream<T>,
) -> crate::stores::BoxedStream<T> {
    observe_stream_mapped(backend, operation, live, stream, |e| e)
}

/// [`observe_stream`] of `stream` with each error it yields passed through `map_err`
/// first (the context the checking layer adds), in the same layer: one poll per item
/// rather than one per adapter, which is most of the layer's cost per event.
pub(crate) fn observe_stream_mapped<T, E>(
    backend: &'static str,
    operation: &'static str,
    live: bool,
    stream: crate::stores::BoxedStream<T>,
    map_err: E,
) -> crate::stores::BoxedStream<T>
where
    T: Item + Send + 'static,
    E: FnMut(Error) -> Error + Send + 'static,
{
    let read =
        ::metrics::counter!(EVENTS_READ_TOTAL, "backend" => backend, "operation" => operation);
    let lag = live.then(|| {
        ::metrics::histogram!(LIVE_QUERY_LAG_SECONDS, "backend" => backend, "query" => operation)
    });
    Box::pin(Observed {
        stream,
        backend,
        operation,
        read,
        lag,
        map_err,
    })
}

/// The stream of [`observe_stream_mapped`].
struct Observed<T, E> {
    stream: crate::stores::BoxedStream<T>,
    backend: &'static str,
    operation: &'static str,
    read: ::metrics::Counter,
    lag: Option<::metrics::Histogram>,
    map_err: E,
}

// No field is pinned structurally (the inner stream is boxed).
impl<T, E> Unpin for Observed<T, E> {}

impl<T: Item, E: FnMut(Error) -> Error> Stream for Observed<T, E> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        match ready!(this.stream.as_mut().poll_next(cx)) {
            Some(Ok(item)) => {
                if T::EVENT {
                    this.read.increment(1);
                }
                if let (Some(lag), Some(at)) = (&this.lag, item.written_at()) {
                    let millis = Timestamp::now().as_millis().saturating_sub(at.as_millis());
                    lag.record(millis.max(0) as f64 / 1000.0);
                }
                Poll::Ready(Some(Ok(item)))
            }
            Some(Err(e)) => {
                let e = (this.map_err)(e);
                record_error(this.backend, this.operation, e.kind());
                Poll::Ready(Some(Err(e)))
            }
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

/// Counts a call that has no duration of its own (a query: its stream is measured).
pub(crate) fn count_call(backend: &'static str, operation: &'static str) {
    ::metrics::counter!(OPERATIONS_TOTAL, "backend" => backend, "operation" => operation)
        .increment(1);
}

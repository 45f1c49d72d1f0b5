//! Detects events of several writers interleaved in one id's replay.
//!
//! When two incarnations of an entity wrote to the same persistence id (a split brain, a
//! journal without conflict detection), replay can show an older writer's events after a
//! newer writer took over. The filter keeps a window of events and, by writer id, decides
//! which to deliver, as Pekko's replay filter does.

use std::collections::VecDeque;

use futures::{stream, StreamExt};

use crate::error::{Error, ErrorKind, Result};
use crate::traits::EventStream;
use crate::types::PersistentEvent;

/// What the filter does on finding an older writer's event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayFilterMode {
    /// Drop the older writer's events and log a warning (the default).
    #[default]
    RepairByDiscardOld,
    /// Fail the replay with [`ErrorKind::WriterConflict`].
    Fail,
    /// Log a warning and deliver everything.
    Warn,
    /// No filtering at all.
    Off,
}

/// Settings of the replay filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayFilter {
    /// What to do with an older writer's events.
    pub mode: ReplayFilterMode,
    /// How many events are held back to look for a newer writer (default 100).
    pub window_size: usize,
    /// How many older writer ids are remembered (default 10).
    pub max_old_writers: usize,
}

impl Default for ReplayFilter {
    fn default() -> Self {
        ReplayFilter {
            mode: ReplayFilterMode::RepairByDiscardOld,
            window_size: 100,
            max_old_writers: 10,
        }
    }
}

impl ReplayFilter {
    /// The default settings with `mode`.
    pub fn with_mode(mode: ReplayFilterMode) -> Self {
        ReplayFilter {
            mode,
            ..Self::default()
        }
    }

    /// Applies the filter to a replay stream.
    pub fn apply(self, events: EventStream) -> EventStream {
        if self.mode == ReplayFilterMode::Off {
            return events;
        }
        let state = FilterState::new(self);
        let out = stream::unfold(
            (events, state, VecDeque::new(), false),
            |(mut events, mut state, mut ready, mut done)| async move {
                loop {
                    if let Some(item) = ready.pop_front() {
                        return Some((item, (events, state, ready, done)));
                    }
                    if done {
                        return None;
                    }
                    match events.next().await {
                        Some(Ok(event)) => match state.push(event) {
                            Ok(out) => ready.extend(out.into_iter().map(Ok)),
                            Err(e) => {
                                ready.push_back(Err(e));
                                done = true;
                            }
                        },
                        Some(Err(e)) => {
                            ready.push_back(Err(e));
                            done = true;
                        }
                        None => {
                            ready.extend(state.finish().into_iter().map(Ok));
                            done = true;
                        }
                    }
                }
            },
        );
        Box::pin(out)
    }
}

/// The filter's state machine, usable without streams.
#[derive(Debug)]
pub struct FilterState {
    settings: ReplayFilter,
    buffer: VecDeque<PersistentEvent>,
    writer: Option<String>,
    sequence_nr: u64,
    old_writers: VecDeque<String>,
}

impl FilterState {
    /// A fresh filter.
    pub fn new(settings: ReplayFilter) -> Self {
        FilterState {
            settings,
            buffer: VecDeque::new(),
            writer: None,
            sequence_nr: 0,
            old_writers: VecDeque::new(),
        }
    }

    fn conflict(&self, event: &PersistentEvent, what: String) -> Result<bool> {
        let message = format!(
            "{what} (persistence id {}, sequence number {}, writer {:?}); usually several writers on one id",
            event.persistence_id, event.sequence_nr, event.writer_id
        );
        match self.settings.mode {
            ReplayFilterMode::Fail => Err(Error::new(ErrorKind::WriterConflict, message)
                .with_operation("replay")
                .with_persistence_id(event.persistence_id.as_str())
                .with_sequence_range(event.sequence_nr, event.sequence_nr)),
            ReplayFilterMode::Warn => {
                tracing::warn!("{message}");
                Ok(true)
            }
            ReplayFilterMode::RepairByDiscardOld => {
                tracing::warn!("{message}; discarding it");
                Ok(false)
            }
            ReplayFilterMode::Off => Ok(true),
        }
    }

    /// Takes one replayed event; returns the events now safe to deliver.
    pub fn push(&mut self, event: PersistentEvent) -> Result<Vec<PersistentEvent>> {
        if self.settings.mode == ReplayFilterMode::Off {
            return Ok(vec![event]);
        }
        let keep = if self.writer.as_deref() == Some(event.writer_id.as_str()) {
            if event.sequence_nr < self.sequence_nr {
                self.conflict(
                    &event,
                    format!(
                        "event out of order from the same writer after {}",
                        self.sequence_nr
                    ),
                )?
            } else {
                self.sequence_nr = event.sequence_nr;
                true
            }
        } else if self.old_writers.contains(&event.writer_id) {
            self.conflict(
                &event,
                "event from an older writer after a newer one took over".to_string(),
            )?
        } else {
            if let Some(previous) = self.writer.take() {
                self.old_writers.push_back(previous);
                if self.old_writers.len() > self.settings.max_old_writers {
                    self.old_writers.pop_front();
                }
            }
            self.writer = Some(event.writer_id.clone());
            self.sequence_nr = event.sequence_nr;
            // Events of the old writer held back with numbers the new writer reuses.
            let mut kept = VecDeque::with_capacity(self.buffer.len());
            while let Some(held) = self.buffer.pop_front() {
                if held.sequence_nr >= event.sequence_nr {
                    let msg = format!(
                        "a newer writer {:?} also wrote sequence number {}",
                        event.writer_id, held.sequence_nr
                    );
                    if !self.conflict(&held, msg)? {
                        continue;
                    }
                }
                kept.push_back(held);
            }
            self.buffer = kept;
            true
        };
        if keep {
            self.buffer.push_back(event);
        }
        let mut out = Vec::new();
        while self.buffer.len() > self.settings.window_size {
            out.extend(self.buffer.pop_front());
        }
        Ok(out)
    }

    /// Ends the replay: everything still held back.
    pub fn finish(&mut self) -> Vec<PersistentEvent> {
        self.buffer.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Payload, PersistenceId};

    fn ev(seq: u64, writer: &str) -> PersistentEvent {
        PersistentEvent::new(PersistenceId::new("p").unwrap(), seq, Payload::raw(vec![]))
            .with_writer_id(writer)
    }

    fn run(mode: ReplayFilterMode, events: Vec<PersistentEvent>) -> Result<Vec<(u64, String)>> {
        let mut f = FilterState::new(ReplayFilter::with_mode(mode));
        let mut out = Vec::new();
        for e in events {
            out.extend(f.push(e)?);
        }
        out.extend(f.finish());
        Ok(out
            .into_iter()
            .map(|e| (e.sequence_nr, e.writer_id))
            .collect())
    }

    fn interleaved() -> Vec<PersistentEvent> {
        // A wrote 1..3, B took over at 3 (reusing it), then A wrote 4 late.
        vec![
            ev(1, "A"),
            ev(2, "A"),
            ev(3, "A"),
            ev(3, "B"),
            ev(4, "A"),
            ev(4, "B"),
        ]
    }

    #[test]
    fn repair_discards_the_old_writer() {
        let out = run(ReplayFilterMode::RepairByDiscardOld, interleaved()).unwrap();
        assert_eq!(
            out,
            vec![
                (1, "A".into()),
                (2, "A".into()),
                (3, "B".into()),
                (4, "B".into())
            ]
        );
    }

    #[test]
    fn fail_mode_fails_and_warn_and_off_deliver_all() {
        let err = run(ReplayFilterMode::Fail, interleaved()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriterConflict);
        assert_eq!(run(ReplayFilterMode::Warn, interleaved()).unwrap().len(), 6);
        assert_eq!(run(ReplayFilterMode::Off, interleaved()).unwrap().len(), 6);
    }

    #[test]
    fn one_writer_passes_untouched() {
        let events: Vec<_> = (1..=250).map(|n| ev(n, "A")).collect();
        let out = run(ReplayFilterMode::Fail, events).unwrap();
        assert_eq!(out.len(), 250);
        assert!(out.windows(2).all(|w| w[0].0 + 1 == w[1].0));
    }
}

//! [`Source`]: what a projection reads, and from which offset.

use persistence_api::{
    EnvelopeStream, Error, Offset, PersistenceId, QueryMode, ReadJournal, Result,
};

/// What a projection reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// [`persistence_api::ReadJournal::query_events_by_tag`]; the stored offset is the tag
    /// query's offset.
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
    /// Events by `tag`, current or live.
    pub fn tag(tag: impl Into<String>, mode: QueryMode) -> Self {
        Source::EventsByTag {
            tag: tag.into(),
            mode,
        }
    }

    /// The events of `persistence_id`, current or live.
    pub fn persistence_id(persistence_id: PersistenceId, mode: QueryMode) -> Self {
        Source::EventsByPersistenceId {
            persistence_id,
            mode,
        }
    }

    /// Whether it completes at the end of what is stored ([`QueryMode::Current`]).
    pub fn mode(&self) -> QueryMode {
        match self {
            Source::EventsByTag { mode, .. } | Source::EventsByPersistenceId { mode, .. } => *mode,
        }
    }

    /// Checks that `offset` is of a kind this source resumes from.
    ///
    /// # Errors
    /// [`persistence_api::ErrorKind::InvalidInput`] naming the source and the offset: a
    /// by-id source resumes from `Offset::Sequence` or `Offset::NoOffset` only.
    pub fn check_offset(&self, offset: &Offset) -> Result<()> {
        match (self, offset) {
            (Source::EventsByPersistenceId { persistence_id, .. }, other)
                if !matches!(other, Offset::NoOffset | Offset::Sequence(_)) =>
            {
                Err(Error::invalid_input(format!(
                    "an events-by-persistence-id source ({persistence_id}) resumes from a sequence offset, not from {other}"
                ))
                .with_persistence_id(persistence_id.as_str()))
            }
            _ => Ok(()),
        }
    }

    /// The stream of envelopes after `offset`, in this source's mode.
    ///
    /// # Errors
    /// As [`Source::check_offset`].
    pub fn open(&self, read_journal: &dyn ReadJournal, offset: Offset) -> Result<EnvelopeStream> {
        self.open_in(read_journal, offset, self.mode())
    }

    /// The stream of envelopes stored now after `offset` (the current form, whatever this
    /// source's mode): what the lag is counted on.
    ///
    /// # Errors
    /// As [`Source::check_offset`].
    pub fn open_current(
        &self,
        read_journal: &dyn ReadJournal,
        offset: Offset,
    ) -> Result<EnvelopeStream> {
        self.open_in(read_journal, offset, QueryMode::Current)
    }

    fn open_in(
        &self,
        read_journal: &dyn ReadJournal,
        offset: Offset,
        mode: QueryMode,
    ) -> Result<EnvelopeStream> {
        self.check_offset(&offset)?;
        match self {
            Source::EventsByTag { tag, .. } => {
                Ok(read_journal.query_events_by_tag(tag.clone(), offset, mode))
            }
            Source::EventsByPersistenceId { persistence_id, .. } => {
                let from = match offset {
                    Offset::Sequence(n) => n + 1,
                    _ => 1,
                };
                Ok(read_journal.query_events_by_persistence_id(
                    persistence_id.clone(),
                    from,
                    u64::MAX,
                    mode,
                ))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::EventsByTag { tag, mode } => write!(f, "events by tag {tag:?} ({mode:?})"),
            Source::EventsByPersistenceId {
                persistence_id,
                mode,
            } => write!(f, "events of {persistence_id} ({mode:?})"),
        }
    }
}

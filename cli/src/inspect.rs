//! The read-only commands (`ids`, `events`, `snapshot`, `tag`, `tail`, `state get`) and the
//! projection offsets (`offsets show|set|clear`).

use futures::StreamExt;
use persistence_stores::{
    Offset, PersistenceId, ProjectionId, ReadJournalExt, SnapshotSelectionCriteria, Stores,
};
use serde_json::json;

use crate::error::CliError;
use crate::output::{self, emit};
use crate::Out;

/// A persistence id from the command line; an invalid one is a usage error.
pub fn parse_id(id: &str) -> Result<PersistenceId, CliError> {
    PersistenceId::new(id).map_err(|e| CliError::Usage(format!("invalid persistence id: {e}")))
}

/// An offset from the command line (`none`, `sequence:<n>`, `timeuuid:<uuid>`, `token:<t>`).
pub fn parse_offset(text: &str) -> Result<Offset, CliError> {
    text.parse::<Offset>()
        .map_err(|e| CliError::Usage(format!("invalid --offset: {}", e.message())))
}

/// A projection id from the command line; an invalid one is a usage error.
pub fn projection_id(name: &str, key: &str) -> Result<ProjectionId, CliError> {
    ProjectionId::new(name, key)
        .map_err(|e| CliError::Usage(format!("invalid projection: {}", e.message())))
}

/// `ids [--count]`.
pub async fn ids(stores: &Stores, count: bool, out: Out) -> Result<(), CliError> {
    let mut stream = stores.read_journal.current_persistence_ids();
    let mut n: u64 = 0;
    while let Some(id) = stream.next().await {
        let id = id?;
        n += 1;
        if !count {
            emit(out, json!({ "persistence_id": id.as_str() }), || {
                id.to_string()
            })?;
        }
    }
    if count {
        emit(out, json!({ "count": n }), || n.to_string())?;
    }
    Ok(())
}

/// `events ID [--from N] [--to N]`.
pub async fn events(
    stores: &Stores,
    id: &str,
    from: u64,
    to: u64,
    hex: bool,
    out: Out,
) -> Result<(), CliError> {
    let pid = parse_id(id)?;
    let replay = stores.journal.replay(&pid, from, to, u64::MAX).await?;
    let mut events = replay.events;
    let mut n = 0u64;
    while let Some(event) = events.next().await {
        let event = event?;
        n += 1;
        emit(out, output::event_json(&event, None, hex), || {
            output::event_text(&event, None, hex)
        })?;
    }
    if n == 0 && !out.json {
        eprintln!(
            "no events of {id} in {from}..={to} (highest sequence number {}, backend {})",
            replay.highest_sequence_nr,
            stores.backend()
        );
    }
    Ok(())
}

/// `snapshot ID`.
pub async fn snapshot(stores: &Stores, id: &str, hex: bool, out: Out) -> Result<(), CliError> {
    let pid = parse_id(id)?;
    match stores
        .snapshots
        .load_snapshot(&pid, SnapshotSelectionCriteria::latest())
        .await?
    {
        Some(s) => emit(out, output::snapshot_json(&s, hex), || {
            output::snapshot_text(&s, hex)
        }),
        None => emit(
            out,
            json!({ "persistence_id": id, "snapshot": null }),
            || format!("no snapshot of {id} (backend {})", stores.backend()),
        ),
    }
}

/// `tag TAG [--offset X]`.
pub async fn tag(
    stores: &Stores,
    tag: String,
    offset: &str,
    hex: bool,
    out: Out,
) -> Result<(), CliError> {
    let offset = parse_offset(offset)?;
    let mut stream = stores.read_journal.current_events_by_tag(tag, offset);
    while let Some(envelope) = stream.next().await {
        let envelope = envelope?;
        emit(
            out,
            output::event_json(&envelope.event, Some(&envelope.offset), hex),
            || output::event_text(&envelope.event, Some(&envelope.offset), hex),
        )?;
    }
    Ok(())
}

/// `tail --tag TAG | --id ID [--offset X]`: until Ctrl-C.
pub async fn tail(
    stores: &Stores,
    tag: Option<String>,
    id: Option<String>,
    offset: &str,
    hex: bool,
    out: Out,
) -> Result<(), CliError> {
    let offset = parse_offset(offset)?;
    let mut stream = match (tag, id) {
        (Some(tag), _) => stores.read_journal.events_by_tag(tag, offset),
        (None, Some(id)) => {
            let from = match offset {
                Offset::NoOffset => 1,
                Offset::Sequence(n) => n.saturating_add(1),
                other => {
                    return Err(CliError::Usage(format!(
                        "--offset {other} does not apply to --id; give sequence:<n> to start after event n"
                    )))
                }
            };
            stores
                .read_journal
                .events_by_persistence_id(parse_id(&id)?, from, u64::MAX)
        }
        (None, None) => return Err(CliError::Usage("give --tag TAG or --id ID".into())),
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            item = stream.next() => match item {
                None => return Ok(()),
                Some(envelope) => {
                    let envelope = envelope?;
                    emit(
                        out,
                        output::event_json(&envelope.event, Some(&envelope.offset), hex),
                        || output::event_text(&envelope.event, Some(&envelope.offset), hex),
                    )?;
                }
            }
        }
    }
}

/// `offsets show NAME KEY`.
pub async fn offsets_show(
    stores: &Stores,
    name: &str,
    key: &str,
    out: Out,
) -> Result<(), CliError> {
    let pid = projection_id(name, key)?;
    match stores.offsets.read_offset(&pid).await? {
        Some(stored) => emit(
            out,
            json!({ "name": name, "key": key, "offset": stored.offset.to_string(), "version": stored.version }),
            || {
                format!(
                    "{pid}: offset {} (version {})",
                    stored.offset, stored.version
                )
            },
        ),
        None => emit(
            out,
            json!({ "name": name, "key": key, "offset": null, "version": 0 }),
            || format!("{pid}: no offset stored"),
        ),
    }
}

/// `offsets set NAME KEY OFFSET`.
pub async fn offsets_set(
    stores: &Stores,
    name: &str,
    key: &str,
    offset: &str,
    out: Out,
) -> Result<(), CliError> {
    let pid = projection_id(name, key)?;
    let offset = parse_offset(offset)?;
    let version = stores.offsets.set_offset(&pid, offset.clone()).await?;
    emit(
        out,
        json!({ "name": name, "key": key, "offset": offset.to_string(), "version": version }),
        || format!("{pid}: offset set to {offset} (version {version})"),
    )
}

/// `offsets clear NAME KEY`.
pub async fn offsets_clear(
    stores: &Stores,
    name: &str,
    key: &str,
    out: Out,
) -> Result<(), CliError> {
    let pid = projection_id(name, key)?;
    let version = stores.offsets.clear_offset(&pid).await?;
    emit(
        out,
        json!({ "name": name, "key": key, "offset": Offset::NoOffset.to_string(), "version": version }),
        || format!("{pid}: offset cleared (version {version})"),
    )
}

/// `state get ID`.
pub async fn state_get(stores: &Stores, id: &str, hex: bool, out: Out) -> Result<(), CliError> {
    let pid = parse_id(id)?;
    match stores.durable_state.get(&pid).await? {
        Some(state) => emit(out, output::state_json(&state, hex), || {
            output::state_text(&state, hex)
        }),
        None => emit(
            out,
            json!({ "persistence_id": id, "revision": 0, "payload": null }),
            || format!("no state of {id} (backend {})", stores.backend()),
        ),
    }
}

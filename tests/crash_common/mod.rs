//! What the crash tests share: the random numbers of their kill delays, the choice of
//! backends (`PERSISTENCE_CRASH_BACKENDS`), the writes they stream, and the checks that
//! follow a crash (of the server in `tests/server_crash.rs`, of the writing client process
//! in `tests/client_crash.rs`). `tests/projection_crash.rs` takes its [`Rng`] from here.
//!
//! A test that uses only part of this module sees the rest as unused, hence the
//! `dead_code` allowance.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use persistence_stores::{
    AtomicWrite, JournalExt, Offset, Payload, PersistenceId, PersistentEvent, ReadJournalExt,
    Stores,
};

/// splitmix64: random enough for kill delays and sleeps, no dependency.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and the process id.
    pub fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Whether the backend `name` is to run: every backend, or only those the comma-separated
/// `PERSISTENCE_CRASH_BACKENDS` names.
pub fn chosen(name: &str) -> bool {
    match std::env::var("PERSISTENCE_CRASH_BACKENDS") {
        Ok(only) => only.split(',').any(|n| n.trim() == name),
        Err(_) => true,
    }
}

/// `CI=true` (or `1`): what would be a skip is a failure.
pub fn ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Writers (one persistence id each).
pub const WRITERS: usize = 4;
/// Events per atomic write.
pub const EVENTS_PER_WRITE: u64 = 100;
/// The tag every event carries.
pub const TAG: &str = "crash";

pub fn pid_name(k: usize) -> String {
    format!("crash-{k}")
}

/// One atomic write of [`EVENTS_PER_WRITE`] tagged events from `from`.
pub fn batch(id: &PersistenceId, from: u64) -> AtomicWrite {
    let events = (from..from + EVENTS_PER_WRITE)
        .map(|seq| {
            PersistentEvent::new(
                id.clone(),
                seq,
                Payload::raw(format!("{id}/{seq}").into_bytes()),
            )
            .with_tags([TAG])
        })
        .collect();
    AtomicWrite::new(events).unwrap()
}

/// What one backend's campaign counted.
#[derive(Default, Debug)]
pub struct Tally {
    pub cycles: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    pub lost: usize,
    pub lost_by_emulator: usize,
    pub partial: usize,
    pub restart: Duration,
    pub elapsed: Duration,
    pub problems: Vec<String>,
}

/// How [`verify`] treats what it finds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checks {
    /// Lost acknowledged writes are the emulator's (DynamoDB Local killed with SIGKILL):
    /// counted in [`Tally::lost_by_emulator`], not a problem.
    pub losses_are_the_emulators: bool,
    /// Also check that a live tag query resumed from the current query's last offset
    /// delivers exactly the writes at highest+1 (and nothing else).
    pub live_resume: bool,
}

/// What [`verify`] saw of each id.
#[derive(Debug, Default)]
pub struct Verified {
    /// The replayed highest sequence number, before the write at highest+1.
    pub highest: Vec<u64>,
    /// The next sequence number after the successful write at highest+1.
    pub next: Vec<u64>,
}

/// Checks the stores after a crash against the acknowledged writes (`acked[k]`: the first
/// sequence numbers of id k's acknowledged writes): every acknowledged write present
/// whole (else lost); each id's events a multiple of [`EVENTS_PER_WRITE`] numbered
/// 1..=n (else partial); `current_events_by_tag` equal to the replay;
/// `highest_sequence_nr` equal to the replayed highest; then a write at highest+1 on each
/// id, which must succeed (recorded as acknowledged), and with [`Checks::live_resume`] a
/// live tag query from the last offset that must deliver exactly those writes.
pub async fn verify(
    name: &str,
    stores: &Stores,
    acked: &mut [Vec<u64>],
    tally: &mut Tally,
    checks: Checks,
) -> Verified {
    let mut replayed: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut verified = Verified::default();
    for (k, acked_k) in acked.iter_mut().enumerate() {
        let id = PersistenceId::new(pid_name(k)).unwrap();
        let events = stores.journal.replay_all(&id).await.expect("replay");
        let seqs: Vec<u64> = events.iter().map(|e| e.sequence_nr).collect();
        let n = seqs.len() as u64;
        let contiguous = seqs.iter().copied().eq(1..=n);
        if !n.is_multiple_of(EVENTS_PER_WRITE) || !contiguous {
            tally.partial += 1;
            tally.problems.push(format!(
                "{name} {id}: {n} events in replay, contiguous {contiguous} (partial write)"
            ));
        }
        let highest = seqs.last().copied().unwrap_or(0);
        let lost: Vec<u64> = acked_k
            .iter()
            .copied()
            .filter(|from| !(1..=n).contains(from) || from + EVENTS_PER_WRITE - 1 > n)
            .collect();
        if !lost.is_empty() {
            let msg = format!(
                "{name} {id}: {} acknowledged write(s) missing after the crash (first sequence numbers {lost:?}; replay ends at {highest})",
                lost.len()
            );
            if checks.losses_are_the_emulators {
                tally.lost_by_emulator += lost.len();
                eprintln!("crash test: LOST BY THE EMULATOR (DynamoDB Local): {msg}");
            } else {
                tally.lost += lost.len();
                tally.problems.push(msg);
            }
            // Lost writes are gone: the id continues from what is there.
            acked_k.retain(|from| from + EVENTS_PER_WRITE - 1 <= n);
        }
        let stored_highest = stores
            .journal
            .highest_sequence_nr(&id)
            .await
            .expect("highest_sequence_nr");
        if stored_highest != highest {
            tally.problems.push(format!(
                "{name} {id}: highest_sequence_nr {stored_highest}, replay ends at {highest}"
            ));
        }
        replayed.insert(id.to_string(), seqs);
        verified.highest.push(highest);
    }

    // The tag query returns exactly the replayed events (it may lag a moment after a crash).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut by_tag: BTreeMap<String, Vec<u64>>;
    let mut last_offset;
    loop {
        by_tag = BTreeMap::new();
        last_offset = Offset::NoOffset;
        let envelopes: Vec<_> = stores
            .read_journal
            .current_events_by_tag(TAG.into(), Offset::NoOffset)
            .collect()
            .await;
        for e in envelopes {
            let e = e.expect("the tag query");
            by_tag
                .entry(e.persistence_id().to_string())
                .or_default()
                .push(e.event.sequence_nr);
            last_offset = e.offset;
        }
        for seqs in by_tag.values_mut() {
            seqs.sort_unstable();
        }
        if by_tag
            == replayed
                .clone()
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect()
            || Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (id, seqs) in &replayed {
        let tagged = by_tag.get(id).cloned().unwrap_or_default();
        if &tagged != seqs {
            if !(tagged.len() as u64).is_multiple_of(EVENTS_PER_WRITE) {
                tally.partial += 1;
            }
            tally.problems.push(format!(
                "{name} {id}: the tag query returned {} events, the replay {}",
                tagged.len(),
                seqs.len()
            ));
        }
    }

    // A live query resumed from the last offset the current query returned.
    let live = checks.live_resume.then(|| {
        stores
            .read_journal
            .events_by_tag(TAG.into(), last_offset.clone())
    });

    // The next write on each id, at highest+1, succeeds.
    let mut expected_live = BTreeSet::new();
    for (k, highest) in verified.highest.iter().enumerate() {
        let id = PersistenceId::new(pid_name(k)).unwrap();
        let n = highest + 1;
        match stores.journal.write(batch(&id, n)).await {
            Ok(()) => {
                acked[k].push(n);
                tally.acknowledged += 1;
                expected_live.extend((n..n + EVENTS_PER_WRITE).map(|s| (id.to_string(), s)));
                verified.next.push(n + EVENTS_PER_WRITE);
            }
            Err(e) => {
                tally.problems.push(format!(
                    "{name} {id}: the write at highest+1 = {n} failed after the crash: {e}"
                ));
                verified.next.push(n);
            }
        }
    }

    if let Some(mut live) = live {
        let mut got = BTreeSet::new();
        let mut unexpected = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Until every new event came, then a moment more for anything that should not.
        while Instant::now() < deadline {
            let wait = if got.len() == expected_live.len() {
                Duration::from_millis(1000)
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            match tokio::time::timeout(wait, live.next()).await {
                Ok(Some(Ok(e))) => {
                    let key = (e.persistence_id().to_string(), e.event.sequence_nr);
                    if expected_live.contains(&key) && got.insert(key.clone()) {
                        continue;
                    }
                    unexpected.push(key);
                }
                Ok(Some(Err(e))) => {
                    tally
                        .problems
                        .push(format!("{name}: the resumed live tag query failed: {e}"));
                    break;
                }
                Ok(None) => {
                    tally
                        .problems
                        .push(format!("{name}: the resumed live tag query ended"));
                    break;
                }
                Err(_) => break,
            }
        }
        if got.len() != expected_live.len() {
            let missing: Vec<_> = expected_live.difference(&got).take(5).collect();
            tally.problems.push(format!(
                "{name}: the live tag query resumed from {last_offset:?} delivered {} of the {} events written at highest+1 within 30 s (first missing {missing:?})",
                got.len(),
                expected_live.len()
            ));
        }
        if !unexpected.is_empty() {
            tally.problems.push(format!(
                "{name}: the live tag query resumed from {last_offset:?} delivered {} event(s) other than (or again) the writes at highest+1: {:?}",
                unexpected.len(),
                &unexpected[..unexpected.len().min(5)]
            ));
        }
    }
    verified
}

//! `copy --offsets`: a projection's offset in the source is translated to the target's
//! offset so that, resumed there, the projection misses no event after its source offset
//! and sees again exactly as many as `copy` reports. SQLite → SQLite always; SQLite →
//! PostgreSQL, DynamoDB and Cassandra when their servers are configured (with `CI=true` a
//! missing server is a failure). A few hundred events, so it stays fast.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use persistence_stores::{
    AtomicWrite, JournalExt, Offset, Payload, PersistenceId, PersistentEvent, ProjectionId,
    ReadJournalExt, Stores,
};
use serde_json::Value;

const IDS: u64 = 6;
const EVENTS_PER_ID: u64 = 40; // 240 events, 200 of them tagged `TAG`
const TAG: &str = "offset-tag";

mod support;

use support::{json_lines, open, run, sqlite_config, unique, write_config};

fn temp_dir() -> PathBuf {
    support::temp_dir("persistence-cli-offsets-")
}

/// Runs the binary with `args`, which must succeed; its JSON lines.
fn ok(args: &[&str]) -> Vec<Value> {
    json_lines(&support::ok(args))
}

/// The server targets whose servers are configured (as `tests/cli.rs` finds them).
fn server_targets(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let ns = unique("cli_off_");
    let mut targets = Vec::new();
    if let Some(url) = persistence_tck::server_env("PERSISTENCE_POSTGRES_URL") {
        let toml =
            format!("backend = \"postgres\"\n[postgres]\nurl = {url:?}\nnamespace = {ns:?}\n");
        targets.push(("postgres", write_config(dir, "postgres", &toml)));
    }
    if let Some(endpoint) = persistence_tck::server_env("PERSISTENCE_DYNAMODB_ENDPOINT") {
        let toml = format!(
            "backend = \"dynamodb\"\n[dynamodb]\nendpoint = {endpoint:?}\nnamespace = {ns:?}\ncreate_schema = true\n"
        );
        targets.push(("dynamodb", write_config(dir, "dynamodb", &toml)));
    }
    if let Some(points) = persistence_tck::server_env("PERSISTENCE_CASSANDRA_CONTACT_POINTS") {
        let points: Vec<String> = points.split(',').map(|p| p.trim().to_string()).collect();
        let dc = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER")
            .map(|dc| format!("local_datacenter = {dc:?}\n"))
            .unwrap_or_default();
        let toml = format!(
            "backend = \"cassandra\"\n[cassandra]\ncontact_points = {points:?}\n{dc}keyspace = \"persistence_cli_test\"\nnamespace = {ns:?}\ncreate_schema = true\n"
        );
        targets.push(("cassandra", write_config(dir, "cassandra", &toml)));
    }
    targets
}

fn pid(i: u64) -> PersistenceId {
    PersistenceId::new(format!("off-{i}")).unwrap()
}

fn projection(name: &str) -> ProjectionId {
    ProjectionId::new(name, TAG).unwrap()
}

/// The ids' events interleaved (one write per id in turn, of 1 or 2 events), every fifth
/// event without the tag, so the source's tag stream mixes the ids while `copy` writes the
/// target id by id: the two tag streams are in different orders.
async fn seed(stores: &Stores) {
    let mut next = vec![1u64; IDS as usize];
    while next.iter().any(|&s| s <= EVENTS_PER_ID) {
        for i in 0..IDS {
            let from = next[i as usize];
            if from > EVENTS_PER_ID {
                continue;
            }
            let to = (from + i % 2).min(EVENTS_PER_ID);
            let events = (from..=to)
                .map(|s| {
                    let e = PersistentEvent::new(
                        pid(i),
                        s,
                        Payload::new("raw", "ev", format!("{i}-{s}").into_bytes()),
                    );
                    if s % 5 == 0 {
                        e
                    } else {
                        e.with_tags([TAG.to_string()])
                    }
                })
                .collect();
            stores
                .journal
                .write(AtomicWrite::new(events).unwrap())
                .await
                .unwrap();
            next[i as usize] = to + 1;
        }
    }
}

/// The (id, sequence number) of every envelope with `TAG` after `offset`, in order.
async fn tagged_after(stores: &Stores, offset: Offset) -> Vec<(String, u64)> {
    stores
        .read_journal
        .current_events_by_tag(TAG.to_string(), offset)
        .map_ok(|e| (e.event.persistence_id.to_string(), e.event.sequence_nr))
        .try_collect()
        .await
        .unwrap()
}

/// Sets the source's offsets: `mid` at the 90th tagged envelope, `none` cleared, `byid`
/// at event 17 of id 2. Returns `mid`'s offset.
async fn commit_offsets(source: &Stores) -> Offset {
    let envelopes: Vec<_> = source
        .read_journal
        .current_events_by_tag(TAG.to_string(), Offset::NoOffset)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(envelopes.len() as u64, IDS * EVENTS_PER_ID * 4 / 5);
    let x = envelopes[89].offset.clone();
    let offsets = &source.offsets;
    offsets
        .set_offset(&projection("mid"), x.clone())
        .await
        .unwrap();
    offsets
        .set_offset(&projection("none"), Offset::NoOffset)
        .await
        .unwrap();
    offsets
        .set_offset(
            &ProjectionId::new("byid", "off-2").unwrap(),
            Offset::Sequence(17),
        )
        .await
        .unwrap();
    x
}

fn copy_args<'a>(from: &'a str, to: &'a str) -> Vec<&'a str> {
    vec![
        "copy",
        "--json",
        "--from",
        from,
        "--to",
        to,
        "--offsets",
        "mid/offset-tag=tag:offset-tag",
        "--offsets",
        "none/offset-tag=tag:offset-tag",
        "--offsets",
        "byid/off-2=id:off-2",
        "--offsets",
        "never/offset-tag=tag:offset-tag",
    ]
}

/// Copies `from` → `to` with the offsets and checks the translation on the target: every
/// event after the source offset is delivered, and the duplicates are exactly the count
/// reported; then a second run writes nothing.
async fn copy_and_check(name: &str, source: &Stores, x: &Offset, from: &Path, to: &Path) {
    let started = std::time::Instant::now();
    let (from_s, to_s) = (from.to_str().unwrap(), to.to_str().unwrap());
    let lines = ok(&copy_args(from_s, to_s));
    let of = |p: &str| -> Value {
        lines
            .iter()
            .find(|v| v["projection"] == p)
            .unwrap_or_else(|| panic!("{name}: no line for {p}: {lines:?}"))
            .clone()
    };
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["mismatches"], 0, "{name}: {summary}");
    assert_eq!(summary["offsets"], 4, "{name}: {summary}");
    assert_eq!(summary["offsets_written"], 3, "{name}: {summary}");

    let target = open(to).await;
    let mid = of("mid/offset-tag");
    assert_eq!(mid["source_offset"], x.to_string(), "{name}: {mid}");
    assert_eq!(mid["written"], true, "{name}: {mid}");
    let stored = target
        .offsets
        .read_offset(&projection("mid"))
        .await
        .unwrap()
        .expect("the translated offset is stored");
    assert_eq!(mid["target_offset"], stored.offset.to_string(), "{name}");

    // What the projection still had to see in the source, and what the target delivers.
    let expected = tagged_after(source, x.clone()).await;
    let delivered = tagged_after(&target, stored.offset.clone()).await;
    let delivered_set: HashSet<_> = delivered.iter().cloned().collect();
    assert_eq!(delivered_set.len(), delivered.len(), "{name}: no repeats");
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !delivered_set.contains(*e))
        .collect();
    assert!(missing.is_empty(), "{name}: events skipped: {missing:?}");
    let again = (delivered.len() - expected.len()) as u64;
    assert_eq!(mid["redelivered"], again, "{name}: {mid}");
    assert_eq!(summary["redelivered"], again, "{name}: {summary}");
    assert!(
        !expected.is_empty() && (expected.len() as u64) < IDS * EVENTS_PER_ID * 4 / 5,
        "{name}: the offset is mid-stream"
    );

    // NoOffset stays NoOffset; a by-id offset is the same sequence number; a projection
    // without an offset in the source gets none in the target.
    let none = of("none/offset-tag");
    assert_eq!(none["target_offset"], "none", "{name}: {none}");
    assert_eq!(none["redelivered"], 0, "{name}: {none}");
    let byid = ProjectionId::new("byid", "off-2").unwrap();
    assert_eq!(
        target
            .offsets
            .read_offset(&byid)
            .await
            .unwrap()
            .unwrap()
            .offset,
        Offset::Sequence(17),
        "{name}"
    );
    assert_eq!(of("never/offset-tag")["written"], false, "{name}");
    assert!(target
        .offsets
        .read_offset(&projection("never"))
        .await
        .unwrap()
        .is_none());

    // Idempotent: a second run finds the same offsets stored and writes none.
    let again_lines = ok(&copy_args(from_s, to_s));
    let summary = &again_lines.last().unwrap()["summary"];
    assert_eq!(summary["events_copied"], 0, "{name}: {summary}");
    assert_eq!(summary["offsets_written"], 0, "{name}: {summary}");
    let stored_again = target
        .offsets
        .read_offset(&projection("mid"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored_again, stored, "{name}: unchanged, same version");
    eprintln!(
        "{name}: {} events re-delivered of {} after the offset; copied and checked in {:?}",
        again,
        expected.len(),
        started.elapsed()
    );
}

async fn seeded_source(dir: &Path) -> (PathBuf, Stores, Offset) {
    let path = sqlite_config(dir, "source");
    let source = open(&path).await;
    seed(&source).await;
    let x = commit_offsets(&source).await;
    (path, source, x)
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_offsets_sqlite_to_sqlite() {
    let dir = temp_dir();
    let (from, source, x) = seeded_source(&dir).await;
    let to = sqlite_config(&dir, "target");
    copy_and_check("sqlite", &source, &x, &from, &to).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_offsets_sqlite_to_every_server() {
    let dir = temp_dir();
    let targets = server_targets(&dir);
    if targets.is_empty() {
        return;
    }
    let (from, source, x) = seeded_source(&dir).await;
    for (name, to) in &targets {
        copy_and_check(name, &source, &x, &from, to).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_offsets_errors_name_the_projection_tag_and_offset() {
    let dir = temp_dir();
    let (from, source, _) = seeded_source(&dir).await;
    let to = sqlite_config(&dir, "target");
    let (from, to) = (from.to_str().unwrap(), to.to_str().unwrap());
    source
        .offsets
        .set_offset(&projection("stale"), Offset::Sequence(999_999))
        .await
        .unwrap();
    let fails = |spec: &str, code: i32, needles: &[&str]| {
        let out = run(&["copy", "--from", from, "--to", to, "--offsets", spec]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{spec}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{spec}: {needle:?} not in {stderr}"
            );
        }
    };
    // An offset the source's tag query never handed out (stale, foreign, another tag).
    fails(
        "stale/offset-tag=tag:offset-tag",
        1,
        &["stale/offset-tag", "\"offset-tag\"", "sequence:999999"],
    );
    fails(
        "mid/offset-tag=tag:another-tag",
        1,
        &["mid/offset-tag", "\"another-tag\"", "sequence:"],
    );
    // The same from a file (blank lines and `#` comments skipped).
    let file = dir.join("offsets.txt");
    std::fs::write(&file, "# projections\n\nstale/offset-tag=tag:offset-tag\n").unwrap();
    let out = run(&[
        "copy",
        "--from",
        from,
        "--to",
        to,
        "--offsets-file",
        file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stale/offset-tag"), "{stderr}");
    // A by-id offset past the id's events.
    fails(
        "stale/offset-tag=id:off-1",
        1,
        &["stale/offset-tag", "off-1", "up to 40"],
    );
    // Usage errors: exit code 2, before anything is opened.
    fails("no-key", 2, &["NAME/KEY=tag:TAG"]);
    fails("a/b=state-tag:carts", 2, &["not supported"]);
    fails("a/b=shard:7", 2, &["unknown source kind"]);
    let out = run(&[
        "copy",
        "--from",
        from,
        "--to",
        to,
        "--offsets",
        "a/b=tag:x",
        "--offsets",
        "a/b=tag:y",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Nothing was copied by the failed runs: the bad offsets stopped them first.
    let target = open(Path::new(to)).await;
    assert!(tagged_after(&target, Offset::NoOffset).await.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

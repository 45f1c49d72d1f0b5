//! Runs the built `persistence` binary: copy along SQLite → PostgreSQL → DynamoDB →
//! Cassandra (each server hop when its variable is set; with `CI=true` a missing server is
//! a failure) interrupted once and resumed, cleanup's dry run and execution, every
//! command's `--json`, and the exit codes of bad configurations.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use persistence_stores::{
    to_cbor, AtomicWrite, JournalExt, Payload, PersistenceId, PersistentEvent, SnapshotMetadata,
    SnapshotSelectionCriteria, Stores, Timestamp,
};
use serde_json::Value;

/// Ids copied along the backends, 100 events each: `PERSISTENCE_COPY_IDS`, 250 by default
/// (25,000 events, what CI runs; the copy hops take about a quarter of the 1,000-id run's
/// time), 1,000 with `scripts/test.sh --long` (100,000 events, the figure).
fn ids() -> usize {
    std::env::var("PERSISTENCE_COPY_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 8)
        .unwrap_or(250)
}
const EVENTS_PER_ID: u64 = 100;

mod support;

use support::{bin, json_lines, ok, open, run, sqlite_config, unique, write_config};

fn temp_dir() -> PathBuf {
    support::temp_dir("persistence-cli-test-")
}

fn pid(i: usize) -> PersistenceId {
    PersistenceId::new(format!("acct-{i}")).unwrap()
}

/// `ids` ids of `per_id` events each, in atomic writes of 20, tagged, some with metadata,
/// CBOR payloads, fixed timestamps; two snapshots on every tenth id.
async fn seed(stores: &Stores, ids: usize, per_id: u64) {
    for i in 0..ids {
        let id = pid(i);
        let mut seq = 1;
        while seq <= per_id {
            let events = (seq..=(seq + 19).min(per_id))
                .map(|s| {
                    let body =
                        serde_json::json!({ "account": i, "amount": s * 10, "note": "déposit" });
                    let mut e = PersistentEvent::new(
                        id.clone(),
                        s,
                        Payload::new("cbor", "bank.Deposited/v1", to_cbor(&body).unwrap()),
                    )
                    .with_writer_id(format!("writer-{}", i % 4))
                    .with_timestamp(Timestamp::from_millis(
                        1_700_000_000_000 + (i as i64) * 1000 + s as i64,
                    ))
                    .with_tags([format!("cli-tag-{}", i % 3)]);
                    if s % 7 == 0 {
                        e = e.with_metadata(Payload::new("raw", "meta", vec![s as u8, 0, 255]));
                    }
                    e.event_manifest = if s % 2 == 0 {
                        "adapter-m".into()
                    } else {
                        String::new()
                    };
                    e
                })
                .collect();
            stores
                .journal
                .write(AtomicWrite::new(events).unwrap())
                .await
                .unwrap();
            seq += 20;
        }
        if i % 10 == 0 {
            for at in [per_id / 2, per_id - 1] {
                let meta = SnapshotMetadata::new(id.clone(), at)
                    .with_timestamp(Timestamp::from_millis(1_700_000_500_000 + at as i64));
                stores
                    .snapshots
                    .save_snapshot(
                        meta,
                        Payload::new("cbor", "state/v1", to_cbor(&at).unwrap()),
                    )
                    .await
                    .unwrap();
            }
        }
    }
}

fn server(var: &str) -> Option<String> {
    persistence_tck::server_env(var)
}

/// The configuration files of the server hops whose servers are configured.
fn server_hops(dir: &Path) -> Vec<(String, PathBuf)> {
    let ns = unique("cli_");
    let mut hops = Vec::new();
    if let Some(url) = server("PERSISTENCE_POSTGRES_URL") {
        hops.push((
            "postgres".to_string(),
            write_config(
                dir,
                "postgres",
                &format!("backend = \"postgres\"\n[postgres]\nurl = {url:?}\nnamespace = {ns:?}\n"),
            ),
        ));
    }
    if let Some(endpoint) = server("PERSISTENCE_DYNAMODB_ENDPOINT") {
        hops.push((
            "dynamodb".to_string(),
            write_config(
                dir,
                "dynamodb",
                &format!(
                    "backend = \"dynamodb\"\n[dynamodb]\nendpoint = {endpoint:?}\nnamespace = {ns:?}\ncreate_schema = true\n"
                ),
            ),
        ));
    }
    if let Some(points) = server("PERSISTENCE_CASSANDRA_CONTACT_POINTS") {
        let points: Vec<String> = points.split(',').map(|p| p.trim().to_string()).collect();
        let dc = std::env::var("PERSISTENCE_CASSANDRA_LOCAL_DATACENTER")
            .map(|dc| format!("local_datacenter = {dc:?}\n"))
            .unwrap_or_default();
        hops.push((
            "cassandra".to_string(),
            write_config(
                dir,
                "cassandra",
                &format!(
                    "backend = \"cassandra\"\n[cassandra]\ncontact_points = {points:?}\n{dc}keyspace = \"persistence_cli_test\"\nnamespace = {ns:?}\ncreate_schema = true\n"
                ),
            ),
        ));
    }
    hops
}

/// Starts a copy, reads its JSON lines until `after` ids are copied, and kills it.
fn copy_interrupted(from: &Path, to: &Path, after: usize) {
    let (from, to) = (from.to_str().unwrap(), to.to_str().unwrap());
    interrupted(
        &[
            "copy",
            "--json",
            "--parallel",
            "2",
            "--batch",
            "10",
            "--from",
            from,
            "--to",
            to,
        ],
        "copied",
        after,
    );
}

/// Starts the binary with `args` (which print JSON lines), reads its lines until `after`
/// of them have the key `key`, and kills it.
fn interrupted(args: &[&str], key: &str, after: usize) {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get(key).is_some() {
            seen += 1;
            if seen == after {
                break;
            }
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "{args:?} was meant to be stopped part-way"
    );
}

async fn assert_same(source: &Stores, target: &Stores, what: &str) {
    for i in 0..ids() {
        let id = pid(i);
        let a = source.journal.replay_all(&id).await.unwrap();
        let b = target.journal.replay_all(&id).await.unwrap();
        assert_eq!(a.len() as u64, EVENTS_PER_ID, "{what}: {id}");
        assert_eq!(a, b, "{what}: events of {id}");
        let latest = SnapshotSelectionCriteria::latest();
        let sa = source.snapshots.load_snapshot(&id, latest).await.unwrap();
        let sb = target.snapshots.load_snapshot(&id, latest).await.unwrap();
        assert_eq!(sa, sb, "{what}: latest snapshot of {id}");
        assert_eq!(sa.is_some(), i % 10 == 0, "{what}: {id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_along_every_backend_interrupted_and_resumed() {
    let dir = temp_dir();
    let ids = ids();
    let origin_path = sqlite_config(&dir, "origin");
    let origin = open(&origin_path).await;
    seed(&origin, ids, EVENTS_PER_ID).await;

    let mut hops = server_hops(&dir);
    if hops.is_empty() {
        hops.push(("sqlite copy".to_string(), sqlite_config(&dir, "copy")));
    }
    let mut from = origin_path.clone();
    for (n, (name, to)) in hops.iter().enumerate() {
        let started = std::time::Instant::now();
        if n == 0 {
            copy_interrupted(&from, to, ids / 4);
        }
        let text = ok(&[
            "copy",
            "--json",
            "--from",
            from.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ]);
        let lines = json_lines(&text);
        let copied: Vec<&Value> = lines.iter().filter(|v| v.get("copied").is_some()).collect();
        assert_eq!(copied.len(), ids, "{name}");
        let summary = &lines.last().unwrap()["summary"];
        assert_eq!(summary["mismatches"], 0, "{name}: {summary}");
        assert_eq!(
            summary["events_verified"],
            (ids as u64) * EVENTS_PER_ID,
            "{name}"
        );
        if n == 0 {
            // The resumed run wrote only what the interrupted one had not.
            let resumed = copied
                .iter()
                .filter(|v| v["resumed_after"].as_u64().unwrap() > 0)
                .count();
            assert!(resumed >= ids / 4 - 2, "{name}: {resumed} ids resumed");
            assert!(
                summary["events_copied"].as_u64().unwrap() < (ids as u64) * EVENTS_PER_ID,
                "{name}: {summary}"
            );
        } else {
            assert_eq!(
                summary["events_copied"],
                (ids as u64) * EVENTS_PER_ID,
                "{name}"
            );
        }
        // Running it again copies nothing and still verifies.
        let again = json_lines(&ok(&[
            "copy",
            "--json",
            "--from",
            from.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ]));
        assert_eq!(
            again.last().unwrap()["summary"]["events_copied"],
            0,
            "{name}"
        );
        let target = open(to).await;
        assert_same(&origin, &target, name).await;
        eprintln!(
            "{name}: copied, resumed and verified in {:?}",
            started.elapsed()
        );
        from = to.clone();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_dry_run_changes_nothing_and_execute_removes_what_it_listed() {
    let dir = temp_dir();
    let config = sqlite_config(&dir, "cleanup");
    let stores = open(&config).await;
    seed(&stores, 4, 10).await; // ids 0..4 with 10 events; acct-0 has snapshots at 5 and 9
    let latest = SnapshotSelectionCriteria::latest();
    stores
        .snapshots
        .save_snapshot(SnapshotMetadata::new(pid(1), 4), Payload::raw(vec![1u8]))
        .await
        .unwrap();
    let ids_file = dir.join("ids.txt");
    std::fs::write(&ids_file, "# ids to clean\nacct-0\n\nacct-1\n").unwrap();
    let c = config.to_str().unwrap();
    let args = [
        "cleanup",
        "--config",
        c,
        "--ids",
        ids_file.to_str().unwrap(),
        "--events",
        "--snapshots",
        "--keep-latest-snapshot",
        "--json",
    ];
    let dry = json_lines(&ok(&args));
    assert_eq!(dry[0]["persistence_id"], "acct-0");
    assert_eq!(dry[0]["events_to"], 9);
    assert_eq!(dry[0]["events"], 9);
    assert_eq!(dry[0]["snapshots"], serde_json::json!([5]));
    assert_eq!(dry[1]["events_to"], 4);
    assert_eq!(dry[1]["snapshots"], serde_json::json!([]));
    assert_eq!(dry[2]["summary"]["executed"], false);
    // Nothing changed.
    for i in 0..2 {
        assert_eq!(stores.journal.replay_all(&pid(i)).await.unwrap().len(), 10);
    }
    let five = latest.with_max_sequence_nr(5);
    assert!(stores
        .snapshots
        .load_snapshot(&pid(0), five)
        .await
        .unwrap()
        .is_some());

    let mut exec_args = args.to_vec();
    exec_args.push("--execute");
    let done = json_lines(&ok(&exec_args));
    for (d, e) in dry.iter().zip(&done).take(2) {
        for key in ["persistence_id", "events_to", "events", "snapshots"] {
            assert_eq!(d[key], e[key], "{key}");
        }
        assert_eq!(e["executed"], true);
    }
    let left: Vec<u64> = stores
        .journal
        .replay_all(&pid(0))
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence_nr)
        .collect();
    assert_eq!(left, vec![10]);
    assert_eq!(stores.journal.replay_all(&pid(1)).await.unwrap().len(), 6);
    assert_eq!(
        stores.journal.replay_all(&pid(2)).await.unwrap().len(),
        10,
        "not listed"
    );
    assert!(stores
        .snapshots
        .load_snapshot(&pid(0), five)
        .await
        .unwrap()
        .is_none());
    let kept = stores
        .snapshots
        .load_snapshot(&pid(0), latest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.metadata.sequence_nr, 9);
    // Idempotent: a second run finds nothing to delete.
    let again = json_lines(&ok(&exec_args));
    assert_eq!(again.last().unwrap()["summary"]["events"], 0);
    assert_eq!(again.last().unwrap()["summary"]["snapshots"], 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_prints_json_lines() {
    let dir = temp_dir();
    let config = sqlite_config(&dir, "json");
    let stores = open(&config).await;
    seed(&stores, 3, 10).await;
    let c = config.to_str().unwrap();
    let check = |args: &[&str], at_least: usize| {
        let mut all = vec!["--config", c, "--json"];
        all.extend_from_slice(args);
        let lines = json_lines(&ok(&all));
        assert!(lines.len() >= at_least, "{args:?}: {lines:?}");
        lines
    };
    assert_eq!(check(&["ids"], 3).len(), 3);
    assert_eq!(check(&["ids", "--count"], 1)[0]["count"], 3);
    let events = check(&["events", "acct-0", "--from", "2", "--to", "8"], 7);
    assert_eq!(events.len(), 7);
    assert_eq!(events[0]["payload"]["encoding"], "json");
    assert_eq!(events[0]["payload"]["value"]["amount"], 20);
    assert_eq!(events[5]["metadata"]["value"], "BwD/");
    assert_eq!(check(&["snapshot", "acct-0"], 1)[0]["sequence_nr"], 9);
    check(&["snapshot", "acct-1"], 1);
    let tagged = check(&["tag", "cli-tag-0"], 10);
    let offset = tagged[4]["offset"].as_str().unwrap().to_string();
    assert_eq!(
        check(&["tag", "cli-tag-0", "--offset", &offset], 5).len(),
        5
    );
    check(&["offsets", "set", "proj", "key", "sequence:7"], 1);
    assert_eq!(
        check(&["offsets", "show", "proj", "key"], 1)[0]["offset"],
        "sequence:7"
    );
    check(&["offsets", "clear", "proj", "key"], 1);
    check(&["state", "get", "acct-0"], 1);
    check(&["delete", "acct-2", "--to", "3"], 1);
    check(&["cleanup", "acct-2", "--events"], 2);
    check(&["bench", "--events", "200", "--single-events", "32"], 5);
    let target = sqlite_config(&dir, "json-copy");
    let copy = json_lines(&ok(&[
        "copy",
        "--json",
        "--from",
        c,
        "--to",
        target.to_str().unwrap(),
    ]));
    assert!(copy.len() > 6);

    // tail: the stored events arrive, and the stream stays open until stopped.
    let mut child = bin()
        .args([
            "--config",
            c,
            "--json",
            "tail",
            "--id",
            "acct-1",
            "--offset",
            "sequence:8",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for seq in [9, 10] {
        let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(v["sequence_nr"], seq);
    }
    assert!(child.try_wait().unwrap().is_none(), "tail keeps running");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_configuration_and_arguments_have_their_exit_codes() {
    let dir = temp_dir();
    let bad = write_config(
        &dir,
        "bad",
        "backend = \"sqlite\"\n[sqlite]\nno_such_key = 1\n",
    );
    let out = run(&["--config", bad.to_str().unwrap(), "ids"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no_such_key") && err.contains("[sqlite]"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("Error {"),
        "{err}"
    );

    let unknown = write_config(&dir, "unknown", "backend = \"mongodb\"\n");
    let out = run(&["--config", unknown.to_str().unwrap(), "ids"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown backend"));

    let out = run(&[
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
        "ids",
    ]);
    assert_eq!(out.status.code(), Some(3));

    let unreachable = write_config(
        &dir,
        "unreachable",
        "backend = \"postgres\"\n[postgres]\nurl = \"postgres://u:p@127.0.0.1:1/db\"\nacquire_timeout_ms = 2000\n",
    );
    let out = run(&["--config", unreachable.to_str().unwrap(), "ids"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("postgres"), "{err}");
    // `schema check` probes the server's health first: unreachable, exit code 4.
    let out = run(&["--config", unreachable.to_str().unwrap(), "schema", "check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("postgres"), "{err}");

    let good = sqlite_config(&dir, "good");
    let out = run(&[
        "--config",
        good.to_str().unwrap(),
        "tag",
        "t",
        "--offset",
        "nonsense",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(run(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(run(&["tail"]).status.code(), Some(2));
    let _ = std::fs::remove_dir_all(dir);
}

/// The `tag` command's JSON lines of `tag`: (offset, id, sequence number) each.
fn tag_lines(config: &Path, tag: &str) -> Vec<(String, String, u64)> {
    json_lines(&ok(&[
        "--config",
        config.to_str().unwrap(),
        "--json",
        "tag",
        tag,
    ]))
    .iter()
    .map(|v| {
        (
            v["offset"].as_str().unwrap().to_string(),
            v["persistence_id"].as_str().unwrap().to_string(),
            v["sequence_nr"].as_u64().unwrap(),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_restores_a_truncated_index_on_every_backend() {
    let dir = temp_dir();
    let mut backends = vec![("sqlite".to_string(), sqlite_config(&dir, "rebuild"))];
    backends.extend(server_hops(&dir));
    for (name, config) in &backends {
        let stores = open(config).await;
        seed(&stores, 100, 5).await;
        let before: Vec<_> = (0..3)
            .map(|t| tag_lines(config, &format!("cli-tag-{t}")))
            .collect();
        assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 500, "{name}");
        let c = config.to_str().unwrap();
        let progress = dir.join(format!("{name}.progress"));
        let p = progress.to_str().unwrap();
        // A first run stopped part-way: truncated, then some ids rebuilt.
        let first = [
            "--config",
            c,
            "--json",
            "rebuild",
            "--truncate",
            "--progress",
            p,
            "--parallel",
            "1",
        ];
        interrupted(&first, "index_entries", 3);
        // The same command again goes on: it does not truncate again, and skips what the
        // progress file lists.
        let lines = json_lines(&ok(&first));
        assert!(lines.iter().all(|v| v.get("truncated").is_none()), "{name}");
        let summary = &lines.last().unwrap()["summary"];
        let (ids, skipped) = (
            summary["ids"].as_u64().unwrap(),
            summary["skipped"].as_u64().unwrap(),
        );
        assert!(skipped >= 3, "{name}: {summary}");
        assert_eq!(ids + skipped, 100, "{name}: {summary}");
        assert_eq!(summary["events"], ids * 5, "{name}: {summary}");
        assert_eq!(summary["index_entries"], ids * 5, "{name}: {summary}");
        // With ids, --truncate is refused (it would leave the others unindexed).
        assert_eq!(
            run(&["--config", c, "rebuild", "--truncate", "acct-1"])
                .status
                .code(),
            Some(2)
        );
        for (t, expected) in before.iter().enumerate() {
            assert_eq!(
                &tag_lines(config, &format!("cli-tag-{t}")),
                expected,
                "{name}: tag cli-tag-{t} after the rebuild, offsets included"
            );
        }
        let ids = json_lines(&ok(&["--config", c, "--json", "ids", "--count"]));
        assert_eq!(ids[0]["count"], 100, "{name}");
        eprintln!("{name}: truncated, rebuilt in two runs, tag queries as before");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_purge_lists_then_removes_every_trace() {
    let dir = temp_dir();
    let config = sqlite_config(&dir, "purge");
    let stores = open(&config).await;
    seed(&stores, 3, 10).await; // acct-0 has snapshots at 5 and 9
    let c = config.to_str().unwrap();
    let dry = json_lines(&ok(&[
        "--config", c, "--json", "cleanup", "--purge", "acct-0",
    ]));
    assert_eq!(dry[0]["events"], 10);
    assert_eq!(dry[0]["snapshots"], serde_json::json!([9, 5]));
    assert_eq!(dry[0]["executed"], false);
    assert_eq!(
        stores.journal.highest_sequence_nr(&pid(0)).await.unwrap(),
        10
    );
    let done = json_lines(&ok(&[
        "--config",
        c,
        "--json",
        "cleanup",
        "--purge",
        "acct-0",
        "--execute",
    ]));
    assert_eq!(done.last().unwrap()["summary"]["events"], 10);
    assert_eq!(
        stores.journal.highest_sequence_nr(&pid(0)).await.unwrap(),
        0
    );
    let latest = SnapshotSelectionCriteria::latest();
    assert!(stores
        .snapshots
        .load_snapshot(&pid(0), latest)
        .await
        .unwrap()
        .is_none());
    let ids = json_lines(&ok(&["--config", c, "--json", "ids"]));
    let listed: Vec<&str> = ids
        .iter()
        .map(|v| v["persistence_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(!listed.contains(&"acct-0"));
    // Refused combinations are usage errors.
    let refused = run(&["--config", c, "cleanup", "--purge", "--events", "acct-1"]);
    assert_eq!(refused.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(dir);
}

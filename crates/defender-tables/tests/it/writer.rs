//! The writer on a local root: layout, rotation, recovery after a crash, retention, compaction.

use std::path::Path;
use std::time::Duration;

use defender_tables::{Root, TableWriter, TablesConfig, TablesError};
use serde_json::Value;

use crate::common;

fn record(id: u64, day: &str) -> String {
    format!(
        r#"{{"time":"{day}T10:00:00.0000000Z","tenantId":"t","operationName":"Publish","category":"AdvancedHunting-DeviceProcessEvents","properties":{{"Timestamp":"{day}T09:59:59.1234567Z","ReportId":{id},"ActionType":"ProcessCreated","DeviceName":"ws-{}"}}}}"#,
        id % 7
    )
}

fn open(dir: &Path, config: TablesConfig) -> TableWriter {
    TableWriter::open(&Root::Local(dir.to_path_buf()), "w1", config)
        .unwrap()
        .0
}

fn ids(records: &[Value]) -> Vec<u64> {
    let mut ids: Vec<u64> = records
        .iter()
        .map(|r| r["properties"]["ReportId"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

fn names_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = common::published_files(dir)
        .into_iter()
        .map(|(_, p)| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn layout_rotation_and_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = open(
        dir.path(),
        TablesConfig {
            rotate_rows: 3000,
            ..TablesConfig::default()
        },
    );
    for id in 0..12_000 {
        let day = if id % 2 == 0 { "2024-05-14" } else { "2024-05-15" };
        w.append(record(id, day).as_bytes()).unwrap();
    }
    w.flush().unwrap();
    w.close().unwrap();
    let names = names_under(dir.path());
    assert!(
        names.iter().all(|n| n.starts_with("DeviceProcessEvents/day=2024-05-1")),
        "{names:?}"
    );
    // 6,000 rows a day at 3,000 rows a file: rotation checks at every batch of 4,096 rows, so
    // 4,096 + 1,904 (published at close).
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(ids(&common::read_all(dir.path())), (0..12_000).collect::<Vec<_>>());
    let staged: Vec<_> = walk(&dir.path().join("_staging"));
    assert!(staged.is_empty(), "a clean close leaves nothing staged: {staged:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

#[test]
fn flushed_records_survive_a_writer_that_never_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = open(dir.path(), TablesConfig::default());
    for id in 0..1000 {
        w.append(record(id, "2024-05-14").as_bytes()).unwrap();
    }
    w.flush().unwrap();
    for id in 1000..1100 {
        w.append(record(id, "2024-05-14").as_bytes()).unwrap();
    }
    // Dropped without close: as if the process died (the last 100 were never flushed).
    drop(w);
    assert!(common::published_files(dir.path()).is_empty(), "nothing published yet");
    let (w, recovery) =
        TableWriter::open(&Root::Local(dir.path().to_path_buf()), "w1", TablesConfig::default()).unwrap();
    assert_eq!(recovery.published.len(), 1);
    assert_eq!(recovery.records, 1000);
    w.close().unwrap();
    assert_eq!(ids(&common::read_all(dir.path())), (0..1000).collect::<Vec<_>>());
    // Opening again finds nothing more to do.
    let (_, recovery) =
        TableWriter::open(&Root::Local(dir.path().to_path_buf()), "w1", TablesConfig::default()).unwrap();
    assert_eq!(recovery, defender_tables::Recovery::default());
}

#[test]
fn age_rotation_publishes_on_maintain() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = open(
        dir.path(),
        TablesConfig {
            rotate_age: Duration::from_millis(50),
            ..TablesConfig::default()
        },
    );
    w.append(record(1, "2024-05-14").as_bytes()).unwrap();
    w.flush().unwrap();
    w.maintain().unwrap();
    assert!(common::published_files(dir.path()).is_empty());
    std::thread::sleep(Duration::from_millis(60));
    w.maintain().unwrap();
    assert_eq!(common::published_files(dir.path()).len(), 1);
}

#[test]
fn not_a_record_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = open(dir.path(), TablesConfig::default());
    for bad in [
        &b"{"[..],
        b"[]",
        b"{\"properties\":{}}",
        b"{\"category\":\"x\",\"properties\":[]}",
        b"\xff",
    ] {
        assert!(matches!(w.append(bad), Err(TablesError::NotARecord(_))), "{bad:?}");
    }
    w.close().unwrap();
    assert!(common::published_files(dir.path()).is_empty());
}

#[test]
fn retention_deletes_old_days_per_table() {
    let dir = tempfile::tempdir().unwrap();
    let today = chrono::Utc::now().date_naive();
    let old = (today - chrono::Days::new(40)).format("%Y-%m-%d").to_string();
    let recent = (today - chrono::Days::new(3)).format("%Y-%m-%d").to_string();
    let mut w = open(dir.path(), TablesConfig::default());
    for (id, day) in [(1, &old), (2, &recent)] {
        w.append(record(id, day).as_bytes()).unwrap();
    }
    w.close().unwrap();
    let mut retention = std::collections::BTreeMap::new();
    retention.insert("DeviceProcessEvents".to_owned(), 30);
    let mut w = open(
        dir.path(),
        TablesConfig {
            retention,
            compact_after: Duration::ZERO,
            ..TablesConfig::default()
        },
    );
    w.housekeeping().unwrap();
    assert_eq!(ids(&common::read_all(dir.path())), vec![2]);
    assert!(!dir.path().join(format!("DeviceProcessEvents/day={old}")).exists());
}

#[test]
fn compaction_merges_a_finished_day_into_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let small = TablesConfig {
        rotate_rows: 1,
        ..TablesConfig::default()
    };
    let mut w = open(dir.path(), small.clone());
    // A finished day in many small files (rotation checks every 4,096 rows or at close).
    for id in 0..6 {
        w.append(record(id, "2020-01-01").as_bytes()).unwrap();
        w.close().unwrap();
        w = open(dir.path(), small.clone());
    }
    w.append(record(100, &chrono::Utc::now().format("%Y-%m-%d").to_string()).as_bytes())
        .unwrap();
    w.close().unwrap();
    assert_eq!(names_under(dir.path()).len(), 7);
    let before = common::sorted_values(common::read_all(dir.path()));
    let mut w = open(
        dir.path(),
        TablesConfig {
            compact_after: Duration::from_secs(1),
            retention_days: 100_000,
            ..TablesConfig::default()
        },
    );
    w.housekeeping().unwrap();
    let names = names_under(dir.path());
    let old_day: Vec<_> = names.iter().filter(|n| n.contains("day=2020-01-01")).collect();
    assert_eq!(old_day.len(), 1, "{names:?}");
    assert!(old_day[0].contains("compacted"), "{names:?}");
    assert_eq!(names.len(), 2, "today's file is left alone: {names:?}");
    assert_eq!(common::sorted_values(common::read_all(dir.path())), before);
    assert!(walk(&dir.path().join("_staging")).is_empty());
}

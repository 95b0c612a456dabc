//! `Emulator::load_paths`: files of Defender data re-packed into envelopes, read back with the
//! real Rust client.

use std::path::{Path, PathBuf};

use crate::common::*;
use defender_emulator::EmulatorConfig;

const MAX: u64 = 4096;
/// Fixture records are pretty-printed (kept byte for byte): a larger limit, still small enough
/// that the size, not the record count, closes the bigger envelopes.
const FIXTURE_MAX: u64 = 16 * 1024;

/// Reads every event of every partition of `hub` (from the start) with the Rust client.
async fn read_all(emulator: &defender_emulator::Emulator, hub: &str) -> Vec<Vec<u8>> {
    let infos = emulator.partitions(hub).unwrap();
    let consumer = consumer(emulator, hub).await;
    let mut bodies = Vec::new();
    for info in &infos {
        if info.event_count == 0 {
            continue;
        }
        let receiver = open(&consumer, &info.id, from_earliest(300)).await;
        let events = receive_n(&receiver, usize::try_from(info.event_count).unwrap()).await;
        let seqs: Vec<i64> = events.iter().map(seq).collect();
        assert_eq!(seqs, (0..i64::try_from(events.len()).unwrap()).collect::<Vec<_>>());
        bodies.extend(events.iter().map(body));
        receiver.close().await.unwrap();
    }
    consumer.close().await.unwrap();
    bodies
}

/// Every record of a body, good or not, as raw text.
fn all_records(body: &[u8]) -> Vec<String> {
    defender_schema::split_body(body)
        .expect("an envelope")
        .into_iter()
        .map(|r| match r {
            Ok(r) => r.raw().to_owned(),
            Err(bad) => bad.raw.to_owned(),
        })
        .collect()
}

fn small_max(config: &mut EmulatorConfig) {
    config.max_message_size = MAX;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_files_of_every_shape() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<String> = (0..120).map(record).collect();
    // A message body with 50 records.
    std::fs::write(dir.path().join("body.json"), envelope(&records[..50])).unwrap();
    // NDJSON: 40 records, one a line, with a blank line and a line that is not JSON.
    let mut ndjson = records[50..90].join("\n");
    ndjson.push_str("\n\nthis is not json\n");
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(dir.path().join("nested/export.ndjson"), ndjson).unwrap();
    // A pretty JSON array of 30 records.
    let array = format!("[\n  {}\n]\n", records[90..].join(",\n  "));
    std::fs::write(dir.path().join("nested/array.json"), array).unwrap();
    // Ignored in a folder: not *.json / *.ndjson.
    std::fs::write(dir.path().join("notes.txt"), "not data").unwrap();

    let emulator = start_with(&[("loaded", 3)], small_max).await;
    let stats = emulator
        .load_paths("loaded", &[dir.path().to_owned()], 7)
        .expect("load");
    assert_eq!(stats.files, 3);
    assert_eq!(stats.records, 120);
    assert_eq!(stats.invalid_records, 0);
    assert_eq!(stats.skipped_lines, 1);

    let bodies = read_all(&emulator, "loaded").await;
    assert_eq!(bodies.len() as u64, stats.messages);
    let mut got = Vec::new();
    for body in &bodies {
        assert!(body.len() as u64 <= MAX, "a body of {} bytes", body.len());
        let in_body = all_records(body);
        assert!(
            !in_body.is_empty() && in_body.len() <= 7,
            "{} records in a body",
            in_body.len()
        );
        got.extend(in_body);
    }
    got.sort();
    let mut expected = records.clone();
    expected.sort();
    assert_eq!(got, expected, "every record exactly once, byte for byte");
    // Spread over the partitions.
    assert!(emulator.partitions("loaded").unwrap().iter().all(|p| p.event_count > 0));

    // A record that cannot fit in any message is an error, not a silent drop.
    let huge = dir.path().join("huge.json");
    std::fs::write(
        &huge,
        envelope(&[format!(
            r#"{{"category":"AdvancedHunting-X","properties":{{"Pad":"{}"}}}}"#,
            "x".repeat(5000)
        )]),
    )
    .unwrap();
    assert!(emulator.load_paths("loaded", &[huge], 7).is_err());
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_the_repository_fixtures() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let has_data = std::fs::read_dir(&fixtures).is_ok_and(|mut d| d.next().is_some());
    if !has_data {
        println!("skipped: no fixtures at {}", fixtures.display());
        return;
    }
    let emulator = start_with(&[("fixtures", 4)], |c| c.max_message_size = FIXTURE_MAX).await;
    let stats = emulator
        .load_paths("fixtures", &[PathBuf::from(&fixtures)], 100)
        .expect("load fixtures");
    println!("{stats:?}");
    assert!(stats.records > 0);
    let bodies = read_all(&emulator, "fixtures").await;
    assert_eq!(bodies.len() as u64, stats.messages);
    let mut records = 0u64;
    for body in &bodies {
        assert!(body.len() as u64 <= FIXTURE_MAX, "a body of {} bytes", body.len());
        records += all_records(body).len() as u64;
    }
    assert_eq!(records, stats.records, "record count preserved");
    emulator.shutdown().await;
}

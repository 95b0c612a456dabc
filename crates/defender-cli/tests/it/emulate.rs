//! `defender emulate`: the first line is a connection string the real client can read from.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use defender_eventhub::{Connection, Reader, ReaderConfig, Secret, StartFrom};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_loaded_fixtures() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("defender"))
        .current_dir(&repo)
        .args([
            "emulate",
            "--bind",
            "127.0.0.1:0",
            "--hub",
            "demo",
            "--partitions",
            "2",
            "--load",
            "fixtures/tables",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let cs = first.trim().to_owned();
    assert!(cs.starts_with("Endpoint=sb://127.0.0.1:"), "{cs}");
    assert!(
        cs.contains("EntityPath=demo") && cs.contains("UseDevelopmentEmulator=true"),
        "{cs}"
    );

    let mut config = ReaderConfig::new(Connection::ConnectionString(Secret::new(cs)));
    config.start = StartFrom::Earliest;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = Reader::start(config, None, tx).await.unwrap();
    let mut records = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // fixtures/tables holds 71 records (`defender validate fixtures/tables` says so too).
    while records < 71 {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("records in time")
            .unwrap();
        for e in &batch.messages {
            records += defender_schema::split_body(e.body.as_deref().unwrap()).unwrap().len();
        }
    }
    assert_eq!(records, 71);
    reader.shutdown().await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_table_hubs_hold_each_table_s_records() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("defender"))
        .current_dir(&repo)
        .args([
            "emulate",
            "--bind",
            "127.0.0.1:0",
            "--hubs",
            "per-table",
            "--partitions",
            "1",
            "--load",
            "fixtures/tables",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let cs = first.trim().to_owned();
    assert!(
        !cs.contains("EntityPath") && cs.contains("UseDevelopmentEmulator=true"),
        "{cs}"
    );
    // fixtures/tables/DeviceProcessEvents.json holds 3 records; they are alone in their hub.
    let mut config = ReaderConfig::new(Connection::ConnectionString(Secret::new(cs)));
    config.hub = Some("insights-logs-advancedhunting-deviceprocessevents".to_owned());
    config.start = StartFrom::Earliest;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = Reader::start(config, None, tx).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let mut tables = std::collections::BTreeSet::new();
    let mut records = 0;
    for e in &batch.messages {
        for r in defender_schema::split_body(e.body.as_deref().unwrap()).unwrap() {
            tables.insert(r.unwrap().table_name().to_owned());
            records += 1;
        }
    }
    assert_eq!(tables.into_iter().collect::<Vec<_>>(), ["DeviceProcessEvents"]);
    let expected = std::fs::read_to_string(repo.join("fixtures/tables/DeviceProcessEvents.json")).unwrap();
    assert!(records > 0 && expected.matches("AdvancedHunting-DeviceProcessEvents").count() == records);
    reader.shutdown().await;
    child.kill().unwrap();
    child.wait().unwrap();
}

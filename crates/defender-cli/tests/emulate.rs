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
        for e in &batch.events {
            records += defender_schema::split_body(e.body.as_deref().unwrap()).unwrap().len();
        }
    }
    assert_eq!(records, 71);
    reader.shutdown().await;
    child.kill().unwrap();
    child.wait().unwrap();
}

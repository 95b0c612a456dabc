//! `defender backfill` against Azurite: reads exactly the hour blobs of a past range, once.

use std::process::Command;

use defender_eventhub::blob::{BlobClient, Condition, SharedKeyCredential, StorageCredential};
use defender_testkit::Azurite;

const PREFIX: &str = "insights-logs-advancedhunting-";

fn record(table: &str, hour: u32, n: u32) -> String {
    format!(
        r#"{{"time":"2026-11-20T{hour:02}:10:00.0000000Z","category":"AdvancedHunting-{table}","properties":{{"Seq":{n},"Hour":{hour}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_reads_its_range_once() {
    let azurite = Azurite::start().await.unwrap();
    let tables = ["DeviceProcessEvents", "EmailEvents"];
    for t in tables {
        let container = format!("{PREFIX}{}", t.to_lowercase());
        azurite.create_container(&container).await.unwrap();
        let client = BlobClient::for_account(
            &azurite.blob_endpoint(),
            &container,
            StorageCredential::SharedKey(SharedKeyCredential::development()),
        )
        .unwrap();
        for hour in [8u32, 9, 10, 11] {
            let name = format!("tenantId=5f2b6a1e/y=2026/m=11/d=20/h={hour:02}/m=00/PT1H.json");
            client
                .create_append_blob(&name, &[], &Condition::IfNotExists)
                .await
                .unwrap();
            let lines: String = (0..50).map(|n| record(t, hour, n) + "\n").collect();
            client.append_block(&name, lines.into_bytes()).await.unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("f.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[[sources]]
kind = "storage"
account_url = "{endpoint}"
account_name = "devstoreaccount1"
shared_key = "{key}"
tables = ["DeviceProcessEvents", "EmailEvents"]
[[sinks]]
kind = "files"
name = "archive"
dir = "{archive}"
flush_interval = "100ms"
[[sinks]]
kind = "stdout"
"#,
            state = dir.path().join("state").display(),
            endpoint = azurite.blob_endpoint(),
            key = azurite.account_key(),
            archive = dir.path().join("archive").display(),
        ),
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_defender"))
            .args(["backfill", "--config"])
            .arg(&config)
            .args([
                "--from",
                "2026-11-20T09:30:00Z",
                "--to",
                "2026-11-20T11:00:00Z",
                "--sink",
                "archive",
            ])
            .output()
            .unwrap()
    };
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // Hours 09 and 10 of both tables: 200 records; 08 is before the range, 11 at its end.
    assert!(text.contains("backfilled 200 records"), "{text}");
    assert!(text.contains("archive: 200 delivered"), "{text}");
    let mut hours = std::collections::BTreeMap::<u64, usize>::new();
    for t in tables {
        let day = dir.path().join("archive").join(t).join("2026-11-20");
        for seg in std::fs::read_dir(day).unwrap() {
            let data = zstd::stream::decode_all(&std::fs::read(seg.unwrap().path()).unwrap()[..]).unwrap();
            for line in String::from_utf8(data).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                *hours.entry(v["properties"]["Hour"].as_u64().unwrap()).or_default() += 1;
            }
        }
    }
    assert_eq!(hours, [(9, 100), (10, 100)].into_iter().collect());
    // Run again: its checkpoints say it is done.
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("backfilled 0 records"), "{text}");
    // Bad ranges are usage errors.
    let out = Command::new(env!("CARGO_BIN_EXE_defender"))
        .args(["backfill", "--config"])
        .arg(&config)
        .args(["--from", "2026-11-20T09:30:00Z", "--to", "2026-11-19T00:00:00Z"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

//! Storage-account backfill throughput: hour append blobs on Azurite (one container per table,
//! one record per line), read by the release forwarder's `storage` source into the files sink.
//!
//! `cargo bench -p defender-forwarder --bench storage` (1,000,000 records of ~1 KiB;
//! `BENCH_RECORDS=N` to change).
#![allow(clippy::cast_precision_loss)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use defender_eventhub::blob::{BlobClient, Condition, SharedKeyCredential, StorageCredential};
use defender_testkit::Azurite;

const TABLES: &[&str] = &[
    "DeviceProcessEvents",
    "DeviceNetworkEvents",
    "DeviceFileEvents",
    "EmailEvents",
    "IdentityLogonEvents",
];

fn record(table: &str, n: u64, size: usize) -> String {
    let head = format!(
        r#"{{"time":"2026-11-20T09:31:07.4473310Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","operationName":"Publish","category":"AdvancedHunting-{table}","properties":{{"DeviceName":"ws-{n:07}.example.com","ReportId":{n},"Pad":""#
    );
    let pad = size.saturating_sub(head.len() + 3);
    format!("{head}{}\"}}}}", "p".repeat(pad))
}

#[tokio::main]
async fn main() {
    let total = common::env_num("BENCH_RECORDS").unwrap_or(1_000_000);
    let azurite = Azurite::start().await.expect("Azurite (npm) is needed");
    let per_table = total / TABLES.len() as u64;
    let hours = 4u64;
    let mut bytes = 0u64;
    let upload = Instant::now();
    for (t, table) in TABLES.iter().enumerate() {
        let container = format!("insights-logs-advancedhunting-{}", table.to_lowercase());
        azurite.create_container(&container).await.unwrap();
        let client = BlobClient::for_account(
            &azurite.blob_endpoint(),
            &container,
            StorageCredential::SharedKey(SharedKeyCredential::development()),
        )
        .unwrap();
        for h in 0..hours {
            let name = format!("tenantId=5f2b6a1e/y=2026/m=11/d=20/h={h:02}/m=00/PT1H.json");
            client
                .create_append_blob(&name, &[], &Condition::IfNotExists)
                .await
                .unwrap();
            let first = t as u64 * per_table + h * per_table / hours;
            let last = t as u64 * per_table + (h + 1) * per_table / hours;
            let mut block = Vec::with_capacity(4 << 20);
            for n in first..last {
                let line = record(table, n, 1024);
                if block.len() + line.len() + 1 > 4 << 20 {
                    bytes += block.len() as u64;
                    client.append_block(&name, std::mem::take(&mut block)).await.unwrap();
                }
                block.extend_from_slice(line.as_bytes());
                block.push(b'\n');
            }
            bytes += block.len() as u64;
            client.append_block(&name, block).await.unwrap();
        }
    }
    let total = per_table * TABLES.len() as u64;
    println!(
        "{total} records of ~1 KiB ({:.0} MB) in {} tables x {hours} hour blobs on Azurite (uploaded in {:.0} s)\n",
        bytes as f64 / 1e6,
        TABLES.len(),
        upload.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("storage.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[sources]]\nkind = \"storage\"\naccount_url = \"{}\"\naccount_name = \"devstoreaccount1\"\nshared_key = \"{}\"\ntables = [{}]\n[[sinks]]\nkind = \"files\"\ndir = \"{}\"\n",
            dir.path().join("state").display(),
            azurite.blob_endpoint(),
            azurite.account_key(),
            TABLES.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", "),
            dir.path().join("archive").display(),
        ),
    )
    .unwrap();
    let metrics = "127.0.0.1:19466";
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_defender-forwarder"))
        .arg("--config")
        .arg(&config)
        .args(["--metrics", metrics])
        .env("DEFENDER_LOG", common::log_level())
        .stdout(Stdio::null())
        .stderr(common::log_file("storage"))
        .spawn()
        .unwrap();
    let m = common::measure(&mut child, started, total, None, Duration::from_secs(900), || {
        common::scrape(metrics, "files")
    })
    .await;
    common::terminate(&mut child);
    println!("| source -> sink | records/s | MB/s | peak RSS (MiB) |\n|---|---:|---:|---:|");
    println!(
        "| storage (Azurite) -> files | {:.0} | {:.1} | {:.0} |",
        total as f64 / m.seconds,
        bytes as f64 / m.seconds / 1e6,
        m.peak_rss_mib
    );
}

//! End-to-end throughput of the forwarder binary: the emulator (in this process) preloaded with
//! ~1 KiB records, a local intake that acknowledges at once, and the files sink; reports
//! records/s, MB/s, CPU seconds and the forwarder's peak RSS.
//!
//! `cargo bench -p defender-forwarder --bench forward` (1,000,000 records; `BENCH_RECORDS=N` to change).
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{KEY, Measured};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_testkit::Intake;

async fn run(emulator: &Emulator, dir: &Path, sink_toml: &str, sink: &str, total: u64, port: u16) -> Measured {
    let metrics = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = common::spawn_forwarder(
        dir,
        sink,
        &emulator.connection_string("defender"),
        "",
        "",
        sink_toml,
        &metrics,
    );
    let measured = common::measure(&mut child, started, total, None, Duration::from_secs(600), || {
        common::scrape(&metrics, sink)
    })
    .await;
    common::terminate(&mut child);
    measured
}

#[tokio::main]
async fn main() {
    let total = common::env_num("BENCH_RECORDS").unwrap_or(1_000_000);
    let emulator = Emulator::start(EmulatorConfig {
        hubs: vec![HubConfig::new("defender", 4)],
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let bytes = common::preload(&emulator, "defender", 4, total, 1024, 100);
    let intake = Intake::start(KEY).await.unwrap();
    intake.set_store_events(false);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "{total} records of ~1 KiB ({:.0} MB) in 4 partitions, 100 per message\n",
        bytes as f64 / 1e6
    );
    println!("| sink | records/s | MB/s | CPU s | CPU s per 1M records | peak RSS (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let sekoia = format!(
        "[[sinks]]\nkind = \"sekoia\"\nurl = \"{}\"\nintake_key = \"{KEY}\"\n",
        intake.url()
    );
    let files = format!(
        "[[sinks]]\nkind = \"files\"\ndir = \"{}\"\n",
        dir.path().join("archive").display()
    );
    for (name, toml, port) in [("sekoia", sekoia, 19_464u16), ("files", files, 19_465u16)] {
        let r = run(&emulator, dir.path(), &toml, name, total, port).await;
        let per_million = r.cpu_s / (total as f64 / 1e6);
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {per_million:.1} | {:.0} |",
            total as f64 / r.seconds,
            bytes as f64 / r.seconds / 1e6,
            r.cpu_s,
            r.peak_rss_mib
        );
    }
    println!(
        "\nintake: {} requests, {} gzip",
        intake.requests(),
        intake.gzip_requests()
    );
}

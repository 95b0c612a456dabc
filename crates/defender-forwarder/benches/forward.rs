//! End-to-end throughput of the forwarder binary: the emulator (in this process) preloaded with
//! ~1 KiB records, a local intake that acknowledges at once, and the files sink; reports
//! records/s, MB/s, CPU seconds and the forwarder's peak RSS.
//!
//! `cargo bench -p defender-forwarder --bench forward` (1,000,000 records; `BENCH_RECORDS=N` to change).
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_testkit::Intake;

const KEY: &str = "bench-key";

fn record(n: u64, size: usize) -> String {
    let head = format!(
        r#"{{"time":"2026-11-23T09:31:07.4473310Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","operationName":"Publish","category":"AdvancedHunting-DeviceProcessEvents","properties":{{"Timestamp":"2026-11-23T09:31:00.0000000Z","DeviceName":"ws-{n:07}.example.com","ActionType":"ProcessCreated","FileName":"powershell.exe","ReportId":{n},"ProcessCommandLine":""#
    );
    let pad = size.saturating_sub(head.len() + 3);
    let filler: String = (0..pad)
        .map(|i| char::from(b'a' + u8::try_from((n as usize + i) % 26).unwrap()))
        .collect();
    format!("{head}{filler}\"}}}}")
}

struct Run {
    records_per_s: f64,
    mb_per_s: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
}

fn proc_stats(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?;
    Some((hwm_kib / 1024.0, ticks / 100.0))
}

fn scrape(addr: &str, sink: &str) -> u64 {
    let Ok(mut s) = TcpStream::connect(addr) else { return 0 };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let prefix = format!("defender_records_out_total{{sink=\"{sink}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn run(emulator: &Emulator, dir: &Path, sink_toml: &str, sink: &str, total: u64, bytes: u64, port: u16) -> Run {
    let state = dir.join(format!("state-{sink}"));
    let config = dir.join(format!("{sink}.toml"));
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n{}\n[[sources]]\nkind = \"eventhub\"\nconnection_string = \"{}\"\n{}\n{sink_toml}\n",
            state.display(),
            std::env::var("BENCH_FORWARDER_TOML").unwrap_or_default(),
            emulator.connection_string("defender"),
            std::env::var("BENCH_SOURCE_TOML").unwrap_or_default(),
        ),
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_defender-forwarder"))
        .arg("--config")
        .arg(&config)
        .args(["--metrics", &metrics])
        .env("DEFENDER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut last = (0.0, 0.0);
    loop {
        if let Some(s) = proc_stats(pid) {
            last = s;
        }
        if scrape(&metrics, sink) >= total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "benchmark run took over 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(s) = proc_stats(pid) {
        last = s;
    }
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    #[allow(clippy::cast_precision_loss)]
    Run {
        records_per_s: total as f64 / elapsed,
        mb_per_s: bytes as f64 / elapsed / 1e6,
        cpu_s: last.1,
        peak_rss_mib: last.0,
    }
}

#[tokio::main]
async fn main() {
    let total: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let per_body = 100u64;
    let emulator = Emulator::start(EmulatorConfig {
        hubs: vec![HubConfig::new("defender", 4)],
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let mut bytes = 0u64;
    for (p, first) in (0..total).step_by(usize::try_from(per_body).unwrap()).enumerate() {
        let recs: Vec<String> = (first..(first + per_body).min(total))
            .map(|n| record(n, 1024))
            .collect();
        bytes += recs.iter().map(|r| r.len() as u64).sum::<u64>();
        let body = format!(r#"{{"records":[{}]}}"#, recs.join(",")).into_bytes();
        emulator
            .append("defender", Some(&(p % 4).to_string()), vec![body])
            .unwrap();
    }
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
        let r = run(&emulator, dir.path(), &toml, name, total, bytes, port).await;
        #[allow(clippy::cast_precision_loss)]
        let per_million = r.cpu_s / (total as f64 / 1e6);
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {per_million:.1} | {:.0} |",
            r.records_per_s, r.mb_per_s, r.cpu_s, r.peak_rss_mib
        );
    }
    println!(
        "\nintake: {} requests, {} gzip",
        intake.requests(),
        intake.gzip_requests()
    );
}

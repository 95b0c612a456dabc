//! The `tables` sink end to end: the emulator (in this process) preloaded with ~1 KiB
//! `DeviceProcessEvents` records of realistic variety, read by the release forwarder into the
//! tables sink, then the same records into the files sink (zstd NDJSON) for comparison. Reports
//! records/s, CPU, peak RSS, bytes on disk of both, and (with `DEFENDER_BENCH_PYTHON` naming a
//! Python with `duckdb`) `DuckDB` counting by `ActionType` over each.
//!
//! `cargo bench -p defender-forwarder --bench tables` (1,000,000 records; `BENCH_RECORDS=N`).
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Measured;
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};

const ACTIONS: &[&str] = &[
    "ProcessCreated",
    "OpenProcessApiCall",
    "CreateRemoteThreadApiCall",
    "ProcessCreatedUsingWmiQuery",
];
const FILES: &[&str] = &[
    "powershell.exe",
    "cmd.exe",
    "rundll32.exe",
    "svchost.exe",
    "chrome.exe",
    "msedge.exe",
    "conhost.exe",
    "wmic.exe",
];

/// A deterministic pseudo-random number for `n` and `salt`.
fn mix(n: u64, salt: u64) -> u64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

fn hex(n: u64, salt: u64, len: usize) -> String {
    let mut out = String::with_capacity(len + 16);
    for i in 0..len.div_ceil(16) {
        let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{:016x}", mix(n, salt + i as u64)));
    }
    out.truncate(len);
    out
}

/// Record `n`: a `DeviceProcessEvents` row of about 1 KiB with the variety real ones have (a
/// few hundred devices, a handful of actions and binaries, unique hashes and ids, 7-digit
/// timestamps over a day).
fn record(n: u64) -> String {
    let device = mix(n, 1) % 300;
    let secs = n % 86_400;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let file = FILES[(mix(n, 2) % FILES.len() as u64) as usize];
    let parent = FILES[(mix(n, 3) % FILES.len() as u64) as usize];
    format!(
        concat!(
            r#"{{"time":"2026-11-23T{h:02}:{m:02}:{s:02}.{f:07}Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","operationName":"Publish","#,
            r#""category":"AdvancedHunting-DeviceProcessEvents","properties":{{"Timestamp":"2026-11-23T{h:02}:{m:02}:{s:02}.{f:07}Z","#,
            r#""DeviceId":"{dev_id}","DeviceName":"ws-{device:04}.corp.example.com","ActionType":"{action}","FileName":"{file}","#,
            r#""FolderPath":"C:\\Windows\\System32\\{file}","SHA1":"{sha1}","SHA256":"{sha256}","MD5":"{md5}","FileSize":{size},"#,
            r#""ProcessId":{pid},"ProcessCommandLine":"{file} -NoProfile -ExecutionPolicy Bypass -File C:\\Users\\user{user}\\AppData\\Local\\Temp\\{tmp}.ps1","#,
            r#""ProcessIntegrityLevel":"Medium","ProcessTokenElevation":"TokenElevationTypeDefault","AccountDomain":"corp","#,
            r#""AccountName":"user{user}","AccountSid":"S-1-5-21-1004336348-1177238915-682003330-{rid}","#,
            r#""InitiatingProcessFileName":"{parent}","InitiatingProcessId":{ppid},"InitiatingProcessCommandLine":"\"{parent}\" --type=renderer","#,
            r#""InitiatingProcessSHA256":"{psha}","ReportId":{n},"AdditionalFields":"{{\"ProcessStartKey\":{key}}}"}}}}"#
        ),
        h = h,
        m = m,
        s = s,
        f = mix(n, 4) % 10_000_000,
        dev_id = hex(device, 5, 40),
        device = device,
        action = ACTIONS[(mix(n, 6) % ACTIONS.len() as u64) as usize],
        file = file,
        sha1 = hex(n, 7, 40),
        sha256 = hex(n, 8, 64),
        md5 = hex(n, 9, 32),
        size = mix(n, 10) % 5_000_000,
        pid = mix(n, 11) % 60_000,
        user = mix(n, 12) % 2000,
        tmp = hex(n, 13, 12),
        rid = 1000 + mix(n, 14) % 50_000,
        parent = parent,
        ppid = mix(n, 15) % 60_000,
        psha = hex(mix(n, 3) % FILES.len() as u64, 16, 64),
        n = n,
        key = mix(n, 17) % 100_000_000_000,
    )
}

fn preload(emulator: &Emulator, total: u64) -> u64 {
    let mut bytes = 0;
    for (i, first) in (0..total).step_by(100).enumerate() {
        let recs: Vec<String> = (first..(first + 100).min(total)).map(record).collect();
        bytes += recs.iter().map(|r| r.len() as u64).sum::<u64>();
        let body = format!(r#"{{"records":[{}]}}"#, recs.join(",")).into_bytes();
        emulator
            .append("defender", Some(&(i % 4).to_string()), vec![body])
            .unwrap();
    }
    bytes
}

async fn run(emulator: &Emulator, dir: &Path, name: &str, sink_toml: &str, total: u64) -> Measured {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let started = Instant::now();
    let mut child = common::spawn_forwarder(
        dir,
        name,
        &emulator.connection_string("defender"),
        "",
        "",
        sink_toml,
        &metrics,
    );
    let measured = common::measure(&mut child, started, total, None, Duration::from_secs(1800), || {
        common::scrape(&metrics, name)
    })
    .await;
    // SIGTERM: the sinks close, the tables writer publishes what is staged.
    common::terminate(&mut child);
    measured
}

/// Bytes of the files under `dir` whose name ends with `suffix`.
fn bytes_under(dir: &Path, suffix: &str) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

/// `DuckDB` counting `DeviceProcessEvents` by `ActionType` over the Parquet tables and over the
/// NDJSON.zst archive, each query timed inside Python (best of 3).
fn duckdb(tables: &Path, archive: &Path) -> Option<String> {
    let python = std::env::var("DEFENDER_BENCH_PYTHON").ok()?;
    let script = format!(
        r#"
import duckdb, time
def best(q):
    out = None; t = 1e9
    for _ in range(3):
        s = time.perf_counter(); r = duckdb.sql(q).fetchall(); t = min(t, time.perf_counter() - s); out = r
    return t, out
tp, rp = best("SELECT ActionType, count(*) FROM read_parquet('{t}/DeviceProcessEvents/*/*.parquet', hive_partitioning=true) GROUP BY 1 ORDER BY 1")
ta, ra = best("SELECT properties.ActionType, count(*) FROM read_json('{a}/DeviceProcessEvents/*/*.ndjson.zst', compression='zstd', format='newline_delimited', maximum_object_size=1048576) GROUP BY 1 ORDER BY 1")
print(f"| DuckDB {{duckdb.__version__}}, count by ActionType | {{tp:.3f}} s over Parquet | {{ta:.3f}} s over NDJSON.zst | {{ta/tp:.0f}}x | same answer: {{rp == ra}} |")
"#,
        t = tables.display(),
        a = archive.display()
    );
    let out = Command::new(python).args(["-c", &script]).output().ok()?;
    Some(if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        format!("duckdb failed: {}", String::from_utf8_lossy(&out.stderr).trim())
    })
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
    let bytes = preload(&emulator, total);
    let dir = tempfile::tempdir().unwrap();
    let (tables, archive) = (dir.path().join("tables"), dir.path().join("archive"));
    println!(
        "{total} DeviceProcessEvents records, {:.0} bytes each on average, in 4 partitions\n",
        bytes as f64 / total as f64
    );
    println!("| sink | records/s | CPU s per 1M records | peak RSS (MiB) | bytes on disk |");
    println!("|---|---:|---:|---:|---:|");
    let mut on_disk = Vec::new();
    for (name, toml, dir_of, suffix) in [
        (
            "tables",
            format!("[[sinks]]\nkind = \"tables\"\ndir = \"{}\"\n", tables.display()),
            &tables,
            ".parquet",
        ),
        (
            "files",
            format!("[[sinks]]\nkind = \"files\"\ndir = \"{}\"\n", archive.display()),
            &archive,
            ".ndjson.zst",
        ),
    ] {
        let r = run(&emulator, dir.path(), name, &toml, total).await;
        let size = bytes_under(dir_of, suffix);
        on_disk.push(size);
        println!(
            "| {name} | {:.0} | {:.1} | {:.0} | {size} |",
            total as f64 / r.seconds,
            r.cpu_s / (total as f64 / 1e6),
            r.peak_rss_mib
        );
    }
    println!(
        "\nParquet / NDJSON.zst bytes: {:.3}",
        on_disk[0] as f64 / on_disk[1] as f64
    );
    if let Some(line) = duckdb(&tables, &archive) {
        println!("\n{line}");
    }
}

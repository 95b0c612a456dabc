//! `cargo bench -p defender-tables --bench write`: 1,000,000 records of about 1 KiB through a
//! `TableWriter` on local disk (flushed every 2,000 records, as a sink under the forwarder's
//! in-flight budget would), then the same records as zstd NDJSON (level 3, as the files archive
//! writes). Reports records/s, peak RSS, bytes on disk of both, and, when
//! `DEFENDER_TABLES_PYTHON` names a Python with duckdb, DuckDB counting DeviceProcessEvents by
//! ActionType over each.
//!
//! `BENCH_RECORDS=n` changes the count; `BENCH_WRITER_ONLY=1` runs the writer alone (for
//! profiling). Output under `target/bench/tables/`.
#![allow(clippy::doc_markdown)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use defender_tables::{Root, TableWriter, TablesConfig};

const ACTIONS: [&str; 6] = [
    "ProcessCreated",
    "ProcessCreated",
    "ProcessCreated",
    "OpenProcessApiCall",
    "CreateRemoteThreadApiCall",
    "ProcessCreatedUsingWmiQuery",
];
const FILES: [&str; 8] = [
    "powershell.exe",
    "cmd.exe",
    "svchost.exe",
    "chrome.exe",
    "msedge.exe",
    "conhost.exe",
    "rundll32.exe",
    "python.exe",
];

/// A small deterministic generator (no dependency for the bench's input).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        while s.len() < len {
            let _ = write!(s, "{:016x}", self.next());
        }
        s.truncate(len);
        s
    }
}

/// One DeviceProcessEvents record of about 1 KiB, in the shape Defender streams.
fn record(rng: &mut Rng, i: u64) -> String {
    let second = i / 12; // about 12 records a second: a million span some 23 hours
    let (h, m, s) = (second / 3600 % 24, second / 60 % 60, second % 60);
    let ticks = rng.below(10_000_000);
    let ts = format!("2024-05-14T{h:02}:{m:02}:{s:02}.{ticks:07}Z");
    let device = rng.below(300);
    let action = ACTIONS[usize::try_from(rng.below(6)).unwrap()];
    let file = FILES[usize::try_from(rng.below(8)).unwrap()];
    let parent = FILES[usize::try_from(rng.below(8)).unwrap()];
    let pid = 1000 + rng.below(60_000);
    let user = rng.below(500);
    let (sha1, sha256, md5) = (rng.hex(40), rng.hex(64), rng.hex(32));
    let arg = rng.hex(12);
    format!(
        concat!(
            r#"{{"time":"{ts}","tenantId":"7c4b2f9e-3d1a-4e8b-9f6c-2a5d8e1b0c73","operationName":"Publish","#,
            r#""category":"AdvancedHunting-DeviceProcessEvents","properties":{{"#,
            r#""Timestamp":"{ts}","DeviceId":"{did}","DeviceName":"ws-{device:04}.corp.contoso.com","#,
            r#""ActionType":"{action}","FileName":"{file}","FolderPath":"C:\\Windows\\System32\\{file}","#,
            r#""SHA1":"{sha1}","SHA256":"{sha256}","MD5":"{md5}","FileSize":{size},"#,
            r#""ProcessId":{pid},"ProcessCommandLine":"{file} -File C:\\Temp\\{arg}.ps1","#,
            r#""ProcessIntegrityLevel":"Medium","ProcessTokenElevation":"TokenElevationTypeDefault","#,
            r#""ProcessCreationTime":"{ts}","AccountDomain":"contoso","AccountName":"user{user}","#,
            r#""LogonId":{logon},"#,
            r#""InitiatingProcessAccountDomain":"contoso","InitiatingProcessAccountName":"user{user}","#,
            r#""InitiatingProcessFileName":"{parent}","InitiatingProcessId":{ppid},"#,
            r#""InitiatingProcessCreationTime":"{ts}","#,
            r#""InitiatingProcessParentId":{gpid},"#,
            r#""InitiatingProcessParentFileName":"explorer.exe","ReportId":{report},"AppGuardContainerId":"","#,
            r#""AdditionalFields":null}}}}"#
        ),
        ts = ts,
        device = device,
        action = action,
        file = file,
        parent = parent,
        sha1 = sha1,
        sha256 = sha256,
        md5 = md5,
        pid = pid,
        arg = arg,
        user = user,
        did = format!("{device:040x}"),
        size = 10_000 + rng.below(5_000_000),
        logon = rng.below(1 << 40),
        ppid = pid + 7,
        gpid = pid / 3,
        report = i,
    )
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// CPU seconds (user + system) of this process so far, all threads (`/proc/self/stat`, in
/// clock ticks of 1/100 s, Linux's `USER_HZ`).
#[allow(clippy::cast_precision_loss)]
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 / 100.0
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path).map_or(0, |d| d.flatten().map(|e| size_of(&e.path())).sum())
}

#[allow(clippy::cast_precision_loss)]
fn main() {
    let n: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .map_or(1_000_000, |v| v.parse().expect("BENCH_RECORDS is a number"));
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/tables");
    let _ = std::fs::remove_dir_all(&out);
    let root = out.join("parquet");
    std::fs::create_dir_all(&root).unwrap();

    let writer_only = std::env::var_os("BENCH_WRITER_ONLY").is_some_and(|v| v == "1");
    // The generator alone, so that its share of the writer's loop below is known.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (started_gen, cpu_gen) = (Instant::now(), cpu_seconds());
    let generated: usize = (0..if writer_only { 0 } else { n })
        .map(|i| record(&mut rng, i).len())
        .sum();
    let (gen_elapsed, gen_cpu) = (started_gen.elapsed(), cpu_seconds() - cpu_gen);

    let (mut writer, _) = TableWriter::open(&Root::Local(root.clone()), "bench", TablesConfig::default()).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut raw_bytes = 0u64;
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    let mut last_maintain = Instant::now();
    for i in 0..n {
        let r = record(&mut rng, i);
        raw_bytes += r.len() as u64;
        writer.append(r.as_bytes()).unwrap();
        if i % 2000 == 1999 {
            writer.flush().unwrap();
            if last_maintain.elapsed() >= Duration::from_secs(1) {
                writer.maintain().unwrap();
                last_maintain = Instant::now();
            }
        }
    }
    writer.flush().unwrap();
    writer.close().unwrap();
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_started;
    let rss = peak_rss_mib();
    let parquet_bytes = size_of(&root.join("DeviceProcessEvents"));
    if writer_only {
        println!(
            "tables writer: {n} records, {:.2} s, {:.0} records/s, {cpu:.2} s CPU, peak RSS {rss:.1} MiB, Parquet {parquet_bytes} bytes",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64()
        );
        return;
    }

    let ndjson = out.join("DeviceProcessEvents.ndjson.zst");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started_zst = Instant::now();
    let mut enc = zstd::Encoder::new(std::fs::File::create(&ndjson).unwrap(), 3).unwrap();
    for i in 0..n {
        enc.write_all(record(&mut rng, i).as_bytes()).unwrap();
        enc.write_all(b"\n").unwrap();
    }
    enc.finish().unwrap().sync_all().unwrap();
    let zst_elapsed = started_zst.elapsed();
    let zst_bytes = size_of(&ndjson);

    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "records:                {n} ({:.0} B each on average)",
        raw_bytes as f64 / n as f64
    );
    println!(
        "tables writer:          {:.2} s, {rate:.0} records/s",
        elapsed.as_secs_f64()
    );
    let per_million = 1e6 / n as f64;
    println!(
        "  CPU (user+sys):       {cpu:.2} s, {:.2} s per 1M records, {:.2} cores busy",
        cpu * per_million,
        cpu / elapsed.as_secs_f64()
    );
    println!(
        "  of which generating:  {:.2} s wall, {:.2} s CPU per 1M records (measured alone, {generated} bytes)",
        gen_elapsed.as_secs_f64() * per_million,
        gen_cpu * per_million
    );
    println!("peak RSS:               {rss:.1} MiB");
    println!("Parquet on disk:        {parquet_bytes} bytes");
    println!(
        "NDJSON.zst (level 3):   {zst_bytes} bytes ({:.2} s to write)",
        zst_elapsed.as_secs_f64()
    );
    println!("Parquet / NDJSON.zst:   {:.3}", parquet_bytes as f64 / zst_bytes as f64);
    println!(
        "targets: >= 100000 records/s: {}; peak RSS <= 300 MiB: {}; <= 0.8x NDJSON.zst: {}",
        rate >= 100_000.0,
        rss <= 300.0,
        (parquet_bytes as f64) <= 0.8 * zst_bytes as f64
    );
    duckdb_side_by_side(&root, &ndjson);
}

/// DuckDB counting DeviceProcessEvents by ActionType over each form (best of 3 runs).
fn duckdb_side_by_side(root: &Path, ndjson: &Path) {
    let Some(python) = std::env::var_os("DEFENDER_TABLES_PYTHON").filter(|p| !p.is_empty()) else {
        println!("DuckDB side-by-side: skipped (DEFENDER_TABLES_PYTHON not set)");
        return;
    };
    let script = r#"
import sys, time, duckdb
root, ndjson = sys.argv[1], sys.argv[2]
queries = {
    "Parquet": f"SELECT ActionType, count(*) FROM read_parquet('{root}/DeviceProcessEvents/*/*.parquet', hive_partitioning = true) GROUP BY ActionType ORDER BY ActionType",
    "NDJSON.zst": f"SELECT properties.ActionType AS ActionType, count(*) FROM read_ndjson('{ndjson}', compression = 'zstd', columns = {{'properties': 'STRUCT(ActionType VARCHAR)'}}) GROUP BY ActionType ORDER BY ActionType",
}
results = {}
for name, sql in queries.items():
    best = None
    for _ in range(3):
        con = duckdb.connect(config={"enable_progress_bar": False})
        t = time.perf_counter()
        rows = con.sql(sql).fetchall()
        elapsed = time.perf_counter() - t
        best = elapsed if best is None else min(best, elapsed)
    results[name] = rows
    print(f"DuckDB {duckdb.__version__}, count by ActionType over {name}: {best:.3f} s (best of 3) {rows}")
assert results["Parquet"] == results["NDJSON.zst"], "the two answers differ"
"#;
    let status = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(root)
        .arg(ndjson)
        .status()
        .expect("run python");
    assert!(status.success(), "the DuckDB side-by-side failed");
}

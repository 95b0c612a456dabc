//! The forwarder side by side with a Python consumer written the way users' connectors are
//! (`benches/reference/consumer.py`: the official `azure-eventhub` client, `receive_batch`, `json`,
//! gzip batches to the intake, a blob checkpoint after each push).
//!
//! For each configuration (partitions x record size) the emulator (in this process) is preloaded
//! with the same records in Defender envelopes; then, each from the start of a consumer group of
//! its own, (1) the release `defender-forwarder` delivers them to a local intake that acknowledges
//! at once (blob checkpoints on Azurite), (2) the same binary to the files sink (file
//! checkpoints), (3) the Python reference to the same intake (blob checkpoints on Azurite, or the
//! SDK's in-memory store when Azurite cannot start). Time runs from starting the process until
//! every record is delivered (intake count, or the forwarder's `defender_records_out_total` for
//! files); CPU seconds and peak RSS (`VmHWM`) are the process's own, polled from `/proc` every
//! 50 ms. The reference may be capped in time: it is then measured over what it delivered.
//!
//! With `BENCH_REPEAT=N` each configuration runs N times (all three, in turn, each time from a
//! consumer group of its own); the tables show, for each tool and sink, the run with the median
//! records/s, and the records/s of every run. Single runs on a busy machine move by a fifth or
//! more.
//!
//! Writes `compare.md`, `compare.csv` and `compare.svg` to `<target>/bench/`.
//!
//! ```text
//! cargo bench -p defender-forwarder --bench compare            # 1, 2, 4 partitions x 0.5, 2, 20 KiB
//! BENCH_SMALL=1 cargo bench -p defender-forwarder --bench compare   # 20,000 records, one configuration
//! ```
//!
//! Settings (environment): `BENCH_PARTITIONS` (`1,2,4`), `BENCH_SIZES` (record bytes,
//! `512,2048,20480`), `BENCH_MB` (MB per run, default 400: records = MB / size),
//! `BENCH_RECORDS` (records per run, overrides `BENCH_MB`), `BENCH_REFERENCE_SECONDS` (the
//! reference's time cap, default 60; 0: none), `DEFENDER_BENCH_PYTHON` (default
//! `target/py/bin/python`, created and given the packages with pip when missing), and
//! `BENCH_FORWARDER_TOML` / `BENCH_SOURCE_TOML` as in the `forward` bench, `BENCH_REPEAT` (runs
//! per configuration, default 1).
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KEY, Measured};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_testkit::{Azurite, Intake};

/// What the reference needs, pinned as `.ci/run` installs them.
const PY_PACKAGES: [&str; 4] = [
    "azure-eventhub==5.15.1",
    "azure-eventhub-checkpointstoreblob==1.2.0",
    "azure-eventhub-checkpointstoreblob-aio==1.2.0",
    "aiohttp==3.14.5",
];
const PY_CHECK: &str = "import sys, aiohttp, azure.eventhub, azure.eventhub.extensions.checkpointstoreblobaio; \
                        print(sys.version.split()[0], azure.eventhub.__version__, aiohttp.__version__)";
const HUB: &str = "defender";
/// The largest message body we build: Defender's envelopes stay under the hub's 1 MiB.
const MAX_BODY: usize = 900_000;
const LIMIT: Duration = Duration::from_secs(900);

#[derive(Debug, Clone)]
struct Row {
    partitions: u32,
    size: usize,
    per_body: u64,
    tool: &'static str,
    sink: &'static str,
    checkpoints: String,
    target: u64,
    /// Bytes of the records delivered.
    bytes: f64,
    m: Measured,
    /// CPU seconds of this process (the emulator serving, the intake taking) during the run.
    harness_cpu_s: f64,
    /// What the reference said of its run.
    note: String,
    /// Records/s of every run of this tool and sink in this configuration, ascending (this row
    /// is the median one).
    runs: Vec<f64>,
}

impl Row {
    fn records_per_s(&self) -> f64 {
        self.m.records_per_s()
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes / self.m.seconds / 1e6
    }
    fn cpu_per_million(&self) -> f64 {
        self.m.cpu_s / (self.m.records as f64 / 1e6)
    }
    fn label(&self) -> String {
        format!("{} -> {}", self.tool, self.sink)
    }
}

fn env_list<T: std::str::FromStr + Clone>(name: &str, default: &[T]) -> Vec<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: cannot parse {s:?}"))
            })
            .collect(),
        _ => default.to_vec(),
    }
}

fn kib(size: usize) -> String {
    let k = size as f64 / 1024.0;
    if (k - k.round()).abs() < 1e-9 {
        format!("{k:.0}")
    } else {
        format!("{k}")
    }
}

/// `3.11.7 5.15.1 3.14.5` as `3.11.7, azure-eventhub 5.15.1, aiohttp 3.14.5`.
fn py_versions(versions: &str) -> String {
    match versions.split_whitespace().collect::<Vec<_>>()[..] {
        [py, eh, aio] => format!("{py}, azure-eventhub {eh}, aiohttp {aio}"),
        _ => versions.to_owned(),
    }
}

fn run_python(python: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(python).args(args).stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The Python to run the reference with, and its versions (Python, azure-eventhub, aiohttp).
/// The default venv is created and completed with pip when something is missing.
fn python(root: &Path) -> (PathBuf, String) {
    if let Ok(p) = std::env::var("DEFENDER_BENCH_PYTHON") {
        let p = PathBuf::from(p);
        let versions = run_python(&p, &["-c", PY_CHECK]).unwrap_or_else(|| {
            panic!(
                "DEFENDER_BENCH_PYTHON={} lacks the reference's packages: {} -m pip install {}",
                p.display(),
                p.display(),
                PY_PACKAGES.join(" ")
            )
        });
        return (p, versions);
    }
    let venv = root.join("target/py");
    let p = venv.join("bin/python");
    if let Some(versions) = run_python(&p, &["-c", PY_CHECK]) {
        return (p, versions);
    }
    if !p.exists() {
        eprintln!("creating {}", venv.display());
        let ok = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "python3 -m venv {} failed",
            venv.display()
        );
    }
    eprintln!("installing {} into {}", PY_PACKAGES.join(" "), venv.display());
    let ok = Command::new(&p)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(PY_PACKAGES)
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "pip install into {} failed",
        venv.display()
    );
    let versions = run_python(&p, &["-c", PY_CHECK]).expect("the reference's packages still do not import");
    (p, versions)
}

/// `<target>/bench`: the target directory is three levels above this executable
/// (`<target>/release/deps/compare-*`).
struct Bench {
    intake: Intake,
    azurite: Option<Azurite>,
    python: PathBuf,
    script: PathBuf,
    cap: Option<Duration>,
    dir: tempfile::TempDir,
}

impl Bench {
    async fn ours(&self, emulator: &Emulator, setup: &Setup, sink: &'static str) -> Row {
        let name = format!(
            "ours-{sink}-p{}-s{}{}",
            setup.partitions,
            setup.size,
            setup.run_suffix()
        );
        let metrics = format!("127.0.0.1:{}", common::free_port());
        let (sink_toml, extra, checkpoints) = if sink == "sekoia" {
            let sink_toml = format!(
                "[[sinks]]\nkind = \"sekoia\"\nurl = \"{}\"\nintake_key = \"{KEY}\"\n",
                self.intake.url()
            );
            match &self.azurite {
                Some(azurite) => (
                    sink_toml,
                    format!(
                        "[checkpoints]\nkind = \"blob\"\nconnection_string = \"{}\"\ncontainer = \"{name}\"\n",
                        azurite.connection_string()
                    ),
                    "blob (Azurite)",
                ),
                None => (sink_toml, String::new(), "file"),
            }
        } else {
            (
                format!(
                    "[[sinks]]\nkind = \"files\"\ndir = \"{}\"\n",
                    self.dir.path().join(format!("archive-{name}")).display()
                ),
                String::new(),
                "file",
            )
        };
        let base = self.intake.event_count() as u64;
        let harness = self_cpu();
        let started = Instant::now();
        let mut child = common::spawn_forwarder(
            self.dir.path(),
            &name,
            &emulator.connection_string(HUB),
            &format!("consumer_group = \"{name}\"\n"),
            &extra,
            &sink_toml,
            &metrics,
        );
        let m = common::measure(&mut child, started, setup.total, None, LIMIT, || {
            if sink == "sekoia" {
                self.intake.event_count() as u64 - base
            } else {
                common::scrape(&metrics, sink)
            }
        })
        .await;
        let harness = self_cpu() - harness;
        common::terminate(&mut child);
        setup.row("ours", sink, checkpoints.to_owned(), m, harness)
    }

    async fn reference(&self, emulator: &Emulator, setup: &Setup) -> Row {
        let name = format!("ref-p{}-s{}{}", setup.partitions, setup.size, setup.run_suffix());
        let total = setup.total.to_string();
        let intake_url = self.intake.url();
        let cs = emulator.connection_string(HUB);
        let max_seconds = self.cap.map_or(0, |c| c.as_secs() + 10).to_string();
        let mut args: Vec<String> = [
            "--connection-string",
            &cs,
            "--consumer-group",
            &name,
            "--intake-url",
            &intake_url,
            "--intake-key",
            KEY,
            "--records",
            &total,
            "--max-seconds",
            &max_seconds,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let checkpoints = if let Some(azurite) = &self.azurite {
            azurite.create_container(&name).await.unwrap();
            args.extend(
                [
                    "--checkpoint-store",
                    "blob",
                    "--storage-connection-string",
                    &azurite.connection_string(),
                    "--container",
                    &name,
                ]
                .map(str::to_owned),
            );
            "blob (Azurite)"
        } else {
            args.extend(["--checkpoint-store", "memory"].map(str::to_owned));
            "memory (SDK's)"
        };
        let out_path = self.dir.path().join(format!("{name}.out"));
        let base = self.intake.event_count() as u64;
        let harness = self_cpu();
        let started = Instant::now();
        let mut child = Command::new(&self.python)
            .arg(&self.script)
            .args(&args)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .spawn()
            .unwrap();
        let m = common::measure(&mut child, started, setup.total, self.cap, LIMIT, || {
            self.intake.event_count() as u64 - base
        })
        .await;
        let harness = self_cpu() - harness;
        let note = if m.capped {
            let _ = child.kill();
            let _ = child.wait();
            "stopped at the time cap".to_owned()
        } else {
            // It exits by itself once everything is posted, printing a summary.
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            let summary = std::fs::read_to_string(&out_path).unwrap_or_default();
            let summary: serde_json::Value = summary
                .lines()
                .last()
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or_default();
            format!(
                "{} requests ({} retried); {} checkpoints written",
                summary["requests"], summary["retries"], summary["checkpoints"]
            )
        };
        let mut row = setup.row("reference", "sekoia", checkpoints.to_owned(), m, harness);
        row.note = note;
        row
    }
}

/// CPU seconds of this process so far.
fn self_cpu() -> f64 {
    common::proc_stats(std::process::id()).map_or(0.0, |s| s.1)
}

struct Setup {
    partitions: u32,
    size: usize,
    total: u64,
    per_body: u64,
    bytes: u64,
    /// Which run of this configuration (from 0).
    run: u64,
}

impl Setup {
    /// Names (consumer groups, containers, logs) of repeated runs must differ.
    fn run_suffix(&self) -> String {
        if self.run == 0 {
            String::new()
        } else {
            format!("-r{}", self.run + 1)
        }
    }

    fn row(&self, tool: &'static str, sink: &'static str, checkpoints: String, m: Measured, harness_cpu_s: f64) -> Row {
        Row {
            partitions: self.partitions,
            size: self.size,
            per_body: self.per_body,
            tool,
            sink,
            checkpoints,
            target: self.total,
            bytes: self.bytes as f64 * m.records as f64 / self.total as f64,
            m,
            harness_cpu_s,
            note: String::new(),
            runs: Vec::new(),
        }
    }
}

#[tokio::main]
async fn main() {
    let small = std::env::var("BENCH_SMALL").is_ok_and(|v| !v.is_empty() && v != "0");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let (partitions, sizes) = if small {
        (
            env_list("BENCH_PARTITIONS", &[2u32]),
            env_list("BENCH_SIZES", &[1024usize]),
        )
    } else {
        (
            env_list("BENCH_PARTITIONS", &[1u32, 2, 4]),
            env_list("BENCH_SIZES", &[512usize, 2048, 20_480]),
        )
    };
    let records = common::env_num("BENCH_RECORDS").or(small.then_some(20_000));
    let repeat = common::env_num("BENCH_REPEAT").unwrap_or(1).max(1);
    let mb = common::env_num("BENCH_MB").unwrap_or(400);
    let cap = match common::env_num("BENCH_REFERENCE_SECONDS").unwrap_or(60) {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    let (python, versions) = python(&root);
    let script = root.join("benches/reference/consumer.py");
    assert!(script.exists(), "{} is missing", script.display());

    let intake = Intake::start(KEY).await.unwrap();
    intake.set_store_events(false);
    let (azurite, azurite_note) = match Azurite::start().await {
        Ok(a) => (Some(a), "Azurite (Blob checkpoints for both)".to_owned()),
        Err(e) => (
            None,
            format!("Azurite unavailable ({e}): the reference checkpoints in the SDK's in-memory store, ours in files"),
        ),
    };
    let bench = Bench {
        intake,
        azurite,
        python,
        script,
        cap,
        dir: tempfile::tempdir().unwrap(),
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let started = Instant::now();

    let mut rows = Vec::new();
    for &p in &partitions {
        for &size in &sizes {
            let total = records.unwrap_or_else(|| (mb * 1_000_000 / size as u64).max(1));
            let per_body = (MAX_BODY / size).clamp(1, 100) as u64;
            let emulator = Emulator::start(EmulatorConfig {
                hubs: vec![HubConfig::new(HUB, p)],
                ..EmulatorConfig::default()
            })
            .await
            .unwrap();
            let bytes = common::preload(&emulator, HUB, p, total, size, per_body);
            let mut setup = Setup {
                partitions: p,
                size,
                total,
                per_body,
                bytes,
                run: 0,
            };
            eprintln!(
                "{p} partitions, {total} records of {} KiB ({:.0} MB, {per_body} per message)",
                kib(size),
                bytes as f64 / 1e6
            );
            let mut runs: [Vec<Row>; 3] = Default::default();
            for run in 0..repeat {
                setup.run = run;
                let trio = [
                    bench.ours(&emulator, &setup, "sekoia").await,
                    bench.ours(&emulator, &setup, "files").await,
                    bench.reference(&emulator, &setup).await,
                ];
                for (row, all) in trio.into_iter().zip(&mut runs) {
                    print_row(&row);
                    all.push(row);
                }
            }
            rows.extend(runs.into_iter().map(median));
            emulator.shutdown().await;
        }
    }

    let header = format!(
        "Date: {} UTC. Machine: {cores} cores, {mem_gib:.0} GiB; load average at start {}. \
         Records in Defender envelopes of 100 (fewer for large records: a message stays under 900 kB). \
         Reference: Python {}. Checkpoints: {azurite_note}. \
         Reference cap: {}. Runs per configuration: {repeat}{}. Total time {:.0} s.{}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        py_versions(&versions),
        cap.map_or("none".to_owned(), |c| format!("{} s", c.as_secs())),
        if repeat > 1 {
            " (each row is the run with the median records/s of its tool and sink)"
        } else {
            ""
        },
        started.elapsed().as_secs_f64(),
        match (
            std::env::var("BENCH_FORWARDER_TOML"),
            std::env::var("BENCH_SOURCE_TOML")
        ) {
            (Err(_), Err(_)) => String::new(),
            (f, s) => format!(
                " Forwarder settings: {:?} {:?}.",
                f.unwrap_or_default(),
                s.unwrap_or_default()
            ),
        }
    );
    let header = if cfg!(debug_assertions) {
        format!("{header} Built without optimisations (not the bench profile): the figures say little.")
    } else {
        header
    };
    let md = markdown(&header, &rows);
    let out = common::out_dir();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("compare.md"), &md).unwrap();
    std::fs::write(out.join("compare.csv"), csv(&rows)).unwrap();
    std::fs::write(out.join("compare.svg"), plot(&rows)).unwrap();
    println!("{md}");
    println!("written: {}/compare.{{md,csv,svg}}", out.display());
}

/// One run, as it finishes.
fn print_row(row: &Row) {
    eprintln!(
        "  {:<20} {:>9.0} records/s {:>7.1} MB/s {:>6.1} CPU s/1M {:>6.0} MiB{}",
        row.label(),
        row.records_per_s(),
        row.mb_per_s(),
        row.cpu_per_million(),
        row.m.peak_rss_mib,
        if row.m.capped {
            format!("  (capped: {} of {} records)", row.m.records, row.target)
        } else if row.note.is_empty() {
            String::new()
        } else {
            format!("  ({})", row.note)
        }
    );
}

/// The run with the median records/s (the slower middle one of an even count), knowing them all.
fn median(mut runs: Vec<Row>) -> Row {
    runs.sort_by(|a, b| a.records_per_s().total_cmp(&b.records_per_s()));
    let all: Vec<f64> = runs.iter().map(Row::records_per_s).collect();
    let mut row = runs.swap_remove((runs.len() - 1) / 2);
    row.runs = all;
    row
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

fn markdown(header: &str, rows: &[Row]) -> String {
    let mut s = String::from("# The forwarder and the Python reference consumer\n\n");
    let _ = writeln!(s, "{header}\n");
    s.push_str(
        "| partitions | record (KiB) | tool -> sink | checkpoints | records | s | first delivery (s) | records/s | records/s after the first delivery | MB/s | CPU s per 1M records | peak RSS (MiB) | harness CPU s | records/s of each run |\n\
         |---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {}{} | {:.1} | {} | {:.0} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {} |",
            r.partitions,
            kib(r.size),
            r.label(),
            r.checkpoints,
            r.m.records,
            if r.m.capped {
                format!(" of {} (capped)", r.target)
            } else {
                String::new()
            },
            r.m.seconds,
            r.m.first.map_or_else(|| "-".to_owned(), |(at, _)| format!("{at:.2}")),
            r.records_per_s(),
            opt(r.m.steady_records_per_s()),
            r.mb_per_s(),
            r.cpu_per_million(),
            r.m.peak_rss_mib,
            r.harness_cpu_s,
            r.runs.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ")
        );
    }
    s.push_str("\nThe reference's own account of each run:\n\n");
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(s, "- {} partitions, {} KiB: {}", r.partitions, kib(r.size), r.note);
    }
    s.push_str(
        "\nRatios, ours / reference (targets: records/s >= 10, CPU per record <= 0.25, peak RSS <= 0.5; \
         \"targets met\" judges records/s over the whole run):\n\n\
         | partitions | record (KiB) | ours -> | records/s | records/s after the first delivery | CPU per record | peak RSS | targets met |\n\
         |---:|---:|---|---:|---:|---:|---:|---|\n",
    );
    for reference in rows.iter().filter(|r| r.tool == "reference") {
        for ours in rows
            .iter()
            .filter(|r| r.tool == "ours" && r.partitions == reference.partitions && r.size == reference.size)
        {
            let speed = ours.records_per_s() / reference.records_per_s();
            let steady = ours
                .m
                .steady_records_per_s()
                .zip(reference.m.steady_records_per_s())
                .map_or_else(|| "-".to_owned(), |(o, r)| format!("{:.1}x", o / r));
            let cpu = ours.cpu_per_million() / reference.cpu_per_million();
            let rss = ours.m.peak_rss_mib / reference.m.peak_rss_mib;
            let met = [speed >= 10.0, cpu <= 0.25, rss <= 0.5];
            let names = ["speed", "CPU", "RSS"];
            let missed: Vec<_> = names.iter().zip(met).filter(|(_, m)| !m).map(|(n, _)| *n).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {speed:.1}x | {steady} | {cpu:.2} | {rss:.2} | {} |",
                ours.partitions,
                kib(ours.size),
                ours.sink,
                if missed.is_empty() {
                    "all".to_owned()
                } else {
                    format!("missed: {}", missed.join(", "))
                }
            );
        }
    }
    s
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "partitions,record_bytes,records_per_message,tool,sink,checkpoints,records_target,records_done,capped,\
         seconds,first_delivery_s,records_per_s,steady_records_per_s,mb_per_s,cpu_s,cpu_s_per_million_records,\
         peak_rss_mib,harness_cpu_s,records_per_s_runs\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{:.3},{},{:.1},{},{:.2},{:.2},{:.3},{:.1},{:.2},{}",
            r.partitions,
            r.size,
            r.per_body,
            r.tool,
            r.sink,
            r.checkpoints,
            r.target,
            r.m.records,
            r.m.capped,
            r.m.seconds,
            r.m.first.map_or_else(String::new, |(at, _)| format!("{at:.3}")),
            r.records_per_s(),
            r.m.steady_records_per_s()
                .map_or_else(String::new, |v| format!("{v:.1}")),
            r.mb_per_s(),
            r.m.cpu_s,
            r.cpu_per_million(),
            r.m.peak_rss_mib,
            r.harness_cpu_s,
            r.runs.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(";")
        );
    }
    s
}

/// Tick label of a power of ten.
fn si(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

type Metric = fn(&Row) -> f64;

/// Two log-log panels, records/s and MB/s against record size, one line per tool and sink, at
/// the largest partition count measured.
fn plot(rows: &[Row]) -> String {
    let parts = rows.iter().map(|r| r.partitions).max().unwrap_or(0);
    let rows: Vec<&Row> = rows.iter().filter(|r| r.partitions == parts).collect();
    let series = [
        ("ours", "sekoia", "#1f77b4", "", "forwarder -> intake (gzip)"),
        ("ours", "files", "#2ca02c", "6 4", "forwarder -> files (zstd)"),
        (
            "reference",
            "sekoia",
            "#d62728",
            "",
            "Python reference -> intake (gzip)",
        ),
    ];
    let (pw, ph, top, left, gap) = (360.0, 260.0, 50.0, 70.0, 100.0);
    let width = left + 2.0 * pw + gap + 30.0;
    let height = top + ph + 110.0;
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let (xmin, xmax) = (
        (sizes.first().copied().unwrap_or(1) as f64).log10(),
        (sizes.last().copied().unwrap_or(1) as f64).log10(),
    );
    let (xlo, xhi) = if xmax - xmin < 1e-9 {
        (xmin - 0.5, xmax + 0.5)
    } else {
        let pad = (xmax - xmin) * 0.08;
        (xmin - pad, xmax + pad)
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">Throughput against record size, {parts} partition{}, log scales</text>"#,
        width / 2.0,
        if parts == 1 { "" } else { "s" }
    );
    let panels: [(&str, Metric); 2] = [("records/s", Row::records_per_s), ("MB/s", Row::mb_per_s)];
    for (i, (title, value)) in panels.into_iter().enumerate() {
        let x0 = left + i as f64 * (pw + gap);
        let values: Vec<f64> = rows.iter().map(|r| value(r)).filter(|v| *v > 0.0).collect();
        let vmin = values.iter().copied().fold(f64::INFINITY, f64::min);
        let vmax = values.iter().copied().fold(0.0, f64::max);
        let ylo = if vmin.is_finite() { vmin.log10().floor() } else { 0.0 };
        let yhi = if vmax > 0.0 {
            vmax.log10().ceil().max(ylo + 1.0)
        } else {
            ylo + 1.0
        };
        let to_x = |size: usize| x0 + pw * ((size as f64).log10() - xlo) / (xhi - xlo);
        let to_y = |v: f64| top + ph * (1.0 - (v.log10() - ylo) / (yhi - ylo));
        let _ = writeln!(
            svg,
            r##"<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{title}</text>"#,
            x0 - 52.0,
            top + ph / 2.0,
            x0 - 52.0,
            top + ph / 2.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">record size (KiB)</text>"#,
            x0 + pw / 2.0,
            top + ph + 36.0
        );
        let mut decade = ylo;
        while decade <= yhi + 1e-9 {
            for (mult, label) in [(1.0, true), (2.0, false), (5.0, false)] {
                let v = mult * 10f64.powf(decade);
                if v.log10() > yhi + 1e-9 {
                    break;
                }
                let yy = to_y(v);
                let stroke = if label { "#ccc" } else { "#eee" };
                let _ = writeln!(
                    svg,
                    r#"<line x1="{x0}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="{stroke}"/>"#,
                    x0 + pw
                );
                if label {
                    let _ = writeln!(
                        svg,
                        r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                        x0 - 6.0,
                        yy + 4.0,
                        si(v)
                    );
                }
            }
            decade += 1.0;
        }
        for &size in &sizes {
            let xx = to_x(size);
            let _ = writeln!(
                svg,
                r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"##,
                top + ph,
                top + ph + 16.0,
                kib(size)
            );
        }
        for (tool, sink, color, dash, _) in series {
            let mut pts: Vec<(usize, f64, bool)> = rows
                .iter()
                .filter(|r| r.tool == tool && r.sink == sink)
                .map(|r| (r.size, value(r), r.m.capped))
                .collect();
            pts.sort_by_key(|p| p.0);
            let line: Vec<String> = pts
                .iter()
                .map(|&(sz, v, _)| format!("{:.1},{:.1}", to_x(sz), to_y(v)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                line.join(" ")
            );
            for (sz, v, capped) in pts {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{tool} -> {sink}, {} KiB: {v:.1} {title}{}</title></circle>"#,
                    to_x(sz),
                    to_y(v),
                    kib(sz),
                    if capped { " (time-capped run)" } else { "" }
                );
            }
        }
    }
    for (i, (_, _, color, dash, name)) in series.iter().enumerate() {
        let lx = left + i as f64 * 250.0;
        let ly = top + ph + 70.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{name}</text>"#,
            lx + 28.0,
            lx + 34.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

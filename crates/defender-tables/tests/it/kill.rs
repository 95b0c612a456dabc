//! SIGKILL at random points, 10 rounds: a child process writes, flushes (printing what it may
//! acknowledge), rotates every 100 ms, and compacts finished days, while this process reads
//! every visible file. Checked: every visible file is always a complete, readable Parquet file;
//! every acknowledged record is published after recovery; no record is published twice.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use defender_tables::{Root, TableWriter, TablesConfig, TablesError, read_file};

use crate::common;

const CHILD_ROOT: &str = "DEFENDER_TABLES_KILL_ROOT";
const CHILD_START: &str = "DEFENDER_TABLES_KILL_START";

fn config() -> TablesConfig {
    TablesConfig {
        rotate_age: Duration::from_millis(100),
        rotate_rows: 3000,
        compact_after: Duration::from_secs(1),
        compact_min_files: 3,
        retention_days: 100_000,
        ..TablesConfig::default()
    }
}

fn record(id: u64) -> String {
    let day = ["2020-01-01", "2020-01-02", "2020-01-03"][usize::try_from(id % 3).unwrap()];
    let category = if id.is_multiple_of(5) {
        "AdvancedHunting-NotYetKnown"
    } else {
        "AdvancedHunting-DeviceNetworkEvents"
    };
    format!(
        r#"{{"time":"{day}T10:00:00.0000000Z","category":"{category}","properties":{{"Timestamp":"{day}T09:00:00.1234567Z","ReportId":{id},"RemotePort":"{}","AdditionalFields":{{"n":{id}}},"Pad":"{}"}}}}"#,
        id % 65536,
        "x".repeat(usize::try_from(id % 200).unwrap())
    )
}

/// The child: writes until killed. Run by `kill_rounds` only.
#[test]
#[ignore = "the child process of kill_rounds"]
fn child() {
    let (Some(root), Some(start)) = (std::env::var_os(CHILD_ROOT), std::env::var(CHILD_START).ok()) else {
        return;
    };
    let start: u64 = start.parse().unwrap();
    let (mut w, _) = TableWriter::open(&Root::Local(root.into()), "killed", config()).unwrap();
    let mut last_maintain = Instant::now();
    for id in start.. {
        w.append(record(id).as_bytes()).unwrap();
        if id.is_multiple_of(37) {
            w.flush().unwrap();
            println!("acked {id}");
        }
        if last_maintain.elapsed() >= Duration::from_millis(20) {
            w.maintain().unwrap();
            last_maintain = Instant::now();
        }
        if id.is_multiple_of(4000) {
            w.housekeeping().unwrap();
        }
    }
}

/// Reads every visible file; a file may vanish (compaction) but never be partial.
fn check_visible(root: &Path) -> Vec<u64> {
    let mut ids = Vec::new();
    for (table, path) in common::published_files(root) {
        assert!(
            path.extension().is_some_and(|e| e == "parquet"),
            "a non-Parquet file is visible: {}",
            path.display()
        );
        match read_file(&table, &path) {
            Ok(records) => ids.extend(records.iter().map(|r| r["properties"]["ReportId"].as_u64().unwrap())),
            Err(TablesError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("a visible file is not readable: {}: {e}", path.display()),
        }
    }
    ids
}

#[test]
fn kill_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000,
    )
    .unwrap();
    eprintln!("kill_rounds seed {seed}");
    let mut random = move |below: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % below
    };
    let mut acked = BTreeSet::new();
    let mut appended_max = 0;
    for round in 0..10u64 {
        let start = round * 1_000_000;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "kill::child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ROOT, dir.path())
            .env(CHILD_START, start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                if let Some(id) = line.unwrap().strip_prefix("acked ") {
                    last = Some(id.parse::<u64>().unwrap());
                }
            }
            last
        });
        let run_for = Duration::from_millis(300 + random(1500));
        let began = Instant::now();
        while began.elapsed() < run_for {
            check_visible(dir.path());
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last = lines.join().unwrap();
        check_visible(dir.path());
        if let Some(last) = last {
            acked.extend(start..=last);
            appended_max = appended_max.max(last);
        }
        eprintln!("round {round}: killed after {run_for:?}, acknowledged up to {last:?}");
    }
    assert!(
        acked.len() > 1000,
        "the child wrote too little to mean anything: {}",
        acked.len()
    );
    let (w, recovery) = TableWriter::open(&Root::Local(dir.path().to_path_buf()), "killed", config()).unwrap();
    eprintln!(
        "recovery: {} logs published, {} already published, {} torn",
        recovery.published.len(),
        recovery.already_published.len(),
        recovery.torn
    );
    w.close().unwrap();
    let mut ids = check_visible(dir.path());
    ids.sort_unstable();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a record was published twice");
    let missing: Vec<_> = acked.difference(&unique).take(10).collect();
    assert!(missing.is_empty(), "acknowledged records are missing: {missing:?}");
    eprintln!(
        "{} records acknowledged, {} published ({} appended after the last flush of a round), none twice",
        acked.len(),
        unique.len(),
        unique.len() - acked.len()
    );
}

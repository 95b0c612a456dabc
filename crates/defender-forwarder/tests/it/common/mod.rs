//! Shared by the forwarder's end-to-end tests: Defender-like records, an emulator and an intake
//! on 127.0.0.1, a config file, and the real `defender-forwarder` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_testkit::Intake;

pub const KEY: &str = "test-intake-key-4f1c";
pub const TABLES: &[&str] = &[
    "DeviceProcessEvents",
    "DeviceNetworkEvents",
    "EmailEvents",
    "IdentityLogonEvents",
    "AlertInfo",
];

/// Record `n`: a Defender record of table `TABLES[n % 5]`, with spellings a re-serialiser would
/// change (spaces, escapes, a 19-digit number, 7-digit fractions), unique by its `Seq`.
pub fn record(n: u64) -> String {
    let table = TABLES[usize::try_from(n).unwrap() % TABLES.len()];
    format!(
        concat!(
            r#"{{"time": "2026-11-2{d}T09:31:07.4473310Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","#,
            r#""operationName":"Publish","category":"AdvancedHunting-{table}","properties":{{"Timestamp":"2026-11-2{d}T09:31:00.0000000Z","#,
            r#""DeviceName":"ws-{n:06}.example.com","ReportId":9007199254740993{r},"Note":"caf\u00e9 \"q\" \\ {n}","Seq":{n}}}}}"#
        ),
        d = n % 3,
        table = table,
        n = n,
        r = n % 10,
    )
}

pub fn table_of(n: u64) -> &'static str {
    TABLES[usize::try_from(n).unwrap() % TABLES.len()]
}

/// Envelopes of `per_body` records from the numbers given.
pub fn bodies(numbers: impl IntoIterator<Item = u64>, per_body: usize) -> Vec<Vec<u8>> {
    let all: Vec<String> = numbers.into_iter().map(record).collect();
    all.chunks(per_body)
        .map(|c| format!(r#"{{"records":[{}]}}"#, c.join(",")).into_bytes())
        .collect()
}

pub struct Env {
    pub emulator: Emulator,
    pub intake: Intake,
    pub dir: tempfile::TempDir,
    pub hub: String,
}

impl Env {
    pub async fn start(partitions: u32) -> Env {
        let emulator = Emulator::start(EmulatorConfig {
            hubs: vec![HubConfig::new("defender", partitions)],
            ..EmulatorConfig::default()
        })
        .await
        .unwrap();
        let intake = Intake::start(KEY).await.unwrap();
        Env {
            emulator,
            intake,
            dir: tempfile::tempdir().unwrap(),
            hub: "defender".to_owned(),
        }
    }

    /// Spreads bodies round-robin over the hub's partitions.
    pub fn send(&self, bodies: Vec<Vec<u8>>) {
        let partitions = self.emulator.partitions(&self.hub).unwrap().len();
        let mut by_partition: Vec<Vec<Vec<u8>>> = vec![Vec::new(); partitions];
        for (i, b) in bodies.into_iter().enumerate() {
            by_partition[i % partitions].push(b);
        }
        for (p, bodies) in by_partition.into_iter().enumerate() {
            if !bodies.is_empty() {
                self.emulator.append(&self.hub, Some(&p.to_string()), bodies).unwrap();
            }
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A configuration: the hub, with `sinks` (TOML) appended.
    pub fn config(&self, sinks: &str) -> PathBuf {
        let text = format!(
            r#"
state_dir = "{state}"

[forwarder]
checkpoint_interval = "200ms"
shutdown_timeout = "20s"

[[sources]]
kind = "eventhub"
name = "defender"
connection_string = "${{TEST_CONNECTION_STRING}}"
hub = "{hub}"
consumer_group = "$Default"
owner_id = "forwarder-under-test"
ownership_update_interval = "1s"
ownership_expiry = "5s"

{sinks}
"#,
            state = self.path("state").display(),
            hub = self.hub,
        );
        let path = self.path("forwarder.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn sekoia_sink(&self, extra: &str) -> String {
        format!(
            "[[sinks]]\nkind = \"sekoia\"\nurl = \"{}\"\nintake_key = \"${{TEST_INTAKE_KEY}}\"\nlinger = \"50ms\"\nmax_backoff = \"1s\"\n{extra}\n",
            self.intake.url()
        )
    }

    pub fn files_sink(&self, extra: &str) -> String {
        format!(
            "[[sinks]]\nkind = \"files\"\ndir = \"{}\"\nflush_interval = \"200ms\"\n{extra}\n",
            self.path("archive").display()
        )
    }

    pub fn command(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_defender-forwarder"));
        c.arg("--config")
            .arg(config)
            .args(args)
            .env("TEST_CONNECTION_STRING", self.emulator.connection_string(&self.hub))
            .env("TEST_INTAKE_KEY", KEY)
            .env(
                "DEFENDER_LOG",
                std::env::var("DEFENDER_LOG").unwrap_or_else(|_| {
                    "info,azure_messaging_eventhubs=warn,azure_core_amqp=warn,fe2o3_amqp=warn".into()
                }),
            )
            .stdin(Stdio::null());
        c
    }

    /// Runs the forwarder until it has been idle for `idle` seconds; fails the test after `limit`.
    pub async fn run_until_idle(&self, config: &Path, idle: f64, limit: Duration) -> Output {
        let mut cmd = self.command(config, &["--exit-when-idle", &idle.to_string()]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        wait_output(child, limit).await
    }

    /// Starts the forwarder in the background; its log goes to `forwarder.log` in the test's
    /// directory (a pipe nobody reads would block it once full).
    pub fn spawn(&self, config: &Path, args: &[&str]) -> Child {
        let mut cmd = self.command(config, args);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("forwarder.log"))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        cmd.spawn().unwrap()
    }

    /// What background forwarders logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("forwarder.log")).unwrap_or_default()
    }
}

/// Waits for a child without blocking the runtime (the emulator and intake live in it).
pub async fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let status = child.wait().unwrap();
            let err = err_reader.join().unwrap();
            panic!(
                "forwarder still running after {limit:?} ({status}); stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// Asks `pid` to stop the way a service manager does (SIGTERM); the caller waits for the exit.
pub fn sigterm(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}: {status}");
}

/// How many times each `Seq` arrived, from record texts.
pub fn seq_counts(events: &[String]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for e in events {
        let v: serde_json::Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("not JSON ({err}): {e}"));
        *out.entry(v["properties"]["Seq"].as_u64().unwrap()).or_default() += 1;
    }
    out
}

/// Every line of every segment under `dir`, with the segment it came from.
pub fn archive_lines(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".ndjson.zst") {
                let data = std::fs::read(&p).unwrap();
                let text = zstd::stream::decode_all(&data[..]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                for line in String::from_utf8(text).unwrap().lines() {
                    out.push((p.clone(), line.to_owned()));
                }
            }
        }
    }
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small xorshift, seeded from the clock (or `TEST_SEED`) and printed, so that a failing run
/// of a randomised test can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        let seed = std::env::var("TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or((now.as_secs() ^ u64::from(now.subsec_nanos()) << 20) | 1);
        eprintln!("seed {seed} (TEST_SEED=<n> replays it)");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Every checkpoint record of a file store under `state/checkpoints`, with its path.
pub fn checkpoint_records(state: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut out = Vec::new();
    let mut stack = vec![state.join("checkpoints")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.parent().is_some_and(|d| d.ends_with("checkpoint"))
                && p.extension().is_some_and(|x| x == "json")
            {
                out.push((p.clone(), serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()));
            }
        }
    }
    out
}

/// Runs `cmd` (its log appended to `log`) for `lifetime`, then kills it with SIGKILL. Returns
/// how long after the start the intake first got a record, if it did.
pub async fn run_then_kill(mut cmd: Command, log: &Path, intake: &Intake, lifetime: Duration) -> Option<Duration> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let before = intake.event_count();
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(file).spawn().unwrap();
    let mut reading = None;
    while started.elapsed() < lifetime {
        if reading.is_none() && intake.event_count() > before {
            reading = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reading
}

/// Per partition, the sequence number of its last checkpoint, from the file store in `state`.
pub fn hub_checkpoints(state: &Path) -> BTreeMap<String, i64> {
    checkpoint_records(state)
        .into_iter()
        .map(|(p, v)| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                v["sequence_number"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Where record `seq` sits once [`Env::send`] spread `bodies(0.., per_body)` over `partitions`
/// empty partitions: (partition, sequence number).
pub fn position(seq: u64, per_body: usize, partitions: u32) -> (String, i64) {
    let body = seq / per_body as u64;
    let partition = body % u64::from(partitions);
    (
        partition.to_string(),
        i64::try_from(body / u64::from(partitions)).unwrap(),
    )
}

/// Whether a checkpoint covers record `seq`.
pub fn checkpointed(seq: u64, checkpoints: &BTreeMap<String, i64>, per_body: usize, partitions: u32) -> bool {
    let (p, q) = position(seq, per_body, partitions);
    checkpoints.get(&p).is_some_and(|done| q <= *done)
}

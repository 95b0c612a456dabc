//! What the end-to-end benchmarks share: synthetic Defender records, preloading the emulator,
//! running the forwarder binary, and measuring a process from `/proc` while it works.
#![allow(
    dead_code,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use defender_emulator::Emulator;

/// The intake key of the benchmarks' local intake.
pub const KEY: &str = "bench-key";

/// A `DeviceProcessEvents` record of `size` bytes (for `size` over ~330), different per `n`.
pub fn record(n: u64, size: usize) -> String {
    let head = format!(
        r#"{{"time":"2026-11-23T09:31:07.4473310Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","operationName":"Publish","category":"AdvancedHunting-DeviceProcessEvents","properties":{{"Timestamp":"2026-11-23T09:31:00.0000000Z","DeviceName":"ws-{n:07}.example.com","ActionType":"ProcessCreated","FileName":"powershell.exe","ReportId":{n},"ProcessCommandLine":""#
    );
    let pad = size.saturating_sub(head.len() + 3);
    let mut out = head.into_bytes();
    out.extend((0..pad).map(|i| b'a' + u8::try_from((n as usize + i) % 26).unwrap()));
    out.extend_from_slice(b"\"}}");
    String::from_utf8(out).expect("ASCII")
}

/// Appends `total` records of `size` bytes to `hub`, in Defender envelopes of `per_body`
/// records, message `i` to partition `i % partitions`; returns the records' bytes.
pub fn preload(emulator: &Emulator, hub: &str, partitions: u32, total: u64, size: usize, per_body: u64) -> u64 {
    let mut bytes = 0u64;
    for (i, first) in (0..total).step_by(usize::try_from(per_body).unwrap()).enumerate() {
        let recs: Vec<String> = (first..(first + per_body).min(total))
            .map(|n| record(n, size))
            .collect();
        bytes += recs.iter().map(|r| r.len() as u64).sum::<u64>();
        let body = format!(r#"{{"records":[{}]}}"#, recs.join(",")).into_bytes();
        let partition = (i % partitions as usize).to_string();
        emulator.append(hub, Some(&partition), vec![body]).unwrap();
    }
    bytes
}

/// The number in environment variable `name`, if set (panics on anything else: a typo must not
/// silently run the default).
pub fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: not a number: {v:?}"))
    })
}

/// Peak RSS (`VmHWM`, MiB) and CPU seconds (user + system) of a live process.
pub fn proc_stats(pid: u32) -> Option<(f64, f64)> {
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

/// `defender_records_out_total` of `sink`, from the forwarder's `/metrics` at `addr` (0 when it
/// does not answer yet).
pub fn scrape(addr: &str, sink: &str) -> u64 {
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

/// A free port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the release forwarder on a configuration written to `dir/{name}.toml`: `state_dir`
/// `dir/state-{name}`, `BENCH_FORWARDER_TOML` (top level), `extra_toml` (e.g. `[checkpoints]`),
/// one eventhub source (`connection_string`, `source_toml`, then `BENCH_SOURCE_TOML`) and
/// `sink_toml`; metrics on `metrics` (`127.0.0.1:PORT`).
pub fn spawn_forwarder(
    dir: &Path,
    name: &str,
    connection_string: &str,
    source_toml: &str,
    extra_toml: &str,
    sink_toml: &str,
    metrics: &str,
) -> Child {
    let state = dir.join(format!("state-{name}"));
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n{}\n{extra_toml}\n[[sources]]\nkind = \"eventhub\"\nconnection_string = \"{connection_string}\"\n{source_toml}\n{}\n{sink_toml}\n",
            state.display(),
            std::env::var("BENCH_FORWARDER_TOML").unwrap_or_default(),
            std::env::var("BENCH_SOURCE_TOML").unwrap_or_default(),
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_defender-forwarder"))
        .arg("--config")
        .arg(&config)
        .args(["--metrics", metrics])
        .env("DEFENDER_LOG", log_level())
        .stdout(Stdio::null())
        .stderr(log_file(name))
        .spawn()
        .unwrap()
}

/// `<target>/bench`, where the benchmarks write their reports.
pub fn out_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|d| d.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| root.join("target"))
        .join("bench")
}

/// The forwarder's log filter in benches: `BENCH_LOG`, default `warn` (logging every batch
/// would be measured too).
pub fn log_level() -> String {
    std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".to_owned())
}

/// `<target>/bench/logs/{name}.log`, truncated: a process's log (level `BENCH_LOG`, default
/// `warn`) outlives the run's temporary directory.
pub fn log_file(name: &str) -> std::fs::File {
    let dir = out_dir().join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join(format!("{name}.log"))).unwrap()
}

/// What [`measure`] saw of one process.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Seconds from `started` until `total` records were done, or until the cap.
    pub seconds: f64,
    /// Records done by then (`total` unless capped).
    pub records: u64,
    /// Whether the time cap ended the measurement before `total`.
    pub capped: bool,
    /// CPU seconds (user + system) of the process by then.
    pub cpu_s: f64,
    /// Its peak RSS (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// When the first delivered records were seen (seconds since `started`), and how many.
    pub first: Option<(f64, u64)>,
}

impl Measured {
    /// Records per second over the whole run, start-up included.
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    /// Records per second from the first delivery seen to the end (start-up left out); `None`
    /// when everything was seen at once.
    pub fn steady_records_per_s(&self) -> Option<f64> {
        let (at, n) = self.first?;
        (self.records > n && self.seconds > at).then(|| (self.records - n) as f64 / (self.seconds - at))
    }
}

/// Polls `child` every 50 ms (its `/proc` stats, and `done()`, the records it has delivered so
/// far) until `done() >= total`, or `cap` has passed since `started` (then `capped`). Panics if
/// the process exits first or after `limit`. Leaves the process running.
pub async fn measure(
    child: &mut Child,
    started: Instant,
    total: u64,
    cap: Option<Duration>,
    limit: Duration,
    mut done: impl FnMut() -> u64,
) -> Measured {
    let pid = child.id();
    let mut last = (0.0, 0.0);
    let mut first = None;
    loop {
        if let Some(s) = proc_stats(pid) {
            last = s;
        }
        let records = done();
        if first.is_none() && records > 0 {
            first = Some((started.elapsed().as_secs_f64(), records.min(total)));
        }
        let capped = cap.is_some_and(|cap| started.elapsed() >= cap);
        if records >= total || capped {
            let seconds = started.elapsed().as_secs_f64();
            if let Some(s) = proc_stats(pid) {
                last = s;
            }
            return Measured {
                seconds,
                records: records.min(total),
                capped: records < total,
                cpu_s: last.1,
                peak_rss_mib: last.0,
                first,
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("process {pid} exited ({status}) after {records} of {total} records");
        }
        assert!(
            started.elapsed() < limit,
            "benchmark run took over {} s ({records} of {total} records)",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM and waits for the process to exit.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

//! `defender send` and `defender tail` against the emulator, run in this process, with the real
//! binary and the real Event Hubs client.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_eventhub::{Connection, Reader, ReaderConfig, Secret, StartFrom};

const HUB: &str = "defender";
/// A hub loaded by the emulator itself from the same files: what `send` must reproduce.
const REFERENCE: &str = "reference";
const KEY: &str = "S3cr3tK3yV4lu3==";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn command(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_defender"));
    cmd.current_dir(repo()).args(args);
    cmd
}

/// Runs the binary to its end (off the runtime's threads, which serve the emulator).
async fn defender(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = assert_cmd::Command::from_std(command(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        cmd.timeout(Duration::from_secs(120)).output().unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn emulator(partitions: u32) -> Emulator {
    Emulator::start(EmulatorConfig {
        hubs: vec![HubConfig::new(HUB, partitions), HubConfig::new(REFERENCE, 1)],
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

fn event_count(emulator: &Emulator, hub: &str) -> Vec<u64> {
    emulator
        .partitions(hub)
        .unwrap()
        .iter()
        .map(|p| p.event_count)
        .collect()
}

/// Every message of `hub`, as the records it holds (exact bytes; records that are not Defender
/// records left out), read back with the real client.
async fn messages(emulator: &Emulator, hub: &str) -> Vec<Vec<String>> {
    let expected: u64 = event_count(emulator, hub).iter().sum();
    let mut config = ReaderConfig::new(Connection::ConnectionString(Secret::new(
        emulator.connection_string(hub),
    )));
    config.start = StartFrom::Earliest;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = Reader::start(config, None, tx).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while (out.len() as u64) < expected {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("every message in time")
            .unwrap();
        for e in &batch.messages {
            let records = defender_schema::split_body(e.body.as_deref().unwrap()).unwrap();
            out.push(
                records
                    .into_iter()
                    .filter_map(Result::ok)
                    .map(|r| r.raw().to_owned())
                    .collect(),
            );
        }
    }
    reader.shutdown().await;
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The `sent N records in M messages to HUB (X records/s)` line, as (N, M).
fn summary(stdout: &str) -> (u64, u64) {
    let line = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let rest = line.strip_prefix("sent ").unwrap_or_else(|| panic!("{line}"));
    let (records, rest) = rest.split_once(" records in ").unwrap();
    let (messages, rest) = rest.split_once(" messages to ").unwrap();
    assert!(
        rest.starts_with(&format!("{HUB} (")) && rest.ends_with(" records/s)"),
        "{line}"
    );
    (records.parse().unwrap(), messages.parse().unwrap())
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn emulator_cs(port: u16) -> String {
    format!(
        "Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY};\
         EntityPath={HUB};UseDevelopmentEmulator=true"
    )
}

/// Error output with what varies between runs and systems taken out.
fn stable(stderr: &str, port: u16) -> String {
    let s = stderr.replace(&format!(":{port}"), ":[PORT]");
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(start) = rest.find("(os error ") {
        let end = rest[start..].find(')').map_or(rest.len(), |e| start + e + 1);
        out.push_str(&rest[..start]);
        out.push_str("(os error [N])");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_every_fixture_record_as_the_emulator_loads_them() {
    let emulator = emulator(2).await;
    let cs = emulator.connection_string(HUB);
    let out = defender(&["send", "--connection-string", &cs, "fixtures/"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    // The emulator's own loader, over the same files, is the reference.
    let stats = emulator.load_paths(REFERENCE, &[repo().join("fixtures")], 100).unwrap();
    let defender_records = stats.records - stats.invalid_records;
    let (records, messages_sent) = summary(&stdout);
    assert_eq!(records, defender_records);
    assert_eq!(messages_sent, defender_records.div_ceil(100));
    // What is not a Defender record is named and counted, not sent.
    assert!(
        stderr.contains("fixtures/invalid/no-category.json record 1: record has no `category`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fixtures/invalid/broken-json.json: not valid JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipped 7 inputs that are not Defender records"),
        "{stderr}"
    );

    let counts = event_count(&emulator, HUB);
    assert_eq!(counts.iter().sum::<u64>(), messages_sent);
    let sent = messages(&emulator, HUB).await;
    let reference = messages(&emulator, REFERENCE).await;
    assert!(sent.iter().all(|m| m.len() <= 100));
    let sent: Vec<String> = sent.into_iter().flatten().collect();
    assert_eq!(sent.len() as u64, defender_records);
    assert_eq!(sorted(sent), sorted(reference.into_iter().flatten().collect()));
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_records_per_message_into_one_partition() {
    let emulator = emulator(2).await;
    let cs = emulator.connection_string(HUB);
    let out = defender(&[
        "send",
        "--connection-string",
        &cs,
        "--records-per-message",
        "3",
        "--partition",
        "1",
        "fixtures/tables",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stderr.is_empty(),
        "every record of fixtures/tables is sent: {}",
        text(&out.stderr)
    );
    let (records, messages_sent) = summary(&text(&out.stdout));
    let stats = emulator
        .load_paths(REFERENCE, &[repo().join("fixtures/tables")], 3)
        .unwrap();
    assert_eq!(records, stats.records);
    assert_eq!(messages_sent, records.div_ceil(3));
    assert_eq!(messages_sent, stats.messages);
    assert_eq!(event_count(&emulator, HUB), [0, messages_sent]);
    // In order, in one partition: the same messages as the loader makes.
    assert_eq!(messages(&emulator, HUB).await, messages(&emulator, REFERENCE).await);

    let out = defender(&[
        "send",
        "--connection-string",
        &cs,
        "--partition",
        "7",
        "fixtures/tables",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = stable(&text(&out.stderr), emulator.local_addr().port());
    insta::assert_snapshot!("send_unknown_partition", stderr);
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_from_stdin_and_keeps_messages_under_the_size_limit() {
    let emulator = emulator(1).await;
    let cs = emulator.connection_string(HUB);
    // 40 records of ~60 kB: 100 per message would be 2.4 MB, so size decides.
    let filler = "x".repeat(60_000);
    let ndjson: String = (0..40)
        .map(|i| {
            format!(
                r#"{{"time":"2024-05-14T09:31:07.4473310Z","category":"AdvancedHunting-DeviceEvents","properties":{{"ReportId":{i},"AdditionalFields":"{filler}"}}}}"#
            ) + "\n"
        })
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        assert_cmd::Command::from_std(command(&["send", "--connection-string", &cs, "-"]))
            .write_stdin(ndjson)
            .timeout(Duration::from_secs(120))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (records, messages_sent) = summary(&text(&out.stdout));
    assert_eq!(records, 40);
    // 16 records of 60,1xx bytes fit under 1,000,000 bytes.
    assert_eq!(messages_sent, 3);
    let sent = messages(&emulator, HUB).await;
    assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), [16, 16, 8]);
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_a_message_is_an_error_naming_it() {
    let emulator = emulator(1).await;
    let cs = emulator.connection_string(HUB);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.ndjson");
    let small = r#"{"time":"2024-05-14T09:31:07.4473310Z","category":"AdvancedHunting-DeviceEvents","properties":{}}"#;
    let big = format!(
        r#"{{"time":"2024-05-14T09:31:07.4473310Z","category":"AdvancedHunting-DeviceEvents","properties":{{"AdditionalFields":"{}"}}}}"#,
        "x".repeat(1_000_000)
    );
    std::fs::write(&file, format!("{small}\n{big}\n")).unwrap();
    let out = defender(&["send", "--connection-string", &cs, file.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2: the record is {} bytes", file.display(), big.len() + 14)),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_records_of_a_table() {
    let emulator = emulator(2).await;
    let cs = emulator.connection_string(HUB);
    let out = defender(&["send", "--connection-string", &cs, "fixtures/"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Every DeviceProcessEvents record of the fixtures, on one line each.
    let stats = emulator.load_paths(REFERENCE, &[repo().join("fixtures")], 100).unwrap();
    let defender_records = stats.records - stats.invalid_records;
    let expected: Vec<String> = messages(&emulator, REFERENCE)
        .await
        .into_iter()
        .flatten()
        .filter(|r| {
            defender_schema::parse_record(r).unwrap().table() == Some(defender_schema::Table::DeviceProcessEvents)
        })
        .map(|r| one_line(&r))
        .collect();
    assert!(expected.len() > 10);

    let count = expected.len().to_string();
    let out = defender(&[
        "tail",
        "--connection-string",
        &cs,
        "--from",
        "earliest",
        "--table",
        "deviceprocessevents",
        "--count",
        &count,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(sorted(printed), sorted(expected.clone()));

    // Without a filter: every record, each a JSON object on its line.
    let count = defender_records.to_string();
    let out = defender(&[
        "tail",
        "--connection-string",
        &cs,
        "--from",
        "earliest",
        "--count",
        &count,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut per_table = BTreeMap::<String, usize>::new();
    for line in text(&out.stdout).lines() {
        let r = defender_schema::parse_record(line).unwrap();
        *per_table.entry(r.table_name().to_owned()).or_default() += 1;
    }
    assert_eq!(per_table.values().sum::<usize>() as u64, defender_records);
    assert_eq!(per_table["DeviceProcessEvents"], expected.len());
    emulator.shutdown().await;
}

/// A record as `tail` prints it: its exact bytes, or without the whitespace between tokens when
/// it spans lines (the fixtures are pretty-printed).
fn one_line(raw: &str) -> String {
    if !raw.contains('\n') {
        return raw.to_owned();
    }
    let mut out = String::new();
    let (mut in_string, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_latest_prints_what_arrives_and_stops_on_ctrl_c() {
    let emulator = emulator(2).await;
    let cs = emulator.connection_string(HUB);
    let out = defender(&["send", "--connection-string", &cs, "fixtures/tables/AlertInfo.json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Only what is sent after it started: the 2 records of DeviceInfo.json, not AlertInfo's.
    let mut tail = command(&["tail", "--connection-string", &cs, "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_receivers(&emulator, 2).await;
    let out = defender(&["send", "--connection-string", &cs, "fixtures/tables/DeviceInfo.json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status = wait(&mut tail, Duration::from_secs(60)).await;
    assert!(status.success());
    let stdout = std::io::read_to_string(tail.stdout.take().unwrap()).unwrap();
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    for line in stdout.lines() {
        let r = defender_schema::parse_record(line).unwrap();
        assert_eq!(r.table(), Some(defender_schema::Table::DeviceInfo), "{line}");
    }

    #[cfg(unix)]
    {
        let mut tail = command(&["tail", "--connection-string", &cs])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_receivers(&emulator, 2).await;
        let killed = std::process::Command::new("kill")
            .args(["-INT", &tail.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = wait(&mut tail, Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(0), "Ctrl-C is a normal way to stop tail");
    }
    emulator.shutdown().await;
}

async fn wait_for_receivers(emulator: &Emulator, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while emulator.receiver_count(HUB).unwrap() < n {
        assert!(Instant::now() < deadline, "tail never attached its receivers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the command did not stop in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_usage_error() {
    let emulator = emulator(1).await;
    let cs = emulator.connection_string(HUB);

    let out = defender(&[
        "send",
        "--connection-string",
        &cs,
        "fixtures/tables",
        "fixtures/nope.json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot read `fixtures/nope.json`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        event_count(&emulator, HUB),
        [0],
        "nothing is sent when an input is missing"
    );

    let out = defender(&["tail", "--connection-string", &cs, "--table", "DeviceFooEvents"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown table `DeviceFooEvents`"), "{stderr}");
    assert!(stderr.contains("`defender tables`"), "{stderr}");

    let out = defender(&["tail", "--connection-string", &cs, "--from", "yesterday"]).await;
    assert_eq!(out.status.code(), Some(2));

    let out = defender(&["send", "--connection-string", &cs, "--hub", "other", "fixtures/tables"]).await;
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("send_hub_mismatch", text(&out.stderr));
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_connection_string_is_named_never_shown() {
    for (name, cs) in [
        (
            "no_endpoint",
            format!("SharedAccessKeyName=k;SharedAccessKey={KEY};EntityPath={HUB}"),
        ),
        (
            "bad_endpoint",
            format!("Endpoint=not a url;SharedAccessKeyName=k;SharedAccessKey={KEY};EntityPath={HUB}"),
        ),
        ("not_key_value", KEY.to_owned()),
    ] {
        for command in ["send", "tail"] {
            let mut args = vec![command, "--connection-string", &cs];
            if command == "send" {
                args.push("fixtures/tables");
            }
            let out = defender(&args).await;
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(!stderr.contains(KEY) && !text(&out.stdout).contains(KEY), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            insta::assert_snapshot!(format!("malformed_{name}_{command}"), stderr);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hub_fails_within_the_timeout() {
    // Nothing listening: refused at once.
    let port = closed_port();
    let cs = emulator_cs(port);
    for command in ["send", "tail"] {
        let mut args = vec![command, "--connection-string", &cs, "--timeout", "5"];
        if command == "send" {
            args.push("fixtures/tables");
        }
        let started = Instant::now();
        let out = defender(&args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
        assert!(!stderr.contains(KEY), "{stderr}");
        insta::assert_snapshot!(format!("refused_{command}"), stable(&stderr, port));
    }

    // Listening but never answering (the handshake completes in the kernel's backlog): the
    // timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let cs = emulator_cs(port);
    for command in ["send", "tail"] {
        let mut args = vec![command, "--connection-string", &cs, "--timeout", "2"];
        if command == "send" {
            args.push("fixtures/tables");
        }
        let started = Instant::now();
        let out = defender(&args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(12),
            "{took:?}"
        );
        insta::assert_snapshot!(format!("silent_{command}"), stable(&stderr, port));
    }
    drop(silent);
}

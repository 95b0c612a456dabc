//! Defender's third delivery: the Storage-account export (one container per table, one append
//! blob per hour, one record per line), read from Azurite by the real binary.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::common::{KEY, TABLES, archive_lines, record, seq_counts, sigterm, stderr, table_of, wait_output};
use defender_eventhub::blob::{BlobClient, BlobErrorKind, Condition, SharedKeyCredential, StorageCredential};
use defender_testkit::{Azurite, Faults, Intake};

const PREFIX: &str = "insights-logs-advancedhunting-";
const TENANT: &str = "tenantId=5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
const LIMIT: Duration = Duration::from_secs(60);
/// Three hours over two days.
const HOURS: &[&str] = &[
    "y=2026/m=11/d=23/h=22",
    "y=2026/m=11/d=23/h=23",
    "y=2026/m=11/d=24/h=00",
];

fn blob(hour: &str) -> String {
    format!("{TENANT}/{hour}/m=00/PT1H.json")
}

fn container(table: &str) -> String {
    format!("{PREFIX}{}", table.to_lowercase())
}

/// Lines of the given records, each ended by `\n`.
fn lines(numbers: impl IntoIterator<Item = u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for n in numbers {
        out.extend_from_slice(record(n).as_bytes());
        out.push(b'\n');
    }
    out
}

struct Export {
    azurite: Azurite,
    intake: Intake,
    dir: tempfile::TempDir,
}

impl Export {
    async fn start() -> Export {
        let azurite = Azurite::start().await.expect("start Azurite");
        for t in TABLES {
            azurite.create_container(&container(t)).await.unwrap();
        }
        Export {
            azurite,
            intake: Intake::start(KEY).await.unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn client(&self, table: &str) -> BlobClient {
        BlobClient::for_account(
            &self.azurite.blob_endpoint(),
            &container(table),
            StorageCredential::SharedKey(SharedKeyCredential::development()),
        )
        .unwrap()
    }

    /// Appends `data` to the hour blob of `table`, creating the blob when missing.
    async fn append(&self, table: &str, hour: &str, data: Vec<u8>) {
        let client = self.client(table);
        let name = blob(hour);
        match client.create_append_blob(&name, &[], &Condition::IfNotExists).await {
            Ok(_) => {}
            Err(e) if e.kind() == BlobErrorKind::Conflict => {}
            Err(e) => panic!("create {name}: {e}"),
        }
        client.append_block(&name, data).await.unwrap();
    }

    /// Appends the records `numbers` to the blobs of their tables in `hour`, in appends of at
    /// most `per_append` records.
    async fn append_records(&self, hour: &str, numbers: impl IntoIterator<Item = u64>, per_append: usize) {
        let mut by_table: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for n in numbers {
            by_table.entry(table_of(n)).or_default().push(n);
        }
        for (table, numbers) in by_table {
            for chunk in numbers.chunks(per_append) {
                self.append(table, hour, lines(chunk.iter().copied())).await;
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn source(&self, name: &str, extra: &str) -> String {
        let tables: Vec<String> = TABLES
            .iter()
            .chain(&["UrlClickEvents"]) // no container: looked for, never an error
            .map(|t| format!("\"{t}\""))
            .collect();
        format!(
            r#"
[[sources]]
kind = "storage"
name = "{name}"
account_url = "{endpoint}"
account_name = "devstoreaccount1"
shared_key = "${{TEST_STORAGE_KEY}}"
tables = [{tables}]
poll_interval = "200ms"
owner_id = "{name}-under-test"
ownership_update_interval = "1s"
ownership_expiry = "5s"
{extra}
"#,
            endpoint = self.azurite.blob_endpoint(),
            tables = tables.join(", "),
        )
    }

    fn sinks(&self) -> String {
        format!(
            "[[sinks]]\nkind = \"sekoia\"\nurl = \"{}\"\nintake_key = \"${{TEST_INTAKE_KEY}}\"\nlinger = \"50ms\"\nmax_backoff = \"1s\"\n\n[[sinks]]\nkind = \"files\"\ndir = \"{}\"\nflush_interval = \"200ms\"\n",
            self.intake.url(),
            self.path("archive").display()
        )
    }

    fn config(&self, file: &str, body: &str) -> PathBuf {
        let text = format!(
            "state_dir = \"{}\"\n[forwarder]\ncheckpoint_interval = \"200ms\"\nshutdown_timeout = \"20s\"\n{body}",
            self.path("state").display()
        );
        let path = self.path(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn command(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_defender-forwarder"));
        c.arg("--config")
            .arg(config)
            .args(args)
            .env("TEST_STORAGE_KEY", self.azurite.account_key())
            .env("TEST_STORAGE_CS", self.azurite.connection_string())
            .env("TEST_INTAKE_KEY", KEY)
            .env(
                "DEFENDER_LOG",
                std::env::var("DEFENDER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    async fn run_until_idle(&self, config: &Path, idle: f64) -> std::process::Output {
        let child = self
            .command(config, &["--exit-when-idle", &idle.to_string()])
            .spawn()
            .unwrap();
        let out = wait_output(child, LIMIT).await;
        assert!(out.status.success(), "{}", stderr(&out));
        out
    }

    /// Starts a forwarder in the background, logging to `<config>.log` (a pipe nobody reads
    /// would block it once full).
    fn spawn(&self, config: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_extension("log"))
            .unwrap();
        self.command(config, &[]).stderr(log).spawn().unwrap()
    }

    fn archived(&self) -> Vec<String> {
        archive_lines(&self.path("archive"))
            .into_iter()
            .map(|(_, l)| l)
            .collect()
    }

    fn dead_letters(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let Ok(days) = std::fs::read_dir(self.path("state").join("dead-letters")) else {
            return out;
        };
        for day in days {
            for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
                let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
                out.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
            }
        }
        out
    }
}

fn duplicates(counts: &BTreeMap<u64, usize>) -> usize {
    counts.values().map(|c| c - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_once_and_appends_and_half_lines_follow() {
    let env = Export::start().await;
    // 3000 records: five tables, three hour blobs over two days, each blob grown by many appends.
    let n = 3000u64;
    for (i, hour) in HOURS.iter().enumerate() {
        let i = i as u64;
        env.append_records(hour, i * 1000..(i + 1) * 1000, 37).await;
    }
    // Checkpoints and ownership in the same account, as the Azure SDKs lay them out.
    let config = env.config(
        "storage.toml",
        &format!(
            "[checkpoints]\nkind = \"blob\"\nconnection_string = \"${{TEST_STORAGE_CS}}\"\ncontainer = \"checkpoints\"\n{}\n{}",
            env.source("export", ""),
            env.sinks()
        ),
    );
    let out = env.run_until_idle(&config, 1.5).await;
    let log = stderr(&out);
    assert!(log.contains("insights-logs-advancedhunting-urlclickevents"), "{log}");

    // Exactly what was written, once, byte for byte; the archive too.
    let events = env.intake.events();
    assert_eq!(events.len() as u64, n, "no duplicates without faults");
    let expected: BTreeSet<String> = (0..n).map(record).collect();
    assert!(events.iter().cloned().collect::<BTreeSet<_>>() == expected);
    let archived = env.archived();
    assert_eq!(archived.len() as u64, n);
    assert!(archived.into_iter().collect::<BTreeSet<_>>() == expected);

    // One checkpoint per hour blob, at its end; one ownership record per container.
    let store = BlobClient::for_account(
        &env.azurite.blob_endpoint(),
        "checkpoints",
        StorageCredential::SharedKey(SharedKeyCredential::development()),
    )
    .unwrap();
    let account = format!("127.0.0.1:{}_devstoreaccount1", env.azurite.port());
    let records = store.list_blobs(&account).await.unwrap();
    for t in TABLES {
        for hour in HOURS {
            let name = format!(
                "{account}/{}/$storage/checkpoint/{}",
                container(t),
                blob(hour).to_lowercase().replace('/', "_")
            );
            let cp = records
                .iter()
                .find(|b| b.name == name)
                .unwrap_or_else(|| panic!("no {name} in {records:#?}"));
            let length = env.client(t).get_properties(&blob(hour)).await.unwrap().content_length;
            assert_eq!(cp.metadata["offset"], length.to_string());
            assert_eq!(cp.metadata["sequencenumber"], length.to_string());
        }
        let start = format!("{account}/{}/$storage/checkpoint/$start", container(t));
        assert!(
            records
                .iter()
                .any(|b| b.name == start && b.metadata["offset"] == "earliest")
        );
        let lease = format!("{account}/$containers/$storage/ownership/{}", container(t));
        assert!(records.iter().any(|b| b.name == lease), "{lease}");
    }

    // While a forwarder runs: more lines in the newest hour, one of them written in two halves
    // with a pause between, and a new hour blob.
    let mut child = env.spawn(&config);
    let newest = HOURS[2];
    let table = table_of(n);
    let half = record(n);
    let (first, second) = half.split_at(half.len() / 2);
    let mut data = lines([n + 5]);
    data.extend_from_slice(first.as_bytes());
    env.append(table, newest, data).await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // several polls see the half line
    let mut data = second.as_bytes().to_vec();
    data.push(b'\n');
    data.extend_from_slice(&lines([n + 10]));
    env.append(table, newest, data).await;
    env.append_records("y=2026/m=11/d=24/h=01", n + 100..n + 200, 10).await;
    let want = usize::try_from(n).unwrap() + 3 + 100;
    let log = || std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(
        env.intake.wait_for(want, LIMIT).await,
        "only {}:\n{}",
        env.intake.event_count(),
        log()
    );
    sigterm(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exit: {status}\n{}", log());
    // A restart has nothing left to send.
    env.run_until_idle(&config, 1.0).await;

    let events = env.intake.events();
    let counts = seq_counts(&events);
    assert_eq!(events.len(), want, "duplicates or extras: {}", duplicates(&counts));
    assert!(events.contains(&half), "the line written in two halves arrives whole");
    for s in (0..n).chain([n, n + 5, n + 10]).chain(n + 100..n + 200) {
        assert_eq!(counts.get(&s), Some(&1), "record {s}");
    }
    let archived = env.archived();
    assert_eq!(seq_counts(&archived).len(), want);
    assert_eq!(archived.len(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_line_is_dead_lettered_with_its_blob_and_offset() {
    let env = Export::start().await;
    let table = TABLES[0];
    let good_before = lines((0..50).map(|i| i * 5));
    let bad = b"{\"time\": \"2026-11-24T00:00:00Z\", \"properties\": {\"no\": \"category\"}}\n".to_vec();
    let broken = b"{\"time\": \"2026-11-24T00:00:00Z\", \"category\": \"AdvancedHunting-X\", \"pro\n".to_vec();
    let good_after = lines((50..100).map(|i| i * 5));
    let mut data = good_before.clone();
    let bad_at = data.len();
    data.extend_from_slice(&bad);
    let broken_at = data.len();
    data.extend_from_slice(&broken);
    // A CRLF line and a blank line are fine.
    data.extend_from_slice(record(1000).as_bytes());
    data.extend_from_slice(b"\r\n\n");
    data.extend_from_slice(&good_after);
    env.append(table, HOURS[0], data).await;
    let config = env.config("bad.toml", &format!("{}\n{}", env.source("export", ""), env.sinks()));
    env.run_until_idle(&config, 1.5).await;

    let counts = seq_counts(&env.intake.events());
    assert_eq!(counts.len(), 101);
    assert!(counts.values().all(|c| *c == 1));
    let letters = env.dead_letters();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let partition = format!("{}/{}", container(table), blob(HOURS[0]));
    for (letter, at, raw) in [(&letters[0], bad_at, &bad), (&letters[1], broken_at, &broken)] {
        assert_eq!(letter["sink"], "forwarder");
        assert_eq!(letter["source"], "export");
        assert_eq!(letter["partition"], partition.as_str());
        assert_eq!(letter["offset"], at.to_string().as_str(), "{letter}");
        assert_eq!(
            letter["record"].as_str().unwrap().as_bytes(),
            raw.trim_ascii_end(),
            "{letter}"
        );
        assert!(
            letter["reason"].as_str().unwrap().contains(&format!("byte {at}")),
            "{letter}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing() {
    let env = Export::start().await;
    let n = 20_000u64;
    for (i, hour) in HOURS.iter().take(2).enumerate() {
        let i = i as u64;
        env.append_records(hour, i * (n / 2)..(i + 1) * (n / 2), 500).await;
    }
    let config = env.config(
        "kill.toml",
        &format!(
            "max_in_flight_mib = 2\n{}\n{}",
            env.source("export", ""),
            env.sinks().replace("linger", "batch_events = 50\nlinger")
        ),
    );
    // A slow intake (about 5000 records/s) keeps each run going for a while: kills land mid-run,
    // after checkpoints were written, not only in the first moments.
    env.intake.set_faults(Faults {
        slow: 1.0,
        slow_delay: Duration::from_millis(40),
        ..Faults::default()
    });
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let mut seed = (now.as_secs() ^ u64::from(now.subsec_nanos()) << 20) | 1;
    eprintln!("seed {seed}");
    let rounds = 5u64;
    let mut delivered_before_kills = 0;
    let mut total = n;
    let mut pending_half: Option<(String, &str)> = None;
    let mut halves = Vec::new();
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // More lines arrive in the newest hour between runs, one of them cut across two rounds.
        let table = TABLES[usize::try_from(round).unwrap() % TABLES.len()];
        let mut data = Vec::new();
        if let Some((rest, t)) = pending_half.take() {
            // Finish the other table's half line first.
            let mut tail = rest.into_bytes();
            tail.push(b'\n');
            env.append(t, HOURS[2], tail).await;
        }
        for s in total..total + 200 {
            if table_of(s) == table {
                data.extend_from_slice(record(s).as_bytes());
                data.push(b'\n');
            }
        }
        // A record of this table, numbered apart from the others.
        let h = (total + 1000..total + 1010).find(|s| table_of(*s) == table).unwrap();
        halves.push(h);
        let cut = record(h);
        let (first, second) = cut.split_at(cut.len() / 3);
        data.extend_from_slice(first.as_bytes());
        env.append(table, HOURS[2], data).await;
        env.append_records(HOURS[2], (total..total + 200).filter(|s| table_of(*s) != table), 50)
            .await;
        pending_half = Some((second.to_owned(), table));
        total += 200;

        let before = env.intake.event_count();
        let mut child = env.spawn(&config);
        let started = std::time::Instant::now();
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(seed % 300)).await;
        } else {
            let target = before + 1000 + usize::try_from(seed % 4000).unwrap();
            env.intake.wait_for(target, Duration::from_secs(20)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        delivered_before_kills += env.intake.event_count() - before;
        eprintln!(
            "round {round}: killed after {:?}, intake {before} -> {}",
            started.elapsed(),
            env.intake.event_count()
        );
    }
    if let Some((rest, t)) = pending_half.take() {
        let mut tail = rest.into_bytes();
        tail.push(b'\n');
        env.append(t, HOURS[2], tail).await;
    }
    env.intake.set_faults(Faults::default());
    env.run_until_idle(&config, 1.5).await;

    let expected: Vec<u64> = (0..total).chain(halves.iter().copied()).collect();
    let counts = seq_counts(&env.intake.events());
    let missing: Vec<u64> = expected.iter().copied().filter(|i| !counts.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "intake lost {} records, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(counts.len(), expected.len(), "records that were never written");
    let archived = seq_counts(&env.archived());
    let missing: Vec<u64> = expected.iter().copied().filter(|i| !archived.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "archive lost {} records, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for h in &halves {
        assert!(env.intake.events().contains(&record(*h)), "half line {h} arrives whole");
    }
    eprintln!(
        "{rounds} SIGKILLs, {} records ({delivered_before_kills} delivered before the kills): lost 0; duplicates intake {}, archive {}",
        expected.len(),
        duplicates(&counts),
        duplicates(&archived)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_storage_sources_feed_the_same_sinks() {
    let hub = common::Env::start(2).await;
    let env = Export::start().await;
    hub.send(common::bodies(0..1000, 50));
    env.append_records(HOURS[0], 1000..2000, 100).await;
    let sinks = format!(
        "[[sinks]]\nkind = \"sekoia\"\nurl = \"{}\"\nintake_key = \"${{TEST_INTAKE_KEY}}\"\nlinger = \"50ms\"\n\n[[sinks]]\nkind = \"files\"\ndir = \"{}\"\nflush_interval = \"200ms\"\n",
        hub.intake.url(),
        hub.path("archive").display()
    );
    let config = hub.config(&format!("{}\n{sinks}", env.source("export", "")));
    let mut cmd = hub.command(&config, &["--exit-when-idle", "1.5"]);
    cmd.env("TEST_STORAGE_KEY", env.azurite.account_key())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = wait_output(cmd.spawn().unwrap(), LIMIT).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let expected: BTreeSet<String> = (0..2000).map(record).collect();
    let events = hub.intake.events();
    assert_eq!(events.len(), 2000);
    assert!(events.into_iter().collect::<BTreeSet<_>>() == expected);
    let archived: Vec<String> = archive_lines(&hub.path("archive"))
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(archived.len(), 2000);
    assert!(archived.into_iter().collect::<BTreeSet<_>>() == expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_containers_and_lose_nothing() {
    let env = Export::start().await;
    let n = 5000u64;
    env.append_records(HOURS[0], 0..n, 100).await;
    // One checkpoint directory, two instances with their own state (and only the intake sink:
    // an archive directory belongs to one forwarder).
    let checkpoints = env.path("checkpoints");
    let sink = format!(
        "[[sinks]]\nkind = \"sekoia\"\nurl = \"{}\"\nintake_key = \"${{TEST_INTAKE_KEY}}\"\nlinger = \"50ms\"\n",
        env.intake.url()
    );
    let configs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|who| {
            let text = format!(
                "state_dir = \"{}\"\n[forwarder]\ncheckpoint_interval = \"200ms\"\n[checkpoints]\ndir = \"{}\"\n{}\n{sink}",
                env.path(&format!("state-{who}")).display(),
                checkpoints.display(),
                env.source("export", "").replace("export-under-test", &format!("instance-{who}")),
            );
            let path = env.path(&format!("{who}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let a = env.spawn(&configs[0]);
    let b = env.spawn(&configs[1]);
    assert!(env.intake.wait_for(usize::try_from(n).unwrap(), LIMIT).await);
    // The first instance may have read everything before the second claimed its share: wait for
    // the split (it takes a balancing cycle or two), then append more lines.
    let log = |p: &PathBuf| std::fs::read_to_string(p.with_extension("log")).unwrap_or_default();
    let reading = |log: &str| log.matches("container acquired").count();
    let deadline = std::time::Instant::now() + LIMIT;
    while (reading(&log(&configs[0])) == 0 || reading(&log(&configs[1])) == 0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // More lines once both run: each container is read by one of them.
    env.append_records(HOURS[1], n..n + 500, 50).await;
    let want = usize::try_from(n).unwrap() + 500;
    assert!(env.intake.wait_for(want, LIMIT).await, "{}", env.intake.event_count());
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm(a.id());
    sigterm(b.id());
    let (a, b) = (wait_output(a, LIMIT).await, wait_output(b, LIMIT).await);
    let (log_a, log_b) = (log(&configs[0]), log(&configs[1]));
    assert!(a.status.success() && b.status.success(), "{log_a}\n{log_b}");
    let counts = seq_counts(&env.intake.events());
    assert_eq!(counts.len(), want);
    eprintln!(
        "two instances: {want} records, duplicates {}; containers taken: a {}, b {}",
        duplicates(&counts),
        reading(&log_a),
        reading(&log_b)
    );
    if std::env::var("SHOW_LOGS").is_ok() {
        eprintln!("--- a\n{log_a}\n--- b\n{log_b}");
    }
    assert!(
        reading(&log_a) > 0 && reading(&log_b) > 0,
        "one instance read everything:\n{log_a}\n{log_b}"
    );
}

/// Where each record's line ends in its table's hour blob, for records appended in order by
/// `append_records` into one hour.
fn line_ends(numbers: impl IntoIterator<Item = u64>) -> BTreeMap<u64, (String, u64)> {
    let mut at: BTreeMap<&str, u64> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for n in numbers {
        let end = at.entry(table_of(n)).or_default();
        *end += record(n).len() as u64 + 1;
        out.insert(n, (container(table_of(n)), *end));
    }
    out
}

/// Per container, the byte offset its hour blob is checkpointed to, from the file store.
fn blob_checkpoints(state: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![state.join("checkpoints")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains("/checkpoint/") && p.to_string_lossy().ends_with("pt1h.json.json") {
                let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                // .../<container>/$storage/checkpoint/<blob key>.json
                let container = p
                    .ancestors()
                    .nth(3)
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(container, v["offset"].as_str().unwrap().parse().unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkills_the_storage_example_reads_again_at_once_and_exits_only_when_caught_up() {
    let env = Export::start().await;
    let n = 20_000u64;
    env.append_records(HOURS[0], 0..n, 100).await;
    let ends = line_ends(0..n);
    env.intake.set_faults(Faults {
        status_429: 0.03,
        retry_after_secs: 0,
        status_503: 0.03,
        drop_connection: 0.03,
        ..Faults::default()
    });
    // `examples/storage-to-sekoia.toml` with its documented variables only: default owner id,
    // expiry and poll interval.
    let state = env.path("state");
    let command = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_defender-forwarder"));
        c.arg("--config")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/storage-to-sekoia.toml"))
            .args(args)
            .env_clear()
            .env("DEFENDER_STORAGE_CONNECTION_STRING", env.azurite.connection_string())
            .env("DEFENDER_STATE_DIR", &state)
            .env("SEKOIA_INTAKE_URL", env.intake.url())
            .env("SEKOIA_INTAKE_KEY", KEY)
            .stdin(Stdio::null());
        c
    };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let mut seed = (now.as_secs() ^ u64::from(now.subsec_nanos()) << 20) | 1;
    eprintln!("seed {seed}");
    let mut could_repeat = BTreeSet::new();
    let mut first_read = Vec::new();
    for round in 0..5 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let before = env.intake.event_count();
        let started = std::time::Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.path("export.log"))
            .unwrap();
        let mut child = command(&[]).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let lifetime = Duration::from_millis(500 + seed % 2500);
        let mut reading = None;
        while started.elapsed() < lifetime {
            if reading.is_none() && env.intake.event_count() > before {
                reading = Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let checkpoints = blob_checkpoints(&state);
        let delivered = seq_counts(&env.intake.events());
        let at_risk: BTreeSet<u64> = delivered
            .keys()
            .filter(|s| {
                let (c, end) = &ends[s];
                checkpoints.get(c).is_none_or(|done| end > done)
            })
            .copied()
            .collect();
        eprintln!(
            "round {round}: killed after {lifetime:?}; first record after {reading:?}; {} not yet checkpointed",
            at_risk.len()
        );
        could_repeat.extend(at_risk);
        first_read.extend(reading);
    }
    env.intake.set_faults(Faults::default());
    let mut cmd = command(&["--exit-when-idle", "5"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let out = wait_output(cmd.spawn().unwrap(), Duration::from_secs(180)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = seq_counts(&env.intake.events());
    assert_eq!(counts.len(), usize::try_from(n).unwrap(), "every record arrived");
    let unexplained: Vec<u64> = counts
        .iter()
        .filter(|(s, c)| **c > 1 && !could_repeat.contains(s))
        .map(|(s, _)| *s)
        .collect();
    assert!(
        unexplained.is_empty(),
        "duplicates that were checkpointed before a kill: {unexplained:?}"
    );
    let slowest = first_read.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(10),
        "a restart took {slowest:?} to read: {first_read:?}"
    );
    eprintln!(
        "5 SIGKILLs, {n} records from the Storage export: lost 0; duplicates {} (at most {} in flight at the kills); restart to first record: {first_read:?}",
        duplicates(&counts),
        could_repeat.len()
    );
}

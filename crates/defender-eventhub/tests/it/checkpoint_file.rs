//! The file checkpoint store under abuse: `kill -9` of a writer at random moments, and several
//! processes sharing one directory.
//!
//! The writer is this test binary re-executed with `DEFENDER_CHECKPOINT_CHILD` set: the test
//! `child_writer` then loops writing checkpoints (and renewing ownerships) and prints `ACK` lines
//! after each write that returned `Ok`.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use defender_eventhub::checkpoint::FileCheckpointStore;

const CHILD_ENV: &str = "DEFENDER_CHECKPOINT_CHILD";
const NS: &str = "crash.servicebus.windows.net";
const HUB: &str = "hub";
const GROUP: &str = "$default";
const PARTITIONS: [&str; 3] = ["0", "1", "2"];

/// The offset a writer stores with a sequence number: a reader can tell a mixed-up record.
fn offset_for(sequence: i64) -> String {
    format!("{}", sequence * 1000 + 7)
}

fn checkpoint(partition: &str, sequence: i64) -> Checkpoint {
    Checkpoint {
        fully_qualified_namespace: NS.to_owned(),
        event_hub_name: HUB.to_owned(),
        consumer_group: GROUP.to_owned(),
        partition_id: partition.to_owned(),
        offset: Some(offset_for(sequence)),
        sequence_number: Some(sequence),
    }
}

/// The child: continue from the stored checkpoints and write forever (until killed).
#[tokio::test]
async fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // Only does something when re-executed by `kill_9_never_tears_or_loses_a_checkpoint`.
    };
    let store = FileCheckpointStore::open(PathBuf::from(dir)).unwrap();
    let mut next: BTreeMap<String, i64> = PARTITIONS.iter().map(|p| ((*p).to_owned(), 1)).collect();
    for stored in store.list_checkpoints(NS, HUB, GROUP).await.unwrap() {
        next.insert(stored.partition_id, stored.sequence_number.unwrap() + 1);
    }
    let owner = format!("child-{}", std::process::id());
    let mut etag = store
        .list_ownerships(NS, HUB, GROUP)
        .await
        .unwrap()
        .into_iter()
        .find(|o| o.partition_id == "0")
        .and_then(|o| o.etag);
    let mut round: u64 = 0;
    loop {
        for partition in PARTITIONS {
            let sequence = next[partition];
            store.update_checkpoint(checkpoint(partition, sequence)).await.unwrap();
            println!("ACK {partition} {sequence}");
            next.insert(partition.to_owned(), sequence + 1);
        }
        // Ownership records are rewritten too (a renewal chain that must never break).
        round += 1;
        if round.is_multiple_of(4) {
            let claim = Ownership {
                fully_qualified_namespace: NS.to_owned(),
                event_hub_name: HUB.to_owned(),
                consumer_group: GROUP.to_owned(),
                partition_id: "0".to_owned(),
                owner_id: Some(owner.clone()),
                etag: etag.clone(),
                last_modified_time: None,
            };
            let won = store.claim_ownership(&[claim]).await.unwrap();
            assert_eq!(won.len(), 1, "the only writer always renews");
            etag = won[0].etag.clone();
        }
    }
}

fn spawn_child(dir: &Path) -> (Child, mpsc::Receiver<(String, i64)>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "checkpoint_file::child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness prints `test child_writer ... ` without a newline before the first ACK.
            let Some(start) = line.find("ACK ") else { continue };
            let mut parts = line[start..].split_whitespace();
            if parts.next() == Some("ACK") {
                let partition = parts.next().unwrap().to_owned();
                let sequence = parts.next().unwrap().parse().unwrap();
                if sender.send((partition, sequence)).is_err() {
                    break;
                }
            }
        }
    });
    (child, receiver)
}

/// Every record file parses (temporary files may be torn: they are not records).
fn all_records_parse(dir: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") && !name.starts_with('.') {
                let bytes = std::fs::read(&path).unwrap();
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    panic!("{} is torn: {e}: {:?}", path.display(), String::from_utf8_lossy(&bytes))
                });
                assert!(value.get("etag").is_some(), "{}", path.display());
                count += 1;
            }
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_tears_or_loses_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileCheckpointStore::open(dir.path()).unwrap();
    // Highest sequence acknowledged (write returned Ok) per partition, over all children.
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    // Highest sequence seen stored, per partition: must never go down.
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    let mut reads_while_writing = 0u32;

    for kill in 0..20 {
        // Nobody writes now: this is exactly what the next child starts from.
        let before: BTreeMap<String, i64> = store
            .list_checkpoints(NS, HUB, GROUP)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.partition_id, c.sequence_number.unwrap()))
            .collect();
        let (mut child, acks) = spawn_child(dir.path());
        // Wait for the child's first write, so the kill lands in its write loop.
        let first = acks
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("kill {kill}: the child never wrote"));
        acked.insert(first.0.clone(), first.1.max(acked.get(&first.0).copied().unwrap_or(0)));

        // Read concurrently with the writer for a random while, then SIGKILL it.
        let until = Instant::now() + Duration::from_millis(rand::random_range(0..60));
        while Instant::now() < until {
            let listed = store
                .list_checkpoints(NS, HUB, GROUP)
                .await
                .expect("a reader never sees a torn record");
            for c in listed {
                let sequence = c.sequence_number.unwrap();
                assert_eq!(
                    c.offset.as_deref(),
                    Some(offset_for(sequence).as_str()),
                    "a consistent record"
                );
                let previous = seen.insert(c.partition_id.clone(), sequence).unwrap_or(0);
                assert!(
                    sequence >= previous,
                    "partition {} went back from {previous} to {sequence}",
                    c.partition_id
                );
            }
            reads_while_writing += 1;
            tokio::task::yield_now().await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Every ACK printed before the kill is in the pipe.
        while let Ok((partition, sequence)) = acks.recv_timeout(Duration::from_millis(200)) {
            let entry = acked.entry(partition).or_insert(0);
            *entry = (*entry).max(sequence);
        }

        all_records_parse(dir.path());
        let stored: BTreeMap<String, i64> = store
            .list_checkpoints(NS, HUB, GROUP)
            .await
            .expect("records parse after a kill")
            .into_iter()
            .map(|c| {
                let sequence = c.sequence_number.unwrap();
                assert_eq!(c.offset.as_deref(), Some(offset_for(sequence).as_str()));
                (c.partition_id, sequence)
            })
            .collect();
        for (partition, sequence) in &stored {
            let previous = seen.insert(partition.clone(), *sequence).unwrap_or(0);
            assert!(
                *sequence >= previous,
                "kill {kill}: partition {partition} went back from {previous} to {sequence}"
            );
        }
        for (partition, sequence) in &acked {
            let stored = stored.get(partition).copied().unwrap_or(0);
            assert!(
                stored >= *sequence,
                "kill {kill}: partition {partition} acknowledged {sequence} but {stored} is stored"
            );
            // At most the one write in flight when the kill landed is stored without an ACK.
            let baseline = (*sequence).max(before.get(partition).copied().unwrap_or(0));
            assert!(
                stored <= baseline + 1,
                "kill {kill}: partition {partition}: {stored} stored, > {baseline} + 1"
            );
        }
    }
    eprintln!("20 kills; acknowledged {acked:?}; stored {seen:?}; {reads_while_writing} listings during writes");
    assert!(acked.values().all(|s| *s > 20), "the children made progress: {acked:?}");
    assert!(reads_while_writing > 0);
    // The ownership chain survived too: it lists, and its record parses.
    let ownerships = store.list_ownerships(NS, HUB, GROUP).await.unwrap();
    assert!(ownerships.len() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_directory_claim_exclusively() {
    // Several processes (children) race for the same fresh partition; exactly one may win.
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let partition = format!("race-{round}");
        let children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "checkpoint_file::child_claimer",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env("DEFENDER_CHECKPOINT_CLAIMER", dir.path())
                    .env("DEFENDER_CHECKPOINT_CLAIMER_PARTITION", &partition)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut wins = 0;
        let mut finished = 0;
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success());
            let stdout = String::from_utf8_lossy(&output.stdout);
            // The harness prints `test child_claimer ... ` on the same line.
            wins += stdout.matches("CLAIM-WON").count();
            finished += stdout.matches("CLAIM-WON").count() + stdout.matches("CLAIM-LOST").count();
        }
        assert_eq!(finished, 4, "round {round}: every claimer reported");
        assert_eq!(wins, 1, "round {round}: exactly one process wins");
    }
}

/// A child for `processes_sharing_a_directory_claim_exclusively`: claims a partition many times
/// (first claim, then renewals with a listed etag) and reports whether its first claim won.
#[tokio::test]
async fn child_claimer() {
    let Some(dir) = std::env::var_os("DEFENDER_CHECKPOINT_CLAIMER") else {
        return;
    };
    let partition = std::env::var("DEFENDER_CHECKPOINT_CLAIMER_PARTITION").unwrap();
    let store = FileCheckpointStore::open(PathBuf::from(dir)).unwrap();
    let claim = Ownership {
        fully_qualified_namespace: NS.to_owned(),
        event_hub_name: HUB.to_owned(),
        consumer_group: GROUP.to_owned(),
        partition_id: partition,
        owner_id: Some(format!("process-{}", std::process::id())),
        etag: None,
        last_modified_time: None,
    };
    let won = store.claim_ownership(&[claim]).await.unwrap();
    println!("{}", if won.len() == 1 { "CLAIM-WON" } else { "CLAIM-LOST" });
}

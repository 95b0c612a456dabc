//! Helpers for the reader tests: Defender-like bodies, a collector that checkpoints what it
//! "delivers", and deadlines instead of sleeps.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defender_eventhub::{Batch, Reader};
use tokio::sync::mpsc;

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=defender_eventhub=debug`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A message body of `count` `DeviceEvents` records numbered from `first` (the `Seq` column).
pub fn body(first: u64, count: u64) -> Vec<u8> {
    let records: Vec<String> = (first..first + count)
        .map(|n| {
            format!(
                r#"{{"time":"2024-05-14T09:31:07.4473310Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","operationName":"Publish","category":"AdvancedHunting-DeviceEvents","properties":{{"Timestamp":"2024-05-14T09:31:00.0000000Z","DeviceName":"ws-{n:05}.example.com","ActionType":"PowerShellCommand","Seq":{n}}}}}"#
            )
        })
        .collect();
    format!(r#"{{"records":[{}]}}"#, records.join(",")).into_bytes()
}

/// The `Seq` numbers in a body.
pub fn seqs(body: &[u8]) -> Vec<u64> {
    defender_schema::split_body(body)
        .unwrap()
        .into_iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.unwrap().properties().get()).unwrap();
            v["Seq"].as_u64().unwrap()
        })
        .collect()
}

/// What one reader delivered: records by partition, in the order they came.
#[derive(Default, Debug)]
pub struct Delivered {
    pub by_partition: BTreeMap<String, Vec<u64>>,
    pub event_seqs: BTreeMap<String, Vec<i64>>,
}

impl Delivered {
    pub fn records(&self) -> BTreeSet<u64> {
        self.by_partition.values().flatten().copied().collect()
    }

    pub fn count(&self) -> usize {
        self.by_partition.values().map(Vec::len).sum()
    }
}

/// Drains a reader's batches: records what arrived, then checkpoints the last event of each
/// batch (as a sink would once the batch is delivered).
pub fn collect(
    reader: Arc<tokio::sync::RwLock<Option<Reader>>>,
    mut rx: mpsc::Receiver<Batch>,
) -> Arc<Mutex<Delivered>> {
    let delivered = Arc::new(Mutex::new(Delivered::default()));
    let out = delivered.clone();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            {
                let mut d = out.lock().unwrap();
                let p = batch.partition.partition_id.clone();
                for e in &batch.messages {
                    d.by_partition
                        .entry(p.clone())
                        .or_default()
                        .extend(seqs(e.body.as_deref().unwrap()));
                    d.event_seqs.entry(p.clone()).or_default().push(e.sequence_number);
                }
            }
            let last = batch.position(batch.messages.len() - 1);
            if let Some(reader) = reader.read().await.as_ref() {
                // A failing store (Azurite down) is retried by the next batch's checkpoint.
                let _ = reader.checkpoint(&last).await;
            }
        }
    });
    delivered
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! The reader against the emulator with the real Event Hubs client: everything read in
//! per-partition order, resume after the file checkpoint, recovery from dropped connections.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use crate::support::{body, collect, eventually};
use azure_messaging_eventhubs::models::EventData;
use azure_messaging_eventhubs::{EventDataBatchOptions, ProducerClient};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_eventhub::checkpoint::FileCheckpointStore;
use defender_eventhub::{Balancing, Connection, Reader, ReaderConfig, Secret, StartFrom};
use tokio::sync::{RwLock, mpsc};

async fn emulator(partitions: u32) -> Emulator {
    support::init_logs();
    Emulator::start(EmulatorConfig {
        hubs: vec![HubConfig::new("defender", partitions)],
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

fn config(emulator: &Emulator, owner: &str) -> ReaderConfig {
    let mut c = ReaderConfig::new(Connection::ConnectionString(Secret::new(
        emulator.connection_string("defender"),
    )));
    c.start = StartFrom::Earliest;
    owner.clone_into(&mut c.owner_id);
    c.balancing = Balancing {
        update_interval: Duration::from_millis(300),
        expiry: Duration::from_secs(3),
    };
    c.stall_check = Duration::from_secs(1);
    c
}

/// Sends `messages` bodies of `per_message` records each, round-robin over the partitions, with
/// the real producer client.
async fn send(emulator: &Emulator, first_record: u64, messages: u64, per_message: u64, partitions: u32) {
    let producer = ProducerClient::builder()
        .with_custom_endpoint(emulator.endpoint())
        .open_with_connection_string(&emulator.connection_string("defender"), None)
        .await
        .unwrap();
    for p in 0..partitions {
        let batch = producer
            .create_batch(Some(EventDataBatchOptions {
                partition_id: Some(p.to_string()),
                ..Default::default()
            }))
            .await
            .unwrap();
        let mut m = u64::from(p);
        while m < messages {
            let first = first_record + m * per_message;
            let event = EventData::builder().with_body(body(first, per_message)).build();
            assert!(batch.try_add_event_data(event, None).unwrap(), "batch full");
            m += u64::from(partitions);
        }
        producer.send_batch(batch, None).await.unwrap();
    }
    producer.close().await.unwrap();
}

async fn start(
    config: ReaderConfig,
    store: Arc<FileCheckpointStore>,
) -> (Arc<RwLock<Option<Reader>>>, Arc<std::sync::Mutex<support::Delivered>>) {
    let (tx, rx) = mpsc::channel(64);
    let reader = Reader::start(config, Some(store), tx).await.unwrap();
    let reader = Arc::new(RwLock::new(Some(reader)));
    let delivered = collect(reader.clone(), rx);
    (reader, delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_everything_in_order_then_resumes_after_the_checkpoint() {
    let emulator = emulator(4).await;
    // 10,000 records in 200 messages of 50, over 4 partitions.
    send(&emulator, 0, 200, 50, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileCheckpointStore::open(dir.path()).unwrap());

    let (reader, delivered) = start(config(&emulator, "first"), store.clone()).await;
    eventually(Duration::from_secs(60), "10,000 records", || async {
        delivered.lock().unwrap().records().len() == 10_000
    })
    .await;
    {
        let d = delivered.lock().unwrap();
        assert_eq!(d.records(), (0..10_000).collect(), "every record");
        assert_eq!(d.count(), 10_000, "one reader, no ownership change: no duplicate");
        for (partition, seqs) in &d.event_seqs {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "partition {partition} out of order"
            );
            assert_eq!(seqs.len(), 50, "partition {partition}");
        }
        for (partition, records) in &d.by_partition {
            // Round-robin: partition p holds messages p, p+4, ...; each message's records ascend.
            assert!(
                records.windows(2).all(|w| w[0] < w[1]),
                "partition {partition} records out of order"
            );
        }
    }
    // Let the last checkpoints land, then stop cleanly (ownership released).
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.write().await.take().unwrap().shutdown().await;

    // More arrives while nobody reads; a new instance picks up exactly that.
    send(&emulator, 10_000, 20, 50, 4).await;
    let (reader, delivered) = start(config(&emulator, "second"), store).await;
    eventually(Duration::from_secs(30), "1,000 new records", || async {
        delivered.lock().unwrap().count() >= 1_000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        delivered.lock().unwrap().records(),
        (10_000..11_000).collect(),
        "only what came after"
    );
    reader.write().await.take().unwrap().shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_and_skip_nothing() {
    let emulator = emulator(4).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileCheckpointStore::open(dir.path()).unwrap());
    let (reader, delivered) = start(config(&emulator, "flaky"), store).await;
    let mut next = 0;
    for round in 0..5 {
        for p in 0..4 {
            let bodies = (0..10).map(|i| body(next + i * 20, 20)).collect();
            emulator.append("defender", Some(&p.to_string()), bodies).unwrap();
            next += 200;
        }
        let want = usize::try_from(next).unwrap();
        eventually(Duration::from_secs(30), &format!("round {round}"), || async {
            delivered.lock().unwrap().count() >= want / 2
        })
        .await;
        emulator.drop_connections();
    }
    let total = usize::try_from(next).unwrap();
    eventually(Duration::from_secs(60), "every record after the drops", || async {
        delivered.lock().unwrap().records().len() == total
    })
    .await;
    {
        let d = delivered.lock().unwrap();
        assert_eq!(d.records(), (0..next).collect());
        assert_eq!(
            d.count(),
            total,
            "replays after reconnects are dropped, not delivered twice"
        );
        for seqs in d.event_seqs.values() {
            assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]), "no gap, no repeat: {seqs:?}");
        }
    }
    reader.write().await.take().unwrap().shutdown().await;
    emulator.shutdown().await;
}

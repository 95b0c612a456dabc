//! Reads 200,000 records (~1 KiB each, in Defender envelopes of 100) from the emulator over 4
//! partitions with the real Event Hubs client, and reports:
//! - how fast the emulator takes them in (in-process append),
//! - the raw client: one `EventReceiver` per partition, bodies counted, nothing else;
//! - the reader: ownership through a file checkpoint store, per-partition clients, dedupe,
//!   batches over a channel, every body split into records (as the forwarder does).
//!
//! `cargo bench -p defender-eventhub --bench read` (add `-- --records N` for another size).

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::{ConsumerClient, OpenReceiverOptions, StartLocation, StartPosition};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_eventhub::checkpoint::FileCheckpointStore;
use defender_eventhub::{Connection, Reader, ReaderConfig, Secret, StartFrom};
use futures::StreamExt;

const PARTITIONS: u32 = 4;
const PER_MESSAGE: usize = 100;

fn record(i: usize) -> String {
    let pad = "x".repeat(560);
    format!(
        r#"{{"time":"2024-05-14T09:31:07.4473310Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","operationName":"Publish","category":"AdvancedHunting-DeviceProcessEvents","properties":{{"Timestamp":"2024-05-14T09:31:00.1234567Z","DeviceName":"ws-{i:06}.corp.example.com","ActionType":"ProcessCreated","FileName":"powershell.exe","ProcessId":{i},"ProcessCommandLine":"powershell.exe -NoProfile -File C:\\scripts\\{pad}.ps1","SHA256":"{i:064x}","ReportId":{i}}}}}"#
    )
}

fn body(first: usize) -> Vec<u8> {
    let records: Vec<String> = (first..first + PER_MESSAGE).map(record).collect();
    format!(r#"{{"records":[{}]}}"#, records.join(",")).into_bytes()
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn rate(what: &str, records: usize, bytes: usize, took: Duration) {
    let s = took.as_secs_f64();
    let (r, b) = (records as f64, bytes as f64);
    println!(
        "{what:<44} {records:>8} records in {s:6.2} s = {:>9.0} records/s, {:>7.1} MB/s ({:>6.0} events/s)",
        r / s,
        b / s / 1e6,
        r / s / PER_MESSAGE as f64
    );
}

async fn raw_client(emulator: &Emulator, events: usize, prefetch: u32) -> Duration {
    let consumer = ConsumerClient::builder()
        .with_custom_endpoint(emulator.endpoint())
        .open_with_connection_string(&emulator.connection_string("defender"), None)
        .await
        .unwrap();
    let consumer = Arc::new(consumer);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PARTITIONS {
        let consumer = consumer.clone();
        let want = events / PARTITIONS as usize;
        tasks.push(tokio::spawn(async move {
            let receiver = consumer
                .open_receiver_on_partition(
                    p.to_string(),
                    Some(OpenReceiverOptions {
                        prefetch: Some(prefetch),
                        start_position: Some(StartPosition {
                            location: StartLocation::Earliest,
                            inclusive: true,
                        }),
                        ..Default::default()
                    }),
                )
                .await
                .unwrap();
            let mut n = 0;
            let mut stream = std::pin::pin!(receiver.stream_events());
            while n < want {
                let e = stream.next().await.unwrap().unwrap();
                std::hint::black_box(e.event_data().body().map(<[u8]>::len));
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

async fn reader(emulator: &Emulator, records: usize, prefetch: u32) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileCheckpointStore::open(dir.path()).unwrap());
    let mut config = ReaderConfig::new(Connection::ConnectionString(Secret::new(
        emulator.connection_string("defender"),
    )));
    config.start = StartFrom::Earliest;
    config.prefetch = prefetch;
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let start = Instant::now();
    let reader = Reader::start(config, Some(store), tx).await.unwrap();
    let mut seen = 0;
    while seen < records {
        let batch = rx.recv().await.unwrap();
        for e in &batch.messages {
            seen += defender_schema::split_body(e.body.as_deref().unwrap()).unwrap().len();
        }
        reader
            .checkpoint(&batch.position(batch.messages.len() - 1))
            .await
            .unwrap();
    }
    let took = start.elapsed();
    reader.shutdown().await;
    took
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn main() {
    let records: usize = std::env::args()
        .skip_while(|a| a != "--records")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let emulator = Emulator::start(EmulatorConfig {
            hubs: vec![HubConfig::new("defender", PARTITIONS)],
            ..EmulatorConfig::default()
        })
        .await
        .unwrap();
        let messages = records / PER_MESSAGE;
        let bodies: Vec<Vec<u8>> = (0..messages).map(|m| body(m * PER_MESSAGE)).collect();
        let bytes: usize = bodies.iter().map(Vec::len).sum();
        println!(
            "{records} records of ~{} bytes in {messages} messages over {PARTITIONS} partitions, {:.1} MB",
            bytes / records,
            bytes as f64 / 1e6
        );
        let start = Instant::now();
        emulator.append("defender", None, bodies).unwrap();
        rate("emulator takes in (in-process append)", records, bytes, start.elapsed());
        for prefetch in [300, 3000] {
            let took = raw_client(&emulator, messages, prefetch).await;
            rate(&format!("raw client, prefetch {prefetch}"), records, bytes, took);
        }
        for prefetch in [300, 3000] {
            let took = reader(&emulator, records, prefetch).await;
            rate(
                &format!("reader (+ split, checkpoints), prefetch {prefetch}"),
                records,
                bytes,
                took,
            );
        }
        emulator.shutdown().await;
    });
}

//! Helpers shared by the tests: an emulator, the real Rust client against it, and receive loops
//! that wait on conditions with deadlines (never sleeps).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use azure_messaging_eventhubs::models::ReceivedEventData;
use azure_messaging_eventhubs::{
    ConsumerClient, EventReceiver, OpenReceiverOptions, ProducerClient, StartLocation, StartPosition,
};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use futures::StreamExt;
use tokio::time::{Instant, timeout_at};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub async fn start(hubs: &[(&str, u32)]) -> Emulator {
    start_with(hubs, |_| {}).await
}

pub async fn start_with(hubs: &[(&str, u32)], tweak: impl FnOnce(&mut EmulatorConfig)) -> Emulator {
    let mut config = EmulatorConfig {
        hubs: hubs.iter().map(|(n, p)| HubConfig::new(*n, *p)).collect(),
        ..EmulatorConfig::default()
    };
    tweak(&mut config);
    Emulator::start(config).await.expect("emulator starts")
}

pub async fn consumer(emulator: &Emulator, hub: &str) -> ConsumerClient {
    consumer_in_group(emulator, hub, "$Default").await
}

pub async fn consumer_in_group(emulator: &Emulator, hub: &str, group: &str) -> ConsumerClient {
    ConsumerClient::builder()
        .with_custom_endpoint(emulator.endpoint())
        .with_consumer_group(group.to_owned())
        .open_with_connection_string(&emulator.connection_string(hub), None)
        .await
        .expect("consumer opens")
}

pub async fn producer(emulator: &Emulator, hub: &str) -> ProducerClient {
    ProducerClient::builder()
        .with_custom_endpoint(emulator.endpoint())
        .open_with_connection_string(&emulator.connection_string(hub), None)
        .await
        .expect("producer opens")
}

#[allow(clippy::unnecessary_wraps)] // what `OpenReceiverOptions::start_position` takes
pub fn position(location: StartLocation, inclusive: bool) -> Option<StartPosition> {
    Some(StartPosition { location, inclusive })
}

pub fn from_earliest(prefetch: u32) -> OpenReceiverOptions {
    OpenReceiverOptions {
        start_position: position(StartLocation::Earliest, false),
        prefetch: Some(prefetch),
        ..OpenReceiverOptions::default()
    }
}

pub async fn open(consumer: &ConsumerClient, partition: &str, options: OpenReceiverOptions) -> EventReceiver {
    consumer
        .open_receiver_on_partition(partition.to_owned(), Some(options))
        .await
        .expect("receiver opens")
}

/// Receives until `done` says so; fails the test at the deadline or on a stream error.
pub async fn receive_until(
    receiver: &EventReceiver,
    mut done: impl FnMut(&[ReceivedEventData]) -> bool,
) -> Vec<ReceivedEventData> {
    let deadline = Instant::now() + DEADLINE;
    let mut events = Vec::new();
    let stream = receiver.stream_events();
    futures::pin_mut!(stream);
    while !done(&events) {
        match timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(event))) => events.push(event),
            Ok(Some(Err(error))) => panic!("partition {}: stream error: {error:?}", receiver.partition_id()),
            Ok(None) => panic!("partition {}: stream ended", receiver.partition_id()),
            Err(tokio::time::error::Elapsed { .. }) => panic!(
                "partition {}: deadline passed with {} events received",
                receiver.partition_id(),
                events.len()
            ),
        }
    }
    events
}

/// Receives exactly `n` events.
pub async fn receive_n(receiver: &EventReceiver, n: usize) -> Vec<ReceivedEventData> {
    receive_until(receiver, |events| events.len() >= n).await
}

pub fn body(event: &ReceivedEventData) -> Vec<u8> {
    event.event_data().body().expect("a data body").to_vec()
}

pub fn seq(event: &ReceivedEventData) -> i64 {
    event.sequence_number().expect("x-opt-sequence-number")
}

/// Records of a Defender envelope, as their raw JSON text.
pub fn records(body: &[u8]) -> Vec<String> {
    defender_schema::split_body(body)
        .expect("an envelope")
        .into_iter()
        .map(|r| r.expect("a Defender record").raw().to_owned())
        .collect()
}

/// A small Defender record with an id in it.
pub fn record(id: u64) -> String {
    format!(
        r#"{{"time":"2024-05-14T09:31:07.4473310Z","tenantId":"00000000-0000-0000-0000-000000000001","operationName":"Publish","category":"AdvancedHunting-DeviceEvents","properties":{{"Timestamp":"2024-05-14T09:30:59.1234567Z","DeviceName":"ws-{id}","ReportId":{id},"ActionType":"Test"}}}}"#
    )
}

/// Packs records into one envelope.
pub fn envelope(records: &[String]) -> Vec<u8> {
    format!(r#"{{"records":[{}]}}"#, records.join(",")).into_bytes()
}

/// Events received per partition, keyed by partition id.
pub type PerPartition = BTreeMap<String, Vec<ReceivedEventData>>;

/// Polls `condition` every few milliseconds until it holds; fails the test at the deadline.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Receives, re-opening the stream after errors (the client reconnects on the next poll),
/// until `done` holds for the events so far. Returns the events and the number of stream errors.
pub async fn receive_through_errors(
    receiver: &EventReceiver,
    mut on_event: impl FnMut(&ReceivedEventData),
    mut done: impl FnMut() -> bool,
) -> usize {
    let deadline = Instant::now() + DEADLINE;
    let mut errors = 0;
    while !done() {
        let stream = receiver.stream_events();
        futures::pin_mut!(stream);
        while !done() {
            match timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(event))) => on_event(&event),
                Ok(Some(Err(error))) => {
                    errors += 1;
                    if errors <= 3 || errors % 10 == 0 {
                        println!("partition {}: stream error {errors}: {error}", receiver.partition_id());
                    }
                    assert!(
                        errors < 50,
                        "partition {}: too many stream errors",
                        receiver.partition_id()
                    );
                    break;
                }
                Ok(None) => {
                    errors += 1;
                    assert!(
                        errors < 50,
                        "partition {}: too many stream errors",
                        receiver.partition_id()
                    );
                    break;
                }
                Err(tokio::time::error::Elapsed { .. }) => {
                    panic!("partition {}: deadline passed", receiver.partition_id())
                }
            }
        }
    }
    errors
}

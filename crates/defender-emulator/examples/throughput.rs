//! How fast the real Rust client (`azure_messaging_eventhubs`) reads from the emulator.
//!
//! ```text
//! cargo run --release -p defender-emulator --example throughput -- \
//!     [--events 200000] [--envelopes 2000] [--records 100] [--prefetch 300,3000] [--presettle on,off]
//! ```
//!
//! Two workloads over 4 partitions, each read with one receiver per partition on one client:
//! `--events` Defender envelopes of one ~1 KiB record, and `--envelopes` envelopes of `--records`
//! ~1 KiB records (~100 KiB each, as the Streaming API packs them). Events are appended in process
//! before the clock starts; the time is from opening the receivers to the last event.

use std::time::{Duration, Instant};

use azure_messaging_eventhubs::{ConsumerClient, OpenReceiverOptions, StartLocation, StartPosition};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use futures::StreamExt;

const HUB: &str = "throughput";
const PARTITIONS: u32 = 4;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: &str) -> Vec<T> {
    let value = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, String::as_str);
    value
        .split(',')
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}: {v}")))
        .collect()
}

/// A Defender record of about 1 KiB.
fn record(id: u64) -> String {
    format!(
        concat!(
            r#"{{"time":"2024-05-14T09:31:07.4473310Z","tenantId":"7c4b2f9e-3d1a-4e8b-9f6c-2a5d8e1b0c73","#,
            r#""operationName":"Publish","category":"AdvancedHunting-DeviceProcessEvents","#,
            r#""_TimeReceivedBySvc":"2024-05-14T09:31:05.9077331Z","properties":{{"#,
            r#""Timestamp":"2024-05-14T09:30:59.1234567Z","DeviceId":"157f1267ccb37e0f1e1897b5fe22be51d442d0a2","#,
            r#""DeviceName":"wks-{id:06}.corp.contoso.com","ActionType":"ProcessCreated","FileName":"powershell.exe","#,
            r#""FolderPath":"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe","#,
            r#""SHA256":"de96a6e69944335375dc1ac238336066889d9ffc7d73628ef4fe1b1b160ab32c","#,
            r#""ProcessId":{id},"ProcessCommandLine":"powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\\ProgramData\\scripts\\inventory.ps1","#,
            r#""AccountDomain":"contoso","AccountName":"svc-inventory","AccountSid":"S-1-5-21-1004336348-1177238915-682003330-512","#,
            r#""InitiatingProcessFileName":"svchost.exe","InitiatingProcessId":1234,"#,
            r#""InitiatingProcessCommandLine":"svchost.exe -k netsvcs -p -s Schedule","#,
            r#""AdditionalFields":"{{\"ParentProcessName\":\"services.exe\"}}","ReportId":{id},"MachineGroup":"Tier1 Servers"}}}}"#
        ),
        id = id
    )
}

fn envelope(first: u64, records: u64) -> Vec<u8> {
    let records: Vec<String> = (first..first + records).map(record).collect();
    format!(r#"{{"records":[{}]}}"#, records.join(",")).into_bytes()
}

struct Run {
    events: u64,
    bytes: u64,
    elapsed: Duration,
}

async fn run(presettle: bool, prefetch: u32, events: u64, records_per_event: u64) -> Run {
    let emulator = Emulator::start(EmulatorConfig {
        hubs: vec![HubConfig::new(HUB, PARTITIONS)],
        presettled_deliveries: presettle,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let per_partition = events / u64::from(PARTITIONS);
    let mut bytes = 0;
    for p in 0..PARTITIONS {
        let mut next = u64::from(p) * per_partition * records_per_event;
        let mut chunk = Vec::new();
        for _ in 0..per_partition {
            let body = envelope(next, records_per_event);
            next += records_per_event;
            bytes += body.len() as u64;
            chunk.push(body);
            if chunk.len() == 1000 {
                emulator
                    .append(HUB, Some(&p.to_string()), std::mem::take(&mut chunk))
                    .unwrap();
            }
        }
        emulator.append(HUB, Some(&p.to_string()), chunk).unwrap();
    }

    let consumer = ConsumerClient::builder()
        .with_custom_endpoint(emulator.endpoint())
        .open_with_connection_string(&emulator.connection_string(HUB), None)
        .await
        .expect("consumer");
    let started = Instant::now();
    let mut receivers = Vec::new();
    for p in 0..PARTITIONS {
        let options = OpenReceiverOptions {
            start_position: Some(StartPosition {
                location: StartLocation::Earliest,
                inclusive: false,
            }),
            prefetch: Some(prefetch),
            ..OpenReceiverOptions::default()
        };
        receivers.push(
            consumer
                .open_receiver_on_partition(p.to_string(), Some(options))
                .await
                .expect("receiver"),
        );
    }
    let counts = futures::future::join_all(receivers.iter().map(|r| async move {
        let stream = r.stream_events();
        futures::pin_mut!(stream);
        let mut n = 0u64;
        let mut size = 0u64;
        while n < per_partition {
            let event = stream.next().await.expect("stream").expect("event");
            size += event.event_data().body().map_or(0, |b| b.len() as u64);
            n += 1;
        }
        (n, size)
    }))
    .await;
    let elapsed = started.elapsed();
    let received: u64 = counts.iter().map(|c| c.0).sum();
    let received_bytes: u64 = counts.iter().map(|c| c.1).sum();
    assert_eq!(received_bytes, bytes);
    for r in receivers {
        let _ = r.close().await;
    }
    let _ = consumer.close().await;
    emulator.shutdown().await;
    Run {
        events: received,
        bytes,
        elapsed,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events = arg::<u64>(&args, "--events", "200000")[0];
    let envelopes = arg::<u64>(&args, "--envelopes", "2000")[0];
    let records = arg::<u64>(&args, "--records", "100")[0];
    let prefetches = arg::<u32>(&args, "--prefetch", "300,3000");
    let presettles: Vec<bool> = arg::<String>(&args, "--presettle", "on,off")
        .iter()
        .map(|v| v == "on")
        .collect();
    println!("workload              presettled prefetch   events   seconds   events/s   records/s     MB/s");
    for (name, count, per_event) in [("1 KiB events", events, 1), ("~100 KiB envelopes", envelopes, records)] {
        for &presettle in &presettles {
            for &prefetch in &prefetches {
                let r = run(presettle, prefetch, count, per_event).await;
                let secs = r.elapsed.as_secs_f64();
                #[allow(clippy::cast_precision_loss)]
                let (eps, rps, mbs) = (
                    r.events as f64 / secs,
                    (r.events * per_event) as f64 / secs,
                    r.bytes as f64 / secs / 1e6,
                );
                println!(
                    "{name:<21} {:<10} {prefetch:>8} {:>8} {secs:>9.2} {eps:>10.0} {rps:>11.0} {mbs:>8.1}",
                    if presettle { "yes" } else { "no" },
                    r.events,
                );
            }
        }
    }
}

//! The contract every sink keeps (see `sink/mod.rs`), checked on every kind the same way:
//! every delivery acknowledged, what it holds sent within moments of going idle (however large
//! its batches or long its flush interval), and on shutdown everything delivered before it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use defender_eventhub::Secret;
use defender_forwarder::deadletter::DeadLetters;
use defender_forwarder::delivery::{Ack, Completion, Day, Delivery, Origin, SinkRecord, TableId};
use defender_forwarder::metrics::Metrics;
use defender_forwarder::sink::files::FilesConfig;
use defender_forwarder::sink::null::NullConfig;
use defender_forwarder::sink::sekoia::SekoiaConfig;
use defender_forwarder::sink::stdout::StdoutConfig;
use defender_forwarder::sink::tables::TablesSinkConfig;
use defender_forwarder::sink::{KINDS, SinkConfig, SinkContext};
use defender_schema::Table;
use defender_testkit::Intake;
use tokio::sync::mpsc;

use crate::common::{KEY, record};

/// One configured sink of each kind, set up so that only the idle rule can make it deliver soon:
/// huge batches, an hour of linger or flush interval, tables published after 15 minutes.
fn every_kind(dir: &std::path::Path, intake: &Intake) -> Vec<Box<dyn SinkConfig>> {
    let mut files = FilesConfig::new(dir.join("archive").display().to_string());
    files.flush_interval = Duration::from_secs(3600);
    let mut sekoia = SekoiaConfig::new(intake.url().parse().unwrap(), Secret::new(KEY));
    sekoia.linger = Duration::from_secs(3600);
    sekoia.batch_events = 1_000_000;
    let kinds: Vec<Box<dyn SinkConfig>> = vec![
        Box::new(sekoia),
        Box::new(files),
        Box::new(StdoutConfig::default()),
        Box::new(TablesSinkConfig::local(dir.join("tables"))),
        Box::new(NullConfig::default()),
    ];
    let tested: Vec<&str> = kinds.iter().map(|k| k.kind()).collect();
    for k in KINDS {
        assert!(
            tested.contains(&k.name),
            "the contract test does not cover `{}`",
            k.name
        );
    }
    kinds
}

fn delivery(n: u64, done: &mpsc::UnboundedSender<Completion>) -> Delivery {
    let raw = Bytes::from(record(n));
    Delivery {
        records: vec![SinkRecord {
            table: TableId::Known(Table::from_name(crate::common::table_of(n)).unwrap()),
            day: Day::of("2026-11-20T00:00:00Z"),
            raw,
            origin: Arc::new(Origin {
                source: Arc::from("contract"),
                partition: Arc::from("p0"),
                sequence_number: i64::try_from(n).ok(),
                offset: None,
            }),
        }],
        ack: Ack::ticket(0, n, done.clone(), None),
        read_at: Instant::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sink_acks_flushes_when_idle_and_drains_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(KEY).await.unwrap();
    for config in every_kind(dir.path(), &intake) {
        let kind = config.kind();
        let cx = SinkContext {
            name: Arc::from(config.name()),
            dead_letters: DeadLetters::open(&dir.path().join("state")).unwrap(),
            metrics: Arc::new(Metrics::default()),
            in_flight_bytes: 8 << 20,
            state_dir: dir.path().join("state"),
            owner_id: "contract".to_owned(),
        };
        let sink = config.build(&cx).await.unwrap_or_else(|e| panic!("{kind}: {e}"));
        let (tx, rx) = mpsc::channel(4);
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let task = tokio::spawn(sink.run(rx));

        // Rule 2: one delivery, then silence: it is acknowledged long before any timer.
        tx.send(delivery(1, &done_tx)).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), done.recv())
            .await
            .unwrap_or_else(|_| panic!("{kind}: an idle sink kept a delivery unacknowledged"))
            .unwrap();
        assert!(first.ok, "{kind}: the delivery was dropped unacknowledged");

        // Rules 1 and 3: more deliveries, then the channel closes: each is acknowledged and the
        // task ends.
        for n in 2..=50 {
            tx.send(delivery(n, &done_tx)).await.unwrap();
        }
        drop(tx);
        drop(done_tx);
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap_or_else(|_| panic!("{kind}: did not end after its channel closed"))
            .unwrap();
        let mut acked = 1;
        while let Some(c) = done.recv().await {
            assert!(c.ok, "{kind}: ticket {} dropped unacknowledged", c.ticket);
            acked += 1;
        }
        assert_eq!(acked, 50, "{kind}: every delivery acknowledged");
    }
    assert_eq!(intake.event_count(), 50, "the intake got each record once");
}

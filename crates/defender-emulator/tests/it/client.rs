//! The real `azure_messaging_eventhubs` client against the emulator, over AMQP on loopback.

use crate::common::*;
use azure_messaging_eventhubs::{EventDataBatchOptions, OpenReceiverOptions, StartLocation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_partition_properties() {
    let emulator = start(&[("props-hub", 4), ("other", 1)]).await;
    emulator
        .append("props-hub", Some("2"), vec![b"one".to_vec(), b"two".to_vec()])
        .unwrap();
    let consumer = consumer(&emulator, "props-hub").await;

    let hub = consumer.get_eventhub_properties().await.expect("hub properties");
    assert_eq!(hub.name, "props-hub");
    assert_eq!(hub.partition_ids, ["0", "1", "2", "3"]);
    assert!(hub.created_on.is_some());

    let p2 = consumer
        .get_partition_properties("2")
        .await
        .expect("partition properties");
    let info = &emulator.partitions("props-hub").unwrap()[2];
    assert_eq!(p2.id, "2");
    assert_eq!(p2.eventhub, "props-hub");
    assert_eq!(p2.beginning_sequence_number, 0);
    assert_eq!(p2.last_enqueued_sequence_number, 1);
    assert_eq!(p2.last_enqueued_offset, info.last_offset);
    assert_eq!(p2.last_enqueued_time_utc, info.last_enqueued_time);
    assert!(!p2.is_empty);

    let p0 = consumer
        .get_partition_properties("0")
        .await
        .expect("partition properties");
    assert!(p0.is_empty);
    assert_eq!(p0.last_enqueued_sequence_number, -1);
    assert_eq!(p0.last_enqueued_offset, "-1");

    assert!(consumer.get_partition_properties("7").await.is_err(), "no partition 7");
    consumer.close().await.unwrap();
    emulator.shutdown().await;
}

/// 10,000 records in Defender envelopes sent with `ProducerClient` batches over 4 partitions,
/// read back from the start with one receiver per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batches_and_read_everything_back_in_order() {
    const RECORDS: u64 = 10_000;
    const PER_ENVELOPE: usize = 10;
    let emulator = start(&[("roundtrip", 4)]).await;
    let producer = producer(&emulator, "roundtrip").await;

    // Envelope i goes to partition i % 4; remember what each partition should hold, in order.
    let all: Vec<String> = (0..RECORDS).map(record).collect();
    let mut expected: Vec<Vec<Vec<String>>> = vec![Vec::new(); 4];
    for (i, chunk) in all.chunks(PER_ENVELOPE).enumerate() {
        expected[i % 4].push(chunk.to_vec());
    }
    for (partition, envelopes) in expected.iter().enumerate() {
        let mut pending = envelopes.iter().peekable();
        while pending.peek().is_some() {
            let batch = producer
                .create_batch(Some(EventDataBatchOptions {
                    partition_id: Some(partition.to_string()),
                    ..EventDataBatchOptions::default()
                }))
                .await
                .expect("batch");
            while let Some(records) = pending.peek() {
                if !batch.try_add_event_data(envelope(records), None).expect("add") {
                    break;
                }
                pending.next();
            }
            assert!(!batch.is_empty(), "an envelope does not fit in an empty batch");
            producer.send_batch(batch, None).await.expect("send batch");
        }
    }
    producer.close().await.unwrap();
    let infos = emulator.partitions("roundtrip").unwrap();
    for (info, envelopes) in infos.iter().zip(&expected) {
        assert_eq!(info.event_count, envelopes.len() as u64, "partition {}", info.id);
    }

    let consumer = consumer(&emulator, "roundtrip").await;
    let mut receivers = Vec::new();
    for partition in 0..4 {
        receivers.push(open(&consumer, &partition.to_string(), from_earliest(300)).await);
    }
    let received = futures::future::join_all(
        receivers
            .iter()
            .zip(&expected)
            .map(|(receiver, envelopes)| receive_n(receiver, envelopes.len())),
    )
    .await;

    let mut seen = std::collections::BTreeSet::new();
    for ((partition, events), envelopes) in received.iter().enumerate().zip(&expected) {
        let seqs: Vec<i64> = events.iter().map(seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: sequence numbers not increasing"
        );
        assert_eq!(seqs.first(), Some(&0));
        let got: Vec<Vec<String>> = events.iter().map(|e| records(&body(e))).collect();
        assert_eq!(&got, envelopes, "partition {partition}: records differ");
        for event in events {
            assert!(event.offset().is_some() && event.enqueued_time().is_some());
        }
        seen.extend(got.into_iter().flatten());
    }
    assert_eq!(seen.len() as u64, RECORDS, "every record arrives once");
    for receiver in receivers {
        receiver.close().await.unwrap();
    }
    consumer.close().await.unwrap();
    emulator.shutdown().await;
}

/// Sequence number (inclusive, exclusive), offset, enqueued time and latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_positions() {
    let emulator = start(&[("positions", 1)]).await;
    let bodies = |range: std::ops::Range<u32>| range.map(|i| format!("event-{i}").into_bytes()).collect::<Vec<_>>();
    emulator.append("positions", None, bodies(0..5)).unwrap();
    // The next batch gets a later enqueued time: wait for the clock to move on.
    let first_batch_time = emulator.partitions("positions").unwrap()[0].last_enqueued_time.unwrap();
    wait_for("the clock to pass the first batch", || {
        std::time::SystemTime::now() > first_batch_time + std::time::Duration::from_millis(2)
    })
    .await;
    emulator.append("positions", None, bodies(5..10)).unwrap();
    let consumer = consumer(&emulator, "positions").await;

    let first_seq = async |location: StartLocation, inclusive: bool| -> (i64, Vec<u8>) {
        let receiver = open(
            &consumer,
            "0",
            OpenReceiverOptions {
                start_position: position(location, inclusive),
                ..OpenReceiverOptions::default()
            },
        )
        .await;
        let event = receive_n(&receiver, 1).await.remove(0);
        receiver.close().await.unwrap();
        (seq(&event), body(&event))
    };

    assert_eq!(
        first_seq(StartLocation::SequenceNumber(3), true).await,
        (3, b"event-3".to_vec())
    );
    assert_eq!(
        first_seq(StartLocation::SequenceNumber(3), false).await,
        (4, b"event-4".to_vec())
    );
    assert_eq!(first_seq(StartLocation::Earliest, false).await.0, 0);

    // Offsets as the service gives them: read event 5's offset, then start after / at it.
    let all = {
        let receiver = open(&consumer, "0", from_earliest(300)).await;
        let events = receive_n(&receiver, 10).await;
        receiver.close().await.unwrap();
        events
    };
    let offset5 = all[5].offset().clone().expect("offset");
    assert_eq!(first_seq(StartLocation::Offset(offset5.clone()), false).await.0, 6);
    assert_eq!(first_seq(StartLocation::Offset(offset5), true).await.0, 5);

    let first_batch_time_ms = all[4].enqueued_time().unwrap();
    assert!(all[5].enqueued_time().unwrap() > first_batch_time_ms);
    assert_eq!(
        first_seq(StartLocation::EnqueuedTime(first_batch_time_ms), false)
            .await
            .0,
        5
    );
    assert_eq!(
        first_seq(StartLocation::EnqueuedTime(first_batch_time_ms), true)
            .await
            .0,
        0
    );

    // Latest: only what is appended after the receiver attached arrives.
    let receiver = open(
        &consumer,
        "0",
        OpenReceiverOptions {
            start_position: position(StartLocation::Latest, false),
            ..OpenReceiverOptions::default()
        },
    )
    .await;
    let (events, ()) = tokio::join!(receive_n(&receiver, 3), async {
        wait_for("the latest receiver to attach", || {
            emulator.receiver_count("positions").unwrap() == 1
        })
        .await;
        emulator.append("positions", None, bodies(10..13)).unwrap();
    });
    let got: Vec<(i64, Vec<u8>)> = events.iter().map(|e| (seq(e), body(e))).collect();
    assert_eq!(
        got,
        vec![
            (10, b"event-10".to_vec()),
            (11, b"event-11".to_vec()),
            (12, b"event-12".to_vec())
        ]
    );
    receiver.close().await.unwrap();
    consumer.close().await.unwrap();
    emulator.shutdown().await;
}

/// A receiver with owner level 2 takes the partition from one with owner level 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_owner_level_steals_the_partition() {
    let emulator = start(&[("owners", 2)]).await;
    emulator
        .append("owners", Some("1"), (0..5).map(|i| vec![b'a' + i]).collect())
        .unwrap();
    let with_level = |level: i64| OpenReceiverOptions {
        owner_level: Some(level),
        ..from_earliest(300)
    };

    let first_client = consumer(&emulator, "owners").await;
    let first = open(&first_client, "1", with_level(1)).await;
    assert_eq!(receive_n(&first, 5).await.len(), 5);

    let second_client = consumer(&emulator, "owners").await;
    let second = open(&second_client, "1", with_level(2)).await;
    let taken = receive_n(&second, 5).await;
    assert_eq!(taken.iter().map(seq).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);

    // The first receiver's next read is an error, and it does not come back by itself.
    let stream = first.stream_events();
    futures::pin_mut!(stream);
    match tokio::time::timeout(DEADLINE, futures::StreamExt::next(&mut stream)).await {
        Ok(Some(Err(error))) => {
            let text = format!("{error:?}").to_lowercase();
            assert!(
                text.contains("stolen") || text.contains("epoch"),
                "unexpected error: {text}"
            );
        }
        other => panic!("expected the first receiver to fail, got {other:?}"),
    }

    // A lower owner level is refused while level 2 holds the partition.
    let third_client = consumer(&emulator, "owners").await;
    let third = open(&third_client, "1", with_level(1)).await;
    let stream = third.stream_events();
    futures::pin_mut!(stream);
    match tokio::time::timeout(DEADLINE, futures::StreamExt::next(&mut stream)).await {
        Ok(Some(Err(_))) => {}
        other => panic!("expected a lower owner level to be refused, got {other:?}"),
    }

    // The holder keeps reading.
    emulator.append("owners", Some("1"), vec![b"later".to_vec()]).unwrap();
    let later = receive_n(&second, 1).await;
    assert_eq!((seq(&later[0]), body(&later[0])), (5, b"later".to_vec()));
    // Other consumer groups are independent.
    let other_group = consumer_in_group(&emulator, "owners", "analytics").await;
    let other = open(&other_group, "1", with_level(0)).await;
    assert_eq!(receive_n(&other, 6).await.len(), 6);

    second.close().await.unwrap();
    for client in [first_client, second_client, third_client, other_group] {
        let _ = client.close().await;
    }
    emulator.shutdown().await;
}

/// Every client TCP connection cut mid-stream: the client reconnects, and with duplicates dropped
/// by sequence number every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_recovers_after_connections_are_dropped() {
    const BEFORE: u32 = 3_000;
    const AFTER: u32 = 500;
    let emulator = start(&[("faults", 2)]).await;
    for partition in ["0", "1"] {
        let bodies = (0..BEFORE).map(|i| format!("{partition}-{i}").into_bytes()).collect();
        emulator.append("faults", Some(partition), bodies).unwrap();
    }
    // One client (one connection) per partition. With both receivers on one client, the 0.16
    // client sometimes never recovers one of them: its two recoveries race, it drops a receiver it
    // just attached without detaching it and attaches the same link name again on the same
    // session ("Link name is not unique"), then fails every later poll with "Illegal session
    // state". That is a client bug (see the crate README), not what this test is about.
    let consumers = [consumer(&emulator, "faults").await, consumer(&emulator, "faults").await];
    let receivers = [
        open(&consumers[0], "0", from_earliest(100)).await,
        open(&consumers[1], "1", from_earliest(100)).await,
    ];
    let total = (BEFORE + AFTER) as usize;
    let received = std::sync::atomic::AtomicUsize::new(0);
    let seen: [std::sync::Mutex<std::collections::BTreeMap<i64, Vec<u8>>>; 2] = Default::default();

    let readers = futures::future::join_all(receivers.iter().zip(&seen).map(|(receiver, seen)| {
        let received = &received;
        receive_through_errors(
            receiver,
            move |event| {
                received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let previous = seen.lock().unwrap().insert(seq(event), body(event));
                if let Some(previous) = previous {
                    assert_eq!(previous, body(event), "a duplicate must be the same event");
                }
            },
            move || seen.lock().unwrap().len() >= total,
        )
    }));
    let fault = async {
        // Both receivers streaming: a drop while the client is still attaching is another case
        // (the 0.16 client then never recovers that receiver, see the crate README).
        wait_for("both receivers to be streaming", || {
            seen.iter().all(|s| s.lock().unwrap().len() >= 200)
        })
        .await;
        emulator.drop_connections();
        for partition in ["0", "1"] {
            let bodies = (BEFORE..BEFORE + AFTER)
                .map(|i| format!("{partition}-{i}").into_bytes())
                .collect();
            emulator.append("faults", Some(partition), bodies).unwrap();
        }
    };
    let (errors, ()) = tokio::join!(readers, fault);
    let received = received.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "stream errors after the drop: {errors:?}; events received: {received} for {} distinct",
        2 * total
    );
    for (partition, seen) in ["0", "1"].iter().zip(&seen) {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), total, "partition {partition}: missing events");
        for (i, (seq, body)) in seen.iter().enumerate() {
            assert_eq!(*seq, i64::try_from(i).unwrap());
            assert_eq!(body, format!("{partition}-{i}").as_bytes());
        }
    }
    // The 0.16 client re-attaches with its original filter (from the start), so events arrive
    // twice: proof that the connections really were cut and re-opened.
    assert!(received > 2 * total, "expected the client to reconnect and replay");
    for consumer in consumers {
        let _ = consumer.close().await;
    }
    emulator.shutdown().await;
}

/// Events appended with a data directory are there after a restart on the same directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let with_dir = |config: &mut defender_emulator::EmulatorConfig| config.data_dir = Some(dir.path().to_owned());

    let emulator = start_with(&[("durable", 2)], with_dir).await;
    emulator
        .append(
            "durable",
            Some("0"),
            vec![b"in-process-0".to_vec(), b"in-process-1".to_vec()],
        )
        .unwrap();
    let producer = producer(&emulator, "durable").await;
    let batch = producer
        .create_batch(Some(EventDataBatchOptions {
            partition_id: Some("1".into()),
            ..EventDataBatchOptions::default()
        }))
        .await
        .unwrap();
    for i in 0..3 {
        let event = azure_messaging_eventhubs::models::EventData::builder()
            .with_body(format!("sent-{i}"))
            .add_property("index".into(), i)
            .with_content_type("application/json".into())
            .build();
        assert!(batch.try_add_event_data(event, None).unwrap());
    }
    producer.send_batch(batch, None).await.unwrap();
    producer.close().await.unwrap();
    let before = emulator.partitions("durable").unwrap();
    emulator.shutdown().await;

    let emulator = start_with(&[("durable", 2)], with_dir).await;
    assert_eq!(emulator.partitions("durable").unwrap(), before);
    emulator
        .append("durable", Some("1"), vec![b"after-restart".to_vec()])
        .unwrap();

    let consumer = consumer(&emulator, "durable").await;
    let p0 = open(&consumer, "0", from_earliest(300)).await;
    let p1 = open(&consumer, "1", from_earliest(300)).await;
    let (e0, e1) = tokio::join!(receive_n(&p0, 2), receive_n(&p1, 4));
    assert_eq!(
        e0.iter().map(|e| (seq(e), body(e))).collect::<Vec<_>>(),
        vec![(0, b"in-process-0".to_vec()), (1, b"in-process-1".to_vec())]
    );
    assert_eq!(
        e1.iter().map(|e| (seq(e), body(e))).collect::<Vec<_>>(),
        vec![
            (0, b"sent-0".to_vec()),
            (1, b"sent-1".to_vec()),
            (2, b"sent-2".to_vec()),
            (3, b"after-restart".to_vec())
        ]
    );
    // What the producer set on its events is kept.
    let data = e1[2].event_data();
    assert_eq!(data.content_type(), Some("application/json"));
    assert!(data.properties().is_some_and(|p| p.contains_key("index")));
    assert_eq!(e1[2].offset(), &Some(before[1].last_offset.clone()));
    let _ = consumer.close().await;
    emulator.shutdown().await;
}

/// Events far above the client's 64 KiB frames go out as multi-frame deliveries (every frame
/// re-encoded at full length) and come back intact, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_span_many_frames() {
    let emulator = start(&[("large", 1)]).await;
    let sizes = [65_000_usize, 65_536, 300_000, 1_000_000];
    let bodies: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| (0..*n).map(|j| u8::try_from((i * 7 + j) % 251).unwrap()).collect())
        .collect();
    emulator.append("large", None, bodies.clone()).unwrap();
    // And one sent by the producer (client to emulator direction).
    let producer = producer(&emulator, "large").await;
    let sent: Vec<u8> = (0..900_000).map(|j| u8::try_from(j % 241).unwrap()).collect();
    producer
        .send_event(sent.clone(), None)
        .await
        .expect("send a 900 KB event");
    producer.close().await.unwrap();

    let consumer = consumer(&emulator, "large").await;
    let receiver = open(&consumer, "0", from_earliest(300)).await;
    let events = receive_n(&receiver, 5).await;
    for (event, expected) in events.iter().zip(bodies.iter().chain([&sent])) {
        assert_eq!(body(event).len(), expected.len());
        assert!(body(event) == *expected, "body of {} bytes differs", expected.len());
    }
    receiver.close().await.unwrap();
    consumer.close().await.unwrap();
    emulator.shutdown().await;
}

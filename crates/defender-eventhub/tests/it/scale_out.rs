//! Several reader instances on one hub and consumer group, sharing partitions through the Blob
//! checkpoint store on Azurite: spread, take over a dead instance's partitions after the expiry,
//! ride out an Azurite outage, and together deliver every event at least once.

use crate::support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Delivered, body, collect, eventually};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_eventhub::blob::BlobClient;
use defender_eventhub::checkpoint::BlobCheckpointStore;
use defender_eventhub::{Balancing, Connection, Reader, ReaderConfig, Secret, StartFrom};
use defender_testkit::Azurite;
use tokio::sync::{RwLock, mpsc};

const PARTITIONS: u32 = 8;
const EXPIRY: Duration = Duration::from_secs(3);
const INTERVAL: Duration = Duration::from_millis(300);

struct Instance {
    reader: Arc<RwLock<Option<Reader>>>,
    delivered: Arc<Mutex<Delivered>>,
}

impl Instance {
    async fn start(emulator: &Emulator, store: Arc<BlobCheckpointStore>, owner: &str) -> Self {
        let mut c = ReaderConfig::new(Connection::ConnectionString(Secret::new(
            emulator.connection_string("defender"),
        )));
        c.start = StartFrom::Earliest;
        owner.clone_into(&mut c.owner_id);
        c.balancing = Balancing {
            update_interval: INTERVAL,
            expiry: EXPIRY,
        };
        c.stall_check = Duration::from_secs(1);
        let (tx, rx) = mpsc::channel(64);
        let reader = Reader::start(c, Some(store), tx).await.unwrap();
        let reader = Arc::new(RwLock::new(Some(reader)));
        let delivered = collect(reader.clone(), rx);
        Self { reader, delivered }
    }

    async fn owned(&self) -> usize {
        self.reader
            .read()
            .await
            .as_ref()
            .map_or(0, |r| r.owned_partitions().len())
    }
}

/// Appends `per_partition` bodies of 10 records to every partition, numbering from `*next`.
fn feed(emulator: &Emulator, next: &mut u64, per_partition: u64) {
    for p in 0..PARTITIONS {
        let bodies = (0..per_partition).map(|i| body(*next + i * 10, 10)).collect();
        emulator.append("defender", Some(&p.to_string()), bodies).unwrap();
        *next += per_partition * 10;
    }
}

fn union(instances: &[&Instance]) -> (usize, std::collections::BTreeSet<u64>) {
    let mut count = 0;
    let mut all = std::collections::BTreeSet::new();
    for i in instances {
        let d = i.delivered.lock().unwrap();
        count += d.count();
        all.extend(d.records());
    }
    (count, all)
}

#[allow(clippy::cast_precision_loss)] // record counts far below 2^52
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_take_over_and_survive_a_store_outage() {
    support::init_logs();
    let mut azurite = Azurite::start().await.expect("start Azurite");
    azurite.create_container("checkpoints").await.unwrap();
    let client = BlobClient::from_connection_string(&azurite.connection_string(), "checkpoints").unwrap();
    let store = Arc::new(BlobCheckpointStore::new(client));
    let emulator = Emulator::start(EmulatorConfig {
        hubs: vec![HubConfig::new("defender", PARTITIONS)],
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let mut next = 0;
    feed(&emulator, &mut next, 20);

    let a = Instance::start(&emulator, store.clone(), "instance-a").await;
    let b = Instance::start(&emulator, store.clone(), "instance-b").await;
    let c = Instance::start(&emulator, store.clone(), "instance-c").await;

    // Spread: every partition owned, nobody above 4 (here 3/3/2).
    eventually(
        Duration::from_secs(30),
        "partitions spread over three instances",
        || async {
            let counts = [a.owned().await, b.owned().await, c.owned().await];
            counts.iter().sum::<usize>() == PARTITIONS as usize && counts.iter().all(|&n| (2..=3).contains(&n))
        },
    )
    .await;
    let counts = [a.owned().await, b.owned().await, c.owned().await];
    assert!(counts.iter().all(|&n| n <= 4), "{counts:?}");

    // Kill c without releasing anything, as a crash would: its partitions stay claimed until the
    // expiry, then a and b take them.
    let killed = Instant::now();
    drop(c.reader.write().await.take());
    feed(&emulator, &mut next, 10);
    eventually(
        EXPIRY + Duration::from_secs(10),
        "a and b own all partitions",
        || async { a.owned().await + b.owned().await == PARTITIONS as usize },
    )
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover after {takeover:?} (expiry {EXPIRY:?}, update interval {INTERVAL:?})");
    // Ownership age counts from c's last renewal (up to one interval before the kill), and blob
    // Last-Modified times have a one-second resolution: nothing may move before that.
    assert!(
        takeover >= EXPIRY.saturating_sub(INTERVAL + Duration::from_secs(1)),
        "took over before the expiry: {takeover:?}"
    );

    // The store goes away for a while and comes back; reading goes on, then checkpoints resume.
    azurite.stop().await.unwrap();
    feed(&emulator, &mut next, 10);
    tokio::time::sleep(Duration::from_secs(2)).await;
    azurite.restart().await.unwrap();
    feed(&emulator, &mut next, 10);

    let total = usize::try_from(next).unwrap();
    eventually(Duration::from_secs(60), "every record delivered by someone", || async {
        union(&[&a, &b, &c]).1.len() == total
    })
    .await;
    let (count, all) = union(&[&a, &b, &c]);
    assert_eq!(all, (0..next).collect());
    eprintln!(
        "{total} records, {count} deliveries: {:.1}% duplicates (re-read after the takeover)",
        100.0 * (count - total) as f64 / total as f64
    );
    let mut by_partition: BTreeMap<String, usize> = BTreeMap::new();
    for i in [&a, &b, &c] {
        for (p, seqs) in &i.delivered.lock().unwrap().event_seqs {
            *by_partition.entry(p.clone()).or_default() += seqs.len();
        }
    }
    assert_eq!(by_partition.len(), PARTITIONS as usize);

    for i in [a, b] {
        i.reader.write().await.take().unwrap().shutdown().await;
    }
    emulator.shutdown().await;
}

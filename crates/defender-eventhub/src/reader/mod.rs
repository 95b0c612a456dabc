//! The reader: every partition of one Event Hub read concurrently, ownership shared with other
//! instances through a checkpoint store, and checkpoints written only when the caller says
//! everything up to a position is delivered.

mod partition;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_messaging_eventhubs::models::Checkpoint;
use azure_messaging_eventhubs::{CheckpointStore, ConsumerClient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, ConnectionError, Target};
use crate::lease::{Balancing, Grant, LeaseHandler, LeaseStatus, Leases, Scope};

/// Where to start a partition that has no checkpoint yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest event the hub still retains (a first run reads the backlog).
    Earliest,
    /// Only events enqueued after the reader starts.
    Latest,
    /// Events enqueued at or after this time.
    EnqueuedTime(SystemTime),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    /// `earliest`, `latest`, or an RFC 3339 time.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            other => chrono::DateTime::parse_from_rfc3339(other)
                .map(|t| StartFrom::EnqueuedTime(t.with_timezone(&chrono::Utc).into()))
                .map_err(|_| format!("`{other}` is not `earliest`, `latest` or an RFC 3339 time")),
        }
    }
}

/// Everything a reader needs.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// How to reach the hub.
    pub connection: Connection,
    /// The hub, unless the connection string names it (`EntityPath`).
    pub hub: Option<String>,
    /// The consumer group (`$Default` by default; give each deployment its own).
    pub consumer_group: String,
    /// Where a partition without a checkpoint starts.
    pub start: StartFrom,
    /// Events the client fetches ahead per partition. Defender packs ~100 records per event.
    pub prefetch: u32,
    /// Events fetched ahead across all the hub's partitions, split evenly (at least 2 each):
    /// memory then stays the same however many partitions the hub has. Replaces `prefetch`.
    pub hub_prefetch: Option<u32>,
    /// At most this many events per batch handed to the caller.
    pub max_batch_events: usize,
    /// This instance's identity in ownership records. Keep it stable across restarts (the
    /// forwarder keeps one per state directory): a restarted instance then takes its own
    /// partitions straight back instead of waiting for their expiry.
    pub owner_id: String,
    /// Ownership timing.
    pub balancing: Balancing,
    /// After this long without an event, a partition asks the hub whether events are waiting;
    /// waiting twice in a row (or no answer) means its client is stuck and gets replaced.
    pub stall_check: Duration,
}

impl ReaderConfig {
    /// Defaults for everything but how to connect.
    pub fn new(connection: Connection) -> Self {
        Self {
            connection,
            hub: None,
            consumer_group: "$Default".to_owned(),
            start: StartFrom::Earliest,
            prefetch: 1000,
            hub_prefetch: None,
            max_batch_events: 64,
            owner_id: format!("reader-{:08x}", rand::random::<u32>()),
            balancing: Balancing::default(),
            stall_check: Duration::from_secs(30),
        }
    }
}

/// Identifies a partition across hubs and consumer groups.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    /// Fully qualified namespace.
    pub namespace: String,
    /// Hub.
    pub hub: String,
    /// Consumer group.
    pub consumer_group: String,
    /// Partition id.
    pub partition_id: String,
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.hub, self.consumer_group, self.partition_id)
    }
}

/// One Event Hub message (the service calls it an event; for Defender, one
/// `{"records": [...]}` body).
#[derive(Debug, Clone)]
pub struct Message {
    /// The message body; `None` when the message had no data section (a bad message).
    pub body: Option<Vec<u8>>,
    /// Its sequence number in the partition.
    pub sequence_number: i64,
    /// Its offset, as the service gives it.
    pub offset: Option<String>,
    /// When the hub enqueued it.
    pub enqueued_time: Option<SystemTime>,
}

/// Events read from one partition, in order.
#[derive(Debug)]
pub struct Batch {
    /// The partition.
    pub partition: Arc<PartitionKey>,
    /// Which ownership of the partition read them; checkpoints from an older one are refused.
    pub generation: u64,
    /// The messages, in partition order.
    pub messages: Vec<Message>,
}

impl Batch {
    /// The position of message `i`, to checkpoint once it (and everything before it) is delivered.
    pub fn position(&self, i: usize) -> Position {
        let e = &self.messages[i];
        Position {
            partition: self.partition.clone(),
            generation: self.generation,
            sequence_number: e.sequence_number,
            offset: e.offset.clone(),
        }
    }
}

/// A point in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The partition.
    pub partition: Arc<PartitionKey>,
    /// The ownership it was read under.
    pub generation: u64,
    /// Sequence number of the event.
    pub sequence_number: i64,
    /// Offset of the event.
    pub offset: Option<String>,
}

/// Reader failures.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// Bad connection settings.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The hub could not be reached or described.
    #[error("cannot open Event Hub `{hub}`: {source}")]
    Open {
        /// The hub.
        hub: String,
        /// Why.
        #[source]
        source: azure_messaging_eventhubs::EventHubsError,
    },
    /// The checkpoint store failed.
    #[error("checkpoint store: {0}")]
    Store(#[source] azure_core::Error),
}

/// How far a held partition can be read, for telling whether a reader is caught up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The partition id.
    pub partition_id: String,
    /// The ownership it is read under.
    pub generation: u64,
    /// The sequence number reading started after (its checkpoint, or the hub's last event when
    /// reading from `latest`); `None` when not known.
    pub floor: Option<i64>,
    /// The hub's last sequence number in the partition (`None`: empty, or not known now).
    pub last_enqueued: Option<i64>,
    /// Whether the hub answered: without an answer nothing can be said.
    pub known: bool,
}

/// State shared by the reader, its lease handler and its partition tasks.
struct Shared {
    config: ReaderConfig,
    target: Target,
    consumer: ConsumerClient,
    store: Option<Arc<dyn CheckpointStore>>,
    leases: Option<Arc<Leases>>,
    out: mpsc::Sender<Batch>,
    running: Mutex<BTreeMap<String, Running>>,
    /// Generations without a store (every partition, read once).
    generation: AtomicU64,
    stop: CancellationToken,
    /// Per partition: `prefetch`, or the share of `hub_prefetch` once the partitions are known.
    prefetch: AtomicU32,
}

/// A partition being read.
struct Running {
    generation: u64,
    floor: Option<i64>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// A running reader. Batches arrive on the channel given to [`Reader::start`].
pub struct Reader {
    shared: Arc<Shared>,
    stop_taking: CancellationToken,
    stop_leasing: CancellationToken,
    leasing: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("hub", &self.shared.target.hub)
            .field("owner_id", &self.shared.config.owner_id)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Connects, then reads: every partition when `store` is `None` (no ownership, no
    /// checkpoints, as for `defender tail`), else the partitions this instance wins.
    pub async fn start(
        config: ReaderConfig,
        store: Option<Arc<dyn CheckpointStore>>,
        out: mpsc::Sender<Batch>,
    ) -> Result<Reader, ReaderError> {
        let target = config.connection.target(config.hub.as_deref())?;
        let consumer = config
            .connection
            .open_consumer(&target, &config.consumer_group)
            .await
            .map_err(|source| ReaderError::Open {
                hub: target.hub.clone(),
                source,
            })?;
        let partitions = partition_ids(&consumer, &target).await?;
        let prefetch = match config.hub_prefetch {
            Some(total) => (total / u32::try_from(partitions.len()).unwrap_or(u32::MAX).max(1)).max(2),
            None => config.prefetch,
        };
        let leases = store.as_ref().map(|store| {
            let scope = Scope {
                namespace: target.namespace.clone(),
                hub: target.hub.clone(),
                consumer_group: config.consumer_group.clone(),
            };
            Leases::new(
                store.clone(),
                scope,
                config.owner_id.clone(),
                config.balancing.clone(),
                partitions.clone(),
                "partition",
            )
        });
        let shared = Arc::new(Shared {
            config,
            target,
            consumer,
            store,
            leases,
            out,
            running: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            stop: CancellationToken::new(),
            prefetch: AtomicU32::new(prefetch),
        });
        let stop_taking = CancellationToken::new();
        let stop_leasing = CancellationToken::new();
        let leasing = if let Some(leases) = &shared.leases {
            let handler: Arc<dyn LeaseHandler> = Arc::new(PartitionHandler(shared.clone()));
            Some(tokio::spawn(leases.clone().run(
                handler,
                stop_taking.clone(),
                stop_leasing.clone(),
            )))
        } else {
            for p in &partitions {
                let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
                shared.read(p, generation).await;
            }
            None
        };
        Ok(Reader {
            shared,
            stop_taking,
            stop_leasing,
            leasing: Mutex::new(leasing),
        })
    }

    /// The hub's namespace, name and consumer group.
    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    /// The consumer group.
    pub fn consumer_group(&self) -> &str {
        &self.shared.config.consumer_group
    }

    /// The partitions this instance reads now.
    pub fn owned_partitions(&self) -> Vec<String> {
        lock(&self.shared.running).keys().cloned().collect()
    }

    /// Every partition and who holds it (empty without a store).
    pub fn leases(&self) -> Vec<LeaseStatus> {
        self.shared.leases.as_ref().map(|l| l.status()).unwrap_or_default()
    }

    /// How far each partition read now can be read, asking the hub (one call per partition).
    pub async fn progress(&self) -> Vec<PartitionProgress> {
        let held: Vec<(String, u64, Option<i64>)> = lock(&self.shared.running)
            .iter()
            .map(|(id, r)| (id.clone(), r.generation, r.floor))
            .collect();
        let mut out = Vec::with_capacity(held.len());
        for (id, generation, floor) in held {
            let props = tokio::time::timeout(
                Duration::from_secs(10),
                self.shared.consumer.get_partition_properties(&id),
            )
            .await;
            let (known, last_enqueued) = match props {
                Ok(Ok(p)) if p.is_empty => (true, None),
                Ok(Ok(p)) => (true, Some(p.last_enqueued_sequence_number)),
                _ => (false, None),
            };
            out.push(PartitionProgress {
                partition_id: id,
                generation,
                floor,
                last_enqueued,
                known,
            });
        }
        out
    }

    /// Records that everything up to and including `position` is delivered. Returns `false`
    /// (and writes nothing) when this instance no longer holds the partition under the
    /// ownership that read it, or when the reader has no store.
    pub async fn checkpoint(&self, position: &Position) -> Result<bool, ReaderError> {
        self.shared.checkpoint(position).await
    }

    /// A handle that checkpoints for this reader from other tasks.
    pub fn checkpointer(&self) -> Checkpointer {
        Checkpointer {
            shared: self.shared.clone(),
        }
    }

    /// Stops reading (no new batches), keeping and renewing ownership so that the caller can
    /// still checkpoint what it delivers.
    pub async fn stop_reading(&self) {
        self.stop_taking.cancel();
        self.shared.stop.cancel();
        let tasks: Vec<JoinHandle<()>> = lock(&self.shared.running)
            .values_mut()
            .filter_map(|r| {
                r.cancel.cancel();
                r.task.take()
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Stops reading and gives every partition back, so that other instances take over at
    /// once instead of after the ownership expiry.
    pub async fn shutdown(&self) {
        self.stop_reading().await;
        self.stop_leasing.cancel();
        let leasing = lock(&self.leasing).take();
        if let Some(t) = leasing {
            let _ = t.await;
        }
        lock(&self.shared.running).clear();
        if let Some(leases) = &self.shared.leases {
            leases.release_all().await;
        }
    }
}

/// Checkpoints for a running [`Reader`] from any task; see [`Reader::checkpoint`].
#[derive(Clone)]
pub struct Checkpointer {
    shared: Arc<Shared>,
}

impl fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpointer")
            .field("hub", &self.shared.target.hub)
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// As [`Reader::checkpoint`].
    pub async fn checkpoint(&self, position: &Position) -> Result<bool, ReaderError> {
        self.shared.checkpoint(position).await
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop_taking.cancel();
        self.stop_leasing.cancel();
        self.shared.stop.cancel();
        for r in lock(&self.shared.running).values() {
            r.cancel.cancel();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn partition_ids(consumer: &ConsumerClient, target: &Target) -> Result<Vec<String>, ReaderError> {
    let props = consumer
        .get_eventhub_properties()
        .await
        .map_err(|source| ReaderError::Open {
            hub: target.hub.clone(),
            source,
        })?;
    Ok(props.partition_ids)
}

/// Starts and stops partition tasks as the engine wins and loses partitions.
struct PartitionHandler(Arc<Shared>);

#[async_trait]
impl LeaseHandler for PartitionHandler {
    async fn acquired(&self, id: &str, grant: Grant) {
        // Taken from a live owner: the service's owner levels cut that reader off, no wait needed.
        self.0.read(id, grant.generation).await;
    }

    fn lost(&self, id: &str, why: &str) {
        self.0.stop_partition(id, why);
    }
}

impl Shared {
    async fn checkpoint(&self, position: &Position) -> Result<bool, ReaderError> {
        let (Some(store), Some(leases)) = (&self.store, &self.leases) else {
            return Ok(false);
        };
        if !leases.holds(&position.partition.partition_id, position.generation) {
            tracing::debug!(partition = %position.partition, "not checkpointing: ownership changed");
            return Ok(false);
        }
        let p = &position.partition;
        store
            .update_checkpoint(Checkpoint {
                fully_qualified_namespace: p.namespace.clone(),
                event_hub_name: p.hub.clone(),
                consumer_group: p.consumer_group.clone(),
                partition_id: p.partition_id.clone(),
                offset: position.offset.clone(),
                sequence_number: Some(position.sequence_number),
            })
            .await
            .map_err(ReaderError::Store)?;
        Ok(true)
    }

    fn key(&self, partition_id: &str) -> PartitionKey {
        PartitionKey {
            namespace: self.target.namespace.clone(),
            hub: self.target.hub.clone(),
            consumer_group: self.config.consumer_group.clone(),
            partition_id: partition_id.to_owned(),
        }
    }

    /// Starts reading a partition held under `generation`.
    async fn read(self: &Arc<Self>, partition_id: &str, generation: u64) {
        if self.stop.is_cancelled() {
            return;
        }
        let start = self.start_position(partition_id).await;
        let floor = self.floor(partition_id, &start).await;
        let cancel = self.stop.child_token();
        let task = tokio::spawn(partition::run(partition::PartitionTask {
            shared: self.clone(),
            key: Arc::new(self.key(partition_id)),
            generation,
            start,
            cancel: cancel.clone(),
        }));
        tracing::info!(hub = %self.target.hub, partition = %partition_id, generation, "reading partition");
        let previous = lock(&self.running).insert(
            partition_id.to_owned(),
            Running {
                generation,
                floor,
                cancel,
                task: Some(task),
            },
        );
        if let Some(p) = previous {
            p.cancel.cancel();
        }
    }

    /// Stops reading a partition this instance no longer holds. Its last batches may still be
    /// in the caller's hands; their checkpoints are refused (generation gone).
    fn stop_partition(&self, partition_id: &str, why: &str) {
        if let Some(r) = lock(&self.running).remove(partition_id) {
            tracing::info!(hub = %self.target.hub, partition = %partition_id, why, "stopped reading partition");
            r.cancel.cancel();
        }
    }

    /// The service cut this reader off (another reader has a higher owner level): stop, and let
    /// the next ownership cycle decide whether the partition is still ours.
    fn cut_off(&self, partition_id: &str) {
        if let Some(leases) = &self.leases {
            leases.forget(partition_id);
        }
        self.stop_partition(partition_id, "another reader took the partition (higher owner level)");
    }

    /// Where a newly held partition starts: after its checkpoint, else the configured start.
    async fn start_position(&self, partition_id: &str) -> partition::Start {
        if let Some(store) = &self.store {
            match store
                .list_checkpoints(&self.target.namespace, &self.target.hub, &self.config.consumer_group)
                .await
            {
                Ok(checkpoints) => {
                    if let Some(cp) = checkpoints.into_iter().find(|c| c.partition_id == partition_id) {
                        if let Some(seq) = cp.sequence_number {
                            return partition::Start::After(seq);
                        }
                        if let Some(offset) = cp.offset {
                            return partition::Start::AfterOffset(offset);
                        }
                    }
                }
                // Reading from the configured start could re-read or skip: better to retry later.
                Err(e) => {
                    tracing::warn!(partition = partition_id, error = %e, "cannot read checkpoints; retrying");
                    return partition::Start::Retry;
                }
            }
        }
        partition::Start::From(self.config.start)
    }

    /// The sequence number everything up to which counts as read before the first batch: the
    /// checkpoint, nothing (`-1`) from the earliest event, the hub's last event from `latest`.
    async fn floor(&self, partition_id: &str, start: &partition::Start) -> Option<i64> {
        match start {
            partition::Start::After(seq) => Some(*seq),
            partition::Start::From(StartFrom::Earliest) => Some(-1),
            partition::Start::From(StartFrom::Latest) => {
                let props = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.consumer.get_partition_properties(partition_id),
                )
                .await
                .ok()?
                .ok()?;
                Some(if props.is_empty {
                    -1
                } else {
                    props.last_enqueued_sequence_number
                })
            }
            _ => None,
        }
    }
}

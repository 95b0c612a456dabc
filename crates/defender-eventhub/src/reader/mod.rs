//! The reader: every partition of one Event Hub read concurrently, ownership shared with other
//! instances through a checkpoint store, and checkpoints written only when the caller says
//! everything up to a position is delivered.

mod balance;
mod partition;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::time::OffsetDateTime;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use azure_messaging_eventhubs::{CheckpointStore, ConsumerClient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use balance::{Plan, plan};

use crate::backoff::Backoff;
use crate::connection::{Connection, ConnectionError, Target};

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

/// How instances share partitions.
#[derive(Debug, Clone)]
pub struct Balancing {
    /// How often ownership is renewed and rebalanced.
    pub update_interval: Duration,
    /// An ownership not renewed for this long is free for others to take.
    pub expiry: Duration,
}

impl Default for Balancing {
    fn default() -> Self {
        Self {
            update_interval: Duration::from_secs(10),
            expiry: Duration::from_secs(60),
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
    /// This instance's stable identity in ownership records.
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
            owner_id: default_owner_id(),
            balancing: Balancing::default(),
            stall_check: Duration::from_secs(30),
        }
    }
}

fn default_owner_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "defender".to_owned());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
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

/// One event (an Event Hub message: for Defender, one `{"records": [...]}` body).
#[derive(Debug, Clone)]
pub struct Event {
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
    /// The events, in partition order.
    pub events: Vec<Event>,
}

impl Batch {
    /// The position of event `i`, to checkpoint once it (and everything before it) is delivered.
    pub fn position(&self, i: usize) -> Position {
        let e = &self.events[i];
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

/// State shared by the reader, its ownership loop and its partition tasks.
struct Shared {
    config: ReaderConfig,
    target: Target,
    consumer: ConsumerClient,
    store: Option<Arc<dyn CheckpointStore>>,
    out: mpsc::Sender<Batch>,
    owned: Mutex<BTreeMap<String, Owned>>,
    generation: AtomicU64,
    stop: CancellationToken,
    /// Per partition: `prefetch`, or the share of `hub_prefetch` once the partitions are known.
    prefetch: AtomicU32,
}

/// A partition this instance holds.
struct Owned {
    generation: u64,
    ownership: Ownership,
    renewed: SystemTime,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// A running reader. Batches arrive on the channel given to [`Reader::start`].
pub struct Reader {
    shared: Arc<Shared>,
    control: Option<JoinHandle<()>>,
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
        let config_prefetch = config.prefetch;
        let shared = Arc::new(Shared {
            config,
            target,
            consumer,
            store,
            out,
            owned: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            stop: CancellationToken::new(),
            prefetch: AtomicU32::new(config_prefetch),
        });
        let partitions = shared.partition_ids().await?;
        if let Some(total) = shared.config.hub_prefetch {
            let n = u32::try_from(partitions.len()).unwrap_or(u32::MAX).max(1);
            shared.prefetch.store((total / n).max(2), Ordering::Relaxed);
        }
        let control = tokio::spawn(control_loop(shared.clone(), partitions));
        Ok(Reader {
            shared,
            control: Some(control),
        })
    }

    /// The hub's namespace, name and consumer group.
    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    /// The partitions this instance reads now.
    pub fn owned_partitions(&self) -> Vec<String> {
        self.shared.lock_owned().keys().cloned().collect()
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

    /// Stops reading (no new batches), keeping ownership so that the caller can still
    /// checkpoint what it delivers.
    pub async fn stop_reading(&mut self) {
        self.shared.stop.cancel();
        if let Some(control) = self.control.take() {
            let _ = control.await;
        }
        let tasks: Vec<JoinHandle<()>> = {
            let mut owned = self.shared.lock_owned();
            owned
                .values_mut()
                .filter_map(|o| {
                    o.cancel.cancel();
                    o.task.take()
                })
                .collect()
        };
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Stops reading and gives every partition back, so that other instances take over at
    /// once instead of after the ownership expiry.
    pub async fn shutdown(mut self) {
        self.stop_reading().await;
        let releases: Vec<Ownership> = {
            let mut owned = self.shared.lock_owned();
            std::mem::take(&mut *owned)
                .into_values()
                .map(|o| Ownership {
                    owner_id: Some(String::new()),
                    ..o.ownership
                })
                .collect()
        };
        if let (Some(store), false) = (&self.shared.store, releases.is_empty()) {
            match store.claim_ownership(&releases).await {
                Ok(released) => tracing::info!(count = released.len(), "released partitions"),
                Err(e) => tracing::warn!(error = %e, "could not release partitions; they free up after the expiry"),
            }
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
        self.shared.stop.cancel();
        for o in self.shared.lock_owned().values() {
            o.cancel.cancel();
        }
    }
}

impl Shared {
    async fn checkpoint(&self, position: &Position) -> Result<bool, ReaderError> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let held = self
            .lock_owned()
            .get(&position.partition.partition_id)
            .is_some_and(|o| o.generation == position.generation);
        if !held {
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

    fn lock_owned(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Owned>> {
        self.owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(&self, partition_id: &str) -> PartitionKey {
        PartitionKey {
            namespace: self.target.namespace.clone(),
            hub: self.target.hub.clone(),
            consumer_group: self.config.consumer_group.clone(),
            partition_id: partition_id.to_owned(),
        }
    }

    fn template(&self) -> Ownership {
        Ownership {
            fully_qualified_namespace: self.target.namespace.clone(),
            event_hub_name: self.target.hub.clone(),
            consumer_group: self.config.consumer_group.clone(),
            partition_id: String::new(),
            owner_id: None,
            etag: None,
            last_modified_time: None,
        }
    }

    async fn partition_ids(&self) -> Result<Vec<String>, ReaderError> {
        let props = self
            .consumer
            .get_eventhub_properties()
            .await
            .map_err(|source| ReaderError::Open {
                hub: self.target.hub.clone(),
                source,
            })?;
        Ok(props.partition_ids)
    }

    /// Starts reading a partition this instance now holds.
    async fn acquire(self: &Arc<Self>, ownership: Ownership) {
        let partition_id = ownership.partition_id.clone();
        let start = self.start_position(&partition_id).await;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let cancel = self.stop.child_token();
        let task = tokio::spawn(partition::run(partition::PartitionTask {
            shared: self.clone(),
            key: Arc::new(self.key(&partition_id)),
            generation,
            start,
            cancel: cancel.clone(),
        }));
        tracing::info!(hub = %self.target.hub, partition = %partition_id, generation, "reading partition");
        self.lock_owned().insert(
            partition_id,
            Owned {
                generation,
                ownership,
                renewed: SystemTime::now(),
                cancel,
                task: Some(task),
            },
        );
    }

    /// Stops reading a partition this instance no longer holds. Its last batches may still be
    /// in the caller's hands; their checkpoints are refused (generation gone).
    fn lose(&self, partition_id: &str, why: &str) {
        if let Some(o) = self.lock_owned().remove(partition_id) {
            tracing::info!(hub = %self.target.hub, partition = %partition_id, why, "stopped reading partition");
            o.cancel.cancel();
        }
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
}

/// Claims, renews and rebalances partitions until stopped; without a store, reads them all.
async fn control_loop(shared: Arc<Shared>, partitions: Vec<String>) {
    let Some(store) = shared.store.clone() else {
        for p in &partitions {
            let mut o = shared.template();
            o.partition_id.clone_from(p);
            shared.acquire(o).await;
        }
        return;
    };
    let interval = shared.config.balancing.update_interval;
    let expiry = shared.config.balancing.expiry;
    let mut backoff = Backoff::new(Duration::from_millis(200), interval);
    loop {
        let wait = match cycle(&shared, store.as_ref(), &partitions, expiry).await {
            Ok(balanced) => {
                backoff.reset();
                // While taking partitions, come back soon: others may be releasing theirs.
                if balanced {
                    interval
                } else {
                    interval.min(Duration::from_secs(1))
                }
            }
            Err(e) => {
                tracing::warn!(hub = %shared.target.hub, error = %e, "ownership cycle failed; retrying");
                drop_stale(&shared, expiry);
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One ownership cycle. Returns whether nothing was left to take.
async fn cycle(
    shared: &Arc<Shared>,
    store: &dyn CheckpointStore,
    partitions: &[String],
    expiry: Duration,
) -> azure_core::Result<bool> {
    let t = &shared.target;
    let listed = store
        .list_ownerships(&t.namespace, &t.hub, &shared.config.consumer_group)
        .await?;
    let listed: Vec<Ownership> = listed
        .into_iter()
        .filter(|o| partitions.contains(&o.partition_id))
        .collect();
    let now = OffsetDateTime::now_utc();
    let plan = plan(
        &shared.config.owner_id,
        partitions,
        &listed,
        &shared.template(),
        now,
        expiry,
    );
    let claims = plan.claims();
    let won = if claims.is_empty() {
        Vec::new()
    } else {
        store.claim_ownership(&claims).await?
    };
    let won_ids: Vec<&str> = won.iter().map(|o| o.partition_id.as_str()).collect();

    // Held partitions whose renewal failed were taken by someone else.
    let held: Vec<String> = shared.lock_owned().keys().cloned().collect();
    for p in held.iter().filter(|p| !won_ids.contains(&p.as_str())) {
        shared.lose(p, "ownership taken by another instance");
    }
    for o in won {
        let renewed = {
            let mut owned = shared.lock_owned();
            match owned.get_mut(&o.partition_id) {
                Some(held) => {
                    held.ownership = o.clone();
                    held.renewed = SystemTime::now();
                    true
                }
                None => false,
            }
        };
        if !renewed {
            shared.acquire(o).await;
        }
    }
    Ok(plan.take.is_empty())
}

/// When the store cannot be reached, stop partitions whose ownership is past its expiry: another
/// instance may hold them by now.
fn drop_stale(shared: &Shared, expiry: Duration) {
    let stale: Vec<String> = shared
        .lock_owned()
        .iter()
        .filter(|(_, o)| o.renewed.elapsed().unwrap_or_default() > expiry)
        .map(|(p, _)| p.clone())
        .collect();
    for p in stale {
        shared.lose(&p, "ownership could not be renewed before its expiry");
    }
}

//! `kind = "storage"`: Defender's export to a Storage account. One container per table
//! (`insights-logs-advancedhunting-<table>`), one append blob per hour
//! (`tenantId=<id>/y=YYYY/m=MM/d=DD/h=HH/m=00/PT1H.json`) that grows until the hour ends, one
//! JSON record per line.
//!
//! - **Ownership.** Each container is read by one instance at a time: containers are "partitions"
//!   of a virtual hub in the checkpoint store, `({account}, $containers, $storage, {container})`,
//!   claimed, renewed and balanced among instances exactly as the hub reader does for partitions
//!   ([`defender_eventhub::plan`]). A container whose ownership is lost stops being read, and its
//!   positions read under that ownership are never checkpointed.
//! - **Reading.** One task per held container lists its blobs every `poll_interval` (at once
//!   again after a read returned data), orders the hour blobs by the time in their path, and
//!   reads every blob that holds bytes beyond what was read, by byte range, in chunks. Only
//!   complete lines are routed; a trailing partial line waits for the rest (a blob that has not
//!   changed for [`CLOSE_GRACE`] while a newer hour exists gets its last line taken as complete).
//!   Listing every blob, not only the newest, also picks up late appends to an older hour.
//! - **Checkpoints.** One per blob, `({account}, {container}, $storage, {blob key})`, offset =
//!   sequence number = the byte offset up to which every line is delivered; written by the
//!   source's tracker only once everything before it in that blob is delivered. A container's
//!   first start writes a `$start` record, so that `start = "now"` means the same hour after a
//!   restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::time::OffsetDateTime;
use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use bytes::Bytes;
use chrono::{DateTime, TimeZone as _, Utc};
use defender_eventhub::blob::{BlobClient, BlobErrorKind, BlobItem, StorageConnectionString, StorageCredential};
use defender_eventhub::{Backoff, Balancing};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{Framing, Router, RouterShared, Unit};
use crate::config::{StorageSource, StorageStart, parse_storage_start};
use crate::delivery::Origin;
use crate::metrics::Metrics;
use crate::tracker::{self, Committer};

/// The "consumer group" of storage checkpoints and ownership records.
pub const GROUP: &str = "$storage";
/// The "hub" whose "partitions" are the containers, for ownership.
pub const LEASE_HUB: &str = "$containers";
/// The checkpoint record holding where a container started (`earliest` or an hour).
pub const START_RECORD: &str = "$start";
/// Bytes read per request.
pub const CHUNK: u64 = 4 * 1024 * 1024;
/// Bytes of lines per unit (and so per checkpoint step).
pub const UNIT_BYTES: usize = 256 * 1024;
/// A blob's last line without a newline is taken as complete once a newer hour blob exists and
/// the blob has not changed for this long.
pub const CLOSE_GRACE: Duration = Duration::from_secs(600);

/// A position in a blob: every line before `offset` is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPosition {
    /// The container.
    pub container: Arc<str>,
    /// The blob's checkpoint key ([`blob_key`]).
    pub key: Arc<str>,
    /// The container ownership it was read under.
    pub generation: u64,
    /// The byte offset after the last delivered line.
    pub offset: u64,
}

/// A configured storage source, ready to run.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// The blob service endpoint.
    pub endpoint: Url,
    /// How requests are authorized.
    pub credential: StorageCredential,
    /// The account's name in the checkpoint store ([`namespace_of`]).
    pub namespace: String,
    /// The containers to read.
    pub containers: Vec<String>,
    /// Where a container without checkpoints starts.
    pub start: StorageStart,
    /// How often containers are listed.
    pub poll_interval: Duration,
    /// Hour blobs that begin at or after this are left alone (backfills).
    pub until: Option<DateTime<Utc>>,
    /// This instance's name in ownership records.
    pub owner_id: String,
    /// Ownership timing.
    pub balancing: Balancing,
}

/// Builds the settings of a configured storage source.
pub fn settings(cfg: &StorageSource) -> Result<StorageSettings, String> {
    let (endpoint, credential) = match (&cfg.connection_string, &cfg.account_url) {
        (Some(cs), _) => {
            let parsed = StorageConnectionString::parse(cs.0.expose()).map_err(|e| e.to_string())?;
            (parsed.blob_endpoint().clone(), parsed.credential().clone())
        }
        (None, Some(url)) => {
            let endpoint = Url::parse(url.trim()).map_err(|e| format!("account_url: {e}"))?;
            let credential = match (&cfg.shared_key, &cfg.sas) {
                (Some(key), _) => {
                    let account = cfg.account_name.as_deref().unwrap_or_default().trim();
                    StorageCredential::shared_key(account, key.0.expose()).map_err(|e| e.to_string())?
                }
                (None, Some(sas)) => StorageCredential::sas(sas.0.expose()).map_err(|e| e.to_string())?,
                (None, None) => return Err("no credential".to_owned()),
            };
            (endpoint, credential)
        }
        (None, None) => return Err("no account".to_owned()),
    };
    let mut balancing = Balancing::default();
    if let Some(s) = cfg.ownership_update_interval {
        balancing.update_interval = s.0;
    }
    if let Some(s) = cfg.ownership_expiry {
        balancing.expiry = s.0;
    }
    Ok(StorageSettings {
        namespace: namespace_of(&endpoint),
        endpoint,
        credential,
        containers: cfg.container_names(),
        start: cfg
            .start
            .as_deref()
            .map_or(Ok(StorageStart::Earliest), parse_storage_start)?,
        poll_interval: cfg.poll_interval.map_or(Duration::from_secs(30), |s| s.0),
        until: match &cfg.until {
            Some(t) => Some(
                DateTime::parse_from_rfc3339(t.trim())
                    .map_err(|_| format!("until: `{}` is not an RFC 3339 time", &**t))?
                    .with_timezone(&Utc),
            ),
            None => None,
        },
        owner_id: cfg
            .owner_id
            .as_ref()
            .map_or_else(default_owner_id, |o| o.0.trim().to_owned()),
        balancing,
    })
}

fn default_owner_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "defender".to_owned());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// The account's name in checkpoint and ownership records: the endpoint's host (and port), then
/// its path segments (the account, for path-style emulator URLs), joined by `_`:
/// `acct.blob.core.windows.net`, `127.0.0.1:10000_devstoreaccount1`.
pub fn namespace_of(endpoint: &Url) -> String {
    let mut ns = endpoint.host_str().unwrap_or("storage").to_ascii_lowercase();
    if let Some(port) = endpoint.port() {
        ns.push(':');
        ns.push_str(&port.to_string());
    }
    for segment in endpoint.path_segments().into_iter().flatten().filter(|s| !s.is_empty()) {
        ns.push('_');
        ns.push_str(segment);
    }
    ns
}

/// A blob's checkpoint key: its name, lower-cased (the stores lower-case keys anyway), with `/`
/// as `_`. Two names that give one key are refused loudly, never merged.
pub fn blob_key(name: &str) -> String {
    name.to_lowercase().replace('/', "_")
}

/// The hour of an export blob, from the last `y=YYYY/m=MM/d=DD/h=HH/m=MM/<file>` run of its path.
pub fn blob_hour(name: &str) -> Option<DateTime<Utc>> {
    let segments: Vec<&str> = name.split('/').collect();
    let field = |s: &str, key: &str| -> Option<u32> {
        let v = s.strip_prefix(key)?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    };
    // Five time segments followed by the file name.
    (0..segments.len().saturating_sub(5)).rev().find_map(|i| {
        let y = field(segments[i], "y=")?;
        let mo = field(segments[i + 1], "m=")?;
        let d = field(segments[i + 2], "d=")?;
        let h = field(segments[i + 3], "h=")?;
        let mi = field(segments[i + 4], "m=")?;
        Utc.with_ymd_and_hms(i32::try_from(y).ok()?, mo, d, h, mi, 0).single()
    })
}

/// The start of the hour holding `t`.
fn floor_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp();
    Utc.timestamp_opt(secs - secs.rem_euclid(3600), 0).single().unwrap_or(t)
}

/// Splits what was read into complete lines and a partial last line: returns `carry + data` up
/// to and including its last `\n` (if any) and keeps the rest in `carry`.
pub fn take_complete_lines(carry: &mut Vec<u8>, mut data: Vec<u8>) -> Option<Vec<u8>> {
    let Some(nl) = data.iter().rposition(|&b| b == b'\n') else {
        carry.extend_from_slice(&data);
        return None;
    };
    let rest = data[nl + 1..].to_vec();
    let complete = if carry.is_empty() {
        data.truncate(nl + 1);
        data
    } else {
        let mut c = std::mem::take(carry);
        c.extend_from_slice(&data[..=nl]);
        c
    };
    *carry = rest;
    Some(complete)
}

// ---------------------------------------------------------------------------------------------
// Ownership of containers.

/// A container handed to its reading task: held under `generation`, to be read from `not_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    generation: u64,
    not_before: Instant,
}

struct Held {
    generation: u64,
    ownership: Ownership,
    renewed: Instant,
}

/// Which containers this instance holds, claimed and renewed through the checkpoint store.
struct Leases {
    store: Arc<dyn CheckpointStore>,
    namespace: String,
    owner_id: String,
    containers: Vec<String>,
    balancing: Balancing,
    held: Mutex<BTreeMap<String, Held>>,
    watch: BTreeMap<String, watch::Sender<Option<Grant>>>,
    generation: AtomicU64,
    source: Arc<str>,
    metrics: Arc<Metrics>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The ownership generation this instance holds `container` under, if it does.
    fn generation(&self, container: &str) -> Option<u64> {
        self.lock().get(container).map(|h| h.generation)
    }

    fn template(&self) -> Ownership {
        Ownership {
            fully_qualified_namespace: self.namespace.clone(),
            event_hub_name: LEASE_HUB.to_owned(),
            consumer_group: GROUP.to_owned(),
            partition_id: String::new(),
            owner_id: None,
            etag: None,
            last_modified_time: None,
        }
    }

    /// One cycle: list, plan, claim. Takes new containers only when `take`. Returns whether
    /// nothing was left to take.
    async fn cycle(&self, take: bool) -> azure_core::Result<bool> {
        let listed: Vec<Ownership> = self
            .store
            .list_ownerships(&self.namespace, LEASE_HUB, GROUP)
            .await?
            .into_iter()
            .filter(|o| self.containers.contains(&o.partition_id))
            .collect();
        let now = OffsetDateTime::now_utc();
        // Containers another instance holds and renews: taking one is a steal, and that
        // instance reads on until its next renewal tells it so.
        let active_elsewhere: HashSet<String> = listed
            .iter()
            .filter(|o| {
                let owner = o.owner_id.as_deref().unwrap_or_default();
                let fresh = o.last_modified_time.is_some_and(|t| {
                    let age = now - t;
                    age.is_negative() || age.unsigned_abs() < self.balancing.expiry
                });
                !owner.is_empty() && owner != self.owner_id && fresh
            })
            .map(|o| o.partition_id.clone())
            .collect();
        let plan = defender_eventhub::plan(
            &self.owner_id,
            &self.containers,
            &listed,
            &self.template(),
            now,
            self.balancing.expiry,
        );
        let claims: Vec<Ownership> = if take { plan.claims() } else { plan.renew.clone() };
        let won = if claims.is_empty() {
            Vec::new()
        } else {
            self.store.claim_ownership(&claims).await?
        };
        let won_ids: HashSet<&str> = won.iter().map(|o| o.partition_id.as_str()).collect();
        let lost: Vec<String> = self
            .lock()
            .keys()
            .filter(|c| !won_ids.contains(c.as_str()))
            .cloned()
            .collect();
        for c in lost {
            self.lose(&c, "ownership taken by another instance");
        }
        for o in won {
            let mut held = self.lock();
            if let Some(h) = held.get_mut(&o.partition_id) {
                h.ownership = o;
                h.renewed = Instant::now();
            } else if take {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                let container = o.partition_id.clone();
                // After a steal, wait for the previous owner to notice before reading, so that
                // two instances do not read the same lines at once.
                let delay = if active_elsewhere.contains(&container) {
                    self.balancing.update_interval
                } else {
                    Duration::ZERO
                };
                tracing::info!(source = %self.source, container = %container, generation, delay = ?delay, "container acquired");
                held.insert(
                    container.clone(),
                    Held {
                        generation,
                        ownership: o,
                        renewed: Instant::now(),
                    },
                );
                drop(held);
                if let Some(w) = self.watch.get(&container) {
                    w.send_replace(Some(Grant {
                        generation,
                        not_before: Instant::now() + delay,
                    }));
                }
            }
        }
        Ok(plan.take.is_empty())
    }

    fn lose(&self, container: &str, why: &str) {
        if self.lock().remove(container).is_some() {
            tracing::info!(source = %self.source, container, why, "stopped reading container");
            if let Some(w) = self.watch.get(container) {
                w.send_replace(None);
            }
            self.metrics.set(
                "defender_source_up",
                &[("source", &self.source), ("hub", container)],
                0.0,
            );
        }
    }

    /// When the store cannot be reached: give up containers whose ownership expired meanwhile.
    fn drop_stale(&self) {
        let stale: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, h)| h.renewed.elapsed() > self.balancing.expiry)
            .map(|(c, _)| c.clone())
            .collect();
        for c in stale {
            self.lose(&c, "ownership could not be renewed before its expiry");
        }
    }

    /// Gives every held container back, so that another instance takes over at once.
    async fn release_all(&self) {
        let releases: Vec<Ownership> = std::mem::take(&mut *self.lock())
            .into_values()
            .map(|h| Ownership {
                owner_id: Some(String::new()),
                ..h.ownership
            })
            .collect();
        for w in self.watch.values() {
            w.send_replace(None);
        }
        if releases.is_empty() {
            return;
        }
        match self.store.claim_ownership(&releases).await {
            Ok(released) => tracing::info!(source = %self.source, count = released.len(), "released containers"),
            Err(e) => {
                tracing::warn!(source = %self.source, error = %e, "could not release containers; they free up after the expiry");
            }
        }
    }
}

/// Claims and renews containers until `stop`; takes new ones only until `stop_taking`.
async fn lease_loop(leases: Arc<Leases>, stop_taking: CancellationToken, stop: CancellationToken) {
    let interval = leases.balancing.update_interval;
    let mut backoff = Backoff::new(Duration::from_millis(200), interval);
    loop {
        let take = !stop_taking.is_cancelled();
        let wait = match leases.cycle(take).await {
            Ok(balanced) => {
                backoff.reset();
                if balanced || !take {
                    interval
                } else {
                    interval.min(Duration::from_secs(1))
                }
            }
            Err(e) => {
                tracing::warn!(source = %leases.source, error = %e, "container ownership cycle failed; retrying");
                leases.drop_stale();
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints.

struct BlobCommitter {
    store: Arc<dyn CheckpointStore>,
    leases: Arc<Leases>,
}

#[async_trait]
impl Committer for BlobCommitter {
    type Position = BlobPosition;

    async fn commit(&self, stream: &str, position: &BlobPosition) -> Result<bool, String> {
        let m = &self.leases.metrics;
        let source = &self.leases.source;
        if self.leases.generation(&position.container) != Some(position.generation) {
            tracing::debug!(source = %source, stream, "not checkpointing: container ownership changed");
            return Ok(false);
        }
        let r = self
            .store
            .update_checkpoint(Checkpoint {
                fully_qualified_namespace: self.leases.namespace.clone(),
                event_hub_name: position.container.to_string(),
                consumer_group: GROUP.to_owned(),
                partition_id: position.key.to_string(),
                offset: Some(position.offset.to_string()),
                sequence_number: Some(i64::try_from(position.offset).unwrap_or(i64::MAX)),
            })
            .await;
        match &r {
            Ok(()) => m.add("defender_checkpoints_total", &[("source", source)], 1),
            Err(_) => m.add("defender_checkpoint_errors_total", &[("source", source)], 1),
        }
        tracing::trace!(source = %source, stream, offset = position.offset, "checkpoint");
        r.map(|()| true).map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// What every container task of a source shares.
struct Ctx {
    source: Arc<str>,
    settings: StorageSettings,
    store: Arc<dyn CheckpointStore>,
    /// When the source started (`start = "now"`).
    started_at: DateTime<Utc>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

/// One blob as far as it was read.
#[derive(Debug, Default)]
struct BlobState {
    /// Bytes up to the end of the last complete line routed.
    consumed: u64,
    /// Bytes read after that: a partial line.
    carry: Vec<u8>,
}

impl BlobState {
    fn fetched(&self) -> u64 {
        self.consumed + self.carry.len() as u64
    }
}

/// A container while this instance holds it.
struct ContainerState {
    /// Hour blobs before this one are not read (`None`: every blob).
    cutoff: Option<DateTime<Utc>>,
    /// Checkpointed offsets by blob key, as loaded.
    checkpoints: HashMap<String, u64>,
    /// What was read, by blob name.
    blobs: HashMap<String, BlobState>,
    /// Blob key -> name, to catch two names sharing a key.
    keys: HashMap<String, String>,
    /// Names already warned about (not an hour blob, key collision).
    warned: HashSet<String>,
    /// Whether the container was missing at the last listing.
    missing: bool,
}

/// Why a pass over a container ended early.
enum Interrupt {
    /// Stop, or ownership lost.
    Stop,
    /// The storage account failed; try again after a pause.
    Failed(String),
}

/// A running storage source.
#[derive(Debug)]
pub struct RunningStorage {
    /// The task; it ends after `stop`, once what was read is delivered and checkpointed.
    pub task: JoinHandle<()>,
}

/// Checks the account answers, then reads every configured container this instance wins.
pub async fn start(
    source: Arc<str>,
    settings: StorageSettings,
    store: Arc<dyn CheckpointStore>,
    shared: RouterShared,
    checkpoint_interval: Duration,
    stop: CancellationToken,
) -> Result<RunningStorage, String> {
    let mut clients = Vec::new();
    for c in &settings.containers {
        let client = BlobClient::for_account(settings.endpoint.as_str(), c, settings.credential.clone())
            .map_err(|e| e.to_string())?;
        clients.push(client);
    }
    // One request to know the account and credential work: a missing container is fine.
    if let Some(client) = clients.first() {
        match client.list_blobs_page("", None, Some(1)).await {
            Ok(_) => {}
            Err(e) if is_container_missing(&e) => {}
            Err(e) => return Err(format!("cannot list container `{}`: {e}", client.container())),
        }
    }
    tracing::info!(source = %source, account = %settings.namespace, containers = settings.containers.len(), "reading Storage account export");
    let watch: BTreeMap<String, watch::Sender<Option<Grant>>> = settings
        .containers
        .iter()
        .map(|c| (c.clone(), watch::Sender::new(None)))
        .collect();
    let leases = Arc::new(Leases {
        store: store.clone(),
        namespace: settings.namespace.clone(),
        owner_id: settings.owner_id.clone(),
        containers: settings.containers.clone(),
        balancing: settings.balancing.clone(),
        held: Mutex::new(BTreeMap::new()),
        watch,
        generation: AtomicU64::new(0),
        source: source.clone(),
        metrics: shared.metrics.clone(),
    });
    let (handle, tracker_task) = tracker::spawn(
        BlobCommitter {
            store: store.clone(),
            leases: leases.clone(),
        },
        checkpoint_interval,
    );
    let ctx = Arc::new(Ctx {
        source: source.clone(),
        settings,
        store,
        started_at: Utc::now(),
        metrics: shared.metrics.clone(),
        stop: stop.clone(),
    });
    let lease_stop = CancellationToken::new();
    let lease_task = tokio::spawn(lease_loop(leases.clone(), stop.clone(), lease_stop.clone()));
    let mut tasks = Vec::new();
    for client in clients {
        let container = client.container().to_owned();
        let lease = leases.watch[&container].subscribe();
        let router = Router::new(source.clone(), shared.clone(), handle.clone());
        tasks.push(tokio::spawn(container_loop(ctx.clone(), client, router, lease)));
    }
    drop(handle);
    drop(shared);
    let task = tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
        // Every router is gone: the tracker ends once every unit is delivered, committing last,
        // while the containers are still held.
        let _ = tracker_task.await;
        lease_stop.cancel();
        let _ = lease_task.await;
        leases.release_all().await;
        for c in &ctx.settings.containers {
            ctx.metrics
                .set("defender_source_up", &[("source", &ctx.source), ("hub", c)], 0.0);
        }
        tracing::info!(source = %ctx.source, "stopped reading");
    });
    Ok(RunningStorage { task })
}

fn is_container_missing(e: &defender_eventhub::blob::BlobError) -> bool {
    e.kind() == BlobErrorKind::NotFound
}

/// Reads a container whenever this instance holds it, until stopped.
async fn container_loop(
    ctx: Arc<Ctx>,
    client: BlobClient,
    mut router: Router<BlobPosition>,
    mut lease: watch::Receiver<Option<Grant>>,
) {
    let container: Arc<str> = Arc::from(client.container());
    loop {
        let generation = loop {
            if ctx.stop.is_cancelled() {
                return;
            }
            let grant = *lease.borrow_and_update();
            if let Some(g) = grant {
                let now = Instant::now();
                if g.not_before <= now {
                    break g.generation;
                }
                tokio::select! {
                    () = ctx.stop.cancelled() => return,
                    changed = lease.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(g.not_before - now) => {
                        if *lease.borrow() == grant {
                            break g.generation;
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                () = ctx.stop.cancelled() => return,
                changed = lease.changed() => if changed.is_err() { return },
            }
        };
        read_while_held(&ctx, &client, &container, &mut router, &mut lease, generation).await;
        ctx.metrics.set(
            "defender_source_up",
            &[("source", &ctx.source), ("hub", &container)],
            0.0,
        );
    }
}

fn held(ctx: &Ctx, lease: &watch::Receiver<Option<Grant>>, generation: u64) -> bool {
    !ctx.stop.is_cancelled() && lease.borrow().is_some_and(|g| g.generation == generation)
}

/// Waits `d`, or less when stopping or when the ownership changes.
async fn pause(ctx: &Ctx, lease: &mut watch::Receiver<Option<Grant>>, d: Duration) {
    tokio::select! {
        () = ctx.stop.cancelled() => {}
        _ = lease.changed() => {}
        () = tokio::time::sleep(d) => {}
    }
}

async fn read_while_held(
    ctx: &Ctx,
    client: &BlobClient,
    container: &Arc<str>,
    router: &mut Router<BlobPosition>,
    lease: &mut watch::Receiver<Option<Grant>>,
    generation: u64,
) {
    let poll = ctx.settings.poll_interval;
    let mut backoff = Backoff::new(Duration::from_millis(200), poll.max(Duration::from_secs(5)));
    // Where to start: the checkpoints, else the configured start (recorded on first sight).
    let mut state = loop {
        if !held(ctx, lease, generation) {
            return;
        }
        match load(ctx, container).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(source = %ctx.source, container = %container, error = %e, "cannot read checkpoints; retrying");
                let d = backoff.next_delay();
                pause(ctx, lease, d).await;
            }
        }
    };
    backoff.reset();
    while held(ctx, lease, generation) {
        let wait = match pass(ctx, client, container, router, lease, generation, &mut state).await {
            Ok(true) => {
                backoff.reset();
                continue;
            }
            Ok(false) => {
                backoff.reset();
                poll
            }
            Err(Interrupt::Stop) => return,
            Err(Interrupt::Failed(e)) => {
                ctx.metrics.set(
                    "defender_source_up",
                    &[("source", &ctx.source), ("hub", container)],
                    0.0,
                );
                let d = backoff.next_delay();
                tracing::warn!(source = %ctx.source, container = %container, error = %e, retry_in = ?d, "cannot read container; retrying");
                d
            }
        };
        pause(ctx, lease, wait).await;
    }
}

/// A container's checkpoints and start, writing the start record on first sight.
async fn load(ctx: &Ctx, container: &str) -> Result<ContainerState, String> {
    let ns = &ctx.settings.namespace;
    let records = ctx
        .store
        .list_checkpoints(ns, container, GROUP)
        .await
        .map_err(|e| e.to_string())?;
    let mut checkpoints = HashMap::new();
    let mut recorded_start = None;
    for cp in records {
        if cp.partition_id == START_RECORD {
            recorded_start = cp.offset;
            continue;
        }
        let offset = cp
            .offset
            .as_deref()
            .and_then(|o| o.parse::<u64>().ok())
            .or_else(|| cp.sequence_number.and_then(|s| u64::try_from(s).ok()));
        if let Some(offset) = offset {
            checkpoints.insert(cp.partition_id, offset);
        }
    }
    let cutoff = match recorded_start {
        Some(s) if s == "earliest" => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(&s)
                .map_err(|_| format!("the `{START_RECORD}` record holds `{s}`, not a time"))?
                .with_timezone(&Utc),
        ),
        None => {
            let cutoff = match ctx.settings.start {
                StorageStart::Earliest => None,
                StorageStart::Now => Some(floor_hour(ctx.started_at)),
                StorageStart::Time(t) => Some(floor_hour(t)),
            };
            let text = cutoff.map_or_else(
                || "earliest".to_owned(),
                |c| c.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            ctx.store
                .update_checkpoint(Checkpoint {
                    fully_qualified_namespace: ns.clone(),
                    event_hub_name: container.to_owned(),
                    consumer_group: GROUP.to_owned(),
                    partition_id: START_RECORD.to_owned(),
                    offset: Some(text.clone()),
                    sequence_number: Some(0),
                })
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(source = %ctx.source, container, start = %text, "first start in this container");
            cutoff
        }
    };
    Ok(ContainerState {
        cutoff,
        checkpoints,
        blobs: HashMap::new(),
        keys: HashMap::new(),
        warned: HashSet::new(),
        missing: false,
    })
}

/// Lists the container and reads what is new in every hour blob, oldest hour first. Returns
/// whether anything was read.
#[allow(clippy::too_many_lines)]
async fn pass(
    ctx: &Ctx,
    client: &BlobClient,
    container: &Arc<str>,
    router: &mut Router<BlobPosition>,
    lease: &watch::Receiver<Option<Grant>>,
    generation: u64,
    state: &mut ContainerState,
) -> Result<bool, Interrupt> {
    let up = |v: f64| {
        ctx.metrics
            .set("defender_source_up", &[("source", &ctx.source), ("hub", container)], v);
    };
    let listed = match client.list_blobs("").await {
        Ok(l) => l,
        Err(e) if is_container_missing(&e) => {
            if !state.missing {
                tracing::info!(source = %ctx.source, container = %container, "container does not exist (yet); looking again every poll_interval");
                state.missing = true;
            }
            up(0.0);
            return Ok(false);
        }
        Err(e) => return Err(Interrupt::Failed(e.to_string())),
    };
    if state.missing {
        tracing::info!(source = %ctx.source, container = %container, "container exists now");
        state.missing = false;
    }
    up(1.0);
    let mut blobs: Vec<(DateTime<Utc>, BlobItem)> = Vec::with_capacity(listed.len());
    for item in listed {
        let Some(hour) = blob_hour(&item.name) else {
            if state.warned.insert(item.name.clone()) {
                tracing::warn!(source = %ctx.source, container = %container, blob = %item.name, "not an hour blob (…/y=YYYY/m=MM/d=DD/h=HH/m=MM/file); skipped");
            }
            continue;
        };
        if state.cutoff.is_some_and(|c| hour < c) || ctx.settings.until.is_some_and(|u| hour >= u) {
            continue;
        }
        let key = blob_key(&item.name);
        match state.keys.get(&key) {
            Some(name) if *name != item.name => {
                if state.warned.insert(item.name.clone()) {
                    tracing::error!(source = %ctx.source, container = %container, blob = %item.name, other = %name, "two blobs share one checkpoint key (names differ only in case); this one is skipped");
                }
                continue;
            }
            Some(_) => {}
            None => {
                state.keys.insert(key, item.name.clone());
            }
        }
        blobs.push((hour, item));
    }
    blobs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    // Forget blobs that are gone (deleted by a lifecycle rule).
    let present: HashSet<&str> = blobs.iter().map(|(_, b)| b.name.as_str()).collect();
    state.blobs.retain(|name, _| present.contains(name.as_str()));
    state.keys.retain(|_, name| present.contains(name.as_str()));
    let newest = blobs.last().map(|(h, _)| *h);

    let mut progressed = false;
    for (hour, item) in &blobs {
        let name = item.name.as_str();
        let key: Arc<str> = Arc::from(blob_key(name));
        let st = state.blobs.entry(name.to_owned()).or_insert_with(|| BlobState {
            consumed: state.checkpoints.get(&*key).copied().unwrap_or(0),
            carry: Vec::new(),
        });
        if item.content_length < st.consumed {
            tracing::warn!(source = %ctx.source, container = %container, blob = name, length = item.content_length, read = st.consumed, "blob is shorter than what was read (replaced?); reading it again from the start");
            *st = BlobState::default();
        }
        let stream = format!("{container}/{name}");
        let partition: Arc<str> = Arc::from(stream.as_str());
        let mut length = item.content_length;
        while st.fetched() < length {
            if !held(ctx, lease, generation) {
                return Err(Interrupt::Stop);
            }
            let from = st.fetched();
            let range = match client.get_range(name, from, from + CHUNK - 1).await {
                Ok(r) => r,
                Err(e) if e.kind() == BlobErrorKind::NotFound => break,
                Err(e) => return Err(Interrupt::Failed(e.to_string())),
            };
            length = length.max(range.total_length);
            if range.data.is_empty() {
                break;
            }
            progressed = true;
            let Some(complete) = take_complete_lines(&mut st.carry, range.data) else {
                continue;
            };
            let start = st.consumed;
            st.consumed += complete.len() as u64;
            route(
                ctx,
                router,
                &stream,
                &partition,
                lease,
                BlobPosition {
                    container: container.clone(),
                    key: key.clone(),
                    generation,
                    offset: start,
                },
                complete,
            )
            .await;
        }
        // A last line without its newline, in an hour that is over and a blob that stopped
        // changing: it is all there will be.
        let closed = newest.is_some_and(|n| n > *hour)
            && (Utc::now() - item.last_modified)
                .to_std()
                .is_ok_and(|age| age >= CLOSE_GRACE);
        if closed && !st.carry.is_empty() && st.fetched() >= item.content_length {
            let line = std::mem::take(&mut st.carry);
            tracing::info!(source = %ctx.source, container = %container, blob = name, bytes = line.len(), "taking the blob's last line, which has no newline");
            let start = st.consumed;
            st.consumed += line.len() as u64;
            route(
                ctx,
                router,
                &stream,
                &partition,
                lease,
                BlobPosition {
                    container: container.clone(),
                    key: key.clone(),
                    generation,
                    offset: start,
                },
                line,
            )
            .await;
            progressed = true;
        }
    }
    Ok(progressed)
}

/// Routes complete lines that start at byte `start.offset` of a blob, in units of at most about
/// [`UNIT_BYTES`] (cut at line ends), each checkpointed on its own: a crash re-reads little.
async fn route(
    ctx: &Ctx,
    router: &mut Router<BlobPosition>,
    stream: &str,
    partition: &Arc<str>,
    lease: &watch::Receiver<Option<Grant>>,
    start: BlobPosition,
    lines: Vec<u8>,
) {
    let lines = Bytes::from(lines);
    let mut from = 0;
    // The rest of a read is dropped when stopping or losing the container: nothing past what
    // was routed gets checkpointed, and the next reader starts from the checkpoint.
    while from < lines.len() && (from == 0 || held(ctx, lease, start.generation)) {
        let to = unit_end(&lines, from);
        let origin = Arc::new(Origin {
            source: ctx.source.clone(),
            partition: partition.clone(),
            sequence_number: None,
            offset: Some((start.offset + from as u64).to_string()),
        });
        let position = BlobPosition {
            offset: start.offset + to as u64,
            ..start.clone()
        };
        router
            .route(Unit {
                stream: stream.to_owned(),
                position,
                bodies: vec![(lines.slice(from..to), origin)],
                framing: Framing::Lines,
            })
            .await;
        from = to;
    }
}

/// Where the unit starting at `from` ends: after the last line end within [`UNIT_BYTES`], or
/// after the first one past it when a line is longer.
fn unit_end(lines: &[u8], from: usize) -> usize {
    let to = (from + UNIT_BYTES).min(lines.len());
    if to == lines.len() {
        return to;
    }
    match lines[from..to].iter().rposition(|&b| b == b'\n') {
        Some(i) => from + i + 1,
        None => lines[to..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(lines.len(), |i| to + i + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_come_from_the_path() {
        let t = blob_hour("tenantId=5f2b6a1e-3c4d/y=2026/m=11/d=24/h=09/m=00/PT1H.json").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T09:00:00+00:00");
        // Azure Monitor's resource layout has the same tail.
        let t = blob_hour("resourceId=/SUBSCRIPTIONS/X/y=2024/m=01/d=02/h=23/m=00/PT1H.json").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-01-02T23:00:00+00:00");
        assert!(blob_hour("tenantId=x/y=2026/m=11/d=24/h=09/m=00").is_none(), "no file");
        assert!(blob_hour("tenantId=x/y=2026/m=13/d=24/h=09/m=00/PT1H.json").is_none());
        assert!(blob_hour("notes.txt").is_none());
        assert!(blob_hour("y=2026/m=1x/d=24/h=09/m=00/PT1H.json").is_none());
    }

    #[test]
    fn keys_are_file_and_blob_safe() {
        assert_eq!(
            blob_key("tenantId=AB/y=2026/m=11/d=24/h=09/m=00/PT1H.json"),
            "tenantid=ab_y=2026_m=11_d=24_h=09_m=00_pt1h.json"
        );
        assert!(!blob_key("a/b/c").contains('/'));
    }

    #[test]
    fn namespaces_name_the_account() {
        let u = Url::parse("https://acct.blob.core.windows.net").unwrap();
        assert_eq!(namespace_of(&u), "acct.blob.core.windows.net");
        let u = Url::parse("http://127.0.0.1:10000/devstoreaccount1").unwrap();
        assert_eq!(namespace_of(&u), "127.0.0.1:10000_devstoreaccount1");
    }

    #[test]
    fn only_complete_lines_are_taken() {
        let mut carry = Vec::new();
        assert_eq!(take_complete_lines(&mut carry, b"{\"a\"".to_vec()), None);
        assert_eq!(carry, b"{\"a\"");
        assert_eq!(
            take_complete_lines(&mut carry, b":1}\n{\"b\":2}\n{\"c\"".to_vec()).unwrap(),
            b"{\"a\":1}\n{\"b\":2}\n"
        );
        assert_eq!(carry, b"{\"c\"");
        assert_eq!(
            take_complete_lines(&mut carry, b":3}\n".to_vec()).unwrap(),
            b"{\"c\":3}\n"
        );
        assert!(carry.is_empty());
        assert_eq!(take_complete_lines(&mut carry, b"x\n".to_vec()).unwrap(), b"x\n");
    }

    #[test]
    fn units_end_at_line_ends() {
        let line = vec![b'x'; 1000];
        let mut lines = Vec::new();
        for _ in 0..1000 {
            lines.extend_from_slice(&line);
            lines.push(b'\n');
        }
        let mut from = 0;
        let mut units = 0;
        while from < lines.len() {
            let to = unit_end(&lines, from);
            assert!(to - from <= UNIT_BYTES && lines[to - 1] == b'\n');
            from = to;
            units += 1;
        }
        assert_eq!(units, lines.len().div_ceil(UNIT_BYTES - 1000));
        // A line longer than a unit is one unit.
        let long = [vec![b'y'; UNIT_BYTES + 10], b"\nz\n".to_vec()].concat();
        assert_eq!(unit_end(&long, 0), UNIT_BYTES + 11);
        assert_eq!(unit_end(&long, UNIT_BYTES + 11), long.len());
    }

    #[test]
    fn hours_floor() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T09:31:07Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(floor_hour(t).to_rfc3339(), "2026-11-24T09:00:00+00:00");
    }
}

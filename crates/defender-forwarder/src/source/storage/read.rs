//! Reading the containers this instance holds: one task per container, routing complete lines
//! of its hour blobs, in order, while its lease lasts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::Checkpoint;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use defender_eventhub::Backoff;
use defender_eventhub::blob::{BlobClient, BlobErrorKind, BlobItem};
use defender_eventhub::lease::Leases;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    BlobCommitter, BlobPosition, CHUNK, CLOSE_GRACE, ContainerHandler, GROUP, ReadGrant, START_RECORD, StorageConfig,
    StorageStart, UNIT_BYTES, blob_hour, blob_key, floor_hour, take_complete_lines,
};
use crate::delivery::Origin;
use crate::metrics::Metrics;
use crate::metrics::families::SOURCE_UP;
use crate::router::{Framing, Router, Unit};
use crate::source::SourceContext;
use crate::tracker;

/// Reads every container whenever this instance holds it, then follows the shutdown order of
/// [`crate::source`]: stop reading, deliver, checkpoint, release.
pub(super) async fn run(
    config: StorageConfig,
    cx: SourceContext,
    clients: Vec<BlobClient>,
    leases: Arc<Leases>,
    handler: Arc<ContainerHandler>,
    at_end: Arc<Mutex<BTreeMap<String, bool>>>,
) {
    let (handle, tracker_task) = tracker::spawn(
        BlobCommitter {
            store: cx.store.get(),
            leases: leases.clone(),
            source: cx.name.clone(),
            metrics: cx.router.metrics.clone(),
        },
        cx.checkpoint_interval,
        cx.router.unsaved.clone(),
    );
    let ctx = Arc::new(Ctx {
        source: cx.name.clone(),
        config,
        store: cx.store.get(),
        started_at: Utc::now(),
        metrics: cx.router.metrics.clone(),
        stop: cx.stop.clone(),
        at_end,
    });
    let stop_leasing = CancellationToken::new();
    let lease_task = tokio::spawn(
        leases
            .clone()
            .run(handler.clone(), cx.stop.clone(), stop_leasing.clone()),
    );
    let mut tasks = Vec::new();
    for client in clients {
        let grant = handler.grants[client.container()].subscribe();
        let router = Router::new(cx.name.clone(), cx.router.clone(), handle.clone());
        tasks.push(tokio::spawn(container_loop(ctx.clone(), client, router, grant)));
    }
    drop(handle);
    drop(cx);
    for t in tasks {
        let _ = t.await;
    }
    // Every router is gone: the tracker ends once every unit is delivered, committing last,
    // while the containers are still held.
    let _ = tracker_task.await;
    stop_leasing.cancel();
    let _ = lease_task.await;
    leases.release_all().await;
    for c in leases.ids() {
        ctx.metrics.set(&SOURCE_UP, [&ctx.source, c], 0.0);
    }
    tracing::info!(source = %ctx.source, "stopped reading");
}

/// What every container task of a source shares.
struct Ctx {
    source: Arc<str>,
    config: StorageConfig,
    store: Arc<dyn CheckpointStore>,
    /// When the source started (`start = "now"`).
    started_at: DateTime<Utc>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    /// Per held container: whether its last pass found nothing new.
    at_end: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Ctx {
    fn up(&self, container: &str, up: bool) {
        self.metrics
            .set(&SOURCE_UP, [&self.source, container], if up { 1.0 } else { 0.0 });
    }

    fn at_end(&self, container: &str, done: bool) {
        self.at_end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(container.to_owned(), done);
    }
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

pub(super) fn is_container_missing(e: &defender_eventhub::blob::BlobError) -> bool {
    e.kind() == BlobErrorKind::NotFound
}

/// Reads a container whenever this instance holds it, until stopped.
async fn container_loop(
    ctx: Arc<Ctx>,
    client: BlobClient,
    mut router: Router<BlobPosition>,
    mut lease: watch::Receiver<Option<ReadGrant>>,
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
        ctx.up(&container, false);
        ctx.at_end(&container, false);
    }
}

fn held(ctx: &Ctx, lease: &watch::Receiver<Option<ReadGrant>>, generation: u64) -> bool {
    !ctx.stop.is_cancelled() && lease.borrow().is_some_and(|g| g.generation == generation)
}

/// Waits `d`, or less when stopping or when the ownership changes.
async fn pause(ctx: &Ctx, lease: &mut watch::Receiver<Option<ReadGrant>>, d: Duration) {
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
    lease: &mut watch::Receiver<Option<ReadGrant>>,
    generation: u64,
) {
    let poll = ctx.config.poll_interval;
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
                ctx.at_end(container, false);
                continue;
            }
            Ok(false) => {
                backoff.reset();
                ctx.at_end(container, true);
                poll
            }
            Err(Interrupt::Stop) => return,
            Err(Interrupt::Failed(e)) => {
                ctx.up(container, false);
                ctx.at_end(container, false);
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
    let ns = &ctx.config.account.namespace();
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
            let cutoff = match ctx.config.start {
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
async fn pass(
    ctx: &Ctx,
    client: &BlobClient,
    container: &Arc<str>,
    router: &mut Router<BlobPosition>,
    lease: &watch::Receiver<Option<ReadGrant>>,
    generation: u64,
    state: &mut ContainerState,
) -> Result<bool, Interrupt> {
    let Some(blobs) = list(ctx, client, container, state).await? else {
        return Ok(false);
    };
    let newest = blobs.last().map(|(h, _)| *h);
    let mut progressed = false;
    for (hour, item) in &blobs {
        let blob = Blob {
            client,
            container,
            item,
            // A last line without its newline, in an hour that is over and a blob that stopped
            // changing: it is all there will be.
            closed: newest.is_some_and(|n| n > *hour)
                && (Utc::now() - item.last_modified)
                    .to_std()
                    .is_ok_and(|age| age >= CLOSE_GRACE),
        };
        progressed |= read_blob(ctx, &blob, router, lease, generation, state).await?;
    }
    Ok(progressed)
}

/// The hour blobs to read, oldest first; `None` when the container does not exist (yet).
async fn list(
    ctx: &Ctx,
    client: &BlobClient,
    container: &Arc<str>,
    state: &mut ContainerState,
) -> Result<Option<Vec<(DateTime<Utc>, BlobItem)>>, Interrupt> {
    let listed = match client.list_blobs("").await {
        Ok(l) => l,
        Err(e) if is_container_missing(&e) => {
            if !state.missing {
                tracing::info!(source = %ctx.source, container = %container, "container does not exist (yet); looking again every poll_interval");
                state.missing = true;
            }
            ctx.up(container, false);
            return Ok(None);
        }
        Err(e) => return Err(Interrupt::Failed(e.to_string())),
    };
    if state.missing {
        tracing::info!(source = %ctx.source, container = %container, "container exists now");
        state.missing = false;
    }
    ctx.up(container, true);
    let mut blobs: Vec<(DateTime<Utc>, BlobItem)> = Vec::with_capacity(listed.len());
    for item in listed {
        if let Some(hour) = wanted(ctx, container, state, &item) {
            blobs.push((hour, item));
        }
    }
    blobs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    // Forget blobs that are gone (deleted by a lifecycle rule).
    let present: HashSet<&str> = blobs.iter().map(|(_, b)| b.name.as_str()).collect();
    state.blobs.retain(|name, _| present.contains(name.as_str()));
    state.keys.retain(|_, name| present.contains(name.as_str()));
    Ok(Some(blobs))
}

/// The hour of a listed blob, if it is one to read: an hour blob, within the source's range,
/// whose checkpoint key no other blob has.
fn wanted(ctx: &Ctx, container: &str, state: &mut ContainerState, item: &BlobItem) -> Option<DateTime<Utc>> {
    let Some(hour) = blob_hour(&item.name) else {
        if state.warned.insert(item.name.clone()) {
            tracing::warn!(source = %ctx.source, container = %container, blob = %item.name, "not an hour blob (…/y=YYYY/m=MM/d=DD/h=HH/m=MM/file); skipped");
        }
        return None;
    };
    if state.cutoff.is_some_and(|c| hour < c) || ctx.config.until.is_some_and(|u| hour >= u) {
        return None;
    }
    let key = blob_key(&item.name);
    match state.keys.get(&key) {
        Some(name) if *name != item.name => {
            if state.warned.insert(item.name.clone()) {
                tracing::error!(source = %ctx.source, container = %container, blob = %item.name, other = %name, "two blobs share one checkpoint key (names differ only in case); this one is skipped");
            }
            return None;
        }
        Some(_) => {}
        None => {
            state.keys.insert(key, item.name.clone());
        }
    }
    Some(hour)
}

/// One listed hour blob.
struct Blob<'a> {
    client: &'a BlobClient,
    container: &'a Arc<str>,
    item: &'a BlobItem,
    /// Its hour is over and it stopped changing: a last line without newline is complete.
    closed: bool,
}

/// Reads what is new in one blob by byte range and routes its complete lines. Returns whether
/// anything was read.
async fn read_blob(
    ctx: &Ctx,
    blob: &Blob<'_>,
    router: &mut Router<BlobPosition>,
    lease: &watch::Receiver<Option<ReadGrant>>,
    generation: u64,
    state: &mut ContainerState,
) -> Result<bool, Interrupt> {
    let name = blob.item.name.as_str();
    let key: Arc<str> = Arc::from(blob_key(name));
    let st = state.blobs.entry(name.to_owned()).or_insert_with(|| BlobState {
        consumed: state.checkpoints.get(&*key).copied().unwrap_or(0),
        carry: Vec::new(),
    });
    if blob.item.content_length < st.consumed {
        tracing::warn!(source = %ctx.source, container = %blob.container, blob = name, length = blob.item.content_length, read = st.consumed, "blob is shorter than what was read (replaced?); reading it again from the start");
        *st = BlobState::default();
    }
    let stream = format!("{}/{name}", blob.container);
    let at = |offset| BlobPosition {
        container: blob.container.clone(),
        key: key.clone(),
        generation,
        offset,
    };
    let mut progressed = false;
    let mut length = blob.item.content_length;
    while st.fetched() < length {
        if !held(ctx, lease, generation) {
            return Err(Interrupt::Stop);
        }
        let from = st.fetched();
        let range = match blob.client.get_range(name, from, from + CHUNK - 1).await {
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
        route(ctx, router, &stream, lease, at(start), complete).await;
    }
    if blob.closed && !st.carry.is_empty() && st.fetched() >= blob.item.content_length {
        let line = std::mem::take(&mut st.carry);
        tracing::info!(source = %ctx.source, container = %blob.container, blob = name, bytes = line.len(), "taking the blob's last line, which has no newline");
        let start = st.consumed;
        st.consumed += line.len() as u64;
        route(ctx, router, &stream, lease, at(start), line).await;
        progressed = true;
    }
    Ok(progressed)
}

/// Routes complete lines that start at byte `start.offset` of a blob, in units of at most about
/// [`UNIT_BYTES`] (cut at line ends), each checkpointed on its own: a crash re-reads little.
async fn route(
    ctx: &Ctx,
    router: &mut Router<BlobPosition>,
    stream: &str,
    lease: &watch::Receiver<Option<ReadGrant>>,
    start: BlobPosition,
    lines: Vec<u8>,
) {
    let partition: Arc<str> = Arc::from(stream);
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
pub(super) fn unit_end(lines: &[u8], from: usize) -> usize {
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

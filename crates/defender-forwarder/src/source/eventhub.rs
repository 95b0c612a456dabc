//! `kind = "eventhub"`: one Event Hub, or one per table, each read by a [`Reader`]; each batch is
//! routed as one unit and checkpointed once every sink has it.
//!
//! ```toml
//! [[sources]]
//! kind = "eventhub"
//! connection_string = "${DEFENDER_EVENTHUB_CONNECTION_STRING}"
//! hub = "defender"             # or hubs = "per-table", or hubs = ["a", "b"]
//! consumer_group = "forwarder"
//! start = "earliest"
//! ```
//!
//! A configured hub that does not exist (yet) is tried again every `missing_hub_retry` without
//! holding the others back; only all of them missing stops the start.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use defender_eventhub::{
    Balancing, Batch, Checkpointer, Connection, Position, Reader, ReaderConfig, Secret, StartFrom,
};
use defender_schema::Table;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_with::serde_as;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{RunningSource, SourceConfig, SourceContext, SourceStatus, UnitState, UnitStatus, unit_states};
use crate::config::{Credential, FromText, Invalid, ListOf, Num, SecretText, Span, Text, expand};
use crate::delivery::Origin;
use crate::error_chain;
use crate::metrics::Metrics;
use crate::metrics::families::{
    CHECKPOINT_ERRORS, CHECKPOINT_SEQUENCE, CHECKPOINTS, LAG_EVENTS, READ_DELAY, READ_SEQUENCE, SOURCE_UP,
};
use crate::router::{Framing, Router, Unit};
use crate::tracker::{self, Committer};

/// Events fetched ahead across a hub's partitions (at least 2 per partition) when `prefetch`
/// is not configured. Memory grows with it times the message size (up to 1 MB); on a distant
/// hub a larger per-partition `prefetch` keeps the link busy across the round trip.
pub const DEFAULT_HUB_PREFETCH: u32 = 8;

/// The hub name prefix Defender uses for per-table hubs (and Storage containers).
pub const DEFAULT_HUB_PREFIX: &str = "insights-logs-advancedhunting-";

/// `kind = "eventhub"`.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubConfig {
    /// Name in logs, metrics and dead letters (default `eventhub`).
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub name: Option<String>,
    /// A namespace or hub connection string.
    #[serde(default)]
    #[serde_as(as = "Option<SecretText>")]
    pub connection_string: Option<Secret>,
    /// Or: the namespace (`myns.servicebus.windows.net`), with `credential`.
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub namespace: Option<String>,
    /// The Entra ID identity used with `namespace`.
    #[serde(default)]
    pub credential: Option<Credential>,
    /// The hub, unless the connection string names it (`EntityPath`); empty means unset.
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub hub: Option<String>,
    /// Several hubs of the namespace instead of one: `"per-table"` or a list of names.
    #[serde(default)]
    pub hubs: Option<Hubs>,
    /// With `hubs = "per-table"`: the tables to read (default: every table the schema knows).
    #[serde(default)]
    #[serde_as(as = "Option<ListOf<FromText>>")]
    pub tables: Option<Vec<Table>>,
    /// With `hubs = "per-table"`: the hub name prefix (default `insights-logs-advancedhunting-`).
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub hub_prefix: Option<String>,
    /// How often a configured hub that does not exist (yet) is tried again.
    #[serde(default = "EventHubConfig::default_missing_hub_retry")]
    #[serde_as(as = "Span")]
    pub missing_hub_retry: Duration,
    /// Consumer group (give each deployment its own).
    #[serde(default = "EventHubConfig::default_consumer_group")]
    #[serde_as(as = "Text")]
    pub consumer_group: String,
    /// Where a partition without a checkpoint starts: `earliest`, `latest`, or an RFC 3339 time.
    #[serde(default = "EventHubConfig::default_start")]
    #[serde_as(as = "FromText")]
    pub start: StartFrom,
    /// Events fetched ahead per partition (default: 8 per hub, split over its partitions, at
    /// least 2 each; a Defender event holds up to 1 MB).
    #[serde(default)]
    #[serde_as(as = "Option<Num>")]
    pub prefetch: Option<u32>,
    /// This instance's name in ownership records (default: the identity kept in `state_dir`).
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub owner_id: Option<String>,
    /// How often ownership is renewed.
    #[serde(default = "EventHubConfig::default_update_interval")]
    #[serde_as(as = "Span")]
    pub ownership_update_interval: Duration,
    /// An ownership not renewed for this long is taken over.
    #[serde(default = "EventHubConfig::default_expiry")]
    #[serde_as(as = "Span")]
    pub ownership_expiry: Duration,
}

/// Which hubs an `eventhub` source reads besides (or instead of) `hub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hubs {
    /// One hub per table: `<hub_prefix><table in lower case>`.
    PerTable,
    /// These hubs.
    Names(Vec<String>),
}

impl<'de> Deserialize<'de> for Hubs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::One(s) if expand(&s).map_err(de::Error::custom)?.trim() == "per-table" => Ok(Hubs::PerTable),
            Raw::One(s) => Err(de::Error::custom(format!(
                "`{s}`: write `hubs = \"per-table\"` or a list of hub names"
            ))),
            Raw::Many(names) => names
                .iter()
                .map(|n| expand(n).map(|n| n.trim().to_owned()))
                .collect::<Result<_, _>>()
                .map(Hubs::Names)
                .map_err(de::Error::custom),
        }
    }
}

impl EventHubConfig {
    /// A hub read with a connection string, the other settings at their defaults.
    pub fn new(connection_string: Secret) -> Self {
        Self {
            name: None,
            connection_string: Some(connection_string),
            namespace: None,
            credential: None,
            hub: None,
            hubs: None,
            tables: None,
            hub_prefix: None,
            missing_hub_retry: Self::default_missing_hub_retry(),
            consumer_group: Self::default_consumer_group(),
            start: Self::default_start(),
            prefetch: None,
            owner_id: None,
            ownership_update_interval: Self::default_update_interval(),
            ownership_expiry: Self::default_expiry(),
        }
    }
    /// 60 s.
    pub const fn default_missing_hub_retry() -> Duration {
        Duration::from_secs(60)
    }
    /// `$Default`.
    pub fn default_consumer_group() -> String {
        "$Default".to_owned()
    }
    /// `earliest`: a first run reads the backlog.
    pub const fn default_start() -> StartFrom {
        StartFrom::Earliest
    }
    /// 10 s.
    pub const fn default_update_interval() -> Duration {
        Duration::from_secs(10)
    }
    /// 60 s.
    pub const fn default_expiry() -> Duration {
        Duration::from_secs(60)
    }

    /// The hubs to read when several are configured (`None`: the one hub of `hub` or `EntityPath`).
    pub fn hub_names(&self) -> Option<Vec<String>> {
        match self.hubs.as_ref()? {
            Hubs::Names(names) => Some(names.clone()),
            Hubs::PerTable => {
                let prefix = self.hub_prefix.as_deref().unwrap_or(DEFAULT_HUB_PREFIX);
                let tables = self.tables.clone().unwrap_or_else(|| Table::ALL.to_vec());
                Some(
                    tables
                        .iter()
                        .map(|t| format!("{prefix}{}", t.name().to_lowercase()))
                        .collect(),
                )
            }
        }
    }

    fn hub(&self) -> Option<&str> {
        self.hub.as_deref().map(str::trim).filter(|h| !h.is_empty())
    }

    /// The reader settings, claiming as `owner_id`.
    pub fn reader_config(&self, owner_id: String) -> Result<ReaderConfig, String> {
        let connection = match (&self.connection_string, &self.namespace, &self.credential) {
            (Some(cs), _, _) => Connection::ConnectionString(cs.clone()),
            (None, Some(ns), Some(cred)) => Connection::Credential {
                namespace: ns.clone(),
                credential: cred.identity().credential().map_err(|e| format!("credential: {e}"))?,
            },
            _ => return Err("no connection settings".to_owned()),
        };
        let mut rc = ReaderConfig::new(connection);
        rc.hub = self.hub().map(str::to_owned);
        rc.consumer_group.clone_from(&self.consumer_group);
        rc.start = self.start;
        match self.prefetch {
            Some(n) => rc.prefetch = n,
            None => rc.hub_prefetch = Some(DEFAULT_HUB_PREFETCH),
        }
        // A few events per batch keep a unit (and its in-flight memory) small.
        rc.max_batch_events = 16;
        rc.owner_id = owner_id;
        rc.balancing = Balancing {
            update_interval: self.ownership_update_interval,
            expiry: self.ownership_expiry,
        };
        Ok(rc)
    }
}

#[async_trait]
impl SourceConfig for EventHubConfig {
    fn kind(&self) -> &'static str {
        "eventhub"
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("eventhub")
    }

    fn check(&self) -> Result<(), Invalid> {
        match (&self.connection_string, &self.namespace, &self.credential) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            (Some(_), _, _) => {
                return Err(Invalid::new(
                    "",
                    "give either `connection_string` or `namespace` + `credential`, not both",
                ));
            }
            (None, None, _) => {
                return Err(Invalid::new(
                    "connection_string",
                    "missing: give `connection_string`, or `namespace` + `credential`",
                ));
            }
            (None, Some(_), None) => {
                return Err(Invalid::new(
                    "credential",
                    "`namespace` needs a `credential` (e.g. `{ kind = \"managed-identity\" }`)",
                ));
            }
        }
        match (self.hub(), &self.hubs) {
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    "hubs",
                    "give either `hub` (one hub) or `hubs` (several), not both",
                ));
            }
            (_, Some(Hubs::Names(names))) if names.is_empty() => return Err(Invalid::new("hubs", "is empty")),
            _ => {}
        }
        if self.hubs != Some(Hubs::PerTable) {
            for (key, given) in [
                ("tables", self.tables.is_some()),
                ("hub_prefix", self.hub_prefix.is_some()),
            ] {
                if given {
                    return Err(Invalid::new(key, "only applies with `hubs = \"per-table\"`"));
                }
            }
        }
        if self.prefetch == Some(0) {
            return Err(Invalid::new("prefetch", "must be between 1 and 2^32-1"));
        }
        for (key, d) in [
            ("ownership_update_interval", self.ownership_update_interval),
            ("ownership_expiry", self.ownership_expiry),
            ("missing_hub_retry", self.missing_hub_retry),
        ] {
            if d.is_zero() {
                return Err(Invalid::new(key, "must be longer than 0s"));
            }
        }
        Ok(())
    }

    async fn start(&self, cx: SourceContext) -> Result<RunningSource, String> {
        let rc = self.reader_config(cx.owner(self.owner_id.as_deref())?)?;
        let status = Arc::new(HubsStatus::default());
        let mut tasks = Vec::new();
        match self.hub_names() {
            None => tasks.push(start_hub(&cx, rc, &status).await.map_err(|e| error_chain(&e))?),
            Some(names) => tasks.extend(start_hubs(&cx, &rc, &names, self.missing_hub_retry, &status).await?),
        }
        let task = tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
        });
        Ok(RunningSource { task, status })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Starts every hub that opens; the others are tried again every `retry`. Only all of them
/// missing is an error.
async fn start_hubs(
    cx: &SourceContext,
    rc: &ReaderConfig,
    names: &[String],
    retry: Duration,
    status: &Arc<HubsStatus>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    let mut missing = Vec::new();
    let mut first_error = None;
    for hub in names {
        let mut rc = rc.clone();
        rc.hub = Some(hub.clone());
        match start_hub(cx, rc.clone(), status).await {
            Ok(task) => tasks.push(task),
            Err(e) => {
                let message = error_chain(&e);
                tracing::warn!(source = %cx.name, hub = %hub, error = %message, retry_in = ?retry, "hub unavailable; the others go on, it is tried again");
                cx.router.metrics.set(&SOURCE_UP, [&cx.name, hub], 0.0);
                status.missing(hub, &message);
                first_error.get_or_insert(message);
                missing.push(rc);
            }
        }
    }
    if missing.len() == names.len() {
        return Err(format!(
            "none of its {} hubs can be read; the first: {}",
            names.len(),
            first_error.unwrap_or_default()
        ));
    }
    for rc in missing {
        tasks.push(tokio::spawn(retry_hub(cx.clone(), rc, retry, status.clone())));
    }
    Ok(tasks)
}

/// Tries a hub that could not be opened again every `every`, until it opens (then reads it) or
/// the forwarder stops.
async fn retry_hub(cx: SourceContext, rc: ReaderConfig, every: Duration, status: Arc<HubsStatus>) {
    let hub = rc.hub.clone().unwrap_or_default();
    loop {
        tokio::select! {
            () = cx.stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match start_hub(&cx, rc.clone(), &status).await {
            Ok(task) => {
                tracing::info!(source = %cx.name, hub = %hub, "hub available now");
                let _ = task.await;
                return;
            }
            Err(e) => {
                let message = error_chain(&e);
                tracing::debug!(source = %cx.name, hub = %hub, error = %message, "hub still unavailable");
                status.missing(&hub, &message);
            }
        }
    }
}

/// Connects to one hub and starts routing its batches. Fails when the hub cannot be opened.
async fn start_hub(
    cx: &SourceContext,
    config: ReaderConfig,
    status: &Arc<HubsStatus>,
) -> Result<JoinHandle<()>, defender_eventhub::ReaderError> {
    let (tx, rx) = mpsc::channel(2);
    let reader = Arc::new(Reader::start(config, Some(cx.store.get()), tx).await?);
    let hub = reader.target().hub.clone();
    tracing::info!(source = %cx.name, hub = %hub, namespace = %reader.target().namespace, "reading Event Hub");
    let m = &cx.router.metrics;
    m.set(&SOURCE_UP, [&cx.name, &hub], 1.0);
    let progress = Arc::new(HubProgress::default());
    status.add(&hub, reader.clone(), progress.clone());
    let (handle, tracker_task) = tracker::spawn(
        HubCommitter {
            checkpointer: reader.checkpointer(),
            source: cx.name.clone(),
            metrics: m.clone(),
            progress: progress.clone(),
        },
        cx.checkpoint_interval,
        cx.router.unsaved.clone(),
    );
    let lag = tokio::spawn(report_lag(cx.clone(), hub.clone(), reader.clone(), progress.clone()));
    let run = HubRun {
        source: cx.name.clone(),
        hub,
        metrics: m.clone(),
        progress,
    };
    let router = Router::new(cx.name.clone(), cx.router.clone(), handle);
    Ok(tokio::spawn(run.run(
        reader,
        rx,
        router,
        tracker_task,
        lag,
        cx.stop.clone(),
    )))
}

/// What one hub's task needs to route and report.
struct HubRun {
    source: Arc<str>,
    hub: String,
    metrics: Arc<Metrics>,
    progress: Arc<HubProgress>,
}

impl HubRun {
    /// Routes batches until `stop`, then follows the shutdown order of [`super`].
    async fn run(
        self,
        reader: Arc<Reader>,
        mut rx: mpsc::Receiver<Batch>,
        mut router: Router<Position>,
        tracker_task: JoinHandle<()>,
        lag: JoinHandle<()>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let batch = tokio::select! {
                () = stop.cancelled() => break,
                b = rx.recv() => match b {
                    Some(b) => b,
                    None => break,
                },
            };
            self.route(&mut router, batch).await;
        }
        // Stop reading (leases are still renewed), then deliver what was already read.
        reader.stop_reading().await;
        lag.abort();
        rx.close();
        while let Some(batch) = rx.recv().await {
            self.route(&mut router, batch).await;
        }
        drop(router);
        // The tracker ends once every unit is delivered (or its ack dropped) and commits last.
        let _ = tracker_task.await;
        self.metrics.set(&SOURCE_UP, [&self.source, &self.hub], 0.0);
        reader.shutdown().await;
        tracing::info!(source = %self.source, hub = %self.hub, "stopped reading");
    }

    async fn route(&self, router: &mut Router<Position>, batch: Batch) {
        let Some(last) = batch.messages.last() else { return };
        let partition: Arc<str> = Arc::from(batch.partition.to_string());
        let position = batch.position(batch.messages.len() - 1);
        let (seq, id, generation) = (
            last.sequence_number,
            batch.partition.partition_id.clone(),
            batch.generation,
        );
        #[allow(clippy::cast_precision_loss)]
        self.metrics.set(&READ_SEQUENCE, [&self.source, &partition], seq as f64);
        if let Some(t) = last.enqueued_time {
            let delay = SystemTime::now().duration_since(t).unwrap_or_default();
            self.metrics
                .set(&READ_DELAY, [&self.source, &partition], delay.as_secs_f64());
        }
        let bodies = batch
            .messages
            .into_iter()
            .map(|e| {
                let origin = Arc::new(Origin {
                    source: self.source.clone(),
                    partition: partition.clone(),
                    sequence_number: Some(e.sequence_number),
                    offset: e.offset,
                });
                (e.body.map(Bytes::from).unwrap_or_default(), origin)
            })
            .collect();
        router
            .route(Unit {
                stream: partition.to_string(),
                position,
                bodies,
                framing: Framing::Envelopes,
            })
            .await;
        self.progress.routed(&id, generation, seq);
    }
}

/// Per partition of one hub: the last sequence number routed (under which lease) and checkpointed.
#[derive(Debug, Default)]
struct HubProgress {
    routed: Mutex<HashMap<String, (u64, i64)>>,
    checkpointed: Mutex<HashMap<String, i64>>,
}

impl HubProgress {
    fn routed(&self, partition: &str, generation: u64, seq: i64) {
        lock(&self.routed).insert(partition.to_owned(), (generation, seq));
    }

    fn routed_under(&self, partition: &str, generation: u64) -> Option<i64> {
        lock(&self.routed)
            .get(partition)
            .filter(|(g, _)| *g == generation)
            .map(|(_, s)| *s)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every hub of a source, for [`SourceStatus`].
#[derive(Default)]
struct HubsStatus {
    hubs: Mutex<Vec<HubEntry>>,
}

type ReadingHub = (Arc<Reader>, Arc<HubProgress>);

enum HubEntry {
    Reading {
        hub: String,
        reader: Arc<Reader>,
        progress: Arc<HubProgress>,
    },
    Missing {
        hub: String,
        why: String,
    },
}

impl HubsStatus {
    fn add(&self, hub: &str, reader: Arc<Reader>, progress: Arc<HubProgress>) {
        let mut hubs = lock(&self.hubs);
        hubs.retain(|h| !matches!(h, HubEntry::Missing { hub: m, .. } if m == hub));
        hubs.push(HubEntry::Reading {
            hub: hub.to_owned(),
            reader,
            progress,
        });
    }

    fn missing(&self, hub: &str, why: &str) {
        let mut hubs = lock(&self.hubs);
        hubs.retain(|h| !matches!(h, HubEntry::Missing { hub: m, .. } if m == hub));
        hubs.push(HubEntry::Missing {
            hub: hub.to_owned(),
            why: why.to_owned(),
        });
    }
}

impl HubsStatus {
    /// Each hub with its reader, or why it is missing.
    fn snapshot(&self) -> Vec<(String, Result<ReadingHub, String>)> {
        lock(&self.hubs)
            .iter()
            .map(|h| match h {
                HubEntry::Reading { hub, reader, progress } => (hub.clone(), Ok((reader.clone(), progress.clone()))),
                HubEntry::Missing { hub, why } => (hub.clone(), Err(why.clone())),
            })
            .collect()
    }
}

#[async_trait]
impl SourceStatus for HubsStatus {
    fn units(&self) -> Vec<UnitStatus> {
        let mut out = Vec::new();
        for (hub, entry) in self.snapshot() {
            match entry {
                Ok((reader, _)) => out.extend(unit_states(&reader.leases(), &format!("{hub}/"), |_| None)),
                Err(why) => out.push(UnitStatus {
                    id: hub,
                    state: UnitState::Unavailable { why },
                }),
            }
        }
        out
    }

    async fn probe(&self) -> Vec<UnitStatus> {
        let mut out = Vec::new();
        for (hub, entry) in self.snapshot() {
            match entry {
                Ok((reader, progress)) => {
                    let caught_up = caught_up(&reader, &progress).await;
                    out.extend(unit_states(&reader.leases(), &format!("{hub}/"), |id| {
                        Some(caught_up.get(id).copied().unwrap_or(false))
                    }));
                }
                Err(why) => out.push(UnitStatus {
                    id: hub,
                    state: UnitState::Unavailable { why },
                }),
            }
        }
        out
    }
}

/// Per held partition: whether everything the hub holds is routed.
async fn caught_up(reader: &Reader, progress: &HubProgress) -> HashMap<String, bool> {
    reader
        .progress()
        .await
        .into_iter()
        .map(|p| {
            let read = progress.routed_under(&p.partition_id, p.generation).max(p.floor);
            let done = p.known && p.last_enqueued.is_none_or(|last| read.is_some_and(|r| r >= last));
            (p.partition_id, done)
        })
        .collect()
}

/// Keeps `defender_partition_lag_events` current: the hub's last sequence number minus the
/// checkpointed one, per held partition, every ownership update interval.
async fn report_lag(cx: SourceContext, hub: String, reader: Arc<Reader>, progress: Arc<HubProgress>) {
    let every = Duration::from_secs(10);
    loop {
        for p in reader.progress().await {
            let Some(last) = p.last_enqueued.or(p.known.then_some(-1)) else {
                continue;
            };
            let done = lock(&progress.checkpointed).get(&p.partition_id).copied().or(p.floor);
            let partition = format!("{hub}/{}/{}", reader.consumer_group(), p.partition_id);
            #[allow(clippy::cast_precision_loss)]
            let lag = (last - done.unwrap_or(-1)).max(0) as f64;
            cx.router.metrics.set(&LAG_EVENTS, [&cx.name, &partition], lag);
        }
        tokio::time::sleep(every).await;
    }
}

struct HubCommitter {
    checkpointer: Checkpointer,
    source: Arc<str>,
    metrics: Arc<Metrics>,
    progress: Arc<HubProgress>,
}

impl fmt::Debug for HubCommitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubCommitter")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Committer for HubCommitter {
    type Position = Position;

    async fn commit(&self, stream: &str, position: &Position) -> Result<bool, String> {
        let r = self.checkpointer.checkpoint(position).await;
        match &r {
            Ok(true) => {
                self.metrics.add(&CHECKPOINTS, [&self.source], 1);
                #[allow(clippy::cast_precision_loss)]
                self.metrics.set(
                    &CHECKPOINT_SEQUENCE,
                    [&self.source, stream],
                    position.sequence_number as f64,
                );
                lock(&self.progress.checkpointed)
                    .insert(position.partition.partition_id.clone(), position.sequence_number);
            }
            Ok(false) => {}
            Err(_) => self.metrics.add(&CHECKPOINT_ERRORS, [&self.source], 1),
        }
        tracing::trace!(source = %self.source, stream, sequence = position.sequence_number, "checkpoint");
        r.map_err(|e| e.to_string())
    }
}

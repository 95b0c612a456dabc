//! `kind = "storage"`: Defender's export to a Storage account. One container per table
//! (`insights-logs-advancedhunting-<table>`), one append blob per hour
//! (`tenantId=<id>/y=YYYY/m=MM/d=DD/h=HH/m=00/PT1H.json`) that grows until the hour ends, one
//! JSON record per line.
//!
//! ```toml
//! [[sources]]
//! kind = "storage"
//! account_url = "https://acct.blob.core.windows.net"
//! sas = "${DEFENDER_STORAGE_SAS}"
//! tables = ["DeviceProcessEvents", "EmailEvents"]
//! ```
//!
//! - **Ownership.** Each container is read by one instance at a time: containers are leased
//!   through the checkpoint store as "partitions" of a virtual hub,
//!   `({account}, $containers, $storage, {container})`, by the same engine the hub reader uses
//!   ([`Leases`]). A container whose lease is lost stops being read, and its positions read under
//!   that lease are never checkpointed.
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

mod read;

use std::any::Any;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_messaging_eventhubs::models::Checkpoint;
use chrono::{DateTime, TimeZone as _, Utc};
use defender_eventhub::Secret;
use defender_eventhub::blob::BlobClient;
use defender_eventhub::lease::{Balancing, Grant, LeaseHandler, Leases, Scope};
use defender_schema::Table;
use serde::Deserialize;
use serde_with::serde_as;
use tokio::sync::watch;
use url::Url;

use super::{Backfill, RunningSource, SourceConfig, SourceContext, SourceStatus, UnitStatus, unit_states};
use crate::config::{BlobAccess, BlobAccessFields, FromText, Invalid, ListOf, SecretText, Span, Text};
use crate::metrics::Metrics;
use crate::metrics::families::{CHECKPOINT_ERRORS, CHECKPOINTS, SOURCE_UP};
use crate::source::eventhub::DEFAULT_HUB_PREFIX;
use crate::tracker::Committer;

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

/// `kind = "storage"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "StorageFields")]
pub struct StorageConfig {
    /// Name in logs, metrics and dead letters (default `storage`).
    pub name: Option<String>,
    /// The account and its credential (`connection_string`, or `account_url` with
    /// `shared_key` + `account_name` or `sas`).
    pub account: BlobAccess,
    /// The tables to read (default: every table the schema knows).
    pub tables: Option<Vec<Table>>,
    /// The container name prefix (default `insights-logs-advancedhunting-`).
    pub container_prefix: Option<String>,
    /// Which hour blobs a container without checkpoints starts with.
    pub start: StorageStart,
    /// How often containers are listed for new blobs and appended lines.
    pub poll_interval: Duration,
    /// Read only hour blobs that begin before this time (for backfills).
    pub until: Option<DateTime<Utc>>,
    /// This instance's name in ownership records (default: the identity kept in `state_dir`).
    pub owner_id: Option<String>,
    /// Container ownership timing.
    pub balancing: Balancing,
}

/// The keys of a `storage` entry as written; [`StorageConfig`] is what they mean.
#[serde_as]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageFields {
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    name: Option<String>,
    #[serde(default)]
    #[serde_as(as = "Option<FromText>")]
    account_url: Option<Url>,
    #[serde(default)]
    #[serde_as(as = "Option<SecretText>")]
    connection_string: Option<Secret>,
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    account_name: Option<String>,
    #[serde(default)]
    #[serde_as(as = "Option<SecretText>")]
    shared_key: Option<Secret>,
    #[serde(default)]
    #[serde_as(as = "Option<SecretText>")]
    sas: Option<Secret>,
    #[serde(default)]
    #[serde_as(as = "Option<ListOf<FromText>>")]
    tables: Option<Vec<Table>>,
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    container_prefix: Option<String>,
    #[serde(default = "StorageStart::default")]
    #[serde_as(as = "FromText")]
    start: StorageStart,
    #[serde(default = "StorageConfig::default_poll_interval")]
    #[serde_as(as = "Span")]
    poll_interval: Duration,
    #[serde(default)]
    #[serde_as(as = "Option<FromText>")]
    until: Option<DateTime<Utc>>,
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    owner_id: Option<String>,
    #[serde(default = "StorageConfig::default_update_interval")]
    #[serde_as(as = "Span")]
    ownership_update_interval: Duration,
    #[serde(default = "StorageConfig::default_expiry")]
    #[serde_as(as = "Span")]
    ownership_expiry: Duration,
}

impl TryFrom<StorageFields> for StorageConfig {
    type Error = String;

    /// Errors start with the key they are about (`sas: ...`), which the loader turns into the
    /// field's path.
    fn try_from(f: StorageFields) -> Result<Self, String> {
        let account = BlobAccess::from_fields(BlobAccessFields {
            connection_string: f.connection_string,
            account_url: f.account_url,
            account_name: f.account_name,
            shared_key: f.shared_key,
            sas: f.sas,
        })
        .map_err(|e| e.to_string())?;
        Ok(StorageConfig {
            name: f.name,
            account,
            tables: f.tables,
            container_prefix: f.container_prefix,
            start: f.start,
            poll_interval: f.poll_interval,
            until: f.until,
            owner_id: f.owner_id,
            balancing: Balancing {
                update_interval: f.ownership_update_interval,
                expiry: f.ownership_expiry,
            },
        })
    }
}

/// Where a `storage` source starts in a container that has no checkpoint yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageStart {
    /// Every hour blob the container holds.
    #[default]
    Earliest,
    /// The hour blob of the moment the forwarder first sees the container, and later ones.
    Now,
    /// The hour blob holding this time, and later ones.
    Time(DateTime<Utc>),
}

impl FromStr for StorageStart {
    type Err = String;

    /// `earliest`, `now` (or `latest`), or an RFC 3339 time.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "earliest" => Ok(StorageStart::Earliest),
            "now" | "latest" => Ok(StorageStart::Now),
            other => DateTime::parse_from_rfc3339(other)
                .map(|t| StorageStart::Time(t.with_timezone(&Utc)))
                .map_err(|_| format!("`{other}` is not `earliest`, `now` or an RFC 3339 time")),
        }
    }
}

impl StorageConfig {
    /// A source reading every table's container of `account`, with the defaults.
    pub fn new(account: BlobAccess) -> Self {
        Self {
            name: None,
            account,
            tables: None,
            container_prefix: None,
            start: StorageStart::Earliest,
            poll_interval: Self::default_poll_interval(),
            until: None,
            owner_id: None,
            balancing: Balancing {
                update_interval: Self::default_update_interval(),
                expiry: Self::default_expiry(),
            },
        }
    }
    /// 30 s.
    pub const fn default_poll_interval() -> Duration {
        Duration::from_secs(30)
    }
    /// 10 s.
    pub const fn default_update_interval() -> Duration {
        Duration::from_secs(10)
    }
    /// 60 s.
    pub const fn default_expiry() -> Duration {
        Duration::from_secs(60)
    }

    /// The containers to read: `<container_prefix><table in lower case>`.
    pub fn container_names(&self) -> Vec<String> {
        let prefix = self.container_prefix.as_deref().unwrap_or(DEFAULT_HUB_PREFIX);
        let tables = self.tables.clone().unwrap_or_else(|| Table::ALL.to_vec());
        let mut names: Vec<String> = tables
            .iter()
            .map(|t| format!("{prefix}{}", t.name().to_lowercase()))
            .collect();
        names.dedup();
        names
    }
}

#[async_trait]
impl SourceConfig for StorageConfig {
    fn kind(&self) -> &'static str {
        "storage"
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("storage")
    }

    fn check(&self) -> Result<(), Invalid> {
        if self.tables.as_ref().is_some_and(Vec::is_empty) {
            return Err(Invalid::new("tables", "is empty; leave it out to read every table"));
        }
        if let Some(prefix) = &self.container_prefix {
            let ok = prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(Invalid::new(
                    "container_prefix",
                    "container names hold lower-case letters, digits and `-` only",
                ));
            }
        }
        if let Some(name) = self.container_names().into_iter().find(|n| n.len() > 63) {
            return Err(Invalid::new(
                "container_prefix",
                format!("`{name}` is longer than the 63 characters a container name may have"),
            ));
        }
        for (key, d) in [
            ("poll_interval", self.poll_interval),
            ("ownership_update_interval", self.balancing.update_interval),
            ("ownership_expiry", self.balancing.expiry),
        ] {
            if d.is_zero() {
                return Err(Invalid::new(key, "must be longer than 0s"));
            }
        }
        Ok(())
    }

    async fn start(&self, cx: SourceContext) -> Result<RunningSource, String> {
        start(self.clone(), cx).await
    }

    fn backfill(&self, range: &Backfill) -> Option<Box<dyn SourceConfig>> {
        Some(Box::new(StorageConfig {
            start: StorageStart::Time(range.from),
            until: Some(range.to),
            poll_interval: Duration::from_secs(1),
            tables: range.tables.clone().or_else(|| self.tables.clone()),
            ..self.clone()
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A position in a blob: every line before `offset` is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPosition {
    /// The container.
    pub container: Arc<str>,
    /// The blob's checkpoint key ([`blob_key`]).
    pub key: Arc<str>,
    /// The container lease it was read under.
    pub generation: u64,
    /// The byte offset after the last delivered line.
    pub offset: u64,
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

/// A container handed to its reading task: held under `generation`, to be read from `not_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadGrant {
    generation: u64,
    not_before: Instant,
}

/// Turns the lease engine's news into each container task's grant.
struct ContainerHandler {
    grants: BTreeMap<String, watch::Sender<Option<ReadGrant>>>,
    source: Arc<str>,
    metrics: Arc<Metrics>,
    update_interval: Duration,
}

#[async_trait]
impl LeaseHandler for ContainerHandler {
    async fn acquired(&self, id: &str, grant: Grant) {
        // Taken from a live owner: it reads on until its next renewal tells it, so wait that long
        // before reading, so that two instances do not read the same lines at once.
        let delay = if grant.from_live_owner {
            self.update_interval
        } else {
            Duration::ZERO
        };
        if let Some(w) = self.grants.get(id) {
            w.send_replace(Some(ReadGrant {
                generation: grant.generation,
                not_before: Instant::now() + delay,
            }));
        }
    }

    fn lost(&self, id: &str, _why: &str) {
        if let Some(w) = self.grants.get(id) {
            w.send_replace(None);
        }
        self.metrics.set(&SOURCE_UP, [&self.source, id], 0.0);
    }
}

struct BlobCommitter {
    store: Arc<dyn azure_messaging_eventhubs::CheckpointStore>,
    leases: Arc<Leases>,
    source: Arc<str>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl Committer for BlobCommitter {
    type Position = BlobPosition;

    async fn commit(&self, stream: &str, position: &BlobPosition) -> Result<bool, String> {
        if !self.leases.holds(&position.container, position.generation) {
            tracing::debug!(source = %self.source, stream, "not checkpointing: container lease changed");
            return Ok(false);
        }
        let r = self
            .store
            .update_checkpoint(Checkpoint {
                fully_qualified_namespace: self.leases.scope().namespace.clone(),
                event_hub_name: position.container.to_string(),
                consumer_group: GROUP.to_owned(),
                partition_id: position.key.to_string(),
                offset: Some(position.offset.to_string()),
                sequence_number: Some(i64::try_from(position.offset).unwrap_or(i64::MAX)),
            })
            .await;
        match &r {
            Ok(()) => self.metrics.add(&CHECKPOINTS, [&self.source], 1),
            Err(_) => self.metrics.add(&CHECKPOINT_ERRORS, [&self.source], 1),
        }
        tracing::trace!(source = %self.source, stream, offset = position.offset, "checkpoint");
        r.map(|()| true).map_err(|e| e.to_string())
    }
}

/// Where each container stands: its lease, and (for those held) whether the last pass over it
/// found nothing new.
struct ContainersStatus {
    leases: Arc<Leases>,
    at_end: Arc<Mutex<BTreeMap<String, bool>>>,
}

#[async_trait]
impl SourceStatus for ContainersStatus {
    fn units(&self) -> Vec<UnitStatus> {
        unit_states(&self.leases.status(), "", |_| None)
    }

    async fn probe(&self) -> Vec<UnitStatus> {
        let at_end = self
            .at_end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        unit_states(&self.leases.status(), "", |id| {
            Some(at_end.get(id).copied().unwrap_or(false))
        })
    }
}

/// Checks the account answers, then reads every configured container this instance wins.
async fn start(config: StorageConfig, cx: SourceContext) -> Result<RunningSource, String> {
    let containers = config.container_names();
    let mut clients = Vec::new();
    for c in &containers {
        let client = BlobClient::for_account(config.account.endpoint.as_str(), c, config.account.credential.clone())
            .map_err(|e| e.to_string())?;
        clients.push(client);
    }
    // One request to know the account and credential work: a missing container is fine.
    if let Some(client) = clients.first() {
        match client.list_blobs_page("", None, Some(1)).await {
            Ok(_) => {}
            Err(e) if read::is_container_missing(&e) => {}
            Err(e) => return Err(format!("cannot list container `{}`: {e}", client.container())),
        }
    }
    let namespace = config.account.namespace();
    tracing::info!(source = %cx.name, account = %namespace, containers = containers.len(), "reading Storage account export");
    let scope = Scope {
        namespace,
        hub: LEASE_HUB.to_owned(),
        consumer_group: GROUP.to_owned(),
    };
    let owner = cx.owner(config.owner_id.as_deref())?;
    let leases = Leases::new(
        cx.store.get(),
        scope,
        owner,
        config.balancing.clone(),
        containers.clone(),
        "container",
    );
    let handler = Arc::new(ContainerHandler {
        grants: containers
            .iter()
            .map(|c| (c.clone(), watch::Sender::new(None)))
            .collect(),
        source: cx.name.clone(),
        metrics: cx.router.metrics.clone(),
        update_interval: config.balancing.update_interval,
    });
    let at_end = Arc::new(Mutex::new(BTreeMap::new()));
    let status = Arc::new(ContainersStatus {
        leases: leases.clone(),
        at_end: at_end.clone(),
    });
    let task = tokio::spawn(read::run(config, cx, clients, leases, handler, at_end));
    Ok(RunningSource { task, status })
}

#[cfg(test)]
mod tests;

//! `kind = "tables"`: hunt-ready Parquet tables with the exact advanced-hunting columns,
//! `<root>/<Table>/day=YYYY-MM-DD/<file>.parquet`, on local disk or in an Azure Blob container
//! (see docs/tables.md), written by [`defender_tables::TableWriter`].
//!
//! ```toml
//! [[sinks]]
//! kind = "tables"
//! dir = "/srv/defender-tables"          # or: container = "tables" + the account's keys
//! retention_days = 180
//! retention = { DeviceProcessEvents = 30 }
//! ```
//!
//! Records are acknowledged once the flush that made them durable (a staging log fsynced, or
//! appended in Blob) returned; large files are published from the staging area at rotation. The
//! writer is blocking and, with a Blob root, drives a runtime of its own, so it runs on a thread
//! of its own, fed by this sink's task.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use defender_eventhub::Secret;
use defender_eventhub::blob::BlobClient;
use defender_schema::Table;
use defender_tables::{BlobRoot, Root, TableWriter, TablesError};
use serde::Deserialize;
use serde_with::serde_as;
use tokio::sync::{mpsc, oneshot};
use url::Url;

use super::{IDLE, Sink, SinkConfig, SinkContext, sleep_opt};
use crate::config::{BlobAccess, BlobAccessFields, FromText, Invalid, Num, SecretText, Span, Text};
use crate::delivery::{Delivery, SinkRecord};
use crate::metrics::families::RETRIES;
use crate::table_filter::TablesConfig;

/// `kind = "tables"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "TablesFields")]
pub struct TablesSinkConfig {
    /// Name in logs, metrics and dead letters (default `tables`).
    pub name: Option<String>,
    /// Which tables to write (default: all).
    pub tables: TablesConfig,
    /// Where the tables live.
    pub root: TablesRoot,
    /// Rotation, retention, compaction (defaults in [`defender_tables::TablesConfig`]).
    pub writer: defender_tables::TablesConfig,
}

/// Where a `tables` sink writes.
#[derive(Debug, Clone)]
pub enum TablesRoot {
    /// A local directory (`dir`).
    Local(PathBuf),
    /// A container of a storage account (`container` and the account's keys).
    Blob {
        /// The account.
        account: BlobAccess,
        /// The container.
        container: String,
    },
}

/// The keys of a `tables` entry as written; [`TablesSinkConfig`] is what they mean. Each writer
/// setting is optional here: unset, [`defender_tables::TablesConfig::default`] gives it.
#[serde_as]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TablesFields {
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    name: Option<String>,
    #[serde(default)]
    tables: TablesConfig,
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    dir: Option<String>,
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    container: Option<String>,
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
    #[serde_as(as = "Option<Num>")]
    retention_days: Option<u32>,
    #[serde(default)]
    #[serde_as(as = "BTreeMap<FromText, Num>")]
    retention: BTreeMap<Table, u32>,
    #[serde(default)]
    #[serde_as(as = "Option<Num>")]
    rotate_rows: Option<u64>,
    #[serde(default)]
    #[serde_as(as = "Option<Num>")]
    rotate_mib: Option<u64>,
    #[serde(default)]
    #[serde_as(as = "Option<Span>")]
    rotate_age: Option<Duration>,
    #[serde(default)]
    #[serde_as(as = "Option<Num>")]
    row_group_rows: Option<usize>,
    #[serde(default)]
    #[serde_as(as = "Option<Num>")]
    buffer_mib: Option<u64>,
    #[serde(default)]
    #[serde_as(as = "Option<Num>")]
    zstd_level: Option<i32>,
    #[serde(default)]
    #[serde_as(as = "Option<Span>")]
    compact_after: Option<Duration>,
    #[serde(default)]
    #[serde_as(as = "Option<Num>")]
    compact_min_files: Option<usize>,
    #[serde(default)]
    #[serde_as(as = "Option<Span>")]
    orphan_after: Option<Duration>,
}

impl TryFrom<TablesFields> for TablesSinkConfig {
    type Error = String;

    /// Errors start with the key they are about, which the loader turns into the field's path.
    fn try_from(f: TablesFields) -> Result<Self, String> {
        let account = BlobAccessFields {
            connection_string: f.connection_string,
            account_url: f.account_url,
            account_name: f.account_name,
            shared_key: f.shared_key,
            sas: f.sas,
        };
        let has_account = account.connection_string.is_some() || account.account_url.is_some();
        let root = match (f.dir, f.container) {
            (Some(_), Some(_)) => {
                return Err("container: give either `dir` (local) or `container` (Blob), not both".into());
            }
            (None, None) => {
                return Err("dir: missing: give `dir` (a local directory) or `container` with the account".into());
            }
            (Some(_), None) if has_account => {
                return Err("dir: the account keys only apply with `container` (a Blob root)".into());
            }
            (Some(dir), None) => TablesRoot::Local(PathBuf::from(dir)),
            (None, Some(container)) => TablesRoot::Blob {
                account: BlobAccess::from_fields(account).map_err(|e| e.to_string())?,
                container,
            },
        };
        let d = defender_tables::TablesConfig::default();
        let writer = defender_tables::TablesConfig {
            retention_days: f.retention_days.unwrap_or(d.retention_days),
            retention: f.retention.iter().map(|(t, n)| (t.name().to_owned(), *n)).collect(),
            rotate_rows: f.rotate_rows.unwrap_or(d.rotate_rows),
            rotate_mib: f.rotate_mib.unwrap_or(d.rotate_mib),
            rotate_age: f.rotate_age.unwrap_or(d.rotate_age),
            row_group_rows: f.row_group_rows.unwrap_or(d.row_group_rows),
            buffer_mib: f.buffer_mib.unwrap_or(d.buffer_mib),
            zstd_level: f.zstd_level.unwrap_or(d.zstd_level),
            compact_after: f.compact_after.unwrap_or(d.compact_after),
            compact_min_files: f.compact_min_files.unwrap_or(d.compact_min_files),
            orphan_after: f.orphan_after.unwrap_or(d.orphan_after),
        };
        Ok(TablesSinkConfig {
            name: f.name,
            tables: f.tables,
            root,
            writer,
        })
    }
}

impl TablesSinkConfig {
    /// Tables in a local directory, with the writer's defaults.
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        Self {
            name: None,
            tables: TablesConfig::default(),
            root: TablesRoot::Local(dir.into()),
            writer: defender_tables::TablesConfig::default(),
        }
    }

    fn root(&self) -> Result<Root, String> {
        Ok(match &self.root {
            TablesRoot::Local(dir) => Root::Local(dir.clone()),
            TablesRoot::Blob { account, container } => {
                let client = BlobClient::for_account(account.endpoint.as_str(), container, account.credential.clone())
                    .map_err(|e| e.to_string())?;
                Root::Blob(BlobRoot::new(client))
            }
        })
    }
}

#[async_trait]
impl SinkConfig for TablesSinkConfig {
    fn kind(&self) -> &'static str {
        "tables"
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("tables")
    }

    fn tables(&self) -> &TablesConfig {
        &self.tables
    }

    fn check(&self) -> Result<(), Invalid> {
        if let TablesRoot::Local(dir) = &self.root
            && dir.as_os_str().is_empty()
        {
            return Err(Invalid::new("dir", "is empty"));
        }
        self.writer.validate().map_err(|e| Invalid::new("", e.to_string()))
    }

    /// Opens the writer on a thread of its own: recovery of what a previous run left staged
    /// happens here, before the first record.
    async fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, String> {
        let root = self.root()?;
        let writer_id = writer_id(&cx.owner_id);
        let config = self.writer.clone();
        let (commands, rx) = std_mpsc::channel();
        let (opened_tx, opened) = oneshot::channel();
        let name = cx.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tables-{name}"))
            .spawn(move || writer_thread(&root, &writer_id, &config, &rx, opened_tx))
            .map_err(|e| format!("cannot start the writer thread: {e}"))?;
        match opened.await {
            Ok(Ok(recovery)) => {
                if recovery.records > 0 {
                    tracing::info!(sink = %name, records = recovery.records, files = recovery.published.len(), "published what the last run left staged");
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the writer thread ended while opening".into()),
        }
        Ok(Box::new(TablesSink {
            cx: cx.clone(),
            commands,
            thread,
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The owner id as a writer id (ASCII letters, digits and `-`, at most 64).
fn writer_id(owner_id: &str) -> String {
    let id: String = owner_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    if id.is_empty() { "forwarder".to_owned() } else { id }
}

/// Append these records (in order) and flush them; the answer says which records were refused
/// (index and reason: not Defender records) and whether the rest is durable.
struct Write {
    records: Vec<Bytes>,
    reply: oneshot::Sender<Written>,
}

/// How a write went: the refused records, and `Err` when the rest is not durable (the writer was
/// then dropped: what earlier flushes made durable is published when it is opened again, and the
/// sink sends the same records again).
type Written = (Vec<(usize, String)>, Result<(), String>);

/// The writer's thread: writes what the sink sends, maintains (rotation by age, retention,
/// compaction) between writes, and closes the writer (publishing what is staged) when the sink
/// drops its end. After a failure it reopens the writer on the next write.
fn writer_thread(
    root: &Root,
    writer_id: &str,
    config: &defender_tables::TablesConfig,
    writes: &std_mpsc::Receiver<Write>,
    opened: oneshot::Sender<Result<defender_tables::Recovery, String>>,
) {
    let open = || TableWriter::open(root, writer_id, config.clone()).map_err(|e| crate::error_chain(&e));
    let mut writer = match open() {
        Ok((w, recovery)) => {
            let _ = opened.send(Ok(recovery));
            Some(w)
        }
        Err(e) => {
            let _ = opened.send(Err(e));
            return;
        }
    };
    let mut last_maintenance = Instant::now();
    loop {
        match writes.recv_timeout(Duration::from_secs(5)) {
            Ok(Write { records, reply }) => {
                if writer.is_none() {
                    writer = open()
                        .map(|(w, _)| w)
                        .inspect_err(|e| tracing::warn!(error = %e, "cannot reopen the tables writer"))
                        .ok();
                }
                let written = match writer.as_mut() {
                    Some(w) => write_all(w, &records),
                    None => (Vec::new(), Err("the tables writer cannot be opened".to_owned())),
                };
                if written.1.is_err() {
                    writer = None;
                }
                let _ = reply.send(written);
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(w) = writer
            .as_mut()
            .filter(|_| last_maintenance.elapsed() >= Duration::from_secs(5))
        {
            if let Err(e) = w.maintain() {
                tracing::warn!(error = %crate::error_chain(&e), "tables maintenance failed; tried again in 5 s");
            }
            last_maintenance = Instant::now();
        }
    }
    if let Some(Err(e)) = writer.map(TableWriter::close) {
        tracing::warn!(error = %crate::error_chain(&e), "closing the tables writer failed; the next start publishes what is staged");
    }
}

/// Appends and flushes `records`; records that are not Defender records are refused, any other
/// failure fails the whole write.
fn write_all(writer: &mut TableWriter, records: &[Bytes]) -> Written {
    let mut refused = Vec::new();
    for (i, r) in records.iter().enumerate() {
        match writer.append(r) {
            Ok(()) => {}
            Err(TablesError::NotARecord(why)) => refused.push((i, format!("not a Defender record: {why}"))),
            Err(e) => return (Vec::new(), Err(crate::error_chain(&e))),
        }
    }
    (refused, writer.flush().map_err(|e| crate::error_chain(&e)))
}

struct TablesSink {
    cx: SinkContext,
    commands: std_mpsc::Sender<Write>,
    thread: std::thread::JoinHandle<()>,
}

/// Deliveries handed to the writer and not yet durable.
#[derive(Default)]
struct Unflushed {
    deliveries: Vec<Delivery>,
    bytes: usize,
    failures: u32,
}

#[async_trait]
impl Sink for TablesSink {
    async fn run(self: Box<Self>, mut rx: mpsc::Receiver<Delivery>) {
        let TablesSink { cx, commands, thread } = *self;
        tracing::info!(sink = %cx.name, "writing tables");
        let max_batch = (cx.in_flight_bytes / 4).clamp(256 * 1024, 16 * 1024 * 1024);
        let mut held = Unflushed::default();
        let mut open = true;
        let mut last_input = Instant::now();
        while open || !held.deliveries.is_empty() {
            let idle_left = (!held.deliveries.is_empty()).then(|| IDLE.saturating_sub(last_input.elapsed()));
            tokio::select! {
                d = rx.recv(), if open => match d {
                    Some(d) => {
                        held.bytes += d.records.iter().map(|r| r.raw.len()).sum::<usize>();
                        held.deliveries.push(d);
                        last_input = Instant::now();
                        if held.bytes >= max_batch {
                            write(&cx, &commands, &mut held).await;
                        }
                    }
                    None => open = false,
                },
                () = sleep_opt(idle_left) => write(&cx, &commands, &mut held).await,
            }
            if !open && !held.deliveries.is_empty() {
                write(&cx, &commands, &mut held).await;
            }
        }
        // Closing the channel closes the writer, which publishes what is staged: wait for it, so
        // that a clean shutdown leaves every record in a published file.
        drop(commands);
        if tokio::task::spawn_blocking(move || thread.join()).await.is_err() {
            tracing::error!(sink = %cx.name, "the tables writer thread failed; the next start publishes what is staged");
        }
    }
}

/// Hands what is held to the writer and waits until it is durable, then acknowledges it; when
/// that failed, keeps it and sends it again after a pause (the checkpoint waits meanwhile).
async fn write(cx: &SinkContext, commands: &std_mpsc::Sender<Write>, held: &mut Unflushed) {
    let (reply, answer) = oneshot::channel();
    let records: Vec<Bytes> = held
        .deliveries
        .iter()
        .flat_map(|d| d.records.iter().map(|r| r.raw.clone()))
        .collect();
    let answer = if commands.send(Write { records, reply }).is_ok() {
        answer.await.ok()
    } else {
        None
    };
    let Some((refused, flushed)) = answer else {
        tracing::error!(sink = %cx.name, "the tables writer is gone; its records stay unacknowledged");
        held.deliveries.clear();
        return;
    };
    match flushed {
        Ok(()) => {
            dead_letter_refused(cx, &held.deliveries, refused).await;
            held.failures = 0;
            let records: Vec<&SinkRecord> = held.deliveries.iter().flat_map(|d| d.records.iter()).collect();
            cx.count_out(records.iter().map(|r| (&r.table, r.raw.len())));
            for d in std::mem::take(&mut held.deliveries) {
                cx.delivered_after(d.read_at, d.records.len() as u64);
                d.ack.ack();
            }
            held.bytes = 0;
        }
        Err(e) => {
            held.failures += 1;
            cx.metrics.add(&RETRIES, [&cx.name, "io"], 1);
            tracing::error!(sink = %cx.name, error = %e, attempt = held.failures, "writing tables failed; the records are written again after a pause");
            tokio::time::sleep(Duration::from_millis(200 * u64::from(held.failures.min(25)))).await;
        }
    }
}

/// Dead-letters the records the writer refused, by their index among the held deliveries'.
async fn dead_letter_refused(cx: &SinkContext, deliveries: &[Delivery], refused: Vec<(usize, String)>) {
    if refused.is_empty() {
        return;
    }
    let all: Vec<&SinkRecord> = deliveries.iter().flat_map(|d| d.records.iter()).collect();
    let entries: Vec<(&SinkRecord, String)> = refused
        .into_iter()
        .filter_map(|(i, why)| all.get(i).map(|r| (*r, why)))
        .collect();
    cx.dead_letter(&entries, "untabled").await;
}

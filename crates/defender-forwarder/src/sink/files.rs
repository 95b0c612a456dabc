//! `kind = "files"`: the local archive. Records are appended per table and UTC day (see
//! [`crate::archive`]) and acknowledged once the flush that wrote them has fsynced.
//!
//! ```toml
//! [[sinks]]
//! kind = "files"
//! dir = "/srv/defender"
//! retention_days = 90
//! retention = { DeviceProcessEvents = 30 }
//! ```

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use defender_schema::Table;
use serde::Deserialize;
use serde_with::serde_as;
use tokio::sync::mpsc;

use super::{IDLE, Sink, SinkConfig, SinkContext, sleep_opt};
use crate::archive::{Archive, ArchiveError, ArchiveOptions};
use crate::config::{FromText, Invalid, Num, Span, Text};
use crate::delivery::{Ack, Day, Delivery, SinkRecord};
use crate::metrics::families::RETRIES;
use crate::table_filter::TablesConfig;

/// `kind = "files"`.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Name in logs, metrics and dead letters (default `files`).
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub name: Option<String>,
    /// The archive directory.
    #[serde_as(as = "Text")]
    pub dir: String,
    /// Tables to archive (default: all).
    #[serde(default)]
    pub tables: TablesConfig,
    /// Days kept; 0 keeps forever.
    #[serde(default = "FilesConfig::default_retention_days")]
    #[serde_as(as = "Num")]
    pub retention_days: u32,
    /// Days kept per table, e.g. `{ DeviceProcessEvents = 30 }`.
    #[serde(default)]
    #[serde_as(as = "BTreeMap<FromText, Num>")]
    pub retention: BTreeMap<Table, u32>,
    /// How often buffered records are written and fsynced.
    #[serde(default = "FilesConfig::default_flush_interval")]
    #[serde_as(as = "Span")]
    pub flush_interval: Duration,
    /// Segment size at which a new one starts, in MiB.
    #[serde(default = "FilesConfig::default_segment_mib")]
    #[serde_as(as = "Num")]
    pub segment_mib: u64,
    /// Segment age at which a new one starts.
    #[serde(default = "FilesConfig::default_segment_age")]
    #[serde_as(as = "Span")]
    pub segment_age: Duration,
    /// zstd level, 1 to 19.
    #[serde(default = "FilesConfig::default_zstd_level")]
    #[serde_as(as = "Num")]
    pub zstd_level: i32,
}

impl FilesConfig {
    /// An archive in `dir` with the defaults.
    pub fn new(dir: impl Into<String>) -> Self {
        Self {
            name: None,
            dir: dir.into(),
            tables: TablesConfig::default(),
            retention_days: Self::default_retention_days(),
            retention: BTreeMap::new(),
            flush_interval: Self::default_flush_interval(),
            segment_mib: Self::default_segment_mib(),
            segment_age: Self::default_segment_age(),
            zstd_level: Self::default_zstd_level(),
        }
    }
    /// 90 days.
    pub const fn default_retention_days() -> u32 {
        90
    }
    /// 1 s.
    pub const fn default_flush_interval() -> Duration {
        Duration::from_secs(1)
    }
    /// 128 MiB.
    pub const fn default_segment_mib() -> u64 {
        128
    }
    /// 1 h.
    pub const fn default_segment_age() -> Duration {
        Duration::from_secs(3600)
    }
    /// 3.
    pub const fn default_zstd_level() -> i32 {
        3
    }

    fn archive_options(&self) -> ArchiveOptions {
        ArchiveOptions {
            level: self.zstd_level,
            max_segment_bytes: self.segment_mib.saturating_mul(1024 * 1024).max(1),
            max_segment_age: self.segment_age,
            retention_days: self.retention_days,
            retention: self.retention.iter().map(|(t, d)| (t.name().to_owned(), *d)).collect(),
        }
    }
}

#[async_trait]
impl SinkConfig for FilesConfig {
    fn kind(&self) -> &'static str {
        "files"
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("files")
    }

    fn tables(&self) -> &TablesConfig {
        &self.tables
    }

    fn check(&self) -> Result<(), Invalid> {
        if self.dir.trim().is_empty() {
            return Err(Invalid::new("dir", "is empty"));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(Invalid::new("zstd_level", "must be between 1 and 19"));
        }
        if self.flush_interval.is_zero() {
            return Err(Invalid::new("flush_interval", "must be longer than 0s"));
        }
        Ok(())
    }

    /// Opens (and repairs) the archive.
    async fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, String> {
        let dir = PathBuf::from(&self.dir);
        let options = self.archive_options();
        let open_dir = dir.clone();
        let archive = tokio::task::spawn_blocking(move || Archive::open(&open_dir, options))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(Box::new(FilesSink {
            cx: cx.clone(),
            archive,
            dir,
            flush_interval: self.flush_interval,
            // Flush well before holding the whole in-flight budget.
            max_buffered: (cx.in_flight_bytes / 4).clamp(256 * 1024, 16 * 1024 * 1024),
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct FilesSink {
    cx: SinkContext,
    archive: Archive,
    dir: PathBuf,
    flush_interval: Duration,
    max_buffered: usize,
}

struct State {
    archive: Option<Archive>,
    acks: Vec<Ack>,
    /// Tables and sizes of what the next flush makes durable (for metrics).
    counted: Vec<(crate::delivery::TableId, usize)>,
    oldest: Option<Instant>,
    failures: u32,
}

#[async_trait]
impl Sink for FilesSink {
    async fn run(self: Box<Self>, rx: mpsc::Receiver<Delivery>) {
        let FilesSink {
            cx,
            archive,
            dir,
            flush_interval,
            max_buffered,
        } = *self;
        tracing::info!(sink = %cx.name, dir = %dir.display(), "archiving records");
        let mut st = State {
            archive: Some(archive),
            acks: Vec::new(),
            counted: Vec::new(),
            oldest: None,
            failures: 0,
        };
        run(&cx, &mut st, flush_interval, max_buffered, rx).await;
        seal(&cx, &mut st).await;
    }
}

/// Runs until every sender is gone, then delivers what is buffered.
async fn run(
    ctx: &SinkContext,
    st: &mut State,
    flush_interval: Duration,
    max_buffered: usize,
    mut rx: mpsc::Receiver<Delivery>,
) {
    retention(ctx, st).await;
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_retention = Instant::now();
    let mut last_input = Instant::now();
    loop {
        let idle_left = (!st.acks.is_empty()).then(|| IDLE.saturating_sub(last_input.elapsed()));
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => {
                    append(ctx, st, d).await;
                    let buffered = st.archive.as_ref().map_or(0, Archive::buffered_bytes);
                    if buffered >= max_buffered {
                        flush(ctx, st).await;
                    }
                    last_input = Instant::now();
                }
                None => break,
            },
            () = sleep_opt(idle_left) => flush(ctx, st).await,
            _ = tick.tick() => {
                flush(ctx, st).await;
                if last_retention.elapsed() >= Duration::from_secs(3600) {
                    retention(ctx, st).await;
                    last_retention = Instant::now();
                }
            }
        }
    }
    // Deliver what is buffered, retrying for as long as the shutdown deadline allows.
    while !st.acks.is_empty() {
        flush(ctx, st).await;
        if !st.acks.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Seals the open segments.
async fn seal(ctx: &SinkContext, st: &mut State) {
    let Some(a) = st.archive.take() else { return };
    let r = tokio::task::spawn_blocking(move || a.close()).await;
    if let Ok(Err(e)) | Err(e) = r.map_err(|e| ArchiveError::Io {
        op: "close",
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    }) {
        tracing::warn!(sink = %ctx.name, error = %e, "sealing segments failed; they are repaired on the next start");
    }
}

async fn append(ctx: &SinkContext, st: &mut State, d: Delivery) {
    let Delivery { records, ack, read_at } = d;
    let archive = st.archive.as_mut().expect("present between flushes");
    let today = Day::today();
    let mut rejected: Vec<(SinkRecord, String)> = Vec::new();
    for r in records {
        let day = r.day.unwrap_or(today);
        match archive.append(r.table.name(), day.as_str(), &super::one_line(&r.raw)) {
            Ok(()) => st.counted.push((r.table.clone(), r.raw.len())),
            Err(e) => {
                let reason = e.to_string();
                rejected.push((r, reason));
            }
        }
    }
    let rejected: Vec<(&SinkRecord, String)> = rejected.iter().map(|(r, why)| (r, why.clone())).collect();
    ctx.dead_letter(&rejected, "unarchivable").await;
    st.oldest = Some(st.oldest.map_or(read_at, |t| t.min(read_at)));
    st.acks.push(ack);
}

async fn flush(ctx: &SinkContext, st: &mut State) {
    if st.acks.is_empty() {
        return;
    }
    let mut archive = st.archive.take().expect("present between flushes");
    let (archive, result) = tokio::task::spawn_blocking(move || {
        let r = archive.flush();
        (archive, r)
    })
    .await
    .expect("the flush task does not panic");
    st.archive = Some(archive);
    match result {
        Ok(_) => {
            st.failures = 0;
            let counted = std::mem::take(&mut st.counted);
            if !counted.is_empty() {
                ctx.count_out(counted.iter().map(|(t, n)| (t, *n)));
            }
            if let Some(t) = st.oldest.take() {
                ctx.delivered_after(t, counted.len() as u64);
            }
            for a in st.acks.drain(..) {
                a.ack();
            }
        }
        Err(e) => {
            st.failures += 1;
            ctx.metrics.add(&RETRIES, [&ctx.name, "io"], 1);
            tracing::error!(sink = %ctx.name, error = %e, attempt = st.failures, "archive flush failed; records stay buffered and are retried");
            // Back off a little so a full disk does not spin.
            tokio::time::sleep(Duration::from_millis(200 * u64::from(st.failures.min(10)))).await;
        }
    }
}

async fn retention(ctx: &SinkContext, st: &mut State) {
    let Some(mut archive) = st.archive.take() else { return };
    let today = chrono::Utc::now().date_naive();
    let (archive, r) = tokio::task::spawn_blocking(move || {
        let r = archive.enforce_retention(today);
        (archive, r)
    })
    .await
    .expect("the retention task does not panic");
    st.archive = Some(archive);
    match r {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(sink = %ctx.name, days = removed.len(), "removed days past retention");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(sink = %ctx.name, error = %e, "retention failed; retried in an hour"),
    }
}

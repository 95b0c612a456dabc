//! [`TableWriter`]: records in, Parquet files per table and day out, with every acknowledged
//! record durable first in a staging log (see docs/tables.md, "Guarantees").

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::cell::Kind;
use crate::config::TablesConfig;
use crate::convert::{BatchBuilder, Row};
use crate::layout::{Day, Layout, TableName};
use crate::staging::{self, Pending};
use crate::store::{BlobRoot, BlobStore, LocalStore, LogFile, Store, Upload};
use crate::{TablesError, maintain};

/// Rows collected before they go to the Parquet encoder as one batch.
const BATCH_ROWS: usize = 4096;
/// ... or this many bytes of record text.
const BATCH_BYTES: usize = 2 * 1024 * 1024;
/// The staging area's top directory. Readers skip names starting with `_`.
pub(crate) const STAGING: &str = "_staging";
/// Key-value metadata of a published file: the writer that wrote it.
pub const META_WRITER: &str = "defender.writer";
/// Key-value metadata of a published file: the staging log it was built from.
pub const META_STAGING_LOG: &str = "defender.staging_log";
/// Key-value metadata of a compacted file: the files it replaced (a JSON array of names).
pub const META_COMPACTED_FROM: &str = "defender.compacted_from";

/// Where the tables live.
#[derive(Debug, Clone)]
pub enum Root {
    /// A local directory.
    Local(PathBuf),
    /// An Azure Blob container.
    Blob(BlobRoot),
}

/// One Parquet file being filled, and the staging log that makes its records durable.
struct OpenFile {
    table: TableName,
    day: Day,
    log_name: String,
    file_name: String,
    log: Box<dyn LogFile>,
    pending: Pending,
    builder: BatchBuilder,
    parquet: ArrowWriter<Box<dyn Upload>>,
    rows: u64,
    opened: Instant,
}

impl fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenFile")
            .field("file", &self.file_name)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl OpenFile {
    fn write_batch(&mut self) -> Result<(), TablesError> {
        if self.builder.rows() > 0 {
            let batch = self.builder.finish()?;
            self.parquet.write(&batch)?;
        }
        Ok(())
    }

    /// Appends what is pending to the log, durably; on failure keeps it for the next try.
    fn flush_log(&mut self) -> Result<(), TablesError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let frames = self.pending.take_frames();
        for (i, frame) in frames.iter().enumerate() {
            if let Err(e) = self.log.append(frame) {
                self.pending.restore(frames.into_iter().skip(i).collect());
                return Err(e);
            }
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        (self.parquet.bytes_written() + self.parquet.in_progress_size()) as u64
    }
}

/// What [`TableWriter::open`] found and finished from a previous run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Staging logs turned into published files.
    pub published: Vec<String>,
    /// Staging logs whose file had already been published (their log was only deleted).
    pub already_published: Vec<String>,
    /// Records recovered from the logs.
    pub records: u64,
    /// Logs that ended in a torn frame (a crash during a flush that was never acknowledged).
    pub torn: usize,
}

/// Writes records into Parquet tables: `<root>/<Table>/day=YYYY-MM-DD/<file>.parquet`.
///
/// Blocking: call it from a thread of its own or `spawn_blocking`, never from an async task
/// (with a Blob root it drives its own small runtime).
///
/// The contract with a caller that acknowledges records: every record passed to
/// [`TableWriter::append`] before a [`TableWriter::flush`] that returned `Ok` is durable (in a
/// staging log, or already in a published file) and will be published exactly once, by this
/// writer or, after a crash, by the next [`TableWriter::open`] with the same writer id.
pub struct TableWriter {
    store: Arc<dyn Store>,
    config: TablesConfig,
    writer_id: String,
    run: String,
    next_seq: u64,
    open: BTreeMap<(TableName, Day), OpenFile>,
    last_housekeeping: Option<Instant>,
}

impl fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableWriter")
            .field("root", &self.store.describe())
            .field("writer_id", &self.writer_id)
            .field("open_files", &self.open.len())
            .finish_non_exhaustive()
    }
}

impl TableWriter {
    /// Opens the root, then publishes what a previous run of `writer_id` left staged (see
    /// [`Recovery`]). `writer_id`: ASCII letters, digits and `-`, at most 64; stable per
    /// instance (e.g. derived from its state directory), unique among writers sharing a root.
    pub fn open(root: &Root, writer_id: &str, config: TablesConfig) -> Result<(Self, Recovery), TablesError> {
        config.validate()?;
        let id_ok = !writer_id.is_empty()
            && writer_id.len() <= 64
            && writer_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !id_ok {
            return Err(TablesError::Config(format!(
                "writer id `{writer_id}`: use 1 to 64 ASCII letters, digits and `-`"
            )));
        }
        let store: Arc<dyn Store> = match root {
            Root::Local(dir) => Arc::new(LocalStore::open(dir)?),
            Root::Blob(blob) => Arc::new(BlobStore::open(blob)?),
        };
        let run = format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut writer = TableWriter {
            store,
            config,
            writer_id: writer_id.to_owned(),
            run,
            next_seq: 0,
            open: BTreeMap::new(),
            last_housekeeping: None,
        };
        let recovery = writer.recover(writer_id)?;
        Ok((writer, recovery))
    }

    /// The settings.
    pub fn config(&self) -> &TablesConfig {
        &self.config
    }

    /// Adds one record (its exact JSON bytes). Not durable until the next [`TableWriter::flush`].
    ///
    /// Fails with [`TablesError::NotARecord`] (nothing written) when the bytes are not a
    /// Defender record; other errors come from writing and leave the record unwritten as well.
    pub fn append(&mut self, record: &[u8]) -> Result<(), TablesError> {
        let text = std::str::from_utf8(record).map_err(|e| TablesError::NotARecord(format!("not UTF-8: {e}")))?;
        let row = Row::parse(text)?;
        let day = row.day.unwrap_or_else(Day::today);
        let key = (row.table.clone(), day);
        if !self.open.contains_key(&key) {
            let file = self.open_file(row.table.clone(), day, row.layout)?;
            self.open.insert(key.clone(), file);
        }
        let file = self.open.get_mut(&key).expect("just opened");
        file.builder.append(&row, record.len());
        file.pending.push(record);
        file.rows += 1;
        if file.builder.rows() >= BATCH_ROWS || file.builder.bytes() >= BATCH_BYTES {
            file.write_batch()?;
            let full = file.rows >= self.config.rotate_rows || file.size() >= self.config.rotate_mib << 20;
            if full {
                self.rotate(&key)?;
            } else {
                self.bound_memory()?;
            }
        }
        Ok(())
    }

    /// Makes every record appended so far durable. When it returns `Ok`, they may be
    /// acknowledged. Cheap when nothing is pending; meant to be called as soon as input pauses.
    pub fn flush(&mut self) -> Result<(), TablesError> {
        let mut first_error = None;
        for file in self.open.values_mut() {
            if let Err(e) = file.flush_log() {
                tracing::warn!(file = %file.file_name, error = %e, "cannot append to the staging log");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Bytes appended but not yet durable.
    pub fn pending_bytes(&self) -> usize {
        self.open.values().map(|f| f.pending.bytes()).sum()
    }

    /// Publishes files that reached `rotate_age`; once an hour (and on the first call) also
    /// applies retention, compacts finished days, and publishes what failed rotations and
    /// writers gone for `orphan_after` left staged. Call it every few seconds.
    pub fn maintain(&mut self) -> Result<(), TablesError> {
        let old: Vec<_> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= self.config.rotate_age)
            .map(|(k, _)| k.clone())
            .collect();
        for key in old {
            self.rotate(&key)?;
        }
        if self
            .last_housekeeping
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
        {
            self.housekeeping()?;
        }
        Ok(())
    }

    /// Retention, compaction and recovery of leftover staging, now.
    pub fn housekeeping(&mut self) -> Result<(), TablesError> {
        self.last_housekeeping = Some(Instant::now());
        self.recover_stale_staging()?;
        maintain::retention(self.store.as_ref(), &self.config)?;
        if !self.config.compact_after.is_zero() && self.store.local_root().is_some() {
            let open: Vec<(String, Day)> = self.open.keys().map(|(t, d)| (t.name().to_owned(), *d)).collect();
            maintain::compact(self.store.as_ref(), &self.config, &self.writer_id, &open)?;
        }
        Ok(())
    }

    /// Publishes every open file and stops.
    pub fn close(mut self) -> Result<(), TablesError> {
        let keys: Vec<_> = self.open.keys().cloned().collect();
        for key in keys {
            self.rotate(&key)?;
        }
        Ok(())
    }

    /// Publishes one open file: its pending records go to the log first, so that a failed
    /// publication leaves everything staged for the next attempt.
    fn rotate(&mut self, key: &(TableName, Day)) -> Result<(), TablesError> {
        let Some(file) = self.open.get_mut(key) else {
            return Ok(());
        };
        file.flush_log()?;
        let mut file = self.open.remove(key).expect("present");
        let started = Instant::now();
        file.write_batch()?;
        let upload = file.parquet.into_inner()?;
        let published = upload.commit()?;
        self.store.delete(&file.log_name)?;
        tracing::info!(
            table = %file.table,
            day = %file.day,
            file = %file.file_name,
            rows = file.rows,
            published,
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "published a table file"
        );
        Ok(())
    }

    /// Keeps the encoded, unwritten row groups of all open files under `buffer_mib`.
    fn bound_memory(&mut self) -> Result<(), TablesError> {
        let limit = usize::try_from(self.config.buffer_mib << 20).unwrap_or(usize::MAX);
        let total: usize = self.open.values().map(|f| f.parquet.memory_size()).sum();
        if total > limit
            && let Some(file) = self.open.values_mut().max_by_key(|f| f.parquet.memory_size())
        {
            file.parquet.flush()?;
        }
        Ok(())
    }

    fn open_file(&mut self, table: TableName, day: Day, layout: &'static Layout) -> Result<OpenFile, TablesError> {
        self.next_seq += 1;
        let stem = format!("{}-{:06}", self.run, self.next_seq);
        let log_name = format!("{STAGING}/{}/log/{table}/{day}/{stem}.log", self.writer_id);
        let file_name = published_name(&self.writer_id, &table, day, &stem);
        let log = self.store.create_log(&log_name, staging::HEADER)?;
        let upload = self
            .store
            .create_file(&file_name, &format!("{STAGING}/{}/tmp/{stem}.parquet", self.writer_id))?;
        let parquet = parquet_writer(upload, layout, &self.config, &self.writer_id, &log_name)?;
        Ok(OpenFile {
            table,
            day,
            log_name,
            file_name,
            log,
            pending: Pending::default(),
            builder: BatchBuilder::new(layout),
            parquet,
            rows: 0,
            opened: Instant::now(),
        })
    }

    /// Publishes the logs a previous run of `writer_id` left (and removes its temporary files).
    fn recover(&mut self, writer_id: &str) -> Result<Recovery, TablesError> {
        let mut recovery = Recovery::default();
        self.store.clear_temporary(&format!("{STAGING}/{writer_id}/tmp/"))?;
        for log in self.store.list(&format!("{STAGING}/{writer_id}/log/"))? {
            if is_log(&log.name) {
                recover_log(self.store.as_ref(), &self.config, writer_id, &log.name, &mut recovery)?;
            }
        }
        if !recovery.published.is_empty() || !recovery.already_published.is_empty() {
            tracing::info!(
                writer = writer_id,
                published = recovery.published.len(),
                already_published = recovery.already_published.len(),
                records = recovery.records,
                torn = recovery.torn,
                "published what the previous run had staged"
            );
        }
        Ok(recovery)
    }

    /// Logs of this writer that no open file owns (a rotation that failed), and the staging of
    /// other writers untouched for `orphan_after`.
    fn recover_stale_staging(&mut self) -> Result<(), TablesError> {
        let owned: Vec<&str> = self.open.values().map(|f| f.log_name.as_str()).collect();
        let now = SystemTime::now();
        let mut by_writer: BTreeMap<String, Vec<crate::store::Listed>> = BTreeMap::new();
        for f in self.store.list(&format!("{STAGING}/"))? {
            let writer = f.name.split('/').nth(1).unwrap_or_default().to_owned();
            by_writer.entry(writer).or_default().push(f);
        }
        let mut recovery = Recovery::default();
        for (writer, files) in by_writer {
            let newest = files.iter().map(|f| f.modified).max().unwrap_or(now);
            let orphaned = now.duration_since(newest).unwrap_or_default() >= self.config.orphan_after;
            if writer != self.writer_id && !orphaned {
                continue;
            }
            for f in files.iter().filter(|f| is_log(&f.name)) {
                if !owned.contains(&f.name.as_str()) && f.name.split('/').nth(2) == Some("log") {
                    recover_log(self.store.as_ref(), &self.config, &writer, &f.name, &mut recovery)?;
                }
            }
            if writer != self.writer_id {
                self.store.clear_temporary(&format!("{STAGING}/{writer}/tmp/"))?;
            }
        }
        Ok(())
    }
}

/// Staging logs are named `*.log`, by this writer only.
#[allow(clippy::case_sensitive_file_extension_comparisons)]
fn is_log(name: &str) -> bool {
    name.ends_with(".log")
}

/// `<Table>/day=<day>/<writer>-<run>-<seq>.parquet`
fn published_name(writer_id: &str, table: &TableName, day: Day, stem: &str) -> String {
    format!("{table}/day={day}/{writer_id}-{stem}.parquet")
}

/// Publishes one staging log (`_staging/<writer>/log/<Table>/<day>/<stem>.log`) unless its file
/// exists, then deletes it. Deterministic names make this safe to repeat and to race.
fn recover_log(
    store: &dyn Store,
    config: &TablesConfig,
    writer_id: &str,
    log_name: &str,
    recovery: &mut Recovery,
) -> Result<(), TablesError> {
    let parts: Vec<&str> = log_name.split('/').collect();
    let (Some(table), Some(day), Some(stem)) = (
        parts.get(3),
        parts.get(4).and_then(|d| Day::parse(d)),
        parts.get(5).and_then(|s| s.strip_suffix(".log")),
    ) else {
        tracing::warn!(log = log_name, "not a staging log name; left alone");
        return Ok(());
    };
    let table = TableName::of_category(&format!("AdvancedHunting-{table}"));
    let file_name = published_name(writer_id, &table, day, stem);
    if store.exists(&file_name)? {
        store.delete(log_name)?;
        recovery.already_published.push(file_name);
        return Ok(());
    }
    let data = store.read(log_name)?;
    let (records, torn) = staging::read_records(log_name, &data)?;
    recovery.torn += usize::from(torn);
    if !records.is_empty() {
        let layout = Layout::for_table(&table);
        let upload = store.create_file(
            &file_name,
            &format!("{STAGING}/{writer_id}/tmp/{stem}.recovered.parquet"),
        )?;
        let mut parquet = parquet_writer(upload, layout, config, writer_id, log_name)?;
        let mut builder = BatchBuilder::new(layout);
        for record in &records {
            let text = std::str::from_utf8(record)
                .map_err(|e| TablesError::NotARecord(format!("staged record is not UTF-8: {e}")))?;
            let row = Row::parse(text)?;
            if !std::ptr::eq(row.layout, layout) {
                return Err(TablesError::Staging {
                    name: log_name.to_owned(),
                    why: format!("holds a record of table {}", row.table),
                });
            }
            builder.append(&row, record.len());
            if builder.rows() >= BATCH_ROWS {
                parquet.write(&builder.finish()?)?;
            }
        }
        parquet.write(&builder.finish()?)?;
        parquet.into_inner()?.commit()?;
        recovery.records += records.len() as u64;
        recovery.published.push(file_name);
    }
    store.delete(log_name)?;
    Ok(())
}

/// The Parquet settings: zstd, page statistics, dictionaries for columns whose values repeat.
pub(crate) fn parquet_writer(
    upload: Box<dyn Upload>,
    layout: &Layout,
    config: &TablesConfig,
    writer_id: &str,
    source: &str,
) -> Result<ArrowWriter<Box<dyn Upload>>, TablesError> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(config.zstd_level)?))
        .set_max_row_group_row_count(Some(config.row_group_rows))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_dictionary_enabled(true)
        .set_created_by(format!("defender-tables {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(META_WRITER.to_owned(), writer_id.to_owned()),
            KeyValue::new(META_STAGING_LOG.to_owned(), source.to_owned()),
        ]));
    // Values that rarely repeat gain nothing from a dictionary but its cost (the writer would
    // fall back to plain once the dictionary page is full, after paying for it).
    let mut unique = vec!["_Envelope", "_Unknown", "_Drift", "_Properties"];
    for (name, kind) in &layout.columns {
        let hashy = ["SHA1", "SHA256", "MD5", "CommandLine", "ReportId"]
            .iter()
            .any(|s| name.ends_with(s));
        if matches!(kind, Kind::JsonText | Kind::Dynamic) || hashy {
            unique.push(name);
        }
    }
    for name in unique {
        props = props.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    Ok(ArrowWriter::try_new(
        upload,
        layout.schema.clone(),
        Some(props.build()),
    )?)
}

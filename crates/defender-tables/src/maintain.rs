//! Retention and compaction: what the writer does to published files besides adding them.

use std::collections::BTreeMap;
use std::fs::File;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::TablesError;
use crate::config::TablesConfig;
use crate::layout::{Day, Layout, TableName};
use crate::store::{Listed, Store};
use crate::writer::{META_COMPACTED_FROM, STAGING, parquet_writer};

/// Published files by table and day (`<Table>/day=<day>/<file>.parquet`; anything else skipped).
pub(crate) fn published(store: &dyn Store) -> Result<BTreeMap<(String, Day), Vec<Listed>>, TablesError> {
    let mut out: BTreeMap<(String, Day), Vec<Listed>> = BTreeMap::new();
    for f in store.list("")? {
        let parts: Vec<&str> = f.name.split('/').collect();
        let [table, day, file] = parts[..] else { continue };
        if table.starts_with(['_', '.']) || file.starts_with(['_', '.']) || !file.ends_with(".parquet") {
            continue;
        }
        let Some(day) = day.strip_prefix("day=").and_then(Day::parse) else {
            continue;
        };
        out.entry((table.to_owned(), day)).or_default().push(f);
    }
    Ok(out)
}

/// Deletes the files of days older than their table's retention: a day is kept for
/// `retention_days` full days after it ends.
pub(crate) fn retention(store: &dyn Store, config: &TablesConfig) -> Result<(), TablesError> {
    let today = Day::today().date();
    for ((table, day), files) in published(store)? {
        let keep = i64::from(config.retention_for(&table));
        if (today - day.date()).num_days() > keep {
            for f in &files {
                store.delete(&f.name)?;
            }
            tracing::info!(table, %day, files = files.len(), "retention: deleted a day");
        }
    }
    Ok(())
}

/// Merges the files of each finished day (over for `compact_after`, with at least
/// `compact_min_files` files, no file of it open here) into as few files as rotation allows,
/// and swaps the day's directory for the merged one in one atomic step (local roots only).
pub(crate) fn compact(
    store: &dyn Store,
    config: &TablesConfig,
    writer_id: &str,
    open: &[(String, Day)],
) -> Result<(), TablesError> {
    let Some(root) = store.local_root() else {
        return Ok(());
    };
    let now = chrono::Utc::now();
    let work = root.join(STAGING).join(writer_id).join("compact");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| TablesError::io("remove", &work, e))?;
    }
    for ((table, day), files) in published(store)? {
        let day_end = day
            .date()
            .succ_opt()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc());
        let finished = day_end.is_some_and(|end| (now - end).to_std().is_ok_and(|over| over >= config.compact_after));
        let is_open = open.iter().any(|(t, d)| *t == table && *d == day);
        if !finished || is_open || files.len() < config.compact_min_files {
            continue;
        }
        compact_day(root, &work, config, writer_id, &table, day, &files)?;
    }
    Ok(())
}

fn compact_day(
    root: &std::path::Path,
    work: &std::path::Path,
    config: &TablesConfig,
    writer_id: &str,
    table: &str,
    day: Day,
    files: &[Listed],
) -> Result<(), TablesError> {
    let table_name = TableName::of_category(&format!("AdvancedHunting-{table}"));
    let layout = Layout::for_table(&table_name);
    let new_dir = work.join(table).join(format!("day={day}"));
    std::fs::create_dir_all(&new_dir).map_err(|e| TablesError::io("create", &new_dir, e))?;
    let staging = crate::store::LocalStore::open(work)?;
    let sources: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    let sources_json = serde_json::to_string(&sources).expect("names serialise");
    let mut part = 0;
    let mut writer = None;
    let mut rows_in_part = 0u64;
    let mut rows_total = 0u64;
    for f in files {
        let path = root.join(&f.name);
        let file = File::open(&path).map_err(|e| TablesError::io("open", &path, e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
            .with_batch_size(8192)
            .build()?;
        for batch in reader {
            let batch = batch?;
            if batch.schema().fields() != layout.schema.fields() {
                tracing::warn!(file = %f.name, "compaction: a file with another schema; day left as is");
                return std::fs::remove_dir_all(&new_dir).map_err(|e| TablesError::io("remove", &new_dir, e));
            }
            if writer.is_none() {
                part += 1;
                let name = format!("{table}/day={day}/{writer_id}-compacted-{part:03}.parquet");
                let upload = staging.create_file(&name, &format!("tmp-{part}.parquet"))?;
                writer = Some(parquet_writer(upload, layout, config, writer_id, "compaction")?);
            }
            let w = writer.as_mut().expect("just set");
            let batch = batch.with_schema(layout.schema.clone())?;
            w.write(&batch)?;
            rows_in_part += batch.num_rows() as u64;
            rows_total += batch.num_rows() as u64;
            let full = rows_in_part >= config.rotate_rows
                || (w.bytes_written() + w.in_progress_size()) as u64 >= config.rotate_mib << 20;
            if full {
                finish_part(writer.take(), &sources_json)?;
                rows_in_part = 0;
            }
        }
    }
    finish_part(writer.take(), &sources_json)?;
    swap_day(root, &new_dir, table, day, files)?;
    tracing::info!(table, %day, files = files.len(), parts = part, rows = rows_total, "compacted a day");
    Ok(())
}

fn finish_part(
    writer: Option<parquet::arrow::ArrowWriter<Box<dyn crate::store::Upload>>>,
    sources_json: &str,
) -> Result<(), TablesError> {
    if let Some(mut w) = writer {
        w.append_key_value_metadata(parquet::file::metadata::KeyValue::new(
            META_COMPACTED_FROM.to_owned(),
            sources_json.to_owned(),
        ));
        w.into_inner()?.commit()?;
    }
    Ok(())
}

/// Exchanges `<root>/<table>/day=<day>` with `new_dir` atomically (`renameat2(RENAME_EXCHANGE)`),
/// unless a file arrived in the day since it was listed; then deletes the old files.
#[cfg(target_os = "linux")]
fn swap_day(
    root: &std::path::Path,
    new_dir: &std::path::Path,
    table: &str,
    day: Day,
    files: &[Listed],
) -> Result<(), TablesError> {
    let day_dir = root.join(table).join(format!("day={day}"));
    let listed = |dir: &std::path::Path| -> Result<Vec<String>, TablesError> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| TablesError::io("list", dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    };
    let mut expected: Vec<String> = files
        .iter()
        .filter_map(|f| f.name.rsplit('/').next().map(str::to_owned))
        .collect();
    expected.sort();
    if listed(&day_dir)? != expected {
        tracing::info!(table, %day, "compaction: the day changed while merging; next time");
        return std::fs::remove_dir_all(new_dir).map_err(|e| TablesError::io("remove", new_dir, e));
    }
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        new_dir,
        rustix::fs::CWD,
        &day_dir,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| TablesError::io("swap", &day_dir, e.into()))?;
    crate::store::sync_dir(&root.join(table))?;
    // A file another writer published between the check and the swap is now in the old
    // directory: move it into the day (it was hidden for that instant, never lost).
    for name in listed(new_dir)? {
        if !expected.contains(&name) {
            let (from, to) = (new_dir.join(&name), day_dir.join(&name));
            std::fs::rename(&from, &to).map_err(|e| TablesError::io("move", &to, e))?;
        }
    }
    crate::store::sync_dir(&day_dir)?;
    std::fs::remove_dir_all(new_dir).map_err(|e| TablesError::io("remove", new_dir, e))
}

#[cfg(not(target_os = "linux"))]
fn swap_day(
    _root: &std::path::Path,
    new_dir: &std::path::Path,
    table: &str,
    day: Day,
    _files: &[Listed],
) -> Result<(), TablesError> {
    tracing::info!(table, %day, "compaction needs Linux's atomic directory exchange; skipped");
    std::fs::remove_dir_all(new_dir).map_err(|e| TablesError::io("remove", new_dir, e))
}

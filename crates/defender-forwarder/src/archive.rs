//! The local archive: Defender records as zstd-compressed NDJSON, per table and per UTC day.
//!
//! Layout: `<dir>/<Table>/<YYYY-MM-DD>/<segment>.ndjson.zst`. A segment is a sequence of complete
//! zstd frames (one per [`Archive::flush`]), so `zstdcat` reads it at any time. While a segment is
//! written it is named `<stamp>-<seq>.active.ndjson.zst`; sealing renames it to
//! `<stamp>-<seq>.ndjson.zst`. [`Archive::open`] seals what a crash left active, after cutting off
//! a torn last frame. Segment names (`YYYYMMDDTHHMMSSmmmZ-NNNNNN`) sort in creation order within a
//! day directory and never collide, even across restarts or a clock going back.
//!
//! Everything here is synchronous `std::fs`: async callers wrap it in `spawn_blocking`. One
//! `Archive` owns its directory (an exclusive lock on `<dir>/.lock`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate, Utc};
use zstd::zstd_safe;

const ACTIVE_SUFFIX: &str = ".active.ndjson.zst";
const SEALED_SUFFIX: &str = ".ndjson.zst";
const LOCK_FILE: &str = ".lock";
const MAX_TABLE_LEN: usize = 128;

/// How the archive compresses, rotates and expires segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// zstd level (default 3).
    pub level: i32,
    /// Seal a segment once its compressed size reaches this (default 128 MiB).
    pub max_segment_bytes: u64,
    /// Seal a segment whose file was created longer ago than this (default 1 h).
    pub max_segment_age: Duration,
    /// Days kept per table (default 90); 0 keeps forever.
    pub retention_days: u32,
    /// Per-table overrides of `retention_days`, e.g. `DeviceProcessEvents = 30`.
    pub retention: BTreeMap<String, u32>,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            level: 3,
            max_segment_bytes: 128 << 20,
            max_segment_age: Duration::from_secs(3600),
            retention_days: 90,
            retention: BTreeMap::new(),
        }
    }
}

/// What an [`Archive::flush`] made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Records written and fsynced.
    pub records: u64,
    /// Their uncompressed size, newlines included.
    pub raw_bytes: u64,
    /// Compressed bytes appended to segment files.
    pub compressed_bytes: u64,
    /// Segments sealed by rotation.
    pub segments_sealed: u64,
}

/// Archive failures; every I/O error names its path.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid archive table name {0:?}: expected 1 to 128 ASCII letters, digits, '_' or '-'")]
    InvalidTable(String),
    #[error("invalid archive day {0:?}: expected a date as YYYY-MM-DD")]
    InvalidDay(String),
    #[error("invalid archive record for {0}: it contains a newline")]
    InvalidRecord(String),
    #[error("archive {} is in use by another process", .0.display())]
    Locked(PathBuf),
    #[error("archive: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { op, path, source }
}

/// A segment file being appended to.
#[derive(Debug)]
struct ActiveFile {
    path: PathBuf,
    file: File,
    /// Bytes fsynced (and the file length, as every frame is fsynced by the flush that writes it).
    len: u64,
    created: Instant,
    /// The file is new: its directory entries still need an fsync.
    sync_dirs: bool,
}

/// Per (table, day): records not yet durable, and the open segment file if any.
#[derive(Debug, Default)]
struct Segment {
    pending: Vec<u8>,
    records: u64,
    file: Option<ActiveFile>,
}

/// The local archive. See the module documentation.
pub struct Archive {
    dir: PathBuf,
    options: ArchiveOptions,
    compressor: zstd::bulk::Compressor<'static>,
    /// table -> day -> segment
    segments: BTreeMap<String, BTreeMap<String, Segment>>,
    buffered: usize,
    _lock: File,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("segments", &self.segments)
            .field("buffered", &self.buffered)
            .finish_non_exhaustive()
    }
}

impl Archive {
    /// Creates `dir` (mode 0700 on unix), locks it and repairs what a crash left: every segment
    /// still active is cut after its last complete frame that decompresses, then sealed (or
    /// removed when nothing is left).
    pub fn open(dir: &Path, options: ArchiveOptions) -> Result<Archive, ArchiveError> {
        create_dirs(dir)?;
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        sync_dir(parent.unwrap_or(Path::new(".")))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = open_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(ArchiveError::Locked(dir.into())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let mut compressor = zstd::bulk::Compressor::new(options.level).map_err(io_err("configure zstd for", dir))?;
        compressor
            .set_parameter(zstd_safe::CParameter::ChecksumFlag(true))
            .map_err(io_err("configure zstd for", dir))?;
        for (table_dir, _) in subdirs(dir, is_valid_table)? {
            for (day_dir, _) in subdirs(&table_dir, |d| parse_day(d).is_some())? {
                for entry in fs::read_dir(&day_dir).map_err(io_err("list", &day_dir))? {
                    let entry = entry.map_err(io_err("list", &day_dir))?;
                    let name = entry.file_name();
                    if name.to_str().is_some_and(|n| n.ends_with(ACTIVE_SUFFIX)) {
                        repair(&entry.path())?;
                    }
                }
            }
        }
        Ok(Archive {
            dir: dir.to_path_buf(),
            options,
            compressor,
            segments: BTreeMap::new(),
            buffered: 0,
            _lock: lock,
        })
    }

    /// Buffers one record (its exact bytes, which must not contain a newline; the archive adds
    /// one) for `table` on `day` (`YYYY-MM-DD`). No I/O: call [`flush`](Self::flush) to write, e.g. when
    /// [`buffered_bytes`](Self::buffered_bytes) grows large.
    pub fn append(&mut self, table: &str, day: &str, record: &[u8]) -> Result<(), ArchiveError> {
        if memchr::memchr(b'\n', record).is_some() {
            return Err(ArchiveError::InvalidRecord(table.to_owned()));
        }
        let days = match self.segments.get_mut(table) {
            Some(days) => days,
            None if is_valid_table(table) => self.segments.entry(table.to_owned()).or_default(),
            None => return Err(ArchiveError::InvalidTable(table.to_owned())),
        };
        let segment = match days.get_mut(day) {
            Some(segment) => segment,
            None if parse_day(day).is_some() => days.entry(day.to_owned()).or_default(),
            None => return Err(ArchiveError::InvalidDay(day.to_owned())),
        };
        segment.pending.reserve(record.len() + 1);
        segment.pending.extend_from_slice(record);
        segment.pending.push(b'\n');
        segment.records += 1;
        self.buffered += record.len() + 1;
        Ok(())
    }

    /// Bytes appended but not yet durable.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Compresses what each segment buffered into one frame, appends it and fsyncs the file (and
    /// its directories when the file is new), then seals segments past their size or age. After
    /// `Ok`, everything appended so far is durable. After `Err` the records not written stay
    /// buffered (a later `Ok` flush covers them) and the failing segment file is abandoned (left
    /// active for the next `open` to repair), so some records may end up archived twice.
    pub fn flush(&mut self) -> Result<FlushStats, ArchiveError> {
        let mut stats = FlushStats::default();
        let mut first_error = None;
        let now = Instant::now();
        for (table, days) in &mut self.segments {
            for (day, segment) in days.iter_mut() {
                let result =
                    write_pending(&self.dir, table, day, segment, &mut self.compressor, &mut stats).and_then(|()| {
                        let rotate = segment.file.as_ref().is_some_and(|f| {
                            f.len >= self.options.max_segment_bytes
                                || now.saturating_duration_since(f.created) >= self.options.max_segment_age
                        });
                        if rotate {
                            seal(segment)?;
                            stats.segments_sealed += 1;
                        }
                        Ok(())
                    });
                if let Err(e) = result {
                    tracing::warn!(table, day, error = %e, "archive flush failed");
                    first_error.get_or_insert(e);
                }
            }
            days.retain(|_, s| s.file.is_some() || !s.pending.is_empty());
        }
        self.segments.retain(|_, days| !days.is_empty());
        self.buffered = self
            .segments
            .values()
            .flat_map(BTreeMap::values)
            .map(|s| s.pending.len())
            .sum();
        first_error.map_or(Ok(stats), Err)
    }

    /// Flushes, then seals every open segment.
    pub fn close(mut self) -> Result<(), ArchiveError> {
        self.flush()?;
        for segment in self.segments.values_mut().flat_map(BTreeMap::values_mut) {
            seal(segment)?;
        }
        Ok(())
    }

    /// Deletes the day directories older than their table's retention (`day < today - days`;
    /// 0 days keeps forever) and returns them. Only `<dir>/<valid table>/<YYYY-MM-DD>` directories
    /// are considered (symlinks never followed), and days with an open segment are left for a
    /// later run.
    pub fn enforce_retention(&mut self, today: NaiveDate) -> Result<Vec<PathBuf>, ArchiveError> {
        let mut removed = Vec::new();
        for (table_dir, table) in subdirs(&self.dir, is_valid_table)? {
            let days = self
                .options
                .retention
                .get(&table)
                .copied()
                .unwrap_or(self.options.retention_days);
            let Some(cutoff) = today.checked_sub_days(Days::new(days.into())).filter(|_| days > 0) else {
                continue;
            };
            let open = self.segments.get(&table);
            for (day_dir, day) in subdirs(&table_dir, |d| parse_day(d).is_some())? {
                if parse_day(&day).is_some_and(|d| d < cutoff) && !open.is_some_and(|o| o.contains_key(&day)) {
                    fs::remove_dir_all(&day_dir).map_err(io_err("remove", &day_dir))?;
                    tracing::info!(table, day, "archive retention removed a day");
                    removed.push(day_dir);
                }
            }
        }
        Ok(removed)
    }
}

/// Compresses `segment.pending` into one frame, appends it to the segment file (created on
/// demand) and fsyncs. On failure the file is abandoned and the records stay pending.
fn write_pending(
    root: &Path,
    table: &str,
    day: &str,
    segment: &mut Segment,
    compressor: &mut zstd::bulk::Compressor<'static>,
    stats: &mut FlushStats,
) -> Result<(), ArchiveError> {
    if segment.pending.is_empty() {
        return Ok(());
    }
    let day_dir = root.join(table).join(day);
    let frame = compressor
        .compress(&segment.pending)
        .map_err(io_err("compress for", &day_dir))?;
    if segment.file.is_none() {
        segment.file = Some(create_segment(&day_dir)?);
    }
    let file = segment.file.as_mut().expect("just created");
    let result = file
        .file
        .write_all(&frame)
        .map_err(io_err("write", &file.path))
        .and_then(|()| file.file.sync_data().map_err(io_err("fsync", &file.path)))
        .and_then(|()| {
            if file.sync_dirs {
                sync_dir(&day_dir)?;
                sync_dir(day_dir.parent().expect("table dir"))?;
                sync_dir(root)?;
                file.sync_dirs = false;
            }
            Ok(())
        });
    if let Err(e) = result {
        // Best effort: leave the file as it was; `open` repairs whatever remains.
        let _ = file.file.set_len(file.len);
        segment.file = None;
        return Err(e);
    }
    file.len += frame.len() as u64;
    stats.records += segment.records;
    stats.raw_bytes += segment.pending.len() as u64;
    stats.compressed_bytes += frame.len() as u64;
    if segment.pending.capacity() > 1 << 20 {
        segment.pending = Vec::new();
    } else {
        segment.pending.clear();
    }
    segment.records = 0;
    Ok(())
}

/// Creates a new active segment in `day_dir`, named after every segment already there.
fn create_segment(day_dir: &Path) -> Result<ActiveFile, ArchiveError> {
    create_dirs(day_dir)?;
    let mut last: Option<(String, u32)> = None;
    for entry in fs::read_dir(day_dir).map_err(io_err("list", day_dir))? {
        let name = entry.map_err(io_err("list", day_dir))?.file_name();
        if let Some(id) = name.to_str().and_then(parse_segment_name) {
            last = last.max(Some(id));
        }
    }
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string();
    let (stamp, mut seq) = match last {
        Some((last_stamp, last_seq)) if last_stamp >= stamp => (last_stamp, last_seq + 1),
        _ => (stamp, 0),
    };
    loop {
        let path = day_dir.join(format!("{stamp}-{seq:06}{ACTIVE_SUFFIX}"));
        match open_options().write(true).create_new(true).open(&path) {
            Ok(file) => {
                return Ok(ActiveFile {
                    path,
                    file,
                    len: 0,
                    created: Instant::now(),
                    sync_dirs: true,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => seq += 1,
            Err(e) => return Err(io_err("create", &path)(e)),
        }
    }
}

/// `<stamp>-<seq>` of a segment file name, active or sealed.
fn parse_segment_name(name: &str) -> Option<(String, u32)> {
    let stem = name
        .strip_suffix(ACTIVE_SUFFIX)
        .or_else(|| name.strip_suffix(SEALED_SUFFIX))?;
    let (stamp, seq) = stem.rsplit_once('-')?;
    Some((stamp.to_owned(), seq.parse().ok()?))
}

/// Renames the segment's active file to its sealed name.
fn seal(segment: &mut Segment) -> Result<(), ArchiveError> {
    let Some(file) = segment.file.take() else {
        return Ok(());
    };
    seal_path(&file.path)
}

fn seal_path(active: &Path) -> Result<(), ArchiveError> {
    let name = active.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let stem = name.strip_suffix(ACTIVE_SUFFIX).unwrap_or(name);
    let sealed = active.with_file_name(format!("{stem}{SEALED_SUFFIX}"));
    fs::rename(active, &sealed).map_err(io_err("seal", active))?;
    sync_dir(sealed.parent().expect("day dir"))
}

/// Cuts an active segment after its last complete frame that decompresses, then seals it (or
/// removes it when empty).
fn repair(path: &Path) -> Result<(), ArchiveError> {
    let data = fs::read(path).map_err(io_err("read", path))?;
    let mut starts = Vec::new();
    let mut end = 0;
    while end < data.len() {
        match zstd_safe::find_frame_compressed_size(&data[end..]) {
            Ok(n) if n > 0 => {
                starts.push(end);
                end += n;
            }
            _ => break,
        }
    }
    while let Some(start) = starts.pop() {
        if frame_decodes(&data[start..end]) {
            break;
        }
        end = start;
    }
    let dir = path.parent().expect("day dir");
    if end == 0 {
        fs::remove_file(path).map_err(io_err("remove", path))?;
        tracing::warn!(path = %path.display(), dropped = data.len(), "archive removed an empty crashed segment");
        return sync_dir(dir);
    }
    if end < data.len() {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        file.set_len(end as u64).map_err(io_err("truncate", path))?;
        file.sync_all().map_err(io_err("fsync", path))?;
        tracing::warn!(path = %path.display(), dropped = data.len() - end, "archive cut a torn frame");
    }
    seal_path(path)
}

fn frame_decodes(frame: &[u8]) -> bool {
    zstd::stream::read::Decoder::with_buffer(frame)
        .and_then(|mut d| io::copy(&mut d, &mut io::sink()))
        .is_ok()
}

/// The subdirectories of `dir` (not symlinks) whose name passes `keep`, with their names.
fn subdirs(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<(PathBuf, String)>, ArchiveError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let is_dir = entry.file_type().map_err(io_err("stat", &entry.path()))?.is_dir();
        if let Some(name) = entry.file_name().to_str().filter(|n| is_dir && keep(n)) {
            out.push((entry.path(), name.to_owned()));
        }
    }
    out.sort();
    Ok(out)
}

fn is_valid_table(name: &str) -> bool {
    (1..=MAX_TABLE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `YYYY-MM-DD` exactly, and a real date.
fn parse_day(day: &str) -> Option<NaiveDate> {
    let b = day.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    shape.then(|| NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()).flatten()
}

fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn create_dirs(dir: &Path) -> Result<(), ArchiveError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_err("create", dir))
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

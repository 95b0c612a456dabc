//! Records no sink could take, kept with the reason: `<state>/dead-letters/<YYYY-MM-DD>/<sink>.ndjson`,
//! one JSON object per line, appended and fsynced before the record counts as handled.
//!
//! `defender dead-letter list|replay` reads them back.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::delivery::Origin;

/// One dead letter as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was written (RFC 3339, UTC).
    pub at: String,
    /// The sink that gave it up (`forwarder` when no sink could even be chosen: a broken body).
    pub sink: String,
    /// The source it was read from.
    pub source: String,
    /// Partition (`hub/consumer-group/partition`) or blob.
    pub partition: String,
    /// Sequence number in the partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<i64>,
    /// Offset in the partition or blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// Its table, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Why it is here.
    pub reason: String,
    /// The record (or message body) as text, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The bytes, base64, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_base64: Option<String>,
}

impl DeadLetter {
    /// A new entry for `record`.
    pub fn new(
        sink: &str,
        origin: &Origin,
        table: Option<&str>,
        reason: impl Into<String>,
        record: &[u8],
    ) -> DeadLetter {
        let (text, b64) = match std::str::from_utf8(record) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(record))),
        };
        DeadLetter {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sink: sink.to_owned(),
            source: origin.source.to_string(),
            partition: origin.partition.to_string(),
            sequence_number: origin.sequence_number,
            offset: origin.offset.clone(),
            table: table.map(str::to_owned),
            reason: reason.into(),
            record: text,
            record_base64: b64,
        }
    }

    /// The record's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.record, &self.record_base64) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// The dead-letter store.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    dir: PathBuf,
    lock: Arc<Mutex<()>>,
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl DeadLetters {
    /// The store under `state_dir/dead-letters` (created, mode 0700).
    pub fn open(state_dir: &Path) -> io::Result<DeadLetters> {
        let dir = state_dir.join("dead-letters");
        create_private_dir(&dir)?;
        Ok(DeadLetters {
            dir,
            lock: Arc::default(),
            written: Arc::default(),
        })
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Dead letters written since start.
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends entries and fsyncs them.
    pub async fn put(&self, entries: Vec<DeadLetter>) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.put_blocking(&entries))
            .await
            .map_err(io::Error::other)?
    }

    /// [`put`](Self::put), retried until it succeeds: a record must not be lost because the
    /// disk was briefly full. Every failure is logged.
    pub async fn put_until_ok(&self, entries: Vec<DeadLetter>) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.put(entries.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, count = entries.len(), "cannot write dead letters; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn put_blocking(&self, entries: &[DeadLetter]) -> io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let day_dir = self.dir.join(day);
        let created = !day_dir.exists();
        create_private_dir(&day_dir)?;
        let mut by_sink: std::collections::BTreeMap<&str, Vec<u8>> = std::collections::BTreeMap::new();
        for e in entries {
            let buf = by_sink.entry(&e.sink).or_default();
            serde_json::to_writer(&mut *buf, e).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        for (sink, lines) in by_sink {
            let path = day_dir.join(format!("{}.ndjson", file_stem(sink)));
            let mut f = open_append(&path)?;
            f.write_all(&lines)?;
            f.sync_data()?;
        }
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        self.written
            .fetch_add(entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Every dead-letter file waiting for a replay, oldest day first.
    pub fn files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut days: Vec<PathBuf> = match fs::read_dir(&self.dir) {
            // Day directories only: `replaying/` and `replayed/` sit beside them.
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .and_then(crate::delivery::Day::of)
                            .is_some()
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
            Err(e) => return Err(e),
        };
        days.sort();
        for day in days {
            let mut in_day: Vec<PathBuf> = fs::read_dir(&day)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
                .collect();
            in_day.sort();
            files.extend(in_day);
        }
        Ok(files)
    }

    /// Reads the entries of one file; a line that cannot be read is reported with its number.
    pub fn read(path: &Path) -> io::Result<Vec<Result<DeadLetter, String>>> {
        let f = File::open(path)?;
        let mut out = Vec::new();
        for (i, line) in io::BufReader::new(f).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            out.push(serde_json::from_str(&line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)));
        }
        Ok(out)
    }
}

fn file_stem(sink: &str) -> String {
    sink.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// Creates a directory (and parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_round_trip_with_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::open(dir.path()).unwrap();
        let origin = Origin {
            source: "hub".into(),
            partition: "defender/$Default/0".into(),
            sequence_number: Some(42),
            offset: Some("4096".into()),
        };
        store
            .put(vec![
                DeadLetter::new("sekoia", &origin, Some("DeviceInfo"), "too big", br#"{"a":1}"#),
                DeadLetter::new("forwarder", &origin, None, "not UTF-8", &[0xff, 0xfe]),
            ])
            .await
            .unwrap();
        let files = store.files().unwrap();
        assert_eq!(files.len(), 2);
        let all: Vec<DeadLetter> = files
            .iter()
            .flat_map(|f| DeadLetters::read(f).unwrap())
            .map(Result::unwrap)
            .collect();
        let big = all.iter().find(|e| e.sink == "sekoia").unwrap();
        assert_eq!(big.bytes(), br#"{"a":1}"#);
        assert_eq!(big.sequence_number, Some(42));
        let bin = all.iter().find(|e| e.sink == "forwarder").unwrap();
        assert_eq!(bin.bytes(), vec![0xff, 0xfe]);
        assert_eq!(store.written(), 2);
    }
}

//! Loading Defender data from files into a hub, re-packed as the Streaming API packs it.

use std::fs;
use std::path::{Path, PathBuf};

use defender_schema::{parse_record, split_body};
use serde_json::value::RawValue;

use crate::EmulatorError;
use crate::store::{Hub, data_message};

/// `{"records":[` and `]}` around the records.
const ENVELOPE_OVERHEAD: usize = 14;
/// Messages handed to partitions at a time.
const FLUSH_EVERY: usize = 512;

/// What [`crate::Emulator::load_paths`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Files read.
    pub files: usize,
    /// Records loaded (each exactly as it was in its file).
    pub records: u64,
    /// Among them, records that are JSON but not Defender records (no `category`, `properties`
    /// not an object...): loaded anyway, as a real hub would carry them.
    pub invalid_records: u64,
    /// NDJSON lines that are not JSON at all: cannot be put in an envelope, skipped.
    pub skipped_lines: u64,
    /// Files that are neither one JSON value nor NDJSON (e.g. a body cut off halfway): skipped.
    pub skipped_files: usize,
    /// Messages (events) appended.
    pub messages: u64,
    /// Total size of the message bodies.
    pub bytes: u64,
}

pub(crate) fn load_paths(
    hub: &Hub,
    paths: &[PathBuf],
    records_per_message: usize,
    max_message_size: u64,
) -> Result<LoadStats, EmulatorError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    let mut packer = Packer {
        hub,
        per_message: records_per_message.max(1),
        max: usize::try_from(max_message_size).unwrap_or(usize::MAX),
        body: Vec::new(),
        in_body: 0,
        pending: hub.partitions.iter().map(|_| Vec::new()).collect(),
        pending_count: 0,
        stats: LoadStats::default(),
    };
    for file in &files {
        let bytes = fs::read(file).map_err(|e| EmulatorError::io(file, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| EmulatorError::Input {
            path: file.clone(),
            message: format!("not UTF-8: {e}"),
        })?;
        packer.stats.files += 1;
        read_text(file, text, &mut packer)?;
    }
    packer.finish()
}

/// Files named directly are read whatever their name; directories are walked for `*.json` and
/// `*.ndjson`, in name order.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), EmulatorError> {
    let meta = fs::metadata(path).map_err(|e| EmulatorError::io(path, e))?;
    if !meta.is_dir() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|e| EmulatorError::io(path, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| EmulatorError::io(path, e))?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect(&entry, out)?;
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("json") || e.eq_ignore_ascii_case("ndjson"))
        {
            out.push(entry);
        }
    }
    Ok(())
}

/// One file: a message body, an array of records, one record, or NDJSON (records or bodies).
fn read_text(path: &Path, text: &str, packer: &mut Packer<'_>) -> Result<(), EmulatorError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return Ok(());
    }
    if serde_json::from_str::<&RawValue>(trimmed).is_ok() {
        return read_value(path, trimmed, packer);
    }
    let first_line = trimmed.lines().next().unwrap_or_default().trim();
    if serde_json::from_str::<&RawValue>(first_line).is_err() {
        tracing::warn!(path = %path.display(), "skipping a file that is neither JSON nor NDJSON");
        packer.stats.skipped_files += 1;
        return Ok(());
    }
    for line in trimmed.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if serde_json::from_str::<&RawValue>(line).is_ok() {
            read_value(path, line, packer)?;
        } else {
            tracing::warn!(path = %path.display(), "skipping a line that is not JSON");
            packer.stats.skipped_lines += 1;
        }
    }
    Ok(())
}

/// One JSON value: an envelope, an array of records, or a record.
fn read_value(path: &Path, value: &str, packer: &mut Packer<'_>) -> Result<(), EmulatorError> {
    if value.starts_with('[') {
        let records: Vec<&RawValue> = serde_json::from_str(value).map_err(|e| EmulatorError::Input {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        for record in records {
            packer.push(path, record.get())?;
        }
        return Ok(());
    }
    if value.starts_with('{') {
        if let Ok(records) = split_body(value.as_bytes()) {
            for record in records {
                let raw = match record {
                    Ok(r) => r.raw(),
                    Err(bad) => bad.raw,
                };
                packer.push(path, raw)?;
            }
            return Ok(());
        }
        return packer.push(path, value);
    }
    Err(EmulatorError::Input {
        path: path.to_owned(),
        message: "expected a message body, a JSON array of records or records (one per line)".into(),
    })
}

struct Packer<'a> {
    hub: &'a Hub,
    per_message: usize,
    max: usize,
    /// The envelope being built, without its closing `]}`.
    body: Vec<u8>,
    in_body: usize,
    pending: Vec<Vec<fe2o3_amqp_types::messaging::Message<fe2o3_amqp_types::messaging::Body<serde_amqp::Value>>>>,
    pending_count: usize,
    stats: LoadStats,
}

impl Packer<'_> {
    fn push(&mut self, path: &Path, raw: &str) -> Result<(), EmulatorError> {
        let raw = raw.trim();
        if ENVELOPE_OVERHEAD + raw.len() > self.max {
            return Err(EmulatorError::TooLarge {
                what: format!("a record in {}", path.display()),
                size: (ENVELOPE_OVERHEAD + raw.len()) as u64,
                max: self.max as u64,
            });
        }
        if parse_record(raw).is_err() {
            self.stats.invalid_records += 1;
        }
        if self.in_body > 0 && (self.in_body == self.per_message || self.body.len() + 1 + raw.len() + 2 > self.max) {
            self.seal()?;
        }
        if self.in_body == 0 {
            self.body.extend_from_slice(br#"{"records":["#);
        } else {
            self.body.push(b',');
        }
        self.body.extend_from_slice(raw.as_bytes());
        self.in_body += 1;
        self.stats.records += 1;
        Ok(())
    }

    /// Closes the current envelope and queues it for the next partition.
    fn seal(&mut self) -> Result<(), EmulatorError> {
        if self.in_body == 0 {
            return Ok(());
        }
        self.body.extend_from_slice(b"]}");
        let body = std::mem::take(&mut self.body);
        self.in_body = 0;
        self.stats.messages += 1;
        self.stats.bytes += body.len() as u64;
        let index = self.hub.pick_partition(None);
        self.pending[index].push(data_message(body));
        self.pending_count += 1;
        if self.pending_count >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EmulatorError> {
        for (partition, messages) in self.hub.partitions.iter().zip(&mut self.pending) {
            partition.append(std::mem::take(messages))?;
        }
        self.pending_count = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<LoadStats, EmulatorError> {
        self.seal()?;
        self.flush()?;
        Ok(self.stats)
    }
}

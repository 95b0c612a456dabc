//! Sends dead letters again, each through the sink that gave it up (`defender dead-letter replay`).
//!
//! The files to replay are first moved to `dead-letters/replaying/`, so that what fails again
//! (and is dead-lettered anew by its sink) lands in fresh files; once every record is delivered or
//! dead-lettered again, they move on to `dead-letters/replayed/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::deadletter::{DeadLetters, Entry, create_private_dir};
use crate::delivery::{Ack, Completion, Day, Delivery, Origin, Record, TableId};
use crate::metrics::Metrics;
use crate::pipeline::{self, DEFAULT_IN_FLIGHT_MIB, ForwarderError};
use crate::source::FORWARDER;

/// What a replay did.
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    /// Records delivered, per sink.
    pub delivered: BTreeMap<String, u64>,
    /// Records their sink dead-lettered again (they are in the store anew).
    pub dead_lettered_again: u64,
    /// Entries left alone, with why (not a Defender record, a sink no longer configured, ...).
    pub skipped: Vec<(String, String)>,
    /// Files moved to `replayed/`.
    pub files: Vec<PathBuf>,
}

/// One dead-letter file and its entries (an entry that cannot be read says why).
pub type DeadLetterFile = (PathBuf, Vec<Result<Entry, String>>);

/// The dead letters waiting for a replay, oldest first.
pub fn pending(state_dir: &Path) -> std::io::Result<Vec<DeadLetterFile>> {
    let store = DeadLetters::open(state_dir)?;
    let mut out = Vec::new();
    for f in store.files()? {
        let entries = DeadLetters::read(&f)?;
        out.push((f, entries));
    }
    Ok(out)
}

/// Replays every pending dead letter of `sinks` (all when empty) through the configured sinks.
pub async fn replay(config: &Config, only_sinks: &[String]) -> Result<ReplayReport, ForwarderError> {
    let state_dir = PathBuf::from(&config.state_dir.0);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| ForwarderError::Io { what, path, source }
    };
    let store = DeadLetters::open(&state_dir).map_err(io("cannot open the dead-letter store", &state_dir))?;
    let replaying = store.dir().join("replaying");
    let replayed = store.dir().join("replayed");
    create_private_dir(&replaying).map_err(io("cannot create", &replaying))?;
    create_private_dir(&replayed).map_err(io("cannot create", &replayed))?;
    let mut report = ReplayReport::default();

    // Move the files out of the way first (name: <day>-<sink>.ndjson).
    let mut files = Vec::new();
    for f in store.files().map_err(io("cannot list", store.dir()))? {
        let sink = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        if !only_sinks.is_empty() && !only_sinks.contains(&sink) {
            continue;
        }
        let day = f
            .parent()
            .and_then(Path::file_name)
            .and_then(|d| d.to_str())
            .unwrap_or("unknown")
            .to_owned();
        let target = unique(&replaying, &format!("{day}-{sink}"));
        std::fs::rename(&f, &target).map_err(io("cannot move", &f))?;
        files.push(target);
    }
    // Earlier replays that were interrupted are picked up too.
    for e in std::fs::read_dir(&replaying).map_err(io("cannot list", &replaying))? {
        let p = e.map_err(io("cannot list", &replaying))?.path();
        if !files.contains(&p) && p.extension().is_some_and(|x| x == "ndjson") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Ok(report);
    }

    let metrics = Arc::new(Metrics::default());
    let in_flight = usize::try_from(DEFAULT_IN_FLIGHT_MIB).unwrap_or(8) * 1024 * 1024;
    let sinks = pipeline::start_sinks(config, &store, &metrics, in_flight)?;
    let before = store.written();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    let mut tickets = 0u64;
    for file in &files {
        let entries = DeadLetters::read(file).map_err(io("cannot read", file))?;
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(why) => {
                    report.skipped.push((file.display().to_string(), why));
                    continue;
                }
            };
            let Some(port) = sinks.ports.iter().find(|p| *p.name == entry.sink) else {
                let why = if entry.sink == FORWARDER {
                    "not a Defender record: no sink can take it as it is".to_owned()
                } else {
                    format!("sink `{}` is not in the configuration", entry.sink)
                };
                report.skipped.push((describe(&entry), why));
                continue;
            };
            let raw = Bytes::from(entry.bytes());
            let text = std::str::from_utf8(&raw).unwrap_or_default();
            let (table, day) = match defender_schema::parse_record(text) {
                Ok(r) => (
                    r.table()
                        .map_or_else(|| TableId::Other(Arc::from(r.table_name())), TableId::Known),
                    r.time().and_then(Day::of),
                ),
                Err(e) => {
                    report
                        .skipped
                        .push((describe(&entry), format!("not a Defender record: {e}")));
                    continue;
                }
            };
            let origin = Arc::new(Origin {
                source: Arc::from(entry.source.as_str()),
                partition: Arc::from(entry.partition.as_str()),
                sequence_number: entry.sequence_number,
                offset: entry.offset.clone(),
            });
            let ack = Ack::ticket(0, tickets, done_tx.clone(), None);
            tickets += 1;
            let delivery = Delivery {
                records: vec![Record {
                    table,
                    raw,
                    day,
                    origin,
                }],
                ack,
                read_at: Instant::now(),
            };
            if port.tx.send(delivery).await.is_err() {
                return Err(ForwarderError::Sink {
                    sink: port.name.to_string(),
                    message: "stopped during the replay".to_owned(),
                });
            }
        }
    }
    drop(done_tx);
    let pipeline::Sinks { ports, tasks } = sinks;
    drop(ports);
    let mut failed = 0u64;
    while let Some(c) = done_rx.recv().await {
        if !c.ok {
            failed += 1;
        }
    }
    for (_, t) in tasks {
        let _ = t.await;
    }
    if failed > 0 {
        return Err(ForwarderError::Sink {
            sink: "replay".to_owned(),
            message: format!(
                "{failed} records were not delivered; their files stay in {} for the next replay",
                replaying.display()
            ),
        });
    }
    for s in &config.sinks {
        let n = metrics.counter("defender_records_out_total", &[("sink", s.name())]);
        if n > 0 {
            report.delivered.insert(s.name().to_owned(), n);
        }
    }
    report.dead_lettered_again = store.written() - before;
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("replayed.ndjson")
            .to_owned();
        let stem = name.trim_end_matches(".ndjson");
        let target = unique(&replayed, stem);
        std::fs::rename(&f, &target).map_err(io("cannot move", &f))?;
        report.files.push(target);
    }
    Ok(report)
}

fn describe(e: &Entry) -> String {
    match e.sequence_number {
        Some(seq) => format!("{} {} seq {seq}", e.sink, e.partition),
        None => format!(
            "{} {} offset {}",
            e.sink,
            e.partition,
            e.offset.as_deref().unwrap_or("?")
        ),
    }
}

fn unique(dir: &Path, stem: &str) -> PathBuf {
    let mut p = dir.join(format!("{stem}.ndjson"));
    let mut n = 1;
    while p.exists() {
        p = dir.join(format!("{stem}.{n}.ndjson"));
        n += 1;
    }
    p
}

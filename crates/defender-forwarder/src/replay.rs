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

use crate::config::{Config, Tuning};
use crate::deadletter::{DeadLetter, DeadLetters, create_private_dir};
use crate::delivery::{Ack, Completion, Day, Delivery, Origin, SinkRecord, TableId};
use crate::metrics::Metrics;
use crate::metrics::families::RECORDS_OUT;
use crate::pipeline::{self, ForwarderError};
use crate::router::{FORWARDER, SinkPort};

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
pub type DeadLetterFile = (PathBuf, Vec<Result<DeadLetter, String>>);

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
    let state_dir = &config.state_dir;
    let store = DeadLetters::open(state_dir).map_err(io("cannot open the dead-letter store", state_dir))?;
    let replaying = store.dir().join("replaying");
    let replayed = store.dir().join("replayed");
    create_private_dir(&replaying).map_err(io("cannot create", &replaying))?;
    create_private_dir(&replayed).map_err(io("cannot create", &replayed))?;
    let mut report = ReplayReport::default();
    let files = set_aside(&store, &replaying, only_sinks)?;
    if files.is_empty() {
        return Ok(report);
    }
    let metrics = Arc::new(Metrics::default());
    let in_flight = usize::try_from(Tuning::default_max_in_flight_mib()).unwrap_or(8) * 1024 * 1024;
    let sinks = pipeline::start_sinks(config, &store, &metrics, in_flight, "replay").await?;
    let before = store.written();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    send(&files, &sinks, &done_tx, &mut report).await?;
    drop(done_tx);
    let finishing = tokio::spawn(sinks.finish());
    let mut failed = 0u64;
    while let Some(c) = done_rx.recv().await {
        failed += u64::from(!c.ok);
    }
    let _ = finishing.await;
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
        let n = metrics.counter(&RECORDS_OUT, &[("sink", s.name())]);
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
        let target = unique(&replayed, name.trim_end_matches(".ndjson"));
        std::fs::rename(&f, &target).map_err(io("cannot move", &f))?;
        report.files.push(target);
    }
    Ok(report)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ForwarderError {
    let path = path.to_owned();
    move |source| ForwarderError::Io { what, path, source }
}

/// Moves the files to replay into `replaying/` (name: `<day>-<sink>.ndjson`), and picks up those an
/// interrupted replay left there.
fn set_aside(store: &DeadLetters, replaying: &Path, only_sinks: &[String]) -> Result<Vec<PathBuf>, ForwarderError> {
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
        let target = unique(replaying, &format!("{day}-{sink}"));
        std::fs::rename(&f, &target).map_err(io("cannot move", &f))?;
        files.push(target);
    }
    for e in std::fs::read_dir(replaying).map_err(io("cannot list", replaying))? {
        let p = e.map_err(io("cannot list", replaying))?.path();
        if !files.contains(&p) && p.extension().is_some_and(|x| x == "ndjson") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Hands every entry of `files` to the sink that gave it up, one ticket each.
async fn send(
    files: &[PathBuf],
    sinks: &pipeline::Sinks,
    done: &mpsc::UnboundedSender<Completion>,
    report: &mut ReplayReport,
) -> Result<(), ForwarderError> {
    let mut tickets = 0u64;
    for file in files {
        for entry in DeadLetters::read(file).map_err(io("cannot read", file))? {
            let delivery = match entry
                .map_err(|why| (file.display().to_string(), why))
                .and_then(|e| to_delivery(&e, sinks))
            {
                Ok((port, records)) => {
                    tickets += 1;
                    (
                        port,
                        Delivery {
                            records,
                            ack: Ack::ticket(0, tickets, done.clone(), None),
                            read_at: Instant::now(),
                        },
                    )
                }
                Err(skipped) => {
                    report.skipped.push(skipped);
                    continue;
                }
            };
            let (port, delivery) = delivery;
            if port.tx.send(delivery).await.is_err() {
                return Err(ForwarderError::Sink {
                    sink: port.name.to_string(),
                    message: "stopped during the replay".to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// The sink an entry goes back to, and its record; or why it is skipped.
fn to_delivery<'s>(
    entry: &DeadLetter,
    sinks: &'s pipeline::Sinks,
) -> Result<(&'s SinkPort, Vec<SinkRecord>), (String, String)> {
    let Some(port) = sinks.ports.iter().find(|p| *p.name == entry.sink) else {
        let why = if entry.sink == FORWARDER {
            "not a Defender record: no sink can take it as it is".to_owned()
        } else {
            format!("sink `{}` is not in the configuration", entry.sink)
        };
        return Err((describe(entry), why));
    };
    let raw = Bytes::from(entry.bytes());
    let text = std::str::from_utf8(&raw).unwrap_or_default();
    let (table, day) = match defender_schema::parse_record(text) {
        Ok(r) => (
            r.table()
                .map_or_else(|| TableId::Other(Arc::from(r.table_name())), TableId::Known),
            r.time().and_then(Day::of),
        ),
        Err(e) => return Err((describe(entry), format!("not a Defender record: {e}"))),
    };
    let origin = Arc::new(Origin {
        source: Arc::from(entry.source.as_str()),
        partition: Arc::from(entry.partition.as_str()),
        sequence_number: entry.sequence_number,
        offset: entry.offset.clone(),
    });
    Ok((
        port,
        vec![SinkRecord {
            table,
            raw,
            day,
            origin,
        }],
    ))
}

fn describe(e: &DeadLetter) -> String {
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

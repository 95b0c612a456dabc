//! `defender tail`: print the records arriving on an Event Hub, as NDJSON, without checkpointing.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use defender_eventhub::{Batch, Connection, Reader, ReaderConfig, ReaderError, Secret, StartFrom};
use defender_schema::{Table, split_body};
use tokio::sync::mpsc;

use super::send::readable;

/// `defender tail` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Event Hubs connection string (`Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...`).
    /// Read from `DEFENDER_EVENTHUB_CONNECTION_STRING` when not given (keeps it out of `ps`).
    #[arg(long, value_name = "CS", env = "DEFENDER_EVENTHUB_CONNECTION_STRING", hide_env_values = true, value_parser = super::parse_secret)]
    pub connection_string: Secret,
    /// The event hub, unless the connection string names it (`EntityPath`); both must agree.
    #[arg(long, value_name = "NAME")]
    pub hub: Option<String>,
    /// The consumer group to read with (nothing is checkpointed in it).
    #[arg(long, default_value = "$Default", value_name = "GROUP")]
    pub consumer_group: String,
    /// Only records of this table (any case; repeatable; `defender tables` lists them).
    #[arg(long = "table", value_name = "TABLE", value_parser = parse_table)]
    pub tables: Vec<Table>,
    /// Where to start: `earliest`, `latest` (what arrives from now on) or an RFC 3339 time.
    #[arg(long, default_value = "latest", value_name = "WHERE", value_parser = parse_from)]
    pub from: StartFrom,
    /// Exit after printing this many records.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Seconds to wait for the hub to answer when connecting.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

fn parse_table(s: &str) -> Result<Table, String> {
    s.parse::<Table>().map_err(|e| e.to_string())
}

fn parse_from(s: &str) -> Result<StartFrom, String> {
    match s.to_ascii_lowercase().as_str() {
        "earliest" => Ok(StartFrom::Earliest),
        "latest" => Ok(StartFrom::Latest),
        _ => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| StartFrom::EnqueuedTime(SystemTime::from(t.with_timezone(&chrono::Utc))))
            .map_err(|e| format!("expected `earliest`, `latest` or an RFC 3339 time (2024-05-14T09:00:00Z): {e}")),
    }
}

/// Runs the command until `--count` records are printed, or Ctrl-C.
pub fn run(args: &Args) -> Result<bool> {
    let connection = Connection::ConnectionString(args.connection_string.clone());
    // Bad connection strings and hub names fail here, before any runtime or network.
    let target = connection.target(args.hub.as_deref())?;
    let mut config = ReaderConfig::new(connection);
    config.hub.clone_from(&args.hub);
    config.consumer_group.clone_from(&args.consumer_group);
    config.start = args.from;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let host = target
        .custom_endpoint
        .as_deref()
        .and_then(|e| e.strip_prefix("amqp://"))
        .unwrap_or(&target.namespace)
        .to_owned();
    let where_ = format!("Event Hub `{}` at {host}", target.hub);
    runtime.block_on(async {
        let (tx, mut rx) = mpsc::channel::<Batch>(16);
        let timeout = Duration::from_secs(args.timeout);
        // Listening for Ctrl-C from the start, so that it also ends a slow connect.
        let stop = stop_signal().context("cannot listen for Ctrl-C")?;
        tokio::pin!(stop);
        let started = tokio::select! {
            () = &mut stop => return Ok(()),
            started = tokio::time::timeout(timeout, Reader::start(config, None, tx)) => started,
        };
        let reader = match started {
            Ok(Ok(reader)) => reader,
            Ok(Err(ReaderError::Open { source, .. })) => {
                return Err(readable(
                    &anyhow::Error::new(source).context(format!("cannot connect to {where_}")),
                ));
            }
            Ok(Err(e)) => {
                return Err(readable(
                    &anyhow::Error::new(e).context(format!("cannot read from {where_}")),
                ));
            }
            Err(_) => {
                return Err(anyhow!(
                    "cannot connect to {where_}: no answer within {} s",
                    timeout.as_secs()
                ));
            }
        };
        let mut out = Printer {
            out: io::BufWriter::new(io::stdout().lock()),
            tables: args.tables.clone(),
            left: args.count,
        };
        let result = loop {
            if out.left == Some(0) {
                break Ok(());
            }
            tokio::select! {
                () = &mut stop => break Ok(()),
                batch = rx.recv() => match batch {
                    Some(batch) => match out.batch(&batch) {
                        Ok(()) => {}
                        // `defender tail | head`: the reader went away, which is fine.
                        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break Ok(()),
                        Err(e) => break Err(anyhow::Error::new(e).context("cannot write to stdout")),
                    },
                    None => break Err(anyhow!("the reader of {where_} stopped")),
                },
            }
        };
        drop(out);
        reader.shutdown().await;
        result
    })?;
    Ok(true)
}

struct Printer<W: Write> {
    out: W,
    tables: Vec<Table>,
    left: Option<u64>,
}

impl<W: Write> Printer<W> {
    /// Prints the records of a batch that pass the filter, up to the count, then flushes.
    fn batch(&mut self, batch: &Batch) -> io::Result<()> {
        for event in &batch.messages {
            let at = format!(
                "partition {} event {}",
                batch.partition.partition_id, event.sequence_number
            );
            let Some(body) = event.body.as_deref() else {
                eprintln!("warning: {at} has no data section; skipped");
                continue;
            };
            let records = match split_body(body) {
                Ok(records) => records,
                Err(e) => {
                    eprintln!("warning: {at}: {e}; skipped");
                    continue;
                }
            };
            for (i, r) in records.into_iter().enumerate() {
                if self.left == Some(0) {
                    break;
                }
                let raw = match r {
                    Ok(r) if self.tables.is_empty() || r.table().is_some_and(|t| self.tables.contains(&t)) => r.raw(),
                    Ok(_) => continue,
                    Err(bad) => {
                        eprintln!("warning: {at} record {i}: {}", bad.error);
                        if !self.tables.is_empty() {
                            continue;
                        }
                        bad.raw
                    }
                };
                write_line(&mut self.out, raw)?;
                if let Some(left) = &mut self.left {
                    *left -= 1;
                }
            }
            if self.left == Some(0) {
                break;
            }
        }
        self.out.flush()
    }
}

/// Writes a record on one line: its exact bytes, unless it spans lines (pretty-printed JSON),
/// then without the whitespace between tokens (JSON strings cannot hold raw line breaks, so
/// nothing inside a value changes).
fn write_line(out: &mut impl Write, raw: &str) -> io::Result<()> {
    if raw.contains(['\n', '\r']) {
        out.write_all(compact(raw).as_bytes())?;
    } else {
        out.write_all(raw.as_bytes())?;
    }
    out.write_all(b"\n")
}

/// Drops the whitespace outside strings.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// Ctrl-C (or SIGTERM), listened for from the moment this is called.
#[cfg(unix)]
fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Ctrl-C.
#[cfg(not(unix))]
fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_only_between_tokens() {
        let pretty = "{\n  \"a\": \"x y\\\" \\\\\",\n  \"b\": [1, 2]\n}";
        assert_eq!(compact(pretty), r#"{"a":"x y\" \\","b":[1,2]}"#);
        let v: serde_json::Value = serde_json::from_str(pretty).unwrap();
        assert_eq!(v, serde_json::from_str::<serde_json::Value>(&compact(pretty)).unwrap());
        let mut out = Vec::new();
        write_line(&mut out, r#"{"a": 1}"#).unwrap();
        assert_eq!(out, b"{\"a\": 1}\n");
    }

    #[test]
    fn parses_where_to_start() {
        assert_eq!(parse_from("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(parse_from("LATEST"), Ok(StartFrom::Latest));
        assert!(matches!(
            parse_from("2024-05-14T09:00:00Z"),
            Ok(StartFrom::EnqueuedTime(_))
        ));
        assert!(parse_from("yesterday").unwrap_err().contains("RFC 3339"));
    }
}

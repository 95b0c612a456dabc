//! `defender send`: send the records of files to an Event Hub the way Defender does: envelopes
//! `{"records":[...]}` of up to N records, each body under the hub's message size, packed into
//! batches with the official producer client.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use azure_messaging_eventhubs::{EventDataBatchOptions, ProducerClient, RetryOptions, SendEventOptions};
use defender_eventhub::{Connection, Secret, Target};
use defender_schema::{BodyError, parse_record, split_body};
use indicatif::ProgressBar;
use tokio::sync::mpsc;

use crate::input::{self, Position, Source, Unit};
use crate::progress;

/// The largest message body built. A Standard or Premium hub takes messages of 1 MiB; this
/// leaves room for the AMQP framing and the batch around it.
pub const MAX_BODY_BYTES: usize = 1_000_000;
/// `{"records":[` and `]}`.
const ENVELOPE_OVERHEAD: usize = 14;
/// Skipped inputs listed one by one (all are counted).
const SKIP_SHOWN: u64 = 20;
/// Bodies waiting for the sender.
const QUEUE: usize = 64;

/// `defender send` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Event Hubs connection string (`Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...`).
    /// Read from `DEFENDER_EVENTHUB_CONNECTION_STRING` when not given (keeps it out of `ps`).
    #[arg(long, value_name = "CS", env = "DEFENDER_EVENTHUB_CONNECTION_STRING", hide_env_values = true, value_parser = super::parse_secret)]
    pub connection_string: Secret,
    /// The event hub, unless the connection string names it (`EntityPath`); both must agree.
    #[arg(long, value_name = "NAME")]
    pub hub: Option<String>,
    /// Send every message to this partition (default: the service spreads them).
    #[arg(long, value_name = "ID")]
    pub partition: Option<String>,
    /// Records per message (Defender sends about 100).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub records_per_message: u32,
    /// Seconds to wait for the hub to answer when connecting.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Files, folders, or `-` for stdin: message bodies, records, NDJSON or JSON arrays.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// What went out.
#[derive(Debug, Default)]
struct Sent {
    records: AtomicU64,
    messages: AtomicU64,
}

/// A sealed message body and how many records it holds.
struct Body {
    bytes: Vec<u8>,
    records: u64,
}

/// Packs records, in order, into Defender-style envelopes.
struct Packer {
    per_message: usize,
    max: usize,
    /// The envelope being built, without its closing `]}`.
    body: Vec<u8>,
    in_body: usize,
}

impl Packer {
    fn new(per_message: usize, max: usize) -> Self {
        Self {
            per_message: per_message.max(1),
            max,
            body: Vec::new(),
            in_body: 0,
        }
    }

    /// Adds a record; returns the body it closed, if adding it needed a new one. A record that
    /// does not fit in a message on its own is an error (with its size).
    fn push(&mut self, raw: &str) -> Result<Option<Body>, usize> {
        let size = ENVELOPE_OVERHEAD + raw.len();
        if size > self.max {
            return Err(size);
        }
        let sealed = if self.in_body > 0
            && (self.in_body == self.per_message || self.body.len() + 1 + raw.len() + 2 > self.max)
        {
            self.seal()
        } else {
            None
        };
        if self.in_body == 0 {
            self.body.extend_from_slice(br#"{"records":["#);
        } else {
            self.body.push(b',');
        }
        self.body.extend_from_slice(raw.as_bytes());
        self.in_body += 1;
        Ok(sealed)
    }

    /// Closes the current envelope.
    fn seal(&mut self) -> Option<Body> {
        if self.in_body == 0 {
            return None;
        }
        self.body.extend_from_slice(b"]}");
        let records = self.in_body as u64;
        self.in_body = 0;
        Some(Body {
            bytes: std::mem::take(&mut self.body),
            records,
        })
    }
}

/// Runs the command.
pub fn run(args: &Args) -> Result<bool> {
    input::require_some(&args.paths)?;
    let connection = Connection::ConnectionString(args.connection_string.clone());
    let target = connection.target(args.hub.as_deref())?;
    // Read errors (a missing file) before connecting to anything.
    let sources = input::expand(&args.paths)?;
    let timeout = Duration::from_secs(args.timeout);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let producer = runtime.block_on(connect(&connection, &target, args.partition.as_deref(), timeout))?;

    let total: u64 = sources.iter().map(input::size).sum();
    let bar = progress::bytes(total, "sending");
    let sent = Arc::new(Sent::default());
    let (tx, rx) = mpsc::channel::<Body>(QUEUE);
    let sender = runtime.spawn(send_loop(
        producer,
        args.partition.clone(),
        rx,
        sent.clone(),
        bar.clone(),
    ));

    let started = Instant::now();
    let mut reading = Reading {
        packer: Packer::new(args.records_per_message as usize, MAX_BODY_BYTES),
        tx,
        bar: bar.clone(),
        skipped: 0,
    };
    let read_result = reading.all(&sources);
    let skipped = reading.skipped;
    let Reading { tx, .. } = reading;
    drop(tx);
    // The sender sends what was queued (also after a read error), then closes.
    let send_result = runtime.block_on(sender).context("the sender task failed")?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let records = sent.records.load(Ordering::Relaxed);
    let messages = sent.messages.load(Ordering::Relaxed);
    send_result
        .with_context(|| format!("cannot send to `{}` ({records} records sent before)", target.hub))
        .map_err(|e| readable(&e))?;
    if let Err(e) = read_result {
        // A read that failed because the sender stopped reports the sender's error above.
        return Err(e.context(format!("stopped after sending {records} records")));
    }
    if skipped > 0 {
        eprintln!("skipped {skipped} inputs that are not Defender records (listed above)");
    }
    #[allow(clippy::cast_precision_loss)] // a rate to print
    let rate = records as f64 / elapsed.as_secs_f64().max(1e-3);
    println!(
        "sent {records} records in {messages} messages to {} ({rate:.0} records/s)",
        target.hub
    );
    Ok(true)
}

/// Opens the producer and its sender link, within `timeout`.
async fn connect(
    connection: &Connection,
    target: &Target,
    partition: Option<&str>,
    timeout: Duration,
) -> Result<ProducerClient> {
    let where_ = describe(target);
    // The client retries for a minute by default; bounded by the timeout, an unreachable hub
    // fails with the client's own error (refused, unknown host) rather than only "timed out".
    let retry = RetryOptions {
        max_total_elapsed: azure_core::time::Duration::try_from(timeout)
            .unwrap_or(RetryOptions::default().max_total_elapsed),
        ..RetryOptions::default()
    };
    let open = async {
        let producer = connection
            .open_producer(target, Some(retry))
            .await
            .with_context(|| format!("cannot connect to {where_}"))?;
        let props = producer
            .get_eventhub_properties()
            .await
            .with_context(|| format!("cannot read the properties of {where_}"))?;
        if let Some(p) = partition
            && !props.partition_ids.iter().any(|id| id == p)
        {
            bail!(
                "{where_} has no partition `{p}` (its partitions: {})",
                props.partition_ids.join(", ")
            );
        }
        // Attaches the sender link now, so that a refusal shows here.
        let batch = producer
            .create_batch(Some(batch_options(partition)))
            .await
            .with_context(|| format!("cannot open a sender on {where_}"))?;
        drop(batch);
        Ok(producer)
    };
    match tokio::time::timeout(timeout, open).await {
        Ok(result) => result.map_err(|e| readable(&e)),
        Err(_) => Err(anyhow!(
            "cannot connect to {where_}: no answer within {} s",
            timeout.as_secs()
        )),
    }
}

/// `Event Hub `hub` at host[:port]`, for messages (never the connection string).
fn describe(target: &Target) -> String {
    let host = target
        .custom_endpoint
        .as_deref()
        .and_then(|e| e.strip_prefix("amqp://"))
        .unwrap_or(&target.namespace);
    format!("Event Hub `{}` at {host}", target.hub)
}

fn batch_options(partition: Option<&str>) -> EventDataBatchOptions {
    EventDataBatchOptions {
        partition_id: partition.map(str::to_owned),
        ..EventDataBatchOptions::default()
    }
}

/// Reading the inputs and packing their records.
struct Reading {
    packer: Packer,
    tx: mpsc::Sender<Body>,
    bar: ProgressBar,
    skipped: u64,
}

impl Reading {
    fn all(&mut self, sources: &[Source]) -> Result<()> {
        for source in sources {
            let data = input::read(source)?;
            let start = self.bar.position();
            let on_disk = input::size(source);
            match std::str::from_utf8(&data) {
                Ok(text) => {
                    for (pos, unit) in input::units(text) {
                        self.unit(source, pos, &unit)?;
                        // Progress through the file, in its size on disk.
                        if let Unit::Body(json) | Unit::Record(json) = unit {
                            let end = (json.as_ptr() as usize).saturating_sub(text.as_ptr() as usize) + json.len();
                            let done = u128::from(on_disk) * end as u128 / text.len().max(1) as u128;
                            self.bar.set_position(start + u64::try_from(done).unwrap_or(on_disk));
                        }
                    }
                }
                Err(e) => self.skip(
                    source,
                    "",
                    &format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
                ),
            }
            self.bar.set_position(start + on_disk);
        }
        if let Some(body) = self.packer.seal() {
            self.queue(body)?;
        }
        Ok(())
    }

    fn unit(&mut self, source: &Source, pos: Position, unit: &Unit<'_>) -> Result<()> {
        let at = pos.to_string();
        match unit {
            Unit::Broken(reason) => self.skip(source, &at, reason),
            Unit::Record(json) => match parse_record(json) {
                Ok(r) => self.record(source, &at, r.raw())?,
                Err(e) => self.skip(source, &at, &e.to_string()),
            },
            Unit::Body(json) => match split_body(json.as_bytes()) {
                Ok(records) => {
                    for (i, r) in records.into_iter().enumerate() {
                        match r {
                            Ok(r) => self.record(source, &format!("{at} record {i}"), r.raw())?,
                            Err(bad) => self.skip(source, &format!("{at} record {i}"), &bad.error.to_string()),
                        }
                    }
                }
                Err(e) => {
                    let reason = match e {
                        BodyError::Json(e) => format!("message body is not valid JSON: {e}"),
                        other => other.to_string(),
                    };
                    self.skip(source, &at, &reason);
                }
            },
        }
        Ok(())
    }

    fn record(&mut self, source: &Source, at: &str, raw: &str) -> Result<()> {
        match self.packer.push(raw.trim()) {
            Ok(None) => Ok(()),
            Ok(Some(body)) => self.queue(body),
            Err(size) => bail!(
                "{}: the record is {size} bytes in its envelope, more than fits in one message ({MAX_BODY_BYTES} bytes)",
                located(source, at)
            ),
        }
    }

    fn queue(&mut self, body: Body) -> Result<()> {
        // The sender stopped: its error is what to report.
        self.tx.blocking_send(body).map_err(|_| anyhow!("the sender stopped"))
    }

    fn skip(&mut self, source: &Source, at: &str, reason: &str) {
        self.skipped += 1;
        if self.skipped <= SKIP_SHOWN {
            let line = format!("skipping {}: {reason}", located(source, at));
            self.bar.suspend(|| eprintln!("{line}"));
        } else if self.skipped == SKIP_SHOWN + 1 {
            self.bar
                .suspend(|| eprintln!("(more skipped inputs are counted, not listed)"));
        }
    }
}

/// `file:line`, `file[3] record 2`, `file`.
fn located(source: &Source, at: &str) -> String {
    let sep = if at.is_empty() || at.starts_with([':', '[']) {
        ""
    } else {
        " "
    };
    format!("{source}{sep}{}", at.trim())
}

/// Packs bodies into batches and sends them, in order, one batch at a time.
async fn send_loop(
    producer: ProducerClient,
    partition: Option<String>,
    mut rx: mpsc::Receiver<Body>,
    sent: Arc<Sent>,
    bar: ProgressBar,
) -> Result<()> {
    let count = |records: u64, messages: u64| {
        let r = sent.records.fetch_add(records, Ordering::Relaxed) + records;
        let m = sent.messages.fetch_add(messages, Ordering::Relaxed) + messages;
        bar.set_message(format!("sent {r} records in {m} messages"));
    };
    let result = async {
        let mut pending: Option<Body> = None;
        loop {
            let first = match pending.take() {
                Some(body) => body,
                None => match rx.recv().await {
                    Some(body) => body,
                    None => break,
                },
            };
            let batch = producer
                .create_batch(Some(batch_options(partition.as_deref())))
                .await
                .context("cannot create a batch")?;
            if !batch
                .try_add_event_data(first.bytes.clone(), None)
                .context("cannot add a message to a batch")?
            {
                // The client counts the first message of a batch twice against the link's
                // maximum size (azure_messaging_eventhubs 0.16), so a batch refuses a body over
                // about half of it even when empty: such a body goes on its own.
                drop(batch);
                let options = SendEventOptions {
                    partition_id: partition.clone(),
                };
                producer
                    .send_event(first.bytes, Some(options))
                    .await
                    .context("the hub refused a message")?;
                count(first.records, 1);
                continue;
            }
            let mut records = first.records;
            // Fill the batch with what is already queued, without waiting for more.
            while let Ok(body) = rx.try_recv() {
                if batch
                    .try_add_event_data(body.bytes.clone(), None)
                    .context("cannot add a message to a batch")?
                {
                    records += body.records;
                } else {
                    pending = Some(body);
                    break;
                }
            }
            let messages = batch.len() as u64;
            producer
                .send_batch(batch, None)
                .await
                .context("the hub refused a batch")?;
            count(records, messages);
        }
        anyhow::Ok(())
    }
    .await;
    let _ = producer.close().await;
    result
}

/// Labels the Event Hubs client's errors put before their causes, saying nothing themselves.
const EMPTY_LABELS: &[&str] = &["AMQP Error", "Azure Core Error"];

/// One readable line from an error chain whose layers repeat their causes: each layer keeps
/// only what it adds (the Event Hubs client's errors print `AMQP Error: AMQP Error: Azure Core
/// Error: Connection refused: ...: Connection refused`; this gives `...: Connection refused`).
pub(crate) fn readable(e: &anyhow::Error) -> anyhow::Error {
    let messages: Vec<String> = e.chain().map(ToString::to_string).collect();
    let mut parts: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let mut own = message.as_str();
        if let Some(next) = messages.get(i + 1) {
            own = own
                .strip_suffix(next.as_str())
                .map_or(own, |p| p.trim_end().trim_end_matches(':'));
        }
        loop {
            let before = own;
            for label in EMPTY_LABELS {
                if let Some(rest) = own.strip_prefix(label) {
                    own = rest.trim_start_matches(':').trim_start();
                }
            }
            if own == before {
                break;
            }
        }
        let own = own.trim();
        if !own.is_empty() && !parts.last().is_some_and(|last| last.contains(own)) {
            parts.push(own.to_owned());
        }
    }
    anyhow!(parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(records: &[&str], per: usize, max: usize) -> Vec<String> {
        let mut p = Packer::new(per, max);
        let mut out = Vec::new();
        for r in records {
            if let Some(b) = p.push(r).unwrap() {
                out.push(String::from_utf8(b.bytes).unwrap());
            }
        }
        out.extend(p.seal().map(|b| String::from_utf8(b.bytes).unwrap()));
        out
    }

    #[test]
    fn packs_by_count_and_size() {
        assert_eq!(
            bodies(&["{}", "{}", "{}"], 2, 1000),
            [r#"{"records":[{},{}]}"#, r#"{"records":[{}]}"#]
        );
        // 14 + 2 = 16 per single-record body; a second record would make it 19.
        assert_eq!(
            bodies(&["{}", "{}"], 100, 18),
            [r#"{"records":[{}]}"#, r#"{"records":[{}]}"#]
        );
        assert_eq!(bodies(&["{}", "{}"], 100, 19), [r#"{"records":[{},{}]}"#]);
        assert!(bodies(&[], 3, 100).is_empty());
        for b in bodies(&["{}"; 7], 3, 1000) {
            assert!(b.len() <= 1000);
        }
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let e = anyhow!("Connection refused (os error 111)")
            .context("Azure Core Error: Connection refused (os error 111)")
            .context("AMQP Error: AMQP Error: Azure Core Error: Connection refused (os error 111)")
            .context("cannot open Event Hub `x`")
            .context("cannot connect to Event Hub `x` at 127.0.0.1:1");
        assert_eq!(
            readable(&e).to_string(),
            "cannot connect to Event Hub `x` at 127.0.0.1:1: cannot open Event Hub `x`: Connection refused (os error 111)"
        );
        let e = anyhow!("link detached").context("the hub refused a batch");
        assert_eq!(readable(&e).to_string(), "the hub refused a batch: link detached");
    }

    #[test]
    fn a_record_too_large_is_refused() {
        let mut p = Packer::new(10, 20);
        assert_eq!(p.push(&"x".repeat(7)).err(), Some(21));
        assert!(p.push(&"x".repeat(6)).is_ok());
    }
}

//! Sinks: where records go. A kind is one module holding its config struct (serde, defaults
//! beside the fields), its [`SinkConfig`] impl that builds a running [`Sink`], and its docs; the
//! pipeline knows the kinds only through [`KINDS`].
//!
//! # The contract every sink keeps
//!
//! A sink runs as one task fed by a bounded channel of [`Delivery`]s (the router waits while it
//! is full: backpressure). It must:
//!
//! 1. **Acknowledge every delivery** ([`Ack::ack`](crate::delivery::Ack::ack)) once each of its
//!    records is delivered, or written to the dead-letter store with a reason. A delivery dropped
//!    without its ack fails its ticket, and the checkpoint of that partition stays before it
//!    until a restart reads it again: that is the only way to give up, and only for good.
//! 2. **Send or flush what it holds within [`IDLE`] of the last delivery**, whatever its batch
//!    size: the in-flight budget keeps further records out until this sink's acks free it, so a
//!    sink waiting for a full batch would wait forever.
//! 3. **On shutdown** (the channel closes once every router is gone) deliver what it holds,
//!    retrying for as long as it takes (the pipeline's `shutdown_timeout` bounds the wait), then
//!    return.
//!
//! `tests/it/sink_contract.rs` runs every kind through these rules.

mod escape;
pub mod files;
pub mod null;
pub mod sekoia;
pub mod stdout;
pub mod tables;

use std::any::Any;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::{Invalid, Kind};
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::delivery::{Delivery, SinkRecord};
use crate::metrics::Metrics;
use crate::metrics::families::{BATCHES_OUT, BYTES_OUT, DEAD_LETTERS, DELIVERY_SECONDS, RECORDS_OUT};
use crate::table_filter::TablesConfig;

/// Every sink kind: `kind = "..."` in a `[[sinks]]` entry. Adding a kind is adding its module
/// and one line here.
pub static KINDS: &[Kind<dyn SinkConfig>] = &[
    Kind {
        name: "sekoia",
        parse: |d| Ok(Box::new(sekoia::SekoiaConfig::deserialize(d)?)),
    },
    Kind {
        name: "files",
        parse: |d| Ok(Box::new(files::FilesConfig::deserialize(d)?)),
    },
    Kind {
        name: "stdout",
        parse: |d| Ok(Box::new(stdout::StdoutConfig::deserialize(d)?)),
    },
    Kind {
        name: "tables",
        parse: |d| Ok(Box::new(tables::TablesSinkConfig::deserialize(d)?)),
    },
    Kind {
        name: "null",
        parse: |d| Ok(Box::new(null::NullConfig::deserialize(d)?)),
    },
];

/// A configured sink of some kind.
#[async_trait]
pub trait SinkConfig: fmt::Debug + Send + Sync + 'static {
    /// Its `kind`.
    fn kind(&self) -> &'static str;
    /// Its name in logs, metrics and dead letters (the configured `name`, else the kind).
    fn name(&self) -> &str;
    /// Which tables it takes.
    fn tables(&self) -> &TablesConfig;
    /// What the types alone cannot check (fields named relative to the entry).
    fn check(&self) -> Result<(), Invalid> {
        Ok(())
    }
    /// Opens what the sink writes to; fails when it cannot start at all.
    async fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, String>;
    /// For code that needs the concrete kind (tests, tools).
    fn as_any(&self) -> &dyn Any;
}

/// A sink ready to run; see the module docs for the contract `run` keeps.
#[async_trait]
pub trait Sink: Send {
    /// Delivers until the channel closes and everything received is acknowledged.
    async fn run(self: Box<Self>, deliveries: mpsc::Receiver<Delivery>);
}

/// What every sink gets besides its own settings.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The sink's name (metrics, logs, dead letters).
    pub name: Arc<str>,
    /// Where records it gives up on go.
    pub dead_letters: DeadLetters,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The pipeline's in-flight budget in bytes: a sink batches well under it (see rule 2).
    pub in_flight_bytes: usize,
    /// The forwarder's state directory, for a sink's own local state.
    pub state_dir: PathBuf,
    /// This instance's stable identity.
    pub owner_id: String,
}

/// Deliveries a sink may have queued before the router waits (backpressure).
pub const QUEUE: usize = 16;

/// A sink sends or flushes what it holds once no delivery came for this long: the source has
/// nothing more for now, or waits for acknowledgements to free the in-flight budget.
pub const IDLE: std::time::Duration = std::time::Duration::from_millis(10);

/// Sleeps for `d`, or forever for `None` (a `select!` branch that is off).
pub(crate) async fn sleep_opt(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A record as one NDJSON line. A line break can only be whitespace between JSON tokens (inside a
/// string it is always escaped), so a pretty-printed record becomes one line by turning its line
/// breaks into spaces: every value stays byte for byte what it was.
pub fn one_line(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    // Checked for every record a sink writes: a vectorised search, not a byte loop.
    if memchr::memchr2(b'\n', b'\r', raw).is_some() {
        std::borrow::Cow::Owned(
            raw.iter()
                .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

impl SinkContext {
    /// Counts delivered records per table, their bytes and one batch.
    pub(crate) fn count_out<'a>(
        &self,
        tables: impl Iterator<Item = (&'a crate::delivery::TableId, usize)>,
    ) -> (u64, u64) {
        let mut per_table: Vec<(&crate::delivery::TableId, u64)> = Vec::new();
        let mut records = 0;
        let mut bytes = 0;
        for (t, len) in tables {
            crate::delivery::tally(&mut per_table, &t);
            records += 1;
            bytes += len as u64;
        }
        for (table, n) in per_table {
            self.metrics.add(&RECORDS_OUT, [&self.name, table.name()], n);
        }
        self.metrics.add(&BYTES_OUT, [&self.name], bytes);
        self.metrics.add(&BATCHES_OUT, [&self.name], 1);
        (records, bytes)
    }

    /// Records how long `n` records took from being read to being delivered.
    pub(crate) fn delivered_after(&self, since: std::time::Instant, n: u64) {
        self.metrics
            .observe(&DELIVERY_SECONDS, [&self.name], since.elapsed().as_secs_f64(), n);
    }

    /// Writes records this sink gives up on to the dead-letter store (retrying until it works),
    /// counted under `kind`.
    pub(crate) async fn dead_letter(&self, records: &[(&SinkRecord, String)], kind: &str) {
        if records.is_empty() {
            return;
        }
        let entries = records
            .iter()
            .map(|(r, why)| DeadLetter::new(&self.name, &r.origin, Some(r.table.name()), why.clone(), &r.raw))
            .collect();
        self.dead_letters.put_until_ok(entries).await;
        self.metrics
            .add(&DEAD_LETTERS, [&self.name, kind], records.len() as u64);
    }
}

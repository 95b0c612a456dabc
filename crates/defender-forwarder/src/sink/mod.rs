//! Sinks: each runs as one task fed by a bounded channel of [`Delivery`]s, and acknowledges a
//! delivery only once its records are delivered or dead-lettered.

mod escape;
pub mod files;
pub mod sekoia;
pub mod stdout;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::deadletter::DeadLetters;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::route::Route;

/// What every sink gets besides its own settings.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The sink's name (metrics, logs, dead letters).
    pub name: Arc<str>,
    /// Where records it gives up on go.
    pub dead_letters: DeadLetters,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// A running sink as the router sees it.
#[derive(Debug)]
pub struct SinkHandle {
    /// Its name.
    pub name: Arc<str>,
    /// Which records it takes.
    pub route: Route,
    /// Where its deliveries go.
    pub tx: mpsc::Sender<Delivery>,
    /// The task; it ends once every sender is dropped and everything is delivered.
    pub task: JoinHandle<()>,
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

/// Counts delivered records per table on the sink's metrics.
pub(crate) fn count_out<'a>(
    ctx: &SinkContext,
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
        ctx.metrics.add(
            "defender_records_out_total",
            &[("sink", &ctx.name), ("table", table.name())],
            n,
        );
    }
    ctx.metrics
        .add("defender_bytes_out_total", &[("sink", &ctx.name)], bytes);
    ctx.metrics.add("defender_batches_out_total", &[("sink", &ctx.name)], 1);
    (records, bytes)
}

//! Prometheus metrics, and the small HTTP endpoint serving them with `/healthz` and `/readyz`.
//!
//! Updates happen per batch or per request, never per record, so one mutex is plenty.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use families::FAMILIES;

type Labels = Vec<(&'static str, String)>;

/// What kind of family a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its name, kind, help text and label names, declared once in [`families`]
/// and recorded through [`Metrics`] with exactly `N` label values.
#[derive(Debug)]
pub struct Family<const N: usize> {
    /// The Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The label names, in order.
    pub labels: [&'static str; N],
    /// The help text.
    pub help: &'static str,
}

impl<const N: usize> Family<N> {
    const fn new(name: &'static str, kind: Kind, labels: [&'static str; N], help: &'static str) -> Self {
        Self {
            name,
            kind,
            labels,
            help,
        }
    }
}

/// A family whatever its label count, for rendering and the render test.
pub trait Describe: Sync {
    /// The Prometheus name.
    fn name(&self) -> &'static str;
    /// Its kind.
    fn kind(&self) -> Kind;
    /// Its help text.
    fn help(&self) -> &'static str;
    /// Records one sample with placeholder labels (tests).
    fn record_sample(&self, m: &Metrics);
}

impl<const N: usize> Describe for Family<N> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn kind(&self) -> Kind {
        self.kind
    }
    fn help(&self) -> &'static str {
        self.help
    }
    fn record_sample(&self, m: &Metrics) {
        let labels = [""; N].map(|_| "x");
        match self.kind {
            Kind::Counter => m.add(self, labels, 1),
            Kind::Gauge => m.set(self, labels, 1.0),
            Kind::Histogram => m.observe(self, labels, 0.1, 1),
        }
    }
}

macro_rules! families {
    ($($(#[doc = $doc:literal])+ $ident:ident: $kind:ident $name:literal [$($label:literal),*];)+) => {
        $(
            $(#[doc = $doc])+
            pub static $ident: Family<{ count(&[$($label),*]) }> =
                Family::new($name, Kind::$kind, [$($label),*], concat!($($doc),+));
        )+
        /// Every family, in the order `/metrics` renders them.
        pub static FAMILIES: &[&dyn Describe] = &[$(&$ident),+];
    };
}

const fn count(labels: &[&str]) -> usize {
    labels.len()
}

/// The families, each declared once.
pub mod families {
    use super::{Describe, Family, Kind, count};

    families! {
        /// Messages read from sources.
        EVENTS_IN: Counter "defender_events_in_total" ["source"];
        /// Records read, per source and table.
        RECORDS_IN: Counter "defender_records_in_total" ["source", "table"];
        /// Message bytes read, per source.
        BYTES_IN: Counter "defender_bytes_in_total" ["source"];
        /// Records delivered, per sink and table.
        RECORDS_OUT: Counter "defender_records_out_total" ["sink", "table"];
        /// Record bytes delivered, per sink (before compression).
        BYTES_OUT: Counter "defender_bytes_out_total" ["sink"];
        /// Requests or flushes that delivered records, per sink.
        BATCHES_OUT: Counter "defender_batches_out_total" ["sink"];
        /// Delivery attempts that failed and were retried, per sink and reason.
        RETRIES: Counter "defender_retries_total" ["sink", "reason"];
        /// Records written to the dead-letter store, per sink and reason.
        DEAD_LETTERS: Counter "defender_dead_letters_total" ["sink", "reason"];
        /// Records that are not Defender records, per source.
        INVALID_RECORDS: Counter "defender_invalid_records_total" ["source"];
        /// Values whose type differs from the schema, per table and column (`check_records`).
        TYPE_DRIFT: Counter "defender_type_drift_total" ["table", "column"];
        /// Checkpoints written, per source.
        CHECKPOINTS: Counter "defender_checkpoints_total" ["source"];
        /// Checkpoint writes that failed, per source.
        CHECKPOINT_ERRORS: Counter "defender_checkpoint_errors_total" ["source"];
        /// Time from reading a message to its records' delivery, per sink.
        DELIVERY_SECONDS: Histogram "defender_delivery_seconds" ["sink"];
        /// Sequence number of the last event read, per partition.
        READ_SEQUENCE: Gauge "defender_partition_read_sequence" ["source", "partition"];
        /// Sequence number of the last checkpoint written, per partition.
        CHECKPOINT_SEQUENCE: Gauge "defender_partition_checkpoint_sequence" ["source", "partition"];
        /// Events in the partition after the last checkpoint (the hub's last sequence number minus the checkpointed one).
        LAG_EVENTS: Gauge "defender_partition_lag_events" ["source", "partition"];
        /// Enqueued-to-read delay of the last event read, per partition.
        READ_DELAY: Gauge "defender_partition_read_delay_seconds" ["source", "partition"];
        /// Message bytes read and not yet delivered everywhere.
        IN_FLIGHT_BYTES: Gauge "defender_in_flight_bytes" [];
        /// 1 when a source (or one of its hubs or containers) is connected and reading.
        SOURCE_UP: Gauge "defender_source_up" ["source", "hub"];
        /// Partitions (or containers) per source and state: owned (read here), other (held by another live instance), waiting (held by a silent owner until its lease expires), unowned.
        LEASES: Gauge "defender_source_leases" ["source", "state"];
    }
}

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Values {
    counters: BTreeMap<(&'static str, Labels), u64>,
    gauges: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// Whether the forwarder is ready, and if not why (computed when `/readyz` asks).
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The registry.
#[derive(Default)]
pub struct Metrics {
    values: Mutex<Values>,
    ready: AtomicBool,
    readiness: Mutex<Option<Readiness>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn labels<const N: usize>(family: &Family<N>, values: [&str; N]) -> Labels {
    family
        .labels
        .iter()
        .zip(values)
        .map(|(k, v)| (*k, v.to_owned()))
        .collect()
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Values> {
        self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds to a counter.
    pub fn add<const N: usize>(&self, family: &Family<N>, l: [&str; N], by: u64) {
        debug_assert_eq!(family.kind, Kind::Counter, "{}", family.name);
        if by > 0 {
            *self
                .lock()
                .counters
                .entry((family.name, labels(family, l)))
                .or_default() += by;
        }
    }

    /// Sets a gauge.
    pub fn set<const N: usize>(&self, family: &Family<N>, l: [&str; N], value: f64) {
        debug_assert_eq!(family.kind, Kind::Gauge, "{}", family.name);
        self.lock().gauges.insert((family.name, labels(family, l)), value);
    }

    /// Removes a gauge's series (a partition no longer read here).
    pub fn unset<const N: usize>(&self, family: &Family<N>, l: [&str; N]) {
        self.lock().gauges.remove(&(family.name, labels(family, l)));
    }

    /// Records `n` observations of `seconds` in a histogram.
    pub fn observe<const N: usize>(&self, family: &Family<N>, l: [&str; N], seconds: f64, n: u64) {
        debug_assert_eq!(family.kind, Kind::Histogram, "{}", family.name);
        let mut v = self.lock();
        let h = v.histograms.entry((family.name, labels(family, l))).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += n;
            }
        }
        #[allow(clippy::cast_precision_loss)]
        {
            h.sum += seconds * n as f64;
        }
        h.count += n;
    }

    /// A counter's value (for tests and summaries), summed over the series whose labels match
    /// every `(name, value)` in `l`.
    pub fn counter<const N: usize>(&self, family: &Family<N>, l: &[(&str, &str)]) -> u64 {
        self.lock()
            .counters
            .iter()
            .filter(|((n, ls), _)| {
                *n == family.name && l.iter().all(|(k, v)| ls.iter().any(|(k2, v2)| k2 == k && v2 == v))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// Marks the forwarder running (sources started) or not (starting, shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// What `/readyz` asks besides running.
    pub fn set_readiness(&self, readiness: Readiness) {
        *self.readiness.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(readiness);
    }

    /// Whether `/readyz` answers 200, and if not why.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("not running (starting or shutting down)".to_owned());
        }
        let check = self
            .readiness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        check.map_or(Ok(()), |c| c())
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let v = self.lock();
        let mut out = String::new();
        for family in FAMILIES {
            let name = family.name();
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} {}",
                family.help(),
                family.kind().name()
            );
            for ((n, l), value) in &v.counters {
                if *n == name {
                    let _ = writeln!(out, "{name}{} {value}", fmt_labels(l, None));
                }
            }
            for ((n, l), value) in &v.gauges {
                if *n == name {
                    let _ = writeln!(out, "{name}{} {value}", fmt_labels(l, None));
                }
            }
            for ((n, l), h) in &v.histograms {
                if *n == name {
                    for (b, c) in BUCKETS.iter().zip(&h.counts) {
                        let _ = writeln!(out, "{name}_bucket{} {c}", fmt_labels(l, Some(&b.to_string())));
                    }
                    let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(l, Some("+Inf")), h.count);
                    let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), h.sum);
                    let _ = writeln!(out, "{name}_count{} {}", fmt_labels(l, None), h.count);
                }
            }
        }
        out
    }
}

fn fmt_labels(l: &Labels, le: Option<&str>) -> String {
    if l.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
            )
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `stop`. Returns the bound address.
pub async fn serve(metrics: Arc<Metrics>, addr: SocketAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        continue;
                    }
                },
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                while n < buf.len() {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                        Ok(Ok(0) | Err(_)) | Err(_) => return,
                        Ok(Ok(k)) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let (status, body, ctype) = match path {
                    "/metrics" => ("200 OK", metrics.render(), "text/plain; version=0.0.4"),
                    "/healthz" => ("200 OK", "ok\n".to_owned(), "text/plain"),
                    "/readyz" => match metrics.readiness() {
                        Ok(()) => ("200 OK", "ready\n".to_owned(), "text/plain"),
                        Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n"), "text/plain"),
                    },
                    _ => ("404 Not Found", "not found\n".to_owned(), "text/plain"),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::families::*;
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.add(&RECORDS_OUT, ["sekoia", "DeviceInfo"], 3);
        m.add(&RECORDS_OUT, ["sekoia", "DeviceInfo"], 2);
        m.observe(&DELIVERY_SECONDS, ["files"], 0.2, 4);
        let text = m.render();
        assert!(
            text.contains("defender_records_out_total{sink=\"sekoia\",table=\"DeviceInfo\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("defender_delivery_seconds_bucket{sink=\"files\",le=\"0.25\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("defender_delivery_seconds_bucket{sink=\"files\",le=\"0.1\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("defender_delivery_seconds_count{sink=\"files\"} 4\n"),
            "{text}"
        );
        assert_eq!(m.counter(&RECORDS_OUT, &[("sink", "sekoia")]), 5);
    }

    #[test]
    fn every_family_renders_what_is_recorded() {
        let m = Metrics::default();
        for f in FAMILIES {
            f.record_sample(&m);
        }
        let text = m.render();
        let mut names = std::collections::HashSet::new();
        for f in FAMILIES {
            assert!(names.insert(f.name()), "{} is declared twice", f.name());
            assert!(f.name().starts_with("defender_"), "{}", f.name());
            assert!(
                text.contains(&format!("# TYPE {} {}\n", f.name(), f.kind().name())),
                "{}",
                f.name()
            );
            let sample = match f.kind() {
                Kind::Histogram => format!("{}_count", f.name()),
                _ => f.name().to_owned(),
            };
            let recorded = text.lines().any(|l| !l.starts_with('#') && l.starts_with(&sample));
            assert!(recorded, "{} was recorded but does not render:\n{text}", f.name());
        }
    }
}

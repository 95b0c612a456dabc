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

type Labels = Vec<(&'static str, String)>;

/// Help text and type of every metric, in the order they are rendered.
const FAMILIES: &[(&str, &str, &str)] = &[
    ("defender_events_in_total", "counter", "Messages read from sources."),
    (
        "defender_records_in_total",
        "counter",
        "Records read, per source and table.",
    ),
    ("defender_bytes_in_total", "counter", "Message bytes read, per source."),
    (
        "defender_records_out_total",
        "counter",
        "Records delivered, per sink and table.",
    ),
    (
        "defender_bytes_out_total",
        "counter",
        "Record bytes delivered, per sink (before compression).",
    ),
    (
        "defender_batches_out_total",
        "counter",
        "Requests or flushes that delivered records, per sink.",
    ),
    (
        "defender_retries_total",
        "counter",
        "Delivery attempts that failed and were retried, per sink and reason.",
    ),
    (
        "defender_dead_letters_total",
        "counter",
        "Records written to the dead-letter store, per sink and reason.",
    ),
    (
        "defender_invalid_records_total",
        "counter",
        "Records that are not Defender records, per source.",
    ),
    (
        "defender_type_drift_total",
        "counter",
        "Values whose type differs from the schema, per table and column (check_records).",
    ),
    (
        "defender_checkpoints_total",
        "counter",
        "Checkpoints written, per source.",
    ),
    (
        "defender_checkpoint_errors_total",
        "counter",
        "Checkpoint writes that failed, per source.",
    ),
    (
        "defender_delivery_seconds",
        "histogram",
        "Time from reading a message to its records' delivery, per sink.",
    ),
    (
        "defender_partition_read_sequence",
        "gauge",
        "Sequence number of the last event read, per partition.",
    ),
    (
        "defender_partition_checkpoint_sequence",
        "gauge",
        "Sequence number of the last checkpoint written, per partition.",
    ),
    (
        "defender_partition_read_delay_seconds",
        "gauge",
        "Enqueued-to-read delay of the last event read, per partition.",
    ),
    (
        "defender_in_flight_bytes",
        "gauge",
        "Message bytes read and not yet delivered everywhere.",
    ),
    (
        "defender_in_flight_events",
        "gauge",
        "Messages read and not yet delivered everywhere.",
    ),
    (
        "defender_source_up",
        "gauge",
        "1 when a source (or hub) is connected and reading.",
    ),
];

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

/// The registry.
#[derive(Default)]
pub struct Metrics {
    values: Mutex<Values>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Values> {
        self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds to a counter.
    pub fn add(&self, name: &'static str, l: &[(&'static str, &str)], by: u64) {
        if by > 0 {
            *self.lock().counters.entry((name, labels(l))).or_default() += by;
        }
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, l: &[(&'static str, &str)], value: f64) {
        self.lock().gauges.insert((name, labels(l)), value);
    }

    /// Records `n` observations of `seconds` in a histogram.
    pub fn observe(&self, name: &'static str, l: &[(&'static str, &str)], seconds: f64, n: u64) {
        let mut v = self.lock();
        let h = v.histograms.entry((name, labels(l))).or_default();
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

    /// A counter's value (for tests and summaries); sums over labels matching `l`.
    pub fn counter(&self, name: &str, l: &[(&str, &str)]) -> u64 {
        self.lock()
            .counters
            .iter()
            .filter(|((n, ls), _)| *n == name && l.iter().all(|(k, v)| ls.iter().any(|(k2, v2)| k2 == k && v2 == v)))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Marks the forwarder ready (sources reading) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let v = self.lock();
        let mut out = String::new();
        for (name, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, l), value) in &v.counters {
                if n == name {
                    let _ = writeln!(out, "{name}{} {value}", fmt_labels(l, None));
                }
            }
            for ((n, l), value) in &v.gauges {
                if n == name {
                    let _ = writeln!(out, "{name}{} {value}", fmt_labels(l, None));
                }
            }
            for ((n, l), h) in &v.histograms {
                if n == name {
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
                    "/readyz" if metrics.is_ready() => ("200 OK", "ready\n".to_owned(), "text/plain"),
                    "/readyz" => ("503 Service Unavailable", "not ready\n".to_owned(), "text/plain"),
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
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.add(
            "defender_records_out_total",
            &[("sink", "sekoia"), ("table", "DeviceInfo")],
            3,
        );
        m.add(
            "defender_records_out_total",
            &[("sink", "sekoia"), ("table", "DeviceInfo")],
            2,
        );
        m.observe("defender_delivery_seconds", &[("sink", "files")], 0.2, 4);
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
        assert_eq!(m.counter("defender_records_out_total", &[("sink", "sekoia")]), 5);
    }
}

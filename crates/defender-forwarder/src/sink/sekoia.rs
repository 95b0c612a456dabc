//! The Sekoia.io HTTP intake: `POST {url}/batch` with `{"intake_key": KEY, "jsons": [...]}`,
//! gzip-encoded, several requests in flight over kept-alive connections.
//!
//! Transient failures (429, 5xx, timeouts, connection errors) are retried with exponential
//! backoff and jitter, honouring `Retry-After`, for as long as it takes: the checkpoint waits, and
//! reading pauses once the in-flight budget is used. Other refusals (400, 413, ...) are narrowed
//! down by splitting the request until the refused events are alone, and those go to the
//! dead-letter store with the intake's reason; 401 and 403 refuse the key, so the whole request is
//! dead-lettered at once. Events over the intake's size limit never leave.

use std::any::Any;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use defender_eventhub::Secret;
use serde::Deserialize;
use serde_with::serde_as;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use url::Url;

use super::{IDLE, Sink, SinkConfig, SinkContext, sleep_opt};
use crate::config::{Flag, FromText, Invalid, Num, SecretText, Span, Text};
use crate::delivery::{Ack, Delivery, SinkRecord};
use crate::metrics::families::RETRIES;
use crate::table_filter::TablesConfig;

/// The intake refuses single events above this size.
pub const MAX_EVENT_BYTES: usize = 250 * 1024;

/// Where records go when a `sekoia` sink gives no `url`.
pub const DEFAULT_URL: &str = "https://intake.sekoia.io";

/// `kind = "sekoia"`.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SekoiaConfig {
    /// Name in logs, metrics and dead letters (default `sekoia`).
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub name: Option<String>,
    /// Intake base URL; `/batch` is appended. Other regions:
    /// `https://app.<region>.sekoia.io/api/v1/intake-http`.
    #[serde(default = "SekoiaConfig::default_url")]
    #[serde_as(as = "FromText")]
    pub url: Url,
    /// The intake key.
    #[serde_as(as = "SecretText")]
    pub intake_key: Secret,
    /// Tables to send (default: all).
    #[serde(default)]
    pub tables: TablesConfig,
    /// Events per request.
    #[serde(default = "SekoiaConfig::default_batch_events")]
    #[serde_as(as = "Num")]
    pub batch_events: usize,
    /// Uncompressed bytes per request (default 4 MiB, at most a quarter of the in-flight
    /// budget; the intake takes at most 10 MiB).
    #[serde(default)]
    #[serde_as(as = "Option<Num>")]
    pub batch_bytes: Option<usize>,
    /// How long a partly filled request waits for more events.
    #[serde(default = "SekoiaConfig::default_linger")]
    #[serde_as(as = "Span")]
    pub linger: Duration,
    /// Requests in flight at once.
    #[serde(default = "SekoiaConfig::default_concurrency")]
    #[serde_as(as = "Num")]
    pub concurrency: usize,
    /// Per-request timeout.
    #[serde(default = "SekoiaConfig::default_timeout")]
    #[serde_as(as = "Span")]
    pub timeout: Duration,
    /// Gzip request bodies.
    #[serde(default = "SekoiaConfig::default_gzip")]
    #[serde_as(as = "Flag")]
    pub gzip: bool,
    /// Longest wait between retries.
    #[serde(default = "SekoiaConfig::default_max_backoff")]
    #[serde_as(as = "Span")]
    pub max_backoff: Duration,
    /// Accept invalid TLS certificates. Only for testing; logged loudly.
    #[serde(default)]
    #[serde_as(as = "Flag")]
    pub danger_accept_invalid_certs: bool,
}

impl SekoiaConfig {
    /// A sink to `url` with `intake_key` and the defaults.
    pub fn new(url: Url, intake_key: Secret) -> Self {
        Self {
            name: None,
            url,
            intake_key,
            tables: TablesConfig::default(),
            batch_events: Self::default_batch_events(),
            batch_bytes: None,
            linger: Self::default_linger(),
            concurrency: Self::default_concurrency(),
            timeout: Self::default_timeout(),
            gzip: true,
            max_backoff: Self::default_max_backoff(),
            danger_accept_invalid_certs: false,
        }
    }
    /// `https://intake.sekoia.io`.
    pub fn default_url() -> Url {
        Url::parse(DEFAULT_URL).expect("a valid URL")
    }
    /// 1000.
    pub const fn default_batch_events() -> usize {
        1000
    }
    /// 200 ms.
    pub const fn default_linger() -> Duration {
        Duration::from_millis(200)
    }
    /// 4.
    pub const fn default_concurrency() -> usize {
        4
    }
    /// 30 s.
    pub const fn default_timeout() -> Duration {
        Duration::from_secs(30)
    }
    const fn default_gzip() -> bool {
        true
    }
    /// 60 s.
    pub const fn default_max_backoff() -> Duration {
        Duration::from_secs(60)
    }
}

#[async_trait]
impl SinkConfig for SekoiaConfig {
    fn kind(&self) -> &'static str {
        "sekoia"
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("sekoia")
    }

    fn tables(&self) -> &TablesConfig {
        &self.tables
    }

    fn check(&self) -> Result<(), Invalid> {
        if !matches!(self.url.scheme(), "http" | "https") {
            return Err(Invalid::new("url", "must be http:// or https://"));
        }
        if self.batch_bytes.is_some_and(|n| n > 9 * 1024 * 1024) {
            return Err(Invalid::new(
                "batch_bytes",
                "the intake refuses requests over 10 MiB; keep batches at most 9 MiB",
            ));
        }
        for (key, n) in [("batch_events", self.batch_events), ("concurrency", self.concurrency)] {
            if n == 0 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    async fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, String> {
        if self.danger_accept_invalid_certs {
            tracing::warn!(sink = %cx.name, "TLS certificate verification is OFF for this sink (danger_accept_invalid_certs)");
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .pool_max_idle_per_host(self.concurrency)
            .tls_danger_accept_invalid_certs(self.danger_accept_invalid_certs)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut prefix = b"{\"intake_key\":".to_vec();
        serde_json::to_writer(&mut prefix, self.intake_key.expose()).expect("a string serialises");
        prefix.extend_from_slice(b",\"jsons\":[");
        // Requests that fit the budget a few times over keep every slot busy.
        let batch_bytes = self
            .batch_bytes
            .unwrap_or_else(|| (4 * 1024 * 1024).min((cx.in_flight_bytes / 4).max(256 * 1024)));
        Ok(Box::new(SekoiaSink(Arc::new(Shared {
            ctx: cx.clone(),
            client,
            batch_url: batch_url(self.url.as_str()).map_err(|e| format!("url: {e}"))?,
            batch_bytes,
            config: self.clone(),
            prefix,
        }))))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `https://intake.sekoia.io` -> `https://intake.sekoia.io/batch`;
/// `https://app.<region>.sekoia.io/api/v1/intake-http` -> `.../api/v1/intake-http/batch`.
pub fn batch_url(base: &str) -> Result<Url, url::ParseError> {
    let base = base.trim().trim_end_matches('/');
    let base = base.strip_suffix("/batch").unwrap_or(base);
    Url::parse(&format!("{base}/batch"))
}

/// A request being filled.
#[derive(Default)]
struct Pending {
    records: Vec<SinkRecord>,
    acks: Vec<Ack>,
    bytes: usize,
    oldest: Option<Instant>,
    since: Option<Instant>,
}

struct Shared {
    ctx: SinkContext,
    client: reqwest::Client,
    config: SekoiaConfig,
    batch_url: Url,
    batch_bytes: usize,
    /// `{"intake_key":"...","jsons":[` with the key JSON-escaped.
    prefix: Vec<u8>,
}

struct SekoiaSink(Arc<Shared>);

#[async_trait]
impl Sink for SekoiaSink {
    /// Runs until every sender is gone and everything is delivered.
    async fn run(self: Box<Self>, mut rx: mpsc::Receiver<Delivery>) {
        let shared = self.0;
        let slots = Arc::new(Semaphore::new(shared.config.concurrency));
        let mut tasks = JoinSet::new();
        let mut pending = Pending::default();
        let mut open = true;
        let mut last_input = Instant::now();
        while open || !pending.records.is_empty() {
            let linger_left = pending.since.map(|t| {
                shared
                    .config
                    .linger
                    .saturating_sub(t.elapsed())
                    .min(IDLE.saturating_sub(last_input.elapsed()))
            });
            tokio::select! {
                d = rx.recv(), if open => match d {
                    Some(d) => {
                        add(&shared, &mut pending, d, &slots, &mut tasks).await;
                        last_input = Instant::now();
                    }
                    None => open = false,
                },
                () = sleep_opt(linger_left) => {
                    send(&shared, &mut pending, &slots, &mut tasks).await;
                }
                Some(r) = tasks.join_next(), if !tasks.is_empty() => log_join(r),
            }
            if !open {
                send(&shared, &mut pending, &slots, &mut tasks).await;
            }
        }
        while let Some(r) = tasks.join_next().await {
            log_join(r);
        }
    }
}

fn log_join(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "a request task failed; its events will be read again after a restart");
    }
}

async fn add(
    shared: &Arc<Shared>,
    pending: &mut Pending,
    d: Delivery,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) {
    let Delivery { records, ack, read_at } = d;
    let mut oversized = Vec::new();
    let mut holds_ack = false;
    for r in records {
        if r.raw.len() > MAX_EVENT_BYTES {
            oversized.push(r);
            continue;
        }
        // JSON string escaping grows a record a little; count it roughly.
        let cost = r.raw.len() + r.raw.len() / 16 + 3;
        if !pending.records.is_empty()
            && (pending.records.len() >= shared.config.batch_events || pending.bytes + cost > shared.batch_bytes)
        {
            send(shared, pending, slots, tasks).await;
            holds_ack = false;
        }
        if !holds_ack {
            pending.acks.push(ack.clone());
            holds_ack = true;
        }
        pending.bytes += cost;
        pending.records.push(r);
        pending.oldest = Some(pending.oldest.map_or(read_at, |t| t.min(read_at)));
        pending.since.get_or_insert_with(Instant::now);
    }
    let reason = format!("event larger than the intake's limit of {MAX_EVENT_BYTES} bytes");
    dead_letter(&shared.ctx, &oversized, &reason, "too_large").await;
    ack.ack();
}

async fn send(shared: &Arc<Shared>, pending: &mut Pending, slots: &Arc<Semaphore>, tasks: &mut JoinSet<()>) {
    if pending.records.is_empty() {
        pending.since = None;
        return;
    }
    let batch = std::mem::take(pending);
    let permit = slots.clone().acquire_owned().await.expect("never closed");
    let shared = shared.clone();
    tasks.spawn(async move {
        deliver(&shared, batch.records, batch.oldest).await;
        batch.acks.into_iter().for_each(Ack::ack);
        drop(permit);
    });
}

/// What the intake said about one request.
enum Answer {
    Accepted {
        ids: Vec<Option<String>>,
    },
    Retry {
        reason: &'static str,
        after: Option<Duration>,
        detail: String,
    },
    Refused {
        status: u16,
        detail: String,
    },
}

/// Delivers `records` (as one request or, when refused, as smaller ones) until every record is
/// accepted or dead-lettered.
async fn deliver(shared: &Shared, records: Vec<SinkRecord>, oldest: Option<Instant>) {
    let mut stack = vec![records];
    while let Some(records) = stack.pop() {
        let body = encode(shared, &records);
        let mut attempt = 0u32;
        loop {
            match post(shared, body.clone()).await {
                Answer::Accepted { ids } => {
                    accepted(shared, &records, &ids, oldest).await;
                    break;
                }
                Answer::Retry { reason, after, detail } => {
                    attempt += 1;
                    shared.ctx.metrics.add(&RETRIES, [&shared.ctx.name, reason], 1);
                    let delay = backoff(attempt, shared.config.max_backoff, after);
                    if attempt >= 5 {
                        tracing::error!(sink = %shared.ctx.name, attempt, reason, %detail, retry_in = ?delay, events = records.len(), "intake delivery failing; retrying");
                    } else {
                        tracing::warn!(sink = %shared.ctx.name, attempt, reason, %detail, retry_in = ?delay, events = records.len(), "intake delivery failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                }
                Answer::Refused { status, detail } => {
                    refused(shared, records, status, &detail, &mut stack).await;
                    break;
                }
            }
        }
    }
}

/// Counts what the intake took and dead-letters the events its answer gave no id.
async fn accepted(shared: &Shared, records: &[SinkRecord], ids: &[Option<String>], oldest: Option<Instant>) {
    let refused: Vec<SinkRecord> = if ids.len() == records.len() {
        records
            .iter()
            .zip(ids)
            .filter(|(_, id)| id.is_none())
            .map(|(r, _)| r.clone())
            .collect()
    } else {
        tracing::warn!(
            sink = %shared.ctx.name,
            sent = records.len(),
            ids = ids.len(),
            "the intake answered a different number of event ids than events sent; counting all as accepted"
        );
        Vec::new()
    };
    dead_letter(
        &shared.ctx,
        &refused,
        "the intake refused this event (no event id in its answer)",
        "refused_event",
    )
    .await;
    shared.ctx.count_out(
        records
            .iter()
            .zip(ids.iter().map(Some).chain(std::iter::repeat(None)))
            .filter(|(_, id)| !matches!(id, Some(None)))
            .map(|(r, _)| (&r.table, r.raw.len())),
    );
    if let Some(t) = oldest {
        shared.ctx.delivered_after(t, records.len() as u64);
    }
}

/// A refused request: split to find the refused events, or dead-letter a single one (or all of
/// them when the key itself was refused: splitting would only repeat it).
async fn refused(
    shared: &Shared,
    records: Vec<SinkRecord>,
    status: u16,
    detail: &str,
    stack: &mut Vec<Vec<SinkRecord>>,
) {
    if records.len() > 1 && !matches!(status, 401 | 403) {
        tracing::warn!(sink = %shared.ctx.name, status, %detail, events = records.len(), "intake refused a request; splitting it");
        let mut left = records;
        let right = left.split_off(left.len() / 2);
        stack.push(right);
        stack.push(left);
    } else {
        tracing::error!(sink = %shared.ctx.name, status, %detail, events = records.len(), "intake refused; dead-lettered");
        let reason = format!("intake answered HTTP {status}: {detail}");
        dead_letter(&shared.ctx, &records, &reason, &format!("http_{status}")).await;
    }
}

/// The request body. With gzip the JSON is compressed a chunk at a time, so a request never holds
/// its whole uncompressed text.
fn encode(shared: &Shared, records: &[SinkRecord]) -> Bytes {
    const CHUNK: usize = 128 * 1024;
    let raw_len: usize = records.iter().map(|r| r.raw.len() + 3).sum();
    let estimate = shared.prefix.len() + raw_len + raw_len / 8 + 2;
    let mut gz = shared
        .config
        .gzip
        .then(|| flate2::write::GzEncoder::new(Vec::with_capacity(estimate / 8), flate2::Compression::fast()));
    let mut json = Vec::with_capacity(if gz.is_some() {
        estimate.min(2 * CHUNK)
    } else {
        estimate
    });
    json.extend_from_slice(&shared.prefix);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        super::escape::push_json_string(&mut json, &r.raw);
        if let Some(gz) = gz.as_mut()
            && json.len() >= CHUNK
        {
            gz.write_all(&json).expect("writing to memory");
            json.clear();
        }
    }
    json.extend_from_slice(b"]}");
    match gz {
        None => Bytes::from(json),
        Some(mut gz) => {
            gz.write_all(&json).expect("writing to memory");
            Bytes::from(gz.finish().expect("writing to memory"))
        }
    }
}

async fn post(shared: &Shared, body: Bytes) -> Answer {
    let mut req = shared
        .client
        .post(shared.batch_url.clone())
        .header("Content-Type", "application/json")
        .body(body);
    if shared.config.gzip {
        req = req.header("Content-Encoding", "gzip");
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let reason = if e.is_timeout() { "timeout" } else { "connection" };
            return Answer::Retry {
                reason,
                after: None,
                detail: crate::error_chain(&e),
            };
        }
    };
    let status = resp.status().as_u16();
    let after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => {
            return Answer::Retry {
                reason: if e.is_timeout() { "timeout" } else { "connection" },
                after: None,
                detail: crate::error_chain(&e),
            };
        }
    };
    match status {
        200..=299 => {
            #[derive(serde::Deserialize)]
            struct Ids {
                #[serde(default)]
                event_ids: Vec<Option<String>>,
            }
            match serde_json::from_str::<Ids>(&text) {
                Ok(a) => Answer::Accepted { ids: a.event_ids },
                // Accepted, but the answer says nothing per event.
                Err(_) => Answer::Accepted { ids: Vec::new() },
            }
        }
        408 | 425 | 429 | 500..=599 => Answer::Retry {
            reason: if status == 429 { "throttled" } else { "server_error" },
            after,
            detail: format!("HTTP {status}: {}", snippet(&text)),
        },
        _ => Answer::Refused {
            status,
            detail: snippet(&text),
        },
    }
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_owned(),
    }
}

/// `Retry-After` in seconds or as an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let secs = (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(Duration::from_millis(u64::try_from(secs).unwrap_or(0)))
}

/// Full-jitter exponential backoff from 250 ms, at least what `Retry-After` asks (capped at 10x
/// `max`, so a hostile answer cannot park the sink for a day).
fn backoff(attempt: u32, max: Duration, retry_after: Option<Duration>) -> Duration {
    let exp = Duration::from_millis(250).saturating_mul(1 << attempt.min(16)).min(max);
    let jittered = exp.mul_f64(0.5 + rand::random::<f64>() / 2.0);
    match retry_after {
        Some(r) => r.min(max.saturating_mul(10)).max(Duration::from_millis(50)),
        None => jittered,
    }
}

async fn dead_letter(ctx: &SinkContext, records: &[SinkRecord], reason: &str, kind: &str) {
    let entries: Vec<(&SinkRecord, String)> = records.iter().map(|r| (r, reason.to_owned())).collect();
    ctx.dead_letter(&entries, kind).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_urls_for_every_region_form() {
        assert_eq!(
            batch_url("https://intake.sekoia.io").unwrap().as_str(),
            "https://intake.sekoia.io/batch"
        );
        assert_eq!(
            batch_url("https://intake.sekoia.io/").unwrap().as_str(),
            "https://intake.sekoia.io/batch"
        );
        assert_eq!(
            batch_url("https://app.uae1.sekoia.io/api/v1/intake-http")
                .unwrap()
                .as_str(),
            "https://app.uae1.sekoia.io/api/v1/intake-http/batch"
        );
        assert_eq!(
            batch_url("https://app.uae1.sekoia.io/api/v1/intake-http/batch")
                .unwrap()
                .as_str(),
            "https://app.uae1.sekoia.io/api/v1/intake-http/batch"
        );
    }

    #[test]
    fn retry_after_wins_over_backoff_within_bounds() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, max, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(
            backoff(1, max, Some(Duration::from_secs(86_400))),
            Duration::from_secs(600)
        );
        for attempt in 1..30 {
            assert!(backoff(attempt, max, None) <= max);
        }
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert!(parse_retry_after("soon").is_none());
    }
}

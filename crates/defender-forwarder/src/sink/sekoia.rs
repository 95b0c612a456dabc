//! The Sekoia.io HTTP intake: `POST {url}/batch` with `{"intake_key": KEY, "jsons": [...]}`,
//! gzip-encoded, several requests in flight over kept-alive connections.
//!
//! Transient failures (429, 5xx, timeouts, connection errors) are retried with exponential
//! backoff and jitter, honouring `Retry-After`, for as long as it takes: the checkpoint waits, and
//! reading pauses once the in-flight budget is used. Other refusals (400, 413, ...) are narrowed
//! down by splitting the request until the refused events are alone, and those go to the
//! dead-letter store with the intake's reason; 401 and 403 refuse the key, so the whole request is
//! dead-lettered at once. Events over the intake's size limit never leave.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use defender_eventhub::Secret;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::{IDLE, SinkContext, count_out, sleep_opt};
use crate::deadletter::Entry;
use crate::delivery::{Ack, Delivery, Record};

/// The intake refuses single events above this size.
pub const MAX_EVENT_BYTES: usize = 250 * 1024;

/// Settings of a `sekoia` sink.
#[derive(Debug, Clone)]
pub struct SekoiaOptions {
    /// `{base}/batch`.
    pub batch_url: url::Url,
    /// The intake key.
    pub intake_key: Secret,
    /// Events per request.
    pub batch_events: usize,
    /// Uncompressed bytes of events per request.
    pub batch_bytes: usize,
    /// How long a partly filled request waits for more.
    pub linger: Duration,
    /// Requests in flight.
    pub concurrency: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Gzip bodies.
    pub gzip: bool,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Skip TLS certificate checks (tests only).
    pub accept_invalid_certs: bool,
}

impl SekoiaOptions {
    /// Defaults for everything but where and which key.
    pub fn new(base_url: &str, intake_key: Secret) -> Result<SekoiaOptions, url::ParseError> {
        Ok(SekoiaOptions {
            batch_url: batch_url(base_url)?,
            intake_key,
            batch_events: 1000,
            batch_bytes: 4 * 1024 * 1024,
            linger: Duration::from_millis(200),
            concurrency: 4,
            timeout: Duration::from_secs(30),
            gzip: true,
            max_backoff: Duration::from_secs(60),
            accept_invalid_certs: false,
        })
    }
}

/// Settings from a checked `[[sinks]] kind = "sekoia"` entry.
pub fn options(c: &crate::config::SekoiaSink) -> Result<SekoiaOptions, String> {
    let url = c.url.as_deref().unwrap_or(crate::config::DEFAULT_SEKOIA_URL);
    let mut o = SekoiaOptions::new(url, c.intake_key.0.clone()).map_err(|e| format!("url `{url}`: {e}"))?;
    let size = |n: crate::config::Num| usize::try_from(n.0).unwrap_or(usize::MAX);
    if let Some(n) = c.batch_events {
        o.batch_events = size(n);
    }
    if let Some(n) = c.batch_bytes {
        o.batch_bytes = size(n);
    }
    if let Some(s) = c.linger {
        o.linger = s.0;
    }
    if let Some(n) = c.concurrency {
        o.concurrency = size(n);
    }
    if let Some(s) = c.timeout {
        o.timeout = s.0;
    }
    if let Some(f) = c.gzip {
        o.gzip = f.0;
    }
    if let Some(s) = c.max_backoff {
        o.max_backoff = s.0;
    }
    if let Some(f) = c.danger_accept_invalid_certs {
        o.accept_invalid_certs = f.0;
    }
    Ok(o)
}

/// `https://intake.sekoia.io` -> `https://intake.sekoia.io/batch`;
/// `https://app.<region>.sekoia.io/api/v1/intake-http` -> `.../api/v1/intake-http/batch`.
pub fn batch_url(base: &str) -> Result<url::Url, url::ParseError> {
    let base = base.trim().trim_end_matches('/');
    let base = base.strip_suffix("/batch").unwrap_or(base);
    url::Url::parse(&format!("{base}/batch"))
}

/// A request being filled.
#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    acks: Vec<Ack>,
    bytes: usize,
    oldest: Option<Instant>,
    since: Option<Instant>,
}

struct Shared {
    ctx: SinkContext,
    client: reqwest::Client,
    opts: SekoiaOptions,
    /// `{"intake_key":"...","jsons":[` with the key JSON-escaped.
    prefix: Vec<u8>,
}

/// Runs the sink until every sender is gone and everything is delivered.
pub async fn run(ctx: SinkContext, opts: SekoiaOptions, mut rx: mpsc::Receiver<Delivery>) {
    if opts.accept_invalid_certs {
        tracing::warn!(sink = %ctx.name, "TLS certificate verification is OFF for this sink (danger_accept_invalid_certs)");
    }
    let client = match reqwest::Client::builder()
        .timeout(opts.timeout)
        .pool_max_idle_per_host(opts.concurrency)
        .tls_danger_accept_invalid_certs(opts.accept_invalid_certs)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(sink = %ctx.name, error = %e, "cannot build the HTTP client; this sink delivers nothing");
            return;
        }
    };
    let mut prefix = b"{\"intake_key\":".to_vec();
    serde_json::to_writer(&mut prefix, opts.intake_key.expose()).expect("a string serialises");
    prefix.extend_from_slice(b",\"jsons\":[");
    let shared = Arc::new(Shared {
        ctx,
        client,
        opts,
        prefix,
    });
    let slots = Arc::new(Semaphore::new(shared.opts.concurrency));
    let mut tasks = JoinSet::new();
    let mut pending = Pending::default();
    let mut open = true;
    let mut last_input = Instant::now();
    while open || !pending.records.is_empty() {
        let linger_left = pending.since.map(|t| {
            shared
                .opts
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
            && (pending.records.len() >= shared.opts.batch_events || pending.bytes + cost > shared.opts.batch_bytes)
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
    if !oversized.is_empty() {
        let reason = format!("event larger than the intake's limit of {MAX_EVENT_BYTES} bytes");
        dead_letter(&shared.ctx, &oversized, &reason, "too_large").await;
    }
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
enum Outcome {
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
async fn deliver(shared: &Shared, records: Vec<Record>, oldest: Option<Instant>) {
    let mut stack = vec![records];
    while let Some(records) = stack.pop() {
        let body = encode(shared, &records);
        let mut attempt = 0u32;
        loop {
            match post(shared, body.clone()).await {
                Outcome::Accepted { ids } => {
                    let refused: Vec<Record> = if ids.len() == records.len() {
                        records
                            .iter()
                            .zip(&ids)
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
                    if !refused.is_empty() {
                        dead_letter(
                            &shared.ctx,
                            &refused,
                            "the intake refused this event (no event id in its answer)",
                            "refused_event",
                        )
                        .await;
                    }
                    count_out(
                        &shared.ctx,
                        records
                            .iter()
                            .zip(ids.iter().map(Some).chain(std::iter::repeat(None)))
                            .filter(|(_, id)| !matches!(id, Some(None)))
                            .map(|(r, _)| (&r.table, r.raw.len())),
                    );
                    if let Some(t) = oldest {
                        shared.ctx.metrics.observe(
                            "defender_delivery_seconds",
                            &[("sink", &shared.ctx.name)],
                            t.elapsed().as_secs_f64(),
                            records.len() as u64,
                        );
                    }
                    break;
                }
                Outcome::Retry { reason, after, detail } => {
                    attempt += 1;
                    shared.ctx.metrics.add(
                        "defender_retries_total",
                        &[("sink", &shared.ctx.name), ("reason", reason)],
                        1,
                    );
                    let delay = backoff(attempt, shared.opts.max_backoff, after);
                    let log = if attempt >= 5 {
                        tracing::Level::ERROR
                    } else {
                        tracing::Level::WARN
                    };
                    if log == tracing::Level::ERROR {
                        tracing::error!(sink = %shared.ctx.name, attempt, reason, %detail, retry_in = ?delay, events = records.len(), "intake delivery failing; retrying");
                    } else {
                        tracing::warn!(sink = %shared.ctx.name, attempt, reason, %detail, retry_in = ?delay, events = records.len(), "intake delivery failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                }
                Outcome::Refused { status, detail } => {
                    // 401/403 refuse the key, not an event: splitting would only repeat it.
                    if records.len() > 1 && !matches!(status, 401 | 403) {
                        // Find the refused events: split and send the halves on their own.
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
                    break;
                }
            }
        }
    }
}

/// The request body. With gzip the JSON is compressed a chunk at a time, so a request never holds
/// its whole uncompressed text.
fn encode(shared: &Shared, records: &[Record]) -> Bytes {
    const CHUNK: usize = 128 * 1024;
    let raw_len: usize = records.iter().map(|r| r.raw.len() + 3).sum();
    let estimate = shared.prefix.len() + raw_len + raw_len / 8 + 2;
    let mut gz = shared
        .opts
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

async fn post(shared: &Shared, body: Bytes) -> Outcome {
    let mut req = shared
        .client
        .post(shared.opts.batch_url.clone())
        .header("Content-Type", "application/json")
        .body(body);
    if shared.opts.gzip {
        req = req.header("Content-Encoding", "gzip");
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let reason = if e.is_timeout() { "timeout" } else { "connection" };
            return Outcome::Retry {
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
            return Outcome::Retry {
                reason: if e.is_timeout() { "timeout" } else { "connection" },
                after: None,
                detail: crate::error_chain(&e),
            };
        }
    };
    match status {
        200..=299 => {
            #[derive(serde::Deserialize)]
            struct Answer {
                #[serde(default)]
                event_ids: Vec<Option<String>>,
            }
            match serde_json::from_str::<Answer>(&text) {
                Ok(a) => Outcome::Accepted { ids: a.event_ids },
                // Accepted, but the answer says nothing per event.
                Err(_) => Outcome::Accepted { ids: Vec::new() },
            }
        }
        408 | 425 | 429 | 500..=599 => Outcome::Retry {
            reason: if status == 429 { "throttled" } else { "server_error" },
            after,
            detail: format!("HTTP {status}: {}", snippet(&text)),
        },
        _ => Outcome::Refused {
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

async fn dead_letter(ctx: &SinkContext, records: &[Record], reason: &str, kind: &str) {
    let entries = records
        .iter()
        .map(|r| Entry::new(&ctx.name, &r.origin, Some(r.table.name()), reason, &r.raw))
        .collect::<Vec<_>>();
    let n = entries.len() as u64;
    ctx.dead_letters.put_until_ok(entries).await;
    ctx.metrics.add(
        "defender_dead_letters_total",
        &[("sink", &ctx.name), ("reason", kind)],
        n,
    );
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

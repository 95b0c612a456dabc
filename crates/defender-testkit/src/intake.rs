//! A local imitation of the Sekoia.io HTTP intake, for end-to-end tests and benchmarks.
//!
//! [`Intake::start`] binds a free port on 127.0.0.1 and serves HTTP/1.1 from a task per
//! connection: keep-alive (unless `Connection: close`), request bodies framed by `Content-Length`
//! or `Transfer-Encoding: chunked`, optionally `Content-Encoding: gzip`. A `POST` to `/batch` (or
//! any path ending in `/batch`, such as `/api/v1/intake-http/batch`) with the body
//! `{"intake_key": "<key>", "jsons": ["<event>", ...]}` answers 200 with
//! `{"event_ids": ["<id>", ...]}`, one id per event, in order. A wrong key answers 401, a body
//! that is not such JSON 400, a body over [`MAX_BODY_BYTES`] (after decompression) 413.
//!
//! [`Faults`] make it answer 429/500/503, drop connections or answer slowly, at random, so that
//! retry paths can be tested; the events of a refused request are not recorded.

use std::collections::hash_map::RandomState;
use std::fmt::{self, Write as _};
use std::hash::BuildHasher as _;
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// The largest request body accepted, after decompression (10 MiB); a larger one gets 413.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// The largest single event accepted (250 KiB); a larger one gets a `null` id (see [`Intake`]).
pub const MAX_EVENT_BYTES: usize = 250 * 1024;
/// The largest request head (request line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Faults injected at random into the answers to batch requests; see [`Intake::set_faults`].
///
/// Each request draws one number: the probabilities of `status_429`, `status_500`, `status_503`
/// and `drop_connection` are stacked in that order (if they add up to more than 1, the earlier
/// ones win). `slow` is drawn separately and only delays the answer.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability of answering 429 with `Retry-After: <retry_after_secs>`.
    pub status_429: f64,
    /// The `Retry-After` of 429 answers, in seconds (default 1; 0 is allowed).
    pub retry_after_secs: u64,
    /// Probability of answering 500.
    pub status_500: f64,
    /// Probability of answering 503.
    pub status_503: f64,
    /// Probability of reading the request, then closing the connection without answering.
    pub drop_connection: f64,
    /// Probability of waiting `slow_delay` before handling the request (the events are recorded;
    /// a client that gives up meanwhile may still see them accepted, as with a real server).
    pub slow: f64,
    /// How long a slow answer waits.
    pub slow_delay: Duration,
    /// The intake is "down": every batch request gets 503.
    pub down: bool,
    /// Seed of the random draws (reseeded at each [`Intake::set_faults`]); `None`: random.
    pub seed: Option<u64>,
}

impl Default for Faults {
    /// No faults; `retry_after_secs` 1.
    fn default() -> Self {
        Self {
            status_429: 0.0,
            retry_after_secs: 1,
            status_500: 0.0,
            status_503: 0.0,
            drop_connection: 0.0,
            slow: 0.0,
            slow_delay: Duration::ZERO,
            down: false,
            seed: None,
        }
    }
}

/// A running imitation of the Sekoia.io HTTP intake on 127.0.0.1. Stops when dropped.
///
/// An event over [`MAX_EVENT_BYTES`] does not fail its batch: the other events are accepted and
/// the refused one's slot in `event_ids` is `null`. This is our imitation of the intake's rule
/// that in a batch the other events go on and the refused one is reported.
///
/// Events are taken as they come (each is the text of one `jsons` entry; it is not parsed).
/// Counters are totals since the start; [`Intake::take_events`] does not reset them.
pub struct Intake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    key: String,
    faults: Mutex<Faults>,
    rng: AtomicU64,
    store_events: AtomicBool,
    events: Mutex<Vec<String>>,
    event_count: AtomicUsize,
    requests: AtomicUsize,
    gzip_requests: AtomicUsize,
    faults_injected: AtomicUsize,
    slowed: AtomicUsize,
    connections: AtomicUsize,
    id_base: u64,
    next_id: AtomicU64,
    notify: Notify,
}

impl fmt::Debug for Intake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intake")
            .field("addr", &self.addr)
            .field("event_count", &self.event_count())
            .field("requests", &self.requests())
            .field("faults_injected", &self.faults_injected())
            .finish_non_exhaustive()
    }
}

impl Intake {
    /// Binds a free port on 127.0.0.1 and spawns the server; requests must carry `key`.
    pub async fn start(key: &str) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            faults: Mutex::new(Faults::default()),
            rng: AtomicU64::new(RandomState::new().hash_one(1u8)),
            store_events: AtomicBool::new(true),
            events: Mutex::new(Vec::new()),
            event_count: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            gzip_requests: AtomicUsize::new(0),
            faults_injected: AtomicUsize::new(0),
            slowed: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            id_base: RandomState::new().hash_one(2u8),
            next_id: AtomicU64::new(0),
            notify: Notify::new(),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self { addr, shared, task })
    }

    /// The base URL, `http://127.0.0.1:PORT`; clients post to `{url}/batch`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `{url}/batch`.
    pub fn batch_url(&self) -> String {
        format!("http://{}/batch", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every accepted event not yet taken, in arrival order (empty when not storing events).
    pub fn events(&self) -> Vec<String> {
        lock(&self.shared.events).clone()
    }

    /// Removes and returns the stored events.
    pub fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.shared.events))
    }

    /// How many events were accepted (stored or not).
    pub fn event_count(&self) -> usize {
        self.shared.event_count.load(SeqCst)
    }

    /// How many batch requests were answered 200.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(SeqCst)
    }

    /// How many of those had a gzip body.
    pub fn gzip_requests(&self) -> usize {
        self.shared.gzip_requests.load(SeqCst)
    }

    /// How many faults were injected (429, 500, 503, "down" answers and dropped connections;
    /// slow answers are counted by [`Intake::slowed`]).
    pub fn faults_injected(&self) -> usize {
        self.shared.faults_injected.load(SeqCst)
    }

    /// How many answers were delayed by [`Faults::slow`].
    pub fn slowed(&self) -> usize {
        self.shared.slowed.load(SeqCst)
    }

    /// How many TCP connections were accepted (keep-alive reuses them).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(SeqCst)
    }

    /// Waits until at least `n` events were accepted; `false` if `timeout` passes first.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Created before the check, so a notification in between is not lost.
            let notified = self.shared.notify.notified();
            if self.event_count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.event_count() >= n;
            }
        }
    }

    /// Replaces the faults injected from now on (and reseeds the draws).
    pub fn set_faults(&self, faults: Faults) {
        let seed = faults.seed.unwrap_or_else(|| RandomState::new().hash_one(3u8));
        self.shared.rng.store(seed, SeqCst);
        *lock(&self.shared.faults) = faults;
    }

    /// Whether to keep accepted events for [`Intake::events`] (the default), or only count them,
    /// for benchmarks.
    pub fn set_store_events(&self, keep: bool) {
        self.shared.store_events.store(keep, SeqCst);
    }

    /// Stops the server and closes its connections (as dropping it does).
    pub fn shutdown(self) {}
}

impl Drop for Intake {
    fn drop(&mut self) {
        // Dropping the accept loop drops its `JoinSet`, which aborts the connection tasks.
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.connections.fetch_add(1, SeqCst);
                    connections.spawn(serve(Arc::clone(&shared), stream));
                }
                // Out of file descriptors, say: wait a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

enum HttpError {
    /// The peer closed or the socket failed: nothing to answer.
    Io,
    Bad(&'static str),
    TooLarge,
}

#[derive(Default)]
struct Head {
    method: String,
    path: String,
    close: bool,
    content_length: usize,
    chunked: bool,
    encoding: Option<String>,
    expect_continue: bool,
    key_header: Option<String>,
}

struct Response {
    status: u16,
    body: String,
    retry_after: Option<u64>,
}

impl Response {
    fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "status": status, "message": message }).to_string();
        Self {
            status,
            body,
            retry_after: None,
        }
    }
}

enum Fault {
    Status(u16),
    Drop,
}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(16 * 1024),
        pos: 0,
    };
    loop {
        let head = match conn.head().await {
            Ok(Some(head)) => head,
            Ok(None) | Err(HttpError::Io) => return,
            Err(e) => return conn.refuse(&e).await,
        };
        if head.expect_continue && conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
            return;
        }
        let body = match conn.body(&head).await {
            Ok(body) => body,
            Err(HttpError::Io) => return,
            Err(e) => return conn.refuse(&e).await,
        };
        let response = if !head.path.ends_with("/batch") {
            Response::error(404, "not found")
        } else if head.method != "POST" {
            Response::error(405, "use POST")
        } else {
            let (fault, delay) = shared.draw();
            if let Some(delay) = delay {
                shared.slowed.fetch_add(1, SeqCst);
                tokio::time::sleep(delay).await;
            }
            match fault {
                Some(Fault::Drop) => return,
                Some(Fault::Status(status)) => {
                    let mut response = Response::error(status, "fault injected by the test intake");
                    if status == 429 {
                        response.retry_after = Some(lock(&shared.faults).retry_after_secs);
                    }
                    response
                }
                None => shared.batch(&head, &conn.buf[body]),
            }
        };
        if conn.send(&response, head.close).await.is_err() || head.close {
            return;
        }
    }
}

impl Shared {
    /// A uniform draw in [0, 1) (splitmix64 over an atomic counter: no lock).
    fn random(&self) -> f64 {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self.rng.fetch_add(GOLDEN, SeqCst).wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        #[allow(clippy::cast_precision_loss, reason = "53 bits fit an f64 exactly")]
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        unit
    }

    /// The fault to inject into this request, if any, and the delay before answering.
    fn draw(&self) -> (Option<Fault>, Option<Duration>) {
        let faults = lock(&self.faults).clone();
        let fault = if faults.down {
            Some(Fault::Status(503))
        } else {
            let r = self.random();
            let mut stacked = 0.0;
            [
                (faults.status_429, Fault::Status(429)),
                (faults.status_500, Fault::Status(500)),
                (faults.status_503, Fault::Status(503)),
                (faults.drop_connection, Fault::Drop),
            ]
            .into_iter()
            .find(|(p, _)| {
                stacked += p.max(0.0);
                r < stacked
            })
            .map(|(_, fault)| fault)
        };
        if fault.is_some() {
            self.faults_injected.fetch_add(1, SeqCst);
        }
        let slow = faults.slow > 0.0 && self.random() < faults.slow;
        (fault, slow.then_some(faults.slow_delay))
    }

    /// Handles a batch body: checks, records the accepted events, answers their ids.
    fn batch(&self, head: &Head, body: &[u8]) -> Response {
        // Events stay raw JSON strings unless they are kept: a bench's intake must cost little.
        #[derive(Deserialize)]
        struct Batch<'a> {
            intake_key: Option<String>,
            #[serde(borrow)]
            jsons: Vec<&'a serde_json::value::RawValue>,
        }

        let decoded = match decode(head, body) {
            Ok(d) => d,
            Err(response) => return response,
        };
        let body: &[u8] = decoded.as_deref().unwrap_or(body);
        let batch: Batch<'_> = match serde_json::from_slice(body) {
            Ok(batch) => batch,
            Err(e) => return Response::error(400, &format!("invalid batch: {e}")),
        };
        if let Some(i) = batch.jsons.iter().position(|e| !e.get().starts_with('"')) {
            return Response::error(400, &format!("invalid batch: jsons[{i}] is not a string"));
        }
        // An escaped string is never shorter than its text: only long ones need decoding.
        let too_large = |e: &serde_json::value::RawValue| {
            e.get().len() > MAX_EVENT_BYTES + 2
                && serde_json::from_str::<String>(e.get()).map_or(true, |t| t.len() > MAX_EVENT_BYTES)
        };
        match batch.intake_key.as_deref().or(head.key_header.as_deref()) {
            None => return Response::error(400, "missing intake_key"),
            Some(key) if key != self.key => return Response::error(401, "invalid intake key"),
            Some(_) => {}
        }
        let first = self.next_id.fetch_add(batch.jsons.len() as u64, SeqCst);
        let mut out = String::with_capacity(16 + 39 * batch.jsons.len());
        out.push_str("{\"event_ids\":[");
        for (i, (event, n)) in batch.jsons.iter().zip(first..).enumerate() {
            if i > 0 {
                out.push(',');
            }
            if too_large(event) {
                out.push_str("null");
            } else {
                // A UUID-shaped id, written by hand: `write!` per event was a visible cost in benches.
                let (a, b) = (self.id_base, n);
                out.push('"');
                push_hex(&mut out, a >> 32, 8);
                out.push('-');
                push_hex(&mut out, (a >> 16) & 0xffff, 4);
                out.push_str("-4");
                push_hex(&mut out, a & 0xfff, 3);
                out.push_str("-8");
                push_hex(&mut out, (b >> 48) & 0xfff, 3);
                out.push('-');
                push_hex(&mut out, b & 0xffff_ffff_ffff, 12);
                out.push('"');
            }
        }
        out.push_str("]}");
        let accepted: Vec<_> = batch.jsons.into_iter().filter(|e| !too_large(e)).collect();
        if self.store_events.load(SeqCst) {
            let texts = accepted
                .iter()
                .map(|e| serde_json::from_str::<String>(e.get()).expect("a JSON string"));
            lock(&self.events).extend(texts);
        }
        self.event_count.fetch_add(accepted.len(), SeqCst);
        self.requests.fetch_add(1, SeqCst);
        if decoded.is_some() {
            self.gzip_requests.fetch_add(1, SeqCst);
        }
        self.notify.notify_waiters();
        Response {
            status: 200,
            body: out,
            retry_after: None,
        }
    }
}

/// One connection: `buf[pos..]` is read but not yet consumed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    /// Reads more bytes; the end of the stream is an error.
    async fn fill(&mut self) -> Result<(), HttpError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(HttpError::Io),
            Ok(_) => Ok(()),
        }
    }

    /// Makes sure `n` unconsumed bytes are buffered.
    async fn need(&mut self, n: usize) -> Result<(), HttpError> {
        let missing = n.saturating_sub(self.buf.len() - self.pos);
        self.buf.reserve(missing);
        while self.buf.len() - self.pos < n {
            self.fill().await?;
        }
        Ok(())
    }

    /// The end (after the CRLF) of the line starting at `pos`.
    async fn line_end(&mut self) -> Result<usize, HttpError> {
        let mut from = self.pos;
        loop {
            if let Some(i) = find(&self.buf[from..], b"\r\n") {
                return Ok(from + i + 2);
            }
            if self.buf.len() - self.pos > MAX_HEAD_BYTES {
                return Err(HttpError::Bad("line too long"));
            }
            from = self.buf.len().saturating_sub(1).max(self.pos);
            self.fill().await?;
        }
    }

    /// The next request head, `None` when the client closes between requests.
    async fn head(&mut self) -> Result<Option<Head>, HttpError> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        if self.buf.is_empty() && self.buf.capacity() > 1024 * 1024 {
            self.buf.shrink_to(16 * 1024);
        }
        let mut from = 0;
        let end = loop {
            if let Some(i) = find(&self.buf[from..], b"\r\n\r\n") {
                break from + i + 4;
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(HttpError::Bad("request head too large"));
            }
            from = self.buf.len().saturating_sub(3);
            if self.buf.is_empty() {
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => continue,
                }
            }
            self.fill().await?;
        };
        let head = parse_head(&self.buf[..end])?;
        self.pos = end;
        Ok(Some(head))
    }

    /// Reads the body; returns where it lies in `buf` (chunked bodies are joined in place).
    async fn body(&mut self, head: &Head) -> Result<Range<usize>, HttpError> {
        let start = self.pos;
        if !head.chunked {
            let n = head.content_length;
            if n > MAX_BODY_BYTES {
                return Err(HttpError::TooLarge);
            }
            self.need(n).await?;
            self.pos += n;
            return Ok(start..start + n);
        }
        let mut end = start;
        loop {
            let line_end = self.line_end().await?;
            let size = std::str::from_utf8(&self.buf[self.pos..line_end - 2])
                .ok()
                .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok())
                .ok_or(HttpError::Bad("bad chunk size"))?;
            self.pos = line_end;
            if size == 0 {
                break;
            }
            if size > MAX_BODY_BYTES || end - start + size > MAX_BODY_BYTES {
                return Err(HttpError::TooLarge);
            }
            self.need(size + 2).await?;
            if &self.buf[self.pos + size..self.pos + size + 2] != b"\r\n" {
                return Err(HttpError::Bad("bad chunk"));
            }
            self.buf.copy_within(self.pos..self.pos + size, end);
            end += size;
            self.pos += size + 2;
        }
        // Trailers, up to the empty line.
        loop {
            let line_end = self.line_end().await?;
            let empty = line_end - self.pos == 2;
            self.pos = line_end;
            if empty {
                return Ok(start..end);
            }
        }
    }

    async fn send(&mut self, response: &Response, close: bool) -> io::Result<()> {
        let reason = match response.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            415 => "Unsupported Media Type",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = String::with_capacity(response.body.len() + 160);
        let _ = write!(
            out,
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            response.status,
            response.body.len()
        );
        if let Some(secs) = response.retry_after {
            let _ = write!(out, "Retry-After: {secs}\r\n");
        }
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&response.body);
        self.stream.write_all(out.as_bytes()).await
    }

    /// Answers a request that cannot be read to the end, then closes gracefully: the client's
    /// unread bytes are drained for a moment, so that it gets the answer rather than a reset.
    async fn refuse(mut self, error: &HttpError) {
        let response = match error {
            HttpError::TooLarge => Response::error(413, "request body too large"),
            HttpError::Bad(why) => Response::error(400, why),
            HttpError::Io => return,
        };
        if self.send(&response, true).await.is_err() || self.stream.shutdown().await.is_err() {
            return;
        }
        let mut sink = vec![0; 64 * 1024];
        let drain = async { while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn parse_head(raw: &[u8]) -> Result<Head, HttpError> {
    let text = std::str::from_utf8(raw).map_err(|_| HttpError::Bad("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Bad("bad request line"));
    };
    let mut head = Head {
        method: method.to_owned(),
        path: target.split('?').next().unwrap_or_default().to_owned(),
        ..Head::default()
    };
    head.close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(HttpError::Bad("unsupported HTTP version")),
    };
    for line in lines.take_while(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(HttpError::Bad("bad header line"))?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length = value.parse().map_err(|_| HttpError::Bad("bad Content-Length"))?;
            }
            "transfer-encoding" => {
                head.chunked = value.to_ascii_lowercase().ends_with("chunked");
            }
            "content-encoding" => head.encoding = Some(value.to_ascii_lowercase()),
            "expect" => head.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "x-sekoiaio-intake-key" => head.key_header = Some(value.to_owned()),
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        head.close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        head.close = false;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(head)
}

/// `v` as `digits` lowercase hex digits (zero-padded; higher digits dropped).
fn push_hex(out: &mut String, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        let d = u32::try_from((v >> (4 * i)) & 0xf).expect("one hex digit");
        out.push(char::from_digit(d, 16).expect("below 16"));
    }
}

/// The request body, gunzipped when it says so (`None`: as it came); an error answer when it
/// cannot be read or is too large.
fn decode(head: &Head, body: &[u8]) -> Result<Option<Vec<u8>>, Response> {
    let gzip = match head.encoding.as_deref() {
        None | Some("identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(_) => return Err(Response::error(415, "unsupported Content-Encoding")),
    };
    let decoded = if gzip {
        let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(MAX_BODY_BYTES + 1));
        let limit = u64::try_from(MAX_BODY_BYTES + 1).unwrap_or(u64::MAX);
        if flate2::read::GzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out)
            .is_err()
        {
            return Err(Response::error(400, "body is not valid gzip"));
        }
        Some(out)
    } else {
        None
    };
    if decoded.as_ref().map_or(body.len(), Vec::len) > MAX_BODY_BYTES {
        return Err(Response::error(413, "request body too large"));
    }
    Ok(decoded)
}

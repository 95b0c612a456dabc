//! The router every source feeds: it takes in-flight budget for a unit, splits its bodies into
//! records, hands each record to the sinks whose [`TableFilter`] takes its table, dead-letters
//! what is not a Defender record, and registers the unit with the source's tracker, whose ticket
//! the sinks acknowledge.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use defender_schema::{RecordRef, parse_record, split_body};
use tokio::sync::{Semaphore, mpsc};

use crate::deadletter::{DeadLetter, DeadLetters};
use crate::delivery::{Day, Delivery, Origin, SinkRecord, TableId};
use crate::metrics::Metrics;
use crate::metrics::families::{BYTES_IN, DEAD_LETTERS, EVENTS_IN, INVALID_RECORDS, RECORDS_IN, TYPE_DRIFT};
use crate::table_filter::TableFilter;
use crate::tracker::TrackerHandle;

/// The dead-letter "sink" name for what no sink could be chosen for (a broken body or record).
pub const FORWARDER: &str = "forwarder";

/// A sink as the router feeds it.
#[derive(Debug, Clone)]
pub struct SinkPort {
    /// Its name.
    pub name: Arc<str>,
    /// Which tables it takes.
    pub filter: TableFilter,
    /// Its queue.
    pub tx: mpsc::Sender<Delivery>,
}

/// Message bodies read together from one stream, ending at `position`.
#[derive(Debug)]
pub struct Unit<P> {
    /// The stream (partition) key, as the tracker knows it.
    pub stream: String,
    /// Where the stream is once this unit is delivered.
    pub position: P,
    /// The bodies with where each came from.
    pub bodies: Vec<(Bytes, Arc<Origin>)>,
    /// How the bodies hold records.
    pub framing: Framing,
}

/// How a unit's bodies hold records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Event Hub message bodies: `{"records": [...]}` envelopes.
    Envelopes,
    /// Complete lines of one record each (the Storage export); each body's `Origin::offset` is
    /// its byte offset in the blob, from which every line's own offset is counted.
    Lines,
}

/// What every router of the pipeline shares.
#[derive(Debug, Clone)]
pub struct RouterShared {
    /// The sinks.
    pub sinks: Vec<SinkPort>,
    /// In-flight budget in KiB of message bodies.
    pub memory: Arc<Semaphore>,
    /// Its size.
    pub memory_kib: u32,
    /// Dead letters.
    pub dead_letters: DeadLetters,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Decode every record and count type drift.
    pub check_records: bool,
    /// Milliseconds since start of the last unit routed (for `--exit-when-idle`).
    pub last_activity: Arc<AtomicU64>,
    /// When the pipeline started.
    pub started: Instant,
    /// Streams whose last checkpoint could not be written at shutdown (see [`crate::tracker::spawn`]).
    pub unsaved: Arc<AtomicU64>,
}

/// Routes the units of one source.
#[derive(Debug)]
pub struct Router<P> {
    source: Arc<str>,
    shared: RouterShared,
    tracker: TrackerHandle<P>,
    unknown: HashMap<String, Arc<str>>,
}

impl<P: Send + 'static> Router<P> {
    /// A router for `source`.
    pub fn new(source: Arc<str>, shared: RouterShared, tracker: TrackerHandle<P>) -> Self {
        Router {
            source,
            shared,
            tracker,
            unknown: HashMap::new(),
        }
    }

    /// Routes one unit: waits for in-flight budget, splits, hands records to sinks (waiting while
    /// their queues are full), dead-letters what is broken.
    pub async fn route(&mut self, unit: Unit<P>) {
        let read_at = Instant::now();
        let bytes: usize = unit.bodies.iter().map(|(b, _)| b.len()).sum();
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.shared.memory_kib);
        let permit = self
            .shared
            .memory
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the budget is never closed");
        self.touch();
        let ack = self.tracker.register(&unit.stream, unit.position, Some(permit));
        let m = self.shared.metrics.clone();
        m.add(&EVENTS_IN, [&self.source], unit.bodies.len() as u64);
        m.add(&BYTES_IN, [&self.source], bytes as u64);
        let mut out = Routed {
            per_sink: vec![Vec::new(); self.shared.sinks.len()],
            dead: Vec::new(),
            per_table: Vec::new(),
        };
        for (body, origin) in &unit.bodies {
            match unit.framing {
                Framing::Envelopes => self.route_envelope(&mut out, body, origin),
                Framing::Lines => self.route_lines(&mut out, body, origin),
            }
        }
        for (table, n) in &out.per_table {
            m.add(&RECORDS_IN, [&self.source, table.name()], *n);
        }
        self.dead_letter(out.dead, &unit.stream).await;
        for (records, sink) in out.per_sink.into_iter().zip(&self.shared.sinks) {
            if records.is_empty() {
                continue;
            }
            let delivery = Delivery {
                records,
                ack: ack.clone(),
                read_at,
            };
            if let Err(mpsc::error::SendError(d)) = sink.tx.send(delivery).await {
                // The sink stopped (its output closed): the unit stays undelivered.
                tracing::error!(sink = %sink.name, "sink is gone; its records stay unacknowledged");
                drop(d);
            }
        }
        ack.ack();
        self.touch();
    }

    /// A message body: an envelope of records, each routed on its own; a broken body or record
    /// is dead-lettered in its place.
    fn route_envelope(&mut self, out: &mut Routed, body: &Bytes, origin: &Arc<Origin>) {
        let records = match split_body(body) {
            Ok(records) => records,
            Err(e) => {
                out.dead
                    .push(DeadLetter::new(FORWARDER, origin, None, e.to_string(), body));
                return;
            }
        };
        for r in records {
            match r {
                Ok(r) => self.push(out, body, &r, origin),
                Err(bad) => {
                    let reason = format!("record {} of the message: {}", bad.index, bad.error);
                    out.dead
                        .push(DeadLetter::new(FORWARDER, origin, None, reason, bad.raw.as_bytes()));
                }
            }
        }
    }

    /// Writes what is not a Defender record to the dead-letter store (until that works).
    async fn dead_letter(&self, dead: Vec<DeadLetter>, stream: &str) {
        if dead.is_empty() {
            return;
        }
        let n = dead.len() as u64;
        tracing::warn!(source = %self.source, stream = %stream, count = n, reason = %dead[0].reason, "dead-lettering what is not a Defender record");
        self.shared.dead_letters.put_until_ok(dead).await;
        self.shared.metrics.add(&INVALID_RECORDS, [&self.source], n);
        self.shared.metrics.add(&DEAD_LETTERS, [FORWARDER, "invalid"], n);
    }

    /// One good record: counted, checked, and queued for each sink that takes its table.
    fn push(&mut self, out: &mut Routed, body: &Bytes, r: &RecordRef<'_>, origin: &Arc<Origin>) {
        let table = match r.table() {
            Some(t) => TableId::Known(t),
            None => TableId::Other(self.unknown_name(r.table_name())),
        };
        if self.shared.check_records {
            check(&self.shared.metrics, &table, r);
        }
        crate::delivery::tally(&mut out.per_table, &table);
        let record = SinkRecord {
            raw: body.slice_ref(r.raw().as_bytes()),
            day: r.time().and_then(Day::of),
            table,
            origin: origin.clone(),
        };
        for (i, sink) in self.shared.sinks.iter().enumerate() {
            if sink.filter.accepts(&record.table) {
                out.per_sink[i].push(record.clone());
            }
        }
    }

    /// A body of complete lines, one record each; blank lines are skipped, a line that is not a
    /// Defender record is dead-lettered with its own byte offset.
    fn route_lines(&mut self, out: &mut Routed, body: &Bytes, origin: &Arc<Origin>) {
        let base = origin
            .offset
            .as_deref()
            .and_then(|o| o.parse::<u64>().ok())
            .unwrap_or(0);
        let mut start = 0usize;
        // memchr finds line ends a vector at a time; a byte loop would read every byte singly.
        for end in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
            let line = &body[start..end];
            let offset = base + start as u64;
            start = end + 1;
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            let at = Arc::new(Origin {
                offset: Some(offset.to_string()),
                ..Origin::clone(origin)
            });
            let parsed = std::str::from_utf8(trimmed)
                .map_err(|e| format!("line is not UTF-8 (byte {})", e.valid_up_to()))
                .and_then(|text| parse_record(text).map_err(|e| e.to_string()));
            match parsed {
                Ok(r) => self.push(out, body, &r, &at),
                Err(reason) => {
                    let reason = format!("line at byte {offset}: {reason}");
                    out.dead.push(DeadLetter::new(FORWARDER, &at, None, reason, trimmed));
                }
            }
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.shared.last_activity.store(ms, Ordering::Relaxed);
    }

    fn unknown_name(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.unknown.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        if self.unknown.len() < 10_000 {
            self.unknown.insert(name.to_owned(), n.clone());
        }
        n
    }
}

/// What one unit routes to: records per sink, dead letters, counts per table.
struct Routed {
    per_sink: Vec<Vec<SinkRecord>>,
    dead: Vec<DeadLetter>,
    per_table: Vec<(TableId, u64)>,
}

fn check(m: &Metrics, table: &TableId, r: &defender_schema::RecordRef<'_>) {
    match r.decode() {
        Ok(event) => {
            for d in event.type_drift() {
                m.add(&TYPE_DRIFT, [table.name(), d.column], 1);
            }
        }
        Err(e) => m.add(&TYPE_DRIFT, [table.name(), e.column.as_deref().unwrap_or("?")], 1),
    }
}

//! What flows from sources to sinks, and the acknowledgements that flow back.
//!
//! Every event a source reads gets one ticket. The router hands each sink that routes any of the
//! event's records a [`Delivery`] holding an [`Ack`] on that ticket. The ticket completes when
//! its last `Ack` is gone: successfully when every one of them was [`Ack::ack`]ed, as a failure
//! when any was dropped without it (a sink that gave up, a task that was aborted). Only successful
//! tickets let a checkpoint pass (see [`crate::tracker`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use defender_schema::Table;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedSender;

/// A table: one the schema crate knows, or the name an unknown category carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TableId {
    /// A table with a typed model.
    Known(Table),
    /// `AdvancedHunting-<name>` for a table the schema crate does not know (yet).
    Other(Arc<str>),
}

impl TableId {
    /// The table name (`DeviceProcessEvents`).
    pub fn name(&self) -> &str {
        match self {
            TableId::Known(t) => t.name(),
            TableId::Other(name) => name,
        }
    }

    /// Whether the schema crate knows this table.
    pub fn is_known(&self) -> bool {
        matches!(self, TableId::Known(_))
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Counts one more for `table` in `counts`. A message or a batch holds one table or a few, so a
/// short list searched from its newest entry beats hashing every record.
pub(crate) fn tally<T: PartialEq + Clone>(counts: &mut Vec<(T, u64)>, table: &T) {
    match counts.iter_mut().rev().find(|(seen, _)| seen == table) {
        Some((_, n)) => *n += 1,
        None => counts.push((table.clone(), 1)),
    }
}

/// Where an event came from, for dead letters and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The configured source name.
    pub source: Arc<str>,
    /// The partition (`hub/consumer-group/partition`) or blob it was read from.
    pub partition: Arc<str>,
    /// Its sequence number in the partition (hubs only).
    pub sequence_number: Option<i64>,
    /// Its offset: the hub's offset string, or the byte offset in a blob.
    pub offset: Option<String>,
}

/// A UTC day, `YYYY-MM-DD`, as taken from a record's `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Day([u8; 10]);

impl Day {
    /// The day of an RFC 3339 time (`2024-05-14T09:31:07Z` -> `2024-05-14`), if it starts with one.
    pub fn of(time: &str) -> Option<Day> {
        let b = time.as_bytes().get(..10)?;
        let digits = [0, 1, 2, 3, 5, 6, 8, 9];
        if b[4] != b'-' || b[7] != b'-' || !digits.iter().all(|&i| b[i].is_ascii_digit()) {
            return None;
        }
        let month = (b[5] - b'0') * 10 + (b[6] - b'0');
        let day = (b[8] - b'0') * 10 + (b[9] - b'0');
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return None;
        }
        let mut out = [0; 10];
        out.copy_from_slice(b);
        Some(Day(out))
    }

    /// Today, in UTC.
    pub fn today() -> Day {
        let s = chrono::Utc::now().format("%Y-%m-%d").to_string();
        Day::of(&s).expect("chrono formats a valid day")
    }

    /// `YYYY-MM-DD`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked ASCII")
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Defender record on its way to a sink: the exact bytes the source delivered.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    /// Its table.
    pub table: TableId,
    /// The record's JSON, exactly as it arrived (a slice of the message body, not a copy).
    pub raw: Bytes,
    /// The UTC day of its `time`, when it has one.
    pub day: Option<Day>,
    /// The event it came from.
    pub origin: Arc<Origin>,
}

/// Records for one sink, with the acknowledgement that releases them.
#[derive(Debug)]
pub struct Delivery {
    /// The records, in source order.
    pub records: Vec<SinkRecord>,
    /// Acknowledge once every record is delivered or dead-lettered.
    pub ack: Ack,
    /// When the source read them (for the delivery-latency metric).
    pub read_at: std::time::Instant,
}

/// A completed ticket, as the tracker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The stream (partition) it belongs to, as registered.
    pub stream: usize,
    /// Its ticket number.
    pub ticket: u64,
    /// Whether every holder acknowledged it.
    pub ok: bool,
}

struct Ticket {
    stream: usize,
    number: u64,
    failed: AtomicBool,
    done: UnboundedSender<Completion>,
    _memory: Option<OwnedSemaphorePermit>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let _ = self.done.send(Completion {
            stream: self.stream,
            ticket: self.number,
            ok: !self.failed.load(Ordering::Acquire),
        });
    }
}

/// A hold on a ticket. Dropping it without [`Ack::ack`] fails the ticket, so that the checkpoint
/// cannot pass its event.
pub struct Ack {
    ticket: Arc<Ticket>,
    acked: bool,
}

impl Ack {
    /// A new ticket: reports to `done` once every `Ack` on it is gone, and holds `memory` until then.
    pub fn ticket(
        stream: usize,
        ticket: u64,
        done: UnboundedSender<Completion>,
        memory: Option<OwnedSemaphorePermit>,
    ) -> Ack {
        Ack {
            ticket: Arc::new(Ticket {
                stream,
                number: ticket,
                failed: AtomicBool::new(false),
                done,
                _memory: memory,
            }),
            acked: false,
        }
    }

    /// This holder's part is delivered.
    pub fn ack(mut self) {
        self.acked = true;
    }
}

impl Clone for Ack {
    /// Another holder on the same ticket, which must acknowledge on its own.
    fn clone(&self) -> Self {
        Ack {
            ticket: self.ticket.clone(),
            acked: false,
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.acked {
            self.ticket.failed.store(true, Ordering::Release);
        }
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack")
            .field("stream", &self.ticket.stream)
            .field("ticket", &self.ticket.number)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn a_ticket_completes_when_its_last_holder_acks() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let a = Ack::ticket(3, 7, tx, None);
        let b = a.clone();
        a.ack();
        assert!(rx.try_recv().is_err(), "one holder left");
        b.ack();
        assert_eq!(
            rx.try_recv().unwrap(),
            Completion {
                stream: 3,
                ticket: 7,
                ok: true
            }
        );
    }

    #[test]
    fn a_holder_dropped_without_ack_fails_the_ticket() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let a = Ack::ticket(0, 1, tx, None);
        let b = a.clone();
        drop(b);
        a.ack();
        assert!(!rx.try_recv().unwrap().ok);
    }

    #[test]
    fn days_come_from_rfc3339_times_only() {
        assert_eq!(Day::of("2024-05-14T09:31:07.4473310Z").unwrap().as_str(), "2024-05-14");
        assert!(Day::of("2024-13-14T00:00:00Z").is_none());
        assert!(Day::of("14/05/2024").is_none());
        assert!(Day::of("2024-05").is_none());
        assert!(Day::of("../../etc/pas").is_none());
    }
}

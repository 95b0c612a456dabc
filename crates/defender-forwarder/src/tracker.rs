//! Turns completed tickets into checkpoints: per stream (partition or blob), the highest
//! position up to which every ticket completed successfully, in the order they were read.
//!
//! Sinks finish out of order (requests in flight, one sink faster than another), so completions
//! are kept per stream until the tickets before them are done too. A failed ticket (a sink that
//! dropped its part undelivered) stops its stream's checkpoint for good: on restart that stream is
//! read again from the last checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;

use crate::delivery::{Ack, Completion};

/// Writes a checkpoint for a stream.
#[async_trait]
pub trait Committer: Send + Sync + 'static {
    /// A position in a stream.
    type Position: Clone + fmt::Debug + Send + Sync + 'static;

    /// Records that everything up to and including `position` is delivered. `Ok(false)` means
    /// the position is no longer ours to commit (ownership moved): not an error.
    async fn commit(&self, stream: &str, position: &Self::Position) -> Result<bool, String>;
}

enum Msg<P> {
    Register { stream: usize, ticket: u64, position: P },
    Done(Completion),
}

/// Counts the tracker publishes.
#[derive(Debug, Default)]
pub struct TrackerStats {
    /// Tickets registered and not yet completed.
    pub in_flight: AtomicUsize,
    /// Checkpoints written.
    pub commits: AtomicU64,
    /// Checkpoint writes that failed (retried).
    pub commit_errors: AtomicU64,
}

/// The sending side: registers tickets in read order.
pub struct TrackerHandle<P> {
    tx: mpsc::UnboundedSender<Msg<P>>,
    done: mpsc::UnboundedSender<Completion>,
    next: Arc<AtomicU64>,
    streams: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    names: Arc<Mutex<Vec<Arc<str>>>>,
    stats: Arc<TrackerStats>,
}

impl<P> Clone for TrackerHandle<P> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            done: self.done.clone(),
            next: self.next.clone(),
            streams: self.streams.clone(),
            names: self.names.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<P> fmt::Debug for TrackerHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerHandle").finish_non_exhaustive()
    }
}

impl<P: Send + 'static> TrackerHandle<P> {
    /// A ticket for the next event of `stream`, which ends at `position`. Register events of one
    /// stream in the order they were read.
    pub fn register(&self, stream: &str, position: P, memory: Option<OwnedSemaphorePermit>) -> Ack {
        let index = {
            let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(&i) = streams.get(stream) {
                i
            } else {
                let name: Arc<str> = Arc::from(stream);
                let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                names.push(name.clone());
                streams.insert(name, names.len() - 1);
                names.len() - 1
            }
        };
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Register {
            stream: index,
            ticket,
            position,
        });
        Ack::ticket(index, ticket, self.done.clone(), memory)
    }

    /// The tracker's counters.
    pub fn stats(&self) -> &Arc<TrackerStats> {
        &self.stats
    }
}

struct Pending<P> {
    position: P,
    done: Option<bool>,
}

#[derive(Default)]
struct Stream<P> {
    pending: BTreeMap<u64, Pending<P>>,
    /// Highest contiguous delivered position not yet committed.
    to_commit: Option<P>,
    blocked: bool,
}

/// Starts a tracker that commits at most every `interval` per stream, and once more when every
/// handle and ticket is gone (retried a few times). Await the returned task for that final
/// commit; streams it could not checkpoint are added to `unsaved`.
pub fn spawn<C: Committer>(
    committer: C,
    interval: Duration,
    unsaved: Arc<AtomicU64>,
) -> (TrackerHandle<C::Position>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let handle = TrackerHandle {
        tx,
        done: done_tx,
        next: Arc::new(AtomicU64::new(0)),
        streams: Arc::default(),
        names: Arc::default(),
        stats: Arc::default(),
    };
    let task = tokio::spawn(run(
        committer,
        interval,
        rx,
        done_rx,
        handle.names.clone(),
        handle.stats.clone(),
        unsaved,
    ));
    (handle, task)
}

async fn run<C: Committer>(
    committer: C,
    interval: Duration,
    mut rx: mpsc::UnboundedReceiver<Msg<C::Position>>,
    mut done: mpsc::UnboundedReceiver<Completion>,
    names: Arc<Mutex<Vec<Arc<str>>>>,
    stats: Arc<TrackerStats>,
    unsaved: Arc<AtomicU64>,
) {
    let mut streams: Vec<Stream<C::Position>> = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut registering = true;
    loop {
        tokio::select! {
            // The timer first, else a busy stream of completions would starve it; then
            // registrations, so that a completion never arrives before its registration.
            biased;
            _ = tick.tick() => commit_all(&committer, &mut streams, &names, &stats).await,
            msg = rx.recv(), if registering => match msg {
                Some(msg) => apply(&mut streams, msg, &stats),
                None => registering = false,
            },
            // Ends when every handle and every ticket is gone.
            c = done.recv() => match c {
                Some(c) => {
                    // Its registration may still sit in the other channel.
                    while let Ok(msg) = rx.try_recv() {
                        apply(&mut streams, msg, &stats);
                    }
                    apply(&mut streams, Msg::Done(c), &stats);
                }
                None => break,
            },
        }
    }
    while let Ok(msg) = rx.try_recv() {
        apply(&mut streams, msg, &stats);
    }
    // The last word: a store that hiccups now would cost a re-read of everything since the last
    // checkpoint, so try a few times.
    for attempt in 0..5u32 {
        commit_all(&committer, &mut streams, &names, &stats).await;
        if streams.iter().all(|s| s.to_commit.is_none()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
    }
    let left = streams.iter().filter(|s| s.to_commit.is_some()).count();
    tracing::error!(
        streams = left,
        "final checkpoints could not be written; what they cover is read again on the next start"
    );
    unsaved.fetch_add(left as u64, Ordering::Relaxed);
}

fn apply<P>(streams: &mut Vec<Stream<P>>, msg: Msg<P>, stats: &TrackerStats) {
    match msg {
        Msg::Register {
            stream,
            ticket,
            position,
        } => {
            if streams.len() <= stream {
                streams.resize_with(stream + 1, || Stream {
                    pending: BTreeMap::new(),
                    to_commit: None,
                    blocked: false,
                });
            }
            streams[stream].pending.insert(ticket, Pending { position, done: None });
        }
        Msg::Done(c) => {
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            let Some(s) = streams.get_mut(c.stream) else { return };
            if let Some(e) = s.pending.get_mut(&c.ticket) {
                e.done = Some(c.ok);
            }
            while let Some(entry) = s.pending.first_entry() {
                match entry.get().done {
                    Some(true) if !s.blocked => s.to_commit = Some(entry.remove().position),
                    Some(false) if !s.blocked => {
                        s.blocked = true;
                        tracing::warn!(
                            ticket = c.ticket,
                            "an event was not delivered; its stream's checkpoint stays before it until restart"
                        );
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}

async fn commit_all<C: Committer>(
    committer: &C,
    streams: &mut [Stream<C::Position>],
    names: &Mutex<Vec<Arc<str>>>,
    stats: &TrackerStats,
) {
    for (i, s) in streams.iter_mut().enumerate() {
        let Some(position) = s.to_commit.take() else { continue };
        let name = names.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i].clone();
        match committer.commit(&name, &position).await {
            Ok(_) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.commit_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stream = %name, error = %e, "checkpoint write failed; retrying");
                // Keep it unless a newer one arrived meanwhile (none can: we hold `streams`).
                s.to_commit = Some(position);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<(String, u32)>>>);

    #[async_trait]
    impl Committer for Log {
        type Position = u32;
        async fn commit(&self, stream: &str, position: &u32) -> Result<bool, String> {
            self.0.lock().unwrap().push((stream.to_owned(), *position));
            Ok(true)
        }
    }

    fn last(log: &Log, stream: &str) -> Option<u32> {
        log.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(s, _)| s == stream)
            .map(|(_, p)| *p)
    }

    #[tokio::test]
    async fn out_of_order_acks_commit_the_highest_contiguous_position() {
        let log = Log::default();
        let (h, task) = spawn(log.clone(), Duration::from_millis(10), Arc::default());
        let a1 = h.register("p0", 1, None);
        let a2 = h.register("p0", 2, None);
        let a3 = h.register("p0", 3, None);
        let b1 = h.register("p1", 10, None);
        a3.ack();
        a2.ack();
        b1.ack();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(last(&log, "p0"), None, "1 is not delivered yet");
        assert_eq!(last(&log, "p1"), Some(10));
        a1.ack();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(last(&log, "p0"), Some(3));
        drop(h);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_ticket_holds_its_stream_back_for_good() {
        let log = Log::default();
        let (h, task) = spawn(log.clone(), Duration::from_millis(10), Arc::default());
        let a1 = h.register("p0", 1, None);
        let a2 = h.register("p0", 2, None);
        let a3 = h.register("p0", 3, None);
        a1.ack();
        drop(a2);
        a3.ack();
        drop(h);
        task.await.unwrap();
        assert_eq!(last(&log, "p0"), Some(1));
    }

    #[tokio::test]
    async fn the_final_commit_waits_for_every_ticket() {
        let log = Log::default();
        let (h, task) = spawn(log.clone(), Duration::from_secs(3600), Arc::default());
        let a1 = h.register("p0", 1, None);
        drop(h);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a1.ack();
        });
        task.await.unwrap();
        late.await.unwrap();
        assert_eq!(last(&log, "p0"), Some(1));
    }
}

//! One partition's read loop: open a receiver, hand over batches in order, drop anything the
//! client replays after reconnecting, reconnect with backoff, stop when ownership is lost.
//!
//! Each partition has its own client (its own AMQP connection), and a watchdog: when nothing
//! arrives for a while it asks the hub whether events are waiting. The 0.16 client can hang
//! without an error after a connection drop (its CBS authorization on the new connection never
//! completes); a partition that sees events waiting twice in a row, or whose client does not
//! answer, throws its client away and starts over from the last event it handed over.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core_amqp::message::AmqpMessageBody;
use azure_messaging_eventhubs::error::ErrorKind;
use azure_messaging_eventhubs::models::ReceivedEventData;
use azure_messaging_eventhubs::{ConsumerClient, EventReceiver, OpenReceiverOptions, StartLocation, StartPosition};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Batch, Message, PartitionKey, Shared, StartFrom};
use crate::backoff::Backoff;

/// Where the task begins.
pub(super) enum Start {
    /// No checkpoint: the configured start.
    From(StartFrom),
    /// After a checkpointed sequence number.
    After(i64),
    /// After a checkpointed offset (a checkpoint written by another SDK without sequence number).
    AfterOffset(String),
    /// The checkpoints could not be read: ask again before reading anything.
    Retry,
}

pub(super) struct PartitionTask {
    pub shared: Arc<Shared>,
    pub key: Arc<PartitionKey>,
    pub generation: u64,
    pub start: Start,
    pub cancel: CancellationToken,
}

enum PumpEnd {
    Cancelled,
    Stolen,
    Failed(String),
}

/// How long a client call may take before the client counts as stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) async fn run(mut task: PartitionTask) {
    let partition = task.key.partition_id.clone();
    // Our owner level: later owners get higher ones, so the service itself cuts off a previous
    // owner that has not noticed yet. None without a store (several `tail`s may read at once).
    let owner_level = task.shared.store.as_ref().map(|_| {
        i64::try_from(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(i64::MAX)
    });
    let mut last_seq: Option<i64> = None;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(15));
    loop {
        if task.cancel.is_cancelled() {
            return;
        }
        if matches!(task.start, Start::Retry) {
            if !pause(&task.cancel, backoff.next_delay()).await {
                return;
            }
            task.start = task.shared.start_position(&partition).await;
            continue;
        }
        let options = OpenReceiverOptions {
            owner_level,
            prefetch: Some(task.shared.prefetch.load(std::sync::atomic::Ordering::Relaxed)),
            start_position: Some(start_position(last_seq, &task.start)),
            receive_timeout: None,
        };
        let Some(consumer) = connect(&task).await else {
            if !pause(&task.cancel, backoff.next_delay()).await {
                return;
            }
            continue;
        };
        let outcome = match consumer
            .open_receiver_on_partition(partition.clone(), Some(options))
            .await
        {
            Ok(receiver) => {
                let outcome = pump(&task, &consumer, &receiver, &mut last_seq, &mut backoff).await;
                // A receiver or client that will not close must not hold up the rest.
                let _ = tokio::time::timeout(Duration::from_secs(5), receiver.close()).await;
                outcome
            }
            Err(e) => PumpEnd::Failed(format!("cannot open receiver: {e}")),
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), consumer.close()).await;
        match outcome {
            PumpEnd::Cancelled => return,
            PumpEnd::Stolen => {
                task.shared.cut_off(&partition);
                return;
            }
            PumpEnd::Failed(why) => {
                tracing::warn!(partition = %task.key, why, last_seq, "receive failed; reconnecting");
                if !pause(&task.cancel, backoff.next_delay()).await {
                    return;
                }
            }
        }
    }
}

/// Where a (re)opened receiver starts: after the last event handed over, else as the task began.
fn start_position(last_seq: Option<i64>, start: &Start) -> StartPosition {
    match (last_seq, start) {
        (Some(seq), _) | (None, &Start::After(seq)) => after_sequence(seq),
        (None, Start::AfterOffset(offset)) => StartPosition {
            location: StartLocation::Offset(offset.clone()),
            inclusive: false,
        },
        (None, Start::From(from)) => initial(*from),
        (None, Start::Retry) => unreachable!("resolved before opening"),
    }
}

/// A client of its own for this partition (its own AMQP connection); `None` after logging why not.
async fn connect(task: &PartitionTask) -> Option<ConsumerClient> {
    let shared = &task.shared;
    let opened = tokio::time::timeout(
        CALL_TIMEOUT,
        shared
            .config
            .connection
            .open_consumer(&shared.target, &shared.config.consumer_group),
    )
    .await;
    match opened {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::warn!(partition = %task.key, error = %e, "cannot connect; retrying");
            None
        }
        Err(_) => {
            tracing::warn!(partition = %task.key, "connecting timed out; retrying");
            None
        }
    }
}

/// Reads until cancelled or failed, sending batches in order.
async fn pump(
    task: &PartitionTask,
    consumer: &ConsumerClient,
    receiver: &EventReceiver,
    last_seq: &mut Option<i64>,
    backoff: &mut Backoff,
) -> PumpEnd {
    let mut stream = std::pin::pin!(
        receiver
            .stream_events()
            .ready_chunks(task.shared.config.max_batch_events)
    );
    let mut watchdog = Watchdog::new(task, *last_seq);
    loop {
        let chunk = tokio::select! {
            () = task.cancel.cancelled() => return PumpEnd::Cancelled,
            () = tokio::time::sleep(task.shared.config.stall_check) => {
                match watchdog.check(consumer, *last_seq).await {
                    Ok(()) => continue,
                    Err(why) => return PumpEnd::Failed(why),
                }
            }
            chunk = stream.next() => chunk,
        };
        let Some(chunk) = chunk else {
            return PumpEnd::Failed("event stream ended".into());
        };
        let mut messages = Vec::with_capacity(chunk.len());
        let mut failure = None;
        for item in chunk {
            match item {
                Ok(received) => {
                    let Some(seq) = received.sequence_number() else {
                        tracing::error!(partition = %task.key, "event without a sequence number; skipped");
                        continue;
                    };
                    // After a reconnect the client replays from its first filter: drop what was handed over.
                    if last_seq.is_some_and(|last| seq <= last) {
                        continue;
                    }
                    *last_seq = Some(seq);
                    messages.push(Message {
                        body: body_of(&received),
                        sequence_number: seq,
                        offset: received.offset().clone(),
                        enqueued_time: received.enqueued_time(),
                    });
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !messages.is_empty() {
            backoff.reset();
            watchdog.progress();
            let batch = Batch {
                partition: task.key.clone(),
                generation: task.generation,
                messages,
            };
            tokio::select! {
                () = task.cancel.cancelled() => return PumpEnd::Cancelled,
                sent = task.shared.out.send(batch) => if sent.is_err() { return PumpEnd::Cancelled },
            }
        }
        if let Some(e) = failure {
            return if matches!(e.kind, ErrorKind::ConsumerDisconnected(_)) {
                PumpEnd::Stolen
            } else {
                PumpEnd::Failed(e.to_string())
            };
        }
    }
}

/// Tells an idle partition from a stuck client.
struct Watchdog {
    partition: String,
    /// The last sequence number known to be behind us: delivered, checkpointed, or (reading
    /// from latest or from a time) the hub's last event when first asked.
    floor: Option<i64>,
    strikes: u8,
}

impl Watchdog {
    fn new(task: &PartitionTask, last_seq: Option<i64>) -> Self {
        let floor = last_seq.or(match task.start {
            Start::After(seq) => Some(seq),
            Start::From(StartFrom::Earliest) => Some(-1),
            _ => None,
        });
        Self {
            partition: task.key.partition_id.clone(),
            floor,
            strikes: 0,
        }
    }

    fn progress(&mut self) {
        self.strikes = 0;
    }

    /// Called after a quiet `stall_check`; `Err` means the client must be replaced.
    async fn check(&mut self, consumer: &ConsumerClient, last_seq: Option<i64>) -> Result<(), String> {
        let props = match tokio::time::timeout(CALL_TIMEOUT, consumer.get_partition_properties(&self.partition)).await {
            Ok(Ok(props)) => props,
            Ok(Err(e)) => return Err(format!("partition properties failed: {e}")),
            Err(_) => return Err("the client stopped answering".into()),
        };
        let floor = *self.floor.get_or_insert(props.last_enqueued_sequence_number);
        let delivered = last_seq.map_or(floor, |s| s.max(floor));
        if props.last_enqueued_sequence_number > delivered {
            self.strikes += 1;
            tracing::debug!(
                partition = %self.partition,
                waiting = props.last_enqueued_sequence_number - delivered,
                strikes = self.strikes,
                "events waiting at the hub but none arriving"
            );
            if self.strikes >= 2 {
                return Err(format!(
                    "stalled: {} events waiting at the hub, none arriving",
                    props.last_enqueued_sequence_number - delivered
                ));
            }
        } else {
            self.strikes = 0;
        }
        Ok(())
    }
}

fn after_sequence(seq: i64) -> StartPosition {
    StartPosition {
        location: StartLocation::SequenceNumber(seq),
        inclusive: false,
    }
}

fn initial(from: StartFrom) -> StartPosition {
    let location = match from {
        StartFrom::Earliest => StartLocation::Earliest,
        StartFrom::Latest => StartLocation::Latest,
        StartFrom::EnqueuedTime(t) => StartLocation::EnqueuedTime(t),
    };
    StartPosition {
        location,
        inclusive: true,
    }
}

/// Sleeps unless cancelled first; `false` when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

/// The event's body: its message's one data section, as `EventData::body` defines it. Read from
/// the message itself because `event_data()` first clones the body (and the properties) into an
/// `EventData`, which would copy every byte twice on the way to us.
fn body_of(received: &ReceivedEventData) -> Option<Vec<u8>> {
    match &received.raw_amqp_message().body {
        AmqpMessageBody::Binary(sections) if sections.len() == 1 => Some(sections[0].clone()),
        _ => None,
    }
}

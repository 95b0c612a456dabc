//! `kind = "eventhub"`: one hub read by a [`Reader`], each batch routed as one unit and
//! checkpointed once every sink has it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_messaging_eventhubs::CheckpointStore;
use bytes::Bytes;
use defender_eventhub::{Balancing, Batch, Checkpointer, Connection, Identity, Position, Reader, ReaderConfig, Secret};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Framing, Router, RouterShared, Unit};

/// Events fetched ahead across a hub's partitions (at least 2 per partition) when `prefetch`
/// is not configured. Memory grows with it times the message size (up to 1 MB); on a distant
/// hub a larger per-partition `prefetch` keeps the link busy across the round trip.
pub const DEFAULT_HUB_PREFETCH: u32 = 8;
use crate::config::{self, Credential, EventHubSource};
use crate::delivery::Origin;
use crate::tracker::{self, Committer};

/// Builds the reader settings of a configured hub source.
pub fn reader_config(cfg: &EventHubSource) -> Result<ReaderConfig, String> {
    let connection = match (&cfg.connection_string, &cfg.namespace, &cfg.credential) {
        (Some(cs), _, _) => Connection::ConnectionString(cs.0.clone()),
        (None, Some(ns), Some(cred)) => {
            let identity = match cred {
                Credential::ManagedIdentity { client_id } => Identity::ManagedIdentity {
                    client_id: client_id.as_ref().map(|t| t.0.clone()),
                },
                Credential::WorkloadIdentity {
                    tenant_id,
                    client_id,
                    token_file,
                } => Identity::WorkloadIdentity {
                    tenant_id: tenant_id.as_ref().map(|t| t.0.clone()),
                    client_id: client_id.as_ref().map(|t| t.0.clone()),
                    token_file: token_file.as_ref().map(|t| t.0.clone().into()),
                },
                Credential::ClientSecret {
                    tenant_id,
                    client_id,
                    secret,
                } => Identity::ClientSecret {
                    tenant_id: tenant_id.0.clone(),
                    client_id: client_id.0.clone(),
                    secret: Secret::new(secret.0.expose()),
                },
            };
            Connection::Credential {
                namespace: ns.0.clone(),
                credential: identity.credential().map_err(|e| format!("credential: {e}"))?,
            }
        }
        _ => return Err("no connection settings".to_owned()),
    };
    let mut rc = ReaderConfig::new(connection);
    rc.hub = cfg
        .hub
        .as_ref()
        .map(|h| h.0.trim().to_owned())
        .filter(|h| !h.is_empty());
    if let Some(cg) = &cfg.consumer_group {
        rc.consumer_group.clone_from(&cg.0);
    }
    if let Some(start) = &cfg.start {
        rc.start = config::parse_start(start)?;
    }
    match cfg.prefetch {
        Some(n) => rc.prefetch = u32::try_from(n.0).unwrap_or(u32::MAX),
        None => rc.hub_prefetch = Some(DEFAULT_HUB_PREFETCH),
    }
    // A few events per batch keep a unit (and its in-flight memory) small.
    rc.max_batch_events = 16;
    if let Some(owner) = &cfg.owner_id {
        rc.owner_id.clone_from(&owner.0);
    }
    let mut balancing = Balancing::default();
    if let Some(s) = cfg.ownership_update_interval {
        balancing.update_interval = s.0;
    }
    if let Some(s) = cfg.ownership_expiry {
        balancing.expiry = s.0;
    }
    rc.balancing = balancing;
    Ok(rc)
}

struct HubCommitter {
    checkpointer: Checkpointer,
    source: Arc<str>,
    metrics: Arc<crate::metrics::Metrics>,
}

#[async_trait]
impl Committer for HubCommitter {
    type Position = Position;

    async fn commit(&self, stream: &str, position: &Position) -> Result<bool, String> {
        let r = self.checkpointer.checkpoint(position).await;
        match &r {
            Ok(true) => {
                self.metrics
                    .add("defender_checkpoints_total", &[("source", &self.source)], 1);
                #[allow(clippy::cast_precision_loss)]
                self.metrics.set(
                    "defender_partition_checkpoint_sequence",
                    &[("source", &self.source), ("partition", stream)],
                    position.sequence_number as f64,
                );
            }
            Ok(false) => {}
            Err(_) => self
                .metrics
                .add("defender_checkpoint_errors_total", &[("source", &self.source)], 1),
        }
        tracing::trace!(source = %self.source, stream, sequence = position.sequence_number, "checkpoint");
        r.map_err(|e| e.to_string())
    }
}

/// A hub being read.
#[derive(Debug)]
pub struct RunningHub {
    /// The task; it ends after `stop`, once what was read is delivered and checkpointed.
    pub task: JoinHandle<()>,
}

/// Connects to the hub and starts routing its batches. Fails when the hub cannot be opened.
pub async fn start(
    source: Arc<str>,
    config: ReaderConfig,
    store: Arc<dyn CheckpointStore>,
    shared: RouterShared,
    checkpoint_interval: Duration,
    stop: CancellationToken,
) -> Result<RunningHub, defender_eventhub::ReaderError> {
    let (tx, rx) = mpsc::channel(2);
    let reader = Reader::start(config, Some(store), tx).await?;
    let hub = reader.target().hub.clone();
    tracing::info!(source = %source, hub = %hub, namespace = %reader.target().namespace, "reading Event Hub");
    shared
        .metrics
        .set("defender_source_up", &[("source", &source), ("hub", &hub)], 1.0);
    let (handle, tracker_task) = tracker::spawn(
        HubCommitter {
            checkpointer: reader.checkpointer(),
            source: source.clone(),
            metrics: shared.metrics.clone(),
        },
        checkpoint_interval,
    );
    let metrics = shared.metrics.clone();
    let router = Router::new(source.clone(), shared, handle);
    let task = tokio::spawn(run(source, hub, reader, rx, router, tracker_task, metrics, stop));
    Ok(RunningHub { task })
}

#[allow(clippy::too_many_arguments)]
async fn run(
    source: Arc<str>,
    hub: String,
    mut reader: Reader,
    mut rx: mpsc::Receiver<Batch>,
    mut router: Router<Position>,
    tracker_task: JoinHandle<()>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            () = stop.cancelled() => break,
            b = rx.recv() => match b {
                Some(b) => b,
                None => break,
            },
        };
        route_batch(&source, &mut router, batch, &metrics).await;
    }
    // Stop reading, then deliver what was already read.
    reader.stop_reading().await;
    rx.close();
    while let Some(batch) = rx.recv().await {
        route_batch(&source, &mut router, batch, &metrics).await;
    }
    drop(router);
    // The tracker ends once every unit is delivered (or its ack dropped) and commits last.
    let _ = tracker_task.await;
    metrics.set("defender_source_up", &[("source", &source), ("hub", &hub)], 0.0);
    reader.shutdown().await;
    tracing::info!(source = %source, hub = %hub, "stopped reading");
}

async fn route_batch(
    source: &Arc<str>,
    router: &mut Router<Position>,
    batch: Batch,
    metrics: &crate::metrics::Metrics,
) {
    if batch.events.is_empty() {
        return;
    }
    let partition: Arc<str> = Arc::from(batch.partition.to_string());
    let last = batch.events.len() - 1;
    let position = batch.position(last);
    let stream = partition.to_string();
    if let Some(e) = batch.events.last() {
        #[allow(clippy::cast_precision_loss)]
        metrics.set(
            "defender_partition_read_sequence",
            &[("source", source), ("partition", &partition)],
            e.sequence_number as f64,
        );
        if let Some(t) = e.enqueued_time {
            let delay = SystemTime::now().duration_since(t).unwrap_or_default();
            metrics.set(
                "defender_partition_read_delay_seconds",
                &[("source", source), ("partition", &partition)],
                delay.as_secs_f64(),
            );
        }
    }
    let bodies = batch
        .events
        .into_iter()
        .map(|e| {
            let origin = Arc::new(Origin {
                source: source.clone(),
                partition: partition.clone(),
                sequence_number: Some(e.sequence_number),
                offset: e.offset,
            });
            (e.body.map(Bytes::from).unwrap_or_default(), origin)
        })
        .collect();
    router
        .route(Unit {
            stream,
            position,
            bodies,
            framing: Framing::Envelopes,
        })
        .await;
}

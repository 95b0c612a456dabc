//! Wires a [`Config`] into running sources, routers, sinks and trackers, and shuts them down in
//! the order that keeps the invariant: stop reading, deliver what was read, checkpoint it, exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::CheckpointStore;
use defender_eventhub::blob::BlobClient;
use defender_eventhub::checkpoint::{BlobCheckpointStore, FileCheckpointStore};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::deadletter::{DeadLetters, create_private_dir};
use crate::error_chain;
use crate::metrics::Metrics;
use crate::route::Route;
use crate::sink::{self, SinkContext};
use crate::source::{self, RouterShared, SinkPort};

/// Message bytes in flight (read, not yet delivered everywhere) when the configuration says nothing.
pub const DEFAULT_IN_FLIGHT_MIB: u64 = 8;

/// How the forwarder runs besides its configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit once nothing new arrived for this long and everything read is delivered.
    pub exit_when_idle: Option<Duration>,
    /// Serve `/metrics`, `/healthz`, `/readyz` here.
    pub metrics_addr: Option<SocketAddr>,
    /// Cancel to shut down (SIGINT/SIGTERM in the binary).
    pub stop: CancellationToken,
    /// Use these metrics (to watch progress from outside); a fresh registry when `None`.
    pub metrics: Option<Arc<Metrics>>,
}

/// Failures that stop the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// A directory or file could not be created.
    #[error("{what} {path}: {source}")]
    Io {
        /// What it is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint store could not be opened.
    #[error("checkpoint store: {0}")]
    Store(String),
    /// A source could not start.
    #[error("source `{source_name}`: {message}")]
    Source {
        /// The source.
        source_name: String,
        /// Why.
        message: String,
    },
    /// A sink could not start.
    #[error("sink `{sink}`: {message}")]
    Sink {
        /// The sink.
        sink: String,
        /// Why.
        message: String,
    },
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Records read.
    pub records_in: u64,
    /// Records delivered, per sink.
    pub records_out: Vec<(String, u64)>,
    /// Dead letters written.
    pub dead_letters: u64,
    /// Whether the shutdown finished within its deadline.
    pub clean: bool,
}

/// The running sinks.
pub(crate) struct Sinks {
    pub(crate) ports: Vec<SinkPort>,
    pub(crate) tasks: Vec<(Arc<str>, JoinHandle<()>)>,
}

pub(crate) fn start_sinks(
    config: &Config,
    dead_letters: &DeadLetters,
    metrics: &Arc<Metrics>,
    in_flight: usize,
) -> Result<Sinks, ForwarderError> {
    let mut ports = Vec::new();
    let mut tasks = Vec::new();
    for s in &config.sinks {
        let name: Arc<str> = Arc::from(s.name());
        let ctx = SinkContext {
            name: name.clone(),
            dead_letters: dead_letters.clone(),
            metrics: metrics.clone(),
        };
        let (tx, rx) = mpsc::channel(sink::QUEUE);
        let err = |message: String| ForwarderError::Sink {
            sink: name.to_string(),
            message,
        };
        let task = match s {
            config::Sink::Sekoia(c) => {
                let mut opts = sink::sekoia::options(c).map_err(err)?;
                // Requests that fit the budget a few times over keep every slot busy.
                if c.batch_bytes.is_none() {
                    opts.batch_bytes = opts.batch_bytes.min((in_flight / 4).max(256 * 1024));
                }
                tokio::spawn(sink::sekoia::run(ctx, opts, rx))
            }
            config::Sink::Files(c) => {
                let (archive, opts) = sink::files::open(c, in_flight).map_err(err)?;
                tokio::spawn(sink::files::run(ctx, archive, opts, rx))
            }
            config::Sink::Stdout(_) => tokio::spawn(sink::stdout::run(ctx, rx)),
        };
        ports.push(SinkPort {
            name: name.clone(),
            route: Route::from_config(s.tables()),
            tx,
        });
        tasks.push((name, task));
    }
    Ok(Sinks { ports, tasks })
}

pub(crate) async fn open_store(
    config: &Config,
    state_dir: &std::path::Path,
) -> Result<Arc<dyn CheckpointStore>, ForwarderError> {
    if config.checkpoints.kind.as_deref() == Some("blob") {
        {
            let cs = config.checkpoints.connection_string.as_ref().expect("checked");
            let container = config.checkpoints.container.as_deref().expect("checked");
            let client = BlobClient::from_connection_string(cs.0.expose(), container)
                .map_err(|e| ForwarderError::Store(e.to_string()))?;
            // A lacking permission to create is fine when the container exists; the store says so if not.
            if let Err(e) = client.create_container().await {
                tracing::warn!(container, error = %e, "could not create the checkpoint container");
            }
            Ok(Arc::new(BlobCheckpointStore::new(client)))
        }
    } else {
        {
            let dir = config
                .checkpoints
                .dir
                .as_ref()
                .map_or_else(|| state_dir.join("checkpoints"), |d| PathBuf::from(&d.0));
            let store = FileCheckpointStore::open(&dir).map_err(|e| ForwarderError::Store(e.to_string()))?;
            Ok(Arc::new(store))
        }
    }
}

/// Runs the forwarder until `options.stop` is cancelled (or it is idle, with `exit_when_idle`).
pub async fn run(config: Config, options: RunOptions) -> Result<Summary, ForwarderError> {
    let started = Instant::now();
    let state_dir = PathBuf::from(&config.state_dir.0);
    create_private_dir(&state_dir).map_err(|source| ForwarderError::Io {
        what: "cannot create the state directory",
        path: state_dir.clone(),
        source,
    })?;
    let dead_letters = DeadLetters::open(&state_dir).map_err(|source| ForwarderError::Io {
        what: "cannot create the dead-letter directory",
        path: state_dir.join("dead-letters"),
        source,
    })?;
    let metrics = options.metrics.clone().unwrap_or_default();
    let stop = options.stop.clone();
    if let Some(addr) = options.metrics_addr {
        let bound = crate::metrics::serve(metrics.clone(), addr, stop.child_token())
            .await
            .map_err(|source| ForwarderError::Io {
                what: "cannot serve metrics on",
                path: PathBuf::from(addr.to_string()),
                source,
            })?;
        tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    }
    let store = open_store(&config, &state_dir).await?;
    let t = &config.forwarder;
    let in_flight_mib = t.max_in_flight_mib.map_or(DEFAULT_IN_FLIGHT_MIB, |n| n.0).max(1);
    let memory_kib = u32::try_from(in_flight_mib.saturating_mul(1024)).unwrap_or(u32::MAX >> 4);
    let sinks = start_sinks(&config, &dead_letters, &metrics, memory_kib as usize * 1024)?;
    let checkpoint_interval = t.checkpoint_interval.map_or(Duration::from_secs(1), |s| s.0);
    let shutdown_timeout = t.shutdown_timeout.map_or(Duration::from_secs(30), |s| s.0);
    let last_activity = Arc::new(AtomicU64::new(0));
    let memory = Arc::new(Semaphore::new(memory_kib as usize));
    let shared = RouterShared {
        sinks: sinks.ports.clone(),
        memory: memory.clone(),
        memory_kib,
        dead_letters: dead_letters.clone(),
        metrics: metrics.clone(),
        check_records: t.check_records.is_some_and(|f| f.0),
        last_activity: last_activity.clone(),
        started,
    };

    let read_stop = CancellationToken::new();
    let mut hubs = Vec::new();
    for s in &config.sources {
        let name: Arc<str> = Arc::from(s.name());
        let source_error = |message: String| ForwarderError::Source {
            source_name: name.to_string(),
            message,
        };
        match s {
            config::Source::Storage(c) => {
                let settings = source::storage::settings(c).map_err(source_error)?;
                let running = source::storage::start(
                    name.clone(),
                    settings,
                    store.clone(),
                    shared.clone(),
                    checkpoint_interval,
                    read_stop.clone(),
                )
                .await
                .map_err(source_error)?;
                hubs.push(running.task);
            }
            config::Source::Eventhub(c) => {
                let rc = source::eventhub::reader_config(c).map_err(source_error)?;
                let Some(names) = c.hub_names() else {
                    let running = source::eventhub::start(
                        name.clone(),
                        rc,
                        store.clone(),
                        shared.clone(),
                        checkpoint_interval,
                        read_stop.clone(),
                    )
                    .await
                    .map_err(|e| source_error(error_chain(&e)))?;
                    hubs.push(running.task);
                    continue;
                };
                // Several hubs: each reads on its own; one that is missing is retried on a slow
                // timer without holding the others back. Only all of them missing is an error.
                let retry = c.missing_hub_retry.map_or(Duration::from_secs(60), |s| s.0);
                let mut missing = Vec::new();
                let mut first_error = None;
                for hub in &names {
                    let mut rc = rc.clone();
                    rc.hub = Some(hub.clone());
                    match source::eventhub::start(
                        name.clone(),
                        rc.clone(),
                        store.clone(),
                        shared.clone(),
                        checkpoint_interval,
                        read_stop.clone(),
                    )
                    .await
                    {
                        Ok(running) => hubs.push(running.task),
                        Err(e) => {
                            let message = error_chain(&e);
                            tracing::warn!(source = %name, hub = %hub, error = %message, retry_in = ?retry, "hub unavailable; the others go on, it is tried again");
                            metrics.set("defender_source_up", &[("source", &name), ("hub", hub)], 0.0);
                            first_error.get_or_insert(message);
                            missing.push(rc);
                        }
                    }
                }
                if missing.len() == names.len() {
                    return Err(source_error(format!(
                        "none of its {} hubs can be read; the first: {}",
                        names.len(),
                        first_error.unwrap_or_default()
                    )));
                }
                for rc in missing {
                    hubs.push(tokio::spawn(retry_hub(
                        name.clone(),
                        rc,
                        store.clone(),
                        shared.clone(),
                        checkpoint_interval,
                        read_stop.clone(),
                        retry,
                    )));
                }
            }
        }
    }
    drop(shared);
    metrics.set_ready(true);

    // Wait for a stop, or for idleness.
    let idle_check = Duration::from_millis(200);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(idle_check) => {
                if let Some(idle) = options.exit_when_idle {
                    let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
                    let quiet = started.elapsed().saturating_sub(last);
                    // Caught up: nothing new for `idle`, and nothing read is still undelivered.
                    if quiet >= idle && memory.available_permits() == memory_kib as usize {
                        tracing::info!(idle = ?idle, "nothing new arrived; exiting");
                        break;
                    }
                }
            }
        }
    }
    metrics.set_ready(false);
    tracing::info!("shutting down: delivering and checkpointing what was read");
    read_stop.cancel();
    let Sinks { ports, tasks } = sinks;
    drop(ports);
    let drain = async {
        for h in hubs {
            let _ = h.await;
        }
        for (_, t) in tasks {
            let _ = t.await;
        }
    };
    let clean = if tokio::time::timeout(shutdown_timeout, drain).await.is_ok() {
        true
    } else {
        tracing::warn!(timeout = ?shutdown_timeout, "shutdown deadline passed; what was not delivered is read again on the next start");
        false
    };
    let records_out = config
        .sinks
        .iter()
        .map(|s| {
            (
                s.name().to_owned(),
                metrics.counter("defender_records_out_total", &[("sink", s.name())]),
            )
        })
        .collect();
    Ok(Summary {
        records_in: metrics.counter("defender_records_in_total", &[]),
        records_out,
        dead_letters: dead_letters.written(),
        clean,
    })
}

/// Tries a hub that could not be opened again every `every`, until it opens (then reads it) or
/// the forwarder stops.
async fn retry_hub(
    name: Arc<str>,
    rc: defender_eventhub::ReaderConfig,
    store: Arc<dyn CheckpointStore>,
    shared: RouterShared,
    checkpoint_interval: Duration,
    stop: CancellationToken,
    every: Duration,
) {
    let hub = rc.hub.clone().unwrap_or_default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match source::eventhub::start(
            name.clone(),
            rc.clone(),
            store.clone(),
            shared.clone(),
            checkpoint_interval,
            stop.clone(),
        )
        .await
        {
            Ok(running) => {
                tracing::info!(source = %name, hub = %hub, "hub available now");
                let _ = running.task.await;
                return;
            }
            Err(e) => tracing::debug!(source = %name, hub = %hub, error = %error_chain(&e), "hub still unavailable"),
        }
    }
}

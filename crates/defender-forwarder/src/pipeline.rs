//! Wires a [`Config`] into running sources, routers, sinks and trackers, and shuts them down in
//! the order that keeps the invariant: stop reading, deliver what was read, checkpoint it,
//! release what is leased, exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpoints::Store;
use crate::config::Config;
use crate::deadletter::DeadLetters;
use crate::instance::{Instance, InstanceError};
use crate::metrics::families::{IN_FLIGHT_BYTES, LEASES, RECORDS_IN, RECORDS_OUT};
use crate::metrics::{Metrics, Readiness};
use crate::router::{RouterShared, SinkPort};
use crate::sink::{self, SinkContext};
use crate::source::{SourceContext, SourceStatus, UnitState, UnitStatus};
use crate::table_filter::TableFilter;

/// How the forwarder runs besides its configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit once nothing new arrived for this long, every partition (or container) is read to
    /// its end here or read by a live other instance, and everything read is delivered.
    pub exit_when_idle: Option<Duration>,
    /// With `exit_when_idle`: give up (and say what is unread) after this long.
    pub max_wait: Option<Duration>,
    /// Serve `/metrics`, `/healthz`, `/readyz` here.
    pub metrics_addr: Option<SocketAddr>,
    /// Cancel to shut down (SIGINT/SIGTERM in the binary).
    pub stop: CancellationToken,
    /// Use these metrics (to watch progress from outside); a fresh registry when `None`.
    pub metrics: Option<Arc<Metrics>>,
    /// Where this instance's lock and identity live (default: the state directory). A backfill
    /// keeps its own, beside a live forwarder on the same state directory.
    pub instance_dir: Option<PathBuf>,
}

/// Failures that stop the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// Another process holds the state directory, or it cannot be used.
    #[error("state directory: {0}")]
    Instance(#[from] InstanceError),
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

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopped from outside (a signal, the caller's token).
    Stopped,
    /// `exit_when_idle`: everything is read, here or by live other instances.
    CaughtUp,
    /// `max_wait` ran out before that.
    GaveUp,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Records read.
    pub records_in: u64,
    /// Records delivered, per sink.
    pub records_out: Vec<(String, u64)>,
    /// Dead letters written.
    pub dead_letters: u64,
    /// Whether the shutdown delivered and checkpointed everything within its deadline.
    pub clean: bool,
    /// Why it ended.
    pub ended: Ended,
    /// Every leased thing of every source as it stood when reading stopped: `(source, unit)`.
    pub units: Vec<(String, UnitStatus)>,
    /// The instance's identity.
    pub owner_id: String,
}

impl Summary {
    /// Whether the run did what was asked: a stop or a catch-up, delivered and checkpointed.
    pub fn success(&self) -> bool {
        self.clean && self.ended != Ended::GaveUp
    }

    /// The units in one state label (`owned`, `other`, `waiting`, `unowned`, `unavailable`).
    pub fn units_in(&self, label: &str) -> Vec<String> {
        self.units
            .iter()
            .filter(|(_, u)| u.state.label() == label)
            .map(|(s, u)| format!("{s}:{}", u.id))
            .collect()
    }

    /// The units not read to their end (by this instance or a live other one).
    pub fn unread(&self) -> Vec<String> {
        self.units
            .iter()
            .filter(|(_, u)| !u.state.is_done())
            .map(|(s, u)| format!("{s}:{}", u.id))
            .collect()
    }
}

/// Runs the forwarder until `options.stop` is cancelled (or it is caught up, with `exit_when_idle`).
pub async fn run(config: Config, options: RunOptions) -> Result<Summary, ForwarderError> {
    let instance = Instance::claim(options.instance_dir.as_deref().unwrap_or(&config.state_dir))?;
    let dead_letters = DeadLetters::open(&config.state_dir).map_err(|source| ForwarderError::Io {
        what: "cannot create the dead-letter directory",
        path: config.state_dir.join("dead-letters"),
        source,
    })?;
    let metrics = options.metrics.clone().unwrap_or_default();
    serve_metrics(&options, &metrics).await?;
    let store = Arc::new(
        config
            .checkpoints
            .open(&config.state_dir)
            .await
            .map_err(ForwarderError::Store)?,
    );
    let budget = Budget::new(config.forwarder.max_in_flight_mib);
    let sinks = start_sinks(&config, &dead_letters, &metrics, budget.bytes(), instance.owner_id()).await?;
    let shared = RouterShared {
        sinks: sinks.ports.clone(),
        memory: budget.permits.clone(),
        memory_kib: budget.kib,
        dead_letters: dead_letters.clone(),
        metrics: metrics.clone(),
        check_records: config.forwarder.check_records,
        last_activity: Arc::new(AtomicU64::new(0)),
        started: Instant::now(),
        unsaved: Arc::new(AtomicU64::new(0)),
    };
    let read_stop = CancellationToken::new();
    let sources = start_sources(&config, &store, &shared, &instance, &read_stop).await?;
    metrics.set_readiness(readiness(&sources));
    metrics.set_ready(true);
    let ended = wait(&options, &sources, &budget, &shared).await;
    metrics.set_ready(false);
    // Where each partition stood: asked for read-to-the-end only when that decides the exit.
    let units = if options.exit_when_idle.is_some() {
        sources.probe().await
    } else {
        sources.units()
    };
    tracing::info!("shutting down: delivering and checkpointing what was read");
    read_stop.cancel();
    let unsaved = shared.unsaved.clone();
    drop(shared);
    let clean =
        shut_down(sources, sinks, config.forwarder.shutdown_timeout).await && unsaved.load(Ordering::Relaxed) == 0;
    Ok(Summary {
        records_in: metrics.counter(&RECORDS_IN, &[]),
        records_out: config
            .sinks
            .iter()
            .map(|s| {
                (
                    s.name().to_owned(),
                    metrics.counter(&RECORDS_OUT, &[("sink", s.name())]),
                )
            })
            .collect(),
        dead_letters: dead_letters.written(),
        clean,
        ended,
        units,
        owner_id: instance.owner_id().to_owned(),
    })
}

async fn serve_metrics(options: &RunOptions, metrics: &Arc<Metrics>) -> Result<(), ForwarderError> {
    let Some(addr) = options.metrics_addr else {
        return Ok(());
    };
    let bound = crate::metrics::serve(metrics.clone(), addr, options.stop.child_token())
        .await
        .map_err(|source| ForwarderError::Io {
            what: "cannot serve metrics on",
            path: PathBuf::from(addr.to_string()),
            source,
        })?;
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(())
}

/// The in-flight budget: KiB of message bodies read and not yet delivered everywhere.
struct Budget {
    permits: Arc<Semaphore>,
    kib: u32,
}

impl Budget {
    fn new(mib: u64) -> Budget {
        let kib = u32::try_from(mib.max(1).saturating_mul(1024)).unwrap_or(u32::MAX >> 4);
        Budget {
            permits: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    fn bytes(&self) -> usize {
        self.kib as usize * 1024
    }

    /// Everything read is delivered (every ticket completed).
    fn is_free(&self) -> bool {
        self.permits.available_permits() == self.kib as usize
    }

    fn in_use_bytes(&self) -> usize {
        (self.kib as usize - self.permits.available_permits()) * 1024
    }
}

/// The running sinks.
pub(crate) struct Sinks {
    pub(crate) ports: Vec<SinkPort>,
    pub(crate) tasks: Vec<(Arc<str>, JoinHandle<()>)>,
}

impl Sinks {
    /// Closes every sink's channel and waits for each to deliver what it holds.
    pub(crate) async fn finish(self) {
        drop(self.ports);
        for (_, t) in self.tasks {
            let _ = t.await;
        }
    }
}

pub(crate) async fn start_sinks(
    config: &Config,
    dead_letters: &DeadLetters,
    metrics: &Arc<Metrics>,
    in_flight_bytes: usize,
    owner_id: &str,
) -> Result<Sinks, ForwarderError> {
    let mut sinks = Sinks {
        ports: Vec::new(),
        tasks: Vec::new(),
    };
    for s in &config.sinks {
        let name: Arc<str> = Arc::from(s.name());
        let cx = SinkContext {
            name: name.clone(),
            dead_letters: dead_letters.clone(),
            metrics: metrics.clone(),
            in_flight_bytes,
            state_dir: config.state_dir.clone(),
            owner_id: owner_id.to_owned(),
        };
        let sink = s.build(&cx).await.map_err(|message| ForwarderError::Sink {
            sink: name.to_string(),
            message,
        })?;
        let (tx, rx) = mpsc::channel(sink::QUEUE);
        sinks.tasks.push((name.clone(), tokio::spawn(sink.run(rx))));
        sinks.ports.push(SinkPort {
            name,
            filter: TableFilter::new(s.tables()),
            tx,
        });
    }
    Ok(sinks)
}

/// A running source: its name, task and status.
type Running = (Arc<str>, JoinHandle<()>, Arc<dyn SourceStatus>);

/// The running sources.
struct Sources {
    running: Vec<Running>,
}

impl Sources {
    fn units(&self) -> Vec<(String, UnitStatus)> {
        units(&self.statuses())
    }

    async fn probe(&self) -> Vec<(String, UnitStatus)> {
        let mut out = Vec::new();
        for (name, _, status) in &self.running {
            out.extend(status.probe().await.into_iter().map(|u| (name.to_string(), u)));
        }
        out
    }

    fn statuses(&self) -> Vec<(Arc<str>, Arc<dyn SourceStatus>)> {
        self.running.iter().map(|(n, _, s)| (n.clone(), s.clone())).collect()
    }
}

fn units(statuses: &[(Arc<str>, Arc<dyn SourceStatus>)]) -> Vec<(String, UnitStatus)> {
    statuses
        .iter()
        .flat_map(|(name, s)| s.units().into_iter().map(|u| (name.to_string(), u)))
        .collect()
}

/// `/readyz`: ready while every leased thing of every source has an owner that reads it.
fn readiness(sources: &Sources) -> Readiness {
    let statuses = sources.statuses();
    Arc::new(move || {
        let ownerless: Vec<String> = units(&statuses)
            .iter()
            .filter(|(_, u)| !u.state.has_reader())
            .map(|(s, u)| describe(s, u))
            .collect();
        if ownerless.is_empty() {
            Ok(())
        } else {
            Err(format!("no live owner for {}", ownerless.join(", ")))
        }
    })
}

async fn start_sources(
    config: &Config,
    store: &Arc<Store>,
    shared: &RouterShared,
    instance: &Instance,
    stop: &CancellationToken,
) -> Result<Sources, ForwarderError> {
    let mut running = Vec::new();
    for s in &config.sources {
        let name: Arc<str> = Arc::from(s.name());
        let cx = SourceContext {
            name: name.clone(),
            store: store.clone(),
            router: shared.clone(),
            checkpoint_interval: config.forwarder.checkpoint_interval,
            owner_id: instance.owner_id().to_owned(),
            stop: stop.clone(),
        };
        let source = s.start(cx).await.map_err(|message| ForwarderError::Source {
            source_name: name.to_string(),
            message,
        })?;
        running.push((name, source.task, source.status));
    }
    tracing::info!(owner_id = %instance.owner_id(), sources = running.len(), "forwarder running");
    Ok(Sources { running })
}

/// Waits for a stop, for being caught up (with `exit_when_idle`), or for `max_wait`; keeps the
/// lease gauges and `/readyz` current meanwhile.
async fn wait(options: &RunOptions, sources: &Sources, budget: &Budget, shared: &RouterShared) -> Ended {
    let deadline = options.max_wait.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut reported = Vec::new();
    loop {
        tokio::select! {
            () = options.stop.cancelled() => return Ended::Stopped,
            _ = tick.tick() => {}
        }
        publish(&sources.units(), budget, &shared.metrics);
        if let Some(idle) = options.exit_when_idle {
            let last = Duration::from_millis(shared.last_activity.load(Ordering::Relaxed));
            let quiet = shared.started.elapsed().saturating_sub(last);
            if quiet >= idle && budget.is_free() {
                let units = sources.probe().await;
                let unread: Vec<&(String, UnitStatus)> = units.iter().filter(|(_, u)| !u.state.is_done()).collect();
                if unread.is_empty() {
                    tracing::info!(idle = ?idle, "caught up: every partition is read to its end, here or by a live instance; exiting");
                    return Ended::CaughtUp;
                }
                let ids: Vec<String> = unread.iter().map(|(s, u)| describe(s, u)).collect();
                if ids != reported {
                    tracing::info!(unread = %ids.join(", "), "quiet, but not caught up; waiting");
                    reported = ids;
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let units = sources.probe().await;
                let unread: Vec<String> = units
                    .iter()
                    .filter(|(_, u)| !u.state.is_done())
                    .map(|(s, u)| describe(s, u))
                    .collect();
                tracing::error!(unread = %unread.join(", "), "--max-wait ran out before everything was read");
                return Ended::GaveUp;
            }
        }
    }
}

fn describe(source: &str, u: &UnitStatus) -> String {
    match &u.state {
        UnitState::Elsewhere { owner, expires, .. } => {
            format!("{source}:{} (held by silent owner {owner} until {expires})", u.id)
        }
        UnitState::Unowned => format!("{source}:{} (no owner yet)", u.id),
        UnitState::Reading { .. } => format!("{source}:{} (reading)", u.id),
        UnitState::Unavailable { why } => format!("{source}:{} ({why})", u.id),
    }
}

/// Lease gauges per source and state, and in-flight bytes.
fn publish(units: &[(String, UnitStatus)], budget: &Budget, metrics: &Metrics) {
    let mut counts: std::collections::BTreeMap<(&str, &str), u64> = std::collections::BTreeMap::new();
    for (source, u) in units {
        for label in ["owned", "other", "waiting", "unowned", "unavailable"] {
            counts.entry((source, label)).or_default();
        }
        *counts.entry((source, u.state.label())).or_default() += 1;
    }
    for ((source, label), n) in counts {
        #[allow(clippy::cast_precision_loss)]
        metrics.set(&LEASES, [source, label], n as f64);
    }
    #[allow(clippy::cast_precision_loss)]
    metrics.set(&IN_FLIGHT_BYTES, [], budget.in_use_bytes() as f64);
}

/// Stops reading, lets every source deliver, checkpoint and release, then lets every sink finish.
/// Returns whether that happened within `timeout`.
async fn shut_down(sources: Sources, sinks: Sinks, timeout: Duration) -> bool {
    let drain = async {
        for (_, task, _) in sources.running {
            let _ = task.await;
        }
        sinks.finish().await;
    };
    if tokio::time::timeout(timeout, drain).await.is_ok() {
        true
    } else {
        tracing::warn!(timeout = ?timeout, "shutdown deadline passed; what was not delivered is read again on the next start");
        false
    }
}

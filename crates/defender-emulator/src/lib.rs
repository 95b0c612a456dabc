//! A small Azure Event Hubs emulator speaking AMQP 1.0 over plain TCP on the loopback interface,
//! so the official Rust client (`azure_messaging_eventhubs`) and the Python `azure-eventhub`
//! client can run against it with no Azure account and no Docker.
//!
//! What it serves:
//! - hubs with `N` partitions (`"0"`..`"N-1"`), events kept in memory with sequence numbers from 0,
//!   offsets (byte positions, as strings on the wire) and enqueued times in ms; with a data
//!   directory, one append-only log per partition, re-read on start;
//! - receivers on `<hub>/ConsumerGroups/<group>/Partitions/<id>` (any group name) with the
//!   selector filters the clients send (offset, sequence number `>`/`>=`, enqueued time,
//!   `@latest`), live delivery of new events within the link credit, and owner levels
//!   (`com.microsoft:epoch`: a higher level takes over with `amqp:link:stolen`);
//! - senders to `<hub>` or `<hub>/Partitions/<id>`, single events and batches;
//! - `$cbs` put-token (any token) and `$management` READ of hub and partition properties.
//!
//! Fault injection: [`Emulator::drop_connections`] cuts every client TCP connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), defender_emulator::EmulatorError> {
//! use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
//!
//! let emulator = Emulator::start(EmulatorConfig {
//!     hubs: vec![HubConfig::new("insights-logs-advancedhunting-deviceevents", 4)],
//!     ..EmulatorConfig::default()
//! })
//! .await?;
//! emulator.append("insights-logs-advancedhunting-deviceevents", None, vec![br#"{"records":[]}"#.to_vec()])?;
//! // Rust:   ConsumerClient::builder().with_custom_endpoint(emulator.endpoint())
//! //             .open_with_connection_string(&emulator.connection_string(hub), None).await?
//! // Python: EventHubConsumerClient.from_connection_string(emulator.connection_string(hub), ...)
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod filter;
mod load;
mod quickack;
mod server;
mod store;
mod wire;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

pub use load::LoadStats;

/// The default largest message (event or batch) accepted and built: 1 MiB, as a Standard or
/// Premium namespace.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1024 * 1024;

/// How to run an emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen. Must be a loopback address (`127.0.0.1` or `::1`); port 0 picks a free
    /// port. Default `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// The event hubs to serve.
    pub hubs: Vec<HubConfig>,
    /// When set, each partition is an append-only log in `<data_dir>/<hub>/<partition>.log`,
    /// re-read on start, so events survive a restart. Default `None` (memory only).
    pub data_dir: Option<PathBuf>,
    /// The largest message accepted from producers and built by [`Emulator::load_paths`],
    /// announced as `max-message-size` on links. Default [`DEFAULT_MAX_MESSAGE_SIZE`].
    pub max_message_size: u64,
    /// Send events to receivers pre-settled when their link allows it (the Rust client's does,
    /// Python's asks for unsettled deliveries and gets them either way). Pre-settled deliveries
    /// spare the server the client's dispositions. Default `true` (see the crate's README for
    /// the measurements).
    pub presettled_deliveries: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
            hubs: Vec::new(),
            data_dir: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            presettled_deliveries: true,
        }
    }
}

/// One event hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The hub's name (the entity path), e.g. `insights-logs-advancedhunting-deviceevents`.
    pub name: String,
    /// Number of partitions, 1 to 1024.
    pub partitions: u32,
}

impl HubConfig {
    /// A hub with that name and number of partitions.
    pub fn new(name: impl Into<String>, partitions: u32) -> Self {
        Self {
            name: name.into(),
            partitions,
        }
    }
}

/// A partition's state, as `$management` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition id (`"0"`, `"1"`, ...).
    pub id: String,
    /// The first sequence number kept (always 0: nothing expires).
    pub begin_sequence_number: i64,
    /// The last event's sequence number, -1 when empty.
    pub last_sequence_number: i64,
    /// The last event's offset, `"-1"` when empty.
    pub last_offset: String,
    /// The last event's enqueued time, `None` when empty.
    pub last_enqueued_time: Option<SystemTime>,
    /// Number of events.
    pub event_count: u64,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// A configuration the emulator cannot run with.
    #[error("invalid emulator configuration: {0}")]
    Config(String),
    /// The listener could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No hub of that name.
    #[error("no event hub named {0:?}")]
    UnknownHub(String),
    /// No partition of that id in the hub.
    #[error("event hub {hub:?} has no partition {partition:?}")]
    UnknownPartition {
        /// The hub.
        hub: String,
        /// The partition id asked for.
        partition: String,
    },
    /// An input file holds something that is not Event Hub message bodies or records.
    #[error("{}: {message}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A record or message does not fit in `max_message_size`.
    #[error("{what} is {size} bytes, more than the maximum message size of {max} bytes")]
    TooLarge {
        /// What is too large.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// An event could not be encoded.
    #[error("cannot encode an event: {0}")]
    Encode(String),
    /// The emulator is shut down.
    #[error("the emulator is shut down")]
    Closed,
}

impl EmulatorError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// A running emulator. Dropping it (or [`Emulator::shutdown`]) stops the listener and closes
/// every client connection.
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<server::Shared>,
    local_addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Opens the hubs (re-reading their logs when `data_dir` is set), binds the listener and
    /// starts serving on the current tokio runtime.
    #[allow(clippy::unused_async)] // async so callers need not care how the runtime is reached
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        if !config.bind.ip().is_loopback() {
            return Err(EmulatorError::Config(format!(
                "bind address {} is not a loopback address",
                config.bind
            )));
        }
        if config.max_message_size < 1024 {
            return Err(EmulatorError::Config(
                "max_message_size must be at least 1024 bytes".into(),
            ));
        }
        let store = store::Store::open(&config.hubs, config.data_dir.as_deref())?;
        let listener = server::bind(config.bind).map_err(|source| EmulatorError::Bind {
            addr: config.bind,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| EmulatorError::Bind {
            addr: config.bind,
            source,
        })?;
        let shared = Arc::new(server::Shared::new(
            store,
            config.max_message_size,
            config.presettled_deliveries,
        ));
        let task = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        tracing::info!(%local_addr, hubs = config.hubs.len(), "event hubs emulator listening");
        Ok(Emulator {
            shared,
            local_addr,
            task: Some(task),
        })
    }

    /// The address the emulator listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `amqp://127.0.0.1:PORT`, for the Rust client's `with_custom_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("amqp://{}", self.local_addr)
    }

    /// A connection string for `hub`:
    /// `Endpoint=sb://127.0.0.1:PORT;SharedAccessKeyName=...;SharedAccessKey=...;EntityPath=HUB;UseDevelopmentEmulator=true`.
    /// Python's `from_connection_string` takes it as is (the flag turns TLS off and keeps the
    /// port); the Rust client also needs [`Emulator::endpoint`] as its custom endpoint.
    pub fn connection_string(&self, hub: &str) -> String {
        format!(
            "Endpoint=sb://{}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=ZW11bGF0b3I=;\
             EntityPath={hub};UseDevelopmentEmulator=true",
            self.local_addr
        )
    }

    /// The names of the hubs served.
    pub fn hub_names(&self) -> Vec<String> {
        self.shared.store.hubs().map(|h| h.name.clone()).collect()
    }

    /// Appends events as a producer would: each body becomes one event (one data section). With
    /// a partition id, all go to that partition; without, they are spread round robin.
    pub fn append(&self, hub: &str, partition: Option<&str>, bodies: Vec<Vec<u8>>) -> Result<(), EmulatorError> {
        if self.shared.store.is_closed() {
            return Err(EmulatorError::Closed);
        }
        let hub = self.shared.store.hub_or_err(hub)?;
        let max = self.shared.max_message_size;
        if let Some(body) = bodies.iter().find(|b| b.len() as u64 > max) {
            return Err(EmulatorError::TooLarge {
                what: "an event body".into(),
                size: body.len() as u64,
                max,
            });
        }
        if let Some(id) = partition {
            return hub
                .partition_or_err(id)?
                .append(bodies.into_iter().map(store::data_message).collect());
        }
        let mut per_partition: Vec<Vec<_>> = hub.partitions.iter().map(|_| Vec::new()).collect();
        for body in bodies {
            per_partition[hub.pick_partition(None)].push(store::data_message(body));
        }
        for (p, messages) in hub.partitions.iter().zip(per_partition) {
            p.append(messages)?;
        }
        Ok(())
    }

    /// Loads files of Defender data into `hub`: Event Hub message bodies (`{"records":[...]}`),
    /// NDJSON records (one per line, as the Storage-account export) or JSON arrays of records;
    /// directories are walked recursively for `*.json` and `*.ndjson`. Records are re-packed, in
    /// order, into Defender-style envelopes of up to `records_per_message` records that fit in
    /// `max_message_size`, spread round robin over the partitions.
    pub fn load_paths(
        &self,
        hub: &str,
        paths: &[PathBuf],
        records_per_message: usize,
    ) -> Result<LoadStats, EmulatorError> {
        if self.shared.store.is_closed() {
            return Err(EmulatorError::Closed);
        }
        let hub = self.shared.store.hub_or_err(hub)?;
        load::load_paths(hub, paths, records_per_message, self.shared.max_message_size)
    }

    /// The state of every partition of `hub`.
    pub fn partitions(&self, hub: &str) -> Result<Vec<PartitionInfo>, EmulatorError> {
        let hub = self.shared.store.hub_or_err(hub)?;
        Ok(hub
            .partitions
            .iter()
            .map(|p| {
                let c = p.counters();
                PartitionInfo {
                    id: p.id.clone(),
                    begin_sequence_number: 0,
                    last_sequence_number: c.last_sequence_number,
                    last_offset: c.last_offset.to_string(),
                    last_enqueued_time: (c.count > 0)
                        .then(|| UNIX_EPOCH + Duration::from_millis(u64::try_from(c.last_enqueued_ms).unwrap_or(0))),
                    event_count: c.count as u64,
                }
            })
            .collect())
    }

    /// How many receiver links are attached to the hub's partitions right now (all consumer
    /// groups). Lets a test wait until a client's receiver is in place.
    pub fn receiver_count(&self, hub: &str) -> Result<usize, EmulatorError> {
        Ok(self.shared.store.hub_or_err(hub)?.reader_count())
    }

    /// Fault injection: abruptly closes every open client TCP connection (no AMQP close). The
    /// listener stays up, so clients can reconnect.
    pub fn drop_connections(&self) {
        self.shared.drop_connections();
    }

    /// Stops the listener, closes every connection and waits (up to a few seconds) for the
    /// connection tasks to end. Later appends fail with [`EmulatorError::Closed`].
    pub async fn shutdown(mut self) {
        self.shared.begin_shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.shared.store.close();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.shared.begin_shutdown();
            self.shared.store.close();
        }
    }
}

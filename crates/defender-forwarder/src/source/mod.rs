//! Sources: what is read. A kind is one module holding its config struct (serde, defaults beside
//! the fields), its [`SourceConfig`] impl that starts it, and its docs; the pipeline knows the
//! kinds only through [`KINDS`].
//!
//! # What a source does
//!
//! - Shares what it reads (partitions, containers) among instances through the checkpoint store
//!   with one [`Leases`](defender_eventhub::lease::Leases) engine per set of leased things, as
//!   [`SourceContext::owner_id`].
//! - Hands [`Unit`](crate::router::Unit)s to a [`Router`](crate::router::Router) per task: bodies
//!   plus the position to checkpoint once they are delivered; a tracker per source
//!   ([`crate::tracker`]) turns acknowledged units into checkpoints, and its committer refuses a
//!   position read under a lease that is gone.
//! - Reports where each leased thing stands ([`SourceStatus`]) for `/metrics`, `/readyz`, the
//!   stop summary and `--exit-when-idle`.
//!
//! # The shutdown order a source follows once [`SourceContext::stop`] fires
//!
//! 1. stop reading new data, but keep renewing its leases;
//! 2. route what it already read;
//! 3. drop its routers, then await its tracker: it ends once every unit is acknowledged (or its
//!    ack dropped) and writes the last checkpoints while the leases are still held;
//! 4. release its leases, so that another instance takes over at once;
//! 5. end its task.

pub mod eventhub;
pub mod storage;

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use defender_eventhub::lease::{Holder, LeaseStatus};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpoints::Store;
use crate::config::{Invalid, Kind};
use crate::router::RouterShared;

/// Every source kind: `kind = "..."` in a `[[sources]]` entry. Adding a kind is adding its module
/// and one line here.
pub static KINDS: &[Kind<dyn SourceConfig>] = &[
    Kind {
        name: "eventhub",
        parse: |d| Ok(Box::new(eventhub::EventHubConfig::deserialize(d)?)),
    },
    Kind {
        name: "storage",
        parse: |d| Ok(Box::new(storage::StorageConfig::deserialize(d)?)),
    },
];

/// A configured source of some kind.
#[async_trait]
pub trait SourceConfig: fmt::Debug + Send + Sync + 'static {
    /// Its `kind`.
    fn kind(&self) -> &'static str;
    /// Its name in logs, metrics and dead letters (the configured `name`, else the kind).
    fn name(&self) -> &str;
    /// What the types alone cannot check (fields named relative to the entry).
    fn check(&self) -> Result<(), Invalid> {
        Ok(())
    }
    /// Starts reading; fails when the source cannot start at all (no account, bad credential).
    async fn start(&self, cx: SourceContext) -> Result<RunningSource, String>;
    /// The same source reading only the range, for `defender backfill`; `None` when this kind
    /// cannot read the past by time.
    fn backfill(&self, _range: &Backfill) -> Option<Box<dyn SourceConfig>> {
        None
    }
    /// For code that needs the concrete kind (tests, tools).
    fn as_any(&self) -> &dyn Any;
}

/// A past range to read once (`defender backfill`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    /// From this time (what holds it).
    pub from: DateTime<Utc>,
    /// Up to this time, exclusive.
    pub to: DateTime<Utc>,
    /// Only these tables (`None`: the source's).
    pub tables: Option<Vec<defender_schema::Table>>,
}

/// What every source gets besides its own settings.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The source's name.
    pub name: Arc<str>,
    /// The checkpoint store (ownership records too).
    pub store: Arc<Store>,
    /// What its routers share: sinks, budget, dead letters, metrics.
    pub router: RouterShared,
    /// How often delivered positions are checkpointed.
    pub checkpoint_interval: Duration,
    /// This instance's stable identity, unless the source names its own.
    pub owner_id: String,
    /// Fires to stop reading (then the source drains, checkpoints, releases and ends).
    pub stop: CancellationToken,
}

impl SourceContext {
    /// The owner id to claim as (`configured`, else the instance's), kept alive in the store.
    pub fn owner(&self, configured: Option<&str>) -> Result<String, String> {
        let id = configured.map_or_else(|| self.owner_id.clone(), |o| o.trim().to_owned());
        self.store.hold_owner(&id)?;
        Ok(id)
    }
}

/// A source being read.
pub struct RunningSource {
    /// The task; it ends after `stop`, once what was read is delivered and checkpointed.
    pub task: JoinHandle<()>,
    /// Where its leased things stand.
    pub status: Arc<dyn SourceStatus>,
}

impl fmt::Debug for RunningSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningSource").finish_non_exhaustive()
    }
}

/// Where a source's leased things (partitions, containers) stand.
#[async_trait]
pub trait SourceStatus: Send + Sync {
    /// Each leased thing now, as far as the source knows without asking anyone (`caught_up` is
    /// `None`). Cheap: `/readyz` calls it.
    fn units(&self) -> Vec<UnitStatus>;
    /// The same, and for what is held here whether it is read to its end (a hub is asked for
    /// its last sequence numbers).
    async fn probe(&self) -> Vec<UnitStatus>;
}

/// One leased thing of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    /// Its id: `hub/partition`, or a container.
    pub id: String,
    /// Where it stands.
    pub state: UnitState,
}

/// Where a leased thing stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    /// Read here. `caught_up`: everything the service holds is routed (`None`: not asked).
    Reading {
        /// Whether it is read to the end.
        caught_up: Option<bool>,
    },
    /// Held by another instance.
    Elsewhere {
        /// Its owner id.
        owner: String,
        /// Whether that owner was seen renewing it; if not, the lease may be waiting for
        /// `expires` (a dead owner, or one this instance has not watched long enough).
        live: bool,
        /// Whether that owner missed its renewals (presumed gone).
        silent: bool,
        /// When its lease expires unless renewed (RFC 3339).
        expires: String,
    },
    /// Nobody holds it yet.
    Unowned,
    /// It cannot be read now (a hub that does not exist yet); it is tried again.
    Unavailable {
        /// Why.
        why: String,
    },
}

impl UnitState {
    /// The `state` label of `defender_source_leases`.
    pub fn label(&self) -> &'static str {
        match self {
            UnitState::Reading { .. } => "owned",
            UnitState::Elsewhere { silent: false, .. } => "other",
            UnitState::Elsewhere { silent: true, .. } => "waiting",
            UnitState::Unowned => "unowned",
            UnitState::Unavailable { .. } => "unavailable",
        }
    }

    /// Whether it has an owner that reads it (this instance, or another that has not gone
    /// silent): `/readyz` is not ready while a leased thing has none. A missing hub has nothing
    /// to read and does not count.
    pub fn has_reader(&self) -> bool {
        matches!(
            self,
            UnitState::Reading { .. } | UnitState::Elsewhere { silent: false, .. } | UnitState::Unavailable { .. }
        )
    }

    /// Whether `--exit-when-idle` may consider it done: read here to the end, or read by a live
    /// other instance (or nothing there to read).
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            UnitState::Reading { caught_up: Some(true) }
                | UnitState::Elsewhere { live: true, .. }
                | UnitState::Unavailable { .. }
        )
    }
}

/// A lease engine's view as unit states, for what it does not hold; `reading` answers for what it
/// holds.
pub fn unit_states(leases: &[LeaseStatus], prefix: &str, reading: impl Fn(&str) -> Option<bool>) -> Vec<UnitStatus> {
    leases
        .iter()
        .map(|l| UnitStatus {
            id: format!("{prefix}{}", l.id),
            state: match &l.holder {
                Holder::Me => UnitState::Reading {
                    caught_up: reading(&l.id),
                },
                Holder::Other {
                    owner,
                    live,
                    silent,
                    expires,
                } => UnitState::Elsewhere {
                    owner: owner.clone(),
                    live: *live,
                    silent: *silent,
                    expires: azure_core::time::to_rfc3339(expires),
                },
                Holder::Nobody => UnitState::Unowned,
            },
        })
        .collect()
}

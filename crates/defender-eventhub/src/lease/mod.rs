//! One ownership engine for everything leased through a [`CheckpointStore`]: Event Hub
//! partitions, the Storage export's containers, and whatever a new source shares among instances.
//!
//! Each leased thing is an ownership record `(namespace, hub, consumer group, id)`. Every
//! `update_interval` the engine lists the records, plans with [`plan`] (renew what it holds, take
//! its fair share of what is free, expired or held above share), claims with the records' etags,
//! and tells its [`LeaseHandler`] what it won and lost. A lost claim is never an error; a store
//! that cannot be reached is retried with backoff, and what could not be renewed before its
//! expiry is given up meanwhile. On shutdown the caller stops taking new leases, keeps renewing
//! while it drains, then [`Leases::release_all`] hands everything back at once.

mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::time::OffsetDateTime;
use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::Ownership;
use tokio_util::sync::CancellationToken;

pub use plan::{Plan, plan};

use crate::backoff::Backoff;

/// How instances share what they lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balancing {
    /// How often ownership is renewed and rebalanced.
    pub update_interval: Duration,
    /// An ownership not renewed for this long is free for others to take.
    pub expiry: Duration,
}

impl Default for Balancing {
    fn default() -> Self {
        Self {
            update_interval: Duration::from_secs(10),
            expiry: Duration::from_secs(60),
        }
    }
}

impl Balancing {
    /// How recently another owner must have renewed to count as alive. A healthy owner renews
    /// every `update_interval`; one that skipped a few renewals is presumed gone and its leases
    /// wait for their expiry.
    pub fn liveness(&self) -> Duration {
        (self.update_interval * 2).max(self.expiry / 2).min(self.expiry)
    }
}

/// Where the ownership records of one set of leased things live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The namespace (or storage account) the records belong to.
    pub namespace: String,
    /// The hub (or a virtual hub naming what is leased, e.g. `$containers`).
    pub hub: String,
    /// The consumer group.
    pub consumer_group: String,
}

/// A lease just won.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Increases with every lease this engine wins; positions read under an older one are stale.
    pub generation: u64,
    /// Taken from an owner that was still renewing it: that owner reads on until its next
    /// renewal tells it, so a reader without owner levels should wait `update_interval`.
    pub from_live_owner: bool,
}

/// What the engine tells about its leases.
#[async_trait]
pub trait LeaseHandler: Send + Sync {
    /// `id` is held now: start work on it.
    async fn acquired(&self, id: &str, grant: Grant);
    /// `id` is not held any more: stop work on it (what it read must not be checkpointed).
    fn lost(&self, id: &str, why: &str);
}

/// Who holds a leased thing, as of the last listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This instance.
    Me,
    /// Another instance.
    Other {
        /// Its owner id.
        owner: String,
        /// Seen renewing: it renewed while this engine watched, within [`Balancing::liveness`].
        /// A lease this engine has not seen renewed yet (it started moments ago, or the owner
        /// died) is not live: it may be waiting for its expiry.
        live: bool,
        /// Missed its renewals (older than [`Balancing::liveness`]): presumed gone, the lease
        /// waits for `expires`.
        silent: bool,
        /// When the lease expires unless renewed.
        expires: OffsetDateTime,
    },
    /// Nobody (never claimed, released, or expired): the next cycle may take it.
    Nobody,
}

/// One leased thing and its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Its id (partition id, container name).
    pub id: String,
    /// Who holds it.
    pub holder: Holder,
}

struct Held {
    generation: u64,
    ownership: Ownership,
    renewed: Instant,
}

/// The engine: one per set of leased things (a hub, a storage source).
pub struct Leases {
    store: Arc<dyn CheckpointStore>,
    scope: Scope,
    owner_id: String,
    balancing: Balancing,
    ids: Vec<String>,
    /// What the logs call one leased thing (`partition`, `container`).
    noun: &'static str,
    held: Mutex<BTreeMap<String, Held>>,
    view: Mutex<BTreeMap<String, Holder>>,
    /// Per id, the owner and etag it had when first seen: a different etag since is a renewal
    /// seen, the only proof (clocks aside) that the owner is alive.
    first_seen: Mutex<BTreeMap<String, (String, String)>>,
    /// Waits already logged, by id: (owner, expiry), so each is logged once.
    waits: Mutex<BTreeMap<String, (String, OffsetDateTime)>>,
    generation: AtomicU64,
}

impl fmt::Debug for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leases")
            .field("scope", &self.scope)
            .field("owner_id", &self.owner_id)
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Leases {
    /// An engine leasing `ids` as `owner_id`; nothing is claimed before [`Leases::run`].
    pub fn new(
        store: Arc<dyn CheckpointStore>,
        scope: Scope,
        owner_id: impl Into<String>,
        balancing: Balancing,
        ids: Vec<String>,
        noun: &'static str,
    ) -> Arc<Leases> {
        Arc::new(Leases {
            store,
            scope,
            owner_id: owner_id.into(),
            balancing,
            ids,
            noun,
            held: Mutex::new(BTreeMap::new()),
            view: Mutex::new(BTreeMap::new()),
            first_seen: Mutex::new(BTreeMap::new()),
            waits: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
        })
    }

    /// The owner id this engine claims as.
    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }

    /// The ids it leases.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The scope of its records.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The generation `id` is held under, if it is.
    pub fn generation(&self, id: &str) -> Option<u64> {
        lock(&self.held).get(id).map(|h| h.generation)
    }

    /// Whether `id` is still held under `generation` (checkpoints read under an older lease are refused).
    pub fn holds(&self, id: &str, generation: u64) -> bool {
        self.generation(id) == Some(generation)
    }

    /// The ids held now.
    pub fn held(&self) -> Vec<String> {
        lock(&self.held).keys().cloned().collect()
    }

    /// Every id and its holder as of the last cycle (held ids as of now).
    pub fn status(&self) -> Vec<LeaseStatus> {
        let held = lock(&self.held);
        let view = lock(&self.view);
        self.ids
            .iter()
            .map(|id| LeaseStatus {
                id: id.clone(),
                holder: if held.contains_key(id) {
                    Holder::Me
                } else {
                    match view.get(id) {
                        Some(Holder::Me) | None => Holder::Nobody,
                        Some(other) => other.clone(),
                    }
                },
            })
            .collect()
    }

    /// Stops counting `id` as held without telling the handler (its worker noticed first, e.g.
    /// the service cut it off for a reader with a higher owner level). Returns whether it was held.
    pub fn forget(&self, id: &str) -> bool {
        lock(&self.held).remove(id).is_some()
    }

    /// Claims, renews and balances until `stop`; takes new leases only until `stop_taking`
    /// (a draining instance keeps what it holds, so that it can still checkpoint).
    pub async fn run(
        self: Arc<Self>,
        handler: Arc<dyn LeaseHandler>,
        stop_taking: CancellationToken,
        stop: CancellationToken,
    ) {
        let interval = self.balancing.update_interval;
        let mut backoff = Backoff::new(Duration::from_millis(200), interval);
        loop {
            let take = !stop_taking.is_cancelled();
            let wait = match self.cycle(handler.as_ref(), take).await {
                Ok(balanced) => {
                    backoff.reset();
                    // While taking, come back soon: others may be releasing theirs.
                    if balanced || !take {
                        interval
                    } else {
                        interval.min(Duration::from_secs(1))
                    }
                }
                Err(e) => {
                    tracing::warn!(hub = %self.scope.hub, error = %e, "ownership cycle failed; retrying");
                    self.drop_stale(handler.as_ref());
                    backoff.next_delay()
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = stop_taking.cancelled(), if take => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One cycle: list, plan, claim (new leases only when `take`), report. Returns whether
    /// nothing was left to take.
    pub async fn cycle(&self, handler: &dyn LeaseHandler, take: bool) -> azure_core::Result<bool> {
        let s = &self.scope;
        let listed: Vec<Ownership> = self
            .store
            .list_ownerships(&s.namespace, &s.hub, &s.consumer_group)
            .await?
            .into_iter()
            .filter(|o| self.ids.contains(&o.partition_id))
            .collect();
        let now = OffsetDateTime::now_utc();
        self.record_view(&listed, now);
        let plan = plan(
            &self.owner_id,
            &self.ids,
            &listed,
            &self.template(),
            now,
            self.balancing.expiry,
        );
        let claims = if take { plan.claims() } else { plan.renew.clone() };
        let won = if claims.is_empty() {
            Vec::new()
        } else {
            self.store.claim_ownership(&claims).await?
        };
        let won_ids: BTreeSet<&str> = won.iter().map(|o| o.partition_id.as_str()).collect();
        let lost: Vec<String> = lock(&self.held)
            .keys()
            .filter(|id| !won_ids.contains(id.as_str()))
            .cloned()
            .collect();
        for id in lost {
            self.lose(handler, &id, "ownership taken by another instance");
        }
        for o in won {
            let id = o.partition_id.clone();
            let from_live_owner = self.held_by_live_other(&id);
            if let Some(grant) = self.renew_or_hold(o, from_live_owner) {
                tracing::info!(hub = %s.hub, id = %id, generation = grant.generation, "{} acquired", self.noun);
                handler.acquired(&id, grant).await;
            }
        }
        Ok(plan.take.is_empty())
    }

    /// Renews a held lease, or holds a new one (returning its grant).
    fn renew_or_hold(&self, ownership: Ownership, from_live_owner: bool) -> Option<Grant> {
        let mut held = lock(&self.held);
        if let Some(h) = held.get_mut(&ownership.partition_id) {
            h.ownership = ownership;
            h.renewed = Instant::now();
            return None;
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        held.insert(
            ownership.partition_id.clone(),
            Held {
                generation,
                ownership,
                renewed: Instant::now(),
            },
        );
        Some(Grant {
            generation,
            from_live_owner,
        })
    }

    /// Whether `id` was just held by another instance that had not gone silent: that one may
    /// still be reading.
    fn held_by_live_other(&self, id: &str) -> bool {
        matches!(lock(&self.view).get(id), Some(Holder::Other { silent: false, .. }))
    }

    /// Keeps who holds what, and logs (once each) leases that wait for a silent owner's expiry.
    fn record_view(&self, listed: &[Ownership], now: OffsetDateTime) {
        let live_for = self.balancing.liveness();
        let mut first_seen = lock(&self.first_seen);
        let mut view = BTreeMap::new();
        for o in listed {
            let owner = o.owner_id.as_deref().unwrap_or_default();
            let Some(renewed) = o.last_modified_time else { continue };
            let etag = o.etag.as_ref().map(ToString::to_string).unwrap_or_default();
            let first = first_seen
                .entry(o.partition_id.clone())
                .or_insert_with(|| (owner.to_owned(), etag.clone()));
            if first.0 != owner {
                *first = (owner.to_owned(), etag.clone());
            }
            let age = now - renewed;
            let expires = renewed + self.balancing.expiry;
            let holder = if owner.is_empty() || expires <= now {
                Holder::Nobody
            } else if owner == self.owner_id {
                Holder::Me
            } else {
                let silent = !age.is_negative() && age.unsigned_abs() >= live_for;
                Holder::Other {
                    owner: owner.to_owned(),
                    live: !silent && first.1 != etag,
                    silent,
                    expires,
                }
            };
            view.insert(o.partition_id.clone(), holder);
        }
        drop(first_seen);
        self.log_waits(&view);
        *lock(&self.view) = view;
    }

    fn log_waits(&self, view: &BTreeMap<String, Holder>) {
        let mut waits = lock(&self.waits);
        waits.retain(|id, _| matches!(view.get(id), Some(Holder::Other { silent: true, .. })));
        for (id, holder) in view {
            let Holder::Other {
                owner,
                silent: true,
                expires,
                ..
            } = holder
            else {
                continue;
            };
            let key = (owner.clone(), *expires);
            if waits.get(id) != Some(&key) {
                tracing::info!(
                    hub = %self.scope.hub,
                    id = %id,
                    owner = %owner,
                    expires = %format_time(*expires),
                    "{} waits for its silent owner's lease to expire",
                    self.noun
                );
                waits.insert(id.clone(), key);
            }
        }
    }

    fn lose(&self, handler: &dyn LeaseHandler, id: &str, why: &str) {
        if self.forget(id) {
            tracing::info!(hub = %self.scope.hub, id, why, "{} lost", self.noun);
            handler.lost(id, why);
        }
    }

    /// When the store cannot be reached: give up what was not renewed within the expiry, since
    /// another instance may hold it by now.
    pub fn drop_stale(&self, handler: &dyn LeaseHandler) {
        let stale: Vec<String> = lock(&self.held)
            .iter()
            .filter(|(_, h)| h.renewed.elapsed() > self.balancing.expiry)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.lose(handler, &id, "ownership could not be renewed before its expiry");
        }
    }

    /// Gives every held lease back, so that other instances take over at once instead of after
    /// the expiry. The handler is not called: the caller has stopped its work already.
    pub async fn release_all(&self) {
        let releases: Vec<Ownership> = std::mem::take(&mut *lock(&self.held))
            .into_values()
            .map(|h| Ownership {
                owner_id: Some(String::new()),
                ..h.ownership
            })
            .collect();
        if releases.is_empty() {
            return;
        }
        match self.store.claim_ownership(&releases).await {
            Ok(released) => tracing::info!(hub = %self.scope.hub, count = released.len(), "released {}s", self.noun),
            Err(e) => {
                tracing::warn!(hub = %self.scope.hub, error = %e, "could not release leases; they free up after the expiry");
            }
        }
    }

    fn template(&self) -> Ownership {
        Ownership {
            fully_qualified_namespace: self.scope.namespace.clone(),
            event_hub_name: self.scope.hub.clone(),
            consumer_group: self.scope.consumer_group.clone(),
            partition_id: String::new(),
            owner_id: None,
            etag: None,
            last_modified_time: None,
        }
    }
}

/// RFC 3339, seconds, UTC.
fn format_time(t: OffsetDateTime) -> String {
    azure_core::time::to_rfc3339(&t)
}

#[cfg(test)]
mod tests;

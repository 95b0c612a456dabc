//! A checkpoint store in memory, with the same claim rules as the file and Blob stores, for tests
//! and for readers that need no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use azure_core::http::Etag;
use azure_core::time::OffsetDateTime;
use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};

use super::{CheckpointStoreError, checkpoint_prefix, owner_from_store, owner_to_store, ownership_prefix};

#[derive(Debug, Clone)]
struct OwnershipRow {
    owner_id: String,
    etag: String,
    last_modified: OffsetDateTime,
}

/// A [`CheckpointStore`] in memory: conditional claims by etag, lost claims left out of the
/// result (never an `Err`, unlike the crate's own in-memory store), and a switch that makes every
/// call fail, to test what callers do when the store is unreachable.
#[derive(Debug, Default)]
pub struct MemoryCheckpointStore {
    ownerships: Mutex<BTreeMap<String, OwnershipRow>>,
    checkpoints: Mutex<BTreeMap<String, Checkpoint>>,
    failing: AtomicBool,
    next_etag: Mutex<u64>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call fail (`true`) or work again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// Ages every ownership record by `by`, as if its owner had stopped renewing that long ago.
    pub fn age_ownerships(&self, by: std::time::Duration) {
        for row in lock(&self.ownerships).values_mut() {
            row.last_modified -= by;
        }
    }

    fn check(&self) -> azure_core::Result<()> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(CheckpointStoreError::Task("the store is switched off".into()).into());
        }
        Ok(())
    }

    fn new_etag(&self) -> String {
        let mut n = lock(&self.next_etag);
        *n += 1;
        format!("\"{n}\"")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn claim_ownership(&self, ownerships: &[Ownership]) -> azure_core::Result<Vec<Ownership>> {
        self.check()?;
        let mut rows = lock(&self.ownerships);
        let mut won = Vec::new();
        for o in ownerships {
            let prefix = ownership_prefix(&o.fully_qualified_namespace, &o.event_hub_name, &o.consumer_group)?;
            let key = prefix + &o.partition_id.to_lowercase();
            let owner = owner_to_store(o.owner_id.as_deref())?.to_owned();
            let allowed = match (&o.etag, rows.get(&key)) {
                (None, None) => true,
                (Some(expected), Some(row)) => super::same_etag(expected.as_ref(), &row.etag),
                _ => false,
            };
            if !allowed {
                continue;
            }
            let row = OwnershipRow {
                owner_id: owner.clone(),
                etag: self.new_etag(),
                last_modified: OffsetDateTime::now_utc(),
            };
            let mut claimed = o.clone();
            claimed.owner_id = owner_from_store(Some(&owner));
            claimed.etag = Some(Etag::from(row.etag.clone()));
            claimed.last_modified_time = Some(row.last_modified);
            rows.insert(key, row);
            won.push(claimed);
        }
        Ok(won)
    }

    async fn list_checkpoints(&self, namespace: &str, hub: &str, group: &str) -> azure_core::Result<Vec<Checkpoint>> {
        self.check()?;
        let prefix = checkpoint_prefix(namespace, hub, group)?;
        Ok(lock(&self.checkpoints)
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, c)| c.clone())
            .collect())
    }

    async fn list_ownerships(&self, namespace: &str, hub: &str, group: &str) -> azure_core::Result<Vec<Ownership>> {
        self.check()?;
        let prefix = ownership_prefix(namespace, hub, group)?;
        Ok(lock(&self.ownerships)
            .iter()
            .filter_map(|(k, row)| {
                let id = k.strip_prefix(&prefix)?;
                Some(Ownership {
                    fully_qualified_namespace: namespace.to_owned(),
                    event_hub_name: hub.to_owned(),
                    consumer_group: group.to_owned(),
                    partition_id: id.to_owned(),
                    owner_id: owner_from_store(Some(&row.owner_id)),
                    etag: Some(Etag::from(row.etag.clone())),
                    last_modified_time: Some(row.last_modified),
                })
            })
            .collect())
    }

    async fn update_checkpoint(&self, checkpoint: Checkpoint) -> azure_core::Result<()> {
        self.check()?;
        let prefix = checkpoint_prefix(
            &checkpoint.fully_qualified_namespace,
            &checkpoint.event_hub_name,
            &checkpoint.consumer_group,
        )?;
        let key = prefix + &checkpoint.partition_id.to_lowercase();
        lock(&self.checkpoints).insert(key, checkpoint);
        Ok(())
    }
}

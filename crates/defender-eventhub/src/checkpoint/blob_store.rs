//! A checkpoint store in an Azure Blob container, in the layout of the Python and Java SDKs.

use azure_core::http::Etag;
use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use futures::stream::{self, StreamExt as _, TryStreamExt as _};

use super::{
    CheckpointStoreError, StoreResult, checkpoint_name, checkpoint_prefix, chrono_to_offset, offset_from_store,
    offset_to_store, owner_from_store, owner_to_store, ownership_name, ownership_prefix,
};
use crate::blob::{BlobClient, BlobErrorKind, BlobItem, Condition};

/// Ownership metadata key (the SDKs write it lower-case).
const OWNER_ID: &str = "ownerid";
/// Checkpoint metadata keys.
const OFFSET: &str = "offset";
const SEQUENCE_NUMBER: &str = "sequencenumber";

/// How many claims of one `claim_ownership` call run at once.
const CLAIM_CONCURRENCY: usize = 16;

/// A [`CheckpointStore`] on Azure Blob Storage (or Azurite), readable and writable by the Python
/// (`azure-eventhub-checkpointstoreblob`) and Java checkpoint stores:
///
/// - empty block blobs `{namespace}/{hub}/{consumer group}/ownership/{partition}` with metadata
///   `ownerid` (empty = released), and `.../checkpoint/{partition}` with `offset` and
///   `sequencenumber`, the whole name lower-cased;
/// - a first claim is Put Blob with `If-None-Match: *`; renew, steal and release are Set Blob Metadata
///   with `If-Match`; 409 / 412 / 404 (`BlobNotFound`) mean the claim was lost (left out of the
///   result), anything else is an `Err`;
/// - a checkpoint is an unconditional Set Blob Metadata, creating the blob on 404.
///
/// The container must exist ([`BlobClient::create_container`]): a missing container is an error,
/// not a lost claim. Timing defaults differ between SDKs (Rust: renew every 30 s, expire after 60 s;
/// Python: 30 s plus up to 20 % jitter, expire after 180 s): give a mixed fleet the same settings.
#[derive(Debug, Clone)]
pub struct BlobCheckpointStore {
    client: BlobClient,
}

impl BlobCheckpointStore {
    /// A store in the client's container.
    pub fn new(client: BlobClient) -> Self {
        Self { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &BlobClient {
        &self.client
    }

    async fn claim_one(&self, mut ownership: Ownership) -> StoreResult<Option<Ownership>> {
        let name = ownership_name(
            &ownership.fully_qualified_namespace,
            &ownership.event_hub_name,
            &ownership.consumer_group,
            &ownership.partition_id,
        )?;
        let owner = owner_to_store(ownership.owner_id.as_deref())?.to_owned();
        let metadata = [(OWNER_ID, owner.as_str())];
        let result = match &ownership.etag {
            None => {
                self.client
                    .put_empty_block_blob(&name, &metadata, &Condition::IfNotExists)
                    .await
            }
            Some(etag) => {
                self.client
                    .set_metadata(&name, &metadata, &Condition::IfMatch(etag.to_string()))
                    .await
            }
        };
        match result {
            Ok(written) => {
                ownership.owner_id = owner_from_store(Some(&owner));
                ownership.etag = Some(Etag::from(written.etag));
                ownership.last_modified_time = Some(chrono_to_offset(written.last_modified));
                Ok(Some(ownership))
            }
            Err(e) if is_lost_claim(&e) => {
                tracing::debug!(
                    blob = %name,
                    owner_id = %owner,
                    status = ?e.http_status(),
                    code = ?e.error_code(),
                    "ownership claim lost"
                );
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn write_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        let name = checkpoint_name(
            &checkpoint.fully_qualified_namespace,
            &checkpoint.event_hub_name,
            &checkpoint.consumer_group,
            &checkpoint.partition_id,
        )?;
        let Some(sequence_number) = checkpoint.sequence_number else {
            return Err(CheckpointStoreError::invalid(
                "checkpoint",
                "has no sequence number (the Python SDK's checkpoint reader requires `sequencenumber`)",
            ));
        };
        let sequence_number = sequence_number.to_string();
        let offset = offset_to_store(checkpoint.offset.as_deref())?;
        let metadata = [(OFFSET, offset), (SEQUENCE_NUMBER, sequence_number.as_str())];
        match self.client.set_metadata(&name, &metadata, &Condition::None).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == BlobErrorKind::NotFound && e.error_code() != Some("ContainerNotFound") => {
                self.client
                    .put_empty_block_blob(&name, &metadata, &Condition::None)
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// 409 (`BlobAlreadyExists`), 412 (`ConditionNotMet`), 404 `BlobNotFound`: someone else got there first.
/// A missing container is not a lost race.
fn is_lost_claim(error: &crate::blob::BlobError) -> bool {
    match error.kind() {
        BlobErrorKind::Conflict | BlobErrorKind::PreconditionFailed => true,
        BlobErrorKind::NotFound => error.error_code() != Some("ContainerNotFound"),
        _ => false,
    }
}

/// A metadata value by key, ignoring case (the SDKs write lower-case keys; the service keeps case).
fn metadata<'a>(blob: &'a BlobItem, key: &str) -> Option<&'a str> {
    blob.metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// The partition id of a listed blob: the name after the prefix, if it is one plain component.
fn partition_of<'a>(blob: &'a BlobItem, prefix: &str) -> Option<&'a str> {
    blob.name
        .strip_prefix(prefix)
        .filter(|partition| !partition.is_empty() && !partition.contains('/'))
}

#[async_trait::async_trait]
impl CheckpointStore for BlobCheckpointStore {
    async fn claim_ownership(&self, ownerships: &[Ownership]) -> azure_core::Result<Vec<Ownership>> {
        // Validate first: a bad input fails the whole call before anything is written.
        for ownership in ownerships {
            ownership_name(
                &ownership.fully_qualified_namespace,
                &ownership.event_hub_name,
                &ownership.consumer_group,
                &ownership.partition_id,
            )?;
            owner_to_store(ownership.owner_id.as_deref())?;
        }
        let won: Vec<Option<Ownership>> = stream::iter(ownerships.iter().cloned())
            .map(|ownership| self.claim_one(ownership))
            .buffered(CLAIM_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(won.into_iter().flatten().collect())
    }

    async fn list_checkpoints(
        &self,
        namespace: &str,
        event_hub_name: &str,
        consumer_group: &str,
    ) -> azure_core::Result<Vec<Checkpoint>> {
        let prefix = checkpoint_prefix(namespace, event_hub_name, consumer_group)?;
        let blobs = self
            .client
            .list_blobs(&prefix)
            .await
            .map_err(CheckpointStoreError::from)?;
        let mut checkpoints = Vec::with_capacity(blobs.len());
        for blob in &blobs {
            let Some(partition_id) = partition_of(blob, &prefix) else {
                continue;
            };
            let sequence_number = metadata(blob, SEQUENCE_NUMBER).and_then(|s| s.trim().parse::<i64>().ok());
            if sequence_number.is_none() {
                tracing::warn!(blob = %blob.name, "checkpoint blob without a valid `sequencenumber`");
            }
            checkpoints.push(Checkpoint {
                fully_qualified_namespace: namespace.to_owned(),
                event_hub_name: event_hub_name.to_owned(),
                consumer_group: consumer_group.to_owned(),
                partition_id: partition_id.to_owned(),
                offset: offset_from_store(metadata(blob, OFFSET)),
                sequence_number,
            });
        }
        Ok(checkpoints)
    }

    async fn list_ownerships(
        &self,
        namespace: &str,
        event_hub_name: &str,
        consumer_group: &str,
    ) -> azure_core::Result<Vec<Ownership>> {
        let prefix = ownership_prefix(namespace, event_hub_name, consumer_group)?;
        let blobs = self
            .client
            .list_blobs(&prefix)
            .await
            .map_err(CheckpointStoreError::from)?;
        Ok(blobs
            .iter()
            .filter_map(|blob| {
                let partition_id = partition_of(blob, &prefix)?;
                Some(Ownership {
                    fully_qualified_namespace: namespace.to_owned(),
                    event_hub_name: event_hub_name.to_owned(),
                    consumer_group: consumer_group.to_owned(),
                    partition_id: partition_id.to_owned(),
                    owner_id: owner_from_store(metadata(blob, OWNER_ID)),
                    etag: Some(Etag::from(blob.etag.clone())),
                    last_modified_time: Some(chrono_to_offset(blob.last_modified)),
                })
            })
            .collect())
    }

    async fn update_checkpoint(&self, checkpoint: Checkpoint) -> azure_core::Result<()> {
        Ok(self.write_checkpoint(&checkpoint).await?)
    }
}

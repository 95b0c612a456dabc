//! Checkpoint stores for `azure_messaging_eventhubs`' [`CheckpointStore`] trait: one on local files,
//! one on Azure Blob Storage in the layout the Python and Java SDKs share.
//!
//! Both follow the same rules:
//! - Records are keyed by `{namespace}/{hub}/{consumer group}/ownership/{partition}` and
//!   `.../checkpoint/{partition}`, the whole key lower-cased (see [`ownership_name`]).
//! - An ownership claim is conditional: without an etag it only creates a record that does not
//!   exist yet; with an etag it only replaces the record that still has that etag. A claim that loses
//!   is left out of the returned `Vec` (`Ok`), never an `Err`: `EventProcessor::run()` ends on any `Err`.
//! - A won claim comes back with the new etag and last-modified time. An empty or missing owner id
//!   means "released" and is listed as `owner_id: None`.
//! - `Err` means the store itself failed (unreachable, unauthorized, I/O error, corrupt record) or the
//!   caller passed an empty or `/`-containing name.
//! - A checkpoint must carry a sequence number or an offset (the blob store: a sequence number,
//!   which the Python SDK's reader requires); a missing offset is stored as an empty string and
//!   listed as `None`.
//!
//! [`CheckpointStore`]: azure_messaging_eventhubs::CheckpointStore

mod blob_store;
mod file_store;
mod memory_store;

use std::path::PathBuf;

use azure_core::error::ErrorKind;
use azure_core::time::OffsetDateTime;

use crate::blob::{BlobError, BlobErrorKind};

pub use blob_store::BlobCheckpointStore;
pub use file_store::{FileCheckpointStore, OwnerLock};
pub use memory_store::MemoryCheckpointStore;

/// Why a checkpoint store call failed. Converted into [`azure_core::Error`] at the trait boundary
/// (recover it with `azure_core::Error::downcast_ref`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointStoreError {
    /// An empty or malformed namespace, hub, consumer group, partition, owner id or checkpoint.
    #[error("invalid {what}: {message}")]
    InvalidInput {
        /// Which input.
        what: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A file-system error of the file store.
    #[error("checkpoint store I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A record that cannot be read back.
    #[error("corrupt checkpoint store record {location}: {message}")]
    Corrupt {
        /// File path or blob name.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A Blob Storage request failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The blocking task running a file-store operation panicked or was cancelled.
    #[error("checkpoint store task failed: {0}")]
    Task(String),
}

impl CheckpointStoreError {
    fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            what,
            message: message.into(),
        }
    }

    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<CheckpointStoreError> for azure_core::Error {
    fn from(error: CheckpointStoreError) -> Self {
        let kind = match &error {
            CheckpointStoreError::InvalidInput { .. } | CheckpointStoreError::Task(_) => ErrorKind::Other,
            CheckpointStoreError::Io { .. } => ErrorKind::Io,
            CheckpointStoreError::Corrupt { .. } => ErrorKind::DataConversion,
            CheckpointStoreError::Blob(blob) => match (blob.kind(), blob.http_status()) {
                (_, Some(status)) => ErrorKind::HttpResponse {
                    status: status.into(),
                    error_code: blob.error_code().map(ToOwned::to_owned),
                    raw_response: None,
                },
                (BlobErrorKind::Connection | BlobErrorKind::Timeout, None) => ErrorKind::Connection,
                (BlobErrorKind::InvalidResponse, None) => ErrorKind::DataConversion,
                _ => ErrorKind::Other,
            },
        };
        azure_core::Error::new(kind, error)
    }
}

type StoreResult<T> = Result<T, CheckpointStoreError>;

/// One name component: non-empty and without `/`.
fn check_component(what: &'static str, value: &str) -> StoreResult<()> {
    if value.is_empty() {
        return Err(CheckpointStoreError::invalid(what, "is empty"));
    }
    if value.contains('/') {
        return Err(CheckpointStoreError::invalid(what, format!("{value:?} contains '/'")));
    }
    Ok(())
}

fn prefix(namespace: &str, event_hub: &str, consumer_group: &str, kind: &str) -> StoreResult<String> {
    check_component("fully qualified namespace", namespace)?;
    check_component("event hub name", event_hub)?;
    check_component("consumer group", consumer_group)?;
    Ok(format!("{namespace}/{event_hub}/{consumer_group}/{kind}/").to_lowercase())
}

/// `{namespace}/{hub}/{consumer group}/ownership/`, lower-cased.
pub fn ownership_prefix(namespace: &str, event_hub: &str, consumer_group: &str) -> StoreResult<String> {
    prefix(namespace, event_hub, consumer_group, "ownership")
}

/// `{namespace}/{hub}/{consumer group}/checkpoint/`, lower-cased.
pub fn checkpoint_prefix(namespace: &str, event_hub: &str, consumer_group: &str) -> StoreResult<String> {
    prefix(namespace, event_hub, consumer_group, "checkpoint")
}

/// `{namespace}/{hub}/{consumer group}/ownership/{partition}`, the whole name lower-cased, as the
/// Python and Java SDKs name ownership blobs.
pub fn ownership_name(namespace: &str, event_hub: &str, consumer_group: &str, partition: &str) -> StoreResult<String> {
    check_component("partition id", partition)?;
    Ok(ownership_prefix(namespace, event_hub, consumer_group)? + &partition.to_lowercase())
}

/// `{namespace}/{hub}/{consumer group}/checkpoint/{partition}`, the whole name lower-cased.
pub fn checkpoint_name(namespace: &str, event_hub: &str, consumer_group: &str, partition: &str) -> StoreResult<String> {
    check_component("partition id", partition)?;
    Ok(checkpoint_prefix(namespace, event_hub, consumer_group)? + &partition.to_lowercase())
}

/// An owner id as stored: `None` and `""` both mean released.
fn owner_to_store(owner: Option<&str>) -> StoreResult<&str> {
    let owner = owner.unwrap_or_default();
    if owner.chars().any(|c| !c.is_ascii() || c.is_ascii_control()) {
        return Err(CheckpointStoreError::invalid(
            "owner id",
            "must be printable ASCII (it is stored as blob metadata)",
        ));
    }
    Ok(owner.trim())
}

/// A stored owner id back: empty means released.
fn owner_from_store(owner: Option<&str>) -> Option<String> {
    owner.map(str::trim).filter(|o| !o.is_empty()).map(ToOwned::to_owned)
}

fn offset_to_store(offset: Option<&str>) -> StoreResult<&str> {
    let offset = offset.unwrap_or_default();
    if offset.chars().any(|c| !c.is_ascii() || c.is_ascii_control()) {
        return Err(CheckpointStoreError::invalid(
            "checkpoint offset",
            "must be printable ASCII",
        ));
    }
    Ok(offset.trim())
}

fn offset_from_store(offset: Option<&str>) -> Option<String> {
    owner_from_store(offset)
}

fn chrono_to_offset(time: chrono::DateTime<chrono::Utc>) -> OffsetDateTime {
    let nanos = i128::from(time.timestamp()) * 1_000_000_000 + i128::from(time.timestamp_subsec_nanos());
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Compares etags, ignoring the quotes listings leave out.
fn same_etag(a: &str, b: &str) -> bool {
    crate::blob::unquote_etag(a) == crate::blob::unquote_etag(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_cased_whole() {
        assert_eq!(
            ownership_name("MyNS.servicebus.windows.net", "MyHub", "$Default", "0").unwrap(),
            "myns.servicebus.windows.net/myhub/$default/ownership/0"
        );
        assert_eq!(
            checkpoint_name("ns", "Hub", "Group", "AB").unwrap(),
            "ns/hub/group/checkpoint/ab"
        );
        assert_eq!(ownership_prefix("NS", "h", "g").unwrap(), "ns/h/g/ownership/");
        assert!(ownership_name("", "h", "g", "0").is_err());
        assert!(checkpoint_name("ns", "h/x", "g", "0").is_err());
        assert!(checkpoint_name("ns", "h", "g", "").is_err());
    }

    #[test]
    fn converts_errors_to_azure_core() {
        let error: azure_core::Error = CheckpointStoreError::invalid("partition id", "is empty").into();
        assert!(error.to_string().contains("partition id"), "{error}");
        assert!(error.downcast_ref::<CheckpointStoreError>().is_some());
    }

    #[test]
    fn converts_times() {
        let time = chrono::DateTime::parse_from_rfc3339("2026-11-24T10:00:01.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let converted = chrono_to_offset(time);
        assert_eq!(converted.unix_timestamp(), time.timestamp());
        assert_eq!(converted.nanosecond(), 500_000_000);
    }
}

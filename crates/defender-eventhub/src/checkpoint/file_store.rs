//! A checkpoint store in one local directory, for single-machine deployments.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use azure_core::http::Etag;
use azure_core::time::OffsetDateTime;
use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use serde::{Deserialize, Serialize};

use super::{
    CheckpointStoreError, StoreResult, check_component, checkpoint_prefix, offset_from_store, offset_to_store,
    owner_from_store, owner_to_store, ownership_prefix, same_etag,
};

const LOCK_FILE: &str = ".lock";
const OWNERS_DIR: &str = "owners";
const RECORD_SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".tmp";

/// A [`CheckpointStore`] in a local directory.
///
/// Layout: the blob store's names, lower-cased, as paths:
/// `{dir}/{namespace}/{hub}/{consumer group}/ownership/{partition}.json` and `.../checkpoint/{partition}.json`
/// (characters outside `[a-z0-9._$-]` and a leading `.` are `%XX`-escaped). Each record is a small JSON
/// document with an etag and a last-modified time.
///
/// Crash safety: a record is written to a temporary file, fsynced, renamed over the old one, and the
/// directory is fsynced, so a reader (or a restart after `kill -9` or power loss) sees the old or the
/// new record, never a torn or empty one.
///
/// Several processes on one machine may share the directory: every write (claims and checkpoints)
/// runs under an exclusive lock on `{dir}/.lock` (`File::lock`, i.e. `flock` / `LockFileEx`), so
/// conditional claims are atomic across processes. Reads take no lock. Do not put the directory on a
/// network file system.
///
/// Owners that are provably gone: a process that claims as an owner holds
/// [`FileCheckpointStore::hold_owner`]'s lock on `{dir}/owners/{owner id}.lock` while it runs. The
/// operating system releases that lock when the process dies, however it dies, so
/// [`list_ownerships`](CheckpointStore::list_ownerships) lists the records of an owner whose lock
/// is free as expired, and another instance takes them over at once instead of after the expiry.
/// Owners that never took the lock are listed as stored.
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    root: PathBuf,
}

/// Keeps an owner alive in a [`FileCheckpointStore`] until dropped (or the process dies).
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
    path: PathBuf,
}

impl OwnerLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn owner_lock_path(root: &Path, owner: &str) -> PathBuf {
    root.join(OWNERS_DIR).join(format!("{}.lock", escape_component(owner)))
}

/// Whether `owner` took its lock once and no process holds it now. Checked with a shared lock,
/// which fails while the owner holds its exclusive one.
#[allow(clippy::incompatible_msrv)] // `File::try_lock_shared` is std since 1.89.
fn owner_is_gone(root: &Path, owner: &str) -> bool {
    let Ok(file) = File::open(owner_lock_path(root, owner)) else {
        return false;
    };
    file.try_lock_shared().is_ok()
}

#[derive(Debug, Serialize, Deserialize)]
struct OwnershipRecord {
    owner_id: String,
    etag: String,
    #[serde(with = "azure_core::time::rfc3339")]
    last_modified: OffsetDateTime,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointRecord {
    offset: String,
    sequence_number: Option<i64>,
    etag: String,
    #[serde(with = "azure_core::time::rfc3339")]
    last_modified: OffsetDateTime,
}

impl FileCheckpointStore {
    /// Opens (creating it if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CheckpointStoreError> {
        let root = dir.into();
        fs::create_dir_all(&root).map_err(|e| CheckpointStoreError::io(&root, e))?;
        let lock = root.join(LOCK_FILE);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|e| CheckpointStoreError::io(&lock, e))?;
        Ok(Self { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Marks `owner_id` as alive for as long as the returned lock lives (see the type's docs).
    /// Blocks only while another process checks the owner, which takes microseconds.
    #[allow(clippy::incompatible_msrv)] // `File::lock` is std since 1.89.
    pub fn hold_owner(&self, owner_id: &str) -> Result<OwnerLock, CheckpointStoreError> {
        let path = owner_lock_path(&self.root, owner_to_store(Some(owner_id))?);
        let dir = path.parent().expect("an owner lock has a parent");
        fs::create_dir_all(dir).map_err(|e| CheckpointStoreError::io(dir, e))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CheckpointStoreError::io(&path, e))?;
        file.lock().map_err(|e| CheckpointStoreError::io(&path, e))?;
        Ok(OwnerLock { _file: file, path })
    }

    async fn blocking<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> StoreResult<T> + Send + 'static,
    {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || operation(&root))
            .await
            .map_err(|e| CheckpointStoreError::Task(e.to_string()))?
    }
}

#[async_trait::async_trait]
impl CheckpointStore for FileCheckpointStore {
    async fn claim_ownership(&self, ownerships: &[Ownership]) -> azure_core::Result<Vec<Ownership>> {
        if ownerships.is_empty() {
            return Ok(Vec::new());
        }
        let ownerships = ownerships.to_vec();
        Ok(self.blocking(move |root| claim(root, ownerships)).await?)
    }

    async fn list_checkpoints(
        &self,
        namespace: &str,
        event_hub_name: &str,
        consumer_group: &str,
    ) -> azure_core::Result<Vec<Checkpoint>> {
        let dir = record_dir(
            &self.root,
            &checkpoint_prefix(namespace, event_hub_name, consumer_group)?,
        );
        let (namespace, event_hub_name, consumer_group) = (
            namespace.to_owned(),
            event_hub_name.to_owned(),
            consumer_group.to_owned(),
        );
        let records = self.blocking(move |_| read_records::<CheckpointRecord>(&dir)).await?;
        Ok(records
            .into_iter()
            .map(|(partition_id, record)| Checkpoint {
                fully_qualified_namespace: namespace.clone(),
                event_hub_name: event_hub_name.clone(),
                consumer_group: consumer_group.clone(),
                partition_id,
                offset: offset_from_store(Some(&record.offset)),
                sequence_number: record.sequence_number,
            })
            .collect())
    }

    async fn list_ownerships(
        &self,
        namespace: &str,
        event_hub_name: &str,
        consumer_group: &str,
    ) -> azure_core::Result<Vec<Ownership>> {
        let dir = record_dir(
            &self.root,
            &ownership_prefix(namespace, event_hub_name, consumer_group)?,
        );
        let (namespace, event_hub_name, consumer_group) = (
            namespace.to_owned(),
            event_hub_name.to_owned(),
            consumer_group.to_owned(),
        );
        let records = self
            .blocking(move |root| {
                let mut records = read_records::<OwnershipRecord>(&dir)?;
                for (_, record) in &mut records {
                    // A gone owner's lease is over now, not at its expiry.
                    if !record.owner_id.is_empty() && owner_is_gone(root, &record.owner_id) {
                        record.last_modified = OffsetDateTime::UNIX_EPOCH;
                    }
                }
                Ok(records)
            })
            .await?;
        Ok(records
            .into_iter()
            .map(|(partition_id, record)| Ownership {
                fully_qualified_namespace: namespace.clone(),
                event_hub_name: event_hub_name.clone(),
                consumer_group: consumer_group.clone(),
                partition_id,
                owner_id: owner_from_store(Some(&record.owner_id)),
                etag: Some(Etag::from(record.etag)),
                last_modified_time: Some(record.last_modified),
            })
            .collect())
    }

    async fn update_checkpoint(&self, checkpoint: Checkpoint) -> azure_core::Result<()> {
        let path = record_path(
            &self.root,
            &checkpoint_prefix(
                &checkpoint.fully_qualified_namespace,
                &checkpoint.event_hub_name,
                &checkpoint.consumer_group,
            )?,
            &checkpoint.partition_id,
        )?;
        if checkpoint.offset.is_none() && checkpoint.sequence_number.is_none() {
            return Err(
                CheckpointStoreError::invalid("checkpoint", "has neither an offset nor a sequence number").into(),
            );
        }
        let record = CheckpointRecord {
            offset: offset_to_store(checkpoint.offset.as_deref())?.to_owned(),
            sequence_number: checkpoint.sequence_number,
            etag: new_etag(),
            last_modified: OffsetDateTime::now_utc(),
        };
        let bytes = serde_json::to_vec_pretty(&record).expect("a checkpoint record serializes");
        self.blocking(move |root| {
            let _lock = lock(root)?;
            write_atomic(root, &path, &bytes)
        })
        .await?;
        Ok(())
    }
}

fn claim(root: &Path, ownerships: Vec<Ownership>) -> StoreResult<Vec<Ownership>> {
    // Validate everything before touching anything.
    let mut planned = Vec::with_capacity(ownerships.len());
    for ownership in ownerships {
        let prefix = ownership_prefix(
            &ownership.fully_qualified_namespace,
            &ownership.event_hub_name,
            &ownership.consumer_group,
        )?;
        let path = record_path(root, &prefix, &ownership.partition_id)?;
        let owner = owner_to_store(ownership.owner_id.as_deref())?.to_owned();
        planned.push((ownership, path, owner));
    }

    let _lock = lock(root)?;
    let mut won = Vec::new();
    for (mut ownership, path, owner) in planned {
        let current = read_record::<OwnershipRecord>(&path)?;
        let allowed = match (&ownership.etag, &current) {
            // First claim: only if nobody created the record yet.
            (None, None) => true,
            // Renew / steal / release: only with the record's current ETag.
            (Some(expected), Some(current)) => same_etag(expected.as_ref(), &current.etag),
            (None, Some(_)) | (Some(_), None) => false,
        };
        if !allowed {
            tracing::debug!(
                partition_id = %ownership.partition_id,
                owner_id = %owner,
                "ownership claim lost (record changed or already exists)"
            );
            continue;
        }
        let record = OwnershipRecord {
            owner_id: owner.clone(),
            etag: new_etag(),
            last_modified: OffsetDateTime::now_utc(),
        };
        let bytes = serde_json::to_vec_pretty(&record).expect("an ownership record serializes");
        write_atomic(root, &path, &bytes)?;
        ownership.owner_id = owner_from_store(Some(&owner));
        ownership.etag = Some(Etag::from(record.etag));
        ownership.last_modified_time = Some(record.last_modified);
        won.push(ownership);
    }
    Ok(won)
}

/// A quoted, random etag.
fn new_etag() -> String {
    format!("\"0x{:016X}\"", rand::random::<u64>())
}

/// Holds the store-wide write lock until dropped.
#[allow(clippy::incompatible_msrv)] // `File::lock` is std since 1.89; the workspace builds with a newer toolchain.
fn lock(root: &Path) -> StoreResult<File> {
    let path = root.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CheckpointStoreError::io(&path, e))?;
    file.lock().map_err(|e| CheckpointStoreError::io(&path, e))?;
    Ok(file)
}

/// The directory of a record prefix (`ns/hub/group/ownership/`).
fn record_dir(root: &Path, prefix: &str) -> PathBuf {
    let mut dir = root.to_path_buf();
    for component in prefix.split('/').filter(|c| !c.is_empty()) {
        dir.push(escape_component(component));
    }
    dir
}

fn record_path(root: &Path, prefix: &str, partition: &str) -> StoreResult<PathBuf> {
    check_component("partition id", partition)?;
    let mut path = record_dir(root, prefix);
    path.push(format!(
        "{}{RECORD_SUFFIX}",
        escape_component(&partition.to_lowercase())
    ));
    Ok(path)
}

/// Makes a name component a safe file name: `[a-z0-9._$-]` stay, the rest (and a leading `.`) become `%XX`.
fn escape_component(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    for (i, byte) in component.bytes().enumerate() {
        let keep = byte.is_ascii_lowercase()
            || byte.is_ascii_digit()
            || matches!(byte, b'_' | b'$' | b'-')
            || (byte == b'.' && i > 0);
        if keep {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn read_record<T: for<'de> Deserialize<'de>>(path: &Path) -> StoreResult<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CheckpointStoreError::Corrupt {
                location: path.display().to_string(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CheckpointStoreError::io(path, e)),
    }
}

/// Every record in `dir`, by partition id, in partition order.
fn read_records<T: for<'de> Deserialize<'de>>(dir: &Path) -> StoreResult<Vec<(String, T)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CheckpointStoreError::io(dir, e)),
    };
    let mut records = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CheckpointStoreError::io(dir, e))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else { continue };
        // Temporary files start with '.', records never do.
        let Some(escaped) = name.strip_suffix(RECORD_SUFFIX).filter(|_| !name.starts_with('.')) else {
            continue;
        };
        // A record renamed away between listing and reading is simply absent.
        if let Some(record) = read_record::<T>(&entry.path())? {
            records.push((crate::blob::signing::percent_decode(escaped), record));
        }
    }
    records.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(records)
}

/// Writes `bytes` to `path` so that it is replaced whole or not at all, and durably.
/// The caller holds the store lock, so one fixed temporary name per record is enough.
fn write_atomic(root: &Path, path: &Path, bytes: &[u8]) -> StoreResult<()> {
    let dir = path.parent().expect("a record path has a parent");
    ensure_dir(root, dir)?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("record names are UTF-8");
    let tmp = dir.join(format!(".{file_name}{TMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| CheckpointStoreError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| CheckpointStoreError::io(&tmp, e))?;
    file.sync_all().map_err(|e| CheckpointStoreError::io(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| CheckpointStoreError::io(path, e))?;
    sync_dir(dir)
}

/// Creates `dir` (under `root`) if missing and makes the new directory entries durable.
fn ensure_dir(root: &Path, dir: &Path) -> StoreResult<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| CheckpointStoreError::io(dir, e))?;
    let mut current = dir;
    while let Some(parent) = current.parent() {
        sync_dir(parent)?;
        if parent == root || !parent.starts_with(root) {
            break;
        }
        current = parent;
    }
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CheckpointStoreError::io(dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> StoreResult<()> {
    // Directories cannot be opened for fsync on Windows; NTFS journals the rename.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_file_names() {
        assert_eq!(
            escape_component("myns.servicebus.windows.net"),
            "myns.servicebus.windows.net"
        );
        assert_eq!(escape_component("$default"), "$default");
        assert_eq!(escape_component(".."), "%2E.");
        assert_eq!(escape_component("a:b\\c%"), "a%3Ab%5Cc%25");
        assert_eq!(crate::blob::signing::percent_decode(&escape_component("é:.x")), "é:.x");
    }

    #[test]
    fn record_paths_follow_the_blob_layout() {
        let root = Path::new("/store");
        let prefix = ownership_prefix("MyNS.servicebus.windows.net", "MyHub", "$Default").unwrap();
        assert_eq!(
            record_path(root, &prefix, "0").unwrap(),
            Path::new("/store/myns.servicebus.windows.net/myhub/$default/ownership/0.json")
        );
    }
}

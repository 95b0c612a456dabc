//! `[checkpoints]`: where checkpoints and ownership records go, and the store opened from it.
//!
//! With the file store, every owner id this process claims as is held alive through
//! [`FileCheckpointStore::hold_owner`], so that after a crash another instance on the machine (or
//! this one, restarted) takes its partitions over at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use azure_messaging_eventhubs::CheckpointStore;
use defender_eventhub::Secret;
use defender_eventhub::blob::BlobClient;
use defender_eventhub::checkpoint::{BlobCheckpointStore, FileCheckpointStore, OwnerLock};
use serde::Deserialize;
use serde_with::serde_as;
use toml::Spanned;
use toml::de::DeValue;

use crate::config::{ConfigError, File, Invalid, Kind, SecretText, Text};

/// `[checkpoints]`.
#[derive(Debug, Clone)]
pub enum CheckpointsConfig {
    /// `kind = "file"` (the default): a local directory.
    File(FileStoreConfig),
    /// `kind = "blob"`: an Azure Storage container, in the layout the Azure SDKs share, so that
    /// instances on several machines split the partitions.
    Blob(BlobStoreConfig),
}

impl Default for CheckpointsConfig {
    fn default() -> Self {
        CheckpointsConfig::File(FileStoreConfig::default())
    }
}

/// `kind = "file"`.
#[serde_as]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStoreConfig {
    /// The directory (default `state_dir/checkpoints`).
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub dir: Option<String>,
}

/// `kind = "blob"`.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobStoreConfig {
    /// A storage account connection string.
    #[serde_as(as = "SecretText")]
    pub connection_string: Secret,
    /// The container (created when missing and allowed).
    #[serde_as(as = "Text")]
    pub container: String,
}

enum StoreKind {
    File(FileStoreConfig),
    Blob(BlobStoreConfig),
}

const KINDS: &[Kind<StoreKind>] = &[
    Kind {
        name: "file",
        parse: |d| Ok(Box::new(StoreKind::File(FileStoreConfig::deserialize(d)?))),
    },
    Kind {
        name: "blob",
        parse: |d| Ok(Box::new(StoreKind::Blob(BlobStoreConfig::deserialize(d)?))),
    },
];

impl CheckpointsConfig {
    pub(crate) fn parse<'i>(file: &File<'_, 'i>, value: &Spanned<DeValue<'i>>) -> Result<Self, ConfigError> {
        let with_kind = match value.get_ref() {
            DeValue::Table(t) if !t.contains_key("kind") => {
                let mut t = t.clone();
                t.insert(
                    Spanned::new(value.span(), "kind".into()),
                    Spanned::new(value.span(), DeValue::String("file".into())),
                );
                Spanned::new(value.span(), DeValue::Table(t))
            }
            _ => value.clone(),
        };
        let (kind, rest) = file.kind_of(&with_kind, "checkpoints", KINDS)?;
        let parsed = (kind.parse)(toml::de::ValueDeserializer::from(rest))
            .map_err(|e| file.serde_error(&e, "checkpoints", Some(kind.name)))?;
        Ok(match *parsed {
            StoreKind::File(c) => CheckpointsConfig::File(c),
            StoreKind::Blob(c) => CheckpointsConfig::Blob(c),
        })
    }

    pub(crate) fn check(&self) -> Result<(), Invalid> {
        match self {
            CheckpointsConfig::File(c) if c.dir.as_deref().is_some_and(|d| d.trim().is_empty()) => {
                Err(Invalid::new("dir", "is empty"))
            }
            CheckpointsConfig::Blob(c) if c.container.trim().is_empty() => Err(Invalid::new("container", "is empty")),
            _ => Ok(()),
        }
    }

    /// Opens the store (`state_dir` holds the default file store).
    pub async fn open(&self, state_dir: &Path) -> Result<Store, String> {
        match self {
            CheckpointsConfig::Blob(c) => {
                let client = BlobClient::from_connection_string(c.connection_string.expose(), &c.container)
                    .map_err(|e| e.to_string())?;
                // Lacking the right to create is fine when the container exists; the store says so if not.
                if let Err(e) = client.create_container().await {
                    tracing::warn!(container = %c.container, error = %e, "could not create the checkpoint container");
                }
                Ok(Store {
                    shared: Arc::new(BlobCheckpointStore::new(client)),
                    file: None,
                    owners: Mutex::default(),
                })
            }
            CheckpointsConfig::File(c) => {
                let dir = c
                    .dir
                    .as_ref()
                    .map_or_else(|| state_dir.join("checkpoints"), PathBuf::from);
                let file = FileCheckpointStore::open(&dir).map_err(|e| e.to_string())?;
                Ok(Store {
                    shared: Arc::new(file.clone()),
                    file: Some(file),
                    owners: Mutex::default(),
                })
            }
        }
    }
}

/// An open checkpoint store.
pub struct Store {
    shared: Arc<dyn CheckpointStore>,
    file: Option<FileCheckpointStore>,
    owners: Mutex<Vec<(String, OwnerLock)>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store given directly (tests, tools).
    pub fn new(store: Arc<dyn CheckpointStore>) -> Store {
        Store {
            shared: store,
            file: None,
            owners: Mutex::default(),
        }
    }

    /// The store.
    pub fn get(&self) -> Arc<dyn CheckpointStore> {
        self.shared.clone()
    }

    /// Marks `owner_id` alive for as long as this store is open (file stores only; see
    /// [`FileCheckpointStore::hold_owner`]).
    pub fn hold_owner(&self, owner_id: &str) -> Result<(), String> {
        let Some(file) = &self.file else { return Ok(()) };
        let mut owners = self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if owners.iter().any(|(o, _)| o == owner_id) {
            return Ok(());
        }
        let lock = file.hold_owner(owner_id).map_err(|e| e.to_string())?;
        owners.push((owner_id.to_owned(), lock));
        Ok(())
    }
}

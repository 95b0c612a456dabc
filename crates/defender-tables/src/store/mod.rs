//! Where tables live: a local directory or an Azure Blob container, behind one small,
//! blocking interface. Names are `/`-separated paths relative to the root.

mod blob;
mod local;

use std::fmt;
use std::io::Write;
use std::time::SystemTime;

pub use blob::BlobRoot;
pub(crate) use blob::BlobStore;
pub(crate) use local::{LocalStore, sync_dir};

use crate::TablesError;

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// An append-only staging log. `append` returns once the bytes are durable.
pub(crate) trait LogFile: Send + fmt::Debug {
    fn append(&mut self, frame: &[u8]) -> Result<(), TablesError>;
}

/// A file being written under a name no reader sees; `commit` publishes it atomically under its
/// final name, and only if no file has that name yet.
pub(crate) trait Upload: Write + Send + fmt::Debug {
    /// `Ok(true)`: published; `Ok(false)`: a file of that name already existed (published by
    /// an earlier run: nothing was changed).
    fn commit(self: Box<Self>) -> Result<bool, TablesError>;
}

pub(crate) trait Store: Send + Sync + fmt::Debug {
    /// Creates a staging log holding `header`, durably; fails if it exists.
    fn create_log(&self, name: &str, header: &[u8]) -> Result<Box<dyn LogFile>, TablesError>;
    /// Starts a file to be published as `name`; `tmp_key` names its invisible temporary form.
    fn create_file(&self, name: &str, tmp_key: &str) -> Result<Box<dyn Upload>, TablesError>;
    fn read(&self, name: &str) -> Result<Vec<u8>, TablesError>;
    fn exists(&self, name: &str) -> Result<bool, TablesError>;
    /// Every file under `prefix` (a directory path ending in `/`, or empty for all), recursively.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, TablesError>;
    /// Deletes a file; a missing one is not an error.
    fn delete(&self, name: &str) -> Result<(), TablesError>;
    /// Removes temporary files left under `prefix` by a crashed run.
    fn clear_temporary(&self, prefix: &str) -> Result<(), TablesError>;
    /// A description for logs (no credentials).
    fn describe(&self) -> String;
    /// The directory, for a local root (compaction swaps directories there).
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }
}

//! An Azure Blob container as the root, through the project's own Blob REST client
//! (`defender_eventhub::blob`).
//!
//! - Staging logs are append blobs: one Append Block per frame, conditioned on the expected
//!   length, so a retried request can never append a frame twice; a committed block is durable
//!   and atomic (no torn frames).
//! - A table file is staged as uncommitted blocks under its final name (no listing or reader
//!   sees uncommitted blocks) and published by Put Block List with `If-None-Match: *`: atomic,
//!   and never over an existing file. Blocks a crashed run left uncommitted are dropped by the
//!   commit of the next attempt, or by the service after a week.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use defender_eventhub::blob::{BlobClient, BlobErrorKind, Condition};

use super::{Listed, LogFile, Store, Upload};
use crate::TablesError;

/// Size of one staged block of a table file.
const BLOCK_BYTES: usize = 8 * 1024 * 1024;

/// An Azure Blob container holding the tables (built from a connection string, an account URL
/// with a shared key, or a SAS: see [`BlobClient`]).
#[derive(Debug, Clone)]
pub struct BlobRoot {
    /// The container client.
    pub client: BlobClient,
    /// Create the container when it does not exist (default true).
    pub create_container: bool,
}

impl BlobRoot {
    /// A root on `client`'s container.
    pub fn new(client: BlobClient) -> Self {
        Self {
            client,
            create_container: true,
        }
    }
}

/// The blocking face of the async client: its own single-threaded runtime.
pub(crate) struct BlobStore {
    client: BlobClient,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    pub fn open(root: &BlobRoot) -> Result<Self, TablesError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TablesError::io("start the Blob client runtime", "", e))?;
        let store = Self {
            client: root.client.clone(),
            runtime: Arc::new(runtime),
        };
        if root.create_container {
            store.runtime.block_on(store.client.create_container())?;
        }
        Ok(store)
    }
}

fn already_exists(kind: BlobErrorKind) -> bool {
    matches!(kind, BlobErrorKind::Conflict | BlobErrorKind::PreconditionFailed)
}

struct BlobLog {
    client: BlobClient,
    runtime: Arc<tokio::runtime::Runtime>,
    name: String,
    len: u64,
}

impl fmt::Debug for BlobLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobLog")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LogFile for BlobLog {
    fn append(&mut self, frame: &[u8]) -> Result<(), TablesError> {
        let result = self
            .runtime
            .block_on(self.client.append_block_at(&self.name, frame.to_vec(), self.len));
        match result {
            Ok(_) => {}
            // An earlier try whose answer was lost may have landed: it did if the blob grew by
            // exactly this frame (a frame's checksum makes a coincidence harmless on reading).
            Err(e) if e.kind() == BlobErrorKind::PreconditionFailed => {
                let now = self.runtime.block_on(self.client.get_properties(&self.name))?;
                if now.content_length != self.len + frame.len() as u64 {
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.len += frame.len() as u64;
        Ok(())
    }
}

struct BlobUpload {
    client: BlobClient,
    runtime: Arc<tokio::runtime::Runtime>,
    name: String,
    /// A prefix unique to this attempt, so that blocks of a crashed attempt never mix in.
    attempt: String,
    blocks: Vec<String>,
    buffer: Vec<u8>,
}

impl fmt::Debug for BlobUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobUpload")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl BlobUpload {
    fn put_buffer(&mut self) -> Result<(), TablesError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let id = format!("{}-{:08}", self.attempt, self.blocks.len());
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(BLOCK_BYTES));
        self.runtime.block_on(self.client.put_block(&self.name, &id, data))?;
        self.blocks.push(id);
        Ok(())
    }
}

impl Write for BlobUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= BLOCK_BYTES {
            self.put_buffer().map_err(io::Error::other)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for BlobUpload {
    fn commit(mut self: Box<Self>) -> Result<bool, TablesError> {
        self.put_buffer()?;
        let commit = self
            .client
            .put_block_list(&self.name, &self.blocks, &Condition::IfNotExists);
        match self.runtime.block_on(commit) {
            Ok(_) => Ok(true),
            Err(e) if already_exists(e.kind()) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Store for BlobStore {
    fn create_log(&self, name: &str, header: &[u8]) -> Result<Box<dyn LogFile>, TablesError> {
        self.runtime
            .block_on(self.client.create_append_blob(name, &[], &Condition::IfNotExists))?;
        let mut log = BlobLog {
            client: self.client.clone(),
            runtime: Arc::clone(&self.runtime),
            name: name.to_owned(),
            len: 0,
        };
        log.append(header)?;
        Ok(Box::new(log))
    }

    fn create_file(&self, name: &str, _tmp_key: &str) -> Result<Box<dyn Upload>, TablesError> {
        Ok(Box::new(BlobUpload {
            client: self.client.clone(),
            runtime: Arc::clone(&self.runtime),
            name: name.to_owned(),
            attempt: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            blocks: Vec::new(),
            buffer: Vec::with_capacity(BLOCK_BYTES),
        }))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, TablesError> {
        Ok(self.runtime.block_on(self.client.get_blob(name))?)
    }

    fn exists(&self, name: &str) -> Result<bool, TablesError> {
        match self.runtime.block_on(self.client.get_properties(name)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == BlobErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, TablesError> {
        let blobs = self.runtime.block_on(self.client.list_blobs(prefix))?;
        Ok(blobs
            .into_iter()
            .map(|b| Listed {
                name: b.name,
                size: b.content_length,
                modified: b.last_modified.into(),
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<(), TablesError> {
        match self.runtime.block_on(self.client.delete_blob(name, &Condition::None)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == BlobErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn clear_temporary(&self, _prefix: &str) -> Result<(), TablesError> {
        // Nothing to do: a table file's staged blocks are uncommitted blocks of its final name.
        Ok(())
    }

    fn describe(&self) -> String {
        self.client.container_url().to_string()
    }
}

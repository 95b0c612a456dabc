//! Errors of the tables writer.

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TablesError {
    /// The input is not a Defender record (not a JSON object, no string `category`, or
    /// `properties` that is not an object). Nothing was written for it.
    #[error("not a Defender record: {0}")]
    NotARecord(String),
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A Blob Storage request failed (the message never holds credentials).
    #[error(transparent)]
    Blob(#[from] defender_eventhub::blob::BlobError),
    /// Arrow refused a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// Parquet encoding or decoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A file or batch does not have the expected columns or content.
    #[error("{0}")]
    Schema(String),
    /// A staging log is damaged beyond its torn tail.
    #[error("staging log {name}: {why}")]
    Staging {
        /// The log.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The configuration is not valid.
    #[error("tables configuration: {0}")]
    Config(String),
    /// The writer was used after a failure it cannot recover from without reopening.
    #[error("the tables writer failed earlier and must be reopened: {0}")]
    Poisoned(String),
}

impl TablesError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TablesError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

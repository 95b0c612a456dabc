//! Hunt-ready Parquet tables of Microsoft Defender XDR advanced-hunting records: one table per
//! advanced-hunting table, with its exact columns, partitioned by UTC day,
//! `<root>/<Table>/day=YYYY-MM-DD/<file>.parquet`, on local disk or in an Azure Blob container.
//!
//! - [`TableWriter`] takes each record's exact JSON bytes ([`TableWriter::append`]), makes them
//!   durable in a staging log at [`TableWriter::flush`] (acknowledge then), and publishes large
//!   zstd Parquet files atomically at rotation; [`TableWriter::maintain`] rotates by age, applies
//!   retention and compacts finished days.
//! - [`records_to_batches`] and [`batch_to_records`] convert both ways without a file; every
//!   record re-encodes to a JSON value equal to the one that arrived (values that the typed
//!   column cannot re-encode exactly are kept in `_Drift`, unknown columns in `_Unknown`, other
//!   envelope keys in `_Envelope`, absent columns are listed in `_Absent`).
//! - [`read_file`] reads a published file back into records.
//!
//! The schemas come from `defender_schema::arrow`; docs/tables.md has the layout, the column
//! mapping, the guarantees and the crash rules.
#![forbid(unsafe_code)]

mod cell;
mod config;
mod convert;
mod error;
mod json;
mod layout;
mod maintain;
mod staging;
mod store;
mod writer;

use std::fs::File;
use std::path::Path;

pub use config::{TablesConfig, parse_span};
pub use convert::records_to_batches;
pub use error::TablesError;
pub use json::batch_to_records;
pub use layout::{Day, TableName};
pub use store::BlobRoot;
pub use writer::{META_COMPACTED_FROM, META_STAGING_LOG, META_WRITER, Recovery, Root, TableWriter};

/// Reads a published Parquet file of `table` back into the records it holds, in order.
pub fn read_file(table: &TableName, path: &Path) -> Result<Vec<serde_json::Value>, TablesError> {
    let file = File::open(path).map_err(|e| TablesError::io("open", path, e))?;
    read_parquet(table, file)
}

/// As [`read_file`], from the bytes of a file (e.g. downloaded from Blob Storage).
pub fn read_bytes(table: &TableName, bytes: Vec<u8>) -> Result<Vec<serde_json::Value>, TablesError> {
    read_parquet(table, bytes::Bytes::from(bytes))
}

fn read_parquet<R: parquet::file::reader::ChunkReader + 'static>(
    table: &TableName,
    input: R,
) -> Result<Vec<serde_json::Value>, TablesError> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(input)?
        .with_batch_size(8192)
        .build()?;
    let mut out = Vec::new();
    for batch in reader {
        out.extend(batch_to_records(table, &batch?)?);
    }
    Ok(out)
}

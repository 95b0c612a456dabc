//! Reading Microsoft Defender XDR's Event Hub exports.
//!
//! - [`Reader`] reads every partition of a hub concurrently on the official
//!   `azure_messaging_eventhubs` client, shares partitions with other instances through a
//!   [`CheckpointStore`](azure_messaging_eventhubs::CheckpointStore), and checkpoints a position
//!   only when the caller says everything up to it is delivered.
//! - [`checkpoint`] has the stores: local files, and Azure Blob Storage in the layout the other
//!   Azure SDKs use.
//! - [`blob`] is the small Blob REST client behind the Blob store.
#![forbid(unsafe_code)]

mod backoff;
pub mod blob;
pub mod checkpoint;
mod connection;
mod identity;
mod reader;

pub use backoff::Backoff;
pub use connection::{Connection, ConnectionError, Secret, Target};
pub use identity::Identity;
pub use reader::{
    Balancing, Batch, Checkpointer, Event, PartitionKey, Plan, Position, Reader, ReaderConfig, ReaderError, StartFrom,
    plan,
};

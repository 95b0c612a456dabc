//! Reading Microsoft Defender XDR's Event Hub exports.
//!
//! - [`Reader`] reads every partition of a hub concurrently on the official
//!   `azure_messaging_eventhubs` client, shares partitions with other instances through a
//!   [`CheckpointStore`](azure_messaging_eventhubs::CheckpointStore), and checkpoints a position
//!   only when the caller says everything up to it is delivered.
//! - [`checkpoint`] has the stores: local files, and Azure Blob Storage in the layout the other
//!   Azure SDKs use.
//! - [`blob`] is the small Blob REST client behind the Blob store.
//! - [`lease`] is the one ownership engine: partitions, containers, anything shared among
//!   instances through a checkpoint store.
#![forbid(unsafe_code)]

mod backoff;
pub mod blob;
pub mod checkpoint;
mod connection;
mod identity;
pub mod lease;
mod reader;

pub use backoff::Backoff;
pub use connection::{Connection, ConnectionError, Secret, Target};
pub use identity::Identity;
pub use lease::{Balancing, Plan, plan};
pub use reader::{
    Batch, Checkpointer, Message, PartitionKey, PartitionProgress, Position, Reader, ReaderConfig, ReaderError,
    StartFrom,
};

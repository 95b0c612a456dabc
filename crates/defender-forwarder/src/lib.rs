//! The forwarder: sources (Event Hubs, the Storage export) -> split and route per table -> sinks
//! (Sekoia.io intake, local archive, stdout), at least once. A source or sink kind is one module
//! of [`source`] or [`sink`], registered in its `KINDS` list.
//!
//! The one invariant everything here serves: **a checkpoint never passes an undelivered event.**
//! Every event read gets a ticket; every sink that routes any of its records
//! holds an [`Ack`](delivery::Ack) for it and acknowledges only once the records are delivered (or
//! dead-lettered). The per-source [`tracker`] turns completed tickets into checkpoints, highest
//! contiguous position first.
#![forbid(unsafe_code)]

pub mod archive;
pub mod checkpoints;
pub mod config;
pub mod deadletter;
pub mod delivery;
pub mod instance;
pub mod metrics;
pub mod pipeline;
pub mod replay;
pub mod router;
pub mod sink;
pub mod source;
pub mod table_filter;
pub mod tracker;

/// An error and its causes on one line, each cause once (clients often repeat their source's
/// message in their own).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

//! The crate's integration tests, in one binary (one link of the dependency tree instead of one per file).

mod common;
mod conformance;
mod envelope;
mod fixtures;
mod hostile;
mod round_trip;
mod schemas;

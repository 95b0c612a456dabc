//! The crate's integration tests, in one binary (one link of the dependency tree instead of one per file).

mod checkpoint_blob;
mod checkpoint_conformance;
mod checkpoint_file;
mod checkpoint_redaction;
mod reader;
mod scale_out;
mod support;

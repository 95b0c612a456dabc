//! The integration tests of defender-tables, one binary (modules below).
#![allow(clippy::doc_markdown)] // prose names DuckDB, pyarrow and friends

mod blob;
mod common;
mod kill;
mod lossless;
mod readers;
mod writer;

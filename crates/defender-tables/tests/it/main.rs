//! The integration tests of defender-tables, one binary (modules below).

mod blob;
mod common;
mod kill;
mod lossless;
mod readers;
mod writer;

//! The crate's integration tests, in one binary (one link of the dependency tree instead of one per file).

mod archive;
mod common;
mod config_fuzz;
mod faults;
mod forward;
mod kill;
mod per_table;
mod readonly;
mod restart;
mod sink_contract;
mod storage;
mod tables;

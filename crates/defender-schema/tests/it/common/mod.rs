//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use defender_schema::{Record, RecordRef};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared` beside the repository, when this checkout has it.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = repo_root().join("../shared");
    dir.is_dir().then_some(dir)
}

/// decode -> encode -> decode gives the JSON that arrived, for the whole record and for its row.
pub fn assert_round_trip(r: &RecordRef<'_>) -> Record {
    let arrived: Value = serde_json::from_str(r.raw()).unwrap();
    let record = Record::from_ref(r).unwrap_or_else(|e| panic!("{e}\n{}", r.raw()));
    let encoded = serde_json::to_string(&record).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&encoded).unwrap(),
        arrived,
        "record round trip"
    );
    let again = Record::from_json(&encoded).unwrap();
    assert_eq!(serde_json::to_value(&again).unwrap(), arrived, "second round trip");
    let row = serde_json::to_value(&record.event).unwrap();
    assert_eq!(row, arrived["properties"], "row round trip");
    record
}

//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};

use defender_tables::{TableName, read_file};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared` beside the repository, when this checkout has it.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = repo_root().join("../shared");
    dir.is_dir().then_some(dir)
}

/// Every record of the fixtures (`fixtures/{tables,envelopes,drift}`), as its exact text.
pub fn fixture_records() -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["tables", "envelopes", "drift"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(repo_root().join("fixtures").join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for p in paths {
            let body = std::fs::read(&p).unwrap();
            for r in defender_schema::split_body(&body).unwrap() {
                out.push(r.unwrap().raw().to_owned());
            }
        }
    }
    assert!(out.len() > 80, "expected the fixtures, found {} records", out.len());
    out
}

/// Every record in `../shared/conformance/` (`None` when it is absent).
pub fn conformance_records() -> Option<Vec<String>> {
    let dir = shared_dir()?.join("conformance/sekoia");
    let mut paths: Vec<PathBuf> = ["", "extra_branches"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        let r = defender_schema::parse_record(text.trim()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        out.push(r.raw().to_owned());
    }
    Some(out)
}

/// Every published file under `root`: (table, path), skipping the staging area.
pub fn published_files(root: &Path) -> Vec<(TableName, PathBuf)> {
    let mut out = Vec::new();
    let Ok(tables) = std::fs::read_dir(root) else {
        return out;
    };
    for t in tables {
        let t = t.unwrap();
        let name = t.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') {
            continue;
        }
        let table = TableName::of_category(&format!("AdvancedHunting-{name}"));
        let Ok(days) = std::fs::read_dir(t.path()) else {
            continue;
        };
        for d in days.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                out.push((table.clone(), f.path()));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Every record of every published file under `root`.
pub fn read_all(root: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for (table, path) in published_files(root) {
        assert!(
            path.extension().is_some_and(|e| e == "parquet"),
            "not a Parquet file in a table: {}",
            path.display()
        );
        out.extend(read_file(&table, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    }
    out
}

/// The JSON values of records, sorted by their text (for comparing as multisets).
pub fn sorted_values(records: impl IntoIterator<Item = Value>) -> Vec<String> {
    let mut out: Vec<String> = records.into_iter().map(|v| v.to_string()).collect();
    out.sort();
    out
}

/// The Python with pyarrow and duckdb, when `DEFENDER_TABLES_PYTHON` names one.
#[allow(dead_code)] // used by the reader tests
pub fn python() -> Option<PathBuf> {
    std::env::var_os("DEFENDER_TABLES_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

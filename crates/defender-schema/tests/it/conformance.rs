//! Real records from Sekoia's public parser tests (`../shared/conformance/sekoia/`, when present):
//! each decodes into its typed variant and round-trips.

use crate::common;

use std::collections::BTreeMap;

use defender_schema::parse_record;

#[test]
fn sekoia_samples() {
    let Some(shared) = common::shared_dir() else {
        eprintln!("../shared/conformance/sekoia not present: skipped");
        return;
    };
    let dir = shared.join("conformance/sekoia");
    let mut files: Vec<_> = ["", "extra_branches"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() > 50, "expected the Sekoia samples, found {}", files.len());
    let mut unknown: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut drift: BTreeMap<String, usize> = BTreeMap::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let r = parse_record(text.trim()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let table = r
            .table()
            .unwrap_or_else(|| panic!("{}: unknown table {}", path.display(), r.category()));
        let record = common::assert_round_trip(&r);
        assert_eq!(record.event.table(), Some(table));
        for column in record.event.unknown_columns().unwrap().keys() {
            *unknown
                .entry(table.name().to_owned())
                .or_default()
                .entry(column.clone())
                .or_default() += 1;
        }
        for d in record.event.type_drift() {
            *drift.entry(format!("{table}.{d}")).or_default() += 1;
        }
    }
    eprintln!("{} samples decoded and round-tripped", files.len());
    eprintln!("unknown columns (table: column x samples):");
    for (table, columns) in &unknown {
        let list: Vec<String> = columns.iter().map(|(c, n)| format!("{c} x{n}")).collect();
        eprintln!("  {table}: {}", list.join(", "));
    }
    eprintln!("type drift:");
    for (d, n) in &drift {
        eprintln!("  {d} x{n}");
    }
}

//! Every fixture: split, decode, round trip, and a snapshot of what the decoder reports.

use crate::common;

use std::fmt::Write as _;

use defender_schema::split_body;

fn summarize(body: &[u8]) -> String {
    let mut out = String::new();
    let records = match split_body(body) {
        Ok(records) => records,
        Err(e) => return format!("body error: {e}\n"),
    };
    if records.is_empty() {
        out.push_str("no records\n");
    }
    for (i, r) in records.iter().enumerate() {
        let r = match r {
            Ok(r) => r,
            Err(bad) => {
                writeln!(out, "{i}: not a Defender record: {}", bad.error).unwrap();
                continue;
            }
        };
        let record = common::assert_round_trip(r);
        let columns = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(r.properties().get())
            .unwrap()
            .len();
        let known = if r.table().is_some() { "" } else { " (unknown table)" };
        writeln!(out, "{i}: {}{known}, {columns} columns, round trip ok", r.table_name()).unwrap();
        for drift in record.event.type_drift() {
            writeln!(out, "   drift {:?}: {drift}", drift.kind).unwrap();
        }
        for column in record.event.unknown_columns().into_iter().flat_map(|m| m.keys()) {
            writeln!(out, "   unknown column: {column}").unwrap();
        }
    }
    out
}

#[test]
fn fixtures() {
    insta::glob!("../../../../fixtures", "**/*.json", |path| {
        let body = std::fs::read(path).unwrap();
        insta::assert_snapshot!(summarize(&body));
    });
}

#[test]
fn every_table_has_a_fixture() {
    let dir = common::repo_root().join("fixtures/tables");
    for table in defender_schema::Table::ALL {
        let path = dir.join(format!("{}.json", table.name()));
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let records = split_body(&body).unwrap();
        assert!(
            records
                .iter()
                .any(|r| r.as_ref().is_ok_and(|r| r.table() == Some(*table))),
            "{} holds no {table} record",
            path.display()
        );
    }
}

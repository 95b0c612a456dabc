//! Real readers: pyarrow and DuckDB (from PyPI, in the CI venv) open the files the writer wrote.
//! Per table, the column names and types equal the schema, the values equal the records sent,
//! and the `day` partition is recognised. Runs when `DEFENDER_TABLES_PYTHON` names a Python with
//! both installed (`.ci/run` sets it); says it skipped otherwise.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use defender_tables::{Root, TableWriter, TablesConfig, records_to_batches};
use serde_json::{Map, Value};

use crate::common;

/// One row as the readers print it; `ts_divisor` scales nanoseconds to the reader's unit.
fn rows_of(batch: &RecordBatch, ts_divisor: i64) -> Vec<String> {
    let mut rows = vec![Map::new(); batch.num_rows()];
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        for (r, row) in rows.iter_mut().enumerate() {
            let v = if array.is_null(r) {
                Value::Null
            } else {
                match field.data_type() {
                    DataType::Timestamp(..) => Value::from(
                        array
                            .as_primitive::<TimestampNanosecondType>()
                            .value(r)
                            .div_euclid(ts_divisor),
                    ),
                    DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(r)),
                    DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(r)),
                    DataType::Float64 => Value::from(array.as_primitive::<Float64Type>().value(r)),
                    DataType::Boolean => Value::from(array.as_boolean().value(r)),
                    _ => Value::from(array.as_string::<i32>().value(r)),
                }
            };
            row.insert(field.name().clone(), v);
        }
    }
    rows.into_iter().map(|m| Value::Object(m).to_string()).collect()
}

/// A reader's rows without `day`, its column names mapped back to the schema's (`renamed`:
/// reader name -> schema name).
fn reader_rows(rows: &Value, renamed: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let r: Map<String, Value> = r
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "day")
                .map(|(k, v)| (renamed.get(k).unwrap_or(k).clone(), v.clone()))
                .collect();
            Value::Object(r).to_string()
        })
        .collect();
    out.sort();
    out
}

fn pyarrow_type(t: &DataType) -> &'static str {
    match t {
        DataType::Timestamp(..) => "timestamp[ns, tz=UTC]",
        DataType::Int64 => "int64",
        DataType::Int32 => "int32",
        DataType::Boolean => "bool",
        DataType::Float64 => "double",
        _ => "string",
    }
}

fn duckdb_type(t: &DataType) -> &'static str {
    match t {
        DataType::Timestamp(..) => "TIMESTAMP WITH TIME ZONE",
        DataType::Int64 => "BIGINT",
        DataType::Int32 => "INTEGER",
        DataType::Boolean => "BOOLEAN",
        DataType::Float64 => "DOUBLE",
        _ => "VARCHAR",
    }
}

/// Runs the script on `root` and checks every table against the records sent.
pub fn check_with_readers(python: &Path, root: &Path, sent: &[String]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_tables.py");
    let out = Command::new(python).arg(&script).arg(root).output().unwrap();
    assert!(
        out.status.success(),
        "read_tables.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    let texts: Vec<&str> = sent.iter().map(String::as_str).collect();
    let expected = records_to_batches(texts).unwrap();
    assert_eq!(
        seen.len(),
        expected.len(),
        "tables seen: {:?}",
        seen.keys().collect::<Vec<_>>()
    );
    let mut duckdb_ts = None;
    for (table, batch) in &expected {
        let s = &seen[table.name()];
        let schema = batch.schema();
        // pyarrow: the schema's names and types, then `day` from the path.
        let columns: Vec<(String, String)> = serde_json::from_value(s["pyarrow"]["columns"].clone()).unwrap();
        let mut want: Vec<(String, String)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), pyarrow_type(f.data_type()).to_owned()))
            .collect();
        assert_eq!(columns[..want.len()], want[..], "pyarrow columns of {table}");
        assert_eq!(
            columns.last().unwrap().0,
            "day",
            "pyarrow sees the day partition of {table}"
        );
        let mut sent_rows = rows_of(batch, 1);
        sent_rows.sort();
        assert_eq!(
            reader_rows(&s["pyarrow"]["rows"], &BTreeMap::new()),
            sent_rows,
            "pyarrow values of {table}"
        );
        // DuckDB: same names; its timestamp type decides the unit it reports.
        let columns: Vec<(String, String)> = serde_json::from_value(s["duckdb"]["columns"].clone()).unwrap();
        let ts_type = columns
            .iter()
            .find(|(n, _)| n == "_Time")
            .map(|(_, t)| t.clone())
            .unwrap();
        // DuckDB's names are case-insensitive: of two columns differing only in case (MessageEvents
        // has ThreadSubtype and ThreadSubType) the second is renamed with `_1`.
        let mut renamed = BTreeMap::new();
        want = Vec::new();
        for f in schema.fields() {
            let ty = match f.data_type() {
                DataType::Timestamp(..) => ts_type.clone(),
                t => duckdb_type(t).to_owned(),
            };
            let clash = want
                .iter()
                .any(|(n, _): &(String, String)| n.eq_ignore_ascii_case(f.name()));
            let name = if clash {
                format!("{}_1", f.name())
            } else {
                f.name().clone()
            };
            renamed.insert(name.clone(), f.name().clone());
            want.push((name, ty));
        }
        assert!(ts_type.starts_with("TIMESTAMP"), "DuckDB reads timestamps as {ts_type}");
        assert_eq!(columns[..want.len()], want[..], "DuckDB columns of {table}");
        assert_eq!(
            columns.last().unwrap(),
            &("day".to_owned(), "DATE".to_owned()),
            "DuckDB day of {table}"
        );
        // DuckDB 1.x reads them as microseconds (TIMESTAMP WITH TIME ZONE), later ones keep ns.
        let divisor = if ts_type.contains("NS") { 1 } else { 1000 };
        let mut sent_rows = rows_of(batch, divisor);
        sent_rows.sort();
        assert_eq!(
            reader_rows(&s["duckdb"]["rows"], &renamed),
            sent_rows,
            "DuckDB values of {table}"
        );
        // Days: exactly the days of the rows.
        let days: Vec<String> = serde_json::from_value(s["days"].clone()).unwrap();
        let mut pyarrow_days: Vec<String> = s["pyarrow"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["day"].as_str().unwrap().to_owned())
            .collect();
        pyarrow_days.sort();
        pyarrow_days.dedup();
        assert_eq!(pyarrow_days, days, "day values of {table}");
        duckdb_ts = Some(ts_type);
    }
    eprintln!(
        "pyarrow and DuckDB read {} tables; DuckDB's timestamp type: {}",
        expected.len(),
        duckdb_ts.unwrap_or_default()
    );
}

#[test]
fn pyarrow_and_duckdb_read_the_tables() {
    let Some(python) = common::python() else {
        eprintln!("DEFENDER_TABLES_PYTHON not set (a Python with pyarrow and duckdb): skipped");
        return;
    };
    let mut sent = common::fixture_records();
    sent.extend(common::conformance_records().unwrap_or_default());
    let dir = tempfile::tempdir().unwrap();
    let config = TablesConfig {
        rotate_rows: 2,
        ..TablesConfig::default()
    };
    let (mut w, _) = TableWriter::open(&Root::Local(dir.path().to_path_buf()), "readers", config).unwrap();
    for r in &sent {
        w.append(r.as_bytes()).unwrap();
    }
    w.close().unwrap();
    check_with_readers(&python, dir.path(), &sent);
}

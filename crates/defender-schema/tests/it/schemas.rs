//! The JSON Schemas: valid against the 2020-12 meta-schema, true to Microsoft's reference, in step
//! with the generated models, and in agreement with them on every fixture.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use defender_schema::{DriftKind, KqlType, Table, split_body};
use jsonschema::Validator;
use serde_json::Value;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema_path(name: &str) -> PathBuf {
    common::repo_root().join("schemas").join(format!("{name}.schema.json"))
}

fn validator(schema: &Value) -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap()
}

/// Column names of a schema in file order (`serde_json::Map` would sort them).
fn column_order(path: &Path) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        properties: Box<serde_json::value::RawValue>,
    }
    let text = std::fs::read_to_string(path).unwrap();
    let doc: Doc = serde_json::from_str(&text).unwrap();
    let mut names = Vec::new();
    let mut de = serde_json::Deserializer::from_str(doc.properties.get());
    serde::Deserializer::deserialize_map(&mut de, KeyOrder(&mut names)).unwrap();
    names
}

struct KeyOrder<'a>(&'a mut Vec<String>);

impl<'de> serde::de::Visitor<'de> for KeyOrder<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key::<String>()? {
            map.next_value::<serde::de::IgnoredAny>()?;
            self.0.push(k);
        }
        Ok(())
    }
}

#[test]
fn every_schema_is_valid_draft_2020_12() {
    let dir = common::repo_root().join("schemas");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let schema = read_json(&path);
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema",
            "{}",
            path.display()
        );
        if let Err(e) = jsonschema::meta::validate(&schema) {
            panic!("{}: {e}", path.display());
        }
        count += 1;
    }
    assert_eq!(count, Table::ALL.len() + 1, "one schema per table plus the envelope");
}

#[test]
fn schemas_match_the_generated_models() {
    for table in Table::ALL {
        let path = schema_path(table.name());
        let schema = read_json(&path);
        assert_eq!(schema["x-category"], table.category());
        let order = column_order(&path);
        let columns: Vec<&str> = table.columns().iter().map(|c| c.name).collect();
        assert_eq!(columns, order, "{table}: column order");
        for column in table.columns() {
            let prop = &schema["properties"][column.name];
            let kql = KqlType::from_name(prop["x-kql-type"].as_str().unwrap()).unwrap();
            assert_eq!(kql, column.kql_type, "{table}.{}", column.name);
            assert_eq!(
                prop.get("x-observed").is_some(),
                column.observed_only,
                "{table}.{}",
                column.name
            );
            assert!(!column.description.is_empty());
        }
    }
}

/// Column names and types as Microsoft documents them (`../shared/reference/advanced-hunting`).
#[test]
fn schemas_follow_the_reference() {
    let Some(shared) = common::shared_dir() else {
        eprintln!("../shared/reference not present: skipped");
        return;
    };
    let dir = shared.join("reference/advanced-hunting");
    let mut tsv_tables = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "tsv") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let reference: Vec<(String, String)> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (c, t) = l.split_once('\t').unwrap();
                (c.trim().to_owned(), t.trim().to_owned())
            })
            .collect();
        let schema = read_json(&schema_path(&name));
        let documented: Vec<(String, String)> = column_order(&schema_path(&name))
            .into_iter()
            .filter(|c| schema["properties"][c].get("x-observed").is_none())
            .map(|c| {
                let t = schema["properties"][&c]["x-kql-type"].as_str().unwrap().to_owned();
                (c, t)
            })
            .collect();
        assert_eq!(
            documented, reference,
            "{name}: documented columns differ from the reference"
        );
        tsv_tables.push(name);
    }
    tsv_tables.sort();
    let mut ours: Vec<String> = Table::ALL.iter().map(|t| t.name().to_owned()).collect();
    ours.sort();
    assert_eq!(ours, tsv_tables);
}

fn fixture_files(sub: &str) -> Vec<PathBuf> {
    let dir = common::repo_root().join("fixtures").join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// For every record of a fixture: (schema errors, drift kinds the model reports).
fn check_against_schemas(
    path: &Path,
    tables: &BTreeMap<&str, Validator>,
    envelope: &Validator,
) -> Vec<(Vec<String>, Vec<DriftKind>)> {
    let body = std::fs::read(path).unwrap();
    let value: Value = serde_json::from_slice(&body).unwrap();
    let errors: Vec<String> = envelope.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{}: envelope: {errors:?}", path.display());
    let mut out = Vec::new();
    for r in split_body(&body).unwrap() {
        let r = r.unwrap_or_else(|bad| panic!("{}: {bad}", path.display()));
        let Some(table) = r.table() else { continue };
        let props: Value = serde_json::from_str(r.properties().get()).unwrap();
        let schema_errors = tables[table.name()]
            .iter_errors(&props)
            .map(|e| format!("{table}: {e}"))
            .collect();
        let drift = r.decode().unwrap().type_drift().into_iter().map(|d| d.kind).collect();
        out.push((schema_errors, drift));
    }
    out
}

#[test]
fn fixtures_agree_with_schemas() {
    let envelope = validator(&read_json(&common::repo_root().join("schemas/envelope.schema.json")));
    let schemas: Vec<(Table, Value)> = Table::ALL
        .iter()
        .map(|t| (*t, read_json(&schema_path(t.name()))))
        .collect();
    let tables: BTreeMap<&str, Validator> = schemas.iter().map(|(t, s)| (t.name(), validator(s))).collect();

    for sub in ["tables", "envelopes", "drift"] {
        for path in fixture_files(sub) {
            let records = check_against_schemas(&path, &tables, &envelope);
            for (schema_errors, drift) in &records {
                // The schema and the model agree: a record fails its schema exactly when the model
                // finds a value it could not read as the documented type.
                let mismatch = drift.contains(&DriftKind::Mismatch);
                assert_eq!(
                    !schema_errors.is_empty(),
                    mismatch,
                    "{}: schema errors {schema_errors:?} vs model drift {drift:?}",
                    path.display()
                );
                if sub != "drift" {
                    assert!(schema_errors.is_empty(), "{}: {schema_errors:?}", path.display());
                }
            }
            if sub == "drift" {
                assert!(
                    records.iter().any(|(_, d)| !d.is_empty()),
                    "{}: a drift fixture with no drift",
                    path.display()
                );
            }
        }
    }
}

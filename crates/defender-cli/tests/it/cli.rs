//! The `defender` command end to end: every command, good and bad input, exit codes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn defender() -> Command {
    let mut cmd = Command::cargo_bin("defender").unwrap();
    cmd.current_dir(repo());
    cmd
}

/// (exit code, stdout, stderr)
fn run(args: &[&str]) -> (i32, String, String) {
    let out = defender().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn tables() {
    let (code, out, _) = run(&["tables"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(out);
    let (code, json, _) = run(&["tables", "--json"]);
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), defender_schema::Table::ALL.len());
    assert_eq!(rows[0]["category"], "AdvancedHunting-AlertEvidence");
}

#[test]
fn schema() {
    let (code, out, _) = run(&["schema", "deviceinfo"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(out);
    let (code, json, _) = run(&["schema", "AdvancedHunting-DeviceInfo", "--json"]);
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(schema["title"], "DeviceInfo");
}

#[test]
fn schema_unknown_table_is_a_usage_error() {
    let (code, out, err) = run(&["schema", "DeviceFooEvents"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("unknown table `DeviceFooEvents`"), "{err}");
}

#[test]
fn validate_fixtures_report() {
    let (code, out, err) = run(&["validate", "fixtures"]);
    assert_eq!(code, 1, "fixtures/invalid holds invalid records: {err}");
    insta::assert_snapshot!(out);
}

#[test]
fn validate_names_the_files_a_folder_held_but_it_did_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let record = std::fs::read(repo().join("fixtures/tables/DeviceInfo.json")).unwrap();
    std::fs::write(dir.path().join("a.log"), &record).unwrap();
    std::fs::write(dir.path().join("b.log"), &record).unwrap();
    let (code, out, _) = run(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 records in 0 files"), "{out}");
    assert!(
        out.contains("2 files skipped") && out.contains("a.log") && out.contains("b.log"),
        "{out}"
    );
    assert!(out.contains("defender validate") && out.contains(".ndjson"), "{out}");
    // Named on the command line, they are read.
    let a = dir.path().join("a.log");
    let (code, out, _) = run(&["validate", a.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("in 1 files") && !out.contains("skipped"), "{out}");
}

#[test]
fn validate_json_summary() {
    let (code, out, _) = run(&["validate", "--json", "fixtures/tables", "fixtures/envelopes"]);
    assert_eq!(code, 0);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "records",
        "by_table",
        "invalid",
        "invalid_samples",
        "unknown_tables",
        "unknown_columns",
    ] {
        assert!(s.get(key).is_some(), "summary lacks `{key}`");
    }
    assert_eq!(s["invalid"], 0);
    assert_eq!(s["unknown_tables"]["AdvancedHunting-FutureSignalEvents"], 1);
    assert_eq!(
        s["unknown_columns"]["DeviceImageLoadEvents"],
        serde_json::json!(["FutureColumnX", "InitiatingProcessUniqueId"])
    );
    let by_table: u64 = s["by_table"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        by_table + 1,
        s["records"].as_u64().unwrap(),
        "every record but the unknown-table one is by table"
    );
}

#[test]
fn validate_invalid_samples_name_file_and_place() {
    let (code, out, _) = run(&["validate", "--json", "fixtures/invalid/no-category.json"]);
    assert_eq!(code, 1);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["invalid"], 1);
    assert_eq!(s["records"], 3);
    let sample = &s["invalid_samples"][0];
    assert_eq!(sample["file"], "fixtures/invalid/no-category.json");
    assert_eq!(sample["at"], "record 1");
    assert_eq!(sample["reason"], "record has no `category`");
}

fn temp_with(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn validate_reads_gzip_zstd_ndjson_arrays_and_stdin() {
    let body = std::fs::read(repo().join("fixtures/envelopes/compact.json")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let (_d1, gz_path) = temp_with("body.json.gz", &gz.finish().unwrap());
    let (_d2, zst_path) = temp_with("body.json.zst", &zstd::encode_all(body.as_slice(), 3).unwrap());

    // The compact body holds 5 records: as NDJSON lines and as a JSON array of records.
    let records: Vec<String> = defender_schema::split_body(&body)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().raw().to_owned())
        .collect();
    let (_d3, ndjson) = temp_with("records.ndjson", records.join("\n").as_bytes());
    let (_d4, array) = temp_with("records.json", format!("[{}]", records.join(",")).as_bytes());

    for path in [&gz_path, &zst_path, &ndjson, &array] {
        let (code, out, err) = run(&["validate", "--json", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        let s: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(s["records"], 5, "{}", path.display());
        assert_eq!(s["valid"], 5, "{}", path.display());
    }

    let out = defender()
        .args(["validate", "--json", "-"])
        .write_stdin(body)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["records"], 5);
}

#[test]
fn validate_bad_input() {
    // A missing file: a usage error naming it, no panic, no backtrace.
    let (code, _, err) = run(&["validate", "no/such/file.json"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: cannot read `no/such/file.json`"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");

    // Invalid JSON: reported as invalid, exit 1.
    let (_d, broken) = temp_with("broken.json", b"{\"records\": [ {\"category\": ");
    let (code, out, _) = run(&["validate", broken.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("not valid JSON"), "{out}");

    // Truncated gzip: the file cannot be read, a clear error.
    let body = std::fs::read(repo().join("fixtures/envelopes/compact.json")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let gz = gz.finish().unwrap();
    let (_d, truncated) = temp_with("cut.json.gz", &gz[..gz.len() / 2]);
    let (code, _, err) = run(&["validate", truncated.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("gzip data is truncated or corrupt"), "{err}");

    // No arguments: clap's usage error.
    let (code, _, err) = run(&["validate"]);
    assert_eq!(code, 2);
    assert!(err.contains("Usage"), "{err}");
}

#[test]
fn help_has_examples() {
    for cmd in ["tables", "schema", "validate"] {
        let (code, out, _) = run(&[cmd, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("Examples:"), "{cmd} --help has no examples");
    }
}

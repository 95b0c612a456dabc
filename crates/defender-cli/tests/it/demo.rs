//! The README's demo command, run as the README gives it, so the README cannot rot; and the
//! dead-letter commands.

use std::path::Path;
use std::process::Command;

use defender_schema::Table;

fn readme_demo_args() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("cargo run") && l.contains("-- demo"))
        .expect("README.md gives a `cargo run ... -- demo` command");
    let command = line.split('#').next().unwrap();
    let (cargo, args) = command.split_once(" -- ").unwrap();
    assert!(
        cargo.contains("-p defender-cli"),
        "the demo runs the defender binary: {line}"
    );
    args.split_whitespace().map(str::to_owned).collect()
}

fn defender(dir: &Path, args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_defender"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn the_readme_demo_forwards_every_table_into_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let args = readme_demo_args();
    assert_eq!(args, ["demo"]);
    for run in 0..2 {
        // Twice: a second run clears what the first left and gives the same result.
        let out = defender(dir.path(), &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for t in Table::ALL {
            let row = stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(t.name()))
                .unwrap_or_else(|| panic!("no row for {} in:\n{stdout}", t.name()));
            let records: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!(records > 0, "{row}");
            assert!(dir.path().join("defender-demo/archive").join(t.name()).is_dir());
            // The same records in the table's Parquet files, read back from them.
            let rows: u64 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
            assert_eq!(rows, records, "{row}");
        }
        let loaded: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("loaded "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        let total: u64 = stdout
            .lines()
            .find(|l| l.starts_with("total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        let dead: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("dead letters: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert_eq!(total + dead, loaded, "{stdout}");
    }
}

#[test]
fn the_demo_will_not_clear_a_folder_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_defender"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not made by `defender demo`"));
    assert!(dir.path().join("precious.txt").exists());
}

#[test]
fn dead_letters_are_listed_and_replayed_through_their_sink() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let day = state.join("dead-letters/2026-11-20");
    std::fs::create_dir_all(&day).unwrap();
    let record =
        r#"{"time":"2026-11-20T10:00:00Z","category":"AdvancedHunting-DeviceInfo","properties":{"DeviceName":"ws-1"}}"#;
    let entry = serde_json::json!({
        "at": "2026-11-20T10:00:01.000Z", "sink": "archive", "source": "hub", "partition": "defender/$Default/0",
        "sequence_number": 7, "table": "DeviceInfo", "reason": "archive: write /x: No space left on device", "record": record,
    });
    let broken = serde_json::json!({
        "at": "2026-11-20T10:00:02.000Z", "sink": "forwarder", "source": "hub", "partition": "defender/$Default/1",
        "sequence_number": 9, "reason": "message body is not valid JSON", "record": "oops",
    });
    std::fs::write(day.join("archive.ndjson"), format!("{entry}\n")).unwrap();
    std::fs::write(day.join("forwarder.ndjson"), format!("{broken}\n")).unwrap();
    let config = dir.path().join("f.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[sources]]\nkind = \"eventhub\"\nconnection_string = \"Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=a;SharedAccessKey=b\"\nhub = \"h\"\n[[sinks]]\nkind = \"files\"\nname = \"archive\"\ndir = \"{}\"\n",
            state.display(),
            dir.path().join("archive").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_defender"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["dead-letter", "list", "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("2 dead letters") && text.contains("No space left"),
        "{text}"
    );

    let out = run(&["dead-letter", "replay", "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("delivered 1 records to archive"), "{text}");
    assert!(
        text.contains("skipped") && text.contains("not a Defender record"),
        "{text}"
    );
    let seg = std::fs::read_dir(dir.path().join("archive/DeviceInfo/2026-11-20"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let lines = zstd::stream::decode_all(&std::fs::read(seg).unwrap()[..]).unwrap();
    assert_eq!(String::from_utf8(lines).unwrap(), format!("{record}\n"));

    let out = run(&["dead-letter", "list", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(state.join("dead-letters/replayed").read_dir().unwrap().count() == 2);
    let out = run(&["dead-letter", "list"]);
    assert_eq!(out.status.code(), Some(2));
}

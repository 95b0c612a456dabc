//! The local archive: round trip, rotation, crash repair, retention, validation, file modes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::NaiveDate;
use defender_forwarder::archive::{Archive, ArchiveError, ArchiveOptions};

fn options() -> ArchiveOptions {
    ArchiveOptions::default()
}

/// Segment files of one table/day, in name order.
fn segments(dir: &Path, table: &str, day: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join(table).join(day))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn is_active(path: &Path) -> bool {
    path.to_str().unwrap().ends_with(".active.ndjson.zst")
}

/// Every line of the segments of one table/day, decoded in name order.
fn read_lines(dir: &Path, table: &str, day: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for file in segments(dir, table, day) {
        let raw = zstd::stream::decode_all(fs::File::open(&file).unwrap()).unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(text.ends_with('\n'), "{} ends with a newline", file.display());
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

/// `zstd -dc` agrees with the zstd crate, when the CLI is installed.
fn check_with_cli(file: &Path) {
    let Ok(out) = Command::new("zstd").arg("-dcq").arg(file).output() else {
        println!(
            "note: zstd CLI not on PATH, skipping the CLI check of {}",
            file.display()
        );
        return;
    };
    assert!(
        out.status.success(),
        "zstd -dc {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        zstd::stream::decode_all(fs::File::open(file).unwrap()).unwrap()
    );
}

fn record(table: &str, day: &str, i: usize) -> String {
    format!(
        r#"{{"Timestamp":"{day}T00:00:00Z","Table":"{table}","i":{i},"pad":"{}"}}"#,
        "x".repeat(i % 97)
    )
}

#[test]
fn archive_is_send() {
    fn send<T: Send>() {}
    send::<Archive>();
}

#[test]
fn round_trip_across_tables_and_days() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let mut archive = Archive::open(&dir, options()).unwrap();
    let tables = ["DeviceProcessEvents", "AlertEvidence", "AdvancedHunting-New_Table"];
    let days = ["2025-01-01", "2025-01-02", "2024-12-31"];
    let mut raw_bytes = 0;
    let mut records = 0;
    for round in 0..4 {
        for i in 0..300 {
            let (table, day) = (tables[i % 3], days[(i / 3) % 3]);
            let line = record(table, day, round * 1000 + i);
            archive.append(table, day, line.as_bytes()).unwrap();
            raw_bytes += line.len() as u64 + 1;
        }
        records += 300;
        assert!(archive.buffered_bytes() > 0);
        let stats = archive.flush().unwrap();
        assert_eq!(stats.records, 300);
        assert_eq!(archive.buffered_bytes(), 0);
        assert!(stats.compressed_bytes > 0 && stats.compressed_bytes < stats.raw_bytes);
    }
    assert_eq!(archive.flush().unwrap().records, 0, "nothing left to flush");
    archive.close().unwrap();

    let mut total = 0;
    for table in tables {
        for day in days {
            let files = segments(&dir, table, day);
            assert_eq!(files.len(), 1, "one sealed segment for {table}/{day}: {files:?}");
            assert!(!is_active(&files[0]));
            check_with_cli(&files[0]);
            let expected: Vec<String> = (0..4)
                .flat_map(|round| (0..300).map(move |i| (round, i)))
                .filter(|&(_, i)| tables[i % 3] == table && days[(i / 3) % 3] == day)
                .map(|(round, i)| record(table, day, round * 1000 + i))
                .collect();
            let lines = read_lines(&dir, table, day);
            total += lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
            assert_eq!(lines, expected);
        }
    }
    assert_eq!(total, raw_bytes);
    assert_eq!(records, 1200);
}

#[test]
fn rotates_by_size_and_names_sort_in_creation_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(
        tmp.path(),
        ArchiveOptions {
            max_segment_bytes: 1,
            ..options()
        },
    )
    .unwrap();
    for i in 0..5 {
        archive
            .append("DeviceEvents", "2025-03-01", record("DeviceEvents", "x", i).as_bytes())
            .unwrap();
        let stats = archive.flush().unwrap();
        assert_eq!(stats.segments_sealed, 1);
    }
    let files = segments(tmp.path(), "DeviceEvents", "2025-03-01");
    assert_eq!(files.len(), 5);
    assert!(files.iter().all(|f| !is_active(f)));
    let expected: Vec<String> = (0..5).map(|i| record("DeviceEvents", "x", i)).collect();
    assert_eq!(read_lines(tmp.path(), "DeviceEvents", "2025-03-01"), expected);
    archive.close().unwrap();
}

#[test]
fn rotates_by_age() {
    let tmp = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(
        tmp.path(),
        ArchiveOptions {
            max_segment_age: Duration::ZERO,
            ..options()
        },
    )
    .unwrap();
    for i in 0..3 {
        archive
            .append("EmailEvents", "2025-03-01", format!("{{\"i\":{i}}}").as_bytes())
            .unwrap();
        assert_eq!(archive.flush().unwrap().segments_sealed, 1);
    }
    drop(archive);
    let files = segments(tmp.path(), "EmailEvents", "2025-03-01");
    assert_eq!(files.len(), 3);
    assert!(files.iter().all(|f| !is_active(f)));

    // With the default age the segment stays active between flushes, and close seals it.
    let mut archive = Archive::open(tmp.path(), options()).unwrap();
    archive.append("EmailEvents", "2025-03-01", b"{\"i\":3}").unwrap();
    assert_eq!(archive.flush().unwrap().segments_sealed, 0);
    archive.append("EmailEvents", "2025-03-01", b"{\"i\":4}").unwrap();
    assert_eq!(archive.flush().unwrap().segments_sealed, 0);
    let files = segments(tmp.path(), "EmailEvents", "2025-03-01");
    assert_eq!(files.len(), 4);
    assert!(is_active(&files[3]), "the newest segment sorts last: {files:?}");
    archive.close().unwrap();
    let lines = read_lines(tmp.path(), "EmailEvents", "2025-03-01");
    assert_eq!(lines, (0..5).map(|i| format!("{{\"i\":{i}}}")).collect::<Vec<_>>());
}

#[test]
fn open_repairs_a_torn_or_corrupt_last_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let (table, day) = ("DeviceNetworkEvents", "2025-05-05");
    let mut archive = Archive::open(tmp.path(), options()).unwrap();
    for i in 0..10 {
        archive.append(table, day, format!("{{\"i\":{i}}}").as_bytes()).unwrap();
        if i % 3 == 2 {
            archive.flush().unwrap();
        }
    }
    // Crash: the last record was never flushed, and a frame was half written.
    drop(archive);
    let files = segments(tmp.path(), table, day);
    assert_eq!(files.len(), 1);
    assert!(is_active(&files[0]));
    let frame = zstd::bulk::compress(b"{\"lost\":true}\n".repeat(100).as_slice(), 3).unwrap();
    let mut file = fs::OpenOptions::new().append(true).open(&files[0]).unwrap();
    file.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(file);
    // A second crashed segment holding only garbage disappears.
    let garbage = tmp
        .path()
        .join(table)
        .join(day)
        .join("20000101T000000000Z-000000.active.ndjson.zst");
    fs::write(&garbage, b"\0\0\0\0not zstd").unwrap();

    let mut archive = Archive::open(tmp.path(), options()).unwrap();
    let files = segments(tmp.path(), table, day);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(!is_active(&files[0]));
    check_with_cli(&files[0]);
    let expected: Vec<String> = (0..9).map(|i| format!("{{\"i\":{i}}}")).collect();
    assert_eq!(read_lines(tmp.path(), table, day), expected);

    // A complete last frame whose checksum fails is cut too.
    archive.append(table, day, b"{\"i\":9}").unwrap();
    archive.flush().unwrap();
    archive.append(table, day, b"{\"i\":10}").unwrap();
    archive.flush().unwrap();
    drop(archive);
    let files = segments(tmp.path(), table, day);
    assert_eq!(files.len(), 2);
    assert!(
        is_active(&files[1]),
        "the new segment sorts after the repaired one: {files:?}"
    );
    let mut bytes = fs::read(&files[1]).unwrap();
    let last = bytes.len() - 6;
    bytes[last] ^= 0xff;
    fs::write(&files[1], &bytes).unwrap();
    Archive::open(tmp.path(), options()).unwrap().close().unwrap();
    let expected: Vec<String> = (0..10).map(|i| format!("{{\"i\":{i}}}")).collect();
    assert_eq!(read_lines(tmp.path(), table, day), expected);
    assert!(segments(tmp.path(), table, day).iter().all(|f| !is_active(f)));
}

#[test]
fn retention_removes_old_days_only() {
    let tmp = tempfile::tempdir().unwrap();
    let retention = [("DeviceProcessEvents".to_owned(), 30), ("AlertInfo".to_owned(), 0)].into();
    let opts = ArchiveOptions { retention, ..options() };
    let mut archive = Archive::open(tmp.path(), opts.clone()).unwrap();
    let days = ["2025-01-01", "2025-03-01", "2025-03-31", "2025-04-01", "2025-05-01"];
    for table in ["DeviceProcessEvents", "DeviceFileEvents", "AlertInfo"] {
        for day in days {
            archive.append(table, day, b"{}").unwrap();
        }
    }
    archive.append("DeviceFileEvents", "2024-01-01", b"{}").unwrap();
    archive.flush().unwrap();
    // Foreign names are never touched.
    fs::create_dir_all(tmp.path().join("DeviceFileEvents/notes-2020-01-01")).unwrap();
    fs::create_dir_all(tmp.path().join(".hidden/2020-01-01")).unwrap();
    fs::write(tmp.path().join("DeviceFileEvents/2020-01-02"), b"a file").unwrap();

    let today = NaiveDate::from_ymd_opt(2025, 6, 30).unwrap();
    // Days with an open segment stay until it is sealed.
    assert_eq!(archive.enforce_retention(today).unwrap(), Vec::<PathBuf>::new());
    archive.close().unwrap();
    let mut archive = Archive::open(tmp.path(), opts).unwrap();
    let mut removed = archive.enforce_retention(today).unwrap();
    removed.sort();
    // 90 days before 2025-06-30 is 2025-04-01, 30 days is 2025-05-31; AlertInfo keeps forever.
    let expected: Vec<PathBuf> = [
        "DeviceFileEvents/2024-01-01",
        "DeviceFileEvents/2025-01-01",
        "DeviceFileEvents/2025-03-01",
        "DeviceFileEvents/2025-03-31",
        "DeviceProcessEvents/2025-01-01",
        "DeviceProcessEvents/2025-03-01",
        "DeviceProcessEvents/2025-03-31",
        "DeviceProcessEvents/2025-04-01",
        "DeviceProcessEvents/2025-05-01",
    ]
    .iter()
    .map(|p| tmp.path().join(p))
    .collect();
    assert_eq!(removed, expected);
    for path in &expected {
        assert!(!path.exists(), "{}", path.display());
    }
    for kept in [
        "DeviceFileEvents/2025-04-01",
        "DeviceFileEvents/2025-05-01",
        "AlertInfo/2025-01-01",
    ] {
        assert_eq!(read_lines(tmp.path(), kept, ""), vec!["{}"], "{kept} kept");
    }
    for foreign in [
        "DeviceFileEvents/notes-2020-01-01",
        ".hidden/2020-01-01",
        "DeviceFileEvents/2020-01-02",
    ] {
        assert!(tmp.path().join(foreign).exists(), "{foreign} untouched");
    }
    assert!(archive.enforce_retention(today).unwrap().is_empty());
}

#[test]
fn rejects_invalid_tables_and_days() {
    let tmp = tempfile::tempdir().unwrap();
    let mut archive = Archive::open(tmp.path(), options()).unwrap();
    for table in [
        "",
        "..",
        ".hidden",
        "../etc",
        "a/b",
        "a\\b",
        "Device Events",
        "Déf",
        &"T".repeat(129),
    ] {
        let err = archive.append(table, "2025-01-01", b"{}").unwrap_err();
        assert!(
            matches!(err, ArchiveError::InvalidTable(ref t) if t == table),
            "{table:?}: {err}"
        );
        assert!(err.to_string().contains(&format!("{table:?}")), "{err}");
    }
    for day in [
        "",
        "2025-1-01",
        "2025-02-30",
        "2025/01/01",
        "../../etc",
        "2025-01-01x",
        "+2025-01-0",
        "２０２５-01-01",
    ] {
        let err = archive.append("DeviceEvents", day, b"{}").unwrap_err();
        assert!(
            matches!(err, ArchiveError::InvalidDay(ref d) if d == day),
            "{day:?}: {err}"
        );
        assert!(err.to_string().contains(&format!("{day:?}")), "{err}");
    }
    let err = archive.append("DeviceEvents", "2025-01-01", b"{}\n{}").unwrap_err();
    assert!(matches!(err, ArchiveError::InvalidRecord(_)), "{err}");
    assert_eq!(archive.buffered_bytes(), 0);
    assert_eq!(archive.flush().unwrap().records, 0);
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1, "only the lock file");
}

#[test]
fn one_archive_per_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = Archive::open(tmp.path(), options()).unwrap();
    let err = Archive::open(tmp.path(), options()).unwrap_err();
    assert!(matches!(err, ArchiveError::Locked(_)), "{err}");
    drop(archive);
    Archive::open(tmp.path(), options()).unwrap();
}

#[cfg(unix)]
#[test]
fn private_file_modes() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b");
    let mut archive = Archive::open(&dir, options()).unwrap();
    archive.append("DeviceEvents", "2025-01-01", b"{}").unwrap();
    archive.flush().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for d in [
        tmp.path().join("a"),
        dir.clone(),
        dir.join("DeviceEvents"),
        dir.join("DeviceEvents/2025-01-01"),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let active = segments(&dir, "DeviceEvents", "2025-01-01");
    assert_eq!(mode(&active[0]), 0o600);
    archive.close().unwrap();
    let sealed = segments(&dir, "DeviceEvents", "2025-01-01");
    assert_eq!(mode(&sealed[0]), 0o600);
}

//! The Python `azure-eventhub` client against the emulator (needs `DEFENDER_TEST_PYTHON`).

use std::path::Path;
use std::process::Command;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_smoke() {
    let Some(python) = std::env::var_os("DEFENDER_TEST_PYTHON") else {
        println!("skipped: set DEFENDER_TEST_PYTHON to a python with azure-eventhub installed");
        return;
    };
    let emulator = start(&[("py-hub", 2)]).await;
    // Two events already there, appended in process: Python must see them first, in order.
    emulator
        .append(
            "py-hub",
            Some("0"),
            vec![envelope(&[record(1)]), envelope(&[record(2)])],
        )
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/smoke.py");
    let connection_string = emulator.connection_string("py-hub");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(connection_string)
            .arg("py-hub")
            .arg("25")
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("bad summary ({e}): {stdout}\nstderr: {stderr}"));
    assert_eq!(summary["hub"], "py-hub");
    assert_eq!(summary["partition_ids"], serde_json::json!(["0", "1"]));
    assert_eq!(summary["before"], 1);
    assert_eq!(summary["received"], 27);
    let expected: Vec<i64> = (0..27).collect();
    assert_eq!(summary["sequence_numbers"], serde_json::json!(expected));
    assert_eq!(summary["all_have_offset_and_time"], true);
    assert_eq!(summary["ours_in_order"], true);
    let info = emulator.partitions("py-hub").unwrap();
    assert_eq!(info[0].event_count, 27);
    assert_eq!(info[1].event_count, 0);
    emulator.shutdown().await;
}

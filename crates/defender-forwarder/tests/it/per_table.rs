//! Defender's second layout: one hub per table in a namespace. One forwarder source reads them
//! all; a configured hub that does not exist is reported and the others flow.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{KEY, record, seq_counts, stderr, table_of, wait_output};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_testkit::Intake;

const PREFIX: &str = "insights-logs-advancedhunting-";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_reads_every_table_hub_and_a_missing_one_does_not_stop_it() {
    // Five table hubs exist; the configuration also names a sixth that does not.
    let tables = common::TABLES;
    let emulator = Emulator::start(EmulatorConfig {
        hubs: tables
            .iter()
            .map(|t| HubConfig::new(format!("{PREFIX}{}", t.to_lowercase()), 2))
            .collect(),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let n = 3_000u64;
    for t in tables {
        let records: Vec<String> = (0..n).filter(|i| table_of(*i) == *t).map(record).collect();
        let bodies = records
            .chunks(50)
            .map(|c| format!(r#"{{"records":[{}]}}"#, c.join(",")).into_bytes())
            .collect();
        emulator
            .append(&format!("{PREFIX}{}", t.to_lowercase()), None, bodies)
            .unwrap();
    }
    let intake = Intake::start(KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cs = emulator.connection_string(&format!("{PREFIX}alertinfo"));
    let namespace_cs = cs.split(";EntityPath=").next().unwrap().to_owned() + ";UseDevelopmentEmulator=true";
    let config = dir.path().join("per-table.toml");
    std::fs::write(
        &config,
        format!(
            r#"
state_dir = "{state}"
[forwarder]
checkpoint_interval = "200ms"

[[sources]]
kind = "eventhub"
name = "tenant"
connection_string = "${{TEST_CONNECTION_STRING}}"
hubs = "per-table"
tables = ["DeviceProcessEvents", "DeviceNetworkEvents", "EmailEvents", "IdentityLogonEvents", "AlertInfo", "UrlClickEvents"]
missing_hub_retry = "1s"

[[sinks]]
kind = "sekoia"
url = "{url}"
intake_key = "{KEY}"
linger = "50ms"

[[sinks]]
kind = "files"
dir = "{archive}"
flush_interval = "200ms"
tables = {{ exclude = ["AlertInfo"] }}
"#,
            state = dir.path().join("state").display(),
            url = intake.url(),
            archive = dir.path().join("archive").display(),
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_defender-forwarder"))
        .arg("--config")
        .arg(&config)
        .args(["--exit-when-idle", "2"])
        .env("TEST_CONNECTION_STRING", &namespace_cs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(120)).await;
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("insights-logs-advancedhunting-urlclickevents"),
        "the missing hub is not named:\n{log}"
    );

    let events = intake.events();
    assert_eq!(events.len() as u64, n);
    let got: BTreeSet<String> = events.into_iter().collect();
    assert!(got == (0..n).map(record).collect::<BTreeSet<_>>());
    let archived: Vec<String> = common::archive_lines(&dir.path().join("archive"))
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let counts = seq_counts(&archived);
    assert_eq!(
        counts.len() as u64,
        (0..n).filter(|i| table_of(*i) != "AlertInfo").count() as u64
    );
    assert!(counts.keys().all(|i| table_of(*i) != "AlertInfo"));
}

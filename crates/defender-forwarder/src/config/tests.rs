use std::collections::BTreeMap as HashMap;

use super::*;
use crate::sink::files::FilesConfig;
use crate::sink::sekoia::SekoiaConfig;
use crate::source::eventhub::EventHubConfig;
use crate::source::storage::{StorageConfig, StorageStart};

fn hub(c: &Config, i: usize) -> &EventHubConfig {
    c.sources[i].as_any().downcast_ref().expect("an eventhub source")
}

fn storage(c: &Config, i: usize) -> &StorageConfig {
    c.sources[i].as_any().downcast_ref().expect("a storage source")
}

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

const CS: &str = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=c2VjcmV0LWtleQ==";

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name);
    std::fs::read_to_string(path).unwrap()
}

fn err(text: &str, v: &[(&str, &str)]) -> String {
    Config::parse_with_vars(text, vars(v)).unwrap_err().to_string()
}

#[test]
fn the_sekoia_example_runs_on_its_documented_variables() {
    let c = Config::parse_with_vars(
        &example("forward-to-sekoia.toml"),
        vars(&[
            ("DEFENDER_EVENTHUB_CONNECTION_STRING", CS),
            ("DEFENDER_EVENTHUB_NAME", "defender"),
            ("DEFENDER_STATE_DIR", "/var/lib/defender"),
            ("SEKOIA_INTAKE_KEY", "intake-key-123"),
        ]),
    )
    .unwrap();
    let h = hub(&c, 0);
    assert_eq!(h.consumer_group, "$Default");
    assert_eq!(h.hub.as_deref(), Some("defender"));
    let s: &SekoiaConfig = c.sinks[0].as_any().downcast_ref().expect("sekoia sink");
    assert_eq!(s.url.as_str(), "https://intake.sekoia.io/");
    assert_eq!(s.intake_key.expose(), "intake-key-123");
    // Secrets never print.
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("intake-key-123") && !debug.contains("c2VjcmV0"),
        "{debug}"
    );
}

#[test]
fn the_storage_example_runs_on_its_documented_variables() {
    let c = Config::parse_with_vars(
        &example("storage-to-sekoia.toml"),
        vars(&[
            (
                "DEFENDER_STORAGE_CONNECTION_STRING",
                &format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={DEV_KEY};EndpointSuffix=core.windows.net"),
            ),
            ("DEFENDER_STATE_DIR", "/var/lib/defender"),
            ("SEKOIA_INTAKE_KEY", "intake-key-123"),
        ]),
    )
    .unwrap();
    let s = storage(&c, 0);
    assert_eq!(s.container_names().len(), defender_schema::Table::ALL.len());
    assert_eq!(s.start, StorageStart::Earliest);
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("Eby8vdM02") && !debug.contains("intake-key-123"),
        "{debug}"
    );
}

#[test]
fn the_archive_example_runs_on_its_documented_variables() {
    let c = Config::parse_with_vars(
        &example("archive.toml"),
        vars(&[
            ("DEFENDER_EVENTHUB_CONNECTION_STRING", CS),
            ("DEFENDER_STATE_DIR", "/tmp/state"),
            ("DEFENDER_ARCHIVE_DIR", "/tmp/archive"),
            ("DEFENDER_CONSUMER_GROUP", "archive"),
        ]),
    )
    .unwrap();
    let f: &FilesConfig = c.sinks[0].as_any().downcast_ref().expect("files sink");
    assert_eq!(f.dir, "/tmp/archive");
    assert_eq!(f.retention[&defender_schema::Table::DeviceProcessEvents], 30);
    assert_eq!(hub(&c, 0).consumer_group, "archive");
}

#[test]
fn a_missing_variable_is_named_with_its_line_and_never_its_neighbours_values() {
    let e = err(
        &example("forward-to-sekoia.toml"),
        &[
            ("DEFENDER_EVENTHUB_CONNECTION_STRING", CS),
            ("DEFENDER_STATE_DIR", "/s"),
        ],
    );
    assert!(e.contains("SEKOIA_INTAKE_KEY"), "{e}");
    assert!(e.contains("intake_key"), "{e}");
    assert!(!e.contains("c2VjcmV0"), "{e}");
}

const MINIMAL: &str = r#"
state_dir = "/s"
[[sources]]
kind = "eventhub"
connection_string = "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b"
hub = "h"
"#;

#[test]
fn bad_fields_are_named() {
    let e = err(&format!("{MINIMAL}\n[[sinks]]\nkind = \"stdout\"\nbogus = 1\n"), &[]);
    assert!(e.contains("bogus"), "{e}");
    let e = err(&format!("{MINIMAL}\n[[sinks]]\nkind = \"kafka\"\n"), &[]);
    assert!(e.contains("kafka"), "{e}");
    let e = err(
        &format!("{MINIMAL}\n[[sinks]]\nkind = \"stdout\"\ntables = {{ include = [\"DeviceProcesEvents\"] }}\n"),
        &[],
    );
    assert!(
        e.contains("sinks[0].tables.include[0]") && e.contains("DeviceProcesEvents"),
        "{e}"
    );
    let e = err(
        &format!("{MINIMAL}\n[[sinks]]\nkind = \"files\"\ndir = \"/a\"\nflush_interval = \"3 weeks\"\n"),
        &[],
    );
    assert!(e.contains("flush_interval") || e.contains("duration"), "{e}");
    let e = err(
        &format!("{MINIMAL}\n[[sinks]]\nkind = \"stdout\"\n[[sinks]]\nkind = \"stdout\"\n"),
        &[],
    );
    assert!(e.contains("sinks[1].name"), "{e}");
    let e = err(
        &format!("{MINIMAL}\n[[sinks]]\nkind = \"sekoia\"\nintake_key = \"k\"\nurl = \"ftp://x\"\n"),
        &[],
    );
    assert!(e.contains("sinks[0].url"), "{e}");
    let e = err(
        &format!("{MINIMAL}\n[[sinks]]\nkind = \"sekoia\"\nintake_key = \"k\"\nbatch_bytes = 20000000\n"),
        &[],
    );
    assert!(e.contains("sinks[0].batch_bytes"), "{e}");
    let e = err(MINIMAL, &[]);
    assert!(e.contains("sinks"), "{e}");
    let e = err(
        "state_dir = \"/s\"\n[[sources]]\nkind = \"eventhub\"\nhub = \"h\"\n[[sinks]]\nkind = \"stdout\"\n",
        &[],
    );
    assert!(e.contains("sources[0].connection_string"), "{e}");
    let e = err(
        &format!("{MINIMAL}start = \"yesterday\"\n[[sinks]]\nkind = \"stdout\"\n"),
        &[],
    );
    assert!(e.contains("sources[0].start"), "{e}");
}

#[test]
fn numbers_flags_and_durations_may_come_from_the_environment() {
    let text = format!(
        "{MINIMAL}prefetch = \"${{PREFETCH}}\"\n[forwarder]\ncheck_records = \"${{CHECK:-true}}\"\ncheckpoint_interval = \"${{EVERY:-250ms}}\"\n[[sinks]]\nkind = \"stdout\"\n"
    );
    let c = Config::parse_with_vars(&text, vars(&[("PREFETCH", "50")])).unwrap();
    assert_eq!(hub(&c, 0).prefetch, Some(50));
    assert!(c.forwarder.check_records);
    assert_eq!(c.forwarder.checkpoint_interval, std::time::Duration::from_millis(250));
    let e = err(&text, &[("PREFETCH", "many")]);
    assert!(e.contains("prefetch") && e.contains("many"), "{e}");
}

#[test]
fn per_table_hubs_are_named_as_defender_names_them() {
    let text = "state_dir = \"/s\"\n[[sources]]\nkind = \"eventhub\"\nconnection_string = \"Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b\"\nhubs = \"per-table\"\ntables = [\"deviceprocessevents\", \"EmailEvents\"]\n[[sinks]]\nkind = \"stdout\"\n";
    let c = Config::parse(text).unwrap();
    assert_eq!(
        hub(&c, 0).hub_names().unwrap(),
        [
            "insights-logs-advancedhunting-deviceprocessevents",
            "insights-logs-advancedhunting-emailevents"
        ]
    );
    let e = err(
        &text.replace("hubs = \"per-table\"\n", "hub = \"one\"\nhubs = \"per-table\"\n"),
        &[],
    );
    assert!(e.contains("sources[0].hubs"), "{e}");
    let e = err(&text.replace("hubs = \"per-table\"\n", "hubs = [\"a\"]\n"), &[]);
    assert!(e.contains("sources[0].tables") && e.contains("per-table"), "{e}");
    let e = err(&text.replace("hubs = \"per-table\"", "hubs = \"every-table\""), &[]);
    assert!(e.contains("sources[0].hubs"), "{e}");
    let e = err(&text.replace("\"EmailEvents\"", "\"EmailEvent\""), &[]);
    assert!(e.contains("sources[0].tables[1]"), "{e}");
}

const STORAGE: &str = r#"
state_dir = "/s"
[[sinks]]
kind = "stdout"
[[sources]]
kind = "storage"
"#;

const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[test]
fn a_storage_source_takes_each_credential_form() {
    // Account URL + shared key.
    let text = format!(
        "{STORAGE}account_url = \"http://127.0.0.1:10000/devstoreaccount1\"\naccount_name = \"devstoreaccount1\"\nshared_key = \"${{KEY}}\"\ntables = [\"DeviceProcessEvents\", \"emailevents\"]\nstart = \"now\"\npoll_interval = \"5s\"\n"
    );
    let c = Config::parse_with_vars(&text, vars(&[("KEY", DEV_KEY)])).unwrap();
    let s = storage(&c, 0);
    assert_eq!(c.sources[0].name(), "storage");
    assert_eq!(
        s.container_names(),
        [
            "insights-logs-advancedhunting-deviceprocessevents",
            "insights-logs-advancedhunting-emailevents"
        ]
    );
    assert_eq!(s.start, StorageStart::Now);
    assert_eq!(s.poll_interval, std::time::Duration::from_secs(5));
    let debug = format!("{c:?}");
    assert!(!debug.contains("Eby8vdM02"), "{debug}");

    // Account URL + SAS, a prefix of one's own, every table by default.
    let text = format!(
        "{STORAGE}name = \"export\"\naccount_url = \"https://acct.blob.core.windows.net\"\nsas = \"sv=2021-08-06&sig=abc\"\ncontainer_prefix = \"defender-\"\n"
    );
    let c = Config::parse(&text).unwrap();
    let s = storage(&c, 0);
    assert_eq!(c.sources[0].name(), "export");
    assert_eq!(s.container_names().len(), defender_schema::Table::ALL.len());
    assert!(s.container_names().contains(&"defender-deviceinfo".to_owned()));

    // A connection string.
    let text = format!(
        "{STORAGE}connection_string = \"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={DEV_KEY};EndpointSuffix=core.windows.net\"\nstart = \"2026-11-24T09:30:00Z\"\n"
    );
    let c = Config::parse(&text).unwrap();
    let s = storage(&c, 0);
    assert_eq!(s.account.endpoint.as_str(), "https://acct.blob.core.windows.net/");
    assert!(matches!(s.start, StorageStart::Time(_)));
    assert!(matches!("2026-11-24T09:30:00Z".parse(), Ok(StorageStart::Time(_))));
    assert_eq!("earliest".parse(), Ok(StorageStart::Earliest));
}

/// Bad `storage` entries and the field each error must name.
fn bad_storage_cases() -> Vec<(String, &'static str)> {
    let url = "account_url = \"https://acct.blob.core.windows.net\"\n";
    vec![
        (String::new(), "sources[0].account_url"),
        (url.to_owned(), "sources[0].shared_key"),
        (format!("{url}shared_key = \"{DEV_KEY}\"\n"), "sources[0].account_name"),
        (
            format!("{url}sas = \"sig=x\"\nshared_key = \"{DEV_KEY}\"\naccount_name = \"a\"\n"),
            "sources[0].sas",
        ),
        (
            format!("{url}sas = \"sig=x\"\naccount_name = \"a\"\n"),
            "sources[0].account_name",
        ),
        (
            format!("{url}connection_string = \"UseDevelopmentStorage=true\"\n"),
            "sources[0].account_url",
        ),
        (
            "connection_string = \"UseDevelopmentStorage=true\"\nsas = \"sig=x\"\n".to_owned(),
            "sources[0].sas",
        ),
        (
            "connection_string = \"AccountName=a\"\n".to_owned(),
            "sources[0].connection_string",
        ),
        (
            "account_url = \"https://acct.blob.core.windows.net/?sig=x\"\nsas = \"sig=x\"\n".to_owned(),
            "sources[0].account_url",
        ),
        (
            "account_url = \"ftp://acct\"\nsas = \"sig=x\"\n".to_owned(),
            "sources[0].account_url",
        ),
        (
            format!("{url}shared_key = \"not base64!\"\naccount_name = \"a\"\n"),
            "sources[0].shared_key",
        ),
        (format!("{url}sas = \"sig=x\"\nhub = \"h\"\n"), "sources[0].hub"),
        (
            format!("{url}sas = \"sig=x\"\nhubs = \"per-table\"\n"),
            "sources[0].hubs",
        ),
        (format!("{url}sas = \"sig=x\"\nprefetch = 3\n"), "sources[0].prefetch"),
        (
            format!("{url}sas = \"sig=x\"\nconsumer_group = \"g\"\n"),
            "sources[0].consumer_group",
        ),
        (
            format!("{url}sas = \"sig=x\"\ncredential = {{ kind = \"managed-identity\" }}\n"),
            "sources[0].credential",
        ),
        (
            format!("{url}sas = \"sig=x\"\ntables = [\"DeviceProcesEvents\"]\n"),
            "sources[0].tables[0]",
        ),
        (format!("{url}sas = \"sig=x\"\ntables = []\n"), "sources[0].tables"),
        (
            format!("{url}sas = \"sig=x\"\nstart = \"yesterday\"\n"),
            "sources[0].start",
        ),
        (
            format!("{url}sas = \"sig=x\"\ncontainer_prefix = \"Defender_\"\n"),
            "sources[0].container_prefix",
        ),
        (
            format!("{url}sas = \"sig=x\"\ncontainer_prefix = \"{}\"\n", "a".repeat(50)),
            "sources[0].container_prefix",
        ),
        (
            format!("{url}sas = \"sig=x\"\npoll_interval = \"0s\"\n"),
            "sources[0].poll_interval",
        ),
    ]
}

#[test]
fn bad_storage_sources_are_named() {
    let cases = bad_storage_cases();
    for (fields, field) in &cases {
        let e = err(&format!("{STORAGE}{fields}"), &[]);
        assert!(e.contains(field), "{fields}: {e}");
        assert!(!e.contains("Eby8vdM02"), "{e}");
    }
    // And the other way round: storage fields on a hub.
    let e = err(
        &format!("{MINIMAL}poll_interval = \"1s\"\n[[sinks]]\nkind = \"stdout\"\n"),
        &[],
    );
    assert!(e.contains("sources[0].poll_interval") && e.contains("eventhub"), "{e}");
    let e = err(
        &format!("{MINIMAL}account_url = \"https://a\"\n[[sinks]]\nkind = \"stdout\"\n"),
        &[],
    );
    assert!(e.contains("sources[0].account_url"), "{e}");
    let e = err(
        &format!("{MINIMAL}[[sinks]]\nkind = \"stdout\"\n").replace("eventhub", "blob"),
        &[],
    );
    assert!(e.contains("sources[0].kind") && e.contains("storage"), "{e}");
}

#[test]
fn hub_and_storage_sources_mix() {
    let text = format!(
        "{MINIMAL}[[sources]]\nkind = \"storage\"\nconnection_string = \"UseDevelopmentStorage=true\"\n[[sinks]]\nkind = \"stdout\"\n"
    );
    let c = Config::parse(&text).unwrap();
    assert_eq!(
        c.sources.iter().map(|s| s.name()).collect::<Vec<_>>(),
        ["eventhub", "storage"]
    );
    let e = err(
        &text.replace("kind = \"storage\"\n", "kind = \"storage\"\nname = \"eventhub\"\n"),
        &[],
    );
    assert!(e.contains("sources[1].name"), "{e}");
}

#[test]
fn the_three_delivery_examples_of_the_reference_parse() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md")).unwrap();
    let section = doc
        .split("## Three deliveries")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the section");
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 3);
    let v = vars(&[
        (
            "DEFENDER_EVENTHUB_CONNECTION_STRING",
            &format!("{CS};EntityPath=defender"),
        ),
        ("DEFENDER_NAMESPACE_CONNECTION_STRING", CS),
        ("DEFENDER_CHECKPOINT_STORAGE", "UseDevelopmentStorage=true"),
        ("DEFENDER_STORAGE_SAS", "sv=2021-08-06&sig=abc"),
        ("SEKOIA_INTAKE_KEY", "k"),
    ]);
    let kinds: Vec<String> = blocks
        .iter()
        .map(|b| {
            let c = Config::parse_with_vars(b, v.clone()).unwrap_or_else(|e| panic!("{e}\n{b}"));
            match c.sources[0].kind() {
                "eventhub" if hub(&c, 0).hubs.is_some() => "per-table".to_owned(),
                "eventhub" => "hub".to_owned(),
                _ => format!("storage {}", storage(&c, 0).container_names().len()),
            }
        })
        .collect();
    assert_eq!(kinds, ["hub", "per-table", "storage 5"]);
}

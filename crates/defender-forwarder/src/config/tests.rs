use std::collections::BTreeMap as HashMap;

use super::*;

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
    let Source::Eventhub(hub) = &c.sources[0];
    assert_eq!(hub.consumer_group.as_deref(), Some("$Default"));
    assert_eq!(hub.hub.as_deref(), Some("defender"));
    let Sink::Sekoia(s) = &c.sinks[0] else {
        panic!("sekoia sink")
    };
    assert_eq!(s.url.as_deref(), Some("https://intake.sekoia.io"));
    assert_eq!(s.intake_key.0.expose(), "intake-key-123");
    // Secrets never print.
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("intake-key-123") && !debug.contains("c2VjcmV0"),
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
    let Sink::Files(f) = &c.sinks[0] else {
        panic!("files sink")
    };
    assert_eq!(&*f.dir, "/tmp/archive");
    assert_eq!(f.retention["DeviceProcessEvents"], Num(30));
    let Source::Eventhub(hub) = &c.sources[0];
    assert_eq!(hub.consumer_group.as_deref(), Some("archive"));
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
    let Source::Eventhub(hub) = &c.sources[0];
    assert_eq!(hub.prefetch, Some(Num(50)));
    assert_eq!(c.forwarder.check_records, Some(Flag(true)));
    assert_eq!(
        c.forwarder.checkpoint_interval.unwrap().0,
        std::time::Duration::from_millis(250)
    );
    let e = err(&text, &[("PREFETCH", "many")]);
    assert!(e.contains("prefetch") && e.contains("many"), "{e}");
}

#[test]
fn per_table_hubs_are_named_as_defender_names_them() {
    let text = "state_dir = \"/s\"\n[[sources]]\nkind = \"eventhub\"\nconnection_string = \"Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b\"\nhubs = \"per-table\"\ntables = [\"deviceprocessevents\", \"EmailEvents\"]\n[[sinks]]\nkind = \"stdout\"\n";
    let c = Config::parse(text).unwrap();
    let Source::Eventhub(s) = &c.sources[0];
    assert_eq!(
        s.hub_names().unwrap(),
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

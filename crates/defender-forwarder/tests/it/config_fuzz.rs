//! The configuration parser on hostile input: any text gives a configuration or an error that
//! names what is wrong, never a panic, and never echoes a secret it read from the environment.

use std::collections::BTreeMap;

use defender_forwarder::config::Config;
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../../../examples/forward-to-sekoia.toml");

fn vars() -> BTreeMap<String, String> {
    [
        (
            "DEFENDER_EVENTHUB_CONNECTION_STRING",
            "Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey=SECRETHUBKEY",
        ),
        ("DEFENDER_STATE_DIR", "/tmp/s"),
        ("SEKOIA_INTAKE_KEY", "SECRETINTAKEKEY"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn check(text: &str) {
    match Config::parse_with_vars(text, vars()) {
        Ok(c) => {
            let debug = format!("{c:?}");
            assert!(
                !debug.contains("SECRETHUBKEY") && !debug.contains("SECRETINTAKEKEY"),
                "{debug}"
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(
                !msg.contains("SECRETHUBKEY") && !msg.contains("SECRETINTAKEKEY"),
                "{msg}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(text in "(?s).{0,400}") {
        check(&text);
    }

    #[test]
    fn mutated_example(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), "[\\[\\]={}\"$a-z0-9,._\n -]{0,6}"), 1..6)) {
        let mut text = EXAMPLE.to_owned();
        for (at, len, insert) in edits {
            let start = at.index(text.len() + 1).min(text.len());
            let start = (0..=start).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (start + len.index(8)).min(text.len());
            let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text.replace_range(start..end, &insert);
        }
        check(&text);
    }
}

#[test]
fn the_example_itself_parses() {
    check(EXAMPLE);
    assert!(Config::parse_with_vars(EXAMPLE, vars()).is_ok());
}

//! Property tests: any JSON in any column of a row survives decode -> encode unchanged.

use defender_schema::tables::DeviceProcessEvents;
use defender_schema::{Table, TableRow, Timestamp};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~\u{e9}\u{4e2d}\u{1f600}]{0,12}".prop_map(Value::String),
        "-?[0-9]{1,20}".prop_map(Value::String),
        (0i64..=9_999, 1u32..=12, 1u32..=28, 0u32..=9).prop_map(|(y, mo, d, digits)| {
            Value::String(format!(
                "{y:04}-{mo:02}-{d:02}T12:34:56{}Z",
                if digits == 0 {
                    String::new()
                } else {
                    format!(".{}", "7".repeat(digits as usize))
                }
            ))
        }),
        Just(Value::String("{\"a\":[1,2]}".into())),
        Just(Value::String(String::new())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,5}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn row() -> impl Strategy<Value = Map<String, Value>> {
    let names: Vec<&'static str> = Table::DeviceProcessEvents.columns().iter().map(|c| c.name).collect();
    let known = prop::collection::btree_map(prop::sample::select(names), json_value(), 0..30);
    let unknown = prop::collection::btree_map("[A-Z][a-zA-Z]{0,10}X", json_value(), 0..3);
    (known, unknown).prop_map(|(k, u)| k.into_iter().map(|(k, v)| (k.to_owned(), v)).chain(u).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn device_process_events_rows_round_trip(row in row()) {
        let input = Value::Object(row);
        let text = serde_json::to_string(&input).unwrap();
        let decoded: DeviceProcessEvents = serde_json::from_str(&text).unwrap();
        let encoded = serde_json::to_string(&decoded).unwrap();
        prop_assert_eq!(serde_json::from_str::<Value>(&encoded).unwrap(), input.clone());
        let again: DeviceProcessEvents = serde_json::from_str(&encoded).unwrap();
        prop_assert_eq!(&again, &decoded);
        // Exactly the columns the schema does not list are reported as unknown.
        let expected_unknown: Vec<&String> = input
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| Table::DeviceProcessEvents.column(k).is_none())
            .collect();
        let got_unknown: Vec<&String> = decoded.unknown_columns().keys().collect();
        prop_assert_eq!(got_unknown, expected_unknown);
    }

    #[test]
    fn canonical_timestamps_print_back(secs in 0i64..253_402_300_799, nanos in 0u32..1_000_000_000, digits in 0u8..=9) {
        let dt = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
        let ts = Timestamp::new(dt, digits);
        let text = ts.to_string();
        let back = Timestamp::parse_canonical(&text).unwrap();
        prop_assert_eq!(back, ts);
        prop_assert_eq!(back.to_string(), text);
    }
}

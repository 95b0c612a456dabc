//! Hostile and broken input: whatever arrives, splitting and decoding answer with a value or a
//! clear error, never a panic, and one bad record never takes its neighbours down.

use defender_schema::{BodyError, Record, parse_record, split_body};

use proptest::prelude::*;

const GOOD: &str = r#"{"records":[{"time":"2026-11-23T09:31:07.4473310Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","operationName":"Publish","category":"AdvancedHunting-DeviceProcessEvents","properties":{"Timestamp":"2026-11-23T09:31:00.0000000Z","DeviceName":"ws-1","ReportId":9007199254740993,"ProcessId":4242,"AdditionalFields":"{\"a\":[1,2]}","InitiatingProcessAccountSid":"S-1-5-18"}},{"time":"2026-11-23T09:31:08Z","category":"AdvancedHunting-EmailEvents","properties":{"Subject":"caf\u00e9","RecipientEmailAddress":"a@b.c"}}]}"#;

/// Everything the pipeline does with a body: split, then decode every record on its own.
fn exercise(body: &[u8]) {
    if let Ok(records) = split_body(body) {
        for r in records.into_iter().flatten() {
            let _ = r.decode().map(|e| e.type_drift());
            let _ = parse_record(r.raw());
        }
    }
    let _ = Record::from_body(body);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&body);
    }

    #[test]
    fn mutated_bodies_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut body = GOOD.as_bytes().to_vec();
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        exercise(&body);
        exercise(&body[..cut.index(body.len())]);
    }

    #[test]
    fn arbitrary_text_records_never_panic(text in ".{0,300}") {
        let _ = parse_record(&text);
        let _ = Record::from_json(&text);
        exercise(format!(r#"{{"records":[{text}]}}"#).as_bytes());
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [200, 10_000, 100_000] {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!(
            r#"{{"records":[{{"category":"AdvancedHunting-DeviceEvents","properties":{{"AdditionalFields":{nested}}}}},{{"category":"AdvancedHunting-DeviceInfo","properties":{{}}}}]}}"#
        );
        // Splitting skips values without recursing, so both records come out; decoding the deep
        // one hits serde_json's depth limit and says so, for that record only.
        let records = split_body(body.as_bytes()).unwrap();
        assert_eq!(records.len(), 2);
        let deep = records[0].as_ref().unwrap();
        match deep.decode() {
            Err(e) => assert!(e.reason.contains("recursion"), "{e}"),
            Ok(event) => panic!("a {depth}-deep value decoded: {:?}", event.table()),
        }
        assert!(records[1].as_ref().unwrap().decode().is_ok());
        exercise(body.as_bytes());
    }
}

#[test]
fn invalid_utf8_is_named_with_its_offset() {
    let mut body = GOOD.as_bytes().to_vec();
    body[40] = 0xff;
    match split_body(&body) {
        Err(BodyError::Utf8 { offset }) => assert_eq!(offset, 40),
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_keys_odd_numbers_and_odd_timestamps_keep_the_record() {
    let body = br#"{"records":[
        {"category":"AdvancedHunting-DeviceInfo","category":"AdvancedHunting-DeviceInfo","properties":{"DeviceName":"a","DeviceName":"b"}},
        {"category":"AdvancedHunting-DeviceProcessEvents","properties":{"ProcessId":1e400,"ReportId":-99999999999999999999999,"Timestamp":"23/11/2026 09:31"}},
        {"category":"AdvancedHunting-DeviceProcessEvents","properties":{"Timestamp":"2026-11-23T09:31:07.123456789012+05:30","ProcessId":1.5}}
    ]}"#;
    let mut records = split_body(body).unwrap();
    assert_eq!(records.len(), 3);
    // Two `category` keys make the record ambiguous: refused on its own, with the reason.
    let first = records.remove(0).unwrap_err();
    assert!(first.to_string().contains("category"), "{first}");
    for r in records {
        let r = r.expect("still a Defender record");
        // Decoding keeps odd values as drift (or names the column); it never panics.
        match r.decode() {
            Ok(event) => {
                let _ = event.type_drift();
            }
            Err(e) => assert!(!e.reason.is_empty()),
        }
    }
}

#[test]
fn a_large_body_splits_without_trouble() {
    let record = r#"{"category":"AdvancedHunting-DeviceEvents","properties":{"AdditionalFields":"PAD"}}"#;
    let one = record.replace("PAD", &"x".repeat(1 << 20));
    let body = format!(r#"{{"records":[{}]}}"#, vec![one.as_str(); 100].join(","));
    assert!(body.len() > 100 << 20);
    let records = split_body(body.as_bytes()).unwrap();
    assert_eq!(records.len(), 100);
    assert!(records.iter().all(Result::is_ok));
}

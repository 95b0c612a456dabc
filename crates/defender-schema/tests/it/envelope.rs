//! Splitting message bodies: the one-pass path, the two-pass fallback, and bad input.

use defender_schema::{BodyError, JsonKind, RecordError, parse_record, split_body};

fn raws(body: &str) -> Vec<Result<String, String>> {
    split_body(body.as_bytes())
        .unwrap()
        .into_iter()
        .map(|r| r.map(|r| r.raw().to_owned()).map_err(|b| b.to_string()))
        .collect()
}

#[test]
fn raw_spans_are_exact_bytes() {
    let a = r#"{ "time" : "2024-05-14T09:31:07.4473310Z", "category":"AdvancedHunting-DeviceInfo", "properties": {"DeviceName":"a"} }"#;
    let b = "{\n\t\"category\":\"AdvancedHunting-DeviceEvents\",\r\n\"properties\":{\"k\":[1,{\"x\":\"}\"}]}\n}";
    let body = format!("  {{ \"other\": 1, \"records\" : [ {a} ,\n{b}\n] , \"tail\": [] }}  ");
    assert_eq!(raws(&body), vec![Ok(a.to_owned()), Ok(b.to_owned())]);
}

#[test]
fn routing_fields() {
    let body = r#"{"records":[{"time":"2024-05-14T09:31:07.4473310Z","category":"AdvancedHunting-DeviceInfo","properties":{"DeviceName":"a"}},{"category":"AdvancedHunting-NotYetKnown","properties":{}}]}"#;
    let split = split_body(body.as_bytes()).unwrap();
    let first = split[0].as_ref().unwrap();
    assert_eq!(first.table_name(), "DeviceInfo");
    assert!(first.table().is_some());
    assert_eq!(first.time(), Some("2024-05-14T09:31:07.4473310Z"));
    assert_eq!(first.properties().get(), r#"{"DeviceName":"a"}"#);
    let second = split[1].as_ref().unwrap();
    assert_eq!(second.table(), None);
    assert_eq!(second.table_name(), "NotYetKnown");
    assert_eq!(second.time(), None);
}

#[test]
fn escaped_first_key_and_odd_records_fall_back_to_two_passes() {
    // `\u0074ime` is `time` with an escape: its key cannot be borrowed, so the span is found the slow way.
    let a = r#"{"\u0074ime":"x","category":"AdvancedHunting-DeviceInfo","properties":{}}"#;
    let body = format!(r#"{{"records":[{a},42,{{}},{{"category":"AdvancedHunting-DeviceInfo","properties":"x"}}]}}"#);
    let got = raws(&body);
    assert_eq!(got[0], Ok(a.to_owned()));
    assert_eq!(
        got[1],
        Err("record 1: record is a JSON number, not an object".to_owned())
    );
    assert_eq!(got[2], Err("record 2: record has no `category`".to_owned()));
    assert_eq!(
        got[3],
        Err("record 3: record `properties` is a JSON string, not an object".to_owned())
    );
}

#[test]
fn bad_records_do_not_stop_the_others() {
    let body = r#"{"records":[
        {"category":"AdvancedHunting-DeviceInfo","properties":{}},
        {"properties":{}},
        {"category":7,"properties":{}},
        {"category":"AdvancedHunting-DeviceInfo"},
        {"category":"AdvancedHunting-DeviceInfo","category":"AdvancedHunting-DeviceEvents","properties":{}},
        {"category":"AdvancedHunting-DeviceInfo","properties":{}}
    ]}"#;
    let split = split_body(body.as_bytes()).unwrap();
    let errors: Vec<Option<RecordError>> = split
        .iter()
        .map(|r| r.as_ref().err().map(|b| b.error.clone()))
        .collect();
    assert_eq!(
        errors,
        vec![
            None,
            Some(RecordError::MissingCategory),
            Some(RecordError::CategoryNotString(JsonKind::Number)),
            Some(RecordError::MissingProperties),
            Some(RecordError::DuplicateField("category")),
            None,
        ]
    );
    assert_eq!(split[1].as_ref().unwrap_err().raw, r#"{"properties":{}}"#);
}

#[test]
fn bodies_that_cannot_be_split() {
    let cases: &[(&[u8], &str)] = &[
        (b"{\"records\":[{\"category\":", "json"),
        (b"[1,2,3]", "envelope"),
        (b"{\"records\":{}}", "envelope"),
        (b"{\"value\":[]}", "envelope"),
        (b"{\"records\":[],\"records\":[]}", "envelope"),
        (b"{\"records\":[\"\xff\"]}", "utf8"),
        (b"", "json"),
    ];
    for (body, want) in cases {
        let err = split_body(body).unwrap_err();
        let got = match err {
            BodyError::Json(_) => "json",
            BodyError::NotEnvelope(_) => "envelope",
            BodyError::Utf8 { .. } => "utf8",
            _ => "other",
        };
        assert_eq!(got, *want, "{}: {err}", String::from_utf8_lossy(body));
    }
    assert!(split_body(br#"{"records":[]}"#).unwrap().is_empty());
}

#[test]
fn single_records() {
    let line = r#"{"time":"2024-05-14T09:31:07.4473310Z","category":"AdvancedHunting-EmailEvents","properties":{"Subject":"hi"}}"#;
    let r = parse_record(line).unwrap();
    assert_eq!(r.raw(), line);
    assert_eq!(r.table_name(), "EmailEvents");
    assert!(matches!(parse_record("{\"category\":"), Err(RecordError::Json(_))));
    assert!(matches!(
        parse_record("[]"),
        Err(RecordError::NotAnObject(JsonKind::Array))
    ));
    assert!(matches!(parse_record("{} {}"), Err(RecordError::Json(_))));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!(
        r#"{{"records":[{{"category":"AdvancedHunting-DeviceInfo","properties":{{"a":{}1{}}}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    // Routing skips values without recursing, so the record still splits and can be forwarded as is.
    let split = split_body(deep.as_bytes()).unwrap();
    let record = split[0].as_ref().unwrap();
    // Decoding it hits serde_json's recursion limit: an error naming the column, not a stack overflow.
    let err = record.decode().unwrap_err();
    assert_eq!(err.table, "DeviceInfo");
    assert_eq!(err.column.as_deref(), Some("a"));
    assert!(err.reason.contains("recursion limit"), "{err}");
}

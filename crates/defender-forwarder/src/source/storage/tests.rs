//! The storage source's pure parts.

use super::*;
use read::unit_end;

#[test]
fn hours_come_from_the_path() {
    let t = blob_hour("tenantId=5f2b6a1e-3c4d/y=2026/m=11/d=24/h=09/m=00/PT1H.json").unwrap();
    assert_eq!(t.to_rfc3339(), "2026-11-24T09:00:00+00:00");
    // Azure Monitor's resource layout has the same tail.
    let t = blob_hour("resourceId=/SUBSCRIPTIONS/X/y=2024/m=01/d=02/h=23/m=00/PT1H.json").unwrap();
    assert_eq!(t.to_rfc3339(), "2024-01-02T23:00:00+00:00");
    assert!(blob_hour("tenantId=x/y=2026/m=11/d=24/h=09/m=00").is_none(), "no file");
    assert!(blob_hour("tenantId=x/y=2026/m=13/d=24/h=09/m=00/PT1H.json").is_none());
    assert!(blob_hour("notes.txt").is_none());
    assert!(blob_hour("y=2026/m=1x/d=24/h=09/m=00/PT1H.json").is_none());
}

#[test]
fn keys_are_file_and_blob_safe() {
    assert_eq!(
        blob_key("tenantId=AB/y=2026/m=11/d=24/h=09/m=00/PT1H.json"),
        "tenantid=ab_y=2026_m=11_d=24_h=09_m=00_pt1h.json"
    );
    assert!(!blob_key("a/b/c").contains('/'));
}

#[test]
fn namespaces_name_the_account() {
    let sas = || defender_eventhub::blob::StorageCredential::sas("sig=x").unwrap();
    let at = |u: &str| BlobAccess {
        endpoint: Url::parse(u).unwrap(),
        credential: sas(),
    };
    assert_eq!(
        at("https://acct.blob.core.windows.net").namespace(),
        "acct.blob.core.windows.net"
    );
    assert_eq!(
        at("http://127.0.0.1:10000/devstoreaccount1").namespace(),
        "127.0.0.1:10000_devstoreaccount1"
    );
}

#[test]
fn only_complete_lines_are_taken() {
    let mut carry = Vec::new();
    assert_eq!(take_complete_lines(&mut carry, b"{\"a\"".to_vec()), None);
    assert_eq!(carry, b"{\"a\"");
    assert_eq!(
        take_complete_lines(&mut carry, b":1}\n{\"b\":2}\n{\"c\"".to_vec()).unwrap(),
        b"{\"a\":1}\n{\"b\":2}\n"
    );
    assert_eq!(carry, b"{\"c\"");
    assert_eq!(
        take_complete_lines(&mut carry, b":3}\n".to_vec()).unwrap(),
        b"{\"c\":3}\n"
    );
    assert!(carry.is_empty());
    assert_eq!(take_complete_lines(&mut carry, b"x\n".to_vec()).unwrap(), b"x\n");
}

#[test]
fn units_end_at_line_ends() {
    let line = vec![b'x'; 1000];
    let mut lines = Vec::new();
    for _ in 0..1000 {
        lines.extend_from_slice(&line);
        lines.push(b'\n');
    }
    let mut from = 0;
    let mut units = 0;
    while from < lines.len() {
        let to = unit_end(&lines, from);
        assert!(to - from <= UNIT_BYTES && lines[to - 1] == b'\n');
        from = to;
        units += 1;
    }
    assert_eq!(units, lines.len().div_ceil(UNIT_BYTES - 1000));
    // A line longer than a unit is one unit.
    let long = [vec![b'y'; UNIT_BYTES + 10], b"\nz\n".to_vec()].concat();
    assert_eq!(unit_end(&long, 0), UNIT_BYTES + 11);
    assert_eq!(unit_end(&long, UNIT_BYTES + 11), long.len());
}

#[test]
fn hours_floor() {
    let t = DateTime::parse_from_rfc3339("2026-11-24T09:31:07Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(floor_hour(t).to_rfc3339(), "2026-11-24T09:00:00+00:00");
}
